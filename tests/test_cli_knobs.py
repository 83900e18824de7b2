"""The knobs of ``scaleplan plan`` (ZeRO/FSDP, checkpointing, optimizer, attention, precision,
MFU), ``--json`` everywhere, ``--version``, and fixes printed as flags: all through the entry
point."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from scaleplan.cli import build_parser, main
from scaleplan.cli_output import REMEDY_FLAGS

ROOT = Path(__file__).resolve().parents[1]
# Llama-2-7B: 6,738,415,616 parameters (transformers' count, as tests/test_cli.py uses).
LLAMA2_7B = 6_738_415_616
GPT2 = 124_439_808  # GPT-2 small with its tied head (nanoGPT's model, wpe included)


def _plan_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    assert main(["plan", *argv, "--json"]) == 0
    data: dict[str, object] = json.loads(capsys.readouterr().out)
    return data


def _memory(data: dict[str, object]) -> dict[str, int]:
    memory = data["memory"]
    assert isinstance(memory, dict)
    return memory


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("scaleplan: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


# --- ZeRO and FSDP -----------------------------------------------------------------------------

def test_zero_3_shards_the_optimizer_states_over_the_world_size(
        capsys: pytest.CaptureFixture[str]) -> None:
    data = _plan_json(capsys, "llama-2-7b", "--gpu", "H100 SXM", "--world-size", "8",
                      "--zero", "3")
    assert data["parallelism"]["zero"] == 3 and data["parallelism"]["data"] == 8  # type: ignore[index]
    assert data["remedy"] is None
    # AdamW keeps 2 fp32 states: 8 bytes x N over 8 GPUs = N bytes each (ZeRO paper, Sec. 5.1),
    # plus torch's 4-byte step scalar per tensor (a few hundred bytes in all).
    assert LLAMA2_7B <= _memory(data)["optimizer"] < LLAMA2_7B + 1000


def test_fsdp_alone_means_full_shard_and_shards_like_zero_3(
        capsys: pytest.CaptureFixture[str]) -> None:
    common = ["llama-2-7b", "--gpu", "H100 SXM", "--world-size", "8"]
    zero3 = _plan_json(capsys, *common, "--zero", "3")
    fsdp = _plan_json(capsys, *common, "--fsdp")
    assert fsdp["parallelism"]["fsdp"] == "full_shard"  # type: ignore[index]
    assert _memory(fsdp)["weights"] == _memory(zero3)["weights"]


def test_fsdp_shard_grad_op_keeps_whole_weights(capsys: pytest.CaptureFixture[str]) -> None:
    data = _plan_json(capsys, "llama-2-7b", "--gpu", "H100 SXM", "--world-size", "8",
                      "--fsdp", "shard_grad_op")
    # shard_grad_op shards gradients and optimizer states, never the fp32 weights: 4 x N bytes
    assert _memory(data)["weights"] == 4 * LLAMA2_7B
    # the fp32 gradients sharded 8 ways, plus one 25 MiB reduction bucket (PyTorch's default)
    assert _memory(data)["gradients"] == 4 * LLAMA2_7B // 8 + 25 * 2**20


def test_the_report_says_how_the_group_shards(capsys: pytest.CaptureFixture[str]) -> None:
    common = ["plan", "llama-2-7b", "--gpu", "H100 SXM", "--world-size", "8"]
    assert main([*common, "--zero", "2"]) == 0
    assert "sharding             ZeRO-2 over 8 data-parallel GPUs" in capsys.readouterr().out
    assert main([*common, "--fsdp", "shard_grad_op"]) == 0
    assert "FSDP shard_grad_op over 8 data-parallel GPUs" in capsys.readouterr().out
    assert main(["plan", "gpt2", "--world-size", "8"]) == 0  # fits with plain DDP
    assert "sharding" not in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "expected"), [
    (["--world-size", "8", "--zero", "4"], ["argument --zero", "0, 1, 2, 3"]),
    (["--world-size", "8", "--fsdp", "hybrid"], ["argument --fsdp", "full_shard",
                                                 "shard_grad_op"]),
    (["--world-size", "8", "--zero", "3", "--fsdp"], ["--fsdp", "not allowed with", "--zero"]),
    (["--zero", "2"], ["--zero 2", "--world-size"]),  # one GPU: nothing to shard over
    (["--world-size", "0", "--zero", "3"], ["argument --world-size: '0'"]),
    (["--checkpointing", "some"], ["argument --checkpointing", "none", "selective", "full"]),
    (["--optimizer", "adan"], ["argument --optimizer", "adamw", "adamw-8bit", "lion"]),
    (["--attention", "sdpa"], ["argument --attention", "flash", "eager"]),
    (["--optimizer-impl", "fast"], ["argument --optimizer-impl", "foreach", "fused", "for-loop"]),
    (["--precision", "fp8"], ["argument --precision", "bf16-mixed", "32-true"]),
])
def test_bad_knob_values_are_one_line_naming_the_flag_and_the_choices(
        argv: list[str], expected: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "gpt2", *argv]) == 2
    err = _one_error_line(capsys)
    for text in expected:
        assert text in err


# --- checkpointing, optimizer, attention --------------------------------------------------------

def test_checkpointing_full_saves_less_for_backward(capsys: pytest.CaptureFixture[str]) -> None:
    none = _plan_json(capsys, "gpt2")
    full = _plan_json(capsys, "gpt2", "--checkpointing", "full")
    assert full["checkpointing"] == "full" and none["checkpointing"] == "none"
    per_sequence = [_memory(d)["saved_for_backward"] / d["micro_batch_size"]  # type: ignore[operator]
                    for d in (none, full)]
    assert per_sequence[1] < per_sequence[0]


def test_optimizer_alias_adamw8bit_plans_8_bit_states(capsys: pytest.CaptureFixture[str]) -> None:
    plain = _plan_json(capsys, "gpt2")
    small = _plan_json(capsys, "gpt2", "--optimizer", "adamw8bit")
    assert small["optimizer"] == "adamw-8bit"
    # AdamW: 2 fp32 states = 8 bytes per parameter, plus a 4-byte step per tensor; GPT-2 small
    # has 148 tensors (12 blocks x 12, wte, wpe, ln_f weight and bias).
    assert _memory(plain)["optimizer"] == 8 * GPT2 + 4 * 148
    # bitsandbytes: 2 one-byte states, one fp32 absmax per 2048 values, small tensors in 32 bit
    # (Dettmers et al. 2022): a little over 2 bytes per parameter.
    assert 2 * GPT2 < _memory(small)["optimizer"] < 2.02 * GPT2


def test_optimizer_impl_sets_the_optimizer_steps_temporaries(
        capsys: pytest.CaptureFixture[str]) -> None:
    # one 64-token sequence: the optimizer step is the peak
    step = ["gpt2", "--seq-len", "64", "--tokens-per-step", "64"]
    peaks = {}
    for impl in ("foreach", "for_loop"):
        data = _plan_json(capsys, *step, "--optimizer-impl", impl)
        assert _memory(data)["peak_moment"] == "optimizer_step"
        peaks[impl] = _memory(data)["tensor_peak"]
    # foreach AdamW makes sqrt(v) for all parameters at once (4 bytes x N); the for-loop one for
    # one tensor at a time, sqrt(v) and the quotient: 2 x 4 bytes x the largest tensor, wte's
    # 50257 x 768
    assert peaks["foreach"] - peaks["for_loop"] == 4 * GPT2 - 2 * 4 * 50257 * 768


def test_eager_attention_keeps_the_scores(capsys: pytest.CaptureFixture[str]) -> None:
    flash = _plan_json(capsys, "gpt2")
    eager = _plan_json(capsys, "gpt2", "--attention", "eager")
    assert eager["attention"] == "eager"
    per_sequence = [_memory(d)["saved_for_backward"] / d["micro_batch_size"]  # type: ignore[operator]
                    for d in (flash, eager)]
    # eager attention saves the s x s softmax of every head of every layer: at least 2 bytes
    # each, 12 layers x 12 heads x 1024^2
    assert per_sequence[1] - per_sequence[0] >= 12 * 12 * 1024**2 * 2


# --- precision ---------------------------------------------------------------------------------

def _precision_help() -> str:
    plan_parser = build_parser()._subparsers._group_actions[0].choices["plan"]  # type: ignore[union-attr]
    (action,) = [a for a in plan_parser._actions if "--precision" in a.option_strings]
    assert action.help is not None
    return action.help


def test_precision_help_lists_nanogpts_dtype_names() -> None:
    listed = set(re.findall(r"[\w-]+", _precision_help()))
    # nanoGPT's dtype values, torch names and Lightning's precision names
    assert {"bfloat16", "float16", "float32", "bf16-mixed", "16-mixed", "32-true"} <= listed


def test_every_precision_name_in_the_help_is_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    text = _precision_help().split("or one of:", 1)[1]
    names = re.findall(r"[\w-]+", text.replace("(or", ",").replace(")", ","))
    names = [n for n in names if n != "or"]
    assert len(names) >= 10
    parser = build_parser()
    for name in names:
        assert parser.parse_args(["plan", "--precision", name]).precision in (
            "32-true", "bf16-mixed", "16-mixed", "bf16-true", "bf16-fp32-master"), name
    # and end to end: nanoGPT's dtype='bfloat16' is autocast over fp32 weights
    assert _plan_json(capsys, "gpt2", "--precision", "bfloat16")["precision"] == "bf16-mixed"
    assert _plan_json(capsys, "gpt2", "--precision", "fp32")["precision"] == "32-true"


# --- MFU ---------------------------------------------------------------------------------------

def test_mfu_help_says_which_mfu(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "model FLOPs utilisation" in out and "PaLM" in out and "dense peak" in out
    assert "--nanogpt-mfu PERCENT" in out and "312 TFLOP/s" in out


def test_nanogpt_mfu_is_converted_to_the_real_gpus_peak(
        capsys: pytest.CaptureFixture[str]) -> None:
    data = _plan_json(capsys, "gpt2", "--gpu", "RTX 4070", "--nanogpt-mfu", "11.62")
    # the seed run printed 'mfu 11.62%' of an A100's 312 TFLOP/s = 36.25 TFLOP/s; the RTX 4070's
    # dense bf16 peak is 46 SMs x 2.475 GHz x 512 FLOP/clock = 58.29 TFLOP/s: 62.2 %
    expected = 0.1162 * 312e12 / (46 * 2.475e9 * 512)
    assert data["mfu"] == pytest.approx(expected, rel=1e-3)
    assert main(["plan", "gpt2", "--nanogpt-mfu", "11.62"]) == 0
    assert "62.2% MFU on the RTX 4070" in capsys.readouterr().out


def test_nanogpt_mfu_on_a_gpu_without_bf16_uses_its_fp16_peak(
        capsys: pytest.CaptureFixture[str]) -> None:
    data = _plan_json(capsys, "gpt2", "--gpu", "V100 SXM2 32GB", "--nanogpt-mfu", "10")
    assert data["precision"] == "16-mixed"
    # 10% of 312 TFLOP/s = 31.2 TFLOP/s over the V100's 125 TFLOP/s fp16 tensor peak (datasheet)
    assert data["mfu"] == pytest.approx(31.2 / 125)


@pytest.mark.parametrize(("argv", "expected"), [
    (["--mfu", "0.3", "--nanogpt-mfu", "11"], "not allowed with argument --mfu"),
    (["--mfu", "35"], "a percentage?"),
    (["--nanogpt-mfu", "40"], "more than the GPU can do"),  # 124.8 TFLOP/s on a 58 TFLOP/s GPU
    (["--nanogpt-mfu", "x"], "argument --nanogpt-mfu: 'x' is not a percentage"),
])
def test_mfu_errors(argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "gpt2", *argv]) == 2
    assert expected in _one_error_line(capsys)


# --- --json everywhere, --version ---------------------------------------------------------------

def test_every_subcommand_has_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "train.log"
    log.write_text("iter 0: loss 10.9900, time 95.10ms, mfu 40.00%\n"
                   "iter 1: loss nan, time 95.10ms, mfu 40.00%\n")
    runs = {"params": ["params", "gpt2"], "plan": ["plan", "gpt2"], "gpus": ["gpus"],
            "diagnose": ["diagnose", str(log)],
            "finetune": ["finetune", "gpt2", "--lora-rank", "4", "--lora-targets", "q,k,v"],
            "serve": ["serve", "gpt2", "--gpu", "RTX 4070", "--context-len", "1024"]}
    choices = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(runs) == set(choices)  # a new subcommand needs a line here
    outputs = {}
    for name, argv in runs.items():
        assert main([*argv, "--json"]) == 0, name
        outputs[name] = json.loads(capsys.readouterr().out)
    assert outputs["params"]["params"]["total"] == GPT2
    assert outputs["plan"]["micro_batch_size"] * outputs["plan"]["grad_accum_steps"] * 1024 \
        == outputs["plan"]["tokens_per_step"]
    assert "RTX 4070" in [g["name"] for g in outputs["gpus"]]
    # the NaN on line 2 is a divergence, and a log alone has no model
    assert [f["code"] for f in outputs["diagnose"]["findings"]] == ["divergence"]
    assert outputs["diagnose"]["nanogpt_params"] is None


def _declared_version() -> str:
    """The version pyproject.toml declares (read as text: tomllib needs Python 3.11)."""
    declared = re.search(r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert declared is not None
    return declared.group(1)


def test_version_is_the_packages(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"scaleplan {_declared_version()}\n"


def test_version_without_installed_metadata_falls_back(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.metadata

    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert main(["--version"]) == 0
    # a source tree run without installing: scaleplan.__version__, which matches pyproject.toml
    assert capsys.readouterr().out == f"scaleplan {_declared_version()}\n"


# --- fixes as flags ------------------------------------------------------------------------------

def _run_command(command: str, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    words = shlex.split(command)
    assert words[:2] == ["scaleplan", "plan"]
    return _plan_json(capsys, *words[2:])


def test_nothing_fits_prints_a_command_that_fits(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "llama-2-7b", "--gpu", "RTX 4070"]) == 2
    err = _one_error_line(capsys)
    assert "{'" not in err  # no Python dict a flag cannot apply
    command = err.split("; try: ", 1)[1].strip()
    assert command.startswith('scaleplan plan llama-2-7b --gpu "RTX 4070" --world-size ')
    assert "--zero 3" in command
    data = _run_command(command, capsys)  # the suggestion really fits
    assert data["fits"] is True and data["remedy"] is None


def test_the_suggested_command_keeps_the_users_other_flags(
        capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["llama-2-7b", "--seq-len", "2048", "--mfu", "0.5", "--optimizer-impl", "fused"]
    assert main(["plan", *argv]) == 2
    command = _one_error_line(capsys).split("; try: ", 1)[1].strip()
    for flag in ("--seq-len 2048", "--mfu 0.5", "--optimizer-impl fused", "--zero 3"):
        assert flag in command
    data = _run_command(command, capsys)
    assert data["seq_len"] == 2048 and data["mfu"] == 0.5 and data["fits"] is True


def test_an_adopted_remedy_is_printed_as_the_flags_that_reproduce_it(
        capsys: pytest.CaptureFixture[str]) -> None:
    # GPT-2 XL (1.56B) with AdamW at bf16-mixed needs 16 bytes x 1.56B = 25 GB of states on a
    # 12 GB RTX 4070: plan must adopt a remedy
    argv = ["gpt2-xl", "--gpu", "RTX 4070"]
    assert main(["plan", *argv]) == 0
    out = capsys.readouterr().out
    line = [ln for ln in out.splitlines() if ln.startswith("to plan with it from the start: ")]
    assert len(line) == 1, out
    command = line[0].split(": ", 1)[1]
    adopted = _plan_json(capsys, *argv)
    again = _run_command(command, capsys)
    assert adopted["remedy"] is not None and again["remedy"] is None
    for key in ("precision", "optimizer", "checkpointing", "micro_batch_size"):
        assert again[key] == adopted[key], key
    assert _memory(again)["total"] == _memory(adopted)["total"]


def test_every_remedy_setting_has_a_flag_the_parser_takes(
        capsys: pytest.CaptureFixture[str]) -> None:
    data = _plan_json(capsys, "llama-2-7b", "--gpu", "A100 SXM 80GB", "--world-size", "2",
                      "--seq-len", "4096")
    remedies = data["remedies"]
    assert isinstance(remedies, list) and remedies  # nothing fit as asked
    parser = build_parser()
    for remedy in remedies:
        for key, value in remedy["changes"].items():
            assert key in REMEDY_FLAGS, key
            args = parser.parse_args(["plan", "--world-size", "2", REMEDY_FLAGS[key], str(value)])
            assert getattr(args, key) == value


# --- tensor, pipeline and expert parallelism ----------------------------------------------------

def test_model_parallel_flags_split_mixtral(capsys: pytest.CaptureFixture[str]) -> None:
    # Mixtral-8x7B (46,702,792,704 parameters) on 16 GPUs: 2-way tensor parallel leaves 8
    # data-parallel replicas, whose 8 expert ranks each hold one routed expert per block. By hand:
    # routed experts 32 blocks x 8 experts x 3 x 14336 x 4096 = 45,097,156,608, split 2 (tensor)
    # and 8 (expert) ways: 2,818,572,288 per GPU. The rest, 1,605,636,096, is split 2 ways but
    # for the 266,240 norm weights every tensor rank keeps: 802,951,168 per GPU.
    data = _plan_json(capsys, "mixtral-8x7b", "--gpu", "H100 SXM", "--world-size", "16",
                      "--tensor-parallel", "2", "--expert-parallel", "8", "--zero", "1",
                      "--checkpointing", "full", "--seq-len", "4096")
    layout = data["parallelism"]
    assert (layout["data"], layout["tensor"], layout["pipeline"], layout["expert"]) == (8, 2, 1, 8)  # type: ignore[index]
    assert data["data_parallel"] == 8
    experts, rest = 2_818_572_288, 802_951_168
    assert _memory(data)["weights"] == 4 * (experts + rest)  # fp32 weights under bf16 autocast
    # AdamW's 8 bytes per parameter; ZeRO-1 shards the rest over the 8 replicas, while each
    # expert's states have one data rank to shard over (8 replicas / 8 expert ranks); plus
    # torch's 4-byte step scalar per tensor (under 100 bytes here)
    assert 0 <= _memory(data)["optimizer"] - 8 * (experts + rest // 8) < 100


def test_model_parallel_flags_must_divide_the_world_size(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "gpt2", "--world-size", "6", "--tensor-parallel", "4"]) == 2
    err = capsys.readouterr().err
    assert "--world-size 6 is not a multiple of --tensor-parallel 4 x --pipeline-parallel 1" in err
    assert main(["plan", "gpt2", "--tensor-parallel", "0"]) == 2
    assert "--tensor-parallel" in capsys.readouterr().err


# --- torch.compile -------------------------------------------------------------------------------

def test_compile_lets_the_seed_run_use_its_micro_batch_16(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The seed run (n_embd 384, dropout 0.1, micro-batch 16 x 1024, compile on, nanoGPT's
    # default) trained on an RTX 4070: compiled, 16 fits; eager, 8 is the largest.
    seed = tmp_path / "train_fineweb.py"
    seed.write_text("n_layer = 12\nn_head = 12\nn_embd = 384\ndropout = 0.1\n"
                    "batch_size = 16\ngradient_accumulation_steps = 32\n")
    eager = _plan_json(capsys, str(seed), "--gpu", "RTX 4070", "--no-compile")
    compiled = _plan_json(capsys, str(seed), "--gpu", "RTX 4070", "--compile")
    assert (eager["micro_batch_size"], compiled["micro_batch_size"]) == (8, 16)
    assert _memory(compiled)["total"] <= 12 * 2**30 < _memory(eager)["total"] * 2
    # the file sets no compile, so train.py's default (compile = True) is the one it ran with
    assert _plan_json(capsys, str(seed), "--gpu", "RTX 4070") == compiled


def test_a_nanogpt_file_that_turns_compile_off_is_planned_eager(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seed = tmp_path / "train_eager.py"
    seed.write_text("n_layer = 12\nn_head = 12\nn_embd = 384\ndropout = 0.1\n"
                    "batch_size = 16\ncompile = False\n")
    eager = _plan_json(capsys, str(seed), "--gpu", "RTX 4070", "--no-compile")
    assert _plan_json(capsys, str(seed), "--gpu", "RTX 4070") == eager
    assert _plan_json(capsys, str(seed), "--gpu", "RTX 4070", "--compile") != eager
    # a preset has no file to say so: eager unless --compile
    assert "log_softmax" in _memory(_plan_json(capsys, "gpt2", "--gpu", "H100 SXM"))[
        "saved_breakdown"]


def test_a_file_compile_that_rules_out_an_option_says_how_to_plan_eager(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seed = tmp_path / "train_small.py"
    seed.write_text("n_layer = 4\nn_head = 4\nn_embd = 128\n")
    assert main(["plan", str(seed), "--gpu", "H100 SXM", "--attention", "eager"]) == 2
    assert "--no-compile" in _one_error_line(capsys)
    assert main(["plan", str(seed), "--gpu", "H100 SXM", "--attention", "eager",
                 "--no-compile"]) == 0


def test_compile_is_a_switch_in_the_reproduced_command() -> None:
    from scaleplan.cli_output import command_line

    ns = build_parser().parse_args(["plan", "gpt2", "--gpu", "A100", "--compile"])
    assert command_line(ns) == "scaleplan plan gpt2 --gpu A100 --compile"  # no "True"
    ns = build_parser().parse_args(["plan", "x.py", "--gpu", "A100", "--no-compile"])
    assert command_line(ns) == "scaleplan plan x.py --gpu A100 --no-compile"


def test_implementation_hf_reaches_training_memory(capsys: pytest.CaptureFixture[str]) -> None:
    # the flag is plumbing: transformers' own saved bytes are checked in tests/test_hf_memory.py
    from scaleplan import GPTConfig, training_memory

    hf = _plan_json(capsys, "smollm2-135m", "--gpu", "RTX 4090", "--seq-len", "2048",
                    "--implementation", "hf")
    nano = _plan_json(capsys, "smollm2-135m", "--gpu", "RTX 4090", "--seq-len", "2048")
    b = hf["micro_batch_size"]
    expected = training_memory(GPTConfig.preset("smollm2-135m"), micro_batch_size=b,  # type: ignore[arg-type]
                               seq_len=2048, implementation="hf")
    assert _memory(hf)["saved_for_backward"] == expected.saved_for_backward
    if nano["micro_batch_size"] == b:
        assert _memory(nano)["saved_for_backward"] < expected.saved_for_backward

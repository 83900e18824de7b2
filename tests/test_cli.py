"""The `scaleplan` command: readable and JSON output, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scaleplan.cli import main


def test_params_preset_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["params", "gpt2"]) == 0
    out = capsys.readouterr().out
    assert "124,439,808 parameters" in out
    assert "123,653,376" in out and "nanoGPT prints" in out  # nanoGPT's printed 123.65M


def test_params_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["params", "llama-2-7b", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["params"]["total"] == 6_738_415_616  # transformers' count of Llama-2-7B
    assert data["config"]["mlp"] == "swiglu"


def test_params_nanogpt_file_shows_the_false_claim(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "train_fineweb.py"
    path.write_text("# Model (~125M parameters) - perfect for 12 GB VRAM\n"
                    "n_layer = 12\nn_head = 12\nn_embd = 384\ndropout = 0.1\n")
    assert main(["params", str(path)]) == 0
    out = capsys.readouterr().out
    assert "40,560,000" in out  # the seed log's "number of parameters: 40.56M"
    assert "claims ~125M: 3.08x the real count" in out  # 125 / 40.56 = 3.08


def test_params_hf_json_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "gpt2"}))
    assert main(["params", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"]["total"] == 124_439_808


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["params", "gpt3"], "unknown preset 'gpt3'; did you mean 'gpt2'"),
        (["params", "missing.json"], "missing.json: cannot read the file"),
    ],
)
def test_bad_input_is_one_line_and_status_2(argv: list[str], message: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("scaleplan: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_module_entry_point_runs_in_a_subprocess() -> None:
    done = subprocess.run([sys.executable, "-m", "scaleplan", "params", "smollm2-135m", "--json"],
                          capture_output=True, text=True, check=True, timeout=60)
    # HuggingFaceTB/SmolLM2-135M: 134,515,008 parameters (its Hugging Face page).
    assert json.loads(done.stdout)["params"]["total"] == 134_515_008


def test_plan_default_is_gpt2_on_an_rtx_4070(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan"]) == 0
    out = capsys.readouterr().out
    assert "1 x RTX 4070" in out and "GiB" in out and " GB" not in out
    assert "tokens_per_step      524,288" in out  # 2^19, GPT-3 Small's 0.5M-token step
    assert "does not fit" in out and "<- chosen" in out


def test_plan_json_and_exports(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "gpt2", "--gpu", "A100 SXM 80GB", "--tokens-per-step", "2**19",
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["micro_batch_size"] * data["grad_accum_steps"] * 1024 == 524_288
    assert data["precision"] == "bf16-mixed" and data["fits"] is True
    assert main(["plan", "gpt2", "--export", "deepspeed"]) == 0
    assert json.loads(capsys.readouterr().out)["train_batch_size"] == 512  # 524,288 / 1024


def test_plan_keeps_a_nanogpt_files_step(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "train_fineweb.py"
    path.write_text("n_embd = 768\nbatch_size = 16\ngradient_accumulation_steps = 32\n")
    assert main(["plan", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens_per_step"] == 16 * 1024 * 32


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["plan", "gpt2", "--gpu", "rtx4071"], "unknown GPU 'rtx4071'; did you mean 'RTX 4070'"),
        (["plan", "gpt2", "--hours", "0"], "hours=0.0 must be a positive number of hours"),
        (["plan", "gpt2", "--total-tokens", "lots"], "--total-tokens: 'lots' is not a whole"),
    ],
)
def test_plan_bad_input(argv: list[str], message: str,
                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_gpus_lists_the_database(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gpus"]) == 0
    out = capsys.readouterr().out
    assert "RTX 4070" in out and "T4" in out and "no bf16 tensor cores" in out
    assert main(["gpus", "--json"]) == 0
    names = {g["name"] for g in json.loads(capsys.readouterr().out)}
    assert {"H100 SXM", "MI300X", "RTX 4090"} <= names

"""``--export nanogpt`` keeps the run: an export round trip that nanoGPT's configurator accepts.

nanoGPT's train.py holds its settings as globals (its defaults block) and configurator.py
``exec``s a config file over them; a ``--name=value`` override must have the type of the default
(karpathy/nanoGPT configurator.py: ``assert type(attempt) == type(globals()[key])``). A file that
behaves the same either way is ``name = literal`` lines naming train.py settings with the
defaults' types. The exports here are checked for exactly that with `ast` (never executed), read
back with `load_nanogpt_config`, and planned again.

Expected schedules are worked out by hand in each test from the rules the export cites:
lr_decay_iters = max_iters; warm-up GPT-3's 375M tokens (Brown et al. 2020, App. B), at most
10% of max_iters (BERT's warmup_proportion), a file's own kept when under that; min_lr =
learning_rate / 10 (nanoGPT train.py's comment) unless the file sets one at most learning_rate.
"""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest
from test_nanogpt_semantics import TRAIN_PY

from scaleplan.cli import main
from scaleplan.diagnosis.schedule import lr_findings
from scaleplan.errors import ScaleplanError
from scaleplan.model.config import GPTConfig
from scaleplan.model.loaders import NanoGPTRun, load_nanogpt_config
from scaleplan.model.training_config import TrainingConfig
from scaleplan.planning.nanogpt_export import fit_schedule, to_nanogpt_config
from scaleplan.planning.planner import plan

# karpathy/nanoGPT train.py's defaults block (its config_keys), written out by hand with the
# type of each default; test_train_py_keys_are_the_defaults_block checks the names against the
# copy of train.py in test_nanogpt_semantics.
TRAIN_PY_TYPES: dict[str, type] = {
    "out_dir": str, "eval_interval": int, "log_interval": int, "eval_iters": int,
    "eval_only": bool, "always_save_checkpoint": bool, "init_from": str, "wandb_log": bool,
    "wandb_project": str, "wandb_run_name": str, "dataset": str,
    "gradient_accumulation_steps": int, "batch_size": int, "block_size": int, "n_layer": int,
    "n_head": int, "n_embd": int, "dropout": float, "bias": bool, "learning_rate": float,
    "max_iters": int, "weight_decay": float, "beta1": float, "beta2": float, "grad_clip": float,
    "decay_lr": bool, "warmup_iters": int, "lr_decay_iters": int, "min_lr": float,
    "backend": str, "device": str, "dtype": str, "compile": bool,
}

# The seed case's file (seed-case.md), with the run settings a real one carries.
SEED = """\
# Model (~125M parameters) - perfect for 12 GB VRAM
import time
out_dir = 'out-fineweb'
eval_interval = 500
log_interval = 10
wandb_log = True
wandb_project = 'fineweb'
wandb_run_name = 'gpt-' + str(time.time())
dataset = 'fineweb'
init_from = 'scratch'
compile = True
n_layer = 12
n_head = 12
n_embd = 384
dropout = 0
batch_size = 16
gradient_accumulation_steps = 32
learning_rate = 1e-3
max_iters = 20000
weight_decay = 1e-1
"""
# 16 x 1024 x 32 tokens per step in the file; 10^9 tokens asked for on the command line:
# ceil(10^9 / 524,288) = ceil(1907.35) = 1908 steps.
TOKENS_PER_STEP = 16 * 1024 * 32
STEPS = 1908
# warm-up: train.py's 2000 > 10% of 1908 = 190.8, so min(ceil(375e6 / 524,288) = 716, 190)
WARMUP = 190
MIN_LR = 1e-4  # the file's learning_rate 1e-3 / 10; it sets no min_lr


def assignments(text: str) -> dict[str, object]:
    """What configurator.py's exec of ``text`` would assign, read with `ast` only: fails unless
    every statement is ``name = literal``."""
    out: dict[str, object] = {}
    for node in ast.parse(text).body:
        assert isinstance(node, ast.Assign), ast.dump(node)
        (target,) = node.targets
        assert isinstance(target, ast.Name)
        out[target.id] = ast.literal_eval(node.value)
    return out


def export(tmp_path: Path, capsys: pytest.CaptureFixture[str], source: str,
           *flags: str) -> str:
    path = tmp_path / "train_fineweb.py"
    path.write_text(source)
    assert main(["plan", str(path), "--gpu", "RTX 4070", "--total-tokens", "10**9",
                 "--export", "nanogpt", *flags]) == 0
    return capsys.readouterr().out


def test_train_py_keys_are_the_defaults_block() -> None:
    tree = ast.parse(TRAIN_PY)
    names = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id == "config_keys":
                break
            names.append(node.targets[0].id)
    assert names == list(TRAIN_PY_TYPES)


def test_seed_export_is_what_nanogpts_configurator_accepts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    values = assignments(export(tmp_path, capsys, SEED))
    for name, value in values.items():
        assert name in TRAIN_PY_TYPES, name
        assert type(value) is TRAIN_PY_TYPES[name], (name, value)
    assert values["dropout"] == 0.0  # the file's int 0, written as train.py's float


def test_seed_export_keeps_the_run_and_fits_the_schedule(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = export(tmp_path, capsys, SEED)
    values = assignments(text)
    kept = {"out_dir": "out-fineweb", "eval_interval": 500, "log_interval": 10,
            "wandb_log": True, "wandb_project": "fineweb", "dataset": "fineweb",
            "init_from": "scratch", "compile": True, "n_embd": 384, "learning_rate": 1e-3,
            "weight_decay": 0.1}
    assert {k: values[k] for k in kept} == kept
    assert values["batch_size"] * values["gradient_accumulation_steps"] * 1024 \
        == TOKENS_PER_STEP  # type: ignore[operator]
    assert (values["max_iters"], values["lr_decay_iters"], values["warmup_iters"],
            values["min_lr"]) == (STEPS, STEPS, WARMUP, MIN_LR)
    assert values["dtype"] == "bfloat16"  # the RTX 4070 has bf16 tensor cores
    assert "max_iters = 1908  # scaleplan: was 20000" in text.splitlines()
    # the claimed size is not carried into the new file, nor the line nothing can evaluate
    assert "125M" not in text and "wandb_run_name" not in values
    assert "not carried over" in text and "wandb_run_name = 'gpt-' + str(time.time())" in text


def test_seed_export_reads_back_into_the_plans_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = export(tmp_path, capsys, SEED)
    before = load_nanogpt_config("seed.py", text=SEED)
    after = load_nanogpt_config("exported.py", text=text)
    assert after.model == before.model
    assert after.dataset == "fineweb" and after.init_from == "scratch"
    t = after.training
    assert (t.tokens_per_step, t.max_iters, t.lr_decay_iters, t.warmup_iters) == (
        TOKENS_PER_STEP, STEPS, STEPS, WARMUP)
    assert (t.learning_rate, t.min_lr, t.compile) == (1e-3, MIN_LR, True)


def test_plan_method_with_a_base_keeps_the_run_as_the_cli_does(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Issue 21: Plan.to_nanogpt_config(base=...) keeps the file's run like --export nanogpt
    path = tmp_path / "train_fineweb.py"
    path.write_text(SEED)
    run = load_nanogpt_config(path)
    # the CLI plans a nanoGPT file with its own compile (train.py's default, True)
    p = plan(run.model, "RTX 4070", tokens_per_step=TOKENS_PER_STEP, total_tokens=10**9,
             compile=run.training.compile)
    assert run.training.compile and p.micro_batch_size == 16  # the seed run's, compiled
    texts = [p.to_nanogpt_config(path), p.to_nanogpt_config(str(path)),
             p.to_nanogpt_config(run), p.to_nanogpt_config(path, text=SEED)]
    assert len(set(texts)) == 1
    values = assignments(texts[0])  # name = literal lines only, as configurator.py execs them
    assert all(type(v) is TRAIN_PY_TYPES[k] for k, v in values.items())
    kept = {"out_dir": "out-fineweb", "dataset": "fineweb", "init_from": "scratch",
            "compile": True, "learning_rate": 1e-3, "wandb_project": "fineweb"}
    assert {k: values[k] for k in kept} == kept
    assert (values["max_iters"], values["lr_decay_iters"], values["warmup_iters"],
            values["min_lr"]) == (STEPS, STEPS, WARMUP, MIN_LR)
    back = load_nanogpt_config(tmp_path / "exported.py", text=texts[0])
    assert back.model == run.model and back.training.tokens_per_step == TOKENS_PER_STEP
    # the same file as the command line writes for that file and budget
    assert texts[0] == export(tmp_path, capsys, SEED)
    # without a base: train.py's defaults under the plan's settings, not the file's run
    bare = assignments(p.to_nanogpt_config())
    assert "dataset" not in bare and bare["warmup_iters"] == WARMUP


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"text": SEED}, r"pass base= too, the file's path"),
    ({"base": 42}, r"base=42 must be a nanoGPT config file's path or the NanoGPTRun"),
    ({"base": NanoGPTRun(model=GPTConfig.preset("gpt2"), training=TrainingConfig())},
     r"base is a NanoGPTRun that names no file \(source=None\)"),
])
def test_plan_method_refuses_a_base_it_cannot_read(kwargs: dict[str, object],
                                                    message: str) -> None:
    p = plan(GPTConfig.preset("gpt2"), "RTX 4070")
    with pytest.raises(ScaleplanError, match=message):
        p.to_nanogpt_config(**kwargs)  # type: ignore[arg-type]


def nanogpt_lr(it: int, *, lr: float, min_lr: float, warmup: int, decay: int) -> float:
    """nanoGPT train.py's get_lr: linear warm-up ``lr * (it + 1) / (warmup_iters + 1)``, cosine
    down to min_lr at lr_decay_iters, min_lr after."""
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay:
        return min_lr
    ratio = (it - warmup) / (decay - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def test_the_exported_run_leaves_warm_up_and_ends_at_min_lr(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    v = assignments(export(tmp_path, capsys, SEED))
    lr = {it: nanogpt_lr(it, lr=1e-3, min_lr=v["min_lr"], warmup=v["warmup_iters"],  # type: ignore[arg-type]
                         decay=v["lr_decay_iters"]) for it in (0, WARMUP, STEPS)}  # type: ignore[arg-type]
    assert lr == {0: 1e-3 / 191, WARMUP: 1e-3, STEPS: pytest.approx(MIN_LR)}
    # the file as it was: max_iters 1908 under train.py's warmup 2000 never leaves warm-up
    assert nanogpt_lr(STEPS, lr=1e-3, min_lr=6e-5, warmup=2000, decay=600000) == \
        pytest.approx(1e-3 * 1909 / 2001)
    # and diagnose finds nothing wrong with the exported schedule
    run = load_nanogpt_config("exported.py", text=export(tmp_path, capsys, SEED))
    assert lr_findings(run.training, last=STEPS) == []


def test_exporting_an_export_again_gives_the_same_settings(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = export(tmp_path, capsys, SEED)
    second = export(tmp_path, capsys, first)
    assert assignments(second) == assignments(first)
    assert "# scaleplan: was" not in second  # nothing left to change


def test_the_export_replans_to_the_same_plan(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    exported = tmp_path / "exported.py"
    exported.write_text(export(tmp_path, capsys, SEED))
    plans = []
    for path in (tmp_path / "train_fineweb.py", exported):
        assert main(["plan", str(path), "--gpu", "RTX 4070", "--total-tokens", "10**9",
                     "--json"]) == 0
        plans.append(json.loads(capsys.readouterr().out))
    assert plans[0] == plans[1]
    assert (plans[1]["steps"], plans[1]["tokens_per_step"]) == (STEPS, TOKENS_PER_STEP)


def test_eight_gpus_write_nanogpts_total_accumulation(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # train.py divides gradient_accumulation_steps by the world size (and asserts it divides)
    values = assignments(export(tmp_path, capsys, SEED, "--world-size", "8"))
    assert values["gradient_accumulation_steps"] % 8 == 0  # type: ignore[operator]
    assert values["batch_size"] * values["gradient_accumulation_steps"] * 1024 \
        == TOKENS_PER_STEP  # type: ignore[operator]


def test_a_forks_own_settings_are_kept(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    values = assignments(export(tmp_path, capsys, SEED + "use_rmsnorm = True\n"))
    assert values["use_rmsnorm"] is True


def test_preset_export_over_train_py_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "gpt2", "--gpu", "RTX 4070", "--total-tokens", "10**9",
                 "--export", "nanogpt"]) == 0
    values = assignments(capsys.readouterr().out)
    assert all(type(v) is TRAIN_PY_TYPES[k] for k, v in values.items())
    # 6e-4 / 10, train.py's own min_lr; warm-up as for the seed (same tokens per step)
    assert (values["max_iters"], values["warmup_iters"], values["lr_decay_iters"],
            values["min_lr"]) == (STEPS, WARMUP, STEPS, 6e-5)
    assert (values["n_embd"], values["bias"], values["dropout"]) == (768, True, 0.0)


def test_a_changed_model_is_written_over_the_files(tmp_path: Path) -> None:
    # seed-case.md's advice: n_embd 768, dropout 0.0, same data and run
    path = tmp_path / "train_fineweb.py"
    path.write_text(SEED.replace("dropout = 0", "dropout = 0.1"))
    wider = load_nanogpt_config(path).model.replace(n_embd=768, dropout=0.0)
    text = to_nanogpt_config(plan(wider, "RTX 4070", tokens_per_step=TOKENS_PER_STEP), path)
    assert "n_embd = 768  # scaleplan: was 384" in text
    assert "dropout = 0.0  # scaleplan: was 0.1" in text
    assert load_nanogpt_config(path.with_name("x.py"), text=text).model == wider


@pytest.mark.parametrize(
    ("warmup", "min_lr", "min_lr_set", "expected"),
    [(100, 1e-4, True, (100, 1e-4)),  # shakespeare_char's 100 of 5000 (2%) and lr/10 kept
     (600, 2e-4, True, (500, 2e-4)),  # 12%: min(ceil(375e6 / 65,536) = 5723, 500)
     (100, 2e-3, True, (100, 1e-4)),  # a floor above the peak is no decay: lr / 10
     (100, 6e-5, False, (100, 1e-4))],  # train.py's 6e-5 left by a file with lr 1e-3
)
def test_fit_schedule_rules(warmup: int, min_lr: float, min_lr_set: bool,
                            expected: tuple[int, float]) -> None:
    s = fit_schedule(5000, 65_536, learning_rate=1e-3, warmup_iters=warmup, min_lr=min_lr,
                     min_lr_set=min_lr_set, eval_interval=250)
    assert (s.warmup_iters, s.min_lr) == expected
    assert (s.lr_decay_iters, s.eval_interval) == (5000, 250)
    # one line for lr_decay_iters, and one for each value changed
    assert len(s.reasons) == 1 + (warmup != expected[0]) + (min_lr != expected[1])


def test_a_constant_learning_rate_keeps_its_settings(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # finetune_shakespeare.py's way: decay_lr = False, so train.py never calls get_lr
    text = export(tmp_path, capsys, SEED + "decay_lr = False\nwarmup_iters = 5000\n")
    values = assignments(text)
    assert values["decay_lr"] is False and values["warmup_iters"] == 5000
    assert "lr_decay_iters" not in values and "min_lr" not in values
    assert "decay_lr = False: a constant learning rate" in text


@pytest.mark.parametrize(("given", "expected"), [(2000, 1908), (1909, 1908), (1908, 1908),
                                                  (954, 954)])
def test_an_eval_interval_past_the_end_is_brought_to_it(given: int, expected: int) -> None:
    # train.py evaluates at iter_num % eval_interval == 0 for iter_num 0..max_iters and saves a
    # checkpoint only at an evaluation after step 0: eval_interval 1909 with max_iters 1908
    # would never save one, 1908 saves at the last step
    s = fit_schedule(1908, 524_288, learning_rate=6e-4, warmup_iters=100, min_lr=6e-5,
                     min_lr_set=True, eval_interval=given)
    assert s.eval_interval == expected
    assert [r for r in s.reasons if "never evaluate" in r] == (
        [] if given == expected else [f"eval_interval {given} -> 1908: the run would never "
                                      "evaluate or save a checkpoint after step 0"])


@pytest.mark.parametrize(
    ("make", "message"),
    [(lambda: plan(GPTConfig.preset("gpt2"), "RTX 4070", checkpointing="full"),
      r"fits only with activation checkpointing \('full'\), which nanoGPT's train.py does not"),
     (lambda: plan(GPTConfig.preset("gpt2"), "RTX 4070", optimizer="adamw-8bit"),
      r"the optimizer 'adamw-8bit' \(it runs torch's AdamW\)")],
)
def test_plans_nanogpt_cannot_run_are_refused(make: object, message: str) -> None:
    with pytest.raises(ScaleplanError, match=message):
        to_nanogpt_config(make())  # type: ignore[operator]


def test_a_model_the_file_cannot_describe_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ft.py"
    path.write_text("init_from = 'gpt2'\nbatch_size = 1\n")
    gpt2 = load_nanogpt_config(path).model
    with pytest.raises(ScaleplanError, match=r"init_from = 'gpt2', so nanoGPT takes the model"):
        to_nanogpt_config(plan(gpt2.replace(n_layer=6), "RTX 4070"), path)
    with pytest.raises(ScaleplanError, match=r"vocab_size=50,304 is not the 50,257 that"):
        to_nanogpt_config(plan(gpt2.replace(vocab_size=50304), "RTX 4070"), path)

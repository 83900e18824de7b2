# ruff: noqa: E501  (the sample logs keep their real, long lines)
"""Issue 23, reading every common log format: modded-nanogpt, build-nanogpt, litgpt, llama2.c,
torchtitan, nanoGPT behind a prefix, the Trainer's stepless and non-finite dicts, batch-size
changes and non-finite values.

Each sample is written in the print format of its source (the f-string is quoted beside it); the
numbers are made up, and each test asserts the numbers its sample prints.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from timing import within

from scaleplan.diagnosis import formats, mappings
from scaleplan.diagnosis.logs import MAX_LINE_CHARS, LogFormatError, TrainingLog, read_log


def _fields(log: TrainingLog, *names: str) -> list[tuple[object, ...]]:
    return [tuple(getattr(r, n) for n in names) for r in log.records]


# ---- modded-nanogpt train_gpt.py: f"step:{step}/{train_steps} val_loss:{val_loss:.4f}
# train_time:{training_time_ms:.0f}ms step_avg:{...:.2f}ms"; earlier records printed
# f"step:{step+1}/{args.num_iterations} train_loss:{train_loss.item():.4f} train_time:... step_avg:...",
# their step_avg divided by timed_steps = float('nan') for the first 11 steps (hence "nanms")
MODDED = """\
step:0/1750 val_loss:10.8258 train_time:0ms step_avg:nanms
step:10/1750 train_loss:7.6021 train_time:1234ms step_avg:123.4ms
step:11/1750 train_time:1357ms step_avg:123.36ms
step:1750/1750 val_loss:3.2785 train_time:1338113ms step_avg:766.49ms
"""


def test_modded_nanogpt() -> None:
    log = read_log("modded.txt", text=MODDED)
    assert log.format == "modded-nanogpt"
    assert _fields(log, "kind", "step", "train_loss", "val_loss", "time_ms") == [
        ("eval", 0, None, 10.8258, None),  # step_avg:nan: no time, a warning
        ("train", 10, 7.6021, None, 123.4),
        ("eval", 1750, None, 3.2785, 766.49)]
    # the step line without a loss is the format's (recognised), but no record
    assert (log.lines_recognised, log.lines_skipped) == (4, 0)
    assert log.warning("non-finite-value") is not None


# ---- build-nanogpt train_gpt2.py: print(f"step {step:5d} | loss: {loss_accum.item():.6f} | lr
# {lr:.4e} | norm: {norm:.4f} | dt: {dt*1000:.2f}ms | tok/sec: {tokens_per_sec:.2f}"),
# print(f"validation loss: {val_loss_accum.item():.4f}") at the top of steps 0, 250, ... (before
# the step trains), print(f"HellaSwag accuracy: {num_correct_norm}/{num_total}={acc_norm:.4f}"),
# print(f"total desired batch size: {total_batch_size}")
BUILD_STDOUT = """\
total desired batch size: 524288
=> calculated gradient accumulation steps: 32
validation loss: 10.9857
HellaSwag accuracy: 2534/10042=0.2523
step     0 | loss: 10.955524 | lr 8.3916e-07 | norm: 15.4156 | dt: 22481.13ms | tok/sec: 23321.48
step     1 | loss: 10.887316 | lr 1.6783e-06 | norm: 14.6590 | dt: 331.12ms | tok/sec: 1583385.63
validation loss: 10.7012
step     2 | loss: 10.761234 | lr 2.5175e-06 | norm: 12.0001 | dt: 330.98ms | tok/sec: 1584055.10
"""


def test_build_nanogpt_stdout() -> None:
    log = read_log("build.txt", text=BUILD_STDOUT)
    assert log.format == "build-nanogpt"
    assert log.reported_tokens_per_step == 524_288
    trains = log.train_records()
    assert [(r.step, r.train_loss) for r in trains] == [(0, 10.955524), (1, 10.887316),
                                                        (2, 10.761234)]
    second = trains[1]
    assert (second.learning_rate, second.grad_norm, second.time_ms, second.tokens_per_second) == (
        1.6783e-06, 14.659, 331.12, 1583385.63)
    # printed before the step it evaluates: the first before any step is step 0, the second
    # after step 1's line is step 2's
    assert [(r.step, r.val_loss) for r in log.eval_records()] == [(0, 10.9857), (2, 10.7012)]
    assert log.lines_skipped == 1  # "=> calculated gradient accumulation steps"


# build-nanogpt's log.txt: f.write(f"{step} val {val_loss_accum.item():.4f}\n"), f"{step} hella
# {acc_norm:.4f}\n", f"{step} train {loss_accum.item():.6f}\n"
def test_build_nanogpt_log_txt() -> None:
    log = read_log("log.txt", text="4750 val 3.3825\n4750 hella 0.2913\n4750 train 3.412345\n"
                   "4811 train 3.371206\n")
    assert log.format == "build-nanogpt"
    assert _fields(log, "kind", "step", "train_loss", "val_loss") == [
        ("eval", 4750, None, 3.3825), ("train", 4750, 3.412345, None),
        ("train", 4811, 3.371206, None)]
    # HellaSwag's 0.2913 is an accuracy: recognised, never a loss
    assert (log.lines_recognised, log.lines_skipped) == (4, 0)


# ---- nanoGPT behind a logger's prefix, torchrun's [rank0]:, a tqdm bar, or "\r"-joined
@pytest.mark.parametrize("line", [
    "2024-05-01 12:00:01,123 INFO iter 100: loss 3.2100, time 95.00ms, mfu 40.00%",
    "[rank0]: iter 100: loss 3.2100, time 95.00ms, mfu 40.00%",
    "[rank0]:iter 100: loss 3.2100, time 95.00ms, mfu 40.00%",
    "  5%|▌         | 100/2000 [00:10<03:10,  9.99it/s]iter 100: loss 3.2100, time 95.00ms, mfu 40.00%",
    "INFO:__main__:iter 100: loss 3.2100, time 95.00ms, mfu 40.00%",
])
def test_nanogpt_iter_behind_a_prefix(line: str) -> None:
    log = read_log("train.log", text=line + "\n")
    assert log.format == "nanogpt"
    assert _fields(log, "step", "train_loss", "time_ms", "mfu_percent") == [
        (100, 3.21, 95.0, 40.0)]


def test_nanogpt_eval_behind_a_prefix_and_carriage_returns() -> None:
    log = read_log("train.log", text="[rank0]: step 500: train loss 3.2100, val loss 3.3300\n"
                   " 10%|#   |\riter 501: loss 3.1900, time 95.00ms, mfu 40.00%\r"
                   " 11%|#   |\n")
    assert _fields(log, "kind", "step", "train_loss", "val_loss") == [
        ("eval", 500, 3.21, 3.33), ("train", 501, 3.19, None)]
    assert log.lines_skipped == 2  # the two progress bars


# ---- litgpt: pretrain.py (2024-) f"Epoch {metrics['epoch']+1} | iter {metrics['iter']} step
# {metrics['step']} | loss train: {metrics['loss']:.3f}, val: {val_loss} | iter time:
# {metrics['iter_time'] * 1000:.2f} ms{' (step)' ...} remaining time: {timedelta(...)!s}" and
# f"iter {state['iter_num']}: val loss {val_loss:.4f}, val time: {td * 1000:.2f} ms"; the
# finetuning scripts f"iter {iter_num} step {step_count}: loss {loss_item:.4f}, iter time:
# {(t1 - iter_t0) * 1000:.2f}ms{' (optimizer.step)' ...}"
LITGPT = """\
Epoch 1 | iter 4 step 1 | loss train: 10.982, val: n/a | iter time: 520.12 ms (step) remaining time: 0:12:00
Epoch 1 | iter 8 step 2 | loss train: 10.826, val: n/a | iter time: 519.80 ms (step) remaining time: 0:11:58
Validating ...
iter 8: val loss 10.7123, val time: 1234.50 ms
Epoch 1 | iter 12 step 3 | loss train: 10.611, val: 10.712 | iter time: 521.00 ms (step) remaining time: 0:11:56
"""


def test_litgpt_pretrain() -> None:
    log = read_log("litgpt.txt", text=LITGPT)
    assert log.format == "litgpt"
    # the record's step is the optimizer's (iter counts micro-batches: 4 a step here)
    assert [(r.step, r.train_loss, r.time_ms) for r in log.train_records()] == [
        (1, 10.982, 520.12), (2, 10.826, 519.8), (3, 10.611, 521.0)]
    # "iter 8: val loss" follows step 2's line (iter 8): it is step 2's evaluation
    assert [(r.step, r.val_loss) for r in log.eval_records()] == [(2, 10.7123)]


@pytest.mark.parametrize(("line", "step", "loss", "ms"), [
    ("iter 38 step 38: loss 10.8259, iter time: 520.12ms", 38, 10.8259, 520.12),
    ("iter 40 step 10: loss 9.1000, iter time: 530.00ms (optimizer.step), remaining time: 2.00 days",
     10, 9.1, 530.0),
    ("iter 40 | step 10: loss 9.1000, iter time: 530.00 ms (optimizer.step), remaining time: 2.00 days",
     10, 9.1, 530.0),
])
def test_litgpt_iter_step_lines(line: str, step: int, loss: float, ms: float) -> None:
    log = read_log("litgpt.txt", text=line + "\n")
    assert log.format == "litgpt"
    assert _fields(log, "step", "train_loss", "time_ms") == [(step, loss, ms)]


# lit-gpt (2023) pretrain: f"iter {iter_num}: loss {loss.item():.4f}, time: {dt*1000:.2f}ms,
# speed: {tokens_sec_str} toks/s/device" (tokens_sec_str is "-" while accumulating) and
# f"step {iter_num}: val loss {val_loss:.4f}"; nanoGPT's own line has "time" without a colon
def test_lit_gpt_2023_and_nanogpt_iter_lines_told_apart() -> None:
    log = read_log("litgpt.txt", text="iter 1: loss 11.0666, time: 3421.84ms, speed: 299 toks/s/device\n"
                   "iter 2: loss 11.0001, time: 410.00ms, speed: - toks/s/device\n"
                   "step 2: val loss 10.9000\n")
    assert log.format == "litgpt"
    assert _fields(log, "kind", "step", "train_loss", "val_loss", "time_ms", "tokens_per_second") == [
        ("train", 1, 11.0666, None, 3421.84, 299.0), ("train", 2, 11.0001, None, 410.0, None),
        ("eval", 2, None, 10.9, None, None)]
    nano = read_log("train.log", text="iter 1: loss 11.0666, time 3421.84ms, mfu 1.00%\n")
    assert nano.format == "nanogpt"
    assert _fields(nano, "step", "train_loss", "time_ms", "mfu_percent") == [(1, 11.0666, 3421.84, 1.0)]


# ---- llama2.c train.py: print(f"{iter_num} | loss {lossf:.4f} | lr {lr:e} | {dt*1000:.2f}ms |
# mfu {running_mfu*100:.2f}%") and nanoGPT's eval line
LLAMA2C = """\
tokens per iteration will be: 131,072
step 0: train loss 10.4012, val loss 10.4021
0 | loss 10.4023 | lr 0.000000e+00 | 9120.44ms | mfu -100.00%
600 | loss 5.8008 | lr 5.000000e-05 | 8132.78ms | mfu 0.31%
601 | loss 5.7901 | lr 5.008333e-05 | 8130.01ms | mfu 0.31%
"""


def test_llama2c() -> None:
    log = read_log("llama2c.txt", text=LLAMA2C)
    assert log.format == "llama2.c"  # three training lines against one nanoGPT-style evaluation
    assert log.reported_tokens_per_step == 131_072
    assert [(r.step, r.train_loss, r.learning_rate, r.time_ms, r.mfu_percent)
            for r in log.train_records()] == [
        (0, 10.4023, 0.0, 9120.44, None), (600, 5.8008, 5e-05, 8132.78, 0.31),
        (601, 5.7901, 5.008333e-05, 8130.01, 0.31)]
    assert [(r.step, r.val_loss) for r in log.eval_records()] == [(0, 10.4021)]


# ---- torchtitan metrics.py: logger.info(f"{color.red}step: {step:2}  {color.green}loss:
# {global_avg_loss:7.4f}  {color.orange}grad_norm: {grad_norm:7.4f}  {color.turquoise}memory:
# {max_reserved_gib:5.2f}GiB({max_reserved_pct:.2f}%)  {color.blue}tps: {round(tps):,}
# {color.cyan}tflops: {tflops:,.2f}  {color.magenta}mfu: {mfu:.2f}%{color.reset}"), earlier
# without grad_norm and tflops; validation f"{color.yellow}validate step: {step:2}  {color.green}
# loss: {loss:7.4f}  ..."; the logger's format "[titan] %(asctime)s - %(name)s - %(levelname)s -
# %(message)s", torchrun's "[rank0]:" before it
C = {"red": "\x1b[31m", "green": "\x1b[32m", "orange": "\x1b[38;2;255;165;0m", "blue": "\x1b[34m",
     "cyan": "\x1b[36m", "magenta": "\x1b[35m", "yellow": "\x1b[33m", "reset": "\x1b[39m"}
TITAN = (
    "[rank0]:[titan] 2025-01-01 00:00:00,000 - root - INFO - Training starts at step 1\n"
    f"[rank0]:[titan] 2025-01-01 00:00:05,000 - root - INFO - {C['red']}step:  1  {C['green']}loss: 12.2340  {C['orange']}grad_norm:  9.8700  {C['blue']}memory: 54.32GiB(57.17%)  tps: 1,234  {C['cyan']}tflops: 71.50  {C['magenta']}mfu: 7.23%{C['reset']}\n"
    f"[rank0]:[titan] 2025-01-01 00:00:10,000 - root - INFO - {C['red']}step: 10  {C['green']}loss:  9.4123  {C['orange']}grad_norm:  3.2100  {C['blue']}memory: 54.32GiB(57.17%)  tps: 12,345  {C['cyan']}tflops: 1,135.71  {C['magenta']}mfu: 13.72%{C['reset']}\n"
    "[titan] 2025-01-01 00:00:15,000 - root - INFO - step: 20  loss:  8.1000  memory: 54.32GiB(57.17%)  tps: 12,400  mfu: 13.80%\n"
    f"[titan] 2025-01-01 00:00:16,000 - root - INFO - {C['yellow']}validate step: 20  {C['green']}loss:  8.2000  memory: 54.32GiB(57.17%)  tps: 30,000{C['reset']}\n"
)


def test_torchtitan_coloured_and_plain() -> None:
    log = read_log("titan.log", text=TITAN)
    assert log.format == "torchtitan"
    assert [(r.step, r.train_loss, r.grad_norm, r.tokens_per_second, r.mfu_percent)
            for r in log.train_records()] == [
        (1, 12.234, 9.87, 1234.0, 7.23), (10, 9.4123, 3.21, 12345.0, 13.72),
        (20, 8.1, None, 12400.0, 13.8)]
    assert [(r.step, r.val_loss) for r in log.eval_records()] == [(20, 8.2)]
    assert log.lines_skipped == 1  # "Training starts at step 1"


# ---- llm.c: norm becomes grad_norm (stdout "| norm %6.4f (%+.2fz)|", main.log "norm:%.2f")
def test_llmc_norm_is_the_grad_norm() -> None:
    log = read_log("llmc.log", text="step    1/18865 | loss 11.010754 (+nanz)| norm 15.3650 (+nanz)| lr 8.57e-07 | 412.01 ms | 33.3% bf16 MFU | 1272527 tok/s\n"
                   "s:1 trl:10.9475 lr:0.000002 norm:15.05\n")
    assert [r.grad_norm for r in log.records] == [15.365, 15.05]


# ---- lines of one format are not misread as another's
def test_build_nanogpt_step_is_not_llmc_and_llama2c_is_not_a_log_txt_line() -> None:
    text = ("step  4811 | loss: 3.371206 | lr 4.3592e-04 | norm: 0.3010 | dt: 331.12ms | tok/sec: 1583385.63\n"
            "step 4812/5000 | loss 3.360000 (+0.01z)| norm 0.3000 (+0.00z)| lr 4.35e-04 | 330.00 ms | 40.0% bf16 MFU | 1590000 tok/s\n"
            "600 | loss 5.8008 | lr 5.000000e-05 | 8132.78ms | mfu 0.31%\n"
            "600 train 5.800800\n")
    log = read_log("mixed.log", text=text)
    assert [(r.step, r.train_loss, r.time_ms, r.tokens_per_second) for r in log.records] == [
        (4811, 3.371206, 331.12, 1583385.63), (4812, 3.36, 330.0, 1590000.0),
        (600, 5.8008, 8132.78, None), (600, 5.8008, None, None)]
    # one line each of four formats: build-nanogpt has two and wins
    assert log.format == "build-nanogpt"


# ---- Hugging Face Trainer: printed dicts with nan, 0.0, no step; trainer_state.json
HF = """\
{'loss': 2.8512, 'grad_norm': 1.2874, 'learning_rate': 4.5e-05, 'epoch': 0.1}
{'loss': 2.6133, 'grad_norm': nan, 'learning_rate': 4e-05, 'epoch': 0.2}
{'eval_loss': 2.5401, 'eval_runtime': 12.3, 'epoch': 0.2}
{'loss': 0.0, 'grad_norm': inf, 'learning_rate': 3.5e-05, 'epoch': 0.3}
{'loss': nan, 'grad_norm': -inf, 'learning_rate': 3e-05, 'epoch': 0.4}
"""


def test_hf_dicts_counted_with_non_finite_values() -> None:
    log = read_log("hf.txt", text=HF)
    assert log.format == "hf-trainer" and log.steps_counted
    # training dicts are steps 1, 2, 3, 4; the evaluation after the second takes 2; the loss of
    # 0.0 is a loss; a non-finite grad norm is left out of a record that keeps its loss
    assert _fields(log, "kind", "step", "train_loss", "val_loss", "grad_norm") == [
        ("train", 1, 2.8512, None, 1.2874), ("train", 2, 2.6133, None, None),
        ("eval", 2, None, 2.5401, None), ("train", 3, 0.0, None, None)]
    norm = log.warning("non-finite-grad-norm")
    assert norm is not None and (norm.line, norm.step, norm.count) == (2, 2, 3)
    loss = log.warning("non-finite-loss")
    assert loss is not None and (loss.line, loss.step, loss.count) == (5, 4, 1)


def test_dicts_with_steps_are_not_counted() -> None:
    log = read_log("m.jsonl", text='{"step": 10, "loss": 2.5}\n{"loss": 2.4}\n')
    assert [r.step for r in log.records] == [10, None] and not log.steps_counted
    # a dict among lines of another format keeps its missing step
    mixed = read_log("x.log", text="step 5: train loss 3.0, val loss 3.1\n{'loss': 2.9}\n")
    assert [r.step for r in mixed.records] == [5, None] and not mixed.steps_counted


def test_printed_dicts_run_nothing() -> None:
    for text in ("{'loss': nan, 'x': print('hi')}", "{'loss': 1.0, **other}",
                 "{'loss': float('nan')}", "{'loss': nan.real}"):
        assert mappings.parse_dict(text) is None, text
    assert mappings.parse_dict("{'loss': -inf}") == ("hf-trainer", {"loss": float("-inf")})


# trainer_state.json: json.dumps writes a NaN grad norm as NaN; an evaluation entry holds
# eval_loss and no loss
def test_trainer_state_grad_norm_and_eval_entries(tmp_path: Path) -> None:
    state = {"global_step": 20, "log_history": [
        {"epoch": 0.1, "grad_norm": 1.5, "learning_rate": 3e-05, "loss": 2.4, "step": 10},
        {"epoch": 0.2, "grad_norm": float("nan"), "learning_rate": 2e-05, "loss": 2.3, "step": 20},
        {"epoch": 0.2, "eval_loss": 2.31, "eval_runtime": 3.2, "step": 20},
    ]}
    path = tmp_path / "trainer_state.json"
    path.write_text(json.dumps(state, indent=2))
    assert "NaN" in path.read_text()
    log = read_log(path)
    assert log.format == "hf-trainer-state" and not log.steps_counted
    assert _fields(log, "kind", "step", "train_loss", "val_loss", "grad_norm") == [
        ("train", 10, 2.4, None, 1.5), ("train", 20, 2.3, None, None), ("eval", 20, None, 2.31, None)]
    norm = log.warning("non-finite-grad-norm")
    assert norm is not None and (norm.line, norm.step) == (2, 20)


# ---- a non-finite loss: a warning carrying the step of its first line
@pytest.mark.parametrize(("text", "step", "line"), [
    ("iter 311: loss 3.1000, time 95.00ms, mfu 40.00%\niter 312: loss nan, time 95.00ms, mfu 40.00%\n"
     "iter 313: loss nan, time 95.00ms, mfu 40.00%\n", 312, 2),
    ("step 7/10 | loss inf (+nanz)| norm nan (+nanz)| lr 1.00e-04 | 300.00 ms\n", 7, 1),
    ("step 500: train loss 3.1, val loss -inf\n", 500, 1),
    ("validation loss: nan\n", 0, 1),
])
def test_non_finite_loss_warning_has_its_step(text: str, step: int, line: int) -> None:
    log = read_log("x.log", text=text + "iter 1: loss 2.0\n")
    warning = log.warning("non-finite-loss")
    assert warning is not None and (warning.step, warning.line) == (step, line)


def test_non_finite_loss_step_carries_to_the_next_val_line() -> None:
    # the training line at step 7 has no loss to keep, yet llm.c's val line after it is step 7's
    log = read_log("x.log", text="step 7/10 | loss nan\nval loss 3.5\n")
    assert [(r.step, r.val_loss) for r in log.eval_records()] == [(7, 3.5)]


# ---- batch size changes: nanoGPT's f"tokens per iteration will be: {tokens_per_iter:,}" and
# llm.c's "total_batch_size=%d", printed again by a resumed run
def test_batch_size_changes() -> None:
    text = ("tokens per iteration will be: 491,520\niter 0: loss 10.9\niter 100: loss 5.0\n"
            "tokens per iteration will be: 491,520\niter 101: loss 5.0\niter 200: loss 4.5\n"
            "tokens per iteration will be: 983,040\niter 201: loss 4.4\n")
    log = read_log("train.log", text=text)
    assert log.reported_tokens_per_step == 491_520  # the first stated
    # the first, then the change, each with the last training step read before it
    assert log.tokens_per_step_changes == ((0, 491_520), (200, 983_040))
    llmc = read_log("llmc.log", text="total_batch_size=524288\nstep 1/10 | loss 5.0\n"
                    "step 5/10 | loss 4.0\ntotal_batch_size=262144\nstep 6/10 | loss 3.9\n")
    assert llmc.tokens_per_step_changes == ((0, 524_288), (5, 262_144))


def test_batch_size_changes_are_capped() -> None:
    lines = "".join(f"iter {i}: loss 3.0\ntokens per iteration will be: {1000 + i % 2}\n"
                    for i in range(300))
    log = read_log("train.log", text=lines)
    changes = log.tokens_per_step_changes
    assert len(changes) == 100  # 300 changes stated, the first 100 kept
    assert changes[:3] == ((0, 1000), (1, 1001), (2, 1000)) and changes[-1] == (99, 1001)


# ---- every pattern is linear in the line, and a line of no format is cheap
def test_new_patterns_are_linear_time() -> None:
    patterns = [p for module in (formats, mappings) for p in vars(module).values()
                if isinstance(p, re.Pattern)]
    assert len(patterns) >= 30
    units = ["1", " ", "1.", "1,", "| ", "step ", "iter ", ": ", "\x1b[3", "val ", ":1"]
    prefixes = ["", "step ", "step:1/", "step  1 | loss: ", "iter 1 step ", "Epoch 1 | iter 1 step 1 | loss train: ",
                "1 | loss ", "1 train ", "step: 1  loss: ", "validation loss: ", "[rank0]: "]
    start = time.perf_counter()
    with within(60):
        for pattern in patterns:
            for prefix in prefixes:
                for unit in units:
                    text: str | bytes = prefix + unit * (MAX_LINE_CHARS // len(unit)) + "x"
                    if isinstance(pattern.pattern, bytes):
                        text = text.encode()  # type: ignore[union-attr]
                    pattern.search(text)
                    pattern.match(text)
    assert time.perf_counter() - start < 30
    # record_line on the same lines: at most MAX_PREFIX_TRIES starts behind a prefix are tried
    with within(20):
        for prefix in prefixes:
            for unit in units:
                formats.record_line(prefix + unit * (MAX_LINE_CHARS // len(unit)), lambda: None)


def test_prefix_tries_are_bounded() -> None:
    # the record is the fourth place a record word follows a space: not looked for
    line = "a step b step c iter d iter 5: loss 2.0"
    assert formats.record_line(line, lambda: None) is None
    assert formats.record_line("a step b iter 5: loss 2.0", lambda: None) == (
        "nanogpt", {"kind": "train", "step": 5, "train_loss": 2.0, "time_ms": None,
                    "mfu_percent": None})
    # a record word inside another word is no start: "timestep 5: train loss ..."
    assert formats.record_line("timestep 5: train loss 1.0, val loss 2.0", lambda: None) is None


def test_last_step_after_lines_read_by_the_fast_path() -> None:
    # 5,000 nanoGPT iter lines go the fast way (a block at once); the lines after them still
    # know the last step: llm.c's val line is step 4999's, build-nanogpt's the step after
    text = "".join(f"iter {i}: loss 3.0000, time 95.00ms, mfu 40.00%\n" for i in range(5_000))
    log = read_log("x.log", text=text + "val loss 2.5\nvalidation loss: 2.4\n")
    assert [(r.step, r.val_loss) for r in log.eval_records()] == [(4999, 2.5), (5000, 2.4)]


# ---- fuzz: every sample line, mixed and cut, gives valid records (the reader builds them
# without validation: compact_record) or an error naming the file
SAMPLE_LINES = st.sampled_from(
    MODDED.splitlines() + BUILD_STDOUT.splitlines() + LITGPT.splitlines()
    + LLAMA2C.splitlines() + TITAN.splitlines() + HF.splitlines()
    + ["4750 hella 0.2913", "iter 1: loss 11.0666, time: 3421.84ms, speed: 299 toks/s/device",
       "step 7/10 | loss inf (+nanz)| norm -nan (+nanz)| lr 1.00e-04 | 300.00 ms",
       "step: 1  loss: 2  grad_norm: -1.5  tps: -3  mfu: -2%", "1 | loss -1 | lr -1 | -5ms | mfu -1%",
       "tokens per iteration will be: 0", "total desired batch size: 12"])


@settings(max_examples=200, deadline=None)
@given(st.lists(SAMPLE_LINES | st.text(max_size=40), max_size=10), st.integers(0, 600))
def test_sample_lines_mixed_and_cut_give_valid_logs(lines: list[str], cut: int) -> None:
    text = "\n".join(lines)
    for data in (text, text[:cut]):
        try:
            log = read_log("fuzz.log", text=data)
        except LogFormatError as exc:
            assert str(exc).startswith("fuzz.log"), exc
        else:
            assert TrainingLog.model_validate_json(log.model_dump_json()) == log


# llm.c's current line is read whole by one pattern; it must give what the searches give
@settings(max_examples=200, deadline=None)
@given(st.integers(1, 10**6), st.floats(0, 20), st.floats(0, 100), st.floats(0, 1),
       st.floats(0, 1e5), st.floats(0, 100), st.floats(0, 1e8))
def test_llmc_whole_line_reads_as_the_searches(step: int, loss: float, norm: float, lr: float,
                                               ms: float, mfu: float, toks: float) -> None:
    # printf0("step %4d/%d | loss %7.6f (%+.2fz)| norm %6.4f (%+.2fz)| lr %.2e | %.2f ms |
    # %.1f%% bf16 MFU | %.0f tok/s\n", ...)
    line = (f"step {step:4d}/{10**6} | loss {loss:7.6f} (+0.01z)| norm {norm:6.4f} (-1.20z)| "
            f"lr {lr:.2e} | {ms:.2f} ms | {mfu:.1f}% bf16 MFU | {toks:.0f} tok/s")
    whole = formats.record_line(line, lambda: None)
    m = formats._LLMC_STEP.match(line)
    assert m is not None and whole is not None and formats._LLMC_LINE.match(line) is not None
    assert whole == formats._llmc_step(m, lambda: None)
    assert whole[1]["train_loss"] == float(f"{loss:7.6f}") and whole[1]["grad_norm"] == float(f"{norm:6.4f}")


# ---- after the merge: lines the real-log corpus (tests/data/logs) showed


def test_litgpt_epoch_lines_give_an_evaluation_where_val_changes() -> None:
    # litgpt pretrain.py prints the last validation loss on every line ("val: n/a" before the
    # first): three lines with one value are one evaluation, not three
    text = ("Epoch 1 | iter 4 step 1 | loss train: 10.982, val: n/a | iter time: 520.12 ms\n"
            "Epoch 1 | iter 8 step 2 | loss train: 10.826, val: 10.712 | iter time: 519.80 ms\n"
            "Epoch 1 | iter 12 step 3 | loss train: 10.611, val: 10.712 | iter time: 521.00 ms\n"
            "Epoch 1 | iter 16 step 4 | loss train: 10.402, val: 10.5 | iter time: 521.00 ms\n")
    log = read_log("litgpt.log", text=text)
    assert [(r.step, r.train_loss) for r in log.train_records()] == [
        (1, 10.982), (2, 10.826), (3, 10.611), (4, 10.402)]
    assert [(r.step, r.val_loss) for r in log.eval_records()] == [(2, 10.712), (4, 10.5)]


def test_a_log_whose_only_losses_are_nan_is_read() -> None:
    # llama2.c issue 31 posts two lines, both NaN: the log reads (with the warning), so that
    # diagnose can name the divergence; and a tie of one nanoGPT-shaped evaluation line and one
    # llama2.c line is llama2.c's (its train.py prints nanoGPT's evaluation line)
    text = ("step 100000: train loss nan, val loss nan\n"
            "100000 | loss nan | lr 0.000000e+00 | 2006.12ms | mfu 1.68%\n")
    log = read_log("run.log", text=text)
    assert (log.format, log.records) == ("llama2.c", ())
    warning = log.warning("non-finite-loss")
    # two lines hold a NaN loss (the first holds two)
    assert warning is not None and (warning.line, warning.count, warning.step) == (1, 2, 100000)


def test_build_nanogpt_forks_that_print_with_commas() -> None:
    line = ("step 0001, loss: 9.502789, norm: 10.649774551391602, lr: 1.2000e-04, time: "
            "449.89ms, tokens/sec: 36418.0")
    r = read_log("out.log", text=line + "\n").train_records()[0]
    assert (r.step, r.train_loss, r.grad_norm, r.learning_rate, r.time_ms,
            r.tokens_per_second) == (1, 9.502789, 10.649774551391602, 1.2e-4, 449.89, 36418.0)

# ruff: noqa: E501  (the sample logs keep their real, long lines)
"""Log parsing: nanoGPT, llm.c, Hugging Face Trainer, CSV and JSONL, read as data.

Each sample below is written in the exact print format of its source (cited per sample); the
numbers in it are made up but plausible, and each test asserts the numbers it wrote.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scaleplan.diagnosis.logs import MAX_LINE_CHARS, LogFormatError, TrainingLog, read_log
from scaleplan.errors import ScaleplanError

# karpathy/nanoGPT: model.py prints "number of parameters: %.2fM"; train.py prints
# f"tokens per iteration will be: {tokens_per_iter:,}", f"step {iter_num}: train loss
# {losses['train']:.4f}, val loss {losses['val']:.4f}" and f"iter {iter_num}: loss {lossf:.4f},
# time {dt*1000:.2f}ms, mfu {running_mfu*100:.2f}%" (running_mfu starts at -1.0). The inductor
# line is torch/_inductor/utils.py is_big_gpu's log.warning.
NANOGPT_LOG = """\
tokens per iteration will be: 524,288
Initializing a new model from scratch
number of parameters: 40.56M
num decayed parameter tensors: 50, with 41,385,984 parameters
using fused AdamW: True
compiling the model... (takes a ~minute)
W0412 10:11:12.123000 4242 torch/_inductor/utils.py:1137] [0/0] Not enough SMs to use max_autotune_gemm mode
step 0: train loss 10.9902, val loss 10.9887
iter 0: loss 10.9856, time 61234.56ms, mfu -100.00%
iter 10: loss 9.4321, time 4321.00ms, mfu 11.61%
step 2000: train loss 4.1020, val loss 4.0512
iter 2000: loss 4.0998, time 4330.12ms, mfu 11.58%
W0412 11:11:12.123000 4242 torch/_inductor/utils.py:1137] [0/0] Not enough SMs to use max_autotune_gemm mode
step 14500: train loss 3.6415, val loss 3.5696
iter 14500: loss 3.6502, time 4325.50ms, mfu 11.62%
"""

# HYPOTHESIS_PROFILE=deep: 20x the examples, for a run by hand (fuzz/README.md).
SCALE = {"default": 1, "deep": 20}[os.environ.get("HYPOTHESIS_PROFILE", "default")]


def test_nanogpt_log_numbers() -> None:
    log = read_log("train.log", text=NANOGPT_LOG)
    assert log.format == "nanogpt"
    assert log.reported_params == 40_560_000
    assert log.reported_tokens_per_step == 524_288
    evals = log.eval_records()
    assert [(r.step, r.train_loss, r.val_loss) for r in evals] == [
        (0, 10.9902, 10.9887), (2000, 4.1020, 4.0512), (14500, 3.6415, 3.5696)]
    trains = log.train_records()
    assert [r.step for r in trains] == [0, 10, 2000, 14500]
    assert trains[0].mfu_percent is None  # "-100.00%": not measured yet
    assert trains[0].time_ms == 61234.56
    assert trains[-1].mfu_percent == 11.62
    assert log.last_step() == 14500 and log.final_val_loss() == 3.5696
    sms = log.warning("inductor-not-enough-sms")
    assert sms is not None and sms.line == 7 and sms.count == 2
    # "Initializing ...", "num decayed ...", "using fused ...", "compiling ..." are unknown
    assert log.lines_skipped == 4 and log.lines_read == 15


# karpathy/llm.c train_gpt2.cu (2024): printf0("step %4d/%d | loss %7.6f (%+.2fz)| norm %6.4f
# (%+.2fz)| lr %.2e | %.2f ms | %.1f%% bf16 MFU | %.0f tok/s\n", ...) and printf0("val loss
# %f\n", ...), "num_parameters: %zu => bytes: %zu", "batch_size B=%d * seq_len T=%d *
# num_processes=%d and total_batch_size=%d".
LLMC_LOG = """\
num_parameters: 124475904 => bytes: 248951808
batch_size B=64 * seq_len T=1024 * num_processes=8 and total_batch_size=524288
=> setting grad_accum_steps=1
val loss 11.009430
step    1/18865 | loss 11.010754 (+nanz)| norm 15.3650 (+nanz)| lr 8.57e-07 | 412.01 ms | 33.3% bf16 MFU | 1272527 tok/s
step    2/18865 | loss 10.947535 (+nanz)| norm 15.0453 (+nanz)| lr 1.71e-06 | 349.69 ms | 39.2% bf16 MFU | 1499312 tok/s
val loss 10.901234
"""


def test_llmc_cuda_log_numbers() -> None:
    log = read_log("llmc.log", text=LLMC_LOG)
    assert log.format == "llm.c"
    assert log.reported_params == 124_475_904
    assert log.reported_tokens_per_step == 524_288
    first, second = log.train_records()
    assert (first.step, first.train_loss, first.time_ms) == (1, 11.010754, 412.01)
    assert (first.mfu_percent, first.tokens_per_second, first.learning_rate) == (
        33.3, 1272527.0, 8.57e-07)
    assert second.train_loss == 10.947535
    # a val loss line carries no step: it follows the last step printed (0 before any)
    assert [(r.step, r.val_loss) for r in log.eval_records()] == [(0, 11.00943), (2, 10.901234)]


# llm.c, earlier train_gpt2.cu: "step %4d/%d: train loss %f (%f ms, %d tok/s)"; a mid-2024
# version added "(acc %f)"; train_gpt2.c: "step %d: train loss %f (took %f ms)"; main.log
# (llmc/logger.h): "s:%d trl:%.4f lr:%.6f norm:%.2f" and "s:%d tel:%.4f".
@pytest.mark.parametrize(("line", "step", "loss", "ms", "toks"), [
    ("step    1/74: train loss 4.367857 (224.275024 ms, 36563 tok/s)", 1, 4.367857,
     224.275024, 36563.0),
    ("step    1/74: train loss 4.367857 (acc 4.367857) (224.275024 ms, 36563.3 tok/s)", 1,
     4.367857, 224.275024, 36563.3),
    ("step 3: train loss 4.123400 (took 1843.120000 ms)", 3, 4.1234, 1843.12, None),
])
def test_llmc_older_formats(line: str, step: int, loss: float, ms: float,
                            toks: float | None) -> None:
    (record,) = read_log("x.log", text=line + "\n").records
    assert (record.step, record.train_loss, record.time_ms, record.tokens_per_second) == (
        step, loss, ms, toks)


def test_llmc_main_log() -> None:
    log = read_log("main.log", text="s:0 tel:11.0094\ns:0 trl:11.0108 lr:0.000001 norm:15.37\n"
                   "s:1 trl:10.9475 lr:0.000002 norm:15.05\n")
    assert log.format == "llm.c"
    assert [(r.kind, r.step) for r in log.records] == [("eval", 0), ("train", 0), ("train", 1)]
    assert log.records[2].train_loss == 10.9475 and log.records[2].learning_rate == 0.000002


# transformers PrinterCallback / ProgressCallback print str(logs): Python dict reprs, with the
# tqdm bar on the same line when it is not closed; the final summary holds 'train_runtime'.
HF_PRINTED = """\
 10%|█         | 50/500 [00:30<04:30,  1.66it/s]{'loss': 2.8512, 'grad_norm': 1.2874, 'learning_rate': 4.5e-05, 'epoch': 0.1}
{'loss': 2.6133, 'grad_norm': 0.9921, 'learning_rate': 4e-05, 'epoch': 0.2}
{'eval_loss': 2.5401, 'eval_runtime': 12.3, 'eval_samples_per_second': 81.3, 'epoch': 0.2}
{'train_runtime': 301.2, 'train_samples_per_second': 13.3, 'train_loss': 2.7, 'epoch': 1.0}
"""


def test_hf_printed_dicts() -> None:
    log = read_log("hf.txt", text=HF_PRINTED)
    assert log.format == "hf-trainer"
    assert [(r.kind, r.train_loss, r.val_loss, r.epoch) for r in log.records] == [
        ("train", 2.8512, None, 0.1), ("train", 2.6133, None, 0.2), ("eval", None, 2.5401, 0.2)]
    # printed dicts carry no step: the n-th training dict is step n, the evaluation after the
    # second takes 2 (issue 23)
    assert [r.step for r in log.records] == [1, 2, 2] and log.steps_counted
    assert log.records[0].learning_rate == 4.5e-05


# trainer_state.json as Trainer._save_checkpoint writes it (json.dumps(indent=2)).
def test_trainer_state_json(tmp_path: Path) -> None:
    state = {"global_step": 1000, "log_history": [
        {"epoch": 0.5, "learning_rate": 3e-05, "loss": 2.4, "step": 500},
        {"epoch": 0.5, "eval_loss": 2.31, "eval_runtime": 3.2, "step": 500},
        {"epoch": 1.0, "learning_rate": 1e-05, "loss": 2.2, "step": 1000},
        {"epoch": 1.0, "step": 1000, "train_loss": 2.3, "train_runtime": 100.0},
    ]}
    path = tmp_path / "trainer_state.json"
    path.write_text(json.dumps(state, indent=2))
    log = read_log(path)
    assert log.format == "hf-trainer-state"
    assert [(r.step, r.train_loss, r.val_loss) for r in log.records] == [
        (500, 2.4, None), (500, None, 2.31), (1000, 2.2, None)]


def test_csv_and_jsonl() -> None:
    csv_log = read_log("m.csv", text="step,train_loss,val_loss\n0,10.9,10.95\n100,6.2,\n"
                       "200,5.1,5.3\nnot,a,row,at all\n")
    assert csv_log.format == "csv" and csv_log.lines_skipped == 1
    assert [(r.step, r.train_loss, r.val_loss) for r in csv_log.records] == [
        (0, 10.9, 10.95), (100, 6.2, None), (200, 5.1, 5.3)]
    jsonl = read_log("m.jsonl", text='{"step": 0, "train_loss": 10.9}\n'
                     '{"step": 50, "val_loss": 7.5}\n')
    assert jsonl.format == "jsonl"
    assert [(r.kind, r.step) for r in jsonl.records] == [("train", 0), ("eval", 50)]


def test_nothing_recognisable_is_an_error_naming_the_file() -> None:
    with pytest.raises(LogFormatError, match=r"^notes\.txt: no loss or parameter count found "
                       r"in 2 lines"):
        read_log("notes.txt", text="hello\nworld\n")
    assert issubclass(LogFormatError, ScaleplanError)


def test_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(LogFormatError, match=r"nope\.log: cannot read the log"):
        read_log(tmp_path / "nope.log")


def test_bad_bytes_long_lines_and_cut_off_last_line() -> None:
    text = (b"iter 1: loss 5.0000, time 10.00ms, mfu 1.00%\n\xff\xfe garbage \x80\n"
            + b"x" * (MAX_LINE_CHARS + 1) + b"\nstep 2: train loss 4.9, val loss 4.8\niter 3: lo")
    log = read_log("cut.log", text=text)
    assert (log.lines_not_utf8, log.lines_too_long, log.lines_skipped) == (1, 1, 2)
    assert log.unterminated_last_line
    assert [r.step for r in log.records] == [1, 2]


def test_json_round_trip() -> None:
    log = read_log("train.log", text=NANOGPT_LOG)
    assert TrainingLog.model_validate_json(log.model_dump_json()) == log


def test_nothing_in_a_log_is_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = (f"{{'loss': __import__('pathlib').Path({str(marker)!r}).touch()}}\n"
            f"{{'loss': 1.0, 'x': open({str(marker)!r}, 'w')}}\n"
            "iter 1: loss 2.0000, time 1.00ms, mfu 1.00%\n")
    log = read_log("evil.log", text=evil)
    assert not marker.exists()
    assert log.lines_skipped == 2 and len(log.records) == 1


# ---- fuzz: the contract of tests/test_robustness.py (a result, or a ValueError naming the file)

LOG_LINES = st.sampled_from(NANOGPT_LOG.splitlines() + LLMC_LOG.splitlines()
                            + HF_PRINTED.splitlines() + ["step,train_loss", "1,2", "{", "}",
                                                         "{'loss': " + "[" * 300 + "}",
                                                         "step 1: train loss 1e999, val loss 1",
                                                         "iter 99999999999999999999: loss 1"])


def _check(data: str | bytes) -> None:
    try:
        log = read_log("fuzz.log", text=data)
    except LogFormatError as exc:
        assert str(exc).startswith("fuzz.log"), exc
    else:
        # a result holds what it recognised: records, a parameter count, or a loss line whose
        # loss is not finite (kept as a warning: 'step 1: train loss 1e999' alone, a divergence)
        assert (log.records or log.reported_params is not None
                or any(w.code == "non-finite-loss" for w in log.warnings))
        assert TrainingLog.model_validate_json(log.model_dump_json()) == log


@settings(max_examples=150 * SCALE, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    _check(data)


@settings(max_examples=150 * SCALE, deadline=None)
@given(st.lists(LOG_LINES | st.text(max_size=60), max_size=8), st.integers(0, 400))
def test_real_lines_mixed_and_truncated(lines: list[str], cut: int) -> None:
    text = "\n".join(lines)
    _check(text)
    _check(text[:cut])

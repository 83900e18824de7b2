"""Coverage-guided fuzzing of the training-log readers (atheris, libFuzzer).

The contract: `read_log` on any bytes (nanoGPT, llm.c, Hugging Face Trainer, CSV, JSONL,
truncated or not UTF-8) returns a `TrainingLog` or raises `LogFormatError`; never another
exception, never a hang, never NaN or inf in a record. Run by hand (see fuzz/README.md):

    python fuzz/fuzz_logs.py -runs=200000 -max_total_time=600 fuzz/corpus_logs
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout, uninstalled

from harness import fuzz, hostile  # fuzz/harness.py, beside this file

with atheris.instrument_imports():
    from scaleplan.diagnosis.logs import LogFormatError, read_log


# Seeds: one line of each format read_log knows, so the fuzzer starts past format detection.
SEEDS = [
    "step 100: train loss 5.1000, val loss 5.0000\n",
    "iter 10: loss 9.4321, time 4321.00ms, mfu 11.61%\n",
    "tokens per iteration will be: 524,288\nnumber of parameters: 40.56M\n",
    "step    1/100 | train loss 2.3000 | norm 1.0 | lr 1.00e-04 | (12.30 ms | 1234 tok/s)\n",
    "{'loss': 2.3, 'grad_norm': 1.2, 'learning_rate': 5e-05, 'epoch': 0.1}\n",
    "step,train_loss,val_loss\n1,2.0,2.1\n",
    '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.9}\n',
    # Hostile: long digit runs in every numeric slot (regex backtracking, int() of 10^4 digits,
    # float overflow) and deep nesting in the dict/JSON readers (recursion).
    *hostile([
        "step {digits}: train loss {digits}.{digits}, val loss 5.0\n",
        "iter 1: loss 1.{digits}, time {digits}ms, mfu {digits}%\n",
        "number of parameters: {digits}.{digits}M\ntokens per iteration will be: {digits}\n",
        "step {digits}/{digits} | train loss 2.3 | norm 1e{digits} | lr 1.00e-04 | (1 ms)\n",
        "{{'loss': {open}{digits}{close}, 'epoch': 0.1}}\n",
        '{{"step": 1, "loss": {open}{digits}{close}}}\n',
        '{{"step": {digits}, "loss": 1e{digits}}}\n',
        "step,train_loss\n{digits},{digits}\n",
        "{digits}\n",
    ]),
    "step 1: train loss 5.1\n" * 5_000,  # many lines
]


def test_one_input(data: bytes) -> None:
    try:
        log = read_log("fuzz.log", text=data)
    except LogFormatError:
        return
    assert log.lines_recognised <= log.lines_read, log
    for record in log.records:
        for value in record.model_dump().values():
            assert not (isinstance(value, float) and not math.isfinite(value)), record


if __name__ == "__main__":
    fuzz(test_one_input, SEEDS)

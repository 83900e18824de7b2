"""Harness: whole compiled training steps, measured by the CPU allocator's profiler events.

``python -m tests.compiled_step_peaks`` measures, on CPU (torch 2.13, inductor):

- scaleplan's reference GPT (nanoGPT's layout) compiled as nanoGPT compiles it, fp32 and bf16
  autocast, dropout 0 and 0.1 (CUDA's semantics: bool masks), two shapes, no checkpointing,
  fused AdamW, nanoGPT's loop holding the logits; each compiled model measured with fresh
  gradients and then with every gradient resident (``gradient_accumulation`` False and True);
- transformers 5.25's Llama and GPT-2 (`scaleplan.reference.hf_measure.GRID_SHAPES`),
  ``torch.compile(model)`` whole, the model's own loss, fp32 and bf16 autocast, both ways;
- torchtune 0.6.1's Llama 3.2 layout (`scaleplan.reference.tune_measure.GRID_SHAPES`) as
  full_finetune_single_device runs the published ``compile: True`` +
  ``enable_activation_checkpointing`` rows: bf16 parameters, each layer compiled and then
  checkpointed, the chunked loss compiled (and the standard loss), both ways;
- the same eager steps, and two eager steps measured by the allocator's events and
  `scaleplan.reference.tracking.LiveBytesTracker` at once (the method's check);

with `scaleplan.reference.compiled_step.measure_step` and writes
tests/data/compiled_step_peaks.json: per step the bytes resident when it began (parameters,
gradients, optimizer states, buffers and the batch), its peak above them and each phase's.
tests/test_compiled_step_peaks_replay.py replays them without torch. About three minutes on
two cores with inductor's caches warm (a first compile takes about 30 s).
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

from scaleplan.model.config import GPTConfig

__all__ = ["CHECKS", "HF_CASES", "NANO_CASES", "NANO_CONFIG", "PATH", "TUNE_LOSSES",
           "measure_all", "measure_hf", "measure_nanogpt", "measure_tune"]

PATH = Path(__file__).parent / "data" / "compiled_step_peaks.json"
# distinct sizes (T V, V d, T f, T d all differ) so a storage's size names it
NANO_CONFIG = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=320)
SHAPES = ((2, 24), (8, 64))
# (precision, dropout, (b, s))
NANO_CASES = list(itertools.product(("32-true", "bf16-mixed"), (0.0, 0.1), SHAPES))
HF_CASES = list(itertools.product(("llama", "gpt2"), ("32-true", "bf16-mixed")))
HF_SHAPE = (2, 48)
TUNE_LOSSES = ("chunked", "standard")
CHECKS = [("32-true", SHAPES[0]), ("bf16-mixed", SHAPES[1])]


def _rows(step: Any, **fields: Any) -> list[dict[str, Any]]:
    from scaleplan.reference.compiled_step import measure_step

    out = []
    for accumulating in (False, True):
        m = measure_step(step, accumulating=accumulating)
        out.append({**fields, "gradient_accumulation": accumulating, **m})
    return out


def measure_nanogpt(precision: str, dropout: float, shape: tuple[int, int],
                    compile: bool) -> list[dict[str, Any]]:
    """Both gradient modes of one reference-GPT case (imports torch)."""
    from scaleplan.reference.compiled_step import warmed_step

    b, s = shape
    cfg = NANO_CONFIG.replace(dropout=dropout)
    step = warmed_step(cfg, micro_batch_size=b, seq_len=s, precision=precision,
                       compile=compile)
    return _rows(step, implementation="nanogpt", family="gpt2-like", precision=precision,
                 dropout=dropout, micro_batch_size=b, seq_len=s, compile=compile)


def measure_hf(family: str, precision: str, compile: bool) -> list[dict[str, Any]]:
    """Both gradient modes of one transformers case (imports torch and transformers)."""
    from scaleplan.reference.compiled_step import warmed_hf_step
    from scaleplan.reference.hf_measure import GRID_SHAPES

    b, s = HF_SHAPE
    step = warmed_hf_step(GRID_SHAPES[family], family, micro_batch_size=b, seq_len=s,
                          precision=precision, compile=compile)
    return _rows(step, implementation="hf", family=family, precision=precision, dropout=0.0,
                 micro_batch_size=b, seq_len=s, compile=compile)


def measure_tune(loss: str, compile: bool) -> list[dict[str, Any]]:
    """Both gradient modes of torchtune's checkpointed Llama 3.2 step (imports torchtune)."""
    from scaleplan.reference.compiled_step import warmed_tune_step
    from scaleplan.reference.tune_measure import GRID_SHAPES

    b, s = HF_SHAPE
    step = warmed_tune_step(GRID_SHAPES["llama3_2"], "llama3_2", micro_batch_size=b,
                            seq_len=s, loss=loss, compile=compile)
    return _rows(step, implementation="torchtune", family="llama3_2", precision="bf16-true",
                 dropout=0.0, micro_batch_size=b, seq_len=s, compile=compile, loss=loss,
                 checkpointing="full")


def measure_all() -> dict[str, Any]:
    """Every case (imports torch)."""
    import torch
    import torchtune
    import transformers

    from scaleplan.reference.compiled_step import check_against_tracker

    checks = [{"precision": p, "micro_batch_size": b, "seq_len": s,
               **check_against_tracker(NANO_CONFIG, micro_batch_size=b, seq_len=s,
                                       precision=p)} for p, (b, s) in CHECKS]
    rows: list[dict[str, Any]] = []
    for compile in (False, True):
        for precision, dropout, shape in NANO_CASES:
            t = time.time()
            rows += measure_nanogpt(precision, dropout, shape, compile)
            print(precision, dropout, shape, compile, f"{time.time() - t:.0f} s", flush=True)
        for family, precision in HF_CASES:
            rows += measure_hf(family, precision, compile)
            print(family, precision, compile, flush=True)
        for loss in TUNE_LOSSES:
            rows += measure_tune(loss, compile)
            print("torchtune", loss, compile, flush=True)
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "torchtune": torchtune.__version__,
            "python": sys.version.split()[0], "optimizer": "fused", "checks": checks,
            "cases": rows}


if __name__ == "__main__":
    PATH.write_text(json.dumps(measure_all(), indent=1) + "\n")
    print(f"wrote {PATH}")

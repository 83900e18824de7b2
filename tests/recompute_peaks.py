"""Harness: the peak of full-checkpointing steps of the reference model, measured live.

``python -m tests.recompute_peaks`` measures every full-checkpointing point of
tests/test_memory_vs_reference.py's validation grid (both configs, five precisions, flash
attention, dropout 0 and 0.1 with CUDA's and CPU's dropout semantics: 30 steps, about two
minutes on CPU) with `scaleplan.reference.measure.measure` and writes
tests/data/recompute_peaks.json: per case the measured peak, the phase it fell in, and the
resident bytes the model leaves out (buffers, i.e. the RoPE tables).
tests/test_recompute_peaks_replay.py replays them without torch, so mutation testing sees
`scaleplan.memory.stage_terms`' recompute moment.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Any

from scaleplan.model.config import GPTConfig

__all__ = ["CASES", "CONFIGS", "PATH", "B", "S", "measure_all"]

PATH = Path(__file__).parent / "data" / "recompute_peaks.json"
B, S = 2, 48
CONFIGS = {
    "gpt2-like": GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=200),
    "llama-like": GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, block_size=64,
                            vocab_size=200, bias=False, mlp="swiglu", norm="rmsnorm",
                            position="rope", tie_embeddings=False, mlp_hidden=160),
}
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "bf16-fp32-master")
# (dropout, CUDA's dropout semantics on CPU)
DROPOUTS = ((0.0, True), (0.1, True), (0.1, False))
CASES = list(itertools.product(CONFIGS, PRECISIONS, DROPOUTS))


def measure_all() -> dict[str, Any]:
    """Measure every case (imports torch)."""
    import torch

    from scaleplan.reference.measure import measure

    rows = []
    for name, precision, (dropout, cuda_semantics) in CASES:
        m = measure(CONFIGS[name].replace(dropout=dropout), micro_batch_size=B, seq_len=S,
                    precision=precision, attention="flash", cuda_semantics=cuda_semantics,
                    checkpointing=True, accumulating=True, optimizer="fused")
        batch = 2 * B * S * 8  # the int64 token ids and targets, resident as "other"
        rows.append({"config": name, "precision": precision, "dropout": dropout,
                     "cuda_semantics": cuda_semantics, "peak_bytes": m.peak_bytes,
                     "peak_phase": m.peak_phase, "buffers": m.resident.other - batch})
    return {"torch": torch.__version__, "python": sys.version.split()[0],
            "micro_batch_size": B, "seq_len": S, "optimizer": "fused", "cases": rows}


if __name__ == "__main__":
    PATH.write_text(json.dumps(measure_all(), indent=1) + "\n")
    print(f"wrote {PATH}")

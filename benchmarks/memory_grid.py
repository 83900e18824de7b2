"""Time `memory_grid` over 10^5 (micro-batch, sequence length) points against a Python loop.

Run from the repository root: ``python benchmarks/memory_grid.py``. Prints the vectorised time,
the loop's time per point (measured on a sample and scaled to the grid), their ratio, and
whether the sampled points agree exactly.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scaleplan.memory.limits import memory_grid
from scaleplan.memory.training import training_memory
from scaleplan.model.config import GPTConfig

LOOP_SAMPLE = 500  # points the Python loop evaluates (its time is scaled to the whole grid)


def main() -> None:
    cfg = GPTConfig.preset("llama-2-7b")
    b = np.arange(1, 101, dtype=np.float64)[:, None]
    s = np.linspace(128, 4096, 1000).round()[None, :]
    start = time.perf_counter()
    grid = memory_grid(cfg, micro_batch_size=b, seq_len=s)
    vector = time.perf_counter() - start
    rng = np.random.default_rng(0)
    points = [(int(rng.integers(1, 101)), int(rng.integers(0, 1000))) for _ in range(LOOP_SAMPLE)]
    start = time.perf_counter()
    totals = [training_memory(cfg, micro_batch_size=bi, seq_len=int(s[0, j])).total
              for bi, j in points]
    loop = (time.perf_counter() - start) / LOOP_SAMPLE * grid.size
    match = all(grid[bi - 1, j] == t for (bi, j), t in zip(points, totals, strict=True))
    print(f"grid of {grid.size:,} points: {vector * 1e3:.1f} ms vectorised; Python loop "
          f"~{loop:.1f} s (from {LOOP_SAMPLE} points); ratio ~{loop / vector:,.0f}x; "
          f"match: {match}")


if __name__ == "__main__":
    main()

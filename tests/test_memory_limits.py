"""Inverse questions and the vectorised memory grid."""

from __future__ import annotations

import numpy as np
import pytest

from scaleplan.memory.limits import (
    available_memory_bytes,
    max_micro_batch_size,
    max_seq_len,
    memory_grid,
)
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.training import training_memory
from scaleplan.model.config import GPTConfig

GPT2 = GPTConfig.preset("gpt2")
LLAMA = GPTConfig.preset("llama-2-7b")


@pytest.mark.parametrize("options", [
    dict(),
    dict(precision="bf16-fp32-master", checkpointing="full", hold_logits=False),
    dict(attention="eager", optimizer="adamw-8bit", device="cpu"),
    dict(parallelism=Parallelism(data=4, zero=3, tensor=2, pipeline=4)),
])
def test_vectorised_grid_equals_the_scalar_function_at_sampled_points(
        options: dict[str, object]) -> None:
    b = np.arange(1, 101, dtype=np.float64)[:, None]
    s = np.linspace(128, 4096, 1000).round()[None, :]
    grid = memory_grid(LLAMA, micro_batch_size=b, seq_len=s, **options)  # type: ignore[arg-type]
    assert grid.shape == (100, 1000) and grid.dtype == np.float64
    rng = np.random.default_rng(1)
    for i, j in zip(rng.integers(0, 100, 20), rng.integers(0, 1000, 20), strict=True):
        one = training_memory(LLAMA, micro_batch_size=int(b[i, 0]), seq_len=int(s[0, j]),
                              **options)  # type: ignore[arg-type]
        assert grid[i, j] == one.total


def test_grid_does_not_overflow_where_int64_would() -> None:
    # b s^2 a bytes of eager scores at b=10^6, s=10^6 exceed 2^63; float64 keeps the magnitude.
    cfg = GPT2.replace(position="rope", block_size=2048)
    big = memory_grid(cfg, micro_batch_size=np.array([1e6]), seq_len=np.array([1e6]),
                      attention="eager")
    assert big[0] > 2.0**63


def test_max_micro_batch_size_is_the_largest_that_fits() -> None:
    budget = 40 * 2**30
    b = max_micro_batch_size(GPT2, budget, seq_len=1024)
    fits = [training_memory(GPT2, micro_batch_size=n, seq_len=1024).total <= budget
            for n in (b, b + 1)]
    assert b > 1 and fits == [True, False]
    assert max_micro_batch_size(GPT2, budget, seq_len=1024, headroom=0.5) < b


def test_nothing_fits_gives_zero() -> None:
    assert max_micro_batch_size(GPT2, 2**30, seq_len=1024) == 0
    assert max_seq_len(GPT2, 2**30, micro_batch_size=1) == 0


def test_max_seq_len_stops_at_block_size_with_learned_positions() -> None:
    assert max_seq_len(GPT2, 10**15, micro_batch_size=1) == 1024


def test_gpu_memory_is_what_the_driver_reports_when_known() -> None:
    # hardware database: nvidia-smi reports 12,282 MiB total on an RTX 4070 (12 GB marketed).
    assert available_memory_bytes("RTX 4070") == 12_282 * 2**20


def test_bad_headroom_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"headroom=1.5 must be a fraction in \[0, 1\)"):
        max_micro_batch_size(GPT2, "RTX 4070", seq_len=1024, headroom=1.5)

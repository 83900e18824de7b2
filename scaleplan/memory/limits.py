"""Inverse questions: the largest micro-batch or sequence that fits, and memory over a grid.

`memory_grid` evaluates `scaleplan.memory.training.training_memory`'s ``total`` (or
``tensor_peak``) over
numpy arrays of micro-batch sizes and sequence lengths in float64 (exact below 2^53 bytes, so no
int64 overflow and no rounding for any real GPU); it runs the very same arithmetic as the scalar
function, on arrays. `max_micro_batch_size` and `max_seq_len` bisect on the scalar function,
since memory grows with both.

The memory available on a GPU is `scaleplan.compute.hardware.GPUSpec.usable_memory_bytes` (what the
driver reports) when known, else ``memory_bytes``, the same rule as the planner; ``headroom``
keeps a fraction of it free.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from scaleplan.checks import one_of
from scaleplan.compute.hardware import GPUSpec
from scaleplan.compute.hardware import gpu as lookup_gpu
from scaleplan.errors import ScaleplanError
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.sharding import OptimizerImpl
from scaleplan.memory.states import normalize_optimizer
from scaleplan.memory.training import (
    ALLOCATOR_SLACK_FRACTION,
    CUDA_CONTEXT_BYTES,
    check_shape,
    stage_parts,
    training_memory,
)
from scaleplan.model.config import GPTConfig, normalize_precision

__all__ = ["available_memory_bytes", "max_micro_batch_size", "max_seq_len", "memory_grid"]

MAX_SEARCH = 2**24  # upper bound of the searches (sequences, or tokens per sequence)


def available_memory_bytes(gpu: str | GPUSpec | int) -> int:
    """Bytes a training process may use on ``gpu``: ``usable_memory_bytes`` when known (what the
    driver reports as total), else ``memory_bytes``; an int is taken as bytes.

    >>> available_memory_bytes(80 * 2**30) // 2**30
    80
    """
    if isinstance(gpu, bool):
        raise ScaleplanError(f"gpu={gpu!r} must be a GPU name, a GPUSpec or a size in bytes")
    if isinstance(gpu, int):
        if gpu < 1:
            raise ScaleplanError(f"gpu={gpu} bytes must be positive")
        return gpu
    spec = lookup_gpu(gpu) if isinstance(gpu, str) else gpu
    return spec.usable_memory_bytes if spec.usable_memory_bytes is not None else spec.memory_bytes


def _budget(gpu: str | GPUSpec | int, headroom: float) -> int:
    if not 0 <= headroom < 1:
        raise ScaleplanError(f"headroom={headroom!r} must be a fraction in [0, 1), e.g. 0.1 to "
                             "keep 10% of the GPU free")
    return math.floor(available_memory_bytes(gpu) * (1 - headroom))


def memory_grid(cfg: GPTConfig, *, micro_batch_size: Any, seq_len: Any,
                precision: str = "bf16-mixed", optimizer: str = "adamw",
                attention: Literal["flash", "eager"] = "flash",
                checkpointing: Literal["none", "selective", "full"] = "none",
                device: Literal["cuda", "cpu", "cpu-cuda-semantics"] = "cuda",
                parallelism: Parallelism | None = None,
                optimizer_impl: OptimizerImpl | None = None,
                hold_logits: bool = True, cuda_context_bytes: int = CUDA_CONTEXT_BYTES,
                allocator_slack_fraction: float = ALLOCATOR_SLACK_FRACTION,
                what: Literal["total", "tensor_peak"] = "total") -> NDArray[np.float64]:
    """`training_memory`'s ``total`` (or ``tensor_peak``) in bytes, as float64, for arrays of
    micro-batch sizes and sequence lengths (broadcast against each other).

    >>> cfg = GPTConfig.preset("gpt2")
    >>> grid = memory_grid(cfg, micro_batch_size=np.arange(1, 5)[:, None],
    ...                    seq_len=np.array([256, 1024]))
    >>> grid.shape, bool(grid[3, 1] == training_memory(cfg, micro_batch_size=4,
    ...                                                  seq_len=1024).total)
    ((4, 2), True)
    """
    b = np.asarray(micro_batch_size, dtype=np.float64)
    s = np.asarray(seq_len, dtype=np.float64)
    if np.any(b != np.floor(b)) or np.any(s != np.floor(s)):
        raise ScaleplanError("micro_batch_size and seq_len must hold whole numbers")
    one_of("attention", attention, ("flash", "eager"))
    one_of("checkpointing", checkpointing, ("none", "selective", "full"))
    one_of("device", device, ("cuda", "cpu", "cpu-cuda-semantics"))
    check_shape(cfg, b, s)
    p, opt = normalize_precision(precision), normalize_optimizer(optimizer)
    par = parallelism if parallelism is not None else Parallelism()
    par.check(cfg)
    stages = ("only",) if par.pipeline == 1 else ("first", "last")
    peak = None
    for stage in stages:
        W, G, O, _, _, _, held, moments = stage_parts(
            cfg, b, s, p, opt, attention, checkpointing, device, par, optimizer_impl,
            hold_logits, stage)  # type: ignore[arg-type]
        worst = np.maximum.reduce(np.broadcast_arrays(*moments.values()))
        stage_peak = W + G + O + worst + held
        peak = stage_peak if peak is None else np.maximum(peak, stage_peak)
    result = np.asarray(peak, dtype=np.float64)
    if what == "tensor_peak" or device == "cpu":
        return result
    return result + cuda_context_bytes + np.ceil(allocator_slack_fraction * result)


def _largest(fits: Any, lo: int, hi: int) -> int:
    """The largest n in [lo, hi] with fits(n), given fits is monotone decreasing; lo - 1 if
    none."""
    if not fits(lo):
        return lo - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def max_micro_batch_size(cfg: GPTConfig, gpu: str | GPUSpec | int, *, seq_len: int,
                         headroom: float = 0.0, **options: Any) -> int:
    """The largest micro-batch whose `training_memory` total fits in ``gpu`` with ``headroom``
    kept free; 0 when not even one sequence fits. ``options`` go to `training_memory`.

    >>> cfg, a100 = GPTConfig.preset("gpt2"), "A100-80GB"
    >>> b = max_micro_batch_size(cfg, a100, seq_len=1024)
    >>> def fits(n):
    ...     m = training_memory(cfg, micro_batch_size=n, seq_len=1024)
    ...     return m.total <= available_memory_bytes(a100)
    >>> fits(b), fits(b + 1)
    (True, False)
    """
    budget = _budget(gpu, headroom)

    def fits(b: int) -> bool:
        return training_memory(cfg, micro_batch_size=b, seq_len=seq_len, **options).total \
            <= budget

    return _largest(fits, 1, MAX_SEARCH)


def max_seq_len(cfg: GPTConfig, gpu: str | GPUSpec | int, *, micro_batch_size: int,
                headroom: float = 0.0, **options: Any) -> int:
    """The longest sequence (at most ``block_size`` with learned positions) whose
    `training_memory` total fits in ``gpu`` with ``headroom`` kept free; 0 if none fits.

    >>> max_seq_len(GPTConfig.preset("llama-2-7b"), 80 * 2**30, micro_batch_size=1,
    ...             optimizer="adamw-8bit", precision="bf16-true") > 2048
    True
    """
    budget = _budget(gpu, headroom)
    hi = cfg.block_size if cfg.position == "learned" else MAX_SEARCH

    def fits(s: int) -> bool:
        return training_memory(cfg, micro_batch_size=micro_batch_size, seq_len=s,
                               **options).total <= budget

    return _largest(fits, 1, hi)

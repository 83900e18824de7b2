"""The longest context and the largest batch a GPU can serve: searches on `inference_memory`.

Both search the very function that answers "how much memory", so they agree with it by
construction: the answer n fits (``inference_memory(...).total <= budget``) and n + 1 does not.
Memory never shrinks as the context or the batch grows (the KV cache grows, and the prefill
chunk grows until it reaches its cap), so doubling then bisecting finds the boundary in about
2 log2(n) evaluations. The budget is `scaleplan.memory.limits.available_memory_bytes` (what the
driver reports as usable) less a ``headroom`` fraction: vLLM's ``gpu_memory_utilization=0.9`` is
``headroom=0.1``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from scaleplan.checks import real, whole
from scaleplan.compute.hardware import GPUSpec
from scaleplan.errors import ScaleplanError, shown
from scaleplan.inference.memory import inference_memory
from scaleplan.memory.limits import MAX_DOUBLINGS, available_memory_bytes
from scaleplan.model.config import GPTConfig

__all__ = ["max_batch", "max_context", "serving_budget"]


def serving_budget(gpu: str | GPUSpec | int, headroom: float = 0.0) -> int:
    """Bytes a server may use on ``gpu`` with a ``headroom`` fraction kept free.

    >>> serving_budget(80 * 2**30, headroom=0.1) == math.floor(80 * 2**30 * 0.9)
    True
    """
    fraction = real("headroom", headroom, inclusive=True,
                    message="must be a fraction in [0, 1), e.g. 0.1 (vLLM's "
                    "gpu_memory_utilization=0.9)")
    if fraction >= 1:
        raise ScaleplanError(f"headroom={shown(headroom)} must be a fraction in [0, 1), e.g. 0.1 "
                             "(vLLM's gpu_memory_utilization=0.9)")
    return math.floor(available_memory_bytes(gpu) * (1 - fraction))


def _largest(fits: Callable[[int], bool], hi: int | None) -> int:
    """The largest n in [1, hi] with fits(n) (fits is monotone decreasing); 0 if none."""
    if not fits(1):
        return 0
    good, bad = 1, None
    for _ in range(MAX_DOUBLINGS):
        probe = 2 * good if hi is None else min(2 * good, hi)
        if probe == good:
            return good
        if not fits(probe):
            bad = probe
            break
        good = probe
    if bad is None:
        raise ScaleplanError(f"memory stays within the budget past {good:,}; there is no largest "
                             "size")
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return good


def max_context(cfg: GPTConfig, gpu: str | GPUSpec | int, *, batch_size: int = 1,
                headroom: float = 0.0, **options: Any) -> int:
    """The longest context (tokens per request, at most ``block_size``, the model's longest
    position) at which ``batch_size`` requests fit on ``gpu``; 0 when not even one token fits.
    ``options`` go to `inference_memory` (weights, kv_cache, parallelism, ...).

    >>> cfg = GPTConfig.preset("llama-3-8b").replace(block_size=131072)
    >>> n = max_context(cfg, "RTX 4090")
    >>> budget = serving_budget("RTX 4090")
    >>> (inference_memory(cfg, batch_size=1, context_len=n).total <= budget,
    ...  inference_memory(cfg, batch_size=1, context_len=n + 1).total > budget)
    (True, True)
    """
    budget = serving_budget(gpu, headroom)
    batch_size = whole("batch_size", batch_size, example="batch_size=1")

    def fits(n: int) -> bool:
        return inference_memory(cfg, batch_size=batch_size, context_len=n,
                                **options).total <= budget

    return _largest(fits, cfg.block_size)


def max_batch(cfg: GPTConfig, gpu: str | GPUSpec | int, *, context_len: int,
              headroom: float = 0.0, **options: Any) -> int:
    """The most concurrent requests of ``context_len`` tokens that fit on ``gpu``; 0 when not
    even one does. ``options`` go to `inference_memory`.

    >>> max_batch(GPTConfig.preset("llama-3-8b"), "RTX 4090", context_len=8192) >= 1
    True
    """
    budget = serving_budget(gpu, headroom)
    context_len = whole("context_len", context_len, example="context_len=8192")

    def fits(b: int) -> bool:
        return inference_memory(cfg, batch_size=b, context_len=context_len,
                                **options).total <= budget

    return _largest(fits, None)

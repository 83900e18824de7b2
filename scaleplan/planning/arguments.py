"""`plan`'s arguments, checked and converted once at the boundary: the GPUs and their layout, the
MFU, the run's tokens and the options passed on to `training_memory`.

Each check returns the exact Python value the arithmetic needs (an ``int`` for counts, so a numpy
``int8`` never wraps around; a ``float`` for rates, so a ``Decimal`` is never multiplied by a
float) or raises a `ScaleplanError` naming the argument, its value and a fix.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Collection
from typing import Any, NamedTuple

from scaleplan.checks import real, whole
from scaleplan.compute.hardware import GPUSpec
from scaleplan.compute.mfu_defaults import default_mfu
from scaleplan.compute.throughput import MAX_GPUS, token_count
from scaleplan.errors import ScaleplanError, shown
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.training import training_memory

__all__ = ["MAX_CONTEXT_BYTES", "MAX_SEQ_LEN", "AssumedMFU", "Layout", "check_layout",
           "check_memory_options",
           "check_mfu", "check_parallelism", "given_tokens", "passed_options"]

# 10^9 tokens per sequence: ~100x the longest context any model is trained at (10M tokens).
MAX_SEQ_LEN = 10**9
# 1 PB: thousands of times the memory of the largest GPU; a CUDA context is about 0.5 GB.
MAX_CONTEXT_BYTES = 10**15

# What `plan` decides itself; the rest of training_memory's keywords pass through.
_PLAN_SETS = frozenset({"micro_batch_size", "seq_len", "precision", "optimizer", "attention",
                        "checkpointing", "parallelism"})


class Layout(NamedTuple):
    """How the GPUs split the work: all of them, the data-parallel degree, the layout."""

    world_size: int
    data: int
    parallelism: Parallelism | None


def check_parallelism(parallelism: object) -> Parallelism | None:
    """``parallelism`` when it is None or a `Parallelism`; a count of GPUs (the usual mistake)
    or anything else is an error that says what to pass."""
    if parallelism is None or isinstance(parallelism, Parallelism):
        return parallelism
    if isinstance(parallelism, int) and not isinstance(parallelism, bool):
        raise ScaleplanError(
            f"parallelism={shown(parallelism)} must be a Parallelism, not a count of GPUs; for "
            f"{parallelism} data-parallel GPUs pass parallelism=Parallelism(data={parallelism}) "
            f"or world_size={parallelism}")
    raise ScaleplanError(
        f"parallelism={shown(parallelism)} must be a Parallelism, e.g. "
        "Parallelism(data=8, zero=1), or None for plain data parallelism over world_size GPUs")


def check_layout(world_size: object, parallelism: object) -> Layout:
    """The GPUs and the layout, checked against each other: plain data parallelism (DDP) over
    ``world_size`` GPUs without a layout, ``parallelism``'s GPUs with one.

    >>> check_layout(8, None).data
    8
    """
    size = whole("world_size", world_size, message="must be an int >= 1, e.g. world_size=8")
    if size > MAX_GPUS:
        raise ScaleplanError(f"world_size={shown(world_size)} is beyond any real run; give at "
                             f"most {MAX_GPUS:,} GPUs")
    layout = check_parallelism(parallelism)
    if layout is None:
        return Layout(size, size, Parallelism(data=size) if size > 1 else None)
    if layout.gpus > MAX_GPUS:
        raise ScaleplanError(f"parallelism={shown(layout)} uses {layout.gpus:,} GPUs, beyond any "
                             f"real run; give at most {MAX_GPUS:,}")
    if size not in (1, layout.gpus):
        raise ScaleplanError(
            f"world_size={size} but parallelism uses {layout.gpus} GPUs "
            f"(data {layout.data} x tensor {layout.tensor} x pipeline "
            f"{layout.pipeline}); drop world_size or make them agree")
    return Layout(layout.gpus, layout.data, layout)


class AssumedMFU(NamedTuple):
    """The MFU a plan's time assumes, the range around it and where they come from."""

    mfu: float
    low: float
    high: float
    source: str


def check_mfu(mfu: object, spec: GPUSpec) -> AssumedMFU:
    """The MFU given, as a float in (0, 1] (the range collapses to it), or the default for
    ``spec``'s class with the spread of its published runs
    (`scaleplan.compute.mfu_defaults.default_mfu`).

    >>> from decimal import Decimal
    >>> from scaleplan.compute.hardware import gpu
    >>> check_mfu(Decimal("0.5"), gpu("RTX 4070"))
    AssumedMFU(mfu=0.5, low=0.5, high=0.5, source='given')
    >>> check_mfu(None, gpu("RTX 4070"))[:3]
    (0.548, 0.435, 0.622)
    """
    if mfu is None:
        assumed = default_mfu(spec)
        return AssumedMFU(assumed.mfu, assumed.low, assumed.high, assumed.source)
    value = real("mfu", mfu, message="must be a fraction in (0, 1], e.g. mfu=0.35")
    if value > 1:
        raise ScaleplanError(f"mfu={shown(mfu)} must be a fraction in (0, 1], e.g. mfu=0.35; "
                             "did you pass a percentage?")
    return AssumedMFU(value, value, value, "given")


def given_tokens(total_tokens: object, optimal: int, law: str) -> tuple[int, str]:
    """The run's tokens without ``hours``: the law's compute-optimal ones, or those given (an
    int, or a whole number such as ``1e10``)."""
    if total_tokens is None or (isinstance(total_tokens, str) and total_tokens == "chinchilla"):
        return optimal, f"compute-optimal by the {law} law"
    return token_count("total_tokens", total_tokens, message="must be a positive int (or a "
                       "whole number such as 1e10) or 'chinchilla'"), "given"


def check_memory_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options `plan` passes on to `training_memory`: known names only, and a CUDA context
    within reason (a huge one overflowed the remedy search's arithmetic)."""
    if "micro_batch_size" in options:
        raise ScaleplanError("plan() chooses micro_batch_size itself (the largest that fits); "
                             "to check one micro-batch use training_memory")
    return passed_options("plan", training_memory, options, reserved=_PLAN_SETS)


def passed_options(caller: str, target: Callable[..., Any], options: dict[str, Any], *,
                   reserved: Collection[str]) -> dict[str, Any]:
    """``options`` that ``caller`` passes on to ``target``: only ``target``'s keyword-only
    arguments outside ``reserved`` (which the caller sets itself), and a CUDA context within
    `MAX_CONTEXT_BYTES`; anything else is an error naming the option."""
    known = [name for name in _keyword_only(target) if name not in reserved]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ScaleplanError(f"{caller}() got an unknown option {shown(unknown[0])}; the options "
                             f"passed on to {target.__name__} are {', '.join(known)}")
    checked = dict(options)
    if "cuda_context_bytes" in checked:
        checked["cuda_context_bytes"] = whole(
            "cuda_context_bytes", checked["cuda_context_bytes"], minimum=0,
            maximum=MAX_CONTEXT_BYTES, example="cuda_context_bytes=2**29")
    return checked


@functools.lru_cache(maxsize=16)
def _keyword_only(target: Callable[..., Any]) -> tuple[str, ...]:
    """``target``'s keyword-only arguments, in order (read once: ``inspect`` is slow)."""
    return tuple(name for name, p in inspect.signature(target).parameters.items()
                 if p.kind is inspect.Parameter.KEYWORD_ONLY)

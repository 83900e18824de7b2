"""Batch arithmetic: gradient-accumulation steps and the micro-batches that divide a step exactly.

One optimizer step sees ``tokens_per_step = micro_batch_size x seq_len x grad_accum_steps x
world_size`` tokens. All of it is integer arithmetic on Python ints.
"""

from __future__ import annotations

import math
from typing import Literal

from scaleplan.checks import whole
from scaleplan.compute.throughput import MAX_GPUS, MAX_TOKENS
from scaleplan.errors import ScaleplanError

__all__ = ["Rounding", "grad_accum_steps", "micro_batch_sizes"]

Rounding = Literal["down", "up", "nearest"]

# Listing divisors costs sqrt(sequences) steps; a step of 10^12 sequences is far past any real
# run (the largest published steps are tens of millions of tokens), so refuse rather than hang.
MAX_SEQUENCES_PER_STEP = 10**12


def grad_accum_steps(
    tokens_per_step: int,
    micro_batch_size: int,
    seq_len: int,
    world_size: int = 1,
    *,
    rounding: Rounding | None = None,
) -> int:
    """Gradient-accumulation steps per GPU that give exactly ``tokens_per_step`` tokens per step.

    One micro-batch on every GPU is ``micro_batch_size x seq_len x world_size`` tokens. When
    ``tokens_per_step`` is not a whole number of those, the error names the nearest exact choices
    on both sides; pass ``rounding="down" | "up" | "nearest"`` to take one of them instead.

    Examples:
        >>> grad_accum_steps(tokens_per_step=524288, micro_batch_size=8, seq_len=1024)
        64
        >>> grad_accum_steps(500_000, 12, 1024, rounding="nearest")  # 41 x 12 x 1024 = 503,808
        41
    """
    tokens_per_step = whole("tokens_per_step", tokens_per_step, maximum=MAX_TOKENS,
                            example="tokens_per_step=524288")
    micro_batch_size = whole("micro_batch_size", micro_batch_size, maximum=MAX_TOKENS,
                             example="micro_batch_size=8")
    seq_len = whole("seq_len", seq_len, maximum=MAX_TOKENS, example="seq_len=1024")
    world_size = whole("world_size", world_size, maximum=MAX_GPUS, example="world_size=8")
    chunk = micro_batch_size * seq_len * world_size
    below, remainder = divmod(tokens_per_step, chunk)
    if remainder == 0:
        return below
    if rounding is None:
        raise ScaleplanError(_inexact_message(tokens_per_step, micro_batch_size, seq_len,
                                              world_size))
    return _rounded(tokens_per_step, chunk, rounding)


def _inexact_message(tokens_per_step: int, micro_batch_size: int, seq_len: int,
                     world_size: int) -> str:
    """Why ``tokens_per_step`` is not a whole number of micro-batches, with the exact choices on
    both sides: the accumulation steps around it and the micro-batches that divide it."""
    chunk = micro_batch_size * seq_len * world_size
    below = tokens_per_step // chunk
    above = below + 1
    options = [f"grad_accum_steps={above} gives {above * chunk:,} tokens"]
    if below > 0:
        options.insert(0, f"grad_accum_steps={below} gives {below * chunk:,} tokens")
    exact = []
    if tokens_per_step // (seq_len * world_size) <= MAX_SEQUENCES_PER_STEP:
        sizes = micro_batch_sizes(tokens_per_step, seq_len, world_size)
        smaller = [b for b in sizes if b < micro_batch_size][-1:]
        exact = smaller + [b for b in sizes if b > micro_batch_size][:1]
    hint = (f"; micro_batch_size in {exact} divides it exactly" if exact else "")
    return (
        f"tokens_per_step={tokens_per_step:,} is not a multiple of micro_batch_size x seq_len "
        f"x world_size = {micro_batch_size} x {seq_len} x {world_size} = {chunk:,}: "
        f"{' or '.join(options)}{hint}; or pass rounding='down'|'up'|'nearest'"
    )


def _rounded(tokens_per_step: int, chunk: int, rounding: str) -> int:
    """The whole number of ``chunk``-token micro-batches next to ``tokens_per_step`` that
    ``rounding`` asks for (``tokens_per_step`` is not a multiple of ``chunk``)."""
    below = tokens_per_step // chunk
    above = below + 1
    if rounding == "down":
        if below == 0:
            raise ScaleplanError(
                f"tokens_per_step={tokens_per_step:,} is smaller than one micro-batch on every "
                f"GPU ({chunk:,} tokens); lower micro_batch_size or raise tokens_per_step"
            )
        return below
    if rounding == "up":
        return above
    if rounding == "nearest":
        return above if below == 0 or tokens_per_step - below * chunk >= above * chunk - \
            tokens_per_step else below
    raise ScaleplanError(f"rounding={rounding!r} is not one of 'down', 'up', 'nearest'")


def micro_batch_sizes(tokens_per_step: int, seq_len: int, world_size: int = 1) -> list[int]:
    """Every micro-batch size that divides ``tokens_per_step`` exactly, smallest first.

    These are the micro-batches for which `grad_accum_steps` needs no rounding.

    >>> micro_batch_sizes(524288, 1024)[:6]
    [1, 2, 4, 8, 16, 32]
    """
    tokens_per_step = whole("tokens_per_step", tokens_per_step, maximum=MAX_TOKENS,
                            example="tokens_per_step=524288")
    seq_len = whole("seq_len", seq_len, maximum=MAX_TOKENS, example="seq_len=1024")
    world_size = whole("world_size", world_size, maximum=MAX_GPUS, example="world_size=8")
    sequences, remainder = divmod(tokens_per_step, seq_len * world_size)
    if remainder or sequences == 0:
        return []
    if sequences > MAX_SEQUENCES_PER_STEP:
        raise ScaleplanError(
            f"tokens_per_step={tokens_per_step:,} is {sequences:,} sequences per step, more than "
            f"{MAX_SEQUENCES_PER_STEP:,}; check the units (tokens, not FLOPs)"
        )
    small = [b for b in range(1, math.isqrt(sequences) + 1) if sequences % b == 0]
    large = [sequences // b for b in reversed(small) if b * b != sequences]
    return small + large

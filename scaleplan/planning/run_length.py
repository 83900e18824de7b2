"""The run's length, time and loss: how `scaleplan.planning.planner.plan` turns a model, a GPU
and a tokens-per-step into the run's tokens, steps, training FLOPs, hours and expected loss.

The tokens are given, or the law's compute-optimal budget for the model, or what ``hours`` of
training buy at the assumed MFU (`scaleplan.planning.arguments.check_mfu`); the hours come from
the model FLOPs per token (`scaleplan.compute.flops.flops_per_token`, recomputation included)
over the GPUs' dense peak in the run's precision, with a range from the MFU's low and high.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from scaleplan.checks import finite
from scaleplan.compute.flops import flops_per_token, training_flops
from scaleplan.compute.hardware import GPUSpec
from scaleplan.compute.throughput import MAX_TOKENS
from scaleplan.errors import ScaleplanError
from scaleplan.model.config import GPTConfig
from scaleplan.model.params import ParamCount, count_params
from scaleplan.planning.advice import peak_dtype
from scaleplan.planning.arguments import AssumedMFU, given_tokens
from scaleplan.scaling.laws import scaling_law
from scaleplan.scaling.tokens import chinchilla_tokens

__all__ = ["RunLength", "run_length"]


class RunLength(NamedTuple):
    """The run's length, time and loss: the `Plan` fields past the batch and memory."""

    params: ParamCount
    total_tokens: int
    tokens_source: str
    compute_optimal_tokens: int
    steps: int
    training_flops: float
    mfu: float
    mfu_low: float
    mfu_high: float
    mfu_source: str
    hours: float
    hours_low: float
    hours_high: float
    law: str
    expected_loss: float



def run_length(cfg: GPTConfig, spec: GPUSpec, settings: dict[str, Any], *, seq_len: int,
               tokens_per_step: int, world_size: int, total_tokens: object,
               hours: float | None, mfu: AssumedMFU, law: str) -> RunLength:
    """Tokens for the run, its steps, FLOPs and hours at the MFU, and the law's loss at its end.

    ``settings`` are the memory settings `plan` chose (``precision``, ``checkpointing``);
    ``total_tokens`` and ``hours`` are as `plan` takes them, checked there (at most one of
    them). The compute-optimal budget is the law's (`scaleplan.scaling.tokens.chinchilla_tokens`
    with the law as its method) for N as the law counts it.
    """
    pc = count_params(cfg)
    scaling = scaling_law(law)
    n_for_law = pc.non_embedding if scaling.n_counts == "non_embedding" else pc.total
    optimal = int(chinchilla_tokens(n_for_law, method=scaling))
    flops_token = flops_per_token(cfg, seq_len=seq_len, recompute=settings["checkpointing"])
    dtype = peak_dtype(settings["precision"])
    if dtype not in spec.peak:  # bf16 forced on a GPU without bf16 tensor cores
        dtype = "fp32"
    per_mfu = spec.peak_flops(dtype) * world_size  # FLOP/s of the GPUs at an MFU of 1
    achieved = mfu.mfu * per_mfu
    if hours is not None:
        if total_tokens is not None:
            raise ScaleplanError("give total_tokens or hours, not both")
        trainable = hours * 3600 * achieved / flops_token
        run_tokens = int(finite(f"the tokens trainable in hours={hours!r}", trainable))
        if run_tokens < 1:
            raise ScaleplanError(f"hours={hours!r} trains less than one token; give more hours")
        if run_tokens > MAX_TOKENS:
            raise ScaleplanError(
                f"hours={hours!r} trains {run_tokens:.3g} tokens on {world_size:,} GPUs, beyond "
                f"any real run; give at most {hours * MAX_TOKENS / run_tokens:.3g} hours")
        tokens_source = f"{hours} hours"
    else:
        run_tokens, tokens_source = given_tokens(total_tokens, optimal, scaling.name)
    seconds_at_full_peak = run_tokens * flops_token / per_mfu
    return RunLength(
        params=pc, total_tokens=run_tokens, tokens_source=tokens_source,
        compute_optimal_tokens=optimal, steps=math.ceil(run_tokens / tokens_per_step),
        training_flops=training_flops(cfg, run_tokens, seq_len=seq_len), mfu=mfu.mfu,
        mfu_low=mfu.low, mfu_high=mfu.high, mfu_source=mfu.source,
        hours=seconds_at_full_peak / mfu.mfu / 3600,
        hours_low=seconds_at_full_peak / mfu.high / 3600,
        hours_high=seconds_at_full_peak / mfu.low / 3600,
        law=scaling.name, expected_loss=float(scaling.loss(n_for_law, run_tokens)))

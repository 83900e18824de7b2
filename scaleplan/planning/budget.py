"""`plan_for_budget`: the compute-optimal model for a GPU-time budget, shaped and planned.

The budget in hours becomes FLOPs (hours x MFU x peak x GPUs); a scaling law splits them into
parameters and tokens (Hoffmann et al. 2022); the parameters become a width and a depth at a
fixed aspect ratio; `plan` then sizes the batch for the GPU.
"""

from __future__ import annotations

import math
from typing import Any

from scaleplan.checks import finite, real, whole
from scaleplan.compute.hardware import GPUSpec
from scaleplan.compute.hardware import gpu as lookup_gpu
from scaleplan.compute.mfu_defaults import default_mfu
from scaleplan.compute.throughput import MAX_GPUS, expect_config
from scaleplan.errors import ScaleplanError, shown
from scaleplan.model.config import GPTConfig
from scaleplan.model.params import count_params
from scaleplan.planning.planner import Plan, plan
from scaleplan.scaling.laws import scaling_law

__all__ = ["DEFAULT_ASPECT_RATIO", "HEAD_DIM", "MAX_ASPECT_RATIO", "plan_for_budget",
           "shape_for_params"]

# n_embd / n_layer. GPT-2 small and GPT-3 Small use 768 / 12 = 64; Kaplan et al. 2020 (Sec. 3.1,
# Fig. 5) find the loss changes by only a few per cent for aspect ratios from about 20 to 200.
DEFAULT_ASPECT_RATIO = 64
HEAD_DIM = 64  # GPT-2 and GPT-3's head width
MAX_LAYERS = 256
# 100x the widest aspect ratio Kaplan et al. tried (~200): past it, width x MAX_LAYERS overflows
# a float long before any model is that shape (aspect_ratio=1e308 did, issue 20).
MAX_ASPECT_RATIO = 20_000


def shape_for_params(n_params: float, *, base: GPTConfig | None = None,
                     aspect_ratio: float = DEFAULT_ASPECT_RATIO) -> GPTConfig:
    """The ``base`` model (default: nanoGPT's GPT-2 config) resized to about ``n_params``
    parameters with ``n_embd ~ aspect_ratio x n_layer`` and heads of `HEAD_DIM`.

    >>> cfg = shape_for_params(124e6)
    >>> cfg.n_layer, cfg.n_embd, cfg.n_head
    (12, 768, 12)
    """
    n_params = real("n_params", n_params, message="must be a positive number")
    aspect_ratio = real("aspect_ratio", aspect_ratio, message="must be positive, e.g. 64")
    if aspect_ratio > MAX_ASPECT_RATIO:
        raise ScaleplanError(f"aspect_ratio={shown(aspect_ratio)} (n_embd / n_layer) overflows "
                             f"any real model's width; give at most {MAX_ASPECT_RATIO:,}, e.g. "
                             f"{DEFAULT_ASPECT_RATIO} as GPT-2 and GPT-3 use")
    base = GPTConfig() if base is None else expect_config("base", base)
    best: tuple[float, GPTConfig] | None = None
    for n_layer in range(1, MAX_LAYERS + 1):
        heads = max(1, round(aspect_ratio * n_layer / HEAD_DIM))
        cfg = base.replace(n_layer=n_layer, n_embd=heads * HEAD_DIM, n_head=heads,
                           n_kv_head=None, head_dim=None, mlp_hidden=None)
        gap = abs(math.log(count_params(cfg).total) - math.log(n_params))  # ints of any size
        if best is None or gap < best[0]:
            best = (gap, cfg)
    assert best is not None
    return best[1]


def plan_for_budget(
    gpu: str | GPUSpec,
    *,
    hours: float,
    world_size: int = 1,
    mfu: float | None = None,
    law: str = "chinchilla",
    base: GPTConfig | None = None,
    aspect_ratio: float = DEFAULT_ASPECT_RATIO,
    **plan_options: Any,
) -> Plan:
    """The compute-optimal model trainable in ``hours`` on ``world_size`` GPUs, with its plan.

    Compute C = hours x 3600 x MFU x peak (bf16, or fp16 without bf16 tensor cores) x GPUs;
    the law's compute-optimal N for C (under its C = 6ND); a model of about N parameters from
    `shape_for_params`; then `plan` with ``hours=hours``, so the tokens fill the budget.

    >>> p = plan_for_budget("RTX 4090", hours=24, mfu=0.35)
    >>> p.model.n_layer, p.model.n_embd, round(p.hours)
    (14, 896, 24)
    """
    hours = real("hours", hours, message="must be a positive number of hours, e.g. hours=24")
    spec = lookup_gpu(gpu)
    world_size = whole("world_size", world_size, maximum=MAX_GPUS, example="world_size=8")
    if mfu is not None:
        mfu = real("mfu", mfu, example="0.35")
        if mfu > 1:  # checked before it multiplies the compute (fuzzed, issue 13)
            raise ScaleplanError(f"mfu={mfu!r} must be a fraction in (0, 1], e.g. mfu=0.35")
    mfu_value = default_mfu(spec).mfu if mfu is None else mfu
    aspect_ratio = real("aspect_ratio", aspect_ratio, message="must be positive, e.g. 64")
    base = None if base is None else expect_config("base", base)
    dtype = "bf16" if spec.has_bf16_tensor_cores else "fp16"
    flops = finite(f"the compute of hours={hours!r} on world_size={world_size}",
                   hours * 3600 * mfu_value * spec.peak_flops(dtype) * world_size)
    chosen = scaling_law(law)
    if not flops >= chosen.minimum_flops:  # 0.0 when hours x mfu underflows
        raise ScaleplanError(
            f"hours={shown(hours)} at mfu={mfu_value:g} on {world_size} x {spec.name} buys "
            f"{flops:.3g} FLOPs, too little for any model ({chosen.name!r} needs at least "
            f"{chosen.minimum_flops:.3g}); give more hours, e.g. hours=24")
    n_opt = chosen.compute_optimal(flops).n_params
    cfg = shape_for_params(n_opt, base=base, aspect_ratio=aspect_ratio)
    return plan(cfg, spec, hours=hours, world_size=world_size, mfu=mfu, law=law, **plan_options)

"""What to change when a model does not fit one GPU even at micro-batch 1, and what it costs.

`plan` tries these in order of cost and applies the first that fits; when none fits, the error
says how many GPUs to shard over or how narrow a model would fit.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from scaleplan.compute.flops import flops_per_token
from scaleplan.compute.hardware import GPUSpec
from scaleplan.model.config import GPTConfig
from scaleplan.units import format_gib

__all__ = ["Remedy", "nothing_fits_message", "remedies"]


class Remedy(BaseModel):
    """A change that lowers memory, what it needs at micro-batch 1, and what it costs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    changes: dict[str, str | int] = Field(
        description="The settings it changes: checkpointing, optimizer, precision, or zero (the "
        "ZeRO stage of the data-parallel group).")
    total_bytes: int = Field(description="Memory at micro-batch 1 with this remedy.")
    fits: bool
    cost: str = Field(description="What it costs, in words with a number.")


# ZeRO's communication per step relative to DDP's all-reduce of 2 x params: stages 1 and 2 move
# the same volume, stage 3 1.5x (Rajbhandari et al. 2020, "ZeRO", Sec. 7).
ZERO_COMMUNICATION = {1: 1.0, 2: 1.0, 3: 1.5}


def remedies(cfg: GPTConfig, memory: Any, available: int, seq_len: int,
             settings: dict[str, Any], bf16_ok: bool, *, data_parallel: int = 1,
             zero: int = 0) -> list[Remedy]:
    """Each remedy's memory at micro-batch 1, cheapest first. ZeRO stages are offered when the
    data-parallel group has more than one GPU and shards less than the stage would."""
    base = flops_per_token(cfg, seq_len=seq_len)
    extra = {r: flops_per_token(cfg, seq_len=seq_len, recompute=r) / base - 1
             for r in ("selective", "full")}
    full = f"+{extra['full']:.1%} compute"
    options: list[tuple[str, dict[str, str | int], str]] = []
    if data_parallel > 1:
        for stage in (1, 2, 3):
            if stage > zero:
                comm = ZERO_COMMUNICATION[stage]
                options.append((f"ZeRO-{stage} over {data_parallel} GPUs", {"zero": stage},
                                f"{comm:g}x DDP's communication volume"
                                + (" (FSDP full shard)" if stage == 3 else "")))
    options += [
        ("selective activation checkpointing", {"checkpointing": "selective"},
         f"+{extra['selective']:.1%} compute (attention recomputed)"),
        ("full activation checkpointing", {"checkpointing": "full"},
         f"{full} (one more forward pass per block)"),
        ("8-bit AdamW", {"optimizer": "adamw-8bit"},
         "bitsandbytes' 8-bit states; small quality risk, no extra compute"),
        ("full checkpointing + 8-bit AdamW", {"checkpointing": "full", "optimizer": "adamw-8bit"},
         f"{full} and 8-bit optimizer states"),
    ]
    if settings["precision"] in ("bf16-mixed", "32-true") and bf16_ok:
        true_bf16 = "bf16 weights with no fp32 copy: small updates can round away"
        after_8bit = [name for name, _, _ in options].index("8-bit AdamW") + 1
        options.insert(after_8bit, ("bf16 weights (bf16-true)", {"precision": "bf16-true"},
                                    true_bf16))
        options.append(("full checkpointing + 8-bit AdamW + bf16 weights",
                        {"checkpointing": "full", "optimizer": "adamw-8bit",
                         "precision": "bf16-true"}, f"{full}, 8-bit states, {true_bf16}"))
    out = []
    for name, changes, cost in options:
        if all(settings.get(k) == v for k, v in changes.items()):
            continue
        total = memory(1, **changes).total
        out.append(Remedy(name=name, changes=changes, total_bytes=total,
                          fits=total <= available, cost=cost))
    return out


def nothing_fits_message(cfg: GPTConfig, spec: GPUSpec, memory: Any,
                         remedies: list[Remedy], available: int) -> str:
    """Say what would fit: how many GPUs to shard the model states over, or how narrow a model
    fits one GPU with every remedy applied."""
    base = memory(1)
    lightest = min(remedies, key=lambda r: r.total_bytes)
    light = memory(1, **lightest.changes)
    states = light.weights + light.gradients + light.optimizer
    rest = light.total - states  # activations, loss side, overhead: not sharded by ZeRO-3
    if rest < available:
        shard = (f"shard weights, gradients and optimizer states ({format_gib(states)} with "
                 f"{lightest.name}) over at least {math.ceil(states / (available - rest))} GPUs "
                 "(ZeRO-3 / FSDP full shard)")
    else:
        shard = (f"even without weights, gradients and optimizer states, the rest (activations, "
                 f"autocast weight copies, the loss, overhead) needs {format_gib(rest)}: shorten "
                 "seq_len")
    return (
        f"nothing fits on one {spec.name} ({format_gib(available)}): micro-batch 1 needs "
        f"{format_gib(base.total)}, and {format_gib(light.total)} with {lightest.name}. "
        f"To fit: {shard}; or {_narrower(cfg, lightest.changes, memory, available)}"
    )


def _narrower(cfg: GPTConfig, changes: dict[str, str | int], memory: Any,
              available: int) -> str:
    """The widest n_embd (whole heads, other fields kept) that fits at micro-batch 1."""
    step = cfg.n_head

    def fits(width: int) -> bool:
        smaller = cfg.replace(n_embd=width, mlp_hidden=None, head_dim=None)
        return bool(memory(1, model=smaller, **changes).total <= available)

    lo, hi = 0, cfg.n_embd // step  # in units of n_head
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid * step):
            lo = mid
        else:
            hi = mid - 1
    if lo == 0:
        return f"no width fits with n_layer={cfg.n_layer}: use fewer layers"
    return f"narrow the model to n_embd={lo * step} (from {cfg.n_embd}) with {changes}"

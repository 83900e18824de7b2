"""What to change when a model does not fit one GPU even at micro-batch 1, and what it costs.

`plan` searches every combination of the levers it has, each at the setting asked for or one
that saves memory:

- the ZeRO stage of the data-parallel group (a stage above the one asked for, when the group has
  more than one GPU);
- activation checkpointing (``"selective"`` or ``"full"`` beyond the one asked for);
- the optimizer (8-bit AdamW in place of AdamW);
- the precision (bf16 weights with no fp32 copy, ``"bf16-true"``, in place of ``"bf16-mixed"`` or
  ``"32-true"`` on a GPU with bf16 tensor cores).

Each combination's memory at micro-batch 1 comes from `training_memory` (through the plan's
probe); among those that fit, the preferred one (`preference`) has no quality risk when any such
fits, then the best predicted throughput, the least communication, the largest micro-batch and
the least memory. When none fits, the error says how many GPUs to shard over or how narrow a
model would fit.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from scaleplan.compute.flops import Recompute, flops_per_token
from scaleplan.compute.hardware import GPUSpec
from scaleplan.errors import ScaleplanError
from scaleplan.memory.states import normalize_optimizer
from scaleplan.model.config import GPTConfig, normalize_precision
from scaleplan.planning.advice import peak_dtype
from scaleplan.units import format_gib

__all__ = ["QUALITY_RISKS", "ZERO_COMMUNICATION", "Remedy", "minimal", "nothing_fits_message",
           "preference", "remedies", "why"]


class Remedy(BaseModel):
    """A change that lowers memory, what it needs at micro-batch 1, and what it costs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="The changes in short, e.g. 'ZeRO-2 + full'.")
    changes: dict[str, str | int] = Field(
        description="The settings it changes: checkpointing, optimizer, precision, or zero (the "
        "ZeRO stage of the data-parallel group).")
    total_bytes: int = Field(description="Memory at micro-batch 1 with this remedy.")
    fits: bool = Field(description="Whether micro-batch 1 fits in the GPU with this remedy.")
    cost: str = Field(description="What it costs, in words with a number.")
    relative_throughput: float = Field(
        1.0, description="Predicted tokens per second relative to the plan as asked (1.0): the "
        "asked step's FLOPs per token over this one's (recomputation included) at the same MFU, "
        "times the ratio of the tensor-core peaks when the precision changes.")
    communication: float = Field(
        1.0, description="Data-parallel communication volume per step relative to plain DDP's "
        "all-reduce (ZERO_COMMUNICATION).")
    quality_risk: int = Field(
        0, description="0: none; 1: 8-bit AdamW's states; 2: bf16 weights with no fp32 copy; "
        "3: both (QUALITY_RISKS).")
    micro_batch_size: int | None = Field(
        None, description="The largest micro-batch that divides the step and fits with this "
        "remedy; None when micro-batch 1 does not fit.")


# ZeRO's communication per step relative to DDP's all-reduce of 2 x params: stages 1 and 2 move
# the same volume, stage 3 1.5x (Rajbhandari et al. 2020, "ZeRO", Sec. 7). Both overlap with the
# backward pass (PyTorch DDP's gradient buckets, Li et al. 2020; FSDP's prefetched all-gathers,
# Zhao et al. 2023), so the volume costs time only where the link is slower than the compute,
# which this arithmetic cannot tell without the interconnect's bandwidth: it ranks after the
# predicted throughput, between two remedies that compute alike.
ZERO_COMMUNICATION = {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.5}

# What a remedy risks in the trained model rather than in time; neither changes the FLOPs.
# - 8-bit AdamW: block-wise quantised states matched 32-bit Adam on the language models of
#   Dettmers et al. 2022 ("8-bit Optimizers via Block-wise Quantization", Sec. 4), a small risk.
# - bf16 weights with no fp32 master copy: bf16 keeps 8 significant bits, so an update smaller
#   than 2^-8 of a weight rounds away (Micikevicius et al. 2018, "Mixed Precision Training",
#   Sec. 3.1 keep an fp32 copy for this reason), a larger risk.
# The levels add: both together risk most.
QUALITY_RISKS = {
    "adamw-8bit": (1, "8-bit optimizer states (Dettmers et al. 2022 matched 32-bit Adam; a "
                      "small risk)"),
    "bf16-true": (2, "bf16 weights with no fp32 copy: updates under 2^-8 of a weight round "
                     "away"),
}

_CHECKPOINTING: tuple[Recompute, ...] = ("none", "selective", "full")
_SHORT = {"selective": "selective checkpointing", "full": "full checkpointing",
          "adamw-8bit": "8-bit AdamW", "bf16-true": "bf16 weights"}
_ALONE = {"selective": "selective activation checkpointing",
          "full": "full activation checkpointing", "bf16-true": "bf16 weights (bf16-true)"}
# How many of the other minimal remedies the reason for the choice names.
_NAMED_ALTERNATIVES = 3


class _Levers(NamedTuple):
    """One combination: the ZeRO stage, checkpointing, optimizer and precision."""

    zero: int
    checkpointing: Recompute
    optimizer: str
    precision: str


def remedies(cfg: GPTConfig, memory: Any, available: int, seq_len: int,
             settings: dict[str, Any], spec: GPUSpec, *, data_parallel: int = 1,
             zero: int = 0) -> list[Remedy]:
    """Every combination of the levers beyond the plan as asked (the module docstring lists
    them), with its memory at micro-batch 1 and its predicted cost, in the order of
    `preference` (their micro-batches not yet searched). ZeRO stages are offered when the
    data-parallel group has more than one GPU and shards less than the stage would."""
    asked, combos = _choices(settings, spec.has_bf16_tensor_cores, data_parallel, zero)
    # Recomputation in FLOPs per token, Korthikanti et al. 2022 (Sec. 5): full checkpointing
    # re-runs every block's forward, about 4/3 of the step (Chen et al. 2016, "Training Deep
    # Nets with Sublinear Memory Cost"); selective only the attention core (`flops_per_token`).
    flops = {level: flops_per_token(cfg, seq_len=seq_len, recompute=level)
             for level in {asked.checkpointing, *(c.checkpointing for c in combos)}}
    out = []
    for levers in combos:
        changes = _changes(levers, asked)
        try:
            total = memory(1, **changes).total
        except ScaleplanError:  # a lever the memory model refuses with the other options
            continue  # (compile=True has no bf16-true or selective terms): not a remedy
        extra = flops[levers.checkpointing] / flops[asked.checkpointing] - 1
        peaks = _peak(spec, levers.precision) / _peak(spec, asked.precision)
        out.append(Remedy(
            name=_name(changes, data_parallel), changes=changes, total_bytes=total,
            fits=total <= available, cost=_cost(changes, extra, peaks),
            relative_throughput=peaks / (1 + extra), communication=ZERO_COMMUNICATION[levers.zero],
            quality_risk=sum(QUALITY_RISKS[str(v)][0] for v in changes.values()
                             if v in QUALITY_RISKS)))
    return sorted(out, key=preference)


def preference(r: Remedy) -> tuple[Any, ...]:
    """The order remedies are preferred in: those that fit; no quality risk over a small one
    over a larger one (a quality loss is not in the arithmetic, so it is taken only when nothing
    else fits); then the best predicted throughput, the least communication, the largest
    micro-batch (usually a higher MFU, by no published constant, so only between equals) and
    the least memory."""
    return (not r.fits, r.quality_risk, -round(r.relative_throughput, 9), r.communication,
            -(r.micro_batch_size or 0), r.total_bytes)


def minimal(remedies: list[Remedy]) -> list[Remedy]:
    """The remedies that fit with no fitting remedy making a part of their changes, in the order
    given: the other combinations add a change to one of these.

    >>> full = Remedy(name="full", changes={"checkpointing": "full"}, total_bytes=1, fits=True,
    ...               cost="+31% compute")
    >>> both = Remedy(name="ZeRO-2 + full", changes={"zero": 2, "checkpointing": "full"},
    ...               total_bytes=1, fits=True, cost="+31% compute")
    >>> [r.name for r in minimal([both, full])]
    ['full']
    """
    fitting = [r for r in remedies if r.fits]
    return [r for r in fitting if not any(
        s.changes.items() < r.changes.items() for s in fitting)]


def why(chosen: Remedy, remedies: list[Remedy], available: int) -> str:
    """Why ``chosen``: where it fits, its predicted speed against the plan as asked, its quality
    risk, and what it was preferred over."""
    speed = chosen.relative_throughput
    text = (f"{chosen.name}: fits at {format_gib(chosen.total_bytes)} of "
            f"{format_gib(available)} (micro-batch up to {chosen.micro_batch_size}); "
            + ("as fast as the plan as asked" if math.isclose(speed, 1) else
               f"predicted {abs(1 - speed):.0%} {'slower' if speed < 1 else 'faster'} than the "
               "plan as asked"))
    if chosen.quality_risk:
        safe = [r for r in remedies if not r.quality_risk]
        risks = [QUALITY_RISKS[str(v)][1] for v in chosen.changes.values() if v in QUALITY_RISKS]
        text += f"; quality risk: {'; '.join(risks)}"
        if safe:
            lightest = min(safe, key=lambda r: r.total_bytes)
            text += (f"; nothing without a quality risk fits (the lightest, {lightest.name}, "
                     f"needs {format_gib(lightest.total_bytes)})")
    others = [r for r in minimal(remedies) if r is not chosen]
    if others:
        named = [f"{r.name} ({_loses(r, chosen)})" for r in others[:_NAMED_ALTERNATIVES]]
        more = len(others) - len(named)
        text += "; chosen over " + ", ".join(named) + (f" and {more} more" if more else "")
    return text


def _loses(r: Remedy, chosen: Remedy) -> str:
    """What ``r`` loses to ``chosen`` on: the first part of `preference` that differs."""
    if r.quality_risk > chosen.quality_risk:
        ratio = r.relative_throughput / chosen.relative_throughput
        risk = "a larger quality risk" if chosen.quality_risk else "quality risk"
        if ratio < 1 + 1e-9:
            return risk
        return risk + (f", though {ratio:.1f}x as fast" if ratio >= 2 else
                       f", though {ratio - 1:.0%} faster")
    if r.relative_throughput < chosen.relative_throughput - 1e-9:
        return f"{1 - r.relative_throughput / chosen.relative_throughput:.0%} slower"
    if r.communication > chosen.communication:
        return f"{r.communication:g}x DDP's communication"
    if (r.micro_batch_size or 0) < (chosen.micro_batch_size or 0):
        return f"micro-batch up to {r.micro_batch_size}"
    return f"{format_gib(r.total_bytes)}"


def _choices(settings: dict[str, Any], bf16_ok: bool, data_parallel: int,
             zero: int) -> tuple[_Levers, list[_Levers]]:
    """The plan as asked, and every other combination of the levers."""
    asked = _Levers(zero, settings["checkpointing"], normalize_optimizer(settings["optimizer"]),
                    normalize_precision(settings["precision"]))
    stages = range(zero, 4) if data_parallel > 1 else (zero,)
    checkpointing = _CHECKPOINTING[_CHECKPOINTING.index(asked.checkpointing):]
    optimizers = (asked.optimizer, *(("adamw-8bit",) if asked.optimizer == "adamw" else ()))
    to_bf16 = asked.precision in ("bf16-mixed", "32-true") and bf16_ok
    precisions = (asked.precision, *(("bf16-true",) if to_bf16 else ()))
    combos = itertools.product(stages, checkpointing, optimizers, precisions)
    return asked, [_Levers(*c) for c in combos][1:]  # the first is the plan as asked


def _changes(levers: _Levers, asked: _Levers) -> dict[str, str | int]:
    """The settings ``levers`` changes from the plan as asked."""
    was = asked._asdict()
    return {key: value for key, value in levers._asdict().items() if value != was[key]}


def _name(changes: dict[str, str | int], data_parallel: int) -> str:
    """"ZeRO-2 over 8 GPUs" alone; "ZeRO-2 + full checkpointing" in a combination."""
    if list(changes) == ["zero"]:
        return f"ZeRO-{changes['zero']} over {data_parallel} GPUs"
    if len(changes) == 1:
        value = str(next(iter(changes.values())))
        return _ALONE.get(value, _SHORT[value])
    return " + ".join(f"ZeRO-{v}" if k == "zero" else _SHORT[str(v)] for k, v in changes.items())


def _cost(changes: dict[str, str | int], extra_compute: float, peaks: float) -> str:
    """A remedy's cost in words with its numbers."""
    parts = []
    level = changes.get("checkpointing")
    if level is not None:
        what = "attention recomputed" if level == "selective" else "one more forward per block"
        parts.append(f"+{extra_compute:.1%} compute ({what})")
    if "zero" in changes:
        stage = int(changes["zero"])
        parts.append(f"{ZERO_COMMUNICATION[stage]:g}x DDP's communication volume"
                     + (" (FSDP full shard)" if stage == 3 else ""))
    parts += [QUALITY_RISKS[str(v)][1] for v in changes.values() if v in QUALITY_RISKS]
    if not math.isclose(peaks, 1):  # 32-true to bf16-true
        parts.append(f"bf16 tensor cores: {peaks:.1f}x the peak")
    return "; ".join(parts) if level is not None else "; ".join(["no extra compute", *parts])


def _peak(spec: GPUSpec, precision: str) -> float:
    """The tensor-core peak a precision runs at (fp32 where the GPU lacks its dtype)."""
    dtype = peak_dtype(precision)
    return spec.peak_flops(dtype if dtype in spec.peak else "fp32")


def nothing_fits_message(cfg: GPTConfig, spec: GPUSpec, memory: Any,
                         remedies: list[Remedy], available: int) -> str:
    """Say what would fit: how many GPUs to shard the model states over, or how narrow a model
    fits one GPU with every remedy applied."""
    base = memory(1)
    lightest = min(remedies, key=lambda r: r.total_bytes) if remedies else Remedy(
        name="the settings asked for (no lever left to pull)", changes={},
        total_bytes=base.total, fits=False, cost="none")
    light = memory(1, **lightest.changes)
    states = light.weights + light.gradients + light.optimizer
    rest = light.total - states  # activations, loss side, overhead: not sharded by ZeRO-3
    layout = memory.settings["parallelism"]
    stage = lightest.changes.get("zero", layout.zero_stage if layout else 0)
    if stage == 3:  # each GPU holds 1/data of them already
        states *= memory.data
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

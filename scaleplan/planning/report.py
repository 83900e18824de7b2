"""A `Plan` as readable text: what ``scaleplan plan`` prints. Sizes in GiB, labelled GiB."""

from __future__ import annotations

from typing import TYPE_CHECKING

from scaleplan.planning.exporters import expect_plan
from scaleplan.planning.remedies import minimal
from scaleplan.units import format_count, format_gib

if TYPE_CHECKING:
    from scaleplan.planning.planner import Plan

__all__ = ["format_plan"]


_MEMORY_ROWS = (
    ("weights", "weights"),
    ("gradients", "gradients"),
    ("optimizer", "optimizer states"),
    ("saved_for_backward", "saved for backward"),
    ("autocast_weight_copies", "autocast weight copies"),
    ("transient", "transient at the peak"),
    ("overhead", "CUDA context + allocator"),
)


def _sharding(p: Plan) -> list[str]:
    """The ZeRO stage or FSDP strategy, where the data-parallel group shards anything."""
    layout = p.parallelism
    if layout is None or not layout.zero_stage:
        return []
    how = f"FSDP {layout.fsdp}" if layout.fsdp else f"ZeRO-{layout.zero}"
    return [f"  sharding             {how} over {layout.data} data-parallel GPUs"]


def _gib(n: float) -> str:
    return format_gib(n, width=6)


def _time(p: Plan) -> str:
    """The time line: one figure at a given MFU; with the default, the range of the evidence.

    e.g. ``16.9 hours at MFU 55% (14.9-21.3 hours at 44-62% MFU: median of 3 published ...)``
    """
    point = f"{p.hours:,.1f} hours at MFU {p.mfu:.0%}"
    if p.mfu_low == p.mfu_high:
        return f"{point} ({p.mfu_source})"
    # With hours= the tokens fill those hours at the point MFU; the range is how long they take.
    lead = "these tokens take " if p.tokens_source.endswith(" hours") else ""
    return (f"{point} ({lead}{p.hours_low:,.1f}-{p.hours_high:,.1f} hours at "
            f"{p.mfu_low * 100:.0f}-{p.mfu_high:.0%} MFU: {p.mfu_source})")


def format_plan(p: Plan) -> str:
    """Render ``p`` for a terminal."""
    m = expect_plan(p).memory
    lines = [
        f"Plan: {format_count(p.params.total)}-parameter model on {p.world_size} x {p.gpu.name} "
        f"({format_gib(p.available_bytes)}: {p.available_source})",
        "",
        f"  micro_batch_size     {p.micro_batch_size}",
        f"  grad_accum_steps     {p.grad_accum_steps}",
        f"  tokens_per_step      {p.tokens_per_step:,}  (= {p.micro_batch_size} x {p.seq_len} x "
        f"{p.grad_accum_steps} x {_replicas(p)})",
        f"  precision            {p.precision}  ({p.precision_reason})",
        f"  optimizer            {p.optimizer}, attention {p.attention}, checkpointing "
        f"{p.checkpointing}",
    ]
    lines += _sharding(p)
    if p.memory_options:
        lines.append("  memory options       " + ", ".join(
            f"{k}={v!r}" for k, v in p.memory_options.items()))
    if p.remedy:
        lines.append(f"  to fit               {p.remedy_reason or p.remedy}")
    lines += ["", f"Memory per GPU at micro-batch {p.micro_batch_size} (peak: {m.peak_moment}):"]
    for field, label in _MEMORY_ROWS:
        lines.append(f"  {label:<24} {_gib(getattr(m, field))}")
    if m.stream_cache:  # inside the overhead: FSDP2's side streams (torchtitan)
        lines.append(f"    {'of which FSDP2 streams':<22} {_gib(m.stream_cache)}")
    lines += [
        f"  {'total':<24} {_gib(m.total)}   headroom {format_gib(p.headroom_bytes)} "
        f"-> {'fits' if p.fits else 'DOES NOT FIT'}",
        f"  (of saved: logits and the loss {format_gib(m.logits)})",
        "",
        "Micro-batches that divide the step:",
    ]
    for c in p.candidates:
        mark = "fits" if c.fits else "does not fit"
        chosen = "  <- chosen" if c.micro_batch_size == p.micro_batch_size else ""
        lines.append(f"  {c.micro_batch_size:>5} x {c.grad_accum_steps:<5} {_gib(c.total_bytes)}"
                     f"  {mark}{chosen}")
    if p.remedies:
        lines += _remedy_lines(p)
    lines += [
        "",
        f"Run: {p.total_tokens:,} tokens ({p.tokens_source}; compute-optimal "
        f"{p.compute_optimal_tokens:,}, ratio {p.overtraining_ratio:.2f}), {p.steps:,} steps",
        f"  training FLOPs       {p.training_flops:.3g}",
        f"  time                 {_time(p)}",
        f"  expected loss        {p.expected_loss:.3f}  ({p.law} law, on its paper's data)",
    ]
    if p.expected_loss_on_data is not None:
        lines.append(f"  on your data         {p.expected_loss_on_data}")
    if p.warnings:
        lines += ["", "Warnings:"]
        lines += [f"  [{w.code}] {w.message}" for w in p.warnings]
    return "\n".join(lines)


def _remedy_lines(p: Plan) -> list[str]:
    """The remedies that fit with the fewest changes (the others add a change to one of them),
    the chosen one first."""
    shown = minimal(p.remedies)
    if p.remedies[0] not in shown:
        shown.insert(0, p.remedies[0])
    width = max(len(r.name) for r in shown)
    lines = ["", f"Remedies that fit with the fewest changes ({len(p.remedies)} combinations "
             f"tried at micro-batch 1, {sum(r.fits for r in p.remedies)} fit):"]
    for r in shown:
        chosen = "  <- chosen" if r is p.remedies[0] else ""
        lines.append(f"  {r.name:<{width}} {_gib(r.total_bytes)}  micro-batch <= "
                     f"{r.micro_batch_size}, speed {r.relative_throughput:.2f}x; {r.cost}{chosen}")
    return lines


def _replicas(p: Plan) -> str:
    """The last factor of tokens_per_step: the GPUs, or the data-parallel replicas when tensor
    or pipeline parallelism splits the model over several GPUs."""
    if p.data_parallel != p.world_size:
        return f"{p.data_parallel} data-parallel replicas of {p.world_size // p.data_parallel} GPUs"
    return f"{p.world_size} GPU{'s' if p.world_size > 1 else ''}"

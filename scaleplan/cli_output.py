"""What the ``scaleplan`` commands print besides the plan itself: the flags that apply a remedy,
and the tables of ``params``, ``gpus`` and ``diagnose`` (`format_params`, `format_gpus`,
`format_diagnosis`).

A remedy (`scaleplan.planning.remedies.Remedy`) says what it changes as a dict of settings
(``{"checkpointing": "full", "optimizer": "adamw-8bit"}``); on the command line that is a set of
flags (``--checkpointing full --optimizer adamw-8bit``). `remedy_flags` maps one to the other,
`command_line` writes the whole command with them, and `nothing_fits_hint` turns the planner's
"nothing fits" error into one that ends with a command that fits (found by planning it:
ZeRO-3 over more GPUs, with the remedy the planner then picks).
"""

from __future__ import annotations

import argparse
import ast
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from scaleplan.units import format_count, format_gib

if TYPE_CHECKING:
    from scaleplan.compute.hardware import GPUSpec
    from scaleplan.diagnosis.examine import Diagnosis
    from scaleplan.diagnosis.recommend import Recommendation
    from scaleplan.model.params import ParamCount
    from scaleplan.planning.planner import Plan

__all__ = ["REMEDY_FLAGS", "command_line", "format_diagnosis", "format_gpus", "format_params",
           "nothing_fits_hint", "plan_notes", "remedy_flags", "reproduce_line"]

#: The flag that applies each setting a remedy changes (`Remedy.changes`' keys).
REMEDY_FLAGS = {"checkpointing": "--checkpointing", "optimizer": "--optimizer",
                "precision": "--precision", "zero": "--zero", "fsdp": "--fsdp",
                "attention": "--attention"}

# The flags a user gave that a command line repeats, with the default each is left out at.
_REPEATED: tuple[tuple[str, str, object], ...] = (
    ("--gpu", "gpu", None), ("--world-size", "world_size", None),
    ("--tokens-per-step", "tokens_per_step", None), ("--seq-len", "seq_len", None),
    ("--total-tokens", "total_tokens", None), ("--hours", "hours", None),
    ("--precision", "precision", "auto"), ("--zero", "zero", 0), ("--fsdp", "fsdp", None),
    ("--checkpointing", "checkpointing", "none"), ("--optimizer", "optimizer", "adamw"),
    ("--optimizer-impl", "optimizer_impl", None), ("--compile", "compile", None),
    ("--implementation", "implementation", "nanogpt"), ("--loss", "loss", "standard"),
    ("--optimizer-in-backward", "optimizer_in_backward", False),
    ("--activation-offload", "activation_offload", False),
    ("--no-gradient-accumulation", "no_gradient_accumulation", False),
    ("--attention", "attention", "flash"),
    ("--mfu", "mfu", None),
    ("--nanogpt-mfu", "nanogpt_mfu", None), ("--law", "law", "chinchilla"),
    ("--data", "data", None))

# The most GPUs the search for a fitting layout tries (2^16: 65,536, about the largest runs
# published), doubling from the given count.
_MAX_SEARCHED_GPUS = 2**16
_PLAIN = re.compile(r"[\w@%+=:,./-]+")
_DICT = re.compile(r"\{[^{}]*\}")  # no nesting: linear in the message


def remedy_flags(changes: Mapping[str, object]) -> list[str]:
    """The flags that apply a remedy's ``changes``.

    >>> remedy_flags({"zero": 3, "checkpointing": "full"})
    ['--zero', '3', '--checkpointing', 'full']
    """
    flags = []
    for key, value in changes.items():
        flags += [REMEDY_FLAGS.get(key, "--" + key.replace("_", "-")), str(value)]
    return flags


def _quote(text: str) -> str:
    if _PLAIN.fullmatch(text):
        return text
    return f'"{text}"' if not set(text) & set('"\\$`!') else shlex.quote(text)


def command_line(args: argparse.Namespace, changes: Mapping[str, object] | None = None) -> str:
    """``scaleplan plan`` with the model and flags of ``args``, and ``changes`` (a remedy's
    settings, or ``world_size``) applied over them.

    >>> ns = argparse.Namespace(model="gpt2", gpu="RTX 4070", world_size=8)
    >>> command_line(ns, {"zero": 3})
    'scaleplan plan gpt2 --gpu "RTX 4070" --world-size 8 --zero 3'
    """
    given = {flag: getattr(args, name, None) for flag, name, _ in _REPEATED}
    given = {flag: value for (flag, _, default), value in zip(_REPEATED, given.values(),
                                                              strict=True)
             if value is not None and value != default}
    for key, value in (changes or {}).items():
        flag = REMEDY_FLAGS.get(key, "--" + key.replace("_", "-"))
        given[flag] = value
        if flag == "--zero":
            given.pop("--fsdp", None)
    words = ["scaleplan", "plan", _quote(args.model)]
    for flag, value in given.items():
        if isinstance(value, bool):  # a switch: --compile / --no-compile
            words.append(flag if value else "--no-" + flag.removeprefix("--"))
        else:
            words += [flag, _quote(str(value))]
    return " ".join(words)


def _changes_of(p: Plan) -> dict[str, str | int] | None:
    """The settings the remedy ``p`` adopted changes, if a remedy was adopted."""
    if p.remedy is None:
        return None
    for remedy in p.remedies:
        if remedy.name == p.remedy:
            return dict(remedy.changes)
    return None


def reproduce_line(args: argparse.Namespace, p: Plan) -> str | None:
    """Where a remedy was adopted, the command that plans with it from the start."""
    changes = _changes_of(p)
    if changes is None:
        return None
    return f"to plan with it from the start: {command_line(args, changes)}"


def plan_notes(args: argparse.Namespace, p: Plan) -> list[str]:
    """The lines printed after the plan: the MFU nanoGPT's figure converts to, and the command
    that plans with the adopted remedy from the start."""
    from scaleplan.compute.throughput import NANOGPT_PEAK_FLOPS

    notes = []
    if getattr(args, "nanogpt_mfu", None) is not None:
        notes.append(f"note: --nanogpt-mfu {args.nanogpt_mfu:g} (% of an A100's "
                     f"{NANOGPT_PEAK_FLOPS / 1e12:g} TFLOP/s, as nanoGPT prints it) is "
                     f"{p.mfu:.1%} MFU on the {p.gpu.name}")
    reproduce = reproduce_line(args, p)
    if reproduce is not None:
        notes.append(reproduce)
    return notes


def _flags_for_dicts(message: str) -> str:
    """``message`` with each settings dict (``{'checkpointing': 'full'}``) written as flags."""
    def flags(match: re.Match[str]) -> str:
        try:
            value = ast.literal_eval(match.group())  # parsed as data, never evaluated
        except (ValueError, SyntaxError, RecursionError, MemoryError):
            return match.group()
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            return match.group()
        return " ".join(remedy_flags(value))

    return _DICT.sub(flags, message)


def nothing_fits_hint(message: str, args: argparse.Namespace,
                      attempt: Callable[[argparse.Namespace], Plan]) -> str:
    """The planner's "nothing fits" ``message`` with its settings as flags and, where planning
    finds one, a command that fits: ZeRO-3 over the fewest GPUs (doubling from ``--world-size``)
    on which ``attempt`` plans, with the flags of the remedy it adopts there. Any other message
    comes back as it is."""
    if not message.startswith("nothing fits"):
        return message
    message = _flags_for_dicts(message)
    if "shorten seq_len" in message:  # the activations alone are too large: GPUs do not help
        return message
    size = 2 if args.world_size in (None, 1) else args.world_size
    while size <= _MAX_SEARCHED_GPUS:
        trial = argparse.Namespace(**{**vars(args), "world_size": size, "zero": 3,
                                      "fsdp": None})
        try:
            found = attempt(trial)
        except ValueError as exc:
            if str(exc).startswith("nothing fits"):
                size *= 2
                continue
            break  # the step does not divide over this many GPUs, nor over more
        extra: dict[str, Any] = {"world_size": size, "zero": 3, **(_changes_of(found) or {})}
        return f"{message}; try: {command_line(args, extra)}"
    return message


def format_params(pc: ParamCount, label: str, claimed: int | None = None) -> str:
    """The parameter breakdown as a readable table."""
    rows = [f"{label}: {pc.total:,} parameters ({format_count(pc.total)})", ""]
    width = max(len(k) for k in pc.components())
    for name, value in pc.components().items():
        share = 100 * value / pc.total
        rows.append(f"  {name:<{width}}  {value:>17,}  {share:5.1f}%")
    rows += [
        "",
        f"  {'of which biases':<{width}}  {pc.biases:>17,}",
        f"  {'per block':<{width}}  {pc.per_layer:>17,}",
        f"  {'non-embedding':<{width}}  {pc.non_embedding:>17,}  (Kaplan et al. 2020's N)",
        f"  {'nanoGPT prints':<{width}}  {pc.nanogpt:>17,}  ({format_count(pc.nanogpt)}: total "
        "minus the position embedding)",
    ]
    if pc.active != pc.total:  # a mixture of experts: what one token goes through
        rows.append(f"  {'active per token':<{width}}  {pc.active:>17,}  "
                    f"({format_count(pc.active)}: top-k of the routed experts)")
    if claimed is not None:
        ratio = claimed / pc.nanogpt
        rows.append(f"  the config claims ~{format_count(claimed)}: {ratio:.2f}x the real count")
    return "\n".join(rows)


def format_gpus(specs: Sequence[GPUSpec]) -> str:
    """The GPU database as ``scaleplan gpus`` prints it: one row per GPU, with what to mind."""
    rows = [f"{'GPU':<18} {'memory':>10} {'bf16 TFLOP/s':>13} {'SMs':>5}  notes"]
    for s in specs:
        bf16 = f"{s.peak_flops('bf16') / 1e12:.1f}" if "bf16" in s.peak else "-"
        notes = [] if s.has_bf16_tensor_cores else ["no bf16 tensor cores: plan fp16"]
        if s.below_inductor_autotune_threshold:
            notes.append("< 68 SMs: no inductor max-autotune GEMM")
        memory = format_gib(s.memory_bytes, width=6, decimals=0)
        rows.append(f"{s.name:<18} {memory} {bf16:>13} {s.sm_count:>5}  {'; '.join(notes)}")
    return "\n".join(rows)


def format_diagnosis(d: Diagnosis, label: str) -> str:
    """A `Diagnosis` as ``scaleplan diagnose`` prints it: the findings, each with its fix, the
    recommended next run and the notes; ``label`` names the run (its config, else its log)."""
    if d.nanogpt_params is None:
        rows = [f"{label}: no model; {len(d.findings)} finding(s) from the log alone"]
    else:
        rows = [f"{label}: {d.nanogpt_params:,} parameters (nanoGPT's count); "
                f"{len(d.findings)} finding(s)"]
    rows += [f"\n[{f.severity}] {f.code}: {f.message}\n  fix: {f.fix}" for f in d.findings]
    if d.recommendation is not None:
        rows += _recommendation(d.recommendation)
    # what could not be done (the recommended run not fitting the GPU)
    rows += [f"\nnote: {note}" for note in d.notes]
    return "\n".join(rows)


def _recommendation(rec: Recommendation) -> list[str]:
    rows = ["\nrecommended next run:", *(f"  {change}" for change in rec.changes)]
    rows.append(f"  {format_count(rec.nanogpt_params)} parameters; {rec.tokens_per_step:,} "
                f"tokens per step = micro-batch {rec.training.micro_batch_size} x seq_len "
                f"{rec.training.seq_len} x grad_accum_steps {rec.training.grad_accum_steps}")
    others = ", ".join(f"{b} x {a}" for b, a in rec.micro_batch_options[1:])
    if others:
        rows.append(f"  if memory runs out, micro-batch x grad-accum: {others}")
    rows.append(f"  compute-optimal: {format_count(rec.compute_optimal_tokens)} tokens = "
                f"{rec.steps_for_compute_optimal:,} steps (max_iters = lr_decay_iters)")
    if rec.expected_val_loss is not None:
        rows.append(f"  expected val loss ~{rec.expected_val_loss:.2f} there "
                    f"(~{rec.expected_val_loss_same_tokens:.2f} on as many tokens as this run)")
    if rec.expected_loss_on_data is not None:
        rows.append(f"  from the web-text law: {rec.expected_loss_on_data}")
    return rows

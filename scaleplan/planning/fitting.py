"""What fits on the GPU: memory at a micro-batch, the remedy adopted when nothing fits, and the
largest micro-batch that divides the step and fits.

`plan` asks `MemoryProbe` for `training_memory` under its settings; `apply_remedy` searches the
combinations of remedies, finds the largest micro-batch each fits at, and adopts the preferred
one (`scaleplan.planning.remedies.preference`; a ZeRO stage goes into the layout through
`with_zero`); `largest_fitting` bisects the exact micro-batches for the largest that fits.
"""

from __future__ import annotations

import bisect
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from scaleplan.compute.hardware import GPUSpec
from scaleplan.errors import ScaleplanError
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.training import MemoryBreakdown, training_memory
from scaleplan.model.config import GPTConfig
from scaleplan.planning.batching import grad_accum_steps
from scaleplan.planning.remedies import Remedy, nothing_fits_message, preference, why
from scaleplan.planning.remedies import remedies as find_remedies

__all__ = ["MAX_ONE_STEP_MICRO_BATCH", "Candidate", "MemoryProbe", "apply_remedy",
           "largest_fitting", "one_micro_batch_step", "with_zero"]


class Candidate(BaseModel):
    """One micro-batch size that divides the step, and whether it fits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    micro_batch_size: int = Field(description="Sequences per GPU per forward and backward.")
    grad_accum_steps: int = Field(description="Micro-batches per GPU that make up the step.")
    total_bytes: int = Field(description="MemoryBreakdown.total at this micro-batch.")
    fits: bool = Field(description="total_bytes <= the GPU memory the plan is held against.")


def with_zero(settings: dict[str, Any], data: int) -> dict[str, Any]:
    """``settings`` with a ZeRO remedy's ``zero`` stage moved into the layout, where it shards
    the data-parallel group (FSDP off); the same settings when there is no ``zero``."""
    if "zero" not in settings:
        return settings
    merged = dict(settings)
    layout = merged["parallelism"] or Parallelism(data=data)
    merged["parallelism"] = Parallelism.model_validate(
        {**layout.model_dump(), "zero": merged.pop("zero"), "fsdp": None})
    return merged


class MemoryProbe:
    """`training_memory` at a micro-batch under the plan's settings, or with the changes a remedy
    tries; remembers its answers, since the search asks some micro-batches twice."""

    def __init__(self, cfg: GPTConfig, seq_len: int, data: int, options: dict[str, Any],
                 settings: dict[str, Any]) -> None:
        self.cfg, self.seq_len, self.data, self.options = cfg, seq_len, data, options
        self.settings = settings
        self.computed: dict[tuple[Any, ...], MemoryBreakdown] = {}

    def __call__(self, b: int, model: GPTConfig | None = None,
                 **changes: Any) -> MemoryBreakdown:
        model = self.cfg if model is None else model
        key = (b, model, *sorted(changes.items()))
        if key not in self.computed:
            merged = with_zero({**self.settings, **changes}, self.data)
            self.computed[key] = training_memory(model, micro_batch_size=b,
                                                 seq_len=self.seq_len, **merged, **self.options)
        return self.computed[key]

    def adopt(self, changes: dict[str, Any]) -> None:
        """Make a remedy's changes part of the settings (forgetting what was computed)."""
        self.settings = with_zero({**self.settings, **changes}, self.data)
        self.computed.clear()


def apply_remedy(cfg: GPTConfig, spec: GPUSpec, memory: MemoryProbe, available: int,
                 sizes: list[int]) -> tuple[Remedy | None, list[Remedy], str | None]:
    """When micro-batch 1 does not fit: every combination of remedies tried, each that fits
    with the largest of ``sizes`` it fits at, in the order of `preference`; the first, adopted
    into ``memory``'s settings; and why it was chosen (`why`). Nothing when it fits as it is.
    None fitting is an error that says what would."""
    if memory(1).total <= available:
        return None, [], None
    parallelism = memory.settings["parallelism"]
    tried = find_remedies(cfg, memory, available, memory.seq_len, memory.settings, spec,
                          data_parallel=memory.data,
                          zero=parallelism.zero_stage if parallelism else 0)
    if not any(r.fits for r in tried):
        raise ScaleplanError(nothing_fits_message(cfg, spec, memory, tried, available))
    searched = sorted((r.model_copy(update={"micro_batch_size": sizes[
        _largest(sizes, memory, available, r.changes)]}) if r.fits else r for r in tried),
        key=preference)
    chosen = searched[0]
    memory.adopt(chosen.changes)
    return chosen, searched, why(chosen, searched, available)


def largest_fitting(sizes: list[int], memory: MemoryProbe, available: int,
                    tokens_per_step: int | None) -> tuple[int, list[Candidate]]:
    """The largest of ``sizes`` that fits in ``available`` bytes, and the candidates around it
    (``tokens_per_step`` None: each candidate is a whole step, one micro-batch)."""
    lo = _largest(sizes, memory, available, {})
    around = range(max(0, lo - 1), min(len(sizes), lo + 2))  # the next size each side
    candidates = []
    for i in around:
        total = memory(sizes[i]).total
        candidates.append(Candidate(
            micro_batch_size=sizes[i], total_bytes=total, fits=total <= available,
            grad_accum_steps=1 if tokens_per_step is None else grad_accum_steps(
                tokens_per_step, sizes[i], memory.seq_len, memory.data)))
    return sizes[lo], candidates


def _largest(sizes: list[int], memory: MemoryProbe, available: int,
             changes: dict[str, Any]) -> int:
    """The index of the largest of ``sizes`` that fits with ``changes`` (micro-batch 1 fits:
    checked by the caller).

    Memory grows with the micro-batch, so this bisects; its first probes are the size that
    micro-batch 1's breakdown extrapolates to (activations and the loss side grow about
    linearly, model states not at all) and the next one up, which usually settles it.
    """
    one = memory(1, **changes)
    per_sequence = max(1, one.saved_for_backward + one.transient)
    estimate = 1 + (available - one.total) / per_sequence
    guess = max(0, bisect.bisect_right(sizes, estimate) - 1)

    def fits(i: int) -> bool:
        return bool(memory(sizes[i], **changes).total <= available)

    lo, hi = 0, len(sizes) - 1
    for probe in (guess, guess + 1):
        if lo < probe <= hi:
            lo, hi = (probe, hi) if fits(probe) else (lo, probe - 1)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


# With one micro-batch per step and no step size given, the micro-batches tried: 1 to this many
# sequences per GPU (a bisection, so about 16 memory evaluations).
MAX_ONE_STEP_MICRO_BATCH = 2**16


def one_micro_batch_step(given_tokens: int | None, chosen: int, candidates: list[Candidate],
                         seq_len: int, data: int) -> tuple[int, list[Candidate]]:
    """(tokens per step, candidates) when every step is one micro-batch
    (``gradient_accumulation=False``): the step is the largest micro-batch that fits, or, when
    the step's size was given, that size must fit in one micro-batch (else an error that says
    what would fit), never a plan that accumulates gradients the memory was computed without."""
    if given_tokens is None:
        return chosen * seq_len * data, candidates
    need = given_tokens // (seq_len * data)
    if chosen < need:
        raise ScaleplanError(
            f"gradient_accumulation=False runs each step as one micro-batch, but "
            f"tokens_per_step={given_tokens:,} is {need:,} sequences per GPU and at most "
            f"{chosen:,} fit; pass tokens_per_step={chosen * seq_len * data:,} (or leave it "
            "out), or gradient_accumulation=True")
    return given_tokens, candidates

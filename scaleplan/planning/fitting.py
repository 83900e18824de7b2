"""What fits on the GPU: memory at a micro-batch, the remedy adopted when nothing fits, and the
largest micro-batch that divides the step and fits.

`plan` asks `MemoryProbe` for `training_memory` under its settings; `apply_remedy` adopts the
cheapest remedy that fits at micro-batch 1 (a ZeRO stage goes into the layout through
`with_zero`), and `largest_fitting` bisects the exact micro-batches for the largest that fits.
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
from scaleplan.planning.remedies import Remedy, nothing_fits_message
from scaleplan.planning.remedies import remedies as find_remedies

__all__ = ["Candidate", "MemoryProbe", "apply_remedy", "largest_fitting", "with_zero"]


class Candidate(BaseModel):
    """One micro-batch size that divides the step, and whether it fits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    micro_batch_size: int
    grad_accum_steps: int
    total_bytes: int = Field(description="MemoryBreakdown.total at this micro-batch.")
    fits: bool


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


def apply_remedy(cfg: GPTConfig, spec: GPUSpec, memory: MemoryProbe,
                 available: int) -> tuple[Remedy | None, list[Remedy]]:
    """When micro-batch 1 does not fit, the remedies tried and the first that fits, adopted into
    ``memory``'s settings; nothing when it fits as it is. None fitting is an error that says
    what would."""
    if memory(1).total <= available:
        return None, []
    parallelism = memory.settings["parallelism"]
    remedies = find_remedies(cfg, memory, available, memory.seq_len, memory.settings,
                             spec.has_bf16_tensor_cores, data_parallel=memory.data,
                             zero=parallelism.zero_stage if parallelism else 0)
    fitting = [r for r in remedies if r.fits]
    if not fitting:
        raise ScaleplanError(nothing_fits_message(cfg, spec, memory, remedies, available))
    memory.adopt(fitting[0].changes)
    return fitting[0], remedies


def largest_fitting(sizes: list[int], memory: MemoryProbe, available: int,
                    tokens_per_step: int) -> tuple[int, list[Candidate]]:
    """The largest of ``sizes`` that fits in ``available`` bytes, and the candidates around it.

    Memory grows with the micro-batch, so this bisects; its first probes are the size that
    micro-batch 1's breakdown extrapolates to (activations and the loss side grow about
    linearly, model states not at all) and the next one up, which usually settles it.
    """
    one = memory(1)  # fits: checked by the caller
    per_sequence = max(1, one.saved_for_backward + one.transient)
    estimate = 1 + (available - one.total) / per_sequence
    guess = max(0, bisect.bisect_right(sizes, estimate) - 1)

    def fits(i: int) -> bool:
        return bool(memory(sizes[i]).total <= available)

    lo, hi = 0, len(sizes) - 1
    for probe in (guess, guess + 1):
        if lo < probe <= hi:
            lo, hi = (probe, hi) if fits(probe) else (lo, probe - 1)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    around = range(max(0, lo - 1), min(len(sizes), lo + 2))  # the next size each side
    candidates = [Candidate(micro_batch_size=sizes[i],
                            grad_accum_steps=grad_accum_steps(tokens_per_step, sizes[i],
                                                              memory.seq_len, memory.data),
                            total_bytes=memory(sizes[i]).total, fits=fits(i)) for i in around]
    return sizes[lo], candidates

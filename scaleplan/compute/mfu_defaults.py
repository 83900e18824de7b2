"""The MFU to assume for a GPU when none is given: the middle of published runs on its class.

Model FLOPs utilisation (MFU) is model FLOP/s over the GPU's dense peak (PaLM, Chowdhery et al.
2022, App. B; see `scaleplan.compute.throughput`). Published runs, each with its source and the
words or figure it comes from, are in ``scaleplan/data/mfu_evidence.csv`` (described in
``mfu_evidence.md`` beside it). They are grouped by GPU class:

- ``ada-ampere``: Ampere (GA10x) and Ada cards: GeForce RTX 30/40, A10, A10G, L4, L40S.
- ``a100``: A100, any form factor.
- ``hopper``: H100 and H200.
- ``other``: everything else (V100, T4, Blackwell, AMD): no published run was found, so the
  default is the middle of *all* the runs and the range all of them, said as such.

A class's default is the median of its runs and its range their lowest and highest. The runs
differ in model size, scale and how they count FLOPs (nanoGPT counts attention without causal
halving, about 10 % more than PaLM's count for a 124M model at 1,024 tokens): the range is the
honest part of the answer, the default only its middle.

>>> d = default_mfu("RTX 4070")
>>> d.gpu_class, d.mfu, d.low, d.high, len(d.evidence)
('ada-ampere', 0.548, 0.435, 0.622, 3)
"""

from __future__ import annotations

import csv
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from scaleplan.compute.hardware import GPUSpec
from scaleplan.compute.hardware import gpu as lookup_gpu

__all__ = ["CLASS_LABELS", "GPUClass", "MFUDefault", "MFUEvidence", "default_mfu", "gpu_class",
           "mfu_evidence"]

GPUClass = Literal["ada-ampere", "a100", "hopper", "other"]

#: How each class is named where a plan says which evidence its MFU comes from.
CLASS_LABELS: dict[str, str] = {
    "ada-ampere": "Ada/Ampere consumer and workstation GPUs",
    "a100": "A100 GPUs",
    "hopper": "H100/H200 GPUs",
    "other": "any GPU",
}

_EVIDENCE_FILE = Path(__file__).parent.parent / "data" / "mfu_evidence.csv"
_EVIDENCE_NAME = "scaleplan/data/mfu_evidence.md"


class MFUEvidence(BaseModel):
    """One published MFU measurement: the run, the figure and where it was read."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    gpu_class: GPUClass
    gpu: str = Field(description="The GPU as the source names it.")
    n_gpus: int | None = Field(description="GPUs in the run, None where the source does not say.")
    model: str
    mfu: float = Field(gt=0, le=1, description="A fraction of the GPU's dense peak.")
    how: str = Field(description="As published, or how it was derived from what was.")
    flops_count: str = Field(description="Whose FLOPs-per-token formula the figure uses.")
    source: str
    quote: str = Field(description="The words or figure in the source.")


class MFUDefault(BaseModel):
    """The MFU assumed for a GPU class: the median of its published runs and their spread.

    ``low <= mfu <= high``; ``evidence`` holds the runs behind them.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    gpu_class: GPUClass
    mfu: float = Field(description="Median of the evidence.")
    low: float = Field(description="Lowest MFU in the evidence.")
    high: float = Field(description="Highest MFU in the evidence.")
    evidence: tuple[MFUEvidence, ...]
    source: str = Field(description="Which runs, in words: what a plan prints.")


@cache
def mfu_evidence() -> tuple[MFUEvidence, ...]:
    """The published runs in ``scaleplan/data/mfu_evidence.csv``.

    >>> min(e.mfu for e in mfu_evidence()) > 0.25
    True
    """
    with _EVIDENCE_FILE.open(encoding="utf-8", newline="") as handle:
        return tuple(MFUEvidence.model_validate({
            **row, "n_gpus": int(row["n_gpus"]) if row["n_gpus"].strip() else None,
            "mfu": float(row["mfu"])}) for row in csv.DictReader(handle))


def gpu_class(gpu: str | GPUSpec) -> GPUClass:
    """The class whose evidence sets ``gpu``'s default MFU.

    >>> gpu_class("RTX 4090"), gpu_class("A100 SXM 80GB"), gpu_class("H200"), gpu_class("T4")
    ('ada-ampere', 'a100', 'hopper', 'other')
    """
    spec = lookup_gpu(gpu)
    if spec.vendor == "NVIDIA" and spec.name.startswith("A100"):
        return "a100"  # Ampere too (GA100), but a different chip from the GA10x cards
    if spec.vendor == "NVIDIA" and spec.name.startswith(("H100", "H200")):
        return "hopper"
    if spec.vendor == "NVIDIA" and spec.architecture.startswith(("Ampere", "Ada")):
        return "ada-ampere"
    return "other"


def default_mfu(gpu: str | GPUSpec) -> MFUDefault:
    """The MFU to assume on ``gpu``: the median of its class's published runs, and their range.

    >>> d = default_mfu("H100 SXM")
    >>> d.mfu, d.low, d.high, len(d.evidence)
    (0.4195, 0.384, 0.46, 4)
    >>> print(d.source)
    median of 4 published runs on H100/H200 GPUs (scaleplan/data/mfu_evidence.md)
    >>> print(default_mfu("T4").source)  # doctest: +ELLIPSIS
    no published run on this GPU class: median of all 10 runs on any GPU (scaleplan/data/...)
    """
    chosen = gpu_class(gpu)
    runs = tuple(e for e in mfu_evidence() if e.gpu_class == chosen)
    if runs:
        source = (f"median of {len(runs)} published runs on {CLASS_LABELS[chosen]} "
                  f"({_EVIDENCE_NAME})")
    else:
        runs = mfu_evidence()
        source = (f"no published run on this GPU class: median of all {len(runs)} runs on any "
                  f"GPU ({_EVIDENCE_NAME})")
    values = [e.mfu for e in runs]
    return MFUDefault(gpu_class=chosen, mfu=_median(values),
                      low=min(values), high=max(values), evidence=runs, source=source)


def _median(values: list[float]) -> float:
    """The middle value, or the mean of the two middle ones, rounded to 4 places (the CSV's
    figures have 3)."""
    ordered = sorted(values)
    half = len(ordered) // 2
    middle = ordered[half] if len(ordered) % 2 else (ordered[half - 1] + ordered[half]) / 2
    return round(middle, 4)

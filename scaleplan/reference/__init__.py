"""The torch reference: a GPT that builds any `GPTConfig`, and the harness that measures it.

Needs torch (``pip install "scaleplan[torch]"``); the rest of scaleplan does not. `measure` runs
one training step (its objects: `scaleplan.reference.step`) and returns a `StepMeasurement`;
``python -m scaleplan.reference.validate`` compares measurements with scaleplan's formulas over a
grid of configs.
"""

try:
    import torch  # noqa: F401  (checked here so that the failure is one clear line)
except ImportError:
    raise ImportError('scaleplan.reference needs torch: pip install "scaleplan[torch]"') from None

from scaleplan.reference.measure import (
    CudaMemory,
    OptimizerImpl,
    ResidentState,
    StepMeasurement,
    count_flops,
    measure,
)
from scaleplan.reference.model import GPT, AttentionKind

__all__ = [
    "GPT",
    "AttentionKind",
    "CudaMemory",
    "OptimizerImpl",
    "ResidentState",
    "StepMeasurement",
    "count_flops",
    "measure",
]

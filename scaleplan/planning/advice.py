"""The advice a plan gives besides its numbers: which precision and why, and the warnings (small
GPU for inductor, no bf16 tensor cores, dropout on a single pass, token budgets far from
compute-optimal, sequences longer than the model's). The MFU assumed when none is given comes
from `scaleplan.compute.mfu_defaults`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from scaleplan.compute.hardware import GPUSpec
from scaleplan.model.config import GPTConfig, Precision, normalize_precision

__all__ = [
    "OVERTRAINED_RATIO",
    "UNDERTRAINED_RATIO",
    "PlanWarning",
    "choose_precision",
    "peak_dtype",
    "plan_warnings",
]

# Token budgets outside these multiples of the compute-optimal one get a warning.
OVERTRAINED_RATIO = 4.0
UNDERTRAINED_RATIO = 0.25


class PlanWarning(BaseModel):
    """Something about the plan worth a second look: a stable ``code`` and a message."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str = Field(description="A stable identifier, e.g. 'inductor-small-gpu'.")
    message: str = Field(description="What to look at and why, in one sentence.")


def choose_precision(spec: GPUSpec, precision: str) -> tuple[Precision, str, list[PlanWarning]]:
    if precision != "auto":
        chosen = normalize_precision(precision)
        warnings = []
        if chosen in ("bf16-mixed", "bf16-true", "bf16-fp32-master") \
                and not spec.has_bf16_tensor_cores:
            warnings.append(PlanWarning(code="no-bf16-tensor-cores", message=(
                f"{chosen} asked for on the {spec.name}, which has no bf16 tensor cores: bf16 "
                "matmuls run far below peak there; use precision='16-mixed' (fp16 with loss "
                "scaling)")))
        return chosen, "asked for", warnings
    if spec.has_bf16_tensor_cores:
        return "bf16-mixed", (f"the {spec.name} has bf16 tensor cores: bf16 autocast over fp32 "
                              "weights (nanoGPT's default), no loss scaling needed"), []
    return "16-mixed", (f"the {spec.name} has no bf16 tensor cores: fp16 autocast with loss "
                        "scaling"), []


def peak_dtype(precision: str) -> str:
    return "fp32" if precision == "32-true" else ("fp16" if precision.startswith("16") else "bf16")


def plan_warnings(cfg: GPTConfig, spec: GPUSpec, seq_len: int, tokens: int,
              optimal: int) -> list[PlanWarning]:
    out = []
    if spec.below_inductor_autotune_threshold:
        out.append(PlanWarning(code="inductor-small-gpu", message=(
            f"the {spec.name} has {spec.sm_count} SMs, fewer than the 68 torch inductor needs "
            "for max-autotune GEMM (torch/_inductor/utils.py is_big_gpu): torch.compile prints "
            "'Not enough SMs to use max_autotune_gemm mode' and uses default kernels")))
    if cfg.dropout > 0:
        out.append(PlanWarning(code="dropout-single-epoch", message=(
            f"dropout={cfg.dropout} on a run that sees each token about once: an under-fitting "
            "model gains nothing from dropout; use dropout=0.0")))
    ratio = tokens / optimal
    if ratio > OVERTRAINED_RATIO:
        out.append(PlanWarning(code="past-compute-optimal", message=(
            f"{tokens:,} tokens is {ratio:.1f}x the compute-optimal {optimal:,}: a larger model "
            "would reach a lower loss with the same compute")))
    elif ratio < UNDERTRAINED_RATIO:
        out.append(PlanWarning(code="short-of-compute-optimal", message=(
            f"{tokens:,} tokens is {ratio:.2f}x the compute-optimal {optimal:,}: a smaller "
            "model would reach a lower loss with the same compute")))
    if cfg.moe is not None:
        out.append(PlanWarning(code="dense-law-for-moe", message=(
            "the compute-optimal budget and the expected loss come from a law fitted on dense "
            f"models, applied to all {cfg.moe.n_experts} experts' parameters; routed models "
            "follow laws of their own (Clark et al. 2022, arXiv:2202.01169), which scaleplan "
            "does not fit: read them as rough, not as a target")))
    if seq_len > cfg.block_size:
        out.append(PlanWarning(code="seq-len-above-block-size", message=(
            f"seq_len={seq_len} is above block_size={cfg.block_size}; with position="
            f"'{cfg.position}' the model was not trained at this length")))
    return out

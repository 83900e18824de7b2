"""The advice a plan gives besides its numbers: which precision and why, and the warnings (small
GPU for inductor, no bf16 tensor cores, dropout on a single pass, token budgets far from
compute-optimal, sequences longer than the model's, a sharded run with little room for the
caching allocator, torchtitan's chunked loss in chunks other than the ones modelled). The MFU
assumed when none is given comes from `scaleplan.compute.mfu_defaults`."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from scaleplan.compute.hardware import GPUSpec
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.titan_chunked_loss import TITAN_LOSS_CHUNK_TOKENS
from scaleplan.memory.training import (
    ALLOCATOR_SLACK_FRACTION,
    CUDA_CONTEXT_BYTES,
    MemoryBreakdown,
)
from scaleplan.model.config import GPTConfig, Precision, normalize_precision

__all__ = [
    "FSDP_RESERVED_FRACTION",
    "OVERTRAINED_RATIO",
    "UNDERTRAINED_RATIO",
    "PlanWarning",
    "choose_precision",
    "chunk_length_warnings",
    "peak_dtype",
    "plan_warnings",
    "sharded_slack_warnings",
]

# Token budgets outside these multiples of the compute-optimal one get a warning.
OVERTRAINED_RATIO = 4.0
UNDERTRAINED_RATIO = 0.25
# What published FSDP2 runs reserve above scaleplan's tensor peak and side-stream cache for the
# same run: 10% to 15% for torchtitan's Llama 3.1 8B on 8 and 128 H100s (pytorch/torchtitan@
# eaea6f6a docs/performance.md; docs/validation/published-peaks.md, "Reserved against the tensor
# peak"). A plan whose GPU holds less than this above them gets a warning; the default slack
# (ALLOCATOR_SLACK_FRACTION) stays a placeholder until a GPU measures it.
FSDP_RESERVED_FRACTION = 0.15


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


def sharded_slack_warnings(memory: MemoryBreakdown, available: int,
                           parallelism: Parallelism | None,
                           memory_options: dict[str, Any]) -> list[PlanWarning]:
    """A warning when an FSDP plan fits only with the placeholder slack: its GPU holds less than
    the CUDA context plus `FSDP_RESERVED_FRACTION` above the tensor peak and the side streams'
    cache (``stream_cache``), which published FSDP2 runs reserved (unless
    ``allocator_slack_fraction=`` already asks for that much).

    >>> from scaleplan.memory.training import training_memory
    >>> par = Parallelism(data=8, fsdp="full_shard")
    >>> m = training_memory(GPTConfig.preset("gpt2"), micro_batch_size=8, seq_len=1024,
    ...                     parallelism=par)
    >>> [w.code for w in sharded_slack_warnings(m, m.total, par, {})]
    ['thin-fsdp-allocator-margin']
    """
    if parallelism is None or parallelism.fsdp is None or parallelism.data < 2:
        return []
    # training_memory has checked both options by now
    fraction = float(memory_options.get("allocator_slack_fraction", ALLOCATOR_SLACK_FRACTION))
    if memory.overhead == 0 or fraction >= FSDP_RESERVED_FRACTION:
        return []
    context = int(memory_options.get("cuda_context_bytes", CUDA_CONTEXT_BYTES))
    reserved = memory.tensor_peak + memory.stream_cache
    margin = 1 + Fraction(str(FSDP_RESERVED_FRACTION))  # exact: 23/20
    needed = context + math.ceil(reserved * margin)
    if needed <= available:
        return []
    gib = 2**30
    return [PlanWarning(code="thin-fsdp-allocator-margin", message=(
        f"the plan fits with the caching allocator's slack counted as {fraction:.0%} of the "
        f"{reserved / gib:.1f} GiB tensor peak and side-stream cache (a placeholder); "
        "published FSDP2 runs reserved 10% to 15% above them "
        f"(docs/validation/published-peaks.md), and {needed / gib:.1f} GiB is more than the "
        f"{available / gib:.1f} GiB available: pass allocator_slack_fraction="
        f"{FSDP_RESERVED_FRACTION} to plan for "
        "it, or take a smaller micro-batch"))]


def chunk_length_warnings(micro_batch_size: int, seq_len: int,
                          memory_options: dict[str, Any]) -> list[PlanWarning]:
    """A warning where torchtitan's chunked loss would run in longer chunks than modelled:
    scaleplan takes chunks of `TITAN_LOSS_CHUNK_TOKENS` tokens (newer torchtitan's
    ``chunk_len``), torchtitan 0.3.0 splits each micro-batch in eight (``num_chunks=8``), which
    is longer above 8 x 8,192 tokens a micro-batch.

    >>> opts = {"implementation": "torchtitan", "loss": "chunked"}
    >>> [w.code for w in chunk_length_warnings(40, 8192, opts)]
    ['titan-chunk-length']
    >>> chunk_length_warnings(8, 8192, opts)
    []
    """
    if memory_options.get("implementation") != "torchtitan" or \
            memory_options.get("loss") != "chunked":
        return []
    tokens = micro_batch_size * seq_len
    eighth = tokens // 8
    if eighth <= TITAN_LOSS_CHUNK_TOKENS:
        return []
    return [PlanWarning(code="titan-chunk-length", message=(
        f"the chunked loss is modelled in {TITAN_LOSS_CHUNK_TOKENS:,}-token chunks (torchtitan's "
        f"ChunkedLossWrapper chunk_len); torchtitan 0.3.0 splits a micro-batch in num_chunks=8, "
        f"here {eighth:,}-token chunks, whose logits and loss buffers are "
        f"{eighth / TITAN_LOSS_CHUNK_TOKENS:.1f}x larger: with 0.3.0 set num_chunks to "
        f"{-(-tokens // TITAN_LOSS_CHUNK_TOKENS)}, or read the chunk loop as a lower bound"))]

"""`plan()`: the batch, precision, token budget, time and expected loss of a run on a target GPU.

The question it answers is the one the seed case ends on: which micro-batch fits this GPU for
this model, and exactly how many gradient-accumulation steps keep the tokens per step. Everything
comes from the other modules: `training_memory` for what fits, `grad_accum_steps` for the exact
step, `training_flops` and an assumed MFU for the time, a scaling law for tokens and loss.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from scaleplan._checks import finite, real, whole
from scaleplan.batching import grad_accum_steps, micro_batch_sizes
from scaleplan.config import GPTConfig, Precision, normalize_precision
from scaleplan.errors import ScaleplanError
from scaleplan.flops import flops_per_token, training_flops
from scaleplan.hardware import GPUSpec
from scaleplan.hardware import gpu as lookup_gpu
from scaleplan.memory import MemoryBreakdown, training_memory
from scaleplan.params import ParamCount, count_params
from scaleplan.remedies import Remedy, nothing_fits_message
from scaleplan.remedies import remedies as find_remedies
from scaleplan.scaling import scaling_law
from scaleplan.scaling_budget import chinchilla_tokens

__all__ = [
    "ASSUMED_MFU",
    "DEFAULT_TOKENS_PER_STEP",
    "Candidate",
    "Plan",
    "PlanWarning",
    "plan",
]

GiB = 2**30

# GPT-3 Small (125M) trained with 0.5M-token batches (Brown et al. 2020, Table 2.1); nanoGPT's
# GPT-2 config uses 491,520. 2^19 = 524,288 divides evenly by the usual micro-batches.
DEFAULT_TOKENS_PER_STEP = 2**19

# MFU assumed for the time estimate when none is given. These are assumptions, not measurements:
# well-tuned large runs reach 40-55% (PaLM 540B: 46.2%, Chowdhery et al. 2022, Table 3); a small
# model on one GPU with torch.compile typically reaches less, and consumer cards (no max-autotune
# below 68 SMs, lower clocks under sustained load) less again. Override with ``mfu=``.
ASSUMED_MFU = {"datacenter": 0.40, "consumer": 0.30}

# Token budgets outside these multiples of the compute-optimal one get a warning.
OVERTRAINED_RATIO = 4.0
UNDERTRAINED_RATIO = 0.25

Checkpointing = Literal["none", "selective", "full"]


class PlanWarning(BaseModel):
    """Something about the plan worth a second look: a stable ``code`` and a message."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str
    message: str


class Candidate(BaseModel):
    """One micro-batch size that divides the step, and whether it fits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    micro_batch_size: int
    grad_accum_steps: int
    total_bytes: int = Field(description="MemoryBreakdown.total at this micro-batch.")
    fits: bool


class Plan(BaseModel):
    """A training plan for one model on one GPU type; round-trips through JSON.

    ``micro_batch_size * grad_accum_steps * seq_len * world_size == tokens_per_step`` exactly.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    model: GPTConfig
    gpu: GPUSpec
    world_size: int
    seq_len: int
    precision: Precision
    precision_reason: str
    optimizer: str
    attention: Literal["flash", "eager"]
    checkpointing: Checkpointing
    micro_batch_size: int
    grad_accum_steps: int
    tokens_per_step: int
    memory: MemoryBreakdown = Field(description="At the chosen micro-batch.")
    available_bytes: int = Field(description="GPU memory the plan is held against.")
    available_source: str = Field(description="Which figure available_bytes is.")
    headroom_bytes: int = Field(description="available_bytes - memory.total.")
    fits: bool = Field(description="memory.total <= available_bytes.")
    candidates: list[Candidate] = Field(description="Micro-batches around the chosen one.")
    remedy: str | None = Field(None, description="What had to change to fit, if anything.")
    remedies: list[Remedy] = Field(default_factory=list,
                                   description="Tried when nothing fits at micro-batch 1.")
    params: ParamCount
    total_tokens: int
    tokens_source: str
    compute_optimal_tokens: int
    steps: int
    training_flops: float = Field(description="Model FLOPs of the run (PaLM convention, causal).")
    mfu: float
    mfu_source: str
    hours: float = Field(description="Wall-clock hours at that MFU on world_size GPUs.")
    law: str
    expected_loss: float = Field(description="The law's L(N, D) at the run's end.")
    warnings: list[PlanWarning] = Field(default_factory=list)

    @property
    def overtraining_ratio(self) -> float:
        """Tokens planned / compute-optimal tokens."""
        return self.total_tokens / self.compute_optimal_tokens

    def to_nanogpt_config(self) -> str:
        """This plan as a nanoGPT config file; see `scaleplan.exporters.to_nanogpt_config`."""
        from scaleplan.exporters import to_nanogpt_config

        return to_nanogpt_config(self)

    def to_deepspeed(self) -> dict[str, Any]:
        """This plan as a DeepSpeed config dict; see `scaleplan.exporters.to_deepspeed`."""
        from scaleplan.exporters import to_deepspeed

        return to_deepspeed(self)

    def to_hf_training_args(self) -> dict[str, Any]:
        """Keyword arguments for transformers' TrainingArguments."""
        from scaleplan.exporters import to_hf_training_args

        return to_hf_training_args(self)

    def to_torchrun(self, script: str = "train.py", *extra: str) -> str:
        """A torchrun command line for this plan's world size."""
        from scaleplan.exporters import to_torchrun

        return to_torchrun(self, script, *extra)

    def report(self) -> str:
        """The plan as readable text (what ``scaleplan plan`` prints)."""
        from scaleplan.plan_report import format_plan

        return format_plan(self)


def _choose_precision(spec: GPUSpec, precision: str) -> tuple[Precision, str, list[PlanWarning]]:
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


def _available(spec: GPUSpec) -> tuple[int, str]:
    if spec.usable_memory_bytes is not None:
        return spec.usable_memory_bytes, "what the driver reports as total (nvidia-smi)"
    return spec.memory_bytes, "the marketed memory, read as GiB"


def default_mfu(spec: GPUSpec) -> tuple[float, str]:
    consumer = spec.name.upper().startswith("RTX")
    key = "consumer" if consumer else "datacenter"
    return ASSUMED_MFU[key], f"assumed for a {key} GPU (ASSUMED_MFU); pass mfu= to override"


def plan(
    cfg: GPTConfig,
    gpu: str | GPUSpec,
    *,
    tokens_per_step: int | None = None,
    total_tokens: int | Literal["chinchilla"] | None = None,
    hours: float | None = None,
    world_size: int = 1,
    precision: str = "auto",
    seq_len: int | None = None,
    mfu: float | None = None,
    law: str = "chinchilla",
    optimizer: str = "adamw",
    attention: Literal["flash", "eager"] = "flash",
    checkpointing: Checkpointing = "none",
    **memory_options: Any,
) -> Plan:
    """Plan training ``cfg`` on ``world_size`` GPUs of type ``gpu``.

    Args:
        cfg: the model.
        gpu: a GPU name (``"RTX 4070"``) or a `GPUSpec`.
        tokens_per_step: tokens per optimizer step; default `DEFAULT_TOKENS_PER_STEP` rounded
            to whole sequences on every GPU.
        total_tokens: tokens for the run; ``"chinchilla"`` (or None without ``hours``) takes
            the law's compute-optimal budget for this model.
        hours: instead of ``total_tokens``, train for this many hours at the assumed MFU.
        world_size: data-parallel GPUs.
        precision: ``"auto"`` picks bf16 autocast where the GPU has bf16 tensor cores, fp16
            autocast otherwise; or any `scaleplan.config.Precision`.
        seq_len: tokens per sequence; default ``cfg.block_size``.
        mfu: model FLOPs utilisation for the time estimate; default `ASSUMED_MFU`.
        law: the scaling law for compute-optimal tokens and the expected loss.
        optimizer: as in `training_memory`.
        attention: as in `training_memory`.
        checkpointing: as in `training_memory`.
        memory_options: passed to `training_memory` (e.g. ``cuda_context_bytes``).

    The micro-batch is the largest that fits (by `training_memory`, overhead included) among
    those that divide the step exactly. When none fits at micro-batch 1, the remedies
    (checkpointing, an 8-bit optimizer) are tried in order of cost and the first that fits is
    applied; when none fits, the error says what would.

    >>> p = plan(GPTConfig.preset("gpt2"), "RTX 4070", tokens_per_step=524288)
    >>> p.micro_batch_size * p.grad_accum_steps * p.seq_len == 524288, p.fits
    (True, True)
    """
    spec = lookup_gpu(gpu)
    seq_len = cfg.block_size if seq_len is None else whole("seq_len", seq_len, example="1024")
    if tokens_per_step is not None:
        tokens_per_step = whole("tokens_per_step", tokens_per_step, example="2**19")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ScaleplanError(f"world_size={world_size!r} must be an int >= 1")
    if hours is not None:
        real("hours", hours, message="must be a positive number of hours")
    chosen_precision, precision_reason, warnings = _choose_precision(spec, precision)
    if tokens_per_step is None:
        chunk = seq_len * world_size
        tokens_per_step = max(1, round(DEFAULT_TOKENS_PER_STEP / chunk)) * chunk
    sizes = micro_batch_sizes(tokens_per_step, seq_len, world_size)
    if not sizes:
        raise ScaleplanError(
            f"tokens_per_step={tokens_per_step:,} is not a whole number of sequences on every GPU "
            f"(seq_len x world_size = {seq_len * world_size:,}); try tokens_per_step="
            f"{max(1, round(tokens_per_step / (seq_len * world_size))) * seq_len * world_size:,}")
    available, available_source = _available(spec)
    settings: dict[str, Any] = {"precision": chosen_precision, "optimizer": optimizer,
                                "attention": attention, "checkpointing": checkpointing}

    def memory(b: int, model: GPTConfig = cfg, **changes: Any) -> MemoryBreakdown:
        return training_memory(model, micro_batch_size=b, seq_len=seq_len,
                               **{**settings, **changes}, **memory_options)

    remedy, remedies = None, []
    if memory(1).total > available:
        remedies = find_remedies(cfg, memory, available, seq_len, settings,
                             spec.has_bf16_tensor_cores)
        fitting = [r for r in remedies if r.fits]
        if not fitting:
            raise ScaleplanError(nothing_fits_message(cfg, spec, memory, remedies, available))
        remedy = fitting[0].name
        settings.update(fitting[0].changes)
        if "precision" in fitting[0].changes:
            precision_reason = f"changed to fit: {remedy}"
    chosen, candidates = _search(sizes, memory, available, tokens_per_step, seq_len, world_size)
    mem = memory(chosen)
    steps_accum = grad_accum_steps(tokens_per_step, chosen, seq_len, world_size)

    pc = count_params(cfg)
    scaling = scaling_law(law)
    n_for_law = pc.non_embedding if scaling.n_counts == "non_embedding" else pc.total
    optimal = int(chinchilla_tokens(n_for_law, method=scaling))
    mfu_value, mfu_source = (mfu, "given") if mfu is not None else default_mfu(spec)
    if isinstance(mfu_value, bool) or not (isinstance(mfu_value, (int, float))
                                           and 0 < mfu_value <= 1):
        raise ScaleplanError(f"mfu={mfu_value!r} must be a fraction in (0, 1], e.g. mfu=0.35")
    recompute = settings["checkpointing"]
    flops_token = flops_per_token(cfg, seq_len=seq_len, recompute=recompute)
    dtype = _dtype(settings["precision"])
    if dtype not in spec.peak:  # bf16 forced on a GPU without bf16 tensor cores
        dtype = "fp32"
    achieved = mfu_value * spec.peak_flops(dtype) * world_size
    if hours is not None:
        if total_tokens is not None:
            raise ScaleplanError("give total_tokens or hours, not both")
        trainable = hours * 3600 * achieved / flops_token
        run_tokens = int(finite(f"the tokens trainable in hours={hours!r}", trainable))
        tokens_source = f"{hours} hours"
    elif total_tokens is None or total_tokens == "chinchilla":
        run_tokens, tokens_source = optimal, f"compute-optimal by the {scaling.name} law"
    elif isinstance(total_tokens, int) and not isinstance(total_tokens, bool) \
            and total_tokens > 0:
        run_tokens, tokens_source = total_tokens, "given"
    else:
        raise ScaleplanError(f"total_tokens={total_tokens!r} must be a positive int or "
                             "'chinchilla'")
    steps = math.ceil(run_tokens / tokens_per_step)
    flops = training_flops(cfg, run_tokens, seq_len=seq_len)
    hours_needed = run_tokens * flops_token / achieved / 3600

    warnings += _warnings(cfg, spec, seq_len, run_tokens, optimal)
    return Plan(
        model=cfg, gpu=spec, world_size=world_size, seq_len=seq_len,
        precision=settings["precision"], precision_reason=precision_reason,
        optimizer=settings["optimizer"], attention=attention,
        checkpointing=settings["checkpointing"], micro_batch_size=chosen,
        grad_accum_steps=steps_accum, tokens_per_step=tokens_per_step, memory=mem,
        available_bytes=available, available_source=available_source,
        headroom_bytes=available - mem.total, fits=mem.total <= available,
        candidates=candidates, remedy=remedy, remedies=remedies, params=pc,
        total_tokens=run_tokens, tokens_source=tokens_source, compute_optimal_tokens=optimal,
        steps=steps, training_flops=flops, mfu=mfu_value, mfu_source=mfu_source,
        hours=hours_needed, law=scaling.name,
        expected_loss=float(scaling.loss(n_for_law, run_tokens)), warnings=warnings,
    )


def _dtype(precision: str) -> str:
    return "fp32" if precision == "32-true" else ("fp16" if precision.startswith("16") else "bf16")


def _search(sizes: list[int], memory: Any, available: int, tokens_per_step: int, seq_len: int,
            world_size: int) -> tuple[int, list[Candidate]]:
    """The largest size that fits (memory grows with the micro-batch, so bisect), and the
    candidates around it."""
    lo, hi = 0, len(sizes) - 1  # sizes[0] == 1 fits (checked by the caller)
    totals: dict[int, int] = {}

    def total(i: int) -> int:
        if sizes[i] not in totals:
            totals[sizes[i]] = memory(sizes[i]).total
        return totals[sizes[i]]

    while lo < hi:
        mid = (lo + hi + 1) // 2
        if total(mid) <= available:
            lo = mid
        else:
            hi = mid - 1
    around = range(max(0, lo - 2), min(len(sizes), lo + 3))
    candidates = [Candidate(micro_batch_size=sizes[i],
                            grad_accum_steps=grad_accum_steps(tokens_per_step, sizes[i], seq_len,
                                                              world_size),
                            total_bytes=total(i), fits=total(i) <= available) for i in around]
    return sizes[lo], candidates


def _warnings(cfg: GPTConfig, spec: GPUSpec, seq_len: int, tokens: int,
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
    if seq_len > cfg.block_size:
        out.append(PlanWarning(code="seq-len-above-block-size", message=(
            f"seq_len={seq_len} is above block_size={cfg.block_size}; with position="
            f"'{cfg.position}' the model was not trained at this length")))
    return out

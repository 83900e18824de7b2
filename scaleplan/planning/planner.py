"""`plan()`: the batch, precision, token budget, time and expected loss of a run on a target GPU.

The question it answers is the one the seed case ends on: which micro-batch fits this GPU for
this model, and exactly how many gradient-accumulation steps keep the tokens per step. Everything
comes from the other modules: `training_memory` for what fits, `grad_accum_steps` for the exact
step, `training_flops` and an assumed MFU for the time, a scaling law for tokens and loss.
"""

from __future__ import annotations

import bisect
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from scaleplan.checks import finite, real, whole
from scaleplan.compute.flops import flops_per_token, training_flops
from scaleplan.compute.hardware import GPUSpec
from scaleplan.compute.hardware import gpu as lookup_gpu
from scaleplan.errors import ScaleplanError
from scaleplan.memory.limits import available_memory_bytes
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.training import MemoryBreakdown, training_memory
from scaleplan.model.config import GPTConfig, Precision
from scaleplan.model.params import ParamCount, count_params
from scaleplan.planning.advice import (
    PlanWarning,
    choose_precision,
    default_mfu,
    peak_dtype,
    plan_warnings,
)
from scaleplan.planning.batching import grad_accum_steps, micro_batch_sizes
from scaleplan.planning.remedies import Remedy, nothing_fits_message
from scaleplan.planning.remedies import remedies as find_remedies
from scaleplan.scaling.laws import scaling_law
from scaleplan.scaling.tokens import chinchilla_tokens

__all__ = ["DEFAULT_TOKENS_PER_STEP", "Candidate", "Plan", "plan"]

# GPT-3 Small (125M) trained with 0.5M-token batches (Brown et al. 2020, Table 2.1); nanoGPT's
# GPT-2 config uses 491,520. 2^19 = 524,288 divides evenly by the usual micro-batches.
DEFAULT_TOKENS_PER_STEP = 2**19

Checkpointing = Literal["none", "selective", "full"]


class Candidate(BaseModel):
    """One micro-batch size that divides the step, and whether it fits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    micro_batch_size: int
    grad_accum_steps: int
    total_bytes: int = Field(description="MemoryBreakdown.total at this micro-batch.")
    fits: bool


class Plan(BaseModel):
    """A training plan for one model on one GPU type; round-trips through JSON.

    ``micro_batch_size * grad_accum_steps * seq_len * data_parallel == tokens_per_step``
    exactly (``data_parallel == world_size`` without tensor or pipeline parallelism).

    >>> p = plan(GPTConfig.preset("gpt2"), "RTX 4070")  # 2**19 tokens per step by default
    >>> p.micro_batch_size, p.grad_accum_steps, p.seq_len, p.fits
    (8, 64, 1024, True)
    >>> p.micro_batch_size * p.grad_accum_steps * p.seq_len == p.tokens_per_step == 524_288
    True
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    model: GPTConfig
    gpu: GPUSpec
    world_size: int = Field(description="GPUs in all.")
    data_parallel: int = Field(description="Data-parallel degree: micro-batches per step-slice.")
    parallelism: Parallelism | None = Field(description="The layout, None for one GPU.")
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
        """Tokens planned / compute-optimal tokens.

        >>> p = plan(GPTConfig.preset("gpt2"), "RTX 4070", total_tokens=2 * 2_438_216_560)
        >>> p.overtraining_ratio
        2.0
        """
        return self.total_tokens / self.compute_optimal_tokens

    def to_nanogpt_config(self) -> str:
        """This plan as a nanoGPT config file; see `scaleplan.planning.exporters.to_nanogpt_config`.

        >>> text = plan(GPTConfig.preset("gpt2"), "RTX 4070").to_nanogpt_config()
        >>> "batch_size = 8" in text and "gradient_accumulation_steps = 64" in text
        True
        """
        from scaleplan.planning.exporters import to_nanogpt_config

        return to_nanogpt_config(self)

    def to_deepspeed(self) -> dict[str, Any]:
        """This plan as a DeepSpeed config dict; see `scaleplan.planning.exporters.to_deepspeed`.

        >>> ds = plan(GPTConfig.preset("gpt2"), "RTX 4070").to_deepspeed()
        >>> ds["train_micro_batch_size_per_gpu"], ds["train_batch_size"]  # 8 x 64
        (8, 512)
        """
        from scaleplan.planning.exporters import to_deepspeed

        return to_deepspeed(self)

    def to_hf_training_args(self) -> dict[str, Any]:
        """Keyword arguments for transformers' TrainingArguments.

        >>> args = plan(GPTConfig.preset("gpt2"), "RTX 4070").to_hf_training_args()
        >>> args["per_device_train_batch_size"], args["gradient_accumulation_steps"], args["bf16"]
        (8, 64, True)
        """
        from scaleplan.planning.exporters import to_hf_training_args

        return to_hf_training_args(self)

    def to_torchrun(self, script: str = "train.py", *extra: str) -> str:
        """A torchrun command line for this plan's world size.

        >>> plan(GPTConfig.preset("gpt2"), "RTX 4070").to_torchrun()
        'torchrun --standalone --nproc_per_node=1 train.py'
        """
        from scaleplan.planning.exporters import to_torchrun

        return to_torchrun(self, script, *extra)

    def report(self) -> str:
        """The plan as readable text (what ``scaleplan plan`` prints).

        >>> print(plan(GPTConfig.preset("gpt2"), "RTX 4070").report())  # doctest: +ELLIPSIS
        Plan: 124.44M-parameter model on 1 x RTX 4070 ...
          micro_batch_size     8
          grad_accum_steps     64
        ...
        """
        from scaleplan.planning.report import format_plan

        return format_plan(self)


def _available(spec: GPUSpec) -> tuple[int, str]:
    source = ("what the driver reports as total (nvidia-smi)"
              if spec.usable_memory_bytes is not None else "the marketed memory, read as GiB")
    return available_memory_bytes(spec), source


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
    parallelism: Parallelism | None = None,
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
        world_size: GPUs. Without ``parallelism`` they are plain data parallel (DDP, with
            its gradient buckets); with it, ``world_size`` defaults to ``parallelism.gpus``.
        precision: ``"auto"`` picks bf16 autocast where the GPU has bf16 tensor cores, fp16
            autocast otherwise; or any `scaleplan.model.config.Precision`.
        seq_len: tokens per sequence; default ``cfg.block_size``.
        mfu: model FLOPs utilisation for the time estimate; default
            `scaleplan.planning.advice.ASSUMED_MFU`.
        law: the scaling law for compute-optimal tokens and the expected loss.
        optimizer: as in `training_memory`.
        attention: as in `training_memory`.
        checkpointing: as in `training_memory`.
        parallelism: a `scaleplan.memory.parallel.Parallelism` (ZeRO / FSDP / tensor / pipeline);
            tokens per step count its data-parallel degree.
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
    if parallelism is None:
        parallelism = Parallelism(data=world_size) if world_size > 1 else None
        data = world_size
    else:
        if world_size not in (1, parallelism.gpus):
            raise ScaleplanError(
                f"world_size={world_size} but parallelism uses {parallelism.gpus} GPUs "
                f"(data {parallelism.data} x tensor {parallelism.tensor} x pipeline "
                f"{parallelism.pipeline}); drop world_size or make them agree")
        world_size, data = parallelism.gpus, parallelism.data
    if hours is not None:
        real("hours", hours, message="must be a positive number of hours")
    chosen_precision, precision_reason, warnings = choose_precision(spec, precision)
    if tokens_per_step is None:
        chunk = seq_len * data
        tokens_per_step = max(1, round(DEFAULT_TOKENS_PER_STEP / chunk)) * chunk
    sizes = micro_batch_sizes(tokens_per_step, seq_len, data)
    if not sizes:
        raise ScaleplanError(
            f"tokens_per_step={tokens_per_step:,} is not a whole number of sequences on every "
            f"data-parallel GPU (seq_len x {data} = {seq_len * data:,}); try tokens_per_step="
            f"{max(1, round(tokens_per_step / (seq_len * data))) * seq_len * data:,}")
    available, available_source = _available(spec)
    settings: dict[str, Any] = {"precision": chosen_precision, "optimizer": optimizer,
                                "attention": attention, "checkpointing": checkpointing,
                                "parallelism": parallelism}

    # The search asks some micro-batches twice; cleared when a remedy changes the settings.
    computed: dict[tuple[Any, ...], MemoryBreakdown] = {}

    def memory(b: int, model: GPTConfig = cfg, **changes: Any) -> MemoryBreakdown:
        key = (b, id(model), *sorted(changes.items()))
        if key not in computed:
            computed[key] = _memory(b, model, **changes)
        return computed[key]

    def _memory(b: int, model: GPTConfig, **changes: Any) -> MemoryBreakdown:
        merged = {**settings, **changes}
        if "zero" in merged:  # a ZeRO remedy: shard the data-parallel group
            layout = merged["parallelism"] or Parallelism(data=data)
            merged["parallelism"] = Parallelism.model_validate(
                {**layout.model_dump(), "zero": merged.pop("zero"), "fsdp": None})
        return training_memory(model, micro_batch_size=b, seq_len=seq_len, **merged,
                               **memory_options)

    remedy, remedies = None, []
    if memory(1).total > available:
        remedies = find_remedies(cfg, memory, available, seq_len, settings,
                                 spec.has_bf16_tensor_cores, data_parallel=data,
                                 zero=parallelism.zero_stage if parallelism else 0)
        fitting = [r for r in remedies if r.fits]
        if not fitting:
            raise ScaleplanError(nothing_fits_message(cfg, spec, memory, remedies, available))
        remedy = fitting[0].name
        settings.update(fitting[0].changes)
        computed.clear()
        if "zero" in settings:
            layout = settings["parallelism"] or Parallelism(data=data)
            settings["parallelism"] = parallelism = Parallelism.model_validate(
                {**layout.model_dump(), "zero": settings.pop("zero"), "fsdp": None})
        if "precision" in fitting[0].changes:
            precision_reason = f"changed to fit: {remedy}"
    chosen, candidates = _search(sizes, memory, available, tokens_per_step, seq_len, data)
    mem = memory(chosen)
    steps_accum = grad_accum_steps(tokens_per_step, chosen, seq_len, data)

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
    dtype = peak_dtype(settings["precision"])
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

    warnings += plan_warnings(cfg, spec, seq_len, run_tokens, optimal)
    return Plan(
        model=cfg, gpu=spec, world_size=world_size, data_parallel=data,
        parallelism=parallelism, seq_len=seq_len,
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


def _search(sizes: list[int], memory: Any, available: int, tokens_per_step: int, seq_len: int,
            world_size: int) -> tuple[int, list[Candidate]]:
    """The largest size that fits, and the candidates around it.

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
                            grad_accum_steps=grad_accum_steps(tokens_per_step, sizes[i], seq_len,
                                                              world_size),
                            total_bytes=memory(sizes[i]).total, fits=fits(i)) for i in around]
    return sizes[lo], candidates

"""`plan()`: the batch, precision, token budget, time and expected loss of a run on a target GPU.

The question it answers is the one the seed case ends on: which micro-batch fits this GPU for
this model, and exactly how many gradient-accumulation steps keep the tokens per step. Everything
comes from the other modules: `training_memory` for what fits (searched in
`scaleplan.planning.fitting`), `grad_accum_steps` for the exact step, `training_flops` and an
assumed MFU for the time, a scaling law for tokens and loss.

`plan` runs in steps: check the inputs and the GPU layout (`scaleplan.planning.arguments`), pick
the precision, the tokens per step and the micro-batches that divide it (`_step`), adopt a remedy
when micro-batch 1 does not fit (`apply_remedy`), take the largest micro-batch that fits
(`largest_fitting`), then the run's tokens, time and loss
(`scaleplan.planning.run_length.run_length`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from scaleplan.checks import real, whole
from scaleplan.compute.hardware import GPUSpec
from scaleplan.compute.hardware import gpu as lookup_gpu
from scaleplan.compute.throughput import MAX_TOKENS, expect_config
from scaleplan.errors import ScaleplanError
from scaleplan.memory.limits import available_memory_bytes
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.training import MemoryBreakdown
from scaleplan.model.config import GPTConfig, Precision
from scaleplan.model.lora import LoRA
from scaleplan.model.params import ParamCount, count_params
from scaleplan.planning.advice import (
    PlanWarning,
    choose_precision,
    chunk_length_warnings,
    plan_warnings,
    sharded_slack_warnings,
)
from scaleplan.planning.arguments import (
    MAX_SEQ_LEN,
    check_layout,
    check_memory_options,
    check_mfu,
)
from scaleplan.planning.batching import grad_accum_steps, micro_batch_sizes
from scaleplan.planning.fitting import (
    MAX_ONE_STEP_MICRO_BATCH,
    Candidate,
    MemoryProbe,
    apply_remedy,
    largest_fitting,
    one_micro_batch_step,
)
from scaleplan.planning.remedies import Remedy
from scaleplan.planning.run_length import run_length
from scaleplan.scaling.webtext import ExpectedLoss, expected_loss, law_for_data

if TYPE_CHECKING:
    from scaleplan.model.loaders import NanoGPTRun

__all__ = ["DEFAULT_TOKENS_PER_STEP", "Candidate", "Plan", "plan"]

# GPT-3 Small (125M) trained with 0.5M-token batches (Brown et al. 2020, Table 2.1); nanoGPT's
# GPT-2 config uses 491,520. 2^19 = 524,288 divides evenly by the usual micro-batches.
DEFAULT_TOKENS_PER_STEP = 2**19

Checkpointing = Literal["none", "selective", "full"]


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

    model: GPTConfig = Field(description="The model planned, as given.")
    gpu: GPUSpec = Field(description="The GPU type; the run uses world_size of them.")
    world_size: int = Field(description="GPUs in all.")
    data_parallel: int = Field(description="Data-parallel degree: micro-batches per step-slice.")
    parallelism: Parallelism | None = Field(description="The layout, None for one GPU.")
    seq_len: int = Field(description="Tokens per sequence: as given, else model.block_size.")
    precision: Precision = Field(description="The mixed-precision recipe, e.g. 'bf16-mixed'.")
    precision_reason: str = Field(description="Why this precision: asked for, what the GPU's "
                                  "tensor cores suit, or changed to fit.")
    optimizer: str = Field(description="As asked for, or the 8-bit one a remedy chose.")
    attention: Literal["flash", "eager"] = Field(
        description="Attention kernel the memory assumes (flash keeps no score matrix).")
    checkpointing: Checkpointing = Field(description="As asked for, or what a remedy chose.")
    micro_batch_size: int = Field(description="Sequences per GPU per forward and backward: "
                                  "the largest that fits and divides the step.")
    grad_accum_steps: int = Field(description="Micro-batches per GPU per optimizer step.")
    tokens_per_step: int = Field(description="Tokens per optimizer step, over all GPUs.")
    memory: MemoryBreakdown = Field(description="At the chosen micro-batch.")
    available_bytes: int = Field(description="GPU memory the plan is held against.")
    available_source: str = Field(description="Which figure available_bytes is.")
    headroom_bytes: int = Field(description="available_bytes - memory.total.")
    fits: bool = Field(description="memory.total <= available_bytes.")
    candidates: list[Candidate] = Field(description="Micro-batches around the chosen one.")
    remedy: str | None = Field(None, description="What had to change to fit, if anything.")
    remedy_reason: str | None = Field(
        None, description="Why that remedy: where it fits, its predicted speed against the plan "
        "as asked, its quality risk, and the remedies it was preferred over.")
    remedies: list[Remedy] = Field(default_factory=list, description="Every combination tried "
                                   "when nothing fits at micro-batch 1, the chosen one first "
                                   "(scaleplan.planning.remedies.preference).")
    params: ParamCount = Field(description="The model's exact parameter count, by part (with "
                               "a LoRA in memory_options, its adapters too: total includes "
                               "them, trainable is theirs alone).")
    total_tokens: int = Field(description="Training tokens of the whole run.")
    tokens_source: str = Field(description="Where total_tokens comes from: given, the law's "
                               "compute-optimal budget, or hours at the MFU.")
    compute_optimal_tokens: int = Field(
        description="Tokens for which this model is compute-optimal under law.")
    steps: int = Field(description="Optimizer steps: total_tokens / tokens_per_step, rounded up.")
    training_flops: float = Field(description="Model FLOPs of the run (PaLM convention, causal).")
    mfu: float = Field(description="MFU the time assumes: model FLOP/s over the GPU's own dense "
                       "peak (PaLM's definition; not nanoGPT's A100-relative figure).")
    mfu_low: float = Field(description="Lowest MFU of the range: the class's lowest published "
                           "run, or mfu when it was given.")
    mfu_high: float = Field(description="Highest MFU of the range, likewise.")
    mfu_source: str = Field(description="'given', or which published runs the MFU comes from.")
    hours: float = Field(description="Wall-clock hours at that MFU on world_size GPUs.")
    hours_low: float = Field(description="Hours for the same tokens at mfu_high.")
    hours_high: float = Field(description="Hours for the same tokens at mfu_low.")
    law: str = Field(description="Scaling law of compute_optimal_tokens and expected_loss.")
    expected_loss: float = Field(description="The law's L(N, D) at the run's end (on the law's "
                                 "own data and tokenizer).")
    expected_loss_on_data: ExpectedLoss | None = Field(
        None, description="With ``data=``: the loss on that dataset and tokenizer, from the "
        "web-text law calibrated on published runs, with its interval.")
    warnings: list[PlanWarning] = Field(default_factory=list, description="Things worth a "
                                        "second look, each with a stable code.")
    memory_options: dict[str, bool | int | float | str | LoRA | None] = Field(
        default_factory=dict, description="The further training_memory options the plan was "
        "made with (implementation, compile, loss, lora, ...), as given: memory is what they "
        "predict, and a rerun needs them.")

    @property
    def overtraining_ratio(self) -> float:
        """Tokens planned / compute-optimal tokens.

        >>> p = plan(GPTConfig.preset("gpt2"), "RTX 4070", total_tokens=2 * 2_438_216_560)
        >>> p.overtraining_ratio
        2.0
        """
        return self.total_tokens / self.compute_optimal_tokens

    def to_nanogpt_config(self, base: str | os.PathLike[str] | NanoGPTRun | None = None, *,
                          text: str | None = None) -> str:
        """This plan as a nanoGPT config file; see
        `scaleplan.planning.nanogpt_export.to_nanogpt_config`.

        ``base``: the nanoGPT config file the plan was made from (a path, or the `NanoGPTRun`
        read from it; ``text``: its contents). Its run is kept (``dataset``, ``out_dir``,
        ``init_from``, ``compile``, ...) and the learning-rate schedule is fitted to the plan's
        ``max_iters``, as ``scaleplan plan FILE --export nanogpt`` does.

        >>> text = plan(GPTConfig.preset("gpt2"), "RTX 4070").to_nanogpt_config()
        >>> "batch_size = 8" in text and "gradient_accumulation_steps = 64" in text
        True
        """
        from scaleplan.planning.nanogpt_export import to_nanogpt_config

        return to_nanogpt_config(self, base, text=text)

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
    law: str | None = None,
    data: str | None = None,
    tokenizer: str = "gpt2",
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
        mfu: model FLOPs utilisation for the time estimate, a fraction of this GPU's own dense
            peak (PaLM's MFU, not the A100-relative figure nanoGPT prints: convert that with
            `scaleplan.compute.throughput.from_nanogpt_mfu`). Given, the time is a single
            figure; by default it is the median of published runs on the GPU's class, and the
            time comes with a range from their lowest and highest MFU
            (`scaleplan.compute.mfu_defaults.default_mfu`).
        law: the scaling law for compute-optimal tokens and the expected loss; default: the
            web-text law of ``data`` when published runs calibrate it (the one `diagnose` uses,
            so both give one compute-optimal budget), else Chinchilla's.
        data: the dataset trained on (``"fineweb"``, ``"openwebtext"``, ...): adds
            ``expected_loss_on_data``, the loss on that data under ``tokenizer`` from a web-text
            law calibrated on published runs (`scaleplan.scaling.webtext.expected_loss`).
        tokenizer: the tokenizer of ``data`` (``"gpt2"``).
        optimizer: as in `training_memory`.
        attention: as in `training_memory`.
        checkpointing: as in `training_memory`.
        parallelism: a `scaleplan.memory.parallel.Parallelism` (ZeRO / FSDP / tensor / pipeline);
            tokens per step count its data-parallel degree.
        memory_options: passed to `training_memory` (e.g. ``cuda_context_bytes``).

    The micro-batch is the largest that fits (by `training_memory`, overhead included) among
    those that divide the step exactly. When none fits at micro-batch 1, every combination of
    the remedies (a ZeRO stage, activation checkpointing, 8-bit AdamW, bf16 weights) is tried
    and the preferred one that fits is applied: no quality risk when any such fits, then the
    best predicted throughput (`scaleplan.planning.remedies.preference`); ``remedy_reason``
    says why. When none fits, the error says what would.

    >>> p = plan(GPTConfig.preset("gpt2"), "RTX 4070", tokens_per_step=524288)
    >>> p.micro_batch_size * p.grad_accum_steps * p.seq_len == 524288, p.fits
    (True, True)
    """
    cfg = expect_config("cfg", cfg)
    spec = lookup_gpu(gpu)
    seq_len = cfg.block_size if seq_len is None else whole(
        "seq_len", seq_len, maximum=MAX_SEQ_LEN, example="1024")
    if tokens_per_step is not None:
        tokens_per_step = whole("tokens_per_step", tokens_per_step, maximum=MAX_TOKENS,
                                example="2**19")
    layout = check_layout(world_size, parallelism)
    if hours is not None:
        hours = real("hours", hours, message="must be a positive number of hours")
    mfu_given = check_mfu(mfu, spec)
    memory_options = check_memory_options(memory_options)
    chosen_precision, precision_reason, warnings = choose_precision(spec, precision)
    one_step, given_tokens = memory_options.get("gradient_accumulation") is False, tokens_per_step
    tokens_per_step, sizes = _step(tokens_per_step, seq_len, layout.data)
    if one_step and given_tokens is None:  # the step is one micro-batch, as large as fits
        sizes = list(range(1, MAX_ONE_STEP_MICRO_BATCH + 1))
    available, available_source = _available(spec)
    memory = MemoryProbe(cfg, seq_len, layout.data, memory_options, {
        "precision": chosen_precision, "optimizer": optimizer, "attention": attention,
        "checkpointing": checkpointing, "parallelism": layout.parallelism})
    remedy, remedies, remedy_reason = apply_remedy(cfg, spec, memory, available, sizes)
    if remedy is not None and "precision" in remedy.changes:
        precision_reason = f"changed to fit: {remedy.name}"
    settings = memory.settings
    chosen, candidates = largest_fitting(sizes, memory, available, None if one_step and
                                         given_tokens is None else tokens_per_step)
    if one_step:
        tokens_per_step, candidates = one_micro_batch_step(given_tokens, chosen, candidates,
                                                           seq_len, layout.data)
    mem = memory(chosen)
    budget = run_length(cfg, spec, settings, seq_len=seq_len, tokens_per_step=tokens_per_step,
                        world_size=layout.world_size, total_tokens=total_tokens, hours=hours,
                        mfu=mfu_given,
                        law=law if law is not None else law_for_data(data, tokenizer))
    warnings += plan_warnings(cfg, spec, seq_len, budget.total_tokens,
                              budget.compute_optimal_tokens)
    warnings += sharded_slack_warnings(mem, available, settings["parallelism"], memory_options)
    warnings += chunk_length_warnings(chosen, seq_len, memory_options)
    on_data = None if data is None else expected_loss(cfg, tokens=budget.total_tokens, data=data,
                                                      tokenizer=tokenizer)
    return Plan(
        model=cfg, gpu=spec, world_size=layout.world_size, data_parallel=layout.data,
        parallelism=settings["parallelism"], seq_len=seq_len,
        precision=settings["precision"], precision_reason=precision_reason,
        optimizer=settings["optimizer"], attention=attention,
        checkpointing=settings["checkpointing"], micro_batch_size=chosen,
        grad_accum_steps=grad_accum_steps(tokens_per_step, chosen, seq_len, layout.data),
        tokens_per_step=tokens_per_step, memory=mem,
        available_bytes=available, available_source=available_source,
        headroom_bytes=available - mem.total, fits=mem.total <= available,
        candidates=candidates, remedy=None if remedy is None else remedy.name,
        remedy_reason=remedy_reason, remedies=remedies, warnings=warnings,
        expected_loss_on_data=on_data, memory_options=memory_options,
        **_with_adapters(budget._asdict(), cfg, memory_options.get("lora")),
    )


def _with_adapters(budget: dict[str, Any], cfg: GPTConfig, lora: LoRA | None) -> dict[str, Any]:
    """The run-length fields, with ``params`` counting ``lora``'s adapters when one is given
    (the run's FLOPs and tokens stay the model's own)."""
    if lora is not None:
        budget["params"] = count_params(cfg, lora=lora)
    return budget


def _step(tokens_per_step: int | None, seq_len: int, data: int) -> tuple[int, list[int]]:
    """Tokens per step (by default `DEFAULT_TOKENS_PER_STEP` rounded to whole sequences on every
    data-parallel GPU) and the micro-batches that divide it exactly."""
    chunk = seq_len * data
    if tokens_per_step is None:
        tokens_per_step = max(1, round(DEFAULT_TOKENS_PER_STEP / chunk)) * chunk
    sizes = micro_batch_sizes(tokens_per_step, seq_len, data)
    if not sizes:
        raise ScaleplanError(
            f"tokens_per_step={tokens_per_step:,} is not a whole number of sequences on every "
            f"data-parallel GPU (seq_len x {data} = {chunk:,}); try tokens_per_step="
            f"{max(1, round(tokens_per_step / chunk)) * chunk:,}")
    return tokens_per_step, sizes

"""Markers about the shape of a step: `FitsOn` (GPU memory) and `DivisibleStep` (exact
gradient accumulation). Re-exported by `scaleplan.validation.markers`, which documents the error
types.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, ClassVar, get_args

from scaleplan.checks import real, whole
from scaleplan.compute.hardware import GPUSpec
from scaleplan.errors import ScaleplanError, shown
from scaleplan.memory.activations import AttentionKind, CheckpointingKind
from scaleplan.memory.implementations import IMPLEMENTATIONS
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.step_switches import NO_SWITCHES, check_switches
from scaleplan.model.config import GPTConfig, normalize_precision
from scaleplan.model.lora import LoRA
from scaleplan.units import format_gib
from scaleplan.validation.base import TIGHT_FIT_FRACTION, Finding, Marker, Subject, check_text

__all__ = ["DivisibleStep", "FitsOn"]

_ATTENTION: tuple[str, ...] = get_args(AttentionKind)
_CHECKPOINTING: tuple[str, ...] = get_args(CheckpointingKind)
DEFAULT_PRECISION = "bf16-mixed"  # nanoGPT's default (dtype='bfloat16' under autocast)
DEFAULT_OPTIMIZER = "adamw"
# The memory-saving switches and the values at which FitsOn leaves them out of the settings.
_SWITCHES_OFF = {name: getattr(NO_SWITCHES, name) for name in (
    "loss", "optimizer_in_backward", "activation_offload", "gradient_accumulation")}


def _positive_int(name: str, value: object) -> None:
    """An optional size of a marker: None (the subject gives it) or a positive int."""
    if value is not None:
        whole(name, value, message=f"must be a positive int, e.g. {name}=8")


@dataclass(frozen=True)
class FitsOn(Marker):
    """One training step of the model fits in one GPU's memory.

    ``gpu`` is a name (`scaleplan.compute.hardware.gpu` looks it up; the driver-reported total is
    used where known, else the marketed size read as GiB), a `GPUSpec`, or a memory size in bytes.
    ``micro_batch_size``, ``seq_len``, ``precision`` and ``optimizer`` come from the marker,
    else from the training settings (precision defaults to ``"bf16-mixed"``, optimizer to
    ``"adamw"``). ``compile`` and ``implementation`` are `training_memory`'s (torch.compile;
    nanoGPT's or Hugging Face's modeling code), and so are ``loss``, ``optimizer_in_backward``,
    ``activation_offload`` and ``gradient_accumulation`` (`scaleplan.memory.step_switches`);
    ``lora`` and ``base_weights`` too (a LoRA fine-tune of a frozen base,
    ``implementation="hf"``). ``headroom`` keeps a fraction of the memory free. The bytes
    needed are `scaleplan.memory.training.training_memory`'s ``total``
    (weights, gradients, optimizer states, activations, logits, CUDA context and allocator
    slack), or ``memory_model(cfg, **settings)``
    (bytes, or an object with ``.total``) when given. The error names the largest micro-batch
    that fits and the gradient-accumulation steps that keep the step's tokens.

    >>> from scaleplan.units import GiB
    >>> FitsOn(8 * GiB, micro_batch_size=4, seq_len=1024).describe()
    'Fits in the GPU (8.00 GiB) at micro_batch_size=4, seq_len=1024, bf16-mixed.'
    """

    code: ClassVar[str] = "scaleplan.does_not_fit"
    needs: ClassVar[tuple[str, ...]] = ("micro_batch_size", "seq_len")
    gpu: str | int | GPUSpec
    _: KW_ONLY
    micro_batch_size: int | None = None
    seq_len: int | None = None
    precision: str | None = None
    optimizer: str | None = None
    attention: AttentionKind = "flash"
    checkpointing: CheckpointingKind = "none"
    compile: bool = False
    implementation: str = "nanogpt"
    loss: str = "standard"
    optimizer_in_backward: bool = False
    activation_offload: bool = False
    gradient_accumulation: bool = True
    headroom: float = 0.0
    memory_model: Callable[..., Any] | None = None
    lora: LoRA | None = None
    base_weights: str | None = None
    gpu_name: str = field(init=False, compare=False)
    available_bytes: int = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        for arg, example in (("gpu", "'RTX 4070'"), ("precision", "'bf16-mixed'"),
                             ("optimizer", "'adamw'")):
            check_text(arg, getattr(self, arg), example=example)  # before any lookup (issue 20)
        name, available = self._resolve_gpu(self.gpu)
        object.__setattr__(self, "gpu_name", name)
        object.__setattr__(self, "available_bytes", available)
        for name in ("micro_batch_size", "seq_len"):
            _positive_int(name, getattr(self, name))
        if self.precision is not None:
            object.__setattr__(self, "precision", normalize_precision(self.precision))
        for arg, value, valid in (("attention", self.attention, _ATTENTION),
                                  ("checkpointing", self.checkpointing, _CHECKPOINTING)):
            if value not in valid:
                raise ScaleplanError(
                    f"{arg}={shown(value)} is not one of {', '.join(map(repr, valid))}")
        if not isinstance(self.compile, bool):
            raise ScaleplanError(f"compile={shown(self.compile)} must be True or False")
        if self.implementation not in IMPLEMENTATIONS:
            raise ScaleplanError(f"implementation={shown(self.implementation)} is not one of "
                                 f"{', '.join(map(repr, IMPLEMENTATIONS))}")
        if self.lora is not None and not isinstance(self.lora, LoRA):
            raise ScaleplanError(f"lora={shown(self.lora)} must be a scaleplan.LoRA, e.g. "
                                 "LoRA(8, targets=('q', 'v')), or None")
        check_switches(loss=self.loss, optimizer_in_backward=self.optimizer_in_backward,
                       activation_offload=self.activation_offload,
                       gradient_accumulation=self.gradient_accumulation,
                       implementation=self.implementation, compile=self.compile,
                       checkpointing=self.checkpointing, parallelism=Parallelism())
        if isinstance(self.headroom, bool) or not isinstance(self.headroom, int | float) \
                or not 0 <= self.headroom < 1:
            raise ScaleplanError(f"headroom={shown(self.headroom)} must be a fraction in [0, 1), "
                                 "e.g. headroom=0.1 to keep 10% of the memory free")

    @staticmethod
    def _resolve_gpu(gpu: Any) -> tuple[str, int]:
        if isinstance(gpu, str):
            from scaleplan.compute.hardware import gpu as lookup

            gpu = lookup(gpu)
        if isinstance(gpu, int) and not isinstance(gpu, bool):
            # finite as a float too: the budget and the tight-fit bound are float products
            real("gpu", gpu, message="must be a memory size in positive bytes (below 2**1024), "
                                     "e.g. gpu=12 * 2**30")
            return "the GPU", gpu
        memory = getattr(gpu, "usable_memory_bytes", None) or getattr(gpu, "memory_bytes", None)
        if not isinstance(memory, int):
            raise ScaleplanError(f"gpu={shown(gpu)} must be a GPU name (e.g. 'RTX 4070'), a "
                                 "GPUSpec or a memory size in bytes")
        return str(gpu.name), memory

    def _settings(self, subject: Subject) -> dict[str, Any]:
        return {
            "micro_batch_size": int(subject.get("micro_batch_size", self.micro_batch_size)),
            "seq_len": int(subject.get("seq_len", self.seq_len)),
            "precision": normalize_precision(
                subject.get("precision", self.precision) or DEFAULT_PRECISION),
            "optimizer": subject.get("optimizer", self.optimizer) or DEFAULT_OPTIMIZER,
            "attention": self.attention,
            "checkpointing": self.checkpointing,
            **({"compile": True} if self.compile else {}),
            **({"implementation": self.implementation} if self.implementation != "nanogpt"
               else {}),
            **({"lora": self.lora} if self.lora is not None else {}),
            **({"base_weights": self.base_weights} if self.base_weights is not None else {}),
            **{name: getattr(self, name) for name, off in _SWITCHES_OFF.items()
               if getattr(self, name) != off},
        }

    def explicit(self) -> dict[str, Any]:
        return {"micro_batch_size": self.micro_batch_size, "seq_len": self.seq_len}

    def needed_bytes(self, cfg: GPTConfig, **settings: Any) -> int:
        """Bytes one step needs on the GPU, from the memory model.

        With a stand-in memory model of 1 GiB per sequence in the micro-batch:

        >>> from scaleplan.units import GiB
        >>> def one_gib_each(cfg, micro_batch_size, **settings):
        ...     return micro_batch_size * GiB
        >>> fits = FitsOn(8 * GiB, memory_model=one_gib_each)
        >>> fits.needed_bytes(GPTConfig.preset("gpt2"), micro_batch_size=3, seq_len=1024) // GiB
        3
        """
        if self.memory_model is None:
            from scaleplan.memory.training import training_memory as model
        else:
            model = self.memory_model
        result = model(cfg, **settings)
        return int(result if isinstance(result, int) else result.total)

    def budget_bytes(self) -> int:
        """The memory a step may use: the GPU's, less ``headroom``.

        >>> from scaleplan.units import GiB
        >>> FitsOn(8 * GiB, headroom=0.25).budget_bytes() == 6 * GiB
        True
        """
        return math.floor(self.available_bytes * (1 - self.headroom))

    def describe(self) -> str:
        shape = ", ".join(f"{k}={v}" for k, v in self.explicit().items() if v is not None)
        where = f" at {shape}, {self.precision or DEFAULT_PRECISION}" if shape else ""
        kept = f", keeping {self.headroom:.0%} free" if self.headroom else ""
        return f"Fits in {self.gpu_name} ({format_gib(self.available_bytes)}){where}{kept}."

    def max_micro_batch_size(self, cfg: GPTConfig, **settings: Any) -> int:
        """The largest micro-batch up to ``settings['micro_batch_size']`` that fits; 0 if none.

        Memory grows with the micro-batch, so a bisection finds it. With a stand-in memory model
        of 1 GiB per sequence, 8 GiB holds 8 sequences:

        >>> from scaleplan.units import GiB
        >>> def one_gib_each(cfg, micro_batch_size, **settings):
        ...     return micro_batch_size * GiB
        >>> fits = FitsOn(8 * GiB, memory_model=one_gib_each)
        >>> fits.max_micro_batch_size(GPTConfig.preset("gpt2"), micro_batch_size=16, seq_len=1024)
        8
        """
        # Every sequence needs at least a byte, so no more than budget_bytes fit: this bounds
        # the bisection when micro_batch_size is 10**400 (it ran for minutes; issue 13).
        lo, hi = 0, min(settings.pop("micro_batch_size"), self.budget_bytes())
        while lo < hi:
            mid = (lo + hi + 1) // 2
            fits = self.needed_bytes(cfg, micro_batch_size=mid, **settings) <= self.budget_bytes()
            lo, hi = (mid, hi) if fits else (lo, mid - 1)
        return lo

    def findings(self, subject: Subject) -> list[Finding]:
        settings = self._settings(subject)
        b, s = settings["micro_batch_size"], settings["seq_len"]
        needed, budget = self.needed_bytes(subject.cfg, **settings), self.budget_bytes()
        numbers: dict[str, int | float] = {
            "needed_bytes": needed, "available_bytes": self.available_bytes,
            "budget_bytes": budget, "micro_batch_size": b, "seq_len": s}
        labels = {"gpu": self.gpu_name, "precision": settings["precision"]}
        shape = f"micro_batch_size={b}, seq_len={s}, {settings['precision']}"
        if needed <= budget:
            if needed <= TIGHT_FIT_FRACTION * self.available_bytes:
                return []
            return [Finding(severity="warning", code="scaleplan.tight_fit", numbers=numbers,
                            labels=labels, message=f"needs {format_gib(needed)} of "
                            f"{self.gpu_name}'s {format_gib(self.available_bytes)} at {shape}: it "
                            "fits, with little to spare for allocator fragmentation; consider a "
                            "smaller micro-batch")]
        best = self.max_micro_batch_size(subject.cfg, **settings)
        numbers["max_micro_batch_size"] = best
        message = (f"needs {format_gib(needed)} but {self.gpu_name} has {format_gib(budget)}"
                   f"{' to use' if self.headroom else ''} at {shape} "
                   f"({format_gib(needed - budget)} over); {self._fix(subject, settings, best)}")
        return [Finding(severity="error", code=self.code, message=message, numbers=numbers,
                        labels=labels)]

    def _fix(self, subject: Subject, settings: dict[str, Any], best: int) -> str:
        if best == 0:
            fixes = ["a smaller model", "a GPU with more memory"]
            if settings["checkpointing"] != "full":
                fixes.insert(0, "activation checkpointing (checkpointing='full')")
            one = self.needed_bytes(subject.cfg, **{**settings, "micro_batch_size": 1})
            return f"even micro_batch_size=1 needs {format_gib(one)}: use {' or '.join(fixes)}"
        step = subject.get("tokens_per_step")
        world = int(subject.get("world_size") or 1)
        if step:
            from scaleplan.planning.batching import micro_batch_sizes

            exact = [m for m in micro_batch_sizes(int(step), settings["seq_len"], world)
                     if m <= best]
            if exact:
                m = exact[-1]
                return (f"use micro_batch_size={m} with grad_accum_steps="
                        f"{int(step) // (m * settings['seq_len'] * world)} to keep "
                        f"{int(step):,} tokens per step")
        return (f"lower micro_batch_size to {best} (or less) and raise grad_accum_steps to keep "
                "the tokens per step")


@dataclass(frozen=True)
class DivisibleStep(Marker):
    """An optimizer step is exactly ``tokens_per_step`` tokens: micro_batch_size x seq_len x
    world_size divides it, and ``grad_accum_steps`` (when the settings have it) is the quotient.

    >>> DivisibleStep(524288).describe()
    'Exactly 524,288 tokens per optimizer step.'
    """

    code: ClassVar[str] = "scaleplan.step_not_divisible"
    needs: ClassVar[tuple[str, ...]] = ("micro_batch_size", "seq_len")
    tokens_per_step: int
    _: KW_ONLY
    micro_batch_size: int | None = None
    seq_len: int | None = None
    world_size: int | None = None

    def __post_init__(self) -> None:
        _positive_int("tokens_per_step", self.tokens_per_step)
        for name in ("micro_batch_size", "seq_len", "world_size"):
            _positive_int(name, getattr(self, name))

    def explicit(self) -> dict[str, Any]:
        return {"micro_batch_size": self.micro_batch_size, "seq_len": self.seq_len,
                "world_size": self.world_size}

    def describe(self) -> str:
        return f"Exactly {self.tokens_per_step:,} tokens per optimizer step."

    def findings(self, subject: Subject) -> list[Finding]:
        from scaleplan.planning.batching import grad_accum_steps

        b = int(subject.get("micro_batch_size", self.micro_batch_size))
        s = int(subject.get("seq_len", self.seq_len))
        world = int(subject.get("world_size", self.world_size) or 1)
        accum = subject.get("grad_accum_steps")
        numbers: dict[str, int | float] = {
            "tokens_per_step": self.tokens_per_step, "micro_batch_size": b, "seq_len": s,
            "world_size": world}
        try:
            exact = grad_accum_steps(self.tokens_per_step, b, s, world)
        except ScaleplanError as exc:
            message = str(exc).replace("; or pass rounding='down'|'up'|'nearest'", "")
        else:
            if accum is None or int(accum) == exact:
                return []
            numbers["actual_tokens_per_step"] = int(accum) * b * s * world
            numbers["grad_accum_steps"] = exact
            message = (f"grad_accum_steps={accum} gives {int(accum) * b * s * world:,} tokens "
                       f"per step, not {self.tokens_per_step:,}; set grad_accum_steps={exact}")
        return [Finding(severity="error", code=self.code, message=message, numbers=numbers)]

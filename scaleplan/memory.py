"""Training memory per GPU: `training_memory` -> `MemoryBreakdown`.

The step's worst moment is one of two: the start of backward (every saved tensor live, plus the
loss gradient's s b V buffers) or the optimizer step (saved tensors freed, optimizer temporaries
live). Both are computed and the larger is reported, so that "fits" means the step does not run
out of memory. Saved tensors are derived per operation in `scaleplan.activations`.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from scaleplan._checks import real, whole
from scaleplan.activations import (
    AUTOCAST,
    FP32_BYTES,
    AttentionKind,
    CheckpointingKind,
    DeviceKind,
    activation_bytes,
    autocast_weight_copy_bytes,
    block_saved_terms,
    embedding_saved_terms,
    head_saved_terms,
    model_saved_terms,
)
from scaleplan.config import GPTConfig, normalize_precision
from scaleplan.errors import ScaleplanError, UnknownNameError
from scaleplan.optimizers import (
    gradient_bytes,
    normalize_optimizer,
    optimizer_state_bytes,
    param_shapes,
    weight_bytes,
)

__all__ = [
    "ALLOCATOR_SLACK_FRACTION",
    "CUDA_CONTEXT_BYTES",
    "MemoryBreakdown",
    "saved_for_backward_bytes",
    "training_memory",
]

GiB = 2**30
MiB = 2**20

# A CUDA process's context (driver state, cuBLAS/cuDNN handles and kernels loaded by torch):
# published tools budget 650 MB to 1 GiB (design notes); a fresh torch 2.x process measures
# ~500 MiB on recent data-centre GPUs. Override with ``cuda_context_bytes=``.
CUDA_CONTEXT_BYTES = 512 * MiB
# PyTorch's caching allocator rounds blocks to 512 B and carves 2 MiB / 20 MiB segments, so
# reserved memory exceeds the live tensor peak; a few per cent is typical for a training step.
# Override with ``allocator_slack_fraction=``.
ALLOCATOR_SLACK_FRACTION = 0.05

OptimizerImpl = Literal["foreach", "fused", "for-loop"]


class MemoryBreakdown(BaseModel):
    """Bytes a training step needs on one GPU, at the step's worst moment.

    ``weights + gradients + optimizer + saved_for_backward + autocast_weight_copies + transient
    + overhead == total``; ``tensor_peak == total - overhead``. Sizes are bytes (ints);
    ``str()`` prints GiB (2^30 bytes).

    >>> m = training_memory(GPTConfig.preset("gpt2"), micro_batch_size=1, seq_len=1024)
    >>> m.total == m.tensor_peak + m.overhead
    True
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    weights: int = Field(description="The parameters in their stored dtype (per GPU, sharded "
                         "as the parallelism says).")
    gradients: int = Field(description="Gradients, kept for the whole step (as with gradient "
                           "accumulation); fp32 for bf16-fp32-master.")
    optimizer: int = Field(description="Optimizer states, plus the fp32 master weights of "
                           "bf16-fp32-master.")
    saved_for_backward: int = Field(
        description="Everything autograd holds after forward + loss, parameters excluded: "
        "per-operation block activations, embedding ids and masks, the final norm, the output "
        "layer's input and the loss's fp32 log-softmax (s b V x 4 bytes).")
    autocast_weight_copies: int = Field(
        description="bf16/fp16 copies of the linear weights that autocast makes and the "
        "matmuls save (0 unless bf16-mixed/16-mixed).")
    transient: int = Field(
        description="Live on top of the fields above at the worst moment: the logits and their "
        "gradient at the start of backward, or, when the optimizer step is the worst moment, its "
        "temporaries minus the saved tensors already freed by then.")
    overhead: int = Field(description="CUDA context + caching-allocator slack (0 on CPU).")
    total: int = Field(description="What the GPU must hold: the sum of the fields above.")
    tensor_peak: int = Field(description="total - overhead: the peak of live tensor bytes, "
                             "comparable with torch.cuda.max_memory_allocated.")
    logits: int = Field(description="Informational, inside saved_for_backward: the loss side "
                        "(fp32 log-softmax, targets).")
    peak_moment: Literal["backward_start", "optimizer_step"] = Field(
        description="Which moment of the step is the worst.")
    saved_breakdown: dict[str, int] = Field(
        description="saved_for_backward by operation, summed over layers.")

    @model_validator(mode="after")
    def _parts_sum_to_total(self) -> MemoryBreakdown:
        parts = (self.weights + self.gradients + self.optimizer + self.saved_for_backward
                 + self.autocast_weight_copies + self.transient + self.overhead)
        if parts != self.total or self.tensor_peak != self.total - self.overhead:
            raise ValueError(f"memory parts sum to {parts}, not total={self.total}")
        return self

    @property
    def activations(self) -> int:
        """Alias of ``saved_for_backward``."""
        return self.saved_for_backward

    def __str__(self) -> str:
        rows = ["weights", "gradients", "optimizer", "saved_for_backward",
                "autocast_weight_copies", "transient", "overhead", "total"]
        return "\n".join(f"{r:>24}: {getattr(self, r) / GiB:9.3f} GiB" for r in rows)


def _check_shape(cfg: GPTConfig, micro_batch_size: Any, seq_len: Any) -> tuple[Any, Any]:
    """(b, s) as Python ints, or as float64 arrays for sweeps: int64 products would wrap."""
    b = _shape_value("micro_batch_size", micro_batch_size, "sequence")
    s = _shape_value("seq_len", seq_len, "token")
    if cfg.position == "learned" and np.any(np.asarray(s) > cfg.block_size):
        raise ScaleplanError(
            f"seq_len={seq_len} exceeds block_size={cfg.block_size}, the length of the learned "
            "position table; lower seq_len or raise block_size")
    return b, s


def _shape_value(name: str, value: Any, unit: str) -> Any:
    if isinstance(value, np.ndarray | list | tuple):
        arr = np.asarray(value)
        if arr.dtype.kind not in "iuf" or not np.isfinite(arr.astype(np.float64)).all():
            raise ScaleplanError(f"{name}={value!r} must hold finite numbers of {unit}s")
        value = arr.astype(np.float64)
    elif isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ScaleplanError(f"{name}={value!r} must be an int >= 1 {unit}, e.g. {name}=8")
    else:
        value = int(value)
    if np.any(np.asarray(value) < 1):
        raise ScaleplanError(f"{name}={value} must be >= 1 {unit}")
    return value


def saved_for_backward_bytes(
    cfg: GPTConfig, *, micro_batch_size: Any, seq_len: Any, precision: str = "bf16-mixed",
    attention: AttentionKind = "flash", checkpointing: CheckpointingKind = "none",
    device: DeviceKind = "cuda", layers: int | None = None,
) -> dict[str, Any]:
    """Bytes saved for backward by operation, summed over ``layers`` blocks (default all).

    Works on ints (exact) and on float64 numpy arrays of micro-batch sizes / lengths.

    >>> t = saved_for_backward_bytes(GPTConfig.preset("gpt2"), micro_batch_size=1,
    ...                              seq_len=1024, precision="32-true")
    >>> t["log_softmax"] == 1024 * 50257 * 4  # fp32 log-softmax over GPT-2's vocabulary
    True
    """
    p = normalize_precision(precision)
    _check_mode("attention", attention, ("flash", "eager"))
    _check_mode("checkpointing", checkpointing, ("none", "selective", "full"))
    _check_mode("device", device, ("cuda", "cpu", "cpu-cuda-semantics"))
    b, s = _check_shape(cfg, micro_batch_size, seq_len)
    dropout = cfg.dropout > 0
    L = cfg.n_layer if layers is None else layers
    out: dict[str, Any] = dict(embedding_saved_terms(cfg, b, s, precision=p, device=device,
                                                     dropout=dropout))
    block = block_saved_terms(cfg, b, s, precision=p, attention=attention,
                              checkpointing=checkpointing, device=device, dropout=dropout)
    out.update({name: L * v for name, v in block.items()})
    out.update(model_saved_terms(cfg, b, s, precision=p, attention=attention,
                                 checkpointing=checkpointing, device=device))
    out.update(head_saved_terms(cfg, b, s, precision=p, device=device))
    return out


def _check_mode(field: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise UnknownNameError(field, value, valid)


def _optimizer_temporaries(cfg: GPTConfig, optimizer: str, precision: str, device: str,
                           impl: OptimizerImpl | None) -> int:
    """Peak temporaries of ``optimizer.step()`` in torch 2.x.

    ``foreach`` (torch's default on CUDA) AdamW materialises sqrt(v) for a whole parameter group
    (one param-sized buffer in the state dtype); ``for-loop`` (the default on CPU) makes sqrt(v)
    and its quotient for one tensor at a time (2 x the largest tensor); ``fused`` makes none.
    Optimizers other than AdamW are taken to update in place.
    """
    if optimizer not in ("adamw",):
        return 0
    impl = impl or ("foreach" if device == "cuda" else "for-loop")
    state = FP32_BYTES if precision != "bf16-true" else 2
    shapes = param_shapes(cfg)
    if impl == "fused":
        return 0
    if impl == "foreach":
        return sum(math.prod(p) for p in shapes) * state
    return 2 * max(math.prod(p) for p in shapes) * state


def training_memory(
    cfg: GPTConfig, *, micro_batch_size: int, seq_len: int, precision: str = "bf16-mixed",
    optimizer: str = "adamw", attention: AttentionKind = "flash",
    checkpointing: CheckpointingKind = "none", device: DeviceKind = "cuda",
    parallelism: Any = None, optimizer_impl: OptimizerImpl | None = None,
    hold_logits: bool = True, cuda_context_bytes: int = CUDA_CONTEXT_BYTES,
    allocator_slack_fraction: float = ALLOCATOR_SLACK_FRACTION,
) -> MemoryBreakdown:
    """Memory one GPU needs to train ``cfg`` for one optimizer step.

    Args:
        cfg: the model.
        micro_batch_size: sequences per forward pass per GPU (b).
        seq_len: tokens per sequence (s).
        precision: see `scaleplan.config.Precision` (aliases such as ``"amp-bf16"`` accepted).
        optimizer: one of `scaleplan.optimizers.OPTIMIZERS`.
        attention: ``"flash"`` (SDPA: O(s) statistics) or ``"eager"`` (saves the s x s scores).
        checkpointing: ``"none"``, ``"selective"`` (attention core recomputed) or ``"full"``
            (only block inputs kept; one block's activations are rebuilt during backward).
        device: ``"cuda"`` or ``"cpu"`` (CPU semantics: float dropout masks, math attention
            when dropout > 0; no context overhead).
        parallelism: a `scaleplan.parallel.Parallelism`, or None for one GPU.
        optimizer_impl: torch's AdamW implementation; None means torch's default for the
            device (foreach on CUDA, for-loop on CPU).
        hold_logits: the training loop keeps the logits alive through backward, as nanoGPT's
            ``logits, loss = model(X, Y)`` does.
        cuda_context_bytes: CUDA context size (default `CUDA_CONTEXT_BYTES`).
        allocator_slack_fraction: allocator slack as a fraction of the tensor peak.

    The worst moment is the larger of

    - backward start: weights + gradients + optimizer + saved + weight copies + the logits
      (s b V in the activation dtype, when held) + the log-softmax's gradient and the logits'
      fp32 gradient (2 s b V x 4 bytes), Korthikanti et al. 2022's activations plus the loss
      side that their count leaves out;
    - optimizer step: weights + gradients + optimizer + the step's temporaries.

    >>> m = training_memory(GPTConfig.preset("gpt2"), micro_batch_size=16, seq_len=1024)
    >>> m.saved_breakdown["log_softmax"] == 16 * 1024 * 50257 * 4, m.peak_moment
    (True, 'backward_start')
    """
    p = normalize_precision(precision)
    opt = normalize_optimizer(optimizer)
    if isinstance(micro_batch_size, bool) or not isinstance(micro_batch_size, int | np.integer):
        raise ScaleplanError(f"micro_batch_size={micro_batch_size!r} must be an int >= 1")
    micro_batch_size, seq_len = _check_shape(cfg, micro_batch_size, seq_len)
    if not isinstance(hold_logits, bool):
        raise ScaleplanError(f"hold_logits={hold_logits!r} must be True or False")
    cuda_context_bytes = whole("cuda_context_bytes", cuda_context_bytes, minimum=0,
                               example="cuda_context_bytes=2**29")
    slack = real("allocator_slack_fraction", allocator_slack_fraction, inclusive=True,
                 example="a fraction such as 0.05")
    if slack >= 1:
        raise ScaleplanError(f"allocator_slack_fraction={allocator_slack_fraction!r} must be "
                             "below 1, e.g. 0.05")
    if parallelism is not None:
        raise ScaleplanError(
            f"parallelism={parallelism!r} is not supported yet: training_memory predicts one "
            "GPU; for ZeRO-3 model states see scaleplan.published.deepspeed_zero3_gpu_bytes")
    saved = saved_for_backward_bytes(cfg, micro_batch_size=micro_batch_size, seq_len=seq_len,
                                     precision=p, attention=attention,
                                     checkpointing=checkpointing, device=device)
    n = sum(math.prod(s) for s in param_shapes(cfg))
    W, G, O = weight_bytes(n, p), gradient_bytes(n, p), optimizer_state_bytes(cfg, opt, p)
    copies = autocast_weight_copy_bytes(cfg, p)
    S = sum(saved.values())
    temp = _optimizer_temporaries(cfg, opt, p, device, optimizer_impl)
    backward_extra = _backward_start_extra(cfg, micro_batch_size, seq_len, p, hold_logits)
    if checkpointing == "full":  # one block's activations rebuilt during backward
        backward_extra += sum(block_saved_terms(
            cfg, micro_batch_size, seq_len, precision=p, attention=attention,
            checkpointing="none", device=device, dropout=cfg.dropout > 0).values())
    at_backward = S + copies + backward_extra
    moment: Literal["backward_start", "optimizer_step"] = (
        "optimizer_step" if temp > at_backward else "backward_start")
    transient = max(at_backward, temp) - S - copies
    tensor_peak = W + G + O + S + copies + transient
    overhead = 0 if device == "cpu" else (
        cuda_context_bytes + math.ceil(Fraction(slack) * tensor_peak))  # exact at any size
    logits = saved["log_softmax"] + saved["targets"]
    return MemoryBreakdown(
        weights=W, gradients=G, optimizer=O, saved_for_backward=S,
        autocast_weight_copies=copies, transient=transient, overhead=overhead,
        total=tensor_peak + overhead, tensor_peak=tensor_peak, logits=logits,
        peak_moment=moment, saved_breakdown={k: int(v) for k, v in saved.items()})


def _backward_start_extra(cfg: GPTConfig, b: Any, s: Any, precision: str,
                          hold_logits: bool) -> Any:
    """Loss-side tensors live at the start of backward besides the saved ones: the logits (when
    the caller holds them), the log-softmax's gradient and the logits' fp32 gradient."""
    TV = b * s * cfg.vocab_size
    held = TV * activation_bytes(precision) if hold_logits else 0  # type: ignore[arg-type]
    if precision in AUTOCAST:
        held = TV * 2 if hold_logits else 0
    return held + 2 * TV * FP32_BYTES

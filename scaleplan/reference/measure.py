"""Measure one training step of the reference GPT: parameters, FLOPs, saved tensors, peak bytes.

`measure` builds `scaleplan.reference.model.GPT` for a config, runs one warm-up step (so AdamW's
states exist, as in any step after the first), then one instrumented training step: forward with
cross-entropy loss, backward, ``optimizer.step()``, ``optimizer.zero_grad(set_to_none=True)``.
With ``fake=True`` it runs under ``FakeTensorMode``: the same operators and shapes, no memory, so
7B-class configs can be measured on a laptop.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from scaleplan.model.config import GPTConfig, Precision, normalize_precision
from scaleplan.reference.model import GPT, AttentionKind, Routing
from scaleplan.reference.step import AUTOCAST_DTYPES, OptimizerImpl, TrainingStep
from scaleplan.reference.tracking import LiveBytesTracker, SavedTensorsRecorder, storage_key

__all__ = ["CudaMemory", "OptimizerImpl", "ResidentState", "StepMeasurement", "count_flops",
           "measure"]

_DROPOUT_MODULES = ("drop", "attn_dropout", "resid_dropout", "dropout")
_CUDA_CONTEXT_BYTES: list[int] = []  # measured once per process, before the first tensor


class ResidentState(BaseModel):
    """Bytes alive before the measured step starts (storages, counted once each)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    params: int = Field(description="Model parameters (a tied head once).")
    grads: int = Field(description="Gradients held between steps (0 after set_to_none).")
    optimizer_states: int = Field(
        description="AdamW exp_avg, exp_avg_sq and step, plus fp32 master weights for "
        "'bf16-fp32-master'.")
    other: int = Field(description="Buffers (RoPE tables) and the batch (token ids, targets).")
    total: int

    @model_validator(mode="after")
    def _parts_sum_to_total(self) -> ResidentState:
        if self.params + self.grads + self.optimizer_states + self.other != self.total:
            raise ValueError("resident parts must sum to total")
        return self


class CudaMemory(BaseModel):
    """What the CUDA caching allocator reports around the measured step (bytes)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    allocated_before_step: int = Field(description="torch.cuda.memory_allocated() before.")
    max_allocated: int = Field(description="torch.cuda.max_memory_allocated() over the step.")
    max_reserved: int = Field(description="torch.cuda.max_memory_reserved() over the step.")
    context_bytes: int | None = Field(
        description="Device memory in use after CUDA initialisation and before the first "
        "tensor (total - free - reserved; includes other processes on the device). None when "
        "this process had allocated CUDA tensors before its first measure().")


class StepMeasurement(BaseModel):
    """One measured training step. Bytes and params are ints, FLOPs floats.

    ``saved_for_backward`` counts every storage autograd holds after forward + loss, once, whole,
    parameters excluded and autocast's low-precision weight copies excluded (those are
    ``autocast_weight_copies``); ``saved_by_module`` splits it by the innermost module that saved
    each storage ("loss" = the cross-entropy) and sums to it. ``peak_bytes`` is the most bytes
    of live storages at any moment of the step, ``resident`` included.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    config: GPTConfig
    micro_batch_size: int
    seq_len: int
    precision: Precision
    attention: AttentionKind
    checkpointing: bool
    optimizer: OptimizerImpl
    device: str = Field(description="Device type the step ran on ('cpu', 'cuda').")
    fake: bool = Field(description="Measured under FakeTensorMode (nothing allocated).")
    cuda_semantics: bool = Field(description="CPU run made to save what CUDA saves.")
    accumulating: bool = Field(description="Gradients of earlier micro-batches resident.")
    routing: Routing = Field(default="balanced",
                             description="How a mixture of experts routed (none: unused).")
    hold_logits: bool = Field(default=False,
                              description="Logits kept alive through backward and the update.")
    sdpa_kernel: str | None = Field(description="The aten SDPA kernel that ran (flash only).")
    dropout_mask_dtype: str | None = Field(description="dtype of saved dropout masks.")
    notes: tuple[str, ...] = Field(description="Device semantics of this measurement.")
    params: int = Field(description="Sum of numel over parameters, a tied head once.")
    flops: float = Field(description="FlopCounterMode FLOPs of forward + loss + backward.")
    flops_forward: float
    flops_backward: float
    saved_for_backward: int
    saved_by_module: dict[str, int]
    saved_by_dtype: dict[str, int]
    autocast_weight_copies: int = Field(
        description="Low-precision copies of parameters saved for backward under autocast.")
    resident: ResidentState
    live_after_forward: int = Field(description="Live bytes once forward + loss returned.")
    peak_bytes: int
    peak_phase: str = Field(description="'forward', 'backward', 'optimizer' or 'zero_grad'.")
    phase_peaks: dict[str, int] = Field(description="Peak live bytes within each phase.")
    cuda: CudaMemory | None = None

    @model_validator(mode="after")
    def _breakdowns_sum(self) -> StepMeasurement:
        if sum(self.saved_by_module.values()) != self.saved_for_backward:
            raise ValueError("saved_by_module must sum to saved_for_backward")
        if sum(self.saved_by_dtype.values()) != self.saved_for_backward:
            raise ValueError("saved_by_dtype must sum to saved_for_backward")
        return self

    def saved_under(self, prefix: str) -> int:
        """Saved bytes of the modules whose names start with ``prefix`` ("transformer.h.0.")."""
        return sum(v for k, v in self.saved_by_module.items() if k.startswith(prefix))


def _fake_mode() -> AbstractContextManager[Any]:
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode()


def count_flops(cfg: GPTConfig, *, micro_batch_size: int, seq_len: int,
                attention: AttentionKind = "flash", checkpointing: bool = False,
                routing: Routing = "balanced") -> tuple[float, float]:
    """(forward + loss, backward) FLOPs of one micro-batch, from ``FlopCounterMode``.

    Runs on fake tensors with SDPA forced to the math kernel: torch 2.13 has no FLOP formula
    for the fused CPU flash kernel and would count attention as 0. The math kernel's backward
    has 4 attention matmuls (2x forward), not flash's 5 (which recompute the scores). Only
    matmuls count; elementwise ops, norms and softmax count 0. With ``checkpointing`` the
    backward includes the recomputed forward.

    >>> cfg = GPTConfig(n_layer=1, n_head=1, n_embd=4, block_size=8, vocab_size=8)
    >>> count_flops(cfg, micro_batch_size=1, seq_len=2)
    (960.0, 1920.0)
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with _fake_mode(), sdpa_kernel(SDPBackend.MATH):
        model = GPT(cfg, attention=attention, checkpointing=checkpointing, routing=routing)
        idx = torch.zeros(micro_batch_size, seq_len, dtype=torch.long)
        with FlopCounterMode(display=False) as forward:
            _, loss = model(idx, idx)
        with FlopCounterMode(display=False) as backward:
            assert loss is not None
            loss.backward()
    return float(forward.get_total_flops()), float(backward.get_total_flops())


def _cuda_context_bytes(device: torch.device) -> int | None:
    if not _CUDA_CONTEXT_BYTES:
        initialised = torch.cuda.is_initialized()  # type: ignore[no-untyped-call]
        if initialised and torch.cuda.memory_reserved(device) > 0:
            return None
        torch.cuda.init()  # type: ignore[no-untyped-call]
        free, total = torch.cuda.mem_get_info(device)
        _CUDA_CONTEXT_BYTES.append(int(total - free - torch.cuda.memory_reserved(device)))
    return _CUDA_CONTEXT_BYTES[0]


@contextmanager
def _maybe(ctx: AbstractContextManager[Any] | None) -> Iterator[None]:
    if ctx is None:
        yield
    else:
        with ctx:
            yield


def measure(cfg: GPTConfig, *, micro_batch_size: int, seq_len: int,
            precision: Precision | str = "32-true", attention: AttentionKind = "flash",
            checkpointing: bool = False, device: str = "cpu", fake: bool = False,
            cuda_semantics: bool = False, optimizer: OptimizerImpl = "fused",
            accumulating: bool = False, hold_logits: bool = False,
            seed: int = 0, routing: Routing = "balanced") -> StepMeasurement:
    """Measure one AdamW training step of the reference GPT for ``cfg``.

    Args:
        cfg: The model.
        micro_batch_size: Sequences in the step.
        seq_len: Tokens per sequence (at most ``cfg.block_size``).
        precision: "32-true", "bf16-mixed", "16-mixed" (fp32 params, autocast; no GradScaler),
            "bf16-true" (bf16 params and AdamW states) or "bf16-fp32-master" (bf16 params;
            each bf16 gradient is added into an fp32 gradient on the fp32 master copy as soon as
            it is produced, as Megatron-LM's main_grad does; AdamW updates the masters).
        attention: "flash" (SDPA) or "eager" (explicit softmax).
        checkpointing: Recompute each block in backward.
        device: "cpu" or "cuda" (then ``cuda`` holds the allocator's own figures).
        fake: Run under FakeTensorMode: nothing is allocated, every figure but ``cuda`` is kept.
        cuda_semantics: On CPU, save what CUDA saves (bool dropout masks, no dropout in SDPA).
        optimizer: AdamW implementation: "fused" (nanoGPT's choice on CUDA), "foreach" (torch's
            CUDA default; full-size temporaries) or "for-loop".
        accumulating: Measure the last micro-batch of gradient accumulation: the gradients of
            earlier micro-batches are resident when the step starts (the worst step of a run
            with grad_accum_steps > 1). False: a step whose gradients start as None.
        hold_logits: Keep the logits alive until the optimizer step, as nanoGPT's training loop
            does (``logits, loss = model(X, Y)``); False drops them once the loss is computed.
        seed: Seed for the initial weights and the random batch.
        routing: How a mixture of experts routes its tokens: ``"balanced"`` (each expert takes
            top_k / n_experts of them, deterministic; works with ``fake``) or ``"learned"``
            (the router's top_k; not under ``fake``).

    >>> m = measure(GPTConfig(n_layer=1, n_head=1, n_embd=4, block_size=8, vocab_size=8),
    ...             micro_batch_size=1, seq_len=2)
    >>> m.params, m.resident.params
    (316, 1264)
    """
    precision = normalize_precision(precision)
    if attention not in ("flash", "eager"):
        raise ValueError(f"attention={attention!r} is not a kind; use 'flash' or 'eager'")
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r} is not supported; use 'cpu' or 'cuda'")
    if fake and dev.type != "cpu":
        raise ValueError("fake=True measures CPU semantics only; use device='cpu' (with "
                         "cuda_semantics=True for CUDA's saved tensors)")
    on_cuda = dev.type == "cuda" and not fake
    context = _cuda_context_bytes(dev) if on_cuda else None
    flops_fwd, flops_bwd = count_flops(cfg, micro_batch_size=micro_batch_size, seq_len=seq_len,
                                       attention=attention, checkpointing=checkpointing,
                                       routing=routing)
    torch.manual_seed(seed)
    with _maybe(_fake_mode() if fake else None):
        step = TrainingStep(cfg, micro_batch_size=micro_batch_size, seq_len=seq_len,
                     precision=precision, attention=attention, checkpointing=checkpointing,
                     device=dev, cuda_semantics=cuda_semantics, optimizer=optimizer,
                     hold_logits=hold_logits, routing=routing)
        step.forward().backward()  # type: ignore[no-untyped-call]  # warm-up: creates the optimizer states
        step.update()
        step.zero_grad()
        if accumulating:  # an earlier micro-batch leaves its gradients behind
            step.forward().backward()  # type: ignore[no-untyped-call]
        gc.collect()
        m = _measure_step(step)
    cuda = None
    if on_cuda:
        cuda = CudaMemory(allocated_before_step=m.pop("cuda_before"),
                          max_allocated=torch.cuda.max_memory_allocated(dev),
                          max_reserved=torch.cuda.max_memory_reserved(dev),
                          context_bytes=context)
    m.pop("cuda_before", None)
    notes = _notes(cfg, m, device=dev.type, fake=fake, precision=precision,
                   attention=attention, cuda_semantics=cuda_semantics, hold_logits=hold_logits,
                   routing=routing)
    return StepMeasurement(
        config=cfg, micro_batch_size=micro_batch_size, seq_len=seq_len, precision=precision,
        attention=attention, checkpointing=checkpointing, optimizer=optimizer, device=dev.type,
        fake=fake, cuda_semantics=cuda_semantics, accumulating=accumulating,
        hold_logits=hold_logits, routing=routing, notes=notes,
        params=sum(p.numel() for p in step.model.parameters()),
        flops=flops_fwd + flops_bwd, flops_forward=flops_fwd, flops_backward=flops_bwd,
        cuda=cuda, **m)


def _measure_step(step: TrainingStep) -> dict[str, Any]:
    tracker = LiveBytesTracker()
    resident = {name: tracker.add_resident(ts) for name, ts in step.resident_groups().items()}
    recorder = SavedTensorsRecorder(param_keys={storage_key(p) for p in step.params})
    kernels: list[str] = []

    def on_new(func: str, args: tuple[Any, ...], out: torch.Tensor) -> None:
        if "scaled_dot_product" in func and not kernels:
            kernels.append(func.removeprefix("aten.").split(".")[0])
        recorder.note_new_storage(func, args, out)

    tracker.on_new_storage = on_new
    cuda_before = 0
    if step.device.type == "cuda" and not _is_fake(step.params[0]):
        torch.cuda.synchronize(step.device)
        torch.cuda.reset_peak_memory_stats(step.device)
        cuda_before = torch.cuda.memory_allocated(step.device)
    with tracker:
        tracker.set_phase("forward")
        with recorder.recording(step.model):
            loss = step.forward()
        live_after_forward = tracker.current
        tracker.on_new_storage = None
        tracker.set_phase("backward")
        loss.backward()  # type: ignore[no-untyped-call]
        del loss
        tracker.set_phase("optimizer")
        step.update()
        tracker.set_phase("zero_grad")
        step.zero_grad()
    by_module, by_dtype, casts = recorder.totals()
    masks = {dtype for key, (mod, _, dtype) in recorder.by_storage.items()
             if mod.rsplit(".", 1)[-1] in _DROPOUT_MODULES and key not in recorder.cast_keys}
    return {
        "saved_for_backward": sum(by_module.values()), "saved_by_module": by_module,
        "saved_by_dtype": by_dtype, "autocast_weight_copies": casts,
        "resident": ResidentState(**resident, total=sum(resident.values())),
        "live_after_forward": live_after_forward, "peak_bytes": tracker.peak,
        "peak_phase": tracker.peak_phase,
        "phase_peaks": {k: v for k, v in tracker.phase_peaks.items() if k != "start"},
        "sdpa_kernel": (kernels[0] if kernels else "math (composite)")
        if step.model.attention == "flash" else None,
        "dropout_mask_dtype": ",".join(sorted(masks)) or None, "cuda_before": cuda_before,
    }


def _is_fake(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor)


def _notes(cfg: GPTConfig, m: dict[str, Any], *, device: str, fake: bool, precision: str,
           attention: str, cuda_semantics: bool, hold_logits: bool,
           routing: str = "balanced") -> tuple[str, ...]:
    notes = [f"{device} kernels" + (" under FakeTensorMode (nothing allocated)" if fake else "")
             + ("; cuda_semantics: bool dropout masks, no dropout inside SDPA"
                if cuda_semantics else "")]
    if m["sdpa_kernel"]:
        notes.append(f"SDPA ran {m['sdpa_kernel']}")
        if "math" in m["sdpa_kernel"] and device == "cpu":
            notes.append("math SDPA kernel keeps s x s tensors (CPU falls back to it when "
                         "dropout > 0)" + (
                             "; under CPU autocast it computes and saves in fp32"
                             if precision in AUTOCAST_DTYPES else ""))
    if m["dropout_mask_dtype"]:
        notes.append(f"dropout masks saved as {m['dropout_mask_dtype']}"
                     + ("" if cuda_semantics or device == "cuda"
                        else " (CPU nn.Dropout: a mask in the input dtype; CUDA saves bool)"))
    if precision == "16-mixed":
        notes.append("16-mixed measured without a GradScaler")
    if hold_logits:
        notes.append("logits held through backward and the optimizer step (nanoGPT's loop)")
    else:
        notes.append("logits dropped after the loss (a loop that keeps them, like nanoGPT's, "
                     "holds b*s*V more elements through backward)")
    if cfg.moe is not None:
        notes.append("MoE routed " + ("in turn: each expert took top_k / n_experts of the tokens"
                                      if routing == "balanced" else "by the router's top_k"))
    del attention
    return tuple(notes)


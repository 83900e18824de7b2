"""Whole training steps of ``torch.compile``'d models, measured by the CPU allocator's events.

`scaleplan.reference.tracking.LiveBytesTracker` counts the storages that aten operators
return, through a ``TorchDispatchMode``; inductor's generated code allocates its buffers
(``empty_strided_cpu``) and frees them (``del buf``) outside any dispatch mode, so that
tracker cannot see a compiled step. The torch profiler sees every allocation of the CPU
allocator: with ``profile_memory=True`` it records one ``[memory]`` event per allocation
(+bytes) and per free (-bytes), in order (nanosecond timestamps, monotonic), whoever asked
for the memory. A running sum of those events from the step's start is the bytes allocated
since then, and its maximum the step's peak above what was live before it (parameters,
gradients, optimizer states, the batch), kernel workspaces set apart:
`scaleplan.reference.allocator_trace.AllocatorTrace`. A free of a storage allocated
before profiling started carries no size and is left out (the profiler warns), so the step
must not free anything older than itself; `measure_step` drops the previous step's logits
before it starts.

Phases are bracketed with ``torch.profiler.record_function`` ranges (forward, backward,
optimizer, zero_grad): each phase's peak is the running sum's maximum over the events inside
its range, and each phase's start the bytes live when it began (the forward's end for the
backward).

`measure_step` runs one step of the reference GPT (`warmed_step`: a
`scaleplan.reference.step.TrainingStep` compiled as nanoGPT compiles it, ``torch.compile(model)``,
inductor, ``dynamic=False``, or eager) or of a transformers model (`warmed_hf_step`), after
warm-up steps (compilation, AdamW's states), with gradients resident from an earlier
micro-batch (``accumulating``) or not. ``check_against_tracker`` runs an eager step
under both instruments at once, the method's validation.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Callable
from typing import Any

import torch

from scaleplan.model.config import GPTConfig
from scaleplan.reference.allocator_trace import AllocatorTrace
from scaleplan.reference.step import TrainingStep

__all__ = ["PHASES", "AllocatorTrace", "ModelStep", "check_against_tracker", "measure_step",
           "resident_bytes", "warmed_hf_step", "warmed_step", "warmed_tune_step"]

PHASES = ("forward", "backward", "optimizer", "zero_grad")


def resident_bytes(step: Any) -> dict[str, int]:
    """Bytes of each resident group of ``step`` (storages once each)."""
    from scaleplan.reference.tracking import storage_key

    seen: set[int] = set()
    out: dict[str, int] = {}
    for name, tensors in step.resident_groups().items():
        total = 0
        for t in tensors:
            key = storage_key(t)
            if key not in seen:
                seen.add(key)
                total += int(t.untyped_storage().nbytes())
        out[name] = total
    return out


def _run_step(step: Any, trace: AllocatorTrace, explain: bool = False) -> None:
    """One step, each phase in its range; with ``explain`` the saved tensors (of a step
    without checkpointing: unpacking a checkpoint's would rerun it), the held logits and
    the new gradients are named for `AllocatorTrace.at_peak`."""
    with trace.phase("forward"):
        loss = step.forward()
    if explain:
        trace.label("forward_end", _saved_names(loss, step))
    with trace.phase("backward"):
        loss.backward()
        del loss
    if explain:
        trace.label("backward_end", {f"grad {n}": q.grad for n, q in _named_parameters(step)
                                     if q.grad is not None})
    with trace.phase("optimizer"):
        step.update()
    with trace.phase("zero_grad"):
        step.zero_grad()


def _named_parameters(step: Any) -> list[tuple[str, torch.Tensor]]:
    model = getattr(step.model, "_orig_mod", step.model)
    return list(model.named_parameters())


def _saved_names(loss: torch.Tensor, step: Any) -> dict[str, torch.Tensor]:
    """The tensors autograd holds after the forward, each named by its node, position,
    shape and dtype; the logits the loop holds."""
    from scaleplan.reference.compiled import saved_by_node

    out: dict[str, torch.Tensor] = {}
    for node, tensors in saved_by_node(loss):
        for i, t in enumerate(tensors):
            kind = type(node).__name__.removesuffix("Backward")
            out[f"saved {kind}[{i}] {tuple(t.shape)} {str(t.dtype)[6:]}"] = t
    if getattr(step, "logits", None) is not None:
        out["held logits"] = step.logits
    return out


def measure_step(step: Any, *, accumulating: bool = False,
                 explain: bool = False) -> dict[str, Any]:
    """Peak bytes of one training step above what was live before it, and each phase's.

    ``step`` (a warmed `TrainingStep` from `warmed_step`, or an `ModelStep`): with
    ``accumulating``, first one forward and backward that leaves every gradient resident;
    then the measured step: forward (nanoGPT's ``logits, loss = model(X, Y)`` holds the logits
    until the step's ``zero_grad`` where the step says so), backward, ``optimizer.step()``,
    ``zero_grad(set_to_none=True)``. ``{"resident": bytes per group when the step began,
    "peak": the most bytes allocated above them at once, kernel workspaces set apart
    (`AllocatorTrace.tensor_peak`), "with_workspaces": counting them, "end": what the step
    leaves, "phase_peaks", "phase_starts": each phase's peak and the bytes live when it
    began}``; with ``explain`` (a step without checkpointing) also "at_peak": each allocation
    live at the peak, "bytes name" (`AllocatorTrace.at_peak`).
    """
    if accumulating:
        step.forward().backward()
        step.logits = None
    gc.collect()
    resident = resident_bytes(step)
    trace = AllocatorTrace()
    with trace.recording():
        _run_step(step, trace, explain)
    out = {"resident": resident, "peak": trace.tensor_peak, "with_workspaces": trace.peak,
           "end": trace.end, "phase_peaks": trace.phase_peaks,
           "phase_starts": trace.phase_starts}
    if explain:
        out["at_peak"] = [f"{n} {name}" for n, name in trace.at_peak]
    return out


def warmed_step(cfg: GPTConfig, *, micro_batch_size: int, seq_len: int, precision: str,
                compile: bool, optimizer: str = "fused", hold_logits: bool = True,
                cuda_semantics: bool = True, seed: int = 0) -> TrainingStep:
    """A `TrainingStep`, compiled or not, after two full steps (compiled, states made)."""
    torch.manual_seed(seed)
    step = TrainingStep(cfg, micro_batch_size=micro_batch_size, seq_len=seq_len,
                        precision=precision, attention="flash", checkpointing=False,
                        device=torch.device("cpu"), cuda_semantics=cuda_semantics,
                        optimizer=optimizer, hold_logits=hold_logits)  # type: ignore[arg-type]
    with warnings.catch_warnings():
        # inductor's first import runs torch.jit.script_method, deprecated in torch 2.13
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        if compile:
            torch._dynamo.reset()
            step.model = torch.compile(step.model, dynamic=False)  # type: ignore[assignment]
        for _ in range(2):
            step.forward().backward()  # type: ignore[no-untyped-call]
            step.update()
            step.zero_grad()
    return step


def check_against_tracker(cfg: GPTConfig, *, micro_batch_size: int, seq_len: int,
                          precision: str, accumulating: bool = True) -> dict[str, int]:
    """One eager step measured by both instruments at once: the allocator trace's peak above
    the step's start, and `LiveBytesTracker`'s (peak less the resident bytes it registered)."""
    from scaleplan.reference.tracking import LiveBytesTracker

    step = warmed_step(cfg, micro_batch_size=micro_batch_size, seq_len=seq_len,
                       precision=precision, compile=False)
    if accumulating:
        step.forward().backward()  # type: ignore[no-untyped-call]
        step.logits = None
    gc.collect()
    tracker = LiveBytesTracker()
    resident = sum(tracker.add_resident(ts) for ts in step.resident_groups().values())
    trace = AllocatorTrace()
    with trace.recording(), tracker:
        _run_step(step, trace)
    return {"profiler": trace.tensor_peak, "with_workspaces": trace.peak,
            "tracker": tracker.peak - resident}


class ModelStep:
    """One training step of another library's model: ``forward()`` returns the loss (the
    model's or the recipe's), fused AdamW on the trainable parameters; ``extra`` (the batch)
    counts as resident. `TrainingStep`'s interface, the logits never held."""

    def __init__(self, model: Any, forward: Callable[[], torch.Tensor],
                 extra: list[torch.Tensor]) -> None:
        self.model = model
        self.forward = forward
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=1e-4, fused=True)
        self.extra = extra
        self.logits: Any = None

    def update(self) -> None:
        self.opt.step()

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    def resident_groups(self) -> dict[str, list[torch.Tensor]]:
        grads = [p.grad for p in self.params if p.grad is not None]
        states = [v for s in self.opt.state.values() for v in s.values()
                  if isinstance(v, torch.Tensor)]
        return {"params": list(self.model.parameters()), "grads": grads,
                "optimizer_states": states, "other": [*self.model.buffers(), *self.extra]}


def _warm(step: ModelStep) -> ModelStep:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dynamo's and inductor's own, not about memory
        for _ in range(2):
            step.forward().backward()  # type: ignore[no-untyped-call]
            step.update()
            step.zero_grad()
    return step


def warmed_hf_step(cfg: GPTConfig, family: str, *, micro_batch_size: int, seq_len: int,
                   precision: str, compile: bool = True, seed: int = 0) -> ModelStep:
    """transformers' ``family`` causal LM (SDPA) with its own loss
    (``model(input_ids=ids, labels=ids).loss``, the logits dropped as Trainer drops them),
    bf16 autocast for ``"bf16-mixed"``, compiled whole (``torch.compile(model)``) or not,
    after two full steps."""
    from scaleplan.reference.hf_measure import build_hf_model

    torch.manual_seed(seed)
    torch._dynamo.reset()
    model = build_hf_model(cfg, family, "sdpa")  # type: ignore[arg-type]
    model.train()
    ids = torch.randint(0, cfg.vocab_size, (micro_batch_size, seq_len))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        run = torch.compile(model, dynamic=False) if compile else model

    def forward() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            loss: torch.Tensor = run(input_ids=ids, labels=ids, use_cache=False).loss
        return loss

    return _warm(ModelStep(model, forward, [ids]))


def warmed_tune_step(cfg: GPTConfig, family: str, *, micro_batch_size: int, seq_len: int,
                     precision: str = "bf16-true", loss: str = "chunked",
                     checkpointing: bool = True, compile: bool = True,
                     seed: int = 0) -> ModelStep:
    """torchtune's ``family`` model as full_finetune_single_device sets it up (torchtune
    0.6.1): each layer compiled (``training.compile_model``) before the activation
    checkpointing wraps it, the recipe's loss (``"chunked"``: ``CEWithChunkedOutputLoss``,
    compiled by ``training.compile_loss``) and ``loss_step``, after two full steps."""
    import importlib

    from scaleplan.reference.tune_measure import build_tune, loss_step, tune_batch, tune_loss_fn

    torch.manual_seed(seed)
    torch._dynamo.reset()
    model = build_tune(cfg, family, precision)  # type: ignore[arg-type]
    model.train()
    training = importlib.import_module("torchtune.training")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if compile:
            training.compile_model(model, verbose=False)
        if checkpointing:
            layer = importlib.import_module("torchtune.modules").TransformerSelfAttentionLayer
            training.set_activation_checkpointing(model, auto_wrap_policy={layer})
        loss_fn = tune_loss_fn(model, loss)
        if compile:
            training.compile_loss(loss_fn, verbose=False)
    batch = tune_batch(cfg, micro_batch_size, seq_len, False)

    def forward() -> torch.Tensor:
        out: torch.Tensor = loss_step(model, loss_fn, dict(batch))
        return out

    return _warm(ModelStep(model, forward, list(batch.values())))

"""What a ``torch.compile``'d reference GPT saves for backward, measured on CPU.

`measure_compiled` compiles `scaleplan.reference.model.GPT` with inductor (``mode=None``,
``dynamic=False``), wrapping inductor's inner compiler only to read the partitioned graphs: the
backward graph's placeholders other than ``tangents_*`` are the values AOT autograd's min-cut
partitioner decided to save, and the forward graph's nodes of the same names carry the module
that produced them (``nn_module_stack``). One forward then runs for real and the tensors the
compiled function saved (``CompiledFunctionBackward.saved_tensors``, plus anything eager nodes
outside the compiled graph save) are counted as in `scaleplan.reference.measure`: once per
storage, whole, parameters excluded, autocast's low-precision weight copies set apart (a saved
16-bit tensor equal to a parameter's cast, or to its transpose).

Values created by the partition itself (the norms' reciprocal std, the loss's max and
log-sum-exp, the weights' transposes) carry no module: ``"unattributed"``. Per-block bytes are
exact by difference: measure ``n_layer = L`` and ``L + 1`` (`block_bytes_by_difference`).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from scaleplan.model.config import GPTConfig, Precision, normalize_precision
from scaleplan.reference.model import AttentionKind
from scaleplan.reference.step import AUTOCAST_DTYPES, TrainingStep
from scaleplan.reference.tracking import storage_key

__all__ = ["CompiledMeasurement", "SavedValue", "block_bytes_by_difference",
           "is_weight_copy", "measure_compiled", "saved_by_node"]


class SavedValue(BaseModel):
    """One storage the compiled forward saved for backward (the first value saved in it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="The partitioned graph's node name ('' outside the graph).")
    module: str = Field(description="Innermost module that produced it, or 'unattributed'.")
    shape: tuple[int, ...]
    dtype: str
    nbytes: int = Field(description="Bytes of the whole storage.")
    weight_copy: bool = Field(description="A low-precision copy of a parameter (autocast).")


class CompiledMeasurement(BaseModel):
    """Saved-for-backward bytes of one compiled training forward (CPU, inductor)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    config: GPTConfig
    micro_batch_size: int
    seq_len: int
    precision: Precision
    attention: AttentionKind
    checkpointing: bool
    cuda_semantics: bool
    saved_for_backward: int = Field(
        description="Unique storages saved, parameters and autocast weight copies excluded.")
    autocast_weight_copies: int
    saved_by_module: dict[str, int]
    saved_by_dtype: dict[str, int]
    logits_saved: bool = Field(
        description="The returned logits share their storage with a saved tensor, so a loop "
        "that holds them (nanoGPT's) adds nothing.")
    saved: tuple[SavedValue, ...]


def _graph_names(gm: Any) -> list[tuple[str, bool]]:
    """(name, is a tensor) of a backward graph's saved-value placeholders, in order."""
    return [(n.name, isinstance(n.meta.get("val"), torch.Tensor)) for n in gm.graph.nodes
            if n.op == "placeholder" and not n.name.startswith("tangents")]


def _modules(gm: Any) -> dict[str, str]:
    """Node name -> innermost module path (``transformer.h.0.attn``) of a forward graph."""
    out: dict[str, str] = {}
    for n in gm.graph.nodes:
        stack = n.meta.get("nn_module_stack")
        if stack:
            path = str(list(stack.values())[-1][0])
            out[n.name] = path.removeprefix("L['self'].").removeprefix("L['self']")
    return out


class _Capture:
    """An inductor backend that keeps the partitioned forward and backward graphs."""

    def __init__(self) -> None:
        self.forward: list[Any] = []
        self.backward: list[Any] = []

    def __call__(self, gm: Any, example_inputs: Any) -> Any:
        from torch._inductor.compile_fx import compile_fx, compile_fx_inner

        def inner(graph: Any, inputs: Any, **kwargs: Any) -> Any:
            (self.backward if kwargs.get("is_backward") else self.forward).append(graph)
            return compile_fx_inner(graph, inputs, **kwargs)

        return compile_fx(gm, example_inputs, inner_compile=inner)


def saved_by_node(loss: torch.Tensor, *, unpack_eager: bool = True
                  ) -> list[tuple[Any, list[torch.Tensor]]]:
    """(autograd node, tensors it saved) for every node behind ``loss``: a compiled function's
    ``saved_tensors`` and an eager node's ``_saved_*`` attributes (none with ``unpack_eager``
    False: an eager node inside a checkpoint would rerun its layer when unpacked)."""
    found: list[tuple[Any, list[torch.Tensor]]] = []
    stack: list[Any] = [loss.grad_fn]
    visited: set[int] = set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in visited:
            continue
        visited.add(id(node))
        tensors: list[torch.Tensor] = []
        if "CompiledFunction" in type(node).__name__:
            tensors = list(node.saved_tensors)
        for attr in dir(node) if unpack_eager else ():
            if attr.startswith("_saved_"):
                value = getattr(node, attr)
                values = value if isinstance(value, list | tuple) else [value]
                tensors += [v for v in values if isinstance(v, torch.Tensor)]
        found.append((node, tensors))
        stack += [f for f, _ in node.next_functions]
    return found


def is_weight_copy(t: torch.Tensor, params: list[torch.Tensor]) -> bool:
    """A 16-bit 2-d tensor equal to a parameter's cast (or its transpose): autocast's copy."""
    if t.dtype not in (torch.bfloat16, torch.float16) or t.dim() != 2:
        return False
    for p in params:
        if p.dtype == t.dtype or p.dim() != 2:
            continue
        for view in (t, t.t()):
            if view.shape == p.shape and torch.equal(view, p.detach().to(t.dtype)):
                return True
    return False


def measure_compiled(cfg: GPTConfig, *, micro_batch_size: int, seq_len: int,
                     precision: Precision | str = "32-true", attention: AttentionKind = "flash",
                     checkpointing: bool = False, cuda_semantics: bool = True,
                     seed: int = 0) -> CompiledMeasurement:
    """Compile the reference GPT with inductor and measure what one forward saves.

    Args mirror `scaleplan.reference.measure.measure`; ``cuda_semantics=True`` (the default
    here) makes the CPU run keep what CUDA keeps (bool dropout masks, no dropout inside SDPA),
    the semantics of compiled nanoGPT on a GPU.
    """
    precision = normalize_precision(precision)
    torch._dynamo.reset()
    torch.manual_seed(seed)
    step = TrainingStep(cfg, micro_batch_size=micro_batch_size, seq_len=seq_len,
                        precision=precision, attention=attention, checkpointing=checkpointing,
                        device=torch.device("cpu"), cuda_semantics=cuda_semantics,
                        optimizer="for-loop", hold_logits=True)
    capture = _Capture()
    eager = step.model
    step.model = torch.compile(eager, backend=capture, dynamic=False)  # type: ignore[assignment]
    # a cache hit would skip the compiler that reads the partition
    with torch._inductor.config.patch(fx_graph_cache=False), \
            torch._functorch.config.patch(enable_autograd_cache=False), \
            warnings.catch_warnings():
        # inductor's first import runs torch.jit.script_method, deprecated in torch 2.13
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.")
        loss = step.forward()
        nodes = saved_by_node(loss)  # references kept: backward frees the saved tensors
        logits = step.logits
        logit_key = storage_key(logits) if logits is not None else None
        logits_saved = any(storage_key(t) == logit_key for _, ts in nodes for t in ts)
        loss.backward()  # type: ignore[no-untyped-call]  # inductor compiles backward lazily
    measured = _count(nodes, capture, step.params, precision in AUTOCAST_DTYPES)
    step.model = eager
    torch._dynamo.reset()
    return CompiledMeasurement(
        config=cfg, micro_batch_size=micro_batch_size, seq_len=seq_len, precision=precision,
        attention=attention, checkpointing=checkpointing, cuda_semantics=cuda_semantics,
        logits_saved=logits_saved, **measured)


def _count(nodes: list[tuple[Any, list[torch.Tensor]]], capture: _Capture,
           params: list[torch.Tensor], autocast: bool) -> dict[str, Any]:
    saved = _values(nodes, capture, params, autocast)
    by_module: dict[str, int] = {}
    by_dtype: dict[str, int] = {}
    for v in saved:
        if not v.weight_copy:
            by_module[v.module] = by_module.get(v.module, 0) + v.nbytes
            by_dtype[v.dtype] = by_dtype.get(v.dtype, 0) + v.nbytes
    return {"saved_for_backward": sum(by_module.values()),
            "autocast_weight_copies": sum(v.nbytes for v in saved if v.weight_copy),
            "saved_by_module": by_module, "saved_by_dtype": by_dtype, "saved": tuple(saved)}


def _values(nodes: list[tuple[Any, list[torch.Tensor]]], capture: _Capture,
            params: list[torch.Tensor], autocast: bool) -> list[SavedValue]:
    """One `SavedValue` per storage saved, parameters excluded, named from the partition."""
    param_keys = {storage_key(p) for p in params}
    names = [n for n, is_tensor in _graph_names(capture.backward[-1]) if is_tensor] \
        if capture.backward else []
    modules = _modules(capture.forward[-1]) if capture.forward else {}
    seen: set[int] = set()
    saved: list[SavedValue] = []
    for node, tensors in nodes:
        compiled = "CompiledFunction" in type(node).__name__
        for i, t in enumerate(tensors):
            key = storage_key(t)
            if key in seen or key in param_keys:
                continue
            seen.add(key)
            name = names[i] if compiled and i < len(names) else ""
            saved.append(SavedValue(
                name=name, module=modules.get(name, "unattributed"), shape=tuple(t.shape),
                dtype=str(t.dtype).removeprefix("torch."), nbytes=t.untyped_storage().nbytes(),
                weight_copy=autocast and is_weight_copy(t, params)))
    return saved


def block_bytes_by_difference(cfg: GPTConfig, **kwargs: Any) -> tuple[int, int]:
    """(bytes one block saves, bytes the embedding + head save) of a compiled model, from
    `measure_compiled` at ``cfg.n_layer`` and ``cfg.n_layer + 1`` layers: the second minus
    the first is one block, exactly, whatever the partitioner attributes to whom."""
    small = measure_compiled(cfg, **kwargs).saved_for_backward
    large = measure_compiled(GPTConfig(**{**cfg.model_dump(), "n_layer": cfg.n_layer + 1}),
                             **kwargs).saved_for_backward
    block = large - small
    return block, small - cfg.n_layer * block

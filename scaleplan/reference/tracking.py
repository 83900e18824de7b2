"""Instruments: live tensor bytes over time, and the tensors autograd saves for backward.

Both identify memory by *storage*, not by tensor: a view, a transpose or an in-place update adds
no bytes, and a storage counts whole (``untyped_storage().nbytes()``) as long as any tensor uses
it. They hold no reference to the tensors they see, so they do not change what is alive. They
work on real CPU or CUDA tensors and on ``FakeTensorMode`` tensors alike (storages are tracked by
their C++ handle and freed through a weak reference to their Python object, which torch keeps
unique per storage). A wrapper tensor subclass (the functional collectives'
``AsyncCollectiveTensor``, ``DTensor``) is counted by the plain tensors it wraps
(`plain_tensors`): its own storage allocates nothing.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode, is_traceable_wrapper_subclass
from torch.utils._pytree import tree_leaves

__all__ = ["LiveBytesTracker", "SavedTensorsRecorder", "add_checkpoint_held", "plain_tensors",
           "storage_key"]


def storage_key(t: torch.Tensor) -> int:
    """An id of the storage behind ``t``, the same for every view of it while it is alive.

    >>> t = torch.zeros(4, 4)
    >>> storage_key(t.T) == storage_key(t[1:])
    True
    """
    return int(t.untyped_storage()._cdata)


def plain_tensors(t: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors whose storages hold ``t``'s data: ``t`` itself, or for a wrapper tensor
    subclass the tensors it wraps, recursively. A wrapper's own storage reports the wrapped
    size but allocates nothing (its data pointer cannot be read): counted as well, a gathered
    activation kept as a view of a functional collective's ``AsyncCollectiveTensor`` output
    counted its bytes three times.

    >>> t = torch.zeros(2)
    >>> plain_tensors(t)[0] is t
    True
    """
    if not is_traceable_wrapper_subclass(t):
        return [t]
    attrs, _ = t.__tensor_flatten__()
    inner = (getattr(t, a) for a in attrs)
    return [p for x in inner if isinstance(x, torch.Tensor) for p in plain_tensors(x)]


def _storage_bytes(t: torch.Tensor) -> int:
    return int(t.untyped_storage().nbytes())


class LiveBytesTracker(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Counts the bytes of live storages; the running maximum is the peak.

    Every storage that an operator returns is registered when first seen and unregistered when
    freed. Storages that exist before tracking starts (parameters, optimizer states) are
    registered with `add_resident`. ``phase`` labels the current stage so that the peak of each
    stage is known. Memory that a kernel uses internally and never returns (workspaces) and the
    allocator's rounding are not seen.

    >>> tracker = LiveBytesTracker()
    >>> with tracker:
    ...     x = torch.ones(256)  # 1 KiB
    ...     y = (x * 2).sum()  # x * 2 (1 KiB) lives until the sum (4 B) is taken
    >>> tracker.peak, tracker.current
    (2052, 1028)
    """

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.live: dict[int, int] = {}
        self._refs: dict[int, weakref.ref[Any]] = {}
        self.current = 0
        self.peak = 0
        self.phase = "start"
        self.peak_phase = "start"
        self.phase_peaks: dict[str, int] = {}
        self.on_new_storage: Callable[[str, tuple[Any, ...], Any], None] | None = None

    def set_phase(self, phase: str) -> None:
        """Start a new stage; its peak starts at the bytes live now."""
        self.phase = phase
        self.phase_peaks[phase] = max(self.phase_peaks.get(phase, 0), self.current)

    def add_resident(self, tensors: Iterable[torch.Tensor]) -> int:
        """Register tensors that already exist; returns the bytes newly registered."""
        before = self.current
        for t in tensors:
            for plain in plain_tensors(t):
                self._register(plain)
        return self.current - before

    def _register(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = int(storage._cdata)
        if key in self.live:
            return
        nbytes = int(storage.nbytes())
        self.live[key] = nbytes
        self._refs[key] = weakref.ref(storage, self._freer(key))
        self.current += nbytes
        if self.current > self.peak:
            self.peak, self.peak_phase = self.current, self.phase
        if self.current > self.phase_peaks.get(self.phase, 0):
            self.phase_peaks[self.phase] = self.current

    def _freer(self, key: int) -> Callable[[Any], None]:
        def on_free(_ref: Any) -> None:
            self._free(key)

        return on_free

    def _free(self, key: int) -> None:
        nbytes = self.live.pop(key, 0)
        self._refs.pop(key, None)
        self.current -= nbytes

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if not isinstance(leaf, torch.Tensor):
                continue
            for t in plain_tensors(leaf):
                if self.on_new_storage is not None and storage_key(t) not in self.live:
                    self.on_new_storage(str(func), args, t)
                self._register(t)
        return out


@dataclass
class SavedTensorsRecorder:
    """Records, by storage, what autograd saves for backward and which module saved it.

    Use `recording` around the forward pass: tensors packed by autograd are attributed to the
    innermost module whose forward is running ("loss" outside any submodule, i.e. the
    cross-entropy in the model's own forward), deduplicated by storage (the first module to save
    a storage gets it), parameters excluded (``param_keys``), low-precision copies of parameters
    (autocast's casts, ``cast_keys``) set apart.

    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU())
    >>> rec = SavedTensorsRecorder(param_keys={storage_key(p) for p in model.parameters()})
    >>> with rec.recording(model):
    ...     _ = model(torch.ones(3, 4))
    >>> rec.totals()  # the linear's input 3x4 and the GELU's input 3x8, fp32
    ({'0': 48, '1': 96}, {'float32': 144}, 0)
    """

    param_keys: set[int]
    cast_keys: set[int] = field(default_factory=set)
    by_storage: dict[int, tuple[str, int, str]] = field(default_factory=dict)
    _stack: list[str] = field(default_factory=list)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        for plain in plain_tensors(t):
            key = storage_key(plain)
            if key not in self.by_storage and key not in self.param_keys:
                module = self._stack[-1] if self._stack else "loss"
                self.by_storage[key] = (module, _storage_bytes(plain),
                                        str(plain.dtype).replace("torch.", ""))
        return t

    def note_new_storage(self, func: str, args: tuple[Any, ...], out: torch.Tensor) -> None:
        """`LiveBytesTracker.on_new_storage` callback: remember casts of parameters. A new
        storage at the address of a freed cast is not that cast: its key is forgotten first
        (an activation allocated where a bias's cast had been was counted as a weight copy)."""
        self.cast_keys.discard(storage_key(out))
        if (func.startswith("aten._to_copy") and args and isinstance(args[0], torch.Tensor)
                and storage_key(args[0]) in self.param_keys):
            self.cast_keys.add(storage_key(out))

    def _enter(self, name: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            self._stack.append(name)

        return hook

    def _exit(self, *_: Any) -> None:
        self._stack.pop()  # a hook that returned a value would replace the module's output

    @contextmanager
    def recording(self, model: nn.Module) -> Iterator[None]:
        """Attribute saved tensors to ``model``'s submodules while the block runs."""
        handles = []
        for name, module in model.named_modules():
            if not name:
                continue  # the top-level module's own saves are the loss's
            handles.append(module.register_forward_pre_hook(self._enter(name)))
            handles.append(module.register_forward_hook(self._exit))
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
                yield
        finally:
            for handle in handles:
                handle.remove()

    def totals(self) -> tuple[dict[str, int], dict[str, int], int]:
        """(bytes per module, bytes per dtype, autocast weight-copy bytes), copies excluded."""
        by_module: dict[str, int] = {}
        by_dtype: dict[str, int] = {}
        casts = 0
        for key, (module, nbytes, dtype) in self.by_storage.items():
            if key in self.cast_keys:
                casts += nbytes
                continue
            by_module[module] = by_module.get(module, 0) + nbytes
            by_dtype[dtype] = by_dtype.get(dtype, 0) + nbytes
        return by_module, by_dtype, casts


def add_checkpoint_held(by_module: dict[str, int], tracker: LiveBytesTracker,
                        recorder: SavedTensorsRecorder, kept: set[int], out: Any) -> None:
    """Add to ``by_module["checkpoint"]`` the storages ``tracker`` still holds after a forward
    that neither ``kept`` (parameters, buffers, the batch), ``recorder``'s saved tensors or
    autocast casts, nor the output ``out`` account for: what activation checkpointing keeps
    itself (its inputs and RNG state)."""
    held = sum(n for k, n in tracker.live.items()
               if k not in kept and k not in recorder.by_storage and k not in recorder.cast_keys
               and k != storage_key(out))
    if held:
        by_module["checkpoint"] = by_module.get("checkpoint", 0) + held

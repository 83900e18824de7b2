"""torchtune's ``OffloadActivations`` (torchtune 0.6.1, training/_activation_offloading.py), its
memory semantics emulated on CPU for `scaleplan.reference.switches`.

With its defaults (``use_streams=True``, ``max_fwd_stash_size=5``, ``min_offload_size=1024``): a
saved tensor of at least 1024 bytes (``element_size() * nelement()``) that is not an
``nn.Parameter`` or ``nn.Buffer`` is copied to host memory; the offloaded tensors among the 5 most
recent saves stay on the device (the forward stash, emptied by the first backward node); in
backward a tensor comes back when its node runs and is dropped once the next node runs. The
output layer runs under ``NoOpManager`` (its saves stay on the device), as
``get_act_offloading_ctx_manager`` arranges. Host copies are made outside any dispatch mode, so
`scaleplan.reference.tracking.LiveBytesTracker` counts device memory only. Not torchtune's code:
its class needs CUDA streams; this one keeps the same rules on CPU tensors.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from scaleplan.reference.tracking import SavedTensorsRecorder

__all__ = ["OFFLOAD_MIN_BYTES", "OFFLOAD_STASH", "Offloader", "offloading"]

OFFLOAD_MIN_BYTES = 1024  # torchtune OffloadActivations(min_offload_size=1024)
OFFLOAD_STASH = 5  # torchtune OffloadActivations(max_fwd_stash_size=5)


class Offloader:
    """torchtune's ``OffloadActivations`` (use_streams=True) memory semantics, on CPU."""

    def __init__(self, recorder: SavedTensorsRecorder) -> None:
        self.recorder = recorder
        self.tracker: dict[int, tuple[torch.Tensor, bool]] = {}
        self.fwd_stash: dict[int, torch.Tensor] = {}
        self.bwd_stash: dict[int, torch.Tensor] = {}
        self.next_id = 0
        self.offloaded = 0
        self.node: Any = None
        self.noop = False
        self.kept: set[int] = set()
        self.saved: list[tuple[int, int]] = []  # (storage handle, bytes) in order saved
        self.open: dict[int, int] = {}  # handles of saved storages still alive
        self.refs: list[weakref.ref[Any]] = []

    def pack(self, t: torch.Tensor) -> int:
        self.next_id += 1
        tid = self.next_id
        big = t.element_size() * t.nelement() >= OFFLOAD_MIN_BYTES
        key = self._note(t)
        if self.noop or not big or isinstance(t, nn.Parameter | nn.Buffer):
            self.tracker[tid] = (t, False)
            if key in self.open:
                self.kept.add(self.open[key])
            return tid
        for old in [k for k in self.fwd_stash if k <= tid - OFFLOAD_STASH]:
            del self.fwd_stash[old]
        from torch.utils._python_dispatch import _disable_current_modes

        with _disable_current_modes():  # host memory: not on the device tracker
            host = t.detach().clone()
        self.offloaded += t.element_size() * t.nelement()
        self.tracker[tid] = (host, True)
        self.fwd_stash[tid] = t
        return tid

    def _note(self, t: torch.Tensor) -> int:
        """Count a saved storage once while it lives (a freed storage's handle is reused by a
        later one, which counts again); parameters are not counted."""
        storage = t.untyped_storage()
        key = int(storage._cdata)
        if key in self.recorder.param_keys or key in self.open:
            return key
        self.open[key] = len(self.saved)
        self.saved.append((key, int(storage.nbytes())))
        self.refs.append(weakref.ref(storage, self._closer(key)))
        return key

    def _closer(self, key: int) -> Callable[[Any], None]:
        def close(_ref: Any) -> None:
            self.open.pop(key, None)

        return close

    def unpack(self, tid: int) -> torch.Tensor:
        t, moved = self.tracker.pop(tid)
        if not moved:
            return t
        node = torch._C._current_autograd_node()
        previous: list[int] = []
        if node is not self.node:
            self.node = node
            previous = list(self.bwd_stash)
        if tid in self.fwd_stash:
            back, brought = self.fwd_stash[tid], False
        else:
            back, brought = t.clone(), True  # back on the device: tracked
            self.bwd_stash[tid] = back

        def hook(outputs: Any, inputs: Any) -> Any:
            del inputs
            self.fwd_stash.clear()
            for k in previous:
                self.bwd_stash.pop(k, None)
            return outputs

        del brought
        node.register_hook(hook)
        return back

    def finish(self) -> None:
        """Drop the stashes (the end of a backward)."""
        self.fwd_stash.clear()
        self.bwd_stash.clear()

    def reset(self) -> None:
        """Forget what earlier steps saved and offloaded."""
        self.finish()
        self.saved.clear()
        self.kept.clear()
        self.open.clear()
        self.refs.clear()
        self.offloaded = 0


@contextmanager
def offloading(off: Offloader | None, head: nn.Module) -> Iterator[None]:
    """Run the block under ``off``'s saved-tensor hooks (nothing when None), the output layer
    ``head`` under none (torchtune's ``NoOpManager``)."""
    if off is None:
        yield
        return
    pre = head.register_forward_pre_hook(lambda *_: setattr(off, "noop", True))
    post = head.register_forward_hook(lambda *_: setattr(off, "noop", False))
    try:
        with torch.autograd.graph.saved_tensors_hooks(off.pack, off.unpack):
            yield
    finally:
        pre.remove()
        post.remove()

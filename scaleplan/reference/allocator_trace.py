"""The CPU allocator's profiler events over a stretch of code, read as live bytes.

The torch profiler sees every allocation of the CPU allocator, whoever asks for it (an aten
operator, inductor's generated code, the autograd engine): with ``profile_memory=True`` it
records one ``[memory]`` event per allocation (+bytes) and per free (-bytes), with the
address, in order. A running sum of those events is the bytes allocated since profiling
began, and its maximum the peak above what was live before (`AllocatorTrace`). A free of a
storage allocated before profiling began carries no size and is left out (the profiler
warns), so what is measured must not free anything older than itself.

Streams: an allocation made inside a ``record_function`` range named ``stream:<name>``
belongs to that stream, and its free with it (by address); every other to ``default``
(`AllocatorTrace.stream_peaks`, `AllocatorTrace.streams_at_peak`). On CPU nothing else
tells the streams apart: `scaleplan.reference.titan_fsdp_streams.stream_ranges` opens such a
range wherever FSDP2 enters a stream context of its own (`stream_ranges`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["AllocatorTrace", "stream_ranges"]

# Operators that only allocate: an allocation inside one belongs to the operator around it.
_ALLOCATORS = ("aten::empty", "aten::empty_strided", "aten::empty_like", "aten::zeros",
               "aten::zeros_like", "aten::new_empty", "aten::new_empty_strided",
               "aten::new_zeros", "aten::resize_")


@dataclass
class AllocatorTrace:
    """The CPU allocator's events over a stretch of code, read as live bytes.

    ``peak`` counts every allocation. ``tensor_peak`` leaves out a kernel's workspace: an
    allocation freed (same address) before the innermost aten operator that made it returns
    (oneDNN's packed copies of a bf16 matmul's operands, the CPU flash-attention kernel's
    scratch), which no tensor of the step ever holds and which the dispatch-level
    `scaleplan.reference.tracking.LiveBytesTracker` does not see either; CUDA's kernels keep
    theirs in workspaces allocated once (cuBLAS) or of their own size.

    >>> trace = AllocatorTrace()
    >>> with trace.recording():
    ...     with trace.phase("a"):
    ...         x = torch.ones(256)  # 1 KiB
    ...         y = (x * 2).sum()
    ...         del x
    >>> trace.tensor_peak >= 2048, trace.phase_peaks["a"] == trace.tensor_peak
    (True, True)
    """

    peak: int = 0
    tensor_peak: int = 0
    end: int = 0
    phase_peaks: dict[str, int] = field(default_factory=dict)
    phase_starts: dict[str, int] = field(default_factory=dict)
    labels: dict[str, dict[int, str]] = field(default_factory=dict)
    at_peak: list[tuple[int, str]] = field(default_factory=list)
    stream_peaks: dict[str, int] = field(default_factory=dict)
    streams_at_peak: dict[str, int] = field(default_factory=dict)

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Profile the block, then read its memory events (from the chrome trace, which
        carries each event's address)."""
        import json
        import tempfile
        from pathlib import Path

        from torch.profiler import ProfilerActivity, profile

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                yield
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "trace.json"
            prof.export_chrome_trace(str(path))
            events = json.loads(path.read_text())["traceEvents"]
        self._read(events)

    def phase(self, name: str) -> Any:
        """A ``record_function`` range that names a phase of the step."""
        from torch.profiler import record_function

        return record_function(f"phase:{name}")

    def label(self, mark: str, tensors: dict[str, torch.Tensor]) -> None:
        """Name the storages of ``tensors`` as they are at this point (a ``record_function``
        mark): an allocation live at the peak takes the name if it was live here too."""
        from torch.profiler import record_function

        with record_function(f"mark:{mark}"):
            self.labels[mark] = {int(t.untyped_storage().data_ptr()): name
                                 for name, t in tensors.items()}

    def _read(self, events: list[dict[str, Any]]) -> None:
        memory = sorted((e for e in events if e.get("name") == "[memory]"),
                        key=lambda e: (e["ts"], e["args"].get("Ev Idx", 0)))
        ops = [r for r in _ranges(events, "aten::") if r[2] not in _ALLOCATORS]
        phases = {name: (start, stop) for start, stop, name in _ranges(events, "phase:")}
        marks = {name: start for start, _, name in _ranges(events, "mark:")}
        workspace = _workspaces(memory, ops)
        streams = _Streams(_ranges(events, "stream:"))
        running = tensors = 0
        live: dict[int, tuple[float, int]] = {}
        peak_live: dict[int, tuple[float, int]] = {}
        peak_at = 0.0
        for i, e in enumerate(memory):
            inside = [name for name, (start, stop) in phases.items()
                      if start <= e["ts"] <= stop]
            for name in inside:
                self.phase_starts.setdefault(name, tensors)
            running += int(e["args"]["Bytes"])
            if i not in workspace:
                tensors += int(e["args"]["Bytes"])
                _track(live, e)
                streams.track(e)
            self.peak = max(self.peak, running)
            if tensors > self.tensor_peak:
                self.tensor_peak, peak_live, peak_at = tensors, dict(live), e["ts"]
                self.streams_at_peak = dict(streams.live)
            for name in inside:
                self.phase_peaks[name] = max(self.phase_peaks.get(name, tensors), tensors)
        self.end = running
        self.stream_peaks = dict(streams.peaks)
        if self.labels:
            self.at_peak = _named(peak_live, peak_at, memory, marks, self.labels)


@contextmanager
def stream_ranges(names: Mapping[int, str]) -> Iterator[None]:
    """While open, every ``torch.cpu.stream(s)`` context (the device-agnostic one FSDP2 enters
    on CPU) of a stream whose ``id()`` ``names`` holds also opens a ``stream:<name>``
    ``record_function`` range, so that `AllocatorTrace` puts what is allocated there on it."""
    from torch.profiler import record_function

    original = torch.cpu.stream

    @contextmanager
    def named(stream: Any) -> Iterator[None]:
        with original(stream):
            if id(stream) not in names:
                yield
                return
            with record_function(f"stream:{names[id(stream)]}"):
                yield

    torch.cpu.stream = named
    try:
        yield
    finally:
        torch.cpu.stream = original


def _ranges(events: list[dict[str, Any]], prefix: str) -> list[tuple[float, float, str]]:
    """(start, stop, name less ``prefix``) of the complete events whose names start so."""
    return [(e["ts"], e["ts"] + e.get("dur", 0), str(e["name"]).removeprefix(
        "" if prefix == "aten::" else prefix)) for e in events
        if e.get("ph") == "X" and str(e.get("name", "")).startswith(prefix)]

def _track(live: dict[int, tuple[float, int]], e: dict[str, Any]) -> None:
    """Keep ``live`` (address -> (allocated at, bytes)) up to date with one event."""
    addr, nbytes = e["args"]["Addr"], int(e["args"]["Bytes"])
    if nbytes > 0:
        live[addr] = (e["ts"], nbytes)
    else:
        live.pop(addr, None)


class _Streams:
    """Live bytes and peaks per stream, from the ``stream:`` ranges (module docstring)."""

    def __init__(self, ranges: list[tuple[float, float, str]]) -> None:
        self.ranges = ranges
        self.of: dict[int, str] = {}
        self.live: dict[str, int] = {}
        self.peaks: dict[str, int] = {}

    def track(self, e: dict[str, Any]) -> None:
        """Count one allocation or free on its stream."""
        addr, nbytes, t = e["args"]["Addr"], int(e["args"]["Bytes"]), e["ts"]
        if nbytes > 0:
            around = [(stop - start, name) for start, stop, name in self.ranges
                      if start <= t <= stop]
            self.of[addr] = min(around)[1] if around else "default"
        stream = self.of.pop(addr, "default") if nbytes < 0 else self.of[addr]
        self.live[stream] = self.live.get(stream, 0) + nbytes
        self.peaks[stream] = max(self.peaks.get(stream, 0), self.live[stream])


def _named(live: dict[int, tuple[float, int]], at: float, memory: list[dict[str, Any]],
           marks: dict[str, float], labels: dict[str, dict[int, str]]) -> list[tuple[int, str]]:
    """(bytes, name) of each allocation live at the peak (``at``), largest first; a name
    applies where the allocation was live at its mark too (before the peak: allocated by
    then; after: not freed in between), "?" where none does."""
    out = []
    for addr, (since, nbytes) in live.items():
        name = "?"
        for mark, names in labels.items():
            when = marks.get(mark)
            if when is None or addr not in names:
                continue
            freed = any(e["args"].get("Addr") == addr and int(e["args"]["Bytes"]) < 0
                        and at < e["ts"] < when for e in memory)
            if (when < at and since <= when) or (when > at and not freed):
                name = names[addr]
        out.append((nbytes, name))
    return sorted(out, key=lambda x: -x[0])


def _workspaces(memory: list[dict[str, Any]], ops: list[tuple[float, float, str]]
                ) -> set[int]:
    """Indices of the allocation and free events of kernel workspaces: freed before the
    innermost (shortest) aten operator around the allocation returned."""
    out: set[int] = set()
    open_at: dict[int, tuple[int, tuple[float, float] | None]] = {}
    for i, e in enumerate(memory):
        addr, nbytes, t = e["args"].get("Addr"), int(e["args"]["Bytes"]), e["ts"]
        if nbytes > 0:
            around = [(start, stop) for start, stop, _ in ops if start <= t <= stop]
            inner = min(around, key=lambda r: r[1] - r[0]) if around else None
            open_at[addr] = (i, inner)
        elif addr in open_at:
            j, inner = open_at.pop(addr)
            if inner is not None and inner[0] <= t <= inner[1]:
                out.update((i, j))
    return out

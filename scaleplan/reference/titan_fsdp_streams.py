"""Which CUDA stream each of FSDP2's allocations would come from, measured on CPU.

CUDA's caching allocator gives a freed block back only to the stream that allocated it, so a
step reserves at least the sum of each stream's own peak (`scaleplan.memory.titan_streams`,
which models it; this module measures it).

FSDP2 (torch 2.13 ``torch/distributed/fsdp/_fully_shard/``) allocates on three streams:
the default (compute) stream; its all-gather copy-in stream (``foreach_all_gather``: each
unit's flat bf16 cast of its shards and its all-gather output, during forward and the backward
prefetch); and its reduce-scatter stream (``foreach_reduce``: each unit's fp32 reduce-scatter
output, which becomes its sharded gradients). The same code runs on CPU, where
``torch.cpu.Stream`` objects stand in for CUDA streams and ``torch.cpu.current_stream()``
follows FSDP2's ``with stream(...)`` blocks, so a tracker can name the stream current at each
allocation. `measure_titan_fsdp_streams` does that for torchtitan's FSDP2 step
(`scaleplan.reference.titan_fsdp_step`): each stream's peak over the tracked step and what each
holds at the step's peak. The resident sharded gradients of an accumulating step are placed on
the reduce-scatter stream (the first micro-batch's reduce-scatter output made them). The
resident parameters, optimizer states and batch are the default stream's.

Compiled blocks (torchtitan's per-block compile) allocate inside inductor's code, which no
dispatch mode sees: `measure_titan_compiled_streams` measures those steps with the CPU
allocator's profiler events instead (`scaleplan.reference.titan_compiled_step` with
``streams=True``), each allocation made inside one of FSDP2's stream contexts put on that
stream (`scaleplan.reference.allocator_trace.stream_ranges`).

``python -m scaleplan.reference.titan_fsdp_streams --write`` measures `CASES` and the compiled
steps of `scaleplan.reference.titan_compiled_step.CASES` and writes
``docs/validation/torchtitan-fsdp-streams.json`` (replayed without torch by
tests/test_titan_streams.py against `scaleplan.memory.titan_streams`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from scaleplan.reference.titan_fsdp_step import (
    PeakTracker,
    fsdp_stream_names,
    measure_titan_fsdp_step,
)
from scaleplan.reference.tracking import storage_key

__all__ = ["CASES", "OUT", "StreamTracker", "main", "measure_titan_compiled_streams",
           "measure_titan_fsdp_streams"]

OUT = Path(__file__).resolve().parents[2] / "docs" / "validation" / "torchtitan-fsdp-streams.json"
CASES: tuple[tuple[str, int, str, int, int, bool, str, str], ...] = (
    # (titan_fsdp_step.GRID name, data ranks, checkpointing, micro-batch, tokens, fresh, AdamW,
    # parameter dtype gathered)
    ("gqa-5", 4, "full", 2, 96, True, "foreach", "bf16"),
    ("gqa-5", 8, "selective", 2, 96, True, "foreach", "bf16"),
    ("gqa-3", 2, "none", 2, 96, True, "foreach", "bf16"),
    ("gqa-3", 2, "none", 2, 96, False, "foreach", "bf16"),
    ("gqa-3", 8, "full", 2, 96, False, "foreach", "bf16"),
    ("gqa-3", 4, "none", 2, 96, True, "foreach", "fp32"),
    ("gqa-3", 4, "full", 2, 96, False, "foreach", "fp32"),
    ("wide-vocab-4", 4, "full", 2, 96, True, "foreach", "bf16"),
    ("wide-vocab-4", 2, "selective", 2, 96, False, "foreach", "bf16"),
    ("wide-vocab-4", 8, "none", 1, 32, True, "fused", "bf16"),
    ("wide-vocab-4", 2, "full", 1, 32, True, "fused", "bf16"),
    ("mha-2", 2, "none", 1, 32, True, "fused", "bf16"),
    ("mha-2", 2, "full", 2, 96, False, "foreach", "bf16"),
    ("gqa-3", 1, "full", 2, 96, True, "foreach", "bf16"),
    ("gqa-3", 1, "none", 2, 96, False, "foreach", "bf16"),
    ("wide-vocab-4", 1, "none", 1, 32, True, "fused", "bf16"),
    # the head unit's reduce-scatter as the default stream's worst moment
    ("vocab-12k-2", 2, "none", 1, 16, True, "foreach", "bf16"),
    ("vocab-12k-2", 2, "none", 1, 16, False, "foreach", "bf16"),
    # without accumulation, the worst moment at the head unit's reduce-scatter (8 ranks) and at
    # a block's reduce on one rank: the shards made by then
    ("vocab-12k-2", 8, "none", 1, 16, True, "foreach", "fp32"),
    ("gqa-3", 1, "none", 1, 16, True, "foreach", "bf16"),
)
"""The measured steps: fresh (no accumulation) and accumulating, 1 to 8 ranks."""

class StreamTracker(PeakTracker):  # type: ignore[no-untyped-call]
    """`PeakTracker` that also counts live bytes per stream: the stream current when a storage
    is made (or, for FSDP2's resized unsharded parameters, re-allocated)."""

    def __init__(self) -> None:
        super().__init__()
        self.default = torch.cpu.current_stream()
        self.stream_of: dict[int, Any] = {}
        self.live_on: dict[int, int] = {}  # by id() of the stream
        self.peak_on: dict[int, int] = {}
        self.on_at_peak: dict[int, int] = {}
        self.streams: dict[int, Any] = {id(self.default): self.default}

    def _move(self, key: int, stream: Any, delta: int) -> None:
        self.streams[id(stream)] = stream
        self.stream_of[key] = stream
        n = self.live_on.get(id(stream), 0) + delta
        self.live_on[id(stream)] = n
        self.peak_on[id(stream)] = max(self.peak_on.get(id(stream), 0), n)

    def _register(self, t: torch.Tensor) -> None:
        local = t.to_local() if type(t).__name__ == "DTensor" else t  # type: ignore[attr-defined]
        key = storage_key(local)
        if key not in self.live:
            self._move(key, torch.cpu.current_stream(), int(local.untyped_storage().nbytes()))
        super()._register(t)

    def _free(self, key: int) -> None:
        if key in self.live and key in self.stream_of:
            self._move(key, self.stream_of[key], -self.live[key])
        super()._free(key)

    def resized(self, t: torch.Tensor) -> None:
        key = storage_key(t)
        if key in self.live:
            n = int(t.untyped_storage().nbytes())
            old = self.live[key]
            if old:  # freed (or resized) where it was made
                self._move(key, self.stream_of[key], -old)
            if n:  # (re-)allocated on the stream current now
                self._move(key, torch.cpu.current_stream(), n)
        super().resized(t)

    def _snapshot(self) -> None:
        before = self.best
        super()._snapshot()
        if self.best != before:
            self.on_at_peak = dict(self.live_on)

    def resident_gradients(self, grads: list[torch.Tensor]) -> None:
        """Place the resident sharded gradients on the reduce-scatter stream (named at
        `report`, when FSDP2's streams exist)."""
        self._grads = {storage_key(g) for g in grads}

    def report(self, model: Any) -> dict[str, Any]:
        """Each stream's peak over the tracked step and its live bytes at the step's peak, by
        FSDP2's name for it (``default`` for the compute stream)."""
        names = {id(self.default): "default"} | fsdp_stream_names(model)
        peak = {names[k]: v for k, v in self.peak_on.items()}
        at = {names[k]: v for k, v in self.on_at_peak.items()}
        moved = sum(self.live.get(k, 0) for k in getattr(self, "_grads", []))
        if moved:  # resident all step: it moves both peaks and the bytes at the peak
            for d in (peak, at):
                d["default"] -= moved
                d["reduce_scatter"] = d.get("reduce_scatter", 0) + moved
        return {"stream_peaks": {k: v for k, v in peak.items() if v},
                "streams_at_peak": {k: v for k, v in at.items() if v}}


def measure_titan_fsdp_streams(name: str, data: int, checkpointing: str, b: int, s: int,
                               fresh: bool, optimizer_impl: str,
                               param_dtype: str) -> dict[str, Any]:
    """One `CASES` row: `measure_titan_fsdp_step`'s fields and the per-stream ones."""
    row = measure_titan_fsdp_step(name, data=data, checkpointing=checkpointing,
                                  micro_batch_size=b, seq_len=s, fresh=fresh,
                                  optimizer_impl=optimizer_impl, param_dtype=param_dtype,
                                  tracker_cls=StreamTracker)
    row.pop("at_peak")
    return row | {"fresh": fresh}


def measure_titan_compiled_streams() -> list[dict[str, Any]]:
    """The compiled steps of `scaleplan.reference.titan_compiled_step.CASES`, each stream's
    peak and its bytes at the step's peak above what was live when the step began (the
    resident sharded gradients, on the reduce-scatter stream, in ``resident_gradients``)."""
    from scaleplan.reference.titan_compiled_step import CASES as COMPILED
    from scaleplan.reference.titan_compiled_step import measure_titan_compiled_step

    rows = []
    for name, data, checkpointing, b, s, dtype, compiled, fresh in COMPILED:
        if compiled:
            row = measure_titan_compiled_step(name, data=data, checkpointing=checkpointing,
                                              micro_batch_size=b, seq_len=s, param_dtype=dtype,
                                              fresh=fresh, streams=True)
            rows.append({k: v for k, v in row.items() if k != "at_peak"})
    return rows


def main(argv: list[str] | None = None) -> int:
    """Measure `CASES` and the compiled steps, print one line each; ``--write`` writes
    `OUT`."""
    argv = sys.argv[1:] if argv is None else argv
    rows = [measure_titan_fsdp_streams(*case) for case in CASES]
    compiled = measure_titan_compiled_streams()
    for r in rows + compiled:
        print(r["name"], r["data"], r["checkpointing"], r["fresh"], r["param_dtype"],
              r["stream_peaks"], r["streams_at_peak"])
    if "--write" in argv:
        OUT.write_text(json.dumps({"torch": torch.__version__, "torchtitan": "0.3.0",
                                   "cases": rows, "compiled_cases": compiled}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

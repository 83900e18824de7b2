"""Measure whole training steps of torchtitan's Llama 3 under FSDP2 x TP, on CPU, in one process.

torchtitan 0.3.0's ``parallelize_llama`` (``torchtitan/models/llama3/parallelize.py``) applies
tensor parallelism (``model.parallelize``: the model's own sharding config,
`scaleplan.reference.titan_tp_measure`), then activation checkpointing, then FSDP2 over the
data-parallel mesh (``apply_fsdp_to_decoder``). Its default SPMD backend, ``spmd_types``, hands
FSDP2 plain local shards and a multi-axis mesh (``resolve_fsdp_mesh``), which torch 2.13's
``fully_shard`` refuses ("all parameters must be DTensors on the full SPMD mesh"); its
``partial_dtensor`` backend (DTensor for the model-parallel axes, FSDP2 over the ``fsdp`` mesh,
the composition torchtitan's 2D runs used before ``spmd_types``) runs. `measure_titan_2d_step`
takes that one: torch's fake process group of ``data x tensor`` ranks (this process is rank 0:
the first data-parallel rank's first TP rank), SDPA attention, torchtitan's trainer's SPMD
context around forward and backward, its vocabulary-parallel loss, and Python's automatic
garbage collection off while tracking, as torchtitan's trainer has it
(``torchtitan/tools/utils.py`` ``GarbageCollection``: ``gc.disable()``, a collection every
``gc_freq`` steps).

The step is `scaleplan.reference.titan_fsdp_step.tracked_step`'s (a warm-up step, an
accumulating micro-batch unless ``fresh``, one tracked forward, backward and AdamW step) with
`scaleplan.reference.titan_fsdp_streams.StreamTracker`: each of FSDP2's streams' peaks and the
storages live at the step's peak.

`check_gloo` runs two of them on a real (gloo) process group of ``data x tensor`` processes:
every rank keeps the forward's bytes the fake group's rank 0 keeps, and the whole peak is
the same where FSDP2's gradient division does not differ (gloo has no ``PREMUL_SUM``).
`check_allocator` measures four of them again from the CPU allocator's own events
(`measure_titan_2d_allocated`), which see allocations rather than tensors: the check that
the tracker counts each functional collective's wrapper by what it wraps
(`scaleplan.reference.tracking.plain_tensors`), not as memory of its own.

``python -m scaleplan.reference.titan_2d_step --write`` measures `CASES`, `check_gloo` and
`check_allocator` and writes ``docs/validation/torchtitan-2d-steps.json`` (replayed without torch by
tests/test_titan_2d_steps.py).
"""

from __future__ import annotations

import gc
import importlib
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from scaleplan.model.config import GPTConfig
from scaleplan.reference.allocator_trace import AllocatorTrace
from scaleplan.reference.titan_fsdp_step import GRID, LLAMA_LAYOUT, tracked_step
from scaleplan.reference.titan_fsdp_streams import StreamTracker
from scaleplan.reference.titan_measure import apply_ac, chunked_loss, import_llama3
from scaleplan.reference.titan_tp_measure import titan_tp_model

__all__ = ["ALLOCATOR_CASES", "CASES", "GLOO_CASES", "OUT", "check_allocator", "check_gloo",
           "main", "measure_titan_2d_allocated", "measure_titan_2d_step",
           "sharded_titan_2d_model"]

OUT = Path(__file__).resolve().parents[2] / "docs" / "validation" / "torchtitan-2d-steps.json"
_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}

CASES: tuple[tuple[str, int, int, str, int, int, str, bool, str], ...] = (
    # (titan_fsdp_step.GRID name, data, tensor, checkpointing, micro-batch, tokens, parameter
    # dtype gathered, sequence parallel, AdamW); each measured with and without accumulation.
    # TP must divide n_kv_head (torchtitan's fused wqkv is laid out per KV head).
    ("gqa-3", 2, 2, "none", 2, 96, "bf16", True, "foreach"),
    ("gqa-3", 2, 2, "full", 2, 96, "bf16", True, "foreach"),
    ("gqa-3", 2, 2, "full", 4, 192, "bf16", True, "foreach"),
    ("gqa-3", 4, 2, "none", 2, 96, "bf16", True, "foreach"),
    ("gqa-5", 2, 2, "full", 2, 96, "bf16", True, "foreach"),
    ("gqa-5", 4, 2, "none", 2, 96, "bf16", True, "foreach"),
    ("mha-2", 2, 4, "none", 2, 96, "bf16", True, "foreach"),
    ("mha-2", 2, 4, "full", 2, 96, "bf16", True, "foreach"),
    ("mha-2", 4, 2, "full", 2, 96, "bf16", True, "foreach"),
    ("gqa-3", 2, 2, "none", 2, 96, "fp32", True, "foreach"),
    ("gqa-3", 2, 2, "full", 2, 96, "fp32", True, "foreach"),
    ("gqa-3", 2, 2, "none", 2, 96, "bf16", False, "foreach"),
    ("mha-2", 2, 4, "full", 2, 96, "bf16", False, "foreach"),
    # few tokens: FSDP2's buffers outweigh the activations (a block's end, the head unit's
    # reduce-scatter; with the fused AdamW, no foreach temporaries, on one data rank each
    # block's reduce)
    ("mha-2", 2, 2, "none", 1, 32, "bf16", True, "foreach"),
    ("mha-2", 2, 2, "full", 1, 32, "bf16", True, "foreach"),
    ("mha-2", 2, 2, "full", 2, 16, "bf16", True, "foreach"),
    ("gqa-3", 2, 2, "full", 2, 8, "bf16", True, "foreach"),
    ("gqa-3", 2, 2, "none", 2, 8, "bf16", True, "fused"),
    ("mha-2", 2, 4, "full", 2, 8, "bf16", True, "fused"),
    ("mha-2", 2, 4, "full", 2, 16, "bf16", True, "fused"),
    ("vocab-12k-2", 2, 2, "none", 1, 16, "bf16", True, "foreach"),
    ("vocab-12k-2", 4, 2, "full", 1, 16, "bf16", True, "foreach"),
    # one data rank: FSDP2 on a one-rank mesh beside TP
    ("gqa-3", 1, 2, "none", 2, 96, "bf16", True, "foreach"),
    ("gqa-3", 1, 2, "full", 2, 96, "bf16", True, "foreach"),
    ("mha-2", 1, 2, "none", 1, 32, "bf16", True, "foreach"),
    ("gqa-3", 1, 2, "none", 2, 8, "bf16", True, "fused"),
    ("gqa-3", 1, 2, "full", 2, 8, "bf16", True, "fused"),
    ("vocab-12k-2", 1, 2, "none", 2, 8, "bf16", True, "fused"),
)
"""The measured 2D steps (each twice: accumulating and ``fresh``)."""


@contextmanager
def _world(data: int, tensor: int, *, backend: str = "fake", rank: int = 0) -> Iterator[Any]:
    """A fake process group of ``data x tensor`` ranks (this process rank 0; or
    ``backend="gloo"``, a real one this process is ``rank`` of) and torchtitan's
    ``ParallelDims`` for them (``dp_shard=data``, ``tp=tensor``, the ``partial_dtensor``
    backend), its mesh built on the CPU."""
    import torch.distributed as dist

    import_llama3()
    utils: Any = importlib.import_module("torchtitan.distributed.utils")
    dims: Any = importlib.import_module("torchtitan.distributed.parallel_dims")
    n = data * tensor
    dist.init_process_group(backend, rank=rank, world_size=n)
    threads = torch.autograd.is_multithreading_enabled()
    torch.autograd.set_multithreading_enabled(False)  # as torchtitan's init_distributed does
    device_type = dims.device_type
    dims.device_type = "cpu"  # torchtitan takes "cuda" on a machine without an accelerator
    try:
        utils.set_spmd_backend("partial_dtensor")
        pd = dims.ParallelDims(dp_replicate=1, dp_shard=data, cp=1, tp=tensor, pp=1, ep=1,
                               world_size=n, spmd_backend="partial_dtensor")
        pd.build_mesh()
        yield pd
    finally:
        dims.device_type = device_type
        utils.set_spmd_backend("spmd_types")
        torch.autograd.set_multithreading_enabled(threads)
        dist.destroy_process_group()


def sharded_titan_2d_model(cfg: GPTConfig, parallel_dims: Any, *, checkpointing: str,
                           param_dtype: str, sequence_parallel: bool) -> Any:
    """torchtitan's Llama 3 of ``cfg`` (SDPA attention, seed 0) as ``parallelize_llama`` builds
    it over ``parallel_dims``: TP (its sharding config, ``sequence_parallel`` or not), its
    activation checkpointing, then ``apply_fsdp_to_decoder`` over the ``fsdp`` mesh,
    ``param_dtype`` gathered and fp32 reduced; in train mode."""
    torch.manual_seed(0)
    model = titan_tp_model(cfg, parallel_dims, sequence_parallel=sequence_parallel,
                           attn_backend="sdpa")
    apply_ac(model, checkpointing)
    importlib.import_module("torchtitan.distributed.fsdp").apply_fsdp_to_decoder(
        model, parallel_dims.get_mesh(["fsdp"]), param_dtype=_DTYPES[param_dtype],
        reduce_dtype=torch.float32, pp_enabled=False)
    model.train()
    return model


def measure_titan_2d_step(name: str, *, data: int, tensor: int, checkpointing: str,
                          micro_batch_size: int = 2, seq_len: int = 96,
                          param_dtype: str = "bf16", sequence_parallel: bool = True,
                          fresh: bool = False, optimizer_impl: str = "foreach",
                          backend: str = "fake", rank: int = 0,
                          chunks: int = 0) -> dict[str, Any]:
    """One tracked step of `GRID[name]` on rank 0 of ``data`` FSDP2 x ``tensor`` TP fake ranks:
    ``resident`` (local sharded parameters, gradients unless ``fresh``, AdamW's states, buffers,
    the batch), ``delta`` (the peak above them), ``peak_phase``, ``at_peak`` (the storages live
    then, by what made them), ``stream_peaks`` and ``streams_at_peak`` (by FSDP2 stream).
    ``optimizer_impl``: torch's ``"foreach"`` AdamW or the ``"fused"`` one (torchtitan's
    default, no temporaries). ``backend="gloo"``: rank ``rank`` of a real process group
    instead (`check_gloo`). ``chunks``: torchtitan's ``ChunkedLossWrapper`` in ``chunks``
    sequence chunks as the loss (`chunked_loss`), the model run without its ``lm_head``."""
    cfg = GPTConfig.model_validate({**LLAMA_LAYOUT, **GRID[name]})
    with _world(data, tensor, backend=backend, rank=rank) as pd:
        model = sharded_titan_2d_model(cfg, pd, checkpointing=checkpointing,
                                       param_dtype=param_dtype,
                                       sequence_parallel=sequence_parallel)
        if backend == "gloo":  # gloo has no PREMUL_SUM: FSDP2's own division (SUM, divided)
            for m in model.modules():
                if hasattr(m, "set_gradient_divide_factor"):
                    m.set_gradient_divide_factor(None)
        context = importlib.import_module("torchtitan.distributed.utils").get_spmd_context(
            parallel_dims=pd)
        automatic = gc.isenabled()
        gc.disable()
        try:
            row = tracked_step(model, cfg, micro_batch_size, seq_len, fresh=fresh,
                               fused=optimizer_impl == "fused", tracker_cls=StreamTracker,
                               context=context,
                               loss=chunked_loss(model, cfg, chunks) if chunks else None)
        finally:
            if automatic:
                gc.enable()
    return row | {"name": name, "config": cfg.model_dump(mode="json"), "data": data,
                  "tensor": tensor, "sequence_parallel": sequence_parallel,
                  "checkpointing": checkpointing, "micro_batch_size": micro_batch_size,
                  "seq_len": seq_len, "param_dtype": param_dtype, "fresh": fresh,
                  "optimizer_impl": optimizer_impl} | ({"chunks": chunks} if chunks else {})


GLOO_CASES: tuple[tuple[str, int, int, str, int, int], ...] = (
    # (name, data, tensor, checkpointing, micro-batch, tokens): the embedding's reduce-scattered
    # output kept by block 0's checkpoint; one sequence a micro-batch (all-gathered inputs
    # without a copy). Both keep functional-collective wrappers alive: the same bytes on a
    # real group, once each wrapper is counted by what it wraps (`tracking.plain_tensors`)
    ("gqa-3", 2, 2, "full", 2, 96),
    ("mha-2", 2, 2, "none", 1, 32),
)
"""Steps `check_gloo` runs on a real process group as well."""


def _gloo_rank(rank: int, port: int, case: tuple[str, int, int, str, int, int],
               results: Any) -> None:
    import os

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    name, data, tensor, ckpt, b, s = case
    row = measure_titan_2d_step(name, data=data, tensor=tensor, checkpointing=ckpt,
                                micro_batch_size=b, seq_len=s, backend="gloo", rank=rank)
    results.put((rank, (row["resident"] + row["delta"], _forward_at_peak(row))))


def _forward_at_peak(row: dict[str, Any]) -> int:
    """Bytes made in the forward and live at the step's peak (the activations kept)."""
    return sum(n for label, n in row["at_peak"].items() if label.startswith("forward:"))


def check_gloo(port: int = 29561) -> list[dict[str, Any]]:
    """The fake process group checked against a real one: each of `GLOO_CASES` run by
    ``data x tensor`` gloo processes; every rank's peak (resident + delta) and the forward's
    bytes live then, by rank, beside the fake group's rank 0. gloo has no ``PREMUL_SUM``, so
    there FSDP2 divides the gradients itself (``set_gradient_divide_factor(None)``): its
    reduce buffers may differ; the activations must not."""
    mp = importlib.import_module("torch.multiprocessing")
    out = []
    for i, case in enumerate(GLOO_CASES):
        name, data, tensor, ckpt, b, s = case
        results = mp.get_context("spawn").SimpleQueue()
        mp.spawn(_gloo_rank, args=(port + i, case, results), nprocs=data * tensor)
        got = dict(results.get() for _ in range(data * tensor))
        fake = measure_titan_2d_step(name, data=data, tensor=tensor, checkpointing=ckpt,
                                     micro_batch_size=b, seq_len=s)
        out.append({"case": list(case), "gloo_peaks": [got[r][0] for r in sorted(got)],
                    "gloo_forward_at_peak": [got[r][1] for r in sorted(got)],
                    "fake_peak": fake["resident"] + fake["delta"],
                    "fake_forward_at_peak": _forward_at_peak(fake)})
    return out


ALLOCATOR_CASES: tuple[tuple[str, int, int, str, int, int], ...] = (
    # (name, data, tensor, checkpointing, micro-batch, tokens): steps where the functional
    # collectives' wrappers outlive their op (the embedding's reduce-scattered output kept by
    # block 0's checkpoint; gathered inputs taken as views with one sequence a micro-batch)
    ("gqa-3", 2, 2, "full", 2, 96),
    ("gqa-3", 2, 2, "full", 4, 192),
    ("gqa-3", 2, 2, "none", 1, 192),
    ("mha-2", 2, 4, "none", 1, 96),
)
"""Steps `check_allocator` measures with the CPU allocator's own events as well."""


def measure_titan_2d_allocated(name: str, *, data: int, tensor: int, checkpointing: str,
                               micro_batch_size: int, seq_len: int) -> dict[str, Any]:
    """The step of `measure_titan_2d_step` (accumulating, bf16, sequence parallel, foreach
    AdamW), its peak above the bytes live when it began read from the CPU allocator's profiler
    events (`scaleplan.reference.allocator_trace.AllocatorTrace`, kernel workspaces set
    apart), which sees allocations, not tensors: ``delta`` and ``peak_phase``."""
    cfg = GPTConfig.model_validate({**LLAMA_LAYOUT, **GRID[name]})
    b, s = micro_batch_size, seq_len
    with _world(data, tensor) as pd:
        model = sharded_titan_2d_model(cfg, pd, checkpointing=checkpointing,
                                       param_dtype="bf16", sequence_parallel=True)
        context = importlib.import_module("torchtitan.distributed.utils").get_spmd_context(
            parallel_dims=pd)
        loss_fn = importlib.import_module("torchtitan.components.loss").cross_entropy_loss
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
        ids, labels = (torch.randint(0, cfg.vocab_size, (b, s)) for _ in range(2))
        positions = torch.arange(s).repeat(b, 1)

        def forward_backward() -> None:
            with context():
                pred = model(ids, positions=positions)
                loss = loss_fn(pred, labels, global_vocab_size=cfg.vocab_size)
                del pred
                loss.backward()
                del loss

        forward_backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        forward_backward()  # an earlier micro-batch: every sharded gradient resident
        automatic = gc.isenabled()
        gc.collect()
        gc.disable()
        trace = AllocatorTrace()
        try:
            with trace.recording():
                trace.label("start", {})
                with trace.phase("step"):
                    forward_backward()
                with trace.phase("optimizer"):
                    opt.step()
        finally:
            if automatic:
                gc.enable()
    return {"delta": trace.tensor_peak,
            "peak_phase": max(trace.phase_peaks, key=lambda k: trace.phase_peaks[k])}


def check_allocator() -> list[dict[str, Any]]:
    """The dispatch tracker checked against the allocator: each of `ALLOCATOR_CASES`
    measured both ways (``tracker_delta``, ``allocator_delta``)."""
    out = []
    for name, data, tensor, ckpt, b, s in ALLOCATOR_CASES:
        tracked = measure_titan_2d_step(name, data=data, tensor=tensor, checkpointing=ckpt,
                                        micro_batch_size=b, seq_len=s)
        allocated = measure_titan_2d_allocated(name, data=data, tensor=tensor,
                                               checkpointing=ckpt, micro_batch_size=b,
                                               seq_len=s)
        out.append({"case": [name, data, tensor, ckpt, b, s], "config": tracked["config"],
                    "tracker_delta": tracked["delta"],
                    "allocator_delta": allocated["delta"],
                    "allocator_peak_phase": allocated["peak_phase"]})
    return out


def _rows() -> list[dict[str, Any]]:
    return [measure_titan_2d_step(name, data=data, tensor=tensor, checkpointing=ckpt,
                                  micro_batch_size=b, seq_len=s, param_dtype=dtype,
                                  sequence_parallel=sp, fresh=fresh, optimizer_impl=impl)
            for name, data, tensor, ckpt, b, s, dtype, sp, impl in CASES
            for fresh in (False, True)]


def main(argv: list[str] | None = None) -> int:
    """``--write``: measure `CASES`, `check_gloo` and `check_allocator` and write `OUT`;
    otherwise print one line per case."""
    argv = sys.argv[1:] if argv is None else argv
    rows = _rows()
    for r in rows:
        print(r["name"], r["data"], r["tensor"], r["checkpointing"], r["param_dtype"],
              r["fresh"], r["resident"] + r["delta"], r["stream_peaks"])
    if "--write" in argv:
        OUT.write_text(json.dumps({"torch": torch.__version__, "torchtitan": "0.3.0",
                                   "spmd_backend": "partial_dtensor", "cases": rows,
                                   "gloo": check_gloo(),
                                   "allocator": check_allocator()}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Measure whole training steps of torchtitan's compiled Llama 3 under FSDP2, on CPU.

torchtitan 0.3.0's ``parallelize_llama`` applies activation checkpointing to each block, then
``torch.compile`` to each block (``apply_compile``, torchtitan/distributed/compile.py:
``transformer_block.compile(backend="inductor", fullgraph=True)``), then FSDP2
(``apply_fsdp_to_decoder``, torchtitan/distributed/fsdp.py: a unit per block, one for the
embedding, one for [final norm, lm_head], ``MixedPrecisionPolicy(param_dtype, reduce_dtype=fp32)``).
`measure_titan_compiled_step` does the same to torchtitan's own model (SDPA attention) on rank 0
of torch's fake process group of ``data`` ranks, as `scaleplan.reference.titan_fsdp_step` does
for the eager step, and measures one forward, backward and AdamW step whole with
`scaleplan.reference.allocator_trace.AllocatorTrace`: the CPU allocator's profiler events see
inductor's buffers, which the dispatch-level tracker of the eager harness cannot, and FSDP2's
storage resizes (``untyped_storage().resize_``, which allocate and free through the same
allocator), so no wrapping of FSDP2's helpers is needed (the eager steps below check it).

``delta`` is the peak above what was live when the step began (sharded parameters, gradients
when accumulating, AdamW's states, buffers, the batch), kernel workspaces set apart
(`AllocatorTrace.tensor_peak`), the quantity ``delta`` of the eager harness;
``phase_peaks`` each phase's; ``at_peak`` the sizes of the allocations live at the peak that
the step made. With ``compile=False`` the same step runs eager: the method's check against the
eager harness's committed numbers (docs/validation/torchtitan-fsdp-steps.json).

``python -m scaleplan.reference.titan_compiled_step --write`` measures `CASES` and writes
``tests/data/titan_compiled_steps.json``, replayed without torch by
tests/test_titan_compiled_step.py.
"""

from __future__ import annotations

import gc
import importlib
import json
import sys
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from scaleplan.model.config import GPTConfig
from scaleplan.reference.allocator_trace import AllocatorTrace, stream_ranges
from scaleplan.reference.titan_compiled import compile_blocks
from scaleplan.reference.titan_fsdp_step import GRID, fsdp_stream_names, sharded_titan_model
from scaleplan.reference.titan_measure import import_llama3

__all__ = ["CASES", "JSON_PATH", "LLAMA_LAYOUT", "main", "measure_titan_compiled_step"]

JSON_PATH = Path(__file__).resolve().parents[2] / "tests" / "data" / "titan_compiled_steps.json"
LLAMA_LAYOUT = {"bias": False, "mlp": "swiglu", "norm": "rmsnorm", "position": "rope",
                "tie_embeddings": False}
"""The Llama 3 layout of `scaleplan.reference.titan_fsdp_step.GRID`'s shapes."""

CASES: tuple[tuple[str, int, str, int, int, str, bool, bool], ...] = (
    # (GRID name, data ranks, checkpointing, micro-batch, tokens, param dtype, compiled, fresh)
    # eager first: the method against the dispatch tracker's committed numbers
    ("gqa-3", 2, "full", 2, 96, "bf16", False, False),
    ("gqa-3", 2, "none", 2, 96, "bf16", False, True),
    # many tokens (activations decide) and few with a large vocabulary (FSDP2's buffers)
    *((name, 2, ac, b, s, "bf16", True, fresh)
      for name, b, s in (("gqa-3", 2, 96), ("wide-vocab-4", 1, 32))
      for ac in ("none", "full", "selective") for fresh in (False, True)),
    # few tokens: a block's end (every weight gradient made) or the head unit's reduce
    *(("gqa-3", 2, ac, 1, 16, "bf16", True, False) for ac in ("none", "full", "selective")),
    ("mha-2", 2, "none", 1, 32, "bf16", True, False),
    # more ranks, fp32 parameters
    *(("gqa-3", 8, "full", 2, 96, "bf16", True, fresh) for fresh in (False, True)),
    *(("gqa-3", 4, "none", 2, 96, "fp32", True, fresh) for fresh in (False, True)),
)
"""The committed cases."""


def measure_titan_compiled_step(name: str, *, data: int, checkpointing: str,
                                micro_batch_size: int = 2, seq_len: int = 96,
                                param_dtype: str = "bf16", compile: bool = True,
                                fresh: bool = False, streams: bool = False) -> dict[str, Any]:
    """One profiled forward, backward and foreach AdamW step of `GRID[name]` on rank 0 of
    ``data`` fake ranks, its blocks compiled as torchtitan compiles them (or eager), after a
    warm-up step; ``fresh``: without an accumulating micro-batch before it (every gradient
    None when the step starts, as torchtitan's trainer runs); ``streams``: also each stream's
    peak and its bytes at the step's peak (`AllocatorTrace.stream_peaks`, FSDP2's streams
    named by `scaleplan.reference.allocator_trace.stream_ranges`) and the resident sharded
    gradients' bytes (``resident_gradients``)."""
    import torch.distributed as dist

    cfg = GPTConfig.model_validate({**LLAMA_LAYOUT, **GRID[name]})
    import_llama3()
    torch._dynamo.reset()
    dist.init_process_group("fake", rank=0, world_size=data)
    try:
        model = sharded_titan_model(cfg, checkpointing=checkpointing, data=data,
                                    param_dtype=param_dtype,
                                    before_sharding=compile_blocks if compile else None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # dynamo's and inductor's own, not about memory
            row = _profiled_step(model, cfg, micro_batch_size, seq_len, fresh=fresh,
                                 streams=streams)
        return row | {"name": name, "config": cfg.model_dump(mode="json"), "data": data,
                      "checkpointing": checkpointing, "micro_batch_size": micro_batch_size,
                      "seq_len": seq_len, "param_dtype": param_dtype, "compiled": compile,
                      "fresh": fresh}
    finally:
        dist.destroy_process_group()
        torch._dynamo.reset()


def _profiled_step(model: Any, cfg: GPTConfig, b: int, s: int, *,
                   fresh: bool, streams: bool = False) -> dict[str, Any]:
    loss_fn = importlib.import_module("torchtitan.components.loss").cross_entropy_loss
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    ids, labels = (torch.randint(0, cfg.vocab_size, (b, s)) for _ in range(2))
    positions = torch.arange(s).repeat(b, 1)

    def forward_backward(trace: AllocatorTrace | None = None) -> None:
        with trace.phase("forward") if trace else nullcontext():
            pred = model(ids, positions=positions)
            loss = loss_fn(pred, labels)
            del pred
        with trace.phase("backward") if trace else nullcontext():
            loss.backward()
            del loss

    forward_backward()  # compiles; AdamW's states
    opt.step()
    opt.zero_grad(set_to_none=True)
    if not fresh:
        forward_backward()  # an earlier micro-batch: every sharded gradient resident
    gc.collect()
    resident_gradients = _gradient_bytes(model)  # made by an earlier micro-batch's RS
    trace = AllocatorTrace()
    named = stream_ranges(fsdp_stream_names(model)) if streams else nullcontext()
    with trace.recording(), named:
        trace.label("start", {})  # names nothing: asks for the sizes live at the peak
        forward_backward(trace)
        with trace.phase("optimizer"):
            opt.step()
    extra = {"stream_peaks": trace.stream_peaks, "streams_at_peak": trace.streams_at_peak,
             "resident_gradients": resident_gradients} if streams else {}
    return extra | {"delta": trace.tensor_peak,
            "batch_bytes": ids.untyped_storage().nbytes() + positions.untyped_storage().nbytes(),
            "with_workspaces": trace.peak,
            "phase_peaks": trace.phase_peaks, "phase_starts": trace.phase_starts,
            "peak_phase": max(trace.phase_peaks, key=lambda k: trace.phase_peaks[k]),
            "at_peak": [n for n, _ in trace.at_peak]}


def _gradient_bytes(model: Any) -> int:
    """Bytes of the distinct storages of the sharded gradients now."""
    grads = (p.grad for p in model.parameters() if p.grad is not None)
    local = (g.to_local() if type(g).__name__ == "DTensor" else g for g in grads)
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in local}.values())


def main(argv: list[str] | None = None) -> int:
    """``--write``: measure `CASES` and write `JSON_PATH`; otherwise print one line per case
    (``--case NAME DATA CHECKPOINTING B S DTYPE COMPILED FRESH``: one case)."""
    argv = sys.argv[1:] if argv is None else argv
    cases: list[tuple[Any, ...]] = list(CASES)
    if "--case" in argv:
        i = argv.index("--case")
        n, d, ac, b, s, dt, c, f = argv[i + 1:i + 9]
        cases = [(n, int(d), ac, int(b), int(s), dt, c == "1", f == "1")]
    rows = []
    for name, data, ac, b, s, dtype, compiled, fresh in cases:
        row = measure_titan_compiled_step(name, data=data, checkpointing=ac,
                                          micro_batch_size=b, seq_len=s, param_dtype=dtype,
                                          compile=compiled, fresh=fresh)
        print(name, data, ac, b, s, dtype, compiled, fresh, row["delta"], row["peak_phase"],
              row["at_peak"], flush=True)
        rows.append(row)
    if "--write" in argv:
        JSON_PATH.write_text(json.dumps({"torch": torch.__version__, "torchtitan": "0.3.0",
                                         "cases": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

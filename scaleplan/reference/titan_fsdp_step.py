"""Measure whole training steps of torchtitan's Llama 3 under FSDP2, on CPU, in one process.

torchtitan 0.3.0 shards its model with ``apply_fsdp_to_decoder``
(``torchtitan/distributed/fsdp.py``: one ``fully_shard`` unit per block, one for the embedding,
one for [final norm, lm_head], ``MixedPrecisionPolicy(param_dtype, reduce_dtype=fp32)``).
`measure_titan_fsdp_step` applies it to torchtitan's own model (SDPA attention, its activation
checkpointing) on rank 0 of torch's fake process group of ``data`` ranks (collectives are no-ops
that return tensors of the shapes a real rank gets), runs a warm-up step (AdamW's states) and a
first micro-batch (every sharded gradient resident: the worst step of gradient accumulation),
then tracks one more forward, backward and optimizer step. With ``fresh=True`` there is no
first micro-batch: the warm-up step ends with ``zero_grad(set_to_none=True)``, as torchtitan's
trainer does every step, and the tracked step is one without gradient accumulation (every
sharded gradient is made by its unit's reduce-scatter during the tracked backward, so it counts
in ``delta``, not in ``resident``).

The tracker is `scaleplan.reference.titan_measure`'s live-bytes tracker, with one addition:
FSDP2 frees and re-allocates its unsharded parameters by resizing their storages
(``torch.distributed.fsdp._fully_shard._fsdp_param.alloc_storage`` / ``free_storage``), which
no operator reports, so those two functions are wrapped while tracking and each resize moves
the count. ``delta`` is the peak above the resident bytes (sharded parameters, gradients and
optimizer states, buffers, the batch); ``at_peak`` names the storages live then (the phase and
operator that made them, shape and dtype), the evidence for
`scaleplan.memory.titan_fsdp_moments`.

``python -m scaleplan.reference.titan_fsdp_step --write`` measures `GRID` and writes
``docs/validation/torchtitan-fsdp-steps.json`` (replayed without torch by
tests/test_titan_fsdp_moments.py); ``--fresh --write`` measures `GRID`'s cases and
`FRESH_GRID`'s without accumulation and writes them under that file's ``fresh_cases`` (replayed by
tests/test_titan_fsdp_fresh.py), leaving the accumulating ``cases`` as they are; ``--one-rank
--write`` measures torchtitan's one-GPU step (``data=1``: FSDP2 on a one-rank mesh, with and
without accumulation, each with the backward's own peak) under ``one_rank_cases`` (replayed by
tests/test_titan_one_rank.py), leaving the other keys as they are.
"""

from __future__ import annotations

import gc
import importlib
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from scaleplan.model.config import GPTConfig
from scaleplan.reference.titan_measure import TitanTracker, apply_ac, import_llama3, titan_model
from scaleplan.reference.tracking import storage_key

__all__ = ["FRESH_GRID", "GRID", "LLAMA_LAYOUT", "ONE_RANK_FEW_TOKENS", "OUT", "PeakTracker",
           "fsdp_stream_names", "main", "measure_titan_fsdp_step", "sharded_titan_model",
           "tracked_step"]

OUT = Path(__file__).resolve().parents[2] / "docs" / "validation" / "torchtitan-fsdp-steps.json"
LLAMA_LAYOUT = {"bias": False, "mlp": "swiglu", "norm": "rmsnorm", "position": "rope",
                "tie_embeddings": False}
"""torchtitan's Llama 3 layout, which `GRID`'s shapes take (`titan_2d_step` too)."""
GRID: dict[str, dict[str, Any]] = {
    # distinct sizes (b s = 192, d = 160, F = 448, V = 384) so that each storage's shape names it
    "gqa-3": {"n_layer": 3, "n_head": 4, "n_kv_head": 2, "n_embd": 160, "mlp_hidden": 448,
              "vocab_size": 384, "block_size": 256},
    # a vocabulary large enough that the last block (the head's reduce-scatter input) peaks
    "wide-vocab-4": {"n_layer": 4, "n_head": 6, "n_kv_head": 3, "n_embd": 192,
                     "mlp_hidden": 512, "vocab_size": 3000, "block_size": 256},
    # two blocks: block 0 is also the second-to-last (the embedding prefetched)
    "mha-2": {"n_layer": 2, "n_head": 4, "n_kv_head": 4, "n_embd": 128, "mlp_hidden": 352,
              "vocab_size": 1500, "block_size": 256},
    # gqa-3 five blocks deep: without accumulation a middle block (the second) peaks, its own
    # moment beside three blocks' gradient shards (`FRESH_GRID` only)
    "gqa-5": {"n_layer": 5, "n_head": 4, "n_kv_head": 2, "n_embd": 160, "mlp_hidden": 448,
              "vocab_size": 384, "block_size": 256},
    # a vocabulary far wider than a block (12,000 x 128 against 184,576 parameters): with few
    # tokens the head unit's reduce-scatter is the default stream's worst moment
    # (`scaleplan.reference.titan_fsdp_streams` only)
    "vocab-12k-2": {"n_layer": 2, "n_head": 4, "n_kv_head": 2, "n_embd": 128,
                    "mlp_hidden": 352, "vocab_size": 12000, "block_size": 256},
}
"""Small Llama 3 shapes of the committed measurements (with `LLAMA_LAYOUT`'s layout)."""


class PeakTracker(TitanTracker):  # type: ignore[no-untyped-call]
    """The live-bytes tracker, told of FSDP2's storage resizes, keeping what made each storage
    and the storages live at the peak."""

    def __init__(self) -> None:
        super().__init__()
        self.made: dict[int, str] = {}
        self.at_peak: dict[int, tuple[int, str]] = {}
        self.func = "resident"
        self.best = -1
        self.phase_best: dict[str, int] = {}
        self.at_phase_peak: dict[str, dict[int, tuple[int, str]]] = {}

    def _label(self, t: torch.Tensor, what: str) -> str:
        return f"{self.phase}:{what} {tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"

    def _register(self, t: torch.Tensor) -> None:
        t = _local(t)  # the optimizer's ops on sharded parameters return DTensors
        key = storage_key(t)
        if key not in self.live:
            self.made[key] = self._label(t, self.func)
        super()._register(t)
        self._snapshot()

    def _snapshot(self) -> None:
        """The storages live at the first moment the peak (and each phase's peak) is reached."""
        if self.current > self.phase_best.get(self.phase, -1):
            self.phase_best[self.phase] = self.current
            self.at_phase_peak[self.phase] = {k: (n, self.made.get(k, "?"))
                                              for k, n in self.live.items() if n}
        if self.current > self.best:
            self.best = self.current
            self.at_peak = self.at_phase_peak[self.phase]

    def resized(self, t: torch.Tensor) -> None:
        """FSDP2 resized ``t``'s storage (to its full size or to 0)."""
        key = storage_key(t)
        if key not in self.live:
            self._register(t)
            return
        n = int(t.untyped_storage().nbytes())
        self.current += n - self.live[key]
        self.live[key] = n
        if n:
            self.made[key] = self._label(t, "fsdp_alloc")
        if self.current > self.peak:
            self.peak, self.peak_phase = self.current, self.phase
        self._snapshot()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        self.func = str(func).removeprefix("aten.").removesuffix(".default")
        return super().__torch_dispatch__(func, types, args, kwargs)

    def resident_gradients(self, grads: list[torch.Tensor]) -> None:
        """The resident sharded gradients among the resident storages (a subclass may place
        them: `scaleplan.reference.titan_fsdp_streams`)."""

    def report(self, model: Any) -> dict[str, Any]:
        """Fields a subclass adds to the measured row."""
        return {}


@contextmanager
def _resizes_told(tracker: PeakTracker) -> Iterator[None]:
    """Wrap FSDP2's storage resize helpers (imported by name in two modules) for ``tracker``."""
    param: Any = importlib.import_module("torch.distributed.fsdp._fully_shard._fsdp_param")
    group: Any = importlib.import_module("torch.distributed.fsdp._fully_shard._fsdp_param_group")
    alloc, free = param.alloc_storage, param.free_storage

    def told_alloc(t: torch.Tensor) -> None:
        alloc(t)
        tracker.resized(t)

    def told_free(t: torch.Tensor) -> None:
        free(t)
        tracker.resized(t)

    param.alloc_storage, param.free_storage, group.alloc_storage = told_alloc, told_free, told_alloc
    try:
        yield
    finally:
        param.alloc_storage, param.free_storage, group.alloc_storage = alloc, free, alloc


def fsdp_stream_names(model: Any) -> dict[int, str]:
    """FSDP2's own streams of a sharded ``model`` (after its first forward), by ``id()``:
    ``all_gather_copy_in``, ``all_gather``, ``reduce_scatter`` and ``all_reduce``."""
    ctx = model._get_fsdp_state()._comm_ctx
    roles = ("all_gather_copy_in_stream", "all_gather_stream", "reduce_scatter_stream",
             "all_reduce_stream")
    return {id(getattr(ctx, r)): r.removesuffix("_stream") for r in roles if hasattr(ctx, r)}


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if type(t).__name__ == "DTensor" else t  # type: ignore[attr-defined]


def measure_titan_fsdp_step(name: str, *, data: int, checkpointing: str, micro_batch_size: int = 2,
                            seq_len: int = 96, param_dtype: str = "bf16",
                            fresh: bool = False, optimizer_impl: str = "foreach",
                            backward_peak: bool = False,
                            tracker_cls: type[PeakTracker] | None = None,
                            loss_for: Callable[[Any, GPTConfig], Any] | None = None
                            ) -> dict[str, Any]:
    """One tracked forward, backward and AdamW step of `GRID[name]` on rank 0 of ``data``
    fake ranks; ``fresh``: without an accumulating micro-batch before it; ``optimizer_impl``:
    torch's ``"foreach"`` AdamW or the ``"fused"`` one (torchtitan's default);
    ``backward_peak``: also the backward's own peak (``backward_delta``, above the resident
    bytes) and the storages live then (``at_backward_peak``); ``tracker_cls``: a `PeakTracker`
    subclass that adds its own fields (`PeakTracker.report`); ``loss_for(model, cfg)``: the
    loss (`scaleplan.reference.titan_measure.chunked_loss`, say; `tracked_step`'s ``loss``)."""
    import torch.distributed as dist

    cfg = GPTConfig.model_validate({**LLAMA_LAYOUT, **GRID[name]})
    import_llama3()
    dist.init_process_group("fake", rank=0, world_size=data)
    try:
        model = sharded_titan_model(cfg, checkpointing=checkpointing, data=data,
                                    param_dtype=param_dtype)
        row = tracked_step(model, cfg, micro_batch_size, seq_len, fresh=fresh,
                            fused=optimizer_impl == "fused", backward_peak=backward_peak,
                            tracker_cls=tracker_cls or PeakTracker,
                            loss=loss_for(model, cfg) if loss_for else None) | {
            "name": name, "config": cfg.model_dump(mode="json"), "data": data,
            "checkpointing": checkpointing, "micro_batch_size": micro_batch_size,
            "seq_len": seq_len, "param_dtype": param_dtype}
        row |= {"optimizer_impl": optimizer_impl} if optimizer_impl != "foreach" else {}
        return row | {"fresh": True} if fresh else row
    finally:
        dist.destroy_process_group()


def sharded_titan_model(cfg: GPTConfig, *, checkpointing: str, data: int, param_dtype: str,
                        before_sharding: Callable[[Any], None] | None = None) -> Any:
    """torchtitan's Llama 3 of ``cfg`` (SDPA attention, seed 0) as ``parallelize_llama`` builds
    it: its activation checkpointing, then ``before_sharding`` (its per-block compile, say),
    then ``apply_fsdp_to_decoder`` over ``data`` ranks of the process group already set up,
    ``param_dtype`` gathered and fp32 reduced; in train mode."""
    from torch.distributed.device_mesh import init_device_mesh

    torch.manual_seed(0)
    model = titan_model(cfg, "sdpa")
    with torch.no_grad():
        model.init_states()
    apply_ac(model, checkpointing)
    if before_sharding is not None:
        before_sharding(model)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[param_dtype]
    importlib.import_module("torchtitan.distributed.fsdp").apply_fsdp_to_decoder(
        model, init_device_mesh("cpu", (data,)), param_dtype=dtype,
        reduce_dtype=torch.float32, pp_enabled=False)
    model.train()
    return model


def tracked_step(model: Any, cfg: GPTConfig, b: int, s: int, *, fresh: bool,
                 fused: bool = False, backward_peak: bool = False,
                 tracker_cls: type[PeakTracker] = PeakTracker,
                 context: Callable[[], Any] = nullcontext,
                 loss: Callable[[Any, Any], Any] | None = None) -> dict[str, Any]:
    """A warm-up step, an accumulating micro-batch unless ``fresh``, then one tracked forward,
    backward and AdamW step of ``model`` (sharded by FSDP2) on a random ``b`` x ``s`` batch,
    each forward and backward inside ``context()`` (torchtitan's trainer's SPMD context, say),
    the loss told ``cfg``'s vocabulary (its vocabulary-parallel form needs it under TP), or
    ``loss(pred, labels)`` (torchtitan's ``ChunkedLossWrapper``, say). The row
    `measure_titan_fsdp_step` documents (``resident``, ``delta``, ``at_peak``, ...)."""
    cross_entropy = importlib.import_module("torchtitan.components.loss").cross_entropy_loss
    loss_fn = loss or (lambda pred, labels: cross_entropy(pred, labels,
                                                          global_vocab_size=cfg.vocab_size))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=not fused or None,
                            fused=fused or None)
    ids, labels = (torch.randint(0, cfg.vocab_size, (b, s)) for _ in range(2))
    positions = torch.arange(s).repeat(b, 1)

    def forward_backward(tracker: PeakTracker | None = None) -> None:
        with context():
            if tracker:
                tracker.set_phase("forward")
            pred = model(ids, positions=positions)
            value = loss_fn(pred, labels)
            del pred
            if tracker:
                tracker.set_phase("backward")
            value.backward()

    forward_backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if not fresh:
        forward_backward()  # an earlier micro-batch: every sharded gradient resident
    gc.collect()
    params = list(model.parameters())
    grads = [] if fresh else [_local(p.grad) for p in params]  # fresh: every one is None
    kept = [*(_local(p) for p in params), *grads, *(_local(x) for x in model.buffers()),
            *(_local(v) for st in opt.state.values() for v in st.values()
              if isinstance(v, torch.Tensor)), ids, labels, positions]
    tracker = tracker_cls()
    resident = tracker.add_resident(kept)
    tracker.resident_gradients(grads)
    keys = {storage_key(t) for t in kept}
    del kept, params, grads  # no reference of ours may keep a storage FSDP2 drops alive
    with _resizes_told(tracker), tracker:
        forward_backward(tracker)
        tracker.set_phase("optimizer")
        opt.step()  # torch's foreach (or fused) AdamW on the local shards
    row = {"resident": resident, "delta": tracker.peak - resident,
           "peak_phase": tracker.peak_phase,
           "batch_bytes": ids.untyped_storage().nbytes() + positions.untyped_storage().nbytes(),
           "at_peak": _labelled(tracker.at_peak, keys)} | tracker.report(model)
    if backward_peak:  # the backward's own peak, even where the optimizer step's is higher
        row |= {"backward_delta": tracker.phase_best["backward"] - resident,
                "at_backward_peak": _labelled(tracker.at_phase_peak["backward"], keys)}
    return row


def _labelled(at: dict[int, tuple[int, str]], keys: set[int]) -> dict[str, int]:
    """Bytes live by label (what made each storage), the resident storages left out."""
    live: Counter[str] = Counter()
    for n, what in (v for k, v in at.items() if k not in keys):
        live[what] += n
    return dict(live.most_common())


def _grid_rows(*, fresh: bool = False) -> list[dict[str, Any]]:
    rows = []
    for name in ("gqa-3", "wide-vocab-4", "mha-2"):
        for checkpointing in ("none", "full", "selective"):
            rows.append(measure_titan_fsdp_step(name, data=2, checkpointing=checkpointing,
                                                fresh=fresh))
    rows.append(measure_titan_fsdp_step("gqa-3", data=8, checkpointing="full", fresh=fresh))
    rows.append(measure_titan_fsdp_step("gqa-3", data=2, checkpointing="selective",
                                        micro_batch_size=1, seq_len=160, fresh=fresh))
    rows.append(measure_titan_fsdp_step("gqa-3", data=4, checkpointing="none",
                                        param_dtype="fp32", fresh=fresh))
    for checkpointing in ("none", "full"):  # few tokens: the last block's backward peaks
        rows.append(measure_titan_fsdp_step("wide-vocab-4", data=2, checkpointing=checkpointing,
                                            micro_batch_size=1, seq_len=32, fresh=fresh))
    for name, checkpointing, s in (("mha-2", "full", 32), ("mha-2", "none", 32),
                                   ("mha-2", "selective", 32), ("gqa-3", "full", 16),
                                   ("gqa-3", "none", 16)):  # a block's end, the head unit
        rows.append(measure_titan_fsdp_step(name, data=2, checkpointing=checkpointing,
                                            micro_batch_size=1, seq_len=s, fresh=fresh))
    return rows


FRESH_GRID: tuple[tuple[str, int, str, int, int, str], ...] = (
    # (name, data, checkpointing, micro-batch, tokens, AdamW): more ranks and blocks
    ("wide-vocab-4", 8, "full", 2, 96, "foreach"), ("wide-vocab-4", 8, "selective", 2, 96,
                                                    "foreach"),
    ("wide-vocab-4", 4, "none", 2, 96, "foreach"), ("wide-vocab-4", 8, "none", 1, 32, "foreach"),
    ("gqa-5", 8, "full", 2, 96, "foreach"), ("gqa-5", 4, "selective", 2, 96, "foreach"),
    # the fused AdamW (no foreach temporaries): with few tokens the embedding's reduce-scatter,
    # every other unit's shard made, outgrows the optimizer step
    ("wide-vocab-4", 2, "full", 1, 32, "fused"), ("wide-vocab-4", 8, "none", 1, 32, "fused"),
    ("mha-2", 2, "none", 1, 32, "fused"), ("gqa-3", 2, "full", 1, 16, "fused"),
    ("gqa-3", 2, "full", 2, 96, "fused"),
)
"""Steps without accumulation measured beyond `GRID`'s own cases (``--fresh``)."""


def _fresh_rows() -> list[dict[str, Any]]:
    """`GRID`'s cases and `FRESH_GRID`'s, each without gradient accumulation."""
    return _grid_rows(fresh=True) + [
        measure_titan_fsdp_step(name, data=data, checkpointing=checkpointing,
                                micro_batch_size=b, seq_len=s, fresh=True,
                                optimizer_impl=impl)
        for name, data, checkpointing, b, s, impl in FRESH_GRID]


ONE_RANK_FEW_TOKENS: tuple[tuple[str, str, str, int, int], ...] = (
    # (name, checkpointing, param dtype, micro-batch, tokens): few tokens, where FSDP2's
    # buffers (a unit's reduce, the head unit's, the embedding's) outweigh the activations
    ("wide-vocab-4", "none", "bf16", 1, 32), ("wide-vocab-4", "full", "bf16", 1, 32),
    ("wide-vocab-4", "none", "fp32", 1, 32), ("mha-2", "none", "bf16", 1, 32),
    ("mha-2", "selective", "bf16", 1, 32), ("gqa-3", "full", "bf16", 1, 16),
    ("gqa-3", "none", "fp32", 1, 16), ("gqa-3", "full", "fp32", 1, 16),
)
"""One-rank steps measured beyond `GRID`'s shapes at 2 x 96 tokens (``--one-rank``)."""


def _one_rank_rows() -> list[dict[str, Any]]:
    """torchtitan's one-GPU step (FSDP2 on a one-rank mesh): `GRID`'s first three shapes under
    each checkpointing, bf16 and fp32 parameters, with and without gradient accumulation, and
    `ONE_RANK_FEW_TOKENS` (both ways), each with the backward's own peak."""
    shapes = [(name, ac, dtype, 2, 96) for name in ("gqa-3", "wide-vocab-4", "mha-2")
              for ac in ("none", "full", "selective") for dtype in ("bf16", "fp32")]
    return [measure_titan_fsdp_step(name, data=1, checkpointing=ac, param_dtype=dtype,
                                    micro_batch_size=b, seq_len=s, fresh=fresh,
                                    backward_peak=True)
            for name, ac, dtype, b, s in (*shapes, *ONE_RANK_FEW_TOKENS)
            for fresh in (False, True)]


def main(argv: list[str] | None = None) -> int:
    """``--write``: measure `GRID` and write `OUT`; ``--fresh``: the steps without
    accumulation (``fresh_cases``) instead; ``--one-rank``: the one-GPU steps
    (``one_rank_cases``) instead; otherwise print one line per case. Writing one key leaves
    the others as they are."""
    argv = sys.argv[1:] if argv is None else argv
    key = "fresh_cases" if "--fresh" in argv else \
        "one_rank_cases" if "--one-rank" in argv else "cases"
    rows = {"fresh_cases": _fresh_rows, "one_rank_cases": _one_rank_rows,
            "cases": _grid_rows}[key]()
    for r in rows:
        print(r["name"], r["data"], r["checkpointing"], r["param_dtype"], r["delta"])
    if "--write" in argv:
        old = json.loads(OUT.read_text()) if OUT.exists() else {}
        new = {"torch": torch.__version__, "torchtitan": "0.3.0",
               "cases": old.get("cases", []), "fresh_cases": old.get("fresh_cases", [])}
        new |= {"one_rank_cases": old["one_rank_cases"]} if "one_rank_cases" in old else {}
        OUT.write_text(json.dumps(new | {key: rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Measure what one tensor-parallel rank of torchtitan's Llama 3 holds, on CPU, in one process.

torchtitan 0.3.0 shards its Llama 3 for tensor parallelism through the model's own sharding
config (``torchtitan/models/llama3/sharding.py`` ``set_llama3_sharding_config``, filled by
``Llama3Model.Config.update_from_config``, ``model.py:83-88``, from
``parallelism.enable_sequence_parallel``, default True) and ``Module.parallelize``
(``parallelize.py:42-44``; ``spmd_backend="spmd_types"``, its default): every parameter becomes
the plain local shard a rank holds and every module boundary redistributes its local
activations with the collectives the config names. Under TP its loss is vocabulary-parallel
(``_LossParallelCrossEntropy``, ``torchtitan/components/loss.py``, always on in 0.3.0).

`measure_titan_tp` runs that path with ``N`` ranks in one process: torch's fake process group
(``init_process_group("fake", rank=0, world_size=N)``, what torchtitan's own
``comm.mode="fake_backend"`` dry run uses, ``torchtitan/distributed/utils.py``
``init_fake_mode``) makes every collective a no-op that still returns a tensor of the shape and
dtype a real rank gets, so the live-bytes tracker and the saved-tensor recorder of
`scaleplan.reference.titan_measure` see rank 0's tensors. The parameters are then cast to bf16
as FSDP2's ``MixedPrecisionPolicy(param_dtype=bf16)`` gathers them (or left fp32), torchtitan's
activation checkpointing is applied (``parallelize.py:58-59``: after TP, before FSDP) and one
forward and torchtitan's ``cross_entropy_loss`` run; what is left for backward is counted as
`scaleplan.reference.titan_measure.measure_titan` counts it. `measure_loss_parallel` runs the
vocabulary-parallel loss alone on rank 0's logits and reports the live bytes at its forward
and backward peaks (in the whole model, cyclic garbage that the spmd wrappers leave until the
next ``gc`` pass blurs those peaks, so they are measured apart).

`check_gloo` runs the same measurement in two real gloo processes: each rank saves what the
fake group's rank 0 saves, to the byte.

``python -m scaleplan.reference.titan_tp_measure --write`` measures the grid and writes
``docs/validation/torchtitan-tp-memory.json`` (replayed without torch by
tests/test_titan_tp_memory.py).
"""

from __future__ import annotations

import gc
import importlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict

from scaleplan.model.config import GPTConfig
from scaleplan.reference.titan_measure import (
    GRID,
    TitanTracker,
    apply_ac,
    flex_on_cpu,
    import_llama3,
    report_main,
    titan_model_config,
)
from scaleplan.reference.tracking import SavedTensorsRecorder, add_checkpoint_held, storage_key

__all__ = ["TitanTPMeasurement", "check_gloo", "fake_world", "grid", "main",
           "measure_loss_parallel", "measure_titan_tp", "titan_tp_model"]

JSON_PATH = Path("docs/validation/torchtitan-tp-memory.json")
_DTYPES = {"bf16-mixed": torch.bfloat16, "32-true": torch.float32}


class TitanTPMeasurement(BaseModel):
    """What rank 0 of ``tensor`` tensor-parallel ranks holds after forward + loss, by module
    (parameters, buffers and the token ids excluded), and its parameters' local shapes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    config: GPTConfig
    tensor: int
    sequence_parallel: bool
    precision: str
    micro_batch_size: int
    seq_len: int
    checkpointing: str
    saved_for_backward: int
    saved_by_module: dict[str, int]
    parameter_shapes: dict[str, list[int]]


@contextmanager
def fake_world(n: int, *, backend: str = "fake", rank: int = 0) -> Iterator[Any]:
    """A fake ``n``-rank process group (this process is rank 0; or ``backend="gloo"``, a real
    one this process is ``rank`` of) and torchtitan's spmd_types backend; torchtitan's
    ``ParallelDims`` for TP ``n`` (no data parallelism), its mesh built."""
    import torch.distributed as dist

    import_llama3()
    utils = importlib.import_module("torchtitan.distributed.utils")
    dims = importlib.import_module("torchtitan.distributed.parallel_dims")
    dist.init_process_group(backend, rank=rank, world_size=n)
    threads = torch.autograd.is_multithreading_enabled()
    torch.autograd.set_multithreading_enabled(False)  # as torchtitan's init_distributed does
    try:
        utils.set_spmd_backend("spmd_types")
        pd = dims.ParallelDims(dp_replicate=1, dp_shard=1, cp=1, tp=n, pp=1, ep=1,
                               world_size=n, spmd_backend="spmd_types")
        pd.build_mesh()
        yield pd
    finally:
        torch.autograd.set_multithreading_enabled(threads)
        dist.destroy_process_group()


def titan_tp_model(cfg: GPTConfig, parallel_dims: Any, *, sequence_parallel: bool,
                   attn_backend: str = "flex") -> Any:
    """torchtitan's ``Llama3Model`` for ``cfg``, its sharding config set as its trainer sets it
    and parallelized over ``parallel_dims`` (parameters: rank 0's local shards)."""
    config = titan_model_config(cfg, attn_backend)
    if cfg.qk_norm == "head":  # torchtitan's Qwen3 (scaleplan.reference.titan_qwen3_measure)
        qwen3 = importlib.import_module("torchtitan.models.qwen3.sharding")
        qwen3.set_qwen3_sharding_config(config, enable_sp=sequence_parallel, enable_ep=False)
    else:
        sharding = importlib.import_module("torchtitan.models.llama3.sharding")
        sharding.set_llama3_sharding_config(config, enable_sp=sequence_parallel)
    model = config.build()
    with torch.no_grad():
        model.init_states()
    model.parallelize(parallel_dims)
    return model


def measure_titan_tp(cfg: GPTConfig, *, tensor: int, micro_batch_size: int, seq_len: int,
                     checkpointing: str = "none", precision: str = "bf16-mixed",
                     sequence_parallel: bool = True, seed: int = 0, backend: str = "fake",
                     rank: int = 0) -> TitanTPMeasurement:
    """Measure rank 0 of torchtitan's Llama 3 at tensor-parallel degree ``tensor`` on CPU
    (``backend="gloo"``: rank ``rank`` of a real process group, see `check_gloo`)."""
    torch.manual_seed(seed)
    with fake_world(tensor, backend=backend, rank=rank) as pd:
        model = titan_tp_model(cfg, pd, sequence_parallel=sequence_parallel)
        for p in model.parameters():  # FSDP2's gathered parameters (bf16), buffers unchanged
            p.data = p.data.to(_DTYPES[precision])
        apply_ac(model, checkpointing)
        model.train()
        shapes = {n: list(p.shape) for n, p in model.named_parameters()}
        return _measure(model, cfg, pd, micro_batch_size, seq_len, checkpointing, precision,
                        sequence_parallel, tensor, shapes)


def _measure(model: Any, cfg: GPTConfig, pd: Any, b: int, s: int, checkpointing: str,
             precision: str, sequence_parallel: bool, tensor: int,
             shapes: dict[str, list[int]]) -> TitanTPMeasurement:
    loss_mod = importlib.import_module("torchtitan.components.loss")
    context = importlib.import_module("torchtitan.distributed.utils").get_spmd_context(
        parallel_dims=pd)
    ids = torch.randint(0, cfg.vocab_size, (b, s))
    labels = torch.randint(0, cfg.vocab_size, (b, s))
    positions = torch.arange(s).repeat(b, 1)
    params = {storage_key(p) for p in model.parameters()}
    tracker = TitanTracker()
    recorder = SavedTensorsRecorder(param_keys=params)
    gc.collect()
    with context(), flex_on_cpu():
        masks = model.get_attention_masks(positions=positions)
        resident = {storage_key(x) for x in model.buffers()} | params
        resident |= {storage_key(x) for x in (ids, labels, positions)}
        with tracker:
            with recorder.recording(model):
                pred = model(ids, positions=positions, attention_masks=masks)
                loss = loss_mod.cross_entropy_loss(pred, labels, global_vocab_size=cfg.vocab_size)
            del pred
            gc.collect()
        by_module, _, _ = recorder.totals()
        add_checkpoint_held(by_module, tracker, recorder, resident, loss)
    return TitanTPMeasurement(
        config=cfg, tensor=tensor, sequence_parallel=sequence_parallel, precision=precision,
        micro_batch_size=b, seq_len=s, checkpointing=checkpointing,
        saved_for_backward=sum(by_module.values()), saved_by_module=by_module,
        parameter_shapes=shapes)


def measure_loss_parallel(tokens: int, vocab_size: int, *, tensor: int,
                          precision: str) -> dict[str, int]:
    """Live bytes of torchtitan's vocabulary-parallel cross-entropy on rank 0 of ``tensor``:
    ``logits`` (its (1, tokens, ceil(V / t)) logits in the activation dtype), ``forward_peak``
    (the most live while the loss runs, the logits included), ``saved`` (left after it, the
    scalar loss included) and ``backward_peak`` (the most live while its backward runs, the
    saved tensors included). The labels are excluded (the data loader's)."""
    local = -(-vocab_size // tensor)
    with fake_world(tensor) as pd:
        loss_mod = importlib.import_module("torchtitan.components.loss")
        context = importlib.import_module("torchtitan.distributed.utils").get_spmd_context(
            parallel_dims=pd)
        leaf = torch.randn(1, tokens, local, dtype=_DTYPES[precision], requires_grad=True)
        labels = torch.randint(0, vocab_size, (1, tokens))
        tracker = TitanTracker()
        with context(), tracker:
            tracker.set_phase("forward")
            logits = leaf * 1  # a non-leaf, as the lm_head's output is
            before = tracker.current
            loss = loss_mod.cross_entropy_loss(logits, labels, global_vocab_size=vocab_size)
            del logits
            gc.collect()
            saved = tracker.current
            tracker.set_phase("backward")
            loss.backward()
        return {"logits": before, "forward_peak": tracker.phase_peaks["forward"],
                "saved": saved, "backward_peak": tracker.phase_peaks["backward"]}


def _gloo_rank(rank: int, port: int, checkpointing: str, results: Any) -> None:
    import os

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    m = measure_titan_tp(GRID["tiny"], tensor=2, micro_batch_size=2, seq_len=128,
                         checkpointing=checkpointing, backend="gloo", rank=rank)
    results.put((rank, m.saved_for_backward))


def check_gloo(port: int = 29541) -> dict[str, list[int]]:
    """The fake process group checked against a real one: the GQA shape at TP 2 (b=2,
    s=128, bf16) run by two gloo processes, without and with full checkpointing; each rank's
    saved-for-backward bytes, by rank."""
    mp = importlib.import_module("torch.multiprocessing")
    out: dict[str, list[int]] = {}
    for i, ckpt in enumerate(("none", "full")):
        results = mp.get_context("spawn").SimpleQueue()
        mp.spawn(_gloo_rank, args=(port + i, ckpt, results), nprocs=2)
        got = dict(results.get() for _ in range(2))
        out[ckpt] = [got[0], got[1]]
    return out


def grid(b: int = 2, s: int = 128) -> list[dict[str, Any]]:
    """Measure `scaleplan.reference.titan_measure.GRID`'s shapes with sequence parallelism:
    the GQA one at TP 2, the MHA one at TP 2 and 4 (torchtitan's fused ``wqkv`` is laid out
    per KV head, so TP must divide ``n_kv_head``), bf16 and fp32 parameters, without and with
    full checkpointing; and without sequence parallelism, bf16, the GQA shape at TP 2 and the
    MHA one at TP 4."""
    rows = []
    for shape, tensor in (("tiny", 2), ("mha", 2), ("mha", 4)):
        cfg = GRID[shape]
        for precision in ("bf16-mixed", "32-true"):
            for ckpt in ("none", "full"):
                m = measure_titan_tp(cfg, tensor=tensor, micro_batch_size=b, seq_len=s,
                                     checkpointing=ckpt, precision=precision)
                rows.append({"shape": shape, **json.loads(m.model_dump_json())})
    for shape, tensor in (("tiny", 2), ("mha", 4)):  # torchtitan's SP switched off
        for ckpt in ("none", "full"):
            m = measure_titan_tp(GRID[shape], tensor=tensor, micro_batch_size=b, seq_len=s,
                                 checkpointing=ckpt, sequence_parallel=False)
            rows.append({"shape": shape, **json.loads(m.model_dump_json())})
    return rows


def main(argv: list[str] | None = None) -> int:
    """``--write``: measure the grid and write the JSON."""
    def build() -> dict[str, Any]:
        losses = [{"tokens": 256, "vocab_size": v, "tensor": t, "precision": p,
                   **measure_loss_parallel(256, v, tensor=t, precision=p)}
                  for v, t in ((256, 2), (384, 4), (250, 4)) for p in ("bf16-mixed", "32-true")]
        return {"rows": grid(), "loss_parallel": losses, "gloo": check_gloo()}

    return report_main("scaleplan.reference.titan_tp_measure", JSON_PATH, argv, build)


if __name__ == "__main__":
    raise SystemExit(main())

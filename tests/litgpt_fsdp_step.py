"""Harness: whole micro-batches of litgpt's full fine-tune under FSDP1, measured on CPU.

``python -m tests.litgpt_fsdp_step`` runs litgpt 0.5.13's GPT (small Llama-style configs,
`CASES`) under torch's ``FullyShardedDataParallel`` as Lightning Fabric's ``FSDPStrategy``
wraps it for ``litgpt finetune_full`` (one unit per ``Block``, ``FULL_SHARD``,
``use_orig_params=True``, bf16 parameters, Fabric's bf16-true ``MixedPrecision``, every
``Block`` in a non-reentrant ``checkpoint_wrapper``) on rank 0 of a fake process group of 2 or
4 ranks, with foreach AdamW and ``finetune/full.py``'s loop (Fabric's fp32 logits held by the
loop, litgpt's chunked loss). After a warm-up step it measures, each after a ``no_sync()``
micro-batch (every unsharded gradient resident): another ``no_sync()`` micro-batch, and the
step's last, which reduce-scatters, with the optimizer step; and a step without accumulation
(no gradient when it starts). FSDP1 frees and re-allocates its flat parameters by resizing
their storages (``torch.distributed.fsdp._flat_param._alloc_storage`` / ``_free_storage``);
those resizes are counted (`scaleplan.reference.titan_fsdp_step`'s tracker), and the harness
keeps no reference to what it measures. It writes tests/data/litgpt_fsdp_step.json (peaks, per
phase too, resident bytes, the storages live at the peak), replayed without torch by
tests/test_litgpt_fsdp_step.py.
"""

from __future__ import annotations

import gc
import importlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["CASES", "PATH", "measure"]

PATH = Path(__file__).parent / "data" / "litgpt_fsdp_step.json"
_LLAMA = {"n_head": 4, "n_kv_head": 2, "mlp_hidden": 448, "block_size": 256, "bias": False,
          "mlp": "swiglu", "norm": "rmsnorm", "position": "rope", "tie_embeddings": False}
CASES: dict[str, dict[str, Any]] = {
    # distinct sizes (b s 192, d 160, F 448, V 384): a block's recompute peaks
    "blocks": {"config": {**_LLAMA, "n_layer": 3, "n_embd": 160, "vocab_size": 384},
               "world": 4, "micro_batch_size": 2, "seq_len": 96},
    # a large vocabulary: the root unit's end peaks (Gemma's shape of problem)
    "wide-vocab": {"config": {**_LLAMA, "n_layer": 4, "n_embd": 192, "vocab_size": 3000},
                   "world": 2, "micro_batch_size": 1, "seq_len": 64},
    # few tokens: a block's end peaks, its weight gradients and their flat copy
    "few-tokens": {"config": {**_LLAMA, "n_layer": 2, "n_embd": 128, "vocab_size": 2000},
                   "world": 4, "micro_batch_size": 1, "seq_len": 32},
}


def _model(config: dict[str, Any], seq_len: int) -> Any:
    import torch
    from torch.distributed.fsdp import FullyShardedDataParallel, MixedPrecision, ShardingStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from scaleplan.model.config import GPTConfig
    from scaleplan.reference.litgpt_measure import litgpt_config

    litgpt: Any = importlib.import_module("litgpt")
    block = importlib.import_module("litgpt.model").Block
    model = litgpt.GPT(litgpt.Config(**litgpt_config(GPTConfig.model_validate(config))))
    model = model.to(torch.bfloat16)
    model.max_seq_length = seq_len
    bf16 = torch.bfloat16
    model = FullyShardedDataParallel(
        model, auto_wrap_policy=ModuleWrapPolicy({block}), use_orig_params=True,
        device_id=torch.device("cpu"), sharding_strategy=ShardingStrategy.FULL_SHARD,
        mixed_precision=MixedPrecision(param_dtype=bf16, reduce_dtype=bf16, buffer_dtype=bf16))
    wrapper: Any = importlib.import_module(
        "torch.distributed.algorithms._checkpoint.checkpoint_wrapper")
    wrapper.apply_activation_checkpointing(model, checkpoint_wrapper_fn=wrapper.checkpoint_wrapper,
                                           check_fn=lambda m: isinstance(m, block))
    return model


def _micro_batch(model: Any, ids: Any, held: list[Any], tracker: Any = None) -> None:
    from scaleplan.reference.litgpt_measure import fabric_output, precision_context

    utils: Any = importlib.import_module("litgpt.utils")
    if tracker:
        tracker.set_phase("forward")
    with precision_context("bf16-true"):
        out = model(ids)
    held[:] = [fabric_output(out, "bf16-true")]  # the loop's ``logits`` is rebound here
    del out
    loss = utils.chunked_cross_entropy(held[0][..., :-1, :], ids[..., 1:])
    if tracker:
        tracker.set_phase("backward")
    loss.backward()


def _measure(case: dict[str, Any], sync: bool, fresh: bool = False) -> dict[str, Any]:
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel

    from scaleplan.reference.titan_fsdp_step import PeakTracker
    from scaleplan.reference.tracking import storage_key

    dist.init_process_group("fake", rank=0, world_size=case["world"])
    try:
        torch.manual_seed(0)
        model = _model(case["config"], case["seq_len"])
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
        ids = torch.randint(0, case["config"]["vocab_size"],
                            (case["micro_batch_size"], case["seq_len"]))
        held: list[Any] = []
        with model.no_sync():
            _micro_batch(model, ids, held)
        _micro_batch(model, ids, held)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if not fresh:
            with model.no_sync():
                _micro_batch(model, ids, held)  # every unsharded gradient resident
        gc.collect()
        flat = [h._handle.flat_param for h in FullyShardedDataParallel.fsdp_modules(model)
                if h._handle is not None]
        kept = [*model.parameters(), *(p.grad for p in model.parameters() if p.grad is not None),
                *model.buffers(), ids, *flat, *(f.grad for f in flat if f.grad is not None),
                *(v for st in opt.state.values() for v in st.values() if torch.is_tensor(v))]
        tracker = PeakTracker()
        resident = tracker.add_resident(kept)
        keys = {storage_key(t) for t in kept}
        del kept, flat  # no reference of ours may keep a gradient FSDP1 drops alive
        module: Any = importlib.import_module("torch.distributed.fsdp._flat_param")
        alloc, free = module._alloc_storage, module._free_storage

        def told_alloc(t: Any, size: Any) -> None:
            alloc(t, size)
            tracker.resized(t)

        def told_free(t: Any) -> None:
            free(t)
            tracker.resized(t)

        module._alloc_storage, module._free_storage = told_alloc, told_free
        try:
            with tracker:
                if sync:  # the step's last micro-batch, then the optimizer step
                    _micro_batch(model, ids, held, tracker)
                    tracker.set_phase("optimizer")
                    opt.step()
                else:
                    with model.no_sync():
                        _micro_batch(model, ids, held, tracker)
        finally:
            module._alloc_storage, module._free_storage = alloc, free
        live: Counter[str] = Counter()
        for n, what in (v for k, v in tracker.at_peak.items() if k not in keys):
            live[what] += n
        return {"sync": sync, "fresh": fresh, "resident": resident, "peak": tracker.peak,
                "phase_peaks": dict(tracker.phase_peaks),
                "peak_phase": tracker.peak_phase, "at_peak": dict(live.most_common())}
    finally:
        dist.destroy_process_group()


def measure() -> dict[str, Any]:
    """Both micro-batches of every case, with the versions measured."""
    import torch

    return {"torch": torch.__version__, "litgpt": "0.5.13",
            "cases": [{"name": name, **case, **_measure(case, sync, fresh)}
                      for name, case in CASES.items()
                      for sync, fresh in ((False, False), (True, False), (True, True))]}


if __name__ == "__main__":
    PATH.write_text(json.dumps(measure(), indent=1) + "\n")
    print(f"wrote {PATH}")

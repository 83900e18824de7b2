"""Harness: what FSDP1's ``no_sync()`` leaves in each unit's gradient, measured on CPU.

``python -m tests.litgpt_no_sync`` runs litgpt 0.5.13's GPT (a tiny Llama-style config) under
torch's ``FullyShardedDataParallel`` as Lightning Fabric's ``FSDPStrategy`` wraps it for
``litgpt finetune_full`` (one unit per ``Block``, ``FULL_SHARD``, ``use_orig_params=True``,
bf16 parameters) in 2 gloo processes: one backward inside ``no_sync()`` (an accumulating
micro-batch, litgpt/finetune/full.py:280-281) and one outside it. It writes
tests/data/litgpt_no_sync.json: per FSDP unit, the elements of its local flat-parameter shard
and of its ``.grad`` after each backward. tests/test_litgpt_fsdp_values.py replays it without
torch against `scaleplan.memory.litgpt_terms.litgpt_no_sync_gradient_bytes`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["LITGPT_CONFIG", "PATH", "WORLD", "measure"]

PATH = Path(__file__).parent / "data" / "litgpt_no_sync.json"
WORLD = 2
LITGPT_CONFIG: dict[str, Any] = dict(
    n_layer=2, n_head=2, n_query_groups=2, n_embd=8, vocab_size=16, padded_vocab_size=16,
    bias=False, norm_class_name="RMSNorm", mlp_class_name="LLaMAMLP", intermediate_size=32,
    rotary_percentage=1.0, parallel_residual=False, block_size=64)


def _rank(rank: int, out: Any) -> None:
    import torch
    import torch.distributed as dist
    from litgpt.config import Config
    from litgpt.model import GPT, Block
    from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29541")
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.manual_seed(0)
    model = GPT(Config(**LITGPT_CONFIG)).to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    fsdp = FullyShardedDataParallel(model, auto_wrap_policy=ModuleWrapPolicy({Block}),
                                    use_orig_params=True, device_id=torch.device("cpu"),
                                    sharding_strategy=ShardingStrategy.FULL_SHARD)
    x = torch.randint(0, 16, (1, 16))

    dtypes: set[str] = set()

    def units() -> dict[str, tuple[int, int | None]]:
        found = {}
        for name, module in fsdp.named_modules():
            handle = module._handle if isinstance(module, FullyShardedDataParallel) else None
            if handle is not None:
                flat = handle.flat_param
                if flat.grad is not None:
                    dtypes.add(str(flat.grad.dtype).removeprefix("torch."))
                found[name or "root"] = (flat.numel(),
                                         None if flat.grad is None else flat.grad.numel())
        return found

    with fsdp.no_sync():
        fsdp(x).float().sum().backward()
    accumulating = units()
    fsdp(x).float().sum().backward()
    synced = units()
    if rank == 0:
        out.put({"torch": torch.__version__, "world": WORLD, "params": params,
                 "grad_dtypes": sorted(dtypes), "litgpt_config": LITGPT_CONFIG,
                 "after_no_sync": accumulating, "after_sync": synced})
    dist.destroy_process_group()


def measure() -> dict[str, Any]:
    """Spawn the 2 gloo ranks and return rank 0's record."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_rank, args=(queue,), nprocs=WORLD, start_method="spawn")
    record: dict[str, Any] = queue.get()
    record["python"] = sys.version.split()[0]
    return record


if __name__ == "__main__":
    PATH.write_text(json.dumps(measure(), indent=1) + "\n")
    print(f"wrote {PATH}")

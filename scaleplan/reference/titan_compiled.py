"""Measure what torchtitan's compiled Llama 3 blocks save for backward, on CPU.

torchtitan compiles each ``TransformerBlock`` on its own (``apply_compile`` in
``torchtitan/distributed/compile.py``: ``transformer_block.compile(backend="inductor",
fullgraph=True)``, after activation checkpointing has wrapped the block), so AOT autograd's
min-cut partitioner decides, per block, what the compiled forward keeps for backward; under
checkpointing the wrapper is traced into the same graph and the partitioner honours it (full:
only the block's inputs; per-op selective: the policy's MUST_SAVE tags).
`measure_titan_compiled` builds torchtitan's ``Llama3Model`` with SDPA attention
(`scaleplan.reference.titan_measure.titan_model`), in bf16 as FSDP2's mixed precision gathers it
or in fp32, applies torchtitan's own ``FullAC`` / ``SelectiveAC`` and its own ``apply_compile``
(``components=["model"]``: the blocks; the embedding, final norm, ``lm_head`` and loss stay
eager, as in the published runs of December 2024), runs one forward and torchtitan's
``cross_entropy_loss``, drops the logits and walks the autograd graph from the loss: each
block's ``CompiledFunctionBackward`` node holds what the partition saved
(`scaleplan.reference.compiled.saved_by_node`), the eager nodes their ``_saved_*`` tensors.
Every storage counts once, whole; parameters and buffers are left out (the token ids, the
targets and the positions count where a node saves them, as in the eager harness).

``python -m scaleplan.reference.titan_compiled --write`` measures the few cases of `CASES` and
writes ``tests/data/titan_compiled.json``, replayed without torch by
tests/test_titan_compiled.py.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import torch

from scaleplan.model.config import GPTConfig
from scaleplan.reference.compiled import saved_by_node
from scaleplan.reference.titan_measure import GRID, apply_ac, titan_model
from scaleplan.reference.tracking import storage_key

__all__ = ["CASES", "JSON_PATH", "compile_blocks", "main", "measure_titan_compiled"]

JSON_PATH = Path("tests/data/titan_compiled.json")
CASES: tuple[tuple[str, str], ...] = tuple(
    (ckpt, dtype) for ckpt in ("none", "full", "selective") for dtype in ("bf16", "fp32"))
"""(checkpointing, parameter dtype) of the committed measurements, on `GRID`'s "tiny" shape."""


def compile_blocks(model: Any) -> None:
    """torchtitan's own ``apply_compile`` (blocks only, inductor, no tensor parallelism)."""
    compile_mod = importlib.import_module("torchtitan.distributed.compile")
    configs = importlib.import_module("torchtitan.config")
    config = configs.CompileConfig(enable=True, components=["model"])
    compile_mod.apply_compile(model, compile_config=config,
                              parallel_dims=types.SimpleNamespace(tp_enabled=False))


def _described(t: torch.Tensor) -> dict[str, Any]:
    return {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
            "nbytes": int(t.untyped_storage().nbytes())}


def measure_titan_compiled(cfg: GPTConfig, *, micro_batch_size: int, seq_len: int,
                           checkpointing: str = "none", dtype: str = "bf16",
                           seed: int = 0) -> dict[str, Any]:
    """Saved-for-backward bytes of one forward + loss of torchtitan's Llama 3 with SDPA and
    its blocks compiled: ``saved_for_backward`` (every storage once), ``compiled_blocks`` (the
    compiled nodes' share), ``eager`` (the rest) and ``block0`` (what the first block's
    compiled node saved, one entry per storage: shape, dtype, bytes)."""
    torch.manual_seed(seed)
    torch._dynamo.reset()
    model = titan_model(cfg, "sdpa")
    with torch.no_grad():
        model.init_states()
    if dtype == "bf16":  # FSDP2's gathered parameters: bf16, buffers unchanged
        for p in model.parameters():
            p.data = p.data.to(torch.bfloat16)
    apply_ac(model, checkpointing)
    model.train()
    loss_mod = importlib.import_module("torchtitan.components.loss")
    b, s = micro_batch_size, seq_len
    ids = torch.randint(0, cfg.vocab_size, (b, s))
    labels = torch.randint(0, cfg.vocab_size, (b, s))
    positions = torch.arange(s).repeat(b, 1)
    skip = {storage_key(t) for t in [*model.parameters(), *model.buffers()]}
    with warnings.catch_warnings(), \
            torch._inductor.config.patch(fx_graph_cache=False), \
            torch._functorch.config.patch(enable_autograd_cache=False):
        warnings.simplefilter("ignore")  # torch's own warnings while dynamo traces
        compile_blocks(model)
        pred = model(ids, positions=positions, attention_masks=None)
        loss = loss_mod.cross_entropy_loss(pred, labels)
        del pred
    seen: set[int] = set()
    total = compiled = 0
    first: list[dict[str, Any]] = []
    for node, tensors in reversed(saved_by_node(loss)):  # from the first block onwards
        is_compiled = "CompiledFunction" in type(node).__name__
        block: list[dict[str, Any]] = []
        for t in tensors:
            key = storage_key(t)
            if key in skip or key in seen:
                continue
            seen.add(key)
            n = int(t.untyped_storage().nbytes())
            total += n
            compiled += n if is_compiled else 0
            block.append(_described(t))
        if is_compiled and not first:
            first = block
    torch._dynamo.reset()
    return {"saved_for_backward": total, "compiled_blocks": compiled,
            "eager": total - compiled, "block0": first}


def main(argv: list[str] | None = None) -> int:
    """``--write``: measure `CASES` and write `JSON_PATH`; ``--case CKPT DTYPE``: one case."""
    parser = argparse.ArgumentParser(prog="python -m scaleplan.reference.titan_compiled")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--case", nargs=2, metavar=("CHECKPOINTING", "DTYPE"))
    args = parser.parse_args(argv)
    cases = [tuple(args.case)] if args.case else list(CASES)
    b, s, cfg = 2, 128, GRID["tiny"]
    rows = [{"shape": "tiny", "config": json.loads(cfg.model_dump_json()),
             "micro_batch_size": b, "seq_len": s, "checkpointing": ckpt, "dtype": dt,
             **measure_titan_compiled(cfg, micro_batch_size=b, seq_len=s,
                                      checkpointing=ckpt, dtype=dt)}
            for ckpt, dt in cases]
    meta = importlib.import_module("importlib.metadata")
    data = {"torch": torch.__version__, "torchtitan": meta.version("torchtitan"), "rows": rows}
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    if args.write:
        JSON_PATH.write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

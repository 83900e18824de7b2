"""Measure what a ``torch.compile``'d Hugging Face transformers model saves for backward, on CPU.

`measure_hf_compiled` builds the family's transformers causal LM (`build_hf_model`), compiles
it whole (``torch.compile(model)``, inductor, ``dynamic=False``), runs one forward with labels
(the model's own loss, transformers' ``ForCausalLMLoss``) and walks the autograd graph from the
loss (`scaleplan.reference.compiled.saved_by_node`): each ``CompiledFunctionBackward`` node holds
what AOT autograd's min-cut partitioner chose to save for its graph (a graph break gives
several), eager nodes their ``_saved_*`` tensors. Every storage counts once, whole; parameters,
buffers, the token ids and autocast's low-precision weight copies are set apart (as
`scaleplan.reference.compiled` does). Each saved value is listed with its shape and dtype so the
terms can be read off per operation.

``python -m scaleplan.reference.hf_compiled`` measures the grid and writes
tests/data/hf_compiled.json, replayed by tests/test_hf_compiled_memory.py.
"""

from __future__ import annotations

import itertools
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from scaleplan.memory.hf_terms import HF_FAMILIES, HFFamily
from scaleplan.model.config import GPTConfig
from scaleplan.reference.compiled import saved_by_node
from scaleplan.reference.hf_measure import GRID_SHAPES, HFPrecision, build_hf_model
from scaleplan.reference.tracking import storage_key

__all__ = ["HF_COMPILED_JSON", "VARIATION_JSON", "grid", "main", "measure_hf_compiled"]

HF_COMPILED_JSON = Path("tests/data/hf_compiled.json")
VARIATION_JSON = Path("tests/data/hf_compiled_variation.json")


def _is_weight_copy(t: torch.Tensor, params: list[torch.Tensor]) -> bool:
    """A 16-bit 2-d tensor equal to a parameter's cast (or its transpose): autocast's copy."""
    if t.dtype not in (torch.bfloat16, torch.float16) or t.dim() != 2:
        return False
    for p in params:
        if p.dtype == t.dtype or p.dim() != 2:
            continue
        for view in (t, t.t()):
            if view.shape == p.shape and torch.equal(view, p.detach().to(t.dtype)):
                return True
    return False


def measure_hf_compiled(cfg: GPTConfig, family: HFFamily, *, micro_batch_size: int,
                        seq_len: int, precision: HFPrecision = "32-true",
                        checkpointing: bool = False, seed: int = 0) -> dict[str, Any]:
    """Saved-for-backward bytes of one forward + loss of ``family``'s transformers model,
    compiled whole with inductor (SDPA attention): ``{"saved_for_backward": total,
    "autocast_weight_copies": bytes, "compiled_graphs": number of compiled functions,
    "saved": [(node type, shape, dtype, bytes), ...]}``."""
    torch.manual_seed(seed)
    torch._dynamo.reset()
    model = build_hf_model(cfg, family, "sdpa")
    model.train()
    if checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None)
        (enable or model.gradient_checkpointing_enable)()
    params = list(model.parameters())
    ids = torch.randint(0, cfg.vocab_size, (micro_batch_size, seq_len))
    skip = {storage_key(t) for t in [*params, *model.buffers(), ids]}
    compiled = torch.compile(model, dynamic=False)
    with torch._inductor.config.patch(fx_graph_cache=False), \
            torch._functorch.config.patch(enable_autograd_cache=False), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dynamo's and inductor's own, not about memory
        if precision == "bf16-mixed":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = compiled(input_ids=ids, labels=ids, use_cache=False).loss
        else:
            loss = compiled(input_ids=ids, labels=ids, use_cache=False).loss
        nodes = saved_by_node(loss)
    seen: set[int] = set()
    saved: list[tuple[str, list[int], str, int]] = []
    copies = 0
    for node, tensors in nodes:
        for t in tensors:
            key = storage_key(t)
            if key in skip or key in seen:
                continue
            seen.add(key)
            n = int(t.untyped_storage().nbytes())
            if precision == "bf16-mixed" and _is_weight_copy(t, params):
                copies += n
                continue
            saved.append((type(node).__name__, list(t.shape),
                          str(t.dtype).removeprefix("torch."), n))
    graphs = sum("CompiledFunction" in type(node).__name__ for node, _ in nodes)
    del loss, nodes
    torch._dynamo.reset()
    return {"saved_for_backward": sum(v[3] for v in saved), "autocast_weight_copies": copies,
            "compiled_graphs": graphs, "saved": saved}


def grid(families: tuple[str, ...] = HF_FAMILIES, *, b: int = 2, s: int = 48,
         n_layer: int = 2, checkpointing: tuple[bool, ...] = (False,)
         ) -> list[dict[str, Any]]:
    """Every family x precision (fp32, bf16 autocast) x ``checkpointing``; one row per case."""
    rows = []
    for family, prec, ckpt in itertools.product(families, ("32-true", "bf16-mixed"),
                                                checkpointing):
        cfg = GRID_SHAPES[family].replace(n_layer=n_layer)
        m = measure_hf_compiled(cfg, family,  # type: ignore[arg-type]
                                micro_batch_size=b, seq_len=s,
                                precision=prec, checkpointing=ckpt)  # type: ignore[arg-type]
        rows.append({"family": family, "precision": prec, "n_layer": n_layer,
                     "micro_batch_size": b,
                     "seq_len": s, "checkpointing": "full" if ckpt else "none", **m})
    return rows


def main(argv: list[str] | None = None) -> int:
    """Measure the grid (``[families...]``: 2 layers, 2 x 48 tokens) and write
    `HF_COMPILED_JSON`; with ``--variation``, 3 layers at 3 x 32 tokens to `VARIATION_JSON`."""
    args = list(argv if argv is not None else sys.argv[1:])
    variation = "--variation" in args
    families = tuple(a for a in args if a != "--variation") or HF_FAMILIES
    rows = grid(families, b=3, s=32, n_layer=3) if variation else grid(families)
    (VARIATION_JSON if variation else HF_COMPILED_JSON).write_text(
        json.dumps(rows, indent=1) + "\n")
    sys.stdout.write(json.dumps([{k: v for k, v in r.items() if k != "saved"}
                                 for r in rows]) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

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
tests/data/hf_compiled.json (``--variation``: tests/data/hf_compiled_variation.json), replayed by
tests/test_hf_compiled_memory.py; ``--page`` writes docs/validation/hf-compiled.md.
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
from scaleplan.reference.compiled import is_weight_copy, saved_by_node
from scaleplan.reference.hf_measure import GRID_SHAPES, HFPrecision, build_hf_model
from scaleplan.reference.tracking import storage_key

__all__ = ["HF_COMPILED_JSON", "PAGE", "VARIATION_JSON", "grid", "main", "measure_hf_compiled",
           "page"]

HF_COMPILED_JSON = Path("tests/data/hf_compiled.json")
VARIATION_JSON = Path("tests/data/hf_compiled_variation.json")


def _compiled_forward(model: Any, ids: torch.Tensor, precision: HFPrecision) -> Any:
    """The output (loss, logits) of one forward of ``torch.compile(model)`` (inductor, no
    compile caches: a hit would skip the partition), under bf16 autocast for "bf16-mixed"."""
    compiled: Any = torch.compile(model, dynamic=False)
    with torch._inductor.config.patch(fx_graph_cache=False), \
            torch._functorch.config.patch(enable_autograd_cache=False), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
        return compiled(input_ids=ids, labels=ids, use_cache=False)


def measure_hf_compiled(cfg: GPTConfig, family: HFFamily, *, micro_batch_size: int,
                        seq_len: int, precision: HFPrecision = "32-true",
                        checkpointing: bool = False, seed: int = 0) -> dict[str, Any]:
    """Saved-for-backward bytes of one forward + loss of ``family``'s transformers model,
    compiled whole with inductor (SDPA attention): ``{"saved_for_backward": total,
    "autocast_weight_copies": bytes, "compiled_graphs": number of compiled functions,
    "logits_saved": the returned logits are a saved storage (holding them adds nothing),
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dynamo's and inductor's own, not about memory
        out = _compiled_forward(model, ids, precision)
        loss, logits = out.loss, out.logits
        del out
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
            if precision == "bf16-mixed" and is_weight_copy(t, params):
                copies += n
                continue
            saved.append((type(node).__name__, list(t.shape),
                          str(t.dtype).removeprefix("torch."), n))
    graphs = sum("CompiledFunction" in type(node).__name__ for node, _ in nodes)
    logits_saved = storage_key(logits) in seen
    del loss, logits, nodes
    torch._dynamo.reset()
    return {"saved_for_backward": sum(v[3] for v in saved), "autocast_weight_copies": copies,
            "compiled_graphs": graphs, "logits_saved": logits_saved, "saved": saved}


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


PAGE = Path("docs/validation/hf-compiled.md")
_INTRO = """# Hugging Face transformers under torch.compile: saved-for-backward bytes

Measured by `scaleplan.reference.hf_compiled` (`python -m scaleplan.reference.hf_compiled`, and
`--variation` for the 3-layer rows): each row builds the family's transformers 5.25 model
(shapes in `scaleplan.reference.hf_measure.GRID_SHAPES`, real head dims), compiles it whole
(`torch.compile(model)`, inductor, CPU, SDPA, no dropout), runs one forward with labels (the
model's own `ForCausalLMLoss`, compiled with it) and counts the unique storages the compiled
function(s) and any eager node saved, parameters, buffers, the token ids and autocast's weight
copies excluded. `predicted` is `scaleplan.memory.hf_compiled_terms.hf_compiled_saved_terms`;
`eager terms` is the eager model (`scaleplan.memory.hf_terms`, token ids left out) for the same
case, to show what compiling changes. torch 2.13.0, transformers 5.25.0. Replayed torch-free by
tests/test_hf_compiled_memory.py.

{n} modelled cases (Llama, Qwen2, Mistral, Gemma; fp32 and bf16 autocast; 2 and 3 layers), largest
|error| {worst:.2%}. GPT-2 and GPT-NeoX were measured but are not modelled yet
(`compile=True` refuses them by name), nor gradient checkpointing (the harness reads saved
tensors through autograd's nodes, which would unpack, i.e. recompute, a checkpoint's).

What the partition keeps of transformers' code (read from the saved tensors' shapes and dtypes):

- RMSNorm: its fp32 input and fp32 rsqrt per token; the fp32 normalised input is recomputed.
- The linears' inputs once each, in the matmul dtype (no separate q/k/v or gate/up casts).
- Rotary cos/sin are recomputed; SDPA keeps q, k and v expanded to the query heads, its output
  and the fp32 log-sum-exp. The first layer keeps o_proj's input in place of the residual after
  attention; later layers read SDPA's output as o_proj's input (one storage).
- SwiGLU (Gemma: GeGLU): gate, up and their product (3 T f); the activation is recomputed.
- Gemma (one kv head): v kept unexpanded, k unexpanded in fp32 but expanded under bf16
  autocast; no first-layer exchange.
- The causal mask is materialised once (b x s x s, activation dtype), shared by the layers.
- The loss: the compiled `ForCausalLMLoss` does not keep fp32 logits: it saves the logits in
  the matmul dtype (bf16 under autocast), an fp32 max and log-sum-exp per token, the padded
  int64 labels and a 4-byte count.
- GPT-2 compiles into two graphs (a graph break); the other families into one.

"""


def _row(r: dict[str, Any]) -> tuple[str, float | None]:
    """One table line for a measured case and its error (None: not modelled)."""
    from scaleplan.memory.hf_compiled_terms import HF_COMPILED_FAMILIES, hf_compiled_saved_terms
    from scaleplan.memory.hf_terms import hf_saved_bytes

    cfg = GRID_SHAPES[r["family"]].replace(n_layer=r["n_layer"])
    b, s, measured = r["micro_batch_size"], r["seq_len"], r["saved_for_backward"]
    eager = hf_saved_bytes(cfg, b, s, precision=r["precision"], family=r["family"]) - b * s * 8
    pred, shown, err = "not modelled (refused)", "", None
    if r["family"] in HF_COMPILED_FAMILIES:
        p = sum(hf_compiled_saved_terms(cfg, b, s, precision=r["precision"]).values())
        err = p / measured - 1
        pred, shown = f"{p:,}", f"{err:+.2%}"
    return (f"| {r['family']} | {r['precision']} | {r['n_layer']} | {b} x {s} | "
            f"{r['compiled_graphs']} | {measured:,} | {pred} | {shown} | "
            f"{eager / measured - 1:+.1%} |"), err


def page() -> str:
    """docs/validation/hf-compiled.md from the committed measurements."""
    rows = [r for path in (HF_COMPILED_JSON, VARIATION_JSON)
            for r in json.loads(path.read_text())]
    lines, errors = zip(*(_row(r) for r in rows), strict=True)
    known = [abs(e) for e in errors if e is not None]
    head = _INTRO.format(n=len(known), worst=max(known))
    table = ("| family | precision | layers | b x s | graphs | measured | predicted | error "
             "| eager terms |\n|---|---|---:|---|---:|---:|---:|---:|---:|\n")
    return head + table + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Measure the grid (``[families...]``: 2 layers, 2 x 48 tokens) and write
    `HF_COMPILED_JSON`; with ``--variation``, 3 layers at 3 x 32 tokens to `VARIATION_JSON`;
    with ``--page``, docs/validation/hf-compiled.md from both."""
    args = list(argv if argv is not None else sys.argv[1:])
    if "--page" in args:
        PAGE.write_text(page())
        return 0
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

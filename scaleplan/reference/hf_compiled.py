"""Measure what a ``torch.compile``'d Hugging Face transformers model saves for backward, on CPU.

`measure_hf_compiled` builds the family's transformers causal LM (`build_hf_model`), compiles
it whole (``torch.compile(model)``, inductor, ``dynamic=False``), runs one step to compile the
forward and backward graphs, then one forward with labels (the model's own loss, transformers'
``ForCausalLMLoss``) and walks the autograd graph from the loss
(`scaleplan.reference.compiled.saved_by_node`): each ``CompiledFunctionBackward`` node holds
what AOT autograd's min-cut partitioner chose to save for its graph (a graph break gives
several), eager nodes their ``_saved_*`` tensors. Every storage counts once, whole; parameters,
buffers and autocast's low-precision weight copies are set apart (as
`scaleplan.reference.compiled` does); the token ids count, as the embedding's backward keeps
them. Each saved value is listed with its shape, dtype, node name in the partitioned graph and
the module that produced it (kept by a post-grad pass that changes nothing), so the terms can be
read off per operation.

``python -m scaleplan.reference.hf_compiled`` measures the grid and writes
tests/data/hf_compiled.json (``--variation``: tests/data/hf_compiled_variation.json,
``--checkpointing``: tests/data/hf_compiled_checkpointing.json, ``--dropout``: every dropout
probability 0.1, with and without checkpointing, tests/data/hf_compiled_dropout.json), replayed by
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

__all__ = ["CHECKPOINTING_JSON", "DROPOUT_GQA_JSON", "DROPOUT_JSON", "HF_COMPILED_JSON", "PAGE",
           "VARIATION_JSON", "grid", "main", "measure_hf_compiled", "page"]

HF_COMPILED_JSON = Path("tests/data/hf_compiled.json")
VARIATION_JSON = Path("tests/data/hf_compiled_variation.json")
CHECKPOINTING_JSON = Path("tests/data/hf_compiled_checkpointing.json")
DROPOUT_JSON = Path("tests/data/hf_compiled_dropout.json")
DROPOUT_GQA_JSON = Path("tests/data/hf_compiled_dropout_gqa.json")
# (precision, query heads, kv heads, head_dim) of Llama's code with dropout: what SDPA's math
# path keeps of q, k and v changes with the query heads per kv head
_GQA_SHAPES = (("bf16-mixed", 8, 4, 16), ("bf16-mixed", 8, 2, 16), ("32-true", 8, 2, 16),
               ("32-true", 8, 1, 16), ("bf16-mixed", 16, 2, 8))


class _Partitions:
    """A post-grad pass that changes nothing and keeps every graph inductor compiles: the
    partitioned forward graphs (whose outputs after the user's are the values saved for
    backward, each node carrying the module that produced it) and the backward graphs (whose
    placeholders other than ``tangents_*`` are those saved values, in the order a compiled
    function's ``saved_tensors`` lists them)."""

    def __init__(self) -> None:
        self.graphs: list[Any] = []

    def __call__(self, graph: Any) -> None:
        self.graphs.append(graph)

    def names(self, n_saved: int, used: set[int]) -> list[tuple[str, str]]:
        """(node name, module) of the ``n_saved`` values a compiled function saved: the first
        backward graph not in ``used`` taking that many, the modules from its forward graph."""
        for i, g in enumerate(self.graphs):
            inputs = [n.name for n in g.nodes if n.op == "placeholder"]
            saved = [name for name in inputs if not name.startswith("tangents")]
            if i in used or len(saved) != n_saved or len(saved) == len(inputs):
                continue
            used.add(i)
            return [(name, self._module(name, saved)) for name in saved]
        return [("", "")] * n_saved

    def _module(self, name: str, saved: list[str]) -> str:
        """The module that produced ``name`` in the forward graph that outputs most of
        ``saved`` (a checkpoint's RNG states are renamed between the two graphs)."""
        def outputs(g: Any) -> dict[str, Any]:
            out = next(n for n in g.nodes if n.op == "output").args[0]
            return {o.name: o for o in out if hasattr(o, "name")}

        best = max(self.graphs, key=lambda g: len(set(outputs(g)) & set(saved)))
        node = outputs(best).get(name)
        stack = list(node.meta.get("nn_module_stack", {}).values()) if node is not None else []
        return str(stack[-1][0]).removeprefix("L['self'].") if stack else ""


def _live_tensors() -> dict[int, torch.Tensor]:
    """One tensor per storage of every live CPU tensor a Python object references."""
    import gc

    gc.collect()
    found: dict[int, torch.Tensor] = {}
    for obj in gc.get_objects():
        if type(obj) in (torch.Tensor, torch.nn.Parameter) and obj.device.type == "cpu":
            found.setdefault(storage_key(obj), obj)
    return found


def measure_hf_compiled(cfg: GPTConfig, family: HFFamily, *, micro_batch_size: int,
                        seq_len: int, precision: HFPrecision = "32-true",
                        checkpointing: bool = False, seed: int = 0) -> dict[str, Any]:
    """Saved-for-backward bytes of one forward + loss of ``family``'s transformers model,
    compiled whole with inductor (SDPA attention): ``{"saved_for_backward": total,
    "autocast_weight_copies": bytes, "compiled_graphs": number of compiled functions,
    "logits_saved": the returned logits are a saved storage (holding them adds nothing),
    "token_ids_saved": the embedding's backward keeps the caller's token ids (counted),
    "saved": [(node type, shape, dtype, bytes, partition node name, module), ...]}``.

    ``checkpointing``: ``activation_checkpointing_enable()`` before compiling. Where dynamo
    traces the checkpoint into the graph the compiled function saves what the region keeps;
    where it does not (the layers then run eagerly under the checkpoint) the eager nodes'
    saved tensors are not unpacked (that would rerun the layer) and what the checkpoints'
    closures hold is counted instead (the `_live_tensors` new since the first step, node type
    ``"checkpoint"``).
    """
    torch.manual_seed(seed)
    torch._dynamo.reset()
    model = build_hf_model(cfg, family, "sdpa")
    model.train()
    if checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None)
        (enable or model.gradient_checkpointing_enable)()
    params = list(model.parameters())
    ids = torch.randint(0, cfg.vocab_size, (micro_batch_size, seq_len))
    skip = {storage_key(t) for t in [*params, *model.buffers()]}
    partitions = _Partitions()
    with warnings.catch_warnings(), \
            torch._inductor.config.patch(fx_graph_cache=False,
                                         post_grad_custom_post_pass=partitions), \
            torch._functorch.config.patch(enable_autograd_cache=False):
        warnings.simplefilter("ignore")  # dynamo's and inductor's own, not about memory
        compiled: Any = torch.compile(model, dynamic=False)
        # a first step compiles the forward and backward graphs (no caches: a hit would skip
        # the partition); the second, measured, runs them
        _forward(compiled, ids, precision).loss.backward()
        model.zero_grad(set_to_none=True)
        before = _live_tensors() if checkpointing else {}
        torch.manual_seed(seed)
        out = _forward(compiled, ids, precision)
        loss, logits = out.loss, out.logits
        del out
        nodes = _by_node(loss, unpack_eager=not checkpointing)
        if checkpointing:
            kept = before.keys() | {storage_key(t) for _, ts in nodes for t in ts}
            nodes.append(("checkpoint", [t for key, t in _live_tensors().items()
                                         if key not in kept and t is not ids
                                         and key not in {storage_key(loss), storage_key(logits)}]))
    return _count(nodes, partitions, params, skip, ids, logits, precision)


def _forward(compiled: Any, ids: torch.Tensor, precision: str) -> Any:
    """One forward with labels (bf16 autocast for "bf16-mixed")."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
        return compiled(input_ids=ids, labels=ids, use_cache=False)


def _by_node(loss: torch.Tensor, *, unpack_eager: bool) -> list[tuple[str, list[torch.Tensor]]]:
    """(autograd node type, tensors it saved) for every node behind ``loss`` (`saved_by_node`;
    with ``unpack_eager`` False, only the compiled functions' saved tensors)."""
    return [(type(node).__name__, tensors)
            for node, tensors in saved_by_node(loss, unpack_eager=unpack_eager)]


def _count(nodes: list[tuple[str, list[torch.Tensor]]], partitions: _Partitions,
           params: list[torch.Tensor], skip: set[int], ids: torch.Tensor, logits: torch.Tensor,
           precision: str) -> dict[str, Any]:
    """The measurement's dict from the saved tensors by node, once per storage, named."""
    seen: set[int] = set()
    saved: list[tuple[str, list[int], str, int, str, str]] = []
    copies, used = 0, set[int]()
    for kind, tensors in nodes:
        names = (partitions.names(len(tensors), used) if "CompiledFunction" in kind
                 else [("", "")] * len(tensors))
        for t, (name, module) in zip(tensors, names, strict=True):
            key = storage_key(t)
            if key in skip or key in seen:
                continue
            seen.add(key)
            n = int(t.untyped_storage().nbytes())
            if precision == "bf16-mixed" and is_weight_copy(t, params):
                copies += n
                continue
            saved.append((kind, list(t.shape), str(t.dtype).removeprefix("torch."), n, name,
                          module))
    graphs = sum("CompiledFunction" in kind for kind, _ in nodes)
    torch._dynamo.reset()
    return {"saved_for_backward": sum(v[3] for v in saved), "autocast_weight_copies": copies,
            "compiled_graphs": graphs, "logits_saved": storage_key(logits) in seen,
            "token_ids_saved": storage_key(ids) in seen, "saved": saved}


def grid(families: tuple[str, ...] = HF_FAMILIES, *, b: int = 2, s: int = 48,
         n_layer: int = 2, checkpointing: tuple[bool, ...] = (False,), dropout: float = 0.0
         ) -> list[dict[str, Any]]:
    """Every family x precision (fp32, bf16 autocast) x ``checkpointing``, every dropout
    probability ``dropout`` (`scaleplan.reference.hf_measure.hf_config`); one row per case."""
    rows = []
    for family, prec, ckpt in itertools.product(families, ("32-true", "bf16-mixed"),
                                                checkpointing):
        cfg = GRID_SHAPES[family].replace(n_layer=n_layer, dropout=dropout)
        m = measure_hf_compiled(cfg, family,  # type: ignore[arg-type]
                                micro_batch_size=b, seq_len=s,
                                precision=prec, checkpointing=ckpt)  # type: ignore[arg-type]
        rows.append({"family": family, "precision": prec, "n_layer": n_layer,
                     "micro_batch_size": b,
                     "seq_len": s, "checkpointing": "full" if ckpt else "none",
                     "dropout": dropout, **m})
    return rows


PAGE = Path("docs/validation/hf-compiled.md")
_INTRO = """# Hugging Face transformers under torch.compile: saved-for-backward bytes

Measured by `scaleplan.reference.hf_compiled` (`python -m scaleplan.reference.hf_compiled`,
`--variation` for the 3-layer rows, `--checkpointing` for the checkpointed ones): each row builds
the family's transformers 5.25 model (shapes in `scaleplan.reference.hf_measure.GRID_SHAPES`,
real head dims), compiles it whole (`torch.compile(model)`, inductor, CPU, SDPA, no dropout
except the `--dropout` rows, where every dropout probability is 0.1; with checkpointing,
`activation_checkpointing_enable()` first), runs one step to compile the forward and backward
graphs, then one forward with labels (the model's own `ForCausalLMLoss`,
compiled with it), and counts the unique storages the compiled function(s) saved, parameters,
buffers and autocast's weight copies excluded, the token ids included (the embedding's backward
keeps them). Where dynamo runs checkpointed layers eagerly (Llama) the eager nodes are not
unpacked (that would rerun the layer): the tensors the checkpoints' closures hold are counted
instead. Each saved value is named from the partition (`saved` in the JSON: the node's name in
the partitioned graph and its module). `predicted` is
`scaleplan.memory.hf_compiled_terms.hf_compiled_saved_terms` (RNG states at their CPU size);
`eager terms` is the eager model (`scaleplan.memory.hf_terms`) for the same case, to show what
compiling changes. torch 2.13.0, transformers 5.25.0. Replayed torch-free by
tests/test_hf_compiled_memory.py and tests/test_hf_compiled_dropout.py.

{n} cases (Llama, Qwen2, Mistral, Gemma, GPT-2, GPT-NeoX; fp32 and bf16 autocast; 2 and 3 layers;
Llama and GPT-2 with every layer checkpointed; dropout 0 and 0.1), largest |error| {worst:.2%}:
GPT-2 at 3 x 32 tokens without dropout, whose partition keeps the first ln_1's input as the
token and position embeddings' outputs and its mean (s d 4 + T 4 more than the x_hat it keeps
at 2 x 48), and Llama in fp32 at 3 x 32 tokens with dropout, whose partition keeps the math
attention's fp32 b x a x s x s constant once; every other case exact.

What the partition keeps of transformers' code (read from the saved values' names and shapes):

- RMSNorm: its fp32 input and fp32 rsqrt per token; the fp32 normalised input is recomputed.
  LayerNorm (GPT-2, GPT-NeoX): its fp32 x_hat and rstd / d; GPT-NeoX's two LayerNorms of one
  input share them, and its first layer keeps its input with the mean and rstd instead.
- The linears' inputs once each, in the matmul dtype (no separate q/k/v or gate/up casts;
  GPT-2: two of its three T x d Conv1D inputs, GPT-NeoX: all three).
- Rotary cos/sin are recomputed; SDPA keeps q, k and v expanded to the query heads, its output
  and the fp32 log-sum-exp. The first layer keeps o_proj's input in place of the residual after
  attention; later layers read SDPA's output as o_proj's input (one storage). GPT-2 and
  GPT-NeoX keep the fused qkv projection's output (SDPA reads views of it); GPT-NeoX's partial
  rotary adds the rotated q and k (new tensors).
- SwiGLU (Gemma: GeGLU): gate, up and their product (3 T f); the activation is recomputed.
  GELU MLPs: the up projection's and the activation's outputs (2 T f): gelu_new's tanh chain
  is recomputed.
- Gemma (one kv head): v kept unexpanded, k unexpanded in fp32 but expanded under bf16
  autocast; no first-layer exchange.
- The causal mask is materialised once (b x s x s, activation dtype), shared by the layers.
- The loss: the compiled `ForCausalLMLoss` does not keep fp32 logits: it saves the logits in
  the matmul dtype (bf16 under autocast), an fp32 max and log-sum-exp per token, the padded
  int64 labels and a 4-byte count.
- GPT-2 compiles into two graphs (a graph break before the loss); the other families into one.
- Checkpointing: dynamo traces GPT-2's checkpoints (each block's input and an RNG state per
  region, as compiled nanoGPT); Llama's checkpointed layers run eagerly between compiled
  pieces (embedding, mask, rotary tables, final norm, head and loss), each keeping its input,
  the shared bool mask, cos/sin and position ids, and a stashed CPU RNG state.
- Dropout 0.1: each `nn.Dropout` keeps a bool mask (`gt`); SDPA with dropout runs its math path
  on CPU, keeping its own q, k and v, the fp32 softmax, a bool mask and (fp32 only) the dropped
  probabilities, no log-sum-exp and no causal mask. Checkpointed GPT-2 keeps inductor's seeds
  (one per random op) instead of RNG states, and the math attention's fp32 constant once;
  checkpointed Llama keeps what it keeps without dropout.

"""


def _row(r: dict[str, Any]) -> tuple[str, float | None]:
    """One table line for a measured case and its error (None: not modelled)."""
    from scaleplan.memory.hf_compiled_terms import HF_COMPILED_FAMILIES, hf_compiled_saved_terms
    from scaleplan.memory.hf_terms import hf_saved_bytes

    cfg = GRID_SHAPES[r["family"]].replace(n_layer=r["n_layer"], dropout=r.get("dropout", 0.0))
    b, s, measured = r["micro_batch_size"], r["seq_len"], r["saved_for_backward"]
    ckpt = r["checkpointing"]
    eager = hf_saved_bytes(cfg, b, s, precision=r["precision"], family=r["family"],
                           checkpointing=ckpt == "full")
    pred, shown, err = "not modelled (refused)", "", None
    if r["family"] in HF_COMPILED_FAMILIES:
        p = sum(hf_compiled_saved_terms(cfg, b, s, precision=r["precision"],
                                        checkpointing=ckpt, device="cpu").values())
        err = p / measured - 1
        pred, shown = f"{p:,}", f"{err:+.2%}"
    return (f"| {r['family']} | {r['precision']} | {r['n_layer']} | {b} x {s} | {ckpt} | "
            f"{r.get('dropout', 0.0)} | "
            f"{r['compiled_graphs']} | {measured:,} | {pred} | {shown} | "
            f"{eager / measured - 1:+.1%} |"), err


def page() -> str:
    """docs/validation/hf-compiled.md from the committed measurements."""
    rows = [r for path in (HF_COMPILED_JSON, VARIATION_JSON, CHECKPOINTING_JSON, DROPOUT_JSON)
            for r in json.loads(path.read_text())]
    lines, errors = zip(*(_row(r) for r in rows), strict=True)
    known = [abs(e) for e in errors if e is not None]
    head = _INTRO.format(n=len(known), worst=max(known))
    table = ("| family | precision | layers | b x s | checkpointing | dropout | graphs | "
             "measured | predicted | error | eager terms |\n"
             "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|\n")
    return head + table + "\n".join(lines) + "\n"


def _dropout_grid(families: tuple[str, ...], p: float = 0.1) -> list[dict[str, Any]]:
    """`main`'s ``--dropout`` rows: ``families`` at the grid's shape; those whose checkpointing
    is modelled (GPT-2, Llama) also checkpointed, and at 3 layers, 3 x 32 tokens, with and
    without checkpointing; GPT-2, Llama and GPT-NeoX at 3 layers and micro-batch 1 (1 x 40
    tokens: reshapes to SDPA's heads are views there)."""
    both = tuple(f for f in families if f in ("gpt2", "llama"))
    one = tuple(f for f in families if f in ("gpt2", "llama", "gpt_neox"))
    return (grid(families, dropout=p) + grid(both, checkpointing=(True,), dropout=p)
            + grid(both, b=3, s=32, n_layer=3, checkpointing=(False, True), dropout=p)
            + grid(one, b=1, s=40, n_layer=3, dropout=p))


def _gqa_rows(p: float = 0.1) -> list[dict[str, Any]]:
    """`main`'s ``--dropout-gqa`` rows: Llama's grid shape at `_GQA_SHAPES`, dropout ``p``."""
    rows = []
    for prec, a, k, h in _GQA_SHAPES:
        cfg = GRID_SHAPES["llama"].replace(n_head=a, n_kv_head=k, head_dim=h, dropout=p)
        m = measure_hf_compiled(cfg, "llama", micro_batch_size=2, seq_len=48,
                                precision=prec)  # type: ignore[arg-type]
        rows.append({"family": "llama", "precision": prec, "n_layer": cfg.n_layer,
                     "micro_batch_size": 2, "seq_len": 48, "checkpointing": "none",
                     "dropout": p, "n_head": a, "n_kv_head": k, "head_dim": h, **m})
    return rows


def _measure(args: list[str]) -> tuple[list[dict[str, Any]], Path]:
    """`main`'s rows and file for its command-line ``args`` (other than ``--page``)."""
    families = tuple(a for a in args if not a.startswith("--"))
    if "--variation" in args:
        return grid(families or HF_FAMILIES, b=3, s=32, n_layer=3), VARIATION_JSON
    if "--dropout-gqa" in args:
        return _gqa_rows(), DROPOUT_GQA_JSON
    if "--dropout" in args:
        return _dropout_grid(families or HF_FAMILIES), DROPOUT_JSON
    if "--checkpointing" in args:
        return grid(families or ("llama", "gpt2"), checkpointing=(True,)), CHECKPOINTING_JSON
    return grid(families or HF_FAMILIES), HF_COMPILED_JSON


def main(argv: list[str] | None = None) -> int:
    """Measure the grid (``[families...]``: 2 layers, 2 x 48 tokens) and write
    `HF_COMPILED_JSON`; with ``--variation``, 3 layers at 3 x 32 tokens to `VARIATION_JSON`;
    with ``--checkpointing``, the grid's shape with every layer checkpointed (default
    families: Llama and GPT-2) to `CHECKPOINTING_JSON`; with ``--dropout``, every dropout
    probability 0.1 (`_dropout_grid`) to `DROPOUT_JSON`, with ``--dropout-gqa`` Llama's code at
    other query heads per kv head (`_GQA_SHAPES`) to `DROPOUT_GQA_JSON`; with ``--page``,
    docs/validation/hf-compiled.md from them."""
    args = list(argv if argv is not None else sys.argv[1:])
    if "--page" in args:
        PAGE.write_text(page())
        return 0
    rows, path = _measure(args)
    path.write_text(json.dumps(rows, indent=1) + "\n")
    sys.stdout.write(json.dumps([{k: v for k, v in r.items() if k != "saved"}
                                 for r in rows]) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

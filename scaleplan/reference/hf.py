"""Parameter counts of the model Hugging Face transformers builds for a ``config.json``.

`hf_meta_counts` builds the model on torch's meta device (shapes only, no memory, no weights
downloaded) and counts its parameters. The counts are measurements of transformers, an independent
source for scaleplan's formulas: tests/data/hf_configs/expected.json holds them for released
configs, written by ``python -m scaleplan.reference.hf tests/data/hf_configs``.

torch and transformers are imported inside the functions, so importing this module needs neither.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["KINDS", "build_meta_model", "hf_meta_counts", "main"]

# The kinds every parameter falls into; `per_module_kind` has each key, with 0 where none.
KINDS = (
    "token_embedding",
    "position_embedding",
    "attention",
    "mlp",
    "router",
    "experts",
    "norms",
    "lm_head",
    "other",
)
_ATTENTION_PARTS = frozenset({"attn", "self_attn", "attention", "self_attention"})
_MLP_PARTS = frozenset({"mlp", "feed_forward", "ffn", "fc1", "fc2"})  # fc1/fc2: OPT
# Where the routed-expert count lives, by model type (transformers' config attribute names).
_EXPERT_COUNT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")


def _transformers() -> Any:
    return importlib.import_module("transformers")


def _torch() -> Any:
    return importlib.import_module("torch")


def build_config(config: dict[str, Any]) -> Any:
    """The transformers config object for a ``config.json`` dict (the text config for gemma3)."""
    tf = _transformers()
    raw = dict(config)
    model_type = raw.pop("model_type")
    if model_type == "gemma3":
        return tf.Gemma3TextConfig(**raw.get("text_config", {}))
    return tf.AutoConfig.for_model(model_type, **raw)


def build_meta_model(config: dict[str, Any]) -> Any:
    """The causal-LM model transformers builds for ``config``, on the meta device."""
    tf = _transformers()
    cfg = build_config(config)
    with _torch().device("meta"):
        if config["model_type"] == "gemma3":
            return tf.Gemma3ForCausalLM(cfg)
        return tf.AutoModelForCausalLM.from_config(cfg)


def _routing(cfg: Any) -> tuple[int, int] | None:
    """(top_k, routed experts) from a built config, or None for a dense model."""
    n = next((getattr(cfg, k) for k in _EXPERT_COUNT_KEYS if getattr(cfg, k, None)), None)
    top_k = getattr(cfg, "num_experts_per_tok", None)
    if not n or not top_k:
        return None
    return int(top_k), int(n)


def _kind(path: str, owner: Any, input_ids: set[int], output_ids: set[int], pid: int) -> str:
    """The kind of one parameter: by identity for the embedding tables, else by where it lives."""
    parts = path.split(".")[:-1]  # the owning module's path
    if pid in input_ids:
        return "token_embedding"
    if pid in output_ids:
        return "lm_head"
    if "Norm" in type(owner).__name__:
        return "norms"
    if "experts" in parts:
        return "experts"
    if parts and parts[-1] == "gate":
        return "router"
    if type(owner).__name__.endswith("Embedding"):  # nn.Embedding, OPTLearnedPositionalEmbedding
        return "position_embedding"
    if _ATTENTION_PARTS.intersection(parts):
        return "attention"
    if _MLP_PARTS.intersection(parts):
        return "mlp"
    return "other"


def count_model(model: Any, routing: tuple[int, int] | None) -> dict[str, Any]:
    """The counts of a built model: see `hf_meta_counts`."""
    input_ids = {id(p) for p in model.get_input_embeddings().parameters()}
    head = model.get_output_embeddings()
    output_ids = {id(p) for p in head.parameters()} - input_ids if head is not None else set()
    owners = dict(model.named_modules())
    kinds = dict.fromkeys(KINDS, 0)
    for name, param in model.named_parameters():  # each parameter once: tied weights dedupe
        owner = owners[name.rpartition(".")[0]]
        kinds[_kind(name, owner, input_ids, output_ids, id(param))] += param.numel()
    total = sum(kinds.values())
    experts = kinds["experts"]
    active = None
    if routing is not None:
        top_k, n = routing
        active = total - experts + experts * top_k // n
    return {
        "total": total,
        "embedding": kinds["token_embedding"] + kinds["position_embedding"],
        "per_module_kind": kinds,
        "experts": experts,
        "active": active,
    }


def hf_meta_counts(config: dict[str, Any]) -> dict[str, Any]:
    """Count the parameters of the model transformers builds for a ``config.json`` dict.

    The model is ``AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))`` built under
    ``torch.device("meta")``; for the multimodal ``gemma3`` wrapper only the language model is
    built (``Gemma3ForCausalLM`` from ``text_config``): the vision tower and projector are left
    out. Only ``nn.Parameter`` tensors count; buffers (rotary ``inv_freq``, causal masks,
    DeepSeek-V3's ``e_score_correction_bias``) do not. A weight shared by two modules (a tied
    ``lm_head``) counts once.

    Returns a dict:

    - ``total``: every parameter.
    - ``embedding``: the token embedding table plus learned position tables (Kaplan et al.
      2020's embedding parameters); an untied ``lm_head`` is not in it.
    - ``per_module_kind``: the total split over `KINDS`: ``token_embedding`` (the input
      embedding), ``lm_head`` (the output embedding, when not tied), ``norms`` (every
      ``*Norm`` module, q/k norms included), ``experts`` (everything under a module named
      ``experts``: the routed experts, fused 3-D ``gate_up_proj``/``down_proj`` tensors in
      transformers 5; shared experts are under ``shared_expert(s)`` and count as ``mlp``),
      ``router`` (a module named ``gate``), ``position_embedding`` (any other ``*Embedding``
      module: GPT-2's ``wpe``, OPT's ``embed_positions``),
      ``attention`` / ``mlp`` (under a module named ``attn``, ``self_attn``, ``attention``,
      ``self_attention`` / ``mlp``, ``feed_forward``, ``ffn``, OPT's ``fc1`` and ``fc2``),
      ``other`` (none of these, e.g. OPT's ``project_in``/``project_out``).
    - ``experts``: ``per_module_kind["experts"]``, 0 for a dense model.
    - ``active``: for a MoE model (``num_experts_per_tok`` and one of ``num_local_experts``,
      ``num_experts``, ``n_routed_experts`` set on the built config), the parameters one token
      uses: ``total - experts + experts * top_k / n_routed`` (every expert of a layer has one
      size, so this is exact); None for a dense model.
    """
    model = build_meta_model(config)
    return count_model(model, _routing(model.config))


def main(argv: list[str] | None = None) -> int:
    """``python -m scaleplan.reference.hf DIR``: write DIR/expected.json for DIR's configs."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m scaleplan.reference.hf DIR", file=sys.stderr)
        return 2
    folder = Path(args[0])
    counts = {}
    for path in sorted(folder.glob("*.json")):
        if path.name == "expected.json":
            continue
        counts[path.name] = hf_meta_counts(json.loads(path.read_text(encoding="utf-8")))
        print(f"{path.name}: {counts[path.name]['total']:,}")
    out = {"transformers": _transformers().__version__, "torch": _torch().__version__,
           "counts": counts}
    (folder / "expected.json").write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

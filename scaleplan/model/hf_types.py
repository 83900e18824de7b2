"""The dense model types of `scaleplan.model.loaders.from_hf`: one function per Hugging Face
``model_type`` that maps its config.json (read by `scaleplan.model.hf_keys.HFConfig`) onto
`GPTConfig`'s fields, following what transformers 5.25's modeling code builds for it.

Each function returns the fields as a dict; `GPTConfig` validates them. What a type builds, in
short (the full list is in docs/configs.md):

- llama, granite, mistral, qwen2, qwen3, phi3, olmo, olmo2, gemma, gemma2, gemma3_text, stablelm,
  starcoder2: Llama's layout (separate q, k, v, o; RMSNorm or LayerNorm) with each family's
  biases, QK-norms, norm positions, sliding windows and soft-caps.
- gpt2, gptj, gpt_neox, opt, bloom, falcon, phi, mpt: GPT-2-like (LayerNorm, a GELU or ReLU
  MLP), with parallel attention and MLP, ALiBi, OPT's offset and projections.
"""

from __future__ import annotations

from typing import Any

from scaleplan.errors import ScaleplanError, shown
from scaleplan.model.hf_keys import HFConfig, UnsupportedKeyError

__all__ = ["DENSE_TYPES", "core", "heads", "layer_kinds", "rotary", "sliding"]


def core(c: HFConfig, *, mlp: str = "swiglu", norm: str = "rmsnorm") -> dict[str, Any]:
    """The fields every Llama-style type reads the same way (Llama's key names)."""
    return {
        "n_layer": c["num_hidden_layers"], "n_head": c["num_attention_heads"],
        "n_embd": c["hidden_size"], "mlp_hidden": c["intermediate_size"],
        "block_size": c["max_position_embeddings"], "vocab_size": c["vocab_size"],
        "mlp": mlp, "norm": norm, "position": "rope", "bias": False,
        "tie_embeddings": c["tie_word_embeddings"],
    }


def heads(c: HFConfig, out: dict[str, Any], *, head_dim: bool = True) -> dict[str, Any]:
    """Add ``n_kv_head`` and ``head_dim`` when the config gives them (None: transformers'
    default, n_head and n_embd // n_head). ``head_dim=False`` for types whose attention always
    uses n_embd // n_head."""
    if c["num_key_value_heads"] is not None:
        out["n_kv_head"] = c["num_key_value_heads"]
    if head_dim and c["head_dim"] is not None:
        out["head_dim"] = c["head_dim"]
    return out


def rotary(c: HFConfig, default: float, *, key: str = "partial_rotary_factor") -> float:
    """The fraction of each head that rotary positions rotate: ``rope_parameters``' (or
    ``rope_scaling``'s) ``partial_rotary_factor``, else the top-level ``key``, else
    ``default``, as transformers' rope standardisation reads it."""
    for nested in ("rope_parameters", "rope_scaling"):
        params = c[nested]
        if isinstance(params, dict) and params.get("partial_rotary_factor") is not None:
            label = f"{c.name(nested)}.partial_rotary_factor"
            return _fraction(label, params["partial_rotary_factor"])
    return default if c[key] is None else _fraction(c.name(key), c[key])


def _fraction(label: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ScaleplanError(f"{label} = {shown(value)}: must be a number in (0, 1], the "
                             "fraction of each head that rotary positions rotate")
    return float(value)


def layer_kinds(c: HFConfig, n_layer: int, default: int) -> int:
    """How many blocks use sliding-window attention: those ``layer_types`` names
    'sliding_attention' when it is given (one 'sliding_attention' or 'full_attention' per
    block), else ``default`` (the config class's pattern, counted without listing the blocks:
    n_layer can be any int a file holds)."""
    kinds = c["layer_types"]
    if kinds is None:
        return default
    if not isinstance(kinds, list) or len(kinds) != n_layer:
        raise c.fail("layer_types", f"must list one attention type per block ({n_layer})")
    unknown = sorted({str(k) for k in kinds if k not in ("sliding_attention", "full_attention")})
    if unknown:
        raise c.fail("layer_types", f"{unknown[0]!r} is not an attention scaleplan models; "
                     "it knows 'sliding_attention' and 'full_attention'")
    return sum(1 for k in kinds if k == "sliding_attention")


def sliding(out: dict[str, Any], window: Any, layers: int | None = None) -> dict[str, Any]:
    """Set the sliding window (None: none) on ``layers`` blocks (None: all)."""
    if window is not None and layers != 0:
        out["sliding_window"] = window
        if layers is not None:
            out["sliding_window_layers"] = layers
    return out


# ----------------------------------------------------------------------------- Llama family


def _llama(c: HFConfig) -> dict[str, Any]:  # llama, granite
    out = heads(c, core(c))
    out["qkv_bias"] = out["attn_out_bias"] = c.flag("attention_bias")
    out["mlp_bias"] = c.flag("mlp_bias")
    return out


def _mistral(c: HFConfig) -> dict[str, Any]:
    # MistralAttention and MistralMLP never build biases: attention_bias/mlp_bias are not read.
    return sliding(heads(c, core(c)), c.optional_size("sliding_window"))


def _qwen_sliding(c: HFConfig, out: dict[str, Any]) -> dict[str, Any]:
    """Qwen2/Qwen3: a window only with use_sliding_window, on the blocks from
    max_window_layers on (or as layer_types says)."""
    if not c.flag("use_sliding_window") or c["sliding_window"] is None:
        return out
    n = c.size("num_hidden_layers")
    first = c.size("max_window_layers", minimum=0)  # blocks first, first + 1, ... slide
    return sliding(out, c.size("sliding_window"), layer_kinds(c, n, max(0, n - first)))


def _qwen2(c: HFConfig) -> dict[str, Any]:
    out = heads(c, core(c))
    out["qkv_bias"] = True  # Qwen2Attention: q, k, v always biased, o never (no key)
    return _qwen_sliding(c, out)


def _qwen3(c: HFConfig) -> dict[str, Any]:
    out = heads(c, core(c))
    out["qkv_bias"] = out["attn_out_bias"] = c.flag("attention_bias")
    out["qk_norm"] = "head"
    return _qwen_sliding(c, out)


def _phi3(c: HFConfig) -> dict[str, Any]:
    out = heads(c, core(c))  # fused qkv_proj and gate_up_proj: the same sizes, no biases
    out["rotary_fraction"] = rotary(c, 1.0)
    return sliding(out, c.optional_size("sliding_window"))


def _olmo(c: HFConfig) -> dict[str, Any]:
    out = heads(c, core(c, norm="layernorm"))
    out["norm_affine"] = False  # OlmoLayerNorm: neither weight nor bias; clip_qkv: no params
    out["qkv_bias"] = out["attn_out_bias"] = c.flag("attention_bias")
    return out


def _olmo2(c: HFConfig) -> dict[str, Any]:
    out = heads(c, core(c))
    out["norm_position"] = "post"
    out["qk_norm"] = "full"  # q_norm over n_head x head_dim, k_norm over n_kv_head x head_dim
    out["qkv_bias"] = out["attn_out_bias"] = c.flag("attention_bias")
    return out


def _gemma(c: HFConfig) -> dict[str, Any]:  # gemma, and under gemma2 and gemma3_text
    c.refuse("use_bidirectional_attention", True, "attention without the causal mask "
             "(an embedding model); scaleplan counts causal decoders")
    out = heads(c, core(c, mlp="geglu"))
    out["qkv_bias"] = out["attn_out_bias"] = c.flag("attention_bias")
    return out


def _gemma2(c: HFConfig) -> dict[str, Any]:
    out = _gemma(c)
    out["norm_position"] = "sandwich"
    out["attn_softcap"] = c["attn_logit_softcapping"]
    out["final_softcap"] = c["final_logit_softcapping"]
    n = c.size("num_hidden_layers")  # blocks 0, 2, 4, ... slide
    return sliding(out, c.optional_size("sliding_window"), layer_kinds(c, n, n - n // 2))


def _gemma3_text(c: HFConfig) -> dict[str, Any]:
    out = _gemma2(c)
    out["qk_norm"] = "head"
    n = c.size("num_hidden_layers")
    pattern = c.size("sliding_window_pattern")  # every pattern-th block is global
    return sliding(out, c.optional_size("sliding_window"), layer_kinds(c, n, n - n // pattern))


def _stablelm(c: HFConfig) -> dict[str, Any]:
    out = heads(c, core(c, norm="layernorm"), head_dim=False)
    out["norm_bias"] = True  # LayerNorms with bias; every Linear without, but q/k/v's below
    out["qkv_bias"] = c.flag("use_qkv_bias")
    if c.flag("qk_layernorm"):
        out["qk_norm"] = "per_head"  # one LayerNorm of head_dim per head, weight only
    if c.flag("use_parallel_residual"):
        out["parallel"] = "shared_norm"  # post_attention_layernorm is not built
    out["rotary_fraction"] = rotary(c, 0.25)
    return out


def _starcoder2(c: HFConfig) -> dict[str, Any]:
    out = heads(c, core(c, mlp="gelu", norm="layernorm"))
    out["bias"] = c.flag("use_bias")  # the six Linears; the LayerNorms keep theirs
    out["norm_bias"] = True
    return sliding(out, c.optional_size("sliding_window"))


# ----------------------------------------------------------------------------- GPT-2 family


def _gpt2(c: HFConfig) -> dict[str, Any]:
    c.flag("add_cross_attention")
    c.refuse("add_cross_attention", True, "GPT2Block adds a cross-attention sublayer "
             "(crossattention.c_attn, q_attn, c_proj and ln_cross_attn) for an encoder-decoder "
             "model; scaleplan counts decoder-only models: drop the key")
    out: dict[str, Any] = {
        "n_layer": c["n_layer"], "n_head": c["n_head"], "n_embd": c["n_embd"],
        "block_size": c["n_positions"], "vocab_size": c["vocab_size"], "bias": True,
        "tie_embeddings": c["tie_word_embeddings"],
    }
    if c["n_inner"] is not None:
        out["mlp_hidden"] = c["n_inner"]
    return out


def _gptj(c: HFConfig) -> dict[str, Any]:
    out: dict[str, Any] = {
        "n_layer": c["n_layer"], "n_head": c["n_head"], "n_embd": c["n_embd"],
        "block_size": c["n_positions"], "vocab_size": c["vocab_size"], "position": "rope",
        "bias": True, "qkv_bias": False, "attn_out_bias": False, "parallel": "shared_norm",
        "lm_head_bias": True, "tie_embeddings": c["tie_word_embeddings"],
    }
    if c["n_inner"] is not None:
        out["mlp_hidden"] = c["n_inner"]
    if c["rotary_dim"] is not None:  # rotates rotary_dim of each head's n_embd // n_head
        head = c.size("n_embd") / c.size("n_head")
        out["rotary_fraction"] = min(1.0, c.size("rotary_dim") / head)  # more: the whole head
    return out


def _gpt_neox(c: HFConfig) -> dict[str, Any]:
    out = core(c, mlp="gelu", norm="layernorm")
    out["bias"] = True
    out["qkv_bias"] = out["attn_out_bias"] = c.flag("attention_bias")
    # Both LayerNorms exist either way; with the parallel residual each feeds one branch.
    out["parallel"] = "separate_norms" if c.flag("use_parallel_residual") else "none"
    out["rotary_fraction"] = rotary(c, 0.25, key="rotary_pct")
    return out


def _phi(c: HFConfig) -> dict[str, Any]:
    c.flag("qk_layernorm")
    c.refuse("qk_layernorm", True, "PhiAttention adds q_layernorm and k_layernorm, LayerNorms "
             "of head_dim with a bias, which scaleplan's qk_norm (no bias) does not describe")
    out = heads(c, core(c, mlp="gelu", norm="layernorm"))
    out["bias"] = True
    out["parallel"] = "shared_norm"
    out["lm_head_bias"] = True  # lm_head has a bias, tied or not
    out["rotary_fraction"] = rotary(c, 0.5)
    return out


def _opt(c: HFConfig) -> dict[str, Any]:
    out = core(c, mlp="relu", norm="layernorm")
    out.update(mlp_hidden=c["ffn_dim"], position="learned", position_offset=2,
               bias=c.flag("enable_bias"), norm_affine=c.flag("layer_norm_elementwise_affine"))
    out["norm_bias"] = out["norm_affine"]
    if c["word_embed_proj_dim"] is not None:
        out["embed_dim"] = c["word_embed_proj_dim"]
    if not c.flag("do_layer_norm_before"):
        out["norm_position"] = "post"
    out["final_norm"] = c.flag("do_layer_norm_before") and not c.flag("_remove_final_layer_norm")
    return out


def _bloom(c: HFConfig) -> dict[str, Any]:
    return {"n_layer": c["n_layer"], "n_head": c["n_head"], "n_embd": c["hidden_size"],
            "block_size": 2048, "vocab_size": c["vocab_size"], "bias": True,
            "position": "alibi", "embedding_norm": True,
            "tie_embeddings": c["tie_word_embeddings"]}


def _falcon_layout(c: HFConfig) -> tuple[str, int | None]:
    """(parallel, n_kv_head) of a Falcon block, as FalconDecoderLayer builds it."""
    new, parallel = c.flag("new_decoder_architecture"), c.flag("parallel_attn")
    lns = c["num_ln_in_parallel_attn"]
    if lns not in (None, 1, 2) or isinstance(lns, bool):
        raise c.fail("num_ln_in_parallel_attn", "must be 1 or 2 (or null)")
    if new and not parallel:
        raise UnsupportedKeyError("parallel_attn = false with new_decoder_architecture = true: "
                             "FalconDecoderLayer builds norms its forward does not "
                             "use; not a model transformers runs")
    if new:  # num_ln_in_parallel_attn defaults to 2 here: ln_attn and ln_mlp
        return ("shared_norm" if lns == 1 else "separate_norms"), c.optional_size("num_kv_heads")
    if parallel and lns == 2:
        raise UnsupportedKeyError("num_ln_in_parallel_attn = 2 needs "
                             "new_decoder_architecture = true: the old block builds ln_attn "
                             "and ln_mlp but runs input_layernorm")
    # Old architecture: multi_query means one key/value head; q, k, v are n_embd wide otherwise.
    return ("shared_norm" if parallel else "none"), (1 if c.flag("multi_query") else None)


def _falcon(c: HFConfig) -> dict[str, Any]:
    parallel, kv = _falcon_layout(c)
    out: dict[str, Any] = {
        "n_layer": c["num_hidden_layers"], "n_head": c["num_attention_heads"],
        "n_embd": c["hidden_size"], "block_size": c["max_position_embeddings"],
        "vocab_size": c["vocab_size"], "bias": c.flag("bias"), "norm_bias": True,
        "position": "alibi" if c.flag("alibi") else "rope", "parallel": parallel,
        "tie_embeddings": c["tie_word_embeddings"],
    }
    if kv is not None:
        out["n_kv_head"] = kv
    if c["ffn_hidden_size"] is not None:
        out["mlp_hidden"] = c["ffn_hidden_size"]
    return out


def _mpt(c: HFConfig) -> dict[str, Any]:
    # transformers' MptForCausalLM builds one layout whatever these say; MosaicML's own code
    # (trust_remote_code) reads them: refuse a value where the two would differ.
    attn = c["attn_config"] if isinstance(c["attn_config"], dict) else {}
    c.unless("expansion_ratio", 4, "transformers' MPT always builds a 4 x d_model MLP; "
             "MosaicML's code builds this ratio: count it with GPTConfig(mlp_hidden=...)")
    c.unless("no_bias", True, "transformers' MPT builds no biases; MosaicML's code would")
    if attn.get("qk_ln") or attn.get("alibi") is False:
        raise c.fail("attn_config", "qk_ln or learned positions instead of ALiBi: "
                     "transformers' MPT builds neither")
    return {"n_layer": c["n_layers"], "n_head": c["n_heads"], "n_embd": c["d_model"],
            "block_size": c["max_seq_len"], "vocab_size": c["vocab_size"], "bias": False,
            "position": "alibi", "tie_embeddings": c["tie_word_embeddings"]}


DENSE_TYPES = {
    "gpt2": _gpt2, "llama": _llama, "granite": _llama, "mistral": _mistral, "qwen2": _qwen2,
    "qwen3": _qwen3, "phi3": _phi3, "olmo": _olmo, "olmo2": _olmo2, "gemma": _gemma,
    "gemma2": _gemma2, "gemma3_text": _gemma3_text, "stablelm": _stablelm,
    "starcoder2": _starcoder2, "gptj": _gptj, "gpt_neox": _gpt_neox, "phi": _phi, "opt": _opt,
    "bloom": _bloom, "falcon": _falcon, "mpt": _mpt,
}
"""model_type -> the function that maps its config.json onto GPTConfig's fields."""

"""The mixture-of-experts model types of `scaleplan.model.loaders.from_hf` (mixtral, qwen3_moe)
and DeepSeek's, which add multi-head latent attention (deepseek_v2, deepseek_v3): config.json ->
`GPTConfig` fields with ``moe`` (and ``mla``), following transformers 5.25's modeling code.

Which blocks are MoE: every one for mixtral; for qwen3_moe block i (from 0) unless it is in
``mlp_only_layers`` or ``(i + 1) % decoder_sparse_step`` is not 0; for DeepSeek those from
``first_k_dense_replace`` on. A parameter count needs only how many blocks are dense, so any
pattern counts exactly (``moe.n_dense_layers``); the others keep a dense MLP of
``intermediate_size``.
"""

from __future__ import annotations

from typing import Any

from scaleplan.model.hf_keys import HFConfig
from scaleplan.model.hf_types import core, heads, sliding

__all__ = ["MOE_TYPES"]


def _moe(c: HFConfig, n_experts: str, hidden: str, dense: int, n_layer: int,
         **extra: Any) -> dict[str, Any] | None:
    """The ``moe`` field: None when every block is dense."""
    if dense >= n_layer:
        return None
    return {"n_experts": c[n_experts], "top_k": c["num_experts_per_tok"],
            "expert_hidden": c[hidden], "n_dense_layers": dense, **extra}


def _mixtral(c: HFConfig) -> dict[str, Any]:
    # MistralAttention's layout (no biases); every block's MLP is num_local_experts experts of
    # intermediate_size, behind a bias-free router.
    out = sliding(heads(c, core(c)), c.optional_size("sliding_window"))
    out["moe"] = _moe(c, "num_local_experts", "intermediate_size", 0, 1)
    return out


def _qwen3_moe(c: HFConfig) -> dict[str, Any]:
    out = heads(c, core(c))
    out["qkv_bias"] = out["attn_out_bias"] = c.flag("attention_bias")
    out["qk_norm"] = "head"
    n = c.size("num_hidden_layers")
    experts = c.size("num_local_experts", minimum=0)
    step = c.size("decoder_sparse_step")
    # Blocks step - 1, 2 step - 1, ... are MoE, less those mlp_only_layers names.
    dense_only = {i for i in c.indices("mlp_only_layers") if 0 <= i < n and (i + 1) % step == 0}
    moe_blocks = (n // step - len(dense_only)) if experts > 0 else 0
    moe = _moe(c, "num_local_experts", "moe_intermediate_size", n - moe_blocks, n)
    if moe is not None:
        out["moe"] = moe
    if c.flag("use_sliding_window") and c["sliding_window"] is not None:
        sliding(out, c.size("sliding_window"))  # every block's attention reads it
    return out


def _deepseek(c: HFConfig) -> dict[str, Any]:
    c.flag("attention_bias")
    c.refuse("attention_bias", True, "DeepSeek's attention then biases q_a_proj, "
             "kv_a_proj_with_mqa and o_proj only, a layout scaleplan does not count; drop it")
    if c.model_type == "deepseek_v2":
        c.flag("mlp_bias")
        c.refuse("mlp_bias", True, "DeepSeek-V2 then biases the dense and shared-expert MLPs "
                 "but not the routed experts, a layout scaleplan does not count; drop it")
    out = core(c)  # MLA: no n_kv_head or head_dim (num_key_value_heads is not read)
    out["mla"] = {key: c[key] for key in ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim",
                                          "qk_rope_head_dim", "v_head_dim")}
    n = c.size("num_hidden_layers")
    dense = min(c.size("first_k_dense_replace", minimum=0), n)
    if dense < n and c["num_experts_per_tok"] is None:
        raise c.fail("num_experts_per_tok", "the routed experts each token goes to must be "
                     "given (DeepSeek-V2: 6)")
    # n_shared_experts shared experts are one MLP n_shared_experts x moe_intermediate_size wide.
    moe = _moe(c, "n_routed_experts", "moe_intermediate_size", dense, n,
               n_shared_experts=c.size("n_shared_experts", minimum=0))
    if moe is not None:
        out["moe"] = moe
    return out


MOE_TYPES = {"mixtral": _mixtral, "qwen3_moe": _qwen3_moe, "deepseek_v2": _deepseek,
             "deepseek_v3": _deepseek}
"""model_type -> the function that maps its config.json onto GPTConfig's fields."""

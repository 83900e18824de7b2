"""from_hf on edited configs: every architecture key each supported model type reads, changed from
its released value, counts exactly what transformers builds for the same dict on the meta device.

The configs are tiny (V = 100, d = 32, 3 blocks, 4 heads) so each build takes milliseconds; the
expected count is `scaleplan.reference.hf.hf_meta_counts` of the very dict from_hf reads.
"""

from __future__ import annotations

from typing import Any

import pytest
from hf_meta import TOKEN_IDS

from scaleplan.model.loaders import from_hf
from scaleplan.model.params import count_params

pytest.importorskip("torch", reason='scaleplan.reference needs torch: pip install '
                                   '"scaleplan[torch]"')
pytest.importorskip("transformers")

from scaleplan.reference.hf import hf_meta_counts

pytestmark = pytest.mark.torch

HF = {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4,
      "intermediate_size": 48, "max_position_embeddings": 64}
GPT2 = {"vocab_size": 100, "n_embd": 32, "n_layer": 3, "n_head": 4, "n_positions": 64}
MLA = {"q_lora_rank": 16, "kv_lora_rank": 8, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4,
       "v_head_dim": 6, "n_routed_experts": 4, "num_experts_per_tok": 2,
       "moe_intermediate_size": 12}

# (model_type, config keys): each an edit of one or two keys that change what is built.
CASES: list[tuple[str, dict[str, Any]]] = [
    ("gpt2", GPT2),
    ("gpt2", {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4,
              "max_position_embeddings": 64, "vocab_size": 100}),
    ("gpt2", {**GPT2, "n_inner": 40, "tie_word_embeddings": False}),
    ("llama", {**HF, "attention_bias": True, "mlp_bias": True, "num_key_value_heads": 2}),
    ("llama", {**HF, "head_dim": 16, "tie_word_embeddings": True}),
    ("granite", {**HF, "head_dim": 16, "attention_bias": True}),
    ("mistral", {**HF, "attention_bias": True, "mlp_bias": True, "head_dim": 12,
                 "num_key_value_heads": 2}),
    ("mistral", {**HF, "sliding_window": None, "num_key_value_heads": 1}),
    ("qwen2", {**HF, "num_key_value_heads": 2, "tie_word_embeddings": True,
               "use_sliding_window": True, "sliding_window": 16, "max_window_layers": 1}),
    ("qwen3", {**HF, "attention_bias": True, "head_dim": 16, "num_key_value_heads": 2}),
    ("phi3", {**HF, "num_key_value_heads": 2, "head_dim": 16, "sliding_window": 16}),
    ("olmo", {**HF, "attention_bias": True, "tie_word_embeddings": True}),
    ("olmo2", {**HF, "num_key_value_heads": 2, "attention_bias": True}),
    ("gemma", {**HF, "num_key_value_heads": 1, "head_dim": 16}),
    ("gemma2", {**HF, "num_key_value_heads": 2, "head_dim": 8, "tie_word_embeddings": False,
                "layer_types": ["full_attention", "sliding_attention", "full_attention"]}),
    ("gemma3_text", {**HF, "num_key_value_heads": 2, "head_dim": 8,
                     "sliding_window_pattern": 2, "attention_bias": True}),
    ("gemma3", {"text_config": {**HF, "num_key_value_heads": 2, "head_dim": 8}}),
    ("stablelm", {**HF, "num_key_value_heads": 2, "use_qkv_bias": True,
                  "qk_layernorm": True}),
    ("stablelm", {**HF, "use_parallel_residual": True, "qk_layernorm": True,
                  "num_key_value_heads": 4}),
    ("starcoder2", {**HF, "use_bias": False, "num_key_value_heads": 1}),
    ("starcoder2", {**HF, "tie_word_embeddings": False, "sliding_window": 16}),
    ("gpt_neox", {**HF, "attention_bias": False, "use_parallel_residual": False}),
    ("gpt_neox", {**HF, "tie_word_embeddings": True, "rotary_pct": 0.5}),
    ("opt", {**HF, "ffn_dim": 40, "word_embed_proj_dim": 16, "do_layer_norm_before": False}),
    ("opt", {**HF, "ffn_dim": 40, "enable_bias": False, "layer_norm_elementwise_affine": False}),
    ("opt", {**HF, "ffn_dim": 40, "_remove_final_layer_norm": True,
             "tie_word_embeddings": False}),
    ("bloom", {"vocab_size": 100, "n_embed": 32, "n_layer": 3, "n_head": 4}),
    ("bloom", {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 3,
               "num_attention_heads": 4, "tie_word_embeddings": False}),
    ("falcon", {**HF, "new_decoder_architecture": True, "num_kv_heads": 2}),
    ("falcon", {**HF, "new_decoder_architecture": True, "num_ln_in_parallel_attn": 1,
                "bias": True}),
    ("falcon", {**HF, "multi_query": False, "parallel_attn": False, "ffn_hidden_size": 40}),
    ("falcon", {**HF, "alibi": True, "tie_word_embeddings": False}),
    ("phi", {**HF, "num_key_value_heads": 2, "tie_word_embeddings": True}),
    ("phi", {**HF, "partial_rotary_factor": 0.25, "head_dim": 16}),
    ("gptj", {**GPT2, "n_inner": 40, "rotary_dim": 4}),
    ("gptj", {**GPT2, "tie_word_embeddings": True}),  # rotary_dim 64 > head 8: all of it
    ("mpt", {"vocab_size": 100, "d_model": 32, "n_layers": 3, "n_heads": 4, "max_seq_len": 64}),
    ("mpt", {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 3,
             "num_attention_heads": 4, "tie_word_embeddings": False}),
    ("mixtral", {**HF, "num_experts": 4, "num_experts_per_tok": 1, "num_key_value_heads": 2}),
    ("mixtral", {**HF, "num_local_experts": 3, "head_dim": 16, "tie_word_embeddings": True,
                 "num_key_value_heads": 1}),
    ("qwen3_moe", {**HF, "num_experts": 4, "moe_intermediate_size": 12, "num_experts_per_tok": 2,
                   "decoder_sparse_step": 2}),
    ("qwen3_moe", {**HF, "num_experts": 4, "moe_intermediate_size": 12, "num_experts_per_tok": 2,
                   "mlp_only_layers": [0, 2], "attention_bias": True, "head_dim": 16}),
    ("qwen3_moe", {**HF, "num_experts": 0, "num_experts_per_tok": 1, "head_dim": 8}),
    ("deepseek_v2", {**HF, **MLA, "first_k_dense_replace": 1, "n_shared_experts": 2}),
    ("deepseek_v2", {**HF, **MLA, "q_lora_rank": None, "n_shared_experts": 1,
                     "num_experts": 3}),
    ("deepseek_v3", {**HF, **MLA, "first_k_dense_replace": 2, "n_shared_experts": 1}),
    ("deepseek_v3", {**HF, **MLA, "first_k_dense_replace": 3}),  # every block dense
    ("deepseek_v3", {**HF, **MLA, "q_lora_rank": None, "num_local_experts": 5,
                     "tie_word_embeddings": True}),
]


@pytest.mark.parametrize(("model_type", "keys"), CASES,
                         ids=[f"{t}-{i}" for i, (t, _) in enumerate(CASES)])
def test_edited_config_counts_what_transformers_builds(model_type: str,
                                                       keys: dict[str, Any]) -> None:
    config = {"model_type": model_type, **TOKEN_IDS, **keys}
    want = hf_meta_counts(config)
    counts = count_params(from_hf(config))
    assert counts.total == want["total"]
    if want["active"] is not None:
        assert counts.active == want["active"]


def test_the_cases_cover_every_supported_type() -> None:
    from scaleplan.model.loaders import SUPPORTED_HF_MODEL_TYPES

    assert sorted({t for t, _ in CASES}) == sorted(SUPPORTED_HF_MODEL_TYPES)


@pytest.mark.parametrize(("model_type", "keys"), [
    ("gemma2", {"num_hidden_layers": 7}),
    ("gemma3_text", {"num_hidden_layers": 13}),
    ("gemma3_text", {"num_hidden_layers": 9, "sliding_window_pattern": 4}),
    ("qwen2", {"num_hidden_layers": 6, "use_sliding_window": True, "max_window_layers": 2}),
    ("qwen3", {"num_hidden_layers": 6, "use_sliding_window": True, "max_window_layers": 9}),
    ("qwen2", {"num_hidden_layers": 6, "use_sliding_window": False}),
])
def test_sliding_blocks_are_those_transformers_config_lists(model_type: str,
                                                            keys: dict[str, Any]) -> None:
    # The config class's own layer_types, derived from the same keys, is the independent side.
    from transformers import AutoConfig

    config = {**HF, "num_key_value_heads": 2, **keys}
    layer_types = AutoConfig.for_model(model_type, **config).layer_types
    cfg = from_hf({"model_type": model_type, **config})
    assert cfg.sliding_window_layers == layer_types.count("sliding_attention")


@pytest.mark.parametrize(("model_type", "keys"), [
    ("stablelm", {}),
    ("phi", {}),
    ("phi3", {"partial_rotary_factor": 0.75}),
    ("gpt_neox", {"rotary_pct": 0.5}),
    ("gpt_neox", {"rotary_pct": 0.5, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    ("phi", {"partial_rotary_factor": 0.4,
             "rope_parameters": {"rope_type": "default", "rope_theta": 1e4,
                                 "partial_rotary_factor": 0.75}}),
    ("stablelm", {"rope_scaling": {"rope_type": "linear", "factor": 2.0,
                                   "partial_rotary_factor": 0.3}}),
])
def test_rotary_fraction_is_the_one_transformers_config_keeps(model_type: str,
                                                              keys: dict[str, Any]) -> None:
    from transformers import AutoConfig

    rope = AutoConfig.for_model(model_type, **keys).rope_parameters
    assert from_hf({"model_type": model_type, **keys}).rotary_fraction == pytest.approx(
        rope["partial_rotary_factor"])

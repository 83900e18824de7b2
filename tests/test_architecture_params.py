"""Parameter counts of every architecture option of issue 18, on tiny configs: each count is
written out by hand in the case, and the same architecture built by transformers on the meta
device (tests/hf_meta.py) must have exactly as many parameters.

Shared sizes: V = 100, d = 32, L = 2 blocks, a = 4 heads of h = 8 (unless a case says
otherwise). The transformers side names each model type with the keys its config class reads.
"""

from __future__ import annotations

from typing import Any

import pytest
from hf_meta import hf_meta_active, hf_meta_count, hf_meta_parameters

from scaleplan.model.config import GPTConfig
from scaleplan.model.params import count_params
from scaleplan.model.shapes import across_model, active_numel, model_tensors

V, d, L, a = 100, 32, 2, 4
OURS = {"n_layer": L, "n_head": a, "n_embd": d, "vocab_size": V}
HF = {"vocab_size": V, "hidden_size": d, "num_hidden_layers": L, "num_attention_heads": a}
LLAMA = {"mlp": "swiglu", "norm": "rmsnorm", "position": "rope", "bias": False,
         "tie_embeddings": False}
UNTIED_TOP = 2 * V * d  # wte and an untied lm_head, 3,200 each

# (id, GPTConfig fields, hand count, transformers model_type, its config keys)
CASES: list[tuple[str, dict[str, Any], int, str, dict[str, Any]]] = [
    # Qwen3: one RMSNorm of head_dim on queries and one on keys (q_norm, k_norm: 8 each).
    # Block: 2 norms 64; q 32x32, k and v 32x16, o 32x32 = 3,072; q/k norms 16; SwiGLU 3x32x48
    # = 4,608; 7,760. Top: 6,400 + final norm 32.
    ("qk_norm=head (qwen3)", {**LLAMA, "n_kv_head": 2, "mlp_hidden": 48, "qk_norm": "head"},
     UNTIED_TOP + 32 + L * (64 + 3072 + 16 + 4608), "qwen3",
     {**HF, "intermediate_size": 48, "num_key_value_heads": 2, "head_dim": 8,
      "tie_word_embeddings": False}),
    # StableLM qk_layernorm: a bias-free LayerNorm of head_dim per head, 4 for q and 2 for k
    # (32 + 16). LayerNorms with bias (2 x 64), q/k/v biases (32 + 16 + 16), o without.
    ("qk_norm=per_head (stablelm)",
     {**LLAMA, "norm": "layernorm", "norm_bias": True, "qkv_bias": True, "n_kv_head": 2,
      "mlp_hidden": 48, "rotary_fraction": 0.25, "qk_norm": "per_head"},
     UNTIED_TOP + 64 + L * (128 + (1024 + 32) + 2 * (512 + 16) + 1024 + 48 + 4608), "stablelm",
     {**HF, "intermediate_size": 48, "num_key_value_heads": 2, "qk_layernorm": True,
      "use_qkv_bias": True, "partial_rotary_factor": 0.25, "tie_word_embeddings": False}),
    # OLMo 2: RMSNorm over all heads' width (q 4x8 = 32, k 2x8 = 16) and norms on each
    # sublayer's output (post_attention_layernorm, post_feedforward_layernorm: 2 x 32).
    ("qk_norm=full, norm_position=post (olmo2)",
     {**LLAMA, "n_kv_head": 2, "mlp_hidden": 48, "qk_norm": "full", "norm_position": "post"},
     UNTIED_TOP + 32 + L * (64 + 3072 + 48 + 4608), "olmo2",
     {**HF, "intermediate_size": 48, "num_key_value_heads": 2, "tie_word_embeddings": False}),
    # Gemma 2: four norms per block (4 x 32), head_dim 16: q 32x64, k and v 32x32, o 64x32 =
    # 6,144; GeGLU 4,608; tied. Soft-capping and sliding windows add nothing.
    ("norm_position=sandwich, softcap, sliding window (gemma2)",
     {**LLAMA, "mlp": "geglu", "n_kv_head": 2, "head_dim": 16, "mlp_hidden": 48,
      "tie_embeddings": True, "norm_position": "sandwich", "attn_softcap": 50.0,
      "final_softcap": 30.0, "sliding_window": 4096, "sliding_window_layers": 1},
     V * d + 32 + L * (128 + 6144 + 4608), "gemma2",
     {**HF, "intermediate_size": 48, "num_key_value_heads": 2, "head_dim": 16}),
    # Gemma 3 (text): gemma2's block plus q_norm and k_norm of head_dim 16 (32 per block).
    ("sandwich + qk_norm=head (gemma3_text)",
     {**LLAMA, "mlp": "geglu", "n_kv_head": 2, "head_dim": 16, "mlp_hidden": 48,
      "tie_embeddings": True, "norm_position": "sandwich", "qk_norm": "head"},
     V * d + 32 + L * (128 + 6144 + 32 + 4608), "gemma3_text",
     {**HF, "intermediate_size": 48, "num_key_value_heads": 2, "head_dim": 16}),
    # GPT-J: one LayerNorm (with bias, 64) feeds attention and MLP; q, k, v, o without bias
    # (4 x 1,024); GELU MLP 4d = 128 with biases (4,096 + 128 + 4,096 + 32); untied head with a
    # bias (100); final LayerNorm 64.
    ("parallel=shared_norm, lm_head_bias (gptj)",
     {"block_size": 64, "position": "rope", "rotary_fraction": 0.5, "qkv_bias": False,
      "attn_out_bias": False, "tie_embeddings": False, "lm_head_bias": True,
      "parallel": "shared_norm"},
     UNTIED_TOP + V + 64 + L * (64 + 4096 + 8352), "gptj",
     {"vocab_size": V, "n_embd": d, "n_layer": L, "n_head": a, "rotary_dim": 4,
      "n_positions": 64}),
    # Phi: one LayerNorm, every linear with bias (qkv 3 x 1,056, dense 1,056, MLP 48 wide
    # 1,536 + 48 + 1,536 + 32), untied head with bias, final LayerNorm.
    ("parallel=shared_norm, partial rotary (phi)",
     {"mlp_hidden": 48, "position": "rope", "rotary_fraction": 0.5, "tie_embeddings": False,
      "lm_head_bias": True, "parallel": "shared_norm"},
     UNTIED_TOP + V + 64 + L * (64 + 3168 + 1056 + 3152), "phi",
     {**HF, "intermediate_size": 48, "partial_rotary_factor": 0.5}),
    # Falcon's new decoder architecture: ln_attn and ln_mlp (2 x 64); fused qkv (4 + 2 x 2) x
    # 8 = 64 rows x 32 = 2,048; dense 1,024; MLP 2 x 32 x 128 without bias; tied.
    ("parallel=separate_norms (falcon, new decoder)",
     {"n_kv_head": 2, "position": "rope", "bias": False, "norm_bias": True,
      "parallel": "separate_norms"},
     V * d + 64 + L * (128 + 2048 + 1024 + 8192), "falcon",
     {**HF, "new_decoder_architecture": True, "num_kv_heads": 2, "alibi": False}),
    # Falcon-7B's layout: multi-query (qkv (4 + 2) x 8 = 48 rows), one shared LayerNorm, ALiBi
    # (no parameters).
    ("parallel=shared_norm, alibi, multi-query (falcon)",
     {"n_kv_head": 1, "position": "alibi", "bias": False, "norm_bias": True,
      "parallel": "shared_norm"},
     V * d + 64 + L * (64 + 1536 + 1024 + 8192), "falcon",
     {**HF, "multi_query": True, "parallel_attn": True, "alibi": True,
      "new_decoder_architecture": False}),
    # GPT-NeoX with use_parallel_residual: input_layernorm and post_attention_layernorm both
    # kept (2 x 64), biases everywhere (qkv 3,168, dense 1,056, MLP 3,152), untied embed_out.
    ("parallel=separate_norms (gpt_neox)",
     {"mlp_hidden": 48, "position": "rope", "rotary_fraction": 0.25, "tie_embeddings": False,
      "parallel": "separate_norms"},
     UNTIED_TOP + 64 + L * (128 + 3168 + 1056 + 3152), "gpt_neox",
     {**HF, "intermediate_size": 48, "rotary_pct": 0.25, "use_parallel_residual": True,
      "tie_word_embeddings": False}),
    # OLMo: LayerNorms without parameters anywhere (the final one too).
    ("norm_affine=False (olmo)",
     {**LLAMA, "norm": "layernorm", "n_kv_head": 2, "mlp_hidden": 48, "norm_affine": False},
     UNTIED_TOP + L * (3072 + 4608), "olmo",
     {**HF, "intermediate_size": 48, "num_key_value_heads": 2, "tie_word_embeddings": False}),
    # OPT-350m's layout: word embedding 16 wide (100 x 16 = 1,600), projected in and out of
    # d = 32 (2 x 512, no bias); learned positions of 64 + 2 rows (66 x 32 = 2,112); post
    # norms, no final norm; ReLU MLP 48 wide with biases; tied head.
    ("embed_dim, position_offset, relu, post, final_norm=False (opt-350m)",
     {"mlp": "relu", "mlp_hidden": 48, "block_size": 64, "position_offset": 2, "embed_dim": 16,
      "norm_position": "post", "final_norm": False},
     V * 16 + 66 * d + 2 * 512 + L * (128 + 3168 + 1056 + 3152), "opt",
     {**HF, "ffn_dim": 48, "word_embed_proj_dim": 16, "do_layer_norm_before": False,
      "max_position_embeddings": 64}),
    # OPT-125m's layout: pre norms, a final LayerNorm, no projections.
    ("position_offset, relu (opt)",
     {"mlp": "relu", "mlp_hidden": 48, "block_size": 64, "position_offset": 2},
     V * d + 66 * d + 64 + L * (128 + 3168 + 1056 + 3152), "opt",
     {**HF, "ffn_dim": 48, "max_position_embeddings": 64}),
    # BLOOM: a LayerNorm after the embedding (64), ALiBi, biases, GELU 4d, tied.
    ("embedding_norm, alibi (bloom)", {"position": "alibi", "embedding_norm": True},
     V * d + 64 + 64 + L * (128 + 3168 + 1056 + 8352), "bloom",
     {"vocab_size": V, "hidden_size": d, "n_layer": L, "n_head": a}),
    # MPT: no biases, LayerNorms without bias, ALiBi; transformers builds the MLP 4d wide
    # whatever expansion_ratio says (MptMLP), so 128 here.
    ("alibi, bias-free LayerNorm (mpt)", {"position": "alibi", "bias": False, "block_size": 64},
     V * d + 32 + L * (64 + 4096 + 8192), "mpt",
     {"vocab_size": V, "d_model": d, "n_layers": L, "n_heads": a, "max_seq_len": 64}),
    # StarCoder2: biases everywhere, GQA (k, v 16 wide + bias), GELU MLP 48, sliding window,
    # tied.
    ("sliding_window (starcoder2)",
     {"n_kv_head": 2, "mlp_hidden": 48, "position": "rope", "sliding_window": 16},
     V * d + 64 + L * (128 + 1056 + 2 * 528 + 1056 + 3152), "starcoder2",
     {**HF, "intermediate_size": 48, "num_key_value_heads": 2, "sliding_window": 16,
      "use_bias": True}),
    # DeepSeek-V3: MLA (q_lora 16, kv_lora 8, nope 8, rope 4, v 8): q_a 16x32 = 512, q_a_norm
    # 16, q_b (4 x 12) x 16 = 768, kv_a (8 + 4) x 32 = 384, kv_a_norm 8, kv_b 4 x 16 x 8 = 512,
    # o 32 x 32 = 1,024: 3,224 per block. First block dense (SwiGLU 48: 4,608); the second
    # MoE: router 4 x 32 = 128, 4 experts x 3 x 8 x 32 = 3,072, one shared expert of 8:
    # 768. e_score_correction_bias is a buffer.
    ("mla with q_lora_rank, moe with dense first block and a shared expert (deepseek_v3)",
     {**LLAMA, "mlp_hidden": 48,
      "mla": {"q_lora_rank": 16, "kv_lora_rank": 8, "qk_nope_head_dim": 8,
              "qk_rope_head_dim": 4, "v_head_dim": 8},
      "moe": {"n_experts": 4, "top_k": 2, "expert_hidden": 8, "n_shared_experts": 1,
              "n_dense_layers": 1}},
     UNTIED_TOP + 32 + L * (64 + 3224) + 4608 + (128 + 3072 + 768), "deepseek_v3",
     {**HF, "intermediate_size": 48, "moe_intermediate_size": 8, "n_routed_experts": 4,
      "num_experts_per_tok": 2, "n_shared_experts": 1, "first_k_dense_replace": 1,
      "q_lora_rank": 16, "kv_lora_rank": 8, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4,
      "v_head_dim": 8, "n_group": 1, "topk_group": 1, "tie_word_embeddings": False}),
    # DeepSeek-V3's attention_bias: biases on q_a_proj (16), kv_a_proj (12) and o_proj (32),
    # none on the up projections: qkv_bias and attn_out_bias.
    ("mla with q_lora_rank and attention biases (deepseek_v3)",
     {**LLAMA, "mlp_hidden": 48, "qkv_bias": True, "attn_out_bias": True,
      "mla": {"q_lora_rank": 16, "kv_lora_rank": 8, "qk_nope_head_dim": 8,
              "qk_rope_head_dim": 4, "v_head_dim": 8},
      "moe": {"n_experts": 4, "top_k": 2, "expert_hidden": 8, "n_shared_experts": 1,
              "n_dense_layers": 1}},
     UNTIED_TOP + 32 + L * (64 + 3224 + 16 + 12 + 32) + 4608 + (128 + 3072 + 768),
     "deepseek_v3",
     {**HF, "intermediate_size": 48, "moe_intermediate_size": 8, "n_routed_experts": 4,
      "num_experts_per_tok": 2, "n_shared_experts": 1, "first_k_dense_replace": 1,
      "q_lora_rank": 16, "kv_lora_rank": 8, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4,
      "v_head_dim": 8, "n_group": 1, "topk_group": 1, "attention_bias": True,
      "tie_word_embeddings": False}),
    # DeepSeek-V2 with attention_bias and no q_lora_rank: q_proj (4 x 12) x 32 = 1,536,
    # kv_a 384 + bias 12, kv_a_norm 8, kv_b 512, o 1,024 + bias 32: 3,508. Two shared experts
    # fused into one MLP of 16: 3 x 16 x 32 = 1,536.
    ("mla without q_lora_rank, attention biases, 2 shared experts (deepseek_v2)",
     {**LLAMA, "mlp_hidden": 48, "qkv_bias": True, "attn_out_bias": True,
      "mla": {"q_lora_rank": None, "kv_lora_rank": 8, "qk_nope_head_dim": 8,
              "qk_rope_head_dim": 4, "v_head_dim": 8},
      "moe": {"n_experts": 4, "top_k": 2, "expert_hidden": 8, "n_shared_experts": 2,
              "n_dense_layers": 1}},
     UNTIED_TOP + 32 + L * (64 + 3508) + 4608 + (128 + 3072 + 1536), "deepseek_v2",
     {**HF, "intermediate_size": 48, "moe_intermediate_size": 8, "n_routed_experts": 4,
      "num_experts_per_tok": 2, "n_shared_experts": 2, "first_k_dense_replace": 1,
      "q_lora_rank": None, "kv_lora_rank": 8, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4,
      "v_head_dim": 8, "attention_bias": True, "tie_word_embeddings": False}),
    # Mixtral: every block MoE, 4 experts of 48 (4 x 3 x 48 x 32 = 18,432) and a router 128.
    ("moe (mixtral)",
     {**LLAMA, "n_kv_head": 2, "moe": {"n_experts": 4, "top_k": 2, "expert_hidden": 48}},
     UNTIED_TOP + 32 + L * (64 + 3072 + 128 + 18432), "mixtral",
     {**HF, "intermediate_size": 48, "num_key_value_heads": 2, "num_local_experts": 4,
      "num_experts_per_tok": 2, "tie_word_embeddings": False}),
    # Qwen2-MoE: q/k/v biases (3,136 with o), experts of 8 (3,072), a shared expert of 24
    # (3 x 24 x 32 = 2,304) and its 1 x 32 sigmoid gate.
    ("moe with gated shared expert (qwen2_moe)",
     {**LLAMA, "n_kv_head": 2, "qkv_bias": True,
      "moe": {"n_experts": 4, "top_k": 2, "expert_hidden": 8, "shared_expert_hidden": 24,
              "shared_expert_gate": True}},
     UNTIED_TOP + 32 + L * (64 + 3136 + 128 + 3072 + 2304 + 32), "qwen2_moe",
     {**HF, "intermediate_size": 48, "num_key_value_heads": 2, "num_experts": 4,
      "num_experts_per_tok": 2, "moe_intermediate_size": 8,
      "shared_expert_intermediate_size": 24, "qkv_bias": True, "tie_word_embeddings": False}),
    # Qwen3-MoE: QK-norm of head_dim and 4 experts of 8, no shared expert.
    ("moe + qk_norm=head (qwen3_moe)",
     {**LLAMA, "n_kv_head": 2, "head_dim": 8, "qk_norm": "head",
      "moe": {"n_experts": 4, "top_k": 2, "expert_hidden": 8}},
     UNTIED_TOP + 32 + L * (64 + 3072 + 16 + 128 + 3072), "qwen3_moe",
     {**HF, "intermediate_size": 48, "num_key_value_heads": 2, "num_experts": 4,
      "num_experts_per_tok": 2, "moe_intermediate_size": 8, "head_dim": 8,
      "tie_word_embeddings": False}),
]
IDS = [case[0] for case in CASES]


def config_of(fields: dict[str, Any]) -> GPTConfig:
    return GPTConfig(**(OURS | fields))


@pytest.mark.parametrize(("name", "fields", "hand", "model_type", "hf"), CASES, ids=IDS)
def test_count_is_the_hand_count(name: str, fields: dict[str, Any], hand: int, model_type: str,
                                 hf: dict[str, Any]) -> None:
    assert count_params(config_of(fields)).total == hand


@pytest.mark.torch
@pytest.mark.parametrize(("name", "fields", "hand", "model_type", "hf"), CASES, ids=IDS)
def test_count_equals_what_transformers_builds(name: str, fields: dict[str, Any], hand: int,
                                               model_type: str, hf: dict[str, Any]) -> None:
    pytest.importorskip("transformers")
    pc = count_params(config_of(fields))
    assert pc.total == hf_meta_count(model_type, **hf)
    if fields.get("moe"):  # the active count, measured on transformers' experts modules
        assert pc.active == hf_meta_active(model_type, **hf)


def _case(prefix: str) -> GPTConfig:
    return config_of(next(fields for name, fields, *_ in CASES if name.startswith(prefix)))


def test_new_norms_are_counted_as_norms() -> None:
    # qwen3 case: ln_1, ln_2 (2 x 32) + q_norm, k_norm (2 x 8) per block, final norm 32.
    assert count_params(_case("qk_norm=head")).norms == 2 * (64 + 16) + 32
    # deepseek_v3 case: 2 x 32 + q_a_norm 16 + kv_a_norm 8 per block, final 32.
    assert count_params(_case("mla with q_lora_rank")).norms == 2 * (64 + 24) + 32
    # bloom case: ln_emb, ln_f (LayerNorms with bias, 64 each) + 2 x 64 per block.
    assert count_params(_case("embedding_norm")).norms == 2 * 64 + 2 * 128


def test_opt_projections_sit_with_the_head_and_are_matmuls() -> None:
    cfg = _case("embed_dim")
    shapes = {t.name: (t.shape, t.part, t.matmul) for t in model_tensors(cfg)}
    assert shapes["project_in.weight"] == ((32, 16), "lm_head", True)  # 16 -> 32 (out, in)
    assert shapes["project_out.weight"] == ((16, 32), "lm_head", True)
    assert shapes["wte.weight"][0] == (100, 16) and shapes["wpe.weight"][0] == (66, 32)
    assert count_params(cfg).lm_head == 2 * 512  # the head itself is tied


def test_moe_tensors_say_which_blocks_hold_them() -> None:
    cfg = _case("mla with q_lora_rank")
    flags = {t.name: (t.shape, t.blocks, t.routed) for t in model_tensors(cfg)}
    assert flags["mlp.c_fc.weight"] == ((48, 32), "dense", False)
    assert flags["mlp.router.weight"] == ((4, 32), "moe", False)
    assert flags["mlp.experts.c_fc.weight"] == ((4, 8, 32), "moe", True)
    assert flags["mlp.experts.c_proj.weight"] == ((4, 32, 8), "moe", True)
    assert flags["mlp.shared.c_gate.weight"] == ((8, 32), "moe", False)
    assert flags["attn.c_proj.weight"] == ((32, 32), "all", False)
    # One block each: dense MLP 4,608 once, experts 3,072 once.
    assert across_model(cfg, [t for t in model_tensors(cfg) if t.part == "mlp"]) == \
        4608 + 128 + 3072 + 768


def test_active_counts_top_k_of_the_routed_experts() -> None:
    # mixtral case: 2 blocks x 18,432 routed expert weights, a token uses 2 of 4 experts.
    mixtral = count_params(_case("moe (mixtral)"))
    assert mixtral.active == mixtral.total - 2 * 18432 // 2 == 49824 - 18432
    # deepseek_v3 case: one MoE block of 3,072 routed weights, half active; shared expert and
    # router always active.
    v3 = count_params(_case("mla with q_lora_rank"))
    assert v3.active == v3.total - 3072 // 2
    dense = count_params(_case("qk_norm=head"))
    assert dense.active == dense.total


def test_active_numel_of_a_routed_tensor_is_top_k_experts() -> None:
    cfg = _case("moe (mixtral)")
    routed = [t for t in model_tensors(cfg) if t.routed]
    assert [t.name for t in routed] == ["mlp.experts.c_fc.weight", "mlp.experts.c_gate.weight",
                                        "mlp.experts.c_proj.weight"]
    assert [active_numel(t, cfg) for t in routed] == [2 * 48 * 32] * 3
    router = next(t for t in model_tensors(cfg) if t.name == "mlp.router.weight")
    assert active_numel(router, cfg) == 4 * 32


@pytest.mark.torch
def test_mla_shapes_are_deepseek_v3s_one_by_one() -> None:
    pytest.importorskip("transformers")
    hf = next(h for name, _, _, _, h in CASES if name.startswith("mla with q_lora_rank"))
    theirs = hf_meta_parameters("deepseek_v3", **hf)
    ours = {t.name: t.shape for t in model_tensors(_case("mla with q_lora_rank"))}
    hf_name = {"attn.q_a_proj": "q_a_proj", "attn.q_a_norm": "q_a_layernorm",
               "attn.q_b_proj": "q_b_proj", "attn.kv_a_proj": "kv_a_proj_with_mqa",
               "attn.kv_a_norm": "kv_a_layernorm", "attn.kv_b_proj": "kv_b_proj",
               "attn.c_proj": "o_proj"}
    for name, theirs_name in hf_name.items():
        assert ours[f"{name}.weight"] == theirs[f"model.layers.0.self_attn.{theirs_name}.weight"]
    # transformers fuses gate and up: (E, 2 f_e, d); ours lists them apart, (E, f_e, d) each.
    fused = theirs["model.layers.1.mlp.experts.gate_up_proj"]
    assert (fused[0], fused[1] // 2, fused[2]) == ours["mlp.experts.c_fc.weight"]
    assert theirs["model.layers.1.mlp.experts.down_proj"] == ours["mlp.experts.c_proj.weight"]

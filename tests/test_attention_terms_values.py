"""`scaleplan.memory.attention_terms` by hand, torch-free so mutation testing sees each term.

GQA layout: d = 32, a = 4 query heads, k = 2 key/value heads of h = 8, RMSNorm, RoPE.
b = 2, s = 3, so T = 6 tokens and b a s^2 = 72 score elements. e = 2 under autocast or bf16
weights, 4 in fp32; every byte is written out below.
"""

from __future__ import annotations

from scaleplan.memory.attention_terms import (
    fused_attention_terms,
    math_attention_terms,
    mla_projection_terms,
    qk_norm_terms,
    rotary_dim,
)
from scaleplan.model.architecture import MLA
from scaleplan.model.config import GPTConfig

GQA = GPTConfig(n_layer=1, n_head=4, n_kv_head=2, n_embd=32, vocab_size=16, block_size=16,
                bias=False, norm="rmsnorm", position="rope", mlp="swiglu")
P = 2 * 4 * 3 * 3  # b a s^2


def test_rotary_dim_rounds_down_and_reads_mla() -> None:
    assert rotary_dim(GQA) == 8  # the whole head
    assert rotary_dim(GQA.replace(rotary_fraction=0.5)) == 4
    assert rotary_dim(GQA.replace(rotary_fraction=0.3)) == 2  # int(8 x 0.3 = 2.4)
    mla = MLA(q_lora_rank=12, kv_lora_rank=10, qk_nope_head_dim=6, qk_rope_head_dim=2,
              v_head_dim=5)
    assert rotary_dim(GQA.replace(n_kv_head=4, mla=mla)) == 2


def test_fused_kernel_saves_qkv_rotated_qk_and_lse() -> None:
    assert fused_attention_terms(GQA, 2, 3, 2) == {
        "qkv": 6 * (4 + 2 * 2) * 8 * 2,  # q, k, v views of the fused projection: 768
        "rope_qk": 6 * (4 + 2) * 8 * 2,  # the rotated q and k: 576
        "attn_lse": 2 * 4 * 3 * 4,  # b a s fp32: 96
    }
    learned = fused_attention_terms(GQA.replace(position="learned"), 2, 3, 4)
    assert learned == {"qkv": 6 * 8 * 8 * 4, "attn_lse": 96}


def math(cfg: GPTConfig = GQA, **kw: object) -> dict[str, int]:
    options: dict[str, object] = {"precision": "bf16-mixed", "attention": "eager",
                                  "device": "cuda", "dropout": False, **kw}
    return math_attention_terms(cfg, 2, 3, **options)  # type: ignore[arg-type]


def test_eager_attention_on_cuda_under_autocast_with_dropout() -> None:
    # q, k, v expanded to the 4 query heads: T a (2 h + h) e = 6 x 4 x 24 x 2; the scores in
    # fp32 (CUDA's softmax under autocast); a bool mask; the dropped bf16 probabilities
    assert math(dropout=True) == {"q_k_v_copies": 1152, "attn_scores": P * 4,
                                  "attn_dropout_mask": P * 1, "attn_dropped": P * 2}


def test_cpu_math_fallback_computes_in_fp32() -> None:
    # flash on CPU with dropout falls back to the math kernel, in fp32 whatever the input dtype;
    # CPU's dropout mask is in the probabilities' dtype (fp32)
    assert math(attention="flash", device="cpu", dropout=True) == {
        "q_k_v_copies": 6 * 4 * 24 * 4, "attn_scores": P * 4, "attn_dropout_mask": P * 4,
        "attn_dropped": P * 4}
    # under CUDA's dropout semantics SDPA keeps no dropout mask (its kernel keeps an RNG state)
    assert math(attention="flash", device="cpu-cuda-semantics", dropout=True) == {
        "q_k_v_copies": 6 * 4 * 24 * 4, "attn_scores": P * 4}
    # eager on CPU with bf16 weights: scores, mask and dropped probabilities all bf16
    assert math(precision="bf16-true", device="cpu", dropout=True) == {
        "q_k_v_copies": 6 * 4 * 24 * 2, "attn_scores": P * 2, "attn_dropout_mask": P * 2,
        "attn_dropped": P * 2}


def test_softcap_keeps_the_tanh() -> None:
    t = math(GQA.replace(attn_softcap=30.0), precision="32-true")
    assert t["attn_softcap_tanh"] == P * 4
    assert t["attn_scores"] == P * 4


def test_alibi_promotes_the_scores_under_autocast() -> None:
    alibi = GQA.replace(position="alibi")
    # CPU: the fp32 bias promotes the bf16 scores to fp32 (the residual's dtype); the product
    # with v keeps their bf16 cast
    assert math(alibi, device="cpu") == {"q_k_v_copies": 1152, "attn_scores": P * 4,
                                         "attn_scores_cast": P * 2}
    # with dropout the dropped probabilities are that cast instead; CUDA's mask is bool
    assert math(alibi, dropout=True) == {"q_k_v_copies": 1152, "attn_scores": P * 4,
                                         "attn_dropout_mask": P, "attn_dropped": P * 2}
    # bf16 weights: the bias is bf16 too, nothing promoted, no cast
    assert math(alibi, precision="bf16-true") == {"q_k_v_copies": 1152, "attn_scores": P * 2}


def test_qk_rmsnorm_per_head_on_cpu_upcasts_under_autocast() -> None:
    cfg = GQA.replace(qk_norm="head")
    # CPU RMSNorm upcasts the bf16 q and k to fp32 copies (the input it saves), keeps the rstd
    # per head row and the fp32 normalised input: q rows T a = 24, k rows T k = 12, width 8
    assert qk_norm_terms(cfg, 6, "bf16-mixed", False, True) == {
        "q_norm_input": 24 * 8 * 4, "q_norm_stats": 24 * 4, "q_norm_normalized": 24 * 8 * 4,
        "k_norm_input": 12 * 8 * 4, "k_norm_stats": 12 * 4, "k_norm_normalized": 12 * 8 * 4}
    # fp32 on CPU with the math kernel: the norms read views of the projection's output,
    # saved once as qkv = T (a + 2k) h 4
    assert qk_norm_terms(cfg, 6, "32-true", False, False) == {
        "qkv": 6 * 8 * 8 * 4, "q_norm_input": 0, "q_norm_stats": 96,
        "q_norm_normalized": 768, "k_norm_input": 0, "k_norm_stats": 48,
        "k_norm_normalized": 384}


def test_qk_norm_over_all_heads_and_per_head_scales() -> None:
    # "full": one row per token over a h = 32 (q) and k h = 16 (k) features; CUDA's fused
    # RMSNorm keeps the rstd; without RoPE the fused kernel keeps the normalised q and k
    full = GQA.replace(qk_norm="full", position="learned")
    assert qk_norm_terms(full, 6, "32-true", True, True) == {
        "q_norm_input": 0, "q_norm_stats": 6 * 4, "k_norm_input": 0, "k_norm_stats": 6 * 4,
        "qk_normed": 6 * (4 + 2) * 8 * 4}
    # "per_head": a norm without its own scale, then a (heads, head_dim) scale that keeps the
    # normalised q and k (rows x width x e)
    per_head = GQA.replace(qk_norm="per_head")
    assert qk_norm_terms(per_head, 6, "32-true", False, True) == {
        "q_norm_input": 0, "q_norm_stats": 96, "q_norm_scaled": 24 * 8 * 4,
        "k_norm_input": 0, "k_norm_stats": 48, "k_norm_scaled": 12 * 8 * 4}


MLA_CFG = GQA.replace(n_kv_head=4, mla=MLA(q_lora_rank=12, kv_lora_rank=10, qk_nope_head_dim=6,
                                           qk_rope_head_dim=2, v_head_dim=5))


def test_mla_projections_fused_on_cuda_under_autocast() -> None:
    # r_q = 12, r_kv = 10, n = 6, r = 2, v = 5, a = 4, T = 6, e = 2
    assert mla_projection_terms(MLA_CFG, 2, 3, "bf16-mixed", True, True) == {
        "mla_q_norm_input": 6 * 12 * 2, "mla_q_norm_stats": 6 * 4,  # CUDA RMSNorm
        "mla_q_latent": 6 * 12 * 2,  # q_b_proj's input
        "mla_input_casts": 6 * 32 * 2,  # the second cast of the block input
        "mla_kv_latent_rope": 6 * (10 + 2) * 2,  # kv_a_proj's output
        "mla_kv_norm_input": 0, "mla_kv_norm_stats": 6 * 4,  # reads the latent's view
        "mla_kv_latent": 6 * 10 * 2,  # kv_b_proj's input
        "mla_qk_rotated": 2 * 6 * 4 * (6 + 2) * 2,  # q and k with rotary parts: 768
        "mla_kv_heads": 6 * 4 * (6 + 5) * 2,  # kv_b_proj's output: 528
        "attn_lse": 2 * 4 * 3 * 4}


def test_mla_projections_on_cpu() -> None:
    direct = MLA_CFG.replace(mla=MLA_CFG.mla.model_copy(update={"q_lora_rank": None}))  # type: ignore[union-attr]
    # bf16 on CPU: the kv norm upcasts the latent to an fp32 copy (its saved input), so the
    # projection's output is not kept; the norm keeps its fp32 normalised input; no fused terms
    assert mla_projection_terms(direct, 2, 3, "bf16-mixed", False, False) == {
        "mla_input_casts": 384, "mla_kv_norm_input": 6 * 10 * 4, "mla_kv_norm_stats": 24,
        "mla_kv_norm_normalized": 6 * 10 * 4, "mla_kv_latent": 6 * 10 * 2}
    # fp32: no upcast, so kv_a_proj's output is the norm's saved input
    assert mla_projection_terms(direct, 2, 3, "32-true", False, False) == {
        "mla_kv_latent_rope": 6 * 12 * 4, "mla_kv_norm_input": 0, "mla_kv_norm_stats": 24,
        "mla_kv_norm_normalized": 6 * 10 * 4, "mla_kv_latent": 6 * 10 * 4}


def test_mla_latent_norms_are_rmsnorms_whatever_the_config_says() -> None:
    # a LayerNorm model's MLA still normalises its latents with RMSNorm: one rstd per token
    layer = MLA_CFG.replace(norm="layernorm")
    t = mla_projection_terms(layer, 2, 3, "bf16-mixed", True, True)
    assert (t["mla_q_norm_stats"], t["mla_kv_norm_stats"]) == (6 * 4, 6 * 4)
    cpu = mla_projection_terms(layer, 2, 3, "32-true", False, False)
    assert cpu["mla_kv_norm_normalized"] == 6 * 10 * 4


def test_layernorm_qk_norm_statistics_under_cpu_autocast() -> None:
    # LayerNorm on CPU keeps mean and rstd in fp32 beside its fp32 scale under autocast (the
    # q rows T a = 24, k rows T k = 12), not in the bf16 input's dtype
    cfg = GQA.replace(norm="layernorm", qk_norm="head")
    t = qk_norm_terms(cfg, 6, "bf16-mixed", False, True)
    assert (t["q_norm_stats"], t["k_norm_stats"]) == (2 * 24 * 4, 2 * 12 * 4)


def test_rotated_q_and_k_are_copies_at_b_1() -> None:
    # the 2026-12-05 mutmut rerun: RoPE's test in the b = 1 view rule was unchecked. Eager,
    # multi-head (a = k = 4, h = 16), RoPE, fp32, b = 1, s = 32: the rotated q and k are new
    # tensors the math kernel copies (2 T a h x 4), v stays a view of the fused projection's
    # output, which is saved whole (T (a + 2k) h x 4)
    from scaleplan.memory.activations import block_saved_terms

    cfg = GPTConfig(n_layer=1, n_head=4, n_embd=64, vocab_size=16, block_size=32,
                    position="rope")
    t = block_saved_terms(cfg, 1, 32, precision="32-true", attention="eager",
                          checkpointing="none", device="cuda", dropout=False)
    assert t["q_k_v_copies"] == 2 * 32 * 4 * 16 * 4
    assert t["qkv"] == 32 * 12 * 16 * 4

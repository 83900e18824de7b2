"""Saved-tensor terms by hand where the CPU-measured golden grid cannot reach: CUDA kernel
semantics, selective checkpointing, and the autocast weight copies' arguments.

GPT-2-style tiny model: L = 2, d = 64, a = 4 heads of h = 16, f = 256, V = 256, LayerNorm with
bias, learned positions, tied head. b = 2, s = 32, so T = 64 tokens.
"""

from __future__ import annotations

from scaleplan.memory.activations import (
    autocast_weight_copy_bytes,
    block_saved_terms,
    model_saved_terms,
)
from scaleplan.model.config import GPTConfig

GPT = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=256)
LLAMA = GPTConfig(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, mlp="swiglu", mlp_hidden=192,
                  norm="rmsnorm", position="rope", bias=False, tie_embeddings=False,
                  vocab_size=256, block_size=64)


def block(cfg: GPTConfig = GPT, **kw: object) -> dict[str, int]:
    options: dict[str, object] = {"precision": "32-true", "attention": "flash",
                                  "checkpointing": "none", "device": "cuda", "dropout": False,
                                  **kw}
    return block_saved_terms(cfg, 2, 32, **options)  # type: ignore[arg-type]


def test_cuda_layernorm_statistics_are_fp32_even_for_bf16_inputs() -> None:
    # CUDA's native_layer_norm keeps mean and rstd in fp32 (its accumulation type): 2 T x 4;
    # the input is saved in bf16, T d x 2
    t = block(precision="bf16-true")
    assert t["norm1_stats"] == 2 * 64 * 4
    assert t["norm1_input"] == 64 * 64 * 2
    # on CPU with bf16 inputs (no autocast) the statistics are bf16: 2 T x 2
    assert block(precision="bf16-true", device="cpu")["norm1_stats"] == 2 * 64 * 2
    # under autocast layer_norm runs in fp32 on either device: 2 T x 4
    assert block(precision="bf16-mixed", device="cpu")["norm1_stats"] == 2 * 64 * 4


def test_cuda_rmsnorm_saves_input_and_rstd_only() -> None:
    # the fused CUDA kernel: input (T d r, r = 4 fp32 residual under autocast) and T fp32 rstd
    t = block(LLAMA, precision="bf16-mixed")
    assert (t["norm1_input"], t["norm1_stats"]) == (64 * 64 * 4, 64 * 4)
    assert "norm1_normalized" not in t


def test_cuda_eager_attention_under_autocast_with_dropout() -> None:
    # eager attention on CUDA under bf16 autocast: q, k, v copies 3 T a h x 2 = 3 x 64 x 64 x 2;
    # the softmax output b a s^2 in fp32 (autocast runs softmax in fp32) = 2 x 4 x 32 x 32 x 4;
    # dropout: a bool mask b a s^2 x 1 and the dropped probabilities b a s^2 x 2
    t = block(precision="bf16-mixed", attention="eager", dropout=True)
    assert t["q_k_v_copies"] == 24_576
    assert t["attn_scores"] == 32_768
    assert t["attn_dropout_mask"] == 8192
    assert t["attn_dropped"] == 16_384
    assert t["resid_dropout_masks"] == 2 * 64 * 64 * 1  # two bool T d masks
    # without autocast (bf16 weights) the scores stay bf16: 2 x 4 x 32 x 32 x 2
    assert block(precision="bf16-true", attention="eager")["attn_scores"] == 16_384


def test_selective_checkpointing_drops_the_eager_attention_core() -> None:
    # Korthikanti et al. 2022, Sec. 4.2: scores, softmax and dropout are recomputed, so neither
    # they nor the causal mask are saved; q/k/v's projection output and the MLP still are
    sel = block(attention="eager", checkpointing="selective", dropout=True)
    for gone in ("q_k_v_copies", "attn_scores", "attn_dropout_mask", "attn_dropped"):
        assert gone not in sel
    assert sel["attn_out"] == 64 * 64 * 4
    assert sel["mlp_activations"] == 2 * 64 * 256 * 4
    model = {"precision": "32-true", "attention": "eager", "device": "cuda"}
    assert model_saved_terms(GPT, 2, 32, checkpointing="selective", **model) == {}  # type: ignore[arg-type]
    assert model_saved_terms(GPT, 2, 32, checkpointing="none", **model) == {  # type: ignore[arg-type]
        "causal_mask": 32 * 32}  # one s x s bool mask shared by every block


def test_full_checkpointing_keeps_only_the_block_input() -> None:
    # the residual stream entering the block: T d r, fp32 under autocast
    assert block(precision="bf16-mixed", checkpointing="full") == {"block_input": 64 * 64 * 4}
    # RoPE's tables are not kept either (recomputed with the block)
    assert model_saved_terms(LLAMA, 2, 32, precision="32-true", attention="flash",
                             checkpointing="full", device="cuda") == {}


def test_rope_tables_follow_the_parameter_dtype() -> None:
    # cos and sin, block_size x head_dim each: 2 x 64 x 16 x (2 for bf16 parameters, else 4)
    kw = {"attention": "flash", "checkpointing": "none", "device": "cuda"}
    assert model_saved_terms(LLAMA, 2, 32, precision="bf16-true", **kw) == {  # type: ignore[arg-type]
        "rope_tables": 4096}
    assert model_saved_terms(LLAMA, 2, 32, precision="bf16-mixed", **kw) == {  # type: ignore[arg-type]
        "rope_tables": 8192}


def test_autocast_weight_copies_by_layers_and_head() -> None:
    # bf16 copies (2 bytes) of every matmul weight: per block 12,288 attention + 36,864 SwiGLU
    # = 49,152; the output head 64 x 256 = 16,384
    assert autocast_weight_copy_bytes(LLAMA, "bf16-mixed") == (2 * 49_152 + 16_384) * 2
    assert autocast_weight_copy_bytes(LLAMA, "16-mixed", layers=1, head=False) == 49_152 * 2
    assert autocast_weight_copy_bytes(LLAMA, "bf16-mixed", layers=0) == 16_384 * 2
    assert autocast_weight_copy_bytes(LLAMA, "bf16-mixed", layers=0, head=False) == 0
    assert autocast_weight_copy_bytes(LLAMA, "bf16-true") == 0  # no autocast, no copies
    # GELU: 4 d^2 attention + 2 d f MLP = 16,384 + 32,768 per block; tied head cast all the same
    assert autocast_weight_copy_bytes(GPT, "bf16-mixed") == (2 * 49_152 + 16_384) * 2


# What the 2026-12-05 mutmut rerun of activations.py found unchecked (68 of 608 survived):
# parallel blocks' second norm, post norms and the embedding norm on CUDA, QK-norm beside the
# fused and the math kernels, the output copy's device, the term names `training_memory`'s
# saved_breakdown shows (attn_out_copy's also decides the tensor-parallel split), MoE weight
# copies and layer counts, the sliding-window masks' edges.
# T = 64 tokens (b 2, s 32), d 64 throughout; every byte written out.


def _only(terms: dict[str, int], prefix: str) -> dict[str, int]:
    return {k: v for k, v in terms.items() if k.startswith(prefix)}


def test_parallel_block_second_norm_reads_the_shared_residual() -> None:
    par = LLAMA.replace(parallel="separate_norms")
    # CPU RMSNorm upcasts a 16-bit input to an fp32 copy: its own storage, T d 4, saved; the
    # fp32 rstd T x 4 and the fp32 normalised input T d 4 for the scale
    assert _only(block(par, precision="bf16-true", device="cpu"), "norm2") == {
        "norm2_input": 64 * 64 * 4, "norm2_stats": 64 * 4, "norm2_normalized": 64 * 64 * 4}
    # fp32: the input is the residual norm1 saves already, not counted again
    assert _only(block(par, precision="32-true", device="cpu"), "norm2") == {
        "norm2_input": 0, "norm2_stats": 64 * 4, "norm2_normalized": 64 * 64 * 4}
    # CUDA's fused kernel: the shared input (not again) and the fp32 rstd
    assert _only(block(par, precision="bf16-true", device="cuda"), "norm2") == {
        "norm2_input": 0, "norm2_stats": 64 * 4}


def test_post_norms_by_name_and_device() -> None:
    post = GPT.replace(norm_position="post")
    # LayerNorm on each sublayer's bf16 output: input T d 2; mean and rstd per token, fp32 on
    # CUDA, bf16 on CPU
    cuda = block(post, precision="bf16-true", device="cuda")
    assert _only(cuda, "post_norm") == {
        "post_norm1_input": 64 * 64 * 2, "post_norm1_stats": 2 * 64 * 4,
        "post_norm2_input": 64 * 64 * 2, "post_norm2_stats": 2 * 64 * 4}
    assert block(post, precision="bf16-true", device="cpu")["post_norm1_stats"] == 2 * 64 * 2
    assert "norm1_input" not in cuda and "norm2_input" not in cuda


def test_qk_norm_terms_beside_each_kernel() -> None:
    qk = LLAMA.replace(qk_norm="head")
    # CUDA, fp32, SDPA: the norms read the projection's output (saved once, as qkv
    # T (a + 2k) h = 64 x 8 x 16 fp32), keep one fp32 rstd per token and head, no normalised
    # copy (the fused kernel), and the output projection reads SDPA's output as it is
    cuda = block(qk, device="cuda")
    assert cuda["qkv"] == 64 * 8 * 16 * 4
    assert _only(cuda, "q_norm") == {"q_norm_input": 0, "q_norm_stats": 64 * 4 * 4}
    assert "attn_out_copy" not in cuda
    # CPU's fused kernel lays its output out as its per-head queries: the output projection
    # copies it, T a h fp32
    assert block(qk, device="cpu")["attn_out_copy"] == 64 * 4 * 16 * 4
    # eager at b = 2: the math kernel's q/k/v copies beside the projection output the norms
    # read, still counted
    assert block(qk, attention="eager")["qkv"] == 64 * 8 * 16 * 4
    # without RoPE the fused kernel saves the normalised q and k, T (a + k) h fp32
    plain = qk.replace(position="learned")
    assert block(plain)["qk_normed"] == 64 * 6 * 16 * 4


def test_embedding_and_head_terms_by_name() -> None:
    from scaleplan.memory.activations import embedding_saved_terms, head_saved_terms

    cfg = GPT.replace(embed_dim=32, embedding_norm=True, final_softcap=30.0)
    emb = embedding_saved_terms(cfg, 2, 32, precision="bf16-true", device="cuda",
                                dropout=False)
    # int64 ids T x 8 and positions s x 8; the projection into the residual stream saves its
    # T x 32 bf16 input; the LayerNorm after it its bf16 T d input and fp32 mean and rstd
    assert emb == {"token_ids": 64 * 8, "position_ids": 32 * 8, "project_in_input": 64 * 32 * 2,
                   "embedding_norm_input": 64 * 64 * 2, "embedding_norm_stats": 2 * 64 * 4}
    cpu = embedding_saved_terms(cfg, 2, 32, precision="bf16-true", device="cpu",
                                dropout=False)
    assert cpu["embedding_norm_stats"] == 2 * 64 * 2  # bf16 statistics on CPU
    head = head_saved_terms(cfg, 2, 32, precision="bf16-true", device="cuda")
    # the projection out of the residual stream T d, the output layer's T x 32 input, the
    # softcap's tanh T V, all bf16
    assert head["project_out_input"] == 64 * 64 * 2
    assert head["lm_head_input"] == 64 * 32 * 2
    assert head["logits_softcap_tanh"] == 64 * 256 * 2


def test_sliding_window_masks_at_their_edges() -> None:
    one = GPT.replace(sliding_window=16, sliding_window_layers=1)
    # eager, one of two blocks sliding: the causal mask and the band, s^2 bool each
    assert model_saved_terms(one, 2, 32, precision="32-true", attention="eager",
                             checkpointing="none", device="cuda") == {
        "causal_mask": 32 * 32, "sliding_mask": 32 * 32}
    # SDPA on CPU: a float copy of the band per sliding block when it hides anything;
    # at s = 16 = the window it hides nothing
    assert model_saved_terms(one, 2, 32, precision="32-true", attention="flash",
                             checkpointing="none", device="cpu") == {
        "sliding_masks": 32 * 32 * 4}
    assert model_saved_terms(one, 2, 16, precision="32-true", attention="flash",
                             checkpointing="none", device="cpu") == {"sliding_masks": 0}
    # CUDA's kernels take the window itself
    assert model_saved_terms(one, 2, 32, precision="32-true", attention="flash",
                             checkpointing="none", device="cuda") == {}


def test_moe_weight_copies_and_layer_counts() -> None:
    from scaleplan.memory.activations import layers_saved_terms
    from scaleplan.model.architecture import MoE

    moe = LLAMA.replace(n_layer=3, moe=MoE(n_experts=4, top_k=2, expert_hidden=32,
                                           n_dense_layers=1))
    # per block q 64 x 64, k and v 32 x 64 each, o 64 x 64: 12,288; the dense block's SwiGLU
    # 3 x 64 x 192 = 36,864; an MoE block's router 4 x 64 = 256 and 4 experts x 3 x 64 x 32
    # = 24,576; the untied head 256 x 64 = 16,384
    dense, routed = 12288 + 36864, 12288 + 256 + 24576
    assert autocast_weight_copy_bytes(moe, "bf16-mixed") == 2 * (
        dense + 2 * routed + 16384)
    # two experts a rank under expert parallelism 2, the first (MoE) block alone, bytes as ints
    half = autocast_weight_copy_bytes(moe, "bf16-mixed", layers=1, head=False, expert=2)
    assert half == 2 * (12288 + 256 + 24576 // 2)
    assert type(half) is int
    # a stage of 2 of the 3 blocks holds as many MoE blocks as it can: both
    two = layers_saved_terms(moe, 2, 32, 2, precision="32-true", attention="flash",
                             checkpointing="none", device="cuda", dropout=False)
    one = block(moe, kind="moe")
    assert {k: v for k, v in two.items() if v} == {k: 2 * v for k, v in one.items() if v}
    assert two["mlp_activations"] == 0  # no dense block's MLP
    # CPU's residual dropout mask after the experts' fp32 sum is fp32: 2 T d x 4
    cpu = block(moe, kind="moe", device="cpu", dropout=True)
    assert cpu["resid_dropout_masks"] == 2 * 64 * 64 * 4


def test_per_head_qk_norm_copies_the_output_on_cpu() -> None:
    # a per-head scale makes the queries contiguous per head, as "head" does: CPU's fused
    # kernel lays out its output alike, and the output projection copies it, T a h fp32
    per_head = LLAMA.replace(qk_norm="per_head")
    assert block(per_head, device="cpu")["attn_out_copy"] == 64 * 4 * 16 * 4
    assert "attn_out_copy" not in block(per_head, device="cuda")

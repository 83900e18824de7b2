"""`scaleplan.memory.compiled_terms` by hand, torch-free so mutation testing sees each term.

Three layers, b = 1, s = 4 (T = 4 tokens), CUDA semantics unless said otherwise:

- GPT: nanoGPT's layout, d = 8, a = k = 2 heads of h = 4, f = 32, V = 16, block_size 8;
- LLAMA: d = 16, a = 4, k = 2 heads of h = 4, SwiGLU f = 24, RMSNorm, RoPE, V = 32, untied;
- RMS_LEARNED: GPT with RMSNorm and no biases (learned positions).

e = activation bytes (4 fp32, 2 under autocast), r = residual bytes (4 in both).
"""

from __future__ import annotations

import pytest

from scaleplan.errors import ScaleplanError
from scaleplan.memory.compiled_terms import (
    compiled_backward_start_bytes,
    compiled_block_saved_terms,
    compiled_embedding_saved_terms,
    compiled_head_saved_terms,
    compiled_model_saved_terms,
    compiled_saved_terms,
)
from scaleplan.model.config import GPTConfig

GPT = GPTConfig(n_layer=3, n_head=2, n_embd=8, vocab_size=16, block_size=8)
LLAMA = GPTConfig(n_layer=3, n_head=4, n_kv_head=2, n_embd=16, vocab_size=32, block_size=8,
                  bias=False, mlp="swiglu", mlp_hidden=24, norm="rmsnorm", position="rope",
                  tie_embeddings=False)
RMS_LEARNED = GPT.replace(norm="rmsnorm", bias=False)

# LLAMA under bf16 autocast, the first block: its input (the token embedding, T d r = 256) and
# rstd (16); qkv_input T d e = 128; the fused q/k/v output T (a + 2k) h e = 256; the rotated q
# and k T (a + k) h e = 192; the attention output T a h e = 128; the lse b a s 4 = 64; instead
# of the residual sum, the attention projection's output T d e = 128 and norm2's rstd 16;
# mlp_input 128; gate, up and product 3 T f e = 576
LLAMA_FIRST = 256 + 16 + 128 + 256 + 192 + 128 + 64 + 128 + 16 + 128 + 576
# a later block keeps the fp32 residual sum (T d r = 256) in place of the projection's output
LLAMA_LATER = LLAMA_FIRST - 128 + 256
# the final RMSNorm's input 256 and rstd 16, lm_head's input 128, bf16 logits T V e = 256,
# max and log-sum-exp 2 T 4 = 32, int64 targets 32 + the fp32 divisor 4
LLAMA_HEAD = 256 + 16 + 128 + 256 + 32 + 36


def test_llama_first_and_later_blocks_under_autocast() -> None:
    first = compiled_block_saved_terms(LLAMA, 1, 4, precision="bf16-mixed", dropout=False,
                                       first=True)
    assert first["attn_proj_out"] == 128 and "norm2_input" not in first
    assert sum(first.values()) == LLAMA_FIRST == 1888
    later = compiled_block_saved_terms(LLAMA, 1, 4, precision="bf16-mixed", dropout=False)
    assert later["norm2_input"] == 256 and "attn_proj_out" not in later
    assert sum(later.values()) == LLAMA_LATER == 2016


def test_llama_whole_model_under_autocast() -> None:
    t = compiled_saved_terms(LLAMA, 1, 4, precision="bf16-mixed")
    assert t["attn_proj_out"] == 128  # the first block only
    assert t["norm2_input"] == 2 * 256  # the two later blocks
    # RoPE's cos and sin tables, block_size x head_dim each in the fp32 parameter dtype
    assert t["rope_tables"] == 2 * 8 * 4 * 4
    assert t["token_ids"] == 4 * 8 and "position_ids" not in t
    assert sum(t.values()) == 32 + LLAMA_FIRST + 2 * LLAMA_LATER + 256 + LLAMA_HEAD == 6932
    # ``layers``: a pipeline stage of one layer holds the first block only
    one = compiled_saved_terms(LLAMA, 1, 4, precision="bf16-mixed", layers=1)
    assert sum(one.values()) == 32 + LLAMA_FIRST + 256 + LLAMA_HEAD


# GPT in fp32 with dropout: x_hat T d 4 = 128 and rstd 16 per LayerNorm; qkv_input 128;
# q/k/v T (a + 2k) h 4 = 384; output 128; lse b a s 4 = 32; two bool residual masks 2 T d = 64;
# mlp_input 128; GELU's input and output 2 T f 4 = 1024
GPT_BLOCK = 2 * (128 + 16) + 128 + 384 + 128 + 32 + 64 + 128 + 1024
# token ids 32, position ids s 8 = 32, the embedding's bool mask T d = 32
GPT_EMBEDDING = 32 + 32 + 32
# the final LayerNorm's x_hat 128 and rstd 16, lm_head's input 128, logits T V 4 = 256,
# 2 T 4 = 32, targets 36
GPT_HEAD = 128 + 16 + 128 + 256 + 32 + 36


def test_gpt_with_dropout_in_fp32() -> None:
    t = compiled_saved_terms(GPT.replace(dropout=0.1), 1, 4, precision="32-true")
    assert t["resid_dropout_masks"] == 3 * 64
    assert t["embedding_dropout_mask"] == 32
    assert sum(t.values()) == GPT_EMBEDDING + 3 * GPT_BLOCK + GPT_HEAD == 7220


def test_full_checkpointing_keeps_block_inputs_rng_and_seeds() -> None:
    cfg = GPT.replace(dropout=0.1)
    t = compiled_saved_terms(cfg, 1, 4, precision="bf16-mixed", checkpointing="full")
    # per block its fp32 input T d r = 128 and CUDA's Philox seed and offset (16)
    assert t["block_input"] == 3 * 128 and t["rng_state"] == 3 * 16
    assert t["dropout_seeds"] == (1 + 2 * 3) * 8  # the embedding's and two per block
    # the embedding: ids 32 + 32, the bool mask 32; at b = 1 no position embedding output
    # (the partitioner keeps the first block's input, the sum, as large as either output:
    # measured, tests/data/compiled_terms_golden.json)
    assert "position_output" not in t
    # the head: LayerNorm's mean and rstd 2 T 4 = 32, lm_head input T d e = 64, bf16 logits
    # T V e = 128, 32, targets 36
    assert t["final_norm_stats"] == 32 and "final_norm_normalized" not in t
    assert sum(t.values()) == (32 + 32 + 32) + 3 * 144 + 56 + (32 + 64 + 128 + 32 + 36)
    # at b = 2 the position embedding's output s d r = 128 is kept besides the token one (the
    # first block's input, rebuilt from both)
    two = compiled_saved_terms(cfg, 2, 4, precision="bf16-mixed", checkpointing="full")
    assert two["position_output"] == 4 * 8 * 4
    # on CPU the checkpoint keeps the CPU generator's state (5056 bytes) per block
    cpu = compiled_saved_terms(cfg, 1, 4, precision="bf16-mixed", checkpointing="full",
                               device="cpu-cuda-semantics")
    assert cpu["rng_state"] == 3 * 5056
    # RMSNorm's final norm keeps its rstd only; no dropout, no seeds
    rms = compiled_head_saved_terms(LLAMA, 1, 4, precision="32-true", checkpointing="full")
    assert rms["final_norm_stats"] == 16
    assert compiled_model_saved_terms(LLAMA, 1, 4, precision="32-true",
                                      checkpointing="full") == {"rope_tables": 2 * 8 * 4 * 4}


def test_rmsnorm_with_learned_positions_keeps_the_position_output() -> None:
    # the first block's input (token + position embeddings) is rebuilt from both outputs: the
    # token one is the block's norm1_input, the position one s d r is the embedding's
    emb = compiled_embedding_saved_terms(RMS_LEARNED, 2, 4, precision="bf16-mixed",
                                         dropout=False)
    assert emb == {"token_ids": 64, "position_ids": 32, "position_output": 4 * 8 * 4}
    # at b = 1 the sum itself is kept (measured), no larger than the position output
    one = compiled_embedding_saved_terms(RMS_LEARNED, 1, 4, precision="bf16-mixed",
                                         dropout=False)
    assert one == {"token_ids": 32, "position_ids": 32}
    # learned positions: the first block keeps the residual sum like the later ones
    first = compiled_block_saved_terms(RMS_LEARNED, 1, 4, precision="bf16-mixed",
                                       dropout=False, first=True)
    assert first["norm2_input"] == 4 * 8 * 4 and "attn_proj_out" not in first
    # the GELU MLP: up projection output and GELU output, 2 T f e
    assert first["mlp_activations"] == 2 * 4 * 32 * 2
    # with dropout the first RMSNorm block keeps the sum too (the dropout output is not the
    # embedding's)
    drop = compiled_block_saved_terms(LLAMA, 1, 4, precision="bf16-mixed", dropout=True,
                                      first=True)
    assert drop["norm2_input"] == 256 and drop["resid_dropout_masks"] == 2 * 4 * 16


def test_backward_start_holds_two_logits_sized_buffers() -> None:
    # the logits' gradient and the returned logits' zero tangent, T V e each, and the loss
    # backward's per-row sum of the gradient, T x 4 (fp32)
    assert compiled_backward_start_bytes(LLAMA, 1, 4, precision="bf16-mixed") == (
        2 * 4 * 32 * 2 + 4 * 4)
    assert compiled_backward_start_bytes(GPT, 2, 4, precision="32-true") == 2 * 8 * 16 * 4 + 8 * 4


def test_what_is_not_modelled_is_refused_by_name() -> None:
    with pytest.raises(ScaleplanError, match=r"precision in \('32-true', 'bf16-mixed', "
                       r"'16-mixed'\), not 'bf16-true'; use one of those or compile=False"):
        compiled_saved_terms(GPT, 1, 4, precision="bf16-true")
    with pytest.raises(ScaleplanError, match="checkpointing 'none' or 'full', not 'selective'"):
        compiled_saved_terms(GPT, 1, 4, precision="32-true", checkpointing="selective")
    with pytest.raises(ScaleplanError, match=r"^compile=True with dropout is modelled with "
                       r"CUDA's dropout \(device='cuda' or 'cpu-cuda-semantics'\), not CPU's "
                       r"float masks and math attention$"):
        compiled_saved_terms(GPT.replace(dropout=0.1), 1, 4, precision="32-true", device="cpu")
    # CPU without dropout is fine
    assert compiled_saved_terms(GPT, 1, 4, precision="32-true", device="cpu")
    with pytest.raises(ScaleplanError, match="qk_norm with norm='layernorm' not yet: use "
                       "compile=False"):
        compiled_saved_terms(GPT.replace(qk_norm="head"), 1, 4, precision="32-true")
    with pytest.raises(ScaleplanError, match="position not yet"):
        compiled_saved_terms(GPT.replace(position="alibi"), 1, 4, precision="32-true")
    with pytest.raises(ScaleplanError, match="rotary_fraction, sliding_window not yet"):
        compiled_saved_terms(LLAMA.replace(rotary_fraction=0.5, sliding_window=4), 1, 4,
                             precision="32-true")


def test_terms_by_name_and_in_whole_bytes() -> None:
    first = compiled_block_saved_terms(LLAMA, 1, 4, precision="bf16-mixed", dropout=False,
                                       first=True)
    assert first == {"norm1_input": 256, "norm1_rstd": 16, "qkv_input": 128, "qkv": 256,
                     "rope_qk": 192, "attn_out": 128, "attn_lse": 64, "attn_proj_out": 128,
                     "norm2_rstd": 16, "mlp_input": 128, "mlp_activations": 576}
    gpt = compiled_block_saved_terms(GPT, 1, 4, precision="32-true", dropout=True)
    assert gpt == {"norm1_normalized": 128, "norm1_rstd": 16, "qkv_input": 128, "qkv": 384,
                   "attn_out": 128, "attn_lse": 32, "resid_dropout_masks": 64,
                   "norm2_normalized": 128, "norm2_rstd": 16, "mlp_input": 128,
                   "mlp_activations": 1024}
    head = compiled_head_saved_terms(LLAMA, 1, 4, precision="bf16-mixed")
    assert head == {"final_norm_input": 256, "final_norm_rstd": 16, "lm_head_input": 128,
                    "logits": 256, "logsumexp": 32, "targets": 36}
    emb = compiled_embedding_saved_terms(GPT, 1, 4, precision="32-true", dropout=True)
    assert emb == {"token_ids": 32, "position_ids": 32, "embedding_dropout_mask": 32}
    whole = compiled_saved_terms(GPT.replace(dropout=0.1), 1, 4, precision="bf16-mixed")
    for terms in (gpt, emb, whole):
        assert all(type(v) is int for v in terms.values()), terms


def test_defaults_are_cuda_and_no_checkpointing() -> None:
    # a checkpointed block on CUDA by default: its input and the Philox seed and offset
    assert compiled_block_saved_terms(GPT, 1, 4, precision="32-true", dropout=False,
                                      checkpointing="full") == {"block_input": 128,
                                                                "rng_state": 16}
    assert compiled_model_saved_terms(LLAMA.replace(dropout=0.1), 1, 4,
                                      precision="bf16-mixed") == {"rope_tables": 256}

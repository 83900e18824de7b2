"""`scaleplan.memory.hf_terms` by hand where the CPU golden replay (tests/test_hf_terms_golden.py)
cannot reach: CUDA's semantics (bool dropout masks, SDPA fused with dropout), the names of the
terms (a total does not see a renamed term) and the refusals. torch-free.

GPT-2 layout: d = 8, a = 2 heads of h = 4, f = 32, V = 16, dropout 0.1; b = 2, s = 4, so
T = 8 tokens and b a s^2 = 64 probabilities; bf16 autocast (e = 2).
"""

from __future__ import annotations

import pytest

from scaleplan.memory.hf_terms import (
    hf_block_saved_terms,
    hf_embedding_saved_terms,
    hf_family,
    hf_model_saved_terms,
    hf_saved_terms,
)
from scaleplan.model.config import GPTConfig

GPT2 = GPTConfig(n_layer=2, n_head=2, n_embd=8, vocab_size=16, block_size=8, dropout=0.1)
# the fp32 residual stream's LayerNorms: input T d 4 = 256, mean and rstd 2 T 4 = 64; c_attn's
# and c_fc's inputs T d e = 128; gelu_new's five f-wide tensors 5 T f e = 2560
NORMS_AND_MLP = {"norm1_input": 256, "norm1_stats": 64, "qkv_input": 128, "norm2_input": 256,
                 "norm2_stats": 64, "mlp_input": 128, "mlp_activations": 2560}


def test_gpt2_sdpa_on_cuda_stays_fused_with_bool_masks() -> None:
    t = hf_block_saved_terms(GPT2, 2, 4, precision="bf16-mixed", device="cuda")
    assert t == {**NORMS_AND_MLP,
                 "attn_lse": 2 * 2 * 4 * 4,  # b a s fp32
                 "attn_out": 8 * 8 * 2,
                 "qkv": 8 * 3 * 8 * 2,  # views of c_attn's output
                 "resid_dropout_masks": 2 * 8 * 8 * 1}  # two bool T d masks


def test_gpt2_eager_on_cuda_keeps_a_bool_probability_mask() -> None:
    t = hf_block_saved_terms(GPT2, 2, 4, precision="bf16-mixed", attention="eager",
                             device="cuda")
    assert t == {**NORMS_AND_MLP,
                 "q_k_v_copies": 3 * 8 * 8 * 2,
                 "attn_probs": 64 * 4,  # softmax(dtype=float32)
                 "attn_out": 128,
                 "attn_dropout_mask": 64 * 1,
                 "attn_dropped": 64 * 2,  # the PV matmul's bf16 cast of the dropped probs
                 "resid_dropout_masks": 128}


def test_gpt2_eager_on_cpu_masks_in_the_value_dtype() -> None:
    # GPT-2's eager attention casts the probabilities to v's dtype (bf16 under autocast) before
    # dropout, so CPU's mask is bf16; the residual masks are in the branch output's dtype
    t = hf_block_saved_terms(GPT2, 2, 4, precision="bf16-mixed", attention="eager")
    assert t["attn_dropout_mask"] == 64 * 2
    assert t["resid_dropout_masks"] == 2 * 8 * 8 * 2


def test_embedding_dropout_mask_is_bool_on_cuda() -> None:
    assert hf_embedding_saved_terms(GPT2, 2, 4, precision="bf16-mixed", device="cuda") == {
        "token_ids": 2 * 4 * 8, "position_ids": 4 * 8, "embedding_dropout_mask": 8 * 8}
    llama = GPT2.replace(norm="rmsnorm", position="rope", mlp="swiglu", bias=False)
    # Llama has no embedding dropout and no position ids; Gemma keeps its sqrt(d) scale
    assert hf_embedding_saved_terms(llama, 2, 4, precision="32-true") == {"token_ids": 64}
    gemma = llama.replace(mlp="geglu")
    assert hf_embedding_saved_terms(gemma, 2, 4, precision="32-true") == {
        "token_ids": 64, "embedding_scale": 4}


def test_flat_terms_map_scaleplans_device_names() -> None:
    # "cpu-cuda-semantics" counts as CUDA: bool masks, fused SDPA
    flat = hf_saved_terms(GPT2, 2, 4, precision="bf16-mixed", attention="flash",
                          device="cpu-cuda-semantics")
    assert flat["resid_dropout_masks"] == 2 * 128  # two layers
    assert flat["embedding_dropout_mask"] == 64
    assert "attn_lse" in flat and "attn_probs" not in flat
    # ``layers`` counts the blocks of a pipeline stage
    one = hf_saved_terms(GPT2, 2, 4, precision="bf16-mixed", layers=1)
    assert one["mlp_activations"] == 2560


def test_gemma_and_neox_norm_terms_by_name() -> None:
    gemma = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, norm="rmsnorm",
                      position="rope", mlp="geglu", bias=False)
    t = hf_block_saved_terms(gemma, 2, 4, precision="32-true")
    # RMSNorm in Python: fp32 input, rstd per token, normalised input, and Gemma's 1 + weight
    assert (t["norm1_input"], t["norm1_stats"], t["norm1_normalized"],
            t["norm1_one_plus_weight"]) == (256, 32, 256, 8 * 4)
    assert t["norm2_one_plus_weight"] == 32
    neox = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, position="rope",
                     parallel="separate_norms")
    assert hf_family(neox) == "gpt_neox"
    n = hf_block_saved_terms(neox, 2, 4, precision="32-true")
    # the parallel block's two norms read the same input, saved once
    assert "norm2_input" not in n and n["norm2_stats"] == 2 * 8 * 4
    # GPT-NeoX's fused q/k/v, rotated q and k copies and the dense layer's input copy
    assert (n["qkv"], n["rope_qk"], n["dense_input"]) == (8 * 24 * 4, 2 * 8 * 8 * 4, 8 * 8 * 4)
    assert n["mlp_activations"] == 2 * 8 * 32 * 4  # exact GELU's input, dense_4h_to_h's input


def test_shared_terms_by_name() -> None:
    llama = GPTConfig(n_layer=2, n_head=2, n_embd=8, vocab_size=16, norm="rmsnorm",
                      position="rope", mlp="swiglu", bias=False)
    # cos and sin, s x h fp32 each; checkpointing adds the int64 position ids (s) and, eager,
    # the fp32 additive causal mask b s s
    assert hf_model_saved_terms(llama, 2, 4, precision="32-true") == {"rope_cos_sin": 128}
    assert hf_model_saved_terms(llama, 2, 4, precision="32-true", checkpointing=True) == {
        "rope_cos_sin": 128, "layer_position_ids": 32}
    assert hf_model_saved_terms(GPT2, 2, 4, precision="32-true", attention="eager",
                                checkpointing=True) == {"causal_mask": 2 * 4 * 4 * 4}
    # partial rotary: int(4 x 0.5) = 2 dims
    half = llama.replace(rotary_fraction=0.5)
    assert hf_model_saved_terms(half, 2, 4, precision="32-true") == {"rope_cos_sin": 64}


def test_refusals_name_the_value() -> None:
    with pytest.raises(ValueError, match=r"checkpointing='selective': transformers checkpoints "
                       r"whole layers \('full'\) or nothing \('none'\)"):
        hf_saved_terms(GPT2, 2, 4, precision="32-true", checkpointing="selective")
    with pytest.raises(ValueError, match="attention='math': use 'flash'/'sdpa' or 'eager'"):
        hf_saved_terms(GPT2, 2, 4, precision="32-true", attention="math")
    with pytest.raises(ValueError, match=r"precision='bf16-true': the Hugging Face terms cover "
                       r"fp32 parameters only \('32-true', 'bf16-mixed', '16-mixed'\)"):
        hf_block_saved_terms(GPT2, 2, 4, precision="bf16-true")
    with pytest.raises(ValueError, match="fp32 parameters only"):
        hf_model_saved_terms(GPT2, 2, 4, precision="bf16-true")
    with pytest.raises(ValueError, match="fp32 parameters only"):
        hf_embedding_saved_terms(GPT2, 2, 4, precision="bf16-true")


def test_byte_counts_are_ints_and_named() -> None:
    # GPT-2 at b = 1 on CPU's fp32 math kernel (dropout): v is a view of c_attn's output, whose
    # whole storage T 3 a h 4 is kept, 2 T a h 4 = 2 x 4 x 8 x 4 = 256 more than v alone
    t = hf_block_saved_terms(GPT2, 1, 4, precision="32-true")
    assert t["fused_qkv_view"] == 256
    neox = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, position="rope")
    n = hf_block_saved_terms(neox, 2, 4, precision="32-true")
    assert (n["mlp_input"], n["mlp_activations"]) == (8 * 8 * 4, 2 * 8 * 32 * 4)
    for terms in (t, n, hf_saved_terms(GPT2, 1, 4, precision="bf16-mixed", device="cuda")):
        assert all(type(v) is int for v in terms.values()), terms


def test_total_passes_device_and_family_through() -> None:
    # on CUDA the three dropout masks are bool: the embedding's T d and per layer two T d,
    # 8 x 8 x (4 - 1) + 2 x 2 x 8 x 8 x (2 - 1) bytes less than CPU's (fp32 / bf16 masks)
    from scaleplan.memory.hf_terms import hf_saved_bytes

    cpu = hf_saved_bytes(GPT2, 2, 4, precision="bf16-mixed", attention="eager")
    cuda = hf_saved_bytes(GPT2, 2, 4, precision="bf16-mixed", attention="eager", device="cuda")
    # and eager's probability mask: bf16 on CPU, bool on CUDA, b a s^2 = 64 per layer
    assert cpu - cuda == 64 * 3 + 2 * 128 * 1 + 2 * 64 * 1
    # a Llama shape counted as Gemma's code: + the fp32 1 + weight (d) of the 2 x 2 + 1 norms
    llama = GPTConfig(n_layer=2, n_head=2, n_embd=8, vocab_size=16, norm="rmsnorm",
                      position="rope", mlp="swiglu", bias=False)
    as_gemma = hf_saved_bytes(llama, 2, 4, precision="32-true", family="gemma")
    # + Gemma's saved sqrt(d) scale (4 bytes)
    assert as_gemma - hf_saved_bytes(llama, 2, 4, precision="32-true") == 5 * 8 * 4 + 4


def test_neox_sequential_block_saves_both_norm_inputs() -> None:
    # use_parallel_residual=False: the second norm reads the attention's residual sum, its own
    # fp32 input T d 4 = 256
    neox = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, position="rope")
    assert hf_family(neox) == "gpt_neox"
    assert hf_block_saved_terms(neox, 2, 4, precision="32-true")["norm2_input"] == 256

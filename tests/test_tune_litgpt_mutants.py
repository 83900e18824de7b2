"""Hand calculations for what mutmut's run over `scaleplan.memory.tune_terms` and
`scaleplan.memory.litgpt_terms` found unchecked: the names of the compiled layer's terms (they
are what `training_memory`'s ``saved_breakdown`` shows), the Qwen2 RoPE buffer when the family
is inferred, the ``family`` and ``device`` that the byte totals pass on, and that byte counts
stay Python ints. Torch-free; every byte written out.
"""

from __future__ import annotations

import pytest

from scaleplan.memory.litgpt_terms import (
    litgpt_block_saved_terms,
    litgpt_head_saved_terms,
    litgpt_loss_saved_terms,
    litgpt_loss_transients,
    litgpt_saved_bytes,
    litgpt_saved_terms,
)
from scaleplan.memory.tune_terms import (
    tune_block_saved_terms,
    tune_buffer_bytes,
    tune_head_saved_terms,
    tune_saved_bytes,
    tune_saved_terms,
)
from scaleplan.model.config import GPTConfig

# tests/test_tune_memory.py's LLAMA: d 64, 4 query heads and 2 key-value heads of 16, f 128
LLAMA = GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, mlp_hidden=128, vocab_size=100,
                  block_size=32, bias=False, mlp="swiglu", norm="rmsnorm", position="rope")


def test_compiled_layer_terms_by_name() -> None:
    # b 2, s 8: T 16 tokens, bf16 (e 2). Inductor's partition keeps the layer's input, the
    # attention norm's output, the residual after attention and the MLP norm's output, both
    # norms' fp32 rstd, SDPA's q, k and v expanded to 4 heads, its output and fp32 lse, the
    # gate and up outputs and their product; packed on CPU the additive mask b s s e
    t = tune_block_saved_terms(LLAMA, 2, 8, precision="bf16-true", compiled=True,
                               packed=True, device="cpu")
    assert t == {"block_input": 16 * 64 * 2, "norm1_output": 16 * 64 * 2,
                 "attn_residual": 16 * 64 * 2, "norm2_output": 16 * 64 * 2,
                 "norm_stats": 2 * 16 * 4, "attn_q": 16 * 4 * 16 * 2,
                 "attn_k_v": 2 * 16 * 4 * 16 * 2, "attn_out": 16 * 4 * 16 * 2,
                 "attn_lse": 2 * 4 * 8 * 4, "mlp_activations": 3 * 16 * 128 * 2,
                 "attn_mask": 2 * 8 * 8 * 2}


def test_rope_buffers_of_an_inferred_qwen2_by_hand() -> None:
    # biased q/k/v: counted as Qwen2, whose cache holds [cos, sin]: 32 rows x 2h = 32 values,
    # fp32, plus theta's h/2 = 8 values
    qwen = LLAMA.replace(qkv_bias=True)
    assert tune_buffer_bytes(qwen) == 32 * 32 * 4 + 8 * 4 == 4128
    assert tune_buffer_bytes(LLAMA) == 32 * 16 * 4 + 8 * 4 == 2080  # interleaved: h values
    assert type(tune_buffer_bytes(LLAMA)) is int  # bytes are exact ints


def test_saved_bytes_take_the_family_given() -> None:
    # counted as Qwen2 in bf16, each layer casts cos and sin for q and for k: four tensors of
    # one batch row, s x h x 2 bytes each; Llama's rotations save views of the buffer
    llama = tune_saved_bytes(LLAMA, 2, 8, precision="bf16-true")
    qwen = tune_saved_bytes(LLAMA, 2, 8, precision="bf16-true", family="qwen2")
    assert qwen - llama == 2 * 4 * 8 * 16 * 2


def test_litgpt_saved_bytes_take_the_device() -> None:
    # LayerNorm under bf16 parameters keeps its mean and rstd in bf16 on CPU and in fp32 on
    # CUDA: 2 T (4 - 2) bytes more for each of 5 norms (2 per block, 2 blocks, the final one)
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=8, vocab_size=16, mlp="gelu",
                    norm="layernorm", position="rope")
    cuda = litgpt_saved_bytes(cfg, 1, 4, precision="bf16-true", device="cuda")
    cpu = litgpt_saved_bytes(cfg, 1, 4, precision="bf16-true", device="cpu")
    assert cuda - cpu == 5 * 2 * 4 * 2 == 80


def test_litgpt_loss_transients_are_ints() -> None:
    # b 2, s 5, V 16, Fabric's fp32 logits: the flat copy 2 x 4 x 16 x 4 = 512 (the cast's
    # moment: 320 bf16 + 640 fp32 - the loss's 588 saved bytes = 372, less); backward the
    # larger of two chunk pieces (8 rows: 2 x 8 x 16 x 4 = 1024) and the logits' gradient 640
    fwd, bwd = litgpt_loss_transients(GPTConfig(vocab_size=16), 2, 5, precision="bf16-true")
    assert (fwd, bwd) == (512, 1024)
    assert type(bwd) is int


def test_tune_saved_terms_take_the_family_given() -> None:
    # LLAMA counted as Gemma: the embedding's saved sqrt(d) scalar (bf16, 2 bytes), every
    # RMSNorm's fp32 1 + scale (d x 4 per norm: 2 per layer, 2 layers, the final one) and the
    # interleaved RoPE buffer (32 rows x h 16 + theta 8, fp32)
    gemma = tune_saved_terms(LLAMA, 2, 8, precision="bf16-true", family="gemma")
    assert gemma["embedding_scale"] == 2
    assert gemma["norm1_one_plus_weight"] == gemma["norm2_one_plus_weight"] == 2 * 64 * 4
    assert gemma["final_norm_one_plus_weight"] == 64 * 4
    assert gemma["rope_buffers"] == 32 * 16 * 4 + 8 * 4
    # counted as Qwen2: the [cos, sin] buffer, 32 rows x 2h, and four bf16 cos/sin casts per
    # layer (one batch row of s x h each)
    qwen = tune_saved_terms(LLAMA, 2, 8, precision="bf16-true", family="qwen2")
    assert qwen["rope_buffers"] == 32 * 32 * 4 + 8 * 4
    assert qwen["rope_cache_slices"] == 2 * 4 * 8 * 16 * 2


def test_tune_head_of_an_inferred_gemma_by_hand() -> None:
    gemma = LLAMA.replace(mlp="geglu")  # a GeGLU MLP is counted as Gemma
    t = tune_head_saved_terms(gemma, 2, 8, precision="bf16-true")
    assert t["final_norm_one_plus_weight"] == 64 * 4


def test_tune_packed_mask_only_on_cpu() -> None:
    # packed on CUDA: flex attention's BlockMask, no dense mask; on CPU SDPA's additive copy of
    # the b x s x s mask, 2 x 8 x 8 x 2 bytes per layer
    assert "attn_mask" not in tune_saved_terms(LLAMA, 2, 8, precision="bf16-true", packed=True)
    cpu = tune_saved_terms(LLAMA, 2, 8, precision="bf16-true", packed=True, device="cpu")
    assert cpu["attn_mask"] == 2 * 2 * 8 * 8 * 2


def test_unknown_options_are_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match=r"run 'bf16-true' \(dtype: bf16\) or '32-true' "
                                         r"\(dtype: fp32\)"):
        tune_saved_bytes(LLAMA, 1, 4, precision="bf16-mixed")
    with pytest.raises(ValueError, match=r"checkpoint whole layers \('full'\) or nothing "
                                         r"\('none'\)"):
        tune_saved_terms(LLAMA, 1, 4, precision="bf16-true", checkpointing="selective")
    with pytest.raises(ValueError, match=r"offer '32-true', 'bf16-true' and 'bf16-mixed'"):
        litgpt_saved_bytes(LLAMA, 1, 4, precision="16-mixed")
    with pytest.raises(ValueError, match=r"checkpoints whole blocks \('full'\) or nothing "
                                         r"\('none'\)"):
        litgpt_saved_terms(LLAMA, 1, 4, precision="32-true", checkpointing="selective")
    with pytest.raises(ValueError, match=r"^mlp='relu': litgpt's MLPs are swiglu \(LLaMAMLP\), "
                                         r"geglu \(GemmaMLP\) and gelu \(GptNeoxMLP\)$"):
        litgpt_saved_bytes(LLAMA.replace(mlp="relu"), 1, 4, precision="32-true")


def test_litgpt_default_device_is_cpu() -> None:
    # LayerNorm on CPU keeps its bf16 mean and rstd under bf16 parameters: 2 x 4 x 2 bytes
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=8, vocab_size=16, mlp="gelu",
                    norm="layernorm", position="rope")
    assert litgpt_head_saved_terms(cfg, 1, 4, precision="bf16-true")["final_norm_stats"] == 16
    assert litgpt_saved_terms(cfg, 1, 4, precision="bf16-true")["norm1_stats"] == 2 * 16


def test_litgpt_separate_rms_norms_share_only_an_fp32_input() -> None:
    # two RMSNorms on one input (separate_norms): in fp32, x.float() is x itself, already the
    # first norm's saved input; under bf16 parameters each norm makes its own fp32 copy
    # (T d 4 = 4 x 8 x 4)
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, mlp="swiglu",
                    norm="rmsnorm", position="rope", parallel="separate_norms", mlp_hidden=16)
    assert "norm2_input" not in litgpt_block_saved_terms(cfg, 1, 4, precision="32-true")
    assert litgpt_block_saved_terms(cfg, 1, 4, precision="bf16-true")["norm2_input"] == 128


def test_litgpt_loss_weight_totals_round_up() -> None:
    # b 1, s 130: 129 shifted rows in chunks of 128: two chunks, each a 4-byte weight total
    t = litgpt_loss_saved_terms(GPTConfig(vocab_size=16), 1, 130, precision="32-true")
    assert t["loss_weight_totals"] == 2 * 4


def test_litgpt_saved_terms_pass_the_loss_chunk() -> None:
    # chunk_size=0: one mean cross-entropy, one weight total (4 bytes in fp32) and no count
    t = litgpt_saved_terms(LLAMA, 1, 4, precision="32-true", loss_chunk=0)
    assert t["loss_weight_totals"] == 4 and "loss_count" not in t

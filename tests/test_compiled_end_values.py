"""`scaleplan.memory.compiled_end`, by hand (torch-free).

What inductor's compiled backward (torch 2.13, CPU, read with ``TORCH_LOGS=output_code``)
holds at its last kernels beside the gradients: the first block's last fused kernel (its
``ln_1`` backward, the embeddings' dense backward, the casts of its bf16 weight gradients) and,
in fp32, the tied head's weight gradient, into which the tied sum folds. Measured whole steps:
tests/test_compiled_step_peaks_replay.py.
"""

from __future__ import annotations

import pytest

from scaleplan.errors import ScaleplanError
from scaleplan.memory.compiled_end import (
    compiled_end_extra_bytes,
    compiled_first_block_end_terms,
    compiled_tied_head_end_terms,
)
from scaleplan.model.config import GPTConfig

# nanoGPT's layout as measured: d = 64, 4 heads, V = 320, 2 x 24 = 48 tokens
NANO = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=320)
LLAMA = GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=128, mlp_hidden=352, vocab_size=512,
                  block_size=128, bias=False, mlp="swiglu", norm="rmsnorm", position="rope",
                  tie_embeddings=False)


def test_the_first_blocks_last_kernel_under_autocast() -> None:
    T, d, e = 48, 64, 2
    terms = compiled_first_block_end_terms(NANO, 2, 24, precision="bf16-mixed")
    assert terms == {
        "qkv_gradient": T * 3 * d * e,  # 18432: c_attn's output gradient
        "norm1_output_gradient": T * d * e,  # 6144: c_attn's input gradient
        "residual_gradient": T * d * 4,  # 12288: fp32 residual stream
        "norm1_row_sum_dy": T * 4,
        "norm1_row_sum_dy_xhat": T * 4,
        "qkv_weight_gradient_16bit": 3 * d * d * e,  # 24576, before its fp32 cast
        "qkv_bias_gradient_16bit": 3 * d * e,  # 384
        "norm1_normalized": T * d * 4,  # ln_1's saved x_hat, fp32
        "norm1_rstd": T * 4,
        "position_ids": 24 * 8,  # int64, wpe's dense backward
    }
    assert sum(terms.values()) == 74880


def test_the_first_blocks_last_kernel_in_fp32_and_with_dropout() -> None:
    T, d = 48, 64
    terms = compiled_first_block_end_terms(NANO, 2, 24, precision="32-true")
    # fp32: c_attn's gradients are the gradients themselves, no 16-bit copies
    assert "qkv_weight_gradient_16bit" not in terms and "qkv_bias_gradient_16bit" not in terms
    assert terms["qkv_gradient"] == T * 3 * d * 4
    assert terms["norm1_output_gradient"] == T * d * 4
    assert sum(terms.values()) == 36864 + 12288 + 12288 + 192 + 192 + 12288 + 192 + 192
    # dropout: the embedding's bool mask is the kernel's input too (1 byte per element)
    dropped = compiled_first_block_end_terms(NANO.replace(dropout=0.1), 2, 24,
                                             precision="bf16-mixed")
    assert dropped["embedding_dropout_mask"] == T * d
    assert sum(dropped.values()) == 74880 + 3072
    # no bias: no bias gradient
    assert "qkv_bias_gradient_16bit" not in compiled_first_block_end_terms(
        NANO.replace(bias=False), 2, 24, precision="bf16-mixed")


def test_other_layouts_are_not_modelled() -> None:
    # transformers' Llama ends with other kernels (separate q/k/v projections): none counted
    assert compiled_first_block_end_terms(LLAMA, 2, 48, precision="bf16-mixed") == {}
    assert compiled_end_extra_bytes(LLAMA, 2, 48, precision="bf16-mixed") == 0
    assert compiled_first_block_end_terms(NANO.replace(norm="rmsnorm"), 2, 24,
                                          precision="32-true") == {}


def test_the_tied_heads_late_terms() -> None:
    T, V, d = 48, 320, 64
    assert compiled_tied_head_end_terms(NANO, 2, 24, precision="32-true") == {
        "logits_gradient": T * V * 4, "lm_head_input": T * d * 4}
    # autocast: the head's bf16 weight gradient cannot take the fp32 sum; it runs first
    assert compiled_tied_head_end_terms(NANO, 2, 24, precision="bf16-mixed") == {}
    assert compiled_tied_head_end_terms(NANO, 2, 24, precision="16-mixed") == {}
    # untied: no sum to fold
    assert compiled_tied_head_end_terms(NANO.replace(tie_embeddings=False), 2, 24,
                                        precision="32-true") == {}


def test_the_extra_bytes_take_the_later_of_the_two_kernels_in_fp32() -> None:
    # nanoGPT at 48 tokens: the last fused kernel's 74496 bytes are fewer than the tied sum
    # V d 4 = 81920 the addmm writes after it: the addmm is the worse, its late terms alone
    late = 48 * 320 * 4 + 48 * 64 * 4
    assert compiled_end_extra_bytes(NANO, 2, 24, precision="32-true") == late
    # transformers' GPT-2 shape at 96 tokens (d = 128, V = 512): the kernel holds
    # 147456 + 3 x 49152 + 4 x 384 = 296448 > V d 4 = 262144, so 34304 more than the sum
    gpt2 = GPTConfig(n_layer=2, n_head=4, n_embd=128, vocab_size=512, block_size=128)
    late = 96 * 512 * 4 + 96 * 128 * 4
    assert compiled_end_extra_bytes(gpt2, 2, 48, precision="32-true") == late + 296448 - 262144
    # untied fp32: the last fused kernel alone
    untied = NANO.replace(tie_embeddings=False)
    assert compiled_end_extra_bytes(untied, 2, 24, precision="32-true") == 74496
    # under autocast: the last fused kernel alone (the partials are compiled_terms')
    assert compiled_end_extra_bytes(NANO, 2, 24, precision="bf16-mixed") == 74880


def test_precisions_not_measured_are_refused() -> None:
    with pytest.raises(ScaleplanError, match="compile=True is modelled for precision"):
        compiled_end_extra_bytes(NANO, 2, 24, precision="bf16-true")

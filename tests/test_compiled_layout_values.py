"""`scaleplan.memory.compiled_layout` by hand, torch-free so mutation testing sees each term.

MODDED: modded-nanogpt's block at a tiny width: d = 8, a = k = 2 heads of h = 4, ReLU MLP of
f = 32, RMSNorm without a weight, per-head QK-norm, RoPE, V = 16, untied, two layers; b = 1,
s = 4 (T = 4 tokens), bf16 autocast (e = 2; the residual stream r = 4), no dropout.
"""

from __future__ import annotations

import pytest

from scaleplan.errors import ScaleplanError
from scaleplan.memory.compiled_layout import (
    check_compiled_layout,
    compiled_mlp_activation_terms,
    compiled_qk_norm_terms,
)
from scaleplan.memory.compiled_terms import compiled_block_saved_terms, compiled_saved_terms
from scaleplan.model.config import GPTConfig

MODDED = GPTConfig(n_layer=2, n_head=2, n_embd=8, vocab_size=16, block_size=8, bias=False,
                   norm="rmsnorm", norm_affine=False, qk_norm="head", position="rope",
                   mlp="relu", mlp_hidden=32, tie_embeddings=False)

# the first block: its input (the token embedding) T d r = 128 and rstd T 4 = 16; the fused
# projection's input T d e = 64 and output T (a + 2k) h e = 192; the rotated q and k
# T (a + k) h e = 128; the attention output T a h e = 64 and lse b a s 4 = 32; the q and k
# norms' rstd b (a + k) s 4 = 64; the output projection's input, a copy of the attention
# output, T a h e = 64; its output T d e = 64 (first block, no dropout) and norm2's rstd 16;
# the MLP's input T d e = 64, the ReLU's output T f e = 256 and its bool mask T f = 128
MODDED_FIRST = 128 + 16 + 64 + 192 + 128 + 64 + 32 + 64 + 64 + 64 + 16 + 64 + 256 + 128
# a later block keeps the fp32 residual sum (T d r = 128) in place of the projection's output
MODDED_LATER = MODDED_FIRST - 64 + 128


def test_modded_blocks_by_hand() -> None:
    first = compiled_block_saved_terms(MODDED, 1, 4, precision="bf16-mixed", dropout=False,
                                       first=True)
    assert first["qk_norm_rstd"] == 64 and first["attn_proj_input"] == 64
    assert first["mlp_activations"] == 256 and first["relu_mask"] == 128
    assert sum(first.values()) == MODDED_FIRST == 1280
    later = compiled_block_saved_terms(MODDED, 1, 4, precision="bf16-mixed", dropout=False)
    assert sum(later.values()) == MODDED_LATER == 1344
    # whole bytes: the one-byte mask counted by multiplication, not division
    assert all(type(v) is int for v in later.values()), later


def test_modded_model_by_hand() -> None:
    # token ids T 8 = 32; RoPE's tables 2 x block_size x h x 4 = 256; the final norm's input
    # 128 and rstd 16, lm_head's input 64, bf16 logits T V e = 128, max and log-sum-exp
    # 2 T 4 = 32, int64 targets 32 + the fp32 divisor 4
    t = compiled_saved_terms(MODDED, 1, 4, precision="bf16-mixed")
    head = 128 + 16 + 64 + 128 + 32 + 36
    assert sum(t.values()) == 32 + MODDED_FIRST + MODDED_LATER + 256 + head == 3316


def test_qk_norm_kinds_by_hand() -> None:
    gqa = GPTConfig(n_layer=1, n_head=4, n_kv_head=2, n_embd=32, vocab_size=16,
                    norm="rmsnorm", qk_norm="head")
    # b = 2, s = 3: per head and token, 2 x (4 + 2) x 3 x 4 = 144; the copy 6 x 4 x 8 x 4 = 768
    assert compiled_qk_norm_terms(gqa, 2, 3, e=4) == {"qk_norm_rstd": 144,
                                                      "attn_proj_input": 768}
    assert compiled_qk_norm_terms(gqa.replace(qk_norm="per_head"), 2, 3, e=2) == {
        "qk_norm_rstd": 144, "attn_proj_input": 384}
    # over all heads: one rstd per token for q and one for k, 2 x 6 x 4 = 48; no copy
    assert compiled_qk_norm_terms(gqa.replace(qk_norm="full"), 2, 3, e=2) == {
        "qk_norm_rstd": 48}
    assert compiled_qk_norm_terms(gqa.replace(qk_norm="none"), 2, 3, e=2) == {}


def test_mlp_activations_by_kind() -> None:
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, mlp_hidden=24)
    # T = 5: GELU's input and output 2 x 5 x 24 x 4 = 960
    assert compiled_mlp_activation_terms(cfg, 5, e=4) == {"mlp_activations": 960}
    # gate, up and product 3 x 5 x 24 x 2 = 720
    assert compiled_mlp_activation_terms(cfg.replace(mlp="swiglu"), 5, e=2) == {
        "mlp_activations": 720}
    # ReLU: its output 5 x 24 x 4 = 480 and a one-byte mask 120
    assert compiled_mlp_activation_terms(cfg.replace(mlp="relu"), 5, e=4) == {
        "mlp_activations": 480, "relu_mask": 120}


def test_non_affine_rmsnorm_changes_no_term() -> None:
    affine = MODDED.replace(norm_affine=True)
    for precision in ("32-true", "bf16-mixed"):
        assert compiled_saved_terms(MODDED, 2, 4, precision=precision) == compiled_saved_terms(
            affine, 2, 4, precision=precision)


def test_layernorm_qk_norm_and_non_affine_layernorm_are_refused_by_name() -> None:
    gpt = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16)
    with pytest.raises(ScaleplanError, match=r"dense MLP; QK-norm and norms without a weight "
                       r"with RMSNorm\); qk_norm with norm='layernorm' not yet: use "
                       r"compile=False$"):
        check_compiled_layout(gpt.replace(qk_norm="full"))
    with pytest.raises(ScaleplanError, match="; norm_affine=False with norm='layernorm' not "
                       "yet"):
        compiled_saved_terms(gpt.replace(norm_affine=False), 1, 4, precision="32-true")
    with pytest.raises(ScaleplanError, match="; sliding_window not yet"):
        check_compiled_layout(MODDED.replace(sliding_window=4))
    check_compiled_layout(MODDED)  # accepted

"""The attention core's FLOPs with sliding windows and MLA widths, by hand (no torch): the values
that `tests/test_flops_architectures.py` checks against FlopCounterMode, written out here so
that mutation testing, which runs without torch, sees them."""

from __future__ import annotations

import pytest

from scaleplan.compute.attention_flops import (
    attention_core,
    attention_forward_per_token,
    pair_flops,
    window_keys,
)
from scaleplan.errors import ScaleplanError
from scaleplan.model.config import GPTConfig

# 4 blocks, 2 heads of width 8; 3 blocks see a window of 4 keys
WINDOW = GPTConfig(n_layer=4, n_head=2, n_embd=16, vocab_size=32, block_size=64, bias=False,
                   position="rope", sliding_window=4, sliding_window_layers=3)
# MLA: scores over qk_nope 6 + rope 2 = 8, values over 4
MLA = GPTConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=32, block_size=64, bias=False,
                position="rope", mla={"q_lora_rank": None, "kv_lora_rank": 4,
                                      "qk_nope_head_dim": 6, "qk_rope_head_dim": 2,
                                      "v_head_dim": 4})


def test_window_keys_only_when_the_window_is_shorter() -> None:
    assert window_keys(WINDOW, 10) == 4
    assert window_keys(WINDOW, 4) is None  # a window as long as the sequence changes nothing
    assert window_keys(WINDOW.replace(sliding_window=None, sliding_window_layers=None), 10) is None
    assert window_keys(WINDOW.replace(sliding_window_layers=0), 10) is None


def test_pair_flops_by_hand() -> None:
    assert pair_flops(10, None, causal=False) == 2 * 10 * 10  # every pair, 2 FLOPs per MAC
    assert pair_flops(10, None, causal=True) == 10 * 10  # Megatron's T^2/2 triangle, x 2
    assert pair_flops(10, 4, causal=True) == 2 * 10 * 4 - 4 * 4  # the band T w - w^2/2, x 2


def test_sliding_window_attention_by_hand() -> None:
    # causal, T = 10: 1 full block (100) + 3 window blocks (2*10*4 - 16 = 64) = 292 pair-FLOPs
    # per unit width; x 2 heads x width 8 for QK^T and again for AV
    scores, values = attention_core(WINDOW, 10, causal=True)
    assert (scores, values) == (2 * 8 * 292, 2 * 8 * 292)
    assert attention_forward_per_token(WINDOW, 10, causal=True) == pytest.approx(
        2 * 2 * 8 * 292 / 10)
    # without the causal mask every pair counts, window or not: 4 blocks x 2 x 10^2
    assert attention_core(WINDOW, 10, causal=False) == (2 * 8 * 800, 2 * 8 * 800)
    assert attention_forward_per_token(WINDOW, 10, causal=False) == 2 * 2 * 8 * 800 // 10
    # a window no shorter than the sequence: the triangle, in exact ints
    assert attention_forward_per_token(WINDOW, 4, causal=True) == 4 * 2 * (8 + 8) * 4


def test_mla_scores_and_values_have_their_own_widths() -> None:
    # T = 10, causal: 100 pair-FLOPs per unit width; scores 2 heads x 8, values 2 heads x 4
    assert attention_core(MLA, 10, causal=True) == (2 * 8 * 100, 2 * 4 * 100)
    assert attention_forward_per_token(MLA, 10, causal=True) == 2 * (8 + 4) * 10


def test_a_window_with_a_symbolic_length_is_refused() -> None:
    sympy = pytest.importorskip("sympy")
    with pytest.raises(ScaleplanError, match="sliding_window=4 with a symbolic seq_len: the "
                       "attention term depends on which is shorter; give seq_len as a number"):
        window_keys(WINDOW, sympy.Symbol("s", positive=True))

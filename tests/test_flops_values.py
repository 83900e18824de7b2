"""FLOPs values and edges that the mutation run (docs/development.md) found untested.

Each expected value is a hand calculation written out beside it. GPT-2 small: L = 12, H = 12,
Q = 64, d = 768, V = 50257, f = 3072; matmul weights per block 12 d^2 = 7,077,888, so
N = 12 x 7,077,888 + 768 x 50257 = 84,934,656 + 38,597,376 = 123,532,032 (the PaLM N).
"""

from __future__ import annotations

import pytest

from scaleplan.compute.flops import (
    flops_per_token,
    kaplan_training_flops,
    palm_flops_per_token,
    step_flop_terms,
    step_flops,
    token_flops,
    training_flops,
)
from scaleplan.errors import ScaleplanError
from scaleplan.model.config import GPTConfig

GPT2 = GPTConfig.preset("gpt2")
# 6 N = 741,192,192; 12 L H Q T at T = 1024: 12 x 12 x 12 x 64 x 1024 = 113,246,208
PALM_FULL_1024 = 741_192_192 + 113_246_208  # 854,438,400
PALM_CAUSAL_1024 = 741_192_192 + 113_246_208 // 2  # 797,815,296
# Sizes whose products leave float64 (d V = 10^310): every float figure must refuse them.
HUGE = GPTConfig(n_layer=1, n_head=1, n_embd=10**110, vocab_size=10**200, block_size=8)


def test_token_flops_defaults_are_causal_palm_without_recompute_and_exact() -> None:
    value = token_flops(GPT2, 1024)
    assert value == PALM_CAUSAL_1024
    # ints stay exact ints (the causal halving is written without a division)
    assert type(value) is int
    assert type(step_flop_terms(GPT2, 3, 1000)["attention_scores"]) is int


def test_step_flop_terms_default_is_causal() -> None:
    # QK^T causal: b s x (L H Q s) multiply-adds, 2 FLOPs each, halved: 1024 x 12 x 12 x 64 x 1024
    assert step_flop_terms(GPT2, 1, 1024)["attention_scores"] == 9_663_676_416


def test_step_flops_default_is_causal() -> None:
    # forward, non-causal: 2 x 1024 tokens x N = 253,073,601,536 (every matmul but attention)
    # + QK^T and AV: 2 x (2 x 1024 x 12 x 12 x 64 x 1024) = 38,654,705,664; causal halves those
    dense = 2 * 1024 * 123_532_032
    attention = 2 * 2 * 1024 * 12 * 12 * 64 * 1024
    assert step_flops(GPT2, micro_batch_size=1, seq_len=1024).forward == dense + attention // 2
    assert step_flops(GPT2, micro_batch_size=1, seq_len=1024,
                      causal=False).forward == dense + attention


def test_palm_flops_per_token_causal_halves_the_attention_term() -> None:
    # 6 x 1e9 + 12 x 2 x 4 x 16 x 32 = 6e9 + 49,152; causal: 6e9 + 24,576
    kw = dict(n_layer=2, n_head=4, head_dim=16, seq_len=32)
    assert palm_flops_per_token(1e9, **kw) == 6e9 + 49_152
    assert palm_flops_per_token(1e9, causal=True, **kw) == 6e9 + 24_576


def test_kaplan_has_no_attention_term_so_selective_recompute_adds_nothing() -> None:
    # GPT-2's non-embedding N (tied head): 124,439,808 - 38,597,376 - 786,432 = 85,056,000;
    # 6 N = 510,336,000 (Kaplan et al. 2020: C = 6 N per token)
    for recompute in ("none", "selective"):
        assert flops_per_token(GPT2, seq_len=1024, method="kaplan",
                               recompute=recompute) == 510_336_000
    # full: + 2 N of forward (the tied head is not in Kaplan's N): 510,336,000 + 170,112,000
    assert flops_per_token(GPT2, seq_len=1024, method="kaplan",
                           recompute="full") == 680_448_000


def test_training_flops_passes_causal_through_and_accepts_zero_tokens() -> None:
    assert training_flops(GPT2, 10**6, seq_len=1024, causal=False) == PALM_FULL_1024 * 10**6
    assert training_flops(GPT2, 10**6, seq_len=1024) == PALM_CAUSAL_1024 * 10**6
    assert training_flops(GPT2, 0, seq_len=1024) == 0.0  # zero tokens is a valid (empty) run


def test_training_flops_passes_recompute_and_method_through() -> None:
    # 10^6 tokens x per-token figures derived above: Kaplan 510,336,000 (6 N), and PaLM causal
    # with selective recompute: + the causal attention forward once, QK^T and AV at 2 FLOPs per
    # multiply-add over L H Q T, halved: 2 x 2 x 12 x 12 x 64 x 1024 / 2 = 18,874,368
    assert training_flops(GPT2, 10**6, seq_len=1024, method="kaplan") == 510_336_000 * 10**6
    assert training_flops(GPT2, 10**6, seq_len=1024, recompute="selective") == (
        PALM_CAUSAL_1024 + 18_874_368) * 10**6


def test_kaplan_training_flops_accepts_zero_and_rejects_either_negative() -> None:
    assert kaplan_training_flops(0, 300e9) == 0.0
    assert kaplan_training_flops(175e9, 0) == 0.0
    assert kaplan_training_flops(0.5, 2) == 6.0  # 6 x 0.5 x 2
    for n, d in ((-1, 5), (5, -1)):
        with pytest.raises(ValueError, match=rf"n_params={n} and tokens={d} must both be >= 0"):
            kaplan_training_flops(n, d)


def test_overflow_errors_name_the_quantity() -> None:
    with pytest.raises(ScaleplanError, match=r"^flops_per_token overflows a 64-bit float"):
        palm_flops_per_token(1e308, n_layer=2, n_head=4, head_dim=16, seq_len=32)
    with pytest.raises(ScaleplanError, match=r"^flops_per_token overflows a 64-bit float"):
        flops_per_token(HUGE, seq_len=8)
    with pytest.raises(ScaleplanError,
                       match=r"^step_flops\(micro_batch_size=1, seq_len=8\) total overflows a "):
        step_flops(HUGE, micro_batch_size=1, seq_len=8)
    with pytest.raises(ScaleplanError, match=r"^training_flops\(tokens=1e\+300\) overflows a "):
        training_flops(GPT2, 1e300, seq_len=8)


def test_invalid_sizes_name_the_argument_and_show_an_example() -> None:
    with pytest.raises(ScaleplanError, match=r"^micro_batch_size=0 must be a positive whole "
                                             r"number, e\.g\. micro_batch_size=8$"):
        step_flops(GPT2, micro_batch_size=0, seq_len=8)
    with pytest.raises(ScaleplanError, match=r"^seq_len=0 must be a positive whole number, "
                                             r"e\.g\. seq_len=1024$"):
        flops_per_token(GPT2, seq_len=0)
    with pytest.raises(ScaleplanError, match=r"^causal=1 must be True or False$"):
        flops_per_token(GPT2, seq_len=8, causal=1)  # type: ignore[arg-type]
    with pytest.raises(ScaleplanError, match=r"^tokens=-1 must be >= 0; give tokens=10\*\*10$"):
        training_flops(GPT2, -1, seq_len=8)

"""MFU, throughput, time-to-train and cost: cited vectors and hand calculations."""

from __future__ import annotations

import pytest

from scaleplan.compute.flops import palm_flops_per_token
from scaleplan.compute.throughput import (
    TrainingTime,
    Utilization,
    from_nanogpt_mfu,
    mfu,
    mfu_from_flops,
    throughput_at_mfu,
    time_to_train,
)
from scaleplan.errors import ScaleplanError
from scaleplan.model.config import GPTConfig

GPT2 = GPTConfig.preset("gpt2")
# GPT-2 small, causal, PaLM form: 6 x 123,532,032 matmul weights + 12*12*12*64*1024 / 2.
GPT2_FLOPS_PER_TOKEN = 6 * 123_532_032 + 12 * 12 * 12 * 64 * 1024 / 2
RTX_4070_BF16 = 46 * 2.475e9 * 512  # derived peak, 58.29 TFLOP/s
SEED = GPTConfig(n_layer=12, n_head=12, n_embd=384, block_size=1024, vocab_size=50304,
                 bias=False, dropout=0.1)


def test_seed_case_nanogpt_mfu_on_rtx_4070() -> None:
    # nanoGPT prints ~11.5% relative to 312 TFLOP/s; the 4070's own peak is 58.29 TFLOP/s.
    u = from_nanogpt_mfu(11.5, "RTX 4070")
    assert u.achieved_flops == pytest.approx(0.115 * 312e12)
    assert u.mfu == pytest.approx(0.115 * 312e12 / RTX_4070_BF16)
    assert 0.61 < u.mfu < 0.62


def test_nanogpt_over_100_percent_on_h100_is_a_third_of_the_h100() -> None:
    # nanoGPT printing 104% on an H100 SXM means 1.04 x 312 / 989 of the H100's bf16 peak.
    assert from_nanogpt_mfu(104, "H100 SXM").mfu == pytest.approx(1.04 * 312 / 989)


def test_from_nanogpt_mfu_with_config_gives_tokens_per_second() -> None:
    # nanoGPT's own formula for the seed model: 6 x 40,560,000 + 12*12*12*32*1024 FLOPs/token.
    per_token = 6 * 40_560_000 + 12 * 12 * 12 * 32 * 1024
    u = from_nanogpt_mfu(11.5, "RTX 4070", cfg=SEED)
    assert u.flops_per_token == per_token
    assert u.tokens_per_second == pytest.approx(0.115 * 312e12 / per_token)


def test_palm_540b_mfu_is_46_2_percent() -> None:
    # PaLM App. B: 238.3K tokens/s, 6144 TPU v4 at 275 TFLOP/s, N=540.35e9, L=118, H=48, Q=256,
    # T=2048 -> 46.2% MFU.
    per_token = palm_flops_per_token(540.35e9, n_layer=118, n_head=48, head_dim=256,
                                     seq_len=2048)
    value = mfu_from_flops(238.3e3, flops_per_token=per_token, peak_flops=275e12, n_gpus=6144)
    assert round(value, 3) == 0.462


def test_mfu_by_hand_and_hfu_with_full_recompute() -> None:
    u = mfu(8 * 100_000, GPT2, "A100 SXM 80GB", seq_len=1024, n_gpus=8, recompute="full")
    assert u.mfu == pytest.approx(100_000 * GPT2_FLOPS_PER_TOKEN / 312e12)
    # Hardware FLOPs add the blocks' forward: 2 x 12 x 7,077,888 + 4*12*12*64*1024 / 2 per token.
    block_forward = 2 * 12 * 7_077_888 + 4 * 12 * 12 * 64 * 1024 / 2
    assert u.hfu == pytest.approx(100_000 * (GPT2_FLOPS_PER_TOKEN + block_forward) / 312e12)
    assert u.achieved_flops == pytest.approx(100_000 * GPT2_FLOPS_PER_TOKEN)


def test_throughput_at_mfu_inverts_mfu() -> None:
    t = throughput_at_mfu(GPT2, "RTX 4070", mfu=0.4, seq_len=1024, tokens_per_step=524288)
    assert t.tokens_per_second == pytest.approx(0.4 * RTX_4070_BF16 / GPT2_FLOPS_PER_TOKEN)
    assert t.step_seconds == pytest.approx(524288 / t.tokens_per_second)
    back = mfu(t.tokens_per_second, GPT2, "RTX 4070", seq_len=1024)
    assert back.mfu == pytest.approx(0.4)


def test_time_to_train_and_cost_by_hand() -> None:
    # 10B tokens of GPT-2 small on 8 H100 SXM at 40% MFU, $2.50 per GPU-hour.
    t = time_to_train(GPT2, "H100 SXM", tokens=10**10, mfu=0.4, seq_len=1024, n_gpus=8,
                      price_per_gpu_hour=2.5)
    seconds = 1e10 * GPT2_FLOPS_PER_TOKEN / (8 * 989e12 * 0.4)
    assert t.seconds == pytest.approx(seconds)
    assert t.gpu_hours == pytest.approx(8 * seconds / 3600)
    assert t.cost == pytest.approx(8 * seconds / 3600 * 2.5)
    assert t.days == pytest.approx(seconds / 86400)
    assert TrainingTime.model_validate_json(t.model_dump_json()) == t


def test_utilization_round_trips_through_json() -> None:
    u = from_nanogpt_mfu(11.5, "RTX 4070", cfg=SEED)
    assert Utilization.model_validate_json(u.model_dump_json()) == u


def test_negative_throughput_is_rejected() -> None:
    with pytest.raises(ValueError, match="tokens_per_second=-5 must be > 0"):
        mfu(-5, GPT2, "RTX 4070", seq_len=1024)


@pytest.mark.parametrize(
    ("value", "match"),
    [(0.0, r"mfu=0.0 must be in \(0, 1\]. an MFU of zero never finishes"),
     (45.0, "did you pass a percentage")],
)
def test_bad_mfu_is_rejected(value: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        time_to_train(GPT2, "RTX 4070", tokens=10**9, mfu=value, seq_len=1024)


def test_fp8_mfu_on_a100_is_an_error() -> None:
    with pytest.raises(ValueError, match="A100 SXM 80GB has no dense fp8 peak"):
        mfu(1e5, GPT2, "A100 SXM 80GB", seq_len=1024, dtype="fp8")


def test_zero_printed_percent_is_rejected() -> None:
    with pytest.raises(ValueError, match="printed_percent=0 must be > 0"):
        from_nanogpt_mfu(0, "RTX 4070")


def test_negative_tokens_and_price_are_rejected() -> None:
    with pytest.raises(ValueError, match="tokens=-1 must be >= 0"):
        time_to_train(GPT2, "RTX 4070", tokens=-1, mfu=0.4, seq_len=1024)
    with pytest.raises(ValueError, match=r"price_per_gpu_hour=-1\.0 must be >= 0"):
        time_to_train(GPT2, "RTX 4070", tokens=1, mfu=0.4, seq_len=1024, price_per_gpu_hour=-1.0)


def test_gpu_can_be_given_by_keyword_or_as_a_spec() -> None:
    from scaleplan.compute.hardware import gpu

    by_name = mfu(tokens_per_second=30_000, cfg=GPT2, gpu="RTX 4070", seq_len=1024)
    by_spec = mfu(30_000, GPT2, gpu("rtx4070"), seq_len=1024)
    assert by_name == by_spec
    assert by_name.mfu == pytest.approx(30_000 * GPT2_FLOPS_PER_TOKEN / RTX_4070_BF16)


def test_an_mfu_whose_rate_underflows_is_refused_by_name() -> None:
    # hypothesis found it (tests/test_fuzz_entry_points.py::test_throughput): the smallest
    # subnormal MFU times an RTX 4070's fp32 peak (~2.9e13 FLOP/s) is ~1.4e-310 FLOP/s, and a
    # model of ~1e17 FLOPs per token (2,000 layers of width 65,536) makes the rate 0.0 tokens/s,
    # which divided the step's tokens by zero
    huge = GPTConfig(n_layer=2000, n_head=64, n_embd=65536, vocab_size=50304, block_size=1024)
    for call in (lambda: throughput_at_mfu(huge, "RTX 4070", mfu=5e-324, seq_len=1024,
                                           tokens_per_step=524288, dtype="fp32"),
                 lambda: time_to_train(huge, "RTX 4070", tokens=10**9, mfu=5e-324,
                                       seq_len=1024, dtype="fp32")):
        with pytest.raises(ScaleplanError, match=r"mfu=5e-324 gives 0.0 tokens per second; use"):
            call()
    # a rate that is tiny but not zero overflows the time instead, also refused by name
    with pytest.raises(ScaleplanError, match="the training time at mfu=5e-324 overflows"):
        time_to_train(GPTConfig.preset("gpt2"), "RTX 4070", tokens=10**9, mfu=5e-324,
                      seq_len=1024)

"""inference_speed: bytes read, FLOPs and times, hand-calculated (torch-free)."""

from __future__ import annotations

import pytest

from scaleplan import GPTConfig, InferenceSpeed, MoE, ScaleplanError, gpu, inference_speed
from scaleplan.inference.speed import (
    compute_dtype,
    decode_flops,
    expected_experts,
    prefill_flops,
    weight_read_fraction,
)

LLAMA = GPTConfig.preset("llama-3-8b")
H100 = gpu("H100 SXM")  # 3.35e12 B/s, 989e12 bf16 FLOP/s dense (NVIDIA datasheet)


def test_expected_experts() -> None:
    assert expected_experts(8, 2, 1) == 2.0  # one token: its top_k
    assert expected_experts(8, 2, 2) == 8 * (1 - 0.75 ** 2) == 3.5
    assert expected_experts(8, 2, 1000) == pytest.approx(8.0)  # large batch: every expert
    assert expected_experts(256, 8, 1) == pytest.approx(8.0)


def test_untied_embedding_is_not_read() -> None:
    # Llama 3 8B: every parameter but the 128,256 x 4,096 token embedding (lm_head is its own)
    assert weight_read_fraction(LLAMA, 1) == (8_030_261_248 - 525_336_576) / 8_030_261_248


def test_tied_embedding_is_read_as_the_head_and_positions_are_not() -> None:
    # GPT-2: wte is the head and is read whole; the 1,024 x 768 position table is not
    gpt2 = GPTConfig.preset("gpt2")
    assert weight_read_fraction(gpt2, 1) == (124_439_808 - 1024 * 768) / 124_439_808


def test_moe_reads_the_picked_experts() -> None:
    # Mixtral: routed experts 32 layers x 8 x 3 x 4,096 x 14,336; one token reads 2 of 8
    mixtral = GPTConfig.preset("mixtral-8x7b")
    total, wte = 46_702_792_704, 32000 * 4096
    routed = 32 * 8 * 3 * 4096 * 14336
    assert weight_read_fraction(mixtral, 1) == pytest.approx(
        (total - wte - routed * 6 / 8) / total, rel=1e-12)
    assert weight_read_fraction(mixtral, 10_000) == pytest.approx((total - wte) / total)


def test_decode_flops_window_caps_the_keys() -> None:
    # Mistral-like window 4,096 on every layer: keys per layer min(8,192, 4,096)
    cfg = GPTConfig.preset("mistral-7b").replace(sliding_window=4096)
    # blocks 32 x (4,096 x (4,096 + 2 x 1,024 + 4,096) + 3 x 4,096 x 14,336), head 4,096 x 32,000
    n = 2 * (6_979_321_856 + 131_072_000)
    attention = 2 * 32 * (128 + 128) * 32 * 4096
    assert decode_flops(cfg, batch_size=2, context_len=8192) == 2 * (n + attention)


def test_prefill_flops_by_hand() -> None:
    # Llama 3 8B, 1,000 tokens: 2 (N - head) T + 2 head + causal QK^T and AV: 2 x 2·T²/2·H·Q·L
    head = 4096 * 128256
    n = 6_979_321_856 + head  # matmul weights: blocks 6,979,321,856 + the head
    attention = 2 * (1000 * 1000) * 32 * 128 * 32
    assert prefill_flops(LLAMA, 1000) == 2 * (n - head) * 1000 + 2 * head + attention


def test_llama_on_h100_by_hand() -> None:
    s = inference_speed(LLAMA, H100, batch_size=8, context_len=4096, mfu=0.5)
    assert isinstance(s, InferenceSpeed)
    weights = 2 * 8_030_261_248 * (8_030_261_248 - 525_336_576) / 8_030_261_248
    kv = 8 * 4096 * 131072
    assert s.weight_bytes_per_step == pytest.approx(weights, rel=1e-12)
    assert s.kv_bytes_per_step == kv
    assert s.memory_time_s == pytest.approx((weights + kv) / 3.35e12, rel=1e-12)
    flops = 8 * (2 * 7_504_658_432 + 2 * 32 * 256 * 32 * 4096)
    assert s.flops_per_step == flops
    assert s.compute_time_s == pytest.approx(flops / (989e12 * 0.5), rel=1e-12)
    assert s.bound == "memory"
    assert s.tokens_per_s == pytest.approx(8 / s.memory_time_s, rel=1e-12)
    ttft = max(prefill_flops(LLAMA, 4096) / (989e12 * 0.5), 2 * 8_030_261_248 / 3.35e12)
    assert s.time_to_first_token_s == pytest.approx(ttft, rel=1e-12)


def test_compute_bound_when_mfu_is_tiny() -> None:
    s = inference_speed(LLAMA, H100, batch_size=64, context_len=128, mfu=0.001)
    assert s.bound == "compute"
    assert s.time_per_output_token_s == s.compute_time_s


def test_default_mfu_is_the_gpu_class_median() -> None:
    assert inference_speed(LLAMA, H100, batch_size=1, context_len=128).mfu == 0.4195


def test_compute_dtype() -> None:
    assert compute_dtype(H100, "fp8") == "fp8"
    assert compute_dtype(gpu("A100 SXM 80GB"), "fp8") == "bf16"  # no fp8 tensor cores
    assert compute_dtype(gpu("T4"), "int4") == "fp16"
    assert compute_dtype(H100, "fp32") == "fp32"


def test_fraction_above_one_is_refused() -> None:
    with pytest.raises(ScaleplanError, match=r"mfu=1\.5"):
        inference_speed(LLAMA, H100, batch_size=1, context_len=128, mfu=1.5)


def test_every_expert_picked_reads_every_expert() -> None:
    # top_k = n_experts: a token reads all of them; only the untied embedding is left unread
    cfg = GPTConfig.preset("mixtral-8x7b").replace(
        moe=MoE(n_experts=2, top_k=2, expert_hidden=1024))
    from scaleplan import count_params

    total = count_params(cfg).total
    assert weight_read_fraction(cfg, 1) == (total - 32000 * 4096) / total


def test_mla_decode_attends_over_both_widths() -> None:
    # DeepSeek-V3: 61 blocks x 128 heads x (192 + 128) x 2 FLOPs per key, 1,000 keys
    v3 = GPTConfig.preset("deepseek-v3")
    from scaleplan.compute.flops import matmul_params

    assert decode_flops(v3, batch_size=1, context_len=1000) == 2 * matmul_params(v3) + (
        2 * 128 * (192 + 128) * 61 * 1000)


def test_float32_is_an_fp32_compute_dtype() -> None:
    assert compute_dtype(H100, "float32") == "fp32"

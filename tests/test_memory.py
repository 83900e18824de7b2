"""Tests of the training memory model: hand calculations, published figures, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scaleplan.errors import ScaleplanError, UnknownNameError
from scaleplan.memory.published import (
    deepspeed_zero3_gpu_bytes,
    korthikanti_activation_bytes,
    megatron_model_state_bytes,
)
from scaleplan.memory.states import optimizer_state_bytes
from scaleplan.memory.training import MemoryBreakdown, saved_for_backward_bytes, training_memory
from scaleplan.model.config import GPTConfig

GiB = 2**30
TINY = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=200)


def test_korthikanti_fig1_22b_activations_without_recomputation() -> None:
    # Korthikanti et al. 2022, Fig. 1: 22B model (h=6144, a=64, L=48, s=2048, b=4, t=8).
    act = korthikanti_activation_bytes(s=2048, b=4, h=6144, a=64, L=48, t=8)
    assert act / GiB == pytest.approx(59.25, abs=1e-9)


def test_korthikanti_fig1_22b_sequence_parallel_plus_selective() -> None:
    act = korthikanti_activation_bytes(s=2048, b=4, h=6144, a=64, L=48, t=8,
                                       sequence_parallel=True, recompute="selective")
    assert act / GiB == pytest.approx(9.5625, abs=1e-9)


def test_korthikanti_fig1_22b_params_and_optimizer() -> None:
    assert megatron_model_state_bytes(h=6144, L=48, t=8) / GiB == pytest.approx(45.5625)


def test_deepspeed_zero3_t0_3b_estimate() -> None:
    # DeepSpeed docs (memory estimators): T0_3B, "2783M total params, 65M largest layer
    # params", 1 GPU, no offload -> 46.91GB (DeepSpeed divides by 2**30). The printed counts are
    # rounded: the exact ones are T5-v1.1-XL's 2,849,757,184 less one 32128 x 2048 embedding
    # matrix (2,783,959,040), and that matrix is the largest layer (65,798,144).
    gpu = deepspeed_zero3_gpu_bytes(total_params=2_783_959_040, largest_layer_params=65_798_144)
    assert round(gpu / GiB, 2) == 46.91


def test_flash_gelu_fp32_block_saved_by_hand() -> None:
    # 32-true, flash, GELU (f = 4d), MHA, no dropout, CUDA: per block and token the saved
    # elements are x (d) + ln_1 out (d) + qkv (3d) + attn out (d) + x2 (d) + ln_2 out (d)
    # + c_fc out (4d) + gelu out (4d) = 16 d, times 4 bytes; plus 2 x 2 fp32 norm statistics
    # per token and the fp32 log-sum-exp, a per head and token.
    b, s, d, a = 2, 48, 64, 4
    t = saved_for_backward_bytes(TINY, micro_batch_size=b, seq_len=s, precision="32-true",
                                 device="cuda")
    per_block = 16 * d * 4 * b * s + 4 * 4 * b * s + a * 4 * b * s
    loss = b * s * 200 * 4 + b * s * 8 + 4  # fp32 log-softmax, int64 targets, total weight
    embedding = b * s * 8 + s * 8  # token ids and position ids
    final = d * 4 * b * s + 2 * 4 * b * s + d * 4 * b * s  # ln_f input + stats, lm_head input
    assert sum(t.values()) == 2 * per_block + loss + embedding + final


def test_swiglu_saves_twice_the_f_wide_tensors_of_gelu() -> None:
    gelu = TINY.replace(mlp_hidden=128)
    swiglu = TINY.replace(mlp="swiglu", mlp_hidden=128)
    kw = dict(micro_batch_size=1, seq_len=16, precision="32-true")
    g = saved_for_backward_bytes(gelu, **kw)["mlp_activations"]
    w = saved_for_backward_bytes(swiglu, **kw)["mlp_activations"]
    assert (g, w) == (2 * 2 * 16 * 128 * 4, 2 * 4 * 16 * 128 * 4)


def test_gpt2_logits_are_several_gib_at_b16() -> None:
    # design notes: GPT-2 at b=16, s=1024 holds s*b*V fp32 log-softmax = 3.07 GiB.
    m = training_memory(GPTConfig.preset("gpt2"), micro_batch_size=16, seq_len=1024)
    assert m.logits / GiB == pytest.approx(16 * 1024 * 50257 * 4 / GiB, rel=1e-4)
    assert m.logits > 3 * GiB


def test_megatron_layout_is_18_bytes_per_param_with_adamw() -> None:
    cfg = GPTConfig.preset("gpt2")
    n = 124_439_808
    m = training_memory(cfg, micro_batch_size=1, seq_len=128, precision="bf16-fp32-master")
    # plus torch's 4-byte AdamW step per tensor: wte, wpe, 12 per block (ln_1, c_attn, c_proj,
    # ln_2, c_fc, c_proj: weight and bias each), ln_f weight and bias = 148 tensors
    assert (m.weights + m.gradients + m.optimizer) == 18 * n + 4 * 148


def test_optimizer_states_per_optimizer() -> None:
    cfg = GPTConfig(n_layer=1, n_head=1, n_embd=4, block_size=8, vocab_size=8, bias=False)
    # shapes: wte 8x4, wpe 8x4, ln 4, c_attn 12x4, c_proj 4x4, ln 4, c_fc 16x4, c_proj 4x16, ln_f 4
    n = 32 + 32 + 4 + 48 + 16 + 4 + 64 + 64 + 4
    tensors = 9  # one 4-byte AdamW step per tensor (torch >= 2.0)
    assert optimizer_state_bytes(cfg, "adamw", "32-true") == 8 * n + 4 * tensors
    assert optimizer_state_bytes(cfg, "sgd", "32-true") == 0
    assert optimizer_state_bytes(cfg, "lion", "32-true") == 4 * n
    # adafactor: rows + cols for matrices, full vectors for 1-d tensors
    factored = (8 + 4) * 2 + 4 + (12 + 4) + (4 + 4) + 4 + (16 + 4) + (4 + 16) + 4
    assert optimizer_state_bytes(cfg, "adafactor", "32-true") == 4 * factored
    # 8-bit: every tensor here is under 4096 elements, so bitsandbytes keeps 32-bit states
    assert optimizer_state_bytes(cfg, "adamw-8bit", "32-true") == 8 * n


def test_breakdown_parts_sum_and_round_trip_json() -> None:
    m = training_memory(TINY, micro_batch_size=2, seq_len=32, precision="bf16-mixed")
    parts = (m.weights + m.gradients + m.optimizer + m.saved_for_backward
             + m.autocast_weight_copies + m.transient + m.overhead)
    assert parts == m.total and m.tensor_peak == m.total - m.overhead
    assert MemoryBreakdown.model_validate_json(m.model_dump_json()) == m
    assert json.loads(m.model_dump_json())["total"] == m.total


def test_numpy_sweep_matches_ints_and_does_not_overflow() -> None:
    cfg = GPTConfig.preset("llama-2-7b")
    b = np.arange(1, 101, dtype=np.float64)[:, None]
    s = np.linspace(128, 4096, 1000)[None, :].round()
    grid = sum(saved_for_backward_bytes(cfg, micro_batch_size=b, seq_len=s).values())
    assert grid.shape == (100, 1000) and grid.dtype == np.float64
    one = sum(saved_for_backward_bytes(cfg, micro_batch_size=7, seq_len=int(s[0, 10])).values())
    assert grid[6, 10] == pytest.approx(one, rel=1e-12)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(micro_batch_size=0, seq_len=16), r"micro_batch_size=0 must be >= 1"),
    (dict(micro_batch_size=1, seq_len=65), r"seq_len=65 exceeds block_size=64"),
    (dict(micro_batch_size=1, seq_len=16, precision="fp8"),
     r"unknown precision 'fp8'; known: .*'bf16-fp32-master', 'bf16-mixed', 'bf16-true'"),
    (dict(micro_batch_size=1, seq_len=16, optimizer="adamax"),
     r"unknown optimizer 'adamax'.*\(valid: adamw, adamw-8bit, sgd, sgd-momentum, adafactor, "
     r"lion\)"),
])
def test_bad_input_is_rejected_with_a_clear_message(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        training_memory(TINY, **kwargs)  # type: ignore[arg-type]


def test_unknown_optimizer_lists_valid_ones() -> None:
    with pytest.raises(UnknownNameError, match="adamw"):
        training_memory(TINY, micro_batch_size=1, seq_len=8, optimizer="adamw9")
    with pytest.raises(ScaleplanError):
        training_memory(TINY, micro_batch_size=1, seq_len=8, attention="sparse")  # type: ignore[arg-type]

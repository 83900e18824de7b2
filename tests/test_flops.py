"""FLOPs: published vectors, hand calculations and exact agreement with torch's FlopCounterMode."""

from __future__ import annotations

import math

import pytest

from scaleplan.compute.flops import (
    flops_per_token,
    kaplan_training_flops,
    matmul_params,
    palm_flops_per_token,
    step_flops,
    training_flops,
)
from scaleplan.model.config import GPTConfig

GPT2 = GPTConfig.preset("gpt2")


def test_nanogpt_estimate_mfu_flops_per_token_for_gpt2_small() -> None:
    # nanoGPT model.py estimate_mfu: N = get_num_params() = 123,653,376 (GPT-2 small, vocab 50257,
    # bias), L, H, Q, T = 12, 12, 64, 1024: 6*123,653,376 + 12*12*12*64*1024 = 855,166,464.
    assert flops_per_token(GPT2, seq_len=1024, causal=False, method="nanogpt") == 855_166_464


def test_palm_540b_mfu_from_published_throughput() -> None:
    # PaLM (Chowdhery et al. 2022) App. B: 238.3K tokens/s on 6144 TPU v4 chips (275 TFLOP/s
    # bf16 peak each) with N=540.35e9, L=118, H=48, Q=256, T=2048 is 46.2% MFU.
    per_token = palm_flops_per_token(540.35e9, n_layer=118, n_head=48, head_dim=256,
                                     seq_len=2048)
    mfu = 238.3e3 * per_token / (6144 * 275e12)
    assert round(mfu, 3) == 0.462


def test_gpt3_6nd() -> None:
    # GPT-3 175B on 300B tokens: 6 * 175e9 * 300e9 = 3.15e23 FLOPs (Brown et al. 2020, Table D.1).
    assert kaplan_training_flops(175e9, 300e9) == pytest.approx(3.15e23, rel=1e-12)


def test_gpt2_matmul_params_by_hand() -> None:
    # per layer: qkv 768*2304 + out 768*768 + mlp 2*768*3072 = 7,077,888; head 768*50257.
    assert matmul_params(GPT2) == 12 * 7_077_888 + 768 * 50257


def test_causal_halves_only_the_attention_term() -> None:
    full = flops_per_token(GPT2, seq_len=1024, causal=False)
    causal = flops_per_token(GPT2, seq_len=1024, causal=True)
    assert full - causal == 12 * 12 * 12 * 64 * 1024 / 2  # half of 12·L·H·Q·T


def test_full_recompute_adds_one_forward_of_the_blocks() -> None:
    # Full recomputation re-runs each block's forward (4/3 for the blocks); the lm_head keeps
    # its factor 3 (Narayanan et al. 2021, Eq. 3). Block forward per token for GPT-2 small:
    # 2 x 12 x 7,077,888 matmul weights + QK^T and AV, 4*12*12*64*1024 / 2 (causal).
    model = flops_per_token(GPT2, seq_len=1024)
    hardware = flops_per_token(GPT2, seq_len=1024, recompute="full")
    assert hardware - model == 2 * 12 * 7_077_888 + 4 * 12 * 12 * 64 * 1024 / 2


def test_selective_recompute_adds_the_attention_core_forward() -> None:
    model = flops_per_token(GPT2, seq_len=1024, causal=False)
    selective = flops_per_token(GPT2, seq_len=1024, causal=False, recompute="selective")
    assert selective - model == 4 * 12 * 12 * 64 * 1024  # QK^T and AV forward per token


def test_kaplan_method_is_six_non_embedding_params() -> None:
    # GPT-2 small non-embedding: 124,439,808 - 50257*768 - 1024*768 = 85,056,000.
    assert flops_per_token(GPT2, seq_len=1024, method="kaplan") == 6 * 85_056_000


def test_training_flops_is_per_token_times_tokens() -> None:
    tokens = 10**9
    per_token = 6 * (12 * 7_077_888 + 768 * 50257) + 12 * 12 * 12 * 64 * 1024 / 2
    assert training_flops(GPT2, tokens, seq_len=1024) == per_token * tokens


def test_step_flops_breakdown_sums_and_backward_is_twice_forward() -> None:
    s = step_flops(GPT2, micro_batch_size=4, seq_len=256, causal=False)
    tokens = 4 * 256
    assert s.lm_head == 2 * tokens * 768 * 50257
    assert s.attention_scores == 2 * 4 * 12 * 256 * 256 * 64 * 12  # 2·B·H·T·T·Q per layer
    assert s.backward == 2 * s.forward
    assert s.total == 3 * s.forward


def test_step_flops_round_trips_through_json() -> None:
    s = step_flops(GPT2, micro_batch_size=2, seq_len=128)
    assert type(s).model_validate_json(s.model_dump_json()) == s


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"micro_batch_size": 0, "seq_len": 8}, "micro_batch_size=0 must be a positive"),
        ({"micro_batch_size": 1, "seq_len": -1}, "seq_len=-1 must be a positive"),
    ],
)
def test_step_flops_rejects_bad_shapes(kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        step_flops(GPT2, **kwargs)


def test_bad_method_and_recompute_are_rejected() -> None:
    with pytest.raises(ValueError, match="method='palmm' is not one of"):
        flops_per_token(GPT2, seq_len=8, method="palmm")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="recompute='some' is not one of"):
        flops_per_token(GPT2, seq_len=8, recompute="some")  # type: ignore[arg-type]


# --- exact agreement with torch.utils.flop_counter.FlopCounterMode -----------------------------

TORCH_GRID = {
    "gpt2-style": GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=97),
    "llama-style-gqa": GPTConfig(n_layer=2, n_head=6, n_kv_head=2, n_embd=48, block_size=32,
                                 vocab_size=101, bias=False, mlp="swiglu", norm="rmsnorm",
                                 position="rope", tie_embeddings=False),
    "odd-shapes": GPTConfig(n_layer=3, n_head=3, n_embd=21, head_dim=5, mlp_hidden=37,
                            block_size=19, vocab_size=53, mlp="geglu", qkv_bias=True,
                            attn_out_bias=False, position="none"),
    "mqa": GPTConfig(n_layer=1, n_head=4, n_kv_head=1, n_embd=32, block_size=16, vocab_size=50,
                     bias=False, mlp="swiglu", norm="rmsnorm", position="rope"),
}


@pytest.mark.torch
@pytest.mark.parametrize("name", sorted(TORCH_GRID))
@pytest.mark.parametrize(("micro_batch_size", "seq_len"), [(2, 16), (3, 7)])
@pytest.mark.parametrize("attention", ["flash", "eager"])
def test_step_flops_equals_flop_counter_mode_on_the_reference_model(
        name: str, micro_batch_size: int, seq_len: int, attention: str) -> None:
    pytest.importorskip("torch", reason="the FlopCounterMode check needs torch")
    from scaleplan.reference import count_flops

    cfg = TORCH_GRID[name]
    forward, backward = count_flops(cfg, micro_batch_size=micro_batch_size, seq_len=seq_len,
                                    attention=attention)  # type: ignore[arg-type]
    expected = step_flops(cfg, micro_batch_size=micro_batch_size, seq_len=seq_len, causal=False)
    assert forward == expected.forward
    assert backward == expected.backward
    assert math.isclose((forward + backward) / (micro_batch_size * seq_len),
                        flops_per_token(cfg, seq_len=seq_len, causal=False), rel_tol=1e-15)


@pytest.mark.torch
@pytest.mark.parametrize("name", ["gpt2-style", "llama-style-gqa"])
def test_full_recompute_equals_flop_counter_with_checkpointing(name: str) -> None:
    pytest.importorskip("torch", reason="the FlopCounterMode check needs torch")
    from scaleplan.reference import count_flops

    cfg = TORCH_GRID[name]
    forward, backward = count_flops(cfg, micro_batch_size=2, seq_len=16, checkpointing=True)
    # torch's non-reentrant checkpoint stops recomputing once every saved tensor is rebuilt
    # ("early stop"), so each block's last matmul (the MLP down projection, whose output nothing
    # saves) is not re-run: "full" minus L down-projection forwards (2·tokens·f·d each).
    tokens = 2 * 16
    down_forward = cfg.n_layer * 2 * tokens * cfg.mlp_hidden * cfg.n_embd
    hardware = tokens * flops_per_token(cfg, seq_len=16, causal=False, recompute="full")
    assert forward + backward == hardware - down_forward

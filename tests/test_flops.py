"""FLOPs: published vectors, hand calculations and exact agreement with torch's FlopCounterMode."""

from __future__ import annotations

import math

import pytest

from scaleplan.config import GPTConfig
from scaleplan.flops import (
    flops_per_token,
    kaplan_training_flops,
    matmul_params,
    palm_flops_per_token,
    step_flops,
    training_flops,
)

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


def test_full_recompute_is_four_thirds_of_model_flops() -> None:
    # Full recomputation adds one forward pass: (2 + 2 + 4) / (2 + 4) = 4/3 (Korthikanti 2022).
    model = flops_per_token(GPT2, seq_len=1024)
    hardware = flops_per_token(GPT2, seq_len=1024, recompute="full")
    assert hardware / model == pytest.approx(4 / 3, rel=1e-15)


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
def test_step_flops_equals_flop_counter_mode(name: str, micro_batch_size: int,
                                             seq_len: int) -> None:
    pytest.importorskip("torch", reason="the FlopCounterMode check needs torch")
    cfg = TORCH_GRID[name]
    counted = _torch_step_flops(cfg, micro_batch_size=micro_batch_size, seq_len=seq_len)
    expected = step_flops(cfg, micro_batch_size=micro_batch_size, seq_len=seq_len, causal=False)
    assert counted == expected.total
    assert math.isclose(counted / (micro_batch_size * seq_len),
                        flops_per_token(cfg, seq_len=seq_len, causal=False), rel_tol=1e-15)


def _torch_step_flops(cfg: GPTConfig, *, micro_batch_size: int, seq_len: int) -> float:
    """FlopCounterMode's count for one forward + backward of a throwaway GPT built from ``cfg``.

    A stand-in for scaleplan.reference (built on another branch): pre-norm blocks, q/k/v/o
    projections, SDPA attention (math backend, so CPU counts it; GQA via enable_gqa), GELU or
    gated MLP, final norm, lm_head over every position, cross-entropy loss.
    """
    import torch
    import torch.nn.functional as F  # noqa: N812 (the usual torch spelling)
    from torch import nn
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    def norm() -> nn.Module:
        if cfg.norm == "rmsnorm":
            return nn.RMSNorm(cfg.n_embd)
        return nn.LayerNorm(cfg.n_embd, bias=cfg.norm_bias)

    def rope(x: torch.Tensor) -> torch.Tensor:  # rotate half; elementwise, so 0 FLOPs counted
        half = x.shape[-1] // 2
        pos = torch.arange(x.shape[-2], dtype=x.dtype)[:, None]
        freq = 1.0 / 10000 ** (torch.arange(half, dtype=x.dtype) / max(half, 1))
        cos, sin = (pos * freq).cos(), (pos * freq).sin()
        x1, x2 = x[..., :half], x[..., half:2 * half]
        rotated = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
        return torch.cat([rotated, x[..., 2 * half:]], dim=-1)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            d, Q, H, K, f = cfg.n_embd, cfg.head_dim, cfg.n_head, cfg.n_kv_head, cfg.mlp_hidden
            self.n1, self.n2 = norm(), norm()
            self.q = nn.Linear(d, H * Q, bias=cfg.qkv_bias)
            self.k = nn.Linear(d, K * Q, bias=cfg.qkv_bias)
            self.v = nn.Linear(d, K * Q, bias=cfg.qkv_bias)
            self.o = nn.Linear(H * Q, d, bias=cfg.attn_out_bias)
            self.up = nn.Linear(d, f, bias=cfg.mlp_bias)
            self.gate = nn.Linear(d, f, bias=cfg.mlp_bias) if cfg.gated_mlp else None
            self.down = nn.Linear(f, d, bias=cfg.mlp_bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            B, T, _ = x.shape
            h = self.n1(x)
            q = self.q(h).view(B, T, cfg.n_head, cfg.head_dim).transpose(1, 2)
            k = self.k(h).view(B, T, cfg.n_kv_head, cfg.head_dim).transpose(1, 2)
            v = self.v(h).view(B, T, cfg.n_kv_head, cfg.head_dim).transpose(1, 2)
            if cfg.position == "rope":
                q, k = rope(q), rope(k)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                               enable_gqa=cfg.n_kv_head != cfg.n_head)
            x = x + self.o(a.transpose(1, 2).reshape(B, T, -1))
            h = self.n2(x)
            if self.gate is None:
                h = F.gelu(self.up(h))
            else:
                act = F.silu if cfg.mlp == "swiglu" else F.gelu
                h = act(self.gate(h)) * self.up(h)
            return x + self.down(h)

    class GPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
            self.wpe = (nn.Embedding(cfg.block_size, cfg.n_embd)
                        if cfg.position == "learned" else None)
            self.blocks = nn.ModuleList(Block() for _ in range(cfg.n_layer))
            self.ln_f = norm()
            self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
            if cfg.tie_embeddings:
                self.lm_head.weight = self.wte.weight

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            x = self.wte(idx)
            if self.wpe is not None:
                x = x + self.wpe(torch.arange(idx.shape[1]))
            for block in self.blocks:
                x = block(x)
            logits = self.lm_head(self.ln_f(x))
            return F.cross_entropy(logits.view(-1, cfg.vocab_size), idx.view(-1))

    torch.manual_seed(0)
    model = GPT()
    idx = torch.randint(cfg.vocab_size, (micro_batch_size, seq_len))
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        model(idx).backward()
    return float(counter.get_total_flops())

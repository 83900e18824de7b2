"""FLOPs of the architecture options of issue 18: exact agreement with FlopCounterMode on the
reference model (MoE with balanced routing, MLA, sliding windows, every dense option), and hand
calculations of what FlopCounterMode cannot see (the causal band of a sliding window)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from scaleplan.compute.flops import flops_per_token, matmul_params, step_flops, token_flops
from scaleplan.errors import ScaleplanError
from scaleplan.model.config import GPTConfig

_BASE: dict[str, Any] = {"n_layer": 2, "n_head": 4, "n_embd": 32, "block_size": 32,
                         "vocab_size": 97}
_MOE = {"n_experts": 4, "top_k": 2, "expert_hidden": 24}
_MLA = {"q_lora_rank": 12, "kv_lora_rank": 8, "qk_nope_head_dim": 6, "qk_rope_head_dim": 4,
        "v_head_dim": 5}

ARCHITECTURES: dict[str, GPTConfig] = {name: GPTConfig.model_validate({**_BASE, **fields})
                                       for name, fields in {
    "mixtral-style": {"n_kv_head": 2, "bias": False, "mlp": "swiglu", "norm": "rmsnorm",
                      "position": "rope", "tie_embeddings": False, "moe": _MOE},
    "deepseek-style": {"n_layer": 3, "bias": False, "mlp": "swiglu", "norm": "rmsnorm",
                       "position": "rope", "mlp_hidden": 40, "mla": _MLA,
                       "moe": {**_MOE, "n_shared_experts": 1, "n_dense_layers": 1,
                               "router_bias": True}},
    "mla-direct-q": {"bias": False, "position": "rope", "norm": "rmsnorm",
                     "mla": {**_MLA, "q_lora_rank": None}},
    "qwen2-moe-style": {"position": "rope", "mlp": "swiglu", "qk_norm": "head",
                        "moe": {"n_experts": 3, "top_k": 1, "expert_hidden": 16,
                                "shared_expert_hidden": 20, "shared_expert_gate": True}},
    "mistral-window": {"n_kv_head": 1, "bias": False, "mlp": "swiglu", "norm": "rmsnorm",
                       "position": "rope", "sliding_window": 5},
    "gemma2-style": {"n_layer": 3, "norm_position": "sandwich", "norm": "rmsnorm",
                     "mlp": "geglu", "position": "rope", "sliding_window": 4,
                     "sliding_window_layers": 2, "attn_softcap": 50.0, "final_softcap": 30.0,
                     "qk_norm": "full"},
    "gptj-parallel": {"parallel": "shared_norm", "position": "rope", "rotary_fraction": 0.25,
                      "lm_head_bias": True, "tie_embeddings": False},
    "neox-parallel": {"parallel": "separate_norms", "position": "rope",
                      "rotary_fraction": 0.5, "qk_norm": "per_head"},
    "opt-350m-style": {"embed_dim": 16, "position_offset": 2, "final_norm": False,
                       "norm_position": "post", "mlp": "relu"},
    "bloom-style": {"position": "alibi", "embedding_norm": True, "n_head": 3, "n_embd": 24},
    "olmo-style": {"norm_affine": False, "bias": False, "position": "rope", "mlp": "swiglu"},
}.items()}


@pytest.mark.torch
@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize(("micro_batch_size", "seq_len"), [(2, 16), (3, 7)])
@pytest.mark.parametrize("attention", ["flash", "eager"])
def test_step_flops_equals_flop_counter_mode_for_every_architecture(
        name: str, micro_batch_size: int, seq_len: int, attention: str) -> None:
    pytest.importorskip("torch", reason="the FlopCounterMode check needs torch")
    from scaleplan.reference import count_flops

    cfg = ARCHITECTURES[name]
    if cfg.attn_softcap is not None and attention == "flash":
        pytest.skip("soft-capped scores need eager attention")
    forward, backward = count_flops(cfg, micro_batch_size=micro_batch_size, seq_len=seq_len,
                                    attention=attention)  # type: ignore[arg-type]
    expected = step_flops(cfg, micro_batch_size=micro_batch_size, seq_len=seq_len, causal=False)
    assert forward == expected.forward
    assert backward == expected.backward
    assert math.isclose((forward + backward) / (micro_batch_size * seq_len),
                        flops_per_token(cfg, seq_len=seq_len, causal=False), rel_tol=1e-15)


def test_moe_counts_the_router_top_k_experts_and_shared_experts_by_hand() -> None:
    # qwen2-moe-style: d=32, 4 heads of 8, 2 blocks, V=97, biases on, SwiGLU; 3 experts of 16,
    # top-1, a shared MLP of 20 with a sigmoid gate. Per block, per token (multiply-adds):
    # qkv 32 x 96 = 3,072; out 32 x 32 = 1,024; router 3 x 32 = 96; one routed expert
    # 3 x 16 x 32 = 1,536; shared 3 x 20 x 32 = 1,920; gate 32. Sum 7,680 x 2 blocks = 15,360;
    # head 97 x 32 = 3,104: N = 18,464.
    cfg = ARCHITECTURES["qwen2-moe-style"]
    assert matmul_params(cfg) == 18_464
    # T=16, causal: 6N + 3 x (QK^T + AV) = 6 x 18,464 + 3 x 2 x (2 x 4 x 8 x 16 / 2 x 2) ...
    # per token QK^T is L·H·Q·T = 2 x 4 x 8 x 16 = 1,024 multiply-adds x 2 FLOPs / 2 (causal).
    assert token_flops(cfg, 16) == 6 * 18_464 + 3 * 2 * 1_024


def test_sliding_window_counts_the_causal_band_by_hand() -> None:
    # mistral-window: 2 blocks, 4 heads of 8, window 5, T=16, causal. Each query sees
    # min(i + 1, 5) keys; in Megatron's continuous convention the band holds T·w - w²/2 =
    # 80 - 12.5 = 67.5 pairs (the triangle's T²/2 would be 128). QK^T forward per sequence:
    # 2 FLOPs x 8 x 67.5 pairs x 4 heads x 2 blocks = 8,640; AV the same.
    cfg = ARCHITECTURES["mistral-window"]
    s = step_flops(cfg, micro_batch_size=1, seq_len=16)
    assert s.attention_scores == s.attention_values == 8_640
    # A window as long as the sequence changes nothing: T²/2 = 128 pairs.
    full = step_flops(cfg, micro_batch_size=1, seq_len=5)
    plain = step_flops(cfg.replace(sliding_window=None), micro_batch_size=1, seq_len=5)
    assert full == plain
    # Per token the band's average, 67.5 / 16 pairs x 2 FLOPs x 8 x 4 heads x 2 blocks x 2
    # (QK^T, AV) = 1,080 forward; x 3 with the backward.
    dense_part = 6 * matmul_params(cfg)
    assert token_flops(cfg, 16) == dense_part + 3 * 1_080


def test_gemma_style_windows_count_only_in_their_blocks() -> None:
    # gemma2-style: 3 blocks, 2 of them sliding (window 4), 4 heads of 8, T=16, causal.
    # Full block: 128 pairs; sliding: 16 x 4 - 8 = 56 pairs. QK^T: 2 x 8 x 4 heads x
    # (128 + 2 x 56) = 64 x 240 = 15,360.
    s = step_flops(ARCHITECTURES["gemma2-style"], micro_batch_size=1, seq_len=16)
    assert s.attention_scores == 15_360


def test_mla_attention_uses_qk_head_dim_for_scores_and_v_head_dim_for_values() -> None:
    # mla-direct-q: 4 heads, qk_head_dim 6 + 4 = 10, v_head_dim 5, 2 blocks, T=16, causal
    # (128 pairs): QK^T 2 x 10 x 128 x 4 x 2 = 20,480; AV 2 x 5 x 128 x 4 x 2 = 10,240.
    s = step_flops(ARCHITECTURES["mla-direct-q"], micro_batch_size=1, seq_len=16)
    assert (s.attention_scores, s.attention_values) == (20_480, 10_240)
    # Projections per token: q 32 -> 40 (1,280), kv_a 32 -> 12 (384), kv_b 8 -> 44 (352):
    # 2,016 multiply-adds, x 2 FLOPs x 16 tokens x 2 blocks.
    assert s.qkv == 2 * 16 * 2 * 2_016


def test_opt_projections_count_with_the_head() -> None:
    # opt-350m-style: embed_dim 16 into d=32: project_in 16 x 32 and project_out 32 x 16
    # (1,024 multiply-adds per token together), head 97 x 16 = 1,552; 2 FLOPs x 7 tokens.
    s = step_flops(ARCHITECTURES["opt-350m-style"], micro_batch_size=1, seq_len=7)
    assert s.lm_head == 2 * 7 * (1_024 + 1_552)


def test_sliding_window_with_a_symbolic_seq_len_is_refused() -> None:
    sympy = pytest.importorskip("sympy")
    with pytest.raises(ScaleplanError, match=r"sliding_window=5 with a symbolic seq_len"):
        token_flops(ARCHITECTURES["mistral-window"], sympy.Symbol("T"))


def test_capacity_factor_below_one_is_refused() -> None:
    cfg = ARCHITECTURES["mixtral-style"].replace(moe={**_MOE, "capacity_factor": 0.5})
    with pytest.raises(ScaleplanError, match=r"capacity_factor=0.5 drops tokens"):
        flops_per_token(cfg, seq_len=16)


@pytest.mark.torch
def test_learned_routing_counts_what_balanced_routing_counts() -> None:
    # Dropless routing sends every token to top_k experts whatever the router picks, so the
    # experts' matmuls sum to tokens x top_k expert passes: the router's own (real) choice gives
    # FlopCounterMode's same total.
    torch = pytest.importorskip("torch", reason="the FlopCounterMode check needs torch")
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from scaleplan.reference.model import GPT

    cfg = ARCHITECTURES["deepseek-style"]
    torch.manual_seed(0)
    model = GPT(cfg, routing="learned")
    idx = torch.randint(0, cfg.vocab_size, (3, 7))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        _, loss = model(idx, idx)
        assert loss is not None
        loss.backward()
    assert counter.get_total_flops() == step_flops(cfg, micro_batch_size=3, seq_len=7,
                                                   causal=False).total


@pytest.mark.torch
def test_mixtral_8x7b_flops_per_token_equal_flop_counter_mode() -> None:
    # The acceptance at full size, on fake tensors: Mixtral-8x7B (32 layers, 8 experts
    # of 14336, top-2), one sequence of 512 tokens, balanced routing (each expert takes 128).
    pytest.importorskip("torch", reason="the FlopCounterMode check needs torch")
    from scaleplan.reference import count_flops

    mixtral = GPTConfig(n_layer=32, n_head=32, n_kv_head=8, n_embd=4096, block_size=32768,
                        vocab_size=32000, bias=False, mlp="swiglu", norm="rmsnorm",
                        position="rope", tie_embeddings=False,
                        moe={"n_experts": 8, "top_k": 2, "expert_hidden": 14336})
    forward, backward = count_flops(mixtral, micro_batch_size=1, seq_len=512)
    assert forward + backward == 512 * flops_per_token(mixtral, seq_len=512, causal=False)


@pytest.mark.torch
@pytest.mark.parametrize(("name", "not_rerun"), [
    # torch's non-reentrant checkpoint stops recomputing once every saved tensor is rebuilt, so
    # a block's last matmul is not re-run when nothing saves its output (2 FLOPs x 32 tokens x
    # its weights, per block): the dense down projection (f=128, d=32) of a pre-norm or
    # parallel block;
    ("gptj-parallel", 2 * 2 * 32 * 128 * 32),
    ("mla-direct-q", 2 * 2 * 32 * 128 * 32),
    # deepseek-style: the dense block's down projection (40 x 32) and, in the 2 MoE blocks,
    # the shared expert's (24 x 32), which runs after the routed experts;
    ("deepseek-style", 2 * 32 * 40 * 32 + 2 * 2 * 32 * 24 * 32),
    # but a routed expert's output is saved by its weighting (the MoE ends with index_add_),
    # and a post-norm (opt) or sandwich (gemma2) block's norm saves the MLP's output.
    ("mixtral-style", 0), ("opt-350m-style", 0), ("gemma2-style", 0),
])
def test_full_recompute_equals_flop_counter_with_checkpointing(name: str, not_rerun: int) -> None:
    pytest.importorskip("torch", reason="the FlopCounterMode check needs torch")
    from scaleplan.reference import count_flops

    cfg = ARCHITECTURES[name]
    attention = "eager" if cfg.attn_softcap is not None else "flash"
    forward, backward = count_flops(cfg, micro_batch_size=2, seq_len=16, checkpointing=True,
                                    attention=attention)  # type: ignore[arg-type]
    hardware = 32 * flops_per_token(cfg, seq_len=16, causal=False, recompute="full")
    assert forward + backward == hardware - not_rerun


def test_kaplan_and_nanogpt_methods_take_the_active_parameters_of_mixtral_8x7b() -> None:
    # Mixtral-8x7B's active parameters by hand, per layer: attention 4096 x (4096 + 2 x 1024)
    # + 4096 x 4096 = 41,943,040; router 8 x 4096 = 32,768; two of the 8 experts,
    # 2 x 3 x 14336 x 4096 = 352,321,536; two norms 8,192: 394,305,536. x 32 = 12,617,777,152;
    # + wte and the untied head 2 x 32000 x 4096 + ln_f 4,096 = 12,879,925,248 (the published
    # 12.9B, Jiang et al. 2024). Kaplan's N leaves wte out; nanoGPT's only the (absent) wpe.
    mixtral = GPTConfig(n_layer=32, n_head=32, n_kv_head=8, n_embd=4096, block_size=32768,
                        vocab_size=32000, bias=False, mlp="swiglu", norm="rmsnorm",
                        position="rope", tie_embeddings=False,
                        moe={"n_experts": 8, "top_k": 2, "expert_hidden": 14336})
    active = 12_879_925_248
    assert token_flops(mixtral, 4096, method="kaplan") == 6 * (active - 32000 * 4096)
    attention = 2 * 32 * 32 * 128 * 4096  # QK^T and AV per token, causal: 2 x L·H·Q·T
    assert token_flops(mixtral, 4096, method="nanogpt") == 6 * active + 3 * attention

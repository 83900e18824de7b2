"""Hand-derived values for a small Llama-style model: SwiGLU, GQA, RMSNorm, RoPE, no bias.

Every expected number below is worked out by hand in the comment beside it, from the model's
shapes alone, never from scaleplan's output. The last test checks the same hand values against
the torch reference model (skipped without torch).

The model, with d = n_embd, a/k = query/key-value heads, h = head_dim, f = mlp_hidden:

    L = 2, d = 64, a = 4, k = 2, h = d / a = 16, f = 192, V = 256, block_size = 64,
    untied head, no biases.

Per block, the weight matrices are:

    q  d x a h = 64 x 64 = 4096        gate  d x f = 64 x 192 = 12288
    k  d x k h = 64 x 32 = 2048        up    d x f = 64 x 192 = 12288
    v  d x k h = 64 x 32 = 2048        down  f x d = 192 x 64 = 12288
    o  a h x d = 64 x 64 = 4096
    attention 12288                    MLP 36864 (three matrices: SwiGLU is gated)

plus two RMSNorm scales of d = 64 each (no bias). Block matmul weights: 12288 + 36864 = 49152.
"""

from __future__ import annotations

import pytest

from scaleplan.compute.flops import flops_per_token, matmul_params, step_flops
from scaleplan.memory.training import training_memory
from scaleplan.model.config import GPTConfig
from scaleplan.model.params import count_params

CFG = GPTConfig(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, mlp="swiglu", mlp_hidden=192,
                norm="rmsnorm", position="rope", bias=False, tie_embeddings=False,
                vocab_size=256, block_size=64)
B, S = 2, 32  # micro-batch and sequence length: T = B S = 64 tokens

# Parameters
TOTAL = 131_392  # 16384 (wte) + 2 x 49280 (blocks) + 64 (final norm) + 16384 (head)
# FLOPs
MATMUL_N = 114_688  # 2 x 49152 (block matmuls) + 64 x 256 (output head) = 98304 + 16384
FORWARD = 15_728_640  # step_flops forward, b=2, s=32, non-causal (derived below)


def test_parameter_count_by_part() -> None:
    pc = count_params(CFG)
    assert pc.token_embedding == 16_384  # V d = 256 x 64
    assert pc.position_embedding == 0  # RoPE has no table
    assert pc.attention == 24_576  # L x (4096 + 2048 + 2048 + 4096) = 2 x 12288
    assert pc.mlp == 73_728  # L x 3 x d f = 2 x 3 x 12288 (gated: gate, up, down)
    assert pc.norms == 320  # (2 L + 1) x d = 5 x 64, RMSNorm has no bias
    assert pc.lm_head == 16_384  # untied: d V = 64 x 256
    assert pc.biases == 0
    assert pc.per_layer == 49_280  # 12288 + 36864 + 2 x 64
    # 16384 + 24576 + 73728 + 320 + 16384
    assert pc.total == TOTAL
    assert pc.non_embedding == 115_008  # total - wte = 131392 - 16384 (the head stays in)
    assert pc.nanogpt == TOTAL  # total - position table (none)


def test_gated_mlp_has_three_matmuls_in_the_flops() -> None:
    # N for 6N counts the weights of every matmul: 2 blocks x (12288 attention + 36864 MLP)
    # + the head 64 x 256. A GELU-style count (two MLP matrices, 24576) would give
    # 2 x 36864 + 16384 = 90112 and understate every Llama-family FLOPs/MFU figure.
    assert matmul_params(CFG) == MATMUL_N
    s = step_flops(CFG, micro_batch_size=B, seq_len=S, causal=False)
    # Each matmul is 2 m n k forward with m = T = 64 tokens:
    # MLP: L x 2 x 64 x (3 x 64 x 192) = 2 x 2 x 64 x 36864
    assert s.mlp == 9_437_184
    # q, k, v: L x 2 x 64 x 64 x (4 + 2 x 2) x 16 = 2 x 2 x 64 x 8192
    assert s.qkv == 2_097_152
    # output projection: L x 2 x 64 x (64 x 64)
    assert s.attention_out == 1_048_576
    # head: 2 x 64 x 64 x 256
    assert s.lm_head == 2_097_152
    # QK^T: per sequence and head a (s x h) @ (h x s) matmul, 2 s s h; over b a L:
    # 2 x 32 x 32 x 16 x 2 x 4 x 2 = 524288 (K expanded to every query head); AV the same
    assert s.attention_scores == 524_288
    assert s.attention_values == 524_288
    # 9437184 + 2097152 + 1048576 + 2097152 + 2 x 524288
    assert s.forward == FORWARD
    assert s.backward == 2 * FORWARD  # two matmuls of the forward's size per matmul
    assert s.total == 47_185_920


def test_step_flops_causal_halves_only_the_attention_matmuls() -> None:
    s = step_flops(CFG, micro_batch_size=B, seq_len=S)  # causal is the default
    assert s.attention_scores == 262_144  # 524288 / 2 (Megatron's s^2 / 2 triangle)
    assert s.attention_values == 262_144
    assert s.forward == FORWARD - 524_288  # 15204352
    assert s.mlp == 9_437_184


def test_flops_per_token_every_method_and_recompute() -> None:
    # PaLM: 6N + 12 L H Q T with N = 114688, L H Q T = 2 x 4 x 16 x 32 = 4096
    assert flops_per_token(CFG, seq_len=S, causal=False) == 737_280  # 688128 + 49152
    assert flops_per_token(CFG, seq_len=S) == 712_704  # causal: 688128 + 24576
    # selective recompute adds the attention core's forward once: 2 x 4096 (causal)
    assert flops_per_token(CFG, seq_len=S, recompute="selective") == 720_896
    # full recompute adds every block's forward: 2 x 98304 (block matmuls, not the head)
    # + 8192 (attention) = 204800
    assert flops_per_token(CFG, seq_len=S, recompute="full") == 917_504
    # nanoGPT: N = nanoGPT's printed count 131392: 6 x 131392 + 12 x 4096 = 788352 + 49152
    assert flops_per_token(CFG, seq_len=S, causal=False, method="nanogpt") == 837_504
    # Kaplan: 6 x non-embedding N = 6 x 115008; no attention term
    assert flops_per_token(CFG, seq_len=S, method="kaplan") == 690_048
    # Kaplan with full recompute: + 2 x (115008 - 16384 head) = 197248
    assert flops_per_token(CFG, seq_len=S, method="kaplan", recompute="full") == 887_296
    # step_flops / tokens agrees with the per-token figure: 47185920 / 64 = 737280
    assert step_flops(CFG, micro_batch_size=B, seq_len=S, causal=False).total / (B * S) == 737_280


# Saved for backward, 32-true (e = r = 4 bytes), flash (SDPA) attention, no dropout, T = 64.
# One block on CUDA semantics (fused RMSNorm saves its input and an fp32 rstd per token):
BLOCK_CUDA = {
    "norm1_input": 16_384,  # T d r = 64 x 64 x 4
    "norm1_stats": 256,  # T x 4 (rstd)
    "qkv_input": 16_384,  # the fused projection's input, T d e
    "qkv": 32_768,  # its output, T (a + 2k) h e = 64 x 8 x 16 x 4 (k, v not expanded)
    "rope_qk": 24_576,  # rotated q and k, T (a + k) h e = 64 x 6 x 16 x 4
    "attn_lse": 1_024,  # SDPA's log-sum-exp, b a s x 4 = 2 x 4 x 32 x 4
    "attn_out": 16_384,  # SDPA's output, T a h e = 64 x 64 x 4
    "norm2_input": 16_384,
    "norm2_stats": 256,
    "mlp_input": 16_384,  # T d e
    "mlp_activations": 196_608,  # gate out, SiLU out, up out, product: 4 T f e = 4 x 64 x 192 x 4
}
BLOCK_CUDA_BYTES = 337_408  # the sum of the above


def test_saved_terms_cuda_fp32() -> None:
    m = training_memory(CFG, micro_batch_size=B, seq_len=S, precision="32-true")
    saved = m.saved_breakdown
    assert sum(BLOCK_CUDA.values()) == BLOCK_CUDA_BYTES
    for name, per_block in BLOCK_CUDA.items():
        assert saved[name] == 2 * per_block, name  # L = 2 blocks
    assert saved["token_ids"] == 512  # int64 ids, b s x 8
    assert "position_ids" not in saved  # RoPE: no position table lookup
    assert saved["rope_tables"] == 8_192  # cos and sin, 2 x block_size x h x 4 = 2 x 64 x 16 x 4
    assert saved["final_norm_input"] == 16_384
    assert saved["final_norm_stats"] == 256
    assert saved["lm_head_input"] == 16_384  # T d e
    assert saved["log_softmax"] == 65_536  # T V x 4 = 64 x 256 x 4
    assert saved["targets"] == 516  # int64 targets T x 8 + the fp32 total_weight scalar
    # 2 x 337408 + 512 + 8192 + 16640 + 16384 + 65536 + 516
    assert m.saved_for_backward == 782_596


def test_model_states_and_peak_cuda_fp32() -> None:
    m = training_memory(CFG, micro_batch_size=B, seq_len=S, precision="32-true")
    assert m.weights == 525_568  # 131392 x 4 bytes
    assert m.gradients == 525_568  # fp32 gradients
    # AdamW: two fp32 moments per parameter + a 4-byte step per parameter tensor; tensors:
    # wte, 2 x (norm1, qkv, o, norm2, gate, up, down), final norm, head = 17
    assert m.optimizer == 1_051_204  # 2 x 131392 x 4 + 17 x 4
    assert m.autocast_weight_copies == 0  # no autocast
    # The worst moment is the start of backward: saved tensors + the log-softmax's gradient and
    # the logits' gradient (2 T V x 4 = 131072) + the held logits (T V x 4 = 65536).
    assert m.peak_moment == "backward_start"
    assert m.transient == 196_608  # 131072 + 65536
    assert m.logits == 66_052  # log_softmax + targets
    # 2 x 525568 + 1051204 + 782596 + 196608
    assert m.tensor_peak == 3_081_544
    # + the CUDA context (512 MiB) + 5 % allocator slack, ceil(0.05 x 3081544) = 154078
    assert m.overhead == 536_870_912 + 154_078
    assert m.total == 3_081_544 + 536_870_912 + 154_078


def test_saved_terms_under_autocast() -> None:
    # bf16-mixed: matmul inputs/outputs in bf16 (e = 2), the residual stream fp32 (r = 4)
    m = training_memory(CFG, micro_batch_size=B, seq_len=S, precision="bf16-mixed")
    saved = m.saved_breakdown
    assert saved["norm1_input"] == 2 * 16_384  # T d r, fp32 residual
    assert saved["qkv"] == 2 * 16_384  # T (a + 2k) h e = 64 x 128 x 2
    # the gate and the up projection each cast the norm output: 2 x T d e = 2 x 64 x 64 x 2
    assert saved["mlp_input"] == 2 * 16_384
    assert saved["mlp_activations"] == 2 * 98_304  # 4 T f e = 4 x 64 x 192 x 2
    assert saved["log_softmax"] == 65_536  # the loss runs in fp32
    # bf16 copies of every matmul weight: (2 x 49152 + 16384) x 2 bytes
    assert m.autocast_weight_copies == 229_376


def test_saved_terms_cpu_rmsnorm_is_composite() -> None:
    # On CPU, torch 2.13's F.rms_norm saves its input upcast to fp32, the fp32 rstd and the
    # fp32 normalised input: one extra T d x 4 = 16384 per norm; 2 L + 1 = 5 norms.
    cpu = training_memory(CFG, micro_batch_size=B, seq_len=S, precision="32-true",
                          device="cpu", optimizer_impl="fused", hold_logits=False)
    assert cpu.saved_breakdown["norm1_normalized"] == 2 * 16_384
    assert cpu.saved_breakdown["final_norm_normalized"] == 16_384
    assert cpu.saved_for_backward == 864_516  # 782596 + 5 x 16384
    assert cpu.overhead == 0  # no CUDA context on CPU


@pytest.mark.torch
def test_hand_values_match_the_torch_reference_model() -> None:
    pytest.importorskip("torch", reason='needs torch: pip install "scaleplan[torch]"')
    from scaleplan.reference.measure import measure

    m = measure(CFG, micro_batch_size=B, seq_len=S, precision="32-true", optimizer="fused")
    assert m.params == TOTAL
    assert m.flops_forward == FORWARD  # FlopCounterMode does not halve causal attention
    assert m.flops == 3 * FORWARD
    assert m.saved_for_backward == 864_516  # CPU kernels, as derived above

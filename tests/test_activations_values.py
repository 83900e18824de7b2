"""Saved-tensor terms by hand where the CPU-measured golden grid cannot reach: CUDA kernel
semantics, selective checkpointing, and the autocast weight copies' arguments.

GPT-2-style tiny model: L = 2, d = 64, a = 4 heads of h = 16, f = 256, V = 256, LayerNorm with
bias, learned positions, tied head. b = 2, s = 32, so T = 64 tokens.
"""

from __future__ import annotations

from scaleplan.memory.activations import (
    autocast_weight_copy_bytes,
    block_saved_terms,
    model_saved_terms,
)
from scaleplan.model.config import GPTConfig

GPT = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=256)
LLAMA = GPTConfig(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, mlp="swiglu", mlp_hidden=192,
                  norm="rmsnorm", position="rope", bias=False, tie_embeddings=False,
                  vocab_size=256, block_size=64)


def block(cfg: GPTConfig = GPT, **kw: object) -> dict[str, int]:
    options: dict[str, object] = {"precision": "32-true", "attention": "flash",
                                  "checkpointing": "none", "device": "cuda", "dropout": False,
                                  **kw}
    return block_saved_terms(cfg, 2, 32, **options)  # type: ignore[arg-type]


def test_cuda_layernorm_statistics_are_fp32_even_for_bf16_inputs() -> None:
    # CUDA's native_layer_norm keeps mean and rstd in fp32 (its accumulation type): 2 T x 4;
    # the input is saved in bf16, T d x 2
    t = block(precision="bf16-true")
    assert t["norm1_stats"] == 2 * 64 * 4
    assert t["norm1_input"] == 64 * 64 * 2
    # on CPU with bf16 inputs (no autocast) the statistics are bf16: 2 T x 2
    assert block(precision="bf16-true", device="cpu")["norm1_stats"] == 2 * 64 * 2
    # under autocast layer_norm runs in fp32 on either device: 2 T x 4
    assert block(precision="bf16-mixed", device="cpu")["norm1_stats"] == 2 * 64 * 4


def test_cuda_rmsnorm_saves_input_and_rstd_only() -> None:
    # the fused CUDA kernel: input (T d r, r = 4 fp32 residual under autocast) and T fp32 rstd
    t = block(LLAMA, precision="bf16-mixed")
    assert (t["norm1_input"], t["norm1_stats"]) == (64 * 64 * 4, 64 * 4)
    assert "norm1_normalized" not in t


def test_cuda_eager_attention_under_autocast_with_dropout() -> None:
    # eager attention on CUDA under bf16 autocast: q, k, v copies 3 T a h x 2 = 3 x 64 x 64 x 2;
    # the softmax output b a s^2 in fp32 (autocast runs softmax in fp32) = 2 x 4 x 32 x 32 x 4;
    # dropout: a bool mask b a s^2 x 1 and the dropped probabilities b a s^2 x 2
    t = block(precision="bf16-mixed", attention="eager", dropout=True)
    assert t["q_k_v_copies"] == 24_576
    assert t["attn_scores"] == 32_768
    assert t["attn_dropout_mask"] == 8192
    assert t["attn_dropped"] == 16_384
    assert t["resid_dropout_masks"] == 2 * 64 * 64 * 1  # two bool T d masks
    # without autocast (bf16 weights) the scores stay bf16: 2 x 4 x 32 x 32 x 2
    assert block(precision="bf16-true", attention="eager")["attn_scores"] == 16_384


def test_selective_checkpointing_drops_the_eager_attention_core() -> None:
    # Korthikanti et al. 2022, Sec. 4.2: scores, softmax and dropout are recomputed, so neither
    # they nor the causal mask are saved; q/k/v's projection output and the MLP still are
    sel = block(attention="eager", checkpointing="selective", dropout=True)
    for gone in ("q_k_v_copies", "attn_scores", "attn_dropout_mask", "attn_dropped"):
        assert gone not in sel
    assert sel["attn_out"] == 64 * 64 * 4
    assert sel["mlp_activations"] == 2 * 64 * 256 * 4
    model = {"precision": "32-true", "attention": "eager", "device": "cuda"}
    assert model_saved_terms(GPT, 2, 32, checkpointing="selective", **model) == {}  # type: ignore[arg-type]
    assert model_saved_terms(GPT, 2, 32, checkpointing="none", **model) == {  # type: ignore[arg-type]
        "causal_mask": 32 * 32}  # one s x s bool mask shared by every block


def test_full_checkpointing_keeps_only_the_block_input() -> None:
    # the residual stream entering the block: T d r, fp32 under autocast
    assert block(precision="bf16-mixed", checkpointing="full") == {"block_input": 64 * 64 * 4}
    # RoPE's tables are not kept either (recomputed with the block)
    assert model_saved_terms(LLAMA, 2, 32, precision="32-true", attention="flash",
                             checkpointing="full", device="cuda") == {}


def test_rope_tables_follow_the_parameter_dtype() -> None:
    # cos and sin, block_size x head_dim each: 2 x 64 x 16 x (2 for bf16 parameters, else 4)
    kw = {"attention": "flash", "checkpointing": "none", "device": "cuda"}
    assert model_saved_terms(LLAMA, 2, 32, precision="bf16-true", **kw) == {  # type: ignore[arg-type]
        "rope_tables": 4096}
    assert model_saved_terms(LLAMA, 2, 32, precision="bf16-mixed", **kw) == {  # type: ignore[arg-type]
        "rope_tables": 8192}


def test_autocast_weight_copies_by_layers_and_head() -> None:
    # bf16 copies (2 bytes) of every matmul weight: per block 12,288 attention + 36,864 SwiGLU
    # = 49,152; the output head 64 x 256 = 16,384
    assert autocast_weight_copy_bytes(LLAMA, "bf16-mixed") == (2 * 49_152 + 16_384) * 2
    assert autocast_weight_copy_bytes(LLAMA, "16-mixed", layers=1, head=False) == 49_152 * 2
    assert autocast_weight_copy_bytes(LLAMA, "bf16-mixed", layers=0) == 16_384 * 2
    assert autocast_weight_copy_bytes(LLAMA, "bf16-mixed", layers=0, head=False) == 0
    assert autocast_weight_copy_bytes(LLAMA, "bf16-true") == 0  # no autocast, no copies
    # GELU: 4 d^2 attention + 2 d f MLP = 16,384 + 32,768 per block; tied head cast all the same
    assert autocast_weight_copy_bytes(GPT, "bf16-mixed") == (2 * 49_152 + 16_384) * 2

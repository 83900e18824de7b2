"""Published figures against scaleplan.inference (torch-free): llama.cpp's "KV self size" lines,
vLLM's start-up profile, DeepSeek-V2's MLA table. Each figure is quoted with its source and
setup; docs/validation/inference.md tabulates them."""

from __future__ import annotations

import pytest

from scaleplan import GPTConfig, from_hf, inference_memory
from scaleplan.inference.kv_cache import kv_cache_bytes, kv_cache_bytes_per_token
from scaleplan.memory.quantized import quantized_weight_bytes

MiB, GiB = 2**20, 2**30
# LLaMA 1 (ggml era): MHA, 4,096 x 32 layers (7B), 6,656 x 60 layers (30B), head_dim 128
LLAMA_7B = GPTConfig(n_layer=32, n_head=32, n_embd=4096, mlp="swiglu", norm="rmsnorm",
                     position="rope", bias=False, tie_embeddings=False, vocab_size=32000,
                     block_size=2048, mlp_hidden=11008)
LLAMA_30B = LLAMA_7B.replace(n_layer=60, n_head=52, n_embd=6656, mlp_hidden=17920)
LLAMA_31_8B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
               "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
               "vocab_size": 128256, "max_position_embeddings": 131072,
               "rope_theta": 500000.0, "tie_word_embeddings": False}


def test_llama_cpp_7b_memory_size_f32_and_f16() -> None:
    # ggml-org/llama.cpp PR #294: "memory_size = 512.00 MB -> memory_size = 256.00 MB
    # (ctx512 7B q4_0)" when the K/V memory switches from f32 to f16 (llama.cpp's MB are MiB)
    assert kv_cache_bytes(LLAMA_7B, context_len=512, dtype="fp32") == 512 * MiB
    assert kv_cache_bytes(LLAMA_7B, context_len=512, dtype="fp16") == 256 * MiB


def test_llama_cpp_30b_kv_self_size_f32() -> None:
    # abetlen/llama-cpp-python issue #66: LLaMA 30B (n_embd 6656, n_head 52, n_layer 60),
    # n_ctx 512, the binding's f32 cache: "kv self size  = 1560.00 MB"
    assert kv_cache_bytes(LLAMA_30B, context_len=512, dtype="fp32") == 1560 * MiB


def test_llama_cpp_deepseek_v3_expanded_kv() -> None:
    # ggml-org/llama.cpp PR #11397 (a DeepSeek-V3-0324 run log, before llama.cpp cached MLA's
    # latent): n_ctx 4096, f16, "n_embd_k_gqa = 24576, n_embd_v_gqa = 16384" on 61 layers,
    # "KV self size = 19520.00 MiB, K (f16): 11712.00 MiB, V (f16): 7808.00 MiB"
    v3 = GPTConfig.preset("deepseek-v3")
    assert kv_cache_bytes(v3, context_len=4096, dtype="fp16", mla_cache="expanded") == \
        19520 * MiB
    assert 11712 * MiB == 61 * 4096 * 128 * 192 * 2  # the keys: 128 heads x 192
    # the latent vLLM, SGLang and transformers 5.25 cache instead: 28 times smaller
    assert kv_cache_bytes(v3, context_len=4096, dtype="fp16") == 61 * 4096 * 576 * 2


def test_vllm_llama_31_8b_weights_on_rtx_3090() -> None:
    # vllm-project/vllm issue #10517 (RTX 3090, meta-llama/Llama-3.1-8B-Instruct, bf16):
    # "Loading model weights took 14.9888 GB" (vLLM's GB are GiB). Ours: 2 bytes x 8,030,261,248;
    # vLLM also holds the rotary cos/sin cache, 131,072 positions x 128 x 2 bytes (32 MiB).
    cfg = from_hf(LLAMA_31_8B)
    weights = quantized_weight_bytes(cfg, "bf16").total
    assert weights == 2 * 8_030_261_248
    assert round((weights + 131072 * 128 * 2) / GiB, 4) == 14.9888


@pytest.mark.parametrize(("blocks", "kv_gib"), [(1952, 3.81), (1478, 2.89)])
def test_vllm_blocks_hold_131072_bytes_per_token(blocks: int, kv_gib: float) -> None:
    # the same issue: "kv_cache_size=3.81GiB ... # GPU blocks: 1952" (max_model_len 20,000) and
    # "kv_cache_size=2.89GiB ... # GPU blocks: 1478" (29,000): 16-token blocks of 131,072 bytes
    # per token, printed to two decimals
    per_token = kv_cache_bytes_per_token(from_hf(LLAMA_31_8B))
    assert round(blocks * 16 * per_token / GiB, 2) == kv_gib


@pytest.mark.parametrize(("tokens", "peak_gib"), [(20000, 17.06), (29000, 17.98)])
def test_vllm_profile_peak_activations_within_1_percent(tokens: int, peak_gib: float) -> None:
    # the same issue: vLLM profiles one forward of max_model_len tokens (chunked prefill off
    # below 32k) and logs "peak_torch_memory=17.06GiB" (20,000) and "17.98GiB" (29,000); less
    # the 14.9888 GiB of weights, that is the activation peak (2.07 and 2.99 GiB, printed to
    # 2 decimals, so +-0.005 GiB). Ours, 3 stream tensors + 3 x 14,336 per token: 2.06, 2.99.
    cfg = from_hf(LLAMA_31_8B)
    ours = inference_memory(cfg, batch_size=1, context_len=tokens, prefill_chunk=tokens)
    measured = (peak_gib - 14.9888) * GiB
    assert ours.activations == tokens * (3 * 4096 + 3 * 14336) * 2
    assert abs(ours.activations / measured - 1) < 0.01

"""KV cache bytes, hand-calculated per architecture (torch-free, so mutation testing sees them).

Each expected value is written out from the model's published shape: layers x heads x width x
bytes, with its source in the comment.
"""

from __future__ import annotations

import pytest

from scaleplan import GPTConfig, Parallelism, ScaleplanError, from_hf, kv_cache_bytes_per_token
from scaleplan.inference.kv_cache import (
    INT8_PARAM_BYTES,
    kv_cache_bytes,
    kv_heads_per_gpu,
    layer_token_bytes,
)

# meta-llama/Llama-3.1-8B config.json (the fields that shape the cache)
LLAMA_31_8B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
               "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
               "vocab_size": 128256, "max_position_embeddings": 131072,
               "rope_theta": 500000.0, "tie_word_embeddings": False}


def test_llama_31_8b_bf16_is_131072_bytes_per_token() -> None:
    # 2 (k and v) x 32 layers x 8 KV heads x 128 head_dim x 2 bytes = 131,072 (the bar)
    assert kv_cache_bytes_per_token(from_hf(LLAMA_31_8B)) == 2 * 32 * 8 * 128 * 2 == 131072
    assert kv_cache_bytes_per_token(GPTConfig.preset("llama-3-8b"), "bf16") == 131072


@pytest.mark.parametrize(("dtype", "per_element"), [("fp16", 2), ("fp32", 4), ("fp8", 1),
                                                    ("bfloat16", 2)])
def test_dtypes_scale_the_element(dtype: str, per_element: int) -> None:
    assert kv_cache_bytes_per_token(from_hf(LLAMA_31_8B), dtype) == 2 * 32 * 8 * 128 * per_element


def test_int8_keeps_a_scale_and_zero_per_head_and_token() -> None:
    # LMDeploy: 1 byte per element + (2-byte scale + 2-byte zero) per head, for k and for v
    assert INT8_PARAM_BYTES == 4
    assert kv_cache_bytes_per_token(from_hf(LLAMA_31_8B), "int8") == 32 * 8 * 2 * (128 + 4)
    assert kv_cache_bytes_per_token(from_hf(LLAMA_31_8B), "int8") == 67584


def test_gpt2_multi_head() -> None:
    # GPT-2 small: 12 layers x 12 heads x 64 x 2 (k, v) x 2 bytes = 36,864
    assert kv_cache_bytes_per_token(GPTConfig.preset("gpt2")) == 36864


def test_mla_latent_is_kv_lora_rank_plus_rope_dim() -> None:
    # DeepSeek-V3: 61 layers x (512 latent + 64 rotary key) x 2 bytes = 70,272
    assert kv_cache_bytes_per_token(GPTConfig.preset("deepseek-v3")) == 61 * 576 * 2 == 70272


def test_mla_latent_matches_deepseek_v2_paper() -> None:
    # DeepSeek-V2 (arXiv 2405.04434) Table 1: MLA caches (d_c + d_h^R) l = 4.5 d_h l elements
    # per token, d_h = 128, d_c = 4 d_h, d_h^R = d_h / 2; the model has 60 layers.
    v2 = GPTConfig.preset("deepseek-v3").replace(n_layer=60)
    assert kv_cache_bytes_per_token(v2, "bf16") == int(4.5 * 128 * 60) * 2


def test_mla_expanded_keys_and_values_per_head() -> None:
    # 61 layers x 128 heads x (192 key + 128 value) x 2 bytes
    expanded = kv_cache_bytes_per_token(GPTConfig.preset("deepseek-v3"), mla_cache="expanded")
    assert expanded == 61 * 128 * (192 + 128) * 2 == 4997120


def test_moe_changes_nothing() -> None:
    # Mixtral 8x7B: 32 layers x 8 KV heads x 128 x 2 x 2, like Mistral 7B; experts are MLPs
    mixtral = GPTConfig.preset("mixtral-8x7b")
    assert kv_cache_bytes_per_token(mixtral) == 131072
    assert kv_cache_bytes_per_token(mixtral.replace(moe=None)) == 131072


def test_gemma3_hybrid_caps_five_of_six_layers() -> None:
    # Gemma 3 4B: 34 layers, 29 of them local (window 1,024), 5 global; 4 KV heads x 256
    cfg = GPTConfig.preset("gemma-3-4b")
    per_layer = 2 * 4 * 256 * 2
    assert layer_token_bytes(cfg) == per_layer == 4096
    assert kv_cache_bytes(cfg, context_len=512) == 34 * 512 * per_layer
    assert kv_cache_bytes(cfg, context_len=32768, batch_size=2) == 2 * per_layer * (
        5 * 32768 + 29 * 1024)
    # transformers' dynamic cache keeps window - 1 between steps
    assert kv_cache_bytes(cfg, context_len=32768, sliding_cache="dynamic") == per_layer * (
        5 * 32768 + 29 * 1023)


def test_gemma2_alternates_local_and_global() -> None:
    # Gemma 2 9B: 42 layers, every other one local (window 4,096); 8 KV heads x 256
    cfg = GPTConfig.preset("gemma-2-9b")
    assert (cfg.n_layer, cfg.sliding_window_layers, cfg.sliding_window) == (42, 21, 4096)
    assert kv_cache_bytes(cfg, context_len=8192) == 2 * 8 * 256 * 2 * (21 * 8192 + 21 * 4096)


def test_mistral_window_on_every_layer() -> None:
    # Mistral 7B v0.1: window 4,096 on all 32 layers: the cache stops at 4,096 tokens
    cfg = GPTConfig.preset("mistral-7b").replace(sliding_window=4096)
    assert kv_cache_bytes(cfg, context_len=4000) == 4000 * 131072
    assert kv_cache_bytes(cfg, context_len=32768) == 4096 * 131072


def test_tensor_parallel_divides_then_replicates_kv_heads() -> None:
    cfg = from_hf(LLAMA_31_8B)
    assert kv_heads_per_gpu(cfg, 2) == 4
    assert kv_cache_bytes_per_token(cfg, parallelism=Parallelism(tensor=2)) == 131072 // 2
    # t = 16 > 8 KV heads: each GPU keeps one head (replicated), 32 x 1 x 2 x 128 x 2
    assert kv_cache_bytes_per_token(cfg, parallelism=Parallelism(tensor=16)) == 16384
    assert kv_cache_bytes_per_token(cfg, parallelism=Parallelism(tensor=8, data=2)) == 16384


def test_tensor_parallel_replicates_the_mla_latent() -> None:
    cfg = GPTConfig.preset("deepseek-v3")
    assert kv_cache_bytes_per_token(cfg, parallelism=Parallelism(tensor=8)) == 70272
    assert kv_cache_bytes_per_token(cfg, mla_cache="expanded",
                                    parallelism=Parallelism(tensor=8)) == 4997120 // 8


def test_batch_and_context_multiply() -> None:
    cfg = from_hf(LLAMA_31_8B)
    assert kv_cache_bytes(cfg, context_len=8192, batch_size=3) == 3 * 8192 * 131072


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"parallelism": Parallelism(tensor=2, pipeline=2)}, "pipeline=2 is not modelled"),
    ({"parallelism": Parallelism(data=2, zero=3)}, "zero=3 is not modelled"),
    ({"parallelism": Parallelism(tensor=3)}, "tensor=3 does not divide n_head=32"),
    ({"dtype": "int4"}, "int4"),
])
def test_refusals_name_the_option(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ScaleplanError, match=match):
        kv_cache_bytes_per_token(from_hf(LLAMA_31_8B), **kwargs)  # type: ignore[arg-type]


def test_kv_heads_that_do_not_split_evenly_are_refused() -> None:
    cfg = from_hf({**LLAMA_31_8B, "num_attention_heads": 24, "num_key_value_heads": 8,
                   "hidden_size": 3072})
    with pytest.raises(ScaleplanError, match="tensor=12 neither divides n_kv_head=8"):
        kv_cache_bytes_per_token(cfg, parallelism=Parallelism(tensor=12))


def test_int8_with_mla_is_refused_by_name() -> None:
    with pytest.raises(ScaleplanError, match="kv_cache='int8' with mla is not modelled"):
        kv_cache_bytes_per_token(GPTConfig.preset("deepseek-v3"), "int8")


def test_bad_context_is_named() -> None:
    with pytest.raises(ScaleplanError, match="context_len"):
        kv_cache_bytes(GPTConfig.preset("gpt2"), context_len=0)


def test_tensor_parallel_results_stay_ints() -> None:
    cfg = from_hf(LLAMA_31_8B)
    assert isinstance(kv_heads_per_gpu(cfg, 4), int)
    expanded = layer_token_bytes(GPTConfig.preset("deepseek-v3"), mla_cache="expanded",
                                 tensor=8)
    assert isinstance(expanded, int)
    assert expanded == 16 * 320 * 2


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"sliding_cache": "static"}, r"\bsliding_cache\b"),
    ({"mla_cache": "compressed"}, r"\bmla_cache\b"),
    ({"dtype": "bf8"}, r"\bkv_cache dtype\b"),
    ({"batch_size": 0}, "batch_size=0"),
])
def test_kv_cache_options_are_named(kwargs: dict[str, object], match: str) -> None:
    options = {"context_len": 10, **kwargs}
    with pytest.raises(ScaleplanError, match=match):
        kv_cache_bytes(GPTConfig.preset("deepseek-v3"), **options)  # type: ignore[arg-type]

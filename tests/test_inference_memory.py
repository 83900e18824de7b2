"""inference_memory, max_context and max_batch: every part hand-calculated (torch-free)."""

from __future__ import annotations

import math

import pytest

from scaleplan import (
    GPTConfig,
    InferenceMemory,
    MoE,
    Parallelism,
    ScaleplanError,
    inference_memory,
    max_batch,
    max_context,
)
from scaleplan.inference.prefill import prefill_activation_bytes
from scaleplan.memory.training import ALLOCATOR_SLACK_FRACTION, CUDA_CONTEXT_BYTES

LLAMA = GPTConfig.preset("llama-3-8b")  # 32 layers, d 4,096, 8 KV heads x 128, F 14,336
NO_OVERHEAD = {"cuda_context_bytes": 0, "allocator_slack_fraction": 0.0}


def test_llama_parts_by_hand() -> None:
    m = inference_memory(LLAMA, batch_size=4, context_len=8192)
    assert isinstance(m, InferenceMemory)
    assert m.weights == 2 * 8_030_261_248  # bf16: 2 bytes per parameter
    assert m.kv_cache == 4 * 8192 * 131072
    # prefill chunk 8,192 tokens, the MLP moment: 3 stream tensors (3 x 4,096) + 3 x 14,336, bf16
    assert m.prefill_chunk == 8192
    assert m.activations == 8192 * (3 * 4096 + 3 * 14336) * 2 == 905_969_664
    tensors = m.weights + m.kv_cache + m.activations
    assert m.overhead == CUDA_CONTEXT_BYTES + math.ceil(ALLOCATOR_SLACK_FRACTION * tensors)
    assert m.total == tensors + m.overhead


def test_attention_moment_under_the_mlp_for_llama() -> None:
    # attention: 3 x 4,096 + q (32 x 128) + k, v (2 x 8 x 128) + output (32 x 128)
    assert 8192 * (3 * 4096 + (2 * 32 + 2 * 8) * 128) * 2 < 905_969_664


def test_logits_moment_wins_for_a_big_decode_batch() -> None:
    # GPT-2, 256 requests decoding one token each: MLP 256 x (3 x 768 + 2 x 3,072) x 2 bytes;
    # logits: the final hidden states 256 x 768 x 2 + 256 rows x 50,257 x (2 + 4 fp32) bytes
    gpt2 = GPTConfig.preset("gpt2")
    m = inference_memory(gpt2, batch_size=256, context_len=1, **NO_OVERHEAD)
    assert m.prefill_chunk == 256
    assert m.activations == 256 * 768 * 2 + 256 * 50257 * 6 == 77_587_968
    assert m.activations > 256 * (3 * 768 + 2 * 3072) * 2


def test_logits_of_every_position_when_asked() -> None:
    gpt2 = GPTConfig.preset("gpt2")
    m = inference_memory(gpt2, batch_size=1, context_len=1024, logits="chunk")
    assert m.activations == 1024 * 768 * 2 + 1024 * 50257 * 6


def test_chunk_is_capped_by_the_tokens_and_none_means_all() -> None:
    small = inference_memory(LLAMA, batch_size=1, context_len=100)
    assert small.prefill_chunk == 100
    assert small.activations == 100 * (3 * 4096 + 3 * 14336) * 2
    whole = inference_memory(LLAMA, batch_size=2, context_len=8192, prefill_chunk=None)
    assert whole.prefill_chunk == 16384


def test_moe_routed_rows() -> None:
    # Mixtral: each token's 2 experts, gated 3 x 14,336 plus the d-wide output per routed row
    mixtral = GPTConfig.preset("mixtral-8x7b")
    assert prefill_activation_bytes(mixtral, chunk=1024, rows=1) == 1024 * (
        3 * 4096 + 2 * (3 * 14336 + 4096)) * 2


def test_mla_attention_moment() -> None:
    # DeepSeek-V3 attention with a small dense MLP: q 128 x 192, latent 512 + 64, expanded k, v
    # 128 x (192 + 128), output 128 x 128
    cfg = GPTConfig.preset("deepseek-v3").replace(moe=None, mlp_hidden=1024)
    width = 128 * 192 + 576 + 128 * 320 + 128 * 128
    assert prefill_activation_bytes(cfg, chunk=100, rows=1) == 100 * (3 * 7168 + width) * 2


def test_fp32_weights_keep_fp32_activations() -> None:
    m = inference_memory(LLAMA, batch_size=1, context_len=100, weights="fp32")
    assert m.activations == 100 * (3 * 4096 + 3 * 14336) * 4


def test_tensor_parallel_splits_heads_and_mlp() -> None:
    m = inference_memory(LLAMA, batch_size=1, context_len=8192,
                         parallelism=Parallelism(tensor=2))
    assert m.kv_cache == 8192 * 131072 // 2
    assert m.activations == 8192 * (3 * 4096 + 3 * 7168) * 2


def test_kv_cache_dtype_reaches_the_cache() -> None:
    m = inference_memory(LLAMA, batch_size=1, context_len=1000, kv_cache="fp8")
    assert m.kv_cache == 1000 * 65536


def test_max_batch_at_the_boundary() -> None:
    at_ten = inference_memory(LLAMA, batch_size=10, context_len=1024, **NO_OVERHEAD)
    budget = at_ten.total + 5  # an 11th request needs 128 MiB more
    assert max_batch(LLAMA, budget, context_len=1024, **NO_OVERHEAD) == 10
    assert max_batch(LLAMA, at_ten.total - 1, context_len=1024, **NO_OVERHEAD) == 9


def test_max_context_at_the_boundary() -> None:
    cfg = LLAMA.replace(block_size=131072)
    at = inference_memory(cfg, batch_size=2, context_len=20000, **NO_OVERHEAD)
    # one more token per request adds 2 x 131,072 bytes
    assert max_context(cfg, at.total + 2 * 131072 - 1, batch_size=2, **NO_OVERHEAD) == 20000


def test_max_context_stops_at_block_size() -> None:
    assert max_context(GPTConfig.preset("gpt2"), "H100 SXM") == 1024


def test_nothing_fits_is_zero() -> None:
    assert max_batch(LLAMA, "RTX 4070", context_len=1024) == 0
    assert max_context(LLAMA, 8 * 2**30) == 0


def test_headroom_keeps_memory_free() -> None:
    full = max_batch(LLAMA, "H100 SXM", context_len=8192)
    assert max_batch(LLAMA, "H100 SXM", context_len=8192, headroom=0.1) < full
    with pytest.raises(ScaleplanError, match=r"headroom=1\.0"):
        max_batch(LLAMA, "H100 SXM", context_len=8192, headroom=1.0)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"batch_size": 0, "context_len": 10}, "batch_size"),
    ({"batch_size": 1, "context_len": 10, "kv_cache": "int3"}, "int3"),
    ({"batch_size": 1, "context_len": 10, "logits": "all"}, "logits='all'"),
    ({"batch_size": 1, "context_len": 10, "parallelism": Parallelism(tensor=2, pipeline=2)},
     "pipeline=2 is not modelled"),
])
def test_bad_input_is_named(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ScaleplanError, match=match):
        inference_memory(LLAMA, **kwargs)  # type: ignore[arg-type]


def test_attention_moment_when_the_mlp_is_narrow() -> None:
    # Llama 3 8B with a 1,024-wide MLP: attention wins, 3 x 4,096 + (2 x 32 + 2 x 8) x 128
    cfg = LLAMA.replace(mlp_hidden=1024)
    got = prefill_activation_bytes(cfg, chunk=1000, rows=1)
    assert got == 1000 * (3 * 4096 + (2 * 32 + 2 * 8) * 128) * 2
    # t = 16 > 8 KV heads: 2 query heads and 1 (replicated) KV head per GPU
    got16 = prefill_activation_bytes(cfg, chunk=1000, rows=1, tensor=16)
    assert got16 == 1000 * (3 * 4096 + (2 * 2 + 2 * 1) * 128) * 2
    assert isinstance(got16, int)


def test_plain_mlp_moment_for_gpt2() -> None:
    # GPT-2 (GELU, not gated): 3 x 768 + the hidden layer and its activation, 2 x 3,072
    gpt2 = GPTConfig.preset("gpt2")
    got = prefill_activation_bytes(gpt2, chunk=1024, rows=1)
    assert got == 1024 * (3 * 768 + 2 * 3072) * 2
    assert isinstance(prefill_activation_bytes(gpt2, chunk=1024, rows=1, tensor=2), int)
    assert prefill_activation_bytes(gpt2, chunk=1024, rows=1, tensor=2) == 1024 * (
        3 * 768 + 2 * 1536) * 2


def test_moe_dense_and_shared_widths() -> None:
    mixtral = GPTConfig.preset("mixtral-8x7b")
    # one routed expert of 1,024; shared 4 x 1,024; one dense block of 14,336: dense wins
    dense = mixtral.replace(moe=MoE(n_experts=8, top_k=1, expert_hidden=1024,
                                    n_shared_experts=4, n_dense_layers=1))
    assert prefill_activation_bytes(dense, chunk=10, rows=1) == 10 * (
        3 * 4096 + 3 * 14336) * 2
    # no dense block, shared experts 16,384 wide: the shared MLP wins, split by t = 2
    shared = mixtral.replace(moe=MoE(n_experts=8, top_k=1, expert_hidden=1024,
                                     shared_expert_hidden=16384))
    assert prefill_activation_bytes(shared, chunk=10, rows=1) == 10 * (
        3 * 4096 + 3 * 16384) * 2
    assert prefill_activation_bytes(shared, chunk=10, rows=1, tensor=2) == 10 * (
        3 * 4096 + 3 * 8192) * 2
    # routed rows under t = 2: each expert's width halves, the d-wide output does not
    assert prefill_activation_bytes(mixtral, chunk=10, rows=1, tensor=2) == 10 * (
        3 * 4096 + 2 * (3 * 7168 + 4096)) * 2


def test_options_reach_the_parts() -> None:
    # group size reaches the weights, tensor parallelism the weights too
    g32 = inference_memory(LLAMA, batch_size=1, context_len=16, weights="int4", group_size=32)
    g128 = inference_memory(LLAMA, batch_size=1, context_len=16, weights="int4",
                            group_size=128)
    assert g32.weights > g128.weights
    tp = inference_memory(LLAMA, batch_size=1, context_len=16, parallelism=Parallelism(tensor=2))
    assert tp.weights < inference_memory(LLAMA, batch_size=1, context_len=16).weights
    # the MLA and sliding-window choices reach the cache
    v3 = GPTConfig.preset("deepseek-v3")
    assert inference_memory(v3, batch_size=1, context_len=10, weights="int4",
                            mla_cache="expanded").kv_cache == 10 * 4997120
    gemma = GPTConfig.preset("gemma-3-4b")
    dyn = inference_memory(gemma, batch_size=1, context_len=4096, sliding_cache="dynamic")
    assert dyn.kv_cache == 2 * 4 * 256 * 2 * (5 * 4096 + 29 * 1023)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"prefill_chunk": 0}, "prefill_chunk=0"),
    ({"allocator_slack_fraction": -0.5}, r"^allocator_slack_fraction=-0\.5"),
    ({"cuda_context_bytes": -1}, r"^cuda_context_bytes=-1"),
    ({"sliding_cache": "static"}, r"\bsliding_cache\b"),
    ({"mla_cache": "compressed"}, r"\bmla_cache\b"),
    ({"kv_cache": "bf8"}, r"\bkv_cache dtype\b"),
    ({"context_len": 0}, "context_len=0"),
])
def test_each_option_is_named_when_bad(kwargs: dict[str, object], match: str) -> None:
    options = {"batch_size": 1, "context_len": 10, **kwargs}
    with pytest.raises(ScaleplanError, match=match):
        inference_memory(LLAMA, **options)  # type: ignore[arg-type]

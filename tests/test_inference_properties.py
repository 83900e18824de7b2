"""Properties of the serving answers over random sizes (hypothesis): the parts add up, memory
grows with the batch and the context, the limits sit on the boundary, huge sizes fail by name."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scaleplan import (
    GPTConfig,
    ScaleplanError,
    inference_memory,
    inference_speed,
    kv_cache_bytes,
    max_batch,
)

PRESETS = ("gpt2", "llama-3-8b", "mixtral-8x7b", "deepseek-v3", "gemma-3-4b", "gemma-2-9b")
sizes = st.integers(min_value=1, max_value=2**20)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(PRESETS), sizes, sizes, st.sampled_from(["bf16", "fp8", "int8"]))
def test_parts_add_up_and_grow(name: str, b: int, t: int, kv: str) -> None:
    cfg = GPTConfig.preset(name)
    if kv == "int8" and cfg.mla is not None:
        kv = "fp8"
    m = inference_memory(cfg, batch_size=b, context_len=t, kv_cache=kv)
    assert m.total == m.weights + m.kv_cache + m.activations + m.overhead
    assert inference_memory(cfg, batch_size=b + 1, context_len=t, kv_cache=kv).total > m.total
    assert inference_memory(cfg, batch_size=b, context_len=t + 1, kv_cache=kv).total >= m.total
    per_request = kv_cache_bytes(cfg, context_len=t, dtype=kv)
    assert m.kv_cache == b * per_request


@settings(max_examples=20, deadline=None)
@given(st.sampled_from(PRESETS[:3]), st.integers(min_value=1, max_value=32768),
       st.integers(min_value=30, max_value=200))
def test_max_batch_is_on_the_boundary(name: str, t: int, gib: int) -> None:
    cfg = GPTConfig.preset(name).replace(block_size=65536)
    budget = gib * 2**30
    b = max_batch(cfg, budget, context_len=t)
    if b:
        assert inference_memory(cfg, batch_size=b, context_len=t).total <= budget
    assert inference_memory(cfg, batch_size=b + 1, context_len=t).total > budget


def test_speed_past_float_range_fails_by_name() -> None:
    with pytest.raises(ScaleplanError, match="inference_speed"):
        inference_speed(GPTConfig.preset("gpt2"), "H100 SXM", batch_size=10**300,
                        context_len=10**300)

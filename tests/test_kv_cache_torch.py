"""Live checks against transformers 5.25 on CPU: the KV cache ``generate`` leaves, and the
prefill peak of one no-grad forward (scaleplan.reference.kv_measure). The committed JSON these
replace in tests/test_kv_cache_golden.py is measured by the same functions."""

from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="scaleplan.reference needs torch: pip install torch")
pytest.importorskip("transformers")

from scaleplan import from_hf
from scaleplan.inference.kv_cache import kv_cache_bytes
from scaleplan.inference.prefill import prefill_activation_bytes
from scaleplan.reference.kv_measure import (
    CASES,
    measure_kv,
    measure_prefill,
    prefill_config,
)

pytestmark = pytest.mark.torch


@pytest.mark.parametrize("case", ["qwen2-gqa", "gemma3-five-in-six", "deepseek-v3-mla"])
def test_generate_cache_matches_kv_cache_bytes(case: str) -> None:
    m = measure_kv(case, batch_size=2, prompt_len=10, new_tokens=4, dtype="bf16")
    cfg = from_hf(CASES[case])
    assert m.context_len == 13
    assert m.tensor_bytes == kv_cache_bytes(cfg, context_len=13, batch_size=2,
                                            sliding_cache="dynamic")
    assert m.storage_bytes == kv_cache_bytes(cfg, context_len=13, batch_size=2)


def test_llama_prefill_peak_is_the_formula_plus_transformers_extras() -> None:
    m = measure_prefill("llama-gqa", chunk=128, batch_size=1)
    cfg = from_hf(prefill_config("llama-gqa"))
    # the embedding output (T·d), rotary cos/sin (2·T·head_dim), int64 position ids
    extras = 128 * cfg.n_embd * 2 + 2 * 128 * cfg.head_dim * 2 + 8 * 128
    assert prefill_activation_bytes(cfg, chunk=128, rows=1) + extras == m.peak_bytes

"""saved_for_backward against the torch reference harness (scaleplan.reference, issue 3)."""

from __future__ import annotations

import itertools

import pytest

pytest.importorskip("torch", reason='needs torch: pip install "scaleplan[torch]"')
reference = pytest.importorskip("scaleplan.reference.measure",
                                reason="the reference harness is not merged on this branch")

from scaleplan.config import GPTConfig  # noqa: E402
from scaleplan.memory import saved_for_backward_bytes  # noqa: E402

CONFIGS = {
    "gpt2-like": GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=200),
    "llama-like": GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, block_size=64,
                            vocab_size=200, bias=False, mlp="swiglu", norm="rmsnorm",
                            position="rope", tie_embeddings=False, mlp_hidden=160),
}
GRID = list(itertools.product(CONFIGS, ["32-true", "bf16-mixed", "16-mixed", "bf16-true",
                                        "bf16-fp32-master"],
                              ["flash", "eager"], [0.0, 0.1], [True, False]))
GRID = [g for g in GRID if g[3] > 0 or g[4]]  # without dropout both semantics save the same


@pytest.mark.torch
@pytest.mark.parametrize(("name", "precision", "attention", "dropout", "cuda_semantics"), GRID)
def test_saved_for_backward_within_2_percent_of_reference(
        name: str, precision: str, attention: str, dropout: float, cuda_semantics: bool) -> None:
    cfg = CONFIGS[name].replace(dropout=dropout)
    m = reference.measure(cfg, micro_batch_size=2, seq_len=48, precision=precision,
                          attention=attention, cuda_semantics=cuda_semantics)
    device = "cpu-cuda-semantics" if cuda_semantics else "cpu"
    predicted = sum(saved_for_backward_bytes(cfg, micro_batch_size=2, seq_len=48,
                                             precision=precision, attention=attention,
                                             device=device).values())
    assert predicted == pytest.approx(m.saved_for_backward, rel=0.02)

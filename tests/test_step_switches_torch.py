"""The memory-saving switches against live CPU measurements of the reference GPT
(`scaleplan.reference.switches`, each switch run the way torchtune 0.6.1 builds it), at a shape
the committed grid (tests/test_step_switches_replay.py) does not hold."""

from __future__ import annotations

import pytest

from scaleplan.memory.training import training_memory
from scaleplan.model.config import GPTConfig

pytestmark = pytest.mark.torch

CFG = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=96)
B, S = 3, 20  # 20 tokens: chunks of 3 (7 chunks, the last of 2)


def _both(precision: str, **switches: object) -> tuple[object, object]:
    pytest.importorskip("torch", reason='needs torch: pip install "scaleplan[torch]"')
    from scaleplan.reference.switches import measure_switches

    m = measure_switches(CFG, micro_batch_size=B, seq_len=S, precision=precision,
                         **switches)  # type: ignore[arg-type]
    p = training_memory(CFG, micro_batch_size=B, seq_len=S, precision=precision, device="cpu",
                        optimizer_impl="for-loop", hold_logits=False,
                        **switches)  # type: ignore[arg-type]
    return m, p


@pytest.mark.parametrize("precision", ["32-true", "bf16-true"])
def test_chunked_loss_with_uneven_chunks_saves_exactly(precision: str) -> None:
    m, p = _both(precision, loss="chunked", gradient_accumulation=False)
    assert p.saved_for_backward == m.saved_for_backward  # type: ignore[attr-defined]
    assert p.tensor_peak == pytest.approx(m.peak_bytes, rel=0.005)  # type: ignore[attr-defined]


def test_optimizer_in_backward_peak_exact() -> None:
    m, p = _both("32-true", optimizer_in_backward=True, gradient_accumulation=False)
    assert m.gradients_resident == 0  # type: ignore[attr-defined]
    assert abs(p.tensor_peak - m.peak_bytes) <= 4  # type: ignore[attr-defined]


def test_offload_leaves_the_kept_tensors_exactly() -> None:
    m, p = _both("bf16-mixed", activation_offload=True)
    kept = p.saved_for_backward - p.saved_breakdown["offload_in_flight"]  # type: ignore[attr-defined]
    assert kept == m.saved_on_device  # type: ignore[attr-defined]
    assert p.tensor_peak == pytest.approx(m.peak_bytes, rel=0.04)  # type: ignore[attr-defined]


def test_hf_chunked_loss_saves_exactly_at_uneven_chunks() -> None:
    pytest.importorskip("transformers", reason='needs transformers: pip install '
                        '"scaleplan[validate]"')
    from scaleplan.reference.hf_measure import GRID_SHAPES
    from scaleplan.reference.hf_switches import measure_hf_chunked

    cfg = GRID_SHAPES["llama"]
    m = measure_hf_chunked(cfg, "llama", micro_batch_size=1, seq_len=19, precision="bf16-mixed")
    p = training_memory(cfg, micro_batch_size=1, seq_len=19, precision="bf16-mixed",
                        device="cpu", implementation="hf", loss="chunked")
    assert p.saved_for_backward == m["saved_for_backward"]

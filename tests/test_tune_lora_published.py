"""torchtune's published LoRA / QLoRA rows (torchtune README at a9ea6d5b) in
scaleplan/data/published_lora.csv: each is predicted with ``implementation="torchtune"`` and the
options of its setup; an option `training_memory` refused with LoRA would be named and dropped,
never silently (none is now: ``activation_offload`` is modelled,
`scaleplan.memory.tune_lora_terms.tune_lora_offload`)."""

from __future__ import annotations

from benchmarks.published_lora import TUNE_OPTIONS, WITHIN, load_rows, tune_predict

ROWS = [r for r in load_rows() if r["project"] == "torchtune"]


def test_five_torchtune_rows_with_their_options() -> None:
    assert len(ROWS) == 5 and {r["id"] for r in ROWS} == set(TUNE_OPTIONS)
    assert all(r["figure_kind"] == "active" and r["precision"] == "bf16-true" for r in ROWS)


def test_refused_options_are_named_and_the_rest_applied() -> None:
    for row in ROWS:
        m, dropped = tune_predict(row)
        # every option of the rows is modelled: the 3B rows run with activation offloading
        assert dropped == []
        assert "logits" in m.saved_breakdown  # the compiled chunked loss's bf16 chunk logits


def test_rows_within_ten_percent() -> None:
    """Issue 19's bar on the rows whose whole setup training_memory takes (the A6000 LoRA row
    ran settings the README does not give; the 3B QLoRA row is +12%, see
    `test_3b_rows_peak_above_the_published_figures_by_their_floor`)."""
    for row_id in ("tune-8b-lora-1x4090", "tune-8b-qlora-1x4090", "tune-3b-lora-1xa100"):
        row = next(r for r in ROWS if r["id"] == row_id)
        m, dropped = tune_predict(row)
        assert not dropped
        assert abs(m.tensor_peak / int(row["figure_bytes"]) - 1) <= WITHIN, row_id


def test_8b_qlora_weights_by_hand() -> None:
    # Llama 3.1 8B, NF4 block linears (torchao: n/2 codes, n/64 int8 scalers, a bf16 factor per
    # 256 scalers, a bf16 mean, 16 bf16 levels), bf16 embedding, head and norms; rank-8 bf16
    # adapters on q, v, o and the MLP.
    row = next(r for r in ROWS if r["id"] == "tune-8b-qlora-1x4090")
    m, _ = tune_predict(row)

    def nf4(n: int) -> int:
        return n // 2 + n // 64 + n // 64 // 256 * 2 + 2 + 32

    d, f, kv, V = 4096, 14336, 1024, 128256
    linears = 2 * nf4(d * d) + 2 * nf4(kv * d) + 3 * nf4(f * d)
    adapters = 32 * 8 * ((d + d) + (d + kv) + (d + d) + 3 * (d + f))
    assert m.weights == 32 * linears + 2 * (2 * V * d + 65 * d) + 2 * adapters
    assert m.gradients == 2 * adapters and m.optimizer == 4 * adapters


def test_3b_rows_peak_above_the_published_figures_by_their_floor() -> None:
    """What a step of the README's setup holds at the start of backward whatever its
    activations: the base, the rank-64 adapters with their bf16 gradients and two AdamW states,
    and the compiled chunked loss's bf16 logits of 2 x 4096 tokens (T V 2 bytes: its backward
    needs every token's softmax). That floor alone is above both published figures, so no
    activation term explains the gap: the run held less than this setup implies."""
    d, f, kv, V, n, r = 3072, 8192, 1024, 128256, 28, 64
    adapters = n * r * ((d + d) + (d + kv) + (d + d) + 3 * (d + f))  # q, v, o, gate, up, down
    logits = 2 * 4096 * V * 2
    # Llama 3.2 3B in bf16: the tied table once, per layer q, k, v, o, the MLP and two norms,
    # the final norm: 3,212,749,824 parameters
    params = V * d + n * (d * d + 2 * kv * d + d * d + 3 * d * f + 2 * d) + d
    assert params == 3_212_749_824
    for row_id, base in (("tune-3b-lora-1xa100", 2 * params), ("tune-3b-qlora-1xa100", None)):
        row = next(r for r in ROWS if r["id"] == row_id)
        m, _ = tune_predict(row)
        assert m.gradients == 2 * adapters and m.optimizer == 4 * adapters
        if base is not None:
            assert m.weights == base + 2 * adapters
        floor = m.weights + 3 * 2 * adapters + logits
        assert floor > int(row["figure_bytes"])
        assert m.peak_moment == "backward_start"

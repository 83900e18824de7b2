"""torchtune's published LoRA / QLoRA rows (torchtune README at a9ea6d5b) in
scaleplan/data/published_lora.csv: each is predicted with ``implementation="torchtune"`` and the
options of its setup; the options `training_memory` refuses with LoRA (``compile``,
``activation_offload``) are named and dropped, never silently."""

from __future__ import annotations

from benchmarks.published_lora import TUNE_OPTIONS, load_rows, tune_predict

ROWS = [r for r in load_rows() if r["project"] == "torchtune"]


def test_five_torchtune_rows_with_their_options() -> None:
    assert len(ROWS) == 5 and {r["id"] for r in ROWS} == set(TUNE_OPTIONS)
    assert all(r["figure_kind"] == "active" and r["precision"] == "bf16-true" for r in ROWS)


def test_refused_options_are_named_and_the_rest_applied() -> None:
    for row in ROWS:
        m, dropped = tune_predict(row)
        assert "compile" in dropped, row["id"]  # compiled LoRA was not measured
        assert ("activation_offload" in dropped) == row["id"].startswith("tune-3b")
        assert "log_softmax" in m.saved_breakdown  # the chunked loss's eager log-softmax


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

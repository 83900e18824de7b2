"""The memory-saving switches against the committed CPU measurements, without torch.

docs/validation/step-switches.json holds one training step of the reference GPT per model x
precision x switch set, measured by ``python -m scaleplan.reference.switches`` (each switch run
the way torchtune 0.6.1 builds it). Replayed here: what autograd saves (exact), what activation
offloading leaves on the GPU (exact), and the peak of live bytes (exact without the chunked loss
and offloading; within the tolerance below with them, whose in-flight and head-backward
transients are bounded rather than derived tensor by tensor).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scaleplan.memory.training import training_memory
from scaleplan.model.config import GPTConfig

ROWS: list[dict[str, Any]] = json.loads(
    (Path(__file__).resolve().parents[1] / "docs/validation/step-switches.json").read_text())
# The model ignores a few scalars the harness sees (the loss, a 4-byte weight total).
EXACT_BYTES = 4
# Chunked loss: the chunked targets' copies (a few hundred bytes); offloading: the tensors in
# flight in a block's MLP backward, derived for its widest node pair (see
# docs/validation/step-switches.md for each row's error).
PEAK_TOLERANCE = {"chunked": 0.002, "offload": 0.04}


def _ids(row: dict[str, Any]) -> str:
    on = [k for k in ("loss", "optimizer_in_backward", "activation_offload")
          if row[k] not in ("standard", False)]
    return "-".join([row["model"], row["precision"], *on,
                     "" if row["gradient_accumulation"] else "one-micro-batch"]).strip("-")


def _predict(row: dict[str, Any], **changes: Any) -> Any:
    options = dict(loss=row["loss"], optimizer_in_backward=row["optimizer_in_backward"],
                   activation_offload=row["activation_offload"],
                   gradient_accumulation=row["gradient_accumulation"])
    options.update(changes)
    return training_memory(GPTConfig(**row["config"]), micro_batch_size=row["micro_batch_size"],
                           seq_len=row["seq_len"], precision=row["precision"], device="cpu",
                           optimizer_impl="for-loop", hold_logits=False, **options)


def test_the_grid_covers_every_switch() -> None:
    assert len(ROWS) == 42
    assert {r["loss"] for r in ROWS} == {"standard", "chunked"}
    assert any(r["optimizer_in_backward"] and r["activation_offload"] for r in ROWS)


@pytest.mark.parametrize("row", [r for r in ROWS if not r["activation_offload"]], ids=_ids)
def test_saved_for_backward_exact(row: dict[str, Any]) -> None:
    predicted = _predict(row)
    assert predicted.saved_for_backward == row["saved_for_backward"]


@pytest.mark.parametrize("row", [r for r in ROWS if r["activation_offload"]], ids=_ids)
def test_offload_leaves_exactly_the_kept_tensors_on_the_gpu(row: dict[str, Any]) -> None:
    p = _predict(row)
    kept = p.saved_for_backward - p.saved_breakdown["offload_in_flight"]
    assert kept == row["saved_on_device"]
    assert row["offloaded"] > 0


@pytest.mark.parametrize("row", ROWS, ids=_ids)
def test_peak(row: dict[str, Any]) -> None:
    p = _predict(row)
    if row["activation_offload"]:
        assert p.tensor_peak == pytest.approx(row["peak_bytes"], rel=PEAK_TOLERANCE["offload"])
    elif row["loss"] == "chunked":
        assert p.tensor_peak == pytest.approx(row["peak_bytes"], rel=PEAK_TOLERANCE["chunked"])
    else:
        assert abs(p.tensor_peak - row["peak_bytes"]) <= EXACT_BYTES


@pytest.mark.parametrize("row", [r for r in ROWS if not r["gradient_accumulation"]], ids=_ids)
def test_no_gradients_resident_when_the_step_starts(row: dict[str, Any]) -> None:
    assert row["gradients_resident"] == 0
    assert _predict(row).gradients <= row["resident"]


HF_ROWS: list[dict[str, Any]] = json.loads(
    (Path(__file__).resolve().parents[1] / "docs/validation/step-switches-hf.json").read_text())


@pytest.mark.parametrize("row", [r for r in HF_ROWS if not r["activation_offload"]],
                         ids=lambda r: f"{r['family']}-{r['precision']}")
def test_hf_chunked_loss_saved_exact(row: dict[str, Any]) -> None:
    # transformers' models (scaleplan.reference.hf_switches) with torchtune's chunked loss
    # around their base model and output embeddings, 2 x 44 tokens (8 chunks, the last of 2)
    shapes = _hf_shapes()
    p = training_memory(shapes[row["family"]], micro_batch_size=row["micro_batch_size"],
                        seq_len=row["seq_len"], precision=row["precision"], device="cpu",
                        implementation="hf", loss="chunked")
    assert p.saved_for_backward == row["saved_for_backward"]
    assert p.autocast_weight_copies >= 0


def _hf_shapes() -> dict[str, GPTConfig]:
    """hf_measure.GRID_SHAPES, without importing the torch harness."""
    d = dict(n_layer=2, n_embd=128, vocab_size=512, block_size=128)
    llama = dict(bias=False, mlp="swiglu", norm="rmsnorm", position="rope")
    return {
        "llama": GPTConfig(**d, n_head=4, n_kv_head=2, mlp_hidden=352, **llama,
                           tie_embeddings=False),
        "qwen2": GPTConfig(**d, n_head=4, n_kv_head=2, mlp_hidden=352, **llama, qkv_bias=True,
                           tie_embeddings=True),
        "mistral": GPTConfig(**d, n_head=8, n_kv_head=2, mlp_hidden=448, **llama,
                             tie_embeddings=False),
        "gemma": GPTConfig(**d, n_head=4, n_kv_head=1, head_dim=64, mlp_hidden=512,
                           bias=False, mlp="geglu", norm="rmsnorm", position="rope",
                           tie_embeddings=True),
        "gpt2": GPTConfig(**d, n_head=4),
        "gpt_neox": GPTConfig(**d, n_head=4, position="rope", rotary_fraction=0.25,
                              parallel="separate_norms", tie_embeddings=False),
    }


@pytest.mark.parametrize("row", [r for r in HF_ROWS if r["activation_offload"]],
                         ids=lambda r: f"{r['family']}-{r['precision']}")
def test_hf_offload_leaves_exactly_the_kept_tensors_on_the_gpu(row: dict[str, Any]) -> None:
    p = training_memory(_hf_shapes()[row["family"]], micro_batch_size=row["micro_batch_size"],
                        seq_len=row["seq_len"], precision=row["precision"], device="cpu",
                        implementation="hf", loss="chunked", activation_offload=True)
    kept = p.saved_for_backward - p.saved_breakdown["offload_in_flight"]
    assert kept == row["saved_on_device"]

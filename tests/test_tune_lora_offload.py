"""torchtune's LoRA / QLoRA step under ``enable_activation_offloading``
(`scaleplan.memory.tune_lora_terms.tune_lora_offload`) against the committed measurements of
torchtune 0.6.1's LoRA models on CPU, hand calculations, and (torch-marked) a live step.

tests/data/tune_lora_offload.json was written by ``python -m scaleplan.reference.tune_offload
--lora`` (`scaleplan.reference.tune_offload.lora_offload_grid`): Llama 3.2's small shape (2
layers, d 256, f 512, V 512, tied), q, v, o and the MLP adapted at rank 8, b 2 x s 48,
checkpointed as the recipe requires, bf16 and NF4 bases, standard and chunked loss, eager (the
offload hooks see the same tensors with compiled layers: checkpointing saves each layer's input
outside them, and the loss runs outside the context); each without offloading, under torchtune's own
``OffloadActivations`` (``use_streams=False``, the pack log) and under its stream rules
emulated (`scaleplan.reference.offload.Offloader`). Replayed here without torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import scaleplan as sp
from scaleplan.errors import ScaleplanError
from scaleplan.memory.step_switches import StepSwitches
from scaleplan.memory.tune_lora_terms import tune_lora_offload, tune_lora_stage_parts
from scaleplan.model.config import GPTConfig
from scaleplan.model.lora import LoRA

CFG = GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=256, mlp_hidden=512, vocab_size=512,
                block_size=128, norm="rmsnorm", mlp="swiglu", position="rope", bias=False,
                tie_embeddings=True)  # GRID_SHAPES["llama3_2"]
LORA = LoRA(8, alpha=16, targets=("q", "v", "o", "gate", "up", "down"))
ROWS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "data" / "tune_lora_offload.json").read_text())
T, D = 2 * 48, 256


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    return row["base_weights"], row["loss"]


PLAIN = {_key(r): r for r in ROWS if not r["offload"]}
OFFLOADED = [r for r in ROWS if r["offload"]]


def _id(row: dict[str, Any]) -> str:
    return f"{row['base_weights']}-{row['loss']}-{'streams' if row['streams'] else 'class'}"


def _parts(row: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The step's saved terms and moments without offloading, as the CPU run sees them."""
    parts = tune_lora_stage_parts(CFG, LORA, row["base_weights"], 2, 48, "adamw", "full", "cpu",
                                  "for-loop", False, StepSwitches(loss=row["loss"]))
    return parts[3], parts[7]


def test_the_grid_holds_every_case() -> None:
    # 2 bases x 2 losses x (plain, torchtune's class, emulated streams)
    assert len(ROWS) == 12 and len(PLAIN) == 4


@pytest.mark.parametrize("row", OFFLOADED, ids=_id)
def test_offloading_frees_exactly_what_the_model_says_before_backward(row: dict[str, Any]
                                                                     ) -> None:
    # from the model's output to backward() (phase "loss") the device holds less by the saved
    # bytes that left it, less the forward stash with streams
    saved, moments = _parts(row)
    on_gpu, _ = tune_lora_offload(CFG, 2, 48, saved=saved, moments=moments,
                                  streams=row["streams"])
    measured = PLAIN[_key(row)]["phase_peaks"]["loss"] - row["phase_peaks"]["loss"]
    assert sum(saved.values()) - sum(on_gpu.values()) == measured


@pytest.mark.parametrize("row", OFFLOADED, ids=_id)
def test_the_recompute_moment_moves_exactly_as_the_model_says(row: dict[str, Any]) -> None:
    # the backward peak (the last layer's recompute) with offloading less without it
    saved, moments = _parts(row)
    _, offloaded = tune_lora_offload(CFG, 2, 48, saved=saved, moments=moments,
                                     streams=row["streams"])
    measured = row["phase_peaks"]["backward"] - PLAIN[_key(row)]["phase_peaks"]["backward"]
    assert offloaded["recompute"] - moments["recompute"] == measured


def test_recompute_change_by_hand() -> None:
    # 2 layers, T 96, d 256: one layer input (96 x 256 x 2 = 49,152) leaves for the recompute
    # of the last layer; with streams the final norm's fp32 input (96 x 256 x 4 = 98,304)
    # waits beside it in the backward stash
    rows = {r["streams"]: r for r in OFFLOADED if _key(r) == ("bf16", "chunked")}
    plain = PLAIN[("bf16", "chunked")]["phase_peaks"]["backward"]
    assert rows[False]["phase_peaks"]["backward"] - plain == -T * D * 2
    assert rows[True]["phase_peaks"]["backward"] - plain == -T * D * 2 + T * D * 4


def test_what_torchtune_moved_is_the_layer_inputs_and_the_final_norm() -> None:
    # torchtune's own pack hook: each layer's bf16 input (T d 2), the final norm's fp32 input
    # (T d 4, packed twice: pow and the product) moved; its rstd (T 4 = 384 bytes, packed
    # twice) stays under min_offload_size, its frozen scale is a parameter (d 2); the frozen
    # embedding packed no token ids, and the scale's product kept no normalised input
    row = next(r for r in OFFLOADED if _key(r) == ("bf16", "chunked")
               and not r["streams"])
    assert row["packs"] == [[T * D * 2, True], [T * D * 2, True], [T * D * 4, True],
                            [T * 4, False], [T * 4, False], [T * D * 4, True], [D * 2, False]]
    assert row["brought_back"] == 2 * T * D * 2 + 2 * T * D * 4


@pytest.mark.parametrize("row", [r for r in OFFLOADED if r["streams"]], ids=_id)
def test_offloaded_step_peaks_replay_within_3_percent(row: dict[str, Any]) -> None:
    # training_memory models torchtune's default, use_streams=True (-1.8% bf16, +0.4% NF4: the
    # checkpointed step's own error without offloading, tests/test_tune_lora_memory.py)
    m = sp.training_memory(CFG, micro_batch_size=2, seq_len=48, precision="bf16-true",
                           device="cpu", optimizer_impl="for-loop", implementation="torchtune",
                           lora=LORA, base_weights=row["base_weights"], checkpointing="full",
                           loss=row["loss"], activation_offload=True)
    assert m.tensor_peak == pytest.approx(row["peak_bytes"], rel=0.03)


def test_offload_terms_by_hand() -> None:
    # 3 layers, T 12, d 64: layer inputs 12 x 64 x 2 = 1,536 each, the final norm's fp32
    # input 3,072 and rstd 48 (kept: under 1024 bytes), RoPE buffers and the loss side kept
    cfg = GPTConfig(n_layer=3, n_head=4, n_embd=64, vocab_size=128)
    saved = {"block_input": 3 * 1536, "final_norm_input": 3072, "final_norm_stats": 48,
             "rope_buffers": 500, "logits": 3072, "targets": 100, "logsumexp": 48}
    moments = {"forward_end": 50_000, "backward_start": 45_000, "head_backward": 40_000,
               "recompute": 30_000, "optimizer_step": 7}
    on_gpu, m = tune_lora_offload(cfg, 1, 12, saved=saved, moments=moments)
    # offloaded 4,608 + 3,072; the stash keeps the final norm's input and the last layer's
    assert on_gpu == {"final_norm_stats": 48, "rope_buffers": 500, "logits": 3072,
                      "targets": 100, "logsumexp": 48, "offload_in_flight": 3072 + 1536}
    off = 4608 + 3072 - 4608
    assert m == {"forward_end": 50_000 - off, "backward_start": 45_000 - off,
                 "head_backward": 40_000 - off, "recompute": 30_000 - 2 * 1536 + 12 * 64 * 4,
                 "optimizer_step": 7}
    on_gpu, m = tune_lora_offload(cfg, 1, 12, saved=saved, moments=moments, streams=False)
    assert on_gpu["offload_in_flight"] == 0
    assert (m["backward_start"], m["recompute"]) == (45_000 - 7680, 30_000 - 3072)


def test_offloading_needs_checkpointing_with_lora() -> None:
    with pytest.raises(ScaleplanError, match="checkpointing='full'"):
        sp.training_memory(CFG, micro_batch_size=2, seq_len=48, precision="bf16-true",
                           implementation="torchtune", lora=LORA, activation_offload=True)


def test_offloading_with_lora_still_refuses_other_switches() -> None:
    with pytest.raises(ScaleplanError, match="not modelled yet"):
        sp.training_memory(CFG, micro_batch_size=2, seq_len=48, precision="bf16-true",
                           implementation="torchtune", lora=LORA, checkpointing="full",
                           activation_offload=True, optimizer_in_backward=True,
                           gradient_accumulation=False)


def test_offloading_lowers_a_published_size_step_by_the_layer_inputs() -> None:
    # Llama 3.2 3B shape, 2 x 4096 tokens, compiled chunked loss: the peak stays at the start
    # of backward, 27 of the 28 bf16 layer inputs (8192 x 3072 x 2 each) lower
    cfg = GPTConfig(n_layer=28, n_head=24, n_kv_head=8, n_embd=3072, mlp_hidden=8192,
                    vocab_size=128256, block_size=4096, mlp="swiglu", norm="rmsnorm",
                    position="rope", bias=False, tie_embeddings=True)
    lora = LoRA(64, alpha=128, targets=("q", "v", "o", "gate", "up", "down"))
    kw: dict[str, Any] = dict(micro_batch_size=2, seq_len=4096, precision="bf16-true",
                              implementation="torchtune", lora=lora, checkpointing="full",
                              loss="chunked", compile=True)
    plain = sp.training_memory(cfg, **kw)
    off = sp.training_memory(cfg, **kw, activation_offload=True)
    assert off.peak_moment == plain.peak_moment == "backward_start"
    assert plain.tensor_peak - off.tensor_peak == 27 * 8192 * 3072 * 2


@pytest.mark.torch
def test_live_offloaded_lora_step_within_3_percent() -> None:
    pytest.importorskip("torchtune")
    from scaleplan.reference.tune_offload import measure_tune_lora_offload

    lora = LoRA(4, alpha=8, targets=("q", "k", "v", "o"))  # a case the grid does not hold
    row = measure_tune_lora_offload(CFG, "llama3_2", lora, micro_batch_size=1, seq_len=40,
                                    loss="standard", streams=True)
    m = sp.training_memory(CFG, micro_batch_size=1, seq_len=40, precision="bf16-true",
                           device="cpu", optimizer_impl="for-loop", implementation="torchtune",
                           lora=lora, base_weights="bf16", checkpointing="full",
                           activation_offload=True)
    assert m.tensor_peak == pytest.approx(row["peak_bytes"], rel=0.03)

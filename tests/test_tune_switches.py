"""The switches with ``implementation="torchtune"`` (issue 17): torchtune's chunked loss in
eager and compiled form, by hand calculation and by replaying the measurements of
``python -m scaleplan.reference.tune_measure --chunked`` (tests/data/tune_chunked_loss.json),
torch-free; the torch-marked test re-measures one case live with torchtune 0.6.1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scaleplan.errors import ScaleplanError
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.stage import stage_parts
from scaleplan.memory.step_switches import StepSwitches
from scaleplan.memory.training import training_memory
from scaleplan.memory.tune_switches import (
    tune_chunked_loss_terms,
    tune_in_backward_held_bytes,
    tune_in_backward_moments,
    with_chunked_loss,
)
from scaleplan.memory.tune_terms import tune_saved_terms
from scaleplan.model.config import GPTConfig

# tune_measure's GRID_SHAPES["llama3_2"], written out so the replay needs no torch import
_LLAMA: dict[str, Any] = {"bias": False, "mlp": "swiglu", "norm": "rmsnorm", "position": "rope"}
SHAPES = {
    "llama3_2": GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=256, mlp_hidden=512,
                          vocab_size=512, block_size=128, tie_embeddings=True, **_LLAMA),
    "qwen2": GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=256, mlp_hidden=352,
                       vocab_size=512, block_size=128, qkv_bias=True, tie_embeddings=True,
                       **_LLAMA),
}
CFG = SHAPES["llama3_2"]
B, S, V = 2, 48, 512
T = B * S
ROWS = json.loads(Path("tests/data/tune_chunked_loss.json").read_text())
TUNE = dict(micro_batch_size=B, seq_len=S, device="cpu", implementation="torchtune",
            precision="bf16-true", gradient_accumulation=False, hold_logits=False)


def _predicted(cfg: GPTConfig, row: dict[str, Any]) -> int:
    saved = tune_saved_terms(cfg, row["micro_batch_size"], row["seq_len"],
                             precision=row["precision"], checkpointing=row["checkpointing"],
                             device="cpu", buffers=False, family=row["family"])
    terms = with_chunked_loss(saved, cfg, row["micro_batch_size"], row["seq_len"],
                              row["precision"], implementation="torchtune", compiled=False)
    return int(sum(terms.values()))


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r['family']}-{r['precision']}-"
                                                    f"{r['checkpointing']}")
def test_eager_chunked_loss_replays_the_measured_saved_bytes_exactly(row: dict[str, Any]) -> None:
    assert _predicted(SHAPES[row["family"]], row) == row["measured"]


def test_eager_chunked_loss_by_hand() -> None:
    # 8 chunks of 6 tokens: every chunk's fp32 log-softmax (96 x 512 x 4), the int64 shifted
    # labels (96 x 8), one 4-byte nll_loss weight total per chunk and the int64 token count
    # the summed loss is divided by (8)
    terms = tune_chunked_loss_terms(CFG, B, S, precision="bf16-true", compiled=False)
    assert terms == {"log_softmax": 96 * 512 * 4, "targets": 96 * 8 + 8 * 4 + 8}


def test_compiled_chunked_loss_replaces_the_log_softmax_by_bf16_logits() -> None:
    saved = {"log_softmax": 1, "targets": 1, "lm_head_input": 5}
    terms = with_chunked_loss(saved, CFG, B, S, "bf16-true", implementation="torchtune",
                              compiled=True)
    # chunk logits in bf16 (96 x 512 x 2), labels plus the int64 count, fp32 max and lse
    assert terms == {"lm_head_input": 5, "logits": 96 * 512 * 2, "targets": 96 * 8 + 8,
                     "logsumexp": 2 * 96 * 4}


def test_chunked_loss_with_torchtune_saves_36_bytes_more_than_its_standard_loss() -> None:
    std = training_memory(CFG, **TUNE)  # type: ignore[arg-type]
    chunked = training_memory(CFG, loss="chunked", **TUNE)  # type: ignore[arg-type]
    # standard: one weight total (4); chunked: eight (32) and the token count (8)
    assert chunked.saved_for_backward - std.saved_for_backward == 32 + 8 - 4


def test_compiled_chunked_loss_moments_add_no_logits_on_top() -> None:
    sw = StepSwitches(loss="chunked", gradient_accumulation=False)
    _, G, _, saved, copies, all_copies, _, moments = stage_parts(
        CFG, B, S, "bf16-true", "adamw", "flash", "none", "cpu", Parallelism(), "for-loop",
        False, "only", compiled=True, implementation="torchtune", switches=sw)
    assert (copies, all_copies) == (0, 0)  # bf16 parameters, no autocast
    S_ = sum(saved.values())
    # moments are on top of all gradients (G), none alive yet without accumulation; forward
    # end: the saved chunk logits are all the logits there are
    assert moments["forward_end"] == S_ - G
    # backward start: one 6-token chunk's logits' gradient in bf16 (2 x 6 x 512 x 2)
    assert moments["backward_start"] == S_ + 2 * 6 * 512 * 2 - G


def test_optimizer_in_backward_with_torchtune_drops_the_optimizer_step() -> None:
    m = training_memory(CFG, loss="chunked", compile=True, optimizer_in_backward=True,
                        **TUNE)  # type: ignore[arg-type]
    assert m.peak_moment != "optimizer_step"


@pytest.mark.parametrize("options, pattern", [
    ({"activation_offload": True, "compile": True},
     r"activation_offload=True with implementation='torchtune' and compile=True is modelled "
     r"with checkpointing='full' .*, not yet with checkpointing='none'"),
])
def test_torchtune_switches_refused_by_name(options: dict[str, object], pattern: str) -> None:
    with pytest.raises(ScaleplanError, match=pattern):
        training_memory(CFG, **TUNE, **options)  # type: ignore[arg-type]


def test_compile_with_switches_still_refused_for_nanogpt() -> None:
    with pytest.raises(ScaleplanError, match=r"compile=True and implementation='nanogpt'"):
        training_memory(CFG, micro_batch_size=B, seq_len=S, loss="chunked", compile=True)


@pytest.mark.torch
def test_live_torchtune_chunked_loss_matches_exactly() -> None:
    pytest.importorskip("torchtune")
    from scaleplan.reference.tune_measure import measure_tune

    m = measure_tune(CFG, "llama3_2", micro_batch_size=B, seq_len=S, precision="bf16-true",
                     loss="chunked")
    row = {"family": "llama3_2", "micro_batch_size": B, "seq_len": S,
           "precision": "bf16-true", "checkpointing": "none"}
    assert m.saved_for_backward == _predicted(CFG, row)


PEAK_ROWS = json.loads(Path("tests/data/tune_switch_peaks.json").read_text())


def _peak_id(r: dict[str, Any]) -> str:
    return (f"{r['precision']}-{r['checkpointing']}-{r['loss']}"
            f"{'-in-bwd' if r['optimizer_in_backward'] else ''}")


@pytest.mark.parametrize("row", PEAK_ROWS, ids=_peak_id)
def test_torchtune_step_peaks_replay_within_4_percent(row: dict[str, Any]) -> None:
    # measured by python -m scaleplan.reference.tune_switches: torchtune 0.6.1's Llama 3.2
    # builder on CPU, the recipe's loss step, for-loop AdamW, one micro-batch per step
    m = training_memory(SHAPES[row["family"]], micro_batch_size=row["micro_batch_size"],
                        seq_len=row["seq_len"], precision=row["precision"], device="cpu",
                        optimizer_impl="for-loop", hold_logits=False,
                        implementation="torchtune", checkpointing=row["checkpointing"],
                        loss=row["loss"], optimizer_in_backward=row["optimizer_in_backward"],
                        gradient_accumulation=False)
    # with optimizer_in_backward the peak is the last layer's MLP backward (the tied
    # embedding's held gradient, the down projection's gradient and its AdamW temporaries):
    # within 0.5% in all 8 cases
    rel = 0.005 if row["optimizer_in_backward"] else 0.04
    assert m.tensor_peak == pytest.approx(row["peak_bytes"], rel=rel)


@pytest.mark.torch
def test_live_torchtune_chunked_step_peak_within_2_percent() -> None:
    pytest.importorskip("torchtune")
    from scaleplan.reference.tune_switches import measure_tune_switches

    cfg = SHAPES["qwen2"]  # a family and shape the committed peak grid does not hold
    m = measure_tune_switches(cfg, "qwen2", micro_batch_size=1, seq_len=40,
                              precision="bf16-true", loss="chunked")
    p = training_memory(cfg, micro_batch_size=1, seq_len=40, precision="bf16-true",
                        device="cpu", optimizer_impl="for-loop", hold_logits=False,
                        implementation="torchtune", loss="chunked", gradient_accumulation=False)
    assert p.tensor_peak == pytest.approx(m["peak_bytes"], rel=0.02)


def test_in_backward_held_bytes_by_hand() -> None:
    # Llama 3.2's small shape (tied): the output layer's share of the embedding's gradient
    # 512 x 256, the MLP down projection's gradient 256 x 512 and for-loop AdamW's sqrt(v) and
    # quotient for it, in fp32; fused AdamW makes no temporaries
    assert tune_in_backward_held_bytes(CFG, B, S, "32-true", optimizer="adamw",
                                       impl="for-loop", device="cpu") == (
        512 * 256 + 256 * 512 * 3) * 4
    assert tune_in_backward_held_bytes(CFG, B, S, "bf16-true", optimizer="adamw",
                                       impl="fused", device="cuda") == (
        512 * 256 + 256 * 512) * 2


def test_in_backward_mlp_gradients_take_over_at_more_tokens() -> None:
    # b 4 x s 128: the gradients of the MLP's product and of one factor, 2 x 512 x 512 x 2
    # bytes, outweigh the down projection's step (256 x 512 x 2 x 3); the tied gradient stays
    assert tune_in_backward_held_bytes(CFG, 4, 128, "bf16-true", optimizer="adamw",
                                       impl="for-loop", device="cpu") == (
        512 * 256 * 2 + 2 * 4 * 128 * 512 * 2)


def test_untied_in_backward_holds_no_embedding_gradient() -> None:
    untied = SHAPES["llama3_2"].replace(tie_embeddings=False)
    # foreach on CUDA (torch's default): one sqrt(v) for the one-tensor group
    assert tune_in_backward_held_bytes(untied, B, S, "bf16-true", optimizer="adamw",
                                       impl=None, device="cuda") == 256 * 512 * 2 * 2


def test_block_backward_moment_without_checkpointing() -> None:
    m = training_memory(CFG, micro_batch_size=B, seq_len=S, precision="32-true", device="cpu",
                        optimizer_impl="for-loop", hold_logits=False,
                        implementation="torchtune", optimizer_in_backward=True,
                        gradient_accumulation=False)
    assert m.peak_moment == "block_backward"


def test_in_backward_held_bytes_defaults_and_other_optimizers() -> None:
    # on CPU torch's AdamW runs its for-loop (sqrt(v) and the quotient: 2 x 256 x 512 x 4);
    # an optimizer updating in place makes no temporaries
    tied, w2 = 512 * 256 * 4, 256 * 512 * 4
    assert tune_in_backward_held_bytes(CFG, B, S, "32-true", optimizer="adamw", impl=None,
                                       device="cpu") == tied + 3 * w2
    assert tune_in_backward_held_bytes(CFG, B, S, "32-true", optimizer="sgd", impl=None,
                                       device="cpu") == tied + w2


def test_block_backward_moment_by_hand() -> None:
    # fp32, b 2 x s 3: the saved tensors less the head side (targets, the final norm, the
    # output layer's input), the residual stream's gradient 6 x 256 x 4, the held bytes, less
    # the gradients G the moments are counted on top of
    saved = {"mlp_activations": 5000, "targets": 64, "final_norm_input": 7, "lm_head_input": 9}
    m = tune_in_backward_moments(CFG, 2, 3, "32-true", saved=saved, moments={}, G=1000,
                                 held=300, largest=200)
    assert m == {"block_backward": 5000 + 6 * 256 * 4 + 300 - 1000}
    m = tune_in_backward_moments(CFG, 2, 3, "32-true", saved=saved, moments={"recompute": 50},
                                 G=1000, held=300, largest=200)
    assert m == {"recompute": 50 + 300 - 200}

"""Full checkpointing's backward with fresh gradients (none when the step starts), against
whole steps of transformers', torchtune's and litgpt's models, replayed torch-free.

tests/data/fresh_recompute_peaks.json holds 27 steps that ``python -m tests.impl_recompute_peaks
--fresh`` measured on CPU (torch 2.13, transformers 5.25, torchtune 0.6.1, litgpt 0.5.13): the
same models and checkpointing as tests/data/impl_recompute_peaks.json (transformers' Llama,
Qwen2, GPT-2 and GPT-NeoX in fp32 and bf16 autocast, Gemma in fp32, Llama and GPT-2 with
dropout 0.1; torchtune's Llama 3.2 and Qwen2 in fp32 and bf16; litgpt's TinyLlama in fp32,
bf16 and bf16 autocast, Pythia in fp32 and bf16 autocast; and transformers' Llama and
GPT-2 with four blocks, Llama and Qwen2 at 2048 tokens, where the last block's rebuild is the
worse), but after a warm-up step the
gradients are None (``zero_grad(set_to_none=True)``, no accumulating micro-batch), or, for
torchtune's Llama 3.2, each freed by its optimizer's step in backward (the recipe's
``optimizer_in_bwd``, for-loop AdamW per parameter). Each live storage at the backward's peak
is listed with what made it, each ``.grad`` by its parameter's name.

Above the resident bytes the backward's peak is `scaleplan.memory.stage_terms.
fresh_recompute_moment` to the byte (but for the loss and its gradient seed, and the storages
resident from the start, as in tests/test_impl_recompute_peaks_replay.py), in 23 of the 27
steps. `OFF` lists the others, measured minus the moment:

- torchtune's bf16 steps: the tiny shape puts the peak in the first block's ``mlp_norm``
  backward: torchtune's RMSNorm upcasts to fp32, and its backward's eight fp32 T d tensors
  (8 x 96 x 256 x 4 = 786432 bytes) beside the MLP's three weight gradients made by then
  (3 x 256 x 512 x 2 = 786432) outweigh the MLP's worst node (its T f tensors are only
  96 x 512 x 2 = 98304 bytes each); at real sizes (T f e far above d f) the MLP node is the
  larger. That node is not modelled.
- transformers' GPT-NeoX under bf16 autocast: a third bf16 cast of the (2, 48, 128) hidden
  states in the rebuilt block that `scaleplan.memory.hf_terms.hf_block_saved_terms` lacks
  (T d 2 = 24576); the moment with every gradient resident misses the same storage.
- transformers' Gemma: 4 bytes, as with every gradient resident (not attributed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.stage import stage_parts
from scaleplan.memory.step_switches import StepSwitches
from scaleplan.memory.training import training_memory
from tests.test_impl_recompute_peaks_replay import (
    CONFIGS,
    LOSS_AND_SEED,
    RESIDENT_TABLES,
    RESIDENT_TERMS,
)

DATA = json.loads((Path(__file__).parent / "data" / "fresh_recompute_peaks.json").read_text())
B, S = DATA["micro_batch_size"], DATA["seq_len"]
# measured minus the moment (see the module docstring), by (implementation, family, precision)
OFF = {("torchtune", "llama3_2", "bf16-true"): 214400,
       ("torchtune", "qwen2", "bf16-true"): 237952,
       ("hf", "gpt_neox", "bf16-mixed"): 24576, ("hf", "gemma", "32-true"): -4}


def _id(c: dict[str, Any]) -> str:
    return "-".join(str(c.get(k, "")) for k in ("implementation", "family", "precision",
                                                "gradients", "dropout", "shape"))


def _shape(case: dict[str, Any]) -> tuple[Any, int, int]:
    """(the config, micro-batch, sequence) of a case, at its own shape where it has one."""
    layers, b, s = case.get("shape", (2, B, S))
    cfg = CONFIGS[case["implementation"], case["family"]]
    return cfg.replace(dropout=case["dropout"], n_layer=layers), b, s


def _switches(case: dict[str, Any]) -> StepSwitches:
    return StepSwitches(optimizer_in_backward=case["gradients"] == "in-backward",
                        gradient_accumulation=False)


def _impl(case: dict[str, Any]) -> str:
    return "for-loop" if case["gradients"] == "in-backward" else "fused"


def test_the_grid_is_whole() -> None:
    cases = DATA["cases"]
    assert len(cases) == 27
    assert {c["gradients"] for c in cases} == {"fresh", "in-backward"}
    assert all(c["peak_phase"] == "backward" for c in cases)


@pytest.mark.parametrize("case", DATA["cases"], ids=_id)
def test_fresh_moment_is_the_measured_backward_peak(case: dict[str, Any]) -> None:
    cfg, b, s = _shape(case)
    _, G, _, saved, _, _, _, moments = stage_parts(
        cfg, b, s, case["precision"], "adamw", "flash", "full", "cpu", Parallelism(),
        _impl(case), False, "only", implementation=case["implementation"],
        switches=_switches(case))
    measured = case["backward_peak"] - case["resident"]
    terms = (*RESIDENT_TERMS, RESIDENT_TABLES.get(case["implementation"], ""))
    resident_in_moment = sum(saved.get(k, 0) for k in terms)
    bf16_loss = case["implementation"] == "litgpt" and case["precision"] != "32-true"
    loss_and_seed = LOSS_AND_SEED // 2 if bf16_loss else LOSS_AND_SEED
    off = OFF.get((case["implementation"], case["family"], case["precision"]), 0) \
        if case["gradients"] == "fresh" else 0
    # the moments count on top of every gradient, less those not alive (G)
    moment = moments["recompute"] + G
    assert moment - resident_in_moment + loss_and_seed + off == measured


@pytest.mark.parametrize("case", DATA["cases"], ids=_id)
def test_fresh_step_peak_within_a_thousandth(case: dict[str, Any]) -> None:
    # the whole step's peak (its backward's); resident bytes left out as in
    # tests/test_impl_recompute_peaks_replay.py (buffers, step counters, the batch's labels),
    # and the bytes `OFF` lists
    cfg, b, s = _shape(case)
    m = training_memory(cfg, micro_batch_size=b, seq_len=s, precision=case["precision"],
                        attention="flash", checkpointing="full", device="cpu",
                        optimizer_impl=_impl(case), hold_logits=False,
                        implementation=case["implementation"],
                        optimizer_in_backward=case["gradients"] == "in-backward",
                        gradient_accumulation=False)
    assert m.peak_moment == "recompute"
    expected = case["peak_bytes"] - (case["buffers"] if case["implementation"] == "hf" else 0)
    if case["gradients"] == "fresh":
        expected -= OFF.get((case["implementation"], case["family"], case["precision"]), 0)
    assert m.tensor_peak == pytest.approx(expected, rel=1e-3)


def test_torchtune_tied_backward_end_by_hand() -> None:
    # torchtune's Llama 3.2 small shape (tied, V = 512, d = 256), fp32, fresh gradients: the
    # peak is the embedding's backward, every other gradient made (G less the shared weight's
    # 512 x 256 x 4) and three V d tensors at once (the output layer's share waiting, the
    # embedding's dense gradient, their sum): G + 2 V d 4 above weights and states, plus
    # the loss and its seed (8 bytes)
    case = next(c for c in DATA["cases"] if c["implementation"] == "torchtune"
                and c["precision"] == "32-true" and c["gradients"] == "fresh")
    G = 5248000
    assert case["backward_peak"] - case["resident"] == G + 2 * 512 * 256 * 4 + 8
    _, G_model, *_ = stage_parts(CONFIGS["torchtune", "llama3_2"], B, S, "32-true", "adamw",
                                 "flash", "full", "cpu", Parallelism(), "fused", False, "only",
                                 implementation="torchtune")
    assert G_model == G
    three = [line.split()[1] for line in case["at_backward_peak"]
             if line.endswith("(512, 256) float32") and line.split()[1] != "grad"]
    assert sorted(three) == ["add.Tensor", "embedding_dense_backward", "mm"]


def test_hf_llama_fp32_by_hand() -> None:
    # transformers' Llama (untied; 2 blocks, T = 96 tokens, d = 128, f = 352, V = 512, 4 query
    # and 2 key-value heads of 32), fp32, fresh gradients: the peak is the first block's
    # rebuild (rebuilt last), at its gated MLP's product, every storage by hand:
    T, d, f, V = 96, 128, 352, 512
    # the gradients made by then: the output layer's (V d), the final norm's (d), the second
    # block's (q and o d x d, k and v d/2 x d, gate, up and down f x d, two norms d) and the
    # first block's down projection (f d)
    gradients = (V * d + d + (2 * d * d + 2 * (d // 2) * d + 3 * f * d + 2 * d) + f * d) * 4
    # the rebuilt MLP's gate and up outputs and SiLU's (3 T f), the product's gradient (the down
    # projection's input's, T f) and its two factors' (2 T f); the product itself is freed
    mlp = 6 * T * f * 4
    # T d each: the first block's input (the checkpoint's; the second block's is freed), the
    # residual stream's gradient, the rebuilt block's attention residual, and each of its two
    # RMSNorms' normalised input and output
    hidden = 7 * T * d * 4
    # the roped q (T d) and SDPA's output (T d), the roped k and v (T d / 2 each), SDPA's
    # log-sum-exp (b h s = 2 x 4 x 48, fp32)
    attention = (2 * T * d + 2 * T * d // 2) * 4 + 2 * 4 * 48 * 4
    # RoPE's cos and sin (1 x 48 x 32 each), the norms' rstd (T each), the position ids (int64)
    small = 2 * 48 * 32 * 4 + 2 * T * 4 + 48 * 8
    loss_and_seed = 4 + 4
    by_hand = gradients + mlp + hidden + attention + small + loss_and_seed
    assert gradients == 1181184
    case = next(c for c in DATA["cases"] if c["implementation"] == "hf" and "shape" not in c
                and c["family"] == "llama" and c["precision"] == "32-true"
                and c["dropout"] == 0.0)
    assert by_hand == case["backward_peak"] - case["resident"] == 2498696
    _, G, _, saved, _, _, _, moments = stage_parts(
        CONFIGS["hf", "llama"], B, S, "32-true", "adamw", "flash", "full", "cpu",
        Parallelism(), "fused", False, "only", implementation="hf",
        switches=StepSwitches(gradient_accumulation=False))
    assert moments["recompute"] + G - saved["token_ids"] + loss_and_seed == by_hand


def test_long_sequence_peaks_at_the_last_block() -> None:
    # 16 x 128 = 2048 tokens, d = 128: one block's input (T d 4 = 1048576) outweighs a block's
    # gradients (201984 x 4 = 807936), so the last block's rebuild (rebuilt first) is the
    # peak: the only gradients are the output layer's, the final norm's and its down
    # projection's, (512 x 128 + 128 + 352 x 128) x 4
    case = next(c for c in DATA["cases"] if c.get("shape") == [2, 16, 128])
    grads = sum(int(line.split()[0]) for line in case["at_backward_peak"]
                if line.split()[1] == "grad")
    assert grads == (512 * 128 + 128 + 352 * 128) * 4


@pytest.mark.torch
def test_live_mistral_bf16_fresh_step_matches_the_moment() -> None:
    pytest.importorskip("transformers")
    from tests.impl_recompute_peaks import measure_hf_step

    # a family the committed grid lacks (its fresh steps); untied, gated, 8 heads of 16
    case = measure_hf_step("mistral", "bf16-mixed", 0.0, "sdpa", "fresh")
    _, G, _, saved, _, _, _, moments = stage_parts(
        CONFIGS["hf", "mistral"], B, S, "bf16-mixed", "adamw", "flash", "full", "cpu",
        Parallelism(), "fused", False, "only", implementation="hf",
        switches=StepSwitches(gradient_accumulation=False))
    measured = case["backward_peak"] - case["resident"]
    assert moments["recompute"] + G - saved["token_ids"] + LOSS_AND_SEED == measured

"""Full checkpointing's backward with fresh gradients (none when the step starts), against
whole steps of transformers', torchtune's and litgpt's models, replayed torch-free.

tests/data/fresh_recompute_peaks.json holds 29 steps that ``python -m tests.impl_recompute_peaks
--fresh`` measured on CPU (torch 2.13, transformers 5.25, torchtune 0.6.1, litgpt 0.5.13): the
same models and checkpointing as tests/data/impl_recompute_peaks.json (transformers' Llama,
Qwen2, GPT-2 and GPT-NeoX in fp32 and bf16 autocast, Gemma in fp32, Llama and GPT-2 with
dropout 0.1; torchtune's Llama 3.2 and Qwen2 in fp32 and bf16; litgpt's TinyLlama in fp32,
bf16 and bf16 autocast, Pythia in fp32 and bf16 autocast; and transformers' Llama and
GPT-2 with four blocks, Llama and Qwen2 at 2048 tokens, where the last block's rebuild is the
worse, Llama and GPT-2 with eager attention), but after a warm-up step the
gradients are None (``zero_grad(set_to_none=True)``, no accumulating micro-batch), or, for
torchtune's Llama 3.2, each freed by its optimizer's step in backward (the recipe's
``optimizer_in_bwd``, for-loop AdamW per parameter). Each live storage at the backward's peak
is listed with what made it, each ``.grad`` by its parameter's name.

Above the resident bytes the backward's peak is `scaleplan.memory.stage_terms.
fresh_recompute_moment` to the byte (but for the loss and its gradient seed, and the storages
resident from the start, as in tests/test_impl_recompute_peaks_replay.py), in 25 of the 29
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
from scaleplan.memory.stage_terms import fresh_mlp_node_bytes, fresh_recompute_moment
from scaleplan.memory.step_switches import StepSwitches
from scaleplan.memory.training import training_memory
from scaleplan.model.config import GPTConfig
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


def _attention(case: dict[str, Any]) -> Any:
    return "eager" if case["attention"] == "eager" else "flash"


def _switches(case: dict[str, Any]) -> StepSwitches:
    return StepSwitches(optimizer_in_backward=case["gradients"] == "in-backward",
                        gradient_accumulation=False)


def _impl(case: dict[str, Any]) -> str:
    return "for-loop" if case["gradients"] == "in-backward" else "fused"


def test_the_grid_is_whole() -> None:
    cases = DATA["cases"]
    assert len(cases) == 29
    assert {c["gradients"] for c in cases} == {"fresh", "in-backward"}
    assert all(c["peak_phase"] == "backward" for c in cases)


@pytest.mark.parametrize("case", DATA["cases"], ids=_id)
def test_fresh_moment_is_the_measured_backward_peak(case: dict[str, Any]) -> None:
    cfg, b, s = _shape(case)
    _, G, _, saved, _, _, _, moments = stage_parts(
        cfg, b, s, case["precision"], "adamw", _attention(case), "full", "cpu", Parallelism(),
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
                        attention=_attention(case), checkpointing="full", device="cpu",
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


SMALL = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, mlp_hidden=32)


def test_fresh_mlp_node_by_hand() -> None:
    # d = 8, f = 32. Gated, fp32, T = 4: the residual gradient 4 x 8 x 4 = 128 and the
    # product's node 2 x 4 x 32 x 4 = 1024 (above the projection's 4 x 32 x 4 = 512); less a
    # residual dropout mask where given
    gated = SMALL.replace(mlp="swiglu", bias=False)
    assert fresh_mlp_node_bytes(gated, 1, 4, "32-true", "hf") == 128 + 1024
    assert fresh_mlp_node_bytes(gated, 1, 4, "32-true", "hf", mask=100) == 128 + 1024 - 100
    # GELU with biases under bf16 autocast, T = 64: the projection's node 64 x 32 x 2 (its
    # input's gradient) + 64 x 8 x 2 (the cast incoming gradient) + 32 x 8 x (2 - 4) + 8 x
    # (2 - 4) (16-bit weight and bias gradients where fp32 ones are counted) = 4592, above
    # the cast's 8 x (2 - 4); the residual gradient 64 x 8 x 4
    assert fresh_mlp_node_bytes(SMALL, 1, 64, "bf16-mixed", "litgpt") == 64 * 8 * 4 + 4592
    # bf16 parameters (no autocast): the gradients are made in their own dtype, T = 4:
    # 4 x 8 x 2 + 4 x 32 x 2
    assert fresh_mlp_node_bytes(SMALL, 1, 4, "bf16-true", "litgpt") == 64 + 256
    # transformers' GPT-2 (gelu_new's product), bf16 autocast, T = 96, d = 128, f = 512: the
    # product's node 2 x 96 x 512 x 2 less c_proj's freed weight copy 512 x 128 x 2 = 65536;
    # litgpt's GELU (one op) takes the cast's 128 x (2 - 4) instead
    gpt2 = CONFIGS["hf", "gpt2"]
    assert fresh_mlp_node_bytes(gpt2, 2, 48, "bf16-mixed", "hf") == 96 * 128 * 4 + 65536
    assert fresh_mlp_node_bytes(gpt2, 2, 48, "bf16-mixed", "litgpt") == 96 * 128 * 4 - 256


def test_fresh_backward_end_by_hand() -> None:
    # with a large G the embedding's backward is the worst: G, what the embedding keeps
    # (the token ids) and, untied, the residual gradient (T d 4 = 96 x 128 x 4 = 49152);
    # tied, the larger of a V d gradient beside it and two V d (V d 4 = 262144)
    G, saved = 10**12, {"token_ids": 768, "block_input": 98304, "targets": 772}
    args = (2, 48, "32-true", "flash", "cpu", Parallelism(), saved, 0, 0, 2, "hf")
    untied = fresh_recompute_moment(CONFIGS["hf", "llama"], *args, G=G, head_gradient=0,
                                    in_backward=False)
    assert untied == G + 49152 + 768
    tied = fresh_recompute_moment(CONFIGS["hf", "qwen2"], *args, G=G, head_gradient=0,
                                  in_backward=False)
    assert tied == G + 2 * 262144 + 768
    # at 2048 tokens the residual gradient (2048 x 128 x 4 = 1048576) beside one V d is more
    long = fresh_recompute_moment(CONFIGS["hf", "qwen2"], 16, 128, *args[2:], G=G,
                                  head_gradient=0, in_backward=False)
    assert long == G + 262144 + 1048576 + 768


def test_nanogpt_keeps_every_gradient_at_the_recompute_moment() -> None:
    # nanoGPT's fresh-gradient steps are not re-measured: its recompute moment keeps the
    # bound (every gradient), the same bytes as with every gradient resident
    cfg = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=200)
    args = (2, 48, "32-true", "adamw", "flash", "full", "cpu", Parallelism(), "fused", False,
            "only")
    fresh = stage_parts(cfg, *args, switches=StepSwitches(gradient_accumulation=False))
    resident = stage_parts(cfg, *args)
    assert fresh[-1]["recompute"] == resident[-1]["recompute"]


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

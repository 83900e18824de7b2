"""Whole compiled training steps against `training_memory(compile=True)`, replayed torch-free.

tests/data/compiled_step_peaks.json (written by ``python -m tests.compiled_step_peaks``,
torch 2.13 CPU inductor, transformers 5.25) holds, per step, the bytes resident when it
began and its peak above them, read from the CPU allocator's profiler events
(`scaleplan.reference.compiled_step`): scaleplan's reference GPT compiled as nanoGPT compiles
it (fp32 and bf16 autocast, dropout 0 and 0.1 with CUDA's bool masks, 2 x 24 and 8 x 64
tokens, nanoGPT's loop holding the logits; and modded-nanogpt's block, bf16 autocast, 8 x 64
tokens) and transformers' Llama and GPT-2 compiled whole, each with fresh gradients and with
every gradient resident, and the same steps eager.

The delta the model predicts is ``tensor_peak`` less what it counts as resident: weights,
optimizer states, the gradients under accumulation and the batch (the token ids and targets,
which the model counts among the saved tensors and the harness among the resident bytes).

What the replay shows (the numbers are on docs/validation/compiled-steps.md):

- the method: on eager steps the allocator's events and `LiveBytesTracker` agree to the byte;
  the eager model's moments match eager steps to the loss's 4-byte scalar wherever its
  backward-start moment is the peak;
- compiled steps at 8 x 64 tokens (activations several times the gradients, as in every real
  run, the seed case included): the eager moments with the compiled saved tensors hold, the
  model 0.3-0.7 % under; what it misses is in the saved tensors, not the moments: at these
  shapes the partitioner keeps the position embedding's output (s d x 4) and the first
  LayerNorm's mean (T x 4), 18432 bytes, which `compiled_terms` keeps only under
  checkpointing or RMSNorm;
- compiled steps at 2 x 24 tokens (gradients as large as the activations): the peak is late
  in the backward, where the compiled backward graph holds every gradient it has made until
  it returns (AOT autograd's backward returns them all at once, then AccumulateGrad adds them
  into ``.grad``), and its last kernels' buffers (read from inductor's generated code:
  `scaleplan.memory.compiled_end`): exact but for the loss and its seed for the GPT-2
  layouts, 4.4-4.8 % under for transformers' Llama (its last kernels not modelled); and since
  those gradients are new buffers even when ``.grad`` exists, a compiled step's peak above
  its start is the same with and without accumulation (eager accumulates in place).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.compiled_step_peaks import CONFIGS, PAGE, page, predicted_delta

DATA = json.loads((Path(__file__).parent / "data" / "compiled_step_peaks.json").read_text())
WHOLE_GRAPH = ("nanogpt", "hf")  # compiled whole: one forward and one backward graph
# the CPU generator's state each checkpointed layer keeps to replay its RNG
# (``torch.get_rng_state()``, made outside the dispatcher: the allocator sees it, the
# dispatch-level tracker of tests/data/fresh_recompute_peaks.json does not); CUDA's is 16 bytes
CPU_RNG_STATE = 5056
LOSS_AND_SEED = 4 + 4


def _id(c: dict[str, Any]) -> str:
    return "-".join(str(c.get(k)) for k in ("implementation", "family", "precision", "dropout",
                                            "micro_batch_size", "compile",
                                            "gradient_accumulation", "loss"))


def _cases(**match: Any) -> list[dict[str, Any]]:
    return [c for c in DATA["cases"] if all(c[k] == v for k, v in match.items())]


def test_the_grid_is_whole() -> None:
    # eager and compiled, both gradient modes: 8 nanoGPT, 4 transformers, 2 torchtune cases
    # and one modded-nanogpt-like
    assert len(DATA["cases"]) == 2 * 2 * (8 + 4 + 2 + 1)
    assert {c["family"] for c in DATA["cases"]} == set(CONFIGS)


def test_the_docs_page_shows_these_measurements() -> None:
    assert PAGE.read_text() == page(DATA)


@pytest.mark.parametrize("check", DATA["checks"], ids=lambda c: c["precision"])
def test_allocator_events_agree_with_the_live_bytes_tracker(check: dict[str, Any]) -> None:
    # the same eager step under both instruments at once; the tracker sees storages at the
    # dispatcher, the profiler every allocation: equal once kernel workspaces are set apart
    # (none reaches these peaks)
    assert check["profiler"] == check["tracker"]
    assert check["with_workspaces"] - check["tracker"] < 4096


@pytest.mark.parametrize("case", _cases(compile=False, implementation="nanogpt"), ids=_id)
def test_eager_steps_match_the_eager_moments(case: dict[str, Any]) -> None:
    delta, moment = predicted_delta(case)
    late = case["gradient_accumulation"] is False or case["dropout"] > 0
    if late and case["micro_batch_size"] == 2 and case["precision"] == "32-true":
        # fp32 at 48 tokens, with fresh gradients (or dropout's masks): the peak is later in
        # the backward, every later layer's new gradient made (no eager moment counts fresh
        # gradients there; eager's own replays, tests/test_fresh_recompute_peaks_replay.py,
        # cover checkpointed steps): 1.3-7.8 % under
        assert moment == "backward_start"
        assert 0 < case["peak"] - delta <= 0.08 * case["peak"]
        return
    # the loss's 4-byte scalar is all the model leaves out
    assert case["peak"] - delta == 4


def test_cpu_matmul_workspaces_are_set_apart() -> None:
    # bf16 autocast at 48 tokens: oneDNN's packed bf16 operands (alive only inside aten::mm)
    # would raise the eager peak by 28416 bytes; without them the model is exact
    case = _cases(compile=False, implementation="nanogpt", precision="bf16-mixed",
                  dropout=0.0, micro_batch_size=2, gradient_accumulation=True)[0]
    assert case["with_workspaces"] - case["peak"] == 28416
    assert case["peak"] - predicted_delta(case)[0] == 4


@pytest.mark.parametrize("case", _cases(compile=True, implementation="nanogpt",
                                        micro_batch_size=8), ids=_id)
def test_compiled_steps_at_scale_keep_the_eager_moments(case: dict[str, Any]) -> None:
    # 512 tokens: the backward-start moment (saved tensors + the logits' zero tangent and
    # gradient + the loss backward's per-row sums) is the peak, exact but for the loss and
    # its seed, with the partition's saves at 8 rows: the first block's input rebuilt from the
    # position embedding's output and ln_1's mean (scaleplan.memory.compiled_first_input).
    # fp32 with dropout peaks later, in the last block's MLP backward, the logits' gradient
    # still alive for the head's late weight gradient (the tied sum folds into it): not
    # modelled, 0.38 % under
    delta, moment = predicted_delta(case)
    assert moment == "backward_start"
    assert case["peak"] == max(case["phase_peaks"].values()) == case["phase_peaks"]["backward"]
    if case["precision"] == "32-true" and case["dropout"] > 0:
        # the GELU's T f 4 gradient made, beside the logits' held gradient T V 4
        assert "524288 ?" in case["at_peak"] and "655360 ?" in case["at_peak"]
        assert 0 < case["peak"] - delta <= 0.004 * case["peak"]
        return
    assert case["peak"] - delta == LOSS_AND_SEED


def test_the_modded_like_step_is_exact_compiled_and_eager() -> None:
    # modded-nanogpt's block (RMSNorm without a weight, per-head QK-norm, RoPE, ReLU, untied
    # head), bf16 autocast, 8 x 64 tokens: the backward-start moment with
    # scaleplan.memory.compiled_layout's terms is the peak, exact but for the loss (and, compiled,
    # its seed); the q/k norms' rstd (8, 4, 64, 1) fp32 and the ReLU's bool masks (8, 64, 256)
    # are among the saved tensors live at the peak
    for compile, off in ((True, LOSS_AND_SEED), (False, 4)):
        for case in _cases(family="modded-like", compile=compile):
            delta, moment = predicted_delta(case)
            assert moment == "backward_start"
            assert case["peak"] - delta == off
    case = _cases(family="modded-like", compile=True, gradient_accumulation=False)[0]
    shapes = [item.split(" ", 3)[3] for item in case["at_peak"] if " saved " in item]
    assert shapes.count("(8, 4, 64, 1) float32") == 2 * 2  # q and k, two blocks
    assert shapes.count("(8, 64, 256) bool") == 2


def test_the_first_blocks_input_is_rebuilt_at_eight_rows() -> None:
    # fp32, 8 x 64 tokens, d = 64: among the saved tensors live at the backward's start are
    # the position embedding's output (64, 64) fp32 = 16384 bytes and ln_1's mean
    # (8, 64, 1) fp32 = 2048 bytes besides its rstd
    case = _cases(compile=True, implementation="nanogpt", precision="32-true", dropout=0.0,
                  micro_batch_size=8, gradient_accumulation=False)[0]
    shapes = [item.split(" ", 3)[3] for item in case["at_peak"] if " saved " in item]
    assert shapes.count("(64, 64) float32") == 1
    assert shapes.count("(8, 64, 1) float32") == 2 + 4  # ln_1's mean and rstd, 4 more rstd


@pytest.mark.parametrize("case", [c for c in _cases(compile=True, micro_batch_size=2)
                                  if c["implementation"] in WHOLE_GRAPH], ids=_id)
def test_compiled_steps_of_few_tokens_peak_on_the_gradients_the_graph_holds(
        case: dict[str, Any]) -> None:
    # 48 tokens (nanoGPT) or 96 (transformers): the peak is in the backward, with what the
    # compiled backward graph holds of the gradients it made. Where the modelled backward
    # end is the worst moment (the GPT-2 layouts: every new gradient, the tied weight's
    # partial gradients, the held logits, and what the graph's last kernels hold,
    # scaleplan.memory.compiled_end) the model is exact but for the loss and the seed of its
    # gradient (8 bytes; nanoGPT's moment counts its targets' 4-byte divisor, which the
    # graph's first kernel frees). transformers' Llama (RMSNorm, rotary, untied: its last
    # kernels not modelled) peaks in its last block's backward, its gradients made: 4.4-4.9 %
    # under the backward start. Never over.
    delta, moment = predicted_delta(case)
    assert case["phase_peaks"]["backward"] == case["peak"]
    if moment == "backward_end":
        assert case["family"] in ("gpt2-like", "gpt2")  # LayerNorm, learned positions, tied
        divisor = 4 if case["implementation"] == "nanogpt" else 0
        assert case["peak"] - delta == LOSS_AND_SEED - divisor
    else:
        assert (case["family"], moment) == ("llama", "backward_start")
        assert 0.043 * case["peak"] < case["peak"] - delta < 0.049 * case["peak"]


def _named(case: dict[str, Any], prefix: str) -> int:
    return sum(int(item.split(" ", 1)[0]) for item in case["at_peak"]
               if item.split(" ", 1)[1].startswith(prefix))


def _unmatched(case: dict[str, Any], sizes: list[int]) -> list[int]:
    """The sizes that no allocation live at the peak (other than a gradient or the held
    logits) accounts for, each allocation taken once."""
    live = [int(item.split(" ", 1)[0]) for item in case["at_peak"]
            if not item.split(" ", 1)[1].startswith(("grad ", "held logits"))]
    missing = []
    for size in sizes:
        if size in live:
            live.remove(size)
        else:
            missing.append(size)
    return missing


@pytest.mark.parametrize("case", [
    c for c in _cases(compile=True, micro_batch_size=2, gradient_accumulation=False)
    if c["implementation"] in WHOLE_GRAPH and predicted_delta(c)[1] == "backward_end"],
    ids=_id)
def test_the_backward_end_terms_are_allocations_live_at_the_peak(case: dict[str, Any]) -> None:
    # each term of the moment is an allocation live at the measured peak (the profiler's
    # list, each taken once): the tied weight's partial gradients (V d 4, under autocast
    # V d 2 too), and what the last kernels hold (scaleplan.memory.compiled_end): under
    # autocast the last fused kernel's (the first block's q/k/v and norm gradients, its
    # 16-bit weight gradients, its norm's saved tensors, the position ids, the dropout mask);
    # in fp32 the tied head's late terms (the logits' gradient, the head's input) and, where
    # larger than the tied sum V d 4 (transformers' GPT-2 at 96 tokens), the last kernel's,
    # the sum not yet written (its partial beside the other gradients instead)
    from scaleplan.memory.compiled_end import (
        compiled_first_block_end_terms,
        compiled_tied_head_end_terms,
    )

    cfg = CONFIGS[case["family"]].replace(dropout=case["dropout"])
    b, s, p = case["micro_batch_size"], case["seq_len"], case["precision"]
    V, d = cfg.vocab_size, cfg.n_embd
    autocast = p == "bf16-mixed"
    first = compiled_first_block_end_terms(cfg, b, s, precision=p)  # type: ignore[arg-type]
    late = compiled_tied_head_end_terms(cfg, b, s, precision=p)  # type: ignore[arg-type]
    assert bool(late) != autocast
    before_sum = not autocast and sum(first.values()) > V * d * 4
    terms = [V * d * 4] + ([V * d * 2] if autocast else []) + list(late.values()) \
        + (list(first.values()) if autocast or before_sum else [])
    assert _unmatched(case, terms) == []
    # every gradient is a new buffer, named by its parameter (the tied one: the sum, written
    # last; before it is, its partial is among the terms above)
    every = {"gpt2-like": 498688, "gpt2": 1914880}[case["family"]]
    assert _named(case, "grad ") == every - (V * d * 4 if before_sum else 0)


@pytest.mark.parametrize("key", sorted({(c["implementation"], c["family"], c["precision"],
                                         c["dropout"], c["micro_batch_size"])
                                        for c in _cases(compile=True)
                                        if c["implementation"] in WHOLE_GRAPH}))
def test_compiled_gradients_are_new_buffers_even_when_accumulating(key: tuple[Any, ...]) -> None:
    # AOT autograd's backward returns fresh gradient tensors; AccumulateGrad adds them into
    # the resident .grad only after the graph returns, so the peak above the step's start
    # is the same with and without accumulation (eager adds in place as it goes); so is the
    # model's (compiled_backward_end_bytes counts the new gradients beside the resident ones)
    fresh, acc = (c for c in _cases(compile=True) if (
        c["implementation"], c["family"], c["precision"], c["dropout"],
        c["micro_batch_size"]) == key)
    assert fresh["gradient_accumulation"] != acc["gradient_accumulation"]
    assert fresh["peak"] == acc["peak"]
    assert predicted_delta(fresh) == predicted_delta(acc)


def test_the_small_fp32_compiled_peak_by_hand() -> None:
    # nanoGPT's layout, fp32, compiled, 2 x 24 = 48 tokens, d = 64, V = 320, f = 256, 2
    # layers, tied head. Inductor's backward (TORCH_LOGS=output_code) folds the tied
    # weight's sum into the head's weight-gradient matmul, its last kernel:
    # addmm(embedding_partial, dlogits^T, x, beta=1). Alive while it runs:
    V, d, f, T = 320, 64, 256, 48
    per_layer = (2 * d + 3 * d * d + 3 * d + d * d + d + 2 * d + f * d + f + d * f + d) * 4
    gradients = 2 * per_layer + 2 * d * 4 + 64 * d * 4 + V * d * 4  # blocks, ln_f, wpe, wte
    assert gradients == 498688  # every parameter's gradient, new buffers (wte's: the sum)
    embedding_partial = V * d * 4  # the embedding's partial gradient of wte, addmm's input
    logits = T * V * 4  # held by the loop (nanoGPT's ``logits, loss = model(X, Y)``)
    logits_grad = T * V * 4  # dlogits, kept to the end for the late head weight gradient
    head_input = T * d * 4  # the head's saved input x, read by that late weight gradient
    loss_and_seed = 4 + 4  # the loss the loop holds, the ones its backward starts from
    case = _cases(compile=True, implementation="nanogpt", precision="32-true", dropout=0.0,
                  micro_batch_size=2, gradient_accumulation=False)[0]
    assert case["peak"] == (gradients + embedding_partial + logits + logits_grad + head_input
                            + loss_and_seed) == 715784


def test_the_small_bf16_compiled_peak_by_hand() -> None:
    # the same model under bf16 autocast (e = 2; gradients fp32). The head's weight gradient
    # is a bf16 matmul, its sum with the embedding's fp32 partial cannot fold into it: it
    # runs first, and the sum goes into the graph's last fused kernel (the first block's
    # ln_1 backward, the embeddings' dense backward, the casts of c_attn's bf16 weight and
    # bias gradients). Alive while that kernel runs, besides every gradient (498688), the
    # held bf16 logits (T V 2 = 30720), the loss and its seed (8):
    V, d, T, e = 320, 64, 48, 2
    partials = V * d * 4 + V * d * e  # the embedding's fp32 partial, the head's bf16 one
    qkv_grad = T * 3 * d * e  # the gradient of c_attn's output
    ln1_out_grad = T * d * e  # c_attn's input gradient, into ln_1's output
    residual_grad = T * d * 4  # the residual stream's gradient the kernel finishes
    row_sums = 2 * T * 4  # ln_1 backward's two per-row reductions
    c_attn_bf16_grads = (3 * d * d + 3 * d) * e  # weight and bias, before their fp32 casts
    ln1_saved = T * d * 4 + T * 4  # ln_1's saved x_hat (fp32) and rstd
    position_ids = 24 * 8  # int64, saved for wpe's dense backward
    case = _cases(compile=True, implementation="nanogpt", precision="bf16-mixed", dropout=0.0,
                  micro_batch_size=2, gradient_accumulation=False)[0]
    assert case["peak"] == (498688 + T * V * e + 8 + partials + qkv_grad + ln1_out_grad
                            + residual_grad + row_sums + c_attn_bf16_grads + ln1_saved
                            + position_ids) == 727176


@pytest.mark.parametrize("case", _cases(implementation="torchtune", compile=False), ids=_id)
def test_torchtune_eager_checkpointed_steps_match_the_recompute_moment(
        case: dict[str, Any]) -> None:
    # the recompute moment of tests/test_impl_recompute_peaks_replay.py and
    # tests/test_fresh_recompute_peaks_replay.py, plus each checkpoint's CPU RNG state (two
    # checkpoints alive with every gradient resident, the first's alone when fresh) and the
    # loss and its seed; fresh, the first block's mlp_norm backward that the fresh moment
    # does not model (OFF there, 214400 bytes)
    delta, moment = predicted_delta(case)
    assert moment == "recompute"
    acc = case["gradient_accumulation"]
    off = 2 * CPU_RNG_STATE if acc else CPU_RNG_STATE + 214400
    assert case["peak"] - delta == off + LOSS_AND_SEED


@pytest.mark.parametrize("case", _cases(implementation="torchtune", compile=True,
                                        gradient_accumulation=False), ids=_id)
def test_torchtune_compiled_checkpointed_fresh_steps_end_with_every_gradient(
        case: dict[str, Any]) -> None:
    # each layer compiled, then checkpointed (the published compile + activation
    # checkpointing rows' path), no gradient when the step starts: the peak is the backward's
    # end, `fresh_recompute_moment`'s ``end`` (every gradient, the tied weight's partial
    # gradients, the residual gradient into the embedding). With the standard loss to the
    # loss and its seed; with the chunked loss the head's share of the tied weight's
    # gradient is one V d fewer than the moment counts (the per-chunk gradients summed into a
    # buffer the engine then adds the embedding's share into, in place), the residual
    # gradient (T d 2) beside them instead: 7.3 % over
    delta, moment = predicted_delta(case)
    assert moment == "recompute"
    if case["loss"] == "standard":
        assert case["peak"] - delta == LOSS_AND_SEED
    else:
        V, d, T = 512, 256, 96
        assert delta - case["peak"] == V * d * 2 - T * d * 2 - LOSS_AND_SEED


@pytest.mark.parametrize("case", _cases(implementation="torchtune", compile=True,
                                        gradient_accumulation=True), ids=_id)
def test_torchtune_compiled_checkpointed_steps_with_gradients_resident_are_under(
        case: dict[str, Any]) -> None:
    # with every gradient resident each compiled layer's backward graph holds the new
    # gradients it makes (new buffers; the layer's graphs split it) beside the resident ones
    # until it returns: not modelled, 29-45 % under. Pinned so a model change shows here.
    delta, _ = predicted_delta(case)
    assert -0.45 < (delta - case["peak"]) / case["peak"] < -0.28

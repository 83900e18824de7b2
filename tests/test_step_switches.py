"""The memory-saving switches (issue 17): ``loss``, ``optimizer_in_backward``,
``activation_offload`` and ``gradient_accumulation``, by hand calculation, torch-free.

Every expected value is written out from the operations torchtune 0.6.1's code runs
(scaleplan/memory/step_switches.py cites the files); the measured replay is
tests/test_step_switches_replay.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from scaleplan.errors import ScaleplanError, UnknownNameError
from scaleplan.memory.limits import max_micro_batch_size, memory_grid
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.step_switches import (
    StepSwitches,
    chunked_loss_terms,
    gradients_at,
    largest_gradient_bytes,
    loss_chunks,
    offload_saved_terms,
)
from scaleplan.memory.training import training_memory
from scaleplan.model.config import GPTConfig
from scaleplan.validation.step import FitsOn

# nanoGPT's layout, 2 layers of d 64, V 200 (the harness's "gpt2-like")
GPT2_LIKE = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=200)
B, S, V = 2, 48, 200
T = B * S
CPU = dict(micro_batch_size=B, seq_len=S, device="cpu", optimizer_impl="for-loop",
           hold_logits=False)
# Parameters of GPT2_LIKE (nanoGPT's count, tied head): wte 200x64 + wpe 64x64, per block
# 2 LayerNorms (2 x 128), c_attn 64x192 + 192, c_proj 64x64 + 64, c_fc 64x256 + 256,
# c_proj 256x64 + 64; ln_f 128.
PARAMS = 200 * 64 + 64 * 64 + 2 * (256 + 64 * 192 + 192 + 64 * 64 + 64 + 64 * 256 + 256
                                   + 256 * 64 + 64) + 128


def test_param_count_by_hand_matches_the_models_gradients() -> None:
    m = training_memory(GPT2_LIKE, precision="32-true", **CPU)  # type: ignore[arg-type]
    assert m.gradients == PARAMS * 4 == 116_992 * 4


def test_chunks_follow_torch_chunk() -> None:
    # torch.chunk: chunks of ceil(s / 8); 48 -> 8 x 6; 50 -> 7 x 7 + 1 (8 chunks); 9 -> 5 x 2
    assert loss_chunks(48) == (8, 6)
    assert loss_chunks(50) == (8, 7)
    assert loss_chunks(9) == (5, 2)
    assert loss_chunks(1) == (1, 1)


def test_chunked_loss_saves_fp32_log_softmax_and_one_weight_total_per_chunk() -> None:
    # 8 chunks of 2 x 6 tokens: fp32 log-softmax 96 x 200 x 4, int64 targets 96 x 8, and 8
    # nll_loss weight totals of 4 bytes (fp32: each chunk is upcast before the loss)
    assert chunked_loss_terms(GPT2_LIKE, B, S) == {"log_softmax": 76_800,
                                                   "targets": 768 + 32}
    m = training_memory(GPT2_LIKE, precision="bf16-true", loss="chunked", **CPU)  # type: ignore[arg-type]
    std = training_memory(GPT2_LIKE, precision="bf16-true", **CPU)  # type: ignore[arg-type]
    # bf16 parameters: the standard loss keeps a bf16 log-softmax (96 x 200 x 2) and a 2-byte
    # weight total; the chunked one upcasts, so it keeps more, not less
    assert m.saved_breakdown["log_softmax"] - std.saved_breakdown["log_softmax"] == 38_400
    assert m.saved_breakdown["targets"] - std.saved_breakdown["targets"] == 32 - 2


def test_chunked_loss_forward_end_holds_every_chunks_logits_and_one_fp32_upcast() -> None:
    m = training_memory(GPT2_LIKE, precision="bf16-true", loss="chunked", **CPU)  # type: ignore[arg-type]
    assert m.peak_moment == "forward_end"
    # on top of the saved tensors: all bf16 logits (96 x 200 x 2) and the last chunk's fp32
    # upcast (12 x 200 x 4); bf16-true has no autocast weight copies
    assert m.transient == 96 * 200 * 2 + 12 * 200 * 4
    assert m.autocast_weight_copies == 0


def test_chunked_loss_in_fp32_peaks_in_the_output_layers_backward() -> None:
    # fp32 logits: .float() returns them (no upcast). The standard loss starts backward with two
    # T V x 4 gradients. The chunked one starts it with one chunk's two (2 x 12 x 200 x 4), and
    # peaks in the output layer's backward: the loss side freed (96 x 200 x 4 log-softmax, 96 x 8
    # targets and 8 weight totals of 4 bytes), the logits' gradients of the 6 chunks not yet
    # consumed (6 x 12 x 200 x 4) while the second chunk's 200 x 64 fp32 weight gradient is
    # summed into the first's (three of them live)
    m = training_memory(GPT2_LIKE, precision="32-true", loss="chunked", **CPU)  # type: ignore[arg-type]
    std = training_memory(GPT2_LIKE, precision="32-true", **CPU)  # type: ignore[arg-type]
    assert std.transient == 2 * T * V * 4
    assert m.peak_moment == "head_backward"
    assert m.transient == -(T * V * 4 + T * 8 + 8 * 4) + 6 * 12 * V * 4 + 3 * V * 64 * 4
    assert m.tensor_peak == m.weights + m.gradients + m.optimizer + m.saved_for_backward \
        + m.transient


def test_no_gradient_accumulation_drops_every_gradient_at_backward_start() -> None:
    acc = training_memory(GPT2_LIKE, precision="32-true", **CPU)  # type: ignore[arg-type]
    one = training_memory(GPT2_LIKE, precision="32-true", gradient_accumulation=False,
                          **CPU)  # type: ignore[arg-type]
    assert (acc.peak_moment, one.peak_moment) == ("backward_start", "backward_start")
    assert one.gradients == 0
    assert acc.tensor_peak - one.tensor_peak == PARAMS * 4


def test_no_gradient_accumulation_keeps_gradients_through_the_optimizer_step() -> None:
    # b = s = 1: activations are tiny, so the step's worst moment is the foreach AdamW's
    # temporaries on top of every gradient, with or without accumulation
    kw = dict(micro_batch_size=1, seq_len=1, precision="32-true", optimizer_impl="foreach")
    acc = training_memory(GPT2_LIKE, **kw)  # type: ignore[arg-type]
    one = training_memory(GPT2_LIKE, gradient_accumulation=False, **kw)  # type: ignore[arg-type]
    assert one.peak_moment == acc.peak_moment == "optimizer_step"
    assert one.gradients == acc.gradients == PARAMS * 4
    assert one.total == acc.total


def test_optimizer_in_backward_has_no_optimizer_step_and_one_gradient_at_a_time() -> None:
    kw = dict(micro_batch_size=1, seq_len=1, precision="32-true", optimizer_impl="foreach",
              gradient_accumulation=False)
    m = training_memory(GPT2_LIKE, optimizer_in_backward=True, **kw)  # type: ignore[arg-type]
    assert m.peak_moment != "optimizer_step"
    assert m.gradients == 0  # at forward end / backward start
    # the largest parameter is an MLP matrix, 64 x 256 (the tied embedding is 200 x 64)
    assert largest_gradient_bytes(GPT2_LIKE, "32-true") == 64 * 256 * 4
    assert largest_gradient_bytes(GPT2_LIKE, "bf16-true") == 64 * 256 * 2


def test_gradients_at_each_moment() -> None:
    acc, one = StepSwitches(), StepSwitches(gradient_accumulation=False)
    oib = StepSwitches(optimizer_in_backward=True, gradient_accumulation=False)
    assert [gradients_at(k, 100, 7, acc) for k in ("forward_end", "optimizer_step")] == [100, 100]
    assert [gradients_at(k, 100, 7, one) for k in
            ("forward_end", "backward_start", "recompute", "optimizer_step")] == [0, 0, 100, 100]
    assert [gradients_at(k, 100, 7, oib) for k in ("backward_start", "recompute")] == [0, 7]


def test_activation_offload_keeps_the_loss_side_and_the_small_tensors() -> None:
    m = training_memory(GPT2_LIKE, precision="32-true", activation_offload=True, **CPU)  # type: ignore[arg-type]
    # kept on the GPU: token ids 96 x 8, position ids 48 x 8, LayerNorm mean and rstd of
    # 96 x 4 = 384 bytes each (under the 1024-byte minimum: 5 norms x 2 tensors), the output
    # layer's input 96 x 64 x 4 (NoOpManager) and the loss (fp32 log-softmax, int64 targets and
    # a 4-byte weight total, computed outside the context)
    kept = 768 + 384 + 10 * 384 + 96 * 64 * 4 + 96 * 200 * 4 + 768 + 4
    assert kept == 107_140
    # in flight at the end of forward (the forward stash): the final norm's input 96 x 64 x 4
    # and the last MLP's GELU input and output, 2 x 96 x 256 x 4
    in_flight = 96 * 64 * 4 + 2 * 96 * 256 * 4
    assert m.saved_breakdown["offload_in_flight"] == in_flight
    assert m.saved_for_backward == kept + in_flight
    # the worst moment is the last block's MLP backward: the kept tensors less the loss side
    # (96 x 200 x 4 + 96 x 8 + 4), the residual gradient 96 x 64 x 4, c_proj's input and GELU's
    # input brought back with a gradient each (4 x 96 x 256 x 4) and c_proj's weight brought
    # back (64 x 256 x 4), on top of fp32 weights and gradients and AdamW's states
    assert m.peak_moment == "offload_backward"
    moment = (kept - (76_800 + 772) + 96 * 64 * 4 + 4 * 96 * 256 * 4 + 64 * 256 * 4)
    assert moment == 512_896
    assert m.tensor_peak == PARAMS * 4 + PARAMS * 4 + m.optimizer + moment


def test_offload_keeps_statistics_only_while_they_are_small() -> None:
    # b s = 384 tokens: a norm statistic is 1536 bytes, past the 1024-byte minimum
    terms = offload_saved_terms(GPT2_LIKE, 8, 48, {"norm1_stats": 6144, "qkv": 100}, 2)
    assert terms == {"norm1_stats": 0, "offload_in_flight": 2 * 8 * 48 * 256 * 2}


def test_memory_grid_cells_equal_training_memory_with_switches() -> None:
    options = dict(precision="bf16-true", loss="chunked", activation_offload=True,
                   optimizer_in_backward=True, gradient_accumulation=False)
    grid = memory_grid(GPT2_LIKE, micro_batch_size=np.array([[1], [2], [8]]),
                       seq_len=np.array([9, 48]), **options)  # type: ignore[arg-type]
    for i, b in enumerate((1, 2, 8)):
        for j, s in enumerate((9, 48)):
            total = training_memory(GPT2_LIKE, micro_batch_size=b, seq_len=s, **options).total  # type: ignore[arg-type]
            assert grid[i, j] == total


def test_max_micro_batch_size_passes_the_switches_on() -> None:
    cfg = GPTConfig.preset("gpt2")
    plain = max_micro_batch_size(cfg, "RTX 4070", seq_len=1024)
    chunked = max_micro_batch_size(cfg, "RTX 4070", seq_len=1024, loss="chunked",
                                   gradient_accumulation=False)
    assert chunked > plain


def test_fits_on_takes_the_switches() -> None:
    marker = FitsOn("RTX 4070", micro_batch_size=8, seq_len=1024, loss="chunked",
                    gradient_accumulation=False)
    settings = marker._settings({})
    assert settings["loss"] == "chunked" and settings["gradient_accumulation"] is False
    assert "optimizer_in_backward" not in settings
    with pytest.raises(ScaleplanError, match="gradient_accumulation=False"):
        FitsOn("RTX 4070", optimizer_in_backward=True)


@pytest.mark.parametrize(("options", "pattern"), [
    ({"loss": "chunky"}, "loss"),
    ({"optimizer_in_backward": "yes"}, r"optimizer_in_backward='yes' must be True or False"),
    ({"activation_offload": 1}, r"activation_offload=1 must be True or False"),
    ({"gradient_accumulation": None}, r"gradient_accumulation=None must be True or False"),
    ({"optimizer_in_backward": True}, r"pass gradient_accumulation=False"),
    ({"loss": "chunked", "compile": True}, r"loss='chunked' is not modelled yet with compile"),
    ({"activation_offload": True, "parallelism": Parallelism(data=2)},
     r"activation_offload=True is modelled for one GPU"),
    ({"loss": "chunked", "parallelism": Parallelism(tensor=2)},
     r"not modelled yet with tensor or pipeline"),
    ({"gradient_accumulation": False, "parallelism": Parallelism(pipeline=2)},
     r"gradient_accumulation=False is modelled for one GPU"),
    ({"gradient_accumulation": False, "parallelism": Parallelism(data=8)},
     r"DDP's and ZeRO's buckets outlive zero_grad"),
    ({"activation_offload": True, "checkpointing": "full"},
     r"activation_offload=True is not modelled yet with checkpointing='full'"),
])
def test_switches_refused_by_name(options: dict[str, object], pattern: str) -> None:
    with pytest.raises((ScaleplanError, UnknownNameError), match=pattern):
        training_memory(GPT2_LIKE, micro_batch_size=1, seq_len=8, **options)  # type: ignore[arg-type]


def test_cli_flags_reach_training_memory(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from scaleplan.cli import main

    argv = ["plan", "gpt2", "--gpu", "RTX 4070", "--loss", "chunked",
            "--no-gradient-accumulation", "--json"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    b = data["micro_batch_size"]
    expected = training_memory(GPTConfig.preset("gpt2"), micro_batch_size=b, seq_len=1024,
                               precision=data["precision"], loss="chunked",
                               gradient_accumulation=False)
    assert data["memory"]["total"] == expected.total
    # the chunked loss upcasts each chunk, so GPT-2's log-softmax is fp32: b x 1024 x 50257 x 4
    assert data["memory"]["saved_breakdown"]["log_softmax"] == b * 1024 * 50257 * 4


def test_cli_refuses_optimizer_in_backward_with_accumulation(
        capsys: pytest.CaptureFixture[str]) -> None:
    from scaleplan.cli import main

    assert main(["plan", "gpt2", "--gpu", "RTX 4070", "--optimizer-in-backward"]) != 0
    err = capsys.readouterr().err
    assert "gradient_accumulation=False" in err and "Traceback" not in err


def test_the_reproduced_command_repeats_the_switches() -> None:
    from scaleplan.cli import build_parser
    from scaleplan.cli_output import command_line

    ns = build_parser().parse_args(["plan", "gpt2", "--gpu", "A100", "--loss", "chunked",
                                    "--optimizer-in-backward", "--activation-offload",
                                    "--no-gradient-accumulation"])
    assert command_line(ns) == ("scaleplan plan gpt2 --gpu A100 --loss chunked "
                                "--optimizer-in-backward --activation-offload "
                                "--no-gradient-accumulation")


def test_sweep_passes_the_switches_to_memory_grid() -> None:
    from scaleplan.planning.sweeps import sweep

    options = dict(loss="chunked", gradient_accumulation=False, precision="bf16-true")
    rows = sweep(n_layer=[2], n_embd=[64], micro_batch_size=[2], seq_len=[48],
                 gpus=["RTX 4070"], base=GPT2_LIKE, head_dim=16, **options)  # type: ignore[arg-type]
    expected = training_memory(GPT2_LIKE, micro_batch_size=2, seq_len=48, **options)  # type: ignore[arg-type]
    assert rows["memory_bytes"][0] == expected.total


def test_plan_takes_the_switches_and_its_memory_shows_them() -> None:
    from scaleplan.planning.planner import plan

    # no accumulation: the step is one micro-batch, the largest that fits
    p = plan(GPTConfig.preset("gpt2"), gpu="RTX 4070", loss="chunked",
             gradient_accumulation=False)
    assert p.grad_accum_steps == 1 and p.tokens_per_step == p.micro_batch_size * 1024
    expected = training_memory(GPTConfig.preset("gpt2"), micro_batch_size=p.micro_batch_size,
                               seq_len=1024, precision=p.precision, loss="chunked",
                               gradient_accumulation=False)
    assert p.memory == expected
    # one micro-batch per step: no gradients at the chunked loss's forward end
    assert (p.memory.peak_moment, p.memory.gradients) == ("forward_end", 0)


def test_switch_moments_by_hand() -> None:
    from scaleplan.memory.step_switches import switch_moments

    moments = {"forward_end": 1000, "backward_start": 2000, "optimizer_step": 50}
    saved = {"a": 300, "log_softmax": 40, "targets": 8}  # S = 348, loss side 48
    common = dict(copies=5, all_copies=7, TV=100, TVc=13, G=11, largest=3, head_grad=17)
    chunked = switch_moments(moments, saved=saved, on_gpu=saved, e=2, chunks=8,
                             sw=StepSwitches(loss="chunked"), **common)  # type: ignore[arg-type]
    assert chunked == {
        "forward_end": 348 + 7 + 100 * 2 + 13 * 4,  # all chunk logits, one fp32 upcast
        "backward_start": 348 + 5 + 2 * 13 * 4,  # one chunk's two fp32 gradients
        "optimizer_step": 50,
        # loss side freed, 6 chunks' logit gradients waiting, three weight gradients
        "head_backward": 348 - 48 + 5 + 6 * 13 * 2 + 3 * 17,
    }
    fp32 = switch_moments(moments, saved=saved, on_gpu=saved, e=4, chunks=3,
                          sw=StepSwitches(loss="chunked"), **common)  # type: ignore[arg-type]
    assert fp32["forward_end"] == 348 + 7 + 100 * 4  # .float() of fp32 logits copies nothing
    assert fp32["head_backward"] == 348 - 48 + 5 + 1 * 13 * 4 + 3 * 17
    for n in (1, 2):  # no chunk waits once the last two are consumed
        few = switch_moments(moments, saved=saved, on_gpu=saved, e=4, chunks=n,
                             sw=StepSwitches(loss="chunked"), **common)  # type: ignore[arg-type]
        assert few["head_backward"] == 348 - 48 + 5 + 3 * 17
    on_gpu = {"log_softmax": 40, "targets": 8, "offload_in_flight": 20}  # 68; 280 offloaded
    every = StepSwitches(loss="chunked", optimizer_in_backward=True, activation_offload=True,
                         gradient_accumulation=False)
    out = switch_moments(moments, saved=saved, on_gpu=on_gpu, e=2, chunks=8, sw=every,
                         offload_backward=99, **common)  # type: ignore[arg-type]
    assert out == {  # no gradients but the largest one in the offloaded backward (-11, +3)
        "forward_end": 68 + 7 + 200 + 52 - 11,
        "backward_start": 68 + 104 - 11,  # the saved weight copies offloaded too
        "head_backward": 68 - 48 + 156 + 51 - 11,
        "offload_backward": 99 - 11 + 3,
    }
    plain = switch_moments(moments, saved=saved, on_gpu=saved, e=2,
                           sw=StepSwitches(gradient_accumulation=False), **common)  # type: ignore[arg-type]
    assert plain == {"forward_end": 1000 - 11, "backward_start": 2000 - 11, "optimizer_step": 50}


def test_offload_keeps_tensors_strictly_under_1024_bytes() -> None:
    from scaleplan.memory.step_switches import offload_kept_terms

    cfg = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=200)
    terms = {"token_ids": 1, "position_ids": 2, "layer_position_ids": 3, "attn_lse": 4,
             "norm1_stats": 5, "ln_one_plus_weight": 6, "embedding_scale": 7, "qkv": 8,
             "lm_head_input": 9}
    # b s = 128: token ids 128 x 8 = 1024 bytes (offloaded: not under the minimum), position
    # ids 64 x 8 = 512, statistics 128 x 4 = 512, 1 + weight 64 x 4 = 256, the scale 4 bytes,
    # SDPA's log-sum-exp 128 x 4 heads x 4 = 2048 (offloaded)
    assert offload_kept_terms(cfg, 2, 64, terms) == {
        "token_ids": 0, "position_ids": 2, "layer_position_ids": 3, "attn_lse": 0,
        "norm1_stats": 5, "ln_one_plus_weight": 6, "embedding_scale": 7, "lm_head_input": 9}
    # b s = 64: token ids 512 bytes kept; the log-sum-exp 64 x 4 x 4 = 1024 offloaded; s = 200:
    # position ids 1600 bytes offloaded
    assert offload_kept_terms(cfg, 1, 64, terms)["token_ids"] == 1
    assert offload_kept_terms(cfg, 1, 64, terms)["attn_lse"] == 0
    assert offload_kept_terms(cfg, 1, 200, terms)["position_ids"] == 0
    assert offload_kept_terms(cfg, 1, 200, terms)["layer_position_ids"] == 0
    big = GPTConfig(n_layer=2, n_head=4, n_embd=256, block_size=64, vocab_size=200)
    assert offload_kept_terms(big, 1, 8, terms)["ln_one_plus_weight"] == 0  # 256 x 4 bytes


def test_offload_backward_moment_by_hand() -> None:
    from scaleplan.memory.step_switches import offload_backward_moment

    # GELU MLP, f = 256: c_proj's input and GELU's input brought back with a gradient each
    # (4 x 96 x 256 x e), the residual gradient 96 x 64 x residual bytes, c_proj's weight
    # 64 x 256 x e; the kept tensors less the loss side and the forward stash
    on_gpu = {"log_softmax": 76800, "targets": 772, "norm1_stats": 1536,
              "offload_in_flight": 999}
    assert offload_backward_moment(GPT2_LIKE, 2, 48, "32-true", on_gpu=on_gpu) == (
        1536 + 96 * 64 * 4 + 4 * 96 * 256 * 4 + 64 * 256 * 4)
    assert offload_backward_moment(GPT2_LIKE, 2, 48, "bf16-mixed", on_gpu={"x": 1}) == (
        1 + 96 * 64 * 4 + 4 * 96 * 256 * 2 + 64 * 256 * 2)
    gated = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=200,
                      mlp="swiglu", mlp_hidden=160)
    assert offload_backward_moment(gated, 2, 48, "bf16-true", on_gpu={}) == (
        96 * 64 * 2 + 2 * 3 * 96 * 160 * 2 + 64 * 160 * 2)

"""torchtitan's whole FSDP2 step against `training_memory`, replayed without torch.

docs/validation/torchtitan-fsdp-steps.json holds 19 whole steps of torchtitan 0.3.0's Llama 3
under its own ``apply_fsdp_to_decoder`` on rank 0 of a fake process group
(`scaleplan.reference.titan_fsdp_step`, FSDP2's storage resizes counted): the peak above the
sharded states and the batch, and the storages live then. The step's predicted peak above the
same states must match it: the block-backward moment (`scaleplan.memory.titan_fsdp_moments`)
where a block's backward peaks, the loss's moments where the vocabulary is large.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.titan_fsdp_moments import titan_block_backward_moment, titan_fsdp_buffers
from scaleplan.memory.titan_terms import titan_block_params
from scaleplan.memory.training import training_memory
from scaleplan.model.config import GPTConfig

DATA = Path(__file__).resolve().parents[1] / "docs" / "validation" / "torchtitan-fsdp-steps.json"
CASES: list[dict[str, Any]] = json.loads(DATA.read_text())["cases"]
PRECISION = {"bf16": "bf16-mixed", "fp32": "32-true"}


def _predicted(case: dict[str, Any]) -> tuple[int, str]:
    cfg = GPTConfig.model_validate(case["config"])
    m = training_memory(cfg, micro_batch_size=case["micro_batch_size"], seq_len=case["seq_len"],
                        precision=PRECISION[case["param_dtype"]],
                        checkpointing=case["checkpointing"], device="cpu",
                        implementation="torchtitan", optimizer_impl="foreach",
                        parallelism=Parallelism(data=case["data"], fsdp="full_shard"))
    return m.tensor_peak - m.weights - m.gradients - m.optimizer, m.peak_moment


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['name']}-{c['data']}-"
                         f"{c['checkpointing']}-{c['param_dtype']}-{c['seq_len']}")
def test_whole_step_peak_matches_torchtitan(case: dict[str, Any]) -> None:
    predicted, moment = _predicted(case)
    # the model counts the batch's token ids (and the positions the checkpointed blocks keep)
    # inside its moments; the harness counts the batch as resident
    measured = case["delta"] + case["batch_bytes"]
    # within 0.1%: the residue is the positions tensor (b s x 8 bytes), which the harness keeps
    # resident in every case and the model counts only with checkpointing, and the targets
    assert predicted == pytest.approx(measured, rel=1e-3), (moment, case["at_peak"])


def _fp32_flat_buffers(case: dict[str, Any]) -> set[int]:
    """Sizes of the flat fp32 buffers (FSDP2's reduce-scatter inputs) live at the peak."""
    return {int(label.split("(")[1].split(",")[0]) for label in case["at_peak"]
            if ":empty.memory_format (" in label and label.endswith("float32")}


def test_each_moment_peaks_where_measured() -> None:
    # the optimizer's phase peaks as the optimizer step; in backward a block's moments or the
    # head unit's hold FSDP2's fp32 reduce-scatter input, the loss's moment (no unit's
    # backward has ended yet) holds none
    for case in CASES:
        _, moment = _predicted(case)
        if case["peak_phase"] == "optimizer":
            assert moment == "optimizer_step", case["name"]
            continue
        block_peak = moment in ("recompute", "block_backward")
        assert block_peak == bool(_fp32_flat_buffers(case)), (case["name"], moment)


def test_the_grid_peaks_in_every_kind_of_unit() -> None:
    # measured peaks holding a block's reduce-scatter input and the head unit's: both
    # branches of the previous unit are exercised, and nothing else of that kind is live
    seen = set()
    for case in CASES:
        cfg = GPTConfig.model_validate(case["config"])
        for n in _fp32_flat_buffers(case):
            head = cfg.vocab_size * cfg.n_embd + cfg.n_embd
            kind = {head: "head", -(-head // case["data"]): "head's shard",
                    titan_block_params(cfg): "block"}
            seen.add(kind.get(n, n))
    # the head unit's moment also holds the fp32 shard its reduce-scatter writes into
    assert seen == {"head", "head's shard", "block"}


def test_fsdp_buffers_by_hand() -> None:
    # gqa-3: d 160, H 4, K 2, hd 40, F 448, V 384. Block parameters: wqkv 160 x 320 = 51,200,
    # wo 25,600, w1 w2 w3 3 x 71,680, two norms 320: 292,160. At block 1 of 3 (bf16): the
    # previous block's fp32 reduce-scatter input 1,168,640, this block gathered 584,320, the
    # next prefetched 584,320, w2's bf16 gradient 160 x 448 x 2 = 143,360: 2,480,640 (the
    # harness lists exactly these four storages at that peak).
    cfg = GPTConfig.model_validate(CASES[0]["config"])
    assert titan_fsdp_buffers(cfg, e=2, block=1, layers=3) == 2_480_640
    # the last block: the head unit's input instead, (384 x 160 + 160) x 4 = 246,400
    assert titan_fsdp_buffers(cfg, e=2, block=2, layers=3) == 2_480_640 - 1_168_640 + 246_400
    # block 0: the embedding prefetched, 384 x 160 x 2 = 122,880, instead of a block
    assert titan_fsdp_buffers(cfg, e=2, block=0, layers=3) == 2_480_640 - 584_320 + 122_880


def test_full_checkpointing_moment_by_hand() -> None:
    # gqa-3, b 2, s 96 (T 192), full checkpointing, CPU: block 1 peaks. Two block inputs
    # 2 x 192 x 160 x 2 = 122,880; the rebuilt block's saves (CPU norms: fp32 upcast and
    # normalised x, 2 x 122,880, and rsqrt 768, each norm: 2 x 246,528; wqkv and MLP inputs
    # 2 x 61,440; RoPE rows 192 x 20 x 8 = 30,720; q k v 192 x 320 x 2 = 122,880, output
    # 61,440, logsumexp 2 x 4 x 96 x 4 = 3,072; w1 w3 silu 3 x 192 x 448 x 2 = 516,096; w2's
    # input 172,032): 1,522,176; the MLP's backward 2 x 172,032 + the incoming gradient 61,440
    # + the loss and its gradient 8 = 405,512; FSDP2's 2,480,640 (above).
    cfg = GPTConfig.model_validate(CASES[0]["config"])
    expected = 122_880 + 1_522_176 + 405_512 + 2_480_640
    assert titan_block_backward_moment(cfg, 2, 96, precision="bf16-mixed",
                                       checkpointing="full", device="cpu", layers=3,
                                       data=2) == expected == 4_531_208


def test_one_rank_prefetches_nothing() -> None:
    cfg = GPTConfig.model_validate(CASES[0]["config"])
    two = titan_block_backward_moment(cfg, 2, 96, precision="32-true", checkpointing="none",
                                      device="cpu", layers=3, data=2)
    one = titan_block_backward_moment(cfg, 2, 96, precision="32-true", checkpointing="none",
                                      device="cpu", layers=3, data=1)
    # fp32, the last block's MLP peaks on both: the head unit's reduce-scatter input, this
    # block gathered and w2's gradient on both; two ranks also hold the block prefetched
    # (292,160 x 4), one rank none (its unshard copies nothing ahead)
    assert two - one == 292_160 * 4


def test_block_moments_are_exact_where_a_block_peaks() -> None:
    # where the measured peak holds a reduce-scatter input (a block's or the head unit's
    # moment), the moment is the measured bytes above the states and the batch, to the byte
    exact = 0
    for case in CASES:
        if case["peak_phase"] != "backward" or not _fp32_flat_buffers(case):
            continue
        cfg = GPTConfig.model_validate(case["config"])
        moment = titan_block_backward_moment(
            cfg, case["micro_batch_size"], case["seq_len"],
            precision=PRECISION[case["param_dtype"]], checkpointing=case["checkpointing"],
            device="cpu", layers=cfg.n_layer, data=case["data"])
        assert moment == case["delta"], (case["name"], case["checkpointing"], case["seq_len"])
        exact += 1
    assert exact >= 10


def test_cuda_block_end_by_hand() -> None:
    # gqa-3 at 1 x 16 tokens, full checkpointing, on CUDA (the fused RMSNorm: inferred from
    # aten::_fused_rms_norm_backward's outputs, not measured). Block 1 of 3 at its end: block
    # 0's input 16 x 160 x 2; its own input; the fused norm's fp32 rstd 16 x 4 and its input
    # gradient 16 x 160 x 2 (its input is the checkpointed one); the incoming gradient; the
    # loss's 8 bytes; FSDP2: the previous block's fp32 reduce-scatter input, this block and the
    # next gathered, the whole block's bf16 gradients (292,160 x (4 + 2 + 2 + 2))
    cfg = GPTConfig.model_validate(CASES[0]["config"])
    Td = 16 * 160 * 2
    end = Td + Td + 16 * 4 + Td + Td + 8 + 292_160 * 10
    assert titan_block_backward_moment(cfg, 1, 16, precision="bf16-mixed", checkpointing="full",
                                       device="cuda", layers=3, data=2) == end
    # without checkpointing: block 1's end again, beside block 0's saves on CUDA (its fused
    # norms keep bf16 inputs and fp32 rstd: 96,128 bytes at 16 tokens), the fused norm's input
    # (the block's own, no checkpoint holds it), rstd, input gradient, the incoming gradient
    saves = 2 * (Td + 16 * 4) + Td + 16 * 20 * 8 + (16 * 320 * 2 + Td + 4 * 16 * 4) + Td \
        + 3 * 16 * 448 * 2 + 16 * 448 * 2
    assert saves == 96_128
    none = saves + Td + 16 * 4 + Td + Td + 8 + 292_160 * 10
    assert titan_block_backward_moment(cfg, 1, 16, precision="bf16-mixed", checkpointing="none",
                                       device="cuda", layers=3, data=2) == none


def test_block_parameters_with_qwen3_norms_by_hand() -> None:
    # Qwen3's q and k norms (head_dim 40 each) on top of gqa-3's 292,160
    cfg = GPTConfig.model_validate({**CASES[0]["config"], "qk_norm": "head"})
    assert titan_block_params(cfg) == 292_160 + 2 * 40


def test_one_block_and_odd_ranks_by_hand() -> None:
    # one block (both the last and the first: the head unit's reduce-scatter input before it,
    # the embedding prefetched after it), fp32 (e 4), 3 ranks, no checkpointing, 1 x 16 tokens
    from scaleplan.memory.titan_sdpa_terms import titan_sdpa_block_terms

    cfg = GPTConfig.model_validate({**CASES[0]["config"], "n_layer": 1})
    saves = sum(titan_sdpa_block_terms(cfg, 1, 16, e=4, device="cpu",
                                       checkpointing="none").values())
    T, d, F, V, P = 16, 160, 448, 384, 292_160
    fsdp = (V * d + d) * 4 + P * 4 + V * d * 4  # head's RS input, the block, the embedding
    # the head unit's reduce-scatter: its fp32 shard ceil(61,600 / 3) = 20,534, lm_head's grad
    head = saves + T * d * 4 + 8 + 61_600 * 4 + 20_534 * 4 + V * d * 4 + P * 4
    mlp = saves + 2 * T * F * 4 + T * d * 4 + 8 + fsdp + d * F * 4  # w2's gradient
    # CPU norm in fp32 (x is the block input; rstd live, its own weight gradient not made
    # yet: measured on one rank, one_rank_cases), all the block's other gradients
    end = 6 * T * d * 4 + T * 4 - d * 4 + T * d * 4 + 8 + fsdp + P * 4
    got = titan_block_backward_moment(cfg, 1, 16, precision="32-true", checkpointing="none",
                                      device="cpu", layers=1, data=3)
    assert got == max(head, mlp, end) == end
    # the head unit's moment alone, at a vocabulary large enough for it to peak
    wide = GPTConfig.model_validate({**CASES[0]["config"], "n_layer": 1, "vocab_size": 30_000})
    Vw = 30_000
    head_w = saves + T * d * 4 + 8 + (Vw * d + d) * 4 + -(-(Vw * d + d) // 3) * 4 \
        + Vw * d * 4 + P * 4
    assert titan_block_backward_moment(wide, 1, 16, precision="32-true", checkpointing="none",
                                       device="cpu", layers=1, data=3) == head_w
    # one rank: nothing prefetched; each unit's reduce holds three fp32 copies of its
    # gradients (input, output, input / 1.0) and not its unsharded ones; the block's end in
    # fp32: x is the block input, its weight gradient (d x 4) not made yet, rstd (T x 4) live
    one = titan_block_backward_moment(cfg, 1, 16, precision="32-true", checkpointing="none",
                                      device="cpu", layers=1, data=1)
    fsdp1 = (V * d + d) * 4 + P * 4  # the head unit's reduce input, the block gathered
    head1 = saves + T * d * 4 + 8 + 3 * (V * d + d) * 4
    mlp1 = saves + 2 * T * F * 4 + T * d * 4 + 8 + fsdp1 + d * F * 4
    end1 = 6 * T * d * 4 + T * 4 - d * 4 + T * d * 4 + 8 + fsdp1 + P * 4
    reduce1 = T * d * 4 + 8 + 3 * P * 4  # the block's own reduce, its backward done
    embedding1 = 3 * V * d * 4 + 8
    assert one == max(head1, mlp1, end1, reduce1, embedding1) == reduce1

"""torchtitan on one GPU (FSDP2 on a one-rank mesh) against `training_memory`, replayed
without torch.

torchtitan 0.3.0 always runs ``apply_fsdp_to_decoder``, so its one-GPU step is FSDP2 over a
one-rank mesh. docs/validation/torchtitan-fsdp-steps.json's ``one_rank_cases`` are such steps
(`scaleplan.reference.titan_fsdp_step` with ``data=1``, ``backward_peak=True``: the step's
peak, the backward's own peak and the storages live at each): bf16 and fp32 parameters, none,
full and selective checkpointing, with and without gradient accumulation. What FSDP2 holds
there (torch 2.13's world-size-1 branches): each unit copied into unsharded parameters of the
param dtype, nothing prefetched, each unit's reduce three fp32 copies of its gradients.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scaleplan.errors import ScaleplanError
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.titan_fsdp_moments import ONE_RANK_DIVIDE_COPY, titan_block_backward_moment
from scaleplan.memory.titan_terms import titan_block_params, titan_fsdp_in_flight
from scaleplan.memory.titan_tp_terms import titan_tp_fsdp_in_flight
from scaleplan.memory.training import training_memory
from scaleplan.model.config import GPTConfig

DATA = Path(__file__).resolve().parents[1] / "docs" / "validation" / "torchtitan-fsdp-steps.json"
CASES: list[dict[str, Any]] = json.loads(DATA.read_text())["one_rank_cases"]
PRECISION = {"bf16": "bf16-mixed", "fp32": "32-true"}


def _id(c: dict[str, Any]) -> str:
    fresh = "fresh" if c.get("fresh") else "acc"
    return (f"{c['name']}-{c['checkpointing']}-{c['param_dtype']}-{c['micro_batch_size']}x"
            f"{c['seq_len']}-{fresh}")


def _memory(case: dict[str, Any], **options: Any) -> Any:
    cfg = GPTConfig.model_validate(case["config"])
    return training_memory(cfg, micro_batch_size=case["micro_batch_size"],
                           seq_len=case["seq_len"], precision=PRECISION[case["param_dtype"]],
                           checkpointing=case["checkpointing"], device="cpu",
                           implementation="torchtitan", optimizer_impl="foreach",
                           gradient_accumulation=not case.get("fresh", False), **options)


def _moment(case: dict[str, Any]) -> int:
    cfg = GPTConfig.model_validate(case["config"])
    return titan_block_backward_moment(  # type: ignore[no-any-return]
        cfg, case["micro_batch_size"], case["seq_len"],
        precision=PRECISION[case["param_dtype"]], checkpointing=case["checkpointing"],
        device="cpu", layers=cfg.n_layer, data=1, fresh=case.get("fresh", False))


def _flat_fp32(at: dict[str, int]) -> int:
    """Bytes of FSDP2's flat fp32 storages (reduce inputs and outputs) in ``at``."""
    return sum(n for label, n in at.items()
               if ":empty.memory_format (" in label and label.endswith("float32"))


def test_the_measurements_cover_the_one_gpu_step() -> None:
    assert len(CASES) == 52 and all(c["data"] == 1 for c in CASES)
    assert {c["checkpointing"] for c in CASES} == {"none", "full", "selective"}
    assert {c["param_dtype"] for c in CASES} == {"bf16", "fp32"}
    assert sum(bool(c.get("fresh")) for c in CASES) == 26


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_one_gpu_step_peak_matches_torchtitan(case: dict[str, Any]) -> None:
    m = _memory(case)
    # accumulating: the sharded gradients are resident (in the harness and in m.gradients);
    # fresh: they are made during the step and count in the measured delta
    predicted = m.tensor_peak - m.weights - m.optimizer - (0 if case.get("fresh") else
                                                           m.gradients)
    measured = case["delta"] + case["batch_bytes"]
    # within 0.1%: the residue is the positions tensor (b s x 8 bytes, resident in the
    # harness, counted by the model with checkpointing only) and the targets' scalar
    assert predicted == pytest.approx(measured, rel=1e-3), (m.peak_moment, case["at_peak"])
    assert (m.peak_moment == "optimizer_step") == (case["peak_phase"] == "optimizer")


@pytest.mark.parametrize("case", [c for c in CASES if _flat_fp32(c["at_backward_peak"])],
                         ids=_id)
def test_backward_peak_is_exact_where_fsdp2_buffers_peak(case: dict[str, Any]) -> None:
    # where the backward's own peak holds a flat fp32 buffer (a block's moment, a unit's
    # reduce), the moment is the measured bytes above the states and the batch, to the byte
    assert _moment(case) == case["backward_delta"]


def test_backward_peaks_of_every_kind_were_measured() -> None:
    # the loss's moments (no flat buffer) and FSDP2's (a block's MLP or end beside the
    # previous unit's reduce input; a unit's reduce: three copies, one a division)
    loss, block, reduce = 0, 0, 0
    for case in CASES:
        at = case["at_backward_peak"]
        if not _flat_fp32(at):
            loss += 1
        elif any(":div.Tensor (" in label for label in at):
            reduce += 1
        else:
            block += 1
    assert loss >= 10 and block >= 10 and reduce >= 10


def test_a_unit_reduce_holds_three_fp32_copies_and_nothing_gathered() -> None:
    # a block's or the head unit's reduce: its fp32 input and output (flat, 'empty') and the
    # output's source ``input / 1.0`` (div), each the unit's size; no gathered parameters
    # (resharded before the reduce), no unsharded gradients (freed after the copy-in)
    seen = 0
    for case in CASES:
        at = case["at_backward_peak"]
        divided = [n for label, n in at.items() if ":div.Tensor (" in label]
        if not divided or case.get("fresh"):
            continue
        assert len(divided) == ONE_RANK_DIVIDE_COPY, _id(case)
        assert _flat_fp32(at) == 2 * divided[0], _id(case)
        assert not any("fsdp_alloc" in label for label in at), _id(case)
        seen += 1
    assert seen >= 5


def test_a_block_backward_holds_one_block_gathered() -> None:
    # FSDP2's one-rank unshard only records an event; the copy is the unit's own
    # wait_for_unshard: at a block's MLP or end exactly one block is gathered, no prefetch
    seen = 0
    for case in CASES:
        at = case["at_backward_peak"]
        gathered = sum(n for label, n in at.items() if "fsdp_alloc" in label)
        if not gathered:
            continue
        cfg = GPTConfig.model_validate(case["config"])
        e = 2 if case["param_dtype"] == "bf16" else 4
        assert gathered == titan_block_params(cfg) * e, _id(case)
        seen += 1
    assert seen >= 10


def test_block_reduce_moment_by_hand() -> None:
    # gqa-3 (d 160, H 4, K 2, hd 40, F 448, V 384), bf16, no checkpointing, b 2, s 96 (T 192),
    # CPU, accumulating. Block parameters: wqkv 160 x 320 = 51,200, wo 25,600, w1 w2 w3
    # 3 x 71,680, two norms 320: 292,160. The last block's reduce, its backward done: blocks 0
    # and 1 keep all their saves (CPU norms: fp32 upcast and normalised x 2 x 122,880 and rsqrt
    # 768, each norm: 2 x 246,528; wqkv and MLP inputs 2 x 61,440; RoPE rows 192 x 20 x 8 =
    # 30,720; q k v 192 x 320 x 2 = 122,880, output 61,440, logsumexp 2 x 4 x 96 x 4 = 3,072;
    # w1 w3 silu 3 x 192 x 448 x 2 = 516,096; w2's input 172,032): 2 x 1,522,176; the gradient
    # it passes down 192 x 160 x 2 = 61,440; the loss and its gradient 8; the reduce's fp32
    # input, output and input / 1.0: 3 x 292,160 x 4 = 3,505,920. Measured: 6,611,720.
    case = next(c for c in CASES if _id(c) == "gqa-3-none-bf16-2x96-acc")
    expected = 2 * 1_522_176 + 61_440 + 8 + 3 * 292_160 * 4
    assert _moment(case) == expected == case["backward_delta"] == 6_611_720
    # two ranks instead: the MLP of the last block with FSDP2's prefetch peaks, not the reduce
    cfg = GPTConfig.model_validate(case["config"])
    two = titan_block_backward_moment(cfg, 2, 96, precision="bf16-mixed",
                                      checkpointing="none", device="cpu", layers=3, data=2)
    assert two != expected


def test_fp32_checkpointed_block_holds_its_input_once() -> None:
    # fp32 on CPU: the composite norm's fp32 upcast of an fp32 input is the input itself,
    # the block input the checkpoint holds. gqa-3 full fp32, b 2, s 96: block 1's MLP, its
    # rebuilt saves counted without a second copy of its input (192 x 160 x 4 = 122,880).
    case = next(c for c in CASES if _id(c) == "gqa-3-full-fp32-2x96-acc")
    assert _moment(case) == case["backward_delta"] == 6_075_400


def test_one_rank_mesh_in_flight_by_hand() -> None:
    # TINY-like gqa-3 shape: the head unit (384 x 160 + 160 = 61,600 parameters) stays
    # gathered in the param dtype through the loss; a block's backward holds that block
    # gathered (292,160 x e), its unsharded gradients (e) and, with bf16 params, their fp32
    # copy for the reduce, and no prefetched block
    cfg = GPTConfig.model_validate(CASES[0]["config"])
    P, head = 292_160, 61_600
    assert titan_fsdp_in_flight(cfg, "bf16-mixed", data=1, one_rank_mesh=True) == {
        "forward_end": head * 2, "backward_start": head * 2,
        "recompute": P * 2 + P * 2 + P * 4}
    assert titan_fsdp_in_flight(cfg, "32-true", data=1, one_rank_mesh=True)["recompute"] \
        == P * 4 + P * 4
    # tensor parallelism's callers keep their one-data-rank reading: nothing in flight
    assert titan_fsdp_in_flight(cfg, "bf16-mixed", data=1) == {
        "forward_end": 0, "backward_start": 0, "recompute": 0}
    assert titan_tp_fsdp_in_flight(cfg, "bf16-mixed", data=1, tensor=2)["recompute"] == 0


def test_one_gpu_is_accepted_in_both_precisions() -> None:
    cfg = GPTConfig.model_validate(CASES[0]["config"])
    for precision in ("bf16-mixed", "32-true"):
        for parallelism in (None, Parallelism(), Parallelism(data=1, fsdp="full_shard")):
            m = training_memory(cfg, micro_batch_size=2, seq_len=96, precision=precision,
                                implementation="torchtitan", parallelism=parallelism)
            assert m.tensor_peak > m.weights + m.gradients + m.optimizer


@pytest.mark.parametrize(("options", "pattern"), [
    ({"compile": True}, r"on one GPU is not modelled yet with compile=True: torchtitan 0\.3\.0 "
                        r"still applies FSDP2"),
    ({"loss": "chunked"}, r"loss='chunked' with implementation='torchtitan' on one "
                          r"data-parallel rank is not modelled yet"),
])
def test_one_gpu_refusals_by_name(options: dict[str, Any], pattern: str) -> None:
    cfg = GPTConfig.model_validate(CASES[0]["config"])
    for precision in ("bf16-mixed", "32-true"):
        with pytest.raises(ScaleplanError, match=pattern):
            training_memory(cfg, micro_batch_size=2, seq_len=96, precision=precision,
                            implementation="torchtitan", **options)
    # on two ranks both stay modelled
    training_memory(cfg, micro_batch_size=2, seq_len=96, implementation="torchtitan",
                    parallelism=Parallelism(data=2, fsdp="full_shard"), **options)


def test_chunked_loss_refused_on_one_data_rank_under_tp() -> None:
    # TP alone still runs FSDP2 on a one-rank mesh: the chunked loss was measured whole on
    # two or more FSDP2 ranks only (tests/test_titan_chunked_steps.py)
    cfg = GPTConfig.model_validate(CASES[0]["config"])
    with pytest.raises(ScaleplanError, match="on one data-parallel rank is not modelled yet"):
        training_memory(cfg, micro_batch_size=2, seq_len=96, implementation="torchtitan",
                        loss="chunked", parallelism=Parallelism(tensor=2,
                                                                sequence_parallel=True))


@pytest.mark.torch
def test_live_one_rank_step_matches() -> None:
    pytest.importorskip("torchtitan")
    from scaleplan.reference.titan_fsdp_step import measure_titan_fsdp_step

    row = measure_titan_fsdp_step("mha-2", data=1, checkpointing="none", micro_batch_size=1,
                                  seq_len=32, backward_peak=True)
    # the head unit's reduce: three fp32 copies of (1500 x 128 + 128) values beside the
    # two blocks' saves
    assert _flat_fp32(row["at_backward_peak"]) == 2 * (1500 * 128 + 128) * 4
    assert _moment(row) == row["backward_delta"]


@pytest.mark.torch
def test_live_fp32_checkpointed_block_at_two_ranks() -> None:
    # the CPU norm's fp32 "upcast" of an fp32 input is the input itself at any rank count:
    # gqa-3 full fp32 on 2 ranks, the backward's own peak to the byte (7,244,040 measured)
    pytest.importorskip("torchtitan")
    from scaleplan.reference.titan_fsdp_step import measure_titan_fsdp_step

    row = measure_titan_fsdp_step("gqa-3", data=2, checkpointing="full", param_dtype="fp32",
                                  backward_peak=True)
    cfg = GPTConfig.model_validate(row["config"])
    assert titan_block_backward_moment(cfg, 2, 96, precision="32-true", checkpointing="full",
                                       device="cpu", layers=3, data=2) == row["backward_delta"]

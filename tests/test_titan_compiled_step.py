"""torchtitan's compiled FSDP2 step measured whole, replayed without torch.

tests/data/titan_compiled_steps.json holds whole steps of torchtitan 0.3.0's Llama 3 with
its per-block compile (activation checkpointing, then ``apply_compile``, then
``apply_fsdp_to_decoder``, as ``parallelize_llama`` applies them) on rank 0 of a fake process
group, measured by the CPU allocator's profiler events
(`scaleplan.reference.titan_compiled_step`, which sees inductor's buffers and FSDP2's storage
resizes), with and without gradient accumulation. Two eager steps check the method against
the dispatch-level tracker's committed numbers (docs/validation/torchtitan-fsdp-steps.json).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.titan_compiled_terms import (
    CPU_RNG_STATE_BYTES,
    titan_compiled_end_moment,
    titan_compiled_mlp_moment,
)
from scaleplan.memory.titan_fsdp_moments import titan_block_backward_moment
from scaleplan.memory.training import training_memory
from scaleplan.model.config import GPTConfig

ROOT = Path(__file__).resolve().parents[1]
CASES: list[dict[str, Any]] = json.loads(
    (ROOT / "tests" / "data" / "titan_compiled_steps.json").read_text())["cases"]
EAGER = json.loads((ROOT / "docs" / "validation" / "torchtitan-fsdp-steps.json").read_text())
COMPILED = [c for c in CASES if c["compiled"]]
PRECISION = {"bf16": "bf16-mixed", "fp32": "32-true"}
LLAMA = {"bias": False, "mlp": "swiglu", "norm": "rmsnorm", "position": "rope",
         "tie_embeddings": False}
# gqa-3: d 160, H 4, K 2, hd 40, F 448, V 384, 3 blocks; its block's parameters: wqkv 51,200,
# wo 25,600, w1 w2 w3 3 x 71,680, two norms 2 x 160 = 292,160
GQA3 = GPTConfig(n_layer=3, n_head=4, n_kv_head=2, n_embd=160, mlp_hidden=448, vocab_size=384,
                 block_size=256, **LLAMA)  # type: ignore[arg-type]


def _key(c: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(c[k] for k in ("name", "data", "checkpointing", "micro_batch_size", "seq_len",
                                "param_dtype", "compiled", "fresh"))


def _case(*key: Any) -> dict[str, Any]:
    return next(c for c in CASES if _key(c) == key)


def _memory(case: dict[str, Any]) -> Any:
    cfg = GPTConfig.model_validate(case["config"])
    return training_memory(cfg, micro_batch_size=case["micro_batch_size"],
                           seq_len=case["seq_len"], precision=PRECISION[case["param_dtype"]],
                           checkpointing=case["checkpointing"], device="cpu",
                           implementation="torchtitan", optimizer_impl="foreach",
                           compile=case["compiled"],
                           parallelism=Parallelism(data=case["data"], fsdp="full_shard"),
                           gradient_accumulation=not case["fresh"])


def test_the_measured_grid() -> None:
    assert len(COMPILED) >= 20
    assert {c["checkpointing"] for c in COMPILED} == {"none", "full", "selective"}
    assert {c["data"] for c in COMPILED} == {2, 4, 8}
    assert {c["param_dtype"] for c in COMPILED} == {"bf16", "fp32"}
    assert {c["fresh"] for c in COMPILED} == {False, True}


def test_the_eager_steps_match_the_dispatch_tracker() -> None:
    # the same eager steps measured by the live-bytes tracker with FSDP2's resizes wrapped:
    # the profiler sees the resizes itself (fresh, no checkpointing: to the byte); under full
    # checkpointing it also sees the CPU generator state each earlier block's checkpoint
    # keeps (torch.get_rng_state(), made outside the dispatcher): two blocks below the third
    fields = ("name", "data", "checkpointing", "micro_batch_size", "seq_len", "param_dtype")
    eager = {(*(c[k] for k in fields), c.get("fresh", False)): c
             for c in EAGER["cases"] + EAGER["fresh_cases"]
             if c.get("optimizer_impl", "foreach") == "foreach"}
    fresh = _case("gqa-3", 2, "none", 2, 96, "bf16", False, True)
    assert fresh["delta"] == eager[(*_key(fresh)[:6], True)]["delta"] == 6_653_640
    full = _case("gqa-3", 2, "full", 2, 96, "bf16", False, False)
    assert full["delta"] == eager[(*_key(full)[:6], False)]["delta"] + 2 * CPU_RNG_STATE_BYTES


@pytest.mark.parametrize("case", COMPILED, ids=lambda c: "-".join(map(str, _key(c)[:6])) + (
    "-fresh" if c["fresh"] else ""))
def test_compiled_step_peak_matches_torchtitan(case: dict[str, Any]) -> None:
    m = _memory(case)
    # the model's moments count the ids and positions the measurement holds resident
    predicted = m.tensor_peak - m.weights - m.optimizer - (0 if case["fresh"] else m.gradients)
    measured = case["delta"] + case["batch_bytes"]
    # within 0.05%: the positions (b s x 8 bytes, counted by the model under checkpointing
    # only) and the loss's 4-byte scalar at the optimizer step
    assert predicted == pytest.approx(measured, rel=5e-4), (m.peak_moment, case["peak_phase"])
    assert (m.peak_moment == "optimizer_step") == (case["peak_phase"] == "optimizer")


def _unit_inputs(case: dict[str, Any]) -> int:
    """How many flat fp32 reduce-scatter inputs (a block's or the head unit's) are live at
    the measured peak."""
    cfg = GPTConfig.model_validate(case["config"])
    from scaleplan.memory.titan_terms import titan_block_params

    flat = {titan_block_params(cfg) * 4, (cfg.vocab_size + 1) * cfg.n_embd * 4}
    return sum(n for size, n in Counter(case["at_peak"]).items() if size in flat)


def test_backward_peaks_are_exact() -> None:
    exact = 0
    for case in COMPILED:
        if case["peak_phase"] != "backward":
            continue
        if case["param_dtype"] == "bf16":  # (in fp32 a gathered block has the same size)
            assert _unit_inputs(case) == 1  # each at a unit's backward: one flat fp32 input
        cfg = GPTConfig.model_validate(case["config"])
        moment = titan_block_backward_moment(
            cfg, case["micro_batch_size"], case["seq_len"],
            precision=PRECISION[case["param_dtype"]], checkpointing=case["checkpointing"],
            device="cpu", layers=cfg.n_layer, data=case["data"], fresh=case["fresh"],
            compiled=True)
        assert moment == case["delta"], _key(case)
        exact += 1
    assert exact >= 15


def test_full_checkpointing_by_hand() -> None:
    # gqa-3, b 2, s 96 (T 192), bf16, 2 ranks, accumulating: the middle block's MLP peaks
    # - block 0 keeps its input 192 x 160 x 2 = 61,440 and its CPU generator state 5,056
    # - block 1 holds its input and its whole compiled recompute: input, two rstd 2 x 768,
    #   wqkv's input 61,440, q 61,440, k and v 2 x 30,720, SDPA's output 61,440 and
    #   logsumexp 4 x 96 x 2 x 4 = 3,072, wo's input 61,440, the MLP's input 61,440, w1 w3 out
    #   and w2's input 3 x 192 x 448 x 2 = 516,096, the RoPE rows 192 x 20 x 8 = 30,720:
    #   981,504; and three b s F gradients 516,096
    # - the incoming gradient 61,440 and the loss's 8 bytes
    # - FSDP2: block 2's fp32 reduce-scatter input 292,160 x 4 = 1,168,640, block 1
    #   gathered and block 0 prefetched 2 x 584,320; w2's weight gradient not made yet
    by_hand = (61_440 + 5_056) + 981_504 + 516_096 + 61_448 + 1_168_640 + 2 * 584_320
    assert by_hand == 3_962_824
    assert _case("gqa-3", 2, "full", 2, 96, "bf16", True, False)["delta"] == by_hand
    assert titan_compiled_mlp_moment(GQA3, 2, 96, e=2, device="cpu",
                                     checkpointing="full") == (66_496, 1_497_600, False)


def test_no_checkpointing_by_hand() -> None:
    # gqa-3, 2 x 96, bf16, 2 ranks, accumulating: the last block's MLP: every block's
    # compiled saves (981,504 each, above), w2's input gradient 172,032, the incoming
    # gradient and the loss 61,448; FSDP2: the head unit's fp32 reduce-scatter input
    # (384 x 160 + 160) x 4 = 246,400, block 2 gathered and block 1 prefetched 2 x 584,320,
    # w2's weight gradient 160 x 448 x 2 = 143,360
    by_hand = 3 * 981_504 + 172_032 + 61_448 + 246_400 + 2 * 584_320 + 143_360
    assert by_hand == 4_736_392
    assert _case("gqa-3", 2, "none", 2, 96, "bf16", True, False)["delta"] == by_hand
    # without accumulation the first block, with the head's and blocks 1 and 2's shards
    # (61,600 / 2 x 4 = 123,200 and 2 x 292,160 / 2 x 4), holds fewer saves: the second
    # block peaks (block 2's shard made, its reduce-scatter input 1,168,640 live)
    fresh = 2 * 981_504 + 172_032 + 61_448 + 1_168_640 + 2 * 584_320 + 143_360 \
        + 123_200 + 584_320
    assert _case("gqa-3", 2, "none", 2, 96, "bf16", True, True)["delta"] == fresh == 5_384_648


def test_a_block_end_by_hand() -> None:
    # gqa-3, 1 x 16 tokens (T 16), no checkpointing, accumulating: block 1's end, every
    # weight gradient of it made (bf16, 584,320): block 0's saves (input, wqkv's input, q,
    # SDPA's output, wo's and the MLP's inputs 6 x 5,120; k, v, RoPE rows 3 x 2,560;
    # logsumexp 256; two rstd 2 x 64; w1 w3 w2-input 3 x 14,336: 81,792), the input gradient
    # block 1 returns 5,120 and wqkv's output gradient 16 x 320 x 2 = 10,240, the incoming
    # gradient and the loss 5,128; FSDP2 1,168,640 + 584,320 (gathered) + 584,320
    # (prefetched) + 584,320 (made)
    by_hand = 81_792 + 5_120 + 10_240 + 5_128 + 1_168_640 + 3 * 584_320
    assert _case("gqa-3", 2, "none", 1, 16, "bf16", True, False)["delta"] == by_hand
    assert titan_compiled_end_moment(GQA3, 1, 16, e=2, checkpointing="none") == 15_360
    # under full checkpointing one b s F tensor (16 x 448 x 2 = 14,336) instead of wqkv's
    # gradient; block 0 keeps its input and generator state
    full = 5_120 + 5_056 + 5_120 + 14_336 + 5_128 + 1_168_640 + 3 * 584_320
    assert _case("gqa-3", 2, "full", 1, 16, "bf16", True, False)["delta"] == full
    assert titan_compiled_end_moment(GQA3, 1, 16, e=2, checkpointing="full") == 19_456


def test_selective_mlp_side_by_hand() -> None:
    # gqa-3, 2 x 96, bf16, 2 ranks: the middle block's MLP. A block's selective cache
    # (compiled): input 61,440, wqkv's output 192 x 320 x 2 = 122,880, SDPA's output and
    # logsumexp 64,512, w1's output 172,032: 420,864. Block 1 holds its cache, the MLP side of
    # its recompute (the second norm's rstd 768, its input and output 2 x 61,440, w3's output
    # and w2's input 2 x 172,032) and three b s F gradients
    kept, own, w2_made = titan_compiled_mlp_moment(GQA3, 2, 96, e=2, device="cpu",
                                                   checkpointing="selective")
    assert (kept, own, w2_made) == (420_864, 420_864 + 768 + 122_880 + 344_064 + 516_096,
                                    False)
    by_hand = kept + own + 61_448 + 1_168_640 + 2 * 584_320
    assert _case("gqa-3", 2, "selective", 2, 96, "bf16", True, False)["delta"] == by_hand


def test_fresh_compiled_step_on_eight_ranks_by_hand() -> None:
    # gqa-3, 2 x 96, bf16, full checkpointing, 8 ranks, no accumulation: the middle block's
    # MLP (above: 3,962,824 with accumulation) beside the shards made by then, each parameter
    # padded to 8 rows: the head unit's (384 x 160 + 160) / 8 x 4 = 30,800 and block 2's
    # 292,160 / 8 x 4 = 146,080
    by_hand = 3_962_824 + 30_800 + 146_080
    assert _case("gqa-3", 8, "full", 2, 96, "bf16", True, True)["delta"] == by_hand
    kw: dict[str, Any] = dict(micro_batch_size=2, seq_len=96, precision="bf16-mixed",
                              checkpointing="full", implementation="torchtitan", compile=True,
                              device="cpu", optimizer_impl="foreach",
                              parallelism=Parallelism(data=8, fsdp="full_shard"))
    fresh = training_memory(GQA3, gradient_accumulation=False, **kw)
    assert fresh.peak_moment == "recompute"
    batch = 2 * 192 * 8  # token ids and positions, resident in the measurement
    assert fresh.tensor_peak - fresh.weights - fresh.optimizer == by_hand + batch


@pytest.mark.torch
@pytest.mark.slow
def test_live_eager_step_matches_the_dispatch_tracker() -> None:
    pytest.importorskip("torchtitan")
    from scaleplan.reference.titan_compiled_step import measure_titan_compiled_step

    row = measure_titan_compiled_step("gqa-3", data=2, checkpointing="none", compile=False,
                                      fresh=True)
    assert row["delta"] == 6_653_640  # torchtitan-fsdp-steps.json's fresh_cases, the same step

"""What the caching allocator keeps for FSDP2's side streams, against torchtitan's step.

docs/validation/torchtitan-fsdp-streams.json holds whole steps of torchtitan 0.3.0's Llama 3
under its own ``apply_fsdp_to_decoder`` on rank 0 of a fake process group
(`scaleplan.reference.titan_fsdp_streams`): every allocation is put on the stream current when
it was made (``torch.cpu.current_stream()`` follows FSDP2's stream contexts on CPU), and each
stream's peak over the tracked step is recorded. `scaleplan.memory.titan_streams` must give each
side stream's peak and the sum of the three streams' peaks less the step's peak
(``stream_cache``), torch-free.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scaleplan.memory.limits import memory_grid
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.stage import stage_parts
from scaleplan.memory.step_switches import NO_SWITCHES
from scaleplan.memory.titan_fsdp_moments import titan_head_unit_moment
from scaleplan.memory.titan_streams import (
    titan_copy_in_peak,
    titan_reduce_scatter_peak,
    titan_stream_cache,
)
from scaleplan.memory.titan_terms import titan_units
from scaleplan.memory.training import training_memory
from scaleplan.model.config import GPTConfig

DATA = Path(__file__).resolve().parents[1] / "docs" / "validation" / \
    "torchtitan-fsdp-streams.json"
CASES: list[dict[str, Any]] = json.loads(DATA.read_text())["cases"]
COMPILED: list[dict[str, Any]] = json.loads(DATA.read_text())["compiled_cases"]
PRECISION = {"bf16": "bf16-mixed", "fp32": "32-true"}
LLAMA31_8B = GPTConfig(n_layer=32, n_head=32, n_kv_head=8, n_embd=4096, mlp_hidden=14336,
                       vocab_size=128256, block_size=8192, bias=False, mlp="swiglu",
                       norm="rmsnorm", position="rope", tie_embeddings=False)


def _case_id(c: dict[str, Any]) -> str:
    return (f"{c['name']}-{c['data']}-{c['checkpointing']}-{c['param_dtype']}-"
            f"{'fresh' if c['fresh'] else 'accum'}-{c['seq_len']}")


def _parts(case: dict[str, Any], compiled: bool = False) -> tuple[Any, ...]:
    cfg = GPTConfig.model_validate(case["config"])
    data = case["data"]
    par = Parallelism(data=data, fsdp="full_shard") if data > 1 else Parallelism()
    switches = replace(NO_SWITCHES, gradient_accumulation=not case["fresh"])
    W, G, O, _, _, _, _, moments = stage_parts(
        cfg, case["micro_batch_size"], case["seq_len"], PRECISION[case["param_dtype"]],
        "adamw", "flash", case["checkpointing"], "cpu", par,
        case.get("optimizer_impl", "foreach"), True, "only", compiled=compiled,
        implementation="torchtitan", switches=switches)
    return cfg, W, G, O, moments


def _cache(case: dict[str, Any], compiled: bool = False) -> Any:
    cfg, W, G, O, moments = _parts(case, compiled)
    return titan_stream_cache(cfg, case["micro_batch_size"], case["seq_len"],
                              precision=PRECISION[case["param_dtype"]],
                              checkpointing=case["checkpointing"], device="cpu",
                              data=case["data"], layers=cfg.n_layer, compiled=compiled,
                              fresh=case["fresh"], states=(W, G, O), moments=moments)


def test_the_measurements_cover_the_cases() -> None:
    assert len(CASES) == 20
    assert {c["data"] for c in CASES} == {1, 2, 4, 8}
    assert {c["fresh"] for c in CASES} == {True, False}
    assert {c["param_dtype"] for c in CASES} == {"bf16", "fp32"}
    assert {c["checkpointing"] for c in CASES} == {"none", "full", "selective"}
    # more than one rank: all three streams allocate; one rank: no all-gather stream
    for c in CASES:
        expected = {"default", "reduce_scatter"} | (
            {"all_gather_copy_in"} if c["data"] > 1 else set())
        assert set(c["stream_peaks"]) == expected, _case_id(c)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_each_side_stream_peak_matches_torchtitan(case: dict[str, Any]) -> None:
    cfg, _, G, _, _ = _parts(case)
    e = titan_copy_in_peak(cfg, PRECISION[case["param_dtype"]], data=case["data"],
                           layers=cfg.n_layer)
    rs = titan_reduce_scatter_peak(cfg, data=case["data"], layers=cfg.n_layer,
                                   fresh=case["fresh"], gradients=G)
    assert e == case["stream_peaks"].get("all_gather_copy_in", 0)
    assert rs == case["stream_peaks"]["reduce_scatter"]


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_stream_cache_matches_torchtitan(case: dict[str, Any]) -> None:
    # measured: each stream's own peak, summed, less the step's peak of live bytes
    measured = sum(case["stream_peaks"].values()) - (case["resident"] + case["delta"])
    assert _cache(case) == measured > 0


def test_compiled_steps_side_streams_match_torchtitan() -> None:
    # torchtitan's per-block compile, measured by the CPU allocator's profiler events (above
    # what was live when the step began: the resident gradients are added back to their stream)
    assert len(COMPILED) == 20 and all(c["compiled"] for c in COMPILED)
    for case in COMPILED:
        cfg, _, G, _, _ = _parts(case, compiled=True)
        peaks = case["stream_peaks"]
        assert titan_copy_in_peak(cfg, PRECISION[case["param_dtype"]], data=case["data"],
                                  layers=cfg.n_layer) == peaks["all_gather_copy_in"]
        assert titan_reduce_scatter_peak(cfg, data=case["data"], layers=cfg.n_layer,
                                         fresh=case["fresh"], gradients=G) \
            == peaks["reduce_scatter"] + case["resident_gradients"]
        assert case["resident_gradients"] == (0 if case["fresh"] else G)


def test_compiled_steps_stream_cache_matches_torchtitan() -> None:
    # the sum of the streams' peaks less the step's peak (the residents cancel): 15 of the 20
    # to the byte, the rest within 2,048 bytes (0.1% of the step's peak above its residents),
    # the compiled moments' own residue (tests/test_titan_compiled_step.py)
    exact = 0
    for case in COMPILED:
        measured = sum(case["stream_peaks"].values()) - case["delta"]
        cache = _cache(case, compiled=True)
        assert abs(cache - measured) <= min(2048, 1e-3 * case["delta"]), case["name"]
        exact += cache == measured
    assert exact == 15


def test_copy_in_peak_by_hand() -> None:
    # gqa-3 (d 160, H 4, K 2, hd 40, F 448, V 384) on 2 ranks, bf16: a block has 292,160
    # parameters (wqkv 320 x 160, wo 160 x 160, w1 w2 w3 3 x 448 x 160, two norms 2 x 160), so
    # its all-gather output is 292,160 x 2 = 584,320 bytes and its cast shard 146,080 x 2 =
    # 292,160. Two consecutive blocks: 2 x 584,320 + 292,160 = 1,460,800, more than the
    # embedding's (384 x 160 x 2 = 122,880) beside block 0, or the last block's beside
    # [norm, lm_head]'s (61,600 x 2 = 123,200 and its 30,800 x 2 = 61,600)
    cfg = GPTConfig.model_validate(CASES[2]["config"])
    assert titan_copy_in_peak(cfg, "bf16-mixed", data=2, layers=3) == 1_460_800
    # fp32 parameters are all-gathered as they are: no cast shard, 4 bytes a value
    assert titan_copy_in_peak(cfg, "32-true", data=2, layers=3) == 2 * 292_160 * 4
    assert titan_copy_in_peak(cfg, "bf16-mixed", data=1, layers=3) == 0  # one-rank mesh


def test_reduce_scatter_peak_by_hand() -> None:
    # gqa-3, fp32 shards: [norm, lm_head] 61,600 x 4 / ranks, a block 292,160 x 4 / ranks, the
    # embedding 61,440 x 4 / ranks (every row count divides by 2)
    cfg = GPTConfig.model_validate(CASES[2]["config"])
    total = (61_600 + 3 * 292_160 + 61_440) * 4
    assert titan_reduce_scatter_peak(cfg, data=2, layers=3, fresh=True, gradients=0) \
        == total // 2
    # accumulating: the resident gradients and one block's new shard beside them
    assert titan_reduce_scatter_peak(cfg, data=2, layers=3, fresh=False,
                                     gradients=total // 2) == total // 2 + 292_160 * 4 // 2
    # one rank, fresh: at block 0's reduce the shards of [norm, lm_head] and blocks 2, 1, 0,
    # and block 0's divide copy: 61,600 x 4 + 4 x 1,168,640 = 4,920,960
    assert titan_reduce_scatter_peak(cfg, data=1, layers=3, fresh=True, gradients=0) \
        == 61_600 * 4 + 4 * 292_160 * 4
    assert [len(u) for u in titan_units(cfg, 3)] == [1, 7, 7, 7, 2]


def test_llama31_8b_on_8_gpus_by_hand() -> None:
    # torchtitan's published 8-GPU run (local batch 2, seq 8192, selective AC, no accumulation)
    # peaks at the loss's backward, all of it on the default stream. The side streams' peaks
    # then stand beside it: every fp32 shard, 8,030,261,248 x 4 / 8 = 4,015,130,624 (all row
    # counts divide by 8), and the last block's bf16 all-gather output (218,112,000 x 2)
    # beside [norm, lm_head]'s (525,340,672 x 2) and its cast shard (65,667,584 x 2):
    # 1,618,240,512
    m = training_memory(LLAMA31_8B, micro_batch_size=2, seq_len=8192, precision="bf16-mixed",
                        checkpointing="selective", hold_logits=False,
                        parallelism=Parallelism(data=8, fsdp="full_shard"),
                        implementation="torchtitan", gradient_accumulation=False)
    assert m.peak_moment == "backward_start"
    assert m.stream_cache == 4_015_130_624 + 1_618_240_512
    # total = tensor peak + the cache + the CUDA context + 5% slack of both
    reserved = m.tensor_peak + m.stream_cache
    assert m.overhead == 512 * 2**20 + m.stream_cache + math.ceil(0.05 * reserved)
    assert m.total == m.tensor_peak + m.overhead


def test_only_torchtitan_on_a_gpu_has_a_stream_cache() -> None:
    par = Parallelism(data=8, fsdp="full_shard")
    common: dict[str, Any] = dict(micro_batch_size=1, seq_len=1024, parallelism=par)
    assert training_memory(GPTConfig.preset("gpt2"), **common).stream_cache == 0
    cfg = LLAMA31_8B.model_copy(update={"n_layer": 2})
    assert training_memory(cfg, implementation="torchtitan", device="cpu",
                           **common).stream_cache == 0  # the CPU allocator caches nothing
    gpu = training_memory(cfg, implementation="torchtitan", **common)
    assert gpu.stream_cache > 0


def test_memory_grid_counts_the_stream_cache() -> None:
    cfg = LLAMA31_8B.model_copy(update={"n_layer": 2})
    par = Parallelism(data=8, fsdp="full_shard")
    b, s = np.array([[1], [2]]), np.array([512, 2048])
    grid = memory_grid(cfg, micro_batch_size=b, seq_len=s, parallelism=par,
                       implementation="torchtitan", gradient_accumulation=False)
    for i, bi in enumerate((1, 2)):
        for j, sj in enumerate((512, 2048)):
            m = training_memory(cfg, micro_batch_size=bi, seq_len=sj, parallelism=par,
                                implementation="torchtitan", gradient_accumulation=False)
            assert m.stream_cache > 0 and grid[i, j] == m.total


@pytest.mark.torch
def test_a_step_measured_now_matches() -> None:
    pytest.importorskip("torchtitan")
    from scaleplan.reference.titan_fsdp_streams import measure_titan_fsdp_streams

    row = measure_titan_fsdp_streams("mha-2", 2, "none", 1, 32, True, "fused", "bf16")
    case = next(c for c in CASES if _case_id(c) == _case_id(row))
    assert row["stream_peaks"] == case["stream_peaks"]
    assert row["resident"] + row["delta"] == case["resident"] + case["delta"]


def test_the_plan_report_shows_the_stream_cache_inside_the_overhead() -> None:
    from scaleplan.planning.planner import plan
    from scaleplan.planning.report import format_plan
    from scaleplan.units import format_gib

    par = Parallelism(data=8, fsdp="full_shard")
    cfg = LLAMA31_8B.model_copy(update={"n_layer": 2})
    titan = plan(cfg, "H100 SXM", world_size=8, parallelism=par, seq_len=1024,
                 tokens_per_step=8 * 1024, implementation="torchtitan",
                 gradient_accumulation=False)
    assert titan.memory is not None and titan.memory.stream_cache > 0
    line = next(x for x in format_plan(titan).splitlines() if "of which FSDP2 streams" in x)
    assert line.split()[-2:] == format_gib(titan.memory.stream_cache, width=6).split()
    nano = plan(GPTConfig.preset("gpt2"), "H100 SXM", world_size=8, parallelism=par,
                seq_len=1024, tokens_per_step=8 * 1024)
    assert "FSDP2 streams" not in format_plan(nano)


MHA2 = GPTConfig(n_layer=2, n_head=4, n_kv_head=4, n_embd=128, mlp_hidden=352, vocab_size=1500,
                 bias=False, mlp="swiglu", norm="rmsnorm", position="rope",
                 tie_embeddings=False)


@pytest.mark.parametrize("checkpointing", ["none", "full", "selective"])
@pytest.mark.parametrize("fresh", [True, False])
def test_training_memory_takes_its_steps_stream_cache(checkpointing: str, fresh: bool) -> None:
    # on a GPU, the breakdown's stream_cache is titan_stream_cache of the same step: its
    # checkpointing, its compile, with or without accumulation
    par = Parallelism(data=2, fsdp="full_shard")
    switches = replace(NO_SWITCHES, gradient_accumulation=not fresh)
    caches = []
    for compiled in (False, True):
        W, G, O, _, _, _, _, moments = stage_parts(
            MHA2, 1, 16, "bf16-mixed", "adamw", "flash", checkpointing, "cuda", par, None, True,
            "only", compiled=compiled, implementation="torchtitan", switches=switches)
        expected = titan_stream_cache(MHA2, 1, 16, precision="bf16-mixed",
                                      checkpointing=checkpointing, device="cuda", data=2,
                                      layers=2, compiled=compiled, fresh=fresh,
                                      states=(W, G, O), moments=moments)
        m = training_memory(MHA2, micro_batch_size=1, seq_len=16, checkpointing=checkpointing,
                            parallelism=par, implementation="torchtitan", compile=compiled,
                            gradient_accumulation=not fresh)
        assert m.stream_cache == expected > 0
        caches.append(expected)
    if checkpointing == "none":  # with few tokens a compiled block's moments differ
        assert caches[0] != caches[1]


def test_the_chunked_loss_moments_are_not_split_by_stream() -> None:
    # torchtitan's chunked loss peaks in the head's chunk loop (head_backward), whose side
    # streams were not measured: counted as if both were at their peaks then, it adds nothing
    par = Parallelism(data=8, fsdp="full_shard")
    cfg = GPTConfig(n_layer=4, n_head=8, n_kv_head=4, n_embd=512, mlp_hidden=1408,
                    vocab_size=32000, bias=False, mlp="swiglu", norm="rmsnorm", position="rope",
                    tie_embeddings=False)
    m = training_memory(cfg, micro_batch_size=1, seq_len=256, parallelism=par,
                        implementation="torchtitan", loss="chunked")
    assert m.peak_moment == "head_backward" and m.stream_cache == 0
    # with fewer tokens too. The chunk loop reduce-scatters lm_head's gradient in the forward
    # (tests/test_titan_chunked_steps.py), so the head unit's backward reduce-scatter, the
    # standard loss's worst default-stream moment at 64 tokens, holds the final norm's
    # gradient alone: (V d) x 4 of fp32 input, V d x 2 of bf16 gradient and V d x 4 / 8 of
    # shard less, 16,384,000 x (4 + 2 + 0.5) = 106,496,000 bytes
    m = training_memory(cfg, micro_batch_size=1, seq_len=64, parallelism=par,
                        implementation="torchtitan", loss="chunked")
    assert m.peak_moment == "head_backward" and m.stream_cache == 0
    full, norm_only = (titan_head_unit_moment(cfg, 64, e=2, kept=0, layers=4, data=8,
                                              off_default=False, head_reduced=reduced)
                       for reduced in (False, True))
    assert full - norm_only == 106_496_000


def test_the_gradients_field_is_the_shards_made_by_the_peak() -> None:
    # without accumulation the sharded gradients at the step's peak are what the reduce-scatter
    # stream holds then (measured): every shard made so far; on one rank that stream also holds
    # the divide copy of the unit being reduced, which is no gradient (wide-vocab-4 at its
    # embedding's reduce: 3,000 x 192 x 4 bytes)
    checked = 0
    for case in (c for c in CASES if c["fresh"]):
        cfg = GPTConfig.model_validate(case["config"])
        data = case["data"]
        m = training_memory(cfg, micro_batch_size=case["micro_batch_size"],
                            seq_len=case["seq_len"], precision=PRECISION[case["param_dtype"]],
                            checkpointing=case["checkpointing"], device="cpu",
                            implementation="torchtitan", gradient_accumulation=False,
                            optimizer_impl=case.get("optimizer_impl", "foreach"),
                            parallelism=Parallelism(data=data, fsdp="full_shard")
                            if data > 1 else None)
        on_stream = case["streams_at_peak"].get("reduce_scatter", 0)
        divide_copy = 3000 * 192 * 4 if (data, case["name"]) == (1, "wide-vocab-4") else 0
        assert m.gradients == on_stream - divide_copy, _case_id(case)
        assert m.transient >= 0
        checked += 1
    assert checked == 13


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_the_step_peak_matches_torchtitan(case: dict[str, Any]) -> None:
    # the peak above the sharded states (and, accumulating, the resident gradients), the
    # batch's ids and positions in the moments: within 0.05% (the residue is the positions,
    # b s x 8 bytes, resident in the harness, and the targets), as the fresh steps of
    # tests/test_titan_fsdp_fresh.py; vocab-12k-2 in fp32 on 8 ranks peaks as lm_head's weight
    # gradient is made (`titan_head_backward_bytes`), which no earlier step had shown
    _, _, G, _, moments = _parts(case)
    predicted = max(moments.values()) + (G if case["fresh"] else 0)
    measured = case["delta"] + case["batch_bytes"]
    assert predicted == pytest.approx(measured, rel=5e-4)


def test_compiled_fresh_gradients_are_the_shards_made_by_the_peak() -> None:
    # the compiled steps without accumulation: the breakdown's gradients are what the
    # reduce-scatter stream holds at the measured peak (above the step's start: no resident
    # gradient when fresh), as for the eager steps
    checked = 0
    for case in (c for c in COMPILED if c["fresh"]):
        cfg = GPTConfig.model_validate(case["config"])
        m = training_memory(cfg, micro_batch_size=case["micro_batch_size"],
                            seq_len=case["seq_len"], precision=PRECISION[case["param_dtype"]],
                            checkpointing=case["checkpointing"], device="cpu",
                            implementation="torchtitan", gradient_accumulation=False,
                            compile=True, optimizer_impl="foreach",
                            parallelism=Parallelism(data=case["data"], fsdp="full_shard"))
        assert m.gradients == case["streams_at_peak"].get("reduce_scatter", 0), _case_id(case)
        checked += 1
    assert checked == 8


VOCAB12K = GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=128, mlp_hidden=352,
                     vocab_size=12000, bias=False, mlp="swiglu", norm="rmsnorm",
                     position="rope", tie_embeddings=False)


def test_head_backward_by_hand() -> None:
    from scaleplan.memory.titan_terms import titan_head_backward_bytes

    # one rank: nothing prefetched; T 16, d 128, V 12,000, fp32: 1,000 saved bytes, the unit
    # gathered (1,536,128 x 4), lm_head's gradient (1,536,000 x 4), the logits' gradient
    # (192,000 x 4), the final norm's input gradient (2,048 x 4), the loss's 8
    saved = {"log_softmax": 768_000, "lm_head": 1_000}
    one = 1_000 + 1_536_128 * 4 + 1_536_000 * 4 + 192_000 * 4 + 2_048 * 4 + 8
    assert titan_head_backward_bytes(VOCAB12K, 1, 16, saved, e=4, data=1) == one
    # two ranks: the last block prefetched beside it (184,576 parameters x 4)
    assert titan_head_backward_bytes(VOCAB12K, 1, 16, saved, e=4, data=2) \
        == one + 184_576 * 4


def test_head_backward_on_one_rank_holds_only_the_gradients_off_the_default_stream() -> None:
    # accumulating on one rank (no copy-in stream): at the head's backward the reduce-scatter
    # stream holds the resident gradients, so with that moment the peak the cache is the
    # rest of that stream's peak, two of the largest unit's shards (its output and divide
    # copy): 2 x (12,000 x 128 + 128) x 4
    W, G, O = 10**6, 3 * 10**6, 6 * 10**6
    cache = titan_stream_cache(VOCAB12K, 1, 16, precision="32-true", checkpointing="none",
                               device="cuda", data=1, layers=2, compiled=False, fresh=False,
                               states=(W, G, O),
                               moments={"head_backward": 10**7, "optimizer_step": 0})
    assert cache == 2 * (12_000 * 128 + 128) * 4


def test_fresh_gradients_by_hand() -> None:
    from scaleplan.memory.titan_fsdp_moments import titan_fresh_gradients

    # 8 ranks, fp32, 1 x 16: of the backward's unit moments the head unit's reduce-scatter is
    # the largest (its 1,536,128 values against a block's 184,576), holding its own shard,
    # (12,000 x 128 + 128) / 8 x 4
    assert titan_fresh_gradients(VOCAB12K, 1, 16, precision="32-true", checkpointing="none",
                                 device="cpu", layers=2, data=8, compiled=False) \
        == 1_536_128 // 8 * 4
    # gqa-3 on one rank, bf16, 1 x 16: block 0's reduce, with the shards of [norm, lm_head]
    # (61,600 x 4) and blocks 2 and 1 made and its own output (292,160 x 4 each)
    gqa3 = GPTConfig.model_validate(CASES[2]["config"])
    assert titan_fresh_gradients(gqa3, 1, 16, precision="bf16-mixed", checkpointing="none",
                                 device="cpu", layers=3, data=1, compiled=False) \
        == 61_600 * 4 + 3 * 292_160 * 4

"""torchtitan's chunked loss inside whole FSDP2 (x TP) steps, replayed without torch.

docs/validation/torchtitan-chunked-loss.json's ``steps``: 35 steps of torchtitan 0.3.0's Llama 3
with its ``ChunkedLossWrapper`` as the trainer sets it (the model run without its ``lm_head``),
under FSDP2 on 2 and 4 ranks and FSDP2 x TP on 2 x 2, in 1 to 4 chunks: 15 with and without
gradient accumulation in bf16, 5 accumulating with fp32 parameters
(`scaleplan.reference.titan_chunked_measure.measure_chunked_step`). The model is
`scaleplan.memory.titan_chunked_loss.titan_chunked_moments` (the chunk loop) beside the blocks'
moments (`scaleplan.memory.titan_fsdp_moments`, `scaleplan.memory.titan_tp_moments`) with
``head_reduced``: the loop reduce-scatters lm_head's gradient in the forward, so the head unit's
backward reduces the final norm's alone.

``training_memory`` takes chunks of 8,192 tokens, so a step of up to 8,192 tokens a rank is one
chunk: those steps are replayed through ``training_memory`` itself; the others through the
stage's moments with the loop's moments at the measured chunk length.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.titan_chunked_loss import titan_chunked_moments
from scaleplan.memory.titan_fsdp_moments import titan_fsdp_buffers
from scaleplan.memory.titan_stage import titan_stage_parts
from scaleplan.memory.titan_terms import titan_fsdp_in_flight, titan_model_states
from scaleplan.memory.titan_tp_terms import titan_tp_fsdp_in_flight, titan_tp_model_states
from scaleplan.memory.training import training_memory
from scaleplan.model.config import GPTConfig

DATA = Path(__file__).resolve().parents[1] / "docs" / "validation" / "torchtitan-chunked-loss.json"
STEPS: list[dict[str, Any]] = json.loads(DATA.read_text())["steps"]


PRECISION = {"bf16": "bf16-mixed", "fp32": "32-true"}
BYTES = {"bf16": 2, "fp32": 4}


def _id(c: dict[str, Any]) -> str:
    return (f"{c['name']}-d{c['data']}t{c['tensor']}-{c['checkpointing']}"
            f"-{c['micro_batch_size']}x{c['seq_len']}-c{c['chunks']}-{c['param_dtype']}"
            f"{'-fresh' if c['fresh'] else ''}")


def _par(c: dict[str, Any]) -> Parallelism:
    return Parallelism(data=c["data"], fsdp="full_shard", tensor=c["tensor"],
                       sequence_parallel=c["tensor"] > 1)


def _measured(c: dict[str, Any]) -> int:
    """The peak above the resident states, counted as each harness's replay counts it: FSDP2
    alone with the batch's ids and positions (the model counts them in its moments); under TP
    the positions where the checkpointed blocks keep them (tests/test_titan_2d_steps.py)."""
    if c["tensor"] == 1:
        return int(c["delta"]) + int(c["batch_bytes"])
    b, s = c["micro_batch_size"], c["seq_len"]
    return int(c["delta"]) + (b * s * 8 if c["checkpointing"] != "none" else 0)


def _states(cfg: GPTConfig, c: dict[str, Any]) -> int:
    """The states the harness holds resident: the sharded weights and AdamW's states, and
    with accumulation the sharded gradients."""
    if c["tensor"] == 1:
        W, G, O = titan_model_states(cfg, "adamw", data=c["data"])
    else:
        W, G, O = titan_tp_model_states(cfg, "adamw", data=c["data"], tensor=c["tensor"])
    return W + O + (0 if c["fresh"] else G)


def _predicted(c: dict[str, Any]) -> tuple[int, str]:
    """The stage's worst moment above the resident states, the chunk loop at the measured
    chunk length (``b s / chunks`` tokens). Without accumulation the stage's moments are less
    the sharded gradients (``G``), which the harness does not hold resident either."""
    cfg = GPTConfig.model_validate(c["config"])
    b, s, t, data, fresh = (c["micro_batch_size"], c["seq_len"], c["tensor"], c["data"],
                            c["fresh"])
    p = PRECISION[c["param_dtype"]]
    _, G, _, saved, _, _, _, moments = titan_stage_parts(
        cfg, b, s, p, "adamw", c["checkpointing"], "cpu", _par(c), "foreach",
        cfg.n_layer, compiled=False, chunked=True, fresh=fresh)
    gathered = (titan_tp_fsdp_in_flight(cfg, p, data=data, tensor=t) if t > 1 else
                titan_fsdp_in_flight(cfg, p, data=data, one_rank_mesh=True))
    loop = titan_chunked_moments(cfg, b, s, saved, e=BYTES[c["param_dtype"]], tensor=t,
                                 data=data,
                                 gathered_head=gathered["forward_end"],
                                 chunk_tokens=b * s // c["chunks"], fresh=fresh)
    moments.update({k: v - (G if fresh else 0) for k, v in loop.items()})
    worst = max(moments, key=lambda k: moments[k])
    return int(moments[worst]) + (G if fresh else 0), worst


@pytest.mark.parametrize("case", STEPS, ids=_id)
def test_whole_step_with_the_chunked_loss(case: dict[str, Any]) -> None:
    # within 0.1% of the step: the loss's per-token statistics (up to 16 kB at 64 tokens of
    # one sequence) and, under FSDP2 alone, the positions the harness keeps resident
    predicted, moment = _predicted(case)
    peak = case["resident"] + case["delta"]
    assert abs(_measured(case) - predicted) <= 0.001 * peak, (moment, case["at_peak"])
    # the phase names the moment: the chunk loop runs inside the forward
    assert (moment == "head_backward") == (case["peak_phase"] == "forward"), moment


def test_one_chunk_steps_through_training_memory() -> None:
    # up to 8,192 tokens a rank training_memory's 8,192-token chunk is the whole batch
    checked = 0
    for c in (c for c in STEPS if c["chunks"] == 1):
        cfg = GPTConfig.model_validate(c["config"])
        m = training_memory(cfg, micro_batch_size=c["micro_batch_size"], seq_len=c["seq_len"],
                            precision=PRECISION[c["param_dtype"]],
                            checkpointing=c["checkpointing"],
                            device="cpu", implementation="torchtitan",
                            optimizer_impl="foreach", loss="chunked", parallelism=_par(c),
                            gradient_accumulation=not c["fresh"])
        assert m.tensor_peak - _states(cfg, c) == _predicted(c)[0], _id(c)
        checked += 1
    assert checked == 21


def test_the_loop_peaks_where_measured() -> None:
    # a large vocabulary: the loop (a chunk's loss backward with one chunk; the head's
    # reduce-scatter at the last chunk with several); a small one: the blocks
    moments = {_id(c): _predicted(c)[1] for c in STEPS}
    assert moments["vocab-12k-2-d2t1-none-2x64-c1-bf16"] == "head_backward"
    assert moments["gqa-3-d2t1-none-2x96-c1-bf16"] == "block_backward"
    assert moments["gqa-3-d2t2-full-2x96-c1-bf16"] == "recompute"
    # without accumulation the blocks still peak with the shards made by then
    assert moments["gqa-3-d2t2-full-2x96-c1-bf16-fresh"] == "recompute"
    # fp32 parameters: the same moments
    assert moments["vocab-12k-2-d2t1-none-2x64-c4-fp32"] == "head_backward"
    assert moments["gqa-3-d2t1-full-2x96-c1-fp32"] == "recompute"


def test_without_accumulation_the_loop_is_the_same_bytes_above_the_residents() -> None:
    # in the forward nothing but the head's reduce-scatter makes a gradient: a step without
    # accumulation holds at the loop what an accumulating one holds beyond its resident
    # gradients (to the 2 kB of the labels' scalars)
    pairs: dict[str, list[int]] = {_id(c).removesuffix("-fresh"): [] for c in STEPS}
    for c in STEPS:
        if c["peak_phase"] == "forward":
            pairs[_id(c).removesuffix("-fresh")].append(int(c["delta"]))
    both = [v for v in pairs.values() if len(v) == 2]
    assert len(both) >= 10
    assert all(abs(a - b) <= 2048 for a, b in both)


def test_after_the_loop_without_accumulation_the_head_shard_is_kept() -> None:
    # forward_end and backward_start of a step without accumulation also hold lm_head's
    # fp32 shard the loop's reduce-scatter made: 12,000 x 128 x 4 / 2 on 2 ranks
    cfg = GPTConfig.model_validate(next(c for c in STEPS if c["name"] == "vocab-12k-2")["config"])
    saved = {"loss_gradient": 0}
    acc, fresh = (titan_chunked_moments(cfg, 2, 64, saved, e=2, tensor=1, data=2,
                                        gathered_head=0, fresh=f) for f in (False, True))
    for k in ("forward_end", "backward_start"):
        assert fresh[k] - acc[k] == 12000 * 128 * 4 // 2
    assert fresh["head_backward"] == acc["head_backward"]


def test_the_head_reduce_scatter_at_the_last_chunk_by_hand() -> None:
    # vocab-12k-2 (d 128, V 12,000) on 2 FSDP2 ranks, 2 x 64 tokens in 4 chunks of 32: at the
    # last chunk FSDP2 reduce-scatters lm_head's gradient, accumulated in fp32 over the
    # earlier chunks; live beyond the model's saved tensors: the hidden states (128 x 128,
    # bf16), their chunk copies and the labels' (two sequences: copies), the fp32
    # accumulator, the last chunk's logits (32 x 12,000, bf16), the [norm, lm_head] unit
    # gathered, the accumulated gradient and the flat reduce-scatter input (12,000 x 128 fp32
    # each) and the fp32 shard it reduces into
    cfg = GPTConfig.model_validate(next(c for c in STEPS if c["name"] == "vocab-12k-2")["config"])
    T, d, V = 128, 128, 12000
    held = T * d * 2 + (T * d * 2 + T * 8) + T * d * 4
    gathered = (V * d + d) * 2
    reduce = held + 32 * V * 2 + gathered + 2 * V * d * 4 + V * d * 4 // 2
    m = titan_chunked_moments(cfg, 2, 64, {"loss_gradient": 0}, e=2, tensor=1, data=2,
                              gathered_head=gathered, chunk_tokens=32)
    # a chunk's loss backward is below it: the logits and three fp32 buffers of 32 x 12,000
    # and the accumulated gradient
    loss = held + 32 * V * (2 + 3 * 4) + V * d * 4 + gathered
    assert loss < reduce
    assert m["head_backward"] == reduce


def test_one_chunks_reduce_scatter_holds_the_gradient_as_made_by_hand() -> None:
    # vocab-12k-2 on 2 FSDP2 ranks, one sequence of 8 tokens: one chunk (the hidden states
    # themselves, no copies), so no fp32 accumulation: at the reduce-scatter the bf16
    # gradient (12,000 x 128 x 2) beside the flat fp32 input (x 4) and the shard (x 4 / 2),
    # with the hidden states (8 x 128 x 2), the accumulator (x 4), the chunk's logits
    # (8 x 12,000 x 2) and the gathered unit; above the chunk's loss backward (its logits and
    # three fp32 buffers, 8 x 12,000 x 14)
    cfg = GPTConfig.model_validate(next(c for c in STEPS if c["name"] == "vocab-12k-2")["config"])
    T, d, V = 8, 128, 12000
    gathered = (V * d + d) * 2
    held = T * d * 2 + T * d * 4
    reduce = held + T * V * 2 + gathered + V * d * (2 + 4) + V * d * 4 // 2
    assert reduce > held + T * V * 14 + gathered
    m = titan_chunked_moments(cfg, 1, 8, {"loss_gradient": 0}, e=2, tensor=1, data=2,
                              gathered_head=gathered)
    assert m["head_backward"] == reduce


def test_the_shards_round_up_and_need_fsdp2() -> None:
    # on 7 ranks lm_head's 12,000 rows do not split evenly: FSDP2 pads dim 0 to a multiple
    # of the ranks, so a rank's shard is ceil(12,000 / 7) = 1,715 rows x 128 x 4 bytes; without
    # FSDP2 (one rank, the wrapper alone) no shard is made
    cfg = GPTConfig.model_validate(next(c for c in STEPS if c["name"] == "vocab-12k-2")["config"])
    V, d = 12000, 128
    saved = {"loss_gradient": 0}
    acc, fresh = (titan_chunked_moments(cfg, 1, 8, saved, e=2, tensor=1, data=7,
                                        gathered_head=0, fresh=f) for f in (False, True))
    assert fresh["forward_end"] - acc["forward_end"] == -(-V // 7) * d * 4 == 878_080
    assert type(fresh["forward_end"]) is int and type(acc["head_backward"]) is int
    one = [titan_chunked_moments(cfg, 1, 8, saved, e=2, tensor=1, data=1, gathered_head=0,
                                 fresh=f) for f in (False, True)]
    assert one[0] == one[1]


def test_the_last_blocks_previous_reduce_is_the_norms_alone() -> None:
    # with the chunked loss the head unit's backward reduces the final norm's gradient only:
    # d fp32 values are the last block's previous reduce-scatter input, not (V d + d)
    cfg = GPTConfig.model_validate(STEPS[0]["config"])
    d, V = cfg.n_embd, cfg.vocab_size
    std = titan_fsdp_buffers(cfg, e=2, block=2, layers=3)
    assert std - titan_fsdp_buffers(cfg, e=2, block=2, layers=3, head_reduced=True) == (
        V * d * 4)
    # other blocks' buffers are the same
    assert titan_fsdp_buffers(cfg, e=2, block=1, layers=3) == titan_fsdp_buffers(
        cfg, e=2, block=1, layers=3, head_reduced=True)

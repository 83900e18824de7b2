"""litgpt's full fine-tune under FSDP1, whole micro-batches (tests/litgpt_fsdp_step.py), replayed.

Three shapes, each peaking at a different moment (a block's recompute, the root unit's end, a
block's end), measured in an accumulating micro-batch (``no_sync()``) and in the step's last,
which reduce-scatters and peaks as high or lower: `training_memory` (with
`scaleplan.memory.litgpt_fsdp_terms`) predicts the worst within 0.3%; the generic FSDP term it
replaced (the largest layer gathered) was 14% under on the first shape.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scaleplan.memory.litgpt_fsdp_terms import litgpt_fsdp1_moments, litgpt_fsdp1_units
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.training import training_memory
from scaleplan.model.config import GPTConfig

DATA = json.loads((Path(__file__).parent / "data" / "litgpt_fsdp_step.json").read_text())
CASES: dict[tuple[str, bool], dict[str, Any]] = {(c["name"], c["sync"]): c
                                                 for c in DATA["cases"] if not c["fresh"]}
# the step without accumulation (gradients None when it starts)
FRESH: dict[str, dict[str, Any]] = {c["name"]: c for c in DATA["cases"] if c["fresh"]}
NAMES = sorted({name for name, _ in CASES})


def _predicted(case: dict[str, Any]) -> Any:
    cfg = GPTConfig.model_validate(case["config"])
    return training_memory(cfg, micro_batch_size=case["micro_batch_size"],
                           seq_len=case["seq_len"], precision="bf16-true",
                           checkpointing="full", device="cpu", implementation="litgpt",
                           optimizer_impl="foreach",
                           parallelism=Parallelism(data=case["world"], fsdp="full_shard"))


@pytest.mark.parametrize("name", NAMES)
def test_the_worst_micro_batch_is_predicted(name: str) -> None:
    accumulating, last = CASES[name, False], CASES[name, True]
    predicted = _predicted(last).tensor_peak
    assert predicted == pytest.approx(accumulating["peak"], rel=3e-3)
    # the last micro-batch frees each unit's unsharded gradient once it is reduce-scattered
    assert last["peak"] <= accumulating["peak"]


def test_moments_peak_where_measured() -> None:
    expected = {"blocks": "recompute", "wide-vocab": "root_end", "few-tokens": "block_end"}
    assert {name: _predicted(CASES[name, True]).peak_moment for name in NAMES} == expected


def test_the_root_unit_and_two_blocks_are_gathered_at_a_recompute() -> None:
    # blocks: d 160, V 384; a block's parameters wqkv 160 x 320 + proj 160 x 160 + MLP
    # 3 x 160 x 448 + two norms 2 x 160 = 292,160; the root's wte + lm_head + final norm 123,040
    live = CASES["blocks", False]["at_peak"]
    assert live["backward:fsdp_alloc (292160,) bfloat16"] == 2 * 292_160 * 2
    # gathered in forward (its label: the op running then) and never resharded
    assert [n for k, n in live.items() if "(123040,)" in k] == [123_040 * 2]
    # the lm_head's fresh gradient waits for the root unit's backward to end
    assert live["backward:mm (384, 160) bfloat16"] == 384 * 160 * 2


def test_the_root_end_holds_the_root_and_its_fresh_gradients() -> None:
    # wide-vocab: the root (2 x 3000 x 192 + 192 = 1,152,192) gathered and the per-parameter
    # gradients (lm_head's, the embedding's) at the root's end; with their flat copy (or the
    # sum it is accumulated into) the model counts three root-sized tensors
    live = CASES["wide-vocab", False]["at_peak"]
    root = [n for k, n in live.items() if k.startswith("forward:") and "(1152192,)" in k]
    pieces = live["backward:mm (3000, 192) bfloat16"] + live[
        "backward:embedding_dense_backward (3000, 192) bfloat16"]
    assert (root, pieces) == ([1_152_192 * 2], 2 * 3000 * 192 * 2)


def test_units_and_moments_by_hand() -> None:
    cfg = GPTConfig.model_validate(CASES["few-tokens", True]["config"])
    # d 128, V 2000, 4 heads of 32, 2 kv heads, F 448: wte 256,000 + lm_head 256,000 + final
    # norm 128; a block wqkv 128 x 256 + proj 128 x 128 + MLP 3 x 128 x 448 + norms 256
    assert litgpt_fsdp1_units(cfg) == {"root": 512_128, "block": 221_440, "waiting": 256_128}
    out = litgpt_fsdp1_moments(cfg, 1, 32, {"recompute": 0, "optimizer_step": 0}, e=2,
                               largest_gathered=0, fresh=False, data=4)
    # a block's end: the root and two blocks gathered, the block's fresh gradients and their
    # flat copy, the root's waiting gradients, the block's input and incoming gradient, loss
    assert out["block_end"] == (512_128 * 2 + 4 * 221_440 * 2 + 256_128 * 2
                                + 2 * 32 * 128 * 2 + 8)
    # the recompute: the root and two blocks, w2's gradient 128 x 448, the waiting ones
    assert out["recompute"] == 512_128 * 2 + 2 * 221_440 * 2 + 128 * 448 * 2 + 256_128 * 2
    # the root's end: three root-sized tensors
    assert out["root_end"] == 3 * 512_128 * 2 + 8
    assert out["optimizer_step"] == 0  # nothing gathered at the optimizer step


@pytest.mark.parametrize("name", NAMES)
def test_without_accumulation_the_step_is_predicted(name: str) -> None:
    # gradient_accumulation=False (Phi-2's published run): no gradient resident, each unit's
    # reduce-scattered into a shard at its end
    fresh = FRESH[name]
    predicted = training_memory(
        GPTConfig.model_validate(fresh["config"]), micro_batch_size=fresh["micro_batch_size"],
        seq_len=fresh["seq_len"], precision="bf16-true", checkpointing="full", device="cpu",
        implementation="litgpt", optimizer_impl="foreach", gradient_accumulation=False,
        parallelism=Parallelism(data=fresh["world"], fsdp="full_shard")).tensor_peak
    assert predicted == pytest.approx(fresh["peak"], rel=3e-3)
    assert fresh["peak"] < CASES[name, False]["peak"]


@pytest.mark.parametrize("name", NAMES)
def test_the_optimizer_step_holds_shards_only(name: str) -> None:
    # after the last micro-batch: sharded weights, gradients and AdamW's states, foreach's
    # temporaries and the held logits; nothing gathered, no reduction bucket (within 1%: the
    # rotary buffers and the batch, which the model leaves out)
    from scaleplan.memory.stage import stage_parts

    case = CASES[name, True]
    cfg = GPTConfig.model_validate(case["config"])
    W, G, O, _, _, _, held, moments = stage_parts(
        cfg, case["micro_batch_size"], case["seq_len"], "bf16-true", "adamw", "flash", "full",
        "cpu", Parallelism(data=case["world"], fsdp="full_shard"), "foreach", True, "only",
        implementation="litgpt")
    predicted = W + G + O + moments["optimizer_step"] + held
    assert predicted == pytest.approx(case["phase_peaks"]["optimizer"], rel=0.01)


def test_without_checkpointing_no_accumulation_is_refused_by_name() -> None:
    from scaleplan.errors import ScaleplanError

    case = FRESH["blocks"]
    with pytest.raises(ScaleplanError, match="litgpt's FSDP with full checkpointing"):
        training_memory(GPTConfig.model_validate(case["config"]), micro_batch_size=1,
                        seq_len=8, implementation="litgpt", checkpointing="none",
                        gradient_accumulation=False,
                        parallelism=Parallelism(data=2, fsdp="full_shard"))


def test_fresh_moments_by_hand() -> None:
    cfg = GPTConfig.model_validate(CASES["few-tokens", True]["config"])
    out = litgpt_fsdp1_moments(cfg, 1, 32, {"recompute": 0, "optimizer_step": 0}, e=2,
                               largest_gathered=1000, fresh=True, data=3)
    # a block's shard over 3 ranks: ceil(221,440 / 3) = 73,814 values, 2 bytes each; the
    # recompute one block further down (its input 32 x 128 x 2 freed) beside the shard above
    last = 512_128 * 2 + 2 * 221_440 * 2 + 128 * 448 * 2 + 256_128 * 2 - 1000
    assert out["recompute"] == last - 32 * 128 * 2 + 73_814 * 2
    assert out["root_end"] == 3 * 512_128 * 2 + 2 * 73_814 * 2 + 8 - 1000


def test_covers_only_litgpt_on_data_ranks_with_full_checkpointing() -> None:
    from scaleplan.memory.litgpt_fsdp_terms import litgpt_fsdp1_covers

    fsdp2 = Parallelism(data=2, fsdp="full_shard")
    assert litgpt_fsdp1_covers("litgpt", "full", fsdp2)
    assert not litgpt_fsdp1_covers("hf", "full", fsdp2)
    assert not litgpt_fsdp1_covers("litgpt", "none", fsdp2)
    assert not litgpt_fsdp1_covers("litgpt", "full", Parallelism(data=1, fsdp="full_shard"))
    assert not litgpt_fsdp1_covers("litgpt", "full", Parallelism(data=2))
    for other in ({"tensor": 2}, {"pipeline": 2}, {"expert": 2}, {"tensor": 2, "expert": 2},
                  {"pipeline": 2, "expert": 2}, {"tensor": 2, "pipeline": 2}):
        assert not litgpt_fsdp1_covers("litgpt", "full",
                                       Parallelism(data=4, fsdp="full_shard", **other))

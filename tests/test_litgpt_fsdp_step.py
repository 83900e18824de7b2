"""litgpt's full fine-tune under FSDP1, whole micro-batches (tests/litgpt_fsdp_step.py), replayed.

The measurement shows what `training_memory`'s generic FSDP term (the largest layer gathered
whole, `scaleplan.memory.sharding`) leaves out for Fabric's FSDP1, the gap behind the published
Gemma 2B row (docs/validation/published-peaks.md): the root unit (embedding, final norm and the
untied lm_head, everything outside the blocks) is not resharded after forward and stays gathered
through the backward, beside the block running its backward and the one prefetched; the
lm_head's gradient waits for the root unit's backward to end (the embedding's, the last); the
step's last micro-batch, which reduce-scatters, peaks higher than an accumulating one. Not
modelled yet: the test that asks for it is a strict xfail.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.training import training_memory
from scaleplan.model.config import GPTConfig

DATA = json.loads((Path(__file__).parent / "data" / "litgpt_fsdp_step.json").read_text())
CFG = GPTConfig.model_validate(DATA["config"])
NO_SYNC, SYNC = DATA["cases"]
# d 160, V 384, H 4, K 2, hd 40, F 448: a block's parameters, wqkv 160 x 320 + proj 160 x 160 +
# MLP 3 x 160 x 448 + two norms 2 x 160 = 292,160; the root unit's, wte 384 x 160 + lm_head
# 384 x 160 + final norm 160 = 123,040
BLOCK, ROOT = 292_160, 123_040


def _predicted() -> Any:
    return training_memory(CFG, micro_batch_size=DATA["micro_batch_size"],
                           seq_len=DATA["seq_len"], precision="bf16-true",
                           checkpointing="full", device="cpu", implementation="litgpt",
                           optimizer_impl="foreach",
                           parallelism=Parallelism(data=DATA["world"], fsdp="full_shard"))


def test_the_root_unit_and_two_blocks_are_gathered_at_the_peak() -> None:
    for case in (NO_SYNC, SYNC):
        live = case["at_peak"]
        assert live[f"backward:fsdp_alloc ({BLOCK},) bfloat16"] == 2 * BLOCK * 2
        # gathered in forward (its label: the op running then) and never resharded
        root = [n for k, n in live.items() if k.startswith("forward:") and f"({ROOT},)" in k]
        assert root == [ROOT * 2]


def test_the_lm_head_gradient_waits_for_the_root_unit() -> None:
    assert NO_SYNC["at_peak"]["backward:mm (384, 160) bfloat16"] == 384 * 160 * 2


def test_the_last_micro_batch_peaks_higher_holding_a_reduced_shard() -> None:
    # the step's last micro-batch reduce-scatters each block's gradient into a bf16 shard of
    # 292,160 / 4 = 73,040 values, live at its peak
    assert SYNC["at_peak"]["backward:empty_like (73040,) bfloat16"] == 73_040 * 2
    assert SYNC["peak"] > NO_SYNC["peak"]


def test_the_accumulating_peak_is_explained_by_the_fsdp1_terms() -> None:
    # what the generic term counts (the largest layer, a block, gathered: 292,160 x 2) swapped
    # for what is live: the root unit and two blocks gathered, w2's and the lm_head's fresh
    # bf16 gradients (160 x 448 and 384 x 160) and a norm weight's (160)
    m = _predicted()
    fsdp1 = ROOT * 2 + 2 * BLOCK * 2 + (160 * 448 + 384 * 160 + 160) * 2
    explained = m.tensor_peak - BLOCK * 2 + fsdp1
    assert explained == pytest.approx(NO_SYNC["peak"], rel=3e-3)


@pytest.mark.xfail(strict=True, reason="FSDP1's root unit, its pending lm_head gradient and the "
                   "reduce-scattering micro-batch are not modelled for litgpt yet (-14%)")
def test_training_memory_matches_the_worst_micro_batch() -> None:
    assert _predicted().tensor_peak == pytest.approx(SYNC["peak"], rel=0.03)

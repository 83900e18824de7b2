"""litgpt's full fine-tune under FSDP with gradient accumulation, by hand, torch-free: its
accumulating micro-batches run inside FSDP1's ``no_sync()`` (litgpt/finetune/full.py:280-281,
lightning/fabric/strategies/fsdp.py:747-761), which keeps every unit's gradient unsharded
(torch/distributed/fsdp/_runtime_utils.py:742-746), so through forward and backward each GPU
holds the whole model's gradients (`litgpt_no_sync_gradient_bytes`), not its shards.

Tiny Llama-style model: tied embedding 16 x 8, 2 blocks of q/k/v 8 x 24, projection 8 x 8,
SwiGLU 3 x 8 x 32 and two RMSNorm scales of 8, a final norm of 8: 2216 parameters.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scaleplan.memory.litgpt_terms import litgpt_no_sync_gradient_bytes
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.stage import stage_parts
from scaleplan.memory.step_switches import StepSwitches
from scaleplan.model.config import GPTConfig

CFG = GPTConfig(n_layer=2, n_head=2, n_embd=8, vocab_size=16, bias=False, position="rope",
                norm="rmsnorm", mlp="swiglu", mlp_hidden=32, block_size=64)
PARAMS = 16 * 8 + 2 * (8 * 24 + 8 * 8 + 3 * 8 * 32 + 2 * 8) + 8


@pytest.mark.parametrize(("precision", "nbytes"), [("bf16-true", 2), ("bf16-mixed", 2),
                                                   ("32-true", 4)])
def test_the_unsharded_gradients_are_every_parameters(precision: str, nbytes: int) -> None:
    # bf16 under Fabric's bf16 precisions (FSDP's param_dtype), fp32 under 32-true
    assert PARAMS == 2216
    assert litgpt_no_sync_gradient_bytes(CFG, precision=precision) == PARAMS * nbytes  # type: ignore[arg-type]


def parts(accumulating: bool, implementation: str = "litgpt", par: Parallelism | None = None,
          precision: str = "bf16-true") -> tuple[int, dict[str, int]]:
    got = stage_parts(CFG, 1, 8, precision, "adamw", "flash", "full", "cuda",  # type: ignore[arg-type]
                      par or Parallelism(data=4, fsdp="full_shard"), "fused", True, "only",
                      implementation=implementation,
                      switches=StepSwitches(gradient_accumulation=accumulating))
    return got[1], got[-1]


def accumulation_cost(implementation: str, par: Parallelism | None = None,
                      precision: str = "bf16-true") -> dict[str, int]:
    """What gradient accumulation adds to each moment (gradients resident from the earlier
    micro-batches): the same for every implementation but litgpt under FSDP."""
    _, with_acc = parts(True, implementation, par, precision)
    _, without = parts(False, implementation, par, precision)
    return {k: with_acc[k] - without[k] for k in with_acc if k in without}


# FSDP1's units (scaleplan.memory.litgpt_fsdp_terms, measured with and without accumulation):
# the same in both steps but for the gradients. A block: q/k/v 8 x 24, projection 8 x 8,
# SwiGLU 3 x 8 x 32, two norms: 1040.
BLOCK = 8 * 24 + 8 * 8 + 3 * 8 * 32 + 2 * 8


@pytest.mark.parametrize(("precision", "nbytes"), [("bf16-true", 2), ("32-true", 4)])
@pytest.mark.parametrize("data", [2, 4])
def test_accumulating_under_fsdp_holds_the_whole_models_gradients(precision: str, nbytes: int,
                                                                  data: int) -> None:
    par = Parallelism(data=data, fsdp="full_shard")
    litgpt = accumulation_cost("litgpt", par, precision)
    nanogpt = accumulation_cost("nanogpt", par, precision)
    # accumulating, litgpt's no_sync micro-batches hold 2216 x 2 B (bf16) or x 4 B (fp32)
    # unsharded through forward and backward; without accumulation none is resident (not
    # nanoGPT's sharded G either: the measured forward peaks, tests/test_litgpt_fsdp_step.py)
    for moment in ("forward_end", "backward_start"):
        assert litgpt[moment] == PARAMS * nbytes
    assert litgpt["block_end"] == PARAMS * nbytes
    # without accumulation a unit's gradient is reduce-scattered at its end into a shard of
    # ceil(1040 / data): the recompute peaks one block further down (its input, 1 x 8 x 8,
    # freed) beside the shard above, and the root's end holds both blocks' shards
    shard = -(-BLOCK // data) * nbytes
    assert litgpt["recompute"] == PARAMS * nbytes - max(0, shard - 8 * 8 * nbytes)
    assert litgpt["root_end"] == PARAMS * nbytes - 2 * shard
    # the optimizer step sees the shards either way
    assert litgpt["optimizer_step"] == nanogpt["optimizer_step"] == 0


def test_only_litgpt_under_fsdp_runs_no_sync() -> None:
    # litgpt on one GPU or with plain data parallelism: no unsharded copy (the recompute
    # moment's accumulation cost is its Block's own, above)
    for par in (Parallelism(), Parallelism(data=4)):
        litgpt, nanogpt = accumulation_cost("litgpt", par), accumulation_cost("nanogpt", par)
        assert {k: v for k, v in litgpt.items() if k != "recompute"} == \
            {k: v for k, v in nanogpt.items() if k != "recompute"}


# FSDP1 on CPU (tests/litgpt_no_sync.py, 2 gloo ranks, litgpt 0.5.13's GPT with bf16
# parameters wrapped as Fabric wraps it): after a backward inside no_sync() every unit's
# flat-parameter gradient has the unit's unsharded size, after a synced one its shard's
DATA = json.loads((Path(__file__).parent / "data" / "litgpt_no_sync.json").read_text())
# the same model as a GPTConfig: untied 16 x 8 embedding and head, the blocks above, a final
# RMSNorm: 2216 + 128 = 2344 parameters
MEASURED = CFG.replace(tie_embeddings=False)


def test_no_sync_leaves_every_units_gradient_unsharded() -> None:
    world, units = DATA["world"], DATA["after_no_sync"]
    assert DATA["params"] == PARAMS + 128 == 2344
    assert DATA["grad_dtypes"] == ["bfloat16"]
    assert all(grad == world * shard for shard, grad in units.values())
    assert sum(grad for _, grad in units.values()) == DATA["params"]
    assert litgpt_no_sync_gradient_bytes(MEASURED, precision="bf16-true") == \
        2 * sum(grad for _, grad in units.values())
    # once synced, each unit keeps its shard only
    assert all(grad == shard for shard, grad in DATA["after_sync"].values())

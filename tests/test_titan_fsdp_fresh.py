"""torchtitan's FSDP2 step without gradient accumulation, replayed without torch.

docs/validation/torchtitan-fsdp-steps.json's ``fresh_cases`` are whole steps of torchtitan
0.3.0's Llama 3 under its own ``apply_fsdp_to_decoder`` on rank 0 of a fake process group
(`scaleplan.reference.titan_fsdp_step` with ``fresh=True``): a warm-up step makes AdamW's
states, ``zero_grad(set_to_none=True)`` drops every gradient (torchtitan's trainer does so each
step), and the tracked step has no micro-batch before it, so each sharded gradient is made by
its unit's reduce-scatter during the tracked backward and counts in the measured ``delta``.
`training_memory(..., gradient_accumulation=False)` must match the peak above the sharded
parameters and optimizer states, and refuse, by name, what was not measured.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scaleplan.memory.fresh_steps import fresh_step_refusal
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.titan_fsdp_moments import (
    titan_block_backward_moment,
    titan_fresh_covers,
    titan_fresh_shards,
    titan_unit_shard,
)
from scaleplan.memory.training import training_memory
from scaleplan.model.config import GPTConfig

DATA = Path(__file__).resolve().parents[1] / "docs" / "validation" / "torchtitan-fsdp-steps.json"
FRESH: list[dict[str, Any]] = json.loads(DATA.read_text())["fresh_cases"]
ACCUMULATING: list[dict[str, Any]] = json.loads(DATA.read_text())["cases"]
PRECISION = {"bf16": "bf16-mixed", "fp32": "32-true"}
FSDP8 = Parallelism(data=8, fsdp="full_shard")


def _key(case: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(case[k] for k in ("name", "data", "checkpointing", "micro_batch_size",
                                   "seq_len", "param_dtype"))


def _memory(case: dict[str, Any], **options: Any) -> Any:
    cfg = GPTConfig.model_validate(case["config"])
    return training_memory(cfg, micro_batch_size=case["micro_batch_size"],
                           seq_len=case["seq_len"], precision=PRECISION[case["param_dtype"]],
                           checkpointing=case["checkpointing"], device="cpu",
                           implementation="torchtitan",
                           optimizer_impl=case.get("optimizer_impl", "foreach"),
                           parallelism=Parallelism(data=case["data"], fsdp="full_shard"),
                           **options)


def _flat_fp32(case: dict[str, Any]) -> set[int]:
    """Sizes of the flat fp32 storages FSDP2 allocates (reduce-scatter inputs and outputs)
    live at the measured peak."""
    return {int(label.split("(")[1].split(",")[0]) for label in case["at_peak"]
            if ":empty.memory_format (" in label and label.endswith("float32")}


def test_the_measurements_are_fresh_steps() -> None:
    assert len(FRESH) >= 20 and all(c["fresh"] for c in FRESH)
    assert {c["checkpointing"] for c in FRESH} == {"none", "full", "selective"}
    assert {c["data"] for c in FRESH} == {2, 4, 8}
    # the same setups measured with accumulation hold every gradient resident; fresh, none:
    # the resident bytes differ by exactly the sharded fp32 gradients
    accumulating = {_key(c): c for c in ACCUMULATING}
    paired = [(c, accumulating[_key(c)]) for c in FRESH if _key(c) in accumulating]
    assert len(paired) == 23  # the 19 accumulating setups, four again with fused AdamW
    for fresh, acc in paired:
        m = _memory(fresh)
        assert acc["resident"] - fresh["resident"] == m.gradients, fresh["name"]


@pytest.mark.parametrize("case", FRESH, ids=lambda c: f"{c['name']}-{c['data']}-"
                         f"{c['checkpointing']}-{c['param_dtype']}-{c['seq_len']}")
def test_fresh_step_peak_matches_torchtitan(case: dict[str, Any]) -> None:
    m = _memory(case, gradient_accumulation=False)
    # the measured delta counts the shards made during the step; the model's moments count
    # them on top of W + G + O less G; the batch's ids and positions sit in the moments
    predicted = m.tensor_peak - m.weights - m.optimizer
    measured = case["delta"] + case["batch_bytes"]
    # within 0.05%: the residue is the positions tensor (b s x 8 bytes, resident in the
    # harness, counted by the model with checkpointing only) and the targets
    assert predicted == pytest.approx(measured, rel=5e-4), (m.peak_moment, case["at_peak"])


def test_each_fresh_moment_peaks_where_measured() -> None:
    # optimizer phase -> optimizer_step; in backward a block's, the head unit's or the
    # embedding's moment holds a unit's whole fp32 reduce-scatter input; the loss's moments
    # hold no flat buffer
    for case in FRESH:
        m = _memory(case, gradient_accumulation=False)
        cfg = GPTConfig.model_validate(case["config"])
        if case["peak_phase"] == "optimizer":
            assert m.peak_moment == "optimizer_step", case["name"]
            continue
        V, d = cfg.vocab_size, cfg.n_embd
        whole = {V * d + d, _block(cfg), V * d}
        block_peak = m.peak_moment in ("recompute", "block_backward")
        assert block_peak == bool(_flat_fp32(case) & whole), (case["name"], m.peak_moment)


def _block(cfg: GPTConfig) -> int:
    from scaleplan.memory.titan_terms import titan_block_params

    return titan_block_params(cfg)


def test_block_moments_are_exact_where_a_block_peaks() -> None:
    exact = 0
    for case in FRESH:
        cfg = GPTConfig.model_validate(case["config"])
        if case["peak_phase"] != "backward" or not _flat_fp32(case):
            continue
        moment = titan_block_backward_moment(
            cfg, case["micro_batch_size"], case["seq_len"],
            precision=PRECISION[case["param_dtype"]], checkpointing=case["checkpointing"],
            device="cpu", layers=cfg.n_layer, data=case["data"], fresh=True)
        assert moment == case["delta"], (case["name"], case["checkpointing"], case["seq_len"])
        exact += 1
    assert exact == 14


def test_fresh_first_block_by_hand() -> None:
    # gqa-3 (d 160, H 4, K 2, hd 40, F 448, V 384, 3 blocks), b 2, s 96 (T 192), full
    # checkpointing, bf16, CPU, 2 ranks, no accumulation: block 0's MLP peaks.
    # - block 0's input 192 x 160 x 2 = 61,440 and its rebuilt saves 1,522,176 (CPU norms
    #   2 x 246,528, wqkv and MLP inputs 2 x 61,440, RoPE rows 30,720, q k v 122,880, output
    #   61,440, logsumexp 3,072, w1 w3 silu 516,096, w2's input 172,032)
    # - the MLP's backward 2 x 172,032, the incoming gradient 61,440, the loss's 8: 405,512
    # - FSDP2: block 1's fp32 reduce-scatter input 292,160 x 4 = 1,168,640, block 0 gathered
    #   584,320, the embedding prefetched 384 x 160 x 2 = 122,880, w2's gradient 160 x 448 x 2
    #   = 143,360: 2,019,200
    # - the shards made so far (fp32, halves): [norm, lm_head] (384 x 160 + 160) / 2 x 4 =
    #   123,200 and blocks 2 and 1, 2 x 292,160 / 2 x 4 = 1,168,640: 1,291,840
    case = next(c for c in FRESH if _key(c) == ("gqa-3", 2, "full", 2, 96, "bf16"))
    cfg = GPTConfig.model_validate(case["config"])
    fused = next(c for c in FRESH if _key(c) == _key(case) and c.get("optimizer_impl"))
    assert fused["delta"] == case["delta"]  # AdamW's kind does not reach the backward
    expected = 61_440 + 1_522_176 + 405_512 + 2_019_200 + 1_291_840
    assert expected == case["delta"] == 5_300_168  # the harness measured it
    assert titan_fresh_shards(cfg, block=0, layers=3, data=2) == 1_291_840
    got = titan_block_backward_moment(cfg, 2, 96, precision="bf16-mixed",
                                      checkpointing="full", device="cpu", layers=3, data=2,
                                      fresh=True)
    assert got == expected
    # the storages the harness lists at that peak: two block shards, the head unit's shard
    assert case["at_peak"]["backward:empty.memory_format (146080,) float32"] == 2 * 584_320
    assert case["at_peak"]["backward:empty.memory_format (30800,) float32"] == 123_200
    # with accumulation the same moment holds no shard beyond the resident ones: the
    # accumulating step's worst (block 1, 4,531,208) is below the fresh block 0's
    accumulating = titan_block_backward_moment(cfg, 2, 96, precision="bf16-mixed",
                                               checkpointing="full", device="cpu", layers=3,
                                               data=2)
    assert accumulating == 4_531_208 < got


def test_a_middle_block_peaks_five_blocks_deep_by_hand() -> None:
    # gqa-5 (gqa-3 five blocks deep) on 8 ranks, full checkpointing, 2 x 96: block 1 of 5.
    # Its rows padded to 8 ranks: wqkv 40 x 160, wo 20 x 160, w1 w3 56 x 160, w2 20 x 448,
    # norms 20 + 20 = 36,520 values, 146,080 bytes a block; [norm, lm_head] 20 + 48 x 160 =
    # 7,700 values, 30,800 bytes.
    case = next(c for c in FRESH if _key(c) == ("gqa-5", 8, "full", 2, 96, "bf16"))
    cfg = GPTConfig.model_validate(case["config"])
    kept = 61_440  # block 0's input
    own = 61_440 + 1_522_176  # its input and its rebuilt saves (as gqa-3's)
    mlp = 405_512
    fsdp = 1_168_640 + 584_320 + 584_320 + 143_360  # block 2's RS input, blocks 1 and 0, w2
    shards = 30_800 + 3 * 146_080  # the head unit's and blocks 4, 3, 2
    second = kept + own + mlp + fsdp + shards
    assert second == case["delta"] == 5_000_248
    # block 3 (second to last) holds two shards fewer and two inputs more; block 0 holds the
    # embedding (122,880) prefetched in place of a block and one shard more, one input fewer
    third = second + 2 * kept - 2 * 146_080
    first = second - kept - 584_320 + 122_880 + 146_080
    assert max(first, third) < second
    assert titan_block_backward_moment(cfg, 2, 96, precision="bf16-mixed",
                                       checkpointing="full", device="cpu", layers=5, data=8,
                                       fresh=True) == second


def test_the_embeddings_reduce_scatter_by_hand() -> None:
    # wide-vocab-4 (d 192, H 6, K 3, hd 32, F 512, V 3000, 4 blocks), 1 x 32 tokens, full
    # checkpointing, 2 ranks, torch's fused AdamW (torchtitan's default: no foreach
    # temporaries at the optimizer step). The backward's last unit peaks: the embedding's
    # bf16 gradient 3000 x 192 x 2 = 1,152,000, its fp32 reduce-scatter input 2,304,000 and
    # the shard it reduces into 1,152,000; every other unit's shard: [norm, lm_head]
    # (3000 x 192 + 192) / 2 x 4 = 1,152,384 and four blocks' (wqkv 384 x 192, wo 192 x 192,
    # w1 w2 w3 3 x 512 x 192, norms 2 x 192 = 405,888 values) 4 x 811,776 = 3,247,104; the
    # loss's 8 bytes. Nothing else: the activations and block 0's buffers are gone.
    case = next(c for c in FRESH if _key(c) == ("wide-vocab-4", 2, "full", 1, 32, "bf16")
                and c.get("optimizer_impl") == "fused")
    cfg = GPTConfig.model_validate(case["config"])
    expected = 1_152_000 + 2_304_000 + 1_152_000 + 1_152_384 + 3_247_104 + 8
    assert expected == case["delta"] == 9_007_496
    assert case["at_peak"]["backward:embedding_dense_backward (3000, 192) bfloat16"] == 1_152_000
    assert titan_fresh_shards(cfg, block=-1, layers=4, data=2) == 1_152_384 + 3_247_104
    assert titan_block_backward_moment(cfg, 1, 32, precision="bf16-mixed",
                                       checkpointing="full", device="cpu", layers=4, data=2,
                                       fresh=True) == expected
    # with accumulation the same moment holds no shard beyond the resident ones and stays
    # below the head unit's (4,608,008 against 5,482,376, measured with fused AdamW too)
    accumulating = titan_block_backward_moment(cfg, 1, 32, precision="bf16-mixed",
                                               checkpointing="full", device="cpu", layers=4,
                                               data=2)
    assert accumulating > 1_152_000 + 2_304_000 + 1_152_000 + 8


def test_unit_shards_pad_each_parameter_by_hand() -> None:
    # FSDP2 pads each parameter's dim 0 to a multiple of the ranks: 3 ranks over [norm (160),
    # lm_head (385 x 160)]: ceil(160 / 3) = 54, ceil(385 / 3) = 129 rows of 160
    assert titan_unit_shard(((385, 160), (160, 1)), 3) == (129 * 160 + 54) * 4
    # a flat ceil over the 61,760 values would be 20,587: padding adds 107 values
    assert (129 * 160 + 54) - -(-(385 * 160 + 160) // 3) == 107


def test_fresh_step_keeps_the_optimizer_step_and_drops_the_loss_moments() -> None:
    # the optimizer step sees every shard either way; forward and the loss see none fresh
    case = next(c for c in FRESH if _key(c) == ("mha-2", 2, "none", 2, 96, "bf16"))
    acc, fresh = _memory(case), _memory(case, gradient_accumulation=False)
    assert fresh.peak_moment == acc.peak_moment == "backward_start"
    assert acc.tensor_peak - fresh.tensor_peak == acc.gradients
    assert fresh.gradients == 0


def test_llama3_8b_on_8_ranks_fresh_drops_every_gradient_at_the_loss() -> None:
    # the published setup (torchtitan's Table 1 row FSDP, 0.3.0's fused wqkv): the start of
    # backward (the logits' fp32 gradients) peaks either way, and there no unit's backward has
    # ended, so no shard exists: the step is lighter by every gradient shard,
    # ceil(8,030,261,248 / 8) x 4 bytes
    cfg = GPTConfig.preset("llama-3-8b")
    kw: dict[str, Any] = dict(micro_batch_size=2, seq_len=8192, precision="bf16-mixed",
                              checkpointing="selective", implementation="torchtitan",
                              parallelism=FSDP8)
    acc = training_memory(cfg, **kw)
    fresh = training_memory(cfg, gradient_accumulation=False, **kw)
    assert cfg_params(cfg) == 8_030_261_248
    assert acc.gradients == 1_003_782_656 * 4
    assert fresh.peak_moment == acc.peak_moment == "backward_start"
    assert acc.tensor_peak - fresh.tensor_peak == acc.gradients
    assert fresh.gradients == 0


def cfg_params(cfg: GPTConfig) -> int:
    from scaleplan.model.params import param_terms

    return param_terms(cfg)["total"]


@pytest.mark.parametrize("parallelism", [
    Parallelism(data=2, fsdp="full_shard"),
    Parallelism(data=2, fsdp="full_shard", tensor=2, sequence_parallel=True),
])
def test_the_chunked_loss_is_modelled_without_accumulation(parallelism: Parallelism) -> None:
    # measured whole (tests/test_titan_chunked_steps.py): the loop holds the same bytes
    # above the residents; after it lm_head's shard is kept
    cfg = GPTConfig.model_validate(FRESH[0]["config"])
    kw: dict[str, Any] = dict(micro_batch_size=2, seq_len=96, precision="bf16-mixed",
                              checkpointing="full", implementation="torchtitan",
                              loss="chunked", parallelism=parallelism)
    fresh = training_memory(cfg, gradient_accumulation=False, **kw)
    accumulating = training_memory(cfg, **kw)
    assert fresh.tensor_peak < accumulating.tensor_peak


def test_covers_only_fsdp2_with_the_standard_loss() -> None:
    assert titan_fresh_covers("torchtitan", False, "standard", FSDP8)
    assert not titan_fresh_covers("litgpt", False, "standard", FSDP8)
    # compiled blocks: measured on 2, 4 and 8 ranks (titan_compiled_step), not on one GPU
    assert titan_fresh_covers("torchtitan", True, "standard", FSDP8)
    assert not titan_fresh_covers("torchtitan", True, "standard", Parallelism())
    assert not titan_fresh_covers("torchtitan", True, "standard",
                                  Parallelism(data=1, fsdp="full_shard"))
    assert not titan_fresh_covers("torchtitan", True, "chunked", FSDP8)
    # the chunked loss: eager, on two or more FSDP2 ranks (titan_chunked_measure's steps)
    assert titan_fresh_covers("torchtitan", False, "chunked", FSDP8)
    assert not titan_fresh_covers("torchtitan", False, "chunked", Parallelism())
    # one GPU: FSDP2 on a one-rank mesh, measured (one_rank_cases), whatever fsdp says
    assert titan_fresh_covers("torchtitan", False, "standard", Parallelism())
    assert titan_fresh_covers("torchtitan", False, "standard",
                              Parallelism(data=1, fsdp="full_shard"))
    assert not titan_fresh_covers("torchtitan", False, "standard",
                                  Parallelism(data=2, fsdp="shard_grad_op"))
    # each other axis alone and two at once (a product, not a ratio, of their degrees);
    # tensor parallelism alone: eager FSDP2 x TP steps measured whole (titan_2d_step), on one
    # data rank too, not compiled
    for axis in ({"pipeline": 2}, {"expert": 2}, {"tensor": 2, "expert": 2},
                 {"tensor": 2, "pipeline": 2}, {"pipeline": 2, "expert": 2},
                 {"tensor": 2, "pipeline": 2, "expert": 2}):
        assert not titan_fresh_covers("torchtitan", False, "standard",
                                      Parallelism(data=8, fsdp="full_shard", **axis))
    for data in (1, 8):
        tp = Parallelism(data=data, fsdp="full_shard", tensor=2, sequence_parallel=True)
        assert titan_fresh_covers("torchtitan", False, "standard", tp)
        assert not titan_fresh_covers("torchtitan", True, "standard", tp)
        # the chunked loss under TP: on two or more data ranks only
        assert titan_fresh_covers("torchtitan", False, "chunked", tp) == (data > 1)
    # the other implementations keep their rules: one GPU, litgpt's FSDP1 with full
    # checkpointing; DDP refused
    common: dict[str, Any] = dict(compile=False, loss="standard")
    assert fresh_step_refusal(implementation="hf", checkpointing="none",
                              parallelism=Parallelism(), **common) is None
    assert fresh_step_refusal(implementation="litgpt", checkpointing="full",
                              parallelism=FSDP8, **common) is None
    ddp = fresh_step_refusal(implementation="nanogpt", checkpointing="none",
                             parallelism=Parallelism(data=8), **common)
    assert ddp is not None and "DDP's and ZeRO's buckets outlive zero_grad" in ddp


def test_the_refusal_texts_whole() -> None:
    # what a user reads: the option, what is modelled, what is not, the fix
    titan = fresh_step_refusal(implementation="torchtitan", compile=True, checkpointing="full",
                               loss="standard", parallelism=Parallelism())
    assert titan == (
        "gradient_accumulation=False with implementation='torchtitan' is modelled for its "
        "FSDP2 step (Parallelism(data=N, fsdp='full_shard'), with or without tensor "
        "parallelism, or eager on one GPU with the standard loss; measured whole), not yet "
        "with compile=True on one GPU or with tensor parallelism, or with loss='chunked' on "
        "one data-parallel rank; use gradient_accumulation=True")
    ddp = fresh_step_refusal(implementation="hf", compile=False, checkpointing="none",
                             loss="standard", parallelism=Parallelism(data=2))
    assert ddp == (
        "gradient_accumulation=False is modelled for one GPU, litgpt's FSDP with full "
        "checkpointing and torchtitan's eager FSDP2 (DDP's and ZeRO's buckets outlive "
        "zero_grad); use gradient_accumulation=True or parallelism=None")
    hf = fresh_step_refusal(implementation="hf", compile=True, checkpointing="full",
                            loss="standard", parallelism=Parallelism())
    assert hf == (
        "gradient_accumulation=False with implementation='hf', compile=True and "
        "checkpointing='full' is not modelled yet: the fresh-gradient backward of "
        "transformers' checkpointed layers was measured eager "
        "(tests/data/fresh_recompute_peaks.json), its compiled model only with gradients "
        "resident or without checkpointing; use gradient_accumulation=True, compile=False or "
        "checkpointing='none'")

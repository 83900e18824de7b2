"""plan()'s remedies: every combination of the levers is tried, and the one chosen fits with no
quality risk when any such fits, then the best predicted throughput (issue 21)."""

from __future__ import annotations

import math

import pytest

from scaleplan.compute.hardware import gpu
from scaleplan.errors import ScaleplanError
from scaleplan.memory.limits import available_memory_bytes
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.training import training_memory
from scaleplan.model.config import GPTConfig
from scaleplan.planning.planner import Plan, plan
from scaleplan.planning.remedies import Remedy, minimal, preference

GiB = 2**30
LLAMA3 = GPTConfig.preset("llama-3-8b")
LEVERS = {"zero", "checkpointing", "optimizer", "precision"}


@pytest.fixture(scope="module")
def readme_plan() -> Plan:
    # The README's example: scaleplan plan llama-3-8b --gpu "H100 SXM" --world-size 8
    # --tokens-per-step 2**22 (seq_len = block_size = 8192).
    return plan(LLAMA3, "H100 SXM", world_size=8, tokens_per_step=2**22)


def test_readme_example_picks_zero2_and_full_checkpointing_at_bf16_mixed_with_adamw(
        readme_plan: Plan) -> None:
    p = readme_plan
    assert p.remedy == "ZeRO-2 + full checkpointing"
    assert p.remedies[0].changes == {"zero": 2, "checkpointing": "full"}
    assert (p.precision, p.optimizer, p.checkpointing) == ("bf16-mixed", "adamw", "full")
    assert p.parallelism is not None and p.parallelism.zero_stage == 2
    # The figures: ZeRO-2 / ZeRO-3 with full checkpointing need 75.1 / 51.7 GiB of 79.6.
    assert round(p.memory.total / GiB, 1) == 75.1 and p.micro_batch_size == 1
    zero3 = next(r for r in p.remedies if r.changes == {"zero": 3, "checkpointing": "full"})
    assert round(zero3.total_bytes / GiB, 1) == 51.7 and zero3.fits
    assert round(p.available_bytes / GiB, 1) == 79.6


def test_readme_example_predicted_speed_is_the_recompute_cost_by_hand(readme_plan: Plan) -> None:
    # PaLM App. B per token, causal: 6 N_matmul + 6 L H Q T. Llama 3 8B: per layer q and o
    # 2 x 4096^2, k and v 2 x 4096 x 1024 (8 KV heads of 128), gated MLP 3 x 4096 x 14336:
    # 218,103,808; x 32 layers = 6,979,321,856; the untied head 4096 x 128,256 = 525,336,576.
    blocks = 32 * (2 * 4096**2 + 2 * 4096 * 1024 + 3 * 4096 * 14336)
    assert blocks == 6_979_321_856
    n_matmul = blocks + 4096 * 128_256
    attention = 32 * 32 * 128 * 8192  # L H Q T
    step = 6 * n_matmul + 6 * attention
    # Full checkpointing (Korthikanti et al. 2022, Sec. 5) runs every block's forward again:
    # 2 x the blocks' matmul weights + the causal attention core's forward, 2 L H Q T; the
    # head is outside the checkpointed blocks.
    recompute = 2 * blocks + 2 * attention
    expected = step / (step + recompute)
    assert round(expected, 4) == 0.7617
    chosen = readme_plan.remedies[0]
    assert chosen.relative_throughput == pytest.approx(expected, rel=1e-12)
    assert readme_plan.remedy_reason is not None
    assert "predicted 24% slower than the plan as asked" in readme_plan.remedy_reason


def test_readme_example_prefers_no_quality_risk_over_a_faster_risky_remedy(
        readme_plan: Plan) -> None:
    # ZeRO-2 + bf16 weights fits without recomputing anything (31% faster) but drops the fp32
    # copy of the weights: it is named, with its risk, and not chosen.
    risky = next(r for r in readme_plan.remedies if r.changes == {"zero": 2,
                                                                  "precision": "bf16-true"})
    assert risky.fits and risky.quality_risk == 2 and risky.relative_throughput == 1.0
    assert readme_plan.remedy_reason is not None
    assert "ZeRO-2 + bf16 weights (quality risk, though 31% faster)" in readme_plan.remedy_reason
    # ZeRO-3 computes alike but moves 1.5x DDP's communication (Rajbhandari et al. 2020).
    assert "ZeRO-3 + full checkpointing (1.5x DDP's communication)" in readme_plan.remedy_reason
    # The old choice is still among the candidates, behind the chosen one.
    old = [r.changes for r in readme_plan.remedies].index(
        {"checkpointing": "full", "optimizer": "adamw-8bit", "precision": "bf16-true"})
    assert readme_plan.remedies[old].fits and old > 0


def test_every_combination_is_tried_once_in_order_of_preference(readme_plan: Plan) -> None:
    # ZeRO stage 0-3 x checkpointing none/selective/full x AdamW / 8-bit x bf16-mixed / bf16-true
    # = 4 x 3 x 2 x 2 = 48 combinations, less the plan as asked.
    changes = [tuple(sorted(r.changes.items())) for r in readme_plan.remedies]
    assert len(changes) == len(set(changes)) == 4 * 3 * 2 * 2 - 1
    assert all(set(r.changes) <= LEVERS and r.changes for r in readme_plan.remedies)
    assert readme_plan.remedies == sorted(readme_plan.remedies, key=preference)
    fitting = [r for r in readme_plan.remedies if r.fits]
    assert all(r.micro_batch_size is not None for r in fitting)
    assert all(r.micro_batch_size is None for r in readme_plan.remedies if not r.fits)


def test_each_remedy_memory_is_training_memory_with_its_changes(readme_plan: Plan) -> None:
    r = next(r for r in readme_plan.remedies
             if r.changes == {"zero": 1, "checkpointing": "full", "precision": "bf16-true"})
    direct = training_memory(LLAMA3, micro_batch_size=1, seq_len=8192, precision="bf16-true",
                             checkpointing="full", parallelism=Parallelism(data=8, zero=1))
    assert r.total_bytes == direct.total
    # and the largest micro-batch it fits at: the next size up (the step divides by 1, 2, 4, 8,
    # ...) does not fit.
    b = r.micro_batch_size
    assert b is not None
    at_b = training_memory(LLAMA3, micro_batch_size=b, seq_len=8192, precision="bf16-true",
                           checkpointing="full", parallelism=Parallelism(data=8, zero=1))
    above = training_memory(LLAMA3, micro_batch_size=2 * b, seq_len=8192,
                            precision="bf16-true", checkpointing="full",
                            parallelism=Parallelism(data=8, zero=1))
    available = readme_plan.available_bytes
    assert at_b.total <= available < above.total


def test_a_model_that_fits_gets_no_remedy() -> None:
    # GPT-2 small at micro-batch 1 on an RTX 4070 (12 GiB) is well under its memory.
    assert training_memory(GPTConfig.preset("gpt2"), micro_batch_size=1, seq_len=1024).total \
        < available_memory_bytes(gpu("RTX 4070"))
    p = plan(GPTConfig.preset("gpt2"), "RTX 4070")
    assert p.remedy is None and p.remedy_reason is None and p.remedies == []
    assert (p.precision, p.optimizer, p.checkpointing) == ("bf16-mixed", "adamw", "none")
    assert "to fit" not in p.report()


def test_only_8bit_adamw_fits_so_it_is_chosen_and_its_quality_risk_said() -> None:
    # GPT-2 XL (1.56B) on one RTX 4090: even full checkpointing needs more than 24 GiB.
    xl = GPTConfig.preset("gpt2-xl")
    available = available_memory_bytes(gpu("RTX 4090"))
    for level in ("selective", "full"):
        assert training_memory(xl, micro_batch_size=1, seq_len=1024,
                               checkpointing=level).total > available
    assert training_memory(xl, micro_batch_size=1, seq_len=1024,
                           optimizer="adamw-8bit").total <= available
    p = plan(xl, "RTX 4090")
    assert p.remedy == "8-bit AdamW" and p.optimizer == "adamw-8bit"
    assert p.precision == "bf16-mixed" and p.checkpointing == "none"
    assert p.remedy_reason is not None
    assert "quality risk: 8-bit optimizer states" in p.remedy_reason
    assert "nothing without a quality risk fits (the lightest, full activation checkpointing" \
        in p.remedy_reason
    assert p.remedies[0].quality_risk == 1
    # bf16 weights also fit, with the larger risk of dropping the fp32 copy
    assert p.remedy_reason.endswith("chosen over bf16 weights (bf16-true) (a larger quality risk)")


def test_only_bf16_weights_fit_so_they_are_chosen_and_their_quality_risk_said() -> None:
    # Llama 2 7B at seq_len 1024 on an A100 80GB: with fp32 weights and gradients nothing fits,
    # not even full checkpointing with 8-bit AdamW; bf16 weights with no fp32 copy do.
    llama2 = GPTConfig.preset("llama-2-7b")
    available = available_memory_bytes(gpu("A100 80GB"))
    assert training_memory(llama2, micro_batch_size=1, seq_len=1024, checkpointing="full",
                           optimizer="adamw-8bit").total > available
    assert training_memory(llama2, micro_batch_size=1, seq_len=1024,
                           precision="bf16-true").total <= available
    p = plan(llama2, "A100 80GB", seq_len=1024)
    assert p.precision == "bf16-true" and p.optimizer == "adamw"
    assert p.remedies[0].changes == {"precision": "bf16-true"}
    assert p.remedy_reason is not None
    assert "quality risk: bf16 weights with no fp32 copy" in p.remedy_reason
    assert p.precision_reason.startswith("changed to fit")


def test_zero_is_never_proposed_on_one_gpu() -> None:
    p = plan(GPTConfig.preset("gpt2-xl"), "RTX 4070", seq_len=1024)
    assert p.remedy is not None and p.remedies
    assert all("zero" not in r.changes and "ZeRO" not in r.name for r in p.remedies)
    # checkpointing 3 x optimizer 2 x precision 2, less the plan as asked
    assert len(p.remedies) == 3 * 2 * 2 - 1
    assert p.parallelism is None


def test_zero_over_4_gpus_is_free_and_beats_checkpointing() -> None:
    # GPT-2 XL on 4 x RTX 4090: a ZeRO stage fits without recomputing anything and without a
    # quality risk; stages 1 and 2 move DDP's volume (Rajbhandari et al. 2020, Sec. 7).
    p = plan(GPTConfig.preset("gpt2-xl"), "RTX 4090", world_size=4, seq_len=1024)
    chosen = p.remedies[0]
    assert set(chosen.changes) == {"zero"} and chosen.changes["zero"] in (1, 2)
    assert chosen.relative_throughput == 1.0 and chosen.communication == 1.0
    assert chosen.quality_risk == 0 and p.checkpointing == "none"


def _remedy(name: str, changes: dict[str, str | int], fits: bool) -> Remedy:
    return Remedy(name=name, changes=changes, total_bytes=1, fits=fits, cost="-")


def test_minimal_keeps_the_fitting_remedies_no_smaller_change_fits() -> None:
    full = _remedy("full", {"checkpointing": "full"}, True)
    zero2_full = _remedy("zero2+full", {"zero": 2, "checkpointing": "full"}, True)
    zero3 = _remedy("zero3", {"zero": 3}, True)
    zero2 = _remedy("zero2", {"zero": 2}, False)
    zero2_8bit = _remedy("zero2+8bit", {"zero": 2, "optimizer": "adamw-8bit"}, True)
    kept = minimal([full, zero2_full, zero3, zero2, zero2_8bit])
    # zero2+full adds a change to full; zero2 does not fit
    assert [r.name for r in kept] == ["full", "zero3", "zero2+8bit"]


def test_nothing_fits_on_two_gpus_counts_the_states_zero3_already_shards() -> None:
    # Llama 2 7B on 2 x RTX 4070: the lightest combination is ZeRO-3 + full checkpointing +
    # 8-bit AdamW + bf16 weights, whose weights, gradients and optimizer states are half of the
    # model's on each GPU; the GPUs to shard over count all of them.
    llama2 = GPTConfig.preset("llama-2-7b")
    light = training_memory(llama2, micro_batch_size=1, seq_len=1024, checkpointing="full",
                            optimizer="adamw-8bit", precision="bf16-true",
                            parallelism=Parallelism(data=2, zero=3))
    states = light.weights + light.gradients + light.optimizer
    available = available_memory_bytes(gpu("RTX 4070"))
    gpus = math.ceil(2 * states / (available - (light.total - states)))
    assert gpus == 4  # 39.2 GiB of states over 12.0 - 2.0 GiB a GPU
    with pytest.raises(ScaleplanError, match=rf"over at least {gpus} GPUs \(ZeRO-3"):
        plan(llama2, "RTX 4070", world_size=2, seq_len=1024)


def test_nothing_left_to_change_is_a_clear_error() -> None:
    # bf16 weights, full checkpointing and SGD already asked for on one GPU: no combination is
    # left to try, and Llama 2 7B's bf16 weights alone (2 x 6.74e9 bytes = 12.6 GiB) exceed an
    # RTX 4070's 12 GiB.
    assert available_memory_bytes(gpu("RTX 4070")) < 2 * 6_738_415_616
    with pytest.raises(ScaleplanError, match=r"nothing fits on one RTX 4070 .* with the settings "
                       r"asked for \(no lever left to pull\)"):
        plan(GPTConfig.preset("llama-2-7b"), "RTX 4070", precision="bf16-true",
             optimizer="sgd", checkpointing="full")


def test_fp32_to_bf16_weights_predicts_the_tensor_core_speedup() -> None:
    # Llama 2 7B asked for in fp32 on an A100 80GB: bf16 weights run on the tensor cores, 312
    # against 19.5 TFLOP/s dense (NVIDIA A100 datasheet) = 16x; 8-bit AdamW, a smaller risk,
    # also fits and is chosen, and the reason says what bf16 would have gained.
    p = plan(GPTConfig.preset("llama-2-7b"), "A100 80GB", seq_len=1024, precision="32-true")
    bf16 = next(r for r in p.remedies if r.changes == {"precision": "bf16-true"})
    assert bf16.relative_throughput == pytest.approx(312 / 19.5, rel=1e-12)
    assert p.remedy == "8-bit AdamW" and p.precision == "32-true"
    assert p.remedy_reason is not None
    assert "bf16 weights (bf16-true) (a larger quality risk, though 16.0x as fast)" \
        in p.remedy_reason


def test_the_exports_carry_the_zero_stage_the_remedy_chose() -> None:
    # the README example fits with ZeRO-2 (see above): a DeepSpeed config with stage 0 would run
    # out of memory, and so would a Trainer without DeepSpeed
    from scaleplan.planning.exporters import to_deepspeed, to_hf_training_args

    p = plan(GPTConfig.preset("llama-3-8b"), "H100 SXM", world_size=8, tokens_per_step=2**22)
    assert p.parallelism is not None and p.parallelism.zero == 2
    assert to_deepspeed(p)["zero_optimization"] == {"stage": 2}
    assert to_hf_training_args(p)["deepspeed"] == "ds_config.json"
    fsdp = plan(GPTConfig.preset("llama-3-8b"), "H100 SXM", tokens_per_step=2**22,
                parallelism=Parallelism(data=8, fsdp="full_shard"), checkpointing="full")
    assert to_deepspeed(fsdp)["zero_optimization"] == {"stage": 3}  # FSDP full_shard = ZeRO-3
    assert to_hf_training_args(fsdp)["fsdp"] == "full_shard"


@pytest.mark.parametrize("options", [{"compile": True}, {"implementation": "hf"}])
def test_levers_the_memory_model_refuses_are_not_offered(options: dict[str, object]) -> None:
    # GPT-2 large does not fit an RTX 4070 as asked, so plan() searches the levers. torch.compile
    # has no bf16-true or selective-checkpointing terms and the Hugging Face terms no bf16-true:
    # training_memory refuses those combinations, and the search used to crash on the first one
    # (the HF one with a bare ValueError) instead of passing over it.
    cfg = GPTConfig.preset("gpt2-large")
    p = plan(cfg, "RTX 4070", **options)  # type: ignore[arg-type]
    assert p.remedy is not None and p.remedies
    for r in p.remedies:  # every lever offered is one training_memory accepts with the options
        m = training_memory(cfg, micro_batch_size=1, seq_len=1024, **options,  # type: ignore[arg-type]
                            **{k: v for k, v in r.changes.items() if k != "zero"})
        assert m.total == r.total_bytes
    assert not any(r.changes.get("precision") == "bf16-true" for r in p.remedies)


def test_hf_refuses_bf16_true_by_name() -> None:
    with pytest.raises(ScaleplanError, match="precision='bf16-true'"):
        training_memory(GPTConfig.preset("gpt2"), micro_batch_size=1, seq_len=64,
                        precision="bf16-true", implementation="hf")

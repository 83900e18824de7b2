"""Validators embedded in users' own pydantic models: the seed case, each rule's numbers (by
hand), failures at class definition, JSON schema, and `check` findings."""

from __future__ import annotations

import json
from typing import Annotated, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

import scaleplan.validation.markers as validators
from scaleplan.errors import ScaleplanError, UnknownNameError
from scaleplan.model.config import GPTConfig
from scaleplan.model.training_config import TrainingConfig
from scaleplan.validation.markers import (
    DivisibleStep,
    FitsOn,
    MaxParams,
    ParamsNear,
    TokensPerParam,
    check,
    parse_claim,
)

GiB = 2**30

# shared/seed-case.md: the user's nanoGPT config and its comment "Model (~125M parameters)".
SEED = {"n_layer": 12, "n_head": 12, "n_embd": 384, "vocab_size": 50304, "block_size": 1024,
        "bias": False, "dropout": 0.1}
# batch_size 16 x 1024 tokens x 32 accumulation steps = 524,288 tokens per step; 14,500 steps.
SEED_TRAINING = {"micro_batch_size": 16, "seq_len": 1024, "grad_accum_steps": 32,
                 "max_iters": 14_500}
# Hand count of the seed model (bias False: norms have a weight only), d = 384:
#   per block 12 d^2 + 2 d = 1,769,472 + 768 = 1,770,240; x 12 = 21,242,880
#   wte 50304 x 384 = 19,316,736; final norm 384  -> nanoGPT's count 40,560,000 (seed-case.md)
#   + wpe 1024 x 384 = 393,216                    -> total 40,953,216
SEED_NANOGPT = 40_560_000
SEED_TOTAL = 40_953_216


class Run(BaseModel):
    """A team's description of one run: the model and how it is trained."""

    model: GPTConfig
    training: TrainingConfig


def _error(exc: pytest.ExceptionInfo[ValidationError]) -> dict[str, Any]:
    errors = exc.value.errors()
    assert len(errors) == 1
    return dict(errors[0])


# ---------------------------------------------------------------- ParamsNear and the seed case


def test_seed_config_fails_its_125m_claim_with_both_numbers() -> None:
    class Team(BaseModel):
        run: Annotated[Run, ParamsNear("~125M", count="nanogpt")]

    with pytest.raises(ValidationError) as exc:
        Team.model_validate({"run": {"model": SEED, "training": SEED_TRAINING}})
    err = _error(exc)
    assert err["type"] == "scaleplan.params_mismatch"
    assert "40.56M vs ~125M" in err["msg"]
    assert err["ctx"]["actual_params"] == SEED_NANOGPT
    assert err["ctx"]["claimed_params"] == 125_000_000
    assert err["ctx"]["relative_error"] == pytest.approx(1 - 40.56 / 125)


def test_params_mismatch_names_the_width_that_matches_the_claim() -> None:
    # nanoGPT count at n_embd = d, vocab 50304, bias False, 12 layers: 12 (12 d^2 + 2 d) + 50304 d
    # + d.  d=768: 84,953,088 + 38,633,472 + 768 = 123,587,328 (1.41M from 125M);
    # d=756: 120,349,908 (4.65M off); d=780: 126,866,220 (1.87M off). So n_embd=768 is nearest.
    findings = check(GPTConfig(**SEED), ParamsNear("~125M", count="nanogpt"))
    assert "set n_embd=768 (123.59M)" in findings[0].message
    assert "correct the claim to ~40.56M" in findings[0].message


def test_gpt2_small_matches_its_124m_name_by_total_count() -> None:
    # GPT-2 small: 124,439,808 parameters (HF count, design notes): 0.355% above 124M.
    ta = TypeAdapter(Annotated[GPTConfig, ParamsNear("124M", rel_tol=0.004)])
    assert ta.validate_python(GPTConfig.preset("gpt2")).n_embd == 768
    strict = TypeAdapter(Annotated[GPTConfig, ParamsNear("124M", rel_tol=0.003)])
    with pytest.raises(ValidationError, match=r"124\.44M vs 124M"):
        strict.validate_python(GPTConfig.preset("gpt2"))


def test_params_near_tolerance_is_relative_to_the_claim() -> None:
    # 123,653,376 vs 124,000,000 is 0.2796% off: inside 0.3%, outside 0.25%.
    gpt2 = GPTConfig.preset("gpt2")
    inside = TypeAdapter(Annotated[GPTConfig, ParamsNear(124e6, rel_tol=0.003, count="nanogpt")])
    assert inside.validate_python(gpt2) == gpt2
    outside = TypeAdapter(Annotated[GPTConfig, ParamsNear(124e6, rel_tol=0.0025,
                                                          count="nanogpt")])
    with pytest.raises(ValidationError, match=r"123\.65M vs 124M"):
        outside.validate_python(gpt2)


@pytest.mark.parametrize(("text", "value"), [
    ("~125M", 125_000_000), ("125M", 125_000_000), ("1.5B", 1_500_000_000),
    ("124,439,808", 124_439_808), ("Model (~125M parameters) - perfect for 12 GB VRAM",
                                   125_000_000), ("350k", 350_000), (7e9, 7_000_000_000),
])
def test_claims_parse_as_numbers_or_text(text: str | float, value: int) -> None:
    assert parse_claim(text) == value


@pytest.mark.parametrize(("claimed", "match"), [
    ("about a hundred million", r"claimed='about a hundred million' is not a parameter count"),
    (-5, r"claimed=-5 must be a positive parameter count"),
    (True, r"claimed=True must be a number"),
])
def test_bad_claims_fail_when_the_marker_is_built(claimed: Any, match: str) -> None:
    with pytest.raises(ScaleplanError, match=match):
        ParamsNear(claimed)


# ----------------------------------------------------- misconfigured markers fail at definition


def test_negative_tolerance_fails_when_the_users_class_is_defined() -> None:
    with pytest.raises(ScaleplanError, match=r"rel_tol=-0.1 must be a finite number >= 0"):
        class Bad(BaseModel):
            cfg: Annotated[GPTConfig, ParamsNear("~125M", rel_tol=-0.1)]


def test_min_above_max_fails_when_the_marker_is_built() -> None:
    with pytest.raises(ScaleplanError, match=r"min=30 is above max=10; swap them"):
        TokensPerParam(min=30, max=10)
    with pytest.raises(ScaleplanError, match=r"needs min= or max="):
        TokensPerParam()


def test_unknown_gpu_fails_when_the_users_class_is_defined() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown GPU 'RTX 9999'"):
        class Bad(BaseModel):
            cfg: Annotated[GPTConfig, FitsOn("RTX 9999", micro_batch_size=8, seq_len=1024)]


def test_fits_on_a_bare_config_without_batch_shape_fails_at_definition() -> None:
    with pytest.raises(ScaleplanError, match=r"FitsOn on GPTConfig needs micro_batch_size, "
                                             r"seq_len, which GPTConfig does not have"):
        class Bad(BaseModel):
            cfg: Annotated[GPTConfig, FitsOn(12 * GiB, memory_model=lambda cfg, **kw: 0)]


def test_a_model_without_a_gptconfig_field_fails_at_definition() -> None:
    class NoModel(BaseModel):
        name: str

    with pytest.raises(ScaleplanError, match=r"NoModel has no GPTConfig field; name the one"):
        TypeAdapter(Annotated[NoModel, MaxParams("1B")])


def test_two_gptconfig_fields_need_model_field() -> None:
    class Pair(BaseModel):
        student: GPTConfig
        teacher: GPTConfig

    with pytest.raises(ScaleplanError, match=r"several GPTConfig fields \(student, teacher\)"):
        TypeAdapter(Annotated[Pair, MaxParams("100M")])
    ta = TypeAdapter(Annotated[Pair, MaxParams("100M", model_field="student")])
    with pytest.raises(ValidationError, match=r"more than the limit of 100M"):
        ta.validate_python({"student": GPTConfig.preset("gpt2"), "teacher": SEED})
    with pytest.raises(ScaleplanError, match=r"model_field='pupil': Pair has no such field"):
        TypeAdapter(Annotated[Pair, MaxParams("100M", model_field="pupil")])


# ------------------------------------------------------------------------------- TokensPerParam


def test_seed_run_is_far_past_the_compute_optimal_budget() -> None:
    # seed-case.md: 14,500 steps x 524,288 tokens = 7,602,176,000 tokens for 40,953,216
    # parameters (all of them, as Hoffmann et al. 2022 count): 185.6 tokens per parameter.
    # At max 40: max_iters <= 40 x 40,953,216 / 524,288 = 3,124.5 -> 3,124.
    ta = TypeAdapter(Annotated[Run, TokensPerParam(min=15, max=40)])
    with pytest.raises(ValidationError) as exc:
        ta.validate_python({"model": SEED, "training": SEED_TRAINING})
    err = _error(exc)
    assert err["type"] == "scaleplan.tokens_per_param"
    assert err["ctx"]["tokens"] == 7_602_176_000
    assert err["ctx"]["params"] == SEED_TOTAL
    assert err["ctx"]["tokens_per_param"] == pytest.approx(7_602_176_000 / SEED_TOTAL)
    assert "185.6 tokens per parameter, above the max of 40" in err["msg"]
    assert "set max_iters=3,124" in err["msg"]


def test_too_few_tokens_names_the_steps_that_reach_the_minimum() -> None:
    # min 20: 20 x 40,953,216 = 819,064,320 tokens = 1,562.25 steps of 524,288 -> 1,563.
    run = {"model": SEED, "training": {**SEED_TRAINING, "max_iters": 100}}
    with pytest.raises(ValidationError, match=r"below the min of 20; set max_iters=1,563"):
        TypeAdapter(Annotated[Run, TokensPerParam(min=20)]).validate_python(run)


def test_tokens_can_be_given_to_the_marker_or_read_from_a_named_field() -> None:
    bare = TypeAdapter(Annotated[GPTConfig, TokensPerParam(max=25, tokens=10**9)])
    with pytest.raises(ValidationError, match=r"24\.4 tokens per parameter"):  # 1e9 / 40.95M
        TypeAdapter(Annotated[GPTConfig, TokensPerParam(max=20, tokens=10**9)]).validate_python(
            SEED)
    assert bare.validate_python(SEED).n_embd == 384

    class Flat(BaseModel):
        model: GPTConfig
        train_tokens: int

    ta = TypeAdapter(Annotated[Flat, TokensPerParam(min=20, tokens_from="train_tokens")])
    with pytest.raises(ValidationError, match=r"below the min of 20; train on about 819.06M"):
        ta.validate_python({"model": SEED, "train_tokens": 10**8})
    with pytest.raises(ScaleplanError, match=r"needs total_tokens, which Flat does not have"):
        TypeAdapter(Annotated[Flat, TokensPerParam(min=20)])


# ---------------------------------------------------------------------------------- DivisibleStep


def test_divisible_step_names_the_exact_accumulation() -> None:
    # 16 x 1024 x 30 = 491,520 tokens; 524,288 / (16 x 1024) = 32 exactly.
    ta = TypeAdapter(Annotated[Run, DivisibleStep(524_288)])
    run = {"model": SEED, "training": {**SEED_TRAINING, "grad_accum_steps": 30}}
    with pytest.raises(ValidationError) as exc:
        ta.validate_python(run)
    err = _error(exc)
    assert err["type"] == "scaleplan.step_not_divisible"
    assert "gives 491,520 tokens per step, not 524,288; set grad_accum_steps=32" in err["msg"]
    assert ta.validate_python({"model": SEED, "training": SEED_TRAINING}).training \
        .grad_accum_steps == 32


def test_divisible_step_with_a_micro_batch_that_cannot_divide_names_neighbours() -> None:
    # 524,288 / (12 x 1024) = 42.67: 42 steps give 516,096 tokens, 43 give 528,384.
    run = {"model": SEED, "training": {**SEED_TRAINING, "micro_batch_size": 12}}
    with pytest.raises(ValidationError, match=r"grad_accum_steps=42 gives 516,096 tokens or "
                                              r"grad_accum_steps=43 gives 528,384 tokens"):
        TypeAdapter(Annotated[Run, DivisibleStep(524_288)]).validate_python(run)


# ------------------------------------------------------------------- FitsOn with a memory model


def _linear_memory(calls: list[dict[str, Any]] | None = None) -> Any:
    """2 GiB fixed + 1 GiB per sequence: max micro-batch in 12 GiB is 10, by hand."""

    def model(cfg: GPTConfig, **kw: Any) -> int:
        if calls is not None:
            calls.append(kw)
        return 2 * GiB + kw["micro_batch_size"] * GiB

    return model


def test_fits_on_reads_the_batch_shape_and_precision_from_the_training_part() -> None:
    calls: list[dict[str, Any]] = []
    ta = TypeAdapter(Annotated[Run, FitsOn(12 * GiB, memory_model=_linear_memory(calls))])
    training = {**SEED_TRAINING, "micro_batch_size": 8, "precision": "amp-bf16"}
    ta.validate_python({"model": SEED, "training": training})
    assert calls[0] == {"micro_batch_size": 8, "seq_len": 1024, "precision": "bf16-mixed",
                        "optimizer": "adamw", "attention": "flash", "checkpointing": "none"}


def test_does_not_fit_reports_bytes_in_gib_and_the_micro_batch_that_fits() -> None:
    # micro-batch 16 needs 18 GiB of 12; 10 fits; the largest size <= 10 dividing the 512
    # sequences of a 524,288-token step is 8, with 524,288 / (8 x 1024) = 64 accumulation steps.
    ta = TypeAdapter(Annotated[Run, FitsOn(12 * GiB, memory_model=_linear_memory())])
    with pytest.raises(ValidationError) as exc:
        ta.validate_python({"model": SEED, "training": SEED_TRAINING})
    err = _error(exc)
    assert err["type"] == "scaleplan.does_not_fit"
    assert err["ctx"]["needed_bytes"] == 18 * GiB
    assert err["ctx"]["available_bytes"] == 12 * GiB
    assert err["ctx"]["max_micro_batch_size"] == 10
    assert "needs 18.00 GiB but the GPU has 12.00 GiB" in err["msg"]
    assert "(6.00 GiB over)" in err["msg"]
    assert "use micro_batch_size=8 with grad_accum_steps=64 to keep 524,288 tokens" in err["msg"]
    assert " GB" not in err["msg"]


def test_headroom_and_nothing_fits() -> None:
    # 3 GiB at micro-batch 1; with 80% of 3 GiB usable (2.4 GiB) nothing fits.
    ta = TypeAdapter(Annotated[GPTConfig, FitsOn(3 * GiB, micro_batch_size=4, seq_len=256,
                                                 headroom=0.2, memory_model=_linear_memory())])
    with pytest.raises(ValidationError, match=r"even micro_batch_size=1 needs 3.00 GiB: use "
                                              r"activation checkpointing"):
        ta.validate_python(SEED)


def test_fits_on_a_rtx_4070_uses_the_driver_reported_memory() -> None:
    # nvidia-smi reports 12,282 MiB on an RTX 4070 (hardware database).
    marker = FitsOn("rtx4070", micro_batch_size=1, seq_len=1024, memory_model=_linear_memory())
    assert marker.available_bytes == 12_282 * 2**20
    assert marker.gpu_name == "RTX 4070"


def test_fits_on_rejects_bad_settings_at_construction() -> None:
    mm = _linear_memory()
    with pytest.raises(ScaleplanError, match=r"micro_batch_size=0 must be a positive int"):
        FitsOn(12 * GiB, micro_batch_size=0, seq_len=1024, memory_model=mm)
    with pytest.raises(ScaleplanError, match=r"headroom=1.5 must be a fraction in \[0, 1\)"):
        FitsOn(12 * GiB, headroom=1.5, memory_model=mm)
    with pytest.raises(ScaleplanError, match=r"checkpointing='all' is not one of"):
        FitsOn(12 * GiB, checkpointing="all", memory_model=mm)
    with pytest.raises(UnknownNameError, match=r"unknown precision 'fp17'"):
        FitsOn(12 * GiB, precision="fp17", memory_model=mm)


def test_flat_model_supplies_its_own_batch_shape() -> None:
    class Flat(BaseModel):
        model: GPTConfig
        micro_batch_size: int
        seq_len: int

    ta = TypeAdapter(Annotated[Flat, FitsOn(12 * GiB, memory_model=_linear_memory())])
    assert ta.validate_python({"model": SEED, "micro_batch_size": 10, "seq_len": 512})
    with pytest.raises(ValidationError, match=r"needs 13.00 GiB"):
        ta.validate_python({"model": SEED, "micro_batch_size": 11, "seq_len": 512})


# ------------------------------------------------------------ pydantic integration: JSON, schema


def test_model_validate_json_and_optional_values() -> None:
    class Team(BaseModel):
        run: Annotated[Run, ParamsNear("~125M", count="nanogpt")] | None = None

    assert Team.model_validate_json("{}").run is None
    payload = json.dumps({"run": {"model": SEED, "training": SEED_TRAINING}})
    with pytest.raises(ValidationError, match=r"40\.56M vs ~125M"):
        Team.model_validate_json(payload)
    good = json.dumps({"run": {"model": {**SEED, "n_embd": 768}, "training": SEED_TRAINING}})
    assert Team.model_validate_json(good).run is not None


def test_json_schema_describes_the_constraint_only_where_it_is_applied() -> None:
    class Team(BaseModel):
        checked: Annotated[GPTConfig, MaxParams("1B"), ParamsNear("~125M")]
        described: Annotated[GPTConfig, MaxParams("1B")] = Field(description="Ours.")
        plain: GPTConfig

    class Plain(BaseModel):
        plain: GPTConfig

    schema = Team.model_json_schema()
    props = schema["properties"]
    assert props["checked"]["description"] == (
        "At most 1B parameters (total). Parameters (total) within 10% of ~125M (125,000,000).")
    assert props["checked"]["x-scaleplan"] == ["At most 1B parameters (total).",
                                               "Parameters (total) within 10% of ~125M "
                                               "(125,000,000)."]
    assert props["described"]["description"] == "Ours."
    assert props["described"]["x-scaleplan"] == ["At most 1B parameters (total)."]
    assert props["plain"] == {"$ref": "#/$defs/GPTConfig"}
    assert schema["$defs"]["GPTConfig"] == Plain.model_json_schema()["$defs"]["GPTConfig"]


def test_type_adapter_json_schema_of_a_fits_on_config() -> None:
    ta = TypeAdapter(Annotated[GPTConfig, FitsOn(12 * GiB, micro_batch_size=8, seq_len=1024,
                                                 memory_model=_linear_memory())])
    assert ta.json_schema()["description"] == (
        "Fits in the GPU (12.00 GiB) at micro_batch_size=8, seq_len=1024, bf16-mixed.")


# ------------------------------------------------------------------------------------- check()


def test_check_returns_findings_instead_of_raising() -> None:
    run = Run.model_validate({"model": SEED, "training": SEED_TRAINING})
    findings = check(run, ParamsNear("~125M", count="nanogpt"), TokensPerParam(max=40),
                     MaxParams("1B"), FitsOn(20 * GiB, memory_model=_linear_memory()))
    codes = [(f.severity, f.code) for f in findings]
    # 18 GiB of 20 GiB is 90%: under the 95% tight-fit line, so no warning.
    assert codes == [("error", "scaleplan.params_mismatch"),
                     ("error", "scaleplan.tokens_per_param")]
    assert findings[0].numbers["actual_params"] == SEED_NANOGPT


def test_check_warns_of_a_tight_fit_that_the_marker_lets_through() -> None:
    # 18 GiB of 18.5 GiB is 97.3% > 95%: a warning, never an error.
    marker = FitsOn(round(18.5 * GiB), memory_model=_linear_memory())
    run = Run.model_validate({"model": SEED, "training": SEED_TRAINING})
    [finding] = check(run, marker)
    assert (finding.severity, finding.code) == ("warning", "scaleplan.tight_fit")
    assert finding.numbers["needed_bytes"] == 18 * GiB
    assert TypeAdapter(Annotated[Run, marker]).validate_python(run) == run


def test_check_takes_training_settings_for_a_bare_config() -> None:
    training = TrainingConfig(**SEED_TRAINING)
    [finding] = check(GPTConfig(**SEED), TokensPerParam(max=40), training=training)
    assert finding.numbers["tokens"] == 7_602_176_000
    [missing] = check(GPTConfig(**SEED), TokensPerParam(max=40))
    assert missing.code == "scaleplan.missing_setting"
    assert missing.labels == {"setting": "total_tokens"}


def test_every_error_type_is_documented_in_the_module_docstring() -> None:
    for code in ("does_not_fit", "params_mismatch", "tokens_per_param", "too_many_params",
                 "step_not_divisible", "missing_setting", "tight_fit"):
        assert f"scaleplan.{code}" in (validators.__doc__ or "")


@settings(max_examples=25, deadline=None)
@given(n_layer=st.integers(1, 8), n_head=st.integers(1, 8), k=st.integers(1, 32),
       vocab=st.integers(1, 60_000))
def test_a_claim_of_the_exact_count_always_passes_with_zero_tolerance(
        n_layer: int, n_head: int, k: int, vocab: int) -> None:
    cfg = GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_head * k, vocab_size=vocab)
    # total = wte + wpe + blocks: the same count claimed exactly must pass at rel_tol=0.
    exact = TypeAdapter(Annotated[GPTConfig, ParamsNear(1, rel_tol=0)])
    with pytest.raises(ValidationError):
        exact.validate_python(cfg)
    [finding] = check(cfg, ParamsNear(1, rel_tol=0))
    actual = int(finding.numbers["actual_params"])
    assert check(cfg, ParamsNear(actual, rel_tol=0)) == []
    assert check(cfg, ParamsNear(actual + 1, rel_tol=0))[0].numbers["claimed_params"] == actual + 1

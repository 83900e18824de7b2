"""The MFU a plan assumes when none is given: the median of published runs on the GPU's class,
checked against the seed case and the published figures themselves, and the time printed as a
range that brackets the point estimate."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from scaleplan.compute.flops import flops_per_token
from scaleplan.compute.mfu_defaults import default_mfu, gpu_class, mfu_evidence
from scaleplan.model.config import GPTConfig
from scaleplan.planning.planner import plan

GPT2 = GPTConfig.preset("gpt2")
EVIDENCE = Path(__file__).parent.parent / "scaleplan" / "data" / "mfu_evidence.csv"

# The seed case (docs/seed-case.md): nanoGPT prints "mfu 11.62%" against an A100's 312 TFLOP/s;
# the RTX 4070's dense bf16 peak is 46 SMs x 2.475 GHz x 512 FLOP/clock/SM.
SEED_MFU = 0.1162 * 312e12 / (46 * 2.475e9 * 512)  # = 0.62195
RTX4070_PEAK = 46 * 2.475e9 * 512


def test_seed_case_measured_mfu_lies_in_the_rtx_4070_class_range() -> None:
    d = default_mfu("RTX 4070")
    assert d.low <= SEED_MFU <= d.high
    # The old flat guess, 30 %, lies below every published consumer-GPU run.
    assert d.low > 0.30


def test_rtx_4070_default_is_the_median_of_three_published_runs() -> None:
    # RTX 4070 seed case 62.2 %; nanoGPT issue #182 on an RTX 4090: printed 29 % of 312 TFLOP/s
    # over the 4090's 165.2 = 54.8 %; modula PR #1 on an A10: printed 43.46 %.
    rtx4090 = 0.29 * 312 / 165.2
    assert rtx4090 == pytest.approx(0.548, abs=5e-4)
    d = default_mfu("RTX 4070")
    assert (d.mfu, d.low, d.high) == (0.548, 0.435, 0.622)
    assert len(d.evidence) == 3 and d.gpu_class == "ada-ampere"
    assert "3 published runs" in d.source


def test_h100_default_lies_within_its_published_figures() -> None:
    # Llama 3 405B (Dubey et al. 2024, Table 4): 38-43 % BF16 MFU on H100s; 380 and 430 TFLOP/s
    # per GPU over the 989 TFLOP/s dense peak. fms-fsdp's README: a 7B model at 46 %.
    lowest, highest = 380 / 989, 0.46
    for name in ("H100 SXM", "H200"):
        d = default_mfu(name)
        assert lowest - 1e-3 <= d.low <= d.mfu <= d.high <= highest
        # median of 38.4, 40.4, 43.5 and 46 %: (40.4 + 43.5) / 2
        assert d.mfu == pytest.approx((0.404 + 0.435) / 2, abs=1e-9)


def test_a_class_without_evidence_falls_back_to_all_runs_and_says_so() -> None:
    with EVIDENCE.open(encoding="utf-8", newline="") as handle:
        every = sorted(float(row["mfu"]) for row in csv.DictReader(handle))
    assert len(every) == 10
    d = default_mfu("T4")
    assert d.gpu_class == "other"
    assert (d.low, d.high) == (every[0], every[-1])
    assert d.mfu == pytest.approx((every[4] + every[5]) / 2)
    assert d.source.startswith("no published run on this GPU class")


def test_gpu_classes_follow_the_chip() -> None:
    assert [gpu_class(g) for g in ("RTX 3060", "L4", "A10", "A100 PCIe 40GB", "H100 PCIe",
                                   "B200", "MI300X", "V100 SXM2 16GB")] == [
        "ada-ampere", "ada-ampere", "ada-ampere", "a100", "hopper", "other", "other", "other"]


def test_every_evidence_row_names_its_source_and_quote() -> None:
    for row in mfu_evidence():
        assert row.source.strip() and row.quote.strip() and row.how.strip(), row.id
        assert 0.2 < row.mfu < 0.8, row.id  # a fraction, not a percentage


def test_plan_hours_by_hand_at_the_default_mfu() -> None:
    # 10^10 tokens of GPT-2 small on one RTX 4070 at the class median, 54.8 %, each costing
    # scaleplan's flops_per_token; the hours arithmetic is done here by hand.
    p = plan(GPT2, "RTX 4070", tokens_per_step=524_288, total_tokens=10**10)
    tokens = 10**10
    per_token = flops_per_token(GPT2, seq_len=1024)
    assert per_token == 797_815_296  # 6 x 123,532,032 + 6 x 12 x 12 x 64 x 1024 (PaLM, causal)
    at_full_peak = tokens * per_token / RTX4070_PEAK  # seconds at MFU 1: 1.3687e5
    assert p.hours == pytest.approx(at_full_peak / 0.548 / 3600, rel=1e-9)  # 69.4 hours
    assert p.hours_low == pytest.approx(at_full_peak / 0.622 / 3600, rel=1e-9)  # 61.1
    assert p.hours_high == pytest.approx(at_full_peak / 0.435 / 3600, rel=1e-9)  # 87.4
    assert round(p.hours, 1) == 69.4
    assert (p.mfu, p.mfu_low, p.mfu_high) == (0.548, 0.435, 0.622)


@pytest.mark.parametrize("name", ["RTX 4070", "A100 SXM 80GB", "H100 SXM", "T4"])
def test_time_range_brackets_the_point_estimate(name: str) -> None:
    p = plan(GPT2, name)
    assert p.mfu_low < p.mfu < p.mfu_high
    assert p.hours_low < p.hours < p.hours_high
    # Time is inversely proportional to MFU: hours x MFU is the same at both ends.
    assert p.hours_low * p.mfu_high == pytest.approx(p.hours * p.mfu, rel=1e-12)
    assert p.hours_high * p.mfu_low == pytest.approx(p.hours * p.mfu, rel=1e-12)


def test_given_mfu_collapses_the_range_and_says_given() -> None:
    p = plan(GPT2, "RTX 4070", total_tokens=10**10, mfu=0.5)
    assert (p.mfu_low, p.mfu, p.mfu_high) == (0.5, 0.5, 0.5)
    assert p.hours_low == p.hours == p.hours_high
    assert p.mfu_source == "given"
    assert "(given)" in p.report() and "published runs" not in p.report()


def test_report_prints_the_time_range_and_its_evidence() -> None:
    line = next(x for x in plan(GPT2, "RTX 4070").report().splitlines() if "time" in x)
    # 4,651 steps x 524,288 tokens x 797,815,296 FLOPs / 58.29e12 FLOP/s = 33,375 s at MFU 1:
    # / 0.548 = 16.9 h, / 0.622 = 14.9 h, / 0.435 = 21.3 h.
    assert line.split(None, 1)[1].startswith(
        "16.9 hours at MFU 55% (14.9-21.3 hours at 44-62% MFU: median of 3 published runs on "
        "Ada/Ampere consumer and workstation GPUs")


def test_hours_budget_fills_the_hours_and_the_range_is_how_long_its_tokens_take() -> None:
    p = plan(GPT2, "RTX 4070", tokens_per_step=524_288, hours=24)
    assert p.hours == pytest.approx(24, rel=1e-6)
    # The tokens fill 24 h at 54.8 %: at 62.2 % they take 24 x 0.548 / 0.622 = 21.1 h, at
    # 43.5 % they take 24 x 0.548 / 0.435 = 30.2 h.
    assert p.hours_low == pytest.approx(24 * 0.548 / 0.622, rel=1e-6)
    assert p.hours_high == pytest.approx(24 * 0.548 / 0.435, rel=1e-6)
    assert "(these tokens take 21.1-30.2 hours at 44-62% MFU" in p.report()

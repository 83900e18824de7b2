"""The whole-step GPU harness (`scaleplan.reference.gpu_steps`), tested without a GPU: its
report arithmetic on a hand-made report, the seed case's model, its refusal without CUDA."""

from __future__ import annotations

import pytest

from scaleplan.model.params import count_params
from scaleplan.reference.gpu_steps import CASES, GPUCase, compare, markdown, predict

GiB = 2**30


def _report(measured: dict[str, int] | None, error: str | None = None) -> dict[str, object]:
    entry: dict[str, object] = {"case": CASES[0].model_dump()}
    if measured is not None:
        entry["measured"] = measured
    if error is not None:
        entry["error"] = error
    return {"versions": {"gpu": "H100", "torch": "2.x", "cuda": "13", "python": "3.12",
                         "transformers": "5.25.0"},
            "context": {"total": 80 * GiB, "driver": GiB // 2, "after_init": GiB // 2},
            "cases": [entry]}


def test_compare_derives_slack_and_context_by_hand() -> None:
    # 10 GiB allocated at the peak, 11 GiB reserved, 11.5 GiB in use by the process:
    # slack 11 / 10 - 1 = 0.1, context 11.5 - 11 = 0.5 GiB.
    report = _report({"allocated_before": 3 * GiB, "max_allocated": 10 * GiB,
                      "max_reserved": 11 * GiB, "reserved_after": 11 * GiB,
                      "device_used": 23 * GiB // 2, "params": 1, "seconds": 1.0})
    (row,) = compare(report)
    assert row["slack"] == pytest.approx(0.1)
    assert row["context"] == GiB // 2
    p = predict(CASES[0], context=GiB // 2)
    assert row["tensor_peak_ratio"] == pytest.approx(p["tensor_peak"] / (10 * GiB))
    # total with the measured context, plus the measured slack on the tensor peak
    assert row["total_ratio"] == pytest.approx((p["tensor_peak"] * 1.1 + GiB / 2) / (11.5 * GiB))
    assert "| seed eager | 10,240 | 11,264 | 11,776 | 512 | +10.0% |" in markdown(report)


def test_a_failed_case_keeps_its_error() -> None:
    (row,) = compare(_report(None, "OutOfMemoryError: CUDA out of memory"))
    assert row == {"name": "seed eager", "error": "OutOfMemoryError: CUDA out of memory"}


def test_seed_case_is_the_seed_runs_model() -> None:
    # shared/seed-case.md: nanoGPT prints "number of parameters: 40.56M" for the seed config.
    seed = next(c for c in CASES if c.name == "seed compiled")
    assert count_params(seed.config()).nanogpt == 40_560_000
    assert (seed.micro_batch_size, seed.seq_len, seed.precision, seed.compile) == (
        16, 1024, "bf16-mixed", True)


def test_every_case_is_one_training_memory_accepts() -> None:
    # a case training_memory refuses would be measured for nothing on a lent GPU
    for case in CASES:
        assert predict(case)["tensor_peak"] > 0, case.name


def test_case_block_size_grows_to_the_sequence() -> None:
    case = GPUCase(name="x", preset="gpt2", implementation="nanogpt", micro_batch_size=1,
                   seq_len=2048)
    assert case.config().block_size == 2048


@pytest.mark.torch
def test_without_cuda_it_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from scaleplan.reference.gpu_steps import main

    assert main(["--out", "unused"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.torch
def test_builds_the_seed_step_on_cpu() -> None:
    # the objects the GPU run measures, built on CPU at a short sequence: every parameter of
    # the seed model is trained by fused AdamW (nanoGPT's count plus the 1024 x 384 positions)
    pytest.importorskip("torch")
    from scaleplan.reference.gpu_steps import build_step

    case = CASES[0].model_copy(update={"micro_batch_size": 1, "seq_len": 8})
    forward, opt, params = build_step(case, "cpu")
    assert sum(p.numel() for p in params) == 40_560_000 + 1024 * 384
    loss = forward()
    assert loss.ndim == 0 and opt.defaults["fused"]

"""The GPU check (``python -m scaleplan.reference.validate --device cuda --quick``) on a machine
without a GPU: the cuda path refuses cleanly, the ``--quick`` path on CPU writes the memory
report with the live harness's values, and the report's arithmetic (slack, ratios, context)
is checked by hand on a CUDA-shaped row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scaleplan.memory.training import (
    ALLOCATOR_SLACK_FRACTION,
    CUDA_CONTEXT_BYTES,
    training_memory,
)
from scaleplan.model.config import GPTConfig
from scaleplan.reference.device_report import memory_report, report_markdown

MiB = 2**20
TINY = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=256)


def _cuda_row(allocated: int, reserved: int) -> dict[str, object]:
    """A grid row shaped as validate() writes it on a GPU (the measurement's JSON)."""
    return {"config": "gpt2-tiny", "measurement": {
        "config": TINY.model_dump(), "micro_batch_size": 2, "seq_len": 32,
        "precision": "bf16-mixed", "attention": "flash", "optimizer": "fused",
        "checkpointing": False, "hold_logits": False, "fake": False, "peak_bytes": 1,
        "cuda": {"allocated_before_step": 0, "max_allocated": allocated,
                 "max_reserved": reserved, "context_bytes": 400 * MiB}}}


def test_report_arithmetic_on_a_cuda_row_by_hand() -> None:
    context = {"total": 80 * 1024 * MiB, "driver": 300 * MiB, "after_init": 420 * MiB}
    report = memory_report([_cuda_row(40 * MiB, 50 * MiB)], device="cuda", context=context)
    case = report["cases"][0]
    assert case["slack"] == pytest.approx(50 / 40 - 1)  # reserved / allocated - 1 = 25 %
    p = training_memory(TINY, micro_batch_size=2, seq_len=32, precision="bf16-mixed",
                        optimizer_impl="fused", hold_logits=False,
                        cuda_context_bytes=420 * MiB)
    assert case["tensor_peak"] == p.tensor_peak and case["total"] == p.total
    assert case["tensor_peak_ratio"] == pytest.approx(p.tensor_peak / (40 * MiB))
    assert case["total_ratio"] == pytest.approx(p.total / (50 * MiB + 420 * MiB))
    s = report["summary"]
    assert s["slack_median"] == s["slack_max"] == pytest.approx(0.25)
    assert s["placeholder_context_bytes"] == CUDA_CONTEXT_BYTES
    assert s["placeholder_slack_fraction"] == ALLOCATOR_SLACK_FRACTION
    text = report_markdown(report)
    assert "420.00 MiB after a warm-up step" in text and "300.00 MiB after" in text
    assert "| gpt2-tiny | bf16-mixed | flash | 0.0 | False | 40.00 | 50.00 |" in text
    assert "+25.00%" in text


@pytest.mark.torch
def test_cuda_path_refuses_cleanly_without_cuda(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from scaleplan.reference import validate as v

    assert v.main(["--device", "cuda", "--quick", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --device cuda: CUDA is not available")
    assert len(err.strip().splitlines()) == 1  # one line, no traceback
    assert not (tmp_path / "out").exists()


@pytest.mark.torch
def test_quick_cpu_run_writes_the_report_with_the_live_harness_values(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from scaleplan.reference import validate as v
    from scaleplan.reference.measure import measure

    quick = list(v.grid(quick=True, device="cpu"))
    points = [quick[0], quick[5]]  # gpt2-tiny fp32 SDPA; llama-tiny bf16 autocast with dropout
    monkeypatch.setattr(v, "grid", lambda **_: iter(points))
    assert v.main(["--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "memory-report.json").read_text())
    assert report["device"] == "cpu" and report["context"] is None
    assert report["seconds"] > 0
    assert [c["config"] for c in report["cases"]] == ["gpt2-tiny", "llama-tiny"]
    for (_, cfg, kw), case in zip(points, report["cases"], strict=True):
        live = measure(cfg, device="cpu", **kw)
        assert case["max_allocated"] == live.peak_bytes
        assert case["max_reserved"] is None and case["slack"] is None
        p = training_memory(cfg, micro_batch_size=kw["micro_batch_size"],
                            seq_len=kw["seq_len"], precision=kw["precision"],
                            attention=kw["attention"], device="cpu",
                            optimizer_impl=live.optimizer, hold_logits=live.hold_logits)
        assert case["tensor_peak"] == p.tensor_peak == case["total"]  # no overhead on CPU
        assert case["tensor_peak_ratio"] == pytest.approx(p.tensor_peak / live.peak_bytes)
    markdown = (tmp_path / "memory-report.md").read_text()
    assert markdown.startswith("# Device memory report (cpu)")
    assert "2 cases." in markdown and "| llama-tiny | bf16-mixed | flash | 0.1 |" in markdown

"""The validation command: grid coverage, predictor plumbing, files written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scaleplan.model.params import count_params

pytest.importorskip("torch", reason='scaleplan.reference needs torch: pip install '
                                    '"scaleplan[torch]"')

from scaleplan.reference import validate as v


def test_quick_grid_covers_both_families_dropouts_attentions_and_precisions() -> None:
    points = list(v.grid(quick=True, device="cpu"))
    assert len(points) == 8
    assert {name for name, _, _ in points} == {"gpt2-tiny", "llama-tiny"}
    assert {cfg.dropout for _, cfg, _ in points} == {0.0, 0.1}
    assert {kw["attention"] for _, _, kw in points} == {"flash", "eager"}
    assert {kw["precision"] for _, _, kw in points} == {"32-true", "bf16-mixed"}


def test_full_grid_has_every_precision_checkpointing_and_big_fake_configs() -> None:
    points = list(v.grid(quick=False, device="cpu"))
    assert {kw["precision"] for _, _, kw in points} == set(v.PRECISION_GRID)
    assert any(kw.get("checkpointing") for _, _, kw in points)
    assert any(kw.get("cuda_semantics") for _, _, kw in points)
    assert {name for name, _, kw in points if kw.get("fake")} == {"gpt2-xl", "llama-2-7b"}
    cuda_points = list(v.grid(quick=False, device="cuda"))
    assert not any(kw.get("fake") or kw.get("cuda_semantics") for _, _, kw in cuda_points)


def test_validate_compares_params_and_reports_a_broken_predictor(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    point = next(v.grid(quick=True, device="cpu"))
    monkeypatch.setattr(v, "grid", lambda **_: iter([point]))

    def broken(_m: object) -> dict[str, float]:
        raise TypeError("training_memory() got an unexpected keyword")

    real = v.predictors
    monkeypatch.setattr(v, "predictors", lambda: {**real(), "memory": broken})
    assert v.main(["--quick", "--out", str(tmp_path)]) == 0
    row = json.loads((tmp_path / "validation.json").read_text())[0]
    expected = count_params(point[1]).total  # 120,576 for gpt2-tiny
    assert row["compare"]["params"] == {"measured": expected, "predicted": expected, "ratio": 1.0}
    assert row["compare"]["memory"] == {
        "error": "TypeError: training_memory() got an unexpected keyword"}
    markdown = (tmp_path / "validation.md").read_text()
    assert "| gpt2-tiny | 32-true | flash |" in markdown
    assert "params 1.0000" in markdown

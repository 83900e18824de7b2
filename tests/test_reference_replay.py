"""The reference model keeps measuring what it measured: a few committed points of
docs/validation/validation.json (both families, fp32 and autocast, SDPA and eager, dropout,
checkpointing, CUDA semantics) are measured again and must agree in every field, bytes and
peaks included. A change to the model that moves a saved tensor or a peak shows up here without
running the whole grid (``python -m scaleplan.reference.validate``, minutes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scaleplan.model.config import GPTConfig

pytest.importorskip("torch", reason='scaleplan.reference needs torch: pip install '
                                    '"scaleplan[torch]"')

from scaleplan.reference.measure import measure
from scaleplan.reference.validate import GRID_CONFIGS

REPORT = Path(__file__).resolve().parents[1] / "docs" / "validation" / "validation.json"
_RUN_KEYS = ("micro_batch_size", "seq_len", "accumulating", "attention", "precision",
             "checkpointing", "cuda_semantics")
# (config, dropout, run settings) of the points replayed
POINTS = [
    ("gpt2-tiny", 0.0, {"attention": "flash", "precision": "bf16-mixed"}),
    ("gpt2-tiny", 0.0, {"checkpointing": True, "precision": "bf16-mixed"}),
    ("gpt2-odd", 0.0, {"cuda_semantics": True, "precision": "bf16-mixed"}),
    ("llama-tiny", 0.1, {"attention": "eager", "precision": "32-true"}),
    ("mqa-geglu", 0.1, {"attention": "flash", "precision": "bf16-mixed"}),
]


def _committed(name: str, dropout: float, run: dict[str, Any]) -> dict[str, Any]:
    for row in json.loads(REPORT.read_text(encoding="utf-8")):
        settings = {k: row[k] for k in _RUN_KEYS if k in row}
        if (row["config"], row["dropout"]) == (name, dropout) and settings == {
                "micro_batch_size": 2, "seq_len": 32, "accumulating": True, **run}:
            measured: dict[str, Any] = row["measurement"]
            return measured
    raise AssertionError(f"no committed point {name} {dropout} {run}")


@pytest.mark.torch
@pytest.mark.parametrize(("name", "dropout", "run"), POINTS)
def test_committed_measurements_are_measured_again_bit_for_bit(
        name: str, dropout: float, run: dict[str, Any]) -> None:
    committed = _committed(name, dropout, run)
    cfg: GPTConfig = GRID_CONFIGS[name].replace(dropout=dropout)
    m = json.loads(measure(cfg, micro_batch_size=2, seq_len=32, accumulating=True,
                           **run).model_dump_json())
    assert {k: m[k] for k in committed if k != "config"} == {
        k: v for k, v in committed.items() if k != "config"}

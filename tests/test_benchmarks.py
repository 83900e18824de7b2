"""The benchmark scripts keep working: ``python -m benchmarks.run --quick`` writes its report.

No timing is asserted (machines differ); the checks are that every section ran or said why it
was skipped, and that the accuracy summary holds values that can be checked by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.peers import deepspeed_zero2_gpu_bytes, tm101_activation_bytes
from benchmarks.run import main
from scaleplan.model.config import GPTConfig


def test_deepspeed_zero2_estimate_is_20_bytes_per_param_on_one_gpu() -> None:
    # estimate_zero2_model_states_mem_needs, no offload: 4 P + 16 P / n_gpus.
    assert deepspeed_zero2_gpu_bytes(1_000_000) == 20_000_000
    assert deepspeed_zero2_gpu_bytes(1_000_000, n_gpus=4) == 8_000_000


def test_transformer_math_101_activations_match_the_posts_formula() -> None:
    # s b h L (34 + 5 a s / h) with s=1024, b=1, h=768, L=12, a=12: 5 a s / h = 80.
    cfg = GPTConfig.preset("gpt2")
    assert tm101_activation_bytes(cfg, b=1, s=1024, precision="bf16-mixed") == \
        1024 * 768 * 12 * (34 + 80)


def test_quick_run_writes_json_and_markdown_with_every_section(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="the accuracy section measures the torch harness")
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "benchmarks.json").read_text())
    assert {"machine", "imports", "latency", "sweep", "flop_counter", "accuracy",
            "verdict"} <= set(result)
    assert {"import", "sweep"} <= set(result["verdict"])
    assert "scaleplan" in result["imports"]["ratio_to_numpy_pydantic"]
    assert {"count_params", "training_memory", "plan"} <= set(
        result["latency"]["seconds_per_call"])
    # The quick grid's two points, both measured and predicted exactly by scaleplan's params.
    summary = result["accuracy"]["summary"]
    assert summary["scaleplan"]["params"] == {"n": 2, "median_abs_error": 0.0,
                                              "max_abs_error": 0.0, "median_error": 0.0}
    assert all(v["exact"] for v in result["flop_counter"].values())
    md = (tmp_path / "benchmarks.md").read_text()
    assert "## Targets" in md and "## Accuracy against the reference harness" in md

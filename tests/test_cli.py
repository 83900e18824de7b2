"""The `scaleplan` command: readable and JSON output, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scaleplan.cli import main


def test_params_preset_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["params", "gpt2"]) == 0
    out = capsys.readouterr().out
    assert "124,439,808 parameters" in out
    assert "123,653,376" in out and "nanoGPT prints" in out  # nanoGPT's printed 123.65M


def test_params_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["params", "llama-2-7b", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["params"]["total"] == 6_738_415_616  # transformers' count of Llama-2-7B
    assert data["config"]["mlp"] == "swiglu"


def test_params_nanogpt_file_shows_the_false_claim(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "train_fineweb.py"
    path.write_text("# Model (~125M parameters) - perfect for 12 GB VRAM\n"
                    "n_layer = 12\nn_head = 12\nn_embd = 384\ndropout = 0.1\n")
    assert main(["params", str(path)]) == 0
    out = capsys.readouterr().out
    assert "40,560,000" in out  # the seed log's "number of parameters: 40.56M"
    assert "claims ~125M: 3.08x the real count" in out  # 125 / 40.56 = 3.08


def test_params_hf_json_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "gpt2"}))
    assert main(["params", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"]["total"] == 124_439_808


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["params", "gpt3"], "unknown preset 'gpt3'; did you mean 'gpt2'"),
        (["params", "missing.json"], "missing.json: cannot read the file"),
    ],
)
def test_bad_input_is_one_line_and_status_2(argv: list[str], message: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("scaleplan: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_module_entry_point_runs_in_a_subprocess() -> None:
    done = subprocess.run([sys.executable, "-m", "scaleplan", "params", "smollm2-135m", "--json"],
                          capture_output=True, text=True, check=True, timeout=60)
    # HuggingFaceTB/SmolLM2-135M: 134,515,008 parameters (its Hugging Face page).
    assert json.loads(done.stdout)["params"]["total"] == 134_515_008

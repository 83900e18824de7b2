"""Expected loss on web text (issue 22): the calibration by hand, the published hold-outs, and the
places that use it (plan, diagnose, the CLI)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from scaleplan.cli import main
from scaleplan.diagnosis.examine import diagnose
from scaleplan.diagnosis.logs import read_log
from scaleplan.errors import ScaleplanError, UnknownNameError
from scaleplan.model.config import GPTConfig
from scaleplan.model.loaders import load_nanogpt_config
from scaleplan.planning.planner import plan
from scaleplan.scaling import webtext
from scaleplan.scaling.laws import scaling_law
from scaleplan.scaling.webtext import (
    ReferenceRun,
    calibration,
    expected_loss,
    law_n_params,
    reference_runs,
    shape_spread,
)

GPT2 = GPTConfig(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, block_size=1024)


@pytest.fixture(autouse=True)
def _fresh_tables() -> None:
    # The runs file is read once per process (functools.cache); read it again in each test, so
    # a forked mutation-testing child never sees a table its parent built.
    reference_runs.cache_clear()
    webtext._pooled_noise.cache_clear()


def test_law_n_counts_the_output_layer_as_porian_et_al() -> None:
    # Porian et al. count non-embedding weights plus the output layer (their w96_d3 model:
    # 12 x 3 x 96^2 = 331,776 plus 96 x 50,432 = 4,841,472, together 5,173,248 in their CSV).
    # GPT-2 small, tied: blocks 85,054,464 (12 x 7,087,872) + final norm 1,536, plus the head
    # 50,257 x 768 = 38,597,376: 123,653,376.
    assert law_n_params("porian2024-refinedweb", GPT2) == 85_054_464 + 1_536 + 38_597_376
    untied = GPT2.replace(tie_embeddings=False)  # the head is then in the non-embedding count
    assert law_n_params("porian2024-refinedweb", untied) == 85_054_464 + 1_536 + 38_597_376


def test_offset_and_interval_worked_out_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two FineWeb runs built 0.10 and 0.30 above the law, one OpenWebText run 0.05 above it.
    # Offset for FineWeb: mean 0.20. Noise: residual deviations -0.1, +0.1 -> sd sqrt(0.02 / 1)
    # = 0.141421 on 1 degree of freedom (the single OWT run adds none). 90 % interval:
    # t(0.95, 1) = 6.313752 (Student's t table) x 0.141421 x sqrt(1 + 1/2) = 1.093536, plus the
    # shape spread, 0 at the anchor itself.
    rw, owt = scaling_law("porian2024-refinedweb"), scaling_law("porian2024-owt2")
    n = law_n_params("porian2024-refinedweb", GPT2)

    def run(name: str, data: str, tokens: float, loss: float) -> ReferenceRun:
        return ReferenceRun(id=name, source="by hand", data=data, tokenizer="gpt2", model=GPT2,
                            tokens=tokens, loss=loss, use="calibration")

    runs = (run("a", "fineweb", 1e10, float(rw.loss(n, 1e10)) + 0.10),
            run("b", "fineweb", 2e10, float(rw.loss(n, 2e10)) + 0.30),
            run("c", "openwebtext", 1e10, float(owt.loss(n, 1e10)) + 0.05))
    monkeypatch.setattr(webtext, "reference_runs", lambda: runs)
    webtext._pooled_noise.cache_clear()
    try:
        cal = calibration("fineweb")
        assert cal.offset == pytest.approx(0.20) and cal.runs == ("a", "b")
        assert (cal.noise_sd, cal.noise_dof) == (pytest.approx(math.sqrt(0.02)), 1)
        got = expected_loss(GPT2, tokens=1e10, data="fineweb", confidence=0.9)
        assert got.loss == pytest.approx(float(rw.loss(n, 1e10)) + 0.20)
        assert got.high - got.loss == pytest.approx(6.313752 * math.sqrt(0.02) * math.sqrt(1.5),
                                                    rel=1e-6)
        assert calibration("openwebtext").offset == pytest.approx(0.05)
    finally:
        webtext._pooled_noise.cache_clear()


def test_shape_spread_is_the_laws_disagreement_on_the_change() -> None:
    # From 124M / 10B tokens to 124M / 300B tokens the two web-text laws lower the loss by
    # different amounts; the spread is that difference, and 0 at the anchor.
    rw, owt = scaling_law("porian2024-refinedweb"), scaling_law("porian2024-owt2")
    n = 123_653_376.0
    drop_rw = rw.loss(n, 3e11) - rw.loss(n, 1e10)
    drop_owt = owt.loss(n, 3e11) - owt.loss(n, 1e10)
    assert shape_spread(n, 3e11, n, 1e10) == pytest.approx(abs(drop_rw - drop_owt))
    assert shape_spread(n, 1e10, n, 1e10) == 0


def _standard(run: ReferenceRun) -> bool:
    return not run.notes.upper().startswith(("MODIFIED", "HEAVILY", "NOT ", "EVAL"))


def test_published_holdouts_land_in_the_interval() -> None:
    # Every published run not used for calibration (scaleplan/data/webtext_reference_runs.csv,
    # each row with its source): a standard GPT-2 recipe lands inside the 90 % interval; a
    # modified, faster recipe (modded-nanogpt and its predecessors, LitGPT's RoPE GPT-2) lands
    # inside or below it, never above: it beats GPT-2's recipe, which the law is calibrated on.
    checked = 0
    for run in reference_runs():
        if run.use != "holdout" or not webtext.is_calibrated(run.data):
            continue
        got = expected_loss(run.model, tokens=run.tokens, data=run.data)
        assert run.loss <= got.high, (run.id, run.loss, got)
        if _standard(run):
            assert got.low <= run.loss, (run.id, run.loss, got)
        checked += 1
    assert checked == 5  # LitGPT, llm.c PyTorch, three modded-nanogpt predecessors


def test_expected_loss_refuses_what_it_cannot_answer() -> None:
    with pytest.raises(ScaleplanError, match="no published fineweb-edu run"):
        expected_loss(GPT2, tokens=1e10, data="fineweb-edu")
    with pytest.raises(UnknownNameError, match="unknown dataset 'shakespeare_char'"):
        expected_loss(GPT2, tokens=1e10, data="shakespeare_char")
    with pytest.raises(UnknownNameError, match="unknown tokenizer 'llama3'"):
        expected_loss(GPT2, tokens=1e10, data="fineweb", tokenizer="llama3")
    with pytest.raises(ScaleplanError, match="cfg must be a GPTConfig"):
        expected_loss({"n_layer": 12}, tokens=1e10, data="fineweb")  # type: ignore[arg-type]
    with pytest.raises(ScaleplanError, match="tokens=-1"):
        expected_loss(GPT2, tokens=-1, data="fineweb")
    with pytest.raises(ScaleplanError, match=r"confidence=1\.5"):
        expected_loss(GPT2, tokens=1e10, data="fineweb", confidence=1.5)


def test_plan_and_the_cli_give_the_loss_on_the_runs_data(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = plan(GPT2, "RTX 4090", total_tokens=10**10, data="fineweb")
    assert p.expected_loss_on_data == expected_loss(GPT2, tokens=10**10, data="fineweb")
    assert plan(GPT2, "RTX 4090", total_tokens=10**10).expected_loss_on_data is None
    config = tmp_path / "train_fw.py"
    config.write_text("dataset = 'fineweb'\nvocab_size = 50257\n")  # nanoGPT's own key
    assert main(["plan", str(config)]) == 0
    assert "  on your data         " in capsys.readouterr().out
    config.write_text("dataset = 'shakespeare_char'\n")  # not calibrated: no line, no error
    assert main(["plan", str(config)]) == 0
    assert "on your data" not in capsys.readouterr().out


def test_diagnose_uses_the_law_of_the_runs_dataset() -> None:
    # The seed case trains on FineWeb: its plateau check and recommendation use the web-text law
    # fitted on RefinedWeb, and the recommendation gives the new model's loss on FineWeb.
    text = "# Model (~125M parameters)\nn_embd = 384\ndropout = 0.1\nbatch_size = 16\n" \
           "gradient_accumulation_steps = 32\ndataset = 'fineweb'\n"
    log = read_log(text="step 14500: train loss 3.6415, val loss 3.5696\n")
    d = diagnose(config=load_nanogpt_config("seed.py", text=text), log=log)
    assert d.law == "porian2024-refinedweb"
    rec = d.recommendation
    assert rec is not None and rec.expected_loss_on_data is not None
    assert rec.expected_loss_on_data.data == "fineweb"
    owt = diagnose(config=load_nanogpt_config("x.py", text="n_embd = 384\n"), log=log)
    assert owt.law == "porian2024-owt2"  # train.py's default dataset is openwebtext
    unknown = diagnose(config=GPTConfig(n_embd=384, n_head=6), log=log)
    assert unknown.law == "chinchilla"  # a bare GPTConfig says nothing of its data


def test_the_shipped_runs_are_read_as_written() -> None:
    # The CSV read here with the csv module alone: every row that states its model and tokens is
    # a ReferenceRun with exactly those numbers; OpenAI's checkpoints (no token count) and the
    # speedrun record (no layer count) are left out.
    import csv

    path = Path(webtext.__file__).parent.parent / "data" / "webtext_reference_runs.csv"
    with path.open(encoding="utf-8", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["tokens"] and r["n_layer"]]
    runs = {run.id: run for run in reference_runs()}
    assert sorted(runs) == sorted(r["id"] for r in rows) and len(runs) == 9
    for row in rows:
        run = runs[row["id"]]
        m = run.model
        assert (m.n_layer, m.n_head, m.n_embd, m.vocab_size, m.block_size) == tuple(
            int(row[k]) for k in ("n_layer", "n_head", "n_embd", "vocab_size", "seq_len"))
        assert m.tie_embeddings == (row["tied"] == "yes")
        assert (run.tokens, run.loss, run.use, run.notes) == (
            float(row["tokens"]), float(row["loss"]), row["suggested_use"],
            row["architecture_notes"])
    assert webtext.calibrated() == ("fineweb/gpt2", "openwebtext/gpt2")


def test_the_law_for_a_dataset_and_the_n_it_counts() -> None:
    # Chinchilla counts every parameter: GPT-2 small is 124,439,808 (the published count, wte
    # 38,597,376 + wpe 786,432 + blocks 85,054,464 + final norm 1,536); Kaplan et al. count the
    # non-embedding ones: 85,054,464 + 1,536 = 85,056,000.
    assert law_n_params("chinchilla", GPT2) == 124_439_808
    assert law_n_params("kaplan2020", GPT2) == 85_056_000
    assert webtext.law_for_data(None) == "chinchilla"  # a dataset not known
    assert webtext.law_for_data("shakespeare_char") == "chinchilla"  # not calibrated
    assert webtext.law_for_data("fineweb", tokenizer="llama3") == "chinchilla"
    assert webtext.law_for_data("FineWeb10B") == "porian2024-refinedweb"
    assert webtext.law_for_data("owt") == "porian2024-owt2"


def test_far_from_the_calibration_runs_the_interval_adds_the_shape_spread() -> None:
    # GPT-2 1.5B on 300B FineWeb tokens is far from the 124M / 10B calibration runs: the half
    # width is the noise part (as at the anchor) plus the laws' disagreement there.
    cal = calibration("fineweb")
    n_big = law_n_params(cal.law, GPTConfig(n_layer=48, n_head=25, n_embd=1600,
                                           vocab_size=50257))
    spread = shape_spread(n_big, 3e11, *cal.anchor)
    noise = cal.half_width(*cal.anchor, 0.9)  # no spread at the anchor itself
    assert spread > 0.001
    assert cal.half_width(n_big, 3e11, 0.9) == pytest.approx(noise + spread)


def test_messages_name_the_argument_and_the_fix() -> None:
    with pytest.raises(ScaleplanError, match=r"^expected_loss\(cfg=\{'n_layer': 12\}\): cfg must "
                       r"be a GPTConfig, not a dict"):
        expected_loss({"n_layer": 12}, tokens=1e10, data="fineweb")  # type: ignore[arg-type]
    with pytest.raises(ScaleplanError, match=r"^tokens=-1 must be > 0; give tokens=10\*\*10$"):
        expected_loss(GPT2, tokens=-1, data="fineweb")
    with pytest.raises(ScaleplanError, match=r"^confidence=0 must be > 0; give confidence=0.9$"):
        expected_loss(GPT2, tokens=1e10, data="fineweb", confidence=0)
    with pytest.raises(ScaleplanError, match=r"^confidence=1 must be below 1, e\.g\. 0\.9$"):
        expected_loss(GPT2, tokens=1e10, data="fineweb", confidence=1)
    with pytest.raises(ScaleplanError, match=r"^no published fineweb-edu run with the gpt2 "
                       r"tokenizer is shipped to calibrate it; the calibrated datasets are "
                       r"fineweb/gpt2, openwebtext/gpt2$"):
        calibration("fineweb-edu")

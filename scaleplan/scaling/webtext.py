"""Expected loss on the web text people train GPTs on, with an honest interval.

A loss in nats per token belongs to one dataset and one tokenizer: Chinchilla's law predicts
MassiveText under SentencePiece, Porian et al.'s laws predict RefinedWeb and OpenWebText2 under
the GPT-NeoX tokenizer. A nanoGPT or llm.c run measures FineWeb or OpenWebText under GPT-2's
tokenizer. `expected_loss` bridges the two with an explicit calibration:

    L(N, D; data, tokenizer) = L_law(N, D) + offset(data, tokenizer)

where the law is the web-text law of the closest dataset (`LAW_FOR_DATA`) and the offset is the
mean difference between published runs (`reference_runs`, each with its source) and the law at
their N and D. The interval is a prediction interval for a new run: the residuals' standard
deviation, pooled over every calibrated (dataset, tokenizer) pair, times Student's t, times
sqrt(1 + 1/n) for an offset estimated from n runs. Runs marked as hold-outs are never used for
the calibration; docs/scaling.md reports how far each lands from its prediction.
"""

from __future__ import annotations

import csv
import math
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from scaleplan.checks import canonical, real
from scaleplan.errors import ScaleplanError, shown
from scaleplan.model.config import GPTConfig, config_type_message
from scaleplan.model.params import count_params
from scaleplan.scaling.laws import scaling_law

__all__ = ["LAW_FOR_DATA", "Calibration", "ExpectedLoss", "ReferenceRun", "calibration",
           "calibrated", "expected_loss", "is_calibrated", "law_for_data", "law_n_params",
           "reference_runs"]

_RUNS_FILE = Path(__file__).parent.parent / "data" / "webtext_reference_runs.csv"

#: The web-text law each dataset is calibrated against: the closest data a law was fitted on.
LAW_FOR_DATA: dict[str, str] = {
    "openwebtext": "porian2024-owt2",  # OpenWebText2 is a larger re-crawl of OpenWebText's recipe
    "fineweb": "porian2024-refinedweb",  # both filtered, deduplicated Common Crawl
    "fineweb-edu": "porian2024-refinedweb",
}
_DATA_ALIASES = {"owt": "openwebtext", "fineweb10b": "fineweb", "fineweb-10b": "fineweb",
                 "fineweb_10b": "fineweb", "fineweb_edu": "fineweb-edu",
                 "fineweb-edu-10b": "fineweb-edu", "edu_fineweb10b": "fineweb-edu"}
_TOKENIZERS = ("gpt2",)
_TOKENIZER_ALIASES = {"gpt-2": "gpt2", "tiktoken-gpt2": "gpt2", "r50k_base": "gpt2"}


class ReferenceRun(BaseModel):
    """One published run: its model, data, tokens and reported loss, with the source."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    source: str
    data: str
    tokenizer: str
    model: GPTConfig
    tokens: float = Field(gt=0)
    loss: float = Field(gt=0)
    use: str = Field(description="'calibration' or 'holdout'.")
    notes: str = ""


class Calibration(BaseModel):
    """The offset from a web-text law to one (dataset, tokenizer), and its uncertainty."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data: str
    tokenizer: str
    law: str
    offset: float = Field(description="Mean of (published loss - law loss) over the runs.")
    runs: tuple[str, ...] = Field(description="Ids of the calibration runs.")
    residual_sd: float = Field(description="Residuals' standard deviation, pooled over every "
                               "calibrated (dataset, tokenizer) pair.")
    dof: int = Field(description="Degrees of freedom of the pooled standard deviation.")

    def half_width(self, confidence: float) -> float:
        """Half the prediction interval for a new run at ``confidence``."""
        from scipy.stats import t as student_t

        quantile = float(student_t.ppf(0.5 + confidence / 2, self.dof))
        return quantile * self.residual_sd * math.sqrt(1 + 1 / len(self.runs))


class ExpectedLoss(BaseModel):
    """A predicted loss (nats per token of ``tokenizer`` on ``data``) with its interval."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    loss: float
    low: float
    high: float
    confidence: float
    data: str
    tokenizer: str
    law: str
    law_loss: float = Field(description="The law's own prediction (its data, its tokenizer).")
    offset: float
    n_params: float = Field(description="N as the law counts it.")
    tokens: float
    calibration_runs: tuple[str, ...]

    def __str__(self) -> str:
        return (f"{self.loss:.2f} ({self.low:.2f}-{self.high:.2f}, {self.confidence:.0%}) on "
                f"{self.data} / {self.tokenizer} tokens: the {self.law} law "
                f"{self.law_loss:.2f} {self.offset:+.2f} calibrated on "
                f"{len(self.calibration_runs)} published run(s)")


def law_n_params(law_name: str, cfg: GPTConfig) -> float:
    """N for ``cfg`` as the law ``law_name`` counts parameters."""
    law = scaling_law(law_name)
    pc = count_params(cfg)
    return float(pc.non_embedding if law.n_counts == "non_embedding" else pc.total)


@cache
def reference_runs() -> tuple[ReferenceRun, ...]:
    """The published runs shipped in ``scaleplan/data/webtext_reference_runs.csv``."""
    with _RUNS_FILE.open(encoding="utf-8", newline="") as handle:
        return tuple(_run(row) for row in csv.DictReader(handle))


def _run(row: dict[str, str]) -> ReferenceRun:
    model = GPTConfig(n_layer=int(row["n_layer"]), n_head=int(row["n_head"]),
                      n_embd=int(row["n_embd"]), vocab_size=int(row["vocab_size"]),
                      block_size=int(row["seq_len"]),
                      tie_embeddings=row["tied"].strip().lower() in ("true", "yes", "1"))
    return ReferenceRun(id=row["id"], source=row["source"], data=_data(row["dataset"]),
                        tokenizer=_tokenizer(row["tokenizer"]), model=model,
                        tokens=float(row["tokens"]), loss=float(row["loss"]),
                        use=row["suggested_use"].strip(),
                        notes=row.get("architecture_notes", "") or "")


def _data(value: object) -> str:
    return canonical("dataset", value, tuple(LAW_FOR_DATA), _DATA_ALIASES)


def _tokenizer(value: object) -> str:
    return canonical("tokenizer", value, _TOKENIZERS, _TOKENIZER_ALIASES)


def _residuals(data: str, tokenizer: str) -> list[tuple[str, float]]:
    law_name = LAW_FOR_DATA[data]
    law = scaling_law(law_name)
    return [(run.id, run.loss - float(law.loss(law_n_params(law_name, run.model), run.tokens)))
            for run in reference_runs()
            if run.use == "calibration" and run.data == data and run.tokenizer == tokenizer]


@cache
def _pooled_sd() -> tuple[float, int]:
    squares, dof = 0.0, 0
    pairs = {(run.data, run.tokenizer) for run in reference_runs()}
    for data, tokenizer in sorted(pairs):
        values = [r for _, r in _residuals(data, tokenizer)]
        if len(values) >= 2:
            mean = sum(values) / len(values)
            squares += sum((v - mean) ** 2 for v in values)
            dof += len(values) - 1
    if dof == 0:
        raise ScaleplanError("no (dataset, tokenizer) pair has two calibration runs; the "
                             "interval cannot be estimated")
    return math.sqrt(squares / dof), dof


def calibration(data: str, tokenizer: str = "gpt2") -> Calibration:
    """The calibration of ``data`` under ``tokenizer`` (an error if no published run has it)."""
    data, tokenizer = _data(data), _tokenizer(tokenizer)
    residuals = _residuals(data, tokenizer)
    if not residuals:
        raise ScaleplanError(f"no published {data} run with the {tokenizer} tokenizer is "
                             "shipped to calibrate it; the calibrated datasets are "
                             f"{', '.join(calibrated())}")
    sd, dof = _pooled_sd()
    return Calibration(data=data, tokenizer=tokenizer, law=LAW_FOR_DATA[data],
                       offset=sum(r for _, r in residuals) / len(residuals),
                       runs=tuple(i for i, _ in residuals), residual_sd=sd, dof=dof)


def is_calibrated(data: str, tokenizer: str = "gpt2") -> bool:
    """Whether published runs calibrate ``data`` under ``tokenizer`` (False for unknown names)."""
    try:
        return bool(_residuals(_data(data), _tokenizer(tokenizer)))
    except ScaleplanError:
        return False


def law_for_data(data: str | None, tokenizer: str = "gpt2") -> str:
    """The law for a run on ``data``: its web-text law when published runs calibrate it, else
    Chinchilla's (the default everywhere a dataset is unknown)."""
    return LAW_FOR_DATA[_data(data)] if data is not None and is_calibrated(data, tokenizer) \
        else "chinchilla"


def calibrated() -> tuple[str, ...]:
    """The (dataset/tokenizer) pairs that have calibration runs, as 'data/tokenizer'."""
    return tuple(sorted({f"{r.data}/{r.tokenizer}" for r in reference_runs()
                         if r.use == "calibration"}))


def expected_loss(cfg: GPTConfig, *, tokens: Any, data: str, tokenizer: str = "gpt2",
                  confidence: float = 0.9) -> ExpectedLoss:
    """The loss ``cfg`` should reach after ``tokens`` training tokens of ``data`` under
    ``tokenizer``: a web-text law plus a calibration on published runs, with a prediction
    interval at ``confidence``.
    """
    if not isinstance(cfg, GPTConfig):
        raise ScaleplanError(config_type_message("expected_loss", cfg))
    count = real("tokens", tokens, example="tokens=10**10")
    level = real("confidence", confidence, example="confidence=0.9")
    if level >= 1:
        raise ScaleplanError(f"confidence={shown(confidence)} must be below 1, e.g. 0.9")
    cal = calibration(data, tokenizer)
    n = law_n_params(cal.law, cfg)
    law_loss = float(scaling_law(cal.law).loss(n, count))
    loss = law_loss + cal.offset
    half = cal.half_width(level)
    return ExpectedLoss(loss=loss, low=loss - half, high=loss + half, confidence=level,
                        data=cal.data, tokenizer=cal.tokenizer, law=cal.law, law_loss=law_loss,
                        offset=cal.offset, n_params=n, tokens=count,
                        calibration_runs=cal.runs)

"""Expected loss on the web text people train GPTs on, with an honest interval.

A loss in nats per token belongs to one dataset and one tokenizer: Chinchilla's law predicts
MassiveText under SentencePiece, Porian et al.'s laws predict RefinedWeb and OpenWebText2 under
the GPT-NeoX tokenizer. A nanoGPT or llm.c run measures FineWeb or OpenWebText under GPT-2's
tokenizer. `expected_loss` bridges the two with an explicit calibration:

    L(N, D; data, tokenizer) = L_law(N, D) + offset(data, tokenizer)

where the law is the web-text law of the closest dataset (`LAW_FOR_DATA`) and the offset is the
mean difference between published runs (`reference_runs`, each with its source) and the law at
their N and D. The interval has two parts: run-to-run noise (the calibration runs' spread,
pooled, times Student's t and sqrt(1 + 1/n) for an offset from n runs), and the shape the
dataset's own curve might have (`shape_spread`: how differently the two web-text laws change
the loss between the calibration run and the run asked about). Runs marked as hold-outs are
never used; docs/scaling.md reports how far each lands from its prediction.
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

__all__ = [
    "LAW_FOR_DATA",
    "Calibration",
    "ExpectedLoss",
    "ReferenceRun",
    "calibrated",
    "calibration",
    "expected_loss",
    "is_calibrated",
    "law_for_data",
    "law_n_params",
    "reference_runs",
    "shape_spread",
]

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

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)  # built at first use

    id: str = Field(description="Short identifier of the run, unique in the data file.")
    source: str = Field(description="Where the run and its loss are published.")
    data: str = Field(description="Dataset trained and evaluated on, e.g. 'fineweb'.")
    tokenizer: str = Field(description="Tokenizer the loss is measured in, e.g. 'gpt2'.")
    model: GPTConfig = Field(description="The model trained.")
    tokens: float = Field(gt=0, description="Training tokens of the run.")
    loss: float = Field(gt=0, description="Reported validation loss, nats per token.")
    use: str = Field(description="'calibration' or 'holdout'.")
    notes: str = Field("", description="The architecture as the source states it.")


class Calibration(BaseModel):
    """The offset from a web-text law to one (dataset, tokenizer), and what it is known from."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)  # built at first use

    data: str = Field(description="Dataset calibrated, e.g. 'fineweb'.")
    tokenizer: str = Field(description="Tokenizer the losses are measured in.")
    law: str = Field(description="Web-text law the offset is added to (LAW_FOR_DATA).")
    offset: float = Field(description="Mean of (published loss - law loss) over the runs.")
    runs: tuple[str, ...] = Field(description="Ids of the calibration runs.")
    anchor: tuple[float, float] = Field(description="(N, D) of the first calibration run, "
                                        "where the offset is measured.")
    noise_sd: float = Field(description="Run-to-run spread: the residuals' standard deviation, "
                            "pooled over every (dataset, tokenizer) with two or more runs.")
    noise_dof: int = Field(description="Degrees of freedom of ``noise_sd``.")

    def half_width(self, n_params: float, tokens: float, confidence: float) -> float:
        """Half the prediction interval for a new run of N = ``n_params`` on ``tokens``: the
        noise of one run and of the offset (Student's t), plus how differently the web-text laws
        bend between the anchor and (N, D) (the unknown shape of this dataset's curve)."""
        from scipy.stats import t as student_t

        quantile = float(student_t.ppf(0.5 + confidence / 2, self.noise_dof))
        noise = quantile * self.noise_sd * math.sqrt(1 + 1 / len(self.runs))
        return noise + shape_spread(n_params, tokens, *self.anchor)


def shape_spread(n_params: float, tokens: float, anchor_n: float, anchor_d: float) -> float:
    """max - min over the web-text laws of L(N, D) - L(anchor): how much the loss change from the
    calibration run to (N, D) depends on which web dataset the curve belongs to (0 at the
    anchor)."""
    changes = [float(law.loss(n_params, tokens) - law.loss(anchor_n, anchor_d))
               for law in (scaling_law(name) for name in sorted(set(LAW_FOR_DATA.values())))]
    return max(changes) - min(changes)


class ExpectedLoss(BaseModel):
    """A predicted loss (nats per token of ``tokenizer`` on ``data``) with its interval.

    >>> e = expected_loss(GPTConfig(vocab_size=50257), tokens=10**10, data="fineweb")
    >>> round(e.loss, 2), e.law, e.calibration_runs[0]
    (3.28, 'porian2024-refinedweb', 'llmc_fineweb10b_124m_oct2024')
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    loss: float = Field(description="Predicted loss, nats per token: law_loss + offset.")
    low: float = Field(description="Lower end of the prediction interval.")
    high: float = Field(description="Upper end of the prediction interval.")
    confidence: float = Field(description="Level of the interval, e.g. 0.9.")
    data: str = Field(description="Dataset the loss is predicted on.")
    tokenizer: str = Field(description="Tokenizer the loss is measured in.")
    law: str = Field(description="Web-text law the prediction starts from.")
    law_loss: float = Field(description="The law's own prediction (its data, its tokenizer).")
    offset: float = Field(description="Calibration: mean of (published loss - law loss).")
    n_params: float = Field(description="N as the law counts it.")
    tokens: float = Field(description="Training tokens the loss is predicted after.")
    calibration_runs: tuple[str, ...] = Field(
        description="Ids of the published runs the offset comes from.")

    def __str__(self) -> str:
        return (f"{self.loss:.2f} ({self.low:.2f}-{self.high:.2f}, {self.confidence:.0%}) on "
                f"{self.data} / {self.tokenizer} tokens: the {self.law} law "
                f"{self.law_loss:.2f} {self.offset:+.2f} calibrated on "
                f"{len(self.calibration_runs)} published run(s)")


def law_n_params(law_name: str, cfg: GPTConfig) -> float:
    """N for ``cfg`` as the law ``law_name`` counts parameters: total, non-embedding, or
    Porian et al.'s non-embedding weights plus the output layer (``vocab x d``, which a tied
    model shares with its embedding)."""
    law = scaling_law(law_name)
    pc = count_params(cfg)
    if law.name.startswith("porian2024"):
        head = cfg.vocab_size * cfg.n_embd if cfg.tie_embeddings else 0  # else in non_embedding
        return float(pc.non_embedding + head)
    return float(pc.non_embedding if law.n_counts == "non_embedding" else pc.total)


@cache
def reference_runs() -> tuple[ReferenceRun, ...]:
    """The published runs shipped in ``scaleplan/data/webtext_reference_runs.csv`` that state
    their model and tokens (OpenAI's checkpoints, evaluated on these datasets but trained on
    WebText for an unstated number of tokens, are listed there and left out here)."""
    with _RUNS_FILE.open(encoding="utf-8", newline="") as handle:
        return tuple(_run(row) for row in csv.DictReader(handle)
                     if row["tokens"].strip() and row["n_layer"].strip())


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


def _fitted(data: str, tokenizer: str) -> list[tuple[ReferenceRun, float, float]]:
    """(run, N as the law counts, residual = loss - law) for the calibration runs of a pair."""
    law_name = LAW_FOR_DATA[data]
    law = scaling_law(law_name)
    out = []
    for run in reference_runs():
        if run.use == "calibration" and run.data == data and run.tokenizer == tokenizer:
            n = law_n_params(law_name, run.model)
            out.append((run, n, run.loss - float(law.loss(n, run.tokens))))
    return out


@cache
def _pooled_noise() -> tuple[float, int]:
    squares, dof = 0.0, 0
    for data, tokenizer in sorted({(r.data, r.tokenizer) for r in reference_runs()}):
        values = [r for _, _, r in _fitted(data, tokenizer)]
        if len(values) >= 2:
            mean = sum(values) / len(values)
            squares += sum((v - mean) ** 2 for v in values)
            dof += len(values) - 1
    if dof == 0:
        raise ScaleplanError("no (dataset, tokenizer) pair has two calibration runs; the "
                             "run-to-run noise cannot be estimated")
    return math.sqrt(squares / dof), dof


def calibration(data: str, tokenizer: str = "gpt2") -> Calibration:
    """The calibration of ``data`` under ``tokenizer`` (an error if no published run has it)."""
    data, tokenizer = _data(data), _tokenizer(tokenizer)
    fitted = _fitted(data, tokenizer)
    if not fitted:
        raise ScaleplanError(f"no published {data} run with the {tokenizer} tokenizer is "
                             "shipped to calibrate it; the calibrated datasets are "
                             f"{', '.join(calibrated())}")
    sd, dof = _pooled_noise()
    first, n_first, _ = fitted[0]
    return Calibration(data=data, tokenizer=tokenizer, law=LAW_FOR_DATA[data],
                       offset=sum(r for _, _, r in fitted) / len(fitted),
                       runs=tuple(run.id for run, _, _ in fitted),
                       anchor=(n_first, first.tokens), noise_sd=sd, noise_dof=dof)


def is_calibrated(data: str, tokenizer: str = "gpt2") -> bool:
    """Whether published runs calibrate ``data`` under ``tokenizer`` (False for unknown names)."""
    try:
        return bool(_fitted(_data(data), _tokenizer(tokenizer)))
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

    GPT-2 124M on 10B FineWeb tokens (llm.c measured 3.27-3.29):

    >>> print(expected_loss(GPTConfig(vocab_size=50257), tokens=10**10, data="fineweb"))
    3.28 (3.20-3.36, 90%) on fineweb / gpt2 tokens: the porian2024-refinedweb law 3.35 -0.07 \
calibrated on 2 published run(s)
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
    half = cal.half_width(n, count, level)
    return ExpectedLoss(loss=loss, low=loss - half, high=loss + half, confidence=level,
                        data=cal.data, tokenizer=cal.tokenizer, law=cal.law, law_loss=law_loss,
                        offset=cal.offset, n_params=n, tokens=count,
                        calibration_runs=cal.runs)

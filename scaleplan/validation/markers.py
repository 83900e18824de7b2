"""Validators that teams put in their own pydantic models, so a bad run fails when it is loaded.

Each marker is a frozen dataclass in the style of pydantic-extra-types: put it in ``Annotated``
on a `GPTConfig`, or on a model of your own that holds a `GPTConfig` (found by type, or named
with ``model_field=``) and its training settings (a `TrainingConfig` field, fields of the model
itself, or the marker's own arguments, in that order of preference: marker, training part,
model)::

    Cfg = Annotated[GPTConfig, FitsOn("RTX 4070", micro_batch_size=8, seq_len=1024)]
    class Run(BaseModel):
        model: GPTConfig
        training: TrainingConfig
    class Team(BaseModel):
        run: Annotated[Run, FitsOn("RTX 4070"), ParamsNear("~125M"), TokensPerParam(max=40)]

A misconfigured marker (unknown GPU, negative tolerance, min > max, a setting it cannot find
on the annotated type) raises when it is built or when the model using it is defined, never at
first use. A config that breaks a rule raises pydantic's ``ValidationError`` whose error has
one of these stable ``type`` values, a ``ctx`` dict with the numbers, and a message that names
the fix (sizes in GiB, 2**30 bytes):

- ``scaleplan.does_not_fit`` (`FitsOn`): ctx ``needed_bytes``, ``available_bytes``,
  ``micro_batch_size``, ``seq_len``, ``max_micro_batch_size`` (0 when none fits), ``gpu``.
- ``scaleplan.params_mismatch`` (`ParamsNear`): ctx ``actual_params``, ``claimed_params``,
  ``relative_error``, ``rel_tol``, ``count``.
- ``scaleplan.too_many_params`` (`MaxParams`): ctx ``actual_params``, ``max_params``, ``count``.
- ``scaleplan.tokens_per_param`` (`TokensPerParam`): ctx ``tokens``, ``params``,
  ``tokens_per_param``, ``min``, ``max``.
- ``scaleplan.step_not_divisible`` (`DivisibleStep`): ctx ``tokens_per_step`` (the target),
  ``actual_tokens_per_step``, ``micro_batch_size``, ``seq_len``, ``world_size``.
- ``scaleplan.missing_setting``: a value of a type that could not be inspected when the model
  was defined lacks a setting the marker needs; ctx ``setting``.

`check` runs the same rules and returns `Finding` values instead of raising; it also reports
warnings that never raise (``scaleplan.tight_fit``: fits, but with less than
``1 - TIGHT_FIT_FRACTION`` of the GPU's memory to spare).
"""

from __future__ import annotations

import math
import numbers
import re
import sys
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, ClassVar, Literal

from pydantic_core import PydanticCustomError

from scaleplan.checks import whole
from scaleplan.compute.throughput import MAX_TOKENS  # tokens / params stays a finite float
from scaleplan.errors import ScaleplanError, shown
from scaleplan.model.config import GPTConfig
from scaleplan.model.params import ParamCount, count_params
from scaleplan.validation.base import (
    TIGHT_FIT_FRACTION,
    Finding,
    Marker,
    Subject,
    check_nonnegative,
    check_text,
    locate,
    millions,
)
from scaleplan.validation.step import DivisibleStep, FitsOn

__all__ = [
    "MAX_TOKENS_PER_PARAM",
    "TIGHT_FIT_FRACTION",
    "CountKind",
    "DivisibleStep",
    "Finding",
    "FitsOn",
    "MaxParams",
    "ParamsNear",
    "TokensPerParam",
    "check",
    "parse_claim",
]

# Llama 3 8B saw 15T tokens, ~1,900 per parameter (Meta 2024); a million times that bounds the
# ratio (and its inverse the smallest one), so min x params and tokens / max stay finite floats at
# any model size (found by fuzzing, issue 13).
MAX_TOKENS_PER_PARAM = 1e9
CountKind = Literal["total", "nanogpt", "non_embedding"]
_COUNT_LABEL: dict[str, str] = {
    "total": "total",
    "nanogpt": "nanoGPT's count, without the position embedding",
    "non_embedding": "non-embedding, Kaplan et al. 2020's N",
}


# Claims in text. Both patterns run in linear time: a number starts only where a run of digits
# starts (the lookbehind), so a failed match gives back at most that run and the ones next to it
# (a search for "\\d+" from every digit of "111...1x" took seconds at 6,000 digits; issue 20).
# `check_text` also bounds the text first.
_AMOUNT = re.compile(r"~?\s*(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>[KMBT])", re.IGNORECASE)
_CLAIM_IN_TEXT = re.compile(
    r"(?<!\d)(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>[KMBT])\b[\s-]*(?:param(?:eter)?s?|model)\b",
    re.IGNORECASE,
)
_UNIT = {"k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}


def parse_claim(claimed: int | float | str, *, name: str = "claimed") -> int:
    """A claimed parameter count as an int: a number, or text such as "~125M" or "1.5B".

    Text is a bare amount ("~125M", "1.5B", "124,439,808") or a phrase holding one as config
    comments write it ("~125M parameters"), at most `MAX_TEXT_LENGTH` characters. ``name`` is the
    marker's argument, for the error.

    >>> parse_claim("~125M"), parse_claim("1.5B"), parse_claim("124,439,808")
    (125000000, 1500000000, 124439808)
    >>> parse_claim("inf")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    scaleplan.errors.ScaleplanError: claimed='inf' must be a positive parameter count...
    """
    if isinstance(claimed, str):
        value = _claim_in_text(claimed, name)
    elif isinstance(claimed, bool) or not isinstance(claimed, numbers.Real):
        raise ScaleplanError(f"{name}={shown(claimed)} must be a number or text such as '~125M'")
    elif isinstance(claimed, numbers.Integral):
        value = int(claimed)  # numpy ints too: exact, never a wrapped product
    else:
        value = float(claimed)
    # Below 1 rounds to 0 parameters; an int past a float's range overflowed (issues 13, 20).
    if value > sys.float_info.max or not math.isfinite(value) or value < 1:
        # an int is shown whole up to ~1,000 digits, as the fuzz tests of issue 13 expect
        raise ScaleplanError(f"{name}={shown(claimed)} must be a positive parameter "
                             "count, e.g. '~125M' or 124439808")
    return round(value)


def _claim_in_text(claimed: str, name: str) -> float:
    """The number a claim's text gives (inf for "inf" or "1e400", checked by the caller)."""
    check_text(name, claimed, example="'~125M'")
    text = claimed.strip().replace(",", "").replace("_", "")
    found = _AMOUNT.fullmatch(text) or _CLAIM_IN_TEXT.search(text)
    if found is not None:
        return float(found["num"]) * _UNIT[found["unit"].lower()]
    try:
        return float(text)
    except ValueError:
        raise ScaleplanError(f"{name}={shown(claimed)} is not a parameter count; write e.g. "
                             "'~125M', '1.5B' or 124439808") from None


def _count(pc: ParamCount, count: str) -> int:
    return int(getattr(pc, count))


def _check_count(count: object) -> None:
    if count not in _COUNT_LABEL:
        raise ScaleplanError(
            f"count={shown(count)} is not one of {', '.join(map(repr, _COUNT_LABEL))}")


@dataclass(frozen=True)
class ParamsNear(Marker):
    """The model's parameter count is within ``rel_tol`` of a claimed size.

    ``claimed`` is a number or text ("~125M", "1.5B"); ``count`` says which count the claim
    means: ``"total"`` (Hugging Face's), ``"nanogpt"`` (what nanoGPT prints) or
    ``"non_embedding"``. The error suggests the n_embd that comes closest to the claim.

    >>> from typing import Annotated
    >>> from pydantic import TypeAdapter
    >>> ta = TypeAdapter(Annotated[GPTConfig, ParamsNear("124M", rel_tol=0.01)])
    >>> ta.validate_python(GPTConfig.preset("gpt2")).n_embd
    768
    """

    code: ClassVar[str] = "scaleplan.params_mismatch"
    claimed: int | float | str
    _: KW_ONLY
    rel_tol: float = 0.1
    count: CountKind = "total"
    claimed_params: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "claimed_params", parse_claim(self.claimed))
        object.__setattr__(self, "rel_tol", check_nonnegative("rel_tol", self.rel_tol))
        _check_count(self.count)

    def _claimed_text(self) -> str:
        tilde = "~" if isinstance(self.claimed, str) and "~" in self.claimed else ""
        return tilde + millions(self.claimed_params)

    def describe(self) -> str:
        return (f"Parameters ({self.count}) within {self.rel_tol:.0%} of "
                f"{self._claimed_text()} ({self.claimed_params:,}).")

    def findings(self, subject: Subject) -> list[Finding]:
        actual = _count(count_params(subject.cfg), self.count)
        error = abs(actual - self.claimed_params) / self.claimed_params
        if error <= self.rel_tol:
            return []
        fix = f"correct the claim to ~{millions(actual)}"
        width = _nearest_width(subject.cfg, self.claimed_params, self.count)
        if width is not None:
            d, n = width
            fix = (f"for {self._claimed_text()} at n_layer={subject.cfg.n_layer} set n_embd={d} "
                   f"({millions(n)}), or {fix}")
        message = (
            f"the model has {millions(actual)} vs {self._claimed_text()} claimed parameters "
            f"({_COUNT_LABEL[self.count]}: {actual:,}), {actual / self.claimed_params:.2f}x the "
            f"claim, outside the {self.rel_tol:.0%} tolerance; {fix}")
        return [Finding(severity="error", code=self.code, message=message,
                        numbers={"actual_params": actual, "claimed_params": self.claimed_params,
                                 "relative_error": error, "rel_tol": self.rel_tol},
                        labels={"count": self.count})]


def _nearest_width(cfg: GPTConfig, target: int, count: str) -> tuple[int, int] | None:
    """The multiple of n_head for n_embd whose count is nearest ``target``, with that count.

    None when the width is not free to change (head_dim or mlp_hidden given explicitly) or the
    current width is already the nearest. Counts grow with n_embd, so a bisection finds it.
    """
    if {"head_dim", "mlp_hidden"} & cfg.model_fields_set:
        return None

    def params(k: int) -> int:
        return _count(count_params(cfg.replace(n_embd=k * cfg.n_head)), count)

    hi = 1
    while params(hi) < target and hi < 2**20:
        hi *= 2
    lo = 1
    while lo < hi:  # smallest k with params(k) >= target
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if params(mid) < target else (lo, mid)
    best = min({max(lo - 1, 1), lo}, key=lambda k: abs(params(k) - target))
    d = best * cfg.n_head
    return None if d == cfg.n_embd else (d, params(best))


@dataclass(frozen=True)
class MaxParams(Marker):
    """The model has at most ``limit`` parameters (a number or text such as "1.5B").

    >>> MaxParams("1.5B").limit_params
    1500000000
    """

    code: ClassVar[str] = "scaleplan.too_many_params"
    limit: int | float | str
    _: KW_ONLY
    count: CountKind = "total"
    limit_params: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "limit_params", parse_claim(self.limit, name="MaxParams limit"))
        _check_count(self.count)

    def describe(self) -> str:
        return f"At most {millions(self.limit_params)} parameters ({self.count})."

    def findings(self, subject: Subject) -> list[Finding]:
        actual = _count(count_params(subject.cfg), self.count)
        if actual <= self.limit_params:
            return []
        message = (f"the model has {millions(actual)} parameters ({actual:,}, "
                   f"{_COUNT_LABEL[self.count]}), more than the limit of "
                   f"{millions(self.limit_params)}; lower n_layer or n_embd")
        return [Finding(severity="error", code=self.code, message=message,
                        numbers={"actual_params": actual, "max_params": self.limit_params},
                        labels={"count": self.count})]


@dataclass(frozen=True)
class TokensPerParam(Marker):
    """Training tokens per parameter lie in ``[min, max]`` (Chinchilla's optimum is ~20).

    Tokens are ``tokens=`` when given, else the attribute ``tokens_from`` (default
    ``total_tokens``: `TrainingConfig`'s ``tokens_per_step x max_iters``) of the training part
    or of the annotated model. Parameters are counted as ``count`` says (Hoffmann et al. 2022
    count all of them: ``"total"``).

    >>> TokensPerParam(min=15, max=30).describe()
    'Training tokens per parameter (total) in [15, 30].'
    """

    code: ClassVar[str] = "scaleplan.tokens_per_param"
    _: KW_ONLY
    min: float | None = None
    max: float | None = None
    tokens: int | None = None
    tokens_from: str = "total_tokens"
    count: CountKind = "total"

    def __post_init__(self) -> None:
        if self.min is None and self.max is None:
            raise ScaleplanError("TokensPerParam needs min= or max= (e.g. min=15, max=30)")
        for name in ("min", "max"):
            if getattr(self, name) is not None:  # np.int32(7) compared in int32 overflowed
                object.__setattr__(self, name, check_nonnegative(name, getattr(self, name)))
                if not 1 / MAX_TOKENS_PER_PARAM <= getattr(self, name) <= MAX_TOKENS_PER_PARAM \
                        and getattr(self, name) != 0:
                    raise ScaleplanError(
                        f"TokensPerParam {name}={shown(getattr(self, name))} tokens per parameter "
                        f"is outside any training run ({1 / MAX_TOKENS_PER_PARAM:g} to "
                        f"{MAX_TOKENS_PER_PARAM:g}); Chinchilla is ~20, Llama 3 8B ~1,900")
        if self.max == 0:  # no model trains on zero tokens (fuzzed, issue 13)
            raise ScaleplanError("TokensPerParam max=0 allows no training at all; give a "
                                 "positive max, e.g. max=30")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ScaleplanError(f"TokensPerParam min={self.min:g} is above max={self.max:g}; swap "
                                 "them")
        if self.tokens is not None:
            object.__setattr__(self, "tokens", _token_count("tokens", self.tokens))
        if not isinstance(self.tokens_from, str) or not self.tokens_from.isidentifier():
            raise ScaleplanError(f"tokens_from={shown(self.tokens_from)} must be the name of a "
                                 "setting, e.g. tokens_from='total_tokens'")
        check_text("tokens_from", self.tokens_from, example="'total_tokens'")
        _check_count(self.count)
        object.__setattr__(self, "needs", (self.tokens_from,))

    def explicit(self) -> dict[str, Any]:
        return {} if self.tokens is None else {self.tokens_from: self.tokens}

    def argument(self, setting: str) -> str:
        return "tokens" if setting == self.tokens_from else setting

    def describe(self) -> str:
        if self.min is not None and self.max is not None:
            bounds = f"in [{self.min:g}, {self.max:g}]"
        else:
            bounds = f">= {self.min:g}" if self.min is not None else f"<= {self.max:g}"
        return f"Training tokens per parameter ({self.count}) {bounds}."

    def findings(self, subject: Subject) -> list[Finding]:
        tokens = _token_count("tokens" if self.tokens is not None else self.tokens_from,
                              subject.get(self.tokens_from, self.tokens))
        params = _count(count_params(subject.cfg), self.count)
        ratio = tokens / params
        if self.min is not None and ratio < self.min:
            bound, word, target = self.min, "below the min", math.ceil(self.min * params)
            model_fix = f"a smaller model (at most {millions(tokens / self.min)} parameters)"
        elif self.max is not None and ratio > self.max:
            bound, word, target = self.max, "above the max", math.floor(self.max * params)
            model_fix = f"a larger model (at least {millions(tokens / self.max)} parameters)"
        else:
            return []
        step = subject.get("tokens_per_step")
        if step:
            iters = max(1, math.ceil(target / step) if word.startswith("below") else target // step)
            fix = f"set max_iters={iters:,} ({millions(iters * step)} tokens) or use {model_fix}"
        else:
            fix = f"train on about {millions(target)} tokens or use {model_fix}"
        message = (f"{millions(tokens)} training tokens for {millions(params)} parameters is "
                   f"{ratio:.1f} tokens per parameter, {word} of {bound:g}; {fix}")
        numbers: dict[str, int | float] = {"tokens": tokens, "params": params,
                                           "tokens_per_param": ratio}
        numbers.update({k: v for k, v in (("min", self.min), ("max", self.max)) if v is not None})
        return [Finding(severity="error", code=self.code, message=message, numbers=numbers)]


def _token_count(name: str, value: object) -> int:
    """A training-token count as an int from 1 to `MAX_TOKENS` (a whole float such as
    1e9, as a flat model of the user's may hold it, is taken), else a `ScaleplanError`."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return whole(name, value, maximum=MAX_TOKENS,
                 message=f"must be a whole number of training tokens from 1 to "
                 f"{MAX_TOKENS:.0e}, e.g. {name}=10**9")


def check(value: Any, *rules: Marker, training: Any = None) -> list[Finding]:
    """Run ``rules`` on ``value`` and return their findings instead of raising.

    ``value`` is a `GPTConfig` or a model holding one (as for the markers); ``training`` adds
    training settings for a bare `GPTConfig`. Errors are what the markers would raise;
    warnings (``scaleplan.tight_fit``) never raise.

    >>> seed = GPTConfig(n_layer=12, n_head=12, n_embd=384, bias=False, dropout=0.1)
    >>> [f.code for f in check(seed, ParamsNear("~125M", count="nanogpt"))]
    ['scaleplan.params_mismatch']
    """
    if not rules:
        raise ScaleplanError("check() needs at least one rule, e.g. "
                             "check(cfg, ParamsNear('~125M'))")
    found: list[Finding] = []
    for rule in rules:
        try:
            subject = locate(type(value), model_field=rule.model_field,
                             training_field=rule.training_field).subject(value)
        except PydanticCustomError as exc:
            found.append(Finding(severity="error", code=exc.type, message=exc.message(),
                                 labels={k: str(v) for k, v in (exc.context or {}).items()}))
            continue
        if training is not None:
            subject = subject.with_training(training)
        found.extend(rule.evaluate(subject))
    return found

"""The machinery under `scaleplan.validation.markers`: findings, and where a marker finds its
inputs.

A marker sees one annotated value: a `GPTConfig`, or a model that holds one. `locate` works out,
from the annotated type and once (when the user's model class is defined), which field is the
`GPTConfig` and which holds the training settings; `Locator.subject` then picks them out of each
value. Settings are looked up on the training part first, then on the annotated model itself,
so a team's flat model (``micro_batch_size`` next to ``model``) works as well as one with a
`TrainingConfig` field.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from dataclasses import KW_ONLY, dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

from scaleplan.checks import real
from scaleplan.errors import ScaleplanError, shown
from scaleplan.findings import Finding
from scaleplan.model.config import GPTConfig
from scaleplan.model.training_config import TrainingConfig
from scaleplan.units import format_count

__all__ = [
    "MAX_TEXT_LENGTH",
    "TIGHT_FIT_FRACTION",
    "Finding",
    "Locator",
    "Marker",
    "Subject",
    "check_nonnegative",
    "check_text",
    "locate",
    "millions",
]

MISSING_SETTING = "scaleplan.missing_setting"
# A run that needs more than 95% of the GPU's memory fits on paper but leaves no room for the
# caching allocator's fragmentation over a long run: `check` warns (it does not raise).
TIGHT_FIT_FRACTION = 0.95
#: The longest text a marker reads (a claim such as "~125M", a GPU or precision name, a setting's
#: name): longer text is refused before any regex or lookup runs on it. A 6,000-character claim
#: took seconds in a regex (issue 20); no real claim or name is a tenth of this.
MAX_TEXT_LENGTH = 200


def millions(n: float) -> str:
    """A count as people write it: 40_560_000 -> '40.56M' (`scaleplan.units.format_count`).

    >>> millions(40_560_000)
    '40.56M'
    """
    return format_count(round(n))


def check_nonnegative(name: str, value: object) -> float:
    """A marker argument as a finite Python float >= 0 (numpy and Decimal converted, so the
    marker's arithmetic never runs in a fixed-width numpy type), else an error naming it.

    >>> check_nonnegative("rel_tol", -0.1)
    Traceback (most recent call last):
    ...
    scaleplan.errors.ScaleplanError: rel_tol=-0.1 must be a finite number >= 0, e.g. rel_tol=0.1
    """
    message = f"must be a finite number >= 0, e.g. {name}=0.1"
    if not isinstance(value, numbers.Number):  # numpy's bool: real() would read it as 0 or 1
        raise ScaleplanError(f"{name}={shown(value)} {message}")
    return real(name, value, inclusive=True, message=message)


def check_text(name: str, value: object, *, example: str) -> None:
    """Refuse text longer than `MAX_TEXT_LENGTH` for the marker argument ``name``; anything else
    (a number, a GPU spec, short text) passes unchanged.

    >>> check_text("claimed", "~125M", example="'~125M'")
    >>> check_text("claimed", "1" * 300, example="'~125M'")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    scaleplan.errors.ScaleplanError: claimed=... is 300 characters long; a marker reads at most ...
    """
    if isinstance(value, str) and len(value) > MAX_TEXT_LENGTH:
        raise ScaleplanError(f"{name}={shown(value)} is {len(value):,} characters long; a marker "
                             f"reads at most {MAX_TEXT_LENGTH}: give e.g. {name}={example}")


@dataclass(frozen=True)
class Subject:
    """The `GPTConfig` a rule checks, and where its training settings come from."""

    cfg: GPTConfig
    sources: tuple[Any, ...] = ()  # the training part first, then the annotated model

    def get(self, name: str, explicit: Any = None) -> Any:
        """``explicit`` when given, else the first source's ``name``, else None."""
        if explicit is not None:
            return explicit
        for source in self.sources:
            value = getattr(source, name, None)
            if value is not None:
                return value
        return None

    def with_training(self, training: Any) -> Subject:
        """The same subject with ``training`` consulted first."""
        return Subject(self.cfg, (training, *self.sources))


def _names(tp: Any) -> frozenset[str] | None:
    """Attributes every instance of ``tp`` has (fields and properties), or None if unknown."""
    if not isinstance(tp, type):
        return None
    fields = set(tp.model_fields) if issubclass(tp, BaseModel) else set()
    return frozenset(fields | {n for n in dir(tp) if not n.startswith("_")})


def _fields_of_type(model: type[BaseModel], kind: type) -> list[str]:
    return [name for name, info in model.model_fields.items()
            if isinstance(info.annotation, type) and issubclass(info.annotation, kind)]


def _pick(model: type[BaseModel], given: str | None, kind: type, arg: str,
          required: bool) -> str | None:
    if given is not None:
        if given not in model.model_fields:
            raise ScaleplanError(f"{arg}={shown(given)}: {model.__name__} has no such field; its "
                                 f"fields are {', '.join(model.model_fields)}")
        return given
    found = _fields_of_type(model, kind)
    if len(found) == 1:
        return found[0]
    if found or required:
        what = f"several {kind.__name__} fields ({', '.join(found)})" if found else \
            f"no {kind.__name__} field"
        raise ScaleplanError(f"{model.__name__} has {what}; name the one to check with "
                             f"{arg}='...'")
    return None


@dataclass(frozen=True)
class Locator:
    """Where, in values of one annotated type, the model and the training settings are."""

    model_field: str | None  # None: the value is the GPTConfig, or look it up at run time
    training_field: str | None
    available: frozenset[str] | None  # settings every value provides; None: unknown until run

    def unavailable(self, names: Iterable[str]) -> tuple[str, ...]:
        """The ``names`` that values of the annotated type cannot provide (as far as known)."""
        if self.available is None:
            return ()
        return tuple(n for n in names if n not in self.available)

    def subject(self, value: Any) -> Subject:
        """Pick the `GPTConfig` and the training settings out of ``value``."""
        if self.model_field is None and isinstance(value, GPTConfig):
            return Subject(value)
        cfg = getattr(value, self.model_field, None) if self.model_field else \
            _find(value, GPTConfig)
        if not isinstance(cfg, GPTConfig):
            raise PydanticCustomError(MISSING_SETTING, "no GPTConfig found in the value; annotate "
                                      "a GPTConfig or a model with a GPTConfig field",
                                      {"setting": self.model_field or "GPTConfig"})
        training = getattr(value, self.training_field) if self.training_field else \
            _find(value, TrainingConfig)
        return Subject(cfg, tuple(s for s in (training, value) if s is not None))


def _find(value: Any, kind: type) -> Any:
    """The one attribute of ``value`` that is a ``kind`` instance, or None."""
    found = [v for v in getattr(value, "__dict__", {}).values() if isinstance(v, kind)]
    return found[0] if len(found) == 1 else None


def locate(tp: Any, *, model_field: str | None = None,
           training_field: str | None = None) -> Locator:
    """Work out where a marker on ``tp`` finds its inputs; raise if it cannot.

    >>> locate(GPTConfig).available
    frozenset()
    """
    if isinstance(tp, type) and issubclass(tp, GPTConfig):
        if model_field or training_field:
            raise ScaleplanError("model_field= and training_field= are for models that hold a "
                                 "GPTConfig; this marker is on a GPTConfig itself")
        return Locator(None, None, frozenset())
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        model = _pick(tp, model_field, GPTConfig, "model_field", required=True)
        training = _pick(tp, training_field, TrainingConfig, "training_field", required=False)
        own = _names(tp) or frozenset()
        if training is None:
            return Locator(model, None, own)
        part = _names(tp.model_fields[training].annotation)
        return Locator(model, training, None if part is None else own | part)
    return Locator(model_field, training_field, None)  # not inspectable: look at each value


@dataclass(frozen=True)
class Marker:
    """What every marker shares: where its inputs are, and the pydantic hooks."""

    code: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ()  # settings a rule reads from the training part
    _: KW_ONLY
    model_field: str | None = None
    training_field: str | None = None

    def findings(self, subject: Subject) -> list[Finding]:
        """What the rule finds in ``subject`` (empty when all is well).

        >>> from scaleplan.validation.markers import MaxParams
        >>> gpt2 = Subject(GPTConfig.preset("gpt2"))  # 124,439,808 parameters
        >>> MaxParams("1.5B").findings(gpt2), [f.code for f in MaxParams("100M").findings(gpt2)]
        ([], ['scaleplan.too_many_params'])
        """
        raise NotImplementedError

    def describe(self) -> str:
        """The constraint in one sentence, for the JSON schema's description.

        >>> from scaleplan.validation.markers import MaxParams
        >>> MaxParams("1.5B").describe()
        'At most 1.5B parameters (total).'
        """
        raise NotImplementedError

    def explicit(self) -> dict[str, Any]:
        """Settings given to the marker itself, which win over the value's own.

        >>> from scaleplan.validation.markers import TokensPerParam
        >>> TokensPerParam(min=10, tokens=10**9).explicit()
        {'total_tokens': 1000000000}
        """
        return {}

    def argument(self, setting: str) -> str:
        """The marker's argument that gives ``setting``.

        >>> from scaleplan.validation.markers import TokensPerParam
        >>> TokensPerParam(min=10).argument("total_tokens")
        'tokens'
        """
        return setting

    def required(self) -> tuple[str, ...]:
        """The settings this marker must find on the value.

        >>> from scaleplan.validation.markers import DivisibleStep
        >>> DivisibleStep(524_288).required(), DivisibleStep(524_288, seq_len=1024).required()
        (('micro_batch_size', 'seq_len'), ('micro_batch_size',))
        """
        return tuple(n for n in self.needs if self.explicit().get(n) is None)

    def evaluate(self, subject: Subject) -> list[Finding]:
        """`findings`, or a ``scaleplan.missing_setting`` error when a setting is absent.

        >>> from scaleplan.validation.markers import DivisibleStep
        >>> [f.code for f in DivisibleStep(524_288).evaluate(Subject(GPTConfig()))]
        ['scaleplan.missing_setting']
        """
        for name in self.required():
            if subject.get(name) is None:
                return [Finding(
                    severity="error", code=MISSING_SETTING, labels={"setting": name},
                    message=f"{type(self).__name__} needs {name}: give it to the marker "
                    f"({type(self).__name__}(..., {self.argument(name)}=...)) or to the training "
                    "settings")]
        return self.findings(subject)

    def locate(self, tp: Any) -> Locator:
        """`locate` for this marker, raising if a needed setting cannot be found on ``tp``.

        >>> from scaleplan.validation.markers import DivisibleStep
        >>> DivisibleStep(524_288).locate(GPTConfig)
        Traceback (most recent call last):
        ...
        scaleplan.errors.ScaleplanError: DivisibleStep on GPTConfig needs micro_batch_size, ...
        """
        locator = locate(tp, model_field=self.model_field, training_field=self.training_field)
        missing = locator.unavailable(self.required())
        if missing:
            name = getattr(tp, "__name__", repr(tp))
            raise ScaleplanError(
                f"{type(self).__name__} on {name} needs {', '.join(missing)}, which {name} does "
                f"not have; pass {', '.join(f'{self.argument(m)}=...' for m in missing)} to the "
                "marker, or put it on a model that holds the GPTConfig with a TrainingConfig")
        return locator

    def __get_pydantic_core_schema__(
        self, source_type: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        schema = handler(source_type)
        locator = self.locate(source_type)  # raises while the user's class is being defined

        def validate(value: Any) -> Any:
            if value is None:  # Optional[...]: nothing to check
                return value
            for finding in self.evaluate(locator.subject(value)):
                if finding.severity == "error":
                    raise finding.error()
            return value

        return core_schema.no_info_after_validator_function(validate, schema)

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = dict(handler(schema))  # a copy: never edit a shared $defs entry
        before = json_schema.get("description")
        json_schema["description"] = f"{before} {self.describe()}" if before else self.describe()
        # Also under an extension key, which a field's own description= does not replace.
        json_schema["x-scaleplan"] = [*json_schema.get("x-scaleplan", []), self.describe()]
        return json_schema

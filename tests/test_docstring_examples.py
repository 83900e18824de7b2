"""Every public function and class, and every public method of those classes, shows a `>>>` example.

pytest runs ``--doctest-modules`` over scaleplan/ (pyproject.toml), so each example found here is
also executed and its output checked; this test makes sure there is one to run. Properties and
pydantic fields are attributes, not functions, and are left out. A method that overrides a
documented base method (a validator's ``describe``) may lean on the base's example:
``inspect.getdoc`` reads the inherited docstring.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import pytest

import scaleplan


def _public_methods(cls: type) -> Iterator[tuple[str, Any]]:
    for klass in cls.__mro__:
        if not klass.__module__.startswith("scaleplan"):
            continue
        for name, member in vars(klass).items():
            if name.startswith("_"):
                continue
            if isinstance(member, classmethod | staticmethod):
                member = member.__func__
            if inspect.isfunction(member):
                yield name, getattr(cls, name)


def _documented_callables() -> Iterator[tuple[str, Any]]:
    for name in scaleplan.__all__:
        obj = getattr(scaleplan, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            yield name, obj
        if inspect.isclass(obj):
            seen = set()
            for method_name, method in _public_methods(obj):
                if method_name not in seen:
                    seen.add(method_name)
                    yield f"{name}.{method_name}", method


CALLABLES = dict(_documented_callables())


def test_the_walk_finds_functions_classes_and_methods() -> None:
    # A walk that found nothing would pass vacuously; these are known to exist.
    assert {"count_params", "GPTConfig", "GPTConfig.replace", "Plan.to_deepspeed",
            "TrainingLog.final_val_loss", "MaxParams.describe"} <= set(CALLABLES)


@pytest.mark.parametrize("name", sorted(CALLABLES))
def test_docstring_has_a_runnable_example(name: str) -> None:
    doc = inspect.getdoc(CALLABLES[name]) or ""
    assert ">>>" in doc, (
        f"scaleplan.{name} has no '>>>' example in its docstring; add one small runnable "
        "example (pytest --doctest-modules runs it)")

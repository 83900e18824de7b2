"""A griffe extension for the API reference: list a pydantic model's fields in a table.

griffe reads the source without running it, so a field written as ``seq_len: int`` or
``hours: float = Field(description=...)`` is an attribute without a docstring, and the API
reference showed none of ``Plan``'s or ``GPTConfig``'s fields. For every class whose bases lead
to ``pydantic.BaseModel`` (decided from the source, so nothing else is imported), this extension
imports the class, reads ``model_fields`` (inherited fields included, in pydantic's order) and
appends a table to its docstring: the field's name, its type as the source writes it, its default
and its ``Field(description=...)``.
"""

from __future__ import annotations

import importlib
from typing import Any

from griffe import Class, Docstring, Expr, Extension

__all__ = ["PydanticFields", "fields_table"]

_FACTORIES = {list: "[]", dict: "{}", tuple: "()", set: "set()"}
_LONGEST_DEFAULT = 40  # characters; a longer repr is cut with an ellipsis


def _is_pydantic(cls: Class, seen: frozenset[str] = frozenset()) -> bool:
    for base in cls.bases:
        path = base.canonical_path if isinstance(base, Expr) else str(base)
        if path.startswith("pydantic.") or path == "BaseModel":
            return True
    for resolved in cls.resolved_bases:  # bases inside scaleplan, e.g. a shared frozen model
        if (isinstance(resolved, Class) and resolved.path not in seen
                and _is_pydantic(resolved, seen | {cls.path})):
            return True
    return False


def _runtime_class(cls: Class) -> Any:
    module = importlib.import_module(cls.module.path)
    obj: Any = module
    for part in cls.path[len(cls.module.path) + 1:].split("."):
        obj = getattr(obj, part)
    return obj


def _source_annotation(cls: Class, name: str) -> str | None:
    try:
        member = cls.all_members.get(name)
    except Exception:  # an unresolvable base: fall back on the runtime annotation
        member = cls.members.get(name)
    annotation = getattr(member, "annotation", None)
    return None if annotation is None else str(annotation)


def _runtime_annotation(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    return text or repr(annotation).replace("typing.", "")


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    factory = field.default_factory
    if factory is not None:
        return _FACTORIES.get(factory, f"{getattr(factory, '__name__', 'factory')}()")
    text = repr(field.default)
    return text if len(text) <= _LONGEST_DEFAULT else text[:_LONGEST_DEFAULT - 3] + "..."


def _cell(text: str, *, code: bool = False) -> str:
    # Python-Markdown's tables split no cell on a pipe inside a code span (`str | None`); in
    # prose a pipe is escaped, and a star is multiplication ("4*n_embd"), not emphasis
    text = " ".join(text.split())
    if code:
        return f"`{text}`"
    parts = text.split("`")  # odd parts are inside code spans
    parts[::2] = [part.replace("*", r"\*").replace("|", r"\|") for part in parts[::2]]
    return "`".join(parts)


def fields_table(cls: Class, model: Any) -> str:
    """The markdown table of ``model``'s fields (``cls`` is its griffe object, for the types)."""
    rows = ["**Fields**", "", "| field | type | default | description |",
            "| --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        annotation = _source_annotation(cls, name) or _runtime_annotation(field.annotation)
        rows.append(f"| `{name}` | {_cell(annotation, code=True)} | "
                    f"{_cell(_default(field), code=True)} | {_cell(field.description or '')} |")
    return "\n".join(rows)


class PydanticFields(Extension):
    """Append `fields_table` to the docstring of every pydantic model griffe loads.

    ``skip``: packages whose models are left alone, because no page shows them and importing
    them costs (mkdocs.yml skips ``scaleplan.reference``, which imports torch).
    """

    def __init__(self, skip: list[str] | None = None) -> None:
        super().__init__()
        self.skip = tuple(skip or ())

    def on_class(self, *, cls: Class, **kwargs: Any) -> None:
        if cls.name.startswith("_") or not _is_pydantic(cls):
            return
        if any(cls.path == p or cls.path.startswith(p + ".") for p in self.skip):
            return
        try:
            model = _runtime_class(cls)
        except ImportError:  # an optional extra's module (scaleplan.reference needs torch)
            return
        if not getattr(model, "model_fields", None):
            return
        table = fields_table(cls, model)
        if cls.docstring is None:
            cls.docstring = Docstring(table, parent=cls)
        else:
            cls.docstring.value = cls.docstring.value.rstrip() + "\n\n" + table

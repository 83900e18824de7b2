"""Parse a nanoGPT config file as data, never as code.

nanoGPT's ``configurator.py`` runs config files with ``exec``. scaleplan reads them with `ast`
instead and accepts only what a config needs:

- assignments ``name = value`` (one name on the left; ``a = b = 1`` and tuples are rejected);
- values built from literals (numbers, strings, True/False/None) with ``+ - * / // % **`` and
  parentheses, e.g. ``5 * 8`` or ``2**19``; strings may be joined with ``+``;
- comments and docstrings.

nanoGPT's own files hold a little more, and that is skipped with a note (`ParsedAssignments.notes`),
never run:

- imports (``import time`` in ``config/finetune_shakespeare.py``);
- a value that is not a literal for a setting that only names where a run logs
  (`UNREAD_KEYS`: ``wandb_run_name = 'ft-' + str(time.time())``);
- given ``train.py`` itself, everything from ``config_keys = ...`` or
  ``exec(open('configurator.py').read())`` on: the assignments above that line are train.py's
  defaults block, which is what is read (a value there that is not a literal, such as ``dtype``'s
  GPU test, is skipped with a note too).

Everything else (calls, names, attribute access, subscripts, lambdas, comprehensions, control
flow) is rejected with an error naming the line. Arithmetic is bounded so that ``10**10**10`` is
an error, not a hang.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from scaleplan.errors import ConfigFileError

__all__ = ["UNREAD_KEYS", "ParsedAssignments", "parse_amount", "parse_assignments", "parse_size"]

# Bounds on what a config's arithmetic may produce: config values are at most ~1e15
# (tokens, iterations), so anything past these is a mistake or an attack.
MAX_INT_DIGITS = 30
MAX_EXPONENT = 128
MAX_STRING_LENGTH = 10_000
MAX_LINE_COUNT = 20_000
# The longest piece of a skipped line quoted in its note, and the most line numbers one lists
# (train.py has 10 imports).
NOTE_QUOTE_LIMIT = 60
NOTE_LINES_LIMIT = 20

#: nanoGPT train.py settings that say where and how a run logs, never what it trains: a value
#: there that is not a literal (``wandb_run_name = 'ft-' + str(time.time())``) is skipped with a
#: note instead of refusing the file.
UNREAD_KEYS = frozenset({"out_dir", "log_interval", "always_save_checkpoint", "wandb_log",
                         "wandb_project", "wandb_run_name", "backend", "device"})

Number = int | float
Value = int | float | str | bool | None

_BINARY_OPS: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}

# A claimed size in a comment: "~125M parameters", "124M params", "1.5B-parameter", "350M model".
# A bare "~0.5M" is not a claim: nanoGPT's train_gpt2.py says "total batch size be ~0.5M".
# Linear time: a match starts only at the first digit of a number (the lookbehind), so
# "# " + "1" * 20000 is no longer tried from every digit (that took 17 s, issue 20), and each
# run of digits or spaces is backtracked over by that one start alone. A leading "~" is left out
# of the pattern: its "\s*" before the number was quadratic on a long run of spaces. (Atomic
# groups would say this more directly, but they need Python 3.11.)
_CLAIM = re.compile(
    r"(?<![\d.])(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>[KMBT])\b[\s-]*"
    r"(?:param(?:eter)?s?|model)\b",
    re.IGNORECASE,
)
# Anchored (only ever fullmatch-ed), so linear as it stands.
_AMOUNT = re.compile(r"~?\s*(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>[KMBT])", re.IGNORECASE)
_UNIT = {"k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}


@dataclass(frozen=True)
class ParsedAssignments:
    """What `parse_assignments` found: values by name, the line of each, and a claimed size."""

    values: dict[str, Value]
    lines: dict[str, int]
    claimed_params: int | None = None
    claimed_params_text: str | None = None
    comments: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    defaults_block: bool = False
    """True when the text is nanoGPT's train.py and only its defaults block was read."""


def parse_size(text: str) -> int | None:
    """The parameter count a piece of text claims, or None.

    >>> parse_size("Model (~125M parameters) - perfect for 12 GB VRAM")
    125000000
    >>> parse_size("batch of 12 GB") is None
    True
    """
    return _scaled(_CLAIM.search(text))


def parse_amount(text: str) -> int | None:
    """A bare amount such as "~125M" or "1.5B" (the whole text), or None.

    >>> parse_amount("~125M"), parse_amount("1.5b"), parse_amount("125M tokens")
    (125000000, 1500000000, None)
    """
    return _scaled(_AMOUNT.fullmatch(text.strip()))


def _scaled(match: re.Match[str] | None) -> int | None:
    # A number of hundreds of digits is no size ("1" * 400 + "M params" overflowed round()).
    if match is None or len(match["num"]) > MAX_INT_DIGITS:
        return None
    return round(float(match["num"]) * _UNIT[match["unit"].lower()])


def parse_assignments(text: str, *, source: str = "<config>") -> ParsedAssignments:
    """Parse ``text`` as a nanoGPT config file: literal assignments only, never executed.

    >>> parse_assignments("batch_size = 16\\ngradient_accumulation_steps = 5 * 8").values
    {'batch_size': 16, 'gradient_accumulation_steps': 40}
    """
    if text.count("\n") > MAX_LINE_COUNT:
        raise ConfigFileError(f"more than {MAX_LINE_COUNT:,} lines; not a config file",
                              path=source)
    try:
        tree = ast.parse(text, filename=source)
    except SyntaxError as exc:
        message = f"not valid Python syntax: {exc.msg}"
        if "integer string conversion" in str(exc.msg):  # a literal past 4300 digits
            message = (f"an integer literal with thousands of digits; a config value has at "
                       f"most {MAX_INT_DIGITS}")
        raise ConfigFileError(message, path=source, line=exc.lineno) from None
    except (RecursionError, MemoryError, ValueError):
        raise ConfigFileError("too deeply nested to be a config file", path=source) from None

    end = _defaults_block_end(tree.body)
    body = tree.body if end is None else tree.body[:end]
    values: dict[str, Value] = {}
    lines: dict[str, int] = {}
    notes: list[str] = []
    imports: list[ast.stmt] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            imports.append(node)
            continue
        try:
            assigned = _assignment(node, source)
        except ConfigFileError:
            note = _skipped(node, text, in_train_py=end is not None)
            if note is None:
                raise
            notes.append(note)
            continue
        if assigned is not None:
            name, values[name] = assigned
            lines[name] = node.lineno
    if imports:
        notes.insert(0, _imports_note(imports, text))
    if end is not None:
        notes.append(f"line {tree.body[end].lineno} on: train.py's code after its defaults block "
                     "(config_keys / configurator.py) is not read")
    comments = _comments(text, before=None if end is None else tree.body[end].lineno)
    claimed, claim_text = _claimed_size(comments)
    return ParsedAssignments(values=values, lines=lines, claimed_params=claimed,
                             claimed_params_text=claim_text, comments=comments, notes=notes,
                             defaults_block=end is not None)


def _defaults_block_end(body: list[ast.stmt]) -> int | None:
    """The index of train.py's ``config_keys = ...`` or ``exec(open('configurator.py')...)``,
    where its defaults block ends; None for a config file."""
    for index, node in enumerate(body):
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "config_keys" for t in node.targets):
            return index
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) \
                and isinstance(node.value.func, ast.Name) and node.value.func.id == "exec" \
                and any(isinstance(n, ast.Constant) and n.value == "configurator.py"
                        for n in ast.walk(node.value)):
            return index
    return None


def _skipped(node: ast.stmt, text: str, *, in_train_py: bool) -> str | None:
    """The note for a statement that is skipped rather than refused, or None to refuse it.

    In train.py's defaults block anything is skipped (the file is nanoGPT's code, read for its
    defaults); in a config file only a non-literal value for one of `UNREAD_KEYS`."""
    quoted = _quote(node, text)
    name = _single_name(node)
    if in_train_py:
        kept = f"; scaleplan's default for {name} stands" if name else ""
        return (f"line {node.lineno}: {quoted} skipped: not a literal assignment (nothing is "
                f"run){kept}")
    if name in UNREAD_KEYS:
        return (f"line {node.lineno}: {quoted} skipped: not a literal (nothing is run); "
                f"{name} only names where the run logs")
    return None


def _imports_note(imports: list[ast.stmt], text: str) -> str:
    if len(imports) == 1:
        return f"line {imports[0].lineno}: {_quote(imports[0], text)} skipped (nothing is imported)"
    lines = ", ".join(str(node.lineno) for node in imports[:NOTE_LINES_LIMIT])
    if len(imports) > NOTE_LINES_LIMIT:
        lines += ", ..."
    return f"lines {lines}: {len(imports):,} imports skipped (nothing is imported)"


def _quote(node: ast.stmt, text: str) -> str:
    """The statement's source on one line, cut to `NOTE_QUOTE_LIMIT` characters."""
    quoted = " ".join((ast.get_source_segment(text, node) or "").split())
    if len(quoted) > NOTE_QUOTE_LIMIT:
        quoted = quoted[:NOTE_QUOTE_LIMIT - 3] + "..."
    return quoted


def _single_name(node: ast.stmt) -> str | None:
    if isinstance(node, ast.Assign) and len(node.targets) == 1 \
            and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id
    return None


def _assignment(node: ast.stmt, source: str) -> tuple[str, Value] | None:
    """The name and value a top-level statement assigns; None for a docstring. Anything but
    ``name = literal`` is an error that says what is read."""
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) \
            and isinstance(node.value.value, str):
        return None  # a docstring
    if not isinstance(node, (ast.Assign, ast.AnnAssign)):
        raise _reject(node, source, f"{_describe(node)} is not allowed in a config file; "
                      "only 'name = value' assignments of literals are read (the file is "
                      "never executed)")
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    if len(targets) != 1 or not isinstance(targets[0], ast.Name):
        raise _reject(node, source, "only a single name may be assigned, as in 'n_layer = 12'")
    if node.value is None:
        raise _reject(node, source, "an annotation without a value assigns nothing")
    try:
        return targets[0].id, _evaluate(node.value, source)
    except RecursionError:
        raise _reject(node, source, "expression too deeply nested") from None


def _claimed_size(comments: list[str]) -> tuple[int | None, str | None]:
    """The first size a comment claims ("# Model (~125M parameters)") and that comment."""
    for comment in comments:
        size = parse_size(comment)
        if size is not None:
            return size, comment.strip()
    return None, None


def _comments(text: str, *, before: int | None = None) -> list[str]:
    """Comment texts, found with the tokenizer so '#' inside strings is not a comment (only
    those above line ``before`` when given)."""
    import io
    import tokenize

    out: list[str] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if before is not None and tok.start[0] >= before:
                break
            if tok.type == tokenize.COMMENT:
                out.append(tok.string.lstrip("#").strip())
    except (tokenize.TokenError, SyntaxError):  # already parsed by ast; be lenient here
        pass
    return out


def _describe(node: ast.AST) -> str:
    kinds = {
        ast.Import: "an import", ast.ImportFrom: "an import", ast.FunctionDef: "a function",
        ast.ClassDef: "a class", ast.If: "an if statement", ast.For: "a loop",
        ast.While: "a loop", ast.With: "a with block", ast.Expr: "an expression statement",
        ast.AugAssign: "an augmented assignment (+=)", ast.Delete: "del",
    }
    return kinds.get(type(node), f"a {type(node).__name__} statement")


def _reject(node: ast.AST, source: str, message: str) -> ConfigFileError:
    return ConfigFileError(message, path=source, line=getattr(node, "lineno", None))


def _evaluate(node: ast.expr, source: str) -> Value:
    """A literal, a sign on one, or arithmetic on literals, checked at every step.

    The operands are evaluated here, before `_signed` / `_arithmetic` combine them, so that one
    frame per level of nesting is used (the depth a long ``1 + 1 + ...`` reaches).
    """
    if isinstance(node, ast.Constant):
        return _constant(node, source)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        return _signed(node, _evaluate(node.operand, source), source)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
        left = _evaluate(node.left, source)
        return _arithmetic(node, left, _evaluate(node.right, source), source)
    raise _reject(node, source, f"{_expression_kind(node)} is not allowed; a config value must "
                  "be a literal or simple arithmetic on literals (the file is never executed)")


def _constant(node: ast.Constant, source: str) -> Value:
    value = node.value
    if value is None or isinstance(value, (bool, int, float, str)):
        return _checked(value, node, source)
    raise _reject(node, source, f"a {type(value).__name__} literal is not a config value")


def _signed(node: ast.UnaryOp, operand: Value, source: str) -> Value:
    if isinstance(operand, bool) or not isinstance(operand, (int, float)):
        raise _reject(node, source, f"cannot negate {operand!r}")
    return _checked(-operand if isinstance(node.op, ast.USub) else operand, node, source)


def _arithmetic(node: ast.BinOp, left: Value, right: Value, source: str) -> Value:
    """Numbers combined by one of `_BINARY_OPS`, or two strings joined by '+'."""
    if isinstance(left, str) and isinstance(right, str) and isinstance(node.op, ast.Add):
        return _checked(left + right, node, source)
    if not _is_number(left) or not _is_number(right):
        raise _reject(node, source, f"arithmetic on {left!r} and {right!r} is not allowed; "
                      "only numbers (and '+' between strings)")
    assert isinstance(left, (int, float)) and isinstance(right, (int, float))
    if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT and abs(left) > 1:
        raise _reject(node, source, f"exponent {right!r} is too large for a config value "
                      f"(at most {MAX_EXPONENT})")
    try:
        result = _BINARY_OPS[type(node.op)](left, right)
    except (ZeroDivisionError, OverflowError, ValueError) as exc:
        raise _reject(node, source, f"arithmetic failed: {exc}") from None
    if isinstance(result, complex):
        raise _reject(node, source, "arithmetic gave a complex number")
    return _checked(result, node, source)


def _is_number(value: Value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _checked(value: Value, node: ast.AST, source: str) -> Value:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int) and abs(value) >= 10**MAX_INT_DIGITS:
        raise _reject(node, source, f"integer with more than {MAX_INT_DIGITS} digits is not a "
                      "config value")
    if isinstance(value, float) and not math.isfinite(value):
        raise _reject(node, source, f"{value!r} is not a finite number")
    if isinstance(value, str) and len(value) > MAX_STRING_LENGTH:
        raise _reject(node, source, f"string longer than {MAX_STRING_LENGTH:,} characters")
    return value


def _expression_kind(node: ast.expr) -> str:
    if isinstance(node, ast.Call):
        return "a function call"
    if isinstance(node, ast.Name):
        return f"the name {node.id!r}"
    if isinstance(node, ast.Attribute):
        return "attribute access"
    if isinstance(node, ast.Subscript):
        return "subscripting"
    if isinstance(node, ast.Lambda):
        return "a lambda"
    return f"a {type(node).__name__} expression"

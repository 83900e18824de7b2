"""The documentation's examples run, and print what the pages say they print.

Every page in docs/ is checked block by block, in order, in one namespace per page, inside a fresh
temporary working directory:

- ```` ```pycon ```` blocks are doctests (``>>>`` lines and their expected output);
- ```` ```python ```` blocks run as code (their names stay defined for later blocks);
- a block with ``title="NAME"`` (```` ```python title="train.py" ````) is a file the page shows:
  it is written to NAME in the working directory and never run;
- ```` ```console ```` blocks hold ``$ scaleplan ...`` commands; each runs (in-process) and its
  output, stdout and stderr together, must match the lines that follow it;
- other blocks (``bash``, ``text``, ...) are shown, not run.

Expected output may use ``...`` for a part left out (doctest's ELLIPSIS). Fences must start at
the beginning of a line.
"""

from __future__ import annotations

import contextlib
import doctest
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from scaleplan.cli import main
from scaleplan.model.config import GPTConfig
from scaleplan.model.params import count_params

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

_FENCE = re.compile(
    r"^(?P<fence>`{3,})(?P<lang>[\w-]*)(?P<attrs>[^\n]*)\n(?P<body>.*?)^(?P=fence)[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
_TITLE = re.compile(r'title="(?P<title>[^"]+)"')


@dataclass(frozen=True)
class Block:
    lang: str
    title: str | None
    body: str
    line: int  # line of the first body line in the page


def blocks(text: str) -> list[Block]:
    out = []
    for m in _FENCE.finditer(text):
        title = _TITLE.search(m["attrs"])
        line = text.count("\n", 0, m.start("body")) + 1
        out.append(Block(m["lang"], title["title"] if title else None, m["body"], line))
    return out


def _run_pycon(block: Block, page: str, globs: dict[str, Any]) -> None:
    test = doctest.DocTestParser().get_doctest(block.body, globs, page, page, block.line - 1)
    out = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    result = runner.run(test, out=out.write, clear_globs=False)
    globs.update(test.globs)  # DocTest works on a copy; later blocks see this block's names
    if result.failed:
        pytest.fail(f"docs/{page}, block at line {block.line}:\n{out.getvalue()}", pytrace=False)


def _run_console(block: Block, page: str) -> None:
    commands: list[tuple[str, list[str]]] = []
    for line in block.body.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], []))
        elif commands:
            commands[-1][1].append(line)
        else:
            pytest.fail(f"docs/{page}, line {block.line}: console output before any '$ ' command")
    checker = doctest.OutputChecker()
    for command, expected_lines in commands:
        argv = shlex.split(command)
        if argv[0] != "scaleplan" or any(tok in ("|", ">", "&&", ";") for tok in argv):
            pytest.fail(f"docs/{page}, line {block.line}: only plain 'scaleplan ...' commands can "
                        f"be checked, not {command!r}; show others in a ```bash block")
        buffer = io.StringIO()
        # argparse's own errors exit; scaleplan's are printed and returned as status 2
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer), \
                contextlib.suppress(SystemExit):
            main(argv[1:])
        expected = "\n".join(expected_lines).rstrip() + "\n"
        got = buffer.getvalue().rstrip() + "\n"
        if not checker.check_output(expected, got, FLAGS):
            pytest.fail(f"docs/{page}, line {block.line}: `{command}` printed\n{got}\n"
                        f"but the page shows\n{expected}", pytrace=False)


@pytest.mark.parametrize("page", PAGES)
def test_page_examples_run_and_match(page: str, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    globs: dict[str, Any] = {"__name__": "__docs__"}
    for block in blocks((DOCS / page).read_text(encoding="utf-8")):
        if block.title is not None:
            (tmp_path / block.title).write_text(block.body, encoding="utf-8")
        elif block.lang == "pycon":
            _run_pycon(block, page, globs)
        elif block.lang == "python":
            # dont_inherit: this file's `from __future__ import annotations` must not leak
            # into the page's code (pydantic resolves the page's annotations as written)
            exec(compile(block.body, f"docs/{page}:{block.line}", "exec", dont_inherit=True),
                 globs)
        elif block.lang == "console":
            _run_console(block, page)


def test_pages_have_examples_that_are_checked() -> None:
    # A renamed fence language (```py, ```shell) would silently stop being checked.
    checked = {"pycon", "python", "console"}
    pages = ("getting-started.md", "seed-case.md", "configs.md", "batching.md", "cli.md",
             "planning.md", "memory.md", "flops-and-mfu.md", "scaling.md")
    counts = {page: sum(b.lang in checked for b in blocks((DOCS / page).read_text("utf-8")))
              for page in pages}
    assert all(n >= 2 for n in counts.values()), counts


def test_presets_table_lists_every_preset_with_its_count() -> None:
    # The table in configs.md is written by hand; it must list exactly the presets there are,
    # with the parameter count scaleplan gives (the published totals are checked in
    # test_loaders.py and test_params.py).
    text = (DOCS / "configs.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([\w.-]+)` \|.*\| ([\d,]+) \|$", text, re.MULTILINE)
    table = {name: int(total.replace(",", "")) for name, total in rows}
    assert list(table) == list(GPTConfig.presets())
    assert table == {n: count_params(GPTConfig.preset(n)).total for n in GPTConfig.presets()}


def test_fence_reader_finds_languages_titles_and_lines() -> None:
    page = 'text\n```python title="a.py"\nx = 1\n```\n\n```pycon\n>>> 1 + 1\n2\n```\n'
    found = blocks(page)
    assert [(b.lang, b.title, b.line) for b in found] == [("python", "a.py", 3), ("pycon", None, 7)]
    assert found[1].body == ">>> 1 + 1\n2\n"


def test_configs_page_describes_every_gptconfig_field() -> None:
    text = (DOCS / "configs.md").read_text(encoding="utf-8")
    missing = [name for name in GPTConfig.model_fields if f"`{name}`" not in text]
    assert missing == []


# Modules documented elsewhere: the command line has its own page, presets are a table there;
# the reference model needs torch and is documented on the validation pages.
NOT_IN_API_REFERENCE = {"__init__", "__main__", "cli", "presets"}


def test_every_module_has_an_api_reference_page() -> None:
    package = DOCS.parent / "scaleplan"
    modules = sorted(
        ".".join(p.relative_to(package).with_suffix("").parts) for p in package.rglob("*.py")
        if p.stem not in NOT_IN_API_REFERENCE and not p.stem.startswith("_")
        and p.relative_to(package).parts[0] != "reference")
    assert "memory.training" in modules and "model.params" in modules  # the walk sees subpackages
    nav = (DOCS.parent / "mkdocs.yml").read_text(encoding="utf-8")
    for name in modules:
        rel = name.replace(".", "/") + ".md"
        page = DOCS / "reference" / rel
        assert page.is_file() and f"::: scaleplan.{name}" in page.read_text(encoding="utf-8"), (
            f"scaleplan.{name} has no API page: create docs/reference/{rel} holding "
            f"'::: scaleplan.{name}' and list it under 'API reference' in mkdocs.yml")
        assert f"reference/{rel}" in nav, f"add reference/{rel} to mkdocs.yml's nav"


def test_docstring_examples_are_fenced_for_the_api_reference() -> None:
    # docs/_ext/doctest_fences.py (a griffe extension, loaded by mkdocs) turns bare '>>>' runs
    # into pycon fences; Markdown would otherwise read '>>>' as nested blockquotes.
    pytest.importorskip("griffe", reason="the docs extra is not installed")
    import importlib.util

    spec = importlib.util.spec_from_file_location("doctest_fences",
                                                  DOCS / "_ext" / "doctest_fences.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = "Count.\n\n>>> f(1)\n[1, 2]\n\nArgs:\n    x: a value.\n\n    >>> g()\n"
    assert module.fence_doctests(text) == (
        "Count.\n\n```pycon\n>>> f(1)\n[1, 2]\n```\n\nArgs:\n    x: a value.\n\n    >>> g()")
    fenced = "```pycon\n>>> f(1)\n```"
    assert module.fence_doctests(fenced) == fenced  # already fenced: unchanged


def test_the_limits_page_shows_the_bounds_the_code_uses() -> None:
    # docs/limits.md quotes each bound by its full name; the value written there (a number, or
    # 10^k / 2^k in HTML) must be the constant's value, so the page cannot drift from the code.
    import importlib
    import re

    text = (DOCS / "limits.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(scaleplan\.[\w.]+)\.(MAX_\w+)` \| ([^|]+?) \|", text, re.MULTILINE)
    assert len(rows) >= 13
    for module, name, written in rows:
        value = getattr(importlib.import_module(module), name)
        number = written.split(" ")[0]
        if power := re.fullmatch(r"(\d+)<sup>(\d+)</sup>", number):
            shown = int(power[1]) ** int(power[2])
        else:
            shown = float(number.replace(",", "").rstrip("%"))
        assert shown == value, (module, name, written, value)

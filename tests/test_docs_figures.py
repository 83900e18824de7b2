"""The docs site's figures and its API tables of pydantic fields.

The figures are drawn by docs/_ext/make_figures.py (an MkDocs hook: every build draws them from
the library it documents); the fields tables by the griffe extension docs/_ext/pydantic_fields.py.
Both are loaded here from mkdocs.yml's own paths, so a renamed file or a dropped line fails.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

import scaleplan as sp

yaml = pytest.importorskip("yaml")  # installed with MkDocs (the docs extra)

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
MKDOCS = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
_FIGURE_LINK = re.compile(r"!\[(?P<alt>[^\]]*)\]\((?P<path>figures/[^)\s]+)\)")


def _load(relative: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(Path(relative).stem, ROOT / relative)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _figure_links() -> list[tuple[str, str, str]]:
    """(page, figure file name, alt text) for every figure a page shows."""
    out = []
    for page in sorted(DOCS.rglob("*.md")):
        for m in _FIGURE_LINK.finditer(page.read_text(encoding="utf-8")):
            out.append((page.name, m["path"].removeprefix("figures/"), m["alt"]))
    return out


@pytest.fixture(scope="module")
def figures() -> ModuleType:
    pytest.importorskip("matplotlib")
    (hook,) = MKDOCS["hooks"]
    return _load(hook)


@pytest.fixture(scope="module")
def out(figures: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("figures")
    figures.draw_all(out)
    return out


@pytest.fixture(scope="module")
def drawn(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir()}


def test_script_draws_every_figure_as_svg(figures: ModuleType, drawn: dict[str, bytes]) -> None:
    assert sorted(drawn) == sorted(figures.FIGURES)
    assert len(drawn) == 5
    for name, data in drawn.items():
        assert data.startswith(b"<?xml") and b"<svg" in data[:500], name


def test_a_rebuild_draws_the_same_bytes_and_rewrites_nothing(
        figures: ModuleType, out: Path, drawn: dict[str, bytes]) -> None:
    # no date, a fixed hash salt: the hook rewrites nothing on a rebuild (mkdocs serve would
    # otherwise rebuild forever on its own output)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    figures.draw_all(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == drawn
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_every_figure_is_on_a_page_with_alt_text(figures: ModuleType) -> None:
    links = _figure_links()
    shown = {name for _, name, _ in links}
    assert shown == set(figures.FIGURES)  # none left out, none missing from the script
    pages = {name: page for page, name, _ in links}
    assert pages["memory-microbatch.svg"] == "memory.md"
    assert pages["isoflop.svg"] == "scaling.md"
    assert all(len(alt.split()) >= 10 for _, _, alt in links), links


def test_every_figure_has_a_caption_naming_the_function_that_made_it() -> None:
    makers = {"memory-microbatch.svg": "training_memory", "memory-models.svg": "training_memory",
              "fit-frontier.svg": "max_micro_batch_size", "isoflop.svg": "compute_optimal",
              "frontiers.svg": "compute_optimal"}
    captioned = []
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text(encoding="utf-8")
        for block in re.findall(r"<figure.*?</figure>", text, re.DOTALL):
            name = _FIGURE_LINK.search(block)["path"].removeprefix("figures/")  # type: ignore[index]
            caption = re.search(r"<figcaption>(.*)</figcaption>", block, re.DOTALL)
            assert caption is not None and makers[name] in caption[1], name
            captioned.append(name)
    # every figure a page shows sits in a <figure> with its caption
    assert sorted(captioned) == sorted(name for _, name, _ in _figure_links())


def test_memory_figure_draws_the_rtx_4070_line_at_nvidia_smis_figure(
        drawn: dict[str, bytes]) -> None:
    # nvidia-smi prints 12,282 MiB for an RTX 4070 (docs/memory.md): 12282 / 1024 = 11.99 GiB.
    # matplotlib keeps each label's text in a comment of the SVG.
    assert b"RTX 4070: 11.99 GiB" in drawn["memory-microbatch.svg"]
    # nvidia-smi prints 24,564 MiB for an RTX 4090 (RLinf/RLinf issue #255): 23.99 GiB
    assert f"RTX 4090: {24564 / 1024:.1f} GiB".encode() in drawn["memory-models.svg"]


def test_stacked_bars_refuse_parts_that_do_not_add_up(figures: ModuleType) -> None:
    import matplotlib.pyplot as plt

    parts = dict(weights=1, gradients=1, optimizer=2, saved_for_backward=3, logits=1,
                 autocast_weight_copies=0, transient=1, overhead=1)
    good = SimpleNamespace(total=9 * 2**30, **{k: v * 2**30 for k, v in parts.items()})
    bad = SimpleNamespace(**{**vars(good), "total": 10 * 2**30})
    fig, ax = plt.subplots()
    try:
        figures._stacked_bars(ax, ["a"], [good])
        with pytest.raises(AssertionError, match="do not add up"):
            figures._stacked_bars(ax, ["b"], [bad])
    finally:
        plt.close(fig)


def test_wide_tables_scroll_inside_the_text_column() -> None:
    (css,) = MKDOCS["extra_css"]
    text = (DOCS / css).read_text(encoding="utf-8")
    rule = re.search(r"@media screen \{\s*\.md-typeset table:not\(\[class\]\),\s*"
                     r"\.md-typeset \.doc-contents table \{(?P<body>[^}]*)\}", text)
    assert rule is not None
    assert "overflow-x: auto" in rule["body"] and "max-width: 100%" in rule["body"]
    # code in a cell is not split mid-name (Material's code has word-break: break-word)
    assert re.search(r"\.md-typeset td code,\s*\.md-typeset th code \{\s*word-break: normal;",
                     text)


# --- the API reference's fields tables ----------------------------------------------------------

def _extension() -> dict[str, Any]:
    """mkdocs.yml's entry for the fields extension: {path: options}, as griffe takes it."""
    handler = MKDOCS["plugins"][1]["mkdocstrings"]["handlers"]["python"]
    (entry,) = [e for e in handler["options"]["extensions"]
                if isinstance(e, dict) and any(k.endswith("pydantic_fields.py") for k in e)]
    return {str(ROOT / path): options for path, options in entry.items()}


@pytest.fixture(scope="module")
def package() -> Any:
    griffe = pytest.importorskip("griffe")
    extensions = griffe.load_extensions(_extension())
    return griffe.load("scaleplan", search_paths=[str(ROOT)], extensions=extensions)


def _cells(line: str) -> list[str]:
    """A table row's cells: split on pipes outside code spans and not escaped."""
    cells, cell, in_code, previous = [], "", False, ""
    for ch in line.strip()[1:-1]:
        if ch == "|" and not in_code and previous != "\\":
            cells.append(cell.strip())
            cell = ""
        else:
            in_code ^= ch == "`"
            cell += ch
        previous = ch
    return [*cells, cell.strip()]


def _rows(docstring: str) -> dict[str, list[str]]:
    """The fields table's rows, by field name (the first cell without its backticks)."""
    rows = {}
    for line in docstring.splitlines():
        if line.startswith("| `"):
            cells = _cells(line)
            rows[cells[0].strip("`")] = [cells[0].strip("`"), *cells[1:]]
    return rows


def test_row_reader_keeps_pipes_in_code_and_escaped_pipes() -> None:
    assert _cells(r"| `a` | `str | None` | `None` | x \| y |") == \
        ["`a`", "`str | None`", "`None`", r"x \| y"]


def test_plan_page_lists_every_field_with_type_default_and_description(package: Any) -> None:
    rows = _rows(package["planning.planner.Plan"].docstring.value)
    assert list(rows) == list(sp.Plan.model_fields)
    # as planner.py declares them
    assert rows["micro_batch_size"] == ["micro_batch_size", "`int`", "`required`",
                                        "Sequences per GPU per forward and backward: the "
                                        "largest that fits and divides the step."]
    assert rows["grad_accum_steps"][3] == "Micro-batches per GPU per optimizer step."
    assert rows["remedy"] == ["remedy", "`str | None`", "`None`",
                              "What had to change to fit, if anything."]
    assert rows["warnings"][:3] == ["warnings", "`list[PlanWarning]`", "`[]`"]


def test_gptconfig_page_lists_nanogpts_defaults(package: Any) -> None:
    rows = _rows(package["model.config.GPTConfig"].docstring.value)
    assert list(rows) == list(sp.GPTConfig.model_fields)
    # nanoGPT's model.GPTConfig: n_layer 12, n_head 12, n_embd 768, block_size 1024,
    # vocab_size 50304, dropout 0.0, bias True
    defaults = {name: rows[name][2] for name in ("n_layer", "n_head", "n_embd", "block_size",
                                                 "vocab_size", "dropout", "bias")}
    assert defaults == {"n_layer": "`12`", "n_head": "`12`", "n_embd": "`768`",
                        "block_size": "`1024`", "vocab_size": "`50304`", "dropout": "`0.0`",
                        "bias": "`True`"}
    # "4*n_embd" in mlp_hidden's description is multiplication, not emphasis
    assert r"4\*n_embd" in rows["mlp_hidden"][3]


def test_every_exported_pydantic_model_gets_a_fields_table(package: Any) -> None:
    from pydantic import BaseModel

    models = [name for name in sp.__all__
              if isinstance(getattr(sp, name), type) and issubclass(getattr(sp, name), BaseModel)]
    assert {"Plan", "GPTConfig", "MemoryBreakdown"} <= set(models)
    for name in models:
        model = getattr(sp, name)
        doc = package[model.__module__.removeprefix("scaleplan.") + "." + name].docstring.value
        assert list(_rows(doc)) == list(model.model_fields), name


def test_fields_table_renders_one_cell_per_column() -> None:
    markdown = pytest.importorskip("markdown")
    html = markdown.markdown("| field | type | default | description |\n| --- | --- | --- | --- |\n"
                             "| `remedy` | `str | None` | `None` | a \\| b, 4\\*n |",
                             extensions=["tables"])
    cells = re.findall(r"<td>(.*?)</td>", html)
    assert cells == ["<code>remedy</code>", "<code>str | None</code>", "<code>None</code>",
                     "a | b, 4*n"]

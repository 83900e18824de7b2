"""The published GPU memory peaks (issue 17, item 4) parse, cite their sources, and the page that
sets them beside scaleplan's predictions is the one the benchmark writes now.

These tests record evidence; they assert no accuracy (the rows are there to show where
`training_memory` misses, see scaleplan/data/published_peaks.md)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import benchmarks.published_peaks as pp
from benchmarks.published_peaks import (
    CSV_PATH,
    DOC_PATH,
    ISSUE17_OPTIONS,
    applied_options,
    compared_bytes,
    figure_bytes,
    load_peaks,
    predict,
    render,
    rows,
)

ROOT = Path(__file__).resolve().parent.parent
PEAKS = load_peaks()


def test_the_csv_parses_into_typed_rows_with_unique_ids() -> None:
    raw = rows()
    assert len(PEAKS) == len(raw) >= 12
    ids = [p.id for p in PEAKS]
    assert len(set(ids)) == len(ids)
    assert {p.project for p in PEAKS} >= {"torchtitan", "torchtune", "litgpt", "modded-nanogpt"}
    for p in PEAKS:
        assert p.figure_kind in ("reserved", "allocated", "active"), p.id
        assert p.gpus >= p.data_parallel * p.tensor_parallel, p.id
        assert p.setup.strip(), p.id


def test_every_row_cites_a_source_at_a_pinned_commit() -> None:
    for p in PEAKS:
        assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+/blob/[0-9a-f]{40}/\S+",
                            p.source_url), p.id
        # the file the URL points to is named in source_file too
        assert p.source_url.rsplit("/", 1)[1] in p.source_file, p.id


@pytest.mark.parametrize(("published", "expected"), [
    # 82.4 x 2^30 = 88,476,326,297.6 bytes, rounded to the nearest byte
    ("82.4 GiB", 88_476_326_298),
    # litgpt prints max_memory_allocated() / 1e9
    ("14.10 GB", 14_100_000_000),
    # 29,898 x 1,048,576 = 29,898,000,000 + 29,898 x 48,576 = 31,350,325,248
    ("29898 MiB", 31_350_325_248),
])
def test_figures_convert_to_bytes_by_their_printed_unit(published: str, expected: int) -> None:
    assert figure_bytes(published) == expected


def test_the_csv_bytes_match_the_published_figures() -> None:
    for p in PEAKS:
        assert p.figure_bytes == figure_bytes(p.figure_published), p.id


def test_an_unknown_unit_is_refused() -> None:
    with pytest.raises(ValueError, match="GiB"):
        figure_bytes("82.4 TB")


def test_a_reserved_figure_is_compared_with_total_and_an_allocated_one_with_tensor_peak() -> None:
    reserved = next(p for p in PEAKS if p.figure_kind == "reserved")
    allocated = next(p for p in PEAKS if p.figure_kind == "allocated")
    m = predict(reserved)
    assert compared_bytes(reserved, m) == m.total
    m = predict(allocated)
    assert compared_bytes(allocated, m) == m.tensor_peak


def test_the_page_is_what_the_benchmark_writes_now() -> None:
    # regenerate with: python -m benchmarks.published_peaks --write
    assert DOC_PATH.read_text(encoding="utf-8") == render(PEAKS)


def test_the_page_is_in_the_validation_nav_and_the_citations_sit_beside_the_csv() -> None:
    assert "validation/published-peaks.md" in (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    citations = CSV_PATH.with_suffix(".md").read_text(encoding="utf-8")
    for project in ("torchtitan", "torchtune", "litgpt", "modded-nanogpt"):
        assert project in citations


def test_issue17_options_use_the_contracts_names_and_values() -> None:
    # issue 17: implementation= "nanogpt" | "hf" | "torchtitan" | "torchtune" | "litgpt",
    # compile=, loss= "standard" | "chunked", optimizer_in_backward=, activation_offload=
    for p in PEAKS:
        for name, value in p.issue17_options.items():
            assert value in ISSUE17_OPTIONS[name], (p.id, name, value)
    assert {p.issue17_options.get("implementation") for p in PEAKS} >= {
        "torchtitan", "torchtune", "litgpt"}


def test_an_issue17_option_is_passed_once_training_memory_takes_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    peak = next(p for p in PEAKS if p.id == "tune-3b-compile")
    seen: dict[str, object] = {}

    def training_memory(cfg: object, *, micro_batch_size: int, seq_len: int,
                        compile: bool = False, **rest: object) -> object:
        seen.update(rest, compile=compile, micro_batch_size=micro_batch_size)
        return "breakdown"

    monkeypatch.setattr(pp, "training_memory", training_memory)
    # the stand-in takes compile= but not implementation=: only compile is passed
    assert applied_options(peak) == {"compile": True}
    assert pp.predict(peak) == "breakdown"
    assert seen["compile"] is True and "implementation" not in seen
    assert seen["micro_batch_size"] == 2

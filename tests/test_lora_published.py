"""Published LoRA / QLoRA peaks (issue 19): the rows parse and cite pinned sources, and the page
that sets them beside scaleplan's predictions is the one the benchmark writes now.

The rows are evidence, not fitted; the LoRA rows (peaks dominated by the bf16 base) are checked
to stay within issue 19's 10%, and the QLoRA rows are recorded as the misses they are (see
scaleplan/data/published_lora.md)."""

from __future__ import annotations

import re

from benchmarks.published_lora import DOC_PATH, WITHIN, load_rows, predict, render
from benchmarks.published_peaks import figure_bytes

ROWS = load_rows()


def test_rows_cite_a_pinned_source_and_their_bytes() -> None:
    assert len(ROWS) >= 7 and len({r["id"] for r in ROWS}) == len(ROWS)
    for row in ROWS:
        assert re.search(r"/blob/[0-9a-f]{40}/", row["source_url"]), row["id"]
        assert figure_bytes(row["figure_published"]) == int(row["figure_bytes"]), row["id"]
        assert row["figure_kind"] == "allocated" and row["unmodelled"], row["id"]


def test_lora_rows_within_ten_percent() -> None:
    for row in ROWS:
        if row["base_weights"] != "bf16":
            continue
        error = predict(row).tensor_peak / int(row["figure_bytes"]) - 1
        assert abs(error) <= WITHIN, (row["id"], error)


def test_the_page_is_current() -> None:
    assert DOC_PATH.read_text(encoding="utf-8") == render(ROWS), (
        "run: python -m benchmarks.published_lora --write")

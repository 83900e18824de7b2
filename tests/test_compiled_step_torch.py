"""The allocator-event harness (`scaleplan.reference.compiled_step`) measured live on CPU.

One eager step under the dispatch-level tracker and the profiler at once (the method's check),
and one compiled step of the reference GPT re-measured against the committed
tests/data/compiled_step_peaks.json row. Compiling needs inductor's C++ toolchain; without a
compiler the compiled test skips.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from scaleplan.model.config import GPTConfig

DATA = json.loads((Path(__file__).parent / "data" / "compiled_step_peaks.json").read_text())
CFG = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=320)


@pytest.mark.torch
def test_allocator_events_equal_the_tracker_on_an_eager_step() -> None:
    pytest.importorskip("torch")
    from scaleplan.reference.compiled_step import check_against_tracker

    r = check_against_tracker(CFG, micro_batch_size=2, seq_len=16, precision="32-true")
    assert r["profiler"] == r["tracker"] > 0


@pytest.mark.torch
@pytest.mark.slow
def test_a_compiled_step_re_measures_as_committed() -> None:
    torch = pytest.importorskip("torch")
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("inductor's CPU backend needs a C++ compiler")
    if DATA["torch"] != torch.__version__:
        pytest.skip(f"committed with torch {DATA['torch']}")
    from scaleplan.reference.compiled_step import measure_step, warmed_step

    step = warmed_step(CFG, micro_batch_size=2, seq_len=24, precision="32-true", compile=True)
    fresh = measure_step(step, accumulating=False)
    row = next(c for c in DATA["cases"] if c["implementation"] == "nanogpt" and c["compile"]
               and c["precision"] == "32-true" and c["dropout"] == 0.0
               and c["micro_batch_size"] == 2 and not c["gradient_accumulation"])
    assert fresh["peak"] == row["peak"] == 715784
    assert fresh["resident"] == row["resident"]
    # with every gradient resident, the compiled backward's new gradients come on top
    assert measure_step(step, accumulating=True)["peak"] == fresh["peak"]

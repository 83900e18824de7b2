"""What both fuzz targets share: run a target under atheris, seeding a corpus when none is given."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import atheris


def fuzz(test_one_input: Callable[[bytes], None], seeds: list[str]) -> None:
    """Fuzz ``test_one_input`` with libFuzzer's command line (``sys.argv``). With no corpus
    folder on the command line, one is made from ``seeds`` so the fuzzer starts past the
    format detection."""
    argv = sys.argv
    if not any(not a.startswith("-") for a in argv[1:]):
        corpus = Path(tempfile.mkdtemp(prefix="scaleplan-fuzz-"))
        for i, seed in enumerate(seeds):
            (corpus / f"seed{i}").write_bytes(seed.encode("utf-8"))
        argv = [*argv, str(corpus)]
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()

"""What the fuzz targets share: hostile seeds, and running a target under atheris with a corpus
seeded when none is given and a per-input time limit."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import atheris

#: Seconds one input may take before libFuzzer reports it as a hang (libFuzzer's own default is
#: 1,200 s, so a backtracking regex would stall a 30-s CI run instead of failing it).
INPUT_SECONDS = 5


def hostile(templates: list[str], *, lengths: tuple[int, ...] = (3_000, 16_000)) -> list[str]:
    """Seeds that make the slow kinds of bug one mutation away: each template's ``{digits}``
    filled with a long run of digits, and ``{open}``/``{close}`` with deep nesting.

    A regex that backtracks over digit runs ('# ' + '1' * 20_000 took 17 s) or a parser that
    recurses per bracket is found from these; libFuzzer's -max_len grows to the longest seed.

    >>> hostile(["x = {open}{digits}{close}"], lengths=(3,))
    ['x = ([111])']
    """
    seeds = []
    for n in lengths:
        digits = "1" * n
        depth = n // 3
        for template in templates:
            seeds.append(template.format(digits=digits, open="(" * depth + "[" * depth,
                                         close="]" * depth + ")" * depth))
    return seeds


def fuzz(test_one_input: Callable[[bytes], None], seeds: list[str]) -> None:
    """Fuzz ``test_one_input`` with libFuzzer's command line (``sys.argv``). With no corpus
    folder on the command line, one is made from ``seeds`` so the fuzzer starts past the
    format detection; without ``-timeout=`` an input over `INPUT_SECONDS` is a failure."""
    argv = sys.argv
    if not any(not a.startswith("-") for a in argv[1:]):
        corpus = Path(tempfile.mkdtemp(prefix="scaleplan-fuzz-"))
        for i, seed in enumerate(seeds):
            (corpus / f"seed{i}").write_bytes(seed.encode("utf-8"))
        argv = [*argv, str(corpus)]
    if not any(a.startswith("-timeout=") for a in argv[1:]):
        argv = [*argv, f"-timeout={INPUT_SECONDS}"]
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()

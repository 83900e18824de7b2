"""A time bound for tests of hangs: the body fails, rather than stalls CI, past its limit.

Imported by the robustness and fuzz tests (pytest puts this folder on ``sys.path``).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def within(seconds: float) -> Iterator[None]:
    """Raise ``AssertionError`` in the body once it has run ``seconds`` (wall clock, SIGALRM):
    a hang becomes a failing test."""
    def alarm(signum: int, frame: Any) -> None:
        raise AssertionError(f"still running after {seconds} s: a hang")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)

"""Timing that survives a noisy machine: interleaved rounds, medians, ratios.

Every comparison runs its contestants in turn inside each round (A, B, A, B, ...), so a burst of
load from elsewhere hits both; the figure reported is the median over rounds.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["import_profile", "import_times", "interleaved"]


def interleaved(fns: dict[str, Callable[[], Any]], *, rounds: int, number: int
                ) -> dict[str, dict[str, float]]:
    """Seconds per call of each function: median and min over ``rounds`` interleaved rounds of
    ``number`` calls each (after one warm-up call)."""
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(number):
                fn()
            samples[name].append((time.perf_counter() - start) / number)
    return {name: {"median_s": statistics.median(v), "min_s": min(v)}
            for name, v in samples.items()}


def _env() -> dict[str, str]:
    # Bytecode caching on, as for an installed package (pip compiles .pyc files); a
    # PYTHONDONTWRITEBYTECODE environment would otherwise recompile scaleplan on every import
    # while numpy and pydantic load their cached bytecode.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def import_times(snippets: dict[str, str], *, rounds: int) -> dict[str, dict[str, float]]:
    """Wall seconds of ``python -c SNIPPET`` in fresh interpreters, interleaved by round."""
    env = _env()
    for code in snippets.values():  # warm the bytecode caches
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
    samples: dict[str, list[float]] = {name: [] for name in snippets}
    for _ in range(rounds):
        for name, code in snippets.items():
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], env=env, check=True)
            samples[name].append(time.perf_counter() - start)
    return {name: {"median_s": statistics.median(v), "min_s": min(v)}
            for name, v in samples.items()}


_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)")


def import_profile(module: str, *, rounds: int, before: str = "") -> dict[str, Any]:
    """``python -X importtime``: the module's cumulative import time and the modules it pulls
    in with the largest self time (medians over rounds, microseconds)."""
    env = _env()
    code = f"{before}\nimport {module}" if before else f"import {module}"
    selfs: dict[str, list[int]] = {}
    cumulative: list[int] = []
    for _ in range(rounds):
        err = subprocess.run([sys.executable, "-X", "importtime", "-c", code], env=env,
                             capture_output=True, text=True, check=True).stderr
        for line in err.splitlines():
            m = _LINE.match(line)
            if not m:
                continue
            selfs.setdefault(m[4], []).append(int(m[1]))
            if m[4] == module:
                cumulative.append(int(m[2]))
    top = sorted(((statistics.median(v), k) for k, v in selfs.items() if len(v) == rounds),
                 reverse=True)[:15]
    own = sum(statistics.median(v) for k, v in selfs.items()
              if k.split(".")[0] == module.split(".")[0] and len(v) == rounds)
    return {"cumulative_us": statistics.median(cumulative), "own_modules_self_us": own,
            "top_self_us": {k: t for t, k in top}}

"""How fast `read_log` reads a large nanoGPT log, and how much memory it holds.

Writes a synthetic nanoGPT ``train.py`` log (its exact print formats; one ``iter`` line a step,
a ``step`` evaluation line every 250 steps) of about ``--mb`` megabytes to a temporary folder,
reads it with `read_log`, and prints MB/s, the peak resident set size of the process and (in a
second read under `tracemalloc`) the peak of Python allocations, beside the bytes the records
alone take. Not a unit test: run it by hand,

    python -m benchmarks.bench_read_log --mb 1000 --no-tracemalloc

Issue 23's bar: a 1 GB nanoGPT log read in under 30 s with under 200 MB peak memory, and at least
50 MB/s. ``--compare`` also reads the file line by line (the fast path of
`scaleplan.diagnosis.fastpath` off) and prints the ratio, measured side by side. (Issue 20: the
reader before it held ~29x the file, 2.8 GB for 100 MB, and took 50 s.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

__all__ = ["main", "write_nanogpt_log"]

EVAL_EVERY = 250


def write_nanogpt_log(path: Path, megabytes: float) -> int:
    """A nanoGPT log of about ``megabytes`` MB at ``path``; the number of ``iter`` lines."""
    target = int(megabytes * 1e6)
    size = 0
    steps = 0
    with path.open("w", encoding="utf-8") as f:
        head = ("tokens per iteration will be: 491,520\nInitializing a new model from scratch\n"
                "number of parameters: 123.59M\nusing fused AdamW: True\n"
                "compiling the model... (takes a ~minute)\n")
        f.write(head)
        size += len(head)
        while size < target:
            lines = []
            for _ in range(1000):
                loss = 10.9 * (1 + steps) ** -0.08
                if steps % EVAL_EVERY == 0:
                    lines.append(f"step {steps}: train loss {loss:.4f}, val loss "
                                 f"{loss + 0.01:.4f}\n")
                mfu = -100.0 if steps < 5 else 40.0 + (steps % 7) * 0.01
                lines.append(f"iter {steps}: loss {loss:.4f}, time {95.0 + steps % 13:.2f}ms, "
                             f"mfu {mfu:.2f}%\n")
                steps += 1
            block = "".join(lines)
            f.write(block)
            size += len(block)
    return steps


def _peak_rss_bytes() -> int | None:
    """The process's peak resident set size, where the platform tells it."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def _line_by_line(path: Path, fast_seconds: float) -> dict[str, object]:
    """The same file read with the fast path off: its time and the ratio to the fast read."""
    from scaleplan.diagnosis import blocks
    from scaleplan.diagnosis.logs import read_log

    saved = blocks.iter_lines
    blocks.iter_lines = lambda block: None
    try:
        start = time.perf_counter()
        read_log(path)
        seconds = time.perf_counter() - start
    finally:
        blocks.iter_lines = saved
    return {"line_by_line_seconds": round(seconds, 3),
            "fast_path_speed_up": round(seconds / fast_seconds, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=100.0, help="log size in MB (default 100)")
    parser.add_argument("--no-tracemalloc", action="store_true",
                        help="skip the second read under tracemalloc (it is ~2x slower)")
    parser.add_argument("--compare", action="store_true",
                        help="also read it line by line (no fast path) and print the ratio")
    args = parser.parse_args(argv)

    from scaleplan.diagnosis.logs import read_log

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "train.log"
        write_nanogpt_log(path, args.mb)
        size = path.stat().st_size
        rss_before = _peak_rss_bytes()
        start = time.perf_counter()
        log = read_log(path)
        seconds = time.perf_counter() - start
        rss_after = _peak_rss_bytes()
        n_records = len(log.records)
        del log
        result: dict[str, object] = {
            "file_bytes": size, "records": n_records, "seconds": round(seconds, 3),
            "mb_per_second": round(size / 1e6 / seconds, 1),
            "peak_rss_bytes_before": rss_before, "peak_rss_bytes_after": rss_after,
        }
        if args.compare:
            result.update(_line_by_line(path, seconds))
        if not args.no_tracemalloc:
            tracemalloc.start()
            log = read_log(path)
            held, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            result.update(tracemalloc_peak_bytes=peak, tracemalloc_held_bytes=held,
                          held_bytes_per_record=round(held / max(len(log.records), 1), 1),
                          peak_to_file_ratio=round(peak / size, 2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())

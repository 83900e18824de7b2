"""How long `plan()` takes beside llm-analysis's ``train()``, and how long a cold CLI call takes.

Both tools answer the same question: GPT-2 small (12 layers, 768 wide, 12 heads, 1024 tokens)
trained in bf16 autocast with AdamW on one A100 SXM 80GB, 8 sequences of 1024 tokens per
micro-batch, 8 micro-batches per step, 2.6B tokens in all, flash attention, no checkpointing.
llm-analysis is called through its own entry point ``llm_analysis.analysis.train`` (which looks
up its bundled ``gpt2`` and ``a100-sxm-80gb`` configs, as a user would) at 50% FLOPs efficiency;
scaleplan through `scaleplan.plan` with the same step and budget. scaleplan does more (it
searches the micro-batch that fits, picks precision and checks the budget), so the comparison
is of the answer a user waits for, not of equal work.

Each is warmed up, then timed in alternating rounds in the same process (median of the rounds,
each round the mean of ``--inner`` calls), and the ratio scaleplan / llm-analysis is printed.
The cold CLI is timed as the wall time of fresh ``python -m scaleplan plan`` processes (the
README's default question, GPT-2 small on an RTX 4070; median and min of ``--cold`` runs), in
rounds interleaved with ``python -c pass`` (the interpreter's own floor) and ``python -c "import
scaleplan"`` (the lazy package alone), so the ratios hold on a loaded machine; each ``--baseline
DIR`` (repeatable) adds that checkout's ``scaleplan plan`` to the same rounds. Bytecode caching
is on, as for an installed package. ``--importtime`` also prints the ten slowest imports of one
cold run (``python -X importtime``).

Not a unit test (CI does not run it): run it by hand from the repository root,

    python -m benchmarks.bench_plan_latency

It needs llm-analysis (``pip install llm-analysis``; its transformers and huggingface-hub
dependencies are not needed here, so ``pip install --no-deps llm-analysis "fire<0.6"`` will do);
without it the side-by-side part is skipped with a message and only the cold CLI is timed.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["cold_cli", "main", "side_by_side", "time_side_by_side"]

MICRO_BATCH = 8
SEQ_LEN = 1024
GRAD_ACCUM = 8
TOTAL_TOKENS = 2_600_000_000
FLOPS_EFFICIENCY = 0.5  # the same MFU for both time estimates
COLD_BAR_S = 0.3  # issue 21: a cold `scaleplan plan` under 0.3 s


FRESH_CONFIGS = 200  # more than scaleplan.model.shapes.CACHED_CONFIGS: every call a miss


def scaleplan_call(*, fresh: bool = False) -> Callable[[], Any]:
    """scaleplan's answer to the question, as a call; with ``fresh``, each call asks about a
    config its caches have not seen (GPT-2 with another vocabulary size, in turn)."""
    import itertools

    from scaleplan import GPTConfig, plan

    gpt2 = GPTConfig.preset("gpt2")
    fields = {name: getattr(gpt2, name) for name in GPTConfig.model_fields}
    configs = itertools.cycle([GPTConfig(**{**fields, "vocab_size": gpt2.vocab_size + i})
                               for i in range(FRESH_CONFIGS if fresh else 1)])

    def call() -> Any:
        return plan(next(configs), "A100 SXM 80GB",
                    tokens_per_step=MICRO_BATCH * SEQ_LEN * GRAD_ACCUM, total_tokens=TOTAL_TOKENS,
                    precision="bf16-mixed", seq_len=SEQ_LEN, mfu=FLOPS_EFFICIENCY,
                    optimizer="adamw", attention="flash")

    return call


def llm_analysis_call() -> Callable[[], Any] | None:
    """llm-analysis's answer to the question, as a call; None when it is not installed."""
    try:
        with warnings.catch_warnings():  # fire 0.5 imports the deprecated `pipes` module
            warnings.simplefilter("ignore", DeprecationWarning)
            from llm_analysis.analysis import train
    except ImportError:
        return None
    from llm_analysis.logger import logger

    logger.setLevel(logging.ERROR)

    def call() -> Any:
        return train(model_name="gpt2", gpu_name="a100-sxm-80gb", dtype_name="w16a16e16",
                     log_level="ERROR", batch_size_per_gpu=MICRO_BATCH,
                     gradient_accumulation_steps=GRAD_ACCUM, seq_len=SEQ_LEN,
                     total_num_tokens=TOTAL_TOKENS, flash_attn=True,
                     flops_efficiency=FLOPS_EFFICIENCY)

    return call


def _round(call: Callable[[], Any], inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        call()
    return (time.perf_counter() - start) / inner


def time_side_by_side(calls: dict[str, Callable[[], Any]], *, rounds: int, inner: int,
                      warmup: int = 20) -> dict[str, float]:
    """Median seconds per call of each, timed in alternating rounds after ``warmup`` calls."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            times[name].append(_round(call, inner))
    return {name: statistics.median(t) for name, t in times.items()}


#: The cold commands, each a fresh interpreter: the floor (``python -c pass``), ``import
#: scaleplan`` (the lazy package alone) and the README's default ``scaleplan plan`` (GPT-2 small
#: on an RTX 4070), the command issue 21's bar is about.
COLD_COMMANDS: dict[str, list[str]] = {
    "python -c pass": ["-c", "pass"],
    "import scaleplan": ["-c", "import scaleplan"],
    "scaleplan plan": ["-m", "scaleplan", "plan"],
}


def _env(tree: str) -> dict[str, str]:
    """The environment of a cold run of ``tree``: bytecode caching on, as for an installed
    package (pip writes .pyc files; under PYTHONDONTWRITEBYTECODE every run would recompile
    scaleplan while numpy and pydantic load their cached bytecode)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = tree
    return env


def _run(argv: list[str], tree: str) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of ``argv`` run in ``tree`` (``-m`` puts
    the working folder first on the path, so the checkout run is the one it starts in). CPU time
    is what the process itself spent, much less sensitive than wall time to a loaded machine."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=_env(tree), cwd=tree, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cold_cli(runs: int, baselines: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Wall seconds (median and min over ``runs``) and median CPU seconds of each of
    `COLD_COMMANDS` in fresh processes, all interleaved in each round so that load from
    elsewhere hits each alike (and, for each checkout in ``baselines``, its ``scaleplan plan``
    too)."""
    commands = {name: ([sys.executable, *argv], os.getcwd())
                for name, argv in COLD_COMMANDS.items()}
    for tree in baselines or []:
        commands[f"plan in {tree}"] = ([sys.executable, *COLD_COMMANDS["scaleplan plan"]], tree)
    for argv, tree in commands.values():  # the first run fills the OS file cache and the .pyc
        _run(argv, tree)
    walls: dict[str, list[float]] = {name: [] for name in commands}
    cpus: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, (argv, tree) in commands.items():
            wall, cpu = _run(argv, tree)
            walls[name].append(wall)
            cpus[name].append(cpu)
    return {name: {"median_s": statistics.median(walls[name]), "min_s": min(walls[name]),
                   "cpu_median_s": statistics.median(cpus[name])} for name in commands}


def slowest_imports(top: int = 10) -> list[tuple[int, str]]:
    """The ``top`` imports of one cold ``scaleplan plan`` by cumulative microseconds
    (``-X importtime``)."""
    done = subprocess.run([sys.executable, "-X", "importtime", *COLD_COMMANDS["scaleplan plan"]],
                          env=_env(os.getcwd()), capture_output=True, text=True, check=True)
    rows = []
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|(\s*)(\S+)$", line)
        if match and len(match.group(2)) <= 3:  # top-level imports only
            rows.append((int(match.group(1)), match.group(3)))
    return sorted(rows, reverse=True)[:top]


def side_by_side(rounds: int, inner: int, *, fresh: bool) -> None:
    """Print `plan()`'s latency beside llm-analysis's (when installed), and their ratio."""
    calls = {"scaleplan.plan": scaleplan_call()}
    if fresh:
        calls["plan, new config"] = scaleplan_call(fresh=True)
    theirs = llm_analysis_call()
    if theirs is None:
        print("llm-analysis is not installed (pip install llm-analysis): side by side skipped")
    else:
        calls["llm_analysis.train"] = theirs
    medians = time_side_by_side(calls, rounds=rounds, inner=inner)
    for name, seconds in medians.items():
        print(f"{name:>20}: {seconds * 1e3:7.3f} ms per call (median of {rounds} rounds "
              f"of {inner})")
    if theirs is not None:
        for name in calls:
            if name != "llm_analysis.train":
                ratio = medians[name] / medians["llm_analysis.train"]
                print(f"{'ratio':>20}: {name} / llm-analysis = {ratio:.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds (median)")
    parser.add_argument("--inner", type=int, default=50, help="calls per round")
    parser.add_argument("--cold", type=int, default=15, help="fresh processes of each cold "
                        "command (median)")
    parser.add_argument("--fresh", action="store_true", help="also time plan() on a config "
                        "not seen before at each call (its per-config caches missing)")
    parser.add_argument("--importtime", action="store_true", help="the slowest imports")
    parser.add_argument("--baseline", metavar="DIR", action="append", help="another checkout "
                        "(e.g. of main, from `git archive`) whose cold `scaleplan plan` is timed "
                        "interleaved with this one's (repeat for more)")
    parser.add_argument("--cold-only", action="store_true", help="time the cold commands only "
                        "(no plan() side by side)")
    args = parser.parse_args(argv)

    if not args.cold_only:
        side_by_side(args.rounds, args.inner, fresh=args.fresh)
    cold = cold_cli(args.cold, args.baseline)
    floor = cold["python -c pass"]["median_s"]
    for name, t in cold.items():
        print(f"{name:>24}: {t['median_s']:.3f} s wall (median of {args.cold}; min "
              f"{t['min_s']:.3f}; {t['median_s'] / floor:4.1f}x python -c pass), "
              f"{t['cpu_median_s']:.3f} s CPU")
    plan_s = cold["scaleplan plan"]["median_s"]
    verdict = "under" if plan_s < COLD_BAR_S else "over"
    print(f"{'bar':>24}: cold `scaleplan plan` {verdict} {COLD_BAR_S} s; {plan_s - floor:.3f} s "
          "beyond the interpreter's own start")
    if args.importtime:
        print("slowest top-level imports of a cold `scaleplan plan` (cumulative us):")
        for us, name in slowest_imports():
            print(f"  {us:>8}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

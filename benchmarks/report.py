"""The benchmark result as markdown: ratios first, then the accuracy tables."""

from __future__ import annotations

from typing import Any

__all__ = ["markdown"]

MIB = 2**20


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _ms(x: float) -> str:
    return f"{x * 1e3:.3f} ms"


def _verdict(r: dict[str, Any]) -> list[str]:
    v = r["verdict"]
    yes = {True: "met", False: "**missed**"}
    lines = ["## Targets", "", "| target | measured | verdict |", "|---|---|---|",
             f"| `import scaleplan` <= {v['import']['target']}x `import numpy, pydantic` | "
             f"{v['import']['ratio']:.2f}x ({_ms(v['import']['seconds'])}) | "
             f"{yes[v['import']['met']]} |"]
    if "plan" in v:
        lines.append(f"| `plan()` <= llm-analysis `train()`, same question | "
                     f"{v['plan']['ratio']:.2f}x | {yes[v['plan']['met']]} |")
    else:
        lines.append("| `plan()` <= llm-analysis `train()` | llm-analysis not installed | "
                     "skipped |")
    lines.append(f"| sweep >= 1e6 configs/s | {v['sweep']['configs_per_s']:.3g} configs/s | "
                 f"{yes[v['sweep']['met']]} |")
    return [*lines, ""]


def _imports(r: dict[str, Any]) -> list[str]:
    im = r["imports"]
    lines = ["## Import time", "",
             f"Fresh interpreters, {im['rounds']} interleaved rounds, median wall time; ratio "
             "to `import numpy, pydantic` (pydantic's import is lazy: the third row adds "
             "defining one model, the floor of any library built on pydantic models). "
             "`scaleplan/__init__.py` loads its names on first use, so the last two rows show "
             "what the first `GPTConfig` and the planner (with everything it uses) cost on top "
             "of the bare import.", "",
             "| import | median | ratio | ratio, interpreter start-up subtracted |",
             "|---|---|---|---|"]
    for name, t in im["seconds"].items():
        lines.append(f"| {name} | {_ms(t['median_s'])} | "
                     f"{im['ratio_to_numpy_pydantic'][name]:.2f}x | "
                     f"{im['ratio_to_numpy_pydantic_minus_startup'][name]:.2f}x |")
    prof = im["importtime"]
    lines += ["", f"`python -X importtime -c 'import scaleplan'`: cumulative "
              f"{prof['cumulative_us'] / 1e3:.1f} ms, of which scaleplan's own modules "
              f"(self time) {prof['own_modules_self_us'] / 1e3:.1f} ms. Largest self times:", "",
              "| module | self ms |", "|---|---|"]
    lines += [f"| {k} | {v / 1e3:.1f} |" for k, v in prof["top_self_us"].items()]
    return [*lines, ""]


def _latency(r: dict[str, Any]) -> list[str]:
    lat = r["latency"]
    lines = ["## Latency (seed case: GPT-2 on an RTX 4070, 524,288 tokens per step)", "",
             "| call | median | min |", "|---|---|---|"]
    for name, t in lat["seconds_per_call"].items():
        lines.append(f"| {name} | {_ms(t['median_s'])} | {_ms(t['min_s'])} |")
    if "plan_over_llm_analysis_train" in lat:
        lines += ["", f"`plan()` / llm-analysis `train()`: "
                  f"**{lat['plan_over_llm_analysis_train']:.2f}x**."]
    lines += ["", "Answers to the same question:", ""]
    lines += [f"- {k}: micro-batch {a['micro_batch_size']}, grad-accum {a['grad_accum_steps']}"
              for k, a in lat["answers"].items()]
    lines += [f"- skipped: {s}" for s in lat["skipped"]]
    return [*lines, ""]


def _sweep(r: dict[str, Any]) -> list[str]:
    sw = r["sweep"]
    lines = ["## Sweep throughput", "", f"Vectorised: {sw['what']}.", "",
             "| configs | median | configs/s |", "|---|---|---|"]
    lines += [f"| {v['configs']:,} | {_ms(v['median_s'])} | {v['configs_per_s']:.3g} |"
              for v in sw["runs"].values()]
    return [*lines, ""]


def _flops(r: dict[str, Any]) -> list[str]:
    fc = r["flop_counter"]
    if "skipped" in fc:
        return ["## FLOPs vs FlopCounterMode", "", f"Skipped: {fc['skipped']}.", ""]
    lines = ["## FLOPs vs FlopCounterMode (meta/fake tensors)", "",
             "| config | step_flops | FlopCounterMode | exact | step_flops faster by |",
             "|---|---|---|---|---|"]
    lines += [f"| {k} | {v['step_flops']:.6g} | {v['FlopCounterMode']:.6g} | {v['exact']} | "
              f"{v['speedup']:.0f}x |" for k, v in fc.items()]
    return [*lines, ""]


def _accuracy(r: dict[str, Any]) -> list[str]:
    acc = r["accuracy"]
    if "skipped" in acc and "rows" not in acc:
        return ["## Accuracy", "", f"Skipped: {acc['skipped']}.", ""]
    lines = ["## Accuracy against the reference harness", "",
             f"{len(acc['rows'])} grid points measured by `scaleplan.reference.measure` (CPU; "
             "the published sizes under FakeTensorMode). |error| = |predicted / measured - 1|; "
             "median / max over the points a predictor covers (n).", "",
             "| predictor | params | FLOPs | saved activations | peak |", "|---|---|---|---|---|"]
    for source, per in acc["summary"].items():
        cells = []
        for q in ("params", "flops", "saved", "peak"):
            e = per.get(q)
            cells.append("n/a" if e is None else
                         f"{_pct(e['median_abs_error'])} / {_pct(e['max_abs_error'])} "
                         f"(n={e['n']})")
        lines.append(f"| {source} | " + " | ".join(cells) + " |")
    lines += [f"- skipped: {s}" for s in acc["skipped"]]
    lines += ["", "### What each peer leaves out", ""]
    lines += [f"- **{peer}**: " + "; ".join(m) for peer, m in acc["misses"].items()]
    sources = list(acc["summary"])
    lines += ["", "### Every point: peak bytes, predicted / measured", "",
              "| config | precision | attn | drop | ckpt | measured peak MiB | "
              + " | ".join(sources) + " |", "|" + "---|" * (6 + len(sources))]
    for row in acc["rows"]:
        peak = row["measured"]["peak"]
        ratios = []
        for s in sources:
            v = row["predicted"].get(s, {}).get("peak")
            ratios.append("n/a" if v is None else f"{v / peak:.3f}")
        ckpt = "full" if row["checkpointing"] else "-"
        lines.append(f"| {row['config']} | {row['precision']} | {row['attention']} | "
                     f"{row['dropout']} | {ckpt} | {peak / MIB:,.2f} | " + " | ".join(ratios)
                     + " |")
    return [*lines, ""]


def markdown(r: dict[str, Any]) -> str:
    """The whole report."""
    m = r["machine"]
    head = ["# scaleplan benchmarks" + (" (quick mode)" if r["quick"] else ""), "",
            f"Run {m['date']} on {m['nproc']} x {m['cpu']}; Python {m['python']}, numpy "
            f"{m['numpy']}, pydantic {m['pydantic']}, torch {m['torch']}, llm-analysis "
            f"{m['llm_analysis']}. Regenerate with `python -m benchmarks.run --out DIR`.", ""]
    return "\n".join([*head, *_verdict(r), *_imports(r), *_latency(r), *_sweep(r), *_flops(r),
                      *_accuracy(r)])

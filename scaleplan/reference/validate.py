"""Measured vs predicted over a grid of configs: ``python -m scaleplan.reference.validate``.

Writes ``validation.md`` and ``validation.json`` to ``--out``. Every quantity that scaleplan's
analytic side can predict is compared; predictors are plugged in at one place, `predictors`,
and appear as soon as their module (``scaleplan.compute.flops``, ``scaleplan.memory.training``) is
importable.
Runs unchanged on a GPU machine (``--device cuda``), where the allocator's own peak is added,
and writes ``memory-report.md`` / ``memory-report.json`` (`scaleplan.reference.device_report`:
max allocated and reserved per case, the CUDA context, the allocator slack, beside
``training_memory``); ``--device cuda --quick`` is the short GPU check (docs/validation/gpu.md).
Without CUDA, ``--device cuda`` exits with status 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from scaleplan.model.config import GPTConfig
from scaleplan.model.params import count_params
from scaleplan.reference.device_report import context_probe, memory_report, report_markdown
from scaleplan.reference.measure import StepMeasurement, measure

__all__ = ["ARCH_CONFIGS", "Predictor", "architecture_grid", "grid", "main", "predictors",
           "summary", "validate"]

Predictor = Callable[[StepMeasurement], "dict[str, float]"]
"""Maps a measurement to predicted values, keyed by the measured field they predict."""

MIB = 2**20

# Tiny members of each family: fast on 2 CPU cores, yet every option is exercised.
GRID_CONFIGS: dict[str, GPTConfig] = {name: GPTConfig.model_validate(fields) for name, fields in {
    "gpt2-tiny": {"n_layer": 2, "n_head": 4, "n_embd": 64, "block_size": 64, "vocab_size": 256},
    "gpt2-odd": {"n_layer": 3, "n_head": 3, "n_embd": 20, "head_dim": 6, "block_size": 40,
                 "vocab_size": 97, "bias": False},
    "llama-tiny": {"n_layer": 2, "n_head": 4, "n_kv_head": 2, "n_embd": 64, "block_size": 64,
                   "vocab_size": 256, "bias": False, "mlp": "swiglu", "mlp_hidden": 176,
                   "norm": "rmsnorm", "position": "rope", "tie_embeddings": False},
    "mqa-geglu": {"n_layer": 2, "n_head": 4, "n_kv_head": 1, "n_embd": 32, "block_size": 32,
                  "vocab_size": 101, "mlp": "geglu", "mlp_hidden": 80, "position": "none"},
}.items()}
# The architecture options of issue 18, one tiny member each (Hugging Face model types in the
# names): MoE (balanced routing), MLA, sliding windows, sandwich/post/parallel norms, QK-norms,
# partial rotary, ALiBi, soft-capping, OPT's projections, affine-less norms.
_TINY = {"n_layer": 2, "n_head": 4, "n_embd": 64, "block_size": 64, "vocab_size": 256}
_LLAMA = {"bias": False, "mlp": "swiglu", "norm": "rmsnorm", "position": "rope"}
ARCH_CONFIGS: dict[str, GPTConfig] = {name: GPTConfig.model_validate({**_TINY, **fields})
                                      for name, fields in {
    "mixtral-tiny": {**_LLAMA, "n_kv_head": 2, "tie_embeddings": False,
                     "moe": {"n_experts": 4, "top_k": 2, "expert_hidden": 96}},
    "deepseek-tiny": {**_LLAMA, "n_layer": 3, "mlp_hidden": 160, "tie_embeddings": False,
                      "mla": {"q_lora_rank": 32, "kv_lora_rank": 24, "qk_nope_head_dim": 16,
                              "qk_rope_head_dim": 8, "v_head_dim": 16},
                      "moe": {"n_experts": 8, "top_k": 2, "expert_hidden": 32,
                              "n_shared_experts": 1, "n_dense_layers": 1}},
    "mistral-window": {**_LLAMA, "n_kv_head": 1, "sliding_window": 8},
    "gemma2-tiny": {**_LLAMA, "mlp": "geglu", "norm_position": "sandwich", "n_layer": 4,
                    "sliding_window": 8, "sliding_window_layers": 2, "attn_softcap": 50.0,
                    "final_softcap": 30.0, "n_kv_head": 2},
    "qwen3-tiny": {**_LLAMA, "qk_norm": "head", "n_kv_head": 2},
    "olmo2-tiny": {**_LLAMA, "qk_norm": "full", "norm_position": "post"},
    "gptj-tiny": {"parallel": "shared_norm", "position": "rope", "rotary_fraction": 0.25,
                  "tie_embeddings": False, "lm_head_bias": True},
    "stablelm-tiny": {"parallel": "separate_norms", "position": "rope", "rotary_fraction": 0.5,
                      "qk_norm": "per_head", "norm_bias": False},
    "opt-350m-tiny": {"embed_dim": 32, "position_offset": 2, "norm_position": "post",
                      "final_norm": False, "mlp": "relu"},
    "bloom-tiny": {"position": "alibi", "embedding_norm": True},
    "olmo-tiny": {**_LLAMA, "norm": "layernorm", "norm_affine": False},
}.items()}
PRECISION_GRID = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "bf16-fp32-master")
QUICK_COMBOS = ((0.0, "flash", "32-true"), (0.1, "flash", "bf16-mixed"),
                (0.0, "eager", "bf16-mixed"), (0.1, "eager", "32-true"))


def grid(*, quick: bool, device: str, architectures: bool = True
         ) -> Iterator[tuple[str, GPTConfig, dict[str, Any]]]:
    """(label, config, measure() keywords) for every point of the grid: the GPT-2 and Llama
    families' (every precision, both attention kinds, dropout, checkpointing), then two points
    for each architecture of `ARCH_CONFIGS` unless ``architectures`` is False.

    >>> len(list(grid(quick=True, device="cpu")))
    8
    >>> len(list(grid(quick=False, device="cpu"))) - len(list(grid(quick=False, device="cpu",
    ...                                                             architectures=False)))
    22
    """
    # The last micro-batch of gradient accumulation: gradients resident, the worst step.
    shape = {"micro_batch_size": 2, "seq_len": 32, "accumulating": True}
    if quick:  # each config with each dropout, attention kind and precision once
        for name in ("gpt2-tiny", "llama-tiny"):
            for dropout, attention, precision in QUICK_COMBOS:
                yield name, GRID_CONFIGS[name].replace(dropout=dropout), {
                    **shape, "attention": attention, "precision": precision}
        return
    for name in GRID_CONFIGS:
        for dropout in (0.0, 0.1):
            cfg = GRID_CONFIGS[name].replace(dropout=dropout)
            for attention in ("flash", "eager"):
                for precision in PRECISION_GRID:
                    yield name, cfg, {**shape, "attention": attention, "precision": precision}
            yield name, cfg, {**shape, "checkpointing": True, "precision": "bf16-mixed"}
            if device == "cpu":
                yield name, cfg, {**shape, "cuda_semantics": True, "precision": "bf16-mixed"}
    # Published sizes: without allocating on CPU, for real on CUDA.
    big = {"gpt2": 8, "gpt2-xl": 1} if device == "cuda" else {"gpt2-xl": 1, "llama-2-7b": 1}
    for name, b in big.items():
        yield name, GPTConfig.preset(name), {"micro_batch_size": b, "seq_len": 1024,
                                             "accumulating": True,
                                             "precision": "bf16-mixed", "fake": device == "cpu"}
    if architectures:
        yield from architecture_grid()


def architecture_grid() -> Iterator[tuple[str, GPTConfig, dict[str, Any]]]:
    """Two points per architecture of `ARCH_CONFIGS`: fp32 without dropout (SDPA, or eager
    where soft-capping needs it), and bf16 autocast with dropout and eager attention.

    >>> sorted({kw["attention"] for _, _, kw in architecture_grid()})
    ['eager', 'flash']
    """
    shape = {"micro_batch_size": 2, "seq_len": 32, "accumulating": True}
    for name, cfg in ARCH_CONFIGS.items():
        attention = "eager" if cfg.attn_softcap is not None else "flash"
        yield name, cfg, {**shape, "attention": attention, "precision": "32-true"}
        yield name, cfg.replace(dropout=0.1), {**shape, "attention": "eager",
                                               "precision": "bf16-mixed"}


def _optional(module: str, name: str) -> Any:
    """``module.name`` if that module exists yet (other parts are written concurrently)."""
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


def predictors() -> dict[str, Predictor]:
    """The analytic predictions available now: the one place where formulas are plugged in.

    >>> "params" in predictors()
    True
    """
    found: dict[str, Predictor] = {
        "params": lambda m: {"params": float(count_params(m.config).total)},
    }
    step_flops = _optional("scaleplan.compute.flops", "step_flops")
    if step_flops is not None:
        def flops(m: StepMeasurement) -> dict[str, float]:
            if m.checkpointing:
                return {}
            s = step_flops(m.config, micro_batch_size=m.micro_batch_size, seq_len=m.seq_len,
                           causal=False)  # FlopCounterMode does not halve causal attention
            return {"flops_forward": float(s.forward), "flops": float(s.total)}

        found["flops"] = flops
    training_memory = _optional("scaleplan.memory.training", "training_memory")
    if training_memory is not None:
        def memory(m: StepMeasurement) -> dict[str, float]:
            device = m.device if not m.cuda_semantics else "cpu-cuda-semantics"
            p = training_memory(
                m.config, micro_batch_size=m.micro_batch_size, seq_len=m.seq_len,
                precision=m.precision, attention=m.attention, optimizer_impl=m.optimizer,
                checkpointing="full" if m.checkpointing else "none", device=device,
                hold_logits=m.hold_logits)  # the harness and the model agree on the logits
            out = {"saved_for_backward": float(p.saved_for_backward),
                   "peak_bytes": float(p.tensor_peak)}
            if not m.checkpointing:
                # Under full checkpointing the model's field holds every copy autocast's cache
                # keeps alive at the peak; the harness counts only copies something saved.
                out["autocast_weight_copies"] = float(p.autocast_weight_copies)
            return out

        found["memory"] = memory
    return found


def _measured(m: StepMeasurement, key: str) -> float:
    return float(getattr(m, key))


def validate(*, device: str = "cpu", quick: bool = False,
             only_architectures: bool = False) -> list[dict[str, Any]]:
    """Measure every grid point (or only `architecture_grid`'s) and compare with every
    available predictor."""
    plugged = predictors()
    rows: list[dict[str, Any]] = []
    points = architecture_grid() if only_architectures else grid(quick=quick, device=device)
    for name, cfg, kwargs in points:
        start = time.perf_counter()
        m = measure(cfg, device=device, **kwargs)
        row: dict[str, Any] = {"config": name, **kwargs, "dropout": cfg.dropout,
                               "seconds": round(time.perf_counter() - start, 2),
                               "measurement": json.loads(m.model_dump_json()), "compare": {}}
        for source, predict in plugged.items():
            try:
                predicted = predict(m)
            except Exception as exc:  # a predictor still being written must not stop the grid
                row["compare"][source] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            for key, value in predicted.items():
                actual = _measured(m, key)
                row["compare"][key] = {"measured": actual, "predicted": value,
                                       "ratio": value / actual if actual else None}
        rows.append(row)
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Where and when the grid ran, and the median / max relative error of each prediction."""
    import platform
    import statistics
    from datetime import date

    import torch

    errors: dict[str, list[float]] = {}
    for r in rows:
        for key, v in r["compare"].items():
            if v.get("ratio") is not None:
                errors.setdefault(key, []).append(abs(v["ratio"] - 1))
    return {"date": date.today().isoformat(), "machine": f"{platform.machine()}, "
            f"{platform.processor() or platform.system()}, {platform.system()} "
            f"{platform.release()}", "python": platform.python_version(),
            "torch": torch.__version__, "points": len(rows),
            "errors": {k: {"n": len(v), "median": statistics.median(v), "max": max(v)}
                       for k, v in errors.items()}}


def _markdown(rows: list[dict[str, Any]], device: str) -> str:
    info = summary(rows)
    lines = [f"# scaleplan validation ({device})", "",
             f"Run {info['date']} on {info['machine']}; Python {info['python']}, torch "
             f"{info['torch']}; {info['points']} grid points.", "",
             "| prediction | points | median error | max error |", "|---|---|---|---|",
             *[f"| {k} | {e['n']} | {e['median']:.4%} | {e['max']:.4%} |"
               for k, e in info["errors"].items()], "",
             "Measured by `scaleplan.reference.measure`; bytes in MiB, ratio = predicted / "
             "measured.", "",
             "| config | precision | attn | drop | ckpt | fake | params | GFLOP | saved MiB | "
             "peak MiB | predictions (ratio) |", "|" + "---|" * 11]
    for r in rows:
        m = r["measurement"]
        ratios = ", ".join(
            f"{k} {v['ratio']:.4f}" if "ratio" in v and v["ratio"] is not None
            else f"{k}: {v.get('error', 'n/a')[:60]}" for k, v in r["compare"].items())
        lines.append(
            f"| {r['config']} | {m['precision']} | {m['attention']} | {m['config']['dropout']} "
            f"| {m['checkpointing']} | {m['fake']} | {m['params']:,} | {m['flops'] / 1e9:.3f} "
            f"| {m['saved_for_backward'] / MIB:.3f} | {m['peak_bytes'] / MIB:.3f} | {ratios} |")
    notes = sorted({n for r in rows for n in r["measurement"]["notes"]})
    lines += ["", "## Device semantics seen", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m scaleplan.reference.validate",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="a small grid (seconds)")
    parser.add_argument("--architectures", action="store_true",
                        help="only the architecture points (MoE, MLA, windows, norms, ...)")
    parser.add_argument("--out", type=Path, default=Path("validation"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    context = None
    if args.device == "cuda":
        try:  # before any tensor: the context as a fresh process has it
            context = context_probe("cuda")
        except RuntimeError as exc:
            print(f"error: --device cuda: {exc}", file=sys.stderr)
            return 2
    rows = validate(device=args.device, quick=args.quick,
                    only_architectures=args.architectures)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "validation.json").write_text(json.dumps(rows, indent=1))
    (args.out / "validation.md").write_text(_markdown(rows, args.device))
    (args.out / "summary.json").write_text(json.dumps(summary(rows), indent=1))
    report = memory_report(rows, device=args.device, context=context)
    report["seconds"] = round(time.perf_counter() - start, 1)
    (args.out / "memory-report.json").write_text(json.dumps(report, indent=1))
    (args.out / "memory-report.md").write_text(report_markdown(report))
    print(f"{len(rows)} measurements written to {args.out}/validation.md, validation.json and "
          f"memory-report.md in {report['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Speed and accuracy of scaleplan against the tools people use today, side by side in one run.

    python -m benchmarks.run [--quick] [--out DIR]

Writes ``DIR/benchmarks.json`` and ``DIR/benchmarks.md``. Times are medians of interleaved
rounds and are reported as ratios to a peer measured in the same run, since absolute times
depend on the machine and its load. ``--quick`` runs in seconds (CI keeps the scripts working
with it); peers that are not installed (llm-analysis, torch) are skipped and listed as such.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks import accuracy
from benchmarks.peers import llm_analysis_available
from benchmarks.timing import import_profile, import_times, interleaved

__all__ = ["main", "run"]

SEED_TOKENS_PER_STEP = 524_288  # the seed case: ~0.5M tokens per optimizer step (2^19)
TARGETS = {"import_vs_numpy_pydantic": 1.3, "plan_vs_llm_analysis": 1.0,
           "sweep_configs_per_s": 1e6}


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def machine() -> dict[str, Any]:
    """Date, CPU and versions, so a result can be read against where it came from."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("numpy", "pydantic", "torch", "llm_analysis"):
        try:
            from importlib.metadata import version
            versions[name] = version(name.replace("_", "-"))
        except Exception:
            versions[name] = None
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "nproc": os.cpu_count(), "cpu": cpu, "platform": platform.platform(), **versions}


def imports(quick: bool) -> dict[str, Any]:
    """``import scaleplan`` against numpy + pydantic and each peer, in fresh interpreters."""
    snippets = {
        "python (empty)": "pass",
        "numpy + pydantic": "import numpy, pydantic",
        "numpy + pydantic + one model": (
            "import numpy, pydantic\nclass M(pydantic.BaseModel):\n    x: int"),
        "scaleplan": "import scaleplan",
        # names load lazily: what the first config and the first plan() cost on top
        "scaleplan + GPTConfig": "import scaleplan\nscaleplan.GPTConfig.preset('gpt2')",
        "scaleplan + plan loaded": "import scaleplan\nscaleplan.plan",
    }
    if not quick and llm_analysis_available():
        snippets["llm_analysis"] = "import llm_analysis.analysis"
    if not quick and _torch_available():
        snippets["torch (FlopCounterMode)"] = "import torch.utils.flop_counter"
    rounds = 1 if quick else 9
    times = import_times(snippets, rounds=rounds)
    base = times["numpy + pydantic"]["median_s"]
    empty = times["python (empty)"]["median_s"]
    out: dict[str, Any] = {"rounds": rounds, "seconds": times, "ratio_to_numpy_pydantic": {
        k: v["median_s"] / base for k, v in times.items()}}
    out["ratio_to_numpy_pydantic_minus_startup"] = {
        k: (v["median_s"] - empty) / (base - empty) for k, v in times.items()}
    out["importtime"] = import_profile("scaleplan", rounds=1 if quick else 5)
    return out


def _llm_analysis_seed_train() -> Any:
    """llm-analysis's ``train()`` asked the seed question: GPT-2 on a 12 GB RTX 4070, 512
    sequences of 1024 tokens per step; it picks the largest micro-batch that fits."""
    from llm_analysis import analysis, config

    from scaleplan.compute.hardware import gpu

    spec = gpu("RTX 4070")
    config.model_configs["gpt2-seed"] = config.ModelConfig(
        name="gpt2-seed", num_layers=12, n_head=12, hidden_dim=768, vocab_size=50257,
        max_seq_len=1024)
    config.gpu_configs["rtx-4070"] = config.GPUConfig(
        name="rtx-4070", mem_per_GPU_in_GB=spec.memory_bytes / 2**30,
        hbm_bandwidth_in_GB_per_sec=504, intra_node_bandwidth_in_GB_per_sec=32,
        intra_node_min_message_latency=8e-6, peak_fp16_TFLOPS=spec.peak_flops("bf16") / 1e12)

    def train() -> dict[str, Any]:
        result: dict[str, Any] = analysis.train(
            model_name="gpt2-seed", gpu_name="rtx-4070", dtype_name="w16a16e16",
            log_level="ERROR", global_batch_size=SEED_TOKENS_PER_STEP // 1024, seq_len=1024,
            flops_efficiency=0.3)
        return result

    return train


def latency(quick: bool) -> dict[str, Any]:
    """count_params, training_memory and plan on the seed question, beside llm-analysis."""
    from scaleplan import GPTConfig, count_params, plan, training_memory

    cfg = GPTConfig.preset("gpt2")
    fns: dict[str, Any] = {
        "count_params": lambda: count_params(cfg),
        "training_memory": lambda: training_memory(cfg, micro_batch_size=16, seq_len=1024),
        "plan": lambda: plan(cfg, "RTX 4070", tokens_per_step=SEED_TOKENS_PER_STEP),
    }
    skipped = []
    answers: dict[str, Any] = {}
    p = fns["plan"]()
    answers["scaleplan plan"] = {"micro_batch_size": p.micro_batch_size,
                                 "grad_accum_steps": p.grad_accum_steps}
    if llm_analysis_available():
        fns["llm_analysis train"] = _llm_analysis_seed_train()
        r = fns["llm_analysis train"]()
        answers["llm_analysis train"] = {"micro_batch_size": r["batch_size_per_gpu"],
                                         "grad_accum_steps": r["gradient_accumulation_steps"]}
    else:
        skipped.append("llm_analysis (not installed: pip install llm-analysis)")
    times = interleaved(fns, rounds=3 if quick else 21, number=5 if quick else 50)
    out: dict[str, Any] = {"seconds_per_call": times, "answers": answers, "skipped": skipped}
    if "llm_analysis train" in times:
        out["plan_over_llm_analysis_train"] = (times["plan"]["median_s"]
                                               / times["llm_analysis train"]["median_s"])
    return out


def sweep(quick: bool) -> dict[str, Any]:
    """Configurations evaluated per second by `scaleplan.planning.sweeps`: n_layer x n_embd x
    micro-batch x seq_len x GPUs, every record a full training-memory total, its fit on that GPU,
    the parameter count and FLOPs per token."""
    from scaleplan.planning.sweeps import sweep as sweep_fn

    names = ["RTX 3090", "RTX 4070", "RTX 4090", "T4", "L4", "A10", "L40S", "A100 SXM 80GB",
             "H100 SXM", "MI300X"]
    grid = {"n_layer": list(range(4, 44, 4)), "n_embd": list(range(256, 2816, 256)),
            "micro_batch_size": list(range(1, 101)), "seq_len": list(range(64, 1025, 96))[:10]}
    out: dict[str, Any] = {"what": "scaleplan.planning.sweeps over n_layer x n_embd x "
                           "micro_batch x seq_len x GPUs", "runs": {}}
    sizes = (10**4,) if quick else (10**5, 10**6)
    for n in sizes:
        gpus = names[: max(1, n // 10**5)]
        args = dict(grid, micro_batch_size=grid["micro_batch_size"][: 10 if n < 10**5 else 100])

        def evaluate(args: dict[str, Any] = args, gpus: list[str] = gpus) -> Any:
            return sweep_fn(**args, gpus=gpus)

        count = len(evaluate())
        t = interleaved({"sweep": evaluate}, rounds=3 if quick else 7, number=1)["sweep"]
        out["runs"][str(count)] = {"configs": count, "median_s": t["median_s"],
                                   "configs_per_s": count / t["median_s"]}
    return out


def flop_counter(quick: bool) -> dict[str, Any]:
    """Our analytic step_flops beside FlopCounterMode counting the reference model on fake
    tensors: speed ratio and exact agreement."""
    if not _torch_available():
        return {"skipped": "torch not installed (pip install scaleplan[torch])"}
    from scaleplan import GPTConfig, step_flops
    from scaleplan.reference.measure import count_flops
    from scaleplan.reference.validate import GRID_CONFIGS

    cases = {"llama-tiny": (GRID_CONFIGS["llama-tiny"], 2, 32)}
    if not quick:
        cases = {**{n: (c, 2, 32) for n, c in GRID_CONFIGS.items()},
                 "gpt2": (GPTConfig.preset("gpt2"), 8, 1024)}
    out: dict[str, Any] = {}
    for name, (cfg, b, s) in cases.items():
        def analytic(cfg: Any = cfg, b: int = b, s: int = s) -> float:
            return step_flops(cfg, micro_batch_size=b, seq_len=s, causal=False).total

        def counted(cfg: Any = cfg, b: int = b, s: int = s) -> float:
            return sum(count_flops(cfg, micro_batch_size=b, seq_len=s))

        t = interleaved({"step_flops": analytic, "FlopCounterMode": counted},
                        rounds=2 if quick else 5, number=1)
        out[name] = {"step_flops": analytic(), "FlopCounterMode": counted(),
                     "exact": analytic() == counted(), "seconds": t,
                     "speedup": t["FlopCounterMode"]["median_s"] / t["step_flops"]["median_s"]}
    return out


def run(*, quick: bool) -> dict[str, Any]:
    """Every section; a section that cannot run says why instead of failing the run."""
    result: dict[str, Any] = {"quick": quick, "machine": machine(), "targets": TARGETS}
    result["imports"] = imports(quick)
    result["latency"] = latency(quick)
    result["sweep"] = sweep(quick)
    result["flop_counter"] = flop_counter(quick)
    result["accuracy"] = (accuracy.accuracy(quick) if _torch_available()
                          else {"skipped": "torch not installed"})
    result["verdict"] = verdict(result)
    return result


def verdict(r: dict[str, Any]) -> dict[str, Any]:
    """Each target: the measured figure and whether it is met."""
    ratio = r["imports"]["ratio_to_numpy_pydantic"]["scaleplan"]
    out: dict[str, Any] = {"import": {"ratio": ratio, "target": TARGETS[
        "import_vs_numpy_pydantic"], "met": ratio <= TARGETS["import_vs_numpy_pydantic"],
        "seconds": r["imports"]["seconds"]["scaleplan"]["median_s"]}}
    if "plan_over_llm_analysis_train" in r["latency"]:
        x = r["latency"]["plan_over_llm_analysis_train"]
        out["plan"] = {"ratio": x, "target": 1.0, "met": x <= 1.0}
    rates = [v["configs_per_s"] for v in r["sweep"]["runs"].values()]
    out["sweep"] = {"configs_per_s": statistics.median(rates), "target": 1e6,
                    "met": min(rates) >= 1e6}
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, for CI")
    parser.add_argument("--out", type=Path, default=Path("benchmark-results"))
    args = parser.parse_args(argv)
    from benchmarks.report import markdown

    result = run(quick=args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmarks.json").write_text(json.dumps(result, indent=1, default=str))
    (args.out / "benchmarks.md").write_text(markdown(result))
    print(f"written {args.out}/benchmarks.md and benchmarks.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

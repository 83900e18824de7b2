"""The ``scaleplan`` command.

    scaleplan params gpt2                 # parameter breakdown of a preset
    scaleplan params config.json --json   # a Hugging Face config, as JSON
    scaleplan params config/train_x.py    # a nanoGPT config file (parsed, never executed)
    scaleplan diagnose config/train_x.py train.log --gpu "RTX 4070"   # what is wrong, with numbers

Bad input prints one line naming the problem and exits with status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from scaleplan.config import GPTConfig
from scaleplan.loaders import from_hf, load_nanogpt_config
from scaleplan.params import ParamCount, count_params

__all__ = ["main"]

EXIT_BAD_INPUT = 2


def load_model(spec: str) -> tuple[GPTConfig, str, int | None]:
    """A model from a preset name, a config.json or a nanoGPT .py file.

    Returns the config, a label for it, and the size its file claims (nanoGPT comments), if any.
    """
    path = Path(spec)
    if spec.endswith(".json") or (path.suffix == "" and path.is_file() and spec not in
                                  GPTConfig.presets()):
        return from_hf(spec), spec, None
    if spec.endswith(".py"):
        run = load_nanogpt_config(spec)
        return run.model, spec, run.claimed_params
    return GPTConfig.preset(spec), f"preset {spec}", None


def _millions(n: int) -> str:
    """125_000_000 -> '125M', 40_560_000 -> '40.56M', 6_738_415_616 -> '6.74B'."""
    value, unit = (n / 1e9, "B") if n >= 10**9 else (n / 1e6, "M")
    return f"{value:.2f}".rstrip("0").rstrip(".") + unit


def format_params(pc: ParamCount, label: str, claimed: int | None = None) -> str:
    """The parameter breakdown as a readable table."""
    rows = [f"{label}: {pc.total:,} parameters ({_millions(pc.total)})", ""]
    width = max(len(k) for k in pc.components())
    for name, value in pc.components().items():
        share = 100 * value / pc.total
        rows.append(f"  {name:<{width}}  {value:>17,}  {share:5.1f}%")
    rows += [
        "",
        f"  {'of which biases':<{width}}  {pc.biases:>17,}",
        f"  {'per block':<{width}}  {pc.per_layer:>17,}",
        f"  {'non-embedding':<{width}}  {pc.non_embedding:>17,}  (Kaplan et al. 2020's N)",
        f"  {'nanoGPT prints':<{width}}  {pc.nanogpt:>17,}  ({_millions(pc.nanogpt)}: total "
        "minus the position embedding)",
    ]
    if claimed is not None:
        ratio = claimed / pc.nanogpt
        rows.append(f"  the config claims ~{_millions(claimed)}: {ratio:.2f}x the real count")
    return "\n".join(rows)


def _cmd_params(args: argparse.Namespace) -> int:
    cfg, label, claimed = load_model(args.model)
    pc = count_params(cfg)
    if args.json:
        out = {"model": label, "config": cfg.model_dump(), "params": pc.model_dump(),
               "claimed_params": claimed}
        print(json.dumps(out, indent=2))
    else:
        print(format_params(pc, label, claimed))
    return 0


def _cmd_diagnose(args: argparse.Namespace) -> int:
    from scaleplan.diagnose import diagnose

    d = diagnose(config=args.config, log=args.log, gpu=args.gpu)
    if args.json:
        print(d.model_dump_json(indent=2))
        return 0
    print(f"{args.config}: {d.nanogpt_params:,} parameters (nanoGPT's count); "
          f"{len(d.findings)} finding(s)")
    for f in d.findings:
        print(f"\n[{f.severity}] {f.code}: {f.message}\n  fix: {f.fix}")
    rec = d.recommendation
    if rec is not None:
        print("\nrecommended next run:")
        for change in rec.changes:
            print(f"  {change}")
        print(f"  {_millions(rec.nanogpt_params)} parameters; {rec.tokens_per_step:,} tokens per "
              f"step = micro-batch {rec.training.micro_batch_size} x seq_len "
              f"{rec.training.seq_len} x grad_accum_steps {rec.training.grad_accum_steps}")
        others = ", ".join(f"{b} x {a}" for b, a in rec.micro_batch_options[1:])
        if others:
            print(f"  if memory runs out, micro-batch x grad-accum: {others}")
        print(f"  compute-optimal: {rec.compute_optimal_tokens / 1e9:.2f}B tokens = "
              f"{rec.steps_for_compute_optimal:,} steps (max_iters = lr_decay_iters)")
        if rec.expected_val_loss is not None:
            print(f"  expected val loss ~{rec.expected_val_loss:.2f} there "
                  f"(~{rec.expected_val_loss_same_tokens:.2f} on as many tokens as this run)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scaleplan",
        description="Plan GPT training runs from arithmetic alone.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("params", help="exact parameter count and breakdown")
    p.add_argument("model", help="a preset name (e.g. gpt2), a config.json, or a nanoGPT .py "
                   f"config. Presets: {', '.join(GPTConfig.presets())}")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_params)
    d = sub.add_parser("diagnose", help="read a config and a training log; say what is wrong")
    d.add_argument("config", help="a nanoGPT .py config (parsed, never executed)")
    d.add_argument("log", help="the training log: nanoGPT or llm.c stdout, HF Trainer output "
                   "or trainer_state.json, CSV or JSONL")
    d.add_argument("--gpu", help="the GPU the run used, e.g. 'RTX 4070'")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(func=_cmd_diagnose)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
    except BrokenPipeError:  # output piped into `head` and closed early (Python docs' recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ValueError as exc:  # every bad-input error scaleplan raises is a ValueError
        print(f"scaleplan: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return status


def _one_line(exc: ValueError) -> str:
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"]) or exc.title
            parts.append(f"{loc}: {err['msg']} (got {err.get('input')!r})")
        return "; ".join(parts)
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())

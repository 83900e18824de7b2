"""The ``scaleplan`` command.

    scaleplan params gpt2                 # parameter breakdown of a preset
    scaleplan params config.json --json   # a Hugging Face config, as JSON
    scaleplan params config/train_x.py    # a nanoGPT config file (parsed, never executed)
    scaleplan diagnose config/train_x.py train.log --gpu "RTX 4070"   # what is wrong, with numbers
    scaleplan serve llama-3-8b --gpu "RTX 4090"   # KV cache, longest context, speed (cli_serve)

Exit status: 0 on success; 2 for bad input (a usage error, a bad value, a file that cannot be
read, an input too large or too deeply nested), with one line ``scaleplan: error: ...`` on stderr
and never a traceback; 1 for a bug in scaleplan, with one line ``scaleplan: internal error, please
report it: ...`` (``SCALEPLAN_TRACEBACK=1`` shows the traceback instead); 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from scaleplan.cli_options import (
    ConfigAndLog,
    VersionAction,
    add_plan_knobs,
    int_arg,
    positive_int,
)
from scaleplan.cli_output import format_diagnosis, format_gpus, format_params
from scaleplan.cli_serve import add_serve_parser
from scaleplan.errors import ScaleplanError, shown
from scaleplan.model.config import GPTConfig
from scaleplan.model.params import count_params

if TYPE_CHECKING:
    from scaleplan.planning.planner import Plan

__all__ = ["main"]

EXIT_BAD_INPUT = 2  # argparse's own status for a usage error
EXIT_INTERNAL_ERROR = 1  # a bug in scaleplan: what Python itself returns on an uncaught error
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
#: Set to 1 to see the traceback of an internal error (a bug) instead of its one-line summary.
TRACEBACK_ENV = "SCALEPLAN_TRACEBACK"


def load_model(spec: str) -> tuple[GPTConfig, str, int | None]:
    """A model from a preset name, a config.json or a nanoGPT .py file.

    Returns the config, a label for it, and the size its file claims (nanoGPT comments), if any.
    A file too large or too deeply nested to read is a `ScaleplanError` naming the file.
    """
    try:
        return _load_model(spec)
    except (RecursionError, MemoryError, OverflowError) as exc:
        raise ScaleplanError(f"{shown(spec)}: {_too_large(exc)}") from None


def _load_model(spec: str) -> tuple[GPTConfig, str, int | None]:
    path = Path(spec)
    if spec.endswith(".json") or (path.suffix == "" and path.is_file() and spec not in
                                  GPTConfig.presets()):
        from scaleplan.model.loaders import from_hf  # files only: a preset needs no reader
        return from_hf(spec), spec, None
    if spec.endswith(".py"):
        from scaleplan.model.loaders import load_nanogpt_config
        run = load_nanogpt_config(spec)
        return run.model, spec, run.claimed_params
    if spec not in GPTConfig.presets() and path.is_dir():
        raise ScaleplanError(f"{shown(spec)} is a directory; give a preset name, a config.json "
                             "or a nanoGPT .py file")
    return GPTConfig.preset(spec), f"preset {spec}", None


def _cmd_params(args: argparse.Namespace) -> int:
    from scaleplan.model.loaders import load_nanogpt_config
    cfg, label, claimed = load_model(args.model)
    pc = count_params(cfg)
    # what reading a nanoGPT file skipped or assumed (init_from, meta.pkl's vocabulary, ...)
    notes = load_nanogpt_config(args.model).notes if args.model.endswith(".py") else ()
    if args.json:
        out = {"model": label, "config": cfg.model_dump(), "params": pc.model_dump(),
               "claimed_params": claimed, "notes": list(notes)}
        print(json.dumps(out, indent=2))
    else:
        print(format_params(pc, label, claimed))
        for note in notes:
            print(f"note: {note}")
    return 0


DEFAULT_PLAN_MODEL = "gpt2"
DEFAULT_PLAN_GPU = "RTX 4070"


def _cmd_plan(args: argparse.Namespace) -> int:
    from scaleplan.cli_output import nothing_fits_hint, plan_notes

    cfg, label, _ = load_model(args.model)
    try:
        p = _plan(args, cfg)
    except ScaleplanError as exc:
        hint = nothing_fits_hint(str(exc), args, lambda a: _plan(a, cfg))
        if hint == str(exc):
            raise
        raise ScaleplanError(hint) from None
    if args.export == "nanogpt":
        # a nanoGPT file's run (data, out_dir, learning rate, ...) is kept; only the plan's
        # settings and the schedule that follows max_iters are replaced
        print(p.to_nanogpt_config(args.model if args.model.endswith(".py") else None), end="")
    elif args.export == "deepspeed":
        print(json.dumps(p.to_deepspeed(), indent=2))
    elif args.export == "hf":
        print(json.dumps(p.to_hf_training_args(), indent=2))
    elif args.export == "torchrun":
        print(p.to_torchrun())
    elif args.json:
        print(p.model_dump_json(indent=2))
    else:
        print(f"{label}\n{p.report()}")
        for line in plan_notes(args, p):
            print(f"\n{line}")
    return 0


def _plan(args: argparse.Namespace, cfg: GPTConfig) -> Plan:
    """`plan` with the flags of ``args``, the nanoGPT file's run filling in what they leave."""
    from scaleplan.cli_options import plan_options, run_defaults
    from scaleplan.planning.planner import plan

    tokens_per_step, seq_len, data = run_defaults(args)
    total: int | str | None = args.total_tokens
    if isinstance(total, str) and total != "chinchilla":
        try:
            total = int_arg("--total-tokens", total)
        except argparse.ArgumentTypeError as exc:
            raise ScaleplanError(f"--total-tokens: {exc}") from None
    world_size = 1 if args.world_size is None else args.world_size
    options = plan_options(args, world_size)
    try:
        return plan(cfg, args.gpu, tokens_per_step=tokens_per_step, total_tokens=total,  # type: ignore[arg-type]
                    hours=args.hours, seq_len=seq_len, law=args.law, data=data, **options)
    except ScaleplanError as exc:
        if args.compile is None and options.get("compile") and "compile=True" in str(exc):
            raise ScaleplanError(f"{exc} (the nanoGPT file runs under torch.compile, train.py's "
                                 "default: plan it eager with --no-compile)") from None
        raise


def _cmd_finetune(args: argparse.Namespace) -> int:
    from scaleplan.cli_finetune import finetune_report

    cfg, label, _ = load_model(args.model)
    print(finetune_report(args, cfg, label))
    return 0


def _cmd_gpus(args: argparse.Namespace) -> int:
    from scaleplan.compute.hardware import gpus

    specs = gpus()
    if args.json:
        print(json.dumps([s.model_dump(mode="json") for s in specs], indent=2))
    else:
        print(format_gpus(specs))
    return 0


def _cmd_diagnose(args: argparse.Namespace) -> int:
    from scaleplan.diagnosis.examine import diagnose

    config, log = (None, args.files[0]) if len(args.files) == 1 else args.files
    d = diagnose(config=config, log=log, gpu=args.gpu, vocab_size=args.vocab_size)
    if args.json:
        print(d.model_dump_json(indent=2))
        return 0
    print(format_diagnosis(d, config or log))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="scaleplan",
        description="Plan GPT training runs from arithmetic alone.",
        epilog="Exit status: 0 done; 2 bad input (one line 'scaleplan: error: ...' on stderr, "
               "never a traceback); 1 a bug in scaleplan (one line 'scaleplan: internal error, "
               f"please report it: ...'; {TRACEBACK_ENV}=1 shows the traceback); 130 "
               "interrupted.",
    )
    parser.add_argument("--version", action=VersionAction, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("params", help="exact parameter count and breakdown")
    p.add_argument("model", help="a preset name (e.g. gpt2), a config.json, or a nanoGPT .py "
                   f"config. Presets: {', '.join(GPTConfig.presets())}")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_params)

    q = sub.add_parser("plan", help="micro-batch, grad-accum, memory, tokens, time and loss for "
                       "a GPU (default: GPT-2 small on an RTX 4070)")
    q.add_argument("model", nargs="?", default=DEFAULT_PLAN_MODEL,
                   help="preset, config.json or nanoGPT .py (default: %(default)s)")
    q.add_argument("--gpu", default=DEFAULT_PLAN_GPU, help="GPU name (default: %(default)s); "
                   "`scaleplan gpus` lists them")
    q.add_argument("--tokens-per-step", type=positive_int("--tokens-per-step", "2**19"),
                   help="tokens per optimizer step (default: 2**19, or the nanoGPT file's)")
    q.add_argument("--world-size", type=positive_int("--world-size", "8"),
                   help="GPUs (default: 1)")
    q.add_argument("--seq-len", type=positive_int("--seq-len", "1024"),
                   help="tokens per sequence (default: block_size)")
    q.add_argument("--total-tokens", help="tokens for the run, or 'chinchilla' (default)")
    q.add_argument("--hours", type=float, help="train for this long instead")
    add_plan_knobs(q)
    q.add_argument("--law", help="scaling law (default: the --data's web-text law when "
                   "published runs calibrate it, as diagnose uses; else chinchilla)")
    q.add_argument("--data", help="the dataset trained on (fineweb, fineweb-edu, openwebtext): "
                   "adds the expected loss on it, GPT-2 tokens (default: a nanoGPT file's "
                   "dataset when calibrated)")
    q.add_argument("--export", choices=["nanogpt", "deepspeed", "hf", "torchrun"],
                   help="print the plan as another tool's config instead")
    q.add_argument("--json", action="store_true", help="the whole plan as JSON")
    q.set_defaults(func=_cmd_plan)

    from scaleplan.cli_finetune import add_finetune_parser

    add_finetune_parser(sub, positive_int=positive_int, default_gpu=DEFAULT_PLAN_GPU)
    sub.choices["finetune"].set_defaults(func=_cmd_finetune)
    g = sub.add_parser("gpus", help="the GPU database")
    g.add_argument("--json", action="store_true", help="machine-readable output")
    g.set_defaults(func=_cmd_gpus)
    d = sub.add_parser("diagnose", help="read a training log (and its config); say what is "
                       "wrong", usage="scaleplan diagnose [-h] [CONFIG] LOG [--gpu GPU] "
                       "[--vocab-size N] [--json]")
    d.add_argument("files", nargs="+", metavar="[CONFIG] LOG", action=ConfigAndLog,
                   help="the run's config (a nanoGPT .py, parsed, never executed, or a Hugging "
                   "Face config.json; optional) and its training log: nanoGPT, llm.c, "
                   "modded-nanogpt, build-nanogpt, litgpt, llama2.c or torchtitan stdout, Hugging "
                   "Face Trainer output or trainer_state.json, CSV or JSONL; '-' reads the log "
                   "from standard input")
    d.add_argument("--gpu", help="the GPU the run used, e.g. 'RTX 4070'")
    d.add_argument("--vocab-size", type=positive_int("--vocab-size", "50257"),
                   help="the vocabulary, for the ln(vocab) checks when no config gives it")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(func=_cmd_diagnose)
    add_serve_parser(sub, load_model)
    return parser


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line, like every other bad input: ``scaleplan:
    error: <what>; see 'scaleplan plan --help'`` and status 2 (argparse's own)."""

    def error(self, message: str) -> Any:  # argparse types it NoReturn
        self.exit(EXIT_BAD_INPUT, f"scaleplan: error: {_flatten(message)}; see "
                                  f"'{self.prog} --help'\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 done, 2 bad input, 1 a bug, 130
    interrupted), printing one line on stderr for each failure."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2), already printed
        return exit_.code if isinstance(exit_.code, int) else EXIT_BAD_INPUT
    try:
        status: int = args.func(args)
    except BrokenPipeError:  # output piped into `head` and closed early (Python docs' recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("scaleplan: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BAD_INPUT as exc:
        print(f"scaleplan: error: {describe(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:  # a bug: one line to report, the traceback on request
        if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        print(f"scaleplan: internal error, please report it (with the command): "
              f"{type(exc).__name__}: {_flatten(str(exc))}; {TRACEBACK_ENV}=1 shows the "
              "traceback", file=sys.stderr)
        return EXIT_INTERNAL_ERROR
    return status


#: What bad input raises: every rejection scaleplan makes (a ValueError: ScaleplanError,
#: pydantic's ValidationError, a UnicodeError), an input too large or too deeply nested for Python
#: (OverflowError, RecursionError, MemoryError), a file that cannot be read (OSError).
BAD_INPUT = (ValueError, OverflowError, RecursionError, MemoryError, OSError)


def describe(exc: BaseException) -> str:
    """One line for a bad-input error: pydantic's errors name each field, its problem and the
    value; an OSError names the file; Python's limits say what was too large."""
    if isinstance(exc, ValidationError):
        return _flatten("; ".join(_field_error(exc.title, err) for err in exc.errors()))
    if isinstance(exc, OSError) and not isinstance(exc, ValueError):
        where = f"{shown(exc.filename)}: " if exc.filename is not None else ""
        return _flatten(f"{where}{exc.strerror or exc}")
    if isinstance(exc, RecursionError | MemoryError | OverflowError):
        return _flatten(_too_large(exc))
    return _flatten(str(exc) or type(exc).__name__)


def _field_error(title: str, err: Any) -> str:
    loc = ".".join(str(x) for x in err["loc"])
    where = f"{title}.{loc}" if loc else title
    return f"{where}: {err['msg']} (got {shown(err.get('input'))})"


def _too_large(exc: BaseException) -> str:
    kinds: dict[type[BaseException], str] = {
        RecursionError: "the input is nested too deeply to read",
        MemoryError: "the input is too large to hold in memory",
        OverflowError: "a number in the input is too large"}
    detail = f" ({exc})" if str(exc) else ""
    return kinds.get(type(exc), "the input is too large") + detail


def _flatten(text: str) -> str:
    """``text`` on one line: newlines and runs of spaces become single spaces."""
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())

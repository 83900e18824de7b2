"""The knobs of ``scaleplan plan``: the flags for what `scaleplan.planning.planner.plan` plans with.

Each flag's accepted values come from the code that checks them (the precision table of
`scaleplan.model.config.normalize_precision`, the optimizers of
`scaleplan.memory.states.normalize_optimizer`, the ZeRO stages and FSDP strategies of
`scaleplan.memory.parallel.Parallelism`), so the help never drifts from what is accepted:

    --zero {0,1,2,3}          ZeRO stage over the data-parallel GPUs (--world-size)
    --fsdp [STRATEGY]         FSDP instead: full_shard (like ZeRO-3, the default) or shard_grad_op
    --checkpointing {none,selective,full}
    --optimizer NAME          adamw, adamw-8bit, ... (aliases such as adamw8bit accepted)
    --optimizer-impl IMPL     foreach, fused or for-loop: torch's AdamW implementation
    --attention {flash,eager}
    --loss {standard,chunked} --optimizer-in-backward --activation-offload
    --no-gradient-accumulation   the memory-saving switches (scaleplan.memory.step_switches)
    --precision NAME          auto, or a precision name or alias
    --mfu FRACTION            model FLOPs utilisation (PaLM's definition) on --gpu
    --nanogpt-mfu PERCENT     the MFU nanoGPT prints (of an A100's 312 TFLOP/s), converted

`plan_options` turns the parsed flags into `plan`'s keyword arguments; `int_arg` and
`positive_int` read the whole numbers of every subcommand (``2**19``, ``5e5``, ``524_288``).
"""

from __future__ import annotations

import argparse
from typing import Any, get_args

from scaleplan.errors import ScaleplanError, shown
from scaleplan.memory.activations import AttentionKind, CheckpointingKind
from scaleplan.memory.implementations import IMPLEMENTATIONS
from scaleplan.memory.parallel import FSDP_STRATEGIES, ZERO_STAGES
from scaleplan.memory.sharding import (
    OPTIMIZER_IMPL_ALIASES,
    OPTIMIZER_IMPLS,
    normalize_optimizer_impl,
)
from scaleplan.memory.states import OPTIMIZER_ALIASES, OPTIMIZERS, normalize_optimizer
from scaleplan.model.config import PRECISION_ALIASES, PRECISIONS, normalize_precision

__all__ = ["ConfigAndLog", "VersionAction", "add_plan_knobs", "compile_setting", "int_arg",
           "names_with_aliases", "package_version", "plan_options", "positive_int",
           "precision_names", "run_defaults"]

AUTO_PRECISION = "auto"
#: What ``--mfu`` means, said in its help and in docs/cli.md.
MFU_HELP = ("model FLOPs utilisation on --gpu, a fraction such as 0.35: model FLOPs (6N + "
            "attention, causal, no recomputation) per second over the GPU's dense peak in the "
            "run's precision, as PaLM (Chowdhery et al. 2022, App. B) defines it (default: "
            "assumed for the GPU class)")


class VersionAction(argparse.Action):
    """``--version``: the installed package's version, looked up only when asked."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        print(f"scaleplan {package_version()}")  # on stdout, as argparse's own version action
        parser.exit(0)


def package_version() -> str:
    """The installed distribution's version, else the source tree's ``scaleplan.__version__``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("scaleplan")
    except PackageNotFoundError:
        import scaleplan

        return str(getattr(scaleplan, "__version__", "unknown"))


def names_with_aliases(valid: tuple[str, ...], aliases: dict[str, str]) -> str:
    """Each valid name followed by its aliases, for a flag's help.

    >>> names_with_aliases(("adamw", "sgd"), {"adam": "adamw"})
    'adamw (or adam), sgd'
    """
    parts = []
    for name in valid:
        others = [alias for alias, target in aliases.items() if target == name]
        parts.append(f"{name} (or {', '.join(others)})" if others else name)
    return ", ".join(parts)


def precision_names() -> list[str]:
    """Every name ``--precision`` accepts: auto, the precisions and their aliases.

    >>> precision_names()[:3]
    ['auto', '32-true', 'bf16-mixed']
    """
    return [AUTO_PRECISION, *PRECISIONS, *PRECISION_ALIASES]


def _named(flag: str, normalize: Any) -> Any:
    """An argparse ``type`` that normalises a name, its error naming ``flag``."""
    def parse(text: str) -> str:
        try:
            return str(normalize(text))
        except ScaleplanError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = flag.lstrip("-")
    return parse


def _precision(text: str) -> str:
    return AUTO_PRECISION if text.strip().lower() == AUTO_PRECISION else normalize_precision(text)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{shown(text)} is not a number; give a fraction such "
                                         "as 0.35") from None
    if not 0 < value <= 1:
        hint = ("; a percentage? give 0.35 for 35%, or --nanogpt-mfu for the figure nanoGPT "
                "prints" if value > 1 else "")
        raise argparse.ArgumentTypeError(f"{shown(text)} must be a fraction in (0, 1], e.g. "
                                         f"0.35{hint}")
    return value


def _percent(text: str) -> float:
    try:
        value = float(text.strip().rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{shown(text)} is not a percentage; give the figure "
                                         "nanoGPT prints, e.g. 11.5 for 'mfu 11.50%'") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{shown(text)} must be a positive percentage, e.g. "
                                         "11.5")
    return value


def add_plan_knobs(q: argparse.ArgumentParser) -> None:
    """Add the precision, memory and MFU flags to the ``plan`` parser ``q``."""
    q.add_argument("--precision", default=AUTO_PRECISION, type=_named("--precision", _precision),
                   metavar="NAME", help="auto (default: bf16 autocast where the GPU has bf16 "
                   "tensor cores, fp16 autocast otherwise), or one of: "
                   + names_with_aliases(PRECISIONS, PRECISION_ALIASES))
    sharding = q.add_mutually_exclusive_group()
    sharding.add_argument("--zero", type=int, choices=ZERO_STAGES, default=0,
                          help="ZeRO stage over the data-parallel GPUs (--world-size): 1 shards "
                          "the optimizer states, 2 also the gradients, 3 also the weights "
                          "(default: 0, plain DDP)")
    sharding.add_argument("--fsdp", nargs="?", const=FSDP_STRATEGIES[0], choices=FSDP_STRATEGIES,
                          help="PyTorch FSDP over the data-parallel GPUs instead: full_shard "
                          "(shards like ZeRO-3; the default when the flag has no value) or "
                          "shard_grad_op (like ZeRO-2)")
    for name, what in (("tensor", "tensor-parallel degree: each matrix split over T GPUs "
                         "(Megatron-LM)"),
                       ("pipeline", "pipeline stages: the blocks split over P GPUs (1F1B)"),
                       ("expert", "expert-parallel degree: a mixture of experts' routed experts "
                        "split over E of the data-parallel GPUs")):
        q.add_argument(f"--{name}-parallel", type=positive_int(f"--{name}-parallel", "8"),
                       default=1, metavar=name[0].upper(),
                       help=f"{what}; --world-size counts all GPUs (default: 1)")
    q.add_argument("--checkpointing", choices=get_args(CheckpointingKind), default="none",
                   help="activation checkpointing: selective recomputes attention, full every "
                   "block (default: %(default)s)")
    q.add_argument("--optimizer", default="adamw", metavar="NAME",
                   type=_named("--optimizer", normalize_optimizer),
                   help="default: %(default)s; one of: "
                   + names_with_aliases(OPTIMIZERS, OPTIMIZER_ALIASES))
    q.add_argument("--optimizer-impl", metavar="IMPL",
                   type=_named("--optimizer-impl", normalize_optimizer_impl),
                   help="torch's AdamW implementation, for the optimizer step's temporaries: "
                   + names_with_aliases(OPTIMIZER_IMPLS, OPTIMIZER_IMPL_ALIASES)
                   + " (default: torch's, foreach on CUDA)")
    q.add_argument("--implementation", choices=IMPLEMENTATIONS, default="nanogpt",
                   help="whose code runs the step, for what it saves for backward: nanoGPT's "
                   "layout, Hugging Face transformers' modeling code, torchtitan's Llama 3 "
                   "under FSDP2, torchtune's models and recipes or litgpt's GPT (default: "
                   "%(default)s)")
    q.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="the model runs under torch.compile: what inductor saves for backward "
                   "(bf16 logits, no fp32 log-softmax, bool dropout masks); SDPA attention, one "
                   "GPU or data parallelism (default: a nanoGPT file's own compile, which "
                   "train.py sets True; off for presets and config.json files)")
    q.add_argument("--loss", choices=("standard", "chunked"), default="standard",
                   help="chunked: torchtune's CEWithChunkedOutputLoss, 8 chunks each projected "
                   "and upcast to fp32 on its own (default: %(default)s)")
    q.add_argument("--optimizer-in-backward", action="store_true",
                   help="each parameter stepped and its gradient freed as soon as it is ready "
                   "(torchtune's optimizer_in_bwd); needs --no-gradient-accumulation")
    q.add_argument("--activation-offload", action="store_true",
                   help="saved activations copied to host memory (torchtune's "
                   "OffloadActivations); one GPU, no checkpointing")
    q.add_argument("--no-gradient-accumulation", action="store_true",
                   help="one micro-batch per optimizer step: no gradients during forward "
                   "(default: gradients resident all step, as when accumulating)")
    q.add_argument("--attention", choices=get_args(AttentionKind), default="flash",
                   help="flash (SDPA, no s x s scores kept) or eager (default: %(default)s)")
    mfu = q.add_mutually_exclusive_group()
    mfu.add_argument("--mfu", type=_fraction, metavar="FRACTION", help=MFU_HELP)
    mfu.add_argument("--nanogpt-mfu", type=_percent, metavar="PERCENT",
                     help="the MFU nanoGPT prints (e.g. 11.5 for 'mfu 11.50%%'), which is "
                     "relative to an A100's 312 TFLOP/s whatever the GPU: converted to the real "
                     "MFU on --gpu and planned with")


def _switches(args: argparse.Namespace) -> dict[str, Any]:
    """The memory-saving switches given (`scaleplan.memory.step_switches`), none when absent."""
    given: dict[str, Any] = {}
    if getattr(args, "loss", "standard") != "standard":
        given["loss"] = args.loss
    for flag in ("optimizer_in_backward", "activation_offload"):
        if getattr(args, flag, False):
            given[flag] = True
    if getattr(args, "no_gradient_accumulation", False):
        given["gradient_accumulation"] = False
    return given


def plan_options(args: argparse.Namespace, world_size: int) -> dict[str, Any]:
    """`plan`'s keyword arguments for the knobs in ``args``: precision, optimizer, attention,
    checkpointing, the layout (``parallelism``, with ``world_size`` data-parallel GPUs) and
    the MFU."""
    from scaleplan.memory.parallel import Parallelism

    options: dict[str, Any] = {"precision": args.precision, "optimizer": args.optimizer,
                               "attention": args.attention, "checkpointing": args.checkpointing,
                               "mfu": args.mfu}
    if args.optimizer_impl is not None:
        options["optimizer_impl"] = args.optimizer_impl
    if compile_setting(args):
        options["compile"] = True
    if args.implementation != "nanogpt":
        options["implementation"] = args.implementation
    options.update(_switches(args))
    split = args.tensor_parallel * args.pipeline_parallel
    if args.zero or args.fsdp or split > 1 or args.expert_parallel > 1:
        if world_size % split:
            raise ScaleplanError(
                f"--world-size {world_size} is not a multiple of --tensor-parallel "
                f"{args.tensor_parallel} x --pipeline-parallel {args.pipeline_parallel} = "
                f"{split}: give --world-size {split * max(1, world_size // split)} or fewer ways")
        data = world_size // split
        if (args.zero or args.fsdp) and data == 1:
            flag = f"--zero {args.zero}" if args.zero else f"--fsdp {args.fsdp}"
            raise ScaleplanError(f"{flag} shards over the data-parallel GPUs, and there is one: "
                                 "give --world-size N (N > 1)")
        options["parallelism"] = Parallelism(
            data=data, zero=args.zero, fsdp=args.fsdp, tensor=args.tensor_parallel,
            pipeline=args.pipeline_parallel, expert=args.expert_parallel)
    else:
        options["world_size"] = world_size
    if args.nanogpt_mfu is not None:
        options["mfu"] = nanogpt_mfu(args.nanogpt_mfu, args.gpu, args.precision)
    return options


def nanogpt_mfu(percent: float, gpu: str, precision: str) -> float:
    """The real MFU on ``gpu`` of nanoGPT's printed ``percent`` (of an A100's bf16 peak), against
    the peak of the dtype the plan's matmuls run in (as `plan` times the run)."""
    from scaleplan.compute.hardware import gpu as lookup_gpu
    from scaleplan.compute.throughput import NANOGPT_PEAK_FLOPS, from_nanogpt_mfu
    from scaleplan.planning.advice import choose_precision, peak_dtype

    spec = lookup_gpu(gpu)
    dtype = peak_dtype(choose_precision(spec, precision)[0])
    if dtype not in spec.peak:  # as plan(): bf16 asked for on a GPU without bf16 tensor cores
        dtype = "fp32"
    real = from_nanogpt_mfu(percent, spec, dtype=dtype).mfu
    if real > 1:
        raise ScaleplanError(
            f"--nanogpt-mfu {percent:g} is {percent / 100 * NANOGPT_PEAK_FLOPS / 1e12:.1f} TFLOP/s "
            f"(of an A100's {NANOGPT_PEAK_FLOPS / 1e12:g}), "
            f"{real:.0%} of the {spec.name}'s {dtype} peak: more than the GPU can do; check the "
            "figure, or give --mfu for a fraction of this GPU's own peak")
    return real


def compile_setting(args: argparse.Namespace) -> bool:
    """``--compile`` / ``--no-compile``, else a nanoGPT file's own ``compile`` (train.py's
    default is True: the seed run compiled), else False."""
    if args.compile is not None:
        return bool(args.compile)
    if args.model.endswith(".py"):
        from scaleplan.model.loaders import load_nanogpt_config  # a file's reader: not a preset

        return load_nanogpt_config(args.model).training.compile
    return False


def run_defaults(args: argparse.Namespace) -> tuple[int | None, int | None, str | None]:
    """Tokens per step, seq_len and dataset: the flags', else a nanoGPT file's own (its
    dataset only when published runs calibrate it: not shakespeare_char)."""
    from scaleplan.scaling.webtext import is_calibrated

    tokens_per_step, seq_len, data = args.tokens_per_step, args.seq_len, args.data
    if args.model.endswith(".py"):
        from scaleplan.model.loaders import load_nanogpt_config  # a file's reader: not a preset

        run = load_nanogpt_config(args.model)
        tokens_per_step = (run.training.tokens_per_step if tokens_per_step is None
                           else tokens_per_step)
        seq_len = run.training.seq_len if seq_len is None else seq_len
        if data is None and run.dataset and is_calibrated(run.dataset):
            data = run.dataset
    return tokens_per_step, seq_len, data


class ConfigAndLog(argparse.Action):
    """``scaleplan diagnose [CONFIG] LOG``: one path or two."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if len(values) > 2:
            parser.error(f"diagnose takes a config and a log, or a log alone; got {len(values)} "
                         f"paths: {' '.join(values)}")
        setattr(namespace, self.dest, values)


def int_arg(flag: str, text: str, example: str = "524288 or 2**19") -> int:
    """'524288', '2**19', '5e5' or '524_288' as an int (parsed like a config value, never
    evaluated)."""
    from scaleplan.model.nanogpt_file import parse_assignments

    try:
        value = parse_assignments(f"x = {text}", source=flag).values.get("x")
    except (ValueError, RecursionError, MemoryError, OverflowError):
        value = None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise argparse.ArgumentTypeError(f"{shown(text)} is not a whole number; e.g. {example}")
    return value


def positive_int(flag: str, example: str) -> Any:
    """An argparse ``type``: a whole number >= 1 (so 0 is refused like -8, never read as
    'not given')."""
    def parse(text: str) -> int:
        value = int_arg(flag, text, example)
        if value < 1:
            raise argparse.ArgumentTypeError(f"{shown(text)} must be a positive whole number, "
                                             f"e.g. {example}")
        return value

    parse.__name__ = "whole number"
    return parse

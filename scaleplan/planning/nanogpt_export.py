"""A `Plan` written out as a nanoGPT config file that keeps the run it was planned from.

nanoGPT's ``train.py`` holds its settings as module globals (its "defaults block"), and
``configurator.py`` then ``exec``s a config file over them. A file nanoGPT reads the same way
on every path is therefore one of ``name = literal`` lines whose names are train.py's settings,
each with the type of train.py's default (`TRAIN_PY_DEFAULTS`): configurator.py asserts that type
for ``--name=value`` overrides (karpathy/nanoGPT configurator.py, commit 3adf61e, line 42), and a
file of the same types behaves alike.

`to_nanogpt_config` writes such a file. Given the nanoGPT config the plan was made from
(``base``), it keeps every setting the plan does not decide (``dataset``, ``out_dir``,
``init_from``, ``compile``, ``wandb_*``, ``learning_rate``, ...) in the file's order and replaces
only what the plan decides: the batch shape, ``max_iters``, ``dtype``, the model's shape when the
plan changed it, and the learning-rate schedule, which must follow ``max_iters``
(`fit_schedule`). A comment on each replaced line says what it was. A name train.py does not
have (a fork's own setting) is kept as the file has it; a value the file computes at run time
(``wandb_run_name = 'ft-' + str(time.time())``) cannot be, and the header names it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from scaleplan.errors import ScaleplanError, shown
from scaleplan.model.training_config import TrainingConfig
from scaleplan.units import format_count

if TYPE_CHECKING:  # the file readers load when a base file is given (not with `scaleplan plan`)
    from scaleplan.model.loaders import NanoGPTRun
    from scaleplan.model.nanogpt_file import Value
    from scaleplan.planning.planner import Plan

__all__ = ["MAX_WARMUP_FRACTION", "MIN_LR_DIVISOR", "NANOGPT_DTYPE", "TRAIN_PY_DEFAULTS",
           "WARMUP_TOKENS", "Schedule", "fit_schedule", "to_nanogpt_config"]

#: karpathy/nanoGPT train.py's defaults block: every setting a config file may assign, with its
#: default (whose type a value must have). ``dtype``'s default is a GPU test in train.py
#: ('bfloat16' where supported, else 'float16'): a str either way.
TRAIN_PY_DEFAULTS: dict[str, Value] = {
    "out_dir": "out", "eval_interval": 2000, "log_interval": 1, "eval_iters": 200,
    "eval_only": False, "always_save_checkpoint": True, "init_from": "scratch",
    "wandb_log": False, "wandb_project": "owt", "wandb_run_name": "gpt2",
    "dataset": "openwebtext", "gradient_accumulation_steps": 40, "batch_size": 12,
    "block_size": 1024, "n_layer": 12, "n_head": 12, "n_embd": 768, "dropout": 0.0,
    "bias": False, "learning_rate": 6e-4, "max_iters": 600000, "weight_decay": 1e-1,
    "beta1": 0.9, "beta2": 0.95, "grad_clip": 1.0, "decay_lr": True, "warmup_iters": 2000,
    "lr_decay_iters": 600000, "min_lr": 6e-5, "backend": "nccl", "device": "cuda",
    "dtype": "bfloat16", "compile": True,
}

#: GPT-3 warms the learning rate up "over the first 375 million tokens" (Brown et al. 2020,
#: Appendix B); Karpathy's build-nanogpt reproduction of GPT-2 124M uses the same 375M tokens
#: (715 steps of 2^19 tokens).
WARMUP_TOKENS = 375_000_000
#: Warm-up is at most this fraction of the run: BERT's ``warmup_proportion`` default, 0.1
#: (google-research/bert run_classifier.py). A file's own warm-up up to this is kept.
MAX_WARMUP_FRACTION = 0.1
#: nanoGPT train.py: ``min_lr = 6e-5 # minimum learning rate, should be ~= learning_rate/10 per
#: Chinchilla``.
MIN_LR_DIVISOR = 10
# min_lr is written to this many significant digits (6e-4 / 10 is 5.9999999999999995e-05).
_MIN_LR_DIGITS = 6

#: nanoGPT's ``dtype`` for each precision it can run (train.py: 'float32', 'bfloat16',
#: 'float16', all under autocast over fp32 parameters).
NANOGPT_DTYPE = {"32-true": "float32", "bf16-mixed": "bfloat16", "16-mixed": "float16"}
_MODEL_KEYS = ("n_layer", "n_head", "n_embd", "bias", "dropout")


@dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule for a run of ``max_iters`` steps, and why each value is what it is.

    ``reasons`` says, one line each, what was fitted and why. With ``decay_lr`` off (a constant
    learning rate) ``warmup_iters``, ``lr_decay_iters`` and ``min_lr`` are unused by train.py,
    and an export leaves them as the run had them.
    """

    warmup_iters: int
    lr_decay_iters: int
    min_lr: float
    eval_interval: int
    decay_lr: bool = True
    reasons: tuple[str, ...] = ()


def fit_schedule(max_iters: int, tokens_per_step: int, *, learning_rate: float,
                 warmup_iters: int, min_lr: float, min_lr_set: bool,
                 eval_interval: int, decay_lr: bool = True) -> Schedule:
    """nanoGPT's cosine schedule fitted to a run of ``max_iters`` steps.

    - ``lr_decay_iters = max_iters`` (train.py: "should be ~= max_iters per Chinchilla");
    - ``warmup_iters``: the run's own when it is at most `MAX_WARMUP_FRACTION` of ``max_iters``,
      else `WARMUP_TOKENS` worth of steps, at most that fraction;
    - ``min_lr``: the file's when it set one at most ``learning_rate``, else
      ``learning_rate / MIN_LR_DIVISOR``;
    - ``eval_interval``: the run's, or ``max_iters`` when the run would otherwise never evaluate
      after step 0 (train.py saves a checkpoint only at an evaluation after step 0).

    With train.py's warm-up of 2000 steps, a 1239-step run would never leave warm-up:

    >>> s = fit_schedule(1239, 524288, learning_rate=6e-4, warmup_iters=2000, min_lr=6e-5,
    ...                  min_lr_set=False, eval_interval=2000)
    >>> s.warmup_iters, s.lr_decay_iters, s.min_lr, s.eval_interval
    (123, 1239, 6e-05, 1239)
    """
    reasons = ["lr_decay_iters = max_iters (nanoGPT: 'should be ~= max_iters per Chinchilla')"]
    if not decay_lr:
        reasons = ["decay_lr = False: a constant learning rate, so warmup_iters, lr_decay_iters "
                   "and min_lr are not used and stay as they were"]
    cap = math.floor(MAX_WARMUP_FRACTION * max_iters)
    warmup = warmup_iters
    if decay_lr and warmup_iters > cap:
        warmup = min(math.ceil(WARMUP_TOKENS / tokens_per_step), cap)
        reasons.append(f"warmup_iters {warmup_iters} -> {warmup}: GPT-3's 375M tokens of "
                       f"warm-up, at most {MAX_WARMUP_FRACTION:.0%} of max_iters")
    lr_floor = min_lr
    if decay_lr and not (min_lr_set and 0 <= min_lr <= learning_rate):
        lr_floor = float(f"{learning_rate / MIN_LR_DIVISOR:.{_MIN_LR_DIGITS}g}")
        if lr_floor != min_lr:
            reasons.append(f"min_lr {min_lr!r} -> {lr_floor!r}: learning_rate / "
                           f"{MIN_LR_DIVISOR} (nanoGPT: 'should be ~= learning_rate/10 per "
                           "Chinchilla')")
    evaluate = eval_interval
    if eval_interval > max_iters:
        evaluate = max_iters
        reasons.append(f"eval_interval {eval_interval} -> {max_iters}: the run would never "
                       "evaluate or save a checkpoint after step 0")
    return Schedule(warmup_iters=warmup, lr_decay_iters=max_iters, min_lr=lr_floor,
                    eval_interval=evaluate, decay_lr=decay_lr, reasons=tuple(reasons))


def to_nanogpt_config(plan: Plan, base: str | os.PathLike[str] | NanoGPTRun | None = None, *,
                      text: str | None = None) -> str:
    """A nanoGPT config file (``config/train_*.py``) for the plan.

    ``base``: the nanoGPT config file the plan was made from, as a path or as the `NanoGPTRun`
    `scaleplan.load_nanogpt_config` read from it (its file is read again); ``text``: the file's
    contents, to parse a string instead of reading ``base`` (``base`` still says where
    ``data/<dataset>/meta.pkl`` is). Its settings are kept, in its order, and only what the
    plan decides is replaced (a comment says what each was); without it, the file holds the
    model, the batch and the schedule over train.py's defaults. ``gradient_accumulation_steps``
    is nanoGPT's total over all ranks (train.py divides it by the world size), so it is
    ``grad_accum_steps x world_size``. `scaleplan.load_nanogpt_config` reads the text back into
    the same model, batch and schedule; nothing in it is executed.

    >>> from scaleplan.planning.planner import plan
    >>> from scaleplan.model.config import GPTConfig
    >>> text = to_nanogpt_config(plan(GPTConfig.preset("gpt2"), "RTX 4070",
    ...                               tokens_per_step=524288, total_tokens=10**9))
    >>> [line for line in text.splitlines() if line.startswith(("max_iters", "warmup"))]
    ['max_iters = 1908', 'warmup_iters = 190']
    """
    from scaleplan.files import read_text
    from scaleplan.model.loaders import MAX_CONFIG_BYTES, load_nanogpt_config
    from scaleplan.model.nanogpt_file import parse_assignments
    from scaleplan.planning.exporters import expect_plan

    plan = expect_plan(plan)
    _check_nanogpt_can_run(plan)
    base = _base_path(base, text)
    source = "<plan>" if base is None else os.fsdecode(base)
    run = None
    kept: dict[str, Value] = {}
    notes: tuple[str, ...] = ()
    if base is not None:
        run = load_nanogpt_config(base, text=text)
        if text is None:
            text = read_text(base, limit=MAX_CONFIG_BYTES, what="config file")
        parsed = parse_assignments(text, source=source)
        kept, notes = parsed.values, tuple(parsed.notes)
    decided, reasons = _decided(plan, run, kept)
    lines = _header(plan, source if run is not None else None, reasons, notes)
    for name, value in kept.items():
        if name in decided:
            new = decided.pop(name)
            was = _typed(name, value)
            lines.append(f"{name} = {new!r}" + (f"  # scaleplan: was {was!r}" if new != was
                                                else ""))
        else:
            lines.append(f"{name} = {_typed(name, value)!r}")
    if decided and kept:
        lines.append(f"# set by scaleplan ({source} leaves these at train.py's defaults)")
    lines += [f"{name} = {value!r}" for name, value in decided.items()]
    return "\n".join(lines) + "\n"


def _base_path(base: object, text: str | None) -> str | os.PathLike[str] | None:
    """``base`` as a path: a `NanoGPTRun`'s file, or a path as given; a `ScaleplanError` for
    anything else, or for ``text`` without a ``base`` to name it."""
    from scaleplan.model.loaders import NanoGPTRun

    if isinstance(base, NanoGPTRun):
        if base.source is None:
            raise ScaleplanError("base is a NanoGPTRun that names no file (source=None); pass "
                                 "the config file's path as base, or its contents as text=")
        return base.source
    if base is None and text is not None:
        raise ScaleplanError("text= is the contents of a nanoGPT config file; pass base= too, "
                             "the file's path (e.g. 'config/train_gpt2.py'): it names the file "
                             "in the header and says where data/<dataset>/meta.pkl is")
    if base is not None and not isinstance(base, str | os.PathLike):
        raise ScaleplanError(f"base={shown(base)} must be a nanoGPT config file's path or the "
                             "NanoGPTRun load_nanogpt_config read from it")
    return base


def _check_nanogpt_can_run(plan: Plan) -> None:
    """A `ScaleplanError` when nanoGPT's train.py cannot build the model or run the plan."""
    cfg = plan.model
    if cfg.mlp != "gelu" or cfg.norm != "layernorm" or cfg.position != "learned" \
            or not cfg.tie_embeddings or cfg.n_kv_head != cfg.n_head:
        raise ScaleplanError("nanoGPT builds GPT-2-style models only (gelu MLP, layernorm, "
                             "learned positions, tied head, multi-head attention); export this "
                             "plan with to_deepspeed or to_hf_training_args instead")
    if plan.precision not in NANOGPT_DTYPE:
        raise ScaleplanError(f"precision={plan.precision!r} has no nanoGPT dtype; nanoGPT runs "
                             "'32-true', 'bf16-mixed' and '16-mixed'")
    layout = plan.parallelism
    missing = [what for what, used in [
        (f"activation checkpointing ({plan.checkpointing!r})", plan.checkpointing != "none"),
        (f"the optimizer {plan.optimizer!r} (it runs torch's AdamW)", plan.optimizer != "adamw"),
        ("ZeRO / FSDP / tensor / pipeline parallelism (it runs plain DDP)",
         layout is not None and (layout.zero_stage > 0 or layout.tensor > 1
                                 or layout.pipeline > 1)),
    ] if used]
    if missing:
        raise ScaleplanError(f"this plan fits only with {' and '.join(missing)}, which nanoGPT's "
                             "train.py does not have; export it with to_deepspeed or "
                             "to_hf_training_args instead")


def _decided(plan: Plan, run: NanoGPTRun | None,
             kept: dict[str, Value]) -> tuple[dict[str, Value], list[str]]:
    """The settings the plan decides, in the order a new file lists them, and why the schedule
    changed."""
    cfg = plan.model
    decided: dict[str, Value] = {}
    for key in _MODEL_KEYS:
        if run is None or getattr(run.model, key) != getattr(cfg, key):
            decided[key] = getattr(cfg, key)
    if run is not None:
        _check_model_keys(plan, run, [key for key in _MODEL_KEYS if key in decided])
    if run is None or run.training.seq_len != plan.seq_len:
        decided["block_size"] = plan.seq_len
    decided.update(batch_size=plan.micro_batch_size,
                   gradient_accumulation_steps=plan.grad_accum_steps * plan.world_size,
                   max_iters=plan.steps, dtype=NANOGPT_DTYPE[plan.precision])
    # the run's schedule: the file's over train.py's defaults (TrainingConfig's are the same)
    training = TrainingConfig() if run is None else run.training
    schedule = fit_schedule(
        plan.steps, plan.tokens_per_step, learning_rate=training.learning_rate,
        warmup_iters=training.warmup_iters, min_lr=training.min_lr,
        min_lr_set="min_lr" in kept, eval_interval=training.eval_interval,
        decay_lr=training.decay_lr)
    if schedule.decay_lr:
        decided.update(warmup_iters=schedule.warmup_iters,
                       lr_decay_iters=schedule.lr_decay_iters, min_lr=schedule.min_lr)
    if schedule.eval_interval != training.eval_interval:
        decided["eval_interval"] = schedule.eval_interval
    return decided, list(schedule.reasons)


def _check_model_keys(plan: Plan, run: NanoGPTRun, changed: list[str]) -> None:
    """The plan's model must be one the file can describe: same vocabulary (train.py takes it
    from the data), and the file's own shape when the weights come from elsewhere."""
    where = run.source or "the config file"
    if plan.model.vocab_size != run.model.vocab_size:
        raise ScaleplanError(
            f"the plan's vocab_size={plan.model.vocab_size:,} is not the {run.model.vocab_size:,} "
            f"that {where} trains with (nanoGPT takes it from data/{run.dataset}/meta.pkl, "
            "not from the config); plan the file's model, or export without base")
    if changed and run.init_from != "scratch":
        raise ScaleplanError(
            f"{where} sets init_from = {run.init_from!r}, so nanoGPT takes the model's shape from "
            f"those weights; the plan changes {', '.join(changed)}: plan the file's model, or "
            "export without base")


def _typed(name: str, value: Value) -> Value:
    """``value`` with the type of train.py's default for ``name`` when that loses nothing
    (``dropout = 0`` -> 0.0, ``max_iters = 5e3`` -> 5000)."""
    default = TRAIN_PY_DEFAULTS.get(name)
    if isinstance(value, bool) or isinstance(default, bool):
        return value
    if isinstance(default, float) and isinstance(value, int):
        return float(value)
    if isinstance(default, int) and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _header(plan: Plan, source: str | None, reasons: list[str],
            notes: tuple[str, ...]) -> list[str]:
    kept = f" (planned from {source}; its other settings are kept)" if source else ""
    lines = [
        f"# scaleplan plan: gpt2-shaped {format_count(plan.params.total)}-parameter model on "
        f"{plan.world_size} x {plan.gpu.name}{kept}",
        f"# {plan.micro_batch_size} x {plan.seq_len} x {plan.grad_accum_steps} x "
        f"{plan.world_size} = {plan.tokens_per_step:,} tokens per step; "
        f"{plan.total_tokens:,} tokens in {plan.steps:,} steps",
        "# learning-rate schedule:",
    ]
    lines += [f"#   {reason}" for reason in reasons]
    lines += [f"# not carried over from {source}: {note}" for note in notes]
    return lines

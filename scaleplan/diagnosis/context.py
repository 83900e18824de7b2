"""What `diagnose` knows of a run beside its log: the model and its training settings (read
from a nanoGPT config file, a Hugging Face config.json, or given), whether its learning-rate
schedule is known, whether it starts from scratch, the GPU, and the vocabulary of the
ln(vocab) checks. What cannot be known becomes a note, never an abort: a config scaleplan
cannot model, a GPU it does not know.

>>> notes: list[str] = []
>>> ctx = load_run(None, None, None, notes)
>>> ctx.run is None, notes[0].startswith("no model config")
(True, True)
"""

from __future__ import annotations

import math
import os

from scaleplan.compute.hardware import GPUSpec
from scaleplan.compute.hardware import gpu as lookup_gpu
from scaleplan.diagnosis.datasets import KnownDataset
from scaleplan.diagnosis.divergence import INITIAL_ABOVE_NATS, INITIAL_MAX_STEP
from scaleplan.diagnosis.logs import TrainingLog
from scaleplan.errors import ConfigFileError, ScaleplanError
from scaleplan.model.config import GPTConfig
from scaleplan.model.loaders import NanoGPTRun, load_nanogpt_config
from scaleplan.model.nanogpt_meta import PADDED_GPT2_VOCAB
from scaleplan.model.training_config import TrainingConfig

__all__ = ["NEEDS_MODEL", "ConfigInput", "RunContext", "fresh_start", "gpu_or_note", "load_run",
           "vocab_for_checks", "with_dataset_vocab"]

ConfigInput = NanoGPTRun | GPTConfig | str | os.PathLike[str]

NEEDS_MODEL = ("size-mismatch, val-below-train-dropout, under-trained, past-compute-optimal, "
               "plateau, throughput and the recommendation")


class RunContext:
    """What `diagnose` knows of the run beyond its log: the model and training settings (None
    for the log alone), whether the schedule is known, and whether it starts from scratch."""

    def __init__(self, run: NanoGPTRun | None, *, schedule_known: bool,
                 from_scratch: bool | None) -> None:
        self.run = run
        self.schedule_known = schedule_known
        self.from_scratch = from_scratch


def gpu_or_note(gpu: str | GPUSpec | None, notes: list[str]) -> GPUSpec | None:
    """The GPU, or None with a note saying why the GPU findings are skipped."""
    if gpu is None:
        return None
    try:
        return lookup_gpu(gpu)
    except ScaleplanError as exc:
        notes.append(f"gpu={gpu!r} is not a GPU scaleplan can use ({exc}); the findings that "
                     "need its peak (throughput, mfu-reference-gpu) are skipped; register it "
                     "with scaleplan.compute.hardware.register_gpu")
        return None


def with_dataset_vocab(ctx: RunContext, dataset: KnownDataset | None,
                       notes: list[str]) -> None:
    """Give the model a character-level dataset's vocabulary when its config left nanoGPT's
    default: train.py reads it from the dataset's meta.pkl (65 for shakespeare_char, and
    nanoGPT prints 10.65M parameters for its config, not 29.94M)."""
    run = ctx.run
    if run is None or dataset is None or dataset.vocab_size is None or \
            run.model.vocab_size != PADDED_GPT2_VOCAB:
        return
    ctx.run = run.model_copy(update={"model": run.model.replace(vocab_size=dataset.vocab_size)})
    notes.append(f"vocab_size = {dataset.vocab_size}: nanoGPT reads {dataset.name}'s vocabulary "
                 "from its meta.pkl, not from the config file")


def vocab_for_checks(run: NanoGPTRun | None, dataset_name: str | None, given: int | None,
                     notes: list[str]) -> int | None:
    """The vocabulary for the ln(vocab) checks: the caller's, else the model's; None, with a
    note, without a model or for a character-level dataset of unknown vocabulary."""
    if given is not None:
        return given
    if run is None:
        notes.append("no vocab_size: the ln(vocab) checks (initial-loss, a loss stuck at or "
                     "jumping back to ln(vocab)) are skipped; pass vocab_size= "
                     "(--vocab-size on the command line)")
        return None
    vocab = run.model.vocab_size
    if dataset_name is not None and "char" in dataset_name.lower() and vocab == PADDED_GPT2_VOCAB:
        notes.append(f"dataset {dataset_name!r} looks character-level, and its vocabulary (in "
                     "its meta.pkl) is unknown: the ln(vocab) checks are skipped; pass "
                     "vocab_size= (--vocab-size)")
        return None
    return vocab


def fresh_start(log: TrainingLog, vocab: int | None) -> bool | None:
    """For a run of unknown provenance: True when its first loss (step <= 10) is within a nat
    of ln(vocab), the loss of a fresh model; None when that cannot be told."""
    if vocab is None or log.steps_counted:
        return None
    first = [r for r in log.records if r.step is not None and r.step <= INITIAL_MAX_STEP]
    losses = [r.train_loss if r.train_loss is not None else r.val_loss for r in first[:1]]
    if not losses or losses[0] is None:
        return None
    return abs(losses[0] - math.log(vocab)) <= INITIAL_ABOVE_NATS or None


def load_run(config: ConfigInput | None, training: TrainingConfig | None,
                 claimed: int | None, notes: list[str]) -> RunContext:
    if config is None:
        notes.append(f"no model config: {NEEDS_MODEL} need the model and are skipped")
        return RunContext(None, schedule_known=False, from_scratch=None)
    if isinstance(config, NanoGPTRun):
        notes.extend(config.notes)
        return RunContext(config, schedule_known=True, from_scratch=_scratch(config.init_from))
    if isinstance(config, GPTConfig):
        return RunContext(NanoGPTRun(model=config, training=training or TrainingConfig(),
                                     claimed_params=claimed, source=None),
                          schedule_known=training is not None, from_scratch=None)
    if str(config).endswith(".json"):
        return _load_hf(config, training, claimed, notes)
    run = load_nanogpt_config(config)
    notes.extend(run.notes)  # what reading the file skipped or assumed
    return RunContext(run, schedule_known=True, from_scratch=_scratch(run.init_from))


def _scratch(init_from: object) -> bool:
    """nanoGPT's init_from: 'scratch' starts fresh; 'resume' and 'gpt2*' load weights."""
    return init_from == "scratch"


def _load_hf(config: str | os.PathLike[str], training: TrainingConfig | None,
             claimed: int | None, notes: list[str]) -> RunContext:
    from scaleplan.model.loaders import from_hf

    try:
        model = from_hf(config)
    except ConfigFileError:  # the file cannot be read or is not JSON: the user's to fix
        raise
    except ScaleplanError as exc:  # a model scaleplan cannot build: the log alone
        notes.append(f"{os.fsdecode(config)}: scaleplan cannot model this config ({exc}); the "
                     f"log is diagnosed alone: {NEEDS_MODEL} are skipped")
        return RunContext(None, schedule_known=False, from_scratch=None)
    return RunContext(NanoGPTRun(model=model, training=training or TrainingConfig(),
                           claimed_params=claimed, source=os.fsdecode(config)),
                schedule_known=training is not None, from_scratch=None)



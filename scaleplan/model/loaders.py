"""Read model and run descriptions from the files people already have.

- `from_hf`: a Hugging Face ``config.json`` (gpt2, llama, mistral, qwen2, gemma).
- `load_nanogpt_config`: a nanoGPT config file (``config/train_gpt2.py``), or nanoGPT's
  ``train.py`` itself (its defaults block). The file is Python, but it is parsed with `ast` and
  never executed; see `scaleplan.model.nanogpt_file` for what is accepted, and
  `scaleplan.model.nanogpt_meta` for the data's ``meta.pkl``.
"""

from __future__ import annotations

import os
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from scaleplan.errors import ConfigFileError, ScaleplanError, UnknownNameError, shown
from scaleplan.files import parse_json, read_text
from scaleplan.model.config import GPTConfig, normalize_precision
from scaleplan.model.nanogpt_file import parse_assignments
from scaleplan.model.nanogpt_init import GPT2_MODELS, gpt2_model, read_init_from
from scaleplan.model.nanogpt_meta import PADDED_GPT2_VOCAB, dataset_vocab
from scaleplan.model.training_config import TrainingConfig

__all__ = ["NanoGPTRun", "from_hf", "load_nanogpt_config"]

# Largest file we agree to read: real configs are a few kB.
MAX_CONFIG_BYTES = 1_000_000


def _read_text(path: str | os.PathLike[str]) -> str:
    # At most MAX_CONFIG_BYTES + 1 bytes are read: stat() says 0 for /dev/zero, pipes, /proc.
    return read_text(path, limit=MAX_CONFIG_BYTES, what="config file")


# ----------------------------------------------------------------------------- Hugging Face

# Defaults that transformers applies when a key is absent from config.json, per model_type
# (transformers' GPT2Config, LlamaConfig, MistralConfig, Qwen2Config, GemmaConfig __init__).
_HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "gpt2": {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12,
             "n_head": 12, "n_inner": None, "tie_word_embeddings": True},
    "llama": {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
              "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": None,
              "max_position_embeddings": 2048, "tie_word_embeddings": False,
              "attention_bias": False, "mlp_bias": False, "head_dim": None},
    "mistral": {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
                "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                "max_position_embeddings": 4096 * 32, "tie_word_embeddings": False,
                "head_dim": None},
    "qwen2": {"vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016,
              "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
              "max_position_embeddings": 32768, "tie_word_embeddings": False},
    "gemma": {"vocab_size": 256000, "hidden_size": 3072, "intermediate_size": 24576,
              "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 16,
              "head_dim": 256, "max_position_embeddings": 8192, "tie_word_embeddings": True,
              "attention_bias": False},
}


def _hf_gpt2(c: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "n_layer": c["n_layer"], "n_head": c["n_head"], "n_embd": c["n_embd"],
        "block_size": c["n_positions"], "vocab_size": c["vocab_size"], "bias": True,
        "tie_embeddings": c["tie_word_embeddings"],
    }
    if c["n_inner"] is not None:
        out["mlp_hidden"] = c["n_inner"]
    return out


def _hf_llama_like(c: dict[str, Any], model_type: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "n_layer": c["num_hidden_layers"], "n_head": c["num_attention_heads"],
        "n_embd": c["hidden_size"], "mlp_hidden": c["intermediate_size"],
        "block_size": c["max_position_embeddings"], "vocab_size": c["vocab_size"],
        "mlp": "geglu" if model_type == "gemma" else "swiglu", "norm": "rmsnorm",
        "position": "rope", "bias": False, "tie_embeddings": c["tie_word_embeddings"],
    }
    if c.get("num_key_value_heads") is not None:
        out["n_kv_head"] = c["num_key_value_heads"]
    if c.get("head_dim") is not None:
        out["head_dim"] = c["head_dim"]
    if model_type == "qwen2":
        out["qkv_bias"] = True  # Qwen2Attention: bias on q/k/v projections, none on o_proj
    else:
        out["qkv_bias"] = out["attn_out_bias"] = c.get("attention_bias", False)
        out["mlp_bias"] = c.get("mlp_bias", False)
    return out


SUPPORTED_HF_MODEL_TYPES = tuple(_HF_DEFAULTS)

# GPTConfig field -> the config.json key it came from, to name the key in errors.
_LLAMA_KEYS = {
    "n_layer": "num_hidden_layers", "n_head": "num_attention_heads", "n_embd": "hidden_size",
    "mlp_hidden": "intermediate_size", "block_size": "max_position_embeddings",
    "vocab_size": "vocab_size", "tie_embeddings": "tie_word_embeddings",
    "n_kv_head": "num_key_value_heads", "head_dim": "head_dim", "qkv_bias": "attention_bias",
    "attn_out_bias": "attention_bias", "mlp_bias": "mlp_bias",
}
_HF_KEYS: dict[str, dict[str, str]] = {
    "gpt2": {"block_size": "n_positions", "mlp_hidden": "n_inner",
             "tie_embeddings": "tie_word_embeddings"},
    **{name: _LLAMA_KEYS for name in ("llama", "mistral", "qwen2", "gemma")},
}


def from_hf(config: dict[str, Any] | str | os.PathLike[str]) -> GPTConfig:
    """Build a `GPTConfig` from a Hugging Face ``config.json`` (a dict, or a path to the file).

    Keys that are absent take transformers' defaults for that ``model_type``. Supported:
    gpt2, llama, mistral, qwen2, gemma.

    >>> cfg = from_hf({"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
    ...                "num_key_value_heads": 8, "vocab_size": 128256})
    >>> cfg.n_kv_head, cfg.mlp_hidden
    (8, 14336)
    """
    source = "config.json"
    if isinstance(config, (str, os.PathLike)):
        source = os.fsdecode(config)
        config = parse_json(_read_text(config), source=source)
        if not isinstance(config, dict):
            raise ConfigFileError("expected a JSON object (a dict of settings), got "
                                  f"{type(config).__name__}", path=source)
    elif not isinstance(config, dict):
        raise ScaleplanError(f"from_hf(config={shown(config)}): pass the dict of a "
                             "config.json or the path to one, not a "
                             f"{type(config).__name__}")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in _HF_DEFAULTS:
        if model_type is None:
            raise ScaleplanError(f"{source}: no 'model_type' key; add one of "
                                 f"{', '.join(SUPPORTED_HF_MODEL_TYPES)}")
        raise UnknownNameError("Hugging Face model_type", model_type, SUPPORTED_HF_MODEL_TYPES)
    merged = {**_HF_DEFAULTS[model_type], **config}
    fields = _hf_gpt2(merged) if model_type == "gpt2" else _hf_llama_like(merged, model_type)
    try:
        return GPTConfig.model_validate(fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        message = err["msg"].removeprefix("Value error, ")
        if err["loc"]:  # name the key as the file spells it
            ours = str(err["loc"][0])
            key = _HF_KEYS[model_type].get(ours, ours)
            message = f"{key} = {shown(err.get('input'))}: {message}"
        raise ScaleplanError(f"{source} ({model_type}): {message}") from None


# ----------------------------------------------------------------------------- nanoGPT


class NanoGPTRun(BaseModel):
    """A nanoGPT run read from its config file.

    ``model`` and ``training`` start from nanoGPT's ``train.py`` defaults with the file's
    assignments applied, and ``model`` is the model train.py builds: GPT-2 itself for
    ``init_from = 'gpt2'`` (and -medium, -large, -xl), with the vocabulary of the data's
    ``meta.pkl`` for a character-level dataset. ``claimed_params`` is a size the file's comments
    claim (``# Model (~125M parameters)`` -> 125_000_000), kept so it can be checked against
    `count_params`. ``ignored`` lists assignments that do not describe the model or its
    training budget (``out_dir``, ``wandb_project``, ...); ``notes`` says, one line each, what
    was skipped or assumed.

    >>> run = load_nanogpt_config("train.py", text="# Model (~125M parameters)\\nn_embd = 384\\n")
    >>> run.model.n_embd, run.claimed_params, run.training.micro_batch_size
    (384, 125000000, 12)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: GPTConfig
    training: TrainingConfig
    claimed_params: int | None = Field(None, description="Size claimed in a comment, if any.")
    claimed_params_text: str | None = Field(None, description="The comment text of that claim.")
    source: str | None = Field(None, description="The file read.")
    ignored: tuple[str, ...] = Field((), description="Assignments that were read but not used.")
    dataset: str | None = Field(
        None, description="The data folder the run trains on (nanoGPT's ``dataset``; "
        "'openwebtext', train.py's default, for a config file; None when unknown): it picks the "
        "web-text law for the expected loss.")
    init_from: str = Field(
        "scratch", description="nanoGPT's ``init_from``: 'scratch' (pretraining from random "
        "weights), 'resume' (a checkpoint in out_dir) or a GPT-2 name such as 'gpt2-xl' (a "
        "fine-tune of OpenAI's weights).")
    vocab_known: bool = Field(
        True, description="False when the vocabulary could not be read (a character-level "
        "dataset whose meta.pkl is missing or refused): ``model.vocab_size`` is then train.py's "
        "fallback 50304, not the run's, and so is every count that depends on it.")
    notes: tuple[str, ...] = Field((), description="What was skipped or assumed, one line each.")

    @property
    def fine_tune(self) -> bool:
        """True when the run starts from OpenAI's GPT-2 weights (``init_from = 'gpt2*'``)."""
        return self.init_from in GPT2_MODELS


# nanoGPT train.py defaults that differ from GPTConfig's (model.py) defaults.
_NANOGPT_TRAIN_MODEL_DEFAULTS: dict[str, Any] = {"bias": False, "vocab_size": PADDED_GPT2_VOCAB}
_MODEL_KEYS = {"n_layer", "n_head", "n_embd", "block_size", "bias", "dropout"}
_TRAINING_KEYS = {
    "batch_size": "micro_batch_size",
    "max_iters": "max_iters",
    "learning_rate": "learning_rate",
    "min_lr": "min_lr",
    "warmup_iters": "warmup_iters",
    "lr_decay_iters": "lr_decay_iters",
    "decay_lr": "decay_lr",
    "weight_decay": "weight_decay",
    "beta1": "beta1",
    "beta2": "beta2",
    "grad_clip": "grad_clip",
    "compile": "compile",
    "eval_interval": "eval_interval",
    "eval_iters": "eval_iters",
}
# TrainingConfig field -> the key of the file it came from, to name the key in errors.
_FILE_KEYS = {**{field: key for key, field in _TRAINING_KEYS.items()}, "seq_len": "block_size",
              "grad_accum_steps": "gradient_accumulation_steps", "precision": "dtype"}
# Read, but into neither dict: how the run starts, its vocabulary, its data and precision.
_OTHER_KEYS = {"gradient_accumulation_steps", "dtype", "meta_vocab_size", "dataset",
               "init_from", "eval_only"}


def load_nanogpt_config(path: str | os.PathLike[str], *, text: str | None = None) -> NanoGPTRun:
    """Read a nanoGPT config file without executing it.

    Starts from nanoGPT's ``train.py`` defaults (bias=False, vocab_size=50304, batch_size=12,
    block_size=1024, gradient_accumulation_steps=40, dtype bfloat16 under autocast) and applies
    the file's assignments. ``gradient_accumulation_steps`` in the file is the total over all
    ranks (train.py divides it by the world size), so with one GPU it is ``grad_accum_steps``.
    ``block_size`` sets both the model's block_size and the training ``seq_len``.

    The model is the one train.py builds:

    - ``init_from = 'gpt2'`` (or -medium, -large, -xl): that GPT-2 (vocab 50257, bias, 1024
      positions); the file's n_layer, n_head, n_embd and bias are not used (only ``dropout``
      may be overridden), and a smaller ``block_size`` crops the position table.
    - ``init_from = 'resume'``: the checkpoint's model; the file's values are it only if they
      match the checkpoint (a note says so).
    - otherwise the file's model with the vocabulary of ``data/<dataset>/meta.pkl`` when there
      is one (read as plain data, see `scaleplan.model.nanogpt_meta`), else 50304.

    Given nanoGPT's ``train.py`` itself, its defaults block is read. Pass ``text`` to parse a
    string instead of reading ``path`` (``path`` still says where to look for ``data/``).

    >>> run = load_nanogpt_config("train.py", text="n_embd = 384  # ~125M parameters\\n"
    ...                           "batch_size = 16\\ngradient_accumulation_steps = 2**5\\n")
    >>> run.model.n_embd, run.training.tokens_per_step, run.claimed_params
    (384, 524288, 125000000)
    >>> load_nanogpt_config("eval.py", text="init_from = 'gpt2-xl'\\n").model.n_embd
    1600
    """
    source = os.fsdecode(path) if isinstance(path, (str, os.PathLike)) else str(path)
    if text is None:
        text = _read_text(path)
    elif not isinstance(text, str):
        raise ScaleplanError(f"load_nanogpt_config(text={shown(text)}): text must be the "
                             f"file's contents as a str, not a {type(text).__name__}")
    elif len(text) > MAX_CONFIG_BYTES:
        raise ConfigFileError(f"text of {len(text):,} characters, more than any config file "
                              f"({MAX_CONFIG_BYTES:,} at most)", path=source)
    parsed = parse_assignments(text, source=source)
    values = parsed.values
    notes = list(parsed.notes)
    model, training, ignored = _split(values, source, parsed.lines)
    dataset = _dataset(values.get("dataset", "openwebtext"), source, parsed.lines)
    init_from = read_init_from(values.get("init_from", "scratch"), source=source,
                               lines=parsed.lines)
    vocab_known = True
    if init_from in GPT2_MODELS:
        model = gpt2_model(init_from, values, source=source, lines=parsed.lines, notes=notes)
    else:
        vocab_known = _vocab(model, values, dataset, source, notes)
        if init_from == "resume":
            notes.append("init_from = 'resume': nanoGPT takes n_layer, n_head, n_embd, "
                         "block_size, bias and vocab_size from the checkpoint in out_dir; the "
                         "values here are the run's only if they match it")
        elif init_from != "scratch":
            notes.append(f"init_from = {shown(init_from)} is not one nanoGPT's train.py knows "
                         "('scratch', 'resume', 'gpt2*'); the model is read from this file as "
                         "for 'scratch'")
    if values.get("eval_only") is True:
        notes.append("eval_only = True: train.py evaluates once and exits; nothing is trained")
    return NanoGPTRun(
        model=_build(GPTConfig, model, source, parsed.lines),
        training=_build(TrainingConfig, training, source, parsed.lines),
        claimed_params=parsed.claimed_params,
        claimed_params_text=parsed.claimed_params_text,
        source=source,
        ignored=tuple(ignored),
        dataset=dataset,
        init_from=init_from,
        vocab_known=vocab_known,
        notes=tuple(notes),
    )


def _split(values: dict[str, Any], source: str,
           lines: dict[str, int]) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """The file's values as GPTConfig fields, TrainingConfig fields and unused names."""
    model: dict[str, Any] = dict(_NANOGPT_TRAIN_MODEL_DEFAULTS)
    training: dict[str, Any] = {}
    ignored: list[str] = []
    for key, value in values.items():
        if key in _MODEL_KEYS:
            model[key] = value
        elif key in _TRAINING_KEYS:
            training[_TRAINING_KEYS[key]] = value
        elif key not in _OTHER_KEYS:
            ignored.append(key)
    if "block_size" in values:
        training["seq_len"] = values["block_size"]
    if "gradient_accumulation_steps" in values:
        training["grad_accum_steps"] = values["gradient_accumulation_steps"]
    if "dtype" in values:
        training["precision"] = _precision_from_dtype(values["dtype"], source, lines)
    return model, training, ignored


def _build(cls: type[BaseModel], data: dict[str, Any], source: str,
           lines: dict[str, int]) -> Any:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        message = err["msg"].removeprefix("Value error, ")
        if not err["loc"]:  # a cross-field check: point at the first key it names
            named = set(re.findall(r"\b(\w+)=", message))
            key = next((k for k in lines if k in named), None)
            line = lines.get(key) if key else None
            raise ConfigFileError(message, path=source, line=line) from None
        field = str(err["loc"][0])
        file_key = _FILE_KEYS.get(field, field)
        raise ConfigFileError(f"{file_key} = {shown(err.get('input'))}: {message}", path=source,
                              line=lines.get(file_key)) from None


def _vocab(model: dict[str, Any], values: dict[str, Any], dataset: str, source: str,
           notes: list[str]) -> bool:
    """Set ``model['vocab_size']`` as train.py does; False when it cannot be known."""
    if "meta_vocab_size" in values:  # the value prepare.py's meta.pkl would give
        model["vocab_size"] = values["meta_vocab_size"]
        return True
    found = dataset_vocab(dataset, config_path=source)
    if found.note:
        notes.append(found.note)
    if found.vocab_size is None:
        return False
    model["vocab_size"] = found.vocab_size
    return True


def _dataset(value: object, source: str, lines: dict[str, int]) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise ConfigFileError(f"dataset = {shown(value)} must be the name of a data folder, e.g. "
                              "'openwebtext'", path=source, line=lines.get("dataset"))
    return value.strip()


def _precision_from_dtype(dtype: object, source: str, lines: dict[str, int]) -> str:
    try:
        return normalize_precision(str(dtype))
    except ScaleplanError:
        raise ConfigFileError(
            f"dtype = {shown(dtype)} is not one nanoGPT knows; use 'float32', 'bfloat16' or "
            "'float16'",
            path=source, line=lines.get("dtype"),
        ) from None

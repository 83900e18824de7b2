"""Read model and run descriptions from the files people already have.

- `from_hf`: a Hugging Face ``config.json`` (gpt2, llama, mistral, qwen2, gemma).
- `load_nanogpt_config`: a nanoGPT config file (``config/train_gpt2.py``). The file is Python, but
  it is parsed with `ast` and never executed; see `scaleplan.model.nanogpt_file` for what is
  accepted.
"""

from __future__ import annotations

import os
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from scaleplan.errors import ConfigFileError, ScaleplanError, UnknownNameError, shown
from scaleplan.files import parse_json, read_text
from scaleplan.model.config import GPTConfig, TrainingConfig, normalize_precision
from scaleplan.model.nanogpt_file import parse_assignments

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
    assignments applied. ``claimed_params`` is a size the file's comments claim
    (``# Model (~125M parameters)`` -> 125_000_000), kept so it can be checked against
    `count_params`. ``ignored`` lists assignments that do not describe the model or its
    training budget (``out_dir``, ``wandb_project``, ...).

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


# nanoGPT train.py defaults that differ from GPTConfig's (model.py) defaults.
_NANOGPT_TRAIN_MODEL_DEFAULTS: dict[str, Any] = {"bias": False, "vocab_size": 50304}
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


def load_nanogpt_config(path: str | os.PathLike[str], *, text: str | None = None) -> NanoGPTRun:
    """Read a nanoGPT config file without executing it.

    Starts from nanoGPT's ``train.py`` defaults (bias=False, vocab_size=50304, batch_size=12,
    block_size=1024, gradient_accumulation_steps=40, dtype bfloat16 under autocast) and applies
    the file's assignments. ``gradient_accumulation_steps`` in the file is the total over all
    ranks (train.py divides it by the world size), so with one GPU it is ``grad_accum_steps``.
    ``block_size`` sets both the model's block_size and the training ``seq_len``.

    Pass ``text`` to parse a string instead of reading ``path`` (``path`` then only names it in
    messages).

    >>> run = load_nanogpt_config("train.py", text="n_embd = 384  # ~125M parameters\\n"
    ...                           "batch_size = 16\\ngradient_accumulation_steps = 2**5\\n")
    >>> run.model.n_embd, run.training.tokens_per_step, run.claimed_params
    (384, 524288, 125000000)
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

    model: dict[str, Any] = dict(_NANOGPT_TRAIN_MODEL_DEFAULTS)
    training: dict[str, Any] = {}
    ignored: list[str] = []
    for key, value in values.items():
        if key in _MODEL_KEYS:
            model[key] = value
        elif key in _TRAINING_KEYS:
            training[_TRAINING_KEYS[key]] = value
        elif key not in ("gradient_accumulation_steps", "dtype", "meta_vocab_size", "dataset"):
            ignored.append(key)
    if "block_size" in values:
        training["seq_len"] = values["block_size"]
    if "gradient_accumulation_steps" in values:
        training["grad_accum_steps"] = values["gradient_accumulation_steps"]
    if "dtype" in values:
        training["precision"] = _precision_from_dtype(values["dtype"], source, parsed.lines)
    if "meta_vocab_size" in values:  # set by prepare.py's meta.pkl (character-level data)
        model["vocab_size"] = values["meta_vocab_size"]

    def build(cls: type[BaseModel], data: dict[str, Any]) -> Any:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            message = err["msg"].removeprefix("Value error, ")
            if not err["loc"]:  # a cross-field check: point at the first key it names
                named = set(re.findall(r"\b(\w+)=", message))
                key = next((k for k in parsed.lines if k in named), None)
                line = parsed.lines.get(key) if key else None
                raise ConfigFileError(message, path=source, line=line) from None
            field = str(err["loc"][0])
            file_key = next((k for k, v in _TRAINING_KEYS.items() if v == field), field)
            raise ConfigFileError(f"{file_key} = {shown(err.get('input'))}: {message}", path=source,
                                  line=parsed.lines.get(file_key)) from None

    return NanoGPTRun(
        model=build(GPTConfig, model),
        training=build(TrainingConfig, training),
        claimed_params=parsed.claimed_params,
        claimed_params_text=parsed.claimed_params_text,
        source=source,
        ignored=tuple(ignored),
        dataset=_dataset(values.get("dataset", "openwebtext"), source, parsed.lines),
    )


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

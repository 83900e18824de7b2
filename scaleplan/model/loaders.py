"""Read model and run descriptions from the files people already have.

- `from_hf`: a Hugging Face ``config.json`` of 26 decoder-only model types (gpt2, llama, mistral,
  mixtral, deepseek_v3, ...: `SUPPORTED_HF_MODEL_TYPES`), read by `scaleplan.model.hf_keys` and
  mapped by `scaleplan.model.hf_types` (dense) and `scaleplan.model.hf_moe` (mixture of experts).
- `load_nanogpt_config`: a nanoGPT config file (``config/train_gpt2.py``), or nanoGPT's
  ``train.py`` itself (its defaults block). The file is Python, but it is parsed with `ast` and
  never executed; see `scaleplan.model.nanogpt_file` for what is accepted, and
  `scaleplan.model.nanogpt_meta` for the data's ``meta.pkl``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from scaleplan.errors import ConfigFileError, ScaleplanError, shown
from scaleplan.files import parse_json, read_text
from scaleplan.model.config import GPTConfig, normalize_precision
from scaleplan.model.hf_keys import HFConfig, UnsupportedKeyError, UnsupportedModelTypeError
from scaleplan.model.hf_moe import MOE_TYPES
from scaleplan.model.hf_types import DENSE_TYPES
from scaleplan.model.nanogpt_file import parse_assignments
from scaleplan.model.nanogpt_init import GPT2_MODELS, gpt2_model, read_init_from
from scaleplan.model.nanogpt_meta import PADDED_GPT2_VOCAB, dataset_vocab
from scaleplan.model.training_config import TrainingConfig

__all__ = ["SUPPORTED_HF_MODEL_TYPES", "NanoGPTRun", "UnsupportedModelTypeError", "from_hf",
           "load_nanogpt_config"]

# Largest file we agree to read: real configs are a few kB.
MAX_CONFIG_BYTES = 1_000_000


def _read_text(path: str | os.PathLike[str]) -> str:
    # At most MAX_CONFIG_BYTES + 1 bytes are read: stat() says 0 for /dev/zero, pipes, /proc.
    return read_text(path, limit=MAX_CONFIG_BYTES, what="config file")


# ----------------------------------------------------------------------------- Hugging Face

_TYPES: dict[str, Callable[[HFConfig], dict[str, Any]]] = {**DENSE_TYPES, **MOE_TYPES}
SUPPORTED_HF_MODEL_TYPES = tuple(sorted([*_TYPES, "gemma3"]))
"""The Hugging Face ``model_type`` values `from_hf` reads."""

# GPTConfig field -> the config.json key it comes from, to name the key in errors: the keys of
# most types, then each type's own spellings.
_FIELD_KEYS = {
    "n_layer": "num_hidden_layers", "n_head": "num_attention_heads", "n_embd": "hidden_size",
    "mlp_hidden": "intermediate_size", "block_size": "max_position_embeddings",
    "vocab_size": "vocab_size", "tie_embeddings": "tie_word_embeddings",
    "n_kv_head": "num_key_value_heads", "head_dim": "head_dim", "qkv_bias": "attention_bias",
    "attn_out_bias": "attention_bias", "mlp_bias": "mlp_bias", "sliding_window": "sliding_window",
    "sliding_window_layers": "layer_types", "attn_softcap": "attn_logit_softcapping",
    "final_softcap": "final_logit_softcapping", "rotary_fraction": "partial_rotary_factor",
    "embed_dim": "word_embed_proj_dim", "moe.top_k": "num_experts_per_tok",
    "moe.expert_hidden": "moe_intermediate_size", "moe.n_experts": "num_local_experts",
    "moe.n_shared_experts": "n_shared_experts",
    **{f"mla.{key}": key for key in ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim",
                                     "qk_rope_head_dim", "v_head_dim")},
}
_GPT2_KEYS = {"n_layer": "n_layer", "n_head": "n_head", "n_embd": "n_embd",
              "block_size": "n_positions", "mlp_hidden": "n_inner", "rotary_fraction": "rotary_dim"}
_TYPE_KEYS: dict[str, dict[str, str]] = {
    "gpt2": _GPT2_KEYS, "gptj": _GPT2_KEYS,
    "mpt": {"n_layer": "n_layers", "n_head": "n_heads", "n_embd": "d_model",
            "block_size": "max_seq_len"},
    "bloom": {"n_layer": "n_layer", "n_head": "n_head"},
    "opt": {"mlp_hidden": "ffn_dim", "bias": "enable_bias"},
    "falcon": {"n_kv_head": "num_kv_heads", "mlp_hidden": "ffn_hidden_size"},
    "gpt_neox": {"rotary_fraction": "rotary_pct"},
    "starcoder2": {"bias": "use_bias"},
    "stablelm": {"qkv_bias": "use_qkv_bias"},
    "mixtral": {"moe.expert_hidden": "intermediate_size"},
    "deepseek_v2": {"moe.n_experts": "n_routed_experts"},
    "deepseek_v3": {"moe.n_experts": "n_routed_experts"},
}


def from_hf(config: dict[str, Any] | str | os.PathLike[str]) -> GPTConfig:
    """Build a `GPTConfig` from a Hugging Face ``config.json`` (a dict, or a path to the file).

    The keys are read as transformers 5.25 reads them for the file's ``model_type``: absent keys
    take that config class's defaults, its aliases count (a gpt2 config may say
    ``hidden_size`` for ``n_embd``), and the model is the one its modeling code builds, so that
    `count_params` gives what ``AutoModelForCausalLM.from_config`` holds. Supported:
    `SUPPORTED_HF_MODEL_TYPES` (docs/configs.md lists what each maps to). For ``gemma3`` (the
    multimodal wrapper) the language model is read from ``text_config``: the vision tower and
    projector are not counted.

    A key that changes the model in a way `GPTConfig` does not describe is an error naming it
    (`scaleplan.model.hf_keys.UnsupportedKeyError`), e.g. gpt2's ``add_cross_attention: true``; keys
    that build no parameters and change no compute (``torch_dtype``, ``rope_theta``, dropouts,
    ``quantization_config``: the unquantised model is counted) are not read.

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
    if model_type is None:
        raise ScaleplanError(f"{source}: no 'model_type' key; add one of "
                             f"{', '.join(SUPPORTED_HF_MODEL_TYPES)}")
    if not isinstance(model_type, str) or model_type not in SUPPORTED_HF_MODEL_TYPES:
        raise UnsupportedModelTypeError(
            f"{source}: model_type {shown(model_type)} is not one scaleplan models yet: it "
            "counts these transformers types only, and a type with a similar name is another "
            f"architecture, so none is suggested: {', '.join(SUPPORTED_HF_MODEL_TYPES)}")
    kind = model_type
    if model_type == "gemma3":  # Gemma3ForConditionalGeneration: its language model only
        config = config.get("text_config") or {}
        if not isinstance(config, dict):
            raise ScaleplanError(f"{source} (gemma3): text_config = {shown(config)} must be "
                                 "a JSON object")
        kind = "gemma3_text"
    hf = HFConfig(config, kind)
    where = f"{source} ({model_type})"
    try:
        fields = _TYPES[kind](hf)
        return GPTConfig.model_validate(fields)
    except ValidationError as exc:
        raise ScaleplanError(f"{where}: {_validation_message(exc, hf)}") from None
    except UnsupportedKeyError as exc:
        raise UnsupportedKeyError(f"{where}: {exc}") from None
    except ScaleplanError as exc:
        raise ScaleplanError(f"{where}: {exc}") from None


def _validation_message(exc: ValidationError, hf: HFConfig) -> str:
    """The first error of ``exc``, naming the config.json key as the file spells it."""
    err = exc.errors()[0]
    message = err["msg"].removeprefix("Value error, ")
    keys = {**_FIELD_KEYS, **_TYPE_KEYS.get(hf.model_type, {})}
    loc = [str(part) for part in err["loc"][:2]]

    def key(field: str, nested: str = "") -> str:
        return hf.name(keys.get(f"{nested}.{field}", keys.get(field, field)))

    if loc in ([], ["moe"], ["mla"]):  # a check across fields: its 'field=value's, renamed
        nested = loc[0] if loc else ""
        return re.sub(r"\b(\w+)=", lambda m: f"{key(m[1], nested)}=", message)
    return f"{key('.'.join(loc))} = {shown(err.get('input'))}: {message}"


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

    model: GPTConfig = Field(description="The model train.py builds from the file (see above).")
    training: TrainingConfig = Field(description="Batch, length, precision and schedule: "
                                     "train.py's defaults with the file's values.")
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

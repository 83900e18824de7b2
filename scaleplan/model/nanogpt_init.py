"""How nanoGPT's ``train.py`` starts a run: ``init_from``, and GPT-2's own model for a fine-tune.

``init_from = 'scratch'`` builds the config's model from random weights; ``'resume'`` loads the
checkpoint in ``out_dir``, whose model arguments win over the config's; ``'gpt2'``,
``'gpt2-medium'``, ``'gpt2-large'`` and ``'gpt2-xl'`` load OpenAI's weights through model.py's
``GPT.from_pretrained``, which fixes n_layer, n_head and n_embd by name, forces vocab_size 50257,
block_size 1024 and bias True, and lets the config override only ``dropout``; train.py then crops
the position table to a smaller ``block_size``.
"""

from __future__ import annotations

from typing import Any

from scaleplan.errors import ConfigFileError, shown
from scaleplan.model.presets import PRESETS

__all__ = ["GPT2_MODELS", "gpt2_model", "read_init_from"]

#: The names nanoGPT's ``GPT.from_pretrained`` loads (model.py); scaleplan's presets of the
#: same names hold their n_layer, n_head, n_embd and vocab_size.
GPT2_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
# model.py from_pretrained: "always 1024 for GPT model checkpoints", "always True" for bias.
_GPT2_BLOCK_SIZE = 1024
# Longer than any init_from a config sets ('gpt2-medium', 'resume', a fork's checkpoint name).
_MAX_NAME_LENGTH = 200


def read_init_from(value: object, *, source: str, lines: dict[str, int]) -> str:
    """``init_from`` as train.py reads it, stripped; an error naming the line for a value train.py
    would fail on (not a string, or a GPT-2 name ``from_pretrained`` does not know).

    >>> read_init_from(" gpt2-xl", source="c.py", lines={})
    'gpt2-xl'
    """
    name = value.strip() if isinstance(value, str) else ""
    if not name or len(name) > _MAX_NAME_LENGTH:
        raise ConfigFileError(f"init_from = {shown(value)} must be 'scratch', 'resume' or a "
                              f"GPT-2 name ({', '.join(GPT2_MODELS)})", path=source,
                              line=lines.get("init_from"))
    if name.startswith("gpt2") and name not in GPT2_MODELS:  # train.py hands it to from_pretrained
        raise ConfigFileError(f"init_from = {shown(value)} is no GPT-2 nanoGPT can load; use one "
                              f"of {', '.join(GPT2_MODELS)}", path=source,
                              line=lines.get("init_from"))
    return name


def gpt2_model(name: str, values: dict[str, Any], *, source: str, lines: dict[str, int],
               notes: list[str]) -> dict[str, Any]:
    """The `GPTConfig` fields of GPT-2 ``name`` as nanoGPT's ``GPT.from_pretrained`` builds it
    from a config's ``values``: only dropout is overridden, and a block_size below 1024 crops
    the position table (``crop_block_size``). What the config sets that is not used goes to
    ``notes``; a block_size above 1024 is an error (nanoGPT would fail on it).

    >>> notes = []
    >>> gpt2_model("gpt2", {"n_layer": 6, "block_size": 256}, source="c.py", lines={},
    ...            notes=notes)["block_size"]
    256
    >>> len(notes)
    2
    """
    model = {**PRESETS[name], "bias": True, "block_size": _GPT2_BLOCK_SIZE,
             "dropout": values.get("dropout", 0.0)}
    unused = [f"{key} = {shown(values[key])}" for key in ("n_layer", "n_head", "n_embd", "bias",
                                                          "meta_vocab_size") if key in values]
    if unused:
        notes.append(f"{', '.join(unused)} not used: init_from = {name!r} builds {name} "
                     f"(n_layer {model['n_layer']}, n_head {model['n_head']}, n_embd "
                     f"{model['n_embd']}, vocab 50257, bias); nanoGPT overrides only dropout")
    block = values.get("block_size", _GPT2_BLOCK_SIZE)
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        return model  # not a length: the training seq_len check names it
    if block < _GPT2_BLOCK_SIZE:
        model["block_size"] = block
        notes.append(f"block_size = {block} crops {name}'s {_GPT2_BLOCK_SIZE} positions to "
                     f"{block} (nanoGPT's crop_block_size)")
    elif block > _GPT2_BLOCK_SIZE:
        raise ConfigFileError(f"block_size = {shown(block)}: {name} has "
                              f"{_GPT2_BLOCK_SIZE} positions and nanoGPT only crops them; use a "
                              f"block_size of at most {_GPT2_BLOCK_SIZE}", path=source,
                              line=lines.get("block_size"))
    return model

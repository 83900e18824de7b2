"""`sweep`: memory, fit and FLOPs over grids of models, micro-batches, lengths and GPUs at once.

One Python-level step per (n_layer, n_embd) model; the micro-batch x sequence-length grid is
evaluated as numpy arrays by `scaleplan.memory.limits.memory_grid` (the same arithmetic as
`training_memory`), and compared with every GPU in one broadcast. Bytes and FLOPs are float64
(exact below 2^53, and never wrapping as int64 would); parameter counts are exact ints per model.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from scaleplan.checks import whole, wholes
from scaleplan.compute.flops import flops_per_token
from scaleplan.compute.hardware import GPUSpec
from scaleplan.compute.hardware import gpu as lookup_gpu
from scaleplan.compute.throughput import expect_config
from scaleplan.errors import ScaleplanError, shown
from scaleplan.memory.limits import available_memory_bytes, memory_grid
from scaleplan.model.config import GPTConfig
from scaleplan.model.params import count_params
from scaleplan.planning.arguments import passed_options

__all__ = ["MAX_GRID_VALUE", "MAX_SWEEP_MODEL_LENGTHS", "MAX_SWEEP_ROWS", "SWEEP_DTYPE", "sweep"]

# Bounds on what one call builds, so a grid such as range(10**12) is refused at once instead of
# filling memory for hours: 10^7 records (~1.7 GB) and 10^5 (model, seq_len) pairs evaluated one
# at a time in Python (~1 ms each). Split a larger sweep into several calls.
MAX_SWEEP_ROWS = 10**7
MAX_SWEEP_MODEL_LENGTHS = 10**5
# 2^40: past any real layer count, width, batch or length; float64 still holds it exactly.
MAX_GRID_VALUE = 2**40

SWEEP_DTYPE = np.dtype([
    ("n_layer", np.int64),
    ("n_embd", np.int64),
    ("micro_batch_size", np.int64),
    ("seq_len", np.int64),
    ("gpu", "U24"),
    ("params", np.float64),           # count_params(...).total (exact below 2^53)
    ("memory_bytes", np.float64),     # training_memory(...).total
    ("available_bytes", np.float64),  # available_memory_bytes(gpu)
    ("fits", np.bool_),
    ("flops_per_token", np.float64),  # flops_per_token(cfg, seq_len=...), causal, model FLOPs
])


def sweep(
    *,
    n_layer: Sequence[int],
    n_embd: Sequence[int],
    micro_batch_size: Sequence[int],
    seq_len: Sequence[int],
    gpus: Sequence[str | GPUSpec],
    base: GPTConfig | None = None,
    head_dim: int = 64,
    **memory_options: Any,
) -> NDArray[np.void]:
    """Every combination of the grids, as a numpy structured array of `SWEEP_DTYPE` records.

    Each model is ``base`` (default: nanoGPT's GPT-2 config) with ``n_layer``, ``n_embd`` and
    ``n_head = n_embd // head_dim``; ``memory_options`` go to `memory_grid` (precision,
    optimizer, attention, checkpointing, parallelism, ...). Filter with numpy:
    ``r[r["fits"] & (r["gpu"] == "RTX 4070")]``. A single value where a grid goes is a grid of
    one value (``gpus="RTX 4070"``, ``n_layer=12``).

    >>> r = sweep(n_layer=[12], n_embd=[768], micro_batch_size=[8, 16], seq_len=[1024],
    ...           gpus=["RTX 4070"])
    >>> r["micro_batch_size"].tolist(), r["fits"].tolist()
    ([8, 16], [True, False])
    """
    layers, widths, batches, lengths, names_given = _grids(n_layer, n_embd, micro_batch_size,
                                                            seq_len, gpus)
    b = np.asarray(batches, dtype=np.float64)
    s = np.asarray(lengths, dtype=np.float64)
    specs = [lookup_gpu(g) for g in names_given]
    head_dim = whole("head_dim", head_dim, maximum=MAX_GRID_VALUE, example="head_dim=64")
    for w in widths:
        if w % head_dim:
            raise ScaleplanError(f"n_embd={w} is not a multiple of head_dim={head_dim}; "
                                 f"try n_embd={max(head_dim, round(w / head_dim) * head_dim)}")
    base = GPTConfig() if base is None else expect_config("base", base)
    memory_options = passed_options("sweep", memory_grid, memory_options,
                                    reserved=("micro_batch_size", "seq_len"))
    available = np.asarray([available_memory_bytes(g) for g in specs], dtype=np.float64)
    names = np.asarray([g.name for g in specs])
    B, S, G = np.meshgrid(b, s, np.arange(len(specs)), indexing="ij")
    per_model = B.size
    out = np.empty(len(layers) * len(widths) * per_model, dtype=SWEEP_DTYPE)
    for i, (L, d) in enumerate(itertools.product(layers, widths)):
        cfg = base.replace(n_layer=L, n_embd=d, n_head=d // head_dim, n_kv_head=None,
                           head_dim=None, mlp_hidden=None)
        mem = memory_grid(cfg, micro_batch_size=b[:, None], seq_len=s[None, :],
                          **memory_options)  # (len(b), len(s))
        flops = np.asarray([flops_per_token(cfg, seq_len=int(x)) for x in s])
        rows = out[i * per_model:(i + 1) * per_model]
        rows["n_layer"], rows["n_embd"] = L, d
        rows["micro_batch_size"] = B.ravel()
        rows["seq_len"] = S.ravel()
        rows["gpu"] = names[G.ravel()]
        rows["params"] = float(count_params(cfg).total)
        total = np.broadcast_to(mem[:, :, None], B.shape).ravel()
        rows["memory_bytes"] = total
        rows["available_bytes"] = available[G.ravel()]
        rows["fits"] = total <= rows["available_bytes"]
        rows["flops_per_token"] = np.broadcast_to(flops[None, :, None], B.shape).ravel()
    return out


def _listed(name: str, values: object, single: type | tuple[type, ...], cap: int) -> list[Any]:
    """``values`` as a list: a lone value (one of ``single``, or anything not iterable) is a
    grid of one; a grid longer than ``cap`` is refused, reading at most ``cap + 1`` items (a
    range is measured, not read), so an endless iterator never hangs."""
    if isinstance(values, single):
        return [values]
    label = shown(values)  # before an iterator is read
    try:
        too_long = len(values) > cap  # type: ignore[arg-type]
    except OverflowError:  # a range longer than sys.maxsize
        too_long = True
    except TypeError:  # no length: an iterator, a number, a 0-d array
        too_long = False
    try:
        items = [] if too_long else list(itertools.islice(iter(values), cap + 1))  # type: ignore[call-overload]
    except TypeError:  # a number, a numpy scalar or 0-d array: one value
        return [values]
    if too_long or len(items) > cap:
        raise ScaleplanError(f"{name}={label} holds more than {cap:,} values; split the "
                             "sweep into several calls")
    return items


def _grids(n_layer: object, n_embd: object, micro_batch_size: object, seq_len: object,
           gpus: object) -> tuple[list[int], list[int], list[int], list[int], list[Any]]:
    """The grids as lists (a lone value a grid of one), their sizes checked before any value is
    (so a huge grid is refused at once), then each value as a Python int up to `MAX_GRID_VALUE`."""
    listed = [_listed("n_layer", n_layer, (str, bytes), MAX_SWEEP_MODEL_LENGTHS),
              _listed("n_embd", n_embd, (str, bytes), MAX_SWEEP_MODEL_LENGTHS),
              _listed("micro_batch_size", micro_batch_size, (str, bytes), MAX_SWEEP_ROWS),
              _listed("seq_len", seq_len, (str, bytes), MAX_SWEEP_MODEL_LENGTHS)]
    names = _listed("gpus", gpus, (str, GPUSpec), MAX_SWEEP_ROWS)
    layers, widths, batches, lengths = (len(values) for values in listed)
    _check_size(layers * widths, lengths, batches * lengths * len(names))
    grids = [wholes(name, values) for name, values in
             zip(("n_layer", "n_embd", "micro_batch_size", "seq_len"), listed, strict=True)]
    if not names:
        raise ScaleplanError("gpus is empty; give at least one GPU name")
    for name, grid in zip(("n_layer", "n_embd", "micro_batch_size", "seq_len"), grids,
                          strict=True):
        if max(grid) > MAX_GRID_VALUE:
            raise ScaleplanError(f"{name} holds {shown(max(grid))}, beyond any real run; every "
                                 f"value must be at most {MAX_GRID_VALUE:,}")
    return grids[0], grids[1], grids[2], grids[3], names


def _check_size(models: int, lengths: int, per_model: int) -> None:
    """Refuse a sweep past `MAX_SWEEP_ROWS` records or `MAX_SWEEP_MODEL_LENGTHS` (model,
    seq_len) pairs before building it."""
    if models * per_model > MAX_SWEEP_ROWS:
        raise ScaleplanError(
            f"the sweep has {models * per_model:,} records (n_layer x n_embd x micro_batch_size "
            f"x seq_len x gpus), more than {MAX_SWEEP_ROWS:,}; split it into several calls")
    if models * lengths > MAX_SWEEP_MODEL_LENGTHS:
        raise ScaleplanError(
            f"the sweep evaluates {models * lengths:,} (model, seq_len) pairs (n_layer x n_embd "
            f"x seq_len), more than {MAX_SWEEP_MODEL_LENGTHS:,}; split it into several calls")



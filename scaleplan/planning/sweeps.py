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

from scaleplan.checks import wholes
from scaleplan.compute.flops import flops_per_token
from scaleplan.compute.hardware import GPUSpec
from scaleplan.compute.hardware import gpu as lookup_gpu
from scaleplan.errors import ScaleplanError
from scaleplan.memory.limits import available_memory_bytes, memory_grid
from scaleplan.model.config import GPTConfig
from scaleplan.model.params import count_params

__all__ = ["SWEEP_DTYPE", "sweep"]

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
    ``r[r["fits"] & (r["gpu"] == "RTX 4070")]``.

    >>> r = sweep(n_layer=[12], n_embd=[768], micro_batch_size=[8, 16], seq_len=[1024],
    ...           gpus=["RTX 4070"])
    >>> r["micro_batch_size"].tolist(), r["fits"].tolist()
    ([8, 16], [True, False])
    """
    layers = wholes("n_layer", n_layer)
    widths = wholes("n_embd", n_embd)
    b = np.asarray(wholes("micro_batch_size", micro_batch_size), dtype=np.float64)
    s = np.asarray(wholes("seq_len", seq_len), dtype=np.float64)
    specs = [lookup_gpu(g) for g in gpus]
    if not specs:
        raise ScaleplanError("gpus is empty; give at least one GPU name")
    for w in widths:
        if w % head_dim:
            raise ScaleplanError(f"n_embd={w} is not a multiple of head_dim={head_dim}; "
                                 f"try n_embd={max(head_dim, round(w / head_dim) * head_dim)}")
    base = GPTConfig() if base is None else base
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

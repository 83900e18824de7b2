"""Bytes per parameter for weights, gradients and optimizer states, by precision and optimizer.

The parameter tensors are listed one by one (`param_shapes`) because two optimizers size their
state per tensor: Adafactor factors each matrix's second moment into a row and a column vector,
and bitsandbytes' 8-bit optimizers keep tensors smaller than 4096 elements in 32-bit state.
"""

from __future__ import annotations

import functools
from typing import Literal, get_args

from scaleplan.checks import canonical
from scaleplan.errors import ScaleplanError
from scaleplan.model.config import GPTConfig, Precision
from scaleplan.model.shapes import across_model, parameters

__all__ = [
    "ADAMW_STEP_BYTES",
    "OPTIMIZERS",
    "OPTIMIZER_ALIASES",
    "OptimizerName",
    "gradient_bytes",
    "optimizer_state_bytes",
    "param_shapes",
    "shape_stats",
    "weight_bytes",
]

OptimizerName = Literal["adamw", "adamw-8bit", "sgd", "sgd-momentum", "adafactor", "lion"]
OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)
OPTIMIZER_ALIASES = {"adam": "adamw", "adamw8bit": "adamw-8bit", "adamw_8bit": "adamw-8bit",
                      "paged-adamw-8bit": "adamw-8bit", "momentum": "sgd-momentum"}

# bitsandbytes (Dettmers et al. 2022, "8-bit Optimizers via Block-wise Quantization", Sec. 2):
# block-wise quantisation over blocks of 2048 values, one fp32 absmax per block; tensors with
# fewer than 4096 elements keep 32-bit state (bitsandbytes' default min_8bit_size=4096).
BNB_BLOCK_SIZE = 2048
BNB_MIN_8BIT_SIZE = 4096

# `param_shapes` lists tensors one by one; past this many it refuses (the totals never need it).
MAX_LISTED_TENSORS = 10**6

# torch.optim.AdamW (torch >= 2.0) keeps ``state["step"]`` as a float32 scalar tensor per
# parameter tensor (torch/optim/adamw.py, _init_group).
ADAMW_STEP_BYTES = 4

# Parameter dtype bytes / gradient dtype bytes / fp32 master copy bytes, by precision.
_PARAM_BYTES = {"32-true": 4, "bf16-mixed": 4, "16-mixed": 4, "bf16-true": 2,
                "bf16-fp32-master": 2}
_GRAD_BYTES = {"32-true": 4, "bf16-mixed": 4, "16-mixed": 4, "bf16-true": 2,
               "bf16-fp32-master": 4}
_MASTER_BYTES = {"32-true": 0, "bf16-mixed": 0, "16-mixed": 0, "bf16-true": 0,
                 "bf16-fp32-master": 4}


def normalize_optimizer(name: str) -> OptimizerName:
    """The canonical optimizer name (``"adam"`` -> ``"adamw"``); unknown names list valid ones.

    >>> normalize_optimizer("AdamW_8bit")
    'adamw-8bit'
    """
    return canonical("optimizer", name, OPTIMIZERS, OPTIMIZER_ALIASES)  # type: ignore[return-value]


def shape_stats(cfg: GPTConfig) -> tuple[int, int]:
    """(elements, tensors) over `param_shapes`; cached per config, since a plan evaluates the
    same model many times. Plain sums, so a symbolic model gives expressions.

    >>> shape_stats(GPTConfig.preset("gpt2"))
    (124439808, 148)
    """
    if isinstance(cfg, GPTConfig):  # frozen and hashable; symbolic models go uncached
        return _cached_shape_stats(cfg)
    return _shape_stats(cfg)


def _shape_stats(cfg: GPTConfig) -> tuple[int, int]:
    tensors = parameters(cfg)
    return across_model(cfg, tensors), across_model(cfg, tensors, lambda t: 1)


_cached_shape_stats = functools.lru_cache(maxsize=256)(_shape_stats)


def param_shapes(cfg: GPTConfig) -> list[tuple[int, ...]]:
    """Shapes of every parameter tensor of ``cfg``, a tied head once (as `count_params` counts):
    `scaleplan.model.shapes.parameters` with a block's tensors repeated ``n_layer`` times.

    >>> import math
    >>> sum(math.prod(p) for p in param_shapes(GPTConfig.preset("gpt2")))
    124439808
    """
    tensors = shape_stats(cfg)[1]
    if tensors > MAX_LISTED_TENSORS:  # n_layer=10**9 ran out of memory building the list
        raise ScaleplanError(
            f"param_shapes would list {tensors:,} tensors for n_layer={cfg.n_layer:,}, one by "
            f"one (at most {MAX_LISTED_TENSORS:,}); for totals use shape_stats or "
            "scaleplan.model.shapes.across_model, which count a block once")
    return [t.shape for t in parameters(cfg) for _ in range(cfg.n_layer if t.per_block else 1)]


def weight_bytes(n_params: int, precision: Precision) -> int:
    """Bytes of the model's parameters: fp32 for ``32-true`` and the autocast modes, bf16 for
    ``bf16-true`` and ``bf16-fp32-master`` (whose fp32 master copy is optimizer state).

    >>> weight_bytes(1000, "bf16-mixed")
    4000
    """
    return n_params * _PARAM_BYTES[precision]


def gradient_bytes(n_params: int, precision: Precision) -> int:
    """Bytes of the gradients: the parameter dtype, except fp32 for ``bf16-fp32-master``
    (Megatron-LM accumulates gradients in fp32).

    >>> gradient_bytes(1000, "bf16-fp32-master")
    4000
    """
    return n_params * _GRAD_BYTES[precision]


def optimizer_state_bytes(cfg: GPTConfig, optimizer: OptimizerName, precision: Precision) -> int:
    """Bytes of the optimizer's state, including an fp32 master copy where the precision has one.

    States are kept in the dtype of the weights they update (fp32 master weights when present):

    - ``adamw``: first and second moments, 2 states (Loshchilov & Hutter 2019), plus torch's
      4-byte ``step`` tensor per parameter tensor;
    - ``adamw-8bit``: 2 one-byte states plus one fp32 absmax per 2048-value block; tensors under
      4096 elements keep 32-bit states (bitsandbytes' defaults, Dettmers et al. 2022);
    - ``sgd``: none; ``sgd-momentum``: one momentum buffer; ``lion``: one momentum (Chen et al.
      2023, "Symbolic Discovery of Optimization Algorithms");
    - ``adafactor``: no first moment (beta1=None, the paper's default) and a factored second
      moment, rows + columns for each matrix and a full vector for 1-d tensors (Shazeer & Stern
      2018, Sec. 3).

    With Megatron-LM's layout (``bf16-fp32-master``) and AdamW this gives 4 + 8 = 12 bytes per
    parameter, the 18 of its documentation minus the 2-byte weights and 4-byte gradients.

    >>> cfg = GPTConfig.preset("gpt2")
    >>> optimizer_state_bytes(cfg, "adamw", "bf16-fp32-master") // 124439808
    12
    """
    master = _MASTER_BYTES[precision]
    state = master or _PARAM_BYTES[precision]
    n, n_tensors = shape_stats(cfg)
    if optimizer == "adamw":
        states = 2 * n * state + ADAMW_STEP_BYTES * n_tensors
    elif optimizer in ("sgd-momentum", "lion"):
        states = n * state
    elif optimizer == "sgd":
        states = 0
    elif optimizer == "adafactor":
        # rows + columns of a matrix, the whole of a vector: the sum of the shape either way
        states = across_model(cfg, parameters(cfg), lambda t: sum(t.shape) * state)
    else:  # adamw-8bit
        states = across_model(cfg, parameters(cfg), lambda t: _bnb_8bit_state_bytes(t.numel))
    return n * master + states


def _bnb_8bit_state_bytes(numel: int) -> int:
    """bitsandbytes' two states of one tensor: 1 byte each plus an fp32 absmax per block, or
    32-bit states below `BNB_MIN_8BIT_SIZE` elements."""
    if numel < BNB_MIN_8BIT_SIZE:
        return 2 * numel * 4
    return 2 * (numel + 4 * -(-numel // BNB_BLOCK_SIZE))  # exact: numel / 2048 overflowed

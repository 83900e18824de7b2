"""The tensors of a GPT, one by one: `model_tensors` -> `Tensor`.

This is the one place where the model's shapes are written down. Everything that counts
parameters or weights reads this list: the parameter count (`scaleplan.model.params`), the
matmul weights of FLOPs (`scaleplan.compute.flops`), the per-tensor optimizer states and the
largest tensor (`scaleplan.memory.states`, `scaleplan.memory.training`) and autocast's weight
copies (`scaleplan.memory.activations`).

The tensors are those of the reference model (`scaleplan.reference.model`, nanoGPT's layout):
q, k and v fused in one ``c_attn`` (GQA narrows k and v to ``n_kv_head`` heads), weights stored
as (out, in) like ``torch.nn.Linear``, and a tied ``lm_head`` listed as a view of ``wte``: a
matmul weight, not a parameter of its own.

A block's tensors are listed once, marked ``per_block``; the model holds ``n_layer`` of each
(`across_model` sums them that way). So the list never repeats itself ``n_layer`` times, and a
symbolic ``n_layer`` (`scaleplan.symbolic.formulas`) passes through. Only ``+`` and ``*`` touch
the sizes; branches are on structure alone (GELU or gated MLP, LayerNorm or RMSNorm, biases,
positions, tied head).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache, wraps
from typing import Any, Literal, ParamSpec, TypeVar, get_args

from scaleplan.model.config import GPTConfig

__all__ = ["CACHED_CONFIGS", "PARTS", "BlockKind", "Part", "Tensor", "across_model",
           "block_counts", "clear_config_caches", "model_tensors", "parameters", "per_config",
           "split_by_block"]

P = ParamSpec("P")
R = TypeVar("R")

BlockKind = Literal["all", "moe", "dense"]
"""Which blocks hold a per-block tensor (`Tensor.blocks`)."""
Part = Literal["token_embedding", "position_embedding", "attention", "mlp", "norms", "lm_head"]
"""Where a tensor belongs: the names of `scaleplan.model.params.ParamCount`'s parts."""
PARTS: tuple[Part, ...] = get_args(Part)
"""The parts, in model order."""
CACHED_CONFIGS = 64
"""Configs whose tensor lists are kept (a sweep over sizes touches a few dozen)."""


@dataclass(frozen=True)
class Tensor:
    """One tensor of the model, named as in the reference model (nanoGPT's names).

    >>> wte = model_tensors(GPTConfig.preset("gpt2"))[0]
    >>> wte.name, wte.shape, wte.numel
    ('wte.weight', (50257, 768), 38597376)
    """

    name: str
    shape: tuple[Any, ...]
    part: Part
    matmul: bool = False
    """The weight of a matrix multiply (a ``Linear``; not an embedding lookup, norm or bias)."""
    bias: bool = False
    """A bias vector (of a linear layer or a LayerNorm)."""
    per_block: bool = False
    """Repeated in every transformer block: the model holds ``n_layer`` of it."""
    tied: bool = False
    """A view of another tensor's storage (the tied ``lm_head`` is ``wte``): no parameter."""
    blocks: BlockKind = "all"
    """Which blocks hold a ``per_block`` tensor: every block, only the MoE blocks or only the
    dense ones (`block_counts`)."""
    routed: bool = False
    """The weights of the routed experts, all ``n_experts`` of them (the shape's first axis): a
    token goes through ``top_k`` of them."""

    @property
    def numel(self) -> Any:
        """Elements: the product of the shape."""
        return math.prod(self.shape)


def _numel(t: Tensor) -> Any:
    return t.numel


def model_tensors(cfg: GPTConfig) -> tuple[Tensor, ...]:
    """Every tensor of ``cfg`` in model order: the embeddings, one block's tensors (marked
    ``per_block``), the final norm and the output head (marked ``tied`` when it is ``wte``).

    Per block (d = n_embd, h = head_dim, a = n_head, k = n_kv_head, f = mlp_hidden): ``ln_1``;
    ``c_attn`` (a + 2k)h x d and its bias; the output projection d x ah and its bias; ``ln_2``;
    ``c_fc`` f x d, a second f x d ``c_gate`` for SwiGLU/GeGLU, the down projection d x f, with
    biases. A norm is a d scale, plus a d bias for LayerNorm with bias.

    >>> [t.name for t in model_tensors(GPTConfig.preset("llama-2-7b")) if t.per_block]
    ... # doctest: +NORMALIZE_WHITESPACE
    ['ln_1.weight', 'attn.c_attn.weight', 'attn.c_proj.weight', 'ln_2.weight',
     'mlp.c_fc.weight', 'mlp.c_gate.weight', 'mlp.c_proj.weight']

    A `GPTConfig` is frozen and hashable and the tensors are frozen too, so the list of a config
    is built once and shared (`plan` asks for it a dozen times per micro-batch it tries); any
    other config-like object (the symbolic view of `scaleplan.symbolic`) is listed afresh.
    """
    return _list_tensors(cfg)


_CACHES: list[Any] = []  # every per_config cache, for clear_config_caches


def clear_config_caches() -> None:
    """Forget every result `per_config` kept. The test suite does before each test: a cache
    filled by one test (or by a parent process that forks, as mutation testing does) would
    otherwise answer for a function another test means to run.

    >>> clear_config_caches()
    """
    for cache in _CACHES:
        cache.cache_clear()


def per_config(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` computed once per `GPTConfig` and arguments, and kept (`functools.lru_cache`).

    For pure functions of a config and hashable settings (ints, strings, frozen models) whose
    result is immutable: a frozen `GPTConfig` hashes and compares by its fields, so equal
    configs share one entry. Arguments are told apart by type too (``typed``: ``True``, ``1``
    and ``1.0`` are equal in Python but one may be an error where another is not); an error is
    raised again each time, never kept. Any other first argument (the symbolic view of
    `scaleplan.symbolic`) calls ``fn`` afresh.

    Apply it by assignment (``_count = per_config(_count_body)``), never as a decorator on a
    formula: mutmut 3 does not mutate decorated functions, so a decorated formula's body would
    go untested by mutation (docs/development.md).

    >>> calls = []
    >>> @per_config
    ... def width(cfg): calls.append(1); return cfg.n_embd
    >>> width(GPTConfig.preset("gpt2")), width(GPTConfig.preset("gpt2")), len(calls)
    (768, 768, 1)
    """
    cached: Callable[..., R] = lru_cache(maxsize=CACHED_CONFIGS, typed=True)(fn)
    _CACHES.append(cached)

    @wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        if not isinstance(args[0], GPTConfig):
            return fn(*args, **kwargs)
        try:
            return cached(*args, **kwargs)
        except TypeError:
            if _hashable(args, kwargs):  # raised by fn itself
                raise
        return fn(*args, **kwargs)  # a list or dict passed by mistake: fn says what is wrong

    return call


def _hashable(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    try:
        hash((args, tuple(kwargs.values())))
    except TypeError:
        return False
    return True


def _list_tensors_body(cfg: GPTConfig) -> tuple[Tensor, ...]:
    d, V, f = cfg.n_embd, cfg.vocab_size, cfg.mlp_hidden
    qkv = (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim
    tensors = [Tensor("wte.weight", (V, d), "token_embedding")]
    if cfg.position == "learned":
        tensors.append(Tensor("wpe.weight", (cfg.block_size, d), "position_embedding"))
    block = [  # one block's tensors, each marked per_block
        *_norm("ln_1", cfg, per_block=True),
        *_linear("attn.c_attn", (qkv, d), "attention", bias=cfg.qkv_bias),
        *_linear("attn.c_proj", (d, cfg.n_head * cfg.head_dim), "attention",
                 bias=cfg.attn_out_bias),
        *_norm("ln_2", cfg, per_block=True),
        *_linear("mlp.c_fc", (f, d), "mlp", bias=cfg.mlp_bias),
        *(_linear("mlp.c_gate", (f, d), "mlp", bias=cfg.mlp_bias) if cfg.gated_mlp else ()),
        *_linear("mlp.c_proj", (d, f), "mlp", bias=cfg.mlp_bias),
    ]
    tensors += block
    tensors += _norm("ln_f", cfg)
    tensors.append(Tensor("lm_head.weight", (V, d), "lm_head", matmul=True,
                          tied=bool(cfg.tie_embeddings)))
    return tuple(tensors)


_list_tensors = per_config(_list_tensors_body)


def parameters(cfg: GPTConfig) -> tuple[Tensor, ...]:
    """The tensors that are parameters of their own: `model_tensors` less a tied head.

    >>> sum(1 for t in parameters(GPTConfig.preset("gpt2")) if t.per_block)  # 4 w + 4 b + 2 ln
    12
    """
    return _untied(cfg)


def _untied_body(cfg: GPTConfig) -> tuple[Tensor, ...]:
    return tuple(t for t in model_tensors(cfg) if not t.tied)


_untied = per_config(_untied_body)


def across_model(cfg: GPTConfig, tensors: Iterable[Tensor],
                 value: Callable[[Tensor], Any] = _numel, *, layers: Any = None) -> Any:
    """``value`` (default: elements) summed over ``tensors`` as the model holds them: a
    ``per_block`` tensor once per block that holds it (`block_counts`; of ``layers`` blocks when
    given, default ``cfg.n_layer``), the others once.

    >>> cfg = GPTConfig.preset("gpt2")
    >>> across_model(cfg, parameters(cfg))  # Hugging Face's count of gpt2
    124439808
    >>> across_model(cfg, parameters(cfg), lambda t: 1)  # tensors: 2 + 12 x 12 + 2
    148
    """
    counts = block_counts(cfg, layers)
    listed = tuple(tensors)
    return (sum(counts[t.blocks] * value(t) for t in listed if t.per_block)
            + sum(value(t) for t in listed if not t.per_block))


def block_counts(cfg: GPTConfig, layers: Any = None) -> dict[BlockKind, Any]:
    """How many of ``layers`` blocks (default all ``cfg.n_layer``) hold a tensor of each
    `BlockKind`. A dense model's blocks are all alike. With ``moe``, ``moe.n_dense_layers``
    blocks are dense and the rest MoE; a part of the model (``layers`` fewer than n_layer, a
    pipeline stage) is taken to hold as many MoE blocks as it can, the heaviest case.

    >>> block_counts(GPTConfig(n_layer=4, moe={"n_experts": 4, "top_k": 1, "expert_hidden": 8,
    ...                                        "n_dense_layers": 1}))
    {'all': 4, 'moe': 3, 'dense': 1}
    """
    n = cfg.n_layer if layers is None else layers
    if cfg.moe is None:
        return {"all": n, "moe": 0, "dense": n}
    moe = cfg.n_layer - cfg.moe.n_dense_layers
    if layers is not None:
        moe = min(moe, n)
    return {"all": n, "moe": moe, "dense": n - moe}


def split_by_block(tensors: Iterable[Tensor],
                   value: Callable[[Tensor], Any] = _numel) -> tuple[Any, Any]:
    """``value`` (default: elements) summed over one block's tensors, and over the others.

    >>> cfg = GPTConfig.preset("gpt2")
    >>> split_by_block(t for t in parameters(cfg) if t.part == "norms")  # ln_1, ln_2; ln_f
    (3072, 1536)
    """
    listed = tuple(tensors)
    return (sum(value(t) for t in listed if t.per_block),
            sum(value(t) for t in listed if not t.per_block))


def _linear(name: str, shape: tuple[Any, Any], part: Part, *, bias: Any) -> tuple[Tensor, ...]:
    """A block's ``torch.nn.Linear``: the (out, in) weight and, when ``bias``, an out-sized
    bias, both ``per_block``."""
    weight = Tensor(f"{name}.weight", shape, part, matmul=True, per_block=True)
    return ((weight, Tensor(f"{name}.bias", shape[:1], part, bias=True, per_block=True)) if bias
            else (weight,))


def _norm(name: str, cfg: GPTConfig, *, per_block: bool = False) -> list[Tensor]:
    """A LayerNorm or RMSNorm over n_embd: a scale, and a bias for LayerNorm with bias."""
    d = cfg.n_embd
    scale = Tensor(f"{name}.weight", (d,), "norms", per_block=per_block)
    bias = Tensor(f"{name}.bias", (d,), "norms", bias=True, per_block=per_block)
    return [scale, bias] if cfg.norm_bias else [scale]

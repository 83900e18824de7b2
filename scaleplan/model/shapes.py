"""The tensors of a GPT, one by one: `model_tensors` -> `Tensor`.

This is the one place where the model's shapes are written down. Everything that counts
parameters or weights reads this list: the parameter count (`scaleplan.model.params`), the
matmul weights of FLOPs (`scaleplan.compute.flops`), the per-tensor optimizer states and the
largest tensor (`scaleplan.memory.states`, `scaleplan.memory.training`) and autocast's weight
copies (`scaleplan.memory.activations`).

The tensors are those of the reference model (`scaleplan.reference.model`, nanoGPT's layout):
q, k and v fused in one ``c_attn`` (GQA narrows k and v to ``n_kv_head`` heads), weights stored
as (out, in) like ``torch.nn.Linear``, and a tied ``lm_head`` listed as a view of ``wte``: a
matmul weight, not a parameter of its own. `scaleplan.model.layers` builds each part and holds
the table of every name (QK-norms, sandwich and post norms, parallel blocks, multi-head latent
attention, mixture of experts, OPT's projections).

A mixture of experts' blocks are not all alike: its tensors say which blocks hold them
(`Tensor.blocks`: the dense MLP in the ``moe.n_dense_layers`` first blocks, the router and
experts in the rest) and the routed experts are stacked, ``n_experts`` in the first axis
(`Tensor.routed`), of which a token goes through ``top_k`` (`active_numel`).

A block's tensors are listed once, marked ``per_block``; the model holds ``n_layer`` of each
(`across_model` sums them that way). So the list never repeats itself ``n_layer`` times, and a
symbolic ``n_layer`` (`scaleplan.symbolic.formulas`) passes through. Only ``+`` and ``*`` touch
the sizes; branches are on structure alone (GELU or gated MLP, LayerNorm or RMSNorm, biases,
positions, tied head).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from functools import lru_cache, wraps
from typing import Any, ParamSpec, TypeVar

from scaleplan.errors import ScaleplanError
from scaleplan.model.config import GPTConfig
from scaleplan.model.layers import (
    PARTS,
    BlockKind,
    Part,
    Tensor,
    attention_tensors,
    block_norm_names,
    mlp_tensors,
    norm,
    top_tensors,
)

__all__ = ["CACHED_CONFIGS", "PARTS", "BlockKind", "Part", "Tensor", "across_model",
           "active_numel", "block_counts", "clear_config_caches", "model_tensors", "parameters",
           "per_config", "split_by_block"]

P = ParamSpec("P")
R = TypeVar("R")

CACHED_CONFIGS = 64
"""Configs whose tensor lists are kept (a sweep over sizes touches a few dozen)."""


def _numel(t: Tensor) -> Any:
    """Elements of ``t``.

    >>> wte = model_tensors(GPTConfig.preset("gpt2"))[0]
    >>> wte.name, wte.shape, _numel(wte)
    ('wte.weight', (50257, 768), 38597376)
    """
    return t.numel


def model_tensors(cfg: GPTConfig) -> tuple[Tensor, ...]:
    """Every tensor of ``cfg`` in model order: the embeddings, one block's tensors (marked
    ``per_block``), the final norm and the output head (marked ``tied`` when it is ``wte``).

    Per block (d = n_embd, h = head_dim, a = n_head, k = n_kv_head, f = mlp_hidden): ``ln_1``;
    ``c_attn`` (a + 2k)h x d and its bias; the output projection d x ah and its bias; ``ln_2``;
    ``c_fc`` f x d, a second f x d ``c_gate`` for SwiGLU/GeGLU, the down projection d x f, with
    biases. A norm is a d scale, plus a d bias for LayerNorm with bias. The other options'
    tensors are in `scaleplan.model.layers`' table.

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
    before, after = top_tensors(cfg)
    pre_attention, post_attention, pre_mlp, post_mlp = (
        [x for name in names for x in norm(name, cfg, per_block=True)]
        for names in block_norm_names(cfg))
    block = [*pre_attention, *attention_tensors(cfg), *post_attention,
             *pre_mlp, *mlp_tensors(cfg), *post_mlp]  # one block's tensors, each per_block
    return (*before, *block, *after)


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
        moe = _fewer(moe, n)
    return {"all": n, "moe": moe, "dense": n - moe}


def _fewer(moe: Any, layers: Any) -> Any:
    """``min(moe, layers)``, also for a symbolic n_layer (`scaleplan.symbolic`) where a single
    block is asked for: there is always an MoE block (n_dense_layers < n_layer)."""
    try:
        return min(moe, layers)
    except TypeError:  # a sympy comparison that cannot be decided
        if layers == 1:
            return 1
        raise ScaleplanError(
            f"how many of {layers} blocks are MoE blocks depends on n_layer ({moe} MoE blocks "
            "in all); keep n_layer numeric for a part of an MoE model") from None


def active_numel(t: Tensor, cfg: GPTConfig) -> Any:
    """Elements of ``t`` one token goes through: ``top_k`` of a routed tensor's ``n_experts``
    experts, all of any other tensor. `scaleplan.model.params.ParamCount.active` and the
    active matmul weights of FLOPs sum it (``across_model(cfg, ts, lambda t: active_numel(t,
    cfg))``).

    >>> cfg = GPTConfig(moe={"n_experts": 8, "top_k": 2, "expert_hidden": 16}, n_embd=32,
    ...                 n_head=4, mlp="swiglu")
    >>> [(t.numel, active_numel(t, cfg)) for t in model_tensors(cfg)
    ...  if t.name == "mlp.experts.c_fc.weight"]
    [(4096, 1024)]
    """
    if t.routed and cfg.moe is not None:
        return math.prod(t.shape[1:]) * cfg.moe.top_k
    return t.numel


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

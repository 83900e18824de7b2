"""The formulas as sympy expressions: see them, differentiate them, solve them.

``import scaleplan`` never imports sympy; this module does, when it is imported.

**One source of truth.** The expressions here are not a second, hand-written copy of the formulas.
The numeric functions are written as plain ``+`` and ``*`` on a config's sizes
(`scaleplan.model.params.param_terms`, `scaleplan.compute.flops.token_flops`,
`scaleplan.compute.flops.step_flop_terms`, the saved-tensor terms of
`scaleplan.memory.activations`, the byte counts of `scaleplan.memory.states`), with branches only
on structural choices (GELU or SwiGLU, LayerNorm or RMSNorm, biases, tied head, precision,
attention kernel). This module calls those same functions with a `SymbolicModel`: an object with a
`GPTConfig`'s attribute names whose sizes are sympy symbols for the fields named in ``free`` and
numbers for the others. Ints in, exact ints out; symbols in, the formula out.

Why this direction (numbers first, symbols through the same code) rather than deriving the numeric
functions from sympy expressions: the numeric path stays fast and free of sympy at import
(``count_params`` in a sweep over thousands of configs costs microseconds, and ``import scaleplan``
stays light), exact integer results stay Python ints, numpy arrays flow through the same code for
vectorised sweeps, and there is still only one place to change a formula. The price: the formula
code must stick to arithmetic on sizes (no ``//``, ``max`` or ``if size > ...``);
``tests/test_symbolic.py`` checks numeric == symbolic at random points for every quantity, so a
formula that breaks the rule fails there.

Memory runs `scaleplan.memory.stage`'s own per-GPU arithmetic (``stage_parts``: weights,
gradients, optimizer states, every saved tensor and each moment of the step). Three lines of
composition are necessarily written here again, because Python's ``max`` and ``math.ceil`` do not
take symbols (pinned by the same test): the worst moment (``Max`` over the moments), the weight
copies counted at that moment, and the allocator slack (``ceiling``). A few parts take a Python
number of blocks (the recompute moment of full checkpointing divides by ``max(layers, 1)``;
per-tensor optimizer thresholds compare sizes), so with ``n_layer`` free the parts are evaluated at
1 and 2 blocks and extended linearly (every part is affine in the number of blocks). Memory is for
one GPU (no `scaleplan.memory.parallel.Parallelism`).

Symbols (positive integers): ``L`` n_layer, ``a`` n_head, ``k`` n_kv_head, ``d`` n_embd, ``h``
head_dim, ``f`` mlp_hidden, ``V`` vocab_size, ``P`` block_size, ``b`` micro-batch, ``s`` seq_len.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast

import sympy

from scaleplan.checks import whole
from scaleplan.compute.flops import FlopsMethod, Recompute, step_flop_terms, token_flops
from scaleplan.errors import ScaleplanError, UnknownNameError
from scaleplan.memory.activations import AttentionKind, CheckpointingKind, DeviceKind
from scaleplan.memory.options import step_options
from scaleplan.memory.sharding import OptimizerImpl
from scaleplan.memory.stage import stage_parts
from scaleplan.memory.training import ALLOCATOR_SLACK_FRACTION, CUDA_CONTEXT_BYTES
from scaleplan.model.config import GPTConfig
from scaleplan.model.params import param_terms

__all__ = [
    "ARCHITECTURE_OPTIONS",
    "MODEL_FIELDS",
    "RUN_FIELDS",
    "SymbolicMemory",
    "SymbolicModel",
    "flops_per_token",
    "memory",
    "param_count",
    "step_flops",
    "symbol",
    "symbolic_model",
    "to_latex",
]

MODEL_FIELDS: tuple[str, ...] = ("n_layer", "n_head", "n_kv_head", "n_embd", "head_dim",
                                 "mlp_hidden", "vocab_size", "block_size")
"""The `GPTConfig` sizes that can be kept symbolic."""
RUN_FIELDS: tuple[str, ...] = ("micro_batch_size", "seq_len")
"""The per-step sizes that can be kept symbolic (FLOPs and memory)."""

_SYMBOL_NAMES = {"n_layer": "L", "n_head": "a", "n_kv_head": "k", "n_embd": "d", "head_dim": "h",
                 "mlp_hidden": "f", "vocab_size": "V", "block_size": "P",
                 "micro_batch_size": "b", "seq_len": "s"}

ParamPart = Literal["total", "token_embedding", "position_embedding", "attention", "mlp", "norms",
                    "lm_head", "biases", "per_layer", "non_embedding", "nanogpt", "active"]
StepPart = Literal["qkv", "attention_scores", "attention_values", "attention_out", "mlp",
                   "lm_head", "forward", "backward", "total"]


def symbol(name: str) -> sympy.Symbol:
    """The sympy symbol that stands for a config or run field (positive integer).

    >>> symbol("n_embd"), symbol("micro_batch_size")
    (d, b)
    """
    if name not in _SYMBOL_NAMES:
        raise UnknownNameError("symbolic field", name, _SYMBOL_NAMES)
    return sympy.Symbol(_SYMBOL_NAMES[name], positive=True, integer=True)


ARCHITECTURE_OPTIONS = ("qk_norm", "norm_position", "parallel", "norm_affine", "final_norm",
                        "embedding_norm", "lm_head_bias", "position_offset", "rotary_fraction",
                        "sliding_window", "sliding_window_layers", "attn_softcap", "final_softcap",
                        "mla", "moe")  # never free: structure, read from the config


@dataclass(frozen=True)
class SymbolicModel:
    """A `GPTConfig` look-alike whose sizes may be sympy expressions.

    It has the attribute names the formula functions read, so they run on it unchanged. Bias
    flags are 0/1 ints (sympy does not multiply by ``bool``). Build one with `symbolic_model`.
    """

    n_layer: Any
    n_head: Any
    n_kv_head: Any
    n_embd: Any
    head_dim: Any
    mlp_hidden: Any
    vocab_size: Any
    block_size: Any
    mlp: str
    norm: str
    position: str
    tie_embeddings: bool
    dropout: float
    qkv_bias: int
    attn_out_bias: int
    mlp_bias: int
    norm_bias: int
    free: tuple[str, ...] = field(default=())
    embed_dim: Any = None
    config: Any = None  # the GPTConfig viewed: its ARCHITECTURE_OPTIONS are read from it

    def __getattr__(self, name: str) -> Any:
        if name not in ARCHITECTURE_OPTIONS:
            raise AttributeError(f"'SymbolicModel' object has no attribute {name!r}")
        return getattr(self.config, name)

    @property
    def gated_mlp(self) -> bool:
        """True for SwiGLU/GeGLU, as `GPTConfig.gated_mlp`."""
        return self.mlp in ("swiglu", "geglu")


def _check_free(free: Iterable[str], allowed: tuple[str, ...]) -> tuple[str, ...]:
    names = (free,) if isinstance(free, str) else tuple(free)
    for name in names:
        if name not in allowed:
            raise UnknownNameError("free field", name, allowed)
    return names


def symbolic_model(cfg: GPTConfig, free: Iterable[str] = ("n_layer", "n_embd")) -> SymbolicModel:
    """``cfg`` with the sizes named in ``free`` replaced by symbols.

    Fields that ``cfg`` derived (given no value) are derived again from the symbols, as
    `GPTConfig` derives them: ``head_dim = d / a`` (MLA's own without), ``n_kv_head = a``,
    ``mlp_hidden = 4 d`` (GELU) or Llama's rule ``256 * ceiling(floor(8 d / 3) / 256)`` (gated).
    Floors and ceilings are kept unevaluated (sympy would move integer terms out of them).

    >>> m = symbolic_model(GPTConfig.preset("gpt2"), free=("n_embd",))
    >>> m.head_dim, m.mlp_hidden
    (d/12, 4*d)
    """
    names = _check_free(free, MODEL_FIELDS)
    given = cfg.model_fields_set
    sizes: dict[str, Any] = {n: (symbol(n) if n in names else getattr(cfg, n))
                             for n in MODEL_FIELDS}
    d, a = sizes["n_embd"], sizes["n_head"]
    if "n_kv_head" not in given and "n_kv_head" not in names:
        sizes["n_kv_head"] = a
    if "head_dim" not in given | set(names) and cfg.mla is None and (
            "n_embd" in names or "n_head" in names):
        sizes["head_dim"] = sympy.sympify(d) / a
    if "mlp_hidden" not in given and "mlp_hidden" not in names and "n_embd" in names:
        multiple = 256  # config._SWIGLU_MULTIPLE_OF: Llama's feed-forward rounding
        sizes["mlp_hidden"] = (4 * d if not cfg.gated_mlp else
                               multiple * sympy.ceiling(
                                   sympy.floor(8 * d / 3, evaluate=False) / multiple,
                                   evaluate=False))
    return SymbolicModel(
        **sizes, mlp=cfg.mlp, norm=cfg.norm, position=cfg.position,
        tie_embeddings=cfg.tie_embeddings, dropout=cfg.dropout, qkv_bias=int(cfg.qkv_bias),
        attn_out_bias=int(cfg.attn_out_bias), mlp_bias=int(cfg.mlp_bias),
        norm_bias=int(cfg.norm_bias), free=names,
        embed_dim=cfg.embed_dim if "embed_dim" in given else sizes["n_embd"], config=cfg)


def _run_size(name: str, value: int | None, free: tuple[str, ...], default: int | None) -> Any:
    if name in free:
        return symbol(name)
    if value is None:
        if default is None:
            raise ScaleplanError(f"{name} is needed: pass {name}=... or list it in free")
        return default
    return whole(name, value, example=f"{name}=8")  # numpy's small ints would wrap around


def _split_free(free: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    names = _check_free(free, MODEL_FIELDS + RUN_FIELDS)
    return (tuple(n for n in names if n in MODEL_FIELDS),
            tuple(n for n in names if n in RUN_FIELDS))


def _as_model(view: SymbolicModel) -> GPTConfig:
    return cast(GPTConfig, view)  # duck-typed: the formula functions read attributes only


def param_count(cfg: GPTConfig, *, free: Iterable[str] = ("n_layer", "n_embd"),
                part: ParamPart = "total") -> sympy.Expr:
    """A `scaleplan.model.params.ParamCount` field as an expression in the ``free`` fields.

    >>> param_count(GPTConfig.preset("gpt2"), free=("n_layer",))
    7087872*L + 39385344
    >>> sympy.factor(param_count(GPTConfig(n_layer=12, n_head=12, bias=False,
    ...                                    vocab_size=50304), free=("n_embd",)))
    d*(144*d + 51353)
    """
    terms = param_terms(_as_model(symbolic_model(cfg, free)))
    if part not in terms:
        raise UnknownNameError("parameter count part", part, terms)
    return sympy.expand(sympy.sympify(terms[part]))


def flops_per_token(cfg: GPTConfig, *, free: Iterable[str] = ("n_layer", "n_embd", "seq_len"),
                    seq_len: int | None = None, causal: bool = True,
                    recompute: Recompute = "none", method: FlopsMethod = "palm") -> sympy.Expr:
    """`scaleplan.compute.flops.flops_per_token` as an expression (``seq_len`` defaults to
    ``block_size`` when it is not free).

    >>> flops_per_token(GPTConfig.preset("gpt2"), free=("seq_len",), method="kaplan")
    510336000
    >>> flops_per_token(GPTConfig.preset("gpt2"), free=("n_layer", "seq_len"), causal=False)
    9216*L*s + 42467328*L + 231584256
    """
    model, run = _split_free(free)
    T = _run_size("seq_len", seq_len, run, cfg.block_size)
    view = _as_model(symbolic_model(cfg, model))
    return sympy.expand(sympy.sympify(token_flops(view, T, causal=causal, recompute=recompute,
                                                  method=method)))


def step_flops(cfg: GPTConfig, *, free: Iterable[str] = ("micro_batch_size", "seq_len"),
               micro_batch_size: int | None = None, seq_len: int | None = None,
               causal: bool = True, part: StepPart = "total") -> sympy.Expr:
    """A `scaleplan.compute.flops.StepFlops` field as an expression.

    >>> step_flops(GPTConfig.preset("gpt2"), part="attention_scores")
    9216*b*s**2
    """
    model, run = _split_free(free)
    b = _run_size("micro_batch_size", micro_batch_size, run, None)
    s = _run_size("seq_len", seq_len, run, cfg.block_size)
    terms = step_flop_terms(_as_model(symbolic_model(cfg, model)), b, s, causal=causal)
    if part not in terms:
        raise UnknownNameError("step FLOPs part", part, terms)
    return sympy.expand(sympy.sympify(terms[part]))


@dataclass(frozen=True)
class SymbolicMemory:
    """`scaleplan.memory.training.MemoryBreakdown`'s fields as expressions (bytes).

    ``weights + gradients + optimizer + saved_for_backward + autocast_weight_copies + transient
    + overhead == total``; ``saved_breakdown`` splits ``saved_for_backward`` by operation.
    """

    weights: sympy.Expr
    gradients: sympy.Expr
    optimizer: sympy.Expr
    saved_for_backward: sympy.Expr
    autocast_weight_copies: sympy.Expr
    transient: sympy.Expr
    overhead: sympy.Expr
    total: sympy.Expr
    saved_breakdown: dict[str, sympy.Expr]

    def components(self) -> dict[str, sympy.Expr]:
        """The parts that sum to ``total``."""
        return {"weights": self.weights, "gradients": self.gradients,
                "optimizer": self.optimizer, "saved_for_backward": self.saved_for_backward,
                "autocast_weight_copies": self.autocast_weight_copies,
                "transient": self.transient, "overhead": self.overhead}

    def subs(self, values: dict[str, int]) -> dict[str, int]:
        """Every field at a point given by field name (``{"micro_batch_size": 8}``), as ints."""
        point = {symbol(k): v for k, v in values.items()}
        out = {k: int(v.subs(point)) for k, v in self.components().items()}
        out["total"] = int(self.total.subs(point))
        return out

    def _repr_latex_(self) -> str:
        rows = [rf"\text{{{k.replace('_', ' ')}}} &= {sympy.latex(v)}"
                for k, v in self.components().items()]
        return r"$\begin{aligned}" + r" \\ ".join(rows) + r"\end{aligned}$"


def _affine_in_layers(view: SymbolicModel, fn: Callable[[GPTConfig], Any]) -> Any:
    """``fn(view)`` where ``fn`` needs a Python number of blocks (and so cannot take a symbolic
    n_layer): evaluated at 1 and 2 blocks and extended linearly, which is
    exact because every memory part is affine in the number of blocks."""
    L = view.n_layer
    if isinstance(L, int):
        return fn(_as_model(view))
    one, two = fn(_as_model(replace(view, n_layer=1))), fn(_as_model(replace(view, n_layer=2)))

    def extend(a: Any, b: Any) -> Any:
        if isinstance(a, dict):
            return {k: extend(a[k], b[k]) for k in a}
        if isinstance(a, tuple):
            return tuple(extend(x, y) for x, y in zip(a, b, strict=True))
        return a + (L - 1) * (b - a)

    return extend(one, two)


def memory(
    cfg: GPTConfig, *, free: Iterable[str] = ("micro_batch_size", "seq_len"),
    micro_batch_size: int | None = None, seq_len: int | None = None,
    precision: str = "bf16-mixed", optimizer: str = "adamw", attention: AttentionKind = "flash",
    checkpointing: CheckpointingKind = "none", device: DeviceKind = "cuda",
    optimizer_impl: OptimizerImpl | None = None, hold_logits: bool = True,
    cuda_context_bytes: int = CUDA_CONTEXT_BYTES,
    allocator_slack_fraction: float = ALLOCATOR_SLACK_FRACTION,
) -> SymbolicMemory:
    """`scaleplan.memory.training.training_memory` on one GPU as expressions, one per component.

    Options are those of `training_memory`. ``allocator_slack_fraction`` enters as an exact
    rational. ``optimizer="adamw-8bit"`` and ``optimizer_impl="for-loop"`` depend on thresholds
    and maxima over tensor sizes; with model sizes free they raise. A free micro-batch size is
    taken as b >= 2: at b = 1 torch's matmul keeps some attention inputs as views of the qkv
    output (`scaleplan.memory.attention_terms`), which `training_memory` counts for an int b = 1
    and the expressions do not.

    >>> from scaleplan.memory.training import training_memory
    >>> m = memory(GPTConfig.preset("gpt2"), free=("micro_batch_size",), seq_len=1024)
    >>> m.saved_breakdown["log_softmax"]  # 4-byte log-softmax over b x 1024 x 50257
    205852672*b
    >>> m.subs({"micro_batch_size": 16})["total"] == training_memory(
    ...     GPTConfig.preset("gpt2"), micro_batch_size=16, seq_len=1024).total
    True
    """
    model, run = _split_free(free)
    o = step_options(cfg, precision=precision, optimizer=optimizer, attention=attention,
                     checkpointing=checkpointing, device=device, parallelism=None,
                     optimizer_impl=optimizer_impl, hold_logits=hold_logits,
                     cuda_context_bytes=cuda_context_bytes,
                     allocator_slack_fraction=allocator_slack_fraction)
    b = _run_size("micro_batch_size", micro_batch_size, run, None)
    s = _run_size("seq_len", seq_len, run, cfg.block_size)
    view = symbolic_model(cfg, model)

    def parts(c: GPTConfig) -> Any:  # training_memory's own arithmetic, on one GPU
        return stage_parts(c, b, s, o.precision, o.optimizer, o.attention, o.checkpointing,
                           o.device, o.parallelism, o.optimizer_impl, o.hold_logits, "only")

    try:
        W, G, O, saved, copies, all_copies, held, moments = _affine_in_layers(view, parts)
    except TypeError as err:  # a comparison or max() on a symbol
        raise ScaleplanError(
            f"optimizer={optimizer!r} (optimizer_impl={optimizer_impl!r}) has no closed form "
            f"in {', '.join(model)}: its state depends on per-tensor thresholds or maxima; keep "
            "those fields numeric (free=('micro_batch_size', 'seq_len'))") from err
    # Expanded before entering Max and ceiling: sympy 1.14 takes some unexpanded products with
    # rational coefficients, such as d*(2*k + 2)/10, for integers and moves them out of ceiling.
    ex = sympy.expand
    S = ex(sum(saved.values()))
    moment = {k: ex(v) for k, v in moments.items()}
    worst = sympy.Max(*moment.values()) + ex(held)
    copies, all_copies = ex(copies), ex(all_copies)
    if ex(all_copies - copies) != 0:  # as training_memory: forward_end (first on ties) holds all
        others = [v for k, v in moment.items() if k != "forward_end"]
        copies = sympy.Piecewise((all_copies, moment["forward_end"] >= sympy.Max(*others)),
                                 (copies, True))
    peak = ex(W + G + O) + worst
    slack = sympy.nsimplify(o.allocator_slack_fraction)
    overhead = sympy.Integer(0) if o.device == "cpu" else (
        o.cuda_context_bytes + sympy.ceiling(ex(slack * peak), evaluate=False))
    return SymbolicMemory(
        weights=ex(W), gradients=ex(G), optimizer=ex(O), saved_for_backward=S,
        autocast_weight_copies=sympy.sympify(copies), transient=worst - S - copies,
        overhead=overhead, total=peak + overhead,
        saved_breakdown={k: ex(sympy.sympify(v)) for k, v in saved.items()})


def to_latex(obj: Any) -> str:
    """LaTeX for an expression, a `SymbolicMemory` or a `scaleplan.symbolic.solve.Solution`.

    >>> to_latex(param_count(GPTConfig.preset("gpt2"), free=("n_layer",)))
    '7087872 L + 39385344'
    """
    if isinstance(obj, sympy.Basic):
        return cast(str, sympy.latex(obj))
    latex = getattr(obj, "_repr_latex_", None)
    if latex is None:
        raise ScaleplanError(f"to_latex() takes a sympy expression or a symbolic result, not "
                             f"{type(obj).__name__}; build one with "
                             "scaleplan.symbolic.formulas.param_count")
    return cast(str, latex()).strip("$")


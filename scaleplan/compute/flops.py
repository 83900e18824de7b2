"""Training FLOPs of a GPT: per token, per micro-batch step and for a whole run.

Three conventions are offered, because published figures use all three:

- ``method="palm"`` (default): 6N + 12·L·H·Q·T per token (PaLM, Chowdhery et al. 2022, App. B),
  with N the weights of every matrix multiply (see `matmul_params`). With ``causal=False`` this is
  exactly what `step_flops` counts, and exactly what ``torch.utils.flop_counter.FlopCounterMode``
  counts for one forward + backward, divided by the tokens.
- ``method="nanogpt"``: nanoGPT's ``estimate_mfu``: 6N + 12·L·H·Q·T with N the parameter count
  nanoGPT prints (every parameter but the position table, so norms, biases and wte count).
  ``causal=False, seq_len=block_size`` reproduces nanoGPT's number exactly (GPT-2 small:
  855,166,464 FLOPs per token).
- ``method="kaplan"``: C = 6N per token, N the non-embedding parameters (Kaplan et al. 2020,
  Sec. 2.1); no attention term.

Causal masking halves the attention term (Megatron-LM's accounting, nanoGPT issue #456): only
the lower triangle of the T x T score matrix is needed. The exact triangle has T(T+1)/2 entries;
like Megatron we use T²/2; a sliding window w < T keeps the band T·w - w²/2
(`scaleplan.compute.attention_flops`). Model FLOPs (MFU) never include recomputation; hardware
FLOPs (HFU) add the forward work that activation recomputation repeats (`Recompute`).

The architecture options count as the models run them: a mixture of experts' token goes
through the router, its ``top_k`` routed experts and the shared experts (N is the active
matmul weights; ``"nanogpt"`` and ``"kaplan"`` take the active parameters), MLA through its
low-rank projections, with scores over ``qk_head_dim`` and values over ``v_head_dim``; OPT's
``project_in``/``project_out`` count with the head (V x embed_dim). Partial rotary, ALiBi,
QK-norms, post/sandwich/parallel norms and soft-capping are elementwise: no matmul FLOPs.
``moe.capacity_factor < 1`` (dropped tokens) is refused.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from scaleplan.checks import finite, real, whole
from scaleplan.compute.attention_flops import (
    FLOPS_PER_MAC,
    attention_core,
    attention_forward,
    attention_forward_per_token,
)
from scaleplan.errors import ScaleplanError, shown
from scaleplan.model.config import GPTConfig
from scaleplan.model.params import param_terms
from scaleplan.model.shapes import (
    Tensor,
    across_model,
    active_numel,
    model_tensors,
    per_config,
)

__all__ = [
    "FlopsMethod",
    "Recompute",
    "StepFlops",
    "flops_per_token",
    "kaplan_training_flops",
    "matmul_params",
    "palm_flops_per_token",
    "step_flop_terms",
    "step_flops",
    "token_flops",
    "training_flops",
]

FlopsMethod = Literal["palm", "nanogpt", "kaplan"]
Recompute = Literal["none", "selective", "full"]
"""Activation recomputation (Korthikanti et al. 2022, Sec. 4-5).

- ``"none"``: model FLOPs: one forward, one backward (2x the forward).
- ``"selective"``: the attention core (QK^T, softmax, AV) is recomputed in the backward pass:
  adds its forward FLOPs once more.
- ``"full"``: every transformer block's forward is recomputed: hardware FLOPs / model FLOPs =
  4/3 for the blocks. The output head is not recomputed (it sits outside the checkpointed
  blocks), as in Megatron-LM's count, 96·B·s·l·h²·(1 + s/6h + V/16lh) (Narayanan et al. 2021,
  Eq. 3), where the head keeps its factor 3.

PyTorch's non-reentrant ``torch.utils.checkpoint`` stops recomputing once every saved tensor
is rebuilt, so in practice a block's last matmul (the MLP down projection) is not re-run either:
measured hardware FLOPs come out a little lower than ``"full"``.
"""

# The backward pass of a matmul is two matmuls of the same size (grad wrt input and weight).
BACKWARD_TO_FORWARD = 2
# Kaplan et al. 2020, Sec. 2.1: C ≈ 6N per token (2N forward + 4N backward).
KAPLAN_FLOPS_PER_PARAM_TOKEN = 6
# `StepFlops`' sums are checked within this relative tolerance (float rounding of exact ints).
_SUM_TOLERANCE = 1e-12


def matmul_params(cfg: GPTConfig) -> Any:
    """N for FLOPs: the weights of every matrix multiply a token goes through.

    Per block: q (d x H·Q), k and v (d x K·Q each, K = n_kv_head), the output projection
    (H·Q x d) and the MLP (d x f, a second d x f gate when gated, f x d); plus the output head
    d x V, which is a matmul whether or not it is tied to wte. Embedding lookups (wte, wpe),
    norms and bias additions are not matmuls and are left out: they are the elementwise work
    that FlopCounterMode counts as zero. With MLA, its low-rank projections replace q, k and v;
    with OPT's ``embed_dim``, ``project_in`` and ``project_out`` count, and the head is V x
    embed_dim. With a mixture of experts, a token goes through the router, its ``top_k`` routed
    experts (not all ``n_experts``) and the shared experts; dense blocks keep their MLP.

    The weights are those marked ``matmul`` in `scaleplan.model.shapes.model_tensors`, routed
    ones as `scaleplan.model.shapes.active_numel`. Like
    `scaleplan.model.params.param_terms`, only ``+`` and ``*`` touch the sizes, so
    `scaleplan.symbolic.formulas` evaluates this same function on symbols.

    >>> matmul_params(GPTConfig.preset("gpt2"))  # 12 x 7,077,888 + 768 x 50257
    123532032
    """
    return _active(cfg, [t for t in model_tensors(cfg) if t.matmul])


def _active(cfg: GPTConfig, tensors: list[Tensor]) -> Any:
    """Elements of ``tensors`` one token goes through, across the model (routed experts: top_k
    of them)."""
    return across_model(cfg, tensors, lambda t: active_numel(t, cfg))


def _palm(n_params: Any, L: Any, H: Any, Q: Any, T: Any, *, causal: bool) -> Any:
    """6N + 12·L·H·Q·T (PaLM App. B), plain arithmetic (ints stay ints, symbols stay symbols)."""
    attention = attention_forward(L, H, Q, T, causal=causal)
    return KAPLAN_FLOPS_PER_PARAM_TOKEN * n_params + (1 + BACKWARD_TO_FORWARD) * attention


def palm_flops_per_token(
    n_params: float,
    *,
    n_layer: int,
    n_head: int,
    head_dim: int,
    seq_len: int,
    causal: bool = False,
) -> float:
    """PaLM's training FLOPs per token from raw numbers: 6N + 12·L·H·Q·T.

    Source: Chowdhery et al. 2022 (PaLM), Appendix B. ``causal=True`` halves the attention term
    (PaLM does not; its 46.2% MFU uses the full term).

    >>> palm_flops_per_token(540.35e9, n_layer=118, n_head=48, head_dim=256, seq_len=2048)
    3277734806784.0
    """
    seq_len = _check_seq_len(seq_len, causal)
    return finite("flops_per_token", _palm(n_params, n_layer, n_head, head_dim, seq_len,
                                           causal=causal))


def flops_per_token(
    cfg: GPTConfig,
    *,
    seq_len: int,
    causal: bool = True,
    recompute: Recompute = "none",
    method: FlopsMethod = "palm",
) -> float:
    """Training FLOPs (forward + backward) per token, averaged over a sequence of ``seq_len``.

    ``method`` picks which N enters 6N (see the module docstring): ``"palm"`` the matmul
    weights (`matmul_params`), ``"nanogpt"`` nanoGPT's printed count, ``"kaplan"`` the
    non-embedding parameters with no attention term. ``recompute`` turns model FLOPs into
    hardware FLOPs (`Recompute`).

    >>> gpt2 = GPTConfig.preset("gpt2")
    >>> flops_per_token(gpt2, seq_len=1024, causal=False, method="nanogpt")  # nanoGPT's figure
    855166464.0
    """
    seq_len = _check_seq_len(seq_len, causal)
    return _checked_flops_per_token(cfg, seq_len, causal, recompute, method)


def _flops_body(cfg: GPTConfig, seq_len: int, causal: bool, recompute: Recompute,
                method: FlopsMethod) -> float:
    return finite("flops_per_token", token_flops(cfg, seq_len, causal=causal,
                                                 recompute=recompute, method=method))


_checked_flops_per_token = per_config(_flops_body)


def token_flops(cfg: GPTConfig, seq_len: Any, *, causal: bool = True,
                recompute: Recompute = "none", method: FlopsMethod = "palm") -> Any:
    """`flops_per_token` as plain arithmetic, unchecked and not converted to float.

    Only ``+`` and ``*`` touch the sizes and ``seq_len``, so this one formula gives exact ints
    for a `GPTConfig` and sympy expressions for `scaleplan.symbolic.formulas`'s symbolic view.

    >>> token_flops(GPTConfig.preset("gpt2"), 1024, causal=False, method="nanogpt")
    855166464
    """
    _check_capacity(cfg)
    outside = _active(cfg, [t for t in model_tensors(cfg) if t.matmul and not t.per_block])
    if method == "kaplan":
        pc = param_terms(cfg)  # active: a mixture of experts counts a token's top_k experts
        n = pc["active"] - pc["token_embedding"] - pc["position_embedding"]
        blocks = n - pc["lm_head"]  # an untied head is in Kaplan's N but is not recomputed
        extra = _recompute_extra(FLOPS_PER_MAC * blocks, 0, recompute)  # no attention term
        return KAPLAN_FLOPS_PER_PARAM_TOKEN * n + extra
    if method == "nanogpt":
        pc = param_terms(cfg)
        n = pc["active"] - pc["position_embedding"]  # nanoGPT's printed count, active experts
    elif method == "palm":
        n = matmul_params(cfg)
    else:
        raise ValueError(f"method={method!r} is not one of 'palm', 'nanogpt', 'kaplan'")
    attention = attention_forward_per_token(cfg, seq_len, causal=causal)
    model = KAPLAN_FLOPS_PER_PARAM_TOKEN * n + (1 + BACKWARD_TO_FORWARD) * attention
    blocks = n - outside  # the output head and OPT's projections are not recomputed
    return model + _recompute_extra(FLOPS_PER_MAC * blocks, attention, recompute)


def _check_capacity(cfg: GPTConfig) -> None:
    moe = cfg.moe
    if moe is not None and moe.capacity_factor is not None and moe.capacity_factor < 1:
        raise ScaleplanError(
            f"moe.capacity_factor={shown(moe.capacity_factor)} drops tokens, and how many "
            "depends on the routing; FLOPs count every token at its top_k experts (dropless): "
            "use capacity_factor >= 1 or None")


def _recompute_extra(dense_forward: Any, attention_forward: Any, recompute: Recompute) -> Any:
    if recompute == "none":
        return 0
    if recompute == "selective":
        return attention_forward
    if recompute == "full":
        return dense_forward + attention_forward
    raise ValueError(f"recompute={recompute!r} is not one of 'none', 'selective', 'full'")


class StepFlops(BaseModel):
    """FLOPs of one forward + backward pass over one micro-batch, by matmul.

    The forward parts (``qkv`` ... ``lm_head``) sum to ``forward``; ``forward + backward ==
    total``. Every figure is 2·m·n·k per matmul, summed over layers; the backward pass is two
    matmuls of the forward's size per matmul (``backward == 2 * forward``).

    >>> s = step_flops(GPTConfig.preset("gpt2"), micro_batch_size=1, seq_len=1024, causal=False)
    >>> s.total / 1024 == flops_per_token(GPTConfig.preset("gpt2"), seq_len=1024, causal=False)
    True
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    micro_batch_size: int = Field(gt=0, description="Sequences in the micro-batch.")
    seq_len: int = Field(gt=0, description="Tokens per sequence.")
    causal: bool = Field(description="Attention terms halved for a causal mask.")
    qkv: float = Field(description="Forward FLOPs of the q, k and v projections (MLA's "
                       "low-rank projections).")
    attention_scores: float = Field(description="Forward FLOPs of Q @ K^T (all query heads).")
    attention_values: float = Field(description="Forward FLOPs of softmax(QK^T) @ V.")
    attention_out: float = Field(description="Forward FLOPs of the attention output projection.")
    mlp: float = Field(description="Forward FLOPs of the MLP matrices (MoE: the router, the "
                       "top_k routed experts and the shared experts).")
    lm_head: float = Field(description="Forward FLOPs of the output head over every position "
                           "(with OPT's project_in and project_out).")
    forward: float = Field(description="Sum of the forward parts above.")
    backward: float = Field(description="Backward FLOPs: 2x forward.")
    total: float = Field(description="forward + backward.")

    @model_validator(mode="after")
    def _parts_sum_to_total(self) -> StepFlops:
        # The fields are floats of exact int sums (`step_flop_terms`); each float rounds on its
        # own, so the float sums may differ from them in the last bits (gpt2-xl at b=349871,
        # s=987 was refused): compare within a relative 1e-12, far below any real mistake.
        parts = (self.qkv + self.attention_scores + self.attention_values + self.attention_out
                 + self.mlp + self.lm_head)
        if not (math.isclose(parts, self.forward, rel_tol=_SUM_TOLERANCE)
                and math.isclose(self.forward + self.backward, self.total,
                                 rel_tol=_SUM_TOLERANCE)):
            raise ValueError("step FLOPs: parts must sum to forward, forward + backward to total")
        return self

    @property
    def tokens(self) -> int:
        """Tokens in the micro-batch."""
        return self.micro_batch_size * self.seq_len


def step_flops(
    cfg: GPTConfig, *, micro_batch_size: int, seq_len: int, causal: bool = True
) -> StepFlops:
    """Count the FLOPs of one forward + backward of a micro-batch, matmul by matmul.

    With ``causal=False`` the total equals what ``torch.utils.flop_counter.FlopCounterMode``
    counts for the reference GPT (standard SDPA attention, math backend; GQA counted per query
    head, as SDPA expands K/V to every query head). With ``causal=True`` the two attention
    matmuls are halved (Megatron-LM's convention; FlopCounterMode does not halve). On CUDA,
    FlopCounterMode counts flash attention's backward as 5 matmuls (it recomputes QK^T), not
    4: that is hardware work, not model FLOPs.

    >>> step_flops(GPTConfig.preset("gpt2"), micro_batch_size=12, seq_len=1024).total
    9803554357248.0
    """
    micro_batch_size = whole("micro_batch_size", micro_batch_size, example="micro_batch_size=8")
    seq_len = _check_seq_len(seq_len, causal)
    terms = step_flop_terms(cfg, micro_batch_size, seq_len, causal=causal)
    finite(f"step_flops(micro_batch_size={shown(micro_batch_size)}, seq_len={shown(seq_len)}) "
           "total", terms["total"])  # the largest; ints are exact
    return StepFlops(micro_batch_size=micro_batch_size, seq_len=seq_len, causal=causal,
                     **{name: float(value) for name, value in terms.items()})


def step_flop_terms(cfg: GPTConfig, micro_batch_size: Any, seq_len: Any, *,
                    causal: bool = True) -> dict[str, Any]:
    """The FLOP fields of `StepFlops` as plain arithmetic (exact ints for ints, sympy
    expressions for `scaleplan.symbolic.formulas`'s symbols), unchecked.

    >>> step_flop_terms(GPTConfig.preset("gpt2"), 1, 1024)["lm_head"]  # 2 x 1024 x 768 x 50257
    79047426048
    """
    _check_capacity(cfg)
    tokens = micro_batch_size * seq_len
    matmuls = [t for t in model_tensors(cfg) if t.matmul]  # one block's, and the others

    def dense(weights: list[Tensor]) -> Any:  # 2·m·n·k with m = tokens and n·k = weights
        return FLOPS_PER_MAC * tokens * _active(cfg, weights)

    out_name = "attn.c_proj.weight"
    qkv = dense([t for t in matmuls if t.part == "attention" and t.name != out_name])
    attention_out = dense([t for t in matmuls if t.name == out_name])
    mlp = dense([t for t in matmuls if t.part == "mlp"])  # router, active and shared experts
    lm_head = dense([t for t in matmuls if not t.per_block])  # with OPT's project_in/out
    scores, values = attention_core(cfg, seq_len, causal=causal)  # QK^T and AV, one sequence
    scores, values = micro_batch_size * scores, micro_batch_size * values
    forward = qkv + scores + values + attention_out + mlp + lm_head
    return {"qkv": qkv, "attention_scores": scores, "attention_values": values,
            "attention_out": attention_out, "mlp": mlp, "lm_head": lm_head, "forward": forward,
            "backward": BACKWARD_TO_FORWARD * forward,
            "total": (1 + BACKWARD_TO_FORWARD) * forward}


def training_flops(
    cfg: GPTConfig,
    tokens: int,
    *,
    seq_len: int,
    causal: bool = True,
    recompute: Recompute = "none",
    method: FlopsMethod = "palm",
) -> float:
    """FLOPs to train ``cfg`` on ``tokens`` tokens: `flops_per_token` x tokens.

    >>> f"{training_flops(GPTConfig.preset('gpt2'), 10**9, seq_len=1024, method='kaplan'):.3e}"
    '5.103e+17'
    """
    count = real("tokens", tokens, inclusive=True, example="tokens=10**10")
    per_token = flops_per_token(cfg, seq_len=seq_len, causal=causal, recompute=recompute,
                                method=method)
    return finite(f"training_flops(tokens={shown(tokens)})", per_token * count)


def kaplan_training_flops(n_params: float, tokens: float) -> float:
    """C = 6·N·D (Kaplan et al. 2020, Sec. 2.1; Hoffmann et al. 2022 use the same).

    >>> kaplan_training_flops(175e9, 300e9)  # GPT-3 (Brown et al. 2020)
    3.15e+23
    """
    if n_params < 0 or tokens < 0:
        raise ValueError(f"n_params={n_params} and tokens={tokens} must both be >= 0")
    return float(KAPLAN_FLOPS_PER_PARAM_TOKEN * n_params * tokens)


def _check_seq_len(seq_len: int, causal: bool) -> int:
    # A Python int, so products with numpy integers never wrap around int64 (fuzzed, issue 13).
    if not isinstance(causal, bool):
        raise ScaleplanError(f"causal={causal!r} must be True or False")
    return whole("seq_len", seq_len, example="seq_len=1024")

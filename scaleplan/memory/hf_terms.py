"""Bytes Hugging Face transformers' modeling code saves for backward, derived per operation.

The terms follow `scaleplan.memory.activations` (a dict of named byte terms per block, per model,
for the embedding and for the head; plain ``+``/``*`` on ``b`` and ``s``), but each term is one
tensor that transformers 5.25's modeling files hand to autograd (read from
``models/{llama,gemma,gpt2,gpt_neox}/modeling_*.py``, ``integrations/sdpa_attention.py`` and
``loss/loss_utils.py``), counted as a whole storage and once when several operations save views
of it. Parameters and autocast's weight copies are excluded (the latter are
`scaleplan.memory.activations.autocast_weight_copy_bytes`).

What differs from scaleplan's own reference model (nanoGPT's layout):

- RMSNorm (Llama, Qwen2, Mistral, Gemma) is Python arithmetic in fp32: ``pow`` keeps the fp32
  input, ``rsqrt`` its fp32 output per token, the scale's ``mul`` the fp32 normalised input; Gemma
  also keeps the fp32 vector ``1 + weight`` (d elements) per norm.
- Rotary cos/sin are computed per forward for one batch row, ``s x rotary_dims`` each in fp32,
  saved by the q and k rotations and shared by every block; q and k are rotated out of place.
  Under autocast the rotation promotes to fp32, so SDPA (or the eager matmuls) keep autocast's
  16-bit casts of the rotated q and k.
- Llama-family models have separate q, k, v (and gate, up) projections: under autocast each casts
  the norm output on its own, so 3 (and 2) 16-bit copies are saved instead of one.
- Eager attention: ``softmax(..., dtype=float32)`` keeps the fp32 probabilities; under autocast
  the next matmul also keeps its 16-bit cast of them (or of the dropped probabilities).
- CPU SDPA with dropout runs the math kernel, in fp32 whatever the input dtype: scaled q, k and v
  (k and v expanded to the query heads), the softmax, the dropout mask and the dropped
  probabilities, all fp32; without dropout the fused kernel keeps q, k, v, its output and the
  log-sum-exp.
- GPT-2's ``gelu_new`` is ``0.5 x (1 + tanh(c (x + 0.044715 x^3)))`` written in Python: autograd
  keeps x, the tanh output, ``1 + tanh`` and ``0.5 x`` (4 f-wide tensors) and the product feeds
  the down projection (a fifth).
- The loss upcasts the logits to fp32 (``ForCausalLMLoss``) and keeps the fp32 log-softmax, the
  shifted int64 labels and a 4-byte weight total.
- Gradient checkpointing (``gradient_checkpointing_enable()``: torch's non-reentrant checkpoint
  around each decoder layer) keeps each block's fp32 input plus what every layer call receives:
  the rotary cos/sin, the position ids (int64, one row) and, for eager attention, the additive
  causal mask (b x s x s in fp32).
- CPU dropout (``nn.Dropout``) keeps a mask in its input's dtype; CUDA keeps a bool mask.

Validated on CPU only (``python -m scaleplan.reference.hf_measure --grid``,
docs/validation/hf-memory.md); ``device="cuda"`` changes only what is known to differ on CUDA
(1-byte dropout masks; SDPA stays fused with dropout) and is not measured here.
"""

from __future__ import annotations

from typing import Any, Literal

from scaleplan.checks import at_one, may_be_one
from scaleplan.model.config import GPTConfig, Precision

__all__ = [
    "HF_FAMILIES",
    "HFAttention",
    "HFDevice",
    "HFFamily",
    "hf_block_saved_terms",
    "hf_embedding_saved_terms",
    "hf_family",
    "hf_head_saved_terms",
    "hf_model_saved_terms",
    "hf_saved_bytes",
    "hf_saved_terms",
]

HFFamily = Literal["llama", "qwen2", "mistral", "gemma", "gpt2", "gpt_neox"]
HF_FAMILIES: tuple[HFFamily, ...] = ("llama", "qwen2", "mistral", "gemma", "gpt2", "gpt_neox")
HFAttention = Literal["sdpa", "eager"]
HFDevice = Literal["cpu", "cuda"]

FP32 = 4
HALF = 2
INDEX = 8  # int64 ids
_AUTOCAST = frozenset({"bf16-mixed", "16-mixed"})
_LLAMA_LIKE = frozenset({"llama", "qwen2", "mistral", "gemma"})


def hf_family(cfg: GPTConfig) -> HFFamily:
    """The transformers modeling code whose saved tensors ``cfg`` is counted as: "gpt_neox" for
    a parallel block or LayerNorm with rotary positions, "gpt2" for other LayerNorm models,
    "gemma" for a GeGLU MLP with RMSNorm, else "llama" (Qwen2 and Mistral save the same tensors
    as Llama).

    >>> hf_family(GPTConfig())
    'gpt2'
    >>> hf_family(GPTConfig(norm="rmsnorm", mlp="swiglu", position="rope", bias=False))
    'llama'
    """
    if cfg.parallel != "none" or (cfg.norm == "layernorm" and cfg.position == "rope"):
        return "gpt_neox"
    if cfg.norm == "layernorm":
        return "gpt2"
    return "gemma" if cfg.mlp == "geglu" else "llama"


def _act(precision: Precision) -> int:
    if precision == "32-true":
        return FP32
    if precision in _AUTOCAST:
        return HALF
    raise ValueError(f"precision={precision!r}: the Hugging Face terms cover fp32 parameters "
                     "only ('32-true', 'bf16-mixed', '16-mixed')")


def _norm(family: str, T: Any, d: int, prefix: str, keep_input: bool = True) -> dict[str, Any]:
    """One norm on the fp32 residual stream (fp32 parameters keep it fp32 under autocast)."""
    if family in ("gpt2", "gpt_neox"):  # nn.LayerNorm: input, fp32 mean and rstd
        terms = {f"{prefix}_input": T * d * FP32, f"{prefix}_stats": 2 * T * FP32}
    else:  # Python RMSNorm: fp32 input, rstd, fp32 normalised input
        terms = {f"{prefix}_input": T * d * FP32, f"{prefix}_stats": T * FP32,
                 f"{prefix}_normalized": T * d * FP32}
        if family == "gemma":
            terms[f"{prefix}_one_plus_weight"] = d * FP32
    if not keep_input:  # GPT-NeoX's parallel block: both norms read the same tensor
        del terms[f"{prefix}_input"]
    return terms


def _flash(family: str, cfg: GPTConfig, b: Any, s: Any, e: int) -> dict[str, Any]:
    """SDPA's fused CPU kernel: q, k, v, its output, the log-sum-exp, plus the layout copies."""
    a, k, h = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    T = b * s
    terms: dict[str, Any] = {"attn_lse": b * a * s * FP32, "attn_out": T * a * h * e}
    if family == "gpt2":  # q, k, v are views of c_attn's output
        terms["qkv"] = T * 3 * a * h * e
    elif family == "gpt_neox":  # v a view of the fused output; q, k concatenated copies; the
        # output is contiguous in (b, a, s, h), so the dense layer's input is a copy
        terms.update(qkv=T * 3 * a * h * e, rope_qk=2 * T * a * h * e,
                     dense_input=T * a * h * e)
    else:  # rotated q and k (autocast's casts under bf16), v a view of v_proj's output
        terms.update(rope_qk=T * (a + k) * h * e, v=T * k * h * e)
    return terms


def _math(cfg: GPTConfig, b: Any, s: Any, e: int, *, eager: bool, autocast: bool,
          dropout: bool, mask_bytes: int) -> dict[str, Any]:
    """Eager attention, or CPU SDPA's math kernel (taken with dropout; it computes in fp32).

    Eager: the two matmuls keep q, k and v (autocast's 16-bit casts under autocast; copies where
    a transposed view must be made contiguous, and k and v expanded to the query heads for GQA),
    the softmax keeps its fp32 output, and under autocast the PV matmul keeps its 16-bit cast of
    the (dropped) probabilities. With dropout the mask is in the dtype of the probabilities
    entering it (``mask_bytes``: fp32 where rotary promoted q to fp32 and the softmax is cast to
    q's dtype, GPT-2's 16-bit v dtype, bool on CUDA). The output projection's input is the
    contiguous copy of the transposed output, T a h e.
    """
    a, h = cfg.n_head, cfg.head_dim
    T, P = b * s, b * a * s * s
    ae = e if eager else FP32
    terms: dict[str, Any] = {"q_k_v_copies": 3 * T * a * h * ae, "attn_probs": P * FP32,
                             "attn_out": T * a * h * e}
    if dropout:
        terms["attn_dropout_mask"] = P * (mask_bytes if eager else FP32)
        terms["attn_dropped"] = P * ae  # the PV matmul's 16-bit cast, or the dropout output
    elif autocast and eager:
        terms["attn_probs_cast"] = P * HALF  # the PV matmul's 16-bit cast of the softmax
    return terms


def _attention(family: str, cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
               attention: HFAttention, device: HFDevice) -> dict[str, Any]:
    e = _act(precision)
    autocast = precision in _AUTOCAST
    dropout = cfg.dropout > 0
    eager = attention == "eager"
    if not eager and not (dropout and device == "cpu"):
        return _flash(family, cfg, b, s, e)
    mask = 1 if device == "cuda" else (e if family == "gpt2" else FP32)
    terms = _math(cfg, b, s, e, eager=eager, autocast=autocast, dropout=dropout,
                  mask_bytes=mask)
    # At b = 1 matmul folds (1, a, s, h) into (a, s, h) without a copy, so a v that is a view of
    # the fused q/k/v output (GPT-2, GPT-NeoX; not cast, so in e bytes) is saved as that whole
    # storage, 3 a h per token instead of a h. GPT-2's eager q and k are views of it too (its
    # three copies become that one storage, the same bytes); the math kernel scales q and k.
    math_fp32 = not eager and not autocast
    if may_be_one(b) and ((family == "gpt_neox" and (eager or math_fp32))
                           or (family == "gpt2" and math_fp32)):
        terms["fused_qkv_view"] = at_one(b, 2 * b * s * cfg.n_head * cfg.head_dim * e, 0)
    return terms


def _mlp(family: str, cfg: GPTConfig, T: Any, e: int, autocast: bool) -> dict[str, Any]:
    d, f = cfg.n_embd, cfg.mlp_hidden
    if family == "gpt2":  # gelu_new's four kept intermediates, then c_proj's input
        return {"mlp_input": T * d * e, "mlp_activations": 5 * T * f * e}
    if family == "gpt_neox":  # exact GELU keeps its input; dense_4h_to_h keeps the output
        return {"mlp_input": T * d * e, "mlp_activations": 2 * T * f * e}
    # gate and up each cast the norm output under autocast; gate out, act out, up out, product
    return {"mlp_input": T * d * e * (2 if autocast else 1), "mlp_activations": 4 * T * f * e}


def hf_block_saved_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                         attention: HFAttention = "sdpa", checkpointing: bool = False,
                         device: HFDevice = "cpu", family: HFFamily | None = None
                         ) -> dict[str, Any]:
    """Bytes one decoder layer of transformers' modeling code saves for backward, by tensor.

    With T = b s tokens, d = n_embd, a/k = query/key-value heads, h = head_dim, f = mlp_hidden,
    e = 4 (``"32-true"``) or 2 (autocast): the two norms (fp32, see the module docstring), the
    attention projections' input (T d e; three copies under autocast for separate q/k/v), the
    attention core (`_flash` or `_math`), the MLP (`_mlp`) and, for GPT-2 and GPT-NeoX with
    dropout, the two residual-branch masks (T d e each on CPU: the branch output's dtype; bool
    on CUDA). ``cfg.dropout`` is every dropout probability. With ``checkpointing`` only the
    layer's fp32 input remains (what it shares with the other layers is
    `hf_model_saved_terms`).

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, bias=False)
    >>> hf_block_saved_terms(cfg, 1, 4, precision="32-true")["mlp_activations"]
    2560
    """
    family = family or hf_family(cfg)
    d, T = cfg.n_embd, b * s
    e, autocast = _act(precision), precision in _AUTOCAST
    if checkpointing:
        return {"block_input": T * d * FP32}
    terms = _norm(family, T, d, "norm1")
    separate = family in _LLAMA_LIKE and autocast
    terms["qkv_input"] = T * d * e * (3 if separate else 1)
    terms.update(_attention(family, cfg, b, s, precision=precision, attention=attention,
                            device=device))
    shared_input = family == "gpt_neox" and cfg.parallel != "none"
    terms.update(_norm(family, T, d, "norm2", keep_input=not shared_input))
    terms.update(_mlp(family, cfg, T, e, autocast))
    if cfg.dropout > 0 and family in ("gpt2", "gpt_neox"):
        terms["resid_dropout_masks"] = 2 * T * d * (1 if device == "cuda" else e)
    return terms


def hf_model_saved_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                         attention: HFAttention = "sdpa", checkpointing: bool = False,
                         family: HFFamily | None = None) -> dict[str, Any]:
    """Tensors every layer shares: the rotary cos and sin (one batch row, ``s x rotary_dims``
    fp32 each) and, with checkpointing, what each checkpointed call holds besides the layer's
    input: the position ids (int64, s; rotary families) and eager attention's additive causal
    mask (b x s x s, fp32).

    >>> cfg = GPTConfig(n_layer=2, n_head=2, n_embd=8, vocab_size=16, position="rope",
    ...                 norm="rmsnorm", mlp="swiglu", bias=False)
    >>> hf_model_saved_terms(cfg, 2, 4, precision="32-true", attention="eager",
    ...                      checkpointing=True)
    {'rope_cos_sin': 128, 'layer_position_ids': 32, 'causal_mask': 128}
    """
    family = family or hf_family(cfg)
    _act(precision)
    terms: dict[str, Any] = {}
    if cfg.position == "rope":
        rotary = int(cfg.head_dim * cfg.rotary_fraction)
        terms["rope_cos_sin"] = 2 * s * rotary * FP32
        if checkpointing:
            terms["layer_position_ids"] = s * INDEX
    if checkpointing and attention == "eager":
        terms["causal_mask"] = b * s * s * FP32
    del family
    return terms


def hf_embedding_saved_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                             device: HFDevice = "cpu", family: HFFamily | None = None
                             ) -> dict[str, Any]:
    """The token ids (int64), GPT-2's position ids (int64, one row), Gemma's sqrt(d) scale (a
    saved fp32 scalar) and, with dropout, GPT-2's / GPT-NeoX's embedding dropout mask (fp32 on
    CPU, bool on CUDA).

    >>> hf_embedding_saved_terms(GPTConfig(dropout=0.1), 2, 4, precision="32-true")
    {'token_ids': 64, 'position_ids': 32, 'embedding_dropout_mask': 24576}
    """
    family = family or hf_family(cfg)
    _act(precision)
    terms: dict[str, Any] = {"token_ids": b * s * INDEX}
    if family == "gpt2":
        terms["position_ids"] = s * INDEX
    if family == "gemma":
        terms["embedding_scale"] = FP32
    if cfg.dropout > 0 and family in ("gpt2", "gpt_neox"):
        terms["embedding_dropout_mask"] = b * s * cfg.n_embd * (1 if device == "cuda" else FP32)
    return terms


def hf_head_saved_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                        family: HFFamily | None = None) -> dict[str, Any]:
    """The final norm, lm_head's input (T d e) and ``ForCausalLMLoss``: the fp32 log-softmax of
    the upcast logits (T V), the shifted int64 labels (T) and nll_loss's 4-byte weight total.

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16)
    >>> hf_head_saved_terms(cfg, 1, 4, precision="bf16-mixed")["log_softmax"]
    256
    """
    family = family or hf_family(cfg)
    T = b * s
    terms = _norm(family, T, cfg.n_embd, "final_norm")
    terms["lm_head_input"] = T * cfg.n_embd * _act(precision)
    terms["log_softmax"] = T * cfg.vocab_size * FP32
    # the labels padded by one and shifted: ``[..., 1:].contiguous()`` copies them for b > 1; at
    # b = 1 the slice is contiguous already and the padded storage (s + 1 ids) is what is kept
    terms["targets"] = at_one(b, s + 1, T) * INDEX + FP32
    return terms


def hf_saved_bytes(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                   attention: HFAttention = "sdpa", checkpointing: bool = False,
                   device: HFDevice = "cpu", family: HFFamily | None = None) -> Any:
    """Total bytes saved for backward by one forward + loss of transformers' model for ``cfg``:
    ``n_layer`` blocks, the shared terms, the embedding and the head (autocast's weight copies
    excluded). Bytes; ``b`` and ``s`` may be ints, numpy arrays or sympy symbols.

    >>> cfg = GPTConfig(n_layer=2, n_head=2, n_embd=8, vocab_size=16, bias=False)
    >>> hf_saved_bytes(cfg, 1, 4, precision="32-true", checkpointing=True)
    908
    """
    terms = hf_saved_terms(cfg, b, s, precision=precision, attention=attention,
                           checkpointing="full" if checkpointing else "none", device=device,
                           family=family)
    total: Any = 0
    for value in terms.values():
        total = total + value
    return total


def hf_saved_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                   attention: str = "sdpa", checkpointing: str = "none",
                   device: str = "cpu", layers: Any = None,
                   family: HFFamily | None = None) -> dict[str, Any]:
    """The flat dict `scaleplan.memory.training`'s ``_saved_terms`` returns, for transformers'
    modeling code: embedding, ``layers`` (default ``cfg.n_layer``) times each block term, the
    shared terms and the head, in bytes. Takes scaleplan's own spellings: ``attention`` "flash"
    (= "sdpa") or "eager", ``checkpointing`` "none" or "full" (transformers has no selective
    recomputation: "selective" is refused), ``device`` "cpu" or "cuda" ("cpu-cuda-semantics"
    counts as "cuda").

    >>> cfg = GPTConfig(n_layer=2, n_head=2, n_embd=8, vocab_size=16, bias=False)
    >>> sum(hf_saved_terms(cfg, 1, 4, precision="32-true", checkpointing="full").values())
    908
    """
    if checkpointing not in ("none", "full"):
        raise ValueError(f"checkpointing={checkpointing!r}: transformers checkpoints whole "
                         "layers ('full') or nothing ('none')")
    if attention not in ("flash", "sdpa", "eager"):
        raise ValueError(f"attention={attention!r}: use 'flash'/'sdpa' or 'eager'")
    attn: HFAttention = "eager" if attention == "eager" else "sdpa"
    dev: HFDevice = "cpu" if device == "cpu" else "cuda"
    ckpt = checkpointing == "full"
    family = family or hf_family(cfg)
    kw: dict[str, Any] = {"precision": precision, "family": family}
    out = dict(hf_embedding_saved_terms(cfg, b, s, device=dev, **kw))
    block = hf_block_saved_terms(cfg, b, s, attention=attn, checkpointing=ckpt, device=dev,
                                 **kw)
    n = cfg.n_layer if layers is None else layers
    out.update({name: n * v for name, v in block.items()})
    out.update(hf_model_saved_terms(cfg, b, s, attention=attn, checkpointing=ckpt, **kw))
    out.update(hf_head_saved_terms(cfg, b, s, **kw))
    return out

"""Bytes torchtune's model code saves for backward, derived per operation.

The terms follow `scaleplan.memory.hf_terms` (a dict of named byte terms per block, per model, for
the embedding and for the head; plain ``+``/``*`` on ``b`` and ``s``), but each term is one tensor
that torchtune 0.6.1's modules hand to autograd, read from ``torchtune/modules/{attention,
attention_utils,transformer,rms_norm,position_embeddings,feed_forward,tied_linear}.py``,
``torchtune/models/{llama3_1/_position_embeddings,qwen2/_positional_embeddings,gemma/rms_norm,
gemma/gemma_norm_embedding}.py`` and ``recipes/full_finetune_single_device.py`` (``_loss_step``),
counted as a whole storage and once when several operations save views of it. Parameters are
excluded.

Its recipes set ``dtype: bf16`` (bf16 parameters, no autocast: ``precision="bf16-true"``, e = 2
bytes) or ``fp32`` (``"32-true"``, e = 4). What that code saves, with T = b s tokens:

- ``RMSNorm``: ``F.rms_norm(x.float(), weight=scale).to(x.dtype)``; the composite keeps the fp32
  input, the fp32 rstd per token and the fp32 normalised input (2 T d 4 + T 4), in fp32 and bf16
  alike. ``GemmaRMSNorm`` is Python arithmetic saving the same three plus the fp32 ``1 + scale``
  (d 4).
- Separate q, k, v projections without autocast share one saved input (T d e), as do the MLP's
  gate and up projections.
- RoPE (``RotaryPositionalEmbeddings``, ``Llama3ScaledRoPE``: interleaved pairs in fp32) multiplies
  the input by slices of its fp32 cache buffer, so it saves only the cache: a view of the buffer
  (no bytes) for an unpacked batch, and with packed ``input_pos`` a gathered copy,
  ``cache[input_pos]`` (T h 4), for q and again for k. Qwen2's half rotation casts cos and sin to
  the input's dtype: in bf16 four casts per layer (q's and k's cos and sin, one batch row of s h 2
  each unpacked, T h 2 packed); in fp32 no cast, and packed the gathered ``T x 2h`` fp32 rows once
  for q and once for k.
- Grouped-query attention: k and v are expanded to the query heads before SDPA
  (``unsqueeze(2).expand(...).flatten(1, 2)``), a copy of T a h e each, except for one key-value
  head, where the flatten is a view and the saved storage is the T h e projection. SDPA keeps q,
  the two, its output (which is also the output projection's input: ``transpose(1, 2)
  .contiguous()`` is a no-op on its layout) and the fp32 log-sum-exp (b a s 4).
- Packed batches: on CUDA (compute capability 7.5+) the collate makes a flex-attention
  ``BlockMask``, a batch tensor of ``(b, 1, s/128, s/128)`` int32 blocks that costs no activation,
  and flex attention saves what SDPA does. Without flex (CPU) the mask is a dense ``b x s x s`` bool
  and SDPA saves its conversion to an additive mask in q's dtype, b s s e per layer.
- SwiGLU and Gemma's tanh-GELU MLP: the activation's input, its output, the up projection's output
  and their product (4 T f e).
- The embedding keeps the int64 token ids; Gemma's ``sqrt(d)`` scale is a saved 0-d tensor (e).
- ``TransformerDecoder.unembed``: the final norm, the output projection's input (T d e; a
  ``TiedLinear`` for tied embeddings saves the same) and ``.float()`` on the logits; the recipe's
  ``torch.nn.CrossEntropyLoss`` keeps the fp32 log-softmax (T V 4), the shifted int64 labels
  (``torch.hstack`` makes them new, T 8) and nll_loss's 4-byte weight total.
- ``enable_activation_checkpointing``: ``set_activation_checkpointing`` wraps every
  ``TransformerSelfAttentionLayer`` in torch's non-reentrant checkpoint, which keeps only each
  layer's input (T d e); the mask and ``input_pos`` are batch tensors.
- ``compile: True`` (``training.compile_model``: each layer compiled on its own; the recipe drops
  ``compile_loss``'s result for the standard loss, so the head and loss stay eager): AOT autograd's
  min-cut partitioner keeps per layer its input, the attention norm's output, the residual after
  attention and the MLP norm's output (4 T d e), the two norms' fp32 rstd (T 4 each), SDPA's q,
  k, v, output and log-sum-exp as above (and the packed CPU mask), the gate and up projections'
  outputs and their product (3 T f e), and recomputes the rest (the fp32 norm copies, RoPE, the
  activation); packed, the int64 ``input_pos`` (b s 8) is kept once to redo the cache gathers.
- The RoPE cache itself is a non-persistent fp32 buffer of ``max_seq_len`` (``block_size``) rows, h
  (interleaved) or 2h (Qwen2) values each, plus ``theta`` (h/2), built once and shared by every
  layer: on the device for the whole step though not an activation (`tune_buffer_bytes`).

Validated on CPU (``python -m scaleplan.reference.tune_measure --grid``,
docs/validation/torchtune-memory.md); ``device="cuda"`` changes only the packed mask (flex
attention's ``BlockMask`` instead of the dense mask).
"""

from __future__ import annotations

from typing import Any, Literal

from scaleplan.model.config import GPTConfig, Precision

__all__ = [
    "TUNE_FAMILIES",
    "TUNE_LOGITS_BYTES",
    "TUNE_PRECISIONS",
    "TuneFamily",
    "tune_block_saved_terms",
    "tune_buffer_bytes",
    "tune_compiled_chunked_loss_terms",
    "tune_embedding_saved_terms",
    "tune_family",
    "tune_head_saved_terms",
    "tune_saved_bytes",
    "tune_saved_terms",
]

TuneFamily = Literal["llama3_2", "llama3_1", "qwen2", "gemma"]
TUNE_FAMILIES: tuple[TuneFamily, ...] = ("llama3_2", "llama3_1", "qwen2", "gemma")
TUNE_PRECISIONS = ("bf16-true", "32-true")
"""What torchtune's recipes run: ``dtype: bf16`` (bf16 parameters, no autocast) or ``fp32``."""

FP32 = 4
HALF = 2
INDEX = 8  # int64 token ids and labels
TUNE_LOGITS_BYTES = FP32  # unembed's ``self.output(h).float()``: the loss sees fp32 logits


def tune_family(cfg: GPTConfig) -> TuneFamily:
    """The torchtune component builder ``cfg`` is counted as: "gemma" for a GeGLU MLP, "qwen2"
    for biased q/k/v projections, else "llama3_2" (Llama 3.1's builder saves the same tensors).

    >>> tune_family(GPTConfig(norm="rmsnorm", mlp="swiglu", position="rope", bias=False))
    'llama3_2'
    """
    if cfg.mlp == "geglu":
        return "gemma"
    return "qwen2" if cfg.qkv_bias else "llama3_2"


def _act(precision: Precision) -> int:
    if precision == "32-true":
        return FP32
    if precision == "bf16-true":
        return HALF
    raise ValueError(f"precision={precision!r}: torchtune's recipes run 'bf16-true' "
                     "(dtype: bf16) or '32-true' (dtype: fp32)")


def _norm(gemma: bool, T: Any, d: int, prefix: str) -> dict[str, Any]:
    """One RMSNorm: fp32 input, fp32 rstd per token, fp32 normalised input (Gemma: 1 + scale)."""
    terms = {f"{prefix}_input": T * d * FP32, f"{prefix}_stats": T * FP32,
             f"{prefix}_normalized": T * d * FP32}
    if gemma:
        terms[f"{prefix}_one_plus_weight"] = d * FP32
    return terms


def _rope(family: str, b: Any, s: Any, h: int, e: int, packed: bool) -> dict[str, Any]:
    """What the two rotations of one layer (q, then k) save: the cache slices they multiply by
    (none when both are views of the buffer)."""
    if family == "qwen2" and e == HALF:  # cos and sin cast to bf16, for q and again for k
        return {"rope_cache_slices": 4 * (b if packed else 1) * s * h * HALF}
    if not packed:
        return {}
    rows = 2 * h if family == "qwen2" else h  # gathered [cos, sin] or interleaved (h/2, 2) rows
    return {"rope_cache_slices": 2 * b * s * rows * FP32}


def _compiled_block(cfg: GPTConfig, b: Any, s: Any, e: int, packed: bool, cpu: bool,
                    kv_heads: int) -> dict[str, Any]:
    """What inductor's partition of one compiled layer keeps (see the module docstring)."""
    d, a, h, f = cfg.n_embd, cfg.n_head, cfg.head_dim, cfg.mlp_hidden
    T = b * s
    terms: dict[str, Any] = {
        "block_input": T * d * e, "norm1_output": T * d * e, "attn_residual": T * d * e,
        "norm2_output": T * d * e, "norm_stats": 2 * T * FP32, "attn_q": T * a * h * e,
        "attn_k_v": 2 * T * kv_heads * h * e, "attn_out": T * a * h * e,
        "attn_lse": b * a * s * FP32, "mlp_activations": 3 * T * f * e}
    if packed and cpu:
        terms["attn_mask"] = b * s * s * e
    return terms


def tune_block_saved_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                           checkpointing: bool = False, packed: bool = False,
                           device: Literal["cpu", "cuda"] = "cuda",
                           family: TuneFamily | None = None,
                           compiled: bool = False) -> dict[str, Any]:
    """Bytes one ``TransformerSelfAttentionLayer`` of torchtune saves for backward, by tensor.

    With T = b s tokens, d = n_embd, a/k = query/key-value heads, h = head_dim, f = mlp_hidden,
    e = 2 (``"bf16-true"``) or 4 (``"32-true"``): two norms, the projections' input (T d e), the
    rotary cache slices (`_rope`), SDPA's q, expanded k and v, output and log-sum-exp, the packed
    CPU mask, the MLP's input (T d e) and its four f-wide tensors. With ``checkpointing`` only the
    layer's input remains (T d e); ``compiled``: what inductor's partition keeps instead
    (`_compiled_block`).

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, bias=False,
    ...                 norm="rmsnorm", mlp="swiglu", position="rope", mlp_hidden=16)
    >>> tune_block_saved_terms(cfg, 1, 4, precision="bf16-true")["mlp_activations"]
    512
    """
    family = family or tune_family(cfg)
    d, a, k, h, f = cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.mlp_hidden
    T, e = b * s, _act(precision)
    if checkpointing:
        return {"block_input": T * d * e}
    gemma = family == "gemma"
    kv_heads = 1 if k == 1 else a  # one key-value head: the expand + flatten is a view
    if compiled:
        return _compiled_block(cfg, b, s, e, packed, device == "cpu", kv_heads)
    terms = _norm(gemma, T, d, "norm1")
    terms["qkv_input"] = T * d * e
    terms.update(_rope(family, b, s, h, e, packed))
    terms.update(attn_q=T * a * h * e, attn_k_v=2 * T * kv_heads * h * e,
                 attn_out=T * a * h * e, attn_lse=b * a * s * FP32)
    if packed and device == "cpu":  # SDPA's additive copy of the dense block-causal mask
        terms["attn_mask"] = b * s * s * e
    terms.update(_norm(gemma, T, d, "norm2"))
    terms.update(mlp_input=T * d * e, mlp_activations=4 * T * f * e)
    return terms


def tune_embedding_saved_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                               family: TuneFamily | None = None) -> dict[str, Any]:
    """The int64 token ids and, for Gemma, the saved ``sqrt(d)`` scalar (e bytes).

    >>> tune_embedding_saved_terms(GPTConfig(mlp="geglu"), 2, 4, precision="bf16-true")
    {'token_ids': 64, 'embedding_scale': 2}
    """
    family = family or tune_family(cfg)
    terms: dict[str, Any] = {"token_ids": b * s * INDEX}
    if family == "gemma":
        terms["embedding_scale"] = _act(precision)
    return terms


def tune_head_saved_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                          family: TuneFamily | None = None) -> dict[str, Any]:
    """The final norm, the output projection's input (T d e) and the recipe's standard loss:
    the fp32 log-softmax of the ``.float()`` logits (T V 4), the shifted int64 labels (T 8) and
    nll_loss's 4-byte weight total.

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, norm="rmsnorm")
    >>> tune_head_saved_terms(cfg, 1, 4, precision="bf16-true")["log_softmax"]
    256
    """
    family = family or tune_family(cfg)
    T = b * s
    terms = _norm(family == "gemma", T, cfg.n_embd, "final_norm")
    terms["lm_head_input"] = T * cfg.n_embd * _act(precision)
    terms["log_softmax"] = T * cfg.vocab_size * TUNE_LOGITS_BYTES
    terms["targets"] = T * INDEX + FP32
    return terms


def tune_compiled_chunked_loss_terms(cfg: GPTConfig, b: Any, s: Any, *,
                                     precision: Precision) -> dict[str, Any]:
    """The loss side that ``CEWithChunkedOutputLoss`` keeps when the recipe compiles it
    (``compile: True``: ``compile_loss`` compiles its per-chunk ``compute_cross_entropy`` in
    place): every chunk's logits in the activation dtype (T V e in all: the fp32 upcast and the
    log-softmax are recomputed), its int64 labels (T 8) and its fp32 row max and log-sum-exp
    (2 T 4), plus the int64 count of labelled tokens the summed loss is divided by (eager
    ``div`` saves its divisor). These replace `tune_head_saved_terms`' ``log_softmax`` and
    ``targets`` (the eager chunked loss keeps every chunk's fp32 log-softmax instead: T V 4).

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16)
    >>> tune_compiled_chunked_loss_terms(cfg, 2, 8, precision="bf16-true")
    {'logits': 512, 'targets': 136, 'logsumexp': 128}
    """
    T = b * s
    return {"logits": T * cfg.vocab_size * _act(precision), "targets": T * INDEX + INDEX,
            "logsumexp": 2 * T * FP32}


def tune_buffer_bytes(cfg: GPTConfig, family: TuneFamily | None = None) -> int:
    """The RoPE module's fp32 buffers, shared by every layer: the cache (``block_size`` rows of
    h values, 2h for Qwen2's [cos, sin]) and ``theta`` (h/2 values).

    >>> tune_buffer_bytes(GPTConfig(n_head=2, n_embd=128, block_size=128, position="rope",
    ...                             bias=False))  # 128 x 64 x 4 + 32 x 4
    32896
    """
    family = family or tune_family(cfg)
    h = cfg.head_dim
    rows = 2 * h if family == "qwen2" else h
    return cfg.block_size * rows * FP32 + (h // 2) * FP32


def tune_saved_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                     checkpointing: str = "none", device: str = "cuda", layers: Any = None,
                     packed: bool = False, family: TuneFamily | None = None,
                     buffers: bool = True, compiled: bool = False) -> dict[str, Any]:
    """The flat dict `scaleplan.memory.stage.stage_parts` sums, for torchtune's model and
    recipe: embedding, ``layers`` (default ``cfg.n_layer``) times each block term, the head and,
    with ``buffers``, the RoPE buffers (`tune_buffer_bytes`: resident, not saved, but on the
    device throughout); ``compiled``: the layers under ``compile: True``. ``checkpointing`` "none"
    or "full" (torchtune's recipes checkpoint every
    layer whole); ``device`` "cpu" or "cuda" ("cpu-cuda-semantics" counts as "cuda").

    >>> cfg = GPTConfig(n_layer=2, n_head=2, n_embd=8, vocab_size=16, bias=False,
    ...                 norm="rmsnorm", mlp="swiglu", position="rope", block_size=8)
    >>> sum(tune_saved_terms(cfg, 1, 4, precision="bf16-true", checkpointing="full",
    ...                      buffers=False).values())
    788
    """
    if checkpointing not in ("none", "full"):
        raise ValueError(f"checkpointing={checkpointing!r}: torchtune's recipes checkpoint "
                         "whole layers ('full') or nothing ('none')")
    family = family or tune_family(cfg)
    out = dict(tune_embedding_saved_terms(cfg, b, s, precision=precision, family=family))
    block = tune_block_saved_terms(cfg, b, s, precision=precision,
                                   checkpointing=checkpointing == "full", packed=packed,
                                   device="cpu" if device == "cpu" else "cuda", family=family,
                                   compiled=compiled)
    n = cfg.n_layer if layers is None else layers
    out.update({name: n * v for name, v in block.items()})
    if compiled and packed and checkpointing != "full":
        out["input_pos"] = b * s * INDEX  # kept once, to redo the gathers in backward
    out.update(tune_head_saved_terms(cfg, b, s, precision=precision, family=family))
    if buffers:
        out["rope_buffers"] = tune_buffer_bytes(cfg, family)
    return out


def tune_saved_bytes(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                     checkpointing: bool = False, packed: bool = False,
                     device: Literal["cpu", "cuda"] = "cpu",
                     family: TuneFamily | None = None, compiled: bool = False) -> Any:
    """Total bytes saved for backward by one forward + standard loss of torchtune's model for
    ``cfg`` (the RoPE buffers excluded: they are not saved tensors). Bytes; ``b`` and ``s`` may
    be ints, numpy arrays or sympy symbols.

    >>> cfg = GPTConfig(n_layer=2, n_head=2, n_embd=8, vocab_size=16, bias=False,
    ...                 norm="rmsnorm", mlp="swiglu", position="rope", block_size=8)
    >>> tune_saved_bytes(cfg, 1, 4, precision="bf16-true", checkpointing=True)
    788
    """
    terms = tune_saved_terms(cfg, b, s, precision=precision,
                             checkpointing="full" if checkpointing else "none", device=device,
                             packed=packed, family=family, buffers=False, compiled=compiled)
    total: Any = 0
    for value in terms.values():
        total = total + value
    return total

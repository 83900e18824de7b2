"""Bytes litgpt's GPT saves for backward in its full fine-tune step, derived per operation.

The terms follow `scaleplan.memory.hf_terms` (a dict of named byte terms per block, for the
model, the embedding, the head and the loss; plain ``+``/``*`` on ``b`` and ``s``), but each term
is one tensor that litgpt 0.5.13's ``litgpt/model.py`` (``GPT``, ``Block``,
``CausalSelfAttention``, ``RMSNorm``, ``LLaMAMLP``, ``GemmaMLP``, ``GptNeoxMLP``, ``apply_rope``)
and ``litgpt/utils.py`` (``chunked_cross_entropy``) hand to autograd in the step of
``litgpt/finetune/full.py``, counted as a whole storage and once when several operations save
views of it. Parameters are excluded, and so are autocast's weight copies
(`scaleplan.memory.activations.autocast_weight_copy_bytes`).

What litgpt's code saves, and where it differs from nanoGPT's layout:

- One fused q/k/v projection. q and k are rotated out of place (``torch.cat`` of the rotated and
  the pass-through dims, also with partial rotary); the rotations multiply by the cos/sin
  tables, which they save (model buffers of ``max_seq_length x rope_n_elem``: the fine-tune
  script sets ``max_seq_length`` to the longest batch, which rebuilds them in fp32).
- GQA and MQA: k and v are expanded to the query heads (``repeat_interleave``) before SDPA, so
  SDPA saves q, k and v at ``n_head`` heads each; with as many key-value heads as query heads v
  is a view of the fused projection's output, whose whole storage is saved.
- A sliding window (Phi-3) is an s x s additive mask in q's dtype, built in every block's
  forward and kept by SDPA.
- SDPA's output is transposed and reshaped before the output projection: a copy, so both the
  output and the projection's input are saved.
- ``RMSNorm`` is Python arithmetic in fp32 (``x.float()``, the fp32 ``rsqrt`` per token, the fp32
  normalised input; under bf16 parameters ``weight.float()``, and for Gemma ``1 + weight``, a
  d-element fp32 vector). ``LayerNorm`` keeps its input, mean and rstd (on CPU in the input's
  dtype, fp32 on CUDA).
- Under autocast (``bf16-mixed``) each linear casts its input on its own: the MLP's two gated
  projections keep two bf16 copies, and a shared norm (Phi-2) is cast once for q/k/v and once
  for the MLP.
- The loss runs outside Fabric's precision context on the logits as Fabric's wrapper returns
  them: its ``convert_output`` casts the model's floating outputs to torch's default dtype, so
  the bf16 logits of bf16-true and bf16-mixed become fp32 (`LITGPT_LOGITS_BYTES`) before
  `litgpt_loss_saved_terms` and the loop holds them in fp32.

Validated on CPU (``python -m scaleplan.reference.litgpt_measure --grid``,
docs/validation/litgpt-memory.md).
"""

from __future__ import annotations

from typing import Any, Literal

from scaleplan.checks import is_integer
from scaleplan.memory.dtypes import larger, smaller
from scaleplan.model.config import GPTConfig, Precision
from scaleplan.model.params import param_terms

__all__ = [
    "LITGPT_LOGITS_BYTES",
    "LITGPT_LOSS_CHUNK",
    "LITGPT_PRECISIONS",
    "LitgptPrecision",
    "litgpt_block_saved_terms",
    "litgpt_embedding_saved_terms",
    "litgpt_head_saved_terms",
    "litgpt_logits_copy_bytes",
    "litgpt_loss_saved_terms",
    "litgpt_loss_transients",
    "litgpt_model_saved_terms",
    "litgpt_no_sync_gradient_bytes",
    "litgpt_saved_bytes",
    "litgpt_saved_terms",
]

LitgptPrecision = Literal["32-true", "bf16-true", "bf16-mixed"]
"""Lightning Fabric's precisions that litgpt's fine-tune scripts offer."""

LITGPT_LOSS_CHUNK = 128  # chunked_cross_entropy's default chunk_size, rows of the flat logits
FP32 = 4
LITGPT_LOGITS_BYTES = FP32
"""Bytes per logit as litgpt's loop sees them under every Fabric precision: ``_FabricModule``
casts the model's floating outputs to torch's default dtype, fp32 (``convert_output``,
lightning/fabric/wrappers.py:138; plugins/precision/half.py:62-63 for bf16-true, amp.py:71-72
for bf16-mixed, fsdp.py:128-129 under FSDP; 32-true's are fp32 already)."""
HALF = 2
INDEX = 8  # int64 ids and targets
LITGPT_PRECISIONS: tuple[LitgptPrecision, ...] = ("32-true", "bf16-true", "bf16-mixed")


def _bytes(precision: Precision) -> tuple[int, int, bool]:
    """(matmul output bytes, residual-stream = parameter bytes, autocast) of a precision."""
    if precision not in LITGPT_PRECISIONS:
        raise ValueError(f"precision={precision!r}: litgpt's fine-tune scripts offer "
                         "'32-true', 'bf16-true' and 'bf16-mixed'")
    e = FP32 if precision == "32-true" else HALF
    r = HALF if precision == "bf16-true" else FP32
    return e, r, precision == "bf16-mixed"


def _norm(cfg: GPTConfig, T: Any, prefix: str, r: int, *, device: str,
          keep_input: bool = True) -> dict[str, Any]:
    """One norm on the residual stream (``r`` bytes per element)."""
    d = cfg.n_embd
    if cfg.norm == "layernorm":  # native_layer_norm: input, mean and rstd
        stat = FP32 if device != "cpu" else r
        terms = {f"{prefix}_input": T * d * r, f"{prefix}_stats": 2 * T * stat}
        if not keep_input:
            del terms[f"{prefix}_input"]
        return terms
    # RMSNorm: x.float() (x itself when already fp32), rsqrt's fp32 output, the normalised input
    terms = {f"{prefix}_input": T * d * FP32, f"{prefix}_stats": T * FP32,
             f"{prefix}_normalized": T * d * FP32}
    if cfg.mlp == "geglu" or r != FP32:  # Gemma's 1 + weight, or bf16 weights' .float()
        terms[f"{prefix}_weight_fp32"] = d * FP32
    if not keep_input and r == FP32:  # the same fp32 tensor as the first norm's input
        del terms[f"{prefix}_input"]
    return terms


def _attention(cfg: GPTConfig, b: Any, s: Any, e: int) -> dict[str, Any]:
    """SDPA's fused kernel after litgpt's rotation and GQA expansion, and the output copy."""
    a, k, h = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    T = b * s
    terms: dict[str, Any] = {"rope_q": T * a * h * e}
    if k == a:  # k rotated; v a view of the fused projection's output
        terms.update(rope_k=T * a * h * e, qkv=T * (a + 2 * k) * h * e)
    else:  # rotated k and v, each repeated to the query heads
        terms.update(expanded_k=T * a * h * e, expanded_v=T * a * h * e)
    terms.update(attn_lse=b * a * s * FP32, attn_out=T * a * h * e,
                 proj_input=T * a * h * e)
    if cfg.sliding_window is not None:  # built per block as an s x s float mask, which SDPA keeps
        terms["window_mask"] = s * s * e
    return terms


def _mlp(cfg: GPTConfig, T: Any, e: int) -> dict[str, Any]:
    f = cfg.mlp_hidden
    if cfg.mlp in ("swiglu", "geglu"):  # fc_1 out, its activation, fc_2 out, the product
        return {"mlp_activations": 4 * T * f * e}
    if cfg.mlp == "gelu":  # GptNeoxMLP: fc out (GELU's input) and the GELU output
        return {"mlp_activations": 2 * T * f * e}
    raise ValueError(f"mlp={cfg.mlp!r}: litgpt's MLPs are swiglu (LLaMAMLP), geglu (GemmaMLP) "
                     "and gelu (GptNeoxMLP)")


def litgpt_block_saved_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                             checkpointing: bool = False, device: str = "cpu"
                             ) -> dict[str, Any]:
    """Bytes one litgpt ``Block`` saves for backward, by tensor.

    With T = b s tokens, d = n_embd, a = query heads, h = head_dim, f = mlp_hidden, e = 4
    (``"32-true"``) or 2, r = the residual stream's bytes (2 under ``"bf16-true"``, else 4):
    the norms (see the module docstring), the q/k/v projection's input (T d r, or its bf16 cast
    under autocast), the attention (`_attention`), the MLP's input (shared by fc_1 and fc_2
    without autocast, one cast each with it; none for a shared norm without autocast) and
    activations. With ``checkpointing`` (Fabric's FSDP checkpoints every ``Block``) only the
    block's input remains.

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, mlp_hidden=16, vocab_size=16,
    ...                 bias=False, position="rope", norm="rmsnorm", mlp="swiglu")
    >>> litgpt_block_saved_terms(cfg, 1, 4, precision="32-true")["mlp_activations"]  # 4 T f e
    1024
    """
    e, r, autocast = _bytes(precision)
    d, T = cfg.n_embd, b * s
    if checkpointing:
        return {"block_input": T * d * r}
    lin = HALF if autocast else r  # what a linear keeps of a norm's output
    terms = _norm(cfg, T, "norm1", r, device=device)
    terms["qkv_input"] = T * d * lin
    terms.update(_attention(cfg, b, s, e))
    gated = cfg.mlp in ("swiglu", "geglu")
    if cfg.parallel != "shared_norm":
        terms.update(_norm(cfg, T, "norm2", r, device=device, keep_input=cfg.parallel == "none"))
    if autocast or cfg.parallel != "shared_norm":
        terms["mlp_input"] = T * d * lin * (2 if gated and autocast else 1)
    terms.update(_mlp(cfg, T, e))
    return terms


def litgpt_model_saved_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision
                             ) -> dict[str, Any]:
    """The rotary cos and sin tables every block's rotation saves: ``s x rope_n_elem`` fp32
    each (rebuilt at the batch's length by the fine-tune script's ``max_seq_length``).

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, position="rope",
    ...                 rotary_fraction=0.5)
    >>> litgpt_model_saved_terms(cfg, 2, 4, precision="bf16-true")
    {'rope_cos_sin': 64}
    """
    _bytes(precision)
    del b
    rotary = int(cfg.rotary_fraction * cfg.head_dim)  # litgpt's Config.rope_n_elem
    return {"rope_cos_sin": 2 * s * rotary * FP32}


def litgpt_embedding_saved_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision
                                 ) -> dict[str, Any]:
    """The token ids (int64) and, for Gemma's layout (``scale_embeddings``), the sqrt(d) scale:
    a scalar tensor in the parameters' dtype.

    >>> litgpt_embedding_saved_terms(GPTConfig(mlp="geglu"), 2, 4, precision="bf16-true")
    {'token_ids': 64, 'embedding_scale': 2}
    """
    _, r, _ = _bytes(precision)
    terms: dict[str, Any] = {"token_ids": b * s * INDEX}
    if cfg.mlp == "geglu":
        terms["embedding_scale"] = r
    return terms


def litgpt_head_saved_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                            device: str = "cpu") -> dict[str, Any]:
    """The final norm and lm_head's input (T d r, or its bf16 cast under autocast).

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16)
    >>> litgpt_head_saved_terms(cfg, 1, 4, precision="bf16-mixed")["lm_head_input"]
    64
    """
    _, r, autocast = _bytes(precision)
    T = b * s
    terms = _norm(cfg, T, "final_norm", r, device=device)
    terms["lm_head_input"] = T * cfg.n_embd * (HALF if autocast else r)
    return terms


def litgpt_loss_saved_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                            chunk: int = LITGPT_LOSS_CHUNK) -> dict[str, Any]:
    """``chunked_cross_entropy(logits[..., :-1, :], targets[..., 1:])``: the flat shifted
    logits (T' = b (s - 1) rows) are split into ``chunk``-row pieces, and each piece's
    cross-entropy keeps its log-softmax (in the logits' dtype: fp32 under every precision, the
    logits being Fabric's fp32 cast, `LITGPT_LOGITS_BYTES`) and its weight total (an fp32
    scalar); together the pieces hold all T' V log-probabilities. The shifted targets are
    copied for b > 1 (a view of the ids at b = 1), and the division keeps the int64 count.

    ``chunk=0`` is ``chunked_cross_entropy(..., chunk_size=0)``, one mean cross-entropy (what
    litgpt's validation uses): one weight total, no count. Chunked or not, litgpt's loss saves
    the same T' V log-probabilities; chunking only frees the backward's gradient piece by piece.

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16)
    >>> litgpt_loss_saved_terms(cfg, 2, 65, precision="32-true")
    {'log_softmax': 8192, 'targets': 1024, 'loss_weight_totals': 4, 'loss_count': 8}
    """
    _bytes(precision)
    e = LITGPT_LOGITS_BYTES
    rows = b * (s - 1)
    one = is_integer(b) and int(b) == 1
    terms: dict[str, Any] = {"log_softmax": rows * cfg.vocab_size * e,
                             "targets": 0 if one else rows * INDEX}
    if chunk == 0:
        terms["loss_weight_totals"] = e
        return terms
    terms["loss_weight_totals"] = (rows + chunk - 1) // chunk * e
    terms["loss_count"] = INDEX
    return terms


def litgpt_logits_copy_bytes(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision) -> Any:
    """The flat copy ``logits[..., :-1, :].reshape(-1, V)`` that ``chunked_cross_entropy``
    splits, live while the loss's chunks are computed: b (s - 1) V in the logits' dtype (fp32,
    `LITGPT_LOGITS_BYTES`) for b > 1 (at b = 1 the slice is contiguous and the reshape a
    view). Not saved for backward.

    >>> litgpt_logits_copy_bytes(GPTConfig(vocab_size=16), 2, 5, precision="bf16-mixed")
    512
    """
    _bytes(precision)
    e = LITGPT_LOGITS_BYTES
    one = is_integer(b) and int(b) == 1
    return 0 if one else b * (s - 1) * cfg.vocab_size * e


def litgpt_loss_transients(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                           hold_logits: bool = True, chunk: int = LITGPT_LOSS_CHUNK
                           ) -> tuple[Any, Any]:
    """Bytes live on top of the saved tensors (and of the held logits, with ``hold_logits``:
    litgpt's loop keeps ``logits`` until the next forward) at the loss's two worst moments.

    - Forward end, the larger of two moments. Fabric's cast, as its wrapper returns: the
      model's bf16 logits (b s V x 2; none under ``"32-true"``, whose logits are fp32 already)
      and their fp32 copy (b s V x 4) beside the previous step's, which the loop holds until
      it binds the new ones; the loss has saved nothing yet. The loss: the flat shifted copy of
      the fp32 logits (`litgpt_logits_copy_bytes`) while the chunks' log-softmaxes are
      computed, and the logits themselves unless the loop holds them.
    - Backward: autograd takes the chunks one at a time (the last created first); a chunk's
      log-softmax backward holds the nll gradient and its own output gradient (two chunk-sized
      tensors, ``min(chunk, b (s - 1))`` rows each) while its saved log-softmax is still alive;
      each finished chunk frees its log-softmax as it leaves a gradient of the same size. Then
      the split's backward joins the chunk gradients and the slice's backward pads them into a
      zero-filled gradient of the logits: once the log-softmaxes are freed, one logits-sized
      gradient (b s V) more than the saved tensors. The larger of the two, in fp32 (Fabric's
      cast, `LITGPT_LOGITS_BYTES`).

    Checked against the live peak of whole litgpt steps on CPU
    (`scaleplan.reference.litgpt_measure.measure_litgpt_step`, docs/validation/litgpt-memory.md).

    >>> litgpt_loss_transients(GPTConfig(vocab_size=16), 2, 5, precision="bf16-true")
    (512, 1024)
    """
    e_model, _, _ = _bytes(precision)
    e = LITGPT_LOGITS_BYTES
    V, rows = cfg.vocab_size, b * (s - 1)
    logits = b * s * V * e
    copy = litgpt_logits_copy_bytes(cfg, b, s, precision=precision)
    piece = rows if chunk == 0 else smaller(rows, chunk)
    model_out = 0 if precision == "32-true" else b * s * V * e_model
    loss = litgpt_loss_saved_terms(cfg, b, s, precision=precision, chunk=chunk)
    cast = model_out + logits - sum(loss.values())
    return (larger(copy + (0 if hold_logits else logits), cast),
            larger(2 * piece * V * e, logits))


def litgpt_no_sync_gradient_bytes(cfg: GPTConfig, *, precision: Precision) -> Any:
    """Bytes of the whole model's gradients, unsharded, that each GPU holds while litgpt's full
    fine-tune accumulates gradients under FSDP.

    ``litgpt/finetune/full.py`` (0.5.13, lines 280-281) runs every micro-batch but a step's last
    inside ``fabric.no_backward_sync(model, enabled=is_accumulating)``, which Fabric's
    ``FSDPStrategy`` (FSDP1) turns into ``FullyShardedDataParallel.no_sync()``
    (``lightning/fabric/strategies/fsdp.py:747-761``). There FSDP's post-backward hook reshards
    the parameters and returns before the reduce-scatter, keeping each unit's gradient
    unsharded (``torch/distributed/fsdp/_runtime_utils.py:742-746``, torch 2.13): from the first
    accumulating backward until the last micro-batch's backward reduce-scatters them, every GPU
    holds every parameter's gradient, in the gathered dtype (bf16 under Fabric's bf16
    precisions, ``lightning/fabric/plugins/precision/fsdp.py:96-97``; fp32 under 32-true).
    FSDP1's padding of each flat parameter to a multiple of the ranks is left out.

    >>> cfg = GPTConfig(n_layer=2, n_head=2, n_embd=8, vocab_size=16, bias=False,
    ...                 position="rope", norm="rmsnorm", mlp="swiglu", mlp_hidden=32)
    >>> # tied embedding 16 x 8 + 2 blocks x (q/k/v 8 x 24 + proj 8 x 8 + MLP 3 x 8 x 32 + norms
    >>> # 2 x 8) + final norm 8 = 2216 parameters, 2 bytes each
    >>> litgpt_no_sync_gradient_bytes(cfg, precision="bf16-true")
    4432
    """
    return param_terms(cfg)["total"] * (FP32 if precision == "32-true" else HALF)




def litgpt_saved_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                       checkpointing: str = "none", device: str = "cpu",
                       layers: Any = None, loss_chunk: int = LITGPT_LOSS_CHUNK
                       ) -> dict[str, Any]:
    """The flat dict `scaleplan.memory.stage.stage_parts` sums, for litgpt's code: embedding,
    ``layers`` (default ``cfg.n_layer``) times each block term, the rotary tables, the head and
    the loss (``loss_chunk``: `litgpt_loss_saved_terms`'s ``chunk``), in bytes.
    ``checkpointing`` "none" or "full" (litgpt checkpoints whole blocks
    under FSDP); ``device`` "cpu", or "cuda" / "cpu-cuda-semantics" for fp32 LayerNorm
    statistics.

    >>> cfg = GPTConfig(n_layer=2, n_head=2, n_embd=8, vocab_size=16, bias=False,
    ...                 position="rope", norm="rmsnorm", mlp="swiglu")
    >>> sum(litgpt_saved_terms(cfg, 1, 4, precision="32-true", checkpointing="full").values())
    1020
    """
    if checkpointing not in ("none", "full"):
        raise ValueError(f"checkpointing={checkpointing!r}: litgpt checkpoints whole blocks "
                         "('full') or nothing ('none')")
    out = dict(litgpt_embedding_saved_terms(cfg, b, s, precision=precision))
    block = litgpt_block_saved_terms(cfg, b, s, precision=precision,
                                     checkpointing=checkpointing == "full", device=device)
    n = cfg.n_layer if layers is None else layers
    out.update({name: n * v for name, v in block.items()})
    out.update(litgpt_model_saved_terms(cfg, b, s, precision=precision))
    out.update(litgpt_head_saved_terms(cfg, b, s, precision=precision, device=device))
    out.update(litgpt_loss_saved_terms(cfg, b, s, precision=precision, chunk=loss_chunk))
    return out


def litgpt_saved_bytes(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                       checkpointing: bool = False, device: str = "cpu") -> Any:
    """Total bytes saved for backward by one forward + chunked loss of litgpt's GPT for
    ``cfg`` (autocast's weight copies excluded). ``b`` and ``s`` may be ints or arrays.

    >>> cfg = GPTConfig(n_layer=2, n_head=2, n_embd=8, vocab_size=16, bias=False,
    ...                 position="rope", norm="rmsnorm", mlp="swiglu")
    >>> litgpt_saved_bytes(cfg, 1, 4, precision="32-true", checkpointing=True)
    1020
    """
    total: Any = 0
    for value in litgpt_saved_terms(cfg, b, s, precision=precision, device=device,
                                    checkpointing="full" if checkpointing else "none").values():
        total = total + value
    return total

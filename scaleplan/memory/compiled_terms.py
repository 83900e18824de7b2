"""Bytes a ``torch.compile``'d model saves for backward, derived operation by operation.

torch.compile (inductor, ``mode=None``) traces forward and backward into one joint graph and
AOT autograd's min-cut partitioner (``min_cut_rematerialization_partition``) chooses what the
forward keeps: every cheap pointwise op (casts, the norms' centring and scaling, GELU, SiLU,
the dropout scaling, RoPE's rotation, the residual adds) may be recomputed in backward from a
smaller saved value; matmuls, SDPA and random ops are never recomputed. What that leaves, per
operation of the reference block (read from the partitioned graphs by
`scaleplan.reference.compiled`, torch 2.13, CPU inductor with CUDA's dropout semantics):

- a norm (decomposed): LayerNorm keeps the normalised input ``x_hat`` (T d, fp32: the
  decomposition computes in fp32 under autocast), not its input; RMSNorm keeps its input (the
  residual stream, or what rebuilds it: see `compiled_block_saved_terms`); both keep the
  reciprocal std (T, fp32), neither the mean;
- a linear layer: its input in the matmul dtype (``qkv_input``, ``mlp_input``,
  ``lm_head_input``: the norm output times its weight, cast under autocast);
- SDPA (flash/efficient: out and log-sum-exp): q, k and v through the views of the fused
  projection's output (one storage, T (a + 2k) h e), the output T a h e and the log-sum-exp
  b a s fp32;
- dropout: a bool mask (1 byte per element: the decomposition's ``rand > p``); random ops are
  never recomputed;
- the GELU MLP: the up projection's output and the GELU output (2 T f e); SwiGLU and ReLU:
  see `compiled_block_saved_terms`;
- QK-norm (RMSNorm): its rstd, and per head a copy of the attention output:
  `scaleplan.memory.compiled_layout`, which also lists the options accepted;
- the cross-entropy (fused log-softmax and NLL): the logits in the matmul dtype (T V e, bf16
  under autocast: no fp32 log-softmax), each row's max and log(sum(exp)) (2 T, fp32), the
  int64 targets and a scalar divisor;
- the embedding: the int64 token ids, the position ids (s, int64), its dropout's bool mask.

Autocast's bf16 copies of the matmul weights are saved as in eager mode
(`scaleplan.memory.activations.autocast_weight_copy_bytes`, unchanged). The returned logits
are the saved ones (one storage), so a loop that holds them adds nothing.

All arithmetic is plain ``+``/``*`` on ``b`` (micro-batch) and ``s`` (sequence length), so ints,
float64 numpy arrays and sympy symbols pass through.
"""

from __future__ import annotations

from typing import Any

from scaleplan.errors import ScaleplanError
from scaleplan.memory.activations import (
    CUDA_MASK_BYTES,
    FP32_BYTES,
    INDEX_BYTES,
    STAT_BYTES,
    CheckpointingKind,
    DeviceKind,
    activation_bytes,
    param_dtype_bytes,
    residual_bytes,
)
from scaleplan.memory.compiled_first_input import first_input_rebuild_terms
from scaleplan.memory.compiled_layout import (
    check_compiled_layout,
    compiled_mlp_activation_terms,
    compiled_qk_norm_terms,
)
from scaleplan.model.config import GPTConfig, Precision

__all__ = [
    "COMPILED_BACKWARD_MOMENT",
    "COMPILED_PRECISIONS",
    "RNG_STATE_BYTES",
    "compiled_backward_end_bytes",
    "compiled_backward_start_bytes",
    "compiled_block_saved_terms",
    "compiled_embedding_saved_terms",
    "compiled_end_moment",
    "compiled_head_saved_terms",
    "compiled_model_saved_terms",
    "compiled_saved_terms",
]

# The precisions whose compiled partitions were measured (fp32, and fp32 weights under autocast).
COMPILED_PRECISIONS: tuple[Precision, ...] = ("32-true", "bf16-mixed", "16-mixed")
# A checkpointed region keeps its device's RNG state to replay dropout: the CPU generator's
# state (``torch.get_rng_state()``: 5056 bytes, measured) or CUDA's Philox seed and offset
# (two 8-byte integers).
RNG_STATE_BYTES: dict[str, int] = {"cuda": 16, "cpu": 5056, "cpu-cuda-semantics": 5056}
SEED_BYTES = 8  # inductor's int64 seed per random op, kept under full checkpointing
# The name `compiled_backward_end_bytes`' moment takes among `training_memory`'s moments: the
# blocks' (and the embedding's) backward, inside the compiled backward graph.
COMPILED_BACKWARD_MOMENT = "backward_end"


def _check(precision: Precision, checkpointing: CheckpointingKind, device: DeviceKind = "cuda",
           dropout: bool = False) -> None:
    if precision not in COMPILED_PRECISIONS:
        raise ScaleplanError(
            f"compile=True is modelled for precision in {COMPILED_PRECISIONS}, not "
            f"{precision!r}; use one of those or compile=False")
    if checkpointing not in ("none", "full"):
        raise ScaleplanError(
            f"compile=True is modelled for checkpointing 'none' or 'full', not "
            f"{checkpointing!r}")
    if device == "cpu" and dropout:
        raise ScaleplanError(
            "compile=True with dropout is modelled with CUDA's dropout (device='cuda' or "
            "'cpu-cuda-semantics'), not CPU's float masks and math attention")


def _norm_terms(cfg: GPTConfig, T: Any, prefix: str, input_bytes: int) -> dict[str, Any]:
    """A decomposed norm. LayerNorm's backward reads ``x_hat`` = (x - mean) rstd, which the
    partitioner keeps (T d, fp32: the decomposition computes in fp32 under autocast) rather
    than the input it would need to rebuild it; RMSNorm's backward rebuilds ``x_hat`` = x rstd
    from its input, which is kept (T d x ``input_bytes``). Both keep the fp32 rstd (T)."""
    if cfg.norm == "layernorm":
        return {f"{prefix}_normalized": T * cfg.n_embd * FP32_BYTES,
                f"{prefix}_rstd": T * STAT_BYTES}
    return {f"{prefix}_input": T * cfg.n_embd * input_bytes, f"{prefix}_rstd": T * STAT_BYTES}


def compiled_block_saved_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                               checkpointing: CheckpointingKind = "none", dropout: bool,
                               first: bool = False, device: DeviceKind = "cuda"
                               ) -> dict[str, Any]:
    """Bytes one compiled transformer block saves for backward, by operation (SDPA attention).

    ``first``: the model's first block (the one fed by the embedding), which differs in one
    term for RMSNorm without dropout (below).

    With T = b s, d = n_embd, a/k = query/key-value heads, h = head_dim, f = mlp_hidden,
    e = activation bytes (4 for 32-true, 2 under autocast), r = residual-stream bytes (4 for
    32-true and under autocast):

    - LayerNorm: ``norm1_normalized``, ``norm2_normalized`` (T d x 4 each); RMSNorm:
      ``norm1_input`` (the block's input, T d r) and ``norm2_input``, the residual sum
      x + proj(y) (T d r), except in the first block without dropout when x is the token
      embedding's output itself (no learned positions), where the partitioner keeps the
      attention projection's output instead, ``attn_proj_out`` (T d e), and rebuilds the sum
      from it and the embedding's output (measured at 2 and 3 layers: later blocks, whose x
      is itself a sum, keep the fp32 sum); ``norm1_rstd``, ``norm2_rstd``: T x 4 each;
    - ``qkv_input``, ``mlp_input``: T d e each (a gated MLP's gate and up projections share
      one cast input under compile, unlike eager autocast's two);
    - ``qkv``: T (a + 2k) h e, the fused projection's output, which SDPA's backward reads
      through its q, k and v views; with RoPE, ``rope_qk``: the rotated q and k,
      T (a + k) h e (SDPA's inputs, cast to e);
    - ``attn_out``: T a h e; ``attn_lse``: b a s x 4;
    - with QK-norm, ``qk_norm_rstd`` and, per head, ``attn_proj_input`` (T a h e):
      `scaleplan.memory.compiled_layout.compiled_qk_norm_terms`;
    - ``resid_dropout_masks``: 2 T d bool masks when dropout is on;
    - ``mlp_activations``: GELU: the up projection's output and the GELU output, 2 T f e;
      SwiGLU/GeGLU: the gate and up projections' outputs and the product that feeds the down
      projection, 3 T f e (the activation itself is recomputed from the gate's output); ReLU:
      its output, T f e, and ``relu_mask``, T f bool
      (`scaleplan.memory.compiled_layout.compiled_mlp_activation_terms`).

    ``checkpointing="full"`` (``torch.utils.checkpoint`` around each block, compiled as one
    graph): ``block_input``, T d r (the first block's is the token embedding's output), and
    ``rng_state``, the device RNG state the region keeps to replay its dropout
    (`RNG_STATE_BYTES`; kept with or without dropout).

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, bias=False)
    >>> t = compiled_block_saved_terms(cfg, 1, 4, precision="bf16-mixed", dropout=True)
    >>> t["qkv"], t["resid_dropout_masks"], t["norm1_normalized"]
    (192, 64, 128)
    """
    _check(precision, checkpointing, device, dropout)
    check_compiled_layout(cfg)
    d, a, k, h = cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim
    T = b * s
    e, r = activation_bytes(precision), residual_bytes(precision)
    if checkpointing == "full":
        return {"block_input": T * d * r, "rng_state": RNG_STATE_BYTES[device]}
    terms: dict[str, Any] = _norm_terms(cfg, T, "norm1", r)
    terms["qkv_input"] = T * d * e
    terms["qkv"] = T * (a + 2 * k) * h * e
    if cfg.position == "rope":
        terms["rope_qk"] = T * (a + k) * h * e
    terms["attn_out"] = T * a * h * e
    terms["attn_lse"] = b * a * s * STAT_BYTES
    terms.update(compiled_qk_norm_terms(cfg, b, s, e=e))
    if dropout:
        terms["resid_dropout_masks"] = 2 * T * d * CUDA_MASK_BYTES
    if cfg.norm == "rmsnorm" and first and not dropout and cfg.position != "learned":
        terms["attn_proj_out"] = T * d * e
        terms["norm2_rstd"] = T * STAT_BYTES
    else:
        terms.update(_norm_terms(cfg, T, "norm2", r))
    terms["mlp_input"] = T * d * e
    terms.update(compiled_mlp_activation_terms(cfg, T, e=e))
    return terms


def compiled_model_saved_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                               checkpointing: CheckpointingKind = "none") -> dict[str, Any]:
    """Saved once per model: RoPE's cos and sin buffers (whole, block_size x head_dim each, in
    the parameter dtype), which every block's rotation backward reads (checkpointed blocks
    too: they are the regions' inputs); under full checkpointing with dropout, inductor's
    seeds, one int64 per dropout (the embedding's and two per block).

    >>> cfg = GPTConfig(n_layer=2, n_head=2, n_embd=8, vocab_size=16, position="rope")
    >>> compiled_model_saved_terms(cfg, 1, 4, precision="bf16-mixed")
    {'rope_tables': 32768}
    """
    _check(precision, checkpointing)
    del b, s
    terms: dict[str, Any] = {}
    if cfg.position == "rope":
        terms["rope_tables"] = 2 * cfg.block_size * cfg.head_dim * param_dtype_bytes(precision)
    if checkpointing == "full" and cfg.dropout > 0:
        terms["dropout_seeds"] = (1 + 2 * cfg.n_layer) * SEED_BYTES
    return terms


def compiled_embedding_saved_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                                   dropout: bool, checkpointing: CheckpointingKind = "none"
                                   ) -> dict[str, Any]:
    """The embedding's int64 token ids (b s), learned positions' int64 ids (s) and, with
    dropout, a bool mask (b s d). Where the first block's input itself is not kept (full
    checkpointing; RMSNorm, whose backward rebuilds it), learned positions also keep the
    position embedding's output (s d r): that input is rebuilt from the token and position
    embeddings' outputs (the token one is counted as the first block's input); at b = 1 the
    sum itself is kept (measured: ``python -m scaleplan.reference.goldens compiled``,
    tests/data/compiled_terms_golden.json). LayerNorm without checkpointing does the same
    from a few rows on, keeping the first norm's mean too:
    `scaleplan.memory.compiled_first_input`.

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, block_size=4)
    >>> compiled_embedding_saved_terms(cfg, 2, 4, precision="bf16-mixed", dropout=True)
    {'token_ids': 64, 'position_ids': 32, 'embedding_dropout_mask': 64}
    """
    _check(precision, checkpointing)
    terms: dict[str, Any] = {"token_ids": b * s * INDEX_BYTES}
    if cfg.position == "learned":
        terms["position_ids"] = s * INDEX_BYTES
        terms.update(first_input_rebuild_terms(
            cfg, b, s, precision=precision, dropout=dropout,
            rebuilt=checkpointing == "full" or cfg.norm == "rmsnorm"))
    if dropout:
        terms["embedding_dropout_mask"] = b * s * cfg.n_embd * CUDA_MASK_BYTES
    return terms


def compiled_head_saved_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                              checkpointing: CheckpointingKind = "none") -> dict[str, Any]:
    """The final norm, the output layer's input and the fused cross-entropy.

    ``logits``: T V e (bf16 under autocast: the compiled loss upcasts inside its kernels and
    keeps no fp32 log-softmax); ``logsumexp``: each row's max and log(sum(exp)), 2 T x 4;
    ``targets``: T int64 ids plus the fp32 scalar the mean divides by. The final norm keeps
    what `compiled_block_saved_terms` says a norm keeps; under full checkpointing only its
    statistics (LayerNorm's mean and rstd, RMSNorm's rstd, T x 4 each): its input, the last
    block's output, is rebuilt with that block.

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, block_size=4)
    >>> compiled_head_saved_terms(cfg, 1, 4, precision="bf16-mixed")["logits"]
    128
    """
    _check(precision, checkpointing)
    T = b * s
    terms: dict[str, Any] = {}
    if cfg.final_norm and checkpointing == "full":
        terms["final_norm_stats"] = (2 if cfg.norm == "layernorm" else 1) * T * STAT_BYTES
    elif cfg.final_norm:
        terms.update(_norm_terms(cfg, T, "final_norm", residual_bytes(precision)))
    e = activation_bytes(precision)
    terms["lm_head_input"] = T * cfg.n_embd * e
    terms["logits"] = T * cfg.vocab_size * e
    terms["logsumexp"] = 2 * T * STAT_BYTES
    terms["targets"] = T * INDEX_BYTES + FP32_BYTES
    return terms


def compiled_saved_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                         checkpointing: CheckpointingKind = "none", device: DeviceKind = "cuda",
                         layers: Any = None) -> dict[str, Any]:
    """Every saved term of a compiled model: the first block's terms plus ``layers - 1``
    (default ``n_layer - 1``, ``layers`` >= 1) times a later block's, the model, embedding and
    head terms: what `scaleplan.memory.training`'s ``saved`` dict holds, for ``compile=True``.

    >>> cfg = GPTConfig(n_layer=2, n_head=2, n_embd=8, vocab_size=16, block_size=4)
    >>> sum(compiled_saved_terms(cfg, 1, 4, precision="32-true").values())  # 64 + 2 x 2112 + 596
    4884
    """
    dropout = cfg.dropout > 0
    n = cfg.n_layer if layers is None else layers
    out: dict[str, Any] = dict(compiled_embedding_saved_terms(
        cfg, b, s, precision=precision, dropout=dropout, checkpointing=checkpointing))
    first = compiled_block_saved_terms(cfg, b, s, precision=precision, device=device,
                                       checkpointing=checkpointing, dropout=dropout, first=True)
    block = compiled_block_saved_terms(cfg, b, s, precision=precision, device=device,
                                       checkpointing=checkpointing, dropout=dropout)
    for name in {**first, **block}:
        out[name] = first.get(name, 0) + (n - 1) * block.get(name, 0)
    out.update(compiled_model_saved_terms(cfg, b, s, precision=precision,
                                          checkpointing=checkpointing))
    out.update(compiled_head_saved_terms(cfg, b, s, precision=precision,
                                         checkpointing=checkpointing))
    return out


def compiled_backward_start_bytes(cfg: GPTConfig, b: Any, s: Any, *,
                                  precision: Precision) -> Any:
    """Transient bytes on top of the saved tensors when the compiled backward starts, in place
    of eager's ``2 T V`` in the loss dtype: 2 T V e + T x 4.

    The backward graph's first kernel (inductor's generated code, torch 2.13) fuses
    nll_loss_backward, log_softmax_backward and the cast: it reads the saved logits, max and
    log-sum-exp and writes the logits' gradient in the matmul dtype (T V e; no fp32 T V
    buffer) and each row's sum of the incoming gradient (T x 4, fp32: log_softmax_backward's
    reduction). Its other T V e input is the tangent of the returned logits: the model returns
    them, the loss does not use them, and the compiled autograd function materialises their
    zero gradient. The returned logits themselves are the saved ones (already in
    `compiled_head_saved_terms`), so a loop that holds them adds nothing.

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, block_size=4)
    >>> compiled_backward_start_bytes(cfg, 1, 4, precision="bf16-mixed")  # 2x4x16x2 + 4x4
    272
    """
    _check(precision, "none")
    return 2 * b * s * cfg.vocab_size * activation_bytes(precision) + b * s * STAT_BYTES


def compiled_backward_end_bytes(cfg: GPTConfig, *, precision: Precision, gradients: Any,
                                accumulating: bool, both_ends: bool = True) -> Any:
    """Bytes on top of the gradients a step counts (and of the held logits) when the compiled
    backward graph of a whole model returns: every gradient it made, at once.

    AOT autograd compiles the backward of one graph into one function that returns every
    parameter's gradient together (``CompiledFunction.backward``); each gradient is a new
    buffer from the moment its kernel writes it until the function returns, and only then do
    the AccumulateGrad nodes take them into ``.grad`` (adding them in place where a gradient
    is resident). So at the graph's end

    - every gradient, ``gradients`` bytes (the parameters' dtype), is alive twice when
      ``accumulating`` (the resident ones and the new ones; without accumulation the new ones
      are the gradients the caller already counts): measured, a compiled step's peak above
      its start is the same with and without accumulation, where an eager step adds each
      gradient in place as it is made (tests/data/compiled_step_peaks.json);
    - a tied head's weight has two partial gradients, summed in the graph: the embedding's,
      V d in the parameters' dtype, and the output layer's, V d in the matmul dtype. Inductor
      writes the sum over a dead input of its size and dtype: in fp32 over one of them (one
      V d 4 beside the sum), under autocast over neither (the output layer's is 16-bit, the
      sum fp32: V d 4 + V d 2 beside it; measured in fp32 and under bf16 autocast, 2 x 24
      tokens); ``both_ends``: the stage holds the embedding and the head.

    What else the graph's last kernels hold (the first block's, the tied head's) is
    `scaleplan.memory.compiled_end`'s; the moment is the step's peak only when the gradients
    outweigh the activations (few tokens, or a large model under accumulation).

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, block_size=4)
    >>> compiled_backward_end_bytes(cfg, precision="bf16-mixed", gradients=1000,
    ...                             accumulating=True)  # 1000 + 16 x 8 x (4 + 2)
    1768
    """
    _check(precision, "none")
    tied = 0
    if cfg.tie_embeddings and both_ends:
        g, e = param_dtype_bytes(precision), activation_bytes(precision)
        tied = cfg.vocab_size * cfg.n_embd * (g + (e if e != g else 0))
    return (gradients if accumulating else 0 * gradients) + tied


def compiled_end_moment(cfg: GPTConfig, precision: Precision, gradients: Any, held: Any,
                        saved: dict[str, Any], implementation: str,
                        step: tuple[bool, str, bool, bool, bool],
                        shape: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """`training_memory`'s moment for `compiled_backward_end_bytes` (named
    `COMPILED_BACKWARD_MOMENT`), with ``held`` (the logits the loop holds), the batch it
    holds (the token ids; nanoGPT's targets too, ``saved``'s terms) and, given ``shape``
    (b, s), what the graph's last kernels hold
    (`scaleplan.memory.compiled_end.compiled_end_extra_bytes`), where one compiled graph
    returns every gradient at once; else none. ``step``: (compiled, checkpointing, one GPU,
    no switch but gradient accumulation, accumulating): a whole model compiled without
    checkpointing (measured), on one GPU (DDP splits the graph per gradient bucket; one GPU
    holds both ends of a tied weight).

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, block_size=4)
    >>> compiled_end_moment(cfg, "32-true", 1000, 0, {"token_ids": 32}, "hf",
    ...                     (True, "none", True, True, False))  # ids 32 + tied 16 x 8 x 4
    {'backward_end': 544}
    """
    *where, accumulating = step
    if tuple(where) != (True, "none", True, True):
        return {}
    from scaleplan.memory.compiled_end import compiled_end_extra_bytes  # it imports this

    extra = 0 if shape is None else compiled_end_extra_bytes(cfg, *shape, precision=precision)
    batch = saved["token_ids"] + (saved["targets"] if implementation == "nanogpt" else 0)
    return {COMPILED_BACKWARD_MOMENT: held + batch + extra + compiled_backward_end_bytes(
        cfg, precision=precision, gradients=gradients, accumulating=accumulating)}

"""Bytes autograd saves for backward, derived operation by operation.

Each term below is one tensor that one operation of the reference GPT (nanoGPT's layout: pre-norm
blocks, one fused q/k/v projection, SDPA or eager attention, GELU or gated MLP) hands to autograd
for its backward, counted as its whole storage, and never counted twice when two operations save
views of the same storage. Parameters are excluded; autocast's low-precision weight copies are
counted apart (`autocast_weight_copy_bytes`).

Why per operation and not Korthikanti et al.'s ``34 s b h + 5 a s^2 b``: that constant assumes a
GELU MLP with a 4h hidden width, multi-head eager attention, 16-bit activations and 1-byte dropout
masks. A SwiGLU MLP saves four f-wide tensors instead of two, GQA shrinks k and v, flash attention
keeps O(s) softmax statistics instead of the s x s matrix, autocast keeps fp32 residual-stream
tensors for the norms, and the loss keeps an fp32 log-softmax of s b V elements. The published
accounting is `korthikanti_activation_bytes` in `scaleplan.memory.published`.

All arithmetic here is plain ``+``/``*`` on ``b`` (micro-batch) and ``s`` (sequence length), so it
works for Python ints (exact) and for float64 numpy arrays (sweeps).
"""

from __future__ import annotations

from typing import Any, Literal

from scaleplan.model.config import GPTConfig, Precision
from scaleplan.model.shapes import across_model, model_tensors, per_config

__all__ = [
    "TENSOR_PARALLEL_SPLIT_TERMS",
    "AttentionKind",
    "CheckpointingKind",
    "DeviceKind",
    "autocast_weight_copy_bytes",
    "block_saved_terms",
    "embedding_saved_terms",
    "head_saved_terms",
    "model_saved_terms",
]

AttentionKind = Literal["flash", "eager"]
CheckpointingKind = Literal["none", "selective", "full"]
DeviceKind = Literal["cuda", "cpu", "cpu-cuda-semantics"]
"""``"cuda"``: CUDA kernels and dropout; ``"cpu"``: CPU kernels, float dropout masks in the input
dtype and the math attention kernel when dropout > 0; ``"cpu-cuda-semantics"``: CPU kernels with
CUDA's dropout (bool masks, no dropout inside SDPA), what the reference harness measures with
``cuda_semantics=True``."""

FP32_BYTES = 4
HALF_BYTES = 2  # bf16 and fp16
INDEX_BYTES = 8  # int64 token ids and targets
CUDA_MASK_BYTES = 1  # CUDA's native_dropout keeps a bool mask (1 byte per element)
STAT_BYTES = 4  # norm statistics (mean, rstd) and the softmax log-sum-exp are fp32

AUTOCAST: frozenset[str] = frozenset({"bf16-mixed", "16-mixed"})

# The saved tensors that tensor parallelism divides over its t ranks (Korthikanti et al. 2022,
# Sec. 4.1 and Table 2: the attention and MLP internals; the loss's log-softmax with Megatron's
# vocab-parallel cross-entropy). Every other term is replicated unless sequence parallelism
# splits it too (`scaleplan.memory.parallel.tensor_parallel_split`).
TENSOR_PARALLEL_SPLIT_TERMS: frozenset[str] = frozenset({
    "qkv", "rope_qk", "attn_lse", "q_k_v_copies", "attn_scores", "attn_dropout_mask",
    "attn_dropped", "attn_out", "mlp_activations", "log_softmax"})


def activation_bytes(precision: Precision) -> int:
    """Bytes per element of a matmul input/output: 4 for ``"32-true"``, else 2."""
    return FP32_BYTES if precision == "32-true" else HALF_BYTES


def param_dtype_bytes(precision: Precision) -> int:
    """Bytes per element of the parameters and buffers: 2 for bf16 parameters, else 4."""
    return HALF_BYTES if precision in ("bf16-true", "bf16-fp32-master") else FP32_BYTES


def residual_bytes(precision: Precision) -> int:
    """Bytes per element of the residual stream: fp32 under autocast (fp32 embeddings plus a bf16
    branch promote to fp32), else the activation dtype."""
    return FP32_BYTES if precision in AUTOCAST else activation_bytes(precision)


def _norm_terms(cfg: GPTConfig, T: Any, precision: Precision, cuda_kernels: bool,
                prefix: str) -> dict[str, Any]:
    """What one norm saves for ``T`` tokens.

    LayerNorm (``native_layer_norm``) saves its input, a mean and a reciprocal std per token
    (fp32 on CUDA and under autocast, which runs layer_norm in fp32; in the input dtype on CPU
    with bf16 inputs). RMSNorm (torch 2.13's ``F.rms_norm``) is composite on CPU: it saves its
    input upcast to fp32, the fp32 rstd per token and the fp32 normalised input for the scale's
    gradient, whatever the input dtype; CUDA's fused kernel saves the input and the rstd.
    """
    d, r = cfg.n_embd, residual_bytes(precision)
    if cfg.norm == "layernorm":
        stat = STAT_BYTES if (cuda_kernels or precision in AUTOCAST) else r
        return {f"{prefix}_input": T * d * r, f"{prefix}_stats": 2 * T * stat}
    if cuda_kernels:
        return {f"{prefix}_input": T * d * r, f"{prefix}_stats": T * STAT_BYTES}
    return {f"{prefix}_input": T * d * FP32_BYTES, f"{prefix}_stats": T * STAT_BYTES,
            f"{prefix}_normalized": T * d * FP32_BYTES}


def _semantics(device: DeviceKind) -> tuple[bool, bool]:
    """(CUDA kernels, CUDA dropout) for a device kind; see `DeviceKind`."""
    return device == "cuda", device != "cpu"


def block_saved_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                      attention: AttentionKind, checkpointing: CheckpointingKind,
                      device: DeviceKind, dropout: bool) -> dict[str, Any]:
    """Bytes one transformer block saves for backward, by operation.

    With T = b s tokens, d = n_embd, a/k = query/key-value heads, h = head_dim, f = mlp_hidden,
    e = activation bytes (4 for 32-true, 2 otherwise), r = residual-stream bytes:

    - ``norm1_*``, ``norm2_*``: see `_norm_terms` (residual input T d r plus statistics);
    - ``qkv_input``: the fused q/k/v projection's input, T d e (autocast's bf16 copy of the norm
      output under mixed precision);
    - flash (SDPA's fused kernel): ``qkv`` T (a + 2k) h e, the projection's output, which SDPA
      saves through its q, k, v views (k and v are not expanded for GQA: ``enable_gqa``);
      ``attn_lse`` b a s fp32; with RoPE, ``rope_qk``: the rotated q and k, T (a + k) h e;
    - eager, and CPU's math fallback when dropout is on: ``q_k_v_copies`` 3 T a h e (matmul
      copies the transposed views; GQA's k and v are expanded to a heads), ``attn_scores``
      b a s^2 e (the softmax output; fp32 under CUDA autocast), and with dropout a mask and the
      dropped probabilities (CPU's math kernel computes these in fp32 under autocast);
    - ``attn_out``: T a h e, SDPA's output, whose layout makes the output projection's input a
      view of it (eager: the contiguous copy of the transposed output);
    - ``resid_dropout_masks``: two T d masks (attention and MLP branches) when dropout is on;
    - ``mlp_input`` T d e (twice under autocast for gated MLPs: gate and up projections each
      cast the norm output); GELU: the up projection's output and the GELU output, 2 T f e;
      gated (SwiGLU/GeGLU): gate output, activation output, up output and product, 4 T f e.

    Checkpointing ``"full"`` keeps only the block input (T d r); ``"selective"`` recomputes the
    attention core (scores, softmax, dropout), Korthikanti et al. 2022 Sec. 4.2 (flash already
    recomputes its scores, so selective equals none there).

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, bias=False)
    >>> t = block_saved_terms(cfg, 1, 4, precision="32-true", attention="flash",
    ...                       checkpointing="none", device="cuda", dropout=False)
    >>> t["qkv"], t["mlp_activations"]
    (384, 1024)
    """
    d, a, h, f = cfg.n_embd, cfg.n_head, cfg.head_dim, cfg.mlp_hidden
    T = b * s
    e, r = activation_bytes(precision), residual_bytes(precision)
    cuda_kernels, cuda_dropout = _semantics(device)
    autocast = precision in AUTOCAST
    if checkpointing == "full":
        return {"block_input": T * d * r}
    terms: dict[str, Any] = {}
    terms.update(_norm_terms(cfg, T, precision, cuda_kernels, "norm1"))
    terms["qkv_input"] = T * d * e
    math_kernel = attention == "eager" or (dropout and not cuda_dropout)
    if not math_kernel:
        terms.update(_fused_attention_terms(cfg, b, s, e))
    elif checkpointing != "selective":
        terms.update(_math_attention_terms(cfg, b, s, precision=precision, attention=attention,
                                           device=device, dropout=dropout))
    terms["attn_out"] = T * a * h * e
    if dropout:
        mask = CUDA_MASK_BYTES if cuda_dropout else e
        terms["resid_dropout_masks"] = 2 * T * d * mask
    terms.update(_norm_terms(cfg, T, precision, cuda_kernels, "norm2"))
    terms["mlp_input"] = T * d * e * (2 if (cfg.gated_mlp and autocast) else 1)
    terms["mlp_activations"] = (4 if cfg.gated_mlp else 2) * T * f * e
    return terms


def _fused_attention_terms(cfg: GPTConfig, b: Any, s: Any, e: int) -> dict[str, Any]:
    """What SDPA's fused (flash) kernel saves: q, k, v (through views of the projection's
    output), RoPE's rotated q and k, and the log-sum-exp statistics."""
    a, k, h, T = cfg.n_head, cfg.n_kv_head, cfg.head_dim, b * s
    terms: dict[str, Any] = {"qkv": T * (a + 2 * k) * h * e}
    if cfg.position == "rope":
        terms["rope_qk"] = T * (a + k) * h * e
    terms["attn_lse"] = b * a * s * STAT_BYTES
    return terms


def _math_attention_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                          attention: AttentionKind, device: DeviceKind,
                          dropout: bool) -> dict[str, Any]:
    """What eager attention (or CPU's math SDPA fallback) saves: the q, k, v copies, the
    softmax output and, with dropout, its mask and the dropped probabilities."""
    a, h, T = cfg.n_head, cfg.head_dim, b * s
    e = activation_bytes(precision)
    cuda_kernels, cuda_dropout = _semantics(device)
    # CPU's math SDPA fallback computes 16-bit inputs in fp32 (torch 2.13).
    ae = FP32_BYTES if attention == "flash" else e
    scores = FP32_BYTES if (cuda_kernels and precision in AUTOCAST) else ae
    terms: dict[str, Any] = {"q_k_v_copies": 3 * T * a * h * ae,
                             "attn_scores": b * a * s * s * scores}
    if dropout:
        mask = CUDA_MASK_BYTES if cuda_dropout and attention == "eager" else ae
        terms["attn_dropout_mask"] = b * a * s * s * mask
        terms["attn_dropped"] = b * a * s * s * ae
    return terms


def model_saved_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                      attention: AttentionKind, checkpointing: CheckpointingKind,
                      device: DeviceKind) -> dict[str, Any]:
    """Tensors saved once per model and shared by every block: the eager causal mask (s^2 bool)
    and RoPE's cos/sin tables (whole buffers, block_size x head_dim each in the parameter
    dtype: the blocks save views of them).

    >>> cfg = GPTConfig(n_layer=2, n_head=2, n_embd=8, vocab_size=16, position="rope")
    >>> model_saved_terms(cfg, 1, 4, precision="32-true", attention="eager",
    ...                   checkpointing="none", device="cuda")
    {'causal_mask': 16, 'rope_tables': 32768}
    """
    del device
    terms: dict[str, Any] = {}
    if checkpointing == "full":
        return terms
    if attention == "eager" and checkpointing != "selective":
        terms["causal_mask"] = s * s
    if cfg.position == "rope":
        terms["rope_tables"] = 2 * cfg.block_size * cfg.head_dim * param_dtype_bytes(precision)
    return terms


def embedding_saved_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                          device: DeviceKind, dropout: bool) -> dict[str, Any]:
    """Bytes the embedding saves: the token ids (int64, b s), the position ids (int64, s) for
    learned positions, and a dropout mask of b s d when dropout is on.

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, block_size=4)
    >>> embedding_saved_terms(cfg, 2, 4, precision="32-true", device="cuda", dropout=False)
    {'token_ids': 64, 'position_ids': 32}
    """
    terms: dict[str, Any] = {"token_ids": b * s * INDEX_BYTES}
    if cfg.position == "learned":
        terms["position_ids"] = s * INDEX_BYTES
    if dropout:
        mask = residual_bytes(precision) if device == "cpu" else CUDA_MASK_BYTES
        terms["embedding_dropout_mask"] = b * s * cfg.n_embd * mask
    return terms


def head_saved_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: Precision,
                     device: DeviceKind) -> dict[str, Any]:
    """Bytes the final norm, the output projection and the cross-entropy save.

    The final norm saves as `_norm_terms`; the output projection saves its input (T d e); the
    cross-entropy keeps its log-softmax output (T V elements, fp32 even under autocast, which
    runs the loss in fp32; bf16 for bf16 parameters), the int64 targets and a scalar weight.

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, block_size=4)
    >>> head_saved_terms(cfg, 1, 4, precision="32-true", device="cuda")["log_softmax"]
    256
    """
    T = b * s
    terms = _norm_terms(cfg, T, precision, device == "cuda", "final_norm")
    terms["lm_head_input"] = T * cfg.n_embd * activation_bytes(precision)
    loss = residual_bytes(precision)  # fp32 under autocast (cross_entropy runs in fp32)
    terms["log_softmax"] = T * cfg.vocab_size * loss
    terms["targets"] = T * INDEX_BYTES + loss  # ids plus nll_loss's total_weight scalar
    return terms


def autocast_weight_copy_bytes(cfg: GPTConfig, precision: Precision, *,
                               layers: int | None = None, head: bool = True) -> Any:
    """Bytes of autocast's bf16/fp16 copies of the matmul weights of ``layers`` blocks (default
    all) and, with ``head``, of the output layer.

    Under ``"bf16-mixed"``/``"16-mixed"`` every linear layer's weight (not biases, not norms,
    not the embedding lookup) is cast once per forward; autocast caches the copy until the
    autocast region exits and the matmul saves it for backward. A tied output head is cast like
    any other linear weight. The weights are those marked ``matmul`` in
    `scaleplan.model.shapes.model_tensors`. Zero otherwise.

    >>> autocast_weight_copy_bytes(GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16,
    ...                                      mlp_hidden=32), "bf16-mixed")
    1792
    """
    return _autocast_weight_copy_bytes(cfg, precision, layers=layers, head=head)


def _autocast_weight_copy_bytes_body(cfg: GPTConfig, precision: Precision, *,
                                     layers: int | None = None, head: bool = True) -> Any:
    if precision not in AUTOCAST:
        return 0
    matmuls = [t for t in model_tensors(cfg) if t.matmul and (head or t.per_block)]
    return across_model(cfg, matmuls, layers=layers) * HALF_BYTES


_autocast_weight_copy_bytes = per_config(_autocast_weight_copy_bytes_body)

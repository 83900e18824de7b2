"""What one GPU of torchtitan's Llama 3 holds under tensor (+ sequence) parallelism, per operation.

torchtitan 0.3.0 shards its Llama 3 over ``t`` tensor-parallel ranks with the plan of
``torchtitan/models/llama3/sharding.py`` and ``torchtitan/models/common/decoder_sharding.py``
(``enable_sequence_parallel=True``, its default, ``torchtitan/config/configs.py:160``):

- ``tok_embeddings``: vocabulary-parallel (weight ``S(0)``, ``decoder_sharding.py:320-327``);
  each rank looks up the ids of its rows (``Embedding.forward``,
  ``torchtitan/models/common/embedding.py``: ids clamped to the local range, int64, and the
  in-range mask cast to the activation dtype, both saved) and the partial sums are
  reduce-scattered over the sequence;
- the norms run on the rank's ``s / t`` positions (``norm_config``, ``decoder_sharding.py:101``);
- attention and the MLP all-gather their input over the sequence at their boundary
  (``in_dst_shardings`` ``R``, ``decoder_sharding.py:193-198, 289-291``): ``wqkv`` and ``w1`` /
  ``w3`` (colwise, weight ``S(0)``) save that gathered ``(b, s, d)`` input; each rank computes
  ``n_head / t`` query heads and ``n_kv_head / t`` KV heads (FlexAttention's q, k, v, output and
  statistics) and ``mlp_hidden / t`` of the MLP; ``wo`` and ``w2`` (rowwise, weight ``S(1)``)
  reduce-scatter their partial outputs back to the sequence shard (``rowwise_config``,
  ``decoder_sharding.py:81-98``);
- the final norm runs on the shard and all-gathers its output (``pre_lm_head_norm_config``,
  ``decoder_sharding.py:119-139``), which the colwise ``lm_head`` saves; the logits stay sharded
  over the vocabulary (``S(-1)``) and the loss is vocabulary-parallel
  (``_LossParallelCrossEntropy``, ``torchtitan/components/loss.py``: the fp32 log-probabilities
  of the rank's ``ceil(V / t)`` classes and the flattened targets saved).

Every term below was checked exactly against torchtitan's own model on CPU, rank 0 of a fake
``t``-rank process group (`scaleplan.reference.titan_tp_measure`); the shards are rank 0's, the
largest when ``t`` does not divide a width (``ceil``). Without sequence parallelism
(``enable_sequence_parallel=False``) the norms run on every position and the blocks' inputs
are whole (``dense_activation_placement(tp=I)``), the rest is unchanged. FSDP2 then shards each
rank's fp32 parameters, gradients and optimizer states over the data-parallel ranks as without
TP (`scaleplan.memory.titan_terms`). Not modelled (refused): torchtitan's per-op selective
checkpointing under TP, async TP, context parallelism.
"""

from __future__ import annotations

from typing import Any

from scaleplan.memory.activations import FP32_BYTES
from scaleplan.memory.titan_qwen3_terms import qwen3_block_extras
from scaleplan.memory.titan_terms import (
    FLEX_BLOCK,
    INT32_BYTES,
    INT64_BYTES,
    TITAN_PRECISIONS,
    titan_fsdp_in_flight,
    titan_model_states,
)
from scaleplan.model.config import GPTConfig

__all__ = ["titan_tp_block_terms", "titan_tp_fsdp_in_flight", "titan_tp_local_config",
           "titan_tp_loss_transients", "titan_tp_model_states", "titan_tp_norm_bytes",
           "titan_tp_rebuilt_block_bytes", "titan_tp_saved_terms"]

def _shard(n: Any, t: int) -> Any:
    """Rank 0's part of ``n`` split over ``t`` ranks: ``ceil(n / t)``."""
    return -(-n // t)


def titan_tp_norm_bytes(T: Any, d: int, e: int, device: str) -> Any:
    """One RMSNorm's saves on ``T`` positions (as `titan_block_terms` counts them)."""
    if device == "cpu":  # torch's composite rms_norm: fp32 upcast, fp32 x * rstd, fp32 rstd
        return 2 * T * d * FP32_BYTES + T * FP32_BYTES
    return T * d * e + T * FP32_BYTES  # aten._fused_rms_norm: its input and the fp32 rstd


def titan_tp_block_terms(cfg: GPTConfig, b: Any, s: Any, *, e: int, device: str,
                         checkpointing: str, tensor: int, sequence_parallel: bool = True,
                         kernel: str = "flex") -> dict[str, Any]:
    """Bytes one torchtitan Llama 3 block leaves for backward on one of ``tensor`` TP ranks,
    by operation (no checkpointing, or ``"full"``: the block's input, its sequence shard).
    Without sequence parallelism (``enable_sequence_parallel=False``) the norms and the block
    input hold every position: the activations between the blocks' matmuls are replicated.
    ``kernel`` "flex" (FlexAttention, as measured) keeps two fp32 statistics per local head and
    position, "sdpa" one (its logsumexp: `scaleplan.memory.titan_sdpa_terms`).

    >>> cfg = GPTConfig(n_layer=1, n_head=4, n_kv_head=2, n_embd=64, mlp_hidden=192,
    ...                 bias=False, mlp="swiglu", norm="rmsnorm", position="rope")
    >>> titan_tp_block_terms(cfg, 2, 128, e=2, device="cpu", checkpointing="full", tensor=2)
    {'block_input': 16384}
    """
    t = tensor
    T, d, hd = b * s, cfg.n_embd, cfg.head_dim
    Ts = b * _shard(s, t) if sequence_parallel else T  # the positions between the matmuls
    H, K, F = _shard(cfg.n_head, t), _shard(cfg.n_kv_head, t), _shard(cfg.mlp_hidden, t)
    if checkpointing == "full":
        return {"block_input": Ts * d * e}
    # FlexAttention's logsumexp and max of the local heads; SDPA's logsumexp alone
    stats = (2 if kernel == "flex" else 1) * b * H * s * FP32_BYTES
    out = {"attention_norm": titan_tp_norm_bytes(Ts, d, e, device),
           "wqkv_input": T * d * e,  # the all-gathered (b, s, d) input
           "rope_table": T * (hd // 2) * 8,  # complex64 rows for all s positions
           "attention": T * (H + 2 * K) * hd * e + T * H * hd * e + stats,
           "ffn_norm": titan_tp_norm_bytes(Ts, d, e, device),
           "mlp_input": T * d * e,  # all-gathered, shared by w1 and w3
           "mlp": 3 * T * F * e,  # w1 out, silu out, w3 out: the local mlp_hidden / t
           "w2_input": T * F * e}
    if cfg.qk_norm == "head":  # its Qwen3: QK-norm on the local heads, cos/sin RoPE
        out.update(qwen3_block_extras(cfg, b, s, e=e, device=device, tensor=t))
    return out


def titan_tp_rebuilt_block_bytes(cfg: GPTConfig, b: Any, s: Any, *, e: int, device: str,
                                 tensor: int, sequence_parallel: bool = True,
                                 kernel: str = "flex") -> Any:
    """Bytes a fully checkpointed block's recompute adds while it runs its backward: what it
    saves without checkpointing, less (on CUDA, whose fused RMSNorm saves its input) the
    block input it already holds.

    >>> cfg = GPTConfig(n_layer=1, n_head=4, n_kv_head=2, n_embd=64, mlp_hidden=192,
    ...                 bias=False, mlp="swiglu", norm="rmsnorm", position="rope")
    >>> titan_tp_rebuilt_block_bytes(cfg, 2, 128, e=2, device="cpu", tensor=2)
    463872
    """
    sp = sequence_parallel
    whole = sum(titan_tp_block_terms(cfg, b, s, e=e, device=device, checkpointing="none",
                                     tensor=tensor, sequence_parallel=sp,
                                     kernel=kernel).values())
    if device == "cpu":
        return whole
    return whole - titan_tp_block_terms(cfg, b, s, e=e, device=device, checkpointing="full",
                                        tensor=tensor, sequence_parallel=sp)["block_input"]


def titan_tp_saved_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: str, checkpointing: str,
                         device: str, layers: Any, tensor: int,
                         sequence_parallel: bool = True, kernel: str = "flex") -> dict[str, Any]:
    """Bytes torchtitan's Llama 3 step leaves for backward on one TP rank after forward + loss,
    by operation, summed over ``layers`` blocks; the logits themselves are dropped.

    >>> cfg = GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, mlp_hidden=192,
    ...                 vocab_size=256, bias=False, mlp="swiglu", norm="rmsnorm",
    ...                 position="rope", tie_embeddings=False)
    >>> t = titan_tp_saved_terms(cfg, 2, 128, precision="bf16-mixed", checkpointing="full",
    ...                          device="cpu", layers=2, tensor=2)
    >>> t["log_softmax"] == 2 * 128 * 128 * 4  # fp32 log-probabilities of 128 of 256 classes
    True
    """
    e = TITAN_PRECISIONS[precision]
    T = b * s
    out = {f"block.{k}": v * layers for k, v in titan_tp_block_terms(
        cfg, b, s, e=e, device=device, checkpointing=checkpointing, tensor=tensor,
        sequence_parallel=sequence_parallel, kernel=kernel).items()}
    out["embedding"] = T * INT64_BYTES + T * e  # local ids (int64) and the in-range mask (e)
    if checkpointing == "none" and kernel == "flex":  # the first FlexAttention saves its mask
        n = -(-s // FLEX_BLOCK)
        out["block_mask"] = 4 * b * n * INT32_BYTES + 4 * b * n * n * INT32_BYTES
    elif checkpointing != "none":  # the checkpointed blocks keep the (b, s) positions
        out["positions"] = T * INT64_BYTES
    Ts = b * _shard(s, tensor) if sequence_parallel else T
    out["final_norm"] = titan_tp_norm_bytes(Ts, cfg.n_embd, e, device)
    out["lm_head"] = T * cfg.n_embd * e  # the all-gathered final norm output
    out["log_softmax"] = T * _shard(cfg.vocab_size, tensor) * FP32_BYTES
    out["targets"] = T * INT64_BYTES
    return out


def titan_tp_loss_transients(cfg: GPTConfig, b: Any, s: Any, *, precision: str,
                             tensor: int) -> tuple[Any, Any]:
    """(forward, backward) bytes the vocabulary-parallel loss holds on top of the saved ones at
    its peaks, per TP rank (``TV`` = tokens x ``ceil(V / t)``): in forward the logits (the
    activation dtype), their fp32 upcast (none for fp32 logits: ``.float()`` returns them) and
    the shifted logits (fp32; ``exp`` of them lives before the saved log-probabilities do, in
    the same bytes); in backward the zeroed one-hot gradient,
    ``exp`` of the log-probabilities and their sum (fp32). The per-token statistics, label
    indices and masks (under 64 bytes a token on CPU) are left out.

    >>> cfg = GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, mlp_hidden=192,
    ...                 vocab_size=256, bias=False, mlp="swiglu", norm="rmsnorm",
    ...                 position="rope", tie_embeddings=False)
    >>> titan_tp_loss_transients(cfg, 1, 256, precision="bf16-mixed", tensor=2)
    (327680, 393216)
    """
    e = TITAN_PRECISIONS[precision]
    TV = b * s * _shard(cfg.vocab_size, tensor)
    upcast = FP32_BYTES if e != FP32_BYTES else 0
    return TV * (e + upcast + FP32_BYTES), 3 * TV * FP32_BYTES


def titan_tp_local_config(cfg: GPTConfig, tensor: int) -> GPTConfig:
    """The model one of ``tensor`` TP ranks holds, as a config: ``n_head / t`` query heads and
    ``n_kv_head / t`` KV heads of the same head size (the colwise ``wqkv`` rows, the rowwise
    ``wo`` columns), ``mlp_hidden / t`` (``w1``, ``w3`` rows, ``w2`` columns), ``vocab_size /
    t`` (the embedding's and ``lm_head``'s rows), ``n_embd`` and the norms whole; rank 0's
    shares, ``ceil``. Its parameter count is the rank's, so FSDP2's states and gathered units
    on a TP rank are `scaleplan.memory.titan_terms`' for this config.

    >>> cfg = GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, mlp_hidden=192,
    ...                 vocab_size=250, bias=False, mlp="swiglu", norm="rmsnorm",
    ...                 position="rope", tie_embeddings=False)
    >>> local = titan_tp_local_config(cfg, 2)
    >>> local.n_head, local.n_kv_head, local.head_dim, local.mlp_hidden, local.vocab_size
    (2, 1, 16, 96, 125)
    """
    t = tensor
    return cfg.replace(n_head=_shard(cfg.n_head, t), n_kv_head=_shard(cfg.n_kv_head, t),
                       head_dim=cfg.head_dim, mlp_hidden=_shard(cfg.mlp_hidden, t),
                       vocab_size=_shard(cfg.vocab_size, t))


def titan_tp_model_states(cfg: GPTConfig, opt: str, *, data: int,
                          tensor: int) -> tuple[int, int, int]:
    """(weights, gradients, optimizer) bytes on one GPU of ``data`` FSDP2 ranks x ``tensor``
    TP ranks: `scaleplan.memory.titan_terms.titan_model_states` of the rank's local model
    (`titan_tp_local_config`): fp32 parameters, fp32 gradients and fp32 optimizer states,
    each sharded ``ceil(x / data)`` by FSDP2.

    >>> cfg = GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, mlp_hidden=192,
    ...                 vocab_size=256, bias=False, mlp="swiglu", norm="rmsnorm",
    ...                 position="rope", tie_embeddings=False)
    >>> titan_tp_model_states(cfg, "adamw", data=1, tensor=2)  # 65,856 parameters, 17 tensors
    (263424, 263424, 526916)
    """
    return titan_model_states(titan_tp_local_config(cfg, tensor), opt, data=data)


def titan_tp_fsdp_in_flight(cfg: GPTConfig, precision: str, *, data: int,
                            tensor: int) -> dict[str, int]:
    """`scaleplan.memory.titan_terms.titan_fsdp_in_flight` for one TP rank: FSDP2 gathers the
    rank's block (its local shards) and its [final norm, lm_head] unit (the local vocabulary
    rows) over the data-parallel ranks.

    >>> cfg = GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, mlp_hidden=192,
    ...                 vocab_size=256, bias=False, mlp="swiglu", norm="rmsnorm",
    ...                 position="rope", tie_embeddings=False)
    >>> titan_tp_fsdp_in_flight(cfg, "bf16-mixed", data=8, tensor=2)  # head 128 x 64 + 64
    {'forward_end': 16512, 'backward_start': 16512, 'recompute': 247040}
    """
    return titan_fsdp_in_flight(titan_tp_local_config(cfg, tensor), precision, data=data)

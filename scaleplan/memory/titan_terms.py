"""What torchtitan's Llama 3 training step holds on one GPU, per operation.

torchtitan 0.3.0 (``torchtitan/models/llama3``, ``torchtitan/models/common``) runs a Llama 3
block as: ``nn.RMSNorm`` -> one fused ``wqkv`` matmul -> complex RoPE on q and k (``ComplexRoPE``,
the ``rope_cache`` indexed by position, complex64) -> FlexAttention (block-causal document mask)
-> ``wo`` -> residual -> ``nn.RMSNorm`` -> SwiGLU ``w2(silu(w1(x)) * w3(x))`` -> residual; then
the final norm, an untied ``lm_head`` and ``cross_entropy_loss`` (``pred.flatten(0, 1).float()``,
sum reduction); its trainer drops the logits (``del pred``) before backward.

Data parallelism is FSDP2 (``torchtitan/distributed/fsdp.py``, ``apply_fsdp_to_decoder``):
``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``, one ``fully_shard`` unit per
block, one for the embedding, one for [final norm, lm_head] (not resharded after forward), and
the root. No autocast: the compute runs in bf16 because the gathered parameters are bf16, so
activations are bf16 and there are no autocast weight copies; RMSNorm and the loss upcast to
fp32 themselves.

Saved for backward (each term checked exactly on CPU by `scaleplan.reference.titan_measure`,
which runs torchtitan's own model and activation checkpointing):

- ``checkpointing="none"``: per block, the norms' saves (CPU: torch's composite ``rms_norm``
  keeps the fp32 upcast, the fp32 normalised x and the fp32 reciprocal std; CUDA: the fused
  ``aten._fused_rms_norm`` kernel keeps its bf16 input and the fp32 reciprocal std), the
  ``wqkv`` input, the RoPE table rows (b s hd/2 complex64), FlexAttention's q, k, v, output
  and two fp32 (b, H, s) statistics (logsumexp and max), the MLP input, w1's and w3's outputs and
  silu's, and ``w2``'s input;
- ``"full"`` (torchtitan's ``FullAC``: ``checkpoint_wrapper`` per block): each block's input;
- ``"selective"`` (torchtitan's per-op ``SelectiveAC``,
  ``torchtitan/distributed/activation_checkpoint.py``): each block's input and the cached
  outputs of the ops its policy marks MUST_SAVE: the matmuls, every second one recomputed (of
  ``wqkv, wo, w1, w3, w2`` the 1st, 3rd and 5th are kept) and FlexAttention's three outputs;

and outside the blocks: the token ids (the embedding's), the block mask (saved by the first
FlexAttention without checkpointing) or the positions (kept by the checkpointed blocks), the
final norm's saves, the ``lm_head`` input, the fp32 log-softmax and the targets.

With ``qk_norm="head"`` the block is torchtitan's Qwen3 (``head_dim`` as given, QK-norm, cos/sin
RoPE): `scaleplan.memory.titan_qwen3_terms` adds its terms to the unchecked block's.
"""

from __future__ import annotations

from typing import Any

from scaleplan.memory.activations import FP32_BYTES
from scaleplan.memory.states import gradient_bytes, optimizer_state_bytes, weight_bytes
from scaleplan.memory.titan_qwen3_terms import qwen3_block_extras
from scaleplan.model.config import GPTConfig
from scaleplan.model.params import param_terms

__all__ = ["LOSS_SCALARS", "TITAN_PRECISIONS", "titan_block_params", "titan_block_rows",
           "titan_block_terms", "titan_fsdp_in_flight", "titan_head_backward_bytes",
           "titan_model_states", "titan_rebuilt_block_bytes", "titan_saved_terms", "titan_units"]

LOSS_SCALARS = 2 * FP32_BYTES
"""The loss and the ones its backward starts from, fp32, live through the backward."""
TITAN_PRECISIONS = {"bf16-mixed": 2, "32-true": 4}
"""torchtitan's ``training.mixed_precision_param`` ("bfloat16", its default, or "float32";
``torchtitan/config/configs.py``) as scaleplan precisions, with the bytes of a gathered
parameter and of an activation. Its ``mixed_precision_reduce`` is always "float32"."""

INT64_BYTES = 8
INT32_BYTES = 4
# FlexAttention's sparse block (torch.nn.attention.flex_attention._DEFAULT_SPARSE_BLOCK_SIZE,
# torchtitan's FlexAttention.Config default): the block mask has ceil(s / 128) row blocks.
FLEX_BLOCK = 128
COMPLEX64_BYTES = 8  # one rotary pair (cos, sin) as a complex64
LOSS_SCALAR_BYTES = 4  # nll_loss's fp32 total_weight, saved with reduction="sum"


def _norm_bytes(T: Any, d: int, e: int, device: str) -> Any:
    """One RMSNorm's saves: composite on CPU, fused kernel on CUDA (see module docstring)."""
    if device == "cpu":
        return 2 * T * d * FP32_BYTES + T * FP32_BYTES
    return T * d * e + T * FP32_BYTES


def titan_block_terms(cfg: GPTConfig, b: Any, s: Any, *, e: int, device: str,
                      checkpointing: str) -> dict[str, Any]:
    """Bytes one torchtitan Llama 3 block leaves for backward, by operation.

    >>> cfg = GPTConfig(n_layer=1, n_head=4, n_kv_head=2, n_embd=64, mlp_hidden=192,
    ...                 bias=False, mlp="swiglu", norm="rmsnorm", position="rope")
    >>> titan_block_terms(cfg, 2, 128, e=2, device="cpu", checkpointing="full")
    {'block_input': 32768}
    """
    T, d, H, K, hd, F = b * s, cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.mlp_hidden
    stats = 2 * b * H * s * FP32_BYTES  # FlexAttention's logsumexp and max, fp32 (B, H, L)
    if checkpointing == "full":
        return {"block_input": T * d * e}
    if checkpointing == "selective":
        return {"block_input": T * d * e,
                "wqkv_output": T * (H + 2 * K) * hd * e,  # 1st matmul kept (wo's recomputed)
                "attention_outputs": T * H * hd * e + stats,
                "w1_output": T * F * e,  # 3rd matmul kept (w3's recomputed)
                "w2_output": T * d * e}  # 5th matmul kept
    out = {"attention_norm": _norm_bytes(T, d, e, device),
           "wqkv_input": T * d * e,
           "rope_table": T * (hd // 2) * COMPLEX64_BYTES,
           "attention": T * (H + 2 * K) * hd * e + T * H * hd * e + stats,
           "ffn_norm": _norm_bytes(T, d, e, device),
           "mlp_input": T * d * e,
           "mlp": 3 * T * F * e,  # w1 out (silu's input), silu out and w3 out (the product's)
           "w2_input": T * F * e}
    if cfg.qk_norm == "head":  # its Qwen3: QK-norm, cos/sin RoPE (titan_qwen3_terms)
        out.update(qwen3_block_extras(cfg, b, s, e=e, device=device))
    return out


def titan_rebuilt_block_bytes(cfg: GPTConfig, b: Any, s: Any, *, e: int, device: str,
                              checkpointing: str) -> Any:
    """Bytes a checkpointed block's recompute adds while it runs its backward: what the block
    saves without checkpointing, less the storages it already holds. Under ``"selective"`` the
    policy's cache hands back FlexAttention's outputs and w1's output (the other cached
    outputs, wqkv's and w2's, are not saved by the block's own backward); under ``"full"``, on
    CUDA, the first RMSNorm saves the block input itself.

    >>> cfg = GPTConfig(n_layer=1, n_head=4, n_kv_head=2, n_embd=64, mlp_hidden=192,
    ...                 bias=False, mlp="swiglu", norm="rmsnorm", position="rope")
    >>> titan_rebuilt_block_bytes(cfg, 2, 128, e=2, device="cuda", checkpointing="full")
    616448
    """
    whole = sum(titan_block_terms(cfg, b, s, e=e, device=device, checkpointing="none").values())
    kept = titan_block_terms(cfg, b, s, e=e, device=device, checkpointing="selective")
    if checkpointing == "selective":
        return whole - kept["attention_outputs"] - kept["w1_output"]
    return whole - (kept["block_input"] if device != "cpu" else 0)


def titan_saved_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: str, checkpointing: str,
                      device: str, layers: Any) -> dict[str, Any]:
    """Bytes torchtitan's Llama 3 step leaves for backward after forward + loss, by operation,
    summed over ``layers`` blocks; the logits themselves are dropped (``del pred``).

    >>> cfg = GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, mlp_hidden=192,
    ...                 vocab_size=256, bias=False, mlp="swiglu", norm="rmsnorm",
    ...                 position="rope", tie_embeddings=False)
    >>> t = titan_saved_terms(cfg, 2, 128, precision="bf16-mixed", checkpointing="full",
    ...                       device="cpu", layers=2)
    >>> t["log_softmax"] == 2 * 128 * 256 * 4  # the fp32 log-softmax over the vocabulary
    True
    """
    e = TITAN_PRECISIONS[precision]
    T = b * s
    out = {f"block.{k}": v * layers for k, v in titan_block_terms(
        cfg, b, s, e=e, device=device, checkpointing=checkpointing).items()}
    out["embedding_ids"] = T * INT64_BYTES
    if checkpointing == "none":  # the first FlexAttention saves the block mask, shared by all
        n = -(-s // FLEX_BLOCK)
        # kv/q num_blocks (b, 1, n) and indices (b, 1, n, n), each with its "full" twin, int32
        out["block_mask"] = 4 * b * n * INT32_BYTES + 4 * b * n * n * INT32_BYTES
    else:  # each checkpointed block keeps its inputs, the (b, s) positions among them
        out["positions"] = T * INT64_BYTES
    out["final_norm"] = _norm_bytes(T, cfg.n_embd, e, device)
    out["lm_head"] = T * cfg.n_embd * e
    out["log_softmax"] = T * cfg.vocab_size * FP32_BYTES
    out["targets"] = T * INT64_BYTES + LOSS_SCALAR_BYTES
    return out


def titan_block_rows(cfg: GPTConfig) -> tuple[tuple[int, int], ...]:
    """(dim 0, the rest) of each parameter of one torchtitan Llama 3 block: ``wqkv``, ``wo``,
    w1, w2, w3, two norm weights (Qwen3's q and k norms besides); FSDP2 shards dim 0.

    >>> titan_block_rows(GPTConfig(n_layer=1, n_head=4, n_kv_head=2, n_embd=64,
    ...     mlp_hidden=192, bias=False, mlp="swiglu", norm="rmsnorm", position="rope"))[:2]
    ((128, 64), (64, 64))
    """
    d, H, K, hd, F = cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.mlp_hidden
    rows = ((H + 2 * K) * hd, d), (d, H * hd), (F, d), (d, F), (F, d), (d, 1), (d, 1)
    return rows + (((hd, 1),) * 2 if cfg.qk_norm == "head" else ())


def titan_units(cfg: GPTConfig, layers: int) -> list[tuple[tuple[int, int], ...]]:
    """Each ``fully_shard`` unit's parameters as (dim 0, the rest), in forward order: the
    embedding, ``layers`` blocks, [final norm, lm_head] (``apply_fsdp_to_decoder``).

    >>> [len(u) for u in titan_units(GPTConfig(n_layer=2, n_head=2, n_embd=8, vocab_size=16,
    ...      bias=False, mlp="swiglu", norm="rmsnorm", position="rope"), 2)]
    [1, 7, 7, 2]
    """
    V, d = cfg.vocab_size, cfg.n_embd
    return [((V, d),), *(titan_block_rows(cfg),) * layers, ((V, d), (d, 1))]


def titan_block_params(cfg: GPTConfig) -> int:
    """Parameters of one torchtitan Llama 3 block (`titan_block_rows`).

    >>> titan_block_params(GPTConfig(n_layer=1, n_head=4, n_kv_head=2, n_embd=64,
    ...     mlp_hidden=192, bias=False, mlp="swiglu", norm="rmsnorm", position="rope"))
    49280
    """
    return sum(rows * rest for rows, rest in titan_block_rows(cfg))


def titan_head_backward_bytes(cfg: GPTConfig, b: Any, s: Any, saved: dict[str, Any], *,
                              e: int, data: int) -> Any:
    """Live bytes above the sharded states as the head's backward makes lm_head's weight
    gradient: every saved tensor but the log-softmax (freed by its backward), the [final norm,
    lm_head] unit gathered ((V d + d) e), the weight gradient (V d e), the logits' gradient
    (T V e), the gradient into the final norm (T d e), the loss's 8 bytes and, on two or more
    ranks, the last block prefetched (P e). Measured to the byte where it is the step's peak
    (fp32 parameters, 8 ranks, 1 x 16 tokens, a 12,000-token vocabulary:
    docs/validation/torchtitan-fsdp-streams.json, ``vocab-12k-2``).

    >>> cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=16, bias=False,
    ...                 mlp="swiglu", norm="rmsnorm", position="rope", tie_embeddings=False)
    >>> # 128 saved + 136 x 4 gathered + 128 x 4 + 64 x 4 + 32 x 4 + the loss's 8
    >>> titan_head_backward_bytes(cfg, 1, 4, {"log_softmax": 256, "lm_head": 128}, e=4, data=1)
    1576
    """
    T, d, V = b * s, cfg.n_embd, cfg.vocab_size
    kept = sum(v for k, v in saved.items() if k != "log_softmax")
    prefetched = titan_block_params(cfg) * e if data > 1 else 0
    return (kept + (V * d + d) * e + V * d * e + T * V * e + T * d * e + LOSS_SCALARS
            + prefetched)


def titan_fsdp_in_flight(cfg: GPTConfig, precision: str, *, data: int,
                         one_rank_mesh: bool = False) -> dict[str, int]:
    """Bytes FSDP2 holds unsharded on top of its shards, at each moment of the step.

    ``fully_shard`` units (``apply_fsdp_to_decoder``): each block, gathered in the param dtype
    and resharded after its forward; the [final norm, lm_head] unit, which torchtitan does not
    reshard after forward, so it stays gathered through the loss and the loss's backward
    (``forward_end``, ``backward_start``) until its own backward ends. While a block runs its
    backward (``recompute``): that block and the one FSDP2 prefetches (its default backward
    prefetch of one unit), the block's unsharded gradients in the param dtype and, with bf16
    params, the fp32 copy the reduce-scatter (``reduce_dtype=fp32``) reads. With one data rank
    nothing is counted, unless ``one_rank_mesh`` (torchtitan's one-GPU step, FSDP2 on a
    one-rank mesh): then each unit is still copied into unsharded parameters of the param
    dtype, but the backward prefetch copies nothing ahead (torch 2.13
    ``FSDPParamGroup.unshard`` with ``world_size == 1`` only records an event; the copy is the
    unit's own ``wait_for_unshard``), so a block's backward holds no second block.

    >>> cfg = GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, mlp_hidden=192,
    ...                 vocab_size=256, bias=False, mlp="swiglu", norm="rmsnorm",
    ...                 position="rope", tie_embeddings=False)
    >>> titan_fsdp_in_flight(cfg, "bf16-mixed", data=8)  # block 49,280; head + norm 16,448
    {'forward_end': 32896, 'backward_start': 32896, 'recompute': 492800}
    >>> titan_fsdp_in_flight(cfg, "bf16-mixed", data=1, one_rank_mesh=True)["recompute"]
    394240
    """
    if data == 1 and not one_rank_mesh:
        return {"forward_end": 0, "backward_start": 0, "recompute": 0}
    e = TITAN_PRECISIONS[precision]
    d, block = cfg.n_embd, titan_block_params(cfg)
    head = (cfg.vocab_size * d + d) * e
    grads = block * e + (block * FP32_BYTES if e != FP32_BYTES else 0)
    gathered = 2 * block * e if data > 1 else block * e  # and the block prefetched
    return {"forward_end": head, "backward_start": head, "recompute": gathered + grads}


def titan_model_states(cfg: GPTConfig, opt: str, *, data: int) -> tuple[int, int, int]:
    """(weights, gradients, optimizer) bytes on one of ``data`` FSDP2 ranks: the fp32 sharded
    parameters, their fp32 sharded gradients (torchtitan keeps the parameters in fp32 and
    reduces in fp32 whatever ``mixed_precision_param`` is) and the optimizer's fp32 states,
    each ``ceil(full / data)`` (the unsharded buffers are `titan_fsdp_in_flight`).

    >>> cfg = GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, mlp_hidden=192,
    ...                 vocab_size=256, bias=False, mlp="swiglu", norm="rmsnorm",
    ...                 position="rope", tie_embeddings=False)
    >>> titan_model_states(cfg, "adamw", data=1)  # 131,392 parameters
    (525568, 525568, 1051204)
    """
    n = param_terms(cfg)["total"]
    full = (weight_bytes(n, "32-true"), gradient_bytes(n, "32-true"),
            optimizer_state_bytes(cfg, opt, "32-true"))  # type: ignore[arg-type]
    W, G, O = (-(-x // data) for x in full)
    return W, G, O

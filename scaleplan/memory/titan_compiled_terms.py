"""What torchtitan's Llama 3 keeps for backward with its blocks compiled, per operation.

torchtitan's ``compile.enable`` compiles each ``TransformerBlock`` on its own, after activation
checkpointing wrapped it (``apply_compile``, torchtitan/distributed/compile.py:
``transformer_block.compile(backend="inductor", fullgraph=True)``); the embedding, the final norm,
the ``lm_head`` and, in the published runs of December 2024, the loss stay eager. AOT autograd's
min-cut partitioner then chooses, per block, what the compiled forward saves: it keeps the
matmuls' and SDPA's inputs and outputs it cannot cheaply rebuild and recomputes the pointwise
rest (the norms' fp32 upcasts and normalised x, silu). Measured on CPU with torchtitan's own model,
checkpointing and ``apply_compile``, attention SDPA, bf16 and fp32 parameters
(`scaleplan.reference.titan_compiled`, tests/data/titan_compiled.json), each term to the byte:

- ``checkpointing="none"``: per block, its input (the first norm's) and the second norm's input
  (the residual), both norms' fp32 reciprocal std (one per token), the normalised x ``wqkv``
  reads, the rotated q and k and the v SDPA reads, SDPA's output and fp32 logsumexp, ``wo``'s
  contiguous input, w1's and w3's outputs and w2's input, and the complex64 RoPE rows;
- ``"full"``: each block's input and, on CPU, the generator state the traced checkpoint saves
  to replay its randomness (``torch.get_rng_state()``: 5,056 bytes of host memory; on a GPU the
  generator's state lives on the host too, so it adds nothing there);
- ``"selective"`` (its per-op SAC under compile: the partitioner honours the policy's tags):
  each block's input, ``wqkv``'s output (matmul 1 of 5), SDPA's output and logsumexp and w1's
  output (matmul 3). Matmul 5 (w2) is tagged MUST_SAVE too but nothing in the block's backward
  reads its output, so the compiled graph does not keep it (the eager policy's cache does).

Outside the blocks everything is as without compile (`scaleplan.memory.titan_sdpa_terms`): the
token ids, the positions under checkpointing, the final norm, the ``lm_head`` input, the fp32
log-softmax and the targets.
"""

from __future__ import annotations

from typing import Any

from scaleplan.memory.activations import FP32_BYTES
from scaleplan.memory.titan_sdpa_terms import (
    titan_sdpa_saved_terms,
)
from scaleplan.memory.titan_terms import COMPLEX64_BYTES, TITAN_PRECISIONS
from scaleplan.model.config import GPTConfig

__all__ = ["CPU_RNG_STATE_BYTES", "titan_compiled_block_terms", "titan_compiled_end_moment",
           "titan_compiled_mlp_moment",
           "titan_compiled_rebuilt_block_bytes", "titan_compiled_saved_terms",
           "titan_step_terms"]

CPU_RNG_STATE_BYTES = 5056
"""``torch.get_rng_state().numel()``: the CPU generator's state (the mt19937 state of 624
32-bit words with its position, the seed and the normal-sampling cache) as a uint8 tensor."""


def titan_compiled_block_terms(cfg: GPTConfig, b: Any, s: Any, *, e: int, device: str,
                               checkpointing: str) -> dict[str, Any]:
    """Bytes one compiled torchtitan Llama 3 block (SDPA) leaves for backward, by operation.

    >>> cfg = GPTConfig(n_layer=1, n_head=4, n_kv_head=2, n_embd=64, mlp_hidden=192,
    ...                 bias=False, mlp="swiglu", norm="rmsnorm", position="rope")
    >>> titan_compiled_block_terms(cfg, 2, 128, e=2, device="cuda", checkpointing="full")
    {'block_input': 32768}
    """
    T, d, H, K, hd, F = b * s, cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.mlp_hidden
    lse = b * H * s * FP32_BYTES  # SDPA's logsumexp, fp32 (b, H, s)
    if checkpointing == "full":
        rng = {"rng_state": CPU_RNG_STATE_BYTES} if device == "cpu" else {}
        return {"block_input": T * d * e, **rng}
    if checkpointing == "selective":
        return {"block_input": T * d * e,
                "wqkv_output": T * (H + 2 * K) * hd * e,  # matmul 1 of 5
                "attention_outputs": T * H * hd * e + lse,
                "w1_output": T * F * e}  # matmul 3; matmul 5's output is not read
    return {"block_input": T * d * e,
            "norm_rstd": 2 * T * FP32_BYTES,
            "wqkv_input": T * d * e,
            "attention": T * (H + 2 * K) * hd * e + T * H * hd * e + lse,
            "wo_input": T * H * hd * e,
            "mlp_input": T * d * e,
            "mlp": 3 * T * F * e,  # w1 out, w3 out, w2's input
            "rope_table": T * (hd // 2) * COMPLEX64_BYTES}


def titan_compiled_rebuilt_block_bytes(cfg: GPTConfig, b: Any, s: Any, *, e: int) -> Any:
    """Bytes a compiled block under full checkpointing rebuilds in its backward: what the block
    saves compiled without checkpointing, less its input, which the checkpoint holds. Derived
    from the measured saves, measured whole: the whole recompute runs before the MLP's backward
    (`titan_compiled_mlp_moment`).

    >>> cfg = GPTConfig(n_layer=1, n_head=4, n_kv_head=2, n_embd=64, mlp_hidden=192,
    ...                 bias=False, mlp="swiglu", norm="rmsnorm", position="rope")
    >>> titan_compiled_rebuilt_block_bytes(cfg, 2, 128, e=2)
    514048
    """
    none = titan_compiled_block_terms(cfg, b, s, e=e, device="cuda", checkpointing="none")
    return sum(none.values()) - none["block_input"]


def titan_compiled_mlp_moment(cfg: GPTConfig, b: Any, s: Any, *, e: int, device: str,
                              checkpointing: str) -> tuple[Any, Any, bool]:
    """(bytes each earlier compiled block keeps, bytes the block in backward holds at its
    MLP's backward, whether w2's unsharded weight gradient is made by then), the block's own
    activations and gradient buffers, without its incoming gradient or FSDP2's buffers.

    Measured whole (`scaleplan.reference.titan_compiled_step`, the allocator's events at the
    backward's peak, each storage sized): inductor's backward graph of a compiled block runs
    its kernels in its own order, so what is live at the MLP differs by checkpointing:

    - ``"none"``: the block's saves, all still held (they are the graph's inputs), w2's
      input gradient (``b s F``) and w2's weight gradient made;
    - ``"full"``: the block's input and everything it saves compiled without checkpointing
      (its recompute, `titan_compiled_rebuilt_block_bytes`, runs whole before the MLP's
      backward), and three ``b s F`` gradients (w2's input's, w1's and w3's outputs'), w2's
      weight gradient not made yet; the block's CPU generator state is consumed by then;
    - ``"selective"``: the block's cache and only the MLP side of its recompute (the second
      norm's input and output and its fp32 reciprocal std, w3's output, w2's input: the
      attention side is rebuilt later, where its backward needs it), and the three ``b s F``
      gradients.

    On a GPU inductor writes Triton kernels from the same scheduled graph; their order is
    taken to be the CPU one's (not measured on a GPU).

    >>> cfg = GPTConfig(n_layer=3, n_head=4, n_kv_head=2, n_embd=160, mlp_hidden=448,
    ...                 vocab_size=384, bias=False, mlp="swiglu", norm="rmsnorm",
    ...                 position="rope", tie_embeddings=False)
    >>> titan_compiled_mlp_moment(cfg, 2, 96, e=2, device="cpu", checkpointing="full")
    (66496, 1497600, False)
    """
    T, d, F = b * s, cfg.n_embd, cfg.mlp_hidden
    kept = sum(titan_compiled_block_terms(cfg, b, s, e=e, device=device,
                                          checkpointing=checkpointing).values())
    if checkpointing == "none":
        return kept, kept + T * F * e, True
    gradients = 3 * T * F * e  # w2's input's, w1's and w3's outputs' gradients
    if checkpointing == "full":
        rebuilt = titan_compiled_rebuilt_block_bytes(cfg, b, s, e=e)
        return kept, T * d * e + rebuilt + gradients, False
    mlp_side = T * FP32_BYTES + 2 * T * d * e + 2 * T * F * e
    return kept, kept + mlp_side + gradients, False


def titan_compiled_end_moment(cfg: GPTConfig, b: Any, s: Any, *, e: int,
                              checkpointing: str) -> Any:
    """Bytes a compiled block's backward holds at its end beyond its incoming gradient and
    FSDP2's buffers (every weight gradient of the block made, `titan_fsdp_buffers`'
    ``whole_block``): the input gradient it returns and, live until its last kernels, the
    gradient of ``wqkv``'s output (under ``"full"``, of one ``b s F`` tensor instead); its
    saves are freed by then (measured whole with few tokens,
    `scaleplan.reference.titan_compiled_step`).

    >>> cfg = GPTConfig(n_layer=3, n_head=4, n_kv_head=2, n_embd=160, mlp_hidden=448,
    ...                 vocab_size=384, bias=False, mlp="swiglu", norm="rmsnorm",
    ...                 position="rope", tie_embeddings=False)
    >>> titan_compiled_end_moment(cfg, 1, 16, e=2, checkpointing="none")  # 5,120 + 10,240
    15360
    """
    T, d = b * s, cfg.n_embd
    if checkpointing == "full":
        return T * d * e + T * cfg.mlp_hidden * e
    return T * d * e + T * (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim * e


def titan_compiled_saved_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: str,
                               checkpointing: str, device: str, layers: Any) -> dict[str, Any]:
    """Bytes torchtitan's Llama 3 step with compiled SDPA blocks leaves for backward after
    forward + loss, by operation, summed over ``layers`` blocks.

    >>> cfg = GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, mlp_hidden=192,
    ...                 vocab_size=256, bias=False, mlp="swiglu", norm="rmsnorm",
    ...                 position="rope", tie_embeddings=False)
    >>> t = titan_compiled_saved_terms(cfg, 2, 128, precision="bf16-mixed",
    ...                                checkpointing="selective", device="cuda", layers=2)
    >>> t["block.w1_output"], t["positions"]  # 2 x (256 x 192 x 2); 256 int64 positions
    (196608, 2048)
    """
    e = TITAN_PRECISIONS[precision]
    eager = titan_sdpa_saved_terms(cfg, b, s, precision=precision, checkpointing=checkpointing,
                                   device=device, layers=layers)
    out = {f"block.{k}": v * layers for k, v in titan_compiled_block_terms(
        cfg, b, s, e=e, device=device, checkpointing=checkpointing).items()}
    out.update({k: v for k, v in eager.items() if not k.startswith("block.")})
    return out


def titan_step_terms(cfg: GPTConfig, b: Any, s: Any, *, precision: str, checkpointing: str,
                     device: str, layers: Any, compiled: bool) -> dict[str, Any]:
    """The saved terms of torchtitan's Llama 3 step with SDPA attention, its blocks compiled
    (`titan_compiled_saved_terms`) or eager (`scaleplan.memory.titan_sdpa_terms`).

    >>> cfg = GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, mlp_hidden=192,
    ...                 vocab_size=256, bias=False, mlp="swiglu", norm="rmsnorm",
    ...                 position="rope", tie_embeddings=False)
    >>> saved = titan_step_terms(cfg, 2, 128, precision="bf16-mixed", checkpointing="none",
    ...                          device="cuda", layers=2, compiled=True)
    >>> saved["block.wo_input"]  # wo's contiguous input, 2 x (256 x 64 x 2)
    65536
    """
    saved_terms = titan_compiled_saved_terms if compiled else titan_sdpa_saved_terms
    return saved_terms(cfg, b, s, precision=precision, checkpointing=checkpointing,
                       device=device, layers=layers)

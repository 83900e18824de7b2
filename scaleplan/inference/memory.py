"""The memory one GPU needs to serve a model: weights, KV cache, the prefill peak, overhead.

``weights`` come from `scaleplan.memory.quantized.quantized_weight_bytes` (bf16, fp8, int8, int4
with its group scales, nf4), ``kv_cache`` from `scaleplan.inference.kv_cache.kv_cache_bytes`
for ``batch_size`` requests of ``context_len`` tokens each (every request at full length: the
worst case a server must admit), ``activations`` from
`scaleplan.inference.prefill.prefill_activation_bytes` for one step of ``prefill_chunk`` tokens
(prompt chunks and decoding requests mixed, as vLLM schedules them; logits for each of the
``min(batch_size, prefill_chunk)`` requests with a token in the step), and
``overhead`` is the CUDA context plus the caching allocator's slack on the tensors
(`scaleplan.memory.training.CUDA_CONTEXT_BYTES`, ``ALLOCATOR_SLACK_FRACTION``), as for training.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, model_validator

from scaleplan.checks import real, whole
from scaleplan.errors import ScaleplanError, shown
from scaleplan.inference.kv_cache import (
    MLACache,
    SlidingCache,
    kv_cache_bytes,
    kv_dtype,
    serving_tensor_degree,
)
from scaleplan.inference.prefill import DEFAULT_PREFILL_CHUNK, LogitsKind, prefill_activation_bytes
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.quantized import WeightFormat, quantized_weight_bytes
from scaleplan.memory.training import ALLOCATOR_SLACK_FRACTION, CUDA_CONTEXT_BYTES
from scaleplan.model.config import GPTConfig

__all__ = ["InferenceMemory", "activation_bytes_for", "inference_memory"]

FP32_WEIGHTS = ("fp32", "float32")


class InferenceMemory(BaseModel):
    """Bytes one GPU needs to serve a model (ints):
    ``weights + kv_cache + activations + overhead == total``.

    >>> m = inference_memory(GPTConfig.preset("llama-3-8b"), batch_size=1, context_len=8192)
    >>> m.kv_cache  # 8,192 tokens x 131,072 bytes
    1073741824
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    weights: int = Field(description="The model's weights on this GPU, quantisation constants "
                         "included (scaleplan.memory.quantized).")
    kv_cache: int = Field(description="Keys and values of batch_size requests at context_len "
                          "tokens each.")
    activations: int = Field(description="The peak live activations of one prefill chunk's "
                             "forward (no grad), its logits included.")
    overhead: int = Field(description="CUDA context plus allocator slack on the tensors.")
    total: int = Field(0, description="The sum of the four parts.")
    batch_size: int = Field(description="Requests served at once (each with its own cache).")
    context_len: int = Field(description="Tokens of each request (prompt and output).")
    prefill_chunk: int = Field(description="Prompt tokens one prefill forward runs.")

    @model_validator(mode="after")
    def _sum(self) -> InferenceMemory:
        object.__setattr__(self, "total",
                           self.weights + self.kv_cache + self.activations + self.overhead)
        return self


def activation_bytes_for(weights: str) -> int:
    """Bytes of an activation element when the weights are ``weights``: 4 for fp32 weights,
    else 2 (bf16/fp16 compute; quantised weights are dequantised into a 16-bit matmul)."""
    return 4 if weights.strip().lower() in FP32_WEIGHTS else 2


def inference_memory(
    cfg: GPTConfig, *, batch_size: int, context_len: int, weights: WeightFormat = "bf16",
    group_size: int | None = None, kv_cache: str = "bf16",
    parallelism: Parallelism | None = None, prefill_chunk: int | None = DEFAULT_PREFILL_CHUNK,
    logits: LogitsKind = "last", mla_cache: MLACache = "latent",
    sliding_cache: SlidingCache = "window", cuda_context_bytes: int = CUDA_CONTEXT_BYTES,
    allocator_slack_fraction: float = ALLOCATOR_SLACK_FRACTION,
) -> InferenceMemory:
    """Memory one GPU needs to serve ``cfg`` to ``batch_size`` requests of ``context_len``
    tokens.

    Args:
        cfg: the model.
        batch_size: concurrent requests whose caches are held.
        context_len: tokens per request, prompt and output (the cache at its longest).
        weights: the weights' format, as `scaleplan.memory.quantized.quantized_weight_bytes`
            takes it ("bf16", "fp16", "fp32", "fp8", "int8", "int4", "nf4", "nf4-dq").
        group_size: quantisation group size for int4/nf4 (None: the format's default).
        kv_cache: the cache's dtype ("bf16", "fp16", "fp32", "fp8", "int8";
            `scaleplan.inference.kv_cache`).
        parallelism: ``Parallelism(tensor=t)`` splits heads and weights over t GPUs; data
            parallelism is replicas; the rest is refused by name.
        prefill_chunk: prompt tokens per prefill forward (vLLM's ``max_num_batched_tokens``,
            default 8,192), capped at ``batch_size x context_len``; None: the whole batch's
            prompts in one forward.
        logits: ``"last"`` (one position per request, the default) or ``"chunk"``.
        mla_cache: ``"latent"`` (default; vLLM, SGLang, transformers 5.25) or ``"expanded"``.
        sliding_cache: ``"window"`` (default) or ``"dynamic"`` (transformers' dynamic cache).
        cuda_context_bytes: the CUDA context (default `CUDA_CONTEXT_BYTES`).
        allocator_slack_fraction: allocator slack as a fraction of the tensors.

    >>> m = inference_memory(GPTConfig.preset("llama-3-8b"), batch_size=8, context_len=4096,
    ...                      weights="int4", kv_cache="fp8")
    >>> m.kv_cache == 8 * 4096 * 65536  # 8 requests x 4,096 tokens x 64 KiB (fp8)
    True
    """
    batch_size = whole("batch_size", batch_size, example="batch_size=8")
    context_len = whole("context_len", context_len, example="context_len=8192")
    kv_dtype(kv_cache)
    t = serving_tensor_degree(cfg, parallelism)
    tokens = batch_size * context_len
    chunk = tokens if prefill_chunk is None else min(
        whole("prefill_chunk", prefill_chunk, example="prefill_chunk=8192"), tokens)
    if logits not in ("last", "chunk"):
        raise ScaleplanError(f"logits={shown(logits)} must be 'last' or 'chunk'")
    slack = real("allocator_slack_fraction", allocator_slack_fraction, inclusive=True,
                 example="allocator_slack_fraction=0.05")
    context = whole("cuda_context_bytes", cuda_context_bytes, minimum=0,
                    example="cuda_context_bytes=512 * 2**20")
    w = quantized_weight_bytes(cfg, weights, group_size=group_size,
                               parallelism=parallelism).total
    kv = kv_cache_bytes(cfg, context_len=context_len, batch_size=batch_size, dtype=kv_cache,
                        mla_cache=mla_cache, sliding_cache=sliding_cache,
                        parallelism=parallelism)
    rows = min(batch_size, chunk)  # requests with a token in the step, each sampled once
    acts = prefill_activation_bytes(cfg, chunk=chunk, rows=rows,
                                    element_bytes=activation_bytes_for(weights), logits=logits,
                                    tensor=t)
    tensors = w + kv + acts
    overhead = context + math.ceil(slack * tensors)
    return InferenceMemory(weights=w, kv_cache=kv, activations=acts, overhead=overhead,
                           batch_size=batch_size, context_len=context_len, prefill_chunk=chunk)

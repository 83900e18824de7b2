"""Bytes of the KV cache: what a server keeps per token of context so that each new token attends
to the earlier ones without recomputing them.

Per attention block and per token of context the cache holds (e = bytes per element):

- multi-head and grouped-query attention (GPT-2, Llama, Qwen2, Mistral, Gemma): a key and a value
  for every key/value head, ``2 x n_kv_head x head_dim x e``. Llama 3.1 8B in bf16:
  2 x 32 layers x 8 heads x 128 x 2 bytes = 131,072 bytes per token;
- multi-head latent attention (DeepSeek-V2/V3), ``mla_cache="latent"`` (the default): the
  compressed latent and the shared rotary key, ``(kv_lora_rank + qk_rope_head_dim) x e``; this is
  what vLLM and SGLang cache, and what transformers 5.25's ``DeepseekV3Attention`` hands to the
  cache ("Cache read / write is performed while latent KV is still compressed",
  transformers/models/deepseek_v3/modeling_deepseek_v3.py). DeepSeek-V2's paper (Table 1) gives
  the same (d_c + d_h^R) elements per layer. ``mla_cache="expanded"``: the per-head keys and values
  after ``kv_b_proj``, ``n_head x (qk_head_dim + v_head_dim) x e``, as DeepSeek's original
  remote-code ``modeling_deepseek.py`` (and transformers before the latent cache) stored them;
- a mixture of experts changes nothing (experts are MLPs; attention is dense).

Sliding windows: a block of ``sliding_window_layers`` attends to the last ``sliding_window`` tokens
only, so it holds at most that many, whatever the context. The cache of a request is then not
proportional to its length: `kv_cache_bytes` takes the context length. ``sliding_cache="window"``
(the default) caps a windowed block at ``window`` tokens: the keys one step reads, the new token's
included, which is what transformers' ``StaticSlidingWindowLayer`` allocates and what a paged
server keeps; ``"dynamic"``: transformers' ``DynamicSlidingWindowLayer`` (the default cache of
``generate``) keeps ``window - 1`` between steps and concatenates the new token's key during the
step (transformers 5.25 cache_utils.py). Gemma 2 (one block in two) and Gemma 3 (five in six) mix
windowed and global blocks: only the count of each kind matters here.

dtypes: ``"bf16"``, ``"fp16"`` (2 bytes), ``"fp32"`` (4), ``"fp8"`` (1 byte: vLLM's FP8 cache,
whose scales are one per tensor or per head per layer, fixed, not per token; they are parameters
of the attention layer and are not counted here), ``"int8"`` (1 byte plus LMDeploy's online
quantisation "applied on a per-head, per-token basis", asymmetric: a scale and a zero point for
each head of each token's key and value, each kept in 2 bytes; LMDeploy docs, "INT4/INT8 KV
Cache", v0.4.0 and later). int8 with MLA's latent cache is not modelled (no per-head layout).

Tensor parallelism over t GPUs splits the heads: each GPU caches ``n_kv_head / t`` key/value heads,
or one (replicated) when t exceeds ``n_kv_head`` (vLLM's rule: t must divide ``n_kv_head`` or be a
multiple of it). MLA's latent has no heads: every GPU caches all of it (vLLM replicates it).
"""

from __future__ import annotations

from typing import Literal

from scaleplan.checks import canonical, one_of, whole
from scaleplan.errors import ScaleplanError, shown
from scaleplan.memory.parallel import Parallelism
from scaleplan.model.config import GPTConfig

__all__ = [
    "INT8_PARAM_BYTES",
    "KV_DTYPES",
    "KV_ELEMENT_BYTES",
    "KVCacheDtype",
    "MLACache",
    "SlidingCache",
    "kv_cache_bytes",
    "kv_cache_bytes_per_token",
    "kv_heads_per_gpu",
    "layer_token_bytes",
    "serving_tensor_degree",
]

KVCacheDtype = Literal["bf16", "fp16", "fp32", "fp8", "int8"]
MLACache = Literal["latent", "expanded"]
SlidingCache = Literal["window", "dynamic"]

KV_ELEMENT_BYTES: dict[str, int] = {"bf16": 2, "fp16": 2, "fp32": 4, "fp8": 1, "int8": 1}
KV_DTYPES: tuple[str, ...] = tuple(KV_ELEMENT_BYTES)
_KV_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32",
               "fp8_e4m3": "fp8", "fp8_e5m2": "fp8", "float8": "fp8"}
# LMDeploy's int8 KV cache: per token and per head, a scale and a zero point of 2 bytes each.
INT8_PARAM_BYTES = 2 + 2


def kv_dtype(dtype: str) -> KVCacheDtype:
    """The canonical KV cache dtype for ``dtype`` ("bfloat16" -> "bf16")."""
    return canonical("kv_cache dtype", dtype, KV_DTYPES, _KV_ALIASES)  # type: ignore[return-value]


def serving_tensor_degree(cfg: GPTConfig, parallelism: Parallelism | None) -> int:
    """The tensor-parallel degree t of a serving layout, refusing by name what serving memory does
    not model: ZeRO/FSDP (training-time sharding), pipeline and expert parallelism, sequence
    parallelism. ``data`` (independent replicas) changes nothing per GPU."""
    if parallelism is None:
        return 1
    refused = {"zero": parallelism.zero_stage, "pipeline": parallelism.pipeline,
               "expert": parallelism.expert, "sequence_parallel": parallelism.sequence_parallel}
    plain = {"zero": 0, "pipeline": 1, "expert": 1, "sequence_parallel": False}
    for name, value in refused.items():
        if value != plain[name]:
            raise ScaleplanError(
                f"parallelism.{name}={shown(value)} is not modelled yet for serving (ZeRO/FSDP, "
                "pipeline, expert and sequence parallelism); give Parallelism(tensor=t), and "
                "data=replicas, only")
    t = parallelism.tensor
    if cfg.n_head % t:
        raise ScaleplanError(f"parallelism.tensor={t} does not divide n_head={cfg.n_head}; "
                             "each GPU must get whole attention heads, pick a divisor")
    return t


def kv_heads_per_gpu(cfg: GPTConfig, tensor: int = 1) -> int:
    """Key/value heads one GPU caches under tensor parallelism of degree ``tensor``:
    ``n_kv_head / t``, or 1 (replicated) when t is a multiple of ``n_kv_head``.

    >>> kv_heads_per_gpu(GPTConfig.preset("llama-3-8b"), 4), kv_heads_per_gpu(
    ...     GPTConfig.preset("llama-3-8b"), 16)
    (2, 1)
    """
    k = cfg.n_kv_head
    if k % tensor == 0:
        return k // tensor
    if tensor % k == 0:
        return 1
    raise ScaleplanError(f"parallelism.tensor={tensor} neither divides n_kv_head={k} nor is a "
                         "multiple of it, so the key/value heads cannot be split or replicated "
                         "evenly; pick a divisor or a multiple of n_kv_head")


def layer_token_bytes(cfg: GPTConfig, dtype: str = "bf16", *, mla_cache: MLACache = "latent",
                      tensor: int = 1) -> int:
    """Bytes one attention block caches per token of context, on one GPU.

    >>> layer_token_bytes(GPTConfig.preset("llama-3-8b"))  # 2 x 8 heads x 128 x 2 bytes
    4096
    """
    key = kv_dtype(dtype)
    e = KV_ELEMENT_BYTES[key]
    one_of("mla_cache", mla_cache, ("latent", "expanded"))
    mla = cfg.mla
    if mla is not None:
        if key == "int8":
            raise ScaleplanError("kv_cache='int8' with mla is not modelled yet (LMDeploy's "
                                 "per-head scales have no latent layout); use 'fp8' or 'bf16'")
        if mla_cache == "latent":  # replicated on every tensor-parallel GPU
            return (mla.kv_lora_rank + mla.qk_rope_head_dim) * e
        return cfg.n_head // tensor * (mla.qk_head_dim + mla.v_head_dim) * e
    heads = kv_heads_per_gpu(cfg, tensor)
    per_head = 2 * cfg.head_dim * e  # a key and a value
    if key == "int8":
        per_head += 2 * INT8_PARAM_BYTES  # scale and zero point of the key and of the value
    return heads * per_head


def kv_cache_bytes_per_token(cfg: GPTConfig, dtype: str = "bf16", *,
                             mla_cache: MLACache = "latent",
                             parallelism: Parallelism | None = None) -> int:
    """KV cache bytes per token of context, every block counted, on one GPU: exact while the
    context is no longer than any sliding window (beyond it, windowed blocks stop growing: use
    `kv_cache_bytes`).

    >>> kv_cache_bytes_per_token(GPTConfig.preset("llama-3-8b"))  # Llama 3 / 3.1 8B, bf16
    131072
    >>> kv_cache_bytes_per_token(GPTConfig.preset("deepseek-v3"))  # 61 x (512 + 64) x 2
    70272
    """
    t = serving_tensor_degree(cfg, parallelism)
    return cfg.n_layer * layer_token_bytes(cfg, dtype, mla_cache=mla_cache, tensor=t)


def kv_cache_bytes(cfg: GPTConfig, *, context_len: int, batch_size: int = 1,
                   dtype: str = "bf16", mla_cache: MLACache = "latent",
                   sliding_cache: SlidingCache = "window",
                   parallelism: Parallelism | None = None) -> int:
    """KV cache bytes of ``batch_size`` requests of ``context_len`` tokens each, on one GPU:
    global blocks hold every token, ``sliding_window_layers`` blocks at most ``sliding_window``
    (``sliding_cache="dynamic"``: ``sliding_window - 1``, transformers' dynamic cache between
    steps).

    >>> gemma3 = GPTConfig.preset("gemma-3-4b")  # 5 global + 29 windowed (1,024) blocks
    >>> kv_cache_bytes(gemma3, context_len=8192) == 2 * 4 * 256 * 2 * (5 * 8192 + 29 * 1024)
    True
    """
    context_len = whole("context_len", context_len, example="context_len=8192")
    batch_size = whole("batch_size", batch_size, example="batch_size=8")
    one_of("sliding_cache", sliding_cache, ("window", "dynamic"))
    t = serving_tensor_degree(cfg, parallelism)
    per_layer = layer_token_bytes(cfg, dtype, mla_cache=mla_cache, tensor=t)
    windowed = cfg.sliding_window_layers if cfg.sliding_window else 0
    held = context_len
    if cfg.sliding_window:
        cap = cfg.sliding_window if sliding_cache == "window" else cfg.sliding_window - 1
        held = min(context_len, cap)
    tokens = (cfg.n_layer - windowed) * context_len + windowed * held
    return batch_size * per_layer * tokens

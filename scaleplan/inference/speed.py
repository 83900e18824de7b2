"""How fast a GPU serves a model: time per output token, tokens/s and time to first token.

**Decode** (one new token for each of ``batch_size`` requests per step) is bounded twice; the
step takes the longer of the two:

- by memory bandwidth: every step reads the weights once for the whole batch and every
  request's KV cache (`scaleplan.inference.kv_cache.kv_cache_bytes`). Only the weights a step
  uses are read: a position table and an untied token embedding are looked up row by row (not
  counted), and a mixture of experts reads the routed experts its tokens pick. With routing
  assumed uniform and independent, a layer's batch of B tokens touches on average
  E·(1 - (1 - k/E)^B) of its E experts (k = top_k): k/E of them at B = 1, all of them as B
  grows. Bytes per parameter are the weights' own (quantised formats included), read at
  ``bandwidth_utilization`` of the peak (1.0: the bound, never reached in practice);
- by FLOPs: 2 FLOPs per active matmul weight per token (`scaleplan.compute.flops.matmul_params`)
  plus attention over the context, 2·H·(qk_width + v_width) FLOPs per key per block (a windowed
  block reads at most its window), at ``mfu`` of the GPU's dense peak.

**Prefill** of one prompt of ``prompt_len`` tokens is bounded by FLOPs: 2 FLOPs per matmul weight
per token (the output head only for the last position) plus the causal attention core
(`scaleplan.compute.attention_flops.attention_core`), at ``mfu`` of the dense peak, and by one
read of the weights. Its time is the time to first token of a request that finds the GPU idle.

``mfu`` defaults to `scaleplan.compute.mfu_defaults.default_mfu`: the median of published
training runs on the GPU's class (scaleplan/data/mfu_evidence.md). A prefill is the forward half
of that same dense matmul work, which is the reason to borrow it; serving engines publish no
comparable MFU figures. The compute dtype is fp8 for fp8 weights on a GPU with fp8 tensor
cores (W8A8, vLLM's FP8 path), fp32 for fp32 weights, otherwise bf16 (fp16 where the GPU has no
bf16 tensor cores); int8/int4/nf4 weights are dequantised into 16-bit matmuls.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from scaleplan.checks import float_guard, real, whole
from scaleplan.compute.attention_flops import attention_core
from scaleplan.compute.flops import matmul_params
from scaleplan.compute.hardware import GPUSpec
from scaleplan.compute.hardware import gpu as lookup_gpu
from scaleplan.compute.mfu_defaults import default_mfu
from scaleplan.errors import ScaleplanError, shown
from scaleplan.inference.kv_cache import kv_cache_bytes, serving_tensor_degree
from scaleplan.memory.parallel import Parallelism
from scaleplan.memory.quantized import WeightFormat, quantized_weight_bytes
from scaleplan.model.config import GPTConfig
from scaleplan.model.params import param_terms

__all__ = ["InferenceSpeed", "compute_dtype", "decode_flops", "expected_experts",
           "inference_speed", "prefill_flops", "weight_read_fraction"]

FLOPS_PER_MAC = 2


class InferenceSpeed(BaseModel):
    """Serving speed on one GPU (times in seconds, FLOPs and bytes per step).

    >>> s = inference_speed(GPTConfig.preset("llama-3-8b"), "H100 SXM", batch_size=1,
    ...                     context_len=1024)
    >>> s.bound, s.kv_bytes_per_step == 1024 * 131072  # 1,024 tokens of 128 KiB
    ('memory', True)
    >>> s.memory_time_s == (s.weight_bytes_per_step + s.kv_bytes_per_step) / 3.35e12
    True
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    batch_size: int = Field(description="Requests decoded together.")
    context_len: int = Field(description="Tokens each request attends to during decode.")
    prompt_len: int = Field(description="Tokens of the prompt whose prefill gives the first token.")
    weight_bytes_per_step: float = Field(description="Weight bytes one decode step reads.")
    kv_bytes_per_step: int = Field(description="KV cache bytes one decode step reads.")
    flops_per_step: float = Field(description="FLOPs of one decode step (the whole batch).")
    memory_time_s: float = Field(description="Bytes read / (bandwidth x utilisation).")
    compute_time_s: float = Field(description="FLOPs / (dense peak x mfu).")
    bound: Literal["memory", "compute"] = Field(description="Which bound sets the step time.")
    time_per_output_token_s: float = Field(description="One decode step: the longer bound.")
    tokens_per_s: float = Field(description="Output tokens per second, the whole batch.")
    prefill_flops: float = Field(description="FLOPs of one prompt's prefill.")
    time_to_first_token_s: float = Field(description="Prefill of one prompt on an idle GPU.")
    mfu: float = Field(description="Fraction of the dense peak assumed.")
    compute_dtype: str = Field(description="The dtype whose dense peak is used.")
    peak_flops: float = Field(description="That dense peak, FLOP/s.")
    memory_bandwidth: float = Field(description="The GPU's peak memory bandwidth, bytes/s.")


def compute_dtype(spec: GPUSpec, weights: str) -> str:
    """The matmul dtype of a server whose weights are ``weights`` on ``spec`` (module docs).

    >>> compute_dtype(lookup_gpu("H100 SXM"), "fp8"), compute_dtype(lookup_gpu("T4"), "int4")
    ('fp8', 'fp16')
    """
    key = weights.strip().lower()
    if key == "fp8" and "fp8" in spec.peak:
        return "fp8"
    if key in ("fp32", "float32"):
        return "fp32"
    return "bf16" if spec.has_bf16_tensor_cores else "fp16"


def expected_experts(n_experts: int, top_k: int, tokens: int) -> float:
    """Expected distinct experts that ``tokens`` tokens touch, each picking ``top_k`` of
    ``n_experts`` uniformly and independently: E·(1 - (1 - k/E)^B).

    >>> expected_experts(8, 2, 1), expected_experts(8, 2, 2)  # 2; 8·(1 - 0.75²) = 3.5
    (2.0, 3.5)
    """
    return n_experts * (1 - (1 - top_k / n_experts) ** tokens)


def weight_read_fraction(cfg: GPTConfig, batch_size: int) -> float:
    """The fraction of the model's parameters one decode step of ``batch_size`` tokens reads:
    all but the position table, an untied token embedding and the routed experts no token
    picks (module docstring).

    >>> round(weight_read_fraction(GPTConfig.preset("llama-3-8b"), 1), 4)  # untied wte unread
    0.9346
    """
    pc = param_terms(cfg)
    total = pc["total"]
    unread = pc["position_embedding"] + (pc["token_embedding"] if pc["lm_head"] else 0)
    moe = cfg.moe
    if moe is not None and moe.n_experts > moe.top_k:
        E, k = moe.n_experts, moe.top_k
        routed = (total - pc["active"]) * E / (E - k)  # active holds k/E of the routed experts
        unread += routed * (1 - expected_experts(E, k, batch_size) / E)
    return float((total - unread) / total)


def _attention_widths(cfg: GPTConfig) -> int:
    """qk_width + v_width of one head (MLA: qk_head_dim + v_head_dim, the expanded form)."""
    if cfg.mla is not None:
        return cfg.mla.qk_head_dim + cfg.mla.v_head_dim
    return 2 * cfg.head_dim


def decode_flops(cfg: GPTConfig, *, batch_size: int, context_len: int) -> float:
    """FLOPs of one decode step: per token 2·N (N = active matmul weights) plus, per block,
    2·H·(qk_width + v_width) per key attended (``context_len``, or the window in windowed
    blocks).

    >>> decode_flops(GPTConfig.preset("gpt2"), batch_size=1, context_len=1024) == (
    ...     2 * 123532032 + 2 * 12 * (64 + 64) * 12 * 1024)  # 2N + 4·L·H·Q·T
    True
    """
    windowed = cfg.sliding_window_layers if cfg.sliding_window else 0
    keys = ((cfg.n_layer - windowed) * context_len
            + windowed * min(context_len, cfg.sliding_window or context_len))
    attention = FLOPS_PER_MAC * cfg.n_head * _attention_widths(cfg) * keys
    return float(batch_size * (FLOPS_PER_MAC * matmul_params(cfg) + attention))


def prefill_flops(cfg: GPTConfig, prompt_len: int) -> float:
    """FLOPs of one prompt's prefill: 2 FLOPs per matmul weight per token, the output head only
    for the last position, plus the causal attention core.

    >>> gpt2 = GPTConfig.preset("gpt2")  # 2·(N - head)·T + 2·head + 4·L·H·Q·T²/2
    >>> prefill_flops(gpt2, 1024) == (2 * (123532032 - 768 * 50257) * 1024 + 2 * 768 * 50257
    ...                               + 4 * 12 * 12 * 64 * 1024 * 1024 / 2)
    True
    """
    head = cfg.embed_dim * cfg.vocab_size
    scores, values = attention_core(cfg, prompt_len, causal=True)
    body = FLOPS_PER_MAC * (matmul_params(cfg) - head) * prompt_len + FLOPS_PER_MAC * head
    return float(body + scores + values)


@float_guard  # sizes past float64 fail naming the call, never as an inf or a traceback
def inference_speed(cfg: GPTConfig, gpu: str | GPUSpec, *, batch_size: int, context_len: int,
                    prompt_len: int | None = None, weights: WeightFormat = "bf16",
                    group_size: int | None = None, kv_cache: str = "bf16",
                    parallelism: Parallelism | None = None, mfu: float | None = None,
                    bandwidth_utilization: float = 1.0) -> InferenceSpeed:
    """Decode and prefill speed of ``cfg`` on ``gpu`` (see the module docstring).

    Tensor parallelism over t GPUs divides each GPU's reads and FLOPs by t (communication not
    counted); ``weights``, ``group_size`` and ``kv_cache`` are as `inference_memory` takes them.

    >>> s = inference_speed(GPTConfig.preset("gpt2"), "RTX 4090", batch_size=1, context_len=64)
    >>> s.bound, s.tokens_per_s == 1 / s.time_per_output_token_s
    ('memory', True)
    """
    spec = lookup_gpu(gpu) if isinstance(gpu, str) else gpu
    if not isinstance(spec, GPUSpec):
        raise ScaleplanError(f"gpu={shown(gpu)} must be a GPU name or a GPUSpec")
    batch_size = whole("batch_size", batch_size, example="batch_size=8")
    context_len = whole("context_len", context_len, example="context_len=8192")
    prompt = context_len if prompt_len is None else whole("prompt_len", prompt_len)
    util = real("mfu", default_mfu(spec).mfu if mfu is None else mfu,
                example="mfu=0.4")
    bw = real("bandwidth_utilization", bandwidth_utilization, example="1.0")
    if util > 1 or bw > 1:
        raise ScaleplanError(f"mfu={shown(util)} and bandwidth_utilization={shown(bw)} are "
                             "fractions of a peak: give values in (0, 1]")
    t = serving_tensor_degree(cfg, parallelism)
    w_total = quantized_weight_bytes(cfg, weights, group_size=group_size,
                                     parallelism=parallelism).total
    w_read = w_total * weight_read_fraction(cfg, batch_size)
    kv = kv_cache_bytes(cfg, context_len=context_len, batch_size=batch_size, dtype=kv_cache,
                        parallelism=parallelism)
    dtype = compute_dtype(spec, weights)
    peak = spec.peak_flops(dtype)
    flops = decode_flops(cfg, batch_size=batch_size, context_len=context_len) / t
    memory_time = (w_read + kv) / (spec.memory_bandwidth * bw)
    compute_time = flops / (peak * util)
    step = max(memory_time, compute_time)
    pre = prefill_flops(cfg, prompt) / t
    ttft = max(pre / (peak * util), w_total / (spec.memory_bandwidth * bw))
    return InferenceSpeed(
        batch_size=batch_size, context_len=context_len, prompt_len=prompt,
        weight_bytes_per_step=w_read, kv_bytes_per_step=kv, flops_per_step=flops,
        memory_time_s=memory_time, compute_time_s=compute_time,
        bound="memory" if memory_time >= compute_time else "compute",
        time_per_output_token_s=step, tokens_per_s=batch_size / step, prefill_flops=pre,
        time_to_first_token_s=ttft, mfu=util, compute_dtype=dtype, peak_flops=peak,
        memory_bandwidth=spec.memory_bandwidth)

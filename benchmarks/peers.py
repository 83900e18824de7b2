"""The tools people use today, as predictors of params, FLOPs, saved activations and peak bytes.

Each peer predicts from its own published accounting (formulas are facts; each is cited next to
it). A peer that has no formula for a quantity returns None for it, and `MISSES` lists, for each
peer, the terms of a real training step that its accounting leaves out. llm-analysis is called
through its own Python API when it is installed (``pip install llm-analysis``) and skipped
otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from scaleplan.model.config import GPTConfig

__all__ = ["MISSES", "PEERS", "Prediction", "deepspeed_zero2_gpu_bytes", "llm_analysis",
           "llm_analysis_available", "tm101_activation_bytes", "transformer_math_101",
           "zero_estimator"]

Prediction = dict[str, float | None]
"""Predicted params, flops (forward + backward of one micro-batch), saved and peak bytes."""

# Transformer Math 101 (Anthony, Biderman, Schoelkopf, EleutherAI blog, 2023,
# https://blog.eleuther.ai/transformer-math/), "Training" section: bytes per parameter.
TM101_WEIGHT_BYTES = {"fp32": 4, "16-bit": 2}  # "pure fp32: 4 bytes/param; fp16: 2 bytes/param"
TM101_GRADIENT_BYTES = {"fp32": 4, "16-bit": 2}  # "gradients ... fp32: 4, fp16: 2 bytes/param"
TM101_ADAMW_BYTES = 12  # "vanilla AdamW: fp32 copy 4 + momentum 4 + variance 4 bytes/param"
# DeepSpeed, deepspeed/runtime/zero/stage_1_and_2.py, estimate_zero2_model_states_mem_needs,
# cpu_offload=False: gpu_mem = 4 * total_params + int(16 * total_params / total_gpus).
DS_ZERO2_REPLICATED_BYTES = 4
DS_ZERO2_SHARDED_BYTES = 16

MISSES: dict[str, list[str]] = {
    "transformer_math_101": [
        "logits and the loss's fp32 log-softmax (s b V)", "embedding and final norm",
        "GQA (counts 3 h for q, k, v)", "SwiGLU/GeGLU (4h GELU MLP only)",
        "dropout masks are counted (1 byte each) even with dropout = 0",
        "autocast weight copies", "fp32 master weights vs fp32 parameters (bf16-mixed keeps "
        "fp32 parameters: 4 bytes, not 2)", "flash attention (always counts 5 a s / h)",
        "optimizer temporaries"],
    "deepspeed_zero_estimator": [
        "all activations (model states only)", "logits", "autocast weight copies",
        "optimizer temporaries", "precision (assumes fp16 params + fp32 states)"],
    "llm_analysis": [
        "the loss's fp32 log-softmax and the logits' gradients (counts the s b V logits once, "
        "at 16 bits)", "head_dim != n_embd / n_head (no such field)",
        "attention dropout masks are counted even with dropout = 0",
        "fp32 training (32-true: not supported)", "autocast weight copies",
        "fp32 parameters under bf16-mixed (assumes 16-bit weights with fp32 master copies)",
        "optimizer temporaries", "learned position embedding parameters"],
}


def _precision_kind(precision: str) -> str:
    return "fp32" if precision == "32-true" else "16-bit"


def tm101_activation_bytes(cfg: GPTConfig, *, b: int, s: int, precision: str) -> float:
    """Transformer Math 101, "Activations and Batch Size": s b h L (10 + 24/t + 5 a s / (h t))
    bytes with t = 1 (from Korthikanti et al. 2022, Eq. 1, 16-bit activations). For fp32 the
    16-bit figure is doubled (every activation twice as wide; the post does not cover fp32)."""
    h, a, L = cfg.n_embd, cfg.n_head, cfg.n_layer
    sixteen_bit = s * b * h * L * (34 + 5 * a * s / h)
    return sixteen_bit * (2 if precision == "32-true" else 1)


def transformer_math_101(cfg: GPTConfig, *, b: int, s: int, precision: str, params: int,
                         **_: Any) -> Prediction:
    """C = 6 P D per token trained (forward 2PD + backward 4PD) and memory = weights + AdamW
    (12 bytes/param) + gradients + activations (Transformer Math 101). P is the true
    parameter count (the post takes P as given)."""
    kind = _precision_kind(precision)
    act = tm101_activation_bytes(cfg, b=b, s=s, precision=precision)
    states = params * (TM101_WEIGHT_BYTES[kind] + TM101_GRADIENT_BYTES[kind] + TM101_ADAMW_BYTES)
    return {"params": None, "flops": 6.0 * params * b * s, "saved": act,
            "peak": float(states + act)}


def deepspeed_zero2_gpu_bytes(total_params: int, *, n_gpus: int = 1) -> int:
    """DeepSpeed's ZeRO-2 model-state estimate per GPU without offload
    (``estimate_zero2_model_states_mem_needs``): 4 bytes/param replicated (fp16 params and
    grads) + 16 bytes/param sharded over the GPUs (fp32 master, Adam states, fp32 grads)."""
    return DS_ZERO2_REPLICATED_BYTES * total_params + int(
        DS_ZERO2_SHARDED_BYTES * total_params / n_gpus)


def zero_estimator(cfg: GPTConfig, *, params: int, **_: Any) -> Prediction:
    """DeepSpeed's estimator on one GPU: model states only (no FLOPs, no activations)."""
    return {"params": None, "flops": None, "saved": None,
            "peak": float(deepspeed_zero2_gpu_bytes(params))}


def llm_analysis_available() -> bool:
    """Whether llm-analysis imports here."""
    import warnings

    try:
        with warnings.catch_warnings():  # fire 0.5 imports the deprecated `pipes` module
            warnings.simplefilter("ignore", DeprecationWarning)
            import llm_analysis.analysis  # noqa: F401
    except ImportError:
        return False
    return True


def _llm_analysis_model(cfg: GPTConfig, memory_gb: float = 1e6) -> Any:
    from llm_analysis.analysis import LLMAnalysis
    from llm_analysis.config import DtypeConfig, GPUConfig, ModelConfig, ParallelismConfig
    from llm_analysis.logger import logger

    logger.setLevel(logging.ERROR)
    model = ModelConfig(name="cfg", num_layers=cfg.n_layer, n_head=cfg.n_head,
                        hidden_dim=cfg.n_embd, vocab_size=cfg.vocab_size,
                        max_seq_len=cfg.block_size, num_key_value_heads=cfg.n_kv_head,
                        ffn_embed_dim=cfg.mlp_hidden, expansion_ratio=cfg.mlp_hidden / cfg.n_embd)
    dtype = DtypeConfig()  # w16a16e16: 16-bit weights, activations and embeddings
    device = GPUConfig(name="any", mem_per_GPU_in_GB=memory_gb, hbm_bandwidth_in_GB_per_sec=1000,
                       intra_node_bandwidth_in_GB_per_sec=100,
                       intra_node_min_message_latency=8e-6, peak_fp16_TFLOPS=100)
    return LLMAnalysis(model, device, dtype, ParallelismConfig(), flops_efficiency=0.5)


def llm_analysis(cfg: GPTConfig, *, b: int, s: int, precision: str, attention: str,
                 **_: Any) -> Prediction:
    """llm-analysis 0.2.x ``LLMAnalysis.training`` at micro-batch b, sequence length s. It has
    no fp32 mode (weights and activations must be 4, 8 or 16 bits): None for 32-true."""
    if precision == "32-true":
        return {"params": None, "flops": None, "saved": None, "peak": None}
    analysis = _llm_analysis_model(cfg)
    out = analysis.training(
        batch_size_per_gpu=b, gradient_accumulation_steps=1, seq_len=s,
        flash_attn=attention == "flash", softmax_dropout=cfg.dropout > 0 and attention != "flash",
        mlp_gated_linear_units=cfg.gated_mlp,
        master_weights_dtype_bytes=2 if precision == "bf16-true" else 4)
    return {"params": float(out["num_params_total"]),
            "flops": float(out["num_flops_total_per_micro_batch"]),
            "saved": float(out["activation_memory_per_gpu"]),
            "peak": float(out["(weight+op_state+grad+act)_memory_per_gpu"])}


PEERS: dict[str, Callable[..., Prediction]] = {
    "transformer_math_101": transformer_math_101,
    "deepspeed_zero_estimator": zero_estimator,
    "llm_analysis": llm_analysis,
}

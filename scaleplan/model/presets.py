"""Published model configurations, by name (read through `GPTConfig.preset`).

Each entry gives only what differs from `GPTConfig`'s defaults, with the source of the numbers:
the model's Hugging Face ``config.json`` or the nanoGPT file that defines it. Llama-family models
use ``block_size`` for ``max_position_embeddings``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PRESETS"]

_LLAMA: dict[str, Any] = {
    "mlp": "swiglu",
    "norm": "rmsnorm",
    "position": "rope",
    "bias": False,
    "tie_embeddings": False,
}

PRESETS: dict[str, dict[str, Any]] = {
    # openai-community/gpt2*/config.json; nanoGPT model.py from_pretrained (vocab 50257, bias).
    "gpt2": {"n_layer": 12, "n_head": 12, "n_embd": 768, "vocab_size": 50257},
    "gpt2-medium": {"n_layer": 24, "n_head": 16, "n_embd": 1024, "vocab_size": 50257},
    "gpt2-large": {"n_layer": 36, "n_head": 20, "n_embd": 1280, "vocab_size": 50257},
    "gpt2-xl": {"n_layer": 48, "n_head": 25, "n_embd": 1600, "vocab_size": 50257},
    # nanoGPT config/train_shakespeare_char.py (vocab of the character data set: 65).
    "nanogpt-shakespeare-char": {
        "n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256, "vocab_size": 65,
        "bias": False, "dropout": 0.2,
    },
    # meta-llama/Llama-2-7b-hf, Llama-2-13b-hf config.json.
    "llama-2-7b": {
        **_LLAMA, "n_layer": 32, "n_head": 32, "n_embd": 4096, "mlp_hidden": 11008,
        "vocab_size": 32000, "block_size": 4096,
    },
    "llama-2-13b": {
        **_LLAMA, "n_layer": 40, "n_head": 40, "n_embd": 5120, "mlp_hidden": 13824,
        "vocab_size": 32000, "block_size": 4096,
    },
    # meta-llama/Meta-Llama-3-8B config.json.
    "llama-3-8b": {
        **_LLAMA, "n_layer": 32, "n_head": 32, "n_kv_head": 8, "n_embd": 4096,
        "mlp_hidden": 14336, "vocab_size": 128256, "block_size": 8192,
    },
    # mistralai/Mistral-7B-v0.1 config.json.
    "mistral-7b": {
        **_LLAMA, "n_layer": 32, "n_head": 32, "n_kv_head": 8, "n_embd": 4096,
        "mlp_hidden": 14336, "vocab_size": 32000, "block_size": 32768,
    },
    # TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T config.json.
    "tinyllama-1.1b": {
        **_LLAMA, "n_layer": 22, "n_head": 32, "n_kv_head": 4, "n_embd": 2048,
        "mlp_hidden": 5632, "vocab_size": 32000, "block_size": 2048,
    },
    # HuggingFaceTB/SmolLM2-135M config.json.
    "smollm2-135m": {
        **_LLAMA, "n_layer": 30, "n_head": 9, "n_kv_head": 3, "n_embd": 576,
        "mlp_hidden": 1536, "vocab_size": 49152, "block_size": 8192, "tie_embeddings": True,
    },
    # Qwen/Qwen2-0.5B config.json: biases on q, k, v only.
    "qwen2-0.5b": {
        **_LLAMA, "n_layer": 24, "n_head": 14, "n_kv_head": 2, "n_embd": 896,
        "mlp_hidden": 4864, "vocab_size": 151936, "block_size": 32768, "tie_embeddings": True,
        "qkv_bias": True,
    },
    # google/gemma-2b config.json: multi-query, head_dim 256, GeGLU, tied.
    "gemma-2b": {
        **_LLAMA, "mlp": "geglu", "n_layer": 18, "n_head": 8, "n_kv_head": 1, "n_embd": 2048,
        "head_dim": 256, "mlp_hidden": 16384, "vocab_size": 256000, "block_size": 8192,
        "tie_embeddings": True,
    },
}

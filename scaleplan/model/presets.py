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
    # mistralai/Mistral-7B-v0.1 config.json: a 4096-token sliding window in every block.
    "mistral-7b": {
        **_LLAMA, "n_layer": 32, "n_head": 32, "n_kv_head": 8, "n_embd": 4096,
        "mlp_hidden": 14336, "vocab_size": 32000, "block_size": 32768, "sliding_window": 4096,
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
    # mistralai/Mixtral-8x7B-v0.1 config.json: every block a mixture of 8 experts, top 2.
    "mixtral-8x7b": {
        **_LLAMA, "n_layer": 32, "n_head": 32, "n_kv_head": 8, "n_embd": 4096,
        "mlp_hidden": 14336, "vocab_size": 32000, "block_size": 32768,
        "moe": {"n_experts": 8, "top_k": 2, "expert_hidden": 14336},
    },
    # deepseek-ai/DeepSeek-V3 config.json: MLA, 256 routed experts (top 8) and one shared
    # expert of 2048, the first 3 blocks dense (18432). transformers builds no MTP module.
    "deepseek-v3": {
        **_LLAMA, "n_layer": 61, "n_head": 128, "n_embd": 7168, "mlp_hidden": 18432,
        "vocab_size": 129280, "block_size": 163840,
        "mla": {"q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
                "qk_rope_head_dim": 64, "v_head_dim": 128},
        "moe": {"n_experts": 256, "top_k": 8, "expert_hidden": 2048, "n_shared_experts": 1,
                "n_dense_layers": 3},
    },
    # deepseek-ai/DeepSeek-V2-Lite config.json: MLA without a query latent, 64 experts (top 6)
    # of 1408 and 2 shared, the first block dense (10944).
    "deepseek-v2-lite": {
        **_LLAMA, "n_layer": 27, "n_head": 16, "n_embd": 2048, "mlp_hidden": 10944,
        "vocab_size": 102400, "block_size": 163840,
        "mla": {"q_lora_rank": None, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
                "qk_rope_head_dim": 64, "v_head_dim": 128},
        "moe": {"n_experts": 64, "top_k": 6, "expert_hidden": 1408, "n_shared_experts": 2,
                "n_dense_layers": 1},
    },
    # Qwen/Qwen3-8B config.json: an RMSNorm of head_dim on queries and keys.
    "qwen3-8b": {
        **_LLAMA, "n_layer": 36, "n_head": 32, "n_kv_head": 8, "n_embd": 4096, "head_dim": 128,
        "mlp_hidden": 12288, "vocab_size": 151936, "block_size": 40960, "qk_norm": "head",
    },
    # Qwen/Qwen3-30B-A3B config.json: 128 experts of 768, top 8, in every block.
    "qwen3-30b-a3b": {
        **_LLAMA, "n_layer": 48, "n_head": 32, "n_kv_head": 4, "n_embd": 2048, "head_dim": 128,
        "mlp_hidden": 6144, "vocab_size": 151936, "block_size": 40960, "qk_norm": "head",
        "moe": {"n_experts": 128, "top_k": 8, "expert_hidden": 768},
    },
    # google/gemma-2-9b config.json: sandwich norms, soft-capping 50/30, a 4096-token window
    # in every other block (21 of 42).
    "gemma-2-9b": {
        **_LLAMA, "mlp": "geglu", "n_layer": 42, "n_head": 16, "n_kv_head": 8, "n_embd": 3584,
        "head_dim": 256, "mlp_hidden": 14336, "vocab_size": 256000, "block_size": 8192,
        "tie_embeddings": True, "norm_position": "sandwich", "attn_softcap": 50.0,
        "final_softcap": 30.0, "sliding_window": 4096, "sliding_window_layers": 21,
    },
    # google/gemma-3-4b-pt config.json, its text_config (the rest: Gemma3TextConfig's
    # defaults): sandwich norms and QK-norm, a 1024-token window in 5 of every 6 blocks.
    "gemma-3-4b": {
        **_LLAMA, "mlp": "geglu", "n_layer": 34, "n_head": 8, "n_kv_head": 4, "n_embd": 2560,
        "head_dim": 256, "mlp_hidden": 10240, "vocab_size": 262208, "block_size": 131072,
        "tie_embeddings": True, "norm_position": "sandwich", "qk_norm": "head",
        "sliding_window": 1024, "sliding_window_layers": 29,
    },
    # allenai/OLMo-2-1124-7B config.json: norms on each sublayer's output, QK-norm over all
    # heads.
    "olmo-2-7b": {
        **_LLAMA, "n_layer": 32, "n_head": 32, "n_embd": 4096, "mlp_hidden": 11008,
        "vocab_size": 100352, "block_size": 4096, "qk_norm": "full", "norm_position": "post",
    },
    # microsoft/Phi-3-mini-4k-instruct config.json (fused qkv_proj and gate_up_proj: the same
    # weights as separate ones).
    "phi-3-mini": {
        **_LLAMA, "n_layer": 32, "n_head": 32, "n_embd": 3072, "mlp_hidden": 8192,
        "vocab_size": 32064, "block_size": 4096, "sliding_window": 2047,
    },
    # EleutherAI/pythia-1.4b config.json: GPT-NeoX, parallel attention and MLP with a norm
    # each, rotary on a quarter of each head.
    "pythia-1.4b": {
        "n_layer": 24, "n_head": 16, "n_embd": 2048, "mlp_hidden": 8192, "vocab_size": 50304,
        "block_size": 2048, "position": "rope", "rotary_fraction": 0.25,
        "parallel": "separate_norms", "tie_embeddings": False,
    },
    # tiiuae/falcon-7b config.json: multi-query (71 heads of 64, one k/v head), one LayerNorm
    # feeding attention and MLP, no linear biases, rotary.
    "falcon-7b": {
        "n_layer": 32, "n_head": 71, "n_kv_head": 1, "n_embd": 4544, "vocab_size": 65024,
        "block_size": 2048, "position": "rope", "bias": False, "norm_bias": True,
        "parallel": "shared_norm",
    },
    # bigscience/bloom-560m config.json: a LayerNorm after the embedding, ALiBi (block_size:
    # its 2048-token training length; ALiBi has no table).
    "bloom-560m": {
        "n_layer": 24, "n_head": 16, "n_embd": 1024, "vocab_size": 250880, "block_size": 2048,
        "position": "alibi", "embedding_norm": True,
    },
    # facebook/opt-1.3b config.json: ReLU, learned positions with OPT's 2 extra rows.
    "opt-1.3b": {
        "n_layer": 24, "n_head": 32, "n_embd": 2048, "mlp_hidden": 8192, "vocab_size": 50272,
        "block_size": 2048, "mlp": "relu", "position_offset": 2,
    },
    # EleutherAI/gpt-j-6b config.json: parallel blocks with one LayerNorm, rotary on 64 of
    # each head's 256, no attention biases, an untied head with a bias.
    "gpt-j-6b": {
        "n_layer": 28, "n_head": 16, "n_embd": 4096, "vocab_size": 50400, "block_size": 2048,
        "position": "rope", "rotary_fraction": 0.25, "qkv_bias": False, "attn_out_bias": False,
        "tie_embeddings": False, "lm_head_bias": True, "parallel": "shared_norm",
    },
    # microsoft/phi-2 config.json: parallel blocks with one LayerNorm, rotary on 40%, biases
    # everywhere including the untied head.
    "phi-2": {
        "n_layer": 32, "n_head": 32, "n_embd": 2560, "mlp_hidden": 10240, "vocab_size": 51200,
        "block_size": 2048, "position": "rope", "rotary_fraction": 0.4, "tie_embeddings": False,
        "lm_head_bias": True, "parallel": "shared_norm",
    },
    # bigcode/starcoder2-3b config.json: GQA (2 k/v heads), biases, GELU MLP, a 4096 window.
    "starcoder2-3b": {
        "n_layer": 30, "n_head": 24, "n_kv_head": 2, "n_embd": 3072, "mlp_hidden": 12288,
        "vocab_size": 49152, "block_size": 16384, "position": "rope", "sliding_window": 4096,
    },
    # mosaicml/mpt-7b config.json: ALiBi, no biases (LayerNorms without bias).
    "mpt-7b": {
        "n_layer": 32, "n_head": 32, "n_embd": 4096, "vocab_size": 50432, "block_size": 2048,
        "position": "alibi", "bias": False,
    },
    # stabilityai/stablelm-2-1_6b config.json: LayerNorms with bias, q/k/v biases, rotary on a
    # quarter of each head.
    "stablelm-2-1.6b": {
        **_LLAMA, "norm": "layernorm", "norm_bias": True, "qkv_bias": True, "n_layer": 24,
        "n_head": 32, "n_embd": 2048, "mlp_hidden": 5632, "vocab_size": 100352,
        "block_size": 4096, "rotary_fraction": 0.25,
    },
    # ibm-granite/granite-3.0-8b-base config.json: Llama's layout (its multipliers add no
    # parameters), tied.
    "granite-3-8b": {
        **_LLAMA, "n_layer": 40, "n_head": 32, "n_kv_head": 8, "n_embd": 4096,
        "mlp_hidden": 12800, "vocab_size": 49155, "block_size": 4096, "tie_embeddings": True,
    },
}

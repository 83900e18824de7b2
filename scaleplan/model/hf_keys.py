"""How `scaleplan.model.loaders.from_hf` reads a ``config.json``: the keys as transformers 5.25
reads them, for each ``model_type`` (its config class's defaults and ``attribute_map`` aliases),
and the checks on their values.

`HFConfig` wraps one config.json: ``c["hidden_size"]`` is the file's value, or the one its alias
gave (transformers lets the alias win: a gpt2 config with ``hidden_size`` is that wide whatever
``n_embd`` says), or the config class's default. `HFConfig.size`, `HFConfig.flag` and friends check
a value before scaleplan computes with it, and name the key when it is wrong.
"""

from __future__ import annotations

from typing import Any

from scaleplan.errors import ScaleplanError, shown

__all__ = ["ALIASES", "DEFAULTS", "HFConfig", "UnsupportedKeyError", "UnsupportedModelTypeError"]


class UnsupportedKeyError(ScaleplanError):
    """A config.json key whose value changes the model in a way scaleplan does not count."""


class UnsupportedModelTypeError(ScaleplanError, LookupError):
    """A ``model_type`` that `scaleplan.model.loaders.from_hf` does not read (yet)."""


_LLAMA = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
          "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": None,
          "head_dim": None, "max_position_embeddings": 2048, "tie_word_embeddings": False,
          "attention_bias": False, "mlp_bias": False}
_MISTRAL = {**_LLAMA, "intermediate_size": 14336, "num_key_value_heads": 8,
            "max_position_embeddings": 131072, "sliding_window": 4096}
_QWEN2 = {**_LLAMA, "vocab_size": 151936, "intermediate_size": 22016, "num_key_value_heads": 32,
          "max_position_embeddings": 32768, "use_sliding_window": False, "sliding_window": 4096,
          "max_window_layers": 28, "layer_types": None}
_GEMMA = {**_LLAMA, "vocab_size": 256000, "hidden_size": 3072, "intermediate_size": 24576,
          "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 16,
          "head_dim": 256, "max_position_embeddings": 8192, "tie_word_embeddings": True}
_GEMMA2 = {**_GEMMA, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
           "num_attention_heads": 8, "num_key_value_heads": 4, "sliding_window": 4096,
           "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "layer_types": None}
_MLA = {"q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64, "v_head_dim": 128}
_GPT2_ALIASES = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer",
                 "num_attention_heads": "n_head", "max_position_embeddings": "n_positions"}

# Per model_type: the defaults of transformers 5.25's config class for the keys scaleplan reads
# (what an absent key means).
DEFAULTS: dict[str, dict[str, Any]] = {
    "gpt2": {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12,
             "n_head": 12, "n_inner": None, "tie_word_embeddings": True,
             "add_cross_attention": False},
    "llama": _LLAMA,
    "granite": _LLAMA,
    "mistral": _MISTRAL,
    "mixtral": {**_MISTRAL, "sliding_window": None, "num_local_experts": 8,
                "num_experts_per_tok": 2},
    "qwen2": _QWEN2,
    "qwen3": {**_QWEN2, "head_dim": 128},
    "qwen3_moe": {**_QWEN2, "hidden_size": 2048, "intermediate_size": 6144,
                  "num_hidden_layers": 24, "num_key_value_heads": 4, "num_local_experts": 128,
                  "num_experts_per_tok": 8, "moe_intermediate_size": 768,
                  "decoder_sparse_step": 1, "mlp_only_layers": None},
    "gemma": _GEMMA,
    "gemma2": _GEMMA2,
    "gemma3_text": {**_GEMMA2, "vocab_size": 262208, "max_position_embeddings": 131072,
                    "attn_logit_softcapping": None, "final_logit_softcapping": None,
                    "sliding_window_pattern": 6, "use_bidirectional_attention": False},
    "phi3": {**_LLAMA, "vocab_size": 32064, "hidden_size": 3072, "intermediate_size": 8192,
             "max_position_embeddings": 4096, "sliding_window": None},
    "olmo": {**_LLAMA, "vocab_size": 50304},
    "olmo2": {**_LLAMA, "vocab_size": 50304},
    "stablelm": {**_LLAMA, "vocab_size": 50304, "hidden_size": 2560, "intermediate_size": 6912,
                 "num_key_value_heads": 32, "max_position_embeddings": 4096,
                 "use_qkv_bias": False, "qk_layernorm": False, "use_parallel_residual": False},
    "starcoder2": {**_LLAMA, "vocab_size": 49152, "hidden_size": 3072,
                   "intermediate_size": 12288, "num_hidden_layers": 30,
                   "num_attention_heads": 24, "num_key_value_heads": 2,
                   "max_position_embeddings": 4096, "tie_word_embeddings": True,
                   "use_bias": True, "sliding_window": None},
    "gpt_neox": {"vocab_size": 50432, "hidden_size": 6144, "intermediate_size": 24576,
                 "num_hidden_layers": 44, "num_attention_heads": 64,
                 "max_position_embeddings": 2048, "tie_word_embeddings": False,
                 "attention_bias": True, "use_parallel_residual": True},
    "opt": {"vocab_size": 50272, "hidden_size": 768, "num_hidden_layers": 12,
            "num_attention_heads": 12, "max_position_embeddings": 2048,
            "tie_word_embeddings": True, "ffn_dim": 3072, "word_embed_proj_dim": None,
            "do_layer_norm_before": True, "enable_bias": True,
            "layer_norm_elementwise_affine": True, "_remove_final_layer_norm": False},
    "bloom": {"vocab_size": 250880, "hidden_size": 64, "n_layer": 2, "n_head": 8,
              "tie_word_embeddings": True},
    "falcon": {"vocab_size": 65024, "hidden_size": 4544, "num_hidden_layers": 32,
               "num_attention_heads": 71, "max_position_embeddings": 2048,
               "tie_word_embeddings": True, "new_decoder_architecture": False,
               "multi_query": True, "num_kv_heads": None, "parallel_attn": True,
               "num_ln_in_parallel_attn": None, "bias": False, "ffn_hidden_size": None,
               "alibi": False},
    "phi": {**_LLAMA, "vocab_size": 51200, "hidden_size": 2048, "intermediate_size": 8192,
            "num_hidden_layers": 24, "qk_layernorm": False},
    "gptj": {"vocab_size": 50400, "n_positions": 2048, "n_embd": 4096, "n_layer": 28,
             "n_head": 16, "rotary_dim": 64, "n_inner": None, "tie_word_embeddings": False},
    "mpt": {"d_model": 2048, "n_heads": 16, "n_layers": 24, "expansion_ratio": 4,
            "max_seq_len": 2048, "vocab_size": 50368, "no_bias": True,
            "tie_word_embeddings": True, "attn_config": None,
            "norm_type": "low_precision_layernorm"},
    "deepseek_v2": {**_LLAMA, "vocab_size": 102400, "n_routed_experts": 64,
                    "num_experts_per_tok": None, "moe_intermediate_size": 1407,
                    "n_shared_experts": 2, "first_k_dense_replace": 0, **_MLA},
    "deepseek_v3": {**_LLAMA, "vocab_size": 129280, "hidden_size": 7168,
                    "intermediate_size": 18432, "num_hidden_layers": 61,
                    "num_attention_heads": 128, "max_position_embeddings": 4096,
                    "n_routed_experts": 256, "num_experts_per_tok": 8,
                    "moe_intermediate_size": 2048, "n_shared_experts": 1,
                    "first_k_dense_replace": 3, **_MLA},
}

# Per model_type: transformers' attribute_map (alias -> the key it sets), plus the backward-
# compatible spellings its config classes still accept (bloom's and falcon's n_embed).
ALIASES: dict[str, dict[str, str]] = {
    "gpt2": _GPT2_ALIASES,
    "gptj": _GPT2_ALIASES,
    "mpt": {"hidden_size": "d_model", "num_hidden_layers": "n_layers",
            "num_attention_heads": "n_heads"},
    "bloom": {"num_hidden_layers": "n_layer", "num_attention_heads": "n_head",
              "n_embed": "hidden_size"},
    "falcon": {"n_embed": "hidden_size"},
    "mixtral": {"num_experts": "num_local_experts"},
    "qwen3_moe": {"num_experts": "num_local_experts"},
    "deepseek_v2": {"num_experts": "n_routed_experts"},
    "deepseek_v3": {"num_local_experts": "n_routed_experts"},
}


class HFConfig:
    """One config.json as transformers reads it for ``model_type``: aliases applied (the alias
    wins, as in transformers), absent keys at the config class's defaults.

    >>> c = HFConfig({"model_type": "gpt2", "hidden_size": 1024}, "gpt2")
    >>> c["n_embd"], c["n_layer"], c.given("n_embd")
    (1024, 12, True)
    """

    def __init__(self, config: dict[str, Any], model_type: str) -> None:
        self.model_type = model_type
        aliases = ALIASES.get(model_type, {})
        self.values: dict[str, Any] = dict(DEFAULTS[model_type])
        self.spelled: dict[str, str] = {}  # key -> how the file spells it
        for key, value in config.items():
            if key not in aliases:
                self.values[key] = value
                self.spelled[key] = key
        for key, value in config.items():
            if key in aliases:
                self.values[aliases[key]] = value
                self.spelled[aliases[key]] = key

    def __getitem__(self, key: str) -> Any:
        return self.values.get(key)

    def given(self, key: str) -> bool:
        """True when the file sets ``key`` (or an alias of it)."""
        return key in self.spelled

    def name(self, key: str) -> str:
        """``key`` as the file spells it (its alias when the alias set it)."""
        return self.spelled.get(key, key)

    def fail(self, key: str, why: str) -> ScaleplanError:
        """An error naming ``key`` and its value."""
        return ScaleplanError(f"{self.name(key)} = {shown(self[key])}: {why}")

    def size(self, key: str, *, minimum: int = 1) -> int:
        """``key``'s value, checked to be an int of at least ``minimum``."""
        value = self[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(key, f"must be an int >= {minimum}")
        return value

    def optional_size(self, key: str) -> int | None:
        """``key``'s value: None, or an int >= 1."""
        return None if self[key] is None else self.size(key)

    def flag(self, key: str) -> bool:
        """``key``'s value, checked to be true or false."""
        value = self[key]
        if not isinstance(value, bool):
            raise self.fail(key, "must be true or false")
        return value

    def indices(self, key: str) -> list[int]:
        """``key``'s value: a list of ints (None: empty)."""
        value = self[key]
        if value is None:
            return []
        if not isinstance(value, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise self.fail(key, "must be a list of layer indices")
        return list(value)

    def refuse(self, key: str, value: Any, why: str) -> None:
        """Raise `UnsupportedKeyError` when ``key`` is ``value``: its model is not one scaleplan
        counts (``why`` says what it builds and what to do)."""
        if self[key] == value and type(self[key]) is type(value):
            raise UnsupportedKeyError(f"{self.name(key)} = {shown(self[key])}: {why}")

    def unless(self, key: str, expected: Any, why: str) -> None:
        """Raise `UnsupportedKeyError` unless ``key`` is ``expected``."""
        if self[key] != expected:
            raise UnsupportedKeyError(f"{self.name(key)} = {shown(self[key])}: {why}")

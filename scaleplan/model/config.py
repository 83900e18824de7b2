"""Frozen descriptions of a GPT model (`GPTConfig`) and of its training run (`TrainingConfig`).

`GPTConfig` speaks nanoGPT's names (``n_layer``, ``n_head``, ``n_embd``, ``block_size``,
``vocab_size``, ``bias``, ``dropout``) and adds the few options that make Llama-family models
first-class (grouped-query attention, SwiGLU, RMSNorm, rotary positions, untied heads, per-family
bias flags). Derived fields (``n_kv_head``, ``head_dim``, ``mlp_hidden`` and the bias flags) are
filled in from the others when omitted, and re-derived by `GPTConfig.replace`. The JSON form
(``model_dump_json``) leaves out the derived fields that were not given, so a config read back
from JSON still derives them; ``model_dump()`` shows every field.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from scaleplan.checks import canonical, plain_numbers
from scaleplan.errors import UnknownNameError, shown
from scaleplan.model.architecture import (
    MLA,
    MoE,
    NormPosition,
    ParallelKind,
    QKNormKind,
    check_architecture,
    derive_architecture,
)

__all__ = [
    "PRECISIONS",
    "PRECISION_ALIASES",
    "GPTConfig",
    "MLPKind",
    "NormKind",
    "PositionKind",
    "Precision",
    "normalize_precision",
]

MLPKind = Literal["gelu", "swiglu", "geglu", "relu"]
NormKind = Literal["layernorm", "rmsnorm"]
PositionKind = Literal["learned", "rope", "alibi", "none"]

Precision = Literal["32-true", "bf16-mixed", "16-mixed", "bf16-true", "bf16-fp32-master"]
"""Training precisions, named as PyTorch Lightning names them, plus Megatron's layout.

- ``"32-true"``: fp32 parameters, gradients and activations.
- ``"bf16-mixed"`` / ``"16-mixed"``: fp32 parameters and gradients, matmuls under
  ``torch.autocast`` in bf16 / fp16 (nanoGPT's default).
- ``"bf16-true"``: bf16 parameters, gradients and optimizer states.
- ``"bf16-fp32-master"``: bf16 parameters with fp32 master weights and fp32 gradients
  (Megatron-LM's mixed precision: 18 bytes per parameter with AdamW).
"""

PRECISIONS: tuple[str, ...] = get_args(Precision)

# Other spellings people use for the same precisions (nanoGPT's ``dtype``, torch dtype names).
PRECISION_ALIASES: dict[str, str] = {
    "fp32": "32-true",
    "float32": "32-true",
    "32": "32-true",
    "amp-bf16": "bf16-mixed",
    "bfloat16": "bf16-mixed",  # nanoGPT's dtype='bfloat16' means autocast over fp32 params
    "amp-fp16": "16-mixed",
    "float16": "16-mixed",  # nanoGPT's dtype='float16'
    "fp16-mixed": "16-mixed",
    "bf16": "bf16-true",
    "megatron-bf16": "bf16-fp32-master",
}


def normalize_precision(value: str) -> Precision:
    """Return the canonical precision name for ``value`` (e.g. ``"amp-bf16"`` -> ``"bf16-mixed"``).

    >>> normalize_precision("bfloat16")
    'bf16-mixed'
    """
    return canonical("precision", value, PRECISIONS, PRECISION_ALIASES)  # type: ignore[return-value]


# Llama's feed-forward width rule (facebookresearch/llama model.py): 2/3 of 4*d, rounded up to a
# multiple of 256. Llama-2-7B: d=4096 -> 11008.
_SWIGLU_MULTIPLE_OF = 256


def _default_gated_hidden(n_embd: int) -> int:
    # Integer arithmetic: Llama's int(2 * (4 * d) / 3) is floor(8d/3) for every d a float holds
    # exactly, and this also works for d past 1e308 (the float division overflowed, issue 20).
    hidden = 8 * n_embd // 3
    return _SWIGLU_MULTIPLE_OF * -(-hidden // _SWIGLU_MULTIPLE_OF)


_DERIVED = ("n_kv_head", "head_dim", "mlp_hidden", "qkv_bias", "attn_out_bias", "mlp_bias",
            "norm_bias", "embed_dim", "sliding_window_layers")


class GPTConfig(BaseModel):
    """A decoder-only transformer, described by nanoGPT's fields plus Llama-family options.

    Defaults are nanoGPT's ``model.GPTConfig`` (GPT-2 small, vocab padded to 50304).

    Examples:
        >>> GPTConfig(n_layer=12, n_head=12, n_embd=384, bias=False, dropout=0.1).n_embd
        384
        >>> GPTConfig.preset("llama-3-8b").n_kv_head
        8
        >>> GPTConfig.preset("gpt2").replace(n_embd=1536, n_head=24).head_dim
        64
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    n_layer: PositiveInt = Field(12, description="Number of transformer blocks.")
    n_head: PositiveInt = Field(12, description="Number of query heads.")
    n_embd: PositiveInt = Field(768, description="Model (residual stream) width d.")
    block_size: PositiveInt = Field(1024, description="Longest sequence the model accepts.")
    vocab_size: PositiveInt = Field(50304, description="Rows of the token embedding.")
    bias: bool = Field(
        True,
        description="nanoGPT's switch: biases in every linear layer and norm. The per-part "
        "flags below default to it.",
    )
    dropout: float = Field(
        0.0, ge=0.0, lt=1.0, allow_inf_nan=False, description="Dropout probability, 0 <= p < 1.")
    mlp: MLPKind = Field(
        "gelu", description="'gelu' or 'relu' (2 matrices, OPT's is 'relu') or a gated "
        "'swiglu'/'geglu' (3 matrices).")
    norm: NormKind = Field("layernorm", description="'layernorm' or 'rmsnorm' (no bias).")
    position: PositionKind = Field(
        "learned", description="'learned' (a block_size x n_embd table), 'rope', 'alibi' (a "
        "fixed bias on the scores: BLOOM, MPT) or 'none'.")
    tie_embeddings: bool = Field(True, description="lm_head shares the token embedding.")

    # Architectures beyond GPT-2 and Llama; see scaleplan.model.architecture for each.
    qk_norm: QKNormKind = Field(
        "none", description="Norm on queries and keys: 'head' (one head_dim norm, Qwen3), "
        "'per_head' (one per head, StableLM), 'full' (over all heads, OLMo 2) or 'none'.")
    norm_position: NormPosition = Field(
        "pre", description="'pre' (before each sublayer), 'post' (on its output, OLMo 2) or "
        "'sandwich' (both, Gemma 2).")
    parallel: ParallelKind = Field(
        "none", description="Attention and MLP side by side on one input (GPT-J, GPT-NeoX): "
        "'shared_norm', 'separate_norms' or 'none'.")
    norm_affine: bool = Field(True, description="False: norms without scale or bias (OLMo).")
    final_norm: bool = Field(True, description="A norm after the last block.")
    embedding_norm: bool = Field(False, description="A norm after the token embedding (BLOOM).")
    lm_head_bias: bool = Field(False, description="A bias on the output head (GPT-J, Phi).")
    position_offset: NonNegativeInt = Field(
        0, description="Extra rows of the learned position table (OPT: 2).")
    rotary_fraction: float = Field(
        1.0, gt=0.0, le=1.0, allow_inf_nan=False,
        description="Fraction of each head's width that rotary positions rotate (GPT-NeoX 0.25).")
    sliding_window: PositiveInt | None = Field(
        None, description="Tokens a query attends to in sliding-window blocks (Mistral 4096).")
    attn_softcap: float | None = Field(
        None, gt=0.0, allow_inf_nan=False, description="c in c*tanh(scores/c) (Gemma 2: 50).")
    final_softcap: float | None = Field(
        None, gt=0.0, allow_inf_nan=False, description="c in c*tanh(logits/c) (Gemma 2: 30).")
    mla: MLA | None = Field(None, description="Multi-head latent attention (DeepSeek-V2/V3).")
    moe: MoE | None = Field(None, description="Mixture-of-experts MLPs (Mixtral, DeepSeek).")

    # Derived when omitted; declared as plain ints for type checkers, Optional for pydantic.
    if TYPE_CHECKING:  # optional in __init__, always resolved after validation
        n_kv_head: int = cast(int, None)
        head_dim: int = cast(int, None)
        mlp_hidden: int = cast(int, None)
        qkv_bias: bool = cast(bool, None)
        attn_out_bias: bool = cast(bool, None)
        mlp_bias: bool = cast(bool, None)
        norm_bias: bool = cast(bool, None)
        embed_dim: int = cast(int, None)
        sliding_window_layers: int = cast(int, None)
    else:
        n_kv_head: PositiveInt | None = Field(
            None, description="Key/value heads (GQA/MQA). Default: n_head (multi-head)."
        )
        head_dim: PositiveInt | None = Field(
            None, description="Width of one head. Default: n_embd // n_head."
        )
        mlp_hidden: PositiveInt | None = Field(
            None,
            description="MLP hidden width. Default: 4*n_embd for gelu; for gated MLPs Llama's "
            "rule, 2/3 of 4*n_embd rounded up to a multiple of 256.",
        )
        qkv_bias: bool | None = Field(None, description="Biases on q, k, v. Default: bias.")
        attn_out_bias: bool | None = Field(
            None, description="Bias on the attention output projection. Default: bias."
        )
        mlp_bias: bool | None = Field(None, description="Biases in the MLP. Default: bias.")
        norm_bias: bool | None = Field(
            None, description="LayerNorm biases. Default: bias (always off for rmsnorm)."
        )
        embed_dim: PositiveInt | None = Field(
            None, description="Token embedding width, projected to and from n_embd when it "
            "differs (OPT-350m: 512). Default: n_embd.")
        sliding_window_layers: NonNegativeInt | None = Field(
            None, description="Blocks with sliding-window attention. Default: all of them when "
            "sliding_window is set, else 0.")

    @model_validator(mode="before")
    @classmethod
    def _numpy_scalars(cls, data: Any) -> Any:
        return plain_numbers(data)

    @model_validator(mode="after")
    def _derive_and_check(self) -> GPTConfig:
        # A derived field given as None is not "set": replace() derives it again.
        self.__pydantic_fields_set__.difference_update(
            name for name in _DERIVED if getattr(self, name) is None)
        derived = self._derived_sizes()
        for name, value in derived.items():
            object.__setattr__(self, name, value)  # frozen model: fill derived fields once
        for name, value in derive_architecture(self).items():
            object.__setattr__(self, name, value)
        if self.n_head % self.n_kv_head:
            raise ValueError(
                f"n_head={shown(self.n_head)} is not divisible by n_kv_head="
                f"{shown(self.n_kv_head)}; each "
                "key/value head serves a whole group of query heads. Try n_kv_head in "
                f"{_divisors(self.n_head)}"
            )
        check_architecture(self)
        return self

    def _derived_sizes(self) -> dict[str, Any]:
        """The derived fields of GPT-2's and Llama's options that were left out."""
        derived: dict[str, Any] = {}
        if self.n_kv_head is None:
            derived["n_kv_head"] = self.n_head
        if self.head_dim is None and self.mla is not None:
            derived["head_dim"] = self.mla.qk_head_dim
        elif self.head_dim is None:
            if self.n_embd % self.n_head:
                raise ValueError(
                    f"n_embd={shown(self.n_embd)} is not divisible by n_head="
                    f"{shown(self.n_head)}; try n_embd="
                    f"{shown(_nearest_multiple(self.n_embd, self.n_head))} or give head_dim "
                    "explicitly"
                )
            derived["head_dim"] = self.n_embd // self.n_head
        if self.mlp_hidden is None:
            derived["mlp_hidden"] = (
                _default_gated_hidden(self.n_embd) if self.gated_mlp else 4 * self.n_embd
            )
        for flag in ("qkv_bias", "attn_out_bias", "mlp_bias", "norm_bias"):
            if getattr(self, flag) is None:
                derived[flag] = self.bias
        if self.norm == "rmsnorm":
            if self.norm_bias is True:
                raise ValueError("norm_bias=True is not possible with norm='rmsnorm' (RMSNorm "
                                 "has no bias); use norm='layernorm' or drop norm_bias")
            derived["norm_bias"] = False
        if not self.norm_affine and self.norm_bias is None:
            derived["norm_bias"] = False
        return derived

    @model_serializer(mode="wrap")
    def _leave_derived_out_of_json(self, handler: SerializerFunctionWrapHandler,
                                   info: SerializationInfo) -> dict[str, Any]:
        """The JSON form leaves out the derived fields that were not given, so a config read
        back from JSON still derives them: ``replace(n_embd=384)`` after a round trip gives
        head_dim 32, not the saved 64 (issue 20). ``model_dump()`` (Python mode) shows them all.
        """
        data: dict[str, Any] = handler(self)
        if info.mode_is_json():
            for name in _DERIVED:
                if name not in self.model_fields_set:
                    data.pop(name, None)
        return data

    @property
    def n_query_groups(self) -> int:
        """Query heads per key/value head (1 for multi-head, n_head for multi-query)."""
        return self.n_head // self.n_kv_head

    @property
    def gated_mlp(self) -> bool:
        """True for SwiGLU/GeGLU (three MLP matrices), False for the plain GELU or ReLU MLP."""
        return self.mlp in ("swiglu", "geglu")

    def replace(self, **changes: Any) -> GPTConfig:
        """A copy with ``changes`` applied and everything validated again.

        Derived fields that were not given explicitly (``head_dim``, ``n_kv_head``, ...) are
        derived again, so ``gpt2.replace(n_embd=1536, n_head=24)`` gets ``head_dim=64``.
        Unlike pydantic's ``model_copy(update=...)``, a bad value raises.

        >>> GPTConfig.preset("gpt2").replace(n_embd=384).mlp_hidden
        1536
        """
        data = {name: getattr(self, name) for name in self.model_fields_set}
        data.update(changes)
        return type(self).model_validate(data)

    @classmethod
    def preset(cls, name: str) -> GPTConfig:
        """A named, published configuration (``GPTConfig.presets()`` lists them).

        >>> GPTConfig.preset("GPT2").n_embd
        768
        """
        from scaleplan.model.presets import PRESETS

        key = str(name).strip().lower().replace("_", "-")
        if key not in PRESETS:
            raise UnknownNameError("preset", name, PRESETS)
        return cls.model_validate(PRESETS[key])

    @classmethod
    def presets(cls) -> tuple[str, ...]:
        """Names accepted by `GPTConfig.preset`.

        >>> "llama-2-7b" in GPTConfig.presets()
        True
        """
        from scaleplan.model.presets import PRESETS

        return tuple(PRESETS)

    @classmethod
    def from_hf(cls, config: dict[str, Any] | str | os.PathLike[str]) -> GPTConfig:
        """Read a Hugging Face ``config.json`` (a dict or a path); see `scaleplan.model.loaders`.

        >>> cfg = GPTConfig.from_hf({"model_type": "gpt2", "n_layer": 12, "n_head": 12,
        ...                          "n_embd": 768, "vocab_size": 50257, "n_positions": 1024})
        >>> cfg.n_embd, cfg.vocab_size, cfg.tie_embeddings
        (768, 50257, True)
        """
        from scaleplan.model.loaders import from_hf

        return from_hf(config)


def config_type_message(function: str, cfg: object) -> str:
    """Why ``cfg`` (not a `GPTConfig`) cannot be the config of ``function``, and how to get one.

    >>> config_type_message("count_params", {"n_embd": 768})  # doctest: +ELLIPSIS
    "count_params(cfg={'n_embd': 768}): cfg must be a GPTConfig, not a dict; ... GPTConfig(**d)..."
    """
    hint = "e.g. GPTConfig.preset('gpt2') or GPTConfig(n_layer=12, n_head=12, n_embd=768)"
    if isinstance(cfg, dict):
        hint = ("build one with GPTConfig(**d), or GPTConfig.from_hf(d) for a Hugging Face "
                "config.json's dict")
    elif isinstance(cfg, str):
        hint = "for a name use GPTConfig.preset(name); for a config.json, GPTConfig.from_hf(path)"
    return (f"{function}(cfg={shown(cfg)}): cfg must be a GPTConfig, not a "
            f"{type(cfg).__name__}; {hint}")


def _nearest_multiple(value: int, step: int) -> int:
    below = value - value % step
    above = below + step
    return below if below > 0 and value - below <= above - value else above


def _divisors(n: int, limit: int = 4096) -> list[int]:
    # Bounded: n_head can be any int a user types, and n_head=10**18 hung here (issue 13).
    small = [k for k in range(1, min(n, limit) + 1) if n % k == 0]
    return (small + [n] * (n > limit))[:12]

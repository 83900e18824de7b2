"""The architecture options beyond GPT-2 and Llama: mixture of experts (`MoE`), multi-head latent
attention (`MLA`), and the checks that tie `GPTConfig`'s other options together.

The option names and their meanings are those of the models that use them (the Hugging Face
``model_type`` in brackets):

- ``qk_norm``: a norm on queries and keys before attention. ``"head"``: one norm of ``head_dim``
  shared by every head (qwen3, gemma3); ``"per_head"``: a separate norm of ``head_dim`` for each
  head (stablelm's ``qk_layernorm``); ``"full"``: one norm over all heads' width, ``n_head x
  head_dim`` for queries and ``n_kv_head x head_dim`` for keys (olmo2). Never with a bias.
- ``norm_position``: ``"pre"`` (a norm before each sublayer: GPT-2, Llama), ``"post"`` (a norm
  on each sublayer's output: olmo2, opt with ``do_layer_norm_before=False``), ``"sandwich"``
  (both: four norms per block, gemma2, gemma3).
- ``parallel``: attention and MLP read the same input and are added to the residual together
  (gptj, phi, falcon, gpt_neox, stablelm, cohere). ``"shared_norm"``: one norm feeds both;
  ``"separate_norms"``: each has its own (gpt_neox, falcon's new decoder architecture).
- ``norm_affine=False``: norms without a scale or a bias (olmo's non-parametric LayerNorm).
- ``final_norm=False``: no norm after the last block (opt-350m).
- ``embedding_norm``: a norm right after the token embedding (bloom).
- ``lm_head_bias``: a bias on the output head (gptj, phi).
- ``position_offset``: extra rows of a learned position table (opt: 2).
- ``embed_dim``: the width of the token embedding when it differs from ``n_embd``, with
  projections in and out of the residual stream, both without bias (opt-350m: 512 into 1024).
- ``rotary_fraction``: the fraction of each head's width that rotary positions rotate (gpt_neox
  0.25, phi 0.4); the rest passes through.
- ``sliding_window`` and ``sliding_window_layers``: local attention over the last
  ``sliding_window`` tokens in that many of the blocks (mistral v0.1, starcoder2: all; gemma2:
  half; gemma3: five of six).
- ``attn_softcap`` and ``final_softcap``: ``c * tanh(x / c)`` on the attention scores and on the
  output logits (gemma2).

None of these changes how `GPTConfig` is written for the models it described before: each
defaults to GPT-2's and Llama's behaviour.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, model_validator

from scaleplan.checks import plain_numbers
from scaleplan.errors import shown

if TYPE_CHECKING:
    from scaleplan.model.config import GPTConfig

__all__ = ["MLA", "MoE", "NormPosition", "ParallelKind", "QKNormKind", "check_architecture",
           "derive_architecture"]

QKNormKind = Literal["none", "head", "per_head", "full"]
NormPosition = Literal["pre", "post", "sandwich"]
ParallelKind = Literal["none", "shared_norm", "separate_norms"]


class MoE(BaseModel):
    """A mixture-of-experts MLP: each token goes to ``top_k`` of ``n_experts`` routed experts,
    picked by a router (a ``n_experts x n_embd`` linear layer), plus ``n_shared_experts`` that
    every token goes through.

    Every expert is an MLP of the config's kind (``mlp``: gated for Mixtral, Qwen3-MoE and
    DeepSeek) with hidden width ``expert_hidden``. The shared experts are one MLP of width
    ``shared_expert_hidden`` (DeepSeek: ``n_shared_experts x expert_hidden``), gated by a
    sigmoid of a 1 x n_embd linear layer when ``shared_expert_gate`` (Qwen2-MoE).
    ``n_dense_layers`` of the blocks keep a dense MLP of the config's ``mlp_hidden`` instead
    (DeepSeek-V3: its first 3). ``capacity_factor`` caps the tokens an expert takes at
    ``capacity_factor x tokens x top_k / n_experts`` (None: dropless, as Hugging Face's code).

    >>> MoE(n_experts=8, top_k=2, expert_hidden=14336).shared_expert_hidden
    0
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    n_experts: PositiveInt = Field(description="Routed experts per MoE layer.")
    top_k: PositiveInt = Field(description="Routed experts each token goes to.")
    expert_hidden: PositiveInt = Field(description="Hidden width of one routed expert.")
    n_shared_experts: NonNegativeInt = Field(
        0, description="Experts every token goes through (DeepSeek), fused into one MLP.")
    if TYPE_CHECKING:
        shared_expert_hidden: int = 0
    else:
        shared_expert_hidden: NonNegativeInt | None = Field(
            None, description="Hidden width of the shared experts' MLP. Default: "
            "n_shared_experts x expert_hidden.")
    shared_expert_gate: bool = Field(
        False, description="A sigmoid gate (a 1 x n_embd linear layer) on the shared experts.")
    n_dense_layers: NonNegativeInt = Field(
        0, description="Blocks whose MLP stays dense (mlp_hidden wide), e.g. DeepSeek's first.")
    router_bias: bool = Field(False, description="A bias on the router's logits.")
    capacity_factor: float | None = Field(
        None, gt=0.0, allow_inf_nan=False,
        description="Tokens an expert takes, as a multiple of its even share; None: dropless.")

    @model_validator(mode="after")
    def _derive_and_check(self) -> MoE:
        if self.top_k > self.n_experts:
            raise ValueError(f"top_k={shown(self.top_k)} is more than n_experts="
                             f"{shown(self.n_experts)}; a token can go to at most every expert")
        if self.shared_expert_hidden is None:
            object.__setattr__(self, "shared_expert_hidden",
                               self.n_shared_experts * self.expert_hidden)
        elif self.shared_expert_hidden and not self.n_shared_experts:
            object.__setattr__(self, "n_shared_experts", 1)
        if self.shared_expert_gate and not self.shared_expert_hidden:
            raise ValueError("shared_expert_gate=True needs shared experts; give "
                             "n_shared_experts or shared_expert_hidden")
        return self

    @model_validator(mode="before")
    @classmethod
    def _numpy_scalars(cls, data: Any) -> Any:
        return plain_numbers(data)


class MLA(BaseModel):
    """Multi-head latent attention (DeepSeek-V2/V3): keys and values come from a shared latent
    of ``kv_lora_rank`` (and queries from one of ``q_lora_rank``, or straight from the residual
    when it is None), each head's query and key being ``qk_nope_head_dim`` wide plus a
    ``qk_rope_head_dim`` rotary part whose key is shared by all heads; values are
    ``v_head_dim`` wide. The latents are RMS-normalised.

    >>> MLA(q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
    ...     v_head_dim=128).qk_head_dim
    192
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    q_lora_rank: PositiveInt | None = Field(
        description="Width of the query latent; None: queries are projected directly.")
    kv_lora_rank: PositiveInt = Field(description="Width of the shared key/value latent.")
    qk_nope_head_dim: PositiveInt = Field(description="Per-head query/key width without rotary.")
    qk_rope_head_dim: PositiveInt = Field(description="Rotary query/key width per head.")
    v_head_dim: PositiveInt = Field(description="Per-head value width.")

    @model_validator(mode="before")
    @classmethod
    def _numpy_scalars(cls, data: Any) -> Any:
        return plain_numbers(data)

    @property
    def qk_head_dim(self) -> int:
        """A head's query and key width: qk_nope_head_dim + qk_rope_head_dim."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim


def derive_architecture(cfg: GPTConfig) -> dict[str, Any]:
    """The derived architecture fields ``cfg`` left out: ``embed_dim`` (n_embd) and
    ``sliding_window_layers`` (every block when there is a window, else 0)."""
    derived: dict[str, Any] = {}
    if cfg.embed_dim is None:
        derived["embed_dim"] = cfg.n_embd
    if cfg.sliding_window_layers is None:
        derived["sliding_window_layers"] = cfg.n_layer if cfg.sliding_window else 0
    return derived


def check_architecture(cfg: GPTConfig) -> None:
    """Raise ValueError, naming the fields and a fix, when ``cfg``'s options contradict."""
    if cfg.rotary_fraction != 1.0 and cfg.position != "rope":
        raise ValueError(f"rotary_fraction={shown(cfg.rotary_fraction)} needs position='rope' "
                         f"(position={shown(cfg.position)}); drop rotary_fraction or use rope")
    if cfg.position_offset and cfg.position != "learned":
        raise ValueError(f"position_offset={shown(cfg.position_offset)} is rows of a learned "
                         f"position table, and position={shown(cfg.position)}; use "
                         "position='learned' or drop position_offset")
    if cfg.sliding_window_layers > cfg.n_layer:
        raise ValueError(f"sliding_window_layers={shown(cfg.sliding_window_layers)} is more "
                         f"than n_layer={shown(cfg.n_layer)}")
    if cfg.sliding_window_layers and not cfg.sliding_window:
        raise ValueError(f"sliding_window_layers={shown(cfg.sliding_window_layers)} needs a "
                         "sliding_window (tokens each query attends to), e.g. 4096")
    if not cfg.norm_affine and cfg.norm_bias:
        raise ValueError("norm_bias=True is not possible with norm_affine=False (a norm without "
                         "parameters); drop one of them")
    if cfg.parallel != "none" and cfg.norm_position != "pre":
        raise ValueError(f"parallel={shown(cfg.parallel)} reads one normalised input, so "
                         f"norm_position must be 'pre', not {shown(cfg.norm_position)}")
    if cfg.moe is not None and cfg.moe.n_dense_layers >= cfg.n_layer:
        raise ValueError(f"moe.n_dense_layers={shown(cfg.moe.n_dense_layers)} leaves no MoE "
                         f"block of n_layer={shown(cfg.n_layer)}; drop moe for a dense model")
    _check_mla(cfg)


def _check_mla(cfg: GPTConfig) -> None:
    if cfg.mla is None:
        return
    if cfg.position != "rope":
        raise ValueError(f"mla needs position='rope' (its decoupled rotary key), not "
                         f"{shown(cfg.position)}")
    if cfg.head_dim != cfg.mla.qk_head_dim:
        raise ValueError(f"head_dim={shown(cfg.head_dim)} disagrees with mla's query/key width "
                         f"qk_nope_head_dim + qk_rope_head_dim = {cfg.mla.qk_head_dim}; leave "
                         "head_dim out")
    if cfg.n_kv_head != cfg.n_head:
        raise ValueError(f"n_kv_head={shown(cfg.n_kv_head)}: with mla every head has its own "
                         f"key and value (n_kv_head = n_head = {cfg.n_head}); leave it out")
    if cfg.qk_norm != "none":
        raise ValueError(f"qk_norm={shown(cfg.qk_norm)} with mla is not a published layout "
                         "(mla normalises its latents); drop qk_norm")

"""Exact parameter counts: `count_params` -> `ParamCount`.

The count follows the model as built by nanoGPT (GPT-2 family) and by Hugging Face transformers
(Llama family): every weight matrix, bias and norm scale, with a tied output head counted once.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from scaleplan.errors import ScaleplanError
from scaleplan.model.config import GPTConfig, config_type_message
from scaleplan.model.lora import LoRA, adapter_params
from scaleplan.model.shapes import PARTS, across_model, active_numel, parameters, per_config

__all__ = ["ParamCount", "count_params", "param_terms"]


class ParamCount(BaseModel):
    """The parameters of a `GPTConfig`, exact, as Python ints.

    ``token_embedding + position_embedding + attention + mlp + norms + lm_head == total``.
    ``biases`` is informational: how many of those parameters are biases (already inside
    attention, mlp and norms). Every norm (QK-norms, MLA's latent norms, an embedding norm)
    is in ``norms``; a mixture of experts' router, experts and shared experts are in ``mlp``;
    OPT's projections between a narrow embedding and the residual stream are in ``lm_head``
    (matmuls outside the blocks, like the head). ``active`` is what one token goes through: a
    mixture of experts' ``top_k`` of ``n_experts`` routed experts (Mixtral-8x7B: 46.7B total,
    12.9B active).

    >>> pc = count_params(GPTConfig.preset("gpt2"))
    >>> pc.total, pc.nanogpt
    (124439808, 123653376)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    total: int = Field(description="Every parameter, a tied lm_head counted once.")
    token_embedding: int = Field(description="wte: vocab_size x embed_dim (n_embd).")
    position_embedding: int = Field(
        description="wpe: (block_size + position_offset) x n_embd for learned positions, else 0 "
        "(RoPE and ALiBi have none)."
    )
    attention: int = Field(description="q, k, v and output projections (MLA's low-rank ones), "
                           "with their biases.")
    mlp: int = Field(description="MLP matrices (2 for GELU/ReLU, 3 for SwiGLU/GeGLU), with "
                     "biases; with moe, the dense blocks' MLPs, routers, experts and shared "
                     "experts.")
    norms: int = Field(description="Every norm's scale (and bias): the blocks' (2, 4 with "
                       "sandwich, 1 with a shared parallel norm), QK-norms, MLA's latent norms, "
                       "the embedding and final norms.")
    lm_head: int = Field(description="The output projection (0 when tied to wte) and its bias, "
                         "and OPT's project_in/project_out when embed_dim != n_embd.")
    biases: int = Field(description="Bias parameters, already counted in the fields above.")
    per_layer: int = Field(description="Parameters in one transformer block (an MoE block when "
                           "the model has any).")
    non_embedding: int = Field(
        description="Kaplan et al. (2020)'s N: total minus the token and position embeddings. "
        "An untied lm_head stays in, since its matmul costs compute like any other layer."
    )
    nanogpt: int = Field(
        description="What nanoGPT prints as 'number of parameters': total minus the position "
        "embedding (get_num_params(non_embedding=True) keeps wte because it is also the tied "
        "output layer)."
    )
    active: int = Field(
        description="Parameters one token goes through: total less the routed experts' "
        "inactive share (their elements x (1 - top_k / n_experts)); total for a dense model."
    )
    lora: int = Field(default=0, description="LoRA adapters' parameters (0 without LoRA), "
                      "inside total, as peft's print_trainable_parameters counts them.")
    trainable: int = Field(default=-1, description="Parameters that train: total without "
                           "LoRA, the adapters' with it (-1 when built without it: total).")

    @model_validator(mode="after")
    def _parts_sum_to_total(self) -> ParamCount:
        if self.trainable == -1:  # frozen model: set once, while validating
            object.__setattr__(self, "trainable", self.total)
        parts = sum(self.components().values())
        if parts != self.total:
            raise ValueError(f"parameter breakdown sums to {parts}, not total={self.total}")
        if self.non_embedding != self.total - self.token_embedding - self.position_embedding:
            raise ValueError("non_embedding must be total - token_embedding - position_embedding")
        if self.nanogpt != self.total - self.position_embedding:
            raise ValueError("nanogpt must be total - position_embedding")
        if not 0 < self.active <= self.total:
            raise ValueError(f"active={self.active} must be positive and at most "
                             f"total={self.total}")
        return self

    def components(self) -> dict[str, int]:
        """The parts that sum to ``total``, in model order (and ``lora``, the adapters, when
        counted with them).

        >>> pc = count_params(GPTConfig.preset("gpt2"))
        >>> sum(pc.components().values()) == pc.total == 124_439_808  # Hugging Face's count
        True
        """
        parts: dict[str, int] = {part: getattr(self, part) for part in PARTS}
        if self.lora:
            parts["lora"] = self.lora
        return parts


def count_params(cfg: GPTConfig, lora: LoRA | None = None) -> ParamCount:
    """Count the parameters of ``cfg`` exactly; with ``lora``, its adapters too.

    Per block (d = n_embd, h = head_dim, a = n_head, k = n_kv_head, f = mlp_hidden):

    - attention: q is d x a*h, k and v are d x k*h each, the output is a*h x d; biases of
      a*h + 2*k*h (qkv) and d (output) when enabled;
    - MLP: d x f and f x d, plus a second d x f gate when gated (SwiGLU/GeGLU); biases f (x2 when
      gated) and d;
    - two norms of d scales each (+ d biases for LayerNorm with bias).

    Plus the token embedding V x d, learned positions block_size x d, a final norm, and an untied
    lm_head d x V (GPT-2's and Llama's heads have no bias). The tensors are listed in
    `scaleplan.model.shapes.model_tensors`; `scaleplan.model.layers` has those of the other
    options (QK-norms, sandwich/post/parallel norms, MLA, mixtures of experts, OPT's
    projections, a head bias), each checked against the model transformers builds.

    >>> pc = count_params(GPTConfig.preset("mixtral-8x7b"))  # published: 46.7B, 12.9B active
    >>> pc.total, pc.active
    (46702792704, 12879925248)

    >>> count_params(GPTConfig(n_layer=12, n_head=12, n_embd=384, bias=False)).nanogpt
    40560000

    With a `scaleplan.model.lora.LoRA`, ``total`` includes the adapters (``lora``) and
    ``trainable`` is theirs alone, as peft's ``print_trainable_parameters`` reports (Llama-2-7B,
    r 8 on q and v: "trainable params: 4,194,304 || all params: 6,742,609,920"):

    >>> pc = count_params(GPTConfig.preset("llama-2-7b"), lora=LoRA(8, targets=("q", "v")))
    >>> pc.trainable, pc.total
    (4194304, 6742609920)
    """
    if not isinstance(cfg, GPTConfig):
        raise ScaleplanError(config_type_message("count_params", cfg))
    if lora is None:
        return _count(cfg)
    if not isinstance(lora, LoRA):
        raise ScaleplanError(f"lora={lora!r} must be a scaleplan.LoRA (e.g. LoRA(8, "
                             "targets=('q', 'v'))) or None")
    base = _count(cfg)
    n = adapter_params(cfg, lora)
    return ParamCount(**{**base.model_dump(), "total": base.total + n, "non_embedding":
                         base.non_embedding + n, "nanogpt": base.nanogpt + n,
                         "active": base.active + n, "lora": n, "trainable": n})


def _count_body(cfg: GPTConfig) -> ParamCount:  # frozen: one count per config, shared
    return ParamCount(**param_terms(cfg))


_count = per_config(_count_body)


def param_terms(cfg: GPTConfig) -> dict[str, Any]:
    """The fields of `ParamCount` as plain arithmetic on ``cfg``'s sizes: the elements of
    `scaleplan.model.shapes.parameters`, summed by part.

    Only ``+`` and ``*`` touch the sizes (n_layer, n_head, n_kv_head, n_embd, head_dim,
    mlp_hidden, vocab_size, block_size); the structural fields (mlp, norm, position, biases,
    tie_embeddings) choose branches. So the same code gives exact ints for a `GPTConfig` and
    sympy expressions for `scaleplan.symbolic.formulas`'s view of one whose sizes are symbols.

    >>> param_terms(GPTConfig.preset("gpt2"))["per_layer"]
    7087872

    A `GPTConfig`'s terms are summed once and kept (frozen, hashable: see
    `scaleplan.model.shapes.model_tensors`); each call returns its own dict.
    """
    return dict(_sum_terms(cfg))


def _sum_terms_body(cfg: GPTConfig) -> dict[str, Any]:
    tensors = parameters(cfg)
    part: dict[str, Any] = {name: across_model(cfg, [t for t in tensors if t.part == name])
                            for name in PARTS}
    total = sum(part.values())
    return {
        "total": total,
        **part,
        "biases": across_model(cfg, [t for t in tensors if t.bias]),
        "per_layer": across_model(cfg, [t for t in tensors if t.per_block], layers=1),
        "non_embedding": total - part["token_embedding"] - part["position_embedding"],
        "nanogpt": total - part["position_embedding"],
        "active": across_model(cfg, tensors, lambda t: active_numel(t, cfg)),
    }


_sum_terms = per_config(_sum_terms_body)

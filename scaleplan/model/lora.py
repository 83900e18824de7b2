"""LoRA adapters: the `LoRA` config and the parameters its adapters add (`adapter_shapes`).

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685,
eq. 3) freezes a linear layer W (out x in) and trains ``delta W = B A`` beside it, A (r x in) and
B (out x r), the output scaled by alpha / r. peft (0.21.2, ``peft/tuners/lora/layer.py``,
``Linear.update_layer``) builds A and B as ``nn.Linear`` without bias, so one adapted matrix adds
r x (in + out) parameters.

Targets are named by role, not by module name: "q", "k", "v", "o" (the attention projections)
and "gate", "up", "down" (the MLP's). Which module a role is depends on the modeling code that
runs the config (`scaleplan.memory.hf_terms.hf_family`):

- Llama, Qwen2, Mistral: separate ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``, ``gate_proj``,
  ``up_proj``, ``down_proj``; each role is one adapter.
- GPT-2: q, k and v are one fused ``c_attn`` (d in, 3d out). peft adapts the fused matrix as
  one: A is r x d and B is 3d x r, so "q", "k" and "v" are taken together (all three or none; a
  part of them is refused, since peft cannot adapt a third of ``c_attn``). "o" is
  ``attn.c_proj``, "up" ``c_fc`` and "down" ``mlp.c_proj``; a GELU MLP has no "gate".

Mixtures of experts are refused: peft wraps each expert's linears only where the modeling code
builds them as ``nn.Linear`` modules, and transformers 5 stores experts as fused 3-D parameters,
so what peft adapts depends on the model; it is not modelled yet.

>>> LoRA(rank=8, targets=("q", "v")).targets
('q', 'v')
>>> adapter_params(GPTConfig.preset("llama-2-7b"), LoRA(rank=8, targets=("q", "v")))
4194304
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from scaleplan.errors import ScaleplanError
from scaleplan.model.config import GPTConfig

__all__ = ["HEAD_TARGET", "LORA_TARGETS", "LoRA", "LoRATarget", "adapter_params", "adapter_shapes",
           "fused_qkv"]

LoRATarget = Literal["q", "k", "v", "o", "gate", "up", "down", "head"]
LORA_TARGETS: tuple[LoRATarget, ...] = ("q", "k", "v", "o", "gate", "up", "down")
"""Every role an adapter may target in a block, in the order of a block's forward (the
default targets)."""
HEAD_TARGET: LoRATarget = "head"
"""The output layer (``lm_head``) as a target: litgpt's ``lora_head``, modelled for
``implementation="litgpt"`` only (`adapter_shapes` refuses it)."""

# peft's LoraConfig default lora_alpha (peft 0.21.2, peft/tuners/lora/config.py)
PEFT_DEFAULT_ALPHA = 8.0


class LoRA(BaseModel):
    """A LoRA configuration: rank, scale and which linear layers of every block get adapters.

    Args:
        rank: r, the inner width of each adapter (>= 1).
        alpha: the scale's numerator (output scaled by alpha / rank); memory does not depend
            on it. Default peft's 8.
        targets: roles among ``LORA_TARGETS`` (module docstring), and ``"head"`` (the output
            layer, litgpt's ``lora_head``); order does not matter.
        dropout: peft's ``lora_dropout``, applied to each adapter's input (0 <= p < 1).

    >>> LoRA(rank=16, alpha=32, targets=("v", "q"), dropout=0.05)
    LoRA(rank=16, alpha=32.0, targets=('q', 'v'), dropout=0.05)
    >>> LoRA(rank=0)
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for LoRA
    rank
      Input should be greater than or equal to 1 ...
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    rank: int = Field(ge=1, strict=True, description="r: A is r x in, B is out x r.")
    alpha: float = Field(default=PEFT_DEFAULT_ALPHA, gt=0,
                         description="Scale numerator (alpha / rank); no effect on memory.")
    targets: tuple[LoRATarget, ...] = Field(
        default=LORA_TARGETS, description="Adapted roles, in block order.")
    dropout: float = Field(default=0.0, ge=0, lt=1,
                           description="Dropout on each adapter's input (peft lora_dropout).")

    def __init__(self, rank: int | None = None, /, **data: Any) -> None:
        if rank is not None:
            data["rank"] = rank
        super().__init__(**data)

    @field_validator("targets", mode="before")
    @classmethod
    def _known_targets(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = tuple(t.strip() for t in value.split(",") if t.strip())
        if not isinstance(value, list | tuple) or not value:
            raise ValueError(f"targets={value!r} must name at least one of "
                             f"{', '.join(LORA_TARGETS)}, e.g. targets=('q', 'v')")
        odd = [t for t in value if t not in (*LORA_TARGETS, HEAD_TARGET)]
        if odd:
            raise ValueError(f"targets: {odd[0]!r} is not a LoRA target; use roles among "
                             f"{', '.join(LORA_TARGETS)} (e.g. 'q' for q_proj)")
        if len(set(value)) != len(value):
            raise ValueError(f"targets={tuple(value)!r} names a role twice")
        return tuple(t for t in (*LORA_TARGETS, HEAD_TARGET) if t in value)


def fused_qkv(cfg: GPTConfig) -> bool:
    """True when q, k and v are one fused matrix in the modeling code that runs ``cfg`` (GPT-2's
    ``c_attn``, GPT-NeoX's ``query_key_value``: LayerNorm models), False for separate
    projections (Llama, Qwen2, Mistral: RMSNorm models).

    >>> fused_qkv(GPTConfig.preset("gpt2")), fused_qkv(GPTConfig.preset("llama-2-7b"))
    (True, False)
    """
    return cfg.norm == "layernorm"


def adapter_shapes(cfg: GPTConfig, lora: LoRA) -> dict[str, tuple[Any, Any]]:
    """(in, out) of every adapted matrix of one block, by role; a fused q/k/v is one entry
    ``"qkv"``. Raises a `ScaleplanError` naming a target ``cfg`` does not have.

    With d = n_embd, a/k = query/key-value heads, h = head_dim, f = mlp_hidden: q d -> a h,
    k and v d -> k h, o a h -> d, gate and up d -> f, down f -> d; GPT-2's fused qkv d -> 3 a h.

    >>> adapter_shapes(GPTConfig.preset("gpt2"), LoRA(rank=8, targets=("q", "k", "v", "down")))
    {'qkv': (768, 2304), 'down': (3072, 768)}
    """
    if cfg.moe is not None:
        raise ScaleplanError("lora with a mixture of experts is not modelled yet (what peft "
                             "adapts depends on how the modeling code stores the experts); "
                             "use a dense config")
    if cfg.mla is not None:
        raise ScaleplanError("lora with multi-head latent attention is not modelled yet; use "
                             "a config with q/k/v projections")
    if HEAD_TARGET in lora.targets:
        raise ScaleplanError("lora targets 'head' (an adapter on the output layer), which is "
                             "modelled for implementation='litgpt' only (litgpt's lora_head); "
                             "drop 'head' from targets")
    d, a, k, h, f = cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.mlp_hidden
    gated = cfg.mlp in ("swiglu", "geglu")
    if "gate" in lora.targets and not gated:
        raise ScaleplanError(f"lora targets 'gate', but mlp={cfg.mlp!r} has no gate "
                             "projection; drop 'gate' (targets up and down are its MLP)")
    shapes: dict[str, tuple[Any, Any]] = {}
    qkv = [t for t in ("q", "k", "v") if t in lora.targets]
    if fused_qkv(cfg) and qkv:
        if len(qkv) != 3:
            raise ScaleplanError(
                f"lora targets {tuple(qkv)!r}, but this config's q, k and v are one fused "
                "matrix (c_attn), which peft adapts whole; use targets with all of 'q', 'k', "
                "'v' or none of them")
        shapes["qkv"] = (d, (a + 2 * k) * h)
    elif qkv:
        sizes = {"q": (d, a * h), "k": (d, k * h), "v": (d, k * h)}
        shapes.update({t: sizes[t] for t in qkv})
    mlp = {"o": (a * h, d), "gate": (d, f), "up": (d, f), "down": (f, d)}
    shapes.update({t: mlp[t] for t in ("o", "gate", "up", "down") if t in lora.targets})
    return shapes


def adapter_params(cfg: GPTConfig, lora: LoRA) -> Any:
    """Parameters every adapter adds, over all ``n_layer`` blocks: r (in + out) per adapted
    matrix (A r x in, B out x r, no biases: peft's default ``lora_bias=False``).

    >>> adapter_params(GPTConfig.preset("gpt2"), LoRA(rank=8, targets=("q", "k", "v")))
    294912
    """
    r = lora.rank
    per_block = sum(r * (n_in + n_out) for n_in, n_out in adapter_shapes(cfg, lora).values())
    return cfg.n_layer * per_block

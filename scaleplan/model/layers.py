"""The tensors of each part of a GPT block: `Tensor` and the lists `scaleplan.model.shapes`
assembles into `scaleplan.model.shapes.model_tensors`.

Names follow nanoGPT's (``c_attn``, ``c_fc``, ``c_proj``, ``ln_1``); the reference model
(`scaleplan.reference.model`) names its modules after them. Shapes are (out, in) as in
``torch.nn.Linear``; d = n_embd, a = n_head, k = n_kv_head, h = head_dim, E = moe.n_experts.

NAMES (per block unless marked top; Hugging Face's name or model in brackets):

| name | shape | when |
| --- | --- | --- |
| `wte.weight` (top) | (V, embed_dim) | always |
| `wpe.weight` (top) | (block_size + position_offset, d) | position="learned" |
| `ln_emb` (top) | (d,) | embedding_norm (bloom) |
| `ln_1` | (d,) | norm_position pre or sandwich; parallel |
| `attn.c_attn` | ((a + 2k) h, d), bias: qkv_bias | no mla |
| `attn.q_norm` | (h,); (a, h); (a h,) | qk_norm head; per_head; full |
| `attn.k_norm` | (h,); (k, h); (k h,) | qk_norm head; per_head; full |
| `attn.q_a_proj` | (q_lora_rank, d), bias: qkv_bias | mla with q_lora_rank |
| `attn.q_a_norm` | (q_lora_rank,) | mla with q_lora_rank |
| `attn.q_b_proj` | (a qk_head_dim, q_lora_rank) | mla with q_lora_rank |
| `attn.q_proj` | (a qk_head_dim, d) | mla, q_lora_rank None |
| `attn.kv_a_proj` | (kv_lora_rank + qk_rope_head_dim, d), bias: qkv_bias | mla |
| `attn.kv_a_norm` | (kv_lora_rank,) | mla |
| `attn.kv_b_proj` | (a (qk_nope_head_dim + v_head_dim), kv_lora_rank) | mla |
| `attn.c_proj` | (d, a h), with mla (d, a v_head_dim); bias: attn_out_bias | always |
| `ln_1_post` | (d,) | post or sandwich [post_attention_layernorm] |
| `ln_2` | (d,) | pre or sandwich without parallel; separate_norms |
| `mlp.c_fc` | (f, d), bias: mlp_bias | dense MLP (up) |
| `mlp.c_gate` | (f, d) | gated dense MLP (gate) |
| `mlp.c_proj` | (d, f) | dense MLP (down) |
| `mlp.router` | (E, d), bias: moe.router_bias | moe [gate] |
| `mlp.experts.c_fc`, `.c_gate` | (E, f_e, d), bias (E, f_e) | moe, routed (c_gate: gated) |
| `mlp.experts.c_proj` | (E, d, f_e), bias (E, d) | moe, routed |
| `mlp.shared.c_fc`, `.c_gate`, `.c_proj` | (f_s, d), (f_s, d), (d, f_s) | moe with shared experts |
| `mlp.shared_gate` | (1, d) | moe.shared_expert_gate |
| `ln_2_post` | (d,) | post or sandwich [post_feedforward_layernorm] |
| `ln_f` (top) | (d,) | final_norm |
| `project_out.weight` (top) | (embed_dim, d) | embed_dim != d (opt) |
| `project_in.weight` (top) | (d, embed_dim) | embed_dim != d (opt) |
| `lm_head.weight` (top) | (V, embed_dim), tied per tie_embeddings | always |
| `lm_head.bias` (top) | (V,) | lm_head_bias |

A norm ``ln_x`` is ``ln_x.weight`` and, for LayerNorm with ``norm_bias``, ``ln_x.bias``; with
``norm_affine=False`` no norm has a tensor. QK-norms and MLA's latent norms never have a bias.
With ``moe``, the dense MLP's tensors are marked ``blocks="dense"`` (the ``moe.n_dense_layers``
first blocks) and the router's, experts' and shared experts' ``blocks="moe"``; the routed
experts' are marked ``routed`` (all E experts in the first axis). ALiBi, sliding windows,
soft-capping and partial rotary add no parameters (transformers builds none: DeepSeek-V3's
``e_score_correction_bias`` is a buffer, not a parameter).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:
    from scaleplan.model.config import GPTConfig

__all__ = ["PARTS", "BlockKind", "Part", "Tensor", "attention_tensors", "block_norm_names",
           "linear", "mlp_tensors", "norm", "top_tensors"]

BlockKind = Literal["all", "moe", "dense"]
"""Which blocks hold a per-block tensor (`Tensor.blocks`)."""
Part = Literal["token_embedding", "position_embedding", "attention", "mlp", "norms", "lm_head"]
"""Where a tensor belongs: the names of `scaleplan.model.params.ParamCount`'s parts."""
PARTS: tuple[Part, ...] = get_args(Part)
"""The parts, in model order."""


@dataclass(frozen=True)
class Tensor:
    """One tensor of the model, named as in the reference model (nanoGPT's names).

    >>> t = Tensor("wte.weight", (50257, 768), "token_embedding")
    >>> t.numel
    38597376
    """

    name: str
    shape: tuple[Any, ...]
    part: Part
    matmul: bool = False
    """The weight of a matrix multiply (a ``Linear``; not an embedding lookup, norm or bias)."""
    bias: bool = False
    """A bias vector (of a linear layer or a LayerNorm)."""
    per_block: bool = False
    """Repeated in the transformer blocks: one per block that ``blocks`` names (``n_layer`` of
    it for a dense model)."""
    tied: bool = False
    """A view of another tensor's storage (the tied ``lm_head`` is ``wte``): no parameter."""
    blocks: BlockKind = "all"
    """Which blocks hold a ``per_block`` tensor: every block, only the MoE blocks or only the
    dense ones (`scaleplan.model.shapes.block_counts`)."""
    routed: bool = False
    """The weights of the routed experts, all ``n_experts`` of them (the shape's first axis): a
    token goes through ``top_k`` of them."""

    @property
    def numel(self) -> Any:
        """Elements: the product of the shape."""
        return math.prod(self.shape)


def linear(name: str, shape: tuple[Any, ...], part: Part, *, bias: Any,
           blocks: BlockKind = "all", routed: bool = False) -> tuple[Tensor, ...]:
    """A block's ``torch.nn.Linear`` (or, ``routed``, E of them stacked): the (out, in) weight
    and, when ``bias``, an out-sized bias, all ``per_block``.

    >>> [t.shape for t in linear("mlp.experts.c_proj", (8, 16, 64), "mlp", bias=True,
    ...                          routed=True)]
    [(8, 16, 64), (8, 16)]
    """
    weight = Tensor(f"{name}.weight", shape, part, matmul=True, per_block=True, blocks=blocks,
                    routed=routed)
    if not bias:
        return (weight,)
    return (weight, Tensor(f"{name}.bias", shape[:-1], part, bias=True, per_block=True,
                           blocks=blocks, routed=routed))


def norm(name: str, cfg: GPTConfig, width: Any = None, *, per_block: bool = False,
         bias: Any = None) -> list[Tensor]:
    """A LayerNorm or RMSNorm (default over n_embd): a scale, and a bias for LayerNorm with
    bias (``bias`` overrides ``cfg.norm_bias``); nothing with ``norm_affine=False``."""
    if not cfg.norm_affine:
        return []
    shape = (cfg.n_embd,) if width is None else tuple(width)
    scale = Tensor(f"{name}.weight", shape, "norms", per_block=per_block)
    with_bias = cfg.norm_bias if bias is None else bias
    return [scale, Tensor(f"{name}.bias", shape, "norms", bias=True, per_block=per_block)
            ] if with_bias else [scale]


def block_norm_names(cfg: GPTConfig) -> tuple[tuple[str, ...], ...]:
    """The norms of a block, in the four places one may sit: before attention, on its output,
    before the MLP, on its output.

    >>> from scaleplan.model.config import GPTConfig
    >>> block_norm_names(GPTConfig(norm_position="sandwich"))
    (('ln_1',), ('ln_1_post',), ('ln_2',), ('ln_2_post',))
    >>> block_norm_names(GPTConfig(parallel="shared_norm"))
    (('ln_1',), (), (), ())
    """
    if cfg.parallel == "shared_norm":
        return ("ln_1",), (), (), ()
    if cfg.parallel == "separate_norms" or cfg.norm_position == "pre":
        return ("ln_1",), (), ("ln_2",), ()
    if cfg.norm_position == "post":
        return (), ("ln_1_post",), (), ("ln_2_post",)
    return ("ln_1",), ("ln_1_post",), ("ln_2",), ("ln_2_post",)


def _qk_norms(cfg: GPTConfig) -> list[Tensor]:
    h, a, k = cfg.head_dim, cfg.n_head, cfg.n_kv_head
    widths = {"head": ((h,), (h,)), "per_head": ((a, h), (k, h)),
              "full": ((a * h,), (k * h,))}.get(cfg.qk_norm)
    if widths is None:
        return []
    return [*norm("attn.q_norm", cfg, widths[0], per_block=True, bias=False),
            *norm("attn.k_norm", cfg, widths[1], per_block=True, bias=False)]


def attention_tensors(cfg: GPTConfig) -> list[Tensor]:
    """One block's attention tensors: q, k, v (fused ``c_attn``, or MLA's low-rank
    projections), its QK-norms and the output projection ``c_proj``."""
    d, a = cfg.n_embd, cfg.n_head
    if cfg.mla is not None:
        return [*_mla(cfg),
                *linear("attn.c_proj", (d, a * cfg.mla.v_head_dim), "attention",
                        bias=cfg.attn_out_bias)]
    qkv = (a + 2 * cfg.n_kv_head) * cfg.head_dim
    return [*linear("attn.c_attn", (qkv, d), "attention", bias=cfg.qkv_bias),
            *_qk_norms(cfg),
            *linear("attn.c_proj", (d, a * cfg.head_dim), "attention", bias=cfg.attn_out_bias)]


def _mla(cfg: GPTConfig) -> list[Tensor]:
    """DeepSeek-V2/V3's q and kv projections (transformers' DeepseekV3Attention): the biases
    of the down projections follow qkv_bias (``attention_bias``), the up projections have none.
    """
    m = cfg.mla
    assert m is not None
    d, a = cfg.n_embd, cfg.n_head
    if m.q_lora_rank is None:
        query = [*linear("attn.q_proj", (a * m.qk_head_dim, d), "attention", bias=False)]
    else:
        query = [*linear("attn.q_a_proj", (m.q_lora_rank, d), "attention", bias=cfg.qkv_bias),
                 *norm("attn.q_a_norm", cfg, (m.q_lora_rank,), per_block=True, bias=False),
                 *linear("attn.q_b_proj", (a * m.qk_head_dim, m.q_lora_rank), "attention",
                         bias=False)]
    return [*query,
            *linear("attn.kv_a_proj", (m.kv_lora_rank + m.qk_rope_head_dim, d), "attention",
                    bias=cfg.qkv_bias),
            *norm("attn.kv_a_norm", cfg, (m.kv_lora_rank,), per_block=True, bias=False),
            *linear("attn.kv_b_proj", (a * (m.qk_nope_head_dim + m.v_head_dim), m.kv_lora_rank),
                    "attention", bias=False)]


def _mlp(name: str, cfg: GPTConfig, hidden: Any, blocks: BlockKind,
         experts: tuple[Any, ...] = ()) -> list[Tensor]:
    """An MLP of the config's kind (up ``c_fc``, ``c_gate`` when gated, down ``c_proj``);
    ``experts`` = (E,) stacks E of them, marked ``routed``."""
    d, routed = cfg.n_embd, bool(experts)
    up = linear(f"{name}.c_fc", (*experts, hidden, d), "mlp", bias=cfg.mlp_bias, blocks=blocks,
                routed=routed)
    gate = linear(f"{name}.c_gate", (*experts, hidden, d), "mlp", bias=cfg.mlp_bias,
                  blocks=blocks, routed=routed) if cfg.gated_mlp else ()
    down = linear(f"{name}.c_proj", (*experts, d, hidden), "mlp", bias=cfg.mlp_bias,
                  blocks=blocks, routed=routed)
    return [*up, *gate, *down]


def mlp_tensors(cfg: GPTConfig) -> list[Tensor]:
    """One block's MLP tensors: the dense MLP (``blocks="dense"`` with moe) and, with moe, the
    router, the routed experts and the shared experts (``blocks="moe"``)."""
    moe = cfg.moe
    if moe is None:
        return _mlp("mlp", cfg, cfg.mlp_hidden, "all")
    d = cfg.n_embd
    tensors = [*_mlp("mlp", cfg, cfg.mlp_hidden, "dense"),
               *linear("mlp.router", (moe.n_experts, d), "mlp", bias=moe.router_bias,
                       blocks="moe"),
               *_mlp("mlp.experts", cfg, moe.expert_hidden, "moe", (moe.n_experts,))]
    if moe.shared_expert_hidden:
        tensors += _mlp("mlp.shared", cfg, moe.shared_expert_hidden, "moe")
    if moe.shared_expert_gate:
        tensors += linear("mlp.shared_gate", (1, d), "mlp", bias=False, blocks="moe")
    return tensors


def top_tensors(cfg: GPTConfig) -> tuple[list[Tensor], list[Tensor]]:
    """The tensors outside the blocks: those before them (embeddings, embedding norm) and those
    after (final norm, OPT's project_out and project_in, the output head)."""
    d, V, e = cfg.n_embd, cfg.vocab_size, cfg.embed_dim
    before = [Tensor("wte.weight", (V, e), "token_embedding")]
    if cfg.position == "learned":
        before.append(Tensor("wpe.weight", (cfg.block_size + cfg.position_offset, d),
                             "position_embedding"))
    if cfg.embedding_norm:
        before += norm("ln_emb", cfg)
    after = norm("ln_f", cfg) if cfg.final_norm else []
    if e != d:  # OPT-350m: a narrower embedding, projected into and out of the residual stream
        after += [Tensor("project_out.weight", (e, d), "lm_head", matmul=True),
                  Tensor("project_in.weight", (d, e), "lm_head", matmul=True)]
    after.append(Tensor("lm_head.weight", (V, e), "lm_head", matmul=True,
                        tied=bool(cfg.tie_embeddings)))
    if cfg.lm_head_bias:
        after.append(Tensor("lm_head.bias", (V,), "lm_head", bias=True))
    return before, after

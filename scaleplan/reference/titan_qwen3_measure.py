"""Measure what torchtitan's Qwen3 model saves for backward, on CPU, with and without TP.

torchtitan 0.3.0 builds its dense Qwen3 (``torchtitan/models/qwen3/__init__.py``,
``_build_qwen3_layers``) as its Llama 3 block with three differences: ``head_dim`` is given
(128 for every flavour, so ``n_head x head_dim`` need not be ``n_embd``; Qwen3-14B has
40 x 128 = 5120 = its dim), ``GQAttention`` gets ``qk_norm`` (an ``RMSNorm`` of ``head_dim``,
eps 1e-6, applied to q and to k per head after the fused ``wqkv`` split and before RoPE,
``torchtitan/models/common/attention.py`` ``GQAttention.forward``) and RoPE is ``CosSinRoPE``
(rotate-half on fp32 copies of q and k, the cached cos/sin rows, ``rope.py``) rather than the
complex one. Its ``lm_head`` is untied (the 14B flavour). Under TP, ``set_qwen3_sharding_config``
(``models/qwen3/sharding.py``) shards the QK norms' inputs on the head dimension and leaves the
rest as Llama 3's plan.

`qwen3_model_config` builds that model with a `GPTConfig`'s widths; `measure_titan` and
`measure_titan_tp` (`scaleplan.reference.titan_measure`, `scaleplan.reference.titan_tp_measure`)
build it for ``qk_norm="head"`` and count what it leaves for backward as they do for Llama 3.

``python -m scaleplan.reference.titan_qwen3_measure --write`` measures `GRID` and writes
``docs/validation/torchtitan-qwen3-memory.json`` (replayed without torch by
tests/test_titan_qwen3_memory.py).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch

from scaleplan.model.config import GPTConfig

__all__ = ["GRID", "JSON_PATH", "QWEN3_NORM_EPS", "QWEN3_ROPE_THETA", "grid", "main",
           "qwen3_model_config"]

JSON_PATH = Path("docs/validation/torchtitan-qwen3-memory.json")
QWEN3_NORM_EPS = 1e-6  # torchtitan/models/qwen3/__init__.py _EPS
QWEN3_ROPE_THETA = 1000000.0  # the 14B flavour's CosSinRoPE theta


def qwen3_model_config(cfg: GPTConfig, attn_backend: str = "flex") -> Any:
    """torchtitan's ``Qwen3Model.Config`` with ``cfg``'s widths (``head_dim`` as given), QK-norm,
    cos/sin RoPE and an untied ``lm_head``; ``attn_backend`` "flex" or "sdpa" as for Llama 3."""
    from scaleplan.reference.titan_measure import import_llama3

    import_llama3()
    common = importlib.import_module("torchtitan.models.common")
    utils = importlib.import_module("torchtitan.models.common.config_utils")
    attention = importlib.import_module("torchtitan.models.common.attention")
    qwen3 = importlib.import_module("torchtitan.models.qwen3.model")
    d, hd = cfg.n_embd, cfg.head_dim
    init = {"weight": torch.nn.init.ones_}
    lin = {"weight": torch.nn.init.normal_}

    def norm(width: int) -> Any:
        return common.RMSNorm.Config(normalized_shape=width, eps=QWEN3_NORM_EPS,
                                     param_init=init)

    inner = (utils.get_attention_config("flex") if attn_backend == "flex"
             else attention.ScaledDotProductAttention.Config())
    rope = common.CosSinRoPE.Config(dim=hd, max_seq_len=cfg.block_size, theta=QWEN3_ROPE_THETA)
    layers = [qwen3.Qwen3TransformerBlock.Config(
        attention_norm=norm(d), ffn_norm=norm(d),
        attention=utils.make_gqa_config(
            dim=d, n_heads=cfg.n_head, n_kv_heads=cfg.n_kv_head, head_dim=hd,
            wqkv_param_init=lin, wo_param_init=lin, inner_attention=inner, fuse_qkv=True,
            rope=rope, qk_norm=norm(hd)),
        feed_forward=utils.make_ffn_config(dim=d, hidden_dim=cfg.mlp_hidden,
                                           w1_param_init=lin, w2w3_param_init=lin),
    ) for _ in range(cfg.n_layer)]
    return qwen3.Qwen3Model.Config(
        dim=d, vocab_size=cfg.vocab_size, norm=norm(d),
        tok_embeddings=common.Embedding.Config(num_embeddings=cfg.vocab_size, embedding_dim=d,
                                               param_init=lin),
        lm_head=common.Linear.Config(in_features=d, out_features=cfg.vocab_size,
                                     param_init=lin),
        layers=layers)


GRID: dict[str, GPTConfig] = {
    # head_dim 32 x 4 heads = 128 != n_embd 96: Qwen3's given head size (its 0.6B/4B/8B/32B
    # flavours also differ from dim / n_heads)
    "qwen3": GPTConfig(n_layer=2, n_head=4, n_kv_head=2, head_dim=32, n_embd=96,
                       mlp_hidden=192, vocab_size=256, block_size=256, bias=False,
                       mlp="swiglu", norm="rmsnorm", position="rope", qk_norm="head",
                       tie_embeddings=False),
}
"""A small Qwen3 shape (GQA, ``head_dim`` other than ``n_embd / n_head``) of the measurements."""


def grid(b: int = 2, s: int = 128) -> list[dict[str, Any]]:
    """Measure every shape of `GRID`: one process, FlexAttention and SDPA, checkpointing none
    and full; and rank 0 of a fake 2-rank TP group (FlexAttention), sequence parallel or not."""
    from scaleplan.reference.titan_measure import measure_titan
    from scaleplan.reference.titan_tp_measure import measure_titan_tp

    rows = []
    for name, cfg in GRID.items():
        for backend in ("flex", "sdpa"):
            for ckpt in ("none", "full"):
                m = measure_titan(cfg, micro_batch_size=b, seq_len=s, checkpointing=ckpt,
                                  attn_backend=backend)
                rows.append({"shape": name, "tensor": 1, **json.loads(m.model_dump_json())})
        for sp in (True, False):
            for ckpt in ("none", "full"):
                t = measure_titan_tp(cfg, tensor=2, micro_batch_size=b, seq_len=s,
                                     checkpointing=ckpt, sequence_parallel=sp)
                rows.append({"shape": name, "attn_backend": "flex",
                             **json.loads(t.model_dump_json())})
    return rows


def main(argv: list[str] | None = None) -> int:
    """``--write``: measure the grid and write the JSON."""
    from scaleplan.reference.titan_measure import report_main

    return report_main("scaleplan.reference.titan_qwen3_measure", JSON_PATH, argv,
                       lambda: {"rows": grid()})


if __name__ == "__main__":
    raise SystemExit(main())

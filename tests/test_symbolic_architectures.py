"""The symbolic view (scaleplan.symbolic.formulas) on issue 18's architectures: the options are
read from the config while the sizes stay symbols.

As in test_symbolic.py, the first test is a plumbing test (the same formula code runs on numbers
and on symbols, so it checks that symbols pass through, not that a coefficient is right); the
value tests after it compare with hand counts of published models."""

from __future__ import annotations

from typing import Any

import pytest

sympy = pytest.importorskip("sympy", reason="scaleplan.symbolic needs sympy (a core dependency)")

from test_architecture_params import CASES, IDS, config_of  # noqa: E402

from scaleplan.errors import ScaleplanError  # noqa: E402
from scaleplan.model.config import GPTConfig  # noqa: E402
from scaleplan.model.params import count_params  # noqa: E402
from scaleplan.model.shapes import block_counts  # noqa: E402
from scaleplan.symbolic.formulas import param_count, symbol  # noqa: E402

FREE = [("n_layer",), ("n_layer", "n_embd"), ("vocab_size", "block_size", "mlp_hidden")]


@pytest.mark.parametrize(("name", "fields", "hand", "model_type", "hf"), CASES, ids=IDS)
def test_symbolic_count_equals_numeric_for_every_option(name: str, fields: dict[str, Any],
                                                        hand: int, model_type: str,
                                                        hf: dict[str, Any]) -> None:
    """Plumbing test: symbols pass through every option's tensors, MoE block counts included."""
    cfg = config_of(fields)
    for free in FREE:
        for scale in (1, 2):
            point = {"n_layer": 2 + 3 * (scale - 1), "n_embd": 32 * scale,
                     "vocab_size": 100 * scale, "block_size": cfg.block_size + scale,
                     "mlp_hidden": cfg.mlp_hidden + scale}
            changes = {k: point[k] for k in free}
            numeric = count_params(cfg.replace(**changes))
            at = {symbol(k): v for k, v in changes.items()}
            for part in ("total", "active", "norms", "mlp", "per_layer"):
                expr = param_count(cfg, free=free, part=part)
                assert int(expr.subs(at)) == getattr(numeric, part), (free, part)


def test_mixtral_in_n_layer_is_the_hand_count() -> None:
    # Per block: attention 4096 x 6144 + 4096 x 4096 = 41,943,040; 8 experts x 3 x 14336 x
    # 4096 = 1,409,286,144; router 32,768; 2 norms 8,192. Outside: wte and lm_head 2 x 32000 x
    # 4096 + final norm 4096 = 262,148,096. Active: 2 of 8 experts, a quarter of 1,409,286,144.
    L = symbol("n_layer")
    cfg = GPTConfig.preset("mixtral-8x7b")
    assert param_count(cfg, free=("n_layer",)) == 1_451_270_144 * L + 262_148_096
    assert param_count(cfg, free=("n_layer",), part="active") == (
        (41_943_040 + 1_409_286_144 // 4 + 32_768 + 8_192) * L + 262_148_096)


def test_deepseek_v3_in_n_layer_keeps_its_three_dense_blocks() -> None:
    # Per block: MLA q_a 1536 x 7168 = 11,010,048, q_b (128 x 192) x 1536 = 37,748,736, kv_a
    # 576 x 7168 = 4,128,768, kv_b (128 x 256) x 512 = 16,777,216, o 7168 x 16384 =
    # 117,440,512, latent norms 1536 + 512, block norms 2 x 7168: 187,121,664. The 3 dense
    # blocks: 3 x 18432 x 7168 = 396,361,728 each; the L - 3 MoE blocks: router 256 x 7168,
    # 256 experts x 3 x 2048 x 7168, shared 3 x 2048 x 7168 = 11,320,164,352. Outside: 2 x
    # 129280 x 7168 + 7168 = 1,853,365,248. At L = 61: 671,026,404,352 (transformers' count).
    L = symbol("n_layer")
    expr = param_count(GPTConfig.preset("deepseek-v3"), free=("n_layer",))
    hand = 187_121_664 * L + 3 * 396_361_728 + (L - 3) * 11_320_164_352 + 1_853_365_248
    assert sympy.expand(expr - hand) == 0
    assert expr.subs(L, 61) == 671_026_404_352


def test_block_counts_of_a_stage_with_symbolic_layers_says_what_to_do() -> None:
    cfg = GPTConfig.preset("deepseek-v3")
    assert block_counts(cfg, layers=4) == {"all": 4, "moe": 4, "dense": 0}
    view = type("View", (), {"n_layer": symbol("n_layer"), "moe": cfg.moe})()
    assert block_counts(view, layers=1)["moe"] == 1  # type: ignore[arg-type]
    with pytest.raises(ScaleplanError, match="keep n_layer numeric"):
        block_counts(view, layers=4)  # type: ignore[arg-type]

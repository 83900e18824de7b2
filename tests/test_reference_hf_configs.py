"""The reference GPT, built from each released config.json of tests/data/hf_configs, holds
exactly the parameters transformers builds for it (expected.json, measured on the meta device by
`scaleplan.reference.hf`): MoE, MLA, QK-norms, sandwich and parallel blocks at real sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scaleplan.errors import ScaleplanError
from scaleplan.model.config import GPTConfig

torch = pytest.importorskip("torch", reason='scaleplan.reference needs torch: pip install '
                                            '"scaleplan[torch]"')

from scaleplan.reference.model import GPT  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "data" / "hf_configs"
EXPECTED: dict[str, dict[str, object]] = json.loads(
    (FIXTURES / "expected.json").read_text(encoding="utf-8"))["counts"]


@pytest.mark.torch
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_reference_model_of_a_released_config_counts_what_transformers_builds(name: str) -> None:
    try:
        cfg = GPTConfig.from_hf(FIXTURES / name)
    except (ScaleplanError, ValueError) as exc:  # a type the loader does not model (yet)
        pytest.skip(f"from_hf refuses {name}: {str(exc)[:120]}")
    with torch.device("meta"):
        model = GPT(cfg, attention="eager" if cfg.attn_softcap is not None else "flash")
    assert sum(p.numel() for p in model.parameters()) == EXPECTED[name]["total"]

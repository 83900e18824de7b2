"""Every entry point, fed random and adversarial input, returns a valid result or raises a
ValueError subclass whose message names the field or the line; never another exception, never a
hang, never code execution."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scaleplan.cli import main
from scaleplan.errors import ConfigFileError
from scaleplan.model.config import GPTConfig
from scaleplan.model.loaders import from_hf, load_nanogpt_config
from scaleplan.model.params import count_params
from scaleplan.model.training_config import TrainingConfig
from scaleplan.planning.batching import grad_accum_steps

ADVERSARIAL = st.one_of(
    st.sampled_from([0, -1, 1, 2, 3, 7, 12, 64, 10**18, -(10**18), 2**63, True, False, None,
                     "12", "", "gelu", 0.5, 12.0, -0.0, float("nan"), float("inf"),
                     float("-inf"), [], {}, [12], b"12"]),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
GPT_FIELDS = sorted(GPTConfig.model_fields)
TRAINING_FIELDS = sorted(TrainingConfig.model_fields)

# HYPOTHESIS_PROFILE=deep: 20x the examples, for a run by hand (fuzz/README.md).
SCALE = {"default": 1, "deep": 20}[os.environ.get("HYPOTHESIS_PROFILE", "default")]


def _expect_result_or_value_error(call: Callable[[], Any], *names: str) -> Any:
    """Run call; a rejection must be a ValueError naming one of ``names``."""
    try:
        return call()
    except ValueError as exc:
        message = str(exc)
        assert any(name in message for name in names), message
        return None


@settings(max_examples=300 * SCALE, deadline=None)
@given(st.dictionaries(st.sampled_from(GPT_FIELDS), ADVERSARIAL, max_size=4))
def test_gpt_config_fields(fields: dict[str, Any]) -> None:
    cfg = _expect_result_or_value_error(lambda: GPTConfig(**fields), *fields, "n_embd", "n_head")
    if cfg is not None:
        pc = count_params(cfg)
        assert type(pc.total) is int and pc.total > 0
        assert sum(pc.components().values()) == pc.total


@settings(max_examples=200 * SCALE, deadline=None)
@given(st.dictionaries(st.sampled_from(TRAINING_FIELDS), ADVERSARIAL, max_size=4))
def test_training_config_fields(fields: dict[str, Any]) -> None:
    t = _expect_result_or_value_error(lambda: TrainingConfig(**fields), *fields)
    if t is not None:
        assert t.tokens_per_step == (t.micro_batch_size * t.seq_len * t.grad_accum_steps
                                     * t.world_size)


def test_counts_stay_exact_at_10_to_15_parameters() -> None:
    # 1000 layers of width 2^20 (one head of 2^20): 12 d^2 per layer is about 1.3e16.
    d, L = 2**20, 1000
    cfg = GPTConfig(n_layer=L, n_head=1, n_embd=d, bias=False, vocab_size=1, block_size=1)
    total = count_params(cfg).total
    assert total == L * (12 * d * d + 2 * d) + 2 * d + d  # + wte (1 x d), wpe (1 x d), ln_f
    assert type(total) is int and total > 2**53  # past the integers a float64 holds exactly


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**12) | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=3),
    max_leaves=10,
)
hf_keys = st.sampled_from(["model_type", "n_embd", "n_head", "n_layer", "n_positions",
                           "vocab_size", "n_inner", "hidden_size", "num_attention_heads",
                           "num_hidden_layers", "num_key_value_heads", "intermediate_size",
                           "head_dim", "tie_word_embeddings", "attention_bias", "mlp_bias",
                           "max_position_embeddings"])


@settings(max_examples=300 * SCALE, deadline=None)
@given(st.dictionaries(hf_keys, json_values, max_size=6),
       st.sampled_from(["gpt2", "llama", "mistral", "qwen2", "gemma", "bert", None]))
def test_from_hf_random_dicts(config: dict[str, Any], model_type: str | None) -> None:
    if model_type is not None:
        config = {**config, "model_type": model_type}
    cfg = _expect_result_or_value_error(lambda: from_hf(config), "model_type", "n_", "Input",
                                        "head", "bias", "mlp", "norm", "dropout")
    if cfg is not None:
        assert count_params(cfg).total > 0


CONFIG_SNIPPETS = st.sampled_from([
    "n_layer = 12", "n_embd = 384", "batch_size = 16", "dropout = 0.1", "bias = True",
    "gradient_accumulation_steps = 5 * 8", "x = 2**19", "block_size = 1024",
    "import os", "from os import system", "os.system('touch pwned')", "__import__('os')",
    "x = ().__class__.__bases__[0].__subclasses__()", "x = lambda: 0", "x = [i for i in 'ab']",
    "x = 10**10**10", "x = 9**9**9", "x = 'a' * 10**9", "x = " + "1+" * 5000 + "1",
    "x = " + "(" * 500 + "1" + ")" * 500, "x = " + "-" * 3000 + "1", "def f(): pass",
    "while True: pass", "n_layer = 0", "n_head = 'twelve'", "exec('1')", "eval('1')",
    "n_layer = 12  # ~125M parameters", "a, b = 1, 2", "x: int = 3", "global x", "x = b'\\x00'",
    "x = 1j", "x = {1: 2}", "x = f'{1}'", "del x", "assert False", "raise SystemExit",
    "x = 1e308 * 1e308", "x = -(2**64)", "n_embd = 10**7",
])


@settings(max_examples=300 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(CONFIG_SNIPPETS | st.text(max_size=40), max_size=6))
def test_nanogpt_config_text(lines: list[str]) -> None:
    text = "\n".join(lines)
    try:
        run = load_nanogpt_config("fuzz.py", text=text)
    except ConfigFileError as exc:
        assert str(exc).startswith("fuzz.py"), exc
    else:
        assert count_params(run.model).total > 0


@settings(max_examples=100 * SCALE, deadline=None)
@given(st.binary(max_size=200))
def test_nanogpt_config_random_bytes(tmp_path_factory: pytest.TempPathFactory,
                                     data: bytes) -> None:
    path = tmp_path_factory.mktemp("cfg") / "random.py"
    path.write_bytes(data)
    try:
        load_nanogpt_config(path)
    except ConfigFileError as exc:
        assert str(path) in str(exc)


def test_nothing_in_a_config_file_is_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    attempts = [f"open({str(marker)!r}, 'w')", f"x = open({str(marker)!r}, 'w')",
                f"import pathlib; pathlib.Path({str(marker)!r}).touch()",
                f"n_layer = (lambda: open({str(marker)!r}, 'w'))()"]
    for text in attempts:
        with pytest.raises(ConfigFileError):
            load_nanogpt_config("evil.py", text=text)
    assert not marker.exists()


@settings(max_examples=200 * SCALE, deadline=None)
@given(ADVERSARIAL, ADVERSARIAL, ADVERSARIAL, ADVERSARIAL)
def test_grad_accum_steps(tokens: Any, mb: Any, seq: Any, ws: Any) -> None:
    steps = _expect_result_or_value_error(lambda: grad_accum_steps(tokens, mb, seq, ws),
                                          "tokens_per_step", "micro_batch_size", "seq_len",
                                          "world_size")
    if steps is not None:
        assert steps * mb * seq * ws == tokens


@settings(max_examples=60 * SCALE, deadline=None)
@given(st.lists(st.sampled_from(["params", "gpt2", "llama-3-8b", "--json", "--help-me", "-x",
                                 "nope.json", "nope.py", "gtp2", "", "\x00", "plan", "--"])
                | st.text(max_size=12), max_size=4))
def test_cli_random_arguments(argv: list[str]) -> None:
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        assert exit_.code in (0, 2)
    else:
        assert status in (0, 2)


def test_cli_output_is_json_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["params", "gpt2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert math.isclose(data["params"]["nanogpt"] / 1e6, 123.653376)

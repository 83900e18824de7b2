"""Loaders: Hugging Face config.json files and nanoGPT config files (parsed, never executed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scaleplan.errors import ConfigFileError, ScaleplanError
from scaleplan.model.config import GPTConfig
from scaleplan.model.loaders import from_hf, load_nanogpt_config
from scaleplan.model.nanogpt_file import parse_size
from scaleplan.model.params import count_params

# The keys that matter from each model's published config.json on the Hugging Face hub.
HF_CONFIGS = {
    "openai-community/gpt2": {
        "model_type": "gpt2", "activation_function": "gelu_new", "n_ctx": 1024, "n_embd": 768,
        "n_head": 12, "n_layer": 12, "n_positions": 1024, "vocab_size": 50257,
    },
    "meta-llama/Llama-2-7b-hf": {
        "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
        "max_position_embeddings": 4096, "num_attention_heads": 32, "num_hidden_layers": 32,
        "num_key_value_heads": 32, "rms_norm_eps": 1e-05, "tie_word_embeddings": False,
        "vocab_size": 32000, "hidden_act": "silu",
    },
    "meta-llama/Meta-Llama-3-8B": {
        "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
        "max_position_embeddings": 8192, "num_attention_heads": 32, "num_hidden_layers": 32,
        "num_key_value_heads": 8, "rope_theta": 500000.0, "tie_word_embeddings": False,
        "vocab_size": 128256, "attention_bias": False,
    },
    "mistralai/Mistral-7B-v0.1": {
        "model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336,
        "max_position_embeddings": 32768, "num_attention_heads": 32, "num_hidden_layers": 32,
        "num_key_value_heads": 8, "sliding_window": 4096, "tie_word_embeddings": False,
        "vocab_size": 32000,
    },
    "Qwen/Qwen2-0.5B": {
        "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
        "max_position_embeddings": 131072, "num_attention_heads": 14, "num_hidden_layers": 24,
        "num_key_value_heads": 2, "tie_word_embeddings": True, "vocab_size": 151936,
    },
    "google/gemma-2b": {
        "model_type": "gemma", "head_dim": 256, "hidden_size": 2048,
        "intermediate_size": 16384, "num_attention_heads": 8, "num_hidden_layers": 18,
        "num_key_value_heads": 1, "vocab_size": 256000, "max_position_embeddings": 8192,
    },
}

# Parameter counts as transformers reports them (sum of numel, tied weights once), from each
# model's Hugging Face page (safetensors metadata) and design.md for the two Llamas.
HF_TOTALS = {
    "openai-community/gpt2": 124_439_808,
    "meta-llama/Llama-2-7b-hf": 6_738_415_616,
    "meta-llama/Meta-Llama-3-8B": 8_030_261_248,
    "mistralai/Mistral-7B-v0.1": 7_241_732_096,
    "Qwen/Qwen2-0.5B": 494_032_768,
    "google/gemma-2b": 2_506_172_416,
}


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_hf_config_counts_match_published(name: str) -> None:
    assert count_params(from_hf(HF_CONFIGS[name])).total == HF_TOTALS[name]


def test_hf_config_from_file_and_via_classmethod(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(HF_CONFIGS["Qwen/Qwen2-0.5B"]))
    cfg = GPTConfig.from_hf(path)
    assert (cfg.qkv_bias, cfg.attn_out_bias, cfg.mlp_bias) == (True, False, False)
    assert from_hf(str(path)) == cfg


def test_hf_absent_keys_take_transformers_defaults() -> None:
    # LlamaConfig(): num_key_value_heads defaults to num_attention_heads, ties off,
    # max_position_embeddings 2048, vocab 32000.
    cfg = from_hf({"model_type": "llama", "num_attention_heads": 16, "hidden_size": 1024})
    assert (cfg.n_kv_head, cfg.tie_embeddings, cfg.block_size, cfg.vocab_size) == (
        16, False, 2048, 32000)
    # GPT2Config(): n_inner None -> 4 * n_embd; tie_word_embeddings True.
    gpt2 = from_hf({"model_type": "gpt2", "n_embd": 256, "n_head": 4})
    assert (gpt2.mlp_hidden, gpt2.tie_embeddings) == (1024, True)
    # attention_bias / mlp_bias where present (Llama option).
    biased = from_hf({"model_type": "llama", "attention_bias": True, "mlp_bias": True,
                      "num_hidden_layers": 1, "hidden_size": 64, "num_attention_heads": 4,
                      "intermediate_size": 128, "vocab_size": 10})
    # per layer: q,k,v,o biases 4*64; mlp gate/up biases 2*128, down 64.
    assert count_params(biased).biases == 4 * 64 + 2 * 128 + 64


def test_hf_unsupported_model_type_lists_supported() -> None:
    with pytest.raises(ScaleplanError, match="model_type 'bert' is not one scaleplan models yet"):
        from_hf({"model_type": "bert"})
    with pytest.raises(ScaleplanError, match="no 'model_type' key; add one of bloom, "):
        from_hf({"hidden_size": 8})


def test_hf_bad_files(tmp_path: Path) -> None:
    broken = tmp_path / "config.json"
    broken.write_text('{"model_type": "llama",')
    with pytest.raises(ConfigFileError, match=r"config.json, line 1: not valid JSON"):
        from_hf(broken)
    with pytest.raises(ConfigFileError, match="cannot read the file"):
        from_hf(tmp_path / "missing.json")
    listing = tmp_path / "list.json"
    listing.write_text("[1, 2]")
    with pytest.raises(ScaleplanError, match="expected a JSON object"):
        from_hf(listing)


SEED_FILE = """\
# Model (~125M parameters) - perfect for 12 GB VRAM
out_dir = 'out-fineweb'
wandb_run_name = 'gpt2-' + 'fineweb'
dataset = 'fineweb'
n_layer = 12
n_head = 12
n_embd = 384
dropout = 0.1
batch_size = 16
block_size = 1024
gradient_accumulation_steps = 2**5  # 16 * 1024 * 32 = 524,288 tokens per step
max_iters = 20000
learning_rate = 6e-4
compile = True
"""


def test_seed_nanogpt_config_is_read_with_its_claim() -> None:
    run = load_nanogpt_config("seed.py", text=SEED_FILE)
    assert (run.model.n_embd, run.model.bias, run.model.vocab_size) == (384, False, 50304)
    assert run.model.dropout == 0.1
    assert run.training.micro_batch_size == 16
    assert run.training.tokens_per_step == 524_288
    assert run.claimed_params == 125_000_000
    assert run.claimed_params_text is not None and "~125M" in run.claimed_params_text
    assert count_params(run.model).nanogpt == 40_560_000
    assert {"out_dir", "wandb_run_name"} <= set(run.ignored)
    assert run.dataset == "fineweb"  # read now: it picks the web-text law for the expected loss


def test_nanogpt_defaults_apply_when_file_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.py"
    path.write_text("# nothing set\n")
    run = load_nanogpt_config(path)
    # nanoGPT train.py: batch_size 12, block_size 1024, gradient_accumulation_steps 5*8,
    # dtype bfloat16 (autocast over fp32 params), bias False, vocab 50304 (padded GPT-2 vocab).
    assert run.training.tokens_per_step == 12 * 1024 * 40
    assert run.training.precision == "bf16-mixed"
    assert (run.model.bias, run.model.vocab_size) == (False, 50304)
    assert run.claimed_params is None


def test_nanogpt_dtype_maps_to_precision() -> None:
    assert load_nanogpt_config("x.py", text="dtype = 'float16'").training.precision == "16-mixed"
    with pytest.raises(ConfigFileError, match="line 1: dtype = 'int8' is not one nanoGPT knows"):
        load_nanogpt_config("x.py", text="dtype = 'int8'")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # nanoGPT's own configs import time: an import is skipped with a note (nothing is run),
        # and the call that would use it is what is refused.
        ("import os\nos.system('touch /tmp/pwned')", r"line 2: an expression statement"),
        ("n_layer = 12\n__import__('os').system('x')", r"line 2: an expression statement"),
        ("n_layer = int('12')", r"line 1: a function call is not allowed"),
        ("n_layer = n_head", r"line 1: the name 'n_head' is not allowed"),
        ("x = ().__class__", r"attribute access is not allowed"),
        ("x = (lambda: 1)", r"a lambda is not allowed"),
        ("x = [1][0]", r"subscripting is not allowed"),
        ("x = 10**10**10", r"exponent 10000000000 is too large"),
        ("x = 10**40", r"more than 30 digits"),
        ("x = 1e308 * 10", r"inf is not a finite number"),
        ("x = 'a' * 10**9", r"arithmetic on 'a' and 1000000000 is not allowed"),
        ("x = 1 / 0", r"arithmetic failed: division by zero"),
        ("a = b = 1", r"only a single name may be assigned"),
        ("if True:\n    n_layer = 1", r"line 1: an if statement is not allowed"),
        ("n_layer = ", r"line 1: not valid Python syntax"),
        ("x = " + "(" * 300 + "1" + ")" * 300, r"(too deeply nested|not valid Python syntax)"),
        ("n_layer = 0", r"line 1: n_layer = 0: Input should be greater than 0"),
        ("batch_size = 'sixteen'", r"batch_size = 'sixteen': Input should be a valid integer"),
        ("n_embd = 500", r"line 1: n_embd=500 is not divisible by n_head=12; try n_embd=504"),
    ],
)
def test_nanogpt_file_rejections_name_the_line(text: str, message: str) -> None:
    with pytest.raises(ConfigFileError, match=message):
        load_nanogpt_config("cfg.py", text=text)


def test_malicious_file_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.py"
    path.write_text(f"n_layer = 2\nopen({str(marker)!r}, 'w').write('x')\n")
    with pytest.raises(ConfigFileError, match="line 2"):
        load_nanogpt_config(path)
    assert not marker.exists()


def test_non_utf8_and_huge_files_are_clear_errors(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.py"
    bad.write_bytes(b"n_layer = 12  # caf\xe9\n")
    with pytest.raises(ConfigFileError, match="not UTF-8 text"):
        load_nanogpt_config(bad)
    huge = tmp_path / "huge.py"
    huge.write_text("x = 1\n" * 300_000)
    with pytest.raises(ConfigFileError, match="larger than any config"):
        load_nanogpt_config(huge)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Model (~125M parameters) - perfect for 12 GB VRAM", 125_000_000),
        ("a 1.5B-parameter model", 1_500_000_000),
        ("a ~350M model", 350_000_000),
        # nanoGPT config/train_gpt2.py: a batch size, not a model size
        ("these make the total batch size be ~0.5M", None),
        ("124M params", 124_000_000),
        ("perfect for 12 GB VRAM", None),
        ("1.5B tokens", None),
    ],
)
def test_size_claims_in_comments(text: str, expected: int | None) -> None:
    assert parse_size(text) == expected


def test_nanogpt_dataset_is_read_with_train_py_default() -> None:
    # nanoGPT's train.py sets dataset = 'openwebtext' before its config file is applied.
    assert load_nanogpt_config("x.py", text="n_layer = 2\n").dataset == "openwebtext"
    assert load_nanogpt_config("x.py", text="dataset = 'shakespeare_char'\n").dataset == \
        "shakespeare_char"
    with pytest.raises(ConfigFileError, match=r"x.py, line 1: dataset = 5 must be the name"):
        load_nanogpt_config("x.py", text="dataset = 5\n")

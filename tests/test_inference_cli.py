"""``scaleplan serve``: the numbers it prints are inference_memory's, max_context's and
max_batch's, and its errors are one line."""

from __future__ import annotations

import json

import pytest

from scaleplan import GPTConfig, inference_memory, max_batch
from scaleplan.cli import main


def test_serve_finds_the_longest_context(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "llama-3-8b", "--gpu", "RTX 4090"]) == 0
    out = capsys.readouterr().out
    assert "KV cache per token: 131,072 bytes" in out
    assert "longest context at batch 1: 8,192 tokens (the model's block_size)" in out
    assert "decode:" in out and "time to first token" in out


def test_serve_json_at_a_context(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "llama-3-8b", "--gpu", "H100 SXM", "--context-len", "4096",
                 "--kv-cache", "fp8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    cfg = GPTConfig.preset("llama-3-8b")
    best = max_batch(cfg, "H100 SXM", context_len=4096, kv_cache="fp8")
    assert report["max_batch"] == report["batch_size"] == best
    assert report["kv_bytes_per_token"] == 65536
    expected = inference_memory(cfg, batch_size=best, context_len=4096, kv_cache="fp8")
    assert report["memory"] == expected.model_dump()
    assert report["fits"] is True


def test_serve_with_both_gives_both_limits(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "gpt2", "--gpu", "RTX 4070", "--batch-size", "4", "--context-len",
                 "512", "--tensor-parallel", "2"]) == 0
    out = capsys.readouterr().out
    assert "longest context at batch 4: 1,024 tokens" in out
    assert "most requests at 512 tokens:" in out
    assert "tensor parallel 2" in out


def test_serve_nothing_fits_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "llama-3-8b", "--gpu", "RTX 4070"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scaleplan: error: nothing fits on RTX 4070")
    assert err.count("\n") == 1

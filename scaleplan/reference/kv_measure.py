"""Measure the KV cache transformers allocates during ``generate``, on CPU.

`measure_kv` builds a tiny model of one family from its ``config.json`` dict
(``AutoModelForCausalLM.from_config``), generates ``new_tokens`` greedy tokens after a prompt
of ``prompt_len`` random ids for ``batch_size`` rows, and sums what the returned
``past_key_values`` holds: ``tensor_bytes`` (numel x element size of every cached key and value
tensor) and ``storage_bytes`` (every distinct storage behind them, counted whole). They differ
for transformers' ``DynamicSlidingWindowLayer``: it keeps a view of the last ``window - 1``
tokens of the ``window`` tokens it concatenated during the step. The cache then covers
``prompt_len + new_tokens - 1`` tokens (the last token generated is never fed back).

`measure_prefill` runs one no-grad prefill forward and records the peak of live activation
bytes (`scaleplan.reference.tracking.LiveBytesTracker`), for
`scaleplan.inference.prefill.prefill_activation_bytes`.

``python -m scaleplan.reference.kv_measure`` measures `CASES` and writes
docs/validation/kv_cache.json (and docs/validation/prefill.json), which
tests/test_kv_cache_golden.py replays without torch against
`scaleplan.inference.kv_cache.kv_cache_bytes` (``sliding_cache="dynamic"`` for the tensors,
``"window"`` for the storages).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["CASES", "KVMeasurement", "PrefillMeasurement", "main", "measure_kv",
           "measure_prefill", "prefill_config", "prefill_grid"]

_TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128,
         "max_position_embeddings": 256}

# name -> a transformers config.json dict (tiny sizes, each family's layout)
CASES: dict[str, dict[str, Any]] = {
    "llama-gqa": {"model_type": "llama", **_TINY},
    "llama-mha": {"model_type": "llama", **_TINY, "num_key_value_heads": 4},
    "qwen2-gqa": {"model_type": "qwen2", **_TINY, "use_sliding_window": False},
    "mistral-sliding": {"model_type": "mistral", **_TINY, "sliding_window": 8, "head_dim": 16},
    "gemma2-alternating": {"model_type": "gemma2", **_TINY, "num_hidden_layers": 4,
                           "head_dim": 16, "sliding_window": 8},
    "gemma3-five-in-six": {"model_type": "gemma3_text", **_TINY, "num_hidden_layers": 6,
                           "head_dim": 16, "sliding_window": 8},
    "gpt2-mha": {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4,
                 "vocab_size": 128, "n_positions": 256, "bos_token_id": 1,
                 "eos_token_id": 1},
    "mixtral-moe": {"model_type": "mixtral", **_TINY, "num_local_experts": 4,
                    "num_experts_per_tok": 2, "sliding_window": None},
    "qwen3-moe": {"model_type": "qwen3_moe", **_TINY, "head_dim": 16, "num_experts": 4,
                  "num_experts_per_tok": 2, "moe_intermediate_size": 32},
    "deepseek-v3-mla": {"model_type": "deepseek_v3", **_TINY, "num_key_value_heads": 4,
                        "q_lora_rank": 48, "kv_lora_rank": 32, "qk_nope_head_dim": 16,
                        "qk_rope_head_dim": 8, "v_head_dim": 16, "n_routed_experts": 4,
                        "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1,
                        "moe_intermediate_size": 32, "first_k_dense_replace": 1},
}

# (batch_size, prompt_len, new_tokens): a context shorter than the windows, and longer
SHAPES = ((1, 5, 2), (2, 12, 7))
DTYPES = ("fp32", "bf16")


class KVMeasurement(BaseModel):
    """The cache transformers held after one ``generate``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    case: str
    config: dict[str, Any]
    dtype: str
    batch_size: int
    prompt_len: int
    new_tokens: int
    context_len: int
    tensor_bytes: int
    storage_bytes: int
    transformers_version: str


def measure_kv(case: str, *, batch_size: int, prompt_len: int, new_tokens: int,
               dtype: str = "fp32", seed: int = 0) -> KVMeasurement:
    """Generate with ``CASES[case]`` and measure its cache (see the module docstring)."""
    import torch
    import transformers

    config = dict(CASES[case])
    torch.manual_seed(seed)
    model = _build(config, None)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    model = model.to(torch_dtype).eval()
    ids = torch.randint(1, config.get("vocab_size", 128), (batch_size, prompt_len))
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False, pad_token_id=0, return_dict_in_generate=True)
    tensors = _cache_tensors(out.past_key_values)
    storages = {int(t.untyped_storage()._cdata): int(t.untyped_storage().nbytes())
                for t in tensors}
    return KVMeasurement(
        case=case, config=config, dtype=dtype, batch_size=batch_size, prompt_len=prompt_len,
        new_tokens=new_tokens, context_len=prompt_len + new_tokens - 1,
        tensor_bytes=sum(t.numel() * t.element_size() for t in tensors),
        storage_bytes=sum(storages.values()), transformers_version=transformers.__version__)


def _build(config: dict[str, Any], attention: str | None) -> Any:
    """``AutoModelForCausalLM.from_config`` of a config.json dict (its ``model_type`` key)."""
    transformers: Any = importlib.import_module("transformers")
    kwargs = {k: v for k, v in config.items() if k != "model_type"}
    if attention is not None:
        kwargs["attn_implementation"] = attention
    hf_cfg = transformers.AutoConfig.for_model(config["model_type"], **kwargs)
    return transformers.AutoModelForCausalLM.from_config(hf_cfg)


def _cache_tensors(cache: Any) -> list[Any]:
    """Every key and value tensor a transformers 5 ``Cache`` holds, layer by layer."""
    tensors = []
    for layer in cache.layers:
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if t is not None and t.numel():
                tensors.append(t)
    return tensors


def grid() -> list[KVMeasurement]:
    """Every case of `CASES` at every shape of `SHAPES` and dtype of `DTYPES`."""
    return [measure_kv(case, batch_size=b, prompt_len=p, new_tokens=n, dtype=d)
            for case in CASES for (b, p, n) in SHAPES for d in DTYPES]


def main(argv: list[str] | None = None) -> int:
    """Measure both grids and write them as JSON (docs/validation/kv_cache.json and
    docs/validation/prefill.json by default)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/validation/kv_cache.json"))
    parser.add_argument("--prefill-out", type=Path,
                        default=Path("docs/validation/prefill.json"))
    args = parser.parse_args(argv)
    for path, rows in ((args.out, grid()), (args.prefill_out, prefill_grid())):
        dumped = [m.model_dump() for m in rows]
        path.write_text(json.dumps(dumped, indent=1) + "\n")
        print(f"wrote {len(dumped)} measurements to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def prefill_config(case: str) -> dict[str, Any]:
    """``CASES[case]`` with the MLP widths of real models (3.5 x hidden for gated MLPs, as Llama
    3 8B's 14,336 / 4,096; 4 x for GPT-2) and room for 1,024 positions: at the tiny cases'
    2 x the norms' fp32 temporaries, not the MLP, would set the peak."""
    config = dict(CASES[case])
    if "intermediate_size" in config:
        config["intermediate_size"] = 7 * config["hidden_size"] // 2
    config["max_position_embeddings" if "n_positions" not in config else "n_positions"] = 1024
    return config


PREFILL_SHAPES = ((1, 64), (1, 512), (2, 256))


def prefill_grid() -> list[PrefillMeasurement]:
    """Every case of `CASES` at every (batch, chunk) of `PREFILL_SHAPES`, in bf16."""
    return [measure_prefill(case, chunk=t, batch_size=b)
            for case in CASES for (b, t) in PREFILL_SHAPES]


class PrefillMeasurement(BaseModel):
    """The peak of live activations in one no-grad prefill forward of transformers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    case: str
    dtype: str
    batch_size: int
    chunk: int
    peak_bytes: int
    attention: str
    transformers_version: str


def measure_prefill(case: str, *, chunk: int, batch_size: int = 1, dtype: str = "bf16",
                    seed: int = 0) -> PrefillMeasurement:
    """Run one no-grad forward of ``batch_size`` prompts of ``chunk`` tokens through
    ``CASES[case]`` (SDPA attention, no cache, ``logits_to_keep=1``: the last position's logits)
    and return the peak bytes of live storages beyond the parameters
    (`scaleplan.reference.tracking.LiveBytesTracker`); SDPA attention where the family has it,
    else eager."""
    import torch
    import transformers

    from scaleplan.reference.tracking import LiveBytesTracker

    config = prefill_config(case)
    torch.manual_seed(seed)
    attention = "sdpa"
    try:
        model = _build(config, attention)
    except ValueError:  # gemma2 (soft-capping) has no SDPA path in transformers 5.25
        attention = "eager"
        model = _build(config, attention)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    model = model.to(torch_dtype).eval()
    ids = torch.randint(1, config.get("vocab_size", 128), (batch_size, chunk))
    tracker = LiveBytesTracker()
    with torch.no_grad(), tracker:
        resident = tracker.add_resident([*model.parameters(), *model.buffers(), ids])
        tracker.set_phase("forward")
        out = model(ids, use_cache=False, logits_to_keep=1)
        del out
    return PrefillMeasurement(case=case, dtype=dtype, batch_size=batch_size, chunk=chunk,
                              peak_bytes=tracker.peak - resident,
                              attention=attention,
                              transformers_version=transformers.__version__)

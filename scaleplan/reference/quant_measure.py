"""Bytes that bitsandbytes and torchao hold for quantized weights, measured on CPU, against
`scaleplan.memory.quantized.quantized_weight_bytes`.

Two kinds of case:

- **models**: a small Hugging Face model (Llama, Qwen2, GPT-2, Mixtral, Qwen3-MoE,
  DeepSeek-V3) with random weights, quantized the way users load one: bitsandbytes through
  ``from_pretrained(..., quantization_config=BitsAndBytesConfig(...))`` (so transformers
  chooses what to replace and what to skip), torchao through ``quantize_`` on every
  ``nn.Linear`` but the ``lm_head`` (what transformers' ``TorchAoConfig`` skips by default;
  in transformers 5.25.0 with torchao 0.14.1 ``TorchAoConfig`` refuses to start here, so
  ``quantize_`` is called directly). ``int4`` uses torchao's CPU packing
  (``int4_packing_format="opaque"``); the default (``"plain"``) needs fbgemm-gpu-genai.
- **linears**: single real-width linear layers (Llama-2-7B's and Llama-3-8B's shapes, and an
  odd one for rounding), one per format and group size.

Bytes are counted per storage: the packed data (``Params4bit``, ``Int8Params``, the
``qdata``/``int_data`` inside torchao's tensor subclasses) as ``quantized``; the quantization
state (``absmax``, ``code``, ``offset``, the nested state's ``absmax`` and ``code``,
``SCB``; the subclasses' ``scale``, ``zero_point``, ``scale_and_zero``) as ``scales``; every
other parameter as ``unquantized``. Buffers (rotary ``inv_freq``) are recorded apart: they are
not weights. A tensor shared by two names (a tied head) is counted once.

``python -m scaleplan.reference.quant_measure`` writes ``docs/validation/quantized_weights.json``,
which ``tests/test_quantized_weights_replay.py`` replays without torch.
"""

from __future__ import annotations

import importlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from scaleplan.memory.quantized import linear_bytes, quantized_weight_bytes
from scaleplan.model.config import GPTConfig

__all__ = [
    "LINEAR_SHAPES",
    "MODEL_CASES",
    "held_bytes",
    "main",
    "measure_all",
    "measure_linear",
    "measure_model",
]

PARTS = ("quantized", "scales", "unquantized")

# Small models with each family's features: GQA (Llama), q/k/v biases (Qwen2), a tied head,
# Conv1D and biases everywhere (GPT-2), routed experts (Mixtral, Qwen3-MoE), MLA with shared
# experts and a dense first block (DeepSeek-V3).
MODEL_CASES: dict[str, dict[str, Any]] = {
    "llama": {"model_type": "llama", "hidden_size": 256, "intermediate_size": 688,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "vocab_size": 1000},
    "qwen2": {"model_type": "qwen2", "hidden_size": 256, "intermediate_size": 512,
              "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2,
              "vocab_size": 1024, "tie_word_embeddings": True},
    "gpt2": {"model_type": "gpt2", "n_embd": 128, "n_layer": 2, "n_head": 4,
             "n_positions": 256, "vocab_size": 1000},
    "mixtral": {"model_type": "mixtral", "hidden_size": 128, "intermediate_size": 256,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "num_local_experts": 4, "num_experts_per_tok": 2, "vocab_size": 512},
    "qwen3_moe": {"model_type": "qwen3_moe", "hidden_size": 128, "intermediate_size": 256,
                  "moe_intermediate_size": 64, "num_hidden_layers": 2,
                  "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
                  "num_experts": 4, "num_experts_per_tok": 2, "vocab_size": 512},
    "deepseek_v3": {"model_type": "deepseek_v3", "hidden_size": 128, "intermediate_size": 256,
                    "moe_intermediate_size": 64, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "num_key_value_heads": 4, "n_routed_experts": 4,
                    "num_experts_per_tok": 2, "n_shared_experts": 1, "first_k_dense_replace": 1,
                    "n_group": 1, "topk_group": 1, "q_lora_rank": 64, "kv_lora_rank": 32,
                    "qk_rope_head_dim": 16, "qk_nope_head_dim": 16, "v_head_dim": 32,
                    "vocab_size": 512},
}

# (out, in): Llama-2-7B's q/o and MLP, Llama-3-8B's k/v and MLP down, and an odd shape whose
# element count is no multiple of 64 (nf4's blocks round up).
LINEAR_SHAPES: tuple[tuple[int, int], ...] = ((4096, 4096), (11008, 4096), (1024, 4096),
                                              (4096, 14336), (1000, 250))

BNB_FORMATS = ("nf4", "nf4-dq", "int8")
TORCHAO_FORMATS = ("int4", "int8", "fp8")


def held_bytes(model: Any) -> dict[str, int]:
    """Bytes ``model`` holds, split into ``quantized``, ``scales``, ``unquantized`` (its
    parameters) and ``buffers``; each storage counted once."""
    out = dict.fromkeys((*PARTS, "buffers"), 0)
    seen: set[int] = set()

    def add(part: str, t: Any) -> None:
        if t is None or (t.data_ptr() in seen and t.numel()):
            return
        seen.add(t.data_ptr())
        out[part] += t.numel() * t.element_size()

    for p in model.parameters():
        for part, t in _pieces(p):
            add(part, t)
    for b in model.buffers():
        add("buffers", b)
    return out


def _pieces(p: Any) -> list[tuple[str, Any]]:
    """(part, plain tensor) of one parameter: bitsandbytes' packed data and quantization
    state, torchao's inner tensors, or the parameter itself."""
    kind = type(p).__name__
    if kind == "Params4bit":
        qs = p.quant_state
        pieces = [("quantized", p.data), ("scales", qs.absmax), ("scales", qs.code)]
        if qs.nested:
            pieces += [("scales", qs.offset), ("scales", qs.state2.absmax),
                       ("scales", qs.state2.code)]
        return pieces
    if kind == "Int8Params":
        return [("quantized", p.data), ("scales", p.SCB)]
    inner = p.data if hasattr(p.data, "__tensor_flatten__") else None
    if inner is None:
        return [("unquantized", p.data)]
    return _flattened(inner)


def _flattened(t: Any) -> list[tuple[str, Any]]:
    if not hasattr(t, "__tensor_flatten__"):
        return [("scales", t)]
    names, _ = t.__tensor_flatten__()
    pieces: list[tuple[str, Any]] = []
    for name in names:
        inner = getattr(t, name)
        if name in ("qdata", "int_data", "packed_weight"):
            pieces.append(("quantized", inner))
        else:
            pieces += _flattened(inner)
    return pieces


def _lib(name: str) -> Any:
    """The module ``name`` (bitsandbytes, torchao, transformers: untyped libraries, imported
    only when measuring)."""
    return importlib.import_module(name)


def _bnb_config(fmt: str) -> Any:
    import torch

    BitsAndBytesConfig = _lib("transformers").BitsAndBytesConfig
    if fmt == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=fmt == "nf4-dq",
                              bnb_4bit_compute_dtype=torch.bfloat16)


def _torchao_config(fmt: str, group_size: int | None) -> Any:
    ao = _lib("torchao.quantization")
    if fmt == "int4":
        return ao.Int4WeightOnlyConfig(group_size=group_size or 128,
                                       int4_packing_format="opaque")
    return ao.Int8WeightOnlyConfig() if fmt == "int8" else ao.Float8WeightOnlyConfig()


def measure_model(case: str, library: str, fmt: str, group_size: int | None = None,
                  saved: dict[str, str] | None = None) -> dict[str, Any]:
    """One model case quantized by ``library`` (``"bitsandbytes"`` or ``"torchao"``): the bytes
    it holds and scaleplan's prediction for the config transformers wrote."""
    import torch

    transformers = _lib("transformers")
    AutoConfig, AutoModelForCausalLM = transformers.AutoConfig, transformers.AutoModelForCausalLM
    hf = dict(MODEL_CASES[case])
    config = AutoConfig.for_model(**hf)
    torch.manual_seed(0)
    if library == "bitsandbytes":
        saved = {} if saved is None else saved
        if case not in saved:
            saved[case] = tempfile.mkdtemp(prefix=f"quant-{case}-")
            AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(
                saved[case])
        model = AutoModelForCausalLM.from_pretrained(
            saved[case], quantization_config=_bnb_config(fmt), device_map="cpu",
            dtype=torch.bfloat16)
    else:
        quantize_ = _lib("torchao.quantization").quantize_
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        head = model.get_output_embeddings()
        quantize_(model, _torchao_config(fmt, group_size),
                  filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and m is not head)
    measured = held_bytes(model)
    cfg = GPTConfig.from_hf(model.config.to_dict())
    return _record(case=case, library=library, weights=fmt, group_size=group_size,
                   hf_config=hf, measured=measured, cfg=cfg)


def measure_linear(shape: tuple[int, int], library: str, fmt: str,
                   group_size: int | None = None) -> dict[str, Any]:
    """One ``nn.Linear`` of ``shape`` (out, in), no bias, quantized alone."""
    import torch

    rows, cols = shape
    torch.manual_seed(0)
    w = torch.randn(rows, cols, dtype=torch.bfloat16)
    module: Any
    if library == "bitsandbytes":
        bnb = _lib("bitsandbytes")
        if fmt == "int8":
            p: Any = bnb.nn.Int8Params(w.half(), requires_grad=False, has_fp16_weights=False)
        else:
            p = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4",
                                  blocksize=group_size or 64,
                                  compress_statistics=fmt == "nf4-dq")
        module = torch.nn.Module()
        module.weight = p.to("cpu")
    else:
        quantize_ = _lib("torchao.quantization").quantize_
        module = torch.nn.Sequential(torch.nn.Linear(cols, rows, bias=False,
                                                     dtype=torch.bfloat16))
        module[0].weight.data.copy_(w)
        quantize_(module, _torchao_config(fmt, group_size))
    data, scales = linear_bytes(fmt, rows, cols, group_size)  # type: ignore[arg-type]
    measured = held_bytes(module)
    predicted = {"quantized": data, "scales": scales, "unquantized": 0}
    return {"kind": "linear", "shape": [rows, cols], "library": library, "weights": fmt,
            "group_size": group_size, "measured": _parts(measured), "predicted": predicted}


def _parts(measured: dict[str, int]) -> dict[str, int]:
    return {k: measured[k] for k in PARTS}


def _record(*, case: str, library: str, weights: str, group_size: int | None,
            hf_config: dict[str, Any], measured: dict[str, int], cfg: GPTConfig
            ) -> dict[str, Any]:
    q = quantized_weight_bytes(cfg, weights, group_size=group_size)  # type: ignore[arg-type]
    return {"kind": "model", "case": case, "library": library, "weights": weights,
            "group_size": group_size, "hf_config": hf_config, "measured": _parts(measured),
            "buffers": measured["buffers"],
            "predicted": {"quantized": q.quantized, "scales": q.scales,
                          "unquantized": q.unquantized}}


def measure_all() -> list[dict[str, Any]]:
    """Every model case by both libraries (GPT-2 by bitsandbytes only: its ``Conv1D`` is no
    ``nn.Linear`` for torchao's ``quantize_``), and every linear shape per format and group
    size."""
    records = []
    saved: dict[str, str] = {}
    for case in MODEL_CASES:
        for fmt in BNB_FORMATS:
            records.append(measure_model(case, "bitsandbytes", fmt, saved=saved))
        if case == "gpt2":
            continue
        for fmt in TORCHAO_FORMATS:
            records.append(measure_model(case, "torchao", fmt))
    for shape in LINEAR_SHAPES:
        for fmt in BNB_FORMATS:
            records.append(measure_linear(shape, "bitsandbytes", fmt))
        for g in (32, 256) if shape == (4096, 4096) else ():
            records.append(measure_linear(shape, "bitsandbytes", "nf4-dq", g))
            records.append(measure_linear(shape, "torchao", "int4", g))
        for fmt in TORCHAO_FORMATS:
            if fmt == "int4" and shape[1] % 128:
                continue  # torchao's int4 needs whole groups along the input
            records.append(measure_linear(shape, "torchao", fmt))
    return records


def main(argv: list[str] | None = None) -> int:
    """Measure every case and write the JSON record (default
    ``docs/validation/quantized_weights.json``)."""
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0] if args else "docs/validation/quantized_weights.json")
    records = measure_all()
    versions = {name: _lib(name).__version__
                for name in ("torch", "transformers", "bitsandbytes", "torchao")}
    path.write_text(json.dumps({"versions": versions, "records": records}, indent=1) + "\n")
    worst = max(abs(_total(r["measured"]) / _total(r["predicted"]) - 1) for r in records)
    print(f"{len(records)} records -> {path}; worst total error {worst:.4%}")
    return 0


def _total(parts: dict[str, int]) -> int:
    return sum(parts[k] for k in PARTS)


if __name__ == "__main__":
    raise SystemExit(main())

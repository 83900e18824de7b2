"""Measure what a Hugging Face transformers model saves for backward, on CPU.

`hf_config` maps a `GPTConfig` to the transformers config of one model family (Llama, Qwen2,
Mistral, Gemma, GPT-2, GPT-NeoX), `measure_hf` builds that model in training mode, runs one
forward with labels (the model's own loss) and records, by storage, every tensor that the
forward leaves for backward, parameters excluded, autocast's low-precision weight copies set
apart: the storages autograd packs (saved-tensor hooks, as `scaleplan.reference.measure` does)
and, with gradient checkpointing (transformers' ``use_reentrant=False`` checkpoint keeps each
block's inputs in its own closure, outside autograd's hooks), every other storage created by the
forward and still alive once the logits are dropped (the block inputs the checkpoint keeps).

``python -m scaleplan.reference.hf_measure --grid`` measures the validation grid and writes
docs/validation/hf-memory.md, comparing `scaleplan.memory.hf_terms.hf_saved_bytes`.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import itertools
import sys
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict

from scaleplan.memory.hf_terms import HF_FAMILIES, HFFamily, hf_saved_bytes
from scaleplan.memory.training import saved_for_backward_bytes
from scaleplan.model.config import GPTConfig
from scaleplan.reference.tracking import (
    LiveBytesTracker,
    SavedTensorsRecorder,
    add_checkpoint_held,
    storage_key,
)

__all__ = ["GRID_SHAPES", "HFMeasurement", "build_hf_model", "grid", "hf_config", "main",
           "measure_hf", "record_forward"]

HFAttention = Literal["sdpa", "eager"]
HFPrecision = Literal["32-true", "bf16-mixed"]


def _common(cfg: GPTConfig) -> dict[str, Any]:
    return {"hidden_size": cfg.n_embd, "intermediate_size": cfg.mlp_hidden,
            "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
            "num_key_value_heads": cfg.n_kv_head, "head_dim": cfg.head_dim,
            "vocab_size": cfg.vocab_size, "max_position_embeddings": cfg.block_size,
            "tie_word_embeddings": cfg.tie_embeddings, "attention_dropout": cfg.dropout}


def hf_config(cfg: GPTConfig, family: HFFamily) -> dict[str, Any]:
    """The transformers ``config.json`` dict (``model_type`` included) for ``cfg`` built as
    ``family``'s modeling code. ``cfg.dropout`` goes to every dropout the family has.

    >>> hf_config(GPTConfig(n_layer=2, n_head=4, n_embd=64, bias=False), "gpt2")["n_inner"]
    256
    """
    p = cfg.dropout
    if family == "gpt2":
        return {"model_type": "gpt2", "n_embd": cfg.n_embd, "n_layer": cfg.n_layer,
                "n_head": cfg.n_head, "n_inner": cfg.mlp_hidden, "n_positions": cfg.block_size,
                "vocab_size": cfg.vocab_size, "activation_function": "gelu_new",
                "resid_pdrop": p, "embd_pdrop": p, "attn_pdrop": p,
                "tie_word_embeddings": cfg.tie_embeddings}
    if family == "gpt_neox":
        return {**_common(cfg), "model_type": "gpt_neox", "hidden_act": "gelu",
                "rotary_pct": cfg.rotary_fraction, "partial_rotary_factor": cfg.rotary_fraction,
                "use_parallel_residual": cfg.parallel != "none", "hidden_dropout": p,
                "attention_bias": cfg.qkv_bias}
    out = {**_common(cfg), "model_type": family}
    if family == "gemma":
        out["hidden_activation"] = "gelu_pytorch_tanh"
    else:
        out["hidden_act"] = "silu"
    if family in ("llama", "mistral", "gemma"):
        out["attention_bias"] = cfg.qkv_bias
    if family == "mistral":
        out["sliding_window"] = cfg.sliding_window
    return out


class HFMeasurement(BaseModel):
    """Saved-for-backward bytes of one transformers forward (with loss), by module."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    family: str
    micro_batch_size: int
    seq_len: int
    precision: str
    attention: str
    checkpointing: bool
    dropout: float
    saved_for_backward: int
    saved_by_module: dict[str, int]
    autocast_weight_copies: int


def build_hf_model(cfg: GPTConfig, family: HFFamily, attention: HFAttention) -> Any:
    """transformers' causal LM of ``family`` for ``cfg`` (random weights, CPU), with
    ``attention`` as its ``attn_implementation``."""
    transformers: Any = importlib.import_module("transformers")
    raw = hf_config(cfg, family)
    model_type = raw.pop("model_type")
    hf_cfg = transformers.AutoConfig.for_model(model_type, **raw)
    hf_cfg._attn_implementation = attention
    return transformers.AutoModelForCausalLM.from_config(hf_cfg, attn_implementation=attention)


def measure_hf(cfg: GPTConfig, family: HFFamily, *, micro_batch_size: int, seq_len: int,
               precision: HFPrecision = "32-true", attention: HFAttention = "sdpa",
               checkpointing: bool = False, seed: int = 0) -> HFMeasurement:
    """Measure one forward + loss of ``family``'s transformers model for ``cfg`` on CPU.

    Args:
        cfg: The model shape (``cfg.dropout`` is every dropout probability).
        family: "llama", "qwen2", "mistral", "gemma", "gpt2" or "gpt_neox".
        micro_batch_size, seq_len: The batch (random token ids; labels = the ids).
        precision: "32-true" or "bf16-mixed" (``torch.autocast("cpu", torch.bfloat16)``).
        attention: transformers' ``attn_implementation``, "sdpa" or "eager".
        checkpointing: ``model.activation_checkpointing_enable()`` (transformers' defaults:
            non-reentrant checkpoint per decoder layer; ``gradient_checkpointing_enable`` before
            5.25, which now forwards to it with a deprecation warning).
    """
    torch.manual_seed(seed)
    model = build_hf_model(cfg, family, attention)
    model.train()
    if checkpointing:  # 5.25 renamed gradient_checkpointing_enable (deprecated, same code)
        enable = getattr(model, "activation_checkpointing_enable", None)
        (enable or model.gradient_checkpointing_enable)()
    by_module, casts = record_forward(model, cfg, micro_batch_size=micro_batch_size,
                                      seq_len=seq_len, precision=precision)
    return HFMeasurement(
        family=family, micro_batch_size=micro_batch_size, seq_len=seq_len, precision=precision,
        attention=attention, checkpointing=checkpointing, dropout=cfg.dropout,
        saved_for_backward=sum(by_module.values()), saved_by_module=by_module,
        autocast_weight_copies=casts)


def record_forward(model: Any, cfg: GPTConfig, *, micro_batch_size: int, seq_len: int,
                   precision: HFPrecision) -> tuple[dict[str, int], int]:
    """(saved-for-backward bytes by module, autocast weight copies) of one forward + loss of a
    transformers causal LM (or a peft model wrapping one) on random token ids, labels = the
    ids: every storage autograd keeps, parameters, buffers and the ids excluded, and what a
    checkpoint holds outside autograd's saved tensors counted as "checkpoint"."""
    params = {storage_key(p) for p in model.parameters()}
    resident = {storage_key(b) for b in model.buffers()} | params
    ids = torch.randint(0, cfg.vocab_size, (micro_batch_size, seq_len))
    resident.add(storage_key(ids))
    tracker = LiveBytesTracker()
    recorder = SavedTensorsRecorder(param_keys=params)
    tracker.on_new_storage = recorder.note_new_storage
    gc.collect()
    with tracker, recorder.recording(model):
        if precision == "bf16-mixed":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(input_ids=ids, labels=ids, use_cache=False)
        else:
            out = model(input_ids=ids, labels=ids, use_cache=False)
        loss = out.loss
        del out
        gc.collect()
        tracker.on_new_storage = None
    by_module, _, casts = recorder.totals()
    add_checkpoint_held(by_module, tracker, recorder, resident, loss)
    del loss
    return by_module, casts


GRID_SHAPES: dict[str, GPTConfig] = {
    "llama": GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=128, mlp_hidden=352,
                       vocab_size=512, block_size=128, bias=False, mlp="swiglu",
                       norm="rmsnorm", position="rope", tie_embeddings=False),
    "qwen2": GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=128, mlp_hidden=352,
                       vocab_size=512, block_size=128, bias=False, qkv_bias=True, mlp="swiglu",
                       norm="rmsnorm", position="rope", tie_embeddings=True),
    "mistral": GPTConfig(n_layer=2, n_head=8, n_kv_head=2, n_embd=128, mlp_hidden=448,
                         vocab_size=512, block_size=128, bias=False, mlp="swiglu",
                         norm="rmsnorm", position="rope", tie_embeddings=False),
    "gemma": GPTConfig(n_layer=2, n_head=4, n_kv_head=1, n_embd=128, head_dim=64,
                       mlp_hidden=512, vocab_size=512, block_size=128, bias=False,
                       mlp="geglu", norm="rmsnorm", position="rope", tie_embeddings=True),
    "gpt2": GPTConfig(n_layer=2, n_head=4, n_embd=128, vocab_size=512, block_size=128),
    "gpt_neox": GPTConfig(n_layer=2, n_head=4, n_embd=128, vocab_size=512, block_size=128,
                          position="rope", rotary_fraction=0.25, parallel="separate_norms",
                          tie_embeddings=False),
}
"""One small model per family (2 layers, d 128), the shapes of the validation grid."""


def grid(families: tuple[str, ...] = HF_FAMILIES, *, b: int = 2, s: int = 48
         ) -> list[dict[str, Any]]:
    """Measure and predict every case of the grid; one row per case."""
    rows = []
    for family, prec, attn, ckpt, p in itertools.product(
            families, ("32-true", "bf16-mixed"), ("sdpa", "eager"), (False, True), (0.0, 0.1)):
        cfg = GRID_SHAPES[family].replace(dropout=p)
        m = measure_hf(cfg, family, micro_batch_size=b, seq_len=s,  # type: ignore[arg-type]
                       precision=prec, attention=attn, checkpointing=ckpt)  # type: ignore[arg-type]
        pred = hf_saved_bytes(cfg, b, s, precision=prec, attention=attn,  # type: ignore[arg-type]
                              checkpointing=ckpt, family=family)  # type: ignore[arg-type]
        nanogpt = sum(saved_for_backward_bytes(
            cfg, micro_batch_size=b, seq_len=s, precision=prec, device="cpu",
            attention="eager" if attn == "eager" else "flash",
            checkpointing="full" if ckpt else "none").values())
        rows.append({"family": family, "precision": prec, "attention": attn,
                     "checkpointing": "full" if ckpt else "none", "dropout": p,
                     "measured": m.saved_for_backward, "predicted": pred,
                     "error": pred / m.saved_for_backward - 1,
                     "nanogpt_error": nanogpt / m.saved_for_backward - 1})
    return rows


def _table(rows: list[dict[str, Any]], b: int, s: int) -> str:
    import transformers

    worst = max(abs(r["error"]) for r in rows)
    old = max(abs(r["nanogpt_error"]) for r in rows)
    lines = [
        "# Hugging Face transformers: saved-for-backward bytes, measured vs predicted", "",
        "Written by `python -m scaleplan.reference.hf_measure --grid`. Each row builds the "
        "family's transformers model (2 layers, d 128; shapes in "
        "`scaleplan.reference.hf_measure.GRID_SHAPES`) in training mode on CPU, runs one "
        f"forward with labels at micro-batch {b} x {s} tokens and counts the unique storages "
        "left for backward (parameters and autocast's weight copies excluded; with "
        "checkpointing, the block inputs the checkpoint keeps). `predicted` is "
        "`scaleplan.memory.hf_terms.hf_saved_bytes`; `nanogpt terms` is today's "
        "`saved_for_backward_bytes` (scaleplan's reference layout, device 'cpu') for the same "
        f"config. torch {torch.__version__}, transformers {transformers.__version__}.", "",
        f"{len(rows)} cases, largest |error| {worst:.2%} (nanoGPT terms: {old:.1%}).", "",
        "| family | precision | attention | checkpointing | dropout | measured | predicted "
        "| error | nanogpt terms |", "|---|---|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['precision']} | {r['attention']} | "
                     f"{r['checkpointing']} | {r['dropout']} | {r['measured']:,} | "
                     f"{r['predicted']:,} | {r['error']:+.2%} | {r['nanogpt_error']:+.1%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``--grid [--out PATH]``: measure the grid and write its table."""
    parser = argparse.ArgumentParser(prog="python -m scaleplan.reference.hf_measure")
    parser.add_argument("--grid", action="store_true", help="measure the validation grid")
    parser.add_argument("--families", nargs="*", default=list(HF_FAMILIES))
    parser.add_argument("--out", default="docs/validation/hf-memory.md")
    args = parser.parse_args(argv)
    if not args.grid:
        parser.print_help()
        return 2
    rows = grid(tuple(args.families))
    text = _table(rows, 2, 48)
    Path(args.out).write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Measure what a peft LoRA model saves for backward, on CPU.

`measure_peft` builds a transformers model for a `GPTConfig` (`scaleplan.reference.hf_measure`'s
``hf_config``), wraps it with ``peft.get_peft_model(LoraConfig(...))`` (the base frozen, the
adapters trainable in fp32, peft's default ``autocast_adapter_dtype=True``), runs one forward
with labels and records, by storage, every tensor the forward leaves for backward: parameters
excluded, autocast's low-precision weight copies set apart, with gradient checkpointing the
block inputs the checkpoint keeps (as `scaleplan.reference.hf_measure.measure_hf` does).

``python -m scaleplan.reference.peft_measure --grid`` measures the validation grid and writes
docs/validation/lora.json and docs/validation/lora-memory.md, comparing
`scaleplan.memory.lora_terms.lora_saved_terms`; ``--qlora`` then appends the QLoRA cases (the
base's linears bitsandbytes' ``Linear4bit``, NF4, quantized on the CPU).
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Literal
from unittest import mock

import torch
from pydantic import BaseModel, ConfigDict

from scaleplan.memory.hf_terms import HFFamily
from scaleplan.memory.lora_terms import lora_saved_terms, lora_weight_copy_bytes
from scaleplan.model.config import GPTConfig
from scaleplan.model.lora import LoRA, adapter_params, fused_qkv
from scaleplan.reference.hf_measure import GRID_SHAPES, hf_config, record_forward

__all__ = [
    "GRID_TARGETS",
    "LORA_FAMILIES",
    "PeftMeasurement",
    "build_peft_model",
    "grid",
    "main",
    "measure_peft",
    "peft_target_modules",
    "predicted",
]

LORA_FAMILIES: tuple[HFFamily, ...] = ("llama", "qwen2", "gpt2")
"""The families of the validation grid (Qwen2 and Mistral share Llama's module names)."""

_SEPARATE = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj",
             "gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
_GPT2 = {"q": "c_attn", "k": "c_attn", "v": "c_attn", "o": "attn.c_proj", "up": "c_fc",
         "down": "mlp.c_proj"}


def peft_target_modules(cfg: GPTConfig, lora: LoRA) -> list[str]:
    """peft's ``target_modules`` for ``lora``'s roles in transformers' modeling code of ``cfg``
    (module-name suffixes: GPT-2's two ``c_proj`` are told apart by their parent).

    >>> peft_target_modules(GPTConfig(), LoRA(rank=4, targets=("q", "k", "v", "o")))
    ['c_attn', 'attn.c_proj']
    """
    names = _GPT2 if fused_qkv(cfg) else _SEPARATE
    return list(dict.fromkeys(names[t] for t in lora.targets))


class PeftMeasurement(BaseModel):
    """Saved-for-backward bytes of one peft LoRA forward (with loss), and its parameters."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    family: str
    micro_batch_size: int
    seq_len: int
    precision: str
    attention: str
    checkpointing: bool
    dropout: float
    rank: int
    targets: list[str]
    lora_dropout: float
    trainable_params: int
    all_params: int
    saved_for_backward: int
    saved_by_module: dict[str, int]
    autocast_weight_copies: int


def _quantize_linears(model: Any, weights: str) -> None:
    """Replace every ``nn.Linear`` but the head by bitsandbytes' ``Linear4bit`` (``weights``
    "nf4" / "nf4-dq": NF4, bf16 compute) or ``Linear8bitLt`` ("int8": LLM.int8, threshold
    6), quantized on the CPU (bitsandbytes 0.50.2 quantizes when moved to a device), as
    transformers' ``BitsAndBytesConfig`` does on a GPU."""
    bnb: Any = importlib.import_module("bitsandbytes")
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is not torch.nn.Linear or name == "lm_head":
                continue
            shape = (child.in_features, child.out_features)
            data = child.weight.data.float()
            if weights == "int8":
                q = bnb.nn.Linear8bitLt(*shape, bias=child.bias is not None,
                                        has_fp16_weights=False, threshold=6.0)
                q.weight = bnb.nn.Int8Params(data, requires_grad=False, has_fp16_weights=False)
            else:
                dq = weights == "nf4-dq"
                q = bnb.nn.Linear4bit(*shape, bias=child.bias is not None,
                                      compute_dtype=torch.bfloat16, quant_type="nf4",
                                      compress_statistics=dq)
                q.weight = bnb.nn.Params4bit(data, requires_grad=False, quant_type="nf4",
                                             compress_statistics=dq)
            if child.bias is not None:
                q.bias = child.bias
            setattr(module, name, q.to("cpu"))


def build_peft_model(cfg: GPTConfig, family: HFFamily, lora: LoRA, *, attention: str = "sdpa",
                     base_weights: str | None = None) -> Any:
    """transformers' ``family`` model for ``cfg`` wrapped by ``peft.get_peft_model`` with
    ``lora`` (works under ``torch.device("meta")`` to count parameters of real widths).
    ``base_weights``: None (as built, fp32), "bf16", or "int8" / "nf4" / "nf4-dq" (a bf16
    model whose linears but the head are bitsandbytes' 8-bit or 4-bit layers)."""
    transformers: Any = importlib.import_module("transformers")
    peft: Any = importlib.import_module("peft")
    raw = hf_config(cfg, family)
    model_type = raw.pop("model_type")
    hf_cfg = transformers.AutoConfig.for_model(model_type, **raw)
    hf_cfg._attn_implementation = attention
    model = transformers.AutoModelForCausalLM.from_config(hf_cfg, attn_implementation=attention)
    if base_weights is not None:  # the frozen base stored in bf16; peft makes adapters fp32
        model = model.to(torch.bfloat16)
    if base_weights in ("int8", "nf4", "nf4-dq"):
        _quantize_linears(model, base_weights)
    config = peft.LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=peft_target_modules(cfg, lora),
                             fan_in_fan_out=family == "gpt2", task_type="CAUSAL_LM")
    # peft 0.21.2 raises ImportError from its torchao dispatcher when torchao < 0.16 is
    # installed (the venv has 0.14.1), even for a plain nn.Linear: tell it torchao is absent.
    with warnings.catch_warnings(), mock.patch(
            "peft.tuners.lora.torchao.is_torchao_available", return_value=False):
        warnings.simplefilter("ignore")  # GPT-2's Conv1D: peft warns about fan_in_fan_out
        return peft.get_peft_model(model, config)


def measure_peft(cfg: GPTConfig, family: HFFamily, lora: LoRA, *, micro_batch_size: int,
                 seq_len: int, precision: Literal["32-true", "bf16-mixed"] = "32-true",
                 attention: Literal["sdpa", "eager"] = "sdpa", checkpointing: bool = False,
                 base_weights: str | None = None, seed: int = 0) -> PeftMeasurement:
    """Measure one forward + loss of the peft-wrapped transformers model for ``cfg`` on CPU.

    Args:
        cfg: The model shape (``cfg.dropout`` is every dropout probability of the base).
        family: "llama", "qwen2", "mistral" or "gpt2".
        lora: rank, targets and ``lora_dropout``.
        micro_batch_size, seq_len: The batch (random token ids; labels = the ids).
        precision: "32-true" or "bf16-mixed" (``torch.autocast("cpu", torch.bfloat16)``).
        attention: transformers' ``attn_implementation``, "sdpa" or "eager".
        checkpointing: transformers' non-reentrant per-layer checkpoint (the peft model's
            ``gradient_checkpointing_enable``; peft does not make the inputs require grad).
        base_weights: the base's storage (`build_peft_model`): None, "bf16", "nf4", "nf4-dq".
    """
    torch.manual_seed(seed)
    model = build_peft_model(cfg, family, lora, attention=attention, base_weights=base_weights)
    model.train()
    if checkpointing:
        base = model.get_base_model()
        enable = getattr(base, "activation_checkpointing_enable", None)
        (enable or base.gradient_checkpointing_enable)()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    every = sum(p.numel() for p in model.parameters())
    by_module, casts = record_forward(model, cfg, micro_batch_size=micro_batch_size,
                                      seq_len=seq_len, precision=precision)
    return PeftMeasurement(
        family=family, micro_batch_size=micro_batch_size, seq_len=seq_len, precision=precision,
        attention=attention, checkpointing=checkpointing, dropout=cfg.dropout, rank=lora.rank,
        targets=list(lora.targets), lora_dropout=lora.dropout, trainable_params=trainable,
        all_params=every, saved_for_backward=sum(by_module.values()), saved_by_module=by_module,
        autocast_weight_copies=casts)


GRID_TARGETS: dict[str, tuple[str, ...]] = {
    "all": ("q", "k", "v", "o", "gate", "up", "down"),
    "qv": ("q", "v"),
}


def _targets(family: str, which: str) -> tuple[str, ...]:
    if family == "gpt2":  # fused c_attn: q, k, v together; a GELU MLP has no gate
        return ("q", "k", "v", "o", "up", "down") if which == "all" else ("q", "k", "v")
    return GRID_TARGETS[which]


def _cases(families: tuple[str, ...]) -> list[tuple[Any, ...]]:
    """(family, precision, attention, checkpointing, lora dropout, targets, bf16 base) of the
    grid: every combination with the base as built (fp32), then a bf16 base under bf16
    autocast for the Llama-like families (``base_weights="bf16"``)."""
    cases: list[tuple[Any, ...]] = [(*c, None) for c in itertools.product(
        families, ("32-true", "bf16-mixed"), ("sdpa", "eager"), (False, True), (0.0, 0.1),
        ("all", "qv"))]
    llama_like = [f for f in families if f != "gpt2"]
    cases += [(f, "bf16-mixed", attn, ckpt, p, which, "bf16") for f, attn, ckpt, p, which
              in itertools.product(llama_like, ("sdpa", "eager"), (False, True), (0.0, 0.1),
                                   ("all", "qv"))]
    return cases


def _qlora_cases(families: tuple[str, ...]) -> list[tuple[Any, ...]]:
    """QLoRA on CPU (bitsandbytes' NF4 and NF4 with double quantization), the Llama-like
    families, bf16 autocast, no dropout."""
    return [(f, "bf16-mixed", attn, ckpt, 0.0, which, base) for f, base, attn, ckpt, which
            in itertools.product([f for f in families if f != "gpt2"], ("nf4", "nf4-dq"),
                                 ("sdpa", "eager"), (False, True), ("all", "qv"))]


def grid(families: tuple[str, ...] = LORA_FAMILIES, *, b: int = 2, s: int = 48,
         rank: int = 8, qlora: bool = False) -> list[dict[str, Any]]:
    """Measure and predict every case of the grid (`_cases`, or with ``qlora`` the
    bitsandbytes cases `_qlora_cases`); one row per case."""
    rows = []
    for family, prec, attn, ckpt, p, which, base in (_qlora_cases if qlora else _cases)(
            families):
        cfg = GPTConfig.model_validate(GRID_SHAPES[family].model_dump())
        lora = LoRA(rank, targets=_targets(family, which), dropout=p)
        m = measure_peft(cfg, family, lora, micro_batch_size=b, seq_len=s, precision=prec,
                         attention=attn, checkpointing=ckpt, base_weights=base)
        ck = "full" if ckpt else "none"
        row: dict[str, Any] = {
            "family": family, "config": cfg.model_dump(mode="json"), "base_weights": base,
            "precision": prec, "attention": attn, "checkpointing": ck, "lora_dropout": p,
            "targets": list(lora.targets), "rank": rank, "micro_batch_size": b, "seq_len": s,
            "measured": m.saved_for_backward, "trainable_params": m.trainable_params,
            "all_params": m.all_params, "autocast_weight_copies": m.autocast_weight_copies}
        rows.append({**row, **predicted(row), "saved_by_module": m.saved_by_module})
    return rows


def predicted(row: dict[str, Any]) -> dict[str, Any]:
    """scaleplan's predictions for one measured row of the grid: saved-for-backward bytes and
    their error, the adapters' parameters, the saved autocast weight copies."""
    cfg = GPTConfig(**row["config"])
    lora = LoRA(row["rank"], targets=tuple(row["targets"]), dropout=row["lora_dropout"])
    base = row["base_weights"]
    terms = lora_saved_terms(cfg, lora, row["micro_batch_size"], row["seq_len"],
                             precision=row["precision"], attention=row["attention"],
                             checkpointing=row["checkpointing"], device="cpu",
                             base_16bit=base is not None)
    pred = sum(terms.values())
    copies = lora_weight_copy_bytes(cfg, lora, row["precision"],
                                    checkpointing=row["checkpointing"], base_copies=base is None)
    return {"predicted": pred, "error": pred / row["measured"] - 1,
            "predicted_trainable": adapter_params(cfg, lora),
            "predicted_weight_copies": copies[0]}


def _table(rows: list[dict[str, Any]]) -> str:
    import peft
    import transformers

    worst = max(abs(r["error"]) for r in rows)
    lines = [
        "# LoRA (peft): saved-for-backward bytes, measured vs predicted", "",
        "Written by `python -m scaleplan.reference.peft_measure --grid`, then `--qlora`. Each "
        "row builds the "
        "family's transformers model (2 layers, d 128; `scaleplan.reference.hf_measure."
        "GRID_SHAPES`), wraps it with `peft.get_peft_model` (rank 8), runs one forward with "
        "labels on CPU at micro-batch 2 x 48 tokens in training mode and counts the unique "
        "storages left for backward (parameters and autocast's weight copies excluded). Rows "
        "with base bf16 load the base in bf16 before wrapping it (`base_weights=\"bf16\"`); "
        "rows with base nf4 / nf4-dq also replace its linears (not the head) by bitsandbytes' "
        "`Linear4bit` (QLoRA), quantized on the CPU by bitsandbytes "
        f"{importlib.import_module('bitsandbytes').__version__}. "
        "`predicted` is `scaleplan.memory.lora_terms.lora_saved_terms`. "
        f"torch {torch.__version__}, transformers {transformers.__version__}, peft "
        f"{peft.__version__}. The rows are in docs/validation/lora.json.", "",
        f"{len(rows)} cases, largest |error| {worst:.2%}.", "",
        "| family | base | precision | attention | checkpointing | lora dropout | targets "
        "| measured | predicted | error |", "|---|---|---|---|---|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['base_weights'] or 'fp32'} | {r['precision']} | "
                     f"{r['attention']} | "
                     f"{r['checkpointing']} | {r['lora_dropout']} | {','.join(r['targets'])} | "
                     f"{r['measured']:,} | {r['predicted']:,} | {r['error']:+.2%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``--grid``: measure the grid, write its JSON and its table."""
    parser = argparse.ArgumentParser(prog="python -m scaleplan.reference.peft_measure")
    parser.add_argument("--grid", action="store_true", help="measure the validation grid")
    parser.add_argument("--repredict", action="store_true",
                        help="recompute --json's predictions from the current code (no "
                        "measurement) and rewrite the JSON and the table")
    parser.add_argument("--qlora", action="store_true",
                        help="measure the bitsandbytes NF4 cases and append them to --json's "
                        "rows (after --grid)")
    parser.add_argument("--families", nargs="*", default=list(LORA_FAMILIES))
    parser.add_argument("--json", default="docs/validation/lora.json")
    parser.add_argument("--out", default="docs/validation/lora-memory.md")
    args = parser.parse_args(argv)
    if not (args.grid or args.qlora or args.repredict):
        parser.print_help()
        return 2
    if args.repredict:
        rows = [{**r, **predicted(r)} for r in json.loads(Path(args.json).read_text())]
    elif args.qlora:
        kept = [r for r in json.loads(Path(args.json).read_text())
                if r["base_weights"] not in ("nf4", "nf4-dq")]
        rows = kept + grid(tuple(args.families), qlora=True)
    else:
        rows = grid(tuple(args.families))
    # one row per line: the file diffs row by row when the grid is measured again
    Path(args.json).write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")
    text = _table(rows)
    Path(args.out).write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Published LoRA / QLoRA GPU memory peaks beside what `scaleplan.training_memory` predicts.

Reads ``scaleplan/data/published_lora.csv`` (one row per published measurement, cited in
``scaleplan/data/published_lora.md``), calls `scaleplan.training_memory` with
``implementation="hf"``, the row's `scaleplan.LoRA` and ``base_weights``, and writes the
comparison as markdown::

    python -m benchmarks.published_lora          # print the page
    python -m benchmarks.published_lora --write  # regenerate docs/validation/published-lora.md

An allocated peak (``torch.cuda.max_memory_allocated``) is compared with ``tensor_peak``.
Nothing is fitted: a row's ``unmodelled`` column names what the run did that the prediction
does not model. A bf16-true run (litgpt's) is predicted under bf16 autocast with a bf16 (or
quantized) base and fp32 adapters, the closest options `training_memory` has.

litgpt's QLoRA runs hold tensors that are not part of a transformers + peft training step: they
come from litgpt's QLoRA set-up and the bitsandbytes release it pins. `litgpt_qlora_terms`
derives each from the code, per operation, and the page shows them in a separate table beside
the prediction (they are not part of `training_memory`).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from benchmarks.published_peaks import figure_bytes
from scaleplan import GPTConfig, LoRA, MemoryBreakdown, training_memory

__all__ = ["CSV_PATH", "DOC_PATH", "TUNE_OPTIONS", "WITHIN", "bnb_saved_inputs",
           "litgpt_adapter_shapes", "litgpt_qlora_terms", "load_rows", "main", "predict",
           "render", "tune_predict"]

ROOT = Path(__file__).resolve().parent.parent
CSV_PATH = ROOT / "scaleplan" / "data" / "published_lora.csv"
DOC_PATH = ROOT / "docs" / "validation" / "published-lora.md"
GIB = 2**30
WITHIN = 0.10  # issue 19's bar for published peaks, shown as a column, not asserted
BF16 = 2  # bytes per bf16 / fp16 element
NF4_BLOCKSIZE = 64  # bitsandbytes' Params4bit default blocksize (one absmax per 64 weights)
ABSMAX_BYTES = 4  # the fp32 absmax of a block, nf4 without double quantization
FP32 = 4  # bytes of layer_norm's saved mean and rstd (fp32 for a bf16 input)
PAGED_MIN_NUMEL = 100_000  # bitsandbytes get_state_buffer: a tensor under 1e5 elements is not paged
ADAMW_STATE_BYTES = 8  # 32-bit PagedAdamW: two fp32 states per element


def load_rows(path: Path = CSV_PATH) -> list[dict[str, str]]:
    """The CSV's rows as strings, column by column."""
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _config(row: dict[str, str]) -> GPTConfig:
    base = GPTConfig.preset(row["model"])
    changes = json.loads(row["config"])
    return GPTConfig(**{**base.model_dump(), **changes}) if changes else base


def predict(row: dict[str, str]) -> MemoryBreakdown:
    """`training_memory` for one published row, with the closest options it has."""
    if row["project"] == "torchtune":
        return tune_predict(row)[0]
    lora = LoRA(int(row["lora_rank"]), alpha=float(row["lora_alpha"]),
                targets=row["lora_targets"], dropout=float(row["lora_dropout"]))
    precision = "bf16-mixed" if row["precision"] == "bf16-true" else row["precision"]
    return training_memory(_config(row), micro_batch_size=int(row["micro_batch"]),
                           seq_len=int(row["seq_len"]), precision=precision,
                           optimizer=row["optimizer"], checkpointing=row["checkpointing"],
                           implementation="hf", lora=lora,
                           base_weights=row["base_weights"] or None)


# The torchtune rows' options beyond the CSV's columns, from the README's reproduce command
# (Optimization flags) and the note above its Memory table ("batch size 2 (without gradient
# accumulation), a dataset packed to sequence length 2048, and torch compile enabled"), with the
# configs' CEWithChunkedOutputLoss. Passed in this order while training_memory accepts them.
TUNE_OPTIONS: dict[str, dict[str, Any]] = {
    "tune-3b-lora-1xa100": {"loss": "chunked", "compile": True, "activation_offload": True},
    "tune-3b-qlora-1xa100": {"loss": "chunked", "compile": True, "activation_offload": True},
    "tune-8b-lora-1x4090": {"loss": "chunked", "compile": True},
    "tune-8b-lora-1xa6000": {"loss": "chunked", "compile": True},
    "tune-8b-qlora-1x4090": {"loss": "chunked", "compile": True},
}


def _tune_config(row: dict[str, str]) -> GPTConfig:
    """A torchtune row's model: ``custom`` with every field in ``config``, or a preset."""
    if row["model"] == "custom":
        return GPTConfig(**json.loads(row["config"]))
    return _config(row)


def tune_predict(row: dict[str, str]) -> tuple[MemoryBreakdown, list[str]]:
    """(`training_memory` with ``implementation="torchtune"`` for a torchtune row, the row's
    options it refused and was run without). An option `training_memory` refuses by name with
    LoRA (``compile``, ``activation_offload``) is dropped and named, so the page shows the eager
    prediction beside what it leaves out; once the option is modelled, the prediction uses it."""
    from scaleplan.errors import ScaleplanError

    lora = LoRA(int(row["lora_rank"]), alpha=float(row["lora_alpha"]),
                targets=row["lora_targets"], dropout=float(row["lora_dropout"]))
    options = dict(TUNE_OPTIONS.get(row["id"], {}))
    dropped: list[str] = []
    while True:
        try:
            return training_memory(
                _tune_config(row), micro_batch_size=int(row["micro_batch"]),
                seq_len=int(row["seq_len"]), precision=row["precision"],
                optimizer=row["optimizer"], checkpointing=row["checkpointing"],
                implementation="torchtune", lora=lora, base_weights=row["base_weights"],
                **options), dropped
        except ScaleplanError as error:
            refused = [k for k in ("compile", "activation_offload") if k in options
                       and k in str(error)]
            if not refused:
                raise
            options.pop(refused[0])
            dropped.append(refused[0])


def bnb_saved_inputs(*, n_layer: int, n_embd: int, attn_out: int, mlp_hidden: int,
                     tokens: int) -> int:
    """Bytes of the bf16 inputs of litgpt's frozen linears that only bitsandbytes keeps.

    bitsandbytes' ``MatMul4Bit.forward`` keeps its input in ``ctx.tensors = (A, B)`` whenever a
    grad is needed (TimDettmers/bitsandbytes@29e3420c, bitsandbytes/autograd/_functions.py,
    class MatMul4Bit; litgpt 0.5.13 finetune/lora.py:144-147 supports only bitsandbytes 0.42.0;
    the venv's 0.50.2 keeps ``(None, B)``, _functions.py:358). A bf16 ``nn.Linear`` with a
    frozen weight does not save its input, so the inputs no other op saves stay alive only in
    QLoRA. In litgpt's model (litgpt/model.py) those are, per layer, the fused qkv input
    (``norm_1``'s output, ``n_embd``), the attention output reshaped for ``proj`` (a copy,
    model.py:571, ``attn_out``), the MLP input (``norm_2``'s output, shared by ``fc_1`` and
    ``fc_2``, ``n_embd``) and ``proj``'s input (``mlp_hidden``); plus the head's input
    (``n_embd``). Measured on litgpt's own LoRA GPT on CPU in tests/test_lora_published.py.

    >>> bnb_saved_inputs(n_layer=2, n_embd=64, attn_out=64, mlp_hidden=176, tokens=32)
    51200
    """
    L = n_layer
    return BF16 * tokens * (L * (2 * n_embd + attn_out + mlp_hidden) + n_embd)


def litgpt_qlora_terms(row: dict[str, str], m: MemoryBreakdown) -> dict[str, int]:
    """Bytes a litgpt QLoRA run holds at its peak beyond the transformers + peft step, per term.

    Empty for a row that is not a litgpt QLoRA run. Each term, from litgpt 0.5.13 and Lightning
    2.6.6 (lightning/fabric/plugins/precision/bitsandbytes.py) as installed:

    * ``saved_inputs``: `bnb_saved_inputs`.
    * ``embedding_swap``: finetune/lora.py:218-228 builds bitsandbytes' ``PagedAdamW`` over
      ``model.parameters()`` (all of them) and then replaces ``wte`` with a ``StableEmbedding``:
      the old bf16 table stays referenced by the optimizer (``V * d * 2``), the new one is
      created after ``mark_only_lora_as_trainable`` (line 212) so it requires grad, is in no
      optimizer and keeps its bf16 gradient from the first backward on (``V * d * 2``, never
      zeroed); its LayerNorm saves its bf16 input and fp32 mean and rstd.
    * ``head_in_nf4``: litgpt's head is a ``LoRALinear`` around ``torch.nn.Linear``
      (litgpt/lora.py:121, 489), which Lightning's plugin replaces with ``_Linear4bit``
      (bitsandbytes.py:130-146): 4-bit storage plus an fp32 absmax per 64 weights, where
      transformers keeps the head in 16 bits (negative).
    * ``head_dequantized``: the backward of the first op, the head, dequantizes its whole weight
      (``MatMul4Bit.backward``: ``dequantize_4bit(B, ctx.state).to(grad_output.dtype)``) into
      the quant state's dtype, fp16 since the plugin quantizes ``weight.to(torch.half)``
      (bitsandbytes.py:343), and copies it to bf16: two ``V * d`` tensors at once, in place of
      the one block of the largest other linear that ``training_memory`` holds in flight.
    * ``paged_optimizer``: ``PagedAdamW`` puts the two fp32 states of every tensor of 10^5
      elements or more (`litgpt_adapter_shapes`) in CUDA managed memory (bitsandbytes
      optimizer.py:383-390, functional.py:91-99), which ``torch.cuda.max_memory_allocated`` does
      not count (negative).

    ``V`` is litgpt's ``padded_vocab_size``, equal to the vocabulary of these presets.
    """
    if row["project"] != "litgpt" or row["base_weights"] != "nf4":
        return {}
    cfg = _config(row)
    V, d, f = cfg.vocab_size, cfg.n_embd, cfg.mlp_hidden
    attn_out = cfg.n_head * cfg.head_dim
    tokens = int(row["micro_batch"]) * int(row["seq_len"])
    head_nf4 = V * d // 2 + V * d // NF4_BLOCKSIZE * ABSMAX_BYTES
    largest_block = max(d * f, d * attn_out)  # transformers' separate q, k, v, o, gate, up, down
    return {
        "saved_inputs": bnb_saved_inputs(n_layer=cfg.n_layer, n_embd=d, attn_out=attn_out,
                                         mlp_hidden=f, tokens=tokens),
        "embedding_swap": 2 * BF16 * V * d + BF16 * tokens * d + 2 * FP32 * tokens,
        "head_in_nf4": head_nf4 - BF16 * V * d,
        "head_dequantized": 2 * BF16 * V * d - BF16 * largest_block,
        "paged_optimizer": -ADAMW_STATE_BYTES * cfg.n_layer * sum(
            rows * cols for rows, cols in litgpt_adapter_shapes(cfg, row)
            if rows * cols >= PAGED_MIN_NUMEL),
    }


def litgpt_adapter_shapes(cfg: GPTConfig, row: dict[str, str]) -> list[tuple[int, int]]:
    """The shapes of one layer's adapter tensors in litgpt, which fuses q, k and v.

    ``LoRAQKVLinear`` (litgpt/lora.py:175) holds one ``lora_A`` of ``r`` rows per enabled
    projection and one ``lora_B`` as tall as the enabled outputs; every other ``LoRALinear``
    holds ``lora_A`` (r, in) and ``lora_B`` (out, r). A LoRA on the head is left out, as
    ``training_memory`` leaves it out.

    >>> cfg = GPTConfig.preset("llama-3-8b")
    >>> litgpt_adapter_shapes(cfg, {"lora_rank": "32", "lora_targets": "q,v"})
    [(64, 4096), (5120, 32)]
    """
    r, targets = int(row["lora_rank"]), row["lora_targets"].split(",")
    d, f, q = cfg.n_embd, cfg.mlp_hidden, cfg.n_head * cfg.head_dim
    kv = (cfg.n_kv_head or cfg.n_head) * cfg.head_dim
    qkv = [size for name, size in (("q", q), ("k", kv), ("v", kv)) if name in targets]
    shapes = [(r * len(qkv), d), (sum(qkv), r)] if qkv else []
    if "o" in targets:
        shapes += [(r, q), (d, r)]
    shapes += [(r, d), (f, r)] * sum(name in targets for name in ("gate", "up"))
    if "down" in targets:
        shapes += [(r, f), (d, r)]
    return shapes


def _compared(row: dict[str, str], m: MemoryBreakdown) -> int:
    if row["figure_kind"] not in ("allocated", "active"):  # torchtune prints the active peak
        raise ValueError(f"{row['id']}: figure_kind {row['figure_kind']!r} is not 'allocated' "
                         "or 'active'")
    return m.tensor_peak


TERMS = ("saved_inputs", "embedding_swap", "head_in_nf4", "head_dequantized", "paged_optimizer")


def _terms_table(rows: list[dict[str, str]]) -> list[str]:
    lines = [
        "", "## litgpt's QLoRA runs: what they hold beyond the step", "",
        "Derived per operation from litgpt 0.5.13, Lightning's `BitsandbytesPrecision` and the "
        "bitsandbytes 0.42.0 that litgpt pins (see `benchmarks.published_lora.litgpt_qlora_terms` "
        "for the file and line of each); not part of `training_memory`, not fitted. GB = 10^9 "
        "bytes.", "",
        "| id | " + " | ".join(TERMS) + " | terms | predicted + terms | published | error "
        f"| within {WITHIN:.0%} |",
        "|---|" + "---:|" * (len(TERMS) + 4) + "---|"]
    for row in rows:
        m = predict(row)
        terms = litgpt_qlora_terms(row, m)
        if not terms:
            continue
        total = m.tensor_peak + sum(terms.values())
        error = total / int(row["figure_bytes"]) - 1
        lines.append(
            f"| {row['id']} | " + " | ".join(f"{terms[t] / 1e9:+.2f}" for t in TERMS)
            + f" | {sum(terms.values()) / 1e9:+.2f} GB | {total / 1e9:.2f} GB "
            f"| {row['figure_published']} | {error:+.1%} "
            f"| {'yes' if abs(error) <= WITHIN else 'no'} |")
    return lines


def _tune_table(rows: list[dict[str, str]]) -> list[str]:
    """The torchtune rows: the options of their setup `training_memory` refused with LoRA (the
    prediction above runs without them) and the moment it peaks at."""
    tune = [row for row in rows if row["project"] == "torchtune"]
    if not tune:
        return []
    lines = ["", "## torchtune's rows: options the prediction runs without", "",
             "`training_memory(..., implementation=\"torchtune\", lora=..., base_weights=...)` "
             "with the row's options (`benchmarks.published_lora.TUNE_OPTIONS`); an option it "
             "refuses with LoRA is dropped and named here, so those predictions are not the "
             "published setup and the error says how far the rest goes.", "",
             "| id | options run | refused, run without | peak moment | weights | saved "
             "| predicted | published | error |", "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for row in tune:
        m, dropped = tune_predict(row)
        ran = {k: v for k, v in TUNE_OPTIONS.get(row["id"], {}).items() if k not in dropped}
        error = m.tensor_peak / int(row["figure_bytes"]) - 1
        lines.append(
            f"| {row['id']} | {', '.join(f'{k}={v!r}' for k, v in ran.items()) or '-'} "
            f"| {', '.join(dropped) or '-'} | {m.peak_moment} | {m.weights / GIB:.2f} GiB "
            f"| {m.saved_for_backward / GIB:.2f} GiB | {m.tensor_peak / GIB:.2f} GiB "
            f"| {row['figure_published']} | {error:+.1%} |")
    return lines


def render(rows: list[dict[str, str]] | None = None) -> str:
    """The page: one line per row, predicted vs published, and the setups."""
    rows = load_rows() if rows is None else rows
    lines = [
        "# Published LoRA / QLoRA peaks vs scaleplan", "",
        "Written by `python -m benchmarks.published_lora --write` from "
        "`scaleplan/data/published_lora.csv` (sources in `scaleplan/data/published_lora.md`). "
        "`predicted` is `training_memory(..., implementation=\"hf\", lora=..., base_weights=...)`"
        "'s `tensor_peak`, compared with the published `torch.cuda.max_memory_allocated`. "
        f"Rows within {WITHIN:.0%} are marked yes. Nothing is fitted.", "",
        "| id | model | LoRA | base | micro-batch x seq | published | predicted | error "
        f"| within {WITHIN:.0%} | not modelled |",
        "|---|---|---|---|---|---:|---:|---:|---|---|"]
    for row in rows:
        m = predict(row)
        published = figure_bytes(row["figure_published"])
        if published != int(row["figure_bytes"]):
            raise ValueError(f"{row['id']}: figure_bytes does not match figure_published")
        error = _compared(row, m) / published - 1
        lines.append(
            f"| {row['id']} | {row['model']} | r {row['lora_rank']} on {row['lora_targets']} "
            f"| {row['base_weights']} | {row['micro_batch']} x {row['seq_len']} "
            f"| {row['figure_published']} | {_compared(row, m) / 1e9:.2f} GB | {error:+.1%} "
            f"| {'yes' if abs(error) <= WITHIN else 'no'} | {row['unmodelled']} |")
    lines += _terms_table(rows)
    lines += _tune_table(rows)
    lines += ["", "## Setups", ""]
    lines += [f"- **{row['id']}**: {row['setup']}. Source: [{row['source_file']}]"
              f"({row['source_url']})." for row in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Print the page, or with ``--write`` regenerate docs/validation/published-lora.md."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.published_lora")
    parser.add_argument("--write", action="store_true", help=f"write {DOC_PATH.name}")
    args: Any = parser.parse_args(argv)
    text = render()
    if args.write:
        DOC_PATH.write_text(text, encoding="utf-8")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

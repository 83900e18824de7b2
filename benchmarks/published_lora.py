"""Published LoRA / QLoRA GPU memory peaks beside what `scaleplan.training_memory` predicts.

Reads ``scaleplan/data/published_lora.csv`` (one row per published measurement, cited in
``scaleplan/data/published_lora.md``), calls `scaleplan.training_memory` with
``implementation="hf"`` (``"litgpt"`` for litgpt's rows), the row's `scaleplan.LoRA` and
``base_weights``, and writes the comparison as markdown::

    python -m benchmarks.published_lora          # print the page
    python -m benchmarks.published_lora --write  # regenerate docs/validation/published-lora.md

An allocated peak (``torch.cuda.max_memory_allocated``) is compared with ``tensor_peak``.
Nothing is fitted: a row's ``unmodelled`` column names what the run did that the prediction
does not model. litgpt's rows are predicted with ``implementation="litgpt"`` (its LoRA model
and QLoRA set-up, `scaleplan.memory.litgpt_lora_terms`); its QLoRA rows ran bitsandbytes
`LITGPT_BNB`, whose 4-bit matmul kept its inputs as a ``ctx`` attribute that outlives
backward: `litgpt_bnb_predict` (`scaleplan.memory.litgpt_lora_states.litgpt_bnb_tensor_peak`)
predicts them, shown in a separate table with `litgpt_bnb_terms` (the installed bitsandbytes,
which `training_memory` models, keeps none). `litgpt_phase_bytes` gives the run's other phases
(loading, validation inside ``fit``) as named columns.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from benchmarks.published_peaks import figure_bytes
from scaleplan import GPTConfig, LoRA, MemoryBreakdown, training_memory
from scaleplan.memory.litgpt_lora_states import litgpt_bnb_tensor_peak, litgpt_lora_model_states
from scaleplan.memory.litgpt_lora_terms import litgpt_bnb_saved_inputs

__all__ = ["CSV_PATH", "DOC_PATH", "LITGPT_BNB", "TUNE_OPTIONS", "WITHIN", "litgpt_bnb_predict",
           "litgpt_bnb_terms", "litgpt_phase_bytes", "litgpt_predict", "load_rows", "main",
           "predict", "render", "tune_predict"]

ROOT = Path(__file__).resolve().parent.parent
CSV_PATH = ROOT / "scaleplan" / "data" / "published_lora.csv"
DOC_PATH = ROOT / "docs" / "validation" / "published-lora.md"
GIB = 2**30
WITHIN = 0.10  # issue 19's bar for published peaks, shown as a column, not asserted


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
    if row["project"] == "litgpt":
        return litgpt_predict(row)
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


def litgpt_predict(row: dict[str, str]) -> MemoryBreakdown:
    """`training_memory` for a litgpt row: ``implementation="litgpt"``, Fabric's precision as
    the run used it, the row's `scaleplan.LoRA` (its targets mapped onto litgpt's switches,
    ``head`` included) and ``base_weights``."""
    lora = _lora(row)
    return training_memory(_config(row), micro_batch_size=int(row["micro_batch"]),
                           seq_len=int(row["seq_len"]), precision=row["precision"],
                           optimizer=row["optimizer"], checkpointing=row["checkpointing"],
                           implementation="litgpt", lora=lora,
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


LITGPT_BNB = "0.42.0"
"""The bitsandbytes litgpt 0.5.13 supports (finetune/lora.py:144-147) and its published QLoRA
rows ran: its ``MatMul4Bit`` keeps each 4-bit linear's input, which the installed 0.50.2 (what
`training_memory` models) does not."""


def _lora(row: dict[str, str]) -> LoRA:
    return LoRA(int(row["lora_rank"]), alpha=float(row["lora_alpha"]),
                targets=row["lora_targets"], dropout=float(row["lora_dropout"]))


def _litgpt_qlora(row: dict[str, str]) -> bool:
    return row["project"] == "litgpt" and row["base_weights"] in ("nf4", "nf4-dq")


def litgpt_bnb_terms(row: dict[str, str], *, after_backward: bool = False) -> dict[str, int]:
    """The inputs a litgpt QLoRA row's 4-bit matmul kept because it ran bitsandbytes
    `LITGPT_BNB` (`scaleplan.memory.litgpt_lora_terms.litgpt_bnb_saved_inputs`): those no
    other operation saves (alive through the step), or with ``after_backward`` all of them (the
    previous step's, alive at the next forward's fp32 cast). Empty for any other row."""
    if not _litgpt_qlora(row):
        return {}
    terms = litgpt_bnb_saved_inputs(_config(row), _lora(row), int(row["micro_batch"]),
                                    int(row["seq_len"]), precision="bf16-true",
                                    after_backward=after_backward)
    return {k: int(v) for k, v in terms.items()}


def litgpt_bnb_predict(row: dict[str, str]) -> tuple[int, str]:
    """(bytes, moment): a litgpt QLoRA row's step as bitsandbytes `LITGPT_BNB` ran it
    (`scaleplan.memory.litgpt_lora_states.litgpt_bnb_tensor_peak`, on a GPU)."""
    return litgpt_bnb_tensor_peak(_config(row), _lora(row), int(row["micro_batch"]),
                                  int(row["seq_len"]), base_weights=row["base_weights"],
                                  device="cuda")


def litgpt_phase_bytes(row: dict[str, str]) -> dict[str, int]:
    """A litgpt row's other phases inside its ``max_memory_allocated`` (GPU, bf16 base or
    ``bnb.nf4``), per operation; they are not training steps, so not `training_memory`'s:

    - ``load``: the model is built on the GPU under ``fabric.init_module`` and the checkpoint
      is read from a CPU mmap (litgpt/utils.py ``load_checkpoint``, ``lazy_load``), so the GPU
      holds the model; under QLoRA each linear is quantized as it is made or loaded
      (lightning/fabric/plugins/precision/bitsandbytes.py:313-351: its bf16 weight and the fp16
      cast ``quantize_4bit`` reads), the largest, the head, adding V d (2 + 2) at most.
    - ``validation``: ``validate`` inside ``fit`` (finetune/lora.py:404-406, 444-456) under
      ``no_grad`` with the step's states, the adapter gradients set to None by ``zero_grad``
      (QLoRA's StableEmbedding gradients stay: no optimizer zeroes them), the training
      ``logits`` list (b s V x 4) and under bitsandbytes 0.42 the graph's kept inputs it holds,
      plus the largest of: the unchunked head's bf16 logits beside its input and (QLoRA) its
      dequantized fp16 and bf16 weight; Fabric's fp32 cast beside the bf16 logits; the fp32
      logits, the sliced copy ``chunked_cross_entropy(..., chunk_size=0)`` reshapes and its
      log-softmax (b (s - 1) V x 4 each). ``generate_example`` after it holds less (a
      batch-1 KV cache and one token's logits).
    """
    cfg, lora, b, s = _config(row), _lora(row), int(row["micro_batch"]), int(row["seq_len"])
    base = row["base_weights"] or None
    qlora = _litgpt_qlora(row)
    W, _, O, _ = litgpt_lora_model_states(cfg, lora, "bf16-true", base, "cuda", None)
    V, d = cfg.vocab_size, cfg.n_embd
    head = V * d * 4 if qlora else 0  # fp16 dequantized + its bf16 copy
    swap_grad = (V * d + 2 * d) * 2 if qlora else 0  # StableEmbedding's, finetune/lora.py:224
    kept = sum(litgpt_bnb_terms(row, after_backward=True).values())
    bsv = b * s * V
    transient = max(b * s * d * 2 + head + bsv * 2, bsv * (2 + 4),
                    bsv * 4 + 2 * b * (s - 1) * V * 4)
    held = bsv * 4  # the training step's fp32 logits list
    return {"load": int(W + head),
            "validation": int(W + O + swap_grad + held + kept + transient)}


def _compared(row: dict[str, str], m: MemoryBreakdown) -> int:
    if row["figure_kind"] not in ("allocated", "active"):  # torchtune prints the active peak
        raise ValueError(f"{row['id']}: figure_kind {row['figure_kind']!r} is not 'allocated' "
                         "or 'active'")
    return litgpt_bnb_predict(row)[0] if _litgpt_qlora(row) else m.tensor_peak


def _bnb_table(rows: list[dict[str, str]]) -> list[str]:
    lines = [
        "", "## litgpt's rows: bitsandbytes " + LITGPT_BNB + ", loading and validation", "",
        "litgpt 0.5.13 supports only bitsandbytes " + LITGPT_BNB + " (its QLoRA rows ran it), "
        "whose `MatMul4Bit.forward` keeps its input as a plain attribute (`ctx.tensors = (A, "
        "B)`); the installed 0.50.2, which `training_memory` models, keeps none. Autograd frees "
        "saved tensors after backward but not a node's attributes, and `fit` holds the graph "
        "through `logits` until the next forward returns (finetune/lora.py:355): so the step "
        "holds its own kept inputs (`kept`: those no adapter already saves) and, during the next "
        "forward, the previous step's (`previous`: all of them); and its forward dequantizes "
        "each 4-bit weight whole (fp16, then a bf16 copy), the head's while its last chunk "
        "runs (`head_forward`). `predicted` is "
        "`scaleplan.memory.litgpt_lora_states.litgpt_bnb_tensor_peak` (per operation, not "
        "fitted; measured on CPU with 0.42's attribute replayed, "
        "docs/validation/litgpt-lora-memory.md). `load` and `validation` are the run's other "
        "phases inside the same `max_memory_allocated` "
        "(`benchmarks.published_lora.litgpt_phase_bytes`): both below the step. "
        "GB = 10^9 bytes.", "",
        "| id | base | training_memory | kept | previous | predicted | moment | load "
        "| validation | published | error |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for row in rows:
        if row["project"] != "litgpt":
            continue
        m = predict(row)
        total = _compared(row, m)
        moment = litgpt_bnb_predict(row)[1] if _litgpt_qlora(row) else m.peak_moment
        kept = sum(litgpt_bnb_terms(row).values())
        before = sum(litgpt_bnb_terms(row, after_backward=True).values())
        phases = litgpt_phase_bytes(row)
        lines.append(f"| {row['id']} | {row['base_weights']} | {m.tensor_peak / 1e9:.2f} GB "
                     f"| {kept / 1e9:.2f} GB | {before / 1e9:.2f} GB | {total / 1e9:.2f} GB "
                     f"| {moment} | {phases['load'] / 1e9:.2f} GB "
                     f"| {phases['validation'] / 1e9:.2f} GB | {row['figure_published']} "
                     f"| {total / int(row['figure_bytes']) - 1:+.1%} |")
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
        "'s `tensor_peak` (`implementation=\"litgpt\"` and Fabric's precision for litgpt's "
        "rows; its QLoRA rows as bitsandbytes 0.42 ran them, `litgpt_bnb_tensor_peak`), "
        "compared with the "
        "published `torch.cuda.max_memory_allocated`. "
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
    lines += _bnb_table(rows)
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

"""Measure litgpt's LoRA / QLoRA fine-tune step (``litgpt/finetune/lora.py``) on CPU.

`litgpt_lora_config` maps a `GPTConfig` and a `LoRA` to ``litgpt.lora.Config``'s keyword
arguments (litgpt 0.5.13 switches adapters per group: ``lora_query``, ``lora_key``,
``lora_value``, ``lora_projection``, ``lora_mlp`` (every MLP linear), ``lora_head``).
`build_litgpt_lora` builds litgpt's own LoRA ``GPT`` (``litgpt/lora.py``) as the script does:
``mark_only_lora_as_trainable``, Fabric's precision (``"32-true"`` fp32; ``"bf16-true"`` every
parameter, adapters included, converted to bf16), and for QLoRA (``base_weights`` "nf4" /
"nf4-dq") every ``torch.nn.Linear`` (the frozen ``linear`` inside each ``LoRALinear``, the head's
included) replaced by bitsandbytes' ``Linear4bit`` holding the weight quantized from its fp16 cast,
as Lightning's ``BitsandbytesPrecision`` does on a GPU (lightning/fabric/plugins/precision/
bitsandbytes.py:343, its ``_NF4Linear`` / ``_NF4DQLinear``; the plugin quantizes only on CUDA, so
the replacement is made here, with bitsandbytes 0.50.2's CPU 4-bit path), then the script's
swap of the token embedding for bitsandbytes' ``StableEmbedding`` (finetune/lora.py:218-228).

`measure_litgpt_lora` runs the script's forward (``model(ids, lm_head_chunk_size=128)``, the last
chunk sliced, ``chunked_cross_entropy`` over the chunks) and records by storage what autograd
saves (`scaleplan.reference.tracking`: parameters excluded). `measure_litgpt_lora_step` measures
the live peak of a whole step (the last micro-batch of gradient accumulation: adapter gradients
and AdamW states resident).

``python -m scaleplan.reference.litgpt_lora_measure --grid`` measures the validation grid and
writes docs/validation/litgpt-lora-memory.md and tests/data/litgpt_lora_memory.json.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import itertools
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from scaleplan.model.config import GPTConfig
from scaleplan.model.lora import LoRA
from scaleplan.reference.litgpt_bnb042 import (
    bnb_042_kept_inputs,
    bnb_042_lines,
    bnb_042_step_grid,
)
from scaleplan.reference.litgpt_measure import GRID_SHAPES, litgpt_config
from scaleplan.reference.tracking import LiveBytesTracker, SavedTensorsRecorder, storage_key

__all__ = ["GRID_LORAS", "LORA_CASES", "STEP_CASES", "build_litgpt_lora", "grid",
           "litgpt_lora_config", "lora_step", "main", "measure_litgpt_lora",
           "measure_litgpt_lora_step", "step_grid"]

HEAD_CHUNK = 128  # finetune/lora.py:355, model(input_ids, lm_head_chunk_size=128)


def litgpt_lora_config(cfg: GPTConfig, lora: LoRA) -> dict[str, Any]:
    """``litgpt.lora.Config`` keyword arguments for ``cfg`` with ``lora``'s adapters.

    >>> kw = litgpt_lora_config(GRID_SHAPES["llama"], LoRA(4, targets=("q", "v")))
    >>> kw["lora_query"], kw["lora_key"], kw["lora_value"], kw["lora_mlp"]
    (True, False, True, False)
    """
    from scaleplan.memory.litgpt_lora_terms import litgpt_lora_switches

    return {**litgpt_config(cfg), "lora_r": lora.rank, "lora_alpha": lora.alpha,
            "lora_dropout": lora.dropout, **litgpt_lora_switches(lora)}


def _quantize(model: Any, base_weights: str) -> None:
    """Every ``torch.nn.Linear`` as bitsandbytes' ``Linear4bit`` (NF4, bf16 compute), the
    weight quantized from its fp16 cast as Lightning's plugin does."""
    bnb: Any = importlib.import_module("bitsandbytes")
    dq = base_weights == "nf4-dq"
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is not torch.nn.Linear:
                continue
            q = bnb.nn.Linear4bit(child.in_features, child.out_features,
                                  bias=child.bias is not None, compute_dtype=torch.bfloat16,
                                  quant_type="nf4", compress_statistics=dq)
            q.weight = bnb.nn.Params4bit(child.weight.data.half(), requires_grad=False,
                                         quant_type="nf4", compress_statistics=dq)
            if child.bias is not None:
                q.bias = child.bias
            setattr(module, name, q.to("cpu"))


def build_litgpt_lora(cfg: GPTConfig, lora: LoRA, *, precision: str = "bf16-true",
                      base_weights: str | None = None, seed: int = 0) -> Any:
    """litgpt's LoRA ``GPT`` for ``cfg`` as ``finetune/lora.py`` sets it up (module docstring),
    in training mode; ``model.max_seq_length`` is left to the caller. For QLoRA the old
    embedding is kept as ``model.old_wte`` (the script's optimizer still holds it)."""
    lit: Any = importlib.import_module("litgpt.lora")
    torch.manual_seed(seed)
    model = lit.GPT(lit.Config(**litgpt_lora_config(cfg, lora)))
    lit.mark_only_lora_as_trainable(model)
    if precision == "bf16-true" or base_weights is not None:
        model = model.to(torch.bfloat16)
    if base_weights is not None:
        bnb: Any = importlib.import_module("bitsandbytes")
        _quantize(model, base_weights)
        # finetune/lora.py:218: PagedAdamW over every parameter, before the swap (on CPU
        # bitsandbytes falls back to ordinary buffers)
        object.__setattr__(model, "bnb_optimizer", bnb.optim.PagedAdamW(model.parameters()))
        old = model.transformer.wte
        new = bnb.nn.StableEmbedding(old.num_embeddings, old.embedding_dim)
        with torch.no_grad():
            new.weight.copy_(old.weight)
        model.transformer.wte = new.to(dtype=old.weight.dtype)
        object.__setattr__(model, "old_wte", old)
    model.train()
    return model


def lora_step(model: Any, ids: torch.Tensor, precision: str,
              on_logits: Callable[[list[torch.Tensor]], None] | None = None
              ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``finetune/lora.py:355-358``: the chunked head, the last chunk sliced, the chunked loss;
    returns the loss and the logits chunks (which ``fit`` holds until the next forward returns).
    Under ``"bf16-true"`` the forward runs with bf16 as torch's default dtype (the
    ``forward_context`` of Fabric's ``HalfPrecision`` and ``BitsandbytesPrecision``), and the
    output goes through their ``convert_output`` (lightning/fabric/wrappers.py:135-138,
    plugins/precision/half.py:62-63, bitsandbytes.py:155-157): every floating tensor of it, each
    logits chunk, cast to the default dtype once the context has exited, fp32. ``on_logits``
    gets the cast list before the loss: ``fit`` binds it to ``logits`` there
    (finetune/lora.py:355), freeing the previous step's list and the graph it held."""
    utils: Any = importlib.import_module("litgpt.utils")
    default = torch.get_default_dtype()
    if precision == "bf16-true":
        torch.set_default_dtype(torch.bfloat16)
    try:
        logits = model(ids, lm_head_chunk_size=HEAD_CHUNK)
    finally:
        torch.set_default_dtype(default)
    logits = [chunk.to(default) for chunk in logits]  # Fabric's convert_output
    if on_logits is not None:
        on_logits(logits)
    logits[-1] = logits[-1][..., :-1, :]
    loss: torch.Tensor = utils.chunked_cross_entropy(logits, ids[..., 1:])
    return loss, logits


def measure_litgpt_lora(cfg: GPTConfig, lora: LoRA, *, micro_batch_size: int, seq_len: int,
                        precision: str = "bf16-true", base_weights: str | None = None,
                        seed: int = 0) -> dict[str, int]:
    """Bytes saved for backward by one forward + chunked loss of litgpt's LoRA step, by
    module (parameters excluded; the rotary cos/sin buffers counted as ``rope_tables``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_litgpt_lora(cfg, lora, precision=precision, base_weights=base_weights,
                                  seed=seed)
    model.max_seq_length = seq_len  # finetune/lora.py:304: the longest batch
    params = {storage_key(p) for p in model.parameters()}
    tables = {storage_key(t): t.untyped_storage().nbytes() for t in (model.cos, model.sin)}
    recorder = SavedTensorsRecorder(param_keys=params | set(tables))
    ids = torch.randint(0, cfg.vocab_size, (micro_batch_size, seq_len))
    gc.collect()
    with recorder.recording(model):
        loss, _ = lora_step(model, ids, precision)
    by_module, _, copies = recorder.totals()
    by_module["rope_tables"] = sum(tables.values())
    del loss
    if copies:
        by_module["casts"] = copies
    return by_module


def measure_litgpt_lora_step(cfg: GPTConfig, lora: LoRA, *, micro_batch_size: int,
                             seq_len: int, precision: str = "bf16-true",
                             base_weights: str | None = None, seed: int = 0,
                             bnb_keeps_input: bool = False) -> tuple[int, int]:
    """(peak, resident) live bytes of one whole step on CPU: forward, chunked loss, backward
    and torch's for-loop AdamW over the trainable parameters (QLoRA: the script's PagedAdamW),
    after a first step made the gradients and states (the last micro-batch of gradient
    accumulation; the previous step's ``logits`` held by the loop until the forward returns,
    as in ``fit``). QLoRA's step holds the replaced embedding (``old_wte``) and the
    new one's gradient, which no optimizer zeroes. ``bnb_keeps_input``: the 4-bit matmul
    keeps its input as bitsandbytes 0.42.0 did (`bnb_042_kept_inputs`); the first step's
    kept inputs stay with its graph (held through ``logits``) and count as resident."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_litgpt_lora(cfg, lora, precision=precision, base_weights=base_weights,
                                  seed=seed)
    model.max_seq_length = seq_len
    trainable = [p for n, p in model.named_parameters() if "lora_" in n]
    opt = model.bnb_optimizer if base_weights else torch.optim.AdamW(trainable, foreach=False)
    ids = torch.randint(0, cfg.vocab_size, (micro_batch_size, seq_len))
    held: list[list[torch.Tensor]] = []

    def step() -> None:
        loss: Any
        # fit's ``logits = model(...)``: the previous list (and its graph) lives until now
        loss, _ = lora_step(model, ids, precision,
                            on_logits=lambda x: held.__setitem__(slice(None), [x]))
        loss.backward()
        opt.step()

    kept: list[torch.Tensor] = []
    with bnb_042_kept_inputs(kept) if bnb_keeps_input else contextlib.nullcontext():
        step()
        gc.collect()
        tracker = LiveBytesTracker()
        tracker.add_resident(kept)
        kept.clear()
        resident = _tracked_step(tracker, model, opt, ids, held, base_weights, step)
    return tracker.peak, resident


def _tracked_step(tracker: LiveBytesTracker, model: Any, opt: Any, ids: torch.Tensor,
                  held: list[list[torch.Tensor]], base_weights: str | None,
                  step: Any) -> int:
    """Register what the step starts with, run it under ``tracker``; the resident bytes."""
    states = [v for st in opt.state.values() for v in st.values() if torch.is_tensor(v)]
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    extra = [model.old_wte.weight] if base_weights is not None else []
    tracker.add_resident([*model.parameters(), *grads, *states, *model.buffers(), ids, *extra,
                          *_quant_states(model), *held[0]])
    resident = tracker.current
    with tracker:
        step()
    return resident


def _quant_states(model: Any) -> list[torch.Tensor]:
    """The tensors of every 4-bit weight's quant state (absmax, the NF4 code; nested: the
    8-bit absmax's own absmax, code and offset): resident, but not parameters."""
    out: list[torch.Tensor] = []
    for p in model.parameters():
        qs = getattr(p, "quant_state", None)
        if qs is None:
            continue
        out += [qs.absmax, qs.code]
        if qs.nested:
            out += [qs.state2.absmax, qs.state2.code, qs.offset]
    return out


GRID_LORAS: dict[str, LoRA] = {
    "qv": LoRA(8, alpha=16, targets=("q", "v")),
    "qv-dropout": LoRA(8, alpha=16, targets=("q", "v"), dropout=0.05),
    "all": LoRA(4, alpha=16, targets=("q", "k", "v", "o", "gate", "up", "down", "head")),
    "all-dropout": LoRA(4, alpha=16, targets=("q", "k", "v", "o", "gate", "up", "down",
                                              "head"), dropout=0.05),
}
"""The adapters of the grid: query and value (litgpt's config_hub default), and every linear
with the head (its TinyLlama configs), without and with dropout 0.05."""

LORA_CASES = tuple(itertools.product(("llama", "tinyllama"), ("32-true", "bf16-true"),
                                     tuple(GRID_LORAS), ((2, 48), (1, 160))))
"""(shape, precision, adapters, (b, s)) of the saved-tensor grid: b 1 with s past one head
chunk."""

STEP_CASES = (("llama", "bf16-true", "qv-dropout", 2, 48, None),
              ("tinyllama", "bf16-true", "all-dropout", 2, 48, None),
              ("tinyllama", "32-true", "all", 1, 160, None),
              ("llama", "bf16-true", "qv-dropout", 2, 48, "nf4"),
              ("tinyllama", "bf16-true", "all-dropout", 2, 48, "nf4"))
"""(shape, precision, adapters, b, s, base_weights) of the whole-step cases."""

def _predict(cfg: GPTConfig, lora: LoRA, b: int, s: int, precision: Any,
             base_weights: str | None) -> int:
    from scaleplan.memory.litgpt_lora_terms import litgpt_lora_saved_terms

    return int(sum(litgpt_lora_saved_terms(cfg, lora, b, s, precision=precision,
                                           base_weights=base_weights).values()))


def grid() -> list[dict[str, Any]]:
    """Measure and predict every `LORA_CASES` case, and the QLoRA cases (bf16-true, nf4)."""
    cases: list[tuple[Any, ...]] = [(*c, None) for c in LORA_CASES]
    cases += [(name, "bf16-true", which, (2, 48), "nf4") for name in ("llama", "tinyllama")
              for which in ("qv-dropout", "all")]
    rows = []
    for name, prec, which, (b, s), base in cases:
        cfg, lora = GRID_SHAPES[name], GRID_LORAS[which]
        m = measure_litgpt_lora(cfg, lora, micro_batch_size=b, seq_len=s, precision=prec,
                                base_weights=base)
        measured = sum(m.values())
        pred = _predict(cfg, lora, b, s, prec, base)
        rows.append({"model": name, "precision": prec, "lora": which,
                     "base_weights": base, "micro_batch_size": b, "seq_len": s,
                     "measured": measured, "predicted": pred, "by_module": m,
                     "error": pred / measured - 1})
    return rows


def step_grid() -> list[dict[str, Any]]:
    """Each `STEP_CASES` step's live peak beside ``training_memory(implementation="litgpt",
    lora=..., device="cpu", optimizer_impl="for-loop")``'s ``tensor_peak``."""
    from scaleplan.memory.training import training_memory

    rows = []
    for name, prec, which, b, s, base in STEP_CASES:
        cfg, lora = GRID_SHAPES[name], GRID_LORAS[which]
        peak, resident = measure_litgpt_lora_step(cfg, lora, micro_batch_size=b, seq_len=s,
                                                  precision=prec, base_weights=base)
        m = training_memory(cfg, micro_batch_size=b, seq_len=s, precision=prec,
                            implementation="litgpt", device="cpu", optimizer_impl="for-loop",
                            lora=lora, base_weights=base)
        rows.append({"model": name, "precision": prec, "lora": which, "base_weights": base,
                     "micro_batch_size": b, "seq_len": s, "measured": peak,
                     "resident": resident, "predicted": m.tensor_peak,
                     "moment": m.peak_moment, "error": m.tensor_peak / peak - 1})
    return rows


def _table(rows: list[dict[str, Any]], steps: list[dict[str, Any]],
           bnb: list[dict[str, Any]]) -> str:
    worst = max(abs(r["error"]) for r in rows)
    lines = [
        "# litgpt LoRA / QLoRA: saved-for-backward bytes and step peaks, measured vs predicted",
        "", "Written by `python -m scaleplan.reference.litgpt_lora_measure --grid`. Each row "
        "builds litgpt 0.5.13's LoRA `GPT` (`litgpt/lora.py`; 2 layers, d 128, shapes in "
        "`scaleplan.reference.litgpt_measure.GRID_SHAPES`) as `litgpt/finetune/lora.py` sets it "
        "up on CPU (QLoRA: every linear, the head's included, bitsandbytes 0.50.2's NF4 "
        "`Linear4bit`, and the script's `StableEmbedding` swap) and runs its step's forward "
        "(`lm_head_chunk_size=128`, the chunks cast to fp32 as Fabric's `convert_output` casts "
        "them, `chunked_cross_entropy`), counting the unique storages "
        "saved for backward (parameters excluded, the rotary tables counted). `predicted` is "
        "`scaleplan.memory.litgpt_lora_terms.litgpt_lora_saved_terms`. "
        f"torch {torch.__version__}.", "",
        f"{len(rows)} cases, largest |error| {worst:.2%}.", "",
        "| model | precision | adapters | base | b | s | measured | predicted | error |",
        "|---|---|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['precision']} | {r['lora']} | {r['base_weights'] or '-'} "
              f"| {r['micro_batch_size']} | {r['seq_len']} | {r['measured']:,} "
              f"| {r['predicted']:,} | {r['error']:+.2%} |" for r in rows]
    worst = max(abs(r["error"]) for r in steps)
    lines += [
        "", "## Whole steps: live peak vs tensor_peak", "",
        "`measure_litgpt_lora_step`: the last micro-batch of gradient accumulation (adapter "
        "gradients and for-loop AdamW states resident, and the previous step's logits until "
        "the forward returns; QLoRA: bitsandbytes' PagedAdamW, its CPU fallback, the replaced "
        "embedding and the new one's gradient), forward, chunked loss on Fabric's fp32 logits, "
        "backward, optimizer step, beside "
        "`training_memory(..., implementation=\"litgpt\", lora=..., device=\"cpu\", "
        f"optimizer_impl=\"for-loop\")`'s `tensor_peak`. {len(steps)} steps, largest |error| "
        f"{worst:.3%}.", "",
        "| model | precision | adapters | base | b | s | measured | predicted | worst moment "
        "| error |", "|---|---|---|---|---:|---:|---:|---:|---|---:|"]
    lines += [f"| {r['model']} | {r['precision']} | {r['lora']} | {r['base_weights'] or '-'} "
              f"| {r['micro_batch_size']} | {r['seq_len']} | {r['measured']:,} "
              f"| {r['predicted']:,} | {r['moment']} | {r['error']:+.3%} |" for r in steps]
    return "\n".join(lines + bnb_042_lines(bnb)) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``--grid [--out PATH] [--json PATH]``: measure the grid, write its table and replay."""
    parser = argparse.ArgumentParser(prog="python -m scaleplan.reference.litgpt_lora_measure")
    parser.add_argument("--grid", action="store_true", help="measure the validation grid")
    parser.add_argument("--out", default="docs/validation/litgpt-lora-memory.md")
    parser.add_argument("--json", default="tests/data/litgpt_lora_memory.json")
    args = parser.parse_args(argv)
    if not args.grid:
        parser.print_help()
        return 2
    rows, steps, bnb = grid(), step_grid(), bnb_042_step_grid()
    text = _table(rows, steps, bnb)
    Path(args.out).write_text(text)
    keys = ("model", "precision", "lora", "base_weights", "micro_batch_size", "seq_len",
            "measured")
    replay = {"saved": [{k: r[k] for k in (*keys, "by_module")} for r in rows],
              "steps": [{k: r[k] for k in keys} for r in steps],
              "bnb_042_steps": [{k: r[k] for k in keys} for r in bnb]}
    Path(args.json).write_text(json.dumps(replay, indent=1) + "\n")
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

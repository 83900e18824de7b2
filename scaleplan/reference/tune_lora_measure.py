"""Measure what torchtune's LoRA / QLoRA models save for backward, on CPU, as its recipe runs.

`build_tune_lora` builds a `GPTConfig` with torchtune 0.6.1's ``lora_llama3_2`` or
``lora_llama3_1`` component builder under ``training.set_default_dtype(torch.bfloat16)``, as
``lora_finetune_single_device`` does (``dtype: bf16``), maps `scaleplan.LoRA`'s targets to
``lora_attn_modules`` / ``apply_lora_to_mlp`` (`tune_lora_modules`), quantizes the base with
``quantize_base=True`` for ``base_weights="nf4"`` (torchao's ``NF4Tensor``) and freezes all but
the adapters with ``set_trainable_params(model, get_adapter_params(model))``.
`measure_tune_lora` runs one forward and the recipe's loss (`scaleplan.reference.tune_measure`'s
``loss_step``; standard or chunked) and records by storage every tensor left for backward:
what autograd packs (parameters, the NF4 weights ``linear_nf4`` saves included, and buffers
excluded) and, with activation checkpointing, every other storage the forward made that is
still alive (the layer inputs). `measure_nf4_dequantize` measures the live bytes of one eager
``linear_nf4`` forward.

``python -m scaleplan.reference.tune_lora_measure --grid`` measures the grid and writes the
JSON replayed by tests/test_tune_lora_memory.py.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import itertools
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from scaleplan.memory.tune_lora_terms import tune_lora_saved_terms
from scaleplan.model.config import GPTConfig
from scaleplan.model.lora import LoRA
from scaleplan.reference.tracking import LiveBytesTracker, storage_key
from scaleplan.reference.tune_measure import (
    GRID_SHAPES,
    loss_step,
    record_saved,
    tune_batch,
    tune_loss_fn,
)

__all__ = [
    "COMPILED_JSON",
    "GRID_JSON",
    "STEPS_JSON",
    "build_tune_lora",
    "compiled_grid",
    "grid",
    "main",
    "measure_nf4_dequantize",
    "measure_tune_lora",
    "measure_tune_lora_compiled",
    "measure_tune_lora_step",
    "resident_tensors",
    "step_grid",
    "tune_lora_modules",
]

GRID_JSON = Path("tests/data/tune_lora_memory.json")
STEPS_JSON = Path("tests/data/tune_lora_steps.json")
COMPILED_JSON = Path("tests/data/tune_lora_compiled.json")
_ATTN = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "output_proj"}


def tune_lora_modules(lora: LoRA) -> tuple[list[str], bool]:
    """(``lora_attn_modules``, ``apply_lora_to_mlp``) of torchtune's builders for ``lora``."""
    attn = [_ATTN[t] for t in lora.targets if t in _ATTN]
    return attn, "gate" in lora.targets


def build_tune_lora(cfg: GPTConfig, family: str, lora: LoRA, *, base_weights: str = "bf16",
                    output_adapter: bool = False) -> Any:
    """torchtune's LoRA ``TransformerDecoder`` for ``cfg``, bf16, adapters the only trainable
    parameters (``max_seq_len`` is ``cfg.block_size``)."""
    training = importlib.import_module("torchtune.training")
    peft = importlib.import_module("torchtune.modules.peft")
    attn, mlp = tune_lora_modules(lora)
    common = {"vocab_size": cfg.vocab_size, "num_layers": cfg.n_layer,
              "num_heads": cfg.n_head, "num_kv_heads": cfg.n_kv_head, "embed_dim": cfg.n_embd,
              "max_seq_len": cfg.block_size, "intermediate_dim": cfg.mlp_hidden,
              "lora_rank": lora.rank, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout,
              "quantize_base": base_weights == "nf4"}
    builder = importlib.import_module(f"torchtune.models.{family}._component_builders")
    with training.set_default_dtype(torch.bfloat16):
        if family == "llama3_2":
            model = builder.lora_llama3_2(attn, mlp, tie_word_embeddings=cfg.tie_embeddings,
                                          **common)
        else:
            model = builder.lora_llama3_1(attn, mlp, output_adapter, **common)
    peft.set_trainable_params(model, peft.get_adapter_params(model))
    return model


def _nf4_inner_keys(model: Any) -> set[int]:
    """Storages inside the NF4 weights (codes, scalers, factors, levels): dequantization views
    them (``quantized_scalers.view(...)``), and a view must not count as a new storage."""
    keys = set()
    for p in model.parameters():
        if hasattr(p, "__tensor_flatten__"):
            names, _ = p.__tensor_flatten__()
            keys |= {storage_key(getattr(p, name)) for name in names}
    return keys


def measure_tune_lora(cfg: GPTConfig, family: str, lora: LoRA, *, micro_batch_size: int,
                      seq_len: int, base_weights: str = "bf16", checkpointing: bool = False,
                      loss: str = "standard", output_adapter: bool = False,
                      seed: int = 0) -> dict[str, Any]:
    """Saved-for-backward bytes of one forward + recipe loss of torchtune's LoRA model for
    ``cfg`` on CPU: ``{"saved_for_backward": total, "by_module": {...}}``."""
    torch.manual_seed(seed)
    model = build_tune_lora(cfg, family, lora, base_weights=base_weights,
                            output_adapter=output_adapter)
    model.train()
    if checkpointing:
        _checkpoint_layers(model)
    loss_fn = tune_loss_fn(model, loss)
    batch = tune_batch(cfg, micro_batch_size, seq_len, False)
    params = {storage_key(p) for p in model.parameters()} | _nf4_inner_keys(model)
    buffers = {storage_key(b) for b in model.buffers()}
    by_module = record_saved(model, loss_fn, batch, params | buffers)
    return {"saved_for_backward": sum(by_module.values()), "by_module": by_module}


def _checkpoint_layers(model: Any) -> None:
    """Wrap every layer of ``model`` in activation checkpointing, as the recipe's
    ``enable_activation_checkpointing`` does."""
    training = importlib.import_module("torchtune.training")
    layer = importlib.import_module("torchtune.modules").TransformerSelfAttentionLayer
    training.set_activation_checkpointing(model, auto_wrap_policy={layer})


def resident_tensors(model: Any) -> list[Any]:
    """The model's storages as they sit in memory: an NF4 weight's inner tensors (its wrapper's
    own storage is a placeholder), every other parameter and buffer."""
    out = []
    for p in [*model.parameters(), *model.buffers()]:
        if hasattr(p, "__tensor_flatten__"):
            out += [getattr(p, name) for name in p.__tensor_flatten__()[0]]
        else:
            out.append(p)
    return out


def measure_tune_lora_step(cfg: GPTConfig, family: str, lora: LoRA, *, micro_batch_size: int,
                           seq_len: int, base_weights: str = "bf16",
                           checkpointing: bool = False, loss: str = "standard",
                           seed: int = 0) -> dict[str, Any]:
    """Live bytes of one step of torchtune's LoRA model on CPU, as ``lora_finetune_single_device``
    runs it with ``gradient_accumulation_steps: 1``: the loss step, ``backward()``, a for-loop
    ``torch.optim.AdamW`` over ``model.parameters()`` and ``zero_grad(set_to_none=True)``, after
    a warm-up step that makes the optimizer states. ``peak_bytes`` counts every live storage
    (weights, adapters' gradients and states, buffers, token ids, activations)."""
    torch.manual_seed(seed)
    model = build_tune_lora(cfg, family, lora, base_weights=base_weights)
    model.train()
    if checkpointing:
        _checkpoint_layers(model)
    loss_fn = tune_loss_fn(model, loss)
    batch = tune_batch(cfg, micro_batch_size, seq_len, False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=False)

    def step() -> None:
        out = loss_step(model, loss_fn, dict(batch))
        out.backward()
        del out
        opt.step()
        opt.zero_grad(set_to_none=True)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")
        step()
        gc.collect()
        states = [v for st in opt.state.values() for v in st.values()
                  if isinstance(v, torch.Tensor)]
        tracker = LiveBytesTracker()
        resident = tracker.add_resident([*resident_tensors(model), *states, batch["tokens"]])
        with tracker:
            step()
    return {"resident": resident, "peak_bytes": tracker.peak}


def measure_tune_lora_compiled(cfg: GPTConfig, family: str, lora: LoRA, *,
                               micro_batch_size: int, seq_len: int, base_weights: str = "bf16",
                               seed: int = 0) -> dict[str, Any]:
    """Saved-for-backward bytes of one forward + chunked loss of torchtune's LoRA model with
    ``compile: True`` as ``lora_finetune_single_device`` sets it up: ``training.compile_model``
    (each layer compiled on its own) and ``training.compile_loss`` on
    ``CEWithChunkedOutputLoss``. Read from the autograd graph
    (`scaleplan.reference.tune_compiled.saved_storages`: each compiled layer's node holds what
    AOT autograd's partition saved); parameters, buffers and the NF4 weights' inner tensors
    excluded. ``{"saved_for_backward": total, "compiled": the compiled nodes' share}``."""
    from scaleplan.reference.tune_compiled import saved_storages

    torch.manual_seed(seed)
    torch._dynamo.reset()
    model = build_tune_lora(cfg, family, lora, base_weights=base_weights)
    model.train()
    loss_fn = tune_loss_fn(model, "chunked")
    batch = tune_batch(cfg, micro_batch_size, seq_len, False)
    skip = {storage_key(t) for t in resident_tensors(model)} | {storage_key(p)
                                                         for p in model.parameters()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dynamo's and inductor's own warnings, not memory
        training = importlib.import_module("torchtune.training")
        training.compile_model(model, verbose=False)
        training.compile_loss(loss_fn, verbose=False)  # in place for the chunked loss
        out = loss_step(model, loss_fn, batch)
    saved = saved_storages(out, skip)
    compiled = sum(n for node, n in saved.values() if "CompiledFunction" in node)
    return {"saved_for_backward": sum(n for _, n in saved.values()), "compiled": compiled}


def compiled_grid() -> list[dict[str, Any]]:
    """Compiled cases (2 x 48 tokens, rank 8, dropout 0, chunked loss): Llama 3.2's small shape
    with q, v / q, v, o and the MLP / every linear, bf16 and NF4."""
    rows = []
    for targets, base in (("qv", "bf16"), ("qv", "nf4"), ("qvo_mlp", "bf16"),
                          ("qvo_mlp", "nf4"), ("all", "bf16")):
        lora = LoRA(8, alpha=16, targets=_TARGETS[targets])
        m = measure_tune_lora_compiled(GRID_SHAPES["llama3_2"], "llama3_2", lora,
                                       micro_batch_size=B, seq_len=S, base_weights=base)
        rows.append({"family": "llama3_2", "targets": targets, "base_weights": base,
                     "dropout": 0.0, "loss": "chunked", "micro_batch_size": B, "seq_len": S,
                     **m})
    return rows


def measure_nf4_dequantize(rows: int, cols: int, tokens: int = 8) -> int:
    """Peak live bytes of one eager ``linear_nf4`` forward on a bf16 input of ``tokens`` rows,
    over what existed before, less its output: the dequantization's transient."""
    nf4 = importlib.import_module("torchao.dtypes.nf4tensor")
    weight = nf4.to_nf4(torch.randn(rows, cols, dtype=torch.bfloat16))
    x = torch.randn(tokens, cols, dtype=torch.bfloat16, requires_grad=True)
    tracker = LiveBytesTracker()
    names, _ = weight.__tensor_flatten__()  # views of these are not new storages
    base = tracker.add_resident([getattr(weight, name) for name in names])
    with tracker:
        y = nf4.linear_nf4(x, weight)
    return int(tracker.peak - base - y.untyped_storage().nbytes())


_TARGETS = {"qv": ("q", "v"), "all": ("q", "k", "v", "o", "gate", "up", "down"),
            "o": ("o",), "qvo_mlp": ("q", "v", "o", "gate", "up", "down")}
B, S = 2, 48


def _case(family: str, targets: str, base: str, dropout: float, ckpt: bool, loss: str,
          output: bool) -> dict[str, Any]:
    cfg = GRID_SHAPES[family]
    lora = LoRA(8, alpha=16, targets=_TARGETS[targets], dropout=dropout)
    m = measure_tune_lora(cfg, family, lora, micro_batch_size=B, seq_len=S, base_weights=base,
                          checkpointing=ckpt, loss=loss, output_adapter=output)
    return {"family": family, "targets": targets, "base_weights": base, "dropout": dropout,
            "checkpointing": "full" if ckpt else "none", "loss": loss, "output_adapter": output,
            "micro_batch_size": B, "seq_len": S, **m}


def grid() -> list[dict[str, Any]]:
    """Every case of the grid (2 x 48 tokens, rank 8): Llama 3.2's tied layout with targets
    q,v / all / o, bf16 and NF4, dropout 0 and 0.05, with and without checkpointing;
    Llama 3.1's untied layout with every linear and the output adapted; a chunked loss."""
    rows = [_case("llama3_2", t, base, p, ckpt, "standard", False)
            for t, base, p, ckpt in itertools.product(("qv", "all", "o"),
                                                       ("bf16", "nf4"), (0.0, 0.05),
                                                       (False, True))]
    rows += [_case("llama3_1", "all", base, p, False, "standard", True)
             for base, p in itertools.product(("bf16", "nf4"), (0.0, 0.05))]
    rows += [_case("llama3_2", "qvo_mlp", "nf4", 0.0, ckpt, "chunked", False)
             for ckpt in (False, True)]
    return rows


def step_grid() -> list[dict[str, Any]]:
    """Whole-step peaks of Llama 3.2's small shape, q, v, o and the MLP adapted: bf16 and NF4,
    with and without checkpointing, standard and chunked loss (2 x 48 tokens, rank 8)."""
    lora = LoRA(8, alpha=16, targets=_TARGETS["qvo_mlp"])
    return [{"family": "llama3_2", "targets": "qvo_mlp", "base_weights": base,
             "checkpointing": "full" if ckpt else "none", "loss": loss,
             "micro_batch_size": B, "seq_len": S,
             **measure_tune_lora_step(GRID_SHAPES["llama3_2"], "llama3_2", lora,
                                      micro_batch_size=B, seq_len=S, base_weights=base,
                                      checkpointing=ckpt, loss=loss)}
            for base, ckpt, loss in itertools.product(("bf16", "nf4"), (False, True),
                                                      ("standard", "chunked"))]


def _predicted(row: dict[str, Any]) -> int:
    from scaleplan.memory.tune_switches import with_chunked_loss

    lora = LoRA(8, alpha=16, targets=_TARGETS[row["targets"]], dropout=row["dropout"])
    terms = tune_lora_saved_terms(GRID_SHAPES[row["family"]], lora, row["micro_batch_size"],
                                  row["seq_len"], checkpointing=row["checkpointing"],
                                  device="cpu", output_adapter=row["output_adapter"],
                                  buffers=False)
    if row["loss"] == "chunked":
        terms = with_chunked_loss(terms, GRID_SHAPES[row["family"]], row["micro_batch_size"],
                                  row["seq_len"], "bf16-true", implementation="torchtune",
                                  compiled=False)
    return int(sum(terms.values()))


def main(argv: list[str] | None = None) -> int:
    """``--grid [--json PATH]``: measure the grid, print measured vs predicted, write JSON."""
    parser = argparse.ArgumentParser(prog="python -m scaleplan.reference.tune_lora_measure")
    parser.add_argument("--grid", action="store_true", help="measure the validation grid")
    parser.add_argument("--json", default=str(GRID_JSON))
    parser.add_argument("--compiled", action="store_true",
                        help="measure compiled cases, write tests/data/tune_lora_compiled.json")
    parser.add_argument("--steps", action="store_true",
                        help="measure whole-step peaks, write tests/data/tune_lora_steps.json")
    args = parser.parse_args(argv)
    if args.compiled:
        COMPILED_JSON.write_text(json.dumps(compiled_grid(), indent=1) + "\n")
        return 0
    if args.steps:
        STEPS_JSON.write_text(json.dumps(step_grid(), indent=1) + "\n")
        return 0
    if not args.grid:
        parser.print_help()
        return 2
    rows = grid()
    dequant = [{"rows": r, "cols": c, "measured": measure_nf4_dequantize(r, c)}
               for r, c in ((512, 256), (256, 512), (128, 256), (1024, 512))]
    for row in rows:
        pred = _predicted(row)
        print(f"{row['family']:9} {row['targets']:8} {row['base_weights']:5} "
              f"p={row['dropout']:<5} {row['checkpointing']:5} {row['loss']:9} "
              f"measured {row['saved_for_backward']:>9,} predicted {pred:>9,} "
              f"{'ok' if pred == row['saved_for_backward'] else 'DIFF'}")
    Path(args.json).write_text(json.dumps({"saved": rows, "nf4_dequantize": dequant},
                                          indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Measure what litgpt's GPT saves for backward in its full fine-tune step, on CPU.

`litgpt_config` maps a `GPTConfig` to the keyword arguments of ``litgpt.Config`` (litgpt 0.5.13:
fused q/k/v, rotary positions, RMSNorm or LayerNorm, LLaMAMLP / GemmaMLP / GptNeoxMLP, parallel
residual). `measure_litgpt` builds ``litgpt.GPT`` in training mode, runs the step of
``litgpt/finetune/full.py`` (``model.max_seq_length`` set to the batch's length, ``logits =
model(input_ids)``, ``chunked_cross_entropy(logits[..., :-1, :], targets[..., 1:])``) under one of
Lightning Fabric's precisions, and records by storage every tensor autograd saves for backward,
parameters excluded (`scaleplan.reference.tracking`). The rotary cos/sin tables are model buffers
that the rotations save: they are counted (the step holds them), as the memory model does.

Fabric's precisions are reproduced without Fabric: ``"32-true"`` fp32 parameters; ``"bf16-true"``
parameters converted to bf16 and the forward run with bf16 as torch's default dtype (Fabric's
``HalfPrecision``); ``"bf16-mixed"`` fp32 parameters and the forward under
``torch.autocast("cpu", torch.bfloat16)`` (Fabric's ``MixedPrecision``). In each case the loss
runs outside the precision context, as in litgpt's script (Fabric wraps only the model's forward),
on the output as Fabric's wrapper returns it: `fabric_output` replays ``convert_output``
(lightning/fabric/wrappers.py:138; plugins/precision/half.py:62-63, amp.py:71-72), which casts
the bf16 logits to torch's default dtype, fp32 (tests/test_litgpt_memory.py checks this against
a real ``Fabric`` on CPU).

``python -m scaleplan.reference.litgpt_measure --grid`` measures the validation grid and writes
docs/validation/litgpt-memory.md and the replay file tests/data/litgpt_memory.json.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import itertools
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict

from scaleplan.memory.litgpt_terms import LitgptPrecision, litgpt_saved_bytes
from scaleplan.model.config import GPTConfig
from scaleplan.reference.tracking import LiveBytesTracker, SavedTensorsRecorder, storage_key

__all__ = ["GRID_SHAPES", "REAL_NAMES", "STEP_CASES", "LitgptMeasurement", "fabric_output",
           "grid", "litgpt_config", "main", "measure_litgpt", "measure_litgpt_step",
           "precision_context", "step_grid"]

_MLP_CLASS = {"swiglu": "LLaMAMLP", "geglu": "GemmaMLP", "gelu": "GptNeoxMLP"}


def litgpt_config(cfg: GPTConfig) -> dict[str, Any]:
    """Keyword arguments of ``litgpt.Config`` for ``cfg`` (rotary positions, pre-norm blocks).

    >>> kw = litgpt_config(GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, bias=False,
    ...                    mlp="swiglu", norm="rmsnorm", position="rope"))
    >>> kw["mlp_class_name"], kw["n_query_groups"], kw["head_size"]
    ('LLaMAMLP', 2, 16)
    """
    # litgpt gives RMSNorm its unit offset (Gemma's 1 + weight) by the config's name
    name = "Gemma-scaleplan" if cfg.mlp == "geglu" else "scaleplan"
    return {"name": name, "block_size": cfg.block_size, "vocab_size": cfg.vocab_size,
            "padded_vocab_size": cfg.vocab_size, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
            "n_embd": cfg.n_embd, "head_size": cfg.head_dim, "n_query_groups": cfg.n_kv_head,
            "intermediate_size": cfg.mlp_hidden, "rotary_percentage": cfg.rotary_fraction,
            "parallel_residual": cfg.parallel != "none",
            "shared_attention_norm": cfg.parallel == "shared_norm",
            "bias": cfg.bias, "attn_bias": bool(cfg.qkv_bias), "lm_head_bias": cfg.lm_head_bias,
            "norm_class_name": "RMSNorm" if cfg.norm == "rmsnorm" else "LayerNorm",
            "mlp_class_name": _MLP_CLASS[cfg.mlp], "gelu_approximate": "tanh",
            "scale_embeddings": cfg.mlp == "geglu", "sliding_window_size": cfg.sliding_window}


class LitgptMeasurement(BaseModel):
    """Saved-for-backward bytes of one litgpt forward + chunked loss, by module."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    micro_batch_size: int
    seq_len: int
    precision: str
    checkpointing: bool
    saved_for_backward: int
    saved_by_module: dict[str, int]
    autocast_weight_copies: int


def fabric_output(logits: torch.Tensor, precision: str) -> torch.Tensor:
    """The model's output as ``_FabricModule.forward`` returns it: under ``"bf16-true"`` and
    ``"bf16-mixed"`` every floating tensor cast to torch's default dtype (fp32) once the
    precision context has exited; ``"32-true"`` leaves it as it is."""
    if precision == "32-true" or not torch.is_floating_point(logits):
        return logits
    return logits.to(torch.get_default_dtype())


@contextlib.contextmanager
def precision_context(precision: str) -> Iterator[None]:
    """Run the code inside as Lightning's precision plugins do on CPU: bf16 autocast for
    "bf16-mixed", bf16 as the default dtype for "bf16-true", nothing for "32-true"."""
    if precision == "bf16-mixed":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield
    elif precision == "bf16-true":
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            yield
        finally:
            torch.set_default_dtype(default)
    else:
        yield


def measure_litgpt(cfg: GPTConfig, *, micro_batch_size: int, seq_len: int,
                   precision: LitgptPrecision = "bf16-true", checkpointing: bool = False,
                   seed: int = 0) -> LitgptMeasurement:
    """Measure one step of litgpt's full fine-tune (forward + chunked loss) for ``cfg`` on CPU.

    Args:
        cfg: The model shape (`litgpt_config`).
        micro_batch_size, seq_len: The batch (random token ids; targets = the ids).
        precision: Fabric's "32-true", "bf16-true" or "bf16-mixed".
        checkpointing: every ``Block`` wrapped as Fabric's FSDP strategy does with
            ``activation_checkpointing_policy={Block}`` (torch's ``checkpoint_wrapper``,
            non-reentrant). The checkpoint keeps each block's inputs in its closure, outside
            autograd's hooks: they are found as the storages the forward created that are still
            alive once the logits are dropped.
    """
    litgpt: Any = importlib.import_module("litgpt")
    utils: Any = importlib.import_module("litgpt.utils")
    torch.manual_seed(seed)
    model = litgpt.GPT(litgpt.Config(**litgpt_config(cfg)))
    if precision == "bf16-true":
        model = model.to(torch.bfloat16)
    model.max_seq_length = seq_len  # finetune/full.py: the longest batch; rebuilds cos/sin
    if checkpointing:
        _wrap_blocks(model, litgpt.model.Block)
    model.train()
    params = {storage_key(p) for p in model.parameters()}
    # the rotary tables are buffers: counted once below whether or not a checkpoint hides them
    tables = {storage_key(t): t.untyped_storage().nbytes() for t in (model.cos, model.sin)}
    ids = torch.randint(0, cfg.vocab_size, (micro_batch_size, seq_len))
    resident = params | {storage_key(b) for b in model.buffers()} | {storage_key(ids)}
    recorder = SavedTensorsRecorder(param_keys=params | set(tables))
    tracker = LiveBytesTracker()
    if precision == "bf16-mixed":  # autocast's weight copies are set apart; bf16 weights'
        tracker.on_new_storage = recorder.note_new_storage  # .float() in RMSNorm is saved
    gc.collect()
    with tracker, recorder.recording(model):
        with precision_context(precision):
            logits = model(ids)
        logits = fabric_output(logits, precision)
        # still noting new storages: one the loss allocates where a freed cast had been is not
        # that cast (a 2-byte bf16 scalar counted as a weight copy made the total flaky)
        loss = utils.chunked_cross_entropy(logits[..., :-1, :], ids[..., 1:])
        tracker.on_new_storage = None
        del logits
        gc.collect()
    casts = recorder.cast_keys
    by_module, _, copies = recorder.totals()
    by_module["rope_tables"] = sum(tables.values())
    held = {k: n for k, n in tracker.live.items()
            if k not in resident and k not in recorder.by_storage and k != storage_key(loss)
            and k not in casts}
    if held:
        by_module["checkpoint"] = sum(held.values())
    del loss
    return LitgptMeasurement(micro_batch_size=micro_batch_size, seq_len=seq_len,
                             precision=precision, checkpointing=checkpointing,
                             saved_for_backward=sum(by_module.values()),
                             saved_by_module=by_module, autocast_weight_copies=copies)


def measure_litgpt_step(cfg: GPTConfig, *, micro_batch_size: int, seq_len: int,
                        precision: LitgptPrecision = "bf16-true", seed: int = 0
                        ) -> tuple[int, int]:
    """(peak, resident) live bytes of one whole step of litgpt's full fine-tune on CPU: the
    last micro-batch of gradient accumulation (gradients and AdamW's states, for-loop, resident
    from an earlier step), forward, chunked loss, backward, optimizer step, with ``logits`` held
    by the loop as in ``finetune/full.py``. ``resident``: the bytes live before the step
    (parameters, gradients, optimizer states, buffers, the batch, the previous step's logits:
    ``fit`` binds ``logits`` when Fabric's forward returns, finetune/full.py)."""
    litgpt: Any = importlib.import_module("litgpt")
    utils: Any = importlib.import_module("litgpt.utils")
    torch.manual_seed(seed)
    model = litgpt.GPT(litgpt.Config(**litgpt_config(cfg)))
    if precision == "bf16-true":
        model = model.to(torch.bfloat16)
    model.max_seq_length = seq_len
    opt = torch.optim.AdamW(model.parameters(), foreach=False)
    ids = torch.randint(0, cfg.vocab_size, (micro_batch_size, seq_len))

    held: list[torch.Tensor] = []

    def step() -> None:
        with precision_context(precision):
            out = model(ids)
        held[:] = [fabric_output(out, precision)]  # the previous step's logits lived until now
        del out
        loss = utils.chunked_cross_entropy(held[0][..., :-1, :], ids[..., 1:])
        loss.backward()
        opt.step()

    step()  # gradients and optimizer states now exist
    gc.collect()
    tracker = LiveBytesTracker()
    states = [v for st in opt.state.values() for v in st.values() if torch.is_tensor(v)]
    tracker.add_resident([*model.parameters(), *(p.grad for p in model.parameters()),
                          *states, *model.buffers(), ids, *held])
    resident = tracker.current
    with tracker:
        step()
    return tracker.peak, resident


def _wrap_blocks(model: Any, block: type) -> None:
    """Fabric's ``_setup_activation_checkpointing``: each ``block`` in a non-reentrant
    ``checkpoint_wrapper`` (torch's default implementation since 2.2)."""
    wrapper: Any = importlib.import_module(
        "torch.distributed.algorithms._checkpoint.checkpoint_wrapper")
    wrapper.apply_activation_checkpointing(
        model, checkpoint_wrapper_fn=wrapper.checkpoint_wrapper,
        check_fn=lambda m: isinstance(m, block))


_LLAMA: dict[str, Any] = {"bias": False, "norm": "rmsnorm", "position": "rope",
                          "tie_embeddings": False}
GRID_SHAPES: dict[str, GPTConfig] = {
    # TinyLlama 1.1B's layout (litgpt "tiny-llama-1.1b"): GQA 32/4 heads, SwiGLU
    "tinyllama": GPTConfig(n_layer=2, n_head=8, n_kv_head=2, n_embd=128, mlp_hidden=352,
                           vocab_size=512, block_size=256, mlp="swiglu", **_LLAMA),
    # Llama 3.2 1B's (litgpt "Llama-3.2-1B"): GQA 32/8
    "llama": GPTConfig(n_layer=2, n_head=4, n_kv_head=1, n_embd=128, mlp_hidden=512,
                       vocab_size=512, block_size=256, mlp="swiglu", **_LLAMA),
    # Gemma 2B's (litgpt "Gemma-2b"): multi-query, head_dim 256 > n_embd / n_head, GeGLU,
    # RMSNorm with unit offset, embeddings scaled by sqrt(n_embd)
    "gemma": GPTConfig(n_layer=2, n_head=4, n_kv_head=1, n_embd=128, head_dim=64,
                       mlp_hidden=512, vocab_size=512, block_size=256, mlp="geglu", **_LLAMA),
    # Phi-3-mini-4k's (litgpt "Phi-3-mini-4k-instruct"): a sliding window in every block
    # (2048 there, 16 here, shorter than the batches), which litgpt applies as an s x s mask
    "phi3": GPTConfig(n_layer=2, n_head=4, n_embd=128, mlp_hidden=352, vocab_size=512,
                      block_size=256, mlp="swiglu", sliding_window=16, **_LLAMA),
    # Phi-2's (litgpt "phi-2"): parallel residual sharing one LayerNorm, 40 % rotary, biases,
    # GELU (tanh) MLP, lm_head bias
    "phi2": GPTConfig(n_layer=2, n_head=4, n_embd=128, vocab_size=512, block_size=256,
                      position="rope", rotary_fraction=0.4, parallel="shared_norm",
                      lm_head_bias=True, tie_embeddings=False),
    # Pythia's (litgpt "pythia-160m"): parallel residual with two LayerNorms, 25 % rotary
    "pythia": GPTConfig(n_layer=2, n_head=4, n_embd=128, vocab_size=512, block_size=256,
                        position="rope", rotary_fraction=0.25, parallel="separate_norms",
                        tie_embeddings=False),
}
"""One small model per layout (2 layers, d 128); `REAL_NAMES` gives the real model each copies."""

REAL_NAMES = {"tinyllama": "tiny-llama-1.1b", "llama": "Llama-3.2-1B", "gemma": "Gemma-2b",
              "phi3": "Phi-3-mini-4k-instruct",
              "phi2": "phi-2", "pythia": "pythia-160m"}
PRECISIONS: tuple[LitgptPrecision, ...] = ("32-true", "bf16-true", "bf16-mixed")
SHAPES = ((2, 48), (1, 33))


def grid(names: tuple[str, ...] = tuple(GRID_SHAPES)) -> list[dict[str, Any]]:
    """Measure and predict every case: each shape, precision, batch of `SHAPES` and
    checkpointing (none, or every block as under Fabric's FSDP)."""
    rows = []
    for name, prec, (b, s), ckpt in itertools.product(names, PRECISIONS, SHAPES, (False, True)):
        cfg = GRID_SHAPES[name]
        m = measure_litgpt(cfg, micro_batch_size=b, seq_len=s, precision=prec,
                           checkpointing=ckpt)
        pred = litgpt_saved_bytes(cfg, b, s, precision=prec, checkpointing=ckpt)
        rows.append({"model": name, "precision": prec, "micro_batch_size": b, "seq_len": s,
                     "checkpointing": "full" if ckpt else "none",
                     "measured": m.saved_for_backward, "predicted": pred,
                     "by_module": m.saved_by_module,
                     "error": pred / m.saved_for_backward - 1})
    return rows


STEP_CASES = (("phi2", "bf16-true", 4, 128), ("gemma", "bf16-mixed", 4, 128),
              ("pythia", "32-true", 1, 200), ("phi3", "bf16-true", 2, 100),
              ("tinyllama", "bf16-true", 2, 48), ("tinyllama", "bf16-mixed", 2, 48),
              ("llama", "32-true", 3, 64))
"""Whole steps whose peak is at the loss's forward, in its backward and later."""


def step_grid() -> list[dict[str, Any]]:
    """Each `STEP_CASES` step's live peak beside ``training_memory(implementation="litgpt",
    device="cpu", optimizer_impl="for-loop")``'s ``tensor_peak``."""
    from scaleplan.memory.training import training_memory

    rows = []
    for name, prec, b, s in STEP_CASES:
        cfg = GRID_SHAPES[name]
        peak, _ = measure_litgpt_step(cfg, micro_batch_size=b, seq_len=s,
                                      precision=prec)  # type: ignore[arg-type]
        m = training_memory(cfg, micro_batch_size=b, seq_len=s, precision=prec,
                            implementation="litgpt", device="cpu", optimizer_impl="for-loop")
        rows.append({"model": name, "precision": prec, "micro_batch_size": b, "seq_len": s,
                     "measured": peak, "predicted": m.tensor_peak, "moment": m.peak_moment,
                     "error": m.tensor_peak / peak - 1})
    return rows


def _step_table(rows: list[dict[str, Any]]) -> list[str]:
    worst = max(abs(r["error"]) for r in rows)
    lines = ["", "## Whole steps: live peak vs tensor_peak", "",
             "`measure_litgpt_step`: one whole step (the last micro-batch of gradient "
             "accumulation: gradients and AdamW states resident; forward, chunked loss, "
             "backward, AdamW step; the loop holds `logits`), the peak of live tensor bytes "
             "beside `training_memory(..., implementation=\"litgpt\", device=\"cpu\", "
             "optimizer_impl=\"for-loop\")`'s `tensor_peak` (the rotary tables counted on both "
             f"sides). {len(rows)} steps, largest |error| {worst:.3%}.", "",
             "| model | precision | b | s | measured | predicted | worst moment | error |",
             "|---|---|---:|---:|---:|---:|---|---:|"]
    lines += [f"| {r['model']} | {r['precision']} | {r['micro_batch_size']} | {r['seq_len']} | "
              f"{r['measured']:,} | {r['predicted']:,} | {r['moment']} | {r['error']:+.3%} |"
              for r in rows]
    return lines


def _table(rows: list[dict[str, Any]]) -> str:
    litgpt = importlib.import_module("litgpt")
    worst = max(abs(r["error"]) for r in rows)
    lines = [
        "# litgpt: saved-for-backward bytes, measured vs predicted", "",
        "Written by `python -m scaleplan.reference.litgpt_measure --grid`. Each row builds "
        "`litgpt.GPT` (2 layers, d 128, the layout of the real model named in "
        "`scaleplan.reference.litgpt_measure.REAL_NAMES`; shapes in `GRID_SHAPES`) in training "
        "mode on CPU and runs the step of litgpt's `finetune/full.py` (forward, then "
        "`chunked_cross_entropy` on the shifted logits) under one of Fabric's precisions, "
        "counting the unique storages saved for backward (parameters and autocast's weight "
        "copies excluded; the rotary cos/sin buffers counted; with checkpointing, every block "
        "in torch's non-reentrant `checkpoint_wrapper` as Fabric's FSDP strategy wraps it, and "
        "the block inputs the checkpoint keeps). `predicted` is "
        "`scaleplan.memory.litgpt_terms.litgpt_saved_bytes`. "
        f"torch {torch.__version__}, litgpt {getattr(litgpt, '__version__', '0.5.13')}.", "",
        f"{len(rows)} cases, largest |error| {worst:.2%}.", "",
        "| model | precision | b | s | checkpointing | measured | predicted | error |",
        "|---|---|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['precision']} | {r['micro_batch_size']} | "
                     f"{r['seq_len']} | {r['checkpointing']} | {r['measured']:,} | "
                     f"{r['predicted']:,} | {r['error']:+.2%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``--grid [--out PATH] [--json PATH]``: measure the grid, write its table and replay."""
    parser = argparse.ArgumentParser(prog="python -m scaleplan.reference.litgpt_measure")
    parser.add_argument("--grid", action="store_true", help="measure the validation grid")
    parser.add_argument("--out", default="docs/validation/litgpt-memory.md")
    parser.add_argument("--json", default="tests/data/litgpt_memory.json")
    args = parser.parse_args(argv)
    if not args.grid:
        parser.print_help()
        return 2
    rows = grid()
    text = _table(rows) + "\n".join(_step_table(step_grid())) + "\n"
    Path(args.out).write_text(text)
    replay = [{"config": GRID_SHAPES[r["model"]].model_dump(exclude_defaults=True),
               **{k: r[k] for k in ("model", "precision", "micro_batch_size", "seq_len",
                                    "checkpointing", "measured", "by_module")}} for r in rows]
    Path(args.json).write_text(json.dumps(replay, indent=1) + "\n")
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

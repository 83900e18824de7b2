"""Harness: the peak of full-checkpointing steps of Hugging Face's, torchtune's and litgpt's models.

``python -m tests.impl_recompute_peaks`` runs, on CPU, one whole training step of small
transformers 5.25 models (Llama, Qwen2, GPT-2 in fp32 and bf16 autocast; Mistral, Gemma,
GPT-NeoX, eager attention and dropout 0.1 in a few cases;
`scaleplan.reference.hf_measure.GRID_SHAPES`, ``activation_checkpointing_enable()``, the model's
own loss) and
of torchtune 0.6.1's Llama 3.2 and Qwen2 (`scaleplan.reference.tune_measure.prepared_tune` with
the recipe's activation checkpointing and loss step, fp32 and bf16 parameters) and of litgpt
0.5.13's GPT (`measure_litgpt_step`: TinyLlama's and Pythia's layouts) as the
nanoGPT harness (tests/recompute_peaks.py) does: fused AdamW, a warm-up step that makes its
states, then an accumulating micro-batch (every gradient resident when the measured step
starts), so the step's peak is its backward's. Live bytes by storage
(`scaleplan.reference.tracking.LiveBytesTracker`); at the peak the storages that are not
resident are listed (the operation that made each, its shape and dtype), the evidence for
`scaleplan.memory.stage_terms.recompute_moment`. Writes tests/data/impl_recompute_peaks.json,
replayed without torch by tests/test_impl_recompute_peaks_replay.py.

``python -m tests.impl_recompute_peaks --fresh`` measures `FRESH_CASES` instead: steps that
start with no gradient (set to None after the warm-up step, or torchtune's optimizer in
backward freeing each after its step), each new ``.grad`` named by its parameter at the peak,
the evidence for `scaleplan.memory.stage_terms.fresh_recompute_moment`; it writes
tests/data/fresh_recompute_peaks.json (about 30 s on CPU), replayed by
tests/test_fresh_recompute_peaks_replay.py.
"""

from __future__ import annotations

import gc
import itertools
import json
import sys
import warnings
from pathlib import Path
from typing import Any

__all__ = [
    "FRESH_CASES",
    "FRESH_DROPOUT_CASES",
    "FRESH_EAGER_CASES",
    "FRESH_PATH",
    "FRESH_SHAPE_CASES",
    "HF_CASES",
    "LITGPT_CASES",
    "PATH",
    "TUNE_CASES",
    "B",
    "S",
    "measure_all",
    "measure_fresh",
    "measure_hf_step",
    "measure_litgpt_step",
    "measure_tune_step",
]

PATH = Path(__file__).parent / "data" / "impl_recompute_peaks.json"
FRESH_PATH = Path(__file__).parent / "data" / "fresh_recompute_peaks.json"
B, S = 2, 48
# (family, precision, attention, dropout)
HF_CASES = [*itertools.product(("llama", "qwen2", "gpt2"), ("32-true", "bf16-mixed"), ("sdpa",),
                               (0.0,)),
            ("gpt2", "32-true", "sdpa", 0.1), ("gpt2", "bf16-mixed", "sdpa", 0.1),
            ("llama", "32-true", "sdpa", 0.1), ("llama", "32-true", "eager", 0.0),
            ("mistral", "bf16-mixed", "sdpa", 0.0), ("gemma", "32-true", "sdpa", 0.0),
            ("gpt_neox", "32-true", "sdpa", 0.0)]
TUNE_CASES = list(itertools.product(("llama3_2", "qwen2"), ("32-true", "bf16-true")))
# (implementation, family, precision, gradients) with no gradient when the step starts:
# "fresh" (no accumulation), "in-backward" (torchtune's optimizer_in_bwd)
FRESH_CASES = [*[("hf", f, p, "fresh") for f, p in itertools.product(
                   ("llama", "qwen2", "gpt2"), ("32-true", "bf16-mixed"))],
               *[("torchtune", f, p, g) for f, p, g in itertools.product(
                   ("llama3_2",), ("32-true", "bf16-true"), ("fresh", "in-backward"))],
               ("torchtune", "qwen2", "bf16-true", "fresh"),
               *[("litgpt", "tinyllama", p, "fresh") for p in ("32-true", "bf16-true")],
               ("litgpt", "pythia", "32-true", "fresh"),
               *[("hf", f, p, "fresh") for f, p in (
                   ("gpt_neox", "32-true"), ("gpt_neox", "bf16-mixed"), ("gemma", "32-true"))],
               ("litgpt", "pythia", "bf16-mixed", "fresh"),
               ("litgpt", "tinyllama", "bf16-mixed", "fresh"),
               ("torchtune", "qwen2", "32-true", "fresh")]
# (family, precision, (layers, micro-batch, sequence)) of transformers' fresh steps at other
# shapes: four blocks (the first block's rebuild with three blocks' gradients made), and
# 2048 tokens (the last block's rebuild, every block's input saved, the worse)
FRESH_SHAPE_CASES = [("llama", "32-true", (4, 2, 48)), ("gpt2", "bf16-mixed", (4, 2, 48)),
                     ("llama", "32-true", (2, 16, 128)), ("qwen2", "bf16-mixed", (3, 16, 128))]
# (family, precision) of transformers' fresh steps with eager attention
FRESH_EAGER_CASES = [("llama", "32-true"), ("gpt2", "bf16-mixed")]
# (family, precision, dropout) of transformers' steps with dropout and fresh gradients
FRESH_DROPOUT_CASES = [("llama", "32-true", 0.1), ("gpt2", "32-true", 0.1),
                       ("gpt2", "bf16-mixed", 0.1)]
LITGPT_CASES = [*itertools.product(("tinyllama",), ("32-true", "bf16-true", "bf16-mixed")),
                ("pythia", "32-true"), ("pythia", "bf16-true")]


def _tracker() -> Any:
    from scaleplan.reference.tracking import LiveBytesTracker

    class PeakTracker(LiveBytesTracker):
        """`LiveBytesTracker` that also keeps what made each storage, and the storages live at
        the backward's peak."""

        def __init__(self) -> None:
            super().__init__()
            self.made: dict[int, str] = {}
            self.grads: dict[int, str] = {}
            self.at_peak: dict[int, tuple[int, str]] = {}
            self.func = "resident"

        def _register(self, t: Any) -> None:
            from scaleplan.reference.tracking import storage_key
            key = storage_key(t)
            if key not in self.live:  # a new storage (an address may be reused once freed)
                self.made[key] = f"{self.func} {tuple(t.shape)} {str(t.dtype)[6:]}"
            before = self.phase_peaks.get("backward", 0)
            super()._register(t)
            if self.phase == "backward" and self.current > before:
                self.snapshot()

        def snapshot(self) -> None:
            """The live storages now, each with what made it (a gradient: its parameter)."""
            self.at_peak = {k: (n, self.grads.get(k, self.made.get(k, "?")))
                            for k, n in self.live.items()}

        def label_gradient(self, name: str, grad: Any) -> None:
            """Name a parameter's new ``.grad`` (a post-accumulate-grad hook); torchtune's
            optimizer-in-backward hook, registered after this one, frees it after its step."""
            from scaleplan.reference.tracking import storage_key
            key = storage_key(grad)
            self.grads[key] = f"grad {name} {tuple(grad.shape)} {str(grad.dtype)[6:]}"
            if self.phase == "backward" and self.current == self.phase_peaks["backward"]:
                self.snapshot()  # the peak's storages, now with this gradient named

        def _free(self, key: int) -> None:
            self.grads.pop(key, None)
            super()._free(key)

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                               kwargs: Any = None) -> Any:
            self.func = str(func).removeprefix("aten.").removesuffix(".default")
            return super().__torch_dispatch__(func, types, args, kwargs)

    return PeakTracker()


def _step(tracker: Any, forward: Any, opt: Any) -> None:
    tracker.set_phase("forward")
    loss = forward()
    tracker.set_phase("backward")
    loss.backward()
    del loss
    if opt is not None:  # None: stepped in backward
        tracker.set_phase("optimizer")
        opt.step()


def _result(tracker: Any, resident: set[int], base: int) -> dict[str, Any]:
    live = sorted((v for k, v in tracker.at_peak.items() if k not in resident), reverse=True)
    return {"peak_bytes": tracker.peak, "peak_phase": tracker.peak_phase,
            "backward_peak": tracker.phase_peaks["backward"], "resident": base,
            "at_backward_peak": [f"{n} {what}" for n, what in live]}


def _optimizer(model: Any, gradients: str) -> tuple[Any, list[Any]]:
    """(the optimizer to step, every optimizer): fused AdamW over every parameter, or
    (``gradients="in-backward"``) torchtune's optimizer in backward as
    `scaleplan.reference.tune_switches.optimizer_for` builds it (one for-loop AdamW per
    parameter, stepped and its gradient freed by a post-accumulate-grad hook): no separate
    step then."""
    import torch

    if gradients == "in-backward":
        from scaleplan.reference.tune_switches import optimizer_for
        return None, list(optimizer_for(model, True).values())
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    return opt, [opt]


def _measured(model: Any, forward: Any, extra: list[Any],
              gradients: str = "accumulated") -> dict[str, Any]:
    """Warm-up step, then the tracked step: after an accumulating micro-batch
    (``gradients="accumulated"``: every gradient resident), or with the gradients set to None
    (``"fresh"``: no accumulation), or freed by their step in backward (``"in-backward"``,
    torchtune's ``optimizer_in_bwd``). Each new ``.grad`` is named where the peak holds it."""
    import torch

    from scaleplan.reference.tracking import storage_key
    tracker = _tracker()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    for name, param in named:  # registered before torchtune's hooks: they run first
        param.register_post_accumulate_grad_hook(
            lambda q, name=name: tracker.label_gradient(name, q.grad))
    params = [p for _, p in named]
    opt, opts = _optimizer(model, gradients)
    forward().backward()
    if opt is not None:
        opt.step()
        opt.zero_grad(set_to_none=True)
    if gradients == "accumulated":
        forward().backward()  # an earlier micro-batch leaves its gradients behind
    gc.collect()
    states = [v for o in opts for st in o.state.values() for v in st.values()
              if isinstance(v, torch.Tensor)]
    grads = [p.grad for p in params if p.grad is not None]
    assert (len(grads) == len(params)) == (gradients == "accumulated")
    kept = [*model.parameters(), *model.buffers(), *grads, *states, *extra]
    tracker.grads.clear()  # the warm-up's gradients are gone: their keys may be reused
    base = tracker.add_resident(kept)
    resident = {storage_key(t) for t in kept}
    with tracker:
        _step(tracker, forward, opt)
    return {"gradients": gradients, **_result(tracker, resident, base)}


def measure_hf_step(family: str, precision: str, dropout: float, attention: str = "sdpa",
                    gradients: str = "accumulated", shape: tuple[int, int, int] | None = None
                    ) -> dict[str, Any]:
    """One full-checkpointing step of transformers' ``family`` model (imports torch);
    ``gradients`` as `_measured` takes it; ``shape``: (layers, micro-batch, sequence) other
    than the grid's (2, `B`, `S`), recorded in the row."""
    import torch

    from scaleplan.reference.hf_measure import GRID_SHAPES, build_hf_model
    torch.manual_seed(0)
    layers, b, s = shape or (GRID_SHAPES[family].n_layer, B, S)
    cfg = GRID_SHAPES[family].replace(dropout=dropout, n_layer=layers)
    model = build_hf_model(cfg, family, attention)  # type: ignore[arg-type]
    model.train()
    enable = getattr(model, "activation_checkpointing_enable", None)
    (enable or model.gradient_checkpointing_enable)()
    ids = torch.randint(0, cfg.vocab_size, (b, s))

    def forward() -> Any:
        if precision == "bf16-mixed":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(input_ids=ids, labels=ids, use_cache=False).loss
        return model(input_ids=ids, labels=ids, use_cache=False).loss

    row = _measured(model, forward, [ids], gradients)
    buffers = sum(t.untyped_storage().nbytes() for t in model.buffers())
    other = {"shape": list(shape)} if shape else {}
    return {"implementation": "hf", "family": family, "precision": precision,
            "attention": attention, "dropout": dropout, "buffers": buffers, **other, **row}


def measure_tune_step(family: str, precision: str, gradients: str = "accumulated"
                      ) -> dict[str, Any]:
    """One full-checkpointing step of torchtune's ``family`` model (imports torch);
    ``gradients`` as `_measured` takes it ("in-backward": the recipe's optimizer_in_bwd)."""
    from scaleplan.reference.tune_measure import GRID_SHAPES, loss_step, prepared_tune
    cfg = GRID_SHAPES[family]
    model, loss_fn, batch = prepared_tune(cfg, family, precision,  # type: ignore[arg-type]
                                          True, "standard", B, S, False, 0)

    def forward() -> Any:
        return loss_step(model, loss_fn, dict(batch))

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")
        row = _measured(model, forward, list(batch.values()), gradients)
    buffers = sum(b.untyped_storage().nbytes() for b in model.buffers())
    return {"implementation": "torchtune", "family": family, "precision": precision,
            "attention": "sdpa", "dropout": 0.0, "buffers": buffers, **row}


def measure_litgpt_step(name: str, precision: str, gradients: str = "accumulated"
                        ) -> dict[str, Any]:
    """One full-checkpointing step of litgpt's GPT (finetune/full.py's forward and chunked
    loss; every Block in torch's non-reentrant ``checkpoint_wrapper``, as Fabric's FSDP
    strategy wraps it; Fabric's precisions as `scaleplan.reference.litgpt_measure` reproduces
    them) for ``litgpt_measure.GRID_SHAPES[name]`` (imports torch)."""
    import importlib

    import torch

    from scaleplan.reference.litgpt_measure import GRID_SHAPES, litgpt_config, precision_context

    litgpt: Any = importlib.import_module("litgpt")
    utils: Any = importlib.import_module("litgpt.utils")
    wrapper: Any = importlib.import_module(
        "torch.distributed.algorithms._checkpoint.checkpoint_wrapper")
    torch.manual_seed(0)
    cfg = GRID_SHAPES[name]
    model = litgpt.GPT(litgpt.Config(**litgpt_config(cfg)))
    if precision == "bf16-true":
        model = model.to(torch.bfloat16)
    model.max_seq_length = S
    wrapper.apply_activation_checkpointing(
        model, checkpoint_wrapper_fn=wrapper.checkpoint_wrapper,
        check_fn=lambda m: isinstance(m, litgpt.model.Block))
    model.train()
    ids = torch.randint(0, cfg.vocab_size, (B, S))

    def forward() -> Any:
        with precision_context(precision):
            logits = model(ids)
        return utils.chunked_cross_entropy(logits[..., :-1, :], ids[..., 1:])

    row = _measured(model, forward, [ids], gradients)
    buffers = sum(b.untyped_storage().nbytes() for b in model.buffers())
    return {"implementation": "litgpt", "family": name, "precision": precision,
            "attention": "sdpa", "dropout": 0.0, "buffers": buffers, **row}


def measure_all() -> dict[str, Any]:
    """Measure every case (imports torch)."""
    import torch
    rows = [measure_hf_step(f, p, d, a) for f, p, a, d in HF_CASES]
    rows += [measure_tune_step(f, p) for f, p in TUNE_CASES]
    rows += [measure_litgpt_step(f, p) for f, p in LITGPT_CASES]
    return {"torch": torch.__version__, "python": sys.version.split()[0],
            "micro_batch_size": B, "seq_len": S, "optimizer": "fused", "cases": rows}


def measure_fresh() -> dict[str, Any]:
    """Measure `FRESH_CASES` (imports torch)."""
    import torch
    rows = []
    for impl, family, precision, gradients in FRESH_CASES:
        if impl == "hf":
            rows.append(measure_hf_step(family, precision, 0.0, "sdpa", gradients))
        elif impl == "torchtune":
            rows.append(measure_tune_step(family, precision, gradients))
        else:
            rows.append(measure_litgpt_step(family, precision, gradients))
    rows += [measure_hf_step(f, p, dropout, "sdpa", "fresh")
             for f, p, dropout in FRESH_DROPOUT_CASES]
    rows += [measure_hf_step(f, p, 0.0, "sdpa", "fresh", shape)
             for f, p, shape in FRESH_SHAPE_CASES]
    rows += [measure_hf_step(f, p, 0.0, "eager", "fresh") for f, p in FRESH_EAGER_CASES]
    return {"torch": torch.__version__, "python": sys.version.split()[0],
            "micro_batch_size": B, "seq_len": S, "optimizer": "fused",
            "in_backward_optimizer": "for-loop", "cases": rows}


if __name__ == "__main__":
    if sys.argv[1:] == ["--fresh"]:
        FRESH_PATH.write_text(json.dumps(measure_fresh(), indent=1) + "\n")
        print(f"wrote {FRESH_PATH}")
    else:
        PATH.write_text(json.dumps(measure_all(), indent=1) + "\n")
        print(f"wrote {PATH}")

"""Draw the documentation's figures from scaleplan's own functions.

Two ways in, one drawing:

- ``python docs/_ext/make_figures.py [OUT_DIR]`` writes every figure (SVG) to OUT_DIR, by default
  ``docs/figures/``;
- as an MkDocs hook (``hooks:`` in mkdocs.yml), ``on_pre_build`` writes them to ``docs/figures/``
  before MkDocs collects the pages, so every build (CI's ``mkdocs build --strict`` included)
  shows figures drawn by the code it documents. The folder is ignored by git.

A figure is rewritten only when its bytes change: the SVGs are deterministic (no date, a fixed
hash salt), so ``mkdocs serve`` does not rebuild in a loop on its own output. Each figure checks
its numbers against the library before drawing (a breakdown's parts add up to its total; a
frontier's micro-batch fits and the next one does not), as the notebooks do.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import scaleplan as sp
from scaleplan.validation.markers import FitsOn

__all__ = ["FIGURES", "draw_all", "on_pre_build"]

GiB = 2**30
OUT = Path(__file__).resolve().parent.parent / "figures"

# The stacked terms, bottom to top, as (label, function of a MemoryBreakdown). "activations" and
# "logits" split saved_for_backward: logits is its loss side (fp32 log-softmax and targets).
TERMS: tuple[tuple[str, Callable[[Any], int]], ...] = (
    ("weights", lambda m: m.weights),
    ("gradients", lambda m: m.gradients),
    ("optimizer", lambda m: m.optimizer),
    ("activations", lambda m: m.saved_for_backward - m.logits),
    ("logits (log-softmax, targets)", lambda m: m.logits),
    ("autocast weight copies", lambda m: m.autocast_weight_copies),
    ("transient (loss gradients)", lambda m: m.transient),
    ("overhead (CUDA context, allocator)", lambda m: m.overhead),
)


def _stacked_bars(ax: Any, labels: list[str], mems: list[Any]) -> None:
    bottom = np.zeros(len(mems))
    for term, part in TERMS:
        values = np.array([part(m) / GiB for m in mems])
        ax.bar(labels, values, bottom=bottom, label=term)
        bottom += values
    totals = [m.total / GiB for m in mems]
    if not np.allclose(bottom, totals):
        raise AssertionError(f"stacked parts {bottom} do not add up to the totals {totals}")
    ax.set_ylabel("GiB per GPU")


def _legend_beside(ax: Any) -> None:
    # reversed, so that the legend lists the terms top to bottom as the bars stack them
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], labels[::-1], fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))


def memory_microbatch(plt: Any) -> Any:
    """GPT-2 small on an RTX 4070, micro-batch 1 to 16 (the seed case's question)."""
    cfg = sp.GPTConfig.preset("gpt2")
    batches = [1, 2, 4, 8, 16]
    mems = [sp.training_memory(cfg, micro_batch_size=b, seq_len=1024) for b in batches]
    fig, ax = plt.subplots(figsize=(9, 4))
    _stacked_bars(ax, [str(b) for b in batches], mems)
    budget = FitsOn("RTX 4070").available_bytes  # the planner's rule for the GPU's memory
    ax.axhline(budget / GiB, color="k", ls="--", lw=1,
               label=f"RTX 4070: {budget / GiB:.2f} GiB")
    ax.set_xlabel("micro-batch (sequences of 1,024 tokens)")
    ax.set_title("GPT-2 small, bf16-mixed, AdamW, flash attention")
    _legend_beside(ax)
    return fig


MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "tinyllama-1.1b", "gpt2-xl")
GPU_LINES = ("RTX 4070", "RTX 4090", "A100 SXM 40GB")


def memory_models(plt: Any) -> Any:
    """Five presets at micro-batch 4 x 1,024 against three GPUs' memory."""
    mems = [sp.training_memory(sp.GPTConfig.preset(name), micro_batch_size=4, seq_len=1024)
            for name in MODELS]
    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    _stacked_bars(ax, list(MODELS), mems)
    for name, style in zip(GPU_LINES, (":", "--", "-."), strict=True):
        usable = FitsOn(name).available_bytes
        ax.axhline(usable / GiB, color="k", ls=style, lw=1,
                   label=f"{name}: {usable / GiB:.1f} GiB")
    ax.set_title("micro-batch 4 x 1,024 tokens, bf16-mixed, AdamW, one GPU")
    _legend_beside(ax)
    ax.tick_params(axis="x", labelsize=8)
    return fig


FRONTIER_GPUS = ("RTX 4070", "RTX 4090", "A100 SXM 80GB")
SEQ_LENS = (128, 256, 512, 1024)


def fit_frontier(plt: Any) -> Any:
    """The largest micro-batch of GPT-2 small that fits, against the sequence length."""
    cfg = sp.GPTConfig.preset("gpt2")
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in FRONTIER_GPUS:
        fits = FitsOn(name)
        frontier = [fits.max_micro_batch_size(cfg, micro_batch_size=1024, seq_len=s)
                    for s in SEQ_LENS]
        b, s = frontier[-1], SEQ_LENS[-1]
        at = sp.training_memory(cfg, micro_batch_size=b, seq_len=s).total
        above = sp.training_memory(cfg, micro_batch_size=b + 1, seq_len=s).total
        if not at <= fits.available_bytes < above:
            raise AssertionError(f"{name}: micro-batch {b} is not the frontier at {s} tokens")
        ax.plot(SEQ_LENS, frontier, "o-", label=name)
        for x, y in zip(SEQ_LENS, frontier, strict=True):
            ax.annotate(str(y), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xticks(SEQ_LENS, [str(s) for s in SEQ_LENS])
    ax.set_xlabel("sequence length")
    ax.set_ylabel("largest micro-batch that fits")
    ax.set_title("GPT-2 small, bf16-mixed, AdamW, flash attention")
    ax.legend()
    return fig


BUDGETS = (1e18, 1e19, 1e20, 1e21, 1e22)


def isoflop(plt: Any) -> Any:
    """Loss against model size at fixed compute (C = 6 N D), with each law's optimum."""
    n_grid = np.geomspace(1e7, 1e11, 200)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, name in zip(axes, ("chinchilla", "epoch2024"), strict=True):
        law = sp.scaling_law(name)
        for c in BUDGETS:
            ax.plot(n_grid, law.loss(n_grid, c / (6 * n_grid)), label=f"{c:.0e} FLOPs")
            best = law.compute_optimal(c)
            ax.plot(best.n_params, best.loss, "k.")
        ax.set_xscale("log")
        ax.set_ylim(2.0, 5.0)
        ax.set_title(f"{name} (dots: compute_optimal)")
        ax.set_xlabel("parameters N")
    axes[0].set_ylabel("predicted loss")
    axes[0].legend(fontsize=8)
    return fig


LAWS = ("chinchilla", "chinchilla-rounded", "epoch2024", "kaplan2020")


def frontiers(plt: Any) -> Any:
    """Compute-optimal N and tokens per parameter against the budget, for four laws."""
    flops = np.geomspace(1e18, 1e25, 50)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name in LAWS:
        law = sp.scaling_law(name)
        best = [law.compute_optimal(float(c)) for c in flops]
        axes[0].plot(flops, [b.n_params for b in best], label=name)
        axes[1].plot(flops, [b.tokens / b.n_params for b in best], label=name)
    for ax, label in zip(axes, ("compute-optimal parameters N", "tokens per parameter D/N"),
                         strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training FLOPs C")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    return fig


FIGURES: dict[str, Callable[[Any], Any]] = {
    "memory-microbatch.svg": memory_microbatch,
    "memory-models.svg": memory_models,
    "fit-frontier.svg": fit_frontier,
    "isoflop.svg": isoflop,
    "frontiers.svg": frontiers,
}


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("the docs' figures need matplotlib: pip install -e '.[docs]'") from None
    matplotlib.use("Agg")
    matplotlib.rcParams.update({"svg.hashsalt": "scaleplan", "svg.fonttype": "path",
                                "font.family": "DejaVu Sans"})
    import matplotlib.pyplot as plt

    return plt


def draw_all(out: Path = OUT) -> list[Path]:
    """Write every figure to ``out``; rewrite a file only when its bytes differ."""
    plt = _pyplot()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, draw in FIGURES.items():
        fig = draw(plt)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None})
        plt.close(fig)
        path = out / filename
        if not path.exists() or path.read_bytes() != buffer.getvalue():
            path.write_bytes(buffer.getvalue())
        written.append(path)
    return written


def on_pre_build(config: Any, **kwargs: Any) -> None:
    """MkDocs hook: draw the figures into docs/figures/ before the pages are collected."""
    draw_all(Path(config["docs_dir"]) / "figures")


if __name__ == "__main__":
    for p in draw_all(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT):
        print(p)

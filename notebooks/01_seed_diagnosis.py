# %% [markdown]
# # The seed diagnosis
#
# A nanoGPT run on one RTX 4070 (12 GB) over FineWeb. The config file's comment promises
# ~125M parameters; the training log says
#
# ```text
# number of parameters: 40.56M
# step 14500: train loss 3.6415, val loss 3.5696
# ```
#
# and the loss has stopped falling near 3.57. This notebook computes, from the config file alone,
# what is wrong, and checks each figure against the published one, printing `match: True` the way
# nanoGPT's `transformer_sizing.ipynb` does. A failed match stops the notebook (and CI).

# %%
import matplotlib.pyplot as plt

import scaleplan as sp
from scaleplan.batching import grad_accum_steps


def check(label: str, got: object, expected: object) -> None:
    """Print scaleplan's figure beside the published or hand-computed one; stop on a mismatch."""
    print(f"{label}: scaleplan {got}, expected {expected}, match: {got == expected}")
    assert got == expected, label


# %% [markdown]
# ## The config file, read as data
#
# nanoGPT runs config files with `exec`; scaleplan parses them with `ast` and never executes
# them. `bias` and `vocab_size` are left at nanoGPT's `train.py` defaults (False, 50304);
# 16 sequences x 1024 tokens x 32 accumulation steps is the seed's ~524k tokens per step.

# %%
SEED_CONFIG = """\
# Model (~125M parameters) - perfect for 12 GB VRAM
n_layer = 12
n_head = 12
n_embd = 384
dropout = 0.1

batch_size = 16
block_size = 1024
gradient_accumulation_steps = 32
compile = True
"""
run = sp.load_nanogpt_config("train_fineweb.py", text=SEED_CONFIG)
pc = sp.count_params(run.model)
print(run.model)
print(f"claimed in a comment: {run.claimed_params:,} ({run.claimed_params_text!r})")

# %% [markdown]
# ## 1. The size: 40.56M, not ~125M
#
# nanoGPT prints `get_num_params()`: every parameter except the position embedding (the token
# embedding stays, because the output layer shares it).

# %%
for name, value in pc.components().items():
    print(f"{name:<20}{value:>14,}")
print(f"{'total':<20}{pc.total:>14,}")

# The seed log: "number of parameters: 40.56M"; seed-case.md's exact count 40,560,000.
check("nanoGPT's printed count", f"{pc.nanogpt / 1e6:.2f}M", "40.56M")
check("nanoGPT's count, exact", pc.nanogpt, 40_560_000)
print(f"the comment claims {run.claimed_params / pc.nanogpt:.2f}x the real count")

# %% [markdown]
# GPT-2 small is `n_embd = 768`. nanoGPT prints 123.65M for it (vocabulary 50257, with biases;
# nanoGPT README and `model.py`); Hugging Face counts 124,439,808 with the position embedding.

# %%
gpt2 = sp.count_params(sp.GPTConfig.preset("gpt2"))
check("GPT-2 small, nanoGPT's count", gpt2.nanogpt, 123_653_376)
check("GPT-2 small, transformers' count", gpt2.total, 124_439_808)

# %% [markdown]
# Why halving the width cuts the size by 3x: a block holds 12 d² weights (attention 4 d², MLP
# 8 d²), which quarter, while the token embedding (V x d) only halves.

# %%
widths = (384, 768)
counts = {d: sp.count_params(run.model.replace(n_embd=d)) for d in widths}
# By hand: 12 blocks x 12 d^2, and V x d with V = 50304.
for d in widths:
    check(f"blocks at n_embd={d}", counts[d].attention + counts[d].mlp, 12 * 12 * d**2)
    check(f"token embedding at n_embd={d}", counts[d].token_embedding, 50304 * d)
print(f"ratio of nanoGPT counts, 768 / 384: {counts[768].nanogpt / counts[384].nanogpt:.2f}")

# %%
parts = ["token_embedding", "position_embedding", "attention", "mlp", "norms"]
fig, ax = plt.subplots(figsize=(7, 3.5))
bar_width = 0.38
for i, d in enumerate(widths):
    values = [counts[d].components()[p] / 1e6 for p in parts]
    xs = [k + (i - 0.5) * bar_width for k in range(len(parts))]
    ax.bar(xs, values, bar_width, label=f"n_embd = {d} ({counts[d].nanogpt / 1e6:.2f}M)")
ax.set_xticks(range(len(parts)), [p.replace("_", "\n") for p in parts])
ax.set_ylabel("parameters (millions)")
ax.set_title("12 layers, 12 heads, vocabulary 50304: where the parameters sit")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 2. Far past the compute-optimal token budget
#
# The log's step 14,500 at 524,288 tokens per step, against Chinchilla's ~20 tokens per
# parameter (Hoffmann et al. 2022, Table 3: 1B parameters -> 20.2B tokens). Plain arithmetic
# until scaleplan's scaling-law module lands.

# %%
tokens_per_step = run.training.tokens_per_step
check("tokens per step (16 x 1024 x 32)", tokens_per_step, 524_288)
tokens_seen = 14_500 * tokens_per_step
check("tokens seen (seed-case.md: 7.60e9)", f"{tokens_seen:.2e}", "7.60e+09")
optimal = 20 * pc.nanogpt
check("20 tokens per parameter (seed-case.md: 8.1e8)", f"{optimal:.1e}", "8.1e+08")
print(f"the run has seen {tokens_seen / optimal:.1f}x its compute-optimal budget: the plateau "
      "is the model's capacity")

# %% [markdown]
# ## 3. The fix keeps ~524k tokens per step
#
# Back to `n_embd = 768` (and `dropout = 0.0`). If a micro-batch of 16 no longer fits in 12 GB,
# lower it and raise gradient accumulation to keep 524,288 tokens per step exactly
# (by hand: 524,288 / (8 x 1024) = 64, / (4 x 1024) = 128).

# %%
check("grad_accum_steps at micro-batch 8", grad_accum_steps(524_288, 8, 1024), 64)
check("grad_accum_steps at micro-batch 4", grad_accum_steps(524_288, 4, 1024), 128)

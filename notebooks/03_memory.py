# %% [markdown]
# # Training memory: breakdowns and the fit frontier
#
# `training_memory` predicts the bytes one GPU needs for a training step, term by term (see the
# docs' memory-model page for each term's derivation). This notebook draws the breakdown of GPT-2
# small on an RTX 4070 at several micro-batches, checks terms against hand calculations, and
# maps the largest micro-batch that fits against the sequence length on a few GPUs.

# %%
import matplotlib.pyplot as plt
import numpy as np

import scaleplan as sp
from scaleplan.compute.flops import matmul_params
from scaleplan.validation.markers import FitsOn


def check(label: str, got: object, expected: object) -> None:
    """Print scaleplan's figure beside the hand-computed one; stop on a mismatch."""
    print(f"{label}: scaleplan {got}, expected {expected}, match: {got == expected}")
    assert got == expected, label


GiB = 2**30
cfg = sp.GPTConfig.preset("gpt2")
n = sp.count_params(cfg).total

# %% [markdown]
# ## GPT-2 small on an RTX 4070, micro-batch 1 to 16
#
# nanoGPT's defaults: bf16 autocast over fp32 weights, AdamW, flash attention, sequence 1024.

# %%
TERMS = ["weights", "gradients", "optimizer", "saved_for_backward", "autocast_weight_copies",
         "transient", "overhead"]
batches = [1, 2, 4, 8, 16]
mems = [sp.training_memory(cfg, micro_batch_size=b, seq_len=1024) for b in batches]
budget = sp.gpu("RTX 4070").usable_memory_bytes

fig, ax = plt.subplots(figsize=(7, 4))
bottom = np.zeros(len(batches))
for term in TERMS:
    values = np.array([getattr(m, term) / GiB for m in mems])
    ax.bar([str(b) for b in batches], values, bottom=bottom, label=term)
    bottom += values
ax.axhline(budget / GiB, color="k", ls="--", label="RTX 4070: 12,282 MiB")
ax.set_xlabel("micro-batch (sequences of 1024 tokens)")
ax.set_ylabel("GiB")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

for b, m in zip(batches, mems, strict=True):
    print(f"micro-batch {b:>2}: {m.total / GiB:6.2f} GiB  fits: {m.total <= budget}")

# %% [markdown]
# ## Terms checked by hand
#
# - weights and gradients fp32, AdamW's two fp32 moments: 4 + 4 + 8 bytes x 124,439,808, plus
#   torch AdamW's 4-byte step counter for each of GPT-2's 148 parameter tensors;
# - autocast's bf16 weight copies: 2 bytes x the matmul weights (the tied head counted twice);
# - the loss's fp32 log-softmax: b x s x 50257 x 4 bytes;
# - the transient at backward start: held bf16 logits + two fp32 gradients, b s V x 10 bytes;
# - one block's MLP saves its up-projection output and GELU output: 2 x T x 3072 x 2 bytes.

# %%
m8 = mems[batches.index(8)]
check("weights + gradients + optimizer", m8.weights + m8.gradients + m8.optimizer,
      16 * n + 4 * 148)
check("autocast copies", m8.autocast_weight_copies, 2 * matmul_params(cfg))
check("log-softmax", m8.saved_breakdown["log_softmax"], 8 * 1024 * 50257 * 4)
check("transient", m8.transient, 8 * 1024 * 50257 * (2 + 4 + 4))
check("MLP activations, 12 blocks", m8.saved_breakdown["mlp_activations"],
      12 * 2 * 8 * 1024 * 3072 * 2)
check("the seed case's answer: largest micro-batch of 8, 16 or 4 that fits",
      max(b for b, m in zip(batches, mems, strict=True) if m.total <= budget), 8)

# %% [markdown]
# ## The fit frontier: largest micro-batch against sequence length
#
# `FitsOn(gpu).max_micro_batch_size` bisects on the memory model. The saved activations grow
# with b x s (flash attention keeps no s x s matrix), so the frontier is close to b ~ 1/s.

# %%
GPUS = ["RTX 4070", "RTX 4090", "A100 SXM 80GB"]
seq_lens = [128, 256, 512, 1024]
fig, ax = plt.subplots(figsize=(6, 4))
frontier = {}
for name in GPUS:
    fits = FitsOn(name)
    frontier[name] = [fits.max_micro_batch_size(cfg, micro_batch_size=1024, seq_len=s)
                      for s in seq_lens]
    ax.plot(seq_lens, frontier[name], "o-", label=name)
    print(f"{name:<15}", dict(zip(seq_lens, frontier[name], strict=True)))
ax.set_xscale("log", base=2)
ax.set_yscale("log", base=2)
ax.set_xlabel("sequence length")
ax.set_ylabel("largest micro-batch that fits")
ax.set_title("GPT-2 small, bf16-mixed, AdamW, flash attention")
ax.legend()
fig.tight_layout()
plt.show()

# %%
for name in GPUS:
    b = frontier[name][-1]
    at = sp.training_memory(cfg, micro_batch_size=b, seq_len=1024).total
    above = sp.training_memory(cfg, micro_batch_size=b + 1, seq_len=1024).total
    available = FitsOn(name).available_bytes
    check(f"{name}: micro-batch {b} fits and {b + 1} does not", at <= available < above, True)

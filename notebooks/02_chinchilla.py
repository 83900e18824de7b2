# %% [markdown]
# # Chinchilla: isoFLOP curves, compute-optimal frontiers, and a refit on Fig. 4
#
# Hoffmann et al. 2022 fit `L(N, D) = E + A / N^alpha + B / D^beta` (eq. 2) and allocate a
# budget of C = 6 N D FLOPs to minimise it (eq. 4). This notebook draws the isoFLOP curves of the
# built-in laws, their compute-optimal frontiers, and refits the law on the runs Epoch AI read
# off the paper's Fig. 4, checking each against the published numbers.

# %%
import csv
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import scaleplan as sp


def check(label: str, got: object, expected: object) -> None:
    """Print scaleplan's figure beside the published one; stop on a mismatch."""
    print(f"{label}: scaleplan {got}, expected {expected}, match: {got == expected}")
    assert got == expected, label


LAWS = ("chinchilla", "chinchilla-rounded", "epoch2024", "kaplan2020")

# %% [markdown]
# ## The published projection
#
# At Gopher's budget (5.76e23 FLOPs) Hoffmann et al. project a ~40B-parameter model
# (Sec. 3.4; Chinchilla itself is 70B on 1.4T tokens, trained on that budget).

# %%
chinchilla = sp.scaling_law("chinchilla")
gopher = chinchilla.compute_optimal(5.76e23)
print(gopher)
check("compute-optimal N at 5.76e23 FLOPs, billions", round(gopher.n_params / 1e9), 40)
check("~20 tokens per parameter (Table 3's rule of thumb)", sp.chinchilla_tokens(10**9),
      20 * 10**9)

# %% [markdown]
# ## IsoFLOP curves
#
# For a fixed budget C, each model size N gets D = C / 6N tokens; the loss is a valley in N whose
# bottom is the compute-optimal model (the paper's Fig. 3, Approach 2, drawn from the law).

# %%
budgets = [1e18, 1e19, 1e20, 1e21, 1e22]
n_grid = np.geomspace(1e7, 1e11, 200)
fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
for ax, name in zip(axes, ("chinchilla", "epoch2024"), strict=True):
    law = sp.scaling_law(name)
    for c in budgets:
        loss = law.loss(n_grid, c / (6 * n_grid))
        ax.plot(n_grid, loss, label=f"{c:.0e} FLOPs")
        best = law.compute_optimal(c)
        ax.plot(best.n_params, best.loss, "k.")
    ax.set_xscale("log")
    ax.set_ylim(2.0, 5.0)
    ax.set_title(name)
    ax.set_xlabel("parameters N")
axes[0].set_ylabel("loss")
axes[0].legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# The dot (the law's closed-form allocation) sits at the bottom of each valley:

# %%
for c in budgets:
    best = chinchilla.compute_optimal(c)
    valley = n_grid[np.argmin(chinchilla.loss(n_grid, c / (6 * n_grid)))]
    # the grid has 200 points over 4 decades: neighbours are 4.7 % apart
    check(f"valley bottom at {c:.0e} within one grid step", abs(np.log(valley / best.n_params))
          < np.log(n_grid[1] / n_grid[0]), True)

# %% [markdown]
# ## Compute-optimal frontiers of several laws

# %%
flops = np.geomspace(1e18, 1e25, 50)
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for name in LAWS:
    law = sp.scaling_law(name)
    frontier = [law.compute_optimal(float(c)) for c in flops]
    axes[0].plot(flops, [f.n_params for f in frontier], label=name)
    axes[1].plot(flops, [f.tokens / f.n_params for f in frontier], label=name)
for ax, label in zip(axes, ("compute-optimal N", "tokens per parameter"), strict=True):
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel(label)
axes[0].legend()
fig.tight_layout()
plt.show()

for name in LAWS:
    c = sp.scaling_law(name).compute_optimal(1e21)
    print(f"{name:<19} at 1e21 FLOPs: N {c.n_params:.2e}, D {c.tokens:.2e}, "
          f"D/N {c.tokens / c.n_params:.1f}")

# %% [markdown]
# ## Refit on the Fig. 4 data
#
# Epoch AI (Besiroglu et al. 2024, arXiv:2404.10102) read 245 runs off Hoffmann's Fig. 4 and
# refit Approach 3: E 1.8172 (SE 0.03), A 482.01 (124.58), B 2085.43 (1293.23), alpha 0.3478
# (0.02), beta 0.3658 (0.02), dropping the 5 highest-loss runs. `fit_scaling_law` uses the
# paper's method (Huber loss, delta 1e-3, on log-losses; App. D.2).

# %%
with open(Path("..") / "tests" / "data" / "chinchilla_fig4_points.csv") as f:
    rows = list(csv.DictReader(f))
n = np.array([float(r["Model Size"]) for r in rows])
c = np.array([float(r["Training FLOP"]) for r in rows])
loss = np.array([float(r["loss"]) for r in rows])
keep = np.argsort(loss)[:-5]
fig4 = sp.fit_scaling_law(n[keep], c[keep] / (6 * n[keep]), loss[keep], name="fig4-refit")
print(fig4)

EPOCH = {"E": (1.8172, 0.03), "alpha": (0.3478, 0.02), "beta": (0.3658, 0.02),
         "A": (482.01, 124.58), "B": (2085.43, 1293.23)}
for name, (published, se) in EPOCH.items():
    check(f"{name} within Epoch's standard error", abs(getattr(fig4, name) - published) < se, True)

# %%
fig, ax = plt.subplots(figsize=(6, 4))
sc = ax.scatter(n, loss, c=np.log10(c), s=10, cmap="viridis")
for budget in (1e19, 1e21, 1e23):
    ax.plot(n_grid, fig4.loss(n_grid, budget / (6 * n_grid)), "k-", lw=0.8)
ax.set_xscale("log")
ax.set_ylim(2.0, 5.5)
ax.set_xlabel("parameters N")
ax.set_ylabel("loss")
fig.colorbar(sc, label="log10 training FLOPs")
ax.set_title("Fig. 4 runs and the refit's isoFLOP curves")
fig.tight_layout()
plt.show()

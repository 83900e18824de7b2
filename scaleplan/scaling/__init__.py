"""Scaling laws and what they say about a run.

- `base`: the interface every law shares and its results (`ComputeOptimal`).
- `laws`: the built-in laws with their provenance (`scaling_law`, `scaling_laws`).
- `tokens`: token budgets: compute-optimal tokens, training compute, tokens seen, over-training.
- `rules`: published rules built on the laws (critical batch, repeated data, inference-optimal).
- `fit`: fit your own law to your runs (`fit_scaling_law`).
- `porian2024`: the web-text laws' data, fit and compute-optimal exponent (Porian et al. 2024).
"""

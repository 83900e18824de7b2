"""Diagnosing a run from its config and log.

- `logs`: training logs read as data (`read_log` -> `TrainingLog`).
- `examine`: `diagnose` -> `Diagnosis`: the findings, each with its numbers and the fix.
- `recommend`: the next run the findings call for.
"""

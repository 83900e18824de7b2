"""Diagnosing a run from its config and log.

- `logs`: training logs read as data (`read_log` -> `TrainingLog`).
- `formats`: the kinds of log line it knows (nanoGPT, llm.c, Trainer dicts, CSV), one table each.
- `examine`: `diagnose` -> `Diagnosis`: the findings, each with its numbers and the fix.
- `schedule`: nanoGPT's learning-rate schedule and the findings it calls for.
- `recommend`: the next run the findings call for.
"""

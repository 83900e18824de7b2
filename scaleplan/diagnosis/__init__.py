"""Diagnosing a run from its config and log.

- `logs`: training logs read as data (`read_log` -> `TrainingLog`).
- `formats`: the kinds of log line it knows (nanoGPT, llama2.c, modded-nanogpt, build-nanogpt,
  llm.c, litgpt, torchtitan), one table each.
- `mappings`: the logs that are mappings (Trainer dicts, JSON lines, CSV, trainer_state.json).
- `stream`: a log read as a stream of lines, in bounded memory, at most `MAX_LOG_BYTES` of it.
- `examine`: `diagnose` -> `Diagnosis`: the findings, each with its numbers and the fix.
- `context`: what is known beside the log (the model, the schedule, from scratch or not, the GPU).
- `divergence`: a diverged, stuck or badly initialised loss curve.
- `progress`: overfitting, the token budget, repeated data, a plateau.
- `datasets`: datasets of known size, with their sources.
- `utilisation`: throughput and MFU against the GPU's peak, the inductor's SM warning.
- `schedule`: nanoGPT's learning-rate schedule and the findings it calls for.
- `recommend`: the next run the findings call for.
"""

"""The model being planned: its description and everything read off it exactly.

- `config`: `GPTConfig` and `TrainingConfig`, frozen and validated.
- `presets`: published configurations by name (``GPTConfig.preset("gpt2")``).
- `shapes`: every parameter tensor of the model, listed once; parameter counts, FLOPs, optimizer
  states and autocast copies all read this list.
- `params`: exact parameter counts (`count_params`).
- `loaders`: other tools' files (Hugging Face ``config.json``, nanoGPT config files).
- `nanogpt_file`: the nanoGPT config reader, which parses a file as data and never executes it.
"""

"""The model being planned: its description and everything read off it exactly.

- `config`: `GPTConfig` (frozen and validated) and the training precisions.
- `architecture`: `MoE`, `MLA` and the options beyond GPT-2 and Llama.
- `training_config`: `TrainingConfig`, how the model is trained.
- `presets`: published configurations by name (``GPTConfig.preset("gpt2")``).
- `shapes`: every parameter tensor of the model, listed once; parameter counts, FLOPs, optimizer
  states and autocast copies all read this list.
- `params`: exact parameter counts (`count_params`).
- `loaders`: other tools' files (Hugging Face ``config.json``, nanoGPT config files).
- `nanogpt_file`: the nanoGPT config reader, which parses a file as data and never executes it.
- `nanogpt_init`: how nanoGPT's train.py starts a run (``init_from``; GPT-2 for a fine-tune).
- `nanogpt_meta`: the data's ``meta.pkl`` (a character-level vocabulary), read as plain data.
"""

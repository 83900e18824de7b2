"""Compute: FLOPs, GPUs and how fast a run goes.

- `flops`: FLOPs per token, per step and per run (PaLM, nanoGPT and Kaplan conventions).
- `hardware`: the GPU database (`gpu`, `gpus`, `register_gpu`).
- `throughput`: MFU, throughput at an assumed MFU, time and cost to train.
"""

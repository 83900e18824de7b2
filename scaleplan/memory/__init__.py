"""Training memory per GPU, term by term.

- `training`: `training_memory` and its `MemoryBreakdown` (the whole step's peak).
- `activations`: what autograd saves for backward, operation by operation.
- `states`: bytes of weights, gradients and optimizer states per precision and optimizer.
- `sharding`: the model states one GPU holds under a layout, and the optimizer's temporaries.
- `parallel`: `Parallelism` (DDP, ZeRO/FSDP, tensor, sequence and pipeline parallel).
- `limits`: the inverse questions: the largest micro-batch or sequence that fits, memory grids.
- `published`: other authors' memory formulas, in their own accounting, for comparison.
"""

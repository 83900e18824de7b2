"""Planning a run on a GPU: the answer to "which micro-batch, how many steps, how long".

- `planner`: `plan` and its `Plan`, assembled step by step.
- `arguments`: `plan`'s arguments checked and converted (counts bounded, layout, MFU).
- `fitting`: what fits: memory under the plan's settings, the remedy adopted, the micro-batch.
- `batching`: gradient-accumulation steps and the micro-batches that divide a step.
- `advice`: the precision and why, the assumed MFU, the warnings a plan gives.
- `remedies`: what to change when nothing fits, cheapest first.
- `report`: a plan as the text ``scaleplan plan`` prints.
- `exporters`: a plan as a nanoGPT file, DeepSpeed JSON, HF TrainingArguments, torchrun line.
- `nanogpt_export`: the nanoGPT file, keeping the run it was planned from, schedule refitted.
- `budget`: the compute-optimal model for a budget of GPU-hours (`plan_for_budget`).
- `sweeps`: memory, fit and FLOPs over grids of models and GPUs (`sweep`).
"""

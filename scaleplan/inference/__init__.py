"""Serving a model: the KV cache, the memory a server needs, the longest context and largest
batch that fit, and how fast it decodes.

``kv_cache`` (bytes of keys and values per token and per request, for MHA/GQA, MLA, sliding
windows and their layer patterns, in bf16/fp16/fp32/fp8/int8), ``prefill`` (the activation peak
of one chunk of prompt tokens), ``memory`` (`inference_memory`: weights from
`scaleplan.memory.quantized`, KV cache, the prefill peak, overhead), ``limits``
(`max_context`, `max_batch`) and ``speed`` (`inference_speed`: decode bounded by memory
bandwidth and by FLOPs, prefill by FLOPs). The validation is on docs/validation/inference.md.
"""

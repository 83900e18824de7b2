"""Serving a model: the KV cache, the memory a server needs, the longest context and largest
batch that fit, and how fast it decodes.

``kv_cache`` (bytes of keys and values per token and per request, for MHA/GQA, MLA, sliding
windows and their layer patterns), ``memory`` (`inference_memory`: weights, KV cache, the
prefill peak, overhead), ``limits`` (`max_context`, `max_batch`) and ``speed``
(`inference_speed`: decode bounded by memory bandwidth and by FLOPs, prefill by FLOPs).
"""

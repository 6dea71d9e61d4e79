"""Capacity calculators for the system-design walkthroughs (see ../README.md).

Modules: :mod:`.inference` (KV cache, memory per GPU, roofline throughput, GPUs and $ for a load),
:mod:`.training` (6ND, MFU, Chinchilla, ZeRO/FSDP state, activations, pipeline bubble, all-reduce),
:mod:`.retrieval` (flat / HNSW / IVF-PQ memory, scan QPS, shards), :mod:`.data` (pipeline bytes and
core-hours, tokens, shard storage), :mod:`.walkthroughs` (the numbers each document uses) and
:mod:`.render` (fills the templates; ``--check`` fails when a committed document is stale).
"""

"""Serving arithmetic: KV-cache bytes, memory per GPU, roofline throughput, GPUs for a load, $/M tokens.

Conventions: bytes are plain bytes (1 GB = 1e9 B, 1 GiB = 2**30 B); FLOP/s and bytes/s are per GPU;
"efficiency" arguments are the fraction of the hardware peak actually reached (0 < e <= 1).
Every function raises ``ValueError`` on a non-positive size or an out-of-range fraction.

The roofline model (Williams et al., 2009) applied to transformer decoding: one decode step reads every
weight once and every cached key/value of every running sequence once, and does ~2 FLOPs per parameter
per sequence; at small batch the step is bound by memory bandwidth, at large batch by compute.
Prefill of a long prompt is compute bound: ~2 * n_params FLOPs per prompt token.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .units import check_fraction, check_positive

#: bytes per element for the dtypes these calculators accept
DTYPE_BYTES: dict[str, float] = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1, "int4": 0.5}


def dtype_bytes(dtype: str | float) -> float:
    """Bytes per element: a name from :data:`DTYPE_BYTES` or a positive number. ``ValueError`` otherwise."""
    if isinstance(dtype, str):
        if dtype not in DTYPE_BYTES:
            raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPE_BYTES)}")
        return DTYPE_BYTES[dtype]
    return check_positive("dtype bytes", dtype)


@dataclass(frozen=True)
class ModelShape:
    """The shape numbers serving arithmetic needs (decoder-only transformer).

    ``n_kv_heads == n_heads`` is multi-head attention, ``1 < n_kv_heads < n_heads`` grouped-query
    attention, ``n_kv_heads == 1`` multi-query attention.
    """

    name: str
    n_params: float
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    max_context: int
    d_ff: int

    def __post_init__(self) -> None:
        for field in ("n_params", "n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim", "vocab_size",
                      "max_context", "d_ff"):
            check_positive(field, getattr(self, field))
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")


# Public configurations (Meta's Llama 3 model cards / config.json files).
LLAMA3_8B = ModelShape("Llama-3-8B", 8.03e9, 32, 4096, 32, 8, 128, 128_256, 8192, 14_336)
LLAMA3_70B = ModelShape("Llama-3-70B", 70.6e9, 80, 8192, 64, 8, 128, 128_256, 8192, 28_672)


def kv_bytes_per_token(n_layers: int, n_kv_heads: int, head_dim: int, dtype: str | float = "bf16") -> float:
    """KV-cache bytes one token occupies: ``2 (K and V) * n_layers * n_kv_heads * head_dim * bytes``.

    Llama-3-8B in bf16: 2 * 32 * 8 * 128 * 2 = 131,072 B (128 KiB) per token; with 32 KV heads (no GQA)
    it would be 4x that.
    """
    for name, v in (("n_layers", n_layers), ("n_kv_heads", n_kv_heads), ("head_dim", head_dim)):
        check_positive(name, v)
    return 2 * n_layers * n_kv_heads * head_dim * dtype_bytes(dtype)


def model_kv_bytes_per_token(model: ModelShape, dtype: str | float = "bf16") -> float:
    """:func:`kv_bytes_per_token` for a :class:`ModelShape`."""
    return kv_bytes_per_token(model.n_layers, model.n_kv_heads, model.head_dim, dtype)


def kv_bytes_per_sequence(tokens: int, per_token: float, block_size: int | None = None) -> float:
    """KV bytes one sequence of ``tokens`` tokens holds; with paged attention (``block_size`` tokens per
    block, vLLM's default 16) the last block is allocated whole, so tokens round up to a multiple."""
    check_positive("tokens", tokens)
    check_positive("per_token", per_token)
    if block_size is not None:
        check_positive("block_size", block_size)
        tokens = math.ceil(tokens / block_size) * block_size
    return tokens * per_token


def weight_bytes(n_params: float, dtype: str | float = "bf16") -> float:
    """Bytes of the weights: ``n_params * bytes_per_element``."""
    return check_positive("n_params", n_params) * dtype_bytes(dtype)


def max_concurrent_sequences(gpu_bytes: float, weights_bytes_per_gpu: float, kv_bytes_per_seq_per_gpu: float,
                             memory_utilization: float = 0.9) -> int:
    """How many sequences' KV caches fit next to the weights.

    ``floor((gpu_bytes * memory_utilization - weights) / kv_per_seq)``; ``memory_utilization`` leaves the
    rest for activations, CUDA graphs and fragmentation (vLLM's ``--gpu-memory-utilization``, default 0.9).
    Returns 0 when the weights alone do not fit.
    """
    check_positive("gpu_bytes", gpu_bytes)
    check_positive("kv_bytes_per_seq_per_gpu", kv_bytes_per_seq_per_gpu)
    check_fraction("memory_utilization", memory_utilization)
    free = gpu_bytes * memory_utilization - weights_bytes_per_gpu
    return max(0, int(free // kv_bytes_per_seq_per_gpu))


def decode_step_seconds(batch: int, context_tokens: float, weights_bytes: float, kv_per_token: float,
                        n_params: float, bandwidth: float, peak_flops: float,
                        bandwidth_efficiency: float = 0.8, flops_efficiency: float = 0.5) -> float:
    """Time of one decode step for ``batch`` sequences of average length ``context_tokens`` on one
    model replica (sizes are for the whole replica; pass per-GPU numbers for one GPU).

    ``max(memory time, compute time)`` with memory time ``(weights + batch * context * kv_per_token) /
    (bandwidth * efficiency)`` and compute time ``2 * n_params * batch / (peak_flops * efficiency)``.
    """
    check_positive("batch", batch)
    check_positive("bandwidth", bandwidth)
    check_positive("peak_flops", peak_flops)
    check_fraction("bandwidth_efficiency", bandwidth_efficiency)
    check_fraction("flops_efficiency", flops_efficiency)
    mem = (weights_bytes + batch * context_tokens * kv_per_token) / (bandwidth * bandwidth_efficiency)
    comp = 2.0 * n_params * batch / (peak_flops * flops_efficiency)
    return max(mem, comp)


def decode_tokens_per_second(batch: int, **kwargs: float) -> float:
    """Aggregate decode throughput of one replica: ``batch / decode_step_seconds(batch, ...)``."""
    return batch / decode_step_seconds(batch, **kwargs)


def prefill_tokens_per_second(n_params: float, peak_flops: float, flops_efficiency: float = 0.5) -> float:
    """Prompt tokens per second one replica prefills (compute roofline): ``peak * eff / (2 * n_params)``."""
    check_positive("n_params", n_params)
    check_positive("peak_flops", peak_flops)
    check_fraction("flops_efficiency", flops_efficiency)
    return peak_flops * flops_efficiency / (2.0 * n_params)


def max_batch_for_tpot(tpot_slo_s: float, max_batch: int, **step_kwargs: float) -> int:
    """Largest batch ``<= max_batch`` whose decode step (= time per output token) meets ``tpot_slo_s``;
    0 when even batch 1 misses it. The step time grows with batch, so a binary search suffices."""
    check_positive("tpot_slo_s", tpot_slo_s)
    lo, hi = 0, int(max_batch)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if decode_step_seconds(mid, **step_kwargs) <= tpot_slo_s:
            lo = mid
        else:
            hi = mid - 1
    return lo


def replicas_for_load(qps: float, prompt_tokens: float, output_tokens: float, prefill_tps: float,
                      decode_tps: float, target_utilization: float = 0.6) -> float:
    """Replicas a steady load needs: replica-seconds per request ``prompt / prefill_tps + output /
    decode_tps`` times ``qps``, divided by the utilization you plan for (headroom for bursts and SLOs)."""
    check_positive("qps", qps)
    check_positive("prefill_tps", prefill_tps)
    check_positive("decode_tps", decode_tps)
    check_fraction("target_utilization", target_utilization)
    busy = qps * (prompt_tokens / prefill_tps + output_tokens / decode_tps)
    return busy / target_utilization


def usd_per_million_tokens(gpu_hour_usd: float, gpus: float, tokens_per_second: float) -> float:
    """Cost of a million tokens from ``gpus`` GPUs at ``gpu_hour_usd`` each producing ``tokens_per_second``
    together: ``gpu_hour_usd * gpus / (tokens_per_second * 3600) * 1e6``."""
    check_positive("gpu_hour_usd", gpu_hour_usd)
    check_positive("gpus", gpus)
    check_positive("tokens_per_second", tokens_per_second)
    return gpu_hour_usd * gpus / (tokens_per_second * 3600.0) * 1e6

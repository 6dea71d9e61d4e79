"""Training arithmetic: FLOPs, wall time at an MFU, Chinchilla-optimal sizes, state and activation memory.

Sources: Kaplan et al., 2020 (C ~ 6 N D); Hoffmann et al., 2022 (Chinchilla: ~20 tokens per parameter);
Rajbhandari et al., 2020 (ZeRO stages); Korthikanti et al., 2022 (activation bytes per layer).
Raises ``ValueError`` on non-positive sizes, unknown ZeRO stages and out-of-range fractions.
"""
from __future__ import annotations

import math

from .units import check_fraction, check_positive

SECONDS_PER_DAY = 86_400.0


def training_flops(n_params: float, n_tokens: float) -> float:
    """``6 * N * D``: 2 FLOPs per parameter per token forward, 4 backward (weights and inputs)."""
    return 6.0 * check_positive("n_params", n_params) * check_positive("n_tokens", n_tokens)


def attention_flops_per_token(n_layers: int, seq_len: int, d_model: int) -> float:
    """Forward + backward FLOPs per token of the attention score and value matmuls, which ``6 N D`` leaves
    out: ``3 (fwd + 2x bwd) * n_layers * 4 * seq_len * d_model`` when the full ``seq_len x seq_len`` score
    matrix is computed (as PyTorch's FLOP counter counts it; a causal kernel that skips the masked half
    does half of it)."""
    for name, v in (("n_layers", n_layers), ("seq_len", seq_len), ("d_model", d_model)):
        check_positive(name, v)
    return 3.0 * n_layers * 4.0 * seq_len * d_model


def training_seconds(flops: float, n_gpus: int, peak_flops: float, mfu: float) -> float:
    """Wall time: ``flops / (n_gpus * peak_flops * mfu)``."""
    check_positive("flops", flops)
    check_positive("n_gpus", n_gpus)
    check_positive("peak_flops", peak_flops)
    check_fraction("mfu", mfu)
    return flops / (n_gpus * peak_flops * mfu)


def mfu(tokens_per_second: float, n_params: float, n_gpus: int, peak_flops: float) -> float:
    """Model FLOPs utilisation: ``tokens/s * 6 N / (n_gpus * peak)``."""
    for name, v in (("tokens_per_second", tokens_per_second), ("n_params", n_params), ("n_gpus", n_gpus),
                    ("peak_flops", peak_flops)):
        check_positive(name, v)
    return tokens_per_second * 6.0 * n_params / (n_gpus * peak_flops)


def chinchilla_optimal(compute_flops: float, tokens_per_param: float = 20.0) -> tuple[float, float]:
    """Compute-optimal ``(n_params, n_tokens)`` for a budget ``C = 6 N D`` with ``D = tokens_per_param * N``
    (Hoffmann et al.'s ~20): ``N = sqrt(C / (6 * tokens_per_param))``."""
    check_positive("compute_flops", compute_flops)
    check_positive("tokens_per_param", tokens_per_param)
    n = math.sqrt(compute_flops / (6.0 * tokens_per_param))
    return n, tokens_per_param * n


#: mixed-precision AdamW: bf16 weights 2 + bf16 grads 2 + fp32 master 4 + fp32 m 4 + fp32 v 4
ADAMW_MIXED_BYTES = {"weights": 2, "grads": 2, "master": 4, "adam_m": 4, "adam_v": 4}


def adamw_bytes_per_param() -> int:
    """16: the per-parameter training state of mixed-precision AdamW (see :data:`ADAMW_MIXED_BYTES`)."""
    return sum(ADAMW_MIXED_BYTES.values())


def state_bytes_per_gpu(n_params: float, world_size: int, zero_stage: int) -> float:
    """Per-GPU bytes of weights, grads and optimizer state (no activations) for data parallelism with
    ZeRO stage 0 (plain DDP), 1 (optimizer state sharded), 2 (+ gradients) or 3 (+ weights; = FSDP)."""
    check_positive("n_params", n_params)
    check_positive("world_size", world_size)
    b = ADAMW_MIXED_BYTES
    opt = b["master"] + b["adam_m"] + b["adam_v"]
    if zero_stage == 0:
        per = b["weights"] + b["grads"] + opt
    elif zero_stage == 1:
        per = b["weights"] + b["grads"] + opt / world_size
    elif zero_stage == 2:
        per = b["weights"] + (b["grads"] + opt) / world_size
    elif zero_stage == 3:
        per = (b["weights"] + b["grads"] + opt) / world_size
    else:
        raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage!r}")
    return n_params * per


def activation_bytes_per_layer(seq_len: int, micro_batch: int, d_model: int, n_heads: int,
                               tensor_parallel: int = 1, recompute: str = "none") -> float:
    """Activation bytes one transformer layer keeps for backward in 16-bit training (Korthikanti et al.,
    2022, eq. 1-2): ``s b h (34 + 5 a s / h) / t`` with no recomputation (the ``5 a s / h`` term is the
    attention score/softmax/dropout tensors), ``s b h * 34 / t`` with selective recomputation of attention,
    and ``2 s b h`` (the layer input only) with full recomputation."""
    for name, v in (("seq_len", seq_len), ("micro_batch", micro_batch), ("d_model", d_model),
                    ("n_heads", n_heads), ("tensor_parallel", tensor_parallel)):
        check_positive(name, v)
    sbh = seq_len * micro_batch * d_model
    if recompute == "none":
        return sbh * (34.0 + 5.0 * n_heads * seq_len / d_model) / tensor_parallel
    if recompute == "selective":
        return sbh * 34.0 / tensor_parallel
    if recompute == "full":
        return 2.0 * sbh
    raise ValueError(f"recompute must be 'none', 'selective' or 'full', got {recompute!r}")


def pipeline_bubble_fraction(stages: int, micro_batches: int) -> float:
    """Idle fraction of a GPipe/1F1B pipeline: ``(p - 1) / (m + p - 1)``."""
    check_positive("stages", stages)
    check_positive("micro_batches", micro_batches)
    return (stages - 1) / (micro_batches + stages - 1)


def ring_allreduce_seconds(nbytes: float, world_size: int, bandwidth: float, latency_s: float = 0.0) -> float:
    """Ring all-reduce time: each rank moves ``2 (N-1)/N * bytes`` over its link, in ``2 (N-1)`` steps."""
    check_positive("nbytes", nbytes)
    check_positive("world_size", world_size)
    check_positive("bandwidth", bandwidth)
    n = world_size
    return 2.0 * (n - 1) / n * nbytes / bandwidth + 2 * (n - 1) * latency_s


def lora_param_count(n_layers: int, d_model: int, kv_dim: int, d_ff: int, rank: int,
                     targets: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")) -> int:
    """Trainable LoRA parameters for a Llama-style decoder: each adapted ``d_in x d_out`` matrix adds
    ``rank * (d_in + d_out)`` (Hu et al., 2021). ``kv_dim = n_kv_heads * head_dim`` (GQA shrinks k, v)."""
    for name, v in (("n_layers", n_layers), ("d_model", d_model), ("kv_dim", kv_dim), ("d_ff", d_ff),
                    ("rank", rank)):
        check_positive(name, v)
    shapes = {"q": (d_model, d_model), "k": (d_model, kv_dim), "v": (d_model, kv_dim), "o": (d_model, d_model),
              "gate": (d_model, d_ff), "up": (d_model, d_ff), "down": (d_ff, d_model)}
    unknown = set(targets) - set(shapes)
    if unknown or not targets:
        raise ValueError(f"targets must be a non-empty subset of {sorted(shapes)}, got {targets!r}")
    return n_layers * sum(rank * (shapes[t][0] + shapes[t][1]) for t in targets)

"""Lab 9.2: weight quantization from scratch: INT8, INT4, LLM.int8(), NF4, GPTQ and AWQ.

Decoding one token reads every weight once and does ~2 FLOPs per weight: it is memory-bound, so
fewer bytes per weight means faster decode (with a kernel that reads the small format) and a
model that fits on a smaller device. This lab writes the quantizers the field uses, checks each
against its error bound or its reference library, and measures them on the curriculum model:

- **absmax (symmetric) INT8**, per tensor and per output channel: ``q = round(w / s)``,
  ``s = max|w| / 127``; **zero-point (asymmetric) INT8**: ``q = round(w / s) + z`` over
  ``[min, max]``. Round-to-nearest error is at most ``s / 2`` per element.
- **group-wise INT4** (round-to-nearest, "RTN"): one scale and zero point per group of
  ``group_size`` input columns of each row, the baseline GPTQ and AWQ improve on.
- **LLM.int8()** (Dettmers et al. 2022): activations quantized per token, weights per output
  channel, int32 accumulation, and the few input features with outliers (``|x| >= 6``) kept
  in floating point, the trick that made 8-bit inference work past 6.7B parameters.
- **NF4** (QLoRA, Dettmers et al. 2023): a 16-value codebook at the quantiles of N(0, 1),
  block-wise absmax scaling (64 weights per block), and **double quantization** (the fp32
  block scales quantized again to 8 bits, blocks of 256): 4.127 bits per weight.
  Checked bit-for-bit against ``bitsandbytes``.
- **GPTQ** (Frantar et al. 2022): quantize one column at a time and push each column's error
  onto the not-yet-quantized columns with the inverse Hessian of the layer's reconstruction
  loss (``H = 2 X^T X / N`` from calibration activations), via the Cholesky factor of
  ``H^-1`` and lazy batches of columns (Optimal Brain Surgeon, made fast).
- **AWQ** (Lin et al. 2023): scale each input channel by ``s = mean|x|^alpha`` before
  quantizing (and divide the activation by it), so the channels that carry large
  activations, the salient ones, lose less; ``alpha`` is searched per layer on calibration
  activations.

Everything keeps the embedding and the LM head in fp32 (the usual choice: the head is the most
sensitive layer) and quantizes the 4 x 5 linear layers of the transformer blocks.

Run: ``python solution.py`` (small mode, about a minute on one CPU core) or ``--full``.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from labkit import load_lab

HERE = Path(__file__).resolve().parent

__all__ = [
    "NF4Tensor",
    "QuantLinear",
    "absmax_dequantize",
    "absmax_quantize",
    "awq_quantize",
    "awq_search_scale",
    "blockwise_quantize",
    "collect_linear_inputs",
    "double_dequantize",
    "double_quantize",
    "dynamic_map",
    "gptq_hessian",
    "gptq_quantize",
    "groupwise_dequantize",
    "groupwise_quantize",
    "int8_vectorwise_quant",
    "layer_error",
    "llm_int8_matmul",
    "model_bytes",
    "nf4_codebook",
    "nf4_dequantize",
    "nf4_quantize",
    "pack_int4",
    "perplexity",
    "quantize_model",
    "unpack_int4",
    "zeropoint_dequantize",
    "zeropoint_quantize",
]

METHODS = ("fp32", "bf16", "int8", "llm.int8", "int4-rtn", "gptq", "awq", "nf4", "bnb-int8", "bnb-nf4")


# ============================================================================ input checks
def _check_weight(w: Any, name: str = "w", dims: tuple[int, ...] = (2,)) -> torch.Tensor:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(w).__name__}")
    if not w.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {w.dtype}")
    if w.dim() not in dims:
        raise ValueError(f"{name} must have {' or '.join(map(str, dims))} dimensions, got shape {tuple(w.shape)}")
    if w.numel() == 0:
        raise ValueError(f"{name} is empty")
    if not torch.isfinite(w).all():
        raise ValueError(f"{name} contains NaN or inf: quantization scales would be meaningless")
    return w


def _check_bits(bits: Any, allowed: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in allowed:
        raise ValueError(f"bits must be one of {allowed}, got {bits!r}")
    return bits


def _check_group(w: torch.Tensor, group_size: Any) -> int:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be an int >= 1, got {group_size!r}")
    if w.shape[1] % group_size:
        raise ValueError(f"group_size {group_size} does not divide the {w.shape[1]} input columns")
    return group_size


# ============================================================================ INT8: absmax and zero-point
def absmax_quantize(w: torch.Tensor, bits: int = 8, per_channel: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric (absmax) round-to-nearest quantization.

    ``qmax = 2**(bits-1) - 1`` (127 for INT8), ``scale = max|w| / qmax`` over the whole tensor
    or per output channel (row of a Linear weight), ``q = clamp(round(w / scale), -qmax, qmax)``.
    Zero maps exactly to code 0; the grid is symmetric, so one code (-128) goes unused.
    Error bound: ``|w - q * scale| <= scale / 2``.

    Args:
        w: (out, in) float tensor.
        bits: 2..8.
        per_channel: one scale per row instead of one for the tensor.

    Returns:
        q: int8, same shape; scale: float32, shape () or (out, 1). A zero row gets scale 1.

    Raises:
        TypeError / ValueError: not a float tensor, not 2-D, empty, NaN/inf, bad bits.
    """
    _check_weight(w)
    _check_bits(bits)
    w = w.float()
    # BEGIN SOLUTION qmax = 2**(bits-1)-1; absmax over everything (per_channel: over dim 1, keepdim); scale = absmax/qmax with zeros replaced by 1; q = round(w/scale).clamp(-qmax, qmax).to(int8) (easy, ~10 min)
    qmax = 2 ** (bits - 1) - 1
    amax = w.abs().amax(dim=1, keepdim=True) if per_channel else w.abs().max()
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    q = torch.round(w / scale).clamp(-qmax, qmax).to(torch.int8)
    return q, scale
    # END SOLUTION


def absmax_dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``q * scale`` in float32 (the inverse of :func:`absmax_quantize`)."""
    return q.float() * scale


def _affine_params(wmin: torch.Tensor, wmax: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero point mapping ``[min(wmin, 0), max(wmax, 0)]`` onto ``[0, 2**bits - 1]``.

    The range is stretched to contain 0 so that 0 is exactly representable (padding, ReLU
    zeros); a constant range gets scale 1 (nothing to resolve)."""
    qmax = 2**bits - 1
    lo, hi = wmin.clamp(max=0), wmax.clamp(min=0)
    scale = (hi - lo) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.round(-lo / scale).clamp(0, qmax)
    return scale, zero


def _affine_quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    return (torch.round(w / scale) + zero).clamp(0, 2**bits - 1)


def zeropoint_quantize(w: torch.Tensor, bits: int = 8,
                       per_channel: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric (zero-point, "affine") round-to-nearest quantization.

    The range ``[min, max]`` (stretched to contain 0) is mapped onto all ``2**bits`` codes:
    ``scale = (max - min) / (2**bits - 1)``, ``zero = round(-min / scale)``,
    ``q = clamp(round(w / scale) + zero, 0, 2**bits - 1)``, ``w ~ (q - zero) * scale``.
    Uses the whole grid when the values are one-sided (post-ReLU activations, LayerNorm
    gains), where absmax wastes half of it. Error bound: ``scale / 2`` per element.

    Args:
        w: (out, in) float tensor; bits: 2..8; per_channel: one (scale, zero) per row.

    Returns:
        q: uint8 codes in [0, 2**bits - 1]; scale: float32; zero: float32 holding integers
        in the same range (stored as one byte each); shapes () or (out, 1).

    Raises:
        TypeError / ValueError: as :func:`absmax_quantize`.
    """
    _check_weight(w)
    _check_bits(bits)
    w = w.float()
    # BEGIN SOLUTION min and max over everything (per_channel: per row, keepdim); scale, zero from _affine_params; codes from _affine_quantize, as uint8 (easy, ~10 min)
    if per_channel:
        wmin, wmax = w.amin(dim=1, keepdim=True), w.amax(dim=1, keepdim=True)
    else:
        wmin, wmax = w.min(), w.max()
    scale, zero = _affine_params(wmin, wmax, bits)
    q = _affine_quantize(w, scale, zero, bits).to(torch.uint8)
    return q, scale, zero
    # END SOLUTION


def zeropoint_dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """``(q - zero) * scale`` in float32."""
    return (q.float() - zero) * scale


# ============================================================================ group-wise INT4 (RTN)
def groupwise_quantize(w: torch.Tensor, bits: int = 4,
                       group_size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group-wise asymmetric round-to-nearest ("RTN"): each row is cut into groups of
    ``group_size`` consecutive input columns, each group gets its own scale and zero point
    (the layout GPTQ and AWQ checkpoints use, e.g. INT4 with groups of 128).

    Args:
        w: (out, in) float tensor; ``group_size`` must divide ``in``.
        bits: 2..8 (4 for INT4).

    Returns:
        q: (out, in) uint8 codes in [0, 2**bits - 1]; scale, zero: (out, in // group_size)
        float32 (zero holds integers). Error bound per element: its group's ``scale / 2``.

    Raises:
        TypeError / ValueError: as :func:`absmax_quantize`, or group_size not dividing ``in``.
    """
    _check_weight(w)
    _check_bits(bits)
    _check_group(w, group_size)
    w = w.float()
    # BEGIN SOLUTION view w as (out, G, group_size); per-group min/max -> _affine_params (shape (out, G)); codes with _affine_quantize against scale[..., None], zero[..., None]; reshape back to (out, in) (medium, ~15 min)
    out, n_in = w.shape
    g = w.reshape(out, n_in // group_size, group_size)
    scale, zero = _affine_params(g.amin(dim=2), g.amax(dim=2), bits)
    q = _affine_quantize(g, scale[..., None], zero[..., None], bits).reshape(out, n_in).to(torch.uint8)
    return q, scale, zero
    # END SOLUTION


def groupwise_dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`groupwise_quantize` (and of :func:`gptq_quantize`): (out, in) float32.
    The group size is ``in // scale.shape[1]``."""
    out, n_in = q.shape
    group_size = n_in // scale.shape[1]
    g = q.float().reshape(out, -1, group_size)
    return ((g - zero.float()[..., None]) * scale[..., None]).reshape(out, n_in)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte, the first in the HIGH nibble (bitsandbytes' order):
    (n,) or any shape with an even number of elements -> (numel / 2,) uint8."""
    flat = q.reshape(-1).to(torch.uint8)
    if flat.numel() % 2:
        flat = F.pad(flat, (0, 1))
    if int(flat.max()) > 15:
        raise ValueError("pack_int4 takes codes in [0, 15]")
    return (flat[0::2] << 4) | flat[1::2]


def unpack_int4(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` 4-bit codes of :func:`pack_int4`'s bytes, as (n,) uint8."""
    out = torch.empty(packed.numel() * 2, dtype=torch.uint8, device=packed.device)
    out[0::2] = packed.reshape(-1) >> 4
    out[1::2] = packed.reshape(-1) & 0xF
    return out[:n]


# ============================================================================ LLM.int8()
def int8_vectorwise_quant(x: torch.Tensor,
                          threshold: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Row-wise (per token) absmax INT8 with LLM.int8()'s outlier columns removed first.

    A feature column is an outlier column when any of its entries has ``|x| >= threshold``
    (threshold 0: no outlier handling). Outlier entries are excluded from the row absmax and
    the outlier columns' codes are set to 0 (they go through a float matmul instead).
    Same semantics as ``bitsandbytes.functional.int8_vectorwise_quant``.

    Args:
        x: (tokens, features) float tensor; threshold: >= 0.

    Returns:
        q: int8 (tokens, features), ``round(x * 127 / row_absmax)``; row_absmax: float32
        (tokens,); outlier_cols: int64 indices (None when threshold is 0).
    """
    _check_weight(x, "x")
    if not (isinstance(threshold, (int, float)) and threshold >= 0):
        raise ValueError(f"threshold must be a number >= 0, got {threshold!r}")
    x = x.float()
    # BEGIN SOLUTION threshold > 0: outlier mask |x| >= threshold, outlier_cols = columns with any outlier, zero the OUTLIER ENTRIES before the row absmax; q = round(x * 127 / row_absmax) as int8; then zero the outlier columns' codes (medium, ~15 min)
    cols = None
    xs = x
    if threshold > 0:
        outliers = x.abs() >= threshold
        cols = torch.nonzero(outliers.any(dim=0)).reshape(-1)
        xs = x.masked_fill(outliers, 0.0)
    row_absmax = xs.abs().amax(dim=1)
    q = torch.round(xs * (127.0 / row_absmax[:, None])).to(torch.int8)
    if cols is not None and x.shape[0] > 1:
        q[:, cols] = 0
    return q, row_absmax, cols
    # END SOLUTION


def llm_int8_matmul(x: torch.Tensor, w: torch.Tensor, threshold: float = 6.0) -> torch.Tensor:
    """``x @ w.T`` the LLM.int8() way (mixed-precision decomposition).

    Inlier features: ``x`` quantized per row (token) and ``w`` per output channel with
    absmax INT8, multiplied in int32, rescaled by ``row_absmax(x) * row_absmax(w) / 127**2``.
    Outlier features (columns of ``x`` with some ``|x| >= threshold``): a float matmul of just
    those columns, added on. Threshold 0 turns the decomposition off (plain W8A8).

    Args:
        x: (tokens, in) float; w: (out, in) float; threshold: >= 0 (6.0 in the paper).

    Returns:
        (tokens, out) float32.
    """
    _check_weight(w)
    if x.dim() != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"x must be (tokens, {w.shape[1]}), got {tuple(x.shape)}")
    # BEGIN SOLUTION q_x, sx, cols = int8_vectorwise_quant(x, threshold); q_w, sw per output row (int8_vectorwise_quant(w)); int32 matmul (q_x.int() @ q_w.int().T), times sx[:, None] * sw[None] / 127**2; plus x[:, cols] @ w[:, cols].T in float when there are outlier columns (medium, ~15 min)
    qx, sx, cols = int8_vectorwise_quant(x, threshold)
    qw, sw, _ = int8_vectorwise_quant(w)
    acc = qx.to(torch.int32) @ qw.to(torch.int32).T
    y = acc.float() * (sx[:, None] * sw[None, :] / (127.0 * 127.0))
    if cols is not None and cols.numel():
        y = y + x.float()[:, cols] @ w.float()[:, cols].T
    return y
    # END SOLUTION


# ============================================================================ NF4 and double quantization
def nf4_codebook() -> torch.Tensor:
    """The 16 NormalFloat4 values (QLoRA), ascending, in [-1, 1], with an exact 0.

    Quantiles of N(0, 1), so each code is used about equally often by normally distributed
    weights: 8 positive values at ``Phi^-1(linspace(o, 1/2, 9))`` (the 1/2 one dropped: it is
    0), 7 negative ones at ``-Phi^-1(linspace(o, 1/2, 8))``, and 0; then divided by the largest
    so the ends are -1 and 1. The offset ``o = 0.9677083`` is the mean of ``1 - 1/(2*15)`` and
    ``1 - 1/(2*16)``: the outermost quantile is pulled in from infinity (Phi^-1(1) = inf).
    Asymmetric on purpose: 8 positive codes, 7 negative, so 0 has a code.

    Returns:
        (16,) float32 (computed in float64, then rounded).
    """
    # BEGIN SOLUTION torch.special.ndtri is Phi^-1; build positives from linspace(o, 0.5, 9)[:-1], negatives as -ndtri(linspace(o, 0.5, 8)[:-1]), plus 0; sort; divide by the max; float32 (medium, ~15 min)
    o = 0.9677083
    pos = torch.special.ndtri(torch.linspace(o, 0.5, 9, dtype=torch.float64)[:-1])
    neg = -torch.special.ndtri(torch.linspace(o, 0.5, 8, dtype=torch.float64)[:-1])
    values = torch.cat([pos, neg, torch.zeros(1, dtype=torch.float64)]).sort().values
    return (values / values.max()).float()
    # END SOLUTION


def dynamic_map(signed: bool = True) -> torch.Tensor:
    """The 8-bit "dynamic tree" codebook bitsandbytes uses for block-wise 8-bit quantization
    (Dettmers 2016, 8-bit approximations; the double-quantization codebook of QLoRA).

    A sign bit, then a run of zero bits that acts as a decimal exponent (10^-6 ... 10^0), an
    indicator 1 bit, and the remaining bits a linear fraction in [0.1, 1]: fine resolution
    near 0, coarse near 1, covering 7 orders of magnitude in 8 bits. (The scale values QLoRA
    double-quantizes are all positive and similar, so a linear code would do nearly as well;
    we use this one to match the library bit for bit.)

    Returns:
        (256,) float32, ascending, containing 0 and 1.0.
    """
    values: list[float] = []
    exp_bits, non_sign = 7, 7
    for i in range(exp_bits):
        n_frac = 2 ** (i + non_sign - exp_bits) + 1 if signed else 2 ** (i + non_sign - exp_bits + 1) + 1
        edges = torch.linspace(0.1, 1, n_frac, dtype=torch.float32)
        mids = ((edges[:-1] + edges[1:]) / 2.0) * (10 ** (-(exp_bits - 1) + i))
        values += mids.tolist()
        if signed:
            values += (-mids).tolist()
    values += [0.0, 1.0]
    values += [0.0] * (256 - len(values))
    return torch.tensor(sorted(values), dtype=torch.float32)


def blockwise_quantize(x: torch.Tensor, code: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-codebook quantization with one absmax scale per block of ``block_size``
    consecutive elements (of the flattened tensor; the last block may be shorter).

    Each block is divided by its absmax (so it lies in [-1, 1]) and every value takes the
    index of the NEAREST code (the boundaries are the midpoints between adjacent codes).

    Args:
        x: float tensor, any shape; code: (K,) ascending float32 codebook in [-1, 1];
        block_size: >= 1.

    Returns:
        idx: (numel,) uint8 code indices; absmax: (n_blocks,) float32.
    """
    _check_weight(x, "x", dims=tuple(range(1, 9)))
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
    flat = x.reshape(-1).float()
    n = flat.numel()
    n_blocks = math.ceil(n / block_size)
    # BEGIN SOLUTION pad flat to n_blocks*block_size with zeros, view (n_blocks, block_size); absmax per block (zeros -> tiny, as bnb clamps at 1e-38); scaled = clamp(x * (1/absmax), -1, 1); idx = torch.bucketize(scaled, midpoints of code); drop the padding (medium, ~15 min)
    blocks = F.pad(flat, (0, n_blocks * block_size - n)).reshape(n_blocks, block_size)
    absmax = blocks.abs().amax(dim=1)
    scaled = (blocks * (1.0 / absmax.clamp(min=1e-38))[:, None]).clamp(-1, 1)
    mids = (code[:-1] + code[1:]) / 2
    idx = torch.bucketize(scaled.reshape(-1)[:n], mids).to(torch.uint8)
    return idx, absmax
    # END SOLUTION


@functools.cache
def _nf4_code() -> torch.Tensor:
    return nf4_codebook()


@functools.cache
def _dynamic_code() -> torch.Tensor:
    return dynamic_map()


def _blockwise_dequantize(idx: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, block_size: int) -> torch.Tensor:
    vals = code[idx.long()]
    n = vals.numel()
    padded = F.pad(vals, (0, absmax.numel() * block_size - n)).reshape(-1, block_size)
    return (padded * absmax[:, None]).reshape(-1)[:n]


def double_quantize(absmax: torch.Tensor, block_size: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """QLoRA's double quantization of the NF4 block scales.

    The fp32 absmaxes (one per 64 weights: 0.5 bit per weight) are all positive, so first
    their mean is subtracted (centering them around 0 uses the signed codebook's both halves),
    then they are quantized with the 8-bit :func:`dynamic_map` in blocks of 256 with their
    own fp32 absmax: 8/64 + 32/(64*256) = 0.127 bit per weight.

    Args:
        absmax: (n,) float32, the first-level scales; block_size: second-level block size.

    Returns:
        idx: (n,) uint8 codes; absmax2: (ceil(n / block_size),) float32; offset: () float32 mean.
    """
    _check_weight(absmax, "absmax", dims=(1,))
    # BEGIN SOLUTION offset = absmax.mean(); blockwise_quantize(absmax - offset, dynamic_map(), block_size) (easy, ~5 min)
    offset = absmax.float().mean()
    idx, absmax2 = blockwise_quantize(absmax.float() - offset, _dynamic_code(), block_size)
    return idx, absmax2, offset
    # END SOLUTION


def double_dequantize(idx: torch.Tensor, absmax2: torch.Tensor, offset: torch.Tensor,
                      block_size: int = 256) -> torch.Tensor:
    """The first-level scales back from :func:`double_quantize`: (n,) float32."""
    return _blockwise_dequantize(idx, absmax2, _dynamic_code(), block_size) + offset


@dataclasses.dataclass
class NF4Tensor:
    """An NF4-quantized weight: ``packed`` (ceil(numel/2),) uint8 codes, two per byte (high
    nibble first); ``absmax`` (n_blocks,) float32 scales, or, when double-quantized,
    ``absmax_idx`` (n_blocks,) uint8 + ``absmax2`` float32 + ``offset``."""

    packed: torch.Tensor
    shape: tuple[int, ...]
    block_size: int
    absmax: torch.Tensor | None = None
    absmax_idx: torch.Tensor | None = None
    absmax2: torch.Tensor | None = None
    offset: torch.Tensor | None = None
    block_size2: int = 256

    def scales(self) -> torch.Tensor:
        if self.absmax is not None:
            return self.absmax
        return double_dequantize(self.absmax_idx, self.absmax2, self.offset, self.block_size2)

    @property
    def nbytes(self) -> int:
        parts = [self.packed, self.absmax, self.absmax_idx, self.absmax2, self.offset]
        return sum(p.numel() * p.element_size() for p in parts if p is not None)


def nf4_quantize(w: torch.Tensor, block_size: int = 64, double_quant: bool = True) -> NF4Tensor:
    """NF4 quantization (QLoRA): :func:`blockwise_quantize` with :func:`nf4_codebook`, codes
    packed two per byte, block scales optionally double-quantized (:func:`double_quantize`).
    Equals ``bitsandbytes.functional.quantize_4bit(w, blocksize=block_size, quant_type="nf4",
    compress_statistics=double_quant)`` bit for bit (codes, scales, second-level state).

    Args:
        w: float tensor (any shape); block_size: 64 in QLoRA.

    Returns:
        :class:`NF4Tensor`. Error bound per element: block absmax * (largest gap between
        adjacent NF4 values) / 2 = absmax * 0.152 (between -1 and -0.696), on top of the double-quantized scale's error.
    """
    _check_weight(w, dims=tuple(range(1, 9)))
    idx, absmax = blockwise_quantize(w, _nf4_code(), block_size)
    t = NF4Tensor(packed=pack_int4(idx), shape=tuple(w.shape), block_size=block_size)
    if double_quant:
        t.absmax_idx, t.absmax2, t.offset = double_quantize(absmax)
    else:
        t.absmax = absmax
    return t


def nf4_dequantize(t: NF4Tensor) -> torch.Tensor:
    """The float32 weight back from an :class:`NF4Tensor`, in its original shape."""
    n = math.prod(t.shape)
    idx = unpack_int4(t.packed, n)
    return _blockwise_dequantize(idx, t.scales(), _nf4_code(), t.block_size).reshape(t.shape)


# ============================================================================ GPTQ
def gptq_hessian(X: torch.Tensor) -> torch.Tensor:
    """The Hessian of GPTQ's layer-wise objective ``||X W^T - X W_hat^T||^2 / N`` with respect
    to one row of ``W_hat``: ``H = 2 X^T X / N`` (the same for every row).

    Args:
        X: (N, in) calibration inputs of the layer (tokens as rows), float.

    Returns:
        (in, in) float32, symmetric positive semi-definite.
    """
    _check_weight(X, "X")
    # BEGIN SOLUTION 2 * X^T X / N, in float32 (easy, ~5 min)
    X = X.float()
    return 2.0 * X.T @ X / X.shape[0]
    # END SOLUTION


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, bits: int = 4, group_size: int = 32, block_size: int = 128,
                  percdamp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ (Frantar et al. 2022): quantize the columns of ``W`` left to right; after each,
    spread its rounding error over the columns not yet quantized so that ``X W^T`` changes as
    little as possible (the Optimal Brain Surgeon update with the inverse Hessian).

    Algorithm (the paper's Algorithm 1, with groups):

    1. dead inputs (``H[i, i] == 0``) get ``H[i, i] = 1`` and ``W[:, i] = 0``; dampen
       ``H += percdamp * mean(diag H) * I``;
    2. ``U = cholesky(H^-1)`` as an UPPER factor (``H^-1 = U^T U``): row ``i`` of ``U`` from
       the diagonal on holds the inverse-Hessian entries of column ``i`` once columns
       ``< i`` are fixed, so no per-column re-inversion is needed;
    3. for each column ``i`` (within lazy blocks of ``block_size`` columns): at the first
       column of a group, fit that group's scale/zero (as RTN) on the CURRENT, already
       updated weights; ``q = quant(w_i)``; ``err = (w_i - q) / U[i, i]``;
       ``W[:, j] -= err * U[i, j]`` for the block's later columns ``j``;
    4. after a block, apply its accumulated errors to all columns to its right in one matmul
       (``W[:, later] -= Err @ U[block, later]``): the same arithmetic as updating column by
       column, but as a matrix product ("lazy batch" updates, memory-bound -> compute-bound).

    Args:
        W: (out, in) float weight; H: (in, in) from :func:`gptq_hessian`.
        bits: 2..8; group_size: divides ``in`` and ``block_size``; block_size: >= 1;
        percdamp: dampening as a fraction of the mean Hessian diagonal.

    Returns:
        (q, scale, zero) in :func:`groupwise_quantize`'s format (so
        :func:`groupwise_dequantize` gives the GPTQ weight).

    Raises:
        ValueError: shapes that do not match, group_size not dividing ``in`` or ``block_size``,
            a Hessian that stays non-positive-definite after dampening.
    """
    _check_weight(W, "W")
    _check_weight(H, "H")
    _check_bits(bits)
    _check_group(W, group_size)
    n_out, n_in = W.shape
    if H.shape != (n_in, n_in):
        raise ValueError(f"H must be ({n_in}, {n_in}) for W of shape {tuple(W.shape)}, got {tuple(H.shape)}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1 or block_size % group_size:
        raise ValueError(f"block_size must be a positive multiple of group_size {group_size}, got {block_size!r}")
    if not 0 <= percdamp < 1:
        raise ValueError(f"percdamp must be in [0, 1), got {percdamp!r}")
    W = W.float().clone()
    H = H.float().clone()
    n_groups = n_in // group_size
    q = torch.zeros(n_out, n_in, dtype=torch.uint8)
    scale = torch.zeros(n_out, n_groups)
    zero = torch.zeros(n_out, n_groups)
    # BEGIN SOLUTION steps 1-4 of the docstring: dead columns; damp; U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True); loop over blocks [b, e): W1 = W[:, b:e].clone(), Err = zeros; per column i: at group starts fit _affine_params on W1's group columns (min/max per row), q_i = _affine_quantize, deq = (q_i - zero) * scale, err = (w - deq) / U[i, i], W1[:, i:] -= err outer U[i, i:] (within block), Err[:, i] = err; after the block W[:, e:] -= Err @ U[b:e, e:] (hard, ~45 min)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(n_in)
    try:
        U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    except torch.linalg.LinAlgError as e:
        raise ValueError("the dampened Hessian is not positive definite: raise percdamp or use more "
                         "calibration tokens") from e
    qmax = 2**bits - 1
    for b in range(0, n_in, block_size):
        e = min(b + block_size, n_in)
        W1 = W[:, b:e].clone()
        Err = torch.zeros_like(W1)
        U1 = U[b:e, b:e]
        for i in range(e - b):
            col = b + i
            if col % group_size == 0:
                grp = W1[:, i:i + group_size]
                s, z = _affine_params(grp.amin(dim=1), grp.amax(dim=1), bits)
                scale[:, col // group_size], zero[:, col // group_size] = s, z
            s, z = scale[:, col // group_size], zero[:, col // group_size]
            w = W1[:, i]
            qi = (torch.round(w / s) + z).clamp(0, qmax)
            q[:, col] = qi.to(torch.uint8)
            err = (w - (qi - z) * s) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            Err[:, i] = err
        W[:, e:] -= Err @ U[b:e, e:]
    return q, scale, zero
    # END SOLUTION


# ============================================================================ AWQ
def layer_error(W: torch.Tensor, W_hat: torch.Tensor, X: torch.Tensor) -> float:
    """The layer-wise reconstruction error GPTQ and AWQ minimize: ``||X W^T - X W_hat^T||_F``
    for inputs X (N, in) and weights (out, in). A Python float."""
    return torch.linalg.matrix_norm(X.float() @ (W.float() - W_hat.float()).T).item()


def awq_quantize(W: torch.Tensor, s: torch.Tensor, bits: int = 4,
                 group_size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """RTN-quantize ``W * s`` (input channel ``j`` scaled by ``s[j]``); the layer then computes
    ``(x / s) @ deq(q)^T``. Returns (q, scale, zero, effective weight ``deq(q) / s``)."""
    q, scale, zero = groupwise_quantize(W.float() * s[None, :], bits, group_size)
    return q, scale, zero, groupwise_dequantize(q, scale, zero) / s[None, :]


def awq_search_scale(W: torch.Tensor, X: torch.Tensor, bits: int = 4, group_size: int = 32,
                     n_grid: int = 20) -> tuple[torch.Tensor, float, list[float]]:
    """AWQ's activation-aware scale search for one linear layer (Lin et al. 2023, section 3.2).

    The salient input channels are those with large activations (not large weights). Scaling
    channel ``j`` of ``W`` up by ``s_j > 1`` and its activation down by ``s_j`` leaves the
    product unchanged but shrinks that channel's RELATIVE rounding error (the group's scale
    hardly moves when one column grows a little). AWQ sets ``s = mean|x|^alpha``, normalized
    so ``sqrt(max(s) * min(s)) = 1``, and grid-searches ``alpha`` in ``{0, 1/n, ..., (n-1)/n}``
    for the smallest :func:`layer_error` of ``deq(Q(W * s)) / s`` on the calibration inputs.
    ``alpha = 0`` is plain RTN, so the search never does worse than RTN on those inputs.

    Args:
        W: (out, in) float; X: (N, in) calibration inputs; bits, group_size: as RTN;
        n_grid: number of alpha values tried.

    Returns:
        s: (in,) float32 per-channel scales; best alpha; the error for every alpha tried.
    """
    _check_weight(W, "W")
    _check_weight(X, "X")
    if X.shape[1] != W.shape[1]:
        raise ValueError(f"X has {X.shape[1]} features, W expects {W.shape[1]}")
    if isinstance(n_grid, bool) or not isinstance(n_grid, int) or n_grid < 1:
        raise ValueError(f"n_grid must be an int >= 1, got {n_grid!r}")
    W, X = W.float(), X.float()
    x_mean = X.abs().mean(dim=0).clamp(min=1e-8)
    # BEGIN SOLUTION for alpha in [k / n_grid for k in range(n_grid)]: s = x_mean**alpha, s = s / sqrt(s.max() * s.min()); W_hat = awq_quantize(W, s, ...)[3]; err = layer_error(W, W_hat, X); keep the best (s, alpha) (medium, ~20 min)
    errors: list[float] = []
    best = (math.inf, 0.0, torch.ones_like(x_mean))
    for k in range(n_grid):
        alpha = k / n_grid
        s = x_mean.pow(alpha)
        s = s / torch.sqrt(s.max() * s.min())
        err = layer_error(W, awq_quantize(W, s, bits, group_size)[3], X)
        errors.append(err)
        if err < best[0]:
            best = (err, alpha, s)
    _, alpha, s = best
    return s, alpha, errors
    # END SOLUTION


# ============================================================================ quantized layers and models
class QuantLinear(nn.Module):
    """A bias-free Linear whose weight is stored quantized and dequantized on the fly
    (weight-only quantization: activations stay in float; no fused kernel, so on a CPU this is
    SLOWER than fp32: the bytes shrink, the arithmetic grows).

    Kinds: ``"int8"`` (per-channel absmax codes + scales), ``"llm.int8"`` (same weight, plus
    per-token INT8 activations with outlier columns in float: :func:`llm_int8_matmul`),
    ``"int4"`` (packed group-wise codes + scales + zeros: RTN, GPTQ, AWQ; AWQ adds
    ``input_scale``, the activations being divided by it), ``"nf4"`` (:class:`NF4Tensor`).
    """

    def __init__(self, kind: str, in_features: int, out_features: int, tensors: dict[str, Any],
                 threshold: float = 6.0) -> None:
        super().__init__()
        self.kind, self.in_features, self.out_features, self.threshold = kind, in_features, out_features, threshold
        self.nf4: NF4Tensor | None = tensors.pop("nf4", None)
        for name, t in tensors.items():
            self.register_buffer(name, t)

    def dequantized_weight(self) -> torch.Tensor:
        if self.kind in ("int8", "llm.int8"):
            return absmax_dequantize(self.q, self.scale)
        if self.kind == "int4":
            codes = unpack_int4(self.q, self.in_features * self.out_features).reshape(self.out_features, -1)
            return groupwise_dequantize(codes, self.scale, self.zero)
        return nf4_dequantize(self.nf4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "llm.int8":
            y = llm_int8_matmul(x.reshape(-1, self.in_features), self.dequantized_weight(), self.threshold)
            return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        if getattr(self, "input_scale", None) is not None:
            x = x / self.input_scale
        return F.linear(x, self.dequantized_weight().to(x.dtype))

    @property
    def nbytes(self) -> int:
        n = sum(b.numel() * b.element_size() for b in self.buffers())
        return n + (self.nf4.nbytes if self.nf4 is not None else 0)


def _block_linears(block: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}


def _set_module(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


@torch.no_grad()
def collect_linear_inputs(model: nn.Module, block: nn.Module, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run ``model`` on ``ids`` (B, T) and return, for every ``nn.Linear`` of ``block``, its
    inputs as (B*T, in) float32 (forward pre-hooks; the model is run as it is, so layers
    quantized earlier feed their quantized outputs forward: GPTQ's sequential calibration)."""
    inputs: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for name, lin in _block_linears(block).items():
        def hook(_mod: nn.Module, args: tuple, name: str = name) -> None:
            inputs.setdefault(name, []).append(args[0].reshape(-1, args[0].shape[-1]).float())
        hooks.append(lin.register_forward_pre_hook(hook))
    try:
        model(ids)
    finally:
        for h in hooks:
            h.remove()
    return {k: torch.cat(v) for k, v in inputs.items()}


def _int4_layer(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, lin: nn.Linear,
                input_scale: torch.Tensor | None = None) -> QuantLinear:
    tensors = {"q": pack_int4(q), "scale": scale, "zero": zero.to(torch.uint8)}
    if input_scale is not None:
        tensors["input_scale"] = input_scale
    return QuantLinear("int4", lin.in_features, lin.out_features, tensors)


def _bnb_layer(lin: nn.Linear, kind: str) -> nn.Module:
    import bitsandbytes as bnb

    w = lin.weight.data.clone()
    if kind == "bnb-int8":
        layer = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features, bias=False, has_fp16_weights=False,
                                    threshold=6.0)
        layer.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)
    else:
        layer = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=False, quant_type="nf4",
                                  compress_statistics=True, compute_dtype=torch.float32)
        layer.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4", compress_statistics=True)
    return layer.to("cpu").eval()


@torch.no_grad()
def quantize_model(model: nn.Module, method: str, calib_ids: torch.Tensor | None = None, *, group_size: int = 32,
                   n_grid: int = 20) -> nn.Module:
    """A quantized copy of a MiniGPT: every ``nn.Linear`` inside ``model.blocks`` replaced
    (embedding and LM head stay fp32), the original untouched.

    Methods: ``fp32`` (a copy), ``bf16`` (the whole model cast), ``int8`` (per-channel absmax,
    weight-only), ``llm.int8`` (W8A8 with outlier columns, threshold 6), ``int4-rtn``,
    ``gptq``, ``awq`` (group-wise INT4, ``group_size``), ``nf4`` (block 64, double-quantized),
    ``bnb-int8`` / ``bnb-nf4`` (bitsandbytes' ``Linear8bitLt`` / ``Linear4bit`` layers).
    GPTQ and AWQ calibrate block by block on ``calib_ids`` (B, T), feeding each block the
    outputs of the already-quantized blocks before it.

    Raises:
        ValueError: unknown method; gptq/awq without ``calib_ids``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method in ("gptq", "awq") and calib_ids is None:
        raise ValueError(f"{method} needs calibration token ids (calib_ids)")
    qmodel = copy.deepcopy(model).eval()
    if method == "fp32":
        return qmodel
    if method == "bf16":
        return qmodel.to(torch.bfloat16)
    for block in qmodel.blocks:
        inputs = collect_linear_inputs(qmodel, block, calib_ids) if method in ("gptq", "awq") else {}
        for name, lin in _block_linears(block).items():
            W = lin.weight.data.float()
            if method in ("int8", "llm.int8"):
                q, scale = absmax_quantize(W, 8, per_channel=True)
                new: nn.Module = QuantLinear(method, lin.in_features, lin.out_features, {"q": q, "scale": scale})
            elif method == "int4-rtn":
                new = _int4_layer(*groupwise_quantize(W, 4, group_size), lin)
            elif method == "gptq":
                new = _int4_layer(*gptq_quantize(W, gptq_hessian(inputs[name]), 4, group_size), lin)
            elif method == "awq":
                s, _, _ = awq_search_scale(W, inputs[name], 4, group_size, n_grid)
                q, scale, zero, _ = awq_quantize(W, s, 4, group_size)
                new = _int4_layer(q, scale, zero, lin, input_scale=s)
            elif method == "nf4":
                new = QuantLinear("nf4", lin.in_features, lin.out_features, {"nf4": nf4_quantize(W)})
            else:
                new = _bnb_layer(lin, method)
            _set_module(block, name, new)
    return qmodel


def model_bytes(model: nn.Module) -> int:
    """Bytes of a model's weights as stored: parameters and buffers (RoPE tables excluded: they
    are recomputable), quantized layers' codes and scales, bitsandbytes' quantization state."""
    total = 0
    for mod in model.modules():
        if isinstance(mod, QuantLinear):
            total += mod.nbytes
            continue
        for name, t in list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False)):
            if "rope" in name or "cos" in name or "sin" in name or "inv_freq" in name:
                continue
            total += t.numel() * t.element_size()
            qs = getattr(t, "quant_state", None)
            if qs is not None:      # bnb 4-bit: absmax codes + second-level state
                total += qs.absmax.numel() * qs.absmax.element_size()
                if qs.state2 is not None:
                    total += qs.state2.absmax.numel() * 4 + 4
            scb = getattr(t, "SCB", None)
            if scb is None and getattr(mod, "state", None) is not None:
                scb = getattr(mod.state, "SCB", None)    # bnb moves it there on the first forward
            if scb is not None:     # bnb int8: one fp32 scale per row
                total += scb.numel() * scb.element_size()
    return total


@torch.no_grad()
def perplexity(model: nn.Module, ids: torch.Tensor, seq_len: int = 256, batch_size: int = 16) -> float:
    """Perplexity of ``model`` on a 1-D id tensor, cut into non-overlapping windows of
    ``seq_len`` inputs (+1 target): ``exp`` of the mean next-token cross-entropy (float32),
    ``batch_size`` windows per forward pass.

    Raises:
        ValueError: fewer than ``seq_len + 1`` ids.
    """
    n = (ids.numel() - 1) // seq_len
    if n < 1:
        raise ValueError(f"need at least {seq_len + 1} tokens, got {ids.numel()}")
    x = ids[: n * seq_len].reshape(n, seq_len)
    y = ids[1: n * seq_len + 1].reshape(n, seq_len)
    total = 0.0
    for i in range(0, n, batch_size):
        logits = model(x[i: i + batch_size])[0].float()
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[i: i + batch_size].reshape(-1),
                                 reduction="sum").item()
    return math.exp(total / (n * seq_len))


# ============================================================================ self-test
def load_curriculum() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """(the curriculum MiniGPT in eval mode, train.bin ids, val.bin ids) as int64 tensors."""
    from labkit import curriculum_model_path

    nano = load_lab("phase-05-training-small-llms/lab-02-nano-gpt")
    p = curriculum_model_path("main")
    model, _ = nano.load_checkpoint(p / "minigpt.pt")
    train = torch.from_numpy(nano.load_bin(p / "data" / "train.bin")[:200_000].astype("int64"))
    val = torch.from_numpy(nano.load_bin(p / "data" / "val.bin").astype("int64"))
    return model.eval(), train, val


def calibration_ids(train: torch.Tensor, n_seq: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """``n_seq`` random windows of ``seq_len`` tokens from the training ids: (n_seq, seq_len)."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, train.numel() - seq_len, (n_seq,), generator=g)
    return torch.stack([train[s: s + seq_len] for s in starts.tolist()])


def double_quant_agreement(absmax: torch.Tensor, ref_state: Any, block_size: int = 256) -> tuple[bool, int, float]:
    """Compare :func:`double_quantize` of the first-level scales ``absmax`` with bitsandbytes'
    ``QuantState`` (``compress_statistics=True``). Returns (offset and second-level absmax
    equal and every differing code one step away with ours the nearer, number of equal codes,
    the largest distance of a differing value from the midpoint between the two codes)."""
    idx, absmax2, offset = double_quantize(absmax, block_size)
    ok = bool(torch.allclose(offset, ref_state.offset) and torch.equal(absmax2, ref_state.state2.absmax))
    code = _dynamic_code()
    x = F.pad(absmax.float() - offset, (0, absmax2.numel() * block_size - absmax.numel()))
    x = (x.reshape(-1, block_size) / absmax2[:, None]).reshape(-1)[: absmax.numel()]
    gap = 0.0
    for i in (idx != ref_state.absmax).nonzero().reshape(-1).tolist():
        a, b = int(idx[i]), int(ref_state.absmax[i])
        ok = ok and abs(a - b) == 1 and bool((x[i] - code[a]).abs() <= (x[i] - code[b]).abs())
        gap = max(gap, abs(float(x[i] - (code[a] + code[b]) / 2)))
    return ok, int((idx == ref_state.absmax).sum()), gap


def _cpu_seconds(fn: Any) -> float:
    c = time.process_time()
    fn()
    return time.process_time() - c


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="65,536 val.bin tokens, 128 calibration windows, 128 new tokens")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--group-size", type=int, default=32)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    import bitsandbytes.functional as bnbF

    from labkit import seed_everything
    from labkit.plots import plt, savefig

    kv = load_lab("phase-09-inference-optimization/lab-01-kv-cache")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)   # its per-call "cast to float16" notice
    t_start, c_start = time.perf_counter(), time.process_time()
    failures: list[str] = []
    seed_everything(args.seed)
    gs = args.group_size

    # 1. error bounds and the bitsandbytes reference on a random tensor ---------------------------
    w = torch.randn(256, 512) * torch.logspace(-1, 1, 256)[:, None]     # rows of very different scale
    print("Round-trip error on a (256, 512) Gaussian weight with row scales 0.1 ... 10:")
    print("| scheme | max abs error | bound (max scale / 2) | mean abs error |")
    print("|---|---|---|---|")
    rows = []
    q, s = absmax_quantize(w)
    rows.append(("INT8 absmax, per tensor", absmax_dequantize(q, s), s.max() / 2))
    q, s = absmax_quantize(w, per_channel=True)
    rows.append(("INT8 absmax, per channel", absmax_dequantize(q, s), s.max() / 2))
    q, s, z = zeropoint_quantize(w)
    rows.append(("INT8 zero-point, per tensor", zeropoint_dequantize(q, s, z), s.max() / 2))
    q, s, z = zeropoint_quantize(w, per_channel=True)
    rows.append(("INT8 zero-point, per channel", zeropoint_dequantize(q, s, z), s.max() / 2))
    for g in (128, 32):
        q, s, z = groupwise_quantize(w, 4, g)
        rows.append((f"INT4 group {g}", groupwise_dequantize(q, s, z), s.max() / 2))
    t = nf4_quantize(w, 64, double_quant=False)
    rows.append(("NF4 block 64", nf4_dequantize(t), t.absmax.max() * nf4_codebook().diff().max() / 2))
    for name, deq, bound in rows:
        err = (deq - w).abs()
        ok = err.max() <= bound * (1 + 1e-5) + 1e-6
        print(f"| {name} | {err.max():.4f} | {bound:.4f} | {err.mean():.5f} |")
        if not ok:
            failures.append(f"{name} above its bound")

    ours = nf4_quantize(w, 64, double_quant=True)
    ref_packed, ref_state = bnbF.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    same_codes = torch.equal(ours.packed, ref_packed.reshape(-1))
    book_diff = (nf4_codebook() - bnbF.get_4bit_type("nf4", device="cpu")).abs().max().item()
    n_dq = ours.absmax_idx.numel()
    single = nf4_quantize(w, 64, double_quant=False)
    dq_ok, dq_same, dq_gap = double_quant_agreement(single.absmax, ref_state)
    ref1_packed, ref1_state = bnbF.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
    deq_diff = (nf4_dequantize(single) - bnbF.dequantize_4bit(ref1_packed, ref1_state)).abs().max().item()
    print(f"\nNF4 vs bitsandbytes {__import__('bitsandbytes').__version__} (quantize_4bit, nf4, block 64): "
          f"codebook max diff {book_diff:.1e}; packed codes equal {same_codes}; block scales equal "
          f"{torch.equal(single.absmax, ref1_state.absmax)}; dequantized max diff {deq_diff:.1e}")
    print(f"double quantization (8-bit dynamic code, block 256): offset and second-level scales equal "
          f"{dq_ok}; scale codes equal {dq_same}/{n_dq}, the others one code apart at values within "
          f"{dq_gap:.1e} of a midpoint (bnb's C kernel is not exactly round-to-nearest there; ours is); "
          f"{8 * ours.nbytes / w.numel():.3f} bits per weight")
    if not (same_codes and deq_diff < 1e-6 * w.abs().max() and book_diff < 1e-6 and dq_ok and dq_same >= 0.99 * n_dq):
        failures.append("NF4 != bitsandbytes")

    x = torch.randn(64, 512)
    x[:, [7, 300]] *= 25.0                                               # two outlier features
    wl = torch.randn(128, 512) * 0.05
    exact = x @ wl.T
    e_plain = (llm_int8_matmul(x, wl, threshold=0.0) - exact).abs().mean().item()
    e_split = (llm_int8_matmul(x, wl, threshold=6.0) - exact).abs().mean().item()
    print(f"LLM.int8() on activations with 2 outlier features (x25): mean |error| plain W8A8 {e_plain:.4f}, "
          f"with the outlier split {e_split:.4f} ({e_plain / e_split:.1f}x smaller)")
    if not e_split < e_plain / 2:
        failures.append("outlier split did not help")

    # 2. the curriculum model: layer-wise errors ---------------------------------------------------
    model, train, val = load_curriculum()
    n_calib = 128 if args.full else 32
    calib = calibration_ids(train, n_calib, 128, seed=args.seed)
    held = calibration_ids(val, 16, 128, seed=args.seed + 1)
    print(f"\nLayer-wise reconstruction error ||XW^T - XW_hat^T||_F / ||XW^T||_F on held-out val.bin activations "
          f"(INT4, group {gs}; calibration: {n_calib} x 128 train.bin tokens; salient = top 1% input channels "
          "by mean |x|, error of those columns' contribution):")
    print("| layer | RTN | GPTQ | AWQ | AWQ alpha | RTN salient | AWQ salient |")
    print("|---|---|---|---|---|---|---|")
    gptq_wins = awq_salient_wins = n_layers = 0
    for bi, block in enumerate(model.blocks):
        xin = collect_linear_inputs(model, block, calib)
        xho = collect_linear_inputs(model, block, held)
        for name, lin in _block_linears(block).items():
            W, X, Xh = lin.weight.data, xin[name], xho[name]
            ref = torch.linalg.matrix_norm(Xh @ W.T).item()
            rtn = groupwise_dequantize(*groupwise_quantize(W, 4, gs))
            gq = groupwise_dequantize(*gptq_quantize(W, gptq_hessian(X), 4, gs))
            s, alpha, _ = awq_search_scale(W, X, 4, gs)
            aw = awq_quantize(W, s, 4, gs)[3]
            k = max(1, W.shape[1] // 100)
            sal = X.abs().mean(0).topk(k).indices
            e = {n_: layer_error(W, wq, Xh) / ref for n_, wq in (("rtn", rtn), ("gptq", gq), ("awq", aw))}
            sal_rtn = layer_error(W[:, sal], rtn[:, sal], Xh[:, sal]) / ref
            sal_awq = layer_error(W[:, sal], aw[:, sal], Xh[:, sal]) / ref
            print(f"| {bi}.{name} | {e['rtn']:.4f} | {e['gptq']:.4f} | {e['awq']:.4f} | {alpha:.2f} | "
                  f"{sal_rtn:.4f} | {sal_awq:.4f} |")
            n_layers += 1
            gptq_wins += e["gptq"] < e["rtn"]
            awq_salient_wins += sal_awq < sal_rtn
    print(f"GPTQ below RTN on {gptq_wins}/{n_layers} layers; AWQ below RTN on the salient channels on "
          f"{awq_salient_wins}/{n_layers}")
    if gptq_wins < n_layers:
        failures.append("GPTQ not below RTN on every layer")

    # 3. the model table ---------------------------------------------------------------------------
    ev = val[: (256 if args.full else 16) * 256 + 1]
    n_new = 128 if args.full else 32
    prompt = val[None, :16]
    fp_ppl = perplexity(model, ev)
    n_weights = sum(lin.weight.numel() for b in model.blocks for lin in _block_linears(b).values())
    table = []
    for method in METHODS:
        qm = quantize_model(model, method, calib, group_size=gs)
        ppl = perplexity(qm, ev)
        kv.generate_cached(qm, prompt, 4)                                  # warm-up
        cpu = min(_cpu_seconds(lambda m=qm: kv.generate_cached(m, prompt, n_new)) for _ in range(3))
        lin_bytes = sum(model_bytes(b) for b in qm.blocks)
        norm_bytes = sum(p.numel() * p.element_size() for b in qm.blocks for m in b.modules()
                         if "Norm" in type(m).__name__ for p in m.parameters(recurse=False))
        table.append((method, model_bytes(qm), lin_bytes, 8 * (lin_bytes - norm_bytes) / n_weights, ppl, n_new / cpu))
    print(f"\nThe curriculum model quantized (blocks' linears only; embedding + head fp32), perplexity on "
          f"{ev.numel() - 1:,} val.bin tokens, greedy decode of {n_new} tokens after a 16-token prompt, batch 1, "
          "1 CPU thread (tok/s by process CPU time, best of 3):")
    print("| method | model bytes | block bytes | bits per block weight | perplexity | delta vs fp32 | "
          "decode tok/s |")
    print("|---|---|---|---|---|---|---|")
    for method, nb, lb, bits, ppl, tps in table:
        print(f"| {method} | {nb:,} | {lb:,} | {bits:.3f} | {ppl:.3f} | {ppl - fp_ppl:+.3f} | {tps:.0f} |")
    res = {m: (nb, lb, ppl) for m, nb, lb, _, ppl, _ in table}
    if not res["gptq"][2] < res["int4-rtn"][2]:
        failures.append("GPTQ perplexity not below RTN's")
    if not abs(res["int8"][2] - fp_ppl) < 0.01 * fp_ppl:
        failures.append("INT8 moved perplexity by more than 1%")
    if not res["nf4"][1] < res["int8"][1] < res["fp32"][1]:
        failures.append("bytes not ordered fp32 > int8 > nf4")

    fig, ax = plt.subplots(figsize=(6.5, 4))
    offsets = {"llm.int8": (4, 8), "bnb-int8": (4, -10), "bnb-nf4": (-40, -12), "awq": (4, 6), "gptq": (4, -10)}
    for method, _, lb, _, ppl, _ in table:
        ax.scatter(lb / 1e3, ppl - fp_ppl, marker="s" if method.startswith("bnb") else "o")
        ax.annotate(method, (lb / 1e3, ppl - fp_ppl), textcoords="offset points",
                    xytext=offsets.get(method, (4, 4)), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("transformer-block weights (kB)")
    ax.set_ylabel("perplexity - fp32 perplexity")
    ax.set_title("Quantizing the curriculum model: bytes vs quality")
    path = savefig(fig, HERE / "figures" / "quant_tradeoff.png")
    print(f"\nwrote {path}")
    print(f"total self-test time: {time.perf_counter() - t_start:.1f} s wall, "
          f"{time.process_time() - c_start:.1f} s CPU (shared machine: wall time depends on load)")
    if failures:
        print("FAILED: " + "; ".join(failures))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

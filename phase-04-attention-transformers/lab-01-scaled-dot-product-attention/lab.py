# Generated from solution.py by `make labs` (labkit/labgen.py). Fill in the TODOs.
"""Lab 4.1: scaled dot-product attention, three ways, with causal and padding masks.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k) + mask) V        (Vaswani et al., 2017, eq. 1)

We write the same function three times:

* ``attention_loops``  - explicit Python loops over batch, query and key (slow, but every
  number is visible);
* ``attention_bmm``    - batched matrix multiplies (``torch.bmm``), the way real code does it;
* ``attention_einsum`` - one ``torch.einsum`` per matmul, the notation papers use.

Then a fourth time, the way FlashAttention does it: ``online_softmax`` (a softmax read in blocks
with a running max and normaliser), ``flash_attention_forward`` / ``flash_attention_backward`` (tiles
of queries and keys, never the whole score matrix; the backward recomputes each tile from the saved
log-sum-exp), and ``PeakMemory``, which counts the bytes of tensors each version allocates.

All three share one mask convention, the same one ``torch.nn.functional.scaled_dot_product_attention``
uses for boolean masks: ``attn_mask[..., i, j] == True`` means "query i MAY attend to key j".

A query row whose keys are ALL masked (a padding query attending over padding only, or an
empty sequence) has no sensible softmax: exp(-inf) / sum(exp(-inf)) = 0 / 0 = NaN. Our choice,
documented once here and tested: such a row gets all-zero weights and therefore an all-zero
output (and zero gradient), never NaN. In torch 2.13 ``F.scaled_dot_product_attention``
returns zeros for such rows too, so the comparison holds on every row. Other bad input is an
error, never a silent NaN: NaN or inf in q, k or v, NaN or +inf scores in ``masked_softmax``
(a -inf score counts as masked), empty sequences, masks that do not broadcast, token ids outside
the vocabulary.

The self-test also trains two tiny attention models on CPU and draws their attention maps:
a toy "find the token" classifier and a one-layer causal character model on Tiny Shakespeare.

Run: ``python solution.py`` (small mode, CPU, well under a minute) or ``python solution.py --full``.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
FIGURES = HERE / "figures"


# ----------------------------------------------------------------------------- validation


def _check_mask(attn_mask: torch.Tensor, want: tuple[int, ...]) -> None:
    """Raise unless ``attn_mask`` is a bool tensor that broadcasts to ``want`` without growing it."""
    if not isinstance(attn_mask, torch.Tensor) or attn_mask.dtype != torch.bool:
        got = attn_mask.dtype if isinstance(attn_mask, torch.Tensor) else type(attn_mask).__name__
        raise TypeError(f"attn_mask must be a bool tensor (True = may attend), got {got}")
    try:
        grown = torch.broadcast_shapes(attn_mask.shape, want)
    except RuntimeError:
        raise ValueError(f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to the "
                         f"score shape (*batch, T_q, T_k) = {tuple(want)}") from None
    if grown != torch.Size(want):
        raise ValueError(f"attn_mask of shape {tuple(attn_mask.shape)} would grow the score shape "
                         f"{tuple(want)}; it must broadcast *to* it")


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               attn_mask: torch.Tensor | None) -> None:
    """Raise a clear error when q/k/v/mask do not fit together (shared by every version here)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
        if t.dim() < 2:
            raise ValueError(f"{name} must have shape (*batch, T, d), got {tuple(t.shape)}")
        if 0 in t.shape:
            raise ValueError(f"{name} is empty (shape {tuple(t.shape)}): attention needs T >= 1 and d >= 1")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[:-2] != k.shape[:-2] or k.shape[:-2] != v.shape[:-2]:
        raise ValueError(
            f"q, k, v must share the batch dims: expected {tuple(q.shape[:-2])} for all, "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share d_k: expected k[..., {q.shape[-1]}] to match "
                         f"q {tuple(q.shape)}, got k {tuple(k.shape)}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same number of keys T_k: "
                         f"got k {tuple(k.shape)} and v {tuple(v.shape)}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not bool(torch.isfinite(t).all()):
            what = "NaN" if bool(torch.isnan(t).any()) else "inf"
            raise ValueError(f"{name} contains {what}: attention would spread it to every output row "
                             "that reads it; find where it came from (an overflow upstream?)")
    if attn_mask is not None:
        _check_mask(attn_mask, (*q.shape[:-2], q.shape[-2], k.shape[-2]))


def _scale(scale: float | None, d_k: int) -> float:
    """The score multiplier: ``1/sqrt(d_k)`` by default; a given one must be a finite number."""
    if scale is None:
        return 1.0 / math.sqrt(d_k)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number (or None for 1/sqrt(d_k)), got {scale!r}")
    return float(scale)


# ----------------------------------------------------------------------------- masks


def causal_mask(T_q: int, T_k: int | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean causal mask, True where query i may attend to key j.

    Args:
        T_q: number of queries (int >= 1).
        T_k: number of keys (default ``T_q``). When ``T_k > T_q`` the queries are taken to be
            the *last* ``T_q`` positions (as with a KV cache), so query i sits at absolute
            position ``T_k - T_q + i`` and sees keys ``0 .. T_k - T_q + i``.
        device: where to build the mask.

    Returns:
        bool tensor (T_q, T_k): lower-triangular (``torch.tril``) when T_q == T_k.

    Raises:
        ValueError: T_q < 1, T_k < 1, or T_k < T_q.
    """
    T_k = T_q if T_k is None else T_k
    if not (isinstance(T_q, int) and isinstance(T_k, int)) or T_q < 1 or T_k < 1:
        raise ValueError(f"T_q and T_k must be positive ints, got T_q={T_q!r}, T_k={T_k!r}")
    if T_k < T_q:
        raise ValueError(f"causal_mask needs T_k >= T_q (queries are the last T_q positions), "
                         f"got T_q={T_q}, T_k={T_k}")
    # TODO(1): ones(T_q, T_k) -> torch.tril with the right diagonal offset for T_k > T_q (easy, ~5 min)
    raise NotImplementedError("TODO(1)")


def padding_mask(lengths: torch.Tensor, T_k: int) -> torch.Tensor:
    """Key-padding mask from sequence lengths: True on real tokens, False on padding.

    Args:
        lengths: int tensor (B,), the number of real (left-aligned) tokens of each sequence,
            each in [0, T_k].
        T_k: the padded length.

    Returns:
        bool tensor (B, 1, T_k); the singleton axis broadcasts over the queries, so the
        result can be passed straight to the attention functions for (B, T_q, T_k) scores
        (use ``mask[:, None]`` to add a head axis).

    Raises:
        TypeError: ``lengths`` is not an integer tensor.
        ValueError: ``lengths`` is not 1-D, or a length is < 0 or > T_k.
    """
    if not isinstance(lengths, torch.Tensor) or lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must be an integer tensor of shape (B,), got {lengths!r}")
    if lengths.dim() != 1:
        raise ValueError(f"lengths must have shape (B,), got {tuple(lengths.shape)}")
    if isinstance(T_k, bool) or not isinstance(T_k, int) or T_k < 0:
        raise ValueError(f"T_k must be an int >= 0, got {T_k!r}")
    if (lengths < 0).any() or (lengths > T_k).any():
        raise ValueError(f"every length must be in [0, T_k={T_k}], got {lengths.tolist()}")
    # TODO(2): compare arange(T_k) against each length, add the query axis (easy, ~5 min)
    raise NotImplementedError("TODO(2)")


def masked_softmax(scores: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over the last (key) axis with masked entries forced to exactly zero weight.

    Masked scores are set to -inf *before* the softmax, so the surviving weights renormalise
    among the allowed keys. A row with no allowed key returns all zeros (not NaN), and its
    gradient is zero too. A score that is already ``-inf`` counts as masked (so a row of
    ``-inf`` also gives zeros).

    Args:
        scores: float tensor (*batch, T_q, T_k), T_k >= 1; finite or ``-inf``.
        attn_mask: bool tensor broadcastable to ``scores``, True = keep; None = keep all.

    Returns:
        weights, same shape and dtype as ``scores``; each row sums to 1 (or to 0 if fully masked).

    Raises:
        TypeError: ``scores`` is not a float tensor, or ``attn_mask`` is not bool.
        ValueError: ``scores`` is empty or holds NaN or ``+inf`` (no softmax exists: the row would
            be NaN), or ``attn_mask`` does not broadcast to ``scores``.
    """
    if not isinstance(scores, torch.Tensor) or not scores.is_floating_point():
        got = scores.dtype if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise TypeError(f"scores must be a floating-point tensor, got {got}")
    if scores.dim() < 1 or scores.numel() == 0:
        raise ValueError(f"scores is empty (shape {tuple(scores.shape)}): softmax needs T_k >= 1")
    if attn_mask is not None:
        _check_mask(attn_mask, tuple(scores.shape))
    lo, hi = torch.aminmax(scores)
    if bool(torch.isnan(hi)) or bool(hi == float("inf")):
        raise ValueError(f"scores contain {'NaN' if bool(torch.isnan(hi)) else '+inf'}: the softmax of that "
                         "row is undefined (NaN); did q or k overflow, e.g. float16 dot products > 65504?")
    if bool(lo == float("-inf")):  # -inf already means "no weight": fold it into the mask
        finite = scores > float("-inf")
        attn_mask = finite if attn_mask is None else attn_mask & finite
    if attn_mask is None:
        return torch.softmax(scores, dim=-1)
    # TODO(3): -inf on masked scores; rows with no allowed key must give zeros, not NaN (medium, ~15 min)
    raise NotImplementedError("TODO(3)")


# ----------------------------------------------------------------------------- attention x3


def attention_loops(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    attn_mask: torch.Tensor | None = None,
                    scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention with explicit Python loops (pedagogical, O(B*T_q*T_k*d) Python ops).

    Args:
        q: (*batch, T_q, d_k) float.  k: (*batch, T_k, d_k).  v: (*batch, T_k, d_v).
        attn_mask: bool, broadcastable to (*batch, T_q, T_k); True = may attend.
        scale: multiplier of the scores; default ``1 / sqrt(d_k)``.

    Returns:
        (output (*batch, T_q, d_v), weights (*batch, T_q, T_k)), dtype of q.

    Raises:
        TypeError / ValueError: see the mask and shape rules in the module docstring.
    """
    _check_qkv(q, k, v, attn_mask)
    scale = _scale(scale, q.shape[-1])
    batch = q.shape[:-2]
    T_q, T_k, d_v = q.shape[-2], k.shape[-2], v.shape[-1]
    qf, kf, vf = q.reshape(-1, T_q, q.shape[-1]), k.reshape(-1, T_k, k.shape[-1]), v.reshape(-1, T_k, d_v)
    mf = None
    if attn_mask is not None:
        mf = attn_mask.expand(*batch, T_q, T_k).reshape(-1, T_q, T_k)
    out = torch.zeros(qf.shape[0], T_q, d_v, dtype=q.dtype, device=q.device)
    weights = torch.zeros(qf.shape[0], T_q, T_k, dtype=q.dtype, device=q.device)
    # TODO(4): for each (b, i): scores over j, mask, stable softmax by hand, weighted sum of v rows (medium, ~20 min)
    raise NotImplementedError("TODO(4)")
    return out.reshape(*batch, T_q, d_v), weights.reshape(*batch, T_q, T_k)


def attention_bmm(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  attn_mask: torch.Tensor | None = None,
                  scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention with ``torch.bmm`` (leading dims flattened into one batch).

    Same arguments, returns and errors as :func:`attention_loops`.
    """
    _check_qkv(q, k, v, attn_mask)
    scale = _scale(scale, q.shape[-1])
    batch = q.shape[:-2]
    T_q, T_k, d_v = q.shape[-2], k.shape[-2], v.shape[-1]
    # TODO(5): flatten to (N, T, d); scores = bmm(q, k^T) * scale; masked_softmax; bmm(weights, v) (medium, ~15 min)
    raise NotImplementedError("TODO(5)")


def attention_einsum(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     attn_mask: torch.Tensor | None = None,
                     scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention with ``torch.einsum`` (any number of leading batch dims).

    Same arguments, returns and errors as :func:`attention_loops`.
    """
    _check_qkv(q, k, v, attn_mask)
    scale = _scale(scale, q.shape[-1])
    # TODO(6): two einsums: '...id,...jd->...ij' for scores, '...ij,...jd->...id' for the output (easy, ~10 min)
    raise NotImplementedError("TODO(6)")


# ----------------------------------------------------------------------------- FlashAttention, tiled
#
# The three versions above build the whole (T_q, T_k) score matrix. FlashAttention (Dao et al. 2022;
# FlashAttention-2, Dao 2023, Algorithms 1 and 2) computes exactly the same output tile by tile and
# never holds more than one (block_q, block_k) tile of scores. Two ideas make that possible:
#
# * online softmax (Milakov & Gimelshein 2018): a running max m and a running normaliser l per row;
#   when a new tile raises the max from m to m', everything accumulated so far is multiplied by
#   exp(m - m') so it is expressed relative to the new max;
# * recomputation in the backward pass: save only the output O and one number per query row, the
#   log-sum-exp L = m + log(l); the backward pass rebuilds each tile's weights as exp(S - L).
#
# On a GPU the tiles live in on-chip SRAM, which is where the speed comes from. In plain PyTorch on a
# CPU the Python loop over tiles is slower than one big matmul, but the memory saving is the same,
# and the self-test measures it.


def _check_blocks(block_q: int, block_k: int) -> None:
    for name, b in (("block_q", block_q), ("block_k", block_k)):
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ValueError(f"{name} must be a positive int (tile size in tokens), got {b!r}")


def online_softmax(scores: torch.Tensor, block_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the last axis, reading it in blocks with a running max and normaliser.

    One pass over the blocks keeps, per row, the largest score seen so far ``m`` and
    ``l = sum_j exp(s_j - m)`` over the scores seen so far; when a block raises the max to ``m'``,
    ``l`` is first rescaled by ``exp(m - m')``. After the pass ``logsumexp = m + log(l)`` and the
    weights are ``exp(s - logsumexp)``. No ``exp`` ever sees a positive argument, so float32 scores
    in the thousands are fine (Milakov & Gimelshein 2018, "Online normalizer calculation for softmax").

    Args:
        scores: float tensor (*batch, T), T >= 1, every entry finite.
        block_size: how many scores of a row are read at a time (the last block may be shorter).

    Returns:
        ``(weights, logsumexp)``: weights like ``scores`` (rows sum to 1), logsumexp (*batch,).

    Raises:
        TypeError: ``scores`` is not a float tensor.
        ValueError: empty ``scores``, a NaN or infinite score, or ``block_size`` < 1.
    """
    if not isinstance(scores, torch.Tensor) or not scores.is_floating_point():
        got = scores.dtype if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise TypeError(f"scores must be a floating-point tensor, got {got}")
    if scores.dim() < 1 or scores.numel() == 0:
        raise ValueError(f"scores is empty (shape {tuple(scores.shape)})")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("online_softmax needs finite scores (NaN/inf found); leave masked keys out instead")
    _check_blocks(block_size, block_size)
    T = scores.shape[-1]
    m = torch.full((*scores.shape[:-1], 1), float("-inf"), dtype=scores.dtype, device=scores.device)
    l = torch.zeros_like(m)
    # TODO(7): for each block: new max m' = max(m, block max); l = l * exp(m - m') + sum exp(block - m'); then lse = m + log(l) (medium, ~15 min)
    raise NotImplementedError("TODO(7)")


def _tile_causal_mask(i0: int, n_q: int, j0: int, n_k: int, offset: int,
                      device: torch.device) -> torch.Tensor:
    """(n_q, n_k) bool, True where query ``i0 + a`` may see key ``j0 + b`` under a causal mask whose
    queries are the last T_q of T_k positions (``offset = T_k - T_q``), as :func:`causal_mask`."""
    rows = torch.arange(i0, i0 + n_q, device=device)[:, None] + offset
    cols = torch.arange(j0, j0 + n_k, device=device)[None, :]
    return cols <= rows


def _check_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool,
                 block_q: int, block_k: int) -> None:
    _check_qkv(q, k, v, None)
    _check_blocks(block_q, block_k)
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal must be a bool, got {is_causal!r}")
    if is_causal and k.shape[-2] < q.shape[-2]:
        raise ValueError(f"is_causal needs T_k >= T_q (queries are the last T_q positions), "
                         f"got T_q={q.shape[-2]}, T_k={k.shape[-2]}")


def flash_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool = False,
                            scale: float | None = None, block_q: int = 32,
                            block_k: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiled attention forward with an online softmax (FlashAttention-2, Dao 2023, Algorithm 1).

    For each tile of ``block_q`` queries, loop over tiles of ``block_k`` keys: scores of the tile,
    new running max, rescale the running normaliser AND the running (unnormalised) output by
    ``exp(m_old - m_new)``, add this tile's contribution; divide by the normaliser at the end.
    Under ``is_causal`` the key tiles that lie wholly in a query tile's future are skipped and the
    tiles that cross the diagonal are masked with -inf. Memory: one (block_q, block_k) tile of
    scores at a time, never (T_q, T_k).

    Args:
        q: (*batch, T_q, d_k) float.  k: (*batch, T_k, d_k).  v: (*batch, T_k, d_v).
        is_causal: the mask of :func:`causal_mask` (queries are the last T_q of T_k positions).
        scale: multiplier of the scores; default ``1 / sqrt(d_k)``.
        block_q, block_k: tile sizes in tokens (need not divide T_q, T_k).

    Returns:
        ``(out, lse)``: out (*batch, T_q, d_v) equal to ``F.scaled_dot_product_attention``;
        lse (*batch, T_q), the log-sum-exp of each query's (scaled, masked) scores, which the
        backward pass needs. Same dtype as q.

    Raises:
        TypeError / ValueError: the checks of :func:`attention_bmm`, a tile size < 1, or
        ``is_causal`` with T_k < T_q.
    """
    _check_flash(q, k, v, is_causal, block_q, block_k)
    scale = _scale(scale, q.shape[-1])
    T_q, T_k = q.shape[-2], k.shape[-2]
    offset = T_k - T_q  # causal: query i sits at absolute position offset + i
    out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:-1], dtype=q.dtype, device=q.device)
    # TODO(8): per query tile: m = -inf, l = 0, acc = 0; per key tile (causal: stop after the diagonal, mask the crossing tile): s = q_i k_j^T * scale; m_new; alpha = exp(m - m_new); l = alpha*l + rowsum(p); acc = alpha*acc + p v_j; finally out = acc / l, lse = m + log l (hard, ~40 min)
    raise NotImplementedError("TODO(8)")


def flash_attention_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                             lse: torch.Tensor, grad_out: torch.Tensor, is_causal: bool = False,
                             scale: float | None = None, block_q: int = 32,
                             block_k: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tiled attention backward by recomputation (FlashAttention-2, Dao 2023, Algorithm 2).

    With ``P = softmax(S)``, ``S = scale * Q K^T`` and upstream gradient ``dO``:
    ``dV = P^T dO``, ``dP = dO V^T``, ``dS = P * (dP - D)`` with ``D = rowsum(dO * O)``,
    ``dQ = scale * dS K`` and ``dK = scale * dS^T Q``. Nothing of size (T_q, T_k) was saved: each
    tile's ``P`` is rebuilt from the saved log-sum-exp as ``exp(S_tile - lse)``.

    Args:
        q, k, v, is_causal, scale, block_q, block_k: as given to :func:`flash_attention_forward`.
        out, lse: what :func:`flash_attention_forward` returned.
        grad_out: (*batch, T_q, d_v), d(loss)/d(out).

    Returns:
        ``(dq, dk, dv)``, shaped like q, k, v.

    Raises:
        TypeError / ValueError: as :func:`flash_attention_forward`, or ``out``/``lse``/``grad_out``
        whose shapes do not match q and v.
    """
    _check_flash(q, k, v, is_causal, block_q, block_k)
    want_out = (*q.shape[:-1], v.shape[-1])
    for name, t, want in (("out", out, want_out), ("grad_out", grad_out, want_out), ("lse", lse, q.shape[:-1])):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(want):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must have shape {tuple(want)}, got {got}")
    scale = _scale(scale, q.shape[-1])
    T_q, T_k = q.shape[-2], k.shape[-2]
    offset = T_k - T_q
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    # TODO(9): D = rowsum(grad_out * out); per key tile j: per query tile i (causal: only the tiles that can see j): recompute s, mask, p = exp(s - lse_i); dv_j += p^T dO_i; dp = dO_i v_j^T; ds = p * (dp - D_i); dq_i += scale * ds k_j; dk_j += scale * ds^T q_i (hard, ~40 min)
    raise NotImplementedError("TODO(9)")


class FlashAttentionFunction(torch.autograd.Function):
    """Autograd wrapper: forward saves (q, k, v, out, lse), backward is :func:`flash_attention_backward`."""

    @staticmethod
    def forward(ctx, q, k, v, is_causal, scale, block_q, block_k):  # noqa: D102
        out, lse = flash_attention_forward(q, k, v, is_causal, scale, block_q, block_k)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.config = (is_causal, scale, block_q, block_k)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = flash_attention_backward(q, k, v, out, lse, grad_out.contiguous(), *ctx.config)
        return dq, dk, dv, None, None, None, None


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool = False,
                    scale: float | None = None, block_q: int = 32, block_k: int = 32) -> torch.Tensor:
    """Differentiable tiled attention: :func:`flash_attention_forward` with
    :func:`flash_attention_backward` as its gradient. Returns out (*batch, T_q, d_v).

    Arguments and errors as :func:`flash_attention_forward`.
    """
    _check_flash(q, k, v, is_causal, block_q, block_k)
    return FlashAttentionFunction.apply(q, k, v, is_causal, scale, block_q, block_k)


class PeakMemory(TorchDispatchMode):
    """Count the bytes of the tensors that PyTorch ops allocate inside a ``with`` block.

    Every op runs through ``__torch_dispatch__``. A result whose storage is new (not one of the
    op's inputs: views and in-place ops allocate nothing) is added to a live set; a storage that
    has been freed since the last op (its weak reference expired) is removed. ``peak`` is the
    largest live total seen after any op (the op's inputs are still alive then, so temporaries
    count), ``largest`` the largest single allocation. Inputs that existed before the block are
    not counted. Scratch memory a kernel uses internally without returning it is invisible, as
    is the allocator's caching: this is "bytes of tensors", not the process's RSS.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = self.peak = self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        result = func(*args, **kwargs)
        for key, (ref, nbytes) in list(self.live.items()):
            if ref.expired():
                self.current -= nbytes
                del self.live[key]
        for t in tree_flatten(result)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key, nbytes = storage.data_ptr(), storage.nbytes()
                if nbytes and key not in inputs and key not in self.live:
                    self.live[key] = (StorageWeakRef(storage), nbytes)
                    self.current += nbytes
                    self.largest = max(self.largest, nbytes)
        self.peak = max(self.peak, self.current)
        return result


# ----------------------------------------------------------------------------- toy task


@dataclass
class FindTokenConfig:
    """The toy task: one "signal" token hides among noise tokens; name it.

    Tokens ``0 .. n_noise-1`` are noise, ``n_noise .. n_noise+n_signal-1`` are signal, and
    ``pad_id = n_noise + n_signal`` pads sequences of random length in [min_len, max_len].
    Exactly one signal token sits at a random position of each sequence; the label is which
    one (0 .. n_signal-1). A single attention read-out with a learned query solves it by
    putting (almost) all of its weight on the signal position.
    """

    n_noise: int = 24
    n_signal: int = 8
    max_len: int = 16
    min_len: int = 6
    d_model: int = 32

    @property
    def vocab_size(self) -> int:
        return self.n_noise + self.n_signal + 1

    @property
    def pad_id(self) -> int:
        return self.n_noise + self.n_signal


def make_find_token_batch(cfg: FindTokenConfig, batch_size: int,
                          generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample a batch: (tokens (B, max_len) long, lengths (B,), labels (B,), signal positions (B,))."""
    B, T = batch_size, cfg.max_len
    lengths = torch.randint(cfg.min_len, T + 1, (B,), generator=generator)
    tokens = torch.randint(0, cfg.n_noise, (B, T), generator=generator)
    labels = torch.randint(0, cfg.n_signal, (B,), generator=generator)
    pos = (torch.rand(B, generator=generator) * lengths).long()  # uniform in [0, length)
    tokens[torch.arange(B), pos] = cfg.n_noise + labels
    tokens[torch.arange(T)[None, :] >= lengths[:, None]] = cfg.pad_id
    return tokens, lengths, labels, pos


class FindTokenAttention(nn.Module):
    """Embedding -> one attention read-out with a learned query -> linear classifier.

    forward(tokens (B, T) long, lengths (B,)) -> (logits (B, n_signal), weights (B, 1, T)).
    Padding keys are masked with :func:`padding_mask`; attention uses :func:`attention_bmm`.
    Raises TypeError for non-integer tokens and ValueError for token ids outside
    [0, vocab_size) or ``lengths`` that are not (B,) values in [0, T].
    """

    def __init__(self, cfg: FindTokenConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.query = nn.Parameter(torch.randn(1, 1, cfg.d_model) * 0.1)
        self.w_k = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.w_v = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.head = nn.Linear(cfg.d_model, cfg.n_signal)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(tokens, torch.Tensor) or tokens.is_floating_point() or tokens.dtype == torch.bool:
            raise TypeError(f"tokens must be an integer tensor of token ids, got {tokens!r:.80}")
        if tokens.dim() != 2:
            raise ValueError(f"tokens must have shape (B, T), got {tuple(tokens.shape)}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.cfg.vocab_size):
            raise ValueError(f"token ids must be in [0, vocab_size={self.cfg.vocab_size}), got min "
                             f"{tokens.min().item()}, max {tokens.max().item()}")
        if not isinstance(lengths, torch.Tensor) or tuple(lengths.shape) != (tokens.shape[0],):
            got = tuple(lengths.shape) if isinstance(lengths, torch.Tensor) else type(lengths).__name__
            raise ValueError(f"lengths must have shape (B,) = ({tokens.shape[0]},), got {got}")
        if lengths.numel() and (lengths.min() < 0 or lengths.max() > tokens.shape[1]):
            raise ValueError(f"every length must be in [0, T_k={tokens.shape[1]}], got {lengths.tolist()}")
        # TODO(10): embed; k, v projections; the learned query for every row; padding mask; attention_bmm; head (medium, ~15 min)
        raise NotImplementedError("TODO(10)")


def train_find_token(cfg: FindTokenConfig, steps: int = 300, batch_size: int = 64, lr: float = 3e-2,
                     seed: int = 0, progress: bool = False) -> tuple[FindTokenAttention, dict[str, float]]:
    """Train :class:`FindTokenAttention` with Adam; return the model and held-out metrics.

    Metrics (on 1,000 fresh sequences): ``accuracy``, ``target_weight`` (mean attention weight on
    the signal position), ``uniform_weight`` (what a uniform read-out would put there, mean 1/length),
    ``pad_weight`` (total weight on padding; must be exactly 0), ``first_loss``, ``last_loss``.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = FindTokenAttention(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in tqdm(range(steps), desc="find-the-token", disable=not progress):
        tokens, lengths, labels, _ = make_find_token_batch(cfg, batch_size, gen)
        logits, _ = model(tokens, lengths)
        loss = F.cross_entropy(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        tokens, lengths, labels, pos = make_find_token_batch(cfg, 1000, torch.Generator().manual_seed(seed + 1))
        logits, w = model(tokens, lengths)
        w = w[:, 0]
        pad = torch.arange(cfg.max_len)[None, :] >= lengths[:, None]
        metrics = {
            "accuracy": (logits.argmax(-1) == labels).float().mean().item(),
            "target_weight": w[torch.arange(len(pos)), pos].mean().item(),
            "uniform_weight": (1.0 / lengths.float()).mean().item(),
            "pad_weight": (w * pad).sum(-1).max().item(),
            "first_loss": sum(losses[:10]) / min(10, len(losses)),
            "last_loss": sum(losses[-10:]) / min(10, len(losses)),
        }
    return model, metrics


# ----------------------------------------------------------------------------- self-test helpers


def score_std_table(d_ks: list[int], n: int = 1000, T_k: int = 16, seed: int = 0) -> list[dict[str, float]]:
    """Empirical std of q.k for unit-variance q, k with and without 1/sqrt(d_k), and the mean
    largest softmax weight over T_k keys (saturation) in each case."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for d in d_ks:
        q = torch.randn(n, 1, d, generator=g)
        k = torch.randn(n, T_k, d, generator=g)  # n * T_k dot products per d_k
        raw = (q @ k.transpose(1, 2))[:, 0]  # (n, T_k)
        scaled = raw / math.sqrt(d)
        rows.append({"d_k": d, "std_raw": raw.std().item(), "std_scaled": scaled.std().item(),
                     "maxw_raw": raw.softmax(-1).max(-1).values.mean().item(),
                     "maxw_scaled": scaled.softmax(-1).max(-1).values.mean().item()})
    return rows


def _plot_find_token(model: FindTokenAttention, cfg: FindTokenConfig, path: Path, n: int = 12) -> Path:
    from labkit.plots import plt, savefig

    with torch.no_grad():
        tokens, lengths, labels, pos = make_find_token_batch(cfg, n, torch.Generator().manual_seed(123))
        _, w = model(tokens, lengths)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    im = ax.imshow(w[:, 0].numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.scatter(pos.numpy(), range(n), marker="o", facecolors="none", edgecolors="red", s=120,
               label="signal token")
    for r in range(n):  # hatch the padding so "exactly zero" is visible
        ax.axvspan(lengths[r] - 0.5, cfg.max_len - 0.5, ymin=1 - (r + 1) / n, ymax=1 - r / n,
                   color="white", alpha=0.35, lw=0)
    ax.set_xlabel("key position (lighter band = padding, masked)")
    ax.set_ylabel("example")
    ax.set_title("Learned attention, find-the-token task (1 read-out query)")
    ax.legend(loc="upper right", fontsize=8)
    fig.colorbar(im, ax=ax, label="attention weight")
    return savefig(fig, path)


class _CharAttentionLM(nn.Module):
    """One causal single-head attention layer over characters (token + position embeddings)."""

    def __init__(self, vocab_size: int, block_size: int, d_model: int):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(block_size, d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(2 * d_model, vocab_size)

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(T))
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        y, w = attention_bmm(q, k, v, attn_mask=causal_mask(T))
        return self.out(torch.cat([x, y], dim=-1)), w  # the token itself + what attention read


def shakespeare_attention(steps: int, block_size: int = 64, d_model: int = 64,
                          seed: int = 0, progress: bool = False) -> dict:
    """Train :class:`_CharAttentionLM` on Tiny Shakespeare; return losses and a snippet's weights."""
    from labkit import read_text

    text = read_text("tinyshakespeare", "input.txt")
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    n_train = int(0.9 * len(data))
    train, val = data[:n_train], data[n_train:]
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = _CharAttentionLM(len(chars), block_size, d_model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def batch(src: torch.Tensor, bs: int) -> tuple[torch.Tensor, torch.Tensor]:
        ix = torch.randint(0, len(src) - block_size - 1, (bs,), generator=g)
        x = torch.stack([src[i:i + block_size] for i in ix])
        return x, torch.stack([src[i + 1:i + block_size + 1] for i in ix])

    def val_loss() -> float:
        with torch.no_grad():
            x, y = batch(val, 256)
            return F.cross_entropy(model(x)[0].flatten(0, 1), y.flatten()).item()

    init = val_loss()
    for _ in tqdm(range(steps), desc="shakespeare", disable=not progress):
        x, y = batch(train, 32)
        loss = F.cross_entropy(model(x)[0].flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = val_loss()
    snippet = "ROMEO:\nBut, soft! what light through yonder window breaks?"[:block_size]
    if not all(c in stoi for c in snippet):
        raise RuntimeError("snippet has characters outside the Tiny Shakespeare vocabulary")
    with torch.no_grad():
        _, w = model(torch.tensor([[stoi[c] for c in snippet]]))
    w = w[0]
    return {"init_val_loss": init, "val_loss": final, "vocab_size": len(chars),
            "uniform_loss": math.log(len(chars)), "snippet": snippet, "weights": w,
            "self_weight": w.diagonal().mean().item(),                     # query reads its own position
            "prev_weight": w.diagonal(offset=-1).mean().item()}            # ... the position just before


def _plot_shakespeare(res: dict, path: Path) -> Path:
    from labkit.plots import plt, savefig

    s, w = res["snippet"], res["weights"].numpy()
    labels = [repr(c)[1:-1] for c in s]
    fig, ax = plt.subplots(figsize=(9, 8))
    im = ax.imshow(w, cmap="magma", vmin=0, vmax=w.max())
    ax.set_xticks(range(len(s)), labels, fontsize=6)
    ax.set_yticks(range(len(s)), labels, fontsize=6)
    ax.set_xlabel("key (character attended to)")
    ax.set_ylabel("query (character predicting the next one)")
    ax.set_title(f"1-layer causal attention on Tiny Shakespeare (val loss {res['val_loss']:.2f})")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return savefig(fig, path)


def naive_softmax(scores: torch.Tensor) -> torch.Tensor:
    """``exp(s) / sum(exp(s))`` without subtracting the max: the version that overflows (for the demo)."""
    e = torch.exp(scores)
    return e / e.sum(dim=-1, keepdim=True)


def flash_memory_table(seq_lens: list[int], B: int = 1, H: int = 2, d: int = 32, block: int = 64,
                       repeats: int = 3, seed: int = 0) -> list[dict[str, float]]:
    """Per T: :class:`PeakMemory` peak and largest allocation (bytes) of causal attention, forward
    only (no grad) and forward + backward, for ``attention_bmm`` (naive) and ``flash_attention``,
    plus the fastest-of-``repeats`` forward + backward wall time (seconds) of each, float32."""
    from labkit import benchmark

    g = torch.Generator().manual_seed(seed)
    rows = []
    for T in tqdm(seq_lens, desc="flash memory"):
        q, k, v = (torch.randn(B, H, T, d, generator=g) for _ in range(3))
        mask = causal_mask(T)
        fns = {
            "naive": lambda a, b, c, m=mask: attention_bmm(a, b, c, attn_mask=m)[0],
            "flash": lambda a, b, c: flash_attention(a, b, c, is_causal=True, block_q=block, block_k=block),
        }
        row: dict[str, float] = {"T": T, "scores_bytes": B * H * T * T * 4}
        for name, fn in fns.items():
            with torch.no_grad(), PeakMemory() as pm:
                fn(q, k, v)
            row[f"{name}_fwd_peak"], row[f"{name}_fwd_largest"] = pm.peak, pm.largest
            leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
            with PeakMemory() as pm:
                fn(*leaves).sum().backward()
            row[f"{name}_train_peak"] = pm.peak

            def step(fn=fn, qkv=(q, k, v)) -> None:
                leaves = [t.clone().requires_grad_(True) for t in qkv]
                fn(*leaves).sum().backward()

            row[f"{name}_train_s"] = benchmark(step, repeats=repeats, warmup=0, name=name).min
        rows.append(row)
    return rows


def flash_section(full: bool, seed: int) -> dict:
    """Self-test part 3: float32 softmax stability, FlashAttention agreement, memory. Prints tables."""
    ok = True
    g = torch.Generator().manual_seed(seed)
    # a) float32 scores in the thousands, with the row max moving towards the end (online rescaling matters)
    scores = (torch.randn(8, 64, generator=g) * 300 + torch.linspace(0, 3000, 64)).float()
    want = torch.softmax(scores.double(), dim=-1)
    naive = naive_softmax(scores)
    online, lse = online_softmax(scores, block_size=16)
    nan_rows = int(torch.isnan(naive).any(-1).sum())
    print("\n== softmax of float32 scores up to ~3,000 (8 rows x 64), max |diff| from float64 torch.softmax")
    print(f"exp(s)/sum(exp(s)), no max subtracted: {nan_rows} of 8 rows NaN (exp overflows float32 above ~88.7)")
    err_online = (online.double() - want).abs().max().item()
    err_lse = (lse.double() - torch.logsumexp(scores.double(), -1)).abs().max().item()
    print(f"online_softmax, blocks of 16:           max |diff| {err_online:.1e}, logsumexp |diff| {err_lse:.1e}")
    ok &= nan_rows == 8 and err_online < 1e-6 and err_lse < 1e-3

    # b) tiled forward and backward against SDPA (and autograd through it)
    print("\n== flash_attention vs F.scaled_dot_product_attention (B=2, H=2, T_q=T_k=50, d=16, tiles 16 x 12)")
    print(f"{'dtype':<9}{'causal':<8}{'out':>10}{'lse':>10}{'dq':>10}{'dk':>10}{'dv':>10}")
    for dtype, mult, tol in ((torch.float64, 1.0, 1e-10), (torch.float32, 30.0, 2e-4)):
        for causal in (False, True):
            q, k, v = (torch.randn(2, 2, 50, 16, generator=g, dtype=dtype) for _ in range(3))
            q = q * mult  # float32 row: large scores (|s| in the hundreds), where an unstable softmax overflows
            ours = [t.clone().requires_grad_(True) for t in (q, k, v)]
            ref = [t.clone().requires_grad_(True) for t in (q, k, v)]
            out = flash_attention(*ours, is_causal=causal, block_q=16, block_k=12)
            want_out = F.scaled_dot_product_attention(*ref, is_causal=causal)
            upstream = torch.randn(out.shape, generator=g, dtype=dtype)
            out.backward(upstream)
            want_out.backward(upstream)
            _, lse = flash_attention_forward(q, k, v, causal, None, 16, 12)
            s = (q @ k.transpose(-2, -1)) / 4.0
            if causal:
                s = s.masked_fill(~causal_mask(50), float("-inf"))
            errs = [(out - want_out).abs().max().item(), (lse - torch.logsumexp(s, -1)).abs().max().item()]
            errs += [(a.grad - b.grad).abs().max().item() for a, b in zip(ours, ref)]
            print(f"{str(dtype).split('.')[1]:<9}{str(causal):<8}" + "".join(f"{e:>10.1e}" for e in errs))
            ok &= max(errs) < tol

    # c) memory and time, causal, float32
    seq_lens = [256, 512, 1024, 2048, 4096] if full else [128, 256, 512, 1024]
    rows = flash_memory_table(seq_lens, seed=seed)
    mib = 2.0 ** 20
    print("\n== causal attention, float32, B=1, H=2, d=32, tiles 64 x 64: peak MiB of tensors allocated "
          "(PeakMemory), and forward+backward seconds (fastest of 3)")
    print(f"{'T':>6}{'T x T scores':>13}{'naive fwd':>11}{'flash fwd':>11}{'ratio':>7}"
          f"{'naive f+b':>11}{'flash f+b':>11}{'ratio':>7}{'naive s':>9}{'flash s':>9}")
    for r in rows:
        print(f"{r['T']:>6}{r['scores_bytes'] / mib:>13.2f}{r['naive_fwd_peak'] / mib:>11.2f}"
              f"{r['flash_fwd_peak'] / mib:>11.2f}{r['naive_fwd_peak'] / r['flash_fwd_peak']:>7.1f}"
              f"{r['naive_train_peak'] / mib:>11.2f}{r['flash_train_peak'] / mib:>11.2f}"
              f"{r['naive_train_peak'] / r['flash_train_peak']:>7.1f}"
              f"{r['naive_train_s']:>9.3f}{r['flash_train_s']:>9.3f}")
    last = rows[-1]
    print(f"largest single allocation at T={last['T']}: naive {last['naive_fwd_largest'] / mib:.2f} MiB "
          f"(a T x T matrix), flash {last['flash_fwd_largest'] / mib:.3f} MiB")
    ok &= last["flash_fwd_peak"] < last["scores_bytes"] / 4 and last["flash_train_peak"] < last["scores_bytes"]
    ok &= last["naive_fwd_peak"] >= last["scores_bytes"]
    return {"ok": ok, "rows": rows}


def _plot_flash_memory(rows: list[dict[str, float]], path: Path) -> Path:
    from labkit.plots import plt, savefig

    mib = 2.0 ** 20
    Ts = [r["T"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for key, style, label in (("naive_fwd_peak", "o-", "naive (attention_bmm), forward"),
                              ("naive_train_peak", "o--", "naive, forward + backward"),
                              ("flash_fwd_peak", "s-", "flash_attention, forward"),
                              ("flash_train_peak", "s--", "flash_attention, forward + backward"),
                              ("scores_bytes", ":", "one T x T score matrix")):
        ax.plot(Ts, [r[key] / mib for r in rows], style, label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("sequence length T (tokens)")
    ax.set_ylabel("peak MiB of tensors allocated")
    ax.set_title("Causal attention, float32, B=1, H=2, d=32, 64 x 64 tiles (CPU)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return savefig(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="more steps and bigger agreement checks")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (tiny models: 1 is fastest)")
    args = ap.parse_args(argv)
    from labkit import seed_everything

    seed_everything(args.seed)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    ok = True

    # 1) agreement of the three implementations and PyTorch, float64
    print("== agreement with F.scaled_dot_product_attention (float64, max |diff| of outputs)")
    B, T, d = (4, 32, 16) if args.full else (2, 12, 8)
    q, k, v = (torch.randn(B, T, d, dtype=torch.float64) for _ in range(3))
    lengths = torch.tensor([T, T // 2] + [T - 3] * (B - 2))
    masks = {"none": None, "causal": causal_mask(T), "padding": padding_mask(lengths, T),
             "causal&padding": causal_mask(T) & padding_mask(lengths, T)}
    print(f"{'mask':<16}{'loops':>12}{'bmm':>12}{'einsum':>12}")
    for name, m in masks.items():
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
        diffs = [(fn(q, k, v, m)[0] - ref).abs().max().item()
                 for fn in (attention_loops, attention_bmm, attention_einsum)]
        print(f"{name:<16}" + "".join(f"{x:>12.1e}" for x in diffs))
        ok &= max(diffs) < 1e-6
    # fully padded query rows: lengths 0 -> every key masked
    empty = padding_mask(torch.tensor([0, T]), T)
    out, w = attention_bmm(q[:2], k[:2], v[:2], empty)
    finite = bool(torch.isfinite(out).all() and torch.isfinite(w).all())
    print(f"fully padded row -> finite: {finite}, weight sum {w[0].sum().item():.1f}, "
          f"|output| {out[0].abs().max().item():.1f}")
    ok &= finite and w[0].abs().sum().item() == 0.0

    # 2) why sqrt(d_k)
    print("\n== why divide by sqrt(d_k): std of q.k (16,000 samples) and mean max softmax weight over 16 keys")
    print(f"{'d_k':>6}{'std raw':>10}{'std scaled':>12}{'max w raw':>11}{'max w scaled':>14}")
    for r in score_std_table([4, 16, 64, 256, 1024]):
        print(f"{r['d_k']:>6}{r['std_raw']:>10.2f}{r['std_scaled']:>12.3f}{r['maxw_raw']:>11.3f}"
              f"{r['maxw_scaled']:>14.3f}")
        ok &= abs(r["std_scaled"] - 1) < 0.05

    # 3) online softmax and the tiled FlashAttention forward/backward
    flash = flash_section(args.full, args.seed)
    ok &= flash["ok"]
    print("wrote", _plot_flash_memory(flash["rows"], FIGURES / "flash_memory.png").relative_to(HERE))

    # 4) learned attention on the toy task
    cfg = FindTokenConfig()
    steps = 1000 if args.full else 300
    model, met = train_find_token(cfg, steps=steps, seed=args.seed, progress=True)
    print(f"\n== find-the-token ({steps} steps, batch 64, held-out 1000 sequences; "
          f"{time.perf_counter() - t0:.1f} s elapsed)")
    for key in ("first_loss", "last_loss", "accuracy", "target_weight", "uniform_weight", "pad_weight"):
        print(f"{key:<16}{met[key]:.3f}")
    ok &= met["accuracy"] > 0.9 and met["target_weight"] > 0.5 and met["pad_weight"] == 0.0
    print("wrote", _plot_find_token(model, cfg, FIGURES / "find_token_attention.png").relative_to(HERE))

    # 5) bonus: real text
    sh_steps = 1500 if args.full else 300
    res = shakespeare_attention(sh_steps, seed=args.seed, progress=True)
    print(f"\n== Tiny Shakespeare, 1 causal attention layer, {sh_steps} steps "
          f"({time.perf_counter() - t0:.1f} s elapsed)")
    print(f"vocab {res['vocab_size']} chars, uniform loss ln(V) {res['uniform_loss']:.3f}, "
          f"val loss at init {res['init_val_loss']:.3f}, after training {res['val_loss']:.3f}")
    print(f"snippet of {len(res['snippet'])} chars: mean weight on own position {res['self_weight']:.3f}, "
          f"on the previous position {res['prev_weight']:.3f}")
    ok &= res["val_loss"] < res["init_val_loss"] - 0.5
    upper = torch.triu(res["weights"], diagonal=1)
    ok &= upper.abs().max().item() == 0.0  # causal: nothing above the diagonal
    print("wrote", _plot_shakespeare(res, FIGURES / "shakespeare_attention.png").relative_to(HERE))

    print(f"\nself-test {'passed' if ok else 'FAILED'} in {time.perf_counter() - t0:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

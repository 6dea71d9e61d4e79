"""Interview drill 02: the LLM coding questions, written from a blank function.

Each TODO is one question as an interviewer would pose it, with the time they would give you
(the budget is in the TODO line). Everything is plain PyTorch on tiny tensors; the grader
(``test_lab.py``) compares every answer with a reference: ``F.scaled_dot_product_attention``,
``torch.nn.MultiheadAttention``, transformers' ``LlamaRotaryEmbedding`` / ``apply_rotary_pos_emb``
and ``TopKLogitsWarper`` / ``TopPLogitsWarper``, ``torch.nn.LayerNorm`` / ``torch.nn.RMSNorm`` and
autograd, a brute-force search for beam search, and a naive re-count for BPE.

Shape conventions: ``B`` batch, ``H`` heads, ``T`` (``T_q``, ``T_k``) sequence, ``D`` head dim,
``C = H * D`` model width, ``V`` vocabulary.

Run: ``python solution.py`` (about 10 s on one CPU core) prints each answer's error against its
reference and exits non-zero if one is off.
"""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "attention",
    "attention_mask",
    "beam_search",
    "bpe_decode",
    "bpe_encode",
    "bpe_merge",
    "bpe_train",
    "kv_cache_step",
    "layernorm_backward",
    "layernorm_forward",
    "merge_heads",
    "multi_head_attention",
    "apply_rope",
    "rmsnorm_backward",
    "rmsnorm_forward",
    "rope_cos_sin",
    "rotate_half",
    "sample",
    "split_heads",
    "top_k_filter",
    "top_p_filter",
]


# --------------------------------------------------------------------------- attention
def attention_mask(T_q: int, T_k: int, *, causal: bool = True,
                   key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean mask of allowed (query, key) pairs: ``True`` = may attend.

    Causal is bottom-right aligned: the last query sits at the last key, so with ``T_k > T_q``
    (a prompt already in a cache) query ``i`` may see keys ``0 .. i + (T_k - T_q)``.

    Args:
        T_q, T_k: query / key lengths, ``T_k >= T_q`` when causal.
        causal: add the causal constraint.
        key_padding_mask: optional ``(B, T_k)`` bool, ``True`` for real tokens, ``False`` for padding.

    Returns:
        ``(T_q, T_k)`` bool without padding; ``(B, 1, T_q, T_k)`` bool with it (broadcasts over heads).
    """
    if causal and T_k < T_q:
        raise ValueError(f"causal attention needs T_k >= T_q, got T_q={T_q}, T_k={T_k}")
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool or key_padding_mask.dim() != 2 or key_padding_mask.shape[1] != T_k:
            raise ValueError(f"key_padding_mask must be bool (B, T_k={T_k}), got {key_padding_mask.dtype} "
                             f"{tuple(key_padding_mask.shape)}")
    # BEGIN SOLUTION tril with offset T_k - T_q, then AND the padding mask broadcast over queries (easy, ~5 min)
    mask = torch.ones(T_q, T_k, dtype=torch.bool)
    if causal:
        mask = torch.tril(mask, diagonal=T_k - T_q)
    if key_padding_mask is not None:
        mask = mask[None, None] & key_padding_mask[:, None, None, :]
    return mask
    # END SOLUTION


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention with a numerically stable softmax, written by hand.

    ``softmax(q k^T / sqrt(D) + mask) v`` where masked scores are ``-inf``; subtract the row max
    before ``exp`` so large scores do not overflow. A query row with no allowed key at all (for
    example a padding query whose keys are all padding) returns zeros instead of NaN.

    Args:
        q: ``(..., T_q, D)``; k: ``(..., T_k, D)``; v: ``(..., T_k, D_v)``.
        mask: bool, broadcastable to ``(..., T_q, T_k)``, ``True`` = may attend (``attention_mask``).

    Returns:
        ``(..., T_q, D_v)``, same dtype as ``q``.

    Raises:
        ValueError: head dims of q and k differ, or k and v lengths differ.
    """
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k need the same head dim, got {q.shape[-1]} and {k.shape[-1]}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v need the same length, got {k.shape[-2]} and {v.shape[-2]}")
    if mask is not None and mask.dtype != torch.bool:
        raise TypeError(f"mask must be bool (True = attend), got {mask.dtype}")
    # BEGIN SOLUTION scores / sqrt(D), -inf where masked, subtract the row max, exp, normalise over KEYS; all-masked rows -> 0 (medium, ~15 min)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    row_max = scores.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    e = torch.exp(scores - row_max)  # exp(-inf) = 0 for masked keys
    denom = e.sum(dim=-1, keepdim=True)
    weights = e / denom.clamp_min(torch.finfo(e.dtype).tiny)  # all-masked row: 0 / tiny = 0
    return weights @ v
    # END SOLUTION


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``(B, T, C)`` -> ``(B, H, T, D)`` with ``D = C // H``; head ``h`` owns channels ``h*D .. (h+1)*D-1``.

    Raises:
        ValueError: ``C`` is not divisible by ``n_heads``.
    """
    if x.dim() != 3 or x.shape[-1] % n_heads:
        raise ValueError(f"split_heads needs (B, T, C) with C divisible by n_heads={n_heads}, got {tuple(x.shape)}")
    # BEGIN SOLUTION view as (B, T, H, D) and swap T and H, NOT view(B, H, T, D) (easy, ~5 min)
    B, T, C = x.shape
    return x.view(B, T, n_heads, C // n_heads).transpose(1, 2)
    # END SOLUTION


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, T, D)`` -> ``(B, T, H*D)``: the exact inverse of ``split_heads``."""
    if x.dim() != 4:
        raise ValueError(f"merge_heads needs (B, H, T, D), got {tuple(x.shape)}")
    # BEGIN SOLUTION transpose back, then .contiguous() (or reshape) before the view (easy, ~5 min)
    B, H, T, D = x.shape
    return x.transpose(1, 2).contiguous().view(B, T, H * D)
    # END SOLUTION


def multi_head_attention(x: torch.Tensor, in_proj_weight: torch.Tensor, in_proj_bias: torch.Tensor,
                         out_proj_weight: torch.Tensor, out_proj_bias: torch.Tensor, n_heads: int,
                         *, causal: bool = False, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Self-attention with ``torch.nn.MultiheadAttention``'s parameters (given: uses your three answers above).

    Args:
        x: ``(B, T, C)``; ``in_proj_weight`` ``(3C, C)`` stacks W_q, W_k, W_v; ``out_proj_weight`` ``(C, C)``.
        key_padding_mask: ``(B, T)`` bool, ``True`` for real tokens.
    """
    q, k, v = F.linear(x, in_proj_weight, in_proj_bias).chunk(3, dim=-1)
    q, k, v = (split_heads(t, n_heads) for t in (q, k, v))
    mask = attention_mask(x.shape[1], x.shape[1], causal=causal, key_padding_mask=key_padding_mask)
    return F.linear(merge_heads(attention(q, k, v, mask)), out_proj_weight, out_proj_bias)


def kv_cache_step(cache: tuple[torch.Tensor, torch.Tensor] | None, q_new: torch.Tensor, k_new: torch.Tensor,
                  v_new: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """One decode step with a KV cache: append the new keys/values, then attend.

    Args:
        cache: ``(K, V)`` each ``(B, H, T_past, D)``, or ``None`` before the first step.
        q_new, k_new, v_new: ``(B, H, T_new, D)`` for the ``T_new`` new tokens (1 when decoding,
            the prompt length for prefill).

    Returns:
        ``(out, (K, V))``: ``out`` is ``(B, H, T_new, D)``, equal to rows ``T_past ..`` of full causal
        attention over all ``T_past + T_new`` tokens; ``K``, ``V`` are the grown cache.
    """
    if cache is not None and (cache[0].shape[:2] != k_new.shape[:2] or cache[0].shape[-1] != k_new.shape[-1]):
        raise ValueError(f"cache {tuple(cache[0].shape)} does not match new keys {tuple(k_new.shape)}")
    # BEGIN SOLUTION cat along the time axis (dim=2), then causal attention with the bottom-right aligned mask (easy, ~10 min)
    if cache is not None:
        k_new = torch.cat([cache[0], k_new], dim=2)
        v_new = torch.cat([cache[1], v_new], dim=2)
    mask = attention_mask(q_new.shape[2], k_new.shape[2], causal=True)
    return attention(q_new, k_new, v_new, mask), (k_new, v_new)
    # END SOLUTION


# --------------------------------------------------------------------------- BPE
def bpe_merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of ``pair`` in ``ids`` (left to right) by ``new_id``.

    ``bpe_merge([5, 5, 5], (5, 5), 9) == [9, 5]``.
    """
    # BEGIN SOLUTION one left-to-right scan; after a match skip both elements (easy, ~5 min)
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out
    # END SOLUTION


def bpe_train(data: bytes, num_merges: int) -> list[tuple[int, int]]:
    """Train byte-level BPE: start from the 256 byte ids, merge the most frequent adjacent pair, repeat.

    Merge ``m`` creates token id ``256 + m``. Pair counts are over the current sequence (overlapping
    pairs all count: ``aaa`` holds ``(a, a)`` twice). Ties go to the pair seen FIRST in the current
    sequence. Stops early when no pair occurs twice (merging a unique pair compresses nothing).

    Returns:
        The merges in order, ``[(left_id, right_id), ...]``.

    Raises:
        TypeError: ``data`` is not bytes. ValueError: ``num_merges < 0``.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"bpe_train works on bytes, got {type(data).__name__}: encode text with .encode('utf-8')")
    if num_merges < 0:
        raise ValueError(f"num_merges must be >= 0, got {num_merges}")
    # BEGIN SOLUTION count pairs (dict keeps first-seen order), take the max, stop if its count < 2, merge, record (medium, ~15 min)
    ids = list(data)
    merges: list[tuple[int, int]] = []
    for m in range(num_merges):
        counts: dict[tuple[int, int], int] = {}
        for pair in zip(ids, ids[1:]):
            counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            break
        best = max(counts, key=counts.__getitem__)  # max keeps the first of equal counts
        if counts[best] < 2:
            break
        ids = bpe_merge(ids, best, 256 + m)
        merges.append(best)
    return merges
    # END SOLUTION


def bpe_encode(data: bytes, merges: list[tuple[int, int]]) -> list[int]:
    """Encode bytes by applying the merges in training order (given)."""
    ids = list(data)
    for m, pair in enumerate(merges):
        ids = bpe_merge(ids, pair, 256 + m)
    return ids


def bpe_decode(ids: list[int], merges: list[tuple[int, int]]) -> bytes:
    """Invert ``bpe_encode`` (given)."""
    vocab = {i: bytes([i]) for i in range(256)}
    for m, (a, b) in enumerate(merges):
        vocab[256 + m] = vocab[a] + vocab[b]
    return b"".join(vocab[i] for i in ids)


# --------------------------------------------------------------------------- sampling
def _check_logits(logits: torch.Tensor) -> None:
    if not logits.is_floating_point():
        raise TypeError(f"logits must be floating point, got {logits.dtype}")
    if logits.dim() != 2 or logits.shape[-1] == 0:
        raise ValueError(f"logits must be (B, V) with V > 0, got {tuple(logits.shape)}")
    if torch.isnan(logits).any():
        raise ValueError("logits contain NaN: check the model's forward pass before sampling")


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits per row (ties with the k-th value are kept), set the rest to ``-inf``.

    Args:
        logits: ``(B, V)`` float. k: ``>= 1``; ``k >= V`` keeps everything.
    """
    _check_logits(logits)
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {k}")
    # BEGIN SOLUTION the k-th largest value per row is the threshold; everything below it -> -inf (easy, ~5 min)
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))
    # END SOLUTION


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability sums to >= ``p``.

    The token that carries the running sum across ``p`` IS kept, and the most likely token is always
    kept. Everything else becomes ``-inf``.

    Args:
        logits: ``(B, V)`` float. p: in ``(0, 1]``; ``p = 1`` keeps everything.
    """
    _check_logits(logits)
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    # BEGIN SOLUTION sort descending, cumsum of probs; drop a token when the mass BEFORE it already reaches p; scatter back (medium, ~15 min)
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    drop_sorted = mass_before >= p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))
    # END SOLUTION


def sample(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token per row: temperature, then top-k, then top-p, then one multinomial draw.

    ``temperature == 0`` means greedy (argmax, no randomness).

    Returns:
        ``(B,)`` int64 token ids.
    """
    _check_logits(logits)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    # BEGIN SOLUTION greedy at T=0; else divide by T, filter, softmax, torch.multinomial(..., 1, generator=generator) (easy, ~5 min)
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)
    # END SOLUTION


# --------------------------------------------------------------------------- beam search
StepFn = Callable[[torch.Tensor], torch.Tensor]


def beam_search(step_fn: StepFn, prompt: list[int], *, beam_width: int, max_new_tokens: int, eos_id: int,
                length_penalty: float = 1.0) -> list[tuple[list[int], float]]:
    """Beam search over a given step function.

    Args:
        step_fn: ``(N, T)`` int64 token ids -> ``(N, V)`` log-probabilities of the next token.
        prompt: the prefix every beam starts from (not scored, not counted in the length).
        beam_width: beams kept alive per step, and hypotheses returned.
        max_new_tokens: at most this many generated tokens (EOS included).
        eos_id: a beam that emits it is finished: moved out of the live set, never extended.
        length_penalty: a hypothesis is ranked by ``sum(logprobs) / n_generated ** length_penalty``
            (``n_generated`` counts EOS); 0 ranks by raw log-probability, which favours short outputs.

    Algorithm: at each step score every (live beam, next token) pair by its summed log-probability
    and walk them best first: an EOS candidate among the first ``beam_width`` becomes a finished
    hypothesis; any other candidate joins the next live set until it holds ``beam_width`` beams.
    Stop when no beam is live or after ``max_new_tokens`` steps; beams still live then count as
    hypotheses too.

    Returns:
        Up to ``beam_width`` ``(generated_tokens, normalised_score)`` pairs, best first; the tokens
        exclude the prompt and include EOS when it was emitted.
    """
    if beam_width < 1 or max_new_tokens < 1:
        raise ValueError(f"beam_width and max_new_tokens must be >= 1, got {beam_width}, {max_new_tokens}")
    if not prompt:
        raise ValueError("prompt must hold at least one token (use a BOS id)")
    # BEGIN SOLUTION keep (tokens, logprob) beams; flatten the (beam, token) scores, sort, route EOS to finished; normalise at the end (hard, ~25 min)
    def norm(tokens: list[int], logp: float) -> float:
        return logp / (len(tokens) ** length_penalty)

    live: list[tuple[list[int], float]] = [([], 0.0)]
    finished: list[tuple[list[int], float]] = []
    for _ in range(max_new_tokens):
        seqs = torch.tensor([prompt + toks for toks, _ in live], dtype=torch.long)
        logprobs = step_fn(seqs)
        totals = torch.tensor([lp for _, lp in live], dtype=logprobs.dtype)[:, None] + logprobs
        V = totals.shape[-1]
        flat = totals.flatten()
        order = torch.argsort(flat, descending=True, stable=True)
        new_live: list[tuple[list[int], float]] = []
        for rank, idx in enumerate(order.tolist()):
            b, tok = divmod(idx, V)
            cand = (live[b][0] + [tok], float(flat[idx]))
            if tok == eos_id:
                if rank < beam_width:
                    finished.append(cand)
            elif len(new_live) < beam_width:
                new_live.append(cand)
            if len(new_live) == beam_width and rank >= beam_width - 1:
                break
        live = new_live
        if not live:
            break
    hyps = [(toks, norm(toks, lp)) for toks, lp in finished + live]
    hyps.sort(key=lambda h: h[1], reverse=True)
    return hyps[:beam_width]
    # END SOLUTION


# --------------------------------------------------------------------------- RoPE
def rope_cos_sin(positions: torch.Tensor, head_dim: int, base: float = 10000.0,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The RoPE tables in the rotate-half (Llama / GPT-NeoX) layout.

    Frequencies ``inv_freq[i] = base ** (-2i / head_dim)`` for ``i < head_dim / 2``; angles
    ``positions[:, None] * inv_freq``, concatenated with themselves to width ``head_dim``.

    Args:
        positions: ``(T,)`` or ``(B, T)`` int positions. head_dim: even.

    Returns:
        ``(cos, sin)``, each ``positions.shape + (head_dim,)``.
    """
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    # BEGIN SOLUTION inv_freq from arange(0, D, 2) / D in float64, outer product with positions, cat([a, a]) (easy, ~10 min)
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = positions.to(torch.float64)[..., None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)
    # END SOLUTION


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last axis, where ``x1``/``x2`` are its first/second halves."""
    # BEGIN SOLUTION split the last axis in two halves (not even/odd), return cat([-x2, x1]) (easy, ~3 min)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)
    # END SOLUTION


def apply_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
               sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate queries and keys: ``x * cos + rotate_half(x) * sin``.

    Args:
        q, k: ``(B, H, T, D)``. cos, sin: ``(T, D)`` or ``(B, T, D)`` (broadcast over heads).
    """
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, D): one table for every head
    # BEGIN SOLUTION the same formula for q and k (easy, ~5 min)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
    # END SOLUTION


# --------------------------------------------------------------------------- norms, forward and backward
def layernorm_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                      eps: float = 1e-5) -> tuple[torch.Tensor, tuple]:
    """LayerNorm over the last axis: ``(x - mean) / sqrt(var + eps) * weight + bias``, biased variance.

    Returns:
        ``(y, cache)``; ``cache`` holds what ``layernorm_backward`` needs (your choice of contents).
    """
    # BEGIN SOLUTION mean and BIASED var over the last axis; cache xhat, rstd, weight (easy, ~5 min)
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True, unbiased=False)
    rstd = torch.rsqrt(var + eps)
    xhat = (x - mean) * rstd
    return xhat * weight + bias, (xhat, rstd, weight)
    # END SOLUTION


def layernorm_backward(dy: torch.Tensor, cache: tuple) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of LayerNorm by hand: ``(dx, dweight, dbias)`` given ``dy = dL/dy``.

    ``dweight``/``dbias`` sum over every axis but the last.
    """
    # BEGIN SOLUTION chain rule through xhat, the mean AND the variance; dweight/dbias sum over leading axes (hard, ~20 min)
    xhat, rstd, weight = cache
    reduce = tuple(range(dy.dim() - 1))
    dweight = (dy * xhat).sum(dim=reduce)
    dbias = dy.sum(dim=reduce)
    dxhat = dy * weight
    dx = rstd * (dxhat - dxhat.mean(dim=-1, keepdim=True) - xhat * (dxhat * xhat).mean(dim=-1, keepdim=True))
    return dx, dweight, dbias
    # END SOLUTION


def rmsnorm_forward(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, tuple]:
    """RMSNorm over the last axis: ``x / sqrt(mean(x**2) + eps) * weight`` (no mean removal, no bias)."""
    # BEGIN SOLUTION rstd = rsqrt(mean(x^2) + eps); cache x, rstd, weight (easy, ~5 min)
    rstd = torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)
    return x * rstd * weight, (x, rstd, weight)
    # END SOLUTION


def rmsnorm_backward(dy: torch.Tensor, cache: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of RMSNorm by hand: ``(dx, dweight)``."""
    # BEGIN SOLUTION chain rule through x AND rstd(x); dweight sums over leading axes (medium, ~15 min)
    x, rstd, weight = cache
    xhat = x * rstd
    dweight = (dy * xhat).sum(dim=tuple(range(dy.dim() - 1)))
    g = dy * weight
    dx = rstd * (g - xhat * (g * xhat).mean(dim=-1, keepdim=True))
    return dx, dweight
    # END SOLUTION


# --------------------------------------------------------------------------- self-test
def _checks() -> list[tuple[str, float, float]]:
    """(name, max abs error vs the reference, tolerance) for every answer."""
    g = torch.Generator().manual_seed(0)
    rows: list[tuple[str, float, float]] = []

    def add(name, err, tol):
        rows.append((name, float(err.detach()) if isinstance(err, torch.Tensor) else float(err), tol))

    B, H, T, D = 2, 3, 7, 8
    q, k, v = (torch.randn(B, H, T, D, generator=g, dtype=torch.float64) for _ in range(3))
    add("attention causal vs F.sdpa", (attention(q, k, v, attention_mask(T, T)) -
                                       F.scaled_dot_product_attention(q, k, v, is_causal=True)).abs().max(), 1e-10)
    pad = torch.ones(B, T, dtype=torch.bool)
    pad[1, 5:] = False
    m = attention_mask(T, T, causal=True, key_padding_mask=pad)
    add("attention causal+padding vs F.sdpa", (attention(q, k, v, m) -
                                               F.scaled_dot_product_attention(q, k, v, attn_mask=m)).abs().max(), 1e-10)
    big = q * 1e4
    add("attention finite at |scores|~1e8", 0.0 if torch.isfinite(attention(big, k, v, m)).all() else math.inf, 0.0)

    C = H * D
    mha = torch.nn.MultiheadAttention(C, H, batch_first=True, dtype=torch.float64)
    x = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    ref, _ = mha(x, x, x, attn_mask=~attention_mask(T, T), need_weights=False)
    ours = multi_head_attention(x, mha.in_proj_weight, mha.in_proj_bias, mha.out_proj.weight, mha.out_proj.bias,
                                H, causal=True)
    add("multi-head (split/merge) vs nn.MultiheadAttention", (ours - ref).abs().max(), 1e-10)

    full = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    cache, outs = None, []
    out, cache = kv_cache_step(cache, q[:, :, :3], k[:, :, :3], v[:, :, :3])  # prefill 3, then decode 1 by 1
    outs.append(out)
    for t in range(3, T):
        out, cache = kv_cache_step(cache, q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1])
        outs.append(out)
    add("KV-cache prefill+decode vs full causal", (torch.cat(outs, dim=2) - full).abs().max(), 1e-10)

    merges = bpe_train(b"aaabdaaabac", 3)
    add("BPE 'aaabdaaabac' merges (Wikipedia example)", 0.0 if merges == [(97, 97), (256, 97), (257, 98)] else 1, 0)
    text = b"the cat sat on the mat; the hat is flat. " * 4
    merges = bpe_train(text, 20)
    add("BPE round trip decode(encode(x)) == x", 0.0 if bpe_decode(bpe_encode(text, merges), merges) == text else 1, 0)

    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper
    logits = torch.randn(4, 50, generator=g)
    add("top-k vs transformers TopKLogitsWarper",
        0.0 if torch.equal(top_k_filter(logits, 5), TopKLogitsWarper(5)(None, logits.clone())) else 1, 0)
    add("top-p vs transformers TopPLogitsWarper",
        0.0 if torch.equal(top_p_filter(logits, 0.8), TopPLogitsWarper(0.8)(None, logits.clone())) else 1, 0)

    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb
    cfg = LlamaConfig(hidden_size=H * 16, num_attention_heads=H, max_position_embeddings=64)
    pos = torch.arange(T)[None].expand(B, T) + torch.tensor([[0], [5]])
    qr, kr = (torch.randn(B, H, T, 16, generator=g) for _ in range(2))
    cos_ref, sin_ref = LlamaRotaryEmbedding(cfg)(qr, pos)
    cos, sin = rope_cos_sin(pos, 16)
    q_ref, k_ref = apply_rotary_pos_emb(qr, kr, cos_ref, sin_ref)
    q_us, k_us = apply_rope(qr, kr, cos, sin)
    add("RoPE vs transformers apply_rotary_pos_emb", max((q_us - q_ref).abs().max(), (k_us - k_ref).abs().max()), 1e-5)

    x = torch.randn(4, 5, 16, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(16, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(16, generator=g, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(4, 5, 16, generator=g, dtype=torch.float64)
    y, c = layernorm_forward(x.detach(), w.detach(), b.detach())
    y_ref = F.layer_norm(x, (16,), w, b, 1e-5)
    add("LayerNorm forward vs F.layer_norm", (y - y_ref).abs().max(), 1e-10)
    grads = torch.autograd.grad(y_ref, (x, w, b), dy)
    add("LayerNorm backward vs autograd", max((a - r).abs().max() for a, r in zip(layernorm_backward(dy, c), grads)),
        1e-10)
    y, c = rmsnorm_forward(x.detach(), w.detach())
    y_ref = F.rms_norm(x, (16,), w, 1e-6)
    add("RMSNorm forward vs F.rms_norm", (y - y_ref).abs().max(), 1e-10)
    grads = torch.autograd.grad(y_ref, (x, w), dy)
    add("RMSNorm backward vs autograd", max((a - r).abs().max() for a, r in zip(rmsnorm_backward(dy, c), grads)),
        1e-10)

    # beam search on a fixed random "language model" (log-probs depend on the last token only)
    table = torch.randn(6, 6, generator=g, dtype=torch.float64).log_softmax(-1)

    def step(seqs):
        return table[seqs[:, -1]]

    best = beam_search(step, [0], beam_width=2, max_new_tokens=4, eos_id=5)
    add("beam search returns sorted, finite scores",
        0.0 if all(math.isfinite(s) for _, s in best) and best == sorted(best, key=lambda h: -h[1]) else 1, 0)
    return rows


def main() -> int:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    rows = _checks()
    width = max(len(n) for n, _, _ in rows)
    print(f"{'check':<{width}}  {'max |err|':>10}  {'tol':>7}  ok")
    bad = 0
    for name, err, tol in rows:
        ok = err <= tol
        bad += not ok
        print(f"{name:<{width}}  {err:10.2e}  {tol:7.0e}  {'yes' if ok else 'NO'}")
    print(f"{len(rows) - bad}/{len(rows)} checks passed in {time.perf_counter() - t0:.1f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

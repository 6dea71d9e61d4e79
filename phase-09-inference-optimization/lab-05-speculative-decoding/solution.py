"""Lab 9.5: speculative decoding, a small draft model proposes and the target model verifies.

Decoding one token at a time with a large model is memory-bound: every step reads all the
weights to produce one token, and a forward pass over K+1 tokens costs about the same as over one.
Speculative decoding (Leviathan, Kalman & Matias 2023; Chen et al. 2023, "speculative sampling")
exploits that:

1. a cheap **draft** model samples K tokens autoregressively, ``d_1 .. d_K ~ q``;
2. the **target** model scores the context plus all K drafts in ONE forward pass with its KV
   cache, which gives its distributions ``p_1 .. p_{K+1}`` at every drafted position and one more;
3. **modified rejection sampling** keeps a prefix of the drafts: ``d_i`` is accepted with
   probability ``min(1, p_i(d_i) / q_i(d_i))``; at the first rejection the token is resampled from
   the residual ``norm(max(0, p_i - q_i))`` and the round ends; if all K are accepted a **bonus**
   token is drawn from ``p_{K+1}``;
4. both KV caches are rolled back (``crop``) to the accepted prefix.

Each round emits between 1 and K+1 tokens for one target pass, and the emitted tokens are
distributed EXACTLY as the target's own samples (at temperature 0: exactly its greedy tokens).
With a per-position acceptance rate α and a draft that costs c target-steps per token, the
expected speedup is ``(1 - α^(K+1)) / ((1 - α)(1 + cK))`` (Leviathan et al., Theorem 3.8).

Models: the curriculum's "main" model (target, 4 layers) and "draft" (2 layers, same tokenizer),
both Phase 4 MiniGPTs trained by Phase 5, with lab 9.1's ``KVCache`` (imported, never copied).

Run: ``python solution.py`` (small mode, about a minute on one CPU core) or ``--full``.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from labkit import load_lab

HERE = Path(__file__).resolve().parent

# KVCache (with crop), generate_cached, load_curriculum_minigpt: the lab 9.1 reference solution.
kvlab = load_lab("phase-09-inference-optimization/lab-01-kv-cache")
# MiniGPT: the lab 4.4 reference solution (the model both lab 9.1 and this lab drive).
gpt = load_lab("phase-04-attention-transformers/lab-04-mini-transformer")
MiniGPT = gpt.MiniGPT
KVCache = kvlab.KVCache

__all__ = [
    "SpecStats",
    "benchmark_speculative",
    "expected_speedup",
    "expected_tokens_per_round",
    "load_models",
    "measure_costs",
    "probs_from_logits",
    "residual_distribution",
    "speculative_generate",
    "val_prompts",
    "verify_drafts",
]


# ============================================================================ distributions
def _check_sampling(temperature: Any, top_k: Any, top_p: Any) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be an int >= 1 or None, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")


def probs_from_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                      top_p: float | None = None) -> torch.Tensor:
    """The distribution a sampler draws the next token from, as explicit probabilities.

    Same rules as lab 9.1's ``sample_next_token`` (and lab 4.4's ``generate``): divide by the
    temperature, keep the top_k largest logits, then the nucleus (smallest set of most likely
    tokens reaching top_p; the top token always stays), softmax. Temperature 0 is greedy and
    gives a one-hot vector on the argmax, so speculative decoding's accept/reject rule turns
    into "accept iff the draft token is the target's argmax" without a special case.

    Speculative decoding must apply the SAME warping to the draft's and the target's logits:
    the output then follows the target's warped distribution, the one plain sampling uses.

    Args:
        logits: (..., vocab) float.
        temperature, top_k, top_p: as ``sample_next_token``.

    Returns:
        float32 (..., vocab), non-negative, each row summing to 1.

    Raises:
        ValueError: bad sampling arguments, or logits with NaN.
    """
    _check_sampling(temperature, top_k, top_p)
    if torch.isnan(logits).any():
        raise ValueError("logits contain NaN")
    logits = logits.float()
    if temperature == 0:
        return F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).float()
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        ascending, order = torch.sort(logits, dim=-1)
        tail = F.softmax(ascending, dim=-1).cumsum(dim=-1) <= 1 - top_p
        tail[..., -1] = False
        logits = logits.masked_fill(tail.scatter(-1, order, tail), float("-inf"))
    return F.softmax(logits, dim=-1)


def _check_probs(name: str, x: Any) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{name} must be a float tensor of probabilities, got {getattr(x, 'dtype', type(x))}")
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"{name} must have a vocabulary axis last, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    if (x < 0).any():
        raise ValueError(f"{name} contains negative probabilities")


def residual_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The distribution to resample from after a draft token is rejected: ``norm(max(0, p - q))``.

    Why it is right (Leviathan et al. 2023, appendix A.1): a token x comes out of one accept step
    either as an accepted draft, with probability ``q(x) * min(1, p(x)/q(x)) = min(p(x), q(x))``,
    or from the residual after a rejection, which happens with probability
    ``1 - sum_x min(p, q) = sum_x max(0, p - q)``. Adding the two gives
    ``min(p, q) + max(0, p - q) = p(x)``: the target's distribution, exactly.

    Args:
        p: (..., vocab) target probabilities.
        q: (..., vocab) draft probabilities (same shape). A row of zeros is allowed: then the
            residual is p itself (the bonus token, where there was no draft).

    Returns:
        (..., vocab) float tensor, each row summing to 1. Where p <= q everywhere (p == q: a
        rejection has probability 0 there) the row is p itself, so it is always a distribution.

    Raises:
        TypeError: not float tensors.  ValueError: shapes differ, NaN/inf, negative entries.
    """
    _check_probs("p", p)
    _check_probs("q", q)
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape, got {tuple(p.shape)} and {tuple(q.shape)}")
    # BEGIN SOLUTION clamp p - q at 0 (NOT abs, NOT p alone), divide each row by its sum; rows whose sum is 0 (p == q) fall back to p (easy, ~10 min)
    r = (p - q).clamp(min=0)
    mass = r.sum(dim=-1, keepdim=True)
    return torch.where(mass > 0, r / mass.clamp(min=torch.finfo(r.dtype).tiny), p)
    # END SOLUTION


def verify_drafts(p: torch.Tensor, q: torch.Tensor, draft_tokens: torch.Tensor,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Modified rejection sampling over K drafted tokens, batched over rows.

    For each row, walk the drafts in order: accept ``d_i`` when ``u_i < p_i(d_i) / q_i(d_i)`` with
    ``u_i ~ U[0, 1)`` (probability ``min(1, p/q)``); at the first rejection (position n) draw the
    next token from ``residual_distribution(p_n, q_n)`` and stop; when all K are accepted (n = K)
    draw the bonus token from ``p_{K+1}``. Either way the row gains n accepted drafts plus one
    token, and all n + 1 are distributed as the target would have sampled them.

    Random draws, in this order (so results are reproducible with ``generator``): one
    ``torch.rand((B, K))`` for the accept tests (all K drawn even if an early one rejects), then
    one ``torch.multinomial`` per row-batch for the final token.

    Args:
        p: (B, K+1, vocab) target probabilities at the K drafted positions and the one after.
        q: (B, K, vocab) draft probabilities the drafts were sampled from (K may be 0).
        draft_tokens: (B, K) int64, the drafted ids (each must have q > 0: it was sampled from q).
        generator: optional torch.Generator.

    Returns:
        ``(n_accepted, next_token)``: int64 (B,) in [0, K], and int64 (B,) the token appended after
        the accepted prefix (residual sample or bonus).

    Raises:
        TypeError/ValueError: wrong dtypes, shapes, ids outside the vocabulary, invalid probabilities.
    """
    _check_probs("p", p)
    _check_probs("q", q)
    if p.dim() != 3 or q.dim() != 3:
        raise ValueError(f"p must be (B, K+1, vocab) and q (B, K, vocab), got {tuple(p.shape)} and {tuple(q.shape)}")
    B, K1, V = p.shape
    if q.shape != (B, K1 - 1, V):
        raise ValueError(f"q must be (B, K, vocab) = {(B, K1 - 1, V)} for p of shape {tuple(p.shape)}, "
                         f"got {tuple(q.shape)}")
    if not isinstance(draft_tokens, torch.Tensor) or draft_tokens.dtype not in (torch.int64, torch.int32):
        raise TypeError("draft_tokens must be an int64 tensor of token ids")
    if draft_tokens.shape != (B, K1 - 1):
        raise ValueError(f"draft_tokens must be (B, K) = {(B, K1 - 1)}, got {tuple(draft_tokens.shape)}")
    if ((draft_tokens < 0) | (draft_tokens >= V)).any():
        raise ValueError(f"draft_tokens has ids outside [0, {V})")
    # BEGIN SOLUTION gather p_i(d_i), q_i(d_i) at the drafts; u = torch.rand((B, K)); accepted where u * q < p (u < p/q without dividing); n = length of the all-accepted PREFIX (cumprod, not sum: a later accept after a rejection does not count); next token: residual of (p_n, q_n) if n < K else p_K (bonus): pad q with a zero row so q_K = 0 makes the residual p; one multinomial draw per row (medium, ~30 min)
    K = K1 - 1
    rows = torch.arange(B, device=p.device)
    if K > 0:
        d = draft_tokens.long().unsqueeze(-1)
        p_d = p[:, :K].gather(-1, d).squeeze(-1)                       # (B, K) p_i(d_i)
        q_d = q.gather(-1, d).squeeze(-1)                              # (B, K) q_i(d_i)
        u = torch.rand((B, K), generator=generator, device=p.device, dtype=p.dtype)
        accepted = u * q_d < p_d                                       # u < p/q, i.e. prob min(1, p/q)
        n = accepted.long().cumprod(dim=-1).sum(dim=-1)                # length of the accepted prefix
    else:
        n = torch.zeros(B, dtype=torch.long, device=p.device)
    q_pad = torch.cat([q, q.new_zeros(B, 1, V)], dim=1)                # no draft at position K: q = 0
    final = residual_distribution(p[rows, n], q_pad[rows, n])          # (B, V): residual, or p_K = bonus
    next_token = torch.multinomial(final, 1, generator=generator).squeeze(-1)
    return n, next_token
    # END SOLUTION


# ============================================================================ the algorithm
@dataclass
class SpecStats:
    """Counters of one ``speculative_generate`` call.

    Attributes:
        k: draft length requested.
        rounds: draft-verify rounds (= target forward passes).
        drafted: draft tokens proposed; accepted: of them accepted.
        tested: draft positions where the accept test ran (accepted + the rejections; positions
            after a rejection are never tested). ``accepted / tested`` estimates α.
        beta_sum: sum over tested positions of ``sum_x min(p(x), q(x))``, the exact acceptance
            probability there (Leviathan et al.'s β); ``beta_sum / tested`` is a lower-variance α.
        draft_calls: draft forward passes.
        new_tokens: tokens generated.
        accepted_per_round: n of every round.
    """

    k: int
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    tested: int = 0
    beta_sum: float = 0.0
    draft_calls: int = 0
    new_tokens: int = 0
    accepted_per_round: list[int] = field(default_factory=list)

    @property
    def acceptance_rate(self) -> float:
        """α measured: accepted / tested (nan before any test)."""
        return self.accepted / self.tested if self.tested else float("nan")

    @property
    def expected_acceptance(self) -> float:
        """α from the distributions: mean of sum_x min(p, q) over tested positions."""
        return self.beta_sum / self.tested if self.tested else float("nan")

    @property
    def tokens_per_round(self) -> float:
        """New tokens per target forward pass (1 for plain decoding, at most k + 1)."""
        return self.new_tokens / self.rounds if self.rounds else float("nan")


def _check_models(target: Any, draft: Any) -> None:
    for name, m in (("target", target), ("draft", draft)):
        if not isinstance(m, MiniGPT):
            raise TypeError(f"{name} must be a lab 4.4 MiniGPT, got {type(m).__name__}")
    if target.config.vocab_size != draft.config.vocab_size:
        raise ValueError(f"target and draft must share a tokenizer: vocab sizes {target.config.vocab_size} "
                         f"and {draft.config.vocab_size} differ")


@torch.no_grad()
def speculative_generate(target: MiniGPT, draft: MiniGPT, idx: torch.Tensor, max_new_tokens: int, *,
                         k: int = 4, temperature: float = 0.0, top_k: int | None = None,
                         top_p: float | None = None, generator: torch.Generator | None = None,
                         eos_token_id: int | None = None) -> tuple[torch.Tensor, SpecStats]:
    """Generate ``max_new_tokens`` tokens from ``target`` with ``draft`` proposing ``k`` at a time.

    Each round: the draft samples up to k tokens one by one (its own KV cache), the target runs
    ONE forward pass over its uncached tokens plus the drafts (``logits_to_keep = k + 1``),
    :func:`verify_drafts` keeps a prefix and adds one token, and both caches are cropped
    (lab 9.1's ``KVCache.crop``) to the tokens that survived. Invariant between rounds: every
    committed token but the last is in the target's cache; the draft's cache may lag by two.
    The last round drafts fewer tokens (never more than are still needed minus one).

    Output distribution: exactly the target's (with the same temperature/top_k/top_p warping,
    applied to both models). At temperature 0 the tokens equal the target's greedy tokens
    (``target.generate(idx, n, temperature=0)``), whatever the draft.

    Args:
        target, draft: lab 4.4 MiniGPTs with the same vocabulary (call ``.eval()`` first).
        idx: (1, T) int64 prompt (batch size 1: rows would accept different numbers of tokens).
        max_new_tokens: >= 0; T + max_new_tokens <= both models' block_size.
        k: draft tokens per round, >= 1.
        temperature, top_k, top_p: sampling, as lab 9.1's ``sample_next_token``.
        generator: optional torch.Generator (draft samples, accept tests and final draws).
        eos_token_id: stop after the round that emits it; the output ends at the first eos.

    Returns:
        ``(tokens, stats)``: (1, T + n) int64, n = max_new_tokens unless eos came first; and a
        :class:`SpecStats`.

    Raises:
        TypeError: models not MiniGPTs, idx not an integer tensor.
        ValueError: vocab sizes differ, batch size != 1, k < 1, bad sampling arguments, prompt +
            max_new_tokens > block_size, ids outside the vocabulary.
    """
    _check_models(target, draft)
    if not isinstance(idx, torch.Tensor) or idx.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"idx must be an int64 tensor of token ids, got {getattr(idx, 'dtype', type(idx))}")
    if idx.dim() != 2 or idx.shape[0] != 1 or idx.shape[1] == 0:
        raise ValueError(f"idx must be (1, T) with T >= 1 (speculative decoding here runs one sequence), "
                         f"got {tuple(idx.shape)}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (draft tokens per round) must be an int >= 1, got {k!r}")
    _check_sampling(temperature, top_k, top_p)
    V = target.config.vocab_size
    if ((idx < 0) | (idx >= V)).any():
        raise ValueError(f"idx has ids outside [0, {V})")
    if eos_token_id is not None and not (isinstance(eos_token_id, int) and 0 <= eos_token_id < V):
        raise ValueError(f"eos_token_id must be an id in [0, {V}), got {eos_token_id!r}")
    limit = min(target.config.block_size, draft.config.block_size)
    if idx.shape[1] + max_new_tokens > limit:
        raise ValueError(f"prompt ({idx.shape[1]}) + max_new_tokens ({max_new_tokens}) > block_size ({limit})")
    stats = SpecStats(k=k)
    out = idx.long()
    T0 = out.shape[1]

    def warp(logits: torch.Tensor) -> torch.Tensor:
        return probs_from_logits(logits, temperature, top_k, top_p)

    # BEGIN SOLUTION two KVCaches; loop while tokens are missing: k_r = min(k, missing - 1); DRAFT: feed the tokens the draft has not cached (out[:, draft_len:]), then each sampled draft token, k_r times (probs via warp, torch.multinomial with generator); VERIFY: one target forward over out[:, target_len:] + drafts with logits_to_keep=k_r + 1, warp; verify_drafts; append accepted drafts + next token; CROP both caches to the committed length - 1 (the draft's only if it holds more); update stats (tested = n + 1 if a rejection happened else n; beta over the tested positions); stop at eos (hard, ~45 min)
    t_cache, d_cache = KVCache(), KVCache()
    while out.shape[1] - T0 < max_new_tokens:
        L = out.shape[1]
        k_r = min(k, max_new_tokens - (L - T0) - 1)
        drafts, q_rows = [], []
        if k_r > 0:
            step_in = out[:, d_cache.get_seq_length():]                 # 1 or 2 tokens after round 1
            for _ in range(k_r):
                logits = draft(step_in, past_key_values=d_cache, logits_to_keep=1)[0][:, -1]
                stats.draft_calls += 1
                q_i = warp(logits)                                      # (1, V)
                d_i = torch.multinomial(q_i, 1, generator=generator)    # (1, 1)
                drafts.append(d_i)
                q_rows.append(q_i)
                step_in = d_i
        d_tok = torch.cat(drafts, dim=1) if drafts else out.new_zeros(1, 0)
        q = torch.stack(q_rows, dim=1) if q_rows else torch.zeros(1, 0, V)
        verify_in = torch.cat([out[:, t_cache.get_seq_length():], d_tok], dim=1)
        p = warp(target(verify_in, past_key_values=t_cache, logits_to_keep=k_r + 1)[0])   # (1, k_r+1, V)
        n_t, next_t = verify_drafts(p, q, d_tok, generator)
        n = int(n_t[0])
        out = torch.cat([out, d_tok[:, :n], next_t.view(1, 1)], dim=1)
        t_cache.crop(out.shape[1] - 1)                                  # drop rejected drafts
        if d_cache.get_seq_length() > out.shape[1] - 1:
            d_cache.crop(out.shape[1] - 1)
        tested = n + 1 if n < k_r else n
        stats.rounds += 1
        stats.drafted += k_r
        stats.accepted += n
        stats.tested += tested
        if tested:
            stats.beta_sum += float(torch.minimum(p[0, :tested], q[0, :tested]).sum())
        stats.accepted_per_round.append(n)
        if eos_token_id is not None and bool((out[0, L:] == eos_token_id).any()):
            first = L + int((out[0, L:] == eos_token_id).nonzero()[0])
            out = out[:, : first + 1]
            break
    # END SOLUTION
    stats.new_tokens = out.shape[1] - T0
    return out, stats


# ============================================================================ the speedup formula
def _check_alpha_k(alpha: Any, k: Any) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha (acceptance rate) must be in [0, 1], got {alpha!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be an int >= 0, got {k!r}")


def expected_tokens_per_round(alpha: float, k: int) -> float:
    """Expected tokens one draft-verify round emits when each draft is accepted independently
    with probability α: ``1 + α + α² + ... + α^k = (1 - α^(k+1)) / (1 - α)`` (k + 1 at α = 1).

    Raises:
        ValueError: α outside [0, 1], k not an int >= 0.
    """
    _check_alpha_k(alpha, k)
    # BEGIN SOLUTION the geometric sum; handle alpha == 1 (the closed form divides by zero) (easy, ~5 min)
    if alpha == 1:
        return float(k + 1)
    return (1 - alpha ** (k + 1)) / (1 - alpha)
    # END SOLUTION


def expected_speedup(alpha: float, k: int, c: float) -> float:
    """Leviathan et al.'s expected walltime improvement ``(1 - α^(k+1)) / ((1 - α)(1 + c k))``.

    A round costs k draft steps (c target-steps each) plus one target pass, assumed to cost one
    target step however many tokens it scores (true when decoding is memory-bound); it emits
    :func:`expected_tokens_per_round` tokens, where plain decoding emits 1 per target step.

    Args:
        alpha: per-token acceptance rate in [0, 1].  k: draft length >= 0.
        c: draft cost per token / target cost per token, >= 0.

    Raises:
        ValueError: any argument out of range.
    """
    _check_alpha_k(alpha, k)
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c < 0:
        raise ValueError(f"c (draft/target cost ratio) must be a finite number >= 0, got {c!r}")
    # BEGIN SOLUTION tokens per round divided by the round's cost in target steps, 1 + c*k (easy, ~5 min)
    return expected_tokens_per_round(alpha, k) / (1 + c * k)
    # END SOLUTION


# ============================================================================ measurement
def load_models() -> tuple[MiniGPT, MiniGPT]:
    """(target, draft): the curriculum's "main" and "draft" MiniGPTs, in eval mode."""
    return kvlab.load_curriculum_minigpt("main"), kvlab.load_curriculum_minigpt("draft")


def val_prompts(n: int, length: int, seed: int = 0) -> list[torch.Tensor]:
    """``n`` prompts of ``length`` tokens from the curriculum model's validation split, each the
    start of a story (``<|endoftext|>`` then the story's first tokens), as (1, length) int64."""
    import numpy as np

    from labkit import curriculum_model_path

    data = np.memmap(curriculum_model_path("main") / "data" / "val.bin", dtype=np.uint16, mode="r")
    starts = np.flatnonzero(np.asarray(data[: 2_000_000]) == 0)
    starts = starts[starts + length < len(data)]
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(starts), generator=g)[:n].tolist()
    return [torch.from_numpy(data[starts[i]: starts[i] + length].astype(np.int64)).view(1, -1) for i in pick]


def _cpu_time(fn: Any, repeats: int) -> float:
    """Median process CPU seconds of fn() (CPU time: the machine is shared, wall time is noisy)."""
    times = []
    for _ in range(repeats):
        c = time.process_time()
        fn()
        times.append(time.process_time() - c)
    return sorted(times)[len(times) // 2]


@torch.no_grad()
def measure_costs(target: MiniGPT, draft: MiniGPT, context: int = 64, ks: tuple[int, ...] = (1, 2, 4, 8),
                  steps: int = 20, repeats: int = 3, seed: int = 0) -> dict[str, float]:
    """Per-call CPU cost of a one-token decode step of each model at ``context`` cached tokens, and
    of the target scoring k + 1 tokens in one pass, by timing ``steps`` calls (cache cropped back
    after each). Returns ``{"target_step", "draft_step" (seconds), "c" (their ratio), "verify_k"
    (target pass over k + 1 tokens / target_step, for each k)}``."""
    g = torch.Generator().manual_seed(seed)
    ctx = torch.randint(4, target.config.vocab_size, (1, context), generator=g)
    out: dict[str, float] = {}

    def step_cost(model: MiniGPT, n_tokens: int) -> float:
        cache = KVCache()
        model(ctx, past_key_values=cache)
        x = torch.randint(4, model.config.vocab_size, (1, n_tokens), generator=g)

        def run() -> None:
            for _ in range(steps):
                model(x, past_key_values=cache, logits_to_keep=n_tokens)
                cache.crop(context)
        return _cpu_time(run, repeats) / steps

    out["target_step"] = step_cost(target, 1)
    out["draft_step"] = step_cost(draft, 1)
    out["c"] = out["draft_step"] / out["target_step"]
    for k in ks:
        out[f"verify_{k}"] = step_cost(target, k + 1) / out["target_step"]
    return out


@torch.no_grad()
def benchmark_speculative(target: MiniGPT, draft: MiniGPT, prompts: list[torch.Tensor], new_tokens: int,
                          ks: tuple[int, ...], temperature: float = 0.0, seed: int = 0,
                          repeats: int = 1) -> list[dict[str, float]]:
    """For each k: α (measured and from the distributions), tokens per target pass, and the CPU-time
    speedup of :func:`speculative_generate` over lab 9.1's ``generate_cached`` (target alone, KV
    cache) on the same prompts (median CPU time of ``repeats`` runs each: the machine is shared).
    Returns one dict per k."""
    def baseline() -> None:
        g = torch.Generator().manual_seed(seed)
        for pr in prompts:
            kvlab.generate_cached(target, pr, new_tokens, temperature=temperature, generator=g)

    t_base = _cpu_time(baseline, repeats)
    rows = []
    for k in ks:
        agg = SpecStats(k=k)

        def spec(k: int = k, agg: SpecStats = agg) -> None:
            g = torch.Generator().manual_seed(seed)
            for pr in prompts:
                _, s = speculative_generate(target, draft, pr, new_tokens, k=k, temperature=temperature, generator=g)
                if agg.new_tokens < len(prompts) * new_tokens:   # record the first repeat only
                    for name in ("rounds", "drafted", "accepted", "tested", "beta_sum", "new_tokens"):
                        setattr(agg, name, getattr(agg, name) + getattr(s, name))

        t_spec = _cpu_time(spec, repeats)
        rows.append({"k": k, "alpha": agg.acceptance_rate, "alpha_beta": agg.expected_acceptance,
                     "tokens_per_round": agg.tokens_per_round, "t_base": t_base, "t_spec": t_spec,
                     "speedup": t_base / t_spec})
    return rows


# ============================================================================ self-test
def _chi2(observed: list[int], expected: list[float]) -> tuple[float, int, float]:
    """(statistic, degrees of freedom, p-value) of Pearson's chi-square test."""
    from scipy.stats import chi2

    stat = sum((o - e) ** 2 / e for o, e in zip(observed, expected))
    dof = len(observed) - 1
    return stat, dof, float(chi2.sf(stat, dof))


def verify_step_chi2(p: torch.Tensor, q: torch.Tensor, n_samples: int, seed: int = 0,
                     chunk: int = 4096) -> tuple[float, int, float]:
    """Chi-square test that one accept/resample step turns drafts from q into samples of p.

    ``p, q`` (vocab,): draws ``n_samples`` drafts from q, runs :func:`verify_drafts` with K = 1 on
    them (``chunk`` rows at a time: each row holds a vocab-sized residual), and compares the
    emitted tokens with p over the bins of expected count >= 5 (the rest pooled in one bin)."""
    g = torch.Generator().manual_seed(seed)
    V = p.shape[-1]
    counts = torch.zeros(V, dtype=torch.float64)
    for start in range(0, n_samples, chunk):
        B = min(chunk, n_samples - start)
        d = torch.multinomial(q, B, replacement=True, generator=g).view(B, 1)
        n, nxt = verify_drafts(p.expand(B, 2, V), q.expand(B, 1, V), d, generator=g)
        counts += torch.bincount(torch.where(n > 0, d[:, 0], nxt), minlength=V).double()
    return _binned_chi2(counts, p.double() * n_samples)


def _binned_chi2(counts: torch.Tensor, expected: torch.Tensor) -> tuple[float, int, float]:
    """Pearson's chi-square over the bins with expected count >= 5, the others pooled in one."""
    big = expected >= 5
    obs = counts[big].tolist()
    exp = expected[big].tolist()
    if float(expected[~big].sum()) > 1e-9:
        obs.append(float(counts[~big].sum()))
        exp.append(float(expected[~big].sum()))
    return _chi2(obs, exp)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="more prompts, longer generations, more repeats")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from labkit import seed_everything
    from labkit.plots import plt, savefig

    seed_everything(args.seed)
    t_start, c_start = time.perf_counter(), time.process_time()
    failures: list[str] = []
    target, draft = load_models()
    n_prompts, new_tokens, repeats = (8, 128, 3) if args.full else (3, 48, 1)
    ks = (1, 2, 4, 8)
    prompts = val_prompts(n_prompts, 16, seed=args.seed)
    print(f"target: curriculum 'main' ({gpt.count_params(target.config):,} params, {target.config.n_layer} layers, "
          f"d_model {target.config.d_model}); draft: 'draft' ({gpt.count_params(draft.config):,} params, "
          f"{draft.config.n_layer} layers, d_model {draft.config.d_model}); same 4,096-token vocabulary")

    print(f"\n1. Temperature 0: speculative tokens vs the target's greedy tokens ({n_prompts} prompts x {new_tokens}):")
    print("| k | identical to target.generate(temperature=0) | tokens per target pass |")
    print("|---|---|---|")
    refs = [target.generate(pr, new_tokens, temperature=0.0) for pr in prompts]
    for k in (1, 4, 8):
        same, tpr = True, []
        for pr, ref in zip(prompts, refs):
            out, s = speculative_generate(target, draft, pr, new_tokens, k=k)
            same &= torch.equal(out, ref)
            tpr.append(s.tokens_per_round)
        print(f"| {k} | {'yes' if same else 'NO'} | {sum(tpr) / len(tpr):.2f} |")
        if not same:
            failures.append(f"greedy mismatch at k={k}")

    print("\n2. One accept/resample step on the real models' distributions (temperature 1, first token after a "
          "prompt), 20,000 drafts, chi-square vs the target's p (threshold p-value > 0.001):")
    with torch.no_grad():
        pr = prompts[0]
        p = probs_from_logits(target(pr, logits_to_keep=1)[0][0, -1], 1.0)
        q = probs_from_logits(draft(pr, logits_to_keep=1)[0][0, -1], 1.0)
    beta = float(torch.minimum(p, q).sum())
    stat, dof, pval = verify_step_chi2(p, q, 20_000, seed=args.seed)
    stat_q, dof_q, pval_q = _chi2_draft_only(p, q, 20_000, args.seed)
    exact = torch.minimum(p, q) + (1 - beta) * residual_distribution(p, q)
    print(f"   sum_x min(p, q) = {beta:.3f} (the acceptance probability at this position); "
          f"max |min(p, q) + (1 - β)·residual - p| = {float((exact - p).abs().max()):.1e}")
    if not float((exact - p).abs().max()) < 1e-6:
        failures.append("min(p, q) + (1 - beta) * residual != p")
    print(f"   verify_drafts output vs p: chi2 = {stat:.1f}, dof = {dof}, p-value = {pval:.3f}")
    print(f"   (control) the draft's samples vs p: chi2 = {stat_q:.1f}, dof = {dof_q}, p-value = {pval_q:.2e}")
    if not pval > 1e-3:
        failures.append("verify_drafts chi-square")
    if not pval_q < 1e-3:
        failures.append("control chi-square did not reject the draft's distribution")

    print("\n3. Costs (CPU time per call, 1 thread, context 64, median of repeats, cache cropped after each call):")
    costs = measure_costs(target, draft, ks=ks, steps=40 if args.full else 20, repeats=5 if args.full else 3)
    c = costs["c"]
    print(f"   target decode step {costs['target_step'] * 1e3:.2f} ms, draft decode step "
          f"{costs['draft_step'] * 1e3:.2f} ms -> c = {c:.3f}")
    print("   target pass over k+1 tokens, in target steps: "
          + ", ".join(f"k={k}: {costs[f'verify_{k}']:.2f}" for k in ks))

    for temperature in (0.0, 1.0):
        print(f"\n4. Acceptance and speedup at temperature {temperature:g} ({n_prompts} prompts x {new_tokens} new tokens; "
              "speedup = CPU time of lab 9.1 generate_cached (target alone) / CPU time of speculative_generate):")
        rows = benchmark_speculative(target, draft, prompts, new_tokens, ks, temperature=temperature,
                                     seed=args.seed, repeats=repeats)
        print("| k | α measured | α from Σmin(p,q) | tokens/pass | (1-α^(k+1))/(1-α) | formula speedup "
              "| formula with measured verify cost | measured speedup |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            k, a = r["k"], r["alpha"]
            r["formula"] = expected_speedup(a, k, c)
            r["formula_verify"] = expected_tokens_per_round(a, k) / (c * k + costs[f"verify_{k}"])
            print(f"| {k} | {a:.3f} | {r['alpha_beta']:.3f} | {r['tokens_per_round']:.2f} | "
                  f"{expected_tokens_per_round(a, k):.2f} | {r['formula']:.2f} | {r['formula_verify']:.2f} | "
                  f"{r['speedup']:.2f} |")
        if temperature == 0.0:
            rows_t0 = rows
        else:
            rows_t1 = rows
        for r in rows:
            # the formula assumes independent acceptances; on real text they are correlated, so
            # only a loose agreement is asked of tokens per pass
            if abs(r["tokens_per_round"] - expected_tokens_per_round(r["alpha"], r["k"])) > \
                    0.35 * expected_tokens_per_round(r["alpha"], r["k"]):
                failures.append(f"tokens/pass far from the formula at T={temperature}, k={r['k']}")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for rows, color, name in ((rows_t0, "C0", "T=0"), (rows_t1, "C3", "T=1")):
        kk = [r["k"] for r in rows]
        axes[0].plot(kk, [r["alpha"] for r in rows], "o-", color=color, label=f"α measured, {name}")
        axes[0].plot(kk, [r["tokens_per_round"] for r in rows], "s--", color=color, label=f"tokens/pass, {name}")
        grid = list(range(1, max(kk) + 1))
        a = sum(r["alpha"] for r in rows) / len(rows)
        axes[1].plot(grid, [expected_speedup(a, k, c) for k in grid], "-", color=color, alpha=0.6,
                     label=f"formula, α={a:.2f}, c={c:.2f} ({name})")
        axes[1].plot(kk, [r["speedup"] for r in rows], "o", color=color, label=f"measured ({name})")
    for cc in (0.05, 0.0):
        axes[1].plot(range(1, 9), [expected_speedup(0.6, k, cc) for k in range(1, 9)], ":", color="grey",
                     lw=1)
        axes[1].annotate(f"formula, α=0.6, c={cc}", (8, expected_speedup(0.6, 8, cc)), fontsize=7, color="grey",
                         ha="right", va="bottom")
    axes[0].set_xlabel("k (draft tokens per round)")
    axes[0].set_title("acceptance and tokens per target pass")
    axes[0].legend(fontsize=7)
    axes[1].axhline(1.0, color="black", lw=0.5)
    axes[1].set_xlabel("k")
    axes[1].set_ylabel("speedup over target-only decoding")
    axes[1].set_title("speedup: Leviathan et al.'s formula vs measured (CPU)")
    axes[1].legend(fontsize=7)
    path = savefig(fig, HERE / "figures" / "speedup_vs_k.png")
    print(f"\nwrote {path}")

    from transformers import AutoTokenizer

    from labkit import curriculum_model_path

    tok = AutoTokenizer.from_pretrained(curriculum_model_path("main") / "hf")
    g = torch.Generator().manual_seed(args.seed)
    out, s = speculative_generate(target, draft, prompts[0], 60, k=4, temperature=0.8, generator=g)
    print(f"\nSample (k=4, temperature 0.8, {s.rounds} target passes for {s.new_tokens} tokens, α={s.acceptance_rate:.2f}):")
    print("  " + tok.decode(out[0].tolist(), skip_special_tokens=True).replace("\n", " "))
    print(f"\ntotal self-test time: {time.perf_counter() - t_start:.1f} s wall, {time.process_time() - c_start:.1f} s CPU "
          "(shared machine: wall time depends on load)")
    if failures:
        print("FAILED: " + "; ".join(failures))
        return 1
    print("all checks passed")
    return 0


def _chi2_draft_only(p: torch.Tensor, q: torch.Tensor, n_samples: int, seed: int) -> tuple[float, int, float]:
    """The same chi-square as :func:`verify_step_chi2` on the draft's raw samples (a control: it
    must reject, or the test has no power)."""
    g = torch.Generator().manual_seed(seed + 1)
    d = torch.multinomial(q, n_samples, replacement=True, generator=g)
    return _binned_chi2(torch.bincount(d, minlength=p.shape[-1]).double(), p.double() * n_samples)


if __name__ == "__main__":
    sys.exit(main())

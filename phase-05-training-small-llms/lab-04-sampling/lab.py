# Generated from solution.py by `make labs` (labkit/labgen.py). Fill in the TODOs.
"""Lab 5.4: decoding strategies, from a row of logits to a story.

A language model gives one thing per step: a row of logits over the vocabulary. Everything
else (greedy, sampling, temperature, top-k, top-p, min-p, repetition penalty, beam search,
contrastive search) is a rule for turning those rows into tokens. This lab writes each rule
as a small function and checks it against the one Hugging Face ``generate`` uses.

=====================  =============================================================  ==========================
rule                   what it does to a (B, V) row of logits                          reference
=====================  =============================================================  ==========================
temperature            ``logits / T``: T < 1 sharpens, T > 1 flattens                  Ackley et al. 1985
top-k                  keep the k largest logits (ties at the k-th kept), -inf rest    Fan et al. 2018
top-p (nucleus)        keep the smallest set of tokens whose probability >= p          Holtzman et al. 2020
min-p                  keep tokens with p >= min_p * p_max                             Nguyen et al. 2024
repetition penalty     seen tokens: positive logits / r, negative logits * r           Keskar et al. 2019 (CTRL)
beam search            keep the num_beams best partial sequences by sum of log-probs   HF ``_beam_search``
contrastive search     argmax (1-a) p(v) - a max_j cos(h_v, h_j) over the top-k        Su et al. 2022
=====================  =============================================================  ==========================

Filters are stateless: ``(B, V)`` float logits in, ``(B, V)`` out, removed tokens set to
``-inf``, the input never modified. ``sample_next_token`` composes them in Hugging Face's
order; ``generate``, ``beam_search`` and ``contrastive_search`` drive a model.

A "model" here is anything called as ``model(idx)`` that returns ``(logits, loss)`` (the
Phase 4 ``MiniGPT``) or an object with ``.logits`` (a HF causal LM); contrastive search also
needs the final hidden states, read with a forward hook on ``model.ln_f``.

Run: ``python solution.py`` (50 samples per strategy from the curriculum model, a table of
diversity and quality, and a PNG), ``--full`` for 200 prompts and 100 new tokens.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent

__all__ = [
    "BeamResult",
    "apply_repetition_penalty",
    "apply_temperature",
    "beam_search",
    "contrastive_search",
    "degeneration_penalty",
    "distinct_n",
    "entropy",
    "generate",
    "greedy",
    "mean_logprob",
    "min_p_filter",
    "model_step",
    "multinomial",
    "repetition_rate",
    "sample_next_token",
    "top_k_filter",
    "top_p_filter",
]

NEG_INF = float("-inf")


# ============================================================================ input validation (given)
def check_logits(logits: torch.Tensor, name: str = "logits") -> None:
    """Raise a clear error unless ``logits`` is a (B, V) floating tensor a sampler can use.

    Raises:
        TypeError: not a tensor, or not floating point.
        ValueError: not 2-D, empty, any NaN or +inf, or a row whose every entry is -inf
            (nothing left to sample).
    """
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {logits.dtype}")
    if logits.dim() != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(f"{name} must have shape (B, V) with B, V >= 1, got {tuple(logits.shape)}")
    if torch.isnan(logits).any():
        rows = torch.isnan(logits).any(dim=-1).nonzero().flatten().tolist()
        raise ValueError(f"{name} contain NaN (rows {rows[:5]}): check the model's forward pass, "
                         "a NaN would silently become a random token")
    if torch.isposinf(logits).any():
        raise ValueError(f"{name} contain +inf: softmax of +inf is NaN")
    dead = torch.isneginf(logits).all(dim=-1)
    if dead.any():
        raise ValueError(f"{name}: every token is -inf in rows {dead.nonzero().flatten().tolist()[:5]}, "
                         "there is nothing left to sample")


def _check_positive_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_int(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _check_idx(idx: torch.Tensor, name: str = "idx") -> None:
    if not isinstance(idx, torch.Tensor) or idx.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be an int64 tensor of token ids, got {getattr(idx, 'dtype', type(idx))}")
    if idx.dim() != 2 or idx.shape[0] == 0 or idx.shape[1] == 0:
        raise ValueError(f"{name} must have shape (B, T) with B, T >= 1, got {tuple(idx.shape)}")
    if (idx < 0).any():
        raise ValueError(f"{name} contains negative token ids")


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of ``softmax(logits)`` per row: (B, V) -> (B,) float32.

    ``-inf`` entries contribute 0 (their probability is exactly 0)."""
    check_logits(logits)
    logp = F.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    return -(p * logp.masked_fill(p == 0, 0.0)).sum(dim=-1)


# ============================================================================ picking a token
def greedy(logits: torch.Tensor) -> torch.Tensor:
    """The most likely token per row (the first one on ties, like ``torch.argmax``).

    Args:
        logits: (B, V) float.

    Returns:
        (B,) int64 token ids.

    Raises:
        TypeError / ValueError: see ``check_logits``.
    """
    check_logits(logits)
    # TODO(1): argmax over the vocabulary axis (easy, ~2 min)
    raise NotImplementedError("TODO(1)")


def multinomial(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One sample per row from ``softmax(logits)`` (ancestral sampling).

    Args:
        logits: (B, V) float; ``-inf`` entries are never drawn.
        generator: a ``torch.Generator`` for reproducible draws (same seed, same tokens).

    Returns:
        (B,) int64 token ids.

    Raises:
        TypeError / ValueError: see ``check_logits``.
    """
    check_logits(logits)
    # TODO(2): softmax in float32, torch.multinomial with one sample per row and the generator (easy, ~5 min)
    raise NotImplementedError("TODO(2)")


# ============================================================================ logits warpers
def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide the logits by ``temperature`` (the same as HF ``TemperatureLogitsWarper``).

    ``softmax(z / T)``: T -> 0 approaches greedy, T = 1 leaves the model's distribution, T > 1
    flattens it towards uniform (over the tokens that are not -inf).

    Args:
        logits: (B, V) float.  temperature: a finite float > 0.

    Returns:
        (B, V), same dtype; ``-inf`` stays ``-inf``.

    Raises:
        ValueError: temperature <= 0, NaN or inf (use ``greedy`` for T = 0); bad logits.
    """
    check_logits(logits)
    temperature = _check_positive_float(temperature, "temperature")
    # TODO(3): one division, returning a new tensor (easy, ~2 min)
    raise NotImplementedError("TODO(3)")


def top_k_filter(logits: torch.Tensor, top_k: int, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Keep the ``top_k`` largest logits per row, set the rest to ``-inf`` (HF ``TopKLogitsWarper``).

    Ties at the k-th value are all kept (a row may keep more than k tokens), and
    ``max(top_k, min_tokens_to_keep)`` tokens are kept, capped at V.

    Args:
        logits: (B, V) float.  top_k: int >= 1.  min_tokens_to_keep: int >= 1.

    Returns:
        (B, V) with removed entries ``-inf``.

    Raises:
        ValueError: top_k < 1 or not an int; bad logits.
    """
    check_logits(logits)
    top_k = _check_int(top_k, "top_k", 1)
    min_tokens_to_keep = _check_int(min_tokens_to_keep, "min_tokens_to_keep", 1)
    # TODO(4): k = min(max(top_k, min_tokens_to_keep), V); threshold = the k-th largest value per row (torch.topk); mask everything strictly below it (easy, ~10 min)
    raise NotImplementedError("TODO(4)")


def top_p_filter(logits: torch.Tensor, top_p: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al. 2020; HF ``TopPLogitsWarper``).

    Keep the smallest set of most likely tokens whose total probability is >= ``top_p``;
    always keep at least ``min_tokens_to_keep``. Computed as HF does: sort ascending, remove
    the tokens whose cumulative probability (from the least likely up, including themselves)
    is <= 1 - top_p. With top_p = 1 only tokens of probability exactly 0 go.

    Args:
        logits: (B, V) float.  top_p: float in (0, 1].  min_tokens_to_keep: int >= 1.

    Returns:
        (B, V) with removed entries ``-inf``.

    Raises:
        ValueError: top_p outside (0, 1] or NaN; bad logits.
    """
    check_logits(logits)
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be a float in (0, 1], got {top_p!r}")
    min_tokens_to_keep = _check_int(min_tokens_to_keep, "min_tokens_to_keep", 1)
    # TODO(5): sort ascending, softmax + cumsum; remove where cumsum <= 1 - top_p; never remove the last min_tokens_to_keep sorted positions; scatter the mask back to vocabulary order (medium, ~20 min)
    raise NotImplementedError("TODO(5)")


def min_p_filter(logits: torch.Tensor, min_p: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Min-p filtering (Nguyen et al. 2024; HF ``MinPLogitsWarper``).

    Remove tokens whose probability is below ``min_p * p_max`` of their row: the cut moves
    with the model's confidence (strict when one token dominates, loose when many are close).
    The ``min_tokens_to_keep`` most likely tokens always stay. min_p = 0 keeps everything.

    Args:
        logits: (B, V) float.  min_p: float in [0, 1].  min_tokens_to_keep: int >= 1.

    Returns:
        (B, V) with removed entries ``-inf``.

    Raises:
        ValueError: min_p outside [0, 1] or NaN; bad logits.
    """
    check_logits(logits)
    if isinstance(min_p, bool) or not isinstance(min_p, (int, float)) or not 0.0 <= min_p <= 1.0:
        raise ValueError(f"min_p must be a float in [0, 1], got {min_p!r}")
    min_tokens_to_keep = _check_int(min_tokens_to_keep, "min_tokens_to_keep", 1)
    # TODO(6): probs = softmax; remove probs < min_p * row max; un-remove the top min_tokens_to_keep (topk indices) (easy, ~10 min)
    raise NotImplementedError("TODO(6)")


def apply_repetition_penalty(logits: torch.Tensor, input_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty (Keskar et al. 2019; HF ``RepetitionPenaltyLogitsProcessor``).

    For every token id that occurs in the row's ``input_ids`` (prompt included, counted once
    however often it occurs): a positive logit is divided by ``penalty``, a negative one is
    multiplied by it, so ``penalty > 1`` always makes a seen token less likely and
    ``penalty < 1`` more likely. Dividing a negative logit would *raise* it: that is the bug
    this sign rule avoids.

    Args:
        logits: (B, V) float.
        input_ids: (B, T) int64, ids in [0, V) (T may be 0).
        penalty: finite float > 0 (1.0 = no change).

    Returns:
        (B, V), the input unchanged in place.

    Raises:
        ValueError: penalty <= 0 or NaN; input_ids of the wrong shape or out of range; bad logits.
    """
    check_logits(logits)
    penalty = _check_positive_float(penalty, "penalty")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError("input_ids must be an integer tensor of token ids")
    if input_ids.dim() != 2 or input_ids.shape[0] != logits.shape[0]:
        raise ValueError(f"input_ids must have shape (B={logits.shape[0]}, T), got {tuple(input_ids.shape)}")
    if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= logits.shape[1]):
        raise ValueError(f"input_ids must be in [0, {logits.shape[1]}), got range "
                         f"[{input_ids.min().item()}, {input_ids.max().item()}]")
    # TODO(7): gather the logits of the seen ids, where(score < 0, score * penalty, score / penalty), scatter back into a copy (medium, ~10 min)
    raise NotImplementedError("TODO(7)")


def sample_next_token(logits: torch.Tensor, input_ids: torch.Tensor | None = None, *, do_sample: bool = True,
                      temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                      min_p: float | None = None, repetition_penalty: float | None = None,
                      min_tokens_to_keep: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """One decoding step: processors then warpers then a pick, in Hugging Face's order.

    repetition penalty (needs ``input_ids``) -> if ``do_sample``: temperature -> top-k ->
    top-p -> min-p -> multinomial; else greedy on the penalized logits (warpers do not change
    the argmax, so HF skips them).

    Args:
        logits: (B, V) float, the last position's logits.
        input_ids: (B, T) int64 context (for the repetition penalty).
        do_sample: sample (True) or argmax (False).
        temperature, top_k, top_p, min_p: as in the filters; ``None`` (or T = 1) skips one.
        repetition_penalty: ``None`` or 1.0 to skip.
        min_tokens_to_keep: passed to the three filters.
        generator: for reproducible samples.

    Returns:
        (B,) int64 token ids.

    Raises:
        ValueError: as the functions it calls; a repetition penalty without input_ids.
    """
    check_logits(logits)
    if repetition_penalty is not None and repetition_penalty != 1.0 and input_ids is None:
        raise ValueError("repetition_penalty needs input_ids (the context whose tokens it penalizes)")
    # TODO(8): apply the steps that are switched on, in the order of the docstring, then greedy or multinomial (easy, ~10 min)
    raise NotImplementedError("TODO(8)")


# ============================================================================ running a model (given)
def _logits_of(out: Any) -> torch.Tensor:
    if isinstance(out, tuple):
        return out[0]
    if hasattr(out, "logits"):
        return out.logits
    return out


def model_step(model: Any, idx: torch.Tensor, return_hidden: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run ``model`` on ``idx`` (B, T) and return the last position's logits (B, V) float32.

    With a ``model.ln_f`` module (MiniGPT), a forward hook records the final normalized hidden
    states (B, T, d_model) and hands only the last position to the LM head, so the head's
    (T x V) matmul is done for one position instead of T. ``return_hidden=True`` returns those
    hidden states (what contrastive search compares); it needs ``ln_f``.

    No KV cache: every call re-reads the whole context (Phase 9 adds the cache).

    Raises:
        TypeError: ``return_hidden`` on a model without ``ln_f``.
    """
    ln_f = getattr(model, "ln_f", None)
    if ln_f is None:
        if return_hidden:
            raise TypeError("model_step(return_hidden=True) needs a model with an `ln_f` module (MiniGPT)")
        return _logits_of(model(idx))[:, -1, :].float(), None
    seen: dict[str, torch.Tensor] = {}

    def hook(module: Any, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        seen["hidden"] = output
        return output[:, -1:, :]

    handle = ln_f.register_forward_hook(hook)
    try:
        logits = _logits_of(model(idx))
    finally:
        handle.remove()
    return logits[:, -1, :].float(), (seen["hidden"] if return_hidden else None)


def _check_generation_args(idx: torch.Tensor, max_new_tokens: int, eos_token_id: int | None,
                           pad_token_id: int | None) -> int | None:
    _check_idx(idx)
    _check_int(max_new_tokens, "max_new_tokens", 0)
    if eos_token_id is not None:
        _check_int(eos_token_id, "eos_token_id", 0)
    if pad_token_id is not None:
        _check_int(pad_token_id, "pad_token_id", 0)
    return pad_token_id if pad_token_id is not None else eos_token_id


# ============================================================================ decoding loops
@torch.no_grad()
def generate(model: Any, idx: torch.Tensor, max_new_tokens: int, *, eos_token_id: int | None = None,
             pad_token_id: int | None = None, **sampling: Any) -> torch.Tensor:
    """Autoregressive decoding with ``sample_next_token`` at every step.

    Each step: logits of the last position (``model_step``), ``sample_next_token(logits, seq,
    **sampling)``, append. A row that has produced ``eos_token_id`` is finished: from then on it
    gets ``pad_token_id`` (default: the eos id). The loop stops early when every row is done,
    so the output can be shorter than T + max_new_tokens (as HF ``generate``).

    Args:
        model: MiniGPT (or any model returning ``(logits, loss)`` / ``.logits``), in eval mode.
        idx: (B, T) int64 prompts (all the same length: no padding).
        max_new_tokens: int >= 0.
        eos_token_id, pad_token_id: optional ints.
        **sampling: keyword arguments of ``sample_next_token`` (do_sample, temperature, top_k,
            top_p, min_p, repetition_penalty, generator, ...).

    Returns:
        (B, T + n) int64, n <= max_new_tokens.

    Raises:
        TypeError / ValueError: bad idx, max_new_tokens or token ids; what the steps raise.
    """
    pad = _check_generation_args(idx, max_new_tokens, eos_token_id, pad_token_id)
    # TODO(9): loop max_new_tokens times: logits = model_step, pick with sample_next_token(logits, idx, **sampling); finished rows get pad; append; update finished; stop when all are finished (medium, ~15 min)
    raise NotImplementedError("TODO(9)")


@dataclass
class BeamResult:
    """Finished hypotheses of one prompt, best first.

    Attributes:
        sequences: list of 1-D int64 tensors (prompt + generated tokens, eos included).
        scores: (n,) float32, ``sum of log-probs / (generated length ** length_penalty)``.
    """

    sequences: list[torch.Tensor]
    scores: torch.Tensor


@torch.no_grad()
def beam_search(model: Any, idx: torch.Tensor, num_beams: int, max_new_tokens: int, *,
                length_penalty: float = 1.0, early_stopping: bool | str = False,
                eos_token_id: int | None = None, num_return_sequences: int = 1) -> list[BeamResult]:
    """Beam search, token for token the algorithm of HF ``generate(num_beams=K, do_sample=False)``.

    Per prompt, K running beams (at the start one beam: the others score -1e9 so the first step
    does not pick K copies of the same token). Each step:

    1. log-softmax of each beam's next-token logits + the beam's running score -> K*V candidates;
       keep the best 2K (enough that K survive even if K of them end in eos).
    2. A candidate "finishes" if its token is eos or the sequence reached ``max_new_tokens``.
       Only the finishing candidates ranked among the best K may enter the finished list, with
       score ``sum_logprobs / n_generated ** length_penalty`` (n_generated counts the eos);
       the list keeps the K best.
    3. The K best non-finished candidates are the next running beams.
    4. Stop when every candidate hit max length; when ``early_stopping is True`` and K
       hypotheses are finished; or (False / "never") when K are finished and the best running
       beam cannot beat the worst finished one: its score divided by ``n ** length_penalty``,
       n = tokens generated so far (``"never"`` with length_penalty > 0: n = max_new_tokens).

    ``length_penalty > 0`` favours longer sequences (the sum of log-probs is negative and the
    divisor grows), ``< 0`` shorter ones.

    Args:
        model: in eval mode.  idx: (B, T) int64 prompts; each row is searched on its own
            (the B*K beams go through the model in one call).
        num_beams: K >= 1.  max_new_tokens: >= 1.
        length_penalty: float.  early_stopping: True, False or "never".
        eos_token_id: optional int.  num_return_sequences: 1 <= n <= K.

    Returns:
        one ``BeamResult`` per prompt row.

    Raises:
        ValueError: num_beams < 1, num_return_sequences not in [1, num_beams], bad
            early_stopping, max_new_tokens < 1, bad idx.
    """
    _check_generation_args(idx, max_new_tokens, eos_token_id, None)
    _check_int(num_beams, "num_beams", 1)
    _check_int(max_new_tokens, "max_new_tokens", 1)
    _check_int(num_return_sequences, "num_return_sequences", 1)
    if num_return_sequences > num_beams:
        raise ValueError(f"num_return_sequences ({num_return_sequences}) must be <= num_beams ({num_beams})")
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)) \
            or not math.isfinite(length_penalty):
        raise ValueError(f"length_penalty must be a finite float, got {length_penalty!r}")
    # TODO(10): the loop of the docstring, batched over prompts: running beams (B, K, T) and scores (B, K) as tensors, one model call on B*K rows per step; per prompt, a python list of finished (score, sequence), K best, and a done flag; at the end the num_return_sequences best of each prompt as a BeamResult (hard, ~60 min)
    raise NotImplementedError("TODO(10)")


def degeneration_penalty(context_hidden: torch.Tensor, candidate_hidden: torch.Tensor) -> torch.Tensor:
    """Su et al. 2022's degeneration penalty: for each candidate, the largest cosine similarity
    between its hidden state and the hidden state of any context position.

    Args:
        context_hidden: (B, T, d) float, hidden states of the tokens so far.
        candidate_hidden: (B, k, d) float, hidden state of each of k candidate next tokens.

    Returns:
        (B, k) float, values in [-1, 1].

    Raises:
        ValueError: shapes that do not line up.
    """
    if context_hidden.dim() != 3 or candidate_hidden.dim() != 3 or \
            context_hidden.shape[0] != candidate_hidden.shape[0] or \
            context_hidden.shape[2] != candidate_hidden.shape[2]:
        raise ValueError(f"need context (B, T, d) and candidates (B, k, d), got {tuple(context_hidden.shape)} "
                         f"and {tuple(candidate_hidden.shape)}")
    # TODO(11): L2-normalize both along d, batched matmul -> (B, k, T) cosines, max over T (easy, ~10 min)
    raise NotImplementedError("TODO(11)")


@torch.no_grad()
def contrastive_search(model: Any, idx: torch.Tensor, max_new_tokens: int, *, top_k: int = 4,
                       penalty_alpha: float = 0.6, eos_token_id: int | None = None,
                       pad_token_id: int | None = None) -> torch.Tensor:
    """Contrastive search (Su et al. 2022, "A Contrastive Framework for Neural Text Generation").

    Each step: the k most likely next tokens ``v`` (probabilities ``p(v)`` from the softmax of the
    last logits); run the model on context + v to get v's last hidden state ``h_v``; pick

        argmax_v  (1 - penalty_alpha) * p(v) - penalty_alpha * max_j cos(h_v, h_j)

    over the hidden states ``h_j`` of every context token (prompt included). The penalty
    punishes a token that would put the model back in a state it has been in (the cause of
    greedy's loops). penalty_alpha = 0 is greedy; top_k = 1 is greedy too. The candidate run
    also gives the next step's logits, so each step costs one forward pass on (B*k) rows.

    Args:
        model: a model with ``ln_f`` (MiniGPT), in eval mode.  idx: (B, T) int64 prompts.
        max_new_tokens: int >= 0.  top_k: int >= 1.  penalty_alpha: float in [0, 1].
        eos_token_id, pad_token_id: as in ``generate``.

    Returns:
        (B, T + n) int64, n <= max_new_tokens.

    Raises:
        ValueError: top_k < 1, penalty_alpha outside [0, 1]; bad idx.
        TypeError: a model without ``ln_f``.
    """
    pad = _check_generation_args(idx, max_new_tokens, eos_token_id, pad_token_id)
    _check_int(top_k, "top_k", 1)
    if isinstance(penalty_alpha, bool) or not isinstance(penalty_alpha, (int, float)) \
            or not 0.0 <= penalty_alpha <= 1.0:
        raise ValueError(f"penalty_alpha must be a float in [0, 1], got {penalty_alpha!r}")
    seq = idx.long()
    logits, context = model_step(model, seq, return_hidden=True)          # (B, V), (B, T, d)
    # TODO(12): loop: top-k of softmax(logits); run model_step(return_hidden) on (B*k) sequences context+candidate; score = (1-a)*p - a*degeneration_penalty(context, h_cand); pick argmax per row; keep that candidate's hidden (append to context) and its logits for the next step; eos/pad as in generate (hard, ~40 min)
    raise NotImplementedError("TODO(12)")


# ============================================================================ measuring samples
def _as_lists(sequences: Sequence[Sequence[int]]) -> list[list[int]]:
    return [s.tolist() if isinstance(s, torch.Tensor) else list(s) for s in sequences]


def distinct_n(sequences: Sequence[Sequence[int]], n: int) -> float:
    """Corpus-level distinct-n (Li et al. 2016): unique n-grams / total n-grams over all sequences.

    1.0 means no n-gram appears twice anywhere; a degenerate sampler that repeats itself, or
    repeats the other samples, scores low. Sequences shorter than n contribute nothing.

    Args:
        sequences: lists (or 1-D tensors) of token ids.  n: int >= 1.

    Returns:
        float in [0, 1]; 0.0 when there is no n-gram at all.

    Raises:
        ValueError: n < 1.
    """
    _check_int(n, "n", 1)
    # TODO(13): every n-gram of every sequence (_as_lists turns tensors into lists) as a tuple; unique / total (easy, ~10 min)
    raise NotImplementedError("TODO(13)")


def repetition_rate(sequences: Sequence[Sequence[int]], n: int = 4) -> float:
    """Mean over sequences of seq-rep-n (Welleck et al. 2019): within one sequence, the fraction
    of its n-grams that already occurred earlier in it, i.e. ``1 - unique / total``.

    Greedy decoding's loops ("the dog was happy. the dog was happy. ...") score near 1.

    Args:
        sequences: lists of token ids (usually the generated part only).  n: int >= 1.

    Returns:
        float in [0, 1]; sequences with no n-gram are skipped (0.0 when all are).

    Raises:
        ValueError: n < 1.
    """
    _check_int(n, "n", 1)
    # TODO(14): per sequence with at least one n-gram: 1 - len(set(grams)) / len(grams); average (easy, ~5 min)
    raise NotImplementedError("TODO(14)")


@torch.no_grad()
def mean_logprob(model: Any, sequences: Sequence[torch.Tensor], prompt_len: int) -> torch.Tensor:
    """Per sequence, the mean log-probability (nats/token) of its generated tokens under the model
    at temperature 1: ``mean_t log p(x_t | x_<t)`` for t >= prompt_len. A proxy for quality as the
    model itself judges it (fluent but possibly dull text scores high).

    Args:
        model: returns ``(logits, loss)`` or ``.logits`` for (B, T) input.
        sequences: 1-D int64 tensors, prompt + continuation, each longer than prompt_len.
        prompt_len: the number of prompt tokens at the start of every sequence (>= 1).

    Returns:
        (N,) float32, one value per sequence (<= 0).

    Raises:
        ValueError: a sequence with no generated token; prompt_len < 1.
    """
    _check_int(prompt_len, "prompt_len", 1)
    for s in sequences:
        if s.dim() != 1 or s.shape[0] <= prompt_len:
            raise ValueError(f"every sequence needs more than prompt_len={prompt_len} tokens, got {tuple(s.shape)}")
    # TODO(15): per sequence: logits of seq[None, :-1], log_softmax, gather the next tokens, average the positions >= prompt_len - 1 of that shifted view (easy, ~15 min)
    raise NotImplementedError("TODO(15)")


# ============================================================================ the curriculum model (given)
def load_model(name: str = "main", allow_random: bool = True, hf_path: str | Path | None = None
               ) -> tuple[Any, Any, Any, str]:
    """``(minigpt, hf_model, tokenizer, description)`` for the curriculum model's HF export.

    The MiniGPT is built from the HF export with the Phase 4 lab's ``config_from_hf`` and
    ``load_hf_llama_weights``. If ``labkit.curriculum_model_path`` does not exist yet and ``allow_random``,
    a random tiny Llama stands in (tokenizer None) and the description says so. ``hf_path``: any
    local HF Llama folder (``save_pretrained`` output) instead of the curriculum model.
    """
    from transformers.utils import logging as hf_logging

    import labkit
    from labkit import load_lab

    hf_logging.set_verbosity_error()
    gpt = load_lab("phase-04-attention-transformers/lab-04-mini-transformer")
    curriculum_model_path = getattr(labkit, "curriculum_model_path", None)
    if curriculum_model_path is None:
        try:
            from labkit.curriculum import curriculum_model_path
        except ImportError:
            if not allow_random:
                raise
    if hf_path is not None or curriculum_model_path is not None:
        from transformers import AutoTokenizer, LlamaForCausalLM

        folder = Path(hf_path) if hf_path is not None else Path(curriculum_model_path(name)) / "hf"
        hf = LlamaForCausalLM.from_pretrained(folder).eval()
        tok = AutoTokenizer.from_pretrained(folder)
        desc = f"HF model at {folder}" if hf_path is not None else f"curriculum model '{name}'"
    else:
        hf, tok = random_tiny_llama(), None
        desc = "RANDOM tiny Llama (labkit.curriculum_model_path not available yet)"
    ours = gpt.load_hf_llama_weights(gpt.MiniGPT(gpt.config_from_hf(hf.config)), hf).eval()
    return ours, hf, tok, desc


def random_tiny_llama(seed: int = 0, vocab_size: int = 97) -> Any:
    """A random 2-layer LlamaForCausalLM (init std 0.2 so its next-token distributions are peaked)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


def tinystories_prompts(tokenizer: Any, n: int, n_tokens: int, vocab_size: int, seed: int = 0) -> torch.Tensor:
    """(n, n_tokens) int64 prompts: a document separator (the tokenizer's bos, else its eos: the
    curriculum model saw ``<|endoftext|>`` before every training story) and then the first tokens of
    ``n`` TinyStories validation paragraphs; random ids when ``tokenizer`` is None."""
    if tokenizer is None:
        g = torch.Generator().manual_seed(seed)
        return torch.randint(3, vocab_size, (n, n_tokens), generator=g)
    from labkit import read_text

    paragraphs = [p.strip() for p in read_text("tinystories", "valid_prefix_794k.txt").split("\n\n")]
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    head = [] if start is None else [start]
    rows = []
    for p in paragraphs:
        ids = head + tokenizer(p, add_special_tokens=False)["input_ids"]
        if len(ids) >= n_tokens + 10:
            rows.append(ids[:n_tokens])
        if len(rows) == n:
            break
    if len(rows) < n:
        raise ValueError(f"only {len(rows)} TinyStories paragraphs have {n_tokens + 10} tokens")
    return torch.tensor(rows, dtype=torch.int64)


# ============================================================================ self-test
def strategies(eos: int | None) -> dict[str, dict[str, Any]]:
    """The strategies the self-test compares: name -> {"kind": ..., keyword arguments}."""
    return {
        "greedy": dict(kind="generate", do_sample=False),
        "multinomial (T=1)": dict(kind="generate"),
        "temperature 0.7": dict(kind="generate", temperature=0.7),
        "temperature 1.5": dict(kind="generate", temperature=1.5),
        "top-k 20": dict(kind="generate", top_k=20),
        "top-p 0.9": dict(kind="generate", top_p=0.9),
        "min-p 0.1": dict(kind="generate", min_p=0.1),
        "greedy + rep. penalty 1.3": dict(kind="generate", do_sample=False, repetition_penalty=1.3),
        "beam search (4 beams)": dict(kind="beam", num_beams=4),
        "contrastive (k=4, a=0.6)": dict(kind="contrastive", top_k=4, penalty_alpha=0.6),
    }


def run_strategy(model: Any, prompts: torch.Tensor, max_new_tokens: int, eos: int | None, spec: dict[str, Any],
                 seed: int) -> list[torch.Tensor]:
    """Decode every prompt row with one strategy; returns full sequences (prompt + continuation)."""
    kw = {k: v for k, v in spec.items() if k != "kind"}
    if spec["kind"] == "beam":
        res = beam_search(model, prompts, kw["num_beams"], max_new_tokens, eos_token_id=eos)
        return [r.sequences[0] for r in res]
    if spec["kind"] == "contrastive":
        out = contrastive_search(model, prompts, max_new_tokens, eos_token_id=eos, **kw)
    else:
        g = torch.Generator().manual_seed(seed)
        out = generate(model, prompts, max_new_tokens, eos_token_id=eos, generator=g, **kw)
    rows = []
    for r in out:
        if eos is not None and (r[prompts.shape[1]:] == eos).any():     # cut after the first eos
            first = int((r[prompts.shape[1]:] == eos).nonzero()[0]) + prompts.shape[1]
            r = r[: first + 1]
        rows.append(r)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="200 prompts, 100 new tokens")
    ap.add_argument("--prompts", type=int, default=None, help="number of prompts = samples per strategy (50)")
    ap.add_argument("--new-tokens", type=int, default=None, help="new tokens per sample (48)")
    ap.add_argument("--hf-model", default=None, help="a local HF Llama folder instead of the curriculum model")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from labkit import seed_everything
    from labkit.plots import plt, savefig

    seed_everything(args.seed)
    t_start, c_start = time.perf_counter(), time.process_time()
    n_prompts = args.prompts or (200 if args.full else 50)
    new_tokens = args.new_tokens or (100 if args.full else 48)
    prompt_tokens = 8
    model, hf, tok, desc = load_model(hf_path=args.hf_model)
    eos = hf.config.eos_token_id if isinstance(hf.config.eos_token_id, int) else None
    print(f"Model: {desc}; vocab {hf.config.vocab_size}, {sum(p.numel() for p in model.parameters()):,} params")
    prompts = tinystories_prompts(tok, n_prompts, prompt_tokens, hf.config.vocab_size, seed=args.seed)
    print(f"{n_prompts} prompts of {prompt_tokens} tokens (TinyStories validation), up to {new_tokens} new tokens, "
          f"eos id {eos}, seed {args.seed}\n")
    failures: list[str] = []

    # entropy of one real next-token distribution at several temperatures
    logits, _ = model_step(model, prompts[:1])
    temps = (0.5, 0.7, 1.0, 1.5, 2.0)
    ents = [entropy(apply_temperature(logits, t)).item() for t in temps]
    print("Next-token entropy after the first prompt, by temperature (nats; ln V = "
          f"{math.log(logits.shape[-1]):.2f}):")
    print("| T | " + " | ".join(f"{t}" for t in temps) + " |")
    print("|---|" + "---|" * len(temps))
    print("| entropy | " + " | ".join(f"{e:.3f}" for e in ents) + " |\n")
    if not all(a < b for a, b in zip(ents, ents[1:])):
        failures.append("entropy does not rise with temperature")

    rows, texts = {}, {}
    header = "| strategy | distinct-1 | distinct-2 | distinct-3 | rep-4 | mean log-prob | mean length | time (s) |"
    print(header)
    print("|---|---|---|---|---|---|---|---|")
    for name, spec in strategies(eos).items():
        t0 = time.perf_counter()
        seqs = run_strategy(model, prompts, new_tokens, eos, spec, args.seed)
        dt = time.perf_counter() - t0
        gen = [s[prompt_tokens:].tolist() for s in seqs]
        lp = mean_logprob(model, seqs, prompt_tokens).mean().item()
        d = [distinct_n(gen, n) for n in (1, 2, 3)]
        rep = repetition_rate(gen, 4)
        length = sum(map(len, gen)) / len(gen)
        rows[name] = dict(d1=d[0], d2=d[1], d3=d[2], rep=rep, lp=lp, length=length)
        print(f"| {name} | {d[0]:.3f} | {d[1]:.3f} | {d[2]:.3f} | {rep:.3f} | {lp:.3f} | {length:.1f} | {dt:.1f} |")
        if tok is not None:
            texts[name] = tok.decode(seqs[0].tolist(), skip_special_tokens=False)

    again = run_strategy(model, prompts[:5], new_tokens, eos, strategies(eos)["greedy"], args.seed + 1)
    first = run_strategy(model, prompts[:5], new_tokens, eos, strategies(eos)["greedy"], args.seed)
    if not all(torch.equal(a, b) for a, b in zip(first, again)):
        failures.append("greedy is not deterministic")
    if not rows["multinomial (T=1)"]["d2"] > rows["greedy"]["d2"]:
        failures.append("multinomial is not more diverse (distinct-2) than greedy")
    if not rows["greedy"]["lp"] > rows["multinomial (T=1)"]["lp"]:
        failures.append("greedy text is not more likely under the model than multinomial samples")
    if not rows["temperature 1.5"]["lp"] < rows["temperature 0.7"]["lp"]:
        failures.append("T=1.5 samples are not less likely than T=0.7 samples")

    if texts:
        print("\nFirst prompt, one continuation per strategy:")
        for name, text in texts.items():
            print(f"  [{name}] {text!r}")

    fig, ax = plt.subplots(figsize=(7, 4.8))
    for i, (name, r) in enumerate(rows.items()):
        ax.scatter(r["d2"], r["lp"], color=f"C{i}", s=40)
        ax.annotate(name, (r["d2"], r["lp"]), textcoords="offset points", xytext=(5, 3), fontsize=8)
    ax.set_xlabel("diversity: distinct-2 over the samples")
    ax.set_ylabel("quality proxy: mean log-prob under the model (nats/token)")
    ax.set_title(f"Decoding strategies, {n_prompts} samples each")
    ax.grid(alpha=0.3)
    path = savefig(fig, HERE / "figures" / "diversity_vs_quality.png")
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

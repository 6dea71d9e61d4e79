# Generated from solution.py by `make labs` (labkit/labgen.py). Fill in the TODOs.
"""Lab 8.2: an MT-Bench-style LLM judge whose biases are measured, and ratings with error bars.

The pieces, in the order a judged evaluation uses them:

    judge prompts (the mirror's MT-Bench ``judge_prompts.jsonl``) -> messages -> any
    OpenAI-compatible endpoint (the real ``openai`` client) -> raw judgment text
    -> verdict parsing ("[[A]]" / "[[B]]" / "[[C]]", "Rating: [[x]]"; an explicit policy for
       output that has no verdict) -> swap-position double judging ("inconsistent" labelled)
    -> position-bias and consistency rates, a length-controlled win rate
    -> Elo (online, K-factor) and Bradley-Terry (maximum likelihood) ratings with bootstrap CIs.

Three judges are studied:

- a **simulated judge** with a planted position bias ``b`` (on two equally good answers it picks
  the first one with probability 0.5 + b) and a planted length bias (a logistic bonus per unit of
  log length ratio). The planted sizes are known, so the measured biases can be checked against
  them, and swap-averaging / length control can be shown to undo them;
- **real GPT-4 and gpt-3.5-turbo judgments** from FastChat's original Vicuna evaluation
  (``vicuna-judgments`` in the mirror: 80 questions, 4 models each judged against
  vicuna-13b, scores 1-10 for both answers). Each pair was judged in ONE order only (vicuna is
  always Assistant 2), so position consistency cannot be measured on it; what the data does
  allow: gpt-3.5-turbo judging vicuna against *its own identical answer* (any non-tie there is
  pure position bias), score difference vs length difference (verbosity bias), the
  length-controlled win rate, and GPT-4 vs gpt-3.5 agreement;
- the **curriculum model** (1.8M parameters, TinyStories) behind ``labkit.llm_server``. It
  cannot follow a judging instruction; running it shows what the error policy and the
  consistency numbers look like when the judge is useless.

Other labs use this one by path::

    judge_lab = load_lab("phase-08-evaluation-safety/lab-02-llm-judge")
    judge = judge_lab.Judge(openai_client, model="gpt-4o")
    judge.pairwise_swap(question, answer_a, answer_b).final   # "A" | "B" | "tie" | "inconsistent" | "error"
    judge_lab.bradley_terry(battles)                          # {model: rating} on the Elo scale

Run: ``python solution.py`` (self-test: simulations, the real judgments, a tiny curriculum-model
judge run; under a minute on one CPU core), ``python solution.py --no-llm`` (skip the model).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent

VERDICTS = ("A", "B", "tie", "error")
SWAP_VERDICTS = ("A", "B", "tie", "inconsistent", "error")
ELO_SCALE, ELO_BASE, ELO_INIT = 400.0, 10.0, 1000.0

# The vicuna evaluation: four models, each judged (as Assistant 1) against vicuna-13b (Assistant 2).
VICUNA = "vicuna-13b-20230322-new-hp-fp16"
VICUNA_OPPONENTS = ("alpaca-13b", "bard", "gpt35", "llama-13b")
_GPT4_FILE = {"alpaca-13b": "alpaca-13b", "bard": "bard", "gpt35": "gpt35", "llama-13b": "llama"}


# ----------------------------------------------------------------------------------------------
# Data (given)
# ----------------------------------------------------------------------------------------------


def _read_jsonl(dataset: str, file: str) -> list[dict]:
    from labkit import dataset_path

    with open(dataset_path(dataset, file), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_judge_prompts() -> dict[str, dict]:
    """The eight MT-Bench judge prompts (FastChat ``judge_prompts.jsonl``), keyed by name:
    ``pair-v2``, ``pair-math-v1``, ``single-v1``, ``single-math-v1`` and their ``-multi-turn``
    variants. Each has ``system_prompt``, ``prompt_template`` (``str.format`` fields such as
    ``{question}``, ``{answer_a}``, ``{ref_answer_1}``), ``type`` and ``output_format``."""
    return {p["name"]: p for p in _read_jsonl("mt-bench", "judge_prompts.jsonl")}


def load_mt_bench_questions() -> list[dict]:
    """The 80 MT-Bench questions: ``question_id``, ``category``, ``turns`` (two user turns)."""
    return _read_jsonl("mt-bench", "question.jsonl")


@dataclass
class Battle:
    """One judged comparison. ``winner`` is ``"model_a"``, ``"model_b"``, ``"tie"`` or
    ``"error"`` (a judgment without a usable verdict). ``len_a``/``len_b`` are answer lengths in
    characters (0 when unknown); ``score_a``/``score_b`` the judge's 1-10 scores when it gave any."""

    model_a: str
    model_b: str
    winner: str
    question_id: int = -1
    len_a: int = 0
    len_b: int = 0
    score_a: float = float("nan")
    score_b: float = float("nan")


def _score_winner(s1: float, s2: float) -> str:
    # FastChat writes [-1, -1] when it could not parse the reviewer's scores: our "error"
    if s1 < 0 or s2 < 0 or math.isnan(s1) or math.isnan(s2):
        return "error"
    return "model_a" if s1 > s2 else "model_b" if s2 > s1 else "tie"


def load_vicuna_battles(judge: str = "gpt-4", opponent_of_vicuna: str | None = None,
                        self_pair: bool = False) -> list[Battle]:
    """Real pairwise reviews from FastChat's Vicuna evaluation (``vicuna-judgments`` mirror).

    Args:
        judge: ``"gpt-4"`` (gpt-4-0328) or ``"gpt-3.5-turbo"``.
        opponent_of_vicuna: one of :data:`VICUNA_OPPONENTS`, or None for all four.
        self_pair: gpt-3.5-turbo only: vicuna judged against its own identical answers (80 rows),
            a pure position-bias probe.

    Returns: battles with ``model_a`` = the file's Assistant 1 (the opponent), ``model_b`` =
    vicuna (always Assistant 2), winner from the higher score (equal scores: tie; FastChat's
    ``[-1, -1]`` parse failures: error), answer lengths in characters (at least 1, so that log
    length ratios exist: one llama-13b answer is empty).

    Raises: ValueError for an unknown judge or opponent.
    """
    if judge not in ("gpt-4", "gpt-3.5-turbo"):
        raise ValueError(f"judge must be 'gpt-4' or 'gpt-3.5-turbo', got {judge!r}")
    if self_pair:
        if judge != "gpt-3.5-turbo":
            raise ValueError("the vicuna-vs-vicuna self pair exists only for judge='gpt-3.5-turbo'")
        opponents = [VICUNA]
    elif opponent_of_vicuna is None:
        opponents = list(VICUNA_OPPONENTS)
    elif opponent_of_vicuna in VICUNA_OPPONENTS:
        opponents = [opponent_of_vicuna]
    else:
        raise ValueError(f"opponent_of_vicuna must be one of {VICUNA_OPPONENTS}, got {opponent_of_vicuna!r}")
    lengths: dict[str, int] = {}
    for m in [*VICUNA_OPPONENTS, VICUNA]:
        for row in _read_jsonl("vicuna-judgments", f"answer/answer_{m}.jsonl"):
            lengths[row["answer_id"]] = max(1, len(row["text"]))  # llama-13b's answer to q74 is empty
    battles = []
    for opp in opponents:
        if judge == "gpt-4":
            file = f"review/{VICUNA}/review_{_GPT4_FILE[opp]}_{VICUNA}.jsonl"
        else:
            file = f"review/gpt-3.5-turbo_review_{VICUNA}/gpt-3.5-turbo_review_{opp}_{VICUNA}.jsonl"
        for row in _read_jsonl("vicuna-judgments", file):
            s1, s2 = (float(s) for s in row["score"])
            battles.append(Battle(model_a=opp, model_b=VICUNA, winner=_score_winner(s1, s2),
                                  question_id=int(row["question_id"]), len_a=lengths[row["answer1_id"]],
                                  len_b=lengths[row["answer2_id"]], score_a=s1, score_b=s2))
    return battles


# ----------------------------------------------------------------------------------------------
# Prompts and verdict parsing
# ----------------------------------------------------------------------------------------------


def build_messages(template: dict, system_prompt: str | None = None, **fields: str) -> list[dict]:
    """Chat messages for one judgment: the template's system prompt (or ``system_prompt``, e.g. a
    shorter one for a small-context judge) and its ``prompt_template`` filled with ``fields``.

    Raises: ValueError naming the missing field (``pair-math-v1`` needs ``ref_answer_1``, ...).
    """
    try:
        user = template["prompt_template"].format(**fields)
    except KeyError as e:
        raise ValueError(f"judge template {template.get('name')!r} needs the field {e.args[0]!r}; "
                         f"got {sorted(fields)}") from None
    sys_text = template["system_prompt"] if system_prompt is None else system_prompt
    return [{"role": "system", "content": sys_text}, {"role": "user", "content": user}]


_VERDICT_RE = re.compile(r"\[\[\s*([ABC])\s*\]\]")


def parse_pairwise_verdict(text: str | None) -> str:
    """The verdict of a pairwise judgment: ``"A"``, ``"B"``, ``"tie"`` (``[[C]]``) or ``"error"``.

    Policy (explicit, because judges are messy): markers are ``[[A]]``, ``[[B]]``, ``[[C]]``
    (spaces inside the brackets allowed); when several appear, the LAST one is the verdict (the
    prompt asks for the verdict after the explanation, and judges often quote the format first:
    'I output "[[A]]" if A is better ... final verdict: [[B]]'); no marker, or ``None``, is
    ``"error"``. Errors are excluded from win rates and counted in a separate error rate, never
    silently turned into ties.
    """
    # TODO(1): find every _VERDICT_RE match; none (or text None) -> "error"; else map the LAST one: A->"A", B->"B", C->"tie" (easy, ~10 min)
    raise NotImplementedError("TODO(1)")


_RATING_RE = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_RATING_FALLBACK_RE = re.compile(r"Rating:\s*\[?\s*(\d+(?:\.\d+)?)")


def parse_rating(text: str | None, low: float = 1.0, high: float = 10.0) -> float:
    """The score of a single-answer judgment ("Rating: [[7]]" -> 7.0), or NaN.

    Policy: the LAST ``[[number]]`` in the text; if there is none, the last ``Rating: x`` (or
    ``Rating: [x``); a number outside ``[low, high]`` (the prompt asks for 1-10) or no number at
    all is NaN — callers count NaNs as parse errors and leave them out of averages.
    """
    # TODO(2): last _RATING_RE match, else last _RATING_FALLBACK_RE match; float() it; NaN when none or outside [low, high] (easy, ~10 min)
    raise NotImplementedError("TODO(2)")


def _flip(verdict: str) -> str:
    return {"A": "B", "B": "A"}.get(verdict, verdict)


def combine_swap(first: str, second_swapped: str) -> str:
    """Combine the two judgments of a swap-position double judging.

    Args:
        first: verdict with the answers in the original order (A = answer_a).
        second_swapped: verdict of the SECOND call, where the answers were presented swapped
            (its "A" is the original answer_b), exactly as the judge wrote it.

    Returns: the original-order verdict when the two agree after mapping the second one back
    (``"A"``, ``"B"`` or ``"tie"``); ``"inconsistent"`` when they disagree (the judge changed its
    mind with the order: MT-Bench counts this as a tie for win rates); ``"error"`` if either
    call had no verdict.

    Raises: ValueError for a verdict outside ``("A", "B", "tie", "error")``.
    """
    for v in (first, second_swapped):
        if v not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {v!r}")
    # TODO(3): error if either is "error"; map the swapped verdict back with _flip; equal -> that verdict, else "inconsistent" (easy, ~10 min)
    raise NotImplementedError("TODO(3)")


# ----------------------------------------------------------------------------------------------
# The judge client (given): any OpenAI-compatible endpoint
# ----------------------------------------------------------------------------------------------


@dataclass
class Judgment:
    """One judge call: ``verdict`` (pairwise) or ``rating`` (single), the raw text, and the error
    message when the request itself failed (e.g. a 400 for a prompt over the context window)."""

    verdict: str = "error"
    rating: float = float("nan")
    raw: str = ""
    error: str | None = None


@dataclass
class SwapJudgment:
    """Both orders of one pair: ``first`` (A = answer_a), ``second`` (A = answer_b, as written by
    the judge) and ``final`` (:func:`combine_swap`)."""

    first: Judgment
    second: Judgment
    final: str


@dataclass
class Judge:
    """An LLM judge behind any OpenAI-compatible endpoint (``client`` = ``openai.OpenAI(...)`` or
    anything with ``.chat.completions.create``).

    ``pair_template`` / ``single_template`` are MT-Bench templates (default ``pair-v2`` and
    ``single-v1`` from the mirror); ``system_prompt`` overrides their system prompt (the
    curriculum model's 256-token context cannot hold MT-Bench's 148-word one);
    ``max_answer_chars`` truncates each answer before it goes into the prompt (0: no limit).
    A request the server rejects (openai.APIStatusError, e.g. prompt over the context) becomes
    a Judgment with verdict ``"error"`` and the server's message in ``error``.
    """

    client: Any
    model: str
    pair_template: dict | None = None
    single_template: dict | None = None
    system_prompt: str | None = None
    max_tokens: int = 512
    temperature: float = 0.0
    seed: int | None = 0
    max_answer_chars: int = 0
    calls: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.pair_template is None or self.single_template is None:
            prompts = load_judge_prompts()
            self.pair_template = self.pair_template or prompts["pair-v2"]
            self.single_template = self.single_template or prompts["single-v1"]

    def _cut(self, text: str) -> str:
        n = self.max_answer_chars
        return text if n <= 0 or len(text) <= n else text[:n] + " ..."

    def _complete(self, messages: list[dict]) -> tuple[str, str | None]:
        import openai

        self.calls += 1
        kw: dict[str, Any] = dict(model=self.model, messages=messages, max_tokens=self.max_tokens,
                                  temperature=self.temperature)
        if self.seed is not None:
            kw["seed"] = self.seed
        try:
            resp = self.client.chat.completions.create(**kw)
        except openai.APIStatusError as e:
            return "", f"{type(e).__name__}: {e}"
        return resp.choices[0].message.content or "", None

    def pairwise(self, question: str, answer_a: str, answer_b: str, **extra: str) -> Judgment:
        """Judge one order: A = ``answer_a``. ``extra`` fills other template fields (``ref_answer_1``)."""
        msgs = build_messages(self.pair_template, self.system_prompt, question=question,
                              answer_a=self._cut(answer_a), answer_b=self._cut(answer_b), **extra)
        raw, err = self._complete(msgs)
        return Judgment(verdict=parse_pairwise_verdict(raw) if err is None else "error", raw=raw, error=err)

    def pairwise_swap(self, question: str, answer_a: str, answer_b: str, **extra: str) -> SwapJudgment:
        """Judge both orders and combine them (:func:`combine_swap`)."""
        first = self.pairwise(question, answer_a, answer_b, **extra)
        second = self.pairwise(question, answer_b, answer_a, **extra)
        return SwapJudgment(first, second, combine_swap(first.verdict, second.verdict))

    def single(self, question: str, answer: str, **extra: str) -> Judgment:
        """Single-answer grading (MT-Bench ``single-v1``): a 1-10 rating, NaN when unparseable."""
        msgs = build_messages(self.single_template, self.system_prompt, question=question,
                              answer=self._cut(answer), **extra)
        raw, err = self._complete(msgs)
        return Judgment(verdict="error", rating=parse_rating(raw) if err is None else float("nan"),
                        raw=raw, error=err)


# ----------------------------------------------------------------------------------------------
# Bias and consistency
# ----------------------------------------------------------------------------------------------


def position_bias_stats(pairs: Sequence[tuple[str, str]]) -> dict[str, float]:
    """Position-bias and consistency rates from swap-position double judgments.

    Args:
        pairs: ``(first, second_swapped)`` verdicts per item, as in :func:`combine_swap`.

    Returns a dict:
        ``n``: items; ``error_rate``: share of items with an error in either order;
        ``consistency``: among items without errors, share whose two verdicts agree after the
        swap is undone (MT-Bench's "consistency"); ``inconsistent_rate`` = 1 - consistency;
        ``first_position_win_rate``: over all individual decisive calls (A or B, either order),
        the share that picked whichever answer was shown FIRST — 0.5 for an unbiased judge;
        ``position_bias`` = that minus 0.5. NaN where the denominator is 0.
    """
    # TODO(4): per item: errors -> count; else consistent when first == _flip(second). Decisive calls: every verdict in ("A", "B") from either order; "first wins" = verdict == "A" (easy, ~15 min)
    raise NotImplementedError("TODO(4)")


def _outcome_rows(winners: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row index, y, weight): a decisive battle is one row (y=1 when model_a won); a tie (or an
    "inconsistent" swap) is two half-weight rows, y=1 and y=0; errors are dropped."""
    idx, ys, ws = [], [], []
    for i, w in enumerate(winners):
        if w in ("model_a", "A"):
            idx.append(i)
            ys.append(1.0)
            ws.append(1.0)
        elif w in ("model_b", "B"):
            idx.append(i)
            ys.append(0.0)
            ws.append(1.0)
        elif w in ("tie", "inconsistent", "tie (bothbad)"):
            idx.extend((i, i))
            ys.extend((1.0, 0.0))
            ws.extend((0.5, 0.5))
        elif w != "error":
            raise ValueError(f"unknown winner label {w!r}")
    return np.asarray(idx, dtype=np.int64), np.asarray(ys), np.asarray(ws)


def fit_logistic(X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None,
                 max_iter: int = 100, tol: float = 1e-10) -> np.ndarray:
    """Unregularised logistic-regression MLE by Newton-Raphson (no intercept column is added).

    Maximises sum_i w_i [y_i log p_i + (1 - y_i) log(1 - p_i)], p = sigmoid(X @ theta).

    Args:
        X: (N, D) float design matrix. y: (N,) targets in [0, 1]. sample_weight: (N,) >= 0.
    Returns: theta, (D,) float64.
    Raises: ValueError on shape mismatch, NaN/inf, y outside [0, 1], negative weights, or a
        Hessian that is singular (e.g. a model that never battled, or separable data whose MLE
        is at infinity: a model that won every battle).
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if X.ndim != 2 or y.shape != (X.shape[0],) or w.shape != y.shape:
        raise ValueError(f"shapes must be X (N, D), y (N,), w (N,); got {X.shape}, {y.shape}, {w.shape}")
    if not (np.isfinite(X).all() and np.isfinite(y).all() and np.isfinite(w).all()):
        raise ValueError("X, y and sample_weight must be finite (found NaN or inf)")
    if ((y < 0) | (y > 1)).any() or (w < 0).any():
        raise ValueError("y must lie in [0, 1] and sample weights must be >= 0")
    # TODO(5): theta = 0; repeat: p = sigmoid(X theta); grad = X^T (w (y - p)); H = X^T diag(w p (1-p)) X; step = solve(H, grad) (LinAlgError or non-finite -> ValueError); theta += step; stop when max|step| < tol (medium, ~20 min)
    raise NotImplementedError("TODO(5)")


def _models_of(battles: Sequence[Battle]) -> list[str]:
    return sorted({b.model_a for b in battles} | {b.model_b for b in battles})


def bt_design(battles: Sequence[Battle], models: Sequence[str] | None = None, length_feature: bool = False
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """The Bradley-Terry design (given): one row per battle with +1 in model_a's column and -1 in
    model_b's (ties: two half-weight rows; errors dropped), so that P(a beats b) =
    sigmoid(beta_a - beta_b). ``length_feature`` appends one more column, log(len_a / len_b)
    (Chatbot Arena's "style control" idea with length as the only style feature).
    Returns (X (N, M) or (N, M + 1), y (N,), w (N,), models)."""
    models = list(models) if models is not None else _models_of(battles)
    col = {m: j for j, m in enumerate(models)}
    idx, y, w = _outcome_rows([b.winner for b in battles])
    X = np.zeros((len(idx), len(models) + int(length_feature)))
    for r, i in enumerate(idx):
        b = battles[int(i)]
        if b.model_a == b.model_b:
            raise ValueError(f"battle {int(i)} pits {b.model_a!r} against itself: no information for BT")
        X[r, col[b.model_a]] += 1.0
        X[r, col[b.model_b]] -= 1.0
        if length_feature:
            if b.len_a <= 0 or b.len_b <= 0:
                raise ValueError(f"battle {int(i)} has no answer lengths (len_a={b.len_a}, len_b={b.len_b})")
            X[r, -1] = math.log(b.len_a / b.len_b)
    return X, y, w, models


def to_elo_scale(logits: np.ndarray) -> np.ndarray:
    """Natural-log-odds strengths -> the Elo scale (400 points = 10x odds), mean 1000."""
    r = np.asarray(logits) * ELO_SCALE / math.log(ELO_BASE)
    return r - r.mean() + ELO_INIT


def bradley_terry(battles: Sequence[Battle], models: Sequence[str] | None = None,
                  length_control: bool = False) -> dict[str, float]:
    """Bradley-Terry ratings by maximum likelihood (Bradley & Terry 1952; Chatbot Arena's leaderboard).

    P(i beats j) = 1 / (1 + 10^((R_j - R_i) / 400)); ties count as half a win each way.
    Identifiability: only differences are defined, so the first model's strength is pinned to 0
    (its column dropped), the MLE solved with :func:`fit_logistic`, and the result put on the
    Elo scale with mean 1000 (:func:`to_elo_scale`). ``length_control=True`` fits one more
    coefficient on log(len_a / len_b) (:func:`bt_design`) and reports the ratings with that
    length effect held out: the ranking "if every answer had been as long as its opponent's".

    Returns: {model: rating}. Raises: ValueError for no usable battles, fewer than 2 models, or
    an MLE that does not exist (a model that won every battle; a disconnected comparison graph).
    """
    # TODO(6): X, y, w, models = bt_design(..., length_feature=length_control); need >= 2 models and >= 1 row (ValueError); theta = fit_logistic(X[:, 1:], y, w); logits = [0, *theta[:M-1]] (the length coefficient, if any, is last); return dict(zip(models, to_elo_scale(logits))) (medium, ~15 min)
    raise NotImplementedError("TODO(6)")


def elo_ratings(battles: Sequence[Battle], k: float = 4.0, init: float = ELO_INIT,
                scale: float = ELO_SCALE, base: float = ELO_BASE) -> dict[str, float]:
    """Online Elo (Elo 1978; Chatbot Arena's first leaderboard), in battle order.

    For each battle: E_a = 1 / (1 + base^((R_b - R_a) / scale)); S_a = 1 (a won), 0 (b won),
    0.5 (tie or inconsistent); R_a += k (S_a - E_a); R_b += k ((1 - S_a) - (1 - E_a)), both
    updates computed from the ratings BEFORE the battle. Errors are skipped. Every model starts
    at ``init``. The result depends on the order (unlike Bradley-Terry): that is the point of
    comparing them.

    Raises: ValueError for k <= 0 or an unknown winner label.
    """
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")
    # TODO(7): ratings = {m: init for m in every model}; loop in order, skip "error", S_a from the winner label (unknown label -> ValueError), expected from the pre-battle ratings, symmetric update (easy, ~15 min)
    raise NotImplementedError("TODO(7)")


def bootstrap_ci(battles: Sequence[Battle], rate: Callable[[Sequence[Battle]], dict[str, float]],
                 n_boot: int = 200, alpha: float = 0.05, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap CI of every model's rating (Efron 1979; how the Arena reports its CIs).

    Resample the battles WITH replacement ``n_boot`` times (``np.random.default_rng(seed)``,
    indices ``rng.integers(0, n, n)``), rate each resample with ``rate`` (e.g.
    :func:`bradley_terry`; for :func:`elo_ratings` the resample order is random too, which is
    the point), and take the ``alpha/2`` and ``1 - alpha/2`` quantiles per model. A resample
    whose fit fails (ValueError, e.g. a model that won all its resampled battles) is skipped; if
    more than half fail, ValueError.

    Returns: {model: (low, high)}.
    """
    if n_boot < 2 or not 0 < alpha < 1:
        raise ValueError(f"need n_boot >= 2 and 0 < alpha < 1, got {n_boot}, {alpha}")
    if not battles:
        raise ValueError("no battles to bootstrap")
    # TODO(8): rng = default_rng(seed); per resample: rate([battles[i] for i in rng.integers(0, n, n)]), skip ValueError; collect per model; np.quantile at alpha/2 and 1-alpha/2 (easy, ~15 min)
    raise NotImplementedError("TODO(8)")


def length_controlled_win_rate(winners: Sequence[str], len_a: Sequence[float], len_b: Sequence[float]
                               ) -> dict[str, float]:
    """Win rate of "a" over "b" with and without a length control, in the spirit of
    length-controlled AlpacaEval (Dubois et al. 2024).

    Fit P(a wins item i) = sigmoid(theta + beta * x_i) by MLE (:func:`fit_logistic`), where
    x_i = log(len_a_i / len_b_i) is how much longer a's answer was. ``beta`` is the judge's
    length preference; ``theta`` is what is left when both answers have the same length, so the
    length-controlled win rate is sigmoid(theta) — the answer to "how often would a win if it
    were not longer?". AlpacaEval uses tanh(length difference / std) and an instruction-difficulty
    term; the log ratio is the simplest monotone length feature and is what our simulated judge
    plants, so here the control can be checked exactly. Ties (and "inconsistent") count half.

    sigmoid(theta) is an extrapolation to equal lengths: trust it only when the data contain
    items on both sides of equal length (``a_longer`` well away from 0 and 1).

    Returns: {"raw": share of wins (ties half), "lc": sigmoid(theta), "beta": beta, "n": usable
    items, "a_longer": share of usable items where a's answer is longer}.
    Raises: ValueError for mismatched lengths, non-positive lengths, or no usable items.
    """
    la = np.asarray(len_a, dtype=np.float64)
    lb = np.asarray(len_b, dtype=np.float64)
    if not len(winners) == len(la) == len(lb):
        raise ValueError(f"winners, len_a, len_b must have one entry per item: {len(winners)}, {len(la)}, {len(lb)}")
    if (la <= 0).any() or (lb <= 0).any() or not (np.isfinite(la).all() and np.isfinite(lb).all()):
        raise ValueError("answer lengths must be finite and > 0")
    # TODO(9): idx, y, w = _outcome_rows(winners) (ValueError if empty); x = log(la/lb)[idx]; theta, beta = fit_logistic(column_stack([ones, x]), y, w); raw = sum(w*y)/sum(w) (medium, ~15 min)
    raise NotImplementedError("TODO(9)")


# ----------------------------------------------------------------------------------------------
# A simulated judge with planted biases (given)
# ----------------------------------------------------------------------------------------------


@dataclass
class SimAnswer:
    """An answer the simulated judge can see: who wrote it, its true quality (logit scale) and
    its length in characters."""

    model: str
    quality: float
    length: int


@dataclass
class SimulatedJudge:
    """A judge with KNOWN biases, for checking the bias measurements and mitigations.

    On a pair shown as (A, B), it answers "A" outright with probability ``2 * position_bias``
    (a lazy first-answer pick); otherwise it picks A with probability
    sigmoid(quality_A - quality_B + length_bias * log(len_A / len_B)). So on two equally good,
    equally long answers P("A") = 0.5 + position_bias exactly, and on any pair the first-shown
    answer gains 2b(1 - p) over its true win probability p. No ties. Deterministic given seed.
    """

    position_bias: float = 0.0
    length_bias: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.position_bias <= 0.5:
            raise ValueError(f"position_bias must be in [0, 0.5], got {self.position_bias}")
        self.rng = np.random.default_rng(self.seed)

    def p_first(self, a: SimAnswer, b: SimAnswer) -> float:
        """The exact probability this judge says "A" for the pair shown as (a, b)."""
        z = a.quality - b.quality + self.length_bias * math.log(a.length / b.length)
        return 2 * self.position_bias + (1 - 2 * self.position_bias) / (1 + math.exp(-z))

    def __call__(self, a: SimAnswer, b: SimAnswer) -> str:
        return "A" if self.rng.random() < self.p_first(a, b) else "B"


def simulate_answers(models: dict[str, tuple[float, int]], n_items: int, seed: int = 0,
                     quality_sd: float = 0.0) -> dict[str, list[SimAnswer]]:
    """Per model (true quality, typical length): ``n_items`` answers whose quality jitters by
    N(0, quality_sd) and whose length by a log-normal factor (sigma 0.4) around the typical length.
    With ``quality_sd=0`` the true win probability of a over b is exactly sigmoid(q_a - q_b)."""
    rng = np.random.default_rng(seed)
    out = {}
    for m, (q, length) in models.items():
        out[m] = [SimAnswer(m, float(q + rng.normal(0, quality_sd)) if quality_sd > 0 else float(q),
                            max(1, int(length * math.exp(rng.normal(0, 0.4)))))
                  for _ in range(n_items)]
    return out


def simulated_tournament(judge: SimulatedJudge, answers: dict[str, list[SimAnswer]], swap: bool
                         ) -> list[Battle]:
    """Every model pair on every item, the alphabetically first model always shown FIRST (as in
    the vicuna data, where one model is always Assistant 2). ``swap=True`` judges both orders
    and records the combined verdict (:func:`combine_swap`; "inconsistent" = half a win)."""
    models = sorted(answers)
    battles = []
    for i, ma in enumerate(models):
        for mb in models[i + 1:]:
            for a, b in zip(answers[ma], answers[mb]):
                v1 = judge(a, b)
                if swap:
                    final = combine_swap(v1, judge(b, a))
                    winner = {"A": "model_a", "B": "model_b"}.get(final, final)
                else:
                    winner = "model_a" if v1 == "A" else "model_b"
                battles.append(Battle(ma, mb, winner, len_a=a.length, len_b=b.length))
    return battles


def win_rate(battles: Sequence[Battle], model: str, opponent: str) -> float:
    """Share of ``model``'s battles against ``opponent`` that it won (ties/inconsistent half, errors out)."""
    score, n = 0.0, 0
    for b in battles:
        if {b.model_a, b.model_b} != {model, opponent} or b.winner == "error":
            continue
        n += 1
        if b.winner in ("tie", "inconsistent"):
            score += 0.5
        elif (b.winner == "model_a") == (b.model_a == model):
            score += 1.0
    if n == 0:
        raise ValueError(f"no battles between {model!r} and {opponent!r}")
    return score / n


# ----------------------------------------------------------------------------------------------
# Reports (given)
# ----------------------------------------------------------------------------------------------


def real_judge_report() -> dict[str, Any]:
    """Everything the vicuna-judgments data allows us to measure about two real judges."""
    out: dict[str, Any] = {}
    gpt4 = load_vicuna_battles("gpt-4")
    gpt35 = load_vicuna_battles("gpt-3.5-turbo")
    # 1) position bias on identical answers (gpt-3.5 judging vicuna vs itself)
    same = load_vicuna_battles("gpt-3.5-turbo", self_pair=True)
    counts = Counter(b.winner for b in same)
    decisive = counts["model_a"] + counts["model_b"]
    out["self_pair"] = {"n": len(same), "tie": counts["tie"], "first": counts["model_a"],
                        "second": counts["model_b"], "error": counts["error"],
                        "non_tie_rate": decisive / (len(same) - counts["error"]),
                        "second_share_of_decisive": counts["model_b"] / decisive if decisive else float("nan")}
    # 2) agreement between the two judges on the same 320 pairs
    key = {(b.model_a, b.question_id): b.winner for b in gpt35}
    agree = sum(key[(b.model_a, b.question_id)] == b.winner for b in gpt4)
    out["agreement"] = {"n": len(gpt4), "agree": agree, "rate": agree / len(gpt4)}
    # 3) verbosity: score difference vs log length ratio, and the length-controlled win rate
    for name, bs in (("gpt-4", gpt4), ("gpt-3.5-turbo", gpt35)):
        ok = [b for b in bs if b.winner != "error"]
        ds = np.array([b.score_a - b.score_b for b in ok])
        dl = np.array([math.log(b.len_a / b.len_b) for b in ok])
        per = {}
        for opp in VICUNA_OPPONENTS:
            sub = [b for b in ok if b.model_a == opp]
            try:
                per[opp] = length_controlled_win_rate([b.winner for b in sub], [b.len_a for b in sub],
                                                      [b.len_b for b in sub])
            except ValueError as e:  # e.g. an opponent that lost every battle: no finite MLE
                per[opp] = {"raw": win_rate(sub, opp, VICUNA), "lc": float("nan"), "beta": float("nan"),
                            "n": float(len(sub)), "a_longer": float("nan"), "note": str(e)}
        pooled = length_controlled_win_rate([b.winner for b in ok], [b.len_a for b in ok], [b.len_b for b in ok])
        out[name] = {"corr_score_len": float(np.corrcoef(ds, dl)[0, 1]), "per_opponent": per, "pooled": pooled,
                     "errors": len(bs) - len(ok)}
    return out


def curriculum_judge_run(client: Any, model: str, n_pairs: int = 3, max_tokens: int = 6) -> dict[str, Any]:
    """A tiny swap-position run with the curriculum model as judge, on real vicuna answers (bard vs
    vicuna, truncated to fit a 256-token context, MT-Bench ``pair-v2`` user template with a short
    system prompt), plus one single-answer grading with a compact copy of ``single-v1``. Returns the
    verdicts, :func:`position_bias_stats` of them and the rating."""
    qs = {q["question_id"]: q["text"] for q in _read_jsonl("vicuna-judgments", "question.jsonl")}
    ans = {m: {r["question_id"]: r["text"] for r in _read_jsonl("vicuna-judgments", f"answer/answer_{m}.jsonl")}
           for m in ("bard", VICUNA)}
    judge = Judge(client, model, system_prompt="Judge two answers. Reply [[A]], [[B]] or [[C]] for a tie.",
                  max_tokens=max_tokens, max_answer_chars=80)
    runs, pairs = [], []
    for qid in sorted(qs)[:n_pairs]:
        sj = judge.pairwise_swap(qs[qid][:100], ans["bard"][qid], ans[VICUNA][qid])
        pairs.append((sj.first.verdict, sj.second.verdict))
        runs.append({"question_id": qid, "first": sj.first.verdict, "second": sj.second.verdict, "final": sj.final,
                     "raw_first": sj.first.raw, "error": sj.first.error or sj.second.error})
    # single-v1 keeps its ~100-word instruction in the USER turn: too long here, so a compact copy
    compact_single = {"name": "single-compact", "system_prompt": "Rate the answer from 1 to 10. Reply Rating: [[x]].",
                      "prompt_template": "[Question]" + judge.single_template["prompt_template"].split("[Question]", 1)[1]}
    single = Judge(client, model, single_template=compact_single, pair_template=judge.pair_template,
                   max_tokens=max_tokens, max_answer_chars=80).single(qs[1][:100], ans["bard"][1])
    judge.calls += 1
    return {"runs": runs, "stats": position_bias_stats(pairs), "calls": judge.calls,
            "single_rating": single.rating, "single_raw": single.raw}


def judge_vicuna_answers(judge: Judge, n_questions: int = 30, opponents: Sequence[str] = ("bard", "gpt35")
                         ) -> tuple[list[Battle], dict[str, float]]:
    """Full mode: swap-position judging of the mirror's real vicuna-evaluation answers by ``judge``
    (e.g. a strong model behind ``--base-url``): each opponent against vicuna on the first
    ``n_questions`` questions, both orders. Returns the battles (swap-combined verdicts) and
    :func:`position_bias_stats` over all of them — the position consistency the one-order
    FastChat reviews cannot give."""
    qs = {q["question_id"]: q["text"] for q in _read_jsonl("vicuna-judgments", "question.jsonl")}
    ans = {m: {r["question_id"]: r["text"] for r in _read_jsonl("vicuna-judgments", f"answer/answer_{m}.jsonl")}
           for m in (*opponents, VICUNA)}
    battles, pairs = [], []
    for opp in opponents:
        for qid in sorted(qs)[:n_questions]:
            sj = judge.pairwise_swap(qs[qid], ans[opp][qid], ans[VICUNA][qid])
            pairs.append((sj.first.verdict, sj.second.verdict))
            winner = {"A": "model_a", "B": "model_b"}.get(sj.final, sj.final)
            battles.append(Battle(opp, VICUNA, winner, question_id=qid, len_a=max(1, len(ans[opp][qid])),
                                  len_b=max(1, len(ans[VICUNA][qid]))))
    return battles, position_bias_stats(pairs)


def plot_ratings(ratings: dict[str, dict[str, float]], cis: dict[str, dict[str, tuple[float, float]]],
                 path: Path, title: str) -> Path:
    """Horizontal error-bar chart: one row per model, one marker per rating method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from labkit.plots import savefig

    methods = list(ratings)
    models = sorted(ratings[methods[0]], key=lambda m: ratings[methods[0]][m])
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(models) + 1.5))
    for k, meth in enumerate(methods):
        ys = np.arange(len(models)) + (k - (len(methods) - 1) / 2) * 0.25
        xs = np.array([ratings[meth][m] for m in models])
        lo = np.array([cis[meth][m][0] for m in models])
        hi = np.array([cis[meth][m][1] for m in models])
        ax.errorbar(xs, ys, xerr=[xs - lo, hi - xs], fmt="o", capsize=3, label=f"{meth} (95% bootstrap CI)")
    ax.set_yticks(range(len(models)), models)
    ax.set_xlabel("rating (Elo scale)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    out = savefig(fig, path)
    plt.close(fig)
    return out


# ----------------------------------------------------------------------------------------------
# Self-test
# ----------------------------------------------------------------------------------------------

SIM_MODELS = {"m1-first": (0.0, 600), "m2-strong": (0.4, 600), "m3-verbose": (-0.2, 1500)}
TRUE_ORDER = ["m2-strong", "m1-first", "m3-verbose"]


def _order(r: dict[str, float]) -> list[str]:
    return sorted(r, key=r.get, reverse=True)


def simulation_report(n_items: int = 600, position_bias: float = 0.2, length_bias: float = 1.0,
                      seed: int = 0) -> dict[str, Any]:
    """The planted-bias experiment: rankings from three simulated judges (position bias only,
    length bias only, both) with and without swap-averaging and length control, plus per-pair
    true / raw / expected-raw / swap-averaged / length-controlled win rates for the judge with both."""
    answers = simulate_answers(SIM_MODELS, n_items, seed=seed)
    b, lb = position_bias, length_bias
    ident = SimulatedJudge(b, 0.0, seed=seed + 1)
    same = [ident(a, a) for a in answers["m1-first"]]
    out: dict[str, Any] = {"identical_first_rate": same.count("A") / len(same)}
    ranks = {}
    for name, pb, lbias in (("position", b, 0.0), ("length", 0.0, lb), ("both", b, lb)):
        raw = simulated_tournament(SimulatedJudge(pb, lbias, seed=seed + 2), answers, swap=False)
        swp = simulated_tournament(SimulatedJudge(pb, lbias, seed=seed + 3), answers, swap=True)
        ranks[name] = {"raw": _order(bradley_terry(raw)), "swap": _order(bradley_terry(swp)),
                       "raw+LC": _order(bradley_terry(raw, length_control=True)),
                       "swap+LC": _order(bradley_terry(swp, length_control=True))}
        if name == "both":
            both_raw, both_swp, judge = raw, swp, SimulatedJudge(pb, lbias)
    out["rankings"] = ranks
    rows = []
    for ma, mb in (("m1-first", "m2-strong"), ("m1-first", "m3-verbose"), ("m2-strong", "m3-verbose")):
        p_true = float(np.mean([1 / (1 + math.exp(-(x.quality - y.quality))) for x, y in zip(answers[ma], answers[mb])]))
        p_raw = float(np.mean([judge.p_first(x, y) for x, y in zip(answers[ma], answers[mb])]))
        sub = [x for x in both_swp if x.model_a == ma and x.model_b == mb]
        lc = length_controlled_win_rate([x.winner for x in sub], [x.len_a for x in sub], [x.len_b for x in sub])
        rows.append({"pair": f"{ma} vs {mb}", "true": p_true, "raw": win_rate(both_raw, ma, mb),
                     "expected_raw": p_raw, "swap": win_rate(both_swp, ma, mb), "swap_lc": lc["lc"]})
    out["pairs"] = rows
    return out


def selftest(args: argparse.Namespace) -> int:
    from labkit import seed_everything

    seed_everything(0)
    t0 = time.perf_counter()
    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        print(f"  [{'ok' if ok else 'FAIL'}] {what}")
        if not ok:
            failures.append(what)

    order = _order
    n = 3000 if args.full else 600
    print(f"== 1. simulated judges: planted position bias b=0.2, length bias 1.0 per unit log length ratio "
          f"({n} items per pair; true ranking {TRUE_ORDER})")
    sim = simulation_report(n_items=n)
    print(f"  identical answers: first-position win rate {sim['identical_first_rate']:.3f} (planted 0.700)")
    check(abs(sim["identical_first_rate"] - 0.7) < 0.06, "position bias measured within 0.06 of the planted 0.2")
    print("  judge with both biases, first-named model always shown first:")
    print(f"  {'pair':<26}{'true p':>8}{'raw':>8}{'expected raw':>14}{'swap-avg':>10}{'swap+LC':>9}")
    for r in sim["pairs"]:
        print(f"  {r['pair']:<26}{r['true']:>8.3f}{r['raw']:>8.3f}{r['expected_raw']:>14.3f}{r['swap']:>10.3f}"
              f"{r['swap_lc']:>9.3f}")
    print(f"  {'BT ranking':<12}{'raw':<38}{'swap-averaged':<38}{'swap + length control'}")
    for name, rk in sim["rankings"].items():
        print(f"  {name:<12}{' > '.join(rk['raw']):<38}{' > '.join(rk['swap']):<38}{' > '.join(rk['swap+LC'])}")
    rk = sim["rankings"]
    check(rk["position"]["raw"] != TRUE_ORDER and rk["position"]["swap"] == TRUE_ORDER,
          "position bias: raw ranking wrong, swap-averaging recovers the true ranking")
    check(rk["length"]["raw"] != TRUE_ORDER and rk["length"]["raw+LC"] == TRUE_ORDER,
          "length bias: raw ranking wrong, the length-controlled fit recovers it")
    check(rk["both"]["swap+LC"] == TRUE_ORDER, "both biases: swap + length control recovers the true ranking")

    print("== 2. real judges: FastChat's vicuna evaluation (GPT-4 and gpt-3.5-turbo reviews, one order only)")
    rep = real_judge_report()
    sp = rep["self_pair"]
    print(f"  gpt-3.5 judging vicuna vs its own identical answer: n={sp['n']} tie={sp['tie']} first={sp['first']} "
          f"second={sp['second']} error={sp['error']} -> non-tie rate {sp['non_tie_rate']:.3f}, "
          f"second position takes {sp['second_share_of_decisive']:.2f} of the decisive verdicts")
    ag = rep["agreement"]
    print(f"  GPT-4 vs gpt-3.5 winner agreement: {ag['agree']}/{ag['n']} = {ag['rate']:.3f}")
    check(ag["agree"] == 229 and ag["n"] == 320, "agreement reproduces the mirror's documented 229 / 320")
    print(f"  {'judge':<15}{'opponent':<12}{'raw win':>9}{'LC win':>9}{'beta':>8}{'opp longer':>12}")
    for name in ("gpt-4", "gpt-3.5-turbo"):
        r = rep[name]
        for opp, d in r["per_opponent"].items():
            print(f"  {name:<15}{opp:<12}{d['raw']:>9.3f}{d['lc']:>9.3f}{d['beta']:>8.2f}{d['a_longer']:>12.2f}")
        pl = r["pooled"]
        print(f"  {name:<15}{'(pooled)':<12}{pl['raw']:>9.3f}{pl['lc']:>9.3f}{pl['beta']:>8.2f}{pl['a_longer']:>12.2f}   "
              f"corr(score diff, log len ratio) = {r['corr_score_len']:.3f}, errors {r['errors']}")
    gpt4 = load_vicuna_battles("gpt-4")
    bt = bradley_terry(gpt4)
    rng = np.random.default_rng(0)
    shuffled = [gpt4[i] for i in rng.permutation(len(gpt4))]
    elo = elo_ratings(shuffled, k=4.0)
    nb = 400 if args.full else 100
    ci_bt = bootstrap_ci(gpt4, bradley_terry, n_boot=nb, seed=0)
    ci_elo = bootstrap_ci(gpt4, lambda b: elo_ratings(b, k=4.0), n_boot=nb, seed=0)
    print(f"  {'model':<34}{'BT':>8}{'BT 95% CI':>20}{'Elo k=4':>10}{'Elo 95% CI':>20}")
    for m in sorted(bt, key=bt.get, reverse=True):
        print(f"  {m:<34}{bt[m]:>8.0f}{f'[{ci_bt[m][0]:.0f}, {ci_bt[m][1]:.0f}]':>20}{elo[m]:>10.0f}"
              f"{f'[{ci_elo[m][0]:.0f}, {ci_elo[m][1]:.0f}]':>20}")
    check(order(bt)[:3] == ["gpt35", VICUNA, "bard"], "BT on GPT-4's verdicts: gpt35 > vicuna > bard > the rest")
    fig = plot_ratings({"Bradley-Terry": bt, "Elo (k=4)": elo}, {"Bradley-Terry": ci_bt, "Elo (k=4)": ci_elo},
                       HERE / "figures" / "ratings.png",
                       f"GPT-4 verdicts: {len(gpt4)} battles, {nb} bootstrap resamples")
    print(f"  wrote {fig}")

    if args.base_url:
        import openai

        print(f"== 2b. your judge at {args.base_url} ({args.model}) on the vicuna answers, both orders")
        client = openai.OpenAI(base_url=args.base_url, api_key=os.environ.get(args.api_key_env, "none"))
        battles, st = judge_vicuna_answers(Judge(client, args.model), n_questions=args.n_questions)
        print(f"  consistency {st['consistency']:.3f}, first-position win rate {st['first_position_win_rate']:.3f}, "
              f"error rate {st['error_rate']:.3f} over {int(st['n'])} pairs")
        print(f"  verdicts {dict(Counter(b.winner for b in battles))}")
    if not args.no_llm:
        print("== 3. the curriculum model as judge (labkit.llm_server; expect it to fail at judging)")
        from labkit.llm_server import serve_in_thread

        with serve_in_thread(model="main") as ep:
            run = curriculum_judge_run(ep.client(), ep.model, n_pairs=args.llm_pairs)
        for r in run["runs"]:
            print(f"  q{r['question_id']}: first={r['first']:<6} second={r['second']:<6} final={r['final']:<13}"
                  f" raw={r['raw_first'][:40]!r}")
        st = run["stats"]
        print(f"  error rate {st['error_rate']:.2f}, consistency {st['consistency']:.2f}, "
              f"first-position win rate {st['first_position_win_rate']:.2f}; single rating "
              f"{run['single_rating']} from {run['single_raw'][:40]!r} ({run['calls']} calls)")
        check(all(r["final"] in SWAP_VERDICTS for r in run["runs"]), "every curriculum-model judgment got a label")
    print(f"self-test wall time {time.perf_counter() - t0:.1f} s")
    if failures:
        print(f"FAILED: {failures}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="bigger simulation and more bootstrap resamples")
    ap.add_argument("--no-llm", action="store_true", help="skip the curriculum-model judge run")
    ap.add_argument("--llm-pairs", type=int, default=2, help="pairs the curriculum model judges (2 calls each)")
    ap.add_argument("--base-url", default=None, help="also judge with this OpenAI-compatible endpoint (full mode)")
    ap.add_argument("--model", default="gpt-4o", help="judge model name at --base-url")
    ap.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    ap.add_argument("--n-questions", type=int, default=30, help="vicuna questions per opponent at --base-url")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return selftest(args)


if __name__ == "__main__":
    sys.exit(main())

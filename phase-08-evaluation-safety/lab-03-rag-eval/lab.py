# Generated from solution.py by `make labs` (labkit/labgen.py). Fill in the TODOs.
"""Lab 8.3: evaluating a RAG pipeline with the four RAGAS metrics, with and without an LLM judge.

The system under test is lab 7.2's RAG pipeline (loaded by path, never copied): MiniLM chunks in
Qdrant, retrieval, an extractive answerer and an LLM answerer behind any OpenAI-compatible endpoint.
Lab 7.3's cross-encoder re-ranker (also by path) is the optional second stage.

The metrics, as RAGAS defines them (docs.ragas.io, "Metrics" pages; Es et al. 2023, "RAGAS:
Automated Evaluation of Retrieval Augmented Generation", arXiv:2309.15217):

- **faithfulness** = (answer claims supported by the retrieved contexts) / (answer claims);
- **answer relevance** = mean cosine similarity between the question's embedding and the
  embeddings of questions an LLM writes *from the answer* (0 when the answer is noncommittal);
- **context precision** = sum_k precision@k * v_k / (relevant chunks in the top K), with
  v_k in {0, 1} "chunk k is useful for reaching the reference answer";
- **context recall** = (reference claims attributable to the retrieved contexts) / (reference claims).

Two ways to get the verdicts: an **LLM judge** (:class:`LLMJudge`, any OpenAI-compatible endpoint,
RAGAS's recipe: yes/no verdicts per claim) and **judge-free proxies**: a token-overlap entailment
proxy (the share of a claim's normalised tokens found in the context: "K-precision", Adlakha et al.
2023, arXiv:2307.16877) and MiniLM cosine similarity for answer relevance.

NaN policy (one rule): **a ratio whose denominator is empty is NaN** - no answer claims
(faithfulness), no reference claims (recall, precision), no retrieved contexts (precision), an empty
answer (answer relevance), or an LLM judge none of whose verdicts parsed. A numerator that is
empty gives 0.0 (claims exist, none supported: e.g. an answer over empty contexts has faithfulness
0). Aggregates are means over the non-NaN values and always report how many were NaN.

Run ``python solution.py`` (small mode, CPU, ~1 minute) or ``--full``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from labkit import load_lab, seed_everything

HERE = Path(__file__).resolve().parent
RAG_LAB = "phase-07-retrieval-rag-agents/lab-02-rag-pipeline"
RERANK_LAB = "phase-07-retrieval-rag-agents/lab-03-hybrid-rerank"
EXTRA_QUESTIONS = HERE / "eval_questions.json"
CONTEXT_TOKENS = 256  # the curriculum model's window (prompt + reply)

__all__ = [
    "EvalItem", "LLMJudge", "JudgeError", "CachedCrossEncoder", "aggregate", "ablation_table", "answer_relevance_proxy",
    "answer_relevance_score", "build_pipeline", "context_precision_proxy", "dense_search", "context_precision_score",
    "context_recall_proxy", "context_recall_score", "evaluate_config", "faithfulness_proxy", "faithfulness_score",
    "generate_rag_answers", "load_eval_set", "normalize_tokens", "parse_verdict", "retrieve", "run_ablation",
    "split_claims", "support_score", "temperature_sweep",
]


@cache
def rag_lab():
    """Lab 7.2's solution module (the pipeline under test)."""
    return load_lab(RAG_LAB)


@cache
def rerank_lab():
    """Lab 7.3's solution module (the cross-encoder re-ranker)."""
    return load_lab(RERANK_LAB)


# ============================================================================ the eval set
@dataclass
class EvalItem:
    """One evaluation question with its ground truth.

    ``reference`` is the short hand-written answer; ``gold_context`` the sentence(s) of the document
    that contain ``evidence`` (verbatim), i.e. the passage a perfect retriever must return.
    """

    id: str
    question: str
    doc_id: str
    evidence: str
    reference: str
    gold_context: str


def load_eval_set(extra_path: str | os.PathLike | None = EXTRA_QUESTIONS, docs: Sequence[Any] | None = None
                  ) -> list[EvalItem]:
    """Lab 7.2's 39 questions plus ours (``eval_questions.json``), with gold contexts.

    Raises:
        ValueError: a repeated id, an unknown document, or evidence that is not verbatim in its document.
    """
    rag = rag_lab()
    pairs = list(rag.load_qa_pairs())
    if extra_path is not None:
        pairs += rag.load_qa_pairs(extra_path)
    by_id = {d.doc_id: d for d in (docs if docs is not None else rag.load_default_corpus())}
    seen: set[str] = set()
    items = []
    for p in pairs:
        if p["id"] in seen:
            raise ValueError(f"question id {p['id']!r} appears twice")
        seen.add(p["id"])
        doc = by_id.get(p["doc_id"])
        if doc is None:
            raise ValueError(f"{p['id']}: unknown document {p['doc_id']!r}")
        at = doc.text.find(p["evidence"])
        if at < 0:
            raise ValueError(f"{p['id']}: evidence {p['evidence']!r} is not verbatim in {p['doc_id']}")
        end = at + len(p["evidence"])
        spans = [(s, e) for s, e in rag.split_sentences(doc.text) if s < end and at < e]
        gold = " ".join(doc.text[s:e] for s, e in spans)
        items.append(EvalItem(p["id"], p["question"], p["doc_id"], p["evidence"], p.get("answer") or p["evidence"],
                              gold))
    return items


# ============================================================================ text helpers (given)
_CITE = re.compile(r"\[\d+(?:\s*,\s*\d+)*\]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_tokens(text: str) -> list[str]:
    """SQuAD-style normalisation (Rajpurkar et al. 2016): drop ``[n]`` citations and ``<unk>``,
    lower-case, drop articles and punctuation, split on whitespace.

    Raises:
        TypeError: ``text`` is not a str.
    """
    if not isinstance(text, str):
        raise TypeError(f"expected text (str), got {type(text).__name__}")
    text = _CITE.sub(" ", text.replace("<unk>", " ")).lower()
    text = re.sub(r"[^\w\s]", " ", text)
    return _ARTICLES.sub(" ", text).split()


def split_claims(text: str) -> list[str]:
    """The claims of a text, approximated by its sentences (lab 7.2's splitter); sentences with no
    token after normalisation (``"[1]"``, ``"..."``) are dropped. RAGAS asks an LLM for atomic
    statements instead (:meth:`LLMJudge.statements`)."""
    if not isinstance(text, str):
        raise TypeError(f"expected text (str), got {type(text).__name__}")
    out = []
    for s, e in rag_lab().split_sentences(text):
        claim = re.sub(r"\s+([.,;:!?])", r"\1", re.sub(r"\s+", " ", _CITE.sub("", text[s:e]))).strip()
        if normalize_tokens(claim):
            out.append(claim)
    return out


def _check_contexts(contexts: Sequence[str]) -> list[str]:
    if isinstance(contexts, str):
        raise TypeError("contexts must be a list of strings (the retrieved chunks), not one string")
    contexts = list(contexts)
    if any(not isinstance(c, str) for c in contexts):
        raise TypeError("every context must be a str")
    return contexts


def _check_threshold(threshold: float) -> float:
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be a number in (0, 1], got {threshold!r}")
    return float(threshold)


def _check_verdicts(verdicts: Sequence[int | bool]) -> list[int]:
    if isinstance(verdicts, (str, bytes)):
        raise TypeError("verdicts must be a sequence of 0/1 (or bools), not a string")
    out = []
    for v in verdicts:
        if isinstance(v, (bool, np.bool_)):
            out.append(int(v))
        elif isinstance(v, (int, np.integer)) and int(v) in (0, 1):
            out.append(int(v))
        else:
            raise ValueError(f"a verdict must be 0, 1, True or False, got {v!r} (drop unparsed verdicts first)")
    return out


# ============================================================================ the RAGAS formulas
def faithfulness_score(verdicts: Sequence[int | bool]) -> float:
    """RAGAS faithfulness from per-claim verdicts (1: the claim is inferable from the contexts).

    ``supported / claims``; NaN when there are no claims.

    Raises:
        ValueError: a verdict that is not 0/1/bool.  TypeError: a string instead of a sequence.
    """
    v = _check_verdicts(verdicts)
    # TODO(1): the share of 1s; an empty list has no denominator: NaN (easy, ~5 min)
    raise NotImplementedError("TODO(1)")


def context_recall_score(verdicts: Sequence[int | bool]) -> float:
    """RAGAS context recall from per-reference-claim verdicts (1: attributable to the contexts).

    Same ratio as :func:`faithfulness_score`, over the *reference's* claims; NaN without claims.
    """
    v = _check_verdicts(verdicts)
    # TODO(2): same ratio as faithfulness, over reference claims (easy, ~2 min)
    raise NotImplementedError("TODO(2)")


def context_precision_score(verdicts: Sequence[int | bool]) -> float:
    """RAGAS context precision@K from the relevance ``v_k`` of the chunks in retrieved order.

    ``sum_k precision@k * v_k / (number of relevant chunks in the top K)`` where precision@k is
    the share of relevant chunks among the first k. Relevant chunks ranked first score 1; the same
    chunks ranked last score less. No relevant chunk: 0.0. No chunk at all: NaN.

    Example: ``[0, 1, 1]`` -> (1/2 + 2/3) / 2 = 0.5833.

    Raises:
        ValueError / TypeError: as :func:`faithfulness_score`.
    """
    v = _check_verdicts(verdicts)
    # TODO(3): NaN for no chunks; running count of relevant chunks; add (count / k) at each relevant rank k (1-based); divide by the number of relevant chunks, 0.0 when there are none (medium, ~10 min)
    raise NotImplementedError("TODO(3)")


def answer_relevance_score(question_vec: np.ndarray, generated_vecs: np.ndarray, noncommittal: bool = False
                           ) -> float:
    """RAGAS answer relevance: mean cosine similarity between the question and N questions
    generated from the answer; 0.0 for a noncommittal answer ("I don't know").

    Args:
        question_vec: ``(D,)`` embedding of the question (any norm).
        generated_vecs: ``(N, D)`` embeddings of the generated questions (any norm); N = 0 gives NaN.
        noncommittal: the judge found the answer evasive.

    Raises:
        ValueError: NaN/inf, a zero vector, or shapes that do not match.
    """
    q = np.asarray(question_vec, dtype=np.float64)
    g = np.asarray(generated_vecs, dtype=np.float64)
    if g.ndim == 1:
        g = g[None, :]
    if q.ndim != 1 or g.ndim != 2 or (g.size and g.shape[1] != q.shape[0]):
        raise ValueError(f"expected question_vec (D,) and generated_vecs (N, D); got {q.shape} and {g.shape}")
    if not (np.isfinite(q).all() and np.isfinite(g).all()):
        raise ValueError("embeddings contain NaN or inf")
    # TODO(4): noncommittal -> 0.0; no generated questions -> NaN; else normalise both (refuse zero norms with a ValueError) and average the cosines (easy, ~10 min)
    raise NotImplementedError("TODO(4)")


def aggregate(values: Sequence[float]) -> tuple[float, int]:
    """``(mean over the non-NaN values, number of NaNs)``; the mean is NaN when all are NaN."""
    a = np.asarray(list(values), dtype=np.float64)
    if a.size == 0:
        return float("nan"), 0
    ok = ~np.isnan(a)
    return (float(a[ok].mean()) if ok.any() else float("nan")), int((~ok).sum())


# ============================================================================ judge-free proxies
def support_score(claim: str, contexts: Sequence[str]) -> float:
    """Token-overlap entailment proxy: the share of ``claim``'s normalised tokens (counted with
    repeats) that occur anywhere in the contexts - K-precision (Adlakha et al. 2023), computed
    per claim.

    Returns:
        A float in [0, 1]; NaN when the claim has no tokens; 0.0 for empty contexts.

    Raises:
        TypeError: ``contexts`` is a bare string or holds a non-string.
    """
    contexts = _check_contexts(contexts)
    toks = normalize_tokens(claim)
    # TODO(5): NaN for a claim without tokens; the set of normalize_tokens over all contexts; share of the claim's tokens in it (easy, ~10 min)
    raise NotImplementedError("TODO(5)")


def faithfulness_proxy(answer: str, contexts: Sequence[str], threshold: float = 0.5, soft: bool = False) -> float:
    """Judge-free faithfulness: claims = :func:`split_claims` (answer); a claim is supported when
    :func:`support_score` >= ``threshold``; score = :func:`faithfulness_score`.
    ``soft=True`` returns the mean support instead of the share of supported claims.

    NaN for an answer without claims; 0.0 when contexts are empty (nothing can support a claim).
    """
    contexts = _check_contexts(contexts)
    threshold = _check_threshold(threshold)
    # TODO(6): claims of the answer; NaN if none; supports = [support_score(c, contexts)]; soft -> their mean; else faithfulness_score(s >= threshold) (easy, ~10 min)
    raise NotImplementedError("TODO(6)")


def context_recall_proxy(reference: str, contexts: Sequence[str], threshold: float = 0.5) -> float:
    """Judge-free context recall: the reference's claims (:func:`split_claims`) supported by the
    contexts (:func:`support_score` >= ``threshold``), via :func:`context_recall_score`.

    NaN for a reference without claims; 0.0 for empty contexts.
    """
    contexts = _check_contexts(contexts)
    threshold = _check_threshold(threshold)
    # TODO(7): claims of the reference (NaN if none); context_recall_score of support >= threshold (easy, ~5 min)
    raise NotImplementedError("TODO(7)")


def context_precision_proxy(contexts: Sequence[str], reference: str, threshold: float = 0.5) -> float:
    """Judge-free context precision: chunk k is relevant (v_k = 1) when it alone supports at least
    one reference claim (:func:`support_score` over ``[contexts[k]]`` >= ``threshold``); score =
    :func:`context_precision_score` over the chunks in retrieved order.

    NaN for no contexts or a reference without claims.
    """
    contexts = _check_contexts(contexts)
    threshold = _check_threshold(threshold)
    # TODO(8): NaN if no contexts or no reference claims; v_k = any claim with support_score(claim, [ctx_k]) >= threshold; context_precision_score(v) (medium, ~10 min)
    raise NotImplementedError("TODO(8)")


def answer_relevance_proxy(question: str, answer: str, embed: Callable[[list[str]], np.ndarray]) -> float:
    """Judge-free answer relevance: the cosine similarity of the question's and the answer's
    embeddings (MiniLM), i.e. :func:`answer_relevance_score` with the answer standing in for the
    generated questions. NaN for an answer without tokens.

    Raises:
        ValueError: an empty question.  TypeError: non-string inputs.
    """
    if not isinstance(question, str) or not isinstance(answer, str):
        raise TypeError("question and answer must be str")
    if not normalize_tokens(question):
        raise ValueError("question is empty")
    if not normalize_tokens(answer):
        return float("nan")
    v = np.asarray(embed([question, _CITE.sub("", answer).strip()]), dtype=np.float64)
    return answer_relevance_score(v[0], v[1:2])


# ============================================================================ the LLM judge
class JudgeError(RuntimeError):
    """The judge endpoint failed (HTTP error, unreachable)."""


def parse_verdict(reply: str) -> int | None:
    """A judge's yes/no reply as 1/0, or None when it says neither.

    Accepted: the first standalone ``yes``/``no`` word (any case, any punctuation around it), or a
    JSON-ish ``"verdict": 1`` / ``"verdict": 0``, or a reply that is just ``1`` or ``0``.
    ``"Yes."`` -> 1, ``"no, because ..."`` -> 0, ``"Not sure"`` -> None, ``"yesterday"`` -> None.
    """
    if not isinstance(reply, str):
        raise TypeError(f"reply must be str, got {type(reply).__name__}")
    # TODO(9): try r'"?verdict"?\s*:\s*([01])', then a reply that strips to "0"/"1", then the first \b(yes|no)\b match (case-insensitive); else None (easy, ~10 min)
    raise NotImplementedError("TODO(9)")


FAITH_PROMPT = ("Context:\n{context}\n\nStatement: {statement}\n"
                "Can the statement be inferred from the context? Answer Yes or No.")
RECALL_PROMPT = ("Context:\n{context}\n\nSentence: {statement}\n"
                 "Can this sentence be attributed to the context? Answer Yes or No.")
PRECISION_PROMPT = ("Question: {question}\nReference answer: {reference}\n\nContext:\n{context}\n"
                    "Was this context useful in arriving at the reference answer? Answer Yes or No.")
STATEMENTS_PROMPT = ("Question: {question}\nAnswer: {answer}\n"
                     "Break the answer into short standalone statements, one per line.")
QUESTION_PROMPT = "Answer: {answer}\nWrite one question that this answer answers."
NONCOMMITTAL_PROMPT = "Answer: {answer}\nIs this answer evasive or vague, like 'I don't know'? Answer Yes or No."


class LLMJudge:
    """RAGAS metrics with an LLM judge over any OpenAI-compatible chat endpoint.

    One chat call per verdict (a yes/no question), replies read by :func:`parse_verdict`; unparsed
    verdicts are dropped and counted in ``stats["unparsed"]`` (all dropped -> NaN).

    Args:
        client: an ``openai.OpenAI`` (or anything with ``chat.completions.create``).
        model: the served model name.
        max_tokens: reply length for verdicts (statements and questions get 4x).
        prompt_tokens / budget: ``messages -> int`` counter and the most prompt tokens; when given, the
            context in each prompt is cut (at a word boundary) until the prompt fits - the
            curriculum model has a 256-token window.
        claims: ``"sentences"`` (default: :func:`split_claims`, deterministic) or ``"llm"`` (ask the
            judge for statements, as RAGAS does).
        cache_tag: when set, replies are cached on disk under this model tag (reruns cost nothing).
    """

    def __init__(self, client: Any, model: str, max_tokens: int = 4, temperature: float = 0.0, seed: int = 0,
                 prompt_tokens: Callable[[list[dict]], int] | None = None, budget: int | None = None,
                 claims: str = "sentences", cache_tag: str | None = None) -> None:
        if claims not in ("sentences", "llm"):
            raise ValueError(f"claims must be 'sentences' or 'llm', got {claims!r}")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if budget is not None and prompt_tokens is None:
            raise ValueError("a prompt budget needs a prompt_tokens counter")
        self.client, self.model, self.max_tokens = client, model, max_tokens
        self.temperature, self.seed, self.claims = temperature, seed, claims
        self.prompt_tokens, self.budget = prompt_tokens, budget
        self.cache_tag = cache_tag
        self.stats = {"calls": 0, "unparsed": 0, "trimmed": 0}

    def _messages(self, template: str, context: str = "", **kw: str) -> list[dict[str, str]]:
        msgs = [{"role": "user", "content": template.format(context=context, **kw)}]
        if self.budget is None or self.prompt_tokens(msgs) <= self.budget:
            return msgs
        self.stats["trimmed"] += 1
        words = context.split()
        lo, hi = 0, len(words)
        while lo < hi:  # the most leading words of the context that fit
            mid = (lo + hi + 1) // 2
            trial = [{"role": "user", "content": template.format(context=" ".join(words[:mid]) + " ...", **kw)}]
            lo, hi = (mid, hi) if self.prompt_tokens(trial) <= self.budget else (lo, mid - 1)
        msgs = [{"role": "user", "content": template.format(context=" ".join(words[:lo]) + " ...", **kw)}]
        if self.prompt_tokens(msgs) > self.budget:
            raise ValueError(f"the judge prompt does not fit {self.budget} tokens even without context")
        return msgs

    def ask(self, messages: list[dict[str, str]], max_tokens: int | None = None, seed: int | None = None) -> str:
        """One chat completion; endpoint failures raise :class:`JudgeError`."""
        import openai

        self.stats["calls"] += 1
        seed = self.seed if seed is None else seed
        try:
            if self.cache_tag:
                return _complete(self.client, self.model, messages, self.temperature, seed,
                                 max_tokens or self.max_tokens, self.cache_tag)
            r = self.client.chat.completions.create(model=self.model, messages=messages,
                                                    max_tokens=max_tokens or self.max_tokens,
                                                    temperature=self.temperature,
                                                    seed=seed)
        except openai.OpenAIError as exc:
            raise JudgeError(f"the judge endpoint failed: {exc}") from exc
        return r.choices[0].message.content or ""

    def _verdict(self, template: str, context: str, **kw: str) -> int | None:
        v = parse_verdict(self.ask(self._messages(template, context, **kw)))
        if v is None:
            self.stats["unparsed"] += 1
        return v

    def statements(self, question: str, answer: str) -> list[str]:
        """The answer's claims: its sentences, or (``claims="llm"``) the judge's lines."""
        if self.claims == "sentences":
            return split_claims(answer)
        reply = self.ask(self._messages(STATEMENTS_PROMPT, question=question, answer=answer),
                         max_tokens=4 * self.max_tokens)
        lines = [re.sub(r"^\s*(?:[-*]|\d+[.)])\s*", "", x).strip() for x in reply.splitlines()]
        return [x for x in lines if normalize_tokens(x)]

    def faithfulness(self, question: str, answer: str, contexts: Sequence[str]) -> float:
        """Claims of the answer judged against the joined contexts (NaN policy in the module doc)."""
        contexts = _check_contexts(contexts)
        claims = self.statements(question, answer)
        if not claims:
            return float("nan")
        if not contexts:
            return 0.0
        ctx = "\n".join(contexts)
        v = [self._verdict(FAITH_PROMPT, ctx, statement=c) for c in claims]
        v = [x for x in v if x is not None]
        return faithfulness_score(v)

    def context_recall(self, question: str, contexts: Sequence[str], reference: str) -> float:
        """Sentences of the reference judged attributable to the joined contexts."""
        contexts = _check_contexts(contexts)
        claims = split_claims(reference)
        if not claims:
            return float("nan")
        if not contexts:
            return 0.0
        ctx = "\n".join(contexts)
        v = [x for x in (self._verdict(RECALL_PROMPT, ctx, statement=c) for c in claims) if x is not None]
        return context_recall_score(v)

    def context_precision(self, question: str, contexts: Sequence[str], reference: str) -> float:
        """Each chunk judged useful for the reference answer, scored in retrieved order.
        An unparsed verdict counts as not relevant (the order matters, so it cannot be dropped)."""
        contexts = _check_contexts(contexts)
        if not contexts or not normalize_tokens(reference):
            return float("nan")
        v = [self._verdict(PRECISION_PROMPT, c, question=question, reference=reference) for c in contexts]
        if all(x is None for x in v):
            return float("nan")
        return context_precision_score([x or 0 for x in v])

    def answer_relevance(self, question: str, answer: str, embed: Callable[[list[str]], np.ndarray],
                         n: int = 3) -> float:
        """``n`` questions generated from the answer (seeds ``seed..seed+n-1``), embedded and compared
        with the question; 0 when the judge calls the answer noncommittal."""
        if not normalize_tokens(answer):
            return float("nan")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        gen = [self.ask(self._messages(QUESTION_PROMPT, answer=answer), max_tokens=4 * self.max_tokens,
                        seed=self.seed + i).strip() for i in range(n)]
        gen = [g for g in gen if normalize_tokens(g)]
        noncommittal = self._verdict(NONCOMMITTAL_PROMPT, "", answer=answer) == 1
        if not gen:
            return 0.0 if noncommittal else float("nan")
        v = np.asarray(embed([question, *gen]), dtype=np.float64)
        return answer_relevance_score(v[0], v[1:], noncommittal)


# ============================================================================ retrieval (+ re-ranking)
class CachedCrossEncoder:
    """Lab 7.3's cross-encoder with its scores cached on disk by (model folder, query, text), so the
    ablation's re-ranked cells cost one forward pass per pair per checkout."""

    def __init__(self, model: Any = None, name: str | None = None) -> None:
        from labkit.data import cache_dir

        self._model = model
        self._path = None
        if model is None:
            self._path = rerank_lab().reranker_path()  # trains lab 7.3's re-ranker once if missing
            name = self._path.name
        self.name = name or type(model).__name__
        self.path = cache_dir() / "rag-eval" / f"rerank-{re.sub(r'[^A-Za-z0-9_.-]', '_', self.name)}.json"
        self.scores: dict[str, float] = {}
        if self.path.is_file():
            try:
                self.scores = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self.scores = {}

    @property
    def model(self) -> Any:
        """The CrossEncoder, loaded on first use (a run whose scores are all cached never loads it)."""
        if self._model is None:
            self._model = rerank_lab().load_reranker(self._path)
        return self._model

    @staticmethod
    def _key(query: str, text: str) -> str:
        return hashlib.sha1(f"{query}\x00{text}".encode()).hexdigest()

    def predict(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32, show_progress_bar: bool = False
                ) -> np.ndarray:
        keys = [self._key(q, t) for q, t in pairs]
        todo = [i for i, k in enumerate(keys) if k not in self.scores]
        if todo:
            new = self.model.predict([pairs[i] for i in todo], batch_size=batch_size, show_progress_bar=False)
            for i, s in zip(todo, np.asarray(new, dtype=np.float64).reshape(-1)):
                self.scores[keys[i]] = float(s)
        return np.array([self.scores[k] for k in keys], dtype=np.float64)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.scores), encoding="utf-8")
        os.replace(tmp, self.path)


def dense_search(pipe: Any, question: str, k: int) -> list[Any]:
    """Lab 7.2's ``pipe.search``, but with the question's embedding taken from the embedder's cache
    (questions are embedded once, in one batch, by :func:`evaluate_config`)."""
    q = pipe.check_query(question, k)
    with pipe._lock:
        return pipe.index.search(pipe.embedder.encode([q])[0], k)


def retrieve(pipe: Any, question: str, k: int, reranker: Any = None, depth: int = 10) -> list[Any]:
    """The ``k`` chunks for ``question``: dense top ``k`` (:func:`dense_search`), or, with a
    ``reranker``, the dense top ``max(depth, k)`` re-ordered by lab 7.3's ``rerank`` and cut to ``k``.

    Returns:
        lab 7.2 ``Hit`` objects, best first.

    Raises:
        ValueError: ``k`` or ``depth`` < 1 (and lab 7.2's query checks).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an int >= 1, got {depth!r}")
    # TODO(10): no reranker: dense_search(pipe, question, k). Else cands = dense_search(pipe, question, max(depth, k)); order = rerank_lab().rerank(reranker, question, range(len(cands)), [h.text for h in cands], top_n=k); return the hits in that order (easy, ~10 min)
    raise NotImplementedError("TODO(10)")


def build_pipeline(chunk_size: int = 128, chunker: str = "recursive") -> Any:
    """Lab 7.2's default pipeline at ``chunk_size`` tokens (overlap 3/16 of it: 24 at 128, as 7.2)."""
    return rag_lab().build_default_pipeline(chunker=chunker, chunk_size=chunk_size, overlap=chunk_size * 3 // 16,
                                            collection=f"rag-eval-{chunker}-{chunk_size}")


def _embed_fn(pipe: Any) -> Callable[[list[str]], np.ndarray]:
    return lambda xs: pipe.embedder.encode(list(xs))


# ============================================================================ evaluating a configuration (given)
METRICS = ("context_precision", "context_recall", "faithfulness", "answer_relevance")


def evaluate_config(pipe: Any, items: Sequence[EvalItem], k: int, reranker: Any = None, depth: int = 10,
                    threshold: float = 0.5) -> dict[str, Any]:
    """Judge-free RAGAS metrics of one configuration: retrieve, answer with lab 7.2's extractive
    answerer, score against each item's gold context.

    Returns:
        ``{metric: mean, metric + "_nan": NaN count, "hit": share of questions whose evidence chunk
        was retrieved, "rows": per-question dicts}``.
    """
    rag = rag_lab()
    embed = _embed_fn(pipe)
    qvecs = embed([it.question for it in items])  # one batch, cached on disk for the next run
    found = []
    for it, qvec in zip(items, qvecs):
        hits = retrieve(pipe, it.question, k, reranker, depth)
        answer, _ = rag.extractive_answer(qvec, hits, embed)
        found.append((hits, "" if answer == rag.NO_ANSWER else answer))
    embed([_CITE.sub("", a).strip() for _, a in found if a])  # answers in one batch too
    rows = []
    for it, (hits, answer) in zip(items, found):
        ctx = [h.text for h in hits]
        support = rag.supporting_chunks(pipe, {"id": it.id, "doc_id": it.doc_id, "evidence": it.evidence})
        rows.append({"id": it.id, "answer": answer, "hit": any(h.chunk_id in support for h in hits),
                     "context_precision": context_precision_proxy(ctx, it.gold_context, threshold),
                     "context_recall": context_recall_proxy(it.gold_context, ctx, threshold),
                     "faithfulness": faithfulness_proxy(answer, ctx, threshold),
                     "answer_relevance": answer_relevance_proxy(it.question, answer, embed)})
    out: dict[str, Any] = {"rows": rows, "hit": float(np.mean([r["hit"] for r in rows]))}
    for m in METRICS:
        out[m], out[m + "_nan"] = aggregate([r[m] for r in rows])
    return out


def run_ablation(items: Sequence[EvalItem], chunk_sizes: Sequence[int] = (64, 128), ks: Sequence[int] = (1, 3, 5),
                 rerank: Sequence[bool] = (False, True), depth: int = 10, reranker: Any = None,
                 rerank_sizes: Sequence[int] | None = None, log: Callable[[str], None] = print
                 ) -> list[dict[str, Any]]:
    """Every (chunk size, k, re-ranker on/off) cell: one row of metrics each. ``rerank_sizes``
    limits the re-ranked cells to those chunk sizes (default: all)."""
    rows = []
    for cs in chunk_sizes:
        pipe = build_pipeline(cs)
        for rr in rerank:
            if rr and rerank_sizes is not None and cs not in rerank_sizes:
                continue
            if rr and reranker is None:
                reranker = CachedCrossEncoder()
            for k in ks:
                t = time.perf_counter()
                res = evaluate_config(pipe, items, k, reranker if rr else None, depth)
                row = {"chunk_size": cs, "chunks": pipe.n_chunks, "k": k, "rerank": rr, "hit": res["hit"],
                       **{m: res[m] for m in METRICS}, **{m + "_nan": res[m + "_nan"] for m in METRICS},
                       "seconds": time.perf_counter() - t}
                rows.append(row)
                log(f"  chunk {cs:>3} k {k:>2} rerank {'on ' if rr else 'off'}: " + "  ".join(
                    f"{m} {row[m]:.3f}" for m in ("hit", *METRICS)))
            if rr and isinstance(reranker, CachedCrossEncoder):
                reranker.save()
    return rows


def ablation_table(rows: Sequence[dict[str, Any]]) -> str:
    """The ablation as a markdown table (NaN counts in brackets when any)."""
    head = "| chunk size | chunks | k | re-rank | hit | context precision | context recall | faithfulness | answer relevance |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        cells = [f"{r[m]:.3f}" + (f" ({r[m + '_nan']} NaN)" if r[m + "_nan"] else "") for m in METRICS]
        lines.append(f"| {r['chunk_size']} | {r['chunks']} | {r['k']} | {'on' if r['rerank'] else 'off'} | "
                     f"{r['hit']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_ablation(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    from labkit.plots import plt, savefig

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6), sharex=True)
    for ax, m in zip(axes, METRICS):
        for cs in sorted({r["chunk_size"] for r in rows}):
            for rr, ls in ((False, "-"), (True, "--")):
                sel = [r for r in rows if r["chunk_size"] == cs and r["rerank"] == rr]
                if sel:
                    ax.plot([r["k"] for r in sel], [r[m] for r in sel], ls, marker="o",
                            label=f"chunk {cs}, re-rank {'on' if rr else 'off'}")
        ax.set_title(m.replace("_", " "))
        ax.set_xlabel("k (chunks retrieved)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Judge-free RAGAS metrics over chunk size x k x re-ranker (lab 7.2 pipeline, extractive answers)")
    fig.tight_layout()
    return savefig(fig, path)


# ============================================================================ LLM generation (given)
def curriculum_prompt_counter() -> Callable[[list[dict]], int]:
    """Prompt tokens of chat messages as the curriculum model's server counts them (BOS + ChatML)."""
    from labkit import curriculum_model_path

    return rag_lab().hf_chat_token_counter(str(curriculum_model_path("main") / "hf"))


def curriculum_tag() -> str:
    """The curriculum model's cache folder name (``main-<content hash>``): the model's identity."""
    from labkit import curriculum_model_path

    return curriculum_model_path("main").name


def _generation_cache() -> Path:
    from labkit.data import cache_dir

    return cache_dir() / "rag-eval" / "generations"


def _complete(client: Any, model: str, messages: list[dict], temperature: float, seed: int, max_tokens: int,
              tag: str) -> str:
    """One chat completion, cached on disk by (tag, messages, temperature, seed, max_tokens): the
    self-test and the tests share generations."""
    key = hashlib.sha256(json.dumps([tag, model, messages, temperature, seed, max_tokens]).encode()).hexdigest()
    path = _generation_cache() / f"{key[:24]}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))["text"]
    r = client.chat.completions.create(model=model, messages=messages, temperature=temperature, seed=seed,
                                       max_tokens=max_tokens)
    text = r.choices[0].message.content or ""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"text": text}), encoding="utf-8")
    os.replace(tmp, path)
    return text


def generate_rag_answers(pipe: Any, items: Sequence[EvalItem], client: Any, model: str, temperature: float,
                         k: int = 3, max_tokens: int = 24, seed: int = 0, tag: str | None = None,
                         prompt_tokens: Callable[[list[dict]], int] | None = None,
                         context_tokens: int = CONTEXT_TOKENS) -> list[tuple[str, list[str]]]:
    """LLM answers through lab 7.2's budgeted prompt: ``[(answer, contexts the model saw), ...]``.

    Question i uses seed ``seed + i``; ``tag`` names the model in the cache key (default: the
    curriculum model's content-hashed folder name, so a retrained model never reads stale replies).
    """
    if not 0.0 <= temperature <= 2.0:
        raise ValueError(f"temperature must lie in [0, 2] (the OpenAI range), got {temperature}")
    rag = rag_lab()
    tag = tag or curriculum_tag()
    counter = prompt_tokens or curriculum_prompt_counter()
    out = []
    pipe.embedder.encode([it.question for it in items])
    for i, it in enumerate(items):
        hits = dense_search(pipe, it.question, k)
        messages, used = rag.build_prompt(it.question, hits, counter, context_tokens - max_tokens)
        text = _complete(client, model, messages, temperature, seed + i, max_tokens, tag)
        out.append((text, [h.text for h in used]))
    return out


def temperature_sweep(pipe: Any, items: Sequence[EvalItem], client: Any, model: str,
                      temperatures: Sequence[float] = (0.3, 1.0, 1.7), seeds: Sequence[int] = (0,),
                      **kw: Any) -> list[dict[str, float]]:
    """Judge-free faithfulness (binary and soft) of LLM answers at each temperature, averaged over
    questions and seeds."""
    rows = []
    for t in temperatures:
        hard, soft = [], []
        for s in seeds:
            for answer, ctx in generate_rag_answers(pipe, items, client, model, t, seed=1000 * s, **kw):
                hard.append(faithfulness_proxy(answer, ctx))
                soft.append(faithfulness_proxy(answer, ctx, soft=True))
        (h, hn), (sm, _) = aggregate(hard), aggregate(soft)
        rows.append({"temperature": t, "faithfulness": h, "faithfulness_soft": sm, "nan": hn, "n": len(hard)})
    return rows


# ============================================================================ self-test
def selftest(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(1)
    seed_everything(0)
    t0, c0 = time.perf_counter(), time.process_time()
    ok = True

    def check(cond: bool, msg: str) -> None:
        nonlocal ok
        print(("  [ok] " if cond else "  [FAIL] ") + msg)
        ok &= bool(cond)

    items = load_eval_set()
    print(f"eval set: {len(items)} questions over {len({i.doc_id for i in items})} documents "
          f"(39 from lab 7.2 + {len(items) - 39} from eval_questions.json)")
    check(len(items) >= 50, "at least 50 questions with gold contexts")

    print("\nformulas on hand-computed cases:")
    check(abs(context_precision_score([0, 1, 1]) - (1 / 2 + 2 / 3) / 2) < 1e-12, "context precision [0,1,1] = 0.5833")
    check(faithfulness_score([1, 0, 1]) == 2 / 3 and math.isnan(faithfulness_score([])), "faithfulness 2/3, [] -> NaN")
    check(support_score("The cat sat.", ["a cat"]) == 0.5, "support('The cat sat.', ['a cat']) = 1/2")

    print("\nablation (judge-free metrics, extractive answers):")
    sizes, ks = ((64, 128, 256), (1, 3, 5, 10)) if args.full else ((64, 128), (1, 3, 5))
    # small mode re-ranks only the 128-token cells: a cold run scores 53 x 8 (query, chunk) pairs with
    # the cross-encoder (then cached in .cache/rag-eval/)
    rows = run_ablation(items, sizes, ks, (False, True), depth=20 if args.full else 8,
                        rerank_sizes=None if args.full else (128,))
    table = ablation_table(rows)
    print(table)
    out = HERE / "outputs"
    out.mkdir(exist_ok=True)
    (out / "ablation.md").write_text(table + "\n", encoding="utf-8")
    (out / "ablation.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    print("figure:", plot_ablation(rows, HERE / "figures" / "ablation.png"))
    for cs in sizes:
        for rr in (False, True):
            rec = [r["context_recall"] for r in rows if r["chunk_size"] == cs and r["rerank"] == rr]
            if not rec:
                continue
            check(all(b >= a - 1e-12 for a, b in zip(rec, rec[1:])) and rec[-1] > rec[0],
                  f"chunk {cs}, re-rank {'on' if rr else 'off'}: context recall rises with k "
                  + " -> ".join(f"{x:.3f}" for x in rec))

    from labkit.llm_server import serve_in_thread

    print("\nthe curriculum model as the generator (judge-free faithfulness vs temperature):")
    pipe = build_pipeline(128)
    gen_items = items if args.full else items[::3]
    with serve_in_thread(model="main") as ep:
        client = ep.client()
        sweep = temperature_sweep(pipe, gen_items, client, ep.model, seeds=(0, 1) if args.full else (0,))
        print("| temperature | faithfulness (claims >= 0.5 supported) | mean support (soft) | answers | NaN |")
        print("|---|---|---|---|---|")
        for r in sweep:
            print(f"| {r['temperature']} | {r['faithfulness']:.3f} | {r['faithfulness_soft']:.3f} | {r['n']} | "
                  f"{r['nan']} |")
        soft = [r["faithfulness_soft"] for r in sweep]
        check(soft[0] > soft[-1], "faithfulness (soft) falls from the lowest to the highest temperature")
        ans, ctx = generate_rag_answers(pipe, gen_items[:1], client, ep.model, 0.3)[0]
        print(f"  e.g. Q: {gen_items[0].question}\n       A: {ans!r}")

        print("\nthe curriculum model as the LLM judge (RAGAS prompts, 3 questions, k=3):")
        judge = LLMJudge(client, ep.model, max_tokens=4, prompt_tokens=curriculum_prompt_counter(),
                         budget=CONTEXT_TOKENS - 16, cache_tag=curriculum_tag())
        embed = _embed_fn(pipe)
        jrows = []
        for it in items[:3]:
            hits = dense_search(pipe, it.question, 3)
            ctx = [h.text for h in hits]
            answer = rag_lab().extractive_answer(embed([it.question])[0], hits, embed)[0]
            jrows.append({"faithfulness": judge.faithfulness(it.question, answer, ctx),
                          "answer_relevance": judge.answer_relevance(it.question, answer, embed, n=2),
                          "context_precision": judge.context_precision(it.question, ctx, it.reference),
                          "context_recall": judge.context_recall(it.question, ctx, it.gold_context)})
        for m in METRICS:
            mean, nan = aggregate([r[m] for r in jrows])
            print(f"  {m:<18} {mean:.3f}  (NaN: {nan})")
        print(f"  judge calls {judge.stats['calls']}, unparsed verdicts {judge.stats['unparsed']}, "
              f"contexts trimmed to fit {judge.stats['trimmed']}")
        check(judge.stats["calls"] > 0, "every judge prompt fitted the 256-token window (no 400)")

    print(f"\nself-test: {time.perf_counter() - t0:.1f} s wall, {time.process_time() - c0:.1f} s CPU (this process)")
    print("ALL CHECKS PASSED" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="chunk 64/128/256 x k 1/3/5/10, re-rank depth 20, all "
                    "questions through the generator with 2 seeds")
    return selftest(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

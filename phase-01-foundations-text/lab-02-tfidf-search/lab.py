# Generated from solution.py by `make labs` (labkit/labgen.py). Fill in the TODOs.
"""Lab 1.2: bag-of-words, TF-IDF and BM25 search from scratch (NumPy + SciPy sparse).

What is built here, in order:

* :func:`tokenize` - lowercase + the regex ``(?u)\\b\\w\\w+\\b`` (scikit-learn's default
  ``token_pattern``), so our vocabulary is exactly scikit-learn's.
* :func:`count_matrix` - the sparse document-term count matrix (``scipy.sparse`` CSR).
* :func:`compute_idf`, :func:`l2_normalize_rows` and :class:`TfidfVectorizer` - raw or
  sublinear TF, smoothed IDF, L2 rows; the numbers equal
  ``sklearn.feature_extraction.text.TfidfVectorizer`` with the same options.
* :class:`TfidfSearchIndex` and :func:`top_k` - cosine search = one sparse dot product.
* :func:`bm25_idf` and :class:`BM25` - Okapi BM25 (k1, b), the same numbers as
  ``rank_bm25.BM25Okapi`` (including its epsilon floor for negative IDF).
* :func:`ndcg_at_k` and :func:`average_precision` - ranking metrics, evaluated on the
  Cranfield collection (1,400 aeronautics abstracts, 225 queries, graded judgments).

References: Manning, Raghavan & Schuetze, *Introduction to Information Retrieval*
(2008), ch. 6-8; Robertson & Zaragoza, *The Probabilistic Relevance Framework: BM25 and
Beyond* (2009); Jaervelin & Kekaelaeinen, *Cumulated gain-based evaluation of IR
techniques* (2002).

Run ``python solution.py`` for the self-test (small mode), ``--full`` for more latency
queries and repeats, and ``python solution.py search "query" --top 5`` for the search CLI.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from labkit import read_text

HERE = Path(__file__).resolve().parent
TOKEN_RE = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default token_pattern


# ----------------------------------------------------------------------------------------
# 1. Tokens and counts
# ----------------------------------------------------------------------------------------
def tokenize(text: str) -> list[str]:
    """Split ``text`` into lowercase word tokens of two or more word characters.

    Identical to scikit-learn's default analyzer (``lowercase=True``,
    ``token_pattern=r"(?u)\\b\\w\\w+\\b"``): lowercase first, then keep every regex match.
    Single characters ("a", "I", "5") and punctuation are dropped.

    Raises:
        TypeError: ``text`` is not a ``str``.
    """
    if not isinstance(text, str):
        raise TypeError(f"tokenize expects a str, got {type(text).__name__}")
    # TODO(1): lowercase, then return every match of TOKEN_RE (easy, ~5 min)
    raise NotImplementedError("TODO(1)")


def _check_docs(docs: object, what: str = "docs") -> list[str]:
    if isinstance(docs, str) or not isinstance(docs, Iterable):
        raise TypeError(f"{what} must be a list of strings, not a single {type(docs).__name__}")
    docs = list(docs)
    for i, d in enumerate(docs):
        if not isinstance(d, str):
            raise TypeError(f"{what}[{i}] is a {type(d).__name__}, expected str")
    return docs


def count_matrix(token_lists: Sequence[Sequence[str]], vocabulary: dict[str, int]) -> sp.csr_matrix:
    """The bag-of-words count matrix: ``X[i, j]`` = how often term ``j`` occurs in doc ``i``.

    Args:
        token_lists: one token list per document (``n_docs`` lists).
        vocabulary: term -> column index in ``range(len(vocabulary))``; tokens not in it
            are ignored (out-of-vocabulary words at query time).

    Returns:
        ``scipy.sparse.csr_matrix`` of shape ``(n_docs, len(vocabulary))``, dtype int64,
        with sorted column indices and no duplicate entries (canonical CSR).
    """
    # TODO(2): build CSR arrays directly: per document count its in-vocabulary terms, append (column, count) pairs to indices/data and the running total to indptr (medium, ~20 min)
    raise NotImplementedError("TODO(2)")


# ----------------------------------------------------------------------------------------
# 2. TF-IDF
# ----------------------------------------------------------------------------------------
def compute_idf(df: np.ndarray, n_docs: int, smooth_idf: bool = True) -> np.ndarray:
    """Inverse document frequency, scikit-learn's convention (natural log, "+1").

    * ``smooth_idf=True``:  ``idf = ln((1 + n_docs) / (1 + df)) + 1`` (as if one extra
      document contained every term once, so no division by zero);
    * ``smooth_idf=False``: ``idf = ln(n_docs / df) + 1``.

    The trailing ``+1`` keeps terms that occur in every document from being zeroed out.

    Args:
        df: shape ``(vocab_size,)``, document frequency of each term (>= 1 when not smoothed).
        n_docs: number of documents the frequencies were counted over.

    Returns:
        float64 array of shape ``(vocab_size,)``.

    Raises:
        ValueError: ``n_docs < 1``, a negative ``df``, ``df > n_docs``, or ``df == 0``
            without smoothing.
    """
    df = np.asarray(df, dtype=np.float64)
    if n_docs < 1:
        raise ValueError(f"n_docs must be >= 1, got {n_docs}")
    if df.size and (df.min() < 0 or df.max() > n_docs):
        raise ValueError(f"document frequencies must lie in [0, n_docs={n_docs}]")
    if not smooth_idf and df.size and df.min() == 0:
        raise ValueError("df == 0 with smooth_idf=False would divide by zero")
    # TODO(3): the two formulas in the docstring (natural log, then + 1) (easy, ~10 min)
    raise NotImplementedError("TODO(3)")


def l2_normalize_rows(X: sp.csr_matrix) -> sp.csr_matrix:
    """Scale every row of a CSR matrix to unit Euclidean length (a new matrix).

    Rows that are all zero (a document with no known term) stay all zero: no NaN.
    After this, the cosine similarity of two rows is just their dot product.

    Args:
        X: ``scipy.sparse`` matrix of shape ``(n_rows, n_cols)``.

    Returns:
        float64 CSR matrix of the same shape and sparsity pattern.
    """
    X = sp.csr_matrix(X, dtype=np.float64, copy=True)
    # TODO(4): per-row norms from X.data (np.add.reduceat or X.multiply(X).sum(1)), divide each stored value by its row's norm; leave zero rows alone (easy, ~10 min)
    raise NotImplementedError("TODO(4)")


def l1_normalize_rows(X: sp.csr_matrix) -> sp.csr_matrix:
    """Scale every row to unit L1 norm (sum of absolute values); zero rows stay zero."""
    X = sp.csr_matrix(X, dtype=np.float64, copy=True)
    s = np.asarray(abs(X).sum(axis=1)).ravel()
    s[s == 0.0] = 1.0
    X.data /= np.repeat(s, np.diff(X.indptr))
    return X


class TfidfVectorizer:
    """TF-IDF document vectors, numerically equal to scikit-learn's ``TfidfVectorizer``.

    ``weight(t, d) = tf(t, d) * idf(t)``, then each row is normalised, where
    ``tf`` is the raw count, or ``1 + ln(count)`` with ``sublinear_tf=True`` (0 stays 0),
    and ``idf`` is :func:`compute_idf`. Tokens come from :func:`tokenize`; the vocabulary
    is sorted alphabetically (so column ``j`` is the same term as in scikit-learn).

    Args:
        sublinear_tf: use ``1 + ln(tf)`` instead of the raw count.
        smooth_idf: add one to document frequencies (see :func:`compute_idf`).
        norm: ``"l2"`` (cosine-ready rows), ``"l1"`` or ``None``.
        min_df: drop terms that occur in fewer than ``min_df`` documents (an int >= 1).

    Attributes (after :meth:`fit`):
        vocabulary_: ``dict[str, int]`` term -> column.
        idf_: float64 array of shape ``(vocab_size,)``.
        df_: int64 array of shape ``(vocab_size,)``, document frequencies.
        n_docs_: number of training documents.

    Raises:
        ValueError: unknown ``norm``, ``min_df < 1``, an empty corpus, a vocabulary that
            ends up empty, or ``transform`` before ``fit``.
        TypeError: documents that are not strings (or a single string instead of a list).
    """

    def __init__(self, sublinear_tf: bool = False, smooth_idf: bool = True,
                 norm: str | None = "l2", min_df: int = 1) -> None:
        if norm not in ("l2", "l1", None):
            raise ValueError(f"norm must be 'l2', 'l1' or None, got {norm!r}")
        if isinstance(min_df, bool) or not isinstance(min_df, (int, np.integer)) or min_df < 1:
            raise ValueError(f"min_df must be an int >= 1 (a document count), got {min_df!r}")
        self.sublinear_tf = bool(sublinear_tf)
        self.smooth_idf = bool(smooth_idf)
        self.norm = norm
        self.min_df = min_df
        self.vocabulary_: dict[str, int] | None = None
        self.idf_: np.ndarray | None = None

    # -- fitting --------------------------------------------------------------------------
    def _fit_tokens(self, token_lists: list[list[str]]) -> sp.csr_matrix:
        """Learn vocabulary + IDF from token lists; returns the counts over that vocabulary."""
        if not token_lists:
            raise ValueError("cannot fit on an empty list of documents")
        terms = sorted({t for tokens in token_lists for t in tokens})
        full_vocab = {t: j for j, t in enumerate(terms)}
        counts = count_matrix(token_lists, full_vocab)
        # df(t) = number of rows with a stored entry in column t (CSR stores no zeros).
        df = np.bincount(counts.indices, minlength=len(terms))
        keep = np.flatnonzero(df >= self.min_df)
        if keep.size == 0:
            raise ValueError(f"empty vocabulary: no term occurs in >= min_df={self.min_df} documents"
                             " (or the documents contain no tokens of 2+ word characters)")
        self.vocabulary_ = {terms[j]: i for i, j in enumerate(keep)}
        self.df_ = df[keep].astype(np.int64)
        self.n_docs_ = len(token_lists)
        self.idf_ = compute_idf(self.df_, self.n_docs_, self.smooth_idf)
        return counts[:, keep]

    def fit(self, docs: list[str]) -> TfidfVectorizer:
        """Learn the vocabulary and IDF from ``docs`` (a list of ``n_docs`` strings)."""
        docs = _check_docs(docs)
        self._fit_tokens([tokenize(d) for d in docs])
        return self

    def fit_transform(self, docs: list[str]) -> sp.csr_matrix:
        """``fit(docs).transform(docs)``, tokenizing each document only once."""
        docs = _check_docs(docs)
        counts = self._fit_tokens([tokenize(d) for d in docs])
        return self._weight(counts)

    # -- transforming ---------------------------------------------------------------------
    def _weight(self, counts: sp.csr_matrix) -> sp.csr_matrix:
        """Counts (n_docs, vocab) -> TF-IDF rows (n_docs, vocab), float64 CSR."""
        assert self.idf_ is not None
        X = sp.csr_matrix(counts, dtype=np.float64, copy=True)
        X.sort_indices()
        # TODO(5): work on X.data (the stored non-zeros): optional 1 + ln(tf), multiply by idf_ of each entry's column (X.indices), then apply self.norm (easy, ~10 min)
        raise NotImplementedError("TODO(5)")

    def transform(self, docs: list[str]) -> sp.csr_matrix:
        """TF-IDF rows for ``docs``: float64 CSR of shape ``(len(docs), vocab_size)``.

        Terms not seen during ``fit`` are ignored. Raises ValueError before ``fit``.
        """
        if self.vocabulary_ is None:
            raise ValueError("this TfidfVectorizer is not fitted yet: call fit(docs) first")
        docs = _check_docs(docs)
        return self._weight(count_matrix([tokenize(d) for d in docs], self.vocabulary_))

    def get_feature_names_out(self) -> np.ndarray:
        """The vocabulary as an array of terms, in column order."""
        if self.vocabulary_ is None:
            raise ValueError("this TfidfVectorizer is not fitted yet: call fit(docs) first")
        return np.array(sorted(self.vocabulary_, key=self.vocabulary_.__getitem__), dtype=object)


# ----------------------------------------------------------------------------------------
# 3. Search
# ----------------------------------------------------------------------------------------
def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores, best first; ties broken by the lower index.

    Uses ``np.argpartition`` (O(n)) and sorts only the ``k`` winners (O(k log k)),
    instead of sorting all ``n`` scores.

    Args:
        scores: shape ``(n,)``, any float dtype. ``+inf`` and ``-inf`` are ordinary values
            (``-inf`` is how a caller rules a document out: it can only come last).
        k: how many to return; values above ``n`` return all ``n``.

    Returns:
        int64 array of shape ``(min(k, n),)``.

    Raises:
        ValueError: ``k < 1``, ``scores`` is not one-dimensional, or a score is NaN (NaN has
            no place in an ordering; ``np.partition`` would treat it as the largest value).
    """
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {scores.shape}")
    if np.issubdtype(scores.dtype, np.floating) and np.isnan(scores).any():
        raise ValueError(f"scores contain NaN at index {int(np.flatnonzero(np.isnan(scores))[0])}: "
                         "a NaN cannot be ranked (a 0/0 in the scoring?)")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    n = scores.shape[0]
    k = min(int(k), n)
    # TODO(6): argpartition for the k best candidates, then order them by (-score, index); handle ties at the k-th score so the lowest indices win (easy, ~10 min)
    raise NotImplementedError("TODO(6)")


def _hits(scores: np.ndarray, candidates: np.ndarray, k: int) -> list[tuple[int, float]]:
    """``(doc_index, score)`` of the best ``k`` among ``candidates`` (sorted doc indices)."""
    if candidates.size == 0:
        top_k(scores, k)  # still validates k
        return []
    best = candidates[top_k(scores[candidates], k)]  # candidates ascending: ties keep the lower index
    return [(int(i), float(scores[i])) for i in best]


class TfidfSearchIndex:
    """Cosine-similarity search over L2-normalised TF-IDF rows.

    ``fit`` stores the document matrix in CSC form (column = term = posting list), so a
    query touches only the columns of its own terms: ``scores = X[:, q_terms] @ q_weights``.

    Args: as :class:`TfidfVectorizer` (``norm`` is always ``"l2"`` here).
    """

    def __init__(self, sublinear_tf: bool = False, smooth_idf: bool = True, min_df: int = 1) -> None:
        self.vectorizer = TfidfVectorizer(sublinear_tf=sublinear_tf, smooth_idf=smooth_idf,
                                          norm="l2", min_df=min_df)
        self.X_csc: sp.csc_matrix | None = None

    def fit(self, docs: list[str]) -> TfidfSearchIndex:
        """Index ``docs`` (list of ``n_docs`` strings)."""
        self.X_csc = self.vectorizer.fit_transform(docs).tocsc()
        return self

    @property
    def n_docs(self) -> int:
        return 0 if self.X_csc is None else self.X_csc.shape[0]

    def get_scores(self, query: str) -> np.ndarray:
        """Cosine similarity of ``query`` with every document: float64 array ``(n_docs,)``."""
        if self.X_csc is None:
            raise ValueError("index is empty: call fit(docs) first")
        q = self.vectorizer.transform([query])  # (1, vocab), unit length (or all zero)
        if q.nnz == 0:
            return np.zeros(self.n_docs)
        return np.asarray(self.X_csc[:, q.indices] @ q.data).ravel()

    def search(self, query: str, k: int = 10) -> list[tuple[int, float]]:
        """The ``k`` best ``(doc_index, cosine)`` pairs, best first.

        Only documents that share at least one term with the query are hits (cosine > 0, as
        every TF-IDF weight is positive), so the list can be shorter than ``k``; an empty or
        all-unknown query returns ``[]`` rather than ``k`` arbitrary zero-score documents."""
        scores = self.get_scores(query)
        return _hits(scores, np.flatnonzero(scores > 0), k)


# ----------------------------------------------------------------------------------------
# 4. BM25
# ----------------------------------------------------------------------------------------
def bm25_idf(df: np.ndarray, n_docs: int, epsilon: float = 0.25, variant: str = "okapi") -> np.ndarray:
    """BM25 inverse document frequency.

    * ``variant="okapi"`` (what ``rank_bm25.BM25Okapi`` does):
      ``idf = ln((N - df + 0.5) / (df + 0.5))``. This is negative for terms in more than
      half the documents, so every negative value is replaced by the floor
      ``epsilon * mean(idf)``, the mean taken over *all* terms before flooring.
    * ``variant="lucene"`` (Lucene / Elasticsearch): ``idf = ln(1 + (N - df + 0.5) / (df + 0.5))``,
      always positive, no floor needed.

    Args:
        df: shape ``(vocab_size,)`` document frequencies (each in ``1..n_docs``).
        n_docs: ``N``, the number of indexed documents.
        epsilon: floor factor for ``"okapi"``.

    Returns:
        float64 array of shape ``(vocab_size,)``.

    Raises:
        ValueError: unknown variant, ``n_docs < 1``, or df outside ``[1, n_docs]``.
    """
    df = np.asarray(df, dtype=np.float64)
    if variant not in ("okapi", "lucene"):
        raise ValueError(f"variant must be 'okapi' or 'lucene', got {variant!r}")
    if n_docs < 1:
        raise ValueError(f"n_docs must be >= 1, got {n_docs}")
    if df.size and (df.min() < 1 or df.max() > n_docs):
        raise ValueError(f"document frequencies must lie in [1, n_docs={n_docs}]")
    if variant == "lucene":
        return np.log1p((n_docs - df + 0.5) / (df + 0.5))
    # TODO(7): Robertson-Sparck Jones idf, then replace the negative entries by epsilon * (mean of all idf values) (medium, ~15 min)
    raise NotImplementedError("TODO(7)")


class BM25:
    """Okapi BM25 ranking; equals ``rank_bm25.BM25Okapi`` for the same tokens.

    ``score(q, d) = sum over query tokens t of idf(t) * f(t,d) (k1 + 1) /
    (f(t,d) + k1 (1 - b + b |d| / avgdl))`` where ``f`` is the count of ``t`` in ``d``,
    ``|d|`` the token count of ``d`` and ``avgdl`` the mean token count. A query term
    repeated twice counts twice (as in rank_bm25).

    Since everything but the query is fixed at index time, ``fit`` precomputes the
    per-(doc, term) contribution matrix ``W`` (same sparsity as the counts), and scoring is
    a sum of a few columns of ``W``.

    Args:
        k1: term-frequency saturation (0 = binary; large = raw counts). Typical 1.2-2.0.
        b: length normalisation strength in ``[0, 1]`` (0 = none, 1 = full).
        epsilon: negative-IDF floor factor (see :func:`bm25_idf`).
        idf_variant: ``"okapi"`` (rank_bm25) or ``"lucene"``.

    Raises:
        ValueError: ``k1`` negative, NaN or inf; ``b`` outside ``[0, 1]`` (NaN included);
            ``epsilon`` NaN or inf; an empty corpus; or scoring before ``fit``.
    """

    def __init__(self, k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25,
                 idf_variant: str = "okapi") -> None:
        if not (math.isfinite(k1) and k1 >= 0):  # k1 < 0 alone lets NaN through: every score NaN
            raise ValueError(f"k1 must be a finite number >= 0, got {k1}")
        if not 0.0 <= b <= 1.0:
            raise ValueError(f"b must be in [0, 1], got {b}")
        if not math.isfinite(epsilon):
            raise ValueError(f"epsilon must be a finite number, got {epsilon}")
        if idf_variant not in ("okapi", "lucene"):
            raise ValueError(f"idf_variant must be 'okapi' or 'lucene', got {idf_variant!r}")
        self.k1, self.b, self.epsilon, self.idf_variant = float(k1), float(b), float(epsilon), idf_variant
        self.W_csc: sp.csc_matrix | None = None
        self.vocabulary_: dict[str, int] | None = None

    def fit(self, docs: list[str] | list[list[str]]) -> BM25:
        """Index ``docs``: strings (tokenized with :func:`tokenize`) or token lists."""
        if isinstance(docs, str) or not isinstance(docs, Iterable):
            raise TypeError("docs must be a list of strings or a list of token lists")
        token_lists = [tokenize(d) if isinstance(d, str) else list(d) for d in docs]
        if not token_lists:
            raise ValueError("cannot index an empty list of documents")
        terms = sorted({t for tokens in token_lists for t in tokens})
        self.vocabulary_ = {t: j for j, t in enumerate(terms)}
        counts = count_matrix(token_lists, self.vocabulary_).astype(np.float64)
        self.doc_len_ = np.array([len(t) for t in token_lists], dtype=np.float64)  # (n_docs,)
        self.avgdl_ = float(self.doc_len_.mean())
        if self.avgdl_ == 0:
            raise ValueError("every document is empty after tokenization")
        self.df_ = np.bincount(counts.indices, minlength=len(terms))
        self.idf_ = bm25_idf(self.df_, len(token_lists), self.epsilon, self.idf_variant)
        # TODO(8): turn counts.data (tf) into idf * tf (k1 + 1) / (tf + k1 (1 - b + b dl / avgdl)); each stored value needs its row's doc length and its column's idf (medium, ~20 min)
        raise NotImplementedError("TODO(8)")
        return self

    @property
    def n_docs(self) -> int:
        return 0 if self.W_csc is None else self.W_csc.shape[0]

    def get_scores(self, query: str | list[str]) -> np.ndarray:
        """BM25 score of every document for ``query``: float64 array of shape ``(n_docs,)``.

        ``query`` is a string (tokenized with :func:`tokenize`) or a token list. Unknown
        terms contribute nothing.
        """
        cols, weights = self._query_columns(query)
        if cols.size == 0:
            return np.zeros(self.n_docs)
        return np.asarray(self.W_csc[:, cols] @ weights).ravel()

    def _query_columns(self, query: str | list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Vocabulary columns of the query's known terms and how often each occurs."""
        if self.W_csc is None or self.vocabulary_ is None:
            raise ValueError("BM25 index is empty: call fit(docs) first")
        tokens = tokenize(query) if isinstance(query, str) else list(query)
        qcounts = Counter(self.vocabulary_[t] for t in tokens if t in self.vocabulary_)
        cols = np.fromiter(qcounts.keys(), dtype=np.int64, count=len(qcounts))
        return cols, np.fromiter(qcounts.values(), dtype=np.float64, count=len(qcounts))

    def search(self, query: str, k: int = 10) -> list[tuple[int, float]]:
        """The ``k`` best ``(doc_index, score)`` pairs, best first.

        Only documents containing at least one query term are hits (so the list can be
        shorter than ``k``); an empty or all-unknown query returns ``[]``."""
        cols, weights = self._query_columns(query)
        if cols.size == 0:
            return _hits(np.zeros(self.n_docs), np.empty(0, dtype=np.int64), k)
        sub = self.W_csc[:, cols]  # (n_docs, n_query_terms)
        scores = np.asarray(sub @ weights).ravel()
        has_term = np.zeros(self.n_docs, dtype=bool)
        has_term[sub.indices] = True  # rows stored in the query's columns (a mask: no sort)
        return _hits(scores, np.flatnonzero(has_term), k)


# ----------------------------------------------------------------------------------------
# 5. Ranking metrics
# ----------------------------------------------------------------------------------------
def ndcg_at_k(ranking: Sequence[int], gains: dict[int, float], k: int = 10) -> float:
    """Normalised discounted cumulative gain of the first ``k`` results.

    ``DCG@k = sum_{i=1..k} gain(ranking[i]) / log2(i + 1)`` with *linear* gains (the same
    as ``sklearn.metrics.ndcg_score``), and ``nDCG@k = DCG@k / IDCG@k`` where IDCG uses the
    ``k`` largest gains of all judged documents in ideal order.

    Args:
        ranking: document ids, best first (may be longer or shorter than ``k``).
        gains: doc id -> gain (>= 0); documents not in it have gain 0.
        k: cut-off, >= 1.

    Returns:
        a float in ``[0, 1]``; 0.0 when no document has positive gain.

    Raises:
        ValueError: ``k < 1``, a negative or NaN gain, or a document id that appears twice in
            ``ranking`` (it would collect its gain twice and push nDCG above 1).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if any(not g >= 0 for g in gains.values()):
        raise ValueError("gains must be >= 0 and not NaN (map 'not relevant' to 0 before calling)")
    _check_unique(ranking)
    # TODO(9): DCG of the first k ranked ids, divided by the DCG of the k largest gains sorted descending; discount 1 / log2(rank + 1) with rank starting at 1 (medium, ~15 min)
    raise NotImplementedError("TODO(9)")


def _check_unique(ranking: Sequence[int]) -> None:
    seen: set = set()
    for d in ranking:
        if d in seen:
            raise ValueError(f"document id {d!r} appears twice in the ranking: a ranking lists each "
                             "document once (duplicates would count its relevance twice)")
        seen.add(d)


def average_precision(ranking: Sequence[int], relevant: set[int] | Iterable[int]) -> float:
    """Average precision of one ranking: mean of precision@i over the ranks ``i`` of the
    relevant documents; relevant documents never retrieved count as precision 0.

    ``AP = (1 / |R|) * sum_{i : ranking[i] in R} (#relevant in ranking[:i]) / i``.
    The mean over queries is MAP. With a full ranking of all documents this equals
    ``sklearn.metrics.average_precision_score`` (no ties).

    Returns:
        a float in ``[0, 1]``; 0.0 when ``relevant`` is empty.

    Raises:
        ValueError: a document id appears twice in ``ranking`` (AP could exceed 1).
    """
    _check_unique(ranking)
    relevant = set(relevant)
    if not relevant:
        return 0.0
    # TODO(10): walk the ranking, count hits, add hits / rank at every hit, divide by |relevant| (easy, ~10 min)
    raise NotImplementedError("TODO(10)")


# ----------------------------------------------------------------------------------------
# 6. Data: Cranfield and the >= 10k-document search corpus
# ----------------------------------------------------------------------------------------
def _parse_smart(text: str) -> list[tuple[str, dict[str, str]]]:
    """Parse the SMART format (``.I id`` then ``.T``/``.A``/``.B``/``.W`` fields)."""
    records: list[tuple[str, dict[str, str]]] = []
    field = None
    for line in text.splitlines():
        if line.startswith(".I"):
            records.append((line[2:].strip(), {}))
            field = None
        elif len(line) == 2 and line.startswith(".") and line[1] in "TABW":
            field = line[1]
            records[-1][1].setdefault(field, "")
        elif field is not None and records:
            fields = records[-1][1]
            fields[field] += line + "\n"
    return records


def cranfield_gain(grade: int) -> int:
    """nDCG gain of a cranqrel grade: 1 (complete answer) -> 4, 2 -> 3, 3 -> 2,
    4 (minimal interest) -> 1, anything else (-1, 5) -> 0. This is ``5 - grade``, the same
    mapping as the TREC-style ``QRelsCorrectedforTRECeval`` file in the mirror."""
    return 5 - grade if 1 <= grade <= 4 else 0


def load_cranfield() -> tuple[list[str], list[str], dict[int, dict[int, int]]]:
    """The Cranfield collection: ``(docs, queries, qrels)``.

    * ``docs``: 1,400 strings, ``docs[i]`` is document id ``i + 1``: the ``.W`` abstract
      (which in this collection starts with the title), or the ``.T`` title when the
      abstract is empty.
    * ``queries``: 225 strings, in the order of ``cran.qry``. The ``.I`` numbers in that
      file are *not* consecutive (1, 2, 4, 8, 9, ...) but ``cranqrel`` numbers the queries
      1..225 by position, so we ignore the ``.I`` numbers: query ``j`` (1-based) is
      ``queries[j - 1]``.
    * ``qrels``: ``{query_index (1..225): {doc_id (1..1400): grade}}`` with grades
      1 (complete answer) .. 4 (minimal interest). ``cranqrel`` also holds one ``-1``
      ("no relevant document") line per query; those are dropped, so every entry is a
      relevant document. See :func:`cranfield_gain` for the nDCG gains.

    Raises:
        labkit.DataError: a file is missing from the mirror / cache.
        ValueError: the files do not have the expected shape.
    """
    doc_records = _parse_smart(read_text("cranfield", "cran.all.1400"))
    docs = []
    for expect, (did, fields) in enumerate(doc_records, start=1):
        if int(did) != expect:
            raise ValueError(f"cran.all.1400: expected document {expect}, found .I {did}")
        body = " ".join(fields.get("W", "").split())
        docs.append(body or " ".join(fields.get("T", "").split()))
    queries = [" ".join(f.get("W", "").split()) for _, f in _parse_smart(read_text("cranfield", "cran.qry"))]
    qrels: dict[int, dict[int, int]] = {j: {} for j in range(1, len(queries) + 1)}
    for line in read_text("cranfield", "cranqrel").splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        q, d, grade = int(parts[0]), int(parts[1]), int(parts[2])
        if q not in qrels or not 1 <= d <= len(docs):
            raise ValueError(f"cranqrel: bad line {line!r}")
        if 1 <= grade <= 4:
            qrels[q][d] = grade
    if len(docs) != 1400 or len(queries) != 225:
        raise ValueError(f"expected 1400 docs and 225 queries, got {len(docs)} and {len(queries)}")
    return docs, queries, qrels


def _mmlu_questions(split: str) -> list[tuple[str, str]]:
    """(subject, question text) for every MMLU row of ``split`` ("test", "val", "dev")."""
    from labkit.data import registry

    out = []
    suffix = f"_{split}.csv"
    for name in sorted(registry()["mmlu"]["files"]):
        if name.startswith(f"{split}/") and name.endswith(suffix):
            subject = name[len(split) + 1: -len(suffix)]
            for row in csv.reader(io.StringIO(read_text("mmlu", name))):
                if row and row[0].strip():
                    out.append((subject, " ".join(row[0].split())))
    return out


def load_search_corpus() -> tuple[list[str], list[str]]:
    """The >= 10k-document corpus for the search CLI: ``(texts, sources)``.

    WikiText-2 valid + test paragraphs (non-empty lines that are not ``= heading =``
    lines; ``<unk>`` marks words outside WikiText's vocabulary and is kept) followed by
    every MMLU test question text (first CSV column). ``sources[i]`` says where
    ``texts[i]`` came from, e.g. ``"wikitext-2/valid.txt:12"`` or ``"mmlu/anatomy"``.
    """
    texts, sources = [], []
    for split in ("valid.txt", "test.txt"):
        for no, line in enumerate(read_text("wikitext-2", split).splitlines(), start=1):
            s = line.strip()
            if s and not s.startswith("="):
                texts.append(s)
                sources.append(f"wikitext-2/{split}:{no}")
    for subject, q in _mmlu_questions("test"):
        texts.append(q)
        sources.append(f"mmlu/{subject}")
    return texts, sources


def load_latency_queries(n: int | None = None) -> list[str]:
    """Real queries for latency runs: MMLU *validation* questions (not in the corpus)."""
    qs = [q for _, q in _mmlu_questions("val")]
    return qs if n is None else qs[:n]


# ----------------------------------------------------------------------------------------
# 7. Evaluation and benchmarks (used by the self-test and the CLI)
# ----------------------------------------------------------------------------------------
def remove_stop_words(text: str) -> str:
    """``text`` re-joined from its tokens minus scikit-learn's English stop-word list
    (tokenizing the result gives back exactly the kept tokens)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return " ".join(t for t in tokenize(text) if t not in ENGLISH_STOP_WORDS)


def evaluate_cranfield(ranker, queries: list[str], qrels: dict[int, dict[int, int]],
                       k: int = 10) -> dict[str, np.ndarray]:
    """Per-query nDCG@k (gain = :func:`cranfield_gain`) and AP (relevant = grade 1..4)
    of a fitted ranker with ``get_scores(query)`` over the 1,400 Cranfield documents."""
    ndcg, ap = [], []
    for j, q in enumerate(queries, start=1):
        scores = ranker.get_scores(q)
        ranking = top_k(scores, scores.shape[0]) + 1  # doc ids are 1-based
        gains = {d: cranfield_gain(g) for d, g in qrels[j].items()}
        ndcg.append(ndcg_at_k(ranking, gains, k))
        ap.append(average_precision(ranking, qrels[j].keys()))
    return {"ndcg": np.array(ndcg), "ap": np.array(ap)}


def _sk_vectorizer(sublinear_tf: bool = False, smooth_idf: bool = True, norm: str | None = "l2",
                   min_df: int = 1):
    from sklearn.feature_extraction.text import TfidfVectorizer as SkTfidf

    return SkTfidf(sublinear_tf=sublinear_tf, smooth_idf=smooth_idf, norm=norm, min_df=min_df)


def sklearn_max_abs_diff(docs: list[str], queries: list[str], **opts) -> float:
    """Largest |ours - sklearn| over the fitted doc matrix, the query matrix and idf_."""
    ours = TfidfVectorizer(**opts)
    sk = _sk_vectorizer(**opts)
    A, B = ours.fit_transform(docs), sk.fit_transform(docs)
    if ours.vocabulary_ != sk.vocabulary_:
        return math.inf
    diff = abs(A - B).max()
    diff = max(diff, abs(ours.transform(queries) - sk.transform(queries)).max())
    return float(max(diff, np.abs(ours.idf_ - sk.idf_).max()))


def latency_run(search_fn, queries: list[str], k: int = 10, repeats: int = 3) -> np.ndarray:
    """Wall-clock seconds of ``search_fn(query, k)``: shape ``(repeats, n_queries)``.

    Each pass runs every query once (after one warm-up call). Pass 0 is what a user would
    see; the per-query minimum over passes removes the times the OS preempted us (on a
    busy machine that adds whole scheduler slices, several ms, to a 0.3 ms query).
    """
    search_fn(queries[0], k)
    out = np.empty((repeats, len(queries)))
    for r in range(repeats):
        for i, q in enumerate(queries):
            t0 = time.perf_counter()
            search_fn(q, k)
            out[r, i] = time.perf_counter() - t0
    return out


def build_engines(texts: list[str]) -> dict[str, object]:
    """Build our TF-IDF index, our BM25 and scikit-learn's TF-IDF over ``texts``,
    timing each build (seconds). Returns the engines and a ``build_s`` dict."""
    t0 = time.perf_counter()
    ours = TfidfSearchIndex().fit(texts)
    t1 = time.perf_counter()
    sk = _sk_vectorizer()
    sk_X = sk.fit_transform(texts)
    sk_Xt = sk_X.tocsc()  # same posting-list layout as ours, for a fair query comparison
    t2 = time.perf_counter()
    bm25 = BM25().fit(texts)
    t3 = time.perf_counter()

    def sk_search(query: str, k: int = 10) -> np.ndarray:
        q = sk.transform([query])
        scores = np.asarray(sk_Xt[:, q.indices] @ q.data).ravel() if q.nnz else np.zeros(sk_X.shape[0])
        idx = np.argpartition(-scores, min(k, scores.size - 1))[:k]
        return idx[np.argsort(-scores[idx], kind="stable")]

    return {"ours": ours, "bm25": bm25, "sk": sk, "sk_X": sk_X, "sk_search": sk_search,
            "build_s": {"ours TF-IDF": t1 - t0, "sklearn TF-IDF": t2 - t1, "ours BM25": t3 - t2}}


def _pct(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q) * 1e3)


def search_benchmark(texts: list[str], queries: list[str], k: int = 10) -> dict:
    """Build all engines over ``texts`` and time ``queries``; returns timings in seconds."""
    eng = build_engines(texts)
    lat = {
        "ours TF-IDF": latency_run(lambda q, kk: eng["ours"].search(q, kk), queries, k),
        "sklearn TF-IDF": latency_run(eng["sk_search"], queries, k),
        "ours BM25": latency_run(lambda q, kk: eng["bm25"].search(q, kk), queries, k),
    }
    return {"engines": eng, "latency_s": lat}


def print_timing_table(bench: dict, n_docs: int, n_queries: int) -> None:
    reps = next(iter(bench["latency_s"].values())).shape[0]
    print(f"\nBuild and query time over {n_docs:,} documents, {n_queries} queries (top-10); "
          f"'best of {reps}' = per-query minimum over {reps} passes:")
    print(f"{'engine':<16}{'build (s)':>11}{'P50 (ms)':>10}{'P99 (ms)':>10}{'mean (ms)':>11}"
          f"{'P99 best of ' + str(reps):>16}")
    for name, lat in bench["latency_s"].items():
        b = bench["engines"]["build_s"][name]
        first, best = lat[0], lat.min(axis=0)
        print(f"{name:<16}{b:>11.2f}{_pct(first, 50):>10.3f}{_pct(first, 99):>10.3f}"
              f"{first.mean() * 1e3:>11.3f}{_pct(best, 99):>16.3f}")
    sk = bench["latency_s"]["sklearn TF-IDF"].min(axis=0)
    ratios = ", ".join(f"{name} {np.median(lat.min(axis=0)) / np.median(sk):.2f}x"
                       for name, lat in bench["latency_s"].items() if name != "sklearn TF-IDF")
    print(f"median best-of-{reps} query time relative to sklearn TF-IDF, this run: {ratios} "
          "(wall-clock on a shared machine: trust these ratios more than the absolute ms)")


# ----------------------------------------------------------------------------------------
# 8. Self-test and CLI
# ----------------------------------------------------------------------------------------
def self_test(full: bool = False) -> int:
    """Small mode: all Cranfield, the full >= 10k search corpus, 200 latency queries.
    Full mode: every MMLU validation question (1,531) as a latency query."""
    from labkit.plots import plt, savefig

    t_start = time.perf_counter()
    failures: list[str] = []
    docs, queries, qrels = load_cranfield()
    print(f"Cranfield: {len(docs)} docs, {len(queries)} queries, "
          f"{sum(len(v) for v in qrels.values())} relevance judgments (grades 1-4)")

    # -- agreement with scikit-learn on real documents ------------------------------------
    print("\nAgreement with sklearn.feature_extraction.text.TfidfVectorizer (Cranfield docs + queries):")
    print(f"{'options':<52}{'max |ours - sklearn|':>22}")
    for opts in ({}, {"sublinear_tf": True}, {"smooth_idf": False}, {"norm": None, "min_df": 2},
                 {"sublinear_tf": True, "norm": "l1", "min_df": 3}):
        d = sklearn_max_abs_diff(docs, queries, **opts)
        print(f"{str(opts or 'defaults (raw tf, smooth idf, l2)'):<52}{d:>22.2e}")
        if not d < 1e-6:
            failures.append(f"TF-IDF differs from sklearn by {d} with {opts}")

    # -- agreement with rank_bm25 ---------------------------------------------------------
    from rank_bm25 import BM25Okapi

    toks = [tokenize(d) for d in docs]
    ref = BM25Okapi(toks, k1=1.5, b=0.75, epsilon=0.25)
    ours_bm25 = BM25(k1=1.5, b=0.75).fit(toks)
    n_cmp = 50 if not full else len(queries)
    bm_diff = max(float(np.abs(ours_bm25.get_scores(q) - ref.get_scores(tokenize(q))).max())
                  for q in queries[:n_cmp])
    print(f"\nBM25 (k1=1.5, b=0.75) vs rank_bm25.BM25Okapi over {n_cmp} Cranfield queries: "
          f"max |diff| = {bm_diff:.2e}")
    if not bm_diff < 1e-9:
        failures.append(f"BM25 differs from rank_bm25 by {bm_diff}")

    # -- ranking quality ------------------------------------------------------------------
    rankers = {
        "TF-IDF raw tf": TfidfSearchIndex().fit(docs),
        "TF-IDF sublinear tf": TfidfSearchIndex(sublinear_tf=True).fit(docs),
        "BM25 (k1=1.5, b=0.75)": ours_bm25,
        "BM25 (k1=1.2, b=0.75)": BM25(k1=1.2, b=0.75).fit(toks),
        "BM25 Lucene idf": BM25(idf_variant="lucene").fit(toks),
    }
    results = {name: evaluate_cranfield(r, queries, qrels) for name, r in rankers.items()}
    # The same rankers with sklearn's English stop-word list removed from docs and queries.
    docs_sw, queries_sw = [remove_stop_words(d) for d in docs], [remove_stop_words(q) for q in queries]
    for name, r in {"TF-IDF raw tf": TfidfSearchIndex(), "TF-IDF sublinear tf": TfidfSearchIndex(sublinear_tf=True),
                    "BM25 (k1=1.5, b=0.75)": BM25()}.items():
        results[name + " -stop"] = evaluate_cranfield(r.fit(docs_sw), queries_sw, qrels)
    print("\nCranfield, 225 queries (gain = 5 - grade for nDCG; grades 1-4 relevant for MAP;")
    print("'-stop' = sklearn's English stop words removed; no stemming anywhere):")
    print(f"{'ranker':<30}{'nDCG@10':>9}{'MAP':>8}")
    for name, r in results.items():
        print(f"{name:<30}{r['ndcg'].mean():>9.4f}{r['ap'].mean():>8.4f}")
    tfidf_vec, lucene = rankers["TF-IDF raw tf"].vectorizer, rankers["BM25 Lucene idf"]
    print("\nIDF of a few terms (df = documents containing the term, of 1,400):")
    print(f"{'term':<12}{'df':>6}{'BM25 okapi+floor':>18}{'BM25 Lucene':>13}{'TF-IDF smooth':>15}")
    for term in ("the", "of", "flow", "supersonic", "wedge"):
        j, jt = ours_bm25.vocabulary_[term], tfidf_vec.vocabulary_[term]
        print(f"{term:<12}{ours_bm25.df_[j]:>6}{ours_bm25.idf_[j]:>18.3f}{lucene.idf_[j]:>13.3f}"
              f"{tfidf_vec.idf_[jt]:>15.3f}")
    okapi_top = [set(top_k(ours_bm25.get_scores(q), 10).tolist()) for q in queries]
    lucene_top = [set(top_k(lucene.get_scores(q), 10).tolist()) for q in queries]
    n_diff = sum(a != b for a, b in zip(okapi_top, lucene_top))
    overlap = np.mean([len(a & b) / 10 for a, b in zip(okapi_top, lucene_top)])
    print(f"okapi+floor vs Lucene IDF (same k1, b): the top-10 set differs on {n_diff} of {len(queries)} "
          f"queries (mean overlap {overlap:.1%}): the IDF variant changes rankings, not just scores")
    bm, tf = results["BM25 (k1=1.5, b=0.75)"], results["TF-IDF raw tf"]
    for name, r in results.items():
        if not (r["ndcg"].mean() > 0.3 and r["ap"].mean() > 0.25):
            failures.append(f"{name} on Cranfield is far below nDCG@10 0.33 / MAP 0.27: a scoring bug?")
    if not results["BM25 (k1=1.5, b=0.75) -stop"]["ndcg"].mean() > results["TF-IDF raw tf -stop"]["ndcg"].mean():
        failures.append("with stop words removed, BM25 should beat raw-tf TF-IDF on Cranfield")

    # -- search corpus: build + latency, ours vs sklearn -----------------------------------
    texts, _ = load_search_corpus()
    lq = load_latency_queries(None if full else 200)
    bench = search_benchmark(texts, lq)
    print_timing_table(bench, len(texts), len(lq))
    if len(texts) < 10_000:
        failures.append(f"search corpus has only {len(texts)} documents")
    eng = bench["engines"]
    overlap = np.mean([
        set(i for i, _ in eng["ours"].search(q, 10)) == set(eng["sk_search"](q, 10).tolist())
        for q in lq[:50]])
    print(f"top-10 sets identical to sklearn's on {overlap:.0%} of 50 queries "
          "(differences only possible on exact score ties)")
    if overlap < 0.9:
        failures.append(f"top-10 agrees with sklearn on only {overlap:.0%} of queries")

    # -- figures --------------------------------------------------------------------------
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    lat = {name: v[0] for name, v in bench["latency_s"].items()}  # first pass, as a user sees it
    bins = np.linspace(0, max(np.percentile(v, 99.5) for v in lat.values()) * 1e3, 50)
    for name, v in lat.items():
        ax[0].hist(v * 1e3, bins=bins, alpha=0.5, label=f"{name} (P50 {_pct(v, 50):.2f}, P99 {_pct(v, 99):.2f} ms)")
    ax[0].set_yscale("log")
    ax[0].set_xlabel("query latency (ms), first pass")
    ax[0].set_ylabel("queries")
    ax[0].set_title(f"{len(lq)} MMLU-val queries over {len(texts):,} docs")
    ax[0].legend(fontsize=8)
    ax[1].scatter(tf["ndcg"], bm["ndcg"], s=10, alpha=0.6)
    ax[1].plot([0, 1], [0, 1], "k--", lw=1)
    ax[1].set_xlabel("TF-IDF (raw tf) nDCG@10")
    ax[1].set_ylabel("BM25 nDCG@10")
    wins = int((bm["ndcg"] > tf["ndcg"]).sum())
    losses = int((bm["ndcg"] < tf["ndcg"]).sum())
    ax[1].set_title(f"Cranfield per query: BM25 better on {wins}, worse on {losses}")
    out = savefig(fig, HERE / "figures" / "latency_and_per_query.png")
    print(f"\nBM25 vs TF-IDF per query: better on {wins}, worse on {losses}, "
          f"tied on {len(queries) - wins - losses}; figure: {out.relative_to(HERE)}")

    print(f"\nself-test time: {time.perf_counter() - t_start:.1f} s")
    if failures:
        for f in failures:
            print("FAIL:", f)
        return 1
    print("all sanity checks passed")
    return 0


def search_cli(query: str, top: int, method: str, n_bench: int) -> int:
    """Search the >= 10k corpus, print the hits, then build/latency side by side with sklearn."""
    texts, sources = load_search_corpus()
    bench = search_benchmark(texts, load_latency_queries(n_bench))
    eng = bench["engines"]
    engine = eng["bm25"] if method == "bm25" else eng["ours"]
    t0 = time.perf_counter()
    hits = engine.search(query, top)
    dt = (time.perf_counter() - t0) * 1e3
    print(f"query: {query!r}  ({method}, {len(texts):,} documents, {dt:.2f} ms)")
    for rank, (i, s) in enumerate(hits, start=1):
        text = texts[i] if len(texts[i]) <= 150 else texts[i][:147] + "..."
        print(f"{rank:>2}. {s:.4f}  [{sources[i]}]  {text}")
    if method == "tfidf":
        sk_top = eng["sk_search"](query, top).tolist()
        print(f"sklearn's top-{top}: {'same documents' if set(sk_top) == {i for i, _ in hits} else sk_top}")
    print_timing_table(bench, len(texts), n_bench)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--full", action="store_true", help="more latency queries (1,531) and BM25 checks")
    sub = p.add_subparsers(dest="cmd")
    s = sub.add_parser("search", help="search WikiText-2 paragraphs + MMLU questions")
    s.add_argument("query")
    s.add_argument("--top", type=int, default=5)
    s.add_argument("--method", choices=("tfidf", "bm25"), default="tfidf")
    s.add_argument("--bench-queries", type=int, default=200,
                   help="MMLU-val queries for the P50/P99 latency table")
    args = p.parse_args(argv)
    if args.cmd == "search":
        if args.top < 1:
            p.error("--top must be >= 1")
        if args.bench_queries < 1:
            p.error(f"--bench-queries must be >= 1 (the latency table needs queries), got {args.bench_queries}")
        return search_cli(args.query, args.top, args.method, args.bench_queries)
    return self_test(full=args.full)


if __name__ == "__main__":
    sys.exit(main())

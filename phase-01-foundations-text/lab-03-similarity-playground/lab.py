# Generated from solution.py by `make labs` (labkit/labgen.py). Fill in the TODOs.
"""Lab 1.3: similarity metrics, distance concentration, and LSH for maximum-inner-product search.

Five ways to compare vectors (dot, cosine, Euclidean, Manhattan, Jaccard), written to work on
a single pair of 1-D vectors or on whole batches (an ``(n, d)`` matrix against an ``(m, d)``
matrix gives an ``(n, m)`` matrix). Then two things that bite in practice:

* **distance concentration**: in high dimension the nearest and the farthest neighbour of a
  random query end up almost equally far away (Beyer et al. 1999, "When is nearest neighbor
  meaningful?"; Aggarwal, Hinneburg & Keim 2001 for L1 vs L2). We measure the relative
  contrast ``(max - min) / min`` of distances against the dimension.
* **approximate maximum-inner-product search (MIPS)**: random-hyperplane LSH (Charikar 2002,
  "SimHash") answers *cosine* queries. Inner product is not a metric, so we first apply the
  "simple-LSH" transform of Neyshabur & Srebro 2015 ("On symmetric and asymmetric LSHs for
  inner product search", ICML), which turns MIPS into cosine search; Shrivastava & Li 2014
  ("Asymmetric LSH (ALSH) for sublinear time MIPS", NeurIPS) introduced the idea of such an
  augmentation. Candidates from several hash tables are re-ranked with the exact inner product.

Run ``python solution.py`` (small mode, about a minute on one CPU core) or ``--full``.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

METRICS = (
    "dot", "cosine", "cosine_distance", "angular", "euclidean", "manhattan", "jaccard",
    "jaccard_distance",
)
VECTOR_KINDS = ("gaussian", "sparse", "normalised")
FIGURES = Path(__file__).resolve().parent / "figures"


# --------------------------------------------------------------------------------------------
# Input checking (shared by every metric)
# --------------------------------------------------------------------------------------------
def _as_batch(X: object, name: str) -> tuple[np.ndarray, bool]:
    """Return ``X`` as a float64 ``(n, d)`` array and whether it was a single 1-D vector."""
    if hasattr(X, "tocsr") or type(X).__module__.startswith("scipy.sparse"):
        raise TypeError(
            f"{name} is a scipy.sparse matrix; these metrics take dense arrays. "
            "Densify a row sample first (X[rows].toarray())."
        )
    arr = np.asarray(X)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if arr.ndim == 1:
        arr, single = arr[None, :], True
    elif arr.ndim == 2:
        single = False
    else:
        raise ValueError(f"{name} must be 1-D (one vector) or 2-D (a batch), got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has zero dimensions (shape {arr.shape})")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    return arr, single


def _check_pair(X: object, Y: object | None) -> tuple[np.ndarray, np.ndarray, bool]:
    """Validate a pair of inputs; ``Y=None`` means ``Y = X``. Returns (X, Y, scalar_output)."""
    Xb, x_single = _as_batch(X, "X")
    if Y is None:
        return Xb, Xb, False
    Yb, y_single = _as_batch(Y, "Y")
    if Xb.shape[1] != Yb.shape[1]:
        raise ValueError(f"dimension mismatch: X has d={Xb.shape[1]}, Y has d={Yb.shape[1]}")
    return Xb, Yb, x_single and y_single


def _finish(S: np.ndarray, scalar: bool) -> np.ndarray | float:
    return float(S[0, 0]) if scalar else S


# --------------------------------------------------------------------------------------------
# The five metrics
# --------------------------------------------------------------------------------------------
def dot_similarity(X: object, Y: object | None = None) -> np.ndarray | float:
    """Inner products ``<x_i, y_j>``.

    Args:
        X: ``(n, d)`` or ``(d,)`` array. Y: ``(m, d)`` or ``(d,)``; ``None`` means ``Y = X``.

    Returns:
        float64 ``(n, m)`` matrix (a Python float when both inputs are 1-D).

    Raises:
        TypeError: sparse or non-numeric input. ValueError: bad shape, NaN/inf, d mismatch.
    """
    X, Y, scalar = _check_pair(X, Y)
    return _finish(X @ Y.T, scalar)


def cosine_similarity(X: object, Y: object | None = None) -> np.ndarray | float:
    """Cosine similarity ``<x, y> / (||x|| ||y||)``, clipped to ``[-1, 1]``.

    Rounding can push ``u.u / (|u| |u|)`` to ``1.0000000000000002``; the result is clipped so
    that ``arccos`` and the ``[-1, 1]`` contract never break.

    Args:
        X: ``(n, d)`` or ``(d,)``. Y: ``(m, d)`` or ``(d,)``; ``None`` means ``Y = X``.

    Returns:
        float64 ``(n, m)`` (a float for two 1-D inputs).

    Raises:
        ValueError: a zero vector (its direction, hence its cosine, is undefined; sklearn
            silently returns 0 there, we refuse), bad shape, NaN/inf. TypeError: sparse input.
    """
    X, Y, scalar = _check_pair(X, Y)
    for name, A in (("X", X), ("Y", Y)):
        zero = np.flatnonzero(np.linalg.norm(A, axis=1) == 0)
        if zero.size:
            raise ValueError(
                f"cosine is undefined for zero vectors: {name} rows {zero[:5].tolist()} have norm 0"
            )
    # TODO(1): L2-normalise the rows of X and Y, take the matrix of dot products, clip to [-1, 1] (easy, ~10 min)
    raise NotImplementedError("TODO(1)")


def euclidean_distance(X: object, Y: object | None = None) -> np.ndarray | float:
    """Euclidean (L2) distances ``||x_i - y_j||_2`` via ``||x||^2 + ||y||^2 - 2 <x, y>``.

    The expansion turns the work into one matrix product (what sklearn and FAISS do), but it
    cancels catastrophically for nearly equal vectors and can go slightly negative: clamp the
    squared distance at 0 before the square root. Absolute error is about
    ``sqrt(eps) * max(||x||, ||y||)``; use :func:`scipy.spatial.distance.cdist` when you need
    exact tiny distances.

    Returns:
        float64 ``(n, m)``, non-negative (a float for two 1-D inputs).

    Raises:
        ValueError/TypeError: as :func:`dot_similarity`.
    """
    X, Y, scalar = _check_pair(X, Y)
    # TODO(2): squared norms of the rows + the -2 X Y^T cross term (broadcast to (n, m)), clamp at 0, sqrt (medium, ~15 min)
    raise NotImplementedError("TODO(2)")


def manhattan_distance(X: object, Y: object | None = None, max_block: int = 4_000_000) -> np.ndarray | float:
    """Manhattan (L1) distances ``sum_k |x_ik - y_jk|``.

    There is no matrix-product trick for L1, so the ``(rows, m, d)`` difference tensor is
    built by broadcasting, a block of X rows at a time so it never holds more than about
    ``max_block`` floats (32 MB at the default).

    Returns:
        float64 ``(n, m)`` (a float for two 1-D inputs).

    Raises:
        ValueError: ``max_block < 1``; otherwise as :func:`dot_similarity`.
    """
    if max_block < 1:
        raise ValueError(f"max_block must be >= 1, got {max_block}")
    X, Y, scalar = _check_pair(X, Y)
    rows = max(1, max_block // max(1, Y.shape[0] * Y.shape[1]))
    # TODO(3): for each block of `rows` rows of X: broadcast X[:, None, :] - Y[None, :, :], abs, sum over d (easy, ~10 min)
    raise NotImplementedError("TODO(3)")


def _sets_to_binary(a: Iterable, b: Iterable) -> tuple[np.ndarray, np.ndarray]:
    """Two sets -> two indicator vectors over the sorted union of their elements."""
    vocab = {tok: i for i, tok in enumerate(sorted(set(a) | set(b), key=repr))}
    va, vb = np.zeros(max(1, len(vocab))), np.zeros(max(1, len(vocab)))
    va[[vocab[t] for t in set(a)]] = 1.0
    vb[[vocab[t] for t in set(b)]] = 1.0
    return va, vb


def jaccard_similarity(X: object, Y: object | None = None) -> np.ndarray | float:
    """Jaccard similarity ``|A & B| / |A | B|`` of sets, or of binary (0/1 or bool) vectors.

    Two sets (``set``/``frozenset``) are turned into indicator vectors over their union, so
    both cases share one code path. Two empty sets are identical: similarity 1 (this matches
    SciPy, whose Jaccard *distance* of two all-zero vectors is 0).

    Args:
        X, Y: two sets, or binary arrays ``(n, d)``/``(d,)`` and ``(m, d)``/``(d,)``.

    Returns:
        float64 ``(n, m)`` in ``[0, 1]`` (a float for two sets or two 1-D vectors).

    Raises:
        ValueError: values other than 0/1, bad shapes. TypeError: only one of X, Y is a set.
    """
    is_set = [isinstance(v, (set, frozenset)) for v in (X, Y)]
    if any(is_set):
        if not all(is_set):
            raise TypeError("pass two sets, or two binary arrays, not a mix")
        X, Y = _sets_to_binary(X, Y)
    X, Y, scalar = _check_pair(X, Y)
    for name, A in (("X", X), ("Y", Y)):
        if not np.all((A == 0) | (A == 1)):
            raise ValueError(f"Jaccard needs binary (0/1) vectors; {name} has other values")
    # TODO(4): intersection = X @ Y.T, union = |x| + |y| - intersection; both empty -> 1 (easy, ~10 min)
    raise NotImplementedError("TODO(4)")


def pairwise(X: object, Y: object | None = None, metric: str = "cosine") -> np.ndarray | float:
    """The ``(n, m)`` matrix of ``metric(x_i, y_j)``; one entry point for every metric.

    Metrics: ``dot``, ``cosine`` (similarity), ``cosine_distance`` (``1 - cosine``, NOT a
    metric: it breaks the triangle inequality), ``angular`` (``arccos(cosine) / pi`` in
    ``[0, 1]``, a true metric), ``euclidean``, ``manhattan``, ``jaccard`` (similarity),
    ``jaccard_distance`` (``1 - jaccard``, a true metric).

    Raises:
        ValueError: unknown metric (and whatever the metric raises).
    """
    if metric == "dot":
        return dot_similarity(X, Y)
    if metric == "cosine":
        return cosine_similarity(X, Y)
    if metric == "cosine_distance":
        return 1.0 - cosine_similarity(X, Y)
    if metric == "angular":
        return np.arccos(cosine_similarity(X, Y)) / np.pi
    if metric == "euclidean":
        return euclidean_distance(X, Y)
    if metric == "manhattan":
        return manhattan_distance(X, Y)
    if metric == "jaccard":
        return jaccard_similarity(X, Y)
    if metric == "jaccard_distance":
        return 1.0 - jaccard_similarity(X, Y)
    raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")


# --------------------------------------------------------------------------------------------
# Synthetic vectors and distance concentration
# --------------------------------------------------------------------------------------------
def make_vectors(kind: str, n: int, d: int, seed: int = 0, density: float = 0.05) -> np.ndarray:
    """Synthetic vectors, float64 ``(n, d)``.

    * ``gaussian``: i.i.d. N(0, 1) coordinates.
    * ``sparse``: ``max(1, round(density * d))`` non-zero coordinates per row at random
      positions, values ``|N(0, 1)|`` (non-negative, like term weights).
    * ``normalised``: Gaussian rows scaled to unit L2 norm (uniform on the sphere).

    Raises:
        ValueError: unknown kind, ``n < 1``, ``d < 1``, density outside (0, 1].
    """
    if kind not in VECTOR_KINDS:
        raise ValueError(f"kind must be one of {VECTOR_KINDS}, got {kind!r}")
    if n < 1 or d < 1:
        raise ValueError(f"need n >= 1 and d >= 1, got n={n}, d={d}")
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    rng = np.random.default_rng(seed)
    if kind == "sparse":
        nnz = max(1, round(density * d))
        X = np.zeros((n, d))
        cols = np.argsort(rng.random((n, d)), axis=1)[:, :nnz]  # nnz distinct columns per row
        X[np.arange(n)[:, None], cols] = np.abs(rng.standard_normal((n, nnz)))
        return X
    X = rng.standard_normal((n, d))
    if kind == "normalised":
        X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X


def relative_contrast(D: object) -> np.ndarray:
    """Per-query relative contrast ``(max_j D_ij - min_j D_ij) / min_j D_ij``.

    ``D`` holds distances from each query (row) to the points (columns), the query itself
    excluded. When the contrast goes to 0 the nearest neighbour is barely nearer than the
    farthest one (Beyer et al. 1999).

    Returns:
        float64 ``(n_queries,)``.

    Raises:
        ValueError: ``D`` not 2-D with at least 2 columns, negative or non-finite entries, or
            a row whose minimum is 0 (a duplicate point: the ratio is undefined).
    """
    D = np.asarray(D, dtype=np.float64)
    if D.ndim != 2 or D.shape[1] < 2:
        raise ValueError(f"D must be (n_queries, n_points) with n_points >= 2, got shape {D.shape}")
    if not np.all(np.isfinite(D)) or np.any(D < 0):
        raise ValueError("D must hold finite, non-negative distances")
    # TODO(5): row-wise min and max, refuse a zero minimum, return (max - min) / min (easy, ~5 min)
    raise NotImplementedError("TODO(5)")


def off_diagonal(D: np.ndarray) -> np.ndarray:
    """Drop the diagonal of a square ``(n, n)`` matrix -> ``(n, n - 1)`` (self-distances)."""
    n = D.shape[0]
    if D.ndim != 2 or D.shape[1] != n:
        raise ValueError(f"need a square matrix, got shape {D.shape}")
    return D[~np.eye(n, dtype=bool)].reshape(n, n - 1)


# --------------------------------------------------------------------------------------------
# Exact and approximate maximum-inner-product search
# --------------------------------------------------------------------------------------------
def exact_top_k(X: np.ndarray, Q: np.ndarray, k: int = 10) -> np.ndarray:
    """Exact MIPS: for each query, the ``k`` rows of ``X`` with the largest ``<x, q>``.

    Args:
        X: ``(n, d)`` database. Q: ``(n_q, d)`` queries. k: ``1 <= k <= n``.

    Returns:
        int64 ``(n_q, k)`` row indices, best first (ties in any order).

    Raises:
        ValueError: bad k or shapes.
    """
    X, Q, _ = _check_pair(X, Q)
    if not 1 <= k <= X.shape[0]:
        raise ValueError(f"k must be in [1, n={X.shape[0]}], got {k}")
    # TODO(6): scores = Q X^T; argpartition for the top k (O(n)), then sort only those k by score (easy, ~10 min)
    raise NotImplementedError("TODO(6)")


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean over queries of ``|approx & exact| / k`` (``k = exact_ids.shape[1]``).

    ``approx_ids`` may contain ``-1`` padding when a query got fewer than ``k`` results.

    Raises:
        ValueError: the two arrays have different numbers of rows.
    """
    approx_ids, exact_ids = np.atleast_2d(approx_ids), np.atleast_2d(exact_ids)
    if approx_ids.shape[0] != exact_ids.shape[0]:
        raise ValueError(f"{approx_ids.shape[0]} approximate rows vs {exact_ids.shape[0]} exact rows")
    k = exact_ids.shape[1]
    hits = [len(set(a[a >= 0].tolist()) & set(e.tolist())) for a, e in zip(approx_ids, exact_ids)]
    return float(np.mean(hits) / k)


def simple_lsh_transform(X: np.ndarray, queries: bool = False, max_norm: float | None = None) -> np.ndarray:
    """The simple-LSH augmentation (Neyshabur & Srebro 2015) turning MIPS into cosine search.

    Data rows: ``x -> [x / M, sqrt(1 - ||x / M||^2)]`` with ``M = max_norm`` (default: the
    largest row norm), so every transformed row has unit norm. Queries:
    ``q -> [q / ||q||, 0]``. Then ``<P(x), Q(q)> = <x, q> / (M ||q||)``: for a fixed query the
    inner-product ranking is unchanged, and since both sides have unit norm that inner
    product is a cosine, which random-hyperplane LSH can hash.

    Args:
        X: ``(n, d)`` float array. queries: transform as queries instead of data.
        max_norm: ``M`` for data rows; must be ``>= max ||x||``.

    Returns:
        float64 ``(n, d + 1)``, rows of unit L2 norm.

    Raises:
        ValueError: ``max_norm`` smaller than a row norm or not positive, a zero query or
            an all-zero database.
    """
    X, _ = _as_batch(X, "X")
    norms = np.linalg.norm(X, axis=1)
    if queries:
        if np.any(norms == 0):
            raise ValueError("a query vector is all zeros: its inner-product ranking is undefined")
    else:
        M = float(norms.max()) if max_norm is None else float(max_norm)
        if M <= 0:
            raise ValueError("max_norm must be positive (is every data row zero?)")
        if norms.max() > M * (1 + 1e-12):
            raise ValueError(f"max_norm={M} is smaller than the largest row norm {norms.max():.6g}")
    # TODO(7): queries: [q/||q||, 0]; data: [x/M, sqrt(max(0, 1 - ||x/M||^2))] (medium, ~15 min)
    raise NotImplementedError("TODO(7)")


class HyperplaneLSH:
    """Random-hyperplane (sign random projection, "SimHash") LSH for cosine similarity.

    Each of ``n_tables`` tables draws ``n_bits`` Gaussian hyperplanes; a vector's code in a
    table is the bit pattern of ``sign(<r_b, x>) >= 0``. Two vectors at angle ``theta`` agree
    on one bit with probability ``1 - theta / pi`` (Charikar 2002), so they land in the same
    bucket of one table with probability ``(1 - theta/pi)^n_bits``. More bits -> smaller,
    purer buckets; more tables -> more chances to collide (higher recall, more candidates).

    Args:
        n_bits: bits per table, 1..62 (a code is one int64). n_tables: >= 1. seed: RNG seed.

    Raises:
        ValueError: bad ``n_bits`` or ``n_tables``; ``hash``/``candidates`` before ``fit`` or
            with the wrong dimension.
    """

    def __init__(self, n_bits: int = 8, n_tables: int = 8, seed: int = 0) -> None:
        if not 1 <= n_bits <= 62:
            raise ValueError(f"n_bits must be in [1, 62], got {n_bits}")
        if n_tables < 1:
            raise ValueError(f"n_tables must be >= 1, got {n_tables}")
        self.n_bits, self.n_tables, self.seed = n_bits, n_tables, seed
        self.planes: np.ndarray | None = None  # (n_tables, n_bits, d)
        self.tables: list[dict[int, np.ndarray]] = []
        self.n = 0

    def _init_planes(self, d: int) -> None:
        rng = np.random.default_rng(self.seed)
        self.planes = rng.standard_normal((self.n_tables, self.n_bits, d))

    def hash(self, X: np.ndarray) -> np.ndarray:
        """Codes of ``X`` (``(n, d)``) in every table: int64 ``(n_tables, n)``.

        Bit ``b`` of a code is 1 when ``<planes[t, b], x> >= 0``; bit ``b`` has weight ``2**b``.
        """
        if self.planes is None:
            raise ValueError("call fit() before hash()")
        X, _ = _as_batch(X, "X")
        if X.shape[1] != self.planes.shape[2]:
            raise ValueError(f"X has d={X.shape[1]}, the index was fitted with d={self.planes.shape[2]}")
        # TODO(8): project onto every hyperplane (einsum over d), bits = proj >= 0, pack bits with weights 2**b (medium, ~15 min)
        raise NotImplementedError("TODO(8)")

    def fit(self, X: np.ndarray) -> HyperplaneLSH:
        """Hash the ``(n, d)`` database into ``n_tables`` dicts ``code -> row indices``."""
        X, _ = _as_batch(X, "X")
        self._init_planes(X.shape[1])
        codes = self.hash(X)
        self.tables = []
        for t in range(self.n_tables):
            order = np.argsort(codes[t], kind="stable")
            keys, starts = np.unique(codes[t][order], return_index=True)
            self.tables.append({int(k): grp for k, grp in zip(keys, np.split(order, starts[1:]))})
        self.n = X.shape[0]
        return self

    def candidates(self, q: np.ndarray) -> np.ndarray:
        """Sorted unique row indices sharing a bucket with ``q`` (``(d,)``) in any table."""
        codes = self.hash(np.asarray(q, dtype=np.float64).reshape(1, -1))[:, 0]  # (n_tables,)
        # TODO(9): look up q's bucket in each table (a missing bucket is empty), union them (easy, ~10 min)
        raise NotImplementedError("TODO(9)")


class MIPSLSH:
    """Approximate MIPS: simple-LSH transform + :class:`HyperplaneLSH` + exact re-ranking.

    ``fit(X)`` keeps the original ``X`` and indexes ``simple_lsh_transform(X)``;
    ``query(q, k)`` transforms ``q`` as a query, collects the candidates from every table and
    returns the ``k`` candidates with the largest exact ``<x, q>``.
    """

    def __init__(self, n_bits: int = 8, n_tables: int = 8, seed: int = 0) -> None:
        self.lsh = HyperplaneLSH(n_bits, n_tables, seed)
        self.X: np.ndarray | None = None

    def fit(self, X: np.ndarray) -> MIPSLSH:
        """Index the ``(n, d)`` database."""
        self.X, _ = _as_batch(X, "X")
        self.lsh.fit(simple_lsh_transform(self.X))
        return self

    def query(self, q: np.ndarray, k: int = 10) -> tuple[np.ndarray, int]:
        """Top-``k`` rows by inner product among the LSH candidates of ``q`` (``(d,)``).

        Returns:
            (int64 ``(k,)`` row indices best first, padded with ``-1`` when fewer than ``k``
            candidates were found; the number of candidates scored exactly).

        Raises:
            ValueError: before ``fit``, ``k < 1``, wrong dimension, zero query.
        """
        if self.X is None:
            raise ValueError("call fit() before query()")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = np.asarray(q, dtype=np.float64).reshape(-1)
        if q.shape[0] != self.X.shape[1]:
            raise ValueError(f"query has d={q.shape[0]}, the index has d={self.X.shape[1]}")
        cand = self.lsh.candidates(simple_lsh_transform(q[None, :], queries=True)[0])
        # TODO(10): score the candidates with the exact inner product X[cand] @ q, keep the best k, pad with -1 (easy, ~10 min)
        raise NotImplementedError("TODO(10)")


def evaluate_lsh(X: np.ndarray, Q: np.ndarray, settings: list[tuple[int, int]], k: int = 10,
                 seed: int = 0) -> list[dict]:
    """Recall@k against exact MIPS, mean candidate fraction and query time per (n_bits, n_tables)."""
    exact = exact_top_k(X, Q, k)
    t0 = time.perf_counter()
    for q in Q:  # one query at a time, like the LSH loop below, so the times compare
        exact_top_k(X, q[None, :], k)
    exact_ms = (time.perf_counter() - t0) / len(Q) * 1e3
    rows = []
    for n_bits, n_tables in settings:
        index = MIPSLSH(n_bits, n_tables, seed).fit(X)
        t0 = time.perf_counter()
        results = [index.query(q, k) for q in Q]
        ms = (time.perf_counter() - t0) / len(Q) * 1e3
        ids = np.stack([r[0] for r in results])
        frac = float(np.mean([r[1] for r in results]) / X.shape[0])
        rows.append(dict(n_bits=n_bits, n_tables=n_tables, recall=recall_at_k(ids, exact),
                         cand_frac=frac, ms_per_query=ms, exact_ms_per_query=exact_ms))
    return rows


# --------------------------------------------------------------------------------------------
# Self-test / demo
# --------------------------------------------------------------------------------------------
def _concentration_table(dims: list[int], n: int, seed: int) -> dict[str, dict[int, np.ndarray]]:
    """Print relative contrast vs dimension; return the Euclidean distance samples for plots."""
    samples: dict[str, dict[int, np.ndarray]] = {}
    print(f"\nRelative contrast (max-min)/min of distances: median over {n} queries x {n - 1} points")
    print(f"{'kind':<11}{'d':>7}{'L2 contrast':>14}{'L1 contrast':>14}{'cos-sim mean':>14}{'cos-sim std':>13}")
    for kind in VECTOR_KINDS:
        samples[kind] = {}
        for d in dims:
            X = make_vectors(kind, n, d, seed=seed)
            D2 = off_diagonal(euclidean_distance(X))
            D1 = off_diagonal(manhattan_distance(X))
            C = off_diagonal(cosine_similarity(X))
            rc2, rc1 = np.median(relative_contrast(D2)), np.median(relative_contrast(D1))
            print(f"{kind:<11}{d:>7}{rc2:>14.3f}{rc1:>14.3f}{C.mean():>14.3f}{C.std():>13.3f}")
            samples[kind][d] = D2[np.triu_indices(n, 0, n - 1)]
    return samples


def _plot_concentration(samples: dict[str, dict[int, np.ndarray]], tfidf: dict[str, np.ndarray] | None) -> None:
    from labkit.plots import plt, savefig

    for kind, by_d in samples.items():
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for d, dist in by_d.items():
            ax.hist(dist / dist.mean(), bins=150, range=(0, 2.5), density=True, histtype="step",
                    linewidth=1.5, label=f"d={d}")
        ax.set_xlabel("pairwise Euclidean distance / mean distance")
        ax.set_ylabel("density")
        ax.set_title(f"Distance concentration: {kind} vectors")
        ax.legend()
        savefig(fig, FIGURES / f"concentration_{kind}.png")
    if tfidf is not None:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for label, dist in tfidf.items():
            if label.startswith("cos"):
                axes[0].hist(dist, bins=80, range=(0, 1), density=True, histtype="step",
                             linewidth=1.5, label=label[4:])
            else:
                axes[1].hist(dist / dist.mean(), bins=150, range=(0, 2.5), density=True,
                             histtype="step", linewidth=1.5, label=label[3:])
        axes[0].set_xlabel("pairwise cosine similarity")
        axes[0].set_title("Cranfield TF-IDF (lab 1.2): cosine similarity")
        axes[1].set_xlabel("pairwise Euclidean distance / mean distance")
        axes[1].set_title("Cranfield TF-IDF: distance concentration")
        for ax in axes:
            ax.set_ylabel("density")
            ax.legend()
        savefig(fig, FIGURES / "concentration_tfidf.png")


def _tfidf_vectors():
    """Cranfield TF-IDF from lab 1.2 (sparse, unit rows) and the query vectors, if lab 1.2 is there."""
    from labkit import load_lab

    m = load_lab("1.2")
    docs, queries, _ = m.load_cranfield()
    vec = m.TfidfVectorizer(sublinear_tf=True)
    T = vec.fit_transform(docs)
    Tq = vec.transform(queries) if hasattr(vec, "transform") else None
    return T, Tq


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Similarity metrics, distance concentration, MIPS LSH.")
    ap.add_argument("--full", action="store_true", help="spec scale: more points, higher dimensions")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from labkit import seed_everything

    seed_everything(args.seed)
    t_start = time.perf_counter()
    failures: list[str] = []
    n = 1000 if args.full else 400
    dims = [2, 10, 100, 1000, 10000] if args.full else [2, 10, 100, 1000]

    # 1) the identities the lab is about, on random data
    U = make_vectors("normalised", 50, 64, seed=args.seed)
    gap = np.abs(cosine_similarity(U) - dot_similarity(U)).max()
    print(f"max |cosine - dot| on unit vectors: {gap:.2e}")
    if gap > 1e-12:
        failures.append("cosine != dot on unit vectors")
    u, v, w = np.array([1.0, 0.0]), np.array([1.0, 1.0]) / math.sqrt(2), np.array([0.0, 1.0])
    cd = lambda a, b: float(pairwise(a, b, "cosine_distance"))  # noqa: E731
    print(f"cosine-distance triangle counterexample: d(u,w)={cd(u, w):.4f} > "
          f"d(u,v)+d(v,w)={cd(u, v) + cd(v, w):.4f}")
    if not cd(u, w) > cd(u, v) + cd(v, w):
        failures.append("cosine-distance counterexample did not break the triangle inequality")

    # 2) distance concentration on synthetic vectors
    samples = _concentration_table(dims, n, args.seed)
    for kind in VECTOR_KINDS:
        lo, hi = min(dims), max(dims)
        a = relative_contrast(off_diagonal(euclidean_distance(make_vectors(kind, 200, lo, args.seed)))).mean()
        b = relative_contrast(off_diagonal(euclidean_distance(make_vectors(kind, 200, hi, args.seed)))).mean()
        if not b < a:
            failures.append(f"{kind}: relative contrast did not shrink from d={lo} to d={hi}")

    # 3) real TF-IDF vectors from lab 1.2
    tfidf_plot = None
    lsh_data = None
    try:
        T, Tq = _tfidf_vectors()
    except (FileNotFoundError, ImportError, AttributeError) as e:
        print(f"\n[lab 1.2 not available ({e}); skipping the TF-IDF part]")
        failures.append("lab 1.2 TF-IDF vectors unavailable")
        T = None
    if T is not None:
        from sklearn.decomposition import TruncatedSVD

        rng = np.random.default_rng(args.seed)
        rows = np.sort(rng.choice(T.shape[0], size=min(n, T.shape[0]), replace=False))
        Td = T[rows].toarray()
        norms = np.linalg.norm(Td, axis=1)
        Td = Td[norms > 0]
        print(f"\nCranfield TF-IDF (lab 1.2): {T.shape[0]} docs x {T.shape[1]} terms, "
              f"nnz/row {T.nnz / T.shape[0]:.1f}; sample of {Td.shape[0]} docs")
        print(f"{'vectors':<26}{'d':>7}{'L2 contrast':>14}{'cos-sim mean':>14}{'cos-sim std':>13}")
        tfidf_plot = {}
        nd = Td.shape[0]
        svd_dims = [16, 128]
        views = [("TF-IDF (sparse)", Td)]
        for k in svd_dims:
            Z = TruncatedSVD(n_components=k, random_state=args.seed).fit(T).transform(Td)
            views.append((f"TF-IDF -> SVD-{k}", Z))
        views.append(("Gaussian, same d", make_vectors("gaussian", nd, T.shape[1], args.seed)))
        for label, Z in views:
            C = off_diagonal(cosine_similarity(Z))
            D = off_diagonal(euclidean_distance(Z))
            rc = np.median(relative_contrast(D))
            print(f"{label:<26}{Z.shape[1]:>7}{rc:>14.3f}{C.mean():>14.3f}{C.std():>13.3f}")
            iu = np.triu_indices(nd, 0, nd - 1)
            tfidf_plot["cos " + label] = C[iu]
            tfidf_plot["L2 " + label] = D[iu]
        # LSH data: every document reduced with SVD; queries = the Cranfield queries when the
        # vectorizer can transform them, else held-out documents.
        d_lsh = 32
        svd = TruncatedSVD(n_components=d_lsh, random_state=args.seed).fit(T)
        X = svd.transform(T)
        if Tq is not None:
            Q = svd.transform(Tq)
            qsrc = "Cranfield queries"
        else:
            X, Q = X[:-200], X[-200:]
            qsrc = "200 held-out docs"
        Q = Q[np.linalg.norm(Q, axis=1) > 0]
        lsh_data = (X, Q, f"Cranfield TF-IDF -> SVD-{d_lsh}, {X.shape[0]} docs, {len(Q)} {qsrc}")
    _plot_concentration(samples, tfidf_plot)

    # 4) random-hyperplane LSH for MIPS, recall@10 against exact search
    if lsh_data is None:  # fall back to synthetic vectors with varied norms
        rng = np.random.default_rng(args.seed)
        X = make_vectors("gaussian", 5000, 64, args.seed) * rng.lognormal(0, 0.5, (5000, 1))
        lsh_data = (X, make_vectors("gaussian", 200, 64, args.seed + 1), "synthetic Gaussian, 5000 x 64")
    X, Q, desc = lsh_data
    settings = [(4, 8), (6, 16), (8, 32), (10, 64), (10, 128), (12, 256)]
    if args.full:
        settings += [(12, 512), (14, 512), (16, 1024)]
    print(f"\nMIPS with simple-LSH + random hyperplanes: {desc}; recall@10 vs exact inner product")
    norms = np.linalg.norm(X, axis=1)
    print(f"database norms: min {norms.min():.3f}, median {np.median(norms):.3f}, max {norms.max():.3f}")
    rows = evaluate_lsh(X, Q, settings, k=10, seed=args.seed)
    print(f"{'n_bits':>7}{'n_tables':>9}{'recall@10':>11}{'cand. frac':>12}{'ms/query':>10}{'exact ms/q':>12}")
    for r in rows:
        print(f"{r['n_bits']:>7}{r['n_tables']:>9}{r['recall']:>11.3f}{r['cand_frac']:>12.3f}"
              f"{r['ms_per_query']:>10.3f}{r['exact_ms_per_query']:>12.3f}")
    _plot_lsh(rows, desc)
    if not any(r["recall"] >= 0.85 and r["cand_frac"] <= 0.35 for r in rows):
        failures.append("no LSH setting reached recall@10 >= 0.85 while scoring <= 35% of the database")
    recalls = [r["recall"] for r in rows if r["n_bits"] == 10]
    if len(recalls) >= 2 and recalls[1] < recalls[0]:
        failures.append("more tables lowered recall (10 bits, 64 -> 128 tables)")

    print(f"\nfigures written to {FIGURES}; total {time.perf_counter() - t_start:.1f} s")
    if failures:
        print("SANITY CHECKS FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("all sanity checks passed")
    return 0


def _plot_lsh(rows: list[dict], desc: str) -> None:
    from labkit.plots import plt, savefig

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    fr = [r["cand_frac"] for r in rows]
    rc = [r["recall"] for r in rows]
    ax.plot(fr, rc, "o", label="LSH (n_bits x n_tables)")
    grid = np.logspace(np.log10(min(fr) / 1.5), 0, 50)
    ax.plot(grid, grid, "--", color="gray", label="random subset of the same size")
    for r in rows:
        ax.annotate(f"{r['n_bits']}b x {r['n_tables']}t", (r["cand_frac"], r["recall"]),
                    textcoords="offset points", xytext=(5, -10), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("fraction of the database scored exactly (log)")
    ax.set_ylabel("recall@10 vs exact MIPS")
    ax.set_ylim(0, 1.05)
    ax.set_title("simple-LSH + random hyperplanes\n" + desc, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    savefig(fig, FIGURES / "lsh_recall.png")


if __name__ == "__main__":
    sys.exit(main())

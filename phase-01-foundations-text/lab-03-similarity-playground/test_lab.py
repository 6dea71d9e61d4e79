"""Grader for lab 1.3: metrics vs SciPy/sklearn, metric properties (hypothesis), LSH recall."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.spatial.distance import cdist
from sklearn.metrics import jaccard_score
from sklearn.metrics.pairwise import cosine_similarity as sk_cosine
from sklearn.metrics.pairwise import pairwise_distances

FLOATS = st.floats(-100, 100, allow_nan=False, allow_infinity=False, allow_subnormal=False)


def triples(min_d: int = 1, max_d: int = 8):
    """Three vectors of one random dimension, as rows of a (3, d) array."""
    return st.integers(min_d, max_d).flatmap(lambda d: arrays(np.float64, (3, d), elements=FLOATS))


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ------------------------------------------------------------------ cosine / dot
def test_cosine_matches_sklearn(lab):
    X, Y = _rng(0).standard_normal((7, 16)), _rng(1).standard_normal((5, 16))
    got = lab.cosine_similarity(X, Y)
    assert got.shape == (7, 5), f"cosine_similarity(X (7,16), Y (5,16)) must be (7, 5), got {got.shape}"
    np.testing.assert_allclose(got, sk_cosine(X, Y), atol=1e-12,
                               err_msg="cosine differs from sklearn: did you divide by BOTH row norms?")
    one = lab.cosine_similarity(X[0], Y[0])
    assert isinstance(one, float), "two 1-D vectors should give a Python float"
    assert one == pytest.approx(float(sk_cosine(X[:1], Y[:1])[0, 0]), abs=1e-12)
    # scale invariance: cosine ignores the length of either vector
    assert lab.cosine_similarity(3.0 * X, 0.5 * Y) == pytest.approx(got, abs=1e-12), \
        "cosine must not change when a vector is scaled by a positive number"


def test_cosine_rejects_zero_vector_and_bad_input(lab):
    with pytest.raises(ValueError, match="zero"):
        lab.cosine_similarity(np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match="mismatch"):
        lab.cosine_similarity(np.ones(3), np.ones(4))
    with pytest.raises(TypeError, match="sparse"):
        lab.cosine_similarity(sp.csr_matrix(np.eye(3)))
    with pytest.raises(ValueError, match="NaN"):
        lab.dot_similarity(np.array([1.0, np.nan]), np.ones(2))


def test_cosine_in_bounds_and_symmetric(lab):
    lab.cosine_similarity(np.eye(2))  # fail fast (one clear TODO message) before hypothesis searches

    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(triples())
    def check(V):
        assume(np.all(np.linalg.norm(V, axis=1) > 1e-3))
        S = lab.cosine_similarity(V)
        assert np.all(S >= -1.0) and np.all(S <= 1.0), (
            f"cosine left [-1, 1]: {S}. Rounding can push u.u/(|u||u|) past 1: clip the result")
        np.testing.assert_allclose(S, S.T, atol=1e-12, err_msg="cosine(x, y) must equal cosine(y, x)")
        np.testing.assert_allclose(np.diag(S), 1.0, atol=1e-12, err_msg="cosine(x, x) must be 1")

    check()


def test_cosine_equals_dot_on_unit_vectors(lab):
    lab.cosine_similarity(np.eye(2))  # fail fast (one clear TODO message) before hypothesis searches

    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(triples(2, 16))
    def check(V):
        norms = np.linalg.norm(V, axis=1, keepdims=True)
        assume(np.all(norms > 1e-3))
        U = V / norms
        np.testing.assert_allclose(lab.cosine_similarity(U), lab.dot_similarity(U), atol=1e-12,
                                   err_msg="on L2-normalised vectors cosine and dot product must agree")

    check()


def test_cosine_equals_dot_on_real_tfidf_rows(lab):
    """Lab 1.2's TF-IDF rows are L2-normalised, so cosine == dot on them (real data)."""
    from labkit import load_lab

    try:
        tfidf = load_lab("1.2")
    except FileNotFoundError:
        pytest.skip("lab 1.2 (TF-IDF) is not in this checkout")
    docs, _, _ = tfidf.load_cranfield()
    T = tfidf.TfidfVectorizer(sublinear_tf=True).fit_transform(docs[:300])
    D = T.toarray()
    D = D[np.linalg.norm(D, axis=1) > 0][:100]
    np.testing.assert_allclose(lab.cosine_similarity(D), lab.dot_similarity(D), atol=1e-12,
                               err_msg="cosine and dot must agree on unit-norm TF-IDF rows")
    np.testing.assert_allclose(lab.cosine_similarity(D), sk_cosine(D), atol=1e-12)


# ------------------------------------------------------------------ Euclidean / Manhattan
def test_euclidean_matches_scipy_and_never_negative(lab):
    X, Y = _rng(2).standard_normal((9, 20)) * 10, _rng(3).standard_normal((4, 20))
    got = lab.euclidean_distance(X, Y)
    assert got.shape == (9, 4)
    np.testing.assert_allclose(got, cdist(X, Y), rtol=1e-9, atol=1e-9,
                               err_msg="Euclidean distance differs from scipy cdist: check ||x||^2 + ||y||^2 - 2 x.y")
    # near-duplicates with a large norm: the expansion can go slightly negative
    base = _rng(4).standard_normal((50, 8)) * 1e4
    D = lab.euclidean_distance(base, base + 1e-9)
    assert np.all(np.isfinite(D)) and np.all(D >= 0), \
        "got NaN/negative distances: clamp the squared distance at 0 before np.sqrt"
    assert lab.euclidean_distance(np.array([0.0, 0.0]), np.array([3.0, 4.0])) == pytest.approx(5.0)


def test_euclidean_is_a_metric(lab):
    lab.euclidean_distance(np.eye(2))  # fail fast (one clear TODO message) before hypothesis searches

    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(triples())
    def check(V):
        D = lab.euclidean_distance(V)
        scale = 1.0 + np.abs(V).max()
        tol = 1e-6 * scale  # the expansion trick loses about sqrt(eps) * |x| absolute precision
        assert np.all(D >= 0)
        np.testing.assert_allclose(D, D.T, atol=tol, err_msg="Euclidean distance must be symmetric")
        np.testing.assert_allclose(np.diag(D), 0.0, atol=tol, err_msg="d(x, x) must be 0")
        np.testing.assert_allclose(D, cdist(V, V), atol=tol)
        assert D[0, 2] <= D[0, 1] + D[1, 2] + 3 * tol, "triangle inequality violated for Euclidean distance"

    check()


def test_manhattan_matches_scipy_in_blocks(lab):
    X, Y = _rng(5).standard_normal((13, 6)), _rng(6).standard_normal((7, 6))
    want = cdist(X, Y, "cityblock")
    np.testing.assert_allclose(lab.manhattan_distance(X, Y), want, atol=1e-12,
                               err_msg="Manhattan distance differs from scipy's cityblock: sum of |x - y|")
    np.testing.assert_allclose(lab.manhattan_distance(X, Y, max_block=50), want, atol=1e-12,
                               err_msg="wrong result when X is processed in blocks: check the block slicing")
    assert lab.manhattan_distance(np.array([1.0, -2.0]), np.array([4.0, 2.0])) == pytest.approx(7.0)


def test_manhattan_is_a_metric(lab):
    lab.manhattan_distance(np.eye(2))  # fail fast (one clear TODO message) before hypothesis searches

    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(triples())
    def check(V):
        D = lab.manhattan_distance(V)
        np.testing.assert_allclose(D, D.T, atol=1e-9)
        np.testing.assert_allclose(np.diag(D), 0.0, atol=1e-9)
        assert D[0, 2] <= D[0, 1] + D[1, 2] + 1e-9, "triangle inequality violated for Manhattan distance"

    check()


# ------------------------------------------------------------------ cosine distance vs angular
def test_cosine_distance_breaks_the_triangle_inequality(lab):
    u, v, w = np.array([1.0, 0.0]), np.array([1.0, 1.0]) / math.sqrt(2), np.array([0.0, 1.0])
    d = lambda a, b: lab.pairwise(a, b, "cosine_distance")  # noqa: E731
    assert d(u, w) == pytest.approx(1.0)
    assert d(u, w) > d(u, v) + d(v, w) + 0.4, "1 - cosine is not a metric: this 45-degree example must break it"
    a = lambda x, y: lab.pairwise(x, y, "angular")  # noqa: E731
    assert a(u, w) == pytest.approx(a(u, v) + a(v, w)), "the angle is additive along a great circle"


def test_angular_distance_is_a_metric(lab):
    lab.pairwise(np.eye(2), None, "angular")  # fail fast (one clear TODO message) before hypothesis searches

    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(triples(2, 8))
    def check(V):
        assume(np.all(np.linalg.norm(V, axis=1) > 1e-3))
        A = lab.pairwise(V, None, "angular")
        assert np.all(A >= 0) and np.all(A <= 1)
        assert A[0, 2] <= A[0, 1] + A[1, 2] + 1e-7, "the angle arccos(cos)/pi obeys the triangle inequality"

    check()


# ------------------------------------------------------------------ Jaccard
def test_jaccard_on_sets(lab):
    assert lab.jaccard_similarity({"a", "b", "c"}, {"b", "c", "d"}) == pytest.approx(0.5), \
        "|{b,c}| / |{a,b,c,d}| = 2/4: intersection over UNION"
    assert lab.jaccard_similarity({1, 2}, {3}) == 0.0
    assert lab.jaccard_similarity(set(), set()) == 1.0, "two empty sets are identical: similarity 1 (SciPy: distance 0)"
    with pytest.raises(TypeError):
        lab.jaccard_similarity({1}, np.ones(3))


def test_jaccard_on_binary_vectors_matches_scipy_and_sklearn(lab):
    rng = _rng(7)
    X, Y = rng.random((8, 12)) < 0.3, rng.random((5, 12)) < 0.3
    X[0] = False  # an all-zero row
    Y[0] = False
    got = lab.jaccard_similarity(X, Y)
    np.testing.assert_allclose(got, 1.0 - cdist(X, Y, "jaccard"), atol=1e-12,
                               err_msg="Jaccard similarity must be 1 - scipy's Jaccard distance")
    assert got[1, 1] == pytest.approx(jaccard_score(X[1], Y[1]))
    np.testing.assert_allclose(lab.pairwise(X, Y, "jaccard_distance"),
                               pairwise_distances(X, Y, metric="jaccard"), atol=1e-12)
    with pytest.raises(ValueError, match="binary"):
        lab.jaccard_similarity(np.array([0.0, 2.0]), np.array([1.0, 0.0]))


# ------------------------------------------------------------------ pairwise dispatch
@pytest.mark.parametrize("metric,sk_metric", [("euclidean", "euclidean"), ("manhattan", "manhattan"),
                                              ("cosine_distance", "cosine")])
def test_pairwise_matches_sklearn(lab, metric, sk_metric):
    X, Y = _rng(8).standard_normal((6, 10)), _rng(9).standard_normal((3, 10))
    np.testing.assert_allclose(lab.pairwise(X, Y, metric), pairwise_distances(X, Y, metric=sk_metric),
                               atol=1e-9)
    with pytest.raises(ValueError, match="unknown metric"):
        lab.pairwise(X, Y, "hamming-ish")


# ------------------------------------------------------------------ distance concentration
def test_relative_contrast(lab):
    D = np.array([[1.0, 2.0, 4.0], [2.0, 2.0, 3.0]])
    np.testing.assert_allclose(lab.relative_contrast(D), [3.0, 0.5],
                               err_msg="relative contrast is (max - min) / min, per row")
    with pytest.raises(ValueError, match="distance 0"):
        lab.relative_contrast(np.array([[0.0, 1.0]]))


def test_distance_concentrates_with_dimension(lab):
    rc = {}
    for d in (2, 50, 1000):
        X = lab.make_vectors("gaussian", 150, d, seed=0)
        rc[d] = np.median(lab.relative_contrast(lab.off_diagonal(lab.euclidean_distance(X))))
    assert rc[2] > rc[50] > rc[1000], f"relative contrast should shrink with d (Beyer et al. 1999), got {rc}"
    assert rc[1000] < 0.2, f"at d=1000 nearest and farthest Gaussian neighbours are close, got {rc[1000]:.3f}"
    U = lab.make_vectors("normalised", 200, 500, seed=0)
    C = lab.off_diagonal(lab.cosine_similarity(U))
    assert abs(C.std() - 1 / math.sqrt(500)) < 0.01, "random unit vectors in d dims have cosine std ~ 1/sqrt(d)"


# ------------------------------------------------------------------ exact MIPS
def test_exact_top_k_matches_argsort(lab):
    X, Q = _rng(10).standard_normal((300, 16)), _rng(11).standard_normal((20, 16))
    got = lab.exact_top_k(X, Q, 10)
    want = np.argsort(-(Q @ X.T), axis=1)[:, :10]
    assert got.shape == (20, 10)
    np.testing.assert_array_equal(got, want, err_msg="top-10 by inner product, best FIRST (descending score)")
    with pytest.raises(ValueError):
        lab.exact_top_k(X, Q, 301)


def test_recall_at_k(lab):
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    approx = np.array([[4, 3, 9, -1], [5, 6, 7, 8]])
    assert lab.recall_at_k(approx, exact) == pytest.approx((2 / 4 + 1) / 2)


# ------------------------------------------------------------------ simple-LSH + hyperplane LSH
def test_simple_lsh_transform(lab):
    rng = _rng(12)
    X = rng.standard_normal((100, 8)) * rng.uniform(0.1, 3.0, (100, 1))
    q = rng.standard_normal(8)
    P = lab.simple_lsh_transform(X)
    Qt = lab.simple_lsh_transform(q[None, :], queries=True)
    assert P.shape == (100, 9) and Qt.shape == (1, 9), "one extra coordinate is appended"
    np.testing.assert_allclose(np.linalg.norm(P, axis=1), 1.0, atol=1e-12,
                               err_msg="transformed data rows must have unit norm: append sqrt(1 - ||x/M||^2)")
    np.testing.assert_allclose(np.linalg.norm(Qt, axis=1), 1.0, atol=1e-12)
    assert Qt[0, -1] == 0.0, "the query gets a 0 in the extra coordinate"
    M = np.linalg.norm(X, axis=1).max()
    np.testing.assert_allclose(P @ Qt[0], X @ q / (M * np.linalg.norm(q)), atol=1e-12,
                               err_msg="<P(x), Q(q)> must equal <x, q> / (M ||q||) (Neyshabur & Srebro 2015)")
    with pytest.raises(ValueError, match="max_norm"):
        lab.simple_lsh_transform(X, max_norm=0.01)


def test_hash_codes_are_packed_sign_bits(lab):
    X = _rng(13).standard_normal((40, 5))
    lsh = lab.HyperplaneLSH(n_bits=7, n_tables=3, seed=1).fit(X)
    codes = lsh.hash(X)
    assert codes.shape == (3, 40), "hash() returns (n_tables, n)"
    bits = np.einsum("tbd,nd->tnb", lsh.planes, X) >= 0
    want = (bits * (2 ** np.arange(7))).sum(-1)
    np.testing.assert_array_equal(codes, want, err_msg="bit b of a code is [<plane_b, x> >= 0] with weight 2**b")


def test_collision_probability_follows_the_angle(lab):
    theta = math.pi / 3
    u, v = np.array([1.0, 0.0, 0.0]), np.array([math.cos(theta), math.sin(theta), 0.0])
    lsh = lab.HyperplaneLSH(n_bits=1, n_tables=4000, seed=0).fit(np.stack([u, v]))
    codes = lsh.hash(np.stack([u, v]))
    agree = float(np.mean(codes[:, 0] == codes[:, 1]))
    assert abs(agree - (1 - theta / math.pi)) < 0.03, \
        f"one random hyperplane separates two vectors with probability theta/pi; agreement {agree:.3f}"


def test_candidates_are_the_union_of_buckets(lab):
    rng = _rng(14)
    X, q = rng.standard_normal((500, 6)), rng.standard_normal(6)
    lsh = lab.HyperplaneLSH(n_bits=5, n_tables=4, seed=3).fit(X)
    cx, cq = lsh.hash(X), lsh.hash(q[None, :])
    want = np.flatnonzero((cx == cq).any(axis=0))
    got = lsh.candidates(q)
    np.testing.assert_array_equal(np.sort(got), want,
                                  err_msg="candidates = rows sharing q's bucket in ANY table (a union, no duplicates)")
    far = lab.HyperplaneLSH(n_bits=30, n_tables=1, seed=0).fit(X)
    assert far.candidates(q).size <= 1, "with 30 bits almost every bucket is empty; a missing bucket adds nothing"


def test_mips_query_reranks_exactly(lab):
    rng = _rng(15)
    X = rng.standard_normal((400, 8)) * rng.uniform(0.2, 2.0, (400, 1))
    q = rng.standard_normal(8)
    index = lab.MIPSLSH(n_bits=1, n_tables=12, seed=0).fit(X)  # 1 bit, 12 tables: ~every row
    ids, n_cand = index.query(q, k=10)
    assert n_cand > 390
    np.testing.assert_array_equal(ids, np.argsort(-(X @ q))[:10],
                                  err_msg="re-rank the candidates by the EXACT inner product with the original X")
    tiny = lab.MIPSLSH(n_bits=40, n_tables=1, seed=0).fit(X)
    ids, n_cand = tiny.query(q, k=10)
    assert ids.shape == (10,) and np.all(ids[n_cand:] == -1), "pad with -1 when fewer than k candidates"


def _low_rank(n: int, seed: int) -> np.ndarray:
    B = np.random.default_rng(0).standard_normal((6, 32))  # shared 6-dim subspace
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, 6)) @ B + 0.1 * rng.standard_normal((n, 32))
    return Z * rng.uniform(0.5, 1.0, (n, 1))  # varied norms: MIPS != cosine search


def test_lsh_recall_at_10_on_a_fixed_seed(lab):
    X = _low_rank(3000, seed=0)
    Q = np.random.default_rng(1).standard_normal((100, 6)) @ np.random.default_rng(0).standard_normal((6, 32))
    rows = lab.evaluate_lsh(X, Q, [(8, 64)], k=10, seed=0)
    r = rows[0]
    assert r["recall"] >= 0.9, f"recall@10 {r['recall']:.3f} < 0.9 for 8 bits x 64 tables (simple-LSH transform applied?)"
    assert r["cand_frac"] <= 0.3, f"scored {r['cand_frac']:.0%} of the database: buckets far too large"
    assert r["recall"] > r["cand_frac"] + 0.5, "LSH must beat scoring a random subset of the same size"

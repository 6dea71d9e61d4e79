"""Grader for lab 7.1 (embeddings and vector search). References: Phase 1 lab 02 (nDCG, Cranfield
loader, BM25), hand-computed metric cases, sentence-transformers (MiniLM), scikit-learn's
TruncatedSVD, faiss (IndexFlatIP, IndexIVFFlat with our centroids) and qdrant-client."""
from __future__ import annotations

import math

import numpy as np
import pytest

from labkit import load_lab

PHASE1 = "phase-01-foundations-text/lab-02-tfidf-search"


@pytest.fixture(scope="module")
def p1():
    return load_lab(PHASE1)


@pytest.fixture(scope="module")
def collections(lab):
    return {name: lab.load_collection(name) for name in ("cranfield", "cisi", "cacm")}


# --------------------------------------------------------------------------- collections (given)
@pytest.mark.given
def test_collection_sizes_and_qrels(collections):
    expect = {"cranfield": (1400, 225), "cisi": (1460, 76), "cacm": (3204, 52)}
    for name, (n_docs, n_q) in expect.items():
        c = collections[name]
        assert (c.n_docs, len(c.queries), len(c.qrels)) == (n_docs, n_q, n_q), name
        assert all(rel and min(rel.values()) >= 1 for rel in c.qrels.values())
        assert sum(not d.strip() for d in c.docs) <= 2 and all(q.strip() for q in c.queries)  # Cranfield 471, 995 are empty
    assert collections["cacm"].doc_ids[1409] == "1410" and 1409 in collections["cacm"].qrels[0]
    assert collections["cisi"].docs[0].startswith("18 Editions of the Dewey Decimal")


@pytest.mark.given
def test_cranfield_matches_phase1(collections, p1):
    docs, queries, qrels = p1.load_cranfield()
    c = collections["cranfield"]
    assert c.docs == docs and c.queries == queries
    for j in range(1, 226):
        assert c.qrels[j - 1] == {d - 1: p1.cranfield_gain(g) for d, g in qrels[j].items()}


@pytest.mark.given
def test_subsample_keeps_every_relevant_doc(collections):
    c = collections["cisi"]
    s = c.subsample(n_queries=5, n_docs=200, seed=0)
    assert len(s.queries) == 5 and s.n_docs == 200
    for q in range(5):
        assert {s.docs[d] for d in s.qrels[q]} == {c.docs[d] for d in c.qrels[q]}


@pytest.mark.given
def test_unknown_collection_is_a_clear_error(lab):
    with pytest.raises(ValueError, match="unknown collection"):
        lab.load_collection("msmarco")


# --------------------------------------------------------------------------- metrics
def test_recall_mrr_ndcg_hand_computed(lab):
    ranking = [7, 3, 9, 1, 4]
    assert lab.recall_at_k(ranking, {3, 4, 8}, k=2) == pytest.approx(1 / 3), \
        "recall@2 of [7, 3, ...] with R={3,4,8}: one of three relevant docs is in the top 2"
    assert lab.recall_at_k(ranking, {3, 4, 8}, k=5) == pytest.approx(2 / 3)
    assert lab.reciprocal_rank(ranking, {9, 4}) == pytest.approx(1 / 3), "ranks start at 1: 9 is third"
    assert lab.reciprocal_rank(ranking, {4}, k=3) == 0.0, "only the first k results count for MRR@k"
    assert lab.reciprocal_rank(ranking, {5}) == 0.0
    gains = {3: 2, 1: 1, 8: 3}
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    idcg = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    assert lab.ndcg_at_k(ranking, gains, k=5) == pytest.approx(dcg / idcg), \
        "nDCG: linear gains, discount 1/log2(rank+1) with rank from 1, IDCG over ALL judged gains"
    assert lab.ndcg_at_k([8, 3, 1], gains, k=3) == pytest.approx(1.0)
    assert lab.ndcg_at_k([8, 3, 1], gains, k=1) == pytest.approx(1.0), "IDCG@1 uses only the best gain"


def test_metrics_equal_phase1_and_sklearn(lab, p1):
    from sklearn.metrics import ndcg_score

    rng = np.random.default_rng(0)
    for _ in range(30):
        n = 40
        ranking = rng.permutation(n)[: rng.integers(10, n)]
        gains = {int(d): int(rng.integers(1, 5)) for d in rng.choice(n, size=rng.integers(1, 8), replace=False)}
        for k in (1, 5, 10):
            assert lab.ndcg_at_k(ranking, gains, k) == pytest.approx(p1.ndcg_at_k(list(ranking), gains, k)), \
                "nDCG differs from Phase 1's ndcg_at_k"
        scores = np.zeros(n)
        scores[ranking] = np.linspace(2, 1, len(ranking))
        truth = np.zeros(n)
        truth[list(gains)] = list(gains.values())
        assert lab.ndcg_at_k(np.argsort(-scores, kind="stable"), gains, 10) == pytest.approx(
            ndcg_score(truth[None], scores[None], k=10)), "nDCG differs from sklearn.metrics.ndcg_score"


@pytest.mark.given
@pytest.mark.parametrize("call", [
    lambda lab: lab.ndcg_at_k([1, 2, 1], {1: 1}),
    lambda lab: lab.recall_at_k([1, 2], {1}, k=0),
    lambda lab: lab.ndcg_at_k([1, 2], {1: float("nan")}),
])
def test_metric_bad_input(lab, call):
    with pytest.raises(ValueError):
        call(lab)


# --------------------------------------------------------------------------- MiniLM (given)
TEXTS = ["How do shock waves form on a swept wing?", "Library catalogues and subject headings.",
         "An algorithm for sorting in place.", ""]


@pytest.mark.given
def test_embed_minilm_equals_sentence_transformers_and_caches(lab, tmp_path, monkeypatch):
    from sentence_transformers import SentenceTransformer

    monkeypatch.setattr(lab, "EMBED_CACHE", tmp_path)
    ours = lab.embed_minilm(TEXTS)
    assert ours.shape == (4, 384) and ours.dtype == np.float32
    ref = SentenceTransformer(lab.minilm_model_path(), device="cpu")
    ref.max_seq_length = lab.MINILM_MAX_SEQ
    expect = ref.encode(TEXTS, normalize_embeddings=True)
    assert np.allclose(ours, expect, atol=1e-5)
    assert list(tmp_path.glob("*/*.npz")), "embed_minilm(cache=True) should write under EMBED_CACHE"
    monkeypatch.setattr(lab, "_encode_into", lambda *a, **k: pytest.fail("cached texts were encoded again"))
    again = lab.embed_minilm(list(reversed(TEXTS)) + TEXTS[:1])
    assert np.array_equal(again[:4], ours[::-1]) and np.array_equal(again[4], ours[0])


@pytest.mark.given
@pytest.mark.parametrize("texts, err", [("one string", TypeError), ([], ValueError), (["ok", 3], TypeError)])
def test_embed_minilm_bad_input(lab, texts, err):
    with pytest.raises(err):
        lab.embed_minilm(texts, cache=False)


# --------------------------------------------------------------------------- embeddings
def test_truncate_dims_keeps_prefix_and_renormalises(lab):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 384)).astype(np.float32)
    T = lab.truncate_dims(X, 64)
    assert T.shape == (20, 64) and T.dtype == np.float32
    assert np.allclose(np.linalg.norm(T, axis=1), 1, atol=1e-5), "re-normalise after cutting: IP must be cosine again"
    assert np.allclose(T * np.linalg.norm(X[:, :64], axis=1, keepdims=True), X[:, :64], atol=1e-5), \
        "keep the FIRST d coordinates (Matryoshka-style prefix), in order"
    for bad in (0, 385):
        with pytest.raises(ValueError):
            lab.truncate_dims(X, bad)


@pytest.fixture(scope="module")
def cran_tfidf(lab, collections):
    tf = load_lab(PHASE1).TfidfVectorizer(sublinear_tf=True)
    return tf.fit_transform(collections["cranfield"].docs[:500])


def test_randomized_svd_matches_arpack(lab, cran_tfidf):
    from sklearn.decomposition import TruncatedSVD

    U, S, Vt = lab.randomized_svd(cran_tfidf, 20, n_oversamples=20, n_iter=10, seed=0)
    assert U.shape == (500, 20) and S.shape == (20,) and Vt.shape == (20, cran_tfidf.shape[1])
    ref = TruncatedSVD(20, algorithm="arpack", random_state=0).fit(cran_tfidf)
    assert np.all(np.diff(S) <= 1e-12), "singular values must come out in descending order"
    assert np.all(S <= ref.singular_values_ + 1e-9), \
        "a projection onto a subspace can only UNDER-estimate singular values: S is computed wrongly"
    assert np.allclose(S[:10], ref.singular_values_[:10], rtol=1e-4), \
        "top singular values differ from ARPACK: did you run the power iterations (Y <- X X^T Y) and QR between them?"
    cos = np.abs(np.sum(Vt[:10] * ref.components_[:10], axis=1))
    assert np.all(cos > 0.999), "right singular vectors differ from ARPACK's (up to sign)"
    assert np.allclose(U.T @ U, np.eye(20), atol=1e-8), "U must have orthonormal columns (U = Q @ U_B, Q from a QR)"
    assert np.allclose(np.abs(np.sum(U[:, :10] * (cran_tfidf @ ref.components_[:10].T) / ref.singular_values_[:10],
                                     axis=0)), 1, atol=1e-3), "left singular vectors differ from ARPACK's"
    big = np.abs(Vt).argmax(axis=1)
    assert np.all(Vt[np.arange(20), big] > 0), "fix the sign: the largest-|.| entry of each Vt row is positive"


def test_lsa_encoder_equals_sklearn_pipeline(lab, collections):
    from sklearn.decomposition import TruncatedSVD

    docs = collections["cranfield"].docs[:500]
    lsa = lab.LSAEncoder(16, n_iter=15).fit(docs)
    Z = lsa.transform(docs[:50])
    X = lsa.tfidf.transform(docs[:50])
    ref = TruncatedSVD(16, algorithm="arpack", random_state=0).fit(lsa.tfidf.transform(docs))
    R = ref.transform(X)
    R /= np.linalg.norm(R, axis=1, keepdims=True)
    diff = np.abs(Z @ Z.T - R @ R.T)  # cosines do not depend on the components' signs
    assert diff.mean() < 0.005 and diff.max() < 0.05, "LSA cosines differ from TF-IDF -> sklearn TruncatedSVD"


def test_mean_word_vectors_is_weighted_mean(lab, collections):
    mwv = lab.MeanWordVectors(d_model=16, min_count=3).fit(collections["cranfield"].docs[:300])
    text = "the boundary layer on a flat plate zzzunknownzzz"
    toks = [t for t in load_lab(PHASE1).tokenize(text) if t in mwv.vocab]
    ids = [mwv.vocab[t] for t in toks]
    w = mwv.idf[ids]
    expect = (w[:, None] * mwv.vectors[ids]).sum(0)
    expect /= np.linalg.norm(expect)
    got = mwv.encode([text, "zzzunknownzzz qqqq"])
    assert got.shape == (2, 16)
    assert np.allclose(got[0], expect, atol=1e-5), "IDF-weighted mean of the known words' vectors, then L2-normalise"
    assert np.all(got[1] == 0), "a text with no known word gets a zero vector (not NaN)"
    mwv.idf_weight = False
    plain = mwv.vectors[ids].mean(0)
    assert np.allclose(mwv.encode([text])[0], plain / np.linalg.norm(plain), atol=1e-5), \
        "with idf_weight=False every known word counts once"


# --------------------------------------------------------------------------- search
def clustered(n, d, seed, centres=40):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d))
    X = c[rng.integers(0, centres, n)] + 0.6 * rng.standard_normal((n, d))
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def test_exact_search_equals_faiss_flat(lab):
    import faiss

    base, queries = clustered(3000, 48, 0), clustered(60, 48, 1)
    index = faiss.IndexFlatIP(48)
    index.add(base)
    ref_s, ref_i = index.search(queries, 10)
    s, i = lab.exact_search(queries, base, k=10, block=700)  # 700 does not divide 3000
    assert i.dtype == np.int64 and s.shape == (60, 10)
    assert np.array_equal(i, ref_i), "ids differ from faiss IndexFlatIP: check how block results are merged " \
        "(add the block's offset to its ids, keep the best k overall)"
    assert np.allclose(s, ref_s, atol=1e-5)
    s_all, i_all = lab.exact_search(queries[:2], base[:5], k=10)
    assert i_all.shape == (2, 5), "k larger than the base returns every vector"


def test_exact_search_ties_prefer_lower_id(lab):
    base = np.array([[1, 0], [0, 1], [1, 0], [1, 0]], dtype=np.float32)
    _, i = lab.exact_search(np.array([[1, 0]], dtype=np.float32), base, k=3, block=1)
    assert i.tolist() == [[0, 2, 3]], "equal scores must be ordered by the lower id (deterministic results)"


@pytest.mark.given
@pytest.mark.parametrize("q, b, k", [
    (np.ones((2, 3), np.float32), np.ones((4, 5), np.float32), 2),
    (np.full((2, 3), np.nan, np.float32), np.ones((4, 3), np.float32), 2),
    (np.ones((2, 3), np.float32), np.ones((4, 3), np.float32), 0),
    (np.ones((0, 3), np.float32), np.ones((4, 3), np.float32), 2),
])
def test_exact_search_bad_input(lab, q, b, k):
    with pytest.raises(ValueError):
        lab.exact_search(q, b, k)


def test_kmeans_finds_the_clusters_like_faiss(lab):
    import faiss

    rng = np.random.default_rng(3)
    centres = rng.standard_normal((8, 16)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    X = centres[np.repeat(np.arange(8), 300)] + 0.15 * rng.standard_normal((2400, 16)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    C = lab.kmeans(X, 8, n_iter=20, seed=0)
    assert C.shape == (8, 16) and C.dtype == np.float32
    assert np.allclose(np.linalg.norm(C, axis=1), 1, atol=1e-5), "spherical=True: unit-length centroids"
    assign = (X @ C.T).argmax(1)
    assert len(np.unique(assign)) == 8, "a centroid ended up with no points: re-seed empty clusters"

    def inertia(C):
        return float(((X - C[(X @ C.T).argmax(1)]) ** 2).sum())

    km = faiss.Kmeans(16, 8, niter=20, seed=1, spherical=True)
    km.train(X)
    assert inertia(C) <= 1.10 * inertia(km.centroids), \
        "k-means inertia is >10% worse than faiss.Kmeans: is each centroid the MEAN of its assigned points?"
    C2 = lab.kmeans(X, 8, n_iter=20, seed=0, spherical=False)
    assert not np.allclose(np.linalg.norm(C2, axis=1), 1), "spherical=False must not renormalise"


def test_kmeans_reseeds_empty_clusters(lab):
    X = np.array([[1, 0]] * 50 + [[0, 1]] * 50 + [[0.7071, 0.7071]], dtype=np.float32)
    C = lab.kmeans(X, 3, n_iter=5, seed=0)
    assert np.isfinite(C).all(), "an empty cluster divided by zero (NaN centroid)"
    assert len(np.unique((X @ C.T).argmax(1))) == 3, "re-seed an empty cluster with a badly fitted point"


@pytest.fixture(scope="module")
def ivf_setup(lab):
    base, queries = clustered(20_000, 32, 5, centres=200), clustered(200, 32, 6, centres=200)
    C = lab.kmeans(base, 64, seed=0)
    _, truth = lab.exact_search(queries, base, 10)
    return base, queries, C, truth


# the stated margin: our IVF's recall@10 may differ from faiss IndexIVFFlat (same centroids) by
# at most 0.01 at every nprobe (only ties in the coarse assignment can make them differ)
IVF_MARGIN = 0.01


def test_ivf_recall_matches_faiss_ivfflat_with_same_centroids(lab, ivf_setup):
    import faiss

    base, queries, C, truth = ivf_setup
    ours = lab.IVFIndex(C).add(base)
    ref = lab.faiss_ivf_with_centroids(C, base)
    invlists = faiss.extract_index_ivf(ref).invlists
    assert ours.list_sizes().tolist() == [invlists.list_size(j) for j in range(64)], \
        "list sizes differ from faiss: file each vector under its LARGEST inner-product centroid"
    last = -1.0
    for nprobe in (1, 2, 4, 8, 16, 64):
        ref.nprobe = nprobe
        r_ref = lab.recall_vs_exact(ref.search(queries, 10)[1], truth)
        r_ours = lab.recall_vs_exact(ours.search(queries, 10, nprobe)[1], truth)
        assert abs(r_ours - r_ref) <= IVF_MARGIN, \
            f"nprobe={nprobe}: our recall {r_ours:.3f} vs faiss {r_ref:.3f}: probe the nprobe centroids with the " \
            "highest inner product and scan ALL their vectors"
        assert r_ours >= last - 1e-9, "recall must not drop when nprobe grows"
        last = r_ours
    s, i = ours.search(queries, 10, 64)
    assert np.array_equal(i, truth), "nprobe = nlist scans everything: results must equal exact search"


def test_ivf_pads_short_results(lab):
    C = np.eye(4, dtype=np.float32)
    X = np.array([[1, 0, 0, 0], [0.9, 0.1, 0, 0], [0, 0, 1, 0]], dtype=np.float32)
    s, i = lab.IVFIndex(C).add(X).search(np.array([[1, 0, 0, 0]], dtype=np.float32), k=4, nprobe=1)
    assert i.tolist() == [[0, 1, -1, -1]] and np.isinf(s[0, 2:]).all(), \
        "fewer than k candidates: pad ids with -1 and scores with -inf"


def test_ivf_bad_nprobe(lab):
    C = np.eye(4, dtype=np.float32)
    index = lab.IVFIndex(C)
    q = np.ones((1, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="empty"):
        index.search(q, 10, 1)
    index.add(np.eye(4, dtype=np.float32))
    for bad in (0, 5):
        with pytest.raises(ValueError, match="nprobe"):
            index.search(q, 10, bad)


@pytest.mark.given
def test_qdrant_embedded_equals_exact_search(lab):
    base, queries = clustered(1500, 24, 7), clustered(8, 24, 8)
    qd = lab.QdrantIndex(24).add(base)
    try:
        _, ids = qd.search(queries, 10)
    finally:
        qd.close()
    truth = np.argsort(-(queries @ base.T), axis=1)[:, :10]
    assert all(set(a) == set(t) for a, t in zip(ids.tolist(), truth.tolist())), \
        "Qdrant's local mode scores every point: it must equal brute force"


def test_benchmark_covers_every_index_type(lab):
    base, queries = clustered(4000, 32, 9, centres=100), clustered(40, 32, 10, centres=100)
    rows = lab.benchmark_indexes(base, queries, nlist=32, nprobes=(1, 4, 32), ef_searches=(8, 64),
                                 qdrant_queries=10, log=lambda *a: None)
    names = {r["index"].split(" (")[0] for r in rows}
    assert {"exact", "faiss Flat", "IVF", "faiss IVFFlat", "faiss HNSW", "faiss IVFPQ", "Qdrant embedded"} <= names
    by = {(r["index"], r["param"]): r["recall"] for r in rows}
    assert by[("faiss Flat", "-")] == 1.0 and by[("IVF (ours)", "nprobe=32")] == 1.0
    hnsw = [r["recall"] for r in rows if r["index"].startswith("faiss HNSW")]
    assert hnsw[-1] >= hnsw[0] and hnsw[-1] >= 0.9


# --------------------------------------------------------------------------- quality on real judgments
@pytest.fixture(scope="module")
def cran_pool(lab, collections):
    return lab.pool_for_budget(collections["cranfield"], 200)  # the self-test's pool: its MiniLM vectors are cached


def test_dense_retrieval_quality_on_cranfield_pool(lab, cran_pool):
    import torch

    torch.set_num_threads(1)
    D, Q = lab.embed_minilm(cran_pool.docs), lab.embed_minilm(cran_pool.queries)
    res = {dim: lab.evaluate_rankings(lab.rank_all(lab.truncate_dims(Q, dim), lab.truncate_dims(D, dim)),
                                      cran_pool.qrels)["ndcg@10"] for dim in (384, 64)}
    bm25 = lab.evaluate_rankings(lab.bm25_rankings(cran_pool), cran_pool.qrels)["ndcg@10"]
    assert res[384] >= 0.5, f"MiniLM nDCG@10 {res[384]:.3f} on the 200-doc Cranfield pool is too low"
    assert res[64] >= 0.6 * res[384], "64 dims should keep most of the quality"
    assert bm25 >= 0.4

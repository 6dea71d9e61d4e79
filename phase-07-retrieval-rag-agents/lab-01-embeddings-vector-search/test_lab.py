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

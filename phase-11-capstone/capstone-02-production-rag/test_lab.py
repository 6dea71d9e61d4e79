"""Tests for capstone 02 (production RAG): the hybrid retriever against hand computations, the
paired bootstrap against hand cases, Phase 8 lab 1 and scipy, the scorecard and A/B on the real eval
set, the service under concurrent load on loopback, and the web UI in a real headless Chromium."""
from __future__ import annotations

import os
import shutil
import threading
import time

import numpy as np
import pytest

from labkit import load_lab

H = load_lab("phase-07-retrieval-rag-agents/lab-03-hybrid-rerank")
R = load_lab("phase-07-retrieval-rag-agents/lab-02-rag-pipeline")
EV = load_lab("phase-08-evaluation-safety/lab-03-rag-eval")
HARNESS = load_lab("phase-08-evaluation-safety/lab-01-eval-harness")

QUESTION = "Who introduced the term albedo into optics?"


class FakeCrossEncoder:
    """Scores a (query, text) pair by the text's length: a re-ranker whose order is easy to predict."""

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, pairs, batch_size=32, show_progress_bar=False):
        self.calls += 1
        return np.array([float(len(t)) for _, t in pairs])


@pytest.fixture(scope="module")
def pipe(lab):
    import torch

    torch.set_num_threads(1)
    return lab.build_pipeline(lab.load_corpus(), reranker=FakeCrossEncoder())


@pytest.fixture(scope="module")
def items():
    return EV.load_eval_set()


@pytest.fixture(scope="module")
def server(lab, pipe):
    with lab.serve(lab.create_service(pipe)) as base:
        yield base


def ids(hits):
    return [h.chunk_id for h in hits]


def dense_ranking(pipe, query, depth):
    vec = pipe.embedder.encode([query], use_cache=False)[0]
    return [pipe.chunk_pos[h.chunk_id] for h in pipe.index.search(vec, depth)]


def bm25_ranking(pipe, query, depth):
    scores = np.asarray(pipe.sparse.scores(query))
    return [int(i) for i in H.rank_by_score(scores, depth) if scores[i] > 0]


def hand_rrf(rankings, k=60.0):
    """RRF written out by hand: sum of 1 / (k + rank), ties by best rank then id."""
    score, best = {}, {}
    for r in rankings:
        for rank, d in enumerate(r, 1):
            score[d] = score.get(d, 0.0) + 1.0 / (k + rank)
            best[d] = min(best.get(d, rank), rank)
    return sorted(score, key=lambda d: (-score[d], best[d], d)), score


# ============================================================================ given pieces
@pytest.mark.given
def test_corpus_and_configs(lab):
    docs = lab.load_corpus()
    assert len({d.doc_id for d in docs}) == len(docs), "doc_ids must be unique"
    assert [d.doc_id for d in docs[:13]] == [d.doc_id for d in R.load_default_corpus()]
    assert len(docs) >= 60, "small mode indexes the 13 eval documents plus the WikiText-2 validation articles"
    assert len(lab.load_corpus(n_distractors=0)) == 13
    with pytest.raises(ValueError, match="n_distractors"):
        lab.load_corpus(n_distractors=-1)
    for bad in ({"dense": False, "sparse": False}, {"depth": 0}, {"rrf_k": 0.0}, {"rrf_k": float("nan")},
                {"rerank_depth": 2.5}):
        with pytest.raises(ValueError):
            lab.RetrieverConfig("bad", **bad)
    with pytest.raises(TypeError, match="RetrieverConfig"):
        lab.HybridRAGPipeline(R.get_embedder(), config="hybrid")


# ============================================================================ TODO 1: the BM25 side of the index
def test_bm25_index_mirrors_qdrant(pipe):
    assert pipe.sparse is not None, "add_documents must build a BM25Retriever over the chunks (pipe.sparse)"
    assert len(pipe.chunk_list) == pipe.n_chunks, (
        f"BM25 indexes {len(pipe.chunk_list)} chunks but Qdrant holds {pipe.n_chunks}: both must see every chunk")
    expected = [c.chunk_id for d in sorted(pipe.chunks) for c in pipe.chunks[d]]
    assert [c.chunk_id for c in pipe.chunk_list] == expected, "chunk_list: documents in sorted doc_id order"
    assert all(pipe.chunk_pos[c.chunk_id] == i for i, c in enumerate(pipe.chunk_list)), "chunk_pos is off"
    ref = H.BM25Retriever([c.text for c in pipe.chunk_list])
    np.testing.assert_allclose(pipe.sparse.scores(QUESTION), ref.scores(QUESTION), rtol=1e-12,
                               err_msg="pipe.sparse must be lab 7.3's BM25Retriever over chunk_list's texts")


def test_reindexing_leaves_no_stale_bm25_chunk(lab):
    small = lab.HybridRAGPipeline(R.get_embedder(), R.QdrantIndex(R.get_embedder().dim, collection="t-reindex"),
                                  config=lab.CONFIGS["bm25"])
    long_text = "\n\n".join(f"Paragraph {i}: the vault holds ledger number {i} and the quokkaword{i} token. " * 6
                            for i in range(6))
    small.add_documents([R.Document("vault", long_text, title="Vault"),
                         R.Document("other", "A short note about tea and biscuits.", title="Other")])
    assert len(small.chunks["vault"]) >= 3
    assert ids(small.retrieve("quokkaword5", 3)), "BM25 should find the rare word before re-indexing"
    small.add_documents([R.Document("vault", "The vault is empty now.", title="Vault")])
    assert [c.chunk_id for c in small.chunk_list] == ["other#000", "vault#000"], (
        "after re-indexing 'vault' with one chunk, BM25 must hold exactly that chunk and the other document's")
    assert small.retrieve("quokkaword5", 3) == [], (
        "a replaced document's old chunks are still in the BM25 index: rebuild it from self.chunks after "
        "super().add_documents, or the service cites text that no longer exists")


# ============================================================================ TODO 2 + 3: retrieval
def test_dense_only_equals_qdrant(lab, pipe):
    hits = pipe.retrieve(QUESTION, 5, lab.CONFIGS["dense"])
    vec = pipe.embedder.encode([QUESTION], use_cache=False)[0]
    assert ids(hits) == ids(pipe.index.search(vec, 5)), (
        "with only the dense retriever on, RRF over one ranking must keep Qdrant's order")


def test_bm25_only_equals_bm25_ranking(lab, pipe):
    hits = pipe.retrieve(QUESTION, 5, lab.CONFIGS["bm25"])
    want = [pipe.chunk_list[i].chunk_id for i in bm25_ranking(pipe, QUESTION, 20)[:5]]
    assert ids(hits) == want, "with only BM25 on, the order must be BM25's (rank_by_score over chunk_list)"
    assert pipe.retrieve("zzqxw vvbnq", 5, lab.CONFIGS["bm25"]) == [], (
        "a query sharing no term with any chunk has BM25 score 0 everywhere: return nothing, not 5 random chunks")


@pytest.mark.parametrize("query", [QUESTION, "When did Connes win the Fields Medal?",
                                   "Which squadron flew Beaufighters?"])
def test_hybrid_equals_hand_rrf(lab, pipe, query):
    cfg = lab.CONFIGS["hybrid"]
    order, score = hand_rrf([dense_ranking(pipe, query, cfg.depth), bm25_ranking(pipe, query, cfg.depth)], cfg.rrf_k)
    hits = pipe.retrieve(query, 5, cfg)
    assert ids(hits) == [pipe.chunk_list[i].chunk_id for i in order[:5]], (
        "hybrid order differs from RRF over (dense top depth, BM25 top depth) positions in chunk_list")
    np.testing.assert_allclose([h.score for h in hits], [score[i] for i in order[:5]], rtol=1e-12,
                               err_msg="Hit.score must be the fused RRF score")
    assert all(isinstance(h, R.Hit) and h.text == pipe.chunk_list[pipe.chunk_pos[h.chunk_id]].text for h in hits)


def test_doc_filter(lab, pipe):
    for name in ("dense", "bm25", "hybrid"):
        hits = pipe.retrieve("light reflected by a surface", 5, lab.CONFIGS[name], doc_id="wiki-albedo")
        assert hits and {h.doc_id for h in hits} == {"wiki-albedo"}, f"{name}: doc_id filter not applied"


def test_rerank_reorders_the_fused_candidates(lab, pipe):
    cfg = lab.CONFIGS["hybrid+rerank"]
    order, _ = hand_rrf([dense_ranking(pipe, QUESTION, cfg.depth), bm25_ranking(pipe, QUESTION, cfg.depth)])
    cands = [pipe.chunk_list[i] for i in order[: max(5, cfg.rerank_depth)]]
    want = sorted(range(len(cands)), key=lambda j: -len(cands[j].text))[:5]  # stable: ties keep RRF order
    hits = pipe.retrieve(QUESTION, 5, cfg)
    assert ids(hits) == [cands[j].chunk_id for j in want], (
        "re-ranking must score the fused top rerank_depth (not just the top k) and sort by the cross-encoder")
    assert [h.score for h in hits] == [float(len(cands[j].text)) for j in want], "Hit.score = the re-ranker's score"
    assert pipe.timings.counts["rerank"] >= 1 and pipe.timings.counts["fuse"] >= 1, "record stage timings"


def test_search_and_answers_go_through_hybrid(lab, pipe):
    hybrid_ids = ids(pipe.retrieve(QUESTION, 5))
    assert ids(pipe.search(QUESTION, 5)) == hybrid_ids
    ans = pipe.answer(QUESTION, 5)
    assert ids(ans.sources) == hybrid_ids
    assert ans.citations and all(ans.sources[c.n - 1].chunk_id == c.chunk_id for c in ans.citations)
    assert "Lambert" in ans.answer, f"the albedo question should be answered from the right chunk: {ans.answer!r}"


# ============================================================================ TODO 4: chunk lookup
def test_chunk_by_id(lab, pipe):
    c = pipe.chunks["wiki-albedo"][1]
    got = lab.chunk_by_id(pipe, c.chunk_id)
    assert got["text"] == c.text and got["doc_id"] == "wiki-albedo" and got["chunk_id"] == c.chunk_id
    with pytest.raises(KeyError):
        lab.chunk_by_id(pipe, "wiki-albedo#999")


# ============================================================================ TODO 5: the paired bootstrap
def test_paired_bootstrap_hand_cases(lab):
    a = np.array([0.2, 0.5, 0.9, 0.1, 0.4])
    same = lab.paired_bootstrap(a, a, n_boot=500)
    assert same["delta"] == 0 and same["ci"] == (0.0, 0.0) and same["p_value"] == 1.0 and same["ties"] == 5, (
        "B == A on every question: delta 0, CI [0, 0], p = 1")
    shift = lab.paired_bootstrap(a, a + 0.25, n_boot=500)
    assert shift["delta"] == pytest.approx(0.25) and shift["ci"] == pytest.approx((0.25, 0.25))
    assert shift["p_value"] == pytest.approx(1 / 501), (
        "B = A + 0.25 on every question: no resample is as extreme under the null, so p = 1/(n_boot+1)")
    assert (shift["wins"], shift["losses"]) == (5, 0)
    nan = lab.paired_bootstrap([1.0, float("nan"), 0.0, 1.0], [1.0, 1.0, 1.0, 0.0], n_boot=200)
    assert nan["n"] == 3 and nan["dropped"] == 1, "drop (and count) pairs with a NaN on either side"


def test_paired_bootstrap_equals_phase8_ci_and_scipy(lab):
    from scipy import stats

    rng = np.random.default_rng(7)
    a = rng.normal(0.5, 0.2, 300)
    b = a + rng.normal(0.04, 0.25, 300)
    pb = lab.paired_bootstrap(a, b, n_boot=4000, seed=3)
    assert pb["ci"] == pytest.approx(HARNESS.bootstrap_ci(b - a, n_boot=4000, seed=3), abs=1e-12), (
        "the paired CI is the percentile bootstrap of the per-question differences (Phase 8 lab 1's bootstrap_ci)")
    t_p = stats.ttest_rel(b, a).pvalue
    assert abs(pb["p_value"] - t_p) < 0.03, f"bootstrap p {pb['p_value']:.4f} vs paired t-test p {t_p:.4f}"
    ref = stats.bootstrap((b - a,), np.mean, n_resamples=4000, method="percentile", random_state=0)
    assert pb["ci"][0] == pytest.approx(ref.confidence_interval.low, abs=0.01)
    assert pb["ci"][1] == pytest.approx(ref.confidence_interval.high, abs=0.01)


@pytest.mark.given
def test_paired_bootstrap_bad_input(lab):
    with pytest.raises(ValueError, match="paired"):
        lab.paired_bootstrap([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="2 pairs"):
        lab.paired_bootstrap([1.0, float("nan")], [1.0, 1.0])
    with pytest.raises(ValueError, match="n_boot"):
        lab.paired_bootstrap([1, 2], [2, 3], n_boot=0)
    with pytest.raises(ValueError, match="alpha"):
        lab.paired_bootstrap([1, 2], [2, 3], alpha=1.0)


# ============================================================================ scorecard + A/B on the real eval set
def test_scorecard_and_ab(lab, pipe, items):
    res = {n: lab.evaluate_retriever(pipe, items, lab.CONFIGS[n]) for n in ("dense", "hybrid")}
    for r in res.values():
        assert len(r["rows"]) == len(items) == 53
        for m in ("hit@1", "hit@5", "rr", "context_precision", "context_recall", "faithfulness"):
            assert 0 <= r[m] <= 1, f"{r['config']} {m} = {r[m]}"
        assert r["hit@5"] >= 0.75, f"{r['config']} finds the evidence in the top 5 for only {r['hit@5']:.2f}"
    ab = lab.run_ab(res["dense"], res["hybrid"], n_boot=1000)
    rr = next(x for x in ab if x["metric"] == "rr")
    d = np.array([r["rr"] for r in res["hybrid"]["rows"]]) - np.array([r["rr"] for r in res["dense"]["rows"]])
    assert rr["delta"] == pytest.approx(d.mean()) and rr["ci"][0] <= rr["delta"] <= rr["ci"][1]
    flipped = {**res["hybrid"], "rows": res["hybrid"]["rows"][::-1]}
    with pytest.raises(ValueError, match="paired"):
        lab.run_ab(res["dense"], flipped)


# ============================================================================ the service
def test_service_routes(server, pipe):
    import httpx

    page = httpx.get(f"{server}/")
    assert page.status_code == 200 and 'id="question"' in page.text and "EventSource" in page.text
    c = pipe.chunks["wiki-albedo"][0]
    got = httpx.get(f"{server}/chunks/" + c.chunk_id.replace("#", "%23"))
    assert got.status_code == 200 and got.json()["text"] == c.text
    missing = httpx.get(f"{server}/chunks/nope%23000")
    assert missing.status_code == 404 and "nope#000" in missing.json()["error"]["message"]
    assert httpx.get(f"{server}/config").json()["name"] == "hybrid"
    assert httpx.post(f"{server}/query", json={"query": "  "}).status_code == 422
    metrics = httpx.get(f"{server}/metrics").text
    assert 'rag_stage_seconds_count{stage="sparse"}' in metrics and "rag_chunks_indexed" in metrics


def test_concurrent_load_loses_no_request(lab, server, pipe, items):
    questions = [it.question for it in items[:8]]
    ref = {q: pipe.answer(q, 5).answer for q in questions}
    lt = lab.load_test(server, questions, n_requests=32, concurrency=16)
    assert lt["lost"] == 0, f"{lt['lost']} of 32 concurrent requests lost: {lt['errors']}"
    wrong = [r["question"] for r in lt["results"] if r["answer"] != ref[r["question"]]]
    assert not wrong, f"answers under load differ from the sequential ones for {wrong[:3]}: a race in the pipeline?"
    assert sum(r["stream"] for r in lt["results"]) == 16


# ============================================================================ the LLM path
def test_llm_answers_use_hybrid_sources(lab, pipe, llm_endpoint):
    from labkit import curriculum_model_path

    gen = R.OpenAIGenerator(llm_endpoint.base_url, llm_endpoint.model, max_tokens=24, context_tokens=256,
                            prompt_tokens=R.hf_chat_token_counter(curriculum_model_path("main") / "hf"))
    old, pipe.generator = pipe.generator, gen
    try:
        ans = pipe.answer(QUESTION, 3, mode="llm")
        events = list(pipe.stream_answer(QUESTION, 3, mode="llm"))
    finally:
        pipe.generator = old
    hybrid_ids = ids(pipe.retrieve(QUESTION, 3))
    assert ids(ans.sources) == hybrid_ids[: len(ans.sources)] and ans.sources, "LLM prompt sources = hybrid top k"
    assert ans.prompt_tokens is not None and ans.prompt_tokens + 24 <= 256, "the prompt must fit the window"
    assert all(1 <= c.n <= len(ans.sources) for c in ans.citations)
    assert [e["event"] for e in events][0] == "sources" and events[-1]["event"] == "done"


# ============================================================================ the web UI in a real browser
def _browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -r requirements.txt)")
    binary = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("Chromium + chromedriver are missing under CI=true: .ci/run must "
                        "`apt-get install -y chromium chromium-driver`")
        pytest.skip("no Chromium + chromedriver on this machine (Debian/Ubuntu: apt-get install chromium "
                    "chromium-driver; .ci/run installs them)")
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(a)
    opts.binary_location = binary
    return webdriver.Chrome(service=Service(driver), options=opts)


def test_ui_in_headless_chromium(lab, pipe):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _browser()
    delay = 0.08
    try:
        with lab.serve(lab.create_service(pipe, stream_delay_s=delay)) as base:
            browser.get(base + "/")
            box = browser.find_element(By.ID, "question")
            box.send_keys(QUESTION)
            browser.find_element(By.ID, "ask").click()
            wait = WebDriverWait(browser, 30, poll_frequency=0.01)
            # streamed text visible while the stream is still open
            wait.until(lambda b: b.execute_script("return window.ragState.tokens") >= 2)
            partial = browser.find_element(By.ID, "answer").text
            still = browser.execute_script("return window.ragState.done")
            assert partial and not still, "the answer should appear while it streams, before the done event"
            wait.until(lambda b: b.execute_script("return window.ragState.done"))
            st = browser.execute_script("return window.ragState")
            ref = pipe.answer(QUESTION, 5)
            assert st["answer"].strip() == ref.answer.strip(), "the UI's streamed text differs from the answer"
            spread = (st["times"][-1] - st["times"][0]) / 1000
            assert spread >= 0.5 * delay * (st["tokens"] - 1), (
                f"{st['tokens']} tokens arrived within {spread:.3f} s: the stream was buffered, not incremental")
            links = browser.find_elements(By.CSS_SELECTOR, "#answer a.citation")
            assert links, "the final answer must render its [n] citations as links"
            want = next(c for c in ref.citations if c.n == int(links[0].get_attribute("data-n")))
            links[0].click()
            wait.until(lambda b: b.find_element(By.ID, "chunk-text").text.strip() != "")
            shown = browser.find_element(By.ID, "chunk-text").text
            chunk = pipe.chunks[want.doc_id][int(want.chunk_id.split("#")[1])]
            assert " ".join(shown.split()) == " ".join(chunk.text.split()), "the citation opened the wrong chunk"
            assert browser.find_element(By.ID, "chunk-id").text == want.chunk_id
    finally:
        browser.quit()


@pytest.mark.given
def test_thread_safety_of_embedding(lab):
    """Many threads embedding at once must not trip the Rust tokenizer ("Already borrowed")."""
    pipe = lab.HybridRAGPipeline(R.get_embedder())
    errors = []

    def work(i):
        try:
            pipe.embed([f"question number {i} about albedo"])
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, f"concurrent embedding failed: {errors[:2]}"
    assert time.perf_counter() - t < 60

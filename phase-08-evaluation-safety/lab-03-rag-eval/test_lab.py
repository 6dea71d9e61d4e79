"""Grader for lab 8.3 (RAG evaluation). References: hand-computed metric values, scikit-learn's
``average_precision_score`` (RAGAS context precision is average precision over the retrieved list)
and ``cosine_similarity``, lab 7.3's cross-encoder scores, lab 7.2's pipeline (loaded by path), and
the curriculum model behind labkit's OpenAI-compatible server (``llm_endpoint``) as generator and
judge."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

nan = float("nan")


def same(a: float, b: float, tol: float = 1e-12) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def items(lab):
    return lab.load_eval_set()


@pytest.fixture(scope="module")
def pipe(lab):
    return lab.build_pipeline(128)


class FakeClient:
    """``chat.completions.create`` answered by ``rule(prompt) -> str``; remembers every prompt."""

    def __init__(self, rule):
        self.rule = rule
        self.prompts: list[str] = []
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self.create))

    def create(self, model, messages, max_tokens, temperature, seed, **kw):
        prompt = messages[-1]["content"]
        self.prompts.append(prompt)
        msg = SimpleNamespace(content=self.rule(prompt))
        return SimpleNamespace(choices=[SimpleNamespace(message=msg)])


# ---------------------------------------------------------------------------------------- given
@pytest.mark.given
def test_eval_set_has_50_questions_with_gold_contexts(items):
    assert len(items) >= 50, f"the eval set needs >= 50 questions, has {len(items)}"
    assert len({i.id for i in items}) == len(items), "question ids must be unique"
    assert len({i.doc_id for i in items}) == 13, "every corpus document should be asked about"
    for it in items:
        assert it.evidence in it.gold_context, f"{it.id}: the gold context must contain the evidence"
        assert it.question.strip() and it.reference.strip()


@pytest.mark.given
def test_normalisation_and_claims(lab):
    assert lab.normalize_tokens("The Cat, a <unk> dog [2]!") == ["cat", "dog"]
    assert lab.split_claims("Paris is big [1]. [2] ... It rains.") == ["Paris is big.", "It rains."]
    assert lab.split_claims("") == [] and lab.split_claims("[1]") == []


@pytest.mark.given
def test_bad_input_is_refused(lab, pipe):
    with pytest.raises(TypeError, match="list of strings"):
        lab.support_score("a claim", "one string context")
    with pytest.raises(TypeError):
        lab.faithfulness_proxy("answer", ["ok", 3])
    for bad in (0, -0.1, 1.5, nan, True):
        with pytest.raises(ValueError, match="threshold"):
            lab.faithfulness_proxy("An answer.", ["ctx"], threshold=bad)
    for bad in ([1, 2], [0.5], [None]):
        with pytest.raises(ValueError, match="verdict"):
            lab.faithfulness_score(bad)
    with pytest.raises(TypeError):
        lab.context_precision_score("101")
    with pytest.raises(ValueError, match="NaN"):
        lab.answer_relevance_score(np.array([1.0, nan]), np.ones((1, 2)))
    with pytest.raises(ValueError, match="shape|expected"):
        lab.answer_relevance_score(np.ones(3), np.ones((2, 4)))
    with pytest.raises(ValueError, match="empty"):
        lab.answer_relevance_proxy("  ?", "an answer", lambda xs: np.ones((len(xs), 2)))
    with pytest.raises(ValueError, match="k must"):
        lab.retrieve(pipe, "Who invented constant k filters?", 0)
    with pytest.raises(ValueError, match="temperature"):
        lab.generate_rag_answers(pipe, [], None, "m", temperature=2.5)
    with pytest.raises(ValueError, match="claims"):
        lab.LLMJudge(None, "m", claims="words")
    with pytest.raises(ValueError, match="budget"):
        lab.LLMJudge(None, "m", budget=100)
    with pytest.raises(TypeError):
        lab.normalize_tokens(None)


@pytest.mark.given
def test_aggregate_reports_nans(lab):
    assert lab.aggregate([1.0, nan, 0.0]) == (0.5, 1)
    m, n = lab.aggregate([nan, nan])
    assert math.isnan(m) and n == 2


# ---------------------------------------------------------------------------------------- the formulas
def test_faithfulness_and_recall_ratios(lab):
    for f in (lab.faithfulness_score, lab.context_recall_score):
        assert f([1, 0, 1]) == pytest.approx(2 / 3), f"{f.__name__}: supported / claims, 2 of 3 here"
        assert f([True, True]) == 1.0 and f([0, 0]) == 0.0
        assert math.isnan(f([])), f"{f.__name__}([]) must be NaN: no claims means nothing to score, not 0 or 1"


def test_context_precision_hand_computed(lab):
    cases = {(1, 1, 0): 1.0, (0, 1, 1): (1 / 2 + 2 / 3) / 2, (0, 0, 1, 1, 0): (1 / 3 + 2 / 4) / 2,
             (1, 0, 1): (1 + 2 / 3) / 2, (0, 0): 0.0, (1,): 1.0, (0, 0, 0, 1): 0.25}
    for v, want in cases.items():
        got = lab.context_precision_score(list(v))
        assert got == pytest.approx(want, abs=1e-12), (
            f"context precision of {v}: want {want:.4f}, got {got}. Precision@k uses the relevant count in the "
            "first k (1-based k), is added only at relevant ranks, and the sum is divided by the number of "
            "relevant chunks (0.0 when there are none).")
    assert math.isnan(lab.context_precision_score([])), "no retrieved chunk: precision is undefined, NaN"


def test_context_precision_equals_sklearn_average_precision(lab):
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    for _ in range(40):
        n = int(rng.integers(1, 12))
        v = rng.integers(0, 2, n)
        if v.sum() == 0:
            v[rng.integers(n)] = 1
        ref = average_precision_score(v, -np.arange(n))  # rank order as a strictly decreasing score
        assert lab.context_precision_score(v.tolist()) == pytest.approx(ref, abs=1e-12), (
            f"{v.tolist()}: RAGAS context precision is average precision over the retrieved list")


def test_answer_relevance_score_equals_mean_cosine(lab):
    from sklearn.metrics.pairwise import cosine_similarity

    rng = np.random.default_rng(1)
    q, g = rng.normal(size=8), rng.normal(size=(3, 8)) * [[1.0], [5.0], [0.2]]
    want = cosine_similarity(q[None], g).mean()
    assert lab.answer_relevance_score(q, g) == pytest.approx(want, abs=1e-12), (
        "mean cosine similarity: normalise each vector (the generated ones have different norms here)")
    assert lab.answer_relevance_score(q, g, noncommittal=True) == 0.0, "a noncommittal answer scores 0 (RAGAS)"
    assert math.isnan(lab.answer_relevance_score(q, np.zeros((0, 8)))), "no generated question: NaN"
    with pytest.raises(ValueError, match="zero"):
        lab.answer_relevance_score(q, np.zeros((1, 8)))


# ---------------------------------------------------------------------------------------- judge-free proxies
def test_support_score_hand_computed(lab):
    # tokens of the claim: cat sat on mat (articles dropped); the contexts hold cat and mat
    assert lab.support_score("The cat sat on the mat.", ["A cat.", "mat"]) == 0.5
    assert lab.support_score("cat cat dog", ["cat"]) == pytest.approx(2 / 3), "count the claim's tokens with repeats"
    assert lab.support_score("Paris.", []) == 0.0, "empty contexts support nothing: 0.0"
    assert math.isnan(lab.support_score("[1] ...", ["x"])), "a claim without tokens has no support ratio: NaN"


def test_faithfulness_proxy_hand_computed(lab):
    ctx = ["Paris is the capital of France."]
    ans = "Paris is the capital of France [1]. Bananas are blue."
    assert lab.faithfulness_proxy(ans, ctx) == 0.5, "claim 1 fully supported, claim 2 (bananas are blue) not"
    assert lab.faithfulness_proxy(ans, ctx, soft=True) == 0.5, "soft: mean support = (1 + 0) / 2"
    assert lab.faithfulness_proxy("Paris is blue.", ctx) == 1.0, "2/3 of the tokens >= the 0.5 threshold"
    assert lab.faithfulness_proxy("Paris is blue.", ctx, threshold=0.9) == 0.0
    assert math.isnan(lab.faithfulness_proxy("", ctx)), "an empty answer has no claims: NaN"
    assert math.isnan(lab.faithfulness_proxy("[1] ...", ctx)), "citations alone are not claims: NaN"
    assert lab.faithfulness_proxy(ans, []) == 0.0, "claims over empty contexts are unsupported: 0.0, not NaN"


def test_context_recall_and_precision_proxies_hand_computed(lab):
    ctx = ["Bananas are yellow.", "Paris is the capital of France."]
    ref = "Paris is the capital of France. It has about two million people."
    assert lab.context_recall_proxy(ref, ctx) == 0.5, "one of the two reference sentences is in the contexts"
    assert lab.context_recall_proxy(ref, ctx[::-1]) == 0.5, "recall does not depend on the order"
    assert lab.context_precision_proxy(ctx, ref) == 0.5, "the relevant chunk is 2nd of 2: precision@2 = 1/2"
    assert lab.context_precision_proxy(ctx[::-1], ref) == 1.0, "relevant chunk first: 1.0"
    assert lab.context_recall_proxy(ref, []) == 0.0, "nothing retrieved: recall 0.0"
    assert math.isnan(lab.context_precision_proxy([], ref)), "nothing retrieved: precision NaN"
    assert math.isnan(lab.context_recall_proxy("", ctx)) and math.isnan(lab.context_precision_proxy(ctx, "..."))


def test_answer_relevance_proxy_with_minilm(lab, pipe):
    embed = lambda xs: pipe.embedder.encode(list(xs))  # noqa: E731
    q = "Who invented constant k filters?"
    good = lab.answer_relevance_proxy(q, "Constant k filters were invented by George Campbell.", embed)
    bad = lab.answer_relevance_proxy(q, "The hurricane made landfall near Jupiter, Florida.", embed)
    v = embed([q, "Constant k filters were invented by George Campbell."])
    assert good == pytest.approx(float(v[0] @ v[1]), abs=1e-5), "the cosine of the two MiniLM embeddings"
    assert good > bad + 0.3, f"an on-topic answer must score well above an off-topic one ({good:.3f} vs {bad:.3f})"
    assert math.isnan(lab.answer_relevance_proxy(q, " [1] ", embed)), "an empty answer: NaN"


# ---------------------------------------------------------------------------------------- LLM judge
def test_parse_verdict(lab):
    cases = {"Yes.": 1, "no, because it says otherwise": 0, "YES": 1, "  1 ": 1, "0": 0, '{"verdict": 1}': 1,
             '"verdict":0 since': 0, "Not sure": None, "yesterday we went": None, "": None,
             "The answer is no.": 0, "Nope": None}
    for reply, want in cases.items():
        got = lab.parse_verdict(reply)
        assert got == want, f"parse_verdict({reply!r}) = {got!r}, want {want!r} (match whole words only)"


def test_llm_judge_on_a_scripted_judge(lab):
    def rule(prompt: str) -> str:
        if "Write one question" in prompt:
            return "What is the capital of France?"
        if "evasive" in prompt:
            return "No"
        if "Was this context useful" in prompt:
            return "Yes" if "Paris" in prompt.split("Context:")[1] else "No"
        stmt = prompt.split("Statement: " if "Statement: " in prompt else "Sentence: ")[1]
        return "Yes" if "Paris" in stmt else "No"

    judge = lab.LLMJudge(FakeClient(rule), "fake")
    ctx = ["Bananas are yellow.", "Paris is the capital of France."]
    assert judge.faithfulness("q", "Paris is in France. The moon is cheese.", ctx) == 0.5
    assert judge.context_recall("q", ctx, "Paris is the capital. It is old.") == 0.5
    assert judge.context_precision("q", ctx, "Paris") == 0.5, "judged [0, 1] in retrieved order: 1/2"
    assert math.isnan(judge.faithfulness("q", "", ctx)) and judge.faithfulness("q", "Paris.", []) == 0.0
    vecs = {"the question": [1.0, 0.0], "What is the capital of France?": [1.0, 1.0]}
    rel = judge.answer_relevance("the question", "Paris.", lambda xs: np.array([vecs[x] for x in xs]), n=2)
    assert rel == pytest.approx(1 / math.sqrt(2)), "cosine of (1,0) and (1,1), averaged over 2 questions"
    assert judge.stats["unparsed"] == 0

    vague = lab.LLMJudge(FakeClient(lambda p: "Maybe, hard to say."), "fake")
    assert math.isnan(vague.faithfulness("q", "Paris is big. Rome is old.", ctx)), (
        "no verdict parsed: the score is NaN (unknown), not 0")
    assert vague.stats["unparsed"] == 2


def test_llm_judge_trims_context_to_the_budget(lab):
    client = FakeClient(lambda p: "Yes")
    words = lambda msgs: sum(len(m["content"].split()) for m in msgs)  # noqa: E731
    judge = lab.LLMJudge(client, "fake", prompt_tokens=words, budget=40)
    long_ctx = " ".join(f"w{i}" for i in range(200))
    assert judge.faithfulness("q", "Paris is big.", [long_ctx]) == 1.0
    assert all(len(p.split()) <= 40 for p in client.prompts), "every prompt must fit the budget"
    assert judge.stats["trimmed"] == 1 and "w0 w1" in client.prompts[0], "trim the context's tail, keep its head"


def test_llm_judge_on_the_curriculum_model(lab, llm_endpoint, items, pipe):
    counter = lab.curriculum_prompt_counter()
    judge = lab.LLMJudge(llm_endpoint.client(), llm_endpoint.model, prompt_tokens=counter,
                         budget=lab.CONTEXT_TOKENS - 16)
    embed = lambda xs: pipe.embedder.encode(list(xs))  # noqa: E731
    for it in items[:2]:
        ctx = [h.text for h in pipe.search(it.question, 3)]
        scores = [judge.faithfulness(it.question, it.gold_context, ctx),
                  judge.context_recall(it.question, ctx, it.gold_context),
                  judge.context_precision(it.question, ctx, it.reference),
                  judge.answer_relevance(it.question, it.reference, embed, n=1)]
        for s in scores[:3]:
            assert math.isnan(s) or 0.0 <= s <= 1.0, f"a RAGAS ratio lies in [0, 1] (or is NaN): {scores}"
        assert -1.0 <= scores[3] <= 1.0, f"answer relevance is a mean cosine, in [-1, 1]: {scores}"
    assert judge.stats["calls"] >= 8 and judge.stats["trimmed"] > 0, (
        "the 128-token chunks do not fit the 256-token window whole: the judge must trim them (no HTTP 400)")


# ---------------------------------------------------------------------------------------- retrieval
def test_retrieve_reranks_the_dense_candidates(lab, pipe):
    class ByLength:  # a fake cross-encoder: shorter chunks score higher
        def predict(self, pairs, batch_size=32, show_progress_bar=False):
            return np.array([-len(t) for _, t in pairs], dtype=float)

    q = "Who invented constant k filters?"
    dense = pipe.search(q, 8)
    assert [h.chunk_id for h in lab.retrieve(pipe, q, 3)] == [h.chunk_id for h in dense[:3]]
    got = [h.chunk_id for h in lab.retrieve(pipe, q, 3, reranker=ByLength(), depth=8)]
    want = [h.chunk_id for h in sorted(dense, key=lambda h: len(h.text))[:3]]
    assert got == want, "re-rank the dense top `depth` by the cross-encoder's scores, then keep k"
    assert len(lab.retrieve(pipe, q, 5, reranker=ByLength(), depth=2)) == 5, "depth below k: take k candidates"


def test_retrieve_with_lab73_reranker_matches_crossencoder_rank(lab, pipe):
    ce = lab.CachedCrossEncoder()
    q = "When did Ben Amos make his competitive first-team debut for Manchester United?"
    dense = pipe.search(q, 6)
    ref = ce.model.rank(q, [h.text for h in dense])  # sentence-transformers' own ranking
    got = [h.chunk_id for h in lab.retrieve(pipe, q, 6, reranker=ce, depth=6)]
    assert got == [dense[r["corpus_id"]].chunk_id for r in ref]


# ---------------------------------------------------------------------------------------- the spec's tests
def test_context_recall_rises_with_k(lab, pipe, items):
    # dense top-k is a prefix of dense top-10: retrieve once, cut at each k (questions embedded in one batch)
    pipe.embedder.encode([it.question for it in items])
    top = {it.id: [h.text for h in lab.retrieve(pipe, it.question, 10)] for it in items}
    rec = {k: lab.aggregate([lab.context_recall_proxy(it.gold_context, top[it.id][:k]) for it in items])[0]
           for k in (1, 3, 10)}
    assert rec[1] <= rec[3] <= rec[10], f"context recall must not fall as k grows: {rec}"
    assert rec[10] - rec[1] >= 0.15, f"k=10 should recall clearly more gold contexts than k=1: {rec}"


def test_faithfulness_falls_as_temperature_rises(lab, llm_endpoint, pipe, items):
    rows = lab.temperature_sweep(pipe, items[::3], llm_endpoint.client(), llm_endpoint.model,
                                 temperatures=(0.3, 1.0, 1.7))
    soft = [r["faithfulness_soft"] for r in rows]
    assert soft[0] > soft[1] > soft[2], f"mean support should fall with temperature: {rows}"
    assert soft[0] - soft[2] >= 0.05, f"and by a clear margin from T=0.3 to T=1.7: {rows}"


def test_evaluate_config_rows(lab, pipe, items):
    res = lab.evaluate_config(pipe, items[:6], k=3)
    assert len(res["rows"]) == 6
    for m in lab.METRICS:
        assert 0.0 <= res[m] <= 1.0, f"{m} = {res[m]}"
    assert res["context_recall"] >= res["hit"] - 1e-9 or res["hit"] > 0, res
    table = lab.ablation_table([{"chunk_size": 128, "chunks": pipe.n_chunks, "k": 3, "rerank": False,
                                 "hit": res["hit"], **{m: res[m] for m in lab.METRICS},
                                 **{m + "_nan": res[m + "_nan"] for m in lab.METRICS}}])
    assert table.count("\n") == 2 and "| 128 |" in table

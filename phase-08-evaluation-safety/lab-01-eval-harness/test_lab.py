"""Grader for lab 8.1 (eval harness). References: EleutherAI's lm-evaluation-harness itself
(``lm_eval.simple_evaluate`` with ``HFLM`` on the curriculum model and this lab's ``tasks/*.yaml``;
``HFLM.loglikelihood`` on hand-made requests; its ``RegexFilter`` and ``exact_match`` metric),
an unbatched token-by-token log-prob sum, ``scipy.stats.bootstrap``, and hand-computed cases."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labkit import curriculum_model_path

LIMIT = 8            # documents per task in the lm-eval reference run (kept tiny: it is the slow part)
FEWSHOT = 1
MCQ = ("mmlu", "hellaswag", "arc_easy", "winogrande")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_dir():
    return curriculum_model_path("main") / "hf"


@pytest.fixture(scope="module")
def model_tok(lab, model_dir):
    return lab.load_model(model_dir)


@pytest.fixture(scope="module")
def hflm(model_dir):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(model_dir), batch_size=4, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def lm_eval_run(lab, hflm):
    """lm-eval on our task YAMLs: every request it built and every number it computed, per task."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(lab.TASKS_DIR))
    res = lm_eval.simple_evaluate(model=hflm, tasks=[f"eh_{t}" for t in lab.ALL_TASKS], num_fewshot=FEWSHOT,
                                  limit=LIMIT, log_samples=True, task_manager=tm, bootstrap_iters=0)
    out = {}
    for t in lab.ALL_TASKS:
        by_doc = {}
        for s in res["samples"][f"eh_{t}"]:      # generation tasks log one sample per (doc, filter)
            by_doc.setdefault(s["doc_id"], s)
        out[t] = [by_doc[i] for i in sorted(by_doc)]
        assert len(out[t]) == LIMIT
    return out


@pytest.fixture(scope="module")
def our_mcq(lab, model_tok):
    """Our requests and scores for the same documents (batch size 8)."""
    model, tok = model_tok
    out = {}
    for t in MCQ:
        docs, pool = lab.load_docs(t)
        reqs = [lab.build_requests(t, d, FEWSHOT, pool) for d in docs[:LIMIT]]
        flat = [r for rs in reqs for r in rs]
        lls = lab.loglikelihoods(model, tok, flat, batch_size=8)
        out[t] = (docs[:LIMIT], reqs, flat, lls)
    return out


def reference_ll(model, ids_ctx: list[int], ids_cont: list[int], window: int = 256) -> float:
    """Unbatched, token by token: sum over k of log p(cont[k] | everything before it), same truncation."""
    full = (ids_ctx + ids_cont)[-(window + 1):]
    with torch.no_grad():
        lp = F.log_softmax(model(input_ids=torch.tensor([full[:-1]])).logits[0].float(), -1)
    n = len(ids_cont)
    start = len(full) - 1 - n
    return sum(float(lp[start + k, full[start + k + 1]]) for k in range(n))


# ------------------------------------------------------------------------------------------
# agreement with lm-eval
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("task", MCQ)
def test_requests_match_lm_eval(lab, lm_eval_run, our_mcq, task):
    _, reqs, _, _ = our_mcq[task]
    for doc_reqs, sample in zip(reqs, lm_eval_run[task]):
        theirs = [tuple(a) for a in sample["arguments"]]
        assert doc_reqs == theirs, (
            f"{task} doc {sample['doc_id']}: your (context, continuation) pairs differ from lm-eval's.\n"
            f"yours:  {doc_reqs[0]!r}\nlm-eval: {theirs[0]!r}\nCheck the few-shot layout: description, then "
            "question + ' ' + answer + '\\n\\n' per shot, then the question (no trailing space); continuation "
            "= ' ' + choice (WinoGrande: one context per option, shared continuation).")


def test_gsm8k_prompt_matches_lm_eval(lab, lm_eval_run):
    docs, pool = lab.load_docs("gsm8k")
    for doc, sample in zip(docs, lm_eval_run["gsm8k"]):
        ours = lab.fewshot_context("gsm8k", doc, FEWSHOT, pool)
        assert ours == sample["arguments"][0][0], "GSM8K few-shot prompt differs from lm-eval's (see the MCQ test)"


@pytest.mark.parametrize("task", MCQ)
def test_loglikelihoods_match_lm_eval(lab, lm_eval_run, our_mcq, task):
    docs, reqs, _, lls = our_mcq[task]
    spec = lab.TASKS[task]
    pos = 0
    for doc, doc_reqs, sample in zip(docs, reqs, lm_eval_run[task]):
        ours = [lls[pos + k][0] for k in range(len(doc_reqs))]
        greedy = [lls[pos + k][1] for k in range(len(doc_reqs))]
        pos += len(doc_reqs)
        theirs = [r[0][0] for r in sample["resps"]]
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4, err_msg=(
            f"{task} doc {sample['doc_id']}: log-likelihoods differ from lm-eval's. Off by a whole token's "
            "log-prob usually means the continuation slice is shifted by one (rows inplen-n .. inplen-1), "
            "or the continuation was tokenised alone instead of split from encode(context + continuation)."))
        assert greedy == [r[0][1] for r in sample["resps"]], f"{task}: is_greedy flags differ from lm-eval's"
        metrics = lab.mcq_metrics(ours, spec.choices(doc), spec.gold(doc))
        for m in spec.metrics:
            assert metrics[m] == sample[m], (
                f"{task} doc {sample['doc_id']}: {m} {metrics[m]} but lm-eval says {sample[m]}. acc_norm divides "
                "by the number of characters of each choice string (not tokens, not including the space).")


def test_gsm8k_generation_and_filters_match_lm_eval(lab, model_tok, lm_eval_run):
    model, tok = model_tok
    docs, pool = lab.load_docs("gsm8k")
    for doc, sample in zip(docs, lm_eval_run["gsm8k"]):
        gen = lab.generate_until(model, tok, lab.fewshot_context("gsm8k", doc, FEWSHOT, pool),
                                 until=list(lab.GSM8K_STOP), max_gen_toks=lab.GSM8K_MAX_GEN_TOKS)
        assert gen == sample["resps"][0][0], (
            f"doc {sample['doc_id']}: your greedy generation differs from lm-eval's.\nyours:   {gen!r}\n"
            f"lm-eval: {sample['resps'][0][0]!r}\nLeft-truncate the prompt to window - max_gen_toks tokens, "
            "take the argmax each step, stop at EOS, cut the text at the first stop string.")


# ------------------------------------------------------------------------------------------
# scoring mechanics
# ------------------------------------------------------------------------------------------

TRICKY_REQUESTS = [
    ("", " Once upon a time"),                                   # empty context -> prefix token
    ("", "Once"),
    ("Lily went to the park ", "and played."),                    # trailing space moves to the continuation
    ("Tom had a red ball.", "\nHe liked it."),
    ("The cat sat on the mat", "."),                              # one-token continuation
    ("Ben said, \u201cLook!\u201d", " She smiled \u2014 happily."),  # non-ASCII
    (" ".join(["The little dog ran and ran."] * 60), " Then he slept."),  # > 256 tokens: left truncation
]


def test_encode_pair_matches_hflm(lab, model_tok, hflm):
    _, tok = model_tok
    assert lab.encode_pair(tok, "", " Once upon a time") == ([0], tok.encode(" Once upon a time")), (
        "an empty context is replaced by the prefix token (BOS, else EOS: id 0 here); the tokenizer adds no BOS")
    for ctx, cont in TRICKY_REQUESTS[2:]:
        assert lab.encode_pair(tok, ctx, cont) == hflm._encode_pair(ctx, cont), (
            f"encode_pair({ctx[-30:]!r}, {cont!r}) differs from lm-eval's HFLM._encode_pair: move the context's "
            "trailing spaces to the continuation, then split encode(context + continuation) at len(encode(context)).")


def test_tricky_requests_match_hflm_loglikelihood(lab, model_tok, hflm):
    from lm_eval.api.instance import Instance

    model, tok = model_tok
    insts = [Instance(request_type="loglikelihood", doc={}, arguments=r, idx=i) for i, r in enumerate(TRICKY_REQUESTS)]
    theirs = [v for v, _ in hflm.loglikelihood(insts, disable_tqdm=True)]
    ours = [v for v, _ in lab.loglikelihoods(model, tok, TRICKY_REQUESTS, batch_size=3)]
    for req, a, b in zip(TRICKY_REQUESTS, ours, theirs):
        assert abs(a - b) < 1e-4, (
            f"request ({req[0][-30:]!r}, {req[1]!r}): {a:.5f} vs lm-eval {b:.5f}. Empty context -> [prefix token]; "
            "a request over the window keeps its last max_length + 1 tokens and drops the final one as input.")


def test_loglikelihoods_equal_token_by_token_sum(lab, model_tok):
    model, tok = model_tok
    lls = lab.loglikelihoods(model, tok, TRICKY_REQUESTS, batch_size=4)
    for req, (ll, _) in zip(TRICKY_REQUESTS, lls):
        ctx_ids, cont_ids = lab.encode_pair(tok, *req)
        ref = reference_ll(model, ctx_ids, cont_ids)
        assert abs(ll - ref) < 1e-4, f"{req[1]!r}: batched {ll:.5f} vs unbatched token-by-token {ref:.5f}"


def test_planted_off_by_one_is_caught(lab, model_tok, monkeypatch):
    """A learner's classic bug: reading rows inplen-n+1 .. inplen (one to the right). The comparison
    with the token-by-token reference must flag it, by a wide margin."""
    model, tok = model_tok
    good = [v for v, _ in lab.loglikelihoods(model, tok, TRICKY_REQUESTS[2:6], batch_size=4)]

    def shifted(log_probs, inplen, cont_ids):
        n = len(cont_ids)
        rows = log_probs[inplen - n + 1:inplen + 1]
        target = torch.tensor(list(cont_ids))[: rows.shape[0]]
        return float(rows.gather(-1, target[:, None]).sum()), False

    monkeypatch.setattr(lab, "continuation_logprob", shifted)
    bad = [v for v, _ in lab.loglikelihoods(model, tok, TRICKY_REQUESTS[2:6], batch_size=4)]
    refs = [reference_ll(model, *lab.encode_pair(tok, *r)) for r in TRICKY_REQUESTS[2:6]]
    assert max(abs(g - r) for g, r in zip(good, refs)) < 1e-4, "the correct scorer must match the reference"
    assert max(abs(b - r) for b, r in zip(bad, refs)) > 0.5, "an off-by-one slice went unnoticed by the reference check"


def test_continuation_logprob_hand_case(lab):
    # 5 positions (3 real, 2 padding), vocab 3; continuation of 2 tokens = rows 1 and 2
    lp = torch.log(torch.tensor([[.2, .3, .5], [.1, .6, .3], [.7, .2, .1], [.3, .3, .4], [.3, .3, .4]]))
    ll, greedy = lab.continuation_logprob(lp, 3, [1, 0])
    assert ll == pytest.approx(math.log(.6) + math.log(.7), abs=1e-6), (
        "with inplen=3 and 2 continuation tokens, use rows 1 and 2 (row t predicts token t+1), not rows 2-3")
    assert greedy is True
    assert lab.continuation_logprob(lp, 3, [2, 0])[1] is False


def test_batch_size_invariance(lab, model_tok, our_mcq):
    """Batch 1 vs 8 vs 32: the same per-item log-likelihoods. float32 sums of up to ~100 tokens
    cannot agree to 1e-5 absolute across different matmul shapes, so 1e-5 is relative."""
    model, tok = model_tok
    flat = [r for t in MCQ for r in our_mcq[t][2][:24]]
    base = np.array([v for v, _ in lab.loglikelihoods(model, tok, flat, batch_size=1)])
    for bs in (8, 32):
        other = np.array([v for v, _ in lab.loglikelihoods(model, tok, flat, batch_size=bs)])
        np.testing.assert_allclose(other, base, rtol=1e-5, atol=1e-5, err_msg=(
            f"batch size {bs} changed log-likelihoods: pad on the right (after every real token) and read each "
            "row at its own length, never at the padded length; left padding without position ids shifts RoPE."))


# ------------------------------------------------------------------------------------------
# metrics, extraction, statistics
# ------------------------------------------------------------------------------------------

def test_mcq_metrics_hand_cases(lab):
    # raw argmax is choice 1 (-4); per character: -6/12 = -0.5 beats -4/2 = -2 -> acc_norm picks 0
    m = lab.mcq_metrics([-6.0, -4.0, -9.0], ["a long answer"[:12], "no", "maybe"], gold=0)
    assert m == {"acc": 0.0, "acc_norm": 1.0}, "acc_norm = argmax(ll / len(choice in characters))"
    assert lab.mcq_metrics([-1.0, -1.0], ["x", "y"], gold=0)["acc"] == 1.0, "ties go to the first choice (np.argmax)"
    assert lab.mcq_metrics([-2.0, -1.0], ["x", "y"], gold=1) == {"acc": 1.0, "acc_norm": 1.0}


GSM_TRICKY = [
    "The answer is 1,234.", "#### 1,234", "#### -5", "She pays $18.", "so 3 + 4 = 7. The answer is 7.",
    "#### 42\n#### 43", "no numbers here", "It costs $1,000.50 in total.", "12 apples and 3 pears, 15",
    "#### 7.", "answer: -0.5", "Total: 5 dollars. #### 5", "", "10.", "The result is .5", "3-4",
]


def test_extraction_matches_lm_eval_filters(lab):
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    docs, _ = lab.load_docs("gsm8k")
    texts = [d["answer"] for d in docs] + GSM_TRICKY
    strict = RegexFilter(regex_pattern=lab.STRICT_RE)
    flexible = RegexFilter(regex_pattern=lab.FLEXIBLE_RE, group_select=-1)
    want_s = [r[0] for r in strict.apply([[t] for t in texts], None)]
    want_f = [r[0] for r in flexible.apply([[t] for t in texts], None)]
    for t, ws, wf in zip(texts, want_s, want_f):
        assert lab.extract_answer(t, "strict") == ws, f"strict on {t[-40:]!r}: lm-eval gives {ws!r} (first '#### n')"
        assert lab.extract_answer(t, "flexible") == wf, (
            f"flexible on {t[-40:]!r}: lm-eval gives {wf!r} (the LAST match, its first non-empty group, stripped)")
    refs = [d["answer"] for d in docs] + [docs[0]["answer"]] * len(GSM_TRICKY)
    for ws, ref in zip(want_s + want_f, refs + refs):
        assert lab.exact_match(ws, ref) == exact_match_hf_evaluate(
            [ws], [ref], regexes_to_ignore=list(lab.EXACT_MATCH_IGNORE), ignore_case=True)["exact_match"]
    hits = [lab.exact_match(lab.extract_answer(d["answer"], "strict"), d["answer"]) for d in docs]
    assert sum(hits) == len(docs), "every reference answer must score 1.0 against itself"


def test_bootstrap_ci_against_scipy(lab):
    from scipy.stats import bootstrap

    rng = np.random.default_rng(1)
    x = (rng.random(400) < 0.3).astype(float)
    lo, hi = lab.bootstrap_ci(x, n_boot=4000, seed=0)
    ref = bootstrap((x,), np.mean, n_resamples=4000, method="percentile", random_state=0).confidence_interval
    assert lo < x.mean() < hi
    assert abs(lo - ref.low) < 0.01 and abs(hi - ref.high) < 0.01, (
        f"CI [{lo:.3f}, {hi:.3f}] vs scipy's percentile bootstrap [{ref.low:.3f}, {ref.high:.3f}]: resample the "
        "items with replacement, take the mean of each resample, then the 2.5% and 97.5% quantiles")
    half = 1.96 * math.sqrt(x.mean() * (1 - x.mean()) / x.size)
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.15), "the CI's half-width should be near 1.96 * stderr"
    assert lab.bootstrap_ci([1.0], n_boot=10) == (1.0, 1.0)
    assert lab.bootstrap_ci(x, seed=3) == lab.bootstrap_ci(x, seed=3), "same seed, same interval"


# ------------------------------------------------------------------------------------------
# evaluate(), the cache, the CLI
# ------------------------------------------------------------------------------------------

def test_evaluate_and_cache(lab, model_dir, model_tok, tmp_path):
    cache = tmp_path / "cache.jsonl"
    kw = dict(limit=4, num_fewshot=1, batch_size=8, cache_path=cache, model_and_tokenizer=model_tok, n_boot=200)
    first = lab.evaluate(model_dir, ["arc_easy", "winogrande", "gsm8k"], **kw)
    assert first["cache"]["hits"] == 0 and first["cache"]["misses"] == 4 * 4 + 4 * 2 + 4
    again = lab.evaluate(model_dir, ["arc_easy", "winogrande", "gsm8k"], **kw)
    assert again["cache"]["misses"] == 0, "a re-run must be served from the cache"
    assert again["results"] == first["results"] and again["samples"] == first["samples"]
    changed = lab.evaluate(model_dir, ["arc_easy"], **{**kw, "num_fewshot": 0})
    assert changed["cache"]["misses"] == 16, "a different prompt must miss the cache"
    res = first["results"]["arc_easy"]
    assert res["n"] == 4 and 0 <= res["acc_ci"][0] <= res["acc"] <= res["acc_ci"][1] <= 1
    assert set(first["results"]["gsm8k"]) >= {"exact_match_strict", "exact_match_flexible", "n"}


def test_cli_writes_json(lab, model_dir, tmp_path):
    out = tmp_path / "r.json"
    rc = lab.main(["--model", str(model_dir), "--tasks", "arc_easy,hellaswag", "--limit", "3", "--num-fewshot", "0",
                   "--batch-size", "4", "--cache", str(tmp_path / "c.jsonl"), "--output", str(out), "--device", "cpu"])
    assert rc == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    assert set(data["results"]) == {"arc_easy", "hellaswag"} and data["results"]["arc_easy"]["n"] == 3
    assert len(data["samples"]["hellaswag"][0]["lls"]) == 4


# ------------------------------------------------------------------------------------------
# bad input (given code)
# ------------------------------------------------------------------------------------------

@pytest.mark.given
def test_bad_input(lab, model_tok):
    model, tok = model_tok
    with pytest.raises(ValueError, match="unknown task"):
        lab.load_docs("mmlu_pro")
    with pytest.raises(ValueError, match="unknown task"):
        lab.evaluate("x", ["nope"], model_and_tokenizer=model_tok)
    with pytest.raises(TypeError, match="pair"):
        lab.loglikelihoods(model, tok, [("only one",)])
    with pytest.raises(ValueError, match="batch_size"):
        lab.loglikelihoods(model, tok, [("a", " b")], batch_size=0)
    with pytest.raises(ValueError, match="empty continuation"):
        lab.encode_pair(tok, "a", "")
    with pytest.raises(ValueError, match="NaN"):
        lab.mcq_metrics([float("nan"), 1.0], ["a", "b"], 0)
    with pytest.raises(ValueError, match="gold"):
        lab.mcq_metrics([1.0, 2.0], ["a", "b"], 2)
    with pytest.raises(ValueError, match="mode"):
        lab.extract_answer("#### 3", "loose")
    with pytest.raises(ValueError, match="non-empty"):
        lab.bootstrap_ci([])
    with pytest.raises(ValueError, match="NaN"):
        lab.bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="num_fewshot"):
        lab.fewshot_context("arc_easy", {"question": "q"}, 3, [])
    with pytest.raises(ValueError, match="max_gen_toks"):
        lab.generate_until(model, tok, "Question: 1+1?", max_gen_toks=256)

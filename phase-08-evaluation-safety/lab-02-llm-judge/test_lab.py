"""Grader for lab 8.2 (LLM judge). References: scikit-learn's unregularised LogisticRegression and
scipy.optimize on the same battles (the Bradley-Terry MLE and the length-controlled fit), an Elo
log worked by hand, a simulated judge whose position and length biases are planted with known
sizes, FastChat's real GPT-4 / gpt-3.5-turbo reviews (vicuna-judgments in the mirror), and the
curriculum model served by labkit's OpenAI-compatible llm_server as a (hopeless) judge."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest


@pytest.fixture(scope="module")
def gpt4_battles(lab):
    return lab.load_vicuna_battles("gpt-4")


def _sim_battles(lab, n_items=600, position_bias=0.0, length_bias=0.0, swap=False, seed=0):
    answers = lab.simulate_answers(lab.SIM_MODELS, n_items, seed=seed)
    judge = lab.SimulatedJudge(position_bias, length_bias, seed=seed + 1)
    return answers, judge, lab.simulated_tournament(judge, answers, swap=swap)


def _sklearn_bt(battles, models, length=False):
    """Reference BT: our own design matrix, fitted by scikit-learn with no penalty."""
    from sklearn.linear_model import LogisticRegression

    col = {m: j for j, m in enumerate(models)}
    rows, ys, ws = [], [], []
    for b in battles:
        x = np.zeros(len(models) + int(length))
        x[col[b.model_a]], x[col[b.model_b]] = 1.0, -1.0
        if length:
            x[-1] = math.log(b.len_a / b.len_b)
        if b.winner == "model_a":
            rows.append(x), ys.append(1), ws.append(1.0)
        elif b.winner == "model_b":
            rows.append(x), ys.append(0), ws.append(1.0)
        elif b.winner in ("tie", "inconsistent"):
            rows += [x, x]
            ys += [1, 0]
            ws += [0.5, 0.5]
    X = np.array(rows)[:, 1:]  # first model pinned at 0
    clf = LogisticRegression(C=np.inf, fit_intercept=False, tol=1e-12, max_iter=10_000)
    clf.fit(X, np.array(ys), sample_weight=np.array(ws))
    logits = np.concatenate([[0.0], clf.coef_[0][: len(models) - 1]])
    r = logits * 400 / math.log(10)
    return dict(zip(models, r - r.mean() + 1000))


# ------------------------------------------------------------------------------------------------
# Verdict parsing and swap combination
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("Assistant A is more detailed. [[A]]", "A"),
    ("Both are equally good.\n[[C]]", "tie"),
    ('I must output "[[A]]" if A is better, "[[B]]" if B is. A rambles. Final verdict: [[B]]', "B"),
    ("Verdict: [[ B ]]", "B"),
    ("Assistant A is better.", "error"),
    ("[A]", "error"),
    ("", "error"),
    (None, "error"),
])
def test_parse_pairwise_verdict(lab, text, expected):
    got = lab.parse_pairwise_verdict(text)
    assert got == expected, (
        f"parse_pairwise_verdict({text!r}) = {got!r}, expected {expected!r}. The policy: the LAST [[A]]/[[B]]/[[C]] "
        "marker wins (judges quote the format before giving their verdict), [[C]] means 'tie', and no marker "
        "is 'error' (never silently a tie)")


@pytest.mark.parametrize("text, expected", [
    ("Good answer. Rating: [[7]]", 7.0),
    ("[[8.5]]", 8.5),
    ('The format is "Rating: [[5]]". This answer is weak. Rating: [[3]]', 3.0),
    ("Rating: 6", 6.0),
    ("Rating: [[11]]", float("nan")),
    ("Rating: [[0]]", float("nan")),
    ("I like it a lot", float("nan")),
    (None, float("nan")),
])
def test_parse_rating(lab, text, expected):
    got = lab.parse_rating(text)
    same = (math.isnan(got) and math.isnan(expected)) or got == expected
    assert same, (f"parse_rating({text!r}) = {got!r}, expected {expected!r}: last [[x]] first, then 'Rating: x'; "
                  "outside 1-10 or missing is NaN")


def test_combine_swap(lab):
    cases = {("A", "B"): "A", ("B", "A"): "B", ("tie", "tie"): "tie", ("A", "A"): "inconsistent",
             ("B", "B"): "inconsistent", ("A", "tie"): "inconsistent", ("A", "error"): "error",
             ("error", "tie"): "error"}
    for (first, second), want in cases.items():
        got = lab.combine_swap(first, second)
        assert got == want, (
            f"combine_swap({first!r}, {second!r}) = {got!r}, expected {want!r}. The second call saw the answers "
            "swapped, so its 'A' is the original B: map it back before comparing. A judge that says 'A' both "
            "times just likes the first slot: that is 'inconsistent'")
    with pytest.raises(ValueError, match="verdict"):
        lab.combine_swap("A", "[[A]]")


def test_position_bias_stats_hand_computed(lab):
    pairs = [("A", "B"), ("A", "A"), ("B", "A"), ("tie", "tie"), ("A", "error"), ("A", "A")]
    st = lab.position_bias_stats(pairs)
    # ok items: 5 (one has an error); consistent: (A,B), (B,A), (tie,tie) = 3 of 5
    assert st["n"] == 6 and st["error_rate"] == pytest.approx(1 / 6)
    assert st["consistency"] == pytest.approx(3 / 5), (
        f"consistency {st['consistency']}: expected 3/5 — items with an error are left out, and an item is "
        "consistent when first == flip(second)")
    assert st["inconsistent_rate"] == pytest.approx(2 / 5)
    # decisive calls: A,B,A,A,B,A,A,A,A = 9 (the tie and the error are not decisive); 'A' (first slot) 7 times
    assert st["first_position_win_rate"] == pytest.approx(7 / 9), (
        f"first-position win rate {st['first_position_win_rate']}: count every decisive call of BOTH orders "
        "(including items whose partner call failed); the first-shown answer is 'A' in each call")
    assert st["position_bias"] == pytest.approx(7 / 9 - 0.5)


# ------------------------------------------------------------------------------------------------
# Ratings: logistic MLE, Bradley-Terry, Elo, bootstrap
# ------------------------------------------------------------------------------------------------


def test_fit_logistic_matches_sklearn(lab):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    y = (rng.random(400) < 1 / (1 + np.exp(-(X @ np.array([1.0, -0.5, 0.25]))))).astype(float)
    w = rng.uniform(0.2, 2.0, size=400)
    ours = lab.fit_logistic(X, y, w)
    ref = LogisticRegression(C=np.inf, fit_intercept=False, tol=1e-12, max_iter=10_000)
    ref.fit(X, y, sample_weight=w)
    np.testing.assert_allclose(ours, ref.coef_[0], atol=1e-5, err_msg=(
        "fit_logistic differs from sklearn's unregularised MLE: check the gradient X^T (w (y - p)) and the "
        "Hessian X^T diag(w p (1 - p)) X — did you forget the sample weights in the gradient (the fixed point)?"))


def test_bradley_terry_equals_sklearn_mle_on_real_battles(lab, gpt4_battles):
    ours = lab.bradley_terry(gpt4_battles)
    models = sorted(ours)
    ref = _sklearn_bt(gpt4_battles, models)
    for m in models:
        assert ours[m] == pytest.approx(ref[m], abs=1e-3), (
            f"BT rating of {m}: ours {ours[m]:.4f} vs sklearn's MLE {ref[m]:.4f}. Ratings are natural-log odds "
            "times 400/ln(10), shifted to mean 1000; ties are two half-weight rows, one won and one lost")


def test_bradley_terry_with_ties_and_length_control_vs_scipy(lab):
    from scipy.optimize import minimize

    _, _, battles = _sim_battles(lab, n_items=200, position_bias=0.2, length_bias=1.0, swap=True, seed=3)
    assert any(b.winner == "inconsistent" for b in battles)
    models = sorted({b.model_a for b in battles} | {b.model_b for b in battles})
    col = {m: j for j, m in enumerate(models)}
    ia = np.array([col[b.model_a] for b in battles])
    ib = np.array([col[b.model_b] for b in battles])
    s = np.array([{"model_a": 1.0, "model_b": 0.0}.get(b.winner, 0.5) for b in battles])
    dl = np.array([math.log(b.len_a / b.len_b) for b in battles])

    def nll(params):  # params: strengths of models[1:], then the length coefficient
        beta = np.concatenate([[0.0], params[:-1]])
        z = beta[ia] - beta[ib] + params[-1] * dl
        return -np.sum(s * -np.logaddexp(0, -z) + (1 - s) * -np.logaddexp(0, z))

    res = minimize(nll, np.zeros(len(models)), method="BFGS", options={"gtol": 1e-10})
    logits = np.concatenate([[0.0], res.x[:-1]]) * 400 / math.log(10)
    ref = dict(zip(models, logits - logits.mean() + 1000))
    ours = lab.bradley_terry(battles, length_control=True)
    for m in models:
        assert ours[m] == pytest.approx(ref[m], abs=0.05), (
            f"length-controlled BT rating of {m}: ours {ours[m]:.3f}, scipy {ref[m]:.3f}. The length coefficient "
            "is the LAST column of bt_design(..., length_feature=True): drop it from the ratings, keep it in the fit")


def test_bradley_terry_rejects_unidentifiable_data(lab):
    B = lab.Battle
    all_wins = [B("a", "b", "model_a"), B("a", "b", "model_a"), B("b", "c", "tie"), B("c", "b", "model_a")]
    with pytest.raises(ValueError):
        lab.bradley_terry(all_wins)  # 'a' never lost: its MLE is at +infinity
    with pytest.raises(ValueError):
        lab.bradley_terry([B("a", "b", "error")])


def test_elo_equals_hand_computation(lab):
    B = lab.Battle
    log = [B("A", "B", "model_a"), B("B", "C", "tie"), B("X", "A", "error"), B("C", "A", "model_a")]
    got = lab.elo_ratings(log, k=32)
    # battle 1: both 1000, E_A = 0.5 -> A = 1000 + 32 * 0.5 = 1016, B = 984
    # battle 2: E_B = 1 / (1 + 10^((1000 - 984) / 400)) = 0.4769904; tie -> B += 32 (0.5 - E_B) = +0.736307
    #           B = 984.736307, C = 999.263693
    # battle 3 is an error: skipped (X keeps its 1000)
    # battle 4: E_C = 1 / (1 + 10^((1016 - 999.263693) / 400)) = 0.4759331; C won -> C += 32 (1 - E_C)
    #           C = 1016.033833, A = 999.229860
    want = {"A": 999.229860, "B": 984.736307, "C": 1016.033833, "X": 1000.0}
    for m, v in want.items():
        assert got[m] == pytest.approx(v, abs=1e-5), (
            f"Elo of {m}: {got[m]:.6f}, by hand {v:.6f}. Use the ratings from BEFORE the battle for both "
            "updates, S = 0.5 for a tie, and skip 'error' battles (but the model still gets its initial rating)")
    assert lab.elo_ratings(log[::-1], k=32)["A"] != pytest.approx(got["A"]), "online Elo must depend on the order"


def test_bootstrap_ci(lab, gpt4_battles):
    bt = lab.bradley_terry(gpt4_battles)
    ci = lab.bootstrap_ci(gpt4_battles, lab.bradley_terry, n_boot=60, seed=0)
    assert ci == lab.bootstrap_ci(gpt4_battles, lab.bradley_terry, n_boot=60, seed=0), "seeded: must be reproducible"
    for m, (lo, hi) in ci.items():
        assert lo < bt[m] < hi, f"the 95% CI of {m} [{lo:.0f}, {hi:.0f}] does not contain its estimate {bt[m]:.0f}"
    ci4 = lab.bootstrap_ci(list(gpt4_battles) * 4, lab.bradley_terry, n_boot=60, seed=0)
    wide = np.mean([hi - lo for lo, hi in ci.values()])
    narrow = np.mean([hi - lo for lo, hi in ci4.values()])
    assert narrow < 0.75 * wide, (
        f"4x the battles should halve the CI width (got {wide:.0f} -> {narrow:.0f}): resample n indices WITH "
        "replacement each time, from the whole battle list")


# ------------------------------------------------------------------------------------------------
# Planted biases
# ------------------------------------------------------------------------------------------------


def test_planted_position_bias_is_measured(lab):
    answers, judge, _ = _sim_battles(lab, n_items=10, position_bias=0.2)
    j1, j2 = lab.SimulatedJudge(0.2, seed=7), lab.SimulatedJudge(0.2, seed=8)
    pairs = [(j1(a, a), j2(a, a)) for a in answers["m1-first"] * 200]
    st = lab.position_bias_stats(pairs)
    assert st["position_bias"] == pytest.approx(0.2, abs=0.04), (
        f"measured position bias {st['position_bias']:.3f} on identical answers, planted 0.2")
    # identical answers: a consistent judge says A then B (or B then A) — the lazy picks say A twice
    assert st["consistency"] < 0.8


def test_raw_win_rates_biased_by_the_planted_amount_and_swap_fixes_ranking(lab):
    b = 0.2
    answers, judge, raw = _sim_battles(lab, n_items=800, position_bias=b, seed=11)
    _, _, swp = _sim_battles(lab, n_items=800, position_bias=b, swap=True, seed=12)
    _, _, truth = _sim_battles(lab, n_items=800, seed=13)
    for ma, mb in (("m1-first", "m2-strong"), ("m1-first", "m3-verbose"), ("m2-strong", "m3-verbose")):
        p = 1 / (1 + math.exp(-(lab.SIM_MODELS[ma][0] - lab.SIM_MODELS[mb][0])))
        expected = p + 2 * b * (1 - p)  # the first-shown model gains 2b(1 - p)
        got = lab.win_rate(raw, ma, mb)
        se = math.sqrt(expected * (1 - expected) / 800)
        assert abs(got - expected) < 4 * se, (
            f"{ma} (always shown first) vs {mb}: raw win rate {got:.3f}, the planted bias predicts {expected:.3f}")
    rank = lambda r: sorted(r, key=r.get, reverse=True)  # noqa: E731
    assert rank(lab.bradley_terry(truth)) == lab.TRUE_ORDER
    assert rank(lab.bradley_terry(raw)) != lab.TRUE_ORDER, "the planted position bias should break the raw ranking"
    assert rank(lab.bradley_terry(swp)) == lab.TRUE_ORDER, (
        "swap-averaging should recover the true ranking: judge both orders, 'inconsistent' counts half a win")


def test_length_control_recovers_true_win_rate(lab):
    answers, judge, raw = _sim_battles(lab, n_items=1500, length_bias=1.0, seed=21)
    ma, mb = "m1-first", "m3-verbose"
    sub = [x for x in raw if x.model_a == ma and x.model_b == mb]
    lc = lab.length_controlled_win_rate([x.winner for x in sub], [x.len_a for x in sub], [x.len_b for x in sub])
    p_true = 1 / (1 + math.exp(-(lab.SIM_MODELS[ma][0] - lab.SIM_MODELS[mb][0])))
    assert lc["raw"] < p_true - 0.1, f"the verbose model should gain from the length bias: raw {lc['raw']:.3f}"
    assert lc["lc"] == pytest.approx(p_true, abs=0.04), (
        f"length-controlled win rate {lc['lc']:.3f}, true {p_true:.3f}: it is sigmoid(intercept) of a logistic "
        "fit on [1, log(len_a / len_b)]")
    assert lc["beta"] == pytest.approx(1.0, abs=0.2), f"length coefficient {lc['beta']:.2f}, planted 1.0"
    rank = lambda r: sorted(r, key=r.get, reverse=True)  # noqa: E731
    assert rank(lab.bradley_terry(raw)) != lab.TRUE_ORDER
    assert rank(lab.bradley_terry(raw, length_control=True)) == lab.TRUE_ORDER, (
        "BT with the log-length-ratio column should undo the planted length bias")


# ------------------------------------------------------------------------------------------------
# Real judges
# ------------------------------------------------------------------------------------------------


def test_real_judges_report(lab):
    rep = lab.real_judge_report()
    sp = rep["self_pair"]
    assert (sp["n"], sp["tie"], sp["first"], sp["second"], sp["error"]) == (80, 67, 1, 11, 1), sp
    assert rep["agreement"]["agree"] == 229 and rep["agreement"]["n"] == 320, (
        "GPT-4 and gpt-3.5 agree on 229 of the 320 pairs (documented in the mirror's MANIFEST): compare the "
        "winners per (opponent, question_id)")
    assert rep["gpt-4"]["corr_score_len"] > 0.3, "GPT-4's score difference should rise with the length ratio"
    pooled = rep["gpt-4"]["pooled"]
    assert pooled["beta"] > 0.5 and pooled["lc"] > pooled["raw"], (
        "vicuna writes the longer answer in ~80% of pairs and GPT-4 rewards length: controlling for it should "
        "raise the opponents' pooled win rate")


def test_ratings_plot_and_ranking_on_real_battles(lab, gpt4_battles, tmp_path):
    bt = lab.bradley_terry(gpt4_battles)
    assert sorted(bt, key=bt.get, reverse=True)[:3] == ["gpt35", lab.VICUNA, "bard"]
    ci = lab.bootstrap_ci(gpt4_battles, lab.bradley_terry, n_boot=20, seed=1)
    out = lab.plot_ratings({"BT": bt}, {"BT": ci}, tmp_path / "ratings.png", "test")
    assert out.stat().st_size > 1000


# ------------------------------------------------------------------------------------------------
# The judge client: a scripted client, then the real curriculum-model endpoint
# ------------------------------------------------------------------------------------------------


class _ScriptedClient:
    """Anything with .chat.completions.create works as a client: this one answers from a script
    and records the requests."""

    def __init__(self, replies):
        self.replies, self.requests = list(replies), []
        self.chat = self
        self.completions = self

    def create(self, **kw):
        from types import SimpleNamespace

        self.requests.append(kw)
        text = self.replies.pop(0)
        return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content=text))])


def test_judge_swap_with_scripted_client(lab):
    client = _ScriptedClient(["A is longer, so [[A]]", "Again the first one: [[A]]"])
    judge = lab.Judge(client, model="m")
    sj = judge.pairwise_swap("Why is the sky blue?", "Rayleigh scattering.", "Because.")
    assert (sj.first.verdict, sj.second.verdict, sj.final) == ("A", "A", "inconsistent")
    sys_prompt = lab.load_judge_prompts()["pair-v2"]["system_prompt"]
    first, second = (r["messages"] for r in client.requests)
    assert first[0] == {"role": "system", "content": sys_prompt}
    assert "[The Start of Assistant A's Answer]\nRayleigh scattering." in first[1]["content"]
    assert "[The Start of Assistant A's Answer]\nBecause." in second[1]["content"], "the second call must swap"
    rating = lab.Judge(_ScriptedClient(["Solid. Rating: [[8]]"]), model="m").single("q", "a")
    assert rating.rating == 8.0


@pytest.mark.given
def test_bad_input(lab):
    with pytest.raises(ValueError, match="ref_answer_1"):
        lab.build_messages(lab.load_judge_prompts()["pair-math-v1"], question="q", answer_a="a", answer_b="b")
    with pytest.raises(ValueError, match="finite"):
        lab.fit_logistic(np.array([[1.0], [np.nan]]), np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="> 0"):
        lab.length_controlled_win_rate(["model_a"], [0], [10])
    with pytest.raises(ValueError, match="k must"):
        lab.elo_ratings([], k=0)
    with pytest.raises(ValueError, match="judge"):
        lab.load_vicuna_battles("claude")
    with pytest.raises(ValueError, match="position_bias"):
        lab.SimulatedJudge(position_bias=0.7)


def test_curriculum_model_as_judge(lab, llm_endpoint):
    # MT-Bench's own pair-v2 system prompt does not fit the curriculum model's 256-token context:
    # the server answers 400, and the policy turns that into an "error" verdict with the message kept
    full = lab.Judge(llm_endpoint.client(), llm_endpoint.model, max_tokens=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        j = full.pairwise("How can I improve my time management skills?", "Plan your day.", "Sleep more.")
    assert j.verdict == "error" and j.error and "context" in j.error, (
        f"a 400 from the server must become verdict 'error' with the server's message, got {j}")
    run = lab.curriculum_judge_run(llm_endpoint.client(), llm_endpoint.model, n_pairs=1, max_tokens=4)
    r = run["runs"][0]
    assert r["first"] == lab.parse_pairwise_verdict(r["raw_first"]) or r["error"]
    assert r["final"] in lab.SWAP_VERDICTS and run["calls"] == 3
    assert 0.0 <= run["stats"]["error_rate"] <= 1.0


def test_full_mode_judging_of_real_answers_with_scripted_judge(lab):
    # a judge that always prefers the first slot: every pair must come out "inconsistent"
    client = _ScriptedClient(["[[A]]"] * 4)
    battles, st = lab.judge_vicuna_answers(lab.Judge(client, model="m"), n_questions=2, opponents=("bard",))
    assert [b.winner for b in battles] == ["inconsistent", "inconsistent"]
    assert st["consistency"] == 0.0 and st["first_position_win_rate"] == 1.0

"""Grader for lab 10.4 (observability). References: ``scipy.stats.ks_2samp`` (KS statistic), a
brute-force double loop (MMD^2), ``prometheus_client``'s own text parser over a real ``/metrics``
scrape from uvicorn on 127.0.0.1, OpenTelemetry's ``InMemorySpanExporter``, and Prometheus' own
rule engine (``promtool test rules``) over series built from the canary job's scraped gauges."""
from __future__ import annotations

import asyncio
import json
import os
import shutil

import httpx
import numpy as np
import pytest
import torch

from labkit import read_text, seed_everything

N_BURST, BURST_TOKENS = 8, 8
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _tracing():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _need_promtool():
    if shutil.which("promtool") is None:
        if IN_CI:
            pytest.fail("promtool is missing under CI=true: .ci/run must `apt-get install -y prometheus`")
        pytest.skip("promtool not installed (Debian/Ubuntu: apt-get install prometheus)")


@pytest.fixture(scope="module")
def served(lab):
    torch.set_num_threads(1)
    seed_everything(0)
    return lab.p9.load_served_model("main")


@pytest.fixture(scope="module")
def burst(lab, served):
    """A real server: N_BURST streamed requests of exactly BURST_TOKENS tokens at once, then bad
    requests; returns the /metrics scrape, the finished spans and the bad requests' codes."""
    model, tok = served
    provider, exporter = _tracing()
    engine = lab.ObservedEngine(model, tok, tracer_provider=provider, max_batch_size=16)
    prompts = [lab.DRIFT_PROMPTS[i] for i in range(N_BURST)]
    with lab.serve_observed(engine) as ep:
        results, _ = asyncio.run(lab.p9.run_load(ep.base_url, ep.model, prompts, concurrency=N_BURST,
                                                 max_tokens=BURST_TOKENS))
        url = ep.base_url + "/completions"
        codes = [httpx.post(url, json={"model": ep.model, "prompt": "Hi", "max_tokens": -1}, timeout=30).status_code,
                 httpx.post(url, content=b"{not json", headers={"content-type": "application/json"},
                            timeout=30).status_code,
                 httpx.post(url, json={"model": "gpt-9", "prompt": "Hi", "max_tokens": 4}, timeout=30).status_code]
        scraped = lab.scrape(ep.base_url.removesuffix("/v1") + "/metrics")
    prompt_tokens = sum(len(tok.encode(p, add_special_tokens=False)) + 1 for p in prompts)   # + BOS
    return {"metrics": scraped, "spans": exporter.get_finished_spans(), "codes": codes, "results": results,
            "prompt_tokens": prompt_tokens}


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------


def test_request_latencies_by_hand(lab):
    ttft, tpot, e2e = lab.request_latencies(10.0, 10.5, 12.5, 5)
    assert ttft == pytest.approx(0.5) and e2e == pytest.approx(2.5), "TTFT = first - arrival, E2E = end - arrival"
    assert tpot == pytest.approx(0.5), ("TPOT = (end - first token) / (tokens - 1) = 2.0 / 4: the first token's "
                                        "wait belongs to TTFT, so it is not averaged into TPOT")
    assert lab.request_latencies(0.0, 0.2, 0.2, 1) == (pytest.approx(0.2), None, pytest.approx(0.2)), \
        "one token has no inter-token gap: TPOT must be None"
    assert lab.request_latencies(0.0, None, 3.0, 0) == (None, None, pytest.approx(3.0)), \
        "a request cancelled in the queue has no TTFT"


@pytest.mark.given
def test_request_latencies_rejects_bad_input(lab):
    with pytest.raises(ValueError, match="before it arrived"):
        lab.request_latencies(5.0, None, 4.0, 0)
    with pytest.raises(ValueError, match="outside"):
        lab.request_latencies(5.0, 4.0, 6.0, 2)
    with pytest.raises(ValueError, match="completion_tokens"):
        lab.request_latencies(0.0, 0.1, 1.0, -1)


def test_kv_cache_usage_by_hand(lab):
    cache = lab.p9.BatchKVCache()
    cache.mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]])
    util, pad = lab.kv_cache_usage(cache, max_batch_size=4, context_length=8)
    assert util == pytest.approx(12 / 32), "utilization = allocated cells B*T / (max_batch_size * context_length)"
    assert pad == pytest.approx(3 / 12), "padding ratio = cells with mask 0 / allocated cells (B*T)"
    assert lab.kv_cache_usage(None, 4, 8) == (0.0, 0.0), "an empty batch (cache None) uses nothing"
    with pytest.raises(ValueError):
        lab.kv_cache_usage(cache, 0, 8)


def test_metrics_after_load_burst(burst):
    m = burst["metrics"]
    assert all(r.status == 200 and r.completion_tokens == BURST_TOKENS for r in burst["results"]), \
        f"the burst itself failed: {[(r.status, r.error) for r in burst['results']][:3]}"
    want = {
        'llm_requests_total{finish_reason="length"}': N_BURST,
        "llm_generation_tokens_total": N_BURST * BURST_TOKENS,
        "llm_prompt_tokens_total": burst["prompt_tokens"],
        "llm_time_to_first_token_seconds_count": N_BURST,
        "llm_time_per_output_token_seconds_count": N_BURST,
        "llm_e2e_request_latency_seconds_count": N_BURST,
        'llm_http_responses_total{code="200"}': N_BURST,
        "llm_queue_depth": 0, "llm_running_batch_size": 0, "llm_kv_cache_utilization": 0,
    }
    for name, value in want.items():
        assert m.get(name) == value, (f"{name} = {m.get(name)} after {N_BURST} requests x {BURST_TOKENS} tokens, "
                                      f"expected {value}: is every finished request recorded exactly once "
                                      "(and only once it is finished)? Are the gauges refreshed after each step?")
    assert m['llm_time_to_first_token_seconds_bucket{le="+Inf"}'] == N_BURST
    tpot_mean = m["llm_time_per_output_token_seconds_sum"] / N_BURST
    ttft_mean = m["llm_time_to_first_token_seconds_sum"] / N_BURST
    e2e_mean = m["llm_e2e_request_latency_seconds_sum"] / N_BURST
    assert ttft_mean + (BURST_TOKENS - 1) * tpot_mean == pytest.approx(e2e_mean, rel=1e-6), \
        "TTFT + (n - 1) * TPOT must add up to the end-to-end latency"
    assert m['llm_forward_seconds_count{phase="prefill"}'] >= 1
    assert m['llm_forward_seconds_count{phase="decode"}'] >= BURST_TOKENS - 1


@pytest.mark.given
def test_errors_by_code_and_bad_input_is_4xx(burst):
    m = burst["metrics"]
    assert burst["codes"] == [400, 400, 404], \
        f"negative max_tokens / malformed JSON / unknown model must stay 400/400/404, got {burst['codes']}"
    assert m.get('llm_http_errors_total{code="400"}') == 2 and m.get('llm_http_errors_total{code="404"}') == 1, \
        "the middleware must count every /v1 response >= 400 by its status code"
    assert 'llm_http_errors_total{code="200"}' not in m, "a 200 is not an error"


def test_gauges_follow_the_running_batch(lab, served):
    model, tok = served
    engine = lab.ObservedEngine(model, tok, max_batch_size=2)
    params = lab.p9.SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True)
    for p in ([0, 100, 200], [0, 300], [0, 50, 60, 70]):
        engine.submit(p, params)
    get = engine.metrics.registry.get_sample_value
    assert get("llm_queue_depth") == 3, "submit must refresh the queue depth gauge"
    engine.step()
    util, pad = lab.kv_cache_usage(engine.cache, 2, engine.context_length)
    assert get("llm_running_batch_size") == 2 and get("llm_queue_depth") == 1, \
        "after a step with max_batch_size=2: 2 running, 1 waiting; are the gauges set after every step?"
    assert get("llm_kv_cache_utilization") == pytest.approx(util) and util > 0
    assert get("llm_kv_cache_padding_ratio") == pytest.approx(pad) and pad > 0, \
        "two prompts of different lengths are left-padded: the padding ratio must be > 0"
    while engine.has_work:
        engine.step()
    assert get("llm_requests_total", {"finish_reason": "length"}) == 3 and get("llm_generation_tokens_total") == 15


# ---------------------------------------------------------------------------------------------
# traces
# ---------------------------------------------------------------------------------------------


def test_span_tree_of_every_request(burst):
    spans = burst["spans"]
    roots = [s for s in spans if s.name == "llm.request"]
    assert len(roots) == N_BURST, f"one llm.request span per served request: got {len(roots)} for {N_BURST}"
    for root in roots:
        assert root.parent is None
        kids = sorted((s for s in spans if s.parent is not None and s.parent.span_id == root.context.span_id),
                      key=lambda s: s.start_time)
        assert [k.name for k in kids] == ["llm.queue", "llm.prefill", "llm.decode"], \
            f"children of llm.request must be queue, prefill, decode in time order, got {[k.name for k in kids]}"
        assert all(k.context.trace_id == root.context.trace_id for k in kids), "children must share the root's trace"
        q, pre, dec = kids
        assert q.start_time == root.start_time and dec.end_time == root.end_time, \
            "queue starts when the request arrives and decode ends when the request ends"
        assert q.end_time == pre.start_time and pre.end_time == dec.start_time, \
            "queue -> prefill -> decode must be back to back (the admitting prefill forward's start and end)"
        assert pre.end_time > pre.start_time, "the prefill span is the prefill forward's measured duration"
        assert 1 <= pre.attributes["llm.batch_size"] <= N_BURST
        assert root.attributes["llm.completion_tokens"] == BURST_TOKENS
        assert root.attributes["llm.finish_reason"] == "length"
        assert dec.attributes["llm.completion_tokens"] == BURST_TOKENS


def test_emit_request_spans_by_hand(lab):
    from opentelemetry.trace import StatusCode

    provider, exporter = _tracing()
    tracer = provider.get_tracer("test")
    t = lab.RequestTiming("r1", arrival_ns=1_000, end_ns=9_000, prompt_tokens=4, completion_tokens=3,
                          finish_reason="error", admitted_ns=2_000, prefill_end_ns=3_000, prefill_batch=5)
    lab.emit_request_spans(tracer, t)
    lab.emit_request_spans(tracer, lab.RequestTiming("r2", arrival_ns=100, end_ns=700, prompt_tokens=2,
                                                     completion_tokens=0, finish_reason="cancelled"))
    spans = {(s.attributes.get("llm.request_id") or s.name, s.name): s for s in exporter.get_finished_spans()}
    got = sorted((s.name, s.start_time, s.end_time) for s in exporter.get_finished_spans())
    assert got == sorted([("llm.request", 1_000, 9_000), ("llm.queue", 1_000, 2_000), ("llm.prefill", 2_000, 3_000),
                          ("llm.decode", 3_000, 9_000), ("llm.request", 100, 700), ("llm.queue", 100, 700)]), \
        ("spans must carry the recorded times (start_time=..., end(end_time=...)); a request that never left the "
         f"queue has only a queue child: got {got}")
    assert spans[("r1", "llm.request")].status.status_code == StatusCode.ERROR, "finish_reason error -> ERROR status"
    assert spans[("r1", "llm.request")].attributes["llm.prompt_tokens"] == 4


# ---------------------------------------------------------------------------------------------
# two-sample tests
# ---------------------------------------------------------------------------------------------


def test_ks_two_sample_matches_scipy(lab):
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(0)
    cases = [(rng.normal(size=40), rng.normal(0.5, 1, size=55)), (rng.integers(0, 10, 30), rng.integers(0, 12, 25)),
             (rng.normal(size=200), rng.normal(size=150)), (np.array([1.0, 1, 1]), np.array([1.0, 1]))]
    for x, y in cases:
        d, p = lab.ks_two_sample(x, y)
        ref = ks_2samp(x, y, method="asymp")
        assert d == pytest.approx(ref.statistic, abs=1e-12), \
            "D must equal scipy's: evaluate both ECDFs at every pooled value with side='right' (ties!)"
        assert abs(p - ref.pvalue) < 0.1, f"p-value {p} vs scipy's {ref.pvalue}: did you use sqrt(n m / (n + m)) * D?"
    assert lab.ks_two_sample(rng.normal(size=80), rng.normal(2, 1, size=80))[1] < 1e-6


@pytest.mark.given
def test_two_sample_tests_reject_bad_input(lab):
    with pytest.raises(ValueError, match="non-empty"):
        lab.ks_two_sample([], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        lab.ks_two_sample([1.0, float("nan")], [1.0])
    with pytest.raises(ValueError):
        lab.mmd_permutation_test(np.zeros((3, 2)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        lab.mmd_permutation_test(np.zeros((1, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="scale"):
        lab.perturb_model(torch.nn.Linear(2, 2), -1.0)
    with pytest.raises(ValueError, match="n_items"):
        lab.build_canary_set("a b c", n_items=0)


def test_mmd_matches_brute_force_and_detects_shift(lab):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(12, 3)), rng.normal(0.3, 1, size=(9, 3))
    m2, _ = lab.mmd_permutation_test(x, y, n_permutations=5, bandwidth=1.3)

    def k(a, b):
        return np.exp(-np.sum((a - b) ** 2) / (2 * 1.3 ** 2))

    ref = (np.mean([[k(a, b) for b in x] for a in x]) + np.mean([[k(a, b) for b in y] for a in y])
           - 2 * np.mean([[k(a, b) for b in y] for a in x]))
    assert m2 == pytest.approx(ref, rel=1e-9), "biased MMD^2 = mean K_xx + mean K_yy - 2 mean K_xy (diagonals included)"
    same = lab.mmd_permutation_test(rng.normal(size=(30, 4)), rng.normal(size=(30, 4)), n_permutations=100)[1]
    shifted = lab.mmd_permutation_test(rng.normal(size=(30, 4)), rng.normal(1, 1, size=(30, 4)), n_permutations=100)[1]
    assert shifted == pytest.approx(1 / 101), "a clear shift: no permutation should reach the observed MMD^2"
    assert same > 0.05, f"same distribution gave p = {same}: is the p-value (1 + #(perm >= obs)) / (1 + n_perm)?"


# ---------------------------------------------------------------------------------------------
# the canary, the drift check and the alert under Prometheus' rule engine
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def canary(lab, served):
    """The canary against the released model (twice: reference window, then the run that is
    compared with it) and against a perturbed model swapped in behind the same name."""
    model, tok = served
    items = lab.build_canary_set(read_text("tinystories", "valid_prefix_794k.txt"), n_items=48)
    with lab.serve_observed(lab.ObservedEngine(model, tok, max_batch_size=16)) as ep:
        reference = lab.CanaryJob(items, model, tok).run(ep.base_url, ep.model, seed=1)["window"]
        job = lab.CanaryJob(items, model, tok, reference=reference)
        good = job.run(ep.base_url, ep.model, seed=2)
        good_scrape = lab.parse_exposition(job.exposition().decode())
    bad_model = lab.perturb_model(model, lab.BAD_SCALE, seed=0)
    with lab.serve_observed(lab.ObservedEngine(bad_model, tok, max_batch_size=16)) as ep:
        bad = job.run(ep.base_url, ep.model, seed=2)
        bad_scrape = lab.parse_exposition(job.exposition().decode())
    return {"good": good, "bad": bad, "good_scrape": good_scrape, "bad_scrape": bad_scrape, "items": items}


def test_canary_runs_against_the_live_server(lab, served, canary):
    good, bad = canary["good"], canary["bad"]
    n = len(canary["items"])
    assert len(good["answers"]) == n and all(a.strip() for a in good["answers"]), \
        "one greedy completion per canary item, in item order"
    model, tok = served
    for item, answer in list(zip(canary["items"], good["answers"]))[:6]:
        ids = [0, *tok.encode(item.prompt, add_special_tokens=False)]
        ref = tok.decode(lab.p9.reference_greedy(model, ids, 8), skip_special_tokens=True)
        assert answer == ref, (f"canary answer {answer!r} != the model's greedy continuation {ref!r}: canary "
                               "requests must be greedy (temperature 0), max_tokens=self.max_tokens, in item order")
    assert len(good["window"]["responses"]) == 2 * 12, "the drift window: drift_samples sampled answers per prompt"
    assert good["window"]["responses"] != bad["window"]["responses"]
    assert canary["good_scrape"]["llm_canary_score"] == pytest.approx(good["score"])
    assert canary["good_scrape"]["llm_canary_items"] == n
    assert good["score"] > 0.1 > bad["score"], \
        (f"canary score good {good['score']:.3f} / bad {bad['score']:.3f}: the alert threshold 0.1 must separate "
         "them; are the answers greedy (temperature 0) and scored against the right items?")


def test_drift_check_flags_the_bad_model_only(canary):
    good = {d.feature: d for d in canary["good"]["drift"]}
    bad = {d.feature: d for d in canary["bad"]["drift"]}
    assert good["prompt_length"].statistic == 0, "same prompts in both windows: KS D must be 0"
    assert good["response_embedding"].p_value > 0.05, "the released model against its own reference window: no drift"
    assert bad["response_embedding"].p_value < 0.05, "the perturbed model's answers must drift in embedding space"
    assert canary["bad_scrape"]['llm_drift_p_value{feature="response_embedding"}'] == \
        pytest.approx(bad["response_embedding"].p_value)


def _canary_series(canary, good_minutes: int, bad_minutes: int) -> dict[str, list[float]]:
    g, b = canary["good_scrape"]["llm_canary_score"], canary["bad_scrape"]["llm_canary_score"]
    return {'llm_canary_score{job="canary"}': [g] * good_minutes + [b] * bad_minutes}


def test_alert_fires_for_the_bad_model_under_promtool(lab, canary, tmp_path):
    _need_promtool()
    firing = [{"exp_labels": {"severity": "page", "job": "canary"},
               "exp_annotations": lab.rule_annotations("LLMCanaryScoreLow")}]
    checks = [{"eval_time": "14m", "alertname": "LLMCanaryScoreLow", "exp_alerts": []},
              {"eval_time": "18m", "alertname": "LLMCanaryScoreLow", "exp_alerts": []},
              {"eval_time": "25m", "alertname": "LLMCanaryScoreLow", "exp_alerts": firing}]
    doc = lab.promtool_test_file(lab.ALERTS_FILE, _canary_series(canary, 15, 15), checks)
    rc, out = lab.run_promtool(doc, tmp_path / "swap")
    assert rc == 0, f"the canary alert must stay quiet on the good model and fire 5m after the swap:\n{out}"
    # the good model alone for 30 minutes: quiet all along
    quiet = [{"eval_time": f"{t}m", "alertname": "LLMCanaryScoreLow", "exp_alerts": []} for t in (5, 15, 29)]
    rc, out = lab.run_promtool(lab.promtool_test_file(lab.ALERTS_FILE, _canary_series(canary, 30, 0), quiet),
                               tmp_path / "good")
    assert rc == 0, f"the alert fired for the released model:\n{out}"
    # control: promtool really evaluates (expecting the alert on the good model must fail)
    wrong = [{"eval_time": "29m", "alertname": "LLMCanaryScoreLow", "exp_alerts": firing}]
    rc, _ = lab.run_promtool(lab.promtool_test_file(lab.ALERTS_FILE, _canary_series(canary, 30, 0), wrong),
                             tmp_path / "control")
    assert rc != 0, "promtool accepted a firing alert on the good model: the rule or the series are wrong"


# ---------------------------------------------------------------------------------------------
# committed dashboard and rules
# ---------------------------------------------------------------------------------------------


@pytest.mark.given
def test_dashboard_and_rules_use_exported_series(lab, burst, served):
    import yaml

    dashboard = json.loads(lab.DASHBOARD_FILE.read_text(encoding="utf-8"))
    assert dashboard == lab.grafana_dashboard(), "dashboard.json is stale: python solution.py --write-dashboard"
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = yaml.safe_load(lab.ALERTS_FILE.read_text(encoding="utf-8"))
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    model, tok = served
    job = lab.CanaryJob([lab.CanaryItem("Once upon a", "time")], model, tok)
    canary_series = {s.name for fam in job.registry.collect() for s in fam.samples} | \
        {fam.name for fam in job.registry.collect()}        # labelled gauges have no samples before a run
    exported = {k.split("{")[0] for k in burst["metrics"]} | canary_series
    missing = {n for e in exprs for n in lab.metric_names_in(e)} - exported
    assert not missing, f"the dashboard / alert rules read series nobody exports: {sorted(missing)}"
    if shutil.which("promtool"):
        import subprocess

        proc = subprocess.run(["promtool", "check", "rules", str(lab.ALERTS_FILE)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr

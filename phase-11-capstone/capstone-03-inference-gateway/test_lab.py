"""Grader for capstone 3 (inference gateway). Everything runs for real on loopback: the CPU
backend is Phase 10 lab 4's server in its own process, Redis is the distribution's
``redis-server`` on a free port, SIGTERM goes to a gateway process, and a backend process is
killed with SIGKILL mid-stream. References: hand-computed token buckets, the Python bucket vs the
Lua script inside Redis, the backend's own greedy output, OpenTelemetry's in-memory exporter,
the committed Grafana dashboard's PromQL."""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path

import httpx
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import gw_selftest as g  # noqa: E402

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def backend():
    """One CPU backend for the session: Phase 10 lab 4's observed server over the curriculum
    model (batch 16), in a thread of this process (the tests that need a process of their own,
    SIGKILL and SIGTERM, start one)."""
    import torch

    from labkit import load_lab

    torch.set_num_threads(1)
    be = load_lab(HERE / "gw_backend.py")
    engine, name = be.build_engine("main", max_batch_size=16)
    with be.p10().serve_observed(engine, model_name=name) as ep:
        yield ep.base_url


@pytest.fixture(scope="session")
def redis_url():
    if shutil.which("redis-server") is None:
        if IN_CI:
            pytest.fail("redis-server is missing under CI=true: .ci/run must `apt-get install -y redis-server`")
        pytest.skip("redis-server not installed (Debian/Ubuntu: apt-get install redis-server)")
    with g.redis_server() as url:
        yield url


# ---------------------------------------------------------------------------------------------
# pure pieces
# ---------------------------------------------------------------------------------------------


def test_token_bucket_hand_cases(lab):
    tb = lab.token_bucket
    ok, retry, st = tb(None, 100.0, rate=2.0, capacity=3)
    assert ok and retry == 0 and st.tokens == pytest.approx(2.0) and st.ts == 100.0, (
        "a new tenant starts with a FULL bucket (capacity tokens): the first request must pass and leave "
        f"capacity - 1 = 2 tokens; got allowed={ok}, tokens={st.tokens}")
    ok2, _, st = tb(st, 100.0, 2.0, 3)
    ok3, _, st = tb(st, 100.0, 2.0, 3)
    ok4, retry4, st4 = tb(st, 100.0, 2.0, 3)
    assert ok2 and ok3 and not ok4, "a burst of capacity=3 requests at one instant: 3 pass, the 4th is refused"
    assert retry4 == pytest.approx(0.5), (
        f"with 0 tokens left and rate 2/s, one token is back in 0.5 s: retry_after should be 0.5, got {retry4}")
    ok5, _, st5 = tb(st4, 100.25, 2.0, 3)
    assert not ok5 and st5.tokens == pytest.approx(0.5), (
        "after 0.25 s at 2 tokens/s the bucket holds 0.5 tokens: still refused, and the refill must be kept")
    ok6, _, st6 = tb(st5, 100.5, 2.0, 3)
    assert ok6 and st6.tokens == pytest.approx(0.0), "after 0.5 s the bucket holds 1 token: allowed"
    _, _, full = tb(st6, 1000.0, 2.0, 3)
    assert full.tokens == pytest.approx(2.0), "the refill is capped at capacity (min(capacity, ...)), then one is taken"
    back_ok, _, back = tb(BucketStateLike(lab, 1.0, 50.0), 40.0, 2.0, 3)
    assert back.tokens == pytest.approx(0.0) and back.ts == 50.0 and back_ok, (
        "a clock that steps backwards (now < ts) must add no tokens and keep ts: use max(0, now - ts) and "
        "max(ts, now)")


def BucketStateLike(lab, tokens, ts):  # noqa: N802 - reads like the dataclass it builds
    return lab.BucketState(tokens, ts)


@pytest.mark.given
def test_token_bucket_validates(lab):
    for kw in ({"rate": 0, "capacity": 3}, {"rate": 1, "capacity": 0.5}, {"rate": 1, "capacity": 3, "cost": 0}):
        with pytest.raises(ValueError):
            lab.token_bucket(None, 0.0, **kw)
    with pytest.raises(ValueError):
        lab.Tenant("t", "k", rate_per_s=float("nan"), burst=1)
    with pytest.raises(ValueError):
        lab.GatewayConfig(tenants=[], backends=[])


def test_router_breaker_and_order(lab):
    now = [0.0]
    a, b = lab.Backend("a", "http://a/v1", ["m"]), lab.Backend("b", "http://b/v1", ["m", "x"])
    r = lab.Router([a, b], failures=2, cooldown_s=5.0, clock=lambda: now[0])
    assert [x.name for x in r.candidates("m")] == ["a", "b"], "ties in in-flight keep the configured order"
    assert [x.name for x in r.candidates("x")] == ["b"], "only backends that list the model are candidates"
    assert r.candidates("nope") == []
    a.inflight = 3
    assert [x.name for x in r.candidates("m")] == ["b", "a"], "least in-flight first"
    a.inflight = 0
    r.on_failure(a)
    assert [x.name for x in r.candidates("m")] == ["a", "b"], "one failure is below the threshold of 2"
    r.on_failure(a)
    assert [x.name for x in r.candidates("m")] == ["b"], (
        "two consecutive failures must open a's breaker: skip it until clock() >= open_until")
    now[0] = 5.0
    assert [x.name for x in r.candidates("m")] == ["a", "b"], "after cooldown_s the breaker is half-open: try again"
    r.on_success(a)
    r.on_failure(a)
    assert [x.name for x in r.candidates("m")] == ["a", "b"], "a success resets the consecutive-failure count"
    b.healthy = False
    assert [x.name for x in r.candidates("m")] == ["a"], "a backend whose health probe failed is skipped"


def test_cost_per_million_tokens(lab):
    assert lab.cost_per_million_tokens(0.10, 100.0) == pytest.approx(0.10 / 360000 * 1e6)
    assert lab.cost_per_million_tokens(3.6, 1000.0) == pytest.approx(1.0), "$3.60/h at 1000 tok/s = $1 per M tokens"
    for bad in ((-1.0, 10.0), (1.0, 0.0), (1.0, float("nan")), (float("inf"), 1.0)):
        with pytest.raises(ValueError):
            lab.cost_per_million_tokens(*bad)


# ---------------------------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------------------------


def test_lua_script_matches_python_bucket(lab, redis_url):
    res = g.bucket_agreement(lab, redis_url)
    bad = [(i, x, y) for i, (x, y) in enumerate(zip(res["redis"], res["python"]))
           if x[0] != y[0] or not math.isclose(x[1], y[1], abs_tol=1e-6)]
    assert res["same"], (
        f"the Lua script in Redis and token_bucket disagree at steps (index, redis, python): {bad[:4]}. The script "
        "must apply the same refill (capped, never backwards) and take rule, and return retry_after as a string")


def test_tenant_over_limit_gets_429_while_other_is_served(lab, backend, redis_url):
    res = g.tenant_isolation(lab, backend, redis_url)
    assert res["limiter"] == "redis"
    assert res["free"] == [200, 200, 429, 429], (
        f"tenant 'free' (burst 2) sent 4 requests at once: expected [200, 200, 429, 429], got {res['free']}")
    assert res["limited_code"] == "rate_limit_exceeded" and res["retry_after"] is not None, (
        "a rate-limited request needs code 'rate_limit_exceeded' and a Retry-After header")
    assert res["acme"] == [200] * 4, f"tenant 'acme' must be served while 'free' is limited, got {res['acme']}"
    assert res["unknown"] == 401 and res["missing"] == 401 and res["unknown_code"] == "invalid_api_key", (
        f"unknown and missing API keys must get 401 invalid_api_key, got {res['unknown']} / {res['missing']}")
    assert res["usage"]["requests"] == 4 and res["usage"]["completion_tokens"] == 16, (
        f"acme's metered usage should be 4 requests x 4 tokens, got {res['usage']}")


def test_two_replicas_share_one_limit(lab, backend, redis_url):
    res = g.shared_limit(lab, backend, redis_url)
    assert res["admitted"] == res["burst"], (
        f"two gateways on one Redis admitted {res['admitted']} of 6 requests for a tenant with burst "
        f"{res['burst']} ({res['codes']}): the bucket must live in Redis, not in each process")


# ---------------------------------------------------------------------------------------------
# the gateway in front of a real backend
# ---------------------------------------------------------------------------------------------


def test_unknown_key_401_in_process_limiter(lab, backend):
    res = g.tenant_isolation(lab, backend, None)
    assert res["limiter"] == "in-process"
    assert (res["unknown"], res["missing"]) == (401, 401), "unknown/missing keys must be refused with 401"
    assert res["free"] == [200, 200, 429, 429] and res["acme"] == [200] * 4, (
        f"the in-process limiter must behave like the Redis one: free {res['free']}, acme {res['acme']}")


def test_stream_through_gateway_equals_backend(lab, backend):
    cfg = g.gateway_config(lab, [("cpu-0", backend)])
    body = {"model": g.MODEL, "messages": [{"role": "user", "content": "Tell me a story about a cat."}],
            "max_tokens": 24, "temperature": 0.0}
    with httpx.Client(timeout=60) as c:
        direct = c.post(backend + "/chat/completions", json=body).json()["choices"][0]["message"]["content"]
        with lab.serve_gateway_in_thread(cfg) as ep:
            status, text, events = lab._stream(c, ep.base_url + "/chat/completions", "sk-acme-test",
                                               {**body, "stream": True})
            plain = ep.client().chat.completions.create(model=g.MODEL, messages=body["messages"], max_tokens=24,
                                                        temperature=0.0)
    assert status == 200 and events and events[-1] == {"done": True}, "the stream must end with data: [DONE]"
    assert not any("usage" in e for e in events[:-1] if e.get("usage")), (
        "the client did not ask for include_usage: the gateway's own usage chunk must not reach it")
    assert text == direct, f"streamed text through the gateway differs from the backend's:\n{text!r}\n{direct!r}"
    assert plain.choices[0].message.content == direct, "the non-streaming path must return the backend's answer"


def test_admission_control_sheds_load_with_429(lab, backend):
    res = g.admission(lab, backend, max_inflight=4, n=16)
    assert res["lost"] == 0, f"{res['lost']} of 16 requests neither completed nor got a 429: {res}"
    assert res["shed"] > 0 and res["metric_overloaded"] == res["shed"], (
        f"16 concurrent streams against max_inflight=4 must shed some with 429 'overloaded' (counted in "
        f"gateway_rejected_total): {res}")
    assert res["ok"] >= 4 and res["after"] == 200, "the admitted requests finish and the gateway serves again after"


def test_backend_dying_mid_stream_gives_clean_error(lab, backend):
    res = g.backend_death(lab, backend)
    assert res["client_exc"] is None and res["done"], (
        f"when the backend dies mid-stream the client must get a clean end (an error event, then data: [DONE]), "
        f"not a broken connection: {res['client_exc']}")
    assert res["errors"] and res["errors"][0]["code"] == "backend_failed", (
        f"expected one error event with code 'backend_failed', got {res['errors']}")
    assert res["after"] == [200] * 4 and res["after_stream_ok"], (
        f"after the death the gateway must keep serving from the other backend, got {res['after']}")
    assert res["doomed"]["breaker_open"] or not res["doomed"]["healthy"], "the dead backend must be taken out"


def test_sigterm_drain_loses_no_stream(lab, backend, tmp_path):
    res = g.drain(lab, backend, tmp_path, n=16, max_tokens=96)
    assert res["in_flight_at_sigterm"] == 16
    assert res["late_status"] == 503 and res["late_code"] == "draining", (
        f"a request arriving after SIGTERM must get 503 'draining', got {res['late_status']} {res['late_code']}")
    assert res["completed"] == 16, (
        f"only {res['completed']}/16 streams in flight at SIGTERM completed: a drain lets them finish")
    assert res["exit_code"] == 0, f"the gateway must exit (code 0) once drained, got {res['exit_code']}"


def test_traces_logs_and_dashboard_metrics(lab, backend, caplog):
    with caplog.at_level("INFO", logger="gateway"):
        res = g.tracing_and_metrics(lab, backend)
    lines = [json.loads(lab._JsonFormatter().format(r)) for r in caplog.records if r.getMessage() == "request"]
    assert len(lines) == 2 and all(ln["tenant"] == "acme" and ln["status"] == 200 for ln in lines), (
        f"one JSON log line per request (tenant, status, ...) expected, got {lines}")
    assert {ln["trace_id"] for ln in lines} == set(res["trace_ids"]), "log lines must carry their span's trace id"
    assert lines[0]["completion_tokens"] == 8 or lines[1]["completion_tokens"] == 8, "metered tokens in the log"
    assert res["request_spans"] == 2 and res["linked"] == 2 and res["tenant_attr"], (
        f"each request needs a gateway.request span (tenant attribute) with a gateway.upstream child: {res}")
    assert not res["missing_series"], f"the Grafana dashboard queries series the gateway does not export: " \
                                      f"{res['missing_series']}"


# ---------------------------------------------------------------------------------------------
# given pieces: the quantized backend, the deployment files
# ---------------------------------------------------------------------------------------------


def test_routes_by_model_to_a_quantized_backend(lab, backend):
    """Two models behind one gateway: the session backend (curriculum-main) and an INT8 copy
    (Phase 9 lab 2's quantize_model) in its own server; the ``model`` field picks the backend."""
    import torch

    from labkit import load_lab

    torch.set_num_threads(1)
    be = load_lab(HERE / "gw_backend.py")
    engine, name = be.build_engine("main", "int8", max_batch_size=4)
    assert name == "curriculum-main-int8"
    with be.p10().serve_observed(engine, model_name=name) as bep:
        cfg = lab.GatewayConfig.from_dict({
            "tenants": [{"name": "acme", "api_key": "sk-acme-test", "rate_per_s": 100.0, "burst": 100}],
            "backends": [{"name": "fp32", "url": backend, "models": [g.MODEL]},
                         {"name": "int8", "url": bep.base_url, "models": [name]}]})
        with lab.serve_gateway_in_thread(cfg) as ep, httpx.Client(timeout=60) as c:
            client = ep.client()
            models = sorted(m.id for m in client.models.list().data)
            q = client.completions.create(model=name, prompt="Once upon a time", max_tokens=8, temperature=0)
            f = client.completions.create(model=g.MODEL, prompt="Once upon a time", max_tokens=8, temperature=0)
            unknown = g.post(c, ep.base_url, "sk-acme-test", {"model": "gpt-9", "prompt": "hi", "max_tokens": 2})
            health = c.get(ep.base_url.removesuffix("/v1") + "/healthz").json()
    assert models == sorted([g.MODEL, name]), f"/v1/models must list every routed model, got {models}"
    assert q.model == name and f.model == g.MODEL, (
        f"the model field must pick the backend: asked {name} got {q.model}, asked {g.MODEL} got {f.model}")
    assert q.choices[0].text and f.choices[0].text
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found", (
        f"a model no backend serves must get 404 model_not_found, got {unknown.status_code}")
    assert all(b["inflight"] == 0 for b in health["backends"]), "in-flight counts must return to 0"


@pytest.mark.given
def test_deploy_files_are_consistent(lab):
    import yaml

    deploy = HERE / "deploy"
    compose = yaml.safe_load((deploy / "docker-compose.yml").read_text())
    services = compose["services"]
    for name in ("gateway", "redis", "prometheus", "grafana", "otel-collector"):
        assert name in services, f"docker-compose.yml lacks the {name} service"
    cfg = lab.GatewayConfig.from_json(deploy / "gateway.json")
    for b in cfg.backends:
        host = b["url"].split("//")[1].split(":")[0]
        assert host in services, f"gateway.json routes to {host}, which docker-compose.yml does not define"
    lab.GatewayConfig.from_json(deploy / "gateway.gpu.json")
    gpu = yaml.safe_load((deploy / "docker-compose.gpu.yml").read_text())["services"]
    assert all("--enable-prefix-caching" in gpu[s]["command"] for s in ("vllm-small", "vllm-large"))
    prom = yaml.safe_load((deploy / "prometheus.yml").read_text())
    assert any("gateway:8080" in t for j in prom["scrape_configs"] for s in j["static_configs"] for t in s["targets"])
    assert g.dashboard_metrics(), "the dashboard has no gateway_* queries"
    json.loads((deploy / "grafana" / "dashboards" / "gateway.json").read_text())

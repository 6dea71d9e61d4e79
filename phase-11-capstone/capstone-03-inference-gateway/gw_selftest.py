"""The capstone's feature checks (given): each starts real processes on loopback, drives the
gateway the way a client would, and returns what it measured. ``solution.py``'s self-test and
``test_lab.py`` both call them, passing the gateway module under test (``solution`` or ``lab``).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
MODEL = "curriculum-main"
DASHBOARD = HERE / "deploy" / "grafana" / "dashboards" / "gateway.json"


# ---------------------------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def redis_server(timeout: float = 10.0) -> Iterator[str]:
    """A throwaway ``redis-server`` (the distribution's package) on a free loopback port, no
    persistence; yields its ``redis://`` URL and stops it on exit.

    Raises:
        FileNotFoundError: no ``redis-server`` on PATH (install the ``redis-server`` package).
    """
    exe = shutil.which("redis-server")
    if exe is None:
        raise FileNotFoundError("redis-server is not installed (apt-get install redis-server)")
    port = _free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--protected-mode", "yes", "--loglevel", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def gateway_config(sol: Any, backends: list[tuple[str, str]], *, redis_url: str | None = None,
                   max_inflight: int = 64, free_burst: int = 2, **kw: Any) -> Any:
    """Two tenants: ``acme`` (big bucket) and ``free`` (one request per 20 s, burst ``free_burst``: no refill
    during a check, however slow the machine)."""
    return sol.GatewayConfig.from_dict({
        "tenants": [{"name": "acme", "api_key": "sk-acme-test", "rate_per_s": 1000.0, "burst": 1000},
                    {"name": "free", "api_key": "sk-free-test", "rate_per_s": 0.05, "burst": free_burst}],
        "backends": [{"name": n, "url": u, "models": [MODEL]} for n, u in backends],
        "redis_url": redis_url, "max_inflight": max_inflight, **kw})


def post(client: httpx.Client, base: str, key: str | None, body: dict | None = None,
         path: str = "/completions") -> httpx.Response:
    body = body or {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 4, "temperature": 0.0}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.post(base + path, json=body, headers=headers)


class Streamer(threading.Thread):
    """One streamed completion in a thread; ``first`` is set at the first content chunk."""

    def __init__(self, base: str, key: str, max_tokens: int, prompt: str = "Once upon a time") -> None:
        super().__init__(daemon=True)
        self.base, self.key, self.max_tokens, self.prompt = base, key, max_tokens, prompt
        self.first = threading.Event()
        self.status: int | None = None
        self.text, self.done, self.errors, self.usage = "", False, [], None
        self.exc: BaseException | None = None

    def run(self) -> None:
        body = {"model": MODEL, "prompt": self.prompt, "max_tokens": self.max_tokens, "temperature": 0.0,
                "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
        try:
            with httpx.Client(timeout=60) as c, c.stream("POST", self.base + "/completions", json=body,
                                                          headers={"Authorization": f"Bearer {self.key}"}) as r:
                self.status = r.status_code
                for line in r.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    d = line[6:]
                    if d == "[DONE]":
                        self.done = True
                        break
                    msg = json.loads(d)
                    if "error" in msg:
                        self.errors.append(msg["error"])
                    if msg.get("usage"):
                        self.usage = msg["usage"]
                    for ch in msg.get("choices", []):
                        if ch.get("text"):
                            self.text += ch["text"]
                            self.first.set()
        except BaseException as exc:  # noqa: BLE001 - reported by the check
            self.exc = exc
        finally:
            self.first.set()


# ---------------------------------------------------------------------------------------------
# the checks
# ---------------------------------------------------------------------------------------------


def bucket_agreement(sol: Any, redis_url: str) -> dict[str, Any]:
    """The Lua script (in a real Redis) against the Python token bucket, on one schedule of
    request times (a burst, refills, a clock that steps backwards)."""
    times = [0.0, 0.0, 0.0, 0.0, 0.2, 0.5, 0.5, 1.0, 1.1, 3.0, 2.5, 2.6, 10.0]
    tenant = sol.Tenant("lua-check", "k", rate_per_s=2.0, burst=3)

    async def run() -> list[tuple[bool, float]]:
        lim = sol.RedisLimiter(redis_url, prefix=f"check-{uuid.uuid4().hex[:8]}")
        try:
            return [await lim.acquire(tenant, now=1000.0 + t) for t in times]
        finally:
            await lim.close()

    got = asyncio.run(run())
    state, want = None, []
    for t in times:
        ok, retry, state = sol.token_bucket(state, 1000.0 + t, 2.0, 3)
        want.append((ok, retry))
    same = all(a[0] == b[0] and abs(a[1] - b[1]) < 1e-6 for a, b in zip(got, want))
    return {"n": len(times), "same": same, "redis": got, "python": want}


def tenant_isolation(sol: Any, backend_url: str, redis_url: str | None) -> dict[str, Any]:
    """``free`` (burst 2) sends 4 requests at once, ``acme`` 4 more: free gets 2 x 200 then 429s,
    acme all 200; unknown and missing keys 401; usage is metered in the limiter's store."""
    cfg = gateway_config(sol, [("cpu-0", backend_url)], redis_url=redis_url)
    if redis_url:
        limiter = sol.RedisLimiter(redis_url, prefix=f"iso-{uuid.uuid4().hex[:8]}")
    else:
        limiter = sol.InProcessLimiter()
    with sol.serve_gateway_in_thread(cfg, limiter=limiter) as ep, httpx.Client(timeout=60) as c:
        free = [post(c, ep.base_url, "sk-free-test") for _ in range(4)]
        acme = [post(c, ep.base_url, "sk-acme-test") for _ in range(4)]
        unknown = post(c, ep.base_url, "sk-nobody")
        missing = post(c, ep.base_url, None)
        usage = c.get(ep.base_url + "/usage", headers={"Authorization": "Bearer sk-acme-test"}).json()
        limited = [r for r in free if r.status_code == 429]
    return {"limiter": limiter.kind, "free": [r.status_code for r in free], "acme": [r.status_code for r in acme],
            "unknown": unknown.status_code, "missing": missing.status_code,
            "unknown_code": unknown.json()["error"]["code"],
            "limited_code": limited[0].json()["error"]["code"] if limited else None,
            "retry_after": limited[0].headers.get("retry-after") if limited else None, "usage": usage}


def shared_limit(sol: Any, backend_url: str, redis_url: str) -> dict[str, Any]:
    """Two gateway replicas on one Redis: ``free`` alternates between them; together they admit
    only its burst (with in-process limiters each replica would admit a full burst)."""
    cfg = gateway_config(sol, [("cpu-0", backend_url)], redis_url=redis_url, free_burst=3)
    prefix = f"shared-{uuid.uuid4().hex[:8]}"
    with sol.serve_gateway_in_thread(cfg, limiter=sol.RedisLimiter(redis_url, prefix)) as a, \
            sol.serve_gateway_in_thread(cfg, limiter=sol.RedisLimiter(redis_url, prefix)) as b, \
            httpx.Client(timeout=60) as c:
        codes = [post(c, ep.base_url, "sk-free-test").status_code for ep in (a, b, a, b, a, b)]
    return {"codes": codes, "admitted": codes.count(200), "burst": 3}


def admission(sol: Any, backend_url: str, max_inflight: int = 4, n: int = 16, max_tokens: int = 48) -> dict[str, Any]:
    """``n`` concurrent streams against a gateway admitting ``max_inflight``: the rest get 429
    ``overloaded`` with Retry-After at once, the admitted ones finish."""
    cfg = gateway_config(sol, [("cpu-0", backend_url)], max_inflight=max_inflight)
    with sol.serve_gateway_in_thread(cfg) as ep:
        ts = [Streamer(ep.base_url, "sk-acme-test", max_tokens) for _ in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        with httpx.Client(timeout=30) as c:
            r = post(c, ep.base_url, "sk-acme-test")      # after the burst: served again
            metrics = c.get(ep.base_url.removesuffix("/v1") + "/metrics").text
    ok = [t for t in ts if t.status == 200 and t.done and not t.errors]
    shed = [t for t in ts if t.status == 429]
    m = re.search(r'gateway_rejected_total\{reason="overloaded",tenant="acme"\} (\S+)', metrics)
    return {"n": n, "max_inflight": max_inflight, "ok": len(ok), "shed": len(shed), "after": r.status_code,
            "lost": n - len(ok) - len(shed), "metric_overloaded": float(m[1]) if m else 0.0}


def backend_death(sol: Any, healthy_url: str, max_tokens: int = 200) -> dict[str, Any]:
    """A backend process killed (SIGKILL) in the middle of a stream routed to it: the client
    gets an error event and ``[DONE]``; the next requests go to the other backend."""
    with sol.spawn(sol.backend_cmd()) as (doomed, info):
        cfg = gateway_config(sol, [("doomed", info["url"]), ("cpu-0", healthy_url)], health_interval_s=0.5)
        with sol.serve_gateway_in_thread(cfg) as ep:
            s = Streamer(ep.base_url, "sk-acme-test", max_tokens)
            s.start()
            s.first.wait(30)
            t_kill = time.perf_counter()
            doomed.send_signal(signal.SIGKILL)
            s.join(30)
            t_err = time.perf_counter() - t_kill
            with httpx.Client(timeout=60) as c:
                after = [post(c, ep.base_url, "sk-acme-test").status_code for _ in range(4)]
                st = Streamer(ep.base_url, "sk-acme-test", 16)
                st.run()
                health = c.get(ep.base_url.removesuffix("/v1") + "/healthz").json()
    return {"stream_status": s.status, "partial_chars": len(s.text), "errors": s.errors, "done": s.done,
            "client_exc": repr(s.exc) if s.exc else None, "error_after_s": t_err, "after": after,
            "after_stream_ok": st.done and not st.errors and st.status == 200,
            "doomed": next(b for b in health["backends"] if b["name"] == "doomed")}


def drain(sol: Any, backend_url: str, out: Path, n: int = 16, max_tokens: int = 96) -> dict[str, Any]:
    """The gateway as its own process; ``n`` streams in flight; SIGTERM: a new request gets 503,
    every stream still completes (``[DONE]``, ``max_tokens`` tokens, no error), the process exits 0."""
    cfg_path = out / f"drain-gateway-{uuid.uuid4().hex[:6]}.json"
    cfg_path.write_text(json.dumps({
        "tenants": [{"name": "acme", "api_key": "sk-acme-test", "rate_per_s": 1000.0, "burst": 1000}],
        "backends": [{"name": "cpu-0", "url": backend_url, "models": [MODEL]}], "drain_timeout_s": 60}),
        encoding="utf-8")
    with sol.spawn(sol.gateway_cmd(cfg_path)) as (proc, info):
        base = info["url"]
        ts = [Streamer(base, "sk-acme-test", max_tokens) for _ in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.first.wait(30)
        started = sum(t.status == 200 for t in ts)
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        try:
            with httpx.Client(timeout=10) as c:
                late = post(c, base, "sk-acme-test")
                late_status, late_code = late.status_code, late.json()["error"]["code"]
        except httpx.HTTPError as exc:
            late_status, late_code = None, repr(exc)
        for t in ts:
            t.join(60)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            rc = None
        exit_s = time.perf_counter() - t0
    cfg_path.unlink(missing_ok=True)
    complete = [t for t in ts if t.status == 200 and t.done and not t.errors and t.exc is None
                and (t.usage or {}).get("completion_tokens") == max_tokens]
    return {"n": n, "in_flight_at_sigterm": started, "completed": len(complete), "late_status": late_status,
            "late_code": late_code, "exit_code": rc, "exit_after_s": exit_s}


def tracing_and_metrics(sol: Any, backend_url: str) -> dict[str, Any]:
    """Spans (in-memory exporter) and the Prometheus exposition after one streamed and one plain
    request; every gateway series the Grafana dashboard queries must exist."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    cfg = gateway_config(sol, [("cpu-0", backend_url)])
    with sol.serve_gateway_in_thread(cfg, tracer_provider=provider) as ep, httpx.Client(timeout=60) as c:
        s = Streamer(ep.base_url, "sk-acme-test", 8)
        s.run()
        post(c, ep.base_url, "sk-acme-test")
        text = c.get(ep.base_url.removesuffix("/v1") + "/metrics").text
    spans = exporter.get_finished_spans()
    reqs = [sp for sp in spans if sp.name == "gateway.request"]
    ups = [sp for sp in spans if sp.name == "gateway.upstream"]
    linked = sum(any(u.parent is not None and u.parent.span_id == r.context.span_id for u in ups) for r in reqs)
    exported = set(re.findall(r"^(gateway_\w+?)(?:_bucket|_count|_sum|_total|_created)?[{ ]", text, re.M))
    wanted = dashboard_metrics()
    return {"request_spans": len(reqs), "upstream_spans": len(ups), "linked": linked,
            "tenant_attr": all(r.attributes.get("gateway.tenant") == "acme" for r in reqs),
            "trace_ids": [f"{r.context.trace_id:032x}" for r in reqs],
            "missing_series": sorted(wanted - exported), "dashboard_series": len(wanted)}


def dashboard_metrics(path: Path = DASHBOARD) -> set[str]:
    """The ``gateway_*`` metric names (suffixes stripped) every panel's PromQL uses."""
    dash = json.loads(path.read_text(encoding="utf-8"))
    names = set()
    for panel in dash["panels"]:
        for tgt in panel.get("targets", []):
            for name in re.findall(r"\b(gateway_[a-z_]+)", tgt["expr"]):
                names.add(re.sub(r"_(bucket|count|sum|total)$", "", name))
    return names


# ---------------------------------------------------------------------------------------------
# the self-test's walk-through
# ---------------------------------------------------------------------------------------------


def feature_checks(sol: Any, out: Path, url: str) -> list[str]:
    """Run every check once against the backend at ``url`` and print a scorecard; return failures."""
    failures: list[str] = []
    rows: list[tuple[str, str, bool]] = []

    def row(feature: str, measured: str, ok: bool) -> None:
        rows.append((feature, measured, ok))
        if not ok:
            failures.append(f"{feature}: {measured}")

    try:
        rctx = redis_server()
        redis_url = rctx.__enter__()
    except FileNotFoundError as exc:
        print(f"[redis] {exc}: rate limits fall back to the in-process limiter")
        rctx, redis_url = None, None
    try:
        if redis_url:
            b = bucket_agreement(sol, redis_url)
            row("Lua token bucket == Python", f"{sum(x[0] == y[0] for x, y in zip(b['redis'], b['python']))}"
                f"/{b['n']} decisions equal", b["same"])
        iso = tenant_isolation(sol, url, redis_url)
        row(f"per-tenant limits ({iso['limiter']})", f"free {iso['free']}, acme {iso['acme']}",
            iso["free"] == [200, 200, 429, 429] and iso["acme"] == [200] * 4)
        row("API keys", f"unknown key {iso['unknown']}, no key {iso['missing']}",
            iso["unknown"] == 401 and iso["missing"] == 401)
        row("usage metering", f"acme {iso['usage']['requests']} req, {iso['usage']['completion_tokens']} tokens",
            iso["usage"]["requests"] == 4 and iso["usage"]["completion_tokens"] == 16)
        if redis_url:
            sh = shared_limit(sol, url, redis_url)
            row("limit shared by 2 replicas", f"{sh['admitted']} admitted of 6 (burst {sh['burst']})",
                sh["admitted"] == sh["burst"])
    finally:
        if rctx is not None:
            rctx.__exit__(None, None, None)
    ad = admission(sol, url)
    row("admission control", f"{ad['ok']} served, {ad['shed']} shed (429), {ad['lost']} lost, "
        f"max_inflight {ad['max_inflight']}", ad["lost"] == 0 and ad["shed"] > 0 and ad["ok"] >= ad["max_inflight"])
    de = backend_death(sol, url)
    row("backend dies mid-stream", f"error event after {de['error_after_s'] * 1e3:.0f} ms, [DONE] {de['done']}, "
        f"then {de['after']}", bool(de["errors"]) and de["done"] and de["after"] == [200] * 4
        and de["after_stream_ok"])
    dr = drain(sol, url, out)
    row("graceful drain (SIGTERM)", f"{dr['completed']}/{dr['n']} streams complete, new request "
        f"{dr['late_status']}, exit {dr['exit_code']} after {dr['exit_after_s']:.1f} s",
        dr["completed"] == dr["n"] and dr["late_status"] == 503 and dr["exit_code"] == 0)
    tm = tracing_and_metrics(sol, url)
    row("OpenTelemetry spans", f"{tm['request_spans']} request spans, {tm['linked']} with an upstream child",
        tm["request_spans"] == 2 and tm["linked"] == 2 and tm["tenant_attr"])
    row("Prometheus series for Grafana", f"{tm['dashboard_series'] - len(tm['missing_series'])}/"
        f"{tm['dashboard_series']} dashboard series exported", not tm["missing_series"])
    print(f"\n{'feature':<30} {'measured':<62} ok")
    for feature, measured, ok in rows:
        print(f"{feature:<30} {measured:<62} {'yes' if ok else 'NO'}")
    return failures


def plot_benchmark(rows: list[dict], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from labkit.plots import savefig

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for p, style in (("direct", "s--"), ("gateway", "o-")):
        pts = [r for r in rows if r["path"] == p]
        xs = [r["concurrency"] for r in pts]
        ax.plot(xs, [r["tok_s"] for r in pts], style, label=p)
        ax2.plot(xs, [r["ttft_p50"] for r in pts], style, label=f"{p} p50")
        ax2.plot(xs, [r["ttft_p99"] for r in pts], style, alpha=0.5, label=f"{p} p99")
    for a, title, ylabel in ((ax, "throughput", "completion tokens / s"), (ax2, "time to first token", "ms")):
        a.set_xscale("log", base=2)
        a.set_xlabel("concurrent clients")
        a.set_ylabel(ylabel)
        a.set_title(title)
        a.grid(alpha=0.3)
        a.legend()
    fig.suptitle("capstone 3: gateway vs direct backend (curriculum model, CPU)")
    return savefig(fig, path)

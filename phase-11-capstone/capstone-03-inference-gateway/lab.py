# Generated from solution.py by `make labs` (labkit/labgen.py). Fill in the TODOs.
"""Capstone 3: an OpenAI-compatible, multi-tenant LLM inference gateway.

A FastAPI gateway in front of a pool of OpenAI-compatible backends. On CPU the backends are
Phase 10 lab 4's observed continuous-batching server (Phase 9 lab 3's engine plus metrics),
started by ``backend.py``, imported by path, never copied; on a GPU they are vLLM servers, with
the same gateway code in front. The gateway adds what a shared inference service needs:

- ``/v1/chat/completions``, ``/v1/completions`` (streaming SSE and not), ``/v1/models``;
- **per-tenant API keys** (``Authorization: Bearer ...``; an unknown key gets 401) and
  **token-bucket rate limits** kept in Redis by one atomic Lua script (every gateway replica
  sees the same buckets), or in process when no Redis URL is configured; per-tenant usage
  metering (requests, prompt and completion tokens) in the same store;
- **routing** by the request's ``model`` with a circuit breaker per backend, health probes and
  fallback to the next backend before the first byte; a backend that dies mid-stream ends that
  stream with an OpenAI-style error event and ``[DONE]``, and the gateway keeps serving;
- **admission control**: at most ``max_inflight`` requests in flight, beyond that 429 with
  ``Retry-After`` (shed load early rather than let every request get slow);
- **graceful drain**: on SIGTERM new requests get 503 while the in-flight streams run to their
  end, then the process exits;
- **observability**: Prometheus metrics on ``/metrics`` (TTFT, TPOT, latency, tokens by tenant,
  in-flight, rejections by reason, backend health), OpenTelemetry spans (``gateway.request`` and a
  ``gateway.upstream`` child whose W3C ``traceparent`` header goes to the backend), one JSON log
  line per request.

``deploy/`` holds the Docker Compose stack (gateway, two backends, Redis, Prometheus, Grafana
with the dashboard, an OpenTelemetry collector) and ``backend.py`` the backend launcher (the
curriculum model, optionally quantized with Phase 9 lab 2's INT8 / INT4-AWQ).

Run:  python solution.py              smoke self-test: every feature once, a short benchmark (~40 s)
      python solution.py --bench      small mode: the benchmark table of the README (~3-4 min, 2 cores)
      python solution.py --serve --config deploy/gateway.json --port 8080   (the gateway alone)
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from labkit.llm_server import Endpoint, _error_body

HERE = Path(__file__).resolve().parent

__all__ = [
    "Backend", "BucketState", "GatewayConfig", "GatewayServer", "InProcessLimiter", "RedisLimiter",
    "Router", "Tenant", "cost_per_million_tokens", "create_gateway", "make_limiter", "serve_gateway_in_thread",
    "token_bucket", "token_bucket_lua",
]

log = logging.getLogger("gateway")


# ---------------------------------------------------------------------------------------------
# 1. Configuration: tenants and backends
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tenant:
    """One customer: its API key, and its token bucket (``rate_per_s`` requests per second
    sustained, bursts of up to ``burst`` requests)."""

    name: str
    api_key: str
    rate_per_s: float
    burst: int

    def __post_init__(self) -> None:
        if not self.name or not self.api_key:
            raise ValueError("a tenant needs a non-empty name and api_key")
        if not (isinstance(self.rate_per_s, (int, float)) and math.isfinite(self.rate_per_s) and self.rate_per_s > 0):
            raise ValueError(f"tenant {self.name}: rate_per_s must be a finite number > 0, got {self.rate_per_s!r}")
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 1:
            raise ValueError(f"tenant {self.name}: burst must be an int >= 1, got {self.burst!r}")


@dataclass
class GatewayConfig:
    """Everything the gateway needs; :meth:`from_dict` reads the JSON of ``deploy/gateway.json``.

    ``backends``: ``{"name", "url" (ends in /v1), "models": [...]}`` dicts, in preference order.
    ``redis_url``: ``redis://host:port/db`` for shared rate limits and metering; ``None`` keeps
    them in this process (fine for one replica, wrong for several).
    """

    tenants: list[Tenant]
    backends: list[dict[str, Any]]
    redis_url: str | None = None
    max_inflight: int = 64
    drain_timeout_s: float = 30.0
    upstream_timeout_s: float = 120.0
    breaker_failures: int = 2
    breaker_cooldown_s: float = 5.0
    health_interval_s: float = 2.0

    def __post_init__(self) -> None:
        if not self.tenants:
            raise ValueError("the gateway needs at least one tenant")
        if len({t.api_key for t in self.tenants}) != len(self.tenants):
            raise ValueError("two tenants share an API key")
        if not self.backends:
            raise ValueError("the gateway needs at least one backend")
        for b in self.backends:
            if not b.get("name") or not str(b.get("url", "")).startswith("http") or not b.get("models"):
                raise ValueError(f"a backend needs a name, an http(s) url and a list of models, got {b!r}")
        if isinstance(self.max_inflight, bool) or not isinstance(self.max_inflight, int) or self.max_inflight < 1:
            raise ValueError(f"max_inflight must be an int >= 1, got {self.max_inflight!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GatewayConfig:
        d = dict(d)
        d["tenants"] = [Tenant(**t) for t in d.get("tenants", [])]
        return cls(**d)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> GatewayConfig:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        d["redis_url"] = os.environ.get("GATEWAY_REDIS_URL", d.get("redis_url"))
        return cls.from_dict(d)


# ---------------------------------------------------------------------------------------------
# 2. Rate limits: one token bucket per tenant, in process or in Redis
# ---------------------------------------------------------------------------------------------


@dataclass
class BucketState:
    tokens: float
    ts: float       # the time ``tokens`` was computed (seconds, any monotonic clock)


def token_bucket(state: BucketState | None, now: float, rate: float, capacity: float,
                 cost: float = 1.0) -> tuple[bool, float, BucketState]:
    """One token-bucket decision.

    The bucket holds at most ``capacity`` tokens and refills at ``rate`` tokens per second; a
    request takes ``cost`` tokens if the bucket has them. A missing ``state`` is a full bucket.
    The clock never runs backwards for a bucket: if ``now`` is earlier than ``state.ts`` (two
    replicas with skewed clocks), no tokens are added and ``ts`` stays where it was.

    Returns:
        ``(allowed, retry_after_s, new_state)``: ``retry_after_s`` is 0 when allowed, otherwise
        the seconds until the bucket holds ``cost`` tokens at ``rate``.

    Raises:
        ValueError: ``rate`` <= 0, ``capacity`` < ``cost``, or ``cost`` <= 0.
    """
    if not rate > 0 or not cost > 0 or not capacity >= cost:
        raise ValueError(f"need rate > 0, cost > 0 and capacity >= cost; got rate={rate}, capacity={capacity}, "
                         f"cost={cost}")
    # TODO(1): a missing state is a full bucket at `now`; refill: tokens = min(capacity, tokens + max(0, now - ts) * rate), ts = max(ts, now); take `cost` if there is that much, else retry_after = (cost - tokens) / rate (easy, ~10 min)
    raise NotImplementedError("TODO(1)")


def token_bucket_lua() -> str:
    """The Redis Lua script doing :func:`token_bucket` atomically on the server (one round trip,
    no race between two gateway replicas reading the same bucket).

    ``KEYS[1]``: the bucket's hash (fields ``tokens`` and ``ts``). ``ARGV``: rate, capacity,
    cost, and now (seconds; an empty string means the Redis server's own clock, ``TIME``, which
    is what replicas should share). Returns ``{allowed (0/1), retry_after (string), tokens
    (string)}`` (Lua numbers come back to the client as integers: floats travel as strings).
    The key expires once the bucket would be full again, so idle tenants cost no memory.
    """
    # TODO(2): read rate/capacity/cost/now from ARGV (now = TIME seconds + micros/1e6 when ARGV[4] is ''); HMGET tokens, ts (missing = full bucket at now); the same refill/take rule as token_bucket; HSET the new tokens and ts as strings; PEXPIRE; return {allowed, tostring(retry), tostring(tokens)} (medium, ~20 min)
    raise NotImplementedError("TODO(2)")


class InProcessLimiter:
    """Token buckets and usage counters in this process (one gateway replica only)."""

    kind = "in-process"

    def __init__(self, clock: Any = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[str, BucketState] = {}
        self._usage: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()

    async def acquire(self, tenant: Tenant, cost: float = 1.0, now: float | None = None) -> tuple[bool, float]:
        with self._lock:
            ok, retry, self._buckets[tenant.name] = token_bucket(
                self._buckets.get(tenant.name), self.clock() if now is None else now, tenant.rate_per_s,
                tenant.burst, cost)
        return ok, retry

    async def record_usage(self, tenant: str, prompt_tokens: int, completion_tokens: int) -> None:
        with self._lock:
            u = self._usage.setdefault(tenant, {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0})
            u["requests"] += 1
            u["prompt_tokens"] += prompt_tokens
            u["completion_tokens"] += completion_tokens

    async def usage(self, tenant: str) -> dict[str, int]:
        with self._lock:
            return dict(self._usage.get(tenant, {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}))

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None


class RedisLimiter:
    """Token buckets (``gw:rl:<tenant>``) and usage hashes (``gw:usage:<tenant>``) in Redis,
    via :func:`token_bucket_lua`. ``prefix`` separates deployments (and tests) sharing a server."""

    kind = "redis"

    def __init__(self, url: str, prefix: str = "gw") -> None:
        import redis.asyncio as aioredis

        self.url, self.prefix = url, prefix
        self.redis = aioredis.from_url(url, decode_responses=True, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._script = self.redis.register_script(token_bucket_lua())

    async def acquire(self, tenant: Tenant, cost: float = 1.0, now: float | None = None) -> tuple[bool, float]:
        allowed, retry, _ = await self._script(keys=[f"{self.prefix}:rl:{tenant.name}"],
                                               args=[tenant.rate_per_s, tenant.burst, cost,
                                                     "" if now is None else repr(float(now))])
        return int(allowed) == 1, float(retry)

    async def record_usage(self, tenant: str, prompt_tokens: int, completion_tokens: int) -> None:
        key = f"{self.prefix}:usage:{tenant}"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(key, "requests", 1)
            pipe.hincrby(key, "prompt_tokens", prompt_tokens)
            pipe.hincrby(key, "completion_tokens", completion_tokens)
            await pipe.execute()

    async def usage(self, tenant: str) -> dict[str, int]:
        raw = await self.redis.hgetall(f"{self.prefix}:usage:{tenant}")
        return {k: int(raw.get(k, 0)) for k in ("requests", "prompt_tokens", "completion_tokens")}

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def close(self) -> None:
        await self.redis.aclose()


def make_limiter(redis_url: str | None, prefix: str = "gw") -> InProcessLimiter | RedisLimiter:
    """Redis when a URL is configured, the in-process limiter otherwise."""
    return RedisLimiter(redis_url, prefix) if redis_url else InProcessLimiter()


# ---------------------------------------------------------------------------------------------
# 3. Routing: backends, a circuit breaker each, fallback order
# ---------------------------------------------------------------------------------------------


@dataclass
class Backend:
    """One OpenAI-compatible upstream. ``url`` ends in ``/v1``."""

    name: str
    url: str
    models: list[str]
    inflight: int = 0
    failures: int = 0               # consecutive failures (connect errors, 5xx, died mid-stream)
    open_until: float = 0.0         # the breaker is open (skip this backend) until this time
    healthy: bool = True            # the last health probe's answer


class Router:
    """Picks backends for a model: the ones serving it whose breaker is closed, least in-flight
    first (ties keep the configured order). After ``failures`` consecutive failures a backend's
    breaker opens for ``cooldown_s``; after that it is tried again (half-open) and one success
    closes it."""

    def __init__(self, backends: Sequence[Backend], *, failures: int = 2, cooldown_s: float = 5.0,
                 clock: Any = time.monotonic) -> None:
        if not backends:
            raise ValueError("the router needs at least one backend")
        self.backends, self.threshold, self.cooldown_s, self.clock = list(backends), failures, cooldown_s, clock

    def models(self) -> list[str]:
        return sorted({m for b in self.backends for m in b.models})

    def candidates(self, model: str) -> list[Backend]:
        """The backends to try for ``model``, in order (an empty list: none is available)."""
        # TODO(3): keep backends that list `model`, are healthy, and whose breaker is closed (clock() >= open_until); stable-sort them by inflight (easy, ~10 min)
        raise NotImplementedError("TODO(3)")

    def on_success(self, b: Backend) -> None:
        b.failures, b.open_until = 0, 0.0

    def on_failure(self, b: Backend) -> None:
        """Count a failure; at ``threshold`` consecutive ones, open the breaker for ``cooldown_s``."""
        # TODO(4): failures += 1; when failures >= threshold set open_until = clock() + cooldown_s (easy, ~5 min)
        raise NotImplementedError("TODO(4)")


# ---------------------------------------------------------------------------------------------
# 4. Metrics, traces, logs
# ---------------------------------------------------------------------------------------------

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
TPOT_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class GatewayMetrics:
    """The gateway's Prometheus series (its own registry). ``gateway_`` prefix:

    - ``gateway_requests_total{tenant,model,code}``: every answered ``/v1`` request;
    - ``gateway_rejected_total{tenant,reason}``: unauthorized, rate_limited, overloaded, draining,
      no_backend;
    - ``gateway_time_to_first_token_seconds{model}``, ``gateway_time_per_output_token_seconds{model}``,
      ``gateway_request_duration_seconds{model}`` (histograms, as the client sees them);
    - ``gateway_tokens_total{tenant,model,kind}``: prompt / completion tokens (metering);
    - ``gateway_inflight``, ``gateway_draining`` (gauges);
    - ``gateway_backend_up{backend}``, ``gateway_backend_inflight{backend}`` (gauges),
      ``gateway_backend_failures_total{backend,kind}`` (connect, status, midstream).
    """

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("gateway_requests", "Answered /v1 requests.", ["tenant", "model", "code"], registry=r)
        self.rejected = Counter("gateway_rejected", "Requests refused before routing.", ["tenant", "reason"],
                                registry=r)
        self.ttft = Histogram("gateway_time_to_first_token_seconds", "Request arrival to first content chunk.",
                              ["model"], buckets=TTFT_BUCKETS, registry=r)
        self.tpot = Histogram("gateway_time_per_output_token_seconds", "(last - first chunk) / (tokens - 1).",
                              ["model"], buckets=TPOT_BUCKETS, registry=r)
        self.duration = Histogram("gateway_request_duration_seconds", "Arrival to the last byte.", ["model"],
                                  buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("gateway_tokens", "Tokens metered per tenant.", ["tenant", "model", "kind"], registry=r)
        self.inflight = Gauge("gateway_inflight", "Requests admitted and not finished.", registry=r)
        self.draining = Gauge("gateway_draining", "1 while draining after SIGTERM.", registry=r)
        self.backend_up = Gauge("gateway_backend_up", "1 if the backend is healthy and its breaker closed.",
                                ["backend"], registry=r)
        self.backend_inflight = Gauge("gateway_backend_inflight", "Requests in flight per backend.", ["backend"],
                                      registry=r)
        self.backend_failures = Counter("gateway_backend_failures", "Upstream failures.", ["backend", "kind"],
                                        registry=r)
        for reason in ("unauthorized", "rate_limited", "overloaded", "draining", "no_backend"):
            self.rejected.labels("-", reason)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body = {"ts": round(record.created, 3), "level": record.levelname.lower(), "msg": record.getMessage()}
        body.update(getattr(record, "fields", {}))
        return json.dumps(body)


def setup_json_logging(level: int = logging.INFO) -> None:
    """One JSON object per line on stderr for the ``gateway`` logger."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


# ---------------------------------------------------------------------------------------------
# 5. The gateway
# ---------------------------------------------------------------------------------------------


class GatewayError(Exception):
    """An OpenAI-shaped error response."""

    def __init__(self, status: int, message: str, code: str | None = None, type_: str = "invalid_request_error",
                 retry_after: float | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.type, self.retry_after, self.param = (
            status, message, code, type_, retry_after, param)

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(max(1, math.ceil(self.retry_after)))} if self.retry_after is not None else None
        return JSONResponse(_error_body(self.status, self.message, self.param, self.code, self.type),
                            status_code=self.status, headers=headers)


@dataclass
class Flight:
    """One admitted request, from admission to its last byte."""

    tenant: Tenant
    model: str
    t0: float
    rid: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    backend: Backend | None = None
    status: int = 200
    t_first: float | None = None
    t_last: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    chunks: int = 0
    outcome: str = "ok"
    span: Any = None
    closed: bool = False


class Gateway:
    """The state behind the routes: tenants, limiter, router, in-flight count, drain flag."""

    def __init__(self, config: GatewayConfig, limiter: Any = None, tracer_provider: Any = None) -> None:
        from opentelemetry import trace

        self.config = config
        self.tenants = {hashlib.sha256(t.api_key.encode()).hexdigest(): t for t in config.tenants}
        self.limiter = limiter if limiter is not None else make_limiter(config.redis_url)
        self.router = Router([Backend(b["name"], b["url"].rstrip("/"), list(b["models"])) for b in config.backends],
                             failures=config.breaker_failures, cooldown_s=config.breaker_cooldown_s)
        self.metrics = GatewayMetrics()
        self.tracer = (tracer_provider or trace.NoOpTracerProvider()).get_tracer("inference-gateway")
        self.inflight = 0
        self.draining = False
        self.client: httpx.AsyncClient | None = None
        self._lock = threading.Lock()
        for b in self.router.backends:
            self.metrics.backend_up.labels(b.name).set(1)
            self.metrics.backend_inflight.labels(b.name).set(0)
            for kind in ("connect", "status", "midstream"):
                self.metrics.backend_failures.labels(b.name, kind)

    # -- admission -------------------------------------------------------------------------------
    def tenant_for(self, authorization: str | None) -> Tenant | None:
        if not authorization or not authorization.lower().startswith("bearer "):
            return None
        key = authorization[7:].strip()
        return self.tenants.get(hashlib.sha256(key.encode()).hexdigest())

    async def admit(self, authorization: str | None, model: str) -> Flight:
        """Decide whether a request may go upstream; return its :class:`Flight` (counted in flight).

        Order matters: a draining gateway answers 503 (code ``draining``, Retry-After 5) before
        anything else; then authentication, 401 (``invalid_api_key``) for a missing or unknown
        key; then the tenant's token bucket, 429 (``rate_limit_exceeded``, Retry-After from the
        bucket); then admission control, 429 (``overloaded``, Retry-After 1) when ``inflight`` is
        already ``config.max_inflight``. Each refusal counts ``metrics.rejected{tenant, reason}``.
        A limiter that errors (Redis down) lets the request through: availability over strictness.
        """
        # TODO(5): draining -> GatewayError(503, ..., "draining", "server_error", retry_after=5); tenant_for(...) is None -> 401 "invalid_api_key"; await self.limiter.acquire(tenant) (except Exception: log and allow) -> 429 "rate_limit_exceeded" type "rate_limit_error" with its retry_after; under self._lock: inflight >= max_inflight -> 429 "overloaded", else inflight += 1; count rejections; return Flight(tenant, model, time.perf_counter()) (medium, ~20 min)
        raise NotImplementedError("TODO(5)")

    async def finish(self, f: Flight) -> None:
        """Account a finished request once: in-flight counts, metrics, metering, span, log line."""
        if f.closed:
            return
        f.closed = True
        with self._lock:
            self.inflight -= 1
        self.metrics.inflight.set(self.inflight)
        if f.backend is not None:
            f.backend.inflight -= 1
            self.metrics.backend_inflight.labels(f.backend.name).set(f.backend.inflight)
        end = time.perf_counter()
        m = self.metrics
        m.requests.labels(f.tenant.name, f.model, str(f.status)).inc()
        m.duration.labels(f.model).observe(end - f.t0)
        if f.t_first is not None:
            m.ttft.labels(f.model).observe(f.t_first - f.t0)
            if f.completion_tokens > 1 and f.t_last is not None:
                m.tpot.labels(f.model).observe((f.t_last - f.t_first) / (f.completion_tokens - 1))
        m.tokens.labels(f.tenant.name, f.model, "prompt").inc(f.prompt_tokens)
        m.tokens.labels(f.tenant.name, f.model, "completion").inc(f.completion_tokens)
        if f.status == 200:
            try:
                await self.limiter.record_usage(f.tenant.name, f.prompt_tokens, f.completion_tokens)
            except Exception as exc:  # noqa: BLE001
                log.warning("usage metering failed", extra={"fields": {"error": repr(exc)}})
        trace_id = None
        if f.span is not None:
            f.span.set_attribute("http.response.status_code", f.status)
            f.span.set_attribute("gateway.outcome", f.outcome)
            f.span.set_attribute("gen_ai.usage.input_tokens", f.prompt_tokens)
            f.span.set_attribute("gen_ai.usage.output_tokens", f.completion_tokens)
            if f.t_first is not None:
                f.span.set_attribute("gateway.ttft_ms", round((f.t_first - f.t0) * 1e3, 2))
            ctx = f.span.get_span_context()
            trace_id = f"{ctx.trace_id:032x}" if ctx.is_valid else None
            f.span.end()
        log.info("request", extra={"fields": {
            "request_id": f.rid, "trace_id": trace_id, "tenant": f.tenant.name, "model": f.model,
            "backend": f.backend.name if f.backend else None, "status": f.status, "outcome": f.outcome,
            "ttft_ms": None if f.t_first is None else round((f.t_first - f.t0) * 1e3, 2),
            "latency_ms": round((end - f.t0) * 1e3, 2), "prompt_tokens": f.prompt_tokens,
            "completion_tokens": f.completion_tokens}})

    # -- upstream --------------------------------------------------------------------------------
    async def open_upstream(self, f: Flight, path: str, body: dict[str, Any]) -> httpx.Response:
        """Send the request to the first backend that takes it (fallback in router order):
        connection errors and 5xx count against the backend's breaker and move on; a 429 from
        a busy backend moves on too; any other answer (200, or the backend's 4xx about the
        request itself) is returned, opened as a stream.

        Raises:
            GatewayError: 503 ``no_backend`` when no backend serves the model or all are down,
                or the last backend's 429 when every backend was busy.
        """
        from opentelemetry import trace
        from opentelemetry.propagate import inject

        cands = self.router.candidates(f.model)
        if not cands:
            known = f.model in self.router.models()
            self.metrics.rejected.labels(f.tenant.name, "no_backend").inc()
            if not known:
                raise GatewayError(404, f"The model '{f.model}' does not exist; this gateway serves "
                                   f"{self.router.models()}", "model_not_found", param="model")
            raise GatewayError(503, f"no healthy backend for model '{f.model}'", "no_backend", "server_error",
                               retry_after=self.config.breaker_cooldown_s)
        busy: httpx.Response | None = None
        for b in cands:
            headers = {"content-type": "application/json", "x-request-id": f.rid}
            with self.tracer.start_as_current_span("gateway.upstream", context=trace.set_span_in_context(f.span),
                                                   kind=trace.SpanKind.CLIENT) as up:
                up.set_attribute("gateway.backend", b.name)
                up.set_attribute("server.address", b.url)
                inject(headers)
                try:
                    req = self.client.build_request("POST", b.url + path, json=body, headers=headers)
                    resp = await self.client.send(req, stream=True)
                except httpx.TransportError as exc:
                    up.set_attribute("error.type", type(exc).__name__)
                    self._fail(b, "connect")
                    continue
                up.set_attribute("http.response.status_code", resp.status_code)
            if resp.status_code >= 500:
                await resp.aclose()
                self._fail(b, "status")
                continue
            if resp.status_code == 429:
                busy = resp
                await resp.aread()
                continue
            f.backend = b
            b.inflight += 1
            self.metrics.backend_inflight.labels(b.name).set(b.inflight)
            f.span.set_attribute("gateway.backend", b.name)
            return resp
        if busy is not None:
            raise GatewayError(429, "every backend for this model is busy", "backend_busy", "rate_limit_error",
                               retry_after=float(busy.headers.get("retry-after", 1)))
        raise GatewayError(503, f"every backend for model '{f.model}' failed", "no_backend", "server_error",
                           retry_after=self.config.breaker_cooldown_s)

    def _fail(self, b: Backend, kind: str) -> None:
        self.router.on_failure(b)
        self.metrics.backend_failures.labels(b.name, kind).inc()
        self.metrics.backend_up.labels(b.name).set(0 if time.monotonic() < b.open_until else 1)

    def _ok(self, b: Backend) -> None:
        self.router.on_success(b)
        self.metrics.backend_up.labels(b.name).set(1 if b.healthy else 0)

    async def relay(self, f: Flight, resp: httpx.Response, want_usage: bool) -> AsyncIterator[str]:
        """Forward the backend's SSE stream to the client, event by event, and meter it.

        Every ``data: {...}`` line goes out as one SSE event (``data: ...`` + blank line). Chunks
        with text count ``f.chunks`` and set ``f.t_first`` (first) and ``f.t_last``; the usage
        chunk (the gateway always asks for one) fills ``f.prompt_tokens`` and
        ``f.completion_tokens`` and goes to the client only if ``want_usage``. The backend's
        ``data: [DONE]`` ends the loop; the gateway then sends its own ``data: [DONE]``.

        If the backend dies mid-stream (``httpx.TransportError``, or the stream ends without
        ``[DONE]``): count the failure against the backend (``self._fail(b, "midstream")``), set
        ``f.status = 502`` and ``f.outcome = "backend_died"``, send one error event,
        ``data: {"error": {"message": ..., "type": "server_error", "code": "backend_failed"}}``,
        then ``data: [DONE]``: the client gets a clean end, never a hung or truncated connection.
        Whatever happens (the client leaving included), close ``resp`` and :meth:`finish` ``f``.
        """
        # TODO(6): try: async for line in resp.aiter_lines(): skip lines not starting with "data: "; "[DONE]" -> done=True, break; json.loads; a "usage" -> record tokens (yield it only if want_usage and skip otherwise); text in choices[].text or choices[].delta.content -> chunks/t_first/t_last; yield line + "\n\n". After the loop: done -> self._ok(backend) and yield "data: [DONE]\n\n"; else treat as mid-stream death. except httpx.TransportError: the same death path (error event + [DONE]). finally: await resp.aclose(); await self.finish(f) (hard, ~35 min)
        raise NotImplementedError("TODO(6)")

    async def probe(self) -> None:
        """Health-check every backend once (``GET <root>/healthz``)."""
        async def one(b: Backend) -> None:
            root = b.url.removesuffix("/v1")
            try:
                r = await self.client.get(root + "/healthz", timeout=2.0)
                b.healthy = r.status_code == 200
            except httpx.HTTPError:
                b.healthy = False
            self.metrics.backend_up.labels(b.name).set(
                1 if b.healthy and time.monotonic() >= b.open_until else 0)

        await asyncio.gather(*(one(b) for b in self.router.backends))


def create_gateway(config: GatewayConfig, *, limiter: Any = None, tracer_provider: Any = None) -> FastAPI:
    """The gateway's FastAPI app (``app.state.gateway`` is its :class:`Gateway`)."""
    gw = Gateway(config, limiter, tracer_provider)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        limits = httpx.Limits(max_connections=config.max_inflight + 16, max_keepalive_connections=64)
        gw.client = httpx.AsyncClient(timeout=httpx.Timeout(config.upstream_timeout_s, connect=2.0), limits=limits)
        await gw.probe()

        async def health_loop() -> None:
            while True:
                await asyncio.sleep(config.health_interval_s)
                with contextlib.suppress(Exception):
                    await gw.probe()

        task = asyncio.create_task(health_loop())
        try:
            yield
        finally:
            task.cancel()
            await gw.client.aclose()
            await gw.limiter.close()

    app = FastAPI(title="LLM inference gateway", lifespan=lifespan)
    app.state.gateway = gw

    async def proxy(request: Request, path: str) -> Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return GatewayError(400, "the request body is not valid JSON").response()
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return GatewayError(400, "the request needs a 'model' string", param="model").response()
        try:
            f = await gw.admit(request.headers.get("authorization"), body["model"])
        except GatewayError as exc:
            return exc.response()
        from opentelemetry import trace

        f.span = gw.tracer.start_span("gateway.request", kind=trace.SpanKind.SERVER, attributes={
            "gateway.tenant": f.tenant.name, "gen_ai.request.model": f.model, "http.route": path,
            "gateway.request_id": f.rid, "gateway.stream": bool(body.get("stream"))})
        stream = bool(body.get("stream"))
        want_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        upstream_body = dict(body)
        if stream:
            upstream_body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        try:
            resp = await gw.open_upstream(f, path, upstream_body)
        except GatewayError as exc:
            f.status, f.outcome = exc.status, exc.code or "error"
            await gw.finish(f)
            return exc.response()
        if resp.status_code != 200:           # the backend refused the request itself (400, 404): pass it on
            content = await resp.aread()
            await resp.aclose()
            f.status, f.outcome = resp.status_code, "upstream_error"
            await gw.finish(f)
            return Response(content, status_code=resp.status_code, media_type="application/json")
        if stream:
            return StreamingResponse(gw.relay(f, resp, want_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                                              "x-request-id": f.rid})
        try:
            content = await resp.aread()
            data = json.loads(content)
            usage = data.get("usage") or {}
            f.prompt_tokens = int(usage.get("prompt_tokens", 0))
            f.completion_tokens = int(usage.get("completion_tokens", 0))
            f.t_first = f.t_last = time.perf_counter()
            gw._ok(f.backend)
            return Response(content, status_code=200, media_type="application/json", headers={"x-request-id": f.rid})
        except (httpx.TransportError, json.JSONDecodeError):
            gw._fail(f.backend, "midstream")
            f.status, f.outcome = 502, "backend_died"
            return GatewayError(502, f"the backend '{f.backend.name}' failed while answering", "backend_failed",
                                "server_error").response()
        finally:
            await resp.aclose()
            await gw.finish(f)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await proxy(request, "/chat/completions")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await proxy(request, "/completions")

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        if gw.tenant_for(request.headers.get("authorization")) is None:
            return GatewayError(401, "Incorrect API key provided.", "invalid_api_key").response()
        return JSONResponse({"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "gateway",
             "backends": [b.name for b in gw.router.backends if m in b.models]} for m in gw.router.models()]})

    @app.get("/v1/usage")
    async def usage(request: Request) -> Response:
        tenant = gw.tenant_for(request.headers.get("authorization"))
        if tenant is None:
            return GatewayError(401, "Incorrect API key provided.", "invalid_api_key").response()
        return JSONResponse({"tenant": tenant.name, **await gw.limiter.usage(tenant.name)})

    @app.get("/healthz")
    async def healthz() -> Response:
        now = time.monotonic()
        return JSONResponse({"status": "draining" if gw.draining else "ok", "inflight": gw.inflight,
                             "limiter": gw.limiter.kind, "backends": [
                                 {"name": b.name, "healthy": b.healthy, "breaker_open": now < b.open_until,
                                  "inflight": b.inflight, "models": b.models} for b in gw.router.backends]},
                            status_code=503 if gw.draining else 200)

    @app.get("/metrics")
    async def metrics() -> Response:
        gw.metrics.draining.set(1 if gw.draining else 0)
        return Response(gw.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return app


# ---------------------------------------------------------------------------------------------
# 6. Serving, with graceful drain on SIGTERM
# ---------------------------------------------------------------------------------------------


class GatewayServer(uvicorn.Server):
    """uvicorn, except that the first SIGTERM/SIGINT starts a drain instead of a shutdown:
    the gateway answers new requests 503 while the admitted ones finish, and the server
    exits when none is left (or after ``drain_timeout_s``). A second signal exits at once."""

    def __init__(self, config: Any, gateway: Gateway) -> None:
        super().__init__(config)
        self.gateway = gateway
        self.drain_thread: threading.Thread | None = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        # TODO(7): a second signal (already draining) -> super().handle_exit (uvicorn's shutdown); else set gateway.draining = True and start a daemon thread running self.drain() (medium, ~10 min)
        raise NotImplementedError("TODO(7)")

    def drain(self) -> None:
        """Wait until nothing is in flight (or the drain timeout), then let uvicorn shut down."""
        deadline = time.monotonic() + self.gateway.config.drain_timeout_s
        while self.gateway.inflight > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        log.info("drain finished", extra={"fields": {"inflight_left": self.gateway.inflight}})
        self.should_exit = True


def _bound_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


@contextlib.contextmanager
def serve_gateway_in_thread(config: GatewayConfig, *, limiter: Any = None, tracer_provider: Any = None,
                            host: str = "127.0.0.1", api_key: str | None = None) -> Iterator[Endpoint]:
    """The gateway on a free loopback port in a background thread; yields an ``Endpoint``
    (``api_key`` defaults to the first tenant's, so ``.client()`` is an authenticated
    ``openai.OpenAI``; ``.app`` is the FastAPI app)."""


    app = create_gateway(config, limiter=limiter, tracer_provider=tracer_provider)
    sock = _bound_socket(host, 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="gateway")
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError("the gateway did not start")
        time.sleep(0.02)
    ep = Endpoint(base_url=f"http://{host}:{sock.getsockname()[1]}/v1", model=config.backends[0]["models"][0],
                  api_key=api_key or config.tenants[0].api_key)
    ep.app = app
    try:
        yield ep
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def serve_forever(config: GatewayConfig, host: str, port: int, *, trace: str | None = None) -> int:
    """Serve in the main thread (signals work): the CLI and the container entry point."""


    tracer_provider = None
    if trace:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

        tracer_provider = TracerProvider(resource=Resource.create({"service.name": "inference-gateway"}))
        if trace == "console":
            exporter = ConsoleSpanExporter()
        else:  # an OTLP/HTTP endpoint such as http://otel-collector:4318/v1/traces
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            exporter = OTLPSpanExporter(endpoint=trace)
        tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    setup_json_logging()
    app = create_gateway(config, tracer_provider=tracer_provider)
    sock = _bound_socket(host, port)
    sock.listen(2048)     # connections that arrive before uvicorn starts wait in the backlog
    server = GatewayServer(uvicorn.Config(app, log_level="warning", lifespan="on",
                                                    timeout_graceful_shutdown=5), app.state.gateway)
    print(json.dumps({"event": "listening", "url": f"http://{host}:{sock.getsockname()[1]}/v1",
                      "limiter": app.state.gateway.limiter.kind}), flush=True)
    server.run(sockets=[sock])
    if tracer_provider is not None:
        tracer_provider.shutdown()
    return 0


# ---------------------------------------------------------------------------------------------
# 7. Benchmark: TTFT, TPOT, throughput, $/M tokens
# ---------------------------------------------------------------------------------------------


def cost_per_million_tokens(price_per_hour: float, tokens_per_s: float) -> float:
    """Dollars per million generated tokens for a machine rented at ``price_per_hour`` that
    sustains ``tokens_per_s``: ``price_per_hour / (tokens_per_s * 3600) * 1e6``.

    Raises:
        ValueError: a negative or non-finite price, or a throughput that is not > 0.
    """
    # TODO(8): validate (price >= 0 and finite, tokens_per_s > 0 and finite), then the formula (easy, ~5 min)
    raise NotImplementedError("TODO(8)")


def _p9() -> Any:
    from labkit import load_lab

    return load_lab("phase-09-inference-optimization/lab-03-continuous-batching-server")


async def load_test(base_url: str, model: str, prompts: Sequence[str], *, concurrency: int, max_tokens: int,
                    api_key: str | None = None) -> tuple[list[Any], float]:
    """Phase 9's closed-loop load test (its ``_one_request`` client, streamed completions with
    ``ignore_eos``), with an ``Authorization`` header so it can go through the gateway."""
    p9 = _p9()
    gate = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=120, limits=limits, headers=headers) as client:
        t0 = time.perf_counter()

        async def go(prompt: str) -> Any:
            async with gate:
                body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
                        "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
                return await p9._one_request(client, base_url.rstrip("/") + "/completions", body, t0)

        results = await asyncio.gather(*(go(p) for p in prompts))
    return list(results), time.perf_counter() - t0


def tpot_ms(results: Sequence[Any]) -> float:
    """Median over requests of (last chunk - first chunk) / (completion tokens - 1), in ms."""
    xs = sorted((r.chunk_times[-1] - r.t_first) / (r.completion_tokens - 1) * 1e3 for r in results
                if r.status == 200 and r.error is None and r.t_first is not None and r.completion_tokens > 1)
    return xs[len(xs) // 2] if xs else float("nan")


@contextlib.contextmanager
def spawn(cmd: list[str], ready_prefix: str = '{"event": "listening"', timeout: float = 120.0
          ) -> Iterator[tuple[subprocess.Popen, dict]]:
    """Start a server process that prints a JSON ``listening`` line; yield (process, that line)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        deadline = time.monotonic() + timeout
        info = None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                if proc.poll() is not None:
                    raise RuntimeError(f"{cmd} exited with {proc.returncode} before listening")
                continue
            if line.startswith(ready_prefix):
                info = json.loads(line)
                break
        if info is None:
            raise RuntimeError(f"{cmd} did not start within {timeout} s")
        yield proc, info
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def backend_cmd(model: str = "main", quantize: str = "none", max_batch_size: int = 16) -> list[str]:
    return [sys.executable, str(HERE / "gw_backend.py"), "--model", model, "--quantize", quantize, "--port", "0",
            "--max-batch-size", str(max_batch_size)]


def gateway_cmd(config_path: Path) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--serve", "--config", str(config_path), "--port", "0"]


STORY_STARTS = ["Once upon a time", "One day, a little girl named Lily", "Tom had a red ball.",
                "The sun was hot and", "There was a big dog", "Mom said,", "In the park, the kids",
                "A small cat saw a bird"]


def benchmark(backend_url: str, model: str, concurrencies: Sequence[int], n_requests: int, max_tokens: int,
              price_per_hour: float, out: Path) -> list[dict[str, Any]]:
    """Direct-to-backend vs through-the-gateway at each concurrency, on this machine: the
    backend at ``backend_url`` (its own process), one gateway process (in-process limiter, a
    tenant with a large bucket), clients here. Returns one row per (path, concurrency):
    Phase 9's ``summarize`` metrics plus ``tpot_ms``, ``wall_s`` and ``usd_per_m_tokens``."""
    p9 = _p9()
    rows = []
    cfg = {"tenants": [{"name": "bench", "api_key": "sk-bench", "rate_per_s": 1e6, "burst": 1_000_000}],
           "backends": [{"name": "cpu-0", "url": backend_url, "models": [model]}], "max_inflight": 256}
    cfg_path = out / "bench-gateway.json"
    cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
    with spawn(gateway_cmd(cfg_path)) as (_, ginfo):
        prompts = [STORY_STARTS[i % len(STORY_STARTS)] for i in range(n_requests)]
        for url, key in ((backend_url, None), (ginfo["url"], "sk-bench")):   # warm-up both paths
            asyncio.run(load_test(url, model, prompts[:2], concurrency=2, max_tokens=4, api_key=key))
        for c in concurrencies:
            for path, url, key in (("direct", backend_url, None), ("gateway", ginfo["url"], "sk-bench")):
                results, wall = asyncio.run(load_test(url, model, prompts, concurrency=c, max_tokens=max_tokens,
                                                      api_key=key))
                s = p9.summarize(results, wall)
                rows.append({"path": path, "concurrency": c, **s, "tpot_ms": tpot_ms(results), "wall_s": wall,
                             "usd_per_m_tokens": cost_per_million_tokens(price_per_hour, s["tok_s"])
                             if s["tok_s"] > 0 else float("nan")})
    return rows


# ---------------------------------------------------------------------------------------------
# 8. Self-test
# ---------------------------------------------------------------------------------------------


def _stream(client: httpx.Client, url: str, key: str, body: dict) -> tuple[int, str, list[dict]]:
    """One streamed request: (status, text, parsed events)."""
    events, text = [], ""
    with client.stream("POST", url, json=body, headers={"Authorization": f"Bearer {key}"}) as r:
        if r.status_code != 200:
            r.read()
            return r.status_code, r.text, []
        for line in r.iter_lines():
            if line.startswith("data: "):
                d = line[6:]
                events.append({"done": True} if d == "[DONE]" else json.loads(d))
                for ch in events[-1].get("choices", []):
                    text += ch.get("text") or (ch.get("delta") or {}).get("content") or ""
    return 200, text, events


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", action="store_true", help="run the gateway (needs --config)")
    parser.add_argument("--config", type=Path, default=HERE / "deploy" / "gateway.json")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--trace", default=os.environ.get("GATEWAY_TRACE"),
                        help="'console' or an OTLP/HTTP traces URL (e.g. http://otel-collector:4318/v1/traces)")
    parser.add_argument("--bench", action="store_true", help="small mode: the README's benchmark (~3-4 min)")
    parser.add_argument("--full", action="store_true", help="GPU scale: more requests and concurrency")
    parser.add_argument("--price-per-hour", type=float, default=0.10,
                        help="stated machine price for $/M tokens (default: $0.10/h, a 2-vCPU cloud VM)")
    parser.add_argument("--backend-url", help="benchmark an already running OpenAI-compatible backend (e.g. "
                        "vLLM at http://localhost:8000/v1) instead of starting the CPU one; skips the feature checks")
    parser.add_argument("--model", default="curriculum-main", help="the model name to request with --backend-url")
    args = parser.parse_args(argv)
    if args.serve:
        return serve_forever(GatewayConfig.from_json(args.config), args.host, args.port, trace=args.trace)

    from labkit import seed_everything

    seed_everything(0)
    out = HERE / "outputs"
    out.mkdir(exist_ok=True)
    failures: list[str] = []
    t_all = time.perf_counter()
    from gw_selftest import feature_checks  # the feature walk-through, in its own module

    conc = (1, 16, 64, 128) if args.full else ((1, 4, 16) if args.bench else (1, 8))
    n_req = 512 if args.full else (32 if args.bench else 8)
    max_tokens = 128 if args.full else (48 if args.bench else 16)
    batch = 128 if args.full else 16
    if args.backend_url:
        rows = benchmark(args.backend_url, args.model, conc, n_req, max_tokens, args.price_per_hour, out)
    else:
        with spawn(backend_cmd(max_batch_size=batch)) as (_, binfo):
            failures += feature_checks(sys.modules[__name__], out, binfo["url"])
            rows = benchmark(binfo["url"], binfo["model"], conc, n_req, max_tokens, args.price_per_hour, out)
    print(f"\n[benchmark] {n_req} streamed completions x {max_tokens} tokens (ignore_eos), model {args.model}, "
          f"{args.backend_url or f'1 CPU backend process (batch {batch})'}; price ${args.price_per_hour:.2f}/h")
    print(f"{'path':<8} {'conc':>4} {'tok/s':>7} {'TTFT p50':>9} {'TTFT p99':>9} {'TPOT p50':>9} {'$/M tok':>8} "
          f"{'ok':>4} {'fail':>4}")
    for r in rows:
        print(f"{r['path']:<8} {r['concurrency']:>4} {r['tok_s']:>7.0f} {r['ttft_p50']:>7.1f}ms {r['ttft_p99']:>7.1f}ms "
              f"{r['tpot_ms']:>7.2f}ms {r['usd_per_m_tokens']:>8.3f} {r['ok']:>4} {r['failed']:>4}")
        if r["failed"]:
            failures.append(f"{r['failed']} failed requests ({r['path']}, concurrency {r['concurrency']})")
    (out / "benchmark.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    if args.bench or args.full:
        from gw_selftest import plot_benchmark

        print(f"figure: {plot_benchmark(rows, HERE / 'figures' / 'benchmark.png')}")
    print(f"\nself-test wall time: {time.perf_counter() - t_all:.1f} s")
    for f in failures:
        print(f"SANITY CHECK FAILED: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    raise SystemExit(main())

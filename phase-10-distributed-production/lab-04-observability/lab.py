# Generated from solution.py by `make labs` (labkit/labgen.py). Fill in the TODOs.
"""Lab 10.4: observability for an LLM server: traces, metrics, a canary eval, drift, an alert that fires.

Lab 9.3's continuous-batching server (imported by path, extended by subclassing and wrapping,
never copied) gets what a production inference service is run with:

- **OpenTelemetry traces** (``opentelemetry-sdk``): one ``llm.request`` span per request with
  three children in time order, ``llm.queue`` (arrival -> admitted into the batch),
  ``llm.prefill`` (the batched prefill forward that produced its first token) and ``llm.decode``
  (first token -> finished). Console exporter from the CLI; tests read an in-memory exporter.
- **Prometheus metrics** (``prometheus_client``) on ``GET /metrics``: TTFT and TPOT histograms,
  end-to-end latency, prompt and generated token counters, requests by finish reason, queue
  depth, running batch size, KV-cache utilization and padding, forward time by phase, HTTP
  responses and errors by status code.
- **A canary eval job**: a fixed set of next-word items cut from TinyStories' held-out
  validation text, sent to the LIVE server over HTTP; its accuracy is exported as the gauge
  ``llm_canary_score``. With it, a **drift check** of the responses against a reference window
  recorded from the released model: response length (two-sample Kolmogorov-Smirnov) and
  response embedding (hashed character n-grams, kernel MMD with a permutation test),
  exported as ``llm_drift_p_value{feature}``.
- **Alert rules** (``alerts.yml``) and a **Grafana dashboard** (``dashboard.json``), tested with
  Prometheus' own rule engine (``promtool test rules``) over series built from scraped values:
  the canary alert fires when a worse model (perturbed weights) is swapped in and stays quiet
  for the good one.

Run:  python solution.py                 (self-test: load burst, canary good vs bad, drift, promtool; ~30 s)
      python solution.py --serve --port 8000 --trace console   (a server with /metrics and traces)
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import math
import re
import shutil
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from labkit import load_lab, seed_everything

HERE = Path(__file__).resolve().parent
p9 = load_lab("phase-09-inference-optimization/lab-03-continuous-batching-server")  # Engine, create_app, run_load

__all__ = [
    "CanaryItem", "CanaryJob", "DriftResult", "ObservedEngine", "RequestTiming", "ServerMetrics",
    "build_canary_set", "create_observed_app", "drift_report", "emit_request_spans", "grafana_dashboard",
    "hashed_embedding", "ks_two_sample", "kv_cache_usage", "mmd_permutation_test", "perturb_model",
    "promtool_test_file", "request_latencies", "run_promtool", "scrape", "serve_observed",
]

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
TPOT_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


# ---------------------------------------------------------------------------------------------
# 1. Metrics
# ---------------------------------------------------------------------------------------------


class ServerMetrics:
    """Every Prometheus series the server exports, in its own ``CollectorRegistry`` (so two
    servers in one process, or one per test, never share counters).

    Names follow Prometheus conventions (base units: seconds, ratios in [0, 1]; counters end in
    ``_total`` in the exposition). ``llm_`` prefix, vLLM-like meanings:

    - ``llm_time_to_first_token_seconds`` (histogram): arrival -> first generated token;
    - ``llm_time_per_output_token_seconds`` (histogram): (finish - first token) / (tokens - 1);
    - ``llm_e2e_request_latency_seconds`` (histogram): arrival -> finish;
    - ``llm_prompt_tokens_total``, ``llm_generation_tokens_total`` (counters): tokens in / out;
    - ``llm_requests_total{finish_reason}`` (counter): stop, length, cancelled, error;
    - ``llm_queue_depth``, ``llm_running_batch_size`` (gauges): waiting and running requests;
    - ``llm_kv_cache_utilization`` (gauge): allocated cache cells / (max_batch_size * context);
    - ``llm_kv_cache_padding_ratio`` (gauge): share of allocated cells that are left padding;
    - ``llm_forward_seconds{phase}`` (histogram): one model forward, ``prefill`` or ``decode``;
    - ``llm_http_responses_total{code}``, ``llm_http_errors_total{code}`` (counters): every
      ``/v1`` response by status code, and the ones >= 400.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.ttft = Histogram("llm_time_to_first_token_seconds", "Arrival to first generated token.",
                              buckets=TTFT_BUCKETS, registry=r)
        self.tpot = Histogram("llm_time_per_output_token_seconds", "Mean time per output token after the first.",
                              buckets=TPOT_BUCKETS, registry=r)
        self.e2e = Histogram("llm_e2e_request_latency_seconds", "Arrival to finish.", buckets=E2E_BUCKETS,
                             registry=r)
        self.prompt_tokens = Counter("llm_prompt_tokens", "Prompt tokens of finished requests.", registry=r)
        self.generation_tokens = Counter("llm_generation_tokens", "Generated tokens of finished requests.",
                                         registry=r)
        self.requests = Counter("llm_requests", "Finished requests by finish reason.", ["finish_reason"], registry=r)
        self.queue_depth = Gauge("llm_queue_depth", "Requests waiting for a batch slot.", registry=r)
        self.running = Gauge("llm_running_batch_size", "Requests in the running batch.", registry=r)
        self.kv_util = Gauge("llm_kv_cache_utilization", "Allocated KV-cache cells / capacity.", registry=r)
        self.kv_padding = Gauge("llm_kv_cache_padding_ratio", "Share of allocated KV-cache cells that are padding.",
                                registry=r)
        self.forward = Histogram("llm_forward_seconds", "One batched model forward.", ["phase"],
                                 buckets=TPOT_BUCKETS, registry=r)
        self.http_responses = Counter("llm_http_responses", "HTTP responses on /v1 by status code.", ["code"],
                                      registry=r)
        self.http_errors = Counter("llm_http_errors", "HTTP error responses (>= 400) on /v1 by status code.",
                                   ["code"], registry=r)
        for reason in ("stop", "length", "cancelled", "error"):
            self.requests.labels(reason)        # export zeros, so rate() works from the first scrape
        for phase in ("prefill", "decode"):
            self.forward.labels(phase)

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)


def request_latencies(t_arrival: float, t_first: float | None, t_end: float,
                      completion_tokens: int) -> tuple[float | None, float | None, float]:
    """(TTFT, TPOT, end-to-end latency) in seconds for one finished request.

    TTFT = first token - arrival (queueing + prefill: what a user waits before anything shows);
    TPOT = (end - first token) / (completion_tokens - 1): the mean gap between the tokens AFTER
    the first (the decode speed a streaming user sees), ``None`` with fewer than 2 tokens;
    E2E = end - arrival. A request that never got a token (cancelled while waiting) has TTFT
    ``None`` as well.

    Args:
        t_arrival, t_first, t_end: times in seconds on one clock (``t_first`` may be ``None``).
        completion_tokens: tokens generated (>= 0).

    Raises:
        ValueError: times out of order (first before arrival, end before first or arrival),
            negative or non-integer ``completion_tokens``, or a first token with 0 tokens.
    """
    if isinstance(completion_tokens, bool) or not isinstance(completion_tokens, int) or completion_tokens < 0:
        raise ValueError(f"completion_tokens must be an int >= 0, got {completion_tokens!r}")
    if t_end < t_arrival:
        raise ValueError(f"the request ended ({t_end}) before it arrived ({t_arrival})")
    if t_first is not None and not t_arrival <= t_first <= t_end:
        raise ValueError(f"first token at {t_first} is outside [arrival {t_arrival}, end {t_end}]")
    # TODO(1): e2e = end - arrival; no first token -> (None, None, e2e); ttft = first - arrival; tpot = (end - first) / (tokens - 1) only when tokens >= 2 (the first token's wait is TTFT, not TPOT) (easy, ~10 min)
    raise NotImplementedError("TODO(1)")


def kv_cache_usage(cache: Any, max_batch_size: int, context_length: int) -> tuple[float, float]:
    """(utilization, padding ratio) of lab 9.3's left-padded :class:`BatchKVCache`.

    The cache holds one (B, n_kv_head, T, d_head) tensor per layer; its ``mask`` (B, T) is 1 on
    real tokens. Capacity = ``max_batch_size * context_length`` token cells (what the server
    would have to allocate up front, as vLLM does). Utilization = allocated cells B*T / capacity;
    padding ratio = padded cells / allocated cells (the waste PagedAttention removes). An empty
    cache (``None`` or no rows) is (0.0, 0.0).

    Raises:
        ValueError: ``max_batch_size`` or ``context_length`` < 1.
    """
    if max_batch_size < 1 or context_length < 1:
        raise ValueError(f"max_batch_size and context_length must be >= 1, got {max_batch_size}, {context_length}")
    # TODO(2): None / mask None / 0 rows -> (0, 0); B, T = mask.shape; real = mask.sum(); utilization = B*T / (max_batch_size*context_length); padding = (B*T - real) / (B*T) (easy, ~10 min)
    raise NotImplementedError("TODO(2)")


# ---------------------------------------------------------------------------------------------
# 2. Traces
# ---------------------------------------------------------------------------------------------


@dataclass
class RequestTiming:
    """What the engine recorded about one request, times in ns since the epoch (OpenTelemetry's
    clock). ``admitted_ns`` / ``prefill_end_ns`` are the start / end of the batched prefill
    forward that admitted it (``None`` if it never left the queue); ``prefill_batch`` is that
    forward's batch size."""

    request_id: str
    arrival_ns: int
    end_ns: int
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    admitted_ns: int | None = None
    prefill_end_ns: int | None = None
    prefill_batch: int = 0
    max_tokens: int = 0
    temperature: float = 0.0


def emit_request_spans(tracer: Any, timing: RequestTiming) -> None:
    """Record one request as the documented span tree, with explicit start and end times:

    ``llm.request`` [arrival, end] (attributes ``llm.request_id``, ``llm.prompt_tokens``,
    ``llm.completion_tokens``, ``llm.finish_reason``, ``llm.max_tokens``, ``llm.temperature``;
    status ERROR when ``finish_reason`` is ``error``) with children

    - ``llm.queue`` [arrival, admitted] (or [arrival, end] when never admitted);
    - ``llm.prefill`` [admitted, prefill_end] (attribute ``llm.batch_size``), only if admitted;
    - ``llm.decode`` [prefill_end, end] (attribute ``llm.completion_tokens``), only if admitted.

    The spans are created after the fact (the engine only knows the times once a step ends),
    which OpenTelemetry allows: ``tracer.start_span(name, context=..., start_time=ns)`` then
    ``span.end(end_time=ns)``; a child is parented with ``trace.set_span_in_context(root)``.
    """
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode

    # TODO(3): root = tracer.start_span("llm.request", start_time=arrival_ns, attributes={...}); ctx = trace.set_span_in_context(root); queue child ends at admitted_ns (or end_ns); if admitted: prefill [admitted, prefill_end] with llm.batch_size and decode [prefill_end, end] with llm.completion_tokens; set ERROR status on "error"; end root at end_ns (medium, ~20 min)
    raise NotImplementedError("TODO(3)")


# ---------------------------------------------------------------------------------------------
# 3. The instrumented engine and app
# ---------------------------------------------------------------------------------------------


class _TimedModel:
    """Wraps the model so every forward is timed and classified: a forward into an EMPTY cache is
    a prefill, one into a non-empty cache a decode step. Everything else is the model's own
    (``config``, ``generate``, ...). ``eval()`` returns the wrapper so the engine keeps it."""

    def __init__(self, model: torch.nn.Module, on_forward: Any) -> None:
        self._model, self._on_forward = model, on_forward

    def __call__(self, idx: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        cache = kwargs.get("past_key_values")
        phase = "prefill" if cache is None or cache.get_seq_length() == 0 else "decode"
        t0 = time.time_ns()
        out = self._model(idx, *args, **kwargs)
        self._on_forward(phase, t0, time.time_ns(), int(idx.shape[0]))
        return out

    def eval(self) -> _TimedModel:
        self._model.eval()
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


class ObservedEngine(p9.Engine):
    """Lab 9.3's :class:`Engine`, observed from outside its scheduler: the model is wrapped (every
    forward timed as prefill or decode), :meth:`submit` registers the request, and after each
    :meth:`step` the engine looks at its requests: the ones that got their first token in this
    step were admitted by this step's prefill, the ones with a ``finish_reason`` are done and
    recorded (metrics + spans). Gauges (queue depth, running batch, KV cache) are refreshed after
    every step and every submit.

    Args:
        model, tokenizer, **kwargs: as :class:`Engine`.
        metrics: a :class:`ServerMetrics` (a fresh one by default).
        tracer_provider: an OpenTelemetry ``TracerProvider`` (none: no spans, metrics only).
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, metrics: ServerMetrics | None = None,
                 tracer_provider: Any = None, **kwargs: Any) -> None:
        self._live: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._last_prefill: tuple[int, int, int] | None = None
        super().__init__(_TimedModel(model, self._on_forward), tokenizer, **kwargs)
        self.metrics = metrics if metrics is not None else ServerMetrics()
        self.tracer = tracer_provider.get_tracer("llm-server.lab10-4") if tracer_provider is not None else None
        # SeqState times are time.perf_counter(); spans need epoch ns
        self._clock_offset_ns = time.time_ns() - time.perf_counter_ns()
        self.timings: list[RequestTiming] = []   # every finished request, for tests and the drift window

    def _on_forward(self, phase: str, t0_ns: int, t1_ns: int, batch: int) -> None:
        self.metrics.forward.labels(phase).observe((t1_ns - t0_ns) / 1e9)
        if phase == "prefill":
            self._last_prefill = (t0_ns, t1_ns, batch)

    def _ns(self, perf_s: float) -> int:
        return int(perf_s * 1e9) + self._clock_offset_ns

    def submit(self, prompt_ids: Sequence[int], params: Any) -> Any:
        seq = super().submit(prompt_ids, params)
        with self._lock:
            self._live[seq.rid] = {"seq": seq, "admitted": None}
        self.metrics.queue_depth.set(len(self.waiting))
        return seq

    def step(self) -> int:
        self._last_prefill = None
        produced = super().step()
        self._observe(time.time_ns())
        return produced

    async def run(self) -> None:
        try:
            await super().run()
        finally:  # a failed engine finishes its requests outside step(): record them too
            self._observe(time.time_ns())

    def _observe(self, now_ns: int) -> None:
        """After a step: note admissions, record finished requests, refresh the gauges."""
        with self._lock:
            entries = list(self._live.values())
        # TODO(4): for each live entry: if not yet admitted and seq.t_first_token is set, it was admitted by this step's prefill (self._last_prefill = (start, end, batch)); if seq.finish_reason is set: build a RequestTiming (arrival = self._ns(seq.t_arrival)), call self._record(timing, seq), drop it from _live (under the lock); then set queue_depth, running batch size and the two KV gauges (kv_cache_usage) (medium, ~25 min)
        raise NotImplementedError("TODO(4)")

    def _record(self, timing: RequestTiming, seq: Any) -> None:
        """One finished request into the metrics (given) and, with a tracer, into spans."""
        m = self.metrics
        first = self._ns(seq.t_first_token) if seq.t_first_token is not None else None
        ttft, tpot, e2e = request_latencies(timing.arrival_ns / 1e9, None if first is None else
                                            min(max(first, timing.arrival_ns), timing.end_ns) / 1e9,
                                            timing.end_ns / 1e9, timing.completion_tokens)
        m.requests.labels(timing.finish_reason).inc()
        m.prompt_tokens.inc(timing.prompt_tokens)
        m.generation_tokens.inc(timing.completion_tokens)
        m.e2e.observe(e2e)
        if ttft is not None:
            m.ttft.observe(ttft)
        if tpot is not None:
            m.tpot.observe(tpot)
        self.timings.append(timing)
        if self.tracer is not None:
            emit_request_spans(self.tracer, timing)


class _StatusCounter:
    """Pure ASGI middleware: counts the status code of every ``/v1`` response (streamed ones too:
    the code is in the first message the app sends)."""

    def __init__(self, app: Any, metrics: ServerMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1"):
            await self.app(scope, receive, send)
            return

        async def counted_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                code = str(message["status"])
                self.metrics.http_responses.labels(code).inc()
                if message["status"] >= 400:
                    self.metrics.http_errors.labels(code).inc()
            await send(message)

        await self.app(scope, receive, counted_send)


def create_observed_app(engine: ObservedEngine, model_name: str = "curriculum-main") -> Any:
    """Lab 9.3's app over ``engine`` plus ``GET /metrics`` (Prometheus text format) and the
    status-code middleware. Routes, validation and error shapes are lab 9.3's, unchanged."""
    from starlette.responses import Response

    if not isinstance(engine, ObservedEngine):
        raise TypeError(f"create_observed_app needs an ObservedEngine, got {type(engine).__name__}")
    app = p9.create_app(engine, model_name)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(engine.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(_StatusCounter, metrics=engine.metrics)
    return app


@contextlib.contextmanager
def serve_observed(engine: ObservedEngine, *, model_name: str = "curriculum-main", host: str = "127.0.0.1",
                   startup_timeout: float = 60.0) -> Iterator[Any]:
    """uvicorn over :func:`create_observed_app` in a background thread on a free port (``labkit.llm_server.serve_app``
    over our app, as lab 9.3's ``serve_in_thread`` does over its own); yields a
    ``labkit.llm_server.Endpoint``."""
    from labkit.llm_server import serve_app

    with serve_app(create_observed_app(engine, model_name), model_name=model_name, host=host,
                   startup_timeout=startup_timeout, thread_name="obs-server") as ep:
        yield ep


def scrape(url: str, timeout: float = 30.0) -> dict[str, float]:
    """GET a Prometheus endpoint and flatten it: ``{'name{label="v",...}': value}`` (labels sorted,
    the way PromQL prints a series), via ``prometheus_client``'s own text parser."""
    import httpx

    resp = httpx.get(url, timeout=timeout)
    resp.raise_for_status()
    return parse_exposition(resp.text)


def parse_exposition(text: str) -> dict[str, float]:
    """Prometheus text format -> ``{series: value}`` (see :func:`scrape`)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = float(s.value)
    return out


# ---------------------------------------------------------------------------------------------
# 4. The canary eval job and the drift check
# ---------------------------------------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z']+")


@dataclass
class CanaryItem:
    """One next-word item: the story text up to a word boundary, and the word that follows."""

    prompt: str
    expected: str


def build_canary_set(text: str, n_items: int = 48, min_words: int = 12, max_words: int = 40,
                     seed: int = 0) -> list[CanaryItem]:
    """A fixed canary set from held-out stories: for ``n_items`` stories (chosen with ``seed``),
    a prompt of the first k words (k in [min_words, max_words]) and the (k+1)-th word as the
    answer (letters and apostrophes only, lowercased). Deterministic for one text and seed.

    Raises:
        ValueError: ``n_items`` < 1, or not enough stories of ``max_words + 1`` words.
    """
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    stories = [s.strip() for s in text.split("\n\n") if len(s.split()) > max_words]
    if len(stories) < n_items:
        raise ValueError(f"only {len(stories)} stories have more than {max_words} words; need {n_items}")
    rng = np.random.default_rng(seed)
    items = []
    for i in rng.choice(len(stories), size=n_items, replace=False):
        words = stories[i].split()
        for k in rng.permutation(np.arange(min_words, max_words + 1)):
            nxt = _WORD.findall(words[k])
            if nxt and words[k - 1][-1:].isalpha():   # the answer is a word, not after punctuation
                items.append(CanaryItem(" ".join(words[:k]), nxt[0].lower()))
                break
    return items


def first_word(text: str) -> str:
    """The first word of a response, lowercased ('' if none)."""
    m = _WORD.search(text)
    return m.group(0).lower() if m else ""


def hashed_embedding(texts: Sequence[str], dim: int = 256, n: int = 3) -> np.ndarray:
    """Bag of hashed character ``n``-grams (crc32 mod ``dim``), L2-normalised: (len(texts), dim)
    float64. A cheap, dependency-free text embedding for drift checks (a sentence encoder such as
    all-MiniLM-L6-v2 is the stronger choice; see the README)."""
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    out = np.zeros((len(texts), dim))
    for i, t in enumerate(texts):
        s = f" {t.lower()} "
        for j in range(max(1, len(s) - n + 1)):
            out[i, zlib.crc32(s[j:j + n].encode("utf-8")) % dim] += 1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms == 0, 1.0, norms)


def ks_two_sample(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov test: (D, asymptotic p-value).

    D = max over t of |F_x(t) - F_y(t)|, the largest gap between the two empirical CDFs
    (evaluate both at every observed value: ``np.searchsorted(sorted, values, side='right')``).
    p = Q_KS(sqrt(n m / (n + m)) * D), Kolmogorov's limiting distribution
    (``scipy.special.kolmogorov``). D equals ``scipy.stats.ks_2samp``'s statistic exactly; the
    p-value is the large-sample limit (scipy's ``method='asymp'`` uses the finite-n distribution
    ``kstwo`` at n = round(nm/(n+m)), a little smaller for small samples). Reference: Smirnov (1939).

    Raises:
        ValueError: an empty sample or a NaN/inf value.
    """
    from scipy.special import kolmogorov

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size == 0 or y.size == 0:
        raise ValueError("ks_two_sample needs two non-empty samples")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("ks_two_sample got NaN or infinite values")
    # TODO(5): sort both; at every value of the pooled sample, cdf_x = searchsorted(xs, v, 'right') / n (same for y); D = max |cdf_x - cdf_y|; en = n*m/(n+m); p = kolmogorov(sqrt(en) * D) clipped to [0, 1] (medium, ~15 min)
    raise NotImplementedError("TODO(5)")


def mmd_permutation_test(x: np.ndarray, y: np.ndarray, n_permutations: int = 200, bandwidth: float | None = None,
                         seed: int = 0) -> tuple[float, float]:
    """Kernel two-sample test (Gretton et al., JMLR 2012): (MMD^2, permutation p-value).

    Gaussian kernel k(a, b) = exp(-||a - b||^2 / (2 bandwidth^2)); bandwidth by the median
    heuristic (median pairwise distance of the pooled sample) when ``None``. The biased estimate
    MMD^2 = mean K_xx + mean K_yy - 2 mean K_xy. p-value: shuffle the pooled rows
    ``n_permutations`` times (``np.random.default_rng(seed)``), recompute MMD^2 on each split,
    p = (1 + #{permuted >= observed}) / (1 + n_permutations).

    Args:
        x: (n, d) and y: (m, d) float arrays, n, m >= 2.

    Raises:
        ValueError: not 2-D, different widths, fewer than 2 rows, NaN/inf, ``n_permutations`` < 1.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be (n, d) and (m, d), got {x.shape} and {y.shape}")
    if len(x) < 2 or len(y) < 2:
        raise ValueError("each sample needs at least 2 rows")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("mmd_permutation_test got NaN or infinite values")
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
    pooled = np.concatenate([x, y])
    sq = np.sum(pooled ** 2, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * pooled @ pooled.T, 0.0)   # pairwise squared distances
    if bandwidth is None:
        off = np.sqrt(d2[np.triu_indices(len(pooled), k=1)])
        bandwidth = float(np.median(off)) or 1.0
    # TODO(6): K = exp(-d2 / (2 bw^2)) once; mmd2(idx_x, idx_y) = K[ix][:, ix].mean() + K[iy][:, iy].mean() - 2 K[ix][:, iy].mean(); observed on (0..n-1, n..); then n_permutations rng.permutation splits; p = (1 + count(perm >= observed)) / (1 + n_permutations) (medium, ~20 min)
    raise NotImplementedError("TODO(6)")


@dataclass
class DriftResult:
    """One feature's two-sample test: the statistic (KS D or MMD^2) and its p-value."""

    feature: str
    test: str
    statistic: float
    p_value: float


def drift_report(reference: dict[str, list[str]], current: dict[str, list[str]], *, n_permutations: int = 200,
                 seed: int = 0) -> list[DriftResult]:
    """Compare a current window of traffic with a reference window (each ``{"prompts": [...],
    "responses": [...]}``): prompt length and response length in words (KS), response embedding
    (hashed n-grams, MMD permutation test).

    Raises:
        ValueError: a window without prompts or responses.
    """
    for name, w in (("reference", reference), ("current", current)):
        if not w.get("prompts") or not w.get("responses"):
            raise ValueError(f"the {name} window needs non-empty 'prompts' and 'responses'")
    out = []
    for feature, key in (("prompt_length", "prompts"), ("response_length", "responses")):
        d, p = ks_two_sample([len(t.split()) for t in reference[key]], [len(t.split()) for t in current[key]])
        out.append(DriftResult(feature, "ks", d, p))
    m, p = mmd_permutation_test(hashed_embedding(reference["responses"]), hashed_embedding(current["responses"]),
                                n_permutations=n_permutations, seed=seed)
    out.append(DriftResult("response_embedding", "mmd", m, p))
    return out


DRIFT_PROMPTS = [
    "Once upon a time", "One day, a little girl named Lily", "Tom had a red ball.", "The sun was hot and",
    "There was a big dog", "Mom said,", "In the park, the kids", "A small cat saw a bird",
    "Ben and Mia went to the sea.", "The old man had a garden", "Sara liked to draw", "It was a rainy day",
]


class CanaryJob:
    """The canary: runs the fixed eval set and a sampled generation window against a live server
    and exports what it finds in its own registry (a real deployment scrapes the job, or the job
    pushes to a Pushgateway):

    - ``llm_canary_score``: next-word accuracy on the canary set (greedy, first word of a
      ``max_tokens``-token completion == the held-out next word);
    - ``llm_canary_items``: the number of items scored;
    - ``llm_drift_statistic{feature}``, ``llm_drift_p_value{feature}``: :func:`drift_report` of
      this run's window against ``reference`` (the window recorded from the released model), if given;
    - ``llm_canary_last_run_timestamp_seconds``.
    """

    def __init__(self, items: Sequence[CanaryItem], judge: torch.nn.Module, tokenizer: Any, *,
                 reference: dict[str, list[str]] | None = None, max_tokens: int = 8, drift_samples: int = 2,
                 drift_max_tokens: int = 24) -> None:
        if not items:
            raise ValueError("the canary set is empty")
        self.items, self.reference = list(items), reference
        self.judge, self.tokenizer = judge.eval(), tokenizer
        self.max_tokens, self.drift_samples, self.drift_max_tokens = max_tokens, drift_samples, drift_max_tokens
        r = self.registry = CollectorRegistry()
        self.score = Gauge("llm_canary_score", "Mean per-token probability of the live model's canary answers "
                           "under the released model (exp of minus the mean NLL).", registry=r)
        self.accuracy = Gauge("llm_canary_next_word_accuracy", "First answer word == the held-out next word.",
                              registry=r)
        self.n_items = Gauge("llm_canary_items", "Canary items scored in the last run.", registry=r)
        self.drift_stat = Gauge("llm_drift_statistic", "Two-sample test statistic vs the reference window.",
                                ["feature"], registry=r)
        self.drift_p = Gauge("llm_drift_p_value", "Two-sample test p-value vs the reference window.", ["feature"],
                             registry=r)
        self.last_run = Gauge("llm_canary_last_run_timestamp_seconds", "When the canary last ran.", registry=r)

    async def _complete(self, client: Any, url: str, model: str, prompt: str, max_tokens: int,
                        temperature: float, seed: int | None = None) -> str:
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature}
        if seed is not None:
            body["seed"] = seed
        resp = await client.post(url, json=body)
        resp.raise_for_status()
        return resp.json()["choices"][0]["text"]

    async def _run(self, base_url: str, model: str, seed: int) -> tuple[list[str], dict[str, list[str]]]:
        import httpx

        url = base_url.rstrip("/") + "/completions"
        async with httpx.AsyncClient(timeout=120) as client:
            # TODO(7): asyncio.gather one greedy request (temperature 0, self.max_tokens) per canary item (all at once: the server batches them); then the drift window: for each DRIFT_PROMPTS prompt, self.drift_samples requests at temperature 1.0 with seeds seed*1000 + k, max_tokens self.drift_max_tokens; return (answers, {"prompts": [...], "responses": [...]}) (medium, ~15 min)
            raise NotImplementedError("TODO(7)")

    def run(self, base_url: str, model: str, *, seed: int = 1) -> dict[str, Any]:
        """One canary run against ``base_url``; sets the gauges and returns
        ``{"score", "answers", "window", "drift"}``."""
        answers, window = asyncio.run(self._run(base_url, model, seed))
        accuracy = sum(first_word(a) == it.expected for a, it in zip(answers, self.items)) / len(self.items)
        nll = judge_nll(self.judge, self.tokenizer, [it.prompt for it in self.items], answers)
        score = math.exp(-nll)
        self.score.set(score)
        self.accuracy.set(accuracy)
        self.n_items.set(len(self.items))
        drift = drift_report(self.reference, window) if self.reference is not None else []
        for d in drift:
            self.drift_stat.labels(d.feature).set(d.statistic)
            self.drift_p.labels(d.feature).set(d.p_value)
        self.last_run.set(time.time())
        return {"score": score, "nll": nll, "accuracy": accuracy, "answers": answers, "window": window,
                "drift": drift}

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


@torch.inference_mode()
def judge_nll(judge: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], answers: Sequence[str]) -> float:
    """Mean negative log-likelihood (nats per token) of ``answers`` given their ``prompts`` under
    the ``judge`` model (the released model): the canary's score is exp(-this), the geometric
    mean probability the released model gives the live model's answers. Each sequence is
    BOS + encode(prompt) + encode(answer), scored in one unpadded forward; answers with no
    tokens are skipped.

    Raises:
        ValueError: different lengths, or no answer tokens at all.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    total, count = 0.0, 0
    block = int(judge.config.block_size)
    for prompt, answer in zip(prompts, answers):
        p_ids = [0, *tokenizer.encode(prompt, add_special_tokens=False)]
        a_ids = tokenizer.encode(answer, add_special_tokens=False)
        if not a_ids:
            continue
        ids = (p_ids + a_ids)[-block:]
        logits, _ = judge(torch.tensor([ids]))
        logp = torch.log_softmax(logits[0, :-1].float(), dim=-1)
        tgt = torch.tensor(ids[1:])
        nll = -logp[torch.arange(len(tgt)), tgt][-len(a_ids):]
        total += float(nll.sum())
        count += int(nll.numel())
    if count == 0:
        raise ValueError("no answer tokens to score")
    return total / count


def perturb_model(model: torch.nn.Module, scale: float, seed: int = 0) -> torch.nn.Module:
    """A deep copy of ``model`` with Gaussian noise of ``scale`` times each weight tensor's own
    standard deviation added to every floating-point parameter with more than one element: the
    "bad deploy" (a corrupted or wrongly converted checkpoint) the canary must catch.

    Raises:
        ValueError: a negative or non-finite ``scale``.
    """
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"scale must be a finite number >= 0, got {scale}")
    bad = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in bad.parameters():
            if p.is_floating_point() and p.numel() > 1:
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (scale * float(p.std())))
    return bad.eval()


# ---------------------------------------------------------------------------------------------
# 5. Alert rules under Prometheus' own rule engine, and the dashboard
# ---------------------------------------------------------------------------------------------

ALERTS_FILE = HERE / "alerts.yml"
DASHBOARD_FILE = HERE / "dashboard.json"


def promtool_test_file(rule_file: Path, series: dict[str, list[float]], checks: list[dict[str, Any]],
                       interval: str = "1m") -> dict[str, Any]:
    """A ``promtool test rules`` document: one test group whose ``input_series`` are ``series``
    ({series: one value per ``interval``}) and whose ``alert_rule_test`` entries are ``checks``
    (``{"eval_time": "10m", "alertname": ..., "exp_alerts": [{"exp_labels": {...}}, ...]}``;
    an empty ``exp_alerts`` asserts the alert is NOT firing then)."""
    def values(vs: list[float]) -> str:
        return " ".join(repr(float(v)) for v in vs)

    return {"rule_files": [str(rule_file)], "evaluation_interval": interval,
            "tests": [{"interval": interval,
                       "input_series": [{"series": s, "values": values(v)} for s, v in series.items()],
                       "alert_rule_test": checks}]}


def run_promtool(test_doc: dict[str, Any], workdir: Path) -> tuple[int, str]:
    """Write ``test_doc`` as YAML under ``workdir`` and run ``promtool test rules`` on it;
    (exit code, output). Raises FileNotFoundError when promtool is not installed."""
    import yaml

    exe = shutil.which("promtool")
    if exe is None:
        raise FileNotFoundError("promtool not found: install Prometheus (Debian/Ubuntu: apt-get install prometheus)")
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "alerts_test.yml"
    path.write_text(yaml.safe_dump(test_doc, sort_keys=False), encoding="utf-8")
    proc = subprocess.run([exe, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout + proc.stderr


def rule_annotations(alertname: str, rule_file: Path = ALERTS_FILE) -> dict[str, str]:
    """The annotations of one alert rule in ``rule_file`` (promtool compares them too)."""
    import yaml

    doc = yaml.safe_load(rule_file.read_text(encoding="utf-8"))
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alertname:
                return dict(rule.get("annotations", {}))
    raise KeyError(f"no alert named {alertname!r} in {rule_file}")


def grafana_dashboard() -> dict[str, Any]:
    """The Grafana dashboard (``dashboard.json``, schema 39, a ``prometheus`` datasource variable):
    latency, throughput, batch/queue/KV, errors, canary and drift panels."""
    panels_spec = [
        ("TTFT p50 / p99 (s)", ["histogram_quantile(0.5, sum by (le) (rate(llm_time_to_first_token_seconds_bucket[5m])))",
                                "histogram_quantile(0.99, sum by (le) (rate(llm_time_to_first_token_seconds_bucket[5m])))"]),
        ("TPOT p50 / p99 (s)", ["histogram_quantile(0.5, sum by (le) (rate(llm_time_per_output_token_seconds_bucket[5m])))",
                                "histogram_quantile(0.99, sum by (le) (rate(llm_time_per_output_token_seconds_bucket[5m])))"]),
        ("Tokens / s (in, out)", ["sum(rate(llm_prompt_tokens_total[1m]))", "sum(rate(llm_generation_tokens_total[1m]))"]),
        ("Requests / s by finish reason", ["sum by (finish_reason) (rate(llm_requests_total[1m]))"]),
        ("Queue depth and running batch", ["llm_queue_depth", "llm_running_batch_size"]),
        ("KV cache utilization and padding", ["llm_kv_cache_utilization", "llm_kv_cache_padding_ratio"]),
        ("Forward time p50 by phase (s)",
         ["histogram_quantile(0.5, sum by (le, phase) (rate(llm_forward_seconds_bucket[5m])))"]),
        ("HTTP errors / s by code", ["sum by (code) (rate(llm_http_errors_total[5m]))"]),
        ("Canary score (next-word accuracy)", ["llm_canary_score"]),
        ("Drift p-value by feature", ["llm_drift_p_value"]),
    ]
    panels = []
    for i, (title, exprs) in enumerate(panels_spec):
        panels.append({
            "id": i + 1, "type": "timeseries", "title": title,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "targets": [{"refId": chr(ord("A") + j), "expr": e, "datasource": {"type": "prometheus",
                                                                                 "uid": "${datasource}"}}
                        for j, e in enumerate(exprs)],
            "fieldConfig": {"defaults": {}, "overrides": []}, "options": {"legend": {"displayMode": "list"}},
        })
    return {"title": "LLM server (lab 10.4)", "uid": "llm-lab10-4", "schemaVersion": 39, "version": 1,
            "editable": True, "time": {"from": "now-1h", "to": "now"}, "refresh": "30s", "tags": ["llm"],
            "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus",
                                     "label": "Prometheus"}]},
            "panels": panels}


def metric_names_in(expr: str) -> set[str]:
    """Metric names an expression reads (``llm_*`` identifiers, histogram suffixes kept)."""
    return set(re.findall(r"\bllm_[a-z_]+", expr))


# ---------------------------------------------------------------------------------------------
# 6. Self-test
# ---------------------------------------------------------------------------------------------

CANARY_THRESHOLD = 0.1  # alerts.yml: llm_canary_score < 0.1
BAD_SCALE = 1.0        # noise std as a fraction of each weight tensor's std: the "bad deploy"


def _burst(ep: Any, n: int, max_tokens: int) -> tuple[list[Any], float]:
    prompts = [DRIFT_PROMPTS[i % len(DRIFT_PROMPTS)] for i in range(n)]
    return asyncio.run(p9.run_load(ep.base_url, ep.model, prompts, concurrency=n, max_tokens=max_tokens))


def _span_tree(spans: Sequence[Any]) -> list[str]:
    by_parent: dict[Any, list[Any]] = {}
    for s in spans:
        by_parent.setdefault(s.parent.span_id if s.parent else None, []).append(s)
    lines = []
    for root in by_parent.get(None, [])[:1]:
        lines.append(f"{root.name} {(root.end_time - root.start_time) / 1e6:.1f} ms "
                     f"{ {k: v for k, v in root.attributes.items() if k != 'llm.request_id'} }")
        for c in sorted(by_parent.get(root.context.span_id, []), key=lambda s: s.start_time):
            lines.append(f"  {c.name:<12} {(c.end_time - c.start_time) / 1e6:7.1f} ms  {dict(c.attributes)}")
    return lines


def _plot(spans: Sequence[Any], scores: dict[str, float], threshold: float, path: Path) -> Path:
    """Left: the burst's traces as a waterfall (queue / prefill / decode per request); right: the
    canary score of each model against the alert threshold."""
    import matplotlib.pyplot as plt

    from labkit.plots import savefig

    roots = sorted((s for s in spans if s.name == "llm.request"), key=lambda s: s.start_time)
    t0 = min(s.start_time for s in roots)
    colors = {"llm.queue": "#bbbbbb", "llm.prefill": "#d62728", "llm.decode": "#1f77b4"}
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [2, 1]})
    for row, root in enumerate(roots):
        for c in spans:
            if c.parent is not None and c.parent.span_id == root.context.span_id:
                ax.barh(row, (c.end_time - c.start_time) / 1e6, left=(c.start_time - t0) / 1e6,
                        color=colors[c.name], label=c.name.removeprefix("llm.") if row == 0 else None)
    ax.set_xlabel("ms since the first request arrived")
    ax.set_ylabel("request")
    ax.set_title("one burst as OpenTelemetry spans")
    ax.legend(loc="lower right")
    names = list(scores)
    ax2.bar(names, [scores[n] for n in names], color=["#2ca02c", "#d62728"][:len(names)])
    ax2.axhline(threshold, color="k", linestyle="--", label=f"alert: score < {threshold}")
    ax2.set_ylabel("llm_canary_score")
    ax2.set_title("canary: released vs perturbed model")
    ax2.legend()
    fig.tight_layout()
    return savefig(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", action="store_true", help="serve on --host/--port instead of the self-test")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--trace", choices=["none", "console", "otlp"], default="none",
                        help="span exporter for --serve (otlp needs opentelemetry-exporter-otlp and a collector)")
    parser.add_argument("--full", action="store_true", help="a bigger canary set and burst")
    parser.add_argument("--write-dashboard", action="store_true", help="(re)write dashboard.json and exit")
    args = parser.parse_args(argv)
    if args.write_dashboard:
        DASHBOARD_FILE.write_text(json.dumps(grafana_dashboard(), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {DASHBOARD_FILE}")
        return 0
    seed_everything(0)
    torch.set_num_threads(1)
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    model, tokenizer = p9.load_served_model("main")
    if args.serve:
        import uvicorn
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        provider = TracerProvider()
        if args.trace == "console":
            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        elif args.trace == "otlp":  # an OpenTelemetry Collector / Jaeger / Tempo on localhost:4317
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        engine = ObservedEngine(model, tokenizer, tracer_provider=provider)
        print(f"serving 'curriculum-main' at http://{args.host}:{args.port}/v1 (metrics: /metrics)", flush=True)
        uvicorn.run(create_observed_app(engine), host=args.host, port=args.port, log_level="info")
        return 0

    from labkit import read_text

    failures: list[str] = []
    t_start = time.perf_counter()
    out = HERE / "outputs"
    out.mkdir(exist_ok=True)
    n_burst, burst_tokens = (64, 32) if args.full else (16, 12)
    items = build_canary_set(read_text("tinystories", "valid_prefix_794k.txt"), n_items=96 if args.full else 48)

    # 1. load burst against the good model: /metrics and traces
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    engine = ObservedEngine(model, tokenizer, tracer_provider=provider, max_batch_size=16)
    with serve_observed(engine) as ep:
        results, wall = _burst(ep, n_burst, burst_tokens)
        spans = exporter.get_finished_spans()      # the burst's spans (the canary below adds its own)
        import httpx
        bad_codes = [httpx.post(ep.base_url + "/completions", json=b, timeout=30).status_code for b in
                     ({"model": ep.model, "prompt": "Hi", "max_tokens": -1},
                      {"model": "nope", "prompt": "Hi", "max_tokens": 4})]
        metrics_url = ep.base_url.removesuffix("/v1") + "/metrics"
        m = scrape(metrics_url)
        # the canary against the good model: it is also the reference window
        good_job = CanaryJob(items, model, tokenizer)
        good = good_job.run(ep.base_url, ep.model, seed=1)
        reference = good["window"]
        job = CanaryJob(items, model, tokenizer, reference=reference)
        good = job.run(ep.base_url, ep.model, seed=2)
        good_scrape = parse_exposition(job.exposition().decode())
    expected_tokens = n_burst * burst_tokens
    print(f"[burst] {n_burst} streamed requests x {burst_tokens} tokens in {wall:.2f} s; then 2 bad requests -> "
          f"{bad_codes}")
    print(f"{'series':<58} {'scraped':>9} {'expected':>9}")
    checks = [("llm_requests_total{finish_reason=\"length\"}", n_burst),
              ("llm_generation_tokens_total", expected_tokens),
              ("llm_time_to_first_token_seconds_count", n_burst),
              ("llm_time_per_output_token_seconds_count", n_burst),
              ("llm_http_responses_total{code=\"200\"}", n_burst),
              ("llm_http_errors_total{code=\"400\"}", 1), ("llm_http_errors_total{code=\"404\"}", 1),
              ("llm_queue_depth", 0), ("llm_running_batch_size", 0)]
    for name, want in checks:
        got = m.get(name, float("nan"))
        print(f"{name:<58} {got:>9.0f} {want:>9}")
        if got != want:
            failures.append(f"{name} = {got}, expected {want}")
    ttft_sum, ttft_n = m["llm_time_to_first_token_seconds_sum"], m["llm_time_to_first_token_seconds_count"]
    tpot_sum, tpot_n = m["llm_time_per_output_token_seconds_sum"], m["llm_time_per_output_token_seconds_count"]
    print(f"mean TTFT {1e3 * ttft_sum / ttft_n:.1f} ms, mean TPOT {1e3 * tpot_sum / tpot_n:.1f} ms "
          f"(server side; prompt tokens counted: {m['llm_prompt_tokens_total']:.0f})")
    roots = [s for s in spans if s.name == "llm.request"]
    print(f"[traces] burst: {len(spans)} spans, {len(roots)} request roots; the first request's tree:")
    roots.sort(key=lambda s: s.start_time)
    if len(roots) != n_burst or len(spans) != 4 * n_burst:
        failures.append(f"expected {n_burst} request spans with 3 children each, got {len(spans)} spans")
    for line in _span_tree([s for s in spans if s.context.trace_id == roots[0].context.trace_id]):
        print("  " + line)

    # 2. swap in a worse model (perturbed weights) behind the same name; run the same canary
    bad_engine = ObservedEngine(perturb_model(model, BAD_SCALE, seed=0), tokenizer, max_batch_size=16)
    with serve_observed(bad_engine) as ep:
        bad = job.run(ep.base_url, ep.model, seed=2)
        bad_scrape = parse_exposition(job.exposition().decode())
    print(f"\n[canary] {len(items)} next-word items from TinyStories validation text; drift window "
          f"{len(reference['responses'])} sampled responses vs the release window")
    print(f"{'model':<22} {'canary score':>12} {'judge NLL':>9} {'next-word acc':>13} {'resp-len KS p':>14} {'embed MMD p':>12} {'mean resp words':>16}")
    for name, r in (("good (release)", good), (f"bad (noise {BAD_SCALE} std)", bad)):
        d = {x.feature: x for x in r["drift"]}
        words = np.mean([len(t.split()) for t in r["window"]["responses"]])
        print(f"{name:<22} {r['score']:>12.3f} {r['nll']:>9.3f} {r['accuracy']:>13.3f} {d['response_length'].p_value:>14.4f} "
              f"{d['response_embedding'].p_value:>12.4f} {words:>16.1f}")
    if not bad["score"] < CANARY_THRESHOLD < good["score"]:
        failures.append(f"the canary threshold {CANARY_THRESHOLD} does not separate the good model from the perturbed one")

    # 3. the alert rules under Prometheus' rule engine: good for 15 min, then the bad model
    series = {}
    for name in ("llm_canary_score", 'llm_drift_p_value{feature="response_embedding"}'):
        series[name.replace("{", '{job="canary",') if "{" in name else name + '{job="canary"}'] = \
            [good_scrape[name]] * 15 + [bad_scrape[name]] * 15
    alerts = [
        {"eval_time": "14m", "alertname": "LLMCanaryScoreLow", "exp_alerts": []},
        {"eval_time": "18m", "alertname": "LLMCanaryScoreLow", "exp_alerts": []},     # pending: 'for: 5m'
        {"eval_time": "25m", "alertname": "LLMCanaryScoreLow",
         "exp_alerts": [{"exp_labels": {"severity": "page", "job": "canary"},
                         "exp_annotations": rule_annotations("LLMCanaryScoreLow")}]},
    ]
    if shutil.which("promtool"):
        rc, text = run_promtool(promtool_test_file(ALERTS_FILE, series, alerts), out / "promtool")
        print(f"\n[promtool test rules] canary {good_scrape['llm_canary_score']:.3f} for 15 min, then "
              f"{bad_scrape['llm_canary_score']:.3f}: quiet at 14m, pending at 18m, firing at 25m -> "
              f"{'PASS' if rc == 0 else 'FAIL'}")
        if rc != 0:
            failures.append(f"promtool test rules failed:\n{text}")
    else:
        print("\n[promtool] not installed (apt-get install prometheus): rule test skipped")
    print(f"figure: {_plot(spans, {'good': good['score'], 'bad': bad['score']}, CANARY_THRESHOLD, HERE / 'figures' / 'traces_and_canary.png')}")
    if json.loads(DASHBOARD_FILE.read_text(encoding="utf-8")) != grafana_dashboard():
        failures.append("dashboard.json is out of date: python solution.py --write-dashboard")
    print(f"\nself-test wall time {time.perf_counter() - t_start:.1f} s")
    for f in failures:
        print(f"SANITY CHECK FAILED: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The CPU backend the gateway routes to: Phase 10 lab 4's observed server, composed by path.

Phase 9 lab 3's continuous-batching engine (batched prefill + decode over a left-padded KV
cache, SSE streaming, a bounded queue answering 429) wrapped by Phase 10 lab 4's
``ObservedEngine`` (``/metrics``, spans), serving the curriculum model, optionally quantized
with Phase 9 lab 2's ``quantize_model`` (``int8`` per-channel weight-only, ``int4-rtn``, or
``awq``: group-wise INT4 with activation-aware scales calibrated on TinyStories training ids).

On a GPU the same gateway routes to vLLM instead (``deploy/docker-compose.gpu.yml``): vLLM
brings paged attention, prefix caching and AWQ kernels; this backend is the CPU stand-in with
the same OpenAI-compatible surface.

Run:  python gw_backend.py --model main --quantize none --port 9001
      prints one JSON line ``{"event": "listening", "url": ..., "model": ...}`` when ready.
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
from typing import Any

from labkit import load_lab

QUANTIZE = ("none", "int8", "int4-rtn", "awq")


def p10() -> Any:
    """Phase 10 lab 4 (observability), which imports Phase 9 lab 3 (the engine) by path."""
    return load_lab("phase-10-distributed-production/lab-04-observability")


def build_engine(model: str = "main", quantize: str = "none", *, max_batch_size: int = 16,
                 max_waiting: int = 64, tracer_provider: Any = None) -> tuple[Any, str]:
    """(an ``ObservedEngine`` over the curriculum model, its served name).

    The served name is ``curriculum-<model>`` plus ``-<quantize>`` for a quantized model, so the
    gateway can route a request for the quantized variant to it by the ``model`` field.

    Raises:
        ValueError: an unknown ``quantize`` method.
    """
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize must be one of {QUANTIZE}, got {quantize!r}")
    obs = p10()
    net, tokenizer = obs.p9.load_served_model(model)
    if quantize != "none":
        q = load_lab("phase-09-inference-optimization/lab-02-quantization")
        calib = None
        if quantize == "awq":
            _, train, _ = q.load_curriculum()
            calib = q.calibration_ids(train, 8, 128)
        net = q.quantize_model(net, quantize, calib).eval()
    name = f"curriculum-{model}" + ("" if quantize == "none" else f"-{quantize}")
    engine = obs.ObservedEngine(net, tokenizer, max_batch_size=max_batch_size, max_waiting=max_waiting,
                                tracer_provider=tracer_provider)
    return engine, name


def main(argv: list[str] | None = None) -> int:
    import torch
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="main", help="'main' or 'draft' (the curriculum models)")
    ap.add_argument("--quantize", default="none", choices=QUANTIZE)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9001, help="0 = a free port (printed when ready)")
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--max-waiting", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    engine, name = build_engine(args.model, args.quantize, max_batch_size=args.max_batch_size,
                                max_waiting=args.max_waiting)
    app = p10().create_observed_app(engine, name)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)     # connections that arrive before uvicorn starts wait in the backlog
    host = "127.0.0.1" if args.host == "0.0.0.0" else args.host
    print(json.dumps({"event": "listening", "url": f"http://{host}:{sock.getsockname()[1]}/v1", "model": name}),
          flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=10)).run(
        sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())

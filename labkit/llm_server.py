"""A small, real OpenAI-compatible chat server over a Hugging Face causal LM.

Phases 6, 7 and 8 need "an LLM endpoint": a self-instruct generator, a RAG answerer, an agent, a
judge. In production that is a hosted API or a vLLM server reached through the ``openai`` client.
Here it is this module: FastAPI + uvicorn on 127.0.0.1 over any ``save_pretrained`` folder (by
default the curriculum's own model from Phase 5), so every lab talks to it through the real
``openai`` client exactly as it would talk to a hosted model, and a test never needs the network.

Endpoints (the subset of the OpenAI API the labs use):

* ``POST /v1/chat/completions`` - ``messages`` rendered with the tokenizer's chat template;
  ``stream: true`` answers with server-sent events (``data: {chunk}`` lines, then ``data: [DONE]``);
* ``POST /v1/completions`` - a raw ``prompt``, streaming or not;
* ``GET /v1/models`` and ``GET /healthz``.

Parameters: ``model``, ``max_tokens`` (or ``max_completion_tokens``), ``temperature`` (0 = greedy),
``top_p``, ``seed`` (a per-request ``torch.Generator``: the same seed gives the same text),
``stop`` (up to 4 strings, never included in the output), ``stream_options.include_usage``.
Errors use OpenAI's JSON shape ``{"error": {"message", "type", "param", "code"}}``: malformed JSON,
wrong types, ``n > 1``, ``tools`` (this model cannot call tools: describe them in the prompt) and a
prompt + ``max_tokens`` longer than the model's context answer 400; an unknown model answers 404.

This server only needs to be *correct*: it decodes one token at a time per request with the HF
KV cache and interleaves concurrent requests one forward pass at a time. Phase 9 builds the real
continuous-batching engine (and vLLM is the production answer).

Python::

    from labkit.llm_server import serve_in_thread
    with serve_in_thread("main") as ep:          # or "draft", or a path to an HF model folder
        reply = ep.client().chat.completions.create(
            model=ep.model, messages=[{"role": "user", "content": "Tell me a story."}],
            max_tokens=40, temperature=0)

Pytest: the root ``conftest.py`` has a session fixture ``llm_endpoint`` yielding the same object.
Command line: ``python -m labkit.llm_server --model main --port 8000``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool

__all__ = ["Endpoint", "Generation", "HFGenerator", "create_app", "resolve_model", "serve_in_thread"]

MAX_STOP = 4


def resolve_model(model: str | os.PathLike) -> tuple[Path, str]:
    """The HF folder and the served name for ``model``.

    ``"main"`` / ``"draft"`` are the curriculum models (served as ``curriculum-main`` /
    ``curriculum-draft``); anything else is a path to a ``save_pretrained`` folder (or to a
    curriculum-model folder holding ``hf/``), served under the folder's name.

    Raises:
        FileNotFoundError: the path holds no ``config.json``.
    """
    if str(model) in ("main", "draft"):
        from labkit.curriculum import curriculum_model_path

        return curriculum_model_path(str(model)) / "hf", f"curriculum-{model}"
    path = Path(model).expanduser().resolve()
    if (path / "hf" / "config.json").is_file():
        path = path / "hf"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face model folder (no config.json); pass 'main', "
                                "'draft' or a save_pretrained directory")
    name = path.parent.name if path.name == "hf" else path.name
    return path, name


@dataclass
class Generation:
    """One event of a generation: a piece of text, or (last) the finish reason and token counts."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class HFGenerator:
    """Token-by-token decoding of a causal LM with its KV cache; safe to call from many threads.

    Each request has its own cache and its own ``torch.Generator``; a lock serialises the forward
    passes so concurrent requests interleave one token at a time instead of fighting for cores.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path = Path(path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModelForCausalLM.from_pretrained(self.path, dtype=torch.float32).eval()
        cfg = self.model.config
        self.context_length = int(getattr(cfg, "max_position_embeddings", None) or self.tokenizer.model_max_length)
        eos = self.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        for tok in ("<|im_end|>", self.tokenizer.eos_token):
            tid = self.tokenizer.convert_tokens_to_ids(tok) if tok else None
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id and tid not in eos:
                eos.append(tid)
        self.eos_token_ids = eos
        self._lock = threading.Lock()

    # -- prompts ---------------------------------------------------------------------------------
    def _with_bos(self, ids: list[int]) -> list[int]:
        bos = self.tokenizer.bos_token_id
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        return ids

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Prompt ids: the chat template with the assistant generation prompt, then BOS if missing."""
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self._with_bos(self.tokenizer.encode(text, add_special_tokens=False))

    def encode_prompt(self, prompt: str) -> list[int]:
        return self._with_bos(self.tokenizer.encode(prompt, add_special_tokens=False))

    # -- decoding --------------------------------------------------------------------------------
    def stream(self, prompt_ids: list[int], *, max_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
               seed: int | None = None, stop: list[str] | None = None) -> Iterator[Generation]:
        """Yield text pieces as they are decoded, then one event with ``finish_reason`` set.

        ``finish_reason`` is ``"stop"`` (an end-of-sequence token or a stop string) or
        ``"length"`` (``max_tokens`` reached). Stop strings are never part of the text; text is
        held back while it could still be the start of a stop string or of a multi-byte character.
        """
        import torch

        stop = [s for s in (stop or []) if s]
        hold = max((len(s) for s in stop), default=1) - 1
        gen = torch.Generator().manual_seed(seed if seed is not None else int.from_bytes(os.urandom(4), "little"))
        input_ids = torch.tensor([prompt_ids], dtype=torch.long)
        past, out_ids, sent, finish = None, [], 0, "length"
        text = ""
        for _ in range(max_tokens):
            with self._lock, torch.inference_mode():
                out = self.model(input_ids=input_ids, past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits = out.logits[0, -1].float()
            if temperature == 0:
                nxt = int(torch.argmax(logits))
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                if top_p < 1.0:
                    sorted_p, order = torch.sort(probs, descending=True)
                    keep = torch.cumsum(sorted_p, 0) - sorted_p < top_p  # the smallest set reaching top_p
                    probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_p[keep])
                nxt = int(torch.multinomial(probs, 1, generator=gen))
            if nxt in self.eos_token_ids:
                finish = "stop"
                break
            out_ids.append(nxt)
            text = self.tokenizer.decode(out_ids, skip_special_tokens=True)
            cut = min((i for i in (text.find(s, max(0, sent - len(s))) for s in stop) if i >= 0), default=-1)
            if cut >= 0:
                text, finish = text[:cut], "stop"
                break
            ready = len(text) - hold
            while ready > sent and text[ready - 1] == "\ufffd":  # an unfinished multi-byte character
                ready -= 1
            if ready > sent:
                yield Generation(text=text[sent:ready])
                sent = ready
            input_ids = torch.tensor([[nxt]], dtype=torch.long)
        if len(text) > sent:
            yield Generation(text=text[sent:])
        yield Generation(finish_reason=finish, prompt_tokens=len(prompt_ids), completion_tokens=len(out_ids))


# -- the HTTP layer -----------------------------------------------------------------------------------
# (fastapi and pydantic are imported with this module; ``import labkit`` itself never imports it)


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise OpenAIError(400, "only text content parts are supported by this server", "messages")
            parts.append(part["text"])
        return "".join(parts)


class Common(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = Field(default=1, ge=1)
    logprobs: bool | int | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        v = [v] if isinstance(v, str) else v
        if v is not None and len(v) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences are allowed")
        return v


class ChatRequest(Common):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(Common):
    prompt: str | list[str]




class OpenAIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_


def _error_body(status: int, message: str, param: str | None = None, code: str | None = None,
                type_: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def create_app(model: str | os.PathLike = "main", *, model_name: str | None = None,
               generator: HFGenerator | None = None):
    """The FastAPI app serving ``model`` (see :func:`resolve_model`) under ``model_name``."""
    path, default_name = resolve_model(model) if generator is None else (generator.path, generator.path.name)
    name = model_name or default_name
    gen = generator or HFGenerator(path)

    app = FastAPI(title=f"OpenAI-compatible server for {name}")

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError):
        err = exc.errors()[0] if exc.errors() else {"msg": "invalid request", "loc": ()}
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        if err.get("type") == "json_invalid":
            msg, loc = "the request body is not valid JSON", []
        else:
            msg = f"{'.'.join(loc) or 'body'}: {err.get('msg')}"
        return JSONResponse(_error_body(400, msg, ".".join(loc) or None), status_code=400)

    @app.exception_handler(OpenAIError)
    async def _openai_error(_request: Request, exc: OpenAIError):
        return JSONResponse(_error_body(exc.status, exc.message, exc.param, exc.code, exc.type),
                            status_code=exc.status)

    def _check(req: Common, prompt_ids: list[int]) -> int:
        if req.model != name:
            raise OpenAIError(404, f"The model '{req.model}' does not exist; this server serves '{name}'",
                              "model", "model_not_found")
        if req.n != 1:
            raise OpenAIError(400, "n > 1 is not supported by this server", "n")
        if req.tools or req.functions:
            raise OpenAIError(400, "this model cannot call tools; describe the tools in the prompt and parse "
                              "its text instead", "tools")
        if req.logprobs:
            raise OpenAIError(400, "logprobs are not supported by this server", "logprobs")
        if req.response_format and req.response_format.get("type", "text") != "text":
            raise OpenAIError(400, "only response_format {'type': 'text'} is supported", "response_format")
        budget = gen.context_length - len(prompt_ids)
        asked = req.max_completion_tokens or req.max_tokens
        if budget < 1 or (asked is not None and asked > budget):
            raise OpenAIError(400, f"This model's maximum context length is {gen.context_length} tokens; the "
                              f"prompt has {len(prompt_ids)} tokens and {asked or 1} were requested for the "
                              "completion. Shorten the prompt or lower max_tokens.",
                              "messages", "context_length_exceeded")
        return asked if asked is not None else budget

    def _run(req: Common, prompt_ids: list[int], kind: str):
        max_tokens = _check(req, prompt_ids)
        events = gen.stream(prompt_ids, max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                            seed=req.seed, stop=req.stop)
        rid, created = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}", int(time.time())
        obj = "chat.completion" if kind == "chat" else "text_completion"

        def usage(ev: Generation) -> dict[str, int]:
            return {"prompt_tokens": ev.prompt_tokens, "completion_tokens": ev.completion_tokens,
                    "total_tokens": ev.prompt_tokens + ev.completion_tokens}

        if not req.stream:
            pieces, last = [], None
            for ev in events:
                pieces.append(ev.text)
                last = ev
            text = "".join(pieces)
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                       "finish_reason": last.finish_reason} if kind == "chat" else
                      {"index": 0, "text": text, "logprobs": None, "finish_reason": last.finish_reason})
            return {"id": rid, "object": obj, "created": created, "model": name, "choices": [choice],
                    "usage": usage(last)}

        include_usage = bool((req.stream_options or {}).get("include_usage"))

        def chunk(delta: str | None, finish: str | None, *, first: bool = False) -> str:
            if kind == "chat":
                d = {"role": "assistant", "content": ""} if first else ({} if delta is None else {"content": delta})
                choice = {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}
            body = {"id": rid, "object": f"{obj}.chunk" if kind == "chat" else obj, "created": created,
                    "model": name, "choices": [choice]}
            return f"data: {json.dumps(body)}\n\n"

        async def sse():
            if kind == "chat":
                yield chunk(None, None, first=True)
            while True:
                ev = await run_in_threadpool(next, events, None)  # one decode step off the event loop
                if ev is None:
                    break
                if ev.finish_reason is None:
                    yield chunk(ev.text, None)
                    continue
                yield chunk(None, ev.finish_reason)
                if include_usage:
                    body = {"id": rid, "object": f"{obj}.chunk" if kind == "chat" else obj, "created": created,
                            "model": name, "choices": [], "usage": usage(ev)}
                    yield f"data: {json.dumps(body)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest):
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
        prompt_ids = await run_in_threadpool(gen.encode_chat, messages)
        if not req.stream:
            return await run_in_threadpool(_run, req, prompt_ids, "chat")
        return _run(req, prompt_ids, "chat")

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        prompt = req.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise OpenAIError(400, "send one prompt per request to this server", "prompt")
            prompt = prompt[0]
        prompt_ids = gen.encode_prompt(prompt)
        if not req.stream:
            return await run_in_threadpool(_run, req, prompt_ids, "completion")
        return _run(req, prompt_ids, "completion")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "curriculum",
                                            "max_model_len": gen.context_length}]}

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "model": name}

    app.state.generator, app.state.model_name = gen, name
    return app


# -- running it -----------------------------------------------------------------------------------------


@dataclass
class Endpoint:
    """Where a running server listens: ``base_url`` ends in ``/v1`` as the ``openai`` client expects."""

    base_url: str
    model: str
    api_key: str = "not-checked-by-this-server"

    def client(self, **kwargs):
        """An ``openai.OpenAI`` client for this endpoint (``timeout`` 60 s and no retries unless given)."""
        import openai

        kwargs.setdefault("timeout", 60.0)
        kwargs.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=self.base_url, api_key=self.api_key, **kwargs)


@contextlib.contextmanager
def serve_app(app, *, model_name: str, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 120.0,
              lifespan: str = "on", thread_name: str = "asgi-server") -> Iterator[Endpoint]:
    """Run uvicorn over any ASGI ``app`` in a background thread; yield its :class:`Endpoint`; stop it on exit.

    ``port=0`` binds a free port (the socket is bound before uvicorn starts, so there is no race).
    Labs that build their own OpenAI-compatible app (Phase 7's RAG service, Phase 9's continuous-batching
    server, Phase 10's observed server) serve it through this.

    Raises:
        RuntimeError: the server did not start within ``startup_timeout`` seconds.
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan=lifespan, timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name=thread_name)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the {thread_name} did not start (see the log above)")
        time.sleep(0.02)
    try:
        yield Endpoint(base_url=f"http://{host}:{sock.getsockname()[1]}/v1", model=model_name)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


@contextlib.contextmanager
def serve_in_thread(model: str | os.PathLike = "main", *, host: str = "127.0.0.1", port: int = 0,
                    model_name: str | None = None, startup_timeout: float = 120.0) -> Iterator[Endpoint]:
    """Run uvicorn serving ``model`` in a background thread; yield its :class:`Endpoint`; stop it on exit.

    ``port=0`` binds a free port (the socket is bound before uvicorn starts, so there is no race).

    Raises:
        RuntimeError: the server did not start within ``startup_timeout`` seconds.
    """
    app = create_app(model, model_name=model_name)
    with serve_app(app, model_name=app.state.model_name, host=host, port=port, startup_timeout=startup_timeout,
                   lifespan="off", thread_name="LLM server") as ep:
        yield ep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve an HF causal LM behind an OpenAI-compatible API.")
    parser.add_argument("--model", default="main", help="'main', 'draft' or a save_pretrained folder")
    parser.add_argument("--name", default=None, help="the model name clients send (default: derived)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    import uvicorn

    app = create_app(args.model, model_name=args.name)
    print(f"serving {app.state.model_name!r} at http://{args.host}:{args.port}/v1", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Lab 7.4: a tool-using agent written by hand, safe tools, and JSON-schema constrained decoding.

Four pieces, each small enough to read in one sitting:

1. **Tools with declared schemas.** A :class:`Tool` is a name, a description, a pydantic model
   for its arguments (strict, no extra fields) and a function. :class:`ToolRegistry` turns them
   into OpenAI's ``tools=[{"type": "function", "function": {...}}]`` list, validates every call
   against the schema, and turns every failure into an observation the model can read.
   The three tools of the spec: ``search_docs`` (any retriever with ``.search(query, k)``, lab
   7.2's pipeline or the small in-lab :class:`KeywordRetriever`), ``calculator`` (an AST walker
   for arithmetic, never ``eval``) and ``fetch_url`` (http(s) only; private, loopback,
   link-local and metadata addresses refused *after* DNS resolution; the connection is pinned to
   the checked address; size, time and redirect limits). ``final_answer`` ends a run.
2. **The ReAct loop** (Yao et al. 2022, "ReAct: Synergizing Reasoning and Acting in Language
   Models"), in OpenAI's function-calling message format: the assistant message carries
   ``tool_calls`` (``id``, ``function.name``, ``function.arguments`` as a JSON string) and each
   result goes back as ``{"role": "tool", "tool_call_id": ..., "content": ...}``. A model that
   cannot call functions natively writes the same call as JSON in ``content``; malformed,
   non-JSON or schema-violating output is fed back as an error, never a crash. Iteration cap,
   repeated-call detection, and a JSON-lines trace of every model and tool call.
3. **Policies**: :class:`ScriptedPolicy` (a deterministic plan that reads the observations: the
   loop's unit test), :class:`ChatCompletionsPolicy` (any OpenAI-compatible endpoint through the
   real ``openai`` client; native ``tools=`` or tools described in the prompt) and
   :class:`ConstrainedLocalPolicy` (the curriculum model, sampled under the mask below).
4. **Constrained decoding from scratch**: :class:`JsonSchemaMachine` is a character-level
   pushdown automaton for a subset of JSON Schema (objects with fixed property order, strings
   with enum/const/maxLength, bounded integers, booleans, anyOf); :class:`TokenIndex` walks a
   trie of the BPE vocabulary's decoded strings through it to find the tokens that keep the
   output a viable prefix; :class:`JsonSchemaLogitsProcessor` plugs that mask into
   ``transformers``' ``generate``. Every sample then parses and validates, and the length bound
   of the schema guarantees it finishes. Same idea as lm-format-enforcer (character-level
   parser walked over a token trie) and outlines (a regex/FSM compiled ahead of time into a
   token index); see the README for the comparison.

Run: ``python solution.py`` (small mode, about a minute on one CPU core) or ``--full``.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import ipaddress
import json
import math
import operator
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, Union
from urllib.parse import urljoin, urlsplit

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

HERE = Path(__file__).resolve().parent

__all__ = [
    "AGENT_FACTS",
    "AgentResult",
    "AgentTask",
    "CalculatorArgs",
    "ChatCompletionsPolicy",
    "ConstrainedLocalPolicy",
    "FetchPolicy",
    "FetchUrlArgs",
    "FinalAnswerArgs",
    "Hit",
    "JsonSchemaLogitsProcessor",
    "JsonSchemaMachine",
    "KeywordRetriever",
    "ModelOutputError",
    "Retriever",
    "ScriptedPolicy",
    "SearchDocsArgs",
    "TokenIndex",
    "Tool",
    "ToolCall",
    "ToolError",
    "ToolRegistry",
    "Tracer",
    "UnsafeURLError",
    "build_registry",
    "check_url",
    "fetch_url",
    "lab02_retriever",
    "make_tasks",
    "parse_model_output",
    "run_agent",
    "safe_eval",
]


class ToolError(Exception):
    """A tool refused or failed; the message goes back to the model as the observation."""


class UnsafeURLError(ToolError):
    """``fetch_url`` refused a URL (scheme, host, or an address it resolves to)."""


class ModelOutputError(ValueError):
    """The model's output is not a valid action (not JSON, unknown tool, schema violation)."""


# =============================================================================================
# 1. calculator: arithmetic by walking the AST
# =============================================================================================
MAX_EXPR_CHARS = 256
MAX_DEPTH = 32
MAX_INT_BITS = 4096  # ~1233 decimal digits: any bigger integer is refused, never computed
_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARYOPS: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _check_size(x: int | float) -> int | float:
    if isinstance(x, int) and x.bit_length() > MAX_INT_BITS:
        raise ToolError(f"result too large (over {MAX_INT_BITS} bits)")
    if isinstance(x, float) and not math.isfinite(x):
        raise ToolError("result is not a finite number (overflow or inf/nan)")
    return x


def _pow(a: int | float, b: int | float) -> int | float:
    """``a ** b`` after checking the result's size *before* computing it."""
    if isinstance(a, int) and isinstance(b, int) and b > 0 and abs(a) > 1:
        if b * math.log2(abs(a)) > MAX_INT_BITS:  # bits of the result, estimated without computing it
            raise ToolError(f"exponent too large: {a}**{b} would exceed {MAX_INT_BITS} bits")
    result = a ** b
    if isinstance(result, complex):
        raise ToolError("result is complex (negative number to a fractional power)")
    return result


def safe_eval(expression: str) -> int | float:
    """Evaluate an arithmetic expression without ``eval``: parse it, then walk the AST.

    Allowed: int and float literals, ``+ - * / // % **``, unary ``+``/``-``, parentheses.
    Everything else is refused with a :class:`ToolError` that says what was found: names
    (``__import__``, ``x``), calls, attributes, subscripts, strings, lambdas, comparisons, ``^``
    (Python's xor: the message suggests ``**``), booleans, complex literals.

    Limits (checked before the work is done, so an attack costs nothing): at most
    ``MAX_EXPR_CHARS`` characters, nesting depth at most ``MAX_DEPTH`` (checked on the text before
    ``ast.parse``, which recurses itself, and again on the tree), integer results of at most
    ``MAX_INT_BITS`` bits (``9**9**9`` is refused from its estimated size), finite floats only.

    Args:
        expression: e.g. ``"(1400 + 1460) / 225"``.

    Returns:
        An ``int`` or ``float``.

    Raises:
        TypeError: ``expression`` is not a ``str``.
        ToolError: empty, too long, too deep, a disallowed construct, division by zero,
            overflow, or a result too large.
    """
    if not isinstance(expression, str):
        raise TypeError(f"expression must be a str, got {type(expression).__name__}")
    expr = expression.strip()
    if not expr:
        raise ToolError("empty expression")
    if len(expr) > MAX_EXPR_CHARS:
        raise ToolError(f"expression too long ({len(expr)} > {MAX_EXPR_CHARS} characters)")
    # BEGIN SOLUTION text checks first (paren depth > MAX_DEPTH -> ToolError, so ast.parse never recurses deeply); ast.parse(mode="eval"), SyntaxError -> ToolError; then a recursive walk with a depth counter: Constant int/float (not bool/complex), BinOp via _BINOPS (Pow via _pow), UnaryOp via _UNARYOPS, anything else -> ToolError naming the node; ZeroDivisionError/OverflowError -> ToolError; _check_size every result (medium, ~25 min)
    depth = max_depth = 0
    for ch in expr:
        depth += ch == "("
        depth -= ch == ")"
        max_depth = max(max_depth, depth)
    if max_depth > MAX_DEPTH:
        raise ToolError(f"expression nested too deeply (depth {max_depth} > {MAX_DEPTH})")
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise ToolError(f"not a valid arithmetic expression: {e.__class__.__name__}") from None

    def walk(node: ast.AST, level: int) -> int | float:
        if level > MAX_DEPTH:
            raise ToolError(f"expression nested too deeply (depth > {MAX_DEPTH})")
        if isinstance(node, ast.Expression):
            return walk(node.body, level + 1)
        if isinstance(node, ast.Constant):
            v = node.value
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ToolError(f"only numbers are allowed, found the constant {v!r}")
            return _check_size(v)
        if isinstance(node, ast.BinOp):
            if isinstance(node.op, ast.BitXor):
                raise ToolError("'^' is not a power operator here; use ** for powers")
            fn = _BINOPS.get(type(node.op))
            if fn is None:
                raise ToolError(f"operator {type(node.op).__name__} is not allowed")
            a, b = walk(node.left, level + 1), walk(node.right, level + 1)
            try:
                if fn is operator.pow:
                    return _check_size(_pow(a, b))
                if fn is operator.mul and isinstance(a, int) and isinstance(b, int) \
                        and a.bit_length() + b.bit_length() > MAX_INT_BITS + 1:
                    raise ToolError(f"result too large (over {MAX_INT_BITS} bits)")
                return _check_size(fn(a, b))
            except ZeroDivisionError:
                raise ToolError("division by zero") from None
            except OverflowError:
                raise ToolError("numeric overflow") from None
        if isinstance(node, ast.UnaryOp):
            fn1 = _UNARYOPS.get(type(node.op))
            if fn1 is None:
                raise ToolError(f"operator {type(node.op).__name__} is not allowed")
            return fn1(walk(node.operand, level + 1))
        if isinstance(node, ast.Name):
            raise ToolError(f"names are not allowed (found {node.id!r}); arithmetic only")
        raise ToolError(f"{type(node).__name__} is not allowed; arithmetic only")

    return walk(tree, 0)
    # END SOLUTION


def format_number(x: int | float) -> str:
    """``6.222222222222222`` -> ``'6.22222222222'``, ``6064`` -> ``'6064'`` (12 significant digits)."""
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return str(x) if isinstance(x, int) else format(x, ".12g")


# =============================================================================================
# 2. fetch_url: SSRF-safe fetching
# =============================================================================================
Resolver = Callable[[str, int], list[str]]


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (``socket.getaddrinfo``; IP literals come back as is)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


@dataclass(frozen=True)
class FetchPolicy:
    """Limits and the allow-list for :func:`fetch_url`.

    ``allow`` holds explicit ``"ip:port"`` entries (``"[::1]:8080"`` for IPv6) that may be
    reached even though they are not public: the tests' own 127.0.0.1 server and nothing else.
    ``resolver(host, port) -> [ip, ...]`` is swappable so tests can make a DNS name resolve to a
    private address without touching real DNS.
    """

    max_bytes: int = 200_000
    timeout_s: float = 5.0
    max_redirects: int = 3
    max_chars: int = 2_000
    allow: frozenset[str] = frozenset()
    resolver: Resolver = system_resolver


def _ip_allowed(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Public unicast only. ``is_global`` is False for private, loopback, link-local (which holds
    169.254.169.254, the cloud metadata address), CGNAT, documentation and reserved ranges."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return ip.is_global and not ip.is_multicast


def check_url(url: str, policy: FetchPolicy = FetchPolicy()) -> tuple[str, str, int]:
    """Decide whether ``url`` may be fetched; return ``(scheme, ip, port)`` to connect to.

    Rules: scheme ``http`` or ``https``; a host; no ``user:pass@``; the host is resolved
    (``policy.resolver``) and **every** address it resolves to must be public unicast
    (:func:`_ip_allowed`) unless ``"ip:port"`` is in ``policy.allow``. Checking the name instead of
    the addresses is the classic SSRF hole: ``localhost``, ``2130706433``, ``0x7f.1``,
    ``metadata.google.internal`` or any attacker-controlled name can point at an internal
    address. The caller must then connect to the returned address, not re-resolve the name
    (DNS rebinding: a second lookup may answer differently).

    Raises:
        TypeError: ``url`` is not a ``str``.
        UnsafeURLError: with the reason (scheme, credentials, unresolvable, or the address).
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, got {type(url).__name__}")
    # BEGIN SOLUTION urlsplit; scheme must be http/https; hostname required; refuse username/password; port = explicit or 80/443 (a bad port is an UnsafeURLError); resolve with policy.resolver (socket.gaierror/OSError -> UnsafeURLError); refuse if no address or ANY address is not _ip_allowed unless f"{ip}:{port}" (IPv6 in brackets) is in policy.allow; return (scheme, first ip, port) (medium, ~20 min)
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeURLError(f"scheme {scheme or '(none)'!r} refused: only http and https")
    host = parts.hostname
    if not host:
        raise UnsafeURLError("URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeURLError("credentials in URLs (user:pass@host) are refused")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as e:
        raise UnsafeURLError(f"bad port: {e}") from None
    try:
        addresses = policy.resolver(host, port)
    except (OSError, UnicodeError) as e:
        raise UnsafeURLError(f"cannot resolve {host!r}: {e}") from None
    if not addresses:
        raise UnsafeURLError(f"{host!r} resolves to no address")
    for addr in addresses:
        ip = ipaddress.ip_address(addr.split("%")[0])
        key = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
        if key not in policy.allow and not _ip_allowed(ip):
            raise UnsafeURLError(f"{host!r} resolves to {ip}, a non-public address (private, loopback, "
                                 "link-local/metadata or reserved): refused")
    return scheme, str(ipaddress.ip_address(addresses[0].split("%")[0])), port
    # END SOLUTION


def _html_to_text(body: str) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(body, "html.parser")
    for tag in soup(["script", "style", "noscript"]):
        tag.decompose()
    return " ".join(soup.get_text(" ").split())


def fetch_url(url: str, policy: FetchPolicy = FetchPolicy()) -> str:
    """GET ``url`` safely and return its text (HTML reduced to visible text), at most
    ``policy.max_chars`` characters.

    Every hop is checked with :func:`check_url` and the TCP connection goes to the checked IP
    (``Host`` header and TLS SNI/certificate check keep the name), so a rebinding DNS answer
    cannot redirect it. Redirects are followed by hand (each target re-checked) up to
    ``policy.max_redirects``. The body is streamed and abandoned past ``policy.max_bytes``;
    ``policy.timeout_s`` bounds connect, each read, and the whole download.

    Raises:
        UnsafeURLError: a refused URL or redirect target.
        ToolError: HTTP status >= 400, too many redirects, too large, too slow, not text,
            or a network error.
    """
    import httpx

    deadline = time.monotonic() + policy.timeout_s
    for _hop in range(policy.max_redirects + 1):
        scheme, ip, port = check_url(url, policy)
        parts = urlsplit(url)
        netloc_ip = f"[{ip}]" if ":" in ip else ip
        pinned = f"{scheme}://{netloc_ip}:{port}{parts.path or '/'}" + (f"?{parts.query}" if parts.query else "")
        host_header = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        ext = {"sni_hostname": parts.hostname} if scheme == "https" else {}
        try:
            with httpx.Client(timeout=httpx.Timeout(policy.timeout_s), follow_redirects=False) as client:
                req = client.build_request("GET", pinned, headers={"Host": host_header,
                                                                   "User-Agent": "lab-7.4-agent"},
                                           extensions=ext)
                resp = client.send(req, stream=True)
                try:
                    if resp.is_redirect:
                        location = resp.headers.get("location", "")
                        url = urljoin(url, location)
                        continue
                    if resp.status_code >= 400:
                        raise ToolError(f"HTTP {resp.status_code} from {url}")
                    declared = resp.headers.get("content-length")
                    if declared is not None and declared.isdigit() and int(declared) > policy.max_bytes:
                        raise ToolError(f"response too large ({declared} bytes > {policy.max_bytes})")
                    ctype = resp.headers.get("content-type", "text/plain").lower()
                    if not (ctype.startswith("text/") or "json" in ctype or "xml" in ctype):
                        raise ToolError(f"content type {ctype!r} refused: text only")
                    body = bytearray()
                    for chunk in resp.iter_bytes():
                        body += chunk
                        if len(body) > policy.max_bytes:
                            raise ToolError(f"response too large (over {policy.max_bytes} bytes)")
                        if time.monotonic() > deadline:
                            raise ToolError(f"download took longer than {policy.timeout_s} s")
                finally:
                    resp.close()
        except httpx.TimeoutException:
            raise ToolError(f"timed out after {policy.timeout_s} s") from None
        except httpx.HTTPError as e:
            raise ToolError(f"network error: {e.__class__.__name__}: {e}") from None
        text = body.decode(resp.encoding or "utf-8", errors="replace")
        if "html" in ctype:
            text = _html_to_text(text)
        return text[: policy.max_chars]
    raise ToolError(f"too many redirects (> {policy.max_redirects})")


# =============================================================================================
# 3. search_docs: any retriever
# =============================================================================================
@dataclass(frozen=True)
class Hit:
    """One retrieved chunk (the shape lab 7.2's pipeline returns)."""

    chunk_id: str
    doc_id: str
    text: str
    score: float


class Retriever(Protocol):
    """Anything with ``search(query, k) -> [hit]``, each hit with chunk_id, doc_id, text, score."""

    def search(self, query: str, k: int) -> Sequence[Any]: ...


_WORD = re.compile(r"[a-z0-9_]+")


class KeywordRetriever:
    """A tiny lexical retriever (sum of idf of shared words) for tests and the self-test.

    Lab 7.2's pipeline does the real job (dense + Qdrant); this stays dependency-free so the
    agent's tests do not need an embedding model.
    """

    def __init__(self, docs: dict[str, str]):
        if not docs:
            raise ValueError("KeywordRetriever needs at least one document")
        self.docs = dict(docs)
        self._terms = {d: set(_WORD.findall(t.lower())) for d, t in self.docs.items()}
        n = len(self.docs)
        df: dict[str, int] = {}
        for terms in self._terms.values():
            for w in terms:
                df[w] = df.get(w, 0) + 1
        self._idf = {w: math.log(1 + n / c) for w, c in df.items()}

    def search(self, query: str, k: int = 3) -> list[Hit]:
        q = set(_WORD.findall(query.lower()))
        scored = [(sum(self._idf[w] for w in q & terms), d) for d, terms in self._terms.items()]
        scored.sort(key=lambda s: (-s[0], s[1]))
        return [Hit(chunk_id=f"{d}#0", doc_id=d, text=self.docs[d], score=round(s, 4))
                for s, d in scored[:k] if s > 0]


# Facts the agent looks up: checked against the mirror's MANIFEST and the curriculum model's
# config.json (labkit.curriculum_model_path("main") / "hf" / "config.json").
AGENT_FACTS: dict[str, str] = {
    "cranfield": "The Cranfield collection is an IR test collection of 1400 aeronautics abstracts "
                 "with 225 queries and relevance judgments.",
    "cisi": "The CISI collection holds 1460 library-science abstracts and 112 queries; relevance "
            "judgments exist for 76 of the queries.",
    "cacm": "The CACM collection holds 3204 abstracts from the Communications of the ACM and 64 queries.",
    "model-shape": "The curriculum model is a Llama-style decoder with 4 layers and a hidden size "
                   "(d_model) of 128 dimensions.",
    "model-heads": "The curriculum model uses grouped-query attention: 4 query heads share "
                   "2 key/value heads.",
    "model-vocab": "The curriculum model's BPE tokenizer has a vocabulary (vocab_size) of 4096 tokens.",
    "model-context": "The curriculum model has a context length (block_size) of 256 tokens, prompt "
                     "and generation together.",
    "model-data": "The curriculum model was trained on TinyStories, simple stories for small children.",
}


def format_hits(hits: Sequence[Any], max_chars: int = 600) -> str:
    """Numbered, citeable hits: ``[1] (cisi#0) The CISI collection ...``."""
    if not hits:
        return "no results"
    lines = [f"[{i}] ({h.chunk_id}) {' '.join(str(h.text).split())}" for i, h in enumerate(hits, 1)]
    return "\n".join(lines)[:max_chars]


def lab02_retriever(docs: dict[str, str] | None = None, **kwargs: Any) -> Retriever:
    """Lab 7.2's RAG pipeline (MiniLM embeddings in Qdrant, ``.search(query, k)`` returns Hits),
    indexing ``docs`` (default :data:`AGENT_FACTS`) instead of its own corpus."""
    from labkit import load_lab

    rag = load_lab("phase-07-retrieval-rag-agents/lab-02-rag-pipeline")
    docs = AGENT_FACTS if docs is None else docs
    return rag.build_default_pipeline(docs=[rag.Document(doc_id=k, text=v) for k, v in docs.items()],
                                      collection=kwargs.pop("collection", "agent-facts"), **kwargs)


# =============================================================================================
# 4. the tool registry
# =============================================================================================
_STRICT = ConfigDict(extra="forbid", strict=True)


class SearchDocsArgs(BaseModel):
    model_config = _STRICT
    query: str = Field(min_length=1, max_length=48, description="what to look for")
    k: int = Field(ge=1, le=5, description="how many passages to return")


class CalculatorArgs(BaseModel):
    model_config = _STRICT
    expression: str = Field(min_length=1, max_length=48, description="arithmetic, e.g. (1400+1460)/225")


class FetchUrlArgs(BaseModel):
    model_config = _STRICT
    url: str = Field(min_length=1, max_length=64, description="an http(s) URL")


class FinalAnswerArgs(BaseModel):
    model_config = _STRICT
    answer: str = Field(min_length=1, max_length=48, description="the final answer")


@dataclass(frozen=True)
class Tool:
    """A callable tool: ``fn(**validated_args) -> str``. ``args_model`` is its JSON schema."""

    name: str
    description: str
    args_model: type[BaseModel]
    fn: Callable[..., str]

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]{0,63}", self.name):
            raise ValueError(f"tool name must be an identifier of at most 64 characters, got {self.name!r}")

    def parameters_schema(self) -> dict[str, Any]:
        schema = self.args_model.model_json_schema()
        schema.pop("title", None)
        return schema


@dataclass(frozen=True)
class ToolCall:
    """A validated call: ``arguments`` already passed the tool's schema."""

    id: str
    name: str
    arguments: dict[str, Any]

    def as_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": json.dumps(self.arguments)}}


FINAL_ANSWER = "final_answer"


class ToolRegistry:
    """Tools by name; the OpenAI ``tools`` list; validation; error-proof dispatch."""

    def __init__(self, tools: Iterable[Tool] = ()):
        self.tools: dict[str, Tool] = {}
        for t in tools:
            self.register(t)

    def register(self, tool: Tool) -> None:
        if tool.name in self.tools:
            raise ValueError(f"a tool named {tool.name!r} is already registered")
        self.tools[tool.name] = tool

    def openai_tools(self) -> list[dict[str, Any]]:
        """The ``tools=`` argument of ``chat.completions.create``."""
        return [{"type": "function", "function": {"name": t.name, "description": t.description,
                                                  "parameters": t.parameters_schema()}}
                for t in self.tools.values()]

    def tool_call_schema(self) -> dict[str, Any]:
        """One JSON schema for "a call of any registered tool" (what constrained decoding enforces):
        ``{"name": <const>, "arguments": <that tool's parameters>}``, one ``anyOf`` branch per tool."""
        return {"anyOf": [{"type": "object",
                           "properties": {"name": {"const": t.name}, "arguments": t.parameters_schema()},
                           "required": ["name", "arguments"], "additionalProperties": False}
                          for t in self.tools.values()]}

    def call_adapter(self) -> TypeAdapter:
        """A pydantic validator for the same schema: the independent reference in the tests."""
        models = [create_model(f"{t.name}_call", __config__=_STRICT, name=(Literal[t.name], ...),
                               arguments=(t.args_model, ...)) for t in self.tools.values()]
        return TypeAdapter(Union[tuple(models)])  # noqa: UP007  (a runtime union of a tuple)

    def validate_call(self, name: Any, arguments: Any, call_id: str) -> ToolCall:
        """Check a proposed call; ``arguments`` may be a JSON string (OpenAI) or a dict.

        Raises:
            ModelOutputError: unknown tool, arguments not JSON / not an object, or a schema
                violation (the message lists pydantic's errors, short enough to feed back).
        """
        # BEGIN SOLUTION unknown name -> ModelOutputError listing the available tools; a str of arguments goes through json.loads (JSONDecodeError -> ModelOutputError); must be a dict; validate with the tool's args_model (model_validate; ValidationError -> ModelOutputError naming each field and message); return ToolCall(call_id, name, model.model_dump()) (medium, ~15 min)
        if not isinstance(name, str) or name not in self.tools:
            raise ModelOutputError(f"unknown tool {name!r}; available: {', '.join(self.tools)}")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as e:
                raise ModelOutputError(f"arguments of {name} are not valid JSON: {e.msg} at char {e.pos}") from None
        if not isinstance(arguments, dict):
            raise ModelOutputError(f"arguments of {name} must be a JSON object, got {type(arguments).__name__}")
        try:
            args = self.tools[name].args_model.model_validate(arguments)
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or '(arguments)'}: {err['msg']}"
                                 for err in e.errors())
            raise ModelOutputError(f"arguments of {name} do not match its schema: {problems}") from None
        return ToolCall(call_id, name, args.model_dump())
        # END SOLUTION

    def execute(self, call: ToolCall) -> tuple[bool, str]:
        """Run a validated call. Never raises: ``(True, result)`` or ``(False, "ERROR: ...")``."""
        try:
            return True, str(self.tools[call.name].fn(**call.arguments))
        except ToolError as e:
            return False, f"ERROR: {e}"
        except Exception as e:  # a bug in a tool must not kill the agent either
            return False, f"ERROR: {call.name} failed unexpectedly: {e.__class__.__name__}: {e}"


def build_registry(retriever: Retriever, fetch_policy: FetchPolicy = FetchPolicy()) -> ToolRegistry:
    """The spec's three tools plus ``final_answer``."""

    def search_docs(query: str, k: int) -> str:
        return format_hits(retriever.search(query, k))

    def calculator(expression: str) -> str:
        return format_number(safe_eval(expression))

    return ToolRegistry([
        Tool("search_docs", "Search the document collection; returns numbered passages.",
             SearchDocsArgs, search_docs),
        Tool("calculator", "Evaluate arithmetic: + - * / // % ** and parentheses.", CalculatorArgs, calculator),
        Tool("fetch_url", "Fetch a public http(s) page and return its text.", FetchUrlArgs,
             lambda url: fetch_url(url, fetch_policy)),
        Tool(FINAL_ANSWER, "Give the final answer and stop.", FinalAnswerArgs, lambda answer: answer),
    ])


# =============================================================================================
# 5. the ReAct loop
# =============================================================================================
def parse_model_output(text: str) -> tuple[str, Any]:
    """Find the action in a model's text reply: the first JSON object in it, which must be
    ``{"name": <tool>, "arguments": {...}}``. Text around it (a "Thought:", a code fence) is allowed.

    Returns:
        ``(name, arguments)`` (not validated against the tool schema yet).

    Raises:
        ModelOutputError: no ``{``, the object does not parse, or its keys are wrong.
    """
    if not isinstance(text, str) or "{" not in text:
        raise ModelOutputError("no JSON object found; reply with one object like "
                               '{"name": "calculator", "arguments": {"expression": "2+2"}}')
    start = text.index("{")
    try:
        obj, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError as e:
        raise ModelOutputError(f"the JSON object does not parse: {e.msg} at char {e.pos}") from None
    if not isinstance(obj, dict) or set(obj) != {"name", "arguments"}:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise ModelOutputError(f'the object must have exactly the keys "name" and "arguments", got {keys}')
    return obj["name"], obj["arguments"]


class Tracer:
    """Appends one JSON object per line to ``path`` (and keeps them in ``self.events``)."""

    def __init__(self, path: str | Path | None = None, run_id: str | None = None):
        self.path = Path(path) if path is not None else None
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.events: list[dict[str, Any]] = []
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, event: str, **fields: Any) -> None:
        rec = {"ts": round(time.time(), 3), "run_id": self.run_id, "event": event, **fields}
        self.events.append(rec)
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(rec, default=str) + "\n")


@dataclass
class AgentResult:
    """How a run ended. ``status``: answered | max_iterations | policy_error."""

    status: str
    answer: str | None
    messages: list[dict[str, Any]]
    steps: int
    tool_calls: int = 0
    output_errors: int = 0
    tool_errors: int = 0


Policy = Callable[[list[dict[str, Any]], list[dict[str, Any]]], dict[str, Any]]

SYSTEM_PROMPT = ("You answer questions by calling tools. Each reply is one tool call. Finish with "
                 "final_answer.")


def run_agent(question: str, policy: Policy, registry: ToolRegistry, *, max_iterations: int = 8,
              tracer: Tracer | None = None, system_prompt: str = SYSTEM_PROMPT,
              max_repeats: int = 2) -> AgentResult:
    """The ReAct loop: ask the policy for an action, validate it, run it, feed the observation back.

    ``policy(messages, tools) -> assistant message`` (OpenAI format). The message either has
    ``tool_calls`` (native function calling) or only ``content``, which must hold a JSON action
    (:func:`parse_model_output`). Per iteration:

    - the policy raises -> the run ends with status ``policy_error`` (traced);
    - the output is not a valid action -> the assistant message is kept and the error goes back
      (as a ``tool`` message answering that call's id when there was one, otherwise as a ``user``
      message), then the next iteration;
    - a valid call -> ``registry.execute``; its result or ``ERROR: ...`` becomes a ``tool``
      message; the same call (name + arguments) more than ``max_repeats`` times is refused as a
      loop instead of executed; ``final_answer`` ends the run with status ``answered``.

    At most ``max_iterations`` policy calls (status ``max_iterations`` otherwise). Every policy
    call and tool call is traced (event ``model`` / ``tool`` / ``output_error`` / ``final``).

    Raises:
        ValueError: ``max_iterations`` < 1, ``max_repeats`` < 1, or an empty question.
    """
    if not isinstance(question, str) or not question.strip():
        raise ValueError("question must be a non-empty string")
    if max_iterations < 1 or max_repeats < 1:
        raise ValueError(f"max_iterations and max_repeats must be >= 1, got {max_iterations}, {max_repeats}")
    tracer = tracer or Tracer()
    messages: list[dict[str, Any]] = [{"role": "system", "content": system_prompt},
                                      {"role": "user", "content": question}]
    tools = registry.openai_tools()
    res = AgentResult("max_iterations", None, messages, 0)
    seen: dict[str, int] = {}
    # BEGIN SOLUTION for step in range(max_iterations): time the policy call (exception -> trace, status "policy_error", return); trace "model"; native tool_calls -> validate each with registry.validate_call(fn name, fn arguments, id); else parse_model_output(content) then validate with id f"call_{step}"; a ModelOutputError -> append the raw assistant message, feed the error back (tool message per call id if it had tool_calls, else a user message), output_errors += 1, continue; valid -> append an assistant message with tool_calls=[c.as_openai()], then per call: final_answer -> status "answered"; repeated > max_repeats -> loop error observation; else execute, count tool errors, trace "tool" with latency, append {"role": "tool", "tool_call_id", "content"} (hard, ~40 min)
    for step in range(max_iterations):
        res.steps = step + 1
        t0 = time.perf_counter()
        try:
            msg = policy(messages, tools)
        except Exception as e:
            tracer.log("policy_error", step=step, error=f"{e.__class__.__name__}: {e}")
            res.status = "policy_error"
            return res
        tracer.log("model", step=step, latency_ms=round(1e3 * (time.perf_counter() - t0), 2),
                   content=msg.get("content"), tool_calls=msg.get("tool_calls"))
        raw_calls = msg.get("tool_calls") or []
        try:
            if raw_calls:
                calls = [registry.validate_call(c["function"]["name"], c["function"].get("arguments", "{}"),
                                                c.get("id") or f"call_{step}_{i}")
                         for i, c in enumerate(raw_calls)]
            else:
                name, args = parse_model_output(msg.get("content") or "")
                calls = [registry.validate_call(name, args, f"call_{step}")]
        except (ModelOutputError, KeyError, TypeError) as e:
            error = f"ERROR: invalid action: {e}"
            res.output_errors += 1
            tracer.log("output_error", step=step, error=error)
            messages.append({"role": "assistant", "content": msg.get("content"),
                             **({"tool_calls": raw_calls} if raw_calls else {})})
            if raw_calls:
                for i, c in enumerate(raw_calls):
                    cid = c.get("id") if isinstance(c, dict) else None
                    messages.append({"role": "tool", "tool_call_id": cid or f"call_{step}_{i}", "content": error})
            else:
                messages.append({"role": "user", "content": error})
            continue
        messages.append({"role": "assistant", "content": msg.get("content"),
                         "tool_calls": [c.as_openai() for c in calls]})
        for call in calls:
            res.tool_calls += 1
            if call.name == FINAL_ANSWER:
                res.status, res.answer = "answered", call.arguments["answer"]
                tracer.log("final", step=step, answer=res.answer)
                messages.append({"role": "tool", "tool_call_id": call.id, "content": "ok"})
                return res
            key = call.name + json.dumps(call.arguments, sort_keys=True)
            seen[key] = seen.get(key, 0) + 1
            t1 = time.perf_counter()
            if seen[key] > max_repeats:
                ok, out = False, (f"ERROR: {call.name} was already called {max_repeats} times with these "
                                  "arguments; use the earlier result or try something else")
            else:
                ok, out = registry.execute(call)
            res.tool_errors += not ok
            tracer.log("tool", step=step, tool=call.name, arguments=call.arguments, ok=ok, result=out[:500],
                       latency_ms=round(1e3 * (time.perf_counter() - t1), 2))
            messages.append({"role": "tool", "tool_call_id": call.id, "content": out})
    return res
    # END SOLUTION


# =============================================================================================
# 6. policies
# =============================================================================================
def tool_call_message(name: str, arguments: dict[str, Any], call_id: str = "call_0") -> dict[str, Any]:
    """An assistant message in OpenAI's function-calling format."""
    return {"role": "assistant", "content": None,
            "tool_calls": [{"id": call_id, "type": "function",
                            "function": {"name": name, "arguments": json.dumps(arguments)}}]}


def observations(messages: list[dict[str, Any]]) -> list[str]:
    """The contents of the ``tool`` messages so far (what a policy has observed)."""
    return [m["content"] for m in messages if m.get("role") == "tool"]


Step = Union[dict[str, Any], str, Callable[[list[str]], Union[dict[str, Any], str]]]  # noqa: UP007


class ScriptedPolicy:
    """Replays a plan. Each step is an assistant message, a raw text reply (to play a model that
    writes JSON, or garbage, in ``content``), or a function of the observations so far that
    returns either. Past the end of the plan it keeps answering ``"I am done."`` (no action)."""

    def __init__(self, plan: Sequence[Step]):
        self.plan = list(plan)
        self.i = 0

    def __call__(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> dict[str, Any]:
        step: Step = self.plan[self.i] if self.i < len(self.plan) else "I am done."
        self.i += 1
        if callable(step):
            step = step(observations(messages))
        if isinstance(step, str):
            return {"role": "assistant", "content": step}
        return step


def number_in(text: str, before: str | None = None) -> str:
    """The first number in ``text`` (or the one right before the word ``before``), commas removed."""
    pat = r"(-?\d[\d,]*\.?\d*)" + (rf"\s+(?:{before})" if before else "")
    m = re.search(pat, text)
    if not m:
        raise ValueError(f"no number{' before ' + before if before else ''} in {text[:80]!r}")
    return m.group(1).replace(",", "").rstrip(".")


@dataclass
class AgentTask:
    """A multi-step question, its expected numeric answer, and a plan that solves it."""

    question: str
    expected: float
    plan: list[Step] = field(default_factory=list)

    def solved_by(self, answer: str | None) -> bool:
        if answer is None:
            return False
        try:
            got = float(number_in(answer))
        except ValueError:
            return False
        return math.isclose(got, self.expected, rel_tol=1e-6, abs_tol=1e-9)


def _search(q: str, call_id: str) -> dict[str, Any]:
    return tool_call_message("search_docs", {"query": q, "k": 2}, call_id)


def _calc(fmt: str, call_id: str, *spec: tuple[int, str | None]) -> Callable[[list[str]], dict[str, Any]]:
    """A step that fills ``fmt`` with numbers read from earlier observations ``(index, word)``."""
    def step(obs: list[str]) -> dict[str, Any]:
        values = [number_in(obs[i], word) for i, word in spec]
        return tool_call_message("calculator", {"expression": fmt.format(*values)}, call_id)
    return step


def _final(call_id: str) -> Callable[[list[str]], dict[str, Any]]:
    return lambda obs: tool_call_message(FINAL_ANSWER, {"answer": obs[-1]}, call_id)


def make_tasks(base_url: str | None = None) -> list[AgentTask]:
    """Ten multi-step tasks over :data:`AGENT_FACTS` (and, given ``base_url``, the lab's local
    pages, see :func:`make_demo_app`). Each needs two to four tool calls; task 9 starts with a
    non-JSON reply and task 10 with a schema violation, which the loop must feed back and survive."""
    t = [
        AgentTask("How many documents do Cranfield, CISI and CACM hold together?", 6064, [
            _search("Cranfield documents", "c1"), _search("CISI abstracts", "c2"),
            _search("CACM abstracts", "c3"),
            _calc("{}+{}+{}", "c4", (0, "aeronautics"), (1, "library"), (2, "abstracts")), _final("c5")]),
        AgentTask("On average, how many Cranfield documents are there per query?", 1400 / 225, [
            _search("Cranfield queries", "c1"), _calc("{}/{}", "c2", (0, "aeronautics"), (0, "queries")),
            _final("c3")]),
        AgentTask("How many weights are in the curriculum model's embedding table (vocab_size x d_model)?",
                  4096 * 128, [
                      _search("model vocabulary vocab_size", "c1"), _search("model hidden size d_model", "c2"),
                      _calc("{}*{}", "c3", (0, "tokens"), (1, "dimensions")), _final("c4")]),
        AgentTask("How many query heads share each key/value head in the curriculum model?", 2, [
            _search("query heads key/value heads", "c1"), _calc("{}/{}", "c2", (0, "query"), (0, "key")),
            _final("c3")]),
        AgentTask("What is the curriculum model's head dimension (d_model / number of query heads)?", 32, [
            _search("model hidden size d_model", "c1"), _search("query heads", "c2"),
            _calc("{}//{}", "c3", (0, "dimensions"), (1, "query")), _final("c4")]),
        AgentTask("How many more documents does CACM have than CISI?", 3204 - 1460, [
            _search("CACM abstracts", "c1"), _search("CISI abstracts", "c2"),
            _calc("{}-{}", "c3", (0, "abstracts"), (1, "library")), _final("c4")]),
        AgentTask("What fraction of the curriculum model's context does a 64-token prompt use?", 0.25, [
            _search("context length block_size", "c1"), _calc("64/{}", "c2", (0, "tokens")), _final("c3")]),
    ]
    t.append(AgentTask("How many queries do Cranfield, CISI and CACM have together?", 225 + 112 + 64, [
        "Thought: I should search first.",  # no JSON at all: fed back as an error
        _search("Cranfield queries", "c1"), _search("CISI queries", "c2"), _search("CACM queries", "c3"),
        _calc("{}+{}+{}", "c4", (0, "queries"), (1, "queries"), (2, "queries")), _final("c5")]))
    t.append(AgentTask("How many layers times heads (4 x 4) does the curriculum model have? Use the docs.", 16, [
        tool_call_message("search_docs", {"query": "model layers", "k": 99}, "bad"),  # k > 5: schema error
        _search("model layers", "c1"), _search("query heads", "c2"),
        _calc("{}*{}", "c3", (1, "layers"), (2, "query")), _final("c4")]))
    if base_url is not None:
        t.append(AgentTask("The page /stats on the lab server lists requests and workers: how many "
                           "requests per worker?", 1200 / 8, [
                               tool_call_message("fetch_url", {"url": f"{base_url}/stats"}, "c1"),
                               _calc("{}/{}", "c2", (0, "requests"), (0, "workers")), _final("c3")]))
    else:
        t.append(AgentTask("How many queries does CISI have without relevance judgments?", 112 - 76, [
            _search("CISI judgments", "c1"), _calc("{}-{}", "c2", (0, "queries"), (0, "of the queries")),
            _final("c3")]))
    return t


def make_demo_app():
    """A tiny FastAPI app the tests and the self-test serve on 127.0.0.1 for ``fetch_url``."""
    import asyncio

    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, StreamingResponse

    app = FastAPI()

    @app.get("/stats", response_class=HTMLResponse)
    def stats() -> str:
        return ("<html><head><style>p{color:red}</style></head><body><h1>Service stats</h1>"
                "<p>1,200 requests served by 8 workers today.</p></body></html>")

    @app.get("/big", response_class=PlainTextResponse)
    def big() -> str:
        return "x" * 300_000

    @app.get("/stream-big")
    def stream_big() -> StreamingResponse:  # no Content-Length: the size check must count bytes
        return StreamingResponse((b"y" * 65536 for _ in range(16)), media_type="text/plain")

    @app.get("/slow")
    async def slow() -> PlainTextResponse:
        await asyncio.sleep(3)
        return PlainTextResponse("finally")

    @app.get("/to-metadata")
    def to_metadata() -> RedirectResponse:
        return RedirectResponse("http://169.254.169.254/latest/meta-data/", status_code=302)

    @app.get("/to-stats")
    def to_stats() -> RedirectResponse:
        return RedirectResponse("/stats", status_code=302)

    @app.get("/loop")
    def loop() -> RedirectResponse:
        return RedirectResponse("/loop", status_code=302)

    @app.get("/binary")
    def binary() -> StreamingResponse:
        return StreamingResponse(iter([b"\x89PNG...."]), media_type="image/png")

    return app


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Run ``app`` with uvicorn on 127.0.0.1 and a free port; yield ``"http://127.0.0.1:PORT"``."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    t0 = time.monotonic()
    while not server.started:
        if time.monotonic() - t0 > 20 or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


# ---- the LLM path: any OpenAI-compatible endpoint ------------------------------------------
def compact_tool_prompt(registry: ToolRegistry) -> str:
    """Tools described in a few tokens (the curriculum model's whole context is 256 tokens)."""
    sigs = []
    for t in registry.tools.values():
        props = t.args_model.model_json_schema()["properties"]
        sigs.append(f"{t.name}({','.join(props)})")
    return 'Reply with JSON {"name","arguments"}. Tools: ' + " ".join(sigs)


def render_for_text_model(messages: list[dict[str, Any]], registry: ToolRegistry,
                          max_chars: int = 400) -> list[dict[str, Any]]:
    """Rewrite a function-calling history for a model without native tools: the system prompt
    describes the tools, assistant tool calls become their JSON text, tool results become
    ``user`` messages ``Observation: ...``; the oldest turns are dropped past ``max_chars``."""
    head = [{"role": "system", "content": compact_tool_prompt(registry)}, messages[1]]
    body = []
    for m in messages[2:]:
        if m["role"] == "assistant" and m.get("tool_calls"):
            f = m["tool_calls"][0]["function"]
            body.append({"role": "assistant", "content": json.dumps(
                {"name": f["name"], "arguments": json.loads(f["arguments"]) if _is_json(f["arguments"])
                 else f["arguments"]})})
        elif m["role"] == "assistant":
            body.append({"role": "assistant", "content": (m.get("content") or "")[:100]})
        else:
            body.append({"role": "user", "content": "Observation: " + str(m["content"])[:100]})
    while body and sum(len(m["content"]) for m in head + body) > max_chars:
        body.pop(0)
    return head + body


def _is_json(s: Any) -> bool:
    try:
        json.loads(s)
        return True
    except (TypeError, ValueError):
        return False


class ChatCompletionsPolicy:
    """A policy backed by any OpenAI-compatible ``/v1/chat/completions`` (the real ``openai`` client).

    ``native_tools=True`` passes ``tools=`` and reads ``message.tool_calls``; if the server
    answers 400 to that (the curriculum server does: its model cannot call functions), the
    policy falls back to describing the tools in the prompt and reading JSON from ``content``
    (``self.native_tools`` becomes False and ``self.fallbacks`` counts it).
    """

    def __init__(self, client: Any, model: str, *, native_tools: bool = True, max_tokens: int = 64,
                 temperature: float = 0.7, seed: int | None = 0, max_prompt_chars: int = 400):
        self.client, self.model = client, model
        self.native_tools, self.fallbacks = native_tools, 0
        self.max_tokens, self.temperature, self.seed = max_tokens, temperature, seed
        self.max_prompt_chars = max_prompt_chars
        self.registry: ToolRegistry | None = None

    def __call__(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> dict[str, Any]:
        import openai

        kw = dict(model=self.model, max_tokens=self.max_tokens, temperature=self.temperature, seed=self.seed)
        if self.native_tools:
            try:
                r = self.client.chat.completions.create(messages=messages, tools=tools, **kw)
                m = r.choices[0].message
                out: dict[str, Any] = {"role": "assistant", "content": m.content}
                if m.tool_calls:
                    out["tool_calls"] = [{"id": c.id, "type": "function", "function": {
                        "name": c.function.name, "arguments": c.function.arguments}} for c in m.tool_calls]
                return out
            except openai.BadRequestError:
                self.native_tools, self.fallbacks = False, self.fallbacks + 1
        if self.registry is None:
            raise RuntimeError("prompt mode needs policy.registry (the tools to describe)")
        budget = self.max_prompt_chars
        while True:  # a small model's context overflows fast: shorten the history and retry
            try:
                r = self.client.chat.completions.create(
                    messages=render_for_text_model(messages, self.registry, budget), **kw)
                return {"role": "assistant", "content": r.choices[0].message.content or ""}
            except openai.BadRequestError as e:
                if "context" not in str(e) or budget < 100:
                    raise
                budget //= 2


# =============================================================================================
# 7. constrained decoding: a JSON-schema pushdown automaton over characters
# =============================================================================================
# Compiled schema nodes. A parse state is a *stack* (tuple) of pending items, top last:
#   ("L", text, pos)          a literal still to read from text[pos:]
#   ("W",)                    an optional single space
#   ("V", node)               a value of schema `node`, not started
#   ("S", min_len, max_len, n, d, esc)  inside a free string: n raw and d decoded chars so
#                             far; esc 0 = normal, 1 = after a backslash, 5..2 = in \uXXXX
#   ("E", options, prefix)    inside an enum/const string
#   ("I", lo, hi, text)       an integer being read
# The empty stack means "a complete value". Stacks are hashable, so sets of them are states.
@dataclass(frozen=True, eq=False)
class _Obj:
    props: tuple[tuple[str, Any], ...]


@dataclass(frozen=True, eq=False)
class _Str:
    max_len: int
    options: tuple[str, ...] | None = None
    min_len: int = 0


@dataclass(frozen=True, eq=False)
class _Int:
    lo: int
    hi: int


@dataclass(frozen=True, eq=False)
class _Bool:
    pass


@dataclass(frozen=True, eq=False)
class _AnyOf:
    alts: tuple[Any, ...]


_SUPPORTED = {"type", "properties", "required", "additionalProperties", "enum", "const", "maxLength",
              "minLength", "minimum", "maximum", "anyOf", "oneOf", "title", "description", "default",
              "$defs", "$ref"}
_HEX = set("0123456789abcdefABCDEF")
_SIMPLE_ESC = set('"\\/bfnrt')


class JsonSchemaMachine:
    """Character-level recognizer of the JSON texts that match a schema (a subset of JSON Schema).

    Supported: ``object`` (``properties`` emitted in their declared order, all of them, no
    others; optional spaces after ``:`` and ``,``), ``string`` (``maxLength``, default
    ``default_max_len``, counted in raw characters, which bounds the decoded length too;
    ``minLength`` in decoded characters; ``enum``/``const``), ``integer``
    (``minimum``/``maximum``, default +-10**6), ``boolean``, ``anyOf``/``oneOf`` (alternatives
    run in parallel), local ``$ref``. Anything else that would
    change what is valid (``pattern``, ``number``, arrays, ...) raises ``ValueError``: a constraint
    we cannot enforce must not be silently dropped.

    Every state it keeps can still be completed, and a complete text is at most
    :meth:`max_chars` characters long: so a decoder that samples only allowed tokens always
    finishes with a valid instance within that many tokens.
    """

    def __init__(self, schema: dict[str, Any], default_max_len: int = 64):
        self.schema = schema
        self.default_max_len = default_max_len
        self.root = self._compile(schema, schema.get("$defs", {}))

    # ---- compiling ----------------------------------------------------------------------
    def _compile(self, s: dict[str, Any], defs: dict[str, Any]) -> Any:
        unknown = set(s) - _SUPPORTED
        if unknown:
            raise ValueError(f"unsupported JSON Schema keywords: {sorted(unknown)}")
        if "$ref" in s:
            name = s["$ref"].split("/")[-1]
            if not s["$ref"].startswith("#/$defs/") or name not in defs:
                raise ValueError(f"unresolvable $ref {s['$ref']!r}")
            return self._compile(defs[name], defs)
        if "anyOf" in s or "oneOf" in s:
            return _AnyOf(tuple(self._compile(a, defs) for a in s.get("anyOf", s.get("oneOf"))))
        if "const" in s or "enum" in s:
            options = (s["const"],) if "const" in s else tuple(s["enum"])
            if not all(isinstance(o, str) and o and re.fullmatch(r"[^\"\\\x00-\x1f]+", o) for o in options):
                raise ValueError(f"enum/const must be non-empty strings without quotes/backslashes: {options}")
            return _Str(max(map(len, options)), options)
        typ = s.get("type")
        if typ == "object":
            if s.get("additionalProperties", False) not in (False,):
                raise ValueError("additionalProperties must be false (we only emit declared properties)")
            props = s.get("properties", {})
            return _Obj(tuple((k, self._compile(v, defs)) for k, v in props.items()))
        if typ == "string":
            max_len = int(s.get("maxLength", self.default_max_len))
            min_len = int(s.get("minLength", 0))
            if max_len < 1 or not 0 <= min_len <= max_len:
                raise ValueError(f"need 0 <= minLength <= maxLength and maxLength >= 1, got {min_len}, {max_len}")
            return _Str(max_len, None, min_len)
        if typ == "integer":
            lo, hi = int(s.get("minimum", -10**6)), int(s.get("maximum", 10**6))
            if lo > hi:
                raise ValueError(f"empty integer range [{lo}, {hi}]")
            return _Int(lo, hi)
        if typ == "boolean":
            return _Bool()
        raise ValueError(f"unsupported schema type {typ!r}")

    # ---- states ---------------------------------------------------------------------------
    def initial(self) -> frozenset[tuple]:
        return frozenset({(("V", self.root),)})

    @staticmethod
    def _expand(node: Any) -> list[tuple]:
        """The item sequences (bottom..top order reversed: ready to append) a value may start with."""
        if isinstance(node, _AnyOf):
            return [seq for alt in node.alts for seq in JsonSchemaMachine._expand(alt)]
        if isinstance(node, _Str):
            inner = ("E", node.options, "") if node.options else ("S", node.min_len, node.max_len, 0, 0, 0)
            return [(inner, ("L", '"', 0))]
        if isinstance(node, _Int):
            return [(("I", node.lo, node.hi, ""),)]
        if isinstance(node, _Bool):
            return [(("L", "true", 0),), (("L", "false", 0),)]
        # object: '{' ("key" ':' W value) joined by (',' W) '}'
        items: list[tuple] = [("L", "{", 0)]
        for i, (key, child) in enumerate(node.props):
            if i:
                items += [("L", ",", 0), ("W",)]
            items += [("L", f'"{key}":', 0), ("W",), ("V", child)]
        items.append(("L", "}", 0))
        return [tuple(reversed(items))]

    def step(self, stack: tuple, ch: str, out: set[tuple]) -> None:
        """Add to ``out`` every stack reachable from ``stack`` by reading the character ``ch``."""
        if not stack:
            return
        top, rest = stack[-1], stack[:-1]
        kind = top[0]
        # BEGIN SOLUTION L: match text[pos], pop at the end; W: ' ' pops it, AND also try ch on rest (the space is optional); V: step every _expand(node) pushed on rest; S (esc 0): '"' closes (pop) once d >= min_len, '\\' opens an escape, control chars (< 0x20) rejected, other chars count 1 raw + 1 decoded; esc 1: a simple escape char or 'u' + 4 hex digits; every move must leave room: n_new + missing min_len chars <= max_len; E: '"' closes only if prefix is an option, else prefix+ch must start some option; I: '-' first if lo < 0, digits while _int_viable, any other char ends the number if it is complete and in [lo, hi] and is then read by rest (hard, ~45 min)
        if kind == "L":
            _, text, pos = top
            if text[pos] == ch:
                out.add(rest if pos + 1 == len(text) else rest + (("L", text, pos + 1),))
        elif kind == "W":
            if ch == " ":
                out.add(rest)
            self.step(rest, ch, out)
        elif kind == "V":
            for seq in self._expand(top[1]):
                self.step(rest + seq, ch, out)
        elif kind == "S":
            _, lo, hi, n, d, esc = top
            # room(k, d'): after k more raw chars, the missing min_len - d' chars still fit
            if esc == 0:
                if ch == '"':
                    if d >= lo:
                        out.add(rest)
                elif ch == "\\":
                    if n + 2 + max(0, lo - d - 1) <= hi:
                        out.add(rest + (("S", lo, hi, n + 1, d, 1),))
                elif ord(ch) >= 0x20 and n + 1 + max(0, lo - d - 1) <= hi:
                    out.add(rest + (("S", lo, hi, n + 1, d + 1, 0),))
            elif esc == 1:
                if ch in _SIMPLE_ESC:
                    out.add(rest + (("S", lo, hi, n + 1, d + 1, 0),))
                elif ch == "u" and n + 5 + max(0, lo - d - 1) <= hi:
                    out.add(rest + (("S", lo, hi, n + 1, d, 5),))
            elif ch in _HEX:  # esc 5..2: hex digits of \uXXXX still to read
                out.add(rest + (("S", lo, hi, n + 1, d + (esc == 2), 0 if esc == 2 else esc - 1),))
        elif kind == "E":
            _, options, prefix = top
            if ch == '"':
                if prefix in options:
                    out.add(rest)
            elif any(o.startswith(prefix + ch) for o in options):
                out.add(rest + (("E", options, prefix + ch),))
        elif kind == "I":
            _, lo, hi, text = top
            if ch == "-" and text == "" and lo < 0:
                out.add(rest + (("I", lo, hi, "-"),))
            elif "0" <= ch <= "9":
                if _int_viable(text + ch, lo, hi):
                    out.add(rest + (("I", lo, hi, text + ch),))
            elif text not in ("", "-") and lo <= int(text) <= hi:
                self.step(rest, ch, out)
        # END SOLUTION

    def advance(self, states: frozenset[tuple], text: str) -> frozenset[tuple]:
        """The states after reading ``text`` (empty: ``text`` leads nowhere valid)."""
        for ch in text:
            nxt: set[tuple] = set()
            for st in states:
                self.step(st, ch, nxt)
            if not nxt:
                return frozenset()
            states = frozenset(nxt)
        return states

    @staticmethod
    def is_complete(states: Iterable[tuple]) -> bool:
        """True when the text read so far is a whole valid instance (some stack is empty, or
        holds only optional spaces / a finished in-range integer)."""
        def done(stack: tuple) -> bool:
            if not stack:
                return True
            top = stack[-1]
            if top[0] == "W":
                return done(stack[:-1])
            if top[0] == "I" and top[3] not in ("", "-"):
                return top[1] <= int(top[3]) <= top[2] and done(stack[:-1])
            return False
        return any(done(s) for s in states)

    def accepts(self, text: str) -> bool:
        """Whole-text validation with the automaton itself."""
        st = self.advance(self.initial(), text)
        return bool(st) and self.is_complete(st)

    def is_prefix(self, text: str) -> bool:
        return bool(self.advance(self.initial(), text))

    def max_chars(self) -> int:
        """An upper bound on the length of any accepted text."""
        def m(node: Any) -> int:
            if isinstance(node, _AnyOf):
                return max(m(a) for a in node.alts)
            if isinstance(node, _Str):
                return node.max_len + 2
            if isinstance(node, _Int):
                return max(len(str(node.lo)), len(str(node.hi)))
            if isinstance(node, _Bool):
                return 5
            return 2 + sum(len(k) + 4 + m(c) for k, c in node.props) + 2 * max(0, len(node.props) - 1)
        return m(self.root)


def _int_viable(text: str, lo: int, hi: int) -> bool:
    """Can the integer prefix ``text`` (``"-"``, ``"12"``, ``"-3"``) still become a value in [lo, hi]?"""
    neg = text.startswith("-")
    digits = text[1:] if neg else text
    if not digits:
        return neg and lo <= -1
    if len(digits) > 1 and digits[0] == "0":
        return False  # JSON forbids leading zeros
    if neg and digits == "0":
        return False  # "-0": legal JSON but never useful; refuse it
    v = int(digits)
    width = len(str(max(abs(lo), abs(hi))))
    for j in range(0, width - len(digits) + 1):
        if j and v == 0:
            break
        a, b = v * 10**j, v * 10**j + 10**j - 1 if j else v
        if neg:
            a, b = -b, -a
        if a <= hi and b >= lo:
            return True
    return False


class _Trie:
    __slots__ = ("children", "ids")

    def __init__(self) -> None:
        self.children: dict[str, _Trie] = {}
        self.ids: list[int] = []

    def add(self, text: str, tid: int) -> None:
        node = self
        for ch in text:
            node = node.children.setdefault(ch, _Trie())
        node.ids.append(tid)


class TokenIndex:
    """The vocabulary as decoded strings, arranged for fast masking.

    ``texts[i]`` is token i decoded on its own. Special tokens, and tokens that are not valid
    UTF-8 on their own (a byte-level BPE piece of a multi-byte character decodes to U+FFFD),
    are never allowed: so constrained outputs are ASCII-or-whole-characters only (a non-ASCII
    character can still be written as ``\\uXXXX``). Tokens with no ``"``, ``\\`` or control
    character are "plain": inside a free string each such token just adds ``len`` raw
    characters, so they are allowed in bulk by length (a vectorized fast path); the rest go
    through the trie walk.
    """

    def __init__(self, texts: Sequence[str], eos_id: int, special_ids: Iterable[int] = ()):
        import torch

        self.texts = list(texts)
        self.vocab_size = len(self.texts)
        self.eos_id = eos_id
        special = set(special_ids) | {eos_id}
        self.usable = [i for i, t in enumerate(self.texts) if t and i not in special and "\ufffd" not in t]
        self.trie, self.special_trie = _Trie(), _Trie()
        plain = torch.zeros(self.vocab_size, dtype=torch.bool)
        lengths = torch.full((self.vocab_size,), 10**9, dtype=torch.long)
        for i in self.usable:
            t = self.texts[i]
            self.trie.add(t, i)
            if any(c in '"\\' or ord(c) < 0x20 for c in t):
                self.special_trie.add(t, i)
            else:
                plain[i] = True
                lengths[i] = len(t)
        self.plain, self.lengths = plain, lengths
        self._cache: dict[frozenset, Any] = {}

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> TokenIndex:
        texts = [tokenizer.decode([i]) for i in range(len(tokenizer))]
        return cls(texts, tokenizer.eos_token_id, tokenizer.all_special_ids)

    def allowed_mask(self, machine: JsonSchemaMachine, states: frozenset[tuple]) -> Any:
        """A bool tensor (vocab_size,): the tokens after which the output is still a viable prefix;
        only EOS once the output is complete (our schemas' instances end with ``}``, so nothing can
        follow a complete value anyway). Cached per state set."""
        import torch

        if states in self._cache:
            return self._cache[states]
        mask = torch.zeros(self.vocab_size, dtype=torch.bool)
        if machine.is_complete(states):
            mask[self.eos_id] = True
        # BEGIN SOLUTION fast path: one state whose top is a free string ("S") with esc == 0 -> mask |= plain & (lengths <= max_len - n), then walk only special_trie; otherwise walk the whole trie: at each child char step every state (machine.step into a set), prune empty sets, allow child.ids, recurse (medium, ~25 min)
        trie = self.trie
        if len(states) == 1:
            (stack,) = states
            if stack and stack[-1][0] == "S" and stack[-1][5] == 0:
                _, _, max_len, n, _, _ = stack[-1]
                mask |= self.plain & (self.lengths <= max_len - n)
                trie = self.special_trie

        def walk(node: _Trie, cur: frozenset[tuple] | set[tuple]) -> None:
            for ch, child in node.children.items():
                nxt: set[tuple] = set()
                for st in cur:
                    machine.step(st, ch, nxt)
                if nxt:
                    if child.ids:
                        mask[child.ids] = True
                    walk(child, nxt)

        walk(trie, states)
        # END SOLUTION
        if len(self._cache) > 50_000:
            self._cache.clear()
        self._cache[states] = mask
        return mask


class JsonSchemaLogitsProcessor:
    """A ``transformers`` logits processor: every token that would make the output stop being a
    viable prefix of a schema-valid JSON text gets ``-inf``. It follows the ``LogitsProcessor``
    protocol (``__call__(input_ids, scores) -> scores``), which is all ``LogitsProcessorList`` and
    ``generate`` need; not subclassing keeps ``transformers`` out of this module's import.

    Args:
        index: the vocabulary (:class:`TokenIndex`), built once per tokenizer.
        machine: the schema automaton.
        prompt_len: tokens before generation starts (the prompt, left-padded to one length).

    ``scores``: (B, vocab) float; ``input_ids``: (B, prompt_len + generated). Each row's state is
    advanced incrementally by the text of its newest token (kept between calls).
    """

    def __init__(self, index: TokenIndex, machine: JsonSchemaMachine, prompt_len: int):
        self.index, self.machine, self.prompt_len = index, machine, prompt_len
        self.rows: dict[int, tuple[int, frozenset, bool]] = {}

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        for b in range(input_ids.shape[0]):
            gen = input_ids[b, self.prompt_len:].tolist()
            done, states, finished = self.rows.get(b, (0, self.machine.initial(), False))
            if done > len(gen):  # a new generate() call reused this processor
                done, states, finished = 0, self.machine.initial(), False
            for tid in gen[done:]:
                if finished or tid == self.index.eos_id:  # generate pads a finished row: ignore
                    finished = True
                    continue
                states = self.machine.advance(states, self.index.texts[tid])
            self.rows[b] = (len(gen), states, finished)
            if finished:
                continue
            if not states:
                raise RuntimeError(f"row {b} left the grammar: was a token sampled outside the mask?")
            mask = self.index.allowed_mask(self.machine, states)
            scores[b] = torch.where(mask, scores[b], torch.full_like(scores[b], float("-inf")))
        return scores


def load_curriculum_model(which: str = "main") -> tuple[Any, Any]:
    """The Phase 5 curriculum model (HF export) and its tokenizer, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from labkit import curriculum_model_path

    path = curriculum_model_path(which) / "hf"
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    return model, tok


def sample_tool_calls(model: Any, tok: Any, registry: ToolRegistry, question: str, n: int, *,
                      constrained: bool, index: TokenIndex | None = None, seed: int = 0,
                      temperature: float = 1.0) -> list[str]:
    """Sample ``n`` replies of the curriculum model to a ChatML prompt asking for a tool call,
    with or without the JSON-schema mask. ``max_new_tokens`` = the schema's length bound, so a
    constrained sample always finishes (every token is at least one character)."""
    import torch

    from labkit import seed_everything

    machine = JsonSchemaMachine(registry.tool_call_schema())
    chat = [{"role": "system", "content": compact_tool_prompt(registry)}, {"role": "user", "content": question}]
    prompt = [0] + tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
    block = model.config.max_position_embeddings
    max_new = min(machine.max_chars() + 1, block - len(prompt))
    if max_new < machine.max_chars() + 1:
        raise ValueError(f"prompt of {len(prompt)} tokens leaves {max_new} < {machine.max_chars() + 1} "
                         f"tokens of the {block}-token context for the tool call")
    input_ids = torch.tensor([prompt] * n)
    procs = []
    if constrained:
        from transformers import LogitsProcessorList

        index = index or TokenIndex.from_tokenizer(tok)
        procs = LogitsProcessorList([JsonSchemaLogitsProcessor(index, machine, len(prompt))])
    seed_everything(seed)
    with torch.no_grad():
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=True,
                             temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new,
                             logits_processor=procs, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
    return [tok.decode(row[len(prompt):], skip_special_tokens=True) for row in out]


class ConstrainedLocalPolicy:
    """The curriculum model run in-process, sampling one tool call per turn under the mask.

    Its prompt holds only the question and the last observation (256 tokens of context). The
    JSON is always valid; whether the *call* makes sense is up to a TinyStories model."""

    def __init__(self, model: Any, tok: Any, registry: ToolRegistry, index: TokenIndex | None = None,
                 seed: int = 0):
        self.model, self.tok, self.registry = model, tok, registry
        self.index = index or TokenIndex.from_tokenizer(tok)
        self.seed = seed

    def __call__(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> dict[str, Any]:
        question = messages[1]["content"]
        obs = observations(messages)
        self.seed += 1
        for q in ([f"{question} Last result: {obs[-1][:60]}"] if obs else []) + [question]:
            try:
                text = sample_tool_calls(self.model, self.tok, self.registry, q, 1, constrained=True,
                                         index=self.index, seed=self.seed)[0]
                return {"role": "assistant", "content": text}
            except ValueError:  # the observation did not fit in the context: drop it
                continue
        raise ValueError("the question alone does not fit in the model's context")


# =============================================================================================
# self-test
# =============================================================================================
def _validity(adapter: TypeAdapter, texts: Sequence[str]) -> float:
    ok = 0
    for t in texts:
        try:
            adapter.validate_json(t)
            ok += 1
        except ValidationError:
            pass
    return ok / max(1, len(texts))


ATTACKS_CALC = ["__import__('os').system('id')", "().__class__.__bases__[0].__subclasses__()",
                "open('/etc/passwd').read()", "exec('1')", "lambda: 1", "[x for x in range(9**9)]",
                "9**9**9", "2**100000", "(" * 60 + "1" + ")" * 60, "-" * 120 + "1", "1e308*10",
                "'a'*10**9", "True+1", "1 if 1 else 2", "2^10", "x+1", "1j**2", "10**4000*10**4000"]
ATTACKS_URL = ["file:///etc/passwd", "ftp://example.com/x", "gopher://127.0.0.1:70/", "http://127.0.0.1/",
               "http://localhost/", "http://169.254.169.254/latest/meta-data/", "http://[::1]/",
               "http://[::ffff:127.0.0.1]/", "http://10.0.0.1/", "http://192.168.1.1/", "http://0.0.0.0/",
               "http://2130706433/", "http://0x7f.1/", "http://user:pw@example.com/",
               "http://100.64.0.1/", "http://[fe80::1]/", "javascript:alert(1)", "http:///nohost"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="more samples and more local-model tasks")
    ap.add_argument("--base-url", help="an OpenAI-compatible endpoint to run the tasks against "
                                       "(default: the curriculum model served in-process by labkit.llm_server)")
    ap.add_argument("--model", default="main", help="model name at --base-url (or labkit's 'main'/'draft')")
    ap.add_argument("--api-key", default="not-needed")
    ap.add_argument("--samples", type=int, default=None, help="constrained/unconstrained samples (default 16)")
    ap.add_argument("--retriever", choices=["lab02", "keyword"], default="lab02",
                    help="search_docs backend: lab 7.2's dense pipeline (default) or the in-lab keyword one")
    args = ap.parse_args(argv)
    n_samples = args.samples or (64 if args.full else 16)

    import torch

    from labkit import seed_everything

    torch.set_num_threads(1)
    seed_everything(0)
    out_dir = HERE / "outputs"
    out_dir.mkdir(exist_ok=True)
    trace_path = out_dir / "trace.jsonl"
    trace_path.unlink(missing_ok=True)
    failures: list[str] = []
    t_start = time.perf_counter()

    # ---- 1. safe tools ----------------------------------------------------------------------
    refused_calc = 0
    for a in ATTACKS_CALC:
        try:
            safe_eval(a)
        except ToolError:
            refused_calc += 1
    refused_url = 0
    for a in ATTACKS_URL:
        try:
            check_url(a)
        except UnsafeURLError:
            refused_url += 1
    print(f"calculator attacks refused: {refused_calc}/{len(ATTACKS_CALC)}; "
          f"URL attacks refused: {refused_url}/{len(ATTACKS_URL)}")
    if refused_calc != len(ATTACKS_CALC) or refused_url != len(ATTACKS_URL):
        failures.append("an attack got through")

    # ---- 2. ten tasks with the scripted policy ----------------------------------------------
    retriever: Retriever = KeywordRetriever(AGENT_FACTS)
    if args.retriever == "lab02":
        try:
            retriever = lab02_retriever()
        except Exception as e:  # lab 7.2 missing or broken: say so, keep going with the keyword retriever
            print(f"lab 7.2's pipeline unavailable ({e.__class__.__name__}: {e}); using KeywordRetriever")
            args.retriever = "keyword"
    with serve_in_thread(make_demo_app()) as base:
        port = int(base.rsplit(":", 1)[1])
        registry = build_registry(retriever, FetchPolicy(allow=frozenset({f"127.0.0.1:{port}"}), timeout_s=2))
        tasks = make_tasks(base)
        rows = []
        for i, task in enumerate(tasks):
            tracer = Tracer(trace_path, run_id=f"scripted-{i}")
            r = run_agent(task.question, ScriptedPolicy(task.plan), registry, tracer=tracer)
            rows.append((task, r))
        solved = sum(t.solved_by(r.answer) for t, r in rows)
        print(f"\nscripted policy, search_docs = {args.retriever}: {solved}/{len(tasks)} tasks solved")
        print(f"{'#':>2}  {'steps':>5}  {'tools':>5}  {'bad out':>7}  {'solved':>6}  answer")
        for i, (t, r) in enumerate(rows):
            print(f"{i:>2}  {r.steps:>5}  {r.tool_calls:>5}  {r.output_errors:>7}  {t.solved_by(r.answer)!s:>6}  "
                  f"{r.answer}")
        if solved != len(tasks):
            failures.append("scripted policy did not solve every task")
        n_lines = sum(1 for _ in trace_path.open(encoding="utf-8"))
        print(f"trace: {n_lines} JSON lines in {trace_path.relative_to(HERE)}")

    # ---- 3. constrained vs unconstrained sampling from the curriculum model -----------------
    model, tok = load_curriculum_model("main")
    t0 = time.perf_counter()
    index = TokenIndex.from_tokenizer(tok)
    t_index = time.perf_counter() - t0
    adapter = registry.call_adapter()
    q = "What is 1400 divided by 225?"
    t0 = time.perf_counter()
    free = sample_tool_calls(model, tok, registry, q, n_samples, constrained=False, seed=1)
    t_free = time.perf_counter() - t0
    t0 = time.perf_counter()
    cons = sample_tool_calls(model, tok, registry, q, n_samples, constrained=True, index=index, seed=1)
    t_cons = time.perf_counter() - t0
    v_free, v_cons = _validity(adapter, free), _validity(adapter, cons)
    print(f"\ncurriculum model, {n_samples} samples at temperature 1.0 (token index built in {t_index:.2f} s):")
    print(f"{'decoding':<14} {'schema-valid':>12} {'wall s':>7}")
    print(f"{'unconstrained':<14} {v_free:>12.0%} {t_free:>7.2f}")
    print(f"{'constrained':<14} {v_cons:>12.0%} {t_cons:>7.2f}")
    print(f"  unconstrained sample: {free[0][:70]!r}")
    print(f"  constrained sample:   {cons[0][:70]!r}")
    if v_cons != 1.0:
        failures.append("a constrained sample failed validation")
    if v_free == 1.0:
        failures.append("unconstrained sampling was always valid: the comparison shows nothing")

    # ---- 4. the LLM path: an OpenAI-compatible endpoint ------------------------------------
    base_tasks = make_tasks(None)
    n_llm = len(base_tasks) if args.full else 3

    def run_llm(client: Any, model_name: str) -> None:
        policy = ChatCompletionsPolicy(client, model_name, native_tools=True)
        policy.registry = registry
        ok = errors = calls = 0
        for i, task in enumerate(base_tasks[:n_llm]):
            r = run_agent(task.question, policy, registry, max_iterations=3,
                          tracer=Tracer(trace_path, run_id=f"llm-{i}"))
            ok += task.solved_by(r.answer)
            errors += r.output_errors
            calls += r.steps
        print(f"\nLLM path ({model_name} via {client.base_url}): native tools "
              f"{'refused (400) -> prompt mode' if policy.fallbacks else 'used'}; "
              f"{calls} model replies, {errors} invalid actions fed back ({errors / max(1, calls):.0%}); "
              f"tasks solved {ok}/{n_llm}")

    try:
        import openai

        if args.base_url:
            run_llm(openai.OpenAI(base_url=args.base_url, api_key=args.api_key), args.model)
        else:
            from labkit.llm_server import serve_in_thread as serve_llm

            with serve_llm(model=args.model) as ep:
                run_llm(ep.client(), ep.model)
    except ImportError as e:
        print(f"\nLLM path skipped: {e}")

    # ---- 5. the curriculum model as the agent, under the mask -------------------------------
    n_local = len(base_tasks) if args.full else 2
    local = ConstrainedLocalPolicy(model, tok, registry, index=index, seed=0)
    ok = calls = bad = 0
    for i, task in enumerate(base_tasks[:n_local]):
        r = run_agent(task.question, local, registry, max_iterations=3,
                      tracer=Tracer(trace_path, run_id=f"local-{i}"))
        ok += task.solved_by(r.answer)
        calls += r.steps
        bad += r.output_errors
    print(f"constrained local policy: {calls} model replies, {bad} invalid actions; tasks solved {ok}/{n_local}")
    if bad:
        failures.append("the constrained policy produced an invalid action")

    print(f"\nself-test wall time {time.perf_counter() - t_start:.1f} s")
    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

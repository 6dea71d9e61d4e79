# Generated from solution.py by `make labs` (labkit/labgen.py). Fill in the TODOs.
"""Lab 9.3: a continuous-batching inference server with SSE streaming.

An OpenAI-compatible HTTP server (FastAPI + uvicorn) in front of an asyncio engine loop that
runs the curriculum model (Phase 5's MiniGPT, imported from Phase 4 by path) the way vLLM, TGI
and SGLang run theirs: **continuous batching** (Yu et al., "Orca", OSDI 2022). Every iteration
of the loop

1. evicts the sequences that finished (end-of-sequence token, a stop string, ``max_tokens``)
   or whose client went away, and drops their rows from the batched KV cache;
2. admits waiting requests up to ``max_batch_size``: one batched *prefill* forward over their
   left-padded prompts gives each its first token and its KV rows, which are merged into the
   running batch;
3. runs one batched *decode* step: every running sequence feeds its last token, reads its own
   cached keys and values, and gets its next token.

Sequences of different lengths share one cache tensor per layer, (B, n_kv_head, T, d_head),
LEFT-padded to a common length T: an ``attention_mask`` (B, T) hides the padding and each row
gets its own ``position_ids`` (its real token count), so a row's numbers are those of the same
sequence decoded alone. That is what makes "greedy under batching == greedy alone" a testable
promise, and what this lab's grader checks against Hugging Face ``generate``.

Endpoints: ``POST /v1/completions`` and ``POST /v1/chat/completions`` (``stream`` true: SSE
``data: {chunk}`` lines then ``data: [DONE]``), ``GET /v1/models``, ``GET /healthz`` (with the
engine's counters). Parameters: ``max_tokens``, ``temperature`` (0 = greedy), ``top_p``,
``stop`` (up to 4 strings, never part of the output), ``seed`` (a per-request generator).
The waiting queue is bounded: a full queue answers 429 and a stopped or failed engine 503, both
with ``Retry-After``. Errors use OpenAI's JSON shape; the request models and error class are
imported from ``labkit.llm_server`` (the simple one-request-at-a-time server of Phases 6-8).

A load generator (async ``httpx``) measures time to first token (TTFT), inter-token latency
(ITL) and aggregate throughput, and the self-test compares continuous batching with sequential
serving (the same engine with ``max_batch_size=1``) over client concurrency.

Run:  python solution.py            (self-test: exactness, load test, throughput PNG; ~1 min)
      python solution.py --serve --port 8000   (a server for curl / the openai client)
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from labkit import load_lab, seed_everything
from labkit.llm_server import ChatRequest, Common, CompletionRequest, OpenAIError, _error_body


class CompletionBody(CompletionRequest):
    """labkit.llm_server's request model plus vLLM's ``ignore_eos`` extension."""

    ignore_eos: bool = False


class ChatBody(ChatRequest):
    ignore_eos: bool = False

HERE = Path(__file__).resolve().parent
gpt = load_lab("phase-04-attention-transformers/lab-04-mini-transformer")  # MiniGPT, extended by import
kv_lab = load_lab("phase-09-inference-optimization/lab-01-kv-cache")        # KVCache, extended here

__all__ = [
    "BatchKVCache", "Engine", "EngineUnavailable", "Event", "QueueFull", "RequestResult", "SamplingParams",
    "SeqState", "TextAssembler", "create_app", "decode_step", "load_served_model", "prefill", "run_load",
    "sample_next", "serve_in_thread", "summarize",
]

PAD_ID = 3  # <|pad|> in the curriculum tokenizer; any id works, padded columns are masked out


# ---------------------------------------------------------------------------------------------
# 1. The batched, left-padded KV cache
# ---------------------------------------------------------------------------------------------


class BatchKVCache(kv_lab.KVCache):
    """Lab 9.1's dynamic :class:`KVCache` for a batch of sequences of different lengths,
    LEFT-padded to one length T.

    Per layer (inherited): ``keys[l]`` and ``values[l]``, each (B, n_kv_head, T, d_head), as
    MiniGPT's attention hands them over (after RoPE, before the GQA repeat), grown by ``update``
    and measured by ``get_seq_length`` (padding included: it is the tensors' time length). Added
    here: ``mask`` (B, T) int64, 1 where a column holds a real token of that row and 0 where it
    is padding; the padding of a row is always on its LEFT, so its real tokens are its last
    ``mask[b].sum()`` columns. :func:`prefill` and :func:`decode_step` keep ``mask`` in step with
    the tensors; the engine changes the batch between forwards with :meth:`concat` (admit rows)
    and :meth:`select` (evict rows).
    """

    def __init__(self) -> None:
        super().__init__()
        self.mask: torch.Tensor | None = None

    # -- batch bookkeeping -------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[0])

    def lengths(self) -> torch.Tensor:
        """Real (unpadded) tokens per row, int64 (B,): also the position of each row's next token."""
        if self.mask is None:
            return torch.zeros(0, dtype=torch.int64)
        return self.mask.sum(dim=1)

    @staticmethod
    def concat(caches: Sequence[BatchKVCache]) -> BatchKVCache:
        """One cache holding the rows of ``caches`` in order (how the engine admits prefilled
        requests into the running batch).

        Every cache is LEFT-padded to the longest one's T: zeros in keys and values and 0 in the
        mask for the new columns, so each row's real tokens stay its last columns.

        Raises:
            ValueError: no caches, an empty cache, or caches with different layer counts.
        """
        caches = list(caches)
        if not caches:
            raise ValueError("concat needs at least one cache")
        if any(c.mask is None or not c.keys for c in caches):
            raise ValueError("concat got an empty cache (run a prefill into it first)")
        if len({len(c.keys) for c in caches}) != 1:
            raise ValueError(f"caches have different layer counts: {[len(c.keys) for c in caches]}")
        # TODO(1): T = the largest get_seq_length(); for each cache left-pad every layer's keys/values with zeros (F.pad on the time dim, dim -2) and its mask with 0 columns to T; torch.cat the rows (dim 0) of every layer and of the masks (medium, ~20 min)
        raise NotImplementedError("TODO(1)")

    def select(self, rows: Sequence[int]) -> BatchKVCache | None:
        """A cache with only ``rows`` (indices into this batch, in that order), or ``None`` when
        ``rows`` is empty: how the engine evicts finished sequences.

        Columns that are padding in EVERY kept row are cut from the left, so the cache is never
        longer than its longest kept sequence (without that trim, one long request would keep
        every later one paying attention over its old padding).

        Raises:
            IndexError: a row outside [0, batch_size).
        """
        rows = list(rows)
        if any(not 0 <= r < self.batch_size for r in rows):
            raise IndexError(f"rows {rows} out of range for a batch of {self.batch_size}")
        if not rows:
            return None
        # TODO(2): index the rows (index_select / tensor indexing on dim 0) of the mask and of every layer's keys/values; the shared left padding is T - the longest kept row's length (mask.sum(1).max()); slice those columns off the time dim (medium, ~15 min)
        raise NotImplementedError("TODO(2)")


# ---------------------------------------------------------------------------------------------
# 2. Batched prefill and decode on MiniGPT
# ---------------------------------------------------------------------------------------------


@torch.inference_mode()
def prefill(model: torch.nn.Module, prompts: Sequence[Sequence[int]]) -> tuple[torch.Tensor, BatchKVCache]:
    """Run the prompts of newly admitted requests through ``model`` in ONE forward.

    The prompts are LEFT-padded with ``PAD_ID`` to the longest one; the ``attention_mask`` (1 for
    real tokens) hides the padding and gives each row its own positions (MiniGPT derives them
    from the mask, HF's convention), so every row gets the logits of its prompt alone.

    Args:
        model: a MiniGPT in eval mode.
        prompts: lists of token ids, each non-empty, each shorter than the model's block_size.

    Returns:
        ``(logits, cache)``: logits (B, vocab_size) float32 of each prompt's LAST token (the
        distribution of its first new token), and a :class:`BatchKVCache` holding the prompts'
        keys and values with its ``mask``.

    Raises:
        ValueError: no prompts, an empty prompt, a prompt of block_size tokens or more.
        TypeError: a prompt that is not a sequence of ints.
    """
    prompts = [list(p) for p in prompts]
    if not prompts:
        raise ValueError("prefill needs at least one prompt")
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {i} is empty: a prompt needs at least one token (e.g. BOS)")
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            raise TypeError(f"prompt {i} must be a list of int token ids")
        if len(p) >= model.config.block_size:
            raise ValueError(f"prompt {i} has {len(p)} tokens; the model's context is {model.config.block_size}")
    # TODO(3): T = longest prompt; idx (B, T) filled with PAD_ID and mask (B, T) zeros, each prompt written into its row's LAST len(p) columns (mask 1 there); cache = BatchKVCache(); model(idx, attention_mask=mask, past_key_values=cache, logits_to_keep=1); cache.mask = mask; return logits[:, -1], cache (medium, ~20 min)
    raise NotImplementedError("TODO(3)")


@torch.inference_mode()
def decode_step(model: torch.nn.Module, cache: BatchKVCache, tokens: torch.Tensor) -> torch.Tensor:
    """One decode step for the whole running batch: feed each row's last token, get its next logits.

    Row b's new token sits at absolute position ``cache.lengths()[b]`` (its real token count),
    whatever the padding; its mask column is 1. ``cache`` grows by one column (tensors and mask).

    Args:
        model: a MiniGPT in eval mode.
        cache: the running batch's cache (B rows).
        tokens: int64 (B,) the token each row feeds.

    Returns:
        logits (B, vocab_size) float32.

    Raises:
        ValueError: ``tokens`` is not (B,) for the cache's B, or a row would pass block_size.
    """
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 1 or tokens.shape[0] != cache.batch_size:
        raise ValueError(f"tokens must be a 1-D tensor with one id per cache row ({cache.batch_size}), got "
                         f"{getattr(tokens, 'shape', type(tokens))}")
    if cache.batch_size and int(cache.lengths().max()) >= model.config.block_size:
        raise ValueError(f"a sequence reached the model's context ({model.config.block_size} tokens)")
    # TODO(4): positions = cache.lengths() BEFORE growing the mask; mask = cat(cache.mask, a column of ones); model(tokens[:, None], attention_mask=mask, position_ids=positions[:, None], past_key_values=cache, logits_to_keep=1); cache.mask = mask; return logits[:, -1] (medium, ~15 min)
    raise NotImplementedError("TODO(4)")


# ---------------------------------------------------------------------------------------------
# 3. Sampling and text
# ---------------------------------------------------------------------------------------------


@dataclass
class SamplingParams:
    """What one request asked for. ``temperature`` 0 = greedy; ``stop`` strings end the text
    (and are not part of it); ``seed`` makes a sampled request reproducible; ``ignore_eos`` (vLLM's
    extension, used by load tests) keeps generating past end-of-sequence to exactly ``max_tokens``."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an int >= 1, got {self.max_tokens!r}")
        if (not isinstance(self.temperature, (int, float)) or isinstance(self.temperature, bool)
                or not math.isfinite(self.temperature) or self.temperature < 0):
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or isinstance(self.top_p, bool) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise TypeError(f"seed must be an int or None, got {type(self.seed).__name__}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if not all(isinstance(s, str) for s in self.stop):
            raise TypeError("stop must be a string or a list of strings")
        self.stop = [s for s in self.stop if s]


def sample_next(logits: torch.Tensor, params: Sequence[SamplingParams],
                generators: Sequence[torch.Generator | None]) -> list[int]:
    """The next token of every row, each with its own request's settings and generator.

    Row b: ``temperature == 0`` -> argmax (greedy). Otherwise divide the logits by the
    temperature, keep the nucleus (the smallest set of most likely tokens whose probability
    reaches ``top_p``; the most likely token always stays: HF's ``TopPLogitsWarper`` rule), and
    draw from the renormalised softmax with ``generators[b]`` (so a seeded request gets the same
    tokens whatever else is in the batch).

    Args:
        logits: (B, vocab_size) float.
        params, generators: one per row.

    Returns:
        B token ids (Python ints).

    Raises:
        ValueError: ``logits`` not 2-D, or ``params`` / ``generators`` not of length B.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError(f"logits must be (B, vocab_size), got {getattr(logits, 'shape', type(logits))}")
    if len(params) != logits.shape[0] or len(generators) != logits.shape[0]:
        raise ValueError(f"need one SamplingParams and one generator per row ({logits.shape[0]}), got "
                         f"{len(params)} and {len(generators)}")
    # TODO(5): batch argmax for all rows first; then for each row with temperature > 0: logits / T, sort descending, cumulative softmax, drop tokens whose cumulative probability BEFORE them already reaches top_p (keep the first), softmax, torch.multinomial(probs, 1, generator=g) (medium, ~20 min)
    raise NotImplementedError("TODO(5)")


class TextAssembler:
    """Turns a request's token stream into the text a client may see, piece by piece.

    ``push(token_id)`` decodes the whole output so far (BPE pieces can merge, and a character can
    span tokens, so decoding token by token is wrong) and returns the NEW text that is safe to
    send. Text is held back while it could still be the start of a stop string (``max(len(s)) -
    1`` characters) or ends in an unfinished UTF-8 character (U+FFFD). When a stop string appears,
    the text is cut before it and ``stopped`` becomes True. ``flush()`` returns what was held
    back when generation ends for another reason.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.text = ""          # the decoded output so far (cut at the stop string once stopped)
        self.sent = 0           # characters of self.text already returned
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add one token; return the text that became safe to send (may be empty)."""
        if self.stopped:
            raise RuntimeError("this output already hit a stop string")
        # TODO(6): append, decode all ids (skip_special_tokens=True); search each stop string from max(0, sent - len(s) + 1); if found: cut text at the earliest hit, stopped = True, return text[sent:cut]; else ready = len(text) - (longest stop - 1), back off over trailing U+FFFD, return text[sent:ready] and advance sent (medium, ~20 min)
        raise NotImplementedError("TODO(6)")

    def flush(self) -> str:
        """The held-back rest of the text (call once, when generation ends without a stop string)."""
        piece, self.sent = self.text[self.sent:], len(self.text)
        return piece


# ---------------------------------------------------------------------------------------------
# 4. The engine: requests, scheduling, the asyncio loop
# ---------------------------------------------------------------------------------------------


class QueueFull(Exception):
    """The waiting queue is at ``max_waiting``: answer 429 and ask the client to retry later."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineUnavailable(Exception):
    """The engine is stopped, draining, or failed: answer 503."""


@dataclass
class Event:
    """One message from the engine to a request's HTTP handler: a text piece, or (last) the
    finish reason (``stop``, ``length``, ``cancelled``, ``error``) and the token counts."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class SeqState:
    """One request inside the engine: its prompt, settings, generated ids, and event queue."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams, tokenizer: Any,
                 eos_token_ids: Sequence[int], loop: asyncio.AbstractEventLoop | None) -> None:
        self.rid = uuid.uuid4().hex[:16]
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.eos_token_ids = set(eos_token_ids)
        self.generator = None
        if params.temperature > 0:
            seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(4), "little")
            self.generator = torch.Generator().manual_seed(seed)
        self.assembler = TextAssembler(tokenizer, params.stop)
        self.out_ids: list[int] = []
        self.finish_reason: str | None = None
        self.cancelled = False
        self.t_arrival = time.perf_counter()
        self.t_first_token: float | None = None
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self._loop = loop

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.cancelled

    @property
    def last_token(self) -> int:
        return self.out_ids[-1]

    def _push(self, event: Event) -> None:
        # the engine steps in a worker thread; asyncio queues are only safe on their loop's thread
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self.events.put_nowait, event)
        else:
            self.events.put_nowait(event)

    def append_token(self, token_id: int) -> None:
        """Record a sampled token: end-of-sequence, a stop string or ``max_tokens`` finishes the
        sequence; new text (if any) and the final event go to the handler's queue."""
        if self.finish_reason is not None:
            raise RuntimeError(f"sequence {self.rid} is already finished")
        if self.cancelled:  # its client left while this step was running; the next step evicts it
            return
        if self.t_first_token is None:
            self.t_first_token = time.perf_counter()
        if token_id in self.eos_token_ids and not self.params.ignore_eos:
            self.finish("stop")
            return
        self.out_ids.append(int(token_id))
        piece = self.assembler.push(token_id)
        if piece:
            self._push(Event(text=piece))
        if self.assembler.stopped:
            self.finish("stop")
        elif len(self.out_ids) >= self.params.max_tokens:
            self.finish("length")

    def finish(self, reason: str) -> None:
        if self.finish_reason is not None:
            return
        self.finish_reason = reason
        rest = self.assembler.flush() if reason in ("stop", "length") and not self.assembler.stopped else ""
        if rest:
            self._push(Event(text=rest))
        self._push(Event(finish_reason=reason, prompt_tokens=len(self.prompt_ids),
                         completion_tokens=len(self.out_ids)))


class Engine:
    """Continuous batching over a MiniGPT: a bounded waiting queue, a running batch with one
    :class:`BatchKVCache`, and :meth:`step`, one scheduler iteration.

    ``max_batch_size=1`` turns it into sequential serving (one request at a time, each decoded
    alone with its KV cache): the baseline of the benchmark.

    Threading: :meth:`submit` and :meth:`cancel` run on the event loop; :meth:`step` runs in one
    worker thread (a forward pass would block the loop, and with it every stream). ``waiting`` is
    a deque (atomic append/popleft) and cancellation is a flag the next step reads, so the two
    sides never need a lock.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, max_batch_size: int = 16, max_waiting: int = 64,
                 eos_token_ids: Sequence[int] = (0, 2)) -> None:
        for name, v in (("max_batch_size", max_batch_size), ("max_waiting", max_waiting)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch_size, self.max_waiting = max_batch_size, max_waiting
        self.eos_token_ids = tuple(eos_token_ids)
        self.context_length = int(model.config.block_size)
        self.waiting: deque[SeqState] = deque()
        self.running: list[SeqState] = []
        self.cache: BatchKVCache | None = None
        self.stats = {"steps": 0, "prefills": 0, "admitted": 0, "admitted_mid_batch": 0, "finished": 0,
                      "cancelled": 0, "tokens": 0, "max_running": 0, "batch_rows": 0}
        self.error: BaseException | None = None
        self._accepting = True
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._step_seconds = 0.02  # a running estimate, for Retry-After

    # -- requests ----------------------------------------------------------------------------------
    def submit(self, prompt_ids: Sequence[int], params: SamplingParams) -> SeqState:
        """Queue a request; return its :class:`SeqState` (read ``events`` for the output).

        Raises:
            EngineUnavailable: the engine is stopped or failed (HTTP 503).
            QueueFull: ``max_waiting`` requests are already waiting (HTTP 429).
            ValueError: empty prompt, or prompt + max_tokens longer than the model's context.
        """
        if self.error is not None or not self._accepting:
            raise EngineUnavailable("the engine is not running" if self.error is None
                                    else f"the engine failed: {self.error!r}")
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if len(prompt_ids) + params.max_tokens > self.context_length:
            raise ValueError(f"prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the "
                             f"model's context of {self.context_length} tokens")
        if len(self.waiting) >= self.max_waiting:
            raise QueueFull(f"the server is busy: {len(self.waiting)} requests are waiting", self.retry_after())
        seq = SeqState(list(prompt_ids), params, self.tokenizer, self.eos_token_ids, self._loop)
        self.waiting.append(seq)
        if self._wake is not None:
            self._wake.set()
        return seq

    def cancel(self, seq: SeqState) -> None:
        """Stop generating for ``seq`` (its client went away); the next step frees its row."""
        seq.cancelled = True
        if self._wake is not None:
            self._wake.set()

    def retry_after(self) -> int:
        """Seconds a refused client should wait: roughly the time to drain one batch's worth of queue."""
        per_request = self._step_seconds * 64
        return max(1, math.ceil(per_request * len(self.waiting) / self.max_batch_size))

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    # -- one scheduler iteration ---------------------------------------------------------------------
    def _evict(self) -> None:
        """Drop finished and cancelled sequences from ``running`` and their rows from the cache."""
        keep = [i for i, s in enumerate(self.running) if not s.done]
        if len(keep) == len(self.running):
            return
        for s in self.running:
            if s.done:
                if s.cancelled and s.finish_reason is None:
                    s.finish("cancelled")
                self.stats["cancelled" if s.finish_reason == "cancelled" else "finished"] += 1
        self.running = [self.running[i] for i in keep]
        self.cache = self.cache.select(keep) if keep else None

    def step(self) -> int:
        """One iteration of continuous batching; returns how many tokens it produced.

        1. evict finished/cancelled sequences (:meth:`_evict`);
        2. admit: pop waiting requests (skipping cancelled ones: finish them as ``cancelled``)
           while ``len(running) + admitted < max_batch_size``; :func:`prefill` them in one forward,
           :func:`sample_next` their first tokens, merge their cache rows after the running ones
           (:meth:`BatchKVCache.concat`), append them to ``running`` and hand each its token
           (``SeqState.append_token``); evict again (a request may finish on its first token);
        3. decode: if anything runs, one :func:`decode_step` feeding every row's ``last_token``,
           then :func:`sample_next` and ``append_token`` per row.

        Counts ``stats``: steps, prefills, admitted, admitted_mid_batch (admitted while others
        were already running: the point of continuous batching), tokens, max_running, batch_rows.
        """
        t0 = time.perf_counter()
        produced = 0
        # TODO(7): evict; admit up to max_batch_size (cancelled waiting ones -> finish("cancelled")); prefill + sample the new ones, concat caches (running rows first), extend running, append_token; evict; then one decode_step over all running rows on their last_token, sample, append_token; update stats (hard, ~40 min)
        raise NotImplementedError("TODO(7)")
        self._step_seconds = 0.9 * self._step_seconds + 0.1 * (time.perf_counter() - t0)
        return produced

    # -- the asyncio loop -------------------------------------------------------------------------------
    async def run(self) -> None:
        """Step while there is work, sleep on an event when there is none. Each step runs in a
        single worker thread so the event loop keeps accepting requests and streaming tokens.
        A step that raises fails every request (``error``) and makes the engine answer 503."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._accepting = True
        for seq in self.waiting:  # submitted before the loop existed
            seq._loop = self._loop
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-step")
        try:
            while self._accepting or self.has_work:
                if not self.has_work:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                try:
                    await self._loop.run_in_executor(executor, self.step)
                except Exception as exc:  # noqa: BLE001 - a broken engine must not leave clients hanging
                    self.error = exc
                    for seq in [*self.running, *self.waiting]:
                        seq.finish("error")
                    self.running, self.cache = [], None
                    self.waiting.clear()
                    print(f"engine step failed: {exc!r}", file=sys.stderr)
                    return
        finally:
            executor.shutdown(wait=True)

    def stop(self) -> None:
        """Refuse new requests (503); :meth:`run` returns once the running ones are done."""
        self._accepting = False
        if self._wake is not None:
            self._wake.set()

    def snapshot(self) -> dict[str, Any]:
        return {"running": len(self.running), "waiting": len(self.waiting), "max_batch_size": self.max_batch_size,
                "max_waiting": self.max_waiting, "error": None if self.error is None else repr(self.error),
                **self.stats}


# ---------------------------------------------------------------------------------------------
# 5. The HTTP layer (given): OpenAI-compatible routes over the engine
# ---------------------------------------------------------------------------------------------


def load_served_model(name: str = "main") -> tuple[torch.nn.Module, Any]:
    """The curriculum model as (MiniGPT in eval mode, its HF tokenizer) from ``curriculum_model_path``."""
    from transformers import AutoTokenizer

    from labkit import curriculum_model_path

    path = curriculum_model_path(name)
    nano = load_lab("phase-05-training-small-llms/lab-02-nano-gpt")
    model, _ = nano.load_checkpoint(path / "minigpt.pt")
    return model.eval(), AutoTokenizer.from_pretrained(path / "hf")


def create_app(engine: Engine, model_name: str = "curriculum-main"):
    """The FastAPI app: OpenAI routes over ``engine``, whose loop starts and stops with the app."""
    @contextlib.asynccontextmanager
    async def lifespan(_app):
        task = asyncio.create_task(engine.run())
        try:
            yield
        finally:
            engine.stop()
            for seq in [*engine.running, *engine.waiting]:
                engine.cancel(seq)
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=10)

    app = FastAPI(title=f"continuous-batching server for {model_name}", lifespan=lifespan)

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
        headers = {"Retry-After": str(exc.retry_after)} if getattr(exc, "retry_after", None) else None
        return JSONResponse(_error_body(exc.status, exc.message, exc.param, exc.code, exc.type),
                            status_code=exc.status, headers=headers)

    def submit(req: Common, prompt_ids: list[int]) -> SeqState:
        if req.model != model_name:
            raise OpenAIError(404, f"The model '{req.model}' does not exist; this server serves '{model_name}'",
                              "model", "model_not_found")
        if req.n != 1:
            raise OpenAIError(400, "n > 1 is not supported by this server", "n")
        if req.tools or req.functions:
            raise OpenAIError(400, "this model cannot call tools", "tools")
        if req.logprobs:
            raise OpenAIError(400, "logprobs are not supported by this server", "logprobs")
        budget = engine.context_length - len(prompt_ids)
        asked = req.max_completion_tokens or req.max_tokens
        if budget < 1 or (asked is not None and asked > budget):
            raise OpenAIError(400, f"This model's maximum context length is {engine.context_length} tokens; the "
                              f"prompt has {len(prompt_ids)} tokens and {asked or 1} were requested for the "
                              "completion. Shorten the prompt or lower max_tokens.", "max_tokens",
                              "context_length_exceeded")
        try:
            params = SamplingParams(max_tokens=asked if asked is not None else min(budget, 256),
                                    temperature=req.temperature, top_p=req.top_p, seed=req.seed, stop=req.stop or [],
                                    ignore_eos=bool(getattr(req, "ignore_eos", False)))
            return engine.submit(prompt_ids, params)
        except (ValueError, TypeError) as exc:
            raise OpenAIError(400, str(exc)) from exc
        except QueueFull as exc:
            err = OpenAIError(429, str(exc), None, "server_busy", "rate_limit_error")
            err.retry_after = exc.retry_after
            raise err from exc
        except EngineUnavailable as exc:
            err = OpenAIError(503, str(exc), None, "engine_unavailable", "server_error")
            err.retry_after = 5
            raise err from exc

    async def respond(seq: SeqState, req: Common, kind: str, request: Request):
        rid, created = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{seq.rid}", int(time.time())
        obj = "chat.completion" if kind == "chat" else "text_completion"

        def usage(ev: Event) -> dict[str, int]:
            return {"prompt_tokens": ev.prompt_tokens, "completion_tokens": ev.completion_tokens,
                    "total_tokens": ev.prompt_tokens + ev.completion_tokens}

        if not req.stream:
            pieces: list[str] = []
            while True:
                try:
                    ev = await asyncio.wait_for(seq.events.get(), timeout=0.5)
                except TimeoutError:
                    if await request.is_disconnected():
                        engine.cancel(seq)
                        return JSONResponse({}, status_code=499)
                    continue
                if ev.finish_reason is None:
                    pieces.append(ev.text)
                    continue
                if ev.finish_reason == "error":
                    raise OpenAIError(500, "the engine failed while generating", None, None, "server_error")
                text = "".join(pieces)
                choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                           "finish_reason": ev.finish_reason} if kind == "chat" else
                          {"index": 0, "text": text, "logprobs": None, "finish_reason": ev.finish_reason})
                return {"id": rid, "object": obj, "created": created, "model": model_name, "choices": [choice],
                        "usage": usage(ev)}

        include_usage = bool((req.stream_options or {}).get("include_usage"))

        def chunk(delta: str | None, finish: str | None, *, first: bool = False) -> str:
            if kind == "chat":
                d = {"role": "assistant", "content": ""} if first else ({} if delta is None else {"content": delta})
                choice = {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}
            body = {"id": rid, "object": f"{obj}.chunk" if kind == "chat" else obj, "created": created,
                    "model": model_name, "choices": [choice]}
            return f"data: {json.dumps(body)}\n\n"

        async def sse() -> AsyncIterator[str]:
            try:
                if kind == "chat":
                    yield chunk(None, None, first=True)
                while True:
                    ev = await seq.events.get()
                    if ev.finish_reason is None:
                        yield chunk(ev.text, None)
                        continue
                    yield chunk(None, ev.finish_reason)
                    if include_usage:
                        body = {"id": rid, "object": f"{obj}.chunk" if kind == "chat" else obj,
                                "created": created, "model": model_name, "choices": [], "usage": usage(ev)}
                        yield f"data: {json.dumps(body)}\n\n"
                    break
                yield "data: [DONE]\n\n"
            finally:  # the client went away (or we are done): free the slot either way
                if not seq.done:
                    engine.cancel(seq)

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def with_bos(ids: list[int]) -> list[int]:
        bos = engine.tokenizer.bos_token_id
        return ids if bos is None or (ids and ids[0] == bos) else [bos, *ids]

    @app.post("/v1/completions")
    async def completions(req: CompletionBody, request: Request):
        prompt = req.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise OpenAIError(400, "send one prompt per request to this server", "prompt")
            prompt = prompt[0]
        prompt_ids = with_bos(engine.tokenizer.encode(prompt, add_special_tokens=False))
        return await respond(submit(req, prompt_ids), req, "completion", request)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatBody, request: Request):
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
        text = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = with_bos(engine.tokenizer.encode(text, add_special_tokens=False))
        return await respond(submit(req, prompt_ids), req, "chat", request)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "curriculum", "max_model_len": engine.context_length}]}

    @app.get("/healthz")
    async def healthz():
        snap = engine.snapshot()
        return JSONResponse({"status": "ok" if snap["error"] is None else "failed", "model": model_name, **snap,
                             "process_cpu_s": time.process_time()},
                            status_code=200 if snap["error"] is None else 503)

    app.state.engine, app.state.model_name = engine, model_name
    return app


@contextlib.contextmanager
def serve_in_thread(engine: Engine, *, model_name: str = "curriculum-main", host: str = "127.0.0.1",
                    port: int = 0, startup_timeout: float = 60.0) -> Iterator[Any]:
    """Run uvicorn over :func:`create_app` in a background thread; yield a ``labkit.llm_server.Endpoint``
    (``base_url`` ends in ``/v1``; ``.client()`` is an ``openai.OpenAI``); stop it on exit.
    ``port=0`` binds a free port before uvicorn starts (no race)."""
    from labkit.llm_server import serve_app

    with serve_app(create_app(engine, model_name), model_name=model_name, host=host, port=port,
                   startup_timeout=startup_timeout, thread_name="cb-server") as ep:
        yield ep


# ---------------------------------------------------------------------------------------------
# 6. The load generator
# ---------------------------------------------------------------------------------------------


@dataclass
class RequestResult:
    """One streamed request as the client saw it (times in seconds from the run's start)."""

    t_start: float
    t_first: float | None = None            # first non-empty text chunk
    chunk_times: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    text: str = ""
    finish_reason: str | None = None
    status: int = 200
    error: str | None = None


async def _one_request(client: Any, url: str, body: dict, t0: float) -> RequestResult:
    res = RequestResult(t_start=time.perf_counter() - t0)
    async with client.stream("POST", url, json=body) as resp:
        res.status = resp.status_code
        if resp.status_code != 200:
            res.error = (await resp.aread()).decode("utf-8", "replace")
            return res
        async for line in resp.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: "):]
            if data == "[DONE]":
                break
            msg = json.loads(data)
            if msg.get("usage"):
                res.completion_tokens = msg["usage"]["completion_tokens"]
            for choice in msg.get("choices", []):
                piece = choice.get("text") or (choice.get("delta") or {}).get("content") or ""
                if piece:
                    now = time.perf_counter() - t0
                    res.t_first = res.t_first if res.t_first is not None else now
                    res.chunk_times.append(now)
                    res.text += piece
                res.finish_reason = choice.get("finish_reason") or res.finish_reason
    return res


async def run_load(base_url: str, model: str, prompts: Sequence[str], *, concurrency: int, max_tokens: int,
                   temperature: float = 0.0, ignore_eos: bool = True, timeout: float = 120.0
                   ) -> tuple[list[RequestResult], float]:
    """Send every prompt once to ``/v1/completions`` (streamed, usage included), at most
    ``concurrency`` in flight (a new one starts as soon as one ends: a closed-loop load test).
    ``ignore_eos`` (default True, as in vLLM's benchmarks) makes every request produce exactly
    ``max_tokens`` tokens, so runs differ only in how they are served.

    Returns:
        (results in prompt order, wall seconds of the whole run).
    """
    import httpx

    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    gate = asyncio.Semaphore(concurrency)
    url = base_url.rstrip("/") + "/completions"
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        t0 = time.perf_counter()

        async def go(prompt: str) -> RequestResult:
            async with gate:
                body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature,
                        "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": ignore_eos}
                return await _one_request(client, url, body, t0)

        results = await asyncio.gather(*(go(p) for p in prompts))
        wall = time.perf_counter() - t0
    return list(results), wall


def _percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, numpy's default rule (q in [0, 100]); NaN for no values."""
    # TODO(8): sort; position = q/100 * (n - 1); interpolate between the two neighbours (easy, ~10 min)
    raise NotImplementedError("TODO(8)")


def summarize(results: Sequence[RequestResult], wall_s: float) -> dict[str, float]:
    """Load-test metrics over successful requests.

    - ``ttft_p50/p90/p99`` (ms): first text chunk time minus the request's start;
    - ``itl_p50/p90/p99`` (ms): gaps between consecutive text chunks of a request, pooled;
    - ``tok_s``: completion tokens of all requests / ``wall_s`` (aggregate throughput);
    - ``req_s``; ``ok`` and ``failed`` request counts.
    """
    ok = [r for r in results if r.status == 200 and r.error is None]
    ttft = [(r.t_first - r.t_start) * 1e3 for r in ok if r.t_first is not None]
    itl = [(b - a) * 1e3 for r in ok for a, b in zip(r.chunk_times, r.chunk_times[1:])]
    tokens = sum(r.completion_tokens for r in ok)
    out = {"ok": len(ok), "failed": len(results) - len(ok), "tokens": tokens,
           "tok_s": tokens / wall_s if wall_s > 0 else float("nan"),
           "req_s": len(ok) / wall_s if wall_s > 0 else float("nan")}
    for q in (50, 90, 99):
        out[f"ttft_p{q}"] = _percentile(ttft, q)
        out[f"itl_p{q}"] = _percentile(itl, q)
    return out


# ---------------------------------------------------------------------------------------------
# 7. Self-test
# ---------------------------------------------------------------------------------------------

STORY_STARTS = [
    "Once upon a time", "One day, a little girl named Lily", "Tom had a red ball.", "The sun was hot and",
    "There was a big dog", "Mom said,", "In the park, the kids", "A small cat saw a bird",
    "Ben and Mia went to the sea.", "The old man had a garden", "Sara liked to draw", "It was a rainy day",
    "The little fish", "Max found a box", "After lunch, Anna", "The king had a shiny crown",
]


def reference_greedy(model: torch.nn.Module, prompt_ids: list[int], max_tokens: int,
                     eos_token_ids: Sequence[int] = (0, 2)) -> list[int]:
    """Single-request greedy decoding with MiniGPT's own ``generate`` (no cache, no batching):
    the ids before the first end-of-sequence token."""
    out = model.generate(torch.tensor([prompt_ids]), max_tokens, temperature=0.0)[0, len(prompt_ids):].tolist()
    for i, t in enumerate(out):
        if t in eos_token_ids:
            return out[:i]
    return out


def _plot(rows: list[dict], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from labkit.plots import savefig

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, style in (("continuous", "o-"), ("sequential", "s--")):
        pts = [r for r in rows if r["mode"] == mode]
        xs = [r["concurrency"] for r in pts]
        ax.plot(xs, [r["tok_s"] for r in pts], style, label=mode)
        ax2.plot(xs, [1e3 * r["server_cpu_s"] / max(1, r["tokens"]) for r in pts], style, label=mode)
    levels = sorted({r["concurrency"] for r in rows})
    for a, title, ylabel in ((ax, "aggregate throughput", "completion tokens / s (wall clock)"),
                             (ax2, "server CPU per token", "server process CPU ms / token")):
        a.set_xscale("log", base=2)
        a.set_xticks(levels, [str(c) for c in levels])
        a.set_xlabel("concurrent clients")
        a.set_ylabel(ylabel)
        a.set_title(title)
        a.legend()
        a.grid(alpha=0.3)
    fig.suptitle("lab 9.3: continuous batching vs sequential serving (curriculum model, CPU)")
    return savefig(fig, path)


def _load_levels(spec: dict) -> list[dict]:
    """The load-generating side of :func:`benchmark`, run in its own process: for each job
    (mode, base_url, concurrency) one :func:`run_load`, with the server's ``/healthz`` counters
    read before and after (engine steps, running rows, the server process's CPU seconds)."""
    import httpx

    rows, warmed = [], set()
    for job in spec["jobs"]:
        health = job["base_url"].removesuffix("/v1") + "/healthz"
        if job["base_url"] not in warmed:
            asyncio.run(run_load(job["base_url"], spec["model"], spec["prompts"][:2], concurrency=2, max_tokens=4))
            warmed.add(job["base_url"])
        h0 = httpx.get(health, timeout=30).json()
        results, wall = asyncio.run(run_load(job["base_url"], spec["model"], spec["prompts"],
                                             concurrency=job["concurrency"], max_tokens=spec["max_tokens"]))
        h1 = httpx.get(health, timeout=30).json()
        rows.append({"mode": job["mode"], "concurrency": job["concurrency"], **summarize(results, wall),
                     "wall_s": wall, "server_cpu_s": h1["process_cpu_s"] - h0["process_cpu_s"],
                     "tok_per_cpu_s": sum(r.completion_tokens for r in results)
                     / max(1e-9, h1["process_cpu_s"] - h0["process_cpu_s"]),
                     "mean_batch": (h1["batch_rows"] - h0["batch_rows"]) / max(1, h1["steps"] - h0["steps"])})
    return rows


def benchmark(model: torch.nn.Module, tokenizer: Any, *, concurrencies: Sequence[int] = (1, 2, 4, 8, 16),
              n_requests: int = 16, max_tokens: int = 24, rounds: int = 2) -> list[dict]:
    """Aggregate throughput vs client concurrency through real HTTP streams, for continuous
    batching (``max_batch_size`` = the largest concurrency) at every concurrency, and for
    sequential serving (``max_batch_size=1``: one request at a time, each with its KV cache) at
    the lowest and highest (its throughput does not depend on how many clients queue up).

    Both servers run here (uvicorn threads); the clients run in a child process, as real clients
    would, so they do not compete with the server for this process's interpreter lock. At the
    highest concurrency the two modes run ``rounds`` times, alternating, and the best round of
    each is kept (on a shared machine the load changes between runs; best-of-N is the usual
    guard, and alternating gives both modes the same chances). Every
    request streams exactly ``max_tokens`` tokens (``ignore_eos``). Returns one dict per run:
    mode, concurrency, :func:`summarize`'s metrics, wall_s, server_cpu_s (the server process's
    CPU seconds during the run), tok_per_cpu_s (completion tokens per server CPU second: the
    throughput the server would reach owning one core, which is what wall-clock tok/s measures on
    an idle machine and what stays comparable on a shared one) and mean_batch (running rows per
    engine step during the run).
    """
    import subprocess

    prompts = [STORY_STARTS[i % len(STORY_STARTS)] for i in range(n_requests)]
    cont = Engine(model, tokenizer, max_batch_size=max(concurrencies), max_waiting=n_requests + 8)
    seq = Engine(model, tokenizer, max_batch_size=1, max_waiting=n_requests + 8)
    with serve_in_thread(cont) as ep_c, serve_in_thread(seq) as ep_s:
        top = max(concurrencies)
        jobs = [{"mode": "continuous", "base_url": ep_c.base_url, "concurrency": c} for c in concurrencies if c != top]
        if min(concurrencies) != top:
            jobs.append({"mode": "sequential", "base_url": ep_s.base_url, "concurrency": min(concurrencies)})
        for _ in range(max(1, rounds)):
            jobs += [{"mode": "continuous", "base_url": ep_c.base_url, "concurrency": top},
                     {"mode": "sequential", "base_url": ep_s.base_url, "concurrency": top}]
        spec = {"model": ep_c.model, "prompts": prompts, "max_tokens": max_tokens, "jobs": jobs}
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--load-test", json.dumps(spec)],
                              capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"the load generator failed:\n{proc.stderr[-3000:]}")
    best: dict[tuple[str, int], dict] = {}
    for row in json.loads(proc.stdout.strip().splitlines()[-1]):
        key = (row["mode"], row["concurrency"])
        row["rounds"] = best[key]["rounds"] + 1 if key in best else 1
        if key not in best or row["tok_s"] > best[key]["tok_s"]:
            best[key] = row
        else:
            best[key]["rounds"] = row["rounds"]
    return sorted(best.values(), key=lambda r: (r["mode"], r["concurrency"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="more requests, longer outputs, concurrency up to 64")
    parser.add_argument("--serve", action="store_true", help="serve on --host/--port instead of the self-test")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--load-test", metavar="JSON", help=argparse.SUPPRESS)  # benchmark()'s client process
    args = parser.parse_args(argv)
    if args.load_test:
        print(json.dumps(_load_levels(json.loads(args.load_test))))
        return 0
    seed_everything(0)
    torch.set_num_threads(1)
    model, tokenizer = load_served_model("main")
    if args.serve:
        import uvicorn

        engine = Engine(model, tokenizer, max_batch_size=args.max_batch_size)
        print(f"serving 'curriculum-main' at http://{args.host}:{args.port}/v1", flush=True)
        uvicorn.run(create_app(engine), host=args.host, port=args.port, log_level="info")
        return 0

    failures = []
    # 1. exactness: the engine at batch 16 with staggered arrivals vs single-request greedy
    t0 = time.perf_counter()
    prompts = [[0, *tokenizer.encode(s, add_special_tokens=False)] for s in STORY_STARTS]
    lens = [12 + 5 * (i % 5) for i in range(len(prompts))]
    ref = [reference_greedy(model, p, n) for p, n in zip(prompts, lens)]
    engine = Engine(model, tokenizer, max_batch_size=16)
    seqs = []
    for i, (p, n) in enumerate(zip(prompts, lens)):
        seqs.append(engine.submit(p, SamplingParams(max_tokens=n, temperature=0.0)))
        if i % 3 == 2:
            engine.step()
    while engine.has_work:
        engine.step()
    same = sum(s.out_ids == r for s, r in zip(seqs, ref))
    print(f"[exactness] {same}/{len(seqs)} greedy outputs under continuous batching equal MiniGPT.generate "
          f"alone; admitted mid-batch: {engine.stats['admitted_mid_batch']}, steps: {engine.stats['steps']} "
          f"({time.perf_counter() - t0:.1f} s)")
    if same != len(seqs):
        failures.append("batched greedy != single-request greedy")
    # 2. the benchmark over HTTP
    conc = (1, 2, 4, 8, 16, 32, 64) if args.full else (1, 2, 4, 8, 16)
    rows = benchmark(model, tokenizer, concurrencies=conc, n_requests=128 if args.full else 16,
                     max_tokens=64 if args.full else 24)
    print(f"\n{'mode':<11} {'conc':>4} {'tok/s':>7} {'req/s':>6} {'TTFT p50':>9} {'TTFT p99':>9} "
          f"{'ITL p50':>8} {'ITL p99':>8} {'batch':>5} {'srv CPU s':>9} {'wall s':>6}")
    for r in rows:
        print(f"{r['mode']:<11} {r['concurrency']:>4} {r['tok_s']:>7.0f} {r['req_s']:>6.2f} {r['ttft_p50']:>8.1f}ms "
              f"{r['ttft_p99']:>8.1f}ms {r['itl_p50']:>6.1f}ms {r['itl_p99']:>6.1f}ms {r['mean_batch']:>5.1f} {r['server_cpu_s']:>9.1f} {r['wall_s']:>6.1f}")
        if r["failed"]:
            failures.append(f"{r['failed']} failed requests ({r['mode']}, concurrency {r['concurrency']})")
    top = max(conc)
    cont = next(r["tok_s"] for r in rows if r["mode"] == "continuous" and r["concurrency"] == top)
    seq = next(r["tok_s"] for r in rows if r["mode"] == "sequential" and r["concurrency"] == top)
    ratio = cont / seq
    per_cpu = {r["mode"]: r["tok_per_cpu_s"] for r in rows if r["concurrency"] == top}
    cpu_ratio = per_cpu["continuous"] / per_cpu["sequential"]
    print(f"\n[throughput] concurrency {top}: continuous {cont:.0f} tok/s vs sequential {seq:.0f} tok/s = "
          f"{ratio:.2f}x wall-clock; per server CPU second {per_cpu['continuous']:.0f} vs "
          f"{per_cpu['sequential']:.0f} tokens = {cpu_ratio:.2f}x (bar: >= 3x)")
    if top >= 16 and cpu_ratio < 3:
        failures.append(f"continuous batching is only {cpu_ratio:.2f}x sequential at concurrency {top}")
    out = HERE / "outputs"
    out.mkdir(exist_ok=True)
    (out / "benchmark.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    print(f"figure: {_plot(rows, HERE / 'figures' / 'throughput_vs_concurrency.png')}")
    for f in failures:
        print(f"SANITY CHECK FAILED: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())

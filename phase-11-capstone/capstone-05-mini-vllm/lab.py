# Generated from solution.py by `make labs` (labkit/labgen.py). Fill in the TODOs.
"""Capstone 05: Mini-vLLM -- a paged-attention inference engine on the curriculum model.

The pieces of vLLM (Kwon et al., "Efficient Memory Management for Large Language Model Serving
with PagedAttention", SOSP 2023), rebuilt small enough to read in one sitting and composed from
Phase 9 by path:

- **Block manager with prefix caching**: Phase 9 lab 4's ``KVCacheManager`` (block pool, free
  queue in LRU order, reference counts, chained block hashes), imported, not copied. This file
  adds what an engine needs around it: a pool sized in blocks, a per-request view, statistics.
- **Paged KV cache** (:class:`PagedKVCache`): one flat tensor of ``num_blocks * block_size`` token
  slots per layer for keys and one for values. A forward pass WRITES each new token's key/value to
  the slot its block table names (``slot = table[pos // block_size] * block_size + pos %
  block_size``) and READS every row's context back through its block table (a gather), so rows
  never own contiguous memory: that is PagedAttention's data layout, done with a gather instead of
  a fused CUDA kernel. It speaks MiniGPT's KV-cache protocol (``update`` / ``get_seq_length``), so
  the Phase 4 model runs unchanged.
- **Scheduler** (:class:`Scheduler`, vLLM v1's shape): waiting / running / preempted queues, a
  per-step token budget shared by decodes and prompt chunks (**chunked prefill**), prefix-cache
  lookup on admission, and **preemption by recompute** under memory pressure: when a running
  request cannot get a block, the most recently admitted one loses its blocks and goes back to
  the preempted queue, to be recomputed later (its prompt + the tokens it already produced; its
  freed blocks often survive in the prefix cache, so the recompute is mostly a cache hit).
- **Continuous batching**: :class:`PagedEngine` subclasses Phase 9 lab 3's ``Engine`` and replaces
  its ``step``; lab 3's OpenAI-compatible FastAPI app (``create_app`` / ``serve_in_thread``: SSE
  streaming, 400 on bad input, cancellation when a client disconnects) serves it unchanged.
- **Options**: INT8 / INT4 weights through Phase 9 lab 2's ``quantize_model``; Phase 9 lab 5's
  speculative decoder (draft = the curriculum "draft" model) for greedy requests.

Correctness bar (vLLM's own test style): greedy outputs are token-identical to Hugging Face
``generate`` on the HF export of the same model, for a batch, under forced preemption (a tiny
block budget), with chunked prefill and with shared prefixes (prefix-cache hits).

Run:  python solution.py            (self-test: exactness, preemption, prefix cache, a small table; ~20 s)
      python solution.py --bench    (small mode: the README's benchmark table, a few minutes on CPU)
      python solution.py --serve --port 8000   (an OpenAI-compatible server)
      python solution.py --full     (GPU: the same table against vLLM; documented in the README)
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from labkit import curriculum_model_path, load_lab, seed_everything

HERE = Path(__file__).resolve().parent
kvlab = load_lab("phase-09-inference-optimization/lab-01-kv-cache")            # MiniGPT loader
qlab = load_lab("phase-09-inference-optimization/lab-02-quantization")         # quantize_model
cb = load_lab("phase-09-inference-optimization/lab-03-continuous-batching-server")  # Engine, HTTP app, load test
vl = load_lab("phase-09-inference-optimization/lab-04-vllm")                  # block manager + prefix cache
spec = load_lab("phase-09-inference-optimization/lab-05-speculative-decoding")  # speculative_generate

SamplingParams = cb.SamplingParams
create_app = cb.create_app
serve_in_thread = cb.serve_in_thread
EOS = (0, 2)
QUANT_METHODS = ("int8", "int4-rtn", "gptq", "awq")

__all__ = [
    "EngineConfig", "PagedEngine", "PagedKVCache", "SamplingParams", "Scheduler", "StepPlan", "create_app",
    "hf_greedy", "load_engine", "serve_in_thread", "slot_mapping",
]


# ---------------------------------------------------------------------------------------------
# 1. The paged KV cache: slots addressed through block tables
# ---------------------------------------------------------------------------------------------


def slot_mapping(block_table: Sequence[int], start: int, stop: int, block_size: int) -> torch.Tensor:
    """The physical slot of every logical position ``start .. stop - 1`` of one sequence.

    Position ``p`` lives in logical block ``p // block_size``, i.e. physical block
    ``block_table[p // block_size]``, at offset ``p % block_size``; the flat slot index is
    ``block * block_size + offset`` (vLLM's ``slot_mapping``).

    Returns:
        int64 (stop - start,).
    Raises:
        ValueError: ``start > stop``, negative ``start``, or positions past the table's blocks.
    """
    if start < 0 or start > stop:
        raise ValueError(f"need 0 <= start <= stop, got {start}, {stop}")
    if stop > len(block_table) * block_size:
        raise ValueError(f"positions up to {stop} need {math.ceil(stop / block_size)} blocks, the table has "
                         f"{len(block_table)}: allocate slots before running the forward")
    # TODO(1): pos = arange(start, stop); table[pos // block_size] * block_size + pos % block_size (easy, ~10 min)
    raise NotImplementedError("TODO(1)")


class PagedKVCache:
    """Per layer, keys and values in ``num_blocks * block_size`` slots: (n_layer, slots, n_kv_head, d_head).

    Before each forward the engine calls :meth:`plan` with the rows' block tables, the tokens each
    row already has in the cache, and the number of new tokens (the same for every row of one
    forward). MiniGPT then calls :meth:`update` once per layer with the new keys/values (B,
    n_kv_head, T, d_head): they are scattered to their slots, and the whole context of every row is
    gathered back, left-padded, (B, n_kv_head, L, d_head). The attention mask from :meth:`plan`
    hides the padding; positions follow from it.
    """

    def __init__(self, n_layer: int, num_blocks: int, block_size: int, n_kv_head: int, d_head: int,
                 dtype: torch.dtype = torch.float32) -> None:
        if min(n_layer, num_blocks, block_size, n_kv_head, d_head) < 1:
            raise ValueError("PagedKVCache sizes must all be >= 1")
        self.block_size, self.num_blocks = block_size, num_blocks
        shape = (n_layer, num_blocks * block_size, n_kv_head, d_head)
        self.k = torch.zeros(shape, dtype=dtype)
        self.v = torch.zeros(shape, dtype=dtype)
        self._write: torch.Tensor | None = None
        self._read: torch.Tensor | None = None
        self._new_real: torch.Tensor | None = None
        self._past = 0

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    def plan(self, block_tables: Sequence[Sequence[int]], num_cached: Sequence[int], n_new: Sequence[int]
             ) -> torch.Tensor:
        """Set up one forward over B rows: row b has ``num_cached[b]`` tokens in the cache and feeds
        ``n_new[b]`` new ones (positions ``num_cached[b] .. + n_new[b] - 1``).

        The model sees T = max(n_new) new columns per row, the row's new tokens in the LAST
        ``n_new[b]`` of them (the rest is padding), after ``past = max(num_cached)`` context
        columns holding the row's cached tokens in their LAST ``num_cached[b]`` columns. So the
        read layout is (B, L = past + T) and the mask is 1 exactly on real tokens; MiniGPT's
        positions (``cumsum(mask) - 1``) then come out as the logical positions, padding or not.

        Sets ``self._read`` (B, L) slot ids (0 on padding: any slot, masked), ``self._write``
        (sum(n_new),) the slots of the real new tokens in row-major order, ``self._new_real``
        (B, T) bool, and ``self._past``.

        Returns:
            the (B, L) int64 attention mask to pass to the model.
        Raises:
            ValueError: no rows, mismatched lengths, ``n_new`` < 1, or positions past a row's table.
        """
        B = len(block_tables)
        if B == 0 or len(num_cached) != B or len(n_new) != B or min(n_new) < 1 or min(num_cached) < 0:
            raise ValueError("plan needs >= 1 row, one num_cached (>= 0) and one n_new (>= 1) per row")
        bs = self.block_size
        for t, c, n in zip(block_tables, num_cached, n_new):
            if c + n > len(t) * bs:
                raise ValueError(f"a row needs {c + n} slots but its block table has {len(t)} blocks of {bs}: "
                                 "allocate slots before running the forward")
        # TODO(2): pad the tables into (B, max blocks); col = arange(L); logical position of each column (context region: col - (past - cached), new region: cached + (col - past) - (T - n)); real where that is a real token; slot = table[pos // bs] * bs + pos % bs; read = slot where real else 0; write = slots of the real NEW columns; mask = real (medium, ~30 min)
        raise NotImplementedError("TODO(2)")

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._past

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this forward's keys/values (B, n_kv_head, T, d_head) in their slots; return every
        row's context read through its block table, (B, n_kv_head, L, d_head)."""
        if self._write is None:
            raise RuntimeError("PagedKVCache.update before plan(): the engine must plan each forward")
        B, H, T, D = key.shape
        # TODO(3): scatter: the real new tokens' keys, key.transpose(1, 2)[new_real] (N, H, D), into k[layer] at the write slots (index_copy_); same for v; gather: k[layer].index_select(0, read.flatten()) viewed (B, L, H, D) -> transpose(1, 2) (medium, ~20 min)
        raise NotImplementedError("TODO(3)")


# ---------------------------------------------------------------------------------------------
# 2. The scheduler: waiting / running / preempted, token budget, chunked prefill, preemption
# ---------------------------------------------------------------------------------------------


@dataclass
class EngineConfig:
    """Engine knobs (vLLM's names where they exist).

    ``num_blocks`` x ``block_size`` token slots of KV cache; ``max_num_seqs`` running requests at
    most; ``max_num_batched_tokens``: the per-step token budget (decodes + prompt chunks): a prompt
    longer than what is left is prefilled in chunks over several steps; ``enable_prefix_caching``;
    ``quantization`` (None or one of lab 9.2's int8 / int4-rtn / gptq / awq); ``speculative_k``
    (0 = off; else greedy requests decode with lab 9.5's speculative decoder and the draft model).
    """

    num_blocks: int = 256
    block_size: int = 16
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 256
    max_waiting: int = 256
    enable_prefix_caching: bool = True
    quantization: str | None = None
    speculative_k: int = 0

    def __post_init__(self) -> None:
        for name in ("num_blocks", "block_size", "max_num_seqs", "max_num_batched_tokens", "max_waiting"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_num_seqs "
                             f"({self.max_num_seqs}) so every running request can decode each step")
        if self.quantization is not None and self.quantization not in QUANT_METHODS:
            raise ValueError(f"quantization must be None or one of {QUANT_METHODS}, got {self.quantization!r}")
        if isinstance(self.speculative_k, bool) or not isinstance(self.speculative_k, int) or self.speculative_k < 0:
            raise ValueError(f"speculative_k must be an int >= 0, got {self.speculative_k!r}")


def tokens_of(seq: Any) -> list[int]:
    """Every token a request knows: its prompt, then what it generated."""
    return seq.prompt_ids + seq.out_ids


@dataclass
class StepPlan:
    """What one step runs: ``(seq, n_new)`` pairs in scheduling order, who was preempted, and
    how many of ``scheduled`` (its tail) were admitted this step."""

    scheduled: list[tuple[Any, int]]
    preempted: list[Any]
    n_admitted: int = 0


class Scheduler:
    """vLLM v1's scheduling loop over lab 9.4's :class:`KVCacheManager`.

    Each request (a lab 9.3 ``SeqState``) carries ``num_computed``: how many of its tokens have
    keys/values in the cache. A request needs ``len(tokens) - num_computed`` more: the whole prompt
    (or what the prefix cache does not cover) when new, 1 per decode step.
    """

    def __init__(self, kv: Any, cfg: EngineConfig) -> None:
        self.kv, self.cfg = kv, cfg
        self.waiting: deque[Any] = deque()
        self.preempted: deque[Any] = deque()
        self.running: list[Any] = []
        self.num_preemptions = 0

    def _preempt(self, seq: Any) -> None:
        """Recompute-style preemption: drop the request's blocks, forget its cache progress."""
        self.kv.free(seq.rid)
        seq.num_computed = 0
        self.num_preemptions += 1

    def schedule(self) -> StepPlan:
        """One step's plan.

        1. Running requests, oldest first: each gets ``min(needed, budget)`` tokens
           (``kv.allocate_slots(rid, tokens, n)``). When that returns None (no free block), preempt
           the LAST running request (the newest: lowest priority) and retry; if that victim is the
           request itself, it is not scheduled. Victims go to the FRONT of ``preempted``
           (appendleft) after :meth:`_preempt`.
        2. Only if nobody was preempted this step: admit from ``preempted`` first, then ``waiting``,
           while ``len(running) < max_num_seqs`` and budget is left. A cancelled candidate is
           finished as "cancelled" and dropped. Prefix cache: ``kv.get_computed_blocks(tokens)``
           gives hit blocks and ``n_hit`` tokens; schedule ``min(len(tokens) - n_hit, budget)``
           tokens with ``kv.allocate_slots(rid, tokens, n, hits)``; None -> stop admitting. An
           admitted request gets ``num_computed = n_hit`` and joins ``running``.

        Returns:
            a :class:`StepPlan` (the budget spent is ``sum(n for _, n in scheduled)``).
        """
        budget = self.cfg.max_num_batched_tokens
        scheduled: list[tuple[Any, int]] = []
        n_running = 0
        preempted: list[Any] = []
        # TODO(4): running first (allocate, preempt the last running on None, victims appendleft to preempted); then, if no preemption, admit preempted-then-waiting with prefix-cache hits under max_num_seqs and the budget (hard, ~60 min)
        raise NotImplementedError("TODO(4)")
        return StepPlan(scheduled, preempted, len(scheduled) - n_running)


# ---------------------------------------------------------------------------------------------
# 3. The engine: lab 9.3's Engine with a paged cache and the scheduler above
# ---------------------------------------------------------------------------------------------


class PagedEngine(cb.Engine):
    """Continuous batching over paged KV memory. Drop-in for lab 9.3's ``Engine`` (same
    ``submit`` / ``cancel`` / ``run`` / ``snapshot``), so lab 9.3's HTTP app serves it.

    Each :meth:`step`: free finished/cancelled requests' blocks, :meth:`Scheduler.schedule`, then
    run the plan: every request scheduled for ONE token (decodes, 1-token chunks) in one batched
    forward, then every longer prompt chunk and every request admitted this step in a second,
    padded forward. A request whose scheduled tokens reach
    the end of what it knows gets its next token sampled; a partial prefill chunk samples nothing.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, cfg: EngineConfig | None = None, *,
                 draft: torch.nn.Module | None = None, eos_token_ids: Sequence[int] = EOS) -> None:
        cfg = cfg or EngineConfig()
        if cfg.speculative_k and draft is None:
            raise ValueError("speculative_k > 0 needs a draft model")
        super().__init__(model, tokenizer, max_batch_size=cfg.max_num_seqs, max_waiting=cfg.max_waiting,
                         eos_token_ids=eos_token_ids)
        self.cfg, self.draft = cfg, draft
        c = model.config
        self.kv = vl.KVCacheManager(cfg.num_blocks, cfg.block_size, cfg.enable_prefix_caching)
        dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        self.cache = PagedKVCache(c.n_layer, cfg.num_blocks, cfg.block_size, c.resolved_n_kv_head, c.d_head, dtype)
        self.scheduler = Scheduler(self.kv, cfg)
        self.waiting = self.scheduler.waiting          # lab 9.3's submit() appends here
        self.running = self.scheduler.running
        self.stats.update({"preemptions": 0, "forwards": 0, "prefill_chunks": 0, "spec_rounds": 0,
                           "spec_accepted": 0})

    # -- requests -------------------------------------------------------------------------------
    def submit(self, prompt_ids: Sequence[int], params: SamplingParams) -> Any:
        """Lab 9.3's checks, plus: ids inside the vocabulary, and the request must fit the pool."""
        vocab = self.model.config.vocab_size
        if any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab for t in prompt_ids):
            raise ValueError(f"prompt ids must be ints in [0, {vocab})")
        need = math.ceil((len(prompt_ids) + params.max_tokens) / self.cfg.block_size)
        if need > self.cfg.num_blocks:
            raise ValueError(f"prompt + max_tokens needs {need} KV blocks; the cache has {self.cfg.num_blocks}")
        seq = super().submit(prompt_ids, params)
        seq.num_computed = 0
        return seq

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting or self.scheduler.preempted)

    def _evict(self) -> None:
        """Finished and cancelled requests leave ``running`` and give their blocks back."""
        for s in [s for s in self.running if s.done]:
            if s.cancelled and s.finish_reason is None:
                s.finish("cancelled")
            self.stats["cancelled" if s.finish_reason == "cancelled" else "finished"] += 1
            self.kv.free(s.rid)
            self.running.remove(s)
        for q in (self.waiting, self.scheduler.preempted):   # cancelled before they ran: nothing to free
            # list(q) copies in one C call: the event-loop thread may append to ``waiting`` meanwhile
            for s in [s for s in list(q) if s.cancelled]:
                q.remove(s)
                s.finish("cancelled")
                self.stats["cancelled"] += 1

    def _forward(self, rows: list[tuple[Any, int]]) -> torch.Tensor:
        """One forward over ``(seq, n)`` rows (each feeds its next n tokens, left-padded to the
        longest); returns each row's last-position logits (B, V)."""
        tables = [self.kv.block_table(s.rid) for s, _ in rows]
        mask = self.cache.plan(tables, [s.num_computed for s, _ in rows], [n for _, n in rows])
        T = max(n for _, n in rows)
        idx = torch.tensor([[cb.PAD_ID] * (T - n) + tokens_of(s)[s.num_computed:s.num_computed + n]
                            for s, n in rows], dtype=torch.int64)
        logits, _ = self.model(idx, attention_mask=mask, past_key_values=self.cache, logits_to_keep=1)
        self.stats["forwards"] += 1
        for s, n in rows:
            s.num_computed += n
        return logits[:, -1]

    def _speculate(self, seq: Any) -> None:
        """Greedy decode through lab 9.5: up to k+1 tokens per round, equal to plain greedy."""
        want = min(self.cfg.speculative_k + 1, seq.params.max_tokens - len(seq.out_ids))
        ids = torch.tensor([tokens_of(seq)], dtype=torch.int64)
        out, st = spec.speculative_generate(self.model, self.draft, ids, want, k=self.cfg.speculative_k,
                                            temperature=0.0)
        self.stats["spec_rounds"] += st.rounds
        self.stats["spec_accepted"] += st.accepted
        for t in out[0, ids.shape[1]:].tolist():
            if seq.done:
                break
            seq.append_token(t)

    @torch.inference_mode()
    def step(self) -> int:
        t0 = time.perf_counter()
        self._evict()
        plan = self.scheduler.schedule()
        self.stats["preemptions"] = self.scheduler.num_preemptions
        produced = 0
        # requests admitted this step may have prefix-cache hits on blocks that other rows write in
        # THIS step: they go in the second forward (after the decodes), where each layer's update
        # scatters every row's new keys before any row gathers
        cut = len(plan.scheduled) - plan.n_admitted
        ones = [(s, n) for s, n in plan.scheduled[:cut] if n == 1]
        chunks = [(s, n) for s, n in plan.scheduled[:cut] if n > 1] + plan.scheduled[cut:]
        outputs: list[tuple[Any, torch.Tensor]] = []
        if ones:
            logits = self._forward(ones)
            outputs += [(s, logits[b]) for b, (s, _) in enumerate(ones)]
        if chunks:                                           # every prompt chunk: one padded forward
            logits = self._forward(chunks)
            self.stats["prefill_chunks"] += len(chunks)
            outputs += [(s, logits[b]) for b, (s, _) in enumerate(chunks)]
        # a partial prefill chunk samples nothing; the rest sample in one call (lab 9.3's sampler)
        ready = [(s, row) for s, row in outputs if s.num_computed == len(tokens_of(s)) and not s.done]
        plain = []
        for s, row in ready:
            if (self.cfg.speculative_k and s.params.temperature == 0 and s.out_ids
                    and s.params.max_tokens - len(s.out_ids) > 1):
                self._speculate(s)                           # plain first token, then speculative rounds
            else:
                plain.append((s, row))
        if plain:
            toks = cb.sample_next(torch.stack([row for _, row in plain]), [s.params for s, _ in plain],
                                  [s.generator for s, _ in plain])
            for (s, _), t in zip(plain, toks):
                s.append_token(t)
        produced += len(ready)
        self.stats["max_running"] = max(self.stats["max_running"], len(self.running))
        self.stats["batch_rows"] += len(plan.scheduled)
        self.stats["steps"] += 1
        self.stats["tokens"] += produced
        self._step_seconds = 0.9 * self._step_seconds + 0.1 * (time.perf_counter() - t0)
        return produced

    def run_until_done(self, max_steps: int = 100_000) -> None:
        """Offline use (no event loop): step until every request is finished."""
        for _ in range(max_steps):
            if not self.has_work:
                self._evict()
                return
            self.step()
        raise RuntimeError(f"requests still unfinished after {max_steps} steps")

    def snapshot(self) -> dict[str, Any]:
        kv = self.kv
        return {**super().snapshot(), "preempted": len(self.scheduler.preempted),
                "num_blocks": self.cfg.num_blocks, "free_blocks": kv.pool.num_free_blocks,
                "prefix_hit_rate": kv.hits / kv.queries if kv.queries else 0.0}


def load_engine(cfg: EngineConfig | None = None, name: str = "main") -> PagedEngine:
    """The curriculum model (optionally quantized by lab 9.2) in a :class:`PagedEngine`."""
    from transformers import AutoTokenizer

    cfg = cfg or EngineConfig()
    model = kvlab.load_curriculum_minigpt(name)
    if cfg.quantization is not None:
        calib = None
        if cfg.quantization in ("gptq", "awq"):
            _, train, _ = qlab.load_curriculum()
            calib = qlab.calibration_ids(train, 8, 128)
        model = qlab.quantize_model(model, cfg.quantization, calib).eval()
    draft = kvlab.load_curriculum_minigpt("draft") if cfg.speculative_k else None
    tok = AutoTokenizer.from_pretrained(curriculum_model_path(name) / "hf")
    return PagedEngine(model, tok, cfg, draft=draft)


def generate(engine: PagedEngine, prompts: Sequence[Sequence[int]], params: SamplingParams | Sequence[SamplingParams]
             ) -> list[list[int]]:
    """Offline batch generation (vLLM's ``LLM.generate``): submit all, step to completion."""
    plist = list(params) if isinstance(params, (list, tuple)) else [params] * len(prompts)
    seqs = [engine.submit(list(p), sp) for p, sp in zip(prompts, plist)]
    engine.run_until_done()
    return [s.out_ids for s in seqs]


# ---------------------------------------------------------------------------------------------
# 4. References and benchmarks
# ---------------------------------------------------------------------------------------------

STORY_STARTS = cb.STORY_STARTS
SYSTEM_PROMPT = ("You are a kind storyteller for small children. You tell short, happy stories about animals, "
                 "friends and families, with simple words and a nice ending. ")


def load_hf(name: str = "main") -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(curriculum_model_path(name) / "hf", dtype=torch.float32).eval()


@torch.inference_mode()
def hf_greedy(hf: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos: Sequence[int] = EOS
              ) -> list[list[int]]:
    """Greedy continuations by Hugging Face ``generate``, one prompt at a time, cut before EOS."""
    out = []
    for ids in prompts:
        g = hf.generate(torch.tensor([list(ids)]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                        max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=list(eos), pad_token_id=3)
        new = g[0, len(ids):].tolist()
        out.append(new[:next((i for i, t in enumerate(new) if t in eos), len(new))])
    return out


@torch.inference_mode()
def hf_batch_tok_s(hf: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int, batch: int,
                   clock: Any = time.perf_counter) -> float:
    """Static batching with HF ``generate`` (left padding, every row exactly ``max_new_tokens``): tok/s
    (per wall second, or per CPU second with ``clock=time.process_time``)."""
    t0, n = clock(), 0
    for i in range(0, len(prompts), batch):
        group = [list(p) for p in prompts[i:i + batch]]
        T = max(map(len, group))
        ids = torch.tensor([[3] * (T - len(p)) + p for p in group])
        mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in group])
        hf.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                    do_sample=False, pad_token_id=3)
        n += len(group) * max_new_tokens
    return n / (clock() - t0)


def encode(tok: Any, text: str) -> list[int]:
    return [0, *tok.encode(text, add_special_tokens=False)]


def load_table(engine_factory: Any, hf: Any, tok: Any, *, concurrencies: Sequence[int], n_requests: int,
               max_tokens: int) -> list[dict[str, Any]]:
    """tok/s of HF generate (static batches of the concurrency), lab 9.3's server and this engine
    (both over HTTP, lab 9.3's load generator, ``ignore_eos`` so every request makes max_tokens)."""
    prompts = [STORY_STARTS[i % len(STORY_STARTS)] for i in range(n_requests)]
    rows = []
    model_cb, _ = cb.load_served_model("main")
    for c in concurrencies:
        row: dict[str, Any] = {"concurrency": c}
        row["hf_tok_s"] = hf_batch_tok_s(hf, [encode(tok, p) for p in prompts], max_tokens, c)
        for label, eng in (("lab93", cb.Engine(model_cb, tok, max_batch_size=max(concurrencies))),
                           ("mini_vllm", engine_factory())):
            with serve_in_thread(eng) as ep:
                res, wall = asyncio.run(cb.run_load(ep.base_url, ep.model, prompts, concurrency=c,
                                                    max_tokens=max_tokens))
            s = cb.summarize(res, wall)
            if s["failed"]:
                raise RuntimeError(f"{label}: {s['failed']} requests failed at concurrency {c}")
            row[f"{label}_tok_s"] = s["tok_s"]
            row[f"{label}_ttft_p50"] = s["ttft_p50"]
        rows.append(row)
    return rows


def offline_cpu_table(model: torch.nn.Module, hf: Any, tok: Any, *, batch_sizes: Sequence[int],
                      max_tokens: int) -> list[dict[str, float]]:
    """Generated tokens per CPU second (``time.process_time``: robust on a shared machine), no HTTP:
    B requests submitted at once to this engine and to lab 9.3's ``Engine``, and HF ``generate`` on
    the same B prompts as one left-padded batch; ``ignore_eos`` so each makes ``max_tokens``."""
    rows = []
    for B in batch_sizes:
        prompts = [encode(tok, STORY_STARTS[i % len(STORY_STARTS)]) for i in range(B)]
        sp = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
        row = {"batch": B, "hf": hf_batch_tok_s(hf, prompts, max_tokens, B, clock=time.process_time)}
        for label, eng in (("lab93", cb.Engine(model, tok, max_batch_size=max(B, 1))),
                           ("paged", PagedEngine(model, tok, EngineConfig(max_num_seqs=B,
                                                                          max_num_batched_tokens=max(B, 256))))):
            t0 = time.process_time()
            for p in prompts:
                eng.submit(p, sp)
            while eng.has_work:
                eng.step()
            row[label] = B * max_tokens / (time.process_time() - t0)
        rows.append(row)
    return rows


def prefix_workload(tok: Any, cfg: EngineConfig, n_requests: int, max_tokens: int) -> dict[str, float]:
    """Shared-system-prompt workload, run offline with prefix caching on and off: hit rate and
    time to first token (mean over requests, all queued at once, max_num_seqs from ``cfg``)."""
    prompts = [encode(tok, SYSTEM_PROMPT + STORY_STARTS[i % len(STORY_STARTS)]) for i in range(n_requests)]
    out: dict[str, float] = {"prompt_tokens": sum(map(len, prompts)) / n_requests}
    model = kvlab.load_curriculum_minigpt("main")
    texts = {}
    for on in (False, True):
        c = EngineConfig(**{**cfg.__dict__, "enable_prefix_caching": on})
        eng = PagedEngine(model, tok, c)
        # warm the cache with one request (a system prompt seen before), then the burst
        generate(eng, prompts[:1], SamplingParams(max_tokens=1, temperature=0))
        seqs = [eng.submit(p, SamplingParams(max_tokens=max_tokens, temperature=0)) for p in prompts]
        eng.run_until_done()
        key = "on" if on else "off"
        out[f"ttft_ms_{key}"] = 1e3 * sum(s.t_first_token - s.t_arrival for s in seqs) / len(seqs)
        out[f"hit_rate_{key}"] = eng.kv.hits / eng.kv.queries if eng.kv.queries else 0.0
        texts[key] = [s.out_ids for s in seqs]
    out["same_outputs"] = float(texts["on"] == texts["off"])
    out["ttft_saving"] = 1 - out["ttft_ms_on"] / out["ttft_ms_off"]
    return out


# ---------------------------------------------------------------------------------------------
# 5. Self-test
# ---------------------------------------------------------------------------------------------


def _fmt_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| concurrency | HF generate tok/s | lab 9.3 server tok/s | mini-vLLM tok/s | mini-vLLM / HF | "
             "mini-vLLM / lab 9.3 | TTFT p50 ms (lab 9.3 / mini-vLLM) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['concurrency']} | {r['hf_tok_s']:.0f} | {r['lab93_tok_s']:.0f} | {r['mini_vllm_tok_s']:.0f}"
                     f" | {r['mini_vllm_tok_s'] / r['hf_tok_s']:.2f}x | {r['mini_vllm_tok_s'] / r['lab93_tok_s']:.2f}x"
                     f" | {r['lab93_ttft_p50']:.0f} / {r['mini_vllm_ttft_p50']:.0f} |")
    return lines


def _plot(rows: list[dict[str, Any]], path: Path) -> Path:
    from labkit.plots import plt, savefig

    fig, ax = plt.subplots(figsize=(6, 3.6))
    xs = [r["concurrency"] for r in rows]
    for key, label in (("hf_tok_s", "HF generate (static batches)"), ("lab93_tok_s", "lab 9.3 server"),
                       ("mini_vllm_tok_s", "mini-vLLM server")):
        ax.plot(xs, [r[key] for r in rows], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("generated tokens / s")
    ax.set_title("curriculum model, 2-core CPU (shared)")
    ax.legend()
    return savefig(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bench", action="store_true", help="small mode: the README's benchmark table")
    parser.add_argument("--full", action="store_true", help="GPU: the table against vLLM (see README)")
    parser.add_argument("--serve", action="store_true", help="serve the OpenAI API")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--quantization", default=None, choices=QUANT_METHODS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seed_everything(0)
    if args.full:
        print("full mode needs a GPU and vLLM (phase-09 lab-04 requirements-vllm.txt): see the README's "
              "'Reproducing' section for the command; nothing to do on this machine")
        return 0
    if args.serve:
        import uvicorn

        engine = load_engine(EngineConfig(quantization=args.quantization))
        uvicorn.run(create_app(engine), host="127.0.0.1", port=args.port)
        return 0

    ok = True
    engine = load_engine(EngineConfig(num_blocks=64, block_size=16, max_num_seqs=16, max_num_batched_tokens=64))
    tok = engine.tokenizer
    hf = load_hf()
    prompts = [encode(tok, s) for s in STORY_STARTS[:8]]
    ref = hf_greedy(hf, prompts, 16)
    got = generate(engine, prompts, SamplingParams(max_tokens=16, temperature=0))
    same = sum(a == b for a, b in zip(got, ref))
    print(f"[1] batch of {len(prompts)} greedy requests: {same}/{len(prompts)} token-identical to HF generate")
    ok &= same == len(prompts)

    tiny = PagedEngine(engine.model, tok, EngineConfig(num_blocks=12, block_size=4, max_num_seqs=8,
                                                       max_num_batched_tokens=8))
    got = generate(tiny, prompts, SamplingParams(max_tokens=16, temperature=0))
    same = sum(a == b for a, b in zip(got, ref))
    print(f"[2] tiny pool (12 blocks x 4 slots, 8-token budget): {tiny.stats['preemptions']} preemptions, "
          f"{tiny.stats['prefill_chunks']} prefill chunks, {same}/{len(prompts)} identical to HF")
    ok &= same == len(prompts) and tiny.stats["preemptions"] > 0
    tiny.kv.check_consistency()
    ok &= tiny.kv.pool.num_free_blocks == tiny.cfg.num_blocks

    shared = [encode(tok, SYSTEM_PROMPT + s) for s in STORY_STARTS[:4]]
    ref_s = hf_greedy(hf, shared, 10)
    engine2 = PagedEngine(engine.model, tok, EngineConfig(num_blocks=64, max_num_seqs=8, max_num_batched_tokens=64))
    got = generate(engine2, shared, SamplingParams(max_tokens=10, temperature=0))
    same = sum(a == b for a, b in zip(got, ref_s))
    rate = engine2.kv.hits / engine2.kv.queries
    print(f"[3] shared system prompt: prefix-cache hit rate {rate:.1%} of prompt tokens, "
          f"{same}/{len(shared)} identical to HF")
    ok &= same == len(shared) and rate > 0.3

    n_pw = 32 if args.bench else 8
    pw = prefix_workload(tok, EngineConfig(num_blocks=256, max_num_seqs=16, max_num_batched_tokens=64), n_pw, 4)
    print(f"[4] prefix workload ({n_pw} requests, {pw['prompt_tokens']:.0f}-token prompts): hit rate "
          f"{pw['hit_rate_on']:.1%}, mean TTFT {pw['ttft_ms_off']:.0f} ms -> {pw['ttft_ms_on']:.0f} ms "
          f"({pw['ttft_saving']:.0%} saved), outputs identical: {bool(pw['same_outputs'])}")
    ok &= pw["same_outputs"] == 1.0 and pw["hit_rate_on"] > 0.3

    cpu_rows = offline_cpu_table(engine.model, hf, tok, batch_sizes=(1, 8, 32) if args.bench else (8,),
                                 max_tokens=32 if args.bench else 16)
    print("[5] offline, tokens per CPU second (no HTTP; B requests at once, ignore_eos):")
    print("    | batch | HF generate (one padded batch) | lab 9.3 Engine | mini-vLLM | mini-vLLM / lab 9.3 |")
    print("    |---:|---:|---:|---:|---:|")
    for r in cpu_rows:
        print(f"    | {r['batch']} | {r['hf']:.0f} | {r['lab93']:.0f} | {r['paged']:.0f} | {r['paged'] / r['lab93']:.2f}x |")
    conc = (1, 8, 32) if args.bench else (8,)
    n_req, n_tok = (64, 32) if args.bench else (8, 8)
    rows = load_table(lambda: PagedEngine(engine.model, tok, EngineConfig(max_num_seqs=32)), hf, tok,
                      concurrencies=conc, n_requests=n_req, max_tokens=n_tok)
    print(f"[6] throughput, {n_req} requests x {n_tok} tokens (ignore_eos), HTTP + SSE for the servers, "
          "2-core CPU shared with other jobs:")
    for line in _fmt_table(rows):
        print("   ", line)
    if args.bench:
        print("    fig:", _plot(rows, HERE / "figures" / "throughput.png"))
    print("SELF-TEST", "PASSED" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())

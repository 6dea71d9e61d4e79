"""Lab 9.4: vLLM from the inside -- a paged KV block manager, fragmentation, KV capacity, serving.

vLLM (Kwon et al., "Efficient Memory Management for Large Language Model Serving with
PagedAttention", SOSP 2023) stores the KV cache in fixed-size **blocks** of ``block_size`` token
slots, like pages of virtual memory. A request owns a **block table** (logical block i -> a
physical block id); blocks come from a shared pool with a **free list**; a block may be shared by
several requests (a **reference count**), which is how **prefix caching** works: every *full* block
gets a hash chained from its parent's hash (so equal hashes mean equal *prefixes*, not just equal
16-token pieces), and a new request whose first blocks hash the same reuses them instead of
recomputing their keys and values. Freed blocks keep their hash and stay findable until the pool
needs them: they are evicted least-recently-freed first (LRU).

This file rebuilds that bookkeeping on CPU, modelled on ``vllm/v1/core/block_pool.py``,
``vllm/v1/core/kv_cache_utils.py`` and ``vllm/v1/core/kv_cache_manager.py`` (vLLM 0.33), and checks it
the way vLLM's own CPU tests do (``tests/v1/core/test_prefix_caching.py``: the free-queue order
after ``free``, prefix hits, eviction). Around it:

- a **fragmentation simulation**: how many reserved KV slots hold no token, for contiguous
  per-request reservation (``max_model_len`` or prompt + ``max_tokens``) vs paged blocks, on the
  prompt/answer lengths of AlpacaEval tokenized with the curriculum tokenizer;
- a **KV capacity calculator**: the number of blocks vLLM allocates at a given
  ``--gpu-memory-utilization`` (``get_num_blocks`` in ``kv_cache_utils.py`` and
  ``determine_available_memory`` in ``vllm/v1/worker/gpu_worker.py``), with the startup log lines
  it prints, and a parser that checks the calculator against a real startup log;
- the **GPU part** (``--vllm``; marked ``gpu`` in the tests): ``vllm serve`` the curriculum model's
  HF export from vLLM's own environment (``requirements-vllm.txt``), lab 9.3's load generator
  against vLLM and against lab 9.3's server, and a small tuning grid over ``--max-num-seqs``,
  ``--max-model-len`` and ``--gpu-memory-utilization``.

Run:  python solution.py           (CPU self-test: block manager, fragmentation, capacity; < 1 min)
      python solution.py --vllm    (GPU: serve with vLLM, load-test vLLM vs lab 9.3, tuning table)
      python solution.py --vllm --full   (adds a Llama-3.1-8B AWQ model; needs the HF hub)
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from labkit import curriculum_model_path, dataset_path, seed_everything

HERE = Path(__file__).resolve().parent
GIB = 2**30
BlockHash = bytes

# ---------------------------------------------------------------------------------------------
# 1. Chained block hashes (vllm/v1/core/kv_cache_utils.py: hash_block_tokens, NONE_HASH)
# ---------------------------------------------------------------------------------------------

# The parent of the first block. vLLM draws a random one per process (or derives it from
# PYTHONHASHSEED); a constant keeps our hashes reproducible across runs.
NONE_HASH: BlockHash = hashlib.sha256(b"lab-9.4 root block").digest()


def hash_block_tokens(parent_hash: BlockHash | None, token_ids: Sequence[int],
                      extra_keys: tuple | None = None) -> BlockHash:
    """The hash of one full block, chained to its parent's.

    ``sha256(parent || extra_keys || token ids as little-endian int64)``: two blocks hash the same
    only if their tokens AND everything before them are the same (vLLM hashes the tuple
    ``(parent, tokens, extra_keys)`` with sha256 over pickle/CBOR; the idea is identical).
    ``extra_keys`` carries what else changes the keys/values (a LoRA id, an image hash, a cache
    salt); ``None`` for plain text.

    Args:
        parent_hash: the previous block's hash, or None for the first block (uses ``NONE_HASH``).
        token_ids: the block's token ids (non-negative ints).
        extra_keys: a tuple of str/int, or None.
    Returns:
        32 bytes.
    Raises:
        ValueError: empty block or negative ids.
    """
    if len(token_ids) == 0:
        raise ValueError("a block to hash must hold at least one token")
    # BEGIN SOLUTION parent (or NONE_HASH) + repr(extra_keys) + the ids as int64 bytes -> sha256 digest (easy, ~10 min)
    ids = np.asarray(token_ids, dtype=np.int64)
    if (ids < 0).any():
        raise ValueError(f"token ids must be >= 0, got {ids.min()}")
    h = hashlib.sha256(parent_hash if parent_hash is not None else NONE_HASH)
    h.update(repr(extra_keys).encode("utf-8"))
    h.update(ids.astype("<i8").tobytes())
    return h.digest()
    # END SOLUTION


def hash_request_blocks(token_ids: Sequence[int], block_size: int,
                        extra_keys: tuple | None = None) -> list[BlockHash]:
    """Chained hashes of the FULL blocks of a token sequence (a trailing partial block has none:
    its contents are still changing). ``len(result) == len(token_ids) // block_size``."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    # BEGIN SOLUTION walk the full blocks; each hash takes the previous one as its parent (easy, ~10 min)
    hashes: list[BlockHash] = []
    parent: BlockHash | None = None
    for i in range(len(token_ids) // block_size):
        parent = hash_block_tokens(parent, token_ids[i * block_size:(i + 1) * block_size], extra_keys)
        hashes.append(parent)
    return hashes
    # END SOLUTION


# ---------------------------------------------------------------------------------------------
# 2. Blocks, the free queue and the block pool (vllm/v1/core/block_pool.py)
# ---------------------------------------------------------------------------------------------


@dataclass(eq=False)
class KVBlock:
    """One physical block: ``block_size`` token slots in every layer's K and V cache tensors.

    ``ref_cnt``: how many live requests have it in their block table. ``block_hash``: set once the
    block is full and registered for prefix caching; it survives ``free`` (the block is then an
    eviction candidate that a later request may still hit) and is cleared on eviction.
    """

    block_id: int
    ref_cnt: int = 0
    block_hash: BlockHash | None = None


class FreeBlockQueue:
    """Free blocks in eviction order: the front is evicted (reused) first.

    vLLM keeps a hand-written doubly linked list (``FreeKVCacheBlockQueue``) so that a block in the
    middle can be removed in O(1) when a prefix hit revives it; an ``OrderedDict`` keyed by block id
    gives the same O(1) ``popleft`` / ``append`` / ``remove``.
    """

    def __init__(self, blocks: Iterable[KVBlock]) -> None:
        self._q: OrderedDict[int, KVBlock] = OrderedDict((b.block_id, b) for b in blocks)

    def __len__(self) -> int:
        return len(self._q)

    def __contains__(self, block: KVBlock) -> bool:
        return block.block_id in self._q

    def popleft(self) -> KVBlock:
        if not self._q:
            raise RuntimeError("no free KV blocks left")
        return self._q.popitem(last=False)[1]

    def append(self, block: KVBlock) -> None:
        if block.block_id in self._q:
            raise RuntimeError(f"block {block.block_id} freed twice (it is already in the free queue)")
        self._q[block.block_id] = block

    def remove(self, block: KVBlock) -> None:
        del self._q[block.block_id]

    def block_ids(self) -> list[int]:
        return list(self._q)


class BlockPool:
    """All ``num_blocks`` physical blocks, the free queue, and the prefix cache
    ``hash -> {block_id: block}`` (vLLM does not de-duplicate two full blocks with equal contents
    computed by two requests at once: block tables are append-only, so an id never changes).

    ``events`` records ``("evict", block_id, hash)`` each time a cached block is reused for new
    contents, in order, so a test (or you) can see the eviction order.
    """

    def __init__(self, num_blocks: int, enable_caching: bool = True) -> None:
        if not isinstance(num_blocks, int) or num_blocks < 1:
            raise ValueError(f"num_blocks must be a positive int, got {num_blocks!r}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = [KVBlock(i) for i in range(num_blocks)]
        self.free_queue = FreeBlockQueue(self.blocks)
        self.cached: dict[BlockHash, dict[int, KVBlock]] = {}
        self.events: list[tuple[str, int, BlockHash]] = []

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    def get_cached_block(self, block_hash: BlockHash) -> KVBlock | None:
        """The first cached block with this hash, or None (a cache miss)."""
        entry = self.cached.get(block_hash)
        return next(iter(entry.values())) if entry else None

    def _maybe_evict_cached_block(self, block: KVBlock) -> bool:
        """Drop ``block`` from the prefix cache (it is about to hold new tokens). True if it was cached."""
        if block.block_hash is None:
            return False
        entry = self.cached.get(block.block_hash, {})
        entry.pop(block.block_id, None)
        if not entry:
            self.cached.pop(block.block_hash, None)
        self.events.append(("evict", block.block_id, block.block_hash))
        block.block_hash = None
        return True

    def get_new_blocks(self, n: int) -> list[KVBlock]:
        """Take ``n`` blocks from the FRONT of the free queue (the least recently freed), evict any
        prefix-cache entry they still carry, and hand them out with ``ref_cnt == 1``.

        Raises:
            ValueError: ``n`` < 0 or more than the free blocks.
        """
        if n < 0 or n > self.num_free_blocks:
            raise ValueError(f"cannot take {n} blocks: {self.num_free_blocks} free")
        # BEGIN SOLUTION popleft n times; _maybe_evict_cached_block each; ref_cnt 0 -> 1 (medium, ~15 min)
        out = []
        for _ in range(n):
            block = self.free_queue.popleft()
            if self.enable_caching:
                self._maybe_evict_cached_block(block)
            assert block.ref_cnt == 0, f"block {block.block_id} was in the free queue with ref_cnt {block.ref_cnt}"
            block.ref_cnt = 1
            out.append(block)
        return out
        # END SOLUTION

    def touch(self, blocks: Iterable[KVBlock]) -> None:
        """A prefix hit: one more request uses these cached blocks. A block with ``ref_cnt == 0`` is
        sitting in the free queue as an eviction candidate: take it out before counting it."""
        # BEGIN SOLUTION remove from the free queue when ref_cnt is 0, then ref_cnt += 1 (easy, ~10 min)
        for block in blocks:
            if block.ref_cnt == 0:
                self.free_queue.remove(block)
            block.ref_cnt += 1
        # END SOLUTION

    def free_blocks(self, ordered_blocks: Iterable[KVBlock]) -> None:
        """One request lets go of these blocks, given in EVICTION order (first = evicted first).
        A block whose count reaches 0 goes to the BACK of the free queue, keeping its hash.

        Raises:
            RuntimeError: a block freed more often than it was taken (ref_cnt would go below 0).
        """
        # BEGIN SOLUTION ref_cnt -= 1 (RuntimeError below 0); at 0 append to the free queue (easy, ~10 min)
        for block in ordered_blocks:
            if block.ref_cnt <= 0:
                raise RuntimeError(f"double free: block {block.block_id} has ref_cnt {block.ref_cnt}")
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                self.free_queue.append(block)
        # END SOLUTION

    def cache_full_blocks(self, blocks: Sequence[KVBlock], block_hashes: Sequence[BlockHash]) -> None:
        """Register newly filled blocks for prefix caching: ``blocks[i]`` gets ``block_hashes[i]``
        and becomes findable through :meth:`get_cached_block`.

        Raises:
            ValueError: lengths differ, or a block already carries a hash (a full block is cached once).
        """
        if len(blocks) != len(block_hashes):
            raise ValueError(f"{len(blocks)} blocks but {len(block_hashes)} hashes")
        if not self.enable_caching:
            return
        # BEGIN SOLUTION set block.block_hash; cached.setdefault(hash, {})[block_id] = block (easy, ~10 min)
        for block, h in zip(blocks, block_hashes):
            if block.block_hash is not None:
                raise ValueError(f"block {block.block_id} is already cached")
            block.block_hash = h
            self.cached.setdefault(h, {})[block.block_id] = block
        # END SOLUTION


# ---------------------------------------------------------------------------------------------
# 3. The per-request manager (vllm/v1/core/kv_cache_manager.py + single_type_kv_cache_manager.py)
# ---------------------------------------------------------------------------------------------


class KVCacheManager:
    """Block tables for requests over one :class:`BlockPool`.

    The life of a request, as vLLM's scheduler drives it::

        blocks, n_hit = mgr.get_computed_blocks(prompt)            # prefix-cache hit (full blocks)
        table = mgr.allocate_slots("r1", prompt, len(prompt) - n_hit, blocks)   # None: no room now
        ...                                                        # decode: one token per step
        tokens.append(t); mgr.allocate_slots("r1", tokens, 1)      # a new block every block_size tokens
        mgr.free("r1")                                             # finished or preempted

    ``token_ids`` is always every token the request knows (prompt + generated); the slots that
    exist cover ``num_tokens(req)`` of them. Blocks are registered in the prefix cache as soon as
    the tokens whose slots they hold fill them.
    """

    def __init__(self, num_blocks: int, block_size: int = 16, enable_caching: bool = True) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        self.pool = BlockPool(num_blocks, enable_caching)
        self.req_to_blocks: dict[str, list[KVBlock]] = {}
        self.num_tokens_of: dict[str, int] = {}
        self.num_cached_blocks: dict[str, int] = {}
        self.hits = self.queries = 0  # prefix-cache statistics, in tokens

    def block_table(self, request_id: str) -> list[int]:
        """The physical block ids of a request, in logical order."""
        return [b.block_id for b in self.req_to_blocks[request_id]]

    def num_tokens(self, request_id: str) -> int:
        return self.num_tokens_of[request_id]

    def get_computed_blocks(self, token_ids: Sequence[int]) -> tuple[list[KVBlock], int]:
        """The longest run of this prompt's leading full blocks found in the prefix cache.

        At most ``(len(token_ids) - 1) // block_size`` blocks are used: the last prompt token is
        always recomputed, because its forward pass produces the logits of the first new token
        (vLLM: ``max_cache_hit_length = request.num_tokens - 1``). Nothing is touched or allocated.

        Returns:
            (the blocks, ``len(blocks) * block_size`` = the tokens whose KV need no compute).
        """
        if len(token_ids) == 0:
            raise ValueError("empty prompt")
        if not self.pool.enable_caching:
            return [], 0
        # (keep the hit statistics: self.queries += prompt tokens, self.hits += hit tokens)
        # BEGIN SOLUTION hash the usable full blocks; stop at the first hash not in the pool's cache (medium, ~15 min)
        usable = (len(token_ids) - 1) // self.block_size
        found: list[KVBlock] = []
        for h in hash_request_blocks(token_ids[:usable * self.block_size], self.block_size):
            block = self.pool.get_cached_block(h)
            if block is None:
                break
            found.append(block)
        n = len(found) * self.block_size
        self.queries += len(token_ids)
        self.hits += n
        return found, n
        # END SOLUTION

    def allocate_slots(self, request_id: str, token_ids: Sequence[int], num_new_tokens: int,
                       computed_blocks: Sequence[KVBlock] = ()) -> list[int] | None:
        """Make room for ``num_new_tokens`` more tokens of a request; return its block table, or
        None when the pool cannot hold them right now (nothing changes then: the scheduler will
        preempt someone or wait).

        For a NEW request ``computed_blocks`` are its prefix-cache hits (from
        :meth:`get_computed_blocks`); the slots then cover ``len(computed_blocks) * block_size +
        num_new_tokens`` tokens. For a running request ``computed_blocks`` must be empty.

        Steps: blocks needed = ceil(tokens / block_size) minus those held and hit; hits with
        ``ref_cnt == 0`` sit in the free queue, so they do not count as free room; touch the hits,
        take new blocks, then register the blocks that are now full (hashes from ``token_ids``).

        Raises:
            ValueError: negative ``num_new_tokens``; slots for more tokens than ``token_ids`` holds;
                ``computed_blocks`` for a request that already has blocks.
        """
        if num_new_tokens < 0:
            raise ValueError(f"num_new_tokens must be >= 0, got {num_new_tokens}")
        is_new = request_id not in self.req_to_blocks
        if computed_blocks and not is_new:
            raise ValueError(f"request {request_id!r} already has blocks: prefix hits are for new requests")
        held = self.req_to_blocks.get(request_id, [])
        start = self.num_tokens_of.get(request_id, len(computed_blocks) * self.block_size)
        total = start + num_new_tokens
        if total > len(token_ids):
            raise ValueError(f"slots for {total} tokens requested but token_ids holds {len(token_ids)}")
        # BEGIN SOLUTION count blocks to take (minus evictable hits); None if short; touch, take, record, cache full blocks (hard, ~30 min)
        bs = self.block_size
        n_new_blocks = max(0, -(-total // bs) - len(held) - len(computed_blocks))
        evictable_hits = sum(1 for b in computed_blocks if b.ref_cnt == 0)
        if n_new_blocks > self.pool.num_free_blocks - evictable_hits:
            return None
        self.pool.touch(computed_blocks)
        blocks = held + list(computed_blocks) + self.pool.get_new_blocks(n_new_blocks)
        self.req_to_blocks[request_id] = blocks
        self.num_tokens_of[request_id] = total
        done = self.num_cached_blocks.get(request_id, len(computed_blocks))
        full = total // bs
        if full > done:
            parent = blocks[done - 1].block_hash if done else None
            hashes = []
            for i in range(done, full):
                parent = hash_block_tokens(parent, token_ids[i * bs:(i + 1) * bs])
                hashes.append(parent)
            self.pool.cache_full_blocks(blocks[done:full], hashes)
            done = full
        self.num_cached_blocks[request_id] = done
        return [b.block_id for b in blocks]
        # END SOLUTION

    def free(self, request_id: str) -> None:
        """Release a finished (or preempted) request's blocks, TAIL FIRST: the last blocks of a
        sequence are the least likely to be shared, so they should be evicted before its prefix.

        Raises:
            KeyError: unknown request.
        """
        if request_id not in self.req_to_blocks:
            raise KeyError(f"unknown request {request_id!r}")
        # BEGIN SOLUTION pop the table; free_blocks(reversed(...)); forget the request's counters (easy, ~5 min)
        blocks = self.req_to_blocks.pop(request_id)
        self.num_tokens_of.pop(request_id)
        self.num_cached_blocks.pop(request_id, None)
        self.pool.free_blocks(reversed(blocks))
        # END SOLUTION

    def check_consistency(self) -> None:
        """Raise AssertionError if the bookkeeping is broken: a block both free and in use, a
        reference count that is not the number of tables holding the block, a leaked block, a
        stale or missing prefix-cache entry, a table too short for its tokens."""
        users: dict[int, int] = {}
        for rid, blocks in self.req_to_blocks.items():
            ids = [b.block_id for b in blocks]
            assert len(ids) == len(set(ids)), f"request {rid} holds a block twice: {ids}"
            assert len(blocks) * self.block_size >= self.num_tokens_of[rid], f"request {rid}'s table is too short"
            for i in ids:
                users[i] = users.get(i, 0) + 1
        for b in self.pool.blocks:
            assert b.ref_cnt == users.get(b.block_id, 0), (
                f"block {b.block_id}: ref_cnt {b.ref_cnt} but {users.get(b.block_id, 0)} tables hold it")
            assert (b in self.pool.free_queue) == (b.ref_cnt == 0), (
                f"block {b.block_id}: ref_cnt {b.ref_cnt} but in free queue = {b in self.pool.free_queue}")
            if b.block_hash is not None:
                assert b.block_id in self.pool.cached.get(b.block_hash, {}), f"block {b.block_id}'s hash is not cached"
        for h, entry in self.pool.cached.items():
            for bid, b in entry.items():
                assert b.block_id == bid and b.block_hash == h, f"stale prefix-cache entry for block {bid}"
        assert self.pool.num_free_blocks + len(users) == self.pool.num_blocks, "a block leaked"


# ---------------------------------------------------------------------------------------------
# 4. Fragmentation: contiguous reservation vs paged blocks
# ---------------------------------------------------------------------------------------------

SCHEMES = ("contiguous-max-len", "contiguous-max-tokens", "paged")


def reserved_slots(scheme: str, lengths: np.ndarray, *, prompt_len: int, max_tokens: int,
                   max_model_len: int, block_size: int) -> np.ndarray:
    """KV slots held by one request when its sequence has each of ``lengths`` tokens.

    - ``contiguous-max-len``: one buffer of ``max_model_len`` slots from admission (FasterTransformer,
      early HF serving);
    - ``contiguous-max-tokens``: ``prompt_len + max_tokens`` slots, capped at ``max_model_len``
      (Orca-style: reserve the worst case of this request);
    - ``paged``: whole blocks, ``ceil(length / block_size) * block_size`` (vLLM).

    Args:
        lengths: int array of current sequence lengths (tokens), each in [1, max_model_len].
    Returns:
        int64 array, same shape.
    Raises:
        ValueError: unknown scheme, or lengths out of range.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size and (lengths.min() < 1 or lengths.max() > max_model_len):
        raise ValueError(f"lengths must be in [1, {max_model_len}]")
    # BEGIN SOLUTION three formulas; np.full_like for the two contiguous ones, ceil-div for paged (easy, ~10 min)
    if scheme == "contiguous-max-len":
        return np.full_like(lengths, max_model_len)
    if scheme == "contiguous-max-tokens":
        return np.full_like(lengths, min(prompt_len + max_tokens, max_model_len))
    return -(-lengths // block_size) * block_size
    # END SOLUTION


def simulate_fragmentation(prompt_lens: Sequence[int], output_lens: Sequence[int], *, max_tokens: int,
                           max_model_len: int, block_size: int = 16) -> dict[str, dict[str, float]]:
    """Measured KV waste of each scheme over every decode step of every request.

    A request with prompt ``p`` and answer ``o`` is alive for ``o`` steps, holding ``p + j`` tokens at
    step ``j = 1..o``. Summed over all steps of all requests: ``used`` token-steps vs ``reserved``
    slot-steps. ``waste = 1 - used / reserved`` (the share of reserved KV memory holding nothing);
    ``final_waste`` is the same at each request's last step only; ``capacity_x`` is how many more
    requests fit in the same memory than under ``contiguous-max-len`` (ratio of mean reservations).
    Requests whose ``p + min(o, max_tokens)`` exceeds ``max_model_len`` are truncated to fit.
    """
    p_all = np.asarray(prompt_lens, dtype=np.int64)
    o_all = np.minimum(np.asarray(output_lens, dtype=np.int64), max_tokens)
    if p_all.shape != o_all.shape or p_all.size == 0:
        raise ValueError("prompt_lens and output_lens must be non-empty and the same length")
    if (p_all < 1).any() or (o_all < 1).any():
        raise ValueError("every prompt and output needs at least one token")
    p_all = np.minimum(p_all, max_model_len - 1)
    o_all = np.minimum(o_all, max_model_len - p_all)
    out: dict[str, dict[str, float]] = {}
    for scheme in SCHEMES:
        used = reserved = used_last = reserved_last = 0
        for p, o in zip(p_all.tolist(), o_all.tolist()):
            lens = np.arange(p + 1, p + o + 1)
            r = reserved_slots(scheme, lens, prompt_len=p, max_tokens=max_tokens,
                               max_model_len=max_model_len, block_size=block_size)
            used += int(lens.sum())
            reserved += int(r.sum())
            used_last += int(lens[-1])
            reserved_last += int(r[-1])
        out[scheme] = {"used": used, "reserved": reserved, "waste": 1 - used / reserved,
                       "final_waste": 1 - used_last / reserved_last, "mean_reserved": reserved / int(o_all.sum())}
    base = out["contiguous-max-len"]["mean_reserved"]
    for s in SCHEMES:
        out[s]["capacity_x"] = base / out[s]["mean_reserved"]
    return out


def alpaca_eval_lengths(limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(prompt, answer) token counts of AlpacaEval's 805 instructions and reference answers,
    tokenized with the curriculum model's tokenizer (a 4,096-piece TinyStories BPE: it splits
    unusual words finely, so counts run ~1.5-2x a Llama tokenizer's; the shape of the
    distribution, long-tailed answers, is what matters here)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(curriculum_model_path("main") / "hf")
    tok.model_max_length = 1 << 30  # we only count tokens; no model sees these sequences
    rows = [json.loads(line) for line in
            dataset_path("alpaca-eval", "alpaca_eval.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = rows[:limit] if limit else rows
    enc = tok([r["instruction"] for r in rows] + [r["output"] for r in rows], add_special_tokens=False)["input_ids"]
    n = len(rows)
    # + 1: the bos id 0 we prepend to prompts; + 1: the end-of-sequence token an answer ends with
    return (np.array([len(e) + 1 for e in enc[:n]]), np.array([max(len(e), 1) + 1 for e in enc[n:]]))


# ---------------------------------------------------------------------------------------------
# 5. How many KV blocks vLLM allocates (vllm/v1/worker/gpu_worker.py, vllm/v1/core/kv_cache_utils.py)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelKVSpec:
    """What the KV cache size depends on: attention layers, KV heads, head size, cache dtype bytes."""

    name: str
    n_layers: int
    n_kv_heads: int
    head_dim: int
    dtype_bytes: int
    max_position_embeddings: int = 0

    @classmethod
    def from_hf_config(cls, path: str | Path, dtype_bytes: int | None = None, name: str | None = None) -> ModelKVSpec:
        """Read an HF ``config.json`` (a model folder or the file). ``dtype_bytes`` defaults to the
        config's dtype (vLLM's ``--kv-cache-dtype auto`` uses the model dtype)."""
        path = Path(path)
        cfg = json.loads((path / "config.json" if path.is_dir() else path).read_text(encoding="utf-8"))
        n_head = cfg["num_attention_heads"]
        dt = str(cfg.get("dtype") or cfg.get("torch_dtype") or "bfloat16")
        nbytes = dtype_bytes or {"float32": 4, "float16": 2, "bfloat16": 2}.get(dt, 2)
        return cls(name=name or path.name, n_layers=cfg["num_hidden_layers"],
                   n_kv_heads=cfg.get("num_key_value_heads", n_head),
                   head_dim=cfg.get("head_dim") or cfg["hidden_size"] // n_head, dtype_bytes=nbytes,
                   max_position_embeddings=cfg.get("max_position_embeddings", 0))


def kv_page_size_bytes(spec: ModelKVSpec, block_size: int = 16) -> int:
    """Bytes of ONE block in ONE layer: keys and values for ``block_size`` tokens
    (vLLM's ``AttentionSpec.page_size_bytes``: 2 * block_size * num_kv_heads * head_size * dtype size)."""
    # BEGIN SOLUTION K and V, block_size tokens, every KV head, head_dim elements of dtype_bytes (easy, ~5 min)
    return 2 * block_size * spec.n_kv_heads * spec.head_dim * spec.dtype_bytes
    # END SOLUTION


def vllm_num_gpu_blocks(*, total_gpu_bytes: int, gpu_memory_utilization: float, non_kv_cache_bytes: int,
                        page_size_bytes: int, n_layers: int) -> int:
    """vLLM's block count.

    ``requested = total_gpu_bytes * gpu_memory_utilization`` (what vLLM may use on the card);
    ``available = requested - non_kv_cache_bytes`` (weights + peak activations of the profiling
    run + non-torch memory such as NCCL/cuBLAS workspaces + the CUDA-graph estimate, measured at
    startup and logged as "Available KV cache memory: X GiB"); then every block costs one page in
    every layer: ``num_blocks = int(available // page_size // n_layers)``, floored at 0.

    Raises:
        ValueError: utilization outside (0, 1], non-positive sizes.
    """
    if not 0 < gpu_memory_utilization <= 1:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    if total_gpu_bytes <= 0 or page_size_bytes <= 0 or n_layers <= 0 or non_kv_cache_bytes < 0:
        raise ValueError("sizes must be positive (non_kv_cache_bytes >= 0)")
    # BEGIN SOLUTION requested = int(total * util); available = requested - non_kv; floor-divide twice; max(.., 0) (easy, ~10 min)
    available = int(total_gpu_bytes * gpu_memory_utilization) - non_kv_cache_bytes
    return max(int(available // page_size_bytes // n_layers), 0)
    # END SOLUTION


def vllm_kv_log_lines(num_blocks: int, block_size: int, max_model_len: int) -> list[str]:
    """The two lines vLLM logs after sizing the cache (same format strings as ``kv_cache_utils.py``)."""
    tokens = num_blocks * block_size
    return [f"GPU KV cache size: {tokens:,} tokens",
            f"Maximum concurrency for {max_model_len:,} tokens per request: {tokens / max_model_len:.2f}x"]


_LOG_PATTERNS = {
    "available_gib": r"Available KV cache memory:\s*([0-9.]+)\s*GiB",
    "kv_tokens": r"GPU KV cache size:\s*([0-9,]+)\s*tokens",
    "max_model_len": r"Maximum concurrency for\s*([0-9,]+)\s*tokens per request",
    "max_concurrency": r"tokens per request:\s*([0-9.]+)x",
}


def parse_vllm_startup_log(text: str) -> dict[str, float]:
    """Pull the KV-sizing numbers out of a ``vllm serve`` log (the last occurrence of each)."""
    out: dict[str, float] = {}
    for key, pat in _LOG_PATTERNS.items():
        found = re.findall(pat, text)
        if found:
            out[key] = float(found[-1].replace(",", ""))
    return out


def check_calculator_against_log(text: str, spec: ModelKVSpec, block_size: int = 16) -> dict[str, Any]:
    """Predict "GPU KV cache size" from the log's own "Available KV cache memory" (printed to
    0.01 GiB, so the prediction is an interval) and say whether the logged token count is inside."""
    got = parse_vllm_startup_log(text)
    if "available_gib" not in got or "kv_tokens" not in got:
        raise ValueError("the log has no 'Available KV cache memory' / 'GPU KV cache size' lines")
    page = kv_page_size_bytes(spec, block_size)
    lo, hi = ((got["available_gib"] + d) * GIB for d in (-0.005, 0.005))
    pred = [max(int(x // page // spec.n_layers), 0) * block_size for x in (lo, hi)]
    return {"logged_tokens": int(got["kv_tokens"]), "predicted_tokens": tuple(pred),
            "ok": pred[0] <= got["kv_tokens"] <= pred[1], **got}


# ---------------------------------------------------------------------------------------------
# 6. The GPU part: vllm serve in its own environment, lab 9.3's load generator, a tuning grid
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VLLMConfig:
    """The ``vllm serve`` knobs this lab tunes (names as on the command line)."""

    max_num_seqs: int = 64
    max_model_len: int = 256
    gpu_memory_utilization: float = 0.5
    dtype: str = "bfloat16"   # FlashAttention has no fp32 kernels; vLLM would downcast an fp32 model anyway
    block_size: int = 16
    enable_prefix_caching: bool = True
    extra: tuple[str, ...] = field(default_factory=tuple)


CACHE_DTYPE_BYTES = {"float32": 4, "float16": 2, "half": 2, "bfloat16": 2}


def vllm_executable() -> str | None:
    """``$VLLM_BIN``, else ``<repo>/.venv-vllm/bin/vllm`` (the recipe in the README), else ``vllm`` on PATH."""
    cands = [os.environ.get("VLLM_BIN"), str(HERE.parent.parent / ".venv-vllm" / "bin" / "vllm"), shutil.which("vllm")]
    return next((c for c in cands if c and Path(c).exists()), None)


def vllm_serve_command(model: str | Path, cfg: VLLMConfig, *, port: int, served_name: str = "curriculum-main",
                       vllm_bin: str = "vllm") -> list[str]:
    """The argv of ``vllm serve`` for one configuration."""
    cmd = [vllm_bin, "serve", str(model), "--served-model-name", served_name, "--host", "127.0.0.1",
           "--port", str(port), "--max-num-seqs", str(cfg.max_num_seqs), "--max-model-len", str(cfg.max_model_len),
           "--gpu-memory-utilization", str(cfg.gpu_memory_utilization), "--dtype", cfg.dtype,
           "--block-size", str(cfg.block_size)]
    cmd.append("--enable-prefix-caching" if cfg.enable_prefix_caching else "--no-enable-prefix-caching")
    return cmd + list(cfg.extra)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def launch_vllm(model: str | Path, cfg: VLLMConfig, *, log_path: Path, served_name: str = "curriculum-main",
                startup_timeout: float = 900.0) -> Iterator[tuple[str, Path]]:
    """Start ``vllm serve`` as a child process, wait for ``GET /health``, yield (``base_url`` ending in
    ``/v1``, the log file); stop it on exit. Raises RuntimeError with the log's tail if it dies."""
    import httpx

    exe = vllm_executable()
    if exe is None:
        raise RuntimeError("vLLM not found: build its environment (README: 'The vLLM environment') or set VLLM_BIN")
    port = _free_port()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if Path(model).exists():          # a local export: never reach for the hub
        env["HF_HUB_OFFLINE"] = "1"
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(vllm_serve_command(model, cfg, port=port, served_name=served_name, vllm_bin=exe),
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
                raise RuntimeError(f"vllm serve exited with {proc.returncode}:\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"vllm serve did not become healthy in {startup_timeout:.0f} s (log: {log_path})")
            time.sleep(1.0)
        yield base + "/v1", log_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _lab03():
    from labkit import load_lab

    return load_lab("phase-09-inference-optimization/lab-03-continuous-batching-server")


def load_test(base_url: str, model: str, prompts: Sequence[str], *, concurrency: int, max_tokens: int) -> dict:
    """Lab 9.3's closed-loop load generator (``run_load`` + ``summarize``), unchanged, on any
    OpenAI-compatible ``/v1/completions``: TTFT/ITL percentiles (ms) and aggregate tok/s."""
    import asyncio

    lab3 = _lab03()
    results, wall = asyncio.run(lab3.run_load(base_url, model, prompts, concurrency=concurrency,
                                              max_tokens=max_tokens, temperature=0.0))
    return {**lab3.summarize(results, wall), "wall_s": wall, "concurrency": concurrency}


def run_lab03_load(prompts: Sequence[str], *, concurrency: int, max_tokens: int, max_batch_size: int = 16) -> dict:
    """The same load against lab 9.3's continuous-batching server (in-process uvicorn, CPU)."""
    import torch

    lab3 = _lab03()
    torch.set_num_threads(1)
    model, tok = lab3.load_served_model("main")
    engine = lab3.Engine(model, tok, max_batch_size=max_batch_size)
    with lab3.serve_in_thread(engine) as ep:
        return load_test(ep.base_url, ep.model, prompts, concurrency=concurrency, max_tokens=max_tokens)


def tune_vllm(model: str | Path, grid: Sequence[VLLMConfig], prompts: Sequence[str], *, concurrency: int,
              max_tokens: int, out_dir: Path, spec: ModelKVSpec | None = None) -> list[dict]:
    """Serve each configuration, load-test it, read its KV sizing from the log. One row per config."""
    rows = []
    for i, cfg in enumerate(grid):
        with launch_vllm(model, cfg, log_path=out_dir / f"vllm-{i}.log") as (url, log):
            row = load_test(url, "curriculum-main", prompts, concurrency=concurrency, max_tokens=max_tokens)
            text = log.read_text(encoding="utf-8", errors="replace")
        row.update(parse_vllm_startup_log(text), max_num_seqs=cfg.max_num_seqs, max_model_len=cfg.max_model_len,
                   gpu_memory_utilization=cfg.gpu_memory_utilization)
        if spec is not None:
            sized = replace(spec, dtype_bytes=CACHE_DTYPE_BYTES.get(cfg.dtype, spec.dtype_bytes))
            row["calculator"] = check_calculator_against_log(text, sized, cfg.block_size)
        rows.append(row)
        print(f"  vLLM seqs={cfg.max_num_seqs:>4} len={cfg.max_model_len:>5} util={cfg.gpu_memory_utilization:.2f}: "
              f"{row['tok_s']:.0f} tok/s, TTFT p50 {row['ttft_p50']:.1f} ms p99 {row['ttft_p99']:.1f} ms, "
              f"KV {row.get('kv_tokens', float('nan')):,.0f} tokens", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------
# 7. Self-test
# ---------------------------------------------------------------------------------------------

STORY_STARTS = ["Once upon a time", "One day, a little girl named Lily", "Tom had a red ball.",
                "The sun was hot and", "There was a big dog", "Mom said,", "In the park, the kids",
                "A small cat saw a bird"]


def _plot_fragmentation(p: np.ndarray, o: np.ndarray, frag: dict, path: Path) -> Path:
    from labkit.plots import plt, savefig

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    bins = np.logspace(0, np.log10(max(p.max(), o.max()) + 1), 40)
    a.hist(p, bins=bins, alpha=0.6, label="prompt")
    a.hist(o, bins=bins, alpha=0.6, label="answer")
    a.set_xscale("log")
    a.set(xlabel="tokens (curriculum tokenizer)", ylabel="requests", title="AlpacaEval lengths (805 requests)")
    a.legend()
    names = list(frag)
    b.bar([s.replace("-max", "\nmax") for s in names], [100 * frag[s]["waste"] for s in names],
          color=["tab:red", "tab:orange", "tab:green"])
    for i, s in enumerate(names):
        b.text(i, 100 * frag[s]["waste"] + 1, f"{frag[s]['waste']:.1%}", ha="center")
    b.set(ylabel="reserved KV slots holding no token (%)", title="KV waste over every decode step", ylim=(0, 105))
    fig.tight_layout()
    return savefig(fig, path)


def prefix_sharing_demo(n_requests: int = 32, block_size: int = 16, seed: int = 0) -> dict[str, float]:
    """Chat-style traffic: every request = one of 2 shared system prompts (96 tokens) + its own
    question (10-40 tokens) + 32 generated tokens. Blocks used at peak with and without caching."""
    rng = np.random.default_rng(seed)
    systems = [list(rng.integers(4, 4096, 96)) for _ in range(2)]
    out = {}
    for caching in (False, True):
        mgr = KVCacheManager(num_blocks=4096, block_size=block_size, enable_caching=caching)
        r = np.random.default_rng(seed + 1)
        for i in range(n_requests):
            toks = systems[i % 2] + list(r.integers(4, 4096, int(r.integers(10, 41))))
            hit, n = mgr.get_computed_blocks(toks)
            assert mgr.allocate_slots(f"r{i}", toks, len(toks) - n, hit) is not None
            for _ in range(32):
                toks.append(int(r.integers(4, 4096)))
                assert mgr.allocate_slots(f"r{i}", toks, 1) is not None
        mgr.check_consistency()
        out["blocks_cached" if caching else "blocks_plain"] = mgr.pool.num_blocks - mgr.pool.num_free_blocks
        if caching:
            out["hit_rate"] = mgr.hits / mgr.queries
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vllm", action="store_true", help="GPU part: vllm serve + load tests + tuning grid")
    parser.add_argument("--full", action="store_true", help="with --vllm: also an 8B AWQ model (HF hub access)")
    args = parser.parse_args(argv)
    seed_everything(0)
    failures: list[str] = []
    out = HERE / "outputs"
    out.mkdir(exist_ok=True)
    t0 = time.perf_counter()

    # 1. vLLM's test_evict scenario, then prefix sharing on chat-style traffic
    mgr = KVCacheManager(num_blocks=10, block_size=16)
    mgr.allocate_slots("0", list(range(87)), 87)
    mgr.allocate_slots("1", list(range(87, 87 + 48)), 48)
    mgr.free("0")
    mgr.free("1")
    order = mgr.pool.free_queue.block_ids()
    print(f"[block manager] free queue after freeing a 6-block and a 3-block request: {order} "
          f"(vLLM's test_evict, shifted by its null block: [9, 5, 4, 3, 2, 1, 0, 8, 7, 6])")
    if order != [9, 5, 4, 3, 2, 1, 0, 8, 7, 6]:
        failures.append("free-queue order differs from vLLM's")
    demo = prefix_sharing_demo()
    print(f"[prefix caching] 32 chat requests (2 system prompts of 96 tokens): {demo['blocks_plain']} blocks "
          f"without caching, {demo['blocks_cached']} with ({demo['blocks_plain'] / demo['blocks_cached']:.2f}x fewer), "
          f"prompt-token hit rate {demo['hit_rate']:.1%}")
    if demo["blocks_cached"] >= demo["blocks_plain"]:
        failures.append("prefix caching saved no blocks")

    # 2. fragmentation on AlpacaEval lengths
    p, o = alpaca_eval_lengths()
    max_len, max_tok = 4096, 2048
    frag = simulate_fragmentation(p, o, max_tokens=max_tok, max_model_len=max_len, block_size=16)
    print(f"\n[fragmentation] AlpacaEval, {len(p)} requests, curriculum tokenizer: prompt tokens median "
          f"{int(np.median(p))} (p90 {int(np.percentile(p, 90))}), answer median {int(np.median(o))} "
          f"(p90 {int(np.percentile(o, 90))}, max {int(o.max())}); max_model_len {max_len}, max_tokens {max_tok}")
    print(f"{'scheme':<22} {'waste (all steps)':>17} {'waste (last step)':>17} {'slots/request':>13} {'capacity':>9}")
    for s, r in frag.items():
        print(f"{s:<22} {r['waste']:>17.1%} {r['final_waste']:>17.1%} {r['mean_reserved']:>13.0f} {r['capacity_x']:>8.1f}x")
    for bs in (8, 16, 32):
        w = simulate_fragmentation(p, o, max_tokens=max_tok, max_model_len=max_len, block_size=bs)["paged"]["waste"]
        print(f"  paged, block_size {bs:>2}: waste {w:.2%}")
    if not frag["paged"]["waste"] < 0.05 < frag["contiguous-max-tokens"]["waste"]:
        failures.append("paged waste should be < 5% and contiguous well above it")
    (out / "fragmentation.json").write_text(json.dumps(frag, indent=2), encoding="utf-8")
    print(f"figure: {_plot_fragmentation(p, o, frag, HERE / 'figures' / 'fragmentation.png')}")

    # 3. KV capacity calculator
    main_spec = ModelKVSpec.from_hf_config(curriculum_model_path("main") / "hf", name="curriculum-main (fp32)")
    llama8 = ModelKVSpec("Llama-3-8B (bf16 KV)", n_layers=32, n_kv_heads=8, head_dim=128, dtype_bytes=2)
    print("\n[KV capacity] vLLM: blocks = int((total * util - non_kv) // page // layers); block_size 16")
    print(f"{'model':<24} {'GPU':<10} {'util':>5} {'non-KV GiB':>10} {'page B':>7} {'blocks':>9} {'KV tokens':>11} "
          f"{'concurrency':>24}")
    cases = [(main_spec, "H200 141GB", 141e9, 0.5, 2.0, 256), (llama8, "A100 40GB", 40 * GIB, 0.9, 6.5, 8192),
             (llama8, "A100 40GB", 40 * GIB, 0.9, 17.0, 8192), (llama8, "H100 80GB", 80 * GIB, 0.9, 17.0, 8192)]
    for spec, gpu, total, util, non_kv, mml in cases:
        page = kv_page_size_bytes(spec)
        nb = vllm_num_gpu_blocks(total_gpu_bytes=int(total), gpu_memory_utilization=util,
                                 non_kv_cache_bytes=int(non_kv * GIB), page_size_bytes=page, n_layers=spec.n_layers)
        conc = vllm_kv_log_lines(nb, 16, mml)[1].split(": ")[1]
        print(f"{spec.name:<24} {gpu:<10} {util:>5.2f} {non_kv:>10.1f} {page:>7} {nb:>9,} {nb * 16:>11,} "
              f"{conc + ' at ' + str(mml):>24}")
    # hand check: Llama-3-8B, 128 KiB of KV per token (32 layers * 2 * 8 heads * 128 * 2 bytes)
    if kv_page_size_bytes(llama8) * llama8.n_layers // 16 != 128 * 1024:
        failures.append("Llama-3-8B KV bytes per token != 128 KiB")
    print("  (non-KV GiB is an input: vLLM measures it at startup; 6.5 ~ 8B AWQ-INT4 weights + activations, "
          "17 ~ bf16 weights + activations)")

    # 4. the load generator (lab 9.3's) against lab 9.3's server: the CPU row of the comparison table
    t1 = time.perf_counter()
    prompts = [STORY_STARTS[i % len(STORY_STARTS)] for i in range(16)]
    row = run_lab03_load(prompts, concurrency=8, max_tokens=16)
    print(f"\n[load test] lab 9.3 server (CPU, 1 torch thread), 16 requests, concurrency 8, 16 tokens each: "
          f"{row['ok']} ok, {row['tok_s']:.0f} tok/s, TTFT p50 {row['ttft_p50']:.0f} ms p99 {row['ttft_p99']:.0f} ms, "
          f"ITL p50 {row['itl_p50']:.1f} ms ({time.perf_counter() - t1:.1f} s)")
    if row["ok"] != 16 or row["tokens"] != 16 * 16:
        failures.append("the lab 9.3 load test lost requests or tokens")
    (out / "lab03_load.json").write_text(json.dumps(row, indent=2), encoding="utf-8")
    print(f"\nCPU part done in {time.perf_counter() - t0:.1f} s wall")

    if args.vllm:
        failures += gpu_part(full=args.full, out=out, spec=main_spec)
    for f in failures:
        print(f"SANITY CHECK FAILED: {f}", file=sys.stderr)
    return 1 if failures else 0


def gpu_part(*, full: bool, out: Path, spec: ModelKVSpec) -> list[str]:
    """vLLM vs lab 9.3 on the curriculum model, the tuning grid, the calculator vs the log."""
    import torch

    if not torch.cuda.is_available() or vllm_executable() is None:
        return ["--vllm needs a CUDA GPU and vLLM's environment (see the README)"]
    failures = []
    model = curriculum_model_path("main") / "hf"
    prompts = [STORY_STARTS[i % len(STORY_STARTS)] for i in range(64 if not full else 256)]
    conc, max_tokens = 16, 64
    lab3 = run_lab03_load(prompts, concurrency=conc, max_tokens=max_tokens)
    print(f"\n[lab 9.3, CPU] concurrency {conc}: {lab3['tok_s']:.0f} tok/s, TTFT p50 {lab3['ttft_p50']:.1f} ms")
    grid = [VLLMConfig(max_num_seqs=s, max_model_len=256, gpu_memory_utilization=u)
            for s in (16, 64, 256) for u in (0.3, 0.9)]
    rows = tune_vllm(model, grid, prompts, concurrency=conc, max_tokens=max_tokens, out_dir=out, spec=spec)
    if full:
        awq = "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4"
        big = [VLLMConfig(max_num_seqs=s, max_model_len=m, gpu_memory_utilization=0.9, dtype="auto")
               for s in (64, 256) for m in (4096, 8192)]
        rows += tune_vllm(awq, big, prompts, concurrency=64, max_tokens=256, out_dir=out)
    (out / "vllm_tuning.json").write_text(json.dumps({"lab03": lab3, "vllm": rows}, indent=2, default=str),
                                          encoding="utf-8")
    best = max(r["tok_s"] for r in rows[:len(grid)])
    print(f"[vLLM vs lab 9.3] best vLLM {best:.0f} tok/s vs lab 9.3 {lab3['tok_s']:.0f} tok/s = "
          f"{best / lab3['tok_s']:.1f}x at concurrency {conc}")
    if best <= lab3["tok_s"]:
        failures.append("vLLM did not beat lab 9.3")
    bad = [r for r in rows if "calculator" in r and not r["calculator"]["ok"]]
    if bad:
        failures.append(f"the block calculator disagrees with vLLM's log in {len(bad)} runs")
    return failures


if __name__ == "__main__":
    raise SystemExit(main())

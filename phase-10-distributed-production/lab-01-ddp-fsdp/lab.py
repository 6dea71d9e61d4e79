# Generated from solution.py by `make labs` (labkit/labgen.py). Fill in the TODOs.
"""Lab 10.1: data parallelism from scratch (bucketed DDP, ZeRO-1) next to torch DDP and FSDP2.

Three ways to train one model on ``world_size`` processes, each proven equal to a single
process that sees the whole batch:

* **DDP from scratch** (:class:`BucketedDDP`): every rank holds the full model and a slice of the
  batch. Gradients are packed into buckets (in reverse parameter order, the order backward
  produces them); a bucket is all-reduced *asynchronously* from a
  ``register_post_accumulate_grad_hook`` the moment its last gradient lands, so communication
  overlaps the rest of backward. Before ``optimizer.step()`` the async handles are waited on and
  the sums divided by ``world_size``. Reference: ``torch.nn.parallel.DistributedDataParallel``
  (Li et al., "PyTorch Distributed", VLDB 2020).
* **ZeRO-1** (:class:`ZeroOneAdamW`): the gradient all-reduce stays, but AdamW's two moment
  buffers are sharded: all parameters are viewed as one flat vector, rank ``r`` owns the
  ``r``-th contiguous slice, updates only that slice, then the slices are all-gathered back into
  every replica. Reference: Rajbhandari et al., "ZeRO", SC 2020, stage 1.
* **FSDP2** (:func:`apply_fsdp2`): ``torch.distributed.fsdp.fully_shard`` turns every parameter
  into a ``DTensor`` sharded on dim 0, all-gathers a block's weights just before its forward and
  backward, and reduce-scatters its gradients (ZeRO-3). The optimizer then only ever sees shards.

Everything runs as a learner runs it: ``torchrun --nproc_per_node=2 solution.py --worker ...``
with the gloo backend on CPU (nccl serves the same calls on GPUs). The model is the Phase 5 MiniGPT
(lab 4.4's class, built through lab 5.2's ``build_model``) on TinyStories characters.

Run: ``python solution.py`` (self-test: launches torchrun with 2 ranks, prints the equality
table and the per-rank memory table, writes ``figures/loss_curves.png``).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from labkit import load_lab, read_text, seed_everything

HERE = Path(__file__).resolve().parent
NANO_LAB = "phase-05-training-small-llms/lab-02-nano-gpt"
nano = load_lab(NANO_LAB)

__all__ = [
    "BucketedDDP",
    "RunConfig",
    "ZeroOneAdamW",
    "adamw_update_",
    "apply_fsdp2",
    "build_buckets",
    "demo_tokens",
    "global_batches",
    "launch",
    "local_bytes",
    "run_single",
    "shard_batch",
    "shard_range",
    "state_bytes",
]

MODES = ("ours", "torch_ddp", "zero1", "fsdp2")
# planted bugs: each one is a mistake a learner makes; the comparisons must flag every one
MUTANTS = ("ours_no_divide", "ours_no_sync", "zero1_no_gather")


# ============================================================================ config and data
@dataclass
class RunConfig:
    """One tiny training run: a 2-layer Llama-style MiniGPT, AdamW, a fixed list of global batches.

    ``global_batch`` sequences per step are split evenly over the ranks; ``bucket_cap_bytes`` is
    small on purpose so that the tiny model still gets several gradient buckets.
    """

    n_layer: int = 2
    d_model: int = 64
    n_head: int = 4
    n_kv_head: int = 2
    block_size: int = 32
    global_batch: int = 8
    steps: int = 3
    lr: float = 3e-3
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    bucket_cap_bytes: int = 64 * 1024
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.global_batch < 1:
            raise ValueError(f"steps and global_batch must be >= 1, got {self.steps}, {self.global_batch}")
        if self.lr <= 0 or self.bucket_cap_bytes <= 0:
            raise ValueError(f"lr and bucket_cap_bytes must be > 0, got {self.lr}, {self.bucket_cap_bytes}")


def demo_tokens(n_chars: int = 60_000) -> tuple[np.ndarray, int]:
    """The first ``n_chars`` characters of the mirror's ``tinystories_10k.txt`` as lab 5.2
    character ids: ``(uint16 array of shape (n_chars,), vocab_size)``."""
    if n_chars < 100:
        raise ValueError(f"n_chars must be >= 100, got {n_chars}")
    text = read_text("tinystories", "tinystories_10k.txt")[:n_chars]
    tok = nano.CharTokenizer(text)
    return np.asarray(tok.encode(text), dtype=np.uint16), tok.vocab_size


def global_batches(tokens: np.ndarray, cfg: RunConfig) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``cfg.steps`` batches ``(x, y)`` of shape (global_batch, block_size), int64, drawn with a
    generator seeded by ``cfg.seed``: every rank (and the single-process run) gets the same list."""
    g = torch.Generator().manual_seed(cfg.seed)
    return [nano.get_batch(tokens, cfg.global_batch, cfg.block_size, generator=g) for _ in range(cfg.steps)]


def build_model(vocab_size: int, cfg: RunConfig) -> nn.Module:
    """The Phase 5 MiniGPT (Llama style) with ``cfg``'s sizes, initialised from ``cfg.seed``."""
    torch.manual_seed(cfg.seed)
    return nano.build_model(vocab_size, style="llama", n_layer=cfg.n_layer, n_head=cfg.n_head,
                            n_kv_head=cfg.n_kv_head, d_model=cfg.d_model, block_size=cfg.block_size,
                            dropout=0.0)


def shard_batch(x: torch.Tensor, y: torch.Tensor, rank: int, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank ``rank``'s contiguous slice of a global batch: rows ``[rank*b, (rank+1)*b)`` with
    ``b = B // world_size`` (what ``DistributedSampler`` does with ``shuffle=False``, up to order).

    Equal slices matter: the mean of per-rank mean losses is the full-batch mean only when every
    rank averages over the same number of rows.

    Args:
        x, y: (B, T) tensors.
    Returns:
        ``(x_r, y_r)``, each (B // world_size, T), views of the inputs.
    Raises:
        ValueError: ``world_size < 1``, ``rank`` not in ``[0, world_size)``, shapes differ, or
            ``B`` not divisible by ``world_size``.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] % world_size:
        raise ValueError(f"global batch {x.shape[0]} is not divisible by world_size={world_size}")
    # TODO(1): b = B // world_size; return x[rank*b:(rank+1)*b], y[...same...] (easy, ~5 min)
    raise NotImplementedError("TODO(1)")


# ============================================================================ DDP from scratch
def build_buckets(sizes_bytes: Sequence[int], bucket_cap_bytes: int) -> list[list[int]]:
    """Group parameters into gradient buckets, DDP style.

    Walk the parameters in REVERSE registration order (backward produces the last layer's
    gradients first) and fill a bucket until adding the next parameter would push it past
    ``bucket_cap_bytes``; then start a new one. A parameter larger than the cap gets a bucket of
    its own. Every index appears in exactly one bucket.

    Args:
        sizes_bytes: gradient size of each parameter in bytes, in registration order.
        bucket_cap_bytes: the soft cap per bucket (torch DDP's ``bucket_cap_mb``, in bytes).
    Returns:
        a list of buckets, each a list of parameter indices in the order they were added,
        e.g. sizes [4, 4, 4], cap 8 -> [[2, 1], [0]].
    Raises:
        ValueError: cap <= 0, no parameters, or a size <= 0.
    """
    if bucket_cap_bytes <= 0:
        raise ValueError(f"bucket_cap_bytes must be > 0, got {bucket_cap_bytes}")
    if len(sizes_bytes) == 0:
        raise ValueError("no parameters to bucket")
    if min(sizes_bytes) <= 0:
        raise ValueError(f"parameter sizes must be > 0 bytes, got {list(sizes_bytes)}")
    # TODO(2): iterate i from len-1 down to 0; if the current bucket is non-empty and its bytes + sizes[i] > cap, close it; append i and add its bytes; close the last bucket (medium, ~10 min)
    raise NotImplementedError("TODO(2)")


class BucketedDDP(nn.Module):
    """Data-parallel wrapper with bucketed, backward-overlapped gradient all-reduce.

    Usage per step (every rank)::

        loss = ddp(x_r, y_r)[1]; loss.backward()     # hooks launch async all-reduces
        ddp.finish_gradient_synchronization()        # wait, divide by world_size, copy back
        optimizer.step()

    At construction every parameter is broadcast from rank 0 (replicas start identical), the
    buckets are built with :func:`build_buckets` and a post-accumulate-grad hook is registered on
    every parameter. Gradients are summed with ``dist.all_reduce(..., async_op=True)`` on a flat
    copy of the bucket; ``finish_gradient_synchronization`` waits on every handle (a handle not
    waited on means reading a half-reduced buffer) and writes the averaged values back into
    ``p.grad`` (float32, same shape as ``p``).

    Attributes:
        buckets: parameter indices per bucket (see :func:`build_buckets`).
        launched_in_backward: all-reduces launched since the last finish (set by the hooks); equal
            to ``len(buckets)`` right after ``backward()`` when communication overlaps backward.
    Raises:
        ValueError: the module has no trainable parameters or ``bucket_cap_bytes <= 0``.
        RuntimeError: not inside an initialised process group; at finish, a bucket never launched
            (a parameter got no gradient: unused parameters are not supported here).
    """

    def __init__(self, module: nn.Module, bucket_cap_bytes: int = 25 * 2**20) -> None:
        super().__init__()
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("BucketedDDP needs torch.distributed.init_process_group() first (run under torchrun)")
        self.module = module
        self.params = [p for p in module.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the module has no trainable parameters")
        self.world_size = dist.get_world_size()
        with torch.no_grad():
            for p in self.params:
                dist.broadcast(p, src=0)
        self.buckets = build_buckets([p.numel() * p.element_size() for p in self.params], bucket_cap_bytes)
        self.bucket_of = {i: b for b, idx in enumerate(self.buckets) for i in idx}
        self.index_of = {id(p): i for i, p in enumerate(self.params)}
        self._ready = [0] * len(self.buckets)     # gradients landed per bucket in this backward
        self._pending: list[tuple[int, torch.Tensor, Any]] = []   # (bucket, flat buffer, work handle)
        self.launched_in_backward = 0
        for p in self.params:
            p.register_post_accumulate_grad_hook(self._on_grad_ready)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def _on_grad_ready(self, param: torch.Tensor) -> None:
        """Hook: ``param.grad`` is final for this backward. Count it in its bucket; when the
        bucket is complete, flatten its gradients (in bucket order) into one new float32 buffer,
        launch ``dist.all_reduce(buffer, async_op=True)``, append ``(bucket, buffer, work)`` to
        ``self._pending`` and increment ``self.launched_in_backward``."""
        b = self.bucket_of[self.index_of[id(param)]]
        # TODO(3): self._ready[b] += 1; when it equals len(self.buckets[b]): flat = torch.cat of the bucket's grads (detached, reshape(-1)); work = dist.all_reduce(flat, async_op=True); record (b, flat, work); launched_in_backward += 1 (hard, ~25 min)
        raise NotImplementedError("TODO(3)")

    def finish_gradient_synchronization(self) -> None:
        """Wait on every pending all-reduce, divide each summed buffer by ``world_size`` and copy
        its slices back into the parameters' ``.grad``; then reset the per-bucket counters,
        ``_pending`` and ``launched_in_backward`` for the next step."""
        if len(self._pending) != len(self.buckets):
            missing = sorted(set(range(len(self.buckets))) - {b for b, _, _ in self._pending})
            raise RuntimeError(f"buckets {missing} never launched their all-reduce: did every parameter get a "
                               "gradient (unused parameters are not supported), and did backward() run?")
        # TODO(4): for each (b, flat, work): work.wait(); flat.div_(world_size); walk the bucket's params with an offset, p.grad.copy_(flat[off:off+n].view_as(p.grad)); finally zero self._ready, clear self._pending, launched_in_backward = 0 (medium, ~15 min)
        raise NotImplementedError("TODO(4)")


# ============================================================================ ZeRO-1
def shard_range(numel: int, rank: int, world_size: int) -> tuple[int, int]:
    """The half-open slice ``[lo, hi)`` of a flat vector of ``numel`` elements that ``rank`` owns.

    The vector is padded to ``world_size * S`` with ``S = ceil(numel / world_size)``; rank ``r``
    owns ``[r*S, (r+1)*S)`` clipped to ``numel`` (so the last rank may own fewer, even 0,
    elements). Example: ``numel=10, world_size=4`` -> S=3: (0,3), (3,6), (6,9), (9,10).

    Raises:
        ValueError: ``numel < 1``, ``world_size < 1`` or ``rank`` out of range.
    """
    if numel < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need numel >= 1 and 0 <= rank < world_size, got {numel}, {rank}, {world_size}")
    # TODO(5): S = ceil(numel / world_size) in integers; lo = min(rank*S, numel); hi = min((rank+1)*S, numel) (easy, ~5 min)
    raise NotImplementedError("TODO(5)")


def adamw_update_(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, *,
                  step: int, lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
    """One AdamW step in place on matching float32 tensors (any shape, e.g. a flat shard).

    Decoupled weight decay ``p *= 1 - lr*wd``; ``m = lerp(m, g, 1-b1)``; ``v = b2*v + (1-b2) g^2``;
    ``p -= lr / (1 - b1^step) * m / (sqrt(v) / sqrt(1 - b2^step) + eps)``. Written with the same
    in-place ops in the same order as ``torch.optim.AdamW``'s single-tensor CPU path, so the
    result is bit-identical to it (all element-wise: the layout of the shard does not matter).
    Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.

    Raises:
        ValueError: ``step < 1`` or mismatched shapes.
    """
    if step < 1:
        raise ValueError(f"step counts from 1, got {step}")
    if not (param.shape == grad.shape == exp_avg.shape == exp_avg_sq.shape):
        raise ValueError("param, grad, exp_avg and exp_avg_sq must have the same shape")
    beta1, beta2 = betas
    # TODO(6): param.mul_(1 - lr*wd); exp_avg.lerp_(grad, 1 - beta1); exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2); denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(eps); param.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1**step)) (medium, ~15 min)
    raise NotImplementedError("TODO(6)")


class ZeroOneAdamW:
    """AdamW whose moment buffers are sharded over the ranks (ZeRO stage 1).

    All parameters, in order, form one flat float32 vector of ``numel`` elements; this rank owns
    ``shard_range(numel, rank, world_size)`` and keeps ``exp_avg``/``exp_avg_sq`` for that slice
    only, so optimizer memory per rank is ~1/world_size of plain AdamW. ``step()`` expects the
    gradients to be already averaged over ranks (by DDP) and does two things:

    1. :meth:`update_shard`: AdamW (:func:`adamw_update_`) on this rank's slice of the flat
       parameters, with this rank's slice of the flat gradient;
    2. :meth:`gather_params`: ``all_gather`` every rank's updated slice (padded to the same
       length) and copy the full vector back into the parameters, so replicas stay identical.

    Raises:
        ValueError: bad hyper-parameters, no parameters, or non-float32 parameters.
        RuntimeError: no initialised process group.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("ZeroOneAdamW needs torch.distributed.init_process_group() first")
        if lr <= 0 or eps <= 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"bad hyper-parameters lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}")
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("no trainable parameters given")
        if any(p.dtype != torch.float32 for p in self.params):
            raise ValueError("this ZeRO-1 keeps float32 parameters only (no mixed-precision master copy)")
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.numel = sum(p.numel() for p in self.params)
        self.shard_size = -(-self.numel // self.world_size)       # padded length of every slice
        self.lo, self.hi = shard_range(self.numel, self.rank, self.world_size)
        self.exp_avg = torch.zeros(self.hi - self.lo)
        self.exp_avg_sq = torch.zeros(self.hi - self.lo)
        self.step_count = 0

    def _flat(self, tensors: Iterable[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.detach().reshape(-1) for t in tensors])

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def update_shard(self) -> torch.Tensor:
        """AdamW on this rank's slice; returns the updated slice (length ``hi - lo``)."""
        self.step_count += 1
        # TODO(7): shard = self._flat(self.params)[lo:hi].clone(); grad = self._flat(p.grad for p in params)[lo:hi]; adamw_update_(shard, grad, self.exp_avg, self.exp_avg_sq, step=self.step_count, lr=..., betas=..., eps=..., weight_decay=...); return shard (medium, ~10 min)
        raise NotImplementedError("TODO(7)")

    @torch.no_grad()
    def gather_params(self, shard: torch.Tensor) -> None:
        """All-gather every rank's updated slice and write the full vector into the parameters."""
        # TODO(8): pad shard with zeros to self.shard_size; full = torch.empty(world_size * shard_size); dist.all_gather_single(full, padded) (all_gather_into_tensor on older torch); split full[:numel] by p.numel() and p.copy_(piece.view_as(p)) (medium, ~15 min)
        raise NotImplementedError("TODO(8)")

    def step(self) -> None:
        if any(p.grad is None for p in self.params):
            raise RuntimeError("a parameter has no .grad: call backward() (and DDP's sync) before step()")
        self.gather_params(self.update_shard())

    def state_tensors(self) -> list[torch.Tensor]:
        return [self.exp_avg, self.exp_avg_sq]


# ============================================================================ FSDP2
def apply_fsdp2(model: nn.Module, mesh: Any) -> nn.Module:
    """Shard ``model`` (a MiniGPT) with FSDP2: ``fully_shard`` each transformer block, then the
    root module (which takes the embeddings, final norm and head that are left).

    Each ``fully_shard`` call makes one communication group: the block's parameters are
    all-gathered together before its forward/backward and its gradients reduce-scattered
    together, so per-block wrapping is what lets FSDP free one block's full weights before the
    next block runs. After this, every parameter is a ``DTensor`` sharded on dim 0 over ``mesh``.

    Args:
        model: a MiniGPT (has ``.blocks``, an ``nn.ModuleList``).
        mesh: a 1-D ``DeviceMesh`` (``init_device_mesh("cpu", (world_size,))``).
    Returns:
        the same module, sharded in place.
    Raises:
        TypeError: ``model`` has no ``blocks`` ModuleList.
    """
    from torch.distributed.fsdp import fully_shard

    if not isinstance(getattr(model, "blocks", None), nn.ModuleList):
        raise TypeError(f"expected a MiniGPT with a .blocks ModuleList, got {type(model).__name__}")
    # TODO(9): for block in model.blocks: fully_shard(block, mesh=mesh); then fully_shard(model, mesh=mesh); return model (easy, ~5 min)
    raise NotImplementedError("TODO(9)")


def local_bytes(tensors: Iterable[torch.Tensor | None]) -> int:
    """Bytes this rank actually stores for ``tensors``: for a ``DTensor`` only its local shard
    (``t.to_local()``), for a plain tensor all of it; ``None`` (no grad yet) counts 0.

    Returns:
        sum of ``numel * element_size`` in bytes.
    """
    from torch.distributed.tensor import DTensor

    # TODO(10): for each t: skip None; if isinstance(t, DTensor): t = t.to_local(); total += t.numel() * t.element_size() (easy, ~5 min)
    raise NotImplementedError("TODO(10)")


def state_bytes(model: nn.Module, optimizer: Any) -> dict[str, int]:
    """Per-rank bytes of parameters, gradients and optimizer state, measured from the tensors
    with :func:`local_bytes` (``torch.optim`` state or :class:`ZeroOneAdamW`'s shards)."""
    if isinstance(optimizer, ZeroOneAdamW):
        opt_tensors = optimizer.state_tensors()
    else:
        opt_tensors = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    params = list(model.parameters())
    out = {"params": local_bytes(params), "grads": local_bytes(p.grad for p in params),
           "optimizer": local_bytes(opt_tensors)}
    out["params+optimizer"] = out["params"] + out["optimizer"]
    return out


# ============================================================================ runs (given)
def _named(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n.removeprefix("module."), p) for n, p in model.named_parameters()]


def _full(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return (t.full_tensor() if isinstance(t, DTensor) else t).detach().clone()


def run_single(tokens: np.ndarray, vocab_size: int, cfg: RunConfig) -> dict[str, Any]:
    """The reference: one process, the whole global batch, ``torch.optim.AdamW``.

    Returns ``{"losses": [float per step], "grads1": {name: grad after step 1's backward},
    "params": {name: parameter after the last step}}``.
    """
    model = build_model(vocab_size, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    losses, grads1 = [], {}
    for step, (x, y) in enumerate(global_batches(tokens, cfg)):
        opt.zero_grad(set_to_none=True)
        _, loss = model(x, y)
        loss.backward()
        if step == 0:
            grads1 = {n: p.grad.detach().clone() for n, p in _named(model)}
        opt.step()
        losses.append(loss.item())
    return {"losses": losses, "grads1": grads1, "params": {n: p.detach().clone() for n, p in _named(model)}}


def run_distributed(mode: str, tokens: np.ndarray, vocab_size: int, cfg: RunConfig) -> dict[str, Any]:
    """One run of ``mode`` (see ``MODES`` and ``MUTANTS``) on this rank; collective, so every rank
    calls it with the same arguments. Losses are the global mean (local means averaged)."""
    from torch.distributed.device_mesh import init_device_mesh

    rank, world = dist.get_rank(), dist.get_world_size()
    model = build_model(vocab_size, cfg)
    ddp = None
    if mode.startswith("ours") or mode.startswith("zero1"):
        ddp = BucketedDDP(model, bucket_cap_bytes=cfg.bucket_cap_bytes)
        runner = ddp
    elif mode == "torch_ddp":
        runner = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=cfg.bucket_cap_bytes / 2**20)
    elif mode == "fsdp2":
        runner = apply_fsdp2(model, init_device_mesh("cpu", (world,)))
    else:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES + MUTANTS}")
    if mode.startswith("zero1"):
        opt = ZeroOneAdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
        if mode == "zero1_no_gather":   # planted bug: each rank keeps only its own slice updated
            opt.gather_params = lambda shard: _write_own_slice(opt, shard)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                weight_decay=cfg.weight_decay)
    losses, grads1, launched = [], {}, []
    for step, (x, y) in enumerate(global_batches(tokens, cfg)):
        xr, yr = shard_batch(x, y, rank, world)
        opt.zero_grad()
        _, loss = runner(xr, yr)
        loss.backward()
        if ddp is not None:
            launched.append(ddp.launched_in_backward)
            if mode == "ours_no_sync":       # planted bug: the handles are never waited on / copied back
                ddp._ready, ddp._pending, ddp.launched_in_backward = [0] * len(ddp.buckets), [], 0
            else:
                ddp.finish_gradient_synchronization()
            if mode == "ours_no_divide":     # planted bug: sum of gradients instead of their mean
                for p in model.parameters():
                    p.grad.mul_(world)
        if step == 0:
            grads1 = {n: _full(p.grad) for n, p in _named(model)}
        opt.step()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        losses.append(mean_loss.item() / world)
    out = {"losses": losses, "grads1": grads1, "params": {n: _full(p) for n, p in _named(model)},
           "bytes": state_bytes(model, opt), "launched": launched}
    if ddp is not None:
        out["n_buckets"] = len(ddp.buckets)
    return out


@torch.no_grad()
def _write_own_slice(opt: ZeroOneAdamW, shard: torch.Tensor) -> None:
    flat = opt._flat(opt.params)
    flat[opt.lo:opt.hi] = shard
    for p, piece in zip(opt.params, torch.split(flat, [p.numel() for p in opt.params])):
        p.copy_(piece.view_as(p))


def _worker(args: argparse.Namespace) -> int:
    """Entry point of each torchrun rank: run every requested mode, save this rank's results."""
    torch.set_num_threads(1)
    backend = "gloo"    # every tensor here lives on the CPU; a GPU port moves model + batches to cuda:LOCAL_RANK
    dist.init_process_group(backend)
    rank = dist.get_rank()
    cfg = RunConfig(**json_loads(args.config))
    tokens, vocab = demo_tokens(args.n_chars)
    results: dict[str, Any] = {"world_size": dist.get_world_size(), "backend": backend}
    for mode in args.modes.split(","):
        seed_everything(cfg.seed)
        t0 = time.perf_counter()
        try:
            results[mode] = run_distributed(mode, tokens, vocab, cfg)
            results[mode]["seconds"] = time.perf_counter() - t0
        except NotImplementedError as e:   # a TODO left: the same on every rank, so no collective hangs
            results[mode] = {"error": str(e)}
        dist.barrier()
    out = Path(args.out or ".")
    out.mkdir(parents=True, exist_ok=True)
    torch.save(results, out / f"rank{rank}.pt")
    dist.destroy_process_group()
    return 0


def json_loads(s: str) -> dict:
    import json

    d = json.loads(s)
    if "betas" in d:
        d["betas"] = tuple(d["betas"])
    return d


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out_dir: str | os.PathLike, cfg: RunConfig, modes: Sequence[str] = MODES, *, nproc: int = 2,
           n_chars: int = 60_000, timeout: float = 180.0, script: str | os.PathLike | None = None,
           strict: bool = True) -> list[dict]:
    """Run ``torchrun --standalone --nproc_per_node=nproc <script> --worker ...`` and return every
    rank's results (``[rank0, rank1, ...]``). ``script`` defaults to this file (tests pass the
    module under test, so lab.py runs its own code).

    A mode that hit a TODO is recorded as ``{"error": "TODO(k)"}``; with ``strict`` the first one
    is re-raised instead.

    Raises:
        NotImplementedError: a rank hit a TODO (re-raised with its ``TODO(k)`` text).
        RuntimeError: torchrun failed or timed out (its output tail is in the message).
    """
    import json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           f"--master_port={_free_port()}", str(script or __file__), "--worker", "--out", str(out_dir),
           "--modes", ",".join(modes), "--n-chars", str(n_chars),
           "--config", json.dumps(dataclasses.asdict(cfg))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"torchrun timed out after {timeout:.0f} s (a rank waiting on a collective the other "
                           f"never called?)\n{(e.stderr or '')[-2000:] if isinstance(e.stderr, str) else ''}") from e
    todo = re.search(r"NotImplementedError: (TODO\(\d+\))", proc.stderr)
    if todo:
        raise NotImplementedError(todo[1])
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
    results = [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(nproc)]
    for res in results if strict else []:
        for mode in modes:
            if "error" in res.get(mode, {}):
                raise NotImplementedError(res[mode]["error"])
    return results


# ============================================================================ self-test
def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest |a - b| over every tensor of two name -> tensor dicts with the same keys."""
    if a.keys() != b.keys():
        raise ValueError(f"different parameter names: {sorted(set(a) ^ set(b))[:4]}")
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def all_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _cpu_seconds() -> float:
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def selftest(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    seed_everything(0)
    t0, c0 = time.perf_counter(), _cpu_seconds()
    failures: list[str] = []
    cfg = RunConfig(steps=args.steps)
    tokens, vocab = demo_tokens(args.n_chars)
    single = run_single(tokens, vocab, cfg)
    with tempfile.TemporaryDirectory() as tmp:
        ranks = launch(tmp, cfg, MODES + MUTANTS, n_chars=args.n_chars, timeout=600)
    r0, r1 = ranks
    print(f"2 ranks, backend {r0['backend']}, {cfg.steps} AdamW steps, global batch {cfg.global_batch} x "
          f"{cfg.block_size} chars, MiniGPT {cfg.n_layer} layers d_model {cfg.d_model}\n")
    print("| run | grads step 1 vs single (max abs) | params after last step vs single | "
          "== torch DDP (torch.equal) | rank 0 == rank 1 |")
    print("|---|---|---|---|---|")
    ref = r0["torch_ddp"]
    for mode in MODES + MUTANTS:
        g = max_abs_diff(r0[mode]["grads1"], single["grads1"])
        p = max_abs_diff(r0[mode]["params"], single["params"])
        eq = all_equal(r0[mode]["params"], ref["params"]) and all_equal(r0[mode]["grads1"], ref["grads1"])
        same = all_equal(r0[mode]["params"], r1[mode]["params"])
        print(f"| {mode} | {g:.2e} | {p:.2e} | {eq} | {same} |")
        ok = g <= 1e-6 and p <= 1e-6 and same
        if mode in MODES and not ok:
            failures.append(f"{mode} differs from the single-process run (grads {g:.2e}, params {p:.2e}) "
                            f"or ranks disagree ({same})")
        if mode in MUTANTS and ok and eq:
            failures.append(f"planted bug {mode} was NOT detected")
    for mode in ("ours", "zero1"):
        if not all_equal(r0[mode]["params"], ref["params"]):
            failures.append(f"{mode} is not bit-identical to torch DDP")
    print(f"\nall-reduces launched during backward (ours): {r0['ours']['launched']} of "
          f"{r0['ours']['n_buckets']} buckets per step")
    if any(n != r0["ours"]["n_buckets"] for n in r0["ours"]["launched"]):
        failures.append("our DDP did not launch every bucket's all-reduce inside backward")

    print("\nPer-rank bytes measured from the tensors (local shards), after the last step:")
    print("| run | rank | params | grads | optimizer | params+optimizer | vs torch DDP |")
    print("|---|---|---|---|---|---|---|")
    base = r0["torch_ddp"]["bytes"]["params+optimizer"]
    for mode in MODES:
        for r, res in enumerate(ranks):
            b = res[mode]["bytes"]
            print(f"| {mode} | {r} | {b['params']:,} | {b['grads']:,} | {b['optimizer']:,} | "
                  f"{b['params+optimizer']:,} | {b['params+optimizer'] / base:.3f} |")
    fsdp_ratio = max(res["fsdp2"]["bytes"]["params+optimizer"] for res in ranks) / base
    if not 0.45 <= fsdp_ratio <= 0.6:
        failures.append(f"FSDP2 per-rank params+optimizer is {fsdp_ratio:.3f} of DDP's, expected ~0.5")

    print("\nPer-step loss (global mean):")
    print("| step | single | ours | torch_ddp | zero1 | fsdp2 |")
    print("|---|---|---|---|---|---|")
    for s in range(cfg.steps):
        if s < 3 or s == cfg.steps - 1:
            print(f"| {s + 1} | {single['losses'][s]:.6f} | " + " | ".join(f"{r0[m]['losses'][s]:.6f}" for m in MODES)
                  + " |")
    from labkit.plots import plt, savefig

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    steps = range(1, cfg.steps + 1)
    ax.plot(steps, single["losses"], lw=4, alpha=0.3, color="k", label="single process, full batch")
    for m, style in zip(MODES, ("-", "--", ":", "-.")):
        ax.plot(steps, r0[m]["losses"], style, label=m)
        diff = [max(abs(a - b), 1e-12) for a, b in zip(r0[m]["losses"], single["losses"])]
        ax2.semilogy(steps, diff, style, label=m)
    ax.set(xlabel="step", ylabel="train loss (nats/char)", title="2 ranks (gloo, CPU) vs one process")
    ax2.set(xlabel="step", ylabel="|loss - single| (floor 1e-12)", title="difference from the single process")
    ax.legend()
    ax2.legend()
    print(f"\nloss curves: {savefig(fig, HERE / 'figures' / 'loss_curves.png')}")
    print(f"self-test wall {time.perf_counter() - t0:.1f} s, CPU {_cpu_seconds() - c0:.1f} s "
          "(this process + torchrun's ranks)")
    for f in failures:
        print("FAIL:", f)
    print("OK" if not failures else f"{len(failures)} sanity check(s) failed")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--modes", default=",".join(MODES), help=argparse.SUPPRESS)
    ap.add_argument("--config", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--n-chars", type=int, default=60_000, help="characters of TinyStories to sample batches from")
    ap.add_argument("--steps", type=int, default=12, help="training steps of the self-test runs")
    args = ap.parse_args(argv)
    if args.worker:
        return _worker(args)
    return selftest(args)


if __name__ == "__main__":
    sys.exit(main())

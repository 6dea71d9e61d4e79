"""Lab 5.3: training-loop mechanics, a reusable ``Trainer`` that resumes bit-exactly.

The four features that turn a toy loop into one you can leave running overnight:

* **mixed precision**: BF16 autocast (no loss scaling: bf16 has float32's exponent range), or
  FP16 autocast with ``torch.amp.GradScaler`` (fp16 underflows small gradients without it);
* **gradient accumulation** whose gradient equals the big-batch gradient, also when the
  micro-batches hold different numbers of target tokens (normalisation: *sum of per-token
  losses over the whole accumulated batch / total target tokens*, as HF's ``num_items_in_batch``);
* **gradient clipping** by global L2 norm (returns the pre-clip norm, the number worth logging);
* **atomic, complete checkpoints**: temp file in the same folder -> flush + fsync ->
  ``os.replace`` -> fsync the folder; holding model, optimizer, scheduler, scaler, step, every RNG
  state and the data cursor, so that *k steps -> save -> new process -> resume* reproduces the
  uninterrupted run bit for bit on CPU (llm.c's bar), and a ``kill -9`` mid-write never leaves a
  half file where the checkpoint should be.

Plus a retention policy (best by val loss, last, every N with a maximum count) and, as the
shipped extension, activation (gradient) checkpointing per transformer block.

The learning-rate schedule is lab 5.2's ``get_lr`` (linear warmup + cosine), imported by path;
the model in the demo and the tests is the Phase 4 ``MiniGPT`` (``GPTConfig.llama_style``).

Reuse (Phases 6 and 10)::

    tr = load_lab("phase-05-training-small-llms/lab-03-training-loop-mechanics")
    trainer = tr.Trainer(model, tr.TrainConfig(max_steps=1000, grad_accum_steps=4, precision="bf16"),
                         tr.TokenBatchSampler(tokens, batch_size=8, block_size=256, seed=0),
                         val_data=val_batches, checkpoints=tr.CheckpointManager("ckpt", keep_every=500))
    trainer.fit()

Run: ``python solution.py`` (small mode, CPU, about half a minute).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import math
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint as _torch_checkpoint

from labkit import load_lab

HERE = Path(__file__).resolve().parent

__all__ = [
    "CheckpointError",
    "CheckpointManager",
    "TokenBatchSampler",
    "TrainConfig",
    "Trainer",
    "WarmupCosineLR",
    "accumulate_gradients",
    "atomic_save",
    "atomic_write_bytes",
    "autocast_context",
    "build_demo_trainer",
    "clip_grad_norm",
    "count_target_tokens",
    "demo_tokens",
    "deserialize_checkpoint",
    "disable_activation_checkpointing",
    "enable_activation_checkpointing",
    "get_rng_state",
    "load_checkpoint",
    "make_adamw",
    "model_loss",
    "resume_fingerprint",
    "serialize_checkpoint",
    "set_rng_state",
    "write_chunks",
]

PRECISIONS = ("fp32", "bf16", "fp16")
CHECKPOINT_FORMAT = "lab5.3-trainer-v1"
IGNORE_INDEX = -100


@functools.cache
def _schedule_lab():
    """Lab 5.2 (nanoGPT), loaded on first use: its ``get_lr`` is the one LR schedule of Phase 5."""
    return load_lab("phase-05-training-small-llms/lab-02-nano-gpt")


@functools.cache
def _gpt_lab():
    """The Phase 4 MiniGPT lab (only the demo and the tests build a model from it)."""
    return load_lab("phase-04-attention-transformers/lab-04-mini-transformer")


# ============================================================================ config
@dataclass
class TrainConfig:
    """What the loop does at each optimizer step.

    Attributes:
        max_steps: optimizer steps of the whole run (the cosine reaches ``min_lr`` here).
        grad_accum_steps: micro-batches per optimizer step. Effective batch =
            micro-batch x grad_accum_steps (x world size, Phase 10).
        max_lr, min_lr, warmup_steps: lab 5.2's ``get_lr`` schedule.
        weight_decay: AdamW decay, applied to >= 2-D tensors only (see :func:`make_adamw`).
        betas, eps: AdamW moments; beta2 = 0.95 is the LLM-pretraining choice.
        grad_clip: max global L2 norm of the gradient; ``None`` = never clip (still measured).
        precision: "fp32", "bf16" (autocast, no scaler) or "fp16" (autocast + GradScaler).
        device: where the model and the batches live ("cpu", "cuda", "cuda:1", ...).
        eval_every: evaluate on the val batches every this many steps (0 = only at the end).
        ckpt_every: save a checkpoint every this many steps (0 = only at the end of ``fit``).
        seed: the seed the demo builder and the data sampler use.

    Raises:
        ValueError: from ``__post_init__`` for any inconsistent value (the message names it).
    """

    max_steps: int = 100
    grad_accum_steps: int = 1
    max_lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 10
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float | None = 1.0
    precision: str = "fp32"
    device: str = "cpu"
    eval_every: int = 0
    ckpt_every: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("max_steps", "grad_accum_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"TrainConfig.{name} must be an int >= 1, got {v!r}")
        for name in ("warmup_steps", "eval_every", "ckpt_every", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"TrainConfig.{name} must be an int >= 0, got {v!r}")
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) > max_steps ({self.max_steps})")
        if not (math.isfinite(self.max_lr) and 0 <= self.min_lr <= self.max_lr):
            raise ValueError(f"need 0 <= min_lr <= max_lr, got min_lr={self.min_lr}, max_lr={self.max_lr}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise ValueError(f"grad_clip must be a positive number or None, got {self.grad_clip!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        self.betas = tuple(self.betas)  # a list from JSON becomes the tuple AdamW expects


# ============================================================================ precision
def autocast_context(precision: str, device_type: str = "cpu") -> contextlib.AbstractContextManager:
    """The context the forward pass runs in.

    "fp32": no autocast. "bf16" / "fp16": ``torch.autocast(device_type, dtype=...)``: matmuls and
    convolutions run in the low-precision type, reductions and softmax stay float32 (torch's op
    lists), and the parameters stay float32 (the "master weights"). Micikevicius et al. 2018
    (mixed precision); Kalamkar et al. 2019 (bfloat16).

    Raises:
        ValueError: unknown ``precision``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    # BEGIN SOLUTION fp32 -> contextlib.nullcontext(); bf16/fp16 -> torch.autocast(device_type=..., dtype=torch.bfloat16 or torch.float16) (easy, ~5 min)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device_type, dtype=dtype)
    # END SOLUTION


# ============================================================================ loss and accumulation
def count_target_tokens(batch: Any) -> int:
    """Number of target tokens that count in the loss: labels != -100.

    ``batch`` is ``(idx, targets)`` (the targets are the last element of a tuple/list) or a dict
    with ``"labels"`` (the HF convention Phase 6 uses).

    Raises:
        TypeError: a batch of another shape.
    """
    if isinstance(batch, dict):
        if "labels" not in batch:
            raise TypeError("a dict batch needs a 'labels' entry to count target tokens")
        targets = batch["labels"]
    elif isinstance(batch, (tuple, list)) and batch:
        targets = batch[-1]
    else:
        raise TypeError(f"batch must be (idx, targets) or a dict with 'labels', got {type(batch).__name__}")
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a tensor, got {type(targets).__name__}")
    return int((targets != IGNORE_INDEX).sum())


def model_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """The default loss function: the model's own mean cross-entropy over counted tokens.

    Calls ``model(*batch)`` for a tuple and ``model(**batch)`` for a dict, and accepts a model
    that returns the loss, a ``(logits, loss)`` tuple (MiniGPT) or an object with ``.loss``
    (HF ``CausalLMOutput``). Any loss function with this signature works with the Trainer, as
    long as it returns the MEAN over the batch's counted tokens (see :func:`accumulate_gradients`).
    """
    out = model(**batch) if isinstance(batch, dict) else model(*batch)
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return out[1]
    loss = getattr(out, "loss", None)
    if loss is None:
        raise TypeError(f"model returned {type(out).__name__} with no loss: pass loss_fn= to the Trainer")
    return loss


def accumulate_gradients(model: nn.Module, micro_batches: Sequence[Any],
                         loss_fn: Callable[[nn.Module, Any], torch.Tensor] = model_loss,
                         num_tokens: Callable[[Any], int] = count_target_tokens, *,
                         precision: str = "fp32", scaler: torch.amp.GradScaler | None = None,
                         ) -> tuple[float, int]:
    """Forward + backward over ``micro_batches``, adding into ``.grad``, so that the summed
    gradient equals the gradient of ONE big batch made of all of them.

    Normalisation: with micro-batch i holding n_i counted tokens and mean loss m_i, the step's
    loss is ``sum_i m_i * n_i / N`` with ``N = sum_i n_i``: the sum of every per-token loss of the
    accumulated batch divided by the total number of tokens. Each micro-batch therefore
    back-propagates ``m_i * n_i / N``. Dividing by ``grad_accum_steps`` instead is only right
    when every n_i is equal (with padding or SFT prompt masking they are not).

    Args:
        micro_batches: batches already on the model's device.
        loss_fn: ``loss_fn(model, batch)`` -> scalar mean loss over the batch's counted tokens.
        num_tokens: ``num_tokens(batch)`` -> counted tokens of a batch (computed before any forward).
        precision: see :func:`autocast_context` (forward only; backward runs outside autocast).
        scaler: an enabled GradScaler for fp16 (the loss is scaled before backward), else None.

    Returns:
        ``(loss, N)``: the step's token-weighted mean loss (python float) and the token count.
        ``.grad`` of the parameters holds the accumulated gradient; the caller zeroes it.

    Raises:
        ValueError: no micro-batch, or no counted token in any of them.
    """
    if not micro_batches:
        raise ValueError("accumulate_gradients needs at least one micro-batch")
    counts = [int(num_tokens(b)) for b in micro_batches]
    total = sum(counts)
    if total <= 0:
        raise ValueError("no target tokens in this step's micro-batches (every label is -100?)")
    device_type = next(model.parameters()).device.type
    # BEGIN SOLUTION for each micro-batch with n_i > 0: loss = loss_fn(model, batch) under autocast_context(precision, device_type); back-propagate loss * (n_i / total), through scaler.scale(...) when a scaler is given; keep a detached running sum of loss * n_i for the return value (medium, ~20 min)
    loss_sum = torch.zeros((), dtype=torch.float64, device=next(model.parameters()).device)
    for batch, n in zip(micro_batches, counts):
        if n == 0:        # a fully masked micro-batch adds nothing (and its mean would be NaN)
            continue
        with autocast_context(precision, device_type):
            loss = loss_fn(model, batch)
        weighted = loss * (n / total)
        (scaler.scale(weighted) if scaler is not None else weighted).backward()
        loss_sum += loss.detach().double() * n
    return (loss_sum / total).item(), total
    # END SOLUTION


def clip_grad_norm(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale all gradients together so their global L2 norm is at most ``max_norm``.

    Same rule as ``torch.nn.utils.clip_grad_norm_`` (Pascanu et al. 2013): ``total = ||(||g_1||,
    ..., ||g_k||)||_2``; if ``total > max_norm`` every gradient is multiplied by
    ``max_norm / (total + 1e-6)``. ``max_norm = inf`` only measures.

    Returns:
        The PRE-clip total norm as a 0-d float32 tensor (what to log: a spike means trouble).
        0 when no parameter has a gradient. A non-finite norm is returned as is (the fp16
        GradScaler skips that step anyway).

    Raises:
        ValueError: ``max_norm`` not > 0.
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    # BEGIN SOLUTION norm of the per-tensor L2 norms (computed in float32), clip coefficient max_norm / (total + 1e-6) clamped to at most 1, multiply every grad in place; return the pre-clip total (easy, ~10 min)
    norms = torch.stack([torch.linalg.vector_norm(g.detach(), 2, dtype=torch.float32) for g in grads])
    total = torch.linalg.vector_norm(norms, 2)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.detach().mul_(coef.to(g.dtype))
    return total
    # END SOLUTION


def make_adamw(model: nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.95),
               eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW with weight decay on >= 2-D tensors (matmul weights, embeddings) and none on
    1-D ones (norm weights, biases), the nanoGPT grouping. Loshchilov & Hutter 2019."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas, eps=eps)


class WarmupCosineLR(torch.optim.lr_scheduler.LRScheduler):
    """Lab 5.2's ``get_lr(step, max_lr, min_lr, warmup_steps, max_steps)`` as a torch scheduler.

    Every param group gets the same rate. Being an ``LRScheduler`` it has a ``state_dict``
    (``last_epoch`` is the step), which the checkpoint saves: forget it and a resumed run
    restarts its warmup.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, max_lr: float, min_lr: float,
                 warmup_steps: int, max_steps: int, last_epoch: int = -1) -> None:
        self.max_lr, self.min_lr = float(max_lr), float(min_lr)
        self.warmup_steps, self.max_steps = int(warmup_steps), int(max_steps)
        _schedule_lab().get_lr(0, max_lr=self.max_lr, min_lr=self.min_lr, warmup_steps=self.warmup_steps,
                               max_steps=self.max_steps)  # validates the arguments now
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        lr = _schedule_lab().get_lr(max(self.last_epoch, 0), max_lr=self.max_lr, min_lr=self.min_lr,
                                    warmup_steps=self.warmup_steps, max_steps=self.max_steps)
        return [lr for _ in self.optimizer.param_groups]


# ============================================================================ RNG state
def get_rng_state() -> dict[str, Any]:
    """Every global random state a training step can draw from, as plain data.

    ``{"python": random.getstate(), "numpy": {...}, "torch": ByteTensor, "cuda": [ByteTensor, ...]}``
    ("cuda" only when CUDA is available). NumPy's key array is stored as a list of ints and the
    rest are tuples, ints, floats and tensors, so ``torch.load(weights_only=True)`` accepts it.
    A ``torch.Generator`` owned by the data pipeline is saved by that pipeline's ``state_dict``
    (:class:`TokenBatchSampler`).
    """
    # BEGIN SOLUTION random.getstate(); np.random.get_state(legacy=False) with its state["key"] array turned into a list; torch.get_rng_state(); torch.cuda.get_rng_state_all() when CUDA is available (medium, ~10 min)
    np_state = np.random.get_state(legacy=False)
    np_state = {**np_state, "state": {**np_state["state"], "key": np_state["state"]["key"].tolist()}}
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state
    # END SOLUTION


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned (the inverse, exactly).

    Raises:
        ValueError: a missing entry, or CUDA states saved on a machine with a different GPU count.
    """
    missing = {"python", "numpy", "torch"} - set(state)
    if missing:
        raise ValueError(f"RNG state is missing {sorted(missing)}")
    # BEGIN SOLUTION random.setstate (the saved lists must become tuples again); np.random.set_state with the key back as a uint32 array; torch.set_rng_state; torch.cuda.set_rng_state_all when both the state and CUDA are present (medium, ~10 min)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np_state = {**np_state, "state": {**np_state["state"],
                                      "key": np.asarray(np_state["state"]["key"], dtype=np.uint32)}}
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) != torch.cuda.device_count():
            raise ValueError(f"checkpoint has RNG states for {len(state['cuda'])} GPUs, this machine has "
                             f"{torch.cuda.device_count()}")
        torch.cuda.set_rng_state_all(state["cuda"])
    # END SOLUTION


# ============================================================================ data
class TokenBatchSampler:
    """Deterministic, resumable batches of ``block_size`` windows from a 1-D token array.

    Each epoch draws, from its own ``torch.Generator``, a random offset in [0, block_size) and a
    random order of the non-overlapping windows that start at ``offset + i * block_size``; a
    batch is the next ``batch_size`` windows of that order (the last incomplete batch of an
    epoch is dropped). So every token is seen once per epoch and the window boundaries move
    between epochs.

    The data cursor (:meth:`state_dict`) is the epoch, the position inside it and the
    generator's state at the start of the epoch: the order is regenerated on load, never stored.

    Args:
        tokens: 1-D integer tokens: a NumPy array or ``np.memmap`` (e.g. a uint16 ``.bin``) or a
            torch tensor. Never copied, so a memmap stays on disk.
        batch_size, block_size: B and T of each batch.
        seed: seeds the sampler's generator (independent of the global RNG).

    Yields (``next(sampler)``): ``(x, y)`` int64 tensors of shape (B, T), ``y`` shifted by one.

    Raises:
        TypeError / ValueError: tokens not 1-D integers, empty, or too short for one batch.
    """

    def __init__(self, tokens: np.ndarray | torch.Tensor, batch_size: int, block_size: int, *, seed: int = 0) -> None:
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.detach().cpu().numpy()
        if not isinstance(tokens, np.ndarray):
            raise TypeError(f"tokens must be a NumPy array, memmap or tensor, got {type(tokens).__name__}")
        if tokens.ndim != 1:
            raise ValueError(f"tokens must be 1-D, got shape {tokens.shape}")
        if not np.issubdtype(tokens.dtype, np.integer):
            raise TypeError(f"tokens must be integers, got dtype {tokens.dtype}")
        for name, v in (("batch_size", batch_size), ("block_size", block_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        n_windows = (len(tokens) - block_size) // block_size  # windows left for the largest offset
        if n_windows < batch_size:
            raise ValueError(f"{len(tokens)} tokens give {max(n_windows, 0)} windows of {block_size + 1} "
                             f"tokens, fewer than one batch of {batch_size}")
        self.tokens, self.batch_size, self.block_size, self.seed = tokens, batch_size, block_size, seed
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch, self.pos = 0, 0
        self._start_epoch()

    def _start_epoch(self) -> None:
        self._epoch_rng = self.generator.get_state()   # saved in state_dict: the order is replayable
        self._offset = int(torch.randint(self.block_size, (1,), generator=self.generator))
        n = (len(self.tokens) - 1 - self._offset) // self.block_size
        self._order = torch.randperm(n, generator=self.generator)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pos + self.batch_size > len(self._order):
            self.epoch, self.pos = self.epoch + 1, 0
            self._start_epoch()
        idx = self._order[self.pos: self.pos + self.batch_size].tolist()
        self.pos += self.batch_size
        T = self.block_size
        rows = np.stack([np.asarray(self.tokens[self._offset + i * T: self._offset + i * T + T + 1]) for i in idx])
        rows = torch.from_numpy(rows.astype(np.int64))
        return rows[:, :-1], rows[:, 1:]

    def state_dict(self) -> dict[str, Any]:
        """The data cursor: ``{"seed", "batch_size", "block_size", "n_tokens", "epoch", "pos",
        "epoch_rng"}`` (ints and a ByteTensor; weights_only-safe)."""
        # BEGIN SOLUTION the constructor arguments that must match on load (seed, batch_size, block_size, len(tokens)), plus epoch, pos and a clone of the generator state saved at the start of this epoch (easy, ~5 min)
        return {"seed": self.seed, "batch_size": self.batch_size, "block_size": self.block_size,
                "n_tokens": len(self.tokens), "epoch": self.epoch, "pos": self.pos,
                "epoch_rng": self._epoch_rng.clone()}
        # END SOLUTION

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where :meth:`state_dict` was taken.

        Raises:
            ValueError: the checkpoint was written for other data or other batch shapes.
        """
        for key, mine in (("batch_size", self.batch_size), ("block_size", self.block_size),
                          ("n_tokens", len(self.tokens))):
            if state.get(key) != mine:
                raise ValueError(f"data cursor was saved with {key}={state.get(key)}, this sampler has {mine}: "
                                 "resume with the same data and batch shape")
        # BEGIN SOLUTION restore seed, epoch and pos; set the generator to epoch_rng and redo _start_epoch() so offset and order are regenerated; then put pos back (easy, ~10 min)
        self.seed, self.epoch = state["seed"], state["epoch"]
        self.generator.set_state(state["epoch_rng"])
        self._start_epoch()
        self.pos = state["pos"]
        # END SOLUTION


def demo_tokens(n_bytes: int | None = None) -> np.ndarray:
    """Tiny Shakespeare as UTF-8 bytes (uint8 tokens, vocab 256), the first ``n_bytes`` of it."""
    from labkit import read_text

    data = np.frombuffer(read_text("tinyshakespeare", "input.txt").encode("utf-8"), dtype=np.uint8)
    return data[:n_bytes] if n_bytes else data


# ============================================================================ checkpoint files
class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt, or was written for another model/run."""


CHUNK_BYTES = 1 << 20
PAUSE_ENV = "LAB_CKPT_TEST_PAUSE_AFTER_BYTES"   # test hook: pause a writer mid-file (kill -9 test)
MARKER_ENV = "LAB_CKPT_TEST_MARKER"


def write_chunks(f: Any, data: bytes) -> None:
    """Write ``data`` to the open binary file ``f`` in 1 MiB chunks.

    Test hook: when ``$LAB_CKPT_TEST_PAUSE_AFTER_BYTES`` is set, after that many bytes the writer
    flushes, writes the file's name into ``$LAB_CKPT_TEST_MARKER`` and sleeps, so a test can
    ``kill -9`` it deterministically in the middle of a checkpoint write.
    """
    pause_at = int(os.environ.get(PAUSE_ENV, "0") or 0)
    view = memoryview(data)
    for start in range(0, len(view), CHUNK_BYTES):
        f.write(view[start: start + CHUNK_BYTES])
        if pause_at and start + CHUNK_BYTES >= pause_at:
            f.flush()
            marker = os.environ.get(MARKER_ENV)
            if marker:
                Path(marker).write_text(str(getattr(f, "name", "")), encoding="utf-8")
            time.sleep(3600)


def _fsync_dir(directory: Path) -> None:
    """fsync a directory so a rename inside it survives a power cut (a no-op where the OS
    cannot open directories, i.e. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    """Write ``data`` to ``path`` so that ``path`` always holds either the old file or the whole
    new one, even if the process is killed or the machine loses power mid-write.

    Recipe: a temp file in the SAME directory (``os.replace`` is atomic only within one file
    system) named ``.<name>.<random>.tmp``; write it with :func:`write_chunks`; ``flush`` (Python's
    buffer -> OS) and ``os.fsync`` (OS -> disk); ``os.replace`` onto ``path``; fsync the directory
    (``_fsync_dir``) so the rename itself is durable. On any error the temp file is removed.

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # BEGIN SOLUTION tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"); os.fdopen(fd, "wb"); write_chunks; flush; os.fsync(f.fileno()); os.replace(tmp, path); _fsync_dir(path.parent); on any exception unlink the temp file and re-raise (medium, ~15 min)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write_chunks(f, data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(path.parent)
    return path
    # END SOLUTION


def serialize_checkpoint(state: dict[str, Any]) -> bytes:
    """``state`` -> file bytes: ``torch.save`` of ``{"format", "sha256", "payload"}`` where
    payload is ``torch.save(state)`` as a uint8 tensor and sha256 its checksum.

    Why the envelope: a truncated zip fails to open, but a flipped bit inside a tensor loads
    silently as a wrong weight; the checksum turns that into a clear error.
    """
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    out = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "sha256": hashlib.sha256(payload).hexdigest(),
                "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8)}, out)
    return out.getvalue()


def deserialize_checkpoint(data: bytes, *, trusted: bool = False, name: str = "checkpoint") -> dict[str, Any]:
    """The inverse of :func:`serialize_checkpoint`.

    Both layers load with ``torch.load(weights_only=True)``: tensors, dicts, lists, tuples, str,
    int, float, bool and None only, so loading a file cannot run code. Everything this lab saves
    fits (NumPy's RNG key is saved as a list for that reason). A state holding other Python
    objects (a custom class, a NumPy array) needs ``trusted=True`` (``weights_only=False``:
    unpickling may execute code, so only for files you wrote yourself).

    Raises:
        CheckpointError: empty, truncated or not a checkpoint of this format, checksum mismatch,
            or objects weights_only refuses (with the fix in the message).
    """
    if not data:
        raise CheckpointError(f"{name} is empty (0 bytes): a crash before the first write? use the previous one")
    try:
        outer = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001  (torch raises RuntimeError / UnpicklingError / EOFError ...)
        raise CheckpointError(f"{name} is truncated or not a torch checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:120]}); load the previous checkpoint instead") from e
    if not isinstance(outer, dict) or outer.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{name} is not a {CHECKPOINT_FORMAT} checkpoint "
                              f"(format={outer.get('format') if isinstance(outer, dict) else type(outer).__name__})")
    payload = outer["payload"].numpy().tobytes()
    if hashlib.sha256(payload).hexdigest() != outer["sha256"]:
        raise CheckpointError(f"{name} is corrupt: its sha256 does not match the one stored at save time "
                              "(disk or copy error); load the previous checkpoint instead")
    try:
        return torch.load(io.BytesIO(payload), weights_only=not trusted, map_location="cpu")
    except Exception as e:  # noqa: BLE001
        if trusted:
            raise CheckpointError(f"{name}: cannot unpickle its payload ({e})") from e
        raise CheckpointError(f"{name} holds Python objects that torch.load(weights_only=True) refuses ({e}). "
                              "Save plain data (dicts, lists, numbers, tensors), or load with trusted=True "
                              "if you wrote this file yourself") from e


def atomic_save(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """``atomic_write_bytes(serialize_checkpoint(state), path)``."""
    return atomic_write_bytes(serialize_checkpoint(state), path)


def load_checkpoint(path: str | os.PathLike, *, trusted: bool = False) -> dict[str, Any]:
    """Read a checkpoint written by :func:`atomic_save` (see :func:`deserialize_checkpoint`).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: empty, truncated, corrupt, or not loadable with weights_only.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return deserialize_checkpoint(path.read_bytes(), trusted=trusted, name=str(path))


# ============================================================================ retention
_STEP_FILE = re.compile(r"^step_(\d{8})\.pt$")


class CheckpointManager:
    """Where checkpoints go and which ones are kept.

    Retention policy (all files in ``directory``):

    * ``last.pt``: every save overwrites it (atomically), so it is always the newest state.
    * ``best.pt``: written when a save comes with a finite ``val_loss`` lower than every earlier
      one (strictly lower: a tie keeps the earlier file). Never pruned.
    * ``step_XXXXXXXX.pt``: written when ``keep_every > 0`` and ``step % keep_every == 0``; only
      the ``keep_max`` newest of them are kept, older ones are deleted after the new one is
      safely written. Best and last are never deleted by this pruning.
    * Leftover ``.*.tmp`` files (from a writer killed mid-save) are deleted when a manager opens
      the folder; they are never a checkpoint.

    The best val loss so far travels inside every checkpoint (``state["best_val_loss"]``), so a
    resumed run keeps comparing against the right number.

    Raises:
        ValueError: ``keep_every < 0`` or ``keep_max < 1``.
    """

    def __init__(self, directory: str | os.PathLike, *, keep_last: bool = True, keep_best: bool = True,
                 keep_every: int = 0, keep_max: int = 3) -> None:
        if isinstance(keep_every, bool) or not isinstance(keep_every, int) or keep_every < 0:
            raise ValueError(f"keep_every must be an int >= 0, got {keep_every!r}")
        if isinstance(keep_max, bool) or not isinstance(keep_max, int) or keep_max < 1:
            raise ValueError(f"keep_max must be an int >= 1, got {keep_max!r}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keep_last, self.keep_best, self.keep_every, self.keep_max = keep_last, keep_best, keep_every, keep_max
        self.best_val_loss: float | None = None
        self.removed_temp = [p.name for p in self.directory.glob(".*.tmp")]
        for name in self.removed_temp:
            (self.directory / name).unlink(missing_ok=True)

    @property
    def last_path(self) -> Path:
        return self.directory / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.directory / "best.pt"

    def step_path(self, step: int) -> Path:
        return self.directory / f"step_{step:08d}.pt"

    def step_files(self) -> list[Path]:
        """The every-N files, oldest first."""
        return sorted(p for p in self.directory.iterdir() if _STEP_FILE.match(p.name))

    def latest(self) -> Path | None:
        """The file to resume from: ``last.pt`` if present, else the newest step file, else None."""
        if self.last_path.is_file():
            return self.last_path
        steps = self.step_files()
        return steps[-1] if steps else None

    def save(self, state: dict[str, Any], step: int, val_loss: float | None = None) -> list[Path]:
        """Apply the retention policy to one save of ``state`` at ``step``.

        The state is serialized once (with ``best_val_loss`` set to the best after this save)
        and the same bytes go to every file the policy asks for, each with
        :func:`atomic_write_bytes`.

        Returns:
            The paths written, in the order last, best, step file.
        """
        is_best = (self.keep_best and val_loss is not None and math.isfinite(val_loss)
                   and (self.best_val_loss is None or val_loss < self.best_val_loss))
        best_after = float(val_loss) if is_best else self.best_val_loss
        data = serialize_checkpoint({**state, "best_val_loss": best_after})
        # BEGIN SOLUTION write last.pt (keep_last), best.pt (is_best, then update self.best_val_loss), step_XXXXXXXX.pt (keep_every and step % keep_every == 0) with atomic_write_bytes; then delete the oldest step files beyond keep_max; return the paths written (medium, ~15 min)
        written: list[Path] = []
        if self.keep_last:
            written.append(atomic_write_bytes(data, self.last_path))
        if is_best:
            written.append(atomic_write_bytes(data, self.best_path))
            self.best_val_loss = best_after
        if self.keep_every and step % self.keep_every == 0:
            written.append(atomic_write_bytes(data, self.step_path(step)))
            for old in self.step_files()[:-self.keep_max]:
                old.unlink(missing_ok=True)
        return written
        # END SOLUTION


# ============================================================================ activation checkpointing
def _checkpointed_forward(block: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The forward installed by :func:`enable_activation_checkpointing` (a partial over ``block``)."""
    # BEGIN SOLUTION in training with grad enabled: torch.utils.checkpoint.checkpoint(block._plain_forward, *args, use_reentrant=False, **kwargs) (only the block's inputs are kept; its insides are recomputed in backward, same dropout masks because the RNG state is preserved); otherwise call block._plain_forward directly (medium, ~10 min)
    if block.training and torch.is_grad_enabled():
        return _torch_checkpoint(block._plain_forward, *args, use_reentrant=False, **kwargs)
    return block._plain_forward(*args, **kwargs)
    # END SOLUTION


def enable_activation_checkpointing(model: nn.Module, blocks_attr: str = "blocks") -> int:
    """Recompute each block's activations in backward instead of storing them (Chen et al. 2016).

    A wrapper, not an edit of the model's code: each block in ``getattr(model, blocks_attr)``
    (MiniGPT's ``blocks``) gets an instance-level ``forward`` that runs the original one under
    ``torch.utils.checkpoint``. Parameter names and ``state_dict`` keys do not change, so
    checkpoints load either way. Memory for activations drops from every block's internals to
    just the blocks' inputs (plus one block's internals during its backward); the price is one
    extra forward per block.

    Returns:
        How many blocks are now checkpointed.

    Raises:
        ValueError: the model has no iterable of modules under ``blocks_attr``.
    """
    blocks = getattr(model, blocks_attr, None)
    if not isinstance(blocks, (nn.ModuleList, nn.Sequential)):
        raise ValueError(f"model.{blocks_attr} is not a ModuleList of blocks; pass blocks_attr=")
    for block in blocks:
        if "_plain_forward" not in block.__dict__:
            block._plain_forward = block.forward
            block.forward = functools.partial(_checkpointed_forward, block)
    return len(blocks)


def disable_activation_checkpointing(model: nn.Module, blocks_attr: str = "blocks") -> None:
    """Undo :func:`enable_activation_checkpointing`."""
    for block in getattr(model, blocks_attr, []):
        if "_plain_forward" in block.__dict__:
            del block.__dict__["forward"]
            del block.__dict__["_plain_forward"]


# ============================================================================ trainer
def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _model_config(model: nn.Module) -> dict[str, Any] | None:
    cfg = getattr(model, "config", None)
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return json.loads(json.dumps(dataclasses.asdict(cfg)))  # plain data: weights_only-safe
    if hasattr(cfg, "to_dict"):  # a Hugging Face config
        return json.loads(json.dumps(cfg.to_dict(), default=str))
    return None


class Trainer:
    """One optimizer step = ``grad_accum_steps`` micro-batches -> unscale -> clip -> step -> LR.

    Model- and data-agnostic: any ``nn.Module`` whose loss ``loss_fn(model, batch)`` returns
    (default :func:`model_loss`: ``model(*batch)`` returning a loss, ``(logits, loss)`` or an
    object with ``.loss``), and any iterator of batches (``next(train_data)``); when the
    iterator has ``state_dict``/``load_state_dict`` (like :class:`TokenBatchSampler`) its cursor
    is checkpointed too.

    Args:
        model: moved to ``config.device``.
        config: a :class:`TrainConfig`.
        train_data: an iterator of batches (tuples ``(idx, targets)`` or dicts with ``labels``).
        val_data: a sequence of batches, or a callable returning a fresh iterable of them; used
            by :meth:`evaluate` (token-weighted mean loss, ``model.eval()``, no grad).
        loss_fn: ``loss_fn(model, batch)`` -> mean loss over the batch's counted tokens.
        num_tokens: ``num_tokens(batch)`` -> counted tokens (default: labels != -100).
        optimizer: default :func:`make_adamw` from the config.
        scheduler: default :class:`WarmupCosineLR` from the config (lab 5.2's ``get_lr``).
        checkpoints: a :class:`CheckpointManager`, or None for no automatic saves.

    Attributes:
        step: optimizer steps taken. history: one dict per step (see :meth:`train_step`).
        scaler: a ``torch.amp.GradScaler``, enabled only for fp16.
    """

    def __init__(self, model: nn.Module, config: TrainConfig, train_data: Iterator[Any], *,
                 val_data: Sequence[Any] | Callable[[], Iterable[Any]] | None = None,
                 loss_fn: Callable[[nn.Module, Any], torch.Tensor] = model_loss,
                 num_tokens: Callable[[Any], int] = count_target_tokens,
                 optimizer: torch.optim.Optimizer | None = None,
                 scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                 checkpoints: CheckpointManager | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        self.config = config
        self.device = torch.device(config.device)
        if config.precision == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("this GPU does not support bf16: use precision='fp16'")
        self.model = model.to(self.device)
        self.model_config = _model_config(model)
        self.train_data, self.val_data = train_data, val_data
        self.loss_fn, self.num_tokens = loss_fn, num_tokens
        self.optimizer = optimizer or make_adamw(model, lr=config.max_lr, weight_decay=config.weight_decay,
                                                 betas=config.betas, eps=config.eps)
        self.scheduler = scheduler or WarmupCosineLR(self.optimizer, max_lr=config.max_lr, min_lr=config.min_lr,
                                                     warmup_steps=config.warmup_steps, max_steps=config.max_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        self.checkpoints = checkpoints
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.optimizer.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, Any]:
        """Take one optimizer step.

        Returns:
            ``{"step", "loss", "grad_norm", "lr", "tokens", "skipped"}``: ``step`` is the step
            just taken (1-based), ``loss`` the token-weighted mean over its micro-batches,
            ``grad_norm`` the pre-clip global norm, ``lr`` the rate used, ``skipped`` True when
            the fp16 scaler found inf/NaN gradients and skipped the update.

        Raises:
            FloatingPointError: non-finite loss in fp32/bf16 (nothing to skip to: lower the LR,
                check the data); fp16 overflow is handled by the scaler instead.
        """
        cfg = self.config
        self.model.train()
        micro = [_to_device(next(self.train_data), self.device) for _ in range(cfg.grad_accum_steps)]
        loss, n_tokens = accumulate_gradients(self.model, micro, self.loss_fn, self.num_tokens,
                                              precision=cfg.precision,
                                              scaler=self.scaler if self.scaler.is_enabled() else None)
        if not math.isfinite(loss) and cfg.precision != "fp16":
            raise FloatingPointError(f"loss is {loss} at step {self.step + 1}: lower the LR, check the data, "
                                     "or look for a log/sqrt/div of a non-positive number")
        lr = self.optimizer.param_groups[0]["lr"]
        # BEGIN SOLUTION scaler.unscale_(optimizer) (before clipping: the clip threshold is for the true gradient); grad_norm = clip_grad_norm(params, cfg.grad_clip or inf); remember the scale; scaler.step(optimizer) (skips on inf/NaN); scaler.update(); skipped = new scale < old scale; scheduler.step(); optimizer.zero_grad(set_to_none=True); self.step += 1; append the stats dict of the docstring to self.history and return it (medium, ~20 min)
        self.scaler.unscale_(self.optimizer)
        grad_norm = clip_grad_norm(self.model.parameters(), cfg.grad_clip or math.inf)
        scale_before = self.scaler.get_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        skipped = self.scaler.get_scale() < scale_before
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        stats = {"step": self.step, "loss": loss, "grad_norm": float(grad_norm), "lr": lr,
                 "tokens": n_tokens, "skipped": bool(skipped)}
        self.history.append(stats)
        return stats
        # END SOLUTION

    @torch.no_grad()
    def evaluate(self, max_batches: int | None = None) -> float:
        """Token-weighted mean loss over ``val_data`` (model in eval mode: no dropout, no RNG draws).

        Raises:
            ValueError: no ``val_data``, or it has no counted token.
        """
        if self.val_data is None:
            raise ValueError("evaluate() needs val_data")
        batches = self.val_data() if callable(self.val_data) else self.val_data
        was_training = self.model.training
        self.model.eval()
        total = n = 0.0
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            batch = _to_device(batch, self.device)
            k = self.num_tokens(batch)
            if k == 0:
                continue
            with autocast_context(self.config.precision, self.device.type):
                total += float(self.loss_fn(self.model, batch)) * k
            n += k
        self.model.train(was_training)
        if n == 0:
            raise ValueError("val_data has no target tokens")
        return total / n

    def fit(self, max_steps: int | None = None, *, progress: bool = False,
            on_step: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        """Train from ``self.step`` up to ``max_steps`` (default ``config.max_steps``).

        Every ``config.eval_every`` steps (and at the end, when val_data is given) the val loss is
        added to that step's stats as ``"val_loss"``; every ``config.ckpt_every`` steps and at the
        end the ``checkpoints`` manager (if any) saves, with that val loss deciding ``best.pt``.

        Returns:
            The stats of the steps run by this call.
        """
        from tqdm.auto import tqdm

        end = self.config.max_steps if max_steps is None else max_steps
        out: list[dict[str, Any]] = []
        bar = tqdm(total=max(end - self.step, 0), disable=not progress, desc="train", leave=False)
        while self.step < end:
            stats = self.train_step()
            last = self.step == end
            if self.val_data is not None and ((self.config.eval_every and self.step % self.config.eval_every == 0)
                                              or last):
                stats["val_loss"] = self.evaluate()
            if self.checkpoints is not None and ((self.config.ckpt_every and self.step % self.config.ckpt_every == 0)
                                                 or last):
                self.save_checkpoint(stats.get("val_loss"))
            out.append(stats)
            if on_step:
                on_step(stats)
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.3f}", lr=f"{stats['lr']:.2e}")
        bar.close()
        return out

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run bit for bit, as weights_only-safe plain data:

        ``{"format", "step", "model", "model_config", "optimizer", "scheduler", "scaler", "rng",
        "data", "train_config", "best_val_loss"}`` (``data`` is None when the batch iterator has
        no ``state_dict``; ``model_config`` None when the model has no dataclass/HF config).
        """
        # BEGIN SOLUTION one dict: format=CHECKPOINT_FORMAT, step, the state_dict() of model/optimizer/scheduler/scaler, get_rng_state(), the data cursor (train_data.state_dict() if it has one, else None), model_config, dataclasses.asdict(config) and the manager's best_val_loss (None without a manager) (medium, ~10 min)
        data = self.train_data.state_dict() if hasattr(self.train_data, "state_dict") else None
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "model": self.model.state_dict(),
            "model_config": self.model_config,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": get_rng_state(),
            "data": data,
            "train_config": dataclasses.asdict(self.config),
            "best_val_loss": self.checkpoints.best_val_loss if self.checkpoints else None,
        }
        # END SOLUTION

    def _check_compatible(self, state: dict[str, Any]) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"not a {CHECKPOINT_FORMAT} trainer state (format={state.get('format')!r})")
        saved, mine = state.get("model_config"), self.model_config
        if saved is not None and mine is not None and saved != mine:
            diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
            shown = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs model {mine.get(k)!r}" for k in diff[:5])
            raise CheckpointError(f"checkpoint was written for another model config ({shown}); "
                                  "build the model from the checkpoint's model_config")
        theirs = state["model"]
        ours = self.model.state_dict()
        missing, extra = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
        if missing or extra:
            raise CheckpointError(f"checkpoint parameters do not match the model: missing {missing[:3]}, "
                                  f"unexpected {extra[:3]}")
        for k, v in ours.items():
            if tuple(theirs[k].shape) != tuple(v.shape):
                raise CheckpointError(f"parameter {k}: checkpoint shape {tuple(theirs[k].shape)} vs model "
                                      f"{tuple(v.shape)}; was the model built with another config?")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, after checking it fits this model.

        Raises:
            CheckpointError: another format, another model config, or other parameter names/shapes.
            ValueError: a data cursor for other data (from the sampler).
        """
        self._check_compatible(state)
        # BEGIN SOLUTION load model, optimizer, scheduler and scaler state dicts; the data cursor when both it and train_data.load_state_dict exist; step; the manager's best_val_loss; and set_rng_state LAST (nothing after it may draw random numbers) (medium, ~15 min)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if state.get("data") is not None and hasattr(self.train_data, "load_state_dict"):
            self.train_data.load_state_dict(state["data"])
        self.step = int(state["step"])
        if self.checkpoints is not None:
            self.checkpoints.best_val_loss = state.get("best_val_loss")
        set_rng_state(state["rng"])
        # END SOLUTION

    def save_checkpoint(self, val_loss: float | None = None, path: str | os.PathLike | None = None) -> list[Path]:
        """Save now: to ``path`` (atomically) if given, else through the manager's retention policy.

        Raises:
            ValueError: neither a path nor a manager.
        """
        if path is not None:
            return [atomic_save(self.state_dict(), path)]
        if self.checkpoints is None:
            raise ValueError("save_checkpoint needs a path or a CheckpointManager")
        return self.checkpoints.save(self.state_dict(), self.step, val_loss)

    def resume(self, path: str | os.PathLike | None = None, *, trusted: bool = False) -> int:
        """Load ``path`` (default: the manager's :meth:`CheckpointManager.latest`) and continue from it.

        Returns:
            The step resumed at.

        Raises:
            FileNotFoundError: nothing to resume from. CheckpointError: see :meth:`load_state_dict`.
        """
        if path is None:
            path = self.checkpoints.latest() if self.checkpoints else None
            if path is None:
                raise FileNotFoundError("no checkpoint to resume from")
        self.load_state_dict(load_checkpoint(path, trusted=trusted))
        return self.step


def _digest(tensors: Iterable[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def resume_fingerprint(trainer: Trainer) -> dict[str, Any]:
    """A small summary of everything a resume must restore, to compare two trainers (or the
    same trainer before saving and after loading) piece by piece: step, next LR, scheduler step,
    data cursor, the python/numpy/torch RNG states, and digests of the weights and optimizer state.
    Reading it draws no random numbers."""
    opt_tensors = [v for st in trainer.optimizer.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
    np_state = np.random.get_state(legacy=False)
    data = trainer.train_data.state_dict() if hasattr(trainer.train_data, "state_dict") else {}
    return {
        "step": trainer.step,
        "lr": trainer.optimizer.param_groups[0]["lr"],
        "scheduler last_epoch": trainer.scheduler.last_epoch,
        "data cursor": (data.get("epoch"), data.get("pos")),
        "python RNG": hashlib.sha256(repr(random.getstate()).encode()).hexdigest()[:16],
        "numpy RNG": hashlib.sha256(np_state["state"]["key"].tobytes() + str(np_state["state"]["pos"]).encode()
                                    ).hexdigest()[:16],
        "torch RNG": _digest([torch.get_rng_state()]),
        "model weights": _digest(trainer.model.state_dict().values()),
        "optimizer state": _digest(opt_tensors),
    }


# ============================================================================ demo setup (tests, self-test)
def build_demo_trainer(tokens: np.ndarray, *, seed: int = 0, max_steps: int = 20, batch_size: int = 4,
                       block_size: int = 32, grad_accum_steps: int = 2, dropout: float = 0.1,
                       precision: str = "fp32", device: str = "cpu", checkpoints: CheckpointManager | None = None,
                       val_tokens: np.ndarray | None = None, **model_overrides: Any) -> Trainer:
    """A tiny Llama-style MiniGPT (Phase 4) on byte tokens with the default AdamW + warmup-cosine.

    Seeds everything with ``seed`` first, so two calls build identical trainers.
    """
    from labkit import seed_everything

    seed_everything(seed)
    gpt = _gpt_lab()
    cfg = gpt.GPTConfig.llama_style(**{**dict(vocab_size=256, block_size=block_size, n_layer=2, n_head=4,
                                              n_kv_head=2, d_model=32, dropout=dropout), **model_overrides})
    model = gpt.MiniGPT(cfg)
    config = TrainConfig(max_steps=max_steps, grad_accum_steps=grad_accum_steps, max_lr=3e-3, min_lr=3e-4,
                         warmup_steps=max(1, max_steps // 10), weight_decay=0.1, grad_clip=1.0,
                         precision=precision, device=device, seed=seed)
    val = None
    if val_tokens is not None:
        vs = TokenBatchSampler(val_tokens, batch_size, block_size, seed=seed + 1)
        val = [next(vs) for _ in range(4)]   # fixed batches: evaluation draws no random numbers
    return Trainer(model, config, TokenBatchSampler(tokens, batch_size, block_size, seed=seed),
                   val_data=val, checkpoints=checkpoints)


def _resume_worker(args: argparse.Namespace) -> int:
    """``--worker resume``: a NEW process resumes ``args.ckpt``, runs to ``args.steps``, saves losses + params."""
    torch.set_num_threads(1)
    tokens = demo_tokens(args.n_bytes)
    trainer = build_demo_trainer(tokens, seed=args.seed + 1000, max_steps=args.steps)  # other seed on purpose
    trainer.resume(args.ckpt)
    losses = [trainer.train_step()["loss"] for _ in range(trainer.step, args.steps)]
    torch.save({"losses": losses, "model": trainer.model.state_dict()}, args.out)
    return 0


def _peak_rss_probe() -> tuple[Callable[[], None], Callable[[], int]]:
    """(reset, peak_growth): Linux resets the process's peak-RSS mark (``/proc/self/clear_refs``)
    and reads VmHWM - VmRSS; elsewhere ``ru_maxrss`` growth (an underestimate if an earlier peak
    was higher)."""
    def field(key: str) -> int:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        raise OSError(key)

    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        base = {"rss": field("VmRSS:")}

        def reset() -> None:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")
            base["rss"] = field("VmRSS:")

        return reset, lambda: field("VmHWM:") - base["rss"]
    except OSError:
        scale = 1 if sys.platform == "darwin" else 1024    # ru_maxrss: bytes on macOS, KiB on Linux
        start = {"max": 0}

        def reset_ru() -> None:
            start["max"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

        return reset_ru, lambda: (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start["max"]) * scale


MEMORY_MODEL = dict(vocab_size=256, block_size=128, n_layer=4, n_head=4, d_model=128, dropout=0.1)
MEMORY_BATCH = 4


def _memory_worker(args: argparse.Namespace) -> int:
    """``--worker memory``: for plain and then checkpointed blocks, the peak RSS growth of one
    forward+backward (after a warm-up step that pays the one-time allocations) and the bytes
    autograd saved for backward. Run it with ``MALLOC_MMAP_THRESHOLD_=65536`` (what
    :func:`checkpointing_check` does): glibc then gives every block >= 64 KiB its own mmap and
    returns it on free, so RSS follows the live tensors instead of the allocator's high-water mark."""
    torch.set_num_threads(1)
    gpt = _gpt_lab()
    torch.manual_seed(0)
    model = gpt.MiniGPT(gpt.GPTConfig.llama_style(**MEMORY_MODEL)).train()
    x = torch.randint(0, 256, (MEMORY_BATCH, MEMORY_MODEL["block_size"]))
    reset, peak_growth = _peak_rss_probe()
    out = {}
    for name in ("plain", "checkpointed"):
        if name == "checkpointed":
            enable_activation_checkpointing(model)
        model.zero_grad(set_to_none=True)
        model(x, x)[1].backward()            # warm-up: lazy one-time allocations, .grad tensors
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor, saved: dict[int, int] = saved) -> torch.Tensor:   # each storage once
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        reset()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(x, x)[1]
        loss.backward()
        out[name] = {"peak_growth_bytes": peak_growth(), "saved_bytes": sum(saved.values())}
    print(json.dumps(out))
    return 0


# ============================================================================ self-test
def resume_check(tokens: np.ndarray, workdir: Path, *, n_steps: int = 16, k: int = 6, seed: int = 0
                 ) -> dict[str, Any]:
    """N steps straight vs k steps -> save -> new process -> resume to N. Also: what each
    forgotten piece of state does to the losses (in-process)."""
    straight = build_demo_trainer(tokens, seed=seed, max_steps=n_steps)
    ref = [straight.train_step()["loss"] for _ in range(n_steps)]
    first = build_demo_trainer(tokens, seed=seed, max_steps=n_steps)
    for _ in range(k):
        first.train_step()
    ckpt = workdir / "resume.pt"
    first.save_checkpoint(path=ckpt)
    out = workdir / "resumed.pt"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", "resume", "--ckpt", str(ckpt),
                           "--out", str(out), "--steps", str(n_steps), "--seed", str(seed),
                           "--n-bytes", str(len(tokens))], capture_output=True, text=True, timeout=300)
    if proc.returncode:
        raise RuntimeError(f"resume worker failed:\n{proc.stderr[-2000:]}")
    got = torch.load(out, weights_only=True)
    resumed = ref[:k] + got["losses"]
    params_equal = all(torch.equal(straight.model.state_dict()[n], t) for n, t in got["model"].items())
    rows = {"new process, full state": max(abs(a - b) for a, b in zip(ref, resumed))}
    rows_equal = {"new process, full state": resumed == ref and params_equal}

    def forget(piece: str) -> float:
        fresh = build_demo_trainer(tokens, seed=seed + 1000, max_steps=n_steps)
        fresh_state = {"rng": get_rng_state(), "data": fresh.train_data.state_dict(),
                       "scheduler": fresh.scheduler.state_dict()}
        fresh.resume(ckpt)
        if piece == "rng":
            set_rng_state(fresh_state["rng"])
        elif piece == "data":
            fresh.train_data.load_state_dict(fresh_state["data"])
        elif piece == "scheduler":
            fresh.scheduler.load_state_dict(fresh_state["scheduler"])
        losses = ref[:k] + [fresh.train_step()["loss"] for _ in range(k, n_steps)]
        return max(abs(a - b) for a, b in zip(ref, losses))

    for piece, label in (("rng", "RNG states not restored"), ("data", "data cursor not restored"),
                         ("scheduler", "LR scheduler not restored")):
        rows[label] = forget(piece)
        rows_equal[label] = rows[label] == 0.0
    return {"max_abs_loss_diff": rows, "bit_exact": rows_equal, "params_equal": params_equal,
            "ckpt_bytes": ckpt.stat().st_size, "worker_s": time.perf_counter() - t0, "losses": ref,
            "n_steps": n_steps, "k": k}


def kill9_check(workdir: Path, *, big_mb: int = 24, pause_after_mb: int = 4) -> dict[str, Any]:
    """A child writes checkpoint A, then starts writing a bigger B to the same path and is
    SIGKILLed after ``pause_after_mb`` MiB of it. Then: is A intact at the path?"""
    workdir.mkdir(parents=True, exist_ok=True)
    final, marker = workdir / "ckpt.pt", workdir / "paused.txt"
    code = (
        "import sys, os, torch\n"
        "from labkit import load_lab\n"
        "lab = load_lab(sys.argv[1])\n"
        "lab.atomic_save({'name': 'A', 'w': torch.arange(1000.)}, sys.argv[2])\n"
        f"os.environ[lab.PAUSE_ENV] = str({pause_after_mb} << 20)\n"
        "os.environ[lab.MARKER_ENV] = sys.argv[3]\n"
        f"lab.atomic_save({{'name': 'B', 'w': torch.ones({big_mb} << 18)}}, sys.argv[2])\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code, str(Path(__file__).resolve()), str(final), str(marker)],
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    paused = marker.exists()
    child.kill()              # SIGKILL on POSIX: no cleanup handler runs
    child.wait()
    temp_files = sorted(p.name for p in workdir.glob(".*.tmp"))
    temp_bytes = sum((workdir / n).stat().st_size for n in temp_files)
    try:
        state = load_checkpoint(final)
        loaded = f"{state['name']} ({state['w'].numel()} values)"
        intact = state["name"] == "A" and torch.equal(state["w"], torch.arange(1000.0))
    except Exception as e:  # noqa: BLE001 - reported, and fails the check
        loaded, intact = f"{type(e).__name__}: {e}", False
    manager = CheckpointManager(workdir)
    return {"paused_mid_write": paused, "final_loads_as": loaded, "previous_intact": intact,
            "temp_files_left": len(temp_files), "temp_bytes_written": temp_bytes,
            "temp_removed_by_manager": len(manager.removed_temp), "signal": -child.returncode,
            "child_stderr": "" if paused else (child.stderr.read() if child.stderr else "")}


def retention_demo(tokens: np.ndarray, workdir: Path) -> dict[str, Any]:
    """30 steps, evaluating and saving every 3, keeping every 6th step with at most 2 of them."""
    mgr = CheckpointManager(workdir, keep_every=6, keep_max=2)
    trainer = build_demo_trainer(tokens[:-20_000], seed=0, max_steps=30, checkpoints=mgr, val_tokens=tokens[-20_000:])
    trainer.config.eval_every = trainer.config.ckpt_every = 3
    stats = trainer.fit()
    vals = {s["step"]: s["val_loss"] for s in stats if "val_loss" in s}
    files = {p.name: load_checkpoint(p)["step"] for p in sorted(workdir.glob("*.pt"))}
    best_step = min(vals, key=lambda s: (vals[s], s))
    return {"files": files, "vals": vals, "best_step": best_step, "history": stats}


def accumulation_check(seed: int = 0) -> dict[str, float]:
    """Max |grad difference| between 1 big batch and accumulated micro-batches, float64."""
    gpt = _gpt_lab()
    torch.manual_seed(seed)
    cfg = gpt.GPTConfig.llama_style(vocab_size=61, block_size=16, n_layer=2, n_head=4, d_model=32)
    model = gpt.MiniGPT(cfg).double()
    x = torch.randint(0, 61, (8, 16))
    y = torch.randint(0, 61, (8, 16))
    y_masked = y.clone()
    y_masked[:3, :13] = IGNORE_INDEX   # micro-batches end up with very different token counts
    out = {}
    for name, targets in (("equal token counts", y), ("unequal token counts (-100 masks)", y_masked)):
        model.zero_grad()
        model(x, targets)[1].backward()
        big = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        micro = [(x[i: i + 2], targets[i: i + 2]) for i in range(0, 8, 2)]
        accumulate_gradients(model, micro)
        acc = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        for xb, yb in micro:   # the common mistake: divide by the number of micro-batches
            (model(xb, yb)[1] / len(micro)).backward()
        naive = [p.grad.clone() for p in model.parameters()]
        out[name] = (max((a - b).abs().max().item() for a, b in zip(acc, big)),
                     max((a - b).abs().max().item() for a, b in zip(naive, big)))
    return out


def precision_check(tokens: np.ndarray, repeats: int = 3) -> dict[str, tuple[float, float]]:
    """``{precision: (loss, CPU seconds per forward+backward)}`` on one batch, same weights."""
    trainer = build_demo_trainer(tokens, seed=0, dropout=0.0)
    batch = next(trainer.train_data)
    out = {}
    for p in PRECISIONS:
        with torch.no_grad(), autocast_context(p, "cpu"):
            loss = model_loss(trainer.model, batch).item()
        times = []
        for _ in range(repeats):
            t = time.process_time()
            with autocast_context(p, "cpu"):
                step_loss = model_loss(trainer.model, batch)
            step_loss.backward()
            times.append(time.process_time() - t)
        trainer.optimizer.zero_grad(set_to_none=True)
        out[p] = (loss, sorted(times)[len(times) // 2])
    return out


def checkpointing_check(repeats: int = 3) -> dict[str, Any]:
    """Activation checkpointing: same gradients, peak-memory growth (fresh processes), CPU time per step."""
    gpt = _gpt_lab()
    torch.manual_seed(0)
    model = gpt.MiniGPT(gpt.GPTConfig.llama_style(**MEMORY_MODEL)).train()
    x = torch.randint(0, 256, (MEMORY_BATCH, MEMORY_MODEL["block_size"]))

    def step() -> list[torch.Tensor]:
        model.zero_grad()
        torch.manual_seed(1)
        model(x, x)[1].backward()
        return [p.grad.clone() for p in model.parameters()]

    def cpu_time() -> float:   # CPU seconds of one step, median: robust to a busy shared machine
        times = []
        for _ in range(repeats):
            t = time.process_time()
            step()
            times.append(time.process_time() - t)
        return sorted(times)[len(times) // 2]

    plain_grads = step()
    t_plain = cpu_time()
    enable_activation_checkpointing(model)
    ck_grads = step()
    t_ck = cpu_time()
    disable_activation_checkpointing(model)
    grad_diff = max((a - b).abs().max().item() for a, b in zip(plain_grads, ck_grads))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", "memory"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    if proc.returncode:
        raise RuntimeError(f"memory worker failed:\n{proc.stderr[-2000:]}")
    mem = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"grad_max_diff": grad_diff, "plain_s": t_plain, "ckpt_s": t_ck,
            "plain_peak": mem["plain"]["peak_growth_bytes"], "ckpt_peak": mem["checkpointed"]["peak_growth_bytes"],
            "plain_saved": mem["plain"]["saved_bytes"], "ckpt_saved": mem["checkpointed"]["saved_bytes"]}


def _cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the self-test's budget unit)."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", choices=("resume", "memory"), help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=16, help=argparse.SUPPRESS)
    ap.add_argument("--n-bytes", type=int, default=200_000, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-steps", type=int, default=100, help="steps of the demo training run (loss curve)")
    args = ap.parse_args(argv)
    if args.worker == "resume":
        return _resume_worker(args)
    if args.worker == "memory":
        return _memory_worker(args)

    torch.set_num_threads(1)
    from labkit.plots import plt, savefig

    t_start, c_start = time.perf_counter(), _cpu_seconds()
    laps: list[tuple[str, float]] = []

    def lap(name: str) -> None:
        laps.append((name, _cpu_seconds() - c_start - sum(t for _, t in laps)))

    failures: list[str] = []
    tokens = demo_tokens(args.n_bytes)
    outputs = HERE / "outputs"
    outputs.mkdir(exist_ok=True)

    print("Gradient accumulation vs one big batch (float64, 8 sequences = 4 micro-batches of 2):")
    print("| case | ours: max abs grad diff | dividing by #micro-batches instead |")
    print("|---|---|---|")
    for name, (ours, naive) in accumulation_check(args.seed).items():
        print(f"| {name} | {ours:.1e} | {naive:.1e} |")
        if not ours < 1e-6:
            failures.append(f"accumulation {name}")

    lap("accumulation")
    print("\nClipping vs torch.nn.utils.clip_grad_norm_ (same grads, max_norm 0.5):")
    torch.manual_seed(args.seed)
    grads = [torch.randn(13, 7), torch.randn(7), torch.randn(3, 3, 3)]
    p1 = [torch.zeros_like(g, requires_grad=True) for g in grads]
    p2 = [torch.zeros_like(g, requires_grad=True) for g in grads]
    for a, b, g in zip(p1, p2, grads):
        a.grad, b.grad = g.clone(), g.clone()
    n1, n2 = clip_grad_norm(p1, 0.5), torch.nn.utils.clip_grad_norm_(p2, 0.5)
    gdiff = max((a.grad - b.grad).abs().max().item() for a, b in zip(p1, p2))
    print(f"pre-clip norm ours {n1.item():.6f}, torch {n2.item():.6f}; max abs grad diff after clipping {gdiff:.1e}")
    if abs(n1.item() - n2.item()) > 1e-6 or gdiff > 1e-7:
        failures.append("clipping")

    print("\nAutocast on CPU, one batch, same weights (tiny MiniGPT, dropout 0); step = forward+backward:")
    prec = precision_check(tokens)
    print("| precision | loss | diff vs fp32 | CPU time per step (median of 3) |")
    print("|---|---|---|---|")
    for p, (v, t) in prec.items():
        print(f"| {p} | {v:.5f} | {abs(v - prec['fp32'][0]):.1e} | {t * 1e3:.1f} ms |")
    if abs(prec["bf16"][0] - prec["fp32"][0]) > 0.05:
        failures.append("bf16 loss far from fp32")
    lap("clipping, precision")

    with tempfile.TemporaryDirectory(dir=outputs) as tmp:
        tmp = Path(tmp)
        r = resume_check(tokens, tmp, seed=args.seed)
        print(f"\nResume check: {r['n_steps']} steps straight vs {r['k']} steps -> save "
              f"({r['ckpt_bytes'] / 1024:.0f} KiB) -> new process -> resume to {r['n_steps']} "
              f"(dropout 0.1, grad accum 2, warmup+cosine):")
        print("| resumed run | max abs loss diff | bit-exact (torch.equal) |")
        print("|---|---|---|")
        for label, d in r["max_abs_loss_diff"].items():
            print(f"| {label} | {d:.3e} | {'yes' if r['bit_exact'][label] else 'no'} |")
        print(f"parameters after {r['n_steps']} steps equal (torch.equal, every tensor): {r['params_equal']}")
        if not r["bit_exact"]["new process, full state"]:
            failures.append("resume is not bit-exact")
        for label in ("RNG states not restored", "data cursor not restored", "LR scheduler not restored"):
            if r["bit_exact"][label]:
                failures.append(f"forgetting ({label}) changed nothing: the check has no teeth")

        lap("resume check")
        k = kill9_check(tmp / "kill9")
        print("\nkill -9 during a checkpoint write (A = small checkpoint already at the path; the child writes a "
              "24 MiB B to the same path and is SIGKILLed after 4 MiB of it):")
        print("| check | result |")
        print("|---|---|")
        print(f"| child paused mid-write, then killed by signal | {k['paused_mid_write']}, {k['signal']} |")
        print(f"| final path loads as | {k['final_loads_as']} |")
        print(f"| previous checkpoint intact | {k['previous_intact']} |")
        print(f"| half-written temp files left / bytes | {k['temp_files_left']} / {k['temp_bytes_written']:,} |")
        print(f"| temp files removed by the next CheckpointManager | {k['temp_removed_by_manager']} |")
        if not (k["paused_mid_write"] and k["previous_intact"]):
            failures.append("kill -9 check")

        lap("kill -9 check")
        ret = retention_demo(tokens, tmp / "retention")
        print("\nRetention: 30 steps, eval + save every 3, keep_every=6, keep_max=2:")
        print("val loss by step: " + ", ".join(f"{s}: {v:.3f}" for s, v in ret["vals"].items()))
        print("| file | step inside |")
        print("|---|---|")
        for name, step in ret["files"].items():
            print(f"| {name} | {step} |")
        want = {"best.pt": ret["best_step"], "last.pt": 30, "step_00000024.pt": 24, "step_00000030.pt": 30}
        if ret["files"] != want:
            failures.append(f"retention: got {ret['files']}, want {want}")

        lap("retention")
    c = checkpointing_check()
    print(f"\nActivation checkpointing (MiniGPT llama_style {MEMORY_MODEL['n_layer']} layers, d_model "
          f"{MEMORY_MODEL['d_model']}, batch {MEMORY_BATCH} x {MEMORY_MODEL['block_size']} tokens, math attention, "
          "fp32, dropout 0.1). Peak = growth of the process's peak RSS (VmHWM, reset just before) over the "
          "forward+backward after a warm-up one, in a subprocess run with MALLOC_MMAP_THRESHOLD_=65536; saved = bytes "
          "autograd keeps for backward (saved_tensors_hooks, each storage once):")
    print("| | peak RSS growth | saved for backward | CPU time per step (median of 3) | max abs grad diff |")
    print("|---|---|---|---|---|")
    print(f"| plain | {c['plain_peak'] / 2**20:.1f} MiB | {c['plain_saved'] / 2**20:.1f} MiB | "
          f"{c['plain_s'] * 1e3:.0f} ms | |")
    print(f"| checkpointed blocks | {c['ckpt_peak'] / 2**20:.1f} MiB | {c['ckpt_saved'] / 2**20:.1f} MiB | "
          f"{c['ckpt_s'] * 1e3:.0f} ms | {c['grad_max_diff']:.1e} |")
    print(f"| ratio | {c['ckpt_peak'] / c['plain_peak']:.2f}x | {c['ckpt_saved'] / c['plain_saved']:.2f}x | "
          f"{c['ckpt_s'] / c['plain_s']:.2f}x | |")
    if c["grad_max_diff"] > 1e-5 or not c["ckpt_peak"] < c["plain_peak"]:
        failures.append("activation checkpointing")

    lap("activation checkpointing")
    n_train = args.train_steps
    split = int(len(demo_tokens()) * 0.9)
    all_tokens = demo_tokens()
    trainer = build_demo_trainer(all_tokens[:split], seed=args.seed, max_steps=n_train, batch_size=8, block_size=64,
                                 dropout=0.0, precision="fp32", val_tokens=all_tokens[split:],
                                 n_layer=2, d_model=64)
    trainer.config.eval_every = max(n_train // 8, 1)
    t0 = time.perf_counter()
    stats = trainer.fit(progress=sys.stderr.isatty())
    dt = time.perf_counter() - t0
    vals = [(s["step"], s["val_loss"]) for s in stats if "val_loss" in s]
    v0 = trainer.evaluate() if not vals else None
    print(f"\nDemo run: Tiny Shakespeare bytes, MiniGPT llama_style 2 layers d_model 64, batch 8 x 64 x accum 2, "
          f"fp32, {n_train} steps in {dt:.1f} s: train loss {stats[0]['loss']:.3f} -> "
          f"{stats[-1]['loss']:.3f}, val loss {vals[-1][1] if vals else v0:.3f} (ln 256 = {math.log(256):.3f})")
    if not stats[-1]["loss"] < math.log(256) - 2.0:
        failures.append("demo run did not learn")
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot([s["step"] for s in stats], [s["loss"] for s in stats], lw=1, alpha=0.6, label="train (per step)")
    ax.plot(*zip(*vals), marker="o", label="val")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/byte)")
    ax2 = ax.twinx()
    ax2.plot([s["step"] for s in stats], [s["lr"] for s in stats], color="grey", ls=":", label="lr")
    ax2.set_ylabel("learning rate (lab 5.2 get_lr)")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("Trainer demo: accumulation 2, clip 1.0, warmup + cosine")
    path = savefig(fig, HERE / "figures" / "demo_run.png")
    print(f"wrote {path}")
    lap("demo run")
    print("\nCPU seconds by section (this process + its subprocesses): "
          + ", ".join(f"{n} {t:.1f}" for n, t in laps))

    print(f"\ntotal self-test time: {time.perf_counter() - t_start:.1f} s wall, {_cpu_seconds() - c_start:.1f} s CPU "
          "(shared 2-core machine: wall times are noisy, ratios come from one run)")
    if failures:
        print("FAILED: " + "; ".join(failures))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

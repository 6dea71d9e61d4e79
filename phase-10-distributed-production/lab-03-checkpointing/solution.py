"""Lab 10.3: sharded, asynchronous, resumable checkpoints for an FSDP2 training job.

A training job that can be killed at any moment and resumed, on the same or a different number
of ranks, and continue exactly where it stopped. Five pieces, each a TODO:

* **RNG state per rank** (:func:`capture_rng_state` / :func:`restore_rng_state`): torch, NumPy
  and Python generators. Dropout draws from torch's generator, so a resume that forgets it
  trains on different dropout masks from the first step on.
* **Data-loader state** (:class:`ResumableLoader`): the loader is a pure function of
  ``(seed, epoch, position)``; saving those three numbers is enough to replay the same batches.
* **Sharded save / load** (:func:`save_checkpoint` / :func:`load_checkpoint`): the model and
  optimizer as DTensor shards through ``torch.distributed.checkpoint.state_dict`` (``get_state_dict``
  / ``set_state_dict``) and ``torch.distributed.checkpoint`` (``dcp.save`` / ``dcp.async_save`` /
  ``dcp.load``). Every rank writes only its own shard; the ``.metadata`` file records which slice
  of which tensor lives where, so a job with another world size can load it (DCP reshards on load).
* **Completion marker** (:func:`commit_checkpoint` / :func:`find_latest_complete`): a checkpoint
  counts only once ``COMPLETE.json`` is in its folder, written atomically (temp file + fsync +
  ``os.replace``) by rank 0 after every rank's write has finished. A rank that dies mid-save
  leaves a folder without the marker, and the loader skips it.
* **Retention** (:func:`select_to_keep`): keep the last ``keep_last`` periodic checkpoints, the
  best by validation loss, and the final one; delete the rest.

:class:`CheckpointManager` ties them together. :func:`worker_main` is the training job a learner
runs under ``torchrun``; :func:`main` (the self-test) launches it twice as subprocesses: 2 ranks
for an uninterrupted run plus an in-process resume, then a run whose rank 1 is killed in the
middle of a save; 1 rank to resume the killed run from its last complete checkpoint.

Run: ``python solution.py`` (small mode, 2 ranks of gloo on CPU, under a minute);
``torchrun --nproc_per_node=2 solution.py worker --out DIR`` runs one job by hand.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from labkit import load_lab

HERE = Path(__file__).resolve().parent
NANO_LAB = "phase-05-training-small-llms/lab-02-nano-gpt"
BPE_LAB = "phase-05-training-small-llms/lab-01-bpe-tokenizer"
nano = load_lab(NANO_LAB)

MARKER = "COMPLETE.json"      # inside a checkpoint folder: the checkpoint is whole
LATEST = "latest.json"        # in the root: a hint naming the newest complete checkpoint
STEP_PREFIX = "step_"

__all__ = [
    "CheckpointManager",
    "CheckpointRecord",
    "JobConfig",
    "ResumableLoader",
    "capture_rng_state",
    "commit_checkpoint",
    "find_latest_complete",
    "list_checkpoints",
    "load_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
    "select_to_keep",
    "write_json_atomic",
]


# ============================================================================ RNG state
def capture_rng_state() -> dict[str, Any]:
    """Every random generator this process draws from, as plain picklable values.

    Returns:
        ``{"torch": ByteTensor (CPU generator state), "numpy": np.random.get_state() tuple,
        "python": random.getstate() tuple, "cuda": list of ByteTensors (one per visible GPU;
        [] without CUDA)}``. Copies: drawing afterwards does not change the captured state.
    """
    # BEGIN SOLUTION torch.get_rng_state(), np.random.get_state(), random.getstate(), torch.cuda.get_rng_state_all() when CUDA is available (easy, ~5 min)
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    # END SOLUTION


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put every generator back where :func:`capture_rng_state` found it.

    Raises:
        ValueError: ``state`` lacks one of the keys "torch", "numpy", "python".
    """
    missing = {"torch", "numpy", "python"} - set(state)
    if missing:
        raise ValueError(f"RNG state is missing {sorted(missing)}: was it made by capture_rng_state?")
    # BEGIN SOLUTION the three setters (torch.set_rng_state, np.random.set_state, random.setstate) and the CUDA one when a state was saved and CUDA is here (easy, ~5 min)
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    # END SOLUTION


# ============================================================================ data-loader state
class ResumableLoader:
    """Shuffled fixed-length windows of a token array, split across ranks, resumable.

    The array is cut into ``n = (len(tokens) - 1) // block_size`` non-overlapping windows of
    ``block_size + 1`` tokens (window ``i`` starts at ``i * block_size``). Epoch ``e`` visits them
    in the order ``torch.randperm(n, generator=manual_seed(seed * 1_000_003 + e))``; global batch
    ``p`` of the epoch is ``order[p * G : (p + 1) * G]`` with ``G = global_batch``, and rank ``r``
    takes rows ``[r * G / W, (r + 1) * G / W)`` of it. The tail of an epoch shorter than ``G`` is
    dropped. An epoch ends after ``n // G`` batches and the next one starts with a new order.

    Because the batch is a pure function of ``(seed, epoch, position)`` and the global batch does
    not depend on the world size, the state is three integers and can be loaded by a job with any
    world size that divides ``global_batch``.

    Yields:
        ``(x, y)``: (G / W, block_size) int64 each; ``y`` is ``x`` shifted by one token.

    Raises:
        ValueError: ``global_batch`` not divisible by ``world_size``, ``rank`` out of range, a size
            < 1, or fewer windows than one global batch.
    """

    def __init__(self, tokens: np.ndarray, global_batch: int, block_size: int, *, rank: int = 0,
                 world_size: int = 1, seed: int = 0) -> None:
        if global_batch < 1 or block_size < 1 or world_size < 1:
            raise ValueError(f"global_batch, block_size and world_size must be >= 1, got "
                             f"{global_batch}, {block_size}, {world_size}")
        if global_batch % world_size:
            raise ValueError(f"global_batch={global_batch} is not divisible by world_size={world_size}: "
                             "every rank needs the same number of rows")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is out of range for world_size={world_size}")
        tokens = np.asarray(tokens)
        if tokens.ndim != 1:
            raise ValueError(f"tokens must be 1-D, got shape {tokens.shape}")
        self.n_windows = (len(tokens) - 1) // block_size
        if self.n_windows < global_batch:
            raise ValueError(f"{len(tokens)} tokens make {self.n_windows} windows of {block_size}, fewer "
                             f"than one global batch of {global_batch}")
        self.tokens = torch.from_numpy(tokens.astype(np.int64))
        self.global_batch, self.block_size = global_batch, block_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.batches_per_epoch = self.n_windows // global_batch
        self.epoch = 0       # epochs finished
        self.position = 0    # global batches already served in the current epoch

    def _order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n_windows, generator=g)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        # BEGIN SOLUTION roll over to the next epoch when position == batches_per_epoch; take this rank's slice of the global batch at `position` from _order(epoch); build x/y from window starts i * block_size; advance position (medium, ~15 min)
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        per_rank = self.global_batch // self.world_size
        start = self.position * self.global_batch + self.rank * per_rank
        windows = self._order(self.epoch)[start: start + per_rank]
        rows = torch.stack([self.tokens[i * self.block_size: i * self.block_size + self.block_size + 1]
                            for i in windows.tolist()])
        self.position += 1
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()
        # END SOLUTION

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "position", "seed", "global_batch", "n_windows"}``: plain ints."""
        # BEGIN SOLUTION the cursor (epoch, position), the sampler seed, and the two sizes a loader must agree on to resume (easy, ~5 min)
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "global_batch": self.global_batch, "n_windows": self.n_windows}
        # END SOLUTION

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from ``state``.

        Raises:
            ValueError: ``global_batch`` or ``n_windows`` differ from this loader's (another data
                set or batch size: resuming would silently replay other batches).
        """
        for key in ("global_batch", "n_windows"):
            if state[key] != getattr(self, key):
                raise ValueError(f"loader state has {key}={state[key]}, this loader has "
                                 f"{getattr(self, key)}: not the same data or global batch")
        # BEGIN SOLUTION restore the cursor and the sampler seed (easy, ~5 min)
        self.epoch, self.position, self.seed = int(state["epoch"]), int(state["position"]), int(state["seed"])
        # END SOLUTION


# ============================================================================ atomic files and retention
def write_json_atomic(path: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` as JSON so that ``path`` is either absent or complete, never half-written.

    Temp file in the same folder, flush + fsync, ``os.replace`` (atomic on POSIX and Windows),
    then fsync the folder so the rename itself survives a power cut.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(path.parent, os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


@dataclass(frozen=True)
class CheckpointRecord:
    """What ``COMPLETE.json`` says about one checkpoint.

    Attributes:
        step: optimizer steps done when it was taken. metric: validation loss (nats/token), or
        None. kinds: subset of {"periodic", "best", "final"} it was saved as. world_size: ranks
        that wrote it. path: its folder.
    """

    step: int
    metric: float | None = None
    kinds: tuple[str, ...] = ("periodic",)
    world_size: int = 1
    path: str = ""


def select_to_keep(records: list[CheckpointRecord], keep_last: int) -> set[int]:
    """Steps to keep: the ``keep_last`` newest periodic ones, the one with the lowest metric
    (ties: the newest), every ``final`` one, and always the newest checkpoint of all.

    Args:
        records: complete checkpoints (any order).
        keep_last: >= 1.

    Returns:
        A set of steps; the caller deletes every other record's folder.

    Raises:
        ValueError: ``keep_last < 1`` or two records with the same step.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}: keeping nothing loses the run")
    steps = [r.step for r in records]
    if len(set(steps)) != len(steps):
        raise ValueError(f"duplicate steps in records: {sorted(steps)}")
    if not records:
        return set()
    # BEGIN SOLUTION newest overall; last keep_last "periodic" by step; min metric among records with a finite metric (ties -> larger step); all "final" (easy, ~10 min)
    by_step = sorted(records, key=lambda r: r.step)
    keep = {by_step[-1].step}
    keep |= {r.step for r in [r for r in by_step if "periodic" in r.kinds][-keep_last:]}
    keep |= {r.step for r in by_step if "final" in r.kinds}
    scored = [r for r in by_step if r.metric is not None and math.isfinite(r.metric)]
    if scored:
        keep.add(min(scored, key=lambda r: (r.metric, -r.step)).step)
    return keep
    # END SOLUTION


def step_dir(root: str | os.PathLike, step: int) -> Path:
    return Path(root) / f"{STEP_PREFIX}{step:08d}"


def list_checkpoints(root: str | os.PathLike) -> tuple[list[CheckpointRecord], list[Path]]:
    """``(complete records sorted by step, folders without a marker)`` under ``root``."""
    complete, incomplete = [], []
    root = Path(root)
    if not root.is_dir():
        return complete, incomplete
    for d in sorted(root.glob(f"{STEP_PREFIX}*")):
        if not d.is_dir():
            continue
        marker = d / MARKER
        if marker.is_file():
            m = json.loads(marker.read_text(encoding="utf-8"))
            complete.append(CheckpointRecord(step=m["step"], metric=m.get("metric"), kinds=tuple(m["kinds"]),
                                             world_size=m["world_size"], path=str(d)))
        else:
            incomplete.append(d)
    return sorted(complete, key=lambda r: r.step), incomplete


def commit_checkpoint(path: str | os.PathLike, record: CheckpointRecord) -> Path:
    """Mark the checkpoint folder ``path`` complete and point ``latest.json`` at it.

    Call it on rank 0 only, and only once every rank's part of the save has finished (after
    ``dcp.save`` returned, or an ``async_save`` future resolved, on every rank, and a barrier).
    Order matters: the marker first, then the ``latest.json`` hint, each atomically; a crash
    between the two leaves a hint naming an older checkpoint, which is still correct.

    Raises:
        FileNotFoundError: ``path`` has no DCP ``.metadata`` (the save did not finish).
    """
    path = Path(path)
    if not (path / ".metadata").is_file():
        raise FileNotFoundError(f"{path} has no .metadata: the DCP save did not finish, refusing to mark it complete")
    # BEGIN SOLUTION write_json_atomic the marker (asdict(record) with the path) inside the folder, then latest.json in the parent naming the folder and step (easy, ~10 min)
    write_json_atomic(path / MARKER, {**asdict(record), "path": str(path), "kinds": list(record.kinds)})
    write_json_atomic(path.parent / LATEST, {"step": record.step, "dir": path.name})
    return path / MARKER
    # END SOLUTION


def find_latest_complete(root: str | os.PathLike) -> CheckpointRecord | None:
    """The newest checkpoint under ``root`` that carries its ``COMPLETE.json`` marker, or None.

    ``latest.json`` is only a hint: it is trusted when the folder it names is complete and no
    newer complete folder exists; otherwise (missing, stale, or naming a folder without a
    marker) the folders are scanned. A folder without the marker is never returned, however new.
    """
    # BEGIN SOLUTION list_checkpoints(root); the complete record with the largest step (the hint can only agree with it); None when there is none (easy, ~10 min)
    complete, _ = list_checkpoints(root)
    return complete[-1] if complete else None
    # END SOLUTION


# ============================================================================ sharded save / load
def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _rank_key(rank: int) -> str:
    return f"rank_state/{rank}"


def build_state_dict(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     loader: ResumableLoader, step: int) -> dict[str, Any]:
    """The dict DCP saves: ``{"model": ..., "optim": ..., "step": int, "rank_state/<r>": {...}}``.

    ``model`` / ``optim`` come from ``get_state_dict(model, optimizer)``: under FSDP2 every value is
    a DTensor holding this rank's shard (nothing is gathered). ``rank_state/<r>`` is this rank's
    RNG and loader state, pickled to bytes (DCP stores non-tensor leaves as bytes); the rank in
    the key keeps ranks from overwriting each other, since DCP de-duplicates equal keys.
    """
    from torch.distributed.checkpoint.state_dict import get_state_dict

    rank, _ = _rank_world()
    # BEGIN SOLUTION get_state_dict(model, optimizer) -> model / optim entries; the step; this rank's pickled {"rng": capture_rng_state(), "loader": loader.state_dict()} under _rank_key(rank) (medium, ~15 min)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    blob = pickle.dumps({"rng": capture_rng_state(), "loader": loader.state_dict()})
    return {"model": model_sd, "optim": optim_sd, "step": step, _rank_key(rank): {"blob": blob}}
    # END SOLUTION


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    loader: ResumableLoader, step: int, *, use_async: bool = False,
                    process_group: Any = None, storage_writer: Any = None) -> Future | None:
    """Write one sharded checkpoint into the folder ``path`` (collective: every rank calls it).

    Args:
        use_async: ``dcp.async_save``: the state is copied to CPU memory ("staged") before this
            returns, the files are written by a background thread, and the returned Future
            resolves when this rank's part (and on the coordinator the ``.metadata``) is on disk.
            Training may change the parameters right after the call.
        process_group: the group DCP's own collectives run on. With async save use a separate
            gloo group, so the background thread's collectives never interleave with the training
            step's all-gathers on the default group.
        storage_writer: default ``FileSystemWriter(path)``; the tests pass one that crashes.

    Returns:
        The Future of an async save, or None (the save has finished on this rank).

    It does NOT write the completion marker: see :class:`CheckpointManager`.
    """
    import torch.distributed.checkpoint as dcp

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    writer = storage_writer if storage_writer is not None else dcp.FileSystemWriter(path)
    # BEGIN SOLUTION build_state_dict, then dcp.async_save (return its future) or dcp.save (return None) with storage_writer and process_group (medium, ~10 min)
    state = build_state_dict(model, optimizer, loader, step)
    if use_async:
        return dcp.async_save(state, storage_writer=writer, process_group=process_group)
    dcp.save(state, storage_writer=writer, process_group=process_group)
    return None
    # END SOLUTION


def load_checkpoint(path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    loader: ResumableLoader) -> int:
    """Load the complete checkpoint in ``path`` into ``model``, ``optimizer``, ``loader`` and the
    RNGs of this rank (collective), resharding to the current world size if it changed.

    Per-rank state: rank ``r`` restores ``rank_state/<r>`` when the saving job had a rank ``r``.
    A rank that did not exist then (the job grew) takes rank 0's loader state (the cursor is
    global, so it is the same) and seeds its RNGs from ``(loader seed, rank)``: its random stream
    is new, so a job that uses dropout resumes correctly but not bit-for-bit.

    Returns:
        The step the checkpoint was taken at.

    Raises:
        FileNotFoundError: no ``COMPLETE.json`` in ``path`` (an unfinished save: never load it).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = Path(path)
    if not (path / MARKER).is_file():
        raise FileNotFoundError(f"{path} has no {MARKER}: the save did not finish on every rank")
    saved_world = json.loads((path / MARKER).read_text(encoding="utf-8"))["world_size"]
    rank, _ = _rank_world()
    src = rank if rank < saved_world else 0
    # BEGIN SOLUTION placeholders from get_state_dict + "step" + rank_state of src; dcp.load into them in place; set_state_dict(model, optimizer, model_state_dict=..., optim_state_dict=...); unpickle; loader.load_state_dict; restore_rng_state when src == rank, else seed torch/numpy/python from (seed, rank) (medium, ~20 min)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd, "step": 0, _rank_key(src): {"blob": b""}}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    extra = pickle.loads(state[_rank_key(src)]["blob"])
    loader.load_state_dict(extra["loader"])
    if src == rank:
        restore_rng_state(extra["rng"])
    else:
        seed = extra["loader"]["seed"] * 1009 + rank
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
    return int(state["step"])
    # END SOLUTION


# ============================================================================ the manager
@dataclass
class CheckpointManager:
    """Periodic / best / final checkpoints with async writes and an atomic completion marker.

    ``save`` is collective. Periodic saves (every ``period`` steps) use ``async_save`` when
    ``use_async``; ``final=True`` saves synchronously. A pending async save is finished (its
    Future awaited on every rank, a barrier, then rank 0 writes the marker and applies
    retention) before the next save starts and in :meth:`close`.

    On creation rank 0 removes folders left without a marker by a crashed run (they can never
    become complete) and every rank waits for it.

    Raises:
        ValueError: ``period < 1`` or ``keep_last < 1``.
    """

    root: Path
    period: int = 100
    keep_last: int = 2
    use_async: bool = True
    writer_factory: Callable[[Path, int], Any] | None = None   # (folder, step) -> storage writer
    removed_incomplete: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.period < 1 or self.keep_last < 1:
            raise ValueError(f"period and keep_last must be >= 1, got {self.period}, {self.keep_last}")
        self.root = Path(self.root)
        self.rank, self.world_size = _rank_world()
        self._pending: tuple[Future, CheckpointRecord] | None = None
        self.blocking_s: list[float] = []     # seconds each save() blocked, after finishing the previous one
        self._pg = dist.new_group(backend="gloo") if dist.is_initialized() and self.use_async else None
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            for d in list_checkpoints(self.root)[1]:
                shutil.rmtree(d, ignore_errors=True)
                self.removed_incomplete.append(d.name)
        self._barrier()

    def _barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def latest(self) -> CheckpointRecord | None:
        return find_latest_complete(self.root)

    def should_save(self, step: int) -> bool:
        return step % self.period == 0

    def save(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             loader: ResumableLoader, *, metric: float | None = None, final: bool = False) -> None:
        self.wait()
        t0 = time.perf_counter()    # blocking time of this save alone (the previous one is committed)
        kinds = ("final",) if final else ("periodic",)
        record = CheckpointRecord(step=step, metric=metric, kinds=kinds, world_size=self.world_size,
                                  path=str(step_dir(self.root, step)))
        path = step_dir(self.root, step)
        writer = self.writer_factory(path, step) if self.writer_factory else None
        use_async = self.use_async and not final
        fut = save_checkpoint(path, model, optimizer, loader, step, use_async=use_async,
                              process_group=self._pg, storage_writer=writer)
        self._pending = (fut, record)
        if not use_async:
            self.wait()     # a synchronous save is committed before training goes on
        self.blocking_s.append(time.perf_counter() - t0)

    def wait(self) -> None:
        """Finish the pending save: await it here, barrier, commit on rank 0, retention, barrier."""
        if self._pending is None:
            return
        fut, record = self._pending
        self._pending = None
        if fut is not None:
            fut.result()
        self._barrier()     # every rank's shard is on disk
        if self.rank == 0:
            commit_checkpoint(record.path, record)
            complete, _ = list_checkpoints(self.root)
            keep = select_to_keep(complete, self.keep_last)
            for r in complete:
                if r.step not in keep:
                    shutil.rmtree(r.path, ignore_errors=True)
        self._barrier()

    def close(self) -> None:
        self.wait()


# ============================================================================ the training job
@dataclass
class JobConfig:
    """The small-mode job: a 2-layer d_model 64 Llama-style MiniGPT (lab 5.2's ``build_model``)
    on Phase 5 BPE tokens of TinyStories, AdamW with lab 5.2's warmup + cosine schedule."""

    n_layer: int = 2
    n_head: int = 4
    n_kv_head: int = 2
    d_model: int = 64
    block_size: int = 32
    dropout: float = 0.1
    global_batch: int = 8
    max_steps: int = 10
    max_lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 2
    seed: int = 0
    n_train_windows: int = 40       # 5 global batches per epoch: 10 steps cross an epoch boundary
    n_val_windows: int = 8


def demo_tokens(cfg: JobConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) uint16 token arrays: Phase 5's BPE (the curriculum tokenizer) on TinyStories."""
    from labkit import curriculum_model_path, read_text

    bpe = load_lab(BPE_LAB)
    tok = bpe.BPETokenizer.load(curriculum_model_path("main") / "tokenizer")
    need = (cfg.n_train_windows + cfg.n_val_windows) * cfg.block_size + 2
    text = read_text("tinystories", "valid_prefix_794k.txt")
    ids = np.asarray(tok.encode(text[: need * 8]), dtype=np.uint16)
    if len(ids) < need:
        raise ValueError(f"only {len(ids)} tokens, need {need}")
    cut = cfg.n_train_windows * cfg.block_size + 1
    return ids[:cut], ids[cut: cut + cfg.n_val_windows * cfg.block_size + 1]


def build_job(cfg: JobConfig, train_tokens: np.ndarray, vocab_size: int = 4096
              ) -> tuple[torch.nn.Module, torch.optim.Optimizer, ResumableLoader]:
    """Model (same init on every rank), FSDP2 ``fully_shard`` per block then the root when a
    process group is up, AdamW over the sharded parameters, and this rank's loader."""
    from torch.distributed.fsdp import fully_shard

    rank, world = _rank_world()
    torch.manual_seed(cfg.seed)
    model = nano.build_model(vocab_size, style="llama", n_layer=cfg.n_layer, n_head=cfg.n_head,
                             n_kv_head=cfg.n_kv_head, d_model=cfg.d_model, block_size=cfg.block_size,
                             dropout=cfg.dropout)
    if dist.is_initialized():
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.max_lr, betas=(0.9, 0.95), weight_decay=0.1)
    loader = ResumableLoader(train_tokens, cfg.global_batch, cfg.block_size, rank=rank, world_size=world,
                             seed=cfg.seed)
    return model, optimizer, loader


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: ResumableLoader,
               cfg: JobConfig, step: int) -> float:
    """One optimizer step on this rank's rows; returns the global-batch mean loss (all ranks)."""
    lr = nano.get_lr(step, max_lr=cfg.max_lr, min_lr=cfg.min_lr, warmup_steps=cfg.warmup_steps,
                     max_steps=cfg.max_steps)
    for group in optimizer.param_groups:
        group["lr"] = lr
    model.train()
    x, y = next(loader)
    _, loss = model(x, y)
    loss.backward()        # FSDP2 reduce-scatters and averages the gradients over ranks
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    out = loss.detach().clone()
    if dist.is_initialized():
        dist.all_reduce(out)
        out /= dist.get_world_size()
    return float(out)


@torch.no_grad()
def val_loss(model: torch.nn.Module, val_tokens: np.ndarray, block_size: int) -> float:
    """Mean loss over the fixed validation windows (every rank evaluates all of them)."""
    model.eval()
    t = torch.from_numpy(val_tokens.astype(np.int64))
    n = (len(t) - 1) // block_size
    rows = torch.stack([t[i * block_size: i * block_size + block_size + 1] for i in range(n)])
    _, loss = model(rows[:, :-1], rows[:, 1:])
    model.train()
    return float(loss)


def run_training(cfg: JobConfig, train_tokens: np.ndarray, val_tokens: np.ndarray,
                 manager: CheckpointManager | None, *, resume: bool) -> dict[str, Any]:
    """Build the job, optionally resume from the manager's latest complete checkpoint, train to
    ``cfg.max_steps`` with periodic (val loss as the metric) and final saves."""
    model, optimizer, loader = build_job(cfg, train_tokens)
    start, resumed_from = 0, None
    if resume and manager is not None:
        rec = manager.latest()
        if rec is not None:
            rank, _ = _rank_world()
            # scramble every generator first: a load that forgets one cannot pass by luck
            torch.manual_seed(10_000 + rank)
            np.random.seed(10_000 + rank)
            random.seed(10_000 + rank)
            start = load_checkpoint(rec.path, model, optimizer, loader)
            resumed_from = rec.step
    losses: dict[int, float] = {}
    for step in range(start, cfg.max_steps):
        losses[step + 1] = train_step(model, optimizer, loader, cfg, step)
        done = step + 1
        if manager is not None and (manager.should_save(done) or done == cfg.max_steps):
            manager.save(done, model, optimizer, loader, metric=val_loss(model, val_tokens, cfg.block_size),
                         final=done == cfg.max_steps)
    if manager is not None:
        manager.close()
    return {"losses": losses, "resumed_from": resumed_from}


class _CrashingWriter:
    """A FileSystemWriter that kills its process (``os._exit``) right after writing this rank's
    shard: the shard is on disk, the ``.metadata`` and the marker are not. Fault injection only."""

    def __new__(cls, path: Path):
        import torch.distributed.checkpoint as dcp

        class Crashing(dcp.FileSystemWriter):
            def write_data(self, plan, planner):
                fut = super().write_data(plan, planner)
                fut.wait()
                print(f"[rank {dist.get_rank()}] fault injection: os._exit(17) after writing my shard of "
                      f"{path.name}", flush=True)
                os._exit(17)

        return Crashing(path)


def worker_main(argv: list[str] | None = None) -> int:
    """Entry point under torchrun. ``--mode``:

    * ``scenario``: (A) a run with dropout, checkpoints every ``period`` steps into ``out/a``, then,
      in the same processes, fresh objects resume from step ``resume_step`` and finish; (B) the
      same run with dropout 0 into ``out/b``. Writes ``out/scenario.json`` (rank 0).
    * ``crash``: run B's config into ``out/c``; rank ``crash_rank`` dies inside the save of step
      ``crash_step``.
    * ``resume``: resume ``out/c`` (any world size) with B's config and finish; ``out/resume_w<W>.json``.

    ``--mode scenario,crash`` runs both in one launch (the processes start once; the launch then
    fails by design, after ``scenario.json`` is written).
    """
    p = argparse.ArgumentParser()
    p.add_argument("--mode", default="scenario",
                   help="scenario | crash | resume, or several joined by commas, run in order")
    p.add_argument("--out", required=True)
    p.add_argument("--period", type=int, default=2)
    p.add_argument("--resume-step", type=int, default=4)
    p.add_argument("--crash-step", type=int, default=6)
    p.add_argument("--crash-rank", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = _rank_world()
    out = Path(args.out)
    tokens = np.load(out / "tokens.npz")
    train_tok, val_tok = tokens["train"], tokens["val"]
    cfg_a = JobConfig()
    cfg_b = JobConfig(dropout=0.0)
    modes = args.mode.split(",")
    if not set(modes) <= {"scenario", "crash", "resume"}:
        raise ValueError(f"unknown mode in {args.mode!r}")
    try:
        for mode in modes:
            result: dict[str, Any] = {"world_size": world}
            if mode == "scenario":
                man = CheckpointManager(out / "a", period=args.period, keep_last=3, use_async=True)
                ref = run_training(cfg_a, train_tok, val_tok, man, resume=False)
                result["reference"] = ref["losses"]
                result["blocking_s_async"] = man.blocking_s[:-1]
                result["blocking_s_sync_final"] = man.blocking_s[-1]
                result["kept"] = [asdict(r) for r in list_checkpoints(out / "a")[0]]
                # resume from step `resume_step` in fresh objects: point a manager at a copy holding it
                if rank == 0:
                    src = step_dir(out / "a", args.resume_step)
                    if not (src / MARKER).is_file():
                        raise RuntimeError(f"step {args.resume_step} was not kept by retention")
                    shutil.copytree(src, step_dir(out / "a_resume", args.resume_step))
                dist.barrier()
                man_r = CheckpointManager(out / "a_resume", period=10**6, use_async=False)
                res = run_training(cfg_a, train_tok, val_tok, man_r, resume=True)
                result["resumed"], result["resumed_from"] = res["losses"], res["resumed_from"]
                man_b = CheckpointManager(out / "b", period=args.period, keep_last=10, use_async=True)
                result["reference_no_dropout"] = run_training(cfg_b, train_tok, val_tok, man_b, resume=False)["losses"]
                shard_bytes = {f.name: f.stat().st_size for f in step_dir(out / "b", args.resume_step).glob("*.distcp")}
                result["shard_bytes"] = shard_bytes
            elif mode == "crash":
                def factory(path: Path, step: int) -> Any:
                    if step == args.crash_step and rank == args.crash_rank:
                        return _CrashingWriter(path)
                    return None
                man = CheckpointManager(out / "c", period=args.period, keep_last=10, use_async=True,
                                        writer_factory=factory)
                run_training(cfg_b, train_tok, val_tok, man, resume=False)
                result["note"] = "the fault never fired"
            else:
                man = CheckpointManager(out / "c", period=args.period, keep_last=10, use_async=False)
                res = run_training(cfg_b, train_tok, val_tok, man, resume=True)
                result.update(resumed=res["losses"], resumed_from=res["resumed_from"],
                              removed_incomplete=man.removed_incomplete)
            if rank == 0:
                name = "scenario.json" if mode == "scenario" else f"{mode}_w{world}.json"
                write_json_atomic(out / name, result)
            dist.barrier()
    finally:
        dist.barrier()
        dist.destroy_process_group()
    return 0


# ============================================================================ launching (tests and self-test)
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(nproc: int, worker_args: list[str], *, script: str | os.PathLike | None = None,
           timeout: float = 180.0) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc_per_node=N --master-port P script worker ...``
    (one thread per rank, gloo). Returns the finished process (stdout+stderr in ``.stdout``)."""
    script = str(script or Path(__file__).resolve())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
           "--master-addr=127.0.0.1", f"--master-port={free_port()}", script, "worker", *worker_args]
    return subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)


def prepare_out(out: Path, cfg: JobConfig | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    train, val = demo_tokens(cfg or JobConfig())
    np.savez(out / "tokens.npz", train=train, val=val)
    return out


def run_all(out: Path, script: str | os.PathLike | None = None) -> dict[str, Any]:
    """The two launches of the self-test (and of the grader): scenario then crash (2 ranks; the
    crash ends the launch, so its exit code is non-zero by design), and resume (1 rank).
    Returns the parsed JSON results and each launch's return code and output."""
    prepare_out(out)
    res: dict[str, Any] = {}
    for name, nproc, extra in (("scenario", 2, ["--mode", "scenario,crash"]), ("resume", 1, ["--mode", "resume"])):
        t0 = time.perf_counter()
        proc = launch(nproc, ["--out", str(out), *extra], script=script)
        res[f"{name}_rc"], res[f"{name}_log"] = proc.returncode, proc.stdout
        res[f"{name}_wall_s"] = time.perf_counter() - t0
    for key, name in (("scenario", "scenario.json"), ("resume", "resume_w1.json")):
        if (out / name).is_file():
            res[key] = json.loads((out / name).read_text(encoding="utf-8"))
    return res


def _max_abs(a: dict, b: dict, steps: list[str]) -> float:
    return max(abs(a[s] - b[s]) for s in steps)


def selftest() -> int:
    out = HERE / "outputs" / "selftest"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    res = run_all(out)
    failures = []
    sc = res.get("scenario")
    if sc is None:
        print(res["scenario_log"][-4000:])
        return 1
    ref, resumed = sc["reference"], sc["resumed"]
    steps = sorted(resumed, key=int)
    print(f"\n(A) 2 ranks, dropout 0.1, async periodic saves every 2 steps; resume from step {sc['resumed_from']}")
    print(f"{'step':>4}  {'uninterrupted':>14}  {'resumed':>14}  equal")
    for s in sorted(ref, key=int):
        r = resumed.get(s)
        print(f"{s:>4}  {ref[s]:14.8f}  {'' if r is None else f'{r:14.8f}':>14}  "
              f"{'' if r is None else ('yes' if r == ref[s] else 'NO')}")
    if any(resumed[s] != ref[s] for s in steps):
        failures.append("2-rank resume is not bit-identical")
    print("\nretention (keep_last=3, best by val loss, final):")
    for r in sc["kept"]:
        print(f"  step {r['step']:>3}  kinds={','.join(r['kinds']):9s}  val_loss={r['metric']:.4f}")
    print(f"\nsave blocking time (s): async periodic {', '.join(f'{t:.3f}' for t in sc['blocking_s_async'])}, "
          f"sync final {sc['blocking_s_sync_final']:.3f}")
    print(f"shard files of one checkpoint (bytes): {sc['shard_bytes']}")
    crash_log = res["scenario_log"]
    print(f"\n(C) crash run: torchrun exit code {res['scenario_rc']} "
          f"(fault fired: {'fault injection' in crash_log})")
    rs = res.get("resume")
    if rs is None or res["resume_rc"] != 0:
        print(res["resume_log"][-4000:])
        return 1
    refb = sc["reference_no_dropout"]
    steps_b = sorted(rs["resumed"], key=int)
    diff = _max_abs(refb, rs["resumed"], steps_b)
    print(f"(C) 1-rank resume of the killed 2-rank run: picked step {rs['resumed_from']}, removed incomplete "
          f"{rs['removed_incomplete']}")
    print(f"{'step':>4}  {'2 ranks, no crash':>18}  {'1 rank, resumed':>16}  {'|diff|':>9}")
    for s in steps_b:
        print(f"{s:>4}  {refb[s]:18.8f}  {rs['resumed'][s]:16.8f}  {abs(refb[s] - rs['resumed'][s]):9.2e}")
    if res["scenario_rc"] == 0 or "fault injection" not in crash_log:
        failures.append("the crash run did not crash")
    if rs["resumed_from"] != 4:
        failures.append(f"expected the manager to pick step 4, got {rs['resumed_from']}")
    if not diff <= 1e-5:
        failures.append(f"world-size change: max |diff| {diff:.2e} > 1e-5")
    print(f"\nwall: scenario + crash launch {res['scenario_wall_s']:.1f} s, resume launch "
          f"{res['resume_wall_s']:.1f} s, total {time.perf_counter() - t0:.1f} s")
    _plot(ref, resumed, refb, rs["resumed"])
    for f in failures:
        print("FAIL:", f)
    print("OK" if not failures else f"{len(failures)} sanity check(s) failed")
    return 1 if failures else 0


def _plot(ref: dict, resumed: dict, refb: dict, resumed_w1: dict) -> None:
    import matplotlib.pyplot as plt

    from labkit.plots import savefig

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, (a, b, la, lb, title) in zip(axes, (
            (ref, resumed, "uninterrupted (2 ranks)", "resumed at step 4 (2 ranks)", "dropout 0.1: bitwise"),
            (refb, resumed_w1, "uninterrupted (2 ranks)", "killed at step-6 save, resumed on 1 rank",
             "dropout 0: world size 2 -> 1"))):
        ax.plot([int(s) for s in a], list(a.values()), "o-", label=la)
        ax.plot([int(s) for s in b], list(b.values()), "x--", label=lb)
        ax.set_xlabel("step")
        ax.set_ylabel("train loss (nats/token)")
        ax.set_title(title)
        ax.legend(fontsize=8)
    savefig(fig, HERE / "figures" / "resume.png")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "worker":
        return worker_main(argv[1:])
    torch.set_num_threads(1)
    return selftest()


if __name__ == "__main__":
    sys.exit(main())

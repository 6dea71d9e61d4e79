"""Build a cached folder once per checkout, safely under concurrency.

Several labs cache something expensive that they train or compute (the curriculum model, an SFT
model, a re-ranker, a capstone's run) in ``.cache/models/<name>-<key16>/``, where the key hashes
the code, config and data that produce it. Two processes may ask for it at once (``make test``
runs two self-tests at a time) and a build may crash. The recipe, in one place:

1. if the folder is complete, return it;
2. take an exclusive ``fcntl`` lock (wait, and say so, if another process holds it);
3. check again (the other process may have just built it);
4. build into a fresh temporary folder next to the final one;
5. ``os.replace`` it into place (atomic on one file system: readers see no folder or a complete
   one); on any error remove the temporary folder and re-raise.

Only the standard library is used, so ``import labkit`` stays cheap.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def locked(lock_path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``lock_path`` (created if missing) for the block.

    Prints one line to stderr when it has to wait for another process. POSIX only.
    """
    import fcntl  # POSIX; imported here so that importing labkit works everywhere

    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"[labkit] waiting for another process to finish building {lock_path.stem} ...",
                  file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_once(final: str | os.PathLike, build: Callable[[Path], None], *, key: str | None = None,
               ready: str | None = None, lock: str | os.PathLike | None = None,
               message: str | None = None) -> Path:
    """Return the folder ``final``, calling ``build(tmp)`` to create it if it is not complete.

    Args:
        final: the cache folder, e.g. ``cache_dir() / "models" / f"sft-{key[:16]}"``.
        build: fills the empty temporary folder it is given; raise to abort (nothing is kept).
        key: when given, written to ``cache_key.txt`` in the folder (the full hash behind its name).
        ready: a file inside ``final`` that marks it complete; ``None`` means the folder existing
            is enough (it only ever appears whole).
        lock: the lock file; default ``<parent>/.<final name>.lock``.
        message: printed to stderr before a build starts.

    Returns:
        ``final`` as a Path, complete.

    Raises:
        Whatever ``build`` raises (the temporary folder is removed first).
    """
    final = Path(final)

    def complete() -> bool:
        return (final / ready).is_file() if ready else final.is_dir()

    if complete():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with locked(lock if lock is not None else final.parent / f".{final.name}.lock"):
        if complete():  # another process built it while we waited
            return final
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
        try:
            if message:
                print(message, file=sys.stderr, flush=True)
            build(tmp)
            if key is not None:
                (tmp / "cache_key.txt").write_text(key + "\n", encoding="utf-8")
            if final.exists():  # an incomplete leftover (``ready`` missing): replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final

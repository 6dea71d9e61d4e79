"""The dataset registry: dataset name -> files, each with canonical URL, sha256 and license.

``dataset_path("tinyshakespeare", "input.txt")`` returns a local path, looking in order at:

1. the mirror directory named by ``$LABKIT_DATA_MIRROR`` (laid out ``<dataset>/<file>``;
   CI and the Makefile point it at ``../shared/data`` when that folder exists);
2. the repo's git-ignored cache, ``<repo>/.cache/data/<dataset>/<file>``
   (``$LABKIT_CACHE_DIR`` overrides the ``.cache`` folder);
3. a download from the canonical URL into that cache, with a tqdm progress bar, verified
   by sha256 before it is moved into place.

Every file is checked against its sha256 once per process. A missing or corrupt file
raises :class:`DataError` naming the file and how to get it. The table itself lives in
``datasets.json`` next to this module (sources and licenses as published upstream).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import urllib.request
from functools import lru_cache
from pathlib import Path

from labkit.loader import REPO_ROOT

MIRROR_ENV = "LABKIT_DATA_MIRROR"
CACHE_ENV = "LABKIT_CACHE_DIR"
OFFLINE_ENV = "LABKIT_OFFLINE"
_VERIFIED: set[tuple[str, str]] = set()


class DataError(RuntimeError):
    """A dataset file is unknown, missing, or does not match its sha256."""


@lru_cache(maxsize=1)
def registry() -> dict[str, dict]:
    """The registry table: ``{dataset: {"license": str, "files": {file: info}}}``."""
    return json.loads((Path(__file__).with_name("datasets.json")).read_text(encoding="utf-8"))


def cache_dir() -> Path:
    """The root of the git-ignored cache (``<repo>/.cache`` unless ``$LABKIT_CACHE_DIR``)."""
    return Path(os.environ.get(CACHE_ENV) or REPO_ROOT / ".cache")


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_info(dataset: str, file: str) -> dict:
    """The registry entry of one file (url, sha256, bytes, source). Raises DataError."""
    reg = registry()
    if dataset not in reg:
        raise DataError(f"unknown dataset {dataset!r}; known: {', '.join(sorted(reg))}")
    files = reg[dataset]["files"]
    if file not in files:
        raise DataError(f"dataset {dataset!r} has no file {file!r}; it has: {', '.join(files)}")
    return files[file]


def _verify(path: Path, dataset: str, file: str, sha: str | None) -> Path:
    key = (str(path), sha or "")
    if sha and key not in _VERIFIED:
        got = sha256_of(path)
        if got != sha:
            raise DataError(
                f"{path} is corrupt: sha256 {got[:16]}... but {dataset}/{file} should be "
                f"{sha[:16]}...; delete it and run again to re-download, or restore the mirror copy"
            )
        _VERIFIED.add(key)
    return path


def _download(url: str, dest: Path, sha: str | None, size: int | None) -> None:
    from tqdm.auto import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            total = int(resp.headers.get("Content-Length") or size or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
                while block := resp.read(1 << 16):
                    out.write(block)
                    bar.update(len(block))
        if sha and (got := sha256_of(tmp)) != sha:
            raise DataError(f"download of {url} has sha256 {got[:16]}..., expected {sha[:16]}...")
        tmp.replace(dest)  # atomic: a half-written file never sits at the final path
    finally:
        tmp.unlink(missing_ok=True)


def dataset_path(dataset: str, file: str, download: bool = True) -> Path:
    """Local path of ``dataset``/``file``, fetching it into the cache if needed.

    Args:
        dataset: a registry name such as ``"tinyshakespeare"`` or ``"cranfield"``.
        file: a file of that dataset, such as ``"input.txt"``.
        download: allow step 3 (network). ``$LABKIT_OFFLINE=1`` also forbids it.

    Raises:
        DataError: unknown name; the file is in neither the mirror nor the cache and cannot
            be downloaded (the message says which file, from where, and where to put it);
            or the file on disk does not match its sha256.
    """
    info = file_info(dataset, file)
    sha = info.get("sha256")
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        cand = Path(mirror) / dataset / file
        if cand.is_file():
            return _verify(cand, dataset, file, sha)
    cached = cache_dir() / "data" / dataset / file
    if cached.is_file():
        return _verify(cached, dataset, file, sha)
    url = info.get("url")
    offline = os.environ.get(OFFLINE_ENV, "") not in ("", "0")
    where = f"${MIRROR_ENV}={mirror}" if mirror else f"${MIRROR_ENV} is not set"
    if not url or not download or offline:
        raise DataError(
            f"{dataset}/{file} not found ({where}; cache {cached} is empty) and downloading is "
            f"{'off' if url else 'impossible (no public URL)'}. Get it from {info.get('source')} "
            f"{'(' + url + ') ' if url else ''}and place it at {cached}, or point ${MIRROR_ENV} "
            "at a folder laid out <dataset>/<file> (the course's shared/data)."
        )
    try:
        _download(url, cached, sha, info.get("bytes"))
    except DataError:
        raise
    except OSError as e:
        raise DataError(
            f"could not download {dataset}/{file} from {url} ({e}); {where}. Download it by hand "
            f"to {cached}, or set ${MIRROR_ENV} to a folder that has {dataset}/{file}."
        ) from e
    _VERIFIED.add((str(cached), sha or ""))
    return cached


def read_text(dataset: str, file: str) -> str:
    """The file decoded as UTF-8 (invalid bytes replaced, never an exception)."""
    return dataset_path(dataset, file).read_bytes().decode("utf-8", errors="replace")


def copy_to(dataset: str, file: str, dest: Path) -> Path:
    """Copy a dataset file to ``dest`` (used to build tool caches such as tiktoken's)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.is_file() or sha256_of(dest) != file_info(dataset, file).get("sha256"):
        shutil.copyfile(dataset_path(dataset, file), dest)
    return dest

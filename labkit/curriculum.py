"""The curriculum's own small trained model: where it is, and building it once when it is not.

``curriculum_model_path("main")`` returns ``<repo>/.cache/models/main-<key>/`` (the ``.cache`` folder
follows ``$LABKIT_CACHE_DIR``). The key is a sha256 over everything that determines the model:

* the producing code: lab 4.3 and 4.4 ``solution.py`` (positions, MiniGPT), lab 5.1 and 5.2
  ``solution.py`` (BPE, training loop) and lab 5.2's ``curriculum_model.py``;
* the model's entry in lab 5.2's ``curriculum_models.json`` (sizes, steps, seed, threads) and the
  shared tokenizer settings;
* the sha256 of every data file it is trained on (from ``labkit/datasets.json``);
* the versions of torch, transformers and tokenizers (they write the files).

Change any of these and the next call builds a new folder; nothing stale is ever returned (old
folders are left in place, since another checkout may still use them; ``make clean`` removes them). A
missing folder is built by running ``curriculum_model.py`` in a subprocess (its progress goes to
this process's stderr), into a temporary folder that is renamed into place only when complete,
under an exclusive ``fcntl`` lock so two processes (pytest workers, two terminals) never build it
twice: the second waits, then finds the folder. ``make model`` builds ``main`` and ``draft``.

The folder holds ``minigpt.pt`` + ``tokenizer/`` (this curriculum's formats), ``hf/`` (a
``save_pretrained`` ``LlamaForCausalLM`` + tokenizer with a chat template), ``data/``,
``metrics.json`` and ``samples.txt``; lab 5.2's README describes them.

Only the standard library is used here, so ``import labkit`` stays cheap.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from labkit.cache import build_once, locked
from labkit.data import cache_dir, file_info
from labkit.loader import REPO_ROOT

LAB = "phase-05-training-small-llms/lab-02-nano-gpt"
BUILDER = f"{LAB}/curriculum_model.py"
CONFIG = f"{LAB}/curriculum_models.json"
CODE_FILES = (
    "phase-04-attention-transformers/lab-03-positional-encodings/solution.py",
    "phase-04-attention-transformers/lab-04-mini-transformer/solution.py",
    "phase-05-training-small-llms/lab-01-bpe-tokenizer/solution.py",
    f"{LAB}/solution.py",
    BUILDER,
)
LIBRARIES = ("torch", "transformers", "tokenizers", "numpy")
NO_BUILD_ENV = "LABKIT_NO_MODEL_BUILD"

__all__ = ["CurriculumModelError", "cache_key", "curriculum_model_path", "model_names"]


class CurriculumModelError(RuntimeError):
    """The curriculum model is unknown, could not be built, or building is switched off."""


def _config(root: Path) -> dict:
    path = root / CONFIG
    if not path.is_file():
        raise CurriculumModelError(f"{path} is missing: the curriculum model is defined by lab 5.2")
    return json.loads(path.read_text(encoding="utf-8"))


def model_names(root: Path = REPO_ROOT) -> list[str]:
    """Names of the curriculum models (keys of ``curriculum_models.json``: ``main``, ``draft``)."""
    return sorted(_config(root)["models"])


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def cache_key(name: str = "main", root: Path = REPO_ROOT) -> str:
    """The sha256 (hex) that names model ``name``'s folder; see the module docstring for its inputs.

    Raises:
        CurriculumModelError: unknown name, or a producing file is missing.
    """
    cfg = _config(root)
    if name not in cfg["models"]:
        raise CurriculumModelError(f"unknown curriculum model {name!r}; known: {sorted(cfg['models'])}")
    h = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        h.update(label.encode() + b"\0" + len(data).to_bytes(8, "little") + data)

    for rel in CODE_FILES:
        path = root / rel
        if not path.is_file():
            raise CurriculumModelError(f"{rel} is missing: it is part of the curriculum model's recipe")
        add(rel, path.read_bytes())
    tok = cfg["tokenizer"]
    add("tokenizer", json.dumps(tok, sort_keys=True).encode())
    add("model", json.dumps(cfg["models"][name], sort_keys=True).encode())
    for file in [*tok["train_files"], tok["val_file"]]:
        add(f"data:{file}", str(file_info(tok["dataset"], file).get("sha256")).encode())
    for lib in LIBRARIES:
        add(f"lib:{lib}", _version(lib).encode())
    return h.hexdigest()


_locked = locked  # the name earlier labs import


def _builder_command(name: str, out: Path, root: Path) -> list[str]:
    return [sys.executable, str(root / BUILDER), "--name", name, "--out", str(out)]


def curriculum_model_path(name: str = "main", *, build: bool | None = None, root: Path = REPO_ROOT) -> Path:
    """Folder of curriculum model ``name`` (``"main"`` or ``"draft"``), building it if missing.

    Args:
        name: a model of lab 5.2's ``curriculum_models.json``.
        build: build a missing model (minutes, once). ``None`` means yes unless
            ``$LABKIT_NO_MODEL_BUILD=1``.
        root: the repository root (tests point it at a copy).

    Returns:
        ``<cache>/models/<name>-<key[:16]>/``, complete (it only ever appears whole).

    Raises:
        CurriculumModelError: unknown name, a missing recipe file, building switched off, or
            the build failed (its exit code; its output went to stderr).
    """
    key = cache_key(name, root)
    models = cache_dir() / "models"
    final = models / f"{name}-{key[:16]}"
    if final.is_dir():
        return final
    if build is None:
        build = os.environ.get(NO_BUILD_ENV, "") in ("", "0")
    if not build:
        raise CurriculumModelError(f"curriculum model {name!r} is not built ({final} is missing) and building "
                                   f"is off (${NO_BUILD_ENV}); run `make model`")

    def run_builder(tmp: Path) -> None:
        env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", MPLBACKEND="Agg")
        t0 = time.perf_counter()
        proc = subprocess.run(_builder_command(name, tmp, root), cwd=root, env=env,
                              stdout=sys.stderr, stderr=sys.stderr)
        if proc.returncode != 0:
            raise CurriculumModelError(f"building curriculum model {name!r} failed (exit {proc.returncode}); "
                                       f"run `python {BUILDER} --name {name} --out /tmp/x` to see why")
        print(f"[labkit] curriculum model {name!r} built in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr, flush=True)

    return build_once(final, run_builder, key=key, lock=models / f".{name}.lock",
                      message=f"[labkit] building curriculum model {name!r} into {final} (a few minutes, once) ...")


def main(argv: list[str] | None = None) -> int:
    """``python -m labkit.curriculum [NAME ...]``: build (if needed) and print each model's folder."""
    names = (argv if argv is not None else sys.argv[1:]) or model_names()
    for n in names:
        print(curriculum_model_path(n))
    return 0


if __name__ == "__main__":
    sys.exit(main())

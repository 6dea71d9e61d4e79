"""Import a lab's ``solution.py`` or ``lab.py`` by path, and resolve short lab names.

Every lab folder is standalone (no package ``__init__``), so modules are loaded with
``importlib.util.spec_from_file_location`` under a unique name. Later labs reuse earlier
solutions this way, for example::

    gpt = load_lab("phase-04-attention-transformers/lab-04-mini-transformer")
    model = gpt.MiniGPT(gpt.GPTConfig(...))
"""
from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("solution", "lab")


def lab_dirs(root: Path = REPO_ROOT) -> list[Path]:
    """Every folder that keeps the lab contract under ``root``: ``phase-*/lab-*`` and
    ``phase-11-capstone/capstone-*`` sorted, then the drills under ``interview-prep/`` (any folder
    there holding a ``solution.py``), sorted."""
    labs = [p for p in root.glob("phase-*/lab-*") if p.is_dir()]
    labs += [p for p in root.glob("phase-11-capstone/capstone-*") if p.is_dir()]
    drills = sorted({p.parent for p in root.glob("interview-prep/**/solution.py")})
    # phases first (in curriculum order), drills last: a drill that needs the curriculum model then
    # finds it built by Phase 5 instead of building it itself
    return sorted(labs) + drills


def _is_lab_dir(path: Path, root: Path) -> bool:
    return path.is_dir() and path.resolve() in {p.resolve() for p in lab_dirs(root)}


def resolve_lab(name: str | os.PathLike, root: Path = REPO_ROOT) -> Path:
    """Turn a lab name into its folder.

    Accepts a path (absolute or relative to the repo root, with or without a trailing
    file name), ``"1.1"`` (phase 1, lab 1) or ``"phase-01/lab-01"`` (prefixes of the
    folder names).

    Raises:
        FileNotFoundError: when no lab or more than one lab matches.
    """
    text = str(name).strip().rstrip("/")
    if not text:
        raise FileNotFoundError("empty lab name: use e.g. LAB=1.1 or LAB=phase-01/lab-01")
    for cand in (root / text, Path(text)):
        if cand.is_file():
            cand = cand.parent
        if cand.is_dir() and (cand.name.startswith("lab-") or _is_lab_dir(cand, root)):
            return cand.resolve()
    m = re.fullmatch(r"(\d+)[./](\d+)", text)
    if m:
        phase_prefix, lab_prefix = f"phase-{int(m[1]):02d}", f"lab-{int(m[2]):02d}"
    else:
        parts = text.split("/")
        if len(parts) != 2:
            raise FileNotFoundError(f"cannot read lab name {text!r}: use 1.1 or phase-01/lab-01")
        phase_prefix, lab_prefix = parts
    # "11.3" also names phase-11-capstone/capstone-03-...
    prefixes = (lab_prefix, "capstone-" + lab_prefix[4:]) if m else (lab_prefix,)
    hits = [
        p for p in lab_dirs(root)
        if p.parent.name.startswith(phase_prefix) and p.name.startswith(prefixes)
    ]
    if len(hits) != 1:
        known = ", ".join(str(p.relative_to(root)) for p in lab_dirs(root)) or "none yet"
        what = "no lab" if not hits else f"{len(hits)} labs"
        raise FileNotFoundError(f"{what} matches {text!r}; labs: {known}")
    return hits[0].resolve()


def load_lab(name: str | os.PathLike, target: str | None = None) -> ModuleType:
    """Import ``solution.py`` (default) or ``lab.py`` from a lab folder.

    Args:
        name: anything :func:`resolve_lab` accepts, or a path to a ``.py`` file.
        target: ``"solution"`` or ``"lab"``; ``None`` means ``"solution"``. (The tests'
            ``lab`` fixture reads ``LAB_TARGET`` instead; reuse across labs always wants
            the reference solution.)

    The module is cached in ``sys.modules`` under a name derived from its path, so two
    labs importing the same earlier solution share one module object.

    Raises:
        FileNotFoundError: the lab or file does not exist.
        ValueError: ``target`` is not one of ``solution``/``lab``.
    """
    path = Path(name)
    if path.suffix == ".py" and path.is_file():
        file = path.resolve()
    else:
        target = target or "solution"
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        file = resolve_lab(name) / f"{target}.py"
        if not file.is_file():
            raise FileNotFoundError(f"{file} does not exist")
    try:
        rel = file.relative_to(REPO_ROOT)
    except ValueError:
        rel = Path(file.name)
    mod_name = "labs." + re.sub(r"\W", "_", str(rel.with_suffix("")))
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[mod_name]
        raise
    return module


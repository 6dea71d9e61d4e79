"""Generate every ``lab.py`` from its ``solution.py``, and the root ``requirements.txt``.

In ``solution.py`` the learner's parts are fenced::

    def encode(self, text: str) -> list[int]:
        \"\"\"...docstring stays in lab.py...\"\"\"
        # BEGIN SOLUTION split on the GPT-2 pattern, then look each piece up (easy, ~10 min)
        ...reference code...
        # END SOLUTION

and ``lab.py`` gets, at the indentation of the ``BEGIN`` line::

        # TODO(1): split on the GPT-2 pattern, then look each piece up (easy, ~10 min)
        raise NotImplementedError("TODO(1)")

TODOs are numbered 1, 2, ... in file order. Everything outside the fences is copied
verbatim, so ``diff lab.py solution.py`` shows exactly the TODOs.

Usage::

    python -m labkit.labgen            # write every lab.py and requirements.txt
    python -m labkit.labgen --check    # exit 1 if anything committed is out of date
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from labkit.loader import REPO_ROOT, lab_dirs, resolve_lab

BEGIN = re.compile(r"^(?P<indent>[ \t]*)# BEGIN SOLUTION\b[ \t:]*(?P<hint>.*)$")
END = re.compile(r"^[ \t]*# END SOLUTION\b")
HEADER = "# Generated from solution.py by `make labs` (labkit/labgen.py). Fill in the TODOs.\n"


class FenceError(ValueError):
    """A ``# BEGIN SOLUTION`` / ``# END SOLUTION`` fence is malformed."""


def make_lab_source(solution_src: str, filename: str = "solution.py") -> str:
    """Return the ``lab.py`` text for a ``solution.py`` text.

    Raises:
        FenceError: unbalanced or nested fences, a fence at module level (the ``raise``
            would break ``import``), an empty fence, or a file with no fence at all.
    """
    out: list[str] = []
    k = 0
    inside: tuple[int, str] | None = None  # (line number, indent) of the open BEGIN
    body = 0
    for no, line in enumerate(solution_src.splitlines(keepends=True), start=1):
        m = BEGIN.match(line)
        if m:
            if inside:
                raise FenceError(f"{filename}:{no}: BEGIN SOLUTION inside the fence opened at line {inside[0]}")
            indent = m["indent"]
            if not indent:
                raise FenceError(f"{filename}:{no}: fences must be inside a function body, not at module level")
            k += 1
            hint = m["hint"].strip() or "implement this part"
            out.append(f"{indent}# TODO({k}): {hint}\n")
            out.append(f'{indent}raise NotImplementedError("TODO({k})")\n')
            inside, body = (no, indent), 0
        elif END.match(line):
            if not inside:
                raise FenceError(f"{filename}:{no}: END SOLUTION without BEGIN")
            if body == 0:
                raise FenceError(f"{filename}:{no}: empty fence opened at line {inside[0]}")
            inside = None
        elif inside:
            body += 1
        else:
            out.append(line)
    if inside:
        raise FenceError(f"{filename}:{inside[0]}: BEGIN SOLUTION never closed")
    if k == 0:
        raise FenceError(f"{filename}: no '# BEGIN SOLUTION' fence, so lab.py would have no TODO")
    return HEADER + "".join(out)


def todo_hints(lab_src: str) -> dict[int, str]:
    """``{k: hint}`` for every ``# TODO(k): hint`` line in a lab.py text."""
    return {int(m[1]): m[2].strip() for m in re.finditer(r"#\s*TODO\((\d+)\):\s*(.*)", lab_src)}


# Tools the repo itself runs (lint), not imported by any lab.
DEV_PINS = ("ruff==0.17.5",)
REQ_HEADER = (
    "# The union of every lab's requirements.txt, written by `make labs` (labkit/labgen.py).\n"
    "# Install torch first (see the Makefile's setup target): torch==2.13.0 is a CPU wheel here.\n"
)


def union_requirements(root: Path = REPO_ROOT) -> str:
    """The root requirements.txt text: every lab's pins, one line per package, sorted.

    Raises:
        ValueError: a package pinned to two different versions in two labs, or a line
            that is not ``name==version``.
    """
    pins: dict[str, tuple[str, str]] = {p.split("==")[0]: (p, "labkit/labgen.py") for p in DEV_PINS}
    for lab in lab_dirs(root):
        req = lab / "requirements.txt"
        if not req.is_file():
            continue
        for raw in req.read_text(encoding="utf-8").splitlines():
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            m = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==(\S+)", line)
            if not m:
                raise ValueError(f"{req}: {raw!r} is not pinned as name==version")
            key = m[1].lower().replace("_", "-")
            if key in pins and pins[key][0] != line:
                raise ValueError(f"{key} pinned twice differently: {pins[key][0]} ({pins[key][1]}) vs {line} ({req})")
            pins[key] = (line, str(req.relative_to(root)))
    return REQ_HEADER + "".join(line + "\n" for _, (line, _) in sorted(pins.items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Generate lab.py files from solution.py files.")
    ap.add_argument("--check", action="store_true", help="only check; exit 1 when out of date")
    ap.add_argument("labs", nargs="*", help="only these labs (1.1, a path, ...); default: all, "
                    "plus the root requirements.txt")
    args = ap.parse_args(argv)
    stale: list[str] = []
    labs = [resolve_lab(x) for x in args.labs] if args.labs else lab_dirs()
    for lab in labs:
        sol = lab / "solution.py"
        if not sol.is_file():
            continue
        want = make_lab_source(sol.read_text(encoding="utf-8"), str(sol.relative_to(REPO_ROOT)))
        dest = lab / "lab.py"
        have = dest.read_text(encoding="utf-8") if dest.is_file() else None
        if have != want:
            stale.append(str(dest.relative_to(REPO_ROOT)))
            if not args.check:
                dest.write_text(want, encoding="utf-8")
    req = REPO_ROOT / "requirements.txt"
    want_req = req.read_text(encoding="utf-8") if args.labs and req.is_file() else union_requirements()
    if (req.read_text(encoding="utf-8") if req.is_file() else None) != want_req:
        stale.append("requirements.txt")
        if not args.check:
            req.write_text(want_req, encoding="utf-8")
    if args.check and stale:
        print("out of date (run `make labs` and commit):\n  " + "\n  ".join(stale))
        return 1
    verb = "up to date" if args.check else f"wrote {len(stale)} file(s)"
    print(f"labgen: {len(labs)} labs, {verb}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

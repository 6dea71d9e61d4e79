"""Capstone 7: an agentic coding assistant, evaluated on real bug-fix tasks (QuixBugs).

A coding agent is a ReAct loop (Phase 7 lab 4's ``run_agent``, imported by path) whose tools act
on a *working copy* of a repository:

- ``list_files`` / ``read_file`` / ``search`` (a regex grep) - read-only, confined to the copy:
  absolute paths, ``..`` and symlinks that resolve outside the copy are refused;
- ``apply_patch`` - a unified diff, applied by **our own applier** (hunks located by their
  context with an offset search, no fuzz, all-or-nothing across files), checked in the tests
  against GNU ``patch`` and ``git apply`` on the same diffs;
- ``run_tests`` - pytest in a **sandbox**: a subprocess in its own session with a wall-clock
  timeout (the whole process group is SIGKILLed), ``RLIMIT_AS`` / ``RLIMIT_CPU`` /
  ``RLIMIT_FSIZE``, an output cap, no network (a fresh network namespace through
  ``unshare -rn`` when the kernel allows it, plus a Python audit hook that refuses sockets,
  process creation and file access outside the copy: ``sandbox_boot.py``);
- ``final_answer`` ends the episode.

The policy is anything that maps the message history to an assistant message: a **scripted
policy** (reads the file, applies the known fix as a diff, reruns the tests) that proves the
plumbing end to end, or **any OpenAI-compatible model** through the ``openai`` client (Phase 7's
``ChatCompletionsPolicy``). Success on a task means its **held-out tests** pass in a fresh copy
that holds only the agent's final program: the agent saw half of the JSON test cases.

Run:  python solution.py             self-test: attack list, patch cross-check, 3 tasks (~10 s)
      python solution.py --eval      small mode: every QuixBugs task with the scripted, the no-op
                                     and the LLM policy (curriculum model, 3 tasks) (~2-3 min)
      python solution.py --eval --llm-base-url URL --llm-model NAME --llm-tasks 40   (full mode)
"""
from __future__ import annotations

import argparse
import difflib
import functools
import os
import re
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from labkit import dataset_path, load_lab
from labkit.data import registry

HERE = Path(__file__).resolve().parent
BOOT = HERE / "sandbox_boot.py"

__all__ = [
    "BugTask", "FilePatch", "Hunk", "Limits", "PatchError", "PathEscapeError", "RunResult", "TaskResult",
    "Workspace", "apply_hunks", "apply_patch", "build_coding_registry", "evaluate_program", "load_quixbugs",
    "make_unified_diff", "noop_policy", "oracle_policy", "parse_unified_diff", "run_sandboxed", "solve_task",
]


@functools.cache
def p7() -> Any:
    """Phase 7 lab 4 (tools, registry, ReAct loop, scripted and OpenAI policies), by path."""
    return load_lab("phase-07-retrieval-rag-agents/lab-04-agents-tools")


ToolError = p7().ToolError


class PathEscapeError(ToolError):
    """A path that would leave the working copy (absolute, ``..``, or a symlink pointing out)."""


class PatchError(ToolError):
    """A diff that does not parse or does not apply; nothing was written."""


# =============================================================================================
# 1. the working copy: every tool path goes through Workspace.resolve
# =============================================================================================
class Workspace:
    """A temporary working copy. ``root`` is a real (symlink-free) absolute path."""

    def __init__(self, root: str | os.PathLike):
        real = Path(os.path.realpath(root))
        if not real.is_dir():
            raise ValueError(f"workspace root {root!s} is not a directory")
        self.root = real

    @classmethod
    def create(cls, files: dict[str, str], prefix: str = "agent-ws-") -> Workspace:
        """A fresh temp directory holding ``files`` (relative path -> text)."""
        ws = cls(tempfile.mkdtemp(prefix=prefix))
        try:
            for rel, text in files.items():
                p = ws.resolve(rel)
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(text, encoding="utf-8")
        except BaseException:
            ws.cleanup()
            raise
        return ws

    def resolve(self, rel: str) -> Path:
        """The real path of ``rel`` inside the copy.

        Raises:
            PathEscapeError: ``rel`` is empty, not a string, holds a NUL byte, is absolute
                (``/etc/passwd``, ``~/x``), has a ``..`` component, or resolves (through a
                symlink, at any depth) to a place outside ``root``.
        """
        # BEGIN SOLUTION refuse non-str / empty / NUL; refuse absolute (os.path.isabs) and "~..." ; refuse any ".." in Path(rel).parts; real = os.path.realpath(root / rel); it must be root itself or have root among its parents, else PathEscapeError naming the symlink escape; return Path(real) (easy, ~10 min)
        if not isinstance(rel, str) or not rel.strip():
            raise PathEscapeError(f"a path must be a non-empty string, got {rel!r}")
        if "\x00" in rel:
            raise PathEscapeError("a path must not contain NUL bytes")
        if os.path.isabs(rel) or rel.startswith("~"):
            raise PathEscapeError(f"absolute path {rel!r} refused: paths are relative to the working copy")
        if ".." in Path(rel).parts:
            raise PathEscapeError(f"path {rel!r} refused: '..' may not leave the working copy")
        real = Path(os.path.realpath(self.root / rel))
        if real != self.root and self.root not in real.parents:
            raise PathEscapeError(f"path {rel!r} resolves outside the working copy (symlink escape to {real})")
        return real
        # END SOLUTION

    def rel(self, p: Path) -> str:
        return str(p.relative_to(self.root)) if p != self.root else "."

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cleanup()


_SKIP_DIRS = {"__pycache__", ".tmp", ".git", ".pytest_cache"}


def list_files(ws: Workspace, path: str = ".", max_entries: int = 200) -> str:
    """Every file under ``path`` (relative paths, sorted; symlinks shown as ``name@``, not followed)."""
    base = ws.resolve(path)
    if base.is_file():
        return ws.rel(base)
    if not base.is_dir():
        raise ToolError(f"no such directory: {path}")
    out = []
    for d, dirs, files in os.walk(base, followlinks=False):
        dirs[:] = sorted(x for x in dirs if x not in _SKIP_DIRS and not os.path.islink(os.path.join(d, x)))
        for name in sorted(files) + sorted(x for x in os.listdir(d) if os.path.islink(os.path.join(d, x))
                                           and os.path.isdir(os.path.join(d, x))):
            full = Path(d) / name
            out.append(str(full.relative_to(ws.root)) + ("@" if full.is_symlink() else ""))
    out = sorted(set(out))
    more = f"\n... {len(out) - max_entries} more" if len(out) > max_entries else ""
    return "\n".join(out[:max_entries]) + more


def read_file(ws: Workspace, path: str, start: int = 1, end: int | None = None, max_chars: int = 6000) -> str:
    """Lines ``start..end`` (1-based, inclusive) of a text file, each prefixed ``'{n:4d}| '``."""
    p = ws.resolve(path)
    if not p.is_file():
        raise ToolError(f"no such file: {path}")
    if p.stat().st_size > 1_000_000:
        raise ToolError(f"{path} is larger than 1 MB")
    try:
        lines = p.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError:
        raise ToolError(f"{path} is not UTF-8 text") from None
    if lines and lines[-1] == "":
        lines.pop()
    end = len(lines) if end is None else min(end, len(lines))
    text = "\n".join(f"{i:4d}| {lines[i - 1]}" for i in range(max(1, start), end + 1))
    return text if len(text) <= max_chars else text[:max_chars] + "\n... (truncated)"


def search(ws: Workspace, pattern: str, path: str = ".", max_hits: int = 50) -> str:
    """``file:line: text`` for every line under ``path`` matching the regex ``pattern``."""
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise ToolError(f"bad regex {pattern!r}: {e}") from None
    listing = list_files(ws, path, max_entries=10_000).split("\n")
    hits = []
    for rel in listing:
        if not rel or rel.endswith("@") or rel.startswith("..."):
            continue
        try:
            lines = ws.resolve(rel).read_text(encoding="utf-8").split("\n")
        except (UnicodeDecodeError, OSError, PathEscapeError):
            continue
        for i, line in enumerate(lines, 1):
            if rx.search(line[:1000]):
                hits.append(f"{rel}:{i}: {line[:200]}")
                if len(hits) >= max_hits:
                    return "\n".join(hits) + "\n... (more hits)"
    return "\n".join(hits) if hits else "no matches"


# =============================================================================================
# 2. unified diffs: parse and apply (our own applier; GNU patch / git apply are the references)
# =============================================================================================
NO_NEWLINE = "\\ No newline at end of file"


@dataclass
class Hunk:
    """``lines``: (tag, text) with tag in ``' '``, ``'-'``, ``'+'``; ``text`` ends with ``\\n``
    unless the line is the last of a file without a final newline."""

    old_start: int
    old_len: int
    new_start: int
    new_len: int
    lines: list[tuple[str, str]] = field(default_factory=list)

    def old_block(self) -> list[str]:
        return [t for tag, t in self.lines if tag in " -"]

    def new_block(self) -> list[str]:
        return [t for tag, t in self.lines if tag in " +"]


@dataclass
class FilePatch:
    """One file's part of a diff. ``old_path`` None: create; ``new_path`` None: delete."""

    old_path: str | None
    new_path: str | None
    hunks: list[Hunk]

    @property
    def path(self) -> str:
        return self.new_path if self.new_path is not None else self.old_path  # type: ignore[return-value]


def split_lines(text: str) -> list[str]:
    """Split on ``\\n`` only (``str.splitlines`` would also split on ``\\x0b``, ``\\x1c``, ``\\u2028``...),
    keeping the ends; the last element lacks ``\\n`` when the text does not end with one."""
    parts = text.split("\n")
    out = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        out.append(parts[-1])
    return out


_HUNK_RE = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_UNSUPPORTED = ("GIT binary patch", "Binary files ", "rename from ", "copy from ", "old mode ", "new mode ",
                "deleted file mode 120000", "new file mode 120000")


def _header_path(line: str, marker: str) -> str | None:
    name = line[len(marker):].rstrip("\n").split("\t")[0].rstrip()
    if name.startswith('"'):
        raise PatchError(f"quoted file names are not supported: {name}")
    return None if name == "/dev/null" else name


def parse_unified_diff(text: str) -> list[FilePatch]:
    """Parse a (possibly multi-file) unified diff, as written by ``diff -u``, ``git diff`` or difflib.

    Headers ``--- old`` / ``+++ new`` (a tab and a timestamp may follow the name; ``/dev/null``
    means create / delete), then hunks ``@@ -a,b +c,d @@`` (a missing length means 1) whose
    lines start with ``' '``, ``'-'`` or ``'+'``; an empty line inside a hunk counts as an empty
    context line; ``\\ No newline at end of file`` strips the newline of the line before it.
    Git's ``a/`` and ``b/`` prefixes are removed (like ``patch -p1``) when both names carry them.
    Text outside the file sections (``diff --git``, ``index``, prose) is ignored.

    Raises:
        PatchError: no file section; a ``---`` without ``+++``; a bad or missing hunk header;
            a hunk with fewer or more lines than its header says; a binary / rename / mode /
            symlink diff (unsupported).
    """
    if not isinstance(text, str):
        raise PatchError(f"a diff must be a string, got {type(text).__name__}")
    # BEGIN SOLUTION walk split_lines(text) with an index: refuse _UNSUPPORTED lines; a '--- ' line followed by '+++ ' starts a FilePatch (_header_path); then read '@@' headers with _HUNK_RE (lengths default 1) and exactly old_len ' '/'-' lines and new_len ' '/'+' lines ('\n' alone = context; a NO_NEWLINE line strips '\n' from the previous line's text, also right after the hunk); a wrong count -> PatchError; a file with no hunk (unless create/delete of an empty file) -> PatchError; finally strip 'a/' 'b/' when both (non-None) names have them; no file at all -> PatchError (hard, ~40 min)
    lines = split_lines(text)
    patches: list[FilePatch] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith(_UNSUPPORTED):
            raise PatchError(f"unsupported diff feature: {line.strip()}")
        if not (line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ ")):
            if line.startswith("--- "):
                raise PatchError(f"line {i + 1}: '---' header without a '+++' line after it")
            i += 1
            continue
        fp = FilePatch(_header_path(line, "--- "), _header_path(lines[i + 1], "+++ "), [])
        if fp.old_path is None and fp.new_path is None:
            raise PatchError(f"line {i + 1}: both file names are /dev/null")
        i += 2
        while i < len(lines) and lines[i].startswith("@@"):
            m = _HUNK_RE.match(lines[i])
            if not m:
                raise PatchError(f"line {i + 1}: bad hunk header {lines[i].strip()!r}")
            a, b, c, d = m.groups()
            h = Hunk(int(a), 1 if b is None else int(b), int(c), 1 if d is None else int(d))
            i += 1
            n_old = n_new = 0
            while n_old < h.old_len or n_new < h.new_len:
                if i >= len(lines):
                    raise PatchError(f"hunk @@ -{h.old_start} ends early: expected {h.old_len - n_old} more old "
                                     f"and {h.new_len - n_new} more new lines")
                ln = lines[i]
                if ln.startswith(NO_NEWLINE):
                    if not h.lines:
                        raise PatchError(f"line {i + 1}: '{NO_NEWLINE}' before any hunk line")
                    tag, t = h.lines[-1]
                    h.lines[-1] = (tag, t.removesuffix("\n"))
                    i += 1
                    continue
                tag, body = (" ", "\n") if ln in ("\n", "") else (ln[0], ln[1:])
                if tag not in " -+":
                    raise PatchError(f"line {i + 1}: hunk @@ -{h.old_start} has {h.old_len - n_old} old / "
                                     f"{h.new_len - n_new} new lines still to come, got {ln.rstrip()!r}")
                n_old += tag in " -"
                n_new += tag in " +"
                if n_old > h.old_len or n_new > h.new_len:
                    raise PatchError(f"line {i + 1}: hunk @@ -{h.old_start} has more lines than its header says")
                h.lines.append((tag, body))
                i += 1
            while i < len(lines) and lines[i].startswith(NO_NEWLINE):
                tag, t = h.lines[-1]
                h.lines[-1] = (tag, t.removesuffix("\n"))
                i += 1
            nxt = lines[i] if i < len(lines) else ""
            if nxt[:1] in ("+", "-", " ") and nxt != "-- \n" and not (
                    nxt.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ ")):
                raise PatchError(f"line {i + 1}: hunk @@ -{h.old_start} has more lines than its header says")
            fp.hunks.append(h)
        if not fp.hunks and fp.old_path is not None and fp.new_path is not None:
            raise PatchError(f"no hunk for {fp.path} (expected '@@ -a,b +c,d @@' after the headers)")
        patches.append(fp)
    if not patches:
        raise PatchError("no file section found: a unified diff starts with '--- a/<path>' and '+++ b/<path>'")
    for fp in patches:
        names = [n for n in (fp.old_path, fp.new_path) if n is not None]
        old_ok = fp.old_path is None or fp.old_path.startswith("a/")
        new_ok = fp.new_path is None or fp.new_path.startswith("b/")
        if names and old_ok and new_ok:
            fp.old_path = fp.old_path[2:] if fp.old_path else None
            fp.new_path = fp.new_path[2:] if fp.new_path else None
    return patches
    # END SOLUTION


def _find_block(cur: list[str], block: list[str], want: int, floor: int) -> int | None:
    """The index nearest ``want`` (ties: forward first, like GNU patch) where ``block`` occurs in
    ``cur`` at or after ``floor``; None if nowhere."""
    last = len(cur) - len(block)
    if last < floor:
        return None
    want = min(max(want, floor), last)
    for d in range(0, max(want - floor, last - want) + 1):
        for pos in (want + d, want - d) if d else (want,):
            if floor <= pos <= last and cur[pos:pos + len(block)] == block:
                return pos
    return None


def apply_hunks(old_lines: list[str], hunks: Sequence[Hunk], path: str = "<file>") -> list[str]:
    """Apply ``hunks`` in order to ``old_lines`` (from :func:`split_lines`); returns the new lines.

    Each hunk's old block (context + removed lines) is looked for at its header's position plus
    the offset the previous hunks produced, then at growing distances (forward first), never
    before the end of the previous hunk. No fuzz: every context line must match exactly.
    A hunk with ``old_len == 0`` inserts after line ``old_start``.

    Raises:
        PatchError: a hunk's old block is nowhere to be found (names the hunk and the first
            line it expected), i.e. the diff conflicts with the file.
    """
    # BEGIN SOLUTION cur = list(old_lines); shift = floor = 0; per hunk: old, new = blocks; orig = old_start - 1 if old_len else old_start; pos = _find_block(cur, old, orig + shift, floor), None -> PatchError naming path, hunk number, old_start and old[0]; cur[pos:pos+len(old)] = new; shift = pos - orig + len(new) - len(old); floor = pos + len(new); return cur (medium, ~20 min)
    cur = list(old_lines)
    shift = floor = 0
    for k, h in enumerate(hunks, 1):
        old, new = h.old_block(), h.new_block()
        orig = h.old_start - 1 if h.old_len else h.old_start
        pos = _find_block(cur, old, orig + shift, floor)
        if pos is None:
            first = old[0].rstrip("\n") if old else ""
            raise PatchError(f"{path}: hunk #{k} (@@ -{h.old_start},{h.old_len}) does not apply: its context "
                             f"starting {first!r} is not in the file (the diff conflicts with the current text; "
                             "read the file again and rebuild the diff)")
        cur[pos:pos + len(old)] = new
        shift = pos - orig + len(new) - len(old)
        floor = pos + len(new)
    return cur
    # END SOLUTION


def apply_patch(ws: Workspace, diff: str) -> str:
    """Apply a unified diff to the working copy, all files or none.

    Every target goes through :meth:`Workspace.resolve` (so ``../x``, ``/etc/x`` or a symlink
    out are refused before anything is read). A created file must not exist; a patched or
    deleted file must; a deleted file's hunks must remove all of it.

    Returns:
        A one-line summary per file (``patched python_programs/gcd.py: 1 hunk(s)``).

    Raises:
        PatchError / PathEscapeError, with nothing written.
    """
    patches = parse_unified_diff(diff)
    state: dict[Path, list[str] | None] = {}  # new contents (None = delete), applied only at the end
    summary = []
    for fp in patches:
        for name in (fp.old_path, fp.new_path):
            if name is not None:
                ws.resolve(name)
        target = ws.resolve(fp.path)
        if target in state:
            current = state[target]
            exists = current is not None
        else:
            exists = target.exists()
            if exists and (target.is_dir() or target.is_symlink()):
                raise PatchError(f"{fp.path} is not a regular file")
            try:
                current = split_lines(target.read_text(encoding="utf-8")) if exists else None
            except UnicodeDecodeError:
                raise PatchError(f"{fp.path} is not UTF-8 text") from None
        if fp.old_path is None and exists:
            raise PatchError(f"{fp.path} already exists (the diff creates it from /dev/null)")
        if fp.old_path is not None and not exists:
            raise PatchError(f"{fp.path} does not exist in the working copy")
        new = apply_hunks(current or [], fp.hunks, fp.path)
        if fp.new_path is None:
            if new:
                raise PatchError(f"{fp.path}: the deletion diff does not remove the whole file")
            state[target] = None
            summary.append(f"deleted {fp.path}")
        else:
            state[target] = new
            verb = "created" if fp.old_path is None else "patched"
            summary.append(f"{verb} {fp.path}: {len(fp.hunks)} hunk(s)")
    for target, lines in state.items():
        if lines is None:
            target.unlink()
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("".join(lines), encoding="utf-8")
    return "\n".join(summary)


def make_unified_diff(old: str, new: str, path: str, context: int = 3) -> str:
    """A git-style (``a/`` ``b/``) unified diff from ``old`` to ``new`` (difflib), with the
    ``\\ No newline at end of file`` markers difflib leaves out. ``old=""`` with
    ``create=True`` semantics are not needed here: the tasks only edit existing files."""
    out = []
    for line in difflib.unified_diff(split_lines(old), split_lines(new), f"a/{path}", f"b/{path}", n=context):
        out.append(line if line.endswith("\n") else line + "\n" + NO_NEWLINE + "\n")
    return "".join(out)


# =============================================================================================
# 3. the sandbox: run Python (pytest) in the working copy under limits
# =============================================================================================
@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed run.

    ``timeout_s``: wall clock, then SIGKILL to the whole process group. ``memory_bytes``:
    RLIMIT_AS (address space). ``cpu_s``: RLIMIT_CPU (SIGXCPU, then SIGKILL). ``max_output_bytes``:
    stdout+stderr kept; one byte more and the group is killed. ``max_file_bytes``: RLIMIT_FSIZE
    (a write past it fails with EFBIG). ``network``: False = a new empty network namespace when
    ``unshare`` works, and the audit hook refuses sockets either way. ``python_guards``: the
    audit hook of ``sandbox_boot.py`` (turn off only to test the kernel layer alone).
    """

    timeout_s: float = 20.0
    memory_bytes: int = 1 << 30
    cpu_s: int = 30
    max_output_bytes: int = 64_000
    max_file_bytes: int = 16 << 20
    network: bool = False
    python_guards: bool = True

    def __post_init__(self) -> None:
        for name in ("timeout_s", "memory_bytes", "cpu_s", "max_output_bytes", "max_file_bytes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or v != v:
                raise ValueError(f"Limits.{name} must be a positive number, got {v!r}")
        if self.memory_bytes < 64 << 20:
            raise ValueError(f"Limits.memory_bytes={self.memory_bytes} is below 64 MiB: Python cannot start")


@dataclass
class RunResult:
    """What a sandboxed run did. ``killed``: why we (or the kernel) stopped it: ``"timeout"``,
    ``"output_limit"``, ``"cpu_limit"``, ``"file_size_limit"``, ``"signal N"``, or None."""

    returncode: int | None
    output: str
    wall_s: float
    killed: str | None = None
    network_isolation: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.killed is None


def apply_limits(limits: Limits) -> None:
    """Set the rlimits of the *current* process (called in the child between fork and exec).

    RLIMIT_AS = ``memory_bytes`` (soft and hard), RLIMIT_CPU = ``cpu_s`` soft / ``cpu_s + 1``
    hard, RLIMIT_FSIZE = ``max_file_bytes``, RLIMIT_CORE = 0 (no core dumps).
    """
    # BEGIN SOLUTION resource.setrlimit for RLIMIT_AS (memory, memory), RLIMIT_CPU (ceil cpu_s, +1), RLIMIT_FSIZE, RLIMIT_CORE (0, 0) (easy, ~5 min)
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    cpu = int(-(-limits.cpu_s // 1))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.max_file_bytes, limits.max_file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # END SOLUTION


@functools.cache
def netns_available() -> bool:
    """Whether ``unshare -rn`` (a user + network namespace, no privileges needed) works here."""
    exe = shutil.which("unshare")
    if exe is None:
        return False
    try:
        return subprocess.run([exe, "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_sandboxed(ws: Workspace, argv: Sequence[str], limits: Limits = Limits()) -> RunResult:
    """Run ``python <argv>`` (``["-m", "pytest", ...]`` or ``["script.py", ...]``) in the copy.

    The child: ``[unshare -rn] python -I -B sandbox_boot.py <root> <net> *argv``, cwd = the copy,
    a minimal environment (HOME and TMPDIR inside the copy, no proxies, plugin autoload off),
    stdin closed, stdout+stderr on one pipe, its own session (so the whole group can be
    killed), rlimits via :func:`apply_limits`.

    The parent reads the pipe with ``select`` until EOF, a deadline ``timeout_s`` after the
    start (-> SIGKILL the group, ``killed="timeout"``), or more than ``max_output_bytes``
    (-> SIGKILL the group, ``killed="output_limit"``); then waits for the child and kills the
    group once more (a grandchild left behind dies too). A child killed by SIGXCPU is
    ``"cpu_limit"``, by SIGXFSZ ``"file_size_limit"``.

    Raises:
        ValueError: empty ``argv`` or a non-string in it.
    """
    if not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError(f"argv must be a non-empty list of strings, got {argv!r}")
    net = "0" if not limits.network else "1"
    cmd = [sys.executable, "-I", "-B"]
    cmd += [str(BOOT), str(ws.root), net, *argv] if limits.python_guards else list(argv)
    isolation = "none (network allowed)" if limits.network else "audit hook"
    if not limits.network and netns_available():
        cmd = [shutil.which("unshare") or "unshare", "-rn", *cmd]
        isolation = "network namespace + audit hook" if limits.python_guards else "network namespace"
    tmp = ws.root / ".tmp"
    tmp.mkdir(exist_ok=True)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(ws.root), "TMPDIR": str(tmp), "LANG": "C.UTF-8",
           "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
           "NO_COLOR": "1"}
    # BEGIN SOLUTION t0; Popen(cmd, cwd=root, env, stdin DEVNULL, stdout PIPE, stderr STDOUT, start_new_session=True, preexec_fn=lambda: apply_limits(limits)); loop: remaining = deadline - now (<= 0 -> kill group, "timeout"); select the pipe fd with remaining; os.read 65536; b"" = EOF; count bytes, keep at most max_output_bytes, more -> kill group, "output_limit"; after the loop: wait (5 s), kill the group again, map -SIGXCPU / -SIGXFSZ to "cpu_limit" / "file_size_limit" (another negative code -> "signal N") unless already killed; return RunResult with the output decoded (errors="replace") (hard, ~35 min)
    t0 = time.monotonic()
    deadline = t0 + limits.timeout_s
    proc = subprocess.Popen(cmd, cwd=ws.root, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: apply_limits(limits))
    fd = proc.stdout.fileno()  # type: ignore[union-attr]
    chunks: list[bytes] = []
    n = 0
    killed: str | None = None
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                killed = "timeout"
                _kill_group(proc.pid)
                break
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            data = os.read(fd, 65536)
            if not data:
                break
            n += len(data)
            if n > limits.max_output_bytes:
                chunks.append(data[: max(0, limits.max_output_bytes - (n - len(data)))])
                killed = "output_limit"
                _kill_group(proc.pid)
                break
            chunks.append(data)
        try:
            rc = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            rc = proc.wait()
    finally:
        _kill_group(proc.pid)
        proc.stdout.close()  # type: ignore[union-attr]
    if killed is None and rc is not None and rc < 0:
        sig = -rc
        killed = {signal.SIGXCPU: "cpu_limit", signal.SIGXFSZ: "file_size_limit"}.get(sig, f"signal {sig}")
    return RunResult(rc, b"".join(chunks).decode("utf-8", errors="replace"), time.monotonic() - t0,
                     killed, isolation)
    # END SOLUTION


PYTEST_ARGS = ("-q", "-p", "no:cacheprovider", "-o", "console_output_style=classic", "--tb=short")


def run_pytest(ws: Workspace, target: str, limits: Limits = Limits()) -> RunResult:
    """pytest on ``target`` (relative) in the copy, rootdir = the copy, no cache provider."""
    ws.resolve(target)
    return run_sandboxed(ws, ["-m", "pytest", *PYTEST_ARGS, f"--rootdir={ws.root}", target], limits)


def summarize_run(r: RunResult, tail: int = 1500) -> str:
    """What the agent sees of a test run: a status line and the end of the output."""
    head = f"exit code {r.returncode}" + (f", KILLED ({r.killed})" if r.killed else "")
    out = r.output if len(r.output) <= tail else "..." + r.output[-tail:]
    return f"{head}\n{out}"


# =============================================================================================
# 4. the tools the agent gets (Phase 7's Tool / ToolRegistry)
# =============================================================================================
_STRICT = ConfigDict(extra="forbid", strict=True)


class ListFilesArgs(BaseModel):
    model_config = _STRICT
    path: str = Field(default=".", min_length=1, max_length=200, description="a folder in the repo")


class ReadFileArgs(BaseModel):
    model_config = _STRICT
    path: str = Field(min_length=1, max_length=200, description="a file in the repo")


class SearchArgs(BaseModel):
    model_config = _STRICT
    pattern: str = Field(min_length=1, max_length=200, description="a Python regex")
    path: str = Field(default=".", min_length=1, max_length=200)


class ApplyPatchArgs(BaseModel):
    model_config = _STRICT
    diff: str = Field(min_length=1, max_length=20_000, description="a unified diff (--- a/f, +++ b/f, @@ hunks)")


class RunTestsArgs(BaseModel):
    model_config = _STRICT
    path: str = Field(default="python_testcases", min_length=1, max_length=200, description="tests to run")


def build_coding_registry(ws: Workspace, limits: Limits = Limits()) -> Any:
    """Phase 7's ToolRegistry with the five coding tools bound to ``ws`` plus ``final_answer``."""
    m = p7()
    return m.ToolRegistry([
        m.Tool("list_files", "List the files under a folder of the repository.", ListFilesArgs,
               lambda path=".": list_files(ws, path)),
        m.Tool("read_file", "Read a file (numbered lines).", ReadFileArgs, lambda path: read_file(ws, path)),
        m.Tool("search", "Regex search in the repository: file:line: text.", SearchArgs,
               lambda pattern, path=".": search(ws, pattern, path)),
        m.Tool("apply_patch", "Apply a unified diff to the repository.", ApplyPatchArgs,
               lambda diff: apply_patch(ws, diff)),
        m.Tool("run_tests", "Run pytest in the sandbox; returns the exit code and output.", RunTestsArgs,
               lambda path="python_testcases": summarize_run(run_pytest(ws, path, limits))),
        m.Tool(m.FINAL_ANSWER, "Say you are done and stop.", m.FinalAnswerArgs, lambda answer: answer),
    ])


# =============================================================================================
# 5. the tasks: QuixBugs (from the data registry), held-out tests, the policies
# =============================================================================================
QUIX_CONFTEST = """# written by the capstone: QuixBugs' tests read these two flags (upstream sets them from
# --correct / --runslow; the defaults: test the programs in python_programs/, skip the slow case)
import pytest

pytest.use_correct = False
pytest.run_slow = False
"""
QUIX_INI = "[pytest]\naddopts = -p no:cacheprovider\n"


@dataclass
class BugTask:
    """One QuixBugs program: ``buggy`` (what the agent starts from), ``fixed`` (the upstream
    correct code with the buggy file's docstring kept, i.e. the known few-line fix), its pytest
    file, its JSON cases (None for the graph programs, whose cases are Python code) and helpers."""

    name: str
    buggy: str
    fixed: str
    test_file: str
    json_lines: list[str] | None
    helpers: dict[str, str]

    @property
    def program(self) -> str:
        return f"python_programs/{self.name}.py"

    @property
    def test_path(self) -> str:
        return f"python_testcases/test_{self.name}.py"

    def files(self, program: str, heldout: bool) -> dict[str, str]:
        """The working copy: visible tests (every other JSON case, starting with the first) or
        the held-out ones (all cases). Graph tasks have no JSON: visible == held-out."""
        files = {"conftest.py": QUIX_CONFTEST, "pytest.ini": QUIX_INI, self.program: program,
                 self.test_path: self.test_file, **self.helpers}
        if self.json_lines is not None:
            cases = self.json_lines if heldout else self.json_lines[::2]
            files[f"json_testcases/{self.name}.json"] = "".join(cases)
        return files


def _known_fix(buggy: str, correct: str) -> str:
    """The buggy file with its code replaced by the upstream correct code. Upstream's correct
    files drop the buggy file's docstring and append alternative versions inside a string
    block, so only the code before the first triple-quote line of each is compared: the diff from
    ``buggy`` then touches the defect only (usually one line)."""
    b_code = buggy.partition('\n"""')[0].strip("\n")
    c_code = correct.partition('\n"""')[0].strip("\n")
    return buggy.replace(b_code, c_code, 1)


def quixbugs_names() -> list[str]:
    """The 40 QuixBugs programs that have a Python test file, sorted."""
    files = registry()["quixbugs"]["files"]
    return sorted(f[len("python_testcases/test_"):-3] for f in files
                  if f.startswith("python_testcases/test_"))


def load_quixbugs(names: Sequence[str] | None = None) -> list[BugTask]:
    """QuixBugs tasks through the data registry (``labkit.dataset_path("quixbugs", ...)``).

    Raises:
        ValueError: a name that is not a QuixBugs program.
    """
    all_names = quixbugs_names()
    names = all_names if names is None else list(names)
    bad = [n for n in names if n not in all_names]
    if bad:
        raise ValueError(f"not QuixBugs programs: {bad}; known: {', '.join(all_names)}")

    def text(f: str) -> str:
        return dataset_path("quixbugs", f).read_text(encoding="utf-8")

    helpers = {"python_testcases/load_testdata.py": text("python_testcases/load_testdata.py"),
               "python_testcases/node.py": text("python_testcases/node.py")}
    tasks = []
    listed = registry()["quixbugs"]["files"]
    for n in names:
        js = split_lines(text(f"json_testcases/{n}.json")) if f"json_testcases/{n}.json" in listed else None
        buggy = text(f"python_programs/{n}.py")
        tasks.append(BugTask(n, buggy, _known_fix(buggy, text(f"correct_python_programs/{n}.py")),
                             text(f"python_testcases/test_{n}.py"), js, helpers))
    return tasks


def evaluate_program(task: BugTask, program: str, limits: Limits = Limits()) -> RunResult:
    """The held-out verdict: a FRESH copy with ``program`` and all the task's tests, pytest there."""
    with Workspace.create(task.files(program, heldout=True), prefix=f"heldout-{task.name}-") as ws:
        return run_pytest(ws, task.test_path, limits)


CODING_SYSTEM_PROMPT = (
    "You fix bugs in a Python repository by calling tools, one call per reply. Read the failing "
    "program, find the one-line defect, fix it with apply_patch (a unified diff), run the tests, "
    "and call final_answer when they pass.")


def task_prompt(task: BugTask) -> str:
    return (f"The tests in {task.test_path} fail. Fix the bug in {task.program} "
            "(a small defect, usually one line) without editing the tests.")


def oracle_policy(task: BugTask) -> Any:
    """The scripted policy: list the repo, read the program, apply the known fix as a unified
    diff, run the tests, answer. Deterministic; exercises the tools and the loop end to end
    (one test run per episode keeps the grader cheap; a real agent also runs them first)."""
    m = p7()
    msg = m.tool_call_message
    diff = make_unified_diff(task.buggy, task.fixed, task.program)
    return m.ScriptedPolicy([
        msg("list_files", {"path": "."}, "c0"),
        msg("read_file", {"path": task.program}, "c1"),
        msg("apply_patch", {"diff": diff}, "c2"),
        msg("run_tests", {"path": task.test_path}, "c3"),
        lambda obs: msg(m.FINAL_ANSWER, {"answer": "tests pass" if obs[-1].startswith("exit code 0")
                                         else "tests still fail"}, "c4"),
    ])


def noop_policy(task: BugTask) -> Any:
    """A baseline that claims success at once without touching anything: its held-out result is
    the BUGGY program's, which must fail (QuixBugs' defects all break their tests). It shows that
    the metric is not satisfied by what an agent says."""
    m = p7()
    return m.ScriptedPolicy([m.tool_call_message(m.FINAL_ANSWER, {"answer": "fixed it"}, "c0")])


@dataclass
class TaskResult:
    name: str
    status: str
    steps: int
    tool_calls: int
    output_errors: int
    tool_errors: int
    changed: bool
    heldout_pass: bool
    heldout_killed: str | None
    wall_s: float


def solve_task(task: BugTask, policy: Any, *, limits: Limits = Limits(), max_iterations: int = 8,
               tracer: Any = None) -> TaskResult:
    """One episode: a fresh working copy (buggy program + visible tests), Phase 7's ReAct loop
    with the coding tools, then the held-out verdict on the copy's final program.

    Success (``heldout_pass``) is decided by :func:`evaluate_program` only, never by what the
    agent says: a policy that answers "fixed" without fixing scores 0.
    """
    # BEGIN SOLUTION t0; Workspace.create(task.files(task.buggy, heldout=False)) as ws; registry = build_coding_registry(ws, limits); res = p7().run_agent(task_prompt(task), policy, registry, max_iterations=..., tracer=..., system_prompt=CODING_SYSTEM_PROMPT, max_repeats=3); final program = the copy's task.program if it is still a regular file (else ""); verdict = evaluate_program(task, final, limits); TaskResult(... changed = final != task.buggy, heldout_pass = verdict.ok ...) (medium, ~15 min)
    t0 = time.monotonic()
    with Workspace.create(task.files(task.buggy, heldout=False), prefix=f"agent-{task.name}-") as ws:
        registry = build_coding_registry(ws, limits)
        res = p7().run_agent(task_prompt(task), policy, registry, max_iterations=max_iterations, tracer=tracer,
                             system_prompt=CODING_SYSTEM_PROMPT, max_repeats=3)
        prog = ws.root / task.program
        final = prog.read_text(encoding="utf-8") if prog.is_file() and not prog.is_symlink() else ""
    verdict = evaluate_program(task, final, limits)
    return TaskResult(task.name, res.status, res.steps, res.tool_calls, res.output_errors, res.tool_errors,
                      final != task.buggy, verdict.ok, verdict.killed, time.monotonic() - t0)
    # END SOLUTION


def run_eval(tasks: Sequence[BugTask], make_policy: Callable[[BugTask], Any], *, limits: Limits = Limits(),
             max_iterations: int = 8) -> dict[str, Any]:
    """Every task with a fresh policy; the success rate counts held-out passes only."""
    results = [solve_task(t, make_policy(t), limits=limits, max_iterations=max_iterations) for t in tasks]
    n_ok = sum(r.heldout_pass for r in results)
    return {"results": results, "n": len(results), "solved": n_ok,
            "success_rate": n_ok / len(results) if results else 0.0}


def llm_policy_factory(client: Any, model: str, *, max_tokens: int = 64, max_prompt_chars: int = 400,
                       temperature: float = 0.0) -> Callable[[BugTask], Any]:
    """Phase 7's ChatCompletionsPolicy (native tools, falling back to tools-in-the-prompt JSON
    when the server refuses ``tools=``, as the curriculum server does)."""

    def make(task: BugTask) -> Any:
        pol = p7().ChatCompletionsPolicy(client, model, max_tokens=max_tokens, temperature=temperature,
                                         seed=0, max_prompt_chars=max_prompt_chars)
        pol.registry = build_coding_registry(Workspace(tempfile.gettempdir()))  # only for describing tools
        return pol

    return make


# =============================================================================================
# 6. the attack list: every escape must be refused or killed at its limit
# =============================================================================================
ATTACK_SCRIPTS: dict[str, str] = {
    "read /etc/passwd from a test": "print(open('/etc/passwd').read()[:50])",
    "write outside the copy": "open({outside!r}, 'w').write('pwned')",
    "list the filesystem root": "import os; print(os.listdir('/'))",
    "fork bomb (capped at 2**8 processes)": "import os, time\nfor _ in range(8):\n    os.fork()\ntime.sleep(30)",
    "shell out": "import subprocess; subprocess.run(['sh', '-c', 'echo pwned > /tmp/x'])",
    "network: connect to a listening host port": (
        "import socket; s = socket.create_connection(('127.0.0.1', {port}), timeout=2); print('CONNECTED')"),
    "network: DNS": "import socket; print(socket.getaddrinfo('example.com', 80))",
    "ctypes syscall": "import ctypes; ctypes.CDLL(None).system(b'echo pwned')",
    "infinite loop": "while True:\n    pass",
    "huge output": "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)",
    "memory hog (8 GiB)": "x = bytearray(8 << 30); print('ALLOCATED')",
}


@dataclass
class AttackOutcome:
    name: str
    contained: bool
    how: str


def tool_attacks(ws: Workspace, registry: Any) -> list[AttackOutcome]:
    """Tool-level escapes. ``ws`` gets a symlink ``etc_link -> /etc`` and ``up -> ..`` first (a
    repository may well contain such links)."""
    for name, target in (("etc_link", "/etc"), ("up", "..")):
        if not (ws.root / name).is_symlink():
            os.symlink(target, ws.root / name)
    cases = [
        ("read ../../etc/passwd", "read_file", {"path": "../../etc/passwd"}),
        ("read /etc/passwd", "read_file", {"path": "/etc/passwd"}),
        ("read ~/.bashrc", "read_file", {"path": "~/.bashrc"}),
        ("read through symlink etc_link/passwd", "read_file", {"path": "etc_link/passwd"}),
        ("list through symlink up -> ..", "list_files", {"path": "up"}),
        ("list ../", "list_files", {"path": "../"}),
        ("list symlink etc_link", "list_files", {"path": "etc_link"}),
        ("search /etc", "search", {"pattern": "root", "path": "/etc"}),
        ("patch ../escape.txt", "apply_patch", {"diff": "--- /dev/null\n+++ b/../escape.txt\n@@ -0,0 +1 @@\n+x\n"}),
        ("patch /tmp/escape.txt", "apply_patch", {"diff": "--- /dev/null\n+++ /tmp/escape.txt\n@@ -0,0 +1 @@\n+x\n"}),
        ("patch through symlink etc_link/hosts", "apply_patch",
         {"diff": "--- a/etc_link/hosts\n+++ b/etc_link/hosts\n@@ -1 +1 @@\n-a\n+b\n"}),
        ("run tests at /", "run_tests", {"path": "/"}),
    ]
    out = []
    for label, tool, args in cases:
        call = registry.validate_call(tool, args, "attack")
        ok, res = registry.execute(call)
        refused = not ok and ("refused" in res or "outside" in res)
        out.append(AttackOutcome(label, refused, res[:90].replace("\n", " ")))
    escaped = [p for p in (ws.root.parent / "escape.txt", Path("/tmp/escape.txt")) if p.exists()]
    out.append(AttackOutcome("no file written outside", not escaped, f"found {escaped}" if escaped else "none"))
    return out


def process_attacks(limits: Limits, port: int, outside: str) -> list[AttackOutcome]:
    """Process-level escapes: each script runs in the sandbox of a fresh copy."""
    out = []
    for label, src in ATTACK_SCRIPTS.items():
        with Workspace.create({"attack.py": src.format(port=port, outside=outside)}, prefix="attack-") as ws:
            r = run_sandboxed(ws, ["attack.py"], limits)
        text = r.output
        if r.killed:
            contained, how = True, f"killed: {r.killed} after {r.wall_s:.1f}s"
        elif "PermissionError" in text or "MemoryError" in text:
            err = "MemoryError" if "MemoryError" in text else "PermissionError"
            contained, how = True, f"refused: {err}" + (f" ({m.group(1)})" if (m := re.search(
                r"sandbox: ([^(\n]*?) \(", text)) else "")
        else:
            contained, how = False, f"rc={r.returncode} output={text[-80:]!r}"
        if re.search(r"^(CONNECTED|ALLOCATED|pwned)$", text, re.M) or Path(outside).exists():
            contained, how = False, how + " [ESCAPED]"
        out.append(AttackOutcome(label, contained, how))
    return out


def runaway_test(limits: Limits) -> tuple[RunResult, bool]:
    """A pytest test that never returns (it marks that it started, then waits forever, like a
    deadlocked test): pytest must be killed at ``timeout_s``. Returns the run and whether the
    test had really started (so the kill is not just pytest's own start-up being cut short)."""
    src = ("import pathlib, time\n\ndef test_hangs():\n    pathlib.Path('started').write_text('1')\n"
           "    while True:\n        time.sleep(0.05)\n")
    with Workspace.create({"pytest.ini": QUIX_INI, "test_hang.py": src}, prefix="runaway-") as ws:
        r = run_pytest(ws, "test_hang.py", limits)
        started = (ws.root / "started").exists()
    return r, started


@dataclass
class _Listener:
    port: int
    sock: Any


def listening_socket() -> _Listener:
    import socket  # noqa: PLC0415

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(4)
    return _Listener(s.getsockname()[1], s)


# =============================================================================================
# 7. self-test / eval
# =============================================================================================
def patch_cross_check(tasks: Sequence[BugTask]) -> list[tuple[str, bool, bool, bool]]:
    """Apply each known fix's diff with ours, GNU ``patch`` and ``git apply``: (name, ours ==
    fixed, patch == fixed, git == fixed). References skipped (None -> False) when missing."""
    rows = []
    for t in tasks:
        diff = make_unified_diff(t.buggy, t.fixed, t.program)
        ours = "".join(apply_hunks(split_lines(t.buggy), parse_unified_diff(diff)[0].hunks)) == t.fixed
        rows.append((t.name, ours, *reference_apply(t.buggy, diff, t.program, t.fixed)))
    return rows


def reference_apply(old: str, diff: str, path: str, expected: str | None) -> tuple[bool, bool]:
    """Apply ``diff`` with GNU patch (``-p1 --fuzz=0``) and ``git apply`` in temp copies; True
    where the result equals ``expected`` (or, ``expected=None``, where the tool refused)."""
    res = []
    for tool in ("patch", "git"):
        with tempfile.TemporaryDirectory(prefix=f"ref-{tool}-") as d:
            f = Path(d) / path
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(old, encoding="utf-8")
            cmd = (["patch", "-p1", "--fuzz=0", "--no-backup-if-mismatch", "-s", "-r", "-"] if tool == "patch"
                   else ["git", "apply", "--unsafe-paths", "-"])
            p = subprocess.run(cmd, cwd=d, input=diff.encode(), capture_output=True, timeout=30)
            if expected is None:
                res.append(p.returncode != 0 and f.read_text(encoding="utf-8") == old)
            else:
                res.append(p.returncode == 0 and f.read_text(encoding="utf-8") == expected)
    return res[0], res[1]


def _changed_lines(t: BugTask) -> str:
    """``-removed +added`` lines of the known fix's diff."""
    body = [ln for ln in make_unified_diff(t.buggy, t.fixed, t.program).split("\n")[2:] if ln[:1] in ("+", "-")]
    return f"-{sum(ln[0] == '-' for ln in body)} +{sum(ln[0] == '+' for ln in body)}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in r] for r in [headers, *rows]]
    w = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    fmt = lambda r: "| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(r)) + " |"  # noqa: E731
    return "\n".join([fmt(cells[0]), "|" + "|".join("-" * (x + 2) for x in w) + "|", *map(fmt, cells[1:])])


SELFTEST_TASKS = ("gcd", "flatten", "breadth_first_search")


def security_report(limits: Limits) -> tuple[list[AttackOutcome], RunResult, bool]:
    lst = listening_socket()
    outside = str(Path(tempfile.gettempdir()) / f"outside-{os.getpid()}.txt")
    try:
        with Workspace.create({"conftest.py": QUIX_CONFTEST}, prefix="attack-tools-") as ws:
            outcomes = tool_attacks(ws, build_coding_registry(ws, limits))
        outcomes += process_attacks(limits, lst.port, outside)
    finally:
        lst.sock.close()
        if os.path.exists(outside):
            os.unlink(outside)
    run, started = runaway_test(Limits(timeout_s=5.0))
    return outcomes, run, started


def selftest() -> int:
    fails = []
    print(f"network isolation: {'unshare -rn (kernel) + audit hook' if netns_available() else 'audit hook only'}")
    limits = Limits(timeout_s=2.0, memory_bytes=512 << 20, cpu_s=10, max_output_bytes=100_000)
    outcomes, run, started = security_report(limits)
    print(_table(["attack", "contained", "how"], [(o.name, o.contained, o.how) for o in outcomes]))
    print(f"runaway pytest test (started: {started}): killed={run.killed} after {run.wall_s:.2f}s (limit 5.0s)")
    fails += [f"attack not contained: {o.name} ({o.how})" for o in outcomes if not o.contained]
    if run.killed != "timeout" or run.wall_s > 5.0 + 3 or not started:
        fails.append(f"runaway test not killed at its limit: {run.killed}, {run.wall_s:.1f}s")

    tasks = load_quixbugs()
    rows = patch_cross_check(tasks)
    agree = sum(all(r[1:]) for r in rows)
    print(f"patch cross-check on the {len(rows)} QuixBugs known fixes: ours == GNU patch == git apply == "
          f"expected for {agree}/{len(rows)}")
    if agree != len(rows):
        fails.append(f"patch cross-check: {[r for r in rows if not all(r[1:])]}")

    eval_limits = Limits(timeout_s=10.0)
    picked = [t for t in tasks if t.name in SELFTEST_TASKS]
    ora = run_eval(picked, oracle_policy, limits=eval_limits)
    noop = run_eval(picked, noop_policy, limits=eval_limits)
    print(_table(["task", "scripted policy: held-out", "steps", "no-op policy: held-out"],
                 [(a.name, "pass" if a.heldout_pass else "FAIL", a.steps, "pass" if b.heldout_pass else "fail")
                  for a, b in zip(ora["results"], noop["results"])]))
    if ora["solved"] != len(picked):
        fails.append(f"scripted policy solved {ora['solved']}/{len(picked)}")
    if noop["solved"] != 0:
        fails.append(f"no-op policy 'solved' {noop['solved']} tasks: the held-out check is too weak")
    for f in fails:
        print("FAIL:", f)
    print("self-test", "FAILED" if fails else "passed")
    return 1 if fails else 0


def full_eval(args: argparse.Namespace) -> int:
    tasks = load_quixbugs()
    limits = Limits(timeout_s=args.timeout)
    t0 = time.monotonic()
    ora = run_eval(tasks, oracle_policy, limits=limits)
    noop = run_eval(tasks, noop_policy, limits=limits)
    rows = [(t.name, "json" if t.json_lines is not None else "python",
             f"{len(t.json_lines[::2])}/{len(t.json_lines)}" if t.json_lines is not None else "same file",
             _changed_lines(t), "pass" if a.heldout_pass else "FAIL" + (f" ({a.heldout_killed})" if a.heldout_killed
                                                                       else ""),
             "pass" if b.heldout_pass else ("fail" + (f" ({b.heldout_killed})" if b.heldout_killed else "")),
             f"{a.wall_s:.1f}")
            for t, a, b in zip(tasks, ora["results"], noop["results"])]
    print(_table(["task", "test cases", "visible/held-out", "lines in fix", "scripted: held-out",
                  "no-op (buggy): held-out", "scripted wall s"], rows))
    print(f"\nscripted policy: {ora['solved']}/{ora['n']} held-out ({100 * ora['success_rate']:.1f}%); "
          f"no-op policy (the buggy programs): {noop['solved']}/{noop['n']}")
    print(f"scripted + no-op wall: {time.monotonic() - t0:.0f}s")

    llm_tasks = [t for t in tasks if t.name in SELFTEST_TASKS][: args.llm_tasks] if args.llm_tasks <= 3 \
        else tasks[: args.llm_tasks]
    if args.llm_base_url:
        import openai  # noqa: PLC0415

        client = openai.OpenAI(base_url=args.llm_base_url, api_key=os.environ.get("OPENAI_API_KEY", "none"))
        llm = run_eval(llm_tasks, llm_policy_factory(client, args.llm_model, max_tokens=512,
                                                     max_prompt_chars=24_000), limits=limits, max_iterations=12)
        label = f"{args.llm_model} at {args.llm_base_url}"
    else:
        from labkit.llm_server import serve_in_thread  # noqa: PLC0415

        with serve_in_thread("main") as ep:
            llm = run_eval(llm_tasks, llm_policy_factory(ep.client(), ep.model), limits=limits,
                           max_iterations=args.llm_iterations)
        label = "curriculum model 'main' (1.8M params, TinyStories) via labkit.llm_server"
    print(f"\nLLM policy: {label}")
    print(_table(["task", "status", "steps", "tool calls", "invalid outputs", "tool errors", "file changed",
                  "held-out"],
                 [(r.name, r.status, r.steps, r.tool_calls, r.output_errors, r.tool_errors, r.changed,
                   "pass" if r.heldout_pass else "fail") for r in llm["results"]]))
    print(f"LLM policy success: {llm['solved']}/{llm['n']} ({100 * llm['success_rate']:.1f}%)")
    return 0 if ora["solved"] >= 0.9 * ora["n"] and noop["solved"] == 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--eval", action="store_true", help="small/full mode: every task, all policies")
    ap.add_argument("--timeout", type=float, default=30.0, help="per pytest run (s)")
    ap.add_argument("--llm-base-url", default=os.environ.get("OPENAI_BASE_URL"))
    ap.add_argument("--llm-model", default=os.environ.get("OPENAI_MODEL", "gpt-4o-mini"))
    ap.add_argument("--llm-tasks", type=int, default=3)
    ap.add_argument("--llm-iterations", type=int, default=4)
    args = ap.parse_args(argv)
    return full_eval(args) if args.eval else selftest()


if __name__ == "__main__":
    sys.exit(main())

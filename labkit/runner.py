"""Run lab self-tests, grade progress, and check the environment.

``python -m labkit.runner selftest [PATH ...]``  run each solution.py (small mode) in its folder
``python -m labkit.runner progress``             per lab: TODOs left, tests passing on lab.py
``python -m labkit.runner doctor``               [OK]/[FAIL] lines for a bug report
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from labkit.loader import REPO_ROOT, lab_dirs, resolve_lab


def _labs_under(paths: list[str]) -> list[Path]:
    if not paths:
        return lab_dirs()
    out: list[Path] = []
    for p in paths:
        cand = (REPO_ROOT / p) if not Path(p).is_absolute() else Path(p)
        if cand.is_dir() and cand.name.startswith("phase-"):
            out += sorted(x for x in cand.iterdir() if x.is_dir() and x.name.startswith(("lab-", "capstone-")))
        elif cand.is_dir() and not (cand / "solution.py").exists():  # e.g. interview-prep/: every drill in it
            out += sorted(x.parent for x in cand.glob("**/solution.py"))
        else:
            out.append(resolve_lab(p))
    return out


def _run_one(lab: Path, timeout: int, env: dict[str, str] | None) -> tuple[str, int | str, float]:
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "solution.py"], cwd=lab, timeout=timeout, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out, rc = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as e:
        out, rc = (e.stdout or "") if isinstance(e.stdout, str) else "", f"timeout {timeout}s"
    return out, rc, time.perf_counter() - start


def selftest(paths: list[str], timeout: int = 600, log_dir: Path | None = None, jobs: int = 1) -> int:
    """Run ``python solution.py`` in each lab folder; print a table and a closing count.

    With ``jobs > 1`` that many self-tests run at once (each in its own process, with the BLAS/OpenMP
    thread pools set to one thread unless the caller set them), and their outputs are printed in lab
    order as they finish. Timings printed by a self-test are only meaningful with ``jobs=1``.

    Raises:
        ValueError: ``jobs`` < 1.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    labs = _labs_under(paths)
    env = None
    if jobs > 1:
        env = dict(os.environ)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env.setdefault(var, "1")
    failed = 0
    rows = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(_run_one, lab, timeout, env) for lab in labs]
        for lab, fut in zip(labs, futures):
            rel = lab.relative_to(REPO_ROOT)
            print(f"\n=== self-test: {rel} ===", flush=True)
            out, rc, elapsed = fut.result()
            print(out, end="" if out.endswith("\n") else "\n", flush=True)
            if log_dir:
                log_dir.mkdir(parents=True, exist_ok=True)
                (log_dir / (str(rel).replace("/", "__") + ".txt")).write_text(out, encoding="utf-8")
            ok = rc == 0
            failed += not ok
            rows.append((str(rel), "ok" if ok else f"FAILED ({rc})", elapsed))
    print("\n=== self-test summary ===")
    for rel, status, secs in rows:
        print(f"  {rel:<60} {status:<12} {secs:7.1f} s")
    print(f"selftest: {len(rows) - failed} passed, {failed} failed")
    return 1 if failed else 0


def _count_todos(lab_py: Path) -> int:
    if not lab_py.is_file():
        return 0
    return len(re.findall(r'raise NotImplementedError\("TODO\(\d+\)"\)', lab_py.read_text(encoding="utf-8")))


def progress() -> int:
    """Per lab: TODOs still raising in lab.py, and tests passing against lab.py / total."""
    env = dict(os.environ, LAB_TARGET="lab")
    labs = lab_dirs()
    print(f"{'lab':<60} {'TODOs left':>10} {'tests passing':>14}")
    tot_pass = tot = 0
    for lab in labs:
        xml = REPO_ROOT / ".cache" / "progress" / (lab.parent.name + "__" + lab.name + ".xml")
        xml.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pytest", str(lab / "test_lab.py"), "-q", "-p",
                        "no:cacheprovider", "-m", "not gpu and not slow and not given", f"--junitxml={xml}"],
                       cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        n = passed = 0
        if xml.is_file():
            root = ET.parse(xml).getroot()
            for case in root.iter("testcase"):
                if case.find("skipped") is not None:
                    continue
                n += 1
                passed += case.find("failure") is None and case.find("error") is None
        tot, tot_pass = tot + n, tot_pass + passed
        rel = str(lab.relative_to(REPO_ROOT))
        print(f"{rel:<60} {_count_todos(lab / 'lab.py'):>10} {f'{passed}/{n}':>14}", flush=True)
    print(f"\n{len(labs)} labs; {tot_pass}/{tot} tests pass on your lab.py files (slow tests and tests of given code left out)")
    return 0


def _req_pins() -> dict[str, str]:
    pins = {}
    req = REPO_ROOT / "requirements.txt"
    for raw in req.read_text(encoding="utf-8").splitlines() if req.is_file() else []:
        line = raw.split("#", 1)[0].strip()
        if "==" in line:
            name, ver = line.split("==", 1)
            pins[name.strip()] = ver.strip()
    return pins


def doctor() -> int:
    """Print [OK]/[FAIL]/[INFO] lines about Python, packages, data and GPU; 1 on any FAIL."""
    from importlib import metadata

    fails = 0

    def say(ok: bool | None, msg: str) -> None:
        nonlocal fails
        tag = "[INFO]" if ok is None else "[OK]  " if ok else "[FAIL]"
        fails += ok is False
        print(f"{tag} {msg}")

    v = sys.version_info
    say(v >= (3, 11), f"Python {v.major}.{v.minor}.{v.micro} at {sys.executable} (need >= 3.11)")
    for name, want in sorted(_req_pins().items()):
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            say(False, f"{name}=={want} not installed (run `make setup`)")
            continue
        base = have.split("+")[0]
        say(base == want, f"{name} {have}" + ("" if base == want else f" (requirements.txt pins {want})"))
    try:
        import torch

        say(torch.__version__.startswith("2.13.0"), f"torch {torch.__version__} (must be 2.13.0)")
        if torch.cuda.is_available():
            say(True, f"GPU: {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})")
        else:
            say(None, "no CUDA GPU: every lab runs in small mode on CPU; `gpu` tests are skipped")
    except ImportError:
        say(False, "torch not importable (run `make setup`)")
    from labkit.data import MIRROR_ENV, DataError, cache_dir, dataset_path, registry

    mirror = os.environ.get(MIRROR_ENV)
    say(None, f"{MIRROR_ENV}={mirror or '(unset)'}; cache at {cache_dir() / 'data'}")
    n_ok, missing = 0, []
    for ds, entry in sorted(registry().items()):
        for f in entry["files"]:
            try:
                dataset_path(ds, f, download=False)
                n_ok += 1
            except DataError:
                missing.append(f"{ds}/{f}")
    say(not missing, f"data: {n_ok} registry files available offline"
        + (f", {len(missing)} missing (downloaded on first use): {', '.join(missing[:5])}" if missing else ""))
    try:
        from labkit.tiktoken_offline import get_encoding

        say(get_encoding("gpt2").encode("hello world") == [31373, 995], "tiktoken gpt2 loads offline")
    except Exception as e:  # noqa: BLE001 - report any failure as a line, never crash
        say(False, f"tiktoken offline: {e}")
    print(f"doctor: {fails} problem(s)")
    return 1 if fails else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("selftest")
    st.add_argument("paths", nargs="*")
    st.add_argument("--timeout", type=int, default=600)
    st.add_argument("--log-dir", type=Path)
    st.add_argument("--jobs", "-j", type=int, default=1, help="self-tests run at once (default 1)")
    sub.add_parser("progress")
    sub.add_parser("doctor")
    args = ap.parse_args(argv)
    if args.cmd == "selftest":
        return selftest(args.paths, args.timeout, args.log_dir, args.jobs)
    if args.cmd == "progress":
        return progress()
    return doctor()


if __name__ == "__main__":
    sys.exit(main())

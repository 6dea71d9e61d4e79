"""Tests of labkit itself: the lab generator, the loader, the dataset registry, timing."""
from __future__ import annotations

import hashlib
import os
import textwrap

import pytest

from labkit import data, labgen, loader, timing

SOLUTION = textwrap.dedent('''\
    import math


    def area(r: float) -> float:
        """Area of a circle."""
        if r < 0:
            raise ValueError("negative radius")
        # BEGIN SOLUTION pi r squared (easy, ~2 min)
        return math.pi * r * r
        # END SOLUTION


    class Box:
        def volume(self, a, b, c):
            # BEGIN SOLUTION multiply the sides
            v = a * b
            return v * c
            # END SOLUTION
    ''')


def test_labgen_replaces_each_fence_with_a_numbered_todo():
    out = labgen.make_lab_source(SOLUTION)
    assert 'raise NotImplementedError("TODO(1)")' in out and 'raise NotImplementedError("TODO(2)")' in out
    assert "# TODO(1): pi r squared (easy, ~2 min)" in out
    assert "\n        # TODO(2): multiply the sides" in out, "the TODO keeps the fence's indentation"
    assert "math.pi * r * r" not in out and "v * c" not in out, "solution code must not leak"
    assert 'raise ValueError("negative radius")' in out, "code outside fences is copied verbatim"
    assert labgen.todo_hints(out) == {1: "pi r squared (easy, ~2 min)", 2: "multiply the sides"}


@pytest.mark.parametrize("bad, why", [
    ("def f():\n    # BEGIN SOLUTION\n    return 1\n", "never closed"),
    ("def f():\n    # END SOLUTION\n", "without BEGIN"),
    ("# BEGIN SOLUTION\nx = 1\n# END SOLUTION\n", "module level"),
    ("def f():\n    # BEGIN SOLUTION\n    # END SOLUTION\n", "empty fence"),
    ("def f():\n    return 1\n", "no '# BEGIN SOLUTION'"),
])
def test_labgen_rejects_malformed_fences(bad, why):
    with pytest.raises(labgen.FenceError, match=why):
        labgen.make_lab_source(bad)


def test_generated_lab_imports_and_raises_todo(tmp_path):
    (tmp_path / "lab.py").write_text(labgen.make_lab_source(SOLUTION), encoding="utf-8")
    mod = loader.load_lab(tmp_path / "lab.py")
    with pytest.raises(NotImplementedError, match=r"TODO\(1\)"):
        mod.area(1.0)
    with pytest.raises(ValueError):
        mod.area(-1.0)


def test_resolve_lab_short_forms(tmp_path):
    lab = tmp_path / "phase-01-foundations-text" / "lab-02-tfidf-search"
    lab.mkdir(parents=True)
    (tmp_path / "phase-01-foundations-text" / "lab-01-tokenization").mkdir()
    assert loader.resolve_lab("1.2", root=tmp_path) == lab.resolve()
    assert loader.resolve_lab("phase-01/lab-02", root=tmp_path) == lab.resolve()
    assert loader.resolve_lab("phase-01-foundations-text/lab-02-tfidf-search", root=tmp_path) == lab.resolve()
    with pytest.raises(FileNotFoundError, match="no lab matches"):
        loader.resolve_lab("1.9", root=tmp_path)


@pytest.fixture
def fake_registry(monkeypatch, tmp_path):
    payload = b"hello data\n"
    entry = {"toy": {"license": "CC0", "files": {"a.txt": {
        "url": None, "sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload), "source": "test"}}}}
    monkeypatch.setattr(data, "registry", lambda: entry)
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(data.MIRROR_ENV, str(tmp_path / "mirror"))
    data._VERIFIED.clear()
    return tmp_path, payload


def test_registry_prefers_mirror_then_cache(fake_registry):
    tmp, payload = fake_registry
    (tmp / "cache" / "data" / "toy").mkdir(parents=True)
    (tmp / "cache" / "data" / "toy" / "a.txt").write_bytes(payload)
    assert data.dataset_path("toy", "a.txt") == tmp / "cache" / "data" / "toy" / "a.txt"
    (tmp / "mirror" / "toy").mkdir(parents=True)
    (tmp / "mirror" / "toy" / "a.txt").write_bytes(payload)
    assert data.dataset_path("toy", "a.txt") == tmp / "mirror" / "toy" / "a.txt"


def test_registry_errors_name_the_file(fake_registry):
    tmp, _ = fake_registry
    with pytest.raises(data.DataError, match=r"toy/a.txt not found"):
        data.dataset_path("toy", "a.txt")
    with pytest.raises(data.DataError, match="unknown dataset"):
        data.dataset_path("nope", "a.txt")
    (tmp / "mirror" / "toy").mkdir(parents=True)
    (tmp / "mirror" / "toy" / "a.txt").write_bytes(b"tampered\n")
    with pytest.raises(data.DataError, match="corrupt"):
        data.dataset_path("toy", "a.txt")


@pytest.mark.skipif(not os.environ.get(data.MIRROR_ENV), reason="needs the data mirror")
def test_real_registry_entry_matches_mirror():
    path = data.dataset_path("tinyshakespeare", "input.txt")
    assert path.stat().st_size == 1115394


def test_timing_stats():
    t = timing.Timing("x", [3.0, 1.0, 2.0])
    assert (t.min, t.median, t.percentile(50), t.percentile(100)) == (1.0, 2.0, 2.0, 3.0)
    assert timing.Timing("y", [4.0]).ratio(timing.Timing("z", [8.0])) == 2.0
    with pytest.raises(ValueError):
        timing.benchmark(lambda: None, repeats=0)


def test_figures_go_to_outputs_unless_asked(tmp_path, monkeypatch):
    from labkit.plots import plt, resolve_figure_path, savefig

    lab = tmp_path / "lab-01-x"
    monkeypatch.delenv("LABKIT_WRITE_FIGURES", raising=False)
    assert resolve_figure_path(lab / "figures" / "a.png") == lab / "outputs" / "a.png"
    assert resolve_figure_path(lab / "plots" / "a.png") == lab / "plots" / "a.png"
    fig, _ = plt.subplots()
    written = savefig(fig, lab / "figures" / "a.png")
    assert written == lab / "outputs" / "a.png" and written.is_file()
    assert not (lab / "figures").exists(), "a self-test must not overwrite the committed figures"
    monkeypatch.setenv("LABKIT_WRITE_FIGURES", "1")
    fig, _ = plt.subplots()
    assert savefig(fig, lab / "figures" / "a.png") == lab / "figures" / "a.png"


def test_selftest_runs_labs_in_parallel_and_reports_in_order(tmp_path, monkeypatch, capsys):
    from labkit import runner

    phase = tmp_path / "phase-99-demo"
    for name, body in (("lab-01-slow", "import time; time.sleep(1.0); print('first done')"),
                       ("lab-02-fails", "print('second'); raise SystemExit(3)"),
                       ("lab-03-ok", "import os; print('threads', os.environ.get('OMP_NUM_THREADS'))")):
        (phase / name).mkdir(parents=True)
        (phase / name / "solution.py").write_text(body + "\n", encoding="utf-8")
    monkeypatch.setattr(runner, "REPO_ROOT", tmp_path)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    rc = runner.selftest([str(phase)], jobs=2)
    out = capsys.readouterr().out
    assert rc == 1, "a failing self-test must make the run fail"
    assert out.index("first done") < out.index("second") < out.index("threads 1"), \
        "outputs must be printed in lab order, whatever order the labs finish in"
    assert "selftest: 2 passed, 1 failed" in out
    with pytest.raises(ValueError):
        runner.selftest([str(phase)], jobs=0)


# ---------------------------------------------------------------------------- labkit.cache.build_once
def test_build_once_builds_once_and_keeps_nothing_from_a_failed_build(tmp_path):
    from labkit.cache import build_once

    calls = []

    def build(tmp):
        calls.append(tmp)
        (tmp / "run.json").write_text("{}")

    final = tmp_path / "models" / "thing-0123456789abcdef"
    assert build_once(final, build, key="0123456789abcdef" * 4, ready="run.json") == final
    assert build_once(final, build, ready="run.json") == final
    assert len(calls) == 1, "a complete folder must be reused, not rebuilt"
    assert (final / "cache_key.txt").read_text().strip() == "0123456789abcdef" * 4
    assert not calls[0].exists(), "the temporary folder was renamed into place"

    def broken(tmp):
        (tmp / "half.bin").write_text("x")
        raise RuntimeError("boom")

    other = tmp_path / "models" / "other-0123456789abcdef"
    with pytest.raises(RuntimeError, match="boom"):
        build_once(other, broken)
    assert not other.exists()
    assert [p.name for p in other.parent.iterdir() if p.name.endswith(".tmp")] == [], "no temporary folder is left"

    stale = tmp_path / "models" / "stale-0123456789abcdef"
    stale.mkdir()  # a folder without its ready marker is incomplete: rebuilt and replaced
    build_once(stale, build, ready="run.json")
    assert (stale / "run.json").is_file() and len(calls) == 2

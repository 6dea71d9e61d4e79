"""labkit.curriculum: the cache key follows every input, one build under a lock, atomic folders.

The real builder trains a model for minutes, so these tests run against a copy of the recipe
files in a temporary "repository" whose ``curriculum_model.py`` is a fake builder that records
each call and sleeps a little (long enough for two processes to race).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from labkit import curriculum
from labkit.loader import REPO_ROOT

FAKE_BUILDER = textwrap.dedent("""
    import argparse, os, time
    from pathlib import Path
    ap = argparse.ArgumentParser()
    ap.add_argument("--name"); ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    with open(os.environ["FAKE_BUILD_LOG"], "a") as f:
        f.write(a.name + "\\n")
    if os.environ.get("FAKE_BUILD_FAIL"):
        (a.out / "half.txt").write_text("half")
        raise SystemExit(3)
    time.sleep(float(os.environ.get("FAKE_BUILD_SLEEP", "0")))
    (a.out / "metrics.json").write_text('{"ok": true}')
""")


@pytest.fixture
def fake_repo(tmp_path, monkeypatch):
    root = tmp_path / "repo"
    for rel in (*curriculum.CODE_FILES, curriculum.CONFIG):
        src = REPO_ROOT / rel
        dst = root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes() if src.is_file() else b"# placeholder\n")
    (root / curriculum.BUILDER).write_text(FAKE_BUILDER, encoding="utf-8")
    monkeypatch.setenv("LABKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FAKE_BUILD_LOG", str(tmp_path / "builds.log"))
    monkeypatch.delenv(curriculum.NO_BUILD_ENV, raising=False)
    return root


def test_key_changes_with_each_input(fake_repo, monkeypatch):
    main, draft = curriculum.cache_key("main", fake_repo), curriculum.cache_key("draft", fake_repo)
    assert main != draft and main == curriculum.cache_key("main", fake_repo)
    # producing code
    f = fake_repo / curriculum.CODE_FILES[1]
    f.write_text(f.read_text(encoding="utf-8") + "\n# edited\n", encoding="utf-8")
    assert curriculum.cache_key("main", fake_repo) != main
    main = curriculum.cache_key("main", fake_repo)
    # config: the draft's entry changes only the draft's key
    cfg_path = fake_repo / curriculum.CONFIG
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["models"]["draft"]["seed"] = 123
    cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
    assert curriculum.cache_key("main", fake_repo) == main and curriculum.cache_key("draft", fake_repo) != draft
    cfg["tokenizer"]["vocab_size"] += 1
    cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
    assert curriculum.cache_key("main", fake_repo) != main
    main = curriculum.cache_key("main", fake_repo)
    # data sha256 and library versions
    real = curriculum.file_info
    monkeypatch.setattr(curriculum, "file_info", lambda d, f: {**real(d, f), "sha256": "0" * 64})
    assert curriculum.cache_key("main", fake_repo) != main
    monkeypatch.setattr(curriculum, "file_info", real)
    monkeypatch.setattr(curriculum, "_version", lambda lib: "9.9.9")
    assert curriculum.cache_key("main", fake_repo) != main


def test_unknown_name_and_missing_recipe(fake_repo):
    with pytest.raises(curriculum.CurriculumModelError, match="unknown curriculum model"):
        curriculum.cache_key("huge", fake_repo)
    (fake_repo / curriculum.CODE_FILES[0]).unlink()
    with pytest.raises(curriculum.CurriculumModelError, match="missing"):
        curriculum.cache_key("main", fake_repo)


def test_builds_once_and_then_reuses(fake_repo, tmp_path):
    path = curriculum.curriculum_model_path("draft", root=fake_repo)
    assert path.name == "draft-" + curriculum.cache_key("draft", fake_repo)[:16]
    assert json.loads((path / "metrics.json").read_text()) == {"ok": True}
    assert (path / "cache_key.txt").read_text().strip() == curriculum.cache_key("draft", fake_repo)
    assert curriculum.curriculum_model_path("draft", root=fake_repo) == path
    assert (tmp_path / "builds.log").read_text().split() == ["draft"], "a built model must not be rebuilt"
    assert not list(path.parent.glob("*.tmp")), "the temporary build folder must be gone"


def test_two_processes_build_once(fake_repo, tmp_path):
    code = ("import sys; from pathlib import Path; from labkit.curriculum import curriculum_model_path; "
            "print(curriculum_model_path('main', root=Path(sys.argv[1])))")
    env = dict(os.environ, FAKE_BUILD_SLEEP="1.5")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(fake_repo)], env=env, cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    assert outs[0][0] == outs[1][0], "both processes must get the same folder"
    assert (tmp_path / "builds.log").read_text().split() == ["main"], "the lock must stop a second build"


def test_failed_build_leaves_nothing(fake_repo, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_BUILD_FAIL", "1")
    with pytest.raises(curriculum.CurriculumModelError, match="failed"):
        curriculum.curriculum_model_path("main", root=fake_repo)
    models = tmp_path / "cache" / "models"
    assert [p.name for p in models.iterdir() if not p.name.endswith(".lock")] == [], \
        "a failed build must leave neither a final nor a temporary folder"


def test_build_switched_off(fake_repo, monkeypatch):
    monkeypatch.setenv(curriculum.NO_BUILD_ENV, "1")
    with pytest.raises(curriculum.CurriculumModelError, match="make model"):
        curriculum.curriculum_model_path("main", root=fake_repo)


def test_import_labkit_stays_light():
    code = "import sys, labkit; assert 'torch' not in sys.modules and 'labkit.curriculum' not in sys.modules; " \
           "from labkit import curriculum_model_path; print(curriculum_model_path.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "labkit.curriculum"

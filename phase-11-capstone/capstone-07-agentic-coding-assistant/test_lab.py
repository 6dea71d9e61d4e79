"""Grader for capstone 7 (agentic coding assistant). References: GNU ``patch`` and ``git apply``
on the same diffs (hypothesis-generated and the 40 QuixBugs fixes); the kernel's own limits
(``getrlimit`` read back inside the child, a grandchild that must die with its group, a network
namespace); QuixBugs' upstream tests as the held-out verdict. Nothing here lets pytest collect
the data mirror: every task is copied into a temp working copy first."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
FAST = dict(timeout_s=3.0, memory_bytes=512 << 20, cpu_s=10, max_output_bytes=50_000)


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        if IN_CI:
            pytest.fail(f"{tool} is missing under CI=true: .ci/run must install it (apt-get install -y {tool})")
        pytest.skip(f"{tool} not installed")


@pytest.fixture(scope="module")
def tasks(lab):
    return {t.name: t for t in lab.load_quixbugs()}


# ---------------------------------------------------------------------------------------------
# the working copy
# ---------------------------------------------------------------------------------------------
def test_every_tool_level_escape_is_refused(lab):
    with lab.Workspace.create({"conftest.py": "x = 1\n", "pkg/a.py": "print(1)\n"}) as ws:
        outcomes = lab.tool_attacks(ws, lab.build_coding_registry(ws))
    bad = [(o.name, o.how) for o in outcomes if not o.contained]
    assert not bad, (f"these escapes were not refused: {bad}. Workspace.resolve must refuse absolute paths, "
                     "'..' components, and anything whose os.path.realpath is not under the root (symlinks!)")


def test_resolve_allows_paths_inside_the_copy(lab, tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x\n")
    os.symlink("pkg/a.py", tmp_path / "alias.py")  # a symlink that stays inside is fine
    ws = lab.Workspace(tmp_path)
    root = Path(os.path.realpath(tmp_path))
    assert ws.resolve("pkg/a.py") == root / "pkg" / "a.py"
    assert ws.resolve("./pkg/./a.py") == root / "pkg" / "a.py"
    assert ws.resolve("alias.py") == root / "pkg" / "a.py", "a symlink that resolves INSIDE the copy is allowed"
    assert ws.resolve("new/file.py") == root / "new" / "file.py", "a path that does not exist yet is allowed"
    for bad in ("", "   ", "a\x00b", "/tmp", "..", "pkg/../../x"):
        with pytest.raises(lab.PathEscapeError):
            ws.resolve(bad)


# ---------------------------------------------------------------------------------------------
# the patch applier, against GNU patch and git apply
# ---------------------------------------------------------------------------------------------
def test_parse_unified_diff_hand_case(lab):
    diff = ("diff --git a/x.py b/x.py\nindex 1..2 100644\n--- a/x.py\n+++ b/x.py\n"
            "@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n@@ -9 +9,2 @@\n-z\n\\ No newline at end of file\n+z\n+w\n"
            "--- /dev/null\t2024-01-01 00:00:00\n+++ new.txt\n@@ -0,0 +1 @@\n+hello\n")
    fps = lab.parse_unified_diff(diff)
    assert [(f.old_path, f.new_path) for f in fps] == [("x.py", "x.py"), (None, "new.txt")], (
        "git's a/ b/ prefixes are stripped when both names carry them; /dev/null means None; a tab "
        "and a timestamp after the name are dropped")
    h1, h2 = fps[0].hunks
    assert (h1.old_start, h1.old_len, h1.new_start, h1.new_len) == (1, 3, 1, 3)
    assert h1.old_block() == ["a\n", "b\n", "c\n"] and h1.new_block() == ["a\n", "B\n", "c\n"]
    assert (h2.old_start, h2.old_len, h2.new_len) == (9, 1, 2), "'@@ -9 +9,2 @@': a missing length means 1"
    assert h2.old_block() == ["z"], "'\\ No newline at end of file' strips the newline of the line before it"
    assert h2.new_block() == ["z\n", "w\n"]
    assert fps[1].hunks[0].new_block() == ["hello\n"]


@pytest.mark.parametrize("bad", [
    "", "just prose, no diff at all\n",
    "--- a/x\n+++ b/x\n@@ -1,2 +1,2 @@\n a\n-b\n",            # hunk ends early
    "--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n+c\n",             # more lines than the header says
    "--- a/x\n+++ b/x\n@@ garbage @@\n-a\n",                   # bad header
    "--- a/x\n+++ b/x\n",                                      # no hunk
    "--- a/x\nnot a plus line\n",                              # --- without +++
    "diff --git a/x b/x\nGIT binary patch\nliteral 0\n",       # binary
    "--- a/x\n+++ b/x\n@@ -1 +1 @@\n*a\n+b\n",                 # bad line tag
])
def test_parse_rejects_malformed_diffs(lab, bad):
    with pytest.raises(lab.PatchError):
        lab.parse_unified_diff(bad)


_line = st.sampled_from(["a", "b", "c", "def f():", "    return 1", "", "x = 2"])
_text = st.lists(_line, max_size=14).flatmap(
    lambda ls: st.sampled_from(["\n".join(ls) + "\n" if ls else "", "\n".join(ls)]))


@st.composite
def _edit(draw):
    old = draw(_text)
    lines = old.split("\n")
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(lines)))
        op = draw(st.sampled_from(["ins", "del", "rep"]))
        if op == "ins" or not lines[i:i + 1]:
            lines.insert(i, draw(_line) + "!")
        elif op == "del":
            del lines[i]
        else:
            lines[i] = draw(_line) + "?"
    new = "\n".join(lines)
    return old, new


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_edit())
def test_apply_matches_gnu_patch_and_git_apply(lab, pair):
    _need("patch")
    _need("git")
    old, new = pair
    if old == new:
        return
    diff = lab.make_unified_diff(old, new, "pkg/m.py")
    fp = lab.parse_unified_diff(diff)[0]
    ours = "".join(lab.apply_hunks(lab.split_lines(old), fp.hunks))
    assert ours == new, f"our applier gave {ours!r}, expected {new!r} for diff:\n{diff}"
    gnu, git = lab.reference_apply(old, diff, "pkg/m.py", new)
    assert gnu and git, f"reference tools disagree with the expected text (GNU patch ok={gnu}, git ok={git}):\n{diff}"


def test_hunks_found_at_an_offset_like_gnu_patch(lab):
    _need("patch")
    _need("git")
    old = "".join(f"line {i}\n" for i in range(30))
    new = old.replace("line 20\n", "LINE 20\n")
    diff = lab.make_unified_diff(old, new, "f.txt")
    shifted_old = "header 1\nheader 2\nheader 3\n" + old.replace("line 5\n", "")  # net +2 lines before the hunk
    expected = shifted_old.replace("line 20\n", "LINE 20\n")
    got = "".join(lab.apply_hunks(lab.split_lines(shifted_old), lab.parse_unified_diff(diff)[0].hunks))
    assert got == expected, "a hunk whose context moved must be found at an offset (search near the header line)"
    assert all(lab.reference_apply(shifted_old, diff, "f.txt", expected)), "GNU patch / git apply disagree"


def test_conflicting_diff_is_refused_and_nothing_is_written(lab):
    _need("patch")
    _need("git")
    with lab.Workspace.create({"a.py": "one\ntwo\nthree\n", "b.py": "alpha\nbeta\n"}) as ws:
        good = lab.make_unified_diff("one\ntwo\nthree\n", "one\n2\nthree\n", "a.py")
        stale = lab.make_unified_diff("alpha\nBETA\n", "alpha\ngamma\n", "b.py")  # made from another version
        with pytest.raises(lab.PatchError):
            lab.apply_patch(ws, good + stale)
        assert (ws.root / "a.py").read_text() == "one\ntwo\nthree\n", (
            "a diff is all-or-nothing: a.py was written although b.py's hunk conflicted")
        assert lab.apply_patch(ws, good).startswith("patched a.py")
        assert (ws.root / "a.py").read_text() == "one\n2\nthree\n"
    assert all(lab.reference_apply("alpha\nbeta\n", stale, "b.py", None)), "GNU patch / git apply accepted it?"


def test_create_and_delete_files(lab):
    with lab.Workspace.create({"old.txt": "bye\n"}) as ws:
        out = lab.apply_patch(ws, "--- /dev/null\n+++ b/pkg/new.py\n@@ -0,0 +1,2 @@\n+x = 1\n+y = 2\n"
                                  "--- a/old.txt\n+++ /dev/null\n@@ -1 +0,0 @@\n-bye\n")
        assert (ws.root / "pkg" / "new.py").read_text() == "x = 1\ny = 2\n" and not (ws.root / "old.txt").exists()
        assert "created pkg/new.py" in out and "deleted old.txt" in out
        with pytest.raises(lab.PatchError, match="exists"):
            lab.apply_patch(ws, "--- /dev/null\n+++ b/pkg/new.py\n@@ -0,0 +1 @@\n+z\n")


def test_all_quixbugs_known_fixes_apply_like_the_references(lab, tasks):
    _need("patch")
    _need("git")
    rows = lab.patch_cross_check(list(tasks.values()))
    bad = [r for r in rows if not all(r[1:])]
    assert len(rows) == 40 and not bad, f"(task, ours ok, GNU patch ok, git apply ok) that failed: {bad}"


# ---------------------------------------------------------------------------------------------
# the sandbox
# ---------------------------------------------------------------------------------------------
def test_rlimits_are_set_in_the_child(lab):
    limits = lab.Limits(**FAST)
    src = ("import resource, json\nprint(json.dumps({k: resource.getrlimit(getattr(resource, k))[0] for k in "
           "('RLIMIT_AS', 'RLIMIT_CPU', 'RLIMIT_FSIZE', 'RLIMIT_CORE')}))\n")
    with lab.Workspace.create({"probe.py": src}) as ws:
        r = lab.run_sandboxed(ws, ["probe.py"], limits)
    assert r.ok, f"the probe failed: rc={r.returncode} killed={r.killed}\n{r.output[-500:]}"
    got = json.loads(r.output.strip().splitlines()[-1])
    assert got == {"RLIMIT_AS": limits.memory_bytes, "RLIMIT_CPU": limits.cpu_s,
                   "RLIMIT_FSIZE": limits.max_file_bytes, "RLIMIT_CORE": 0}, (
        f"the child's rlimits are {got}: apply_limits must run in the child (preexec_fn) and set them all")


def test_every_process_level_attack_is_refused_or_killed(lab, tmp_path):
    limits = lab.Limits(**{**FAST, "timeout_s": 1.5})
    lst = lab.listening_socket()
    try:
        outcomes = lab.process_attacks(limits, lst.port, str(tmp_path / "outside.txt"))
    finally:
        lst.sock.close()
    bad = [(o.name, o.how) for o in outcomes if not o.contained]
    assert not bad, f"escapes that were neither refused nor killed: {bad}"
    how = {o.name: o.how for o in outcomes}
    assert how["infinite loop"].startswith("killed: timeout"), how["infinite loop"]
    assert how["huge output"].startswith("killed: output_limit"), (
        f"{how['huge output']}: the reader must kill the group once more than max_output_bytes arrive")
    assert "MemoryError" in how["memory hog (8 GiB)"], "RLIMIT_AS must make an 8 GiB allocation fail"
    assert not (tmp_path / "outside.txt").exists()


def test_runaway_test_process_is_killed_at_its_limit(lab):
    limits = lab.Limits(**{**FAST, "timeout_s": 6.0})
    r, started = lab.runaway_test(limits)
    assert started, f"pytest never reached the test within 6 s (machine overloaded?): {r.output[-300:]}"
    assert r.killed == "timeout", f"a test that never returns must be killed by the deadline, got {r.killed}"
    assert 5.9 <= r.wall_s <= 6.0 + 3.0, f"killed after {r.wall_s:.2f}s for a 6 s limit"


def test_timeout_kills_the_whole_process_group(lab):
    """With the audit hook off (so the child may fork), a grandchild must die with its group."""
    src = ("import os, time\npid = os.fork()\nif pid == 0:\n    time.sleep(60)\n    os._exit(0)\n"
           "open('child.pid', 'w').write(str(pid))\nwhile True:\n    pass\n")
    limits = lab.Limits(**{**FAST, "timeout_s": 1.5, "python_guards": False})
    with lab.Workspace.create({"spawn.py": src}) as ws:
        r = lab.run_sandboxed(ws, ["spawn.py"], limits)
        pid = int((ws.root / "child.pid").read_text())
    assert r.killed == "timeout"
    for _ in range(50):
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            if state == "Z":
                break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the grandchild {pid} survived the timeout: kill the process GROUP (os.killpg), "
                    "and start the child in its own session")


def test_output_is_capped(lab):
    limits = lab.Limits(**{**FAST, "max_output_bytes": 10_000})
    with lab.Workspace.create({"spam.py": "import sys\nfor _ in range(100):\n    print('y' * 1000)\n"}) as ws:
        r = lab.run_sandboxed(ws, ["spam.py"], limits)
    assert r.killed == "output_limit" and len(r.output) <= 10_000, (r.killed, len(r.output))


def test_kernel_network_namespace_without_the_audit_hook(lab):
    if not lab.netns_available():
        if IN_CI:
            pytest.skip("unshare -rn is not permitted on this runner (no unprivileged user namespaces): "
                        "the audit hook is the only network guard here")
        pytest.skip("unshare -rn not available")
    lst = lab.listening_socket()
    src = (f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {lst.port}), timeout=2)\n"
           "    print('CONNECTED')\nexcept OSError as e:\n    print('BLOCKED', e.errno)\n")
    try:
        with lab.Workspace.create({"net.py": src}) as ws:
            r = lab.run_sandboxed(ws, ["net.py"], lab.Limits(**{**FAST, "python_guards": False}))
            r_open = lab.run_sandboxed(ws, ["net.py"], lab.Limits(**{**FAST, "python_guards": False,
                                                                     "network": True}))
    finally:
        lst.sock.close()
    assert "BLOCKED" in r.output and "network namespace" in r.network_isolation, (
        f"{r.output!r}: without network the child must run in a fresh network namespace (unshare -rn)")
    assert "CONNECTED" in r_open.output, f"with network=True the same probe should connect: {r_open.output!r}"


@pytest.mark.given
def test_bad_input_is_rejected(lab):
    for kw in ({"timeout_s": 0}, {"memory_bytes": 1}, {"cpu_s": -1}, {"max_output_bytes": float("nan")}):
        with pytest.raises(ValueError):
            lab.Limits(**kw)
    with pytest.raises(ValueError, match="not QuixBugs"):
        lab.load_quixbugs(["no_such_program"])
    with pytest.raises(ValueError):
        lab.Workspace("/definitely/not/a/dir")


# ---------------------------------------------------------------------------------------------
# the agent end to end
# ---------------------------------------------------------------------------------------------
@pytest.mark.given
def test_visible_tests_are_a_subset_of_the_held_out_ones(tasks):
    t = tasks["gcd"]
    vis = t.files(t.buggy, heldout=False)["json_testcases/gcd.json"].splitlines()
    held = t.files(t.buggy, heldout=True)["json_testcases/gcd.json"].splitlines()
    assert 0 < len(vis) < len(held) and set(vis) <= set(held)


def test_scripted_policy_fixes_tasks_end_to_end(lab, tasks):
    limits = lab.Limits(timeout_s=15.0)
    picked = [tasks[n] for n in ("gcd", "breadth_first_search")]  # JSON cases / Python-coded graph cases
    out = lab.run_eval(picked, lab.oracle_policy, limits=limits)
    for r in out["results"]:
        assert r.status == "answered" and r.tool_calls == 5 and r.tool_errors == 0, (
            f"{r.name}: {r}; every scripted tool call (list, read, patch, test, answer) should succeed")
        assert r.changed and r.heldout_pass, f"{r.name}: the patched program fails its held-out tests: {r}"
    assert out["success_rate"] == 1.0


def test_a_policy_that_claims_success_without_fixing_scores_zero(lab, tasks):
    m = lab.p7()
    liar = lambda t: m.ScriptedPolicy([m.tool_call_message(m.FINAL_ANSWER, {"answer": "fixed it!"})])  # noqa: E731
    out = lab.run_eval([tasks["flatten"]], liar, limits=lab.Limits(timeout_s=15.0))
    r = out["results"][0]
    assert r.status == "answered" and not r.changed
    assert not r.heldout_pass and out["success_rate"] == 0.0, (
        "success must come from the held-out tests, never from what the agent says")


class FakeChatClient:
    """Stands in for ``openai.OpenAI`` (same ``client.chat.completions.create`` surface and reply
    shape), replaying canned assistant replies: the LLM path's plumbing and scoring, without a
    model. The real model runs in ``python solution.py --eval`` (see the README)."""

    def __init__(self, replies):
        from types import SimpleNamespace as NS

        self.replies, self.requests = list(replies), []

        def create(**kw):
            self.requests.append(kw)
            r = self.replies[min(len(self.requests) - 1, len(self.replies) - 1)]
            calls = None
            if isinstance(r, dict):
                calls = [NS(id=f"fc{len(self.requests)}", type="function",
                            function=NS(name=r["name"], arguments=json.dumps(r["arguments"])))]
            return NS(choices=[NS(message=NS(content=r if isinstance(r, str) else None, tool_calls=calls))])

        self.chat = NS(completions=NS(create=create))


def test_llm_path_is_scored_by_the_held_out_tests(lab, tasks):
    t = tasks["gcd"]
    diff = lab.make_unified_diff(t.buggy, t.fixed, t.program)
    good = FakeChatClient([{"name": "read_file", "arguments": {"path": t.program}},
                           {"name": "apply_patch", "arguments": {"diff": diff}},
                           {"name": "final_answer", "arguments": {"answer": "done"}}])
    junk = FakeChatClient(["Once upon a time, there was a little dog named Max."])
    limits = lab.Limits(timeout_s=15.0)
    ok = lab.run_eval([t], lab.llm_policy_factory(good, "fake-good"), limits=limits, max_iterations=4)
    bad = lab.run_eval([t], lab.llm_policy_factory(junk, "fake-junk"), limits=limits, max_iterations=2)
    assert "tools" in good.requests[0] and good.requests[0]["model"] == "fake-good", (
        "the policy should offer the tools natively (tools=) to an OpenAI-compatible server")
    r = ok["results"][0]
    assert r.status == "answered" and r.changed and r.heldout_pass and ok["success_rate"] == 1.0, r
    r = bad["results"][0]
    assert r.output_errors == 2 and not r.changed and not r.heldout_pass and bad["success_rate"] == 0.0, (
        f"{r}: a model that writes stories instead of tool calls must score 0, with its invalid outputs counted")


def test_mirror_is_never_collected(lab, tasks):
    """The working copy holds copies; nothing points back into the mirror."""
    t = tasks["gcd"]
    with lab.Workspace.create(t.files(t.buggy, heldout=False)) as ws:
        links = [p for p in ws.root.rglob("*") if p.is_symlink()]
        assert not links and "shared/data" not in str(ws.root)


@pytest.mark.given
def test_known_fixes_touch_only_a_few_lines(lab, tasks):
    """The scripted policy's diffs are the QuixBugs defects, not a rewrite of the file."""
    sizes = {n: lab._changed_lines(t) for n, t in tasks.items()}
    big = {n: s for n, s in sizes.items() if sum(int(x[1:]) for x in s.split()) > 4}
    assert len(sizes) == 40 and not big, big

"""Root pytest configuration: the ``lab`` fixture, markers, and TA-style TODO reporting.

``lab`` is the module under test: ``solution.py`` of the test file's folder by default,
``lab.py`` when ``LAB_TARGET=lab`` (what ``make check`` sets). A test that hits a
``NotImplementedError("TODO(k)")`` is reported as "TODO(k) not done yet" with the hint from
lab.py, instead of a traceback.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

try:  # property-based tests are deterministic: the same examples on every run and in CI
    from hypothesis import settings as _hyp_settings

    _hyp_settings.register_profile("curriculum", derandomize=True, deadline=None, database=None)
    _hyp_settings.load_profile("curriculum")
except ImportError:  # hypothesis is only needed by the labs that use it
    pass

from labkit.labgen import todo_hints
from labkit.loader import load_lab

TODO_RE = re.compile(r"^TODO\((\d+)\)$")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than ~30 s on a laptop CPU")
    config.addinivalue_line("markers", "gpu: needs CUDA; skipped when no GPU is present")
    config.addinivalue_line("markers", "given: exercises only code the learner is given (validation, "
                            "loaders); `make progress` leaves it out of the count")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def lab_target() -> str:
    target = os.environ.get("LAB_TARGET", "solution")
    if target not in ("solution", "lab"):
        raise pytest.UsageError(f"LAB_TARGET must be 'solution' or 'lab', got {target!r}")
    return target


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest):
    """The lab module under test (solution.py, or lab.py with LAB_TARGET=lab)."""
    return load_lab(Path(request.path).parent / f"{lab_target()}.py")


def _todo_of(excinfo: pytest.ExceptionInfo) -> int | None:
    exc = excinfo.value
    seen = set()
    while exc is not None and id(exc) not in seen:  # the TODO may be wrapped by other errors
        seen.add(id(exc))
        if isinstance(exc, NotImplementedError) and exc.args and TODO_RE.match(str(exc.args[0])):
            return int(TODO_RE.match(str(exc.args[0]))[1])
        exc = exc.__cause__ or exc.__context__
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is None or report.passed:
        return
    k = _todo_of(call.excinfo)
    if k is None:
        return
    lab_py = Path(item.path).parent / "lab.py"
    hint = todo_hints(lab_py.read_text(encoding="utf-8")).get(k, "") if lab_py.is_file() else ""
    report.longrepr = f"TODO({k}) not done yet" + (f": {hint}" if hint else "") + f"  [{lab_py}]"


@pytest.fixture(scope="session")
def llm_endpoint():
    """A real OpenAI-compatible server over the curriculum model ("main"), on 127.0.0.1 and a free
    port for the whole test session (:mod:`labkit.llm_server`): ``.base_url``, ``.model``,
    ``.client()`` (an ``openai.OpenAI``)."""
    from labkit.llm_server import serve_in_thread

    with serve_in_thread("main") as endpoint:
        yield endpoint

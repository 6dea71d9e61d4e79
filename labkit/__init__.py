"""labkit: the few helpers several labs share.

Only what more than one lab needs lives here: loading a lab module by path
(:mod:`labkit.loader`), the dataset registry (:mod:`labkit.data`), seeding
(:mod:`labkit.seed`), timing (:mod:`labkit.timing`), PNG plots (:mod:`labkit.plots`) and
offline tiktoken (:mod:`labkit.tiktoken_offline`), and the path of the curriculum's own
trained model (:func:`labkit.curriculum.curriculum_model_path`, imported on first use), and a small
OpenAI-compatible server over that model (:mod:`labkit.llm_server`, imported only when used), the "LLM
endpoint" that Phases 6-8 talk to through the real ``openai`` client. Everything a lab *teaches* lives
in that lab's own folder. Importing ``labkit`` pulls in the standard library only; the plotting
and tiktoken helpers import their libraries when first used.
"""
from labkit.data import DataError, dataset_path, read_text
from labkit.loader import REPO_ROOT, load_lab, resolve_lab
from labkit.seed import seed_everything
from labkit.timing import Timing, benchmark

__all__ = [
    "REPO_ROOT",
    "DataError",
    "Timing",
    "benchmark",
    "dataset_path",
    "load_lab",
    "read_text",
    "resolve_lab",
    "curriculum_model_path",
    "seed_everything",
]


def __getattr__(name: str):
    # lazy: ``from labkit import curriculum_model_path`` imports labkit.curriculum only when asked
    if name == "curriculum_model_path":
        from labkit.curriculum import curriculum_model_path

        return curriculum_model_path
    raise AttributeError(f"module 'labkit' has no attribute {name!r}")

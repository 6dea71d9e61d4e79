"""lm-eval helpers for the lab's task YAMLs (``--include_path`` this folder).

``load_*`` are ``custom_dataset`` callables: they read the offline mirror through the lab's own
loaders (so lm-eval and our harness see the very same documents in the very same order) and
return a ``datasets.DatasetDict``. The winogrande functions follow lm-eval's own
``tasks/winogrande/preprocess_winogrande.py`` (partial scoring: one context per option, a shared
continuation); they are written here from that recipe, not imported from the lab.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import datasets

_LAB_FILE = Path(__file__).resolve().parents[1] / "solution.py"
_MODULE = "lab_08_01_eval_harness_data"


def _lab():
    if _MODULE not in sys.modules:
        spec = importlib.util.spec_from_file_location(_MODULE, _LAB_FILE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[_MODULE] = module
        spec.loader.exec_module(module)
    return sys.modules[_MODULE]


def _dataset_dict(task: str) -> datasets.DatasetDict:
    lab = _lab()
    eval_docs, fewshot_docs = lab.load_docs(task)
    return datasets.DatasetDict({
        "test": datasets.Dataset.from_list(eval_docs),
        "train": datasets.Dataset.from_list(fewshot_docs),
    })


def load_mmlu(**kwargs) -> datasets.DatasetDict:
    return _dataset_dict("mmlu")


def load_hellaswag(**kwargs) -> datasets.DatasetDict:
    return _dataset_dict("hellaswag")


def load_arc_easy(**kwargs) -> datasets.DatasetDict:
    return _dataset_dict("arc_easy")


def load_winogrande(**kwargs) -> datasets.DatasetDict:
    return _dataset_dict("winogrande")


def load_gsm8k(**kwargs) -> datasets.DatasetDict:
    return _dataset_dict("gsm8k")


def winogrande_text(doc: dict) -> int:
    # the gold index: lm-eval's partial evaluation puts the answer in the *context*
    return {"1": 0, "2": 1}[doc["answer"]]


def winogrande_target(doc: dict) -> str:
    blank = doc["sentence"].index("_") + 1
    return doc["sentence"][blank:].strip()


def winogrande_choices(doc: dict) -> list[str]:
    blank = doc["sentence"].index("_")
    return [doc["sentence"][:blank] + option for option in (doc["option1"], doc["option2"])]

# Generated from solution.py by `make labs` (labkit/labgen.py). Fill in the TODOs.
"""Lab 8.1: an evaluation harness that agrees with lm-evaluation-harness, item by item.

    python solution.py --model <hf-folder-or-id> --tasks mmlu,hellaswag,arc_easy,winogrande,gsm8k \
        --limit N --num-fewshot K --batch-size B [--full] [--output results.json]

What it does, the way EleutherAI's lm-eval does it (so the two can be compared request by request):

- **Likelihood multiple choice** (MMLU, HellaSwag, ARC-Easy, WinoGrande). A document becomes one
  request per choice, ``(context, continuation)``; the score of a choice is the *summed* log-prob
  of the continuation's tokens given the context. ``acc`` = the argmax choice is gold;
  ``acc_norm`` = the argmax of ``loglik / len(choice in characters)`` is gold (lm-eval's
  definition: characters of the choice string, not tokens). WinoGrande uses *partial scoring*:
  two contexts (the sentence up to the blank, filled with each option) and one shared
  continuation (the rest of the sentence).
- **Generation** (GSM8K): greedy decoding until ``"Question:"`` (or EOS, or ``max_gen_toks``),
  then lm-eval's two answer filters: ``strict-match`` (the number after ``#### ``) and
  ``flexible-extract`` (the last number-looking string), scored by exact match after stripping
  commas, ``$``, everything up to ``#### `` and a trailing period.
- **Few-shot prompts**: ``description + (shot_question + " " + shot_answer + "\\n\\n") * K +
  question``; the K shots are the first K documents of the task's few-shot split (lm-eval's
  ``first_n`` sampler, which is what MMLU's canonical dev exemplars use).
- **Tokenisation conventions** (lm-eval's ``HFLM``): trailing spaces of the context move to the
  continuation; the continuation's tokens are ``encode(context + continuation)[len(encode(context)):]``;
  an empty context is replaced by the prefix token (BOS, else EOS: id 0 for the curriculum model,
  whose tokenizer adds no BOS of its own); a request longer than the model's window keeps its
  last ``max_length + 1`` tokens (left truncation) and drops the final one as input.
- **Batched scoring**: requests are right-padded into batches; because the model is causal the
  padding sits *after* every real token and cannot change it, so per-item log-likelihoods are
  the same for batch sizes 1, 8 and 32 (to float round-off, checked at 1e-5).
- **Result cache**: one JSON line per scored request, keyed by (model fingerprint, request);
  a re-run only computes what is missing.
- **Bootstrap 95% CIs** over documents, and a JSON results file.

Data: the offline mirror through ``labkit.dataset_path`` (MMLU hendrycks CSVs, HellaSwag's
preprocessed validation text, ARC-Easy jsonl, WinoGrande 1.1 dev, GSM8K jsonl). The matching lm-eval
task YAMLs are in ``tasks/`` (``--include_path tasks``); the grader runs ``lm_eval.simple_evaluate``
on them and compares every log-likelihood.

Public API (Phase 8's other labs and Phase 10 import this by path)::

    ev = load_lab("phase-08-evaluation-safety/lab-01-eval-harness")
    res = ev.evaluate(model_path, ["arc_easy", "gsm8k"], limit=20, num_fewshot=1, batch_size=8)
    res["results"]["arc_easy"]["acc"], res["results"]["arc_easy"]["acc_ci"]
    model, tok = ev.load_model(path); ev.loglikelihoods(model, tok, [("ctx", " cont"), ...])

Run: ``python solution.py`` (self-test on the curriculum model, small mode, about 30 s on one core).
"""
from __future__ import annotations

import argparse
import bz2
import csv
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
TASKS_DIR = HERE / "tasks"
OUTPUTS = HERE / "outputs"
ALL_TASKS = ("mmlu", "hellaswag", "arc_easy", "winogrande", "gsm8k")
HELD_OUT_FEWSHOT = 100      # HellaSwag / WinoGrande: the first 100 items are the few-shot pool
GSM8K_STOP = ("Question:", "</s>", "<|im_end|>")
GSM8K_MAX_GEN_TOKS = 32     # lm-eval's default is 256, which a 256-token model cannot afford
STRICT_RE = r"#### (\-?[0-9\.\,]+)"
FLEXIBLE_RE = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"
EXACT_MATCH_IGNORE = (",", r"\$", r"(?s).*#### ", r"\.$")
INVALID = "[invalid]"

__all__ = [
    "ALL_TASKS", "ResultCache", "TaskSpec", "TASKS", "bootstrap_ci", "build_requests", "continuation_logprob",
    "encode_pair", "evaluate", "exact_match", "extract_answer", "fewshot_context", "generate_until",
    "load_docs", "load_model", "loglikelihoods", "main", "mcq_metrics", "model_fingerprint", "compare_with_lm_eval",
]


# --------------------------------------------------------------------------------------------
# Data: the mirror's files -> lists of plain dicts (given)
# --------------------------------------------------------------------------------------------

def _mirror(dataset: str, file: str) -> Path:
    from labkit import dataset_path

    return dataset_path(dataset, file)


def _mmlu_rows(split: str) -> list[dict]:
    from labkit.data import registry

    files = sorted(f for f in registry()["mmlu"]["files"] if f.startswith(f"{split}/") and f.endswith(".csv"))
    docs = []
    for file in files:
        subject = Path(file).stem.rsplit(f"_{split}", 1)[0]
        with open(_mirror("mmlu", file), encoding="utf-8", newline="") as fh:
            for row in csv.reader(fh):
                if len(row) != 6:
                    raise ValueError(f"MMLU {file}: expected 6 columns, got {len(row)}")
                docs.append({"question": row[0], "choices": row[1:5], "answer": "ABCD".index(row[5].strip()),
                             "subject": subject.replace("_", " ")})
    return docs


def _arc_rows(file: str) -> list[dict]:
    docs = []
    for line in _mirror("arc-easy", file).read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        labels = [c["label"] for c in item["question"]["choices"]]
        docs.append({"id": item["id"], "question": item["question"]["stem"],
                     "choices": [c["text"] for c in item["question"]["choices"]],
                     "answer": labels.index(item["answerKey"])})
    return docs


def _hellaswag_rows() -> list[dict]:
    lines = bz2.decompress(_mirror("hellaswag", "hellaswag_val_full.txt.bz2").read_bytes()).decode("utf-8")
    lines = lines.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise ValueError(f"HellaSwag text: {len(lines)} lines is not a multiple of 6 (ctx, label, 4 endings)")
    return [{"query": lines[i].strip(), "choices": [e.strip() for e in lines[i + 2:i + 6]], "answer": int(lines[i + 1])}
            for i in range(0, len(lines), 6)]


def _winogrande_rows() -> list[dict]:
    text = _mirror("winogrande", "dev.jsonl").read_text(encoding="utf-8")
    return [{k: d[k] for k in ("qID", "sentence", "option1", "option2", "answer")}
            for d in map(json.loads, text.splitlines())]


def _gsm8k_rows(file: str) -> list[dict]:
    text = _mirror("gsm8k", file).read_text(encoding="utf-8")
    return [{"question": d["question"], "answer": d["answer"]} for d in map(json.loads, text.splitlines())]


def load_docs(task: str) -> tuple[list[dict], list[dict]]:
    """``(eval_docs, fewshot_docs)`` of ``task`` (cached; returns fresh lists), see :func:`_load_docs`."""
    eval_docs, fewshot_docs = _load_docs(task)
    return list(eval_docs), list(fewshot_docs)


@cache
def _load_docs(task: str) -> tuple[list[dict], list[dict]]:
    """``(eval_docs, fewshot_docs)`` of ``task``, in a fixed order (``--limit N`` takes the first N).

    MMLU: test rows / dev rows, subjects in alphabetical order (so a small limit stays inside
    one subject and its dev exemplars are the first few-shot rows). ARC-Easy: test / train.
    GSM8K: test / train. HellaSwag and WinoGrande have only their validation/dev files in the
    mirror: the first 100 items are the few-shot pool, the rest are evaluated.

    Raises:
        ValueError: unknown task.
    """
    if task == "mmlu":
        return _mmlu_rows("test"), _mmlu_rows("dev")
    if task == "arc_easy":
        return _arc_rows("ARC-Easy-Test.jsonl"), _arc_rows("ARC-Easy-Train.jsonl")
    if task == "gsm8k":
        return _gsm8k_rows("test.jsonl"), _gsm8k_rows("train.jsonl")
    if task == "hellaswag":
        rows = _hellaswag_rows()
        return rows[HELD_OUT_FEWSHOT:], rows[:HELD_OUT_FEWSHOT]
    if task == "winogrande":
        rows = _winogrande_rows()
        return rows[HELD_OUT_FEWSHOT:], rows[:HELD_OUT_FEWSHOT]
    raise ValueError(f"unknown task {task!r}; choose from {', '.join(ALL_TASKS)}")


# --------------------------------------------------------------------------------------------
# Task formats (given): the same strings as tasks/eh_*.yaml
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TaskSpec:
    """How a task turns a document into text. ``kind``: "mcq", "partial" (WinoGrande) or "generate"."""
    name: str
    kind: str
    metrics: tuple[str, ...]
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"

    def description(self, doc: dict) -> str:
        if self.name == "mmlu":
            return f"The following are multiple choice questions (with answers) about {doc['subject']}.\n\n"
        return ""

    def question(self, doc: dict) -> str:
        """The text of the document without its answer (for "partial": the gold-filled sentence prefix)."""
        if self.name == "mmlu":
            c = doc["choices"]
            return f"{doc['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:"
        if self.name in ("arc_easy", "gsm8k"):
            return f"Question: {doc['question']}\nAnswer:"
        if self.name == "hellaswag":
            return doc["query"]
        if self.name == "winogrande":
            return self.choices(doc)[self.gold(doc)]
        raise ValueError(self.name)

    def choices(self, doc: dict) -> list[str]:
        """MCQ: the answer strings; partial: the contexts (one per option)."""
        if self.name == "mmlu":
            return ["A", "B", "C", "D"]
        if self.name in ("arc_easy", "hellaswag"):
            return list(doc["choices"])
        if self.name == "winogrande":
            blank = doc["sentence"].index("_")
            return [doc["sentence"][:blank] + doc["option1"], doc["sentence"][:blank] + doc["option2"]]
        raise ValueError(f"{self.name} has no choices")

    def gold(self, doc: dict) -> int:
        if self.name == "winogrande":
            return {"1": 0, "2": 1}[doc["answer"]]
        return int(doc["answer"])

    def answer(self, doc: dict) -> str:
        """The answer text a few-shot example shows after the target delimiter."""
        if self.name == "gsm8k":
            return doc["answer"]
        if self.name == "winogrande":
            blank = doc["sentence"].index("_") + 1
            return doc["sentence"][blank:].strip()
        return self.choices(doc)[self.gold(doc)]


TASKS: dict[str, TaskSpec] = {
    "mmlu": TaskSpec("mmlu", "mcq", ("acc", "acc_norm")),
    "hellaswag": TaskSpec("hellaswag", "mcq", ("acc", "acc_norm")),
    "arc_easy": TaskSpec("arc_easy", "mcq", ("acc", "acc_norm")),
    "winogrande": TaskSpec("winogrande", "partial", ("acc",)),
    "gsm8k": TaskSpec("gsm8k", "generate", ("exact_match_strict", "exact_match_flexible")),
}


def _spec(task: str | TaskSpec) -> TaskSpec:
    if isinstance(task, TaskSpec):
        return task
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(ALL_TASKS)}")
    return TASKS[task]


# --------------------------------------------------------------------------------------------
# Prompt building
# --------------------------------------------------------------------------------------------

def fewshot_context(task: str | TaskSpec, doc: dict, num_fewshot: int, fewshot_docs: Sequence[dict]) -> str | list[str]:
    """The prompt for ``doc``: description, ``num_fewshot`` solved examples, then the question.

    Layout (lm-eval's plain-text rendering)::

        description + for each shot: question(shot) + target_delimiter + answer(shot) + fewshot_delimiter
                    + question(doc)

    The shots are ``fewshot_docs[:num_fewshot]`` (the ``first_n`` sampler). For a "partial" task
    (WinoGrande) a shot's question is its gold-filled context, and the return value is one
    prompt per choice: ``prefix + choice`` for each of ``spec.choices(doc)``.

    Args:
        task: a name of :data:`TASKS` or a :class:`TaskSpec`.
        doc: the document to ask about.
        num_fewshot: K >= 0.
        fewshot_docs: the few-shot pool (at least K documents).

    Returns:
        str (one context) or list[str] (partial scoring: one context per choice).

    Raises:
        ValueError: negative ``num_fewshot`` or a pool smaller than it.
    """
    spec = _spec(task)
    if num_fewshot < 0:
        raise ValueError(f"num_fewshot must be >= 0, got {num_fewshot}")
    if num_fewshot > len(fewshot_docs):
        raise ValueError(f"num_fewshot={num_fewshot} but the few-shot pool has only {len(fewshot_docs)} documents")
    # TODO(1): prefix = spec.description(doc) + "".join(question(shot) + target_delimiter + answer(shot) + fewshot_delimiter for the first K shots); "partial": [prefix + c for c in spec.choices(doc)], else prefix + spec.question(doc) (medium, ~15 min)
    raise NotImplementedError("TODO(1)")


def build_requests(task: str | TaskSpec, doc: dict, num_fewshot: int,
                   fewshot_docs: Sequence[dict]) -> list[tuple[str, str]]:
    """The ``(context, continuation)`` log-likelihood requests for one MCQ / partial document (given).

    MCQ: ``(context, " " + choice)`` per choice. Partial: ``(context_i, " " + shared_target)``.
    """
    spec = _spec(task)
    ctx = fewshot_context(spec, doc, num_fewshot, fewshot_docs)
    if spec.kind == "partial":
        return [(c, spec.target_delimiter + spec.answer(doc)) for c in ctx]
    if spec.kind == "mcq":
        return [(ctx, spec.target_delimiter + choice) for choice in spec.choices(doc)]
    raise ValueError(f"{spec.name} is a generation task: it has no log-likelihood requests")


# --------------------------------------------------------------------------------------------
# Model, tokenisation, scoring
# --------------------------------------------------------------------------------------------

def load_model(path: str | os.PathLike, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)`` from an HF folder or hub id (given). ``model.eval()``, no grad."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    return model, tok


def max_length(model, tok) -> int:
    """The model's context window, resolved like lm-eval does (config, then tokenizer, then 2048) (given)."""
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(model.config, attr, None)
        if value:
            return int(value)
    if tok is not None and 0 < getattr(tok, "model_max_length", 0) < 10**12:
        return int(tok.model_max_length)
    return 2048


def prefix_token_id(tok) -> int:
    """The token that stands in for an empty context: BOS if the tokenizer has one, else EOS (given)."""
    return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id


def encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids ``(context_ids, continuation_ids)`` for one request, lm-eval's way.

    1. Empty context: ``context_ids = [prefix_token_id(tok)]`` and the continuation is encoded
       alone (if it already starts with that token, that first token becomes the context).
    2. Otherwise move trailing whitespace of the context to the front of the continuation, encode
       ``context + continuation`` *together* and split at ``len(encode(context))``, so the
       continuation's tokens are exactly the ones the model sees in the full text.
    No special tokens are added (the curriculum tokenizer adds none anyway).

    Raises:
        ValueError: empty continuation, or one that tokenises to nothing after the split.
    """
    if not continuation:
        raise ValueError("empty continuation: there is nothing to score")
    # TODO(2): empty context -> ([prefix_token_id], encode(cont)) (or split off its first token if it IS the prefix token); else n = trailing spaces, move them to the continuation, whole = encode(ctx + cont), ctx_ids = encode(ctx), cont_ids = whole[len(ctx_ids):], ValueError if that is empty (medium, ~15 min)
    raise NotImplementedError("TODO(2)")


def continuation_logprob(log_probs: torch.Tensor, inplen: int, cont_ids: Sequence[int]) -> tuple[float, bool]:
    """Summed log-prob of the continuation from one row of a batch, and whether greedy decoding picks it.

    ``log_probs`` is ``[padded_len, vocab]`` float: ``log_softmax`` of the logits for an input of
    ``inplen`` real tokens (then right padding). Position ``t`` predicts token ``t + 1`` of the
    *unshifted* sequence, so the ``n = len(cont_ids)`` continuation tokens are predicted by rows
    ``inplen - n .. inplen - 1``: take those rows and gather ``cont_ids``.

    Returns:
        (sum of the n log-probs as a Python float, all(argmax of each row == its token)).
    """
    n = len(cont_ids)
    # TODO(3): rows = log_probs[inplen - n:inplen]; target = tensor(cont_ids); ll = rows.gather(-1, target[:, None]).sum(); greedy = bool((rows.argmax(-1) == target).all()) (medium, ~10 min)
    raise NotImplementedError("TODO(3)")


def _check_requests(requests: Sequence[tuple[str, str]]) -> None:
    if not isinstance(requests, (list, tuple)):
        raise TypeError(f"requests must be a list of (context, continuation) pairs, got {type(requests).__name__}")
    for i, req in enumerate(requests):
        if not (isinstance(req, (list, tuple)) and len(req) == 2 and all(isinstance(s, str) for s in req)):
            raise TypeError(f"request {i} must be a (context: str, continuation: str) pair, got {req!r}")


@torch.no_grad()
def loglikelihoods(model, tok, requests: Sequence[tuple[str, str]], batch_size: int = 8) -> list[tuple[float, bool]]:
    """Score ``(context, continuation)`` requests: ``[(summed log-prob, is_greedy), ...]`` in input order.

    For each request: ``encode_pair``, then ``ids = (ctx + cont)[-(max_len + 1):][:-1]`` (left
    truncation to the model's window; the last token is only ever a target). Requests are
    scored ``batch_size`` at a time, each row right-padded to the longest in the batch with the
    pad id (no attention mask is needed: causal attention never looks right). One forward pass
    gives ``log_softmax`` over the vocabulary (float32); :func:`continuation_logprob` reads
    each row at its own ``inplen``.

    Args:
        model: a causal LM (``model(input_ids).logits`` is ``[B, T, V]``).
        tok: its tokenizer.
        requests: list of (context, continuation) strings; continuation non-empty.
        batch_size: >= 1. The results do not depend on it (beyond float round-off).

    Raises:
        TypeError: requests not a list of string pairs. ValueError: batch_size < 1, empty continuation.
    """
    _check_requests(requests)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    window = max_length(model, tok)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    device = next(model.parameters()).device
    encoded = [encode_pair(tok, ctx, cont) for ctx, cont in requests]
    out: list[tuple[float, bool]] = []
    # TODO(4): per chunk of batch_size: inp = (ctx + cont)[-(window + 1):][:-1] (check len(cont) <= window); right-pad to the longest with pad_id; log_probs = log_softmax(model(input_ids=batch).logits.float(), -1); out.append(continuation_logprob(log_probs[i], len(inp_i), cont_i)) (hard, ~30 min)
    raise NotImplementedError("TODO(4)")
    return out


def mcq_metrics(lls: Sequence[float], choices: Sequence[str], gold: int) -> dict[str, float]:
    """``{"acc", "acc_norm"}`` for one document from its per-choice log-likelihoods.

    ``acc``: 1.0 if ``argmax(lls) == gold``. ``acc_norm``: 1.0 if ``argmax(lls / len(choice))``
    is gold, where ``len`` counts the *characters* of each choice string (lm-eval's
    convention). Ties go to the first index (``np.argmax``).

    Raises:
        ValueError: lengths differ, NaN log-likelihood, gold out of range.
    """
    lls = np.asarray(lls, dtype=np.float64)
    if lls.shape != (len(choices),) or len(choices) == 0:
        raise ValueError(f"{lls.size} log-likelihoods for {len(choices)} choices")
    if np.isnan(lls).any():
        raise ValueError("NaN log-likelihood: check the model's output")
    if not 0 <= gold < len(choices):
        raise ValueError(f"gold index {gold} out of range for {len(choices)} choices")
    # TODO(5): lengths = float characters of each choice; acc = argmax(lls) == gold; acc_norm = argmax(lls / lengths) == gold (easy, ~5 min)
    raise NotImplementedError("TODO(5)")


# --------------------------------------------------------------------------------------------
# Generation and GSM8K answer extraction
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def generate_until(model, tok, context: str, until: Sequence[str] = GSM8K_STOP,
                   max_gen_toks: int = GSM8K_MAX_GEN_TOKS) -> str:
    """Greedy continuation of ``context`` cut before the first stop string (lm-eval's ``generate_until``).

    The context is encoded without special tokens and left-truncated to ``window - max_gen_toks``
    tokens; then at most ``max_gen_toks`` greedy tokens, stopping early at EOS or once a stop
    string appears in the decoded new text; the text is decoded with special tokens skipped and
    cut at the first occurrence of each stop string. One prompt at a time: no padding, so no
    padding-dependent answers (batched generation needs left padding plus position ids).

    Raises:
        ValueError: ``max_gen_toks`` < 1 or >= the window; empty context.
    """
    window = max_length(model, tok)
    if not 1 <= max_gen_toks < window:
        raise ValueError(f"max_gen_toks must be in [1, {window - 1}], got {max_gen_toks}")
    if not context:
        raise ValueError("empty context")
    device = next(model.parameters()).device
    ids = tok.encode(context, add_special_tokens=False)[-(window - max_gen_toks):]
    eos = tok.eos_token_id
    # TODO(6): loop max_gen_toks times with a KV cache: out = model(input_ids=..., past_key_values=past, use_cache=True); next = out.logits[0, -1].argmax(); stop at eos; append; stop once any stop string is in tok.decode(new, skip_special_tokens=True); finally cut the decoded text at each stop string in turn (medium, ~20 min)
    raise NotImplementedError("TODO(6)")


def extract_answer(text: str, mode: str = "strict") -> str:
    """lm-eval's GSM8K answer filters.

    ``strict``: the first match of ``#### (-?[0-9.,]+)`` (group 1). ``flexible``: all matches of
    ``(-?[$0-9.,]{2,})|(-?[0-9]+)``, take the *last* one, and within it the first non-empty
    group. Either way the result is ``.strip()``-ed; no match gives ``"[invalid]"``.

    Raises:
        ValueError: unknown mode. TypeError: text not a str.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if mode not in ("strict", "flexible"):
        raise ValueError(f"mode must be 'strict' or 'flexible', got {mode!r}")
    # TODO(7): re.findall with STRICT_RE (take matches[0]) or FLEXIBLE_RE (take matches[-1]); a tuple match -> its first non-empty group (none -> INVALID); strip; no match -> INVALID (easy, ~10 min)
    raise NotImplementedError("TODO(7)")


def exact_match(prediction: str, reference: str) -> float:
    """GSM8K's exact match (given): drop ``,``, ``$``, anything up to ``#### `` and a final ``.``, lower-case, compare."""
    for pattern in EXACT_MATCH_IGNORE:
        prediction = re.sub(pattern, "", prediction)
        reference = re.sub(pattern, "", reference)
    return float(prediction.lower() == reference.lower())


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------

def bootstrap_ci(values: Sequence[float], n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean: resample the items with replacement ``n_boot`` times.

    ``rng = np.random.default_rng(seed)``; ``idx = rng.integers(0, n, size=(n_boot, n))``; the
    means of ``values[idx]`` along axis 1; return their ``alpha/2`` and ``1 - alpha/2``
    quantiles. One item gives ``(v, v)``.

    Raises:
        ValueError: empty values, NaN, n_boot < 1, alpha outside (0, 1).
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("bootstrap_ci needs a non-empty 1-D sequence of per-item scores")
    if np.isnan(x).any():
        raise ValueError("NaN in the per-item scores")
    if n_boot < 1 or not 0 < alpha < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < alpha < 1, got {n_boot}, {alpha}")
    # TODO(8): idx = default_rng(seed).integers(0, n, (n_boot, n)); means = x[idx].mean(1); return the alpha/2 and 1 - alpha/2 quantiles as floats (easy, ~10 min)
    raise NotImplementedError("TODO(8)")


# --------------------------------------------------------------------------------------------
# Result cache and the evaluation loop (given)
# --------------------------------------------------------------------------------------------

def model_fingerprint(path: str | os.PathLike) -> str:
    """A short hash of a model folder's config and weights (a hub id hashes its name)."""
    p = Path(path)
    h = hashlib.sha256()
    if not p.is_dir():
        h.update(str(path).encode())
        return h.hexdigest()[:16]
    for f in sorted(p.iterdir()):
        if f.is_file() and f.suffix in (".json", ".safetensors", ".bin", ".model", ".txt"):
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


class ResultCache:
    """Append-only JSON-lines cache of scored requests: ``key -> result`` (given).

    The key is a sha256 of (model fingerprint, request kind, request payload), so a re-run with the
    same model and prompts hits, and any change to the weights, the prompt or the few-shot count
    misses. ``path=None`` keeps it in memory only.
    """

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path is not None else None
        self.data: dict[str, Any] = {}
        self.hits = 0
        self.misses = 0
        if self.path is not None and self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.data[row["key"]] = row["value"]

    @staticmethod
    def key(fingerprint: str, kind: str, payload: Any) -> str:
        return hashlib.sha256(json.dumps([fingerprint, kind, payload], ensure_ascii=False).encode()).hexdigest()

    def get(self, key: str) -> Any:
        if key in self.data:
            self.hits += 1
            return self.data[key]
        self.misses += 1
        return None

    def put_many(self, items: dict[str, Any]) -> None:
        self.data.update(items)
        if self.path is not None and items:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                for k, v in items.items():
                    fh.write(json.dumps({"key": k, "value": v}, ensure_ascii=False) + "\n")


def _score_cached(model, tok, fingerprint: str, requests: list[tuple[str, str]], batch_size: int,
                  cache: ResultCache) -> list[tuple[float, bool]]:
    keys = [ResultCache.key(fingerprint, "loglikelihood", list(r)) for r in requests]
    found = [cache.get(k) for k in keys]
    todo = [i for i, v in enumerate(found) if v is None]
    if todo:
        fresh = loglikelihoods(model, tok, [requests[i] for i in todo], batch_size=batch_size)
        cache.put_many({keys[i]: list(v) for i, v in zip(todo, fresh)})
        for i, v in zip(todo, fresh):
            found[i] = list(v)
    return [(float(v[0]), bool(v[1])) for v in found]


def evaluate(model_path: str | os.PathLike, tasks: Sequence[str] = ALL_TASKS, limit: int | None = 20,
             num_fewshot: int = 0, batch_size: int = 8, cache_path: str | os.PathLike | None = None,
             n_boot: int = 2000, seed: int = 0, model_and_tokenizer=None,
             max_gen_toks: int = GSM8K_MAX_GEN_TOKS) -> dict:
    """Run ``tasks`` on a model and return the results dictionary (also what the CLI writes as JSON).

    Returns ``{"config": {...}, "results": {task: {metric: value, metric + "_ci": [lo, hi], "n": n}},
    "samples": {task: [{"doc_id", "gold", "lls" | "generation", "strict", "flexible", metrics...}]},
    "cache": {"hits", "misses"}}``. ``limit=None`` evaluates every document.

    Raises:
        ValueError: unknown task, limit < 1, num_fewshot < 0, batch_size < 1.
    """
    tasks = list(tasks)
    for t in tasks:
        _spec(t)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    if num_fewshot < 0 or batch_size < 1:
        raise ValueError(f"need num_fewshot >= 0 and batch_size >= 1, got {num_fewshot}, {batch_size}")
    model, tok = model_and_tokenizer or load_model(model_path)
    fingerprint = model_fingerprint(model_path)
    cache = ResultCache(cache_path)
    out: dict[str, Any] = {
        "config": {"model": str(model_path), "fingerprint": fingerprint, "tasks": tasks, "limit": limit,
                   "num_fewshot": num_fewshot, "batch_size": batch_size, "n_boot": n_boot, "seed": seed,
                   "max_length": max_length(model, tok), "prefix_token_id": prefix_token_id(tok)},
        "results": {}, "samples": {},
    }
    for t in tasks:
        spec = TASKS[t]
        docs, pool = load_docs(t)
        docs = docs[:limit] if limit is not None else docs
        samples = []
        if spec.kind == "generate":
            for i, doc in enumerate(docs):
                ctx = fewshot_context(spec, doc, num_fewshot, pool)
                key = ResultCache.key(fingerprint, "generate", [ctx, list(GSM8K_STOP), max_gen_toks])
                gen = cache.get(key)
                if gen is None:
                    gen = generate_until(model, tok, ctx, GSM8K_STOP, max_gen_toks)
                    cache.put_many({key: gen})
                strict, flexible = extract_answer(gen, "strict"), extract_answer(gen, "flexible")
                samples.append({"doc_id": i, "generation": gen, "strict": strict, "flexible": flexible,
                                "target": doc["answer"].split("#### ")[-1].strip(),
                                "exact_match_strict": exact_match(strict, doc["answer"]),
                                "exact_match_flexible": exact_match(flexible, doc["answer"])})
        else:
            requests, owners = [], []
            for i, doc in enumerate(docs):
                reqs = build_requests(spec, doc, num_fewshot, pool)
                requests += reqs
                owners += [i] * len(reqs)
            scored = _score_cached(model, tok, fingerprint, requests, batch_size, cache)
            for i, doc in enumerate(docs):
                lls = [scored[j][0] for j in range(len(requests)) if owners[j] == i]
                metrics = mcq_metrics(lls, spec.choices(doc), spec.gold(doc))
                samples.append({"doc_id": i, "gold": spec.gold(doc), "lls": lls,
                                **{m: metrics[m] for m in spec.metrics}})
        res: dict[str, Any] = {"n": len(samples)}
        for m in spec.metrics:
            values = [s[m] for s in samples]
            res[m] = float(np.mean(values))
            res[m + "_ci"] = list(bootstrap_ci(values, n_boot=n_boot, seed=seed))
        out["results"][t] = res
        out["samples"][t] = samples
    out["cache"] = {"hits": cache.hits, "misses": cache.misses}
    return out


def compare_with_lm_eval(model_path: str | os.PathLike, tasks: Sequence[str] = ALL_TASKS, limit: int = 8,
                        num_fewshot: int = 1, batch_size: int = 4, model_and_tokenizer=None) -> dict:
    """Run ``lm_eval.simple_evaluate`` (HFLM, ``tasks/eh_*.yaml``) and this harness on the same documents (given).

    Returns ``{task: {"n_requests", "same_requests", "max_abs_ll_diff", "metric_agreement", "ours", "lm_eval"}}``
    (GSM8K: ``same_generations`` instead of log-likelihood numbers).
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    hflm = HFLM(pretrained=str(model_path), batch_size=batch_size, device="cpu", dtype="float32")
    res = lm_eval.simple_evaluate(model=hflm, tasks=[f"eh_{t}" for t in tasks], num_fewshot=num_fewshot, limit=limit,
                                  log_samples=True, task_manager=TaskManager(include_path=str(TASKS_DIR)),
                                  bootstrap_iters=0)
    ours = evaluate(model_path, tasks, limit=limit, num_fewshot=num_fewshot, batch_size=batch_size,
                    model_and_tokenizer=model_and_tokenizer, n_boot=100)
    report = {}
    for t in tasks:
        spec = TASKS[t]
        by_doc: dict[int, dict] = {}
        for sample in res["samples"][f"eh_{t}"]:
            by_doc.setdefault(sample["doc_id"], sample)
        theirs = [by_doc[i] for i in sorted(by_doc)]
        docs, pool = load_docs(t)
        row: dict[str, Any] = {"n_docs": len(theirs)}
        if spec.kind == "generate":
            row["same_prompts"] = sum(fewshot_context(t, d, num_fewshot, pool) == s["arguments"][0][0]
                                      for d, s in zip(docs, theirs))
            row["same_generations"] = sum(o["generation"] == s["resps"][0][0]
                                          for o, s in zip(ours["samples"][t], theirs))
            agree = [o["exact_match_strict"] == float(s["exact_match"]) for o, s in zip(ours["samples"][t], theirs)]
        else:
            reqs = [build_requests(t, d, num_fewshot, pool) for d in docs[:len(theirs)]]
            row["n_requests"] = sum(len(r) for r in reqs)
            row["same_requests"] = sum(r == [tuple(a) for a in s["arguments"]] for r, s in zip(reqs, theirs))
            diffs = [abs(a - r[0][0]) for o, s in zip(ours["samples"][t], theirs)
                     for a, r in zip(o["lls"], s["resps"])]
            row["max_abs_ll_diff"] = max(diffs)
            agree = [all(o[m] == s[m] for m in spec.metrics) for o, s in zip(ours["samples"][t], theirs)]
        row["metric_agreement"] = f"{sum(agree)}/{len(agree)}"
        report[t] = row
    return report


CHANCE = {"mmlu": 0.25, "hellaswag": 0.25, "arc_easy": None, "winogrande": 0.5, "gsm8k": 0.0}


def format_table(results: dict) -> str:
    lines = [f"{'task':<11} {'metric':<21} {'value':>6}  {'95% CI':<15} {'n':>4}"]
    for t, res in results["results"].items():
        for m in TASKS[t].metrics:
            lo, hi = res[m + "_ci"]
            lines.append(f"{t:<11} {m:<21} {res[m]:6.3f}  [{lo:.3f}, {hi:.3f}]  {res['n']:4d}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# CLI and self-test
# --------------------------------------------------------------------------------------------

def _resolve_model(name: str) -> Path | str:
    if name in ("main", "draft"):
        from labkit import curriculum_model_path

        return curriculum_model_path(name) / "hf"
    return name


def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def cli(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(description="likelihood + generation eval harness (lm-eval conventions)")
    ap.add_argument("--model", required=True, help="HF model folder, hub id, or 'main'/'draft' (curriculum model)")
    ap.add_argument("--tasks", default=",".join(ALL_TASKS))
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--num-fewshot", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--full", action="store_true",
                    help="every document (ignores --limit) and 256 GSM8K tokens; add --num-fewshot 5 for the usual setting")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--max-gen-toks", type=int, default=None, help=f"GSM8K budget ({GSM8K_MAX_GEN_TOKS}; 256 with --full)")
    ap.add_argument("--cache", default=str(OUTPUTS / "cache.jsonl"))
    ap.add_argument("--output", default=str(OUTPUTS / "results.json"))
    ap.add_argument("--compare-lm-eval", action="store_true",
                    help="also run lm_eval.simple_evaluate on tasks/eh_*.yaml and print the per-item agreement")
    args = ap.parse_args(argv)
    path = _resolve_model(args.model)
    if args.compare_lm_eval:
        t0 = time.perf_counter()
        report = compare_with_lm_eval(path, [t.strip() for t in args.tasks.split(",") if t.strip()],
                                      limit=args.limit, num_fewshot=args.num_fewshot, batch_size=args.batch_size)
        print(f"== this harness vs lm_eval {_lm_eval_version()} (HFLM), limit {args.limit}, "
              f"{args.num_fewshot}-shot, batch {args.batch_size} ==")
        for t, row in report.items():
            print(f"{t:<11} " + ", ".join(f"{k}={v:.2e}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        print(f"({time.perf_counter() - t0:.1f} s)")
        return 0
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    mt = load_model(path, device=args.device, dtype=dtype)
    t0 = time.perf_counter()
    res = evaluate(path, [t.strip() for t in args.tasks.split(",") if t.strip()],
                   limit=None if args.full else args.limit, num_fewshot=args.num_fewshot,
                   batch_size=args.batch_size, cache_path=args.cache, model_and_tokenizer=mt,
                   max_gen_toks=args.max_gen_toks or (256 if args.full else GSM8K_MAX_GEN_TOKS))
    res["config"]["wall_s"] = round(time.perf_counter() - t0, 2)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(res, indent=1), encoding="utf-8")
    print(format_table(res))
    print(f"cache: {res['cache']}; wrote {args.output}")
    return 0


def selftest() -> int:
    from transformers.utils import logging as hf_logging

    from labkit import curriculum_model_path, seed_everything
    from labkit.plots import savefig

    seed_everything(0)
    torch.set_num_threads(1)
    hf_logging.set_verbosity_error()       # the 260 > 256 tokenizer notice: we truncate on purpose
    hf_logging.disable_progress_bar()
    path = curriculum_model_path("main") / "hf"
    model, tok = load_model(path)
    failures = []
    OUTPUTS.mkdir(parents=True, exist_ok=True)
    cache_path = OUTPUTS / "selftest_cache.jsonl"
    if cache_path.exists():
        cache_path.unlink()

    # 1. small-mode evaluation (1-shot, 20 docs per task), then the same run again from the cache
    t0 = time.perf_counter()
    res = evaluate(path, ALL_TASKS, limit=20, num_fewshot=1, batch_size=8, cache_path=cache_path,
                   model_and_tokenizer=(model, tok))
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = evaluate(path, ALL_TASKS, limit=20, num_fewshot=1, batch_size=8, cache_path=cache_path,
                     model_and_tokenizer=(model, tok))
    warm = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    print(f"== curriculum model ({n_params / 1e6:.2f}M params, TinyStories), limit 20, 1-shot, batch 8 ==")
    print(format_table(res))
    print(f"cold run {cold:.1f} s, cached re-run {warm:.2f} s (cache hits {again['cache']['hits']}, "
          f"misses {again['cache']['misses']})")
    if again["cache"]["misses"] != 0 or again["results"] != res["results"]:
        failures.append("the cached re-run recomputed something or changed a result")
    (OUTPUTS / "results.json").write_text(json.dumps(res, indent=1), encoding="utf-8")

    # 2. batch-size invariance on every MCQ request of the run above
    reqs = []
    for t in ("mmlu", "hellaswag", "arc_easy", "winogrande"):
        docs, pool = load_docs(t)
        for doc in docs[:8]:
            reqs += build_requests(t, doc, 1, pool)
    by_bs = {bs: np.array([v for v, _ in loglikelihoods(model, tok, reqs, batch_size=bs)]) for bs in (1, 8, 32)}
    print(f"\n== batch-size invariance over {len(reqs)} requests (log-likelihoods from "
          f"{by_bs[1].min():.1f} to {by_bs[1].max():.1f}) ==")
    for bs in (8, 32):
        diff = np.abs(by_bs[bs] - by_bs[1])
        rel = float((diff / np.maximum(1.0, np.abs(by_bs[1]))).max())
        print(f"batch {bs:2d} vs batch 1: max |diff| = {diff.max():.2e}, max |diff| / max(1, |ll|) = {rel:.2e}")
        if rel > 1e-5:
            failures.append(f"batch size {bs} changed a log-likelihood by {rel:.2e} (relative)")

    # 3. a hand check of the continuation slice: score token by token without batching
    ctx, cont = "Once upon a time, there was a little", " girl named Lily."
    ctx_ids, cont_ids = encode_pair(tok, ctx, cont)
    with torch.no_grad():
        lp = F.log_softmax(model(input_ids=torch.tensor([ctx_ids + cont_ids])).logits[0].float(), -1)
    by_hand = sum(float(lp[len(ctx_ids) - 1 + k, t]) for k, t in enumerate(cont_ids))
    ours = loglikelihoods(model, tok, [(ctx, cont)])[0][0]
    print(f"\nlog p({cont!r} | {ctx!r}) = {ours:.4f} (token-by-token: {by_hand:.4f}, {len(cont_ids)} tokens)")
    if abs(ours - by_hand) > 1e-4:
        failures.append("loglikelihoods disagrees with the token-by-token sum: continuation slice off by one?")

    # 4. GSM8K extraction on the real reference answers
    gsm, _ = load_docs("gsm8k")
    ok = sum(extract_answer(d["answer"], "strict") == d["answer"].split("#### ")[-1].strip().replace(",", "")
             or exact_match(extract_answer(d["answer"], "strict"), d["answer"]) == 1.0 for d in gsm)
    print(f"GSM8K strict extraction on the {len(gsm)} reference answers: {ok} match their '#### ' value")
    if ok != len(gsm):
        failures.append("strict extraction misses some reference answers")

    # 5. figure: accuracy with bootstrap CIs against chance
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.4))
    names = [(t, m) for t in ALL_TASKS for m in TASKS[t].metrics]
    vals = [res["results"][t][m] for t, m in names]
    lo = [v - res["results"][t][m + "_ci"][0] for (t, m), v in zip(names, vals)]
    hi = [res["results"][t][m + "_ci"][1] - v for (t, m), v in zip(names, vals)]
    ax.bar(range(len(names)), vals, yerr=[lo, hi], capsize=3, color="#4c72b0")
    for i, (t, _) in enumerate(names):
        if CHANCE.get(t) is not None:
            ax.hlines(CHANCE[t], i - 0.4, i + 0.4, colors="red", linestyles="--")
    ax.set_xticks(range(len(names)), [f"{t}\n{m.replace('exact_match_', 'em_')}" for t, m in names], fontsize=7)
    ax.set_ylabel("score (20 docs, 1-shot)")
    ax.set_title("Curriculum model: scores with 95% bootstrap CIs (red: chance)")
    fig.tight_layout()
    savefig(fig, HERE / "figures" / "scores.png")
    plt.close(fig)

    if failures:
        print("\nSELF-TEST FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("\nself-test passed")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return cli(argv) if argv else selftest()


if __name__ == "__main__":
    sys.exit(main())

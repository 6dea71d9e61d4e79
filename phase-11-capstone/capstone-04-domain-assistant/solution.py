"""Capstone 4: a domain assistant built with synthetic data, LoRA SFT, DPO and a measured scorecard.

The domain is **story arithmetic**: one-step addition and subtraction word problems within 10,
written in the plain English of a children's story ("Tom has 3 apples. He finds 4 more apples.
How many apples does Tom have now?" -> "Tom has 7 apples now."). It suits the curriculum model
(1.8M parameters, trained on TinyStories: it knows the words, not the arithmetic), and a program
can check every answer, so "did post-training help" is a number with a confidence interval.

The chain composes the earlier labs by path (nothing is copied):

1. **Synthetic instructions** (lab 6.3): ``generate_raw`` asks an OpenAI-compatible *teacher* for
   new tasks (self-instruct, 24 hand-written seeds in ``seed_tasks.jsonl``) and their answers,
   then ``filter_pipeline`` drops malformed, refused, contaminated (GSM8K/MMLU/IFEval 8-grams) and
   near-duplicate items. In small mode the teacher is :func:`create_teacher_app`, a rule-based
   FastAPI server that speaks the OpenAI chat API and behaves like a decent-but-imperfect LLM
   teacher (it sometimes copies a shown example or writes a task it cannot answer). Full mode
   points ``--base-url`` at a real model.
2. **LoRA SFT** (lab 6.2's ``apply_lora`` + lab 6.1's ``train_sft`` loop with assistant-only
   loss masks), then the adapter is saved in peft's format and merged into the weights.
3. **Preference pairs** (lab 6.4's ``sample_responses`` + ``build_preference_pairs``): the SFT
   model answers each training prompt 4 times; the judge is the answer checker; a correct answer
   beats a wrong one.
4. **DPO** (lab 6.4's ``run_trl_dpo``, i.e. ``trl.DPOTrainer``) on a fresh LoRA adapter over the
   SFT model, with the SFT model as the frozen reference.
5. **Evaluation** (Phase 8 lab 1's ``extract_answer`` / ``exact_match`` / ``bootstrap_ci``):
   base vs SFT vs SFT+DPO on held-out problems with *held-out names*, greedy accuracy with 95%
   bootstrap CIs, paired bootstrap CIs of each improvement, checker-judged win rates, and the
   alignment tax as TinyStories loss. Then ``EVAL_REPORT.md`` and ``MODEL_CARD.md``.

Three cached CPU sizes share the code. Mini mode (the default, what the self-test and the tests
build: 200 teacher items, 60 SFT steps, 80 held-out problems, under a minute of CPU) and small mode
(``--small``, the README's numbers: 1,200 items, 240 SFT steps, 200 held-out problems, about four
minutes) each build once into ``.cache/models/capstone04-<mode>-<key>/`` (keyed on this file, the
labs it uses, the base model and the config) and print the scorecard.
``--full --base-url URL --model NAME --base-model HF_ID`` runs the same code at the spec's scale.

Run: ``python solution.py`` (mini mode), ``python solution.py --small`` (the README's run, CPU) or
``python solution.py --smoke`` (toy sizes, seconds, not cached).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import random
import re
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from labkit import load_lab, seed_everything

HERE = Path(__file__).resolve().parent
OUTPUTS = HERE / "outputs"
SEEDS_PATH = HERE / "seed_tasks.jsonl"

SFT_LAB = "phase-06-finetuning-instruction/lab-01-sft"
LORA_LAB = "phase-06-finetuning-instruction/lab-02-lora-qlora"
DATA_LAB = "phase-06-finetuning-instruction/lab-03-instruction-dataset"
DPO_LAB = "phase-06-finetuning-instruction/lab-04-reward-dpo"
EVAL_LAB = "phase-08-evaluation-safety/lab-01-eval-harness"
COMPOSED_LABS = (SFT_LAB, LORA_LAB, DATA_LAB, DPO_LAB, EVAL_LAB)

__all__ = [
    "AssistantConfig", "SMALL", "MINI", "SMOKE", "FULL", "assistant_dir", "build_assistant", "check_answer",
    "create_teacher_app", "evaluate_models", "heldout_problems", "judge_pairs", "make_problem",
    "merge_and_unwrap", "paired_bootstrap_ci", "serve_teacher", "teacher_answer", "win_rate",
]


def _lab(name: str):
    return load_lab(name)


# ============================================================================ 1. the domain
#: names in training problems; the held-out set uses HELDOUT_NAMES only (an unseen-name test)
TRAIN_NAMES = ("Tom", "Lily", "Ben", "Mia", "Sam", "Anna", "Max", "Lucy", "Tim", "Sue", "Jack", "Emma",
               "Leo", "Zoe", "Jane", "Bob", "Kate", "Dan", "Amy", "Joe")
HELDOUT_NAMES = ("Mark", "Rose", "Nick", "Ella", "Paul", "Ivy", "Fred", "Beth")
PRONOUN = {n: "She" if n in ("Lily", "Mia", "Anna", "Lucy", "Sue", "Emma", "Zoe", "Jane", "Kate", "Amy",
                             "Rose", "Ella", "Ivy", "Beth") else "He" for n in TRAIN_NAMES + HELDOUT_NAMES}
OBJECTS = ("apples", "balls", "toys", "cookies", "flowers", "books", "cars", "rocks", "shells", "stars",
           "cups", "hats", "kites", "eggs", "blocks", "candies", "leaves", "boats")
MAX_SUM = 10

# (kind, question template, answer template); {n} {m} a name, {p} its pronoun, {o} an object, {a} {b} numbers
TEMPLATES = (
    ("add", "{n} has {a} {o}. {p} finds {b} more {o}. How many {o} does {n} have now?", "{n} has {c} {o} now."),
    ("add", "{n} has {a} {o}. {m} gives {n} {b} more {o}. How many {o} does {n} have now?", "{n} has {c} {o} now."),
    ("add", "{n} has {a} {o} and {m} has {b} {o}. How many {o} do they have together?", "They have {c} {o} together."),
    ("add", "There are {a} {o} in the box. {n} puts {b} more {o} in the box. How many {o} are in the box now?",
     "There are {c} {o} in the box now."),
    ("sub", "{n} has {a} {o}. {p} gives {b} {o} to {m}. How many {o} does {n} have left?", "{n} has {c} {o} left."),
    ("sub", "{n} has {a} {o}. {p} loses {b} {o} in the park. How many {o} does {n} have left?", "{n} has {c} {o} left."),
    ("sub", "There are {a} {o} in the box. {n} takes {b} {o} out. How many {o} are in the box now?",
     "There are {c} {o} in the box now."),
)
ADD_WORDS = ("more", "together", "puts")
SUB_WORDS = ("gives", "loses", "takes")  # "gives ... more" is an addition: checked first
UNANSWERABLE = "{n} has {a} {o}. {p} likes them very much. Why does {n} like {o}?"
REFUSAL = "I cannot answer this from the story."


def make_problem(rng: random.Random, names: Sequence[str] = TRAIN_NAMES, kind: str | None = None) -> dict:
    """One word problem: ``{"instruction", "input", "output", "answer", "kind"}``.

    Numbers are 1..9 with ``a + b <= MAX_SUM`` for additions and ``b < a`` for subtractions, so
    every answer is an integer in 1..10. ``names`` picks the people (training or held-out names).
    """
    kinds = [t for t in TEMPLATES if kind is None or t[0] == kind]
    if not kinds:
        raise ValueError(f"unknown problem kind {kind!r}; expected 'add' or 'sub'")
    k, q, ans = rng.choice(kinds)
    n, m = rng.sample(list(names), 2)
    o = rng.choice(OBJECTS)
    if k == "add":
        a = rng.randint(1, MAX_SUM - 1)
        b = rng.randint(1, MAX_SUM - a)
        c = a + b
    else:
        a = rng.randint(2, MAX_SUM)
        b = rng.randint(1, a - 1)
        c = a - b
    fill = dict(n=n, m=m, p=PRONOUN[n], o=o, a=a, b=b, c=c)
    return {"instruction": q.format(**fill), "input": "", "output": ans.format(**fill), "answer": c, "kind": k}


_NUM = re.compile(r"\b(\d+)\b")


def teacher_answer(task: str) -> str:
    """The teacher's answer to one story problem: a short sentence ending in the number.

    Rules (they cover every template in :data:`TEMPLATES`): the first two integers are the operands;
    an addition if the text says "more", "together" or "puts", else a subtraction if it says
    "gives", "loses" or "takes"; the sentence is built from the question ("How many {o} does {n}
    have now/left?" -> "{n} has {c} {o} now/left.", "... do they have together?" -> "They have {c}
    {o} together.", "... are in the box now?" -> "There are {c} {o} in the box now."). Anything else
    (fewer than two numbers, no operation word, a question that is not "How many") gets
    :data:`REFUSAL`, as an honest teacher would say.

    Raises:
        TypeError: ``task`` is not a str.
    """
    if not isinstance(task, str):
        raise TypeError(f"task must be a str, got {type(task).__name__}")
    # BEGIN SOLUTION numbers = the first two integers (fewer -> REFUSAL); the question is the last sentence and must start with "How many <object>"; op: any ADD_WORDS word -> a + b, elif any SUB_WORDS word -> a - b (negative -> REFUSAL), else REFUSAL; then the answer sentence from the question's shape (medium, ~25 min)
    nums = [int(x) for x in _NUM.findall(task)]
    if len(nums) < 2:
        return REFUSAL
    a, b = nums[0], nums[1]
    words = set(re.findall(r"[a-z]+", task.lower()))
    if words & set(ADD_WORDS):
        c = a + b
    elif words & set(SUB_WORDS):
        c = a - b
    else:
        return REFUSAL
    if c < 0:
        return REFUSAL
    question = task.rstrip().split(". ")[-1]
    q = re.match(r"How many (\w+) (does (\w+) have (now|left)|do they have together|are in the box now)\?$", question)
    if q is None:
        return REFUSAL
    obj = q.group(1)
    if q.group(3):
        return f"{q.group(3)} has {c} {obj} {q.group(4)}."
    if q.group(2).startswith("do they"):
        return f"They have {c} {obj} together."
    return f"There are {c} {obj} in the box now."
    # END SOLUTION


def heldout_problems(n: int, seed: int = 0, exclude: Sequence[str] = ()) -> list[dict]:
    """``n`` evaluation problems with :data:`HELDOUT_NAMES` (never in training data), none of whose
    normalized instruction is in ``exclude`` (the training instructions), alternating add and sub."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    norm = _lab(DATA_LAB).normalize
    seen = {norm(t) for t in exclude}
    rng = random.Random(f"heldout:{seed}")
    out: list[dict] = []
    for _ in range(n * 50):
        p = make_problem(rng, HELDOUT_NAMES, ("add", "sub")[len(out) % 2])
        key = norm(p["instruction"])
        if key not in seen:
            seen.add(key)
            out.append(p)
            if len(out) == n:
                return out
    raise RuntimeError(f"could only draw {len(out)} distinct held-out problems")


# ============================================================================ 2. the teacher endpoint
def teacher_task(prompt: str, rng: random.Random, copy_rate: float, unanswerable_rate: float) -> str:
    """Self-instruct step 1 as the teacher answers it: usually a fresh problem; sometimes (like a
    real LLM) one of the examples shown in ``prompt`` copied back, or a question it cannot answer."""
    shown = [ln.split(". ", 1)[1] for ln in prompt.splitlines() if re.match(r"^\d+\. ", ln)]
    u = rng.random()
    if shown and u < copy_rate:
        return rng.choice(shown)
    if u < copy_rate + unanswerable_rate:
        n = rng.choice(TRAIN_NAMES)
        return UNANSWERABLE.format(n=n, p=PRONOUN[n], a=rng.randint(2, 9), o=rng.choice(OBJECTS))
    return make_problem(rng)["instruction"]


def create_teacher_app(model_name: str = "story-math-teacher", copy_rate: float = 0.08,
                       unanswerable_rate: float = 0.04):
    """A FastAPI app with OpenAI's ``/v1/chat/completions`` (non-streaming) and ``/v1/models``.

    A request whose last user message is lab 6.3's self-instruct prompt ("Here are some tasks:")
    gets a new task (deterministic in the request's ``seed``); any other request is a task, and gets
    :func:`teacher_answer`. Errors use OpenAI's error shape (400 for a request without messages).
    """
    from fastapi import Body, FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI(title="story-math teacher")
    app.state.model_name = model_name
    app.state.requests = 0
    lock = threading.Lock()

    def error(status: int, msg: str) -> JSONResponse:
        return JSONResponse({"error": {"message": msg, "type": "invalid_request_error", "param": None,
                                       "code": None}}, status_code=status)

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "capstone"}]}

    @app.post("/v1/chat/completions")
    def chat(body: dict = Body(...)):  # noqa: B008 (FastAPI's idiom)
        messages = body.get("messages") if isinstance(body, dict) else None
        if not messages or not isinstance(messages, list) or not isinstance(messages[-1], dict):
            return error(400, "messages must be a non-empty list of {role, content}")
        if body.get("stream"):
            return error(400, "this teacher does not stream")
        text = str(messages[-1].get("content") or "")
        with lock:
            app.state.requests += 1
        rng = random.Random(f"teacher:{body.get('seed', 0)}")
        if text.startswith("Here are some tasks:"):
            reply = teacher_task(text, rng, copy_rate, unanswerable_rate)
        else:
            reply = teacher_answer(text.split("\n\n")[0])
        return {"id": f"chatcmpl-{app.state.requests}", "object": "chat.completion", "created": int(time.time()),
                "model": model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": len(text.split()), "completion_tokens": len(reply.split()),
                          "total_tokens": len(text.split()) + len(reply.split())}}

    return app


@dataclass
class TeacherEndpoint:
    base_url: str
    model: str
    app: Any

    def client(self, **kwargs):
        import openai

        kwargs.setdefault("timeout", 30.0)
        kwargs.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=self.base_url, api_key="unused", **kwargs)


@contextlib.contextmanager
def serve_teacher(host: str = "127.0.0.1", **app_kwargs: Any) -> Iterator[TeacherEndpoint]:
    """uvicorn serving :func:`create_teacher_app` on a free loopback port in a daemon thread."""
    import uvicorn

    app = create_teacher_app(**app_kwargs)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="teacher")
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError("the teacher server did not start")
        time.sleep(0.02)
    try:
        yield TeacherEndpoint(f"http://{host}:{sock.getsockname()[1]}/v1", app.state.model_name, app)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


# ============================================================================ 3. config and the judge
@dataclass
class AssistantConfig:
    """Every size and hyper-parameter of one run of the chain (small, mini, smoke and full share the code)."""

    name: str = "small"
    base_model: str = "main"           # curriculum model name, or an HF id / folder (full mode)
    n_generate: int = 1200             # self-instruct items requested from the teacher
    gen_workers: int = 4
    minhash_threshold: float = 0.9     # see README: templated math tasks differ in their numbers only
    embedding_dedup: bool = False      # MiniLM cannot see that "3 apples" != "4 apples"
    contamination: bool = True         # 8-gram overlap with GSM8K / MMLU / IFEval (lab 6.3's index)
    n_heldout: int = 200
    lora_r: int = 16
    lora_alpha: float = 32.0
    sft_steps: int = 240
    sft_micro_batch: int = 16
    sft_lr: float = 3e-3
    max_length: int = 96
    n_pref_prompts: int = 400
    samples_per_prompt: int = 4
    sample_temperature: float = 0.7
    max_new_tokens: int = 16
    dpo_beta: float = 0.1
    dpo_lr: float = 1e-4               # measured: 3e-4 cost 9.5 points, 2e-3 destroyed the model (README)
    dpo_epochs: float = 1.0
    dpo_batch: int = 16
    gold_pairs: bool = True            # also pair the teacher's answer with a sample when all samples are wrong
    eval_samples: int = 4              # sampled answers per held-out item (T = sample_temperature)
    retain_tokens: int = 16384         # TinyStories validation tokens for the alignment-tax loss
    n_boot: int = 2000
    seed: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


SMALL = AssistantConfig()
SMOKE = AssistantConfig(name="smoke", n_generate=24, gen_workers=2, contamination=False, n_heldout=16, sft_steps=3,
                        sft_micro_batch=4, n_pref_prompts=12, samples_per_prompt=2, max_new_tokens=12, dpo_epochs=1.0,
                        dpo_batch=4, gold_pairs=True, eval_samples=1, retain_tokens=1024, n_boot=200)
FULL = AssistantConfig(name="full", base_model="Qwen/Qwen2.5-0.5B", n_generate=6000, gen_workers=16,
                       n_heldout=500, sft_steps=1500, sft_micro_batch=32, sft_lr=2e-4, max_length=256,
                       n_pref_prompts=2000, max_new_tokens=48, dpo_lr=5e-6, dpo_epochs=1.0, dpo_batch=32,
                       retain_tokens=200_000)
# what the self-test and the tests build (the test budget: under a minute of CPU, once per checkout). It is
# the smallest size that still shows SFT over base with a paired CI above 0; its DPO steps are too few
# to change a greedy answer (SFT+DPO ties SFT), see README "Reproducing"
MINI = AssistantConfig(name="mini", n_generate=200, n_heldout=80, sft_steps=60, sft_micro_batch=8, sft_lr=1e-2,
                       n_pref_prompts=48, samples_per_prompt=2, eval_samples=1, retain_tokens=2048, n_boot=1000)
CONFIGS = {"small": SMALL, "mini": MINI, "smoke": SMOKE, "full": FULL}
MIN_SFT_EXAMPLES = {"small": 800, "mini": 150}  # what each cached mode must keep after the filters


def check_answer(response: str, gold: int | str) -> bool:
    """The programmatic judge: is the *last* number in ``response`` equal to ``gold``?

    Uses Phase 8 lab 1's GSM8K filters: ``extract_answer(response, "flexible")`` (the last number)
    and ``exact_match`` (ignores ``,``, ``$`` and a final ``.``). "Tom has 15 apples." does not
    answer 5, and a response without a number is wrong.

    Raises:
        TypeError: ``response`` is not a str.
    """
    if not isinstance(response, str):
        raise TypeError(f"response must be a str, got {type(response).__name__}")
    # BEGIN SOLUTION ev = _lab(EVAL_LAB); pred = ev.extract_answer(response, "flexible"); return ev.exact_match(pred, str(gold)) == 1.0 (easy, ~5 min)
    ev = _lab(EVAL_LAB)
    return ev.exact_match(ev.extract_answer(response, "flexible"), str(gold)) == 1.0
    # END SOLUTION


def judge_pairs(prompts: Sequence[str], responses: Sequence[Sequence[str]], golds: Sequence[int | str]) -> list:
    """Preference pairs from the model's own samples, judged by :func:`check_answer`.

    For each prompt: lab 6.4's ``build_preference_pairs`` with ``score = 1.0 if correct else 0.0``,
    so the first correct sample is ``chosen`` and the first wrong one ``rejected``; a prompt whose
    samples are all right (or all wrong) carries no preference and gives no pair. The pair's
    ``group`` is the prompt's index (as a string).

    Raises:
        ValueError: the three sequences differ in length.
    """
    if not len(prompts) == len(responses) == len(golds):
        raise ValueError(f"lengths differ: {len(prompts)} prompts, {len(responses)} response lists, {len(golds)} golds")
    l4 = _lab(DPO_LAB)
    pairs = []
    # BEGIN SOLUTION one build_preference_pairs([prompt], [resp], score, [str(i)]) call per prompt, score closing over that prompt's gold (bind it: lambda r, g=gold: ...) (easy, ~10 min)
    for i, (prompt, resp, gold) in enumerate(zip(prompts, responses, golds)):
        pairs += l4.build_preference_pairs([prompt], [resp], lambda r, g=gold: float(check_answer(r, g)), [str(i)])
    # END SOLUTION
    return pairs


# ============================================================================ 4. LoRA merge, stats
def merge_and_unwrap(model: nn.Module) -> nn.Module:
    """Fold every lab 6.2 ``LoRALinear`` into its base weight and put the plain base layer back.

    After this the model has exactly the base architecture's modules and ``state_dict`` keys
    (``...q_proj.weight``, no ``lora_A``), so ``save_pretrained`` writes an ordinary checkpoint that
    ``AutoModelForCausalLM.from_pretrained`` loads; its outputs equal the adapted model's. This is
    what ``peft``'s ``merge_and_unload`` does. Every parameter is left trainable again.

    Returns:
        ``model`` (changed in place).

    Raises:
        ValueError: the model has no LoRA layers.
    """
    l2 = _lab(LORA_LAB)
    layers = l2.lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRA layers: nothing to merge")
    # BEGIN SOLUTION for each (name, layer): layer.merge() unless already merged; parent = model.get_submodule(parent name) (the model itself for a top-level name); setattr(parent, child, layer.base); finally requires_grad_(True) on every parameter (medium, ~15 min)
    for name, layer in layers.items():
        if not layer.merged:
            layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.base)
    for p in model.parameters():
        p.requires_grad_(True)
    return model
    # END SOLUTION


def paired_bootstrap_ci(a: Sequence[float], b: Sequence[float], n_boot: int = 2000, alpha: float = 0.05,
                        seed: int = 0) -> tuple[float, float, float]:
    """``(mean(a - b), lo, hi)``: the difference of two systems scored on the *same* items, with a
    percentile bootstrap CI that resamples items (both systems' scores of an item move together).

    ``rng = np.random.default_rng(seed)``; ``idx = rng.integers(0, n, size=(n_boot, n))``; the
    means of ``(a - b)[idx]`` along axis 1; their ``alpha/2`` and ``1 - alpha/2`` quantiles. Pairing
    removes the between-item variance that two separate CIs would count twice, so the interval is
    narrower when the systems agree on which items are hard. An interval above 0 means ``a`` is
    better at level ``alpha``.

    Raises:
        ValueError: different lengths, empty, NaN, n_boot < 1, alpha outside (0, 1).
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"a and b must be 1-D scores of the same items, got shapes {x.shape} and {y.shape}")
    if x.size == 0:
        raise ValueError("no items to compare")
    if np.isnan(x).any() or np.isnan(y).any():
        raise ValueError("NaN in the per-item scores")
    if n_boot < 1 or not 0 < alpha < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < alpha < 1, got {n_boot}, {alpha}")
    # BEGIN SOLUTION d = x - y; idx = default_rng(seed).integers(0, n, (n_boot, n)); means = d[idx].mean(1); quantiles alpha/2 and 1 - alpha/2; return (d.mean(), lo, hi) as floats (medium, ~10 min)
    d = x - y
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(d.mean()), float(lo), float(hi)
    # END SOLUTION


def win_rate(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> list[float]:
    """Per-item outcome of system A against B with the checker as the judge: 1 when only A is
    right, 0 when only B is, 0.5 for a tie (both right or both wrong). The mean is A's win rate.

    Raises:
        ValueError: different lengths or no items.
    """
    if len(a_correct) != len(b_correct) or not len(a_correct):
        raise ValueError(f"need two equally long, non-empty lists, got {len(a_correct)} and {len(b_correct)}")
    # BEGIN SOLUTION 1.0 / 0.0 / 0.5 per item from the two booleans (easy, ~5 min)
    return [0.5 if bool(x) == bool(y) else (1.0 if x else 0.0) for x, y in zip(a_correct, b_correct)]
    # END SOLUTION


# ============================================================================ 5. the stages
def _messages(ex: dict) -> list[dict]:
    user = ex["instruction"].strip() + (f"\n\n{ex['input'].strip()}" if ex.get("input") else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": ex["output"].strip()}]


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def generate_dataset(cfg: AssistantConfig, out: Path, client: Any = None, model: str | None = None,
                     quiet: bool = True) -> dict:
    """Stage 1: self-instruct through lab 6.3 into ``out/data`` (``raw.jsonl``, ``sft.jsonl``, ``report.md``).

    ``client``/``model`` are any OpenAI-compatible endpoint; ``None`` serves the rule-based teacher.
    """
    ds = _lab(DATA_LAB)
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    seeds = ds.load_seed_tasks(SEEDS_PATH)
    gcfg = ds.GenConfig(n=cfg.n_generate, workers=cfg.gen_workers, seed=cfg.seed, temperature=0.7,
                        max_tokens_instruction=48, max_tokens_output=32)
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if client is None:
            ep = stack.enter_context(serve_teacher())
            client, model = ep.client(), ep.model
        summary = ds.generate_raw(client, model, seeds, data, gcfg)
    gen_s = time.perf_counter() - t0
    records = [r for _, r in sorted(ds.load_finished(data / "raw.jsonl").items())]
    index = ds.EvalIndex.from_mirror() if cfg.contamination else None
    embedder = ds.load_embedder() if cfg.embedding_dedup else None
    kept, reports, _ = ds.filter_pipeline(records, seeds=seeds, index=index, embedder=embedder,
                                          minhash_threshold=cfg.minhash_threshold)
    # the same MinHash stage at lab 6.3's default threshold (0.6), for the design-decision table
    texts = [ds._task_text(r) for r in records if r.get("instruction")]
    at_default = len(ds.minhash_dedup(texts, threshold=0.6, reference=[ds._task_text(s) for s in seeds]))
    errors = ds.load_finished(data / "errors.jsonl") if (data / "errors.jsonl").exists() else {}
    report_md = ds.write_outputs(data, kept, reports, summary, len(records), errors)
    golds = [ds_gold(ex) for ex in kept]
    sft = [dict(ex, answer=g) for ex, g in zip(kept, golds) if g is not None]
    _write_jsonl(data / "sft.jsonl", sft)
    if not quiet:
        print(report_md)
    return {"requested": cfg.n_generate, "raw": len(records), "kept": len(kept), "sft_examples": len(sft),
            "requests": summary.requests, "generation_seconds": gen_s,
            "minhash_kept_at_0.6": at_default, "minhash_input": len(texts),
            "stages": [{"stage": r.stage, "in": r.n_in, "dropped": r.dropped, "reasons": dict(r.reasons)}
                       for r in reports]}


def ds_gold(ex: dict) -> int | None:
    """The reference answer of a generated example: the last number of the teacher's output."""
    ev = _lab(EVAL_LAB)
    pred = ev.extract_answer(ex["output"], "flexible").rstrip(".")
    return int(pred) if pred.isdigit() else None


def base_model_dir(cfg: AssistantConfig) -> Path:
    if cfg.base_model in ("main", "draft"):
        from labkit import curriculum_model_path

        return curriculum_model_path(cfg.base_model) / "hf"
    return Path(cfg.base_model)


def _lora_config(cfg: AssistantConfig):
    l2 = _lab(LORA_LAB)
    return l2.LoRAConfig(r=cfg.lora_r, alpha=cfg.lora_alpha, target_modules=l2.LLAMA_TARGETS)


def _save_model(model: nn.Module, tok: Any, folder: Path) -> None:
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.eos_token_id = [im_end, tok.eos_token_id]
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


def train_sft_stage(cfg: AssistantConfig, examples: Sequence[dict], out: Path) -> dict:
    """Stage 2: LoRA SFT (lab 6.2 adapters, lab 6.1 loop); writes ``sft_adapter/`` and merged ``sft/``."""
    l1, l2 = _lab(SFT_LAB), _lab(LORA_LAB)
    base = base_model_dir(cfg)
    tok = l1.load_tokenizer(base)
    model = l1.load_model(base, tok)
    lcfg = _lora_config(cfg)
    l2.apply_lora(model, lcfg)
    trainable, total = l2.count_params(model)
    recipe = l1.SFTRecipe(model=cfg.base_model, max_length=cfg.max_length, steps=cfg.sft_steps,
                          micro_batch=cfg.sft_micro_batch, grad_accum=1, lr=cfg.sft_lr, seed=cfg.seed)
    t0 = time.perf_counter()
    losses, _ = l1.train_sft(model, tok, [_messages(ex) for ex in examples], recipe, quiet=True)
    seconds = time.perf_counter() - t0
    l2.save_adapter(model, out / "sft_adapter", lcfg, base_model=str(base))
    merge_and_unwrap(model)
    _save_model(model, tok, out / "sft")
    return {"trainable_params": trainable, "total_params": total, "steps": cfg.sft_steps,
            "loss_first": losses[0], "loss_last": float(np.mean(losses[-10:])), "seconds": seconds,
            "adapter_bytes": (out / "sft_adapter" / "adapter_model.safetensors").stat().st_size}


def preference_stage(cfg: AssistantConfig, examples: Sequence[dict], out: Path) -> tuple[list, dict]:
    """Stage 3: the SFT model's own samples on training prompts, judged; writes ``data/dpo.jsonl``."""
    l4 = _lab(DPO_LAB)
    model, tok = l4.load_policy(out / "sft")
    chosen = examples[: cfg.n_pref_prompts]
    prompts = [l4.format_prompt(tok, _messages(ex)[:1]) for ex in chosen]
    t0 = time.perf_counter()
    responses = l4.sample_responses(model, tok, prompts, n_per_prompt=cfg.samples_per_prompt,
                                    max_new_tokens=cfg.max_new_tokens, temperature=cfg.sample_temperature,
                                    seed=cfg.seed + 1)
    golds = [ex["answer"] for ex in chosen]
    pairs = judge_pairs(prompts, responses, golds)
    n_own = len(pairs)
    if cfg.gold_pairs:  # prompts whose samples were all wrong: the teacher's answer is the chosen side
        l4_pair = l4.PreferencePair
        covered = {p.group for p in pairs}
        for i, (prompt, rs, ex) in enumerate(zip(prompts, responses, chosen)):
            if str(i) not in covered and not any(check_answer(r, ex["answer"]) for r in rs):
                pairs.append(l4_pair(prompt, ex["output"], rs[0], str(i)))
    flat = [check_answer(r, g) for rs, g in zip(responses, golds) for r in rs]
    _write_jsonl(out / "data" / "dpo.jsonl", [dict(p.as_dict(), group=p.group) for p in pairs])
    return pairs, {"prompts": len(prompts), "samples": len(flat), "sample_accuracy": float(np.mean(flat)),
                   "pairs": len(pairs), "own_pairs": n_own,
                   "gold_pairs": len(pairs) - n_own, "seconds": time.perf_counter() - t0}


def dpo_stage(cfg: AssistantConfig, pairs: Sequence, out: Path) -> dict:
    """Stage 4: DPO with ``trl.DPOTrainer`` (lab 6.4) on a LoRA adapter over the SFT model; writes ``dpo/``."""
    l2, l4 = _lab(LORA_LAB), _lab(DPO_LAB)
    policy, tok = l4.load_policy(out / "sft")
    reference, _ = l4.load_policy(out / "sft")
    lcfg = _lora_config(cfg)
    l2.apply_lora(policy, lcfg)
    if not pairs:
        raise RuntimeError("no preference pairs: the SFT model's samples were all right or all wrong")
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # TRL prints every log dict
        logs = l4.run_trl_dpo(policy, reference, tok, list(pairs), beta=cfg.dpo_beta, lr=cfg.dpo_lr,
                          epochs=cfg.dpo_epochs, batch_size=cfg.dpo_batch, max_length=cfg.max_length,
                          seed=cfg.seed)
    seconds = time.perf_counter() - t0
    l2.save_adapter(policy, out / "dpo_adapter", lcfg, base_model=str(out / "sft"))
    merge_and_unwrap(policy)
    _save_model(policy, tok, out / "dpo")
    return {"pairs": len(pairs), "steps": len(logs) and int(logs[-1].get("step", 0)) or 0,
            "loss_first": logs[0]["loss"] if logs else None, "loss_last": logs[-1]["loss"] if logs else None,
            "seconds": seconds}


# ============================================================================ 6. evaluation
def _retain_ids(tok: Any, n_tokens: int) -> torch.Tensor:
    from labkit import read_text

    text = read_text("tinystories", "valid_prefix_794k.txt")[: n_tokens * 6]
    ids = tok(text, add_special_tokens=False)["input_ids"][:n_tokens]
    return torch.tensor(ids, dtype=torch.long)


@torch.no_grad()
def evaluate_models(models: dict[str, Path], heldout: Sequence[dict], cfg: AssistantConfig) -> dict:
    """Stage 5: greedy and sampled accuracy on ``heldout`` for each model, CIs, paired deltas, win rates.

    Returns ``{"models": {name: {...}}, "deltas": [...], "win_rates": [...], "items": [...]}``; the
    names are compared in the order given (each against the previous one and against the first).
    """
    l1, l2, l4, ev = _lab(SFT_LAB), _lab(LORA_LAB), _lab(DPO_LAB), _lab(EVAL_LAB)
    prompts = [p["instruction"] for p in heldout]
    golds = [p["answer"] for p in heldout]
    res: dict[str, Any] = {"models": {}, "deltas": [], "win_rates": [], "n": len(heldout)}
    per_item: dict[str, list[bool]] = {}
    gens: dict[str, list[str]] = {}
    for name, path in models.items():
        tok = l1.load_tokenizer(path)
        model = l1.load_model(path, tok).eval()
        t0 = time.perf_counter()
        out = l1.generate_chat(model, tok, prompts, max_new_tokens=cfg.max_new_tokens, batch_size=64)
        correct = [check_answer(o, g) for o, g in zip(out, golds)]
        lo, hi = ev.bootstrap_ci([float(c) for c in correct], n_boot=cfg.n_boot, seed=cfg.seed)
        formatted = [l4.format_prompt(tok, [{"role": "user", "content": p}]) for p in prompts]
        samples = l4.sample_responses(model, tok, formatted, n_per_prompt=cfg.eval_samples,
                                      max_new_tokens=cfg.max_new_tokens, temperature=cfg.sample_temperature,
                                      seed=cfg.seed + 7)
        s_item = [float(np.mean([check_answer(s, g) for s in row])) for row, g in zip(samples, golds)]
        s_lo, s_hi = ev.bootstrap_ci(s_item, n_boot=cfg.n_boot, seed=cfg.seed)
        retain = l2.perplexity(model, _retain_ids(tok, cfg.retain_tokens), block_size=128, batch_size=16)
        by_kind = {k: float(np.mean([c for c, p in zip(correct, heldout) if p["kind"] == k]))
                   for k in ("add", "sub") if any(p["kind"] == k for p in heldout)}
        res["models"][name] = {
            "path": str(path), "accuracy": float(np.mean(correct)), "accuracy_ci": [lo, hi],
            "sampled_accuracy": float(np.mean(s_item)), "sampled_accuracy_ci": [s_lo, s_hi],
            "accuracy_by_kind": by_kind, "has_number": float(np.mean([ev.extract_answer(o, "flexible") != ev.INVALID
                                                                      for o in out])),
            "retain_loss": math.log(retain), "mean_words": float(np.mean([len(o.split()) for o in out])),
            "eval_seconds": time.perf_counter() - t0,
        }
        per_item[name], gens[name] = correct, out
    names = list(models)
    comparisons = [(names[i], names[i - 1]) for i in range(1, len(names))]
    comparisons += [(names[i], names[0]) for i in range(2, len(names))]
    for a, b in comparisons:
        d, lo, hi = paired_bootstrap_ci([float(x) for x in per_item[a]], [float(x) for x in per_item[b]],
                                        n_boot=cfg.n_boot, seed=cfg.seed)
        res["deltas"].append({"a": a, "b": b, "diff": d, "ci": [lo, hi]})
        w = win_rate(per_item[a], per_item[b])
        wlo, whi = ev.bootstrap_ci(w, n_boot=cfg.n_boot, seed=cfg.seed)
        res["win_rates"].append({"a": a, "b": b, "win_rate": float(np.mean(w)), "ci": [wlo, whi],
                                 "wins": sum(x == 1.0 for x in w), "losses": sum(x == 0.0 for x in w)})
    res["items"] = [{"instruction": p["instruction"], "answer": p["answer"], "kind": p["kind"],
                     **{f"{n}_output": gens[n][i] for n in names}, **{f"{n}_correct": per_item[n][i] for n in names}}
                    for i, p in enumerate(heldout)]
    return res


# ============================================================================ 7. reports
def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def scorecard_table(sc: dict) -> str:
    """The headline markdown table: one row per model."""
    lines = ["| model | greedy accuracy [95% CI] | sampled accuracy (T=0.7) [95% CI] | add / sub | "
             "answers with a number | TinyStories loss (alignment tax) |", "|---|---|---|---|---|---|"]
    for name, m in sc["models"].items():
        lo, hi = m["accuracy_ci"]
        slo, shi = m["sampled_accuracy_ci"]
        kinds = " / ".join(_pct(m["accuracy_by_kind"].get(k, float("nan"))) for k in ("add", "sub"))
        lines.append(f"| {name} | {_pct(m['accuracy'])} [{_pct(lo)}, {_pct(hi)}] | {_pct(m['sampled_accuracy'])} "
                     f"[{_pct(slo)}, {_pct(shi)}] | {kinds} | {_pct(m['has_number'])} | {m['retain_loss']:.3f} |")
    return "\n".join(lines)


def constant_answer_check(sc: dict) -> str:
    """What a model that ignores the numbers would score: the best constant answer per kind of problem
    (chosen with the held-out golds, so an upper bound for any such model), and how many distinct final
    numbers each model wrote. A model at or under that line learned the format, not the arithmetic."""
    items = sc["items"]
    best = 0
    for kind in sorted({it["kind"] for it in items}):
        golds = [it["answer"] for it in items if it["kind"] == kind]
        best += max(golds.count(g) for g in set(golds))
    lines = [f"best constant answer per kind (add / sub), chosen on these golds: {_pct(best / len(items))}"]
    for n in sc["models"]:
        finals = [re.findall(r"\d+", it[f"{n}_output"])[-1:] for it in items]
        distinct = sorted({int(f[0]) for f in finals if f})
        lines.append(f"{n}: {len(distinct)} distinct final numbers in {len(items)} answers"
                     + (f" ({', '.join(map(str, distinct))})" if len(distinct) <= 5 else ""))
    return "\n".join(lines)


def deltas_table(sc: dict) -> str:
    lines = ["| comparison | accuracy difference [paired 95% CI] | win rate (checker as judge) [95% CI] | wins / losses |",
             "|---|---|---|---|"]
    for d, w in zip(sc["deltas"], sc["win_rates"]):
        lines.append(f"| {d['a']} vs {d['b']} | {100 * d['diff']:+.1f} pts [{100 * d['ci'][0]:+.1f}, "
                     f"{100 * d['ci'][1]:+.1f}] | {_pct(w['win_rate'])} [{_pct(w['ci'][0])}, {_pct(w['ci'][1])}] | "
                     f"{w['wins']} / {w['losses']} |")
    return "\n".join(lines)


def stages_table(stages: Sequence[dict]) -> str:
    lines = ["| stage | in | dropped | out | reasons |", "|---|---|---|---|---|"]
    for s in stages:
        reasons = ", ".join(f"{k}: {v}" for k, v in s["reasons"].items()) or "-"
        lines.append(f"| {s['stage']} | {s['in']} | {s['dropped']} | {s['in'] - s['dropped']} | {reasons} |")
    return "\n".join(lines)


def eval_report(run: dict) -> str:
    sc = run["scorecard"]
    ex = sc["items"][:6]
    names = list(sc["models"])
    rows = ["| problem | gold | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for it in ex:
        rows.append(f"| {it['instruction']} | {it['answer']} | "
                    + " | ".join(("✓ " if it[f'{n}_correct'] else "✗ ") + it[f"{n}_output"].replace("|", "/")[:60]
                                 for n in names) + " |")
    return (f"# Evaluation report ({run['config']['name']} mode)\n\n"
            f"{sc['n']} held-out problems (names never seen in training, half additions, half subtractions), "
            f"greedy decoding, at most {run['config']['max_new_tokens']} new tokens. Judge: the last number of the "
            f"answer equals the true result (Phase 8 lab 1's GSM8K filters). CIs: percentile bootstrap over items "
            f"({run['config']['n_boot']} resamples); differences use a paired bootstrap.\n\n"
            f"{scorecard_table(sc)}\n\n{deltas_table(sc)}\n\n## Examples\n\n" + "\n".join(rows) + "\n")


def model_card(run: dict) -> str:
    """MODEL_CARD.md for the SFT+DPO model, every number taken from ``run``."""
    sc, cfg, data = run["scorecard"], run["config"], run["data"]
    names = list(sc["models"])
    dpo = sc["models"][names[-1]]
    base = sc["models"][names[0]]
    contamination = "contamination against GSM8K/MMLU/IFEval 8-grams, " if cfg["contamination"] else ""
    return f"""# Model card: story-math assistant ({cfg['name']} mode)

## Model
- Base: `{cfg['base_model']}` ({run['sft']['total_params']:,} parameters; the curriculum model is a 4-layer
  Llama-style model trained on TinyStories, 256-token context).
- Post-training: LoRA SFT (r = {cfg['lora_r']}, alpha = {cfg['lora_alpha']:g}, all seven projections,
  {run['sft']['trainable_params']:,} trainable parameters, {cfg['sft_steps']} steps) on {data['sft_examples']}
  synthetic instructions, then DPO (beta = {cfg['dpo_beta']}, a fresh LoRA adapter, {run['dpo']['pairs']}
  preference pairs), both adapters merged into the weights. Adapters: `sft_adapter/`, `dpo_adapter/` (peft format).

## Intended use
Answering one-step addition and subtraction story problems within {MAX_SUM} in simple English, phrased like the
training templates ("X has a things. ... How many things does X have now/left?"). A teaching artifact: it shows
that each post-training stage moves a measurable number.

## Out of scope
Anything else: other arithmetic (numbers above {MAX_SUM}, multiplication, two steps), other phrasings, facts,
advice, conversation. The model still writes TinyStories-style text outside its narrow format, and it never says
"I don't know".

## Training data
- SFT: {data['requested']} self-instruct requests to a rule-based teacher behind an OpenAI-compatible API (lab 6.3
  pipeline), {data['kept']} kept after filters (parse, length, language, quality, {contamination}MinHash dedup at
  Jaccard {cfg['minhash_threshold']}). 24 hand-written seed problems. Per-stage drops: `data/report.md`.
- Preferences: {run['prefs']['samples']} samples of the SFT model on {run['prefs']['prompts']} training prompts;
  a correct answer (checked against the teacher's) beats a wrong one; {run['prefs']['pairs']} pairs.
- Names in the evaluation set never occur in the training data.

## Evaluation ({sc['n']} held-out problems)
{scorecard_table(sc)}

{deltas_table(sc)}

Alignment tax: TinyStories validation loss {base['retain_loss']:.3f} (base) -> {dpo['retain_loss']:.3f} (SFT+DPO).

## Limitations
- The teacher is a program, so the data has its templates' narrow phrasing; a model trained on it learns the
  templates, not arithmetic in general. The held-out set shares the templates (only names and numbers change).
- Accuracy is on {sc['n']} items: read the CIs, not the third digit.
- DPO pairs come from a checker that only reads the last number; a wrong sentence with the right final number counts
  as right.
- 1.8M parameters: the model memorises facts within {MAX_SUM}; it does not carry, and it is not a calculator.
"""


def plot_scorecard(sc: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from labkit.plots import savefig

    names = list(sc["models"])
    acc = [sc["models"][n]["accuracy"] for n in names]
    err = np.array([[a - sc["models"][n]["accuracy_ci"][0], sc["models"][n]["accuracy_ci"][1] - a]
                    for n, a in zip(names, acc)]).T
    sacc = [sc["models"][n]["sampled_accuracy"] for n in names]
    serr = np.array([[a - sc["models"][n]["sampled_accuracy_ci"][0], sc["models"][n]["sampled_accuracy_ci"][1] - a]
                     for n, a in zip(names, sacc)]).T
    fig, ax = plt.subplots(figsize=(6, 3.6))
    x = np.arange(len(names))
    ax.bar(x - 0.2, acc, 0.4, yerr=err, capsize=4, label="greedy")
    ax.bar(x + 0.2, sacc, 0.4, yerr=serr, capsize=4, label="sampled (T=0.7)")
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1)
    ax.set_ylabel("held-out accuracy (95% CI)")
    ax.set_title(f"story arithmetic, {sc['n']} held-out problems")
    ax.legend()
    return savefig(fig, path)


# ============================================================================ 8. the whole chain
def preflight() -> None:
    """Call each piece a learner writes once on a trivial input, so an unfinished ``lab.py`` fails in
    a second rather than after minutes of requests to a teacher that cannot answer."""
    teacher_answer("Tom has 1 apples. He finds 1 more apples. How many apples does Tom have now?")
    check_answer("2", 2)
    judge_pairs([], [], [])
    paired_bootstrap_ci([1.0], [0.0], n_boot=2)
    win_rate([True], [False])
    l2 = _lab(LORA_LAB)
    tiny = nn.Sequential(nn.Linear(2, 2))
    l2.apply_lora(tiny, l2.LoRAConfig(r=1, alpha=1.0, target_modules=("0",)))
    merge_and_unwrap(tiny)


def build_assistant(cfg: AssistantConfig, out: str | os.PathLike, client: Any = None, model: str | None = None,
                    quiet: bool = True) -> dict:
    """Run stages 1-5 into ``out`` and write ``run.json``, ``EVAL_REPORT.md`` and ``MODEL_CARD.md``."""
    preflight()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}  # process CPU seconds per stage (wall is noisy on a shared machine)
    try:
        t, c = time.perf_counter(), time.process_time()
        data = generate_dataset(cfg, out, client, model, quiet=quiet)
        timings["data"] = time.perf_counter() - t
        cpu["data"] = time.process_time() - c
        examples = _read_jsonl(out / "data" / "sft.jsonl")
        if not examples:
            raise RuntimeError("the filters kept no example: nothing to fine-tune on (see data/report.md)")
        t, c = time.perf_counter(), time.process_time()
        sft = train_sft_stage(cfg, examples, out)
        timings["sft"] = time.perf_counter() - t
        cpu["sft"] = time.process_time() - c
        t, c = time.perf_counter(), time.process_time()
        pairs, prefs = preference_stage(cfg, examples, out)
        timings["preferences"] = time.perf_counter() - t
        cpu["preferences"] = time.process_time() - c
        t, c = time.perf_counter(), time.process_time()
        dpo = dpo_stage(cfg, pairs, out)
        timings["dpo"] = time.perf_counter() - t
        cpu["dpo"] = time.process_time() - c
        heldout = heldout_problems(cfg.n_heldout, cfg.seed, exclude=[ex["instruction"] for ex in examples])
        _write_jsonl(out / "data" / "heldout.jsonl", heldout)
        t, c = time.perf_counter(), time.process_time()
        sc = evaluate_models({"base": base_model_dir(cfg), "SFT": out / "sft", "SFT+DPO": out / "dpo"}, heldout, cfg)
        timings["eval"] = time.perf_counter() - t
        cpu["eval"] = time.process_time() - c
    finally:
        torch.set_num_threads(threads)
    run = {"config": asdict(cfg), "data": data, "sft": sft, "prefs": prefs, "dpo": dpo, "scorecard": sc,
           "timings": timings, "cpu_timings": cpu}
    (out / "run.json").write_text(json.dumps(run, indent=2), encoding="utf-8")
    (out / "EVAL_REPORT.md").write_text(eval_report(run), encoding="utf-8")
    (out / "MODEL_CARD.md").write_text(model_card(run), encoding="utf-8")
    return run


def _lib_versions() -> str:
    out = []
    for lib in ("torch", "transformers", "trl", "tokenizers"):
        try:
            out.append(f"{lib}={metadata.version(lib)}")
        except metadata.PackageNotFoundError:
            out.append(f"{lib}=none")
    return ",".join(out)


def cache_key(cfg: AssistantConfig) -> str:
    """sha256 over this file, the seeds, the composed labs' solution.py, the base model's key, the config, libraries."""
    from labkit import REPO_ROOT

    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    h.update(SEEDS_PATH.read_bytes())
    for lab in COMPOSED_LABS:
        h.update((REPO_ROOT / lab / "solution.py").read_bytes())
    if cfg.base_model in ("main", "draft"):
        from labkit.curriculum import cache_key as base_key

        h.update(base_key(cfg.base_model).encode())
    else:
        h.update(cfg.base_model.encode())
    h.update(cfg.to_json().encode())
    h.update(_lib_versions().encode())
    return h.hexdigest()


def assistant_dir(name: str = "mini") -> Path:
    """The cached run of config ``name`` (``.cache/models/capstone04-<name>-<key16>/``), built on first use
    under an ``fcntl`` lock into a temporary folder that is renamed into place (a crash leaves no half run)."""
    from labkit.cache import build_once
    from labkit.data import cache_dir

    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; known: {sorted(CONFIGS)}")
    cfg = CONFIGS[name]
    key = cache_key(cfg)
    models = cache_dir() / "models"
    final = models / f"capstone04-{name}-{key[:16]}"
    return build_once(final, lambda tmp: build_assistant(cfg, tmp), key=key, ready="run.json",
                      message=f"[capstone 4] building the {name} run into {final} (once) ...")


def load_run(folder: str | os.PathLike) -> dict:
    return json.loads((Path(folder) / "run.json").read_text(encoding="utf-8"))


def scorecard_ok(sc: dict) -> list[str]:
    """The capstone's claims as a list of failures (empty = all hold): SFT+DPO >= SFT >= base on greedy
    accuracy, every CI contains its estimate."""
    names = list(sc["models"])
    acc = [sc["models"][n]["accuracy"] for n in names]
    problems = [f"{names[i]} ({acc[i]:.3f}) < {names[i - 1]} ({acc[i - 1]:.3f})"
                for i in range(1, len(acc)) if acc[i] < acc[i - 1]]
    for n in names:
        m = sc["models"][n]
        for key in ("accuracy", "sampled_accuracy"):
            lo, hi = m[key + "_ci"]
            if not lo <= m[key] <= hi:
                problems.append(f"{n} {key} {m[key]:.3f} outside its CI [{lo:.3f}, {hi:.3f}]")
    return problems


# ============================================================================ self-test
def print_run(run: dict, folder: Path) -> None:
    print(f"== capstone 4: story-math assistant, {run['config']['name']} mode ({folder})")
    print(f"base model {run['config']['base_model']}; build times (s wall): "
          + ", ".join(f"{k} {v:.1f}" for k, v in run["timings"].items()))
    if run.get("cpu_timings"):
        print("build times (s CPU): " + ", ".join(f"{k} {v:.1f}" for k, v in run["cpu_timings"].items())
              + f"; total {sum(run['cpu_timings'].values()):.1f}")
    d = run["data"]
    print(f"\n-- 1. synthetic data (lab 6.3 pipeline): {d['requested']} requested, {d['raw']} generated "
          f"({d['requests']} API requests), {d['kept']} kept\n{stages_table(d['stages'])}")
    s = run["sft"]
    print(f"\n-- 2. LoRA SFT: {s['trainable_params']:,} of {s['total_params']:,} parameters trainable, {s['steps']} steps, "
          f"loss {s['loss_first']:.3f} -> {s['loss_last']:.3f}, adapter {s['adapter_bytes']:,} B")
    p = run["prefs"]
    print(f"-- 3. preferences: {p['samples']} SFT samples on {p['prompts']} prompts, {_pct(p['sample_accuracy'])} "
          f"correct, {p['pairs']} (correct, wrong) pairs")
    q = run["dpo"]
    loss = f"loss {q['loss_first']:.3f} -> {q['loss_last']:.3f}" if q["loss_first"] is not None else "no logged loss"
    print(f"-- 4. DPO (trl.DPOTrainer, LoRA): {q['pairs']} pairs, {loss}")
    sc = run["scorecard"]
    print(f"\n-- 5. scorecard on {sc['n']} held-out problems\n{scorecard_table(sc)}\n\n{deltas_table(sc)}")
    print(f"\n{constant_answer_check(sc)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true",
                    help="the README's small mode (cached; about 4 minutes of CPU to build); default: mini mode")
    ap.add_argument("--smoke", action="store_true", help="the seconds-long smoke config into outputs/smoke")
    ap.add_argument("--full", action="store_true", help="the spec's scale (a GPU, a real teacher and base model)")
    ap.add_argument("--base-url", help="OpenAI-compatible teacher endpoint (default: the rule-based teacher)")
    ap.add_argument("--model", help="teacher model name at --base-url")
    ap.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "unused"))
    ap.add_argument("--base-model", help="HF id or folder of the model to post-train (full mode)")
    ap.add_argument("--out", type=Path, help="run folder (default: the cache for mini and small mode, outputs/<mode> otherwise)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = FULL if args.full else SMOKE if args.smoke else SMALL if args.small else MINI
    if args.base_model:
        cfg = replace(cfg, base_model=args.base_model)
    client = None
    if args.base_url:
        import openai

        client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=60.0)
    t0, c0 = time.perf_counter(), time.process_time()
    if cfg in (SMALL, MINI) and client is None and args.out is None:
        folder = assistant_dir(cfg.name)
        run = load_run(folder)
    else:
        folder = args.out or OUTPUTS / cfg.name
        if folder.exists():
            shutil.rmtree(folder)
        run = build_assistant(cfg, folder, client, args.model)
    print_run(run, folder)
    OUTPUTS.mkdir(parents=True, exist_ok=True)
    for f in ("EVAL_REPORT.md", "MODEL_CARD.md", "run.json"):
        if folder != OUTPUTS / cfg.name:
            shutil.copy(folder / f, OUTPUTS / f"{cfg.name}-{f}")
    fig = plot_scorecard(run["scorecard"], HERE / "figures" / f"scorecard-{cfg.name}.png")
    print(f"\nwrote {fig}, EVAL_REPORT.md and MODEL_CARD.md (in {folder})")
    print(f"self-test: {time.perf_counter() - t0:.1f} s wall, {time.process_time() - c0:.1f} s CPU in this process")
    problems = [] if cfg is SMOKE else scorecard_ok(run["scorecard"])
    if run["data"]["sft_examples"] < MIN_SFT_EXAMPLES.get(cfg.name, 0):
        problems.append(f"only {run['data']['sft_examples']} SFT examples survived the filters "
                        f"(want >= {MIN_SFT_EXAMPLES[cfg.name]})")
    sft_gain = next((d for d in run["scorecard"]["deltas"] if (d["a"], d["b"]) == ("SFT", "base")), None)
    if cfg is not SMOKE and sft_gain and not sft_gain["ci"][0] > 0:
        problems.append(f"SFT's gain over base {sft_gain['diff']:+.3f} has a paired CI {sft_gain['ci']} that is not above 0")
    for p in problems:
        print("FAILED:", p)
    print("OK: SFT+DPO >= SFT >= base (SFT over base with a paired CI above 0), CIs printed" if not problems else f"{len(problems)} check(s) failed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

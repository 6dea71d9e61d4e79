"""Lab 10.2: a pretraining data pipeline, from WARC records to uint16 token shards, on Dask.

The stages, each a plain function over one shard (so the single-process path and the engine run
the *same* code):

1. ``extract``   WARC/ARC/WET records (``warcio``) -> HTML-to-text (BeautifulSoup, dropping
                 script/style/nav/header/footer/aside/form).
2. ``langid``    fastText language ID (``lid.176.ftz``, Joulin et al. 2016) keeps one language.
3. ``quality``   C4 line rules (Raffel et al. 2020, sec. 2.2) then Gopher document rules (Rae et al.
                 2021, appendix A.1.1); every rule is a named function returning a drop reason.
4. ``minhash``   per-document MinHash signatures over word 5-gram shingles (Broder 1997), from
                 scratch, checked against ``datasketch``.
5. ``dedup``     one global step: exact duplicates (SHA-256 of the normalised text) and near
                 duplicates via LSH banding (Leskovec, Rajaraman & Ullman, *Mining of Massive
                 Datasets*, ch. 3) + union-find; the smallest document key of a cluster survives.
6. ``decontam``  drops documents sharing a word 13-gram with an eval set (GPT-3 paper, appendix C).
7. ``tokenize``  the Phase 5 BPE tokenizer, ``<|endoftext|>`` after every document, uint16 shards.

Then a manifest (documents, tokens, bytes and SHA-256 per shard, the config hash) and a per-stage
report (documents and bytes in/out, drop reasons).

Every stage writes ``work/<stage>/<shard>.jsonl`` atomically and *then* a ``.done.json`` marker
holding its statistics and the config hash, so a killed run resumes where it stopped and a rerun
with the same config does no work.

The engine is Dask (``dask.delayed`` graph; the local ``processes`` scheduler by default, or a
``distributed`` cluster given ``--scheduler tcp://host:8786``).

Run: ``python solution.py`` (small mode: 260 planted pages in 4 WARC files and 1 WET file plus the mirror's
warcio samples; CPU; well under a minute).
"""
from __future__ import annotations

import argparse
import bz2
import dataclasses
import hashlib
import io
import json
import os
import random
import re
import sys
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from labkit import dataset_path, load_lab, read_text, seed_everything

HERE = Path(__file__).resolve().parent
STAGES = ("extract", "langid", "quality", "minhash", "dedup", "decontam", "tokenize")
MERSENNE_61 = np.uint64((1 << 61) - 1)
MAX_HASH_32 = np.uint64((1 << 32) - 1)
EOT_ID = 0  # the curriculum tokenizer's <|endoftext|>

# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PipelineConfig:
    """Everything that changes the pipeline's output; its hash names the run (see :func:`config_hash`).

    ``stage_delay_s`` (a pause after each stage-shard, for the kill test) and the engine settings are
    deliberately NOT part of the hash: they do not change a single output byte.
    """

    lang: str = "en"
    lang_threshold: float = 0.65
    c4_min_words_per_line: int = 3
    gopher_min_words: int = 50
    shingle_n: int = 5
    num_perm: int = 128
    bands: int = 16
    rows: int = 8
    minhash_seed: int = 1
    jaccard_threshold: float = 0.7
    contamination_n: int = 13
    eval_sets: tuple[tuple[str, str], ...] = (("gsm8k", "test.jsonl"),
                                               ("hellaswag", "hellaswag_val_full.txt.bz2"))
    eval_max_items: int | None = 1500  # per eval set; None = all (full mode)
    tokenizer: str = "main"
    stage_delay_s: float = field(default=0.0, compare=False)

    def __post_init__(self) -> None:
        if self.bands * self.rows != self.num_perm:
            raise ValueError(f"bands * rows must equal num_perm, got {self.bands} * {self.rows} != {self.num_perm}")
        if not 0.0 < self.jaccard_threshold <= 1.0:
            raise ValueError(f"jaccard_threshold must be in (0, 1], got {self.jaccard_threshold}")
        if self.shingle_n < 1 or self.contamination_n < 1:
            raise ValueError("shingle_n and contamination_n must be >= 1")

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("stage_delay_s")
        d["eval_sets"] = [list(x) for x in self.eval_sets]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], stage_delay_s: float = 0.0) -> PipelineConfig:
        d = dict(d)
        d["eval_sets"] = tuple(tuple(x) for x in d["eval_sets"])
        return cls(**d, stage_delay_s=stage_delay_s)


def _tokenizer_dir(name: str) -> Path:
    if Path(name).is_dir():
        return Path(name)
    from labkit import curriculum_model_path

    return Path(curriculum_model_path(name)) / "tokenizer"


def _hash_dir(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def config_hash(cfg: PipelineConfig) -> str:
    """SHA-256 (hex, first 16 chars) of the canonical JSON config plus the tokenizer's files: two runs
    with the same hash must produce byte-identical shards."""
    blob = json.dumps(cfg.to_json(), sort_keys=True) + _hash_dir(_tokenizer_dir(cfg.tokenizer))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# 1. WARC in, text out
# --------------------------------------------------------------------------------------------

DROP_TAGS = ("script", "style", "noscript", "nav", "header", "footer", "aside", "form", "iframe", "svg")


def html_to_text(html: bytes | str, encoding: str | None = None) -> str:
    """Visible main text of an HTML page: one line per block, blank lines and surrounding spaces removed.

    ``<script>``, ``<style>``, navigation, header, footer, aside and form elements are removed first
    (the boilerplate that an extractor like trafilatura/resiliparse also strips). Bytes are decoded by
    BeautifulSoup (``encoding`` from the HTTP header when known).
    """
    from bs4 import BeautifulSoup

    if isinstance(html, bytes):
        soup = BeautifulSoup(html, "html.parser", from_encoding=encoding)
    else:
        soup = BeautifulSoup(html, "html.parser")
    for tag in soup.find_all(DROP_TAGS):
        tag.decompose()
    lines = (" ".join(line.split()) for line in soup.get_text("\n").splitlines())
    return "\n".join(line for line in lines if line)


def _charset(content_type: str | None) -> str | None:
    m = re.search(r"charset=([\w-]+)", content_type or "", re.I)
    return m.group(1) if m else None


def iter_warc_documents(path: str | os.PathLike) -> Iterable[dict[str, Any]]:
    """Yield ``{"url", "text", "raw_bytes"}`` per HTML ``response`` record (HTML -> text) and per WET
    ``conversion`` record (already text) of a WARC, WARC.gz or ARC(.gz) file, in file order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    from warcio.archiveiterator import ArchiveIterator

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no WARC file at {path}")
    with open(path, "rb") as fh:
        for rec in ArchiveIterator(fh, arc2warc=True):
            url = rec.rec_headers.get_header("WARC-Target-URI") or ""
            if rec.rec_type == "response" and rec.http_headers is not None:
                ctype = rec.http_headers.get_header("Content-Type") or ""
                if "html" not in ctype.lower():
                    continue
                raw = rec.content_stream().read()
                yield {"url": url, "text": html_to_text(raw, _charset(ctype)), "raw_bytes": len(raw)}
            elif rec.rec_type == "conversion":
                raw = rec.content_stream().read()
                yield {"url": url, "text": raw.decode("utf-8", errors="replace").strip(), "raw_bytes": len(raw)}


# --------------------------------------------------------------------------------------------
# 3. quality rules: each returns None (keep) or a drop reason
# --------------------------------------------------------------------------------------------

TERMINAL_PUNCT = ('.', '!', '?', '"', "'", '”', '’')
C4_BAD_LINE_WORDS = ("javascript", "cookie", "privacy policy", "terms of use", "all rights reserved")
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
BULLETS = ("•", "-", "*", "·", "‣")


def c4_clean_lines(text: str, min_words: int = 3) -> tuple[str, int]:
    """C4's line filter: keep a line only if it ends in terminal punctuation, has at least ``min_words``
    words and mentions none of ``C4_BAD_LINE_WORDS`` (javascript / cookie / policy boilerplate).

    Returns ``(kept text joined by "\\n", number of lines dropped)``. C4 uses ``min_words=5``; we use 3
    because short dialogue lines are common in stories (see README).
    """
    kept, dropped = [], 0
    # BEGIN SOLUTION for each stripped non-empty line: drop it if it does not end with one of TERMINAL_PUNCT, has fewer than min_words whitespace words, or its lowercase form contains any of C4_BAD_LINE_WORDS; count the drops (easy, ~10 min)
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        low = line.lower()
        if (not line.endswith(TERMINAL_PUNCT) or len(line.split()) < min_words
                or any(w in low for w in C4_BAD_LINE_WORDS)):
            dropped += 1
            continue
        kept.append(line)
    # END SOLUTION
    return "\n".join(kept), dropped


def c4_lorem_ipsum(text: str) -> str | None:
    """C4 drops any page containing "lorem ipsum" (placeholder text)."""
    return "c4_lorem_ipsum" if "lorem ipsum" in text.lower() else None


def gopher_word_count(words: Sequence[str], lo: int = 50, hi: int = 100_000) -> str | None:
    """Gopher: keep documents of ``lo``..``hi`` words."""
    return None if lo <= len(words) <= hi else "gopher_word_count"


def gopher_mean_word_length(words: Sequence[str], lo: float = 3.0, hi: float = 10.0) -> str | None:
    """Gopher: the mean word length (characters) must lie in [``lo``, ``hi``]."""
    # BEGIN SOLUTION mean of len(w) over words (an empty list fails the rule); outside [lo, hi] -> "gopher_mean_word_length" (easy, ~3 min)
    if not words:
        return "gopher_mean_word_length"
    mean = sum(len(w) for w in words) / len(words)
    return None if lo <= mean <= hi else "gopher_mean_word_length"
    # END SOLUTION


def gopher_symbol_ratio(text: str, words: Sequence[str], max_ratio: float = 0.1) -> str | None:
    """Gopher: (number of "#" characters + number of ellipses "..." or "…") / number of words must be
    at most ``max_ratio``."""
    # BEGIN SOLUTION count text.count("#") + text.count("...") + text.count("…"); divide by max(len(words), 1); above max_ratio -> "gopher_symbol_ratio" (easy, ~5 min)
    n_sym = text.count("#") + text.count("...") + text.count("…")
    return None if n_sym / max(len(words), 1) <= max_ratio else "gopher_symbol_ratio"
    # END SOLUTION


def gopher_alpha_words(words: Sequence[str], min_frac: float = 0.8) -> str | None:
    """Gopher: at least ``min_frac`` of the words must contain an alphabetic character."""
    # BEGIN SOLUTION fraction of words with any(c.isalpha() for c in w); below min_frac (or no words) -> "gopher_alpha_words" (easy, ~3 min)
    if not words:
        return "gopher_alpha_words"
    frac = sum(any(c.isalpha() for c in w) for w in words) / len(words)
    return None if frac >= min_frac else "gopher_alpha_words"
    # END SOLUTION


def gopher_stop_words(words: Sequence[str], min_count: int = 2) -> str | None:
    """Gopher: at least ``min_count`` distinct English stop words from ``STOP_WORDS`` must appear
    (real prose uses "the", "and", "of"; keyword spam and gibberish do not)."""
    # BEGIN SOLUTION lowercase each word and strip punctuation from both ends; count the DISTINCT members of STOP_WORDS present; fewer than min_count -> "gopher_stop_words" (easy, ~5 min)
    present = {w.lower().strip(".,!?;:\"'()") for w in words} & STOP_WORDS
    return None if len(present) >= min_count else "gopher_stop_words"
    # END SOLUTION


def gopher_bullets_ellipsis(lines: Sequence[str], max_bullet: float = 0.9,
                            max_ellipsis: float = 0.3) -> str | None:
    """Gopher: at most 90% of lines may start with a bullet and at most 30% may end with an ellipsis."""
    if not lines:
        return None
    if sum(ln.lstrip().startswith(BULLETS) for ln in lines) / len(lines) > max_bullet:
        return "gopher_bullet_lines"
    if sum(ln.rstrip().endswith(("...", "…")) for ln in lines) / len(lines) > max_ellipsis:
        return "gopher_ellipsis_lines"
    return None


def gopher_duplicate_lines(lines: Sequence[str], max_frac: float = 0.3) -> str | None:
    """Gopher repetition rule: the fraction of lines that repeat an earlier line must be at most
    ``max_frac``."""
    # BEGIN SOLUTION walk the lines keeping a set of those seen; count lines already in the set; count / len(lines) above max_frac -> "gopher_duplicate_lines" (no lines: keep) (easy, ~5 min)
    if not lines:
        return None
    seen: set[str] = set()
    dup = 0
    for ln in lines:
        if ln in seen:
            dup += 1
        seen.add(ln)
    return None if dup / len(lines) <= max_frac else "gopher_duplicate_lines"
    # END SOLUTION


def quality_filter(text: str, cfg: PipelineConfig = PipelineConfig()) -> tuple[str | None, str]:
    """Apply the C4 line filter, then the page rules in a fixed order; return ``(reason, cleaned)``
    where ``reason`` is None for a kept document (the first failing rule names the drop)."""
    if (r := c4_lorem_ipsum(text)) is not None:
        return r, text
    lines_before = [ln for ln in text.splitlines() if ln.strip()]
    # the repetition and bullet rules look at the page before line cleaning (Gopher runs on raw text)
    for r in (gopher_duplicate_lines(lines_before), gopher_bullets_ellipsis(lines_before)):
        if r is not None:
            return r, text
    cleaned, _ = c4_clean_lines(text, cfg.c4_min_words_per_line)
    words = cleaned.split()
    for r in (gopher_word_count(words, cfg.gopher_min_words), gopher_mean_word_length(words),
              gopher_symbol_ratio(cleaned, words), gopher_alpha_words(words), gopher_stop_words(words)):
        if r is not None:
            return r, cleaned
    return None, cleaned


# --------------------------------------------------------------------------------------------
# 4-5. MinHash, LSH banding, exact Jaccard
# --------------------------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """NFKC, lowercase, punctuation removed, whitespace collapsed: what dedup and decontamination compare."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())


def shingles(text: str, n: int = 5) -> set[str]:
    """Set of word ``n``-grams of the normalised text; a text shorter than ``n`` words is one shingle.

    Raises:
        ValueError: the text has no words, or ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    words = normalize_text(text).split()
    if not words:
        raise ValueError("cannot shingle an empty text")
    if len(words) < n:
        return {" ".join(words)}
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set, b: set) -> float:
    """Exact Jaccard similarity |a & b| / |a | b| (two empty sets: 1.0)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def minhash_permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(a, b)``, each ``(num_perm,)`` uint64, for the hash family h_i(x) = ((a_i x + b_i) mod p) & (2^32-1),
    p = 2^61 - 1 (a_i >= 1). Seeded, so every worker builds the same family."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, int(MERSENNE_61), size=num_perm, dtype=np.uint64)
    b = rng.integers(0, int(MERSENNE_61), size=num_perm, dtype=np.uint64)
    return a, b


def shingle_hashes(sh: Iterable[str]) -> np.ndarray:
    """32-bit hashes (first 4 bytes of SHA-1, little endian, as datasketch) of each shingle: ``(n,)`` uint64."""
    return np.array([int.from_bytes(hashlib.sha1(s.encode("utf-8")).digest()[:4], "little") for s in sh],
                    dtype=np.uint64)


def minhash_signature(sh: set[str], num_perm: int = 128, seed: int = 1) -> np.ndarray:
    """MinHash signature ``(num_perm,)`` uint64 of a shingle set: for each of ``num_perm`` hash
    functions, the minimum hash over the set. P[sig_a[i] == sig_b[i]] = Jaccard(a, b) (Broder 1997).

    Raises:
        ValueError: empty shingle set.
    """
    if not sh:
        raise ValueError("minhash of an empty shingle set is undefined")
    a, b = minhash_permutations(num_perm, seed)
    # BEGIN SOLUTION hv = shingle_hashes(sorted(sh)) as a (n, 1) column; phv = ((hv * a + b) % MERSENNE_61) & MAX_HASH_32 broadcasts to (n, num_perm) (uint64 wrap-around is part of the hash, like datasketch); return the column-wise minimum (medium, ~15 min)
    hv = shingle_hashes(sorted(sh))[:, None]
    with np.errstate(over="ignore"):
        phv = ((hv * a[None, :] + b[None, :]) % MERSENNE_61) & MAX_HASH_32
    return phv.min(axis=0)
    # END SOLUTION


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """Fraction of equal signature positions: an unbiased estimate of the Jaccard similarity."""
    if sig_a.shape != sig_b.shape:
        raise ValueError(f"signature shapes differ: {sig_a.shape} vs {sig_b.shape}")
    return float(np.mean(sig_a == sig_b))


def lsh_candidate_pairs(signatures: np.ndarray, bands: int, rows: int) -> set[tuple[int, int]]:
    """LSH banding: split each ``(N, bands*rows)`` signature into ``bands`` bands of ``rows`` values;
    two documents are candidates when ANY band is identical. Returns pairs ``(i, j)`` with ``i < j``.
    The chance a pair with Jaccard s becomes a candidate is 1 - (1 - s^rows)^bands.

    Raises:
        ValueError: the signature width is not ``bands * rows``.
    """
    if signatures.ndim != 2 or signatures.shape[1] != bands * rows:
        raise ValueError(f"signatures must be (N, {bands * rows}), got {signatures.shape}")
    pairs: set[tuple[int, int]] = set()
    # BEGIN SOLUTION for each band, bucket documents by the bytes (or tuple) of signatures[:, band*rows:(band+1)*rows]; every pair inside a bucket is a candidate, stored as (min, max) (medium, ~15 min)
    for band in range(bands):
        buckets: dict[bytes, list[int]] = {}
        block = np.ascontiguousarray(signatures[:, band * rows:(band + 1) * rows])
        for i in range(block.shape[0]):
            buckets.setdefault(block[i].tobytes(), []).append(i)
        for members in buckets.values():
            for x in range(len(members)):
                for y in range(x + 1, len(members)):
                    pairs.add((members[x], members[y]))
    # END SOLUTION
    return pairs


def lsh_probability(s: float, bands: int, rows: int) -> float:
    """P[candidate] = 1 - (1 - s^rows)^bands for a pair of Jaccard similarity ``s``."""
    return 1.0 - (1.0 - s ** rows) ** bands


class UnionFind:
    """Disjoint sets over 0..n-1 with path halving; ``find`` returns the smallest member's root."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = min(ra, rb), max(ra, rb)
            self.parent[hi] = lo  # the smaller index stays the root, so the earliest key survives


def near_duplicate_pairs(signatures: np.ndarray, cfg: PipelineConfig) -> set[tuple[int, int]]:
    """LSH candidates kept only when their estimated Jaccard is >= ``cfg.jaccard_threshold``."""
    return {(i, j) for i, j in lsh_candidate_pairs(signatures, cfg.bands, cfg.rows)
            if estimate_jaccard(signatures[i], signatures[j]) >= cfg.jaccard_threshold}


def precision_recall(predicted: set, truth: set) -> tuple[float, float]:
    """(precision, recall) of a predicted pair set against the ground-truth pair set (empty -> 1.0)."""
    tp = len(predicted & truth)
    return (tp / len(predicted) if predicted else 1.0, tp / len(truth) if truth else 1.0)


# --------------------------------------------------------------------------------------------
# 6. contamination
# --------------------------------------------------------------------------------------------


def ngram_hashes(text: str, n: int = 13) -> np.ndarray:
    """Sorted unique 64-bit hashes (BLAKE2b-8) of the word ``n``-grams of the normalised text:
    ``(k,)`` uint64, empty when the text has fewer than ``n`` words."""
    words = normalize_text(text).split()
    hs = {int.from_bytes(hashlib.blake2b(" ".join(words[i:i + n]).encode(), digest_size=8).digest(), "little")
          for i in range(len(words) - n + 1)}
    return np.array(sorted(hs), dtype=np.uint64)


def eval_texts(name: str, file: str, max_items: int | None = None) -> list[str]:
    """The texts of a mirror eval set that a training document must not contain: GSM8K questions,
    HellaSwag context + gold ending; the first ``max_items`` items (None: all)."""
    if name == "gsm8k":
        lines = [ln for ln in read_text(name, file).splitlines() if ln.strip()][:max_items]
        return [json.loads(line)["question"] for line in lines]
    if name == "hellaswag":
        with bz2.open(dataset_path(name, file), "rt", encoding="utf-8") as fh:
            lines = fh.read().splitlines()
        out = []
        for k in range(0, len(lines) - 5, 6):
            if max_items is not None and len(out) >= max_items:
                break
            ctx, label, endings = lines[k], int(lines[k + 1]), lines[k + 2:k + 6]
            out.append(ctx.split(": ", 1)[-1] + " " + endings[label])
        return out
    raise ValueError(f"unknown eval set {name!r} (known: gsm8k, hellaswag)")


def contaminated(doc_ngrams: np.ndarray, eval_ngrams: np.ndarray) -> int:
    """Number of the document's distinct n-grams that also occur in the (sorted) eval n-gram set;
    a document is dropped when this is > 0."""
    # BEGIN SOLUTION np.isin(doc_ngrams, eval_ngrams).sum() as an int (or a searchsorted membership test on the sorted eval array) (easy, ~5 min)
    return int(np.isin(doc_ngrams, eval_ngrams, assume_unique=True).sum())
    # END SOLUTION


# --------------------------------------------------------------------------------------------
# the stage runner: idempotent, atomic, per shard
# --------------------------------------------------------------------------------------------


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _jsonl(docs: Iterable[dict]) -> bytes:
    return "".join(json.dumps(d, ensure_ascii=False, sort_keys=True) + "\n" for d in docs).encode("utf-8")


def marker_path(work: Path, stage: str, shard: str) -> Path:
    return work / stage / f"{shard}.done.json"


def run_stage_shard(work: Path, stage: str, shard: str, chash: str,
                    compute: Callable[[], tuple[dict[str, bytes], dict]], delay_s: float = 0.0) -> dict:
    """Run one stage on one shard unless it is already done for this config; return its stats.

    ``compute()`` returns ``(files, stats)``: ``files`` maps a file name (inside ``work/stage``) to its
    bytes. Order matters for crash safety: write every output file atomically (temp + ``os.replace``),
    THEN the marker ``work/stage/<shard>.done.json`` = ``{"config_hash", "stats"}``. A marker whose
    hash differs from ``chash`` is stale: recompute. The returned stats carry ``"resumed": True``
    when the work was skipped.
    """
    marker = marker_path(work, stage, shard)
    # BEGIN SOLUTION if the marker exists and its config_hash == chash: return {**its stats, "resumed": True}; else call compute(), _atomic_write each file under work/stage, then _atomic_write the marker (json, sort_keys) LAST; sleep delay_s if > 0 (the kill test's window); return {**stats, "resumed": False} (medium, ~15 min)
    if marker.is_file():
        done = json.loads(marker.read_text(encoding="utf-8"))
        if done.get("config_hash") == chash:
            return {**done["stats"], "resumed": True}
    files, stats = compute()
    for name, data in files.items():
        _atomic_write(work / stage / name, data)
    _atomic_write(marker, json.dumps({"config_hash": chash, "stats": stats}, sort_keys=True).encode())
    if delay_s > 0:
        time.sleep(delay_s)
    return {**stats, "resumed": False}
    # END SOLUTION


def _stats(docs_in: list[dict], docs_out: list[dict], drops: Counter, bytes_in: int | None = None) -> dict:
    def nbytes(ds: list[dict]) -> int:
        return sum(len(d["text"].encode("utf-8")) for d in ds)

    return {"docs_in": len(docs_in), "docs_out": len(docs_out),
            "bytes_in": nbytes(docs_in) if bytes_in is None else bytes_in, "bytes_out": nbytes(docs_out),
            "drops": dict(sorted(drops.items()))}


# each stage function: (work_dir, shard, input path, cfg json, config hash, *deps) -> stats.
# Plain top-level functions of strings, so Dask can ship them to any worker.

def _process_cache() -> dict:
    """A per-process cache (fastText model, tokenizer) kept in a synthetic module in ``sys.modules``:
    it lives in each worker and never travels with the pickled stage functions."""
    import types

    return sys.modules.setdefault("_lab10_2_cache", types.ModuleType("_lab10_2_cache")).__dict__


def _lid_model() -> Any:
    cache = _process_cache()
    if "lid" not in cache:
        import fasttext

        cache["lid"] = fasttext.load_model(str(dataset_path("fasttext-lid", "lid.176.ftz")))
    return cache["lid"]


def stage_extract(work: str, shard: str, src: str, cfgd: dict, chash: str, delay: float = 0.0) -> dict:
    def compute():
        docs, raw, drops = [], 0, Counter()
        for k, d in enumerate(iter_warc_documents(src)):
            raw += d["raw_bytes"]
            if not d["text"].strip():
                drops["empty_text"] += 1
                continue
            docs.append({"key": f"{shard}/{k:05d}", "url": d["url"], "text": d["text"]})
        n = len(docs) + sum(drops.values())
        st = _stats(docs, docs, drops, bytes_in=raw)
        st["docs_in"] = n
        return {f"{shard}.jsonl": _jsonl(docs)}, st
    return run_stage_shard(Path(work), "extract", shard, chash, compute, delay)


def stage_langid(work: str, shard: str, src: str, cfgd: dict, chash: str, delay: float = 0.0, *deps) -> dict:
    cfg = PipelineConfig.from_json(cfgd)

    def compute():
        model = _lid_model()
        docs_in = _read_jsonl(Path(work) / "extract" / f"{shard}.jsonl")
        out, drops = [], Counter()
        for d in docs_in:
            labels, probs = model.predict(d["text"].replace("\n", " "), k=1)
            lang, p = labels[0].removeprefix("__label__"), float(probs[0])
            if lang != cfg.lang:
                drops[f"lang_{lang}"] += 1
            elif p < cfg.lang_threshold:
                drops["lang_low_confidence"] += 1
            else:
                out.append({**d, "lang_score": round(p, 4)})
        return {f"{shard}.jsonl": _jsonl(out)}, _stats(docs_in, out, drops)
    return run_stage_shard(Path(work), "langid", shard, chash, compute, delay)


def stage_quality(work: str, shard: str, src: str, cfgd: dict, chash: str, delay: float = 0.0, *deps) -> dict:
    cfg = PipelineConfig.from_json(cfgd)

    def compute():
        docs_in = _read_jsonl(Path(work) / "langid" / f"{shard}.jsonl")
        out, drops = [], Counter()
        for d in docs_in:
            reason, cleaned = quality_filter(d["text"], cfg)
            if reason is None:
                out.append({**d, "text": cleaned})
            else:
                drops[reason] += 1
        return {f"{shard}.jsonl": _jsonl(out)}, _stats(docs_in, out, drops)
    return run_stage_shard(Path(work), "quality", shard, chash, compute, delay)


def stage_minhash(work: str, shard: str, src: str, cfgd: dict, chash: str, delay: float = 0.0, *deps) -> dict:
    cfg = PipelineConfig.from_json(cfgd)

    def compute():
        docs = _read_jsonl(Path(work) / "quality" / f"{shard}.jsonl")
        sigs = np.stack([minhash_signature(shingles(d["text"], cfg.shingle_n), cfg.num_perm, cfg.minhash_seed)
                         for d in docs]) if docs else np.zeros((0, cfg.num_perm), np.uint64)
        exact = [hashlib.sha256(normalize_text(d["text"]).encode()).hexdigest() for d in docs]
        buf = io.BytesIO()
        np.savez(buf, keys=np.array([d["key"] for d in docs], dtype=str), sigs=sigs, exact=np.array(exact, dtype=str))
        return {f"{shard}.npz": buf.getvalue()}, _stats(docs, docs, Counter())
    return run_stage_shard(Path(work), "minhash", shard, chash, compute, delay)


def stage_dedup_index(work: str, shards: list[str], cfgd: dict, chash: str, delay: float = 0.0, *deps) -> dict:
    """The one global step: decide, over ALL shards, which document keys are duplicates."""
    cfg = PipelineConfig.from_json(cfgd)

    def compute():
        keys, sigs, exact = [], [], []
        for s in shards:
            with np.load(Path(work) / "minhash" / f"{s}.npz") as z:
                keys += z["keys"].tolist()
                sigs.append(z["sigs"])
                exact += z["exact"].tolist()
        order = sorted(range(len(keys)), key=keys.__getitem__)  # key order decides who survives
        keys = [keys[i] for i in order]
        exact = [exact[i] for i in order]
        sig = np.concatenate(sigs)[order] if keys else np.zeros((0, cfg.num_perm), np.uint64)
        drop: dict[str, str] = {}
        first: dict[str, int] = {}
        for i, h in enumerate(exact):
            if h in first:
                drop[keys[i]] = "exact_duplicate"
            else:
                first[h] = i
        uf = UnionFind(len(keys))
        for i, j in near_duplicate_pairs(sig, cfg):
            uf.union(i, j)
        for i, k in enumerate(keys):
            if k not in drop and uf.find(i) != i:
                drop[k] = "near_duplicate"
        st = {"docs_in": len(keys), "docs_out": len(keys) - len(drop),
              "drops": dict(sorted(Counter(drop.values()).items()))}
        return {"index.json": json.dumps(drop, sort_keys=True).encode()}, st
    return run_stage_shard(Path(work), "dedup", "_index", chash, compute, delay)


def stage_eval_ngrams(work: str, cfgd: dict, chash: str, *deps) -> dict:
    """Build the sorted eval n-gram hash array once (``work/decontam/_eval.npy``)."""
    cfg = PipelineConfig.from_json(cfgd)

    def compute():
        arrs = [ngram_hashes(t, cfg.contamination_n) for name, f in cfg.eval_sets
                for t in eval_texts(name, f, cfg.eval_max_items)]
        allh = np.unique(np.concatenate(arrs)) if arrs else np.zeros(0, np.uint64)
        buf = io.BytesIO()
        np.save(buf, allh)
        return {"_eval.npy": buf.getvalue()}, {"eval_ngrams": int(allh.size)}
    return run_stage_shard(Path(work), "decontam", "_eval", chash, compute)


def stage_decontam(work: str, shard: str, src: str, cfgd: dict, chash: str, delay: float = 0.0, *deps) -> dict:
    """Apply the dedup decision and the contamination check to one shard (docs_in = quality output)."""
    cfg = PipelineConfig.from_json(cfgd)

    def compute():
        docs_in = _read_jsonl(Path(work) / "quality" / f"{shard}.jsonl")
        dropped = json.loads((Path(work) / "dedup" / "index.json").read_text(encoding="utf-8"))
        eval_ng = np.load(Path(work) / "decontam" / "_eval.npy")
        out, drops = [], Counter()
        for d in docs_in:
            if d["key"] in dropped:
                drops[dropped[d["key"]]] += 1
            elif contaminated(ngram_hashes(d["text"], cfg.contamination_n), eval_ng) > 0:
                drops["contaminated"] += 1
            else:
                out.append(d)
        return {f"{shard}.jsonl": _jsonl(out)}, _stats(docs_in, out, drops)
    return run_stage_shard(Path(work), "decontam", shard, chash, compute, delay)


def encode_documents(texts: Sequence[str], tok: Any, eot_id: int = EOT_ID) -> np.ndarray:
    """Token ids of every text, each followed by ``eot_id``, as one flat uint16 array ``(n_tokens,)``.

    Raises:
        ValueError: the tokenizer's vocabulary does not fit in uint16 (> 65536 ids).
    """
    if tok.vocab_size > 1 << 16:
        raise ValueError(f"vocab_size {tok.vocab_size} does not fit in uint16 shards")
    # BEGIN SOLUTION concatenate tok.encode_ordinary(text) + [eot_id] for every text (in order) and return np.array(..., dtype=np.uint16) (an empty input -> an empty uint16 array) (easy, ~5 min)
    ids: list[int] = []
    for t in texts:
        ids.extend(tok.encode_ordinary(t))
        ids.append(eot_id)
    return np.array(ids, dtype=np.uint16)
    # END SOLUTION


def load_tokenizer(name: str = "main") -> Any:
    """The Phase 5 BPE tokenizer (lab 5.1's ``BPETokenizer``) of the curriculum model ``name`` or a folder."""
    cache = _process_cache()
    key = ("tokenizer", str(_tokenizer_dir(name)))
    if key not in cache:
        bpe = load_lab("phase-05-training-small-llms/lab-01-bpe-tokenizer")
        cache[key] = bpe.BPETokenizer.load(_tokenizer_dir(name))
    return cache[key]


def stage_tokenize(work: str, shard: str, src: str, cfgd: dict, chash: str, delay: float = 0.0, *deps) -> dict:
    cfg = PipelineConfig.from_json(cfgd)

    def compute():
        docs = _read_jsonl(Path(work) / "decontam" / f"{shard}.jsonl")
        arr = encode_documents([d["text"] for d in docs], load_tokenizer(cfg.tokenizer))
        st = _stats(docs, docs, Counter())
        st.update(tokens=int(arr.size), bin_bytes=int(arr.nbytes),
                  sha256=hashlib.sha256(arr.tobytes()).hexdigest())
        return {f"{shard}.bin": arr.tobytes()}, st
    return run_stage_shard(Path(work), "tokenize", shard, chash, compute, delay)


# --------------------------------------------------------------------------------------------
# the driver: the same stage functions, serially or as a Dask graph
# --------------------------------------------------------------------------------------------

MAP_STAGES: tuple[tuple[str, Callable], ...] = (
    ("extract", stage_extract), ("langid", stage_langid), ("quality", stage_quality), ("minhash", stage_minhash))


def _shard_names(inputs: Sequence[Path]) -> list[str]:
    names = [re.sub(r"[^\w.-]", "_", p.name) for p in inputs]
    if len(set(names)) != len(names):
        raise ValueError(f"input file names must be unique, got {names}")
    return names


def run_pipeline(inputs: Sequence[str | os.PathLike], out: str | os.PathLike, cfg: PipelineConfig = PipelineConfig(),
                 engine: str = "serial", scheduler: str | None = None, workers: int = 2) -> dict:
    """Run every stage over every input WARC; return the manifest (also written to ``out/manifest.json``).

    ``engine="serial"`` calls the stage functions in a loop; ``engine="dask"`` builds the same calls
    as a ``dask.delayed`` graph (per-shard map stages, one global dedup, per-shard decontam and
    tokenize) and computes it on the local ``processes`` scheduler with ``workers`` processes, or on
    a ``distributed`` cluster when ``scheduler`` is an address such as ``tcp://10.0.0.5:8786``.

    Raises:
        ValueError: unknown engine, no inputs.
        FileNotFoundError: an input file is missing.
    """
    if engine not in ("serial", "dask"):
        raise ValueError(f"engine must be 'serial' or 'dask', got {engine!r}")
    inputs = sorted((Path(p) for p in inputs), key=lambda p: p.name)  # canonical shard order
    if not inputs:
        raise ValueError("no input WARC files")
    for p in inputs:
        if not p.is_file():
            raise FileNotFoundError(f"input WARC {p} does not exist")
    out = Path(out)
    work = out / "work"
    shards = _shard_names(inputs)
    cfgd, chash, delay = cfg.to_json(), config_hash(cfg), cfg.stage_delay_s
    w = str(work)
    t0 = time.perf_counter()
    if engine == "serial":
        results: dict[str, dict[str, dict]] = {s: {} for s in STAGES}
        for shard, src in zip(shards, inputs):
            for name, fn in MAP_STAGES:
                results[name][shard] = fn(w, shard, str(src), cfgd, chash, delay)
        results["dedup"]["_index"] = stage_dedup_index(w, shards, cfgd, chash, delay)
        results["decontam"]["_eval"] = stage_eval_ngrams(w, cfgd, chash)
        for shard, src in zip(shards, inputs):
            results["decontam"][shard] = stage_decontam(w, shard, str(src), cfgd, chash, delay)
            results["tokenize"][shard] = stage_tokenize(w, shard, str(src), cfgd, chash, delay)
    else:
        results = _run_dask(w, shards, inputs, cfgd, chash, delay, scheduler, workers)
    wall = time.perf_counter() - t0
    manifest = write_manifest(out, shards, results, cfg, chash)
    report = stage_report(results, shards)
    resumed = sum(r.get("resumed", False) for st in results.values() for r in st.values())
    run_info = {"engine": engine, "wall_s": round(wall, 3), "stage_shards_resumed": int(resumed)}
    (out / "report.json").write_text(json.dumps({"stages": report, "run": run_info}, indent=1), encoding="utf-8")
    return {**manifest, "report": report, "run": run_info}


def _run_dask(w: str, shards: list[str], inputs: list[Path], cfgd: dict, chash: str, delay: float,
              scheduler: str | None, workers: int) -> dict[str, dict[str, dict]]:
    import cloudpickle
    import dask

    # lab modules are loaded by path (labkit.load_lab) under a name no worker can import: ship our
    # functions by value instead of by module reference
    mod = sys.modules[__name__]
    if __name__ != "__main__":
        cloudpickle.register_pickle_by_value(mod)
    d = dask.delayed
    graph: dict[str, dict[str, Any]] = {s: {} for s in STAGES}
    for shard, src in zip(shards, inputs):
        prev: Any = None
        for name, fn in MAP_STAGES:
            args = (w, shard, str(src), cfgd, chash, delay) + ((prev,) if prev is not None else ())
            prev = d(fn, pure=False)(*args, dask_key_name=f"{name}-{shard}")
            graph[name][shard] = prev
    idx = d(stage_dedup_index, pure=False)(w, shards, cfgd, chash, delay, *graph["minhash"].values(),
                                           dask_key_name="dedup-index")
    graph["dedup"]["_index"] = idx
    ev = d(stage_eval_ngrams, pure=False)(w, cfgd, chash, dask_key_name="eval-ngrams")
    graph["decontam"]["_eval"] = ev
    for shard, src in zip(shards, inputs):
        dc = d(stage_decontam, pure=False)(w, shard, str(src), cfgd, chash, delay, idx, ev,
                                           dask_key_name=f"decontam-{shard}")
        graph["decontam"][shard] = dc
        graph["tokenize"][shard] = d(stage_tokenize, pure=False)(w, shard, str(src), cfgd, chash, delay, dc,
                                                                  dask_key_name=f"tokenize-{shard}")
    flat = [(s, k, v) for s, per in graph.items() for k, v in per.items()]
    if scheduler:
        from distributed import Client

        with Client(scheduler) as client:
            values = client.compute([v for _, _, v in flat], sync=True)
    else:
        import multiprocessing

        values = dask.compute(*[v for _, _, v in flat], scheduler="processes", num_workers=workers,
                              mp_context=multiprocessing.get_context("spawn"))
    res: dict[str, dict[str, dict]] = {s: {} for s in STAGES}
    for (s, k, _), v in zip(flat, values):
        res[s][k] = v
    return res


def write_manifest(out: Path, shards: list[str], results: dict, cfg: PipelineConfig, chash: str) -> dict:
    """Copy the token shards to ``out/shards/`` and write ``out/manifest.json``: per shard the
    documents, tokens, bytes and SHA-256, totals, dtype, the EOT id, the config and its hash."""
    entries = []
    for s in shards:
        src = out / "work" / "tokenize" / f"{s}.bin"
        data = src.read_bytes()
        dst = out / "shards" / f"{s}.bin"
        _atomic_write(dst, data)
        st = results["tokenize"][s]
        entries.append({"shard": f"shards/{s}.bin", "docs": st["docs_out"], "tokens": st["tokens"],
                        "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    manifest = {"config_hash": chash, "config": cfg.to_json(), "dtype": "uint16", "eot_id": EOT_ID,
                "total_docs": sum(e["docs"] for e in entries), "total_tokens": sum(e["tokens"] for e in entries),
                "shards": entries}
    _atomic_write(out / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True).encode())
    return manifest


def stage_report(results: dict, shards: list[str]) -> list[dict]:
    """Per stage: documents and bytes in/out summed over shards, and the drop reasons."""
    rows = []
    for stage in STAGES:
        per = [results[stage][s] for s in shards] if stage != "dedup" else [results["dedup"]["_index"]]
        drops: Counter = Counter()
        for r in per:
            drops.update(r.get("drops", {}))
        row = {"stage": stage, "docs_in": sum(r["docs_in"] for r in per), "docs_out": sum(r["docs_out"] for r in per),
               "bytes_in": sum(r.get("bytes_in", 0) for r in per), "bytes_out": sum(r.get("bytes_out", 0) for r in per),
               "drops": dict(sorted(drops.items()))}
        if stage == "dedup":  # the global step sees keys only; bytes come from the decontam inputs
            row["bytes_in"] = row["bytes_out"] = None
        rows.append(row)
    return rows


def format_report(rows: list[dict]) -> str:
    lines = [f"{'stage':<9} {'docs in':>8} {'docs out':>8} {'bytes in':>10} {'bytes out':>10}  drop reasons"]
    for r in rows:
        b_in = "-" if r["bytes_in"] is None else str(r["bytes_in"])
        b_out = "-" if r["bytes_out"] is None else str(r["bytes_out"])
        reasons = ", ".join(f"{k}={v}" for k, v in r["drops"].items()) or "-"
        lines.append(f"{r['stage']:<9} {r['docs_in']:>8} {r['docs_out']:>8} {b_in:>10} {b_out:>10}  {reasons}")
    return "\n".join(lines)


def read_shard(path: str | os.PathLike) -> np.ndarray:
    """A token shard as a ``(n_tokens,)`` uint16 array."""
    return np.fromfile(path, dtype=np.uint16)


# --------------------------------------------------------------------------------------------
# the planted corpus: WARC files written from mirror text
# --------------------------------------------------------------------------------------------

FOREIGN = {
    "fr": ("Le petit village se trouve au bord de la rivière, entre les collines et la forêt. Chaque matin, "
           "les habitants vont au marché pour acheter du pain, des légumes et du fromage. Les enfants jouent "
           "dans la cour de l'école pendant que leurs parents travaillent dans les champs. En hiver, la neige "
           "couvre les toits et tout le monde reste près du feu pour raconter des histoires anciennes."),
    "es": ("La ciudad tiene un parque muy grande donde las familias pasan los domingos. Hay árboles altos, "
           "un lago pequeño con patos y muchos bancos para descansar. Los niños corren detrás de las palomas "
           "mientras los abuelos leen el periódico. Por la tarde, cuando el sol baja, la gente camina despacio "
           "hacia sus casas y las tiendas cierran sus puertas."),
    "it": ("La nonna preparava la pasta fresca ogni domenica mattina. Metteva la farina sul tavolo di legno, "
           "faceva un buco nel mezzo e aggiungeva le uova una alla volta. I nipoti guardavano con attenzione e "
           "cercavano di aiutarla, ma spesso finivano con le mani piene di farina. A pranzo tutta la famiglia "
           "si sedeva insieme e parlava per ore."),
    "pt": ("O barco saiu do porto muito cedo, quando o céu ainda estava escuro. Os pescadores levavam redes, "
           "cordas e comida para o dia inteiro. No mar aberto, o vento era forte e as ondas batiam no casco. "
           "Depois de muitas horas de trabalho, voltaram para casa com peixes suficientes para vender na feira "
           "da vila e alimentar as suas famílias."),
    "nl": ("Op zaterdag fietsen we vaak naar het strand. De weg gaat langs de duinen en door een klein bos. "
           "Als het mooi weer is, nemen we een picknick mee met brood, kaas en appels. De kinderen bouwen een "
           "zandkasteel en zoeken schelpen, terwijl de volwassenen in de zon liggen en een boek lezen tot het "
           "tijd is om naar huis te gaan."),
}
BOILERPLATE = ["This website uses cookies to improve your experience. Accept all cookies.",
               "Please enable JavaScript to view the comments.",
               "Read our privacy policy and terms of use.",
               "Copyright 2026 Example Media. All rights reserved.",
               "Share", "Menu", "Subscribe to our newsletter"]


def _page(title: str, paragraphs: Sequence[str], boiler: bool) -> bytes:
    from html import escape

    body = "".join(f"<p>{escape(p)}</p>\n" for p in paragraphs)
    extra = "".join(f"<div>{escape(b)}</div>\n" for b in BOILERPLATE) if boiler else ""
    html = (f"<!doctype html><html><head><title>{escape(title)}</title>"
            "<script>window.dataLayer = [];</script><style>p { margin: 0 }</style></head><body>\n"
            "<nav><a href='/'>Home</a> <a href='/about'>About</a> <a href='/blog'>Blog</a></nav>\n"
            f"<main>{body}{extra}</main>\n<footer>Contact us | Sitemap | Careers</footer></body></html>")
    return html.encode("utf-8")


def _mutate(text: str, rate: float, rng: random.Random) -> str:
    """Replace a fraction ``rate`` of the words with another word of the same text (a near duplicate)."""
    words = text.split(" ")
    pool = [w for w in words if w.isalpha()] or ["word"]
    for i in rng.sample(range(len(words)), max(1, int(rate * len(words)))):
        words[i] = rng.choice(pool)
    return " ".join(words)


def planted_documents(n_clean: int = 180, seed: int = 0, eval_max_items: int | None = 1500) -> list[dict]:
    """The lab's corpus before it becomes WARC: ``{"url", "paragraphs", "boiler", "kind", "of"}`` dicts.

    Kinds: ``clean`` (TinyStories stories and WikiText-2 paragraphs), ``exact_dup`` (same text, other
    URL and page chrome), ``near_dup`` (a few percent of the words replaced), ``non_english``,
    ``boilerplate_only``, ``gibberish`` (keyboard mash, symbol soup, repeated spam lines) and
    ``contaminated`` (a clean story with a GSM8K question or a HellaSwag context pasted in).
    ``of`` names the source document of a duplicate.
    """
    rng = random.Random(seed)
    stories, cur = [], []
    for para in read_text("tinystories", "valid_prefix_794k.txt").split("\n\n"):
        cur.append(para.strip())  # consecutive paragraphs, grouped into ~150-word pages
        if sum(len(x.split()) for x in cur) >= 150:
            stories.append("\n".join(cur))
            cur = []
    wiki = [ln.strip() for ln in read_text("wikitext-2", "valid.txt").splitlines()
            if len(ln.split()) >= 80 and not ln.strip().startswith("=")]
    n_wiki = n_clean // 4
    clean = [s.split("\n") for s in rng.sample(stories, n_clean - n_wiki)] + \
            [[p] for p in rng.sample(wiki, n_wiki)]
    docs = [{"url": f"https://stories.example/{i}", "paragraphs": p, "boiler": rng.random() < 0.4,
             "kind": "clean", "of": None} for i, p in enumerate(clean)]
    n = len(docs)
    for k, i in enumerate(rng.sample(range(n), 20)):
        docs.append({**docs[i], "url": f"https://mirror.example/copy/{k}", "boiler": not docs[i]["boiler"],
                     "kind": "exact_dup", "of": docs[i]["url"]})
    rates = (0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.2)
    for k, i in enumerate(rng.sample(range(n), 28)):
        rate = rates[k % len(rates)]
        docs.append({"url": f"https://scraper.example/{k}", "boiler": docs[i]["boiler"],
                     "paragraphs": [_mutate(p, rate, rng) for p in docs[i]["paragraphs"]],
                     "kind": "near_dup", "of": docs[i]["url"], "rate": rate})
    german = [p for p in read_text("cs336-bpe-fixtures", "german.txt").split("\n") if len(p.split()) > 20]
    for k, (lang, text) in enumerate(list(FOREIGN.items()) + [("de", g) for g in german]):
        docs.append({"url": f"https://{lang}.example/{k}", "paragraphs": [text], "boiler": True,
                     "kind": "non_english", "of": None})
    for k in range(6):
        docs.append({"url": f"https://portal.example/{k}", "paragraphs": ["Welcome!"], "boiler": True,
                     "kind": "boilerplate_only", "of": None})
    letters = "bcdfghjklmnpqrstvwxz"
    for k in range(12):
        if k % 3 == 0:  # keyboard mash: word-like, but no stop words
            lines = [" ".join("".join(rng.choice(letters) for _ in range(rng.randint(3, 8)))
                              for _ in range(12)) + "." for _ in range(8)]
        elif k % 3 == 1:  # symbol soup
            lines = [" ".join(rng.choice(["###", "$$", "@@", "1234", "...", "&&", "%%", "#"]) +
                              rng.choice(["", "x"]) for _ in range(12)) + "." for _ in range(8)]
        else:  # the same spam line again and again
            lines = ["Buy the best cheap watches and shoes today at our store."] * 12
        docs.append({"url": f"https://spam.example/{k}", "paragraphs": lines, "boiler": False,
                     "kind": "gibberish", "of": None})
    gsm = eval_texts("gsm8k", "test.jsonl", eval_max_items)  # leaks come from the items the check reads
    hs = eval_texts("hellaswag", "hellaswag_val_full.txt.bz2", eval_max_items)
    for k in range(8):
        base = docs[rng.randrange(n)]
        leak = gsm[rng.randrange(len(gsm))] if k % 2 == 0 else hs[rng.randrange(len(hs))]
        docs.append({"url": f"https://homework.example/{k}", "boiler": False,
                     "paragraphs": list(base["paragraphs"][:3]) + [leak] + list(base["paragraphs"][3:]),
                     "kind": "contaminated", "of": base["url"]})
    rng.shuffle(docs)
    return docs


def wet_text(doc: dict) -> str:
    """What Common Crawl's WET extractor would keep of a planted page: every visible line, boilerplate
    (navigation, banners, footer) included."""
    lines = [doc["url"], "Home About Blog", *doc["paragraphs"]]
    if doc["boiler"]:
        lines += BOILERPLATE
    return "\n".join(lines + ["Contact us | Sitemap | Careers"])


def write_warc(path: str | os.PathLike, docs: Sequence[dict], wet: bool = False) -> Path:
    """Write ``docs`` as gzip-compressed WARC ``response`` records (with HTTP headers), or, with
    ``wet=True``, as WET ``conversion`` records (plain text, boilerplate lines kept), deterministically:
    record ids and dates come from the URL, not the clock."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    path = Path(path)
    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=True)
    for d in docs:
        rid = hashlib.sha1(d["url"].encode()).hexdigest()
        warc_headers = {"WARC-Record-ID": f"<urn:uuid:{rid[:8]}-{rid[8:12]}-{rid[12:16]}-{rid[16:20]}-{rid[20:32]}>",
                        "WARC-Date": "2026-12-01T00:00:00Z"}
        if wet:
            text = wet_text(d).encode("utf-8")
            writer.write_record(writer.create_warc_record(
                d["url"], "conversion", payload=io.BytesIO(text),
                warc_headers_dict={**warc_headers, "Content-Type": "text/plain"}))
            continue
        payload = _page(d["url"], d["paragraphs"], d["boiler"])
        http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                           ("Content-Length", str(len(payload)))], protocol="HTTP/1.1")
        rec = writer.create_warc_record(d["url"], "response", payload=io.BytesIO(payload),
                                        http_headers=http, warc_headers_dict=warc_headers)
        writer.write_record(rec)
    _atomic_write(path, buf.getvalue())
    return path


MIRROR_WARCS = ("example.warc.gz", "example.warc", "example-iana.org-chunked.warc", "example.arc.gz")


def build_corpus(out: str | os.PathLike, n_shards: int = 5, n_clean: int = 180, seed: int = 0,
                 eval_max_items: int | None = 1500) -> tuple[list[Path], list[dict]]:
    """Write the planted corpus as ``n_shards`` WARC files (the last one WET) plus copies of the mirror's warcio samples
    into ``out``; return ``(input paths, planted docs)`` (the truth file ``out/truth.json`` too)."""
    out = Path(out)
    docs = planted_documents(n_clean, seed, eval_max_items)
    # the last shard is a WET file (text only, as Common Crawl's .warc.wet.gz), the others WARC
    paths = [write_warc(out / f"crawl-{k:02d}.warc{'.wet' if k == n_shards - 1 else ''}.gz", docs[k::n_shards],
                        wet=k == n_shards - 1) for k in range(n_shards)]
    for name in MIRROR_WARCS:
        dst = out / f"mirror-{name}"
        _atomic_write(dst, dataset_path("warc-samples", name).read_bytes())
        paths.append(dst)
    (out / "truth.json").write_text(json.dumps(docs, indent=0), encoding="utf-8")
    return paths, docs


def page_text(doc: dict) -> str:
    """The text a planted document should have after extraction + C4 cleaning (no boilerplate)."""
    return "\n".join(doc["paragraphs"])


# --------------------------------------------------------------------------------------------
# evaluation helpers used by the self-test and the grader
# --------------------------------------------------------------------------------------------


def near_dup_eval(texts: Sequence[str], cfg: PipelineConfig = PipelineConfig()) -> dict:
    """Precision and recall of MinHash-LSH (+ signature check) against exact-Jaccard ground truth at
    ``cfg.jaccard_threshold`` over every pair of ``texts``; the same for ``datasketch``'s MinHash +
    MinHashLSH with the same banding, and whether our LSH candidate set equals datasketch's."""
    from datasketch import MinHash, MinHashLSH

    sh = [shingles(t, cfg.shingle_n) for t in texts]
    n = len(sh)
    truth = {(i, j) for i in range(n) for j in range(i + 1, n) if jaccard(sh[i], sh[j]) >= cfg.jaccard_threshold}
    sigs = np.stack([minhash_signature(s, cfg.num_perm, cfg.minhash_seed) for s in sh])
    ours = near_duplicate_pairs(sigs, cfg)
    # datasketch, its own hash family, the same (bands, rows)
    ds = []
    for s in sh:
        m = MinHash(num_perm=cfg.num_perm, seed=cfg.minhash_seed)
        for x in sorted(s):
            m.update(x.encode("utf-8"))
        ds.append(m)
    lsh = MinHashLSH(threshold=cfg.jaccard_threshold, num_perm=cfg.num_perm, params=(cfg.bands, cfg.rows))
    for i, m in enumerate(ds):
        lsh.insert(i, m)
    ds_pairs = {(min(i, j), max(i, j)) for i, m in enumerate(ds) for j in lsh.query(m) if j != i}
    ds_verified = {(i, j) for i, j in ds_pairs if ds[i].jaccard(ds[j]) >= cfg.jaccard_threshold}
    # our signatures inside datasketch's LSH index: the candidate sets must be identical
    lsh2 = MinHashLSH(threshold=cfg.jaccard_threshold, num_perm=cfg.num_perm, params=(cfg.bands, cfg.rows))
    ours_m = [MinHash(num_perm=cfg.num_perm, seed=cfg.minhash_seed, hashvalues=s, scheme="legacy") for s in sigs]
    for i, m in enumerate(ours_m):
        lsh2.insert(i, m)
    ds_cands_on_ours = {(min(i, j), max(i, j)) for i, m in enumerate(ours_m) for j in lsh2.query(m) if j != i}
    # estimation error on pairs that share anything
    close = [(i, j) for i in range(n) for j in range(i + 1, n) if jaccard(sh[i], sh[j]) >= 0.2]
    err_ours = [abs(estimate_jaccard(sigs[i], sigs[j]) - jaccard(sh[i], sh[j])) for i, j in close]
    err_ds = [abs(ds[i].jaccard(ds[j]) - jaccard(sh[i], sh[j])) for i, j in close]
    p, r = precision_recall(ours, truth)
    dp, dr = precision_recall(ds_verified, truth)
    return {"n_docs": n, "n_pairs": n * (n - 1) // 2, "true_pairs": len(truth), "predicted": len(ours),
            "precision": p, "recall": r, "ds_precision": dp, "ds_recall": dr,
            "candidates_equal_datasketch": lsh_candidate_pairs(sigs, cfg.bands, cfg.rows) == ds_cands_on_ours,
            "mae_ours": float(np.mean(err_ours)) if err_ours else 0.0,
            "mae_datasketch": float(np.mean(err_ds)) if err_ds else 0.0, "n_close_pairs": len(close)}


def _plot(report: list[dict], nd: dict, cfg: PipelineConfig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    from labkit.plots import savefig

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names = [r["stage"] for r in report]
    ax1.bar(names, [r["docs_out"] for r in report], color="tab:blue")
    ax1.set_ylabel("documents out")
    ax1.set_title("documents surviving each stage")
    ax1.tick_params(axis="x", rotation=30)
    s = np.linspace(0, 1, 201)
    ax2.plot(s, [lsh_probability(x, cfg.bands, cfg.rows) for x in s], label=f"b={cfg.bands}, r={cfg.rows}")
    ax2.axvline(cfg.jaccard_threshold, color="gray", ls="--", label=f"threshold {cfg.jaccard_threshold}")
    ax2.set_xlabel("Jaccard similarity s")
    ax2.set_ylabel("P[candidate pair]")
    ax2.set_title(f"LSH S-curve (P={nd['precision']:.2f}, R={nd['recall']:.2f})")
    ax2.legend()
    return savefig(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(HERE / "outputs" / "run"), help="output folder (shards, manifest, work/)")
    ap.add_argument("--inputs", default=None, help="folder of WARC files to process (default: build the planted corpus)")
    ap.add_argument("--engine", choices=("dask", "serial"), default="dask")
    ap.add_argument("--scheduler", default=None, help="a dask.distributed scheduler address, e.g. tcp://host:8786")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--stage-delay", type=float, default=0.0, help="sleep after each stage-shard (kill/resume demo)")
    ap.add_argument("--n-clean", type=int, default=180, help="clean documents in the planted corpus")
    ap.add_argument("--pipeline-only", action="store_true", help="run the pipeline, skip checks and plots")
    args = ap.parse_args(argv)
    seed_everything(0)
    cfg = PipelineConfig(stage_delay_s=args.stage_delay)
    out = Path(args.out)
    if args.inputs:
        inputs = sorted(p for p in Path(args.inputs).iterdir() if re.search(r"\.(warc|arc|wet)(\.gz)?$", p.name))
        docs = json.loads((Path(args.inputs) / "truth.json").read_text(encoding="utf-8")) \
            if (Path(args.inputs) / "truth.json").is_file() else None
    else:
        inputs, docs = build_corpus(out / "input", n_clean=args.n_clean)
    t0 = time.perf_counter()
    man = run_pipeline(inputs, out, cfg, engine=args.engine, scheduler=args.scheduler, workers=args.workers)
    wall = time.perf_counter() - t0
    print(f"pipeline ({args.engine}): {len(inputs)} WARC/WET/ARC files -> {man['total_docs']} docs, "
          f"{man['total_tokens']} tokens in {len(man['shards'])} uint16 shards, {wall:.1f} s wall, "
          f"{man['run']['stage_shards_resumed']} stage-shards resumed; config {man['config_hash']}")
    print(format_report(man["report"]))
    if args.pipeline_only:
        return 0
    ok = True
    recount = sum(read_shard(out / e["shard"]).size for e in man["shards"])
    eots = sum(int((read_shard(out / e["shard"]) == EOT_ID).sum()) for e in man["shards"])
    print(f"\nmanifest tokens {man['total_tokens']} | recount {recount} | EOT markers {eots} | docs {man['total_docs']}")
    ok &= recount == man["total_tokens"] and eots == man["total_docs"]
    if docs is not None:
        kept = set()
        for e in man["shards"]:
            s = Path(e["shard"]).stem
            kept |= {d["url"] for d in _read_jsonl(out / "work" / "decontam" / f"{s}.jsonl")}
        print("\nplanted kind      planted  survived")
        for kind in ("clean", "exact_dup", "near_dup", "non_english", "boilerplate_only", "gibberish", "contaminated"):
            ks = [d for d in docs if d["kind"] == kind]
            print(f"{kind:<17} {len(ks):>7} {sum(d['url'] in kept for d in ks):>9}")
            if kind in ("non_english", "boilerplate_only", "gibberish", "contaminated"):
                ok &= not any(d["url"] in kept for d in ks)
            if kind == "exact_dup":  # one copy may survive, never both
                ok &= not any(d["url"] in kept and d["of"] in kept for d in ks)
    qdocs = []
    for e in man["shards"]:
        qdocs += _read_jsonl(out / "work" / "quality" / f"{Path(e['shard']).stem}.jsonl")
    nd = near_dup_eval([d["text"] for d in qdocs], cfg)
    print(f"\nnear-dup vs exact Jaccard >= {cfg.jaccard_threshold} over {nd['n_pairs']} pairs "
          f"({nd['true_pairs']} true pairs), b={cfg.bands} r={cfg.rows}:")
    print(f"  ours (from scratch): precision {nd['precision']:.3f} recall {nd['recall']:.3f} | "
          f"datasketch: precision {nd['ds_precision']:.3f} recall {nd['ds_recall']:.3f}")
    print(f"  |J_est - J| on {nd['n_close_pairs']} pairs with J >= 0.2: ours {nd['mae_ours']:.4f}, "
          f"datasketch {nd['mae_datasketch']:.4f}; LSH candidates == datasketch MinHashLSH: "
          f"{nd['candidates_equal_datasketch']}")
    ok &= nd["precision"] >= 0.9 and nd["recall"] >= 0.9 and nd["candidates_equal_datasketch"]
    # the spec's by-eye check: 100 random survivors, first 300 characters each
    survivors = []
    for e in man["shards"]:
        survivors += _read_jsonl(out / "work" / "decontam" / f"{Path(e['shard']).stem}.jsonl")
    sample = random.Random(0).sample(survivors, min(100, len(survivors)))
    spot = out / "spot_check.txt"
    spot.write_text("".join(f"## {d['key']} {d['url']}\n{d['text'][:300]}\n\n" for d in sample), encoding="utf-8")
    print(f"\nwrote {spot} ({len(sample)} random surviving documents to read by eye)")
    png = _plot(man["report"], nd, cfg, HERE / "figures" / "pipeline.png")
    print(f"\nwrote {png}")
    print("SELF-TEST", "PASSED" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

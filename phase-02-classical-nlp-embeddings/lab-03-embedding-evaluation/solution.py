"""Lab 2.3: a reusable evaluation harness for static word embeddings.

What lives here (and is imported by labs 2.1, 2.2 and later phases via ``load_lab("2.3")``):

* :class:`WordVectors`: a (vocabulary, matrix) pair with cosine nearest neighbours and the
  word2vec text format (which gensim can read).
* :func:`evaluate_word_pairs`: Spearman (and Pearson) correlation between cosine similarity
  and human ratings (WordSim-353, SimLex-999), with out-of-vocabulary (OOV) reporting.
* :func:`evaluate_analogies`: accuracy on the Google analogy set with 3CosAdd
  (Mikolov et al. 2013) or 3CosMul (Levy & Goldberg 2014).
* :func:`anisotropy`: the mean cosine of random word pairs (Ethayarajh 2019), before and after
  mean-centering.
* t-SNE / UMAP projections of the most frequent words with country-capital pairs highlighted.

The evaluation protocol copies gensim's ``KeyedVectors.evaluate_word_pairs`` and
``evaluate_word_analogies`` (which follow the original C ``compute-accuracy`` tool): only the
``restrict_vocab`` most frequent words count as known, matching can be case-insensitive (the
first, most frequent, casing of a word wins), and questions with an unknown word are skipped
and counted as OOV. The tests check our numbers against gensim's on the same vectors.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from labkit import dataset_path, seed_everything

HERE = Path(__file__).resolve().parent


def _positive_int(value: object, name: str) -> int:
    """``value`` as a Python int when it is a positive integer (NumPy integers included)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def cosine(u: np.ndarray, v: np.ndarray) -> float:
    """Cosine similarity of two vectors of shape ``(d,)``.

    An all-zero vector has no direction: its cosine with anything is ``0.0`` (the convention
    of gensim's ``matutils.unitvec``, so evaluations stay equal to gensim's).

    Raises:
        ValueError: a vector contains NaN or inf, or the shapes differ.
    """
    u, v = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
    if u.shape != v.shape:
        raise ValueError(f"cosine of vectors with different shapes {u.shape} and {v.shape}")
    if not (np.isfinite(u).all() and np.isfinite(v).all()):
        raise ValueError("cosine of a vector that contains NaN or inf")
    nu, nv = float(np.linalg.norm(u)), float(np.linalg.norm(v))
    if nu == 0.0 or nv == 0.0:
        return 0.0
    return float(np.dot(u / nu, v / nv))


# ----------------------------------------------------------------------------- data loading
def load_text8_words(max_words: int | None = None) -> list[str]:
    """The first ``max_words`` words of text8 (lowercase a-z Wikipedia text, space separated).

    The course registry holds only a prefix of ``text8.zip`` (a truncated zip: a 30-byte local
    header, the 5-byte name ``text8``, then a raw deflate stream with no end). We inflate what
    is there, which yields the first 1,171,946 words, and drop the last, possibly cut, word.

    Args:
        max_words: how many words to return; ``None`` means the whole local prefix.

    Raises:
        ValueError: ``max_words`` is not a positive int, or asks for more words than the prefix has.
    """
    if max_words is not None:
        max_words = _positive_int(max_words, "max_words")
    raw = dataset_path("text8", "text8_prefix_truncated.zip").read_bytes()
    text = zlib.decompressobj(-15).decompress(raw[35:]).decode("ascii")
    words = text.split()
    if not text.endswith(" "):
        words = words[:-1]  # the stream stops mid-word
    if max_words is not None:
        if max_words > len(words):
            raise ValueError(
                f"the local text8 prefix has only {len(words):,} words, asked for {max_words:,}; "
                "full text8 (17M words) is not in the course registry"
            )
        words = words[:max_words]
    return words


_WORD_RE = re.compile(r"[a-z]+")


def english_prose_words(max_words: int | None = None) -> list[str]:
    """English prose from several registry corpora, as lowercase ``a-z`` words (text8's style).

    In this order: WikiText-2 valid + test (Wikipedia articles; its ``<unk>`` markers are
    dropped), Tiny Shakespeare, the ARC-Easy question stems and answer choices, the MMLU
    questions and answer choices (every split), then the local text8 prefix. Digits and
    punctuation are dropped. About 3.0M words in all; ``max_words`` keeps the first ones.

    Raises:
        ValueError: ``max_words`` is not a positive int or exceeds what the sources hold.
    """
    import csv
    import io
    import json

    from labkit import read_text
    from labkit.data import registry

    if max_words is not None:
        max_words = _positive_int(max_words, "max_words")
    texts = [read_text("wikitext-2", f).replace("<unk>", " ") for f in ("valid.txt", "test.txt")]
    texts.append(read_text("tinyshakespeare", "input.txt"))
    for split in ("Train", "Dev", "Test"):
        for line in read_text("arc-easy", f"ARC-Easy-{split}.jsonl").splitlines():
            q = json.loads(line)["question"]
            texts.append(" ".join([q["stem"], *(c["text"] for c in q["choices"])]))
    for name in sorted(registry()["mmlu"]["files"]):
        if name.endswith(".csv"):
            texts += [" ".join(row[:5]) for row in csv.reader(io.StringIO(read_text("mmlu", name)))]
    words: list[str] = []
    for t in texts:
        words += _WORD_RE.findall(t.lower())
        if max_words is not None and len(words) >= max_words:
            return words[:max_words]
    words += load_text8_words()
    if max_words is not None:
        if max_words > len(words):
            raise ValueError(f"the English prose sources hold {len(words):,} words, asked for {max_words:,}")
        words = words[:max_words]
    return words


def read_word_pairs(path: str | Path, delimiter: str = "\t") -> list[tuple[str, str, float]]:
    """Read a word-similarity file: ``word1<TAB>word2<TAB>score`` lines, ``#`` comments skipped.

    Same parsing as gensim's ``evaluate_word_pairs`` (lines that do not split into exactly
    three fields with a numeric score are skipped).
    """
    pairs = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        parts = line.split(delimiter)
        if len(parts) != 3:
            continue
        try:
            pairs.append((parts[0], parts[1], float(parts[2])))
        except ValueError:
            continue
    return pairs


def read_analogies(path: str | Path) -> list[tuple[str, str, str, str, str]]:
    """Read the Google analogy file: ``: section`` headers then ``a b c d`` lines.

    Returns:
        ``[(section, a, b, c, d), ...]`` in file order, meaning "a is to b as c is to d".

    Raises:
        ValueError: a question line appears before any ``: section`` header.
    """
    out, section = [], None
    for no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith(": "):
            section = line[2:].strip()
            continue
        words = line.split()
        if len(words) != 4:
            continue
        if section is None:
            raise ValueError(f"{path}:{no}: analogy line before any ': section' header")
        out.append((section, *words))
    return out


def standard_sets() -> dict[str, Path]:
    """Paths of the three standard evaluation files in the course registry."""
    return {
        "wordsim353": dataset_path("word-similarity", "wordsim353.tsv"),
        "simlex999": dataset_path("word-similarity", "simlex999.txt"),
        "analogies": dataset_path("word-similarity", "questions-words.txt"),
    }


# ----------------------------------------------------------------------------- word vectors
class WordVectors:
    """A vocabulary and its embedding matrix, most frequent word first.

    Args:
        words: ``V`` distinct strings, sorted by decreasing corpus frequency (the
            ``restrict_vocab`` logic relies on that order).
        vectors: array-like of shape ``(V, d)``; stored as float32.

    Raises:
        ValueError: shapes disagree, duplicate words, empty vocabulary, or non-finite values.
    """

    def __init__(self, words: list[str], vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be 2-D (V, d), got shape {vectors.shape}")
        if len(words) != vectors.shape[0]:
            raise ValueError(f"{len(words)} words but {vectors.shape[0]} vectors")
        if len(words) == 0:
            raise ValueError("empty vocabulary")
        if not np.isfinite(vectors).all():
            raise ValueError("vectors contain NaN or inf (did training diverge?)")
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        if len(self.index) != len(self.words):
            raise ValueError("duplicate words in the vocabulary")
        self.vectors = vectors
        self._normed: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self.index

    def __getitem__(self, word: str) -> np.ndarray:
        """The raw vector of ``word``, shape ``(d,)``. Raises KeyError for an unknown word."""
        if word not in self.index:
            raise KeyError(f"word {word!r} is not in the vocabulary ({len(self)} words); "
                           "a word-level model has no vector for out-of-vocabulary words")
        return self.vectors[self.index[word]]

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    @property
    def norms(self) -> np.ndarray:
        """L2 norm of every row, shape ``(V,)`` float32."""
        return np.linalg.norm(self.vectors, axis=1)

    @property
    def normed(self) -> np.ndarray:
        """Unit-length rows, shape ``(V, d)`` float32 (a zero row stays zero)."""
        if self._normed is None:
            n = self.norms[:, None]
            self._normed = (self.vectors / np.where(n > 0, n, 1)).astype(np.float32)
        return self._normed

    def similarity(self, w1: str, w2: str) -> float:
        """Cosine similarity of two known words (KeyError if either is unknown); 0.0 when
        either vector is all zeros (see :func:`cosine`)."""
        return cosine(self[w1], self[w2])

    def most_similar(self, query: str | np.ndarray, topn: int = 10,
                     exclude: tuple[str, ...] | list[str] = ()) -> list[tuple[str, float]]:
        """The ``topn`` words with the highest cosine similarity to ``query``.

        Args:
            query: a word (which is then excluded from the answer) or a vector of shape ``(d,)``.
            topn: how many neighbours to return (positive int).
            exclude: further words to leave out of the answer.

        Returns:
            ``[(word, cosine), ...]`` sorted by decreasing cosine.

        Raises:
            KeyError: ``query`` is a word not in the vocabulary.
            ValueError: ``topn < 1``; a query vector of the wrong shape, with NaN/inf, or all
                zeros (a zero vector has no direction, so every cosine would be 0 and the
                "neighbours" would just be the first words of the vocabulary).
        """
        topn = _positive_int(topn, "topn")
        skip = set(exclude)
        if isinstance(query, str):
            vec = self[query]
            skip.add(query)
        else:
            vec = np.asarray(query, dtype=np.float32)
            if vec.shape != (self.dim,):
                raise ValueError(f"query vector must have shape ({self.dim},), got {vec.shape}")
            if not np.isfinite(vec).all():
                raise ValueError("query vector contains NaN or inf")
        if not np.any(vec):
            what = f"word {query!r} has" if isinstance(query, str) else "the query is"
            raise ValueError(f"{what} an all-zero vector: no direction, so no nearest neighbours")
        # BEGIN SOLUTION cosine of the unit query against every unit row; top-k by argsort, skipping excluded words (easy, ~10 min)
        q = vec / max(float(np.linalg.norm(vec)), 1e-12)
        sims = self.normed @ q
        order = np.argsort(-sims, kind="stable")
        out = []
        for i in order:
            w = self.words[i]
            if w in skip:
                continue
            out.append((w, float(sims[i])))
            if len(out) == topn:
                break
        return out
        # END SOLUTION

    # -- word2vec text format: a "V d" header line, then "word x1 x2 ... xd" per line
    def save_word2vec_format(self, path: str | Path) -> Path:
        """Write the vectors in word2vec *text* format (gensim ``binary=False`` reads it)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"{len(self)} {self.dim}\n")
            for w, v in zip(self.words, self.vectors):
                if any(c.isspace() for c in w):
                    raise ValueError(f"word {w!r} contains whitespace; word2vec text format cannot store it")
                f.write(w + " " + " ".join(f"{x:.6g}" for x in v) + "\n")
        return path

    @classmethod
    def load_word2vec_format(cls, path: str | Path) -> WordVectors:
        """Read the word2vec text format written by :meth:`save_word2vec_format` (or gensim)."""
        with open(path, encoding="utf-8") as f:
            header = f.readline().split()
            if len(header) != 2:
                raise ValueError(f"{path}: first line must be 'V d', got {header!r}")
            n, d = int(header[0]), int(header[1])
            words, rows = [], []
            for line in f:
                parts = line.rstrip("\n").split(" ")
                if len(parts) != d + 1:
                    raise ValueError(f"{path}: line {len(words) + 2} has {len(parts) - 1} numbers, expected {d}")
                words.append(parts[0])
                rows.append([float(x) for x in parts[1:]])
        if len(words) != n:
            raise ValueError(f"{path}: header says {n} words, found {len(words)}")
        return cls(words, np.array(rows, dtype=np.float32))

    @classmethod
    def from_gensim(cls, kv) -> WordVectors:
        """Wrap a gensim ``KeyedVectors`` (copies its vocabulary order and vectors)."""
        return cls(list(kv.index_to_key), np.array(kv.vectors, dtype=np.float32))

    def to_gensim(self):
        """A gensim ``KeyedVectors`` holding the same words and vectors (gensim imported lazily)."""
        from gensim.models import KeyedVectors

        kv = KeyedVectors(self.dim, dtype=np.float32)
        kv.add_vectors(self.words, self.vectors)
        return kv


# ----------------------------------------------------------------------------- word similarity
def known_vocab(words: list[str], restrict_vocab: int = 300_000,
                case_insensitive: bool = True) -> dict[str, int]:
    """The lookup table the standard evaluation uses: key -> row index.

    Only the first ``restrict_vocab`` words (the most frequent ones) are known. With
    ``case_insensitive`` the keys are upper-cased and, when several casings collide
    ("Paris", "paris", "PARIS"), the FIRST one in vocabulary order (the most frequent) wins,
    exactly like gensim.

    Raises:
        ValueError: ``restrict_vocab`` is not a positive int.
    """
    restrict_vocab = _positive_int(restrict_vocab, "restrict_vocab")
    # BEGIN SOLUTION keep the first restrict_vocab words; upper-case keys when asked, first (most frequent) casing wins (easy, ~10 min)
    ok: dict[str, int] = {}
    for i, w in enumerate(words[:restrict_vocab]):
        key = w.upper() if case_insensitive else w
        if key not in ok:
            ok[key] = i
    return ok
    # END SOLUTION


def spearman(x: np.ndarray | list[float], y: np.ndarray | list[float]) -> float:
    """Spearman rank correlation: Pearson correlation of the ranks, ties get their average rank.

    Args:
        x, y: 1-D sequences of equal length ``n >= 2``.

    Returns:
        rho in [-1, 1].

    Raises:
        ValueError: different lengths, fewer than two values, NaN/inf values (they have no
            rank), or a constant input (no ranking information: scipy returns NaN and warns;
            a NaN in a results table is easy to miss, so we refuse).

    Equals ``scipy.stats.spearmanr(x, y).statistic`` wherever that is a number.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D and the same length, got {x.shape} and {y.shape}")
    if len(x) < 2:
        raise ValueError("need at least two pairs for a correlation")
    for name, v in (("x", x), ("y", y)):
        if not np.isfinite(v).all():
            raise ValueError(f"{name} contains NaN or inf: such values have no rank")
        if np.all(v == v[0]):
            raise ValueError(f"{name} is constant ({v[0]!r} everywhere): Spearman's rho is undefined "
                             "(all-zero vectors give all-zero cosines)")
    # BEGIN SOLUTION rank each vector (average rank for ties), then Pearson correlation of the ranks (medium, ~20 min)
    def rank(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="mergesort")
        sorted_v = v[order]
        ranks = np.empty(len(v), dtype=np.float64)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and sorted_v[j + 1] == sorted_v[i]:
                j += 1
            ranks[order[i:j + 1]] = (i + j) / 2 + 1  # average of ranks i+1 .. j+1
            i = j + 1
        return ranks

    rx, ry = rank(x), rank(y)
    rx -= rx.mean()
    ry -= ry.mean()
    return float(rx @ ry) / math.sqrt(float(rx @ rx) * float(ry @ ry))
    # END SOLUTION


@dataclass
class PairResult:
    """Result of a word-similarity evaluation."""

    spearman: float
    pearson: float
    n_pairs: int  # pairs scored (both words known)
    n_oov: int  # pairs skipped because a word is unknown
    oov_pairs: list[tuple[str, str]] = field(default_factory=list)

    @property
    def oov_ratio(self) -> float:
        """Percentage of pairs skipped (gensim reports the same number)."""
        return 100.0 * self.n_oov / max(self.n_pairs + self.n_oov, 1)


def evaluate_word_pairs(wv: WordVectors, pairs: str | Path | list[tuple[str, str, float]],
                        restrict_vocab: int = 300_000, case_insensitive: bool = True) -> PairResult:
    """Correlate cosine similarity with human similarity ratings.

    Args:
        wv: the vectors to evaluate.
        pairs: a path (read with :func:`read_word_pairs`) or ``[(w1, w2, human_score), ...]``.
        restrict_vocab: only the most frequent ``restrict_vocab`` words count as known.
        case_insensitive: compare upper-cased words (see :func:`known_vocab`).

    Returns:
        :class:`PairResult` with Spearman rho (the headline number), Pearson r, and the
        pairs skipped because a word is out of vocabulary.

    Raises:
        ValueError: no pair has both words known (nothing to correlate).

    Same protocol as gensim ``KeyedVectors.evaluate_word_pairs(..., dummy4unknown=False)``.
    """
    if not isinstance(pairs, list):
        pairs = read_word_pairs(pairs)
    ok = known_vocab(wv.words, restrict_vocab, case_insensitive)
    # BEGIN SOLUTION look both words up (upper-case when case_insensitive); skip+record OOV pairs; cosine() of the raw rows (0 for a zero vector, never NaN); spearman + pearson (medium, ~20 min)
    gold, model, oov = [], [], []
    for a, b, score in pairs:
        ka, kb = (a.upper(), b.upper()) if case_insensitive else (a, b)
        if ka not in ok or kb not in ok:
            oov.append((a, b))
            continue
        gold.append(score)
        model.append(cosine(wv.vectors[ok[ka]], wv.vectors[ok[kb]]))  # 0.0 for a zero vector
    if len(gold) < 2:
        raise ValueError(f"only {len(gold)} of {len(pairs)} pairs have both words in the vocabulary; "
                         "nothing to correlate (wrong casing? restrict_vocab too small?)")
    rho = spearman(gold, model)  # first: it refuses constant cosines before corrcoef would give NaN
    pearson = float(np.corrcoef(np.array(gold), np.array(model))[0, 1])
    return PairResult(rho, pearson, len(gold), len(oov), oov)
    # END SOLUTION


# ----------------------------------------------------------------------------- analogies
def analogy_scores(normed: np.ndarray, norms: np.ndarray, a: np.ndarray, b: np.ndarray,
                   c: np.ndarray, method: str = "3cosadd") -> np.ndarray:
    """Score every candidate word ``d`` for the questions "a is to b as c is to ?".

    Args:
        normed: unit-length vectors of the candidate words, shape ``(V, d)`` float32.
        norms: unused by the formulas (kept so callers can score raw rows the gensim way);
            shape ``(V,)``.
        a, b, c: row indices into ``normed`` of the question words, int arrays of shape ``(Q,)``.
        method: ``"3cosadd"`` -- cos(d, b - a + c) up to a positive factor,
            ``argmax_d cos(d,b) - cos(d,a) + cos(d,c)`` (Mikolov et al. 2013); or
            ``"3cosmul"`` -- ``argmax_d  s(d,b) * s(d,c) / (s(d,a) + 1e-6)`` with cosines shifted
            to [0, 1] by ``s = (1 + cos) / 2`` (Levy & Goldberg 2014, eq. 4 and footnote 7).

    Returns:
        float32 array of shape ``(Q, V)``: higher is better. The question words themselves are
        NOT masked here (the caller does that).

    Raises:
        ValueError: unknown ``method``.
    """
    if method not in ("3cosadd", "3cosmul"):
        raise ValueError(f"method must be '3cosadd' or '3cosmul', got {method!r}")
    if method == "3cosadd":
        # BEGIN SOLUTION query = unit(b) - unit(a) + unit(c), renormalised; score = normed @ query (easy, ~10 min)
        q = normed[b] - normed[a] + normed[c]  # (Q, d)
        q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        return (q @ normed.T).astype(np.float32)  # (Q, V)
        # END SOLUTION
    # BEGIN SOLUTION shift each cosine to [0,1] with (1+cos)/2, then s_b * s_c / (s_a + 1e-6) (medium, ~15 min)
    sa = (1 + normed[a] @ normed.T) / 2  # (Q, V)
    sb = (1 + normed[b] @ normed.T) / 2
    sc = (1 + normed[c] @ normed.T) / 2
    return (sb * sc / (sa + 1e-6)).astype(np.float32)
    # END SOLUTION


@dataclass
class AnalogyResult:
    """Result of an analogy evaluation."""

    accuracy: float  # correct / answered (0.0 when nothing was answered)
    n_correct: int
    n_answered: int  # questions with all four words known
    n_oov: int  # questions skipped because a word is unknown
    sections: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (correct, answered)

    @property
    def oov_ratio(self) -> float:
        return 100.0 * self.n_oov / max(self.n_answered + self.n_oov, 1)

    def semantic_syntactic(self) -> tuple[float, float]:
        """Accuracy on the semantic sections and on the ``gram*`` (syntactic) sections."""
        out = []
        for want_gram in (False, True):
            c = sum(v[0] for k, v in self.sections.items() if k.startswith("gram") == want_gram)
            n = sum(v[1] for k, v in self.sections.items() if k.startswith("gram") == want_gram)
            out.append(c / n if n else 0.0)
        return out[0], out[1]


def evaluate_analogies(wv: WordVectors,
                       questions: str | Path | list[tuple[str, str, str, str, str]],
                       restrict_vocab: int = 300_000, case_insensitive: bool = True,
                       method: str = "3cosadd", batch_size: int = 512) -> AnalogyResult:
    """Top-1 analogy accuracy ("a : b :: c : d", predict d) over a vocabulary of candidates.

    Args:
        wv: the vectors.
        questions: a path (read with :func:`read_analogies`) or ``[(section, a, b, c, d), ...]``.
        restrict_vocab: candidates and known words are the ``restrict_vocab`` most frequent.
        case_insensitive: compare upper-cased words (see :func:`known_vocab`).
        method: ``"3cosadd"`` or ``"3cosmul"`` (see :func:`analogy_scores`).
        batch_size: questions scored per matrix product (memory is ``batch_size * V`` floats).

    Returns:
        :class:`AnalogyResult`. The three question words are never accepted as the answer.
        Questions with any unknown word are skipped and counted in ``n_oov``.

    Same protocol as gensim ``evaluate_word_analogies`` (3CosAdd) and the C compute-accuracy tool.
    """
    if not isinstance(questions, list):
        questions = read_analogies(questions)
    if method not in ("3cosadd", "3cosmul"):
        raise ValueError(f"method must be '3cosadd' or '3cosmul', got {method!r}")
    ok = known_vocab(wv.words, restrict_vocab, case_insensitive)
    n_cand = min(restrict_vocab, len(wv))
    normed, norms = wv.normed[:n_cand], wv.norms[:n_cand]
    # candidate row -> the row its key maps to (differs only for a later casing of a known word)
    key_row = np.array([ok[w.upper() if case_insensitive else w] for w in wv.words[:n_cand]])
    # BEGIN SOLUTION keep questions whose 4 words are known; score in batches; mask every candidate whose key is a question word; argmax; tally per section (hard, ~30 min)
    kept, n_oov = [], 0
    for section, *words in questions:
        keys = [w.upper() if case_insensitive else w for w in words]
        if all(k in ok for k in keys):
            kept.append((section, *(ok[k] for k in keys)))
        else:
            n_oov += 1
    sections: dict[str, list[int]] = {}
    for section, *_ in kept:
        sections.setdefault(section, [0, 0])
    for start in range(0, len(kept), batch_size):
        chunk = kept[start:start + batch_size]
        ia, ib, ic, idd = (np.array([q[k] for q in chunk]) for k in range(1, 5))
        scores = analogy_scores(normed, norms, ia, ib, ic, method)
        for ban in (ia, ib, ic):
            # a candidate is banned when its key (first casing) is one of the question words
            scores[key_row[None, :] == ban[:, None]] = -np.inf
        pred = key_row[np.argmax(scores, axis=1)]
        for q, p in zip(chunk, pred):
            sections[q[0]][1] += 1
            sections[q[0]][0] += int(p == q[4])
    n_correct = sum(v[0] for v in sections.values())
    n_answered = sum(v[1] for v in sections.values())
    return AnalogyResult(n_correct / n_answered if n_answered else 0.0, n_correct, n_answered, n_oov,
                         {k: (v[0], v[1]) for k, v in sections.items()})
    # END SOLUTION


# ----------------------------------------------------------------------------- geometry
def anisotropy(vectors: np.ndarray, n_pairs: int = 20_000, seed: int = 0) -> float:
    """Mean cosine similarity of random pairs of distinct rows (Ethayarajh 2019).

    An isotropic cloud gives ~0; a value well above 0 means every vector leans the same way
    (a shared "common direction"), which inflates every cosine.

    Args:
        vectors: shape ``(V, d)``, ``V >= 2``.
        n_pairs: random pairs drawn (with replacement over pairs, never a row with itself).
        seed: for the pair sampler.

    Raises:
        ValueError: fewer than two rows, ``n_pairs < 1``, or NaN/inf values. (All-zero rows
            are allowed: their cosine with anything counts as 0, as in :func:`cosine`.)
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[0] < 2:
        raise ValueError(f"need a (V, d) array with V >= 2, got shape {vectors.shape}")
    n_pairs = _positive_int(n_pairs, "n_pairs")
    if not np.isfinite(vectors).all():
        raise ValueError("vectors contain NaN or inf")
    rng = np.random.default_rng(seed)
    # BEGIN SOLUTION draw i != j uniformly, normalise rows, average the dot products (easy, ~10 min)
    n = vectors.shape[0]
    i = rng.integers(0, n, size=n_pairs)
    j = (i + rng.integers(1, n, size=n_pairs)) % n  # never equal to i
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return float(np.mean(np.sum(unit[i] * unit[j], axis=1)))
    # END SOLUTION


def mean_center(vectors: np.ndarray) -> np.ndarray:
    """Subtract the mean vector (the simplest fix for anisotropy; Mu & Viswanath 2018 go further)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors - vectors.mean(axis=0, keepdims=True)


def country_capital_pairs(questions: list[tuple[str, str, str, str, str]]) -> list[tuple[str, str]]:
    """Distinct (capital, country) pairs from the analogy set's ``capital-*`` sections, lower-cased."""
    seen: dict[tuple[str, str], None] = {}
    for section, a, b, c, d in questions:
        if section.startswith("capital"):
            seen[(a.lower(), b.lower())] = None
            seen[(c.lower(), d.lower())] = None
    return list(seen)


def project_2d(vectors: np.ndarray, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """2-D projection with scikit-learn t-SNE or umap-learn UMAP, on cosine distance.

    Returns float array of shape ``(V, 2)``. Raises ValueError for an unknown method.
    """
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(30.0, (len(vectors) - 1) / 3)
        return TSNE(n_components=2, metric="cosine", init="pca", perplexity=perplexity,
                    random_state=seed).fit_transform(vectors)
    if method == "umap":
        import umap

        return umap.UMAP(n_components=2, metric="cosine", random_state=seed, n_jobs=1,
                         n_neighbors=15).fit_transform(vectors)
    raise ValueError(f"method must be 'tsne' or 'umap', got {method!r}")


def plot_projections(wv: WordVectors, pairs: list[tuple[str, str]], path: Path, n_words: int = 1000,
                     methods: tuple[str, ...] = ("tsne", "umap"), seed: int = 0,
                     title: str = "") -> Path:
    """Side-by-side 2-D maps of the ``n_words`` most frequent words plus every known word of
    ``pairs``, with each (capital, country) pair drawn as a labelled red/blue dot joined by a line."""
    from labkit.plots import plt, savefig

    pair_words = [w for p in pairs if p[0] in wv and p[1] in wv for w in p]
    chosen = list(dict.fromkeys(wv.words[:n_words] + pair_words))
    rows = np.array([wv.index[w] for w in chosen])
    where = {w: k for k, w in enumerate(chosen)}
    fig, axes = plt.subplots(1, len(methods), figsize=(7 * len(methods), 7))
    axes = np.atleast_1d(axes)
    for ax, method in zip(axes, methods):
        xy = project_2d(wv.vectors[rows], method, seed)
        ax.scatter(xy[:, 0], xy[:, 1], s=3, c="lightgray")
        for cap, country in pairs:
            if cap in where and country in where:
                p, q = xy[where[cap]], xy[where[country]]
                ax.plot([p[0], q[0]], [p[1], q[1]], c="gray", lw=0.6)
                ax.scatter(*p, s=14, c="tab:red")
                ax.scatter(*q, s=14, c="tab:blue")
                ax.annotate(cap, p, fontsize=7, color="tab:red")
                ax.annotate(country, q, fontsize=7, color="tab:blue")
        ax.set_title(f"{method.upper()} of {len(chosen)} words (red: capital, blue: country)")
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    return savefig(fig, path)


def evaluate_all(wv: WordVectors, restrict_vocab: int = 300_000,
                 case_insensitive: bool = True) -> dict[str, float]:
    """The standard intrinsic suite in one call (what labs 2.1 and 2.2 print).

    Returns a dict with ``wordsim353``, ``simlex999`` (Spearman), their OOV percentages,
    ``analogy_3cosadd``, ``analogy_3cosmul`` (accuracy) and ``analogy_oov`` (percent).
    """
    sets = standard_sets()
    questions = read_analogies(sets["analogies"])
    out: dict[str, float] = {}
    for name in ("wordsim353", "simlex999"):
        r = evaluate_word_pairs(wv, sets[name], restrict_vocab, case_insensitive)
        out[name], out[name + "_oov"] = r.spearman, r.oov_ratio
    for method in ("3cosadd", "3cosmul"):
        r = evaluate_analogies(wv, questions, restrict_vocab, case_insensitive, method)
        out["analogy_" + method] = r.accuracy
    out["analogy_oov"] = r.oov_ratio
    return out


# ----------------------------------------------------------------------------- self-test
def _train_gensim(words: list[str], dim: int, epochs: int, seed: int):
    from gensim.models import Word2Vec

    sentences = [words[i:i + 10_000] for i in range(0, len(words), 10_000)]
    return Word2Vec(sentences, vector_size=dim, window=5, negative=5, min_count=5, sg=1,
                    workers=1, epochs=epochs, seed=seed).wv


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true",
                    help="5 training epochs and 5000-word maps (small: 3 epochs, 1000 words); both use "
                         "the whole local text8 prefix (1.17M words)")
    ap.add_argument("--words", type=int, default=None, help="override the corpus size in words")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    seed_everything(args.seed)
    epochs, n_map = (5, 5000) if args.full else (3, 1000)
    t0 = time.perf_counter()
    words = load_text8_words(args.words)
    kv = _train_gensim(words, 100, epochs, args.seed)
    wv = WordVectors.from_gensim(kv)
    print(f"trained gensim skip-gram on {len(words):,} text8 words, {epochs} epochs: "
          f"{len(wv):,} words x {wv.dim} dims in {time.perf_counter() - t0:.1f} s")

    sets = standard_sets()
    questions = read_analogies(sets["analogies"])
    failures = []
    print("\n| check | ours | gensim | abs diff |\n|---|---|---|---|")
    for name in ("wordsim353", "simlex999"):
        ours = evaluate_word_pairs(wv, sets[name])
        gp, gs, goov = kv.evaluate_word_pairs(str(sets[name]))
        for label, a, b in ((f"{name} Spearman", ours.spearman, gs.statistic),
                            (f"{name} Pearson", ours.pearson, gp.statistic),
                            (f"{name} OOV %", ours.oov_ratio, goov)):
            print(f"| {label} | {a:.6f} | {b:.6f} | {abs(a - b):.1e} |")
            if abs(a - b) > 1e-6:
                failures.append(label)
    t1 = time.perf_counter()
    ours_a = evaluate_analogies(wv, questions, restrict_vocab=30_000)
    t_ours = time.perf_counter() - t1
    t1 = time.perf_counter()
    g_score, g_sections = kv.evaluate_word_analogies(str(sets["analogies"]), restrict_vocab=30_000)
    t_gensim = time.perf_counter() - t1
    g_correct = len(g_sections[-1]["correct"])
    print(f"| analogy 3CosAdd accuracy | {ours_a.accuracy:.6f} ({ours_a.n_correct}/{ours_a.n_answered}) "
          f"| {g_score:.6f} ({g_correct}/{g_correct + len(g_sections[-1]['incorrect'])}) "
          f"| {abs(ours_a.accuracy - g_score):.1e} |")
    if ours_a.n_correct != g_correct:
        failures.append("analogy accuracy")
    mul = evaluate_analogies(wv, questions, restrict_vocab=30_000, method="3cosmul")
    sem, syn = ours_a.semantic_syntactic()
    print(f"\nanalogies: {ours_a.n_answered} answered, {ours_a.oov_ratio:.1f}% OOV; 3CosAdd {ours_a.accuracy:.4f} "
          f"(semantic {sem:.4f}, syntactic {syn:.4f}), 3CosMul {mul.accuracy:.4f}; "
          f"time ours {t_ours:.2f} s vs gensim {t_gensim:.2f} s")

    rng = np.random.default_rng(args.seed)
    random_vecs = rng.standard_normal((len(wv), wv.dim)).astype(np.float32)
    print("\n| vectors | mean cos (raw) | mean cos (mean-centered) |\n|---|---|---|")
    for label, v in (("skip-gram (gensim, text8)", wv.vectors), ("Gaussian random", random_vecs)):
        print(f"| {label} | {anisotropy(v, seed=args.seed):.4f} | {anisotropy(mean_center(v), seed=args.seed):.4f} |")
    if abs(anisotropy(mean_center(wv.vectors), seed=args.seed)) > 0.05:
        failures.append("mean-centering should bring the mean cosine near 0")

    for w in ("king", "paris", "computer"):
        if w in wv:
            print(f"nearest({w}): " + ", ".join(f"{n} {s:.2f}" for n, s in wv.most_similar(w, topn=6)))
    t1 = time.perf_counter()
    pairs = country_capital_pairs(questions)
    png = plot_projections(wv, pairs, HERE / "figures" / "tsne_umap_capitals.png", n_words=n_map,
                           seed=args.seed, title=f"gensim skip-gram on {len(words):,} text8 words")
    print(f"\nwrote {png.relative_to(HERE)} ({n_map} most frequent words + capital/country pairs) "
          f"in {time.perf_counter() - t1:.1f} s; total {time.perf_counter() - t0:.1f} s")
    if failures:
        print("FAILED:", ", ".join(failures))
        return 1
    print("OK: our evaluation reproduces gensim's numbers on the same vectors")
    return 0


if __name__ == "__main__":
    sys.exit(main())

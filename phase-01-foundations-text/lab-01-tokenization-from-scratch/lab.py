# Generated from solution.py by `make labs` (labkit/labgen.py). Fill in the TODOs.
"""Lab 1.1: three tokenizers from scratch (whitespace, GPT-2 regex, byte-level).

A tokenizer turns a string into a list of integer ids (``list[int]``, each in
``[0, vocab_size)``) that index an embedding table, and turns ids back into a string.
This lab builds the three classic designs and measures what each one costs:

* :class:`WhitespaceTokenizer` -- ``str.split()`` into words, one id per word type seen in
  training. Unknown words become ``<unk>``; whitespace is normalised away on decode.
* :class:`RegexTokenizer` -- the GPT-2 pre-tokenization regex (Radford et al. 2019,
  ``encoder.py`` in openai/gpt-2) splits text into pieces that *keep* their leading space,
  so ``"".join(pieces) == text``. One id per piece type; unknown pieces become ``<unk>``.
* :class:`ByteLevelTokenizer` -- one id per UTF-8 byte. A fixed 256-symbol alphabet, so
  every string is encodable and there is no ``<unk>`` at all (the base layer of GPT-2's
  byte-level BPE; BPE merges on top of it come in Phase 5).

Conventions shared by all three (the lab's design choices, documented in the README):

* Special tokens take the lowest ids ``0..k-1`` in the order given; the default set is
  ``("<pad>", "<unk>", "<bos>", "<eos>")`` (the byte-level tokenizer drops ``<unk>``).
* ``encode(text)`` treats special-token strings in ``text`` as ordinary text (like
  tiktoken's ``encode_ordinary``), so user input cannot inject control tokens;
  ``encode(text, allow_special=True)`` maps them to their ids.
* ``decode`` raises ``ValueError`` for ids outside ``[0, vocab_size)`` and never raises on
  byte sequences that are not valid UTF-8: those decode to U+FFFD.

Run ``python solution.py`` for the benchmark on Tiny Shakespeare and WikiText-2
(``--full`` for the whole held-out splits and more timing repeats).
"""
from __future__ import annotations

import argparse
import operator
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import regex

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<unk>", "<bos>", "<eos>")
UNK = "<unk>"


# ----------------------------------------------------------------------------------------
# Shared building blocks
# ----------------------------------------------------------------------------------------

def _check_specials(special_tokens: Sequence[str]) -> tuple[str, ...]:
    specials = tuple(special_tokens)
    for s in specials:
        if not isinstance(s, str) or not s:
            raise ValueError(f"special tokens must be non-empty strings, got {s!r}")
    if len(set(specials)) != len(specials):
        raise ValueError(f"special tokens must be unique, got {specials}")
    return specials


def _check_ids(ids: Iterable[int], vocab_size: int) -> list[int]:
    """Ids as Python ints. Any integer type is accepted (``np.int64`` items of an array, a
    0-d integer tensor: whatever implements ``__index__``); bools, floats and strings are not."""
    out = []
    for i in ids:
        try:
            if isinstance(i, bool):
                raise TypeError
            j = operator.index(i)
        except TypeError:
            raise TypeError(f"token ids must be ints, got {i!r} of type {type(i).__name__}") from None
        if not 0 <= j < vocab_size:
            raise ValueError(f"token id {j} is outside [0, {vocab_size}) for this vocabulary")
        out.append(j)
    return out


def _as_texts(texts: str | Iterable[str]) -> list[str]:
    items = [texts] if isinstance(texts, str) else list(texts)
    for t in items:
        if not isinstance(t, str):
            raise TypeError(f"train() expects a str or an iterable of str, got an item of type {type(t).__name__}")
    return items


def build_vocab(counts: Counter[str] | dict[str, int], min_freq: int = 1,
                special_tokens: Sequence[str] = SPECIAL_TOKENS,
                max_size: int | None = None) -> dict[str, int]:
    """Build a ``token -> id`` table from token counts.

    Layout: the special tokens get ids ``0..k-1`` in the order given; then every token with
    ``count >= min_freq`` follows, most frequent first, ties broken by the token string
    (so the result is deterministic). A counted token equal to a special token is not added
    twice. ``max_size`` caps the total size (specials included).

    Args:
        counts: token -> number of occurrences in the training corpus.
        min_freq: keep tokens seen at least this many times (>= 1). ``min_freq=2`` drops
            the hapax legomena, typically about half the types but few of the tokens.
        special_tokens: reserved strings for ids ``0..k-1``.
        max_size: optional cap on ``len(vocab)``; must be >= ``len(special_tokens)``.

    Returns:
        dict mapping each token string to its id; ids are exactly ``0..len-1``.

    Raises:
        ValueError: ``min_freq < 1``, bad special tokens, or ``max_size`` too small.
    """
    if isinstance(min_freq, bool) or not isinstance(min_freq, int) or min_freq < 1:
        raise ValueError(f"min_freq must be an int >= 1, got {min_freq!r}")
    specials = _check_specials(special_tokens)
    if max_size is not None and max_size < len(specials):
        raise ValueError(f"max_size={max_size} cannot hold the {len(specials)} special tokens")
    # TODO(1): specials first (ids 0..k-1), then tokens with count >= min_freq sorted by (-count, token); skip tokens equal to a special; respect max_size (medium, ~15 min)
    raise NotImplementedError("TODO(1)")


def split_special(text: str, special_tokens: Sequence[str]) -> list[tuple[str, bool]]:
    """Cut ``text`` around occurrences of special-token strings.

    Returns a list of ``(segment, is_special)`` in order, with no empty segments, such that
    ``"".join(seg for seg, _ in result) == text``. Where two specials could match at the
    same position the longer one wins (``"<eos>"`` before ``"<e"``).

    Example: ``split_special("a<eos>b", ["<eos>"]) == [("a", False), ("<eos>", True), ("b", False)]``.

    Raises:
        TypeError: ``text`` is not a str.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    specials = _check_specials(special_tokens)
    # TODO(2): one alternation of the escaped specials, longest first; walk finditer and emit the text between matches and each match (medium, ~15 min)
    raise NotImplementedError("TODO(2)")


def gpt2_pattern() -> regex.Pattern:
    """The GPT-2 pre-tokenization regex, compiled with the ``regex`` package.

    Alternatives, tried left to right at each position:
    contractions ``'s 't 're 've 'm 'll 'd``; an optional space plus letters (``\\p{L}``);
    an optional space plus digits (``\\p{N}``); an optional space plus a run of anything
    else that is not whitespace; whitespace not followed by a non-space (so the last space
    before a word is left to attach to that word); any remaining whitespace.

    Source: openai/gpt-2 ``src/encoder.py``; tiktoken's ``gpt2`` encoding uses an
    equivalent pattern (``get_encoding("gpt2")._pat_str``). The stdlib ``re`` module has
    no ``\\p{L}``, hence ``regex``.
    """
    # TODO(3): write the six-alternative GPT-2 pattern (contractions | ?letters | ?numbers | ?other | trailing whitespace | whitespace) and regex.compile it (medium, ~20 min)
    raise NotImplementedError("TODO(3)")


# ----------------------------------------------------------------------------------------
# Word-level tokenizers: a learned vocabulary of pieces + <unk>
# ----------------------------------------------------------------------------------------

class VocabTokenizer:
    """Base class: pre-tokenize into pieces, then look each piece up in a trained vocab.

    Subclasses define :meth:`pre_tokenize` and ``separator`` (the string ``decode`` puts
    between pieces). Ids: special tokens ``0..k-1``, then pieces by training frequency.
    ``<unk>`` must be among the special tokens: pieces not in the vocabulary map to it.
    """

    separator: str = ""

    def __init__(self, special_tokens: Sequence[str] = SPECIAL_TOKENS) -> None:
        self.special_tokens = _check_specials(special_tokens)
        if UNK not in self.special_tokens:
            raise ValueError(f"a {type(self).__name__} needs {UNK!r} among its special tokens "
                             "(unknown pieces map to it)")
        self.token_to_id: dict[str, int] = {s: i for i, s in enumerate(self.special_tokens)}
        self.id_to_token: list[str] = list(self.special_tokens)
        self.trained = False  # encode() refuses to run before train(): it would map every piece to <unk>

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return len(self.id_to_token)

    @property
    def unk_id(self) -> int:
        return self.token_to_id[UNK]

    def pre_tokenize(self, text: str) -> list[str]:
        """Split ``text`` into pieces (strings). Defined by each subclass."""
        raise NotImplementedError(f"{type(self).__name__} must define pre_tokenize")

    def train(self, texts: str | Iterable[str], min_freq: int = 1,
              max_size: int | None = None) -> VocabTokenizer:
        """Learn the vocabulary: count the pieces of every text, then :func:`build_vocab`.

        Args:
            texts: one string or an iterable of strings (documents, lines...).
            min_freq: keep pieces seen at least this often; rarer ones will encode as <unk>.
            max_size: optional cap on ``vocab_size`` (specials included).

        Returns:
            ``self``, so ``tok = RegexTokenizer().train(text)`` works.

        Raises:
            TypeError: an item of ``texts`` is not a str.
            ValueError: bad ``min_freq``/``max_size`` (see :func:`build_vocab`).
        """
        items = _as_texts(texts)
        counts: Counter[str] = Counter()
        for t in items:
            counts.update(self.pre_tokenize(t))
        self.token_to_id = build_vocab(counts, min_freq, self.special_tokens, max_size)
        self.id_to_token = sorted(self.token_to_id, key=self.token_to_id.__getitem__)
        self.trained = True
        return self

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Text -> ids (``list[int]``, one per piece; ``len`` is the token count).

        With ``allow_special=False`` (default) special-token strings inside ``text`` are
        ordinary text: a piece that happens to equal one (the word ``"<eos>"`` for the
        whitespace tokenizer) is *not* given the special id but ``unk_id``, since ids
        ``0..k-1`` are reserved. With ``True`` they become their reserved ids. Pieces
        missing from the vocabulary become ``unk_id``.

        Raises:
            TypeError: ``text`` is not a str.
            ValueError: the tokenizer was never trained (its vocabulary holds only the special
                tokens, so every piece would silently become ``<unk>``).
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if not self.trained:
            raise ValueError(f"this {type(self).__name__} has not been trained: call train(texts) "
                             "first, or every piece would encode as <unk>")
        # TODO(4): if allow_special, split_special first and emit special ids directly; pre_tokenize the other segments and look each piece up, with unk_id for unknown pieces AND for pieces that land on a reserved id (medium, ~15 min)
        raise NotImplementedError("TODO(4)")

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text: look each id up and join the pieces with ``self.separator``.

        Raises:
            TypeError: an id is not an int.
            ValueError: an id is outside ``[0, vocab_size)``.
        """
        ids = _check_ids(ids, self.vocab_size)
        # TODO(5): map each id back to its piece and join with self.separator (easy, ~5 min)
        raise NotImplementedError("TODO(5)")


class WhitespaceTokenizer(VocabTokenizer):
    """Words = maximal runs of non-whitespace (``str.split()``); decode joins with one space.

    Round-trip: ``decode(encode(s)) == " ".join(s.split())`` when every word of ``s`` is in
    the vocabulary: the *kind* and *amount* of whitespace is lost, and punctuation stays
    glued to words (``"world!"`` and ``"world"`` are different types).
    """

    separator = " "

    def pre_tokenize(self, text: str) -> list[str]:
        """``"a  b\\tc"`` -> ``["a", "b", "c"]`` (any Unicode whitespace separates words)."""
        # TODO(6): split on runs of any whitespace, dropping empty strings (easy, ~3 min)
        raise NotImplementedError("TODO(6)")


class RegexTokenizer(VocabTokenizer):
    """Pieces from the GPT-2 pre-tokenization regex; decode concatenates them.

    The pieces carry their own spaces (``" world"``), so ``"".join(pre_tokenize(s)) == s``
    for every string and ``decode(encode(s)) == s`` whenever every piece of ``s`` is in the
    vocabulary. Pieces never seen in training (or rarer than ``min_freq``) become ``<unk>``.

    Args:
        special_tokens: reserved strings for ids ``0..k-1`` (must include ``"<unk>"``).
        pattern: a different pre-tokenization regex (str); default :func:`gpt2_pattern`.
    """

    separator = ""

    def __init__(self, special_tokens: Sequence[str] = SPECIAL_TOKENS,
                 pattern: str | None = None) -> None:
        super().__init__(special_tokens)
        self.pattern = gpt2_pattern() if pattern is None else regex.compile(pattern)

    def pre_tokenize(self, text: str) -> list[str]:
        """``"Don't stop"`` -> ``["Don", "'t", " stop"]``."""
        # TODO(7): every non-overlapping match of self.pattern, in order (easy, ~3 min)
        raise NotImplementedError("TODO(7)")


# ----------------------------------------------------------------------------------------
# Byte-level tokenizer: fixed 256-byte alphabet, no <unk>
# ----------------------------------------------------------------------------------------

class ByteLevelTokenizer:
    """One id per UTF-8 byte: ``id = n_special + byte``; specials take ``0..n_special-1``.

    ``vocab_size = len(special_tokens) + 256`` (exactly 256 with ``special_tokens=()``, in
    which case the id *is* the byte). Every string is encodable, so there is no ``<unk>``,
    and ``decode(encode(s)) == s`` for every ``s``. Decoding joins all bytes first and then
    decodes them as UTF-8 with ``errors="replace"``: a byte sequence that is not valid
    UTF-8 (a truncated emoji from a model, say) becomes U+FFFD instead of an exception.
    """

    def __init__(self, special_tokens: Sequence[str] = ("<pad>", "<bos>", "<eos>")) -> None:
        self.special_tokens = _check_specials(special_tokens)
        self.token_to_id = {s: i for i, s in enumerate(self.special_tokens)}
        self.n_special = len(self.special_tokens)

    @property
    def vocab_size(self) -> int:
        """``len(special_tokens) + 256``."""
        return self.n_special + 256

    def train(self, texts: str | Iterable[str], min_freq: int = 1,
              max_size: int | None = None) -> ByteLevelTokenizer:
        """Nothing to learn: the 256-byte alphabet is fixed. Kept so all three tokenizers
        share one API; arguments are validated and otherwise ignored. Returns ``self``."""
        _as_texts(texts)
        if isinstance(min_freq, bool) or not isinstance(min_freq, int) or min_freq < 1:
            raise ValueError(f"min_freq must be an int >= 1, got {min_freq!r}")
        return self

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Text -> ids: ``n_special + b`` for each byte ``b`` of ``text.encode("utf-8")``;
        with ``allow_special=True`` special-token strings become their ids instead.

        ``len(result)`` is the UTF-8 byte count (for ordinary text): 1 per ASCII char,
        2 for most accented Latin/Arabic, 3 for CJK, 4 for emoji.

        Raises:
            TypeError: ``text`` is not a str.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        # TODO(8): UTF-8 encode each ordinary segment and shift every byte by n_special; special segments (only if allow_special) map to their ids (easy, ~10 min)
        raise NotImplementedError("TODO(8)")

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text. Special ids decode to their strings; all bytes are gathered first
        and decoded once with ``errors="replace"`` (so a multi-byte character split over
        several ids is rebuilt, and invalid UTF-8 gives U+FFFD, never an exception).

        Raises:
            TypeError: an id is not an int.
            ValueError: an id is outside ``[0, vocab_size)``.
        """
        ids = _check_ids(ids, self.vocab_size)
        # TODO(9): build one bytes buffer (special ids contribute their UTF-8 string), then decode it once with errors="replace" (medium, ~10 min)
        raise NotImplementedError("TODO(9)")


# ----------------------------------------------------------------------------------------
# Measurement helpers (not part of the exercise)
# ----------------------------------------------------------------------------------------

def coverage_curve(train_counts: Counter[str], eval_pieces: Sequence[str],
                   vocab_sizes: Sequence[int]) -> list[float]:
    """Fraction of ``eval_pieces`` (tokens) that are in-vocabulary when the vocabulary is
    the ``V`` most frequent training types, for each ``V`` in ``vocab_sizes``."""
    from itertools import accumulate

    ranked = sorted(train_counts.items(), key=lambda tc: (-tc[1], tc[0]))
    eval_counts = Counter(eval_pieces)
    n = max(1, len(eval_pieces))
    # covered[r] = eval tokens whose type is among the r most frequent training types
    covered = [0, *accumulate(eval_counts.get(t, 0) for t, _ in ranked)]
    return [covered[min(v, len(ranked))] / n for v in vocab_sizes]


def _mb_per_s(fn, text: str, repeats: int) -> tuple[float, object]:
    """Encode throughput in MB/s (UTF-8 megabytes per CPU second, best of ``repeats``).

    Measured with ``time.process_time`` (CPU time of this process; every encoder here is
    single-threaded). CPU time is NOT immune to other jobs: on a busy machine they evict our
    caches and share memory bandwidth, so absolute MB/s moves from run to run. Compare
    tokenizers by the ratios within one run (the ``x gpt2`` column), not across runs.
    """
    import gc

    result = fn(text)
    best = float("inf")
    gc.disable()  # like timeit: a collection triggered by earlier garbage is not the encoder's cost
    try:
        for _ in range(repeats):
            start = time.process_time()
            fn(text)
            best = min(best, time.process_time() - start)
    finally:
        gc.enable()
    return len(text.encode("utf-8")) / 1e6 / max(best, 1e-9), result


def _load_corpora(full: bool) -> dict[str, tuple[str, str]]:
    """name -> (train text, held-out text). Small mode caps the held-out text at 256 KB."""
    from labkit import read_text

    shakes = read_text("tinyshakespeare", "input.txt")
    cut = int(len(shakes) * 0.9)
    cut = shakes.index("\n\n", cut) + 2  # split at a speech boundary
    corpora = {
        "tinyshakespeare": (shakes[:cut], shakes[cut:]),
        # WikiText-2's train split is not in the course data: learn on valid, measure on test.
        "wikitext-2": (read_text("wikitext-2", "valid.txt"), read_text("wikitext-2", "test.txt")),
    }
    if not full:
        corpora = {k: (tr, ev[:256_000]) for k, (tr, ev) in corpora.items()}
    return corpora


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Lab 1.1 self-test: tokenizer benchmark on real corpora.")
    ap.add_argument("--full", action="store_true",
                    help="whole held-out splits and 10 timing repeats (small mode: 256 KB, 5 repeats)")
    ap.add_argument("--figures", type=Path, default=Path(__file__).parent / "figures")
    args = ap.parse_args(argv)

    from labkit import seed_everything
    from labkit.plots import plt, savefig
    from labkit.tiktoken_offline import get_encoding

    seed_everything(0)
    repeats = 10 if args.full else 5
    t0 = time.perf_counter()
    failures: list[str] = []
    corpora = _load_corpora(args.full)
    encs = {name: get_encoding(name) for name in ("gpt2", "cl100k_base")}
    tik_pat = regex.compile(encs["gpt2"]._pat_str)

    print(f"mode: {'full' if args.full else 'small'}; encode speed = MB per CPU second, best of {repeats} "
          "(ours: pure Python; tiktoken: Rust). Speeds are noisy on a shared machine:\n"
          "compare the 'x gpt2' ratios (speed / tiktoken gpt2's speed, measured in this run)")
    print("train text -> vocab; every number below is measured on the held-out text\n")
    header = (f"{'corpus':<16} {'tokenizer':<20} {'vocab':>7} {'tokens':>9} {'chars/tok':>9} "
              f"{'bytes/tok':>9} {'unk %':>6} {'rt train':>8} {'rt held':>7} {'enc MB/s':>8} {'x gpt2':>6}")
    print(header)
    print("-" * len(header))
    curves: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    for cname, (train_text, eval_text) in corpora.items():
        n_chars, n_bytes = len(eval_text), len(eval_text.encode("utf-8"))
        toks = {
            "whitespace": WhitespaceTokenizer().train(train_text),
            "regex (GPT-2 pat)": RegexTokenizer().train(train_text),
            "byte-level": ByteLevelTokenizer(),
        }
        rows = []
        for tname, tok in toks.items():
            mbps, ids = _mb_per_s(tok.encode, eval_text, repeats)
            unk = getattr(tok, "unk_id", None)
            unk_pct = 100 * ids.count(unk) / max(1, len(ids)) if unk is not None else 0.0
            # whitespace decode can only give back the whitespace-normalised text
            norm = (lambda s: " ".join(s.split())) if tname == "whitespace" else (lambda s: s)
            ok_held = tok.decode(ids) == norm(eval_text)
            ok_train = tok.decode(tok.encode(train_text)) == norm(train_text)
            rows.append((tname, tok.vocab_size, len(ids), unk_pct, ok_train, ok_held, mbps))
            if tname == "byte-level" and not (ok_held and ok_train):
                failures.append(f"{cname}: byte-level tokenizer does not round-trip")
            if not ok_train:
                failures.append(f"{cname}: {tname} does not round-trip its own (in-vocab) training text")
        for ename, enc in encs.items():
            mbps, ids = _mb_per_s(enc.encode_ordinary, eval_text, repeats)
            ok = enc.decode(ids) == eval_text
            ok_train = enc.decode(enc.encode_ordinary(train_text)) == train_text
            rows.append((f"tiktoken {ename}", enc.n_vocab, len(ids), 0.0, ok_train, ok, mbps))
        yn = {True: "yes", False: "no"}
        gpt2_mbps = next(r[-1] for r in rows if r[0] == "tiktoken gpt2")
        for tname, vocab, n_tok, unk_pct, ok_train, ok_held, mbps in rows:
            print(f"{cname:<16} {tname:<20} {vocab:>7,} {n_tok:>9,} {n_chars / n_tok:>9.2f} "
                  f"{n_bytes / n_tok:>9.2f} {unk_pct:>6.2f} {yn[ok_train]:>8} {yn[ok_held]:>7} {mbps:>8.2f}"
                  f" {mbps / gpt2_mbps:>6.2f}")

        # sanity checks the README relies on
        regex_tok = toks["regex (GPT-2 pat)"]
        for part, text in (("train", train_text), ("held-out", eval_text)):
            if regex_tok.pre_tokenize(text) != tik_pat.findall(text):
                failures.append(f"{cname} {part}: our GPT-2 pieces differ from tiktoken's gpt2 pattern")
        n_pieces = len(regex_tok.pre_tokenize(eval_text))
        n_gpt2 = len(encs["gpt2"].encode_ordinary(eval_text))
        if n_gpt2 < n_pieces:
            failures.append(f"{cname}: tiktoken gpt2 made fewer tokens than pre-token pieces")
        print(f"{cname:<16} pre-token pieces {n_pieces:,}; tiktoken gpt2 tokens {n_gpt2:,} "
              f"({n_gpt2 / n_pieces:.3f} BPE tokens per piece)")
        words = eval_text.split()
        print(f"{cname:<16} words that are literally '<unk>' in the file: {words.count(UNK):,} of "
              f"{len(words):,} ({100 * words.count(UNK) / len(words):.2f} %)\n")

        # vocab-size vs coverage of held-out tokens (extension)
        sizes = sorted({int(round(x)) for x in [10 ** (k / 8) for k in range(8, 37)]})
        curves[cname] = {}
        for tname, tok in (("whitespace", toks["whitespace"]), ("regex", regex_tok)):
            counts = Counter(p for p in tok.pre_tokenize(train_text))
            cov = coverage_curve(counts, tok.pre_tokenize(eval_text), sizes)
            curves[cname][tname] = (sizes, cov)

    # min_freq sweep on WikiText-2: the vocab-size / unknown-rate tradeoff
    train_text, eval_text = corpora["wikitext-2"]
    print("min_freq sweep, regex tokenizer, WikiText-2 (train: valid split, measure: test split)")
    print(f"{'min_freq':>8} {'vocab':>7} {'unk % of tokens':>16}")
    for mf in (1, 2, 3, 5, 10, 50):
        tok = RegexTokenizer().train(train_text, min_freq=mf)
        ids = tok.encode(eval_text)
        print(f"{mf:>8} {tok.vocab_size:>7,} {100 * ids.count(tok.unk_id) / len(ids):>16.2f}")

    # one short sentence per script: how many tokens each scheme spends per character
    samples = {
        "English": "The quick brown fox jumps over the lazy dog.",
        "Chinese": "我们今天下午在图书馆学习机器学习。",
        "Arabic": "نحن ندرس تعلم الآلة في المكتبة اليوم.",
        "Hindi": "हम आज पुस्तकालय में मशीन लर्निंग पढ़ रहे हैं।",
        "emoji": "🎉🚀👨‍👩‍👧‍👦👍🏽🇯🇵",
        "Python": "def add(a, b):\n    return a + b  # sum\n",
    }
    byte_tok = ByteLevelTokenizer()
    print(f"\n{'sample':<8} {'chars':>5} {'UTF-8 bytes':>11} {'byte-level':>10} {'gpt2':>5} {'cl100k':>6}  (tokens)")
    for sname, text in samples.items():
        n_b = len(byte_tok.encode(text))
        n_g, n_c = (len(encs[e].encode_ordinary(text)) for e in ("gpt2", "cl100k_base"))
        print(f"{sname:<8} {len(text):>5} {len(text.encode('utf-8')):>11} {n_b:>10} {n_g:>5} {n_c:>6}")
        if byte_tok.decode(byte_tok.encode(text)) != text:
            failures.append(f"byte-level does not round-trip the {sname} sample")

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, (cname, per_tok) in zip(axes, curves.items()):
        for tname, (sizes, cov) in per_tok.items():
            ax.plot(sizes, [100 * c for c in cov], marker=".", label=tname)
        ax.set_xscale("log")
        ax.set_title(f"{cname}: held-out token coverage")
        ax.set_xlabel("vocabulary size V (top-V training types)")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("% of held-out tokens in vocabulary")
    path = savefig(fig, args.figures / "vocab_coverage.png")
    print(f"\nwrote {path}")

    elapsed = time.perf_counter() - t0
    print(f"self-test time: {elapsed:.1f} s")
    if failures:
        print("SANITY CHECKS FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    print("sanity checks passed: byte-level round-trips; regex pieces == tiktoken gpt2 pattern pieces; "
          "regex round-trips in-vocab text; gpt2 BPE tokens >= pieces")
    return 0


if __name__ == "__main__":
    sys.exit(main())

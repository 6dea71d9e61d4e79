"""Grader for lab 1.1 (tokenization from scratch).

References: tiktoken's ``gpt2`` encoding (its pre-tokenization pattern and its real BPE
token boundaries), Python's own ``str.split`` and ``bytes.decode(errors="replace")``, and
round-trip properties checked by hypothesis over arbitrary Unicode.
"""
from __future__ import annotations

from collections import Counter

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit import read_text
from labkit.tiktoken_offline import get_encoding

# Hand-picked fragments hypothesis mixes into random text: emoji (incl. ZWJ sequences and
# skin tones), CJK, Arabic, Devanagari with combining marks, code, and unusual whitespace.
FRAGMENTS = [
    "😀", "👨‍👩‍👧‍👦", "👍🏽", "🇫🇷", "中文分词", "東京", "こんにちは", "한국어", "مرحبا بالعالم", "नमस्ते",
    "e\u0301", "ﬁ", "Ⅻ", "²³", "def f(x):\n\treturn x**2  # ok", "if (a != b) { return; }",
    "don't", "I'M", "we'll've", "'s", "\u00a0", "\u3000", "\u2028", "\u2029", "\u200b", "\u202f",
    "\r\n", "\t\t", "   ", "\x0b", "\x0c", "\x85", "<eos>", "<unk>", "<", "12345", "3.14",
]
texts = st.lists(st.one_of(st.text(max_size=12), st.sampled_from(FRAGMENTS)), max_size=12).map("".join)


@pytest.fixture(scope="module")
def gpt2():
    return get_encoding("gpt2")


@pytest.fixture(scope="module")
def corpora() -> dict[str, str]:
    return {
        "tinyshakespeare": read_text("tinyshakespeare", "input.txt"),
        "wikitext-2 valid": read_text("wikitext-2", "valid.txt"),
        "wikitext-2 test": read_text("wikitext-2", "test.txt"),
    }


def _token_ends(enc, text: str) -> set[int]:
    """Byte offsets where tiktoken's tokens end."""
    ends, pos = set(), 0
    for piece in enc.decode_tokens_bytes(enc.encode_ordinary(text)):
        pos += len(piece)
        ends.add(pos)
    return ends


# ---------------------------------------------------------------------------- build_vocab

def test_build_vocab_specials_first_then_by_frequency(lab):
    # equal counts inserted out of alphabetical order, so insertion order cannot pass for the tie-break
    counts = Counter({"the": 5, "sat": 2, "mat": 2, "cat": 2, "on": 1, "<eos>": 7})
    vocab = lab.build_vocab(counts, min_freq=1, special_tokens=("<pad>", "<unk>", "<eos>"))
    assert [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])][:3] == ["<pad>", "<unk>", "<eos>"], (
        "special tokens must take ids 0..k-1 in the order given")
    assert sorted(vocab.values()) == list(range(len(vocab))), "ids must be exactly 0..len(vocab)-1, no gaps"
    assert len(vocab) == 8, "a counted token equal to a special ('<eos>') must not get a second id"
    assert vocab["the"] == 3, "the most frequent ordinary token gets the first id after the specials"
    assert (vocab["cat"], vocab["mat"], vocab["sat"]) == (4, 5, 6), (
        f"three tokens seen twice got ids cat={vocab['cat']}, mat={vocab['mat']}, sat={vocab['sat']}: "
        "equal counts must be ordered by the token string (ascending), not by the order they were counted")
    assert vocab["on"] == 7


def test_build_vocab_min_freq_and_max_size(lab):
    counts = Counter({"a": 10, "b": 3, "c": 2, "d": 1, "e": 1})
    vocab = lab.build_vocab(counts, min_freq=2, special_tokens=("<unk>",))
    assert set(vocab) == {"<unk>", "a", "b", "c"}, "min_freq=2 keeps tokens seen at least twice (>=, not >)"
    capped = lab.build_vocab(counts, min_freq=1, special_tokens=("<unk>",), max_size=3)
    assert capped == {"<unk>": 0, "a": 1, "b": 2}, "max_size counts the specials and keeps the most frequent"


def test_build_vocab_rejects_bad_arguments(lab):
    with pytest.raises(ValueError, match="min_freq"):
        lab.build_vocab(Counter({"a": 1}), min_freq=0)
    with pytest.raises(ValueError, match="unique"):
        lab.build_vocab(Counter({"a": 1}), special_tokens=("<unk>", "<unk>"))


def test_train_counts_match_the_corpus(lab, corpora):
    text = corpora["tinyshakespeare"]
    tok = lab.WhitespaceTokenizer().train(text, min_freq=3)
    counts = Counter(text.split())
    expected = len([w for w, c in counts.items() if c >= 3]) + len(lab.SPECIAL_TOKENS)
    assert tok.vocab_size == expected, (
        f"vocab_size {tok.vocab_size} != {expected} = (#word types seen >= 3 times) + #specials")
    assert tok.id_to_token[len(lab.SPECIAL_TOKENS)] == counts.most_common(1)[0][0]
    assert tok.token_to_id[tok.id_to_token[100]] == 100, "token_to_id and id_to_token must be inverse"


def test_train_rejects_non_strings(lab):
    with pytest.raises(TypeError):
        lab.RegexTokenizer().train([b"bytes are not text"])


# ---------------------------------------------------------------------------- whitespace

def test_whitespace_pre_tokenize_is_str_split(lab):
    s = "  To be,\tor not\u3000to be:\n\nthat\u00a0is  the question.  "
    assert lab.WhitespaceTokenizer().pre_tokenize(s) == s.split(), (
        "split on runs of ANY whitespace (tabs, newlines, U+3000, U+00A0): use str.split() with no argument")


@settings(max_examples=150, deadline=None, derandomize=True)
@given(texts)
def test_whitespace_round_trip_normalises_whitespace(lab, s):
    tok = lab.WhitespaceTokenizer().train(s)
    # a word that IS a special-token string ("<eos>") is ordinary text that can never be in
    # the ordinary vocabulary, so it comes back as <unk>
    words = [w if w not in tok.special_tokens else "<unk>" for w in s.split()]
    assert tok.decode(tok.encode(s)) == " ".join(words), (
        "for in-vocab text, decode(encode(s)) must equal the words joined by single spaces")


def test_whitespace_unknown_word_is_unk(lab):
    tok = lab.WhitespaceTokenizer().train("the cat sat on the mat")
    ids = tok.encode("the dog sat")
    assert ids == [tok.token_to_id["the"], tok.unk_id, tok.token_to_id["sat"]], (
        "a word never seen in training must map to the <unk> id")
    assert tok.decode(ids) == "the <unk> sat"


# ---------------------------------------------------------------------------- GPT-2 regex

@pytest.mark.parametrize("text, pieces", [
    ("Don't stop", ["Don", "'t", " stop"]),
    ("we'll've been", ["we", "'ll", "'ve", " been"]),
    ("I'M LOUD", ["I", "'", "M", " LOUD"]),           # GPT-2's contraction rule is case-sensitive
    ("abc123 4.5!", ["abc", "123", " 4", ".", "5", "!"]),
    ("hello   world", ["hello", "  ", " world"]),       # the last space joins the next word
    ("end.  \n", ["end", ".", "  \n"]),
    ("日本語 テキスト😀!", ["日本語", " テキスト", "😀!"]),
])
def test_gpt2_pattern_examples(lab, text, pieces):
    got = lab.RegexTokenizer().pre_tokenize(text)
    assert got == pieces, (
        f"{text!r}: got {got}, expected {pieces}. Check the alternatives and their order: "
        "contractions first, leading space kept with letters/numbers/punctuation, "
        "whitespace followed by a word leaves its last space to the word (\\s+(?!\\S))")


@pytest.mark.parametrize("name", ["tinyshakespeare", "wikitext-2 valid", "wikitext-2 test"])
def test_gpt2_pieces_equal_tiktoken_pattern_on_real_corpora(lab, corpora, gpt2, name):
    text = corpora[name]
    ours = lab.RegexTokenizer().pre_tokenize(text)
    theirs = regex.findall(gpt2._pat_str, text)
    assert len(ours) == len(theirs), f"{name}: {len(ours)} pieces vs tiktoken's pattern {len(theirs)}"
    first_diff = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
    assert first_diff is None, (
        f"{name}: first differing piece #{first_diff}: ours {ours[first_diff]!r} vs tiktoken {theirs[first_diff]!r}")


@pytest.mark.parametrize("name", ["tinyshakespeare", "wikitext-2 test"])
def test_tiktoken_gpt2_tokens_respect_our_boundaries(lab, corpora, gpt2, name):
    text = corpora[name][:300_000]
    ends = _token_ends(gpt2, text)
    pos, crossed = 0, []
    pieces = lab.RegexTokenizer().pre_tokenize(text)
    for p in pieces:
        pos += len(p.encode("utf-8"))
        if pos not in ends:
            crossed.append(p)
    assert not crossed, f"tiktoken's gpt2 BPE never merges across a pre-token boundary, but ours end mid-token at {crossed[:5]}"
    assert len(gpt2.encode_ordinary(text)) >= len(pieces), "BPE can only split pieces further, never merge them"


@settings(max_examples=150, deadline=None, derandomize=True)
@given(texts)
def test_gpt2_pieces_match_tiktoken_on_arbitrary_unicode(lab, gpt2, s):
    pieces = lab.RegexTokenizer().pre_tokenize(s)
    assert "".join(pieces) == s, "pre-tokenization must be lossless: the pieces concatenate to the input"
    assert pieces == regex.findall(gpt2._pat_str, s)
    ends, pos = _token_ends(gpt2, s), 0
    for p in pieces:
        pos += len(p.encode("utf-8"))
        assert pos in ends, f"piece {p!r} ends inside a tiktoken gpt2 token"


@settings(max_examples=150, deadline=None, derandomize=True)
@given(texts)
def test_regex_round_trip_for_in_vocab_text(lab, s):
    tok = lab.RegexTokenizer().train(s)
    ids = tok.encode(s)
    assert tok.unk_id not in ids, "text the tokenizer was trained on has no unknown pieces"
    assert tok.decode(ids) == s, "decode must concatenate pieces with '' (the spaces live inside the pieces)"


def test_regex_oov_maps_to_unk_and_breaks_round_trip(lab):
    tok = lab.RegexTokenizer().train("hello world")
    ids = tok.encode("hello there")
    assert ids == [tok.token_to_id["hello"], tok.unk_id], "' there' was never seen, so it must be <unk>"
    assert tok.decode(ids) == "hello<unk>"


def test_regex_min_freq_on_wikitext(lab, corpora):
    train, held = corpora["wikitext-2 valid"], corpora["wikitext-2 test"][:100_000]
    big = lab.RegexTokenizer().train(train, min_freq=1)
    small = lab.RegexTokenizer().train(train, min_freq=5)
    assert small.vocab_size < big.vocab_size
    unk_big, unk_small = big.encode(held).count(big.unk_id), small.encode(held).count(small.unk_id)
    assert unk_small > unk_big > 0, "a higher min_freq must give a smaller vocab and more <unk> on held-out text"


# ---------------------------------------------------------------------------- byte-level

@settings(max_examples=200, deadline=None, derandomize=True)
@given(texts)
def test_byte_level_always_round_trips(lab, s):
    tok = lab.ByteLevelTokenizer()
    ids = tok.encode(s)
    assert [i - tok.n_special for i in ids] == list(s.encode("utf-8")), (
        "byte-level ids are the UTF-8 bytes shifted by the number of special tokens")
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == s, "decode must gather ALL bytes first, then decode once as UTF-8"


def test_byte_level_vocab_is_256_plus_specials(lab):
    assert lab.ByteLevelTokenizer(special_tokens=()).vocab_size == 256
    tok = lab.ByteLevelTokenizer(special_tokens=())
    assert tok.encode("Aé😀") == list("Aé😀".encode()), "with no specials the id is the byte itself"


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"ok \xf0\x9f\x98", b"\x80abc", b"\xc3(", b"\xed\xa0\x80"])
def test_byte_level_invalid_utf8_gives_replacement_char(lab, raw):
    tok = lab.ByteLevelTokenizer()
    ids = [b + tok.n_special for b in raw]
    out = tok.decode(ids)  # must not raise UnicodeDecodeError
    assert out == raw.decode("utf-8", errors="replace"), 'decode with errors="replace", like bytes.decode'
    assert "\ufffd" in out


def test_byte_level_multibyte_char_split_over_ids(lab):
    tok = lab.ByteLevelTokenizer()
    assert len(tok.encode("😀")) == 4 and tok.decode(tok.encode("😀")) == "😀", (
        "an emoji is 4 bytes; decoding them one at a time would give 4 U+FFFD")


# ---------------------------------------------------------------------------- special tokens

def test_split_special(lab):
    got = lab.split_special("<bos>hi<eos><eos> x<e", ["<e", "<eos>", "<bos>"])
    assert got == [("<bos>", True), ("hi", False), ("<eos>", True), ("<eos>", True), (" x", False), ("<e", True)], (
        "keep every non-empty segment in order; the longest special wins at a position")
    assert lab.split_special("", ["<eos>"]) == []
    assert lab.split_special("a.b", ["."]) == [("a", False), (".", True), ("b", False)], "escape the specials"


@pytest.mark.parametrize("cls", ["WhitespaceTokenizer", "RegexTokenizer", "ByteLevelTokenizer"])
def test_special_tokens_only_when_allowed(lab, cls):
    text = "<bos>hello world<eos>"
    tok = getattr(lab, cls)().train("hello world <bos> <eos>")
    ids = tok.encode(text, allow_special=True)
    assert ids[0] == tok.token_to_id["<bos>"] and ids[-1] == tok.token_to_id["<eos>"], (
        "with allow_special=True, '<bos>'/'<eos>' in the text become their reserved ids")
    assert tok.token_to_id["<bos>"] < len(tok.special_tokens), "special tokens live at ids 0..k-1"
    plain = tok.encode(text)
    assert tok.token_to_id["<eos>"] not in plain, (
        "by default special-token strings are ordinary text (user input must not inject control tokens)")
    if cls != "WhitespaceTokenizer":
        assert tok.decode(ids) == text


def test_special_string_as_a_word_is_not_a_control_token(lab):
    tok = lab.WhitespaceTokenizer().train("a <eos> b")
    eos, unk = tok.token_to_id["<eos>"], tok.unk_id
    assert tok.encode("a <eos> b")[1] == unk, (
        "with allow_special=False the WORD '<eos>' must not get the reserved <eos> id: "
        "ids 0..k-1 only come from allow_special=True (map such pieces to <unk>)")
    assert tok.encode("a <eos> b", allow_special=True)[1] == eos


# ---------------------------------------------------------------------------- errors, tiktoken counts

@pytest.mark.parametrize("cls", ["WhitespaceTokenizer", "RegexTokenizer", "ByteLevelTokenizer"])
def test_bad_input_raises(lab, cls):
    tok = getattr(lab, cls)().train("a b")
    with pytest.raises(ValueError, match="outside"):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError, match="outside"):
        tok.decode([-1])
    with pytest.raises(TypeError):
        tok.encode(b"bytes")


@pytest.mark.given
@pytest.mark.parametrize("cls", ["WhitespaceTokenizer", "RegexTokenizer"])
def test_untrained_tokenizer_refuses_to_encode(lab, cls):
    with pytest.raises(ValueError, match="train"):
        getattr(lab, cls)().encode("hello world")


@pytest.mark.given
def test_decode_accepts_numpy_integers_and_refuses_floats(lab):
    import numpy as np

    tok = lab.ByteLevelTokenizer()
    ids = np.array(tok.encode("héllo"), dtype=np.int64)
    assert tok.decode(ids) == "héllo", "ids from a NumPy array (np.int64) are ints too"
    assert tok.decode(list(ids.astype(np.int32))) == "héllo"
    with pytest.raises(TypeError):
        tok.decode([104.0])
    with pytest.raises(TypeError):
        tok.decode([True])
    with pytest.raises(ValueError, match="outside"):
        tok.decode(np.array([tok.vocab_size]))


def test_token_counts_against_tiktoken_on_shakespeare(lab, corpora, gpt2):
    text = corpora["tinyshakespeare"][:200_000]
    n_bytes = len(lab.ByteLevelTokenizer().encode(text))
    n_pieces = len(lab.RegexTokenizer().train(text).encode(text))
    n_words = len(lab.WhitespaceTokenizer().train(text).encode(text))
    n_gpt2 = len(gpt2.encode_ordinary(text))
    assert n_bytes == len(text.encode("utf-8"))
    assert n_words < n_pieces <= n_gpt2 < n_bytes, (
        f"expected words {n_words} < GPT-2 pieces {n_pieces} <= gpt2 BPE tokens {n_gpt2} < bytes {n_bytes}")
    assert n_gpt2 / n_pieces < 1.3, "on English text most GPT-2 pre-token pieces are a single BPE token"

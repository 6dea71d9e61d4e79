"""Grader for lab 5.1 (byte-level BPE). References: tiktoken's ``gpt2`` and ``cl100k_base``
(token-for-token equality), CS336's reference merges and vocabulary for ``corpus.en``, a naive
full-recount trainer, and Hugging Face ``tokenizers``/``transformers`` (reads our files, runs our export)."""
from __future__ import annotations

import json
import random
import re
import time

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from labkit import dataset_path, read_text

EOT = "<|endoftext|>"
SLICE = 300_000  # characters of each corpus in the default run; the slow tests use everything

CORPORA = {  # name -> (dataset, file)
    "wikitext2-valid": ("wikitext-2", "valid.txt"),
    "wikitext2-test": ("wikitext-2", "test.txt"),
    "tinyshakespeare": ("tinyshakespeare", "input.txt"),
    "taylorswift": ("minbpe-text", "taylorswift.txt"),
    "cs336-corpus.en": ("cs336-bpe-fixtures", "corpus.en"),
    "cs336-tinystories_sample": ("cs336-bpe-fixtures", "tinystories_sample.txt"),
    "cs336-german": ("cs336-bpe-fixtures", "german.txt"),
    "cs336-address": ("cs336-bpe-fixtures", "address.txt"),
}

@pytest.fixture(scope="session")
def corpora() -> dict[str, str]:
    return {name: read_text(ds, f) for name, (ds, f) in CORPORA.items()}


@pytest.fixture(scope="session")
def tiktoken_encodings():
    from labkit.tiktoken_offline import get_encoding

    return {name: get_encoding(name) for name in ("gpt2", "cl100k_base")}


@pytest.fixture(scope="module")
def gpt2(lab):
    return lab.BPETokenizer.from_gpt2_files(dataset_path("gpt2-bpe", "encoder.json"),
                                            dataset_path("gpt2-bpe", "vocab.bpe"))


@pytest.fixture(scope="module")
def cl100k(lab):
    return lab.BPETokenizer.from_tiktoken("cl100k_base")


@pytest.fixture(scope="module")
def ours(lab, gpt2, cl100k):
    return {"gpt2": gpt2, "cl100k_base": cl100k}


@pytest.fixture(scope="module")
def tiny_stories_tok(lab):
    """Our BPE trained on the first 300 KB of TinyStories, with a few chat-style specials."""
    text = read_text("tinystories", "train_prefix_944k.txt")[:SLICE]
    return lab.train_bpe(text, 1024, [EOT, "<|im_start|>", "<|im_end|>", "<|pad|>"])


def first_difference(ours: list[int], ref: list[int], decode) -> str:
    """Where two id lists part ways, with the text around it (for a TA-style message)."""
    n = next((i for i, (a, b) in enumerate(zip(ours, ref)) if a != b), min(len(ours), len(ref)))
    ctx = slice(max(n - 3, 0), n + 4)
    return (f"first difference at token {n} of {len(ref)} (ours {len(ours)} tokens): ours {ours[ctx]} vs "
            f"tiktoken {ref[ctx]}; text there ~ {decode(ref[ctx])!r}")


# ============================================================================ given helpers
@pytest.mark.given
def test_byte_to_unicode_is_gpt2s(lab):
    m = lab.bytes_to_unicode()
    assert sorted(m) == list(range(256)) and len(set(m.values())) == 256
    assert m[ord(" ")] == "Ġ" and m[ord("\n")] == "Ċ" and m[ord("A")] == "A"
    enc = json.loads(dataset_path("gpt2-bpe", "encoder.json").read_text(encoding="utf-8"))
    assert [enc[c] for c in m.values()] == list(range(256)), "GPT-2 gives the 256 byte tokens ids 0..255 in this order"
    assert lab.token_from_str(lab.token_to_str(bytes(range(256)))) == bytes(range(256))


@pytest.mark.given
def test_merge_pair_is_leftmost_non_overlapping(lab):
    assert lab.merge_pair([1, 1, 1], (1, 1), 9) == [9, 1]
    assert lab.merge_pair([1, 2, 1, 2, 3], (1, 2), 9) == [9, 9, 3]
    assert lab.merge_pair([2, 1], (1, 2), 9) == [2, 1]


# ============================================================================ TODO 1: pre-tokenize + count
def test_count_words_pretokenizes_with_the_gpt2_pattern(lab):
    # "\n\nit": \s+(?!\S) takes the first "\n" only, so the second one is its own piece
    counts = lab.count_words("Hello, world! Hello   there\n\nit's 2024")
    assert counts == {b"Hello": 1, b",": 1, b" world": 1, b"!": 1, b" Hello": 1, b"  ": 1, b" there": 1,
                      b"\n": 2, b"it": 1, b"'s": 1, b" 2024": 1}, \
        f"got {dict(counts)}: split with regex.findall(GPT2_PATTERN, text), keep leading spaces, count the UTF-8 bytes"
    counts = lab.count_words("the the the cat")
    assert counts == {b"the": 1, b" the": 2, b" cat": 1}
    assert all(isinstance(k, bytes) for k in lab.count_words("naïve café 😀")), "keys must be UTF-8 bytes, not str"
    assert lab.count_words("😀") == {"😀".encode(): 1}


def test_count_words_cuts_special_tokens_out(lab):
    counts = lab.count_words(f"a cat{EOT}the dog{EOT}{EOT}a", special_tokens=[EOT])
    assert counts == {b"a": 2, b" cat": 1, b"the": 1, b" dog": 1}, (
        f"got {dict(counts)}: cut the text at every special token BEFORE the regex and drop the specials "
        "(otherwise you count pieces like b'<|' and b'|>a' and later merge across document boundaries)")
    # without the special declared, it is ordinary text
    assert b"endoftext" in lab.count_words(f"a{EOT}b")


def test_count_words_takes_documents(lab):
    counts = lab.count_words(["one fish", " two fish", "one"])
    assert counts == {b"one": 2, b" fish": 2, b" two": 1}
    with pytest.raises(TypeError):
        lab.count_words(["fine", 3])


# ============================================================================ TODO 2: the merge loop
def _byte_vocab(lab, n_special: int = 0) -> tuple[dict[int, bytes], dict[int, int]]:
    vocab = {n_special + i: bytes([b]) for i, b in enumerate(lab.bytes_to_unicode())}
    return vocab, {tok[0]: i for i, tok in vocab.items()}


def _run(lab, fn, words: list[bytes], freqs: list[int], n_merges: int):
    vocab, byte_id = _byte_vocab(lab)
    ids = [[byte_id[b] for b in w] for w in words]
    merges = fn(ids, list(freqs), vocab, 256 + n_merges)
    return [(vocab[a], vocab[b]) for a, b in merges], vocab


def test_merge_loop_counts_and_ties(lab):
    merges, _ = _run(lab, lab.learn_merges, [b"ab", b"cd"], [1, 1], 2)
    assert merges == [(b"c", b"d"), (b"a", b"b")], (
        f"got {merges}: on equal counts the lexicographically GREATER pair wins ((b'c', b'd') > (b'a', b'b'))")
    merges, _ = _run(lab, lab.learn_merges, [b"ab", b"cd"], [3, 2], 2)
    assert merges[0] == (b"a", b"b"), "counts are weighted by the word frequencies"
    merges, vocab = _run(lab, lab.learn_merges, [b"aaaa"], [1], 2)
    assert merges == [(b"a", b"a"), (b"aa", b"aa")], (
        f"got {merges}: b'aaaa' has three overlapping (a, a) pairs; merging left to right gives [aa, aa]")
    merges, _ = _run(lab, lab.learn_merges, [b"ab"], [1], 5)
    assert merges == [(b"a", b"b")], "stop when no pair is left, even before max_tokens"


def test_merge_loop_compares_pairs_by_bytes_not_ids(lab):
    # id order and byte order disagree here: b"\x00" has a larger id than b"a" in GPT-2's byte order
    merges, _ = _run(lab, lab.learn_merges, [b"\x00\x00", b"ab"], [1, 1], 1)
    assert merges == [(b"a", b"b")], "break ties on the pair's BYTES (vocab[a], vocab[b]), not on the token ids"


def test_incremental_counts_equal_a_full_recount(lab):
    _run(lab, lab.learn_merges, [b"ab"], [1], 1)  # an unfinished TODO fails here, before hypothesis starts

    @settings(max_examples=80, phases=[Phase.explicit, Phase.generate, Phase.shrink])
    @given(st.lists(st.tuples(st.text(alphabet="abc d", min_size=1, max_size=9), st.integers(1, 6)),
                    min_size=1, max_size=25), st.integers(1, 30))
    def same_merges(corpus, n_merges):
        words = [w.encode() for w, _ in corpus]
        freqs = [f for _, f in corpus]
        got, got_vocab = _run(lab, lab.learn_merges, words, freqs, n_merges)
        want, want_vocab = _run(lab, lab.learn_merges_naive, words, freqs, n_merges)
        assert got == want, (
            f"incremental merges {got} differ from a full recount {want}: after a merge, subtract the old word's "
            "pairs and add the new word's pairs (weighted by freq) for EVERY word holding the pair")
        assert got_vocab == want_vocab

    same_merges()


def test_train_matches_naive_on_real_text(lab):
    text = read_text("tinystories", "train_prefix_944k.txt")[:20_000]
    fast = lab.train_bpe(text, 400, [EOT])
    slow = lab.train_bpe(text, 400, [EOT], method="naive")
    assert fast.merges == slow.merges and fast.vocab == slow.vocab


def _cs336_reference(lab):
    merges = []
    for line in dataset_path("cs336-bpe-fixtures", "train-bpe-reference-merges.txt").read_text(
            encoding="utf-8").splitlines():
        if line:
            a, b = line.split(" ")
            merges.append((lab.token_from_str(a), lab.token_from_str(b)))
    ref = json.loads(dataset_path("cs336-bpe-fixtures", "train-bpe-reference-vocab.json").read_text(encoding="utf-8"))
    vocab = {i: s.encode() if s == EOT else lab.token_from_str(s) for s, i in ref.items()}
    return merges, vocab


def test_train_reproduces_cs336_reference_under_1_5_s(lab):
    text = read_text("cs336-bpe-fixtures", "corpus.en")
    wall, cpu = time.perf_counter(), time.process_time()
    tok = lab.train_bpe(text, 500, [EOT])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    ref_merges, ref_vocab = _cs336_reference(lab)
    if tok.merges != ref_merges:
        i = next((i for i, (a, b) in enumerate(zip(tok.merges, ref_merges)) if a != b), len(ref_merges))
        pytest.fail(f"merge {i} differs: ours {tok.merges[i:i + 3]} vs reference {ref_merges[i:i + 3]} "
                    f"({len(tok.merges)} vs {len(ref_merges)} merges). Check the tie-break (greater byte pair), "
                    "that specials are cut out, and the incremental count updates")
    assert tok.vocab == ref_vocab, "same merges but different ids: specials first, then the 256 bytes, then merges"
    # CS336's bar is 1.5 s wall on an idle machine. This machine's cores are shared, so we hold the
    # bar on CPU time (what our process spent), which other processes' load does not inflate.
    assert cpu < 1.5, (f"training took {cpu:.2f} s CPU ({wall:.2f} s wall), over CS336's 1.5 s: recounting every "
                       "pair after each merge is O(corpus) per merge; update only the words that hold the pair")


def test_train_on_documents_never_merges_across_them(lab):
    docs = ["ab ab", "ab", " cd"]
    a = lab.train_bpe(docs, 260)
    b = lab.train_bpe(EOT.join(docs), 261, [EOT])
    assert a.merges == b.merges, "documents of an iterable are separate texts, like text cut at a special"
    assert a.vocab_size == 260 and b.vocab_size == 261 and b.special_tokens == {EOT: 0}


# ============================================================================ TODO 3-4: encode == tiktoken
@pytest.mark.parametrize("corpus", list(CORPORA))
@pytest.mark.parametrize("encoding", ["gpt2", "cl100k_base"])
def test_encode_equals_tiktoken(ours, tiktoken_encodings, corpora, encoding, corpus):
    text = corpora[corpus][:SLICE]
    got = ours[encoding].encode_ordinary(text)
    want = tiktoken_encodings[encoding].encode_ordinary(text)
    assert got == want, (f"{encoding} on {corpus}: " + first_difference(got, want, tiktoken_encodings[encoding].decode)
                         + ". Apply the LOWEST-rank merge first, and every piece of the regex separately")


@pytest.mark.parametrize("encoding", ["gpt2", "cl100k_base"])
def test_encode_equals_tiktoken_on_adversarial_unicode(lab, ours, tiktoken_encodings, encoding):
    for text in lab.ADVERSARIAL_TEXTS:
        got = ours[encoding].encode_ordinary(text)
        want = tiktoken_encodings[encoding].encode_ordinary(text)
        assert got == want, f"{encoding} on {text!r}: " + first_difference(got, want, tiktoken_encodings[encoding].decode)
        assert ours[encoding].decode(got) == text


@pytest.mark.slow
@pytest.mark.parametrize("corpus", list(CORPORA))
@pytest.mark.parametrize("encoding", ["gpt2", "cl100k_base"])
def test_encode_equals_tiktoken_full_corpus(ours, tiktoken_encodings, corpora, encoding, corpus):
    got = ours[encoding].encode_ordinary(corpora[corpus])
    want = tiktoken_encodings[encoding].encode_ordinary(corpora[corpus])
    assert got == want, first_difference(got, want, tiktoken_encodings[encoding].decode)


def test_encode_piece_applies_merges_by_rank(lab):
    # merges: (b, c) rank 0, (a, b) rank 1, (a, bc) rank 2 -> "abc" must become [abc] via bc first
    vocab, _ = _byte_vocab(lab)
    n = max(vocab) + 1
    vocab |= {n: b"bc", n + 1: b"ab", n + 2: b"abc"}
    tok = lab.BPETokenizer(vocab, [(b"b", b"c"), (b"a", b"b"), (b"a", b"bc")])
    assert tok.encode("abc") == [n + 2], "merge the pair with the LOWEST rank first: (b, c), then (a, bc)"
    assert tok.encode("abab") == [n + 1, n + 1]
    assert tok.encode("xyz") == [tok.token_to_id(c) for c in "xyz"]


def test_encode_caches_pieces(gpt2):
    gpt2.encode_ordinary("hello world, hello cache")
    assert gpt2._cache.get(" cache") == gpt2.encode_ordinary(" cache"), \
        "store each piece's ids in self._cache (keyed by the piece string) so repeated words cost one lookup"


def test_batch_and_roundtrip(gpt2, cl100k, tiny_stories_tok, corpora):
    for tok in (gpt2, cl100k, tiny_stories_tok):
        for name, text in corpora.items():
            text = text[:50_000]
            assert tok.decode(tok.encode_ordinary(text)) == text, f"round trip failed on {name}"
    texts = ["a b", "", "c<|endoftext|>"]
    assert gpt2.encode_batch(texts, allowed_special="all") == [gpt2.encode(t, allowed_special="all") for t in texts]
    assert gpt2.encode("") == []


# ============================================================================ special tokens
def test_specials_equal_tiktoken(ours, tiktoken_encodings):
    text = f"Hello{EOT}world <|fim_prefix|>x{EOT}{EOT} <|endofprompt|>"
    for name in ("gpt2", "cl100k_base"):
        got = ours[name].encode(text, allowed_special="all")
        assert got == tiktoken_encodings[name].encode(text, allowed_special="all"), name
        assert got.count(ours[name].eot_token) == 3
        plain = ours[name].encode(text, disallowed_special=())
        assert plain == tiktoken_encodings[name].encode(text, disallowed_special=())
        assert not set(plain) & set(ours[name].special_tokens.values()), "specials must not come out of plain text"


def test_specials_are_never_split_or_produced_unless_allowed(tiny_stories_tok):
    tok = tiny_stories_tok
    eot, im_start = tok.special_tokens[EOT], tok.special_tokens["<|im_start|>"]
    text = f"<|im_start|>user\nOnce upon a time{EOT}The end.<|im_end|>"
    with pytest.raises(ValueError, match="allowed_special"):
        tok.encode(text)  # default: a special in the text is an error, not a silent token
    ids = tok.encode(text, allowed_special="all")
    assert ids[0] == im_start and ids.count(eot) == 1, "each special is exactly one id when allowed"
    assert tok.decode(ids) == text
    only_eot = tok.encode(f"a{EOT}b", allowed_special={EOT})
    assert only_eot == tok.encode("a") + [eot] + tok.encode("b")
    with pytest.raises(ValueError, match=re.escape("'<|im_start|>'")):
        tok.encode(text, allowed_special={EOT})
    plain = tok.encode_ordinary(text)
    assert not set(plain) & set(tok.special_tokens.values()), "encode_ordinary treats specials as plain text"
    assert tok.decode(plain) == text
    for i, b in tok.vocab.items():
        if i not in tok.special_tokens.values():
            assert b"<|" not in b and b"|>" not in b, f"token {i} {b!r} was learned from a special: cut them out first"


def test_overlapping_specials_prefer_the_longest(lab):
    text = read_text("cs336-bpe-fixtures", "tinystories_sample.txt")[:2000]
    double = EOT + EOT
    tok = lab.train_bpe(text, 300, [EOT, double])
    ids = tok.encode(f"a{double}b{EOT}", allowed_special="all")
    assert ids.count(tok.special_tokens[double]) == 1 and ids.count(tok.special_tokens[EOT]) == 1
    assert tok.decode(ids) == f"a{double}b{EOT}"


# ============================================================================ TODO 5: decode
def test_decode_replaces_broken_utf8(gpt2, tiktoken_encodings):
    ids = gpt2.encode("😀")
    assert len(ids) > 1
    assert gpt2.decode(ids[:1]) == "\ufffd", "a cut multi-byte character decodes to U+FFFD (errors='replace')"
    assert gpt2.decode_bytes(ids[:1]) == "😀".encode()[: len(gpt2.decode_bytes(ids[:1]))]
    ids = gpt2.encode("naïve 中文 " + EOT, allowed_special="all")
    assert gpt2.decode(ids) == tiktoken_encodings["gpt2"].decode(ids) == "naïve 中文 " + EOT


def test_decode_rejects_bad_ids(gpt2, cl100k):
    for bad in ([50257], [-1], [0, 10**9]):
        with pytest.raises(ValueError, match="not in this vocabulary"):
            gpt2.decode(bad)
    with pytest.raises(ValueError, match="gaps"):
        cl100k.decode([100261])  # cl100k_base leaves 100261..100275 unused
    with pytest.raises(TypeError):
        gpt2.decode([1.5])
    with pytest.raises(TypeError):
        gpt2.decode("abc")
    import numpy as np

    assert gpt2.decode(np.array([15496, 995])) == "Hello world"


# ============================================================================ TODO 6-7: files
def test_save_writes_gpt2s_format(gpt2, tmp_path):
    gpt2.save(tmp_path)
    ours = json.loads((tmp_path / "encoder.json").read_text(encoding="utf-8"))
    theirs = json.loads(dataset_path("gpt2-bpe", "encoder.json").read_text(encoding="utf-8"))
    assert ours == theirs, "encoder.json: {token_to_str(bytes): id} for every token, plus the specials' text"
    ours_lines = (tmp_path / "vocab.bpe").read_text(encoding="utf-8").splitlines()
    theirs_lines = dataset_path("gpt2-bpe", "vocab.bpe").read_text(encoding="utf-8").splitlines()
    assert ours_lines[0].startswith("#version"), "vocab.bpe starts with a '#version: 0.2' line"
    assert [x for x in ours_lines[1:] if x] == [x for x in theirs_lines[1:] if x], \
        "vocab.bpe: one 'left right' line per merge in rank order, both sides in byte-to-unicode form"


def test_save_load_roundtrip(lab, tiny_stories_tok, tmp_path):
    tiny_stories_tok.save(tmp_path / "tok")
    back = lab.BPETokenizer.load(tmp_path / "tok")
    assert back.vocab == tiny_stories_tok.vocab and back.merges == tiny_stories_tok.merges
    assert back.special_tokens == tiny_stories_tok.special_tokens and back.pattern == tiny_stories_tok.pattern
    text = read_text("tinystories", "valid_prefix_794k.txt")[:20_000] + EOT
    assert back.encode(text, allowed_special="all") == tiny_stories_tok.encode(text, allowed_special="all")


def test_hf_reads_our_files(tiny_stories_tok, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tiny_stories_tok.save(tmp_path)
    hf = Tokenizer(models.BPE.from_file(vocab=str(tmp_path / "encoder.json"), merges=str(tmp_path / "vocab.bpe")))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    text = read_text("tinystories", "valid_prefix_794k.txt")[:30_000]
    assert hf.encode(text).ids == tiny_stories_tok.encode(text), "Hugging Face's GPT-2 file reader disagrees"


def test_from_gpt2_files_infers_the_special(gpt2):
    assert gpt2.special_tokens == {EOT: 50256} and gpt2.vocab_size == 50257 and len(gpt2.merges) == 50000
    assert gpt2.token_to_id(" the") == 262 and gpt2.token_to_id(EOT) == 50256


@pytest.mark.given
def test_from_tiktoken_rebuilds_cl100k(cl100k):
    assert cl100k.vocab_size == 100277 and len(cl100k.merges) == 100000
    assert cl100k.special_tokens["<|endofprompt|>"] == 100276


# ============================================================================ Hugging Face export
def test_hf_export_equals_ours_on_held_out_tinystories(tiny_stories_tok, tmp_path):
    from transformers import AutoTokenizer

    hf = tiny_stories_tok.to_hf_tokenizer(eos_token=EOT, pad_token="<|pad|>")
    held_out = read_text("tinystories", "valid_prefix_794k.txt")[:100_000]
    assert hf.encode(held_out, add_special_tokens=False) == tiny_stories_tok.encode(held_out)
    chat = f"<|im_start|>user\nTell me a story.<|im_end|>\n<|im_start|>assistant\nOnce upon a time{EOT}"
    assert hf.encode(chat, add_special_tokens=False) == tiny_stories_tok.encode(chat, allowed_special="all")
    assert hf.decode(hf.encode(chat, add_special_tokens=False)) == chat
    assert hf.eos_token_id == tiny_stories_tok.special_tokens[EOT] and len(hf) == tiny_stories_tok.vocab_size
    hf.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again.encode(held_out[:20_000], add_special_tokens=False) == tiny_stories_tok.encode(held_out[:20_000])


# ============================================================================ validation (given)
@pytest.mark.given
def test_train_rejects_bad_input(lab):
    with pytest.raises(TypeError):
        lab.train_bpe(123, 300)
    with pytest.raises(TypeError):
        lab.train_bpe(b"bytes", 300)
    with pytest.raises(TypeError):
        lab.train_bpe("text", 300.0)
    with pytest.raises(ValueError, match="256"):
        lab.train_bpe("text", 256, [EOT])
    with pytest.raises(TypeError, match="wrap"):
        lab.train_bpe("text", 300, EOT)
    with pytest.raises(ValueError, match="unique"):
        lab.train_bpe("text", 300, [EOT, EOT])
    with pytest.raises(ValueError, match="method"):
        lab.train_bpe("text", 300, method="fast")


@pytest.mark.given
def test_constructor_and_loaders_reject_bad_input(lab, tmp_path):
    vocab = {i: bytes([i]) for i in range(256)}
    with pytest.raises(ValueError, match="single-byte"):
        lab.BPETokenizer({i: bytes([i]) for i in range(255)}, [])
    with pytest.raises(ValueError, match="not in vocab"):
        lab.BPETokenizer(vocab, [(b"a", b"b")])
    with pytest.raises(ValueError, match="already used"):
        lab.BPETokenizer(vocab, [], {EOT: 5})
    with pytest.raises(ValueError, match="same bytes"):
        lab.BPETokenizer({**vocab, 300: b"a"}, [])
    tok = lab.BPETokenizer(vocab, [], {EOT: 256})
    with pytest.raises(TypeError):
        tok.encode(b"bytes")
    with pytest.raises(ValueError, match="not special tokens"):
        tok.encode("x", allowed_special={"<|nope|>"})
    with pytest.raises(ValueError, match="not a single token"):
        tok.token_to_id("ab")
    assert tok.vocab_size == 257 and tok.token_to_id(EOT) == 256 and tok.token_to_id("a") == 97
    with pytest.raises(ValueError, match="neither a known encoding"):
        lab.BPETokenizer.from_tiktoken("o300k_imaginary")
    with pytest.raises(FileNotFoundError):
        lab.BPETokenizer.from_gpt2_files(tmp_path / "encoder.json", tmp_path / "vocab.bpe")
    with pytest.raises(ValueError, match="alphabet"):
        lab.token_from_str("a b")


def test_lone_surrogate_is_a_clear_error(gpt2):
    with pytest.raises(ValueError, match="surrogate"):
        gpt2.encode("abc \ud800 def")


def test_random_unicode_roundtrips_and_matches_tiktoken(ours, tiktoken_encodings):
    rng = random.Random(0)
    pool = "aZ09 \n\t\r'’é中😀\u0301\u200d-_.,!?ßΩж\u3000"
    for _ in range(200):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(0, 40)))
        for name in ("gpt2", "cl100k_base"):
            got = ours[name].encode_ordinary(text)
            assert got == tiktoken_encodings[name].encode_ordinary(text), f"{name} on {text!r}"
            assert ours[name].decode(got) == text

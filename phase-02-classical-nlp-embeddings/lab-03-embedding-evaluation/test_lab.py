"""Grader for lab 2.3: every number is checked against gensim's KeyedVectors on the same vectors."""
from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest
from gensim.models import KeyedVectors
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from labkit import dataset_path

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def real_vocab(lab) -> list[str]:
    """A real frequency-sorted vocabulary: text8 words with count >= 3 in its first 300k words,
    plus every word of the three evaluation sets (lower-cased), plus a few extra casings so the
    case-insensitive logic has collisions to resolve."""
    counts = Counter(lab.load_text8_words(300_000))
    words = [w for w, c in counts.most_common() if c >= 3]
    seen = set(words)
    extra = []
    for line in dataset_path("word-similarity", "questions-words.txt").read_text(encoding="utf-8").splitlines():
        if not line.startswith(":"):
            extra += [w.lower() for w in line.split()]
    for name in ("wordsim353.tsv", "simlex999.txt"):
        for line in dataset_path("word-similarity", name).read_text(encoding="utf-8").splitlines():
            if not line.startswith("#"):
                extra += [w.lower() for w in line.split("\t")[:2]]
    for w in extra:
        if w not in seen:
            seen.add(w)
            words.append(w)
    # a later upper-case variant (must NOT win) and an earlier one (must win)
    words += ["Tiger", "KING", "Paris"]
    words.insert(5, "LOVE")
    return words


def planted_vectors(words: list[str], questions, noise: float, seed: int = 0) -> np.ndarray:
    """Random vectors where, per analogy section, v(b) = v(a) + offset + noise: analogies are
    solvable but not always, so accuracies are strictly between 0 and 1."""
    rng = np.random.default_rng(seed)
    index = {w: i for i, w in enumerate(words)}
    vec = rng.standard_normal((len(words), 50)).astype(np.float32)
    offsets: dict[str, np.ndarray] = {}
    done = set()
    for section, a, b, c, d in questions:
        off = offsets.setdefault(section, rng.standard_normal(50).astype(np.float32))
        for x, y in ((a.lower(), b.lower()), (c.lower(), d.lower())):
            if y not in done and x in index and y in index:
                vec[index[y]] = vec[index[x]] + off + noise * rng.standard_normal(50)
                done.add(y)
    return vec


@pytest.fixture(scope="module")
def questions(lab):
    return lab.read_analogies(dataset_path("word-similarity", "questions-words.txt"))


@pytest.fixture(scope="module")
def question_file(tmp_path_factory, questions):
    """Every 12th question (all 14 sections kept) as a file gensim can read."""
    path = tmp_path_factory.mktemp("analogies") / "questions.txt"
    lines, last = [], None
    for k, (section, a, b, c, d) in enumerate(questions):
        if section != last:
            lines.append(f": {section}")
            last = section
        if k % 12 == 0:
            lines.append(f"{a} {b} {c} {d}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def planted(lab, real_vocab, questions):
    vecs = planted_vectors(real_vocab, questions, noise=1.2)
    wv = lab.WordVectors(real_vocab, vecs)
    kv = KeyedVectors(vecs.shape[1], dtype=np.float32)
    kv.add_vectors(real_vocab, vecs)
    return wv, kv


def test_known_vocab_first_casing_wins(lab):
    ok = lab.known_vocab(["the", "Paris", "paris", "PARIS", "king"], restrict_vocab=4)
    assert ok == {"THE": 0, "PARIS": 1}, (
        "with case_insensitive the keys are upper-cased, only the first restrict_vocab words count, "
        f"and the FIRST casing (most frequent) keeps its index; got {ok}")
    ok = lab.known_vocab(["the", "Paris", "paris"], restrict_vocab=10, case_insensitive=False)
    assert ok == {"the": 0, "Paris": 1, "paris": 2}, "case_insensitive=False must keep the words as they are"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.floats(-5, 5, allow_nan=False, allow_infinity=False)),
                min_size=3, max_size=40))
def test_spearman_matches_scipy_with_ties(lab, xy):
    x = [float(a) for a, _ in xy]  # few distinct values -> many ties
    y = [round(b, 1) for _, b in xy]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = stats.spearmanr(x, y).statistic
    if np.isnan(want):  # a constant input: scipy warns and returns NaN, we refuse
        with pytest.raises(ValueError, match="constant"):
            lab.spearman(x, y)
        return
    got = lab.spearman(x, y)
    assert got == pytest.approx(want, abs=1e-12), (
        "Spearman = Pearson of the ranks; tied values must share the AVERAGE of their ranks")


@pytest.mark.given
def test_spearman_refuses_nan_and_constant_input(lab):
    with pytest.raises(ValueError, match="NaN"):
        lab.spearman([1.0, float("nan"), 3.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="constant"):
        lab.spearman([0.0, 0.0, 0.0], [1.0, 2.0, 3.0])


@pytest.mark.parametrize("name", ["wordsim353.tsv", "simlex999.txt"])
@pytest.mark.parametrize("restrict_vocab,case_insensitive", [(300_000, True), (3000, True), (300_000, False)])
def test_word_pairs_equal_gensim(lab, planted, name, restrict_vocab, case_insensitive):
    wv, kv = planted
    path = dataset_path("word-similarity", name)
    ours = lab.evaluate_word_pairs(wv, path, restrict_vocab=restrict_vocab, case_insensitive=case_insensitive)
    pearson, spear, oov = kv.evaluate_word_pairs(str(path), restrict_vocab=restrict_vocab,
                                                 case_insensitive=case_insensitive)
    assert ours.spearman == pytest.approx(spear.statistic, abs=1e-6), (
        "Spearman differs from gensim's: are you skipping exactly the pairs with an unknown word, "
        "and using the cosine of the raw vectors?")
    assert ours.pearson == pytest.approx(pearson.statistic, abs=1e-6)
    assert ours.oov_ratio == pytest.approx(oov, abs=1e-9), (
        f"OOV% {ours.oov_ratio:.3f} vs gensim {oov:.3f}: only the first restrict_vocab words are known, "
        "and matching is on upper-cased words when case_insensitive=True")
    assert ours.n_oov == len(ours.oov_pairs)


def test_word_pairs_all_oov_is_an_error(lab, planted):
    wv, _ = planted
    with pytest.raises(ValueError, match="pairs"):
        lab.evaluate_word_pairs(wv, [("zzqx", "qqzx", 1.0), ("xxq", "tiger", 2.0)])


@pytest.mark.parametrize("restrict_vocab", [300_000, 2500])
def test_analogy_3cosadd_equals_gensim(lab, planted, question_file, restrict_vocab):
    wv, kv = planted
    ours = lab.evaluate_analogies(wv, question_file, restrict_vocab=restrict_vocab)
    score, sections = kv.evaluate_word_analogies(str(question_file), restrict_vocab=restrict_vocab)
    total = sections[-1]
    assert 0.05 < score < 0.95, "the planted vectors should make the test informative"
    assert ours.n_correct == len(total["correct"]), (
        f"{ours.n_correct} correct vs gensim {len(total['correct'])}: query = unit(b) - unit(a) + unit(c), "
        "candidates limited to the first restrict_vocab words, and the three question words can never be the answer")
    assert ours.n_answered == len(total["correct"]) + len(total["incorrect"]), (
        "questions with ANY word outside the known vocabulary are skipped (counted as OOV), not marked wrong")
    assert ours.accuracy == pytest.approx(score, abs=1e-12)
    for sec in sections[:-1]:
        n = len(sec["correct"]) + len(sec["incorrect"])
        if n:
            assert ours.sections[sec["section"]] == (len(sec["correct"]), n), f"section {sec['section']} differs"


def test_analogy_3cosmul_equals_gensim(lab, planted, questions):
    wv, kv = planted
    subset = [q for q in questions[::40] if all(w.lower() in wv for w in q[1:])]
    subset = [(s, a.lower(), b.lower(), c.lower(), d.lower()) for s, a, b, c, d in subset]
    want = 0
    for _, a, b, c, d in subset:
        best = kv.most_similar_cosmul(positive=[b, c], negative=[a], topn=1)[0][0]
        want += best == d
    ours = lab.evaluate_analogies(wv, subset, method="3cosmul")
    assert ours.n_answered == len(subset)
    assert ours.n_correct == want, (
        f"3CosMul got {ours.n_correct} right, gensim most_similar_cosmul {want}: shift cosines with "
        "(1 + cos) / 2 and divide by (s_a + 1e-6)")
    add = lab.evaluate_analogies(wv, subset, method="3cosadd")
    assert add.n_correct != ours.n_correct or add.accuracy > 0, "3CosAdd should also answer some questions"


def test_analogy_case_insensitive_uses_first_casing(lab):
    words = ["paris", "france", "rome", "italy", "Italy", "berlin", "germany"]
    rng = np.random.default_rng(3)
    v = rng.standard_normal((len(words), 8)).astype(np.float32)
    off = rng.standard_normal(8).astype(np.float32)
    for cap, country in ((0, 1), (2, 3), (5, 6)):
        v[country] = v[cap] + off
    v[4] = v[3] + 0.01  # "Italy" sits right next to "italy" but is a later casing
    wv = lab.WordVectors(words, v)
    res = lab.evaluate_analogies(wv, [("capital", "Paris", "France", "Rome", "Italy")])
    assert res.n_correct == 1, "upper-cased matching: 'Italy' in the question means the row of 'italy' (first casing)"
    res = lab.evaluate_analogies(wv, [("capital", "Paris", "France", "Rome", "Italy")], case_insensitive=False)
    assert res.n_oov == 1 and res.n_answered == 0, "case-sensitive: 'Paris' is not in the vocabulary, skip it"


def test_analogy_never_answers_another_casing_of_a_question_word(lab, tmp_path):
    """'Rome' is a later casing of the question word 'rome' and sits right on the query.
    Banning question words by ROW would only ban 'rome' itself and let 'Rome' win."""
    words = ["paris", "france", "rome", "italy", "berlin", "germany", "Rome"]
    rng = np.random.default_rng(5)
    v = rng.standard_normal((len(words), 16)).astype(np.float32)
    off = rng.standard_normal(16).astype(np.float32)
    for cap, country in ((0, 1), (2, 3), (4, 5)):
        v[country] = v[cap] + off + 0.3 * rng.standard_normal(16).astype(np.float32)
    q = v[1] / np.linalg.norm(v[1]) - v[0] / np.linalg.norm(v[0]) + v[2] / np.linalg.norm(v[2])
    v[6] = q  # 'Rome' IS the 3CosAdd query direction: the best-scoring candidate of all
    wv = lab.WordVectors(words, v)
    kv = KeyedVectors(16, dtype=np.float32)
    kv.add_vectors(words, v)
    question = [("capital", "paris", "france", "rome", "italy")]
    for method in ("3cosadd", "3cosmul"):
        res = lab.evaluate_analogies(wv, question, method=method)
        assert res.n_correct == 1, (
            f"{method}: the answer to paris : france :: rome : ? came out wrong. A candidate that is "
            "another casing of a question word ('Rome' for 'rome') must be excluded too: exclude by "
            "case-folded word (its key), not by row number")
    path = tmp_path / "q.txt"
    path.write_text(": capital\nparis france rome italy\n", encoding="utf-8")
    score, _ = kv.evaluate_word_analogies(str(path))
    assert score == 1.0  # gensim agrees: it skips every casing of the question words


def test_zero_vector_cosine_is_zero_like_gensim(lab, tmp_path):
    words = ["the", "cat", "dog", "pad", "fish"]
    rng = np.random.default_rng(1)
    v = rng.standard_normal((5, 8)).astype(np.float32)
    v[3] = 0.0  # an all-zero row (a padding or never-updated word)
    wv = lab.WordVectors(words, v)
    kv = KeyedVectors(8, dtype=np.float32)
    kv.add_vectors(words, v)
    pairs = [("cat", "dog", 7.0), ("cat", "pad", 1.0), ("dog", "fish", 5.0), ("pad", "the", 2.0),
             ("the", "fish", 3.0)]
    ours = lab.evaluate_word_pairs(wv, pairs)
    assert np.isfinite(ours.spearman) and np.isfinite(ours.pearson), (
        "a pair with an all-zero vector gave NaN: its cosine is 0.0 (use cosine(), which does not divide by 0)")
    path = tmp_path / "pairs.tsv"
    path.write_text("".join(f"{a}\t{b}\t{s}\n" for a, b, s in pairs), encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pearson, spear, _ = kv.evaluate_word_pairs(str(path))
    assert ours.spearman == pytest.approx(spear.statistic, abs=1e-9)
    assert ours.pearson == pytest.approx(pearson.statistic, abs=1e-6)
    assert wv.similarity("cat", "pad") == 0.0


@pytest.mark.given
def test_zero_and_nan_vectors_are_refused_where_meaningless(lab):
    wv = lab.WordVectors(["a", "b", "pad"], np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="zero"):
        wv.most_similar("pad")
    with pytest.raises(ValueError, match="zero"):
        wv.most_similar(np.zeros(2))
    with pytest.raises(ValueError, match="NaN"):
        wv.most_similar(np.array([np.nan, 1.0]))
    with pytest.raises(ValueError, match="NaN"):
        lab.WordVectors(["a", "b"], np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="NaN"):
        lab.cosine(np.array([np.nan, 1.0]), np.array([1.0, 1.0]))
    same = lab.WordVectors(["a", "b", "c"], np.ones((3, 2)))
    with pytest.raises(ValueError, match="constant"):  # every cosine is 1: nothing to rank
        lab.evaluate_word_pairs(same, [("a", "b", 1.0), ("b", "c", 2.0), ("a", "c", 3.0)])


@pytest.mark.given
def test_numpy_integers_are_accepted(lab):
    assert lab.known_vocab(["a", "b", "c"], restrict_vocab=np.int64(2)) == {"A": 0, "B": 1}
    wv = lab.WordVectors(["a", "b", "c"], np.eye(3))
    assert len(wv.most_similar("a", topn=np.int64(2))) == 2
    assert isinstance(lab.anisotropy(np.eye(3), n_pairs=np.int32(10)), float)


def test_most_similar_equals_gensim(lab, planted):
    wv, kv = planted
    for word in ("king", "paris", "computer", "seven"):
        ours = wv.most_similar(word, topn=5)
        theirs = kv.most_similar(word, topn=5)
        assert [w for w, _ in ours] == [w for w, _ in theirs], (
            f"neighbours of {word!r} differ from gensim: cosine (normalise both sides) and never return the query")
        assert np.allclose([s for _, s in ours], [s for _, s in theirs], atol=1e-5)
    with pytest.raises(KeyError, match="vocabulary"):
        wv.most_similar("qwzxv")


def test_anisotropy(lab):
    rng = np.random.default_rng(0)
    iso = rng.standard_normal((2000, 64))
    assert abs(lab.anisotropy(iso)) < 0.01, "isotropic Gaussian vectors have mean cosine ~0"
    shifted = iso + rng.standard_normal(64)  # a common offset as long as a typical vector
    unit = shifted[:300] / np.linalg.norm(shifted[:300], axis=1, keepdims=True)
    g = unit @ unit.T
    exact = (g.sum() - np.trace(g)) / (300 * 299)
    got = lab.anisotropy(shifted[:300], n_pairs=50_000)
    assert got == pytest.approx(exact, abs=0.01), (
        "anisotropy = mean cosine over random pairs of DIFFERENT rows; did you forget to normalise?")
    assert got > 0.3
    assert abs(lab.anisotropy(lab.mean_center(shifted))) < 0.01, "mean-centering removes the common direction"


def test_anisotropy_never_pairs_a_row_with_itself(lab):
    # orthogonal rows: every pair of DIFFERENT rows has cosine exactly 0; a row with itself has 1
    for V in (2, 3, 5):
        got = lab.anisotropy(np.eye(V), n_pairs=5000)
        assert got == pytest.approx(0.0, abs=1e-12), (
            f"{V} orthogonal unit vectors gave mean cosine {got:.3f}, expected 0: some sampled pairs "
            "had i == j (a row compared with itself scores 1). Draw j among the OTHER rows.")


def test_word2vec_format_roundtrip_with_gensim(lab, tmp_path):
    words = ["the", "of", "tiger", "cat"]
    v = np.arange(12, dtype=np.float32).reshape(4, 3) / 7
    path = lab.WordVectors(words, v).save_word2vec_format(tmp_path / "v.txt")
    kv = KeyedVectors.load_word2vec_format(str(path), binary=False)
    assert kv.index_to_key == words
    assert np.allclose(kv.vectors, v, atol=1e-5)
    back = lab.WordVectors.load_word2vec_format(path)
    assert back.words == words and np.allclose(back.vectors, v, atol=1e-5)


def test_bad_input(lab):
    with pytest.raises(ValueError):
        lab.WordVectors(["a", "b"], np.zeros((3, 2)))
    with pytest.raises(ValueError):
        lab.WordVectors(["a", "a"], np.zeros((2, 2)))
    with pytest.raises(ValueError):
        lab.known_vocab(["a"], restrict_vocab=0)
    with pytest.raises(ValueError):
        lab.spearman([1, 2, 3], [1, 2])


@pytest.mark.given
def test_english_prose_words(lab):
    words = lab.english_prose_words(20_000)
    assert len(words) == 20_000 and all(w.isalpha() and w.islower() and w.isascii() for w in words)
    assert "unk" not in words[:5000], "WikiText's <unk> markers are dropped, not kept as a word"
    with pytest.raises(ValueError):
        lab.english_prose_words(0)

"""Grader for lab 2.2: co-occurrences vs brute force, GloVe loss vs hand / autograd, AdaGrad step,
fastText n-grams and hashing vs the official package, OOV behaviour, GloVe vs a random baseline."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit import load_lab

ev = load_lab("2.3")


def brute_force_cooc(ids, V, window):
    X = np.zeros((V, V))
    for i in range(len(ids)):
        for j in range(len(ids)):
            d = abs(i - j)
            if 1 <= d <= window:
                X[ids[i], ids[j]] += 1.0 / d
    return X


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 7), min_size=0, max_size=40), st.integers(1, 6))
def test_cooccurrence_equals_brute_force(lab, ids, window):
    X = lab.cooccurrence_matrix(np.array(ids, dtype=np.int64), 8, window)
    assert X.shape == (8, 8)
    assert np.allclose(X.toarray(), brute_force_cooc(ids, 8, window)), (
        "X[i, j] adds 1/d for every pair at distance 1 <= d <= window, in BOTH directions")


def test_cooccurrence_rejects_bad_ids(lab):
    with pytest.raises(ValueError):
        lab.cooccurrence_matrix(np.array([0, 5]), 3)


def test_glove_weight(lab):
    f = lab.glove_weight(np.array([0.5, 1.0, 50.0, 100.0, 1000.0]))
    want = [(0.005) ** 0.75, 0.01 ** 0.75, 0.5 ** 0.75, 1.0, 1.0]
    assert np.allclose(f, want), "f(x) = (x/x_max)^0.75 below x_max = 100 and exactly 1 above"


def test_glove_loss_hand_checked(lab):
    # d = 1, V = 2. Cells: (0, 1) with x = e, (1, 0) with x = 1, (1, 1) with x = 100.
    W, Wt = np.array([[1.0], [2.0]]), np.array([[0.5], [1.0]])
    b, bt = np.array([0.0, 1.0]), np.array([1.0, 0.0])
    rows, cols, x = np.array([0, 1, 1]), np.array([1, 0, 1]), np.array([math.e, 1.0, 100.0])
    loss, g = lab.glove_loss_and_grads(W, Wt, b, bt, rows, cols, x)
    # cell (0,1): 1*1 + 0 + 0 - log e = 0          -> contributes 0
    # cell (1,0): 2*0.5 + 1 + 1 - log 1 = 3, f = 0.01^0.75 = 0.0316228 -> 0.2846050
    # cell (1,1): 2*1 + 1 + 0 - log 100 = -1.6051702, f = 1            -> 2.5765712
    f1 = 0.01 ** 0.75
    assert loss == pytest.approx(9 * f1 + (3 - math.log(100)) ** 2, rel=1e-9), (
        "J = sum f(x) (w_i.w~_j + b_i + b~_j - log x)^2  (no 1/2, no mean)")
    g10, g11 = 2 * f1 * 3, 2 * (3 - math.log(100))
    assert g["b"] == pytest.approx([0.0, g10 + g11]), "dJ/db_i = sum over row i's cells of 2 f(x) diff"
    assert g["b_tilde"] == pytest.approx([g10, g11])
    assert g["W"][:, 0] == pytest.approx([0.0, g10 * 0.5 + g11 * 1.0]), "dJ/dw_i = sum 2 f diff w~_j (accumulate!)"
    assert g["W_tilde"][:, 0] == pytest.approx([g10 * 2.0, g11 * 2.0])
    with pytest.raises(ValueError, match="log"):
        lab.glove_loss_and_grads(W, Wt, b, bt, rows, cols, np.array([1.0, 0.0, 2.0]))


def test_glove_grads_equal_autograd(lab):
    rng = np.random.default_rng(0)
    V, d, N = 9, 4, 30
    params = [rng.standard_normal((V, d)), rng.standard_normal((V, d)), rng.standard_normal(V), rng.standard_normal(V)]
    rows, cols = rng.integers(0, V, N), rng.integers(0, V, N)  # repeated rows on purpose
    x = rng.uniform(0.2, 300, N)
    loss, g = lab.glove_loss_and_grads(*params, rows, cols, x)
    t = [torch.tensor(p, requires_grad=True) for p in params]
    diff = (t[0][rows] * t[1][cols]).sum(1) + t[2][rows] + t[3][cols] - torch.log(torch.tensor(x))
    f = torch.clamp(torch.tensor(x) / 100, max=1) ** 0.75
    ref = (f * diff ** 2).sum()
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-10)
    for name, tp in zip(("W", "W_tilde", "b", "b_tilde"), t):
        assert np.allclose(g[name], tp.grad.numpy()), f"gradient {name} differs from autograd (np.add.at for repeats?)"


def test_glove_adagrad_step(lab):
    V, d = 6, 3
    model = lab.GloVe(V, d, lr=0.05, seed=1)
    before = {k: getattr(model, k).clone().double().numpy() for k in ("W", "W_tilde", "b", "b_tilde")}
    rows, cols = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])  # distinct rows: no accumulation
    x = torch.tensor([2.0, 150.0, 7.0])
    batch_loss = model.step(rows, cols, x)
    want_loss, g = lab.glove_loss_and_grads(*before.values(), rows.numpy(), cols.numpy(), x.double().numpy())
    assert batch_loss == pytest.approx(want_loss, rel=1e-4)
    for k in before:
        # squared-gradient sums start at 1; AdaGrad adds grad**2 first, then steps lr * grad / sqrt(G)
        want = before[k] - 0.05 * g[k] / np.sqrt(1 + g[k] ** 2)
        assert np.allclose(getattr(model, k).double().numpy(), want, atol=1e-6), (
            f"{k}: first AdaGrad step should be param - lr * grad / sqrt(G) with G = 1 + grad**2")
        assert np.allclose(model.G[k].double().numpy(), 1 + g[k] ** 2, atol=1e-6), "G += grad**2 after the step"
    # two cells in the SAME row: their gradients are summed before the AdaGrad update
    model = lab.GloVe(V, d, lr=0.05, seed=2)
    b0 = {k: getattr(model, k).clone().double().numpy() for k in before}
    rows, cols, x = torch.tensor([0, 0]), torch.tensor([1, 2]), torch.tensor([3.0, 40.0])
    model.step(rows, cols, x)
    _, g = lab.glove_loss_and_grads(*b0.values(), rows.numpy(), cols.numpy(), x.double().numpy())
    assert np.allclose(model.G["b"].double().numpy(), 1 + g["b"] ** 2, atol=1e-6), (
        "cells sharing a row: sum their gradients first, then G += (summed grad)**2")
    assert np.allclose(model.b.double().numpy(), b0["b"] - 0.05 * g["b"] / np.sqrt(1 + g["b"] ** 2), atol=1e-6)


@pytest.fixture(scope="module")
def tiny_fasttext(lab):
    toks = ev.load_text8_words(40_000)
    return lab.train_fasttext(toks, d_model=16, epochs=1, min_count=3)


@pytest.mark.parametrize("word", ["where", "cat", "anarchism", "xq", "naïve", "zzzyzx"])
def test_char_ngrams_equal_fasttext(lab, tiny_fasttext, word):
    subwords, _ = tiny_fasttext.model.get_subwords(word)
    want = list(subwords[1:] if word in tiny_fasttext.index else subwords)  # known words list themselves first
    got = lab.char_ngrams(word, 3, 6)
    assert got == want, (
        f"n-grams of {word!r}: wrap the word as '<word>' and take every substring of length 3..6; "
        f"expected {want}, got {got}")


@pytest.fixture(scope="module")
def fasttext_minn1(lab):
    """fastText with minn=1: its n-gram rule has a special case for one-character n-grams.

    Only fastText's dictionary (``get_subwords``) is compared here, never its weights. On a tiny
    corpus its trainer raised ``RuntimeError: Encountered NaN`` once in a long CI pytest process
    (not reproducible on its own), so the corpus is the same 40,000 words as ``tiny_fasttext`` and a
    NaN from the reference trainer gets one retry on a different slice instead of failing the test.
    """
    try:
        return lab.train_fasttext(ev.load_text8_words(40_000), d_model=8, epochs=1, min_count=2, minn=1, maxn=3)
    except RuntimeError as e:
        if "NaN" not in str(e):
            raise
        words = ev.load_text8_words(80_000)[40_000:]
        return lab.train_fasttext(words, d_model=8, epochs=1, min_count=2, minn=1, maxn=3)


@pytest.mark.parametrize("word", ["the", "a", "of", "xq", "naïve", "z"])
def test_char_ngrams_minn_1_equal_fasttext(lab, fasttext_minn1, word):
    subwords, _ = fasttext_minn1.model.get_subwords(word)
    want = list(subwords[1:] if word in fasttext_minn1.index else subwords)
    got = lab.char_ngrams(word, 1, 3)
    assert got == want, (
        f"minn=1 n-grams of {word!r}: expected {want}, got {got}. fastText never emits the lone "
        "boundary markers '<' and '>' as one-character n-grams")
    assert np.allclose(fasttext_minn1.vector(word), fasttext_minn1.model.get_word_vector(word), atol=1e-6)


def test_fnv1a_hash_known_values(lab):
    # FNV-1a 32-bit reference values; the last one needs fastText's sign extension of bytes >= 0x80
    assert lab.fnv1a_32("") == 2166136261
    assert lab.fnv1a_32("a") == 0xE40C292C, "FNV-1a: XOR the byte first, then multiply by 16777619 (mod 2^32)"
    assert lab.fnv1a_32("foobar") == 0xBF9CF968


@pytest.mark.parametrize("word", ["the", "anarchism", "anarchisms", "computerr", "blorptastic", "naïve"])
def test_subword_vector_equals_fasttext(lab, tiny_fasttext, word):
    got = tiny_fasttext.vector(word)
    want = tiny_fasttext.model.get_word_vector(word)
    assert np.allclose(got, want, atol=1e-6), (
        f"vector({word!r}) must be the MEAN of the input rows of the word (if known) and of every n-gram, "
        "hashed with FNV-1a to nwords + h % bucket (sign-extend bytes >= 0x80 like fastText)")


def test_oov_refused_by_word_level_models(lab, tiny_fasttext):
    wv = ev.WordVectors(["the", "of", "cat"], np.eye(3, dtype=np.float32))
    with pytest.raises(KeyError, match="vocabulary"):
        lab.lookup(wv, "blorptastic")
    vec = lab.lookup(tiny_fasttext, "blorptastic")
    assert vec.shape == (16,) and np.isfinite(vec).all() and np.abs(vec).sum() > 0, (
        "fastText answers an unseen word from its character n-grams")


@pytest.fixture(scope="module")
def text8_cooc(lab):
    """Vocabulary (min_count 5) and window-10 co-occurrences of the first 250k text8 words."""
    toks = ev.load_text8_words(250_000)
    vocab = load_lab("2.1").build_vocab(toks, 5)
    return vocab, lab.cooccurrence_matrix(vocab.encode(toks), len(vocab), 10)


def test_glove_beats_random_baseline(lab, text8_cooc):
    torch.set_num_threads(1)
    vocab, cooc = text8_cooc
    glove, hist = lab.train_glove(cooc, d_model=50, epochs=8, seed=0)
    assert hist[-1] < hist[0], "the GloVe loss should fall over epochs"
    ours = ev.evaluate_word_pairs(ev.WordVectors(vocab.words, glove.vectors()), ev.standard_sets()["wordsim353"])
    rand = ev.evaluate_word_pairs(
        ev.WordVectors(vocab.words, np.random.default_rng(0).standard_normal((len(vocab), 50))),
        ev.standard_sets()["wordsim353"])
    assert ours.spearman > rand.spearman + 0.1, (
        f"GloVe WordSim Spearman {ours.spearman:.3f} vs random {rand.spearman:.3f}: is the target log(X), "
        "the weight f(X), and are W + W~ the returned vectors?")


@pytest.mark.given
def test_glove_refuses_nan_and_out_of_range_input(lab):
    W, Wt, b, bt = np.ones((3, 2)), np.ones((3, 2)), np.zeros(3), np.zeros(3)
    rows, cols = np.array([0, 1]), np.array([1, 2])
    for bad_x in ([1.0, np.nan], [np.inf, 2.0], [1.0, 0.0], [-1.0, 2.0]):
        with pytest.raises(ValueError, match="NaN|log"):
            lab.glove_loss_and_grads(W, Wt, b, bt, rows, cols, np.array(bad_x))
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        lab.glove_loss_and_grads(W, Wt, b, bt, np.array([0, 3]), cols, np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        lab.glove_loss_and_grads(W, Wt, b, bt, rows, np.array([-1, 2]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="NaN"):
        lab.glove_loss_and_grads(np.full((3, 2), np.nan), Wt, b, bt, rows, cols, np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="NaN|finite"):
        lab.glove_weight(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="x_max"):
        lab.glove_weight(np.array([1.0]), x_max=float("nan"))
    model = lab.GloVe(3, 2)
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        model.step(torch.tensor([0, 5]), torch.tensor([1, 2]), torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="NaN"):
        model.step(torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([1.0, float("nan")]))
    cooc = sp.csr_matrix(np.array([[0.0, np.nan], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="NaN"):
        lab.train_glove(cooc, d_model=2, epochs=1)


def brute_force_ppmi(X: np.ndarray, alpha: float) -> np.ndarray:
    total = X.sum()
    p_w = X.sum(1) / total
    col = X.sum(0) ** alpha
    p_c = col / col.sum()
    out = np.zeros_like(X)
    for i in range(X.shape[0]):
        for j in range(X.shape[1]):
            if X[i, j] > 0:
                out[i, j] = max(0.0, math.log((X[i, j] / total) / (p_w[i] * p_c[j])))
    return out


@pytest.mark.parametrize("alpha", [1.0, 0.75])
def test_ppmi_equals_brute_force(lab, alpha):
    rng = np.random.default_rng(0)
    X = rng.poisson(0.7, size=(12, 12)).astype(float) * rng.uniform(0.2, 3.0, size=(12, 12))
    X = X + X.T
    got = lab.ppmi_matrix(sp.csr_matrix(X), cds_alpha=alpha)
    want = brute_force_ppmi(X, alpha)
    assert sp.issparse(got) and got.shape == X.shape
    assert np.allclose(got.toarray(), want, atol=1e-12), (
        f"PPMI (cds alpha {alpha}) differs from max(0, log(P(w,c) / (P(w) P_alpha(c)))): P(w) from ROW sums, "
        "P_alpha(c) from COLUMN sums ** alpha renormalised, zero cells stay 0")
    assert (got.data > 0).all(), "store only the positive entries (eliminate the zeros)"


def test_svd_vectors_equal_numpy_svd(lab):
    M = sp.random(40, 30, density=0.3, random_state=2, format="csr") * 5
    U, S, _ = np.linalg.svd(M.toarray(), full_matrices=False)  # descending singular values
    for p_ in (1.0, 0.5):
        W = lab.svd_vectors(M, d_model=6, eig_power=p_, seed=0).astype(np.float64)
        assert W.shape == (40, 6)
        ref = U[:, :6] * S[:6] ** p_
        assert np.allclose(np.abs(W), np.abs(ref), atol=1e-5), (
            f"eig_power={p_}: columns must be U_k * S_k**eig_power ordered by DECREASING singular value "
            "(scipy's svds returns them in ascending order)")


@pytest.mark.given
def test_ppmi_and_svd_bad_input(lab):
    with pytest.raises(ValueError, match="NaN"):
        lab.ppmi_matrix(sp.csr_matrix(np.array([[1.0, np.nan], [1.0, 0.0]])))
    with pytest.raises(ValueError, match="zeros"):
        lab.ppmi_matrix(sp.csr_matrix((3, 3)))
    with pytest.raises(ValueError, match="cds_alpha"):
        lab.ppmi_matrix(sp.csr_matrix(np.eye(2)), cds_alpha=0.0)
    with pytest.raises(ValueError, match="d_model"):
        lab.svd_vectors(sp.csr_matrix(np.eye(4)), d_model=4)


def test_ppmi_svd_beats_random_baseline(lab, text8_cooc):
    vocab, cooc = text8_cooc
    vecs = lab.svd_vectors(lab.ppmi_matrix(cooc), d_model=50, seed=0)
    sets = ev.standard_sets()
    ours = ev.evaluate_word_pairs(ev.WordVectors(vocab.words, vecs), sets["wordsim353"])
    rand = ev.evaluate_word_pairs(
        ev.WordVectors(vocab.words, np.random.default_rng(0).standard_normal((len(vocab), 50))), sets["wordsim353"])
    assert ours.spearman > rand.spearman + 0.1, (
        f"PPMI + SVD WordSim Spearman {ours.spearman:.3f} vs random {rand.spearman:.3f}: "
        "is the SVD run on the PPMI matrix (not raw counts), and are the rows U * S**0.5?")

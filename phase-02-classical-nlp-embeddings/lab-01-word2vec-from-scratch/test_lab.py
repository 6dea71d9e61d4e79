"""Grader for lab 2.1: SGNS pieces against gensim / autograd / brute force, then quality vs gensim."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gensim.models import KeyedVectors, Word2Vec

from labkit import load_lab

ev = load_lab("2.3")
NUMBERS = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}


@pytest.fixture(scope="module")
def tokens() -> list[str]:
    return ev.load_text8_words(60_000)


def test_build_vocab_matches_gensim(lab, tokens):
    vocab = lab.build_vocab(tokens, min_count=5)
    g = Word2Vec(min_count=5, vector_size=8, workers=1)
    g.build_vocab([tokens])
    assert set(vocab.words) == set(g.wv.index_to_key), "keep exactly the words seen >= min_count times"
    counts = Counter(tokens)
    assert [counts[w] for w in vocab.words] == list(vocab.counts), "counts must line up with words"
    assert list(vocab.counts) == sorted(vocab.counts, reverse=True), "most frequent word first"
    assert all(vocab.index[w] == i for i, w in enumerate(vocab.words))
    assert vocab.words[0] == "the"
    with pytest.raises(ValueError):
        lab.build_vocab(["a", "b"], min_count=3)


def test_keep_probabilities_match_gensim(lab, tokens):
    for sample in (1e-3, 1e-4):
        g = Word2Vec(min_count=5, vector_size=8, workers=1, sample=sample)
        g.build_vocab([tokens])
        words = g.wv.index_to_key
        counts = np.array([g.wv.get_vecattr(w, "count") for w in words])
        # gensim stores round(p_keep * 2^32) per word (and the retained total it uses ignores
        # words below min_count, exactly like a counts array over the kept vocabulary)
        want = np.array([g.wv.get_vecattr(w, "sample_int") for w in words], dtype=np.float64) / 2**32
        got = lab.keep_probabilities(counts, sample)
        assert np.allclose(got, want, atol=1e-6), (
            "keep probability is min(1, (sqrt(f/t) + 1) * t/f) with f = count / total of the KEPT vocabulary")
    assert np.all(lab.keep_probabilities(counts, 0) == 1), "sample=0 switches subsampling off"


def test_skipgram_pairs_window_one_is_all_neighbours(lab):
    ids = np.array([7, 3, 9, 4], dtype=np.int64)
    c, o = lab.skipgram_pairs(ids, 1, np.random.default_rng(0))
    got = sorted(zip(c.tolist(), o.tolist()))
    assert got == sorted([(7, 3), (3, 7), (3, 9), (9, 3), (9, 4), (4, 9)]), (
        "window=1: every word pairs with its left and right neighbour, in both roles")


def test_skipgram_pairs_dynamic_window(lab):
    n, window = 30_000, 5
    ids = np.arange(n, dtype=np.int64)  # ids = positions, so contexts reveal distances
    c, o = lab.skipgram_pairs(ids, window, np.random.default_rng(1))
    d = o - c
    assert np.all(d != 0), "a word is never its own context"
    assert np.all(np.abs(d) <= window), "contexts further than the window"
    # each center uses ONE window b_i on both sides: its contexts are exactly i-b..i+b minus i
    for ci in range(window, window + 200):
        full = sorted(d[c == ci].tolist())
        b = max(full)
        assert full == [x for x in range(-b, b + 1) if x != 0], (
            f"center {ci}: contexts {full}; the window is drawn once PER CENTER and used on both sides")
    # distance d survives with probability (window - d + 1) / window
    freq = np.bincount(np.abs(d), minlength=window + 1)[1:] / (2 * n)
    want = np.array([(window - k + 1) / window for k in range(1, window + 1)])
    assert np.allclose(freq, want, atol=0.02), (
        f"P(distance d) = {np.round(freq, 3)}, expected {np.round(want, 3)}: draw b uniformly from 1..window")


def test_negative_sampler(lab):
    counts = np.array([1000, 100, 10, 1, 0], dtype=np.int64)
    s = lab.NegativeSampler(counts)
    want = counts.astype(float) ** 0.75 / (counts.astype(float) ** 0.75).sum()
    assert np.allclose(s.probs, want), "probabilities are count**0.75, normalised"
    draws = s.sample((400_000,), np.random.default_rng(0))
    assert draws.dtype == np.int64 and draws.shape == (400_000,)
    emp = np.bincount(draws, minlength=5) / len(draws)
    assert np.allclose(emp, want, atol=0.004), f"empirical {emp.round(4)} vs {want.round(4)}: inverse-CDF sampling"
    assert emp[4] == 0, "a word with count 0 must never be drawn"
    uni = lab.NegativeSampler(counts[:4], power=0.0)
    assert np.allclose(uni.probs, 0.25)


def test_forward_loss_equals_bce(lab):
    torch.manual_seed(0)
    model = lab.SkipGramNS(50, 16)
    center, context = torch.randint(0, 50, (8,)), torch.randint(0, 50, (8,))
    negs = torch.randint(0, 50, (8, 5))
    loss0 = model(center, context, negs)
    assert loss0.item() == pytest.approx(8 * 6 * math.log(2), rel=1e-5), (
        "with the output table at zero every score is 0: loss = B * (K + 1) * log 2 (a SUM over the batch)")
    with torch.no_grad():
        model.out_embed.weight.normal_()
        model.in_embed.weight.normal_()
    v, u = model.in_embed.weight, model.out_embed.weight
    pos = (v[center] * u[context]).sum(-1)
    neg = torch.einsum("bd,bkd->bk", v[center], u[negs])
    want = (F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos), reduction="sum")
            + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg), reduction="sum"))
    got = model(center, context, negs)
    assert got.item() == pytest.approx(want.item(), rel=1e-5), "loss = BCE(pos, 1) + BCE(neg, 0), summed"
    model.zero_grad()
    got.backward()
    assert model.in_embed.weight.grad.is_sparse, "use nn.Embedding(sparse=True) so SGD touches only used rows"


def test_numpy_gradients_equal_autograd(lab):
    rng = np.random.default_rng(0)
    for scale in (0.1, 1.0, 4.0):
        v_c, u_o, u_n = (rng.standard_normal(s) * scale for s in ((12,), (12,), (6, 12)))
        loss, g_vc, g_uo, g_un = lab.sgns_loss_and_grads(v_c, u_o, u_n)
        tv, to, tn = (torch.tensor(a, requires_grad=True) for a in (v_c, u_o, u_n))
        ref = -F.logsigmoid(to @ tv) - F.logsigmoid(-(tn @ tv)).sum()
        ref.backward()
        assert loss == pytest.approx(ref.item(), rel=1e-10)
        assert np.allclose(g_vc, tv.grad.numpy(), atol=1e-10), "dL/dv_c = (s(u_o.v_c) - 1) u_o + sum_k s(u_k.v_c) u_k"
        assert np.allclose(g_uo, to.grad.numpy(), atol=1e-10), "dL/du_o = (s(u_o.v_c) - 1) v_c"
        assert np.allclose(g_un, tn.grad.numpy(), atol=1e-10), "dL/du_k = s(u_k.v_c) v_c"
    big = lab.sgns_loss_and_grads(np.full(4, 30.0), np.full(4, -30.0), np.full((2, 4), 30.0))[0]
    assert np.isfinite(big), "use a stable log-sigmoid (logaddexp), not log(sigmoid(x))"


def test_short_training_learns_numbers(lab, tokens, tmp_path):
    torch.set_num_threads(1)
    cfg = lab.W2VConfig(d_model=32, epochs=3, seed=0)
    model, vocab, st = lab.train_word2vec(tokens, cfg, progress=False)
    assert st["losses"][-1] < st["losses"][0] * 0.9, f"loss per pair by epoch {st['losses']} should fall"
    wv = lab.word_vectors(model, vocab)
    near = {w for w, _ in wv.most_similar("three", topn=10)}
    assert len(near & NUMBERS) >= 3, f"after training, 'three' should sit near other numbers; got {near}"
    path = wv.save_word2vec_format(tmp_path / "vectors.txt")
    kv = KeyedVectors.load_word2vec_format(str(path), binary=False)
    assert kv.index_to_key == vocab.words and np.allclose(kv.vectors, wv.vectors, atol=1e-4), (
        "gensim must read our word2vec text file back")


@pytest.mark.slow
def test_quality_vs_gensim_same_corpus(lab):
    """Same 500k-word text8 slice, d_model, window, negatives, sample, min_count and epochs."""
    torch.set_num_threads(1)
    toks = ev.load_text8_words(500_000)
    cfg = lab.W2VConfig(seed=0)
    model, vocab, st = lab.train_word2vec(toks, cfg, progress=False)
    ours = ev.evaluate_all(lab.word_vectors(model, vocab))
    kv, gst = lab.train_gensim(toks, cfg)
    theirs = ev.evaluate_all(ev.WordVectors.from_gensim(kv))
    print(f"\nours  : WordSim {ours['wordsim353']:.3f}, analogy {ours['analogy_3cosadd']:.3f}, "
          f"{st['words_per_s']:,.0f} words/s")
    print(f"gensim: WordSim {theirs['wordsim353']:.3f}, analogy {theirs['analogy_3cosadd']:.3f}, "
          f"{gst['words_per_s']:,.0f} words/s")
    assert ours["wordsim353"] >= 0.9 * theirs["wordsim353"], (
        f"WordSim-353 Spearman {ours['wordsim353']:.3f} < 0.9 x gensim's {theirs['wordsim353']:.3f}: check "
        "subsampling, the dynamic window, the 0.75 power and the learning-rate decay")
    assert ours["analogy_3cosadd"] > 0.0, "no analogy answered correctly at all"


@pytest.mark.given
@pytest.mark.parametrize("counts", [[3.0, float("nan"), 1.0], [3.0, float("inf")], [2, -1, 5], [0, 0, 0], []])
def test_bad_counts_are_refused(lab, counts):
    with pytest.raises(ValueError, match="counts|count"):
        lab.NegativeSampler(np.array(counts))
    with pytest.raises(ValueError, match="counts|count"):
        lab.keep_probabilities(np.array(counts), 1e-3)


def test_zero_counts_are_never_drawn_and_always_kept(lab):
    counts = np.array([50, 0, 5, 0], dtype=np.int64)
    keep = lab.keep_probabilities(counts, 1e-3)
    assert np.isfinite(keep).all() and keep[1] == 1.0 and keep[3] == 1.0, (
        f"keep probabilities {keep}: a word with count 0 has f = 0, and the formula's limit is 1 (no NaN)")
    for power in (0.75, 0.0):
        s = lab.NegativeSampler(counts, power=power)
        assert s.probs[1] == 0 and s.probs[3] == 0, (
            f"power={power}: a word that never occurs got probability {s.probs[1]:.3f}; "
            "0 ** 0 is 1 in NumPy, so give zero counts zero weight explicitly")
        assert np.isclose(s.probs.sum(), 1.0)
        assert set(np.unique(s.sample((5000,), np.random.default_rng(0)))) <= {0, 2}


@pytest.mark.given
def test_forward_refuses_ids_outside_the_vocabulary(lab):
    model = lab.SkipGramNS(10, 4)
    ok_c, ok_o, ok_n = torch.tensor([1, 2]), torch.tensor([3, 4]), torch.tensor([[5, 6], [7, 8]])
    for bad in ({"center": torch.tensor([1, 10])}, {"context": torch.tensor([-1, 4])},
                {"negatives": torch.tensor([[5, 6], [7, 99]])}):
        args = {"center": ok_c, "context": ok_o, "negatives": ok_n, **bad}
        with pytest.raises(ValueError, match=r"outside \[0, 10\)"):
            model(**args)
    with pytest.raises(TypeError, match="int64"):
        model(ok_c.int(), ok_o, ok_n)
    with pytest.raises(ValueError, match="batch"):
        model(ok_c, ok_o, ok_n[:1])


@pytest.mark.given
def test_gensim_reference_uses_our_learning_rate(lab, monkeypatch):
    import gensim.models

    seen = {}

    class Spy:
        def __init__(self, sentences, **kwargs):
            seen.update(kwargs)
            self.wv = None

    monkeypatch.setattr(gensim.models, "Word2Vec", Spy)
    cfg = lab.W2VConfig(lr=0.07, min_lr=2e-4)
    lab.train_gensim(["a", "b"] * 10, cfg)
    assert (seen.get("alpha"), seen.get("min_alpha")) == (0.07, 2e-4), (
        "gensim must train with the same learning-rate schedule as ours, or the comparison measures the rates")
    assert (seen["vector_size"], seen["window"], seen["negative"], seen["sample"], seen["sg"]) == (
        cfg.d_model, cfg.window, cfg.negative, cfg.sample, 1)


@pytest.mark.given
def test_fasttext_bin_loads_pretrained_vectors(lab):
    import fasttext

    from labkit import dataset_path

    path = dataset_path("fasttext-lid", "lid.176.ftz")  # the one fastText model in the registry
    wv = lab.load_fasttext_bin(path, max_words=500)
    model = fasttext.load_model(str(path))
    assert wv.words == list(model.words[:500]) and wv.dim == model.get_dimension()
    w = wv.words[3]
    assert np.allclose(wv[w], model.get_word_vector(w), atol=1e-6)
    with pytest.raises(FileNotFoundError):
        lab.load_fasttext_bin(path.parent / "no-such-model.bin")

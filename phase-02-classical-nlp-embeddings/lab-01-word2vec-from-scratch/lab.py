# Generated from solution.py by `make labs` (labkit/labgen.py). Fill in the TODOs.
"""Lab 2.1: word2vec skip-gram with negative sampling (SGNS), from scratch in PyTorch + NumPy.

Mikolov et al. 2013, "Distributed Representations of Words and Phrases and their
Compositionality" (negative sampling, subsampling) and "Efficient Estimation of Word
Representations in Vector Space" (skip-gram, the analogy benchmark).

Pipeline: vocabulary with a min-count cut -> per-epoch subsampling of frequent words ->
(center, context) pairs from a dynamic window -> K negatives per pair from the unigram^0.75
table -> two embedding tables (input ``W_in`` for centers, output ``W_out`` for contexts) ->
logistic loss ``-log s(u_o . v_c) - sum_k log s(-u_k . v_c)`` -> sparse SGD with a linearly
decaying learning rate, as in the C tool. Evaluation uses the lab 2.3 harness.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from labkit import load_lab, seed_everything

HERE = Path(__file__).resolve().parent
ev = load_lab("2.3")  # the evaluation harness: WordVectors, evaluate_all, load_text8_words, ...


# ----------------------------------------------------------------------------- input checks
def _check_counts(counts: object) -> np.ndarray:
    """Word counts as float64 ``(V,)``: finite, non-negative, not all zero."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or len(counts) == 0:
        raise ValueError(f"counts must be a non-empty 1-D array, got shape {counts.shape}")
    if not np.isfinite(counts).all():
        raise ValueError("counts contain NaN or inf")
    if (counts < 0).any():
        raise ValueError("counts must be >= 0")
    if counts.sum() == 0:
        raise ValueError("every count is zero: there is no distribution to sample from")
    return counts


def _check_ids(name: str, ids: torch.Tensor, vocab_size: int, ndim: int) -> None:
    """Token-id tensors reaching an embedding table: int64, ``ndim`` dims, values in [0, V)."""
    if not isinstance(ids, torch.Tensor) or ids.dtype != torch.long:
        raise TypeError(f"{name} must be an int64 (torch.long) tensor, got "
                        f"{getattr(ids, 'dtype', type(ids).__name__)}")
    if ids.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(ids.shape)}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ValueError(f"{name} has ids outside [0, {vocab_size}): min {int(ids.min())}, "
                         f"max {int(ids.max())} (an id from another vocabulary?)")


# ----------------------------------------------------------------------------- vocabulary
@dataclass
class Vocab:
    """Words sorted by decreasing count (ties: first occurrence first), their counts, and an index."""

    words: list[str]
    counts: np.ndarray  # (V,) int64
    index: dict[str, int]

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, tokens: list[str]) -> np.ndarray:
        """Map tokens to ids, DROPPING out-of-vocabulary tokens (as word2vec does). int64 ``(n,)``."""
        idx = self.index
        return np.fromiter((idx[t] for t in tokens if t in idx), dtype=np.int64)


def build_vocab(tokens: list[str], min_count: int = 5) -> Vocab:
    """Count tokens and keep those seen at least ``min_count`` times, most frequent first.

    Raises:
        ValueError: ``min_count < 1`` or no word survives the cut.
    """
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    # TODO(1): count, drop words below min_count, sort by count descending (stable), build word->id (easy, ~10 min)
    raise NotImplementedError("TODO(1)")


def keep_probabilities(counts: np.ndarray, sample: float = 1e-3) -> np.ndarray:
    """Probability of KEEPING each occurrence of each word (Mikolov subsampling, C-tool form).

    With ``f = count / total`` the word's frequency, ``p_keep = (sqrt(f / sample) + 1) * sample / f``
    clipped to 1. Words much rarer than ``sample`` are always kept; "the" (f ~ 6%) keeps ~15%
    of its occurrences with sample=1e-3. ``sample <= 0`` switches subsampling off. A word
    with count 0 (never seen) gets 1.0: the formula's limit as f -> 0, and it never occurs.

    Returns:
        float64 array of shape ``(V,)`` with values in (0, 1].

    Raises:
        ValueError: counts that are NaN/inf, negative or all zero, or a NaN/inf ``sample``.
    """
    counts = _check_counts(counts)
    if not np.isfinite(sample):
        raise ValueError(f"sample must be a finite number, got {sample!r}")
    if sample <= 0:
        return np.ones_like(counts)
    # TODO(2): the word2vec C formula: (sqrt(f/t) + 1) * t/f, capped at 1; f = 0 gives 1 (easy, ~10 min)
    raise NotImplementedError("TODO(2)")


def skipgram_pairs(ids: np.ndarray, window: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """All (center, context) pairs with a dynamic window.

    Each center position i draws its own window ``b_i`` uniformly from 1..``window`` and pairs
    with every position j, ``0 < |i - j| <= b_i``. A context at distance d is therefore used
    with probability ``(window - d + 1) / window``: nearby words weigh more, for free.

    Args:
        ids: int64 token ids of shape ``(n,)`` (already subsampled).
        window: the maximum window ``>= 1``.
        rng: NumPy generator for the window draws.

    Returns:
        ``(centers, contexts)``, two int64 arrays of equal length ``P``, ordered by distance
        then position (shuffle before SGD).
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    # TODO(3): draw b_i per position; for each distance d, keep pairs (i, i+d) and (i+d, i) whose CENTER's b >= d (medium, ~20 min)
    raise NotImplementedError("TODO(3)")


class NegativeSampler:
    """Draw negatives from the unigram distribution raised to ``power`` (0.75 in word2vec).

    Args:
        counts: word counts, shape ``(V,)``: finite, >= 0, not all zero.
        power: the exponent; 1 = raw unigram, 0 = uniform over the words that occur.

    ``probs`` holds the normalised distribution, shape ``(V,)`` float64. A word with count 0
    is never drawn, whatever the power (``0 ** 0`` is 1 in NumPy, so mask it explicitly).

    Raises:
        ValueError: NaN/inf/negative counts, all counts zero, or a NaN/inf ``power``.
    """

    def __init__(self, counts: np.ndarray, power: float = 0.75) -> None:
        counts = _check_counts(counts)
        if not np.isfinite(power):
            raise ValueError(f"power must be a finite number, got {power!r}")
        # TODO(4): probs = counts**power (0 where count is 0) normalised; keep the cumulative sum for inverse-CDF sampling (easy, ~10 min)
        raise NotImplementedError("TODO(4)")

    def sample(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        """int64 ids of the given shape, i.i.d. from ``probs`` (inverse CDF with binary search)."""
        # TODO(5): uniform draws -> np.searchsorted on the CDF (side='right') (easy, ~5 min)
        raise NotImplementedError("TODO(5)")


# ----------------------------------------------------------------------------- the model
class SkipGramNS(nn.Module):
    """Two embedding tables: ``in_embed`` (V, d) for centers, ``out_embed`` (V, d) for contexts.

    Initialised like the C tool: input rows uniform in [-0.5/d, 0.5/d], output rows zero, so
    every score starts at 0 and the loss at (K + 1) * log 2 per pair. ``sparse=True`` makes the
    backward pass produce gradients only for the rows a batch touched.
    """

    def __init__(self, vocab_size: int, d_model: int = 100, sparse: bool = True) -> None:
        super().__init__()
        if vocab_size < 1 or d_model < 1:
            raise ValueError(f"vocab_size and d_model must be >= 1, got {vocab_size}, {d_model}")
        self.in_embed = nn.Embedding(vocab_size, d_model, sparse=sparse)
        self.out_embed = nn.Embedding(vocab_size, d_model, sparse=sparse)
        nn.init.uniform_(self.in_embed.weight, -0.5 / d_model, 0.5 / d_model)
        nn.init.zeros_(self.out_embed.weight)

    def forward(self, center: torch.Tensor, context: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """Summed SGNS loss of a batch.

        Args:
            center: int64 ``(B,)`` center ids.
            context: int64 ``(B,)`` true context ids.
            negatives: int64 ``(B, K)`` sampled ids.

        Returns:
            scalar: ``sum_b [-log s(u_o . v_c) - sum_k log s(-u_k . v_c)]`` (a SUM, so each pair
            gets the same step size as in per-pair SGD, whatever the batch size).

        Raises:
            TypeError / ValueError: ids that are not int64, have the wrong shape, or lie outside
                ``[0, vocab_size)`` (instead of ``IndexError: index out of range in self``).
        """
        V = self.in_embed.num_embeddings
        _check_ids("center", center, V, 1)
        _check_ids("context", context, V, 1)
        _check_ids("negatives", negatives, V, 2)
        if not (len(center) == len(context) == len(negatives)):
            raise ValueError(f"batch sizes differ: center {len(center)}, context {len(context)}, "
                             f"negatives {len(negatives)}")
        # TODO(6): look up v_c, u_o, u_k; scores by dot products (bmm for the K negatives); F.logsigmoid, never log(sigmoid) (medium, ~15 min)
        raise NotImplementedError("TODO(6)")


def sgns_loss_and_grads(v_c: np.ndarray, u_o: np.ndarray, u_neg: np.ndarray
                        ) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Loss and hand-derived gradients of SGNS for ONE pair, in NumPy (float64).

    Args:
        v_c: center (input) vector, shape ``(d,)``.
        u_o: context (output) vector, shape ``(d,)``.
        u_neg: negative output vectors, shape ``(K, d)``.

    Returns:
        ``(loss, dL/dv_c (d,), dL/du_o (d,), dL/du_neg (K, d))`` with
        ``loss = -log s(u_o.v_c) - sum_k log s(-u_k.v_c)``. Using s'(x) = s(x)(1 - s(x)):
        ``dL/du_o = (s(u_o.v_c) - 1) v_c``, ``dL/du_k = s(u_k.v_c) v_c`` and
        ``dL/dv_c = (s(u_o.v_c) - 1) u_o + sum_k s(u_k.v_c) u_k``.
    """
    v_c, u_o, u_neg = (np.asarray(a, dtype=np.float64) for a in (v_c, u_o, u_neg))
    if v_c.ndim != 1 or u_o.shape != v_c.shape or u_neg.ndim != 2 or u_neg.shape[1] != v_c.shape[0]:
        raise ValueError(f"shapes must be (d,), (d,), (K, d); got {v_c.shape}, {u_o.shape}, {u_neg.shape}")
    # TODO(7): stable sigmoid of the K+1 scores; loss with log-sigmoid (np.logaddexp); the three gradients above (medium, ~20 min)
    raise NotImplementedError("TODO(7)")


# ----------------------------------------------------------------------------- training
@dataclass
class W2VConfig:
    """Hyper-parameters. d_model, window, negative, min_count, epochs are word2vec's defaults;
    ``sample=1e-4`` (the C tool suggests 1e-3..1e-5) drops more frequent-word pairs, which on a
    ~1M-word corpus is both faster and better. ``lr`` is higher than word2vec's 0.025 because
    a batch applies its updates at once instead of one pair at a time (measured in the README)."""

    d_model: int = 100
    window: int = 5
    negative: int = 5
    min_count: int = 5
    sample: float = 1e-4
    epochs: int = 5
    lr: float = 0.05  # start of the linear decay, like word2vec's alpha
    min_lr: float = 1e-4
    batch_size: int = 4096
    seed: int = 0


def train_word2vec(tokens: list[str], cfg: W2VConfig | None = None, progress: bool = True
                   ) -> tuple[SkipGramNS, Vocab, dict]:
    """Train SGNS on a token list. Returns ``(model, vocab, stats)``.

    ``stats`` has ``pairs`` (trained pairs), ``seconds``, ``words_per_s`` (corpus words
    processed per second, the number word2vec prints) and ``losses`` (mean loss per pair,
    per epoch). Each epoch redraws the subsampling and the windows, shuffles the pairs, and
    takes sparse SGD steps on the summed batch loss with the learning rate decaying linearly
    from ``lr`` to ``min_lr`` over all epochs.
    """
    cfg = cfg or W2VConfig()
    seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    vocab = build_vocab(tokens, cfg.min_count)
    ids = vocab.encode(tokens)
    keep = keep_probabilities(vocab.counts, cfg.sample)
    sampler = NegativeSampler(vocab.counts)
    model = SkipGramNS(len(vocab), cfg.d_model)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    # estimate the number of steps for the lr schedule from the expected pairs per epoch
    exp_pairs = float(keep[ids].sum()) * (cfg.window + 1)
    total_steps = max(1, int(cfg.epochs * exp_pairs / cfg.batch_size))
    step, n_pairs, losses, curve = 0, 0, [], []
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        kept = ids[rng.random(len(ids)) < keep[ids]]
        centers, contexts = skipgram_pairs(kept, cfg.window, rng)
        perm = rng.permutation(len(centers))
        centers, contexts = torch.from_numpy(centers[perm]), torch.from_numpy(contexts[perm])
        negs = torch.from_numpy(sampler.sample((len(centers), cfg.negative), rng))
        total = 0.0
        bar = tqdm(range(0, len(centers), cfg.batch_size), disable=not progress,
                   desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False)
        for start in bar:
            sl = slice(start, start + cfg.batch_size)
            lr = max(cfg.min_lr, cfg.lr * (1 - step / total_steps))
            for group in opt.param_groups:
                group["lr"] = lr
            before = total
            # TODO(8): forward the batch, zero grads, backward, sparse SGD step; add the batch loss to total (easy, ~10 min)
            raise NotImplementedError("TODO(8)")
            step += 1
            if step % 50 == 0:  # a point of the loss curve: mean loss per pair of this batch
                n_batch = len(centers[sl])
                curve.append((n_pairs + start + n_batch, (total - before) / max(n_batch, 1)))
        n_pairs += len(centers)
        losses.append(total / max(len(centers), 1))
    seconds = time.perf_counter() - t0
    stats = {"pairs": n_pairs, "seconds": seconds, "words_per_s": cfg.epochs * len(tokens) / seconds,
             "losses": losses, "vocab_size": len(vocab), "curve": curve}
    return model, vocab, stats


def plot_loss_curve(curve: list[tuple[int, float]], epoch_losses: list[float], path: Path) -> Path:
    """Loss per pair against pairs seen (every 50th batch), with the epoch means as a title."""
    from labkit.plots import plt, savefig

    fig, ax = plt.subplots(figsize=(7, 4))
    xs, ys = zip(*curve)
    ax.plot(np.array(xs) / 1e6, ys, lw=1)
    ax.set_xlabel("training pairs seen (millions)")
    ax.set_ylabel("SGNS loss per pair (1 positive + K negatives)")
    ax.set_title("epoch means: " + ", ".join(f"{x:.3f}" for x in epoch_losses), fontsize=9)
    ax.grid(alpha=0.3)
    return savefig(fig, path)


def word_vectors(model: SkipGramNS, vocab: Vocab):
    """The input table as a lab-2.3 ``WordVectors`` (the vectors word2vec saves)."""
    return ev.WordVectors(vocab.words, model.in_embed.weight.detach().cpu().numpy())


def train_gensim(tokens: list[str], cfg: W2VConfig) -> tuple[object, dict]:
    """gensim's C-optimised skip-gram on the same tokens and hyper-parameters (1 worker).

    Same d_model, window, negative, min_count, sample, epochs AND learning-rate schedule:
    ``alpha=cfg.lr`` decaying linearly to ``min_alpha=cfg.min_lr`` (gensim's own default is
    0.025 -> 1e-4; comparing at different rates would measure the rates, not the code)."""
    from gensim.models import Word2Vec

    sentences = [tokens[i:i + 10_000] for i in range(0, len(tokens), 10_000)]
    t0 = time.perf_counter()
    m = Word2Vec(sentences, vector_size=cfg.d_model, window=cfg.window, negative=cfg.negative,
                 min_count=cfg.min_count, sample=cfg.sample, epochs=cfg.epochs, sg=1, hs=0, workers=1, seed=cfg.seed,
                 alpha=cfg.lr, min_alpha=cfg.min_lr)
    seconds = time.perf_counter() - t0
    return m.wv, {"seconds": seconds, "words_per_s": cfg.epochs * len(tokens) / seconds}


def load_fasttext_bin(path: str | Path, max_words: int = 300_000):
    """The word vectors of a pretrained fastText model (``.bin``, or quantized ``.ftz``) as a
    lab-2.3 ``WordVectors`` over its ``max_words`` most frequent words (the standard
    evaluation only looks at the first 300,000 anyway; ``cc.en.300.bin`` has 2M words and
    would need 2.4 GB as float32).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``max_words < 1``.
    """
    import fasttext

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no fastText model at {path} (download e.g. cc.en.300.bin from fasttext.cc)")
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1, got {max_words}")
    model = fasttext.load_model(str(path))
    words = list(model.words[:max_words])
    return ev.WordVectors(words, np.stack([model.get_word_vector(w) for w in words]))


# ----------------------------------------------------------------------------- self-test
SMALL_WORDS = 500_000  # small mode: the first 500k words of the corpus


def load_corpus(corpus: str, max_words: int | None) -> list[str]:
    """``"prose"``: lab 2.3's ``english_prose_words`` (WikiText-2, Tiny Shakespeare, ARC-Easy
    and MMLU text, then text8); ``"text8"``: the local text8 prefix only."""
    if corpus == "prose":
        return ev.english_prose_words(max_words)
    if corpus == "text8":
        return ev.load_text8_words(max_words)
    raise ValueError(f"corpus must be 'prose' or 'text8', got {corpus!r}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true",
                    help=f"the whole corpus (text8 prefix: 1.17M words; prose: 3.06M); small mode: its "
                         f"first {SMALL_WORDS:,} words")
    ap.add_argument("--corpus", choices=("text8", "prose"), default="text8",
                    help="the local text8 prefix (default) or lab 2.3's English prose mix (WikiText-2, "
                         "Shakespeare, ARC, MMLU, then text8)")
    ap.add_argument("--words", type=int, default=None, help="override the number of words")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    ap.add_argument("--no-gensim", action="store_true", help="skip the gensim reference run")
    ap.add_argument("--fasttext-bin", type=Path, default=None,
                    help="also evaluate a pretrained fastText model (.bin/.ftz, e.g. cc.en.300.bin)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.words is not None and args.words < 1:
        ap.error(f"--words must be >= 1, got {args.words}")
    if args.epochs is not None and args.epochs < 1:
        ap.error(f"--epochs must be >= 1, got {args.epochs}")
    torch.set_num_threads(args.threads)
    tokens = load_corpus(args.corpus, args.words or (None if args.full else SMALL_WORDS))
    cfg = W2VConfig(epochs=args.epochs or 5, seed=args.seed)
    print(f"corpus {args.corpus}: {len(tokens):,} words | d_model={cfg.d_model} window={cfg.window} "
          f"negative={cfg.negative} min_count={cfg.min_count} sample={cfg.sample} epochs={cfg.epochs} "
          f"lr {cfg.lr} -> {cfg.min_lr} (gensim: the same alpha -> min_alpha)")
    model, vocab, st = train_word2vec(tokens, cfg)
    wv = word_vectors(model, vocab)
    print(f"ours: vocab {len(vocab):,}, {st['pairs']:,} pairs in {st['seconds']:.1f} s; "
          f"loss per pair by epoch: {', '.join(f'{x:.3f}' for x in st['losses'])}")
    png = plot_loss_curve(st["curve"], st["losses"], HERE / "figures" / ("loss_curve_full.png" if args.full
                                                                          else "loss_curve.png"))
    print(f"wrote {png.relative_to(HERE)}")
    out = HERE / "outputs" / "vectors.txt"
    wv.save_word2vec_format(out)
    print(f"wrote {out.relative_to(HERE)} (word2vec text format)")

    rows = [("ours (PyTorch SGNS)", ev.evaluate_all(wv), st["words_per_s"])]
    if not args.no_gensim:
        kv, gst = train_gensim(tokens, cfg)
        rows.append(("gensim Word2Vec (C, 1 worker, same alpha)", ev.evaluate_all(ev.WordVectors.from_gensim(kv)),
                     gst["words_per_s"]))
    if args.fasttext_bin is not None:
        rows.append((f"pretrained fastText ({args.fasttext_bin.name})",
                     ev.evaluate_all(load_fasttext_bin(args.fasttext_bin)), None))
    print("\n| model | WordSim-353 Spearman | SimLex-999 Spearman | analogy 3CosAdd | analogy 3CosMul | words/s |")
    print("|---|---|---|---|---|---|")
    for name, r, wps in rows:
        print(f"| {name} | {r['wordsim353']:.3f} | {r['simlex999']:.3f} | {r['analogy_3cosadd']:.3f} "
              f"| {r['analogy_3cosmul']:.3f} | {'-' if wps is None else f'{wps:,.0f}'} |")
    if not args.no_gensim:
        print(f"words/s, gensim / ours, measured in this run: {gst['words_per_s'] / st['words_per_s']:.1f}x "
              "(wall-clock on a possibly shared machine: the ratio is the number to quote)")
    r = rows[0][1]
    print(f"(OOV: WordSim {r['wordsim353_oov']:.1f}%, SimLex {r['simlex999_oov']:.1f}%, "
          f"analogies {r['analogy_oov']:.1f}% of questions skipped)")

    print("\nnearest neighbours (cosine):")
    for w in ("king", "paris", "python", "computer", "three"):
        if w in wv:
            print(f"  {w:9s} " + ", ".join(f"{n} {s:.2f}" for n, s in wv.most_similar(w, topn=6)))
        else:
            print(f"  {w:9s} (not in the vocabulary)")
    print("analogies (3CosAdd, a : b :: c : ?):")
    for a, b, c in (("man", "king", "woman"), ("france", "paris", "italy"), ("big", "bigger", "small")):
        if all(x in wv for x in (a, b, c)):
            q = wv.normed[wv.index[b]] - wv.normed[wv.index[a]] + wv.normed[wv.index[c]]
            top = wv.most_similar(q, topn=3, exclude=(a, b, c))
            print(f"  {a} : {b} :: {c} : " + ", ".join(f"{n} {s:.2f}" for n, s in top))

    failures = []
    if not st["losses"][-1] < st["losses"][0]:
        failures.append("loss did not decrease")
    if r["wordsim353"] < 0.2:
        failures.append(f"WordSim-353 Spearman {r['wordsim353']:.3f} < 0.2")
    if not args.no_gensim and r["wordsim353"] < 0.9 * rows[1][1]["wordsim353"]:
        failures.append("WordSim-353 below 0.9x gensim")
    if failures:
        print("FAILED:", "; ".join(failures))
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Lab 2.2: GloVe from scratch, fastText subwords, and a three-way comparison on one corpus.

* GloVe (Pennington, Socher & Manning 2014): build the word-word co-occurrence matrix X with
  1/d distance weighting, then fit ``w_i . w~_j + b_i + b~_j ~ log X_ij`` by weighted least
  squares, ``f(x) = min(1, (x / x_max)^alpha)`` with x_max = 100, alpha = 0.75, using AdaGrad
  over the non-zero cells (as the reference C code does).
* fastText (Bojanowski et al. 2017): trained with the official ``fasttext`` package; we
  re-derive a word's vector from its character n-grams (``<wh, whe, ...``) and the package's
  FNV-1a hashing, which is exactly how fastText answers out-of-vocabulary (OOV) queries.
* Skip-gram from lab 2.1 on the same tokens; all three scored by the lab 2.3 harness.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from labkit import load_lab, seed_everything

HERE = Path(__file__).resolve().parent
ev = load_lab("2.3")  # WordVectors, evaluate_all, load_text8_words
w2v = load_lab("2.1")  # build_vocab, train_word2vec, W2VConfig


# ----------------------------------------------------------------------------- input checks
def _check_weighting(x_max: float, alpha: float) -> None:
    if not (np.isfinite(x_max) and x_max > 0):
        raise ValueError(f"x_max must be a finite number > 0, got {x_max!r}")
    if not (np.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")


def _check_cells(rows, cols, x, vocab_size: int) -> None:
    """Cell coordinates in ``[0, V)`` and co-occurrence values that are finite and > 0."""
    rows, cols, x = (np.asarray(a) for a in (rows, cols, x))
    if not (rows.shape == cols.shape == x.shape) or rows.ndim != 1:
        raise ValueError(f"rows, cols and x must be 1-D of one length, got {rows.shape}, {cols.shape}, {x.shape}")
    for name, idx in (("rows", rows), ("cols", cols)):
        if not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"{name} must be integer ids, got dtype {idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= vocab_size):
            raise ValueError(f"{name} has ids outside [0, {vocab_size}): min {idx.min()}, max {idx.max()}")
    if not np.isfinite(x).all():
        raise ValueError("co-occurrence values contain NaN or inf")
    if (x <= 0).any():
        raise ValueError("GloVe is fit on NON-ZERO cells only: log(0) is undefined (x must be > 0)")


# ----------------------------------------------------------------------------- co-occurrences
def cooccurrence_matrix(ids: np.ndarray, vocab_size: int, window: int = 10) -> sp.csr_matrix:
    """Symmetric, distance-weighted co-occurrence counts.

    ``X[i, j] = sum over occurrences of word i of 1/d for every occurrence of word j at distance
    d, 1 <= d <= window, on either side`` (GloVe's weighting: a word 3 positions away adds 1/3).

    Args:
        ids: int64 token ids, shape ``(n,)``, values in ``[0, vocab_size)``.
        vocab_size: V.
        window: the symmetric window ``>= 1``.

    Returns:
        float64 CSR matrix of shape ``(V, V)``, symmetric, duplicates summed.

    Raises:
        ValueError: ids out of range or window < 1.
    """
    ids = np.asarray(ids, dtype=np.int64)
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if len(ids) and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"ids must lie in [0, {vocab_size}), got [{ids.min()}, {ids.max()}]")
    # BEGIN SOLUTION for each distance d: pairs (ids[:-d], ids[d:]) with weight 1/d, both directions; one coo_matrix, sum duplicates (medium, ~20 min)
    rows, cols, vals = [], [], []
    for d in range(1, window + 1):
        if d >= len(ids):
            break
        left, right = ids[:-d], ids[d:]
        w = np.full(len(left), 1.0 / d)
        rows += [left, right]
        cols += [right, left]
        vals += [w, w]
    if not rows:
        return sp.csr_matrix((vocab_size, vocab_size), dtype=np.float64)
    return sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(vocab_size, vocab_size)).tocsr()  # tocsr sums duplicate entries
    # END SOLUTION


# ----------------------------------------------------------------------------- GloVe
def glove_weight(x: np.ndarray, x_max: float = 100.0, alpha: float = 0.75) -> np.ndarray:
    """GloVe's weighting ``f(x) = (x / x_max)^alpha`` for ``x < x_max``, else 1 (same shape as x).

    Raises:
        ValueError: NaN/inf or negative ``x``; ``x_max <= 0``; a negative or NaN ``alpha``.
    """
    _check_weighting(x_max, alpha)
    xa = np.asarray(x, dtype=np.float64)
    if not np.isfinite(xa).all() or (xa < 0).any():
        raise ValueError("co-occurrence values must be finite and >= 0")
    # BEGIN SOLUTION (x/x_max)**alpha capped at 1 (easy, ~5 min)
    x = np.asarray(x, dtype=np.float64)
    return np.minimum(1.0, (x / x_max) ** alpha)
    # END SOLUTION


def glove_loss_and_grads(W: np.ndarray, W_tilde: np.ndarray, b: np.ndarray, b_tilde: np.ndarray,
                         rows: np.ndarray, cols: np.ndarray, x: np.ndarray,
                         x_max: float = 100.0, alpha: float = 0.75) -> tuple[float, dict[str, np.ndarray]]:
    """GloVe's weighted least-squares loss over the given non-zero cells, and its gradients.

    ``J = sum_n f(x_n) (w_{i_n} . w~_{j_n} + b_{i_n} + b~_{j_n} - log x_n)^2`` (the paper's
    eq. 8; the C code puts a 1/2 in front, which only rescales the learning rate).

    Args:
        W, W_tilde: word and context vectors, shape ``(V, d)``.
        b, b_tilde: biases, shape ``(V,)``.
        rows, cols: int arrays ``(N,)`` of cell coordinates (i, j).
        x: co-occurrence values ``(N,)``, all > 0 (log 0 is undefined).

    Returns:
        ``(J, grads)`` with ``grads`` keys ``W, W_tilde, b, b_tilde`` shaped like the
        parameters (rows hit several times accumulate).

    Raises:
        ValueError: a non-positive or NaN/inf x, NaN/inf parameters, or cell ids outside
            ``[0, V)``.
        TypeError: non-integer ``rows``/``cols``.
    """
    x = np.asarray(x, dtype=np.float64)
    _check_cells(rows, cols, x, len(W))
    for name, param in (("W", W), ("W_tilde", W_tilde), ("b", b), ("b_tilde", b_tilde)):
        if not np.isfinite(param).all():
            raise ValueError(f"{name} contains NaN or inf (did training diverge?)")
    # BEGIN SOLUTION diff = w_i.w~_j + b_i + b~_j - log x; J = sum f*diff^2; dJ/dw_i = 2 f diff w~_j etc., accumulated with np.add.at (medium, ~25 min)
    diff = np.einsum("nd,nd->n", W[rows], W_tilde[cols]) + b[rows] + b_tilde[cols] - np.log(x)
    fx = glove_weight(x, x_max, alpha)
    loss = float(np.sum(fx * diff ** 2))
    g = 2.0 * fx * diff  # dJ/d(score) per cell
    grads = {k: np.zeros_like(v, dtype=np.float64) for k, v in
             (("W", W), ("W_tilde", W_tilde), ("b", b), ("b_tilde", b_tilde))}
    np.add.at(grads["W"], rows, g[:, None] * W_tilde[cols])
    np.add.at(grads["W_tilde"], cols, g[:, None] * W[rows])
    np.add.at(grads["b"], rows, g)
    np.add.at(grads["b_tilde"], cols, g)
    return loss, grads
    # END SOLUTION


class GloVe:
    """GloVe parameters (float32) and the AdaGrad step, on torch tensors (no autograd: the
    gradients are the closed forms of :func:`glove_loss_and_grads`).

    Args:
        vocab_size: V.
        d_model: vector size d.
        lr: AdaGrad learning rate (0.05 in the per-cell reference code; see :func:`train_glove`).
        seed: initialisation seed; vectors start uniform in [-0.5/d, 0.5/d], biases at 0, and
            the AdaGrad squared-gradient sums at 1 (as in the C code, so the first steps are ~lr).
    """

    def __init__(self, vocab_size: int, d_model: int = 100, lr: float = 0.05, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        scale = 0.5 / d_model
        self.W = (torch.rand(vocab_size, d_model, generator=g, dtype=torch.float32) - 0.5) * 2 * scale
        self.W_tilde = (torch.rand(vocab_size, d_model, generator=g, dtype=torch.float32) - 0.5) * 2 * scale
        self.b = torch.zeros(vocab_size)
        self.b_tilde = torch.zeros(vocab_size)
        self.G = {k: torch.ones_like(getattr(self, k)) for k in ("W", "W_tilde", "b", "b_tilde")}
        self.lr = lr

    def step(self, rows: torch.Tensor, cols: torch.Tensor, x: torch.Tensor,
             x_max: float = 100.0, alpha: float = 0.75) -> float:
        """One minibatch AdaGrad step on a batch of non-zero cells; returns the batch loss J.

        Per cell n with ``g_n = 2 f(x_n) diff_n``, the gradient for ``w_i`` is ``g_n w~_j`` (and
        symmetrically for ``w~_j``, ``b_i``, ``b~_j``). Gradients of cells that share a row are
        SUMMED into one gradient per row (the true minibatch gradient); then for every touched
        row ``G += grad^2`` and ``param -= lr * grad / sqrt(G)`` (element-wise). Summing first
        matters: "the" sits in ~70 cells of a 16k-cell batch, and 70 separate full-size steps
        on its bias would overshoot, while AdaGrad on the summed gradient takes one step of
        size about ``lr``. (The C code updates one cell at a time, so it never has this issue.)

        Raises:
            ValueError / TypeError: as :func:`glove_loss_and_grads` for the cells.
        """
        _check_cells(rows.numpy(), cols.numpy(), x.numpy(), len(self.W))
        # BEGIN SOLUTION diff and f(x); per-cell gradients summed per row (index_add_); G += grad^2 then param -= lr*grad/sqrt(G) on touched rows (hard, ~30 min)
        wi, wj = self.W[rows], self.W_tilde[cols]  # (N, d)
        diff = (wi * wj).sum(1) + self.b[rows] + self.b_tilde[cols] - torch.log(x)
        fx = torch.clamp((x / x_max) ** alpha, max=1.0)
        g = 2.0 * fx * diff  # (N,)
        grads = {"W": (rows, g[:, None] * wj), "W_tilde": (cols, g[:, None] * wi),
                 "b": (rows, g), "b_tilde": (cols, g)}
        for name, (idx, grad) in grads.items():
            param, G = getattr(self, name), self.G[name]
            touched, inverse = torch.unique(idx, return_inverse=True)
            total = torch.zeros((len(touched), *grad.shape[1:]), dtype=grad.dtype)
            total.index_add_(0, inverse, grad)  # one summed gradient per touched row
            G_new = G[touched] + total ** 2
            G[touched] = G_new
            param[touched] -= self.lr * total / torch.sqrt(G_new)
        return float((fx * diff ** 2).sum())
        # END SOLUTION

    def vectors(self) -> np.ndarray:
        """The word vectors GloVe reports: ``W + W_tilde`` (the paper's choice), float32 ``(V, d)``."""
        return (self.W + self.W_tilde).float().numpy()


def train_glove(cooc: sp.spmatrix, d_model: int = 100, epochs: int = 15, lr: float = 0.5,
                x_max: float = 100.0, alpha: float = 0.75, batch_size: int = 16384, seed: int = 0,
                ) -> tuple[GloVe, list[float]]:
    """Fit GloVe on the non-zero cells of ``cooc``; returns the model and the mean loss per cell per epoch.

    ``lr`` defaults to 0.5, ten times the C code's 0.05: the C code takes one AdaGrad step per
    cell, we take one per row per 16k-cell batch (gradients summed), so each row gets far fewer
    steps per epoch. On the 300k-word small corpus 0.05 reached WordSim 0.09 and 0.5 reached
    0.26 after 15 epochs (measured while writing this lab).

    Raises:
        ValueError: a non-square matrix, or stored values that are NaN/inf or negative.
    """
    if cooc.shape[0] != cooc.shape[1]:
        raise ValueError(f"cooc must be square (V, V), got shape {cooc.shape}")
    coo = sp.coo_matrix(cooc)
    coo.eliminate_zeros()  # explicit zeros are not co-occurrences
    if not np.isfinite(coo.data).all() or (coo.data < 0).any():
        raise ValueError("cooc holds NaN/inf or negative values; counts must be finite and >= 0")
    _check_weighting(x_max, alpha)
    rows, cols, vals = (torch.from_numpy(np.asarray(a)) for a in (coo.row.astype(np.int64),
                                                                     coo.col.astype(np.int64), coo.data.astype(np.float32)))
    model = GloVe(cooc.shape[0], d_model, lr, seed)
    g = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(epochs):
        perm = torch.randperm(len(vals), generator=g)
        total = 0.0
        for start in range(0, len(vals), batch_size):
            p = perm[start:start + batch_size]
            total += model.step(rows[p], cols[p], vals[p], x_max, alpha)
        history.append(total / max(len(vals), 1))
    return model, history


# ----------------------------------------------------------------------------- PPMI + SVD
def ppmi_matrix(cooc: sp.spmatrix, cds_alpha: float = 0.75) -> sp.csr_matrix:
    """Positive pointwise mutual information of a co-occurrence matrix (Levy, Goldberg & Dagan 2015).

    ``PMI(w, c) = log( P(w, c) / (P(w) P_alpha(c)) )`` with ``P(w, c) = X_wc / sum(X)``,
    ``P(w) = X_w. / sum(X)`` (row sums) and the *smoothed* context distribution
    ``P_alpha(c) = X_.c^alpha / sum_c' X_.c'^alpha`` (column sums raised to ``cds_alpha``, the
    same 0.75 as word2vec's negative sampler: it stops rare contexts from getting huge PMI).
    ``PPMI = max(PMI, 0)``; cells with ``X_wc = 0`` have PMI = -inf and stay 0, so the result
    keeps (at most) the sparsity pattern of ``cooc``.

    Args:
        cooc: (V, V) non-negative co-occurrence counts (any scipy sparse format).
        cds_alpha: context-distribution smoothing exponent in (0, 1]; 1 = plain PMI.

    Returns:
        float64 CSR matrix (V, V), all values > 0 (explicit zeros removed).

    Raises:
        ValueError: non-square, NaN/inf/negative values, an all-zero matrix, or ``cds_alpha``
            outside (0, 1].
    """
    if cooc.shape[0] != cooc.shape[1]:
        raise ValueError(f"cooc must be square (V, V), got shape {cooc.shape}")
    if not (np.isfinite(cds_alpha) and 0 < cds_alpha <= 1):
        raise ValueError(f"cds_alpha must be in (0, 1], got {cds_alpha}")
    X = sp.csr_matrix(cooc, dtype=np.float64)
    X.eliminate_zeros()
    if not np.isfinite(X.data).all() or (X.data < 0).any():
        raise ValueError("cooc holds NaN/inf or negative values")
    if X.nnz == 0:
        raise ValueError("cooc is all zeros: no co-occurrence to measure")
    # BEGIN SOLUTION row sums -> P(w); column sums ** alpha normalised -> P_alpha(c); on X.data only: log(X_wc / total) - log P(w) - log P_alpha(c); keep the positive entries (medium, ~20 min)
    total = X.data.sum()
    p_w = np.asarray(X.sum(axis=1)).ravel() / total  # (V,)
    col = np.asarray(X.sum(axis=0)).ravel() ** cds_alpha
    p_c = col / col.sum()  # (V,)
    rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
    pmi = np.log(X.data / total) - np.log(p_w[rows]) - np.log(p_c[X.indices])
    out = sp.csr_matrix((np.maximum(pmi, 0.0), X.indices.copy(), X.indptr.copy()), shape=X.shape)
    out.eliminate_zeros()
    return out
    # END SOLUTION


def svd_vectors(M: sp.spmatrix, d_model: int = 100, eig_power: float = 0.5, seed: int = 0) -> np.ndarray:
    """Word vectors from a truncated SVD ``M ~ U_d S_d V_d^T``: ``W = U_d S_d^eig_power``.

    ``eig_power = 1`` is the textbook ``U S``; Levy et al. (2015) found that weighting the
    singular values less (0.5, or 0) gives better similarity scores. Columns are ordered by
    decreasing singular value. The sign of each column is arbitrary (cosines do not care).

    Args:
        M: (V, C) sparse matrix, ``d_model < min(V, C)``.
        d_model: number of singular triplets kept.
        eig_power: exponent applied to the singular values.
        seed: start vector of the iterative solver (``scipy.sparse.linalg.svds``).

    Returns:
        float32 array (V, d_model).

    Raises:
        ValueError: ``d_model`` not in ``[1, min(V, C))`` or a NaN/inf ``eig_power``.
    """
    from scipy.sparse.linalg import svds

    if not 1 <= d_model < min(M.shape):
        raise ValueError(f"d_model must be in [1, {min(M.shape)}), got {d_model}")
    if not np.isfinite(eig_power):
        raise ValueError(f"eig_power must be finite, got {eig_power}")
    # BEGIN SOLUTION svds(M, k=d_model, random_state=seed) (it returns ascending singular values: reorder), then U * S**eig_power (easy, ~10 min)
    U, S, _ = svds(sp.csr_matrix(M, dtype=np.float64), k=d_model, random_state=seed)
    order = np.argsort(-S)
    return (U[:, order] * S[order] ** eig_power).astype(np.float32)
    # END SOLUTION


# ----------------------------------------------------------------------------- fastText
def char_ngrams(word: str, minn: int = 3, maxn: int = 6) -> list[str]:
    """fastText's character n-grams of ``word``: every substring of ``"<" + word + ">"`` with
    ``minn <= length <= maxn``, in order of start position then length (duplicates kept),
    EXCEPT the two one-character n-grams ``"<"`` and ``">"`` (with ``minn=1`` fastText's
    ``computeSubwords`` skips a length-1 n-gram at the first or last position: a bare boundary
    marker says nothing about the word). Characters are Unicode code points, as in fastText,
    which never splits a UTF-8 multi-byte character.

    Raises:
        ValueError: ``minn < 1`` or ``maxn < minn``.
    """
    if minn < 1 or maxn < minn:
        raise ValueError(f"need 1 <= minn <= maxn, got {minn}, {maxn}")
    # BEGIN SOLUTION wrap in < >, then all substrings with length in [minn, maxn], minus the lone "<" and ">" (easy, ~10 min)
    w = f"<{word}>"
    return [w[i:i + n] for i in range(len(w)) for n in range(minn, maxn + 1)
            if i + n <= len(w) and not (n == 1 and (i == 0 or i == len(w) - 1))]
    # END SOLUTION


def fnv1a_32(text: str) -> int:
    """fastText's string hash: 32-bit FNV-1a over the UTF-8 bytes, each byte sign-extended
    (fastText casts ``char`` -> ``int8_t`` -> ``uint32_t``, which matters for non-ASCII)."""
    # BEGIN SOLUTION h = 2166136261; for each byte: h ^= (byte as int8) & 0xffffffff; h = h * 16777619 mod 2^32 (medium, ~15 min)
    h = 2166136261
    for byte in text.encode("utf-8"):
        signed = byte - 256 if byte >= 128 else byte
        h = ((h ^ (signed & 0xFFFFFFFF)) * 16777619) & 0xFFFFFFFF
    return h
    # END SOLUTION


class FastTextVectors:
    """Wrap a trained ``fasttext`` model: known words AND out-of-vocabulary words get vectors.

    ``words`` is the model's vocabulary (most frequent first); :meth:`to_word_vectors` gives a
    lab-2.3 ``WordVectors`` over it for the standard evaluation.
    """

    def __init__(self, model) -> None:
        self.model = model
        self.words = list(model.words)
        self.index = {w: i for i, w in enumerate(self.words)}
        self.input_matrix = model.get_input_matrix()  # (nwords + bucket, d)
        args = model.f.getArgs()
        self.minn, self.maxn, self.bucket = args.minn, args.maxn, args.bucket

    def subword_ids(self, word: str) -> list[int]:
        """Rows of the input matrix that make up ``word``: its own row when it is in the
        vocabulary, then ``nwords + fnv1a_32(ngram) % bucket`` for every character n-gram."""
        # BEGIN SOLUTION own id if known; every char n-gram hashed into the bucket range after the word rows (medium, ~15 min)
        ids = [self.index[word]] if word in self.index else []
        if self.maxn > 0:
            ids += [len(self.words) + fnv1a_32(g) % self.bucket
                    for g in char_ngrams(word, self.minn, self.maxn)]
        return ids
        # END SOLUTION

    def vector(self, word: str) -> np.ndarray:
        """The word's vector: the MEAN of its subword rows, shape ``(d,)`` float32. Works for any
        word with at least one n-gram; equals ``model.get_word_vector(word)``."""
        ids = self.subword_ids(word)
        if not ids:
            raise ValueError(f"{word!r} has no character n-gram of length >= {self.minn}")
        return self.input_matrix[ids].mean(axis=0)

    def most_similar(self, word: str, topn: int = 5) -> list[tuple[str, float]]:
        """Nearest in-vocabulary words to any word, known or not (cosine)."""
        wv = self.to_word_vectors()
        return wv.most_similar(self.vector(word), topn=topn, exclude=(word,))

    def to_word_vectors(self):
        if not hasattr(self, "_wv"):
            self._wv = ev.WordVectors(self.words, np.stack([self.model.get_word_vector(w) for w in self.words]))
        return self._wv


def train_fasttext(tokens: list[str], d_model: int = 100, epochs: int = 5, window: int = 5,
                   negative: int = 5, min_count: int = 5, sample: float = 1e-4, minn: int = 3,
                   maxn: int = 6) -> FastTextVectors:
    """Train the official fastText skip-gram (one thread) on ``tokens`` written to a temp file."""
    import fasttext

    fd, path = tempfile.mkstemp(suffix=".txt", prefix="fasttext_corpus_")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for i in range(0, len(tokens), 1000):
                f.write(" ".join(tokens[i:i + 1000]) + "\n")
        model = fasttext.train_unsupervised(path, model="skipgram", dim=d_model, epoch=epochs, ws=window,
                                            neg=negative, minCount=min_count, t=sample, minn=minn, maxn=maxn,
                                            thread=1, verbose=0)  # one thread: deterministic
    finally:
        os.unlink(path)
    return FastTextVectors(model)


def lookup(model, word: str) -> np.ndarray:
    """A vector for ``word`` from any of the three models.

    Word-level models (a lab-2.3 ``WordVectors``: skip-gram, GloVe) refuse unknown words with a
    ``KeyError`` that says so; a :class:`FastTextVectors` builds one from character n-grams.
    """
    if isinstance(model, FastTextVectors):
        return model.vector(word)
    return model[word]  # KeyError with an explanation for OOV words


# ----------------------------------------------------------------------------- self-test
def plot_comparison(scores: dict[str, dict[str, float]], path: Path, title: str) -> Path:
    """Grouped bars: one group per metric, one bar per model."""
    from labkit.plots import plt, savefig

    metrics = [("wordsim353", "WordSim-353\nSpearman"), ("simlex999", "SimLex-999\nSpearman"),
               ("analogy_3cosadd", "analogy acc.\n3CosAdd"), ("analogy_3cosmul", "analogy acc.\n3CosMul")]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(scores)
    for k, (name, r) in enumerate(scores.items()):
        ax.bar(np.arange(len(metrics)) + k * width, [r[m] for m, _ in metrics], width, label=name)
    ax.set_xticks(np.arange(len(metrics)) + width * (len(scores) - 1) / 2)
    ax.set_xticklabels([label for _, label in metrics])
    ax.axhline(0, color="black", lw=0.5)
    ax.set_title(title)
    ax.legend(fontsize=7)
    return savefig(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="whole local text8 prefix (1.17M words); small: 300k words")
    ap.add_argument("--words", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=5, help="epochs for skip-gram and fastText")
    ap.add_argument("--glove-epochs", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    seed_everything(args.seed)
    tokens = ev.load_text8_words(args.words or (None if args.full else 300_000))
    d_model, failures, rows = 100, [], []
    print(f"corpus: first {len(tokens):,} words of text8 | d_model={d_model}, min_count=5")

    t0 = time.perf_counter()
    cfg = w2v.W2VConfig(d_model=d_model, epochs=args.epochs, seed=args.seed)
    model, vocab, _ = w2v.train_word2vec(tokens, cfg, progress=False)
    sg = w2v.word_vectors(model, vocab)
    rows.append(("skip-gram (lab 2.1)", sg, time.perf_counter() - t0))

    t0 = time.perf_counter()
    ids = vocab.encode(tokens)  # same vocabulary (min_count 5) for GloVe
    cooc = cooccurrence_matrix(ids, len(vocab), window=10)
    t_cooc = time.perf_counter() - t0  # counted for GloVe and again for PPMI, which reuses it
    glove, hist = train_glove(cooc, d_model, epochs=args.glove_epochs, seed=args.seed)
    gl = ev.WordVectors(vocab.words, glove.vectors())
    print(f"GloVe: {cooc.nnz:,} non-zero cells, loss per cell {hist[0]:.4f} -> {hist[-1]:.4f} "
          f"over {len(hist)} epochs")
    if not hist[-1] < hist[0]:
        failures.append("GloVe loss did not decrease")
    rows.append(("GloVe (ours, AdaGrad)", gl, time.perf_counter() - t0))

    t0 = time.perf_counter()
    ppmi = ppmi_matrix(cooc)
    pp = ev.WordVectors(vocab.words, svd_vectors(ppmi, d_model, seed=args.seed))
    rows.append(("PPMI + SVD (ours, count-based)", pp, time.perf_counter() - t0 + t_cooc))
    print(f"PPMI: {ppmi.nnz:,} positive cells of {cooc.nnz:,} non-zero co-occurrences (cds alpha 0.75); "
          f"SVD to {d_model} dims, singular values ** 0.5")

    t0 = time.perf_counter()
    ft = train_fasttext(tokens, d_model, epochs=args.epochs)
    rows.append(("fastText (official, skip-gram + subwords)", ft.to_word_vectors(), time.perf_counter() - t0))

    print("\n| model | WordSim-353 | SimLex-999 | analogy 3CosAdd | analogy 3CosMul | train s |")
    print("|---|---|---|---|---|---|")
    scores = {}
    for name, wv, secs in rows:
        r = ev.evaluate_all(wv)
        scores[name] = r
        print(f"| {name} | {r['wordsim353']:.3f} | {r['simlex999']:.3f} | {r['analogy_3cosadd']:.3f} "
              f"| {r['analogy_3cosmul']:.3f} | {secs:.1f} |")
    rng = np.random.default_rng(args.seed)
    rand = ev.evaluate_all(ev.WordVectors(vocab.words, rng.standard_normal((len(vocab), d_model))))
    print(f"| random vectors (baseline) | {rand['wordsim353']:.3f} | {rand['simlex999']:.3f} "
          f"| {rand['analogy_3cosadd']:.3f} | {rand['analogy_3cosmul']:.3f} | 0 |")
    scores["random vectors (baseline)"] = rand
    png = plot_comparison(scores, HERE / "figures" / ("comparison_full.png" if args.full else "comparison.png"),
                          f"first {len(tokens):,} words of text8")
    print(f"wrote {png.relative_to(HERE)}")
    r = scores["skip-gram (lab 2.1)"]
    print(f"(vocabulary {len(vocab):,} words; OOV: WordSim {r['wordsim353_oov']:.1f}%, "
          f"SimLex {r['simlex999_oov']:.1f}%, analogies {r['analogy_oov']:.1f}%; fastText's own vocabulary "
          f"has {len(ft.words):,} words)")
    if scores["GloVe (ours, AdaGrad)"]["wordsim353"] < rand["wordsim353"] + 0.1:
        failures.append("GloVe is not clearly better than random vectors")
    if scores["PPMI + SVD (ours, count-based)"]["wordsim353"] < rand["wordsim353"] + 0.1:
        failures.append("PPMI + SVD is not clearly better than random vectors")

    print("\nout-of-vocabulary queries:")
    for q in ("computerr", "compuetr", "unfriendliness", "transformerish", "blorptastic"):
        known = q in vocab.index
        try:
            lookup(sg, q)
            sg_answer = "has a vector"
        except KeyError:
            sg_answer = "KeyError (refused)"
        near = ", ".join(f"{w} {s:.2f}" for w, s in ft.most_similar(q, topn=4))
        print(f"  {q:15s} in vocab: {known!s:5s} | skip-gram/GloVe: {sg_answer} | fastText: {near}")
    if np.abs(ft.vector("compuetr") - ft.model.get_word_vector("compuetr")).max() > 1e-5:
        failures.append("our subword composition differs from fastText's get_word_vector")
    if failures:
        print("FAILED:", "; ".join(failures))
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())

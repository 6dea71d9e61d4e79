# Generated from solution.py by `make labs` (labkit/labgen.py). Fill in the TODOs.
"""Lab 1.4: PyTorch essentials and autograd.

Four parts, each building on the one before:

1. Ten tensor puzzles: broadcasting, advanced indexing, ``scatter_``, ``tril``, ``masked_fill``,
   ``cumsum``, ``einsum`` and ``topk``. Every one is a line or two that later phases use
   inside attention, sampling and retrieval code.
2. Linear regression three ways: the closed-form least-squares solution (the reference),
   plain gradient descent on raw tensors with autograd, and an ``nn.Module`` trained from a
   ``DataLoader`` with ``torch.optim`` (SGD vs AdamW). It runs on synthetic data with known
   weights and on a real regression built from Tiny Shakespeare (how much of a word pair's
   count do the two words' own frequencies explain?).
3. A 2-layer MLP (Linear -> ReLU -> Linear) whose backward pass is written by hand in a
   ``torch.autograd.Function`` and checked with ``torch.autograd.gradcheck`` in float64.
4. Wall-clock timing of matmuls and MLP training steps on CPU (and on CUDA when present).

References: PyTorch docs "Broadcasting semantics", "Autograd mechanics", "Extending
torch.autograd"; Goodfellow, Bengio & Courville, *Deep Learning*, ch. 5.1.4 (linear
regression, normal equations) and ch. 6.5 (back-propagation); Loshchilov & Hutter 2019,
"Decoupled Weight Decay Regularization" (AdamW).

Run ``python solution.py`` for the small-mode self-test (CPU, about a minute) or
``python solution.py --full`` for the whole corpus and larger timing sizes.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from labkit import Timing, benchmark, read_text, seed_everything

HERE = Path(__file__).resolve().parent
WORD_RE = re.compile(r"[a-z']+")


# --------------------------------------------------------------------------------------
# Input checks (shared by every public function; kept outside the TODOs)
# --------------------------------------------------------------------------------------


def _require_tensor(x: object, name: str, ndim: int | None = None) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(x.shape)}")
    return x


def _require_long(x: Tensor, name: str, upper: int) -> None:
    if x.dtype != torch.long:
        raise TypeError(f"{name} must be an int64 (torch.long) index tensor, got {x.dtype}")
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= upper):
        raise ValueError(f"{name} has values outside [0, {upper}): min {int(x.min())}, max {int(x.max())}")


# --------------------------------------------------------------------------------------
# Part 1: ten tensor puzzles (no Python loops over elements inside the solutions)
# --------------------------------------------------------------------------------------


def outer(a: Tensor, b: Tensor) -> Tensor:
    """Outer product by broadcasting: ``out[i, j] = a[i] * b[j]``.

    Args:
        a: shape (n,).
        b: shape (m,).
    Returns:
        shape (n, m), dtype of ``a * b``. Do not use ``torch.outer`` or ``einsum``.
    Raises:
        TypeError / ValueError: a non-tensor or an input that is not 1-D.
    """
    _require_tensor(a, "a", 1)
    _require_tensor(b, "b", 1)
    # TODO(1): give a a trailing axis and b a leading axis, then multiply: (n, 1) * (1, m) (easy, ~5 min)
    raise NotImplementedError("TODO(1)")


def pairwise_sq_dists(x: Tensor, y: Tensor) -> Tensor:
    """All squared Euclidean distances: ``out[i, j] = ||x[i] - y[j]||^2``.

    Args:
        x: shape (n, d).
        y: shape (m, d).
    Returns:
        shape (n, m), float. Reference: ``torch.cdist(x, y) ** 2``.
    Raises:
        ValueError: inputs not 2-D, or different feature sizes d.
    """
    _require_tensor(x, "x", 2)
    _require_tensor(y, "y", 2)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y need the same feature size, got {x.shape[1]} and {y.shape[1]}")
    # TODO(2): broadcast (n, 1, d) - (1, m, d) -> (n, m, d), square, sum the last axis (easy, ~10 min)
    raise NotImplementedError("TODO(2)")


def gather_positions(x: Tensor, idx: Tensor) -> Tensor:
    """Pick one time step per sequence: ``out[b] = x[b, idx[b]]``.

    This is how a classifier reads the hidden state of each sequence's last real token.

    Args:
        x: shape (B, T, C).
        idx: shape (B,), int64, values in [0, T).
    Returns:
        shape (B, C), same dtype as ``x``.
    Raises:
        ValueError / TypeError: wrong ranks, batch sizes that differ, a non-long or
            out-of-range ``idx``.
    """
    _require_tensor(x, "x", 3)
    _require_tensor(idx, "idx", 1)
    if idx.shape[0] != x.shape[0]:
        raise ValueError(f"idx has {idx.shape[0]} entries but x has batch size {x.shape[0]}")
    _require_long(idx, "idx", x.shape[1])
    # TODO(3): index dims 0 and 1 together with arange(B) and idx; x[:, idx] is (B, B, C), not (B, C) (easy, ~10 min)
    raise NotImplementedError("TODO(3)")


def one_hot(labels: Tensor, num_classes: int) -> Tensor:
    """One-hot encode class ids with ``Tensor.scatter_``.

    Args:
        labels: shape (N,), int64, values in [0, num_classes).
        num_classes: C >= 1.
    Returns:
        shape (N, C), float32, exactly one 1.0 per row. Reference: ``F.one_hot``.
    Raises:
        ValueError / TypeError: bad rank, dtype, range, or ``num_classes < 1``.
    """
    _require_tensor(labels, "labels", 1)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    _require_long(labels, "labels", num_classes)
    # TODO(4): zeros (N, C), then scatter_ 1.0 along dim 1 at labels reshaped to (N, 1) (easy, ~10 min)
    raise NotImplementedError("TODO(4)")


def causal_mask(T: int, device: torch.device | str | None = None) -> Tensor:
    """Causal (autoregressive) attention mask: ``out[i, j] = (j <= i)``.

    Row i is the query position, column j the key position; True means "may attend".

    Args:
        T: sequence length >= 1.
    Returns:
        shape (T, T), dtype bool, lower triangle (diagonal included) True.
    Raises:
        ValueError: ``T < 1``.
    """
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be an int >= 1, got {T!r}")
    # TODO(5): torch.tril of a (T, T) ones tensor, as bool (triu would let tokens see the future) (easy, ~5 min)
    raise NotImplementedError("TODO(5)")


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last axis where ``mask`` is False counts as "not there".

    Args:
        scores: shape (..., T, S), float.
        mask: bool, broadcastable to ``scores`` (for example (T, S) from :func:`causal_mask`).
            Every row must keep at least one position.
    Returns:
        same shape as ``scores``; masked positions are exactly 0 and each row sums to 1.
    Raises:
        TypeError: ``mask`` is not bool.
        ValueError: a row is fully masked (its softmax would be NaN), or shapes do not broadcast.
    """
    _require_tensor(scores, "scores")
    _require_tensor(mask, "mask")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be bool (True = keep), got {mask.dtype}")
    try:
        full = torch.broadcast_to(mask, scores.shape)
    except RuntimeError as e:
        raise ValueError(f"mask {tuple(mask.shape)} does not broadcast to scores {tuple(scores.shape)}") from e
    if not bool(full.any(dim=-1).all()):
        raise ValueError("a row of mask is all False: its softmax would be 0/0 = NaN")
    # TODO(6): masked_fill the positions where mask is False with -inf, then softmax(dim=-1) (easy, ~5 min)
    raise NotImplementedError("TODO(6)")


def running_mean(x: Tensor) -> Tensor:
    """Prefix average over time: ``out[b, t] = mean(x[b, :t+1])`` (the "bag of previous tokens").

    Args:
        x: shape (B, T, C), float.
    Returns:
        shape (B, T, C), same dtype.
    Raises:
        ValueError: ``x`` is not 3-D or not floating point.
    """
    _require_tensor(x, "x", 3)
    if not x.is_floating_point():
        raise ValueError(f"x must be floating point, got {x.dtype}")
    # TODO(7): cumsum over dim 1, divide by counts 1..T shaped (T, 1) so they line up with the T axis (easy, ~10 min)
    raise NotImplementedError("TODO(7)")


def attention_scores(q: Tensor, k: Tensor) -> Tensor:
    """Per-head dot products ``out[b, h, t, s] = sum_d q[b, h, t, d] * k[b, h, s, d]`` with einsum.

    Args:
        q: queries, shape (B, H, T, D).
        k: keys, shape (B, H, S, D).
    Returns:
        shape (B, H, T, S). (No 1/sqrt(D) scaling here; Phase 4 adds it.)
    Raises:
        ValueError: ranks are not 4, or B, H, D differ between q and k.
    """
    _require_tensor(q, "q", 4)
    _require_tensor(k, "k", 4)
    if q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree on B, H and D")
    # TODO(8): one einsum string: batch and head letters kept, D summed away (easy, ~5 min)
    raise NotImplementedError("TODO(8)")


def topk_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits of each row, set the rest to -inf (top-k sampling filter).

    Args:
        logits: shape (N, V), float.
        k: 1 <= k <= V.
    Returns:
        shape (N, V), same dtype; exactly k finite entries per row (when there are no ties).
    Raises:
        ValueError: ``logits`` is not 2-D or ``k`` is out of range.
    """
    _require_tensor(logits, "logits", 2)
    if not isinstance(k, int) or not 1 <= k <= logits.shape[1]:
        raise ValueError(f"k must be an int in [1, {logits.shape[1]}], got {k!r}")
    # TODO(9): torch.topk along dim -1, then scatter the kept values into a -inf tensor (medium, ~10 min)
    raise NotImplementedError("TODO(9)")


def normalize_rows(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Scale every row to unit L2 norm: ``out[i] = x[i] / max(||x[i]||, eps)``.

    Args:
        x: shape (N, D), float.
        eps: floor on the norm so all-zero rows stay zero instead of NaN.
    Returns:
        shape (N, D). Reference: ``torch.nn.functional.normalize(x, dim=1)``.
    Raises:
        ValueError: ``x`` not 2-D, or ``eps <= 0``.
    """
    _require_tensor(x, "x", 2)
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    # TODO(10): row norms with keepdim=True so they are (N, 1), clamp_min(eps), divide (easy, ~5 min)
    raise NotImplementedError("TODO(10)")


PUZZLES = (outer, pairwise_sq_dists, gather_positions, one_hot, causal_mask, masked_softmax,
           running_mean, attention_scores, topk_filter, normalize_rows)


# --------------------------------------------------------------------------------------
# Part 2: linear regression, closed form vs autograd vs nn.Module + DataLoader
# --------------------------------------------------------------------------------------


def make_synthetic_regression(n: int = 1000, d: int = 5, noise: float = 0.1, seed: int = 0,
                              dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``y = X @ w_true + b_true + noise * eps`` with Gaussian X and eps.

    Returns:
        X (n, d), y (n,), w_true (d,), b_true (scalar tensor), all ``dtype``.
    Raises:
        ValueError: ``n < 2``, ``d < 1`` or ``noise < 0``.
    """
    if n < 2 or d < 1 or noise < 0:
        raise ValueError(f"need n >= 2, d >= 1, noise >= 0; got n={n}, d={d}, noise={noise}")
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=dtype)
    w_true = torch.randn(d, generator=g, dtype=dtype)
    b_true = torch.randn((), generator=g, dtype=dtype)
    y = X @ w_true + b_true + noise * torch.randn(n, generator=g, dtype=dtype)
    return X, y, w_true, b_true


def _check_xy(X: Tensor, y: Tensor) -> None:
    _require_tensor(X, "X", 2)
    _require_tensor(y, "y", 1)
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but y has {y.shape[0]}: one target per row")
    if not (X.is_floating_point() and y.is_floating_point()):
        raise ValueError(f"X and y must be floating point, got {X.dtype} and {y.dtype}")


def closed_form_lstsq(X: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Ordinary least squares with an intercept: ``argmin_{w,b} ||X w + b - y||^2``.

    Solved with ``torch.linalg.lstsq`` on the design matrix ``[X, 1]`` (QR based, so it does
    not square the condition number the way the normal equations ``(X^T X)^-1 X^T y`` do).

    Args:
        X: features, shape (N, d), float (use float64 for a reference answer).
        y: targets, shape (N,).
    Returns:
        w of shape (d,) and b of shape () in ``X.dtype``.
    Raises:
        ValueError: shapes disagree, or N < d + 1 (the system is underdetermined).
    """
    _check_xy(X, y)
    if X.shape[0] < X.shape[1] + 1:
        raise ValueError(f"need at least d + 1 = {X.shape[1] + 1} rows for a unique fit, got {X.shape[0]}")
    # TODO(11): append a column of ones to X for the bias, solve with torch.linalg.lstsq, split w and b (easy, ~10 min)
    raise NotImplementedError("TODO(11)")


def mse(pred: Tensor, y: Tensor) -> Tensor:
    """Mean squared error, a 0-d tensor. Raises ValueError when the shapes differ."""
    if pred.shape != y.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and y {tuple(y.shape)} differ: a (N, 1) vs (N,) "
                         "mix-up would broadcast to (N, N)")
    return ((pred - y) ** 2).mean()


def fit_linear_autograd(X: Tensor, y: Tensor, lr: float = 0.1, steps: int = 500
                        ) -> tuple[Tensor, Tensor, list[float]]:
    """Full-batch gradient descent on MSE with raw tensors and autograd (no nn, no optim).

    Start from zeros; each step computes ``loss = mse(X @ w + b, y)``, calls ``backward()``,
    then updates ``w -= lr * w.grad`` (same for b) inside ``torch.no_grad()`` and zeroes the
    grads. Works best on standardized features (see :func:`standardize`).

    Args:
        X: shape (N, d), float.
        y: shape (N,).
        lr: step size (> 0).
        steps: number of updates (>= 1).
    Returns:
        ``(w, b, losses)``: w (d,) and b () detached from the graph, and the loss before
        each update as Python floats (len == steps).
    Raises:
        ValueError: bad shapes, ``lr <= 0`` or ``steps < 1``.
    """
    _check_xy(X, y)
    if lr <= 0 or steps < 1:
        raise ValueError(f"need lr > 0 and steps >= 1, got lr={lr}, steps={steps}")
    # TODO(12): leaf tensors with requires_grad=True; loop: loss, backward, no_grad update, zero grads (medium, ~20 min)
    raise NotImplementedError("TODO(12)")


def standardize(X: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Zero-mean, unit-variance columns. Returns ``(X_std, mean (d,), std (d,))``.

    Raises ValueError when a column is constant (its std is 0).
    """
    _require_tensor(X, "X", 2)
    mean, std = X.mean(dim=0), X.std(dim=0)
    if bool((std == 0).any()):
        raise ValueError("a feature column is constant; drop it before standardizing")
    return (X - mean) / std, mean, std


def unstandardize(w_std: Tensor, b_std: Tensor, mean: Tensor, std: Tensor) -> tuple[Tensor, Tensor]:
    """Map weights fitted on ``(X - mean) / std`` back to the raw feature scale."""
    w = w_std / std
    return w, b_std - (w * mean).sum()


class LinearRegression(nn.Module):
    """``y_hat = X @ w + b`` as an ``nn.Module`` (one ``nn.Linear(d_in, 1)``).

    Input (N, d_in), output (N,) (the trailing size-1 axis is squeezed so that ``mse`` does
    not broadcast (N, 1) against (N,)).
    """

    def __init__(self, d_in: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if d_in < 1:
            raise ValueError(f"d_in must be >= 1, got {d_in}")
        self.linear = nn.Linear(d_in, 1, dtype=dtype)

    def forward(self, X: Tensor) -> Tensor:
        return self.linear(X).squeeze(-1)


def make_loader(X: Tensor, y: Tensor, batch_size: int, shuffle: bool = True, seed: int = 0) -> DataLoader:
    """A ``DataLoader`` over ``TensorDataset(X, y)``; shuffling uses its own seeded generator."""
    _check_xy(X, y)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(X, y), batch_size=batch_size, shuffle=shuffle, generator=gen)


def train_model(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                epochs: int = 1) -> list[float]:
    """The canonical training loop: for each batch, zero_grad, forward, MSE, backward, step.

    Args:
        model: maps (B, d) to (B,).
        loader: yields ``(X_batch, y_batch)``.
        optimizer: already holding ``model.parameters()``.
        epochs: passes over the loader (>= 1).
    Returns:
        the loss of every step (before its update) as Python floats, len == epochs * len(loader).
    Raises:
        ValueError: ``epochs < 1``.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    model.train()
    # TODO(13): the 5-line loop: optimizer.zero_grad(), loss = mse(model(xb), yb), backward, step; record loss.item() (easy, ~15 min)
    raise NotImplementedError("TODO(13)")


@torch.no_grad()
def evaluate(model: nn.Module, X: Tensor, y: Tensor) -> float:
    """MSE of ``model`` on ``(X, y)`` in eval mode without building a graph."""
    model.eval()
    return mse(model(X), y).item()


def accumulated_gradients(model: nn.Module, X: Tensor, y: Tensor, n_micro: int) -> dict[str, Tensor]:
    """Gradient of the full-batch MSE computed from ``n_micro`` micro-batches.

    This is gradient accumulation: memory for one micro-batch, the gradient of the whole
    batch. Zero the grads once, then for each chunk call ``backward()`` on its MSE scaled by
    ``len(chunk) / N`` so the accumulated sum equals the full-batch mean.

    Args:
        model: maps (n, d) to (n,).
        X: shape (N, d); y: shape (N,).
        n_micro: number of chunks, 1 <= n_micro <= N (``torch.chunk`` sizes).
    Returns:
        ``{name: grad.clone()}`` for every parameter of ``model``.
    Raises:
        ValueError: bad shapes or ``n_micro`` out of range.
    """
    _check_xy(X, y)
    if not 1 <= n_micro <= X.shape[0]:
        raise ValueError(f"n_micro must be in [1, {X.shape[0]}], got {n_micro}")
    # TODO(14): model.zero_grad(); for each (xc, yc) in zip(X.chunk(n), y.chunk(n)): (mse * len(xc)/N).backward() (medium, ~15 min)
    raise NotImplementedError("TODO(14)")
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def compare_optimizers(X: Tensor, y: Tensor, epochs: int = 5, batch_size: int = 256,
                       lr_sgd: float = 0.05, lr_adamw: float = 0.05, seed: int = 0) -> dict[str, list[float]]:
    """Train a fresh :class:`LinearRegression` with SGD and with AdamW on the same batches.

    Returns ``{"SGD": per-step losses, "AdamW": per-step losses}``. Both start from the same
    seeded initialization and see the same shuffled batch order.
    """
    _check_xy(X, y)
    curves: dict[str, list[float]] = {}
    for name in ("SGD", "AdamW"):
        seed_everything(seed)
        model = LinearRegression(X.shape[1], dtype=X.dtype)
        if name == "SGD":
            opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=lr_sgd)
        else:
            opt = torch.optim.AdamW(model.parameters(), lr=lr_adamw)
        curves[name] = train_model(model, make_loader(X, y, batch_size, shuffle=True, seed=seed), opt, epochs)
    return curves


def bigram_regression_data(text: str, top_k: int = 200) -> tuple[Tensor, Tensor, list[str], int]:
    """A real regression from a corpus: predict a word pair's count from the words' own counts.

    Words are lowercase ``[a-z']+`` runs. Over the full grid of the ``top_k`` most frequent
    words (pairs that never occur included, so there is no selection bias), each row is
    ``x = [log c(w1), log c(w2)]`` and the target is ``y = log(1 + c(w1 w2))``, where
    ``c(w1 w2)`` counts ``w1`` immediately followed by ``w2``. If words were independent,
    ``c(w1 w2) ~ c(w1) c(w2) / N``: unigram frequencies would explain the bigram table. The
    R^2 of the fit measures how much of it they do explain.

    Returns:
        X (top_k**2, 2) float64, y (top_k**2,) float64, the vocabulary (row-major order:
        row ``i * top_k + j`` is the pair ``(vocab[i], vocab[j])``), and N (number of words).
    Raises:
        ValueError: ``top_k < 2`` or the text has fewer than ``top_k`` distinct words.
    """
    words = WORD_RE.findall(text.lower())
    unigrams = Counter(words)
    if top_k < 2 or len(unigrams) < top_k:
        raise ValueError(f"need 2 <= top_k <= {len(unigrams)} distinct words, got top_k={top_k}")
    vocab = [w for w, _ in unigrams.most_common(top_k)]
    pos = {w: i for i, w in enumerate(vocab)}
    counts = torch.zeros(top_k, top_k, dtype=torch.float64)
    for w1, w2 in zip(words, words[1:]):
        i, j = pos.get(w1), pos.get(w2)
        if i is not None and j is not None:
            counts[i, j] += 1
    log_c = torch.tensor([math.log(unigrams[w]) for w in vocab], dtype=torch.float64)
    X = torch.stack([log_c[:, None].expand(top_k, top_k), log_c[None, :].expand(top_k, top_k)], dim=-1)
    return X.reshape(-1, 2), torch.log1p(counts).reshape(-1), vocab, len(words)


def r2_score(pred: Tensor, y: Tensor) -> float:
    """Coefficient of determination ``1 - SS_res / SS_tot``."""
    return 1.0 - (((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum()).item()


# --------------------------------------------------------------------------------------
# Part 3: a 2-layer MLP with a hand-written backward pass
# --------------------------------------------------------------------------------------


class MLPFunction(torch.autograd.Function):
    """``out = relu(x @ W1.T + b1) @ W2.T + b2`` with a hand-written backward.

    Shapes follow ``nn.Linear``: x (N, d_in), W1 (d_hidden, d_in), b1 (d_hidden,),
    W2 (d_out, d_hidden), b2 (d_out,); out (N, d_out). Use through ``MLPFunction.apply``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor) -> Tensor:
        # TODO(15): h = x @ W1.T + b1, a = relu(h), out = a @ W2.T + b2; save what backward needs on ctx (medium, ~15 min)
        raise NotImplementedError("TODO(15)")

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, Tensor, Tensor, Tensor, Tensor]:
        """grad_out (N, d_out) -> gradients of x, W1, b1, W2, b2 (each the shape of its input;
        ``None`` for x when x does not require grad)."""
        # TODO(16): chain rule layer by layer; every grad has its input's shape, biases sum over N, relu passes where h > 0 (hard, ~30 min)
        raise NotImplementedError("TODO(16)")


class ManualMLP(nn.Module):
    """Linear -> ReLU -> Linear whose forward/backward is :class:`MLPFunction`.

    Parameters live in two ``nn.Linear`` layers (same init and state-dict keys as
    ``nn.Sequential(nn.Linear, nn.ReLU, nn.Linear)`` with keys ``fc1``/``fc2``), but their
    modules are never called: the math is ours.
    Input (N, d_in), output (N, d_out).
    """

    def __init__(self, d_in: int, d_hidden: int, d_out: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if min(d_in, d_hidden, d_out) < 1:
            raise ValueError(f"layer sizes must be >= 1, got {d_in}, {d_hidden}, {d_out}")
        self.fc1 = nn.Linear(d_in, d_hidden, dtype=dtype)
        self.fc2 = nn.Linear(d_hidden, d_out, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        _require_tensor(x, "x", 2)
        if x.shape[1] != self.fc1.in_features:
            raise ValueError(f"x has {x.shape[1]} features, the MLP expects {self.fc1.in_features}")
        return MLPFunction.apply(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)

    def to_sequential(self) -> nn.Sequential:
        """An autograd-only ``nn.Sequential`` copy with the same weights (the reference)."""
        ref = nn.Sequential(nn.Linear(self.fc1.in_features, self.fc1.out_features),
                            nn.ReLU(),
                            nn.Linear(self.fc2.in_features, self.fc2.out_features))
        ref = ref.to(dtype=self.fc1.weight.dtype, device=self.fc1.weight.device)
        with torch.no_grad():
            for dst, src in ((ref[0], self.fc1), (ref[2], self.fc2)):
                dst.weight.copy_(src.weight)
                dst.bias.copy_(src.bias)
        return ref


# --------------------------------------------------------------------------------------
# Part 5: numerics and optimizers by hand (stable softmax / cross-entropy, AdamW, clipping)
# --------------------------------------------------------------------------------------


def _require_float(x: Tensor, name: str) -> None:
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if bool(torch.isnan(x).any()):
        raise ValueError(f"{name} contains NaN")


def stable_log_softmax(logits: Tensor, dim: int = -1) -> Tensor:
    """``log softmax(x) = (x - m) - log(sum(exp(x - m)))`` with ``m = max(x)`` along ``dim``.

    Subtracting the max first makes the largest exponent ``exp(0) = 1``: nothing overflows
    (``exp(89)`` is already ``inf`` in float32) and the log never sees 0 for the winning entry.
    ``-inf`` logits (masked positions) give ``-inf``; a slice that is entirely ``-inf`` has no
    distribution and is refused.

    Args:
        logits: any shape, floating point.
        dim: the class axis.
    Returns:
        same shape and dtype; ``exp`` of it sums to 1 along ``dim``. Reference:
        ``torch.log_softmax``.
    Raises:
        TypeError: non-float logits. ValueError: NaN, ``+inf``, or a slice that is all ``-inf``.
    """
    _require_tensor(logits, "logits")
    _require_float(logits, "logits")
    if bool(torch.isposinf(logits).any()):
        raise ValueError("logits contain +inf: the softmax is undefined (inf - inf)")
    if logits.numel() and bool(torch.isneginf(logits).all(dim=dim).any()):
        raise ValueError("a slice of logits is entirely -inf: nothing is left to normalise")
    # TODO(17): m = amax over dim (keepdim), shifted = logits - m, then shifted - log(sum(exp(shifted))) (medium, ~15 min)
    raise NotImplementedError("TODO(17)")


def stable_softmax(logits: Tensor, dim: int = -1) -> Tensor:
    """``exp(stable_log_softmax(logits))``: probabilities that sum to 1 along ``dim``,
    without overflow for large logits. Reference: ``torch.softmax``."""
    return stable_log_softmax(logits, dim).exp()


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean negative log-likelihood of the targets: ``-mean_n log softmax(logits[n])[targets[n]]``.

    Computed from :func:`stable_log_softmax`, never as ``log(softmax(x))`` (a probability that
    underflows to 0 gives ``log 0 = -inf``). The loss is in nats (natural log).

    Args:
        logits: shape (N, C), float.
        targets: shape (N,), int64 class ids in [0, C).
    Returns:
        0-d tensor. Reference: ``torch.nn.functional.cross_entropy(logits, targets)``.
    Raises:
        TypeError / ValueError: bad shapes or dtypes, N = 0, ids outside [0, C), NaN logits.
    """
    _require_tensor(logits, "logits", 2)
    _require_tensor(targets, "targets", 1)
    if targets.shape[0] != logits.shape[0] or logits.shape[0] == 0:
        raise ValueError(f"need N >= 1 targets for N logit rows, got {targets.shape[0]} and {logits.shape[0]}")
    _require_long(targets, "targets", logits.shape[1])
    # TODO(18): log-probabilities of every class, pick each row's target with gather (or arange indexing), negate, mean (easy, ~10 min)
    raise NotImplementedError("TODO(18)")


class AdamW:
    """AdamW (Loshchilov & Hutter 2019), written out: the same update as ``torch.optim.AdamW``.

    For each parameter ``p`` with gradient ``g`` at step ``t = 1, 2, ...``::

        p <- p * (1 - lr * weight_decay)            # decoupled weight decay (NOT added to g)
        m <- beta1 * m + (1 - beta1) * g            # first moment
        v <- beta2 * v + (1 - beta2) * g * g        # second moment
        m_hat = m / (1 - beta1 ** t);  v_hat = v / (1 - beta2 ** t)   # bias correction
        p <- p - lr * m_hat / (sqrt(v_hat) + eps)

    Parameters whose ``.grad`` is None are skipped (their step count does not advance).

    Raises:
        ValueError: a negative or NaN ``lr``/``eps``/``weight_decay``, betas outside [0, 1),
            or no parameters.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2) -> None:
        self.params = [p for p in params]
        if not self.params:
            raise ValueError("AdamW got an empty parameter list")
        for name, val in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay)):
            if not (math.isfinite(val) and val >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {val}")
        if not all(0.0 <= b < 1.0 for b in betas) or len(betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay
        self.state = [{"step": 0, "m": torch.zeros_like(p), "v": torch.zeros_like(p)} for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        for p, st in zip(self.params, self.state):
            if p.grad is None:
                continue
            g = p.grad
            st["step"] += 1
            t, m, v = st["step"], st["m"], st["v"]
            # TODO(19): decay p by (1 - lr * wd); update m and v in place; bias-correct both; p -= lr * m_hat / (sqrt(v_hat) + eps) (hard, ~25 min)
            raise NotImplementedError("TODO(19)")


def clip_grad_norm(params, max_norm: float) -> Tensor:
    """Rescale the gradients of ``params`` in place so that their GLOBAL L2 norm (all
    gradients together, as one long vector) is at most ``max_norm``.

    ``total = sqrt(sum_p ||p.grad||^2)``; every gradient is multiplied by
    ``min(1, max_norm / (total + 1e-6))`` (the 1e-6 is torch's, so a clipped norm lands just
    under ``max_norm``). Gradients already within the limit are left alone. Parameters without
    a gradient are skipped.

    Returns:
        the total norm BEFORE clipping (0-d tensor), as ``torch.nn.utils.clip_grad_norm_`` does.
    Raises:
        ValueError: ``max_norm`` not a finite number > 0.
    """
    if not (math.isfinite(max_norm) and max_norm > 0):
        raise ValueError(f"max_norm must be a finite number > 0, got {max_norm}")
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    # TODO(20): total = norm of the per-tensor norms; coef = (max_norm / (total + 1e-6)) clamped to <= 1; multiply every grad in place (medium, ~15 min)
    raise NotImplementedError("TODO(20)")


# --------------------------------------------------------------------------------------
# Part 4: timing (CPU always, CUDA when present)
# --------------------------------------------------------------------------------------


def _sync_for(device: torch.device) -> object:
    return torch.cuda.synchronize if device.type == "cuda" else None


def time_matmul(sizes: list[int], device: str | torch.device = "cpu", repeats: int = 5) -> list[dict[str, float]]:
    """Wall-clock of an (n, n) @ (n, n) float32 matmul for each n.

    Returns one dict per n: ``min_ms``, ``median_ms`` and ``gflops`` (2 n^3 flops / min time;
    the minimum is the least noisy estimate of what the hardware can do).
    """
    device = torch.device(device)
    rows = []
    for n in sizes:
        a = torch.randn(n, n, device=device)
        b = torch.randn(n, n, device=device)
        t = benchmark(lambda a=a, b=b: a @ b, repeats=repeats, warmup=2, name=f"matmul {n}",
                      sync=_sync_for(device))
        rows.append({"n": n, "min_ms": t.min * 1e3, "median_ms": t.median * 1e3,
                     "gflops": 2 * n**3 / t.min / 1e9})
    return rows


def time_mlp_step(batch: int, d_in: int, d_hidden: int, d_out: int = 1, device: str | torch.device = "cpu",
                  manual: bool = True, repeats: int = 5, seed: int = 0) -> Timing:
    """Time one forward + backward of an MLP on a random float32 batch (hand-written or autograd)."""
    device = torch.device(device)
    seed_everything(seed)
    mlp = ManualMLP(d_in, d_hidden, d_out).to(device)
    model: nn.Module = mlp if manual else mlp.to_sequential()
    x = torch.randn(batch, d_in, device=device)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(x).square().mean().backward()

    return benchmark(step, repeats=repeats, warmup=2, name=f"{'manual' if manual else 'autograd'} mlp",
                     sync=_sync_for(device))


# --------------------------------------------------------------------------------------
# Self-test / demo
# --------------------------------------------------------------------------------------


def _loop_checks(seed: int) -> list[tuple[str, bool]]:
    """Each puzzle against a plain-loop or torch reference on one random input."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(4, generator=g), torch.randn(6, generator=g)
    x, y = torch.randn(5, 3, generator=g), torch.randn(7, 3, generator=g)
    seq = torch.randn(4, 6, 3, generator=g)
    idx = torch.tensor([0, 5, 2, 3])
    labels = torch.tensor([2, 0, 4, 4, 1])
    scores = torch.randn(2, 6, 6, generator=g)
    q, k = torch.randn(2, 3, 5, 4, generator=g), torch.randn(2, 3, 7, 4, generator=g)
    logits = torch.randn(3, 10, generator=g)
    checks = [
        ("outer", torch.allclose(outer(a, b), torch.tensor([[ai * bj for bj in b] for ai in a]))),
        ("pairwise_sq_dists", torch.allclose(pairwise_sq_dists(x, y), torch.cdist(x, y) ** 2, atol=1e-5)),
        ("gather_positions", torch.equal(gather_positions(seq, idx), torch.stack([seq[i, j] for i, j in enumerate(idx)]))),
        ("one_hot", torch.equal(one_hot(labels, 5), torch.nn.functional.one_hot(labels, 5).float())),
        ("causal_mask", torch.equal(causal_mask(6), torch.tensor([[j <= i for j in range(6)] for i in range(6)]))),
        ("masked_softmax", torch.allclose(masked_softmax(scores, causal_mask(6)),
                                          torch.softmax(scores + torch.triu(torch.full((6, 6), -1e9), 1), -1))),
        ("running_mean", torch.allclose(running_mean(seq), torch.stack([seq[:, : t + 1].mean(1) for t in range(6)], 1))),
        ("attention_scores", torch.allclose(attention_scores(q, k), q @ k.transpose(-2, -1), atol=1e-6)),
        ("topk_filter", torch.equal(topk_filter(logits, 3).isfinite().sum(1), torch.full((3,), 3))),
        ("normalize_rows", torch.allclose(normalize_rows(x), torch.nn.functional.normalize(x, dim=1))),
    ]
    return checks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="whole corpus, larger regression grid and timing sizes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads for torch (default 1, so timings are comparable; 0 = torch's default)")
    args = ap.parse_args(argv)
    if args.threads < 0:
        ap.error("--threads must be >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    seed_everything(args.seed)
    failures: list[str] = []
    mode = "full" if args.full else "small"
    print(f"Lab 1.4 self-test ({mode} mode), torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s), "
          f"CUDA available: {torch.cuda.is_available()}")

    # 1. puzzles --------------------------------------------------------------------
    print("\n[1] Tensor puzzles vs loop/torch references")
    for name, ok in _loop_checks(args.seed):
        print(f"  {name:<18} {'ok' if ok else 'MISMATCH'}")
        if not ok:
            failures.append(f"puzzle {name}")

    # 2a. synthetic regression ------------------------------------------------------
    print("\n[2a] Synthetic regression (N=1000, d=5, noise=0.1, float64): closed form vs autograd vs nn.Module")
    X, y, w_true, b_true = make_synthetic_regression(1000, 5, 0.1, seed=args.seed)
    w_cf, b_cf = closed_form_lstsq(X, y)
    w_gd, b_gd, _ = fit_linear_autograd(X, y, lr=0.1, steps=500)
    model = LinearRegression(5, dtype=torch.float64)
    train_model(model, make_loader(X, y, batch_size=len(X), shuffle=False), torch.optim.SGD(model.parameters(), lr=0.1), 500)
    w_mod, b_mod = model.linear.weight.detach().squeeze(0), model.linear.bias.detach().squeeze(0)
    theta = lambda w, b: torch.cat([w, b.reshape(1)])  # noqa: E731
    rows = [("true weights", theta(w_true, b_true)), ("autograd GD", theta(w_gd, b_gd)),
            ("nn.Module + DataLoader", theta(w_mod, b_mod))]
    print(f"  {'method':<24}{'max |theta - closed form|':>28}")
    for label, th in rows:
        diff = (th - theta(w_cf, b_cf)).abs().max().item()
        print(f"  {label:<24}{diff:>28.2e}")
        if label != "true weights" and diff > 1e-3:
            failures.append(f"synthetic {label} differs from closed form by {diff:.2e}")

    # 2b. real regression on Tiny Shakespeare --------------------------------------
    text = read_text("tinyshakespeare", "input.txt")
    n_chars, top_k = (len(text), 500) if args.full else (300_000, 200)
    Xr, yr, vocab, n_words = bigram_regression_data(text[:n_chars], top_k=top_k)
    perm = torch.randperm(len(Xr), generator=torch.Generator().manual_seed(args.seed))
    n_train = int(0.8 * len(Xr))
    tr, te = perm[:n_train], perm[n_train:]
    print(f"\n[2b] Tiny Shakespeare bigram regression: first {n_chars:,} chars, {n_words:,} words, "
          f"top {top_k} words -> {len(Xr):,} pairs ({n_train:,} train / {len(te):,} test)")
    print("     target log(1 + count(w1 w2)), features [log count(w1), log count(w2)] + bias; "
          f"{(yr > 0).double().mean().item():.1%} of the pairs occur at least once")
    w_cf, b_cf = closed_form_lstsq(Xr[tr], yr[tr])
    Xs, mu, sd = standardize(Xr[tr])
    w_s, b_s, _ = fit_linear_autograd(Xs, yr[tr], lr=0.1, steps=500)
    w_gd, b_gd = unstandardize(w_s, b_s, mu, sd)
    indep = torch.log1p(torch.exp(Xr[te].sum(1) - math.log(n_words)))  # c(w1) c(w2) / N, no fitting
    print(f"  {'model':<28}{'w1':>9}{'w2':>9}{'b':>9}{'train R^2':>11}{'test R^2':>10}")
    for label, w, b in (("closed form (lstsq)", w_cf, b_cf), ("autograd GD (standardized)", w_gd, b_gd)):
        print(f"  {label:<28}{w[0].item():>9.4f}{w[1].item():>9.4f}{b.item():>9.4f}"
              f"{r2_score(Xr[tr] @ w + b, yr[tr]):>11.4f}{r2_score(Xr[te] @ w + b, yr[te]):>10.4f}")
    print(f"  {'independence c1*c2/N':<28}{'-':>9}{'-':>9}{'-':>9}{'-':>11}{r2_score(indep, yr[te]):>10.4f}")
    diff = (theta(w_gd, b_gd) - theta(w_cf, b_cf)).abs().max().item()
    print(f"  max |theta_GD - theta_closed_form| = {diff:.2e} (must be <= 1e-3)")
    if diff > 1e-3:
        failures.append(f"real-data autograd fit differs from closed form by {diff:.2e}")

    # 2c. SGD vs AdamW --------------------------------------------------------------
    print("\n[2c] SGD vs AdamW (lr 0.05), LinearRegression + DataLoader, 5 epochs; synthetic: batch 64, SGD lr 0.05;\n"
          "     Shakespeare: batch 256 on the RAW (unstandardized) log-count features, SGD lr 0.01")

    def cf_mse(Xa: Tensor, ya: Tensor, Xb: Tensor, yb: Tensor) -> float:
        w, b = closed_form_lstsq(Xa, ya)  # fit on (Xa, ya), score on (Xb, yb)
        return mse(Xb @ w + b, yb).item()

    floor = {"synthetic": cf_mse(X, y, X, y), "shakespeare": cf_mse(Xr[tr], yr[tr], Xr[tr], yr[tr])}
    curves = {"synthetic": compare_optimizers(X, y, epochs=5, batch_size=64, lr_sgd=0.05, seed=args.seed),
              "shakespeare": compare_optimizers(Xr[tr], yr[tr], epochs=5, batch_size=256, lr_sgd=0.01,
                                                seed=args.seed)}
    win = 25  # moving-average window for the table tail and the plot
    print(f"  {'data':<13}{'optimizer':<10}{'steps':>7}{'first loss':>12}{f'mean last {win}':>14}"
          f"{'closed-form MSE':>17}")
    for data, by_opt in curves.items():
        for opt_name, losses in by_opt.items():
            tail = sum(losses[-win:]) / win
            print(f"  {data:<13}{opt_name:<10}{len(losses):>7}{losses[0]:>12.4f}{tail:>14.4f}{floor[data]:>17.4f}")
            if not tail < 0.5 * losses[0] or tail > 1.5 * floor[data] + 0.05:
                failures.append(f"{opt_name} on {data} did not converge near the closed-form MSE")
    from labkit.plots import plt, savefig

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (data, by_opt) in zip(axes, curves.items()):
        for opt_name, losses in by_opt.items():
            curve = torch.tensor(losses)
            if data == "shakespeare":  # 625 noisy minibatch losses: show a moving average
                curve = curve.unfold(0, win, 1).mean(1)
            ax.plot(curve.numpy(), label=opt_name, lw=1.2)
        ax.axhline(floor[data], color="k", ls="--", lw=1, label="closed-form MSE (train)")
        ax.set_yscale("log")
        smooth = f", {win}-step moving average" if data == "shakespeare" else ""
        ax.set(title=f"{data}: minibatch MSE{smooth}", xlabel="step", ylabel="MSE (log scale)")
        ax.legend()
    fig_path = savefig(fig, HERE / "figures" / "sgd_vs_adamw.png")
    print(f"  wrote {fig_path.relative_to(HERE)}")
    print(f"  held-out MSE of the closed-form fit on the Shakespeare test pairs: "
          f"{cf_mse(Xr[tr], yr[tr], Xr[te], yr[te]):.4f}")

    # 3. hand-written backward ------------------------------------------------------
    print("\n[3] MLP with hand-written backward (Linear -> ReLU -> Linear)")
    g = torch.Generator().manual_seed(args.seed)
    inputs = tuple(torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)
                   for s in ((8, 5), (7, 5), (7,), (3, 7), (3,)))
    gc = torch.autograd.gradcheck(MLPFunction.apply, inputs, eps=1e-6, atol=1e-5, raise_exception=False)
    print(f"  torch.autograd.gradcheck (float64, N=8, d_in=5, d_hidden=7, d_out=3): {'passed' if gc else 'FAILED'}")
    if not gc:
        failures.append("gradcheck failed")
    mlp = ManualMLP(20, 64, 4, dtype=torch.float64)
    ref = mlp.to_sequential()
    xb = torch.randn(32, 20, dtype=torch.float64, generator=g)
    mlp(xb).square().mean().backward()
    ref(xb).square().mean().backward()
    worst = max((p.grad - q.grad).abs().max().item() for p, q in zip(mlp.parameters(), ref.parameters()))
    print(f"  max |grad_manual - grad_autograd| over all parameters (float64, 32x20 -> 64 -> 4): {worst:.2e}")
    if worst > 1e-10:
        failures.append(f"manual MLP grads differ from autograd by {worst:.2e}")

    # 5. numerics and optimizers by hand ----------------------------------------------
    print("\n[5] Stable softmax / cross-entropy, AdamW and gradient clipping vs torch (float32 logits)")
    print(f"  {'logits (one row, target 0)':<30}{'naive log(softmax)':>20}{'ours':>14}{'F.cross_entropy':>17}")
    for row in ([2.0, 1.0, 0.1], [100.0, 0.0, -100.0], [1e4, 0.0, -1e4], [-1e4, 0.0, 1e4]):
        x, t = torch.tensor([row]), torch.tensor([0])
        naive = -torch.log(torch.exp(x) / torch.exp(x).sum())[0, 0].item()
        ours_ce, ref_ce = cross_entropy(x, t).item(), F.cross_entropy(x, t).item()
        print(f"  {str(row):<30}{naive:>20.6g}{ours_ce + 0.0:>14.6g}{ref_ce + 0.0:>17.6g}")  # no "-0"
        if not math.isclose(ours_ce, ref_ce, rel_tol=1e-5, abs_tol=1e-5):
            failures.append(f"cross_entropy {ours_ce} != F.cross_entropy {ref_ce} on {row}")
    torch.manual_seed(args.seed)
    net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1)).double()
    net_ref = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1)).double()
    net_ref.load_state_dict(net.state_dict())
    opt_ours = AdamW(net.parameters(), lr=0.01, weight_decay=0.1)
    opt_ref = torch.optim.AdamW(net_ref.parameters(), lr=0.01, weight_decay=0.1)
    Xs_tr, y_tr = Xs[:512], yr[tr][:512]
    worst_adamw = worst_clip = 0.0
    for _ in range(100):  # 100 full-batch steps on the standardized Shakespeare features, clipped at 0.5
        for model, opt, clip in ((net, opt_ours, clip_grad_norm), (net_ref, opt_ref, torch.nn.utils.clip_grad_norm_)):
            opt.zero_grad()
            mse(model(Xs_tr).squeeze(-1), y_tr).backward()
            clip(model.parameters(), 0.5)
            opt.step()
        worst_clip = max(worst_clip, max((p.grad - q.grad).abs().max().item()
                                         for p, q in zip(net.parameters(), net_ref.parameters())))
    worst_adamw = max((p - q).abs().max().item() for p, q in zip(net.parameters(), net_ref.parameters()))
    print("  AdamW + clip_grad_norm (max_norm 0.5), 100 steps, float64 MLP 2 -> 16 -> 1 on the Shakespeare pairs:")
    print(f"    max |grad_ours - grad_torch| after clipping {worst_clip:.2e}; "
          f"max |param_ours - param_torch| after 100 steps {worst_adamw:.2e}")
    if worst_adamw > 1e-9 or worst_clip > 1e-9:
        failures.append(f"AdamW/clipping differ from torch: params {worst_adamw:.2e}, grads {worst_clip:.2e}")

    # 4. timing ---------------------------------------------------------------------
    sizes = [256, 512, 1024, 2048] if args.full else [128, 256, 512]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"\n[4] Timing (float32, 10 runs after 2 warm-ups, {torch.get_num_threads()} CPU thread(s))")
    print(f"  {'device':<7}{'matmul n':>9}{'min ms':>10}{'median ms':>11}{'GFLOP/s (min)':>15}")
    for dev in devices:
        for row in time_matmul(sizes, device=dev, repeats=10):
            print(f"  {dev:<7}{row['n']:>9}{row['min_ms']:>10.3f}{row['median_ms']:>11.3f}{row['gflops']:>15.1f}")
    batch, d_in, d_hidden = (1024, 512, 2048) if args.full else (256, 128, 512)
    print(f"  MLP train step (forward + backward), batch {batch}, {d_in} -> {d_hidden} -> 1:")
    print(f"  {'device':<7}{'backward':<10}{'min ms':>10}{'median ms':>11}")
    for dev in devices:
        mins = {}
        for manual in (True, False):
            t = time_mlp_step(batch, d_in, d_hidden, 1, device=dev, manual=manual, repeats=10)
            mins[manual] = t.min
            print(f"  {dev:<7}{'manual' if manual else 'autograd':<10}{t.min * 1e3:>10.3f}{t.median * 1e3:>11.3f}")
        print(f"  {dev:<7}manual / autograd (min times, this run): {mins[True] / mins[False]:.2f}x")
    print("  (wall-clock on a possibly shared machine: absolute times are noisy; read the ratios)")
    if torch.cuda.is_available():
        mlp_gpu = ManualMLP(20, 64, 4).to("cuda")
        xc = torch.randn(32, 20)
        same = torch.allclose(mlp_gpu(xc.cuda()).cpu(), mlp_gpu.cpu()(xc), atol=1e-5)
        print(f"  manual MLP output on cuda equals cpu (atol 1e-5): {same}")
        if not same:
            failures.append("cuda and cpu MLP outputs differ")

    print(f"\nself-test finished in {time.perf_counter() - t_start:.1f} s")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

# Generated from solution.py by `make labs` (labkit/labgen.py). Fill in the TODOs.
"""Interview drill: ML basics in NumPy only.

The "no frameworks" round of an ML interview: the interviewer hands you NumPy and a blank file
and asks for one of these, then asks how you would know it is right. Every function here is
checked against a reference on the same data (``test_lab.py``): PyTorch autograd and
``torch.optim.AdamW`` for the gradient maths, scikit-learn for the classical estimators.

=====================  =========================================  ==============================
TODO                   what                                       reference in the tests
=====================  =========================================  ==============================
1  softmax             max-subtracted, any axis                   torch.softmax
2  cross_entropy       mean loss and d loss / d logits            torch F.cross_entropy autograd
3  logistic regression binary, full-batch gradient descent        sklearn LogisticRegression(C=inf)
4  mlp_forward         Linear -> ReLU -> Linear, keep a cache     torch autograd
5  mlp_backward        hand backprop through the cache            torch autograd + numeric check
6  numerical_gradient  central differences                        analytic gradients
7  kmeans_plusplus     D^2 sampling of initial centres            sampling frequencies
8  kmeans              Lloyd iterations from given centres        sklearn KMeans(init=centres)
9  knn_predict         Euclidean k nearest, majority vote         sklearn KNeighborsClassifier
10 pca_fit             centre, SVD, variance with ddof=1          sklearn PCA (up to sign)
11 linreg_closed_form  least squares with an intercept            sklearn LinearRegression
12 linreg_gd           gradient descent on the MSE                the closed form
13 adamw_step          one decoupled-weight-decay Adam step       torch.optim.AdamW
=====================  =========================================  ==============================

Data: scikit-learn's bundled iris, digits and diabetes sets (shipped inside the wheel, no download).

Run: ``python solution.py`` (a few seconds on one CPU core): prints each comparison and exits
non-zero if one is off.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "adamw_step",
    "cross_entropy",
    "kmeans",
    "kmeans_plusplus",
    "knn_predict",
    "linreg_closed_form",
    "linreg_gd",
    "logistic_regression_gd",
    "mlp_backward",
    "mlp_forward",
    "mlp_init",
    "mlp_loss_and_grads",
    "numerical_gradient",
    "pca_fit",
    "pca_transform",
    "sigmoid",
    "softmax",
]


# --------------------------------------------------------------------------- input checks (given)
def _as_float_array(x: Any, name: str, ndim: int | None = None) -> np.ndarray:
    """Return ``x`` as a float ndarray; ValueError on empty, NaN/inf or the wrong rank."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64) if arr.dtype.kind in "iu" else arr
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def _as_labels(y: Any, n: int, n_classes: int | None = None, name: str = "y") -> np.ndarray:
    """Integer class ids of length ``n`` in ``[0, n_classes)``."""
    arr = np.asarray(y)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer class ids, got dtype {arr.dtype}")
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
    if arr.min() < 0 or (n_classes is not None and arr.max() >= n_classes):
        raise ValueError(f"{name} has class ids outside [0, {n_classes}): min {arr.min()}, max {arr.max()}")
    return arr.astype(np.int64)


# --------------------------------------------------------------------------- 1-2 softmax, cross-entropy
def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax along ``axis``, safe for huge logits.

    Args:
        z: float array of any shape (logits). Entries may be as large as 1e4; the output must
            still be finite and sum to 1 along ``axis``.
        axis: the class axis.
    Returns: array of ``z``'s shape and dtype, non-negative, summing to 1 along ``axis``.
    Raises: ValueError if ``z`` is empty or holds NaN/inf.
    Why: ``exp(1000)`` overflows float64 (max ~1.8e308, i.e. exp(709.8)); softmax is invariant
    to adding a constant per row, so subtract the row max first and the largest exponent is 0.
    """
    z = _as_float_array(z, "logits")
    # TODO(1): subtract the max along axis (keepdims), exponentiate, divide by the sum along axis (easy, ~5 min)
    raise NotImplementedError("TODO(1)")


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of integer labels under softmax(logits), and its gradient.

    Args:
        logits: (N, C) float array.
        y: (N,) integer class ids in [0, C).
    Returns: ``(loss, dlogits)``: ``loss = mean_i [logsumexp(logits_i) - logits_i[y_i]]`` as a
        Python float, and ``dlogits`` (N, C) = ``(softmax(logits) - onehot(y)) / N``.
    Raises: ValueError on a shape mismatch, NaN, or a label outside [0, C).
    Note: compute the loss through log-sum-exp, not ``log(softmax(...))``: a probability that
    underflows to 0 would give ``log(0) = -inf``.
    """
    logits = _as_float_array(logits, "logits", ndim=2)
    n, c = logits.shape
    y = _as_labels(y, n, c)
    # TODO(2): log-sum-exp with the row max pulled out, minus the target logit, averaged; gradient = (softmax - onehot) / N (easy, ~10 min)
    raise NotImplementedError("TODO(2)")


# --------------------------------------------------------------------------- 3 logistic regression
def sigmoid(z: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function (no overflow warning for large ``|z|``)."""
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def logistic_regression_gd(X: np.ndarray, y: np.ndarray, lr: float = 1.0, n_iter: int = 3000
                           ) -> tuple[np.ndarray, float, list[float]]:
    """Binary logistic regression without regularisation, by full-batch gradient descent.

    Minimises the mean log-loss ``-mean[y log p + (1-y) log(1-p)]`` with ``p = sigmoid(X w + b)``,
    starting from ``w = 0, b = 0``.

    Args:
        X: (N, D) features (standardise them: GD on raw scales needs a tiny lr).
        y: (N,) integer labels in {0, 1}.
        lr: step size. n_iter: number of full-batch steps.
    Returns: ``(w, b, losses)``: weights (D,), intercept, and the loss before each step.
    Raises: ValueError on bad shapes/labels, ``lr <= 0`` or ``n_iter < 1``.
    """
    X = _as_float_array(X, "X", ndim=2)
    y = _as_labels(y, X.shape[0], 2)
    if lr <= 0 or n_iter < 1:
        raise ValueError(f"need lr > 0 and n_iter >= 1, got lr={lr}, n_iter={n_iter}")
    n, d = X.shape
    w, b = np.zeros(d), 0.0
    losses: list[float] = []
    # TODO(3): loop: p = sigmoid(Xw+b); record the log-loss (use logaddexp for stability); gradient of the mean loss is X^T (p - y) / N and mean(p - y); step both (easy, ~15 min)
    raise NotImplementedError("TODO(3)")
    return w, b, losses


# --------------------------------------------------------------------------- 4-6 two-layer MLP
def mlp_init(d_in: int, d_hidden: int, d_out: int, seed: int = 0) -> dict[str, np.ndarray]:
    """He-initialised weights for ``Linear(d_in, d_hidden) -> ReLU -> Linear(d_hidden, d_out)``.

    Returns a dict ``W1 (d_in, d_hidden), b1 (d_hidden,), W2 (d_hidden, d_out), b2 (d_out,)``
    in float64 (so gradient checks are meaningful).
    """
    for name, v in (("d_in", d_in), ("d_hidden", d_hidden), ("d_out", d_out)):
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    rng = np.random.default_rng(seed)
    return {
        "W1": rng.normal(0.0, np.sqrt(2.0 / d_in), size=(d_in, d_hidden)),
        "b1": np.zeros(d_hidden),
        "W2": rng.normal(0.0, np.sqrt(2.0 / d_hidden), size=(d_hidden, d_out)),
        "b2": np.zeros(d_out),
    }


def mlp_forward(params: dict[str, np.ndarray], X: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Forward pass: ``logits = relu(X W1 + b1) W2 + b2``.

    Args:
        params: from ``mlp_init``. X: (N, d_in).
    Returns: ``(logits (N, d_out), cache)``; the cache holds what backward needs:
        ``X``, the pre-activation ``z1`` and the hidden activation ``h``.
    """
    X = _as_float_array(X, "X", ndim=2)
    if X.shape[1] != params["W1"].shape[0]:
        raise ValueError(f"X has {X.shape[1]} features, W1 expects {params['W1'].shape[0]}")
    # TODO(4): z1 = X W1 + b1, h = max(z1, 0), logits = h W2 + b2; cache X, z1, h (easy, ~5 min)
    raise NotImplementedError("TODO(4)")


def mlp_backward(params: dict[str, np.ndarray], cache: dict[str, np.ndarray], dlogits: np.ndarray
                 ) -> dict[str, np.ndarray]:
    """Backprop ``dlogits`` (N, d_out) through the MLP by hand.

    Returns: gradients with the same keys and shapes as ``params`` (``dW1, db1, ...`` stored
    under ``W1, b1, W2, b2``).
    """
    # TODO(5): dW2 = h^T dlogits, db2 = sum over rows; dh = dlogits W2^T; ReLU passes dh where z1 > 0; dW1 = X^T dz1, db1 = sum over rows (medium, ~20 min)
    raise NotImplementedError("TODO(5)")


def mlp_loss_and_grads(params: dict[str, np.ndarray], X: np.ndarray, y: np.ndarray
                       ) -> tuple[float, dict[str, np.ndarray]]:
    """Mean cross-entropy of the MLP on ``(X, y)`` and its gradients (forward, CE, backward)."""
    logits, cache = mlp_forward(params, X)
    loss, dlogits = cross_entropy(logits, y)
    return loss, mlp_backward(params, cache, dlogits)


def numerical_gradient(f: Callable[[], float], x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Central-difference gradient of the scalar ``f()`` with respect to the array ``x``.

    ``f`` takes no arguments and reads ``x`` (for example a closure over a params dict); this
    function perturbs ``x`` IN PLACE one entry at a time, ``(f(x+eps) - f(x-eps)) / (2 eps)``,
    and must leave ``x`` exactly as it found it.

    Returns: array of ``x``'s shape. Error is O(eps^2) (a forward difference is only O(eps)).
    """
    if not isinstance(x, np.ndarray) or x.dtype != np.float64:
        raise TypeError("numerical_gradient needs a float64 ndarray (float32 rounding swamps eps=1e-5)")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    grad = np.zeros_like(x)
    # TODO(6): iterate over every index (np.ndindex), save the entry, evaluate f at +eps and -eps, restore the saved value (easy, ~10 min)
    raise NotImplementedError("TODO(6)")
    return grad


# --------------------------------------------------------------------------- 7-8 k-means
def kmeans_plusplus(X: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """k-means++ initial centres (Arthur & Vassilvitskii 2007).

    The first centre is a uniformly random row of ``X``; each next one is a row drawn with
    probability proportional to D(x)^2, its squared distance to the nearest centre chosen so
    far. Use ``rng = np.random.default_rng(seed)``.

    Returns: (k, D) array of rows of ``X``.
    Raises: ValueError if ``k < 1`` or ``k > N``.
    """
    X = _as_float_array(X, "X", ndim=2)
    n = X.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, N={n}], got {k}")
    rng = np.random.default_rng(seed)
    # TODO(7): pick one row uniformly; keep d2 = squared distance to the closest centre so far; draw the next with p = d2 / d2.sum(); update d2 with a minimum (medium, ~15 min)
    raise NotImplementedError("TODO(7)")


def kmeans(X: np.ndarray, init: np.ndarray, n_iter: int = 100, tol: float = 0.0
           ) -> tuple[np.ndarray, np.ndarray, float]:
    """Lloyd's algorithm from the given initial centres.

    Each iteration: assign every row to its nearest centre (squared Euclidean; ties go to the
    lowest centre index), then move each centre to the mean of its rows (a centre that lost
    all its rows stays where it is). Stop after ``n_iter`` iterations or when the assignment
    no longer changes / centres move by at most ``tol``.

    Returns: ``(centres (k, D), labels (N,) int, inertia)`` where labels and inertia (sum of
        squared distances to the assigned centre) are computed for the RETURNED centres.
    """
    X = _as_float_array(X, "X", ndim=2)
    centres = _as_float_array(init, "init", ndim=2).copy()
    if centres.shape[1] != X.shape[1]:
        raise ValueError(f"init has {centres.shape[1]} features, X has {X.shape[1]}")
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    # TODO(8): distances (N, k) via broadcasting; labels = argmin; new centre = mean of its rows (keep empty ones); stop when labels repeat; finish with labels + inertia for the final centres (medium, ~15 min)
    raise NotImplementedError("TODO(8)")


# --------------------------------------------------------------------------- 9 kNN
def knn_predict(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, k: int = 5) -> np.ndarray:
    """k-nearest-neighbour classification (Euclidean distance, uniform majority vote).

    Ties in the vote go to the smallest class id (what scikit-learn does).

    Returns: (N_test,) int64 predicted labels.
    Raises: ValueError if ``k < 1`` or ``k > N_train`` or the feature counts differ.
    """
    X_train = _as_float_array(X_train, "X_train", ndim=2)
    X_test = _as_float_array(X_test, "X_test", ndim=2)
    y_train = _as_labels(y_train, X_train.shape[0], name="y_train")
    if X_train.shape[1] != X_test.shape[1]:
        raise ValueError(f"X_train has {X_train.shape[1]} features, X_test {X_test.shape[1]}")
    if not 1 <= k <= X_train.shape[0]:
        raise ValueError(f"k must be in [1, N_train={X_train.shape[0]}], got {k}")
    # TODO(9): squared distances via |a|^2 - 2ab + |b|^2 (no (N,M,D) tensor); argsort each row (stable), take k; bincount the neighbours' labels and argmax (easy, ~10 min)
    raise NotImplementedError("TODO(9)")


# --------------------------------------------------------------------------- 10 PCA
def pca_fit(X: np.ndarray, n_components: int) -> dict[str, np.ndarray]:
    """PCA via the SVD of the centred data.

    Returns: dict with ``mean`` (D,), ``components`` (n_components, D) (orthonormal rows, the
        top right-singular vectors), ``explained_variance`` (n_components,) = S^2 / (N - 1)
        (the unbiased variance, as scikit-learn reports) and ``explained_variance_ratio``.
    Raises: ValueError unless ``1 <= n_components <= min(N, D)`` and ``N >= 2``.
    """
    X = _as_float_array(X, "X", ndim=2)
    n, d = X.shape
    if n < 2:
        raise ValueError("PCA needs at least 2 rows")
    if not 1 <= n_components <= min(n, d):
        raise ValueError(f"n_components must be in [1, min(N, D)={min(n, d)}], got {n_components}")
    # TODO(10): centre the columns; U, S, Vt = svd(Xc, full_matrices=False); components = Vt[:k]; variance = S^2/(N-1); ratio over the total (easy, ~10 min)
    raise NotImplementedError("TODO(10)")


def pca_transform(model: dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """Project ``X`` onto the fitted components: ``(X - mean) @ components.T``."""
    X = _as_float_array(X, "X", ndim=2)
    return (X - model["mean"]) @ model["components"].T


# --------------------------------------------------------------------------- 11-12 linear regression
def linreg_closed_form(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Ordinary least squares with an intercept, closed form.

    Returns: ``(w (D,), b)`` minimising ``||X w + b - y||^2``.
    Note: solve with ``np.linalg.lstsq`` on ``[X, 1]`` (or centre X and y), not by inverting
    ``X^T X``: forming the normal equations squares the condition number.
    """
    X = _as_float_array(X, "X", ndim=2)
    y = _as_float_array(y, "y", ndim=1)
    if len(y) != len(X):
        raise ValueError(f"X has {len(X)} rows, y has {len(y)}")
    # TODO(11): append a column of ones, lstsq, split off the last coefficient as the intercept (easy, ~5 min)
    raise NotImplementedError("TODO(11)")


def linreg_gd(X: np.ndarray, y: np.ndarray, lr: float = 0.1, n_iter: int = 2000
              ) -> tuple[np.ndarray, float, list[float]]:
    """Linear regression by full-batch gradient descent on the MSE ``mean((X w + b - y)^2)``.

    Starts from zeros. Returns ``(w, b, losses)`` with the MSE before each step.
    The gradient of the mean squared error is ``2 X^T r / N`` and ``2 mean(r)``, r the residual.
    """
    X = _as_float_array(X, "X", ndim=2)
    y = _as_float_array(y, "y", ndim=1)
    if len(y) != len(X):
        raise ValueError(f"X has {len(X)} rows, y has {len(y)}")
    if lr <= 0 or n_iter < 1:
        raise ValueError(f"need lr > 0 and n_iter >= 1, got lr={lr}, n_iter={n_iter}")
    n, d = X.shape
    w, b = np.zeros(d), 0.0
    losses: list[float] = []
    # TODO(12): loop: r = Xw + b - y; record mean(r^2); w -= lr * 2 X^T r / N; b -= lr * 2 mean(r) (easy, ~10 min)
    raise NotImplementedError("TODO(12)")
    return w, b, losses


# --------------------------------------------------------------------------- 13 AdamW
def adamw_step(param: np.ndarray, grad: np.ndarray, m: np.ndarray, v: np.ndarray, t: int, *,
               lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
               weight_decay: float = 1e-2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One AdamW step (Loshchilov & Hutter 2019), as ``torch.optim.AdamW`` computes it.

    Args:
        param, grad, m, v: arrays of one shape (m, v: the first/second moment buffers, zeros
            before the first step). t: the step number, starting at 1.
    Returns: ``(new_param, new_m, new_v)`` (new arrays; the inputs are not modified).
    The decay is DECOUPLED: ``param *= 1 - lr * weight_decay`` directly, never added to the
    gradient (that would be Adam with L2, whose decay gets divided by sqrt(v)).
    """
    if t < 1:
        raise ValueError(f"t counts steps from 1, got {t}")
    if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
        raise ValueError(f"betas must be in [0, 1), got {betas}")
    if not (param.shape == grad.shape == m.shape == v.shape):
        raise ValueError(f"shape mismatch: param {param.shape}, grad {grad.shape}, m {m.shape}, v {v.shape}")
    b1, b2 = betas
    # TODO(13): decay the parameter by (1 - lr*wd); update m and v with grad; bias-correct by 1 - beta^t; step by lr * m_hat / (sqrt(v_hat) + eps) (medium, ~10 min)
    raise NotImplementedError("TODO(13)")


# --------------------------------------------------------------------------- self-test
def _standardise(X: np.ndarray) -> np.ndarray:
    return (X - X.mean(axis=0)) / X.std(axis=0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import torch
    from sklearn.cluster import KMeans
    from sklearn.datasets import load_diabetes, load_digits, load_iris
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    from labkit import seed_everything

    torch.set_num_threads(1)
    seed_everything(args.seed)
    t0 = time.perf_counter()
    rows: list[tuple[str, str, float, float]] = []

    def check(name: str, ref: str, value: float, tol: float) -> None:
        rows.append((name, ref, value, tol))

    # softmax / CE vs torch
    rng = np.random.default_rng(args.seed)
    logits = rng.normal(size=(8, 5)) * 50.0
    logits[0, 0] = 1000.0
    y = rng.integers(0, 5, size=8)
    loss, dlog = cross_entropy(logits, y)
    lt = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(lt, torch.tensor(y))
    ref.backward()
    check("softmax", "torch.softmax", float(np.abs(softmax(logits) - torch.softmax(lt, -1).detach().numpy()).max()),
          1e-12)
    check("cross_entropy loss", "F.cross_entropy", abs(loss - ref.item()), 1e-10)
    check("cross_entropy grad", "autograd", float(np.abs(dlog - lt.grad.numpy()).max()), 1e-12)

    # logistic regression vs sklearn (iris: versicolor vs virginica, not separable)
    Xi, yi = load_iris(return_X_y=True)
    keep = yi > 0
    Xb, yb = _standardise(Xi[keep]), (yi[keep] == 2).astype(np.int64)
    w, b, losses = logistic_regression_gd(Xb, yb, lr=8.0, n_iter=3000)
    sk = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10000).fit(Xb, yb)
    p_ours = sigmoid(Xb @ w + b)
    check("logreg max abs(p - p_sklearn)", "LogisticRegression(C=inf)",
          float(np.abs(p_ours - sk.predict_proba(Xb)[:, 1]).max()), 1e-4)
    check("logreg max abs(w - coef_)", "LogisticRegression(C=inf)", float(np.abs(w - sk.coef_[0]).max()), 1e-3)

    # MLP: gradient check + torch autograd + a short training run on digits
    Xd, yd = load_digits(return_X_y=True)
    Xd = Xd / 16.0
    params = mlp_init(64, 32, 10, seed=args.seed)
    xs, ys = Xd[:20], yd[:20]
    loss, grads = mlp_loss_and_grads(params, xs, ys)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    out = torch.relu(torch.tensor(xs) @ tp["W1"] + tp["b1"]) @ tp["W2"] + tp["b2"]
    torch.nn.functional.cross_entropy(out, torch.tensor(ys)).backward()
    check("mlp grads vs autograd", "torch autograd", max(float(np.abs(grads[k] - tp[k].grad.numpy()).max())
                                                         for k in params), 1e-12)
    num = numerical_gradient(lambda: mlp_loss_and_grads(params, xs, ys)[0], params["W2"])
    rel = np.abs(num - grads["W2"]).max() / max(np.abs(grads["W2"]).max(), 1e-12)
    check("mlp W2 numeric rel err", "central differences", float(rel), 1e-6)
    train_idx, test_idx = np.arange(0, 1500), np.arange(1500, len(Xd))
    p = mlp_init(64, 32, 10, seed=args.seed)
    mw = {k: np.zeros_like(v) for k, v in p.items()}
    vw = {k: np.zeros_like(v) for k, v in p.items()}
    first_loss = None
    for t in range(1, 201):
        loss, g = mlp_loss_and_grads(p, Xd[train_idx], yd[train_idx])
        first_loss = loss if first_loss is None else first_loss
        for k in p:
            p[k], mw[k], vw[k] = adamw_step(p[k], g[k], mw[k], vw[k], t, lr=1e-2, weight_decay=1e-4)
    acc = float((mlp_forward(p, Xd[test_idx])[0].argmax(1) == yd[test_idx]).mean())
    print(f"MLP 64-32-10 on digits, 200 full-batch AdamW steps: loss {first_loss:.3f} -> {loss:.3f}, "
          f"held-out accuracy {acc:.3f} ({len(test_idx)} images)")
    check("mlp held-out error (1 - acc)", "should learn digits", 1.0 - acc, 0.15)

    # AdamW vs torch over 5 steps
    rng = np.random.default_rng(args.seed + 1)
    p0 = rng.normal(size=(4, 3))
    tp0 = torch.tensor(p0.copy(), requires_grad=True)
    opt = torch.optim.AdamW([tp0], lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    pa, ma, va = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for t in range(1, 6):
        g = rng.normal(size=p0.shape)
        tp0.grad = torch.tensor(g)
        opt.step()
        pa, ma, va = adamw_step(pa, g, ma, va, t, lr=1e-2, weight_decay=0.1)
    check("adamw 5 steps (float64)", "torch.optim.AdamW", float(np.abs(pa - tp0.detach().numpy()).max()), 1e-12)

    # k-means vs sklearn from the same init
    init = kmeans_plusplus(Xd, 10, seed=args.seed)
    _, labels, inertia = kmeans(Xd, init, n_iter=300)
    skm = KMeans(n_clusters=10, init=init, n_init=1, max_iter=300, tol=0.0, algorithm="lloyd").fit(Xd)
    check("kmeans inertia rel diff", "KMeans(init=ours)", abs(inertia - skm.inertia_) / skm.inertia_, 1e-9)
    print(f"k-means on digits (k=10, our k-means++ init): inertia {inertia:.4f}, sklearn {skm.inertia_:.4f}")

    # kNN vs sklearn on digits
    pred = knn_predict(Xd[train_idx], yd[train_idx], Xd[test_idx], k=5)
    skn = KNeighborsClassifier(n_neighbors=5, algorithm="brute").fit(Xd[train_idx], yd[train_idx])
    agree = float((pred == skn.predict(Xd[test_idx])).mean())
    check("knn disagreement with sklearn", "KNeighborsClassifier", 1.0 - agree, 0.01)
    print(f"kNN (k=5) on digits: accuracy {float((pred == yd[test_idx]).mean()):.3f}, agreement with sklearn {agree:.3f}")

    # PCA vs sklearn
    pm = pca_fit(Xd, 5)
    skp = PCA(n_components=5, svd_solver="full").fit(Xd)
    cos = np.abs((pm["components"] * skp.components_).sum(axis=1))
    check("pca 1 - abs(cos(component, sklearn))", "PCA(svd_solver='full')", float(np.abs(cos - 1).max()), 1e-10)
    check("pca explained variance rel diff", "PCA", float(np.abs(pm["explained_variance"] / skp.explained_variance_
                                                                  - 1).max()), 1e-10)

    # linear regression vs sklearn
    Xr, yr = load_diabetes(return_X_y=True)
    Xr = _standardise(Xr)
    wc, bc = linreg_closed_form(Xr, yr)
    skl = LinearRegression().fit(Xr, yr)
    check("linreg closed-form coef diff", "LinearRegression", float(np.abs(wc - skl.coef_).max()), 1e-8)
    wg, bg, lg = linreg_gd(Xr, yr, lr=0.1, n_iter=2000)
    mse_c = float(np.mean((Xr @ wc + bc - yr) ** 2))
    check("linreg GD MSE rel gap to closed form", "closed form", lg[-1] / mse_c - 1, 1e-3)
    print(f"Linear regression on diabetes: closed-form MSE {mse_c:.3f}, GD after 2000 steps {lg[-1]:.3f}")

    print("\n| check | reference | measured | tolerance | ok |")
    print("|---|---|---|---|---|")
    failures = []
    for name, refname, value, tol in rows:
        ok = value <= tol
        failures += [] if ok else [name]
        print(f"| {name} | {refname} | {value:.2e} | {tol:.2g} | {'yes' if ok else 'NO'} |")
    print(f"\nself-test wall time: {time.perf_counter() - t0:.1f} s")
    if failures:
        print("FAILED:", ", ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

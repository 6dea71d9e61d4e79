"""Grader for the NumPy ML-basics drill. References: torch.softmax / F.cross_entropy autograd,
torch autograd through the same MLP, torch.optim.AdamW, and scikit-learn's LogisticRegression
(C=inf), KMeans (from our init), KNeighborsClassifier, PCA and LinearRegression on the bundled
iris / digits / diabetes sets. Each test also names the bug a learner typically plants."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return X / 16.0, y.astype(np.int64)


@pytest.fixture(scope="module")
def iris_binary():
    """Versicolor vs virginica, standardised: not linearly separable, so the unpenalised MLE exists."""
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    keep = y > 0
    X = X[keep]
    return (X - X.mean(0)) / X.std(0), (y[keep] == 2).astype(np.int64)


# --------------------------------------------------------------------------- input validation (given)
@pytest.mark.given
def test_bad_inputs_raise_clear_errors(lab):
    with pytest.raises(ValueError, match="NaN"):
        lab.softmax(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="empty"):
        lab.softmax(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="outside"):
        lab.cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(TypeError, match="integer"):
        lab.cross_entropy(np.zeros((2, 3)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="k must be"):
        lab.kmeans_plusplus(np.zeros((3, 2)), 4)
    with pytest.raises(ValueError, match="k must be"):
        lab.knn_predict(np.zeros((3, 2)), np.array([0, 1, 0]), np.zeros((1, 2)), k=5)
    with pytest.raises(ValueError, match="n_components"):
        lab.pca_fit(np.zeros((5, 3)), 4)
    with pytest.raises(ValueError, match="t counts steps from 1"):
        z = np.zeros(2)
        lab.adamw_step(z, z, z, z, 0)
    with pytest.raises(TypeError, match="float64"):
        lab.numerical_gradient(lambda: 0.0, np.zeros(3, dtype=np.float32))


# --------------------------------------------------------------------------- 1-2 softmax / cross-entropy
def test_softmax_matches_torch_on_every_axis(lab):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(3, 4, 5)) * 10
    for axis in (0, 1, -1):
        ours = lab.softmax(z, axis=axis)
        ref = torch.softmax(torch.tensor(z), dim=axis).numpy()
        assert np.allclose(ours, ref, atol=1e-12), (
            f"softmax along axis={axis} differs from torch: are you summing over the axis you were given "
            "(with keepdims=True so the division broadcasts)?")


def test_softmax_survives_huge_logits(lab):
    z = np.array([[1000.0, 999.0, -1000.0], [1e4, 1e4, 1e4]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = lab.softmax(z)
    assert np.all(np.isfinite(p)), (
        "softmax([1000, 999, -1000]) returned NaN/inf: exp(1000) overflows float64. Subtract the row max "
        "before exponentiating (softmax is shift-invariant).")
    assert np.allclose(p[0], [1 / (1 + np.e ** -1), 1 / (1 + np.e), 0.0], atol=1e-12)
    assert np.allclose(p[1], 1 / 3)


def test_cross_entropy_loss_and_gradient_match_torch_autograd(lab):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(16, 7)) * 3
    y = rng.integers(0, 7, size=16)
    loss, grad = lab.cross_entropy(logits, y)
    lt = torch.tensor(logits, requires_grad=True)
    ref = F.cross_entropy(lt, torch.tensor(y))
    ref.backward()
    assert isinstance(loss, float), "return the loss as a Python float (float(...))"
    assert abs(loss - ref.item()) < 1e-10, (
        f"loss {loss:.6f} vs torch {ref.item():.6f}: mean over the batch of logsumexp(row) - row[label]")
    assert grad.shape == logits.shape
    ratio = float(np.abs(grad).sum() / np.abs(lt.grad.numpy()).sum())
    assert np.allclose(grad, lt.grad.numpy(), atol=1e-12), (
        f"d loss / d logits differs from autograd (|ours| / |torch| = {ratio:.3f}; 16.0 means you forgot "
        "to divide by N for the mean). It is (softmax - onehot) / N.")


def test_cross_entropy_is_computed_in_log_space(lab):
    # p(label) = e^-1000 underflows to 0: log(softmax) gives inf; log-sum-exp gives 1000.
    loss, grad = lab.cross_entropy(np.array([[0.0, -1000.0]]), np.array([1]))
    assert np.isfinite(loss) and abs(loss - 1000.0) < 1e-9, (
        f"loss for logits [0, -1000] and label 1 should be 1000, got {loss}: compute logsumexp(z) - z[y], "
        "never log(softmax(z)) (the probability underflows to 0).")
    assert np.allclose(grad, [[1.0, -1.0]])


# --------------------------------------------------------------------------- 3 logistic regression
def test_logistic_regression_matches_sklearn_unpenalised(lab, iris_binary):
    from sklearn.linear_model import LogisticRegression

    X, y = iris_binary
    w, b, losses = lab.logistic_regression_gd(X, y, lr=8.0, n_iter=3000)
    sk = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10000).fit(X, y)
    assert len(losses) == 3000 and abs(losses[0] - np.log(2)) < 1e-12, (
        "losses[0] is the mean log-loss at w=0, b=0, which is log 2 = 0.6931: record the loss before each step")
    assert losses[-1] <= losses[0], "the loss went up: check the sign of your gradient step"
    assert np.abs(w - sk.coef_[0]).max() < 1e-3 and abs(b - sk.intercept_[0]) < 1e-3, (
        f"weights {np.round(w, 3)}, b={b:.3f} vs sklearn {np.round(sk.coef_[0], 3)}, b={sk.intercept_[0]:.3f}. "
        "Gradient of the MEAN log-loss is X^T (sigmoid(Xw+b) - y) / N; is the intercept updated too?")


# --------------------------------------------------------------------------- 4-6 MLP
def _torch_mlp_grads(params, X, y):
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    out = torch.relu(torch.tensor(X) @ tp["W1"] + tp["b1"]) @ tp["W2"] + tp["b2"]
    loss = F.cross_entropy(out, torch.tensor(y))
    loss.backward()
    return out.detach().numpy(), loss.item(), {k: t.grad.numpy() for k, t in tp.items()}


def test_mlp_forward_matches_torch(lab, digits):
    X, y = digits
    params = lab.mlp_init(64, 16, 10, seed=0)
    logits, cache = lab.mlp_forward(params, X[:32])
    ref, _, _ = _torch_mlp_grads(params, X[:32], y[:32])
    assert np.allclose(logits, ref, atol=1e-12), "logits != relu(X W1 + b1) W2 + b2 (torch on the same weights)"
    assert {"X", "z1", "h"} <= set(cache), "cache X, z1 (pre-ReLU) and h (post-ReLU) for the backward pass"


def test_mlp_backward_matches_torch_autograd(lab, digits):
    X, y = digits
    params = lab.mlp_init(64, 16, 10, seed=0)
    loss, grads = lab.mlp_loss_and_grads(params, X[:32], y[:32])
    _, ref_loss, ref = _torch_mlp_grads(params, X[:32], y[:32])
    assert abs(loss - ref_loss) < 1e-10
    for k in ("W2", "b2", "W1", "b1"):
        assert grads[k].shape == params[k].shape, f"grad {k} has shape {grads[k].shape}, param {params[k].shape}"
        err = float(np.abs(grads[k] - ref[k]).max())
        hint = {"W2": "dW2 = h^T dlogits", "b2": "db2 sums dlogits over the batch (axis 0)",
                "W1": "dz1 = (dlogits W2^T) * (z1 > 0): the ReLU mask uses the PRE-activation; dW1 = X^T dz1",
                "b1": "db1 = dz1 summed over the batch"}[k]
        assert err < 1e-12, f"grad {k} differs from torch autograd by {err:.2e}: {hint}"


def test_numerical_gradient_is_central_and_restores_x(lab):
    x = np.linspace(-1.0, 2.0, 7)
    before = x.copy()
    g = lab.numerical_gradient(lambda: float(np.sum(np.sin(x) * x ** 2)), x)
    exact = np.cos(before) * before ** 2 + 2 * before * np.sin(before)
    assert np.array_equal(x, before), "numerical_gradient must restore every entry of x after perturbing it"
    err = float(np.abs(g - exact).max())
    assert err < 1e-8, (
        f"max error {err:.1e} vs the exact derivative: a forward difference (f(x+eps) - f(x)) / eps errs by "
        "~eps*f''/2 ~ 1e-5; the central difference (f(x+eps) - f(x-eps)) / (2 eps) errs by ~eps^2.")


def test_gradient_check_on_the_mlp(lab, digits):
    X, y = digits
    params = lab.mlp_init(64, 8, 10, seed=1)
    xs, ys = X[:10], y[:10]
    _, grads = lab.mlp_loss_and_grads(params, xs, ys)
    for k in ("W2", "b1"):
        num = lab.numerical_gradient(lambda: lab.mlp_loss_and_grads(params, xs, ys)[0], params[k])
        rel = np.abs(num - grads[k]).max() / max(np.abs(grads[k]).max(), 1e-12)
        assert rel < 1e-6, f"gradient check on {k}: relative error {rel:.1e} (should be ~1e-9 in float64)"


# --------------------------------------------------------------------------- 7-8 k-means
def test_kmeans_plusplus_samples_by_squared_distance(lab):
    # Points 0, 1, 3 on a line. Whenever the first centre is 0, D^2 = [0, 1, 9]: the second
    # centre is 3 with probability 0.9 (0.75 with plain distance, 0.5 uniformly).
    X = np.array([[0.0], [1.0], [3.0]])
    second_given_zero = []
    for seed in range(1500):
        c = lab.kmeans_plusplus(X, 2, seed=seed)
        assert c.shape == (2, 1)
        assert c[0, 0] != c[1, 0], "k-means++ picked the same point twice: its D^2 is 0, so p must be 0"
        if c[0, 0] == 0.0:
            second_given_zero.append(c[1, 0])
    assert len(second_given_zero) > 300, "the first centre should be uniform over the rows"
    frac = float(np.mean(np.array(second_given_zero) == 3.0))
    assert 0.86 < frac < 0.94, (
        f"after picking 0 first, the far point 3 came second {frac:.2f} of the time; expected 0.9 = 9/(1+9). "
        "0.75 means you sample by distance instead of SQUARED distance; 0.5 means uniform sampling.")


def test_kmeans_plusplus_returns_rows_and_is_seeded(lab, digits):
    X, _ = digits
    a = lab.kmeans_plusplus(X, 10, seed=3)
    b = lab.kmeans_plusplus(X, 10, seed=3)
    assert a.shape == (10, 64) and np.array_equal(a, b), "use np.random.default_rng(seed): same seed, same centres"
    assert all((np.abs(X - c).sum(1) == 0).any() for c in a), "every initial centre must be a row of X"


def test_kmeans_matches_sklearn_from_the_same_init(lab, digits):
    from sklearn.cluster import KMeans

    X, y = digits
    X, y = X[:600], y[:600]
    # One image of each of the digits 0-7 as the start: no cluster empties during the run (sklearn would
    # relocate an empty cluster to a far point; this drill keeps it in place, so such runs can differ).
    init = X[[np.flatnonzero(y == c)[0] for c in range(8)]]
    centres, labels, inertia = lab.kmeans(X, init, n_iter=300)
    sk = KMeans(n_clusters=8, init=init, n_init=1, max_iter=300, tol=0.0, algorithm="lloyd").fit(X)
    assert abs(inertia - sk.inertia_) / sk.inertia_ < 1e-9, (
        f"inertia {inertia:.4f} vs sklearn {sk.inertia_:.4f} from the same initial centres: is the inertia the "
        "sum of SQUARED distances, computed for the final centres, and do you iterate to convergence?")
    assert np.array_equal(labels, sk.labels_)
    assert np.allclose(centres, sk.cluster_centers_, atol=1e-9)


# --------------------------------------------------------------------------- 9 kNN
def test_knn_matches_sklearn_on_digits(lab, digits):
    from sklearn.neighbors import KNeighborsClassifier

    X, y = digits
    tr, te = slice(0, 1400), slice(1400, None)
    for k in (1, 5):
        pred = lab.knn_predict(X[tr], y[tr], X[te], k=k)
        ref = KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(X[tr], y[tr]).predict(X[te])
        agree = float((pred == ref).mean())
        assert agree > 0.99, (
            f"k={k}: only {agree:.3f} of predictions agree with sklearn (accuracy {float((pred == y[te]).mean()):.3f})."
            " Sort distances ascending (nearest first) and take the majority label of the first k.")


def test_knn_ties_go_to_the_smallest_class(lab):
    Xtr = np.array([[0.0], [1.0], [-1.0], [5.0]])
    ytr = np.array([2, 1, 1, 2])
    assert lab.knn_predict(Xtr, ytr, np.array([[0.1]]), k=3)[0] == 1
    pred = lab.knn_predict(np.array([[0.0], [2.0]]), np.array([3, 1]), np.array([[1.0]]), k=2)
    assert pred[0] == 1, "a 1-1 vote between classes 1 and 3 should give 1 (smallest id, as sklearn)"


# --------------------------------------------------------------------------- 10 PCA
def test_pca_matches_sklearn_up_to_sign(lab, digits):
    from sklearn.decomposition import PCA

    X, _ = digits
    m = lab.pca_fit(X, 6)
    sk = PCA(n_components=6, svd_solver="full").fit(X)
    cos = np.abs((m["components"] * sk.components_).sum(1))
    assert np.allclose(cos, 1.0, atol=1e-9), (
        f"|cos| between your components and sklearn's: {np.round(cos, 3)}. Centre the columns before the SVD "
        "and take the rows of Vt (not the columns of U).")
    assert np.allclose(m["explained_variance"], sk.explained_variance_, rtol=1e-10), (
        "explained variance should be S^2 / (N - 1) (ddof=1, as sklearn); S^2 / N is the biased version")
    assert np.allclose(m["explained_variance_ratio"], sk.explained_variance_ratio_, rtol=1e-10)
    Z = lab.pca_transform(m, X[:5])
    assert np.allclose(np.abs(Z), np.abs(sk.transform(X[:5])), atol=1e-9)


# --------------------------------------------------------------------------- 11-12 linear regression
@pytest.fixture(scope="module")
def diabetes():
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    return (X - X.mean(0)) / X.std(0), y


def test_linreg_closed_form_matches_sklearn(lab, diabetes):
    from sklearn.linear_model import LinearRegression

    X, y = diabetes
    Xs = X + 3.0  # shift the features so a missing intercept cannot hide
    w, b = lab.linreg_closed_form(Xs, y)
    sk = LinearRegression().fit(Xs, y)
    assert np.allclose(w, sk.coef_, atol=1e-8) and abs(b - sk.intercept_) < 1e-7, (
        f"b={b:.4f} vs sklearn {sk.intercept_:.4f}: fit an intercept (append a column of ones) and solve with "
        "lstsq")


def test_linreg_gd_reaches_the_closed_form(lab, diabetes):
    X, y = diabetes
    w, b, losses = lab.linreg_gd(X, y, lr=0.1, n_iter=2000)
    wc, bc = lab.linreg_closed_form(X, y)
    mse = float(np.mean((X @ wc + bc - y) ** 2))
    assert len(losses) == 2000 and abs(losses[0] - np.mean(y ** 2)) < 1e-6, "losses[0] is the MSE at w=0, b=0"
    w1, b1, _ = lab.linreg_gd(X, y, lr=0.1, n_iter=1)
    assert np.allclose(w1, 0.1 * 2 * X.T @ y / len(y)) and abs(b1 - 0.1 * 2 * y.mean()) < 1e-9, (
        "one step from zeros should give w = lr * 2 X^T y / N and b = lr * 2 mean(y): the MSE gradient is "
        "2 X^T r / N (is the factor 2 or the 1/N missing?)")
    assert abs(b - bc) < 1e-6, f"intercept {b:.3f} vs closed form {bc:.3f}: update b with 2 * mean(residual)"
    assert losses[-1] / mse - 1 < 1e-3, (
        f"GD MSE {losses[-1]:.2f} vs closed-form {mse:.2f} after 2000 steps at lr=0.1: the MSE gradient is "
        "2 X^T r / N (did you drop the 1/N, or the factor 2?)")


# --------------------------------------------------------------------------- 13 AdamW
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adamw_matches_torch_over_several_steps(lab, wd):
    rng = np.random.default_rng(7)
    p0 = rng.normal(size=(5, 3))
    tp = torch.tensor(p0.copy(), requires_grad=True)
    opt = torch.optim.AdamW([tp], lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=wd)
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for t in range(1, 7):
        g = rng.normal(size=p0.shape)
        tp.grad = torch.tensor(g)
        opt.step()
        p_before, p_in = p.copy(), p
        p, m, v = lab.adamw_step(p_in, g, m, v, t, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=wd)
        assert np.array_equal(p_in, p_before), "adamw_step must not modify its inputs in place"
        err = float(np.abs(p - tp.detach().numpy()).max())
        assert err < 1e-10, (
            f"weight_decay={wd}, step {t}: differs from torch.optim.AdamW by {err:.1e}. "
            + ("Bias-correct m and v by 1 - beta^t (t from 1)." if wd == 0 else
               "Decay must be DECOUPLED: param *= (1 - lr*wd) directly. Adding wd*param to the gradient is "
               "Adam+L2, whose decay gets divided by sqrt(v_hat)."))

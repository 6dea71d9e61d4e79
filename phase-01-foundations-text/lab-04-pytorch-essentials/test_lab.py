"""Grader for lab 1.4 (PyTorch essentials and autograd).

Every puzzle is compared with a plain Python loop or a trusted torch function; the
regressions with ``numpy.linalg.lstsq``; the hand-written MLP backward with
``torch.autograd.gradcheck`` (float64) and with autograd through ``nn.Sequential``.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from labkit import read_text

SEED = 0


def gen(seed: int = SEED) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------
# Part 1: puzzles, each against a loop reference
# ----------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 6), m=st.integers(1, 6), seed=st.integers(0, 1000))
def test_outer_matches_loop(lab, n, m, seed):
    a, b = torch.randn(n, generator=gen(seed)), torch.randn(m, generator=gen(seed + 1))
    out = lab.outer(a, b)
    assert out.shape == (n, m), (
        f"outer of ({n},) and ({m},) must be ({n}, {m}), got {tuple(out.shape)}: "
        "a needs a trailing axis (a[:, None]) and b a leading one (b[None, :])")
    ref = torch.tensor([[a[i].item() * b[j].item() for j in range(m)] for i in range(n)])
    assert torch.allclose(out, ref), "out[i, j] must be a[i] * b[j]: did you put the new axes the other way round?"


def test_pairwise_sq_dists_matches_loop_and_cdist(lab):
    x, y = torch.randn(5, 3, generator=gen()), torch.randn(7, 3, generator=gen(1))
    out = lab.pairwise_sq_dists(x, y)
    assert out.shape == (5, 7), (
        f"expected (n, m) = (5, 7), got {tuple(out.shape)}: broadcast x[:, None, :] - y[None, :, :] to "
        "(n, m, d) and sum over the LAST axis only")
    ref = torch.tensor([[float(((x[i] - y[j]) ** 2).sum()) for j in range(7)] for i in range(5)])
    assert torch.allclose(out, ref, atol=1e-5), "entries are wrong: squared distance, not distance (no sqrt)"
    assert torch.allclose(out, torch.cdist(x, y) ** 2, atol=1e-4)
    with pytest.raises(ValueError, match="feature size"):
        lab.pairwise_sq_dists(x, torch.randn(4, 2))


def test_gather_positions_matches_loop(lab):
    x = torch.randn(4, 6, 3, generator=gen())
    idx = torch.tensor([5, 0, 2, 2])
    out = lab.gather_positions(x, idx)
    assert out.shape == (4, 3), (
        f"expected (B, C) = (4, 3), got {tuple(out.shape)}: x[:, idx] picks every idx for every "
        "sequence -> (B, B, C); index dim 0 with torch.arange(B) together with idx")
    ref = torch.stack([x[b, idx[b]] for b in range(4)])
    assert torch.equal(out, ref), "row b must be x[b, idx[b]]: are the batch and time indices paired up?"
    with pytest.raises(ValueError):
        lab.gather_positions(x, torch.tensor([0, 1, 2, 6]))  # 6 is out of range for T=6


def test_one_hot_matches_torch(lab):
    labels = torch.tensor([3, 0, 1, 3, 2, 0])
    out = lab.one_hot(labels, 5)
    assert out.shape == (6, 5), f"expected (N, C) = (6, 5), got {tuple(out.shape)}"
    assert out.dtype == torch.float32, f"one_hot returns float32 (ready for a matmul), got {out.dtype}"
    assert torch.equal(out, F.one_hot(labels, 5).float()), (
        "rows differ from F.one_hot: scatter_ along dim=1 with index labels[:, None] (shape (N, 1)); "
        "scattering along dim 0 sets columns instead of rows")
    with pytest.raises(ValueError):
        lab.one_hot(torch.tensor([0, 5]), 5)


@pytest.mark.parametrize("T", [1, 2, 7])
def test_causal_mask_matches_loop(lab, T):
    out = lab.causal_mask(T)
    assert out.dtype == torch.bool, f"the mask is bool (True = may attend), got {out.dtype}"
    ref = torch.tensor([[j <= i for j in range(T)] for i in range(T)])
    assert torch.equal(out, ref), (
        "mask[i, j] must be True exactly when j <= i (query i sees keys 0..i): is the mask upside down "
        "(triu instead of tril) or missing the diagonal?")


def test_masked_softmax_matches_loop(lab):
    scores = torch.randn(2, 5, 5, generator=gen())
    mask = torch.tril(torch.ones(5, 5, dtype=torch.bool))
    out = lab.masked_softmax(scores, mask)
    assert out.shape == scores.shape
    ref = torch.zeros_like(scores)
    for b in range(2):
        for t in range(5):
            keep = scores[b, t, : t + 1]
            ref[b, t, : t + 1] = torch.exp(keep - keep.max()) / torch.exp(keep - keep.max()).sum()
    assert torch.equal(out[:, ~mask], torch.zeros_like(out[:, ~mask])), (
        "masked positions must get probability exactly 0: fill them with -inf BEFORE the softmax "
        "(filling with 0 after a softmax leaves rows that no longer sum to 1)")
    assert torch.allclose(out, ref, atol=1e-6), "softmax over the last axis (keys), not over queries"
    with pytest.raises(ValueError, match="NaN"):
        lab.masked_softmax(scores, torch.zeros(5, 5, dtype=torch.bool))


@pytest.mark.parametrize("shape", [(2, 5, 3), (3, 4, 4)])
def test_running_mean_matches_loop(lab, shape):
    x = torch.randn(*shape, generator=gen())
    out = lab.running_mean(x)
    B, T, C = shape
    ref = torch.stack([torch.stack([x[b, : t + 1].mean(0) for t in range(T)]) for b in range(B)])
    assert out.shape == shape, f"shape must stay (B, T, C) = {shape}, got {tuple(out.shape)}"
    assert torch.allclose(out, ref, atol=1e-6), (
        f"wrong prefix means for shape {shape}: the counts 1..T must be shaped (T, 1) to line up with "
        "the T axis; a (T,) tensor lines up with C instead (and silently 'works' when T == C)")


def test_attention_scores_matches_bmm(lab):
    q, k = torch.randn(2, 3, 4, 5, generator=gen()), torch.randn(2, 3, 6, 5, generator=gen(1))
    out = lab.attention_scores(q, k)
    assert out.shape == (2, 3, 4, 6), (
        f"expected (B, H, T, S) = (2, 3, 4, 6), got {tuple(out.shape)}: keep b and h in the output, "
        "sum over d only ('bhtd,bhsd->bhts')")
    ref = torch.empty(2, 3, 4, 6)
    for b in range(2):
        for h in range(3):
            ref[b, h] = q[b, h] @ k[b, h].T
    assert torch.allclose(out, ref, atol=1e-5), "per-head scores differ from q @ k.T: did you sum over the wrong letter?"


def test_topk_filter_matches_loop(lab):
    logits = torch.randn(4, 9, generator=gen())
    out = lab.topk_filter(logits, 3)
    assert out.shape == logits.shape, "the filter keeps the (N, V) shape; it does not return only the top-k values"
    for i in range(4):
        thresh = sorted(logits[i].tolist())[-3]
        want = torch.where(logits[i] >= thresh, logits[i], torch.tensor(float("-inf")))
        assert torch.equal(out[i], want), (
            f"row {i}: keep the 3 largest logits IN PLACE (same columns, same values) and set the rest to "
            "-inf; topk's indices are per row, so scatter along dim -1")
    with pytest.raises(ValueError):
        lab.topk_filter(logits, 10)


def test_normalize_rows_square_input_catches_missing_keepdim(lab):
    x = torch.randn(4, 4, generator=gen())  # square: a missing keepdim broadcasts silently
    x[2] = 0.0
    out = lab.normalize_rows(x)
    ref = torch.stack([row / max(row.norm().item(), 1e-12) for row in x])
    assert torch.allclose(out, ref, atol=1e-6), (
        "rows must have unit length: x.norm(dim=1) is (N,) and divides the COLUMNS; use keepdim=True "
        "so the norms are (N, 1). An all-zero row must stay zero (clamp the norm), not become NaN")
    assert torch.allclose(out, F.normalize(x, dim=1), atol=1e-6)


# ----------------------------------------------------------------------------------------
# Part 2: linear regression
# ----------------------------------------------------------------------------------------


def numpy_lstsq(X: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    A = np.hstack([X.numpy(), np.ones((X.shape[0], 1))])
    return np.linalg.lstsq(A, y.numpy(), rcond=None)[0]  # (d + 1,), bias last


def theta(w: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return torch.cat([w.detach().reshape(-1), b.detach().reshape(1)]).double().numpy()


def test_closed_form_matches_numpy_lstsq(lab):
    X, y, w_true, b_true = lab.make_synthetic_regression(500, 4, noise=0.05, seed=SEED)
    w, b = lab.closed_form_lstsq(X, y)
    assert w.shape == (4,) and b.shape == (), f"w must be (d,) and b a 0-d tensor, got {tuple(w.shape)}, {tuple(b.shape)}"
    np.testing.assert_allclose(theta(w, b), numpy_lstsq(X, y), atol=1e-10, err_msg=(
        "closed form differs from numpy.linalg.lstsq: append a ones column for the bias and solve "
        "[X, 1] theta = y; without the bias column the intercept leaks into w"))
    assert np.abs(theta(w, b) - theta(w_true, b_true)).max() < 0.02, "with noise 0.05 the fit should recover the true weights"


def test_autograd_fit_matches_closed_form_synthetic(lab):
    X, y, _, _ = lab.make_synthetic_regression(800, 5, noise=0.1, seed=1)
    w, b, losses = lab.fit_linear_autograd(X, y, lr=0.1, steps=500)
    assert len(losses) == 500, f"one loss per step expected, got {len(losses)}"
    assert losses[-1] < losses[0] / 10, "the loss must fall: is the update w -= lr * grad (minus, not plus)?"
    assert not w.requires_grad and not b.requires_grad, "return detached tensors (w.detach()) so no graph leaks out"
    diff = np.abs(theta(w, b) - numpy_lstsq(X, y)).max()
    assert diff < 1e-3, (
        f"gradient descent ended {diff:.2e} from the least-squares solution (need < 1e-3): do you zero "
        "w.grad and b.grad after every step? grads accumulate, so without zeroing each step uses the sum "
        "of all past gradients")


def test_autograd_fit_matches_closed_form_on_tiny_shakespeare(lab):
    text = read_text("tinyshakespeare", "input.txt")[:100_000]
    X, y, vocab, n_words = lab.bigram_regression_data(text, top_k=60)
    assert X.shape == (3600, 2) and y.shape == (3600,)
    Xs, mu, sd = lab.standardize(X)
    w_s, b_s, _ = lab.fit_linear_autograd(Xs, y, lr=0.1, steps=400)
    w, b = lab.unstandardize(w_s, b_s, mu, sd)
    diff = np.abs(theta(w, b) - numpy_lstsq(X, y)).max()
    assert diff < 1e-3, f"on real data GD is {diff:.2e} from numpy's lstsq (need < 1e-3)"
    w_cf, b_cf = lab.closed_form_lstsq(X, y)
    np.testing.assert_allclose(theta(w_cf, b_cf), numpy_lstsq(X, y), atol=1e-8)
    r2 = lab.r2_score(X @ w_cf + b_cf, y)
    assert 0.05 < r2 < 0.9, f"unigram counts should explain part (not none, not all) of the bigram table, R^2={r2:.3f}"


def test_bigram_regression_data_counts_pairs(lab):
    text = "the cat saw the dog . the cat ran"
    X, y, vocab, n_words = lab.bigram_regression_data(text, top_k=3)
    assert n_words == 8 and vocab[0] == "the" and vocab[1] == "cat"
    i, j = vocab.index("the"), vocab.index("cat")
    assert math.isclose(y[i * 3 + j].item(), math.log(1 + 2)), "'the cat' occurs twice"
    assert math.isclose(X[i * 3 + j, 0].item(), math.log(3)) and math.isclose(X[i * 3 + j, 1].item(), math.log(2))


def test_train_model_full_batch_matches_closed_form(lab):
    X, y, _, _ = lab.make_synthetic_regression(400, 3, noise=0.1, seed=2)
    torch.manual_seed(SEED)
    model = lab.LinearRegression(3, dtype=torch.float64)
    loader = lab.make_loader(X, y, batch_size=len(X), shuffle=False)
    losses = lab.train_model(model, loader, torch.optim.SGD(model.parameters(), lr=0.1), epochs=400)
    assert len(losses) == 400, f"one loss per optimizer step expected (400), got {len(losses)}"
    w, b = model.linear.weight.squeeze(0), model.linear.bias.squeeze(0)
    diff = np.abs(theta(w, b) - numpy_lstsq(X, y)).max()
    assert diff < 1e-3, f"nn.Module + DataLoader training ended {diff:.2e} from lstsq (need < 1e-3)"


def test_train_model_equals_manual_sgd_steps(lab):
    """Three full-batch SGD steps must equal three hand-computed steps (catches a missing zero_grad)."""
    X, y, _, _ = lab.make_synthetic_regression(64, 3, seed=3)
    torch.manual_seed(SEED)
    model = lab.LinearRegression(3, dtype=torch.float64)
    w = model.linear.weight.detach().clone().squeeze(0).requires_grad_()
    b = model.linear.bias.detach().clone().squeeze(0).requires_grad_()
    for _ in range(3):
        loss = ((X @ w + b - y) ** 2).mean()
        gw, gb = torch.autograd.grad(loss, (w, b))
        with torch.no_grad():
            w -= 0.05 * gw
            b -= 0.05 * gb
    lab.train_model(model, lab.make_loader(X, y, 64, shuffle=False), torch.optim.SGD(model.parameters(), lr=0.05), 3)
    assert torch.allclose(model.linear.weight.squeeze(0), w, atol=1e-12), (
        "after 3 steps the weights differ from plain SGD: call optimizer.zero_grad() every step "
        "(backward ADDS into .grad), and step after backward")
    assert torch.allclose(model.linear.bias.squeeze(0), b, atol=1e-12)


def test_compare_optimizers_both_reach_least_squares(lab):
    X, y, _, _ = lab.make_synthetic_regression(640, 4, noise=0.1, seed=4)
    curves = lab.compare_optimizers(X, y, epochs=10, batch_size=64, lr_sgd=0.05, lr_adamw=0.05, seed=SEED)
    assert set(curves) == {"SGD", "AdamW"}
    w, b = lab.closed_form_lstsq(X, y)
    floor = ((X @ w + b - y) ** 2).mean().item()
    for name, losses in curves.items():
        assert len(losses) == 100, f"{name}: 10 epochs x 10 batches = 100 steps, got {len(losses)}"
        tail = sum(losses[-10:]) / 10
        assert tail < 3 * floor, f"{name} did not get near the least-squares MSE ({tail:.4f} vs {floor:.4f})"
    assert curves["SGD"] != curves["AdamW"], "the two optimizers produced identical curves: is the optimizer used?"


def test_accumulated_gradients_equal_full_batch(lab):
    X, y, _, _ = lab.make_synthetic_regression(50, 3, seed=5)
    torch.manual_seed(SEED)
    model = lab.LinearRegression(3, dtype=torch.float64)
    model.zero_grad()
    ((model(X) - y) ** 2).mean().backward()
    full = {n: p.grad.clone() for n, p in model.named_parameters()}
    for n_micro in (1, 4, 7):  # 7 does not divide 50: chunks of unequal size
        acc = lab.accumulated_gradients(model, X, y, n_micro)
        for name, g in full.items():
            assert torch.allclose(acc[name], g, atol=1e-12), (
                f"n_micro={n_micro}: accumulated {name}.grad != full-batch grad. Weight each chunk's mean "
                "loss by len(chunk) / N (not 1 / n_micro, which is wrong for unequal chunks), and zero the "
                "grads only once, before the first chunk")


# ----------------------------------------------------------------------------------------
# Autograd semantics the lab talks about (these document torch's behaviour)
# ----------------------------------------------------------------------------------------


def test_backward_twice_accumulates_and_no_grad_detach_cut_the_graph(lab):
    X, y, _, _ = lab.make_synthetic_regression(20, 2, seed=6)
    model = lab.LinearRegression(2, dtype=torch.float64)
    loss_fn = lambda: lab.mse(model(X), y)  # noqa: E731
    loss_fn().backward()
    g1 = model.linear.weight.grad.clone()
    loss_fn().backward()
    assert torch.allclose(model.linear.weight.grad, 2 * g1), "a second backward() adds to .grad (it doubles here)"
    model.zero_grad()
    assert model.linear.weight.grad is None or torch.all(model.linear.weight.grad == 0)
    with torch.no_grad():
        pred = model(X)
    assert pred.grad_fn is None and not pred.requires_grad, "under no_grad no graph is recorded"
    weight = model.linear.weight
    detached = weight.detach()
    assert not detached.requires_grad and detached.data_ptr() == weight.data_ptr(), (
        "detach() returns a tensor outside the graph that SHARES storage with the original")
    with torch.no_grad():
        detached[0, 0] = 123.0
    assert weight[0, 0].item() == 123.0, "an in-place change to the detached view shows in the parameter"
    assert isinstance(lab.evaluate(model, X, y), float)


# ----------------------------------------------------------------------------------------
# Part 3: the hand-written MLP backward
# ----------------------------------------------------------------------------------------


def test_mlp_forward_matches_nn_sequential(lab):
    torch.manual_seed(SEED)
    mlp = lab.ManualMLP(6, 10, 3)
    ref = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3))
    ref.load_state_dict({"0.weight": mlp.fc1.weight, "0.bias": mlp.fc1.bias,
                         "2.weight": mlp.fc2.weight, "2.bias": mlp.fc2.bias})
    x = torch.randn(16, 6, generator=gen())
    out = mlp(x)
    assert out.shape == (16, 3), f"expected (N, d_out) = (16, 3), got {tuple(out.shape)}"
    assert torch.allclose(out, ref(x), atol=1e-6), (
        "forward differs from nn.Sequential(Linear, ReLU, Linear): nn.Linear computes x @ W.T + b "
        "(W is (out, in)); is the ReLU between the two layers?")


def test_mlp_gradcheck_float64(lab):
    g = gen()
    inputs = tuple(torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)
                   for s in ((6, 4), (5, 4), (5,), (2, 5), (2,)))
    assert torch.autograd.gradcheck(lab.MLPFunction.apply, inputs, eps=1e-6, atol=1e-5), (
        "hand-written backward disagrees with finite differences")


def test_mlp_grads_match_autograd(lab):
    torch.manual_seed(SEED)
    mlp = lab.ManualMLP(8, 16, 2, dtype=torch.float64)
    ref = mlp.to_sequential()
    x1 = torch.randn(12, 8, dtype=torch.float64, generator=gen(), requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    target = torch.randn(12, 2, dtype=torch.float64, generator=gen(1))
    ((mlp(x1) - target) ** 2).mean().backward()
    ((ref(x2) - target) ** 2).mean().backward()
    names = ["W1", "b1", "W2", "b2"]
    for name, p, q in zip(names, mlp.parameters(), ref.parameters()):
        assert p.grad.shape == p.shape, f"grad of {name} must have {name}'s shape {tuple(p.shape)}"
        assert torch.allclose(p.grad, q.grad, atol=1e-10), (
            f"grad of {name} differs from autograd: weight grads are grad_out.T @ input (shape out x in), "
            "bias grads sum grad_out over the batch, and the ReLU passes gradient only where h > 0")
    assert torch.allclose(x1.grad, x2.grad, atol=1e-10), "grad of x must be grad_h @ W1"


def test_mlp_rejects_bad_input(lab):
    mlp = lab.ManualMLP(4, 8, 1)
    with pytest.raises(ValueError, match="features"):
        mlp(torch.randn(5, 3))
    with pytest.raises(ValueError):
        mlp(torch.randn(4))


# ----------------------------------------------------------------------------------------
# Part 4: timing, and CPU/GPU agreement
# ----------------------------------------------------------------------------------------


def test_timing_helpers(lab):
    rows = lab.time_matmul([32, 64], device="cpu", repeats=2)
    assert [r["n"] for r in rows] == [32, 64]
    for r in rows:
        assert 0 < r["min_ms"] <= r["median_ms"]
        assert math.isclose(r["gflops"], 2 * r["n"] ** 3 / (r["min_ms"] / 1e3) / 1e9, rel_tol=1e-9)
    t = lab.time_mlp_step(16, 8, 32, 1, device="cpu", manual=True, repeats=2)
    assert len(t.times) == 2 and t.min > 0


@pytest.mark.gpu
def test_gpu_matches_cpu(lab):
    torch.manual_seed(SEED)
    mlp = lab.ManualMLP(32, 64, 4, dtype=torch.float64)
    x = torch.randn(128, 32, dtype=torch.float64, generator=gen())
    mlp(x).square().mean().backward()
    cpu_grads = [p.grad.clone() for p in mlp.parameters()]
    mlp.zero_grad()
    mlp_gpu = mlp.to("cuda")
    out = mlp_gpu(x.cuda())
    out.square().mean().backward()
    for g_cpu, p in zip(cpu_grads, mlp_gpu.parameters()):
        assert p.grad.device.type == "cuda"
        assert torch.allclose(p.grad.cpu(), g_cpu, atol=1e-10), "float64 grads must agree between cuda and cpu"
    X, y, _, _ = lab.make_synthetic_regression(256, 4, seed=7)
    w_c, b_c, _ = lab.fit_linear_autograd(X, y, steps=200)
    w_g, b_g, _ = lab.fit_linear_autograd(X.cuda(), y.cuda(), steps=200)
    assert w_g.device.type == "cuda", "fit_linear_autograd must create w and b on X's device"
    assert torch.allclose(w_g.cpu(), w_c, atol=1e-8) and torch.allclose(b_g.cpu(), b_c, atol=1e-8)
    assert torch.equal(lab.causal_mask(5, device="cuda").cpu(), lab.causal_mask(5))
    rows = lab.time_matmul([256], device="cuda", repeats=3)
    assert rows[0]["median_ms"] > 0


# ----------------------------------------------------------------------------------------
# Input validation (outside the TODOs)
# ----------------------------------------------------------------------------------------


def test_validation_errors(lab):
    with pytest.raises(ValueError):
        lab.outer(torch.ones(2, 2), torch.ones(2))
    with pytest.raises(TypeError):
        lab.outer([1.0, 2.0], torch.ones(2))
    with pytest.raises(TypeError):
        lab.gather_positions(torch.ones(2, 3, 4), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError):
        lab.causal_mask(0)
    with pytest.raises(TypeError):
        lab.masked_softmax(torch.ones(3, 3), torch.ones(3, 3))
    with pytest.raises(ValueError):
        lab.closed_form_lstsq(torch.ones(5, 2, dtype=torch.float64), torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError):
        lab.closed_form_lstsq(torch.ones(2, 3, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError):
        lab.fit_linear_autograd(torch.ones(5, 2), torch.ones(5), lr=0.0)
    with pytest.raises(ValueError, match="broadcast"):
        lab.mse(torch.ones(4, 1), torch.ones(4))
    with pytest.raises(ValueError):
        lab.accumulated_gradients(lab.LinearRegression(2), torch.ones(3, 2), torch.ones(3), 4)


# ----------------------------------------------------------------------------------------
# Part 5: numerics and optimizers by hand
# ----------------------------------------------------------------------------------------

EXTREME = [
    torch.tensor([[1e4, 0.0, -1e4], [-50.0, -60.0, -70.0], [0.0, 0.0, 0.0]]),
    torch.tensor([[1e38, 5e37, -1e38], [88.8, 89.0, 90.0], [-1e30, -1e30 + 1e24, -1e30]]),
    torch.tensor([[1000.0, 1000.0], [-1000.0, 1000.0]]),
]


@pytest.mark.parametrize("k", range(len(EXTREME)))
def test_log_softmax_and_cross_entropy_on_extreme_logits(lab, k):
    x = EXTREME[k]
    logp = lab.stable_log_softmax(x, dim=-1)
    assert torch.isfinite(logp).all(), (
        f"log-softmax of {x.tolist()} has inf/NaN entries: exp(x) overflows float32 above ~88. "
        "Subtract each row's max before exponentiating")
    assert torch.allclose(logp, torch.log_softmax(x, dim=-1), rtol=1e-5, atol=1e-5), (
        "log-softmax differs from torch.log_softmax: (x - m) - log(sum(exp(x - m)))")
    assert torch.allclose(lab.stable_softmax(x), torch.softmax(x, dim=-1), atol=1e-6)
    targets = torch.arange(x.shape[0]) % x.shape[1]
    ce = lab.cross_entropy(x, targets)
    ref = F.cross_entropy(x, targets)
    assert ce.shape == () and torch.isfinite(ce), "cross_entropy returns a finite 0-d tensor (the mean over rows)"
    assert torch.allclose(ce, ref, rtol=1e-5, atol=1e-4), (
        f"cross-entropy {ce.item():.6g} vs F.cross_entropy {ref.item():.6g}: take -log_softmax at each "
        "target and average over the batch (never log(softmax(x)): it underflows to log 0)")


def test_log_softmax_other_dims_and_masks(lab):
    x = torch.randn(2, 3, 5, generator=gen(), dtype=torch.float64) * 30
    for dim in (0, 1, 2, -1):
        assert torch.allclose(lab.stable_log_softmax(x, dim), torch.log_softmax(x, dim), atol=1e-12), (
            f"dim={dim}: reduce over the given axis with keepdim=True so the max broadcasts back")
    masked = x.clone()
    masked[..., 1] = float("-inf")
    got = lab.stable_log_softmax(masked)
    assert torch.isneginf(got[..., 1]).all() and torch.allclose(got, torch.log_softmax(masked, -1))
    g = torch.randn(4, 6, dtype=torch.float64, generator=gen(1), requires_grad=True)
    t = torch.tensor([0, 5, 2, 2])
    assert torch.autograd.gradcheck(lambda z: lab.cross_entropy(z, t), (g,)), "cross-entropy must be differentiable"


@pytest.mark.given
def test_cross_entropy_bad_input(lab):
    x = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="outside"):
        lab.cross_entropy(x, torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match="outside"):
        lab.cross_entropy(x, torch.tensor([0, -1, 1]))
    with pytest.raises(TypeError):
        lab.cross_entropy(x, torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="NaN"):
        lab.stable_log_softmax(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="-inf"):
        lab.stable_log_softmax(torch.full((2, 3), float("-inf")))


def _two_models(seed: int = 0):
    torch.manual_seed(seed)
    a = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    b = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adamw_equals_torch(lab, wd):
    ours_model, ref_model = _two_models()
    ours = lab.AdamW(ours_model.parameters(), lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=wd)
    ref = torch.optim.AdamW(ref_model.parameters(), lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=wd)
    X, y = torch.randn(32, 5, generator=gen(), dtype=torch.float64), torch.randn(32, 2, generator=gen(1), dtype=torch.float64)
    for step in range(25):
        for model, opt in ((ours_model, ours), (ref_model, ref)):
            opt.zero_grad()
            ((model(X) - y) ** 2).mean().backward()
            opt.step()
        for (name, p), q in zip(ours_model.named_parameters(), ref_model.parameters()):
            assert torch.allclose(p, q, rtol=1e-9, atol=1e-12), (
                f"step {step + 1}, {name}: differs from torch.optim.AdamW (weight_decay={wd}). Check the "
                "bias corrections 1 - beta**t (t starts at 1), eps added to sqrt(v_hat), and that weight decay "
                "scales p by (1 - lr * wd) instead of being added to the gradient")


def test_clip_grad_norm_equals_torch(lab):
    for max_norm in (0.05, 1e3):  # the first clips, the second must leave the grads alone
        ours_model, ref_model = _two_models(1)
        X = torch.randn(16, 5, generator=gen(2), dtype=torch.float64)
        for model in (ours_model, ref_model):
            model(X).pow(2).sum().backward()
        total = lab.clip_grad_norm(ours_model.parameters(), max_norm)
        ref_total = torch.nn.utils.clip_grad_norm_(ref_model.parameters(), max_norm)
        assert torch.allclose(torch.as_tensor(total, dtype=torch.float64), ref_total, rtol=1e-12), (
            "return the total norm BEFORE clipping: sqrt of the sum of every gradient's squared norm")
        for p, q in zip(ours_model.parameters(), ref_model.parameters()):
            assert torch.allclose(p.grad, q.grad, rtol=1e-12, atol=1e-15), (
                f"max_norm={max_norm}: gradients differ from clip_grad_norm_. One GLOBAL norm over all "
                "parameters, scale = min(1, max_norm / (total + 1e-6)), never scale up")


@pytest.mark.given
def test_optimizer_bad_arguments(lab):
    p = [nn.Parameter(torch.zeros(2))]
    for kwargs in ({"lr": float("nan")}, {"lr": -1.0}, {"betas": (0.9, 1.0)}, {"weight_decay": float("inf")}):
        with pytest.raises(ValueError):
            lab.AdamW(p, **kwargs)
    with pytest.raises(ValueError, match="empty"):
        lab.AdamW([])
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="max_norm"):
            lab.clip_grad_norm(p, bad)

"""Grader for lab 3.2 (LSTM and GRU).

Forward values AND gradients are compared with torch.nn.LSTMCell / GRUCell / RNN / LSTM / GRU: a cell
whose forward is right but whose backward path is cut (a stray .detach(), an in-place op) fails here.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from labkit import load_lab, seed_everything

char_rnn = load_lab("3.1")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny recurrent ops run fastest (and least noisily on a shared CPU) on one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)



def _state_close(a, b, atol=1e-6):
    if isinstance(a, tuple):
        return all(torch.allclose(x, y, atol=atol) for x, y in zip(a, b))
    return torch.allclose(a, b, atol=atol)


def test_lstm_cell_matches_torch(lab):
    seed_everything(0)
    ref = nn.LSTMCell(6, 10)
    cell = char_rnn.load_torch_weights(lab.LSTMCell(6, 10), ref)
    x = torch.randn(4, 6)
    state = (torch.randn(4, 10), torch.randn(4, 10))
    for _ in range(3):
        want, got = ref(x, state), cell(x, state)
        assert isinstance(got, tuple) and len(got) == 2, "LSTMCell must return (h, c)"
        assert torch.allclose(got[1], want[1], atol=1e-6), \
            "cell state c differs from nn.LSTMCell: gate order is i, f, g, o; c' = f*c + i*g"
        assert torch.allclose(got[0], want[0], atol=1e-6), "h differs from nn.LSTMCell: h' = o * tanh(c')"
        state = want
    with pytest.raises(TypeError):
        cell(x, torch.zeros(4, 10))


def test_gru_cell_matches_torch(lab):
    seed_everything(1)
    ref = nn.GRUCell(6, 10)
    cell = char_rnn.load_torch_weights(lab.GRUCell(6, 10), ref)
    x, h = torch.randn(4, 6), torch.randn(4, 10)
    for _ in range(3):
        want, got = ref(x, h), cell(x, h)
        assert torch.allclose(got, want, atol=1e-6), (
            "GRUCell differs from nn.GRUCell. Gate order is r, z, n; the reset gate multiplies "
            "(h W_hn + b_hn) including its bias; and h' = (1 - z) * n + z * h (not z * n)"
        )
        h = want


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_unroll_matches_fused_layer(lab, kind):
    seed_everything(2)
    ref = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[kind](5, 8, batch_first=True)
    cell = lab.load_torch_layer_weights(lab.CELLS[kind](5, 8), ref)
    x = torch.randn(3, 12, 5)
    want_out, want_state = ref(x)
    got_out, got_state = lab.unroll(cell, x)
    assert got_out.shape == (3, 12, 8), "unroll returns outputs (B, T, H)"
    assert torch.allclose(got_out, want_out, atol=1e-6), f"a 12-step unroll differs from nn.{kind.upper()}"
    if kind == "lstm":
        assert torch.allclose(got_state[0], want_state[0][0], atol=1e-6)
        assert torch.allclose(got_state[1], want_state[1][0], atol=1e-6), "final c differs from nn.LSTM's c_n"
    else:
        assert torch.allclose(got_state, want_state[0], atol=1e-6)


PARAM_PAIRS = [("x2h.weight", "weight_ih"), ("x2h.bias", "bias_ih"), ("h2h.weight", "weight_hh"), ("h2h.bias", "bias_hh")]


def _leaf(t):
    return t.detach().clone().requires_grad_(True)


def _grad_close(got, want, atol=1e-5):
    """Both gradients exist and agree (a tensor cut off from the loss has .grad None)."""
    return got is not None and want is not None and torch.allclose(got, want, atol=atol)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_cell_gradients_match_torch(lab, kind):
    """One step, a loss that weights every output unit differently: every gradient must equal torch.nn's."""
    seed_everything(6)
    ref = {"lstm": nn.LSTMCell, "gru": nn.GRUCell}[kind](5, 7)
    cell = char_rnn.load_torch_weights(lab.CELLS[kind](5, 7), ref)
    x = torch.randn(3, 5)
    state = (torch.randn(3, 7), torch.randn(3, 7)) if kind == "lstm" else torch.randn(3, 7)
    w = torch.randn(2, 3, 7)

    def run(module, x, state):
        out = module(x, state)
        outs = out if isinstance(out, tuple) else (out,)
        return sum((o * w[i]).sum() for i, o in enumerate(outs))

    xs = [_leaf(x), _leaf(x)]
    states = [tuple(_leaf(s) for s in state) if kind == "lstm" else _leaf(state) for _ in range(2)]
    run(ref, xs[0], states[0]).backward()
    run(cell, xs[1], states[1]).backward()
    mine = dict(cell.named_parameters())
    for ours, theirs in PARAM_PAIRS:
        assert _grad_close(mine[ours].grad, getattr(ref, theirs).grad), \
            f"{kind}: the gradient of {ours} differs from nn.{kind.upper()}Cell's {theirs} although the forward matches"
    assert _grad_close(xs[1].grad, xs[0].grad), f"{kind}: dL/dx differs from torch.nn's"
    if kind == "lstm":
        for i, what in enumerate(("h", "c")):
            assert _grad_close(states[1][i].grad, states[0][i].grad), \
                f"lstm: dL/d{what} (previous state) differs from nn.LSTMCell's: does every path from the old " \
                "state to the new one carry gradient?"
    else:
        assert _grad_close(states[1].grad, states[0].grad), (
            "gru: dL/dh (previous state) differs from nn.GRUCell's although the forward matches: the old state "
            "reaches h' through z * h, through the gates and through r * (W_hn h + b_hn); does gradient flow "
            "through all of them?"
        )


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_unroll_gradients_match_fused_layer(lab, kind):
    """BPTT over 9 steps from a non-zero start state: gradients of all weights, the inputs and h0."""
    seed_everything(3)
    ref = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[kind](4, 6, batch_first=True)
    cell = lab.load_torch_layer_weights(lab.CELLS[kind](4, 6), ref)
    x = torch.randn(2, 9, 4)
    h0, c0 = torch.randn(2, 6), torch.randn(2, 6)
    w_out, w_h, w_c = torch.randn(2, 9, 6), torch.randn(2, 6), torch.randn(2, 6)

    x_ref, x_mine = _leaf(x), _leaf(x)
    h_ref, h_mine, c_ref, c_mine = _leaf(h0), _leaf(h0), _leaf(c0), _leaf(c0)
    if kind == "lstm":
        out, (h_n, c_n) = ref(x_ref, (h_ref[None], c_ref[None]))
        loss_ref = (out * w_out).sum() + (h_n[0] * w_h).sum() + (c_n[0] * w_c).sum()
        out, (h_n, c_n) = lab.unroll(cell, x_mine, (h_mine, c_mine))
        loss_mine = (out * w_out).sum() + (h_n * w_h).sum() + (c_n * w_c).sum()
    else:
        out, h_n = ref(x_ref, h_ref[None])
        loss_ref = (out * w_out).sum() + (h_n[0] * w_h).sum()
        out, h_n = lab.unroll(cell, x_mine, h_mine)
        loss_mine = (out * w_out).sum() + (h_n * w_h).sum()
    loss_ref.backward()
    loss_mine.backward()
    mine = dict(cell.named_parameters())
    for ours, theirs in PARAM_PAIRS:
        assert _grad_close(mine[ours].grad, getattr(ref, theirs + "_l0").grad), (
            f"BPTT through your {kind} unroll gives a different gradient for {ours} than nn.{kind.upper()} "
            "(any in-place op or detach in the loop or the cell?)"
        )
    assert _grad_close(x_mine.grad, x_ref.grad), f"{kind}: dL/dx_t differs from nn.{kind.upper()}'s"
    assert _grad_close(h_mine.grad, h_ref.grad), \
        f"{kind}: dL/dh_0 differs from nn.{kind.upper()}'s: the gradient must flow back through all 9 steps"
    if kind == "lstm":
        assert _grad_close(c_mine.grad, c_ref.grad), "lstm: dL/dc_0 differs from nn.LSTM's"


def test_hidden_size_for_budget(lab):
    for kind in ("rnn", "lstm", "gru"):
        H = lab.hidden_size_for_budget(kind, 65, 32, 31_201)
        n = lab.count_params(char_rnn.CharRNN(65, 32, H, cell_cls=lab.CELLS[kind]))
        n_next = lab.count_params(char_rnn.CharRNN(65, 32, H + 1, cell_cls=lab.CELLS[kind]))
        assert n <= 31_201 < n_next, \
            f"{kind}: H={H} gives {n} params, H+1 gives {n_next}; want the largest H within the budget " \
            "(LSTM has 4 gate blocks, GRU 3, each with two biases)"
    assert lab.hidden_size_for_budget("rnn", 65, 32, 31_201) == 128
    with pytest.raises(ValueError):
        lab.hidden_size_for_budget("transformer", 65, 32, 10_000)
    with pytest.raises(ValueError):
        lab.hidden_size_for_budget("lstm", 65, 32, 100)


def test_hidden_grad_norms(lab):
    seed_everything(4)
    model = char_rnn.CharRNN(20, n_embd=8, hidden_size=16)
    idx, y = torch.randint(0, 20, (3, 15)), torch.randint(0, 20, (3, 15))
    g = lab.hidden_grad_norms(model, idx, y)
    assert g.shape == (15,), "one norm per time step"
    assert g.dtype == torch.float64, "hidden_grad_norms measures on a float64 copy of the model"
    # the last step: dL/dh_{T-1} = head.weight^T (softmax - onehot) / B
    logits, _ = model(idx)
    p = torch.softmax(logits[:, -1], -1) - F.one_hot(y[:, -1], 20).float()
    want_last = (p @ model.head.weight / 3).norm().double()
    assert torch.allclose(g[-1], want_last, atol=1e-6), \
        "norm at the last step is wrong: the loss is the mean CE of the LAST position only"
    assert (g[:-1] > 0).all(), "earlier states influence the last output through the recurrence"
    with torch.no_grad():
        model.cell.h2h.weight.zero_()
    g0 = lab.hidden_grad_norms(model, idx, y)
    assert torch.all(g0[:-1] == 0), "with W_hh = 0 no earlier state reaches the last loss; gradient must be 0"


def test_rnn_gradient_vanishes_faster_than_lstm_at_init(lab):
    """At initialisation the RNN's dL/dh_t decays faster with distance than the LSTM's."""
    seed_everything(5)
    idx, y = torch.randint(0, 65, (4, 40)), torch.randint(0, 65, (4, 40))
    ratios = {}
    for kind in ("rnn", "lstm"):
        H = lab.hidden_size_for_budget(kind, 65, 32, 31_201)
        seed_everything(5)
        model = char_rnn.CharRNN(65, 32, H, cell_cls=lab.CELLS[kind])
        g = lab.hidden_grad_norms(model, idx, y)
        ratios[kind] = float(g[-31] / g[-1])
    assert ratios["rnn"] < ratios["lstm"], f"expected faster decay for the RNN 30 steps back, got {ratios}"


def test_far_gradients_do_not_underflow(lab):
    """100 steps back the vanilla RNN's gradient is tiny but not zero; float32 would print exact zeros."""
    seed_everything(5)
    idx, y = torch.randint(0, 65, (4, 100)), torch.randint(0, 65, (4, 100))
    model = char_rnn.CharRNN(65, 32, 128)
    g = lab.hidden_grad_norms(model, idx, y)
    rel = g / g[-1]
    assert bool((g > 0).all()), f"some gradients are exactly 0 (smallest relative value {float(rel.min()):.1e})"
    assert float(rel[0]) < 1e-20, f"the RNN's gradient 99 steps back should be vanishingly small, got {float(rel[0]):.1e}"
    assert next(model.parameters()).dtype == torch.float32, "hidden_grad_norms must not convert the caller's model"


@pytest.mark.given
def test_hidden_grad_norms_rejects_bad_ids(lab):
    model = char_rnn.CharRNN(20, n_embd=8, hidden_size=16)
    idx = torch.randint(0, 20, (2, 5))
    with pytest.raises(ValueError, match="id|range"):
        lab.hidden_grad_norms(model, idx, torch.full((2, 5), 20))
    with pytest.raises(ValueError, match="id|range"):
        lab.hidden_grad_norms(model, idx - 21, idx)
    with pytest.raises(ValueError, match="shape"):
        lab.hidden_grad_norms(model, idx, idx[:, :3])

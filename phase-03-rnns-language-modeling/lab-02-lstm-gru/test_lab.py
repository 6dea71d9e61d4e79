"""Grader for lab 3.2 (LSTM and GRU). Compares against torch.nn.LSTMCell/GRUCell/LSTM/GRU."""
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


def test_unroll_gradients_match_fused_lstm(lab):
    seed_everything(3)
    ref = nn.LSTM(4, 6, batch_first=True)
    cell = lab.load_torch_layer_weights(lab.LSTMCell(4, 6), ref)
    x = torch.randn(2, 9, 4)
    ref(x)[0].pow(2).sum().backward()
    lab.unroll(cell, x)[0].pow(2).sum().backward()
    assert torch.allclose(cell.h2h.weight.grad, ref.weight_hh_l0.grad, atol=1e-5), \
        "BPTT through your unroll must give nn.LSTM's gradient (any in-place op or detach in the loop?)"


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
    # the last step: dL/dh_{T-1} = head.weight^T (softmax - onehot) / B
    logits, _ = model(idx)
    p = torch.softmax(logits[:, -1], -1) - F.one_hot(y[:, -1], 20).float()
    want_last = (p @ model.head.weight / 3).norm()
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

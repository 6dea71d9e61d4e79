# Generated from solution.py by `make labs` (labkit/labgen.py). Fill in the TODOs.
"""Lab 3.2 - LSTM and GRU cells from primitives, and why their gradients survive longer.

LSTM (Hochreiter & Schmidhuber, 1997; forget gate from Gers et al., 2000), PyTorch gate order i, f, g, o:

    [i, f, g, o] = x W_ih^T + b_ih + h W_hh^T + b_hh        (one fused matmul each, split in 4)
    i, f, o = sigmoid(.)   g = tanh(.)
    c' = f * c + i * g          <- additive update: the "cell-state highway"
    h' = o * tanh(c')

GRU (Cho et al., 2014), PyTorch gate order r, z, n:

    r = sigmoid(x W_ir + b_ir + h W_hr + b_hr)
    z = sigmoid(x W_iz + b_iz + h W_hz + b_hz)
    n = tanh(x W_in + b_in + r * (h W_hn + b_hn))          <- r multiplies the *whole* recurrent term
    h' = (1 - z) * n + z * h

The training loop, data utilities and the CharRNN wrapper are lab 3.1's, loaded with
``load_lab("3.1")``; this lab only adds the cells, the parameter-matched comparison and the
gradient-flow measurement.

Run: ``python solution.py`` (small mode, ~1-2 min on a CPU) or ``python solution.py --full``.
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from labkit import benchmark, load_lab, seed_everything

HERE = Path(__file__).resolve().parent
char_rnn = load_lab("3.1")          # lab 3.1's solution: CharVocab, CharRNN, train, evaluate, ...
RNNCell = char_rnn.RNNCell


def _uniform_init(module: nn.Module, hidden_size: int) -> None:
    """PyTorch's recurrent init: every weight and bias ~ U(-1/sqrt(H), 1/sqrt(H))."""
    bound = 1.0 / math.sqrt(hidden_size)
    for p in module.parameters():
        nn.init.uniform_(p, -bound, bound)


class LSTMCell(nn.Module):
    """One LSTM step, same maths and parameter layout as ``torch.nn.LSTMCell``.

    ``x2h`` is (weight_ih (4H, in), bias_ih (4H,)), ``h2h`` is (weight_hh (4H, H), bias_hh (4H,)),
    rows ordered [input gate i | forget gate f | candidate g | output gate o].
    State: a tuple (h, c), both float (B, H).
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        if input_size < 1 or hidden_size < 1:
            raise ValueError(f"sizes must be >= 1, got input_size={input_size}, hidden_size={hidden_size}")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.x2h = nn.Linear(input_size, 4 * hidden_size)
        self.h2h = nn.Linear(hidden_size, 4 * hidden_size)
        _uniform_init(self, hidden_size)

    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Zero (h, c), each float (batch_size, hidden_size)."""
        z = torch.zeros(batch_size, self.hidden_size, device=device)
        return z, z.clone()

    @staticmethod
    def output(state: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """What the layer exposes to the output head: h (not the cell state c)."""
        return state[0]

    def forward(self, x: torch.Tensor,
                state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step.

        Args:
            x: float (B, input_size). state: (h, c), each float (B, hidden_size).
        Returns:
            (h', c'), each float (B, hidden_size).
        Raises:
            TypeError: state is not an (h, c) pair.
        """
        if not isinstance(state, tuple) or len(state) != 2:
            raise TypeError("LSTMCell state must be a tuple (h, c)")
        h, c = state
        # TODO(1): gates = x2h(x) + h2h(h); chunk into i, f, g, o (that order); sigmoid/sigmoid/tanh/sigmoid; c' = f*c + i*g; h' = o*tanh(c') (medium, ~20 min)
        raise NotImplementedError("TODO(1)")


class GRUCell(nn.Module):
    """One GRU step, same maths and parameter layout as ``torch.nn.GRUCell``.

    ``x2h`` is (weight_ih (3H, in), bias_ih (3H,)), ``h2h`` is (weight_hh (3H, H), bias_hh (3H,)),
    rows ordered [reset r | update z | new n]. State: h, float (B, H).
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        if input_size < 1 or hidden_size < 1:
            raise ValueError(f"sizes must be >= 1, got input_size={input_size}, hidden_size={hidden_size}")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.x2h = nn.Linear(input_size, 3 * hidden_size)
        self.h2h = nn.Linear(hidden_size, 3 * hidden_size)
        _uniform_init(self, hidden_size)

    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.zeros(batch_size, self.hidden_size, device=device)

    @staticmethod
    def output(state: torch.Tensor) -> torch.Tensor:
        return state

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One time step: x float (B, input_size), h float (B, H) -> h' float (B, H)."""
        # TODO(2): compute x2h(x) and h2h(h) separately, chunk each into (r, z, n) parts; r, z = sigmoid(x_r + h_r), sigmoid(x_z + h_z); n = tanh(x_n + r * h_n); h' = (1 - z) * n + z * h (medium, ~20 min)
        raise NotImplementedError("TODO(2)")


def load_torch_layer_weights(cell: nn.Module, layer: nn.Module) -> nn.Module:
    """Copy layer 0 of an ``nn.RNN``/``nn.LSTM``/``nn.GRU`` into our cell (``weight_ih_l0`` -> ``x2h.weight``, ...)."""
    if getattr(layer, "bidirectional", False) or getattr(layer, "num_layers", 1) != 1:
        raise ValueError("only single-layer, unidirectional reference layers can be copied into one cell")
    pairs = [("weight_ih_l0", cell.x2h.weight), ("bias_ih_l0", cell.x2h.bias),
             ("weight_hh_l0", cell.h2h.weight), ("bias_hh_l0", cell.h2h.bias)]
    with torch.no_grad():
        for name, mine in pairs:
            theirs = getattr(layer, name)
            if theirs.shape != mine.shape:
                raise ValueError(f"{name}: reference shape {tuple(theirs.shape)} != ours {tuple(mine.shape)}")
            mine.copy_(theirs)
    return cell


def unroll(cell: nn.Module, x: torch.Tensor, state=None):
    """Run ``cell`` over a whole sequence, like a one-layer ``nn.LSTM``/``nn.GRU`` with batch_first=True.

    Args:
        cell: LSTMCell, GRUCell or lab 3.1's RNNCell.
        x: float (B, T, input_size).
        state: initial state (zeros when None).
    Returns:
        (outputs, state): outputs float (B, T, H), the per-step ``cell.output(state)``;
        state the final state ((h, c) for the LSTM, h otherwise).
    Raises:
        ValueError: x is not 3-D.
    """
    if x.dim() != 3:
        raise ValueError(f"x must be (B, T, input_size), got {tuple(x.shape)}")
    if state is None:
        state = cell.init_state(x.shape[0], x.device)
    # TODO(3): for each t: state = cell(x[:, t], state); collect cell.output(state); stack along dim 1 (easy, ~10 min)
    raise NotImplementedError("TODO(3)")


CELLS: dict[str, Callable[[int, int], nn.Module]] = {"rnn": RNNCell, "lstm": LSTMCell, "gru": GRUCell}


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def hidden_size_for_budget(cell: str, vocab_size: int, n_embd: int, budget: int) -> int:
    """The largest hidden size H whose CharRNN(vocab_size, n_embd, H, cell) has <= ``budget`` parameters.

    Parameter count of the whole model, with G = 1 (rnn), 4 (lstm) or 3 (gru) gate blocks:
    ``V*E  +  G*(E*H + H*H + 2*H)  +  H*V + V``  (embedding, cell, head).

    Raises:
        ValueError: unknown cell, or a budget too small for H = 1.
    """
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {sorted(CELLS)}, got {cell!r}")
    # TODO(4): write params(H) from the formula above and return the largest H with params(H) <= budget (a loop or the quadratic formula) (easy, ~10 min)
    raise NotImplementedError("TODO(4)")


def hidden_grad_norms(model: nn.Module, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """How much the loss at the LAST position depends on the hidden state at each earlier step.

    Runs ``model`` (lab 3.1's CharRNN) on ``idx`` from a zero state, takes the cross-entropy
    of the final position only, L = CE(logits[:, -1], targets[:, -1]), and returns
    ``||dL/dh_t||`` (Frobenius norm over the batch) for t = 0..T-1. In a vanilla RNN this
    decays roughly geometrically as T-1-t grows: the vanishing-gradient picture.

    The measurement runs on a float64 copy of the model (the model itself is not changed): the
    gradient 99 steps back can be ~1e-30 of the last one, and float32 would round such values
    to exactly 0 (its smallest positive number is ~1.4e-45), drawing cliffs that are not there.

    Args:
        idx, targets: LongTensors (B, T) with ids in [0, vocab_size).
    Returns:
        float64 tensor (T,), entry t is ||dL/dh_t||.
    Raises:
        ValueError: idx and targets differ in shape, or hold ids outside [0, vocab_size).
    """
    if idx.shape != targets.shape:
        raise ValueError(f"idx {tuple(idx.shape)} and targets {tuple(targets.shape)} must have the same shape")
    char_rnn.check_token_ids(idx, model.vocab_size, "idx")
    char_rnn.check_token_ids(targets, model.vocab_size, "targets")
    model = copy.deepcopy(model).double()
    # TODO(5): model(idx, return_hiddens=True); loss on the last position only; torch.autograd.grad(loss, hiddens); the norm of each gradient (medium, ~20 min)
    raise NotImplementedError("TODO(5)")


def gate_means(model: nn.Module, idx: torch.Tensor) -> torch.Tensor | None:
    """Mean activation per hidden unit of the gate that keeps the old state: the LSTM's forget gate f,
    the GRU's update gate z (h' = (1 - z) n + z h). None for a vanilla RNN (it has no gate).

    Runs ``model`` (a CharRNN with our LSTMCell or GRUCell) over ``idx`` (B, T) from a zero state.
    Returns a float tensor (H,): the gate value of each unit averaged over the batch and the T steps.
    """
    cell = model.cell
    if not isinstance(cell, (LSTMCell, GRUCell)):
        return None
    H = cell.hidden_size
    with torch.no_grad():
        emb = model.embed(idx)
        state = model.init_state(idx.shape[0])
        total = torch.zeros(H)
        for t in range(idx.shape[1]):
            h = state[0] if isinstance(cell, LSTMCell) else state
            pre = cell.x2h(emb[:, t]) + cell.h2h(h)
            total += torch.sigmoid(pre[:, H:2 * H]).mean(0)  # block 1: f of (i, f, g, o), z of (r, z, n)
            state = cell(emb[:, t], state)
    return total / idx.shape[1]


def set_forget_bias(cell: LSTMCell, value: float) -> None:
    """Set the LSTM's forget-gate bias (b_ih + b_hh for block f) to ``value`` (Jozefowicz et al., 2015 use 1)."""
    H = cell.hidden_size
    with torch.no_grad():
        cell.x2h.bias[H:2 * H] = value
        cell.h2h.bias[H:2 * H] = 0.0


# ----------------------------------------------------------------------------- self-test
def _time_ours_vs_fused(B: int, T: int, E: int, H: int, repeats: int) -> list[tuple[str, float, float]]:
    """Forward+backward wall-clock (ms) of our unrolled LSTMCell vs the fused nn.LSTM."""
    seed_everything(0)
    fused = nn.LSTM(E, H, batch_first=True)
    ours = load_torch_layer_weights(LSTMCell(E, H), fused)
    x = torch.randn(B, T, E)
    with torch.no_grad():
        assert torch.allclose(unroll(ours, x)[0], fused(x)[0], atol=1e-5), "our LSTM != nn.LSTM"

    def step(f):
        def run():
            out = f(x)[0]
            out.sum().backward()
        return run

    rows = []
    for name, fn in (("our LSTMCell, Python loop over T", step(lambda z: unroll(ours, z))),
                     ("nn.LSTM (fused kernel)", step(fused))):
        t = benchmark(fn, repeats=repeats, warmup=2, name=name)
        rows.append((name, t.min * 1e3, t.median * 1e3))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="bigger budget: whole text, ~200k params, 3000 steps")
    ap.add_argument("--steps", type=int, help="override the step budget per model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cells", default="rnn,lstm,gru", help="comma-separated subset of rnn,lstm,gru")
    ap.add_argument("--forget-bias", type=float, help="initialise the LSTM's forget-gate bias to this value")
    args = ap.parse_args(argv)
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    if not cells or any(c not in CELLS for c in cells):
        ap.error(f"--cells must be a comma-separated subset of {','.join(CELLS)}, got {args.cells!r}")
    if args.forget_bias is not None and not math.isfinite(args.forget_bias):
        ap.error("--forget-bias must be a finite number")
    torch.set_num_threads(1)
    seed_everything(args.seed)

    text = char_rnn.load_shakespeare()
    vocab = char_rnn.CharVocab.from_text(text)
    data = vocab.encode(text)
    train_data, val_data = char_rnn.train_val_split(data, 0.1)
    n_embd = 32
    if args.full:
        budget, cfg = 200_000, char_rnn.TrainConfig(batch_size=64, seq_len=128, max_steps=3000, eval_every=500,
                                                   eval_chars=0, seed=args.seed)
    else:
        budget, cfg = 31_201, char_rnn.TrainConfig(batch_size=32, seq_len=64, max_steps=500, eval_every=250,
                                                  eval_chars=20_000, seed=args.seed)
        train_data = train_data[:400_000]
    if args.steps:
        cfg.max_steps = args.steps
    print(f"mode={'full' if args.full else 'small'}  parameter budget <= {budget:,}  steps/model={cfg.max_steps}  "
          f"batch={cfg.batch_size}x{cfg.seq_len}  train_chars={len(train_data):,}")

    # the gradient probe: one fixed validation batch, long enough to see the decay
    probe_T = 100
    probe = char_rnn.batchify(val_data, 16)[:, : probe_T + 1]
    probe_x, probe_y = probe[:, :-1], probe[:, 1:]

    results, grad_curves, gates = {}, {}, {}
    for name in cells:
        H = hidden_size_for_budget(name, vocab.vocab_size, n_embd, budget)
        seed_everything(args.seed)
        model = char_rnn.CharRNN(vocab.vocab_size, n_embd=n_embd, hidden_size=H, cell_cls=CELLS[name])
        if name == "lstm" and args.forget_bias is not None:
            set_forget_bias(model.cell, args.forget_bias)
            print(f"LSTM forget-gate bias initialised to {args.forget_bias}")
        g_init, gate_init = hidden_grad_norms(model, probe_x, probe_y), gate_means(model, probe_x)
        log = char_rnn.train(model, train_data, val_data, cfg)
        val = char_rnn.evaluate(model, val_data, cfg.seq_len)
        g_trained = hidden_grad_norms(model, probe_x, probe_y)
        grad_curves[name] = (g_init, g_trained)
        if gate_init is not None:
            gates[name] = (gate_init, gate_means(model, probe_x))
        results[name] = (H, count_params(model), val, log.seconds)
        if args.full:
            (HERE / "outputs").mkdir(exist_ok=True)
            torch.save(model.state_dict(), HERE / "outputs" / f"{name}.pt")

    base_secs = results[cells[0]][3]
    print(f"\n| cell | hidden size | parameters | val loss (nats/char) | val perplexity | train time (s) "
          f"| time / {cells[0].upper()}'s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (H, n, val, secs) in results.items():
        print(f"| {name.upper()} | {H} | {n:,} | {val:.3f} | {math.exp(val):.2f} | {secs:.1f} | {secs / base_secs:.2f} |")
    print("(train times are wall clock on a shared CPU: noisy; compare the ratios of one run)")

    if gates:
        print("\nkeep-gate activity on the probe batch (LSTM: forget gate f, GRU: update gate z; 1 = keep the old state)")
        print("| cell | mean gate at init | mean gate trained | units with mean > 0.9 at init | units with mean > 0.9 trained |")
        print("|---|---:|---:|---:|---:|")
        for name, (g0, g1) in gates.items():
            print(f"| {name.upper()} | {g0.mean():.3f} | {g1.mean():.3f} | {int((g0 > 0.9).sum())} / {len(g0)} "
                  f"| {int((g1 > 0.9).sum())} / {len(g1)} |")

    lags = (1, 10, 25, 50, 99)
    print(f"\n||dL_T/dh_(T-k)|| relative to k=0 (float64), T={probe_T}, trained models (init in parentheses)")
    print("| cell | " + " | ".join(f"k={k}" for k in lags) + " |")
    print("|---|" + "---:|" * len(lags))
    for name, (g0, g1) in grad_curves.items():
        cells = []
        for k in lags:
            r1 = float(g1[probe_T - 1 - k] / g1[-1])
            r0 = float(g0[probe_T - 1 - k] / g0[-1])
            cells.append(f"{r1:.1e} ({r0:.1e})")
        print(f"| {name.upper()} | " + " | ".join(cells) + " |")

    rows = _time_ours_vs_fused(B=32, T=64, E=n_embd, H=128, repeats=5 if not args.full else 20)
    print("\nLSTM forward+backward, B=32, T=64, E=32, H=128, 1 CPU thread")
    print("| implementation | min (ms) | median (ms) |")
    print("|---|---:|---:|")
    for name, mn, md in rows:
        print(f"| {name} | {mn:.1f} | {md:.1f} |")
    print(f"fused nn.LSTM is {rows[0][2] / rows[1][2]:.1f}x faster (ratio of medians in this run; wall clock, noisy)")

    from labkit.plots import plt, savefig

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, which, title in ((axes[0], 0, "at initialisation"), (axes[1], 1, f"after {cfg.max_steps} steps")):
        for name, curves in grad_curves.items():
            g = curves[which]
            k = torch.arange(probe_T - 1, -1, -1)        # distance back from the last step
            ax.semilogy(k, (g / g[-1]).numpy(), label=name.upper())
        ax.set_xlabel("k = steps back from the loss position (T-1-t)")
        ax.set_title(f"||dL/dh_(T-1-k)|| / ||dL/dh_(T-1)||, {title}")
        ax.legend()
    axes[0].set_ylabel("relative gradient norm (log scale)")
    out = savefig(fig, HERE / "figures" / ("grad_norms_full.png" if args.full else "grad_norms.png"))
    print(f"\nwrote {out.relative_to(HERE)}")

    checks = {
        "every model learned (val loss < 2.6 nats)": all(v[2] < 2.6 for v in results.values()),
        "parameter counts within 3% of each other":
            max(v[1] for v in results.values()) <= 1.03 * min(v[1] for v in results.values()),
        "every relative gradient norm is > 0 in float64 (no underflow)":
            all(bool((c[i] > 0).all()) for c in grad_curves.values() for i in (0, 1)),
    }
    if "rnn" in grad_curves and len(grad_curves) > 1:
        checks["RNN gradient 50 steps back is smaller than every gated cell's (trained)"] = all(
            float(grad_curves["rnn"][1][probe_T - 51] / grad_curves["rnn"][1][-1])
            < float(grad_curves[c][1][probe_T - 51] / grad_curves[c][1][-1]) for c in grad_curves if c != "rnn")
    for name, ok in checks.items():
        print(f"[{'OK' if ok else 'FAIL'}] {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

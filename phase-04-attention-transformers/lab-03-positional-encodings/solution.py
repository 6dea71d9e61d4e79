"""Lab 4.3: positional encodings (sinusoidal, learned, RoPE, ALiBi) and a length-extrapolation study.

Self-attention is permutation-equivariant: shuffle the tokens and the outputs shuffle the same
way. Everything a transformer knows about order comes from a positional scheme. This module
holds the four classic ones as small, pure functions that the lab 4.4 ``MiniGPT`` imports
(``pos_emb="sinusoidal" | "rope" | "alibi"``; ``"learned"`` is a plain ``nn.Embedding`` table
there), so there is exactly one RoPE in the curriculum and it matches Hugging Face Llama's.

* Sinusoidal: Vaswani et al. 2017, "Attention Is All You Need", section 3.5.
* Learned absolute: GPT-2 / BERT, a (block_size, d_model) table (lives in lab 4.4).
* RoPE: Su et al. 2021, "RoFormer", in the "rotate_half" layout used by HF Llama
  (dimension i is paired with dimension i + d_head/2, not with i + 1).
* ALiBi: Press et al. 2022, "Train Short, Test Long", slopes and linear distance bias.

The self-test trains the same small character-level MiniGPT on Tiny Shakespeare with each
scheme at train length L and measures validation loss at L, 2L and 4L.

Run: ``python solution.py`` (small mode, CPU) or ``python solution.py --full``.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = [
    "alibi_bias",
    "alibi_slopes",
    "apply_rope",
    "evaluate_at_lengths",
    "rope_cache",
    "sinusoidal_encoding",
]


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_base(name: str, value: float) -> None:
    """A frequency base must be a finite number > 1 (NaN would silently give a NaN table)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 1:
        raise ValueError(f"{name} must be a finite number > 1, got {value!r}")


# ----------------------------------------------------------------------------- sinusoidal
def sinusoidal_encoding(n_pos: int, d_model: int, base: float = 10000.0) -> torch.Tensor:
    """The fixed sinusoidal table of Vaswani et al. (2017), section 3.5.

    ``PE[pos, 2i] = sin(pos / base**(2i/d_model))`` and ``PE[pos, 2i+1] = cos(same angle)``:
    even columns hold sines, odd columns cosines, and the pair (2i, 2i+1) shares one
    frequency. Wavelengths grow geometrically from 2*pi to base*2*pi.

    Args:
        n_pos: number of positions (rows), >= 1.
        d_model: model width (columns), even.
        base: the wavelength base, 10000 in the paper.

    Returns:
        float32 tensor of shape (n_pos, d_model), values in [-1, 1].

    Raises:
        ValueError: non-positive sizes, odd d_model, or a base that is not a finite number > 1.
    """
    _check_positive_int("n_pos", n_pos)
    _check_positive_int("d_model", d_model)
    if d_model % 2:
        raise ValueError(f"d_model must be even for sin/cos pairs, got {d_model}")
    _check_base("base", base)
    # BEGIN SOLUTION build angles pos * base**(-2i/d) with an outer product; sin into even columns, cos into odd (easy, ~10 min)
    pos = torch.arange(n_pos, dtype=torch.float64)[:, None]                    # (n_pos, 1)
    inv_freq = base ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)  # (d/2,)
    angles = pos * inv_freq                                                    # (n_pos, d/2)
    pe = torch.empty(n_pos, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angles)
    pe[:, 1::2] = torch.cos(angles)
    return pe.float()
    # END SOLUTION


# ----------------------------------------------------------------------------- RoPE
def rope_cache(seq_len: int, d_head: int, theta: float = 10000.0, *, start: int = 0,
               device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine tables for rotary position embeddings (Su et al. 2021).

    Frequencies ``inv_freq[i] = theta**(-2i/d_head)`` for i in [0, d_head/2). The angle of
    position p on frequency i is ``p * inv_freq[i]``. Tables use the "rotate_half" layout of
    HF Llama: the d_head/2 angles are repeated twice, ``[a_0..a_{d/2-1}, a_0..a_{d/2-1}]``,
    so dimension i and dimension i + d_head/2 rotate together.

    Args:
        seq_len: number of positions, >= 1.
        d_head: per-head width, even.
        theta: RoPE base (10000 in RoFormer and Llama-2, 500000 in Llama-3).
        start: first position (a KV cache decodes position ``start`` onward).
        device: where to build the tables.

    Returns:
        ``(cos, sin)``, each float32 of shape (seq_len, d_head).

    Raises:
        ValueError: non-positive sizes, odd d_head, a start that is not an int >= 0, or a theta
            that is not a finite number > 1.
    """
    _check_positive_int("seq_len", seq_len)
    _check_positive_int("d_head", d_head)
    if d_head % 2:
        raise ValueError(f"RoPE rotates pairs of dimensions, so d_head must be even, got {d_head}")
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"start (the first position id) must be an int >= 0, got {start!r}")
    _check_base("theta", theta)
    # BEGIN SOLUTION inv_freq = 1/theta**(arange(0,d,2)/d); angles = outer(positions, inv_freq); repeat the angles twice along the last dim (medium, ~15 min)
    # float32 on purpose: this is exactly how HF computes it, so logits agree to ~1e-6.
    inv_freq = 1.0 / (theta ** (torch.arange(0, d_head, 2, dtype=torch.int64, device=device).float() / d_head))
    pos = torch.arange(start, start + seq_len, dtype=torch.int64, device=device).float()
    angles = torch.outer(pos, inv_freq)                     # (T, d_head/2)
    emb = torch.cat((angles, angles), dim=-1)               # (T, d_head)
    return emb.cos(), emb.sin()
    # END SOLUTION


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys by their position (rotate_half convention).

    ``out = x * cos + rotate_half(x) * sin`` with ``rotate_half([x1, x2]) = [-x2, x1]``
    (x1, x2 the two halves of the last dimension). Each pair (x[i], x[i + d/2]) is rotated
    by its angle, so norms are preserved and ``<rope(q, m), rope(k, n)>`` depends on m - n only.

    Args:
        x: (..., T, d_head), any float dtype (typically (B, n_head, T, d_head)).
        cos, sin: (T, d_head) from :func:`rope_cache`.

    Returns:
        Tensor shaped and typed like ``x``.

    Raises:
        TypeError: ``x`` is not a floating-point tensor (integer inputs would be truncated).
        ValueError: if ``cos``/``sin`` do not have shape (T, d_head) for this ``x``.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"x must be a floating-point tensor (queries or keys), got {got}")
    if x.dim() < 2:
        raise ValueError(f"x must be (..., T, d_head), got shape {tuple(x.shape)}")
    if cos.shape != x.shape[-2:] or sin.shape != x.shape[-2:]:
        raise ValueError(f"cos/sin must have shape (T, d_head) = {tuple(x.shape[-2:])}, "
                         f"got {tuple(cos.shape)} and {tuple(sin.shape)}")
    # BEGIN SOLUTION split the last dim in two halves, build rotate_half = cat(-x2, x1), return x*cos + rotate_half(x)*sin in x's dtype (medium, ~10 min)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)
    # END SOLUTION


# ----------------------------------------------------------------------------- ALiBi
def alibi_slopes(n_head: int) -> torch.Tensor:
    """Per-head ALiBi slopes (Press et al. 2022, section 3).

    For n heads, n a power of two, the slopes are the geometric sequence starting at
    ``2**(-8/n)`` with that same ratio: for 8 heads 1/2, 1/4, ..., 1/256. When n is not a
    power of two, take the 2**floor(log2 n) slopes, then the first ``n - 2**floor(log2 n)``
    of the *odd-indexed* slopes of the 2 * 2**floor(log2 n) sequence (the paper's code).

    Args:
        n_head: number of attention heads, >= 1.

    Returns:
        float32 tensor of shape (n_head,), all in (0, 1).

    Raises:
        ValueError: if n_head is not a positive int.
    """
    _check_positive_int("n_head", n_head)
    # BEGIN SOLUTION geometric sequence start=ratio=2**(-8/p) for the largest power of two p <= n_head, then every other slope of the 2p sequence for the remaining heads (medium, ~15 min)
    def power_of_two(p: int) -> list[float]:
        start = 2.0 ** (-8.0 / p)
        return [start ** (i + 1) for i in range(p)]

    p = 2 ** math.floor(math.log2(n_head))
    slopes = power_of_two(p)
    if p != n_head:
        slopes += power_of_two(2 * p)[0::2][: n_head - p]
    return torch.tensor(slopes, dtype=torch.float32)
    # END SOLUTION


def alibi_bias(n_head: int, seq_len: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The additive ALiBi attention bias ``-slope_h * |i - j|``.

    Added to the (pre-softmax) scores of head h for query i and key j. For a causal model
    only j <= i survives the mask, so the bias is a linear penalty on distance into the past.
    There is no positional embedding at all with ALiBi.

    Args:
        n_head: number of heads.
        seq_len: number of positions T (query and key length).
        device: where to build it.

    Returns:
        float32 tensor of shape (n_head, T, T), zero on the diagonal, <= 0 elsewhere.

    Raises:
        ValueError: non-positive sizes.
    """
    _check_positive_int("n_head", n_head)
    _check_positive_int("seq_len", seq_len)
    # BEGIN SOLUTION distance[i, j] = |i - j| from two aranges; multiply by -slopes broadcast as (n_head, 1, 1) (easy, ~5 min)
    pos = torch.arange(seq_len, device=device)
    distance = (pos[:, None] - pos[None, :]).abs().float()          # (T, T)
    return -alibi_slopes(n_head).to(device)[:, None, None] * distance  # (n_head, T, T)
    # END SOLUTION


# ----------------------------------------------------------------------------- experiment
@torch.no_grad()
def evaluate_at_lengths(model: torch.nn.Module, data: torch.Tensor, lengths: list[int],
                        max_windows: int = 32, skip: int = 0) -> dict[int, float]:
    """Mean next-token loss (nats/token) of ``model`` on windows of each length.

    For a length L, cut ``data`` into non-overlapping windows of L + 1 tokens starting at 0, L,
    2L, ... (input ``w[:-1]``, target ``w[1:]``), keep at most ``max_windows`` of them, and
    average the per-token cross-entropy over positions ``skip .. L-1`` of every window.
    ``skip=0`` averages every position (as Press et al. do); ``skip=train_len`` keeps only the
    positions the model never saw in training. A model whose positions cannot reach L (a
    learned table shorter than L) gets ``float("nan")``: it is not evaluated.

    Args:
        model: a lab 4.4 ``MiniGPT`` (``model(idx) -> (logits, loss)``, ``model.config``).
        data: 1-D int64 tensor of token ids (validation split).
        lengths: the window lengths to test, each >= 1.
        max_windows: cap on windows per length (keeps CPU time bounded).
        skip: leading positions left out of the average, 0 <= skip < min(lengths).

    Returns:
        ``{L: mean loss}`` in the order of ``lengths``.

    Raises:
        TypeError: ``data`` is not an integer tensor.
        ValueError: empty ``lengths``, a length < 1, a bad ``skip``, ``data`` too short, or a token
            id outside [0, model.config.vocab_size).
    """
    if not lengths:
        raise ValueError("lengths is empty")
    if not isinstance(data, torch.Tensor) or data.is_floating_point() or data.dtype == torch.bool:
        raise TypeError(f"data must be an integer tensor of token ids, got {data!r:.80}")
    if data.dim() != 1:
        raise ValueError(f"data must be a 1-D token tensor, got shape {tuple(data.shape)}")
    vocab_size = model.config.vocab_size
    if data.numel() and (data.min() < 0 or data.max() >= vocab_size):
        raise ValueError(f"token ids must be in [0, vocab_size={vocab_size}), got min {data.min().item()}, "
                         f"max {data.max().item()}")
    for length in lengths:
        _check_positive_int("length", length)
        if data.numel() < length + 1:
            raise ValueError(f"data has {data.numel()} tokens, too few for one window of {length} + 1")
    if not 0 <= skip < min(lengths):
        raise ValueError(f"skip must be in [0, {min(lengths)}), got {skip}")
    was_training = model.training
    model.eval()
    out: dict[int, float] = {}
    # BEGIN SOLUTION per length: nan if learned positions cannot reach it; else stack the non-overlapping (L+1)-windows, x = w[:, :-1], y = w[:, 1:]; per-token cross-entropy (reduction="none") of the logits; average positions skip.. (easy, ~15 min)
    cfg = model.config
    for length in lengths:
        if cfg.pos_emb == "learned" and length > cfg.block_size:
            out[length] = float("nan")  # the table has no row for these positions
            continue
        n = min(max_windows, (data.numel() - 1) // length)
        windows = torch.stack([data[i * length: i * length + length + 1] for i in range(n)])
        total, count = 0.0, 0
        for chunk in windows.split(8):  # small batches keep memory flat at long lengths
            logits, _ = model(chunk[:, :-1])                                  # (b, L, vocab)
            nll = F.cross_entropy(logits.transpose(1, 2), chunk[:, 1:], reduction="none")  # (b, L)
            total += nll[:, skip:].sum().item()
            count += nll[:, skip:].numel()
        out[length] = total / count
    # END SOLUTION
    model.train(was_training)
    return out


SCHEMES = ("learned", "sinusoidal", "rope", "alibi", "none")


def run_extrapolation(full: bool = False, seed: int = 0, steps: int | None = None,
                      schemes: tuple[str, ...] = SCHEMES
                      ) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, float]]]:
    """Train one small char-level MiniGPT (lab 4.4) per positional scheme at length L on Tiny
    Shakespeare, then evaluate on validation text.

    Returns:
        ``(all_positions, unseen)``: ``{scheme: {L: loss, 2L: loss, 4L: loss}}`` averaged over
        every position, and ``{scheme: {2L: loss, 4L: loss}}`` over positions >= L only.

    The models run on the positional functions of THIS file (yours, when run from lab.py).
    """
    from labkit import load_lab, seed_everything

    gpt = load_lab("phase-04-attention-transformers/lab-04-mini-transformer")
    train_data, val_data, itos = gpt.load_char_shakespeare()
    train_len = 128 if full else 64
    steps = steps or (3000 if full else 300)
    sizes = dict(n_layer=4, n_head=4, d_model=128) if full else dict(n_layer=2, n_head=4, d_model=64)
    lengths = [train_len, 2 * train_len, 4 * train_len]
    results: dict[str, dict[int, float]] = {}
    unseen: dict[str, dict[int, float]] = {}
    saved = gpt.positional
    gpt.positional = sys.modules[__name__]  # MiniGPT looks its positional functions up here
    try:
        for scheme in schemes:
            seed_everything(seed)
            cfg = gpt.GPTConfig(vocab_size=len(itos), block_size=train_len, pos_emb=scheme, norm="layernorm",
                                mlp="gelu", bias=False, dropout=0.0, **sizes)
            model = gpt.MiniGPT(cfg)
            t0, c0 = time.perf_counter(), time.process_time()
            gpt.train(model, train_data, val_data, steps=steps, batch_size=32, lr=3e-3,
                      eval_every=steps, eval_batches=4, progress=False, seed=seed)
            n_win = 48 if full else 24
            results[scheme] = evaluate_at_lengths(model, val_data, lengths, max_windows=n_win)
            unseen[scheme] = evaluate_at_lengths(model, val_data, lengths[1:], max_windows=n_win, skip=train_len)
            row = "  ".join(f"L={k}: {v:.3f}" for k, v in results[scheme].items())
            print(f"[{scheme:>10}] {time.perf_counter() - t0:5.1f} s wall {time.process_time() - c0:5.1f} s CPU  "
                  f"{row}", flush=True)
    finally:
        gpt.positional = saved
    return results, unseen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="bigger model, longer training (minutes on CPU)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from labkit.plots import plt, savefig

    failures: list[str] = []
    # 1) the closed-form / property checks the tests also make, printed
    pe = sinusoidal_encoding(50, 16)
    print(f"sinusoidal: PE[7, 4] = {pe[7, 4]:.6f}, closed form sin(7/10000^(4/16)) = "
          f"{math.sin(7 / 10000 ** (4 / 16)):.6f}")
    cos, sin = rope_cache(64, 32)
    g = torch.Generator().manual_seed(args.seed)
    q, k = torch.randn(32, generator=g), torch.randn(32, generator=g)
    qs, ks = q.expand(64, 32), k.expand(64, 32)
    rq, rk = apply_rope(qs, cos, sin), apply_rope(ks, cos, sin)
    norm_err = (rq.norm(dim=-1) - q.norm()).abs().max().item()
    dots = rq @ rk.T                                    # dots[m, n] = <rope(q, m), rope(k, n)>
    # every diagonal of dots holds one offset n - m: all its entries must be equal
    shift_err = max((d - d[0]).abs().max().item()
                    for d in (torch.diagonal(dots, offset=o) for o in range(-20, 21)))
    print(f"RoPE: max |norm change| = {norm_err:.2e}; max spread of q.k(m, m+o) over m, for each |o| <= 20: "
          f"{shift_err:.2e}")
    for n in (8, 6, 12):
        print(f"ALiBi slopes n_head={n}: " + ", ".join(f"{s:.5f}" for s in alibi_slopes(n).tolist()))
    if norm_err > 1e-4 or shift_err > 1e-3:
        failures.append("RoPE property check")

    # 2) the extrapolation experiment
    print(f"\nExtrapolation: train at L, evaluate val loss (nats/char) at L, 2L, 4L ({'full' if args.full else 'small'} mode)")
    t0, c0 = time.perf_counter(), time.process_time()
    results, unseen = run_extrapolation(full=args.full, seed=args.seed)
    lengths = list(next(iter(results.values())).keys())

    def cell(v: float) -> str:
        return "n/a (no table rows)" if math.isnan(v) else f"{v:.3f}"

    print("\nMean loss over ALL positions of each window:")
    print("| scheme | " + " | ".join(f"L={n}" for n in lengths) + " |")
    print("|---|" + "---|" * len(lengths))
    for scheme, row in results.items():
        print(f"| {scheme} | " + " | ".join(cell(v) for v in row.values()) + " |")
    print(f"\nMean loss over positions >= {lengths[0]} only (never seen in training):")
    print("| scheme | " + " | ".join(f"L={n}" for n in lengths[1:]) + " |")
    print("|---|" + "---|" * (len(lengths) - 1))
    for scheme, row in unseen.items():
        print(f"| {scheme} | " + " | ".join(cell(v) for v in row.values()) + " |")
    print(f"experiment: {time.perf_counter() - t0:.1f} s wall, {time.process_time() - c0:.1f} s CPU "
          "(shared machine: wall time depends on load)")

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for panel, (ax, table, title) in enumerate(zip(
            axes, (results, unseen), ("all positions", f"positions >= {lengths[0]} only"))):
        for k, (scheme, row) in enumerate(table.items()):
            xs = [n for n, v in row.items() if not math.isnan(v)]
            ax.plot(xs, [row[n] for n in xs], marker="o", color=f"C{k}", label=scheme)
        ax.set_xscale("log", base=2)
        ticks = lengths if panel == 0 else lengths[1:]
        ax.set_xticks(ticks, [str(n) for n in ticks])
        ax.set_xlabel(f"evaluation length (tokens); trained at {lengths[0]}")
        ax.set_title(title)
    axes[0].set_ylabel("validation loss (nats/char)")
    axes[0].legend()
    fig.suptitle("Length extrapolation, char-level Tiny Shakespeare")
    path = savefig(fig, Path(__file__).parent / "figures" / "extrapolation.png")
    print(f"wrote {path}")

    # sanity: every scheme must have learned something at the training length
    for scheme, row in results.items():
        if not row[lengths[0]] < 3.0:
            failures.append(f"{scheme} did not train (loss at L = {row[lengths[0]]:.3f})")
    if failures:
        print("FAILED: " + "; ".join(failures))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Lab 4.1: scaled dot-product attention, three ways, with causal and padding masks.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k) + mask) V        (Vaswani et al., 2017, eq. 1)

We write the same function three times:

* ``attention_loops``  - explicit Python loops over batch, query and key (slow, but every
  number is visible);
* ``attention_bmm``    - batched matrix multiplies (``torch.bmm``), the way real code does it;
* ``attention_einsum`` - one ``torch.einsum`` per matmul, the notation papers use.

All three share one mask convention, the same one ``torch.nn.functional.scaled_dot_product_attention``
uses for boolean masks: ``attn_mask[..., i, j] == True`` means "query i MAY attend to key j".

A query row whose keys are ALL masked (a padding query attending over padding only, or an
empty sequence) has no sensible softmax: exp(-inf) / sum(exp(-inf)) = 0 / 0 = NaN. Our choice,
documented once here and tested: such a row gets all-zero weights and therefore an all-zero
output (and zero gradient), never NaN. In torch 2.13 ``F.scaled_dot_product_attention``
returns zeros for such rows too, so the comparison holds on every row.

The self-test also trains two tiny attention models on CPU and draws their attention maps:
a toy "find the token" classifier and a one-layer causal character model on Tiny Shakespeare.

Run: ``python solution.py`` (small mode, CPU, well under a minute) or ``python solution.py --full``.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
FIGURES = HERE / "figures"


# ----------------------------------------------------------------------------- validation


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               attn_mask: torch.Tensor | None) -> None:
    """Raise a clear error when q/k/v/mask do not fit together (shared by all three versions)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
        if t.dim() < 2:
            raise ValueError(f"{name} must have shape (*batch, T, d), got {tuple(t.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[:-2] != k.shape[:-2] or k.shape[:-2] != v.shape[:-2]:
        raise ValueError(
            f"q, k, v must share the batch dims: expected {tuple(q.shape[:-2])} for all, "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share d_k: expected k[..., {q.shape[-1]}] to match "
                         f"q {tuple(q.shape)}, got k {tuple(k.shape)}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same number of keys T_k: "
                         f"got k {tuple(k.shape)} and v {tuple(v.shape)}")
    if attn_mask is not None:
        if not isinstance(attn_mask, torch.Tensor) or attn_mask.dtype != torch.bool:
            got = attn_mask.dtype if isinstance(attn_mask, torch.Tensor) else type(attn_mask).__name__
            raise TypeError(f"attn_mask must be a bool tensor (True = may attend), got {got}")
        want = (*q.shape[:-2], q.shape[-2], k.shape[-2])
        try:
            torch.broadcast_shapes(attn_mask.shape, want)
        except RuntimeError:
            raise ValueError(f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to the "
                             f"score shape (*batch, T_q, T_k) = {want}") from None
        if torch.broadcast_shapes(attn_mask.shape, want) != torch.Size(want):
            raise ValueError(f"attn_mask of shape {tuple(attn_mask.shape)} would grow the score shape "
                             f"{want}; it must broadcast *to* it")


# ----------------------------------------------------------------------------- masks


def causal_mask(T_q: int, T_k: int | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean causal mask, True where query i may attend to key j.

    Args:
        T_q: number of queries (int >= 1).
        T_k: number of keys (default ``T_q``). When ``T_k > T_q`` the queries are taken to be
            the *last* ``T_q`` positions (as with a KV cache), so query i sits at absolute
            position ``T_k - T_q + i`` and sees keys ``0 .. T_k - T_q + i``.
        device: where to build the mask.

    Returns:
        bool tensor (T_q, T_k): lower-triangular (``torch.tril``) when T_q == T_k.

    Raises:
        ValueError: T_q < 1, T_k < 1, or T_k < T_q.
    """
    T_k = T_q if T_k is None else T_k
    if not (isinstance(T_q, int) and isinstance(T_k, int)) or T_q < 1 or T_k < 1:
        raise ValueError(f"T_q and T_k must be positive ints, got T_q={T_q!r}, T_k={T_k!r}")
    if T_k < T_q:
        raise ValueError(f"causal_mask needs T_k >= T_q (queries are the last T_q positions), "
                         f"got T_q={T_q}, T_k={T_k}")
    # BEGIN SOLUTION ones(T_q, T_k) -> torch.tril with the right diagonal offset for T_k > T_q (easy, ~5 min)
    ones = torch.ones(T_q, T_k, dtype=torch.bool, device=device)
    return torch.tril(ones, diagonal=T_k - T_q)
    # END SOLUTION


def padding_mask(lengths: torch.Tensor, T_k: int) -> torch.Tensor:
    """Key-padding mask from sequence lengths: True on real tokens, False on padding.

    Args:
        lengths: int tensor (B,), the number of real (left-aligned) tokens of each sequence,
            each in [0, T_k].
        T_k: the padded length.

    Returns:
        bool tensor (B, 1, T_k); the singleton axis broadcasts over the queries, so the
        result can be passed straight to the attention functions for (B, T_q, T_k) scores
        (use ``mask[:, None]`` to add a head axis).

    Raises:
        TypeError: ``lengths`` is not an integer tensor.
        ValueError: ``lengths`` is not 1-D, or a length is < 0 or > T_k.
    """
    if not isinstance(lengths, torch.Tensor) or lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must be an integer tensor of shape (B,), got {lengths!r}")
    if lengths.dim() != 1:
        raise ValueError(f"lengths must have shape (B,), got {tuple(lengths.shape)}")
    if (lengths < 0).any() or (lengths > T_k).any():
        raise ValueError(f"every length must be in [0, T_k={T_k}], got {lengths.tolist()}")
    # BEGIN SOLUTION compare arange(T_k) against each length, add the query axis (easy, ~5 min)
    positions = torch.arange(T_k, device=lengths.device)
    return (positions[None, :] < lengths[:, None])[:, None, :]
    # END SOLUTION


def masked_softmax(scores: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over the last (key) axis with masked entries forced to exactly zero weight.

    Masked scores are set to -inf *before* the softmax, so the surviving weights renormalise
    among the allowed keys. A row with no allowed key returns all zeros (not NaN), and its
    gradient is zero too.

    Args:
        scores: float tensor (*batch, T_q, T_k).
        attn_mask: bool tensor broadcastable to ``scores``, True = keep; None = keep all.

    Returns:
        weights, same shape and dtype as ``scores``; each row sums to 1 (or to 0 if fully masked).
    """
    if attn_mask is None:
        return torch.softmax(scores, dim=-1)
    # BEGIN SOLUTION -inf on masked scores; rows with no allowed key must give zeros, not NaN (medium, ~15 min)
    any_allowed = attn_mask.any(dim=-1, keepdim=True)  # (*batch, T_q, 1)
    scores = scores.masked_fill(~attn_mask, float("-inf"))
    # A fully masked row is all -inf: softmax would be 0/0. Give it finite scores (any value)
    # so softmax stays finite, then zero the whole row; the multiply also zeroes its gradient.
    scores = scores.masked_fill(~any_allowed, 0.0)
    return torch.softmax(scores, dim=-1) * any_allowed
    # END SOLUTION


# ----------------------------------------------------------------------------- attention x3


def attention_loops(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    attn_mask: torch.Tensor | None = None,
                    scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention with explicit Python loops (pedagogical, O(B*T_q*T_k*d) Python ops).

    Args:
        q: (*batch, T_q, d_k) float.  k: (*batch, T_k, d_k).  v: (*batch, T_k, d_v).
        attn_mask: bool, broadcastable to (*batch, T_q, T_k); True = may attend.
        scale: multiplier of the scores; default ``1 / sqrt(d_k)``.

    Returns:
        (output (*batch, T_q, d_v), weights (*batch, T_q, T_k)), dtype of q.

    Raises:
        TypeError / ValueError: see the mask and shape rules in the module docstring.
    """
    _check_qkv(q, k, v, attn_mask)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    batch = q.shape[:-2]
    T_q, T_k, d_v = q.shape[-2], k.shape[-2], v.shape[-1]
    qf, kf, vf = q.reshape(-1, T_q, q.shape[-1]), k.reshape(-1, T_k, k.shape[-1]), v.reshape(-1, T_k, d_v)
    mf = None
    if attn_mask is not None:
        mf = attn_mask.expand(*batch, T_q, T_k).reshape(-1, T_q, T_k)
    out = torch.zeros(qf.shape[0], T_q, d_v, dtype=q.dtype, device=q.device)
    weights = torch.zeros(qf.shape[0], T_q, T_k, dtype=q.dtype, device=q.device)
    # BEGIN SOLUTION for each (b, i): scores over j, mask, stable softmax by hand, weighted sum of v rows (medium, ~20 min)
    for b in range(qf.shape[0]):
        for i in range(T_q):
            allowed = [True] * T_k if mf is None else [bool(x) for x in mf[b, i]]
            if not any(allowed):
                continue  # fully masked row: zero weights, zero output (our documented choice)
            scores = [(qf[b, i] * kf[b, j]).sum() * scale for j in range(T_k)]
            top = max(s for s, a in zip(scores, allowed) if a)  # subtract the max: exp never overflows
            exps = [torch.exp(s - top) if a else s * 0 for s, a in zip(scores, allowed)]
            total = sum(exps)
            for j in range(T_k):
                w = exps[j] / total
                weights[b, i, j] = w
                out[b, i] = out[b, i] + w * vf[b, j]
    # END SOLUTION
    return out.reshape(*batch, T_q, d_v), weights.reshape(*batch, T_q, T_k)


def attention_bmm(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  attn_mask: torch.Tensor | None = None,
                  scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention with ``torch.bmm`` (leading dims flattened into one batch).

    Same arguments, returns and errors as :func:`attention_loops`.
    """
    _check_qkv(q, k, v, attn_mask)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    batch = q.shape[:-2]
    T_q, T_k, d_v = q.shape[-2], k.shape[-2], v.shape[-1]
    # BEGIN SOLUTION flatten to (N, T, d); scores = bmm(q, k^T) * scale; masked_softmax; bmm(weights, v) (medium, ~15 min)
    q3 = q.reshape(-1, T_q, q.shape[-1])
    k3 = k.reshape(-1, T_k, k.shape[-1])
    v3 = v.reshape(-1, T_k, d_v)
    scores = torch.bmm(q3, k3.transpose(1, 2)) * scale  # (N, T_q, T_k)
    scores = scores.reshape(*batch, T_q, T_k)           # back to *batch so the mask broadcasts
    weights = masked_softmax(scores, attn_mask)
    out = torch.bmm(weights.reshape(-1, T_q, T_k), v3)  # (N, T_q, d_v)
    return out.reshape(*batch, T_q, d_v), weights
    # END SOLUTION


def attention_einsum(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     attn_mask: torch.Tensor | None = None,
                     scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention with ``torch.einsum`` (any number of leading batch dims).

    Same arguments, returns and errors as :func:`attention_loops`.
    """
    _check_qkv(q, k, v, attn_mask)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    # BEGIN SOLUTION two einsums: '...id,...jd->...ij' for scores, '...ij,...jd->...id' for the output (easy, ~10 min)
    scores = torch.einsum("...id,...jd->...ij", q, k) * scale
    weights = masked_softmax(scores, attn_mask)
    return torch.einsum("...ij,...jd->...id", weights, v), weights
    # END SOLUTION


# ----------------------------------------------------------------------------- toy task


@dataclass
class FindTokenConfig:
    """The toy task: one "signal" token hides among noise tokens; name it.

    Tokens ``0 .. n_noise-1`` are noise, ``n_noise .. n_noise+n_signal-1`` are signal, and
    ``pad_id = n_noise + n_signal`` pads sequences of random length in [min_len, max_len].
    Exactly one signal token sits at a random position of each sequence; the label is which
    one (0 .. n_signal-1). A single attention read-out with a learned query solves it by
    putting (almost) all of its weight on the signal position.
    """

    n_noise: int = 24
    n_signal: int = 8
    max_len: int = 16
    min_len: int = 6
    d_model: int = 32

    @property
    def vocab_size(self) -> int:
        return self.n_noise + self.n_signal + 1

    @property
    def pad_id(self) -> int:
        return self.n_noise + self.n_signal


def make_find_token_batch(cfg: FindTokenConfig, batch_size: int,
                          generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample a batch: (tokens (B, max_len) long, lengths (B,), labels (B,), signal positions (B,))."""
    B, T = batch_size, cfg.max_len
    lengths = torch.randint(cfg.min_len, T + 1, (B,), generator=generator)
    tokens = torch.randint(0, cfg.n_noise, (B, T), generator=generator)
    labels = torch.randint(0, cfg.n_signal, (B,), generator=generator)
    pos = (torch.rand(B, generator=generator) * lengths).long()  # uniform in [0, length)
    tokens[torch.arange(B), pos] = cfg.n_noise + labels
    tokens[torch.arange(T)[None, :] >= lengths[:, None]] = cfg.pad_id
    return tokens, lengths, labels, pos


class FindTokenAttention(nn.Module):
    """Embedding -> one attention read-out with a learned query -> linear classifier.

    forward(tokens (B, T) long, lengths (B,)) -> (logits (B, n_signal), weights (B, 1, T)).
    Padding keys are masked with :func:`padding_mask`; attention uses :func:`attention_bmm`.
    """

    def __init__(self, cfg: FindTokenConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.query = nn.Parameter(torch.randn(1, 1, cfg.d_model) * 0.1)
        self.w_k = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.w_v = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.head = nn.Linear(cfg.d_model, cfg.n_signal)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if tokens.dim() != 2:
            raise ValueError(f"tokens must have shape (B, T), got {tuple(tokens.shape)}")
        # BEGIN SOLUTION embed; k, v projections; the learned query for every row; padding mask; attention_bmm; head (medium, ~15 min)
        x = self.embed(tokens)                                   # (B, T, C)
        k, v = self.w_k(x), self.w_v(x)                          # (B, T, C) each
        q = self.query.expand(tokens.shape[0], 1, -1)            # (B, 1, C)
        mask = padding_mask(lengths, tokens.shape[1])            # (B, 1, T)
        out, weights = attention_bmm(q, k, v, attn_mask=mask)    # (B, 1, C), (B, 1, T)
        return self.head(out[:, 0]), weights
        # END SOLUTION


def train_find_token(cfg: FindTokenConfig, steps: int = 300, batch_size: int = 64, lr: float = 3e-2,
                     seed: int = 0, progress: bool = False) -> tuple[FindTokenAttention, dict[str, float]]:
    """Train :class:`FindTokenAttention` with Adam; return the model and held-out metrics.

    Metrics (on 1,000 fresh sequences): ``accuracy``, ``target_weight`` (mean attention weight on
    the signal position), ``uniform_weight`` (what a uniform read-out would put there, mean 1/length),
    ``pad_weight`` (total weight on padding; must be exactly 0), ``first_loss``, ``last_loss``.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = FindTokenAttention(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in tqdm(range(steps), desc="find-the-token", disable=not progress):
        tokens, lengths, labels, _ = make_find_token_batch(cfg, batch_size, gen)
        logits, _ = model(tokens, lengths)
        loss = F.cross_entropy(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        tokens, lengths, labels, pos = make_find_token_batch(cfg, 1000, torch.Generator().manual_seed(seed + 1))
        logits, w = model(tokens, lengths)
        w = w[:, 0]
        pad = torch.arange(cfg.max_len)[None, :] >= lengths[:, None]
        metrics = {
            "accuracy": (logits.argmax(-1) == labels).float().mean().item(),
            "target_weight": w[torch.arange(len(pos)), pos].mean().item(),
            "uniform_weight": (1.0 / lengths.float()).mean().item(),
            "pad_weight": (w * pad).sum(-1).max().item(),
            "first_loss": sum(losses[:10]) / min(10, len(losses)),
            "last_loss": sum(losses[-10:]) / min(10, len(losses)),
        }
    return model, metrics


# ----------------------------------------------------------------------------- self-test helpers


def score_std_table(d_ks: list[int], n: int = 1000, T_k: int = 16, seed: int = 0) -> list[dict[str, float]]:
    """Empirical std of q.k for unit-variance q, k with and without 1/sqrt(d_k), and the mean
    largest softmax weight over T_k keys (saturation) in each case."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for d in d_ks:
        q = torch.randn(n, 1, d, generator=g)
        k = torch.randn(n, T_k, d, generator=g)  # n * T_k dot products per d_k
        raw = (q @ k.transpose(1, 2))[:, 0]  # (n, T_k)
        scaled = raw / math.sqrt(d)
        rows.append({"d_k": d, "std_raw": raw.std().item(), "std_scaled": scaled.std().item(),
                     "maxw_raw": raw.softmax(-1).max(-1).values.mean().item(),
                     "maxw_scaled": scaled.softmax(-1).max(-1).values.mean().item()})
    return rows


def _plot_find_token(model: FindTokenAttention, cfg: FindTokenConfig, path: Path, n: int = 12) -> Path:
    from labkit.plots import plt, savefig

    with torch.no_grad():
        tokens, lengths, labels, pos = make_find_token_batch(cfg, n, torch.Generator().manual_seed(123))
        _, w = model(tokens, lengths)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    im = ax.imshow(w[:, 0].numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.scatter(pos.numpy(), range(n), marker="o", facecolors="none", edgecolors="red", s=120,
               label="signal token")
    for r in range(n):  # hatch the padding so "exactly zero" is visible
        ax.axvspan(lengths[r] - 0.5, cfg.max_len - 0.5, ymin=1 - (r + 1) / n, ymax=1 - r / n,
                   color="white", alpha=0.35, lw=0)
    ax.set_xlabel("key position (lighter band = padding, masked)")
    ax.set_ylabel("example")
    ax.set_title("Learned attention, find-the-token task (1 read-out query)")
    ax.legend(loc="upper right", fontsize=8)
    fig.colorbar(im, ax=ax, label="attention weight")
    return savefig(fig, path)


class _CharAttentionLM(nn.Module):
    """One causal single-head attention layer over characters (token + position embeddings)."""

    def __init__(self, vocab_size: int, block_size: int, d_model: int):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(block_size, d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(2 * d_model, vocab_size)

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(T))
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        y, w = attention_bmm(q, k, v, attn_mask=causal_mask(T))
        return self.out(torch.cat([x, y], dim=-1)), w  # the token itself + what attention read


def shakespeare_attention(steps: int, block_size: int = 64, d_model: int = 64,
                          seed: int = 0, progress: bool = False) -> dict:
    """Train :class:`_CharAttentionLM` on Tiny Shakespeare; return losses and a snippet's weights."""
    from labkit import read_text

    text = read_text("tinyshakespeare", "input.txt")
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    n_train = int(0.9 * len(data))
    train, val = data[:n_train], data[n_train:]
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = _CharAttentionLM(len(chars), block_size, d_model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def batch(src: torch.Tensor, bs: int) -> tuple[torch.Tensor, torch.Tensor]:
        ix = torch.randint(0, len(src) - block_size - 1, (bs,), generator=g)
        x = torch.stack([src[i:i + block_size] for i in ix])
        return x, torch.stack([src[i + 1:i + block_size + 1] for i in ix])

    def val_loss() -> float:
        with torch.no_grad():
            x, y = batch(val, 256)
            return F.cross_entropy(model(x)[0].flatten(0, 1), y.flatten()).item()

    init = val_loss()
    for _ in tqdm(range(steps), desc="shakespeare", disable=not progress):
        x, y = batch(train, 32)
        loss = F.cross_entropy(model(x)[0].flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = val_loss()
    snippet = "ROMEO:\nBut, soft! what light through yonder window breaks?"[:block_size]
    if not all(c in stoi for c in snippet):
        raise RuntimeError("snippet has characters outside the Tiny Shakespeare vocabulary")
    with torch.no_grad():
        _, w = model(torch.tensor([[stoi[c] for c in snippet]]))
    w = w[0]
    return {"init_val_loss": init, "val_loss": final, "vocab_size": len(chars),
            "uniform_loss": math.log(len(chars)), "snippet": snippet, "weights": w,
            "self_weight": w.diagonal().mean().item(),                     # query reads its own position
            "prev_weight": w.diagonal(offset=-1).mean().item()}            # ... the position just before


def _plot_shakespeare(res: dict, path: Path) -> Path:
    from labkit.plots import plt, savefig

    s, w = res["snippet"], res["weights"].numpy()
    labels = [repr(c)[1:-1] for c in s]
    fig, ax = plt.subplots(figsize=(9, 8))
    im = ax.imshow(w, cmap="magma", vmin=0, vmax=w.max())
    ax.set_xticks(range(len(s)), labels, fontsize=6)
    ax.set_yticks(range(len(s)), labels, fontsize=6)
    ax.set_xlabel("key (character attended to)")
    ax.set_ylabel("query (character predicting the next one)")
    ax.set_title(f"1-layer causal attention on Tiny Shakespeare (val loss {res['val_loss']:.2f})")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return savefig(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="more steps and bigger agreement checks")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (tiny models: 1 is fastest)")
    args = ap.parse_args(argv)
    from labkit import seed_everything

    seed_everything(args.seed)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    ok = True

    # 1) agreement of the three implementations and PyTorch, float64
    print("== agreement with F.scaled_dot_product_attention (float64, max |diff| of outputs)")
    B, T, d = (4, 32, 16) if args.full else (2, 12, 8)
    q, k, v = (torch.randn(B, T, d, dtype=torch.float64) for _ in range(3))
    lengths = torch.tensor([T, T // 2] + [T - 3] * (B - 2))
    masks = {"none": None, "causal": causal_mask(T), "padding": padding_mask(lengths, T),
             "causal&padding": causal_mask(T) & padding_mask(lengths, T)}
    print(f"{'mask':<16}{'loops':>12}{'bmm':>12}{'einsum':>12}")
    for name, m in masks.items():
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
        diffs = [(fn(q, k, v, m)[0] - ref).abs().max().item()
                 for fn in (attention_loops, attention_bmm, attention_einsum)]
        print(f"{name:<16}" + "".join(f"{x:>12.1e}" for x in diffs))
        ok &= max(diffs) < 1e-6
    # fully padded query rows: lengths 0 -> every key masked
    empty = padding_mask(torch.tensor([0, T]), T)
    out, w = attention_bmm(q[:2], k[:2], v[:2], empty)
    finite = bool(torch.isfinite(out).all() and torch.isfinite(w).all())
    print(f"fully padded row -> finite: {finite}, weight sum {w[0].sum().item():.1f}, "
          f"|output| {out[0].abs().max().item():.1f}")
    ok &= finite and w[0].abs().sum().item() == 0.0

    # 2) why sqrt(d_k)
    print("\n== why divide by sqrt(d_k): std of q.k (16,000 samples) and mean max softmax weight over 16 keys")
    print(f"{'d_k':>6}{'std raw':>10}{'std scaled':>12}{'max w raw':>11}{'max w scaled':>14}")
    for r in score_std_table([4, 16, 64, 256, 1024]):
        print(f"{r['d_k']:>6}{r['std_raw']:>10.2f}{r['std_scaled']:>12.3f}{r['maxw_raw']:>11.3f}"
              f"{r['maxw_scaled']:>14.3f}")
        ok &= abs(r["std_scaled"] - 1) < 0.05

    # 3) learned attention on the toy task
    cfg = FindTokenConfig()
    steps = 1000 if args.full else 300
    model, met = train_find_token(cfg, steps=steps, seed=args.seed, progress=True)
    print(f"\n== find-the-token ({steps} steps, batch 64, held-out 1000 sequences; "
          f"{time.perf_counter() - t0:.1f} s elapsed)")
    for key in ("first_loss", "last_loss", "accuracy", "target_weight", "uniform_weight", "pad_weight"):
        print(f"{key:<16}{met[key]:.3f}")
    ok &= met["accuracy"] > 0.9 and met["target_weight"] > 0.5 and met["pad_weight"] == 0.0
    print("wrote", _plot_find_token(model, cfg, FIGURES / "find_token_attention.png").relative_to(HERE))

    # 4) bonus: real text
    sh_steps = 1500 if args.full else 300
    res = shakespeare_attention(sh_steps, seed=args.seed, progress=True)
    print(f"\n== Tiny Shakespeare, 1 causal attention layer, {sh_steps} steps "
          f"({time.perf_counter() - t0:.1f} s elapsed)")
    print(f"vocab {res['vocab_size']} chars, uniform loss ln(V) {res['uniform_loss']:.3f}, "
          f"val loss at init {res['init_val_loss']:.3f}, after training {res['val_loss']:.3f}")
    print(f"snippet of {len(res['snippet'])} chars: mean weight on own position {res['self_weight']:.3f}, "
          f"on the previous position {res['prev_weight']:.3f}")
    ok &= res["val_loss"] < res["init_val_loss"] - 0.5
    upper = torch.triu(res["weights"], diagonal=1)
    ok &= upper.abs().max().item() == 0.0  # causal: nothing above the diagonal
    print("wrote", _plot_shakespeare(res, FIGURES / "shakespeare_attention.png").relative_to(HERE))

    print(f"\nself-test {'passed' if ok else 'FAILED'} in {time.perf_counter() - t0:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

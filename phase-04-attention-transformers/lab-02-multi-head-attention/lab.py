# Generated from solution.py by `make labs` (labkit/labgen.py). Fill in the TODOs.
"""Lab 4.2: multi-head attention, naive (one head at a time) and fused (one projection), plus GQA/MQA.

Multi-head attention (Vaswani et al., 2017, section 3.2.2):

    head_h = Attention(x W_q^h, x W_k^h, x W_v^h)          h = 1..n_head, each d_head = d_model / n_head wide
    MHA(x) = concat(head_1, ..., head_n_head) W_o

* ``NaiveMultiHeadAttention`` keeps a separate small projection per head and loops over heads.
* ``MultiHeadAttention`` does ONE (d_model -> 3 d_model) projection and the reshape trick
  (B, T, C) -> (B, n_head, T, d_head), so every head runs in one batched matmul. With the same
  weights the two are the same function; the fused one has the same weight layout as
  ``torch.nn.MultiheadAttention`` (``in_proj_weight`` is (3 d_model, d_model), rows [Q; K; V]).
* ``GroupedQueryAttention`` (Ainslie et al., 2023) gives every group of ``n_head // n_kv_head``
  query heads one shared key/value head: ``n_kv_head == n_head`` is MHA, ``n_kv_head == 1`` is
  multi-query attention (MQA, Shazeer 2019). The K/V projection and the KV cache shrink by
  ``n_head / n_kv_head``.

Masks follow lab 4.1 (and ``F.scaled_dot_product_attention``): bool, True = may attend.
``padding_mask`` is (B, T) with True on real tokens. Careful: ``nn.MultiheadAttention`` uses the
opposite convention (its ``attn_mask``/``key_padding_mask`` True means "do NOT attend").
The core attention is lab 4.1's ``attention_bmm`` (loaded with ``labkit.load_lab``), so a fully
masked query row gives zeros, never NaN.

Run: ``python solution.py`` (small mode, CPU) or ``python solution.py --full``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from labkit import load_lab

HERE = Path(__file__).resolve().parent
FIGURES = HERE / "figures"
attn41 = load_lab("phase-04-attention-transformers/lab-01-scaled-dot-product-attention")


# ----------------------------------------------------------------------------- helpers


def _check_x(x: torch.Tensor, d_model: int) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor of shape (B, T, d_model), got {x!r:.80}")
    if x.dim() != 3 or x.shape[-1] != d_model:
        raise ValueError(f"x must have shape (B, T, d_model={d_model}), got {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError(f"x is empty (T = 0): shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or inf: every query that attends to that token would turn NaN")


def _check_heads(d_model: int, n_head: int, n_kv_head: int | None = None) -> None:
    if d_model < 1 or n_head < 1 or d_model % n_head:
        raise ValueError(f"d_model must be a positive multiple of n_head, got d_model={d_model}, n_head={n_head}")
    if n_kv_head is not None and (n_kv_head < 1 or n_head % n_kv_head):
        raise ValueError(f"n_head must be a multiple of n_kv_head, got n_head={n_head}, n_kv_head={n_kv_head}")


def build_mask(B: int, T_q: int, T_k: int, attn_mask: torch.Tensor | None = None,
               padding_mask: torch.Tensor | None = None, is_causal: bool = False,
               device: torch.device | str | None = None) -> torch.Tensor | None:
    """Combine the three ways of masking into one bool mask broadcastable to (B, n_head, T_q, T_k).

    Args:
        attn_mask: bool, True = may attend; (T_q, T_k), (B, T_q, T_k) or (B, n_head, T_q, T_k).
        padding_mask: bool (B, T_k), True = real token.
        is_causal: add lab 4.1's causal mask.

    Returns:
        bool tensor of 4 dims, or None when nothing is masked.

    Raises:
        TypeError: a mask that is not bool.  ValueError: a mask of the wrong shape.
    """
    mask = None
    if attn_mask is not None:
        if attn_mask.dtype != torch.bool:
            raise TypeError(f"attn_mask must be bool (True = may attend), got {attn_mask.dtype}")
        if attn_mask.dim() == 2:
            attn_mask = attn_mask[None, None]
        elif attn_mask.dim() == 3:
            attn_mask = attn_mask[:, None]
        if attn_mask.dim() != 4 or attn_mask.shape[-2:] != (T_q, T_k) or attn_mask.shape[0] not in (1, B):
            raise ValueError(f"attn_mask must be (T_q, T_k)=({T_q}, {T_k}), (B, T_q, T_k) or "
                             f"(B, n_head, T_q, T_k) with B={B}, got {tuple(attn_mask.shape)}")
        mask = attn_mask
    if padding_mask is not None:
        if padding_mask.dtype != torch.bool:
            raise TypeError(f"padding_mask must be bool (True = real token), got {padding_mask.dtype}")
        if padding_mask.shape != (B, T_k):
            raise ValueError(f"padding_mask must be (B, T_k)=({B}, {T_k}), got {tuple(padding_mask.shape)}")
        pad = padding_mask[:, None, None, :]
        mask = pad if mask is None else mask & pad
    if is_causal:
        causal = attn41.causal_mask(T_q, T_k, device=device)[None, None]
        mask = causal if mask is None else mask & causal
    return mask


def split_heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """(B, T, n_head * d_head) -> (B, n_head, T, d_head): the reshape trick.

    Raises:
        ValueError: x is not 3-D or its last dim is not divisible by n_head.
    """
    if x.dim() != 3 or x.shape[-1] % n_head:
        raise ValueError(f"split_heads needs (B, T, n_head*d_head) with n_head={n_head}, got {tuple(x.shape)}")
    # TODO(1): view the channels as (n_head, d_head), then move the head axis before T (easy, ~5 min)
    raise NotImplementedError("TODO(1)")


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, n_head, T, d_head) -> (B, T, n_head * d_head), the inverse of :func:`split_heads`.

    Raises:
        ValueError: x is not 4-D.
    """
    if x.dim() != 4:
        raise ValueError(f"merge_heads needs (B, n_head, T, d_head), got {tuple(x.shape)}")
    # TODO(2): transpose back to (B, T, n_head, d_head); contiguous before view (easy, ~5 min)
    raise NotImplementedError("TODO(2)")


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, n_kv_head, T, d_head) -> (B, n_kv_head * n_rep, T, d_head), each KV head repeated
    n_rep times in a row, so query head h reads KV head h // n_rep (the Llama convention)."""
    if x.dim() != 4 or n_rep < 1:
        raise ValueError(f"repeat_kv needs (B, n_kv_head, T, d_head) and n_rep >= 1, got {tuple(x.shape)}, {n_rep}")
    # TODO(3): repeat each head n_rep times consecutively (repeat_interleave on dim 1, or expand+reshape) (easy, ~5 min)
    raise NotImplementedError("TODO(3)")


def kv_cache_bytes(n_layer: int, n_kv_head: int, d_head: int, seq_len: int,
                   batch_size: int = 1, bytes_per_elem: int = 2) -> int:
    """Bytes of a KV cache: one K and one V tensor of (batch, n_kv_head, seq_len, d_head) per layer.

    ``bytes_per_elem`` is 2 for float16/bfloat16, 4 for float32. Raises ValueError on a value < 1.
    """
    args = dict(n_layer=n_layer, n_kv_head=n_kv_head, d_head=d_head, seq_len=seq_len,
                batch_size=batch_size, bytes_per_elem=bytes_per_elem)
    if any(not isinstance(v, int) or v < 1 for v in args.values()):
        raise ValueError(f"every argument must be an int >= 1, got {args}")
    # TODO(4): 2 tensors (K and V) x layers x batch x kv heads x tokens x d_head x bytes (easy, ~5 min)
    raise NotImplementedError("TODO(4)")


# ----------------------------------------------------------------------------- MHA, naive


class NaiveMultiHeadAttention(nn.Module):
    """Project-then-split made literal: n_head separate (d_model -> d_head) projections for Q, K
    and V, a Python loop over heads, concat, output projection.

    forward(x (B, T, d_model), attn_mask=None, padding_mask=None, is_causal=False)
        -> (out (B, T, d_model), weights (B, n_head, T, T)).
    """

    def __init__(self, d_model: int, n_head: int, bias: bool = True):
        super().__init__()
        _check_heads(d_model, n_head)
        self.d_model, self.n_head, self.d_head = d_model, n_head, d_model // n_head
        self.q_heads = nn.ModuleList(nn.Linear(d_model, self.d_head, bias=bias) for _ in range(n_head))
        self.k_heads = nn.ModuleList(nn.Linear(d_model, self.d_head, bias=bias) for _ in range(n_head))
        self.v_heads = nn.ModuleList(nn.Linear(d_model, self.d_head, bias=bias) for _ in range(n_head))
        self.proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                padding_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        _check_x(x, self.d_model)
        B, T, _ = x.shape
        mask = build_mask(B, T, T, attn_mask, padding_mask, is_causal, x.device)  # (B|1, H|1, T, T)
        # TODO(5): for each head h: q/k/v from its own Linear, attn41.attention_bmm with that head's mask slice; concat; proj (medium, ~15 min)
        raise NotImplementedError("TODO(5)")

    @torch.no_grad()
    def load_from_fused(self, fused: MultiHeadAttention) -> NaiveMultiHeadAttention:
        """Copy a fused layer's weights so both compute the same function; returns self.

        Raises:
            ValueError: different d_model / n_head, or one has biases and the other not.
        """
        if (fused.d_model, fused.n_head) != (self.d_model, self.n_head):
            raise ValueError(f"shape mismatch: fused is (d_model={fused.d_model}, n_head={fused.n_head}), "
                             f"naive is (d_model={self.d_model}, n_head={self.n_head})")
        if (fused.qkv.bias is None) != (self.proj.bias is None):
            raise ValueError("one layer has biases and the other not; build both with the same bias=")
        # TODO(6): head h of Q is rows [h*d_head, (h+1)*d_head) of the first d_model rows of qkv.weight; same for K, V (medium, ~15 min)
        raise NotImplementedError("TODO(6)")


# ----------------------------------------------------------------------------- MHA, fused


class MultiHeadAttention(nn.Module):
    """Fused multi-head self-attention: one (d_model -> 3 d_model) projection, the reshape trick,
    one batched attention over all heads, output projection.

    Args:
        d_model: model width C.  n_head: number of heads (must divide d_model).
        bias: biases on the projections (True matches ``nn.MultiheadAttention``'s default).
        backend: ``"manual"`` (lab 4.1's ``attention_bmm``; returns the weights) or ``"sdpa"``
            (``F.scaled_dot_product_attention``, PyTorch's fused kernel; weights are None).

    forward(x (B, T, d_model), attn_mask=None, padding_mask=None, is_causal=False)
        -> (out (B, T, d_model), weights (B, n_head, T, T) or None).
    """

    def __init__(self, d_model: int, n_head: int, bias: bool = True, backend: str = "manual"):
        super().__init__()
        _check_heads(d_model, n_head)
        if backend not in ("manual", "sdpa"):
            raise ValueError(f"backend must be 'manual' or 'sdpa', got {backend!r}")
        self.d_model, self.n_head, self.d_head, self.backend = d_model, n_head, d_model // n_head, backend
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)  # rows [W_q; W_k; W_v]
        self.proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                padding_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        _check_x(x, self.d_model)
        B, T, _ = x.shape
        if self.backend == "sdpa" and is_causal and attn_mask is None and padding_mask is None:
            mask = None  # let SDPA pick its causal fast path
        else:
            mask = build_mask(B, T, T, attn_mask, padding_mask, is_causal, x.device)
            is_causal = False
        # TODO(7): one qkv matmul, split into q/k/v, split_heads each, attention over (B, H, T, d_head), merge_heads, proj (medium, ~20 min)
        raise NotImplementedError("TODO(7)")

    @classmethod
    @torch.no_grad()
    def from_torch(cls, mha: nn.MultiheadAttention, backend: str = "manual") -> MultiHeadAttention:
        """A layer computing exactly what ``mha`` (self-attention, same embed dim for q/k/v) computes.

        ``nn.MultiheadAttention`` stores the packed input projection as ``in_proj_weight``
        (3 d_model, d_model) with rows [Q; K; V] -- the same layout as our ``qkv.weight``.

        Raises:
            ValueError: ``mha`` has separate q/k/v weights (kdim/vdim differ), bias_k/add_zero_attn.
        """
        if mha.in_proj_weight is None or mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("only plain self-attention nn.MultiheadAttention (packed in_proj, no bias_k, "
                             "no add_zero_attn) can be copied")
        bias = mha.in_proj_bias is not None
        ours = cls(mha.embed_dim, mha.num_heads, bias=bias, backend=backend).to(mha.in_proj_weight.dtype)
        ours.qkv.weight.copy_(mha.in_proj_weight)
        ours.proj.weight.copy_(mha.out_proj.weight)
        if bias:
            ours.qkv.bias.copy_(mha.in_proj_bias)
            ours.proj.bias.copy_(mha.out_proj.bias)
        return ours


# ----------------------------------------------------------------------------- GQA / MQA


class GroupedQueryAttention(nn.Module):
    """Grouped-query self-attention: n_head query heads share n_kv_head key/value heads.

    ``n_kv_head == n_head`` is MHA; ``n_kv_head == 1`` is MQA. The K/V projection is
    (d_model -> 2 * n_kv_head * d_head), rows [all K heads; all V heads].

    forward(x (B, T, d_model), attn_mask=None, padding_mask=None, is_causal=False)
        -> (out (B, T, d_model), weights (B, n_head, T, T)).
    """

    def __init__(self, d_model: int, n_head: int, n_kv_head: int, bias: bool = True):
        super().__init__()
        _check_heads(d_model, n_head, n_kv_head)
        self.d_model, self.n_head, self.n_kv_head = d_model, n_head, n_kv_head
        self.d_head = d_model // n_head
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.kv_proj = nn.Linear(d_model, 2 * n_kv_head * self.d_head, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)

    def kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values as a KV cache would store them: two (B, n_kv_head, T, d_head) tensors."""
        _check_x(x, self.d_model)
        # TODO(8): kv_proj, split into K and V halves, split_heads with n_kv_head (easy, ~5 min)
        raise NotImplementedError("TODO(8)")

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                padding_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        _check_x(x, self.d_model)
        B, T, _ = x.shape
        mask = build_mask(B, T, T, attn_mask, padding_mask, is_causal, x.device)
        # TODO(9): q heads from q_proj, k/v from self.kv, repeat_kv to n_head, attention, merge, proj (medium, ~15 min)
        raise NotImplementedError("TODO(9)")

    @classmethod
    @torch.no_grad()
    def from_mha(cls, mha: MultiHeadAttention, n_kv_head: int) -> GroupedQueryAttention:
        """Convert a trained MHA layer to GQA by mean-pooling the K and V heads of each group
        (the "uptraining" starting point of Ainslie et al., 2023). Exact when n_kv_head == n_head.

        Raises:
            ValueError: n_kv_head does not divide mha.n_head.
        """
        bias = mha.qkv.bias is not None
        gqa = cls(mha.d_model, mha.n_head, n_kv_head, bias=bias).to(mha.qkv.weight.dtype)
        # TODO(10): copy W_q; view W_k, W_v as (n_kv_head, group, d_head, d_model) and mean over the group (medium, ~15 min)
        raise NotImplementedError("TODO(10)")


# ----------------------------------------------------------------------------- self-test


def benchmark_table(seq_lens: list[int], d_model: int, n_head: int, batch_size: int,
                    repeats: int, seed: int = 0) -> list[dict[str, float]]:
    """Fastest-of-``repeats`` forward wall-clock (ms, no grad, float32) of the four implementations per T.

    The minimum, not the median: on a shared CPU other jobs only ever add time.
    """
    from labkit import benchmark

    torch.manual_seed(seed)
    ref = nn.MultiheadAttention(d_model, n_head, batch_first=True).eval()
    fused = MultiHeadAttention.from_torch(ref).eval()
    sdpa = MultiHeadAttention.from_torch(ref, backend="sdpa").eval()
    naive = NaiveMultiHeadAttention(d_model, n_head).load_from_fused(fused).eval()
    rows = []
    for T in tqdm(seq_lens, desc="benchmark"):
        x = torch.randn(batch_size, T, d_model)
        future = ~attn41.causal_mask(T)  # nn.MultiheadAttention's convention: True = do NOT attend
        fns = {  # default arguments bind this iteration's x and mask
            "naive": lambda x=x: naive(x, is_causal=True),
            "fused": lambda x=x: fused(x, is_causal=True),
            "nn.MHA": lambda x=x, m=future: ref(x, x, x, attn_mask=m, need_weights=False),
            "fused+SDPA": lambda x=x: sdpa(x, is_causal=True),
        }
        row: dict[str, float] = {"T": T}
        with torch.no_grad():
            outs = {k: f()[0] for k, f in fns.items()}
            err = max((o - outs["nn.MHA"]).abs().max().item() for o in outs.values())
            for k, f in fns.items():
                row[k] = benchmark(f, repeats=repeats, warmup=1, name=k).min * 1e3
        row["max_err"] = err
        rows.append(row)
    return rows


def _plot_benchmark(rows: list[dict[str, float]], title: str, path: Path) -> Path:
    from labkit.plots import plt, savefig

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for k, style in (("naive", "o-"), ("fused", "s-"), ("nn.MHA", "^-"), ("fused+SDPA", "d-")):
        ax.plot([r["T"] for r in rows], [r[k] for r in rows], style, label=k)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T (tokens)")
    ax.set_ylabel("fastest forward time (ms)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return savefig(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="bigger model and longer sequences")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads for the benchmark")
    args = ap.parse_args(argv)
    from labkit import seed_everything

    seed_everything(args.seed)
    t0 = time.perf_counter()
    ok = True

    # 1) equality with nn.MultiheadAttention
    d_model, n_head, B, T = 64, 8, 3, 10
    ref = nn.MultiheadAttention(d_model, n_head, batch_first=True).eval()
    fused = MultiHeadAttention.from_torch(ref)
    naive = NaiveMultiHeadAttention(d_model, n_head).load_from_fused(fused)
    gqa_full = GroupedQueryAttention.from_mha(fused, n_kv_head=n_head)
    x = torch.randn(B, T, d_model)
    pad = torch.arange(T)[None] < torch.tensor([T, 7, 4])[:, None]  # True = real token
    causal = attn41.causal_mask(T)
    print(f"== max |ours - nn.MultiheadAttention| (float32, B={B}, T={T}, d_model={d_model}, n_head={n_head})")
    print(f"{'mask':<16}{'naive':>10}{'fused':>10}{'fused+SDPA':>12}{'GQA(kv=H)':>11}")
    sdpa = MultiHeadAttention.from_torch(ref, backend="sdpa")
    with torch.no_grad():
        for name, ours_kw, ref_kw in (
            ("none", {}, {}),
            ("causal", {"is_causal": True}, {"attn_mask": ~causal}),
            ("padding", {"padding_mask": pad}, {"key_padding_mask": ~pad}),
            ("causal+padding", {"is_causal": True, "padding_mask": pad},
             {"attn_mask": ~causal, "key_padding_mask": ~pad}),
        ):
            want = ref(x, x, x, need_weights=False, **ref_kw)[0]
            errs = [(m(x, **ours_kw)[0] - want).abs().max().item() for m in (naive, fused, sdpa, gqa_full)]
            print(f"{name:<16}" + "".join(f"{e:>{w}.1e}" for e, w in zip(errs, (10, 10, 12, 11))))
            ok &= max(errs) < 1e-5

    # 2) parameters and KV cache for MHA / GQA / MQA
    print(f"\n== K/V projection parameters at d_model={d_model}, n_head={n_head} (with biases)")
    print(f"{'variant':<12}{'n_kv_head':>10}{'K/V params':>12}{'all params':>12}{'K/V bytes, T=1024 fp32':>26}")
    kv_mha = None
    for name, kvh in (("MHA", n_head), ("GQA", 2), ("MQA", 1)):
        layer = GroupedQueryAttention(d_model, n_head, kvh)
        kv_params = sum(p.numel() for p in layer.kv_proj.parameters())
        kv_mha = kv_mha or kv_params
        with torch.no_grad():
            k, v = layer.kv(torch.randn(1, 1024, d_model))
        measured = k.numel() * k.element_size() + v.numel() * v.element_size()
        ok &= measured == kv_cache_bytes(1, kvh, d_model // n_head, 1024, 1, 4)
        ok &= kv_params * n_head == kv_mha * kvh
        print(f"{name:<12}{kvh:>10}{kv_params:>12,}{sum(p.numel() for p in layer.parameters()):>12,}{measured:>26,}")
    print("\n== KV cache of a Llama-3-8B-shaped model (32 layers, 32 query heads, d_head 128), bf16, batch 1")
    print(f"{'variant':<8}{'n_kv_head':>10}{'GiB at 8,192 tokens':>22}{'GiB at 131,072 tokens':>24}")
    for name, kvh in (("MHA", 32), ("GQA-8", 8), ("MQA", 1)):
        gib = [kv_cache_bytes(32, kvh, 128, n) / 2**30 for n in (8192, 131072)]
        print(f"{name:<8}{kvh:>10}{gib[0]:>22.3f}{gib[1]:>24.3f}")

    # 3) wall-clock
    if args.full:
        seq_lens, d_b, h_b, b_b, reps = [64, 128, 256, 512, 1024, 2048], 512, 8, 2, 10
    else:
        seq_lens, d_b, h_b, b_b, reps = [32, 64, 128, 256, 512], 128, 8, 2, 9
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)  # fewer threads than busy cores keeps a shared CPU from thrashing
    rows = benchmark_table(seq_lens, d_b, h_b, b_b, reps, seed=args.seed)
    torch.set_num_threads(threads)
    title = (f"MHA forward, d_model={d_b}, n_head={h_b}, B={b_b}, causal, float32, CPU "
             f"({args.threads} thread(s))")
    print(f"\n== fastest-of-{reps} forward ms ({title})")
    print("(ratios are of times measured in this one run; on a shared CPU they move from run to run)")
    print(f"{'T':>6}{'naive':>10}{'fused':>10}{'nn.MHA':>10}{'fused+SDPA':>12}{'max err':>10}"
          f"{'naive/fused':>13}{'nn.MHA/SDPA':>13}")
    for r in rows:
        print(f"{r['T']:>6}{r['naive']:>10.3f}{r['fused']:>10.3f}{r['nn.MHA']:>10.3f}{r['fused+SDPA']:>12.3f}"
              f"{r['max_err']:>10.1e}{r['naive'] / r['fused']:>13.2f}{r['nn.MHA'] / r['fused+SDPA']:>13.2f}")
        ok &= r["max_err"] < 1e-4
    print("wrote", _plot_benchmark(rows, title, FIGURES / "mha_benchmark.png").relative_to(HERE))

    print(f"\nself-test {'passed' if ok else 'FAILED'} in {time.perf_counter() - t0:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

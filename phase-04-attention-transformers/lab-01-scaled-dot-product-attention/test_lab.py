"""Grader for lab 4.1: scaled dot-product attention three ways, masks, and a toy attention model.

The reference everywhere is ``torch.nn.functional.scaled_dot_product_attention`` (PyTorch's own
kernel) and, for masks, ``torch.tril``. Mask convention: bool, True = may attend.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

IMPLS = ("attention_loops", "attention_bmm", "attention_einsum")


def _qkv(B=2, T_q=5, T_k=7, d_k=4, d_v=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, T_q, d_k, generator=g, dtype=dtype),
            torch.randn(B, T_k, d_k, generator=g, dtype=dtype),
            torch.randn(B, T_k, d_v, generator=g, dtype=dtype))


# ----------------------------------------------------------------------------- masks

def test_causal_mask_is_tril(lab):
    for T in (1, 2, 5, 9):
        got = lab.causal_mask(T)
        want = torch.tril(torch.ones(T, T, dtype=torch.bool))
        assert got.dtype == torch.bool, f"causal_mask must be a bool tensor, got {got.dtype}"
        assert torch.equal(got, want), (
            f"causal_mask({T}) should be torch.tril(ones) (True on and below the diagonal). "
            "Is it upside down (triu = attending to the future) or missing the diagonal (a token "
            "must see itself)?")


def test_causal_mask_with_longer_keys(lab):
    # 2 new queries at the end of 5 cached positions: query 0 is absolute position 3
    got = lab.causal_mask(2, 5)
    want = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(got, want), (
        "with T_k > T_q the queries are the LAST T_q positions: use torch.tril(..., diagonal=T_k - T_q)")


def test_padding_mask(lab):
    m = lab.padding_mask(torch.tensor([3, 0, 5]), 5)
    assert m.shape == (3, 1, 5), f"padding_mask must be (B, 1, T_k) to broadcast over queries, got {tuple(m.shape)}"
    want = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(m[:, 0], want), "True must mark the first `length` (real) positions, False the padding"


# ----------------------------------------------------------------------------- agreement

@pytest.mark.parametrize("name", IMPLS)
@pytest.mark.parametrize("mask_kind", ["none", "causal", "padding", "both"])
def test_matches_torch_sdpa(lab, name, mask_kind):
    q, k, v = _qkv(T_q=6, T_k=6)
    mask = {"none": None, "causal": lab.causal_mask(6) if mask_kind in ("causal", "both") else None}.get(mask_kind)
    if mask_kind in ("padding", "both"):
        pad = lab.padding_mask(torch.tensor([6, 3]), 6)
        mask = pad if mask is None else mask & pad
    out, w = getattr(lab, name)(q, k, v, attn_mask=mask)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert out.shape == ref.shape, f"{name}: output should be (B, T_q, d_v) = {tuple(ref.shape)}, got {tuple(out.shape)}"
    assert w.shape == (2, 6, 6), f"{name}: weights should be (B, T_q, T_k), got {tuple(w.shape)}"
    err = (out - ref).abs().max().item()
    assert err < 1e-6, (f"{name} differs from F.scaled_dot_product_attention by {err:.2e} (mask={mask_kind}). "
                        "Did you divide by sqrt(d_k), softmax over the KEY axis (dim=-1), and fill masked "
                        "scores with -inf BEFORE the softmax?")


@pytest.mark.parametrize("name", IMPLS)
def test_rectangular_and_custom_scale(lab, name):
    q, k, v = _qkv(T_q=3, T_k=8, d_k=5, d_v=2, seed=1)
    out, _ = getattr(lab, name)(q, k, v, scale=0.3)
    ref = F.scaled_dot_product_attention(q, k, v, scale=0.3)
    assert torch.allclose(out, ref, atol=1e-6), (
        f"{name}: with T_q != T_k and scale=0.3 the output is wrong; use q @ k^T (T_q x T_k) and "
        "honour the `scale` argument instead of always using 1/sqrt(d_k)")


@pytest.mark.parametrize("name", ["attention_bmm", "attention_einsum"])
def test_extra_batch_dims_heads(lab, name):
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64) for _ in range(3))  # (B, H, T, d)
    mask = lab.causal_mask(5)
    out, _ = getattr(lab, name)(q, k, v, attn_mask=mask)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(out, ref, atol=1e-10), (
        f"{name} must accept any leading batch dims, e.g. (B, n_head, T, d_head); flatten them for bmm "
        "and restore them afterwards")


@settings(max_examples=20, deadline=None)
@given(B=st.integers(1, 2), T_q=st.integers(1, 5), T_k=st.integers(1, 6), d_k=st.integers(1, 5),
       d_v=st.integers(1, 4), seed=st.integers(0, 10_000), p_keep=st.floats(0.0, 1.0))
def test_three_ways_agree_property(lab, B, T_q, T_k, d_k, d_v, seed, p_keep):
    q, k, v = _qkv(B, T_q, T_k, d_k, d_v, seed)
    g = torch.Generator().manual_seed(seed + 1)
    mask = torch.rand(B, T_q, T_k, generator=g) < p_keep  # random masks, fully masked rows included
    outs = [getattr(lab, n)(q, k, v, attn_mask=mask) for n in IMPLS]
    for n, (o, w) in zip(IMPLS[1:], outs[1:]):
        assert torch.allclose(o, outs[0][0], atol=1e-6, rtol=0), f"{n} and attention_loops disagree on the output"
        assert torch.allclose(w, outs[0][1], atol=1e-6, rtol=0), f"{n} and attention_loops disagree on the weights"
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(outs[1][0], ref, atol=1e-6, rtol=0), "attention_bmm disagrees with PyTorch's SDPA"


# ----------------------------------------------------------------------------- weights

@pytest.mark.parametrize("name", IMPLS)
def test_masked_weights_exactly_zero_and_rows_sum_to_one(lab, name):
    q, k, v = _qkv(T_q=6, T_k=6, seed=4)
    q = q * 30  # large scores: -1e9-style masks leak here, -inf does not
    mask = lab.causal_mask(6) & lab.padding_mask(torch.tensor([6, 4]), 6)
    _, w = getattr(lab, name)(q, k, v, attn_mask=mask)
    assert (w[~mask.expand_as(w)] == 0).all(), (
        f"{name}: masked positions must get EXACTLY zero weight; fill with float('-inf') before the "
        "softmax (a large negative number like -1e4 can leak weight)")
    assert torch.allclose(w.sum(-1), torch.ones(2, 6, dtype=w.dtype), atol=1e-12), (
        f"{name}: every attention row must sum to 1; softmax over dim=-1 (the keys), not dim=-2")


@pytest.mark.parametrize("name", IMPLS)
def test_fully_padded_row_gives_zeros_not_nan(lab, name):
    q, k, v = _qkv(T_q=3, T_k=4, seed=5)
    q.requires_grad_(True)
    mask = torch.ones(2, 3, 4, dtype=torch.bool)
    mask[0, 1] = False          # one query sees no key at all
    mask[1] = False             # a whole sequence of padding
    out, w = getattr(lab, name)(q, k, v, attn_mask=mask)
    assert torch.isfinite(out).all() and torch.isfinite(w).all(), (
        f"{name}: a query with every key masked produced NaN (softmax of all -inf is 0/0). "
        "The lab's documented choice: all-zero weights and output for such rows")
    assert (w[0, 1] == 0).all() and (out[0, 1] == 0).all() and (out[1] == 0).all(), (
        f"{name}: a fully masked row must give zero weights and a zero output")
    assert torch.allclose(w[0, 0].sum(), torch.tensor(1.0, dtype=w.dtype)), "the other rows still sum to 1"
    out.sum().backward()
    assert torch.isfinite(q.grad).all(), (
        f"{name}: gradients through a fully masked row are NaN; give that row finite scores before the "
        "softmax and zero it afterwards (torch.where on a NaN branch still leaks NaN gradients)")


def test_masked_softmax_matches_torch(lab):
    g = torch.Generator().manual_seed(6)
    s = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    mask = torch.rand(3, 4, 5, generator=g) > 0.4
    mask[..., 0] = True  # no fully masked row here
    got = lab.masked_softmax(s, mask)
    want = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1)
    assert torch.allclose(got, want, atol=1e-12), "masked_softmax must equal softmax(scores.masked_fill(~mask, -inf))"


def test_gradients_match_sdpa(lab):
    q, k, v = _qkv(T_q=5, T_k=5, seed=7)
    ours = [t.clone().requires_grad_(True) for t in (q, k, v)]
    ref = [t.clone().requires_grad_(True) for t in (q, k, v)]
    mask = lab.causal_mask(5)
    lab.attention_bmm(*ours, attn_mask=mask)[0].pow(2).sum().backward()
    F.scaled_dot_product_attention(*ref, attn_mask=mask).pow(2).sum().backward()
    for name, a, b in zip("qkv", ours, ref):
        assert torch.allclose(a.grad, b.grad, atol=1e-8), f"d(loss)/d{name} differs from PyTorch's SDPA"


def test_scaling_keeps_score_variance_near_one(lab):
    g = torch.Generator().manual_seed(8)
    d_k = 256
    q = torch.randn(1, 400, d_k, generator=g, dtype=torch.float64)
    k = torch.randn(1, 400, d_k, generator=g, dtype=torch.float64)
    v = torch.eye(400, dtype=torch.float64)[None]  # output = the weights themselves
    out, w = lab.attention_einsum(q, k, v)
    raw = (q @ k.transpose(1, 2))[0] / math.sqrt(d_k)
    assert torch.allclose(w[0], raw.softmax(-1), atol=1e-10), "attention_einsum: default scale is 1/sqrt(d_k)"
    assert torch.allclose(out, w, atol=1e-10), "with V = identity the output must equal the weights"


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("name", IMPLS)
def test_bad_shapes_raise_clear_errors(lab, name):
    fn = getattr(lab, name)
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="d_k"):
        fn(q, k[..., :3], v)
    with pytest.raises(ValueError, match="T_k"):
        fn(q, k, v[:, :5])
    with pytest.raises(ValueError, match="batch"):
        fn(q, k[:1], v[:1])
    with pytest.raises(ValueError, match="attn_mask"):
        fn(q, k, v, attn_mask=torch.ones(5, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        fn(q, k, v, attn_mask=torch.ones(5, 7))
    with pytest.raises(TypeError, match="floating"):
        fn(q.long(), k.long(), v.long())


def test_bad_mask_arguments(lab):
    with pytest.raises(ValueError):
        lab.causal_mask(4, 2)
    with pytest.raises(ValueError):
        lab.padding_mask(torch.tensor([2, 9]), 5)
    with pytest.raises(TypeError):
        lab.padding_mask(torch.tensor([2.0, 3.0]), 5)


# ----------------------------------------------------------------------------- toy model

def test_find_token_model_learns_to_attend(lab):
    cfg = lab.FindTokenConfig()
    model, met = lab.train_find_token(cfg, steps=150, seed=0)
    assert met["pad_weight"] == 0.0, "padding keys received attention weight: is the padding mask applied?"
    assert met["accuracy"] > 0.9, (
        f"held-out accuracy {met['accuracy']:.2f} after 150 steps; the read-out should learn to find the "
        "signal token (check that k and v come from the embeddings and the query is broadcast over the batch)")
    assert met["target_weight"] > 5 * met["uniform_weight"], (
        f"mean weight on the signal position {met['target_weight']:.2f} is not far above uniform "
        f"{met['uniform_weight']:.2f}: the model is not using attention to find the token")
    tokens, lengths, _, _ = lab.make_find_token_batch(cfg, 4, torch.Generator().manual_seed(0))
    logits, w = model(tokens, lengths)
    assert logits.shape == (4, cfg.n_signal) and w.shape == (4, 1, cfg.max_len), (
        "FindTokenAttention.forward returns (logits (B, n_signal), weights (B, 1, T))")

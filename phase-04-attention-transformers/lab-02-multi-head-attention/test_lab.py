"""Grader for lab 4.2: multi-head attention (naive and fused), GQA and MQA.

The reference is ``torch.nn.MultiheadAttention(batch_first=True)`` with the same weights.
Remember its masks are inverted relative to ours: there True means "do NOT attend".
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

D_MODEL, N_HEAD, B, T = 32, 4, 3, 7


@pytest.fixture(scope="module")
def setup(lab):
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(D_MODEL, N_HEAD, batch_first=True).eval()
    with torch.no_grad():  # non-zero biases so a forgotten bias shows up
        ref.in_proj_bias.normal_(0, 0.5)
        ref.out_proj.bias.normal_(0, 0.5)
    x = torch.randn(B, T, D_MODEL, generator=torch.Generator().manual_seed(1))
    pad = torch.arange(T)[None] < torch.tensor([T, 5, 2])[:, None]  # True = real token
    return ref, x, pad


MASKS = ["none", "causal", "padding", "causal+padding", "custom"]


def _kwargs(kind, pad):
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    custom = torch.rand(B, T, T, generator=torch.Generator().manual_seed(2)) > 0.3
    custom[:, :, 0] = True  # no fully masked row: nn.MultiheadAttention returns NaN there
    ours = {"none": {}, "causal": {"is_causal": True}, "padding": {"padding_mask": pad},
            "causal+padding": {"is_causal": True, "padding_mask": pad}, "custom": {"attn_mask": custom}}[kind]
    theirs = {"none": {}, "causal": {"attn_mask": ~causal}, "padding": {"key_padding_mask": ~pad},
              "causal+padding": {"attn_mask": ~causal, "key_padding_mask": ~pad},
              "custom": {"attn_mask": (~custom).repeat_interleave(N_HEAD, dim=0)}}[kind]
    return ours, theirs


# ----------------------------------------------------------------------------- reshape helpers

def test_split_and_merge_heads(lab):
    x = torch.arange(2 * 3 * 8, dtype=torch.float32).view(2, 3, 8)
    h = lab.split_heads(x, 4)
    assert h.shape == (2, 4, 3, 2), f"split_heads must give (B, n_head, T, d_head) = (2, 4, 3, 2), got {tuple(h.shape)}"
    assert torch.equal(h[0, 1, 2], x[0, 2, 2:4]), (
        "head 1 of token 2 should be channels [2:4] of that token: view as (B, T, n_head, d_head) FIRST, "
        "then transpose(1, 2); viewing straight to (B, n_head, T, d_head) scrambles tokens and heads")
    back = lab.merge_heads(h)
    assert torch.equal(back, x), "merge_heads(split_heads(x)) must give x back"


def test_repeat_kv_order(lab):
    x = torch.arange(2, dtype=torch.float32).view(1, 2, 1, 1).expand(1, 2, 3, 4)
    r = lab.repeat_kv(x, 3)
    assert r.shape == (1, 6, 3, 4), f"repeat_kv(x, 3) of (1, 2, 3, 4) must be (1, 6, 3, 4), got {tuple(r.shape)}"
    assert r[0, :, 0, 0].tolist() == [0, 0, 0, 1, 1, 1], (
        "each KV head must be repeated n_rep times in a row ([k0, k0, k0, k1, k1, k1]), so query head h "
        "reads KV head h // n_rep; .repeat(1, n_rep, 1, 1) interleaves them the wrong way")


def test_kv_cache_bytes(lab):
    # Llama-3-8B: 32 layers, 8 KV heads, d_head 128, bf16: 128 KiB per token
    assert lab.kv_cache_bytes(32, 8, 128, 1) == 131072, "K and V, per layer, per KV head, per token, per element"
    assert lab.kv_cache_bytes(2, 4, 16, 10, batch_size=3, bytes_per_elem=4) == 2 * 2 * 4 * 16 * 10 * 3 * 4
    with pytest.raises(ValueError):
        lab.kv_cache_bytes(0, 8, 128, 1)


# ----------------------------------------------------------------------------- equality with torch

@pytest.mark.parametrize("kind", MASKS)
def test_fused_matches_nn_multihead_attention(lab, setup, kind):
    ref, x, pad = setup
    ours_kw, ref_kw = _kwargs(kind, pad)
    fused = lab.MultiHeadAttention.from_torch(ref)
    with torch.no_grad():
        want, want_w = ref(x, x, x, need_weights=True, average_attn_weights=False, **ref_kw)
        got, got_w = fused(x, **ours_kw)
    assert got.shape == (B, T, D_MODEL), f"output must be (B, T, d_model), got {tuple(got.shape)}"
    err = (got - want).abs().max().item()
    assert err < 1e-5, (f"fused MHA differs from nn.MultiheadAttention by {err:.2e} (mask={kind}). Check: one qkv "
                        "matmul split in the order Q, K, V; view(B, T, n_head, d_head).transpose(1, 2); "
                        "transpose back + contiguous before the output projection")
    assert torch.allclose(got_w, want_w, atol=1e-5), "per-head attention weights differ from nn.MultiheadAttention's"


@pytest.mark.parametrize("kind", MASKS)
def test_sdpa_backend_matches(lab, setup, kind):
    ref, x, pad = setup
    ours_kw, ref_kw = _kwargs(kind, pad)
    layer = lab.MultiHeadAttention.from_torch(ref, backend="sdpa")
    with torch.no_grad():
        err = (layer(x, **ours_kw)[0] - ref(x, x, x, need_weights=False, **ref_kw)[0]).abs().max().item()
    assert err < 1e-5, f"backend='sdpa' differs from nn.MultiheadAttention by {err:.2e} (mask={kind})"


@pytest.mark.parametrize("kind", MASKS)
def test_naive_equals_fused(lab, setup, kind):
    ref, x, pad = setup
    ours_kw, ref_kw = _kwargs(kind, pad)
    fused = lab.MultiHeadAttention.from_torch(ref)
    naive = lab.NaiveMultiHeadAttention(D_MODEL, N_HEAD).load_from_fused(fused)
    with torch.no_grad():
        out, w = naive(x, **ours_kw)
        want = ref(x, x, x, need_weights=False, **ref_kw)[0]
    assert w.shape == (B, N_HEAD, T, T), f"naive weights must be stacked to (B, n_head, T, T), got {tuple(w.shape)}"
    err = (out - want).abs().max().item()
    assert err < 1e-5, (f"naive per-head MHA differs from nn.MultiheadAttention by {err:.2e} (mask={kind}). "
                        "load_from_fused: head h of Q is rows [h*d_head, (h+1)*d_head) of the first d_model rows "
                        "of qkv.weight (K starts at row d_model, V at 2*d_model); concat heads in order")


def test_no_bias_and_float64(lab):
    torch.manual_seed(3)
    ref = nn.MultiheadAttention(16, 2, bias=False, batch_first=True, dtype=torch.float64).eval()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    fused = lab.MultiHeadAttention.from_torch(ref)
    with torch.no_grad():
        err = (fused(x, is_causal=True)[0] - ref(x, x, x, attn_mask=~torch.tril(torch.ones(5, 5, dtype=torch.bool)),
                                                 need_weights=False)[0]).abs().max().item()
    assert err < 1e-12, f"float64, bias=False: differs from nn.MultiheadAttention by {err:.2e}"


def test_gradients_match_torch(lab, setup):
    ref, x, _ = setup
    fused = lab.MultiHeadAttention.from_torch(ref)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    fused(xa, is_causal=True)[0].pow(2).sum().backward()
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    ref(xb, xb, xb, attn_mask=~causal, need_weights=False)[0].pow(2).sum().backward()
    assert torch.allclose(xa.grad, xb.grad, atol=1e-4), "input gradients differ from nn.MultiheadAttention's"
    assert torch.allclose(fused.qkv.weight.grad, ref.in_proj_weight.grad, atol=1e-4), (
        "qkv weight gradients differ from nn.MultiheadAttention's in_proj_weight gradients")
    ref.zero_grad()


# ----------------------------------------------------------------------------- GQA / MQA

@pytest.mark.parametrize("kind", MASKS)
def test_gqa_with_all_kv_heads_equals_mha(lab, setup, kind):
    ref, x, pad = setup
    ours_kw, ref_kw = _kwargs(kind, pad)
    fused = lab.MultiHeadAttention.from_torch(ref)
    gqa = lab.GroupedQueryAttention.from_mha(fused, n_kv_head=N_HEAD)
    with torch.no_grad():
        err = (gqa(x, **ours_kw)[0] - ref(x, x, x, need_weights=False, **ref_kw)[0]).abs().max().item()
    assert err < 1e-5, (f"GQA with n_kv_head == n_head must be exactly MHA (err {err:.2e}, mask={kind}); check "
                        "from_mha copies W_q, and that kv_proj rows are [all K heads; all V heads]")


def test_gqa_mean_pools_heads(lab, setup):
    ref, x, _ = setup
    fused = lab.MultiHeadAttention.from_torch(ref)
    gqa = lab.GroupedQueryAttention.from_mha(fused, n_kv_head=2)  # groups {0, 1} and {2, 3}
    d = D_MODEL // N_HEAD
    with torch.no_grad():
        k_fused = lab.split_heads(x @ fused.qkv.weight[D_MODEL:2 * D_MODEL].T + fused.qkv.bias[D_MODEL:2 * D_MODEL], N_HEAD)
        k_gqa, v_gqa = gqa.kv(x)
    assert k_gqa.shape == (B, 2, T, d), f"kv() must return (B, n_kv_head, T, d_head) = {(B, 2, T, d)}, got {tuple(k_gqa.shape)}"
    want = torch.stack([k_fused[:, 0:2].mean(1), k_fused[:, 2:4].mean(1)], dim=1)
    assert torch.allclose(k_gqa, want, atol=1e-5), (
        "from_mha with n_kv_head=2 should mean-pool K heads {0,1} and {2,3} (consecutive heads form a group)")


@pytest.mark.parametrize("n_kv_head", [1, 2, 4])
def test_gqa_runs_and_shrinks_kv(lab, setup, n_kv_head):
    _, x, pad = setup
    torch.manual_seed(4)
    layer = lab.GroupedQueryAttention(D_MODEL, N_HEAD, n_kv_head)
    mha_like = lab.GroupedQueryAttention(D_MODEL, N_HEAD, N_HEAD)
    d = D_MODEL // N_HEAD
    kv_params = sum(p.numel() for p in layer.kv_proj.parameters())
    assert kv_params == 2 * n_kv_head * d * (D_MODEL + 1), "K/V projection: 2 * n_kv_head * d_head outputs (+ bias)"
    assert kv_params * N_HEAD == sum(p.numel() for p in mha_like.kv_proj.parameters()) * n_kv_head, (
        "the K/V parameters must shrink by n_head / n_kv_head")
    with torch.no_grad():
        k, v = layer.kv(x)
        out, w = layer(x, is_causal=True, padding_mask=pad)
    cache = k.numel() * k.element_size() + v.numel() * v.element_size()
    assert cache == lab.kv_cache_bytes(1, n_kv_head, d, T, batch_size=B, bytes_per_elem=4), (
        "the K/V tensors a cache would hold must match kv_cache_bytes")
    assert out.shape == (B, T, D_MODEL) and w.shape == (B, N_HEAD, T, T), (
        "GQA output (B, T, d_model), weights (B, n_head, T, T): repeat the KV heads up to n_head")
    assert (w[1, :, :, 5:] == 0).all(), "padding keys must get zero weight in every head"
    assert (torch.triu(w, diagonal=1) == 0).all(), "is_causal=True: no weight above the diagonal"


def test_mqa_heads_share_one_key(lab, setup):
    _, x, _ = setup
    torch.manual_seed(5)
    mqa = lab.GroupedQueryAttention(D_MODEL, N_HEAD, n_kv_head=1)
    with torch.no_grad():  # identical query heads => identical weights, since K is shared
        q = mqa.q_proj.weight.view(N_HEAD, D_MODEL // N_HEAD, D_MODEL)
        q[1:] = q[0]
        mqa.q_proj.bias.view(N_HEAD, -1)[1:] = mqa.q_proj.bias.view(N_HEAD, -1)[0]
        _, w = mqa(x)
    assert torch.allclose(w[:, 0], w[:, 3], atol=1e-6), "MQA: all query heads must attend over the same single K head"


# ----------------------------------------------------------------------------- bad input

@pytest.mark.given
def test_bad_shapes_raise(lab, setup):
    ref, x, pad = setup
    fused = lab.MultiHeadAttention.from_torch(ref)
    with pytest.raises(ValueError, match="d_model"):
        fused(torch.randn(B, T, D_MODEL + 1))
    with pytest.raises(ValueError, match=r"\(B, T, d_model"):
        fused(torch.randn(T, D_MODEL))
    with pytest.raises(ValueError, match="padding_mask"):
        fused(x, padding_mask=pad[:, :3])
    with pytest.raises(ValueError, match="attn_mask"):
        fused(x, attn_mask=torch.ones(T, T + 1, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        fused(x, attn_mask=torch.zeros(T, T))
    with pytest.raises(ValueError, match="multiple of n_head"):
        lab.MultiHeadAttention(30, 4)
    with pytest.raises(ValueError, match="n_kv_head"):
        lab.GroupedQueryAttention(32, 4, 3)
    with pytest.raises(ValueError, match="n_head"):
        lab.NaiveMultiHeadAttention(32, 8).load_from_fused(lab.MultiHeadAttention(32, 4))


@pytest.mark.given
def test_nonfinite_or_empty_input_raises(lab):
    layer = lab.MultiHeadAttention(D_MODEL, N_HEAD)
    x = torch.randn(2, 5, D_MODEL)
    for bad in (float("nan"), float("inf")):
        y = x.clone()
        y[1, 3, 0] = bad
        for m in (layer, lab.GroupedQueryAttention(D_MODEL, N_HEAD, 2), lab.NaiveMultiHeadAttention(D_MODEL, N_HEAD)):
            with pytest.raises(ValueError, match="NaN or inf"):
                m(y)
    with pytest.raises(ValueError, match="empty"):
        layer(x[:, :0])


@pytest.mark.parametrize("kind", ["naive", "fused", "sdpa", "gqa"])
def test_fully_padded_sequence_gives_bias_not_nan(lab, setup, kind):
    # a sequence that is all padding: every query sees no key. Lab 4.1's rule: attention output 0,
    # so the layer returns the output projection's bias at every position (and never NaN)
    ref, x, _ = setup
    fused = lab.MultiHeadAttention.from_torch(ref, backend="sdpa" if kind == "sdpa" else "manual")
    layer = {"naive": lambda: lab.NaiveMultiHeadAttention(D_MODEL, N_HEAD).load_from_fused(fused),
             "fused": lambda: fused, "sdpa": lambda: fused,
             "gqa": lambda: lab.GroupedQueryAttention.from_mha(fused, n_kv_head=2)}[kind]()
    pad = torch.ones(B, T, dtype=torch.bool)
    pad[1] = False
    with torch.no_grad():
        out, _ = layer(x, padding_mask=pad, is_causal=True)
    assert torch.isfinite(out).all(), f"{kind}: a fully padded sequence produced NaN; it must give zeros from attention"
    assert torch.allclose(out[1], ref.out_proj.bias.expand(T, D_MODEL), atol=1e-6), (
        f"{kind}: with every key masked, attention contributes 0 and the layer's output is just the output "
        "projection's bias")

"""Grader for lab 4.3 (positional encodings). References: the closed forms of Vaswani et al. and
Press et al., HF DistilBERT's sinusoidal table, HF Llama's rotary embedding, HF BLOOM's ALiBi."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit import load_lab, seed_everything


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: intra-op threads only add overhead (and thrash on a shared CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- sinusoidal
def test_sinusoidal_closed_form(lab):
    pe = lab.sinusoidal_encoding(40, 16)
    assert pe.shape == (40, 16) and pe.dtype == torch.float32
    for pos in (0, 1, 7, 39):
        for i in range(8):
            angle = pos / 10000 ** (2 * i / 16)
            assert math.isclose(pe[pos, 2 * i].item(), math.sin(angle), abs_tol=1e-6), \
                f"PE[{pos}, {2 * i}] should be sin(pos / 10000^(2i/d)); even columns are sines"
            assert math.isclose(pe[pos, 2 * i + 1].item(), math.cos(angle), abs_tol=1e-6), \
                f"PE[{pos}, {2 * i + 1}] should be cos of the SAME angle as column {2 * i}"


def test_sinusoidal_matches_hf_distilbert(lab):
    from transformers.models.distilbert.modeling_distilbert import _create_sinusoidal_embeddings

    ref = _create_sinusoidal_embeddings(64, 32, torch.empty(64, 32))
    assert torch.allclose(lab.sinusoidal_encoding(64, 32), ref, atol=1e-6), \
        "differs from HF DistilBERT's sinusoidal table (same Vaswani formula, sin on even, cos on odd columns)"


@pytest.mark.given
def test_sinusoidal_rejects_odd_width(lab):
    with pytest.raises(ValueError, match="even"):
        lab.sinusoidal_encoding(8, 7)


# --------------------------------------------------------------------------- RoPE
def test_rope_matches_hf_llama(lab):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=128,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    x = torch.randn(2, 4, 50, 16)
    pos_ids = torch.arange(50)[None]
    cos_hf, sin_hf = LlamaRotaryEmbedding(cfg)(x, pos_ids)
    cos, sin = lab.rope_cache(50, 16, theta=10000.0)
    assert cos.shape == (50, 16), f"cos must be (T, d_head), got {tuple(cos.shape)}"
    assert torch.allclose(cos, cos_hf[0], atol=1e-6) and torch.allclose(sin, sin_hf[0], atol=1e-6), \
        "cos/sin tables differ from HF Llama: inv_freq = theta**(-2i/d), angles repeated twice as [a, a]"
    q_hf, _ = apply_rotary_pos_emb(x, x, cos_hf, sin_hf)
    assert torch.allclose(lab.apply_rope(x, cos, sin), q_hf, atol=1e-6), \
        "apply_rope differs from HF: x*cos + rotate_half(x)*sin with rotate_half([x1, x2]) = [-x2, x1]"


def test_rope_position_zero_is_identity_and_start_offsets(lab):
    cos, sin = lab.rope_cache(30, 8, theta=500.0)
    x = torch.randn(3, 1, 8)
    assert torch.allclose(lab.apply_rope(x, cos[:1], sin[:1]), x, atol=1e-7), "position 0 has angle 0: no rotation"
    assert not torch.allclose(lab.apply_rope(x, cos[5:6], sin[5:6]), x, atol=1e-3), "position 5 must rotate"
    c2, s2 = lab.rope_cache(10, 8, theta=500.0, start=20)
    assert torch.allclose(c2, cos[20:], atol=1e-6) and torch.allclose(s2, sin[20:], atol=1e-6), \
        "start=s must give the rows for positions s, s+1, ... (what a KV cache needs)"


@settings(max_examples=30, deadline=None)
@given(half=st.integers(1, 16), seed=st.integers(0, 10_000), theta=st.sampled_from([100.0, 10000.0, 500000.0]))
def test_rope_preserves_norms(lab, half, seed, theta):
    d = 2 * half
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 24, d, generator=g, dtype=torch.float64)
    cos, sin = lab.rope_cache(24, d, theta=theta)
    y = lab.apply_rope(x, cos.double(), sin.double())
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-5), \
        "RoPE is a rotation: it must not change vector norms (pairs are (i, i + d/2), each rotated by one angle)"


@settings(max_examples=30, deadline=None)
@given(half=st.integers(1, 16), m=st.integers(0, 200), n=st.integers(0, 200), shift=st.integers(1, 300),
       seed=st.integers(0, 10_000))
def test_rope_scores_depend_only_on_offset(lab, half, m, n, shift, seed):
    d = 2 * half
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    cos, sin = (t.double() for t in lab.rope_cache(max(m, n) + shift + 1, d))

    def at(v: torch.Tensor, p: int) -> torch.Tensor:
        return lab.apply_rope(v[None], cos[p: p + 1], sin[p: p + 1])[0]

    a = at(q, m) @ at(k, n)
    b = at(q, m + shift) @ at(k, n + shift)
    assert math.isclose(a.item(), b.item(), rel_tol=1e-4, abs_tol=1e-4), \
        f"<rope(q,{m}), rope(k,{n})> = {a.item():.5f} but shifted by {shift} gives {b.item():.5f}: " \
        "q and k must be rotated with the same per-position angles"


# --------------------------------------------------------------------------- ALiBi
def test_alibi_slopes_power_of_two(lab):
    got = lab.alibi_slopes(8)
    want = torch.tensor([2.0 ** -(i + 1) for i in range(8)])
    assert torch.allclose(got, want), "for 8 heads the paper's slopes are 1/2, 1/4, ..., 1/256"
    assert torch.allclose(lab.alibi_slopes(16), torch.tensor([2.0 ** (-0.5 * (i + 1)) for i in range(16)])), \
        "for n heads the sequence starts at 2**(-8/n) and keeps multiplying by 2**(-8/n)"


@pytest.mark.parametrize("n_head", [1, 2, 3, 5, 6, 12, 20, 24, 40, 64, 96])
def test_alibi_slopes_match_bloom(lab, n_head):
    from transformers.models.bloom.modeling_bloom import _get_alibi_slopes

    got = lab.alibi_slopes(n_head)
    ref = _get_alibi_slopes(n_head, torch.device("cpu"))
    assert got.shape == (n_head,)
    assert torch.allclose(got, ref, rtol=1e-6), (
        f"n_head={n_head}: slopes differ from BLOOM's. For non-powers of two take the 2**floor(log2 n) "
        "sequence, then every OTHER slope of the next power of two's sequence")


def test_alibi_bias_values_and_softmax_equivalence_with_bloom(lab):
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    n_head, T = 6, 10
    bias = lab.alibi_bias(n_head, T)
    slopes = lab.alibi_slopes(n_head)
    assert bias.shape == (n_head, T, T)
    i, j = 7, 3
    assert math.isclose(bias[2, i, j].item(), -slopes[2].item() * 4, rel_tol=1e-6), "bias is -slope * |i - j|"
    assert torch.all(torch.diagonal(bias, dim1=1, dim2=2) == 0)
    # BLOOM adds +slope * j instead of -slope * (i - j); per query row that is a constant shift,
    # which softmax ignores. So the attention weights must be identical.
    scores = torch.randn(n_head, T, T)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    bloom = build_alibi_tensor(torch.ones(1, T), n_head, torch.float32).view(n_head, 1, T)
    ours = torch.softmax((scores + bias).masked_fill(~causal, float("-inf")), -1)
    ref = torch.softmax((scores + bloom).masked_fill(~causal, float("-inf")), -1)
    assert torch.allclose(ours, ref, atol=1e-6), "ALiBi attention weights differ from BLOOM's"


# --------------------------------------------------------------------------- experiment
def _tiny_gpt(pos_emb: str):
    gpt = load_lab("phase-04-attention-transformers/lab-04-mini-transformer")
    seed_everything(0)
    cfg = gpt.GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, d_model=16, pos_emb=pos_emb)
    return gpt.MiniGPT(cfg).eval()


def test_evaluate_at_lengths(lab):
    data = torch.randint(0, 50, (400,), generator=torch.Generator().manual_seed(0))
    model = _tiny_gpt("learned")
    out = lab.evaluate_at_lengths(model, data, [16, 32], max_windows=5)
    assert list(out) == [16, 32]
    assert math.isnan(out[32]), "a learned table of 16 rows cannot be evaluated at length 32: report nan"
    windows = torch.stack([data[i * 16: i * 16 + 17] for i in range(5)])
    with torch.no_grad():
        _, want = model(windows[:, :-1], windows[:, 1:])
    assert math.isclose(out[16], want.item(), rel_tol=1e-5), \
        "use non-overlapping windows of L+1 tokens starting at 0, L, 2L, ...; x = w[:, :-1], y = w[:, 1:]"
    with torch.no_grad():
        logits, _ = model(windows[:, :-1])
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), windows[:, 1:], reduction="none")
    got = lab.evaluate_at_lengths(model, data, [16], max_windows=5, skip=10)[16]
    assert math.isclose(got, nll[:, 10:].mean().item(), rel_tol=1e-5), \
        "skip=s must average only positions s..L-1 of each window (the positions past the training length)"
    with pytest.raises(ValueError):
        lab.evaluate_at_lengths(model, data, [16], skip=16)
    rope = lab.evaluate_at_lengths(_tiny_gpt("rope"), data, [16, 64], max_windows=3)
    assert all(math.isfinite(v) for v in rope.values()), "RoPE has no table: it can be evaluated past block_size"


@pytest.mark.slow
def test_alibi_extrapolates_better_than_sinusoidal(lab):
    """The spec's claim, on a short run with YOUR functions: ALiBi's loss at 4L stays near its loss at L."""
    res, _ = lab.run_extrapolation(full=False, seed=0, steps=300, schemes=("sinusoidal", "alibi"))
    L = min(res["alibi"])
    alibi_gap = res["alibi"][4 * L] - res["alibi"][L]
    sin_gap = res["sinusoidal"][4 * L] - res["sinusoidal"][L]
    assert alibi_gap < 0.15, f"ALiBi degraded by {alibi_gap:.3f} nats from L to 4L"
    assert alibi_gap < sin_gap, f"ALiBi gap {alibi_gap:.3f} should be below sinusoidal's {sin_gap:.3f}"


# --------------------------------------------------------------------------- bad input
@pytest.mark.given
def test_bad_positions_and_bases_raise(lab):
    for bad in (-1, 2.0, True):
        with pytest.raises(ValueError, match="start"):
            lab.rope_cache(4, 8, start=bad)
    for bad in (float("nan"), float("inf"), 1.0):
        with pytest.raises(ValueError, match="theta"):
            lab.rope_cache(4, 8, theta=bad)
        with pytest.raises(ValueError, match="base"):
            lab.sinusoidal_encoding(4, 8, base=bad)
    for n in (0, -3):
        with pytest.raises(ValueError, match="n_pos"):
            lab.sinusoidal_encoding(n, 8)
        with pytest.raises(ValueError, match="seq_len"):
            lab.alibi_bias(2, n)
    cos, sin = torch.ones(3, 4), torch.zeros(3, 4)
    with pytest.raises(TypeError, match="floating"):
        lab.apply_rope(torch.ones(3, 4, dtype=torch.long), cos, sin)
    with pytest.raises(ValueError, match="cos/sin"):
        lab.apply_rope(torch.ones(5, 4), cos, sin)


@pytest.mark.given
def test_evaluate_at_lengths_rejects_bad_token_ids(lab):
    model = _tiny_gpt("rope")
    data = torch.randint(0, 50, (100,), generator=torch.Generator().manual_seed(0))
    for bad in (50, -1):
        d = data.clone()
        d[7] = bad
        with pytest.raises(ValueError, match="vocab_size"):
            lab.evaluate_at_lengths(model, d, [16])
    with pytest.raises(TypeError, match="integer"):
        lab.evaluate_at_lengths(model, data.float(), [16])

"""Grader for lab 4.4 (MiniGPT). References: HF transformers GPT-2 and Llama, torch.nn.RMSNorm,
published parameter counts, and the two universal sanity checks (init loss, single-batch overfit)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from labkit import dataset_path, seed_everything

V = 97  # a prime vocab size, so no shape accidentally lines up


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: intra-op threads only add overhead (and thrash on a shared CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(lab, style: str = "gpt2", **kw):
    preset = lab.GPTConfig.gpt2_style if style == "gpt2" else lab.GPTConfig.llama_style
    base = dict(vocab_size=V, block_size=32, n_layer=2, n_head=4, d_model=32)
    return preset(**{**base, **kw})


def build(lab, style: str = "gpt2", seed: int = 0, **kw):
    seed_everything(seed)
    model = lab.MiniGPT(tiny(lab, style, **kw))
    model.eval()
    return model


# --------------------------------------------------------------------------- config validation
@pytest.mark.parametrize("kw, needle", [
    (dict(d_model=30, n_head=4), "divisible"),
    (dict(n_head=4, n_kv_head=3), "multiple of n_kv_head"),
    (dict(norm="batchnorm"), "norm"),
    (dict(mlp="relu"), "mlp"),
    (dict(pos_emb="xpos"), "pos_emb"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(dropout=1.0), "dropout"),
    (dict(pos_emb="rope", d_model=12, n_head=4), "even"),
])
def test_bad_config_raises_clear_valueerror(lab, kw, needle):
    base = dict(vocab_size=V, block_size=16, n_layer=1, n_head=4, d_model=32)
    with pytest.raises(ValueError, match=needle):
        lab.GPTConfig(**{**base, **kw})


def test_presets_have_the_right_switches(lab):
    g = lab.GPTConfig.gpt2_style(vocab_size=V, block_size=16, n_layer=1, n_head=4, d_model=32)
    m = lab.GPTConfig.llama_style(vocab_size=V, block_size=16, n_layer=1, n_head=4, n_kv_head=2, d_model=32)
    assert (g.norm, g.mlp, g.pos_emb, g.bias, g.tie_weights, g.resolved_d_ff) == ("layernorm", "gelu", "learned", True, True, 128)
    assert (m.norm, m.mlp, m.pos_emb, m.bias, m.tie_weights, m.n_kv_head) == ("rmsnorm", "swiglu", "rope", False, False, 2)


# --------------------------------------------------------------------------- modules
def test_rmsnorm_matches_torch(lab):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16) * 3 + 1
    ours = lab.RMSNorm(16, eps=1e-5)
    ref = torch.nn.RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        w = torch.randn(16)
        ours.weight.copy_(w)
        ref.weight.copy_(w)
    assert torch.allclose(ours(x), ref(x), atol=1e-5), \
        "RMSNorm differs from torch.nn.RMSNorm: divide by sqrt(mean(x**2) + eps) over the LAST dim, no mean subtraction"


def test_attention_matches_torch_multihead_attention(lab):
    cfg = tiny(lab, "gpt2", pos_emb="none")
    seed_everything(0)
    attn = lab.CausalSelfAttention(cfg).eval()
    ref = torch.nn.MultiheadAttention(32, 4, bias=True, batch_first=True).eval()
    with torch.no_grad():  # both keep the fused projection as rows [q | k | v]
        ref.in_proj_weight.copy_(attn.qkv.weight)
        ref.in_proj_bias.copy_(attn.qkv.bias)
        ref.out_proj.weight.copy_(attn.proj.weight)
        ref.out_proj.bias.copy_(attn.proj.bias)
    x = torch.randn(2, 9, 32)
    future = torch.ones(9, 9, dtype=torch.bool).triu(1)  # True = may NOT attend
    want, _ = ref(x, x, x, attn_mask=future, need_weights=False)
    assert torch.allclose(attn(x), want, atol=1e-5), (
        "CausalSelfAttention differs from nn.MultiheadAttention with a causal mask: scale by 1/sqrt(d_head), "
        "mask j > i with -inf before the softmax, softmax over the KEY axis (dim=-1), merge heads before proj")


def test_forward_shapes_and_dtype(lab):
    model = build(lab, "llama", n_kv_head=2)
    idx = torch.randint(0, V, (3, 11))
    logits, loss = model(idx)
    assert logits.shape == (3, 11, V), f"logits must be (B, T, vocab_size), got {tuple(logits.shape)}"
    assert logits.dtype == torch.float32
    assert loss is None, "loss must be None when no targets are given"
    _, loss = model(idx, idx)
    assert loss.dim() == 0 and torch.isfinite(loss)


def test_forward_rejects_bad_input(lab):
    model = build(lab, "gpt2")
    with pytest.raises(ValueError, match="block_size"):
        model(torch.randint(0, V, (1, 33)))  # learned table has 32 rows
    with pytest.raises(ValueError):
        model(torch.randint(0, V, (5,)))
    with pytest.raises(ValueError):
        model(torch.randint(0, V, (2, 8)), torch.randint(0, V, (2, 7)))
    with pytest.raises(TypeError):
        model(torch.rand(2, 8))


def test_rope_model_runs_past_block_size(lab):
    model = build(lab, "llama")
    logits, _ = model(torch.randint(0, V, (1, 40)))  # block_size 32, RoPE has no table
    assert logits.shape == (1, 40, V)


def test_weight_tying_shares_one_parameter(lab):
    tied = build(lab, "gpt2")
    assert tied.head.weight is tied.tok_emb.weight, "tie by assignment (head.weight = tok_emb.weight), not by copying values"
    untied = build(lab, "llama")
    assert untied.head.weight is not untied.tok_emb.weight


def test_init_scales(lab):
    model = build(lab, "gpt2", n_layer=4, d_model=64)
    std = 0.02
    assert abs(model.tok_emb.weight.std().item() - std) < 0.002, "embeddings should be N(0, 0.02)"
    assert abs(model.blocks[0].attn.qkv.weight.std().item() - std) < 0.002
    want = std / math.sqrt(2 * 4)
    for name, w in (("attn.proj", model.blocks[1].attn.proj.weight), ("mlp.proj", model.blocks[1].mlp.proj.weight)):
        assert abs(w.std().item() - want) < 0.15 * want, \
            f"{name} should start at std 0.02/sqrt(2*n_layer) = {want:.4f}, got {w.std().item():.4f}"
    assert torch.all(model.blocks[0].attn.qkv.bias == 0), "biases start at zero"


# --------------------------------------------------------------------------- parameter counts
COUNT_CASES = {
    "gpt2 tied": dict(style="gpt2"),
    "gpt2 untied, no bias": dict(style="gpt2", tie_weights=False, bias=False),
    "llama GQA": dict(style="llama", n_kv_head=2),
    "llama MQA tied": dict(style="llama", n_kv_head=1, tie_weights=True),
    "rmsnorm+gelu+alibi": dict(style="gpt2", norm="rmsnorm", pos_emb="alibi", d_ff=100),
    "swiglu+sinusoidal+bias": dict(style="llama", pos_emb="sinusoidal", bias=True, norm="layernorm"),
}


@pytest.mark.parametrize("case", list(COUNT_CASES))
def test_count_params_matches_numel(lab, case):
    kw = dict(COUNT_CASES[case])
    cfg = tiny(lab, kw.pop("style"), **kw)
    model = lab.MiniGPT(cfg)
    actual = sum(p.numel() for p in model.parameters())
    assert lab.count_params(cfg) == actual, (
        f"{case}: formula {lab.count_params(cfg)} != sum(p.numel()) {actual}. Check: GQA k/v use "
        "n_kv_head*d_head rows, SwiGLU has 3 matrices, LayerNorm has a bias only when bias=True, "
        "RMSNorm never does, a tied head adds nothing, and only learned positions have a table")


@pytest.mark.parametrize("name, kw, published", [
    ("GPT-2 124M", dict(style="gpt2"), 124_439_808),
    ("Llama-2 7B", dict(style="llama", vocab_size=32000, block_size=4096, n_layer=32, n_head=32,
                        d_model=4096, d_ff=11008), 6_738_415_616),
    ("Llama-3 8B", dict(style="llama", vocab_size=128256, block_size=8192, n_layer=32, n_head=32,
                        n_kv_head=8, d_model=4096, d_ff=14336), 8_030_261_248),
])
def test_count_params_matches_published_models(lab, name, kw, published):
    kw = dict(kw)
    style = kw.pop("style")
    cfg = (lab.GPTConfig.gpt2_style if style == "gpt2" else lab.GPTConfig.llama_style)(**kw)
    got = lab.count_params(cfg)
    assert got == published, f"{name}: count_params gives {got:,}, the released model has {published:,}"


# --------------------------------------------------------------------------- sanity checks
@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_init_loss_is_uniform(lab, style):
    model = build(lab, style, vocab_size=256, d_model=64)
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 256, (8, 32), generator=g)
    tgt = torch.randint(0, 256, (8, 32), generator=g)
    _, loss = model(idx, tgt)
    assert abs(loss.item() - math.log(256)) < 0.1, (
        f"init loss {loss.item():.3f} but ln(256) = {math.log(256):.3f}: logits should start near zero "
        "(std 0.02 init, zero biases); a much higher loss means a bad init scale")


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_overfits_a_single_batch(lab, style):
    model = build(lab, style, vocab_size=64, d_model=64, n_kv_head=2 if style == "llama" else None)
    model.train()
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 64, (4, 32), generator=g)
    y = torch.randint(0, 64, (4, 32), generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(200):  # stop as soon as the bar is cleared: same criterion, less CPU
        _, loss = model(x, y)
        losses.append(loss.item())
        if losses[-1] < 0.5:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.5, (
        f"loss after 200 steps on one batch is {losses[-1]:.3f} (start {losses[0]:.3f}): a correct transformer "
        "memorizes it. Missing residual (x = x + ...)? Mask upside down? Gradients not reaching the embeddings?")


@pytest.mark.parametrize("kw", [dict(style="gpt2"), dict(style="llama", n_kv_head=2),
                                dict(style="gpt2", pos_emb="alibi"), dict(style="gpt2", pos_emb="sinusoidal"),
                                dict(style="llama", attn_impl="sdpa")])
def test_causal_mask_hides_the_future(lab, kw):
    kw = dict(kw)
    model = build(lab, kw.pop("style"), **kw)
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(0, V, (2, 20), generator=g)
    changed = idx.clone()
    t = 12
    changed[:, t] = (changed[:, t] + 1) % V
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.allclose(a[:, :t], b[:, :t], atol=1e-6), \
        "changing token t changed logits at positions < t: the model sees the future (mask j > i with -inf, use tril)"
    assert not torch.allclose(a[:, t:], b[:, t:], atol=1e-4), \
        "changing token t left positions >= t unchanged: is the mask hiding the present/past too?"


def test_sdpa_matches_math(lab):
    for kw in (dict(style="llama", n_kv_head=2), dict(style="gpt2", pos_emb="alibi")):
        kw = dict(kw)
        style = kw.pop("style")
        a = build(lab, style, **kw)
        b = build(lab, style, attn_impl="sdpa", **kw)
        b.load_state_dict(a.state_dict())
        idx = torch.randint(0, V, (2, 17))
        assert torch.allclose(a(idx)[0], b(idx)[0], atol=1e-5), \
            f"attn_impl='sdpa' and 'math' disagree for {kw}: same scaling, same mask, same bias in both paths"


# --------------------------------------------------------------------------- Hugging Face equality
def _hf_gpt2(**kw):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(bos_token_id=0, eos_token_id=0, **kw)).eval()


def test_matches_hf_gpt2(lab):
    hf = _hf_gpt2(vocab_size=V, n_positions=32, n_embd=48, n_layer=2, n_head=4)
    with torch.no_grad():  # random non-trivial LayerNorm/bias values so every copy matters
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    model = lab.load_hf_gpt2_weights(lab.MiniGPT(lab.config_from_hf(hf.config)).eval(), hf)
    idx = torch.randint(0, V, (2, 30))
    with torch.no_grad():
        diff = (model(idx)[0] - hf(idx).logits).abs().max().item()
    assert diff < 1e-4, (f"max |logit diff| vs GPT2LMHeadModel = {diff:.2e}. HF Conv1D weights are (in, out): "
                         "transpose them; c_attn is [q|k|v]; GPT-2's GELU is the tanh approximation")


def test_matches_hf_llama_gqa(lab):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, bos_token_id=0, eos_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0})).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    cfg = lab.config_from_hf(hf.config)
    assert (cfg.n_kv_head, cfg.rope_theta, cfg.norm_eps) == (2, 500000.0, 1e-6)
    model = lab.load_hf_llama_weights(lab.MiniGPT(cfg).eval(), hf)
    idx = torch.randint(0, V, (2, 40))
    with torch.no_grad():
        diff = (model(idx)[0] - hf(idx).logits).abs().max().item()
    assert diff < 1e-4, (f"max |logit diff| vs LlamaForCausalLM = {diff:.2e}. RoPE must use rotate_half "
                         "(pairs i and i + d/2), query head h uses kv head h // (n_head/n_kv_head), "
                         "SwiGLU = down(silu(gate(x)) * up(x))")


def test_matches_saved_tiny_random_gpt2_checkpoint(lab):
    from transformers import GPT2LMHeadModel

    folder = dataset_path("tiny-random-gpt2", "config.json").parent
    dataset_path("tiny-random-gpt2", "model.safetensors")
    hf = GPT2LMHeadModel.from_pretrained(folder).eval()
    model = lab.load_hf_gpt2_weights(lab.MiniGPT(lab.config_from_hf(hf.config)).eval(), hf)
    idx = torch.randint(0, hf.config.vocab_size, (2, 64), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        diff = (model(idx)[0] - hf(idx).logits).abs().max().item()
    assert diff < 1e-4, f"max |logit diff| vs the saved tiny-random-gpt2 checkpoint = {diff:.2e}"


def test_loaders_reject_the_wrong_architecture(lab):
    hf = _hf_gpt2(vocab_size=V, n_positions=32, n_embd=32, n_layer=1, n_head=4)
    with pytest.raises(ValueError):
        lab.load_hf_gpt2_weights(lab.MiniGPT(tiny(lab, "llama", n_layer=1)), hf)


# --------------------------------------------------------------------------- generation
def test_generate_greedy_and_top_k(lab):
    model = build(lab, "llama", n_kv_head=2)
    prompt = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(5))
    out = model.generate(prompt, 6, temperature=0.0)
    assert out.shape == (2, 11) and torch.equal(out[:, :5], prompt), "generate returns the prompt followed by new tokens"
    # greedy = argmax of the model's own next-token logits, step by step
    seq = prompt
    for _ in range(6):
        nxt = model(seq)[0][:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    assert torch.equal(out, seq), "temperature=0 must pick the argmax of the LAST position's logits"
    g = torch.Generator().manual_seed(0)
    top1 = model.generate(prompt, 6, temperature=1.0, top_k=1, generator=g)
    assert torch.equal(top1, out), "top_k=1 sampling must equal greedy decoding"
    # top_k=3: every sampled first token is among the 3 most likely
    many = prompt[:1].repeat(64, 1)
    first = model.generate(many, 1, temperature=1.5, top_k=3, generator=g)[:, -1]
    allowed = set(model(prompt[:1])[0][0, -1].topk(3).indices.tolist())
    assert set(first.tolist()) <= allowed, "top_k must set every logit below the k-th largest to -inf before sampling"
    assert len(set(first.tolist())) > 1, "with temperature 1.5 and top_k=3, 64 samples should not all be equal"


def test_generate_crops_to_block_size(lab):
    model = build(lab, "gpt2")  # learned positions, block_size 32
    out = model.generate(torch.randint(0, V, (1, 30)), 8, temperature=1.0, top_k=5)
    assert out.shape == (1, 38), "generate must crop the context to the last block_size tokens"
    with pytest.raises(ValueError):
        model.generate(torch.zeros(1, 2, dtype=torch.long), 1, temperature=-1.0)


def test_swiglu_mlp_formula(lab):
    cfg = tiny(lab, "llama", d_ff=40)
    seed_everything(0)
    mlp = lab.MLP(cfg).eval()
    x = torch.randn(2, 3, 32)
    want = mlp.proj(F.silu(mlp.gate(x)) * mlp.fc(x))
    assert torch.allclose(mlp(x), want, atol=1e-6), "SwiGLU is proj(silu(gate(x)) * fc(x)), fc being the up projection"

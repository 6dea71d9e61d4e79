"""Grader for lab 4.4 (MiniGPT). References: HF transformers GPT-2 and Llama (logits, position_ids,
padding, DynamicCache, TopPLogitsWarper, save_pretrained round trips), torch.nn.RMSNorm,
torch.nn.MultiheadAttention, torch's FlopCounterMode, lab 4.1's causal mask and lab 4.3's ALiBi,
published parameter counts, and the two universal sanity checks (init loss, single-batch overfit)."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from labkit import dataset_path, load_lab, seed_everything

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
@pytest.mark.given
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


@pytest.mark.given
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
    assert abs(model.pos_emb.weight.std().item() - std) < 0.003, \
        f"the learned position table should start N(0, 0.02), its std is {model.pos_emb.weight.std().item():.4f}"


def test_untied_embedding_and_head_init(lab):
    """With a tied head, initializing the Linear head also initializes the embedding: check untied too."""
    model = build(lab, "llama", n_layer=2, d_model=64, vocab_size=256)
    for name, w in (("tok_emb", model.tok_emb.weight), ("head", model.head.weight)):
        assert abs(w.std().item() - 0.02) < 0.002, (
            f"{name}.weight has std {w.std().item():.4f}, expected init_std 0.02: does reset_parameters "
            "initialize nn.Embedding as well as nn.Linear? (nn.Embedding's own default is N(0, 1))")


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


@pytest.mark.given
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


# --------------------------------------------------------------------------- config: derived values
@pytest.mark.given
def test_config_keeps_none_and_replace_rederives(lab):
    cfg = tiny(lab, "gpt2")
    assert cfg.n_kv_head is None and cfg.d_ff is None, "derived values must not be written into the fields"
    assert (cfg.resolved_n_kv_head, cfg.resolved_d_ff) == (4, 128)
    more_heads = dataclasses.replace(cfg, n_head=8)
    assert more_heads.resolved_n_kv_head == 8, "replace(cfg, n_head=8) must stay plain MHA, not turn into GQA"
    wider = dataclasses.replace(cfg, d_model=64)
    assert wider.resolved_d_ff == 256, "replace(cfg, d_model=64) must re-derive d_ff = 4 * d_model"
    llama = dataclasses.replace(tiny(lab, "llama"), d_model=64)
    assert llama.resolved_d_ff == 192, "SwiGLU d_ff = 8/3 * d_model rounded up to a multiple of 64"
    assert dataclasses.replace(tiny(lab, "gpt2", d_ff=50), d_model=64).resolved_d_ff == 50, "an explicit d_ff stays"
    model = lab.MiniGPT(more_heads)
    assert model.blocks[0].attn.qkv.weight.shape[0] == 3 * 32, "the model must read resolved_n_kv_head"


# --------------------------------------------------------------------------- positions and masks
class ListCache:
    """The smallest object that speaks the KV-cache protocol (Phase 9 builds the real one)."""

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.seen: list[tuple[int, tuple[int, ...]]] = []

    def update(self, key, value, layer_idx):
        self.seen.append((layer_idx, tuple(key.shape)))
        if layer_idx == len(self.keys):
            self.keys.append(key)
            self.values.append(value)
        else:
            self.keys[layer_idx] = torch.cat([self.keys[layer_idx], key], dim=-2)
            self.values[layer_idx] = torch.cat([self.values[layer_idx], value], dim=-2)
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.keys[layer_idx].shape[-2] if len(self.keys) > layer_idx else 0


def test_default_position_ids(lab):
    got = lab.default_position_ids(2, 3, past_length=4)
    assert got.dtype == torch.int64 and got.tolist() == [[4, 5, 6]] * 2, \
        f"without a mask the new tokens sit at past_length + arange(T), got {got.tolist()}"
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    got = lab.default_position_ids(3, 5, attention_mask=mask)
    assert got.tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [0, 0, 0, 0, 0]], (
        f"left padding: a row's first real token is position 0 (cumsum(mask) - 1, clamped at 0), got {got.tolist()}")
    got = lab.default_position_ids(3, 2, past_length=3, attention_mask=mask)
    assert got.tolist() == [[1, 2], [3, 4], [0, 0]], "with a cache, return the positions of the LAST T columns"


def test_build_attention_mask(lab):
    m = lab.build_attention_mask(3, 5)
    want = torch.tensor([[j <= 2 + i for j in range(5)] for i in range(3)])
    assert m.dtype == torch.bool and torch.equal(m, want), (
        "with T_k > T_q the queries are the LAST T_q positions: query i sees keys j <= T_k - T_q + i "
        f"(bottom-right; SDPA's is_causal aligns top-left). Got\n{m.int()}")
    assert torch.equal(lab.build_attention_mask(4, 4), torch.ones(4, 4, dtype=torch.bool).tril())
    pad = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    m = lab.build_attention_mask(4, 4, pad)
    assert m.shape == (2, 1, 4, 4), f"with a padding mask the result is (B, 1, T_q, T_k), got {tuple(m.shape)}"
    assert torch.equal(m[1, 0], torch.ones(4, 4, dtype=torch.bool).tril()), "an unpadded row is plain causal"
    assert not m[0, 0, 2:, :2].any(), "real queries must not attend to pad keys"
    assert torch.equal(m[0, 0, 3], torch.tensor([False, False, True, True]))
    assert m[0, 0, :2].all(), ("a pad query that sees no key at all must be opened to every key, "
                               "or its softmax is all -inf and gives NaN")


STYLES = {
    "gpt2": dict(style="gpt2"),
    "llama_gqa": dict(style="llama", n_kv_head=2),
    "alibi": dict(style="gpt2", pos_emb="alibi"),
    "sinusoidal": dict(style="gpt2", pos_emb="sinusoidal"),
    "llama_mqa_sdpa": dict(style="llama", n_kv_head=1, attn_impl="sdpa"),
}


def _build_style(lab, name: str, **extra):
    kw = {**STYLES[name], **extra}
    return build(lab, kw.pop("style"), **kw)


@pytest.mark.parametrize("name", list(STYLES))
def test_incremental_decoding_with_a_cache_matches_the_full_sequence(lab, name):
    model = _build_style(lab, name)
    idx = torch.randint(0, V, (2, 14), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        full, _ = model(idx)
        cache = ListCache()
        steps = [model(idx[:, :6], past_key_values=cache)[0]]
        for t in range(6, 14):
            steps.append(model(idx[:, t:t + 1], past_key_values=cache)[0])
    inc = torch.cat(steps, dim=1)
    cfg = model.config
    assert cache.get_seq_length() == 14 and len(cache.keys) == cfg.n_layer, \
        "every layer must call past_key_values.update(key, value, layer_idx) with its own layer_idx"
    assert cache.seen[0] == (0, (2, cfg.resolved_n_kv_head, 6, cfg.d_head)), (
        f"update() must get (B, n_kv_head, T_new, d_head) = {(2, cfg.resolved_n_kv_head, 6, cfg.d_head)}, "
        f"got {cache.seen[0][1]}: cache k/v BEFORE repeating them for GQA")
    diff = (inc - full).abs().max().item()
    assert diff < 1e-5, (
        f"{name}: decoding one token at a time with the cache differs from the full forward by {diff:.2e}. "
        "New tokens need positions past + arange(T) (RoPE/learned/sinusoidal), the cached keys must already be "
        "rotated, and the causal mask must be aligned bottom-right when T_q < T_k")


def test_hf_dynamic_cache_speaks_the_same_protocol(lab):
    from transformers import DynamicCache

    model = _build_style(lab, "llama_gqa")
    idx = torch.randint(0, V, (1, 9), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        full, _ = model(idx)
        cache = DynamicCache()
        model(idx[:, :8], past_key_values=cache)
        last, _ = model(idx[:, 8:], past_key_values=cache)
    assert torch.allclose(last[:, -1], full[:, -1], atol=1e-5), \
        "with HF's DynamicCache the last-token logits differ from the full forward"


def _left_pad(lengths, T, pad_id=0, seed=8):
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(0, V, (n,), generator=g) for n in lengths]
    idx = torch.full((len(lengths), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for b, s in enumerate(seqs):
        idx[b, T - len(s):] = s
        mask[b, T - len(s):] = 1
    return seqs, idx, mask


@pytest.mark.parametrize("name", list(STYLES))
def test_left_padded_batch_equals_unpadded_rows(lab, name):
    model = _build_style(lab, name)
    seqs, idx, mask = _left_pad([16, 9, 3], 16)
    with torch.no_grad():
        padded, _ = model(idx, attention_mask=mask)
        assert torch.isfinite(padded).all(), \
            "NaN/inf in a left-padded batch: a pad query that sees no key needs a guard (open its row)"
        for b, s in enumerate(seqs):
            alone, _ = model(s[None])
            diff = (padded[b, 16 - len(s):] - alone[0]).abs().max().item()
            assert diff < 1e-5, (
                f"{name}: row {b} (length {len(s)}, left-padded to 16) differs from the same sequence unpadded by "
                f"{diff:.2e}. Pad keys must be masked for every query, and positions must start at 0 on the first "
                "real token (cumsum of the mask)")


def test_left_padded_batch_with_a_cache(lab):
    model = _build_style(lab, "llama_gqa")
    seqs, idx, mask = _left_pad([12, 5], 12, seed=9)
    extra = torch.randint(0, V, (2, 3), generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        cache = ListCache()
        outs = [model(idx, attention_mask=mask, past_key_values=cache)[0][:, -1:]]
        for t in range(3):
            mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
            outs.append(model(extra[:, t:t + 1], attention_mask=mask, past_key_values=cache)[0])
        got = torch.cat(outs, dim=1)                                      # (2, 4, V)
        for b, s in enumerate(seqs):
            want = model(torch.cat([s, extra[b]])[None])[0][0, -4:]
            diff = (got[b] - want).abs().max().item()
            assert diff < 1e-5, (f"left-padded row {b} decoded with a cache differs from the unpadded sequence by "
                                 f"{diff:.2e}: the attention_mask covers cached + new columns")


def test_position_ids_match_hf(lab):
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = _hf_gpt2(vocab_size=V, n_positions=32, n_embd=32, n_layer=2, n_head=4)
    pos = torch.tensor([[3, 4, 5, 9, 10, 11], [0, 2, 4, 6, 8, 10]])
    idx = torch.randint(0, V, (2, 6), generator=torch.Generator().manual_seed(11))
    model = lab.load_hf_gpt2_weights(lab.MiniGPT(lab.config_from_hf(hf.config)).eval(), hf)
    with torch.no_grad():
        diff = (model(idx, position_ids=pos)[0] - hf(idx, position_ids=pos).logits).abs().max().item()
    assert diff < 1e-5, f"GPT-2 with explicit position_ids differs from HF by {diff:.2e}: index the table by them"
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      bos_token_id=0, eos_token_id=0)).eval()
    model = lab.load_hf_llama_weights(lab.MiniGPT(lab.config_from_hf(hf.config)).eval(), hf)
    with torch.no_grad():
        diff = (model(idx, position_ids=pos)[0] - hf(idx, position_ids=pos).logits).abs().max().item()
    assert diff < 1e-5, (f"Llama with explicit (per-row) position_ids differs from HF by {diff:.2e}: RoPE must "
                         "rotate q and k by the given positions")


def test_logits_to_keep(lab):
    model = build(lab, "llama", n_kv_head=2)
    idx = torch.randint(0, V, (2, 10))
    with torch.no_grad():
        full, _ = model(idx)
        last2, _ = model(idx, logits_to_keep=2)
    assert last2.shape == (2, 2, V), f"logits_to_keep=2 gives (B, 2, vocab), got {tuple(last2.shape)}"
    assert torch.allclose(last2, full[:, -2:], atol=1e-6), "logits_to_keep=k must keep the LAST k positions"
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(idx, idx, logits_to_keep=1)


@pytest.mark.given
def test_out_of_range_ids_raise_valueerror(lab):
    model = build(lab, "gpt2")
    idx = torch.randint(0, V, (2, 8))
    for bad in (V, V + 5, -1):
        wrong = idx.clone()
        wrong[1, 3] = bad
        with pytest.raises(ValueError, match=f"{bad}.*vocab_size={V}"):
            model(wrong)
        with pytest.raises(ValueError, match=str(bad)):
            model(idx, wrong)
    ignore = idx.clone()
    ignore[0, :3] = -100
    _, loss = model(idx, ignore)
    assert torch.isfinite(loss), "-100 in targets means 'ignore this position'"


@pytest.mark.given
def test_forward_rejects_bad_masks_and_positions(lab):
    model = build(lab, "gpt2")
    idx = torch.randint(0, V, (2, 8))
    with pytest.raises(ValueError, match="attention_mask"):
        model(idx, attention_mask=torch.ones(2, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="0 .*1"):
        model(idx, attention_mask=torch.full((2, 8), 2))
    with pytest.raises(TypeError):
        model(idx, attention_mask=torch.ones(2, 8))
    with pytest.raises(ValueError, match="position_ids"):
        model(idx, position_ids=torch.arange(7)[None])
    with pytest.raises(ValueError, match=">= 0"):
        model(idx, position_ids=torch.arange(8)[None] - 1)
    with pytest.raises(ValueError, match="block_size"):
        model(idx, position_ids=torch.arange(8)[None] + 30)
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(idx, logits_to_keep=-1)


# --------------------------------------------------------------------------- issue-8 bugs: GELU, ALiBi
def test_gelu_is_gpt2s_tanh_approximation(lab):
    """Random-init activations are too small to tell the two GELUs apart: use large ones."""
    from transformers import GPT2Config
    from transformers.models.gpt2.modeling_gpt2 import GPT2MLP

    cfg = tiny(lab, "gpt2")
    ours = lab.MLP(cfg).eval()
    ref = GPT2MLP(128, GPT2Config(n_embd=32, activation_function="gelu_new", resid_pdrop=0.0)).eval()
    g = torch.Generator().manual_seed(12)
    with torch.no_grad():
        for lin in (ours.fc, ours.proj):
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) / math.sqrt(lin.in_features) * 3)
            lin.bias.copy_(torch.randn(lin.bias.shape, generator=g))
        ref.c_fc.weight.copy_(ours.fc.weight.t())
        ref.c_fc.bias.copy_(ours.fc.bias)
        ref.c_proj.weight.copy_(ours.proj.weight.t())
        ref.c_proj.bias.copy_(ours.proj.bias)
        x = torch.randn(4, 6, 32, generator=g)
        diff = (ours(x) - ref(x)).abs().max().item()
    assert diff < 1e-4, (f"the GELU MLP differs from HF GPT-2's (gelu_new) by {diff:.2e} once activations are "
                         "large: GPT-2 uses the tanh approximation of GELU, not the exact erf form")


def test_alibi_changes_the_logits_and_uses_lab43s_bias(lab):
    positional = load_lab("phase-04-attention-transformers/lab-03-positional-encodings")
    model = build(lab, "gpt2", pos_emb="alibi", n_layer=1)
    plain = build(lab, "gpt2", pos_emb="none", n_layer=1)
    plain.load_state_dict(model.state_dict())
    idx = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        got, _ = model(idx)
        without, _ = plain(idx)
        assert (got[:, 1:] - without[:, 1:]).abs().max() > 1e-3, \
            "pos_emb='alibi' gives the same logits as pos_emb='none': is the ALiBi bias passed to the attention?"
        # reference forward from the model's own weights and lab 4.3's alibi_bias
        blk, T, H, dh = model.blocks[0], 12, 4, 8
        x = model.tok_emb(idx)
        q, k, v = blk.attn.qkv(blk.ln1(x)).split(32, dim=-1)
        q, k, v = (t.view(2, T, H, dh).transpose(1, 2) for t in (q, k, v))
        s = q @ k.transpose(-2, -1) / math.sqrt(dh) + positional.alibi_bias(H, T)
        s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
        y = (s.softmax(-1) @ v).transpose(1, 2).reshape(2, T, 32)
        x = x + blk.attn.proj(y)
        h = blk.ln2(x)
        x = x + blk.mlp.proj(F.gelu(blk.mlp.fc(h), approximate="tanh"))
        want = model.head(model.ln_f(x))
    diff = (got - want).abs().max().item()
    assert diff < 1e-5, (f"ALiBi logits differ by {diff:.2e} from softmax(QK^T/sqrt(d) + alibi_bias(n_head, T)) "
                         "with lab 4.3's bias (-slope_h * |i - j|, added before the mask)")


# --------------------------------------------------------------------------- generation: temperature, top-p, eos
def _peaked(lab, seed: int = 0):
    """A tiny model whose next-token distribution is far from uniform (so temperature matters)."""
    model = build(lab, "llama", n_kv_head=2, seed=seed)
    with torch.no_grad():
        model.head.weight.mul_(30)
    return model


def test_temperature_divides_the_logits(lab):
    model = _peaked(lab)
    prompt = torch.randint(0, V, (1, 5), generator=torch.Generator().manual_seed(14))
    with torch.no_grad():
        logits = model(prompt)[0][0, -1]
    top = int(logits.argmax())
    n = 2000
    freqs = {}
    for temp in (0.5, 2.0):
        out = model.generate(prompt.repeat(n, 1), 1, temperature=temp, generator=torch.Generator().manual_seed(15))
        freqs[temp] = (out[:, -1] == top).float().mean().item()
        want = torch.softmax(logits / temp, -1)[top].item()
        assert abs(freqs[temp] - want) < 0.04, (
            f"at temperature {temp} the most likely token was sampled {freqs[temp]:.3f} of the time, softmax(logits / "
            f"{temp}) gives {want:.3f}: temperature DIVIDES the logits (low = sharper, high = flatter)")
    assert freqs[0.5] > freqs[2.0], "a lower temperature must make the top token more frequent, not less"


def test_top_p_keeps_hfs_nucleus(lab):
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    model = _peaked(lab)  # at temperature 0.7 the top three tokens hold 0.60, 0.19, 0.08: the third crosses 0.8
    prompt = torch.randint(0, V, (1, 5), generator=torch.Generator().manual_seed(14))
    with torch.no_grad():
        logits = model(prompt)[0][:, -1]
    kept_logits = TopPLogitsWarper(0.8)(prompt, TemperatureLogitsWarper(0.7)(prompt, logits.clone()))
    kept = set(torch.isfinite(kept_logits[0]).nonzero().flatten().tolist())
    probs = torch.softmax(kept_logits[0], -1)
    assert 2 <= len(kept) < V, "test setup: the nucleus should be a real subset"
    out = model.generate(prompt.repeat(2000, 1), 1, temperature=0.7, top_p=0.8,
                         generator=torch.Generator().manual_seed(17))[:, -1]
    sampled = set(out.tolist())
    assert sampled <= kept, (f"top_p=0.8 sampled tokens {sorted(sampled - kept)} outside HF's nucleus {sorted(kept)}: "
                             "sort descending, keep tokens until the cumulative probability reaches top_p")
    common = {t for t in kept if probs[t] > 0.01}
    assert common <= sampled, (f"tokens {sorted(common - sampled)} are in HF's nucleus but never sampled: the token "
                               "that crosses the top_p threshold stays in the nucleus")
    a = model.generate(prompt, 5, top_p=1.0, generator=torch.Generator().manual_seed(18))
    b = model.generate(prompt, 5, generator=torch.Generator().manual_seed(18))
    assert torch.equal(a, b), "top_p=1.0 must not filter anything"


def test_generate_stops_at_eos(lab):
    model = build(lab, "llama", n_kv_head=2)
    prompt = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(19))
    free = model.generate(prompt, 10, temperature=0.0)
    gen0 = free[0, 5:].tolist()
    j = next(j for j in range(10) if gen0[j] not in gen0[:j])
    eos = gen0[j]
    alone = model.generate(prompt[:1], 10, temperature=0.0, eos_token_id=eos)
    assert alone.shape == (1, 5 + j + 1), (
        f"row 0 produces eos at step {j + 1}, so generation must stop there (shape {(1, 5 + j + 1)}), "
        f"got {tuple(alone.shape)}")
    want = free.clone()
    firsts = []
    for b in range(2):
        hits = (free[b, 5:] == eos).nonzero().flatten().tolist()
        if hits:
            want[b, 5 + hits[0] + 1:] = eos
            firsts.append(hits[0])
    length = 5 + max(firsts) + 1 if len(firsts) == 2 else 15
    both = model.generate(prompt, 10, temperature=0.0, eos_token_id=eos)
    assert torch.equal(both, want[:, :length]), \
        "a row that has produced eos must keep producing eos while the others continue"


def test_generate_computes_only_the_last_positions_logits(lab):
    model = build(lab, "gpt2")
    widths = []
    handle = model.head.register_forward_hook(lambda mod, inp, out: widths.append(out.shape[1]))
    try:
        model.generate(torch.randint(0, V, (2, 7)), 3, temperature=1.0)
    finally:
        handle.remove()
    assert widths == [1, 1, 1], (f"the LM head ran on {widths} positions per step: generation needs only the last "
                                 "position's logits (logits_to_keep=1)")


@pytest.mark.given
@pytest.mark.parametrize("kw", [dict(temperature=float("nan")), dict(temperature=float("inf")),
                                dict(temperature=-0.5), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=0),
                                dict(eos_token_id=V)])
def test_generate_rejects_bad_sampling_parameters(lab, kw):
    model = build(lab, "gpt2")
    with pytest.raises(ValueError):
        model.generate(torch.zeros(1, 2, dtype=torch.long), 1, **kw)


# --------------------------------------------------------------------------- optimizer and FLOPs
@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_configure_optimizers_groups(lab, style):
    model = build(lab, style, n_kv_head=2 if style == "llama" else None)
    opt = model.configure_optimizers(0.1, 1e-3, betas=(0.9, 0.95))
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["lr"] == 1e-3
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)), ("a parameter appears twice in the optimizer: the tied head IS the token "
                                       "embedding, walk model.parameters() (which yields it once)")
    assert set(ids) == {id(p) for p in model.parameters()}, "every parameter must be in exactly one group"
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = sorted(names[id(p)] for p in decay["params"])
    want = sorted(n for n, p in model.named_parameters()
                  if p.dim() == 2 and "emb" not in n and (n != "head.weight" or style == "llama"))
    assert decayed == want, (f"decay exactly the Linear weight matrices (and an untied head), never norms, biases or "
                             f"embeddings. Decayed {decayed}, expected {want}")


@pytest.mark.parametrize("kw", [dict(style="llama", n_kv_head=2), dict(style="gpt2")])
def test_flops_per_token_matches_torch_flop_counter(lab, kw):
    from torch.utils.flop_counter import FlopCounterMode

    kw = dict(kw)
    model = build(lab, kw.pop("style"), **kw)
    model.train()
    B, T = 2, 16
    idx = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(20))
    with FlopCounterMode(display=False) as counter:
        _, loss = model(idx, idx)
        loss.backward()
    measured = counter.get_total_flops() / (B * T)
    est = model.estimate_flops_per_token(T)
    assert est == pytest.approx(measured, rel=1e-9), (
        f"estimate_flops_per_token({T}) = {est:,.0f} but torch counts {measured:,.0f} matmul FLOPs per token "
        "(forward + backward). 6 per weight of every Linear (the head too, tied or not) + 12 * n_layer * d_model * T")
    assert model.estimate_mfu(1000.0, 1e9, T) == pytest.approx(est * 1000.0 / 1e9)


# --------------------------------------------------------------------------- export to Hugging Face
def _perturbed(lab, style: str, **kw):
    model = build(lab, style, **kw)
    with torch.no_grad():  # non-trivial norms and biases, so every copied tensor matters
        g = torch.Generator().manual_seed(21)
        for _, p in model.named_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


EXPORTS = {
    "llama GQA untied": ("llama", "to_hf_llama", dict(n_kv_head=2)),
    "llama tied, theta 5e5": ("llama", "to_hf_llama", dict(tie_weights=True, rope_theta=500000.0, norm_eps=1e-6)),
    "gpt2 tied": ("gpt2", "to_hf_gpt2", {}),
    "gpt2 untied": ("gpt2", "to_hf_gpt2", dict(tie_weights=False)),
}


@pytest.mark.parametrize("case", list(EXPORTS))
def test_export_to_hf_round_trip(lab, case, tmp_path):
    from transformers import AutoModelForCausalLM

    style, fn, kw = EXPORTS[case]
    model = _perturbed(lab, style, **kw)
    hf = getattr(lab, fn)(model)
    idx = torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(22))
    with torch.no_grad():
        ours = model(idx)[0]
        diff = (hf(idx).logits - ours).abs().max().item()
    assert diff < 1e-5, (f"{case}: exported HF model's logits differ by {diff:.2e}. Split qkv rows back into q/k/v "
                         "(k and v have n_kv_head * d_head rows), transpose into GPT-2's Conv1D, copy every norm")
    hf.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    tied = loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight
    assert tied == model.config.tie_weights, "tie_word_embeddings must follow GPTConfig.tie_weights"
    with torch.no_grad():
        diff = (loaded(idx).logits - ours).abs().max().item()
    assert diff < 1e-5, f"{case}: after save_pretrained/from_pretrained the logits differ by {diff:.2e}"
    cfg = lab.config_from_hf(loaded.config)
    c = model.config
    assert (cfg.resolved_n_kv_head, cfg.resolved_d_ff, cfg.rope_theta, cfg.norm_eps, cfg.tie_weights, cfg.block_size) \
        == (c.resolved_n_kv_head, c.resolved_d_ff, c.rope_theta, c.norm_eps, c.tie_weights, c.block_size), \
        "the exported config must map back to the same GPTConfig (kv heads, d_ff, rope_theta, eps, tying, context)"


@pytest.mark.given
def test_exporters_reject_the_wrong_architecture(lab):
    with pytest.raises(ValueError, match="Llama"):
        lab.to_hf_llama(build(lab, "gpt2"))
    with pytest.raises(ValueError, match="GPT-2"):
        lab.to_hf_gpt2(build(lab, "llama", n_kv_head=2))

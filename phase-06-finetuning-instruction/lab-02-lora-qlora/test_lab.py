"""Grader for lab 6.2 (LoRA and QLoRA from scratch). References: peft (LoraConfig / get_peft_model,
set_peft_model_state_dict, get_nb_trainable_parameters, print_trainable_parameters, PeftModel
adapter files), bitsandbytes 0.50 on CPU (get_4bit_type, create_dynamic_map, quantize_4bit /
dequantize_4bit with quant_type="nf4", Linear4bit through transformers' BitsAndBytesConfig), an
explicit-matmul LoRA formula, brute-force nearest-code search, and held-out perplexity on Tiny
Shakespeare (a domain the TinyStories-trained curriculum model never saw)."""
from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn as nn

from labkit import load_lab, seed_everything

R, ALPHA = 8, 16.0


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def hf_path():
    from labkit import curriculum_model_path

    return curriculum_model_path("main") / "hf"


@pytest.fixture(scope="module")
def load(lab, hf_path):
    """A fresh copy of the curriculum model (HF LlamaForCausalLM, fp32, eval mode) on every call."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    def _load():
        return AutoModelForCausalLM.from_pretrained(hf_path, dtype=torch.float32).eval()

    return _load


@pytest.fixture(scope="module")
def idx():
    return torch.randint(0, 4096, (2, 48), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def shakespeare(lab, hf_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_path)
    return lab.load_shakespeare_ids(tok, train_chars=120_000, val_chars=12_000)


def cfg(lab, **kw):
    return lab.LoRAConfig(**{"r": R, "alpha": ALPHA, **kw})


def randomize(lab, model, seed=0, std=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, lab.LoRALinear):
                m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * std)


def copy_into_peft(lab, ours, pm):
    from peft import set_peft_model_state_dict

    state = {}
    for name, m in ours.named_modules():
        if isinstance(m, lab.LoRALinear):
            state[f"base_model.model.{name}.lora_A.weight"] = m.lora_A.detach().clone()
            state[f"base_model.model.{name}.lora_B.weight"] = m.lora_B.detach().clone()
    res = set_peft_model_state_dict(pm, state)
    assert not [k for k in res.unexpected_keys if "lora_" in k]


def peft_of(base, targets=None, dropout=0.0):
    from peft import LoraConfig, get_peft_model

    targets = targets or ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return get_peft_model(base, LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=dropout, target_modules=targets,
                                           bias="none", task_type="CAUSAL_LM")).eval()


def diff(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()


# --------------------------------------------------------------------------- config (given)
@pytest.mark.given
@pytest.mark.parametrize("kw, needle", [
    (dict(r=0), "rank"), (dict(alpha=0.0), "alpha"), (dict(dropout=1.0), "dropout"),
    (dict(target_modules=()), "target_modules"),
])
def test_bad_config_raises_clear_valueerror(lab, kw, needle):
    with pytest.raises(ValueError, match=needle):
        lab.LoRAConfig(**kw)


# --------------------------------------------------------------------------- LoRALinear
def make_layer(lab, d_in=24, d_out=40, bias=True, dropout=0.0, seed=0):
    seed_everything(seed)
    base = nn.Linear(d_in, d_out, bias=bias)
    return lab.LoRALinear(base, R, ALPHA, dropout)


def test_init_b_zero_a_kaiming_and_output_equals_base(lab):
    layer = make_layer(lab)
    assert layer.lora_A.shape == (R, 24) and layer.lora_B.shape == (40, R), \
        "lora_A must be (r, d_in) and lora_B (d_out, r)"
    assert torch.count_nonzero(layer.lora_B) == 0, "B must start at zero so the adapted model IS the base model at step 0"
    assert torch.count_nonzero(layer.lora_A) == layer.lora_A.numel(), \
        "A must start random (Kaiming-uniform): with A = B = 0 neither gets a gradient and nothing ever trains"
    bound = 1 / math.sqrt(24)  # kaiming_uniform_(a=sqrt(5)) on fan_in 24
    assert layer.lora_A.abs().max() <= bound + 1e-6 and layer.lora_A.abs().max() > 0.5 * bound, \
        "A should be nn.init.kaiming_uniform_(A, a=math.sqrt(5)) (uniform in +-1/sqrt(d_in)), as nn.Linear and peft do"
    x = torch.randn(3, 5, 24)
    assert torch.equal(layer(x), layer.base(x)), "with B = 0 the LoRA layer must return exactly base(x)"


def test_forward_equals_explicit_formula_with_alpha_over_r(lab):
    layer = make_layer(lab)
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.1)
    x = torch.randn(4, 24)
    W, b = layer.base.weight, layer.base.bias
    expected = x @ W.T + b + (ALPHA / R) * (x @ layer.lora_A.T) @ layer.lora_B.T
    got = layer(x)
    assert got.shape == (4, 40)
    assert torch.allclose(got, expected, atol=1e-5), \
        "forward must be base(x) + (alpha/r) * x @ A.T @ B.T: check the alpha/r scaling and the order B(Ax)"
    assert torch.allclose(layer.delta_weight(), (ALPHA / R) * layer.lora_B @ layer.lora_A, atol=1e-6), \
        "delta_weight() is (alpha / r) * B @ A, shape (d_out, d_in)"


def test_gradient_reaches_only_the_adapters(lab):
    layer = make_layer(lab)
    x = torch.randn(8, 24)
    layer(x).pow(2).sum().backward()
    assert layer.base.weight.grad is None and layer.base.bias.grad is None, \
        "the base weight must be frozen (requires_grad=False): LoRA never updates W0"
    assert layer.lora_B.grad is not None and layer.lora_B.grad.abs().sum() > 0, "B must receive a gradient at step 0"
    assert torch.count_nonzero(layer.lora_A.grad) == 0, \
        "with B = 0, dL/dA = B.T @ ... is exactly zero at step 0: is B really zero-initialised?"


def test_dropout_applies_to_the_adapter_input_only(lab):
    layer = make_layer(lab, dropout=0.5)
    x = torch.randn(6, 24)
    layer.train()
    assert torch.equal(layer(x), layer.base(x)), \
        "with B = 0 a train-mode forward must still equal base(x): dropout belongs on the adapter path only"
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.1)
    torch.manual_seed(0)
    a = layer(x)
    layer.eval()
    assert not torch.allclose(a, layer(x)), "train-mode dropout on the adapter input should change the output"
    assert torch.equal(layer(x), layer(x)), "eval mode must be deterministic (no dropout)"


def test_merge_unmerge_round_trip_and_errors(lab):
    layer = make_layer(lab)
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.1)
    w0 = layer.base.weight.detach().clone()
    x = torch.randn(5, 24)
    before = layer(x)
    layer.merge()
    assert layer.merged
    assert torch.allclose(layer.base.weight, w0 + layer.delta_weight(), atol=1e-6), "merge adds (alpha/r) B A to W"
    assert torch.allclose(layer(x), before, atol=1e-5), \
        "merged output differs: after merging, forward must skip the adapter (or you add B A twice)"
    with pytest.raises(RuntimeError, match="already merged"):
        layer.merge()
    layer.unmerge()
    assert torch.allclose(layer.base.weight, w0, atol=1e-6), "unmerge must restore the original weight"
    assert torch.allclose(layer(x), before, atol=1e-6)
    with pytest.raises(RuntimeError, match="not merged"):
        layer.unmerge()


# --------------------------------------------------------------------------- the curriculum model vs peft
def test_apply_lora_targets_and_freezes(lab, load):
    model = load()
    names = lab.apply_lora(model, cfg(lab))
    assert len(names) == 4 * 7 and names[0] == "model.layers.0.self_attn.q_proj", \
        "expected the 7 projections of each of the 4 blocks, in named_modules() order"
    assert isinstance(model.model.layers[2].mlp.down_proj, lab.LoRALinear)
    assert not isinstance(model.lm_head, lab.LoRALinear), "lm_head is not a target: only names in target_modules"
    bad = [n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]
    assert not bad, f"only lora_A / lora_B may train; still trainable: {bad[:3]} (freeze everything else)"
    with pytest.raises(ValueError, match="q_proj"):
        lab.apply_lora(load(), cfg(lab, target_modules=("qproj",)))  # a typo must not silently train nothing


def test_logits_equal_peft_with_same_a_b(lab, load, idx):
    ours = load()
    with torch.no_grad():
        base_logits = ours(idx).logits
    lab.apply_lora(ours, cfg(lab))
    with torch.no_grad():
        assert torch.equal(ours(idx).logits, base_logits), "at init (B = 0) the model must equal the base model"
    randomize(lab, ours)
    pm = peft_of(load())
    copy_into_peft(lab, ours, pm)
    with torch.no_grad():
        d = diff(ours(idx).logits, pm(idx).logits)
    assert d < 1e-5, f"logits differ from peft's by {d:.2e} with the same A/B: scaling alpha/r? B @ A vs A @ B?"


def test_train_mode_dropout_matches_peft_with_same_seed(lab, load, idx):
    ours = load()
    lab.apply_lora(ours, cfg(lab, dropout=0.2))
    randomize(lab, ours)
    pm = peft_of(load(), dropout=0.2)
    copy_into_peft(lab, ours, pm)
    ours.train()
    pm.train()
    torch.manual_seed(3)
    a = ours(idx).logits
    torch.manual_seed(3)
    b = pm(idx).logits
    d = diff(a, b)
    assert d < 1e-5, (f"train-mode logits differ from peft's by {d:.2e}: peft computes B(A(dropout(x))) with one "
                      "dropout mask per adapted layer, drawn when that layer runs")


def test_merged_logits_equal_unmerged(lab, load, idx):
    model = load()
    lab.apply_lora(model, cfg(lab))
    randomize(lab, model)
    with torch.no_grad():
        un = model(idx).logits
        lab.merge_lora(model)
        me = model(idx).logits
        lab.unmerge_lora(model)
        again = model(idx).logits
    assert diff(me, un) < 1e-5, "merged and unmerged logits must agree"
    assert diff(again, un) < 1e-5, "unmerge must restore the unmerged model"


def test_trainable_count_formula_and_peft(lab, load, capsys):
    model = load()
    lab.apply_lora(model, cfg(lab))
    trainable, total = lab.count_params(model)
    shapes = [(m.out_features, m.in_features) for m in model.modules() if isinstance(m, lab.LoRALinear)]
    formula = lab.expected_lora_params(shapes, R)
    assert formula == 4 * R * ((128 + 128) * 2 + (128 + 64) * 2 + (128 + 384) * 3) == 77_824
    pm = peft_of(load())
    peft_trainable, peft_total = pm.get_nb_trainable_parameters()
    assert trainable == formula == peft_trainable, \
        f"trainable {trainable:,}, formula {formula:,}, peft {peft_trainable:,}: only A and B should train"
    assert total == peft_total
    pm.print_trainable_parameters()
    printed = capsys.readouterr().out
    m = re.search(r"trainable params: ([\d,]+) \|\| all params: ([\d,]+)", printed)
    assert m and int(m[1].replace(",", "")) == trainable and int(m[2].replace(",", "")) == total


def test_expected_lora_params_is_2dr_for_square(lab):
    assert lab.expected_lora_params([(4096, 4096)], 16) == 2 * 4096 * 16 == 131_072
    assert lab.expected_lora_params([(64, 128), (384, 128)], 4) == 4 * (192 + 512)
    with pytest.raises(ValueError):
        lab.expected_lora_params([(8, 8)], 0)


def test_adapter_save_reload_and_peft_interop(lab, load, idx, tmp_path):
    from peft import PeftModel

    model = load()
    c = cfg(lab)
    lab.apply_lora(model, c)
    randomize(lab, model, seed=5)
    with torch.no_grad():
        ref = model(idx).logits
    folder = lab.save_adapter(model, tmp_path / "adapter", c)
    size = (folder / "adapter_model.safetensors").stat().st_size
    assert 4 * 77_824 < size < 4 * 77_824 + 20_000, f"the adapter file should hold only A and B ({size:,} bytes)"
    again = load()
    lab.load_adapter(again, folder)
    with torch.no_grad():
        assert diff(again(idx).logits, ref) < 1e-6, "save_adapter -> load_adapter must reproduce the logits"
        via_peft = PeftModel.from_pretrained(load(), folder).eval()
        assert diff(via_peft(idx).logits, ref) < 1e-5, "peft must load our adapter folder to the same logits"
    with pytest.raises(ValueError, match="keys"):
        lab.load_adapter(_other_model(load), folder)


def _other_model(load):
    """The same architecture with one layer fewer: the adapter's keys cannot all match."""
    from transformers import LlamaForCausalLM

    m = load()
    cfg = m.config
    cfg.num_hidden_layers = 3
    return LlamaForCausalLM(cfg).eval()


def test_lora_finetune_improves_heldout_perplexity(lab, load, shakespeare):
    train_ids, val_ids = shakespeare
    model = load()
    before = lab.perplexity(model, val_ids, 128)
    lab.apply_lora(model, cfg(lab))
    w0 = model.model.layers[0].self_attn.q_proj.base.weight.detach().clone()
    seed_everything(0)
    losses = lab.train_lora(model, train_ids, steps=20, batch_size=8, block_size=64, lr=3e-3, seed=0)
    after = lab.perplexity(model, val_ids, 128)
    assert torch.equal(model.model.layers[0].self_attn.q_proj.base.weight, w0), "the base weights must not change"
    assert after < 0.5 * before, (f"held-out perplexity {before:.1f} -> {after:.1f}: LoRA on all projections should "
                                  f"at least halve it on Shakespeare in 20 steps (losses {losses[0]:.2f} -> {losses[-1]:.2f})")


def test_lora_on_our_minigpt(lab, idx):
    from labkit import curriculum_model_path

    nano = load_lab("phase-05-training-small-llms/lab-02-nano-gpt")
    mg, _ = nano.load_checkpoint(curriculum_model_path("main") / "minigpt.pt")
    mg.eval()
    with torch.no_grad():
        before = mg(idx)[0]
        names = lab.apply_lora(mg, cfg(lab, target_modules=lab.MINIGPT_TARGETS))
        assert len(names) == 4 * 5, "qkv, attn proj, fc, gate, mlp proj in each of 4 blocks"
        assert torch.equal(mg(idx)[0], before)
        randomize(lab, mg)
        un = mg(idx)[0]
        lab.merge_lora(mg)
        assert diff(mg(idx)[0], un) < 1e-5


# --------------------------------------------------------------------------- NF4 from scratch vs bitsandbytes
@pytest.fixture(scope="module")
def bnbF():
    return pytest.importorskip("bitsandbytes.functional")


def test_nf4_codebook_matches_bitsandbytes(lab, bnbF):
    code = lab.nf4_codebook()
    assert code.shape == (16,) and code.dtype == torch.float32
    assert code[0] == -1 and code[-1] == 1 and (code == 0).sum() == 1, "NF4 spans [-1, 1] and has an exact zero"
    assert (code[1:] > code[:-1]).all(), "return the levels sorted"
    d = diff(code, bnbF.get_4bit_type("nf4", device="cpu"))
    assert d < 1e-6, (f"NF4 levels differ from bitsandbytes' by {d:.2e}: 8 positive quantiles of linspace(0.9677083, "
                      "0.5, 9)[:-1], 7 negative of linspace(0.9677083, 0.5, 8)[:-1], a zero, divided by the max")


@pytest.mark.given
def test_dynamic_map_matches_bitsandbytes(lab, bnbF):
    assert diff(lab.dynamic_map_8bit(), bnbF.create_dynamic_map(signed=True)) < 1e-7


def test_quantize_blockwise_is_nearest_code_with_blockwise_absmax(lab):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1000, generator=g) * 0.3  # 1000 = 15 blocks of 64 + a short block of 40
    x[64:128] = 0.0  # an all-zero block
    code = lab.nf4_codebook()
    idx, absmax = lab.quantize_blockwise(x, code, 64)
    assert idx.dtype == torch.uint8 and idx.shape == (1000,) and absmax.shape == (16,), \
        "one uint8 index per value, one absmax per block (the last block may be short)"
    ref_absmax = torch.stack([x[i: i + 64].abs().max() for i in range(0, 1000, 64)])
    assert torch.allclose(absmax, ref_absmax), "absmax must be max |x| over each block of 64"
    assert absmax[1] == 0 and (code[idx[64:128].long()] == 0).all(), "an all-zero block must encode to the zero code"
    scaled = x / ref_absmax.clamp(min=1e-38).repeat_interleave(64)[:1000]
    brute = (scaled[:, None] - code[None, :]).abs().argmin(dim=1)
    agree = (idx.long() == brute).float().mean().item()
    assert agree > 0.999, f"only {agree:.1%} of indices are the nearest code: divide by the block's absmax, then round"
    back = lab.dequantize_blockwise(idx, absmax, code, 64)
    assert back.shape == (1000,) and diff(back, code[brute] * ref_absmax.repeat_interleave(64)[:1000]) < 1e-6


@pytest.mark.given
@pytest.mark.parametrize("bad, exc", [(torch.tensor([]), ValueError), (torch.tensor([1.0, float("nan")]), ValueError)])
def test_quantize_blockwise_rejects_bad_input(lab, bad, exc):
    with pytest.raises(exc):
        lab.quantize_blockwise(bad, torch.linspace(-1, 1, 16), 64)


@pytest.mark.parametrize("shape", [(96, 128), (3, 37)])
def test_nf4_packed_bytes_and_dequant_match_bitsandbytes(lab, bnbF, shape):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(2)) * 0.02
    q = lab.quantize_nf4(w, double_quant=False)
    pb, st = bnbF.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
    assert q.packed.dtype == torch.uint8 and q.packed.numel() == pb.numel(), "two 4-bit codes per byte"
    same = (q.packed == pb.reshape(-1)).float().mean().item()
    assert same > 0.999, (f"only {same:.1%} of packed bytes equal bitsandbytes': the FIRST value of each pair goes in "
                          "the HIGH nibble ((idx[0::2] << 4) | idx[1::2])")
    assert torch.allclose(q.absmax, st.absmax)
    back = lab.dequantize_nf4(q)
    assert back.shape == w.shape and back.dtype == w.dtype
    if shape[-1] % 2:  # bnb's CPU dequantize falls back to a torch.compile'd kernel here: too slow for a test
        codes = torch.stack([pb.reshape(-1) >> 4, pb.reshape(-1) & 15], dim=1).reshape(-1)[: w.numel()]
        ref = (bnbF.get_4bit_type("nf4", device="cpu")[codes.long()] * st.absmax.repeat_interleave(64)[: w.numel()])
        ref = ref.view_as(w)
    else:
        ref = bnbF.dequantize_4bit(pb, st)
    assert diff(back, ref) < 1e-6, "dequantize: code[index] * absmax of its block (high nibble = even index)"


def test_double_quant_matches_bitsandbytes(lab, bnbF):
    w = torch.randn(256, 384, generator=torch.Generator().manual_seed(3)) * 0.02  # 1536 absmax values
    q = lab.quantize_nf4(w, double_quant=True)
    pb, st = bnbF.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    assert q.double_quant and q.absmax.dtype == torch.uint8, "with double quantization the absmax are stored as uint8"
    assert abs(q.offset - st.offset.item()) < 1e-7, "offset = mean of the fp32 absmax values"
    assert torch.allclose(q.absmax2, st.state2.absmax), "second-level scales: absmax of (absmax - offset) per 256"
    agree = (q.absmax == st.absmax).float().mean().item()
    assert agree > 0.98, f"only {agree:.1%} of 8-bit absmax codes match bitsandbytes' (quantize absmax - offset)"
    assert (q.packed == pb.reshape(-1)).all()
    back = lab.dequantize_nf4(q)
    rel = ((back - w).norm() / w.norm()).item()
    ref_rel = ((bnbF.dequantize_4bit(pb, st) - w).norm() / w.norm()).item()
    assert abs(rel - ref_rel) < 1e-3 and rel < 0.11, f"relative error {rel:.4f} vs bitsandbytes' {ref_rel:.4f}"
    bits = 8 * q.nbytes / w.numel()
    assert 4.12 < bits < 4.13, f"{bits:.3f} bits/weight: 4 + 8/64 + 32/(64*256) expected with double quantization"


def test_nf4_beats_int4_on_normal_weights(lab):
    w = torch.randn(512, 512, generator=torch.Generator().manual_seed(4))
    nf4 = ((lab.dequantize_nf4(lab.quantize_nf4(w, double_quant=False)) - w).pow(2).mean()).item()
    i, a = lab.quantize_blockwise(w, lab.int4_codebook(), 64)
    int4 = ((lab.dequantize_blockwise(i, a, lab.int4_codebook(), 64).view_as(w) - w).pow(2).mean()).item()
    assert nf4 < 0.9 * int4, f"NF4 MSE {nf4:.2e} should beat uniform INT4's {int4:.2e} on normal weights"


# --------------------------------------------------------------------------- QLoRA
def test_qlora_logits_equal_bitsandbytes_peft(lab, load, hf_path, idx):
    pytest.importorskip("bitsandbytes")
    ours = load()
    quantized = lab.quantize_model_nf4(ours, double_quant=False)
    assert "lm_head" not in quantized and len(quantized) == 28
    lab.apply_lora(ours, cfg(lab))
    randomize(lab, ours, seed=7)
    theirs = lab.bnb_qlora_model(hf_path, cfg(lab), double_quant=False).eval()
    copy_into_peft(lab, ours, theirs)
    with torch.no_grad():
        d = diff(ours(idx).logits, theirs(idx).logits)
    assert d < 1e-5, f"QLoRA logits differ from transformers+bitsandbytes+peft by {d:.2e} (same NF4 codes, same A/B)"
    assert lab.count_params(ours) == tuple(theirs.get_nb_trainable_parameters())
    with pytest.raises(RuntimeError, match="merge"):
        ours.model.layers[0].self_attn.q_proj.merge()  # a 4-bit base cannot absorb B A


def test_qlora_trains_on_cpu_ours_and_bitsandbytes(lab, load, hf_path, shakespeare):
    pytest.importorskip("bitsandbytes")
    train_ids, val_ids = shakespeare
    results = {}
    for name in ("ours", "bnb"):
        seed_everything(0)
        if name == "ours":
            model = load()
            lab.quantize_model_nf4(model)
            lab.apply_lora(model, cfg(lab))
        else:
            model = lab.bnb_qlora_model(hf_path, cfg(lab))
        before = lab.perplexity(model, val_ids, 128)
        lab.train_lora(model, train_ids, steps=15, batch_size=8, block_size=64, lr=3e-3, seed=0)
        results[name] = (before, lab.perplexity(model, val_ids, 128))
    for name, (b, a) in results.items():
        assert a < 0.6 * b, f"{name} QLoRA: held-out perplexity {b:.1f} -> {a:.1f} after 15 steps"
    assert abs(results["ours"][0] - results["bnb"][0]) < 0.01 * results["bnb"][0], \
        "our NF4 base and bitsandbytes' should start from the same perplexity"


def test_nf4_linear_memory(lab):
    lin = nn.Linear(384, 128, bias=False)
    q = lab.NF4Linear.from_linear(lin)
    n = 384 * 128
    assert q.nbytes == n // 2 + n // 64 + 4 * math.ceil(n / 64 / 256) + 4, \
        "NF4 + double quant stores n/2 code bytes, one uint8 per 64-block, one fp32 per 256 scales and the offset"
    assert not any(p.requires_grad for p in q.parameters())
    x = torch.randn(3, 384)
    ref = x @ lab.dequantize_nf4(q.nf4_weight()).T
    assert torch.allclose(q(x), ref, atol=1e-5)


@pytest.mark.gpu
def test_same_code_on_cuda_bf16_matches_peft(lab, load, idx):
    ours = load().to("cuda", torch.bfloat16)
    lab.apply_lora(ours, cfg(lab))
    randomize(lab, ours)
    pm = peft_of(load().to("cuda", torch.bfloat16))
    copy_into_peft(lab, ours, pm)
    with torch.no_grad():
        d = diff(ours(idx.cuda()).logits, pm(idx.cuda()).logits)
    assert d < 0.05, f"bf16 on CUDA: logits differ from peft's by {d:.3f}"


@pytest.mark.given
def test_clear_errors_for_misuse(lab, tmp_path):
    tiny = nn.Sequential(nn.Linear(4, 4)).requires_grad_(False)
    with pytest.raises(ValueError, match="apply_lora"):
        lab.train_lora(tiny, torch.arange(100), steps=1)  # a frozen model with no adapters: nothing would train
    with pytest.raises(ValueError, match="no LoRA layers"):
        lab.save_adapter(tiny, tmp_path / "a", lab.LoRAConfig())
    with pytest.raises(ValueError, match="more than"):
        lab.perplexity(tiny, torch.arange(10), block_size=16)
    with pytest.raises(TypeError, match="floating"):
        lab.quantize_nf4(torch.arange(64))
    with pytest.raises(FileNotFoundError):
        lab.load_adapter(tiny, tmp_path / "missing")
    with pytest.raises(TypeError, match="linear"):
        lab.LoRALinear(nn.ReLU(), 4, 8.0)

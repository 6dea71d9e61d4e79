"""Grader for the transformer-maths quiz. References: transformers GPT2/Llama models built on the meta
device (parameter counts), torch's FlopCounterMode (FLOPs), a real DynamicCache (KV bytes), eager
attention weights (score-matrix bytes), torch.optim.AdamW state (optimizer bytes), peft LoRA
(adapter params), a numpy int4 packing (quantized bytes), a Monte-Carlo simulation (speculative
decoding), the ZeRO and Chinchilla papers' published numbers, and every numeric answer in the bank."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
V = 97


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bank(lab):
    return lab.load_bank()


GIVEN_FNS = {"training_flops", "uniform_loss", "softmax", "rope_wavelength"}  # given helpers, not TODOs


def numeric_ids():
    import json
    data = json.loads((HERE / "questions.json").read_text())
    return [pytest.param(q["id"], marks=pytest.mark.given) if q["compute"]["fn"] in GIVEN_FNS else q["id"]
            for q in data["questions"] if "compute" in q]


# --------------------------------------------------------------------------- the bank itself
@pytest.mark.given
def test_bank_is_big_enough_and_covers_every_topic(lab, bank):
    counts = lab.topics(bank)
    assert len(bank) >= 150, f"the bank needs >= 150 questions, has {len(bank)}"
    thin = {t: n for t, n in counts.items() if n < 3}
    assert not thin, f"topics with fewer than 3 questions: {thin}"
    for must in ("parameter-count", "flops", "kv-cache", "attention", "mixed-precision", "distributed-zero",
                 "activation-memory", "scaling-laws", "tokenization", "softmax-loss", "positional-encoding",
                 "lora", "quantization", "speculative-decoding", "sampling"):
        assert must in counts, f"topic {must!r} has no questions"


@pytest.mark.given
def test_every_question_is_complete_and_links_an_existing_lab(lab, bank):
    for q in bank:
        assert q["difficulty"] in lab.DIFFICULTIES
        assert len(q["answer"]) > 20, f"{q['id']}: answer too short to be useful"
        assert (lab.REPO / q["lab"]).exists(), f"{q['id']}: {q['lab']} does not exist"
    assert len({q["question"] for q in bank}) == len(bank), "duplicate question texts"


@pytest.mark.given
def test_load_bank_rejects_a_broken_question(lab, tmp_path):
    bad = tmp_path / "q.json"
    bad.write_text('{"questions": [{"id": "x", "topic": "t", "difficulty": "easy", "question": "q?", '
                   '"answer": "a", "lab": "no/such/lab"}]}')
    with pytest.raises(ValueError, match="does not exist"):
        lab.load_bank(bad)


@pytest.mark.parametrize("qid", numeric_ids())
def test_stated_numeric_answer_equals_the_computation(lab, bank, qid):
    q = next(q for q in bank if q["id"] == qid)
    msg = lab.check_numeric(q)
    assert msg is None, (f"{msg}. The bank states the number the reference calculators produce; your "
                         f"{q['compute']['fn']} disagrees. Question: {q['question']}")


# --------------------------------------------------------------------------- param_count
def hf_numel(model_cls, cfg):
    with torch.device("meta"):
        model = model_cls(cfg)
    return sum(p.numel() for p in model.parameters())  # tied weights are counted once


@pytest.mark.parametrize("kw", [
    dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257),
    dict(n_embd=64, n_layer=3, n_head=4, n_positions=128, vocab_size=V, n_inner=200),
])
def test_param_count_matches_transformers_gpt2(lab, kw):
    from transformers import GPT2Config, GPT2LMHeadModel
    ref = hf_numel(GPT2LMHeadModel, GPT2Config(**kw, bos_token_id=0, eos_token_id=0))
    cfg = lab.gpt2_style(vocab_size=kw["vocab_size"], d_model=kw["n_embd"], n_layer=kw["n_layer"],
                         n_head=kw["n_head"], n_positions=kw["n_positions"], d_ff=kw.get("n_inner"))
    got = lab.param_count(cfg)
    assert got == ref, (f"param_count={got:,} but GPT2LMHeadModel has {ref:,} ({got - ref:+,}). GPT-2 has "
                        "LayerNorm weight AND bias, biases on every linear, a learned position table and a "
                        "head tied to the embedding (count it once).")


@pytest.mark.parametrize("kw", [
    dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, intermediate_size=11008, vocab_size=32000),
    dict(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
         intermediate_size=28672, vocab_size=32000),
    dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2, intermediate_size=96,
         vocab_size=V, tie_word_embeddings=True, attention_bias=True, mlp_bias=True),
])
def test_param_count_matches_transformers_llama(lab, kw):
    from transformers import LlamaConfig, LlamaForCausalLM
    ref = hf_numel(LlamaForCausalLM, LlamaConfig(**kw))
    cfg = lab.llama_style(vocab_size=kw["vocab_size"], d_model=kw["hidden_size"], n_layer=kw["num_hidden_layers"],
                          n_head=kw["num_attention_heads"], n_kv_head=kw.get("num_key_value_heads"),
                          d_ff=kw["intermediate_size"], tied=kw.get("tie_word_embeddings", False),
                          bias=kw.get("attention_bias", False))
    got = lab.param_count(cfg)
    assert got == ref, (f"param_count={got:,} but LlamaForCausalLM has {ref:,} ({got - ref:+,}). Check: k and v "
                        "are d x (n_kv_head*d_head) under GQA, SwiGLU has three matrices, RMSNorm has no bias, "
                        "and the head is a separate V x d matrix unless tied.")


# --------------------------------------------------------------------------- flops_per_token
@pytest.fixture(scope="module")
def tiny_models():
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    gpt = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                     bos_token_id=0, eos_token_id=0, attn_implementation="eager"))
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, intermediate_size=48, attn_implementation="eager"))
    return gpt, llama


def counted_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


@pytest.mark.parametrize("T", [8, 24])
def test_flops_per_token_matches_flop_counter(lab, tiny_models, T):
    gpt, llama = tiny_models
    x = torch.randint(0, V, (1, T))
    g = lab.gpt2_style(vocab_size=V, d_model=32, n_layer=2, n_head=4, n_positions=64)
    ll = lab.llama_style(vocab_size=V, d_model=32, n_layer=2, n_head=4, n_kv_head=2, d_ff=48)
    ref = counted_flops(lambda: gpt(x)) / T
    got = lab.flops_per_token(g, T)
    assert got == ref, (f"forward FLOPs/token: yours {got:,} vs FlopCounterMode {ref:,.0f} on a tiny GPT-2. "
                        "2 FLOPs per weight of every matmul (the head too, even when tied), plus q@k^T and "
                        "probs@v: 2*T*d each per layer.")
    assert lab.flops_per_token(ll, T) == counted_flops(lambda: llama(x)) / T, \
        "Llama forward FLOPs: GQA shrinks k/v projections, but attention still runs over n_head*d_head = d_model"
    ref_train = counted_flops(lambda: gpt(x).logits.sum().backward()) / T
    assert lab.flops_per_token(g, T, training=True) == ref_train, \
        "training FLOPs = forward + backward; the backward costs two matmuls per forward matmul"


@pytest.mark.given
def test_flops_rejects_bad_context(lab):
    with pytest.raises(ValueError, match="context"):
        lab.flops_per_token("gpt2", 0)
    with pytest.raises(ValueError, match="unknown model"):
        lab.flops_per_token("gpt5", 10)


# --------------------------------------------------------------------------- KV cache, attention bytes
def test_kv_cache_bytes_matches_a_real_cache(lab, tiny_models):
    _, llama = tiny_models
    x = torch.randint(0, V, (3, 11))
    with torch.no_grad():
        cache = llama(x, use_cache=True).past_key_values
    ref = sum(t.nbytes for layer in cache.layers for t in (layer.keys, layer.values))
    cfg = lab.llama_style(vocab_size=V, d_model=32, n_layer=2, n_head=4, n_kv_head=2, d_ff=48)
    got = lab.kv_cache_bytes(cfg, seq_len=11, batch=3, bytes_per_elem=4)
    assert got == ref, (f"kv_cache_bytes={got:,} but the DynamicCache holds {ref:,} bytes. Count K and V, every "
                        "layer, only the n_kv_head heads (GQA), and the batch.")
    assert lab.kv_cache_bytes("llama2-70b", 4096) == 1_342_177_280


def test_attention_scores_bytes_matches_eager_attention(lab, tiny_models):
    gpt, _ = tiny_models
    x = torch.randint(0, V, (2, 13))
    with torch.no_grad():
        att = gpt(x, output_attentions=True).attentions[0]
    got = lab.attention_scores_bytes(batch=2, n_head=4, seq_len=13, bytes_per_elem=4)
    assert got == att.nbytes, f"{got:,} vs the attention weights' {att.nbytes:,} bytes: (B, heads, T, T) elements"
    assert lab.attention_scores_bytes(1, 1, 131072, 2) == 32 * 2**30


# --------------------------------------------------------------------------- AdamW and ZeRO
def test_adamw_bytes_match_real_optimizer_state(lab):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
    n = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 16)).sum().backward()
    opt.step()
    state = sum(t.nbytes for s in opt.state.values() for k, t in s.items() if k in ("exp_avg", "exp_avg_sq"))
    fp32 = lab.adamw_bytes(n, mixed_precision=False)
    assert fp32["adam_m"] + fp32["adam_v"] == state, "AdamW keeps two fp32 moments per parameter"
    assert fp32["weights"] == sum(p.nbytes for p in model.parameters())
    assert fp32["grads"] == sum(p.grad.nbytes for p in model.parameters())
    assert fp32["total"] == 16 * n
    mixed = lab.adamw_bytes(n)
    assert mixed["weights"] == sum(p.to(torch.bfloat16).nbytes for p in model.parameters())
    assert mixed["master"] == 4 * n and mixed["total"] == 16 * n, \
        "mixed precision: 2 (bf16 weights) + 2 (grads) + 4 (fp32 master) + 4 + 4 (moments) = 16 bytes/param"


def test_zero_matches_the_paper(lab):
    # ZeRO (Rajbhandari et al., 2020), Figure 1: 7.5B parameters, N_d = 64, K = 12.
    want = [120.0, 31.4, 16.6, 1.9]
    got = [lab.zero_bytes_per_gpu(7_500_000_000, 64, st) / 1e9 for st in range(4)]
    for st, (g, w) in enumerate(zip(got, want)):
        assert abs(g - w) < 0.06, (f"ZeRO stage {st}: {g:.2f} GB, the paper says {w} GB. Stage 1 shards only the "
                                   "K=12 optimizer bytes, stage 2 also the 2 gradient bytes, stage 3 everything.")
    assert lab.zero_bytes_per_gpu(1e9, 1, 3) == lab.zero_bytes_per_gpu(1e9, 1, 0), "one GPU: nothing to shard"


@pytest.mark.given
def test_zero_rejects_bad_stage(lab):
    with pytest.raises(ValueError, match="stage"):
        lab.zero_bytes_per_gpu(1e9, 8, 4)


def test_activation_bytes(lab):
    s, b, h, a = 2048, 2, 4096, 32
    got = lab.activation_bytes(s, b, h, a, n_layer=3)
    want = 3 * s * b * h * (34 + 5 * a * s / h)
    assert got == pytest.approx(want), ("per layer s*b*h*(34 + 5*a*s/h) bytes (Korthikanti et al. 2022); the "
                                        "attention term 5*a*s^2*b grows with the batch too")
    assert lab.activation_bytes(s, b, h, a, 3, flash=True) == pytest.approx(3 * 34 * s * b * h), \
        "FlashAttention does not store the s x s scores: only 34*s*b*h per layer remains"


# --------------------------------------------------------------------------- scaling laws
def test_chinchilla(lab):
    assert lab.chinchilla_tokens(70e9) == pytest.approx(1.4e12), "Chinchilla: 70B params on 1.4T tokens"
    n, d = lab.chinchilla_optimal(5.76e23)
    assert n == pytest.approx(69.28e9, rel=1e-3) and d == pytest.approx(20 * n)
    assert lab.training_flops(n, d) == pytest.approx(5.76e23), "the optimum must spend exactly the budget C = 6ND"
    n2, _ = lab.chinchilla_optimal(4 * 5.76e23)
    assert n2 == pytest.approx(2 * n), "4x compute -> 2x params and 2x tokens (both grow as sqrt(C))"


# --------------------------------------------------------------------------- LoRA vs peft
def test_lora_params_match_peft(lab):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                                         num_key_value_heads=2, intermediate_size=96))
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    ref = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    shapes = [(64, 64), (64, 16), (64, 16), (64, 64)] * 2
    got = lab.lora_params(shapes, r=4)
    assert got == ref, f"lora_params={got:,} but peft trains {ref:,}: A is r x d_in and B is d_out x r"


@pytest.mark.given
def test_lora_rejects_empty(lab):
    with pytest.raises(ValueError, match="empty"):
        lab.lora_params([], 8)


# --------------------------------------------------------------------------- quantization
def test_quantized_bytes_match_a_real_int4_packing(lab):
    rng = np.random.default_rng(0)
    w = rng.normal(size=4096 * 3).astype(np.float32)
    g = 128
    groups = w.reshape(-1, g)
    scale = (np.abs(groups).max(axis=1, keepdims=True) / 7).astype(np.float16)
    q = np.clip(np.round(groups / scale.astype(np.float32)), -8, 7).astype(np.int8) & 0xF
    packed = (q.reshape(-1)[0::2] | (q.reshape(-1)[1::2] << 4)).astype(np.uint8)
    ref = packed.nbytes + scale.nbytes
    assert lab.quantized_bytes(w.size, 4, group_size=g) == ref, \
        "int4 codes are half a byte each, plus one fp16 scale per group"
    assert lab.quantized_bytes(w.size, 4, group_size=g, zero_point=True) == ref + scale.nbytes
    assert lab.quantized_bytes(7_000_000_000, 16) == 14e9
    assert lab.quantized_bytes(1000, 8, group_size=128) == 1000 + 8 * 2, "a partial last group still has a scale"


# --------------------------------------------------------------------------- speculative decoding
@pytest.mark.parametrize("alpha, gamma", [(0.8, 4), (0.5, 3), (0.95, 6)])
def test_expected_accepted_tokens_matches_simulation(lab, alpha, gamma):
    rng = np.random.default_rng(0)
    trials = 40_000
    accept = rng.random((trials, gamma)) < alpha
    # accepted prefix length = index of the first rejection (gamma if none), plus the target's own token
    prefix = np.where(accept.all(axis=1), gamma, np.argmin(accept, axis=1))
    sim = prefix.mean() + 1
    got = lab.expected_accepted_tokens(alpha, gamma)
    assert got == pytest.approx(sim, abs=0.03), (f"E[tokens]={got:.3f} but a simulation gives {sim:.3f}: the target "
                                                 "always contributes one token after the accepted prefix")


def test_expected_accepted_tokens_edges(lab):
    assert lab.expected_accepted_tokens(1.0, 4) == 5.0, "alpha == 1: every draft token accepted, plus the bonus"
    assert lab.expected_accepted_tokens(0.0, 4) == 1.0, "alpha == 0: only the target's own token"


@pytest.mark.given
def test_bad_inputs_raise(lab):
    with pytest.raises(ValueError, match="alpha"):
        lab.expected_accepted_tokens(1.5, 3)
    with pytest.raises(ValueError, match="bits"):
        lab.quantized_bytes(100, 0)
    with pytest.raises(ValueError, match="seq_len"):
        lab.kv_cache_bytes("gpt2", float("nan"))
    with pytest.raises(ValueError, match="divisible"):
        lab.ModelConfig(vocab_size=10, d_model=30, n_layer=1, n_head=4)


# --------------------------------------------------------------------------- CLI
@pytest.mark.given
def test_quiz_prints_n_questions_with_answers(lab):
    buf = io.StringIO()
    lab.run_quiz("attention", 5, True, seed=0, difficulty=None, interactive=False, out=buf)
    text = buf.getvalue()
    assert text.count("(attention,") == 5 and text.count("answer:") == 5


@pytest.mark.given
def test_mock_is_reproducible_and_prints_the_rubric(lab):
    a, b = io.StringIO(), io.StringIO()
    ra = lab.run_mock(seed=7, interactive=False, out=a)
    rb = lab.run_mock(seed=7, interactive=False, out=b)
    assert ra == rb and a.getvalue() == b.getvalue()
    kinds = [k for k, _, _ in ra["parts"]]
    assert kinds == ["coding", "concept", "system design"], kinds
    assert "Rubric" in a.getvalue()


def test_cli_self_test_passes():
    target = "lab.py" if os.environ.get("LAB_TARGET") == "lab" else "solution.py"
    out = subprocess.run([sys.executable, str(HERE / target)], capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, f"self-test failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    assert "question bank:" in out.stdout


@pytest.mark.given
def test_cli_quiz_non_interactive():
    out = subprocess.run([sys.executable, str(HERE / "solution.py"), "quiz", "--topic", "kv-cache", "--n", "3",
                          "--seed", "1"], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("(kv-cache,") == 3

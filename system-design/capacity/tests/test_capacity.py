"""Tests for the capacity calculators: hand-derived cases, published figures, and cross-checks against
what the curriculum itself measures (Phase 9's KV cache, a Phase 5 training step's FLOP count, FAISS's
own index sizes)."""
from __future__ import annotations

import dataclasses
import math

import pytest
from capacity import data, inference, retrieval, stats, training
from capacity.inference import LLAMA3_8B
from capacity.render import main as render_main
from capacity.render import render_one
from capacity.units import fmt_bytes, fmt_count


# ---------------------------------------------------------------- inference
def test_kv_bytes_llama3_8b_published():
    # 32 layers x 8 KV heads x 128 dims x (K, V) x 2 bytes = 128 KiB per token (widely quoted figure)
    assert inference.model_kv_bytes_per_token(LLAMA3_8B, "bf16") == 131_072
    # 8,192 tokens x 32 sequences = 32 GiB; without GQA (32 KV heads) 4x that
    assert inference.model_kv_bytes_per_token(LLAMA3_8B) * 8192 * 32 == 32 * 2**30
    assert inference.kv_bytes_per_token(32, 32, 128) * 8192 * 32 == 128 * 2**30


def test_kv_paged_rounding_and_weights():
    per = 100.0
    assert inference.kv_bytes_per_sequence(17, per) == 1700
    assert inference.kv_bytes_per_sequence(17, per, block_size=16) == 3200, "17 tokens occupy two 16-token blocks"
    assert inference.kv_bytes_per_sequence(32, per, block_size=16) == 3200
    assert inference.weight_bytes(8e9, "fp8") == 8e9
    assert inference.weight_bytes(8e9, "int4") == 4e9


def test_max_concurrent_sequences_hand_case():
    # 80 GB x 0.9 = 72 GB; minus 16 GB weights = 56 GB; / 1 GB per sequence = 56
    assert inference.max_concurrent_sequences(80e9, 16e9, 1e9) == 56
    assert inference.max_concurrent_sequences(80e9, 100e9, 1e9) == 0


def test_decode_roofline_regimes():
    kw = dict(context_tokens=1000, weights_bytes=16e9, kv_per_token=131_072, n_params=8e9, bandwidth=3.35e12,
              peak_flops=989e12, bandwidth_efficiency=1.0, flops_efficiency=1.0)
    # batch 1: memory bound, time = bytes / bandwidth
    t1 = inference.decode_step_seconds(1, **kw)
    assert t1 == pytest.approx((16e9 + 1000 * 131_072) / 3.35e12)
    # a huge batch with no KV: compute bound, 2 N B / peak
    kw2 = {**kw, "kv_per_token": 1e-9}
    t = inference.decode_step_seconds(100_000, **kw2)
    assert t == pytest.approx(2 * 8e9 * 100_000 / 989e12)
    assert inference.decode_tokens_per_second(1, **kw) == pytest.approx(1 / t1)


def test_max_batch_for_tpot_is_largest_meeting_slo():
    kw = dict(context_tokens=1000, weights_bytes=16e9, kv_per_token=131_072, n_params=8e9, bandwidth=3.35e12,
              peak_flops=989e12)
    b = inference.max_batch_for_tpot(0.02, 10_000, **kw)
    assert inference.decode_step_seconds(b, **kw) <= 0.02 < inference.decode_step_seconds(b + 1, **kw)
    assert inference.max_batch_for_tpot(1e-6, 10_000, **kw) == 0


def test_replicas_and_cost_hand_cases():
    # 10 QPS x (1000/10000 + 100/1000) s = 2 replica-seconds per second; at 50% utilisation: 4 replicas
    assert inference.replicas_for_load(10, 1000, 100, 10_000, 1000, 0.5) == pytest.approx(4.0)
    # $3.60 per GPU-hour, 1 GPU, 1000 tok/s -> 3.6M tokens per hour -> $1 per million
    assert inference.usd_per_million_tokens(3.6, 1, 1000) == pytest.approx(1.0)


def test_kv_bytes_equal_phase9_measured_cache():
    """Our formula against the bytes lab 9.1's KVCache actually holds after a forward pass of the curriculum model."""
    torch = pytest.importorskip("torch")
    from labkit import curriculum_model_path, load_lab

    kv = load_lab("phase-09-inference-optimization/lab-01-kv-cache")
    nano = load_lab("phase-05-training-small-llms/lab-02-nano-gpt")
    model, _ = nano.load_checkpoint(curriculum_model_path("main") / "minigpt.pt")
    cfg = model.config
    for n in (1, 37, 200):
        cache = kv.KVCache()
        with torch.no_grad():
            model(torch.zeros(1, n, dtype=torch.long), past_key_values=cache)
        per = inference.kv_bytes_per_token(cfg.n_layer, cfg.resolved_n_kv_head, cfg.d_model // cfg.n_head, "fp32")
        assert cache.nbytes() == per * n, f"{n} tokens: measured {cache.nbytes()} B, formula {per * n} B"


# ---------------------------------------------------------------- training
def test_gpt3_training_compute_published():
    # Brown et al. 2020: 175B parameters, 300B tokens, 3.14e23 FLOPs
    assert training.training_flops(175e9, 300e9) == pytest.approx(3.14e23, rel=0.01)


def test_six_nd_equals_flop_counter_on_phase5_step():
    """6 N D (+ the attention term) against torch.utils.flop_counter on a real training step of our model."""
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode

    from labkit import curriculum_model_path, load_lab

    gpt = load_lab("phase-04-attention-transformers/lab-04-mini-transformer")
    nano = load_lab("phase-05-training-small-llms/lab-02-nano-gpt")
    trained, _ = nano.load_checkpoint(curriculum_model_path("main") / "minigpt.pt")
    cfg = dataclasses.replace(trained.config, attn_impl="math")  # explicit matmuls, which the counter sees
    model = gpt.MiniGPT(cfg)
    model.load_state_dict(trained.state_dict())
    n_matmul = sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2 and name != "tok_emb.weight")
    for batch, seq in ((4, cfg.block_size), (2, 64)):
        x = torch.randint(0, cfg.vocab_size, (batch, seq))
        with FlopCounterMode(display=False) as counter:
            _, loss = model(x, targets=x)
            loss.backward()
        measured = counter.get_total_flops()
        tokens = batch * seq
        predicted = training.training_flops(n_matmul, tokens) + \
            training.attention_flops_per_token(cfg.n_layer, seq, cfg.d_model) * tokens
        assert measured == pytest.approx(predicted, rel=1e-9), \
            "6 N D + attention should equal the counted matmul FLOPs of forward + backward exactly"
        # 6 N D alone misses the attention score/value matmuls: the share grows with seq / d_model
        assert training.training_flops(n_matmul, tokens) < measured


def test_chinchilla_and_mfu_hand_cases():
    n, d = training.chinchilla_optimal(6 * 20 * 1e18)
    assert n == pytest.approx(1e9) and d == pytest.approx(20e9)
    assert training.mfu(1000, 1e9, 1, 6e12) == pytest.approx(1.0)
    assert training.training_seconds(1e18, 10, 1e15, 0.5) == pytest.approx(200.0)


@pytest.mark.parametrize("stage,expected", [(0, 16.0), (1, 4 + 12 / 8), (2, 2 + 14 / 8), (3, 16 / 8)])
def test_zero_stages_bytes_per_param(stage, expected):
    assert training.state_bytes_per_gpu(1.0, 8, stage) == pytest.approx(expected)


def test_activation_pipeline_allreduce_lora_hand_cases():
    # s=2, b=1, h=4, a=2, t=1: s b h (34 + 5 a s / h) = 8 * (34 + 5) = 312
    assert training.activation_bytes_per_layer(2, 1, 4, 2) == pytest.approx(312)
    assert training.activation_bytes_per_layer(2, 1, 4, 2, recompute="full") == pytest.approx(16)
    assert training.pipeline_bubble_fraction(8, 32) == pytest.approx(7 / 39)
    assert training.ring_allreduce_seconds(1e9, 4, 1e9) == pytest.approx(1.5)
    # one layer, q only: rank 2 x (4 + 4) = 16
    assert training.lora_param_count(1, 4, 2, 8, 2, ("q",)) == 16
    assert training.lora_param_count(1, 4, 2, 8, 2, ("k", "down")) == 2 * (4 + 2) + 2 * (8 + 4)


def test_lora_param_count_matches_peft():
    """Our LoRA count against peft on a small Llama built from a config (no download)."""
    pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    from peft import LoraConfig, get_peft_model

    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=100)
    model = get_peft_model(transformers.LlamaForCausalLM(cfg), LoraConfig(
        r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == training.lora_param_count(2, 64, 2 * 16, 160, 4)


# ---------------------------------------------------------------- retrieval
def test_index_memory_against_faiss():
    faiss = pytest.importorskip("faiss")
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5_000, 64)).astype("float32")
    flat = faiss.IndexFlatL2(64)
    flat.add(x)
    assert faiss.serialize_index(flat).nbytes == pytest.approx(retrieval.flat_index_bytes(5_000, 64), rel=0.001)
    hnsw = faiss.IndexHNSWFlat(64, 16)
    hnsw.add(x)
    assert faiss.serialize_index(hnsw).nbytes == pytest.approx(retrieval.hnsw_index_bytes(5_000, 64, 16), rel=0.01)
    ivfpq = faiss.IndexIVFPQ(faiss.IndexFlatL2(64), 64, 100, 8, 8)
    ivfpq.train(x)
    ivfpq.add(x)
    assert faiss.serialize_index(ivfpq).nbytes == pytest.approx(
        retrieval.ivfpq_index_bytes(5_000, 64, 100, 8), rel=0.01)


def test_retrieval_hand_cases():
    assert retrieval.flat_scan_qps(1000, 100, 4e6, 4, 1.0) == pytest.approx(10.0)
    assert retrieval.shards_needed(1000, 100, 0.5) == 20
    with pytest.raises(ValueError, match="divide"):
        retrieval.ivfpq_index_bytes(10, 64, 1, 7)


# ---------------------------------------------------------------- data, stats, units
def test_data_plan_hand_case():
    rows = data.plan(1000, [data.Stage("a", 0.5, 1000 / 3600), data.Stage("b", 0.2, 500 / 3600)])
    assert [(r.bytes_in, r.bytes_out) for r in rows] == [(1000, 500), (500, 100)]
    assert rows[0].core_hours == pytest.approx(1.0) and rows[1].core_hours == pytest.approx(1.0)
    assert data.token_storage_bytes(10, 50_000) == 20 and data.token_storage_bytes(10, 128_256) == 40
    with pytest.raises(ValueError, match="at least one"):
        data.plan(1, [])


def test_stats_hand_cases():
    assert stats.ci_halfwidth(0.5, 1000) == pytest.approx(1.959964 * math.sqrt(0.25 / 1000), rel=1e-6)
    # (1.96 + 0.8416)^2 * 0.5 / 0.05^2 = 1569.8 -> 1570
    assert stats.items_to_detect(0.05) == 1570


@pytest.mark.parametrize("call", [
    lambda: inference.kv_bytes_per_token(0, 8, 128),
    lambda: inference.kv_bytes_per_token(32, 8, 128, "fp12"),
    lambda: inference.max_concurrent_sequences(80e9, 1e9, 1e9, memory_utilization=1.5),
    lambda: training.training_flops(float("nan"), 1),
    lambda: training.state_bytes_per_gpu(1, 8, 4),
    lambda: stats.items_to_detect(1.5),
    lambda: inference.ModelShape("bad", 1, 1, 8, 3, 2, 4, 10, 10, 10),
])
def test_bad_input_is_a_clear_value_error(call):
    with pytest.raises(ValueError):
        call()


def test_formatting():
    assert fmt_bytes(131_072, binary=True) == "128 KiB"
    assert fmt_bytes(1.5e9) == "1.5 GB"
    assert fmt_count(1_234_567) == "1.23M"


# ---------------------------------------------------------------- the documents
def test_committed_walkthroughs_are_up_to_date(capsys):
    assert render_main(["--check"]) == 0, capsys.readouterr().out


def test_render_refuses_missing_or_unused_values(monkeypatch):
    from capacity import render, walkthroughs

    name = "01-llm-inference-gateway"
    real = walkthroughs.doc_01()
    monkeypatch.setitem(render.DOCS, name, lambda: {"qps": "1"})
    with pytest.raises(ValueError, match="no value"):
        render_one(name)
    monkeypatch.setitem(render.DOCS, name, lambda: {**real, "orphan": "42"})
    with pytest.raises(ValueError, match="never shown"):
        render_one(name)

"""The numbers every walkthrough uses, computed from stated assumptions by the calculators.

Each ``doc_NN()`` returns ``{placeholder: text}`` for ``templates/NN-*.md``. Assumptions are the only
typed numbers, and each document prints them in its capacity section; change one here, run
``python -m capacity.render`` from ``system-design/``, and the document follows.
"""
from __future__ import annotations

import math

from . import data, inference, retrieval, stats, training
from .inference import LLAMA3_8B, LLAMA3_70B
from .units import fmt_bytes, fmt_count, fmt_sci, fmt_usd

# Hardware (NVIDIA H100 SXM datasheet: 80 GB HBM3 at 3.35 TB/s, 989 dense bf16 TFLOP/s, 1,979 fp8) and
# an assumed rental price; every document states these.
GPU = {"name": "H100 SXM", "hbm": 80e9, "bw": 3.35e12, "bf16": 989e12, "fp8": 1979e12,
       "usd_hour": 2.50, "ib": 50e9}
HOURS_PER_YEAR = 24 * 365
CPU_CORE_USD_HOUR = 0.04  # assumed price of one cloud CPU core-hour


def _table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _serving_pool(model: inference.ModelShape, tp: int, qps: float, prompt: int, output: int,
                  tpot_slo: float, dtype: str = "bf16") -> dict:
    """Size one model pool: memory per GPU, batch under the TPOT SLO, replicas, GPUs, cost."""
    kv_tok = inference.model_kv_bytes_per_token(model, dtype)
    ctx = prompt + output
    kv_seq = inference.kv_bytes_per_sequence(ctx, kv_tok, block_size=16)
    w = inference.weight_bytes(model.n_params, dtype)
    max_seqs = inference.max_concurrent_sequences(GPU["hbm"] * tp, w, kv_seq)
    step = dict(context_tokens=prompt + output / 2, weights_bytes=w, kv_per_token=kv_tok, n_params=model.n_params,
                bandwidth=GPU["bw"] * tp, peak_flops=GPU["bf16"] * tp)
    batch = inference.max_batch_for_tpot(tpot_slo, max_seqs, **step)
    decode_tps = inference.decode_tokens_per_second(batch, **step)
    prefill_tps = inference.prefill_tokens_per_second(model.n_params, GPU["bf16"] * tp)
    replicas = math.ceil(inference.replicas_for_load(qps, prompt, output, prefill_tps, decode_tps))
    gpus = replicas * tp
    out_tps_total = qps * output
    return {"kv_tok": kv_tok, "kv_seq": kv_seq, "weights": w, "max_seqs": max_seqs, "batch": batch,
            "step_ms": inference.decode_step_seconds(batch, **step) * 1e3, "decode_tps": decode_tps,
            "prefill_tps": prefill_tps, "ttft_ms": prompt / prefill_tps * 1e3, "replicas": replicas, "gpus": gpus,
            "usd_m_out": inference.usd_per_million_tokens(GPU["usd_hour"], gpus, out_tps_total),
            "step1_ms": inference.decode_step_seconds(1, **step) * 1e3}


def doc_01() -> dict[str, str]:
    """LLM inference gateway at 100k QPS."""
    qps, prompt, output, tpot = 100_000, 800, 200, 0.05
    mix = {"8B": (LLAMA3_8B, 1, 0.7), "70B": (LLAMA3_70B, 4, 0.3)}
    pools = {k: _serving_pool(m, tp, qps * share, prompt, output, tpot) for k, (m, tp, share) in mix.items()}
    rows = []
    for k, p in pools.items():
        m, tp, share = mix[k]
        rows.append([f"{m.name} (TP={tp})", fmt_count(qps * share), fmt_bytes(p["kv_tok"], binary=True),
                     fmt_bytes(p["kv_seq"], binary=True), fmt_bytes(p["weights"]), f"{p['max_seqs']:,}",
                     f"{p['batch']:,}", f"{p['step_ms']:.1f}", fmt_count(p["decode_tps"]),
                     f"{p['ttft_ms']:.0f}", f"{p['replicas']:,}", f"{p['gpus']:,}"])
    table = _table(["pool", "QPS", "KV/token", "KV/request", "weights", "max seqs in memory",
                    "batch at TPOT SLO", "step ms", "decode tok/s per replica", "prefill ms (800 tok)",
                    "replicas", "GPUs"], rows)
    gpus = sum(p["gpus"] for p in pools.values())
    year = gpus * GPU["usd_hour"] * HOURS_PER_YEAR
    kv128 = inference.kv_bytes_per_sequence(128_000, pools["70B"]["kv_tok"])
    return {
        "qps": f"{qps:,}", "prompt": f"{prompt:,}", "output": f"{output}", "tpot_ms": f"{tpot * 1e3:.0f}",
        "gpu": GPU["name"], "gpu_hbm": fmt_bytes(GPU["hbm"]), "gpu_bw": f"{GPU['bw'] / 1e12:.2f} TB/s",
        "gpu_bf16": f"{GPU['bf16'] / 1e12:.0f} TFLOP/s", "usd_hour": fmt_usd(GPU["usd_hour"]),
        "tok_s_total": fmt_count(qps * (prompt + output)), "out_tok_s": fmt_count(qps * output),
        "pool_table": table, "gpus_total": f"{gpus:,}", "usd_year": fmt_usd(year),
        "usd_m_out_8b": fmt_usd(pools["8B"]["usd_m_out"]), "usd_m_out_70b": fmt_usd(pools["70B"]["usd_m_out"]),
        "kv_tok_70b": fmt_bytes(pools["70B"]["kv_tok"], binary=True),
        "kv_128k_70b": fmt_bytes(kv128, binary=True),
        "kv_tok_70b_mha": fmt_bytes(inference.kv_bytes_per_token(80, 64, 128), binary=True),
        "w70": fmt_bytes(pools["70B"]["weights"]),
        "step1_8b": f"{pools['8B']['step1_ms']:.1f}", "batch_8b": f"{pools['8B']['batch']:,}",
        "decode_8b_b1": fmt_count(1 / (pools["8B"]["step1_ms"] / 1e3)),
        "decode_8b": fmt_count(pools["8B"]["decode_tps"]),
    }


def doc_02() -> dict[str, str]:
    """Distributed pretraining, 8B and 70B on 15T tokens."""
    tokens, mfu = 15e12, 0.40
    rows, out = [], {}
    for m, gpus in ((LLAMA3_8B, 1024), (LLAMA3_70B, 8192)):
        c = training.training_flops(m.n_params, tokens)
        secs = training.training_seconds(c, gpus, GPU["bf16"], mfu)
        gpu_hours = c / (GPU["bf16"] * mfu) / 3600
        n_opt, d_opt = training.chinchilla_optimal(c)
        rows.append([m.name, fmt_sci(c), f"{gpus:,}", f"{secs / 86400:.0f}", fmt_count(gpu_hours),
                     fmt_usd(gpu_hours * GPU["usd_hour"]), f"{fmt_count(n_opt)} / {fmt_count(d_opt)}"])
    out["compute_table"] = _table(["model", "6ND FLOPs", "GPUs", "days at MFU", "GPU-hours", "cost",
                                   "Chinchilla-optimal N / D for that compute"], rows)
    n70 = LLAMA3_70B.n_params
    zrows = []
    for world in (8, 64, 1024):
        zrows.append([f"{world:,}"] + [fmt_bytes(training.state_bytes_per_gpu(n70, world, z)) for z in range(4)])
    out["zero_table"] = _table(["data-parallel ranks", "DDP", "ZeRO-1", "ZeRO-2", "ZeRO-3 / FSDP"], zrows)
    seq, mb = 8192, 1
    arows = []
    for rc in ("none", "selective", "full"):
        per = training.activation_bytes_per_layer(seq, mb, LLAMA3_70B.d_model, LLAMA3_70B.n_heads, 8, rc)
        arows.append([rc, fmt_bytes(per), fmt_bytes(per * LLAMA3_70B.n_layers / 4)])
    out["act_table"] = _table(["recomputation", "per layer per GPU (TP=8)", "per GPU, 20 layers (PP=4)"], arows)
    out["bubble_8_32"] = f"{training.pipeline_bubble_fraction(8, 32):.1%}"
    out["bubble_4_32"] = f"{training.pipeline_bubble_fraction(4, 32):.1%}"
    grads8 = inference.weight_bytes(LLAMA3_8B.n_params, "bf16")
    out["ar_8b_s"] = f"{training.ring_allreduce_seconds(grads8, 1024, GPU['ib']):.2f}"
    out["grads_8b"] = fmt_bytes(grads8)
    gpt3 = training.training_flops(175e9, 300e9)
    out["gpt3"] = fmt_sci(gpt3)
    out.update({"tokens": fmt_count(tokens), "mfu": f"{mfu:.0%}", "gpu": GPU["name"],
                "gpu_bf16": f"{GPU['bf16'] / 1e12:.0f} TFLOP/s", "usd_hour": fmt_usd(GPU["usd_hour"]),
                "adam_bytes": str(training.adamw_bytes_per_param()),
                "state_70b": fmt_bytes(n70 * training.adamw_bytes_per_param()), "seq": f"{seq:,}",
                "ib": f"{GPU['ib'] / 1e9:.0f} GB/s"})
    return out


def doc_03() -> dict[str, str]:
    """RAG over 100M documents at 1k QPS."""
    docs, chunks_per_doc, dim, qps = 100e6, 5, 768, 1000
    n = docs * chunks_per_doc
    flat32 = retrieval.flat_index_bytes(n, dim, 4)
    flat16 = retrieval.flat_index_bytes(n, dim, 2)
    hnsw = retrieval.hnsw_index_bytes(n, dim, 32, 2)
    ivfpq = retrieval.ivfpq_index_bytes(n, dim, nlist=65_536, m=96, nbits=8)
    node_ram = 512e9
    rows = [["flat fp32", fmt_bytes(flat32), str(retrieval.shards_needed(flat32, node_ram))],
            ["flat fp16", fmt_bytes(flat16), str(retrieval.shards_needed(flat16, node_ram))],
            ["HNSW M=32, fp16 vectors", fmt_bytes(hnsw), str(retrieval.shards_needed(hnsw, node_ram))],
            ["IVF-PQ 65,536 lists, 96 B codes", fmt_bytes(ivfpq), str(retrieval.shards_needed(ivfpq, node_ram))]]
    scan_qps = retrieval.flat_scan_qps(n, dim, 200e9, 2)
    # re-ranking: a 110M-parameter cross-encoder over 100 candidates of ~256 tokens per query
    ce_params, cand, pair_tokens, mfu = 110e6, 100, 256, 0.3
    pair_flops = 2 * ce_params * pair_tokens
    pairs_per_gpu = GPU["bf16"] * mfu / pair_flops
    rerank_gpus = math.ceil(qps * cand / pairs_per_gpu)
    gen_prompt, gen_out = 3000, 300
    gen = _serving_pool(LLAMA3_8B, 1, qps, gen_prompt, gen_out, 0.05)
    return {
        "docs": fmt_count(docs), "chunks": fmt_count(n), "chunks_per_doc": str(chunks_per_doc), "dim": str(dim),
        "qps": f"{qps:,}", "index_table": _table(["index", "memory", f"nodes at {fmt_bytes(node_ram)} RAM"], rows),
        "scan_qps": f"{scan_qps:.2f}", "pair_gflops": f"{pair_flops / 1e9:.0f}",
        "pairs_per_gpu": fmt_count(pairs_per_gpu), "rerank_gpus": str(rerank_gpus), "cand": str(cand),
        "gen_gpus": f"{gen['gpus']:,}", "gen_batch": f"{gen['batch']}", "gen_ttft": f"{gen['ttft_ms']:.0f}",
        "gen_usd_m": fmt_usd(gen["usd_m_out"]), "embed_gb": fmt_bytes(flat16), "node_ram": fmt_bytes(node_ram),
        "ce_params": fmt_count(ce_params), "pair_tokens": str(pair_tokens), "ce_mfu": f"{mfu:.0%}",
        "gen_prompt": f"{gen_prompt:,}", "gen_out": str(gen_out), "pq_ratio": f"{hnsw / ivfpq:.0f}",
    }


def doc_04() -> dict[str, str]:
    """A fine-tuning platform: full fine-tuning vs LoRA vs QLoRA."""
    m8, m70 = LLAMA3_8B, LLAMA3_70B
    rows = []
    for m in (m8, m70):
        kv_dim = m.n_kv_heads * m.head_dim
        lora = training.lora_param_count(m.n_layers, m.d_model, kv_dim, m.d_ff, 16)
        full = training.state_bytes_per_gpu(m.n_params, 1, 0)
        lora_mem = inference.weight_bytes(m.n_params, "bf16") + lora * training.adamw_bytes_per_param()
        qlora_mem = inference.weight_bytes(m.n_params, "int4") + lora * training.adamw_bytes_per_param()
        rows.append([m.name, fmt_bytes(full), f"{math.ceil(full / (GPU['hbm'] * 0.8))}",
                     fmt_count(lora), f"{lora / m.n_params:.2%}", fmt_bytes(lora_mem), fmt_bytes(qlora_mem)])
    table = _table(["model", "full FT state (16 B/param)", "GPUs for state alone (80% of HBM)",
                    "LoRA r=16 params (all linear)", "share of model", "LoRA: bf16 base + adapter state",
                    "QLoRA: NF4 base + adapter state"], rows)
    job_tokens = 500e6  # e.g. 250k conversations of ~2k tokens, one epoch
    full_flops = training.training_flops(m8.n_params, job_tokens)
    lora_flops = 4 * m8.n_params * job_tokens  # no weight gradients for frozen weights
    mfu = 0.35
    full_h = full_flops / (GPU["bf16"] * mfu) / 3600
    lora_h = lora_flops / (GPU["bf16"] * mfu) / 3600
    adapter_bytes = training.lora_param_count(m8.n_layers, m8.d_model, m8.n_kv_heads * m8.head_dim, m8.d_ff, 16) * 2
    return {"mem_table": table, "full8": fmt_bytes(training.state_bytes_per_gpu(m8.n_params, 1, 0)), "job_tokens": fmt_count(job_tokens), "mfu": f"{mfu:.0%}",
            "full_gpu_h": f"{full_h:.1f}", "lora_gpu_h": f"{lora_h:.1f}", "full_usd": fmt_usd(full_h * GPU["usd_hour"]),
            "lora_usd": fmt_usd(lora_h * GPU["usd_hour"]), "adapter_mb": fmt_bytes(adapter_bytes),
            "adapters_per_gpu": f"{int((GPU['hbm'] * 0.9 - inference.weight_bytes(m8.n_params)) // adapter_bytes):,}",
            "gpu": GPU["name"], "usd_hour": fmt_usd(GPU["usd_hour"])}


def doc_05() -> dict[str, str]:
    """A continuous evaluation platform."""
    n = LLAMA3_70B.n_params
    suites = [("MMLU (5-shot, loglik)", 14_042 * 4, 600, 1), ("HellaSwag (loglik)", 10_042 * 4, 100, 1),
              ("GSM8K (8-shot, generate 256)", 1_319, 900, 256), ("IFEval (generate 512)", 541, 100, 512),
              ("MT-Bench answers (2 turns, 512 each)", 160, 300, 512)]
    rows, total = [], 0.0
    for name, reqs, ctx, gen in suites:
        flops = 2 * n * reqs * (ctx + gen)
        total += flops
        rows.append([name, f"{reqs:,}", f"{ctx:,}", f"{gen}", fmt_sci(flops)])
    mfu = 0.3
    gpu_h = total / (GPU["bf16"] * mfu) / 3600
    judge_calls = 80 * 2 * 2  # questions x turns x both orders
    return {"suite_table": _table(["suite", "requests", "avg prompt tokens", "generated", "FLOPs (2 N per token)"],
                                  rows),
            "model": LLAMA3_70B.name, "total_flops": fmt_sci(total), "gpu_h": f"{gpu_h:.1f}", "mfu": f"{mfu:.0%}",
            "usd_ckpt": fmt_usd(gpu_h * GPU["usd_hour"]), "judge_calls": f"{judge_calls:,}",
            "ci_1000": f"{stats.ci_halfwidth(0.5, 1000) * 100:.1f}",
            "ci_14042": f"{stats.ci_halfwidth(0.7, 14_042) * 100:.2f}",
            "n_2pt": f"{stats.items_to_detect(0.02, 0.5):,}", "n_5pt": f"{stats.items_to_detect(0.05, 0.5):,}",
            "n_1pt": f"{stats.items_to_detect(0.01, 0.5):,}", "gpu": GPU["name"], "usd_hour": fmt_usd(GPU["usd_hour"])}


def doc_06() -> dict[str, str]:
    """A pretraining data pipeline: 10 TB of WARC to tokens."""
    warc = 10e12
    stages = [data.Stage("HTML -> text extraction", 0.08, 5e6), data.Stage("language ID (fastText)", 0.5, 50e6),
              data.Stage("quality heuristics", 0.6, 20e6), data.Stage("exact dedup (hash)", 0.8, 200e6),
              data.Stage("MinHash-LSH near-dup (128 perms)", 0.75, 2e6),
              data.Stage("decontamination (13-grams)", 0.999, 30e6), data.Stage("PII masking", 1.0, 30e6)]
    rows_ = data.plan(warc, stages)
    rows = [[r.name, f"{s.core_bytes_per_s / 1e6:g}", fmt_bytes(r.bytes_in), fmt_bytes(r.bytes_out),
             f"{r.bytes_out / r.bytes_in:.0%}", fmt_count(r.core_hours)] for r, s in zip(rows_, stages)]
    core_h = sum(r.core_hours for r in rows_)
    clean = rows_[-1].bytes_out
    bpt = 4.2
    tokens = data.tokens_from_bytes(clean, bpt)
    tokenize_bytes_per_core_s = 5e6
    tok_core_h = clean / tokenize_bytes_per_core_s / 3600
    cores = 64
    return {"stage_table": _table(["stage", "MB/s per core (assumed)", "bytes in", "bytes out", "kept", "core-hours"], rows),
            "warc": fmt_bytes(warc), "clean": fmt_bytes(clean), "tokens": fmt_count(tokens), "bpt": f"{bpt}",
            "core_h": fmt_count(core_h + tok_core_h), "tok_core_h": fmt_count(tok_core_h), "tok_mbps": f"{tokenize_bytes_per_core_s / 1e6:g}",
            "cores": f"{cores:,}", "wall_h": f"{data.wall_hours(core_h + tok_core_h, cores):.1f}",
            "u16": fmt_bytes(data.token_storage_bytes(tokens, 50_000)),
            "u32": fmt_bytes(data.token_storage_bytes(tokens, LLAMA3_8B.vocab_size)),
            "vocab": f"{LLAMA3_8B.vocab_size:,}",
            "cpu_usd": fmt_usd((core_h + tok_core_h) * CPU_CORE_USD_HOUR), "core_usd": fmt_usd(CPU_CORE_USD_HOUR),
            "keep_total": f"{clean / warc:.2%}"}


DOCS = {"01-llm-inference-gateway": doc_01, "02-distributed-pretraining": doc_02, "03-rag-at-scale": doc_03,
        "04-finetuning-platform": doc_04, "05-eval-platform": doc_05, "06-pretraining-data-pipeline": doc_06}

"""Regenerate questions.json: numeric questions are computed here by solution.py's calculators.

    .venv/bin/python interview-prep/transformer-math-quiz/build_bank.py

Concept questions live in CONCEPTS below (our own words). The grader re-computes every numeric
answer through lab.py/solution.py, so an edit to a calculator that changes a stated number fails.
"""
from __future__ import annotations

import json
from pathlib import Path

import solution as s

HERE = Path(__file__).resolve().parent
P4 = "phase-04-attention-transformers"
P5 = "phase-05-training-small-llms"
P6 = "phase-06-finetuning-instruction"
P7 = "phase-07-retrieval-rag-agents"
P8 = "phase-08-evaluation-safety"
P9 = "phase-09-inference-optimization"
P10 = "phase-10-distributed-production"
LAB = {
    "overview": f"{P4}/lab-04-mini-transformer",
    "tokenization": f"{P5}/lab-01-bpe-tokenizer",
    "embeddings": "phase-02-classical-nlp-embeddings/lab-01-word2vec-from-scratch",
    "positional-encoding": f"{P4}/lab-03-positional-encodings",
    "attention": f"{P4}/lab-01-scaled-dot-product-attention",
    "multi-head-gqa": f"{P4}/lab-02-multi-head-attention",
    "ffn-activations": f"{P4}/lab-04-mini-transformer",
    "normalization": f"{P4}/lab-04-mini-transformer",
    "parameter-count": f"{P4}/lab-04-mini-transformer",
    "flops": f"{P4}/lab-04-mini-transformer",
    "softmax-loss": f"{P4}/lab-01-scaled-dot-product-attention",
    "optimizers": f"{P5}/lab-03-training-loop-mechanics",
    "mixed-precision": f"{P5}/lab-03-training-loop-mechanics",
    "scaling-laws": f"{P5}/lab-02-nano-gpt",
    "distributed-zero": f"{P10}/lab-01-ddp-fsdp",
    "activation-memory": f"{P10}/lab-01-ddp-fsdp",
    "lora": f"{P6}/lab-02-lora-qlora",
    "post-training": f"{P6}/lab-04-reward-dpo",
    "kv-cache": f"{P9}/lab-01-kv-cache",
    "flash-attention": f"{P4}/lab-01-scaled-dot-product-attention",
    "sampling": f"{P5}/lab-04-sampling",
    "quantization": f"{P9}/lab-02-quantization",
    "speculative-decoding": f"{P9}/lab-05-speculative-decoding",
    "serving": f"{P9}/lab-03-continuous-batching-server",
    "moe": f"{P4}/lab-04-mini-transformer",
    "rag-agents": f"{P7}/lab-02-rag-pipeline",
    "evaluation-safety": f"{P8}/lab-01-eval-harness",
}
GB = 1e9


def fmt(v) -> str:
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) < 1e16):
        return f"{int(v):,}"
    return f"{v:.6g}"


questions: list[dict] = []


def add(topic, difficulty, question, answer, **extra):
    questions.append(dict(id=f"q{len(questions) + 1:03d}", topic=topic, difficulty=difficulty,
                          question=question, answer=answer, lab=LAB[topic], **extra))


def num(topic, difficulty, question, fn, kwargs, explain, pick=None, unit=""):
    call = {"fn": fn, "kwargs": kwargs}
    if pick is not None:
        call["pick"] = pick
    value = s.compute(call)
    add(topic, difficulty, question, f"{fmt(value)}{unit}. {explain.format(v=value, gb=value / GB)}",
        compute=call, value=value)


# ----------------------------------------------------------------------------- numeric
for name, what, d in [
    ("gpt2", "GPT-2 small (V=50257, d=768, 12 layers, 12 heads, 1024 learned positions, tied head)", "easy"),
    ("gpt2-medium", "GPT-2 medium (d=1024, 24 layers, 16 heads, tied)", "medium"),
    ("gpt2-xl", "GPT-2 XL (d=1600, 48 layers, 25 heads, tied)", "medium"),
    ("gpt3-175b", "GPT-3 (d=12288, 96 layers, 2048 learned positions, tied)", "hard"),
    ("llama2-7b", "Llama-2-7B (V=32000, d=4096, 32 layers, SwiGLU d_ff=11008, RMSNorm, untied, no biases)", "medium"),
    ("llama2-13b", "Llama-2-13B (d=5120, 40 layers, d_ff=13824)", "medium"),
    ("llama2-70b", "Llama-2-70B (d=8192, 80 layers, 64 query / 8 KV heads, d_ff=28672)", "hard"),
    ("llama3-8b", "Llama-3-8B (V=128256, d=4096, 32 layers, GQA 32/8, d_ff=14336)", "hard"),
    ("mistral-7b", "Mistral-7B (V=32000, d=4096, 32 layers, GQA 32/8, d_ff=14336)", "medium"),
    ("curriculum-main", "the curriculum's Phase-5 model (V=4096, d=128, 4 layers, GQA 4/2, d_ff=384)", "easy"),
]:
    num("parameter-count", d, f"Count the parameters of {what}.", "param_count", {"cfg": name},
        "Per layer: attention q/o are d*d, k/v are d*(kv_heads*d_head), the MLP has 2 (GELU) or 3 "
        "(SwiGLU) d x d_ff matrices, plus the norms; add embeddings (and the head if untied).")

for name, ctx, train, d in [("gpt2", 1024, False, "medium"), ("gpt2", 1024, True, "medium"),
                            ("llama2-7b", 4096, False, "medium"), ("llama2-7b", 4096, True, "hard"),
                            ("llama3-8b", 8192, False, "hard"), ("curriculum-main", 256, True, "easy")]:
    kind = "training (forward + backward)" if train else "forward"
    num("flops", d, f"Matmul FLOPs per token for a {kind} pass of {name} at context {ctx} "
        "(count the output head, both attention matmuls over the full context).", "flops_per_token",
        {"cfg": name, "context": ctx, "training": train},
        "Forward is 2 FLOPs per weight (head included) plus 4*n_layer*context*d_model for QK^T and AV; "
        "training is three times the forward.")
for n, dtok, d in [(7e9, 2e12, "easy"), (70e9, 2e12, "medium"), (8e9, 15e12, "medium"), (175e9, 300e9, "medium")]:
    num("flops", d, f"Total training compute (6ND) for {n / 1e9:g}B parameters on {dtok / 1e12:g}T tokens?",
        "training_flops", {"n_params": n, "n_tokens": dtok},
        "6 FLOPs per parameter per token: 2 forward, 4 backward.", unit=" FLOPs")

for name, seq, b, by, d in [("llama2-70b", 4096, 1, 2, "hard"), ("llama2-7b", 4096, 1, 2, "medium"),
                            ("llama3-8b", 8192, 1, 2, "medium"), ("llama2-70b", 4096, 32, 2, "hard"),
                            ("mistral-7b", 32768, 1, 2, "medium"), ("llama2-7b", 4096, 8, 1, "medium"),
                            ("gpt2", 1024, 1, 4, "easy"), ("curriculum-main", 256, 1, 4, "easy")]:
    num("kv-cache", d, f"KV-cache bytes for {name}, {seq} tokens, batch {b}, {by} byte(s) per element?",
        "kv_cache_bytes", {"cfg": name, "seq_len": seq, "batch": b, "bytes_per_elem": by},
        "2 (K and V) x layers x KV heads x d_head x tokens x batch x bytes = {gb:.3g} GB.", unit=" bytes")
for b, h, sq, by, d in [(1, 1, 131072, 2, "medium"), (8, 32, 4096, 2, "medium"), (1, 12, 1024, 4, "easy")]:
    num("attention", d, f"Bytes to materialise the attention matrix for batch {b}, {h} heads, {sq} tokens, "
        f"{by}-byte elements (one layer)?", "attention_scores_bytes",
        {"batch": b, "n_head": h, "seq_len": sq, "bytes_per_elem": by},
        "batch x heads x seq^2 x bytes = {gb:.4g} GB; quadratic in the sequence, which is why "
        "FlashAttention never writes it out.", unit=" bytes")

for n, mp, d in [(7e9, True, "easy"), (70e9, True, "medium"), (1.5e9, False, "easy"), (124_439_808, True, "easy")]:
    kind = "bf16 mixed precision" if mp else "pure fp32"
    num("mixed-precision", d, f"Memory for weights, gradients and AdamW state of a {n / 1e9:g}B model in {kind} "
        "(no activations)?", "adamw_bytes", {"n_params": n, "mixed_precision": mp},
        "16 bytes per parameter either way ({gb:.4g} GB): mixed = 2 weights + 2 grads + 4 master + 4 m + 4 v; "
        "fp32 = 4 + 4 + 4 + 4.", pick="total", unit=" bytes")
num("mixed-precision", "medium", "Of those 16 bytes/param for a 7B model in mixed precision, how many bytes are the "
    "fp32 master weights?", "adamw_bytes", {"n_params": 7e9}, "4 bytes per parameter, {gb:.3g} GB.",
    pick="master", unit=" bytes")

for st, d in [(0, "easy"), (1, "medium"), (2, "medium"), (3, "medium")]:
    num("distributed-zero", d, f"ZeRO stage {st}: model-state bytes per GPU for 7.5B parameters on 64 GPUs "
        "(mixed-precision AdamW, K=12)?", "zero_bytes_per_gpu", {"n_params": 7.5e9, "n_gpus": 64, "stage": st},
        "{gb:.4g} GB: stage 1 shards optimizer state, 2 also gradients, 3 also weights.", unit=" bytes")
for n, g, st, d in [(70e9, 8, 3, "medium"), (70e9, 64, 3, "medium"), (13e9, 8, 2, "hard"), (7e9, 8, 1, "medium")]:
    num("distributed-zero", d, f"{n / 1e9:g}B parameters, {g} GPUs, ZeRO-{st}: model-state bytes per GPU?",
        "zero_bytes_per_gpu", {"n_params": n, "n_gpus": g, "stage": st},
        "{gb:.4g} GB (before activations and fragmentation).", unit=" bytes")

for sq, b, dm, h, nl, fl, d in [(2048, 1, 4096, 32, 32, False, "hard"), (2048, 1, 4096, 32, 32, True, "medium"),
                                (1024, 8, 768, 12, 12, False, "medium"), (8192, 1, 8192, 64, 80, True, "hard")]:
    kind = "with FlashAttention" if fl else "with eager attention"
    num("activation-memory", d, f"Activation bytes stored for backward: seq {sq}, batch {b}, d_model {dm}, {h} heads, "
        f"{nl} layers, 16-bit, {kind}, no recompute?", "activation_bytes",
        {"seq_len": sq, "batch": b, "d_model": dm, "n_head": h, "n_layer": nl, "flash": fl},
        "Per layer s*b*h*(34 + 5*a*s/h) bytes (Korthikanti et al.); FlashAttention drops the 5*a*s^2*b "
        "term. Total {gb:.4g} GB.", unit=" bytes")

for n, d in [(70e9, "easy"), (8e9, "easy"), (1e9, "easy")]:
    num("scaling-laws", d, f"Chinchilla-optimal training tokens for a {n / 1e9:g}B-parameter model?",
        "chinchilla_tokens", {"n_params": n}, "About 20 tokens per parameter.", unit=" tokens")
for c, d in [(5.76e23, "medium"), (1e21, "medium"), (1e24, "hard")]:
    num("scaling-laws", d, f"Compute budget {c:.3g} FLOPs: compute-optimal parameter count (C = 6ND, D = 20N)?",
        "chinchilla_optimal", {"compute_flops": c}, "N = sqrt(C / 120).", pick=0, unit=" parameters")
num("scaling-laws", "medium", "Compute budget 5.76e23 FLOPs: compute-optimal token count (C = 6ND, D = 20N)?",
    "chinchilla_optimal", {"compute_flops": 5.76e23}, "D = 20 N with N = sqrt(C / 120).", pick=1, unit=" tokens")

num("lora", "easy", "LoRA rank 8 on q_proj and v_proj (4096 x 4096) in all 32 layers of Llama-2-7B: trainable params?",
    "lora_params", {"shapes": [[4096, 4096]] * 64, "r": 8},
    "r*(d_in + d_out) per adapted matrix: 65,536 x 64 matrices, about 0.06% of the model.")
num("lora", "medium", "LoRA rank 16 on all four attention projections of Llama-3-8B (q, o: 4096->4096; k, v: "
    "4096->1024) in 32 layers: trainable params?", "lora_params",
    {"shapes": [[4096, 4096], [4096, 1024], [4096, 1024], [4096, 4096]] * 32, "r": 16},
    "GQA makes k and v narrow: r*(4096+1024) each.")
num("lora", "medium", "LoRA rank 64 on one 4096 x 11008 MLP up-projection: trainable params?", "lora_params",
    {"shapes": [[4096, 11008]], "r": 64}, "r*(d_in + d_out) versus 45M for the full matrix.")
num("lora", "easy", "LoRA rank 8 on GPT-2 small's fused c_attn (768 -> 2304) in all 12 layers: trainable params?",
    "lora_params", {"shapes": [[768, 2304]] * 12, "r": 8}, "8*(768+2304) per layer.")

for n, bits, g, z, d in [(7e9, 16, None, False, "easy"), (7e9, 8, None, False, "easy"), (7e9, 4, None, False, "easy"),
                         (7e9, 4, 128, False, "medium"), (70e9, 4, 128, True, "medium"), (70e9, 8, None, False, "easy")]:
    extra = f", groups of {g} with fp16 scales" + (" and zero points" if z else "") if g else ""
    num("quantization", d, f"Weight bytes of a {n / 1e9:g}B model at {bits} bits{extra}?", "quantized_bytes",
        {"n_params": n, "bits": bits, "group_size": g, "zero_point": z},
        "n*bits/8 for the codes plus one scale (and zero) per group: {gb:.4g} GB.", unit=" bytes")

for a, g, d in [(0.8, 4, "medium"), (0.6, 4, "medium"), (0.9, 8, "hard"), (0.5, 2, "easy"), (1.0, 5, "easy"),
                (0.0, 4, "easy")]:
    num("speculative-decoding", d, f"Speculative decoding with acceptance rate {a} and {g} draft tokens: expected "
        "tokens per target forward?", "expected_accepted_tokens", {"alpha": a, "gamma": g},
        "(1 - a^(g+1)) / (1 - a): the accepted prefix plus the target's own token.")

for v, d in [(50257, "easy"), (32000, "easy"), (128256, "easy")]:
    num("softmax-loss", d, f"Loss (nats) a freshly initialised model with vocabulary {v} should start near?",
        "uniform_loss", {"vocab_size": v}, "ln V: a uniform prediction. Much higher means bad init.")
num("sampling", "easy", "Logits [2, 1, 0] at temperature 1: probability of the first token?", "softmax",
    {"logits": [2.0, 1.0, 0.0]}, "e^2 / (e^2 + e + 1).", pick=0)
num("sampling", "medium", "Logits [2, 1, 0] at temperature 0.5: probability of the first token?", "softmax",
    {"logits": [2.0, 1.0, 0.0], "temperature": 0.5}, "Dividing by T < 1 sharpens: e^4 / (e^4 + e^2 + 1).", pick=0)
num("sampling", "medium", "Logits [2, 1, 0] at temperature 2: probability of the first token?", "softmax",
    {"logits": [2.0, 1.0, 0.0], "temperature": 2.0}, "T > 1 flattens toward uniform: e / (e + e^0.5 + 1).", pick=0)
num("positional-encoding", "medium", "RoPE with d_head=128 and base 10000: wavelength (tokens) of the slowest "
    "rotating pair?", "rope_wavelength", {"d_head": 128},
    "2*pi*base^(2i/d) with i = 63: far longer than a 4K training context, so that pair barely turns.")
num("positional-encoding", "easy", "RoPE with d_head=128: wavelength of the fastest pair (i = 0)?",
    "rope_wavelength", {"d_head": 128, "pair": 0}, "2*pi: it turns about one radian per token.")
num("positional-encoding", "medium", "RoPE with d_head=128 and base 500000 (Llama-3): slowest wavelength?",
    "rope_wavelength", {"d_head": 128, "base": 500000.0}, "A bigger base stretches every wavelength for long context.")

# ----------------------------------------------------------------------------- concepts (our words)
CONCEPTS = [
    ("overview", "easy", "Walk through a decoder-only forward pass from text to next-token probabilities.",
     "Tokenize to ids, look up embeddings, then N blocks of (norm, causal self-attention, residual add, norm, "
     "MLP, residual add), a final norm, a linear head to vocabulary logits, softmax, then pick or sample."),
    ("overview", "medium", "Why is a decoder-only model trained on all positions of a sequence at once?",
     "The causal mask makes position t see only tokens <= t, so one forward pass yields T next-token "
     "predictions (teacher forcing); T training signals for the cost of one pass."),
    ("overview", "medium", "Where do the parameters of a large transformer live?",
     "Mostly in the MLPs (about two thirds), then attention projections (about one third, less with GQA); "
     "embeddings are a few percent for big models but a large share for small ones."),
    ("overview", "hard", "At short context the MLP dominates compute; when does attention take over?",
     "Attention's score/value matmuls cost ~4*T*d per token per layer vs ~24*d^2 for the weights (GPT "
     "shapes), so they match around T = 6d; at long context attention dominates."),
    ("tokenization", "easy", "Why subword (BPE) tokens instead of words or characters?",
     "Words give a huge vocabulary with rare, undertrained entries and unknown words; characters give very "
     "long sequences. BPE keeps frequent words whole and splits rare ones, with a fixed vocabulary and no OOV."),
    ("tokenization", "easy", "Why can a model struggle to count the letters in a word?",
     "It sees token ids, not characters: a word may be one or two tokens whose spelling is only implicit."),
    ("tokenization", "medium", "How does byte-level BPE guarantee there are no out-of-vocabulary inputs?",
     "The base vocabulary is the 256 byte values; any UTF-8 string is a byte sequence, merges only shorten it."),
    ("tokenization", "medium", "What is the trade-off in choosing vocabulary size?",
     "Bigger vocab: shorter sequences (cheaper attention, more text per context) but a bigger embedding/head "
     "and rarer, less-trained rows; smaller vocab: the reverse."),
    ("tokenization", "medium", "Describe one BPE training step.",
     "Count adjacent symbol pairs over the corpus (weighted by word frequency), merge the most frequent pair "
     "into a new symbol everywhere, record the merge; repeat until the target vocab size."),
    ("embeddings", "easy", "Is the embedding layer a matmul?",
     "Mathematically one-hot times a matrix, but implemented as a row lookup: no FLOPs, gradient only for "
     "the rows used."),
    ("embeddings", "medium", "What is weight tying and why use it?",
     "The output head reuses the input embedding matrix (transposed). Saves V*d parameters and often helps "
     "small models; large models frequently untie for capacity."),
    ("embeddings", "medium", "Why does cosine similarity of embeddings reflect meaning?",
     "Training pushes tokens that appear in similar contexts toward similar vectors because they must "
     "produce similar predictions (distributional hypothesis)."),
    ("positional-encoding", "easy", "Why does a transformer need positional information at all?",
     "Attention is permutation-equivariant: without positions, shuffling the input shuffles the output."),
    ("positional-encoding", "medium", "How does RoPE encode position?",
     "It rotates each 2-D pair of query and key dimensions by an angle proportional to position; the dot "
     "product then depends only on the relative offset."),
    ("positional-encoding", "medium", "What is ALiBi?",
     "No position embedding; a per-head linear penalty proportional to the query-key distance is added to "
     "the attention scores, which extrapolates to longer contexts reasonably well."),
    ("positional-encoding", "hard", "How do position-interpolation / NTK-style RoPE scaling extend context?",
     "Interpolation divides positions by the extension factor so angles stay in the trained range; NTK/YaRN "
     "raise the base so high-frequency pairs stay sharp while low-frequency pairs are stretched."),
    ("attention", "easy", "Why divide attention scores by sqrt(d_k)?",
     "With unit-variance q and k, the dot product has variance d_k; scaling keeps logits O(1) so softmax "
     "does not saturate and gradients do not vanish."),
    ("attention", "easy", "How is the causal mask applied?",
     "Set scores for keys after the query to -inf before the softmax, so their weights are exactly zero."),
    ("attention", "medium", "What is the time and memory cost of self-attention in sequence length?",
     "O(T^2 d) time and O(T^2) memory for the score matrix per head (unless FlashAttention avoids storing it)."),
    ("attention", "medium", "What goes wrong if the mask is applied after the softmax?",
     "Masked weights are zeroed but rows no longer sum to one, and future information already leaked into "
     "the normalisation."),
    ("attention", "hard", "What happens to a fully masked row (e.g. padding query) and how do you handle it?",
     "All -inf gives NaN from softmax; allow at least one key (e.g. itself) or use a large finite negative, "
     "and ignore those positions in the loss."),
    ("multi-head-gqa", "easy", "Why several heads instead of one big one?",
     "Each head has its own subspace and attention pattern (syntax, copying, position) at the same total "
     "cost, since d_head = d_model / n_head."),
    ("multi-head-gqa", "medium", "Explain MQA and GQA.",
     "MQA shares one K/V head across all query heads; GQA shares each K/V head across a group. They shrink "
     "the KV cache by n_head / n_kv_head with little quality loss."),
    ("multi-head-gqa", "medium", "How do you reshape for multi-head attention?",
     "(B, T, d) -> (B, T, h, d_head) -> transpose to (B, h, T, d_head); attend; transpose back and "
     "reshape (needs contiguous) to (B, T, d), then the output projection."),
    ("multi-head-gqa", "hard", "Why does GQA matter more for decoding than for training?",
     "Decoding is memory-bandwidth bound on reading the KV cache each step; fewer KV heads means fewer bytes "
     "per token and more sequences per GPU. Training FLOPs barely change."),
    ("ffn-activations", "easy", "What does the MLP in a block do?",
     "Position-wise: expands each token to d_ff (often 4d), applies a nonlinearity, projects back; it holds "
     "most parameters and acts like a key-value memory."),
    ("ffn-activations", "medium", "Why is SwiGLU's hidden size about 8d/3?",
     "SwiGLU has three matrices instead of two; shrinking d_ff to 2/3 of 4d keeps the parameter and FLOP "
     "count equal to a 4d GELU MLP."),
    ("ffn-activations", "medium", "GELU vs ReLU?",
     "GELU is smooth and lets small negatives through (x * Phi(x)); it avoids dead units and trains "
     "slightly better in transformers."),
    ("normalization", "easy", "LayerNorm vs RMSNorm?",
     "LayerNorm subtracts the mean and divides by the std, with weight and bias; RMSNorm only divides by the "
     "root mean square and has a weight; cheaper and works as well."),
    ("normalization", "medium", "Why pre-norm instead of post-norm?",
     "Pre-norm keeps an untouched residual path from input to output, so gradients flow cleanly and deep "
     "models train without careful warmup; post-norm normalises the sum and is less stable."),
    ("normalization", "medium", "Why LayerNorm and not BatchNorm in transformers?",
     "Statistics per token over features do not depend on batch size, padding or sequence length, and "
     "behave the same at train and inference time."),
    ("normalization", "hard", "Why compute the norm in fp32 under mixed precision?",
     "The mean of squares can overflow/underflow in fp16 and loses precision in bf16; upcast, normalise, "
     "cast back."),
    ("softmax-loss", "easy", "Why subtract the max before exp in softmax?",
     "softmax is shift-invariant; subtracting the max makes the largest exponent 0, so nothing overflows."),
    ("softmax-loss", "medium", "What is the gradient of cross-entropy with respect to the logits?",
     "softmax(z) - onehot(y): predicted probabilities minus the target."),
    ("softmax-loss", "medium", "How do perplexity and loss relate?",
     "Perplexity is exp of the mean per-token cross-entropy in nats: the effective number of equally likely "
     "choices."),
    ("softmax-loss", "medium", "How is loss masking done for padding and prompts?",
     "Set those labels to -100 (ignore_index); the mean is over the remaining tokens only."),
    ("softmax-loss", "hard", "What is log-sum-exp and where does it appear?",
     "log(sum exp x) = m + log(sum exp(x - m)); it is the normaliser of cross-entropy and the running "
     "statistic of online softmax."),
    ("optimizers", "easy", "What does Adam keep per parameter?",
     "Running means of the gradient (m) and of its square (v); the update is m_hat / (sqrt(v_hat) + eps)."),
    ("optimizers", "medium", "How does AdamW differ from Adam with L2?",
     "AdamW decays weights directly (w -= lr*wd*w), decoupled from the adaptive scaling; L2 in Adam gets "
     "divided by sqrt(v) and regularises unevenly."),
    ("optimizers", "medium", "Why warmup and cosine decay?",
     "Early Adam statistics are noisy and large steps can diverge, so ramp up; decaying late lets the model "
     "settle into a sharper minimum."),
    ("optimizers", "medium", "What does gradient clipping protect against?",
     "Rare huge gradients (loss spikes) that would take a destructive step; scale the global norm down to a cap."),
    ("optimizers", "hard", "With gradient accumulation over k micro-batches, what must you do to the loss?",
     "Divide each micro-batch loss by k (or normalise by the total token count) so the summed gradient equals "
     "the big-batch mean."),
    ("mixed-precision", "easy", "fp16 vs bf16?",
     "Both 16 bits; bf16 keeps fp32's 8-bit exponent (same range, less precision) so it rarely needs loss "
     "scaling; fp16 has more mantissa but overflows above 65504."),
    ("mixed-precision", "medium", "Why keep fp32 master weights?",
     "Small updates (lr * grad) vanish when added to a 16-bit weight; accumulating in fp32 keeps them."),
    ("mixed-precision", "medium", "What is dynamic loss scaling?",
     "Multiply the loss by a large factor so fp16 gradients do not underflow, unscale before the step, skip "
     "steps with inf/nan and lower the scale."),
    ("scaling-laws", "easy", "What did Chinchilla change versus Kaplan's scaling laws?",
     "For a fixed compute budget, parameters and tokens should grow together (~20 tokens per parameter); "
     "earlier large models were undertrained."),
    ("scaling-laws", "medium", "Why train far past Chinchilla-optimal (e.g. 15T tokens for 8B)?",
     "Chinchilla minimises training compute; serving cost depends on model size, so a smaller model trained "
     "longer is cheaper over its lifetime."),
    ("scaling-laws", "medium", "What is the shape of a scaling law?",
     "Loss falls as a power law in parameters, data and compute toward an irreducible floor: "
     "L = E + A/N^a + B/D^b."),
    ("scaling-laws", "hard", "How would you pick a model size for a fixed GPU budget?",
     "Convert GPU-hours to FLOPs at realistic MFU, fit or reuse a loss law from small runs, choose N and D "
     "on the compute-optimal frontier, then shift smaller if inference cost matters."),
    ("flops", "easy", "What is the 6ND rule?",
     "Training costs about 6 FLOPs per parameter per token: 2 forward, 4 backward (input and weight grads)."),
    ("flops", "medium", "What is MFU?",
     "Model FLOPs utilisation: achieved model FLOPs per second divided by the hardware peak; 40-60% is good "
     "for large training runs."),
    ("flops", "medium", "Why is the backward pass about twice the forward?",
     "Each matmul Y = XW needs two matmuls backward: dX = dY W^T and dW = X^T dY."),
    ("distributed-zero", "easy", "Data parallel vs tensor parallel vs pipeline parallel?",
     "DP replicates the model and splits the batch; TP splits each matmul across GPUs (needs fast links); PP "
     "splits layers into stages with micro-batches to fill the pipeline bubble."),
    ("distributed-zero", "medium", "What does each ZeRO stage shard?",
     "Stage 1 optimizer state, stage 2 also gradients, stage 3 (FSDP) also the weights, gathered layer by "
     "layer when needed."),
    ("distributed-zero", "medium", "What collective does DDP use and when?",
     "An all-reduce of gradients, bucketed and overlapped with the backward pass."),
    ("distributed-zero", "hard", "What is the communication cost of FSDP compared with DDP?",
     "DDP: one all-reduce (~2x the gradients). FSDP: all-gather weights forward and again backward plus a "
     "reduce-scatter of grads: about 1.5x DDP's volume, traded for memory."),
    ("activation-memory", "medium", "What is activation checkpointing?",
     "Keep only block inputs, recompute the block's activations during backward: about one extra forward "
     "(~33% more compute) for memory that no longer grows with per-layer intermediates."),
    ("activation-memory", "medium", "Why does activation memory scale with batch and sequence but not optimizer state?",
     "Activations are saved per token for backward; optimizer state is per parameter."),
    ("lora", "easy", "What is LoRA?",
     "Freeze W and learn a low-rank update B A (rank r); only A and B train, B starts at zero so the model "
     "starts unchanged; the update can be merged into W for inference."),
    ("lora", "medium", "What does the LoRA alpha do?",
     "Scales the update by alpha / r so changing r does not require retuning the learning rate."),
    ("lora", "medium", "What does QLoRA add?",
     "The frozen base is stored in 4-bit NF4 with double-quantised scales; adapters train in bf16 and "
     "gradients flow through the dequantised weights."),
    ("lora", "hard", "Why does LoRA save memory mostly in the optimizer, not the activations?",
     "Only the adapters need grads and Adam state; activations are still stored for the whole network to "
     "backprop into the adapters."),
    ("post-training", "easy", "What are the usual post-training stages?",
     "Supervised fine-tuning on demonstrations, then preference optimisation (RLHF with a reward model and "
     "PPO, or DPO-style direct methods), plus safety tuning."),
    ("post-training", "medium", "What loss does a reward model use?",
     "Bradley-Terry: -log sigmoid(r(chosen) - r(rejected))."),
    ("post-training", "medium", "What does DPO optimise?",
     "-log sigmoid(beta * [(log pi - log pi_ref)(chosen) - (log pi - log pi_ref)(rejected)]): the RLHF "
     "objective's optimum without a separate reward model or sampling."),
    ("post-training", "hard", "Why keep a KL penalty to the reference model in RLHF?",
     "It stops the policy from drifting into reward-hacking text the reward model scores highly but wrongly, "
     "and preserves language quality."),
    ("post-training", "hard", "What is GRPO?",
     "A PPO variant without a value model: sample a group of answers per prompt, use each answer's reward "
     "minus the group mean (divided by the std) as its advantage."),
    ("kv-cache", "easy", "What is the KV cache?",
     "Keys and values of past tokens stored per layer so each decode step only computes the new token's "
     "projections and attends to the cache, instead of recomputing the prefix."),
    ("kv-cache", "medium", "Why is decoding memory-bound?",
     "At batch 1 each step is a matrix-vector product: 2 FLOPs per 2-byte weight read, ~1 FLOP per byte, far below the "
     "GPU's FLOPs-to-bandwidth ratio; weights and cache reads dominate."),
    ("kv-cache", "medium", "What does PagedAttention solve?",
     "Fragmentation and over-reservation of contiguous per-request caches: it stores KV in fixed-size blocks "
     "with a block table, like virtual memory, and can share prefix blocks."),
    ("kv-cache", "hard", "Prefill vs decode: which is compute-bound?",
     "Prefill processes many tokens per weight read (compute-bound); decode one token per sequence per step "
     "(bandwidth-bound), which is why batching decode matters."),
    ("flash-attention", "medium", "Why is FlashAttention faster with the same FLOPs?",
     "It tiles Q, K, V into on-chip SRAM and never writes the T x T matrix to HBM, cutting memory traffic; "
     "exact, not an approximation."),
    ("flash-attention", "hard", "How does online softmax work?",
     "Keep a running max m and running sum l; for a new block with max m', rescale the old sum and output by "
     "exp(m - m'), add the block's exps; divide at the end."),
    ("flash-attention", "medium", "What does the backward pass of FlashAttention store?",
     "Only the output and the per-row log-sum-exp; it recomputes the attention blocks during backward."),
    ("sampling", "easy", "Greedy vs sampling?",
     "Greedy takes the argmax: deterministic but repetitive; sampling draws from the (reshaped) distribution "
     "for diversity."),
    ("sampling", "medium", "Top-k vs top-p?",
     "Top-k keeps the k most likely tokens; top-p keeps the smallest set whose cumulative probability >= p, "
     "so the set adapts to the distribution's confidence."),
    ("sampling", "medium", "What does a repetition penalty do?",
     "Lowers the logits of tokens already generated (divide positive / multiply negative by the penalty)."),
    ("sampling", "hard", "Why can beam search be a bad choice for open-ended chat?",
     "It maximises likelihood, which favours bland, repetitive text; good for translation, not for creative "
     "generation."),
    ("quantization", "easy", "Symmetric vs asymmetric quantization?",
     "Symmetric maps [-max|x|, max|x|] with zero at 0 (scale only); asymmetric maps [min, max] with a scale "
     "and a zero point, better for skewed ranges."),
    ("quantization", "medium", "Why quantize per group instead of per tensor?",
     "Outliers stretch a single scale and crush the resolution of everything else; small groups (e.g. 128) "
     "each get their own scale."),
    ("quantization", "medium", "Weight-only vs weight-and-activation quantization?",
     "Weight-only (GPTQ, AWQ) cuts memory and speeds memory-bound decoding; quantizing activations too "
     "(SmoothQuant, FP8) also speeds compute-bound matmuls but outliers in activations make it harder."),
    ("quantization", "hard", "What does GPTQ do differently from rounding to nearest?",
     "Quantizes columns one at a time and updates the remaining weights to compensate the error, using the "
     "inverse Hessian of the layer's inputs."),
    ("speculative-decoding", "easy", "What is speculative decoding?",
     "A cheap draft proposes several tokens; the target verifies them all in one forward pass and keeps the "
     "agreed prefix plus one token of its own."),
    ("speculative-decoding", "medium", "Why is the output distribution unchanged?",
     "Accept a draft token with probability min(1, p/q); on rejection sample from the normalised residual "
     "max(0, p - q). This is exact rejection sampling from p."),
    ("speculative-decoding", "hard", "When does speculative decoding not help?",
     "Low acceptance (mismatched draft), large batches where the target is already compute-bound, or a draft "
     "that is not much cheaper than the target."),
    ("serving", "easy", "What is continuous batching?",
     "Scheduling per decode step: finished sequences leave and new ones join immediately instead of waiting "
     "for the whole batch, keeping the GPU full."),
    ("serving", "medium", "TTFT vs TPOT?",
     "Time to first token is dominated by queueing and prefill; time per output token by decode speed. "
     "Different SLOs, tuned separately (e.g. chunked prefill)."),
    ("serving", "medium", "How do you estimate max decode throughput of one GPU?",
     "Each step reads all weights once (plus the KV cache); tokens/s per sequence ~ bandwidth / bytes read, "
     "times the batch until compute or KV memory runs out."),
    ("serving", "hard", "What is prefix caching?",
     "Reuse KV blocks of a shared prompt prefix (system prompt, few-shot) across requests so prefill skips them."),
    ("moe", "medium", "What is a mixture-of-experts layer?",
     "The MLP is replaced by many expert MLPs and a router that sends each token to the top-k experts: more "
     "parameters at roughly constant FLOPs per token."),
    ("moe", "medium", "Why do MoE models need a load-balancing loss?",
     "The router collapses onto a few experts; an auxiliary loss (or bias adjustment) spreads tokens so "
     "experts train and capacity is not exceeded."),
    ("moe", "hard", "Active vs total parameters in an MoE, and what does each cost?",
     "Active parameters set FLOPs per token; total parameters set memory. Serving needs all experts resident "
     "(or expert parallelism with all-to-all communication)."),
    ("rag-agents", "easy", "What problem does RAG solve?",
     "Grounding answers in fresh or private documents: retrieve relevant chunks and put them in the prompt, "
     "instead of relying on parametric memory."),
    ("rag-agents", "medium", "Bi-encoder retrieval vs cross-encoder re-ranking?",
     "Bi-encoders embed query and documents separately (fast ANN search); cross-encoders read the pair "
     "together (accurate, slow) so they re-rank a short list."),
    ("rag-agents", "medium", "Why hybrid BM25 + dense retrieval?",
     "BM25 nails exact terms, names and codes; dense catches paraphrases; fusing (e.g. reciprocal rank) "
     "beats either."),
    ("rag-agents", "medium", "What is the ReAct loop?",
     "The model alternates reasoning, a tool call, and the tool's observation until it can answer; the "
     "harness parses calls and enforces step limits."),
    ("rag-agents", "hard", "How do you evaluate a RAG system?",
     "Separately: retrieval (recall@k, MRR against labelled passages) and generation (faithfulness to the "
     "context, answer correctness), plus end-to-end human or judge review."),
    ("evaluation-safety", "easy", "Why is perplexity not enough to evaluate a chat model?",
     "It measures fit to a text distribution, not helpfulness, correctness or instruction following; tokenizer "
     "differences also make it incomparable across models."),
    ("evaluation-safety", "medium", "What biases does an LLM judge have?",
     "Position bias, verbosity bias, self-preference; mitigate with swapped orders, rubrics, and calibration "
     "against human labels."),
    ("evaluation-safety", "medium", "What is benchmark contamination and how do you check it?",
     "Test items in the training data inflate scores; check n-gram overlap with the corpus and compare with "
     "fresh held-out items."),
    ("evaluation-safety", "hard", "How would you red-team a model before launch?",
     "Define harm categories, build adversarial prompts (manual and automated, jailbreak templates), measure "
     "attack success and over-refusal, fix, and re-test as a regression suite."),
]
for topic, d, q, a in CONCEPTS:
    add(topic, d, q, a)

if __name__ == "__main__":
    (HERE / "questions.json").write_text(json.dumps({"version": 1, "questions": questions}, indent=1) + "\n")
    print(len(questions), "questions written")

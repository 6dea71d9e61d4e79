"""Transformer-maths quiz: the back-of-the-envelope numbers an LLM interviewer asks for, as code.

The learner writes the calculators (parameter counts, FLOPs per token, KV-cache bytes, AdamW and
ZeRO memory, activation memory, Chinchilla, LoRA, quantization, speculative decoding). The question
bank (``questions.json``) states numeric answers; every one of them carries the call that produces
it, and the self-test / grader check that the stated answer equals the computation.

Usage::

    python solution.py                               # self-test: validate the bank, counts per topic
    python solution.py quiz --topic attention --n 10 # drill (interactive on a TTY)
    python solution.py quiz --topic kv-cache --answers   # print questions with answers
    python solution.py mock --seed 3                 # a mock interview: coding + concept + design

Conventions: bytes are bytes (GB = 1e9 bytes, GiB = 2**30); a FLOP is one multiply or one add, so
a (m x k) @ (k x n) matmul costs 2*m*k*n FLOPs (what ``torch.utils.flop_counter`` counts).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BANK_PATH = HERE / "questions.json"


# ----------------------------------------------------------------------------- model configs
@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A decoder-only transformer's shape: everything the calculators need.

    Attributes:
        vocab_size, d_model, n_layer, n_head: the usual.
        n_kv_head: key/value heads (GQA); None means n_head (plain multi-head attention).
        d_ff: hidden width of the MLP; None means 4 * d_model.
        mlp: "gelu" (two matrices, GPT-2) or "swiglu" (three matrices: gate, up, down; Llama).
        norm: "layernorm" (weight + bias) or "rmsnorm" (weight only).
        bias: whether the attention and MLP linear layers have biases.
        tied: whether the output head shares the token-embedding matrix.
        n_positions: rows of a learned absolute position table (0 for RoPE models).

    Raises:
        ValueError: non-positive sizes, d_model not divisible by n_head, n_head not a multiple of
            n_kv_head, an unknown mlp or norm.
    """

    vocab_size: int
    d_model: int
    n_layer: int
    n_head: int
    n_kv_head: int | None = None
    d_ff: int | None = None
    mlp: str = "gelu"
    norm: str = "layernorm"
    bias: bool = True
    tied: bool = True
    n_positions: int = 0

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layer", "n_head"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
        if self.n_head % self.kv_heads:
            raise ValueError(f"n_head={self.n_head} must be a multiple of n_kv_head={self.kv_heads}")
        if self.mlp not in ("gelu", "swiglu"):
            raise ValueError(f"mlp must be 'gelu' or 'swiglu', got {self.mlp!r}")
        if self.norm not in ("layernorm", "rmsnorm"):
            raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {self.norm!r}")

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def ff(self) -> int:
        return 4 * self.d_model if self.d_ff is None else self.d_ff

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_head


def gpt2_style(**kw) -> ModelConfig:
    return ModelConfig(**{"mlp": "gelu", "norm": "layernorm", "bias": True, "tied": True, **kw})


def llama_style(**kw) -> ModelConfig:
    return ModelConfig(**{"mlp": "swiglu", "norm": "rmsnorm", "bias": False, "tied": False, **kw})


# Published shapes (config.json of the released checkpoints / the papers' tables).
MODELS: dict[str, ModelConfig] = {
    "gpt2": gpt2_style(vocab_size=50257, d_model=768, n_layer=12, n_head=12, n_positions=1024),
    "gpt2-medium": gpt2_style(vocab_size=50257, d_model=1024, n_layer=24, n_head=16, n_positions=1024),
    "gpt2-xl": gpt2_style(vocab_size=50257, d_model=1600, n_layer=48, n_head=25, n_positions=1024),
    "gpt3-175b": gpt2_style(vocab_size=50257, d_model=12288, n_layer=96, n_head=96, n_positions=2048),
    "llama2-7b": llama_style(vocab_size=32000, d_model=4096, n_layer=32, n_head=32, d_ff=11008),
    "llama2-13b": llama_style(vocab_size=32000, d_model=5120, n_layer=40, n_head=40, d_ff=13824),
    "llama2-70b": llama_style(vocab_size=32000, d_model=8192, n_layer=80, n_head=64, n_kv_head=8, d_ff=28672),
    "llama3-8b": llama_style(vocab_size=128256, d_model=4096, n_layer=32, n_head=32, n_kv_head=8, d_ff=14336),
    "mistral-7b": llama_style(vocab_size=32000, d_model=4096, n_layer=32, n_head=32, n_kv_head=8, d_ff=14336),
    "curriculum-main": llama_style(vocab_size=4096, d_model=128, n_layer=4, n_head=4, n_kv_head=2, d_ff=384),
}


def _cfg(cfg: ModelConfig | str) -> ModelConfig:
    if isinstance(cfg, str):
        if cfg not in MODELS:
            raise ValueError(f"unknown model {cfg!r}; known: {sorted(MODELS)}")
        return MODELS[cfg]
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"expected a ModelConfig or a model name, got {type(cfg).__name__}")
    return cfg


def _positive(**kw) -> None:
    for name, v in kw.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a positive finite number, got {v!r}")


# ----------------------------------------------------------------------------- the calculators
def param_count(cfg: ModelConfig | str) -> int:
    """Number of distinct trainable parameters (a tied head counts once), as ``model.parameters()``.

    Per layer: attention q and o (d x d each), k and v (d x n_kv_head*d_head each), their biases if
    ``cfg.bias``; the MLP (2 matrices d x d_ff for GELU, 3 for SwiGLU) and its biases; two norms
    (LayerNorm: weight + bias = 2d; RMSNorm: d). Plus the token embedding (V x d), the learned
    position table (n_positions x d), the final norm and, when not tied, the head (V x d, no bias).

    Example: GPT-2 small -> 124,439,808; Llama-2-7B -> 6,738,415,616.
    """
    c = _cfg(cfg)
    # BEGIN SOLUTION per layer: q,o d*d; k,v d*(n_kv*d_head); MLP 2 or 3 matrices d*d_ff; biases if cfg.bias (q,k,v,o outputs; MLP hidden widths + d); 2 norms (2d LayerNorm, d RMSNorm); then embeddings, positions, final norm, untied head (medium, ~15 min)
    d, kv = c.d_model, c.kv_heads * c.d_head
    attn = 2 * d * d + 2 * d * kv + (2 * d + 2 * kv if c.bias else 0)
    if c.mlp == "gelu":
        mlp = 2 * d * c.ff + ((c.ff + d) if c.bias else 0)
    else:
        mlp = 3 * d * c.ff + ((2 * c.ff + d) if c.bias else 0)
    norm = 2 * d if c.norm == "layernorm" else d
    per_layer = attn + mlp + 2 * norm
    embed = c.vocab_size * d + c.n_positions * d
    head = 0 if c.tied else c.vocab_size * d
    return c.n_layer * per_layer + embed + norm + head
    # END SOLUTION


def flops_per_token(cfg: ModelConfig | str, context: int, training: bool = False) -> int:
    """Matmul FLOPs per token of a forward pass over ``context`` tokens (x3 with ``training``).

    Counted: every weight matmul, 2 FLOPs per weight (including the output head, V*d, which is a
    matmul even when tied; embedding and position lookups are free), plus attention: per layer
    and per token, q @ k^T and probs @ v each cost 2 * context * (n_head * d_head) FLOPs (the full
    square, no causal saving: what an eager implementation computes). Norms, softmax, activations
    and biases are ignored (a fraction of a percent). Training = forward + backward = 3 x forward
    (the backward computes gradients for both the inputs and the weights of every matmul).
    This is the Kaplan et al. (2020) ``C = 2N + 2 n_layer n_ctx d_attn`` rule, counting both
    attention matmuls.

    Raises:
        ValueError: context < 1.
    """
    c = _cfg(cfg)
    _positive(context=context)
    # BEGIN SOLUTION weight-matmul params = per-layer linear weights (q,k,v,o + MLP, no biases/norms) * n_layer + V*d head; forward = 2*that + 4*n_layer*context*d_model; training multiplies by 3 (medium, ~10 min)
    d, kv = c.d_model, c.kv_heads * c.d_head
    n_mats = 2 if c.mlp == "gelu" else 3
    weights = c.n_layer * (2 * d * d + 2 * d * kv + n_mats * d * c.ff) + c.vocab_size * d
    forward = 2 * weights + 4 * c.n_layer * context * d
    return 3 * forward if training else forward
    # END SOLUTION


def kv_cache_bytes(cfg: ModelConfig | str, seq_len: int, batch: int = 1, bytes_per_elem: float = 2) -> int:
    """Bytes of the KV cache for ``batch`` sequences of ``seq_len`` tokens.

    Keys and values (2) x layers x kv heads x d_head x tokens x batch x bytes per element.
    Example: Llama-2-70B (GQA, 8 kv heads), 4096 tokens, fp16 -> 1,342,177,280 bytes.

    Raises:
        ValueError: a non-positive seq_len, batch or bytes_per_elem.
    """
    c = _cfg(cfg)
    _positive(seq_len=seq_len, batch=batch, bytes_per_elem=bytes_per_elem)
    # BEGIN SOLUTION 2 (K and V) * n_layer * n_kv_head * d_head * seq_len * batch * bytes_per_elem, as an int (easy, ~5 min)
    return int(2 * c.n_layer * c.kv_heads * c.d_head * seq_len * batch * bytes_per_elem)
    # END SOLUTION


def attention_scores_bytes(batch: int, n_head: int, seq_len: int, bytes_per_elem: float = 2) -> int:
    """Bytes of one layer's materialised attention matrix (batch, n_head, seq_len, seq_len).

    This is what FlashAttention never writes to HBM. Example: 1 head at 128K tokens in fp16 -> 32 GiB.

    Raises:
        ValueError: a non-positive argument.
    """
    _positive(batch=batch, n_head=n_head, seq_len=seq_len, bytes_per_elem=bytes_per_elem)
    # BEGIN SOLUTION batch * n_head * seq_len**2 * bytes_per_elem (easy, ~2 min)
    return int(batch * n_head * seq_len * seq_len * bytes_per_elem)
    # END SOLUTION


def adamw_bytes(n_params: int, mixed_precision: bool = True) -> dict[str, int]:
    """Training-state bytes for AdamW (activations excluded), split by what holds them.

    Mixed precision (bf16/fp16 compute): 16-bit weights 2, 16-bit grads 2, fp32 master weights 4,
    fp32 first moment 4, fp32 second moment 4 -> 16 bytes/param. Pure fp32: weights 4, grads 4,
    moments 4 + 4 (no master copy) -> 16 bytes/param too; mixed precision saves activation memory
    and time, not optimizer memory.

    Returns:
        {"weights", "grads", "master", "adam_m", "adam_v", "total"} in bytes.
    Raises:
        ValueError: n_params < 1.
    """
    _positive(n_params=n_params)
    # BEGIN SOLUTION per-param bytes: mixed 2/2/4/4/4, fp32 4/4/0/4/4; multiply by n_params, add a "total" (easy, ~5 min)
    per = dict(weights=2, grads=2, master=4, adam_m=4, adam_v=4) if mixed_precision else \
        dict(weights=4, grads=4, master=0, adam_m=4, adam_v=4)
    out = {k: int(v * n_params) for k, v in per.items()}
    out["total"] = sum(out.values())
    return out
    # END SOLUTION


def zero_bytes_per_gpu(n_params: int, n_gpus: int, stage: int, k: int = 12) -> float:
    """Model-state bytes per GPU under ZeRO (Rajbhandari et al., 2020), mixed-precision AdamW.

    Psi params, N GPUs, K = 12 optimizer bytes/param (fp32 master + m + v). Stage 0 (plain DDP):
    (2 + 2 + K) Psi. Stage 1 shards the optimizer state: 4 Psi + K Psi / N. Stage 2 also the
    gradients: 2 Psi + (2 + K) Psi / N. Stage 3 (FSDP full-shard) also the weights: (4 + K) Psi / N.
    Example (the paper's Figure 1): 7.5B params, 64 GPUs -> 120 GB, 31.4 GB, 16.6 GB, 1.9 GB.

    Raises:
        ValueError: stage not in 0..3, non-positive n_params or n_gpus.
    """
    _positive(n_params=n_params, n_gpus=n_gpus)
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0, 1, 2 or 3, got {stage!r}")
    # BEGIN SOLUTION the four formulas from the docstring; return float bytes (medium, ~10 min)
    p, n = float(n_params), float(n_gpus)
    return [
        (2 + 2 + k) * p,
        (2 + 2) * p + k * p / n,
        2 * p + (2 + k) * p / n,
        (2 + 2 + k) * p / n,
    ][stage]
    # END SOLUTION


def activation_bytes(seq_len: int, batch: int, d_model: int, n_head: int, n_layer: int,
                     flash: bool = False) -> float:
    """Activation bytes kept for the backward pass (16-bit, no tensor parallelism, no recompute).

    Korthikanti et al. (2022), per layer: s*b*h*(34 + 5*a*s/h) bytes: 34 s b h for the linear
    layers, norms, GELU and dropout masks, plus 5 a s^2 b for the attention scores, softmax output
    and its dropout mask. With FlashAttention (or selective recomputation) the s^2 term is not
    stored: 34 s b h per layer. Multiply by n_layer.

    Raises:
        ValueError: a non-positive argument.
    """
    _positive(seq_len=seq_len, batch=batch, d_model=d_model, n_head=n_head, n_layer=n_layer)
    # BEGIN SOLUTION per layer s*b*h*34 (+ 5*a*s*s*b unless flash), times n_layer, as a float (medium, ~10 min)
    s, b, h, a = seq_len, batch, d_model, n_head
    per_layer = 34.0 * s * b * h + (0.0 if flash else 5.0 * a * s * s * b)
    return per_layer * n_layer
    # END SOLUTION


def training_flops(n_params: float, n_tokens: float) -> float:
    """The 6ND rule: forward 2 FLOPs/param/token, backward 4 (attention ignored)."""
    _positive(n_params=n_params, n_tokens=n_tokens)
    return 6.0 * n_params * n_tokens


def chinchilla_tokens(n_params: float, tokens_per_param: float = 20.0) -> float:
    """Compute-optimal training tokens for a model of ``n_params`` (Hoffmann et al., 2022: ~20/param)."""
    _positive(n_params=n_params, tokens_per_param=tokens_per_param)
    # BEGIN SOLUTION tokens_per_param * n_params (easy, ~1 min)
    return float(tokens_per_param * n_params)
    # END SOLUTION


def chinchilla_optimal(compute_flops: float, tokens_per_param: float = 20.0) -> tuple[float, float]:
    """Compute-optimal (params, tokens) for a FLOP budget, with C = 6 N D and D = r N.

    Solve C = 6 r N^2: N = sqrt(C / (6 r)), D = r N. Example: C = 5.76e23 (Chinchilla's budget)
    -> N ~ 69.3e9, D ~ 1.39e12.

    Raises:
        ValueError: a non-positive budget.
    """
    _positive(compute_flops=compute_flops, tokens_per_param=tokens_per_param)
    # BEGIN SOLUTION n = sqrt(C / (6 r)); return (n, r * n) (easy, ~5 min)
    n = math.sqrt(compute_flops / (6.0 * tokens_per_param))
    return n, tokens_per_param * n
    # END SOLUTION


def lora_params(shapes: list[tuple[int, int]], r: int) -> int:
    """Trainable parameters LoRA adds: for each adapted (d_in, d_out) linear, A (r x d_in) + B (d_out x r).

    Example: rank 8 on q_proj and v_proj of a Llama-2-7B (32 layers, 4096 x 4096) -> 4,194,304.

    Raises:
        ValueError: r < 1 or an empty shape list.
    """
    if not shapes:
        raise ValueError("shapes is empty: list the (d_in, d_out) of every adapted linear layer")
    _positive(r=r)
    # BEGIN SOLUTION sum of r * (d_in + d_out) over the shapes (easy, ~3 min)
    return int(sum(r * (d_in + d_out) for d_in, d_out in shapes))
    # END SOLUTION


def quantized_bytes(n_params: int, bits: int, group_size: int | None = None,
                    scale_bytes: int = 2, zero_point: bool = False) -> float:
    """Weight storage at ``bits`` per weight, plus one scale (and a zero point) per group.

    n * bits / 8 bytes for the codes; with group-wise quantization, ceil(n / group_size) groups
    each store a ``scale_bytes`` scale (and a same-size zero point when asymmetric).
    Example: 7e9 params, 4 bits, groups of 128, fp16 scales -> 3.5e9 + 109,375,000 bytes.

    Raises:
        ValueError: bits not in 1..32, non-positive n_params or group_size.
    """
    _positive(n_params=n_params)
    if not isinstance(bits, int) or not 1 <= bits <= 32:
        raise ValueError(f"bits must be an integer in 1..32, got {bits!r}")
    if group_size is not None:
        _positive(group_size=group_size)
    # BEGIN SOLUTION codes n*bits/8; if group_size: + ceil(n/group_size) * scale_bytes * (2 if zero_point else 1) (easy, ~5 min)
    total = n_params * bits / 8
    if group_size is not None:
        total += math.ceil(n_params / group_size) * scale_bytes * (2 if zero_point else 1)
    return float(total)
    # END SOLUTION


def expected_accepted_tokens(alpha: float, gamma: int) -> float:
    """Expected tokens produced per target-model call in speculative decoding (Leviathan et al., 2023).

    The draft proposes ``gamma`` tokens; each is accepted independently with probability ``alpha``
    until the first rejection; the target always adds one token of its own (the correction or the
    bonus). E = (1 - alpha^(gamma+1)) / (1 - alpha), and gamma + 1 when alpha == 1.

    Raises:
        ValueError: alpha outside [0, 1] or gamma < 0.
    """
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha is an acceptance probability in [0, 1], got {alpha!r}")
    if not isinstance(gamma, int) or gamma < 0:
        raise ValueError(f"gamma (draft tokens) must be a non-negative int, got {gamma!r}")
    # BEGIN SOLUTION geometric series 1 + alpha + ... + alpha^gamma; the closed form divides by zero at alpha == 1 (medium, ~10 min)
    if alpha == 1.0:
        return float(gamma + 1)
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)
    # END SOLUTION


# ----------------------------------------------------------------------------- given helpers
def uniform_loss(vocab_size: int) -> float:
    """Cross-entropy (nats) of a uniform prediction: ln V. A fresh model's loss should start here."""
    _positive(vocab_size=vocab_size)
    return math.log(vocab_size)


def softmax(logits: list[float], temperature: float = 1.0) -> list[float]:
    """Numerically stable softmax of logits / temperature (subtract the max first)."""
    _positive(temperature=temperature)
    z = [x / temperature for x in logits]
    m = max(z)
    e = [math.exp(x - m) for x in z]
    s = sum(e)
    return [x / s for x in e]


def rope_wavelength(d_head: int, base: float = 10000.0, pair: int | None = None) -> float:
    """Wavelength in tokens of RoPE pair i (default: the slowest, i = d_head/2 - 1): 2*pi*base^(2i/d_head)."""
    _positive(d_head=d_head, base=base)
    i = d_head // 2 - 1 if pair is None else pair
    return 2 * math.pi * base ** (2 * i / d_head)


CALCULATORS = {f.__name__: f for f in (
    param_count, flops_per_token, kv_cache_bytes, attention_scores_bytes, adamw_bytes,
    zero_bytes_per_gpu, activation_bytes, training_flops, chinchilla_tokens, chinchilla_optimal,
    lora_params, quantized_bytes, expected_accepted_tokens, uniform_loss, softmax, rope_wavelength)}


def compute(call: dict):
    """Evaluate a question's ``compute`` entry: {"fn": name, "kwargs": {...}, "pick": key or index}."""
    fn = CALCULATORS.get(call.get("fn"))
    if fn is None:
        raise ValueError(f"unknown calculator {call.get('fn')!r}; known: {sorted(CALCULATORS)}")
    kwargs = dict(call.get("kwargs", {}))
    if "shapes" in kwargs:
        kwargs["shapes"] = [tuple(s) for s in kwargs["shapes"]]
    value = fn(**kwargs)
    if "pick" in call:
        value = value[call["pick"]]
    return value


# ----------------------------------------------------------------------------- the bank
REQUIRED = ("id", "topic", "difficulty", "question", "answer", "lab")
DIFFICULTIES = ("easy", "medium", "hard")


def load_bank(path: Path = BANK_PATH) -> list[dict]:
    """Read and structurally validate the bank (fields, unique ids, difficulty, lab paths exist).

    Raises:
        ValueError: naming the first bad question and what is wrong with it.
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    qs = data["questions"] if isinstance(data, dict) else data
    seen = set()
    for q in qs:
        missing = [f for f in REQUIRED if not str(q.get(f, "")).strip()]
        if missing:
            raise ValueError(f"question {q.get('id', '?')}: missing {missing}")
        if q["id"] in seen:
            raise ValueError(f"duplicate question id {q['id']}")
        seen.add(q["id"])
        if q["difficulty"] not in DIFFICULTIES:
            raise ValueError(f"question {q['id']}: difficulty must be one of {DIFFICULTIES}")
        for link in q["lab"] if isinstance(q["lab"], list) else [q["lab"]]:
            if not (REPO / link).exists():
                raise ValueError(f"question {q['id']}: lab path {link!r} does not exist in the repo")
        if "compute" in q and "value" not in q:
            raise ValueError(f"question {q['id']}: a numeric question needs a stated 'value'")
    return qs


def check_numeric(q: dict, rel: float = 1e-9) -> str | None:
    """None when the stated value equals the computation, else a message saying how it differs."""
    got = compute(q["compute"])
    want = q["value"]
    if math.isclose(float(got), float(want), rel_tol=rel, abs_tol=1e-12):
        return None
    return f"{q['id']}: stated {want!r} but {q['compute']['fn']}(...) gives {got!r}"


def topics(qs: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for q in qs:
        out[q["topic"]] = out.get(q["topic"], 0) + 1
    return dict(sorted(out.items()))


# ----------------------------------------------------------------------------- quiz CLI
def _ask(prompt: str, interactive: bool) -> str:
    if not interactive:
        return ""
    try:
        return input(prompt)
    except EOFError:
        return ""


def run_quiz(topic: str | None, n: int, show_answers: bool, seed: int | None, difficulty: str | None,
             interactive: bool | None = None, out=sys.stdout) -> int:
    qs = load_bank()
    pool = [q for q in qs if (topic is None or q["topic"] == topic)
            and (difficulty is None or q["difficulty"] == difficulty)]
    if not pool:
        raise SystemExit(f"no questions for topic={topic!r} difficulty={difficulty!r}; topics: "
                         + ", ".join(topics(qs)))
    rng = random.Random(seed)
    picked = rng.sample(pool, min(n, len(pool)))
    interactive = sys.stdin.isatty() if interactive is None else interactive
    score = 0
    for i, q in enumerate(picked, 1):
        print(f"\n[{i}/{len(picked)}] ({q['topic']}, {q['difficulty']}) {q['question']}", file=out)
        reply = _ask("your answer (Enter to reveal)> ", interactive)
        if interactive or show_answers:
            print(f"  answer: {q['answer']}", file=out)
            print(f"  learn it in: {q['lab']}", file=out)
        if interactive and "value" in q and reply.strip():
            try:
                mine = float(reply.replace(",", "").replace("_", ""))
                ok = math.isclose(mine, float(q["value"]), rel_tol=0.05)
                print("  within 5%: yes" if ok else "  within 5%: no", file=out)
                score += ok
            except ValueError:
                pass
        elif interactive:
            score += _ask("  did you get it? [y/N]> ", interactive).strip().lower().startswith("y")
    if interactive:
        print(f"\nscore: {score}/{len(picked)}", file=out)
    return 0


# ----------------------------------------------------------------------------- mock interview
CODING_DRILLS = ("interview-prep/02-llm-coding-questions", "interview-prep/numpy-ml-basics")
RUBRIC = """\
Rubric (score each 1-4; a hire is mostly 3s with no 1s):
  Coding      - states the shapes/dtypes first, writes a correct version before optimising, tests an edge
                case (empty, mask all False, large logits), talks while typing, finishes in budget.
  Concept     - answers the question asked in the first sentence, gives the number or the mechanism,
                then one trade-off or failure mode; knows where the intuition breaks.
  Design      - clarifies requirements and SLOs, sizes it with numbers (tokens/s, GPU memory, cost),
                draws the data path, names the bottleneck, discusses failure modes and evaluation.
  Overall     - structured, honest about what they do not know, checks their own arithmetic."""


def coding_todos() -> list[tuple[str, str]]:
    """(drill, "function: hint") for every TODO fence of the coding drills (this drill if none exist)."""
    out: list[tuple[str, str]] = []
    for rels in (CODING_DRILLS, ("interview-prep/transformer-math-quiz",)):
        for rel in rels:
            sol = REPO / rel / "solution.py"
            if not sol.exists():
                continue
            func = "?"
            for line in sol.read_text(encoding="utf-8").splitlines():
                d = re.match(r"^\s*def (\w+)", line)
                if d:
                    func = d.group(1)
                m = re.match(r"^\s+# BEGIN SOLUTION\s*(.*)$", line)
                if m:
                    out.append((rel, f"{func}(): {m.group(1).strip()}"))
        if out:
            break
    return out


def design_prompts() -> list[tuple[str, str]]:
    """(file, title) of system-design/0N-*.md."""
    out = []
    for p in sorted((REPO / "system-design").glob("0[0-9]-*.md")):
        title = next((ln.lstrip("# ").strip() for ln in p.read_text(encoding="utf-8").splitlines()
                      if ln.startswith("# ")), p.stem)
        out.append((f"system-design/{p.name}", title))
    return out


def _budget_minutes(hint: str, default: int) -> int:
    m = re.search(r"~\s*(\d+)\s*min", hint)
    return int(m.group(1)) if m else default


def run_mock(seed: int | None, interactive: bool | None = None, out=sys.stdout) -> dict:
    rng = random.Random(seed)
    interactive = sys.stdin.isatty() if interactive is None else interactive
    todos, designs, qs = coding_todos(), design_prompts(), load_bank()
    concept = rng.choice([q for q in qs if "value" not in q] or qs)
    parts = []
    if todos:
        drill, hint = rng.choice(todos)
        parts.append(("coding", f"{drill}: {hint}", _budget_minutes(hint, 20), None))
    parts.append(("concept", concept["question"], 5, concept["answer"]))
    if designs:
        path, title = rng.choice(designs)
        parts.append(("system design", f"{title} ({path})", 35, None))
    for kind, prompt, minutes, answer in parts:
        print(f"\n== {kind} ({minutes} min) ==\n{prompt}", file=out)
        t0 = time.monotonic()
        _ask(f"[timer running: {minutes} min; Enter when done]> ", interactive)
        if interactive:
            used = (time.monotonic() - t0) / 60
            print(f"  took {used:.1f} min of {minutes}" + ("  (over budget)" if used > minutes else ""), file=out)
        if answer:
            print(f"  reference answer: {answer}", file=out)
    print("\n" + RUBRIC, file=out)
    return {"parts": [(k, p, m) for k, p, m, _ in parts]}


# ----------------------------------------------------------------------------- self-test
def self_test() -> int:
    qs = load_bank()
    counts = topics(qs)
    numeric = [q for q in qs if "compute" in q]
    bad = [msg for q in numeric if (msg := check_numeric(q))]
    print(f"question bank: {len(qs)} questions, {len(numeric)} numeric, {len(counts)} topics")
    diff = {d: sum(q["difficulty"] == d for q in qs) for d in DIFFICULTIES}
    print("difficulty: " + ", ".join(f"{k} {v}" for k, v in diff.items()))
    print(f"{'topic':<22}{'questions':>10}{'numeric':>9}")
    for t, nq in counts.items():
        print(f"{t:<22}{nq:>10}{sum(q['topic'] == t for q in numeric):>9}")
    print("\nreference numbers:")
    for name in ("gpt2", "llama2-7b", "llama3-8b", "llama2-70b"):
        print(f"  {name:<11} params {param_count(name):>15,}  fwd FLOPs/token @2048 "
              f"{flops_per_token(name, 2048):>16,}  KV bytes @4096 fp16 {kv_cache_bytes(name, 4096):>15,}")
    checks = {
        ">= 150 questions": len(qs) >= 150,
        "every topic has >= 3 questions": min(counts.values()) >= 3,
        "numeric answers equal the code": not bad,
        "GPT-2 small = 124,439,808 params": param_count("gpt2") == 124_439_808,
        "Llama-2-7B = 6,738,415,616 params": param_count("llama2-7b") == 6_738_415_616,
        "ZeRO-3 7.5B/64 GPUs = 1.875 GB": abs(zero_bytes_per_gpu(7_500_000_000, 64, 3) - 1.875e9) < 1,
        "speculative alpha=1 gives gamma+1": expected_accepted_tokens(1.0, 4) == 5.0,
    }
    for msg in bad[:10]:
        print("  MISMATCH", msg)
    print()
    for name, ok in checks.items():
        print(f"  [{'ok' if ok else 'FAIL'}] {name}")
    return 0 if all(checks.values()) else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    qp = sub.add_parser("quiz", help="drill questions (interactive on a TTY)")
    qp.add_argument("--topic")
    qp.add_argument("--difficulty", choices=DIFFICULTIES)
    qp.add_argument("--n", type=int, default=10)
    qp.add_argument("--answers", action="store_true", help="print the answers (non-interactive)")
    qp.add_argument("--seed", type=int)
    mp = sub.add_parser("mock", help="a mock interview: coding TODO + concept question + system design")
    mp.add_argument("--seed", type=int)
    sub.add_parser("topics", help="list topics with counts")
    args = ap.parse_args(argv)
    if args.cmd == "quiz":
        return run_quiz(args.topic, args.n, args.answers, args.seed, args.difficulty,
                        interactive=False if args.answers else None)
    if args.cmd == "mock":
        run_mock(args.seed)
        return 0
    if args.cmd == "topics":
        for t, nq in topics(load_bank()).items():
            print(f"{t:<22}{nq:>4}")
        return 0
    return self_test()


if __name__ == "__main__":
    sys.exit(main())

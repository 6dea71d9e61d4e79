"""Lab 4.4: MiniGPT, a decoder-only transformer that is GPT-2 or Llama depending on its config.

One model, a handful of switches:

=================  ==========================  ================================
switch             GPT-2 (Radford et al. 2019)  Llama (Touvron et al. 2023)
=================  ==========================  ================================
norm               LayerNorm (with bias)        RMSNorm (Zhang & Sennrich 2019)
mlp                GELU (tanh approx.), 4x      SwiGLU (Shazeer 2020), ~8/3 x
pos_emb            learned table                RoPE (Su et al. 2021)
n_kv_head          = n_head (MHA)               < n_head (GQA, Ainslie et al. 2023)
bias               True                         False
tie_weights        True                         False
=================  ==========================  ================================

Both are pre-norm: ``x = x + attn(norm(x)); x = x + mlp(norm(x))``, then a final norm and the
LM head. With weights copied in, MiniGPT reproduces Hugging Face ``GPT2LMHeadModel`` and
``LlamaForCausalLM`` logits to within 1e-6 (see ``load_hf_gpt2_weights`` / ``load_hf_llama_weights``).

The positional functions (sinusoidal, RoPE, ALiBi) come from lab 4.3, so there is one RoPE in
the curriculum. Later phases reuse this module: ``load_lab("4.4").MiniGPT``.

Run: ``python solution.py`` (small mode: about a minute on one CPU core) or ``--full``.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from labkit import load_lab

# sinusoidal_encoding, rope_cache, apply_rope, alibi_bias: the lab 4.3 reference solution.
positional = load_lab("phase-04-attention-transformers/lab-03-positional-encodings")

__all__ = [
    "CausalSelfAttention",
    "GPTConfig",
    "MLP",
    "MiniGPT",
    "RMSNorm",
    "TransformerBlock",
    "config_from_hf",
    "count_params",
    "load_char_shakespeare",
    "load_hf_gpt2_weights",
    "load_hf_llama_weights",
    "param_breakdown",
    "train",
]

NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")
POS_EMBS = ("learned", "rope", "sinusoidal", "alibi", "none")
ATTN_IMPLS = ("math", "sdpa")


# ============================================================================ config
@dataclass
class GPTConfig:
    """Every architectural choice of a MiniGPT.

    Attributes:
        vocab_size: number of token ids.
        block_size: context length the model is built for (rows of a learned position table;
            ``generate`` crops its context to it).
        n_layer, n_head, d_model: depth, query heads, residual width; d_head = d_model // n_head.
        n_kv_head: key/value heads (GQA). ``None`` means n_head (plain MHA); 1 is MQA.
        d_ff: hidden width of the MLP. ``None``: 4 * d_model for GELU, and for SwiGLU
            8/3 * d_model rounded up to a multiple of 64 (same parameter count as 4x GELU, roughly).
        dropout: on embeddings, attention weights and both residual branches.
        bias: biases in every Linear (and in LayerNorm). The LM head never has one.
        norm: "layernorm" or "rmsnorm".  norm_eps: the epsilon inside the norm.
        mlp: "gelu" (tanh approximation, as GPT-2's ``gelu_new``) or "swiglu".
        pos_emb: "learned" (GPT-2), "rope" (Llama), "sinusoidal" (Vaswani; the fixed table is
            scaled by init_std * sqrt(2) so its entries have the token embeddings' init RMS),
            "alibi" (Press) or "none" (no positional signal; causal masking still leaks order).
        rope_theta: RoPE base frequency.
        tie_weights: share the token embedding matrix with the LM head.
        init_std: std of the normal init (GPT-2: 0.02); residual output projections get
            init_std / sqrt(2 * n_layer).
        attn_impl: "math" (explicit softmax(QK^T/sqrt(d))V, the one you write) or "sdpa"
            (``F.scaled_dot_product_attention``: same numbers, faster, fused kernels on GPU).

    Raises:
        ValueError: from ``__post_init__`` on any inconsistent value (the message names it).
    """

    vocab_size: int = 50257
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    d_model: int = 768
    n_kv_head: int | None = None
    d_ff: int | None = None
    dropout: float = 0.0
    bias: bool = True
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    mlp: str = "gelu"
    pos_emb: str = "learned"
    rope_theta: float = 10000.0
    tie_weights: bool = True
    init_std: float = 0.02
    attn_impl: str = "math"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "d_model"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {value!r}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if isinstance(self.n_kv_head, bool) or not isinstance(self.n_kv_head, int) or self.n_kv_head <= 0:
            raise ValueError(f"GPTConfig.n_kv_head must be a positive int or None, got {self.n_kv_head!r}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head}) "
                             "so each key/value head serves the same number of query heads")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.mlp not in MLPS:
            raise ValueError(f"mlp must be one of {MLPS}, got {self.mlp!r}")
        if self.pos_emb not in POS_EMBS:
            raise ValueError(f"pos_emb must be one of {POS_EMBS}, got {self.pos_emb!r}")
        if self.attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {self.attn_impl!r}")
        if self.pos_emb == "rope" and self.d_head % 2:
            raise ValueError(f"RoPE needs an even d_head, got d_model/n_head = {self.d_head}")
        if self.pos_emb == "sinusoidal" and self.d_model % 2:
            raise ValueError(f"sinusoidal positions need an even d_model, got {self.d_model}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps}")
        if not self.rope_theta > 1:
            raise ValueError(f"rope_theta must be > 1, got {self.rope_theta}")
        if not self.init_std > 0:
            raise ValueError(f"init_std must be > 0, got {self.init_std}")
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model if self.mlp == "gelu" else 64 * math.ceil(8 * self.d_model / 3 / 64)
        if isinstance(self.d_ff, bool) or not isinstance(self.d_ff, int) or self.d_ff <= 0:
            raise ValueError(f"GPTConfig.d_ff must be a positive int or None, got {self.d_ff!r}")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_head

    @classmethod
    def gpt2_style(cls, **overrides: Any) -> GPTConfig:
        """GPT-2: LayerNorm, GELU 4x MLP, learned positions, biases, tied head (124M by default)."""
        base: dict[str, Any] = dict(norm="layernorm", norm_eps=1e-5, mlp="gelu", pos_emb="learned",
                                    bias=True, tie_weights=True, n_kv_head=None, d_ff=None)
        return cls(**{**base, **overrides})

    @classmethod
    def llama_style(cls, **overrides: Any) -> GPTConfig:
        """Llama: RMSNorm, SwiGLU, RoPE, no biases, untied head; GQA when n_kv_head < n_head."""
        base: dict[str, Any] = dict(norm="rmsnorm", norm_eps=1e-5, mlp="swiglu", pos_emb="rope",
                                    bias=False, tie_weights=False, rope_theta=10000.0)
        return cls(**{**base, **overrides})


# ============================================================================ parameter count
def param_breakdown(config: GPTConfig) -> dict[str, int]:
    """Parameter count of a MiniGPT built from ``config``, by component, from the formula alone.

    Returns:
        ``{"token_embedding", "position_embedding", "attention", "mlp", "norms", "lm_head"}`` ->
        number of parameters (ints; attention/mlp/norms summed over all layers; "lm_head" is 0
        when tied). ``sum(values)`` equals ``sum(p.numel() for p in MiniGPT(config).parameters())``.
    """
    # BEGIN SOLUTION per layer: qkv d*(n_head+2*n_kv_head)*d_head, out proj, MLP with 2 (GELU) or 3 (SwiGLU) matrices, biases if config.bias, norm weights (+LayerNorm bias); then embeddings, final norm, untied head (medium, ~20 min)
    c = config
    d, dh, v = c.d_model, c.d_head, c.vocab_size
    b = 1 if c.bias else 0
    qkv_out = (c.n_head + 2 * c.n_kv_head) * dh
    attn = d * qkv_out + b * qkv_out + c.n_head * dh * d + b * d
    n_in = 2 if c.mlp == "swiglu" else 1          # SwiGLU has a gate and an up projection
    mlp = n_in * (d * c.d_ff + b * c.d_ff) + c.d_ff * d + b * d
    norm = d * (2 if (c.norm == "layernorm" and c.bias) else 1)
    return {
        "token_embedding": v * d,
        "position_embedding": c.block_size * d if c.pos_emb == "learned" else 0,
        "attention": c.n_layer * attn,
        "mlp": c.n_layer * mlp,
        "norms": (2 * c.n_layer + 1) * norm,
        "lm_head": 0 if c.tie_weights else v * d,
    }
    # END SOLUTION


def count_params(config: GPTConfig) -> int:
    """Total trainable parameters of ``MiniGPT(config)`` (tied weights counted once), by formula.

    No model is built, so this works for GPT-2 124M or Llama-3 8B in microseconds.
    """
    return sum(param_breakdown(config).values())


# ============================================================================ modules
class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019): ``weight * x / sqrt(mean(x**2) + eps)``.

    No mean subtraction, no bias. Computed in float32 and cast back (as HF Llama does).
    Input (..., d_model), output the same shape and dtype.
    """

    def __init__(self, d_model: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # BEGIN SOLUTION upcast to float32, divide by sqrt(mean of squares over the last dim + eps), cast back, scale by weight (easy, ~5 min)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)
        # END SOLUTION


def _make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.d_model, eps=config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with optional GQA, RoPE and ALiBi.

    One fused projection ``qkv`` gives n_head query heads and n_kv_head key and value heads
    (rows ordered [q | k | v]); each key/value head is shared by n_head // n_kv_head
    consecutive query heads. ``proj`` maps the concatenated heads back to d_model.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.d_head = config.n_head, config.n_kv_head, config.d_head
        self.qkv = nn.Linear(config.d_model, (config.n_head + 2 * config.n_kv_head) * config.d_head,
                             bias=config.bias)
        self.proj = nn.Linear(config.n_head * config.d_head, config.d_model, bias=config.bias)
        self.dropout = config.dropout
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.attn_impl = config.attn_impl

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, d_model) -> (B, T, d_model).

        Args:
            rope: ``(cos, sin)``, each (T, d_head), to rotate q and k; ``None`` for no RoPE.
            attn_bias: (n_head, T, T) float added to the scores (ALiBi); ``None`` for none.
        """
        B, T, _ = x.shape
        # BEGIN SOLUTION split qkv into q (B,n_head,T,d_head) and k,v (B,n_kv_head,T,d_head); RoPE on q and k; repeat_interleave k,v to n_head; scores q@k^T/sqrt(d_head) + bias; mask the future (j > i) with -inf BEFORE softmax over keys; dropout; @v; merge heads; proj; dropout (hard, ~40 min)
        q, k, v = self.qkv(x).split(
            [self.n_head * self.d_head, self.n_kv_head * self.d_head, self.n_kv_head * self.d_head], dim=-1)
        q = q.view(B, T, self.n_head, self.d_head).transpose(1, 2)      # (B, nh, T, dh)
        k = k.view(B, T, self.n_kv_head, self.d_head).transpose(1, 2)   # (B, nkv, T, dh)
        v = v.view(B, T, self.n_kv_head, self.d_head).transpose(1, 2)
        if rope is not None:
            cos, sin = rope
            q, k = positional.apply_rope(q, cos, sin), positional.apply_rope(k, cos, sin)
        if self.n_kv_head != self.n_head:
            # query head h reads key/value head h // group (same grouping as HF repeat_kv)
            group = self.n_head // self.n_kv_head
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()  # True = may attend
        if self.attn_impl == "sdpa":
            if attn_bias is None:
                y = F.scaled_dot_product_attention(
                    q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
            else:
                mask = attn_bias.to(q.dtype).masked_fill(~causal, float("-inf"))
                y = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        else:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)    # (B, nh, T, T)
            if attn_bias is not None:
                att = att + attn_bias.to(att.dtype)
            att = att.masked_fill(~causal, float("-inf"))               # before softmax
            att = F.softmax(att, dim=-1)                                # over keys
            att = self.attn_dropout(att)
            y = att @ v                                                 # (B, nh, T, dh)
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * self.d_head)
        return self.resid_dropout(self.proj(y))
        # END SOLUTION


class MLP(nn.Module):
    """Position-wise feed-forward block, (B, T, d_model) -> (B, T, d_model).

    GELU: ``proj(gelu_tanh(fc(x)))``. SwiGLU (Shazeer 2020): ``proj(silu(gate(x)) * fc(x))``,
    where ``fc`` is the "up" projection and ``gate`` the extra gate matrix.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.kind = config.mlp
        self.fc = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.gate = nn.Linear(config.d_model, config.d_ff, bias=config.bias) if config.mlp == "swiglu" else None
        self.proj = nn.Linear(config.d_ff, config.d_model, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # BEGIN SOLUTION GELU: tanh-approximate gelu of fc(x); SwiGLU: silu(gate(x)) * fc(x); then proj and dropout (easy, ~10 min)
        if self.kind == "swiglu":
            h = F.silu(self.gate(x)) * self.fc(x)
        else:
            h = F.gelu(self.fc(x), approximate="tanh")
        return self.dropout(self.proj(h))
        # END SOLUTION


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``. (B, T, d_model) in and out."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln1 = _make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln2 = _make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        # BEGIN SOLUTION two residual branches, each reading a normalized copy of the stream (easy, ~5 min)
        x = x + self.attn(self.ln1(x), rope=rope, attn_bias=attn_bias)
        x = x + self.mlp(self.ln2(x))
        return x
        # END SOLUTION


class MiniGPT(nn.Module):
    """Decoder-only transformer language model.

    Modules: ``tok_emb`` (vocab_size, d_model); ``pos_emb`` (block_size, d_model) only for
    learned positions; ``blocks`` (n_layer TransformerBlocks); ``ln_f``; ``head`` (d_model ->
    vocab_size, no bias, the same Parameter as ``tok_emb.weight`` when tied).
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.block_size, config.d_model) if config.pos_emb == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layer))
        self.ln_f = _make_norm(config)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_weights:
            self.head.weight = self.tok_emb.weight  # one Parameter, two uses
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, init_std) for Linear/Embedding weights, zero biases, unit norm
        weights, and N(0, init_std / sqrt(2 * n_layer)) for the two residual output
        projections (``attn.proj``, ``mlp.proj``) so the residual stream's variance does not
        grow with depth. Small logits at init make the initial loss ~ln(vocab_size)."""
        # BEGIN SOLUTION loop over self.modules(): normal(0, std) for Linear and Embedding weights, zero biases, ones for norm weights; then rescale the *.proj weights to std / sqrt(2 * n_layer) (medium, ~15 min)
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, RMSNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(proj.weight, mean=0.0, std=std / math.sqrt(2 * self.config.n_layer))
        # END SOLUTION

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Next-token logits, and the mean cross-entropy when ``targets`` is given.

        Args:
            idx: (B, T) int64 token ids, T >= 1 (T <= block_size for learned positions).
            targets: optional (B, T) int64 next-token ids; -100 marks positions to ignore.

        Returns:
            ``(logits, loss)``: logits (B, T, vocab_size) float32; loss a float32 scalar
            (nats per token) or ``None``.

        Raises:
            TypeError: idx/targets not integer tensors.
            ValueError: idx not 2-D, empty, longer than block_size with learned positions,
                or targets of another shape.
        """
        if not isinstance(idx, torch.Tensor) or idx.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"idx must be an int64 tensor of token ids, got {getattr(idx, 'dtype', type(idx))}")
        if idx.dim() != 2 or idx.shape[1] == 0:
            raise ValueError(f"idx must have shape (B, T) with T >= 1, got {tuple(idx.shape)}")
        B, T = idx.shape
        cfg = self.config
        if cfg.pos_emb == "learned" and T > cfg.block_size:
            raise ValueError(f"sequence length {T} > block_size {cfg.block_size}: a learned position table "
                             "has no rows past block_size (crop the input, or use rope/alibi)")
        if targets is not None:
            if not isinstance(targets, torch.Tensor) or targets.dtype not in (torch.int64, torch.int32):
                raise TypeError("targets must be an integer tensor of token ids")
            if targets.shape != idx.shape:
                raise ValueError(f"targets shape {tuple(targets.shape)} != idx shape {tuple(idx.shape)}")
        # BEGIN SOLUTION token embeddings (+ learned or sinusoidal positions), dropout; build RoPE (cos, sin) or the ALiBi bias once; run the blocks; final norm; head; float32 logits; cross-entropy over (B*T, vocab) with ignore_index=-100 (medium, ~20 min)
        x = self.tok_emb(idx)                                             # (B, T, d_model)
        if cfg.pos_emb == "learned":
            x = x + self.pos_emb(torch.arange(T, device=idx.device))
        elif cfg.pos_emb == "sinusoidal":
            # the table's entries have RMS 1/sqrt(2); rescale it to the embeddings' init scale, or
            # it drowns the 0.02-sized token vectors (Vaswani et al. scale tokens up instead)
            pe = positional.sinusoidal_encoding(T, cfg.d_model) * (cfg.init_std * math.sqrt(2))
            x = x + pe.to(device=x.device, dtype=x.dtype)
        x = self.drop(x)
        rope = attn_bias = None
        if cfg.pos_emb == "rope":
            rope = positional.rope_cache(T, cfg.d_head, cfg.rope_theta, device=idx.device)
        elif cfg.pos_emb == "alibi":
            attn_bias = positional.alibi_bias(cfg.n_head, T, device=idx.device)
        for block in self.blocks:
            x = block(x, rope=rope, attn_bias=attn_bias)
        logits = self.head(self.ln_f(x)).float()                           # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(B * T, -1), targets.reshape(B * T).long(), ignore_index=-100)
        return logits, loss
        # END SOLUTION

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Autoregressive sampling (no KV cache: each step re-reads the last block_size tokens).

        Args:
            idx: (B, T) int64 prompt ids.
            max_new_tokens: tokens to append, >= 0.
            temperature: divides the logits; 0 means greedy (argmax).
            top_k: sample only among the k most likely tokens (None: all).
            generator: optional torch.Generator for reproducible sampling.

        Returns:
            (B, T + max_new_tokens) int64. Call ``model.eval()`` first to switch dropout off.

        Raises:
            ValueError: negative max_new_tokens or temperature, top_k < 1.
        """
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
        # BEGIN SOLUTION loop: crop to the last block_size tokens, logits of the last position, greedy if temperature == 0 else divide by temperature, keep the top_k (others -inf), softmax, multinomial, append (medium, ~15 min)
        for _ in range(max_new_tokens):
            ctx = idx[:, -self.config.block_size:]
            logits, _ = self(ctx)
            logits = logits[:, -1, :]                                      # (B, vocab)
            if temperature == 0:
                next_id = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits, dim=-1)
                next_id = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat([idx, next_id], dim=1)
        return idx
        # END SOLUTION


# ============================================================================ Hugging Face interop
def config_from_hf(hf_config: Any, **overrides: Any) -> GPTConfig:
    """The GPTConfig that matches a HF ``GPT2Config`` or ``LlamaConfig`` (dropout 0).

    Raises:
        ValueError: another model_type, or a feature MiniGPT does not have (RoPE scaling,
            a head_dim that is not hidden_size / heads, non-tanh GELU, ...).
    """
    kind = getattr(hf_config, "model_type", None)
    if kind == "gpt2":
        act = hf_config.activation_function
        if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
            raise ValueError(f"MiniGPT's GELU is the tanh approximation; HF config uses {act!r}")
        if not hf_config.scale_attn_weights or hf_config.scale_attn_by_inverse_layer_idx:
            raise ValueError("only the standard 1/sqrt(d_head) attention scaling is supported")
        base = GPTConfig.gpt2_style(
            vocab_size=hf_config.vocab_size, block_size=hf_config.n_positions, n_layer=hf_config.n_layer,
            n_head=hf_config.n_head, d_model=hf_config.n_embd, d_ff=hf_config.n_inner or 4 * hf_config.n_embd,
            norm_eps=hf_config.layer_norm_epsilon, dropout=0.0,
            tie_weights=getattr(hf_config, "tie_word_embeddings", True))
    elif kind == "llama":
        rope = dict(getattr(hf_config, "rope_parameters", None) or {})
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"RoPE scaling {rope.get('rope_type')!r} is not implemented in MiniGPT")
        if hf_config.head_dim != hf_config.hidden_size // hf_config.num_attention_heads:
            raise ValueError("MiniGPT needs head_dim == hidden_size // num_attention_heads")
        if hf_config.hidden_act != "silu" or hf_config.attention_bias or hf_config.mlp_bias:
            raise ValueError("MiniGPT's Llama style is SwiGLU (silu) without biases")
        base = GPTConfig.llama_style(
            vocab_size=hf_config.vocab_size, block_size=hf_config.max_position_embeddings,
            n_layer=hf_config.num_hidden_layers, n_head=hf_config.num_attention_heads,
            n_kv_head=hf_config.num_key_value_heads, d_model=hf_config.hidden_size,
            d_ff=hf_config.intermediate_size, norm_eps=hf_config.rms_norm_eps,
            rope_theta=float(rope.get("rope_theta", 10000.0)), dropout=0.0,
            tie_weights=bool(hf_config.tie_word_embeddings))
    else:
        raise ValueError(f"config_from_hf supports model_type 'gpt2' and 'llama', got {kind!r}")
    if overrides:
        base = GPTConfig(**{**base.__dict__, **overrides})
    return base


def _copy(dst: torch.Tensor, src: torch.Tensor, name: str) -> None:
    if dst.shape != src.shape:
        raise ValueError(f"{name}: MiniGPT expects shape {tuple(dst.shape)}, HF has {tuple(src.shape)}")
    dst.copy_(src)


@torch.no_grad()
def load_hf_gpt2_weights(model: MiniGPT, hf_model: nn.Module) -> MiniGPT:
    """Copy a HF ``GPT2LMHeadModel``'s weights into a GPT-2-style MiniGPT (in place).

    HF GPT-2 stores its projections as ``Conv1D`` with weight (in_features, out_features),
    the transpose of ``nn.Linear``; ``c_attn`` is the fused [q | k | v] projection, which is
    exactly our ``qkv`` layout. Build the model with ``MiniGPT(config_from_hf(hf.config))``.

    Returns:
        ``model`` (for chaining).

    Raises:
        ValueError: the MiniGPT is not GPT-2 style or any shape differs.
    """
    cfg = model.config
    if (cfg.norm, cfg.mlp, cfg.pos_emb, cfg.bias, cfg.n_kv_head) != ("layernorm", "gelu", "learned", True, cfg.n_head):
        raise ValueError("load_hf_gpt2_weights needs a GPT-2-style MiniGPT (GPTConfig.gpt2_style / config_from_hf)")
    # BEGIN SOLUTION wte/wpe -> tok_emb/pos_emb; per layer ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj (Conv1D weights transposed!), then ln_f and the (tied or not) head (medium, ~20 min)
    sd = hf_model.state_dict()
    _copy(model.tok_emb.weight, sd["transformer.wte.weight"], "wte")
    _copy(model.pos_emb.weight, sd["transformer.wpe.weight"], "wpe")
    for i, block in enumerate(model.blocks):
        p = f"transformer.h.{i}."
        pairs = [(block.ln1, "ln_1", False), (block.attn.qkv, "attn.c_attn", True),
                 (block.attn.proj, "attn.c_proj", True), (block.ln2, "ln_2", False),
                 (block.mlp.fc, "mlp.c_fc", True), (block.mlp.proj, "mlp.c_proj", True)]
        for ours, theirs, conv1d in pairs:
            w = sd[p + theirs + ".weight"]
            _copy(ours.weight, w.t() if conv1d else w, p + theirs)
            _copy(ours.bias, sd[p + theirs + ".bias"], p + theirs + ".bias")
    _copy(model.ln_f.weight, sd["transformer.ln_f.weight"], "ln_f")
    _copy(model.ln_f.bias, sd["transformer.ln_f.bias"], "ln_f.bias")
    if not cfg.tie_weights:
        _copy(model.head.weight, sd["lm_head.weight"], "lm_head")
    # END SOLUTION
    return model


@torch.no_grad()
def load_hf_llama_weights(model: MiniGPT, hf_model: nn.Module) -> MiniGPT:
    """Copy a HF ``LlamaForCausalLM``'s weights into a Llama-style MiniGPT (in place).

    q_proj, k_proj, v_proj are concatenated (rows) into our fused ``qkv``; o_proj -> attn.proj;
    gate_proj -> mlp.gate, up_proj -> mlp.fc, down_proj -> mlp.proj; input_layernorm -> ln1,
    post_attention_layernorm -> ln2; model.norm -> ln_f. Our RoPE uses HF's rotate_half layout,
    so no permutation of the q/k rows is needed.

    Returns:
        ``model``.

    Raises:
        ValueError: the MiniGPT is not Llama style or any shape differs.
    """
    cfg = model.config
    if (cfg.norm, cfg.mlp, cfg.pos_emb, cfg.bias) != ("rmsnorm", "swiglu", "rope", False):
        raise ValueError("load_hf_llama_weights needs a Llama-style MiniGPT (GPTConfig.llama_style / config_from_hf)")
    # BEGIN SOLUTION embed_tokens; per layer cat(q_proj, k_proj, v_proj) rows -> qkv, o_proj, gate/up/down, the two RMSNorms; model.norm; lm_head unless tied (medium, ~15 min)
    sd = hf_model.state_dict()
    _copy(model.tok_emb.weight, sd["model.embed_tokens.weight"], "embed_tokens")
    for i, block in enumerate(model.blocks):
        p = f"model.layers.{i}."
        qkv = torch.cat([sd[p + f"self_attn.{n}_proj.weight"] for n in ("q", "k", "v")], dim=0)
        _copy(block.attn.qkv.weight, qkv, p + "self_attn.{q,k,v}_proj")
        _copy(block.attn.proj.weight, sd[p + "self_attn.o_proj.weight"], p + "o_proj")
        _copy(block.mlp.gate.weight, sd[p + "mlp.gate_proj.weight"], p + "gate_proj")
        _copy(block.mlp.fc.weight, sd[p + "mlp.up_proj.weight"], p + "up_proj")
        _copy(block.mlp.proj.weight, sd[p + "mlp.down_proj.weight"], p + "down_proj")
        _copy(block.ln1.weight, sd[p + "input_layernorm.weight"], p + "input_layernorm")
        _copy(block.ln2.weight, sd[p + "post_attention_layernorm.weight"], p + "post_attention_layernorm")
    _copy(model.ln_f.weight, sd["model.norm.weight"], "model.norm")
    if not cfg.tie_weights:
        _copy(model.head.weight, sd["lm_head.weight"], "lm_head")
    # END SOLUTION
    return model


# ============================================================================ data and training
def load_char_shakespeare(val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Tiny Shakespeare as character ids: ``(train_ids, val_ids, itos)`` (int64, 1-D; the
    last ``val_fraction`` of the text is validation)."""
    from labkit import read_text

    text = read_text("tinyshakespeare", "input.txt")
    itos = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(itos)}
    data = torch.tensor([stoi[ch] for ch in text], dtype=torch.int64)
    n_val = int(len(data) * val_fraction)
    return data[:-n_val], data[-n_val:], itos


def _batch(data: torch.Tensor, batch_size: int, block_size: int, g: torch.Generator
           ) -> tuple[torch.Tensor, torch.Tensor]:
    ix = torch.randint(len(data) - block_size - 1, (batch_size,), generator=g)
    x = torch.stack([data[i: i + block_size] for i in ix.tolist()])
    y = torch.stack([data[i + 1: i + block_size + 1] for i in ix.tolist()])
    return x, y


def train(model: MiniGPT, train_data: torch.Tensor, val_data: torch.Tensor, *, steps: int,
          batch_size: int = 32, lr: float = 3e-3, weight_decay: float = 0.0, eval_every: int = 50,
          eval_batches: int = 8, seed: int = 0, progress: bool = True) -> dict[str, list[tuple[int, float]]]:
    """A plain AdamW loop on random block_size windows (cosine decay to 10% of lr, no warmup).

    Returns:
        ``{"train": [(step, loss)...], "val": [(step, mean loss)...]}``; val is measured at
        step 0, every ``eval_every`` steps and at the end, on fixed batches.
    """
    from tqdm.auto import tqdm

    T = model.config.block_size
    g = torch.Generator().manual_seed(seed)
    val_g = torch.Generator().manual_seed(seed + 1)
    val_batches = [_batch(val_data, batch_size, T, val_g) for _ in range(eval_batches)]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    hist: dict[str, list[tuple[int, float]]] = {"train": [], "val": []}

    def evaluate(step: int) -> None:
        model.eval()
        with torch.no_grad():
            hist["val"].append((step, sum(model(x, y)[1].item() for x, y in val_batches) / len(val_batches)))
        model.train()

    model.train()
    evaluate(0)
    for step in tqdm(range(1, steps + 1), disable=not progress, desc="train", leave=False):
        x, y = _batch(train_data, batch_size, T, g)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        hist["train"].append((step, loss.item()))
        if step % eval_every == 0 or step == steps:
            evaluate(step)
    model.eval()
    return hist


# ============================================================================ self-test
def _max_diff(model: MiniGPT, hf_model: nn.Module, idx: torch.Tensor) -> float:
    model.eval()
    hf_model.eval()
    with torch.no_grad():
        ours, _ = model(idx)
        theirs = hf_model(idx).logits.float()
    return (ours - theirs).abs().max().item()


def hf_equality_report(seed: int = 0) -> dict[str, float]:
    """Max |logit difference| between MiniGPT and HF on random tiny models and the saved checkpoint."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    from labkit import dataset_path

    hf_logging.set_verbosity_error()
    torch.manual_seed(seed)
    out: dict[str, float] = {}
    idx = torch.randint(0, 101, (2, 24))
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=101, n_positions=32, n_embd=48, n_layer=2, n_head=4,
                                    bos_token_id=0, eos_token_id=0))
    ours = load_hf_gpt2_weights(MiniGPT(config_from_hf(hf.config)), hf)
    out["GPT2LMHeadModel (random, 2 layers)"] = _max_diff(ours, hf, idx)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=101, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=32,
                                      rms_norm_eps=1e-5, bos_token_id=0, eos_token_id=0,
                                      rope_parameters={"rope_type": "default", "rope_theta": 500000.0}))
    ours = load_hf_llama_weights(MiniGPT(config_from_hf(hf.config)), hf)
    out["LlamaForCausalLM (random, GQA 8q/2kv)"] = _max_diff(ours, hf, idx)
    folder = dataset_path("tiny-random-gpt2", "config.json").parent
    dataset_path("tiny-random-gpt2", "model.safetensors")  # verify the weights' sha256 too
    hf = GPT2LMHeadModel.from_pretrained(folder)
    ours = load_hf_gpt2_weights(MiniGPT(config_from_hf(hf.config)), hf)
    idx = torch.randint(0, hf.config.vocab_size, (2, 40))
    out["tiny-random-gpt2 checkpoint (5 layers)"] = _max_diff(ours, hf, idx)
    return out


def sanity_checks(seed: int = 0) -> dict[str, tuple[float, float]]:
    """Init loss vs ln(V) and single-batch overfit, for both presets: ``{name: (init, after 200 steps)}``."""
    from labkit import seed_everything

    out = {}
    for name, preset in (("gpt2_style", GPTConfig.gpt2_style), ("llama_style", GPTConfig.llama_style)):
        seed_everything(seed)
        cfg = preset(vocab_size=256, block_size=32, n_layer=2, n_head=4, d_model=64)
        model = MiniGPT(cfg)
        x = torch.randint(0, 256, (4, 32))
        y = torch.randint(0, 256, (4, 32))
        _, init = model(x, y)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for _ in range(200):
            _, loss = model(x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        out[name] = (init.item(), loss.item())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="bigger models and 10x the steps (minutes on CPU)")
    ap.add_argument("--steps", type=int, default=None, help="training steps per model (default 500, full 5000)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from labkit import seed_everything
    from labkit.plots import plt, savefig

    t_start = time.perf_counter()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    failures: list[str] = []

    print("Parameter counts from the formula (no model built):")
    known = {
        "GPT-2 124M": (GPTConfig.gpt2_style(), 124_439_808),
        "Llama-2 7B": (GPTConfig.llama_style(vocab_size=32000, block_size=4096, n_layer=32, n_head=32,
                                             d_model=4096, d_ff=11008), 6_738_415_616),
        "Llama-3 8B": (GPTConfig.llama_style(vocab_size=128256, block_size=8192, n_layer=32, n_head=32,
                                             n_kv_head=8, d_model=4096, d_ff=14336, rope_theta=500000.0),
                       8_030_261_248),
    }
    print("| model | count_params | published |")
    print("|---|---|---|")
    for name, (cfg, ref) in known.items():
        n = count_params(cfg)
        print(f"| {name} | {n:,} | {ref:,} |")
        if n != ref:
            failures.append(f"count_params({name})")

    print("\nLogit equality with Hugging Face (weights copied in):")
    print("| reference model | max abs diff |")
    print("|---|---|")
    for name, diff in hf_equality_report(args.seed).items():
        print(f"| {name} | {diff:.2e} |")
        if not diff < 1e-4:
            failures.append(f"HF equality {name}")

    print(f"\nSanity checks (vocab 256, ln V = {math.log(256):.4f}):")
    print("| preset | init loss | loss after 200 steps on one batch |")
    print("|---|---|---|")
    for name, (init, final) in sanity_checks(args.seed).items():
        print(f"| {name} | {init:.4f} | {final:.4f} |")
        if abs(init - math.log(256)) > 0.1 or final > 0.5:
            failures.append(f"sanity {name}")

    train_data, val_data, itos = load_char_shakespeare()
    steps = args.steps or (5000 if args.full else 500)
    sizes = (dict(n_layer=6, n_head=6, d_model=192, block_size=128) if args.full
             else dict(n_layer=2, n_head=4, d_model=64, block_size=64))
    print(f"\nTiny Shakespeare, char level (vocab {len(itos)}, {len(train_data):,} train / {len(val_data):,} val chars), "
          f"{steps} steps, batch 32, block {sizes['block_size']}:")
    histories, models = {}, {}
    for name, preset, extra in (("gpt2_style", GPTConfig.gpt2_style, {}),
                                ("llama_style", GPTConfig.llama_style, {"n_kv_head": 2})):
        seed_everything(args.seed)
        cfg = preset(vocab_size=len(itos), dropout=0.0, **sizes, **extra)
        model = MiniGPT(cfg)
        t0, c0 = time.perf_counter(), time.process_time()
        hist = train(model, train_data, val_data, steps=steps, eval_every=max(steps // 6, 1), seed=args.seed,
                     progress=sys.stderr.isatty())
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        histories[name], models[name] = hist, model
        val = hist["val"]
        print(f"  {name:<12} params {count_params(cfg):>9,}  val loss {val[0][1]:.3f} -> {val[-1][1]:.3f}  "
              f"({' '.join(f'{v:.2f}' for _, v in val)})  {dt:.1f} s wall, {dc:.1f} s CPU")
        if not val[-1][1] < val[0][1] - 1.0:
            failures.append(f"{name} val loss did not fall by 1 nat")

    seed_everything(args.seed)
    prompt = torch.tensor([[itos.index(c) for c in "ROMEO:\n"]])
    g = torch.Generator().manual_seed(args.seed)
    sample = models["llama_style"].generate(prompt, 200, temperature=0.8, top_k=20, generator=g)
    print("\nSample (llama_style, temperature 0.8, top_k 20):\n" + "".join(itos[i] for i in sample[0].tolist()))

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for (name, hist), color in zip(histories.items(), ("C0", "C3")):
        s, v = zip(*hist["train"])
        ax.plot(s, v, alpha=0.35, lw=1, color=color, label=f"{name} train")
        s, v = zip(*hist["val"])
        ax.plot(s, v, marker="o", color=color, label=f"{name} val")
    ax.axhline(math.log(len(itos)), color="grey", ls=":", lw=1, label="ln(vocab) = uniform")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/char)")
    ax.set_title("MiniGPT on Tiny Shakespeare (char level)")
    ax.legend(fontsize=8)
    path = savefig(fig, Path(__file__).parent / "figures" / "loss_curve.png")
    print(f"\nwrote {path}")
    print(f"total self-test time: {time.perf_counter() - t_start:.1f} s wall, {time.process_time():.1f} s CPU "
          "(shared machine: wall time depends on load)")
    if failures:
        print("FAILED: " + "; ".join(failures))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

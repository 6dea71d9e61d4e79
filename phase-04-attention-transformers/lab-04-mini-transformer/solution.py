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

The positional functions (sinusoidal, RoPE, ALiBi) come from lab 4.3 and the causal mask from
lab 4.1, so there is one RoPE and one mask in the curriculum. Later phases reuse this module:
``load_lab("4.4").MiniGPT``. What they build on:

- ``forward(idx, targets, *, position_ids, attention_mask, past_key_values, logits_to_keep)``:
  absolute positions, left-padded batches, a KV-cache hook (the cache itself is Phase 9's),
  and logits for the last k positions only;
- ``generate`` (temperature, top-k, top-p, eos), ``configure_optimizers`` (AdamW, decay on
  matrices only), ``estimate_flops_per_token`` / ``estimate_mfu`` (6N + 12·L·d·T);
- ``to_hf_llama`` / ``to_hf_gpt2``: export to transformers (``save_pretrained`` works).

Run: ``python solution.py`` (small mode: about a minute on one CPU core) or ``--full``.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from labkit import load_lab

# sinusoidal_encoding, rope_cache, apply_rope, alibi_bias: the lab 4.3 reference solution.
positional = load_lab("phase-04-attention-transformers/lab-03-positional-encodings")
# causal_mask(T_q, T_k): the lab 4.1 reference solution (bottom-right aligned when T_k > T_q).
sdpa_lab = load_lab("phase-04-attention-transformers/lab-01-scaled-dot-product-attention")

__all__ = [
    "CausalSelfAttention",
    "GPTConfig",
    "MLP",
    "MiniGPT",
    "RMSNorm",
    "TransformerBlock",
    "build_attention_mask",
    "config_from_hf",
    "count_params",
    "default_position_ids",
    "load_char_shakespeare",
    "load_hf_gpt2_weights",
    "load_hf_llama_weights",
    "param_breakdown",
    "to_hf_gpt2",
    "to_hf_llama",
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
            Read the value in use from ``resolved_n_kv_head``.
        d_ff: hidden width of the MLP. ``None``: 4 * d_model for GELU, and for SwiGLU
            8/3 * d_model rounded up to a multiple of 64 (same parameter count as 4x GELU,
            roughly). Read the value in use from ``resolved_d_ff``.
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

    ``None`` stays ``None`` in the fields: derived values live in the read-only properties
    ``resolved_n_kv_head`` and ``resolved_d_ff``, so ``dataclasses.replace(cfg, n_head=8)``
    is still plain MHA and ``replace(cfg, d_model=64)`` re-derives d_ff. Code that builds or
    counts a model reads the properties, never the raw fields.

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
        if self.n_kv_head is not None and (isinstance(self.n_kv_head, bool) or not isinstance(self.n_kv_head, int)
                                           or self.n_kv_head <= 0):
            raise ValueError(f"GPTConfig.n_kv_head must be a positive int or None, got {self.n_kv_head!r}")
        if self.n_head % self.resolved_n_kv_head:
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
        if self.d_ff is not None and (isinstance(self.d_ff, bool) or not isinstance(self.d_ff, int) or self.d_ff <= 0):
            raise ValueError(f"GPTConfig.d_ff must be a positive int or None, got {self.d_ff!r}")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_head

    @property
    def resolved_n_kv_head(self) -> int:
        """Key/value heads in use: ``n_kv_head``, or ``n_head`` (MHA) when it is None."""
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def resolved_d_ff(self) -> int:
        """MLP hidden width in use: ``d_ff``, or 4·d_model (GELU) / 8/3·d_model rounded up to a
        multiple of 64 (SwiGLU) when it is None."""
        if self.d_ff is not None:
            return self.d_ff
        return 4 * self.d_model if self.mlp == "gelu" else 64 * math.ceil(8 * self.d_model / 3 / 64)

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
    # BEGIN SOLUTION per layer (use config.resolved_n_kv_head / resolved_d_ff): qkv d*(n_head+2*n_kv_head)*d_head, out proj, MLP with 2 (GELU) or 3 (SwiGLU) matrices, biases if config.bias, norm weights (+LayerNorm bias); then embeddings, final norm, untied head (medium, ~20 min)
    c = config
    d, dh, v = c.d_model, c.d_head, c.vocab_size
    b = 1 if c.bias else 0
    d_ff = c.resolved_d_ff
    qkv_out = (c.n_head + 2 * c.resolved_n_kv_head) * dh
    attn = d * qkv_out + b * qkv_out + c.n_head * dh * d + b * d
    n_in = 2 if c.mlp == "swiglu" else 1          # SwiGLU has a gate and an up projection
    mlp = n_in * (d * d_ff + b * d_ff) + d_ff * d + b * d
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


def default_position_ids(batch_size: int, seq_len: int, past_length: int = 0,
                         attention_mask: torch.Tensor | None = None,
                         device: torch.device | str | None = None) -> torch.Tensor:
    """Absolute positions of the ``seq_len`` new tokens, HF's convention.

    Without a mask the new tokens sit at ``past_length, ..., past_length + seq_len - 1`` in
    every row. With an ``attention_mask`` (B, past_length + seq_len), 1 = real token and
    0 = padding on the LEFT, a row's first real token is position 0: positions are
    ``cumsum(mask) - 1`` clamped at 0 (pads get 0, a dummy: they are masked out as keys), and
    the last ``seq_len`` columns are returned. A left-padded row therefore gets the same
    positions as the same sequence without padding.

    Returns:
        int64 tensor (batch_size, seq_len).
    """
    # BEGIN SOLUTION no mask: arange(past_length, past_length + seq_len) expanded to (B, T); mask: cumsum over the last dim - 1, clamp at 0, keep the last seq_len columns (easy, ~10 min)
    if attention_mask is None:
        pos = torch.arange(past_length, past_length + seq_len, dtype=torch.int64, device=device)
        return pos.unsqueeze(0).expand(batch_size, seq_len)
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp(min=0)[:, -seq_len:].to(device)
    # END SOLUTION


def build_attention_mask(T_q: int, T_k: int, attention_mask: torch.Tensor | None = None,
                         device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean attention mask, True where a query may attend to a key.

    The T_q queries are the LAST T_q of the T_k positions (a KV cache holds the first
    T_k - T_q), so query i sits at absolute column ``T_k - T_q + i`` and sees keys up to and
    including that column: lab 4.1's ``causal_mask(T_q, T_k)``, aligned bottom-right.
    (``F.scaled_dot_product_attention(is_causal=True)`` aligns top-left, which is only right
    when T_q == T_k.)

    Args:
        T_q, T_k: query and key counts, 1 <= T_q <= T_k.
        attention_mask: optional (B, T_k), 1/True = real token, 0/False = padding. A key that
            is padding is hidden from every query.
        device: where to build it.

    Returns:
        bool (T_q, T_k) without ``attention_mask``; bool (B, 1, T_q, T_k) with it. A query row
        that would see no key at all (a pad query of a left-padded row) is opened to every
        key instead, so the softmax stays finite (no NaN); its output is never read by a real
        token, because real queries do not attend to pad keys.
    """
    # BEGIN SOLUTION causal = sdpa_lab.causal_mask(T_q, T_k); with a padding mask: causal & mask[:, None, None, :]; rows with no True become all True (medium, ~15 min)
    causal = sdpa_lab.causal_mask(T_q, T_k, device=device)                 # (T_q, T_k)
    if attention_mask is None:
        return causal
    mask = causal[None, None] & attention_mask.to(device=causal.device, dtype=torch.bool)[:, None, None, :]
    empty = ~mask.any(dim=-1, keepdim=True)                                # (B, 1, T_q, 1)
    return mask | empty
    # END SOLUTION


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Lab 4.3's ``apply_rope`` for x (B, H, T, d_head) and tables (T, d_head) shared by the
    batch, or (B, T, d_head), one per row (left-padded batches: rows have their own positions)."""
    if cos.dim() == 2:
        return positional.apply_rope(x, cos, sin)
    return torch.stack([positional.apply_rope(x[b], cos[b], sin[b]) for b in range(x.shape[0])])


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with optional GQA, RoPE, ALiBi, padding masks and a KV cache.

    One fused projection ``qkv`` gives n_head query heads and n_kv_head key and value heads
    (rows ordered [q | k | v]); each key/value head is shared by n_head // n_kv_head
    consecutive query heads. ``proj`` maps the concatenated heads back to d_model.

    KV-cache hook (the cache class is Phase 9's lab; any object with these two methods works,
    the same protocol as HF's ``transformers.Cache``):

    - ``update(key, value, layer_idx) -> (keys, values)``: receives this call's new key and
      value, each (B, n_kv_head, T_new, d_head), AFTER RoPE and BEFORE the GQA repeat; stores
      them for layer ``layer_idx`` and returns everything cached for that layer, (B, n_kv_head,
      T_past + T_new, d_head), oldest first.
    - ``get_seq_length(layer_idx=0) -> int``: how many positions are cached (T_past).
    """

    def __init__(self, config: GPTConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.d_head = config.n_head, config.resolved_n_kv_head, config.d_head
        self.layer_idx = layer_idx
        self.qkv = nn.Linear(config.d_model, (self.n_head + 2 * self.n_kv_head) * self.d_head, bias=config.bias)
        self.proj = nn.Linear(config.n_head * config.d_head, config.d_model, bias=config.bias)
        self.dropout = config.dropout
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.attn_impl = config.attn_impl

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                attn_bias: torch.Tensor | None = None, *, attn_mask: torch.Tensor | None = None,
                past_key_values: Any = None) -> torch.Tensor:
        """x (B, T, d_model) -> (B, T, d_model).

        Args:
            rope: ``(cos, sin)``, each (T, d_head) or (B, T, d_head), the rotation of the T new
                positions (q and k); ``None`` for no RoPE.
            attn_bias: (n_head, T, T_k) float added to the scores (ALiBi); ``None`` for none.
            attn_mask: bool (T, T_k) or (B, 1, T, T_k), True = may attend (see
                :func:`build_attention_mask`); ``None`` means causal (bottom-right aligned).
            past_key_values: a KV cache (protocol in the class docstring) or ``None``.
                T_k = cached positions + T.
        """
        B, T, _ = x.shape
        # BEGIN SOLUTION split qkv into q (B,n_head,T,d_head) and k,v (B,n_kv_head,T,d_head); RoPE on q and k (_rotate); past_key_values.update(k, v, self.layer_idx) if given; repeat_interleave k,v to n_head; mask = attn_mask or causal_mask(T, T_k); scores q@k^T/sqrt(d_head) + bias; -inf where the mask is False BEFORE softmax over keys; dropout; @v; merge heads; proj; dropout. SDPA path: is_causal only when T == T_k and no mask/bias (hard, ~45 min)
        q, k, v = self.qkv(x).split(
            [self.n_head * self.d_head, self.n_kv_head * self.d_head, self.n_kv_head * self.d_head], dim=-1)
        q = q.view(B, T, self.n_head, self.d_head).transpose(1, 2)      # (B, nh, T, dh)
        k = k.view(B, T, self.n_kv_head, self.d_head).transpose(1, 2)   # (B, nkv, T, dh)
        v = v.view(B, T, self.n_kv_head, self.d_head).transpose(1, 2)
        if rope is not None:
            cos, sin = rope
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)         # (B, nkv, T_k, dh)
        T_k = k.shape[-2]
        if self.n_kv_head != self.n_head:
            # query head h reads key/value head h // group (same grouping as HF repeat_kv)
            group = self.n_head // self.n_kv_head
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
        plain_causal = attn_mask is None and attn_bias is None and T == T_k
        if attn_mask is None:
            attn_mask = sdpa_lab.causal_mask(T, T_k, device=x.device)   # True = may attend
        p = self.dropout if self.training else 0.0
        if self.attn_impl == "sdpa":
            if plain_causal:  # top-left is_causal is right only for T_q == T_k
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
            elif attn_bias is None:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
            else:
                mask = attn_bias.to(q.dtype).masked_fill(~attn_mask, float("-inf"))
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        else:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)    # (B, nh, T, T_k)
            if attn_bias is not None:
                att = att + attn_bias.to(att.dtype)
            att = att.masked_fill(~attn_mask, float("-inf"))            # before softmax
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
        d_ff = config.resolved_d_ff
        self.fc = nn.Linear(config.d_model, d_ff, bias=config.bias)
        self.gate = nn.Linear(config.d_model, d_ff, bias=config.bias) if config.mlp == "swiglu" else None
        self.proj = nn.Linear(d_ff, config.d_model, bias=config.bias)
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

    def __init__(self, config: GPTConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.ln1 = _make_norm(config)
        self.attn = CausalSelfAttention(config, layer_idx=layer_idx)
        self.ln2 = _make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                attn_bias: torch.Tensor | None = None, *, attn_mask: torch.Tensor | None = None,
                past_key_values: Any = None) -> torch.Tensor:
        # BEGIN SOLUTION two residual branches, each reading a normalized copy of the stream; pass rope, attn_bias, attn_mask and past_key_values on to attn (easy, ~5 min)
        x = x + self.attn(self.ln1(x), rope=rope, attn_bias=attn_bias, attn_mask=attn_mask,
                          past_key_values=past_key_values)
        x = x + self.mlp(self.ln2(x))
        return x
        # END SOLUTION


def _check_ids(name: str, ids: torch.Tensor, vocab_size: int, allow: int | None = None) -> None:
    """ValueError naming the first id outside [0, vocab_size) (``allow``: an extra legal value)."""
    bad = (ids < 0) | (ids >= vocab_size)
    if allow is not None:
        bad &= ids != allow
    if bool(bad.any()):
        first = int(ids[bad][0])
        raise ValueError(f"{name} contains id {first}, outside [0, vocab_size={vocab_size})"
                         + (f" (and not {allow})" if allow is not None else "")
                         + ": was the text encoded with another tokenizer, or is vocab_size too small?")


class MiniGPT(nn.Module):
    """Decoder-only transformer language model.

    Modules: ``tok_emb`` (vocab_size, d_model); ``pos_emb`` (block_size, d_model) only for
    learned positions; ``blocks`` (n_layer TransformerBlocks, ``blocks[i].attn.layer_idx == i``);
    ``ln_f``; ``head`` (d_model -> vocab_size, no bias, the same Parameter as
    ``tok_emb.weight`` when tied).
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.block_size, config.d_model) if config.pos_emb == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(TransformerBlock(config, layer_idx=i) for i in range(config.n_layer))
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

    def _rope_tables(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE (cos, sin) for absolute ``position_ids`` (B, T): (T, d_head) each when every row
        has the same positions, else (B, T, d_head). Rows of lab 4.3's ``rope_cache``."""
        cfg = self.config
        n = int(position_ids.max()) + 1
        cos, sin = positional.rope_cache(n, cfg.d_head, cfg.rope_theta, device=position_ids.device)
        if bool((position_ids == position_ids[:1]).all()):
            return cos[position_ids[0]], sin[position_ids[0]]
        return cos[position_ids], sin[position_ids]

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                position_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                past_key_values: Any = None, logits_to_keep: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Next-token logits, and the mean cross-entropy when ``targets`` is given.

        Args:
            idx: (B, T) int64 token ids in [0, vocab_size), T >= 1.
            targets: optional (B, T) int64 next-token ids; -100 marks positions to ignore.
            position_ids: optional (B, T) (or (1, T)) int64 absolute positions of the tokens:
                RoPE rotates by them, the learned and sinusoidal tables are indexed by them.
                Default: :func:`default_position_ids` (``past + arange(T)``, or from
                ``attention_mask`` for left-padded rows). ALiBi uses key-column distances,
                which equal position differences for left-padded rows.
            attention_mask: optional (B, T_k) with T_k = cached positions + T; 1 = real token,
                0 = padding (LEFT padding: the real tokens of a row are its last ones). Real
                positions of a padded row get the logits of the unpadded sequence; pad
                positions get finite, meaningless logits.
            past_key_values: a KV cache with ``update(key, value, layer_idx)`` and
                ``get_seq_length()`` (protocol: :class:`CausalSelfAttention`); it is updated
                in place, and ``idx`` holds only the tokens after the cached ones.
            logits_to_keep: 0 = logits for every position; k > 0 = only for the last k
                positions (the LM head is the largest matmul of a small model: generation
                needs the last position only). HF's name and meaning.

        Returns:
            ``(logits, loss)``: logits (B, T, vocab_size) float32 (or (B, min(k, T), vocab_size));
            loss a float32 scalar (nats per token) or ``None``.

        Raises:
            TypeError: idx/targets/position_ids/attention_mask not integer (or bool) tensors.
            ValueError: idx not 2-D or empty; a token id (or target other than -100) outside
                [0, vocab_size); a position >= block_size with learned positions; shapes that
                do not match; negative positions or logits_to_keep; targets with
                logits_to_keep > 0.
        """
        if not isinstance(idx, torch.Tensor) or idx.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"idx must be an int64 tensor of token ids, got {getattr(idx, 'dtype', type(idx))}")
        if idx.dim() != 2 or idx.shape[1] == 0:
            raise ValueError(f"idx must have shape (B, T) with T >= 1, got {tuple(idx.shape)}")
        B, T = idx.shape
        cfg = self.config
        _check_ids("idx", idx, cfg.vocab_size)
        if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) or logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be an int >= 0 (0 = all positions), got {logits_to_keep!r}")
        if targets is not None:
            if not isinstance(targets, torch.Tensor) or targets.dtype not in (torch.int64, torch.int32):
                raise TypeError("targets must be an integer tensor of token ids")
            if targets.shape != idx.shape:
                raise ValueError(f"targets shape {tuple(targets.shape)} != idx shape {tuple(idx.shape)}")
            _check_ids("targets", targets, cfg.vocab_size, allow=-100)
            if logits_to_keep:
                raise ValueError("a loss needs the logits of every position: pass logits_to_keep=0 with targets")
        past = 0 if past_key_values is None else past_key_values.get_seq_length()
        if isinstance(past, bool) or not isinstance(past, int) or past < 0:
            raise ValueError(f"past_key_values.get_seq_length() must return an int >= 0, got {past!r}")
        T_k = past + T
        if attention_mask is not None:
            if not isinstance(attention_mask, torch.Tensor) or attention_mask.is_floating_point():
                raise TypeError("attention_mask must be a bool or integer tensor of 1 (real) / 0 (padding)")
            if attention_mask.shape != (B, T_k):
                raise ValueError(f"attention_mask must be (B, cached + T) = {(B, T_k)}, got {tuple(attention_mask.shape)}")
            if bool(((attention_mask != 0) & (attention_mask != 1)).any()):
                raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token)")
        if position_ids is None:
            position_ids = default_position_ids(B, T, past, attention_mask, device=idx.device)
        else:
            if not isinstance(position_ids, torch.Tensor) or position_ids.dtype not in (torch.int64, torch.int32):
                raise TypeError("position_ids must be an integer tensor")
            if position_ids.shape not in ((B, T), (1, T)):
                raise ValueError(f"position_ids must be (B, T) = {(B, T)} or (1, T), got {tuple(position_ids.shape)}")
            if bool((position_ids < 0).any()):
                raise ValueError("position_ids must be >= 0")
            position_ids = position_ids.long().expand(B, T)
        if cfg.pos_emb == "learned" and int(position_ids.max()) >= cfg.block_size:
            raise ValueError(f"position {int(position_ids.max())} >= block_size {cfg.block_size}: a learned position "
                             "table has no rows past block_size (crop the input, or use rope/alibi)")
        # BEGIN SOLUTION token embeddings (+ learned or sinusoidal positions at position_ids), dropout; RoPE tables for position_ids (self._rope_tables) or ALiBi bias for the last T rows of T_k; mask: None when T == T_k and no attention_mask, else build_attention_mask; run the blocks (with the cache); keep the last logits_to_keep positions; final norm; head; float32 logits; cross-entropy with ignore_index=-100 (hard, ~30 min)
        x = self.tok_emb(idx)                                             # (B, T, d_model)
        if cfg.pos_emb == "learned":
            x = x + self.pos_emb(position_ids)
        elif cfg.pos_emb == "sinusoidal":
            # the table's entries have RMS 1/sqrt(2); rescale it to the embeddings' init scale, or
            # it drowns the 0.02-sized token vectors (Vaswani et al. scale tokens up instead)
            table = positional.sinusoidal_encoding(int(position_ids.max()) + 1, cfg.d_model)
            pe = table.to(idx.device)[position_ids] * (cfg.init_std * math.sqrt(2))
            x = x + pe.to(dtype=x.dtype)
        x = self.drop(x)
        rope = attn_bias = None
        if cfg.pos_emb == "rope":
            rope = self._rope_tables(position_ids)
        elif cfg.pos_emb == "alibi":
            attn_bias = positional.alibi_bias(cfg.n_head, T_k, device=idx.device)[:, T_k - T:, :]
        attn_mask = None
        if attention_mask is not None or T != T_k:
            attn_mask = build_attention_mask(T, T_k, attention_mask, device=idx.device)
        for block in self.blocks:
            x = block(x, rope=rope, attn_bias=attn_bias, attn_mask=attn_mask, past_key_values=past_key_values)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = self.head(self.ln_f(x)).float()                           # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(B * T, -1), targets.reshape(B * T).long(), ignore_index=-100)
        return logits, loss
        # END SOLUTION

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 generator: torch.Generator | None = None, eos_token_id: int | None = None) -> torch.Tensor:
        """Autoregressive sampling, no KV cache: each step re-reads the last block_size tokens
        and computes the logits of the last position only (``logits_to_keep=1``).

        The next-token logits are divided by ``temperature``, then top-k keeps the k largest,
        then top-p (nucleus, Holtzman et al. 2020) keeps the smallest set of most likely tokens
        whose probability sums to at least ``top_p`` (HF's ``TopPLogitsWarper`` rule: the most
        likely token always stays); the rest are set to -inf before the softmax.

        Args:
            idx: (B, T) int64 prompt ids.
            max_new_tokens: tokens to append, >= 0.
            temperature: divides the logits (finite, >= 0); 0 means greedy (argmax).
            top_k: sample only among the k most likely tokens (None: all).
            top_p: nucleus threshold in (0, 1] (None or 1.0: no nucleus filter).
            generator: optional torch.Generator for reproducible sampling.
            eos_token_id: optional end-of-sequence id: a row that has produced it keeps
                producing it, and generation stops early once every row has.

        Returns:
            (B, T + n) int64, n <= max_new_tokens (n < max_new_tokens only when every row
            reached ``eos_token_id``). Call ``model.eval()`` first to switch dropout off.

        Raises:
            ValueError: negative max_new_tokens, negative/NaN/inf temperature, top_k < 1,
                top_p outside (0, 1], eos_token_id outside the vocabulary.
        """
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be an int >= 1 or None, got {top_k!r}")
        if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")
        if eos_token_id is not None and not (isinstance(eos_token_id, int) and 0 <= eos_token_id < self.config.vocab_size):
            raise ValueError(f"eos_token_id must be an id in [0, {self.config.vocab_size}), got {eos_token_id!r}")
        # BEGIN SOLUTION loop: crop to the last block_size tokens, logits of the last position only (logits_to_keep=1), greedy if temperature == 0 else divide by temperature, top_k (others -inf), top_p on the sorted cumulative softmax, softmax, multinomial; rows that produced eos keep producing it; stop when all have; append (medium, ~25 min)
        finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            ctx = idx[:, -self.config.block_size:]
            logits = self(ctx, logits_to_keep=1)[0][:, -1, :]             # (B, vocab)
            if temperature == 0:
                next_id = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                if top_p is not None and top_p < 1.0:
                    sorted_logits, order = torch.sort(logits, dim=-1)            # ascending
                    cum = F.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
                    drop = cum <= 1 - top_p                                        # the unlikely tail
                    drop[:, -1] = False                                            # keep the top token
                    logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
                probs = F.softmax(logits, dim=-1)
                next_id = torch.multinomial(probs, num_samples=1, generator=generator)
            if eos_token_id is not None:
                next_id = next_id.masked_fill(finished[:, None], eos_token_id)
                finished |= next_id[:, 0] == eos_token_id
            idx = torch.cat([idx, next_id], dim=1)
            if eos_token_id is not None and bool(finished.all()):
                break
        return idx
        # END SOLUTION

    def configure_optimizers(self, weight_decay: float, learning_rate: float,
                             betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8) -> torch.optim.AdamW:
        """AdamW with two parameter groups (the GPT-2/nanoGPT recipe).

        Weight decay applies only to the 2-D weight matrices of ``nn.Linear`` layers (attention,
        MLP and an untied LM head). Norm weights, biases, and embeddings (token, learned
        positions, and the tied head, which *is* the token embedding) are not decayed:
        shrinking a gain or a bias toward 0 is not a sensible prior, and an embedding row is
        only updated when its token appears, so uniform decay would erase rare tokens.
        Parameters with ``requires_grad=False`` (frozen, e.g. under LoRA) are left out.

        Returns:
            ``torch.optim.AdamW`` whose ``param_groups[0]`` is the decayed group
            (``weight_decay``) and ``param_groups[1]`` the rest (0.0). Each trainable
            parameter is in exactly one group, once.

        Raises:
            ValueError: negative or non-finite weight_decay, learning_rate <= 0, betas not in [0, 1).
        """
        if not (isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay) and weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
        if not (isinstance(learning_rate, (int, float)) and math.isfinite(learning_rate) and learning_rate > 0):
            raise ValueError(f"learning_rate must be a finite number > 0, got {learning_rate!r}")
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        # BEGIN SOLUTION ids of the 2-D weights of nn.Linear modules minus the token embedding (the tied head); walk self.parameters() (which yields a tied Parameter once), trainable only, into decay / no_decay; AdamW with the two groups (easy, ~10 min)
        embeddings = {id(self.tok_emb.weight)} | ({id(self.pos_emb.weight)} if self.pos_emb is not None else set())
        matrices = {id(m.weight) for m in self.modules() if isinstance(m, nn.Linear) and m.weight.dim() == 2}
        decay, no_decay = [], []
        for p in self.parameters():                       # a tied Parameter is yielded once
            if p.requires_grad:
                (decay if id(p) in matrices - embeddings else no_decay).append(p)
        return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                  {"params": no_decay, "weight_decay": 0.0}],
                                 lr=learning_rate, betas=betas, eps=eps)
        # END SOLUTION

    def estimate_flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs (forward + backward) per token: ``6·N + 12·n_layer·d_model·T``.

        Kaplan et al. 2020 (section 2.1) and the PaLM paper (appendix B): a matmul with an
        (in, out) weight costs 2·in·out FLOPs per token forward and twice that backward (the
        gradients of the input and of the weight), so 6 per weight. N counts the weights of every
        matmul: all ``nn.Linear`` weights, the LM head included even when tied (tying shares
        the memory, not the compute); embedding lookups, norms and biases are not matmuls and
        are left out (Kaplan's "non-embedding" N differs by the norms and biases only, < 1%
        at any real size). The attention scores QK^T and the weighted sum AV cost
        2·T·d_model FLOPs each per token per layer forward, so 12·n_layer·d_model·T for
        training, counting the full T x T matrix as the papers and nanoGPT do (a causal
        kernel can skip the masked half). Softmax, norms and elementwise ops are not counted.

        Args:
            seq_len: the context length T of the training sequences (default ``block_size``).

        Returns:
            FLOPs per token, a float. Multiply by tokens/s and divide by the hardware's peak
            FLOP/s for MFU (:meth:`estimate_mfu`).
        """
        T = self.config.block_size if seq_len is None else seq_len
        if isinstance(T, bool) or not isinstance(T, int) or T < 1:
            raise ValueError(f"seq_len must be an int >= 1, got {seq_len!r}")
        # BEGIN SOLUTION N = sum of numel of every nn.Linear weight (the head counts, tied or not: use self.modules()); return 6 * N + 12 * n_layer * d_model * T (easy, ~10 min)
        n = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        return float(6 * n + 12 * self.config.n_layer * self.config.d_model * T)
        # END SOLUTION

    def estimate_mfu(self, tokens_per_s: float, peak_flops: float, seq_len: int | None = None) -> float:
        """Model FLOPs utilization: ``estimate_flops_per_token(seq_len) * tokens_per_s / peak_flops``.

        ``peak_flops`` is the accelerator's dense peak for the dtype in use (for example
        989e12 for BF16 on an H100 SXM, from NVIDIA's datasheet). Raises ValueError on
        non-positive inputs.
        """
        if not (tokens_per_s > 0 and peak_flops > 0 and math.isfinite(tokens_per_s) and math.isfinite(peak_flops)):
            raise ValueError(f"tokens_per_s and peak_flops must be finite and > 0, got {tokens_per_s!r}, {peak_flops!r}")
        return self.estimate_flops_per_token(seq_len) * tokens_per_s / peak_flops


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
        base = replace(base, **overrides)
    return base


def _check_gpt2_style(cfg: GPTConfig, who: str) -> None:
    if (cfg.norm, cfg.mlp, cfg.pos_emb, cfg.bias, cfg.resolved_n_kv_head) != ("layernorm", "gelu", "learned", True,
                                                                            cfg.n_head):
        raise ValueError(f"{who} needs a GPT-2-style MiniGPT (layernorm, gelu, learned positions, biases, MHA: "
                         f"GPTConfig.gpt2_style / config_from_hf), got norm={cfg.norm!r}, mlp={cfg.mlp!r}, "
                         f"pos_emb={cfg.pos_emb!r}, bias={cfg.bias}, n_kv_head={cfg.resolved_n_kv_head}")


def _check_llama_style(cfg: GPTConfig, who: str) -> None:
    if (cfg.norm, cfg.mlp, cfg.pos_emb, cfg.bias) != ("rmsnorm", "swiglu", "rope", False):
        raise ValueError(f"{who} needs a Llama-style MiniGPT (rmsnorm, swiglu, rope, no biases: "
                         f"GPTConfig.llama_style / config_from_hf), got norm={cfg.norm!r}, mlp={cfg.mlp!r}, "
                         f"pos_emb={cfg.pos_emb!r}, bias={cfg.bias}")


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
    _check_gpt2_style(cfg, "load_hf_gpt2_weights")
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
    _check_llama_style(cfg, "load_hf_llama_weights")
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


# ============================================================================ export to Hugging Face
def _hf_dtype(model: MiniGPT) -> torch.dtype:
    return next(model.parameters()).dtype


@torch.no_grad()
def to_hf_llama(model: MiniGPT, **config_kwargs: Any) -> nn.Module:
    """Export a Llama-style MiniGPT as a HF ``LlamaForCausalLM`` (the inverse of
    :func:`load_hf_llama_weights`).

    The config maps one to one: hidden_size = d_model, intermediate_size = resolved_d_ff,
    num_key_value_heads = resolved_n_kv_head (GQA), head_dim = d_head,
    max_position_embeddings = block_size, rms_norm_eps = norm_eps,
    ``rope_parameters = {"rope_type": "default", "rope_theta": rope_theta}``,
    tie_word_embeddings = tie_weights. Our fused ``qkv`` is split back into q_proj, k_proj,
    v_proj. The result is in eval mode, in the model's dtype, and ``save_pretrained`` /
    ``from_pretrained`` round-trip it (a tied head is stored once and re-tied on load).

    Args:
        model: a MiniGPT built with ``GPTConfig.llama_style`` (or ``config_from_hf``).
        **config_kwargs: extra ``LlamaConfig`` fields, typically ``bos_token_id``,
            ``eos_token_id``, ``pad_token_id`` of your tokenizer.

    Returns:
        ``transformers.LlamaForCausalLM`` whose logits equal ``model``'s.

    Raises:
        ValueError: the model is not Llama style.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = model.config
    _check_llama_style(cfg, "to_hf_llama")
    fields: dict[str, Any] = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.resolved_d_ff,
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.resolved_n_kv_head,
        head_dim=cfg.d_head, max_position_embeddings=cfg.block_size, rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
        tie_word_embeddings=cfg.tie_weights, hidden_act="silu", attention_bias=False, mlp_bias=False,
        attention_dropout=0.0, initializer_range=cfg.init_std)
    hf = LlamaForCausalLM(LlamaConfig(**{**fields, **config_kwargs})).to(_hf_dtype(model))
    # BEGIN SOLUTION the loader's mapping read backwards: embed_tokens; per layer split qkv rows into q (n_head*d_head), k and v (n_kv_head*d_head each), o_proj, gate/up/down, the two RMSNorms; model.norm; lm_head only when untied (HF re-ties it) (easy, ~15 min)
    sd = hf.state_dict()
    _copy(sd["model.embed_tokens.weight"], model.tok_emb.weight, "tok_emb")
    nq, nkv = cfg.n_head * cfg.d_head, cfg.resolved_n_kv_head * cfg.d_head
    for i, block in enumerate(model.blocks):
        p = f"model.layers.{i}."
        q, k, v = block.attn.qkv.weight.split([nq, nkv, nkv], dim=0)
        for name, w in (("q", q), ("k", k), ("v", v)):
            _copy(sd[p + f"self_attn.{name}_proj.weight"], w, f"blocks.{i}.attn.qkv ({name})")
        _copy(sd[p + "self_attn.o_proj.weight"], block.attn.proj.weight, f"blocks.{i}.attn.proj")
        _copy(sd[p + "mlp.gate_proj.weight"], block.mlp.gate.weight, f"blocks.{i}.mlp.gate")
        _copy(sd[p + "mlp.up_proj.weight"], block.mlp.fc.weight, f"blocks.{i}.mlp.fc")
        _copy(sd[p + "mlp.down_proj.weight"], block.mlp.proj.weight, f"blocks.{i}.mlp.proj")
        _copy(sd[p + "input_layernorm.weight"], block.ln1.weight, f"blocks.{i}.ln1")
        _copy(sd[p + "post_attention_layernorm.weight"], block.ln2.weight, f"blocks.{i}.ln2")
    _copy(sd["model.norm.weight"], model.ln_f.weight, "ln_f")
    if not cfg.tie_weights:
        _copy(sd["lm_head.weight"], model.head.weight, "head")
    # END SOLUTION
    return hf.eval()


@torch.no_grad()
def to_hf_gpt2(model: MiniGPT, **config_kwargs: Any) -> nn.Module:
    """Export a GPT-2-style MiniGPT as a HF ``GPT2LMHeadModel`` (the inverse of
    :func:`load_hf_gpt2_weights`).

    Config: n_embd = d_model, n_inner = resolved_d_ff, n_positions = block_size,
    layer_norm_epsilon = norm_eps, activation_function = "gelu_new" (the tanh GELU),
    tie_word_embeddings = tie_weights, dropouts 0. HF's ``Conv1D`` stores (in, out), so every
    projection is transposed on the way out. ``bos_token_id``/``eos_token_id`` default to
    GPT-2's 50256 only when the vocabulary has that id, else to None; pass your own in
    ``config_kwargs``.

    Returns:
        ``transformers.GPT2LMHeadModel`` in eval mode whose logits equal ``model``'s.

    Raises:
        ValueError: the model is not GPT-2 style.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = model.config
    _check_gpt2_style(cfg, "to_hf_gpt2")
    special = 50256 if cfg.vocab_size > 50256 else None
    fields: dict[str, Any] = dict(
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.d_model, n_layer=cfg.n_layer,
        n_head=cfg.n_head, n_inner=cfg.resolved_d_ff, activation_function="gelu_new",
        layer_norm_epsilon=cfg.norm_eps, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        tie_word_embeddings=cfg.tie_weights, initializer_range=cfg.init_std,
        bos_token_id=special, eos_token_id=special)
    hf = GPT2LMHeadModel(GPT2Config(**{**fields, **config_kwargs})).to(_hf_dtype(model))
    # BEGIN SOLUTION tok_emb/pos_emb -> wte/wpe; per layer ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj (transpose the Linear weights into Conv1D's (in, out)), biases; ln_f; lm_head only when untied (easy, ~15 min)
    sd = hf.state_dict()
    _copy(sd["transformer.wte.weight"], model.tok_emb.weight, "tok_emb")
    _copy(sd["transformer.wpe.weight"], model.pos_emb.weight, "pos_emb")
    for i, block in enumerate(model.blocks):
        p = f"transformer.h.{i}."
        pairs = [(block.ln1, "ln_1", False), (block.attn.qkv, "attn.c_attn", True),
                 (block.attn.proj, "attn.c_proj", True), (block.ln2, "ln_2", False),
                 (block.mlp.fc, "mlp.c_fc", True), (block.mlp.proj, "mlp.c_proj", True)]
        for ours, theirs, conv1d in pairs:
            _copy(sd[p + theirs + ".weight"], ours.weight.t() if conv1d else ours.weight, f"blocks.{i} {theirs}")
            _copy(sd[p + theirs + ".bias"], ours.bias, f"blocks.{i} {theirs}.bias")
    _copy(sd["transformer.ln_f.weight"], model.ln_f.weight, "ln_f")
    _copy(sd["transformer.ln_f.bias"], model.ln_f.bias, "ln_f.bias")
    if not cfg.tie_weights:
        _copy(sd["lm_head.weight"], model.head.weight, "head")
    # END SOLUTION
    return hf.eval()


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

    The optimizer comes from ``model.configure_optimizers`` (decay on matrices only).

    Returns:
        ``{"train": [(step, loss)...], "val": [(step, mean loss)...]}``; val is measured at
        step 0, every ``eval_every`` steps and at the end, on fixed batches.
    """
    from tqdm.auto import tqdm

    T = model.config.block_size
    g = torch.Generator().manual_seed(seed)
    val_g = torch.Generator().manual_seed(seed + 1)
    val_batches = [_batch(val_data, batch_size, T, val_g) for _ in range(eval_batches)]
    opt = model.configure_optimizers(weight_decay, lr, betas=(0.9, 0.99))
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


class _DemoCache:
    """The smallest object that speaks the KV-cache protocol (for the self-test only: Phase 9
    builds the real cache, preallocated and with its own tests)."""

    def __init__(self) -> None:
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        if layer_idx == len(self.layers):
            self.layers.append((key, value))
        else:
            k, v = self.layers[layer_idx]
            self.layers[layer_idx] = (torch.cat([k, key], dim=-2), torch.cat([v, value], dim=-2))
        return self.layers[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.layers[layer_idx][0].shape[-2] if len(self.layers) > layer_idx else 0


@torch.no_grad()
def incremental_report(model: MiniGPT, data: torch.Tensor, prefill: int = 16, seed: int = 0) -> dict[str, float]:
    """Max |logit diff| against one full forward of the same windows: decoding with a KV cache
    (prefill, then one token at a time), and a left-padded batch (rows of lengths T, T/2, T/4)."""
    model.eval()
    T = model.config.block_size
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(len(data) - T, (3,), generator=g).tolist()
    idx = torch.stack([data[i: i + T] for i in starts])
    full, _ = model(idx)
    cache = _DemoCache()
    steps = [model(idx[:, :prefill], past_key_values=cache)[0]]
    steps += [model(idx[:, t: t + 1], past_key_values=cache)[0] for t in range(prefill, T)]
    out = {"KV cache, 1 token at a time": (torch.cat(steps, dim=1) - full).abs().max().item()}
    lengths = [T, T // 2, T // 4]
    padded = torch.zeros(3, T, dtype=torch.long)
    mask = torch.zeros(3, T, dtype=torch.long)
    for b, n in enumerate(lengths):
        padded[b, T - n:] = idx[b, :n]
        mask[b, T - n:] = 1
    logits, _ = model(padded, attention_mask=mask)
    out["left-padded batch vs unpadded rows"] = max(
        (logits[b, T - n:] - model(idx[b: b + 1, :n])[0][0]).abs().max().item() for b, n in enumerate(lengths))
    return out


@torch.no_grad()
def export_report(model: MiniGPT, data: torch.Tensor, workdir: Path, seed: int = 0) -> dict[str, float]:
    """Max |logit diff| between the model and its HF export, before and after save_pretrained."""
    from transformers import AutoModelForCausalLM

    model.eval()
    hf = to_hf_gpt2(model) if model.config.pos_emb == "learned" else to_hf_llama(model)
    T = model.config.block_size
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([data[i: i + T] for i in torch.randint(len(data) - T, (2,), generator=g).tolist()])
    ours, _ = model(idx)
    out = {f"{type(hf).__name__} (to_hf_*)": (hf(idx).logits - ours).abs().max().item()}
    hf.save_pretrained(workdir)
    loaded = AutoModelForCausalLM.from_pretrained(workdir).eval()
    out["after save_pretrained / from_pretrained"] = (loaded(idx).logits - ours).abs().max().item()
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
    histories, models, train_speed = {}, {}, {}
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
        train_speed[name] = steps * 32 * sizes["block_size"] / dt
        val = hist["val"]
        print(f"  {name:<12} params {count_params(cfg):>9,}  val loss {val[0][1]:.3f} -> {val[-1][1]:.3f}  "
              f"({' '.join(f'{v:.2f}' for _, v in val)})  {dt:.1f} s wall, {dc:.1f} s CPU")
        if not val[-1][1] < val[0][1] - 1.0:
            failures.append(f"{name} val loss did not fall by 1 nat")

    t_extra = time.perf_counter()
    print("\nThe trained models, decoded incrementally and exported (max abs logit diff vs one full forward):")
    print("| preset | check | max abs diff |")
    print("|---|---|---|")
    for name, model in models.items():
        checks = incremental_report(model, val_data, seed=args.seed)
        with tempfile.TemporaryDirectory() as tmp:
            checks.update(export_report(model, val_data, Path(tmp), seed=args.seed))
        for check, diff in checks.items():
            print(f"| {name} | {check} | {diff:.2e} |")
            if not diff < 1e-4:
                failures.append(f"{name}: {check}")

    print("\nTraining FLOPs per token, 6·N + 12·n_layer·d_model·T (N = weights of every matmul, head included):")
    print("| model | T | N (matmul weights) | 6·N | attention term | total | attention share |")
    print("|---|---|---|---|---|---|---|")
    flop_rows = [("GPT-2 124M", known["GPT-2 124M"][0], 1024), ("Llama-3 8B", known["Llama-3 8B"][0], 8192)]
    flop_rows += [(f"{name} (above)", model.config, model.config.block_size) for name, model in models.items()]
    for name, cfg, T in flop_rows:
        with torch.device("meta"):  # shapes only: no memory, no init cost
            meta = MiniGPT(cfg)
        n = sum(m.weight.numel() for m in meta.modules() if isinstance(m, nn.Linear))
        total = meta.estimate_flops_per_token(T)
        attn = 12 * cfg.n_layer * cfg.d_model * T
        print(f"| {name} | {T} | {n:,} | {6 * n:.3e} | {attn:.3e} | {total:.3e} | {attn / total:.1%} |")
    for name, model in models.items():
        tok_s = train_speed[name]
        print(f"  {name}: {tok_s:,.0f} tokens/s through train() on this CPU (one thread, periodic evals included) "
              f"= {model.estimate_flops_per_token() * tok_s / 1e9:.2f} GFLOP/s of model FLOPs")
    print(f"  (these decoding/export/FLOPs checks took {time.perf_counter() - t_extra:.1f} s wall of the self-test)")

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

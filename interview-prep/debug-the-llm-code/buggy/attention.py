"""Program 2 (as a colleague sent it): causal multi-head self-attention for a decoder.

The shapes are right and it runs. The outputs are not. Find the bugs.
"""
from __future__ import annotations

import torch
from torch import nn


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=-1)
        q = q.view(B, T, self.n_heads, self.d_head).transpose(1, 2)
        k = k.view(B, T, self.n_heads, self.d_head).transpose(1, 2)
        v = v.view(B, T, self.n_heads, self.d_head).transpose(1, 2)
        scores = q @ k.transpose(-2, -1)
        future = torch.triu(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=0)
        scores = scores.masked_fill(future, float("-inf"))
        weights = torch.softmax(scores, dim=-2)
        out = (weights @ v).transpose(1, 2).reshape(B, T, C)
        return self.proj(out)

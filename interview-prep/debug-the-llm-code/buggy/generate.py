"""Program 5 (as a colleague sent it): batched greedy decoding for a decoder-only LM, returning
the log-probability of every chosen token (for ranking the candidates later).

One prompt at a time it looks fine in fp32 tests. In a batch, on the production model, it is not.
Find the bugs.
"""
from __future__ import annotations

import torch


@torch.no_grad()
def greedy_generate(model, tokenizer, prompts, max_new_tokens=8):
    """-> ``(new_ids (B, N) int64, logprobs (B, N) float32)``, no early stop at EOS."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    ids = enc["input_ids"]
    new, scores = [], []
    for _ in range(max_new_tokens):
        logits = model(input_ids=ids).logits[:, -1, :]
        probs = logits.half().exp()  # fp16: half the memory for a 150k vocab
        probs = probs / probs.sum(-1, keepdim=True)
        nxt = probs.argmax(-1)
        scores.append(probs.gather(-1, nxt[:, None]).squeeze(-1).log().float())
        new.append(nxt)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
    return torch.stack(new, 1), torch.stack(scores, 1)

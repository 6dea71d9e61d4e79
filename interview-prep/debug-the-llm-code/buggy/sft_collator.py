"""Program 3 (as a colleague sent it): the collator of an SFT run on a Hugging Face causal LM.

The batch goes straight into ``model(**batch)``, which computes the loss from ``labels``.
Training "works" (the loss falls). The model it produces is worse than it should be. Find the bugs.
"""
from __future__ import annotations

import torch

IGNORE_INDEX = -100


def collate(examples, pad_id):
    """``[{"prompt_ids": [...], "response_ids": [...]}, ...]`` -> right-padded ``input_ids``,
    ``attention_mask`` and ``labels`` (all ``(B, T)`` int64). Train on the response only."""
    T = max(len(e["prompt_ids"]) + len(e["response_ids"]) for e in examples)
    input_ids, attention_mask, labels = [], [], []
    for e in examples:
        ids = list(e["prompt_ids"]) + list(e["response_ids"])
        pad = T - len(ids)
        input_ids.append(ids + [pad_id] * pad)
        attention_mask.append([1] * len(ids) + [0] * pad)
        labels.append(ids[1:] + [pad_id] * (pad + 1))
    return {"input_ids": torch.tensor(input_ids), "attention_mask": torch.tensor(attention_mask),
            "labels": torch.tensor(labels)}

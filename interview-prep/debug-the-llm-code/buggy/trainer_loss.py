"""Program 4 (as a colleague sent it): a ``transformers.Trainer`` subclass with a hand-written
token-level cross-entropy (so that the loss can later be re-weighted).

It trains with ``gradient_accumulation_steps=4``. The loss curve looks odd and evaluation crashes.
Find the bugs.
"""
from __future__ import annotations

import torch.nn.functional as F
from transformers import Trainer


class TokenLossTrainer(Trainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs.logits
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1),
                               ignore_index=-100)
        return loss

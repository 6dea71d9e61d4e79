"""Lab 5.2: nanoGPT on TinyStories: prepare -> train -> sample, with the Phase 4 MiniGPT.

(First part: the learning-rate schedule; the rest of the lab follows.)
"""
from __future__ import annotations

import math

__all__ = ["get_lr"]


def get_lr(step: int, *, max_lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """Learning rate at optimizer step ``step``: linear warmup, then cosine decay to ``min_lr``.

    * ``step < warmup_steps``: ``max_lr * (step + 1) / warmup_steps`` (step 0 already moves the
      weights a little; the last warmup step reaches ``max_lr``).
    * ``warmup_steps <= step <= max_steps``: ``min_lr + 0.5 * (max_lr - min_lr) * (1 + cos(pi * r))``
      with ``r = (step - warmup_steps) / (max_steps - warmup_steps)``, so ``max_lr`` at the end of
      warmup and exactly ``min_lr`` at ``max_steps``.
    * ``step > max_steps``: ``min_lr``.

    Loshchilov & Hutter (2017) for cosine annealing; Goyal et al. (2017) for linear warmup.

    Raises:
        ValueError: negative step, ``min_lr > max_lr``, a negative rate, ``warmup_steps < 0`` or
            ``max_steps < warmup_steps``.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    if not (0 <= min_lr <= max_lr) or not math.isfinite(max_lr):
        raise ValueError(f"need 0 <= min_lr <= max_lr (finite), got min_lr={min_lr}, max_lr={max_lr}")
    if warmup_steps < 0 or max_steps < warmup_steps:
        raise ValueError(f"need 0 <= warmup_steps <= max_steps, got warmup_steps={warmup_steps}, "
                         f"max_steps={max_steps}")
    # BEGIN SOLUTION linear warmup (step + 1) / warmup_steps * max_lr; past max_steps min_lr; in between cosine from max_lr down to min_lr (easy, ~10 min)
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    ratio = (step - warmup_steps) / (max_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * ratio))
    # END SOLUTION

"""Program 1 (as a colleague sent it): a training loop with gradient accumulation, plus evaluation.

It runs without an error and the loss goes down. It is still wrong. Find the bugs.
"""
from __future__ import annotations


def train_epoch(model, optimizer, micro_batches, loss_fn, accum_steps):
    """One pass over ``micro_batches``; one optimizer step every ``accum_steps`` micro-batches.

    The effective batch is ``accum_steps`` micro-batches, so one step should equal one step
    on the concatenated batch. Returns the mean loss of each optimizer step.
    """
    model.train()
    losses = []
    running = 0.0
    for i, (x, y) in enumerate(micro_batches):
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        running += loss.item()
        if (i + 1) % accum_steps == 0:
            optimizer.step()
            losses.append(running / accum_steps)
            running = 0.0
    return losses


def evaluate(model, batches, loss_fn):
    """Mean loss over ``batches`` (weighted by batch size)."""
    total, n = 0.0, 0
    for x, y in batches:
        loss = loss_fn(model(x), y)
        total += loss.item() * len(x)
        n += len(x)
    return total / n

"""Capstone 8: the full RLHF loop (reward model -> PPO with a KL anchor), GRPO, and TRL, on a 1.8M model.

The InstructGPT recipe at laptop scale, written from the losses up and run on the curriculum model
(Phase 5's 1.8M-parameter Llama-style TinyStories model, ``labkit.curriculum_model_path("main")``):

- ``compute_gae``, ``masked_whiten``, ``ppo_policy_loss`` (clipped surrogate), ``ppo_value_loss``
  (clipped value loss), ``kl_penalized_rewards`` (per-token ``-β·KL`` plus the score on the last
  token) and ``AdaptiveKLController`` (Ziegler et al. 2019): PPO (Schulman et al. 2017) with a value
  head on the policy, against a frozen reference copy of the starting model.
- ``group_advantages`` and ``grpo_loss``: GRPO (Shao et al. 2024, DeepSeekMath), no value head, the
  baseline is the mean reward of the other samples of the same prompt.
- Rewards: a programmatic one (``cheer_reward``: Phase 6 lab 4's cheerfulness judge, positive words
  minus negative words, so "did it work" is a number) and a **learned** one (Phase 6 lab 4's
  Bradley-Terry ``RewardModel``, trained here on the model's own samples ranked by that judge).
- ``reward_hacking_report``: the checks that flag a policy that found an exploit of the learned reward
  (repetition, length, the learned reward rising while the judge it imitates does not).
- ``run_trl_grpo``: TRL's maintained ``GRPOTrainer`` on the same model, prompts and reward.

Run: ``python solution.py`` (smoke self-test, ~23 s CPU), ``python solution.py --small`` (the README's
runs and curves, ~4 min of CPU), ``python solution.py --full`` (the spec-scale config; see the README).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
RM_LAB = "phase-06-finetuning-instruction/lab-04-reward-dpo"

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "PPOConfig",
    "PolicyWithValueHead",
    "Rollout",
    "cheer_reward",
    "compute_gae",
    "group_advantages",
    "grpo_loss",
    "grpo_train",
    "kl_penalized_rewards",
    "learned_reward_model",
    "masked_mean",
    "masked_whiten",
    "ppo_policy_loss",
    "ppo_train",
    "ppo_value_loss",
    "reward_hacking_report",
    "rollout",
    "run_trl_grpo",
    "story_prompts",
]


def _lab(name: str = RM_LAB):
    from labkit import load_lab

    return load_lab(name)


def _check_same_shape(**tensors: torch.Tensor) -> None:
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"shapes differ: {shapes}")
    for k, v in tensors.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise ValueError(f"{k} contains NaN or inf")


# --------------------------------------------------------------------------- the PPO maths
def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1 (all of them, or along ``dim``).

    Raises:
        ValueError: shapes differ, or the mask selects nothing.
    """
    if x.shape != mask.shape:
        raise ValueError(f"x {tuple(x.shape)} and mask {tuple(mask.shape)} differ")
    mask = mask.to(x.dtype)
    if dim is None:
        if mask.sum() == 0:
            raise ValueError("masked_mean: the mask selects no position")
        return (x * mask).sum() / mask.sum()
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Advantage whitening: ``(x − mean) / std`` over the masked positions only; 0 where the mask is 0.

    Statistics come from the real response tokens of the whole batch (padding would drag the mean to
    0 and shrink the std). The variance is the unbiased one (``n − 1``), as in TRL. With
    ``shift_mean=False`` the mean is added back (only the scale changes), for rewards.

    Raises:
        ValueError: shapes differ, NaN/inf, or fewer than two masked positions.
    """
    _check_same_shape(x=x, mask=mask.to(x.dtype))
    n = mask.sum()
    if n < 2:
        raise ValueError(f"masked_whiten needs at least two masked positions, got {int(n)}")
    # BEGIN SOLUTION mean = masked_mean; var = masked sum of (x − mean)² / (n − 1); whitened = (x − mean)·rsqrt(var + eps); add the mean back when not shift_mean; zero outside the mask (easy, ~10 min)
    m = mask.to(x.dtype)
    mean = masked_mean(x, m)
    var = (((x - mean) ** 2) * m).sum() / (n - 1)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * m
    # END SOLUTION


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
                lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over response tokens.

    ``δ_t = r_t + γ·V_{t+1} − V_t`` and ``Â_t = Σ_l (γλ)^l δ_{t+l}``, computed right to left with
    ``Â_t = δ_t + γλ·Â_{t+1}``. Positions where ``mask`` is 0 (after the response ended) count as
    terminal: their reward and value are taken as 0, so nothing leaks back from padding. With
    ``λ = 1`` this is the Monte-Carlo return minus the value; with ``λ = 0`` it is the one-step TD
    error. Returns ``(advantages, returns)``, both (B, T) float, with ``returns = advantages + values``
    (the value head's regression target) and zeros outside the mask.

    Args:
        rewards, values, mask: (B, T); the mask is 1 on response tokens, a prefix of each row.
        gamma, lam: in [0, 1].

    Raises:
        ValueError: shapes differ, NaN/inf, or gamma / lam outside [0, 1].
    """
    _check_same_shape(rewards=rewards, values=values, mask=mask.to(rewards.dtype))
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gamma and lam must be in [0, 1], got gamma={gamma}, lam={lam}")
    # BEGIN SOLUTION zero rewards/values outside the mask; loop t = T−1 … 0 with next_value = values[:, t+1] (0 at the end) and last = δ_t + γλ·last; stack; returns = adv + values; both × mask (medium, ~20 min)
    m = mask.to(rewards.dtype)
    r, v = rewards * m, values * m
    T = r.shape[1]
    last = torch.zeros_like(r[:, 0])
    adv = []
    for t in reversed(range(T)):
        next_v = v[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = r[:, t] + gamma * next_v - v[:, t]
        last = delta + gamma * lam * last
        adv.append(last)
    advantages = torch.stack(adv[::-1], dim=1) * m
    returns = (advantages + v) * m
    return advantages, returns
    # END SOLUTION


def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, clip: float = 0.2) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped surrogate, as a loss to minimise (Schulman et al. 2017, eq. 7).

    ``ρ_t = exp(log π_θ − log π_old)``; per token ``max(−Â·ρ, −Â·clip(ρ, 1−ε, 1+ε))`` (the negative
    of ``min(ρÂ, clip(ρ)Â)``), averaged over the masked tokens. The clip removes the incentive to
    move ``ρ`` outside ``[1−ε, 1+ε]`` in the direction the advantage favours; the ``max`` keeps the
    unclipped term whenever it is the more pessimistic one. Returns ``(loss, stats)`` with stats
    ``clipfrac`` (share of tokens where the clipped term was chosen) and ``approx_kl``
    (``½·mean((log ρ)²)``, a diagnostic of how far the update moved).

    Raises:
        ValueError: shapes differ, NaN/inf, or clip <= 0.
    """
    _check_same_shape(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages,
                      mask=mask.to(logprobs.dtype))
    if clip <= 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    # BEGIN SOLUTION log_ratio = logprobs − old; ratio = exp; pg1 = −A·ratio, pg2 = −A·clamp(ratio, 1−clip, 1+clip); loss = masked_mean(max(pg1, pg2)); clipfrac = masked_mean(pg2 > pg1); approx_kl = ½·masked_mean(log_ratio²) (medium, ~15 min)
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(pg1, pg2), mask)
    stats = {"clipfrac": masked_mean((pg2 > pg1).float(), mask).item(),
             "approx_kl": 0.5 * masked_mean(log_ratio.detach() ** 2, mask).item()}
    return loss, stats
    # END SOLUTION


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                   clip_value: float = 0.2) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped value loss of OpenAI's PPO baselines: ``½·mean(max((V − R)², (V_clip − R)²))``.

    ``V_clip = V_old + clamp(V − V_old, −ε_v, ε_v)``: the value head may not move further than
    ``ε_v`` from the rollout's prediction and be rewarded for it. Returns ``(loss, stats)`` with
    ``vf_clipfrac``.

    Raises:
        ValueError: shapes differ, NaN/inf, or clip_value <= 0.
    """
    _check_same_shape(values=values, old_values=old_values, returns=returns, mask=mask.to(values.dtype))
    if clip_value <= 0:
        raise ValueError(f"clip_value must be > 0, got {clip_value}")
    # BEGIN SOLUTION v_clip = old + clamp(values − old, ±clip_value); l1 = (values − R)², l2 = (v_clip − R)²; loss = ½·masked_mean(max(l1, l2)); vf_clipfrac = masked_mean(l2 > l1) (easy, ~10 min)
    v_clip = old_values + torch.clamp(values - old_values, -clip_value, clip_value)
    l1 = (values - returns) ** 2
    l2 = (v_clip - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(l1, l2), mask)
    return loss, {"vf_clipfrac": masked_mean((l2 > l1).float(), mask).item()}
    # END SOLUTION


def kl_penalized_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                         mask: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards of RLHF: ``−β·(log π − log π_ref)`` on every response token, plus the
    sequence's score on its **last** real token (Ziegler et al. 2019; Ouyang et al. 2022).

    Args:
        scores: (B,) one reward per response (the reward model's or the judge's).
        logprobs, ref_logprobs, mask: (B, T), the sampled tokens' log-probs under the policy that
            generated them and under the frozen reference; the mask is 1 on response tokens.
        kl_coef: β >= 0.

    Returns:
        ``(rewards, kl)``: both (B, T), zero outside the mask; ``kl = log π − log π_ref`` per token
        (its sum over a row is the sample estimate of ``KL(π ‖ π_ref)`` for that response).

    Raises:
        ValueError: shapes differ, a row has no response token, NaN, or kl_coef < 0.
    """
    _check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs, mask=mask.to(logprobs.dtype))
    if scores.shape != logprobs.shape[:1]:
        raise ValueError(f"scores must be (B,) = {tuple(logprobs.shape[:1])}, got {tuple(scores.shape)}")
    if not torch.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
    if (mask.sum(-1) == 0).any():
        raise ValueError("a row of mask is all zero: a response needs at least one token")
    # BEGIN SOLUTION kl = (logprobs − ref)·mask; rewards = −kl_coef·kl; last = mask.sum(−1) − 1 (the mask is a prefix); rewards[b, last[b]] += scores[b] (medium, ~10 min)
    m = mask.to(logprobs.dtype)
    kl = (logprobs - ref_logprobs) * m
    rewards = -kl_coef * kl
    last = mask.long().sum(-1) - 1
    rewards = rewards.clone()
    rewards[torch.arange(rewards.shape[0]), last] += scores.to(rewards.dtype)
    return rewards, kl
    # END SOLUTION


class FixedKLController:
    """A constant KL coefficient β (``update`` does nothing)."""

    def __init__(self, kl_coef: float) -> None:
        if kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value


class AdaptiveKLController:
    """Ziegler et al. (2019)'s proportional controller that steers ``KL(π ‖ π_ref)`` to a target.

    After each batch: ``e = clip(KL / target − 1, −0.2, 0.2)`` and ``β ← β·(1 + e·n_steps / horizon)``.
    KL above the target raises β (a stronger pull back to the reference), KL below lowers it; the
    clip bounds how fast β can move whatever the KL estimate does, and ``horizon`` (in samples) sets
    the time constant.

    Raises:
        ValueError: init_kl_coef < 0, target <= 0 or horizon <= 0.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        if init_kl_coef < 0 or target <= 0 or horizon <= 0:
            raise ValueError(f"need init_kl_coef >= 0, target > 0, horizon > 0; got {init_kl_coef}, {target}, {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Update β from the batch's mean sequence KL ``current_kl`` over ``n_steps`` samples; return it.

        Raises:
            ValueError: current_kl is NaN/inf or n_steps < 0.
        """
        if not math.isfinite(current_kl) or n_steps < 0:
            raise ValueError(f"current_kl must be finite and n_steps >= 0, got {current_kl}, {n_steps}")
        # BEGIN SOLUTION error = clip(current_kl / target − 1, −0.2, 0.2); value *= 1 + error·n_steps / horizon; return value (easy, ~5 min)
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value
        # END SOLUTION


# --------------------------------------------------------------------------- GRPO maths
def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4, scale: bool = True) -> torch.Tensor:
    """GRPO's advantages: each reward minus the mean of its group (the samples of the same prompt),
    divided by the group's standard deviation (unbiased) + ``eps`` when ``scale``.

    ``rewards`` is (B,) with the ``group_size`` samples of each prompt consecutive. A group whose
    samples all score the same gets advantage 0 (nothing to learn from). Returns (B,).

    Raises:
        ValueError: B is not a multiple of group_size, group_size < 2, or NaN.
    """
    if rewards.dim() != 1 or group_size < 2 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be (B,) with B a multiple of group_size >= 2; got "
                         f"{tuple(rewards.shape)} and group_size={group_size}")
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards contain NaN or inf")
    # BEGIN SOLUTION view (n_groups, G); subtract the row mean; divide by row std (unbiased) + eps when scale; flatten (easy, ~5 min)
    g = rewards.float().view(-1, group_size)
    adv = g - g.mean(dim=1, keepdim=True)
    if scale:
        adv = adv / (g.std(dim=1, keepdim=True) + eps)
    return adv.reshape(-1)
    # END SOLUTION


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
              advantages: torch.Tensor, mask: torch.Tensor, clip: float = 0.2,
              beta: float = 0.04) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO's loss: PPO's clipped surrogate with one advantage per sequence, plus ``β·KL`` in the loss.

    ``advantages`` (B,) is broadcast over the tokens of each response. The KL to the reference is
    the "k3" estimator of DeepSeekMath, ``exp(ref − logp) − (ref − logp) − 1`` per token (unbiased,
    always >= 0), added to the loss rather than to the reward (there is no value head to carry it).
    Token-level mean over the whole batch. Returns ``(loss, stats)`` with ``kl`` and ``clipfrac``.

    Raises:
        ValueError: shapes differ, NaN, clip <= 0 or beta < 0.
    """
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(f"advantages must be (B,) = {tuple(logprobs.shape[:1])}, got {tuple(advantages.shape)}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    _check_same_shape(ref_logprobs=ref_logprobs, logprobs=logprobs)
    # BEGIN SOLUTION pg, stats = ppo_policy_loss(logprobs, old, advantages[:, None] expanded, mask, clip); d = ref − logprobs; k3 = exp(d) − d − 1; loss = pg + beta·masked_mean(k3); stats["kl"] (medium, ~10 min)
    adv = advantages[:, None].expand_as(logprobs)
    pg, stats = ppo_policy_loss(logprobs, old_logprobs, adv, mask, clip)
    d = ref_logprobs - logprobs
    k3 = masked_mean(torch.exp(d) - d - 1.0, mask)
    stats["kl"] = k3.item()
    return pg + beta * k3, stats
    # END SOLUTION


# --------------------------------------------------------------------------- models and rollouts
class PolicyWithValueHead(nn.Module):
    """A causal LM with a scalar value head on its last hidden state (TRL's ``AutoModelForCausalLMWithValueHead``).

    ``forward`` returns ``(logits (B, L, V), values (B, L))``. The value at position ``t`` estimates
    the return from the state "everything up to and including token t", i.e. before token ``t+1``
    is sampled. The head starts at zero so the first advantages are the raw rewards.

    ``detach_value=True`` (the default) reads the value from the trunk's hidden state with the
    gradient stopped: the value loss trains the head only. Sharing the trunk (``False``, TRL's
    old ``AutoModelForCausalLMWithValueHead``) lets the value loss, whose scale grows with β·KL and
    the reward, steer the policy's own weights; on this 1.8M model that wrecked the policy once
    the adaptive β grew (see the README's "what failed").
    """

    def __init__(self, lm: nn.Module, detach_value: bool = True) -> None:
        super().__init__()
        self.lm = lm
        self.detach_value = detach_value
        self.v_head = nn.Linear(lm.config.hidden_size, 1)
        nn.init.zeros_(self.v_head.weight)
        nn.init.zeros_(self.v_head.bias)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> PolicyWithValueHead:
        from transformers import AutoModelForCausalLM

        return cls(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, output_hidden_states=True)
        h = out.hidden_states[-1]
        return out.logits, self.v_head(h.detach() if self.detach_value else h).squeeze(-1)


def _logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    if isinstance(model, PolicyWithValueHead):
        return model(input_ids, attention_mask)[0]
    pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos).logits


def _token_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return torch.gather(F.log_softmax(logits.float(), -1), 2, ids.unsqueeze(-1)).squeeze(-1)


@dataclass
class Rollout:
    """One batch of sampled responses.

    ``input_ids`` / ``attention_mask`` (B, P+T): left-padded prompts then responses (right-padded);
    ``response_mask`` (B, T): 1 on response tokens up to and including the stop token; ``texts``:
    the decoded responses; ``P``: the padded prompt width.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    texts: list[str]
    P: int

    @property
    def response_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.P:]


def response_logprobs(model: nn.Module, ro: Rollout, with_values: bool = False):
    """Log-probs (B, T) of the sampled response tokens under ``model`` (and values (B, T) when asked).

    Token ``t`` of the response is predicted at position ``P + t − 1``; its value is read there too.
    """
    if with_values:
        logits, values = model(ro.input_ids, ro.attention_mask)
        values = values[:, ro.P - 1: -1]
    else:
        logits, values = _logits(model, ro.input_ids, ro.attention_mask), None
    lp = _token_logprobs(logits[:, ro.P - 1: -1], ro.response_ids)
    return (lp, values) if with_values else lp


@torch.no_grad()
def rollout(model: nn.Module, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int = 24,
            temperature: float = 1.0, seed: int = 0) -> Rollout:
    """Sample one response per prompt (ancestral sampling, no top-k/top-p: PPO's log-probs must be
    those of the distribution that sampled). Stops at ``<|endoftext|>`` / ``<|im_end|>``; everything
    after the stop token is padding (mask 0)."""
    lm = model.lm if isinstance(model, PolicyWithValueHead) else model
    was_training = lm.training
    lm.eval()
    stops = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")]
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = old_side
    torch.manual_seed(seed)
    out = lm.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature, top_k=0,
                      top_p=1.0, pad_token_id=tokenizer.pad_token_id, eos_token_id=stops)
    lm.train(was_training)
    P = enc["input_ids"].shape[1]
    resp = out[:, P:]
    if resp.shape[1] < max_new_tokens:  # every row stopped early: pad to a fixed width
        resp = F.pad(resp, (0, max_new_tokens - resp.shape[1]), value=tokenizer.pad_token_id)
    is_stop = torch.zeros_like(resp, dtype=torch.bool)
    for s in stops:
        is_stop |= resp == s
    after_stop = (is_stop.long().cumsum(-1) - is_stop.long()) > 0  # strictly after the first stop
    resp_mask = (~after_stop).long()
    resp = resp.masked_fill(after_stop, tokenizer.pad_token_id)
    ids = torch.cat([enc["input_ids"], resp], 1)
    am = torch.cat([enc["attention_mask"], resp_mask], 1)
    texts = [t.strip() for t in tokenizer.batch_decode(resp, skip_special_tokens=True)]
    return Rollout(ids, am, resp_mask, texts, P)


# --------------------------------------------------------------------------- prompts and rewards
TOPICS = ("dog", "cat", "bird", "ball", "tree", "park", "fish", "cake", "boat", "car", "sun", "frog",
          "bear", "flower", "toy", "rabbit", "duck", "kite", "hat", "box", "garden", "train", "moon", "bus")
OPENINGS = ("Once upon a time, there was a little {}.", "One day, a girl found a {}.",
            "Tom and his mom saw a big {}.")
HELD_OUT = ("cat", "cake", "frog", "kite", "moon", "bus")


def story_prompts(tokenizer: Any, topics: Sequence[str] = TOPICS, bos: bool = True) -> list[str]:
    """A story opening for every topic × opening: the curriculum model is a TinyStories model and
    continues stories; ``<|endoftext|>`` is prepended (it saw one before every story in pre-training)."""
    prefix = tokenizer.eos_token if bos else ""
    return [prefix + o.format(t) for t in topics for o in OPENINGS]


def cheer_reward(texts: Sequence[str]) -> torch.Tensor:
    """The programmatic reward: Phase 6 lab 4's ``cheer_score`` (positive minus negative words), (B,)."""
    score = _lab().cheer_score
    return torch.tensor([float(score(t)) for t in texts])


_TOKEN = re.compile(r"[a-z']+")


def distinct_cheer(texts: Sequence[str]) -> torch.Tensor:
    """The gold judge the learned reward model imitates, hardened against repetition: each positive
    or negative word counts once per response (``happy happy happy`` is worth one ``happy``)."""
    lab = _lab()
    out = []
    for t in texts:
        words = set(_TOKEN.findall(t.lower()))
        out.append(float(len(words & lab.POSITIVE_WORDS) - len(words & lab.NEGATIVE_WORDS)))
    return torch.tensor(out)


def repetition_rate(text: str, n: int = 2) -> float:
    """Share of a response's word n-grams that already appeared earlier in it (0 for fresh text)."""
    words = _TOKEN.findall(text.lower())
    grams = [tuple(words[i: i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


# --------------------------------------------------------------------------- the learned reward model (lab 6.4)
RM_CONFIG = dict(n_per_prompt=6, max_new_tokens=16, steps=40, batch_size=8, lr=1e-3, max_length=40, seed=0)


def _rm_key(model_dir: Path, cfg: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(cfg, sort_keys=True).encode())
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        h.update(f.name.encode())
        h.update(str(f.stat().st_size).encode())
    lab_dir = Path(_lab().__file__).resolve().parent
    for src in (Path(__file__).resolve(), lab_dir / "solution.py"):
        h.update(src.read_bytes())
    import transformers

    h.update(torch.__version__.encode() + transformers.__version__.encode())
    return h.hexdigest()[:16]


def build_reward_model(model_dir: Path, tokenizer: Any, out: Path, cfg: dict = RM_CONFIG) -> dict:
    """Train lab 6.4's ``RewardModel`` (Bradley-Terry) on the curriculum model's own story continuations,
    ranked by ``cheer_score`` (every differently scored pair of ``n_per_prompt`` samples), and save it.

    Train topics exclude ``HELD_OUT``; the returned metrics include the held-out pairwise accuracy.
    """
    lab = _lab()
    from labkit import seed_everything

    seed_everything(cfg["seed"])
    lm, _ = lab.load_policy(model_dir)
    prompts = story_prompts(tokenizer)
    groups = [t for t in TOPICS for _ in OPENINGS]
    responses = lab.sample_responses(lm, tokenizer, prompts, n_per_prompt=cfg["n_per_prompt"],
                                     max_new_tokens=cfg["max_new_tokens"], seed=cfg["seed"])
    # the RM reads "prompt + ' ' + response", as rm_reward_fn will
    pairs = lab.build_preference_pairs([p + " " for p in prompts], responses, lab.cheer_score, groups, all_pairs=True)
    train, test = lab.split_by_group(pairs, HELD_OUT)
    rm = lab.RewardModel.from_pretrained(model_dir)
    hist = lab.train_reward_model(rm, tokenizer, train, steps=cfg["steps"], batch_size=cfg["batch_size"],
                                  lr=cfg["lr"], max_length=cfg["max_length"], seed=cfg["seed"])
    metrics = {"train_pairs": len(train), "test_pairs": len(test), "final_loss": sum(hist[-5:]) / 5,
               "train_acc": lab.pairwise_accuracy(rm, tokenizer, train[::4], max_length=cfg["max_length"]),
               "heldout_acc": lab.pairwise_accuracy(rm, tokenizer, test, max_length=cfg["max_length"])}
    out.mkdir(parents=True, exist_ok=True)
    torch.save(rm.state_dict(), out / "rm.pt")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def learned_reward_model(model_dir: Path, tokenizer: Any, cfg: dict = RM_CONFIG) -> tuple[nn.Module, dict]:
    """The reward model, trained once per checkout and cached in ``.cache/models/cap08-rm-<key16>/``
    (keyed on this file, lab 6.4's solution, the config and the base model), built in a temporary
    folder and renamed into place under a file lock. Returns ``(RewardModel in eval mode, metrics)``."""
    from labkit.cache import build_once
    from labkit.data import cache_dir

    final = build_once(cache_dir() / "models" / f"cap08-rm-{_rm_key(model_dir, cfg)}",
                       lambda tmp: build_reward_model(model_dir, tokenizer, tmp, cfg), ready="rm.pt",
                       message="[capstone 8] training the reward model once")
    rm = _lab().RewardModel.from_pretrained(model_dir)
    rm.load_state_dict(torch.load(final / "rm.pt", map_location="cpu", weights_only=True))
    return rm.eval(), json.loads((final / "metrics.json").read_text())


def rm_reward_fn(rm: nn.Module, tokenizer: Any, prompts_by_text: bool = True,
                 max_length: int = 64) -> Callable[[Sequence[str], Sequence[str]], torch.Tensor]:
    """``(prompts, responses) -> (B,)`` rewards from the learned reward model (prompt + response text)."""
    lab = _lab()

    @torch.no_grad()
    def fn(prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        enc = lab._encode_texts(tokenizer, [p + " " + r for p, r in zip(prompts, responses)], max_length)
        return rm(**enc).float()

    return fn


# --------------------------------------------------------------------------- PPO
@dataclass
class PPOConfig:
    """Every hyperparameter of ``ppo_train`` / ``grpo_train`` (GRPO ignores the value-head ones)."""

    iterations: int = 12
    batch_size: int = 24             # prompts (PPO) or groups × group_size samples (GRPO) per iteration
    max_new_tokens: int = 20
    ppo_epochs: int = 2
    minibatch_size: int = 12
    lr: float = 2e-3
    clip: float = 0.2
    clip_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    init_kl_coef: float = 0.05
    adaptive_kl: bool = True
    kl_target: float = 3.0           # nats per response (sequence KL)
    kl_horizon: int = 200            # samples
    whiten_advantages: bool = True
    max_grad_norm: float = 1.0
    temperature: float = 1.0
    group_size: int = 4              # GRPO
    grpo_beta: float = 0.04          # GRPO
    seed: int = 0


RewardFn = Callable[[Sequence[str], Sequence[str]], torch.Tensor]


def _pick(prompts: Sequence[str], n: int, it: int, seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed * 100_003 + it)
    idx = torch.randint(0, len(prompts), (n,), generator=g).tolist()
    return [prompts[i] for i in idx]


def _entropy(logits: torch.Tensor, mask: torch.Tensor) -> float:
    lp = F.log_softmax(logits.float(), -1)
    return masked_mean(-(lp.exp() * lp).sum(-1), mask).item()


def ppo_train(policy: PolicyWithValueHead, ref: nn.Module, tokenizer: Any, prompts: Sequence[str],
              reward_fn: RewardFn, cfg: PPOConfig, gold_fn: Callable[[Sequence[str]], torch.Tensor] | None = None,
              log: Callable[[str], None] | None = None) -> list[dict[str, float]]:
    """PPO-RLHF: rollout -> score -> per-token KL-penalised rewards -> GAE -> whitened advantages ->
    ``ppo_epochs`` of shuffled minibatch updates with the clipped policy and value losses.

    ``reward_fn(prompts, responses) -> (B,)``; ``gold_fn(responses) -> (B,)`` (optional) is logged
    next to it (the judge a learned reward stands in for). Returns one dict per iteration: ``score``
    (mean reward), ``gold``, ``kl`` (mean sequence KL to the reference), ``kl_coef``, ``entropy``
    (mean per-token entropy of the rollout policy), losses, clip fractions, mean response length.
    """
    if not prompts:
        raise ValueError("ppo_train: no prompts")
    from labkit import seed_everything

    seed_everything(cfg.seed)
    ctl = (AdaptiveKLController(cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl
           else FixedKLController(cfg.init_kl_coef))
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr, eps=1e-5)
    ref.eval()
    history = []
    for it in range(cfg.iterations):
        t0 = time.perf_counter()
        batch_prompts = _pick(prompts, cfg.batch_size, it, cfg.seed)
        ro = rollout(policy, tokenizer, batch_prompts, max_new_tokens=cfg.max_new_tokens,
                     temperature=cfg.temperature, seed=cfg.seed * 7919 + it)
        mask = ro.response_mask
        with torch.no_grad():
            policy.eval()
            logits, values = policy(ro.input_ids, ro.attention_mask)
            old_lp = _token_logprobs(logits[:, ro.P - 1: -1], ro.response_ids)
            old_values = values[:, ro.P - 1: -1]
            entropy = _entropy(logits[:, ro.P - 1: -1], mask)
            ref_lp = response_logprobs(ref, ro)
            scores = reward_fn(batch_prompts, ro.texts).float()
            rewards, kl = kl_penalized_rewards(scores, old_lp, ref_lp, mask, ctl.value)
            adv, returns = compute_gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
            if cfg.whiten_advantages:
                adv = masked_whiten(adv, mask)
        policy.train()
        stats: dict[str, list[float]] = {"pg_loss": [], "vf_loss": [], "clipfrac": [], "vf_clipfrac": [], "approx_kl": []}
        for _epoch in range(cfg.ppo_epochs):
            perm = torch.randperm(len(batch_prompts))
            for s in range(0, len(perm), cfg.minibatch_size):
                idx = perm[s: s + cfg.minibatch_size]
                mb = Rollout(ro.input_ids[idx], ro.attention_mask[idx], mask[idx], [], ro.P)
                lp, v = response_logprobs(policy, mb, with_values=True)
                pg, st = ppo_policy_loss(lp, old_lp[idx], adv[idx], mask[idx], cfg.clip)
                vf, vst = ppo_value_loss(v, old_values[idx], returns[idx], mask[idx], cfg.clip_value)
                loss = pg + cfg.vf_coef * vf
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
                opt.step()
                for k, val in {**st, **vst, "pg_loss": pg.item(), "vf_loss": vf.item()}.items():
                    stats[k].append(val)
        mean_kl = kl.sum(-1).mean().item()
        row = {"iteration": it, "score": scores.mean().item(), "kl": mean_kl, "kl_coef": ctl.value,
               "entropy": entropy, "length": mask.sum(-1).float().mean().item(),
               "seconds": time.perf_counter() - t0, **{k: sum(v) / len(v) for k, v in stats.items()}}
        if gold_fn is not None:
            row["gold"] = gold_fn(ro.texts).float().mean().item()
        ctl.update(mean_kl, len(batch_prompts))
        history.append(row)
        if log:
            log(f"  PPO it {it:3d}  score {row['score']:+.3f}  KL {row['kl']:.3f}  β {row['kl_coef']:.4f}  "
                f"H {row['entropy']:.3f}  clip {row['clipfrac']:.2f}  len {row['length']:.1f}")
    policy.eval()
    return history


def grpo_train(policy: nn.Module, ref: nn.Module, tokenizer: Any, prompts: Sequence[str], reward_fn: RewardFn,
               cfg: PPOConfig, log: Callable[[str], None] | None = None) -> list[dict[str, float]]:
    """GRPO: ``batch_size // group_size`` prompts × ``group_size`` samples each, group-relative
    advantages, ``ppo_epochs`` of the clipped loss with the k3 KL term. No value head, no GAE: the
    policy is a plain causal LM (a ``PolicyWithValueHead``'s head is simply unused)."""
    if cfg.batch_size % cfg.group_size:
        raise ValueError(f"batch_size {cfg.batch_size} is not a multiple of group_size {cfg.group_size}")
    from labkit import seed_everything

    seed_everything(cfg.seed)
    lm = policy.lm if isinstance(policy, PolicyWithValueHead) else policy
    opt = torch.optim.Adam(lm.parameters(), lr=cfg.lr, eps=1e-5)
    ref.eval()
    history = []
    n_groups = cfg.batch_size // cfg.group_size
    for it in range(cfg.iterations):
        t0 = time.perf_counter()
        group_prompts = _pick(prompts, n_groups, it, cfg.seed)
        batch_prompts = [p for p in group_prompts for _ in range(cfg.group_size)]
        ro = rollout(lm, tokenizer, batch_prompts, max_new_tokens=cfg.max_new_tokens,
                     temperature=cfg.temperature, seed=cfg.seed * 7919 + it)
        mask = ro.response_mask
        with torch.no_grad():
            lm.eval()
            logits = _logits(lm, ro.input_ids, ro.attention_mask)[:, ro.P - 1: -1]
            old_lp = _token_logprobs(logits, ro.response_ids)
            entropy = _entropy(logits, mask)
            ref_lp = response_logprobs(ref, ro)
            scores = reward_fn(batch_prompts, ro.texts).float()
            adv = group_advantages(scores, cfg.group_size)
        lm.train()
        losses, kls, clipf = [], [], []
        for _epoch in range(cfg.ppo_epochs):
            perm = torch.randperm(len(batch_prompts))
            for s in range(0, len(perm), cfg.minibatch_size):
                idx = perm[s: s + cfg.minibatch_size]
                mb = Rollout(ro.input_ids[idx], ro.attention_mask[idx], mask[idx], [], ro.P)
                lp = response_logprobs(lm, mb)
                loss, st = grpo_loss(lp, old_lp[idx], ref_lp[idx], adv[idx], mask[idx], cfg.clip, cfg.grpo_beta)
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(lm.parameters(), cfg.max_grad_norm)
                opt.step()
                losses.append(loss.item())
                kls.append(st["kl"])
                clipf.append(st["clipfrac"])
        seq_kl = ((old_lp - ref_lp) * mask).sum(-1).mean().item()
        row = {"iteration": it, "score": scores.mean().item(), "kl": seq_kl, "entropy": entropy,
               "length": mask.sum(-1).float().mean().item(), "loss": sum(losses) / len(losses),
               "k3": sum(kls) / len(kls), "clipfrac": sum(clipf) / len(clipf), "seconds": time.perf_counter() - t0}
        history.append(row)
        if log:
            log(f"  GRPO it {it:3d}  score {row['score']:+.3f}  KL {row['kl']:.3f}  H {row['entropy']:.3f}  "
                f"len {row['length']:.1f}")
    lm.eval()
    return history


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_policy(model: nn.Module, ref: nn.Module, tokenizer: Any, prompts: Sequence[str],
                    reward_fn: RewardFn | None = None, n_per_prompt: int = 2, max_new_tokens: int = 20,
                    seed: int = 1234) -> dict[str, Any]:
    """Fresh samples on ``prompts``: mean cheer score, distinct-word cheer, learned reward (when
    ``reward_fn``), sequence KL to ``ref``, mean length, 2-gram repetition rate, and the texts."""
    flat = [p for p in prompts for _ in range(n_per_prompt)]
    ro = rollout(model, tokenizer, flat, max_new_tokens=max_new_tokens, seed=seed)
    lp = response_logprobs(model if not isinstance(model, PolicyWithValueHead) else model.lm, ro)
    ref_lp = response_logprobs(ref, ro)
    out = {"cheer": cheer_reward(ro.texts).mean().item(), "gold": distinct_cheer(ro.texts).mean().item(),
           "kl": ((lp - ref_lp) * ro.response_mask).sum(-1).mean().item(),
           "length": ro.response_mask.sum(-1).float().mean().item(),
           "repetition": sum(repetition_rate(t) for t in ro.texts) / len(ro.texts), "texts": ro.texts}
    if reward_fn is not None:
        out["reward"] = reward_fn(flat, ro.texts).mean().item()
    return out


def reward_hacking_report(before: dict[str, float], after: dict[str, float], *, max_repetition_increase: float = 0.15,
                          max_length_ratio: float = 1.5, min_gold_share: float = 0.5) -> dict[str, Any]:
    """Flag a policy that is gaming a learned reward, from ``evaluate_policy`` results before / after.

    Three checks, each a known signature of reward hacking (the spec's reward-hacking taxonomy):

    - ``repetition``: the 2-gram repetition rate rose by more than ``max_repetition_increase``
      (degenerate loops: ``happy happy happy``);
    - ``length``: mean response length grew more than ``max_length_ratio``× (length explosion);
    - ``proxy_gap``: the proxy (``cheer``: the raw judge, which counts a word every time it appears,
      and which the learned reward model imitates) rose by more than 0.5 but the hardened gold judge
      (``gold``: ``distinct_cheer``, each word once) rose by less than ``min_gold_share`` of that:
      the policy is buying reward the goal does not pay for, exactly what a repetition exploit does.

    Returns ``{"flags": [names], "hacked": bool, **measured deltas}``.
    """
    d_rep = after["repetition"] - before["repetition"]
    ratio = after["length"] / max(before["length"], 1e-9)
    d_cheer = after["cheer"] - before["cheer"]
    d_gold = after["gold"] - before["gold"]
    flags = []
    if d_rep > max_repetition_increase:
        flags.append("repetition")
    if ratio > max_length_ratio:
        flags.append("length")
    if d_cheer > 0.5 and d_gold < min_gold_share * d_cheer:
        flags.append("proxy_gap")
    return {"flags": flags, "hacked": bool(flags), "d_repetition": d_rep, "length_ratio": ratio,
            "d_cheer": d_cheer, "d_gold": d_gold}


# --------------------------------------------------------------------------- TRL's maintained trainer
def trl_trainers() -> dict[str, bool]:
    """Which of TRL's online RL trainers the installed version ships (PPO moved out of the core in 0.2x)."""
    import importlib

    import trl

    out = {"version": trl.__version__}
    for name in ("PPOTrainer", "GRPOTrainer", "RLOOTrainer"):
        found = hasattr(trl, name)
        if not found:
            try:
                found = hasattr(importlib.import_module("trl.experimental.ppo"), name)
            except Exception:  # noqa: BLE001 - any import failure means "not shipped"
                found = False
        out[name] = found
    return out


def run_trl_grpo(model_dir: Path, tokenizer: Any, prompts: Sequence[str], cfg: PPOConfig,
                 out_dir: str | Path) -> tuple[nn.Module, list[dict[str, float]]]:
    """``trl.GRPOTrainer`` on the same model, prompts and reward (``cheer_score``) as ``grpo_train``.

    Matched settings: ``group_size`` generations per prompt, ``batch_size`` completions per rollout
    split in minibatches of ``minibatch_size`` (``steps_per_generation``), ``ppo_epochs`` passes over
    each rollout (``num_iterations``), ``max_new_tokens``, temperature, learning rate, ``grpo_beta``,
    ``clip``. TRL's own defaults are kept where ours has no counterpart (its loss aggregation, reward
    scaling by the group std). Returns ``(trained model, [{"step", "score", "kl", "entropy", "seconds"}, ...])``.
    """
    import datasets
    from trl import GRPOConfig, GRPOTrainer

    score = _lab().cheer_score

    def cheer(completions: list[str], **kwargs: Any) -> list[float]:
        return [float(score(c)) for c in completions]

    ds = datasets.Dataset.from_dict({"prompt": list(prompts)})
    per_rollout = cfg.batch_size // cfg.minibatch_size  # optimizer steps per epoch over one rollout batch
    args = GRPOConfig(output_dir=str(out_dir), per_device_train_batch_size=cfg.minibatch_size,
                      steps_per_generation=per_rollout, num_generations=cfg.group_size,
                      max_completion_length=cfg.max_new_tokens, max_steps=cfg.iterations * per_rollout * cfg.ppo_epochs,
                      num_iterations=cfg.ppo_epochs, learning_rate=cfg.lr, beta=cfg.grpo_beta, epsilon=cfg.clip,
                      temperature=cfg.temperature, top_k=0, top_p=1.0, max_grad_norm=cfg.max_grad_norm,
                      lr_scheduler_type="constant", warmup_steps=0, logging_steps=1, report_to="none",
                      save_strategy="no", use_cpu=True, bf16=False, seed=cfg.seed, disable_tqdm=True,
                      dataloader_num_workers=0)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trainer = GRPOTrainer(model=model, reward_funcs=cheer, args=args, train_dataset=ds, processing_class=tokenizer)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # the per-step dicts; we print our own summary
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    rows = []
    for rec in trainer.state.log_history:
        if "reward" in rec:  # logged once per generation batch, i.e. per rollout
            length = float(rec.get("completions/mean_length", cfg.max_new_tokens))
            # TRL logs the per-token mean of the k3 estimator; × length ≈ the per-response KL we log
            rows.append({"step": int(rec.get("step", len(rows))), "score": float(rec["reward"]),
                         "kl": float(rec.get("kl", float("nan"))) * length, "kl_token": float(rec.get("kl", float("nan"))),
                         "entropy": float(rec.get("entropy", float("nan"))), "length": length})
    for r in rows:
        r["seconds"] = wall / max(len(rows), 1)
    return trainer.model.eval(), rows


# --------------------------------------------------------------------------- plots and tables
def plot_curves(runs: dict[str, list[dict[str, float]]], path: Path, kl_target: float | None = None) -> Path:
    """Reward, sequence KL and entropy per iteration for each run (one line per run), one PNG."""
    from labkit.plots import plt, savefig

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for name, hist in runs.items():
        its = list(range(len(hist)))
        for ax, key in zip(axes, ("score", "kl", "entropy")):
            ys = [h.get(key, float("nan")) for h in hist]
            ax.plot(its, ys, marker="o", ms=3, label=name)
    for ax, title in zip(axes, ("reward (mean per batch)", "KL(π ‖ π_ref) per response (nats)",
                                "policy entropy per token (nats)")):
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    if kl_target is not None:
        axes[1].axhline(kl_target, color="grey", ls="--", lw=1, label="KL target")
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return savefig(fig, path)


def _fmt(v: Any) -> str:
    return f"{v:+.3f}" if isinstance(v, float) else str(v)


def table(rows: Sequence[dict[str, Any]], cols: Sequence[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- configurations
# the smoke run (self-test and grader): PPO on the cheer reward, ~8 s of CPU
SMOKE = PPOConfig(iterations=8, batch_size=16, minibatch_size=16, max_new_tokens=16, lr=5e-4,
                  init_kl_coef=0.3, kl_target=6.0, kl_horizon=32)
# the README's runs (`--small`): longer, and the learned-reward and no-KL runs next to it
SMALL = replace(SMOKE, iterations=30, batch_size=32, minibatch_size=16, kl_horizon=256)
# the reward-hacking demonstrations: no KL anchor, a 6x step (the judge in the smoke run, the RM in --small)
HACK_SMOKE = replace(SMOKE, iterations=6, minibatch_size=8, init_kl_coef=0.0, adaptive_kl=False, lr=3e-3)
HACK = replace(SMALL, init_kl_coef=0.0, adaptive_kl=False, lr=3e-3)
GRPO_SMALL = replace(SMALL, batch_size=32, minibatch_size=16, group_size=4, grpo_beta=0.04)
# full mode: the spec's scale (a real SFT model with LoRA on a GPU); documented, not run here
FULL = replace(SMALL, iterations=500, batch_size=128, minibatch_size=32, max_new_tokens=128, lr=1.4e-5,
               ppo_epochs=4, init_kl_coef=0.05, kl_target=6.0, kl_horizon=10_000)


def hand_made_exploit(n: int = 8) -> list[str]:
    """Degenerate "cheerful" responses: a loop of rewarded words, the text a repetition hack converges to."""
    words = ["happy", "smiled", "friends", "loved"]
    return [" ".join([words[i % len(words)]] * 12) + "." for i in range(n)]


def load_models(model_dir: Path) -> tuple[PolicyWithValueHead, nn.Module]:
    """A fresh policy (with a zero value head) and its frozen reference copy, from the HF folder."""
    policy = PolicyWithValueHead.from_pretrained(model_dir)
    ref = copy.deepcopy(policy.lm).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return policy, ref


def model_dir() -> Path:
    from labkit import curriculum_model_path

    return curriculum_model_path("main") / "hf"


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _eval_row(name: str, ev: dict[str, Any]) -> dict[str, Any]:
    row = {"policy": name}
    row.update({k: float(v) for k, v in ev.items() if k != "texts"})
    return row


# --------------------------------------------------------------------------- self-test / runs
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="the README's runs: PPO (judge, learned RM, no-KL hack), "
                    "GRPO, TRL GRPOTrainer, curves (a few minutes on 2 CPU cores)")
    ap.add_argument("--full", action="store_true", help="spec scale (GPU): same code path, bigger config")
    ap.add_argument("--no-trl", action="store_true", help="skip the TRL GRPOTrainer run")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    t_start = time.perf_counter()
    failures: list[str] = []
    log = print

    # 1. the maths against hand computations
    r = torch.tensor([[0.0, 0.0, 1.0]])
    v = torch.tensor([[0.5, 0.2, 0.7]])
    m = torch.ones(1, 3)
    adv, ret = compute_gae(r, v, m, gamma=1.0, lam=1.0)
    mc = torch.tensor([[1.0, 1.0, 1.0]]) - v
    print(f"GAE(λ=1, γ=1) = {adv.tolist()[0]}  returns − values = {mc.tolist()[0]}")
    if not torch.allclose(adv, mc):
        failures.append("GAE with λ=γ=1 is not returns − values")
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    ctl.update(12.0, 256)
    print(f"KL controller: KL 12 vs target 6, 256 samples: β 0.1 -> {ctl.value:.6f} (expected {0.1 * (1 + 0.2 * 256 / 10_000):.6f})")

    mdir = model_dir()
    tok = load_tokenizer(mdir)
    prompts = story_prompts(tok)
    train_prompts = [p for p, t in zip(prompts, [t for t in TOPICS for _ in OPENINGS]) if t not in HELD_OUT]
    test_prompts = story_prompts(tok, HELD_OUT)
    cfg = FULL if args.full else (SMALL if args.small else SMOKE)
    out = HERE / "outputs"
    out.mkdir(exist_ok=True)

    # 2. PPO on the programmatic reward
    policy, ref = load_models(mdir)
    before = evaluate_policy(ref, ref, tok, test_prompts, max_new_tokens=cfg.max_new_tokens)
    print(f"\nPPO on the cheer judge ({cfg.iterations} iterations × {cfg.batch_size} samples, "
          f"KL target {cfg.kl_target} nats, adaptive β from {cfg.init_kl_coef})")
    judge = lambda ps, rs: cheer_reward(rs)  # noqa: E731
    hist = ppo_train(policy, ref, tok, train_prompts, judge, cfg, gold_fn=distinct_cheer, log=log)
    after = evaluate_policy(policy, ref, tok, test_prompts, max_new_tokens=cfg.max_new_tokens)
    runs = {"PPO, judge": hist}
    rows = [_eval_row("reference (curriculum model)", before), _eval_row("PPO, cheer judge", after)]
    print(f"held-out prompts: cheer {before['cheer']:+.3f} -> {after['cheer']:+.3f}, KL {after['kl']:.2f} "
          f"(target {cfg.kl_target})")
    if not after["cheer"] > before["cheer"] + 0.3:
        failures.append(f"PPO did not raise the held-out cheer score ({before['cheer']:.3f} -> {after['cheer']:.3f})")
    if not max(h["kl"] for h in hist) <= 1.5 * cfg.kl_target:
        if args.small or args.full:  # a longer run: report the overshoot (the README discusses it), do not fail
            print(f"note: the KL peaked at {max(h['kl'] for h in hist):.2f}, above 1.5× its target {cfg.kl_target}")
        else:
            failures.append("PPO's KL left 1.5× its target")

    # 3. reward hacking: the same PPO with no KL anchor and a 6x step finds the judge's loophole
    #    (cheer_score counts a word every time it appears) and the check flags it
    print(f"\nPPO on the cheer judge with no KL anchor (β = 0, lr {HACK_SMOKE.lr}): the reward-hacking case")
    pol_hack, _ = load_models(mdir)
    hist_hack = ppo_train(pol_hack, ref, tok, train_prompts, judge, replace(HACK_SMOKE, iterations=cfg.iterations // 2 + 1)
                          if (args.small or args.full) else HACK_SMOKE, gold_fn=distinct_cheer, log=log)
    hacked = evaluate_policy(pol_hack, ref, tok, test_prompts, max_new_tokens=cfg.max_new_tokens)
    runs["PPO, judge, β=0"] = hist_hack
    rows.append(_eval_row("PPO, cheer judge, β=0", hacked))
    rep_ok, rep_hack = reward_hacking_report(before, after), reward_hacking_report(before, hacked)
    print(f"reward-hacking check: anchored run flags {rep_ok['flags']}, β=0 run flags {rep_hack['flags']} "
          f"(cheer {rep_hack['d_cheer']:+.2f} but distinct-word gold {rep_hack['d_gold']:+.2f}, "
          f"2-gram repetition {rep_hack['d_repetition']:+.2f})")
    print("β=0 samples:", *[f"    {t!r}" for t in hacked["texts"][:3]], sep="\n")
    if rep_ok["hacked"] or not rep_hack["hacked"]:
        failures.append("the reward-hacking check did not separate the anchored run from the β=0 run")

    if args.small or args.full:
        failures += _longer_runs(args, cfg, mdir, tok, train_prompts, test_prompts, before, runs, rows, out)
    else:
        plot_curves(runs, HERE / "figures" / "curves-smoke.png", cfg.kl_target)

    print("\n" + table(rows, ["policy", "cheer", "gold", "reward", "kl", "length", "repetition"]))
    print(f"\ntotal {time.perf_counter() - t_start:.1f} s wall")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("self-test OK")
    return 0


def _longer_runs(args, cfg, mdir, tok, train_prompts, test_prompts, before, runs, rows, out) -> list[str]:
    """``--small`` / ``--full``: PPO on the learned reward, its no-KL hacking run, GRPO, TRL; curves; run.json."""
    failures = []
    log = print
    summary: dict[str, Any] = {"config": asdict(cfg)}
    rm, rm_metrics = learned_reward_model(mdir, tok)
    rm_fn = rm_reward_fn(rm, tok)
    summary["reward_model"] = rm_metrics
    print(f"\nreward model (lab 6.4, Bradley-Terry on {rm_metrics['train_pairs']} cheer-ranked pairs of the model's "
          f"own samples): train acc {rm_metrics['train_acc']:.3f}, held-out topics acc {rm_metrics['heldout_acc']:.3f} "
          f"({rm_metrics['test_pairs']} pairs)")
    exploit = hand_made_exploit(8)
    rn = rm_fn(test_prompts[:8], before["texts"][:8]).mean().item()
    rx = rm_fn(test_prompts[:8], exploit).mean().item()
    summary["rm_exploit"] = {"natural": rn, "exploit": rx}
    print(f"learned reward of natural samples {rn:+.3f} vs a hand-made repetition loop {rx:+.3f}")

    print("\nPPO on the learned reward model")
    pol_rm, ref = load_models(mdir)
    t0 = time.process_time()
    runs["PPO, learned RM"] = ppo_train(pol_rm, ref, tok, train_prompts, rm_fn, cfg, gold_fn=distinct_cheer, log=log)
    summary["ppo_rm_cpu_s"] = time.process_time() - t0
    ev_rm = evaluate_policy(pol_rm, ref, tok, test_prompts, rm_fn, max_new_tokens=cfg.max_new_tokens)
    rows.append(_eval_row("PPO, learned RM", ev_rm))
    rep_rm = reward_hacking_report(before, ev_rm)

    hack_cfg = replace(HACK, iterations=cfg.iterations)
    print("\nPPO on the learned reward model, no KL anchor, lr ×6 (the reward-hacking run on the RM)")
    pol_hack, _ = load_models(mdir)
    runs["PPO, learned RM, β=0"] = ppo_train(pol_hack, ref, tok, train_prompts, rm_fn, hack_cfg,
                                             gold_fn=distinct_cheer, log=log)
    ev_hack = evaluate_policy(pol_hack, ref, tok, test_prompts, rm_fn, max_new_tokens=cfg.max_new_tokens)
    runs.pop("PPO, judge, β=0", None)
    rows.append(_eval_row("PPO, learned RM, β=0", ev_hack))
    rep_hack = reward_hacking_report(before, ev_hack)
    print(f"reward-hacking check: KL-anchored run flags {rep_rm['flags']}; β=0 run flags {rep_hack['flags']}")
    print("β=0 samples:", *[f"    {t!r}" for t in ev_hack["texts"][:4]], sep="\n")
    summary["hacking"] = {"anchored": rep_rm, "no_kl": rep_hack, "no_kl_samples": ev_hack["texts"][:6]}

    gcfg = replace(GRPO_SMALL, iterations=cfg.iterations) if not args.full else cfg
    print(f"\nGRPO on the cheer judge ({gcfg.batch_size // gcfg.group_size} prompts × {gcfg.group_size} samples)")
    pol_g, _ = load_models(mdir)
    t0 = time.process_time()
    judge = lambda ps, rs: cheer_reward(rs)  # noqa: E731
    runs["GRPO, judge"] = grpo_train(pol_g.lm, ref, tok, train_prompts, judge, gcfg, log=log)
    summary["grpo_cpu_s"] = time.process_time() - t0
    ev_g = evaluate_policy(pol_g.lm, ref, tok, test_prompts, rm_fn, max_new_tokens=cfg.max_new_tokens)
    rows.append(_eval_row("GRPO (ours), cheer judge", ev_g))

    avail = trl_trainers()
    summary["trl"] = avail
    print(f"\nTRL {avail['version']}: PPOTrainer {'shipped' if avail['PPOTrainer'] else 'not shipped'}, "
          f"GRPOTrainer {'shipped' if avail['GRPOTrainer'] else 'not shipped'}")
    if avail["GRPOTrainer"] and not args.no_trl:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.process_time()
            trl_model, trl_rows = run_trl_grpo(mdir, tok, train_prompts, gcfg, tmp)
            summary["trl_cpu_s"] = time.process_time() - t0
        runs["GRPO, TRL"] = trl_rows
        for r in trl_rows:
            print(f"  TRL step {r['step']:3d}  score {r['score']:+.3f}  KL {r['kl']:.3f}")
        ev_t = evaluate_policy(trl_model, ref, tok, test_prompts, rm_fn, max_new_tokens=cfg.max_new_tokens)
        rows.append(_eval_row("GRPO (TRL GRPOTrainer), cheer judge", ev_t))
    if args.small:
        first, last = runs["PPO, learned RM"][:3], runs["PPO, learned RM"][-3:]
        if not sum(h["score"] for h in last) > sum(h["score"] for h in first):
            failures.append("PPO on the learned reward did not raise it")
        if not rep_hack["hacked"]:
            print("note: the β=0 run was not flagged this time")
    ppo_runs = {k: v for k, v in runs.items() if k.startswith("PPO")}
    plot_curves(ppo_runs, HERE / "figures" / "curves-ppo.png", cfg.kl_target)
    plot_curves({k: v for k, v in runs.items() if k in ("PPO, judge", "GRPO, judge", "GRPO, TRL")},
                HERE / "figures" / "curves-grpo-trl.png", cfg.kl_target)
    summary["runs"] = runs
    summary["eval"] = rows
    (out / "run.json").write_text(json.dumps(summary, indent=1, default=str))
    return failures


if __name__ == "__main__":
    sys.exit(main())

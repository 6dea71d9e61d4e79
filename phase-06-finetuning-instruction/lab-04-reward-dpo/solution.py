"""Lab 6.4: reward modelling (Bradley–Terry) and Direct Preference Optimization, from the losses up.

The preference-learning half of post-training, on the curriculum's own SFT model:

- ``bradley_terry_loss`` and ``RewardModel``: a scalar head on the SFT backbone, read at the last
  real token, trained so that ``r(x, y_w) > r(x, y_l)`` (Bradley & Terry 1952; Ouyang et al. 2022).
- ``sequence_logprobs``: ``log π(y | x)`` summed over the *response* tokens only (the prompt is
  conditioning, never scored).
- ``dpo_loss`` (Rafailov et al. 2023), ``ipo_loss`` (Azar et al. 2023) and ``kto_loss``
  (Ethayarajh et al. 2024), written from the policy / reference log-probs.
- ``trl.DPOTrainer`` on the SFT model: the grader checks that our loss equals TRL's on the same
  batch, and that DPO moves the model towards the preferred side of held-out pairs.

Small mode needs a preference whose winner a program can check on the model's own samples, so
that "did DPO work" is measurable on a CPU in a minute. The rule here is *cheerfulness*: a
response scores +1 for every word from a short positive list (happy, smiled, fun, ...) and -1 for
every word from a negative list (sad, cried, scared, ...). Pairs are two samples of the SFT model
for the same prompt with different scores; the higher one is ``chosen``. After DPO the implicit
reward should rank held-out pairs correctly (> 60%, the spec's bar) and fresh samples should be
more cheerful than the SFT model's. Full mode (``--full --model <hf id or path>``) runs the same
functions on ``hh-rlhf`` (Anthropic's helpful/harmless preference pairs, test splits from the
data mirror).

Run: ``python solution.py`` (small mode, about a minute on one CPU core) or ``--full``.
"""
from __future__ import annotations

import argparse
import copy
import gzip
import json
import math
import random
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
SFT_LAB = "phase-06-finetuning-instruction/lab-01-sft"

__all__ = [
    "NEGATIVE_WORDS",
    "POSITIVE_WORDS",
    "PreferencePair",
    "RewardModel",
    "bradley_terry_loss",
    "build_preference_pairs",
    "cheer_preference_sets",
    "cheer_report",
    "cheer_score",
    "collate_pairs",
    "dpo_loss",
    "implicit_reward_accuracy",
    "ipo_loss",
    "kto_kl_estimate",
    "kto_loss",
    "load_hh_rlhf",
    "make_prompts",
    "pairwise_accuracy",
    "run_trl_dpo",
    "sample_responses",
    "sequence_logprobs",
    "sft_model_path",
    "split_by_group",
    "tokenize_pair",
    "train_reward_model",
    "trl_dpo_loss",
]

# --------------------------------------------------------------------------- the checkable preference
POSITIVE_WORDS = frozenset({
    "happy", "happily", "glad", "fun", "smile", "smiled", "smiles", "laugh", "laughed", "love", "loved",
    "loves", "kind", "nice", "good", "friend", "friends", "hug", "hugged", "proud", "excited", "best",
    "yay", "thank", "thanks", "share", "shared", "joy", "great", "beautiful",
})
NEGATIVE_WORDS = frozenset({
    "sad", "sadly", "cry", "cried", "cries", "angry", "mad", "scared", "afraid", "bad", "hurt", "upset",
    "mean", "lost", "broke", "broken", "fell", "hate", "ugly", "worried", "shout", "shouted", "no",
})
_WORD = re.compile(r"[a-z]+")

TOPICS = ("dog", "cat", "bird", "ball", "tree", "park", "fish", "cake", "boat", "car", "sun", "frog",
          "bear", "flower", "toy", "rabbit", "duck", "kite", "hat", "box", "garden", "train", "moon", "bus")
TEMPLATES = ("Tell me a story about a {}.", "Write a short story about a {}.", "Can you tell a story with a {}?")


def cheer_score(text: str) -> int:
    """The small-mode judge: #positive words − #negative words in ``text`` (lower-cased, whole words).

    A stand-in for a human label that a program can check on any sample, so a preference set can be
    built from the model's own outputs and "did DPO work" measured without a person in the loop.

    Raises:
        TypeError: ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"cheer_score expects a str, got {type(text).__name__}")
    words = _WORD.findall(text.lower())
    return sum(w in POSITIVE_WORDS for w in words) - sum(w in NEGATIVE_WORDS for w in words)


@dataclass(frozen=True)
class PreferencePair:
    """One preference: a prompt (already formatted for the model) and two responses, winner first."""

    prompt: str
    chosen: str
    rejected: str
    group: str = ""  # what the held-out split is made on (a topic, a dataset subset)

    def as_dict(self) -> dict[str, str]:
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}


# --------------------------------------------------------------------------- models and data
def sft_model_path() -> Path:
    """The HF folder of lab 6.1's SFT model, or the curriculum model's HF export until lab 6.1 exists.

    Lab 6.1 (``sft_model_path()``) builds and caches its SFT model on first use; this lab never
    retrains it. The fallback is ``curriculum_model_path("main") / "hf"`` (the pretrained model).
    """
    lab_file = HERE.parent / "lab-01-sft" / "solution.py"
    if lab_file.is_file():
        from labkit import load_lab

        lab1 = load_lab(SFT_LAB)
        if hasattr(lab1, "sft_model_path"):
            return Path(lab1.sft_model_path())
    from labkit import curriculum_model_path

    return curriculum_model_path("main") / "hf"


def load_policy(path: str | Path) -> tuple[nn.Module, Any]:
    """``(AutoModelForCausalLM, AutoTokenizer)`` from an HF folder or model id, float32, eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, tok


def format_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The prompt text for a chat ``messages`` list, ending where the assistant's answer starts.

    Uses the tokenizer's chat template when it has one (generation prompt added); otherwise a plain
    ``Human: ... Assistant:`` transcript. The curriculum tokenizer adds no BOS, so its
    ``<|endoftext|>`` is prepended here (the model was trained with one before every story).
    """
    if not messages:
        raise ValueError("format_prompt: messages is empty")
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:
        names = {"user": "Human", "assistant": "Assistant", "system": "System"}
        text = "".join(f"\n\n{names[m['role']]}: {m['content']}" for m in messages) + "\n\nAssistant:"
    bos = tokenizer.bos_token
    if bos and not text.startswith(bos) and not getattr(tokenizer, "add_bos_token", False):
        text = bos + text
    return text


def make_prompts(tokenizer: Any, topics: Sequence[str] = TOPICS, repeats: int = 1) -> list[tuple[str, str]]:
    """``(topic, formatted prompt)`` for every topic × template, ``repeats`` times (story requests)."""
    out = []
    for _ in range(repeats):
        for topic in topics:
            for template in TEMPLATES:
                out.append((topic, format_prompt(tokenizer, [{"role": "user", "content": template.format(topic)}])))
    return out


@torch.no_grad()
def sample_responses(model: nn.Module, tokenizer: Any, prompts: Sequence[str], *, n_per_prompt: int = 2,
                     max_new_tokens: int = 24, temperature: float = 1.0, seed: int = 0,
                     batch_size: int = 256) -> list[list[str]]:
    """``n_per_prompt`` sampled responses (decoded, special tokens dropped) for every prompt.

    Plain ancestral sampling (temperature, no top-k/top-p) with a fixed seed: the same call gives the
    same samples. Generation stops at ``<|im_end|>`` or EOS. Returns ``[[str] * n_per_prompt] * len(prompts)``.
    """
    if n_per_prompt < 1 or max_new_tokens < 1:
        raise ValueError("n_per_prompt and max_new_tokens must be >= 1")
    stop = [tokenizer.eos_token_id]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        stop.append(im_end)
    flat = [p for p in prompts for _ in range(n_per_prompt)]
    texts: list[str] = []
    gen = torch.Generator().manual_seed(seed)
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the right edge
    try:
        for i in range(0, len(flat), batch_size):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            enc = tokenizer(flat[i: i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                                 top_k=0, top_p=1.0, pad_token_id=tokenizer.pad_token_id, eos_token_id=stop)
            texts += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = old_side
    texts = [t.strip() for t in texts]
    return [texts[i: i + n_per_prompt] for i in range(0, len(texts), n_per_prompt)]


def build_preference_pairs(prompts: Sequence[str], responses: Sequence[Sequence[str]],
                           score: Callable[[str], float], groups: Sequence[str] | None = None, *,
                           all_pairs: bool = False) -> list[PreferencePair]:
    """Label the model's own samples with a judge: per prompt, its best response against its worst.

    ``chosen`` is the first response with the highest score, ``rejected`` the first with the
    lowest; a prompt whose responses all score the same gives no pair (a tie carries no
    preference). With ``all_pairs=True`` every two responses of a prompt with different scores
    make a pair instead (``i < j`` order, winner first): InstructGPT's trick of getting up to
    K(K−1)/2 comparisons from one ranking of K samples, which a reward model can use. ``groups[i]``
    (a topic) is copied onto the pair so that a held-out split can keep whole topics out of training.

    Raises:
        ValueError: lengths differ, or a prompt has fewer than two responses.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} response lists")
    if groups is not None and len(groups) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(groups)} groups")
    pairs = []
    for i, (prompt, resp) in enumerate(zip(prompts, responses)):
        if len(resp) < 2:
            raise ValueError(f"prompt {i} has {len(resp)} responses; a pair needs two")
        found: list[tuple[str, str]] = []  # (chosen, rejected) texts for this prompt
        # BEGIN SOLUTION score every response; all_pairs: each i < j with different scores, higher first; otherwise nothing when max == min, else (first argmax, first argmin) (easy, ~10 min)
        scores = [score(r) for r in resp]
        if all_pairs:
            for a in range(len(resp)):
                for b in range(a + 1, len(resp)):
                    if scores[a] != scores[b]:
                        found.append((resp[a], resp[b]) if scores[a] > scores[b] else (resp[b], resp[a]))
        elif max(scores) != min(scores):
            found.append((resp[scores.index(max(scores))], resp[scores.index(min(scores))]))
        # END SOLUTION
        pairs += [PreferencePair(prompt, w, l_, groups[i] if groups is not None else "") for w, l_ in found]
    return pairs


def _hh_turns(text: str) -> list[dict[str, str]]:
    """Split an hh-rlhf transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...") into chat messages."""
    parts = re.split(r"\n\n(Human|Assistant): ", "\n\n" + text.lstrip("\n") if not text.startswith("\n\n") else text)
    msgs = []
    for role, content in zip(parts[1::2], parts[2::2]):
        msgs.append({"role": "user" if role == "Human" else "assistant", "content": content.strip()})
    return msgs


def load_hh_rlhf(tokenizer: Any, subset: str = "helpful-base", n: int | None = None) -> list[PreferencePair]:
    """Anthropic hh-rlhf pairs (test split of ``subset``, from the data mirror) as formatted pairs.

    The chosen and rejected transcripts share every turn but the last assistant answer; the shared
    turns become the prompt (formatted with ``format_prompt``) and the two last answers the responses.
    Pairs whose last answers are identical or empty are dropped. ``group`` is the subset name.

    Raises:
        ValueError: unknown subset.
    """
    files = {"helpful-base": "helpful-base-test.jsonl.gz", "harmless-base": "harmless-base-test.jsonl.gz"}
    if subset not in files:
        raise ValueError(f"unknown hh-rlhf subset {subset!r}; the mirror has {sorted(files)}")
    from labkit import dataset_path

    pairs = []
    with gzip.open(dataset_path("hh-rlhf", files[subset]), "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            ch, rj = _hh_turns(row["chosen"]), _hh_turns(row["rejected"])
            if len(ch) < 2 or len(rj) < 2 or ch[:-1] != rj[:-1] or ch[-1]["role"] != "assistant":
                continue
            a, b = ch[-1]["content"], rj[-1]["content"]
            if not a or not b or a == b:
                continue
            pairs.append(PreferencePair(format_prompt(tokenizer, ch[:-1]), a, b, subset))
            if n is not None and len(pairs) >= n:
                break
    return pairs


# --------------------------------------------------------------------------- tokenising pairs
def tokenize_pair(tokenizer: Any, prompt: str, chosen: str, rejected: str) -> dict[str, list[int]]:
    """``{"prompt_ids", "chosen_ids", "rejected_ids"}`` exactly as ``trl.DPOTrainer`` tokenises a text pair.

    EOS is appended to both responses; each response's ids are ``tok(prompt + response)`` after the
    longest prefix it shares with ``tok(prompt)`` (BPE can merge across the boundary, so the ids of
    the response alone would differ from what the model actually sees).
    """
    eos = tokenizer.eos_token or ""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(prompt + chosen + ("" if chosen.endswith(eos) else eos), add_special_tokens=False)["input_ids"]
    r = tokenizer(prompt + rejected + ("" if rejected.endswith(eos) else eos), add_special_tokens=False)["input_ids"]

    def common(a: list[int], b: list[int]) -> int:
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n

    k = min(common(p, c), common(p, r))
    return {"prompt_ids": p[:k], "chosen_ids": c[k:], "rejected_ids": r[k:]}


def collate_pairs(examples: Sequence[dict[str, list[int]]], pad_token_id: int,
                  max_length: int | None = None) -> dict[str, torch.Tensor]:
    """Stack tokenised pairs into one batch: rows ``[chosen_0..chosen_{B-1}, rejected_0..rejected_{B-1}]``.

    Each row is ``prompt + response`` truncated to ``max_length`` from the end (the prompt's start is
    kept), right-padded with ``pad_token_id``. Returns int64 tensors of shape (2B, T):
    ``input_ids``, ``attention_mask`` (1 on real tokens) and ``completion_mask`` (1 on response
    tokens). The same layout as ``trl``'s ``DataCollatorForPreference``.

    Raises:
        ValueError: no examples, an empty response, or ``max_length`` < 2.
    """
    if not examples:
        raise ValueError("collate_pairs: no examples")
    if max_length is not None and max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    rows, comp = [], []
    for side in ("chosen_ids", "rejected_ids"):
        for i, ex in enumerate(examples):
            if not ex[side]:
                raise ValueError(f"example {i}: {side} is empty (nothing to score)")
            ids = list(ex["prompt_ids"]) + list(ex[side])
            mask = [0] * len(ex["prompt_ids"]) + [1] * len(ex[side])
            if max_length is not None:
                ids, mask = ids[:max_length], mask[:max_length]
            rows.append(ids)
            comp.append(mask)
    T = max(map(len, rows))
    input_ids = torch.full((len(rows), T), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(rows), T), dtype=torch.long)
    completion = torch.zeros((len(rows), T), dtype=torch.long)
    for b, (ids, mask) in enumerate(zip(rows, comp)):
        input_ids[b, : len(ids)] = torch.tensor(ids)
        attention[b, : len(ids)] = 1
        completion[b, : len(ids)] = torch.tensor(mask)
    return {"input_ids": input_ids, "attention_mask": attention, "completion_mask": completion}


# --------------------------------------------------------------------------- log-probs and losses
def sequence_logprobs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      completion_mask: torch.Tensor, *, average: bool = False) -> torch.Tensor:
    """``log π(y | x)``: the sum over response tokens of the log-probability the model gives each one.

    Args:
        model: a causal LM returning ``.logits`` of shape (B, T, V).
        input_ids: (B, T) int64, prompt followed by response, right-padded.
        attention_mask: (B, T), 1 on real tokens.
        completion_mask: (B, T), 1 on the response tokens that are scored (prompt and padding 0).
        average: divide by the number of scored tokens (a per-token mean, as IPO uses).

    Returns:
        (B,) float32; differentiable through ``model``. Token ``t`` is predicted from the logits at
        position ``t - 1``, so the first position is never scored.

    Raises:
        ValueError: shapes differ, or a row has no response token to score.
    """
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape or completion_mask.shape != input_ids.shape:
        raise ValueError(f"input_ids, attention_mask and completion_mask must all be (B, T); got "
                         f"{tuple(input_ids.shape)}, {tuple(attention_mask.shape)}, {tuple(completion_mask.shape)}")
    if (completion_mask[:, 1:].sum(-1) == 0).any():
        raise ValueError("a row has no response token to score (completion_mask[:, 1:] is all zero)")
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    # BEGIN SOLUTION shift: log_softmax of logits[:, :-1] (float32), gather the ids input_ids[:, 1:], zero where completion_mask[:, 1:] is 0, sum over T (or divide by the count when average) (medium, ~15 min)
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    per_token = logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    mask = completion_mask[:, 1:].to(per_token.dtype)
    total = (per_token * mask).sum(-1)
    if average:
        total = total / mask.sum(-1)
    return total
    # END SOLUTION


def _check_logps(**tensors: torch.Tensor) -> None:
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"log-prob tensors must have one shape (B,), got {shapes}")
    for name, t in tensors.items():
        if t.dim() != 1 or t.numel() == 0:
            raise ValueError(f"{name} must be a non-empty 1-D tensor (B,), got shape {tuple(t.shape)}")
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} has NaN or inf: a log-prob must be finite (is a row all padding?)")


def _check_beta(beta: float) -> None:
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
             beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DPO loss per pair: ``-log σ(β[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))])``.

    Rafailov et al. 2023, eq. 7. ``β·log π/π_ref`` is the *implicit reward* of a response: the
    reward under which the KL-regularised RLHF optimum is the policy itself.

    Args:
        all four: (B,) float sequence log-probs (``sequence_logprobs``); the reference ones carry no grad.
        beta: strength of the KL penalty (> 0); small β lets the policy move far from the reference.

    Returns:
        ``(losses (B,), chosen_rewards (B,), rejected_rewards (B,))``; the rewards are detached.

    Raises:
        ValueError: shapes differ, NaN/inf, empty, or β <= 0.
    """
    _check_logps(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                 ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    _check_beta(beta)
    # BEGIN SOLUTION log-ratios policy − reference for chosen and rejected; losses = −logsigmoid(β·(chosen − rejected)); rewards = β·log-ratio, detached (easy, ~10 min)
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()
    # END SOLUTION


def ipo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float = 0.1,
             chosen_lengths: torch.Tensor | None = None,
             rejected_lengths: torch.Tensor | None = None) -> torch.Tensor:
    """The IPO loss per pair: ``(h − 1/(2β))²`` with ``h`` the DPO margin without β (Azar et al. 2023, eq. 17).

    DPO's sigmoid keeps pushing the margin to infinity on pairs it already ranks right (a
    deterministic preference has an infinite Bradley–Terry reward gap), which lets the policy drift
    from the reference. IPO regresses the margin to a finite target ``1/(2β)`` instead. With
    ``chosen_lengths``/``rejected_lengths`` (response token counts, (B,)) each log-ratio is divided by
    its length first, as TRL's ``loss_type="ipo"`` does; without them the sums are used.

    Returns:
        losses (B,).

    Raises:
        ValueError: as ``dpo_loss``; or lengths given for one side only / not positive.
    """
    _check_logps(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                 ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    _check_beta(beta)
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("give both chosen_lengths and rejected_lengths, or neither")
    if chosen_lengths is not None and ((chosen_lengths <= 0).any() or (rejected_lengths <= 0).any()):
        raise ValueError("response lengths must be > 0")
    # BEGIN SOLUTION log-ratios as in DPO, each divided by its length when lengths are given; h = chosen − rejected; (h − 1/(2β))² (easy, ~10 min)
    chosen = policy_chosen_logps - ref_chosen_logps
    rejected = policy_rejected_logps - ref_rejected_logps
    if chosen_lengths is not None:
        chosen = chosen / chosen_lengths.to(chosen.dtype)
        rejected = rejected / rejected_lengths.to(rejected.dtype)
    return (chosen - rejected - 1 / (2 * beta)) ** 2
    # END SOLUTION


def kto_kl_estimate(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """KTO's reference point z₀: a batch estimate of KL(π ‖ π_ref), ``mean(log π − log π_ref)`` over
    *mismatched* (prompt, response) pairs, clamped at 0 and detached (no gradient flows through it)."""
    _check_logps(policy_kl_logps=policy_kl_logps, ref_kl_logps=ref_kl_logps)
    return (policy_kl_logps - ref_kl_logps).mean().detach().clamp(min=0)


def kto_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, desirable: torch.Tensor,
             kl: torch.Tensor | float, beta: float = 0.1, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0) -> torch.Tensor:
    """The KTO loss per example (Ethayarajh et al. 2024, eq. 7 as TRL implements it): unpaired labels.

    Each example is one response with a thumbs-up (``desirable``) or thumbs-down. With
    ``r = log π(y|x) − log π_ref(y|x)`` and the reference point ``kl`` (``kto_kl_estimate``):
    desirable → ``w_d · (1 − σ(β(r − kl)))``, undesirable → ``w_u · (1 − σ(β(kl − r)))``.
    Prospect theory's value function: gains and losses are measured against a reference point and
    saturate (the sigmoid), so one very good answer cannot buy a lot of bad ones.

    Args:
        policy_logps, ref_logps: (B,) sequence log-probs. desirable: (B,) bool. kl: scalar (no grad).

    Returns:
        losses (B,), in the input order.

    Raises:
        ValueError: shapes, NaN, β <= 0, negative weights, ``desirable`` not boolean.
    """
    _check_logps(policy_logps=policy_logps, ref_logps=ref_logps)
    _check_beta(beta)
    if desirable.dtype != torch.bool or desirable.shape != policy_logps.shape:
        raise ValueError(f"desirable must be a bool tensor of shape {tuple(policy_logps.shape)}, "
                         f"got {desirable.dtype} {tuple(desirable.shape)}")
    if desirable_weight < 0 or undesirable_weight < 0:
        raise ValueError("KTO weights must be >= 0")
    kl = torch.as_tensor(kl, dtype=policy_logps.dtype).detach()
    # BEGIN SOLUTION r = policy − ref; desirable rows: w_d·(1 − σ(β(r − kl))); the others: w_u·(1 − σ(β(kl − r))); torch.where keeps the order (easy, ~10 min)
    r = policy_logps - ref_logps
    good = desirable_weight * (1 - torch.sigmoid(beta * (r - kl)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (kl - r)))
    return torch.where(desirable, good, bad)
    # END SOLUTION


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                       margin: torch.Tensor | float = 0.0) -> torch.Tensor:
    """The reward model's pairwise loss per pair: ``-log σ(r_w − r_l − margin)``.

    Bradley–Terry: ``P(y_w ≻ y_l) = σ(r_w − r_l)``; this is its negative log-likelihood (Ouyang et al.
    2022, eq. 1; the optional margin is Llama 2's). Only reward *differences* are identified: adding
    a constant to every reward changes nothing.

    Returns:
        losses (B,).

    Raises:
        ValueError: shapes differ, empty, NaN/inf.
    """
    _check_logps(chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
    # BEGIN SOLUTION one line: −logsigmoid of the difference minus the margin (never log(sigmoid(...)): it underflows) (easy, ~5 min)
    return -F.logsigmoid(chosen_rewards - rejected_rewards - margin)
    # END SOLUTION


# --------------------------------------------------------------------------- the reward model
class RewardModel(nn.Module):
    """A scalar reward ``r(x, y)``: a transformer backbone and a linear head read at the last real token.

    The backbone is the SFT model without its LM head (``AutoModelForCausalLM(...).model``), so the
    reward model starts from everything the SFT model knows (InstructGPT's recipe). The head's
    output at the final non-padding position is the reward: in a causal model that is the only
    position that has seen the whole response.
    """

    def __init__(self, backbone: nn.Module, hidden_size: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(hidden_size, 1, bias=False)
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(hidden_size + 1))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> RewardModel:
        """Backbone from an HF causal-LM folder or id; a fresh head."""
        from transformers import AutoModelForCausalLM

        lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        return cls(lm.model, lm.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Rewards (B,) float32 for right- or left-padded ``input_ids`` (B, T) with ``attention_mask`` (B, T).

        Raises:
            ValueError: shapes differ, or a row is all padding.
        """
        if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
            raise ValueError(f"input_ids and attention_mask must both be (B, T), got "
                             f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}")
        if (attention_mask.sum(-1) == 0).any():
            raise ValueError("a row of attention_mask is all zero: nothing to score")
        # BEGIN SOLUTION hidden = backbone(...).last_hidden_state (B, T, C); index of the LAST position where attention_mask is 1 (works for left and right padding: T−1 − argmax of the flipped mask); head on that vector, squeeze to (B,) (medium, ~15 min)
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        T = input_ids.shape[1]
        last = T - 1 - attention_mask.flip(-1).long().argmax(-1)
        pooled = hidden[torch.arange(input_ids.shape[0]), last]
        return self.head(pooled).squeeze(-1).float()
        # END SOLUTION


def _encode_texts(tokenizer: Any, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    """Right-padded batch of ``texts``, keeping the last ``max_length`` tokens (the response end)."""
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"][-max_length:] for t in texts]
    T = max(map(len, ids))
    out = torch.full((len(ids), T), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(ids), T), dtype=torch.long)
    for b, row in enumerate(ids):
        out[b, : len(row)] = torch.tensor(row)
        mask[b, : len(row)] = 1
    return {"input_ids": out, "attention_mask": mask}


def _pair_rewards(rm: RewardModel, tokenizer: Any, pairs: Sequence[PreferencePair],
                  max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    texts = [p.prompt + p.chosen for p in pairs] + [p.prompt + p.rejected for p in pairs]
    r = rm(**_encode_texts(tokenizer, texts, max_length))
    return r[: len(pairs)], r[len(pairs):]


def train_reward_model(rm: RewardModel, tokenizer: Any, pairs: Sequence[PreferencePair], *, steps: int = 100,
                       batch_size: int = 16, lr: float = 3e-4, max_length: int = 128, seed: int = 0,
                       log_every: int = 0) -> list[float]:
    """Train ``rm`` with ``bradley_terry_loss`` (AdamW, shuffled mini-batches); returns the loss per step."""
    if not pairs:
        raise ValueError("train_reward_model: no pairs")
    rng = random.Random(seed)
    opt = torch.optim.AdamW(rm.parameters(), lr=lr, weight_decay=0.0)
    rm.train()
    order: list[int] = []
    history = []
    for step in range(steps):
        if len(order) < batch_size:
            more = list(range(len(pairs)))
            rng.shuffle(more)
            order += more
        batch = [pairs[i] for i in order[:batch_size]]
        del order[:batch_size]
        rc, rr = _pair_rewards(rm, tokenizer, batch, max_length)
        loss = bradley_terry_loss(rc, rr).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            print(f"    RM step {step + 1}: BT loss {sum(history[-log_every:]) / log_every:.3f}", file=sys.stderr)
    rm.eval()
    return history


@torch.no_grad()
def pairwise_accuracy(rm: RewardModel, tokenizer: Any, pairs: Sequence[PreferencePair], *,
                      max_length: int = 128, batch_size: int = 32) -> float:
    """Fraction of ``pairs`` with ``r(chosen) > r(rejected)`` (ties count half)."""
    if not pairs:
        raise ValueError("pairwise_accuracy: no pairs")
    rm.eval()
    score = 0.0
    for i in range(0, len(pairs), batch_size):
        rc, rr = _pair_rewards(rm, tokenizer, pairs[i: i + batch_size], max_length)
        score += (rc > rr).float().sum().item() + 0.5 * (rc == rr).float().sum().item()
    return score / len(pairs)


# --------------------------------------------------------------------------- DPO through TRL, and evaluation
def _pair_batches(tokenizer: Any, pairs: Sequence[PreferencePair], batch_size: int, max_length: int):
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i: i + batch_size]
        yield collate_pairs([tokenize_pair(tokenizer, p.prompt, p.chosen, p.rejected) for p in chunk],
                            tokenizer.pad_token_id, max_length)


@torch.no_grad()
def implicit_reward_accuracy(policy: nn.Module, reference: nn.Module, tokenizer: Any,
                             pairs: Sequence[PreferencePair], *, beta: float = 0.1, max_length: int = 128,
                             batch_size: int = 32) -> dict[str, float]:
    """How the DPO policy's implicit reward ``β·log π/π_ref`` ranks ``pairs``.

    Returns ``{"accuracy": P(r_w > r_l) with ties half, "margin": mean(r_w − r_l),
    "loss": mean DPO loss}``. For ``policy is reference`` every reward is 0: accuracy 0.5, the
    SFT baseline any preference-trained model has to beat.
    """
    policy.eval()
    reference.eval()
    acc = margin = loss = 0.0
    for batch in _pair_batches(tokenizer, pairs, batch_size, max_length):
        pol = sequence_logprobs(policy, **batch)
        ref = sequence_logprobs(reference, **batch)
        pc, pr = pol.chunk(2)
        rc, rr = ref.chunk(2)
        losses, cr, rjr = dpo_loss(pc, pr, rc, rr, beta)
        acc += (cr > rjr).float().sum().item() + 0.5 * (cr == rjr).float().sum().item()
        margin += (cr - rjr).sum().item()
        loss += losses.sum().item()
    n = len(pairs)
    return {"accuracy": acc / n, "margin": margin / n, "loss": loss / n}


def _dpo_config(out_dir: str, **overrides: Any):
    from trl import DPOConfig

    base = dict(output_dir=out_dir, report_to=[], save_strategy="no", use_cpu=True, bf16=False, fp16=False,
                disable_tqdm=True, dataloader_num_workers=0, remove_unused_columns=False, seed=0,
                max_length=128, logging_steps=10)
    base.update(overrides)
    return DPOConfig(**base)


def _trl_trainer(policy: nn.Module, reference: nn.Module, tokenizer: Any, pairs: Sequence[PreferencePair],
                 out_dir: str, **config: Any):
    from datasets import Dataset
    from transformers.utils import logging as hf_logging
    from trl import DPOTrainer

    hf_logging.set_verbosity_error()
    ds = Dataset.from_list([p.as_dict() for p in pairs])
    return DPOTrainer(model=policy, ref_model=reference, args=_dpo_config(out_dir, **config),
                      train_dataset=ds, processing_class=tokenizer)


def trl_dpo_loss(policy: nn.Module, reference: nn.Module, tokenizer: Any, batch: dict[str, torch.Tensor], *,
                 beta: float = 0.1, loss_type: str = "sigmoid") -> torch.Tensor:
    """TRL's DPO loss on ``batch`` (a ``collate_pairs`` batch): ``DPOTrainer._compute_loss`` called directly.

    TRL 1.16 has no free-standing loss function: the log-probs and the loss are computed together
    in ``DPOTrainer._compute_loss(model, inputs)``, which this wraps (``ref_model`` must be given
    for an in-memory model). It is the reference the grader compares ``dpo_loss`` with.
    """
    dummy = [PreferencePair("a", "b", "c")]
    # TRL patches the forward of the models it is given (its fused LM head): hand it copies, so the
    # caller's models are left exactly as they were
    policy, reference = copy.deepcopy(policy), copy.deepcopy(reference)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trl_trainer(policy, reference, tokenizer, dummy, tmp, beta=beta, loss_type=[loss_type])
        with torch.no_grad():
            return trainer._compute_loss(trainer.model, dict(batch), return_outputs=False)


def run_trl_dpo(policy: nn.Module, reference: nn.Module, tokenizer: Any, pairs: Sequence[PreferencePair], *,
                beta: float = 0.1, lr: float = 5e-4, epochs: float = 2.0, batch_size: int = 16,
                max_length: int = 128, loss_type: str = "sigmoid", seed: int = 0) -> list[dict[str, float]]:
    """Train ``policy`` in place with ``trl.DPOTrainer`` against the frozen ``reference``; returns TRL's logs.

    TRL patches the forward of both models (its fused LM head); load fresh models for any later run
    rather than ``copy.deepcopy`` of these (a copy would keep calling the original's forward).
    """
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trl_trainer(policy, reference, tokenizer, pairs, tmp, beta=beta, learning_rate=lr,
                               num_train_epochs=epochs, per_device_train_batch_size=batch_size,
                               max_length=max_length, loss_type=[loss_type], seed=seed,
                               lr_scheduler_type="constant", warmup_steps=0, logging_steps=2)
        trainer.train()
        logs = [h for h in trainer.state.log_history if "loss" in h]
    policy.eval()
    return logs


def cheer_report(model: nn.Module, tokenizer: Any, prompts: Sequence[str], *, n_per_prompt: int = 4,
                 max_new_tokens: int = 24, seed: int = 123) -> dict[str, Any]:
    """Fresh samples judged by ``cheer_score``: mean score, shares with a positive / negative score,
    mean length in words, the scores and the samples."""
    samples = sample_responses(model, tokenizer, prompts, n_per_prompt=n_per_prompt,
                               max_new_tokens=max_new_tokens, seed=seed)
    flat = [s for row in samples for s in row]
    scores = [cheer_score(s) for s in flat]
    return {"mean": sum(scores) / len(scores), "positive": sum(s > 0 for s in scores) / len(scores),
            "words": sum(len(s.split()) for s in flat) / len(flat),
            "negative": sum(s < 0 for s in scores) / len(scores), "scores": scores, "samples": flat}


def split_by_group(pairs: Sequence[PreferencePair], held_out: Sequence[str]) -> tuple[list, list]:
    """``(train, test)``: pairs whose ``group`` is in ``held_out`` go to test (whole topics never seen)."""
    test_groups = set(held_out)
    return [p for p in pairs if p.group not in test_groups], [p for p in pairs if p.group in test_groups]


def cheer_preference_sets(model: nn.Module, tokenizer: Any, *, repeats: int = 4, n_per_prompt: int = 4,
                          max_new_tokens: int = 32, seed: int = 0) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """The small-mode preference data: the model's own samples for story prompts, judged by ``cheer_score``.

    ``n_per_prompt`` samples for each of ``len(TOPICS) · len(TEMPLATES) · repeats`` prompts.
    Returns ``(best_vs_worst, all_pairs)``: one pair per prompt (for DPO and for evaluation), and
    every differently-scored pair of the same samples (more comparisons for the reward model).
    """
    prompts = make_prompts(tokenizer, repeats=repeats)
    texts, groups = [p for _, p in prompts], [t for t, _ in prompts]
    responses = sample_responses(model, tokenizer, texts, n_per_prompt=n_per_prompt,
                                 max_new_tokens=max_new_tokens, seed=seed)
    return (build_preference_pairs(texts, responses, cheer_score, groups),
            build_preference_pairs(texts, responses, cheer_score, groups, all_pairs=True))


HELD_OUT_TOPICS = ("cat", "tree", "cake", "frog", "kite", "moon")
# small-mode settings, shared by the self-test and the grader
DPO_SMALL = dict(beta=0.1, lr=5e-4, epochs=1.0, batch_size=16, max_length=64)
RM_SMALL = dict(steps=60, batch_size=16, lr=1e-3, max_length=64)
HH_RM_SMALL = dict(steps=40, max_length=96)


# --------------------------------------------------------------------------- self-test
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="hh-rlhf pairs and bigger runs (a GPU and a real model)")
    ap.add_argument("--model", default=None, help="HF model id or folder (default: lab 6.1's SFT model)")
    ap.add_argument("--hh", action="store_true", help="small mode: also train a reward model on 400 hh-rlhf pairs "
                    "(about 35 s more CPU)")
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    from labkit import seed_everything
    from labkit.plots import plt, savefig

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()
    t_start = time.perf_counter()
    failures: list[str] = []
    beta = args.beta

    print("Closed-form checks (hand example: log π(y_w)=-10, log π(y_l)=-12, ref both -11, β=0.1):")
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-10.0, -12.0, -11.0, -11.0))
    hand = {
        "DPO  -log σ(0.1·(1-(-1)))": (dpo_loss(pc, pr, rc, rr, 0.1)[0].item(), math.log1p(math.exp(-0.2))),
        "IPO  (2 - 1/(2·0.1))²": (ipo_loss(pc, pr, rc, rr, 0.1).item(), (2 - 5) ** 2),
        "KTO  desirable, z0=0: 1-σ(0.1)": (kto_loss(pc, rc, torch.tensor([True]), 0.0, 0.1).item(),
                                           1 - 1 / (1 + math.exp(-0.1))),
        "BT   -log σ(1.5-0.5)": (bradley_terry_loss(torch.tensor([1.5]), torch.tensor([0.5])).item(),
                                 math.log1p(math.exp(-1.0))),
    }
    print("| loss | ours | closed form |")
    print("|---|---|---|")
    for name, (ours, ref) in hand.items():
        print(f"| {name} | {ours:.6f} | {ref:.6f} |")
        if abs(ours - ref) > 1e-6:
            failures.append(f"closed form {name}")

    model_path = args.model or str(sft_model_path())
    print(f"\nPolicy/reference: {model_path}")
    seed_everything(args.seed)
    policy, tok = load_policy(model_path)
    reference, _ = load_policy(model_path)
    for p in reference.parameters():
        p.requires_grad_(False)

    if args.full:
        pairs = load_hh_rlhf(tok, "helpful-base") + load_hh_rlhf(tok, "harmless-base")
        random.Random(args.seed).shuffle(pairs)
        n_test = len(pairs) // 5
        train_pairs, test_pairs = pairs[n_test:], pairs[:n_test]
        rm_train = train_pairs
        dpo_cfg = dict(DPO_SMALL, max_length=512, epochs=1.0, lr=5e-6)
        rm_cfg = dict(RM_SMALL, steps=len(rm_train) // 16, max_length=512, lr=1e-5)
    else:
        t0, c0 = time.perf_counter(), time.process_time()
        pairs, all_pairs = cheer_preference_sets(policy, tok, seed=args.seed)
        train_pairs, test_pairs = split_by_group(pairs, HELD_OUT_TOPICS)
        rm_train, _ = split_by_group(all_pairs, HELD_OUT_TOPICS)
        dpo_cfg, rm_cfg = dict(DPO_SMALL), dict(RM_SMALL)
        n_prompts = len(TOPICS) * len(TEMPLATES) * 4
        print(f"\nPreference set from the model's own samples ({n_prompts} prompts × 4 samples, judged by "
              f"cheer_score): {len(pairs)} best-vs-worst pairs (prompts whose samples all tie give none); "
              f"train {len(train_pairs)}, held out {len(test_pairs)} (topics {', '.join(HELD_OUT_TOPICS)}, never "
              f"trained on); {len(rm_train)} all-pairs comparisons on the train topics for the reward model "
              f"[{time.perf_counter() - t0:.1f} s wall, {time.process_time() - c0:.1f} s CPU]")
        ex = test_pairs[0]
        print(f"  e.g. prompt   {ex.prompt[-45:]!r}\n       chosen   {ex.chosen!r} (score {cheer_score(ex.chosen)})\n"
              f"       rejected {ex.rejected!r} (score {cheer_score(ex.rejected)})")
    max_length = dpo_cfg["max_length"]

    print("\nOur DPO / IPO loss vs trl.DPOTrainer._compute_loss on the same batch (8 held-out pairs):")
    batch = next(_pair_batches(tok, test_pairs[:8], 8, max_length))
    with torch.no_grad():
        noisy = load_policy(model_path)[0]  # a policy that differs from the reference, so the loss is not ln 2
        g = torch.Generator().manual_seed(args.seed)
        for prm in noisy.parameters():
            prm.add_(0.02 * torch.randn(prm.shape, generator=g))
        pol, ref = sequence_logprobs(noisy, **batch), sequence_logprobs(reference, **batch)
        lens = batch["completion_mask"].sum(-1)
        ours = {"sigmoid": dpo_loss(*pol.chunk(2), *ref.chunk(2), beta)[0].mean().item(),
                "ipo": ipo_loss(*pol.chunk(2), *ref.chunk(2), beta, *lens.chunk(2)).mean().item()}
    print("| loss_type | ours | TRL | abs diff |")
    print("|---|---|---|---|")
    for lt, v in ours.items():
        theirs = trl_dpo_loss(noisy, reference, tok, batch, beta=beta, loss_type=lt).item()
        print(f"| {lt} | {v:.6f} | {theirs:.6f} | {abs(v - theirs):.1e} |")
        if abs(v - theirs) > 1e-4 * max(1.0, abs(theirs)):
            failures.append(f"TRL equality {lt}")
    del noisy

    print(f"\nReward model (Bradley–Terry; backbone = the SFT model, fresh linear head; AdamW lr {rm_cfg['lr']:g}):")
    print("| preference set | train pairs | steps × batch | max tokens | held-out pairs | held-out accuracy "
          "before | after |")
    print("|---|---|---|---|---|---|---|")
    rm_sets = [("cheer (own samples)", rm_train, test_pairs, rm_cfg)]
    if args.full or args.hh:
        hh = load_hh_rlhf(tok, "helpful-base", n=None if args.full else 600)
        random.Random(args.seed).shuffle(hh)
        n_hh = len(hh) // 5 if args.full else 200
        rm_sets.append(("hh-rlhf helpful-base", hh[n_hh:], hh[:n_hh],
                        rm_cfg if args.full else dict(RM_SMALL, **HH_RM_SMALL)))
    rm_acc = {}
    for name, tr, te, cfg in rm_sets:
        t0, c0 = time.perf_counter(), time.process_time()
        seed_everything(args.seed)
        rm = RewardModel.from_pretrained(model_path)
        before = pairwise_accuracy(rm, tok, te, max_length=cfg["max_length"])
        train_reward_model(rm, tok, tr, seed=args.seed, **cfg)
        after = pairwise_accuracy(rm, tok, te, max_length=cfg["max_length"])
        rm_acc[name] = (before, after)
        print(f"| {name} | {len(tr)} | {cfg['steps']} × {cfg['batch_size']} | {cfg['max_length']} | {len(te)} | "
              f"{before:.3f} | {after:.3f} |  [{time.perf_counter() - t0:.1f} s wall, {time.process_time() - c0:.1f} s CPU]")
        del rm
    if not args.full and not rm_acc["cheer (own samples)"][1] > 0.65:
        failures.append("reward model held-out accuracy <= 0.65 on the cheer pairs")

    held_prompts = [p for t, p in make_prompts(tok) if t in HELD_OUT_TOPICS]
    if not args.full:
        before_cheer = cheer_report(policy, tok, held_prompts, n_per_prompt=8, seed=args.seed + 1)
    before_irm = implicit_reward_accuracy(policy, reference, tok, test_pairs, beta=beta, max_length=max_length)
    t0, c0 = time.perf_counter(), time.process_time()
    seed_everything(args.seed)
    logs = run_trl_dpo(policy, reference, tok, train_pairs, seed=args.seed, **dict(dpo_cfg, beta=beta))
    t_dpo, c_dpo = time.perf_counter() - t0, time.process_time() - c0
    after_irm = implicit_reward_accuracy(policy, reference, tok, test_pairs, beta=beta, max_length=max_length)
    print(f"\ntrl.DPOTrainer on {len(train_pairs)} train pairs, β={beta}, {dpo_cfg['epochs']:g} epochs, batch "
          f"{dpo_cfg['batch_size']}, lr {dpo_cfg['lr']:g} [{t_dpo:.1f} s wall, {c_dpo:.1f} s CPU]; held-out pairs "
          f"({len(test_pairs)}):")
    print("| model | implicit-reward accuracy | mean margin β·Δ | DPO loss |")
    print("|---|---|---|---|")
    print(f"| SFT (policy = reference) | {before_irm['accuracy']:.3f} | {before_irm['margin']:+.3f} | "
          f"{before_irm['loss']:.3f} |")
    print(f"| DPO | {after_irm['accuracy']:.3f} | {after_irm['margin']:+.3f} | {after_irm['loss']:.3f} |")
    if not after_irm["accuracy"] > 0.6:
        failures.append(f"held-out implicit-reward accuracy {after_irm['accuracy']:.3f} <= 0.6")

    if not args.full:
        after_cheer = cheer_report(policy, tok, held_prompts, n_per_prompt=8, seed=args.seed + 1)
        wins = sum((a > b) + 0.5 * (a == b) for a, b in zip(after_cheer["scores"], before_cheer["scores"]))
        print(f"\nFresh samples on the held-out topics ({len(before_cheer['scores'])} per model, same seeds), "
              "judged by cheer_score:")
        print("| model | mean score | share > 0 | share < 0 | mean length (words) |")
        print("|---|---|---|---|---|")
        for name, rep in (("SFT", before_cheer), ("DPO", after_cheer)):
            print(f"| {name} | {rep['mean']:+.3f} | {rep['positive']:.3f} | {rep['negative']:.3f} | {rep['words']:.1f} |")
        print(f"  judge's win rate DPO vs SFT, sample against sample (ties half): "
              f"{wins / len(after_cheer['scores']):.3f}")
        for s_b, s_a in list(zip(before_cheer["samples"], after_cheer["samples"]))[:3]:
            print(f"  SFT: {s_b!r}\n  DPO: {s_a!r}")
        if not after_cheer["positive"] > before_cheer["positive"]:
            failures.append("the share of cheerful samples did not rise")

        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
        steps = [h["step"] for h in logs]
        axes[0].plot(steps, [h["loss"] for h in logs], marker="o", label="DPO loss (train)")
        if "rewards/margins" in logs[0]:
            axes[0].plot(steps, [h["rewards/margins"] for h in logs], marker="s", label="reward margin β·Δ")
        axes[0].axhline(math.log(2), color="grey", ls=":", lw=1, label="ln 2 (policy = reference)")
        axes[0].set_xlabel("step")
        axes[0].set_title("trl.DPOTrainer on cheer pairs")
        axes[0].legend(fontsize=8)
        labels = ["share > 0", "share < 0"]
        x = range(len(labels))
        axes[1].bar([i - 0.2 for i in x], [before_cheer["positive"], before_cheer["negative"]], 0.4, label="SFT")
        axes[1].bar([i + 0.2 for i in x], [after_cheer["positive"], after_cheer["negative"]], 0.4, label="DPO")
        axes[1].set_xticks(list(x), labels)
        axes[1].set_title("fresh samples, held-out topics")
        axes[1].legend(fontsize=8)
        path = savefig(fig, HERE / "figures" / "dpo_cheer.png")
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

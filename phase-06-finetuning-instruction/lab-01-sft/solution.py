"""Lab 6.1: supervised fine-tuning (SFT) of the curriculum model, from the chat template to the loss.

The pieces, in the order the data flows:

1. ``chat_template()``: a Jinja chat template for the curriculum tokenizer (ChatML with a leading
   ``<|endoftext|>`` as BOS). The assistant's content and its ``<|im_end|>`` sit inside
   ``{% generation %}`` markers, so ``tokenizer.apply_chat_template(..., return_assistant_tokens_mask=True)``
   (and TRL's ``assistant_only_loss=True``) know which tokens the assistant wrote.
2. ``message_spans``: where each message's trainable tokens sit in the tokenized conversation,
   found by tokenizing growing prefixes of the rendered conversation.
3. Loss masks (labels with ``-100`` where no loss is taken): ``single_turn_labels``,
   ``multi_turn_labels`` (all assistant turns, safe under truncation) and ``reverse_labels``
   (train on the user's turns instead).
4. ``causal_lm_loss``: next-token cross-entropy from ``log_softmax`` + ``gather`` with
   ``ignore_index`` and ``num_items_in_batch`` (divide a micro-batch's summed loss by the number of
   supervised tokens in the whole accumulated batch, not by its own count).
5. ``sft_step`` / ``train_sft``: our own training loop with gradient accumulation; ``train_with_trl``
   runs ``trl.SFTTrainer`` on the same conversations.
6. IFEval-style checks (Zhou et al. 2023, "Instruction-Following Evaluation for Large Language
   Models"): 16 of IFEval's verifiable instruction types, strict and loose, and a synthetic
   verifiable-instruction training set.
7. The inverse-length weighted ``Trainer``: ``LengthWeightedDataset`` -> ``LengthCollator`` ->
   ``LengthWeightedTrainer.compute_loss``.

``sft_model_path("small")`` is what later labs use: the curriculum model fine-tuned by this lab's
recipe, saved with ``save_pretrained`` (model + tokenizer with our chat template), built once and
cached by content under ``<repo>/.cache/models/sft-<key16>/``.

Run: ``python solution.py`` (small mode, CPU, about a minute and a half once the SFT model is cached) or
``python solution.py --full --model Qwen/Qwen2-0.5B`` (any HF causal LM, for a GPU; same code path).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer

from labkit import dataset_path, seed_everything

HERE = Path(__file__).resolve().parent
OUTPUTS = HERE / "outputs"
IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")
BOS, IM_START, IM_END, PAD = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"

__all__ = [
    "IFEVAL_SUBSET", "IGNORE_INDEX", "LengthCollator", "LengthWeightedDataset", "LengthWeightedTrainer",
    "PlainLengthTrainer", "SFTRecipe", "causal_lm_loss", "chat_template", "check_instruction",
    "check_instruction_loose", "check_messages", "encode_conversation", "ifeval_scores", "load_model",
    "load_tokenizer", "loose_variants", "message_spans", "multi_turn_labels", "response_loss",
    "reverse_labels", "role_labels", "sft_model_path", "sft_step", "single_turn_labels", "train_sft", "train_with_trl",
]


# ============================================================================ 1. chat template
def chat_template() -> str:
    """The Jinja chat template of this lab (ChatML with a BOS and ``{% generation %}`` markers).

    Rendered text for ``[user: "Hi", assistant: "Hello"]``::

        <|endoftext|><|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello<|im_end|>\\n

    and with ``add_generation_prompt=True`` a trailing ``<|im_start|>assistant\\n``. The assistant's
    content *and its* ``<|im_end|>`` are wrapped in ``{% generation %}...{% endgeneration %}``: the
    model must learn to end its turn, so the end-of-turn token is supervised; the role header and
    the newline after ``<|im_end|>`` are not (the template writes them, not the model).

    Returns:
        The template string (set it as ``tokenizer.chat_template``).
    """
    # BEGIN SOLUTION a Jinja string: bos_token, then for each message the header '<|im_start|>' + role + '\n', the content + '<|im_end|>' (inside {% generation %}...{% endgeneration %} when role == 'assistant'), then '\n'; finally the generation prompt when add_generation_prompt (easy, ~15 min)
    return (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{% if message['role'] == 'assistant' %}"
        "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
        "{% else %}"
        "{{ message['content'] + '<|im_end|>' }}"
        "{% endif %}"
        "{{ '\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    # END SOLUTION


def load_tokenizer(path: str | Path):
    """The tokenizer at ``path`` with this lab's chat template installed.

    For the curriculum tokenizer (``<|im_start|>`` in its vocabulary) the BOS is ``<|endoftext|>``
    and the pad token ``<|pad|>``. For any other HF tokenizer (full mode) our template still works
    as long as ``<|im_start|>``/``<|im_end|>`` exist; they are added as special tokens otherwise
    (the model's embeddings are resized by ``load_model``).
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    missing = [t for t in (IM_START, IM_END) if t not in tok.get_vocab()]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing})
    if tok.bos_token is None:
        tok.bos_token = tok.eos_token
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.chat_template = chat_template()
    return tok


def load_model(path: str | Path, tokenizer=None, dtype: torch.dtype = torch.float32):
    """``AutoModelForCausalLM`` at ``path``; embeddings resized when ``tokenizer`` grew (full mode)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    if tokenizer is not None and len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    return model


def check_messages(messages: Any) -> list[dict]:
    """Validate a conversation: a non-empty list of ``{"role", "content"}`` dicts.

    Raises:
        TypeError: not a list of dicts, or a content that is not a string.
        ValueError: empty conversation, unknown role, empty content, or a content containing
            ``<|im_start|>``/``<|im_end|>`` (it would forge a turn boundary).
    """
    if not isinstance(messages, list | tuple):
        raise TypeError(f"messages must be a list of dicts, got {type(messages).__name__}")
    if not messages:
        raise ValueError("messages is empty: a conversation needs at least one message")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise TypeError(f"message {i} must be a dict with 'role' and 'content', got {m!r}")
        if m["role"] not in ROLES:
            raise ValueError(f"message {i} has unknown role {m['role']!r}; expected one of {ROLES}")
        if not isinstance(m["content"], str):
            raise TypeError(f"message {i} content must be str, got {type(m['content']).__name__}")
        if not m["content"]:
            raise ValueError(f"message {i} ({m['role']}) has empty content")
        if IM_START in m["content"] or IM_END in m["content"]:
            raise ValueError(f"message {i} content contains a turn marker ({IM_START} or {IM_END})")
    return list(messages)


def _render(tokenizer, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# ============================================================================ 2. spans and loss masks
def message_spans(tokenizer, messages: Sequence[dict]) -> tuple[list[int], list[tuple[int, int]]]:
    """Tokenize a conversation and locate each message's trainable tokens.

    Args:
        tokenizer: a tokenizer whose ``chat_template`` is ``chat_template()``.
        messages: a conversation (see ``check_messages``).

    Returns:
        ``(input_ids, spans)``: the token ids of the whole rendered conversation, and for message
        ``i`` the half-open token range ``spans[i] = (start, end)`` of its content plus its
        ``<|im_end|>`` (header and trailing newline excluded), so ``input_ids[end - 1]`` is the
        id of ``<|im_end|>``.

    Method (the "prefix lengths" trick): render the conversation up to message ``i`` and add
    message ``i``'s header; its token count is ``start``. Render up to and including message
    ``i``; its token count minus the trailing newline's tokens is ``end``. This only relies on
    tokenizing prefixes of the rendered text, so it works with any template that renders messages
    one after the other (a test checks that every prefix is a prefix of the full token list).

    Raises:
        ValueError / TypeError: from ``check_messages``.
    """
    messages = check_messages(messages)
    input_ids = _ids(tokenizer, _render(tokenizer, messages))
    newline_len = len(_ids(tokenizer, "\n"))
    spans: list[tuple[int, int]] = []
    # BEGIN SOLUTION for each i: before = rendered messages[:i] (just the bos_token when i == 0); start = len(tokens of before + '<|im_start|>' + role + '\n'); end = len(tokens of rendered messages[:i+1]) - newline_len (medium, ~20 min)
    for i, m in enumerate(messages):
        before = _render(tokenizer, messages[:i]) if i else (tokenizer.bos_token or "")
        start = len(_ids(tokenizer, before + IM_START + m["role"] + "\n"))
        end = len(_ids(tokenizer, _render(tokenizer, messages[: i + 1]))) - newline_len
        spans.append((start, end))
    # END SOLUTION
    return input_ids, spans


def _check_span_inputs(input_ids: Sequence[int], spans: Sequence[tuple[int, int]], roles: Sequence[str]) -> None:
    if len(spans) != len(roles):
        raise ValueError(f"spans ({len(spans)}) and roles ({len(roles)}) must have one entry per message")
    n = len(input_ids)
    for (s, e), r in zip(spans, roles, strict=True):
        if not 0 <= s <= e <= n:
            raise ValueError(f"span ({s}, {e}) of a {r} message is outside 0..{n}")


def single_turn_labels(input_ids: Sequence[int], spans: Sequence[tuple[int, int]],
                       roles: Sequence[str]) -> list[int]:
    """Labels for a single-turn conversation: only the assistant's answer is supervised.

    Args:
        input_ids: the conversation's token ids (``message_spans``).
        spans: per-message ``(start, end)`` from ``message_spans``.
        roles: per-message role.

    Returns:
        ``labels``, a list as long as ``input_ids``: ``input_ids[t]`` inside the assistant's span,
        ``IGNORE_INDEX`` (-100) everywhere else (BOS, system, user, headers, newlines).

    Raises:
        ValueError: not exactly one assistant message and at most one user message (use
            ``multi_turn_labels`` for conversations), or spans outside the ids.
    """
    _check_span_inputs(input_ids, spans, roles)
    if list(roles).count("assistant") != 1 or list(roles).count("user") > 1:
        raise ValueError(f"single-turn masking needs one user and one assistant message, got roles {list(roles)}; "
                         "use multi_turn_labels for conversations")
    # BEGIN SOLUTION start from all IGNORE_INDEX; copy input_ids[start:end] into the assistant's span (easy, ~5 min)
    labels = [IGNORE_INDEX] * len(input_ids)
    for (s, e), r in zip(spans, roles, strict=True):
        if r == "assistant":
            labels[s:e] = input_ids[s:e]
    return labels
    # END SOLUTION


def role_labels(input_ids: Sequence[int], spans: Sequence[tuple[int, int]], roles: Sequence[str],
                train_role: str, max_length: int | None = None) -> tuple[list[int], list[int]]:
    """Truncate to ``max_length`` tokens and supervise every turn of ``train_role``.

    Truncation keeps the start (``input_ids[:max_length]``). A span that starts past the cut is
    dropped; a span cut in the middle keeps its visible tokens (``end = min(end, len(ids))``), so
    no label ever points past the sequence.

    Returns:
        ``(ids, labels)``, both of length ``min(len(input_ids), max_length)``.

    Raises:
        ValueError: ``max_length < 1``, spans/roles of different lengths or outside the ids.
    """
    _check_span_inputs(input_ids, spans, roles)
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    # BEGIN SOLUTION ids = input_ids[:max_length]; labels all IGNORE_INDEX; for every span of train_role that starts before len(ids), copy ids[start:min(end, len(ids))] (easy, ~10 min)
    ids = list(input_ids[:max_length] if max_length is not None else input_ids)
    n = len(ids)
    labels = [IGNORE_INDEX] * n
    for (s, e), r in zip(spans, roles, strict=True):
        if r == train_role and s < n:
            e = min(e, n)  # a truncated turn keeps its visible part
            labels[s:e] = ids[s:e]
    return ids, labels
    # END SOLUTION


def multi_turn_labels(input_ids: Sequence[int], spans: Sequence[tuple[int, int]], roles: Sequence[str],
                      max_length: int | None = None) -> tuple[list[int], list[int]]:
    """Multi-turn SFT masks: every assistant turn supervised, truncation-safe (``role_labels``)."""
    return role_labels(input_ids, spans, roles, "assistant", max_length)


def reverse_labels(input_ids: Sequence[int], spans: Sequence[tuple[int, int]], roles: Sequence[str],
                   max_length: int | None = None) -> tuple[list[int], list[int]]:
    """Reverse masking: supervise the *user* turns (and their ``<|im_end|>``), mask everything else.

    A model trained this way learns to predict what a user says next given the assistant's
    previous turn: a user simulator for testing assistants or generating synthetic dialogues.
    For a single-turn pair, swap the order first (``swap_single_turn``) so the user's message is
    conditioned on the answer. Truncation works as in ``multi_turn_labels``.
    """
    return role_labels(input_ids, spans, roles, "user", max_length)


def swap_single_turn(messages: Sequence[dict]) -> list[dict]:
    """``[system?, user, assistant]`` -> ``[system?, assistant, user]`` for single-turn reverse masking."""
    messages = check_messages(messages)
    system = [m for m in messages if m["role"] == "system"]
    rest = [m for m in messages if m["role"] != "system"]
    if [m["role"] for m in rest] != ["user", "assistant"]:
        raise ValueError(f"swap_single_turn needs one user then one assistant message, got {[m['role'] for m in rest]}")
    return system + rest[::-1]


def encode_conversation(tokenizer, messages: Sequence[dict], mode: str = "assistant",
                        max_length: int | None = None) -> dict[str, list[int]]:
    """``{"input_ids", "labels"}`` for one conversation.

    ``mode``: ``"single"`` (one user, one assistant), ``"assistant"`` (all assistant turns,
    truncation-safe), ``"reverse"`` (all user turns). ``max_length`` truncates (keeps the start).
    """
    if mode not in ("single", "assistant", "reverse"):
        raise ValueError(f"mode must be 'single', 'assistant' or 'reverse', got {mode!r}")
    ids, spans = message_spans(tokenizer, messages)
    roles = [m["role"] for m in messages]
    if mode == "single":
        labels = single_turn_labels(ids, spans, roles)
        if max_length is not None:
            ids, labels = ids[:max_length], labels[:max_length]
        return {"input_ids": list(ids), "labels": labels}
    fn = multi_turn_labels if mode == "assistant" else reverse_labels
    ids, labels = fn(ids, spans, roles, max_length)
    return {"input_ids": ids, "labels": labels}


# ============================================================================ 3. cross-entropy
def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = IGNORE_INDEX,
                   num_items_in_batch: int | torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy of a causal LM, written from ``log_softmax`` and ``gather``.

    Position ``t`` of ``logits`` predicts ``labels[:, t + 1]`` (the shift happens here, as in
    ``transformers``' ``ForCausalLMLoss``). Targets equal to ``ignore_index`` contribute nothing.

    Args:
        logits: ``(B, T, V)`` float.
        labels: ``(B, T)`` int64; values in ``[0, V)`` or ``ignore_index``.
        ignore_index: the label that marks "no loss here" (-100).
        num_items_in_batch: the divisor. ``None``: the number of supervised targets in *this*
            batch (a token mean). Under gradient accumulation pass the number of supervised
            targets of the *whole* accumulated batch, so that summing the micro-batch losses gives
            the mean over all of its tokens (Hugging Face's fix of late 2024).

    Returns:
        A scalar float32 tensor: ``-sum(log p(target)) / divisor``. With no supervised target and
        ``num_items_in_batch=None`` it is ``0.0`` (still connected to the graph).

    Raises:
        ValueError: wrong shapes, non-finite logits, labels out of range, ``num_items_in_batch < 1``.
        TypeError: integer logits or non-integer labels.
    """
    if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
        raise ValueError(f"expected logits (B, T, V) and labels (B, T), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a float tensor, got {logits.dtype}")
    if labels.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"labels must be int64, got {labels.dtype}")
    if not torch.isfinite(logits).all():
        raise ValueError("logits contain NaN or inf")
    valid = labels != ignore_index
    if valid.any() and (labels[valid].min() < 0 or labels[valid].max() >= logits.shape[-1]):
        raise ValueError(f"labels must be in [0, {logits.shape[-1]}) or {ignore_index}, "
                         f"got min {int(labels[valid].min())}, max {int(labels[valid].max())}")
    if num_items_in_batch is not None and int(num_items_in_batch) < 1:
        raise ValueError(f"num_items_in_batch must be >= 1, got {int(num_items_in_batch)}")
    # BEGIN SOLUTION shift (logits[:, :-1], labels[:, 1:]); log_softmax in float32 over V; gather the target's log-prob (clamp ignored targets to 0 before gather); zero them with the mask; sum; divide by num_items_in_batch or the mask's count (return 0 * sum when the count is 0) (medium, ~20 min)
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    mask = shift_labels != ignore_index
    logp = F.log_softmax(shift_logits, dim=-1)
    target_logp = logp.gather(-1, shift_labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    total = -(target_logp * mask).sum()
    if num_items_in_batch is not None:
        return total / num_items_in_batch
    count = int(mask.sum())
    return total / count if count else total * 0.0
    # END SOLUTION


def count_targets(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> int:
    """Supervised targets after the causal shift: ``(labels[:, 1:] != ignore_index).sum()``."""
    return int((labels[:, 1:] != ignore_index).sum())


def sft_step(model, micro_batches: Sequence[dict[str, torch.Tensor]], optimizer=None, *,
             normalize: str = "global") -> float:
    """One optimizer step with gradient accumulation over ``micro_batches``; returns the step's loss.

    Args:
        model: a causal LM returning ``.logits`` for ``model(input_ids=..., attention_mask=...)``.
        micro_batches: dicts with ``input_ids``, ``attention_mask``, ``labels`` (each ``(b, T_i)``).
        optimizer: stepped and zeroed at the end when given (leave ``None`` to inspect ``.grad``).
        normalize: ``"global"`` divides every micro-batch's summed loss by the supervised-target
            count of *all* micro-batches (``num_items_in_batch``), so the accumulated gradient is
            the gradient of the token mean over the whole step. ``"per_micro_batch"`` takes each
            micro-batch's own mean and divides by the number of micro-batches: the pre-2024
            behaviour, which over-weights tokens of micro-batches with few targets.

    Returns:
        The step's loss as reported to a log: the token mean over all micro-batches for
        ``"global"``, the mean of micro-batch means for ``"per_micro_batch"``.

    Raises:
        ValueError: unknown ``normalize``, no micro-batches, or no supervised target at all.
    """
    if normalize not in ("global", "per_micro_batch"):
        raise ValueError(f"normalize must be 'global' or 'per_micro_batch', got {normalize!r}")
    if not micro_batches:
        raise ValueError("micro_batches is empty")
    # BEGIN SOLUTION global: n = sum of count_targets over micro-batches (ValueError if 0); for each: loss = causal_lm_loss(logits, labels, num_items_in_batch=n); backward; add to the total. per_micro_batch: (causal_lm_loss(...) / len(micro_batches)).backward(). Then optimizer.step() and zero_grad() if given (medium, ~15 min)
    n_total = sum(count_targets(mb["labels"]) for mb in micro_batches)
    if n_total == 0:
        raise ValueError("no supervised target in this step: every label is IGNORE_INDEX")
    reported = 0.0
    for mb in micro_batches:
        logits = model(input_ids=mb["input_ids"], attention_mask=mb.get("attention_mask")).logits
        if normalize == "global":
            loss = causal_lm_loss(logits, mb["labels"], num_items_in_batch=n_total)
        else:
            loss = causal_lm_loss(logits, mb["labels"]) / len(micro_batches)
        loss.backward()
        reported += float(loss.detach())
    if optimizer is not None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return reported
    # END SOLUTION


# ============================================================================ 4. data
def pad_right(examples: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Stack ``{"input_ids", "labels"}`` lists, right-padded (``pad_id`` / -100), with an attention mask."""
    if not examples:
        raise ValueError("no examples to pad")
    T = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), T), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), T), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _pair(instruction: str, inp: str, output: str) -> list[dict]:
    user = instruction.strip() + ("\n\n" + inp.strip() if inp and inp.strip() else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": output.strip()}]


def load_instruction_conversations(tokenizer, max_length: int, limit: int | None = None) -> list[list[dict]]:
    """Single-turn conversations from the mirror's instruction sets that fit in ``max_length`` tokens.

    Sources: ``llms-from-scratch-instruct/instruction-data.json`` (1,100 short Alpaca-style items,
    Raschka 2024) and ``llamafactory-demo/alpaca_en_demo.json`` (an Alpaca-GPT4 subset). Items whose
    rendered conversation is longer than ``max_length`` are dropped (not truncated: a cut answer
    would teach the model to stop mid-sentence without ``<|im_end|>``). Shuffled with seed 0.
    """
    rows: list[dict] = []
    for name, file in (("llms-from-scratch-instruct", "instruction-data.json"),
                       ("llamafactory-demo", "alpaca_en_demo.json")):
        rows += json.loads(dataset_path(name, file).read_text(encoding="utf-8"))
    convs = []
    for r in rows:
        if not r.get("output", "").strip() or IM_START in r["output"] + r["instruction"]:
            continue
        c = _pair(r["instruction"], r.get("input", ""), r["output"])
        if len(_ids(tokenizer, _render(tokenizer, c))) <= max_length:
            convs.append(c)
    random.Random(0).shuffle(convs)
    return convs[:limit] if limit else convs


def load_sft_sample(tokenizer) -> list[list[dict]]:
    """The CS336 ``sft-sample`` fixture as conversations (long story answers: the truncation case)."""
    path = dataset_path("sft-sample", "sft_sample.jsonl")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [_pair(r["prompt"], "", r["response"]) for r in rows]


# ============================================================================ 5. IFEval-style checks
# The instruction types we implement; each agrees with lm-eval's checker (test_lab.py checks it on
# the mirror's IFEval prompts). IFEval's other types: see IFEVAL_NOT_IMPLEMENTED.
IFEVAL_SUBSET = (
    "punctuation:no_comma", "startend:quotation", "startend:end_checker", "detectable_format:title",
    "detectable_content:postscript", "detectable_format:number_highlighted_sections",
    "detectable_format:number_bullet_lists", "detectable_format:json_format",
    "detectable_content:number_placeholders", "keywords:existence", "keywords:forbidden_words",
    "keywords:frequency", "keywords:letter_frequency", "length_constraints:number_words",
    "length_constraints:number_paragraphs", "combination:repeat_prompt",
)
IFEVAL_NOT_IMPLEMENTED = {
    # lm-eval's checker needs NLTK's punkt data (not downloadable offline):
    "length_constraints:number_sentences": "needs NLTK punkt (sentence tokenizer)",
    "change_case:capital_word_frequency": "needs NLTK punkt (nltk.word_tokenize)",
    # lm-eval's checker runs offline but calls langdetect (a statistical language identifier):
    "language:response_language": "needs langdetect",
    "change_case:english_capital": "needs langdetect",
    "change_case:english_lowercase": "needs langdetect",
    # offline, left out of our subset:
    "combination:two_responses": "offline; not in our subset",
    "detectable_format:multiple_sections": "offline; not in our subset",
    "length_constraints:nth_paragraph_first_word": "offline; not in our subset",
    "detectable_format:constrained_response": "offline; not in our subset",
}
_RELATIONS = ("less than", "at least")


def _compare(count: int, relation: str, target: int) -> bool:
    if relation not in _RELATIONS:
        raise ValueError(f"relation must be one of {_RELATIONS}, got {relation!r}")
    return count < target if relation == "less than" else count >= target


def _check_no_comma(response: str, kw: dict) -> bool:
    # BEGIN SOLUTION True when the response has no ',' at all (easy, ~2 min)
    return "," not in response
    # END SOLUTION


def _check_highlights(response: str, kw: dict) -> bool:
    # BEGIN SOLUTION count *single-line spans* (r"\*[^\n\*]*\*") whose text without the stars is non-blank, plus **bold** spans (r"\*\*[^\n\*]*\*\*") likewise; compare with kw['num_highlights'] (at least) (medium, ~10 min)
    n = sum(1 for h in re.findall(r"\*[^\n\*]*\*", response) if h.strip("*").strip())
    n += sum(1 for h in re.findall(r"\*\*[^\n\*]*\*\*", response) if h[2:-2].strip())
    return n >= kw["num_highlights"]
    # END SOLUTION


def _check_postscript(response: str, kw: dict) -> bool:
    # BEGIN SOLUTION lower-case the response; a line must start (after spaces) with the marker: 'P.S.' -> r"\s*p\.\s?s\..*$", 'P.P.S' -> r"\s*p\.\s?p\.\s?s.*$", else the lower-cased marker itself (as a regex); re.MULTILINE (medium, ~10 min)
    marker = kw["postscript_marker"]
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + marker.lower() + r".*$"
    return bool(re.findall(pattern, response.lower(), flags=re.MULTILINE))
    # END SOLUTION


def _check_number_words(response: str, kw: dict) -> bool:
    # BEGIN SOLUTION a word is a run of \w characters (what nltk's RegexpTokenizer(r"\w+") finds); compare the count with kw['num_words'] under kw['relation'] (easy, ~5 min)
    return _compare(len(re.findall(r"\w+", response)), kw["relation"], kw["num_words"])
    # END SOLUTION


def _check_quotation(response: str, kw: dict) -> bool:
    r = response.strip()
    return len(r) > 1 and r[0] == '"' and r[-1] == '"'


def _check_end(response: str, kw: dict) -> bool:
    return response.strip().strip('"').lower().endswith(kw["end_phrase"].strip().lower())


def _check_title(response: str, kw: dict) -> bool:
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", response))


def _check_bullets(response: str, kw: dict) -> bool:
    stars = re.findall(r"^\s*\*[^\*].*$", response, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", response, flags=re.MULTILINE)
    return len(stars) + len(dashes) == kw["num_bullets"]


def _check_json(response: str, kw: dict) -> bool:
    r = response.strip()
    for prefix in ("```json", "```Json", "```JSON", "```"):
        r = r.removeprefix(prefix)
    r = r.removesuffix("```").strip()
    try:
        json.loads(r)
    except ValueError:
        return False
    return True


def _check_placeholders(response: str, kw: dict) -> bool:
    return len(re.findall(r"\[.*?\]", response)) >= kw["num_placeholders"]


def _check_existence(response: str, kw: dict) -> bool:
    return all(re.search(k, response, flags=re.IGNORECASE) for k in kw["keywords"])


def _check_forbidden(response: str, kw: dict) -> bool:
    return not any(re.search(r"\b" + w + r"\b", response, flags=re.IGNORECASE) for w in set(kw["forbidden_words"]))


def _check_frequency(response: str, kw: dict) -> bool:
    n = len(re.findall(kw["keyword"].strip(), response, flags=re.IGNORECASE))
    return _compare(n, kw["relation"], kw["frequency"])


def _check_letter(response: str, kw: dict) -> bool:
    return _compare(Counter(response.lower())[kw["letter"].strip().lower()], kw["let_relation"], kw["let_frequency"])


def _check_paragraphs(response: str, kw: dict) -> bool:
    parts = re.split(r"\s?\*\*\*\s?", response)
    n = len(parts)
    for i, p in enumerate(parts):
        if not p.strip():
            if i in (0, len(parts) - 1):
                n -= 1
            else:
                return False
    return n == kw["num_paragraphs"]


def _check_repeat(response: str, kw: dict) -> bool:
    return response.strip().lower().startswith(kw["prompt_to_repeat"].strip().lower())


_CHECKERS = {
    "punctuation:no_comma": _check_no_comma, "startend:quotation": _check_quotation,
    "startend:end_checker": _check_end, "detectable_format:title": _check_title,
    "detectable_content:postscript": _check_postscript,
    "detectable_format:number_highlighted_sections": _check_highlights,
    "detectable_format:number_bullet_lists": _check_bullets, "detectable_format:json_format": _check_json,
    "detectable_content:number_placeholders": _check_placeholders, "keywords:existence": _check_existence,
    "keywords:forbidden_words": _check_forbidden, "keywords:frequency": _check_frequency,
    "keywords:letter_frequency": _check_letter, "length_constraints:number_words": _check_number_words,
    "length_constraints:number_paragraphs": _check_paragraphs, "combination:repeat_prompt": _check_repeat,
}


def check_instruction(instruction_id: str, response: str, kwargs: dict | None = None) -> bool:
    """Strict IFEval check: does ``response`` follow instruction ``instruction_id`` with ``kwargs``?

    ``kwargs`` are IFEval's (e.g. ``{"num_highlights": 3}``); ``None`` values are dropped as in the
    reference. A blank response never follows anything.

    Raises:
        ValueError: an instruction type outside ``IFEVAL_SUBSET`` (see ``IFEVAL_NOT_IMPLEMENTED``),
            or a missing argument.
        TypeError: ``response`` is not a string.
    """
    if instruction_id not in _CHECKERS:
        why = IFEVAL_NOT_IMPLEMENTED.get(instruction_id, "unknown instruction type")
        raise ValueError(f"instruction {instruction_id!r} is not implemented here ({why})")
    if not isinstance(response, str):
        raise TypeError(f"response must be a str, got {type(response).__name__}")
    kw = {k: v for k, v in (kwargs or {}).items() if v}
    if not response.strip():
        return False
    try:
        return bool(_CHECKERS[instruction_id](response, kw))
    except KeyError as e:
        raise ValueError(f"instruction {instruction_id!r} needs argument {e.args[0]!r}; got {sorted(kw)}") from None


def loose_variants(response: str) -> list[str]:
    """The 8 variants IFEval's *loose* score tries (any passing one counts).

    The response itself; without its first line; without its last line; without both (lines
    split on ``\\n``, the rest joined back with ``\\n`` and stripped); and each of those four
    with every ``*`` removed. Order: ``[r, r*, first, last, both, first*, last*, both*]``
    where ``x*`` means ``x`` with stars removed. Loose scoring forgives a greeting line ("Sure!"),
    a closing line, and markdown emphasis.
    """
    # BEGIN SOLUTION lines = response.split('\n'); first = '\n'.join(lines[1:]).strip(), last = '\n'.join(lines[:-1]).strip(), both = '\n'.join(lines[1:-1]).strip(); return the list in the documented order with .replace('*', '') for the starred ones (easy, ~10 min)
    lines = response.split("\n")
    first = "\n".join(lines[1:]).strip()
    last = "\n".join(lines[:-1]).strip()
    both = "\n".join(lines[1:-1]).strip()
    nostar = [x.replace("*", "") for x in (response, first, last, both)]
    return [response, nostar[0], first, last, both, nostar[1], nostar[2], nostar[3]]
    # END SOLUTION


def check_instruction_loose(instruction_id: str, response: str, kwargs: dict | None = None) -> bool:
    """Loose IFEval check: ``check_instruction`` passes on any of ``loose_variants(response)``."""
    return any(check_instruction(instruction_id, r, kwargs) for r in loose_variants(response))


def ifeval_scores(items: Sequence[dict], responses: Sequence[str]) -> dict[str, float]:
    """Instruction- and prompt-level strict/loose accuracy (IFEval's four numbers).

    ``items``: dicts with ``instruction_id_list``, ``kwargs`` (one dict per instruction) and
    ``prompt`` (used by ``combination:repeat_prompt``); ``responses``: one string per item.
    """
    if len(items) != len(responses) or not items:
        raise ValueError(f"need one response per item (got {len(items)} items, {len(responses)} responses)")
    inst_s, inst_l, prm_s, prm_l = [], [], [], []
    for it, resp in zip(items, responses, strict=True):
        s, l_ = [], []
        for iid, kw in zip(it["instruction_id_list"], it["kwargs"], strict=True):
            kw = dict(kw)
            if iid == "combination:repeat_prompt":
                kw["prompt_to_repeat"] = kw.get("prompt_to_repeat") or it["prompt"]
            s.append(check_instruction(iid, resp, kw))
            l_.append(check_instruction_loose(iid, resp, kw))
        inst_s += s
        inst_l += l_
        prm_s.append(all(s))
        prm_l.append(all(l_))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {"inst_strict": mean(inst_s), "inst_loose": mean(inst_l), "prompt_strict": mean(prm_s),
            "prompt_loose": mean(prm_l), "n_prompts": len(items), "n_instructions": len(inst_s)}


# --- a small synthetic verifiable-instruction set (children's-story answers, the base model's domain)
SYNTH_TYPES = ("punctuation:no_comma", "startend:quotation", "startend:end_checker",
               "detectable_format:title", "detectable_content:postscript")
_ENDINGS = ("The end.", "Is there anything else I can help with?", "That is all.")
_ASKS = ("Write a short story.", "Tell me a story for a child.", "Write a story about a happy day.",
         "Tell a short story about friends.", "Write a little story about a pet.")


def _stories(n: int, seed: int, split: str) -> list[str]:
    text = dataset_path("tinystories", "valid_prefix_794k.txt").read_text(encoding="utf-8")
    docs = [d.strip() for d in re.split(r"\n\s*\n", text) if d.strip()]
    half = len(docs) // 2
    docs = docs[:half] if split == "train" else docs[half:]
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        d = rng.choice(docs)
        sents = re.split(r"(?<=[.!?])\s+", d.replace("\n", " "))
        s = " ".join(sents[:2]).strip()
        if 30 <= len(s) <= 120 and '"' not in s and "*" not in s:
            out.append(s)
    return out


_TITLES = ("A Happy Day", "The Little Friend", "A Big Surprise", "The Best Day", "A Walk in the Park")


def synthetic_ifeval(n: int, seed: int = 0, split: str = "train") -> list[dict]:
    """``n`` verifiable-instruction items of the ``SYNTH_TYPES`` with compliant answers.

    Each item: ``{"prompt", "instruction_id_list", "kwargs", "messages"}`` where ``messages`` is
    the user prompt plus an answer built from a two-sentence TinyStories story that follows the
    instruction (commas removed, wrapped in quotes, an ending phrase, a ``<<title>>``, a ``P.S.``).
    ``split="train"`` and ``"test"`` draw stories from disjoint halves of the validation file.
    """
    rng = random.Random(seed + (0 if split == "train" else 10_000))
    stories = _stories(n, seed + (0 if split == "train" else 10_000), split)
    items = []
    for i, story in enumerate(stories):
        iid = SYNTH_TYPES[i % len(SYNTH_TYPES)]
        ask = rng.choice(_ASKS)
        kw: dict = {}
        if iid == "punctuation:no_comma":
            text, answer = "Do not use any commas in your response.", story.replace(",", "")
        elif iid == "startend:quotation":
            text, answer = "Wrap your entire response with double quotation marks.", f'"{story}"'
        elif iid == "startend:end_checker":
            kw = {"end_phrase": rng.choice(_ENDINGS)}
            text = f"Finish your response with this exact phrase: {kw['end_phrase']} No other words should follow it."
            answer = f"{story} {kw['end_phrase']}"
        elif iid == "detectable_format:title":
            text = "Your answer must contain a title, wrapped in double angular brackets, such as <<my title>>."
            answer = f"<<{rng.choice(_TITLES)}>>\n{story}"
        else:
            kw = {"postscript_marker": "P.S."}
            text = "At the end of your response, please add a postscript starting with P.S."
            answer = f"{story}\nP.S. I hope you liked it."
        prompt = f"{ask} {text}"
        items.append({"prompt": prompt, "instruction_id_list": [iid], "kwargs": [kw],
                      "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]})
    return items


# ============================================================================ 6. training loops
@dataclass
class SFTRecipe:
    """Hyper-parameters of one SFT run (our loop and TRL use the same ones)."""

    model: str = "main"          # curriculum model name, or an HF model id / folder (full mode)
    max_length: int = 80         # tokens per conversation (longer ones are dropped)
    n_instruct: int = 500        # instruction conversations used for training
    n_ifeval: int = 700          # synthetic verifiable-instruction items mixed in
    n_heldout: int = 64          # held-out instruction conversations (loss before/after)
    steps: int = 140
    micro_batch: int = 8
    grad_accum: int = 2
    lr: float = 2e-3
    weight_decay: float = 0.0
    seed: int = 0
    dtype: str = "float32"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


SMALL = SFTRecipe()
RECIPES = {"small": SMALL}


def base_model_dir(recipe: SFTRecipe) -> Path:
    """The HF folder the recipe starts from: the curriculum model's ``hf/`` or a hub id / path."""
    if recipe.model in ("main", "draft"):
        from labkit import curriculum_model_path

        return curriculum_model_path(recipe.model) / "hf"
    return Path(recipe.model)


def recipe_data(tokenizer, recipe: SFTRecipe) -> tuple[list[list[dict]], list[list[dict]]]:
    """(train conversations, held-out conversations) of a recipe; deterministic."""
    convs = load_instruction_conversations(tokenizer, recipe.max_length)
    heldout = convs[: recipe.n_heldout]
    train = convs[recipe.n_heldout: recipe.n_heldout + recipe.n_instruct]
    synth = [it["messages"] for it in synthetic_ifeval(recipe.n_ifeval, recipe.seed, "train")]
    train = train + [c for c in synth if len(_ids(tokenizer, _render(tokenizer, c))) <= recipe.max_length]
    random.Random(recipe.seed).shuffle(train)
    return train, heldout


@torch.no_grad()
def response_loss(model, tokenizer, conversations: Sequence[list[dict]], batch_size: int = 16,
                  max_length: int | None = None) -> float:
    """Mean next-token loss over the assistant tokens of ``conversations`` (nats per token)."""
    model.eval()
    total, count = 0.0, 0
    pad = tokenizer.pad_token_id
    for i in range(0, len(conversations), batch_size):
        batch = pad_right([encode_conversation(tokenizer, c, "assistant", max_length)
                           for c in conversations[i: i + batch_size]], pad)
        batch = {k: v.to(model.device) for k, v in batch.items()}
        n = count_targets(batch["labels"])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        total += float(causal_lm_loss(logits, batch["labels"], num_items_in_batch=max(n, 1))) * n
        count += n
    return total / max(count, 1)


def _linear_lr(step: int, total: int) -> float:
    return max(0.0, 1.0 - step / total)  # what transformers' "linear" schedule does with no warmup


def train_sft(model, tokenizer, conversations: Sequence[list[dict]], recipe: SFTRecipe,
              log_every: int = 20, quiet: bool = False, heldout: Sequence[list[dict]] = (),
              eval_at: Sequence[int] = ()) -> tuple[list[float], dict[int, float]]:
    """Our SFT loop: AdamW, linear decay, ``grad_accum`` micro-batches per step via ``sft_step``.

    Batches are drawn in a seeded shuffled order (a new permutation per epoch). Returns the
    per-step losses (token means over each step's supervised tokens) and ``{step: held-out
    response loss}`` measured after each step number in ``eval_at``.
    """
    evals: dict[int, float] = {}
    seed_everything(recipe.seed)
    model.train()
    enc = [encode_conversation(tokenizer, c, "assistant", recipe.max_length) for c in conversations]
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _linear_lr(s, recipe.steps))
    rng = random.Random(recipe.seed)
    order: list[int] = []
    losses = []
    dev = model.device
    for step in range(recipe.steps):
        mbs = []
        for _ in range(recipe.grad_accum):
            if len(order) < recipe.micro_batch:
                perm = list(range(len(enc)))
                rng.shuffle(perm)
                order += perm
            idx, order = order[: recipe.micro_batch], order[recipe.micro_batch:]
            mbs.append({k: v.to(dev) for k, v in pad_right([enc[i] for i in idx], tokenizer.pad_token_id).items()})
        losses.append(sft_step(model, mbs, opt))
        sched.step()
        if step + 1 in eval_at and heldout:
            evals[step + 1] = response_loss(model, tokenizer, heldout)
            model.train()
        if not quiet and (step % log_every == 0 or step == recipe.steps - 1):
            print(f"  [ours] step {step:4d}  loss {losses[-1]:.3f}", file=sys.stderr, flush=True)
    model.eval()
    return losses, evals


def train_with_trl(model, tokenizer, conversations: Sequence[list[dict]], recipe: SFTRecipe, out_dir: Path,
                   max_steps: int | None = None):
    """The same SFT run with ``trl.SFTTrainer`` (``assistant_only_loss=True``: TRL masks with our
    template's ``{% generation %}`` markers). Returns the trainer (``trainer.state.log_history``)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(out_dir), max_steps=max_steps or recipe.steps, per_device_train_batch_size=recipe.micro_batch,
        gradient_accumulation_steps=recipe.grad_accum, learning_rate=recipe.lr, weight_decay=recipe.weight_decay,
        lr_scheduler_type="linear", warmup_steps=0, seed=recipe.seed, data_seed=recipe.seed,
        assistant_only_loss=True, max_length=recipe.max_length, packing=False, logging_steps=10,
        save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
        disable_tqdm=True, bf16=False, fp16=False,
    )
    ds = Dataset.from_list([{"messages": list(c)} for c in conversations])
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer)
    trainer.train()
    model.eval()
    return trainer


# ============================================================================ 7. the SFT model other labs use
def _lib_versions() -> str:
    out = []
    for lib in ("torch", "transformers", "tokenizers"):
        try:
            out.append(f"{lib}={metadata.version(lib)}")
        except metadata.PackageNotFoundError:
            out.append(f"{lib}=none")
    return ",".join(out)


def sft_cache_key(name: str = "small") -> str:
    """sha256 over this file, the base model's cache key, the data files' sha256, the recipe, libraries."""
    from labkit.data import file_info

    if name not in RECIPES:
        raise ValueError(f"unknown SFT recipe {name!r}; known: {sorted(RECIPES)}")
    recipe = RECIPES[name]
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    if recipe.model in ("main", "draft"):
        from labkit.curriculum import cache_key

        h.update(cache_key(recipe.model).encode())
    else:
        h.update(recipe.model.encode())
    for ds, f in (("llms-from-scratch-instruct", "instruction-data.json"), ("llamafactory-demo", "alpaca_en_demo.json"),
                  ("tinystories", "valid_prefix_794k.txt")):
        h.update(str(file_info(ds, f).get("sha256")).encode())
    h.update(recipe.to_json().encode())
    h.update(_lib_versions().encode())
    return h.hexdigest()


def build_sft_model(recipe: SFTRecipe, out: Path, quiet: bool = False) -> dict:
    """Fine-tune ``recipe.model`` with our loop and ``save_pretrained`` it (+ tokenizer) into ``out``."""
    seed_everything(recipe.seed)
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base = base_model_dir(recipe)
        tok = load_tokenizer(base)
        model = load_model(base, tok, getattr(torch, recipe.dtype))
        train, heldout = recipe_data(tok, recipe)
        before = response_loss(model, tok, heldout)
        t0 = time.perf_counter()
        losses, evals = train_sft(model, tok, train, recipe, quiet=quiet, heldout=heldout, eval_at=(40,))
        seconds = time.perf_counter() - t0
        after = response_loss(model, tok, heldout)
    finally:
        torch.set_num_threads(torch_threads)
    # generation stops at the end of the assistant's turn
    im_end = tok.convert_tokens_to_ids(IM_END)
    model.generation_config.eos_token_id = [im_end, tok.eos_token_id] if tok.eos_token_id != im_end else [im_end]
    model.generation_config.pad_token_id = tok.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    metrics = {"recipe": asdict(recipe), "heldout_response_loss_before": before, "heldout_response_loss_after": after,
               "heldout_response_loss_at_step": {str(k): v for k, v in evals.items()},
               "train_loss_first": losses[0], "train_loss_last": losses[-1], "n_train": len(train),
               "n_heldout": len(heldout), "train_seconds": seconds}
    (out / "sft_metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    return metrics


def sft_model_path(name: str = "small") -> Path:
    """HF folder of the curriculum model fine-tuned by this lab's SFT recipe ``name``.

    ``<repo>/.cache/models/sft-<key16>/`` with ``save_pretrained`` model + tokenizer (our chat
    template; generation stops at ``<|im_end|>``) and ``sft_metrics.json``. Built on first use
    (about a minute on one CPU core), into a temporary folder renamed into place under an
    ``fcntl`` lock, so concurrent callers build it once; the key (``sft_cache_key``) changes
    whenever this file, the base model, the data or the recipe change.

    Raises:
        ValueError: unknown recipe name.
    """
    from labkit.curriculum import _locked
    from labkit.data import cache_dir

    key = sft_cache_key(name)
    models = cache_dir() / "models"
    final = models / f"sft-{key[:16]}"
    if final.is_dir():
        return final
    with _locked(models / ".sft.lock"):
        if final.is_dir():
            return final
        tmp = Path(tempfile.mkdtemp(dir=models, prefix=f".sft-{key[:16]}.", suffix=".tmp"))
        try:
            print(f"[lab 6.1] building SFT model {name!r} into {final} (about a minute, once) ...",
                  file=sys.stderr, flush=True)
            build_sft_model(RECIPES[name], tmp, quiet=True)
            (tmp / "cache_key.txt").write_text(key + "\n", encoding="utf-8")
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


# ============================================================================ 8. generation helpers
@torch.no_grad()
def generate_chat(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 48, do_sample: bool = False,
                  temperature: float = 1.0, seed: int = 0, batch_size: int = 16) -> list[str]:
    """Answer each prompt (one user turn) with ``model.generate``; stops at ``<|im_end|>``."""
    model.eval()
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outs: list[str] = []
    try:
        for i in range(0, len(prompts), batch_size):
            texts = [_render(tokenizer, [{"role": "user", "content": p}], add_generation_prompt=True)
                     for p in prompts[i: i + batch_size]]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            limit = min(max_new_tokens, getattr(model.config, "max_position_embeddings", 10**9) - enc["input_ids"].shape[1])
            if limit < 1:
                raise ValueError("prompt fills the model's context: no room to generate")
            torch.manual_seed(seed + i)
            gen = model.generate(**enc, max_new_tokens=limit, do_sample=do_sample,
                                 temperature=temperature if do_sample else None, top_p=None, top_k=None,
                                 eos_token_id=[im_end, tokenizer.eos_token_id], pad_token_id=tokenizer.pad_token_id)
            for row in gen[:, enc["input_ids"].shape[1]:]:
                ids = row.tolist()
                if im_end in ids:
                    ids = ids[: ids.index(im_end)]
                outs.append(tokenizer.decode(ids, skip_special_tokens=True).strip())
    finally:
        tokenizer.padding_side = old_side
    return outs


def write_generations(path: Path, prompts: Sequence[str], before: Sequence[str], after: Sequence[str],
                      references: Sequence[str] | None = None, title: str = "before vs after SFT") -> Path:
    """Write a side-by-side Markdown file of generations (one section per prompt)."""
    if not (len(prompts) == len(before) == len(after)) or not prompts:
        raise ValueError("prompts, before and after must be non-empty and of equal length")
    lines = [f"# {len(prompts)} held-out prompts: {title}\n"]
    for i, (p, b, a) in enumerate(zip(prompts, before, after, strict=True)):
        lines.append(f"## {i + 1}. {p}\n")
        if references is not None:
            lines.append(f"- reference: {references[i]}")
        lines += [f"- before: {b}", f"- after:  {a}\n"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def response_token_lengths(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 64,
                           seed: int = 0) -> list[int]:
    """Sampled (temperature 1) response lengths in tokens, up to and including ``<|im_end|>``."""
    outs = generate_chat(model, tokenizer, prompts, max_new_tokens, do_sample=True, seed=seed)
    return [len(_ids(tokenizer, o)) + 1 for o in outs]


# ============================================================================ 9. the length-weighted Trainer
class LengthWeightedDataset(torch.utils.data.Dataset):
    """(prompt, response) pairs as training examples that know their response length.

    ``__getitem__`` returns ``{"input_ids": LongTensor (T,), "labels": LongTensor (T,),
    "response_length": int}``: ``input_ids`` is the rendered one-turn conversation (our chat
    template); ``labels`` copies ``input_ids`` on the assistant's tokens (content + ``<|im_end|>``)
    and is ``-100`` elsewhere; ``response_length`` counts those supervised tokens.

    Raises:
        ValueError: empty pairs, an empty prompt/response, or an example longer than ``max_length``.
    """

    def __init__(self, tokenizer, pairs: Sequence[tuple[str, str]], max_length: int = 256):
        if not pairs:
            raise ValueError("pairs is empty")
        self.tokenizer, self.pairs, self.max_length = tokenizer, list(pairs), max_length

    def __len__(self) -> int:
        return len(self.pairs)

    def encode_pair(self, prompt: str, response: str) -> tuple[list[int], list[int], int]:
        """``(input_ids, labels, response_length)`` of one pair (the conversation without its final newline)."""
        msgs = check_messages([{"role": "user", "content": prompt}, {"role": "assistant", "content": response}])
        # BEGIN SOLUTION prompt_ids = tokens of msgs[:1] rendered with add_generation_prompt=True; full = tokens of the whole conversation minus the trailing newline; check prompt_ids is a prefix of full; labels = -100 on the prompt part, the ids on the response part; response_length = number of response tokens (medium, ~15 min)
        prompt_ids = _ids(self.tokenizer, _render(self.tokenizer, msgs[:1], add_generation_prompt=True))
        full = _ids(self.tokenizer, _render(self.tokenizer, msgs))
        full = full[: len(full) - len(_ids(self.tokenizer, "\n"))]
        if full[: len(prompt_ids)] != prompt_ids:
            raise ValueError("the prompt's tokens are not a prefix of the conversation's tokens")
        labels = [IGNORE_INDEX] * len(prompt_ids) + full[len(prompt_ids):]
        return full, labels, len(full) - len(prompt_ids)
        # END SOLUTION

    def __getitem__(self, i: int) -> dict[str, Any]:
        ids, labels, n_resp = self.encode_pair(*self.pairs[i])
        if len(ids) > self.max_length:
            raise ValueError(f"example {i} has {len(ids)} tokens > max_length {self.max_length}")
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "response_length": n_resp}


@dataclass
class LengthCollator:
    """Left-pad a list of ``LengthWeightedDataset`` items into a batch.

    Returns ``{"input_ids": (B, T) pad_id on the left, "attention_mask": (B, T) 0 on padding,
    "labels": (B, T) -100 on padding, "response_lengths": (B,) int64}``. Left padding puts every
    sequence's last token in the last column (the causal-LM convention for batched generation).
    """

    pad_id: int

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("empty batch")
        # BEGIN SOLUTION T = longest input; fill (B, T) with pad_id / 0 / -100 and write each row at [T - n:]; stack response_length into a LongTensor (easy, ~10 min)
        T = max(len(f["input_ids"]) for f in features)
        B = len(features)
        ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        mask = torch.zeros((B, T), dtype=torch.long)
        labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, T - n:] = torch.as_tensor(f["input_ids"])
            labels[i, T - n:] = torch.as_tensor(f["labels"])
            mask[i, T - n:] = 1
        lengths = torch.tensor([int(f["response_length"]) for f in features], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "response_lengths": lengths}
        # END SOLUTION


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(B,)`` mean next-token loss of each example over its own supervised tokens."""
    shift_logits, shift_labels = logits[:, :-1].float(), labels[:, 1:]
    tok = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                          ignore_index=IGNORE_INDEX, reduction="none").view(shift_labels.shape)
    n = (shift_labels != IGNORE_INDEX).sum(dim=1)
    if (n == 0).any():
        raise ValueError("an example has no supervised token")
    return tok.sum(dim=1) / n


def length_weighted_loss(logits: torch.Tensor, labels: torch.Tensor, response_lengths: torch.Tensor) -> torch.Tensor:
    """Inverse-length weighted loss: ``mean_i(w_i * loss_i)`` with ``w_i ∝ 1/len_i`` and ``sum_i w_i = B``.

    ``loss_i`` is example ``i``'s mean token loss (``per_example_loss``). Normalising the weights
    to sum to the batch size keeps the loss on the plain loss's scale (equal lengths give
    ``w_i = 1``), so the learning rate keeps its meaning; short responses get more weight.

    Raises:
        ValueError: non-positive lengths or a length count different from the batch size.
    """
    if response_lengths.shape != (logits.shape[0],):
        raise ValueError(f"response_lengths must have shape ({logits.shape[0]},), got {tuple(response_lengths.shape)}")
    if (response_lengths <= 0).any():
        raise ValueError("response_lengths must be positive")
    # BEGIN SOLUTION losses = per_example_loss(logits, labels); w = 1 / lengths (float); w = w / w.sum() * B; return (w * losses).mean() (easy, ~10 min)
    losses = per_example_loss(logits, labels)
    w = 1.0 / response_lengths.float()
    w = w / w.sum() * len(w)
    return (w * losses).mean()
    # END SOLUTION


class LengthWeightedTrainer(Trainer):
    """``transformers.Trainer`` whose loss weights each example by its inverse response length."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        lengths = inputs.pop("response_lengths")
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = length_weighted_loss(outputs.logits, labels, lengths.to(outputs.logits.device))
        return (loss, outputs) if return_outputs else loss


class PlainLengthTrainer(Trainer):
    """The unweighted baseline on the same batches: ``transformers``' own token-mean loss."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        inputs.pop("response_lengths", None)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


_TOPICS = ("the sun", "a cat", "the park", "a red ball", "the rain", "a big tree", "the sea", "a small dog",
           "the moon", "a birthday", "a garden", "the snow", "a train", "a bird", "the farm", "a cake")


def length_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Prompts answered half the time briefly and half the time at length (the weighting's target)."""
    rng = random.Random(seed)
    stories = _stories(n, seed + 7, "train")
    pairs = []
    for i in range(n):
        topic = rng.choice(_TOPICS)
        prompt = f"Tell me about {topic}."
        if i % 2 == 0:
            resp = f"I like {topic}."
        else:
            resp = f"I like {topic}. {stories[i]} We all had fun and we were happy."
        pairs.append((prompt, resp))
    return pairs


def train_length_trainers(model_dir: Path, pairs, steps: int, seed: int = 0, lr: float = 2e-3,
                          batch_size: int = 8, out_dir: Path | None = None):
    """Train the weighted and the plain trainer from ``model_dir`` with the same seed and steps."""
    from transformers import TrainingArguments

    results = {}
    tmp = out_dir or Path(tempfile.mkdtemp())
    for name, cls in (("weighted", LengthWeightedTrainer), ("plain", PlainLengthTrainer)):
        seed_everything(seed)
        tok = load_tokenizer(model_dir)
        model = load_model(model_dir, tok)
        args = TrainingArguments(output_dir=str(tmp / name), max_steps=steps, per_device_train_batch_size=batch_size,
                                 learning_rate=lr, lr_scheduler_type="constant", seed=seed, data_seed=seed,
                                 report_to=[], save_strategy="no", logging_steps=max(1, steps // 4),
                                 remove_unused_columns=False, use_cpu=not torch.cuda.is_available(),
                                 disable_tqdm=True, dataloader_num_workers=0)
        trainer = cls(model=model, args=args, train_dataset=LengthWeightedDataset(tok, pairs),
                      data_collator=LengthCollator(tok.pad_token_id))
        trainer.train()
        model.eval()
        results[name] = (model, tok)
    return results


# ============================================================================ 10. self-test
def _table(rows: list[tuple], header: tuple) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    line = lambda r: "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="full mode: --model on a GPU, more steps and data")
    ap.add_argument("--model", default="main", help="curriculum model name or HF model id/folder (full mode)")
    ap.add_argument("--steps", type=int, default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    import warnings

    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", category=FutureWarning)  # a deprecation inside TrainingArguments
    OUTPUTS.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    t_start = time.perf_counter()

    # ---- the SFT model (our loop), cached; or a full-mode run on --model
    if args.full or args.model != "main":
        recipe = SFTRecipe(model=args.model, max_length=512, n_instruct=1500, n_ifeval=500, steps=args.steps or 400,
                           micro_batch=8, grad_accum=4, lr=2e-5, dtype="bfloat16" if torch.cuda.is_available() else "float32")
        sft_dir = OUTPUTS / "sft-full"
        metrics = build_sft_model(recipe, sft_dir)
    else:
        recipe = SMALL
        sft_dir = sft_model_path("small")
        metrics = json.loads((sft_dir / "sft_metrics.json").read_text(encoding="utf-8"))
    base_dir = base_model_dir(recipe)
    tok = load_tokenizer(base_dir)
    print(f"\nSFT model: {sft_dir}")

    # ---- 1. masks on a real multi-turn conversation, and TRL's masks
    convs = load_instruction_conversations(tok, recipe.max_length)
    multi = convs[200] + convs[201]
    ids, spans = message_spans(tok, multi)
    roles = [m["role"] for m in multi]
    _, lab_a = multi_turn_labels(ids, spans, roles)
    _, lab_u = reverse_labels(ids, spans, roles)
    hf = tok.apply_chat_template(multi, return_dict=True, return_assistant_tokens_mask=True, tokenize=True)
    hf_mask = list(hf["assistant_masks"])
    ours_mask = [int(x != IGNORE_INDEX) for x in lab_a]
    print(f"\n[masks] 2-turn conversation, {len(ids)} tokens: assistant-supervised {sum(ours_mask)}, "
          f"user-supervised (reverse) {sum(x != IGNORE_INDEX for x in lab_u)}; "
          f"equal to transformers' assistant_masks: {ours_mask == hf_mask}")
    if ours_mask != hf_mask or list(hf["input_ids"]) != ids:
        failures.append("assistant mask differs from apply_chat_template(return_assistant_tokens_mask=True)")

    # ---- 2. loss vs transformers, and gradient accumulation
    from transformers.loss.loss_utils import ForCausalLMLoss

    g = torch.Generator().manual_seed(0)
    V = 50
    logits = torch.randn(2, 9, V, generator=g)
    labels = torch.randint(0, V, (2, 9), generator=g)
    labels[0, :3] = IGNORE_INDEX
    labels[1, :8] = IGNORE_INDEX  # micro-batch 2 has one target
    ours = causal_lm_loss(logits, labels)
    ref = ForCausalLMLoss(logits, labels, V)
    mb = [(logits[:1], labels[:1]), (logits[1:], labels[1:])]
    n_all = count_targets(labels)
    per_mb = sum(float(causal_lm_loss(lg, lb)) for lg, lb in mb) / 2
    glob = sum(float(causal_lm_loss(lg, lb, num_items_in_batch=n_all)) for lg, lb in mb)
    hf_glob = sum(float(ForCausalLMLoss(lg, lb, V, num_items_in_batch=n_all)) for lg, lb in mb)
    print(f"\n[loss] ours {float(ours):.6f} vs transformers ForCausalLMLoss {float(ref):.6f} "
          f"(|diff| {abs(float(ours) - float(ref)):.1e})")
    print(f"[grad accumulation] 2 micro-batches with {count_targets(labels[:1])} and {count_targets(labels[1:])} targets: "
          f"mean of micro-batch means {per_mb:.4f}, global token mean {float(ours):.4f}, "
          f"ours with num_items_in_batch {glob:.4f}, transformers with num_items_in_batch {hf_glob:.4f}")
    if abs(float(ours) - float(ref)) > 1e-5 or abs(glob - float(ours)) > 1e-5 or abs(per_mb - float(ours)) < 1e-3:
        failures.append("loss check")

    # ---- 3. SFT: our loop (cached model) and TRL on the same data and seed
    train, heldout = recipe_data(tok, recipe)
    base = load_model(base_dir, tok)
    sft = load_model(sft_dir)
    print(f"\n[SFT, our loop] held-out response loss {metrics['heldout_response_loss_before']:.3f} -> "
          f"{metrics['heldout_response_loss_after']:.3f} nats/token ({metrics['n_train']} train, "
          f"{metrics['n_heldout']} held-out conversations, {recipe.steps} steps x {recipe.micro_batch}x{recipe.grad_accum})")
    trl_steps = args.steps or (recipe.steps if args.full else 40)
    seed_everything(recipe.seed)
    trl_model = load_model(base_dir, tok)
    t0 = time.perf_counter()
    trainer = train_with_trl(trl_model, tok, train, recipe, OUTPUTS / "trl", max_steps=trl_steps)
    trl_s = time.perf_counter() - t0
    trl_after = response_loss(trl_model, tok, heldout)
    before = metrics["heldout_response_loss_before"]
    ours_40 = metrics.get("heldout_response_loss_at_step", {}).get(str(trl_steps))
    if ours_40 is not None:
        print(f"[SFT, our loop] after {trl_steps} steps: held-out response loss {ours_40:.3f}")
    print(f"[SFT, trl.SFTTrainer] {trl_steps} steps ({trl_s:.0f} s): held-out response loss {before:.3f} -> "
          f"{trl_after:.3f}; first/last logged train loss "
          f"{trainer.state.log_history[0].get('loss', float('nan')):.3f}/"
          f"{[h for h in trainer.state.log_history if 'loss' in h][-1]['loss']:.3f}")
    margin = 1.0
    for who, after in (("ours", metrics["heldout_response_loss_after"]), ("trl", trl_after)):
        if before - after < margin:
            failures.append(f"{who}: held-out response loss dropped by less than {margin} nats")

    # side-by-side generations on 20 held-out prompts
    prompts = [c[0]["content"] for c in heldout[:20]]
    g_before = generate_chat(base, tok, prompts)
    g_after = generate_chat(sft, tok, prompts)
    write_generations(OUTPUTS / "generations_sft.md", prompts, g_before, g_after,
                      [c[1]["content"] for c in heldout[:20]], "base curriculum model vs SFT model (greedy, 48 new tokens)")
    print(f"[generations] 20 held-out prompts before/after -> {OUTPUTS / 'generations_sft.md'}")
    for i in range(2):
        print(f"  prompt: {prompts[i]!r}\n    before: {g_before[i][:90]!r}\n    after:  {g_after[i][:90]!r}")

    # ---- 4. IFEval-style before/after on held-out synthetic prompts
    test_items = synthetic_ifeval(60, recipe.seed, "test")
    t_prompts = [it["prompt"] for it in test_items]
    out_b = generate_chat(base, tok, t_prompts, max_new_tokens=64)
    out_a = generate_chat(sft, tok, t_prompts, max_new_tokens=64)
    sc_b, sc_a = ifeval_scores(test_items, out_b), ifeval_scores(test_items, out_a)
    print(f"\n[IFEval-style] {sc_a['n_prompts']} held-out prompts of types {', '.join(SYNTH_TYPES)} (greedy):")
    print(_table([("base", f"{sc_b['inst_strict']:.3f}", f"{sc_b['inst_loose']:.3f}"),
                  ("SFT", f"{sc_a['inst_strict']:.3f}", f"{sc_a['inst_loose']:.3f}")],
                 ("model", "instruction-level strict", "instruction-level loose")))
    per_type = []
    for t in SYNTH_TYPES:
        sel = [i for i, it in enumerate(test_items) if it["instruction_id_list"][0] == t]
        ob = ifeval_scores([test_items[i] for i in sel], [out_b[i] for i in sel])
        oa = ifeval_scores([test_items[i] for i in sel], [out_a[i] for i in sel])
        per_type.append((t, len(sel), f"{ob['inst_strict']:.2f}", f"{oa['inst_strict']:.2f}",
                         f"{ob['inst_loose']:.2f}", f"{oa['inst_loose']:.2f}"))
    print(_table(per_type, ("type", "n", "base strict", "SFT strict", "base loose", "SFT loose")))
    write_generations(OUTPUTS / "generations_ifeval.md", t_prompts, out_b, out_a, title="IFEval-style, base vs SFT")
    if sc_a["inst_loose"] <= sc_b["inst_loose"] + 0.2:
        failures.append("IFEval-style loose accuracy did not improve by 0.2")

    # ---- 5. the length-weighted trainer
    pairs = length_pairs(160, seed=0)
    res = train_length_trainers(base_dir, pairs, steps=40, seed=0, out_dir=OUTPUTS / "length")
    lp = [f"Tell me about {t}." for t in _TOPICS] * 2
    means = {k: sum(response_token_lengths(m, t_, lp, seed=1)) / len(lp) for k, (m, t_) in res.items()}
    print(f"\n[length-weighted Trainer] 40 steps, same seed; mean sampled response length over {len(lp)} prompts: "
          f"weighted {means['weighted']:.1f} tokens, plain {means['plain']:.1f} tokens")
    if not means["weighted"] < means["plain"]:
        failures.append("weighted responses are not shorter than plain ones")

    print(f"\nself-test wall time {time.perf_counter() - t_start:.0f} s")
    if failures:
        print("FAILED: " + "; ".join(failures))
        return 1
    print("all sanity checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

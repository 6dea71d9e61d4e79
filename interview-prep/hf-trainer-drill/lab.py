# Generated from solution.py by `make labs` (labkit/labgen.py). Fill in the TODOs.
"""Interview drill: inverse-length weighted fine-tuning with the Hugging Face ``Trainer`` (timed, ~45 min).

The task an interviewer hands you: "fine-tune a chat model so that it leans towards shorter answers, by
weighting each example's loss by the inverse of its response length, using ``transformers.Trainer``".
Four pieces, each a TODO with the budget an interviewer would give it:

1. ``SFTPairDataset.__getitem__``: chat-template a (prompt, response) pair, tokenise it, mask the prompt
   tokens in ``labels`` with -100, return ``response_length``.                                 (~10 min)
2. ``LeftPadCollator.__call__``: left padding, -100 label padding, attention mask, position ids, the
   response lengths stacked into a tensor.                                                      (~10 min)
3. ``per_example_loss`` and ``inverse_length_weights``: the two tensor helpers.                 (~10 min)
4. ``LengthWeightedTrainer.compute_loss``: the override, including ``num_items_in_batch``.       (~15 min)

What ``Trainer`` passes as ``num_items_in_batch`` (transformers 5.x, read ``Trainer._get_num_items_in_batch``):
before an optimizer step it pulls ALL ``gradient_accumulation_steps`` micro-batches, counts the target
tokens in them (``labels[..., 1:] != -100`` for a causal LM, because the first label of a row is never
predicted) and passes that one total to every ``compute_loss`` call of the step. When the model's
``forward`` accepts ``**kwargs`` (Llama and GPT-2 do) the Trainer then does NOT divide the returned loss by the
number of accumulation steps: it expects ``sum of token losses in this micro-batch / num_items_in_batch``,
so that the gradients summed over the micro-batches equal the gradient of the token mean over the whole
accumulated batch. Dividing by the micro-batch's own token count instead (the pre-4.46 bug) gives micro-batches
with few tokens too much weight, so 2 x 2 accumulation no longer equals a batch of 4.

The inverse-length loss is a mean over EXAMPLES, not over tokens, so ``num_items_in_batch`` (a token count) is
the wrong divisor for it; the correct accumulation there is "average the micro-batch losses", i.e. divide by
the number of accumulation steps. The trainer below says so through ``loss_is_scaled_for_ga``.

Model: the curriculum model (``labkit.curriculum_model_path("main") / "hf"``, a 1.8M-parameter Llama with a
ChatML template). Data: a handful of neutral synthetic instruction pairs. Labs that teach the pieces:
phase-06-finetuning-instruction/lab-01-sft (loss masking, ``num_items_in_batch``) and
phase-04-attention-transformers/lab-04-mini-transformer (causal LM loss, position ids).

Run the self-test: ``python solution.py`` (prints the pieces against hand computations, checks 2 x 2
accumulation against a batch of 4 and runs a few Trainer steps; exits 1 when a check fails).
"""
from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402

HERE = Path(__file__).resolve().parent
IGNORE_INDEX = -100

# Neutral synthetic instruction pairs: short and long answers on purpose, so the weights differ.
SYNTHETIC_PAIRS: list[tuple[str, str]] = [
    ("Name a colour.", "Blue."),
    ("What is two plus two?", "Four."),
    ("Say hello.", "Hello there!"),
    ("Describe the sky at night.", "The sky is dark and full of small bright stars, and the moon is round and white."),
    ("Tell me about a cat.", "The cat was soft and grey. It liked to sleep in the sun by the big window all day."),
    ("What do birds do?", "Birds fly."),
    ("Tell me a short story about a dog.",
     "Once upon a time there was a little dog named Max. He loved to run in the park with his friend Tom."),
    ("What is the opposite of hot?", "Cold."),
]


def load_model_and_tokenizer(name: str = "main"):
    """Load the curriculum model ``name`` ("main" or "draft") and its tokenizer from the HF folder.

    The tokenizer is set to pad on the LEFT with ``<|pad|>`` (causal LM convention: the last position of every
    row is a real token, which generation needs). Returns ``(model, tokenizer)``; the model is float32, train mode.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from labkit import curriculum_model_path

    path = curriculum_model_path(name) / "hf"
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        raise ValueError(f"the tokenizer at {path} has no pad token")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model, tok


def _check_pairs(pairs: Any) -> list[tuple[str, str]]:
    if not isinstance(pairs, (list, tuple)) or len(pairs) == 0:
        raise ValueError("pairs must be a non-empty list of (prompt, response) string pairs")
    out = []
    for i, p in enumerate(pairs):
        if not (isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(s, str) for s in p)):
            raise TypeError(f"pairs[{i}] must be a (prompt, response) pair of strings, got {p!r}")
        if not p[0].strip() or not p[1].strip():
            raise ValueError(f"pairs[{i}] has an empty prompt or response")
        out.append((p[0], p[1]))
    return out


class SFTPairDataset(torch.utils.data.Dataset):
    """(prompt, response) pairs -> token ids with the prompt masked out of the loss.

    Args:
        tokenizer: an HF tokenizer with a chat template (ChatML for the curriculum model).
        pairs: non-empty list of (prompt, response) strings.
        max_length: keep at most this many tokens (prompt + response), cut from the right.

    Raises:
        ValueError/TypeError: empty or malformed pairs, max_length < 2.
    """

    def __init__(self, tokenizer, pairs: Sequence[tuple[str, str]], max_length: int = 256):
        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
        self.tokenizer = tokenizer
        self.pairs = _check_pairs(pairs)
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.pairs)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Return ``{"input_ids": LongTensor (T,), "labels": LongTensor (T,), "response_length": int}``.

        ``input_ids`` = tokens of the chat template applied to [user prompt, assistant response];
        ``labels`` = the same ids with every PROMPT token (everything up to and including the generation
        prompt ``<|im_start|>assistant\\n``) replaced by -100; ``response_length`` = the number of response
        tokens kept (those whose label is not -100), i.e. the tokens the model is trained to produce.

        Raises:
            IndexError: i out of range.
            ValueError: the prompt alone fills ``max_length`` (no response token would be trained).
        """
        prompt, response = self.pairs[i]
        # TODO(1): prompt_text = apply_chat_template([user], tokenize=False, add_generation_prompt=True); full_text = apply_chat_template([user, assistant], tokenize=False); encode both without special tokens; check full starts with the prompt ids; labels = [-100]*len(prompt) + full[len(prompt):]; cut both to max_length (ValueError if no response token is left); response_length = kept response tokens (easy, ~10 min)
        raise NotImplementedError("TODO(1)")


@dataclass
class LeftPadCollator:
    """Batch dataset items of different lengths, padding on the LEFT.

    Attributes:
        pad_token_id: the id put into ``input_ids`` padding (``tokenizer.pad_token_id``).
    """

    pad_token_id: int

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Return ``{"input_ids", "attention_mask", "position_ids", "labels", "response_lengths"}``.

        Shapes: the first four are (B, T_max) int64 with padding at the START of each row (``pad_token_id``
        in ``input_ids``, 0 in ``attention_mask``, -100 in ``labels``); ``position_ids`` count real tokens only
        (``attention_mask.cumsum(-1) - 1``, clamped at 0) so every row starts at position 0 however much padding
        the batch needed (essential for learned absolute positions such as GPT-2's; RoPE models like this Llama
        only see relative offsets, but generation uses the same convention); ``response_lengths`` is (B,) int64.

        Raises:
            ValueError: an empty list of features, or an item whose input_ids and labels differ in length.
        """
        if len(features) == 0:
            raise ValueError("cannot collate an empty list of features")
        # TODO(2): T = longest row; for each row, pad = T - len; input_ids = [pad_id]*pad + ids, attention_mask = [0]*pad + [1]*len, labels = [-100]*pad + labels (ValueError when ids and labels differ in length); position_ids = (mask.cumsum(-1) - 1).clamp(min=0); response_lengths = tensor of the ints (easy, ~10 min)
        raise NotImplementedError("TODO(2)")


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token next-token cross-entropy, shifted, with -100 targets zeroed. Given.

    Args:
        logits: (B, T, V) float. labels: (B, T) int64 with -100 for ignored positions.
    Returns:
        ``(loss, mask)``: both (B, T-1); ``loss[b, t]`` = -log p(labels[b, t+1] | tokens <= t) in float32
        (0 where the target is -100), ``mask`` is the float 0/1 target mask.
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"logits must be (B, T, V) and labels (B, T); got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    loss = F.cross_entropy(shift_logits.transpose(1, 2), shift_labels, ignore_index=IGNORE_INDEX, reduction="none")
    return loss, shift_labels.ne(IGNORE_INDEX).float()


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss of each example over its own target tokens.

    Args:
        logits: (B, T, V) float. labels: (B, T) int64, -100 where not trained.
    Returns:
        (B,) float32: ``sum_t loss[b, t] / (number of targets in row b)``.
    Raises:
        ValueError: a row with no target token (its mean would be 0/0).
    """
    # TODO(3): loss, mask = token_losses(logits, labels); counts = mask.sum(1); ValueError if any count is 0; return loss.sum(1) / counts (easy, ~5 min)
    raise NotImplementedError("TODO(3)")


def inverse_length_weights(lengths: torch.Tensor) -> torch.Tensor:
    """Weights proportional to ``1 / length``, normalised so that they sum to the batch size.

    Normalising to sum B keeps the loss on the scale of an unweighted mean (all lengths equal -> all weights 1),
    so the learning rate means the same thing as without weighting.

    Args:
        lengths: (B,) positive ints or floats.
    Returns:
        (B,) float32.
    Raises:
        ValueError: empty, not 1-D, or a length <= 0.
    """
    # TODO(4): ValueError on a non-1-D/empty tensor or any length <= 0; w = 1 / lengths.float(); return w / w.sum() * B (easy, ~5 min)
    raise NotImplementedError("TODO(4)")


class LengthWeightedTrainer(Trainer):
    """``Trainer`` whose loss weights each example by the inverse of its response length.

    Args:
        weighting: "inverse_length" (the drill) or "none" (plain token-mean SFT, for comparison).
        Everything else goes to ``transformers.Trainer``. Use ``remove_unused_columns=False`` in the
        ``TrainingArguments``: ``response_lengths`` is not an argument of ``model.forward`` and would be dropped.
    """

    def __init__(self, *args, weighting: str = "inverse_length", **kwargs):
        if weighting not in ("inverse_length", "none"):
            raise ValueError(f"weighting must be 'inverse_length' or 'none', got {weighting!r}")
        self.weighting = weighting
        super().__init__(*args, **kwargs)

    @property
    def loss_is_scaled_for_ga(self) -> bool | None:
        # "none": the loss is divided by num_items_in_batch (the whole accumulated step's target count), so it is
        # already scaled; let Trainer decide as usual (it divides only when num_items_in_batch is None).
        # "inverse_length": a mean over the micro-batch's examples, NOT scaled: Trainer must divide by the
        # number of accumulation steps.
        return None if self.weighting == "none" else False

    @loss_is_scaled_for_ga.setter
    def loss_is_scaled_for_ga(self, value) -> None:  # Trainer.__init__ may assign the class default
        pass

    def compute_loss(self, model, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None):
        """The loss of one micro-batch.

        Steps: pop ``response_lengths`` and ``labels`` from a copy of ``inputs`` (the lengths are not a model input:
        some models raise on unknown keyword arguments, Llama silently ignores them; passing labels would make the
        model compute its own, unused loss); ``outputs = model(**inputs)``; then

        - "inverse_length": ``(per_example_loss(logits, labels) * inverse_length_weights(lengths)).mean()``;
          ``num_items_in_batch`` is ignored (it counts tokens; this loss averages examples) and Trainer divides
          by the accumulation steps (see ``loss_is_scaled_for_ga``);
        - "none": ``sum of token losses / num_items_in_batch`` when it is given (the target count of the whole
          accumulated step, so the micro-batch gradients add up to the big-batch token mean), else divided by
          this micro-batch's own target count.

        Returns ``loss`` (0-dim float32) or ``(loss, outputs)`` when ``return_outputs``.
        """
        # TODO(5): lengths = inputs.pop("response_lengths"); labels = inputs.pop("labels"); outputs = model(**inputs); weighted: (per_example_loss * inverse_length_weights(lengths)).mean(); none: token_losses sum / (num_items_in_batch if given else mask.sum()); return (loss, outputs) if return_outputs else loss (medium, ~15 min)
        raise NotImplementedError("TODO(5)")


def training_args(output_dir: str | Path, *, batch_size: int = 4, grad_accum: int = 1, max_steps: int = 5,
                  learning_rate: float = 3e-3, optim: str = "adamw_torch", **extra) -> TrainingArguments:
    """CPU ``TrainingArguments`` for the drill: no saving, no reporting, sequential order, constant LR. Given."""
    return TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=batch_size, gradient_accumulation_steps=grad_accum,
        max_steps=max_steps, learning_rate=learning_rate, optim=optim, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, max_grad_norm=0.0, logging_steps=1, save_strategy="no", report_to=[],
        remove_unused_columns=False, use_cpu=True, seed=0, data_seed=0, dataloader_num_workers=0,
        train_sampling_strategy="sequential", disable_tqdm=True, **extra)


# ------------------------------------------------------------------------------------------ self-test helpers
def grad_of(model, loss_fn) -> torch.Tensor:
    """Flattened gradient of ``loss_fn()`` w.r.t. all parameters (zeroes grads before and after)."""
    model.zero_grad(set_to_none=True)
    loss_fn().backward()
    g = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    model.zero_grad(set_to_none=True)
    return g


def trainer_step_delta(model, dataset, collator, *, weighting: str, batch_size: int, grad_accum: int,
                       lr: float = 1.0) -> torch.Tensor:
    """Run ONE optimizer step of plain SGD through ``LengthWeightedTrainer`` on a copy of ``model``.

    Returns ``(params_before - params_after) / lr``, i.e. the gradient Trainer applied.
    """
    import copy

    m = copy.deepcopy(model)
    before = torch.cat([p.detach().flatten().clone() for p in m.parameters()])
    with tempfile.TemporaryDirectory() as d:
        args = training_args(d, batch_size=batch_size, grad_accum=grad_accum, max_steps=1, learning_rate=lr,
                             optim="sgd")
        LengthWeightedTrainer(model=m, args=args, train_dataset=dataset, data_collator=collator,
                              weighting=weighting).train()
    after = torch.cat([p.detach().flatten() for p in m.parameters()])
    return (before - after) / lr


def main() -> int:
    from labkit import seed_everything

    seed_everything(0)
    torch.set_num_threads(1)
    ok = True

    def check(name: str, cond: bool, detail: str = "") -> None:
        nonlocal ok
        ok &= bool(cond)
        print(f"  [{'ok' if cond else 'FAIL'}] {name}{(': ' + detail) if detail else ''}")

    model, tok = load_model_and_tokenizer("main")
    ds = SFTPairDataset(tok, SYNTHETIC_PAIRS, max_length=64)
    collator = LeftPadCollator(tok.pad_token_id)

    print("1. dataset (curriculum model tokenizer, ChatML template)")
    print(f"  {'prompt':36s} {'tokens':>6s} {'masked':>6s} {'response_length':>15s}")
    for i in range(len(ds)):
        ex = ds[i]
        n = len(ex["input_ids"])
        masked = int((ex["labels"] == IGNORE_INDEX).sum())
        print(f"  {ds.pairs[i][0][:36]:36s} {n:6d} {masked:6d} {ex['response_length']:15d}")
        check(f"pair {i}: masked + response = tokens", masked + ex["response_length"] == n)

    print("2. collator (left padding)")
    batch = collator([ds[i] for i in range(4)])
    print(f"  shapes: {({k: tuple(v.shape) for k, v in batch.items()})}")
    check("row 0 is padded on the left", bool(batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][0, -1] == 1))
    check("labels padding is -100", bool((batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()))

    print("3. weights and per-example loss")
    w = inverse_length_weights(batch["response_lengths"])
    print(f"  response_lengths {batch['response_lengths'].tolist()} -> weights {[round(x, 3) for x in w.tolist()]}"
          f" (sum {w.sum().item():.3f})")
    check("weights sum to the batch size", abs(w.sum().item() - 4) < 1e-5)
    model.eval()
    with torch.no_grad():
        inp = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
        logits = model(**inp).logits
        pel = per_example_loss(logits, batch["labels"])
        manual = []
        for b in range(4):  # one row at a time, no padding at all
            ex = ds[b]
            lg = model(input_ids=ex["input_ids"][None]).logits[0]
            tgt = ex["labels"][1:]
            keep = tgt != IGNORE_INDEX
            manual.append(F.cross_entropy(lg[:-1][keep], tgt[keep]).item())
    print(f"  per-example loss (batched) {[round(x, 4) for x in pel.tolist()]}")
    print(f"  per-example loss (one row, unpadded) {[round(x, 4) for x in manual]}")
    check("batched per-example loss == unpadded single-row loss", torch.allclose(pel, torch.tensor(manual), atol=1e-4))

    print("4. gradient accumulation: one SGD step through Trainer")
    four = torch.utils.data.Subset(ds, [0, 3, 5, 6])  # short and long answers
    g_big = trainer_step_delta(model, four, collator, weighting="none", batch_size=4, grad_accum=1)
    g_acc = trainer_step_delta(model, four, collator, weighting="none", batch_size=2, grad_accum=2)
    rel = ((g_big - g_acc).norm() / g_big.norm()).item()
    print(f"  unweighted: |g(2x2 accumulation) - g(batch 4)| / |g(batch 4)| = {rel:.2e}")
    check("2 x 2 accumulation == batch of 4 (unweighted, num_items_in_batch)", rel < 1e-4)

    model.train()
    b4 = collator([four[i] for i in range(4)])
    n_items = int(b4["labels"][:, 1:].ne(IGNORE_INDEX).sum())
    mb = [collator([four[0], four[1]]), collator([four[2], four[3]])]

    def hf_loss(b, n):  # transformers' own causal-LM loss with the same normaliser
        return model(**{k: b[k] for k in ("input_ids", "attention_mask", "position_ids", "labels")},
                     num_items_in_batch=n).loss

    g_hf = grad_of(model, lambda: hf_loss(mb[0], n_items) + hf_loss(mb[1], n_items))
    rel_hf = ((g_hf - g_acc).norm() / g_hf.norm()).item()
    print(f"  vs transformers' own loss with num_items_in_batch={n_items}: rel. diff {rel_hf:.2e}")
    check("Trainer's 2x2 gradient == transformers' loss gradient", rel_hf < 1e-4)
    g_bug = grad_of(model, lambda: (hf_loss(mb[0], None) + hf_loss(mb[1], None)) / 2)
    rel_bug = ((g_bug - g_big).norm() / g_big.norm()).item()
    print(f"  the old bug (mean per micro-batch, then / 2): rel. diff from batch 4 = {rel_bug:.2e}")

    g_w = trainer_step_delta(model, four, collator, weighting="inverse_length", batch_size=2, grad_accum=2)
    probe = LengthWeightedTrainer.__new__(LengthWeightedTrainer)
    probe.weighting = "inverse_length"
    g_w_manual = grad_of(model, lambda: (probe.compute_loss(model, mb[0]) + probe.compute_loss(model, mb[1])) / 2)
    rel_w = ((g_w - g_w_manual).norm() / g_w_manual.norm()).item()
    print(f"  weighted 2x2: Trainer vs mean of the two micro-batch losses: rel. diff {rel_w:.2e}")
    check("weighted loss is averaged over accumulation steps", rel_w < 1e-4)

    print("5. a few Trainer steps (inverse-length weighting, AdamW lr 3e-3, batch 4, 6 steps)")
    with tempfile.TemporaryDirectory() as d:
        tr = LengthWeightedTrainer(model=model, args=training_args(d, max_steps=6), train_dataset=ds,
                                   data_collator=collator)
        tr.train()
        losses = [h["loss"] for h in tr.state.log_history if "loss" in h]
    print("  logged losses: " + ", ".join(f"{x:.3f}" for x in losses))
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2  # sequential order: steps alternate two batches
    check("loss went down (mean of the last two steps < mean of the first two)", last < first, f"{first:.3f} -> {last:.3f}")
    print("all checks passed" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Interview drill: debug the LLM code.

Five short programs, each as a colleague might send it to you: it runs, it produces numbers,
and it is wrong in 2-4 ways that bite in practice. The buggy originals are in ``buggy/``:

====================  =========================================  ============================
program               buggy file                                 function here
====================  =========================================  ============================
1 training loop       ``buggy/train_loop.py``                    ``train_epoch``, ``evaluate``
2 attention module    ``buggy/attention.py``                     ``CausalSelfAttention.forward``
3 SFT collator        ``buggy/sft_collator.py``                  ``collate``
4 Trainer subclass    ``buggy/trainer_loss.py``                  ``TokenLossTrainer.compute_loss``
5 generation loop     ``buggy/generate.py``                      ``greedy_generate``
====================  =========================================  ============================

How the drill works: every TODO in ``lab.py`` is a function whose body you have not written
yet. Until you do, the ``@falls_back_to`` decorator runs the BUGGY original instead, so
``make check`` shows you the symptoms (a loss off by a factor, NaN, a leak from the future,
tokens that differ from ``model.generate``), never the answer. Copy the buggy body into the
TODO, fix it, and the symptom disappears. ``python lab.py`` prints the same symptoms as a table.
The README's answer key (folded) explains every bug.
"""
from __future__ import annotations

import functools
import importlib.util
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer

HERE = Path(__file__).resolve().parent
IGNORE_INDEX = -100


# --------------------------------------------------------------------------- given: the fallback
def load_buggy(name: str):
    """The module ``buggy/<name>.py`` (the colleague's original program)."""
    path = HERE / "buggy" / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the buggy originals ship with the drill")
    spec = importlib.util.spec_from_file_location(f"debug_drill_buggy_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def falls_back_to(module: str, qualname: str):
    """Run ``buggy/<module>.py``'s ``qualname`` while the decorated function is still a TODO.

    A body that raises the NotImplementedError of a ``TODO(k)`` stub (what ``lab.py`` ships with) is
    replaced by the buggy original at call time, so the tests report its symptoms.
    """
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except NotImplementedError as exc:
                if not str(exc).startswith("TODO("):
                    raise
                target = load_buggy(module)
                for part in qualname.split("."):
                    target = getattr(target, part)
                warnings.warn(f"{exc}: {fn.__qualname__} is not fixed yet, running buggy/{module}.py",
                              stacklevel=2)
                return target(*args, **kwargs)
        return wrapper
    return deco


# --------------------------------------------------------------------------- program 1: training loop
@falls_back_to("train_loop", "train_epoch")
def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, micro_batches, loss_fn,
                accum_steps: int) -> list[float]:
    """One pass over ``micro_batches`` (pairs ``(x, y)``), an optimizer step every ``accum_steps``.

    One step must equal one step on the concatenation of its ``accum_steps`` micro-batches
    (equal-sized micro-batches, ``loss_fn`` a mean). Returns the mean loss of each step.
    """
    # BEGIN SOLUTION fix buggy/train_loop.py's train_epoch (medium, ~10 min)
    model.train()
    optimizer.zero_grad()
    losses, running = [], 0.0
    for i, (x, y) in enumerate(micro_batches):
        loss = loss_fn(model(x), y) / accum_steps  # the step sees the MEAN over micro-batches
        loss.backward()                           # .grad accumulates across micro-batches
        running += loss.item()
        if (i + 1) % accum_steps == 0:
            optimizer.step()
            optimizer.zero_grad()                 # clear only after the step
            losses.append(running)
            running = 0.0
    return losses
    # END SOLUTION


@falls_back_to("train_loop", "evaluate")
def evaluate(model: nn.Module, batches, loss_fn) -> float:
    """Mean loss over ``batches``, deterministic (dropout off), no autograd graph, and the
    model's train/eval mode is left as it was found."""
    # BEGIN SOLUTION fix buggy/train_loop.py's evaluate (easy, ~5 min)
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    try:
        with torch.no_grad():
            for x, y in batches:
                total += loss_fn(model(x), y).item() * len(x)
                n += len(x)
    finally:
        model.train(was_training)
    return total / n
    # END SOLUTION


# --------------------------------------------------------------------------- program 2: attention
class CausalSelfAttention(nn.Module):
    """Causal multi-head self-attention, ``(B, T, d_model) -> (B, T, d_model)`` (Vaswani et al. 2017)."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    @falls_back_to("attention", "CausalSelfAttention.forward")
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Position t attends to positions 0..t (itself included), softmax over the keys."""
        # BEGIN SOLUTION fix buggy/attention.py's forward (medium, ~10 min)
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=-1)
        q = q.view(B, T, self.n_heads, self.d_head).transpose(1, 2)
        k = k.view(B, T, self.n_heads, self.d_head).transpose(1, 2)
        v = v.view(B, T, self.n_heads, self.d_head).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) / self.d_head ** 0.5
        future = torch.triu(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=1)
        scores = scores.masked_fill(future, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(B, T, C)
        return self.proj(out)
        # END SOLUTION


# --------------------------------------------------------------------------- program 3: SFT collator
@falls_back_to("sft_collator", "collate")
def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """``[{"prompt_ids": [...], "response_ids": [...]}, ...]`` -> right-padded ``input_ids``,
    ``attention_mask``, ``labels`` (``(B, T)`` int64) for an HF causal LM, which shifts the
    labels itself. Only response tokens are trained on."""
    # BEGIN SOLUTION fix buggy/sft_collator.py's collate (medium, ~10 min)
    T = max(len(e["prompt_ids"]) + len(e["response_ids"]) for e in examples)
    input_ids, attention_mask, labels = [], [], []
    for e in examples:
        prompt, response = list(e["prompt_ids"]), list(e["response_ids"])
        pad = T - len(prompt) - len(response)
        input_ids.append(prompt + response + [pad_id] * pad)
        attention_mask.append([1] * (len(prompt) + len(response)) + [0] * pad)
        labels.append([IGNORE_INDEX] * len(prompt) + response + [IGNORE_INDEX] * pad)  # unshifted
    return {"input_ids": torch.tensor(input_ids), "attention_mask": torch.tensor(attention_mask),
            "labels": torch.tensor(labels)}
    # END SOLUTION


# --------------------------------------------------------------------------- program 4: Trainer
class TokenLossTrainer(Trainer):
    """``transformers.Trainer`` with a hand-written token-level cross-entropy."""

    @falls_back_to("trainer_loss", "TokenLossTrainer.compute_loss")
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Next-token cross-entropy summed over the labelled tokens, divided by
        ``num_items_in_batch`` (the labelled tokens of the WHOLE accumulated batch) when the
        Trainer passes it, else by this batch's labelled tokens. Does not mutate ``inputs``."""
        # BEGIN SOLUTION fix buggy/trainer_loss.py's compute_loss (hard, ~15 min)
        labels = inputs["labels"]
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        logits = outputs.logits[:, :-1, :].float()  # position t predicts token t+1
        targets = labels[:, 1:]
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum")
        n = num_items_in_batch if num_items_in_batch is not None else (targets != IGNORE_INDEX).sum()
        loss = loss / n
        return (loss, outputs) if return_outputs else loss
        # END SOLUTION


# --------------------------------------------------------------------------- program 5: generation
@falls_back_to("generate", "greedy_generate")
@torch.no_grad()
def greedy_generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 8):
    """Batched greedy decoding for a decoder-only LM: ``-> (new_ids (B, N) int64,
    logprobs (B, N) float32)``, the same tokens as decoding each prompt alone and as
    ``model.generate(do_sample=False)``; no early stop at EOS. Logits may be large (a sharp,
    production-sized model's logits reach 20-40; ``exp(12)`` already overflows fp16)."""
    # BEGIN SOLUTION fix buggy/generate.py's greedy_generate (hard, ~15 min)
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    new, scores = [], []
    for _ in range(max_new_tokens):
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # real tokens count from 0 after the left pads
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1, :]
        logp = torch.log_softmax(logits.float(), dim=-1)  # stable, and in fp32
        nxt = logp.argmax(-1)
        scores.append(logp.gather(-1, nxt[:, None]).squeeze(-1))
        new.append(nxt)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return torch.stack(new, 1), torch.stack(scores, 1)
    # END SOLUTION


# --------------------------------------------------------------------------- self-test: the symptoms
def sharpen(model, factor: float = 3.0):
    """Multiply ``model.lm_head``'s output by ``factor`` (a hook; ``.remove()`` it): our 1.8M-param
    model's logits top out near 10, a production model's do not. Returns the hook handle."""
    return model.lm_head.register_forward_hook(lambda mod, inp, out: out * factor)


def symptoms() -> list[tuple[str, str, str, bool]]:
    """``(program, check, measured, ok)`` rows for the five programs of THIS module."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from labkit import curriculum_model_path, seed_everything

    rows = []
    # 1. one accumulated step vs one full-batch step
    seed_everything(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    ref = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    ref.load_state_dict(net.state_dict())
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    before = torch.cat([p.detach().flatten().clone() for p in net.parameters()])
    train_epoch(net, torch.optim.SGD(net.parameters(), lr=0.1), list(zip(x.chunk(4), y.chunk(4))),
                F.mse_loss, accum_steps=4)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    F.mse_loss(ref(x), y).backward()
    opt.step()
    d = torch.cat([p.detach().flatten() for p in net.parameters()]) - before
    d_ref = torch.cat([p.detach().flatten() for p in ref.parameters()]) - before
    ratio = (d.norm() / d_ref.norm()).item()
    rows.append(("1 train loop", "|accumulated update| / |full-batch update|", f"{ratio:.3f}",
                 abs(ratio - 1) < 1e-3))
    drop = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.5), nn.Linear(16, 1))
    e1, e2 = (evaluate(drop, [(x, y)], F.mse_loss) for _ in range(2))
    rows.append(("1 train loop", "evaluate twice: |difference|", f"{abs(e1 - e2):.2e}", e1 == e2))
    # 2. attention vs torch's SDPA
    seed_everything(0)
    att = CausalSelfAttention(32, 4)
    xa = torch.randn(2, 7, 32)
    with torch.no_grad():
        out = att(xa)
        q, k, v = (t.view(2, 7, 4, 8).transpose(1, 2) for t in att.qkv(xa).split(32, -1))
        want = att.proj(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, 7, 32))
    err = (out - want).abs().max().item()
    rows.append(("2 attention", "max |out - SDPA(is_causal)|", f"{err:.2e}", err < 1e-5))
    # 3-5 on the curriculum model
    path = curriculum_model_path("main") / "hf"
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    pairs = [("Q: Who is Tom?\nA:", " Tom is a boy."), ("Q: Where did the cat go?\nA:", " The cat went to the park to play.")]
    ex = [{"prompt_ids": tok(p)["input_ids"], "response_ids": tok(r)["input_ids"]} for p, r in pairs]
    batch = collate(ex, tok.pad_token_id)
    with torch.no_grad():
        got = model(**batch).loss.item()
        nll = []
        for e in ex:
            ids = torch.tensor([e["prompt_ids"] + e["response_ids"]])
            lp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
            tgt = ids[0, 1:]
            n_p = len(e["prompt_ids"])
            nll += (-lp[torch.arange(len(tgt)), tgt])[n_p - 1:].tolist()
    want = sum(nll) / len(nll)
    rows.append(("3 SFT collator", "HF loss on the batch / response-only NLL", f"{got / want:.3f}",
                 abs(got / want - 1) < 1e-3))
    import tempfile

    from transformers import TrainingArguments
    with tempfile.TemporaryDirectory() as tmp:
        tr = TokenLossTrainer(model=model, args=TrainingArguments(output_dir=tmp, report_to="none", use_cpu=True))
        full = collate(ex, tok.pad_token_id)
        n_items = (full["labels"][:, 1:] != IGNORE_INDEX).sum()
        with torch.no_grad():
            parts = sum(tr.compute_loss(model, collate([e], tok.pad_token_id), num_items_in_batch=n_items).item()
                        for e in ex)
            ref_loss = model(**full).loss.item()
    rows.append(("4 Trainer", "sum of micro-batch losses / full-batch loss", f"{parts / ref_loss:.3f}",
                 abs(parts / ref_loss - 1) < 1e-3))
    prompts = ["Once upon a time, there was a little", "Tom and Lily went", "One day"]
    hook = sharpen(model)
    ids, lps = greedy_generate(model, tok, prompts, max_new_tokens=6)
    alone = torch.cat([greedy_generate(model, tok, [p], max_new_tokens=6)[0] for p in prompts])
    hook.remove()
    rows.append(("5 generation", "log-probs finite", str(bool(torch.isfinite(lps).all())),
                 bool(torch.isfinite(lps).all())))
    same = (ids == alone).all(-1).tolist()
    rows.append(("5 generation", "batched == one prompt alone, per prompt", str(same), all(same)))
    return rows


def main() -> int:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    rows = symptoms()
    w = max(len(r[1]) for r in rows)
    print(f"{'program':20s} {'check':{w}s} {'measured':>14s}  ok")
    for prog, check, val, ok in rows:
        print(f"{prog:20s} {check:{w}s} {val:>14s}  {'yes' if ok else 'NO'}")
    bad = [r for r in rows if not r[3]]
    print("all programs behave" if not bad else f"{len(bad)} symptom(s): fix the TODOs in lab.py")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

"""Grader for the debug-the-LLM-code drill. Every test checks a SYMPTOM of the program against a
reference: one full-batch SGD step, torch's scaled_dot_product_attention, the Hugging Face model's
own loss (with and without ``num_items_in_batch``), ``model.generate`` and
``compute_transition_scores``. Until a TODO is written, lab.py runs the buggy original from
``buggy/`` (you will see a UserWarning saying so), so these tests fail with what the bug does."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labkit import curriculum_model_path, seed_everything


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def hf():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = curriculum_model_path("main") / "hf"
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def flat(model):
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def mlp(seed=0, dropout=0.0):
    seed_everything(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.Dropout(dropout), nn.Tanh(), nn.Linear(16, 1))


# --------------------------------------------------------------------------- 1. training loop
def test_accumulated_step_equals_one_full_batch_step(lab):
    net, ref = mlp(), mlp()
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    before = flat(net)
    lab.train_epoch(net, torch.optim.SGD(net.parameters(), lr=0.1), list(zip(x.chunk(4), y.chunk(4))),
                    F.mse_loss, accum_steps=4)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    F.mse_loss(ref(x), y).backward()
    opt.step()
    d, d_ref = flat(net) - before, flat(ref) - before
    ratio = (d.norm() / d_ref.norm()).item()
    cos = F.cosine_similarity(d, d_ref, dim=0).item()
    assert torch.allclose(d, d_ref, atol=1e-6), (
        f"One step after accumulating 4 micro-batches of 8 should equal one SGD step on the 32 examples "
        f"together. Your parameter update is {ratio:.2f}x as long as that reference, cosine {cos:.3f}. "
        f"A length ratio near 4 with cosine 1 is a scale problem; a cosine below 1 means some "
        f"micro-batches' gradients never reach optimizer.step(). Print p.grad after each micro-batch.")


def test_two_steps_follow_the_full_batch_trajectory(lab):
    net, ref = mlp(1), mlp(1)
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    losses = lab.train_epoch(net, torch.optim.SGD(net.parameters(), lr=0.1),
                             list(zip(x.chunk(8), y.chunk(8))), F.mse_loss, accum_steps=4)
    opt, ref_losses = torch.optim.SGD(ref.parameters(), lr=0.1), []
    for xb, yb in zip(x.chunk(2), y.chunk(2)):
        opt.zero_grad()
        loss = F.mse_loss(ref(xb), yb)
        loss.backward()
        opt.step()
        ref_losses.append(loss.item())
    assert len(losses) == 2, f"8 micro-batches with accum_steps=4 are 2 optimizer steps; you logged {len(losses)}"
    assert losses == pytest.approx(ref_losses, rel=1e-5), (
        f"logged step losses {losses} vs full-batch training {ref_losses}: the second step starts from "
        f"different weights, so the first update was not the full-batch one")


def test_evaluate_is_deterministic_and_leaves_the_mode_alone(lab):
    net = mlp(2, dropout=0.5)
    net.train()
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    batches = list(zip(x.chunk(4), y.chunk(4)))
    first, second = lab.evaluate(net, batches, F.mse_loss), lab.evaluate(net, batches, F.mse_loss)
    net.eval()
    with torch.no_grad():
        want = F.mse_loss(net(x), y).item()
    net.train()
    assert first == second, (f"evaluate() on the same data gave {first:.4f} then {second:.4f}: something random "
                             f"is still switched on during evaluation (this model has Dropout(0.5))")
    assert first == pytest.approx(want, rel=1e-5), f"eval loss {first:.5f}, the model in inference mode gives {want:.5f}"
    assert net.training, "after evaluate() the model must be back in train mode, or the next epoch trains without dropout"


def test_evaluate_builds_no_autograd_graph(lab):
    seen = []

    def loss_fn(out, y):
        seen.append(out.requires_grad)
        return F.mse_loss(out, y)

    net = mlp(3)
    lab.evaluate(net, [(torch.randn(8, 4), torch.randn(8, 1))], loss_fn)
    assert seen and not any(seen), ("the model's outputs in evaluate() require grad: every batch keeps its "
                                    "activations alive for a backward that never comes (memory grows, eval slows)")


# --------------------------------------------------------------------------- 2. attention
@pytest.fixture(scope="module")
def attn(lab):
    seed_everything(0)
    return lab.CausalSelfAttention(32, 4).eval()


def sdpa_reference(att, x):
    B, T, C = x.shape
    q, k, v = (t.view(B, T, 4, 8).transpose(1, 2) for t in att.qkv(x).split(C, -1))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return att.proj(out.transpose(1, 2).reshape(B, T, C))


@pytest.mark.given
def test_attention_rejects_bad_head_count(lab):
    with pytest.raises(ValueError, match="divisible"):
        lab.CausalSelfAttention(30, 4)


def test_attention_output_is_finite(lab, attn):
    with torch.no_grad():
        out = attn(torch.randn(2, 6, 32))
    bad = (~torch.isfinite(out)).any(-1)
    assert not bad.any(), (f"NaN/inf in the attention output at (batch, position) "
                           f"{bad.nonzero().tolist()[:6]}: a softmax over a row with no allowed entry is 0/0")


def test_attention_does_not_see_the_future(lab, attn):
    seed_everything(1)
    x = torch.randn(1, 8, 32)
    x2 = x.clone()
    x2[:, 5:] = torch.randn(1, 3, 32)
    with torch.no_grad():
        a, b = attn(x), attn(x2)
    changed = [t for t in range(5) if not torch.allclose(a[0, t], b[0, t], atol=1e-6)]
    assert not changed, (f"changing tokens 5..7 changed the outputs at positions {changed}: information leaks "
                         f"from the future (check every place where the query and key axes could be confused)")


def test_attention_matches_torch_sdpa(lab, attn):
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        out, want = attn(x), sdpa_reference(attn, x)
    err = (out - want).abs().max().item()
    assert err < 1e-5, (f"max |out - F.scaled_dot_product_attention(is_causal=True)| = {err:.3g}. Compare the "
                        f"attention weights' entropy: yours are sharper or flatter than the reference's?")


# --------------------------------------------------------------------------- 3. SFT collator
PAIRS = [("Q: Who is Tom?\nA:", " Tom is a boy."),
         ("Q: Where did the cat go?\nA:", " The cat went to the park to play."),
         ("Q: What is red?\nA:", " The ball.")]


@pytest.fixture(scope="module")
def examples(hf):
    _, tok = hf
    return [{"prompt_ids": tok(p)["input_ids"], "response_ids": tok(r)["input_ids"]} for p, r in PAIRS]


@pytest.mark.given
def test_collator_inputs_are_right_padded(lab, hf, examples):
    pad = hf[1].pad_token_id
    b = lab.collate(examples, pad)
    lens = [len(e["prompt_ids"]) + len(e["response_ids"]) for e in examples]
    assert b["input_ids"].shape == (3, max(lens)) and b["labels"].shape == b["input_ids"].shape
    assert b["attention_mask"].sum(1).tolist() == lens


def test_only_response_tokens_are_targets(lab, hf, examples):
    b = lab.collate(examples, hf[1].pad_token_id)
    n_targets = int((b["labels"] != -100).sum())
    n_resp = sum(len(e["response_ids"]) for e in examples)
    assert n_targets == n_resp, (f"{n_targets} label positions are trained on, but the three responses have only "
                                 f"{n_resp} tokens: the rest teaches the model to write prompts or padding")
    pad_targets = int(((b["attention_mask"] == 0) & (b["labels"] != -100)).sum())
    assert pad_targets == 0, f"{pad_targets} padding positions are targets"


def test_labels_line_up_with_the_inputs(lab, hf, examples):
    b = lab.collate(examples, hf[1].pad_token_id)
    keep = b["labels"] != -100
    off = int((b["labels"][keep] != b["input_ids"][keep]).sum())
    assert off == 0, (f"{off} trained label(s) differ from the input token at the same position. The HF model "
                      f"shifts labels by one inside its loss; the label at position t is read as the target for "
                      f"logits at t-1")


def test_hf_loss_equals_response_only_nll(lab, hf, examples):
    model, tok = hf
    b = lab.collate(examples, tok.pad_token_id)
    nll = []
    with torch.no_grad():
        got = model(**b).loss.item()
        for e in examples:
            ids = torch.tensor([e["prompt_ids"] + e["response_ids"]])
            lp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
            tgt = ids[0, 1:]
            nll += (-lp[torch.arange(len(tgt)), tgt])[len(e["prompt_ids"]) - 1:].tolist()
    want = sum(nll) / len(nll)
    assert got == pytest.approx(want, rel=1e-4), (
        f"model(**batch).loss = {got:.4f}, but the mean NLL of the response tokens (computed one example at a "
        f"time by hand) is {want:.4f} ({got / want:.2f}x)")


# --------------------------------------------------------------------------- 4. Trainer.compute_loss
@pytest.fixture(scope="module")
def trainer(lab, hf, tmp_path_factory):
    from transformers import TrainingArguments
    args = TrainingArguments(output_dir=str(tmp_path_factory.mktemp("trainer")), report_to="none", use_cpu=True)
    return lab.TokenLossTrainer(model=hf[0], args=args)


def test_compute_loss_matches_the_model_loss(lab, hf, examples, trainer):
    model, tok = hf
    batch = lab_free_collate(examples, tok.pad_token_id)
    with torch.no_grad():
        got = trainer.compute_loss(model, dict(batch)).item()
        want = model(**batch).loss.item()
    assert got == pytest.approx(want, rel=1e-4), (
        f"compute_loss = {got:.4f}, transformers' own causal-LM loss on the same batch = {want:.4f}. "
        f"Which logit is supposed to predict labels[:, t]?")


def test_num_items_in_batch_makes_accumulation_exact(lab, hf, examples, trainer):
    model, tok = hf
    full = lab_free_collate(examples, tok.pad_token_id)
    n_items = (full["labels"][:, 1:] != -100).sum()
    with torch.no_grad():
        parts = [trainer.compute_loss(model, lab_free_collate([e], tok.pad_token_id), num_items_in_batch=n_items).item()
                 for e in examples]
        want_full = model(**full).loss.item()
        want_parts = [model(**lab_free_collate([e], tok.pad_token_id), num_items_in_batch=n_items).loss.item()
                      for e in examples]
    assert parts == pytest.approx(want_parts, rel=1e-4), (
        f"with num_items_in_batch={int(n_items)} your micro-batch losses are {[round(p, 4) for p in parts]}, "
        f"transformers gives {[round(p, 4) for p in want_parts]}")
    assert sum(parts) == pytest.approx(want_full, rel=1e-4), (
        f"the Trainer backpropagates the SUM of the micro-batch losses when the model accepts loss kwargs: "
        f"{sum(parts):.4f} here vs the full-batch loss {want_full:.4f} ({sum(parts) / want_full:.2f}x), "
        f"so gradients are off by that factor and short examples weigh as much as long ones")


def test_compute_loss_returns_outputs_for_evaluation(lab, hf, examples, trainer):
    model, tok = hf
    batch = lab_free_collate(examples, tok.pad_token_id)
    with torch.no_grad():
        res = trainer.compute_loss(model, dict(batch), return_outputs=True)
    assert isinstance(res, tuple) and len(res) == 2 and hasattr(res[1], "logits"), (
        f"compute_loss(..., return_outputs=True) returned {type(res).__name__}; Trainer.prediction_step does "
        f"`loss, outputs = self.compute_loss(model, inputs, return_outputs=True)`, so evaluate() crashes")


def test_compute_loss_does_not_mutate_inputs(lab, hf, examples, trainer):
    model, tok = hf
    batch = dict(lab_free_collate(examples, tok.pad_token_id))
    with torch.no_grad():
        trainer.compute_loss(model, batch)
    assert "labels" in batch, ("compute_loss removed 'labels' from the batch dict: whatever reads the batch "
                               "after it (prediction_step's label gathering, a callback) finds no labels")


def lab_free_collate(examples, pad_id):
    """A correct collator of our own, so the Trainer tests do not depend on program 3."""
    T = max(len(e["prompt_ids"]) + len(e["response_ids"]) for e in examples)
    ids, mask, labels = [], [], []
    for e in examples:
        p, r = list(e["prompt_ids"]), list(e["response_ids"])
        n = T - len(p) - len(r)
        ids.append(p + r + [pad_id] * n)
        mask.append([1] * (len(p) + len(r)) + [0] * n)
        labels.append([-100] * len(p) + r + [-100] * n)
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "labels": torch.tensor(labels)}


# --------------------------------------------------------------------------- 5. generation loop
PROMPTS = ["Once upon a time, there was a little", "Tom and Lily went", "One day"]


@pytest.fixture(scope="module")
def sharp(lab, hf):
    model, tok = hf
    hook = lab.sharpen(model)  # logits x3: as large as a production model's
    yield model, tok
    hook.remove()


@pytest.fixture(scope="module")
def generated(lab, sharp):
    model, tok = sharp
    return lab.greedy_generate(model, tok, PROMPTS, max_new_tokens=6)


@pytest.fixture(scope="module")
def reference(sharp):
    model, tok = sharp
    enc = tok(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    with torch.no_grad():
        out = model.generate(**enc, do_sample=False, max_new_tokens=6, min_new_tokens=6,
                             pad_token_id=tok.pad_token_id, output_scores=True, return_dict_in_generate=True)
    new = out.sequences[:, enc["input_ids"].shape[1]:]
    lps = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
    return new, lps


def test_generation_logprobs_are_finite(generated):
    _, lps = generated
    assert torch.isfinite(lps).all(), (f"log-probs {lps.tolist()} contain -inf/NaN with logits of production size "
                                       f"(up to ~30): which dtype can hold exp(30)?")


def test_batched_generation_equals_one_prompt_at_a_time(lab, sharp, generated):
    model, tok = sharp
    ids, _ = generated
    alone = torch.cat([lab.greedy_generate(model, tok, [p], max_new_tokens=6)[0] for p in PROMPTS])
    differ = [i for i in range(len(PROMPTS)) if not torch.equal(ids[i], alone[i])]
    assert not differ, (f"prompts {differ} continue differently in a batch than alone: batched "
                        f"{[tok.decode(ids[i]) for i in differ]} vs alone {[tok.decode(alone[i]) for i in differ]}. "
                        f"Print the batch's input_ids: where do the pads sit relative to the new tokens?")


def test_generation_matches_model_generate(sharp, generated, reference):
    _, tok = sharp
    (ids, lps), (want_ids, want_lps) = generated, reference
    assert torch.equal(ids, want_ids), (f"tokens differ from model.generate(do_sample=False): "
                                        f"{[tok.decode(r) for r in ids]} vs {[tok.decode(r) for r in want_ids]}")
    assert torch.allclose(lps, want_lps.float(), atol=2e-3, rtol=1e-3), (
        f"log-probs differ from compute_transition_scores(normalize_logits=True) by up to "
        f"{(lps - want_lps).abs().max().item():.3g}")

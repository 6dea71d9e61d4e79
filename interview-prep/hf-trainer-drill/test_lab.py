"""Grader for the hf-trainer-drill. References: hand-written ChatML strings and hand computations,
``tokenizer.pad`` (left padding), ``torch.nn.functional.cross_entropy`` on unpadded rows, transformers' own
causal-LM loss (``model(..., labels=..., num_items_in_batch=...)``) and ``transformers.Trainer`` itself (one SGD
step with gradient accumulation 2 x 2 against a batch of 4)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from labkit import seed_everything

IGNORE = -100


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_tok(lab):
    seed_everything(0)
    return lab.load_model_and_tokenizer("main")


@pytest.fixture(scope="module")
def tok(model_tok):
    return model_tok[1]


@pytest.fixture(scope="module")
def ds(lab, tok):
    return lab.SFTPairDataset(tok, lab.SYNTHETIC_PAIRS, max_length=64)


@pytest.fixture(scope="module")
def collator(lab, tok):
    return lab.LeftPadCollator(tok.pad_token_id)


@pytest.fixture(scope="module")
def four(ds):
    return torch.utils.data.Subset(ds, [0, 3, 5, 6])  # two short and two long answers


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def _manual_rows(model, ds, idx):
    """Per-example mean token loss, one unpadded row at a time (the hand computation)."""
    out = []
    for i in idx:
        ex = ds[i]
        logits = model(input_ids=ex["input_ids"][None]).logits[0]
        tgt = ex["labels"][1:]
        keep = tgt != IGNORE
        out.append(F.cross_entropy(logits[:-1][keep], tgt[keep]))
    return torch.stack(out)


# ----------------------------------------------------------------------------------------------- 1. dataset
def test_dataset_masks_the_prompt_and_counts_the_response(lab, tok, ds):
    prompt, response = lab.SYNTHETIC_PAIRS[0]
    prompt_text = f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    full = _ids(tok, prompt_text + f"{response}<|im_end|>\n")
    n_prompt = len(_ids(tok, prompt_text))
    ex = ds[0]
    assert set(ex) >= {"input_ids", "labels", "response_length"}, (
        f"__getitem__ must return input_ids, labels and response_length; got keys {sorted(ex)}")
    assert ex["input_ids"].tolist() == full, (
        "input_ids are not the chat template of [user, assistant]: apply_chat_template(..., tokenize=False) on both "
        "messages, then tokenise WITHOUT special tokens")
    want = [IGNORE] * n_prompt + full[n_prompt:]
    assert ex["labels"].tolist() == want, (
        f"labels should be -100 on the {n_prompt} prompt tokens (up to and including '<|im_start|>assistant\\n') "
        "and equal input_ids on the response; check where the mask ends")
    assert ex["response_length"] == len(full) - n_prompt, (
        f"response_length should count the trained tokens ({len(full) - n_prompt}), got {ex['response_length']}")
    assert ex["input_ids"].dtype == torch.long and ex["labels"].dtype == torch.long


def test_dataset_truncates_and_rejects_a_prompt_that_fills_max_length(lab, tok):
    pairs = [("Describe the sky at night.", "The sky is dark and full of small bright stars.")]
    full = lab.SFTPairDataset(tok, pairs, max_length=256)[0]
    n_prompt = int((full["labels"] == IGNORE).sum())
    cut = lab.SFTPairDataset(tok, pairs, max_length=n_prompt + 3)[0]
    assert cut["input_ids"].tolist() == full["input_ids"][: n_prompt + 3].tolist(), "cut from the right at max_length"
    assert cut["response_length"] == 3, "response_length must count only the response tokens that were kept"
    with pytest.raises(ValueError):
        lab.SFTPairDataset(tok, pairs, max_length=n_prompt)[0]


@pytest.mark.given
def test_dataset_rejects_bad_pairs(lab, tok):
    with pytest.raises(ValueError):
        lab.SFTPairDataset(tok, [])
    with pytest.raises(TypeError):
        lab.SFTPairDataset(tok, [("only a prompt",)])
    with pytest.raises(ValueError):
        lab.SFTPairDataset(tok, [("a prompt", "  ")])


# ----------------------------------------------------------------------------------------------- 2. collator
def test_collator_pads_on_the_left_by_hand(lab):
    feats = [{"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor([IGNORE, 6, 7]), "response_length": 2},
             {"input_ids": torch.tensor([8, 9]), "labels": torch.tensor([IGNORE, 9]), "response_length": 1}]
    b = lab.LeftPadCollator(pad_token_id=3)(feats)
    assert b["input_ids"].tolist() == [[5, 6, 7], [3, 8, 9]], "pad input_ids on the LEFT with pad_token_id"
    assert b["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]], "attention_mask is 0 on padding, 1 on tokens"
    assert b["labels"].tolist() == [[IGNORE, 6, 7], [IGNORE, IGNORE, 9]], (
        "labels padding must be -100, never the pad id (the model would learn to predict padding)")
    assert b["position_ids"].tolist() == [[0, 1, 2], [0, 0, 1]], (
        "position_ids must count real tokens only: attention_mask.cumsum(-1) - 1, clamped at 0")
    assert b["response_lengths"].tolist() == [2, 1] and b["response_lengths"].dtype == torch.long, (
        "response_lengths: the ints stacked into an int64 (B,) tensor")
    for k in ("input_ids", "attention_mask", "labels", "position_ids"):
        assert b[k].dtype == torch.long, f"{k} must be int64"


def test_collator_matches_tokenizer_pad(lab, tok, ds, collator):
    feats = [ds[i] for i in (0, 3, 6)]
    ref = tok.pad({"input_ids": [f["input_ids"].tolist() for f in feats]}, padding_side="left", return_tensors="pt")
    b = collator(feats)
    assert torch.equal(b["input_ids"], ref["input_ids"]), "input_ids differ from tokenizer.pad(padding_side='left')"
    assert torch.equal(b["attention_mask"], ref["attention_mask"]), "attention_mask differs from tokenizer.pad"


def test_collator_rejects_bad_input(lab):
    c = lab.LeftPadCollator(pad_token_id=0)
    with pytest.raises(ValueError):
        c([])
    with pytest.raises(ValueError):
        c([{"input_ids": torch.tensor([1, 2]), "labels": torch.tensor([1]), "response_length": 1}])


# ------------------------------------------------------------------------------------ 3. loss helpers by hand
def test_per_example_loss_by_hand(lab):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, generator=g)
    labels = torch.tensor([[IGNORE, 1, 2, 3], [IGNORE, IGNORE, IGNORE, 4]])
    lp = logits.log_softmax(-1)
    row0 = -(lp[0, 0, 1] + lp[0, 1, 2] + lp[0, 2, 3]) / 3  # position t predicts label t+1
    row1 = -lp[1, 2, 4]
    got = lab.per_example_loss(logits, labels)
    assert got.shape == (2,), f"per_example_loss returns one value per example, got shape {tuple(got.shape)}"
    assert torch.allclose(got, torch.stack([row0, row1]), atol=1e-5), (
        f"got {got.tolist()}, want {[row0.item(), row1.item()]}: shift (logits[:, :-1] vs labels[:, 1:]) and "
        "divide each row by ITS OWN number of targets, not the batch total")
    with pytest.raises(ValueError):
        lab.per_example_loss(logits, torch.full((2, 4), IGNORE))


def test_inverse_length_weights_by_hand(lab):
    w = lab.inverse_length_weights(torch.tensor([1, 2, 4]))
    want = torch.tensor([1.0, 0.5, 0.25]) / 1.75 * 3
    assert torch.allclose(w, want, atol=1e-6), (
        f"got {w.tolist()}, want {want.tolist()}: w = 1/length, then normalise so the weights sum to B (here 3)")
    assert torch.allclose(lab.inverse_length_weights(torch.tensor([7, 7])), torch.ones(2)), (
        "equal lengths must give weight 1 each")
    assert w.dtype == torch.float32
    for bad in (torch.tensor([3, 0]), torch.tensor([-1, 2]), torch.tensor([]), torch.ones(2, 2)):
        with pytest.raises(ValueError):
            lab.inverse_length_weights(bad)


# -------------------------------------------------------------------------------------------- 4. compute_loss
def _bare_trainer(lab, weighting):
    t = lab.LengthWeightedTrainer.__new__(lab.LengthWeightedTrainer)  # compute_loss needs no Trainer state
    t.weighting = weighting
    return t


def test_weighted_loss_equals_manual_per_example_computation(lab, model_tok, ds, collator):
    model = model_tok[0].eval()
    idx = [0, 3, 5, 6]
    batch = collator([ds[i] for i in idx])
    with torch.no_grad():
        manual = _manual_rows(model, ds, idx)
        lengths = torch.tensor([ds[i]["response_length"] for i in idx], dtype=torch.float32)
        w = (1 / lengths) / (1 / lengths).sum() * 4
        want = (manual * w).mean()
        loss, out = _bare_trainer(lab, "inverse_length").compute_loss(model, dict(batch), return_outputs=True)
    assert loss.dim() == 0, "compute_loss must return a scalar"
    assert abs(loss.item() - want.item()) < 1e-4, (
        f"weighted loss {loss.item():.5f} != manual {want.item():.5f} (per-example mean loss on unpadded rows, "
        "weights 1/len normalised to sum B, then the mean). Did you pass position_ids, pop response_lengths, "
        "and weight the per-EXAMPLE means rather than the tokens?")
    assert hasattr(out, "logits"), "return_outputs=True must return (loss, model outputs)"
    assert "response_lengths" in batch, "do not mutate the caller's dict (copy it before popping)"


def test_unweighted_loss_equals_transformers_loss(lab, model_tok, ds, collator):
    model = model_tok[0].eval()
    batch = collator([ds[i] for i in (0, 3)])
    hf_in = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids", "labels")}
    t = _bare_trainer(lab, "none")
    with torch.no_grad():
        for n in (None, 123):
            ours = t.compute_loss(model, dict(batch), num_items_in_batch=n)
            ref = model(**hf_in, num_items_in_batch=n).loss
            assert abs(ours.item() - ref.item()) < 1e-5, (
                f"num_items_in_batch={n}: ours {ours.item():.6f} vs transformers {ref.item():.6f}. Unweighted: sum of "
                "token losses / num_items_in_batch when given (the whole accumulated step's target count), else / this "
                "micro-batch's target count")


def test_grad_accumulation_2x2_equals_batch_4_unweighted(lab, model_tok, four, collator):
    """The num_items_in_batch fix: Trainer's accumulated step equals the big batch, and transformers' own loss."""
    model = model_tok[0].train()
    g_big = lab.trainer_step_delta(model, four, collator, weighting="none", batch_size=4, grad_accum=1)
    g_acc = lab.trainer_step_delta(model, four, collator, weighting="none", batch_size=2, grad_accum=2)
    rel = ((g_big - g_acc).norm() / g_big.norm()).item()
    assert rel < 1e-4, (
        f"2 x 2 accumulation differs from a batch of 4 (relative difference {rel:.2e}): divide the token-loss sum by "
        "num_items_in_batch (Trainer passes the target count of ALL micro-batches of the step), not by the "
        "micro-batch's own count")
    b = collator([four[i] for i in range(4)])
    n = int(b["labels"][:, 1:].ne(IGNORE).sum())
    mbs = [collator([four[0], four[1]]), collator([four[2], four[3]])]

    def hf(mb):
        return model(**{k: mb[k] for k in ("input_ids", "attention_mask", "position_ids", "labels")},
                     num_items_in_batch=n).loss

    g_hf = lab.grad_of(model, lambda: hf(mbs[0]) + hf(mbs[1]))
    rel_hf = ((g_hf - g_acc).norm() / g_hf.norm()).item()
    assert rel_hf < 1e-4, f"Trainer's accumulated gradient differs from transformers' loss by {rel_hf:.2e}"


def test_grad_accumulation_weighted_averages_micro_batches(lab, model_tok, four, collator):
    model = model_tok[0].train()
    g = lab.trainer_step_delta(model, four, collator, weighting="inverse_length", batch_size=2, grad_accum=2)
    mbs = [collator([four[0], four[1]]), collator([four[2], four[3]])]
    t = _bare_trainer(lab, "inverse_length")
    want = lab.grad_of(model, lambda: (t.compute_loss(model, dict(mbs[0])) + t.compute_loss(model, dict(mbs[1]))) / 2)
    rel = ((g - want).norm() / want.norm()).item()
    assert rel < 1e-4, (
        f"weighted, 2 x 2 accumulation: Trainer's step is not the mean of the two micro-batch losses (rel. diff "
        f"{rel:.2e}). The weighted loss is a mean over examples: do not divide it by num_items_in_batch")


def test_a_few_trainer_steps_lower_the_loss(lab, model_tok, ds, collator, tmp_path):
    import copy

    seed_everything(0)
    model = copy.deepcopy(model_tok[0]).train()
    tr = lab.LengthWeightedTrainer(model=model, args=lab.training_args(tmp_path, max_steps=6), train_dataset=ds,
                                   data_collator=collator)
    tr.train()
    losses = [h["loss"] for h in tr.state.log_history if "loss" in h]
    assert len(losses) == 6
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert last < first, f"the loss did not go down over 6 AdamW steps: {losses}"


@pytest.mark.given
def test_trainer_rejects_unknown_weighting(lab):
    with pytest.raises(ValueError):
        lab.LengthWeightedTrainer(weighting="sqrt")

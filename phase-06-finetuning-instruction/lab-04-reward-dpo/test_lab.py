"""Grader for lab 6.4 (reward model, DPO, IPO, KTO). References: TRL 1.16 (``DPOTrainer._compute_loss``
for the ``sigmoid`` and ``ipo`` losses, ``DataCollatorForPreference``), transformers'
``LlamaForSequenceClassification`` (last-token reward pooling), ``torch.nn.functional.cross_entropy``
(response-only log-probs), closed-form values on hand examples, and two runs on the SFT model of
lab 6.1: a Bradley–Terry reward model scored on pairs it never saw, and ``trl.DPOTrainer`` on
preference pairs built from the model's own samples."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from labkit import seed_everything

BETA = 0.1


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: intra-op threads only add overhead (and thrash on a shared CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sft(lab):
    """(path, model, tokenizer) of lab 6.1's SFT model (built once and cached by lab 6.1)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(1)
    path = str(lab.sft_model_path())
    model, tok = lab.load_policy(path)
    return path, model, tok


@pytest.fixture(scope="module")
def noisy_policy(lab, sft):
    """The SFT model with small random noise on every weight: a policy that differs from the reference."""
    model, _ = lab.load_policy(sft[0])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return model


HAND_PAIRS = [
    ("Tell me a story about a dog.", "The dog was happy and played with his friend.", "The dog was sad and cried."),
    ("Write a short story about a cat.", "The cat smiled.", "The cat was scared of the big bad dog and ran away."),
    ("Can you tell a story with a ball?", "Tom and Sue had fun with the ball. They laughed.", "The ball broke."),
    ("Tell me a story about a boat.", "The boat was nice.", "No, the boat fell and Tom was upset."),
]


@pytest.fixture(scope="module")
def hand_batch(lab, sft):
    _, _, tok = sft
    pairs = [lab.PreferencePair(lab.format_prompt(tok, [{"role": "user", "content": q}]), c, r)
             for q, c, r in HAND_PAIRS]
    examples = [lab.tokenize_pair(tok, p.prompt, p.chosen, p.rejected) for p in pairs]
    return pairs, examples, lab.collate_pairs(examples, tok.pad_token_id, max_length=64)


# --------------------------------------------------------------------------- closed forms
def test_dpo_loss_closed_form(lab):
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-10.0, -12.0, -11.0, -11.0))
    losses, cr, rjr = lab.dpo_loss(pc, pr, rc, rr, beta=0.1)
    # margin = 0.1 * ((−10 + 11) − (−12 + 11)) = 0.2
    assert losses.item() == pytest.approx(math.log1p(math.exp(-0.2)), abs=1e-6), \
        "DPO loss is −log σ(β·[(π_w − ref_w) − (π_l − ref_l)]): check the sign of each log-ratio and that β multiplies the difference"
    assert cr.item() == pytest.approx(0.1) and rjr.item() == pytest.approx(-0.1), \
        "the implicit rewards are β·(log π − log π_ref) for each side (chosen +0.1, rejected −0.1 here)"
    assert not cr.requires_grad, "return the rewards detached: they are metrics, not part of the loss"


def test_dpo_loss_is_log2_at_the_reference_and_decreases_with_the_margin(lab):
    x = torch.tensor([-5.0, -40.0, -7.5])
    losses, _, _ = lab.dpo_loss(x, x - 3, x, x - 3, beta=0.5)
    assert torch.allclose(losses, torch.full((3,), math.log(2))), \
        "when the policy equals the reference every pair costs ln 2 (σ(0) = 1/2)"
    better, _, _ = lab.dpo_loss(x + 1, x - 3, x, x - 3, beta=0.5)
    assert (better < losses).all(), "raising log π(chosen) must lower the DPO loss"
    big, _, _ = lab.dpo_loss(torch.tensor([0.0]), torch.tensor([-1e4]), torch.tensor([0.0]), torch.tensor([0.0]), beta=1.0)
    assert torch.isfinite(big).all() and big.item() == pytest.approx(0.0, abs=1e-6), \
        "use F.logsigmoid, not log(sigmoid(...)), which underflows to log 0 for large margins"
    huge, _, _ = lab.dpo_loss(torch.tensor([-1e4]), torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]), beta=1.0)
    assert torch.isfinite(huge).all() and huge.item() == pytest.approx(1e4, rel=1e-5), \
        "a very wrong pair must cost about |margin|, not inf: F.logsigmoid is stable on both sides"


def test_ipo_loss_closed_form_and_length_normalisation(lab):
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-10.0, -12.0, -11.0, -11.0))
    assert lab.ipo_loss(pc, pr, rc, rr, beta=0.1).item() == pytest.approx((2 - 5) ** 2), \
        "IPO is (h − 1/(2β))² with h = (log π_w − ref_w) − (log π_l − ref_l): here (2 − 5)² = 9"
    normed = lab.ipo_loss(pc, pr, rc, rr, beta=0.1, chosen_lengths=torch.tensor([4]), rejected_lengths=torch.tensor([2]))
    assert normed.item() == pytest.approx((1 / 4 - (-1) / 2 - 5) ** 2), \
        "with lengths, divide EACH log-ratio by its own response length before subtracting (TRL's loss_type='ipo')"
    at_target = lab.ipo_loss(torch.tensor([5.0]), torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]), beta=0.1)
    assert at_target.item() == pytest.approx(0.0, abs=1e-9), "IPO is zero when the margin equals 1/(2β), not when it is infinite"


def test_kto_loss_closed_form(lab):
    pol = torch.tensor([-10.0, -10.0, -12.0])
    ref = torch.tensor([-11.0, -11.0, -11.0])
    desirable = torch.tensor([True, False, False])
    kl = 0.3
    losses = lab.kto_loss(pol, ref, desirable, kl, beta=0.5, desirable_weight=1.0, undesirable_weight=2.0)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    want = [1 - sig(0.5 * (1 - kl)), 2 * (1 - sig(0.5 * (kl - 1))), 2 * (1 - sig(0.5 * (kl + 1)))]
    assert losses.tolist() == pytest.approx(want, abs=1e-6), \
        ("KTO: desirable → w_d·(1 − σ(β(r − z0))), undesirable → w_u·(1 − σ(β(z0 − r))), r = log π − log π_ref; "
         "keep the examples in their input order and apply each weight to its own side")
    assert lab.kto_kl_estimate(torch.tensor([-3.0, -6.0]), torch.tensor([-4.0, -4.0])).item() == 0.0
    assert lab.kto_kl_estimate(torch.tensor([-3.0, -2.0]), torch.tensor([-4.0, -4.0])).item() == pytest.approx(1.5)


def test_bradley_terry_loss(lab):
    rc, rr = torch.tensor([1.5, 0.0, 3.0]), torch.tensor([0.5, 0.0, -2.0])
    losses = lab.bradley_terry_loss(rc, rr)
    assert losses.tolist() == pytest.approx([math.log1p(math.exp(-1.0)), math.log(2), math.log1p(math.exp(-5.0))], abs=1e-6), \
        "Bradley–Terry NLL is −log σ(r_chosen − r_rejected): is the difference the right way round?"
    assert torch.allclose(lab.bradley_terry_loss(rc + 7, rr + 7), losses), "adding a constant to every reward must not change the loss"
    with_margin = lab.bradley_terry_loss(rc, rr, margin=1.0)
    assert with_margin[0].item() == pytest.approx(math.log(2), abs=1e-6), "the margin is subtracted from r_w − r_l"
    far = lab.bradley_terry_loss(torch.tensor([-200.0]), torch.tensor([0.0]))
    assert far.item() == pytest.approx(200.0, rel=1e-6), "use F.logsigmoid: log(sigmoid(-200)) is −inf in float32"


# --------------------------------------------------------------------------- log-probs and TRL
@pytest.mark.given
def test_collate_pairs_matches_trl_collator(lab, hand_batch, sft):
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    _, examples, ours = hand_batch
    theirs = DataCollatorForPreference(pad_token_id=sft[2].pad_token_id, max_length=64)(examples)
    for key in ("input_ids", "attention_mask", "completion_mask"):
        assert torch.equal(ours[key], theirs[key]), f"collate_pairs differs from TRL's collator in {key}"


def test_sequence_logprobs_matches_cross_entropy_on_response_tokens(lab, sft, hand_batch):
    _, model, _ = sft
    _, _, batch = hand_batch
    with torch.no_grad():
        ours = lab.sequence_logprobs(model, **batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)[:, 1:]
        ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels, ignore_index=-100, reduction="none")
        want = -ce.sum(-1)
    assert ours.shape == (batch["input_ids"].shape[0],), "one log-prob per row: shape (2B,)"
    assert torch.allclose(ours, want, atol=1e-4), \
        ("sequence_logprobs must sum log p(token) over RESPONSE tokens only, predicting token t from the logits at "
         "t − 1: did you forget the shift, or score the prompt / padding too?")
    counts = batch["completion_mask"][:, 1:].sum(-1)
    with torch.no_grad():
        avg = lab.sequence_logprobs(model, **batch, average=True)
    assert torch.allclose(avg, want / counts, atol=1e-5), "average=True divides by the number of scored tokens"


def test_sequence_logprobs_ignores_padding(lab, sft, hand_batch):
    _, model, _ = sft
    _, _, batch = hand_batch
    with torch.no_grad():
        full = lab.sequence_logprobs(model, **batch)
        b = int(batch["attention_mask"].sum(-1).argmin())  # the shortest (most padded) row
        n = int(batch["attention_mask"][b].sum())
        alone = lab.sequence_logprobs(model, **{k: v[b: b + 1, :n] for k, v in batch.items()})
    assert torch.allclose(full[b], alone[0], atol=1e-4), "a padded row must score the same as the row alone"


def test_dpo_and_ipo_losses_equal_trl(lab, sft, noisy_policy, hand_batch):
    _, reference, tok = sft
    _, _, batch = hand_batch
    with torch.no_grad():
        pol = lab.sequence_logprobs(noisy_policy, **batch)
        ref = lab.sequence_logprobs(reference, **batch)
    lengths = batch["completion_mask"].sum(-1)
    ours = {
        "sigmoid": lab.dpo_loss(*pol.chunk(2), *ref.chunk(2), beta=BETA)[0].mean(),
        "ipo": lab.ipo_loss(*pol.chunk(2), *ref.chunk(2), beta=BETA, chosen_lengths=lengths.chunk(2)[0],
                            rejected_lengths=lengths.chunk(2)[1]).mean(),
    }
    for loss_type, value in ours.items():
        theirs = lab.trl_dpo_loss(noisy_policy, reference, tok, batch, beta=BETA, loss_type=loss_type)
        assert value.item() == pytest.approx(theirs.item(), rel=1e-4, abs=1e-5), \
            (f"our {loss_type} loss {value.item():.6f} != TRL's {theirs.item():.6f} on the same batch: rows are "
             "[chosen..., rejected...]; are the log-probs summed over response tokens only?")
    assert ours["sigmoid"].item() != pytest.approx(math.log(2), abs=1e-3), "test is vacuous: the policy equals the reference"


# --------------------------------------------------------------------------- reward model
def test_reward_model_pooling_matches_hf_sequence_classification(lab, sft):
    from transformers import AutoModelForSequenceClassification

    path, _, tok = sft
    seed_everything(0)
    rm = lab.RewardModel.from_pretrained(path).eval()
    hf = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).eval()
    hf.config.pad_token_id = tok.pad_token_id
    with torch.no_grad():
        hf.score.weight.copy_(rm.head.weight)
    texts = ["<|endoftext|>The dog was happy.", "<|endoftext|>Tom cried because the ball broke and he was very sad."]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    assert enc["attention_mask"][0].sum() < enc["attention_mask"].shape[1], "fixture: the first row must be padded"
    with torch.no_grad():
        ours = rm(enc["input_ids"], enc["attention_mask"])
        theirs = hf(**enc).logits.squeeze(-1)
    assert ours.shape == (2,), "one scalar reward per sequence: shape (B,)"
    assert torch.allclose(ours, theirs, atol=1e-4), \
        "the reward is the head applied at the LAST real token (not position −1 of a padded row, not a mean)"
    tok.padding_side = "left"
    try:
        left = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tok.padding_side = "right"
    with torch.no_grad():
        ours_left = rm(left["input_ids"], left["attention_mask"])
        theirs_left = hf(**left).logits.squeeze(-1)
    assert torch.allclose(ours_left, theirs_left, atol=1e-4), \
        ("with LEFT padding the last real token is position T − 1, not attention_mask.sum() − 1: find the last "
         "position whose mask is 1")


@pytest.fixture(scope="module")
def cheer_pairs(lab, sft):
    """Preference pairs from the SFT model's own samples, labelled by cheer_score; split by topic."""
    _, model, tok = sft
    seed_everything(0)
    pairs, all_pairs = lab.cheer_preference_sets(model, tok, seed=0)
    train, test = lab.split_by_group(pairs, lab.HELD_OUT_TOPICS)
    rm_train, _ = lab.split_by_group(all_pairs, lab.HELD_OUT_TOPICS)
    assert len(train) >= 100 and len(test) >= 30, f"too few pairs ({len(train)}, {len(test)}): did sampling change?"
    return train, test, rm_train


RM_MARGIN = 0.15  # held-out accuracy must beat a coin (0.5) by this much


def test_reward_model_beats_chance_on_pairs_it_never_saw(lab, sft, cheer_pairs):
    path, _, tok = sft
    _, test, rm_train = cheer_pairs
    seed_everything(0)
    rm = lab.RewardModel.from_pretrained(path)
    losses = lab.train_reward_model(rm, tok, rm_train, **lab.RM_SMALL)
    acc = lab.pairwise_accuracy(rm, tok, test, max_length=lab.RM_SMALL["max_length"])
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10, "the Bradley–Terry loss did not fall during training"
    assert acc > 0.5 + RM_MARGIN, \
        (f"held-out pairwise accuracy {acc:.3f} <= {0.5 + RM_MARGIN}: is the reward read at the last real token, and is "
         "the loss −log σ(r_chosen − r_rejected) (not the other way round)?")


# --------------------------------------------------------------------------- DPO with TRL on the SFT model
@pytest.fixture(scope="module")
def dpo_run(lab, sft, cheer_pairs):
    path, base, tok = sft
    train, test, _ = cheer_pairs
    # fresh models from disk: TRL patches the forward of the models it trains, so never deepcopy one it touched
    reference, _ = lab.load_policy(path)
    for p in reference.parameters():
        p.requires_grad_(False)
    policy, _ = lab.load_policy(path)
    seed_everything(0)
    held = [p for t, p in lab.make_prompts(tok) if t in lab.HELD_OUT_TOPICS]
    before = lab.cheer_report(base, tok, held, n_per_prompt=8, seed=1)
    lab.run_trl_dpo(policy, reference, tok, train, **lab.DPO_SMALL)
    after = lab.cheer_report(policy, tok, held, n_per_prompt=8, seed=1)
    acc = lab.implicit_reward_accuracy(policy, reference, tok, test, beta=lab.DPO_SMALL["beta"],
                                       max_length=lab.DPO_SMALL["max_length"])
    return acc, before, after


def test_trl_dpo_on_sft_model_wins_held_out_pairs(dpo_run):
    acc, _, _ = dpo_run
    assert acc["accuracy"] != 0.5 or acc["margin"] != 0.0, \
        "the policy still equals the reference after training: was the model TRL trained the one evaluated?"
    assert acc["accuracy"] > 0.6, \
        (f"after trl.DPOTrainer the implicit reward ranks only {acc['accuracy']:.3f} of held-out pairs right "
         "(SFT baseline 0.5, spec bar 0.6): check sequence_logprobs and dpo_loss")
    assert acc["margin"] > 0, "the mean implicit-reward margin on held-out pairs should be positive after DPO"


def test_dpo_makes_fresh_samples_more_cheerful(dpo_run):
    _, before, after = dpo_run
    assert after["positive"] > before["positive"] + 0.05, \
        (f"share of cheerful samples {before['positive']:.3f} -> {after['positive']:.3f}: DPO on cheer pairs should "
         "raise it by more than 5 points")


# --------------------------------------------------------------------------- building pairs, bad input
def test_build_preference_pairs(lab):
    prompts = ["p0", "p1", "p2"]
    responses = [["sad", "happy", "happy fun", "fun"], ["ok", "fine"], ["bad", "nice"]]
    pairs = lab.build_preference_pairs(prompts, responses, lab.cheer_score, groups=["a", "b", "c"])
    assert [(p.prompt, p.chosen, p.rejected, p.group) for p in pairs] == [
        ("p0", "happy fun", "sad", "a"), ("p2", "nice", "bad", "c")], \
        "per prompt: chosen = the best-scoring response, rejected = the worst; all-tie prompts give no pair"
    every = lab.build_preference_pairs(prompts, responses, lab.cheer_score, all_pairs=True)
    assert [(p.chosen, p.rejected) for p in every] == [
        ("happy", "sad"), ("happy fun", "sad"), ("fun", "sad"), ("happy fun", "happy"), ("happy fun", "fun"),
        ("nice", "bad")], \
        "all_pairs: every i < j whose scores differ, winner first (equal scores such as 'happy'/'fun' give no pair)"


@pytest.mark.given
def test_cheer_score(lab):
    assert lab.cheer_score("Happy, happy! The dog smiled. Then it was sad.") == 2
    with pytest.raises(TypeError):
        lab.cheer_score(None)


@pytest.mark.given
@pytest.mark.parametrize("bad, needle", [
    (dict(policy_chosen_logps=torch.tensor([float("nan")])), "NaN"),
    (dict(policy_chosen_logps=torch.tensor([1.0, 2.0])), "shape"),
    (dict(policy_chosen_logps=torch.tensor([])), "shape"),
    (dict(beta=0.0), "beta"),
    (dict(beta=float("inf")), "beta"),
])
def test_losses_reject_bad_input(lab, bad, needle):
    args = dict(policy_chosen_logps=torch.tensor([-1.0]), policy_rejected_logps=torch.tensor([-2.0]),
                ref_chosen_logps=torch.tensor([-1.0]), ref_rejected_logps=torch.tensor([-2.0]), beta=0.1)
    args.update(bad)
    for fn in (lab.dpo_loss, lab.ipo_loss):
        with pytest.raises(ValueError, match=needle):
            fn(**args)


@pytest.mark.given
def test_other_bad_input(lab, sft):
    _, model, tok = sft
    with pytest.raises(ValueError, match="bool"):
        lab.kto_loss(torch.tensor([-1.0]), torch.tensor([-1.0]), torch.tensor([1]), 0.0)
    with pytest.raises(ValueError, match="response"):
        ids = torch.tensor([[0, 5, 6]])
        lab.sequence_logprobs(model, ids, torch.ones_like(ids), torch.zeros_like(ids))
    with pytest.raises(ValueError, match="empty"):
        lab.collate_pairs([{"prompt_ids": [1], "chosen_ids": [], "rejected_ids": [2]}], 3)
    with pytest.raises(ValueError, match="all zero"):
        lab.RewardModel(model.model, 128)(torch.tensor([[5, 6]]), torch.tensor([[0, 0]]))
    with pytest.raises(ValueError, match="subset"):
        lab.load_hh_rlhf(tok, "red-team")

"""Grader for capstone 8 (RLHF: reward model -> PPO with a KL anchor, GRPO, reward hacking).

References: hand computations (GAE, the clipped surrogate, value clipping, the KL-penalised
rewards, Ziegler et al.'s controller, GRPO's group advantages), a brute-force ``Σ (γλ)^l δ_{t+l}``
for GAE, numpy for whitening, autograd for "the clipped tokens get no gradient", and two short
training runs of the curriculum model (the self-test's smoke configuration): PPO on the cheer judge
must raise the held-out reward while the KL stays within its target, and the same PPO without a
KL anchor must hack the judge and be flagged. The learned reward model is Phase 6 lab 4's; training
it (about 10 s of CPU, cached) is left to ``solution.py --small``, so the grader only checks that it is
composed from lab 6.4.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def t(x):
    return torch.tensor(x, dtype=torch.float32)


# ------------------------------------------------------------------------ GAE
def test_gae_equals_hand_computation(lab):
    # one response of 3 tokens, γ = 0.9, λ = 0.5
    r, v = t([[0.0, 0.0, 1.0]]), t([[0.2, 0.4, 0.6]])
    adv, ret = lab.compute_gae(r, v, torch.ones(1, 3), gamma=0.9, lam=0.5)
    d2 = 1.0 - 0.6                      # last token: no next value
    d1 = 0.0 + 0.9 * 0.6 - 0.4
    d0 = 0.0 + 0.9 * 0.4 - 0.2
    a2 = d2
    a1 = d1 + 0.45 * a2
    a0 = d0 + 0.45 * a1
    assert torch.allclose(adv, t([[a0, a1, a2]]), atol=1e-6), (
        f"GAE {adv.tolist()} != hand {[a0, a1, a2]}. Â_t = δ_t + γλ·Â_(t+1) with δ_t = r_t + γ·V_(t+1) − V_t, "
        "computed from the LAST token backwards, and V after the last token is 0")
    assert torch.allclose(ret, adv + v, atol=1e-6), "returns must be advantages + values (the value head's target)"


def test_gae_lambda_one_gamma_one_is_returns_minus_values(lab):
    g = torch.Generator().manual_seed(0)
    r, v = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)
    mask = torch.ones(4, 7)
    mask[1, 5:] = 0
    mask[3, 2:] = 0
    adv, _ = lab.compute_gae(r, v, mask, gamma=1.0, lam=1.0)
    rm = r * mask
    mc = rm.flip(-1).cumsum(-1).flip(-1)          # Σ_{l ≥ t} r_l over the real tokens
    want = (mc - v) * mask
    assert torch.allclose(adv, want, atol=1e-5), (
        "with λ = 1 and γ = 1 GAE must equal the Monte-Carlo return minus the value, Σ_(l≥t) r_l − V_t. A mismatch on "
        "the masked rows means rewards or values after the response's end leak backwards: zero them first")


def test_gae_matches_brute_force_sum(lab):
    g = torch.Generator().manual_seed(1)
    r, v = torch.randn(2, 6, generator=g), torch.randn(2, 6, generator=g)
    mask = torch.ones(2, 6)
    mask[0, 4:] = 0
    gamma, lam = 0.95, 0.8
    adv, _ = lab.compute_gae(r, v, mask, gamma=gamma, lam=lam)
    rm, vm = (r * mask).numpy(), (v * mask).numpy()
    want = np.zeros((2, 6))
    for b in range(2):
        vn = np.append(vm[b], 0.0)
        delta = rm[b] + gamma * vn[1:] - vm[b]
        for s in range(6):
            want[b, s] = sum((gamma * lam) ** k * delta[s + k] for k in range(6 - s))
    want *= mask.numpy()
    assert np.allclose(adv.numpy(), want, atol=1e-5), "GAE must equal Σ_l (γλ)^l δ_(t+l) (Schulman et al. 2016, eq. 16)"
    adv0, _ = lab.compute_gae(r, v, mask, gamma=gamma, lam=0.0)
    td = (rm + gamma * np.concatenate([vm[:, 1:], np.zeros((2, 1))], 1) - vm) * mask.numpy()
    assert np.allclose(adv0.numpy(), td, atol=1e-5), "with λ = 0 GAE is the one-step TD error δ_t"


# ------------------------------------------------------------------------ the clipped surrogate and the value loss
def test_clipped_surrogate_equals_hand_computation(lab):
    # ratios 1.5, 0.5, 0.5, 1.5 with advantages +1, +1, −1, −1 and ε = 0.2
    ratio = t([[1.5, 0.5, 0.5, 1.5]])
    adv = t([[1.0, 1.0, -1.0, -1.0]])
    old = torch.zeros(1, 4)
    logp = torch.log(ratio).requires_grad_(True)
    loss, stats = lab.ppo_policy_loss(logp, old, adv, torch.ones(1, 4), clip=0.2)
    # −min(ρA, clip(ρ)A): −min(1.5, 1.2) = −1.2; −min(0.5, 0.8) = −0.5; −min(−0.5, −0.8) = 0.8; −min(−1.5, −1.2) = 1.5
    want = (-1.2 - 0.5 + 0.8 + 1.5) / 4
    assert loss.item() == pytest.approx(want, abs=1e-5), (
        f"clipped surrogate {loss.item():.4f} != hand {want:.4f}. Per token the LOSS is max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)) "
        "(the negative of PPO's min), averaged over the masked tokens")
    assert stats["clipfrac"] == pytest.approx(0.5), "tokens 1 and 3 take the clipped term: clipfrac 0.5"
    loss.backward()
    grad = logp.grad[0]
    assert grad[0] == 0 and grad[2] == 0, (
        "a token whose clipped term is chosen (ρ beyond 1±ε in the direction A favours) must get NO gradient: "
        "that is what stops PPO from overshooting")
    assert grad[1] != 0 and grad[3] != 0, "the unclipped (pessimistic) tokens keep their gradient ρ·A"


def test_clipped_surrogate_ignores_masked_tokens(lab):
    logp, old, adv = t([[0.1, 5.0]]), t([[0.0, 0.0]]), t([[1.0, 100.0]])
    loss, _ = lab.ppo_policy_loss(logp, old, adv, t([[1.0, 0.0]]), clip=0.2)
    assert loss.item() == pytest.approx(-math.exp(0.1), abs=1e-5), "padding tokens (mask 0) must not enter the mean"


def test_value_clipping_equals_hand_computation(lab):
    old, ret = t([[0.0, 0.0, 0.0]]), t([[1.0, 1.0, -1.0]])
    new = t([[0.5, 0.1, 0.5]])
    loss, stats = lab.ppo_value_loss(new, old, ret, torch.ones(1, 3), clip_value=0.2)
    # token 0: V 0.5 -> clipped 0.2: max(0.25, 0.64) = 0.64; token 1: inside the clip: 0.81; token 2: max(2.25, 1.44) = 2.25
    want = 0.5 * (0.64 + 0.81 + 2.25) / 3
    assert loss.item() == pytest.approx(want, abs=1e-5), (
        f"value loss {loss.item():.4f} != hand {want:.4f}: ½·mean(max((V − R)², (V_clip − R)²)) with "
        "V_clip = V_old + clamp(V − V_old, −ε_v, ε_v) — the max, not the min (the pessimistic one)")
    assert stats["vf_clipfrac"] == pytest.approx(1 / 3)


# ------------------------------------------------------------------------ rewards, KL, whitening, the controller
def test_kl_penalized_rewards_by_hand(lab):
    logp = t([[-1.0, -2.0, -0.5], [-1.0, -1.0, 0.0]])
    ref = t([[-1.5, -1.0, -0.5], [-2.0, -1.0, 0.0]])
    mask = t([[1, 1, 1], [1, 1, 0]])
    rewards, kl = lab.kl_penalized_rewards(t([2.0, -1.0]), logp, ref, mask, kl_coef=0.1)
    want = t([[-0.05, 0.1, 2.0], [-0.1, -1.0, 0.0]])
    assert torch.allclose(rewards, want, atol=1e-6), (
        f"rewards {rewards.tolist()} != {want.tolist()}: −β·(log π − log π_ref) on every response token and the "
        "score added on the LAST REAL token of each row (not the last column: row 2 ends at position 1)")
    assert torch.allclose(kl, t([[0.5, -1.0, 0.0], [1.0, 0.0, 0.0]])), "kl = (log π − log π_ref) × mask"


def test_masked_whiten_matches_numpy(lab):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 5, generator=g) * 3 + 2
    mask = torch.ones(3, 5)
    mask[0, 3:] = 0
    mask[2, 1:] = 0
    out = lab.masked_whiten(x, mask)
    vals = x[mask.bool()].numpy()
    want = (vals - vals.mean()) / np.sqrt(vals.var(ddof=1) + 1e-8)
    assert np.allclose(out[mask.bool()].numpy(), want, atol=1e-5), (
        "whitening must use the mean and (unbiased) std of the MASKED positions only; padding would bias both")
    assert (out[~mask.bool()] == 0).all(), "whitened advantages must be 0 on padding"
    kept = lab.masked_whiten(x, mask, shift_mean=False)
    assert np.allclose(kept[mask.bool()].numpy(), want + vals.mean(), atol=1e-5), "shift_mean=False adds the mean back"


def test_adaptive_kl_controller_update_rule(lab):
    c = lab.AdaptiveKLController(0.2, target=6.0, horizon=10_000)
    assert c.update(6.6, 256) == pytest.approx(0.2 * (1 + 0.1 * 256 / 10_000)), (
        "Ziegler et al.: e = clip(KL/target − 1, −0.2, 0.2); β ← β·(1 + e·n_steps/horizon)")
    c = lab.AdaptiveKLController(0.2, target=6.0, horizon=1000)
    c.update(60.0, 100)                       # e = 9 -> clipped to 0.2
    assert c.value == pytest.approx(0.2 * 1.02), "the proportional error must be clipped to +0.2 (KL far above target)"
    c = lab.AdaptiveKLController(0.2, target=6.0, horizon=1000)
    c.update(0.0, 100)                        # e = −1 -> −0.2
    assert c.value == pytest.approx(0.2 * 0.98), "KL below the target must LOWER β (clipped at −0.2)"
    c = lab.AdaptiveKLController(0.2, target=6.0, horizon=1000)
    c.update(6.0, 100)
    assert c.value == pytest.approx(0.2), "at the target β must not move"


# ------------------------------------------------------------------------ GRPO
def test_group_advantages_by_hand(lab):
    r = t([1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0])
    adv = lab.group_advantages(r[:4], group_size=4, eps=0.0)
    s = float(np.std([1, 2, 3, 4], ddof=1))
    want = [(-1.5) / s, (-0.5) / s, 0.5 / s, 1.5 / s]
    assert torch.allclose(adv[:4], t(want), atol=1e-5), (
        "GRPO: (r − mean of the group) / std of the group (unbiased), each group of consecutive samples separately")
    assert torch.allclose(lab.group_advantages(r, group_size=4)[4:], torch.zeros(4)), (
        "a group whose samples all tie has advantage 0 (no signal): the eps in the denominator keeps it finite")
    raw = lab.group_advantages(r, group_size=4, scale=False)
    assert torch.allclose(raw[:4], t([-1.5, -0.5, 0.5, 1.5])), "scale=False: only the group mean is subtracted"


def test_grpo_loss_by_hand(lab):
    logp = t([[-1.0, -1.0], [-2.0, -2.0]])
    ref = t([[-1.0, -1.0 + math.log(2.0)], [-2.0, -2.0]])
    adv = t([1.0, -1.0])
    loss, stats = lab.grpo_loss(logp, logp.clone(), ref, adv, torch.ones(2, 2), clip=0.2, beta=0.5)
    k3 = (2.0 - math.log(2.0) - 1.0) / 4     # exp(d) − d − 1 at d = ln 2, mean over 4 tokens
    assert stats["kl"] == pytest.approx(k3, abs=1e-5), (
        "GRPO's KL term is the k3 estimator exp(ref − logp) − (ref − logp) − 1, averaged over the masked tokens")
    assert loss.item() == pytest.approx(0.0 + 0.5 * k3, abs=1e-5), (
        "with ρ = 1 the surrogate is −mean(A) over tokens (here 0: +1 and −1 each on 2 tokens); plus β·KL")


# ------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("call", [
    lambda lab: lab.compute_gae(torch.ones(2, 3), torch.ones(2, 4), torch.ones(2, 3)),
    lambda lab: lab.compute_gae(torch.ones(2, 3), torch.ones(2, 3), torch.ones(2, 3), gamma=1.5),
    lambda lab: lab.compute_gae(t([[float("nan"), 0.0]]), torch.zeros(1, 2), torch.ones(1, 2)),
    lambda lab: lab.ppo_policy_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), clip=0),
    lambda lab: lab.ppo_value_loss(torch.zeros(1, 2), torch.zeros(1, 3), torch.zeros(1, 2), torch.ones(1, 2)),
    lambda lab: lab.kl_penalized_rewards(torch.zeros(2), torch.zeros(2, 3), torch.zeros(2, 3), t([[1, 1, 0], [0, 0, 0]]), 0.1),
    lambda lab: lab.kl_penalized_rewards(torch.zeros(2), torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3), -0.1),
    lambda lab: lab.masked_whiten(torch.zeros(1, 3), t([[1, 0, 0]])),
    lambda lab: lab.group_advantages(torch.zeros(6), group_size=4),
    lambda lab: lab.AdaptiveKLController(0.1, target=0.0, horizon=10),
    lambda lab: lab.AdaptiveKLController(0.1, target=1.0, horizon=10).update(float("nan"), 4),
    lambda lab: lab.masked_mean(torch.zeros(2), torch.zeros(2)),
], ids=["gae-shapes", "gae-gamma", "gae-nan", "clip-0", "value-shapes", "empty-response", "negative-beta",
        "whiten-one", "group-size", "kl-target", "kl-nan", "empty-mask"])
@pytest.mark.given
def test_bad_input_raises_value_error(lab, call):
    with pytest.raises(ValueError):
        call(lab)


@pytest.mark.given
def test_reward_hacking_report_flags(lab):
    before = {"cheer": 0.3, "gold": 0.3, "repetition": 0.01, "length": 16.0}
    honest = {"cheer": 1.2, "gold": 1.0, "repetition": 0.02, "length": 15.0}
    loop = {"cheer": 6.0, "gold": 1.2, "repetition": 0.4, "length": 16.0}
    long = {"cheer": 0.5, "gold": 0.5, "repetition": 0.02, "length": 40.0}
    assert lab.reward_hacking_report(before, honest)["flags"] == []
    assert set(lab.reward_hacking_report(before, loop)["flags"]) == {"repetition", "proxy_gap"}
    assert lab.reward_hacking_report(before, long)["flags"] == ["length"]


# ------------------------------------------------------------------------ training runs (the smoke configuration)
@pytest.fixture(scope="module")
def setup(lab):
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    mdir = lab.model_dir()
    tok = lab.load_tokenizer(mdir)
    train = lab.story_prompts(tok, [x for x in lab.TOPICS if x not in lab.HELD_OUT])
    test = lab.story_prompts(tok, lab.HELD_OUT)
    _, ref = lab.load_models(mdir)
    before = lab.evaluate_policy(ref, ref, tok, test, max_new_tokens=lab.SMOKE.max_new_tokens)
    return {"dir": mdir, "tok": tok, "train": train, "test": test, "ref": ref, "before": before}


@pytest.fixture(scope="module")
def ppo_run(lab, setup):
    policy, ref = lab.load_models(setup["dir"])
    hist = lab.ppo_train(policy, ref, setup["tok"], setup["train"], lambda ps, rs: lab.cheer_reward(rs), lab.SMOKE,
                         gold_fn=lab.distinct_cheer)
    after = lab.evaluate_policy(policy, ref, setup["tok"], setup["test"], max_new_tokens=lab.SMOKE.max_new_tokens)
    return hist, after


def test_ppo_raises_reward_and_keeps_kl_within_target(lab, setup, ppo_run):
    hist, after = ppo_run
    before, cfg = setup["before"], lab.SMOKE
    assert after["cheer"] > before["cheer"] + 0.3, (
        f"after {cfg.iterations} PPO iterations the held-out cheer score went {before['cheer']:.3f} -> "
        f"{after['cheer']:.3f} (want > +0.3). If it did not move: is the score added on the last real token, are "
        "advantages whitened over the mask, does the loss have the right sign (minimise −A·ρ)?")
    kls = [h["kl"] for h in hist]
    assert max(kls) <= 1.5 * cfg.kl_target and after["kl"] <= cfg.kl_target, (
        f"KL to the reference per iteration {[round(k, 2) for k in kls]}, held-out {after['kl']:.2f}, target "
        f"{cfg.kl_target}: the KL penalty (−β·(log π − log π_ref) per token) is missing or has the wrong sign")
    assert hist[0]["kl"] == pytest.approx(0.0, abs=1e-4), "at iteration 0 the policy IS the reference: KL must be 0"
    betas = [h["kl_coef"] for h in hist]
    assert betas[-1] < betas[0], (
        f"β {betas}: with the KL below its target the adaptive controller must lower β step by step")
    assert all(math.isfinite(h["entropy"]) and h["entropy"] > 1.0 for h in hist), "the policy collapsed (entropy)"


def test_reward_hacking_is_shown_and_detected(lab, setup, ppo_run):
    _, anchored = ppo_run
    policy, ref = lab.load_models(setup["dir"])
    lab.ppo_train(policy, ref, setup["tok"], setup["train"], lambda ps, rs: lab.cheer_reward(rs), lab.HACK_SMOKE)
    hacked = lab.evaluate_policy(policy, ref, setup["tok"], setup["test"], max_new_tokens=lab.SMOKE.max_new_tokens)
    rep = lab.reward_hacking_report(setup["before"], hacked)
    assert rep["hacked"] and "proxy_gap" in rep["flags"], (
        f"PPO with no KL anchor on the word-counting judge should find its loophole (repeat a rewarded word): "
        f"{rep}; samples {hacked['texts'][:3]}")
    assert hacked["kl"] > 3 * anchored["kl"], "without the KL anchor the policy should drift far from the reference"
    assert not lab.reward_hacking_report(setup["before"], anchored)["hacked"], (
        "the KL-anchored run must NOT be flagged: the check would be useless if it fired on honest progress")


@pytest.mark.given
def test_reward_model_is_lab_6_4s_and_scores_responses(lab, setup):
    # composition only (the trained, cached reward model is built by `solution.py --small`: ~10 s of CPU
    # that the grader's budget does not have): lab 6.4's RewardModel on the curriculum backbone
    rm = lab._lab().RewardModel.from_pretrained(setup["dir"]).eval()
    fn = lab.rm_reward_fn(rm, setup["tok"])
    r = fn(setup["test"][:4], setup["before"]["texts"][:4])
    assert r.shape == (4,) and torch.isfinite(r).all(), r
    assert type(rm).__module__ != lab.__name__, "the reward model must come from lab 6.4 (load_lab), not a copy"

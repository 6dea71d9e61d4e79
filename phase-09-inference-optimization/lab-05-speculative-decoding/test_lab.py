"""Grader for lab 9.5 (speculative decoding).

References: the target model alone (``MiniGPT.generate`` greedy tokens, and its exact next-token
distributions computed by enumeration), the closed-form output distribution of one
accept/resample round (computed here, independently of your code), and Pearson's chi-square test
(scipy). Every chi-square test here is seeded, so it is deterministic; the threshold is
p-value > 0.001: a correct implementation passes it, the usual mistakes fail it by orders of
magnitude.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy.stats import chi2

from labkit import seed_everything

P_THRESHOLD = 1e-3


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models(lab):
    torch.set_num_threads(1)
    return lab.load_models()


@pytest.fixture(scope="module")
def prompts(lab):
    return lab.val_prompts(3, 16, seed=0)


def chi2_pvalue(observed: list[float], expected: list[float]) -> float:
    """Pearson's chi-square p-value over bins with expected count >= 5 (the rest pooled)."""
    obs, exp, rest_o, rest_e = [], [], 0.0, 0.0
    for o, e in zip(observed, expected):
        if e >= 5:
            obs.append(o)
            exp.append(e)
        else:
            rest_o += o
            rest_e += e
    if rest_e > 1e-9:
        obs.append(rest_o)
        exp.append(rest_e)
    stat = sum((o - e) ** 2 / e for o, e in zip(obs, exp))
    return float(chi2.sf(stat, len(obs) - 1))


def toy_models(lab, vocab: int = 5):
    cfg = lab.gpt.GPTConfig.llama_style(vocab_size=vocab, block_size=8, n_layer=1, n_head=2, d_model=16,
                                        init_std=0.5)
    seed_everything(0)
    target = lab.MiniGPT(cfg).eval()
    seed_everything(1)
    draft = lab.MiniGPT(cfg).eval()
    return target, draft


# --------------------------------------------------------------------------- residual distribution
def test_residual_distribution_small_examples(lab):
    p = torch.tensor([0.4, 0.4, 0.2, 0.0])
    q = torch.tensor([0.1, 0.2, 0.3, 0.4])
    r = lab.residual_distribution(p, q)
    assert torch.allclose(r, torch.tensor([0.6, 0.4, 0.0, 0.0]), atol=1e-6), (
        f"residual of p={p.tolist()}, q={q.tolist()} should be norm(max(0, p - q)) = [0.6, 0.4, 0, 0], got "
        f"{r.tolist()}: clamp p - q at 0 (tokens the draft over-proposes get nothing), then renormalize")
    r = lab.residual_distribution(torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.2, 0.5, 0.3]))
    assert torch.allclose(r, torch.tensor([1.0, 0.0, 0.0]), atol=1e-6), \
        "only the token where p > q may be resampled after a rejection"


def test_residual_completes_p(lab):
    """min(p, q) (accepted drafts) + P(reject) * residual must give back p exactly."""
    g = torch.Generator().manual_seed(0)
    p = torch.distributions.Dirichlet(torch.full((50,), 0.3)).sample((64,))
    q = torch.distributions.Dirichlet(torch.full((50,), 0.3)).sample((64,))
    del g
    r = lab.residual_distribution(p, q)
    assert r.shape == p.shape
    assert torch.allclose(r.sum(-1), torch.ones(64), atol=1e-5), "each residual row must sum to 1"
    rebuilt = torch.minimum(p, q) + (1 - torch.minimum(p, q).sum(-1, keepdim=True)) * r
    assert torch.allclose(rebuilt, p, atol=1e-5), \
        "min(p, q) + (1 - sum min(p, q)) * residual != p: the residual is NOT norm(max(0, p - q))"
    same = lab.residual_distribution(p[:2], p[:2].clone())
    assert torch.isfinite(same).all() and torch.allclose(same.sum(-1), torch.ones(2), atol=1e-5), \
        "when p == q the residual has no mass (0/0): return a valid distribution (p), not NaN"


@pytest.mark.given
@pytest.mark.parametrize("p, q, err, needle", [
    (torch.ones(3) / 3, torch.ones(4) / 4, ValueError, "shape"),
    (torch.tensor([float("nan"), 0.5, 0.5]), torch.ones(3) / 3, ValueError, "NaN"),
    (torch.tensor([-0.1, 0.6, 0.5]), torch.ones(3) / 3, ValueError, "negative"),
    (torch.tensor([1, 0, 0]), torch.ones(3) / 3, TypeError, "float"),
])
def test_residual_bad_input(lab, p, q, err, needle):
    with pytest.raises(err, match=needle):
        lab.residual_distribution(p, q)


# --------------------------------------------------------------------------- the accept/resample step
def _toy_step_distributions():
    """Position-wise target p_1..p_3 and draft q_1..q_2 over a 3-token vocabulary."""
    p = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.1, 0.7, 0.2]], dtype=torch.float64)
    q = torch.tensor([[0.2, 0.5, 0.3], [0.5, 0.1, 0.4]], dtype=torch.float64)
    return p, q


def test_verify_drafts_exact_toy_distribution(lab):
    """Vocab 3, K = 2. The outcome of one round (accepted drafts, next token) has a closed-form
    distribution; 100,000 rounds of your sampler must follow it (chi-square, p > 0.001)."""
    p, q = _toy_step_distributions()
    V, K, N = 3, 2, 100_000
    mn = torch.minimum(p[:2], q)                                          # accepted-draft mass
    beta = mn.sum(-1)
    res = (p[:2] - q).clamp(min=0)
    res = res / res.sum(-1, keepdim=True)
    exact: dict[tuple[int, ...], float] = {}
    for x in range(V):                                                     # first draft rejected
        exact[(x,)] = float((1 - beta[0]) * res[0, x])
    for x1, x2 in itertools.product(range(V), repeat=2):                   # one accepted
        exact[(x1, x2)] = float(mn[0, x1] * (1 - beta[1]) * res[1, x2])
    for x1, x2, x3 in itertools.product(range(V), repeat=3):               # both accepted + bonus
        exact[(x1, x2, x3)] = float(mn[0, x1] * mn[1, x2] * p[2, x3])
    first = [sum(v for s, v in exact.items() if s[0] == x) for x in range(V)]
    assert math.isclose(sum(exact.values()), 1.0, abs_tol=1e-9) and \
        all(math.isclose(f, float(p[0, x]), abs_tol=1e-6) for x, f in enumerate(first))  # the theorem

    g = torch.Generator().manual_seed(0)
    drafts = torch.stack([torch.multinomial(q[i], N, replacement=True, generator=g) for i in range(K)], dim=1)
    n, nxt = lab.verify_drafts(p.expand(N, K + 1, V), q.expand(N, K, V), drafts, generator=g)
    assert n.shape == (N,) and nxt.shape == (N,), "verify_drafts returns (n_accepted (B,), next_token (B,))"
    assert n.dtype == torch.int64 and int(n.min()) >= 0 and int(n.max()) <= K
    counts = dict.fromkeys(exact, 0)
    for row_n, row_d, t in zip(n.tolist(), drafts.tolist(), nxt.tolist()):
        counts[tuple(row_d[:row_n]) + (t,)] += 1
    keys = list(exact)
    pval = chi2_pvalue([counts[s] for s in keys], [exact[s] * N for s in keys])
    frac = torch.bincount(n, minlength=K + 1).double() / N
    want = torch.tensor([1 - beta[0], beta[0] * (1 - beta[1]), beta[0] * beta[1]]).double()
    assert pval > P_THRESHOLD, (
        f"the rounds' outcomes do not follow speculative sampling's distribution (chi-square p = {pval:.2e}); "
        f"fraction of rounds accepting 0/1/2 drafts: {[round(x, 3) for x in frac.tolist()]}, expected "
        f"{[round(x, 3) for x in want.tolist()]}. Accept d_i with probability min(1, p_i(d_i)/q_i(d_i)), stop at the "
        "FIRST rejection, resample from norm(max(0, p - q)) there, and draw the bonus from p_{K+1} when all pass")


def test_verify_drafts_counts_only_the_accepted_prefix(lab):
    """Draft 1 is impossible under p (always rejected), draft 2 is certain (always accepted):
    n must be 0. Counting accepts after a rejection (sum instead of a prefix) gives 1."""
    V = 4
    p = torch.tensor([[0.0, 0.5, 0.5, 0.0], [0.0, 0.0, 1.0, 0.0], [0.25, 0.25, 0.25, 0.25]]).expand(16, 3, V)
    q = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]).expand(16, 2, V)
    drafts = torch.tensor([[0, 2]]).expand(16, 2)
    n, nxt = lab.verify_drafts(p, q, drafts, generator=torch.Generator().manual_seed(0))
    assert (n == 0).all(), f"n_accepted = {n.tolist()[:4]}...: a draft after a rejection must not count (prefix only)"
    assert set(nxt.tolist()) <= {1, 2}, "after rejecting token 0, resample from max(0, p - q): only tokens 1 and 2"


def test_verify_drafts_bonus_and_greedy(lab):
    V, B = 6, 2000
    g = torch.Generator().manual_seed(0)
    p = torch.distributions.Dirichlet(torch.ones(V)).sample((3,))
    # the draft IS the target: every draft is accepted and the bonus comes from p_{K+1}
    drafts = torch.stack([torch.multinomial(p[i], B, replacement=True, generator=g) for i in range(2)], dim=1)
    n, nxt = lab.verify_drafts(p.expand(B, 3, V), p[:2].expand(B, 2, V), drafts, generator=g)
    assert (n == 2).all(), "when q == p, min(1, p/q) = 1: every draft must be accepted"
    freq = torch.bincount(nxt, minlength=V).double()
    pval = chi2_pvalue(freq.tolist(), (p[2].double() * B).tolist())
    assert pval > P_THRESHOLD, f"the bonus token must be drawn from p_{{K+1}} (the last row of p); chi-square p = {pval:.2e}"
    # temperature 0: one-hot distributions; accept iff the draft is the target's argmax
    onehot = torch.eye(V)
    p0 = torch.stack([onehot[3], onehot[1], onehot[5]]).unsqueeze(0)
    q0 = torch.stack([onehot[3], onehot[2]]).unsqueeze(0)
    n, nxt = lab.verify_drafts(p0, q0, torch.tensor([[3, 2]]), generator=g)
    assert (int(n[0]), int(nxt[0])) == (1, 1), \
        f"greedy: draft 3 matches the target's argmax, draft 2 does not -> (1 accepted, next = 1), got {(int(n[0]), int(nxt[0]))}"
    n, nxt = lab.verify_drafts(p0[:, :1], q0[:, :0], torch.zeros(1, 0, dtype=torch.long), generator=g)
    assert (int(n[0]), int(nxt[0])) == (0, 3), "K = 0 (no draft): the next token comes straight from p_1"


@pytest.mark.given
def test_verify_drafts_bad_input(lab):
    p = torch.full((1, 3, 4), 0.25)
    q = torch.full((1, 2, 4), 0.25)
    with pytest.raises(ValueError, match="q must be"):
        lab.verify_drafts(p, q[:, :1], torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="outside"):
        lab.verify_drafts(p, q, torch.tensor([[0, 4]]))
    with pytest.raises(TypeError, match="int64"):
        lab.verify_drafts(p, q, torch.zeros(1, 2))


# --------------------------------------------------------------------------- the algorithm, temperature 0
@pytest.mark.parametrize("k", [1, 3, 6])
def test_greedy_output_equals_target_greedy(lab, models, prompts, k):
    target, draft = models
    for i, pr in enumerate(prompts):
        ref = target.generate(pr, 40, temperature=0.0)
        out, stats = lab.speculative_generate(target, draft, pr, 40, k=k, temperature=0.0)
        assert out.shape == ref.shape, f"asked for 40 new tokens, got {out.shape[1] - pr.shape[1]}"
        if not torch.equal(out, ref):
            first = int((out[0] != ref[0]).nonzero()[0])
            pytest.fail(f"k={k}, prompt {i}: speculative output differs from the target's greedy tokens at position "
                        f"{first} (of {ref.shape[1]}). Is the target's cache cropped back to the accepted prefix "
                        "after each round, and does the verify pass read logits for every drafted position?")
        assert stats.rounds < 40, "every round verified a single token: no draft was ever accepted"
        assert stats.new_tokens == stats.accepted + stats.rounds, \
            "each round emits its accepted drafts plus exactly one token (residual or bonus)"


def test_greedy_is_exact_even_with_a_useless_draft(lab, models, prompts):
    target, _ = models
    seed_everything(3)
    junk = lab.MiniGPT(lab.gpt.GPTConfig.llama_style(vocab_size=target.config.vocab_size, block_size=256, n_layer=1,
                                                     n_head=2, d_model=32)).eval()
    pr = prompts[1]
    out, stats = lab.speculative_generate(target, junk, pr, 24, k=4, temperature=0.0)
    assert torch.equal(out, target.generate(pr, 24, temperature=0.0)), \
        "a bad draft may only cost speed, never change the output: the target must overrule it"
    assert stats.acceptance_rate < 0.3


def test_greedy_acceptances_match_draft_and_target_agreement(lab, models, prompts):
    """At temperature 0 a round accepts exactly as many drafts as the draft's greedy continuation
    agrees with the target's. Replaying that with fresh (cache-free) calls catches a stale draft
    cache (not cropped after a rejection, or not fed the last round's tokens)."""
    target, draft = models
    pr, k, n_new = prompts[2], 3, 30
    out, stats = lab.speculative_generate(target, draft, pr, n_new, k=k, temperature=0.0)
    L, want = pr.shape[1], []
    while L < pr.shape[1] + n_new:
        k_r = min(k, pr.shape[1] + n_new - L - 1)
        proposal = draft.generate(out[:, :L], k_r, temperature=0.0)[0, L:]
        n = 0
        while n < k_r and int(proposal[n]) == int(out[0, L + n]):
            n += 1
        want.append(n)
        L += n + 1
    assert stats.accepted_per_round == want, (
        f"accepted per round {stats.accepted_per_round} but the draft's own greedy proposals from each committed "
        f"prefix agree with the target for {want}: is the draft's KV cache cropped to the committed tokens, and fed "
        "the tokens it has not seen (after a fully accepted round: the last draft AND the bonus token)?")


def test_self_speculation_accepts_everything(lab, models, prompts):
    target, _ = models
    g = torch.Generator().manual_seed(0)
    out, stats = lab.speculative_generate(target, target, prompts[0], 21, k=4, temperature=1.0, generator=g)
    assert out.shape[1] == prompts[0].shape[1] + 21
    assert stats.acceptance_rate == 1.0, \
        f"draft == target, so p == q and every draft must be accepted; got α = {stats.acceptance_rate:.3f}"
    assert stats.accepted_per_round == [4, 4, 4, 4, 0], \
        f"21 tokens at k=4 with all accepted: four rounds of 4 + bonus, then one plain step; got {stats.accepted_per_round}"
    assert abs(stats.expected_acceptance - 1.0) < 1e-4


# --------------------------------------------------------------------------- the algorithm, temperature > 0
def _sample_counts(lab, target, draft, pr, n_new, n_samples, k, seed=0, **sampling):
    g = torch.Generator().manual_seed(seed)
    counts: dict[tuple[int, ...], int] = {}
    for _ in range(n_samples):
        out, _ = lab.speculative_generate(target, draft, pr, n_new, k=k, generator=g, **sampling)
        key = tuple(out[0, pr.shape[1]:].tolist())
        counts[key] = counts.get(key, 0) + 1
    return counts


@torch.no_grad()
def test_toy_exact_output_distribution(lab):
    """Vocab-5 toy models: the target's distribution over every 3-token continuation is computed
    exactly (125 sequences); 500 speculative samples (k = 2, temperature 0.7, top_k 4) must
    follow it (chi-square, p > 0.001). The draft alone does not (control)."""
    target, draft = toy_models(lab)
    pr = torch.tensor([[1, 2]])
    sampling = dict(temperature=0.7, top_k=4)
    seqs = torch.tensor(list(itertools.product(range(5), repeat=3)))
    full = torch.cat([pr.expand(len(seqs), 2), seqs], dim=1)

    def exact(model):
        probs = lab.probs_from_logits(model(full)[0][:, 1:4], **sampling)           # predicts the 3 new tokens
        return probs.gather(-1, seqs.unsqueeze(-1)).squeeze(-1).prod(-1).double()

    p_exact, q_exact = exact(target), exact(draft)
    assert abs(float(p_exact.sum()) - 1) < 1e-5
    N = 500
    counts = _sample_counts(lab, target, draft, pr, 3, N, k=2, **sampling)
    obs = [counts.get(tuple(s), 0) for s in seqs.tolist()]
    pval = chi2_pvalue(obs, (p_exact * N).tolist())
    control = chi2_pvalue(obs, (q_exact * N).tolist())
    assert control < P_THRESHOLD, "test has no power: the draft's distribution should be rejected"
    assert pval > P_THRESHOLD, (
        f"speculative samples do not follow the target's exact distribution (chi-square p = {pval:.2e}; vs the "
        f"DRAFT's distribution p = {control:.2e}). Warp both models' logits the same way (probs_from_logits), "
        "sample drafts from q, and verify against p")


@torch.no_grad()
def test_real_models_two_token_distribution(lab, models, prompts):
    """The curriculum models at temperature 1: 400 speculative 2-token continuations (k = 2) vs the
    target's exact joint p(x1) p(x2 | x1) over all pairs with expected count >= 5 (chi-square,
    p > 0.001)."""
    target, draft = models
    pr = prompts[0]
    N = 400
    counts = _sample_counts(lab, target, draft, pr, 2, N, k=2, temperature=1.0)
    p1 = lab.probs_from_logits(target(pr, logits_to_keep=1)[0][0, -1], 1.0).double()
    first = torch.nonzero(p1 * N >= 0.5).flatten()                    # x1 values that can reach a bin
    ext = torch.cat([pr.expand(len(first), -1), first.view(-1, 1)], dim=1)
    p2 = lab.probs_from_logits(target(ext, logits_to_keep=1)[0][:, -1], 1.0).double()
    joint = p1[first].unsqueeze(1) * p2                                 # (|first|, V)
    cells = torch.nonzero(joint * N >= 5).tolist()
    keys = [(int(first[a]), b) for a, b in cells]
    exp = [float(joint[a, b]) * N for a, b in cells]
    obs = [counts.get(kk, 0) for kk in keys]
    exp.append(N - sum(exp))
    obs.append(N - sum(obs))
    stat = sum((o - e) ** 2 / e for o, e in zip(obs, exp))
    pval = float(chi2.sf(stat, len(obs) - 1))
    assert len(keys) >= 3, "the test needs a few likely continuations"
    assert pval > P_THRESHOLD, (
        f"2-token continuations do not follow the target's joint distribution (chi-square p = {pval:.2e} over "
        f"{len(obs)} bins; observed {obs}, expected {[round(e, 1) for e in exp]})")


# --------------------------------------------------------------------------- the formula
def test_expected_tokens_and_speedup_formula(lab):
    assert math.isclose(lab.expected_tokens_per_round(0.5, 3), 1.875), "1 + α + α² + α³ at α = 0.5 is 1.875"
    assert lab.expected_tokens_per_round(1.0, 4) == 5.0, "at α = 1 every round emits k + 1 tokens (no 0/0)"
    assert lab.expected_tokens_per_round(0.0, 4) == 1.0
    assert math.isclose(lab.expected_speedup(0.8, 4, 0.05), (1 - 0.8 ** 5) / (0.2 * 1.2), rel_tol=1e-12), \
        "speedup = (1 - α^(k+1)) / ((1 - α)(1 + c k))"
    assert math.isclose(lab.expected_speedup(1.0, 3, 0.1), 4 / 1.3)
    assert lab.expected_speedup(0.0, 3, 0.1) < 1, "a draft that is never accepted only costs time"


@pytest.mark.given
@pytest.mark.parametrize("args", [(1.2, 3, 0.1), (-0.1, 3, 0.1), (0.5, -1, 0.1), (0.5, 3, -1.0), (0.5, 2.5, 0.1)])
def test_formula_bad_input(lab, args):
    with pytest.raises(ValueError):
        lab.expected_speedup(*args)


def test_stats_match_the_formula_loosely(lab, models, prompts):
    """Tokens per target pass measured on real text vs (1 - α^(k+1)) / (1 - α) with the measured α.
    The formula assumes independent acceptances, so only rough agreement (30%) is asked."""
    target, draft = models
    agg_new = agg_rounds = agg_acc = agg_tested = 0
    for pr in prompts:
        _, s = lab.speculative_generate(target, draft, pr, 40, k=4, temperature=0.0)
        agg_new, agg_rounds = agg_new + s.new_tokens, agg_rounds + s.rounds
        agg_acc, agg_tested = agg_acc + s.accepted, agg_tested + s.tested
    alpha = agg_acc / agg_tested
    measured, predicted = agg_new / agg_rounds, lab.expected_tokens_per_round(alpha, 4)
    assert 0.2 < alpha < 0.95, f"α = {alpha:.3f} for the curriculum draft/target pair is implausible"
    assert abs(measured - predicted) < 0.3 * predicted, \
        f"{measured:.2f} tokens per target pass measured, the formula gives {predicted:.2f} for α = {alpha:.3f}"


# --------------------------------------------------------------------------- validation
@pytest.mark.given
def test_speculative_generate_bad_input(lab, models, prompts):
    target, draft = models
    pr = prompts[0]
    with pytest.raises(ValueError, match="k"):
        lab.speculative_generate(target, draft, pr, 4, k=0)
    with pytest.raises(ValueError, match=r"\(1, T\)"):
        lab.speculative_generate(target, draft, pr.expand(2, -1), 4)
    with pytest.raises(ValueError, match="block_size"):
        lab.speculative_generate(target, draft, pr, 300)
    with pytest.raises(ValueError, match="temperature"):
        lab.speculative_generate(target, draft, pr, 4, temperature=-1.0)
    with pytest.raises(ValueError, match="vocab"):
        other = lab.MiniGPT(lab.gpt.GPTConfig.llama_style(vocab_size=100, block_size=64, n_layer=1, n_head=2,
                                                          d_model=16)).eval()
        lab.speculative_generate(target, other, pr, 4)
    with pytest.raises(TypeError):
        lab.speculative_generate(target, draft, pr.float(), 4)

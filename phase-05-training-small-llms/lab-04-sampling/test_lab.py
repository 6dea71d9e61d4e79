"""Grader for lab 5.4 (decoding strategies).

References: HF transformers' ``TemperatureLogitsWarper``, ``TopKLogitsWarper``,
``TopPLogitsWarper``, ``MinPLogitsWarper``, ``RepetitionPenaltyLogitsProcessor`` (same logits in,
same logits out) and ``generate`` (greedy, sampling with the same seed, beam search) on the
curriculum model's HF export; contrastive search (no longer runnable offline in transformers 5:
it moved to a Hub ``custom_generate`` repo) against a hand-computed case.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from labkit import seed_everything

INF = float("-inf")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def hf_proc():
    from transformers import generation

    return generation


def rand_logits(B: int = 4, V: int = 50, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, V, generator=g) * scale


def with_neg_inf(seed: int = 1) -> torch.Tensor:
    """Random logits with about a third of each row already -inf (as after an earlier filter)."""
    x = rand_logits(seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    mask = torch.rand(x.shape, generator=g) < 0.35
    mask[:, 0] = False                       # keep every row alive
    return x.masked_fill(mask, INF)


def tied(seed: int = 2) -> torch.Tensor:
    """Integer-valued logits: many exact ties, including at the maximum."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-3, 3, (4, 40), generator=g).float()


CASES = {"random": rand_logits(), "with -inf": with_neg_inf(), "ties": tied()}


def assert_same(ours: torch.Tensor, ref: torch.Tensor, what: str, hint: str) -> None:
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    same_inf = torch.equal(torch.isneginf(ours), torch.isneginf(ref))
    kept = ~torch.isneginf(ref)
    assert same_inf, (f"{what}: a different set of tokens is -inf than in transformers "
                      f"({int(torch.isneginf(ours).sum())} vs {int(torch.isneginf(ref).sum())} removed). {hint}")
    assert torch.allclose(ours[kept], ref[kept], atol=1e-6), f"{what}: the kept logits changed. {hint}"


# --------------------------------------------------------------------------- warpers vs transformers
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("T", [0.3, 1.0, 2.5])
def test_temperature_matches_hf(lab, case, T):
    x = CASES[case]
    ref = hf_proc().TemperatureLogitsWarper(T)(None, x.clone())
    assert_same(lab.apply_temperature(x, T), ref, f"temperature {T} on {case}", "temperature DIVIDES the logits")


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("k, keep", [(1, 1), (5, 1), (5, 8), (50, 1), (1000, 1)])
def test_top_k_matches_hf(lab, case, k, keep):
    x = CASES[case]
    ref = hf_proc().TopKLogitsWarper(top_k=k, min_tokens_to_keep=keep)(None, x.clone())
    assert_same(lab.top_k_filter(x, k, min_tokens_to_keep=keep), ref, f"top_k={k}, min_tokens_to_keep={keep} on {case}",
                "keep every logit >= the k-th largest (ties at the k-th all stay), k = min(max(top_k, "
                "min_tokens_to_keep), V)")


@pytest.mark.parametrize("case", ["random", "with -inf"])
@pytest.mark.parametrize("p, keep", [(0.05, 1), (0.5, 1), (0.9, 1), (0.9, 5), (0.999, 1), (1.0, 1)])
def test_top_p_matches_hf(lab, case, p, keep):
    x = CASES[case]
    ref = hf_proc().TopPLogitsWarper(top_p=p, min_tokens_to_keep=keep)(None, x.clone())
    assert_same(lab.top_p_filter(x, p, min_tokens_to_keep=keep), ref, f"top_p={p}, min_tokens_to_keep={keep} on {case}",
                "keep the smallest set of most likely tokens whose probability sums to >= top_p: the token that "
                "crosses top_p is KEPT (off-by-one?). Softmax before the cumsum, not after; scatter the mask "
                "back to vocabulary order")


@pytest.mark.parametrize("p", [0.55, 0.85, 0.97, 1.0])
def test_top_p_with_ties_matches_hf(lab, p):
    # groups of tied logits; the p values fall strictly inside a group boundary, so the answer is
    # the same whichever order a sort puts tied tokens in
    x = torch.tensor([[2.0, 2.0, 1.0, 1.0, 1.0, 0.0, 0.0, INF],
                      [0.0, 3.0, 0.0, 3.0, -1.0, -1.0, 0.0, 0.0]])
    probs = x.softmax(-1)
    ref = hf_proc().TopPLogitsWarper(top_p=p)(None, x.clone())
    ours = lab.top_p_filter(x, p)
    for row in range(2):  # sanity of the construction: HF keeps or drops whole tie groups here
        for v in x[row].unique():
            grp = x[row] == v
            assert torch.isneginf(ref[row][grp]).all() or not torch.isneginf(ref[row][grp]).any(), (row, v, probs)
    assert_same(ours, ref, f"top_p={p} with tied logits", "tied tokens on the same side of the cut stay together")


# min_tokens_to_keep > 1 on tied logits is left out: which of several tied tokens it saves is arbitrary
@pytest.mark.parametrize("case, m, keep", [
    (case, m, keep) for case in CASES for m, keep in [(0.0, 1), (0.05, 1), (0.3, 1), (0.3, 4), (1.0, 1)]
    if not (case == "ties" and keep > 1)])
def test_min_p_matches_hf(lab, case, m, keep):
    x = CASES[case]
    ref = hf_proc().MinPLogitsWarper(min_p=m, min_tokens_to_keep=keep)(None, x.clone())
    assert_same(lab.min_p_filter(x, m, min_tokens_to_keep=keep), ref, f"min_p={m}, min_tokens_to_keep={keep} on {case}",
                "the threshold is min_p * (probability of the most likely token), in probability space, "
                "not logit space; remove strictly below it")


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("penalty", [0.5, 1.0, 1.3, 2.0])
def test_repetition_penalty_matches_hf(lab, case, penalty):
    x = CASES[case]
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, x.shape[1], (x.shape[0], 12), generator=g)
    ids[:, 1] = ids[:, 0]                                            # a repeated id: penalized once
    ref = hf_proc().RepetitionPenaltyLogitsProcessor(penalty)(ids, x.clone())
    assert_same(lab.apply_repetition_penalty(x, ids, penalty), ref, f"repetition penalty {penalty} on {case}",
                "positive logits are divided by the penalty, negative ones MULTIPLIED (dividing a negative "
                "logit would raise it); a token seen twice is penalized once")


def test_filters_do_not_modify_their_input(lab):
    x = with_neg_inf()
    before = x.clone()
    ids = torch.randint(0, x.shape[1], (x.shape[0], 5))
    for out in (lab.top_k_filter(x, 3), lab.top_p_filter(x, 0.5), lab.min_p_filter(x, 0.2),
                lab.apply_temperature(x, 0.5), lab.apply_repetition_penalty(x, ids, 1.5)):
        assert out.shape == x.shape
    assert torch.equal(x, before), "a filter changed its input tensor in place: use masked_fill, not masked_fill_"


# --------------------------------------------------------------------------- picking a token
def test_greedy_is_argmax_first_on_ties(lab):
    x = torch.tensor([[0.0, 2.0, 2.0, 1.0], [5.0, INF, 5.0, 5.0]])
    assert lab.greedy(x).tolist() == [1, 0], "greedy = argmax over the vocabulary (dim=-1), first index on ties"
    assert lab.greedy(x).dtype == torch.int64


def test_multinomial_matches_torch_and_never_draws_removed_tokens(lab):
    x = with_neg_inf()
    ours = torch.stack([lab.multinomial(x, generator=torch.Generator().manual_seed(s)) for s in range(200)])
    ref = torch.stack([torch.multinomial(x.softmax(-1), 1, generator=torch.Generator().manual_seed(s)).squeeze(-1)
                       for s in range(200)])
    assert ours.shape == (200, x.shape[0]) and ours.dtype == torch.int64
    assert torch.equal(ours, ref), "multinomial should be torch.multinomial(softmax(logits), 1, generator=...)"
    assert not torch.isneginf(x.gather(1, ours.T)).any(), "a -inf (removed) token was sampled"


def test_top_p_one_equals_plain_multinomial(lab):
    x = with_neg_inf(seed=7)
    for s in range(30):
        a = lab.multinomial(lab.top_p_filter(x, 1.0), generator=torch.Generator().manual_seed(s))
        b = lab.multinomial(x, generator=torch.Generator().manual_seed(s))
        assert torch.equal(a, b), "top_p = 1.0 must not remove any token of nonzero probability"


def test_entropy_rises_with_temperature(lab):
    x = rand_logits(seed=11)
    ents = torch.stack([lab.entropy(lab.apply_temperature(x, t)) for t in (0.25, 0.5, 1.0, 2.0, 4.0)])
    assert (ents[1:] > ents[:-1]).all(), f"entropy per row should grow with temperature, got {ents.T.tolist()}"
    assert (ents[-1] < math.log(x.shape[1]) + 1e-4).all()


def test_filters_keep_what_they_promise(lab):
    x = rand_logits(seed=5)
    probs = x.softmax(-1)
    kept = ~torch.isneginf(lab.top_p_filter(x, 0.7))
    mass = (probs * kept).sum(-1)
    assert (mass >= 0.7 - 1e-6).all(), "the kept tokens must carry at least top_p of the probability"
    smaller = mass - (probs * kept).masked_fill(~kept, 2.0).amin(-1)
    assert (smaller < 0.7).all(), "top-p must keep the SMALLEST such set: dropping its least likely token falls below p"
    assert (~torch.isneginf(lab.top_k_filter(x, 7))).sum(-1).eq(7).all()


def test_sample_next_token_matches_hf_processor_list(lab):
    gen = hf_proc()
    x = rand_logits(B=6, V=80, seed=21)
    ids = torch.randint(0, 80, (6, 10), generator=torch.Generator().manual_seed(1))
    procs = gen.LogitsProcessorList([gen.RepetitionPenaltyLogitsProcessor(1.3), gen.TemperatureLogitsWarper(0.8),
                                     gen.TopKLogitsWarper(30), gen.TopPLogitsWarper(0.9), gen.MinPLogitsWarper(0.05)])
    for s in range(20):
        ref = torch.multinomial(procs(ids, x.clone()).softmax(-1), 1, generator=torch.Generator().manual_seed(s))
        ours = lab.sample_next_token(x, ids, temperature=0.8, top_k=30, top_p=0.9, min_p=0.05, repetition_penalty=1.3,
                                     generator=torch.Generator().manual_seed(s))
        assert torch.equal(ours, ref.squeeze(-1)), ("the order is HF's: repetition penalty, temperature, top-k, "
                                                    "top-p, min-p, then one multinomial draw")
    greedy = lab.sample_next_token(x, ids, do_sample=False, repetition_penalty=1.3, temperature=0.5)
    assert torch.equal(greedy, gen.RepetitionPenaltyLogitsProcessor(1.3)(ids, x.clone()).argmax(-1)), \
        "do_sample=False: argmax of the penalized logits"


# --------------------------------------------------------------------------- bad input
BAD = [
    ("apply_temperature", dict(temperature=0.0), "temperature"),
    ("apply_temperature", dict(temperature=-1.0), "temperature"),
    ("apply_temperature", dict(temperature=float("nan")), "temperature"),
    ("apply_temperature", dict(temperature=float("inf")), "temperature"),
    ("top_k_filter", dict(top_k=0), "top_k"),
    ("top_k_filter", dict(top_k=2.5), "top_k"),
    ("top_p_filter", dict(top_p=0.0), "top_p"),
    ("top_p_filter", dict(top_p=1.01), "top_p"),
    ("top_p_filter", dict(top_p=float("nan")), "top_p"),
    ("min_p_filter", dict(min_p=-0.1), "min_p"),
    ("min_p_filter", dict(min_p=1.5), "min_p"),
    ("min_p_filter", dict(min_p=float("nan")), "min_p"),
]


@pytest.mark.given
@pytest.mark.parametrize("fn, kw, needle", BAD)
def test_bad_parameters_raise_valueerror(lab, fn, kw, needle):
    with pytest.raises(ValueError, match=needle):
        getattr(lab, fn)(rand_logits(), **kw)


@pytest.mark.given
@pytest.mark.parametrize("fn", ["greedy", "multinomial", "entropy"])
def test_bad_logits_raise(lab, fn):
    x = rand_logits()
    x[1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        getattr(lab, fn)(x)
    dead = rand_logits()
    dead[2] = INF
    with pytest.raises(ValueError, match="-inf"):
        getattr(lab, fn)(dead)
    with pytest.raises(ValueError, match=r"\(B, V\)"):
        getattr(lab, fn)(rand_logits()[0])
    with pytest.raises(TypeError):
        getattr(lab, fn)(torch.ones(2, 3, dtype=torch.int64))


@pytest.mark.given
def test_bad_penalty_and_ids_raise(lab):
    x = rand_logits()
    ids = torch.zeros(4, 3, dtype=torch.int64)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="penalty"):
            lab.apply_repetition_penalty(x, ids, bad)
    with pytest.raises(ValueError, match="input_ids"):
        lab.apply_repetition_penalty(x, ids + 50, 1.2)
    with pytest.raises(ValueError, match="input_ids"):
        lab.apply_repetition_penalty(x, ids[:2], 1.2)
    with pytest.raises(ValueError, match="input_ids"):
        lab.sample_next_token(x, None, repetition_penalty=1.2)


# --------------------------------------------------------------------------- the curriculum model
@pytest.fixture(scope="module")
def bundle(lab):
    """(MiniGPT, HF LlamaForCausalLM, tokenizer or None, description) of the curriculum model."""
    torch.set_num_threads(1)
    return lab.load_model()


@pytest.fixture(scope="module")
def prompts(lab, bundle):
    _, hf, tok, _ = bundle
    return lab.tinystories_prompts(tok, 6, 8, hf.config.vocab_size)


def eos_ids(bundle) -> dict[str, int]:
    """The real eos, and a frequent token used as eos so that beams finish early and often."""
    _, hf, tok, _ = bundle
    out = {"eos": int(hf.config.eos_token_id)}
    if tok is not None:
        out["'.' as eos"] = tok(".", add_special_tokens=False)["input_ids"][-1]
    else:
        out["frequent token as eos"] = 5
    return out


def hf_generate(hf, idx, **kw):
    from transformers import GenerationConfig

    base = dict(do_sample=False, num_beams=1, top_k=0, top_p=1.0, temperature=1.0, repetition_penalty=1.0)
    cfg = GenerationConfig(**{**base, **kw})
    return hf.generate(idx, attention_mask=torch.ones_like(idx), generation_config=cfg)


def test_greedy_generate_matches_hf(lab, bundle, prompts):
    ours_model, hf, _, desc = bundle
    for name, eos in eos_ids(bundle).items():
        ref = hf_generate(hf, prompts, max_new_tokens=30, eos_token_id=eos, pad_token_id=eos)
        ours = lab.generate(ours_model, prompts, 30, do_sample=False, eos_token_id=eos)
        assert torch.equal(ours, ref), (f"greedy on {desc} with {name} differs from HF generate: argmax of the LAST "
                                        "position's logits; after eos a row gets pad; stop when every row is done")
        again = lab.generate(ours_model, prompts, 30, do_sample=False, eos_token_id=eos)
        assert torch.equal(ours, again), "greedy decoding must be deterministic"


@pytest.mark.parametrize("kw", [dict(), dict(temperature=0.7, top_k=20), dict(top_p=0.85),
                                dict(min_p=0.1, temperature=1.3), dict(repetition_penalty=1.3, top_k=40)])
def test_sampling_matches_hf_with_the_same_seed(lab, bundle, prompts, kw):
    ours_model, hf, _, desc = bundle
    eos = eos_ids(bundle)["eos"]
    torch.manual_seed(1234)
    ref = hf_generate(hf, prompts, do_sample=True, max_new_tokens=24, eos_token_id=eos, pad_token_id=eos, **kw)
    torch.manual_seed(1234)
    ours = lab.generate(ours_model, prompts, 24, eos_token_id=eos, **kw)
    assert torch.equal(ours, ref), (f"sampling {kw} on {desc} differs from HF generate with the same torch seed: "
                                    "same filters, same order, one torch.multinomial draw per step")


BEAM_CASES = [(1.0, False), (1.0, True), (0.0, "never"), (2.0, "never"), (-1.0, False)]


@pytest.mark.parametrize("length_penalty, early_stopping", BEAM_CASES)
def test_beam_search_matches_hf(lab, bundle, prompts, length_penalty, early_stopping):
    ours_model, hf, _, desc = bundle
    K, idx = 4, prompts[:3]
    for name, eos in eos_ids(bundle).items():
        ref = hf.generate(idx, attention_mask=torch.ones_like(idx), num_beams=K, num_return_sequences=K,
                          do_sample=False, max_new_tokens=20, length_penalty=length_penalty,
                          early_stopping=early_stopping, eos_token_id=eos, pad_token_id=eos, top_k=None,
                          return_dict_in_generate=True, output_scores=True)
        res = lab.beam_search(ours_model, idx, K, 20, length_penalty=length_penalty,
                              early_stopping=early_stopping, eos_token_id=eos, num_return_sequences=K)
        assert len(res) == 3 and all(len(r.sequences) == K for r in res), "one BeamResult per prompt, K hypotheses"
        where = f"beam search (K={K}, length_penalty={length_penalty}, early_stopping={early_stopping}, {name})"
        for b, r in enumerate(res):
            for i, seq in enumerate(r.sequences):
                hf_seq = ref.sequences[b * K + i]
                assert torch.equal(hf_seq[: len(seq)], seq) and (hf_seq[len(seq):] == eos).all(), (
                    f"{where}: prompt {b}, hypothesis {i} differs from HF on {desc}. Check: 2K candidates per "
                    "step; only eos candidates ranked in the top K finish; score = sum log p / "
                    "n_generated**length_penalty (eos counted); the stopping rule of early_stopping")
            assert torch.allclose(r.scores, ref.sequences_scores[b * K:(b + 1) * K], atol=1e-4), \
                f"{where}: scores {r.scores.tolist()} vs HF {ref.sequences_scores[b * K:(b + 1) * K].tolist()}"


def test_beam_search_with_one_beam_is_greedy(lab, bundle, prompts):
    ours_model, _, _, _ = bundle
    eos = eos_ids(bundle)["eos"]
    res = lab.beam_search(ours_model, prompts[:2], 1, 15, eos_token_id=eos)
    greedy = lab.generate(ours_model, prompts[:2], 15, do_sample=False, eos_token_id=eos)
    for r, g in zip(res, greedy):
        assert torch.equal(r.sequences[0], g[: len(r.sequences[0])]), "num_beams=1 must reduce to greedy"


@pytest.mark.given
def test_generation_bad_arguments(lab, bundle, prompts):
    model = bundle[0]
    with pytest.raises(ValueError, match="max_new_tokens"):
        lab.generate(model, prompts, -1)
    with pytest.raises(TypeError):
        lab.generate(model, prompts.float(), 3)
    with pytest.raises(ValueError, match="num_beams"):
        lab.beam_search(model, prompts[:1], 0, 5)
    with pytest.raises(ValueError, match="num_return_sequences"):
        lab.beam_search(model, prompts[:1], 2, 5, num_return_sequences=3)
    with pytest.raises(ValueError, match="early_stopping"):
        lab.beam_search(model, prompts[:1], 2, 5, early_stopping="sometimes")
    with pytest.raises(ValueError, match="penalty_alpha"):
        lab.contrastive_search(model, prompts[:1], 5, penalty_alpha=1.5)
    with pytest.raises(ValueError, match="top_k"):
        lab.contrastive_search(model, prompts[:1], 5, top_k=0)


def test_mean_logprob_matches_hf_loss(lab, bundle, prompts):
    ours_model, hf, _, _ = bundle
    seqs = lab.generate(ours_model, prompts[:3], 12, do_sample=False)
    ours = lab.mean_logprob(ours_model, list(seqs), 8)
    labels = seqs.clone()
    labels[:, :8] = -100                       # HF shifts labels inside; -100 = not scored
    for i in range(3):
        ref = -hf(seqs[i: i + 1], labels=labels[i: i + 1]).loss
        assert abs(ours[i].item() - ref.item()) < 1e-4, (
            "mean_logprob: average log p(x_t | x_<t) over the generated tokens only (positions >= prompt_len); "
            "the logits at position t predict token t+1")


# --------------------------------------------------------------------------- contrastive search
class ToyModel(nn.Module):
    """Bigram toy: logits depend only on the last token; the hidden state of a token is a fixed vector."""

    def __init__(self, next_probs: torch.Tensor, hidden: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", next_probs.log())
        self.register_buffer("emb", hidden)
        self.ln_f = nn.Identity()

    def forward(self, idx):
        self.ln_f(self.emb[idx])           # the hidden states, read by a hook on ln_f
        return self.table[idx], None


def toy():
    probs = torch.tensor([[0.40, 0.35, 0.20, 0.05],
                          [0.12, 0.30, 0.50, 0.08],
                          [0.05, 0.15, 0.60, 0.20],
                          [0.25, 0.25, 0.25, 0.25]])
    s = 1 / math.sqrt(2)
    hidden = torch.tensor([[1.0, 0.0], [0.0, 1.0], [s, s], [-1.0, 0.0]])
    return ToyModel(probs, hidden)


def test_contrastive_search_hand_computed(lab):
    # prompt [0], alpha 0.5, k 3.  Step 1: candidates 0, 1, 2 (p .40 .35 .20), max cos to {h0}: 1, 0, .707
    #   scores .5*.40-.5*1 = -.30, .5*.35-0 = .175, .5*.20-.5*.707 = -.254  -> 1   (greedy would say 0)
    # Step 2: candidates 2, 1, 0 (p .50 .30 .12), max cos to {h0, h1}: .707, 1, 1
    #   scores .25-.354 = -.104, .15-.5 = -.35, .06-.5 = -.44  -> 2
    # Step 3: candidates 2, 3, 1 (p .60 .20 .15), max cos to {h0, h1, h2}: 1, 0, 1
    #   scores .30-.5 = -.2, .10-0 = .10, .075-.5 = -.425  -> 3
    model = toy()
    out = lab.contrastive_search(model, torch.tensor([[0]]), 3, top_k=3, penalty_alpha=0.5)
    assert out.tolist() == [[0, 1, 2, 3]], (
        f"got {out.tolist()}: score = (1-alpha)*p(v) - alpha * max cosine(h_v, every context hidden state, prompt "
        "included); the context grows by the chosen token's hidden state")
    assert lab.contrastive_search(model, torch.tensor([[0]]), 3, top_k=3, penalty_alpha=0.0).tolist() == [[0, 0, 0, 0]], \
        "penalty_alpha=0 is greedy"


def test_degeneration_penalty_is_max_cosine(lab):
    g = torch.Generator().manual_seed(0)
    ctx, cand = torch.randn(3, 7, 16, generator=g), torch.randn(3, 4, 16, generator=g)
    ours = lab.degeneration_penalty(ctx, cand)
    ref = F.cosine_similarity(cand[:, :, None, :], ctx[:, None, :, :], dim=-1).amax(-1)
    assert ours.shape == (3, 4) and torch.allclose(ours, ref, atol=1e-5), \
        "normalize both sides along d, then take the max over context positions (not the mean, not over d)"


def test_contrastive_search_reduces_to_greedy_on_the_model(lab, bundle, prompts):
    model = bundle[0]
    eos = eos_ids(bundle)["eos"]
    greedy = lab.generate(model, prompts[:3], 12, do_sample=False, eos_token_id=eos)
    for kw in (dict(top_k=4, penalty_alpha=0.0), dict(top_k=1, penalty_alpha=0.6)):
        out = lab.contrastive_search(model, prompts[:3], 12, eos_token_id=eos, **kw)
        assert torch.equal(out, greedy), f"contrastive search with {kw} must equal greedy"
    out = lab.contrastive_search(model, prompts[:3], 12, top_k=4, penalty_alpha=0.6, eos_token_id=eos)
    assert not torch.equal(out, greedy), "penalty_alpha=0.6 changed nothing over 3x12 tokens: is the penalty applied?"


# --------------------------------------------------------------------------- metrics
def test_distinct_n_by_hand(lab):
    seqs = [[1, 2, 3, 1, 2], [1, 2, 4]]
    assert lab.distinct_n(seqs, 1) == pytest.approx(4 / 8)
    assert lab.distinct_n(seqs, 2) == pytest.approx(4 / 6)       # (1,2)x3, (2,3), (3,1), (2,4)
    assert lab.distinct_n(seqs, 3) == pytest.approx(4 / 4)
    assert lab.distinct_n([[7]], 2) == 0.0
    assert lab.distinct_n([torch.tensor([5, 5, 5])], 1) == pytest.approx(1 / 3), "accept 1-D tensors too"


def test_repetition_rate_by_hand(lab):
    loop = [1, 2, 3] * 4                                       # 10 trigrams, 3 distinct
    fresh = list(range(10))
    assert lab.repetition_rate([loop], 3) == pytest.approx(1 - 3 / 10)
    assert lab.repetition_rate([fresh], 3) == 0.0
    assert lab.repetition_rate([loop, fresh, [1]], 3) == pytest.approx((0.7 + 0.0) / 2), \
        "average over sequences that have at least one n-gram (within-sequence repeats, not across)"


def test_seeded_sampling_is_reproducible(lab, bundle, prompts):
    seed_everything(0)
    model = bundle[0]
    a = lab.generate(model, prompts[:2], 10, top_p=0.9, generator=torch.Generator().manual_seed(3))
    b = lab.generate(model, prompts[:2], 10, top_p=0.9, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)

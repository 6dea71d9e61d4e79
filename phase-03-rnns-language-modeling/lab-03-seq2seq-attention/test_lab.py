"""Grader for lab 3.3 (seq2seq + Bahdanau attention on date normalisation)."""
from __future__ import annotations

import datetime as dt

import pytest
import torch
import torch.nn as nn

from labkit import seed_everything


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny recurrent ops run fastest (and least noisily on a shared CPU) on one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_ordinal(lab):
    want = {1: "1st", 2: "2nd", 3: "3rd", 4: "4th", 11: "11th", 12: "12th", 13: "13th", 21: "21st",
            22: "22nd", 23: "23rd", 30: "30th", 31: "31st", 111: "111th", 101: "101st"}
    for n, s in want.items():
        assert lab.ordinal(n) == s, f"ordinal({n}) should be {s!r}: 11-13 always take 'th'"
    with pytest.raises(ValueError):
        lab.ordinal(0)
    # the spelled-out helpers used by the long formats
    assert lab.ordinal_words(22) == "twenty-second" and lab.ordinal_words(12) == "twelfth"
    assert lab.year_words(1987) == "nineteen eighty-seven" and lab.year_words(2005) == "two thousand and five"


def test_pairs_are_valid_and_seeded(lab):
    pairs = lab.make_pairs(300, seed=7)
    assert pairs == lab.make_pairs(300, seed=7), "same seed must give the same pairs"
    assert pairs != lab.make_pairs(300, seed=8)
    for src, tgt in pairs:
        d = dt.date.fromisoformat(tgt)
        assert lab.FIRST_DATE <= d <= lab.LAST_DATE
        assert str(d.year) in src or lab.year_words(d.year) in src.lower(), f"the year of {tgt} must appear in {src!r}"
    assert len({len(s) for s, _ in pairs}) > 10, "inputs should span many lengths"
    assert "Thursday, the 14th of March 2024" in lab._styles(dt.date(2024, 3, 14))


@pytest.mark.given
def test_split_has_no_test_source_in_training(lab):
    train, test = lab.make_split(5000, 800, seed=0)
    assert len(train) == 5000 and len(test) == 800
    train_sources = {s for s, _ in train}
    leaked = [s for s, _ in test if s in train_sources]
    assert not leaked, f"{len(leaked)} test sources also occur in training, e.g. {leaked[:3]}"
    assert len({s for s, _ in test}) == len(test), "test sources should be distinct"
    assert (train, test) == lab.make_split(5000, 800, seed=0), "same seed, same split"
    # the raw draw does overlap, so the filter is doing something
    raw = lab.make_pairs(800, seed=10_000)
    assert any(s in train_sources for s, _ in raw), "expected some overlap in the unfiltered draw"
    assert test[0] in raw, "the test stream is the seed + 10,000 stream with repeats skipped"


@pytest.mark.given
def test_buckets_cover_every_source_length(lab):
    """The longest sources combine the longest weekday, month, ordinal and year words: check those
    dates in every style (and a random sample of all dates) against the buckets."""
    buckets = lab.BUCKETS
    assert all(b[0] == a[1] + 1 for a, b in zip(buckets, buckets[1:])), "buckets must be contiguous"
    lengths = []
    for year in range(lab.FIRST_DATE.year, lab.LAST_DATE.year + 1):
        for day in range(20, 31):
            lengths += [len(s) for s in lab._styles(dt.date(year, 9, day))]
    lengths += [len(s) for s, _ in lab.make_pairs(3000, seed=1)]
    outside = sorted({n for n in lengths if not any(lo <= n <= hi for lo, hi in buckets)})
    assert not outside, f"source lengths {outside} fall outside every bucket {buckets}"
    assert max(lengths) == 83 and min(lengths) == 8


@pytest.mark.given
def test_models_reject_out_of_range_ids(lab):
    seed_everything(0)
    model = lab.Seq2Seq(len(lab.SRC_VOCAB), len(lab.TGT_VOCAB), 8, 16, attention=True)
    src = torch.tensor([lab.SRC_VOCAB.encode("14 Mar 2024")])   # built by hand: no learner code involved
    src_len = torch.tensor([src.shape[1]])
    tgt_in = torch.tensor([[lab.SOS, 3]])
    for bad_src in (len(lab.SRC_VOCAB), -1):
        with pytest.raises(ValueError, match="id"):
            model(src.clone().fill_(bad_src), src_len, tgt_in)
        with pytest.raises(ValueError, match="id"):
            lab.greedy_decode(model, src.clone().fill_(bad_src), src_len)
        with pytest.raises(ValueError, match="id"):
            model.encoder(src.clone().fill_(bad_src), src_len)
    for bad_tgt in (len(lab.TGT_VOCAB), -1):
        with pytest.raises(ValueError, match="id"):
            model(src, src_len, torch.tensor([[lab.SOS, bad_tgt]]))
        ann, mask, summary = torch.zeros(1, src.shape[1], 32), torch.ones(1, src.shape[1], dtype=torch.bool), None
        with pytest.raises(ValueError, match="id"):
            model.decode_step(torch.tensor([bad_tgt]), torch.zeros(1, 16), ann, mask, summary)
    with pytest.raises(ValueError, match="src_len"):
        model(src, torch.tensor([src.shape[1] + 1]), tgt_in)
    with pytest.raises(ValueError, match="outside"):
        lab.TGT_VOCAB.decode([3, len(lab.TGT_VOCAB)])


def test_pad_batch(lab):
    ids, lengths = lab.pad_batch([[5, 6, 7], [8], [9, 10]])
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]], "right-pad with PAD = 0"
    assert lengths.tolist() == [3, 1, 2]
    assert ids.dtype == torch.long
    with pytest.raises(ValueError):
        lab.pad_batch([[1], []])


def test_encoder_ignores_padding(lab):
    """Extra padding must not change the encoder's outputs at real positions or its summary."""
    seed_everything(0)
    enc = lab.Encoder(len(lab.SRC_VOCAB), 8, 12)
    seqs = [lab.SRC_VOCAB.encode("14 Mar 2024"), lab.SRC_VOCAB.encode("20240314")]
    src, src_len = lab.pad_batch(seqs)
    ann, summary = enc(src, src_len)
    assert ann.shape == (2, src.shape[1], 24) and summary.shape == (2, 24)
    alone_ann, alone_sum = enc(src[1:, :8], src_len[1:])
    assert torch.allclose(summary[1], alone_sum[0], atol=1e-6), \
        "the summary of a padded row changed: pack the sequence (pack_padded_sequence) so the GRU stops at its true end"
    assert torch.allclose(ann[1, :8], alone_ann[0], atol=1e-6)
    assert torch.all(ann[1, 8:] == 0), "annotations at padded positions should be zero (pad_packed_sequence)"
    # the backward direction at position 0 has read the whole real sequence: compare with nn.GRU on the unpadded row
    ref_out, ref_h = enc.rnn(enc.embed(src[1:, :8]))
    assert torch.allclose(alone_sum[0], torch.cat([ref_h[0, 0], ref_h[1, 0]]), atol=1e-6)


def _attn_inputs(B=3, S=7, Dq=5, Dk=6):
    seed_everything(1)
    q, k = torch.randn(B, Dq), torch.randn(B, S, Dk)
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[0, 4:] = False
    mask[2, 1:] = False
    return q, k, mask


def test_attention_weights_sum_to_one_and_match_formula(lab):
    q, k, mask = _attn_inputs()
    attn = lab.AdditiveAttention(5, 6, 9)
    ctx, w = attn(q, k, mask)
    assert w.shape == (3, 7) and ctx.shape == (3, 6)
    assert torch.allclose(w.sum(-1), torch.ones(3), atol=1e-6), "attention weights must sum to 1 over the source"
    # reference: e_j = v^T tanh(W_q q + W_k k_j), softmax over the valid j only
    for b in range(3):
        n = int(mask[b].sum())
        e = torch.stack([attn.v(torch.tanh(attn.W_q(q[b]) + attn.W_k(k[b, j]))).squeeze() for j in range(n)])
        want = torch.softmax(e, 0)
        assert torch.allclose(w[b, :n], want, atol=1e-6), \
            "scores must be v^T tanh(W_q q + W_k k_j) (additive, Bahdanau), softmaxed over the source positions"
        assert torch.allclose(ctx[b], want @ k[b, :n], atol=1e-6), "context = sum_j a_j k_j"


def test_attention_masks_padding(lab):
    q, k, mask = _attn_inputs()
    attn = lab.AdditiveAttention(5, 6, 9)
    ctx, w = attn(q, k, mask)
    assert torch.all(w[~mask] == 0), "padded source positions must get exactly zero weight (masked_fill with -inf)"
    assert torch.allclose(w[2, 0], torch.tensor(1.0)), "a row with one real position puts all weight on it"
    k2 = k.clone()
    k2[~mask] = 1e3 * torch.randn(int((~mask).sum()), 6)
    ctx2, _ = attn(q, k2, mask)
    assert torch.allclose(ctx, ctx2, atol=1e-5), "garbage at padded positions leaked into the context"
    with pytest.raises(ValueError):
        attn(q, k, torch.zeros(3, 7, dtype=torch.bool))


def test_teacher_forcing_matches_step_by_step(lab):
    seed_everything(2)
    model = lab.Seq2Seq(len(lab.SRC_VOCAB), len(lab.TGT_VOCAB), 8, 16, attention=True)
    batch = lab.encode_pairs(lab.make_pairs(4, seed=3))
    logits, weights = model(batch["src"], batch["src_len"], batch["tgt_in"])
    assert logits.shape == (4, 11, len(lab.TGT_VOCAB)) and weights.shape == (4, 11, batch["src"].shape[1])
    ann, mask, summary, s = model.encode(batch["src"], batch["src_len"])
    for t in range(3):
        lt, s, _ = model.decode_step(batch["tgt_in"][:, t], s, ann, mask, summary)
        assert torch.allclose(lt, logits[:, t], atol=1e-5), \
            "teacher forcing feeds the TRUE previous token tgt_in[:, t] and carries the decoder state"


def test_no_attention_context_is_fixed(lab):
    """Without attention the decoder must read the same source summary at every step."""
    seed_everything(3)
    model = lab.Seq2Seq(len(lab.SRC_VOCAB), len(lab.TGT_VOCAB), 8, 16, attention=False)
    assert model.attn is None
    batch = lab.encode_pairs(lab.make_pairs(2, seed=4))
    ann, mask, summary, s = model.encode(batch["src"], batch["src_len"])
    _, _, w = model.decode_step(batch["tgt_in"][:, 0], s, ann, mask, summary)
    assert w is None
    ann_noise = torch.randn_like(ann)
    l1, _, _ = model.decode_step(batch["tgt_in"][:, 0], s, ann, mask, summary)
    l2, _, _ = model.decode_step(batch["tgt_in"][:, 0], s, ann_noise, mask, summary)
    assert torch.allclose(l1, l2), "the no-attention decoder must not look at per-position annotations"


def test_attention_query_is_the_previous_decoder_state(lab):
    """The context must be re-read at every step with the decoder's state as the query."""
    seed_everything(5)
    model = lab.Seq2Seq(len(lab.SRC_VOCAB), len(lab.TGT_VOCAB), 8, 16, attention=True)
    batch = lab.encode_pairs(lab.make_pairs(3, seed=5))
    ann, mask, summary, s0 = model.encode(batch["src"], batch["src_len"])
    y = batch["tgt_in"][:, 0]
    other = 3 * torch.randn_like(s0)
    _, _, w0 = model.decode_step(y, s0, ann, mask, summary)
    l1, _, w1 = model.decode_step(y, other, ann, mask, summary)
    assert not torch.allclose(w0, w1, atol=1e-4), (
        "the attention weights stayed the same when the decoder state changed: the decoder should decide "
        "where to look from where it is in the output, so the weights must depend on its state"
    )
    want_ctx, want_w = model.attn(other, ann, mask)
    assert torch.allclose(w1, want_w, atol=1e-6), \
        "decode_step's weights should be attn(query = the state passed in, s_(t-1); keys = the annotations)"
    # the context that weighting produces must be what the decoder reads: check the logits
    e = model.tgt_embed(y)
    s_new = model.dec_cell(torch.cat([e, want_ctx], -1), other)
    assert torch.allclose(l1, model.out(torch.cat([s_new, want_ctx, e], -1)), atol=1e-5), \
        "the logits must use the context computed from that attention (fed to the GRU cell and to the output layer)"
    # over a teacher-forced pass the weights move from step to step
    _, weights = model(batch["src"], batch["src_len"], batch["tgt_in"])
    assert (weights[:, 1:] - weights[:, :-1]).abs().max() > 1e-4, \
        "the attention weights are identical at every output step; the query must change as decoding proceeds"


def test_greedy_decode_feeds_back_predictions(lab):
    seed_everything(4)
    model = lab.Seq2Seq(len(lab.SRC_VOCAB), len(lab.TGT_VOCAB), 8, 16, attention=True)
    src, src_len = lab.pad_batch([lab.SRC_VOCAB.encode("March 14, 2024"), lab.SRC_VOCAB.encode("14/03/2024")])
    ids, w = lab.greedy_decode(model, src, src_len, max_len=6)
    assert ids.shape == (2, 6) and w.shape == (2, 6, src.shape[1])
    # re-run with teacher forcing on <sos> + its own predictions: the argmaxes must reproduce ids
    tgt_in = torch.cat([torch.full((2, 1), lab.SOS), ids[:, :-1]], 1)
    logits, _ = model(src, src_len, tgt_in)
    assert torch.equal(logits.argmax(-1), ids), "greedy decoding must feed back its own argmax, starting from <sos>"


def test_exact_match_by_length(lab):
    preds = ["2024-03-14", "2024-03-15", "1999-01-01", "2000-01-01"]
    targets = ["2024-03-14", "2024-03-14", "1999-01-01", "2000-01-02"]
    sources = ["20240314", "14/03/2024", "the 1st of January, 1999", "x" * 30]
    got = lab.exact_match_by_length(preds, targets, sources, [(1, 10), (11, 29), (30, 40), (50, 60)])
    assert got[(1, 10)] == (50.0, 2), "bucket (1, 10) holds 2 examples, 1 right -> 50%"
    assert got[(11, 29)] == (100.0, 1)
    assert got[(30, 40)] == (0.0, 1), "exact match means the whole string, not per character"
    assert got[(50, 60)][1] == 0
    with pytest.raises(ValueError):
        lab.exact_match_by_length(preds, targets[:2], sources, [(1, 10)])


def test_short_training_learns_something(lab):
    cfg = lab.Seq2SeqConfig(n_train=3000, steps=100, batch_size=32, hidden_size=32, n_embd=16)
    model, losses, _ = lab.train_seq2seq(True, cfg, lab.make_pairs(3000, seed=0), progress=False)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.6 * first, f"train loss {first:.2f} -> {last:.2f}: 100 steps should cut it well below 60%"
    assert isinstance(model.attn, nn.Module)


@pytest.mark.slow
def test_attention_beats_bottleneck_on_long_inputs(lab):
    """Same data, same steps, same sizes: attention wins on the longest inputs by >= 15 points."""
    cfg = lab.Seq2SeqConfig()   # the self-test's small mode: 20k pairs, 600 steps, H=64
    res = lab.run_experiment(cfg, progress=False)
    longest = lab.BUCKETS[-1]
    a0, a1 = res[False]["by_len"][longest][0], res[True]["by_len"][longest][0]
    assert a1 - a0 >= 15.0, f"attention {a1:.1f}% vs no attention {a0:.1f}% on {longest} chars: gap below 15 points"

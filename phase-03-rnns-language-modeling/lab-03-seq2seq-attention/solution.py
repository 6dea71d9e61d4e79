"""Lab 3.3 - a GRU encoder-decoder for date normalisation, without and with Bahdanau attention.

Task: "Thursday, the 14th of March, 2024", "14/03/2024", "MAR 14 2024", ... -> "2024-03-14".
Pairs are generated with ``datetime`` from a seeded ``random.Random``, in many surface formats.

Two models that differ in ONE place, the context vector c_t the decoder reads at step t:

* no attention (Cho et al., 2014; Sutskever et al., 2014): c_t = c, one fixed summary of the
  source (the encoder's final forward/backward states) - the "bottleneck";
* Bahdanau attention (Bahdanau, Cho & Bengio, 2015): c_t = sum_j a_tj h_j, with
  e_tj = v^T tanh(W_s s_{t-1} + W_h h_j), a_t = softmax_j(e_t) over the real (unpadded) source positions.

Decoder step (both): s_t = GRU([emb(y_{t-1}); c_t], s_{t-1}); logits_t = W_o [s_t; c_t; emb(y_{t-1})].
Training uses teacher forcing (the true y_{t-1} is fed in); evaluation decodes greedily.

Run: ``python solution.py`` (small mode, ~1-2 min on a CPU) or ``python solution.py --full``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import itertools
import random
import string
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from labkit import seed_everything

HERE = Path(__file__).resolve().parent

# ----------------------------------------------------------------------------- data
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
FIRST_DATE, LAST_DATE = dt.date(1950, 1, 1), dt.date(2049, 12, 31)


def ordinal(n: int) -> str:
    """English ordinal of a day number: 1 -> '1st', 2 -> '2nd', 11 -> '11th', 22 -> '22nd'.

    Raises:
        ValueError: n < 1.
    """
    if n < 1:
        raise ValueError(f"ordinal needs n >= 1, got {n}")
    # BEGIN SOLUTION 'th' for 11, 12, 13 (and 111...); otherwise by the last digit: 1 -> st, 2 -> nd, 3 -> rd, else th (easy, ~5 min)
    if n % 100 in (11, 12, 13):
        return f"{n}th"
    return f"{n}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th') }"
    # END SOLUTION


_ONES = ["", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_ORD = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
        "nine": "ninth", "twelve": "twelfth", "twenty": "twentieth", "thirty": "thirtieth"}


def number_words(n: int) -> str:
    """0 < n < 100 in English words: 7 -> 'seven', 24 -> 'twenty-four'."""
    if not 0 < n < 100:
        raise ValueError(f"number_words handles 1..99, got {n}")
    if n < 20:
        return _ONES[n]
    return _TENS[n // 10] + ("-" + _ONES[n % 10] if n % 10 else "")


def ordinal_words(n: int) -> str:
    """Day number as an ordinal word: 1 -> 'first', 14 -> 'fourteenth', 22 -> 'twenty-second'."""
    head, _, last = number_words(n).rpartition("-")
    last = _ORD.get(last, last + "th")
    return f"{head}-{last}" if head else last


def year_words(y: int) -> str:
    """A year read aloud: 1987 -> 'nineteen eighty-seven', 2005 -> 'two thousand and five', 2024 -> 'twenty twenty-four'."""
    if 2000 <= y <= 2009:
        return "two thousand" + (f" and {number_words(y % 100)}" if y % 100 else "")
    hi, lo = divmod(y, 100)
    return f"{number_words(hi)} {number_words(lo) if lo else 'hundred'}"


def _styles(d: dt.date) -> list[str]:
    """Every surface form this task uses for one date (short numeric ones first, wordy ones last)."""
    M, m3, W, w3 = MONTHS[d.month - 1], MONTHS[d.month - 1][:3], WEEKDAYS[d.weekday()], WEEKDAYS[d.weekday()][:3]
    return [
        d.strftime("%Y%m%d"),                                  # 20240314
        d.strftime("%d/%m/%Y"),                                # 14/03/2024
        d.strftime("%d.%m.%Y"),                                # 14.03.2024
        d.strftime("%Y.%m.%d"),                                # 2024.03.14
        f"{d.day} {m3} {d.year}",                              # 14 Mar 2024
        f"{d.day}-{m3.upper()}-{d.year}",                      # 14-MAR-2024
        f"{m3} {d.day} {d.year}",                              # Mar 14 2024
        f"{M} {d.day}, {d.year}",                              # March 14, 2024
        f"{d.day} {M} {d.year}",                               # 14 March 2024
        f"{w3} {d.day} {m3} {d.year}",                         # Thu 14 Mar 2024
        f"{W} {d.day} {M} {d.year}",                           # Thursday 14 March 2024
        f"{W}, {M} {d.day}, {d.year}",                         # Thursday, March 14, 2024
        f"the {ordinal(d.day)} of {M}, {d.year}",              # the 14th of March, 2024
        f"{W}, the {ordinal(d.day)} of {M} {d.year}",          # Thursday, the 14th of March 2024
        f"the {ordinal_words(d.day)} of {M}, {year_words(d.year)}",       # the fourteenth of March, twenty twenty-four
        f"{W}, {M} the {ordinal_words(d.day)}, {year_words(d.year)}",     # Thursday, March the fourteenth, twenty ...
        f"on {W} the {ordinal_words(d.day)} day of {M} in the year {year_words(d.year)}",
    ]


def iter_pairs(seed: int = 0) -> Iterator[tuple[str, str]]:
    """An endless, seeded stream of (source, target) pairs: a random date in a random style, and
    its ISO form YYYY-MM-DD.

    Dates are uniform over 1950-01-01..2049-12-31; a third of the sources are upper- or
    lower-cased. Same ``seed`` -> same stream.
    """
    rng = random.Random(seed)
    span = (LAST_DATE - FIRST_DATE).days
    while True:
        d = FIRST_DATE + dt.timedelta(days=rng.randint(0, span))
        src = rng.choice(_styles(d))
        r = rng.random()
        if r < 1 / 6:
            src = src.lower()
        elif r < 1 / 3:
            src = src.upper()
        yield src, d.isoformat()


def make_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """The first ``n`` pairs of :func:`iter_pairs` (``seed``). Raises ValueError if n < 1."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return list(itertools.islice(iter_pairs(seed), n))


def make_split(n_train: int, n_test: int, seed: int = 0) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Training pairs (``make_pairs(n_train, seed)``) and ``n_test`` test pairs whose sources never
    occur in training and are distinct from each other.

    Test pairs come from the stream with seed ``seed + 10_000``; any source already seen (in
    training or earlier in the test set) is skipped. Without this filter about 2.5% of 2,000 test
    sources also appear verbatim among 20,000 training sources (the short numeric formats have
    only one string per date), and the test would partly measure memorisation.

    Raises:
        ValueError: n_train or n_test < 1.
    """
    if n_test < 1:
        raise ValueError(f"n_test must be >= 1, got {n_test}")
    train = make_pairs(n_train, seed)
    seen = {src for src, _ in train}
    test: list[tuple[str, str]] = []
    for src, tgt in iter_pairs(seed + 10_000):
        if src not in seen:
            seen.add(src)
            test.append((src, tgt))
            if len(test) == n_test:
                break
    return train, test


PAD, SOS, EOS = 0, 1, 2
SRC_CHARS = string.ascii_letters + string.digits + " ,./-"
TGT_CHARS = string.digits + "-"


class Vocab:
    """Characters <-> ids with reserved ids 0 = <pad>, 1 = <sos>, 2 = <eos>."""

    def __init__(self, chars: str) -> None:
        self.itos = ["<pad>", "<sos>", "<eos>"] + list(chars)
        self.stoi = {c: i for i, c in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, s: str, add_sos: bool = False, add_eos: bool = False) -> list[int]:
        """Characters -> ids. Raises ValueError naming an unknown character."""
        bad = sorted(set(s) - set(self.stoi))
        if bad:
            raise ValueError(f"characters not in the vocabulary: {bad!r}")
        return [SOS] * add_sos + [self.stoi[c] for c in s] + [EOS] * add_eos

    def decode(self, ids: list[int]) -> str:
        """Ids -> characters; stops at the first <eos>, skips <pad>/<sos>.

        Raises:
            ValueError: an id outside [0, len(self)) before the first <eos>.
        """
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.itos):
                raise ValueError(f"id {i} is outside the vocabulary [0, {len(self.itos)})")
            if i == EOS:
                break
            if i > EOS:
                out.append(self.itos[i])
        return "".join(out)


def check_ids(ids: torch.Tensor, vocab_size: int, name: str) -> None:
    """Raise ValueError unless ``ids`` is an integer tensor with every id in [0, vocab_size).

    ``nn.Embedding`` would otherwise stop with "index out of range in self" deep inside torch.
    """
    if ids.dtype not in (torch.long, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"{name} must be an integer tensor, got {ids.dtype}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
        raise ValueError(f"{name} holds token id {bad}, outside [0, {vocab_size})")


def check_lengths(src: torch.Tensor, src_len: torch.Tensor) -> None:
    """Raise ValueError unless src is (B, S) and src_len (B,) with every length in [1, S]."""
    if src.dim() != 2 or src_len.shape != (src.shape[0],):
        raise ValueError(f"src must be (B, S) and src_len (B,), got {tuple(src.shape)} and {tuple(src_len.shape)}")
    if src_len.numel() and (int(src_len.min()) < 1 or int(src_len.max()) > src.shape[1]):
        raise ValueError(f"src_len must lie in [1, S={src.shape[1]}], got {src_len.tolist()}")


SRC_VOCAB, TGT_VOCAB = Vocab(SRC_CHARS), Vocab(TGT_CHARS)


def pad_batch(seqs: list[list[int]], pad_id: int = PAD) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists into one tensor.

    Returns:
        (ids, lengths): ids LongTensor (B, S_max) padded with ``pad_id``; lengths LongTensor (B,).
    Raises:
        ValueError: an empty batch or an empty sequence.
    """
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("pad_batch needs a non-empty list of non-empty sequences")
    # BEGIN SOLUTION fill a (B, max_len) tensor with pad_id and copy each sequence into the left of its row (easy, ~5 min)
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    ids = torch.full((len(seqs), int(lengths.max())), pad_id, dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = torch.tensor(s, dtype=torch.long)
    return ids, lengths
    # END SOLUTION


def encode_pairs(pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Tensors for a list of pairs: src (B, S), src_len (B,), tgt_in (B, 11) = <sos> + ISO, tgt_out (B, 11) = ISO + <eos>."""
    src, src_len = pad_batch([SRC_VOCAB.encode(s) for s, _ in pairs])
    tgt_in, _ = pad_batch([TGT_VOCAB.encode(t, add_sos=True) for _, t in pairs])
    tgt_out, _ = pad_batch([TGT_VOCAB.encode(t, add_eos=True) for _, t in pairs])
    return {"src": src, "src_len": src_len, "tgt_in": tgt_in, "tgt_out": tgt_out}


# ----------------------------------------------------------------------------- model
class Encoder(nn.Module):
    """Embedding -> bidirectional GRU over the real (unpadded) characters of each source.

    Returns per-position annotations h_j = [h_j_fwd; h_j_bwd] and a summary of the whole
    source (both final states), which is all the no-attention decoder ever sees.
    """

    def __init__(self, vocab_size: int, n_embd: int, hidden_size: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, n_embd, padding_idx=PAD)
        self.rnn = nn.GRU(n_embd, hidden_size, batch_first=True, bidirectional=True)

    def forward(self, src: torch.Tensor, src_len: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            src: LongTensor (B, S), right-padded with PAD. src_len: LongTensor (B,), lengths >= 1.
        Returns:
            (annotations, summary): float (B, S, 2H) with zeros at padded positions, and
            float (B, 2H) = [final forward state; final backward state].
        Raises:
            ValueError: an id outside the source vocabulary, or a length outside [1, S].
        """
        check_ids(src, self.embed.num_embeddings, "src")
        check_lengths(src, src_len)
        # BEGIN SOLUTION embed; pack_padded_sequence(..., src_len.cpu(), batch_first=True, enforce_sorted=False); run the GRU; pad_packed_sequence back to length S; summary = cat(h_n[0], h_n[1]) (medium, ~15 min)
        emb = self.embed(src)
        packed = pack_padded_sequence(emb, src_len.cpu(), batch_first=True, enforce_sorted=False)
        out, h_n = self.rnn(packed)                       # h_n: (2, B, H), the states at each row's TRUE end
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])
        return out, torch.cat([h_n[0], h_n[1]], dim=-1)
        # END SOLUTION


class AdditiveAttention(nn.Module):
    """Bahdanau (additive) attention: e_j = v^T tanh(W_q q + W_k k_j), a = softmax over valid j.

    Args:
        query_dim: width of the decoder state s_{t-1}. key_dim: width of the annotations h_j.
        attn_dim: width of the hidden layer inside the score.
    """

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int) -> None:
        super().__init__()
        self.W_q = nn.Linear(query_dim, attn_dim, bias=False)
        self.W_k = nn.Linear(key_dim, attn_dim)
        self.v = nn.Linear(attn_dim, 1, bias=False)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor,
                proj_keys: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            query: float (B, query_dim). keys: float (B, S, key_dim).
            mask: bool (B, S), True at real source positions, False at padding.
            proj_keys: optional precomputed ``W_k(keys)``, float (B, S, attn_dim). It does not
                depend on the decoder step, so a decoder computes it once per source
                (Bahdanau et al. note the same saving in their appendix).
        Returns:
            (context, weights): context float (B, key_dim) = sum_j weights_j keys_j;
            weights float (B, S), exactly 0 at padded positions, each row sums to 1.
        Raises:
            ValueError: a row of ``mask`` with no True (nothing to attend to).
        """
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be bool (True = real token), got {mask.dtype}")
        if not mask.any(dim=1).all():
            raise ValueError("every row of mask needs at least one True position")
        if proj_keys is None:
            proj_keys = self.W_k(keys)
        # BEGIN SOLUTION scores = v(tanh(W_q(query)[:, None] + proj_keys)).squeeze(-1); set padded scores to -inf; softmax over S; context = weights @ keys (medium, ~20 min)
        scores = self.v(torch.tanh(self.W_q(query).unsqueeze(1) + proj_keys)).squeeze(-1)        # (B, S)
        scores = scores.masked_fill(~mask, float("-inf"))      # exp(-inf) = 0: padding gets no weight
        weights = torch.softmax(scores, dim=-1)
        context = torch.bmm(weights.unsqueeze(1), keys).squeeze(1)                                # (B, key_dim)
        return context, weights
        # END SOLUTION


class Seq2Seq(nn.Module):
    """GRU encoder-decoder; ``attention=False`` is the fixed-context baseline, True adds Bahdanau attention.

    Both variants have the same layers except the attention module, and the decoder always
    reads a context vector of width 2H, so the comparison isolates the bottleneck.
    """

    def __init__(self, src_vocab: int, tgt_vocab: int, n_embd: int = 32, hidden_size: int = 64,
                 attention: bool = True) -> None:
        super().__init__()
        H = hidden_size
        self.attention = attention
        self.src_vocab_size, self.tgt_vocab_size = src_vocab, tgt_vocab
        self.encoder = Encoder(src_vocab, n_embd, H)
        self.init_dec = nn.Linear(2 * H, H)                # encoder summary -> s_0
        self.attn = AdditiveAttention(H, 2 * H, H) if attention else None
        self.tgt_embed = nn.Embedding(tgt_vocab, n_embd, padding_idx=PAD)
        self.dec_cell = nn.GRUCell(n_embd + 2 * H, H)
        self.out = nn.Linear(H + 2 * H + n_embd, tgt_vocab)

    def encode(self, src: torch.Tensor, src_len: torch.Tensor):
        """Run the encoder. Returns (annotations (B,S,2H), mask (B,S) bool, summary (B,2H), s_0 (B,H)).

        Raises ValueError for source ids outside [0, src_vocab) or lengths outside [1, S].
        """
        annotations, summary = self.encoder(src, src_len)
        mask = torch.arange(src.shape[1], device=src.device)[None, :] < src_len[:, None]
        s0 = torch.tanh(self.init_dec(summary))
        return annotations, mask, summary, s0

    def decode_step(self, y_prev: torch.Tensor, s: torch.Tensor, annotations: torch.Tensor,
                    mask: torch.Tensor, summary: torch.Tensor, proj_keys: torch.Tensor | None = None):
        """One decoder step.

        Args:
            y_prev: LongTensor (B,) previous target token. s: float (B, H) previous decoder state.
            annotations, mask, summary: from :meth:`encode`. proj_keys: optional cached
                ``attn.W_k(annotations)`` (see :meth:`project_keys`).
        Returns:
            (logits (B, V_tgt), s_new (B, H), weights (B, S) or None without attention).
        Raises:
            ValueError: y_prev holds an id outside [0, V_tgt).
        """
        check_ids(y_prev, self.tgt_vocab_size, "y_prev")
        # BEGIN SOLUTION context = attention(s, annotations, mask) if self.attention else the fixed summary; e = tgt_embed(y_prev); s_new = dec_cell(cat[e, context], s); logits = out(cat[s_new, context, e]) (medium, ~15 min)
        e = self.tgt_embed(y_prev)
        if self.attention:
            context, weights = self.attn(s, annotations, mask, proj_keys)   # query: the PREVIOUS state s_{t-1}
        else:
            context, weights = summary, None                    # the same vector at every step: the bottleneck
        s_new = self.dec_cell(torch.cat([e, context], dim=-1), s)
        logits = self.out(torch.cat([s_new, context, e], dim=-1))
        return logits, s_new, weights
        # END SOLUTION

    def project_keys(self, annotations: torch.Tensor) -> torch.Tensor | None:
        """``attn.W_k(annotations)`` once per source (None without attention)."""
        return self.attn.W_k(annotations) if self.attention else None

    def forward(self, src: torch.Tensor, src_len: torch.Tensor, tgt_in: torch.Tensor):
        """Teacher-forced decoding: at step t the decoder is fed the TRUE token tgt_in[:, t].

        Args:
            src (B, S), src_len (B,), tgt_in (B, T) = <sos> + target.
        Returns:
            (logits float (B, T, V_tgt), weights float (B, T, S) or None).
        Raises:
            ValueError: ids outside their vocabularies, lengths outside [1, S], or a batch-size mismatch.
        """
        check_ids(tgt_in, self.tgt_vocab_size, "tgt_in")
        if tgt_in.dim() != 2 or tgt_in.shape[0] != src.shape[0]:
            raise ValueError(f"tgt_in must be (B, T) with B = {src.shape[0]}, got {tuple(tgt_in.shape)}")
        annotations, mask, summary, s = self.encode(src, src_len)
        proj_keys = self.project_keys(annotations)
        # BEGIN SOLUTION loop t over tgt_in's columns calling decode_step with the true previous token; stack logits (and weights when attending) along dim 1 (medium, ~10 min)
        logits, weights = [], []
        for t in range(tgt_in.shape[1]):
            lt, s, wt = self.decode_step(tgt_in[:, t], s, annotations, mask, summary, proj_keys)
            logits.append(lt)
            weights.append(wt)
        return torch.stack(logits, 1), (torch.stack(weights, 1) if self.attention else None)
        # END SOLUTION


@torch.no_grad()
def greedy_decode(model: Seq2Seq, src: torch.Tensor, src_len: torch.Tensor, max_len: int = 11):
    """Decode without teacher forcing: feed back the argmax token each step.

    Returns:
        (ids LongTensor (B, max_len), weights float (B, max_len, S) or None). Rows keep going after
        <eos>; ``Vocab.decode`` cuts at the first <eos>.
    """
    model.eval()
    annotations, mask, summary, s = model.encode(src, src_len)
    proj_keys = model.project_keys(annotations)
    y = torch.full((src.shape[0],), SOS, dtype=torch.long, device=src.device)
    # BEGIN SOLUTION max_len times: decode_step from the previous PREDICTION (start at <sos>), take the argmax, collect ids and weights (easy, ~10 min)
    ids, weights = [], []
    for _ in range(max_len):
        logits, s, w = model.decode_step(y, s, annotations, mask, summary, proj_keys)
        y = logits.argmax(-1)
        ids.append(y)
        weights.append(w)
    return torch.stack(ids, 1), (torch.stack(weights, 1) if model.attention else None)
    # END SOLUTION


def exact_match_by_length(preds: list[str], targets: list[str], sources: list[str],
                          buckets: list[tuple[int, int]]) -> dict[tuple[int, int], tuple[float, int]]:
    """Exact-match accuracy (%) grouped by source length.

    Args:
        buckets: inclusive (lo, hi) source-length ranges.
    Returns:
        {bucket: (accuracy in percent, number of examples)}; an empty bucket gives (nan, 0).
    Raises:
        ValueError: the three lists have different lengths.
    """
    if not len(preds) == len(targets) == len(sources):
        raise ValueError(f"length mismatch: {len(preds)} preds, {len(targets)} targets, {len(sources)} sources")
    # BEGIN SOLUTION for each bucket, select examples with lo <= len(source) <= hi and count pred == target exactly (easy, ~10 min)
    out = {}
    for lo, hi in buckets:
        hits = [p == t for p, t, s in zip(preds, targets, sources) if lo <= len(s) <= hi]
        out[(lo, hi)] = (100.0 * sum(hits) / len(hits) if hits else float("nan"), len(hits))
    return out
    # END SOLUTION


# ----------------------------------------------------------------------------- training
@dataclass
class Seq2SeqConfig:
    n_train: int = 20_000
    n_test: int = 2_000
    steps: int = 600
    batch_size: int = 64
    lr: float = 3e-3
    n_embd: int = 32
    hidden_size: int = 64
    grad_clip: float = 1.0
    seed: int = 0


def train_seq2seq(attention: bool, cfg: Seq2SeqConfig, train_pairs: list[tuple[str, str]],
                  progress: bool = True) -> tuple[Seq2Seq, list[float], float]:
    """Teacher-forced training with Adam and gradient clipping. Returns (model, per-step loss, seconds)."""
    from tqdm.auto import tqdm

    seed_everything(cfg.seed)
    model = Seq2Seq(len(SRC_VOCAB), len(TGT_VOCAB), cfg.n_embd, cfg.hidden_size, attention=attention)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    data = encode_pairs(train_pairs)
    g = torch.Generator().manual_seed(cfg.seed)
    losses = []
    start = time.perf_counter()
    model.train()
    for _ in tqdm(range(cfg.steps), disable=None if progress else True, desc=f"attention={attention}", leave=False):
        ix = torch.randint(0, len(train_pairs), (cfg.batch_size,), generator=g)
        src_len = data["src_len"][ix]
        S = int(src_len.max())
        logits, _ = model(data["src"][ix, :S], src_len, data["tgt_in"][ix])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), data["tgt_out"][ix].reshape(-1),
                               ignore_index=PAD)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(loss.item())
    return model, losses, time.perf_counter() - start


def predict(model: Seq2Seq, sources: list[str], batch_size: int = 500) -> list[str]:
    """Greedy-decode a list of source strings into ISO strings."""
    preds = []
    for i in range(0, len(sources), batch_size):
        src, src_len = pad_batch([SRC_VOCAB.encode(s) for s in sources[i:i + batch_size]])
        ids, _ = greedy_decode(model, src, src_len)
        preds += [TGT_VOCAB.decode(row.tolist()) for row in ids]
    return preds


# Source-length buckets (inclusive). The longest source the generator can write is 83 characters
# ("on Wednesday the twenty-seventh day of September in the year nineteen seventy-eight"); the
# shortest is 8 ("20240314"). test_lab.py checks that every style of every date falls in a bucket.
BUCKETS = [(8, 11), (12, 20), (21, 35), (36, 83)]


def run_experiment(cfg: Seq2SeqConfig, progress: bool = True) -> dict:
    """Train both models on the same pairs and step budget; score both on the same test pairs."""
    train_pairs, test_pairs = make_split(cfg.n_train, cfg.n_test, seed=cfg.seed)
    sources, targets = [s for s, _ in test_pairs], [t for _, t in test_pairs]
    res = {"test_pairs": test_pairs}
    for attention in (False, True):
        model, losses, secs = train_seq2seq(attention, cfg, train_pairs, progress)
        preds = predict(model, sources)
        res[attention] = {"model": model, "losses": losses, "seconds": secs,
                          "by_len": exact_match_by_length(preds, targets, sources, BUCKETS),
                          "overall": 100.0 * sum(p == t for p, t in zip(preds, targets)) / len(targets),
                          "params": sum(p.numel() for p in model.parameters())}
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="more data and steps (50k pairs, 4000 steps, H=128)")
    ap.add_argument("--steps", type=int, help="override the step budget of each model")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = (Seq2SeqConfig(n_train=50_000, n_test=5_000, steps=4000, hidden_size=128, seed=args.seed) if args.full
           else Seq2SeqConfig(seed=args.seed))
    if args.steps:
        cfg.steps = args.steps
    print(f"mode={'full' if args.full else 'small'}  train pairs={cfg.n_train:,}  test pairs={cfg.n_test:,}  "
          f"steps/model={cfg.steps}  batch={cfg.batch_size}  H={cfg.hidden_size}")
    print("examples:", "; ".join(f"{s!r} -> {t}" for s, t in make_pairs(4, seed=123)))
    train_sources = {src for src, _ in make_pairs(cfg.n_train, cfg.seed)}
    raw_test = make_pairs(cfg.n_test, cfg.seed + 10_000)
    leaked = sum(src in train_sources for src, _ in raw_test)
    print(f"undeduplicated draw: {leaked} of {cfg.n_test:,} test sources ({100 * leaked / cfg.n_test:.1f}%) occur "
          "verbatim in training; make_split skips them, so the test set below has none")
    res = run_experiment(cfg)

    print("\n| source length (chars) | test examples | no attention: exact match (%) | Bahdanau attention: exact match (%) |")
    print("|---|---:|---:|---:|")
    for b in BUCKETS:
        (a0, n), (a1, _) = res[False]["by_len"][b], res[True]["by_len"][b]
        print(f"| {b[0]}-{b[1]} | {n} | {a0:.1f} | {a1:.1f} |")
    print(f"| all | {cfg.n_test} | {res[False]['overall']:.1f} | {res[True]['overall']:.1f} |")
    for att in (False, True):
        r = res[att]
        print(f"attention={att}: {r['params']:,} params, final train loss (mean of last 50 steps) "
              f"{sum(r['losses'][-50:]) / 50:.4f}, training time {r['seconds']:.1f} s")
    print(f"training time ratio attention / no attention in this run: {res[True]['seconds'] / res[False]['seconds']:.2f} "
          "(wall clock on a shared CPU: noisy)")
    by = {att: res[att]["by_len"] for att in (False, True)}
    print("gap (attention - no attention) per bucket: "
          + ", ".join(f"{b[0]}-{b[1]}: {by[True][b][0] - by[False][b][0]:+.1f}" for b in BUCKETS))
    gap = res[True]["by_len"][BUCKETS[-1]][0] - res[False]["by_len"][BUCKETS[-1]][0]
    print(f"gap on the longest inputs ({BUCKETS[-1][0]}-{BUCKETS[-1][1]} chars): {gap:+.1f} points")

    # attention heatmap for one long example
    from labkit.plots import plt, savefig

    model = res[True]["model"]
    src_text = "Thursday, the 14th of March 2024"
    src, src_len = pad_batch([SRC_VOCAB.encode(src_text)])
    ids, weights = greedy_decode(model, src, src_len)
    out_text = TGT_VOCAB.decode(ids[0].tolist())
    print(f"heatmap example: {src_text!r} -> {out_text!r}")
    W = weights[0, : len(out_text) + 1].numpy()          # output chars + <eos>
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.imshow(W, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(src_text)), list(src_text))
    ax.set_yticks(range(W.shape[0]), list(out_text) + ["<eos>"])
    ax.set_xlabel("source character")
    ax.set_ylabel("generated character")
    ax.set_title("Bahdanau attention weights a_tj (rows sum to 1)")
    out = savefig(fig, HERE / "figures" / ("attention_heatmap_full.png" if args.full else "attention_heatmap.png"))
    fig, ax = plt.subplots(figsize=(7, 4))
    for att, label in ((False, "no attention"), (True, "Bahdanau attention")):
        ls = torch.tensor(res[att]["losses"])
        smooth = ls.unfold(0, 25, 1).mean(1) if len(ls) >= 25 else ls
        ax.semilogy(range(len(smooth)), smooth.numpy(), label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("train cross-entropy (25-step mean)")
    ax.legend()
    out2 = savefig(fig, HERE / "figures" / ("loss_curves_full.png" if args.full else "loss_curves.png"))
    print(f"wrote {out.relative_to(HERE)} and {out2.relative_to(HERE)}")

    # alignment check: while writing the year (first 4 output chars), most weight sits on the year in the source
    year_pos = src_text.index("2024")
    year_mass = float(W[:4, year_pos:year_pos + 4].sum(1).mean())
    print(f"mean attention mass on the source year while writing the year: {year_mass:.2f}")
    checks = {
        "every test source falls in a length bucket": sum(n for _, n in by[True].values()) == cfg.n_test,
        "attention model is right on the heatmap example": out_text == "2024-03-14",
        "attention model >= 15 points better on the longest inputs": gap >= 15.0,
        "attention looks at the year while writing the year (mass > 0.5)": year_mass > 0.5,
    }
    for name, ok in checks.items():
        print(f"[{'OK' if ok else 'FAIL'}] {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

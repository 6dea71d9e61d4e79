"""Lab 3.1 - a character-level vanilla RNN language model, built from nn.Linear + autograd.

The model estimates P(x_t | x_<t) one character at a time. The recurrence is

    h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)          (Elman, 1990)
    logits_t = W_hy h_t + b_y

and training is truncated backpropagation through time (TBPTT): the text is cut into B
parallel streams, each stream is read in consecutive chunks of ``seq_len`` characters, the
hidden state is *carried* from one chunk to the next but *detached*, so gradients flow through
at most ``seq_len`` steps while the state still sees the whole past. Gradients are clipped
(Pascanu, Mikolov & Bengio, 2013) because a product of many Jacobians can explode.

References: Karpathy, "The Unreasonable Effectiveness of Recurrent Neural Networks" (2015);
Williams & Peng (1990) for truncated BPTT.

Run: ``python solution.py`` (small mode, ~1 min on a CPU) or ``python solution.py --full``.
"""
from __future__ import annotations

import argparse
import math
import numbers
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from labkit import read_text, seed_everything

HERE = Path(__file__).resolve().parent
State = torch.Tensor | tuple[torch.Tensor, ...]


# ----------------------------------------------------------------------------- data
class CharVocab:
    """A character vocabulary: every distinct character of a text gets an integer id.

    Ids are assigned in sorted character order, so the same text always gives the same ids.
    ``stoi`` maps character -> id, ``itos`` id -> character.
    """

    def __init__(self, chars: list[str]) -> None:
        if not chars:
            raise ValueError("CharVocab needs at least one character")
        if len(set(chars)) != len(chars):
            raise ValueError("CharVocab characters must be distinct")
        self.itos: list[str] = list(chars)
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(self.itos)}

    @classmethod
    def from_text(cls, text: str) -> CharVocab:
        """Build the vocabulary of ``text`` (sorted distinct characters). Raises ValueError if empty."""
        if not isinstance(text, str) or not text:
            raise ValueError("from_text needs a non-empty str")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> torch.Tensor:
        """Characters -> ids.

        Returns:
            LongTensor of shape (len(text),).
        Raises:
            ValueError: a character that is not in the vocabulary (named in the message).
        """
        # BEGIN SOLUTION map each character to its id with stoi; name any unknown character in a ValueError (easy, ~10 min)
        unknown = sorted(set(text) - self.stoi.keys())
        if unknown:
            raise ValueError(f"characters not in the vocabulary: {unknown[:10]!r}")
        return torch.tensor([self.stoi[c] for c in text], dtype=torch.long)
        # END SOLUTION

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        """Ids (any 1-D int sequence or tensor) -> the string. Raises ValueError on an id out of range."""
        # BEGIN SOLUTION look each id up in itos and join; reject ids outside [0, vocab_size) (easy, ~5 min)
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        bad = [i for i in ids if not 0 <= int(i) < self.vocab_size]
        if bad:
            raise ValueError(f"ids out of range [0, {self.vocab_size}): {bad[:10]}")
        return "".join(self.itos[int(i)] for i in ids)
        # END SOLUTION


def load_shakespeare(n_chars: int | None = None) -> str:
    """The Tiny Shakespeare text (1,115,394 characters), or its first ``n_chars`` characters."""
    text = read_text("tinyshakespeare", "input.txt")
    if n_chars is not None:
        if n_chars < 2:
            raise ValueError(f"n_chars must be >= 2, got {n_chars}")
        text = text[:n_chars]
    return text


def train_val_split(data: torch.Tensor, val_frac: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a 1-D id tensor into (train, val): the last ``val_frac`` of the text is validation.

    A contiguous split (not a random one) keeps validation text unseen as a whole passage.
    """
    if data.dim() != 1:
        raise ValueError(f"data must be 1-D, got shape {tuple(data.shape)}")
    if not 0.0 < val_frac < 1.0:
        raise ValueError(f"val_frac must be in (0, 1), got {val_frac}")
    n_val = max(2, int(len(data) * val_frac))
    return data[:-n_val], data[-n_val:]


def batchify(data: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cut a 1-D id tensor into ``batch_size`` contiguous streams, one per row.

    Row b is ``data[b*L : (b+1)*L]`` with ``L = len(data) // batch_size`` (the remainder is
    dropped). Reading the columns left to right in chunks is what makes carrying the hidden state
    from chunk to chunk meaningful: row b of chunk k+1 continues exactly where row b of chunk k stopped.

    Returns:
        LongTensor (batch_size, L).
    Raises:
        ValueError: data not 1-D, batch_size < 1, or fewer than 2 characters per stream.
    """
    if data.dim() != 1:
        raise ValueError(f"data must be 1-D, got shape {tuple(data.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(data) // batch_size < 2:
        raise ValueError(f"{len(data)} ids are too few for {batch_size} streams of length >= 2")
    # BEGIN SOLUTION trim to a multiple of batch_size, then view as (batch_size, L) so each row is one contiguous stream (easy, ~10 min)
    L = len(data) // batch_size
    return data[: L * batch_size].view(batch_size, L).contiguous()
    # END SOLUTION


def tbptt_chunks(streams: torch.Tensor, seq_len: int):
    """Yield consecutive (x, y) chunks of a (B, L) stream tensor for truncated BPTT.

    Chunk k is ``x = streams[:, s:s+T]``, ``y = streams[:, s+1:s+T+1]`` with ``s = k*seq_len``;
    the last chunk may be shorter. y is x shifted by one character: the next-character targets.

    Yields:
        (x, y): LongTensors (B, T) with T <= seq_len.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    L = streams.shape[1]
    for s in range(0, L - 1, seq_len):
        T = min(seq_len, L - 1 - s)
        yield streams[:, s:s + T], streams[:, s + 1:s + 1 + T]


# ----------------------------------------------------------------------------- model
class RNNCell(nn.Module):
    """One step of an Elman RNN: ``h' = tanh(x W_ih^T + b_ih + h W_hh^T + b_hh)``.

    Same maths and parameter layout as ``torch.nn.RNNCell(nonlinearity="tanh")``:
    ``x2h`` holds (weight_ih, bias_ih), ``h2h`` holds (weight_hh, bias_hh).

    Args:
        input_size: features of x_t.
        hidden_size: features of h_t.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        if input_size < 1 or hidden_size < 1:
            raise ValueError(f"sizes must be >= 1, got input_size={input_size}, hidden_size={hidden_size}")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.x2h = nn.Linear(input_size, hidden_size)
        self.h2h = nn.Linear(hidden_size, hidden_size)
        # PyTorch's recurrent layers draw every weight from U(-1/sqrt(H), 1/sqrt(H)); do the same.
        bound = 1.0 / math.sqrt(hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The zero hidden state, float32 (batch_size, hidden_size)."""
        return torch.zeros(batch_size, self.hidden_size, device=device)

    @staticmethod
    def output(state: torch.Tensor) -> torch.Tensor:
        """The part of the state the output layer reads (for an RNN: h itself)."""
        return state

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One time step.

        Args:
            x: float (B, input_size), the input at step t.
            h: float (B, hidden_size), h_{t-1}.
        Returns:
            h_t: float (B, hidden_size), values in (-1, 1).
        """
        # BEGIN SOLUTION h_t = tanh(x2h(x) + h2h(h)); both Linear layers carry a bias, like nn.RNNCell (easy, ~5 min)
        return torch.tanh(self.x2h(x) + self.h2h(h))
        # END SOLUTION


def load_torch_weights(cell: nn.Module, ref: nn.Module) -> nn.Module:
    """Copy a ``torch.nn`` RNNCell/LSTMCell/GRUCell's weights into our cell (x2h / h2h layout).

    Works for every cell in this phase because they all keep PyTorch's gate order, so
    ``weight_ih -> x2h.weight``, ``bias_ih -> x2h.bias``, ``weight_hh -> h2h.weight``, ``bias_hh -> h2h.bias``.
    Returns ``cell``. Raises ValueError if the shapes differ.
    """
    pairs = [("weight_ih", cell.x2h.weight), ("bias_ih", cell.x2h.bias),
             ("weight_hh", cell.h2h.weight), ("bias_hh", cell.h2h.bias)]
    with torch.no_grad():
        for name, mine in pairs:
            theirs = getattr(ref, name)
            if theirs.shape != mine.shape:
                raise ValueError(f"{name}: reference shape {tuple(theirs.shape)} != ours {tuple(mine.shape)}")
            mine.copy_(theirs)
    return cell


def detach_state(state: State) -> State:
    """Cut the autograd history of a hidden state (a tensor, or a tuple such as LSTM's (h, c))."""
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def check_token_ids(idx: torch.Tensor, vocab_size: int, name: str = "idx") -> None:
    """Raise ValueError unless every id in ``idx`` lies in [0, vocab_size).

    ``nn.Embedding`` would otherwise fail deep inside torch with "index out of range in self"
    (or, on a GPU, with an asynchronous device-side assert); this names the bad id instead.
    """
    if idx.numel() == 0:
        return
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name} holds token id {bad}, outside [0, {vocab_size}) for vocab_size={vocab_size}")


class CharRNN(nn.Module):
    """Embedding -> recurrent cell unrolled over time -> linear head to vocabulary logits.

    Args:
        vocab_size: number of characters V.
        n_embd: embedding width fed to the cell.
        hidden_size: recurrent state width H.
        cell_cls: any cell with ``(input_size, hidden_size)`` constructor, ``init_state``,
            ``output`` and ``forward(x, state) -> state`` (RNNCell here; LSTMCell/GRUCell in lab 3.2).
    """

    def __init__(self, vocab_size: int, n_embd: int = 32, hidden_size: int = 128,
                 cell_cls: Callable[[int, int], nn.Module] = RNNCell) -> None:
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, n_embd)
        self.cell = cell_cls(n_embd, hidden_size)
        self.head = nn.Linear(hidden_size, vocab_size)
        # Small output weights and zero bias: at step 0 every character is (almost) equally likely,
        # so the first loss is ~ln(V). A large init would start from a confident, wrong model.
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def init_state(self, batch_size: int) -> State:
        """The cell's zero state, on the model's device and in the model's dtype (float64 after ``.double()``)."""
        w = self.head.weight
        state = self.cell.init_state(batch_size, w.device)
        if isinstance(state, tuple):
            return tuple(s.to(w.dtype) for s in state)
        return state.to(w.dtype)

    def forward(self, idx: torch.Tensor, state: State | None = None,
                return_hiddens: bool = False):
        """Run the cell over a batch of sequences.

        Args:
            idx: LongTensor (B, T) of character ids.
            state: the state after the previous chunk (carried for TBPTT), or None for zeros.
            return_hiddens: also return the list of the T per-step outputs h_t (each (B, H));
                lab 3.2 uses them to measure dL/dh_t.
        Returns:
            (logits, state): logits float (B, T, V); state the state after the last step.
            With ``return_hiddens``: (logits, state, hiddens).
        Raises:
            ValueError: idx is not a 2-D integer tensor, or holds an id outside [0, vocab_size).
        """
        if idx.dim() != 2 or idx.dtype not in (torch.long, torch.int32, torch.int64):
            raise ValueError(f"idx must be an integer tensor (B, T), got {idx.dtype} {tuple(idx.shape)}")
        check_token_ids(idx, self.vocab_size)
        B, T = idx.shape
        if state is None:
            state = self.init_state(B)
        # BEGIN SOLUTION embed idx, then loop t = 0..T-1: state = cell(emb[:, t], state); collect cell.output(state) in a list; stack to (B, T, H), apply the head; return (logits, state) or (logits, state, hiddens) (medium, ~20 min)
        emb = self.embed(idx)                      # (B, T, n_embd)
        hiddens = []
        for t in range(T):                         # the recurrence: no parallelism over time
            state = self.cell(emb[:, t], state)
            hiddens.append(self.cell.output(state))
        logits = self.head(torch.stack(hiddens, dim=1))   # (B, T, V)
        if return_hiddens:
            return logits, state, hiddens
        return logits, state
        # END SOLUTION


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-character cross-entropy in nats: -mean log P(targets | past).

    Args:
        logits: float (B, T, V). targets: long (B, T).
    Returns:
        scalar float tensor. Perplexity is ``exp`` of it.
    Raises:
        ValueError: shapes do not line up.
    """
    if logits.dim() != 3 or logits.shape[:2] != targets.shape:
        raise ValueError(f"logits (B, T, V) and targets (B, T) expected, got {tuple(logits.shape)} "
                         f"and {tuple(targets.shape)}")
    # BEGIN SOLUTION flatten to (B*T, V) and (B*T,) and call F.cross_entropy (easy, ~5 min)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
    # END SOLUTION


# ----------------------------------------------------------------------------- training
@dataclass
class TrainConfig:
    """Training hyper-parameters. ``max_steps`` counts optimizer updates (one per chunk)."""

    batch_size: int = 32
    seq_len: int = 64
    lr: float = 3e-3
    max_steps: int = 600
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_chars: int = 20_000   # validation characters scored at each evaluation (None/0: all)
    seed: int = 0


@dataclass
class TrainLog:
    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    seconds: float = 0.0


def train_step(model: CharRNN, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               state: State | None, grad_clip: float) -> tuple[float, float, State]:
    """One truncated-BPTT update on the chunk (x, y), starting from the carried ``state``.

    Returns:
        (loss, grad_norm, state): the chunk's mean loss (nats), the total gradient norm BEFORE
        clipping, and the final state DETACHED from the graph, ready to carry into the next chunk.
    """
    # BEGIN SOLUTION forward from the carried state, lm_loss, zero_grad + backward, clip_grad_norm_(grad_clip) (it returns the pre-clip norm), opt.step(); return the state DETACHED (medium, ~20 min)
    logits, state = model(x, state)
    loss = lm_loss(logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return loss.item(), float(gnorm), detach_state(state)   # keep the values, drop the graph: the "truncation"
    # END SOLUTION


@torch.no_grad()
def evaluate(model: CharRNN, data: torch.Tensor, seq_len: int = 64, batch_size: int = 16) -> float:
    """Mean next-character loss (nats) of ``model`` on a 1-D id tensor.

    Scored like training (B streams, hidden state carried across chunks) so the model gets the
    same context it was trained with; each chunk's loss is weighted by its number of characters.
    """
    was_training = model.training
    model.eval()
    streams = batchify(data, batch_size)
    state = model.init_state(batch_size)
    total, count = 0.0, 0
    # BEGIN SOLUTION loop over tbptt_chunks carrying the state; add loss * number of targets to total and the number of targets to count (easy, ~10 min)
    for x, y in tbptt_chunks(streams, seq_len):
        logits, state = model(x, state)
        total += lm_loss(logits, y).item() * y.numel()
        count += y.numel()
    # END SOLUTION
    model.train(was_training)
    return total / count


def train(model: CharRNN, train_data: torch.Tensor, val_data: torch.Tensor, cfg: TrainConfig,
          progress: bool = True) -> TrainLog:
    """Truncated BPTT with a carried, detached hidden state and gradient-norm clipping.

    Each step takes the next (B, seq_len) chunk of the training streams; after the last chunk
    it wraps around to the start and resets the state to zeros. Adam, ``cfg.lr``.

    Returns:
        A TrainLog with per-step train loss and grad norm (before clipping) and periodic val loss.
    """
    from tqdm.auto import tqdm

    seed_everything(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    streams = batchify(train_data, cfg.batch_size)
    val = val_data[: cfg.eval_chars] if cfg.eval_chars else val_data
    log = TrainLog()
    chunks = iter(())
    state = None
    start = time.perf_counter()
    model.train()
    for step in tqdm(range(1, cfg.max_steps + 1), disable=None if progress else True, desc="train", leave=False):
        try:
            x, y = next(chunks)
        except StopIteration:              # new epoch: restart the streams from a zero state
            chunks = tbptt_chunks(streams, cfg.seq_len)
            x, y = next(chunks)
            state = None
        loss, gnorm, state = train_step(model, opt, x, y, state, cfg.grad_clip)
        log.steps.append(step)
        log.train_loss.append(loss)
        log.grad_norm.append(gnorm)
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            log.eval_steps.append(step)
            log.val_loss.append(evaluate(model, val, cfg.seq_len))
    log.seconds = time.perf_counter() - start
    return log


# ----------------------------------------------------------------------------- sampling
def check_temperature(temperature: float, allow_zero: bool) -> None:
    """Raise TypeError for a non-number and ValueError for NaN, infinity or a value out of range."""
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature must be a number, got {type(temperature).__name__}")
    if not math.isfinite(temperature):
        raise ValueError(f"temperature must be a finite number, got {temperature}")
    if temperature < 0 or (temperature == 0 and not allow_zero):
        want = ">= 0 (0 means argmax)" if allow_zero else "> 0 here; 0 means argmax, see sample_next"
        raise ValueError(f"temperature must be {want}, got {temperature}")


def softmax_with_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Next-character probabilities softmax(logits / temperature) over the last dim.

    temperature < 1 sharpens the distribution, > 1 flattens it, 1 leaves it unchanged.

    Args:
        logits: float (..., V).
        temperature: > 0.
    Returns:
        float (..., V), rows sum to 1.
    Raises:
        ValueError: temperature <= 0 (use ``sample_next(..., temperature=0)`` for greedy), NaN or infinite.
        TypeError: temperature is not a number.
    """
    check_temperature(temperature, allow_zero=False)
    # BEGIN SOLUTION divide the logits by the temperature, then softmax over the last dimension (easy, ~5 min)
    return torch.softmax(logits / temperature, dim=-1)
    # END SOLUTION


def sample_next(logits: torch.Tensor, temperature: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one id per row from softmax(logits / temperature).

    ``temperature == 0`` is the limit T -> 0: the argmax (greedy decoding), no randomness.

    Args:
        logits: float (B, V).
    Returns:
        LongTensor (B,).
    Raises:
        ValueError: negative, NaN or infinite temperature, or logits that are not 2-D.
        TypeError: temperature is not a number.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be (B, V), got {tuple(logits.shape)}")
    check_temperature(temperature, allow_zero=True)
    # BEGIN SOLUTION temperature 0 -> argmax; otherwise torch.multinomial on softmax_with_temperature, using the generator (easy, ~10 min)
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = softmax_with_temperature(logits, temperature)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    # END SOLUTION


@torch.no_grad()
def generate(model: CharRNN, vocab: CharVocab, prompt: str, n_chars: int, temperature: float = 1.0,
             seed: int = 0) -> str:
    """Continue ``prompt`` by ``n_chars`` sampled characters; returns prompt + continuation.

    Two phases, the same as in a transformer with a KV cache: *prefill* runs the cell over the
    prompt to build the state, *decode* feeds each sampled character back in, one step at a time.

    Raises:
        ValueError: empty prompt, negative n_chars, a prompt character outside the vocabulary,
            or a negative, NaN or infinite temperature.
    """
    if not prompt:
        raise ValueError("prompt must be non-empty (the first character seeds the state)")
    if n_chars < 0:
        raise ValueError(f"n_chars must be >= 0, got {n_chars}")
    check_temperature(temperature, allow_zero=True)
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    ids = vocab.encode(prompt).unsqueeze(0)                  # (1, T0)
    out: list[int] = []
    # BEGIN SOLUTION prefill: model(ids) -> logits, state; then n_chars times: sample_next(logits[:, -1], temperature, g), append to out, feed that single id back with the state (medium, ~15 min)
    logits, state = model(ids)
    for _ in range(n_chars):
        nxt = sample_next(logits[:, -1], temperature, generator=g)     # (1,)
        out.append(int(nxt))
        logits, state = model(nxt.view(1, 1), state)
    # END SOLUTION
    model.train(was_training)
    return prompt + vocab.decode(out)


def bigram_loss(train_ids: torch.Tensor, eval_ids: torch.Tensor, vocab_size: int, alpha: float = 0.1) -> float:
    """The floor any neural model must beat: mean next-character loss (nats) of a bigram count table.

    P(b | a) = (count(a, b) + alpha) / (count(a) + alpha * V), fitted on ``train_ids`` and scored on
    every transition of ``eval_ids``. Add-alpha smoothing keeps unseen pairs finite.
    """
    if train_ids.dim() != 1 or eval_ids.dim() != 1 or len(train_ids) < 2 or len(eval_ids) < 2:
        raise ValueError("bigram_loss needs two 1-D id tensors of length >= 2")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a positive finite number, got {alpha}")
    check_token_ids(train_ids, vocab_size, "train_ids")
    check_token_ids(eval_ids, vocab_size, "eval_ids")
    counts = torch.full((vocab_size, vocab_size), float(alpha), dtype=torch.float64)
    counts.index_put_((train_ids[:-1], train_ids[1:]), torch.ones(len(train_ids) - 1, dtype=torch.float64),
                      accumulate=True)
    logp = (counts / counts.sum(1, keepdim=True)).log()
    return float(-logp[eval_ids[:-1], eval_ids[1:]].mean())


def entropy_nats(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy -sum p log p (nats) over the last dim."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1)


# ----------------------------------------------------------------------------- NumPy RNN, hand-written BPTT
# The same Elman RNN language model with no autograd at all, in the spirit of Karpathy's
# min-char-rnn.py (2015): the forward pass stores every hidden state, and the backward pass walks
# the time steps in reverse, carrying dL/dh from step t+1 back into step t. The character id
# selects a column of Wxh, which is what a one-hot input times Wxh would do.
NP_PARAM_NAMES = ("Wxh", "Whh", "bh", "Why", "by")


def np_rnn_init(vocab_size: int, hidden_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Float64 parameters of a one-layer tanh RNN language model.

    Shapes: Wxh (H, V), Whh (H, H), bh (H,), Why (V, H), by (V,). Wxh/Whh/bh are drawn from
    U(-1/sqrt(H), 1/sqrt(H)) like PyTorch's RNN; Why ~ N(0, 0.01^2) and by = 0 so the first
    loss is ~ln V (as in :class:`CharRNN`).
    """
    if vocab_size < 2 or hidden_size < 1:
        raise ValueError(f"need vocab_size >= 2 and hidden_size >= 1, got {vocab_size}, {hidden_size}")
    rng = np.random.default_rng(seed)
    b = 1.0 / math.sqrt(hidden_size)
    return {"Wxh": rng.uniform(-b, b, (hidden_size, vocab_size)),
            "Whh": rng.uniform(-b, b, (hidden_size, hidden_size)),
            "bh": rng.uniform(-b, b, hidden_size),
            "Why": rng.normal(0.0, 0.01, (vocab_size, hidden_size)),
            "by": np.zeros(vocab_size)}


def _np_check_ids(ids: np.ndarray, vocab_size: int, name: str) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{name} must be an integer array (B, T), got {ids.dtype} {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        bad = ids.min() if ids.min() < 0 else ids.max()
        raise ValueError(f"{name} holds token id {int(bad)}, outside [0, {vocab_size})")
    return ids


def np_rnn_forward(params: dict[str, np.ndarray], inputs: np.ndarray,
                   h0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Forward pass over a batch of id sequences, keeping every hidden state for BPTT.

        h_t = tanh(Wxh[:, x_t] + Whh h_{t-1} + bh),   logits_t = Why h_t + by

    Args:
        params: from :func:`np_rnn_init`.
        inputs: int array (B, T) of ids in [0, V).
        h0: float64 (B, H), the state before the first step (carried between chunks).
    Returns:
        (logits, hs): logits float64 (B, T, V); hs float64 (B, T+1, H) with ``hs[:, 0] = h0``
        and ``hs[:, t+1]`` the state after reading ``inputs[:, t]``.
    Raises:
        ValueError: ids out of range, or shapes that do not match the parameters.
    """
    V, H = params["Why"].shape
    inputs = _np_check_ids(inputs, V, "inputs")
    if h0.shape != (inputs.shape[0], H):
        raise ValueError(f"h0 must be (B, H) = {(inputs.shape[0], H)}, got {h0.shape}")
    # BEGIN SOLUTION hs = empty (B, T+1, H) with hs[:, 0] = h0; for each t: hs[:, t+1] = tanh(Wxh[:, x_t].T + hs[:, t] @ Whh.T + bh); logits = hs[:, 1:] @ Why.T + by (easy, ~10 min)
    B, T = inputs.shape
    hs = np.empty((B, T + 1, H))
    hs[:, 0] = h0
    for t in range(T):
        hs[:, t + 1] = np.tanh(params["Wxh"][:, inputs[:, t]].T + hs[:, t] @ params["Whh"].T + params["bh"])
    logits = hs[:, 1:] @ params["Why"].T + params["by"]
    return logits, hs
    # END SOLUTION


def np_softmax_cross_entropy(logits: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy (nats) over all B*T positions and the softmax probabilities.

    Args:
        logits: float64 (B, T, V). targets: int (B, T).
    Returns:
        (loss, probs) with probs float64 (B, T, V). Uses the max-shifted log-sum-exp, so large
        logits do not overflow.
    """
    shifted = logits - logits.max(axis=-1, keepdims=True)
    logZ = np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    logp = shifted - logZ
    loss = -np.take_along_axis(logp, targets[..., None], axis=-1).mean()
    return float(loss), np.exp(logp)


def np_rnn_backward(params: dict[str, np.ndarray], inputs: np.ndarray, targets: np.ndarray,
                    probs: np.ndarray, hs: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Backpropagation through time by hand for the mean cross-entropy of :func:`np_rnn_forward`.

    With N = B*T, d_t = dL/dlogits_t = (probs_t - onehot(targets_t)) / N, and for t = T-1 .. 0:

        dh_t   = Why^T d_t + dh_next                (from the output at t and from step t+1)
        da_t   = dh_t * (1 - h_t^2)                 (through tanh)
        dWhh  += da_t^T h_{t-1};  dbh += sum_b da_t;  dWxh[:, x_t] += da_t
        dh_next = Whh^T da_t                        (what step t-1 receives)

    Args:
        inputs, targets: int (B, T). probs: float64 (B, T, V) from :func:`np_softmax_cross_entropy`.
        hs: float64 (B, T+1, H) from :func:`np_rnn_forward`.
    Returns:
        (grads, dh0): grads has the keys of ``params`` and their shapes; dh0 float64 (B, H) is
        dL/dh0, the gradient that truncated BPTT throws away at the chunk boundary.
    """
    # BEGIN SOLUTION dlogits = (probs - onehot(targets)) / (B*T); dWhy, dby from dlogits and hs[:, 1:]; then walk t backwards with dh = dlogits[:, t] @ Why + dh_next, da = dh * (1 - h_t**2), accumulate dWhh, dbh, dWxh (np.add.at for repeated ids), dh_next = da @ Whh (hard, ~40 min)
    B, T = inputs.shape
    dlogits = probs.copy()
    np.put_along_axis(dlogits, targets[..., None], np.take_along_axis(dlogits, targets[..., None], axis=-1) - 1.0,
                      axis=-1)
    dlogits /= B * T
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    V, H = params["Why"].shape
    grads["Why"] = dlogits.reshape(-1, V).T @ hs[:, 1:].reshape(-1, H)
    grads["by"] = dlogits.sum(axis=(0, 1))
    dWxh_t = np.zeros_like(params["Wxh"].T)         # (V, H): row v collects dL/dWxh[:, v]
    dh_next = np.zeros_like(hs[:, 0])
    for t in reversed(range(T)):
        dh = dlogits[:, t] @ params["Why"] + dh_next      # (B, H)
        da = dh * (1.0 - hs[:, t + 1] ** 2)               # tanh' = 1 - tanh^2
        grads["Whh"] += da.T @ hs[:, t]
        grads["bh"] += da.sum(axis=0)
        np.add.at(dWxh_t, inputs[:, t], da)              # the same id may appear twice in a column
        dh_next = da @ params["Whh"]
    grads["Wxh"] = dWxh_t.T
    return grads, dh_next
    # END SOLUTION


def np_rnn_loss_and_grads(params: dict[str, np.ndarray], inputs: np.ndarray, targets: np.ndarray,
                          h0: np.ndarray) -> tuple[float, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Forward, loss and hand-written BPTT on one chunk.

    Returns:
        (loss, grads, dh0, h_last): mean loss (nats), gradients of every parameter,
        dL/dh0 (B, H), and the last hidden state (B, H) to carry into the next chunk.
    """
    V = params["Why"].shape[0]
    targets = _np_check_ids(targets, V, "targets")
    if targets.shape != np.shape(inputs):
        raise ValueError(f"inputs {np.shape(inputs)} and targets {targets.shape} must have the same shape")
    logits, hs = np_rnn_forward(params, inputs, h0)
    loss, probs = np_softmax_cross_entropy(logits, targets)
    grads, dh0 = np_rnn_backward(params, np.asarray(inputs), targets, probs, hs)
    return loss, grads, dh0, hs[:, -1].copy()


def np_clip_grad_norm(grads: dict[str, np.ndarray], max_norm: float) -> float:
    """Scale every gradient in place so their global L2 norm is at most ``max_norm``.

    The same rule as ``torch.nn.utils.clip_grad_norm_``: coefficient max_norm / (norm + 1e-6),
    applied when it is below 1. Returns the norm BEFORE clipping.

    Raises:
        ValueError: max_norm not a positive finite number.
    """
    if not (isinstance(max_norm, numbers.Real) and math.isfinite(max_norm) and max_norm > 0):
        raise ValueError(f"max_norm must be a positive finite number, got {max_norm}")
    # BEGIN SOLUTION total = sqrt(sum of every squared entry of every gradient); coef = max_norm / (total + 1e-6); if coef < 1 multiply each array in place (g *= coef); return total (easy, ~5 min)
    total = math.sqrt(sum(float((g ** 2).sum()) for g in grads.values()))
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for g in grads.values():
            g *= coef
    return total
    # END SOLUTION


def np_autograd_grads(params: dict[str, np.ndarray], inputs: np.ndarray, targets: np.ndarray,
                      h0: np.ndarray) -> tuple[float, dict[str, np.ndarray], np.ndarray]:
    """The reference: the same loss and gradients from ``torch.nn.RNN`` + autograd, in float64.

    Returns:
        (loss, grads, dh0) in the layout of :func:`np_rnn_loss_and_grads`.
    """
    V, H = params["Why"].shape
    t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    rnn = nn.RNN(V, H, nonlinearity="tanh", batch_first=True).double()
    h = torch.tensor(h0, dtype=torch.float64, requires_grad=True)
    x = F.one_hot(torch.as_tensor(np.asarray(inputs), dtype=torch.long), V).double()
    from torch.func import functional_call

    out, _ = functional_call(rnn, {"weight_ih_l0": t["Wxh"], "weight_hh_l0": t["Whh"], "bias_ih_l0": t["bh"],
                                   "bias_hh_l0": torch.zeros(H, dtype=torch.float64)}, (x, h[None]))
    logits = out @ t["Why"].T + t["by"]
    loss = F.cross_entropy(logits.reshape(-1, V), torch.as_tensor(np.asarray(targets)).reshape(-1))
    loss.backward()
    return loss.item(), {k: v.grad.numpy() for k, v in t.items()}, h.grad.numpy()


@dataclass
class NumpyTrainLog:
    train_loss: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    seconds: float = 0.0


def np_train(params: dict[str, np.ndarray], train_ids: np.ndarray, steps: int, batch_size: int = 16,
             seq_len: int = 25, lr: float = 0.05, grad_clip: float = 1.0) -> NumpyTrainLog:
    """Truncated BPTT with Adagrad (as in min-char-rnn), a carried state and gradient clipping.

    Updates ``params`` in place. The streams and chunks are lab 3.1's :func:`batchify` /
    :func:`tbptt_chunks`; after the last chunk the streams restart from a zero state.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    streams = batchify(torch.as_tensor(np.asarray(train_ids)), batch_size).numpy()
    H = params["Whh"].shape[0]
    memory = {k: np.zeros_like(v) for k, v in params.items()}     # Adagrad's running sum of squares
    log, chunks, h = NumpyTrainLog(), iter(()), None
    start = time.perf_counter()
    for _ in range(steps):
        try:
            x, y = next(chunks)
        except StopIteration:
            chunks = tbptt_chunks(torch.as_tensor(streams), seq_len)
            x, y = next(chunks)
            h = np.zeros((batch_size, H))
        loss, grads, _, h = np_rnn_loss_and_grads(params, x.numpy(), y.numpy(), h)
        log.grad_norm.append(np_clip_grad_norm(grads, grad_clip))
        for k in params:
            memory[k] += grads[k] ** 2
            params[k] -= lr * grads[k] / np.sqrt(memory[k] + 1e-8)
        log.train_loss.append(loss)
    log.seconds = time.perf_counter() - start
    return log


def np_evaluate(params: dict[str, np.ndarray], data: np.ndarray, seq_len: int = 64, batch_size: int = 16) -> float:
    """Mean next-character loss (nats) with the state carried across chunks, like :func:`evaluate`."""
    streams = batchify(torch.as_tensor(np.asarray(data)), batch_size)
    h = np.zeros((batch_size, params["Whh"].shape[0]))
    total = count = 0.0
    for x, y in tbptt_chunks(streams, seq_len):
        logits, hs = np_rnn_forward(params, x.numpy(), h)
        loss, _ = np_softmax_cross_entropy(logits, y.numpy())
        total, count, h = total + loss * y.numel(), count + y.numel(), hs[:, -1]
    return total / count


# ----------------------------------------------------------------------------- self-test
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="spec scale: whole text, hidden 256, 3000 steps")
    ap.add_argument("--steps", type=int, help="override the number of training steps")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    seed_everything(args.seed)

    text = load_shakespeare()
    vocab = CharVocab.from_text(text)
    data = vocab.encode(text)
    train_data, val_data = train_val_split(data, 0.1)
    if args.full:
        hidden, cfg = 256, TrainConfig(batch_size=64, seq_len=128, max_steps=3000, eval_every=250,
                                        eval_chars=0, seed=args.seed)
    else:
        hidden, cfg = 128, TrainConfig(batch_size=32, seq_len=64, max_steps=1200, eval_every=200,
                                        eval_chars=20_000, seed=args.seed)
        train_data = train_data[:500_000]  # a real slice: the first 500k characters
    if args.steps:
        cfg.max_steps = args.steps
    model = CharRNN(vocab.vocab_size, n_embd=32, hidden_size=hidden)
    n_params = sum(p.numel() for p in model.parameters())
    init_loss = evaluate(model, val_data[: cfg.eval_chars or None], cfg.seq_len)
    print(f"mode={'full' if args.full else 'small'}  vocab={vocab.vocab_size}  params={n_params:,}  "
          f"train_chars={len(train_data):,}  hidden={hidden}  steps={cfg.max_steps}")
    print(f"initial val loss {init_loss:.4f} nats (ln V = {math.log(vocab.vocab_size):.4f})")

    log = train(model, train_data, val_data, cfg)
    final = evaluate(model, val_data, cfg.seq_len)  # the whole validation split
    print("\n| step | train loss (mean of last 50) | val loss | val perplexity |")
    print("|---:|---:|---:|---:|")
    for s, v in zip(log.eval_steps, log.val_loss):
        tr = sum(log.train_loss[max(0, s - 50):s]) / len(log.train_loss[max(0, s - 50):s])
        print(f"| {s} | {tr:.3f} | {v:.3f} | {math.exp(v):.2f} |")
    print(f"\nfinal validation loss on all {len(val_data):,} val chars: {final:.4f} nats = "
          f"{final / math.log(2):.3f} bits/char, perplexity {math.exp(final):.2f}")
    bigram = bigram_loss(train_data, val_data, vocab.vocab_size)
    print(f"bigram count table (add-0.1), same split: {bigram:.4f} nats, perplexity {math.exp(bigram):.2f}")
    print(f"training time {log.seconds:.1f} s ({1000 * log.seconds / cfg.max_steps:.1f} ms/step incl. evals; "
          "wall clock on a shared CPU, noisy)")

    # temperature: entropy of the next-char distribution after a fixed prompt
    with torch.no_grad():
        model.eval()
        logits, _ = model(vocab.encode("ROMEO:\nWhat say").unsqueeze(0))
    print("\n| temperature | entropy of next-char distribution (nats) |")
    print("|---:|---:|")
    ents = []
    for T in (0.5, 0.8, 1.0, 1.2):
        e = float(entropy_nats(softmax_with_temperature(logits[0, -1], T)))
        ents.append(e)
        print(f"| {T} | {e:.3f} |")
    for T in (0.5, 0.8, 1.2):
        print(f"\n--- sample, temperature {T} ---")
        print(generate(model, vocab, "ROMEO:\n", 200, temperature=T, seed=args.seed))

    from labkit.plots import plt, savefig

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(log.steps, log.train_loss, lw=0.8, alpha=0.6, label="train (per chunk)")
    ax.plot([0] + log.eval_steps, [init_loss] + log.val_loss, "o-", label="validation")
    ax.axhline(math.log(vocab.vocab_size), ls="--", c="grey", label="ln V (uniform guess)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/char)")
    ax.set_title(f"char-RNN on Tiny Shakespeare ({'full' if args.full else 'small'} mode)")
    ax.legend()
    out = savefig(fig, HERE / "figures" / ("loss_curve_full.png" if args.full else "loss_curve.png"))
    print(f"\nwrote {out.relative_to(HERE)}")

    # the same model in NumPy with hand-written BPTT: first the gradient check, then a short training run
    np_hidden, np_steps = 64, (3000 if args.full else 800)
    params = np_rnn_init(vocab.vocab_size, np_hidden, seed=args.seed)
    ids = batchify(train_data[:20_000], 8)[:, :33].numpy()
    h0 = np.tanh(np.random.default_rng(args.seed).normal(size=(8, np_hidden)))
    _, grads, dh0, _ = np_rnn_loss_and_grads(params, ids[:, :-1], ids[:, 1:], h0)
    _, ref_grads, ref_dh0 = np_autograd_grads(params, ids[:, :-1], ids[:, 1:], h0)
    grad_err = max([float(np.abs(grads[k] - ref_grads[k]).max()) for k in NP_PARAM_NAMES]
                   + [float(np.abs(dh0 - ref_dh0).max())])
    print(f"\nNumPy RNN, hand-written BPTT (H={np_hidden}, 8 streams x 32 chars, float64): "
          f"max |grad - autograd| = {grad_err:.1e}")
    np_log = np_train(params, train_data.numpy(), np_steps)
    np_val = np_evaluate(params, val_data.numpy(), cfg.seq_len)
    np_train_tail = sum(np_log.train_loss[-50:]) / len(np_log.train_loss[-50:])
    print(f"NumPy RNN, Adagrad lr 0.05, clip 1.0, 16 streams x 25 chars, {np_steps} steps: train loss (last 50) "
          f"{np_train_tail:.3f}, val loss (all {len(val_data):,} val chars) {np_val:.4f} nats; "
          f"{1000 * np_log.seconds / np_steps:.1f} ms/step (noisy)")

    checks = {
        "initial loss within 0.1 of ln V": abs(init_loss - math.log(vocab.vocab_size)) < 0.1,
        f"final val loss {final:.3f} beats the bigram table's {bigram:.3f} by > 0.3 nats": final < bigram - 0.3,
        "entropy rises with temperature": all(a < b for a, b in zip(ents, ents[1:])),
        "NumPy BPTT equals autograd (max error < 1e-10)": grad_err < 1e-10,
        f"NumPy RNN val loss {np_val:.3f} beats the bigram table": np_val < bigram,
    }
    for name, ok in checks.items():
        print(f"[{'OK' if ok else 'FAIL'}] {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Grader for lab 5.2 (nanoGPT: prepare -> train -> sample).

References: tiktoken ``gpt2`` (ids of the prepared data), torch's ``SequentialLR(LinearLR,
CosineAnnealingLR)`` (the schedule), one big batch (gradient accumulation), ``clip_grad_norm_``
on a copy (the step), a hand count (unigram entropy), and for the curriculum model Hugging Face
``LlamaForCausalLM`` / ``PreTrainedTokenizerFast`` loaded from its ``save_pretrained`` export.
"""
from __future__ import annotations

import copy
import json
import math
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from labkit import load_lab, seed_everything

HERE = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def gpt2_tok(lab):
    return lab.TextTokenizer.from_tiktoken("gpt2")


@pytest.fixture(scope="module")
def char_data(lab):
    """TinyStories at character level: a small real corpus that trains in seconds."""
    train_docs = lab.load_documents("train_prefix_944k.txt")[:300]
    val_docs = lab.load_documents("valid_prefix_794k.txt")[:60]
    text = "\n".join(train_docs + val_docs)
    tok = CharWithEot(lab, text)
    return tok, lab.encode_documents(train_docs, tok), lab.encode_documents(val_docs, tok)


def CharWithEot(lab, text: str):
    """A character tokenizer with one extra id for <|endoftext|>."""
    ch = lab.CharTokenizer(text)
    return lab.TextTokenizer(ch.encode, lambda ids: "".join(ch.itos[i] if i < len(ch.itos) else lab.EOT for i in ids),
                             ch.vocab_size + 1, ch.vocab_size, "char+eot")


def tiny_model(lab, vocab_size: int, seed: int = 0, **kw):
    seed_everything(seed)
    base = dict(n_layer=2, n_head=4, n_kv_head=2, d_model=32, block_size=32)
    return lab.build_model(vocab_size, **{**base, **kw})


# --------------------------------------------------------------------------- prepare
def test_encode_documents_matches_tiktoken_with_separators(lab, gpt2_tok):
    docs = ["Once upon a time, there was a cat.", "The dog said \"hi!\"\nThe end.", "Tom 123  ok"]
    ids = lab.encode_documents(docs, gpt2_tok)
    enc = gpt2_tok.inner
    expected = []
    for d in docs:
        expected += [enc.eot_token] + enc.encode_ordinary(d)
    assert isinstance(ids, np.ndarray) and ids.dtype == np.uint16, \
        f"encode_documents must return a np.uint16 array (2 bytes per token), got {type(ids).__name__} {getattr(ids, 'dtype', '')}"
    assert ids.tolist() == expected, \
        "ids differ from tiktoken gpt2: each document must be [eot_id] + tokenizer.encode(doc), concatenated in order"
    assert gpt2_tok.decode(ids.tolist()) == "".join(lab.EOT + d for d in docs)


def test_encode_documents_rejects_bad_input(lab, gpt2_tok):
    with pytest.raises(ValueError, match="empty"):
        lab.encode_documents(["fine", ""], gpt2_tok)
    with pytest.raises(ValueError):
        lab.encode_documents([], gpt2_tok)
    no_eot = lab.CharTokenizer("abc")
    with pytest.raises(ValueError, match="endoftext"):
        lab.encode_documents(["abc"], no_eot)


def test_prepare_writes_uint16_bins_that_decode_back(lab, gpt2_tok, tmp_path):
    train_docs = lab.load_documents("train_prefix_944k.txt")[:20]
    val_docs = lab.load_documents("valid_prefix_794k.txt")[:5]
    meta = lab.prepare(train_docs, val_docs, gpt2_tok, tmp_path)
    for split, docs in (("train", train_docs), ("val", val_docs)):
        data = lab.load_bin(tmp_path / f"{split}.bin")
        assert data.dtype == np.uint16 and (tmp_path / f"{split}.bin").stat().st_size == 2 * len(data)
        assert len(data) == meta[f"{split}_tokens"]
        assert int((np.asarray(data) == gpt2_tok.eot_id).sum()) == len(docs), \
            "one <|endoftext|> per document expected in the .bin"
        assert gpt2_tok.decode(np.asarray(data).tolist()) == "".join(lab.EOT + d for d in docs)
    assert json.loads((tmp_path / "meta.json").read_text(encoding="utf-8"))["vocab_size"] == 50257


@pytest.mark.given
def test_tinystories_documents_are_split_per_file(lab):
    for file, low, high in (("train_prefix_944k.txt", 1000, 1200), ("tinystories_10k.txt", 1600, 1800),
                            ("valid_prefix_794k.txt", 700, 900)):
        docs = lab.load_documents(file)
        assert low <= len(docs) <= high, (file, len(docs))
        assert all(lab.EOT not in d and d == d.strip() and "\n\n" not in d for d in docs)
    with pytest.raises(ValueError, match="rule"):
        lab.split_documents("a", "paragraphs")


# --------------------------------------------------------------------------- get_batch
@pytest.fixture
def arange_bin(tmp_path):
    path = tmp_path / "toy.bin"
    np.arange(1000, dtype=np.uint16).tofile(path)
    return path


def test_get_batch_targets_are_inputs_shifted_by_one(lab, arange_bin):
    data = lab.load_bin(arange_bin)
    x, y = lab.get_batch(data, 8, 16, generator=torch.Generator().manual_seed(0))
    assert x.shape == (8, 16) and y.shape == (8, 16), f"expected (batch, block) = (8, 16), got {tuple(x.shape)}"
    assert x.dtype == torch.int64 and y.dtype == torch.int64, "nn.Embedding and cross_entropy want int64 ids"
    assert torch.equal(y, x + 1), "y must be x shifted by ONE token: y[:, t] is the token after x[:, t]"
    assert torch.equal(x[:, 1:], x[:, :-1] + 1), "each row must be a contiguous window of the data"
    assert len(set(x[:, 0].tolist())) > 1, "rows should start at different random offsets"


def test_get_batch_reaches_every_window_and_is_seeded(lab, arange_bin):
    data = lab.load_bin(arange_bin)[:20]
    T = 16
    starts = set()
    for s in range(60):
        x, y = lab.get_batch(data, 4, T, generator=torch.Generator().manual_seed(s))
        assert int(y.max()) <= 19, "a window ran past the end of the data"
        starts |= set(x[:, 0].tolist())
    assert starts == set(range(20 - T)), \
        f"offsets must cover [0, len(data) - block_size) = {set(range(20 - T))}, got {starts}: off by one?"
    a = lab.get_batch(data, 4, T, generator=torch.Generator().manual_seed(7))
    b = lab.get_batch(data, 4, T, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]), "draw the offsets with the given torch.Generator (same seed -> same batch)"


@pytest.mark.given
def test_get_batch_rejects_short_data(lab):
    with pytest.raises(ValueError, match="block_size"):
        lab.get_batch(np.arange(8, dtype=np.uint16), 2, 8)


# --------------------------------------------------------------------------- schedule
def test_get_lr_matches_torch_warmup_plus_cosine(lab):
    W, N, hi, lo = 10, 100, 1e-3, 1e-4
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=hi)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = torch.optim.lr_scheduler.SequentialLR(opt, [
            torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / W, end_factor=1.0, total_iters=W - 1),
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=N - W, eta_min=lo)], milestones=[W])
        for step in range(N + 1):
            ours = lab.get_lr(step, max_lr=hi, min_lr=lo, warmup_steps=W, max_steps=N)
            assert ours == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9), \
                f"step {step}: {ours} vs torch {opt.param_groups[0]['lr']}"
            opt.step()
            sched.step()


def test_get_lr_landmarks(lab):
    kw = dict(max_lr=6e-4, min_lr=6e-5, warmup_steps=100, max_steps=1100)
    assert lab.get_lr(0, **kw) == pytest.approx(6e-6), "warmup starts at max_lr * 1 / warmup_steps (not 0)"
    assert lab.get_lr(99, **kw) == pytest.approx(6e-4) and lab.get_lr(100, **kw) == pytest.approx(6e-4)
    assert lab.get_lr(600, **kw) == pytest.approx((6e-4 + 6e-5) / 2), "halfway through the cosine is the midpoint"
    assert lab.get_lr(1100, **kw) == pytest.approx(6e-5) and lab.get_lr(5000, **kw) == pytest.approx(6e-5), \
        "the schedule must end at min_lr and stay there"
    decay = [lab.get_lr(s, **kw) for s in range(100, 1101)]
    assert all(a >= b for a, b in zip(decay, decay[1:])), "the cosine part must never increase"
    assert lab.get_lr(5, max_lr=1e-3, min_lr=1e-4, warmup_steps=0, max_steps=10) < 1e-3


@pytest.mark.given
@pytest.mark.parametrize("kw", [dict(step=-1), dict(min_lr=1.0), dict(warmup_steps=-1), dict(max_steps=5)])
def test_get_lr_rejects_bad_arguments(lab, kw):
    base = dict(step=0, max_lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=100)
    with pytest.raises(ValueError):
        lab.get_lr(**{**base, **kw})


# --------------------------------------------------------------------------- baseline
def test_unigram_entropy_by_hand(lab):
    toks = np.array([0, 1, 1, 2, 2, 2, 2, 5], dtype=np.uint16)
    n = len(toks)
    expected = -sum(c / n * math.log(c / n) for c in Counter(toks.tolist()).values())
    assert lab.unigram_entropy(toks, 8) == pytest.approx(expected, rel=1e-12), \
        "entropy in NATS (natural log) of the token frequencies: -sum p log p"
    assert lab.unigram_entropy(np.arange(16) % 4, 16) == pytest.approx(math.log(4))
    assert lab.unigram_entropy([3, 3, 3], 4) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        lab.unigram_entropy([], 4)
    with pytest.raises(ValueError):
        lab.unigram_entropy([1, 9], 4)


# --------------------------------------------------------------------------- accumulation and the step
def _float64_model(lab, V=53):
    model = tiny_model(lab, V).double()
    model.train()
    return model


def test_accumulation_gives_the_big_batch_gradient(lab):
    V = 53
    model = _float64_model(lab, V)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, V, (8, 32), generator=g)
    y = torch.randint(0, V, (8, 32), generator=g)
    ref = copy.deepcopy(model)
    _, loss = ref(x, y)
    loss.backward()
    micro = [(x[i: i + 2], y[i: i + 2]) for i in range(0, 8, 2)]
    mean_loss = lab.accumulate_gradients(model, micro)
    # (MiniGPT returns float32 logits, so agreement is to float32 precision, not float64)
    assert mean_loss == pytest.approx(loss.item(), rel=1e-6), "return the MEAN of the micro-batch losses"
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert p.grad is not None, f"{name} got no gradient: did you call backward()?"
        ratio = (p.grad.norm() / q.grad.norm()).item()
        assert torch.allclose(p.grad, q.grad, atol=1e-8, rtol=1e-5), \
            f"{name}: accumulated grad is {ratio:.3f} x the big-batch grad; divide each loss by len(micro_batches)"


def test_optimizer_step_sets_lr_zeroes_clips_and_steps(lab):
    V = 53
    model = _float64_model(lab, V)
    opt = lab.make_optimizer(model, weight_decay=0.0, learning_rate=1.0)
    g = torch.Generator().manual_seed(2)
    batch = [(torch.randint(0, V, (4, 32), generator=g), torch.randint(0, V, (4, 32), generator=g))]
    for p in model.parameters():   # stale gradients that must not leak into the step
        p.grad = torch.full_like(p, 100.0)
    ref = copy.deepcopy(model)
    _, loss = ref(*batch[0])
    for p in ref.parameters():
        p.grad = None
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 1e9).item()
    before = [p.detach().clone() for p in model.parameters()]
    got_loss, got_norm = lab.optimizer_step(model, opt, batch, lr=3e-3, grad_clip=0.05)
    assert all(gr["lr"] == 3e-3 for gr in opt.param_groups), "set lr in EVERY optimizer.param_groups entry"
    assert got_loss == pytest.approx(loss.item(), rel=1e-6)
    assert got_norm == pytest.approx(norm, rel=1e-6), \
        f"return the gradient norm BEFORE clipping (what clip_grad_norm_ returns): {got_norm} vs {norm}; " \
        "were the old gradients zeroed first?"
    total = math.sqrt(sum(float(p.grad.norm()) ** 2 for p in model.parameters()))
    assert total == pytest.approx(0.05, rel=1e-4), f"gradients must be clipped to grad_clip=0.05, norm is {total}"
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters())), "call optimizer.step()"


@pytest.mark.given
def test_configure_optimizers_decays_only_matrices(lab):
    model = tiny_model(lab, 53)
    opt = lab.make_optimizer(model, weight_decay=0.1, learning_rate=1e-3)
    decayed = {id(p) for gr in opt.param_groups if gr["weight_decay"] > 0 for p in gr["params"]}
    for name, p in model.named_parameters():
        should = p.dim() == 2 and "emb" not in name
        assert (id(p) in decayed) == should, f"{name}: weight decay only on 2-D weight matrices"
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)


# --------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def trained(lab, char_data, tmp_path_factory):
    tok, train_ids, val_ids = char_data
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run")
    model = tiny_model(lab, tok.vocab_size, n_layer=2, d_model=64, block_size=64)
    cfg = lab.TrainConfig(batch_size=16, max_steps=150, max_lr=3e-3, min_lr=3e-4, warmup_steps=10,
                          eval_interval=50, eval_batches=4, dtype="float32", device="cpu", progress=False)
    hist = lab.train(model, train_ids, val_ids, cfg, out_dir=out)
    return model, hist, out, tok


def test_training_lowers_val_loss_below_bar(trained):
    model, hist, out, tok = trained
    first, last = hist["val"][0][1], hist["val"][-1][1]
    assert abs(first - math.log(tok.vocab_size)) < 0.3, f"initial val loss {first:.2f} should be ~ln(V)"
    assert last < 2.6, f"after 150 steps the char-level val loss should be < 2.6 nats, got {last:.3f} " \
        f"(curve {[round(v, 2) for _, v in hist['val']]}): is the lr set each step, are gradients zeroed?"
    assert [s for s, _ in hist["val"]] == [0, 50, 100, 150]
    assert hist["lr"][0][1] == pytest.approx(3e-4) and hist["lr"][-1][1] < 4e-4


def test_training_writes_best_checkpoint_and_log(lab, trained):
    model, hist, out, tok = trained
    lines = [json.loads(s) for s in (out / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert any("val_loss" in r for r in lines) and any("train_loss" in r for r in lines)
    loaded, ckpt = lab.load_checkpoint(out / "ckpt.pt")
    assert ckpt["val_loss"] == pytest.approx(hist["best_val"]) and ckpt["step"] == hist["best_step"]
    x = torch.randint(0, tok.vocab_size, (2, 16))
    if hist["best_step"] == 150:
        assert torch.allclose(loaded(x)[0], model(x)[0], atol=1e-6)


def test_training_is_deterministic(lab, char_data):
    tok, train_ids, val_ids = char_data
    runs = []
    for _ in range(2):
        model = tiny_model(lab, tok.vocab_size, seed=3)
        cfg = lab.TrainConfig(batch_size=4, max_steps=8, warmup_steps=2, eval_interval=4, eval_batches=2,
                              grad_accum_steps=2, dtype="float32", device="cpu", seed=3, progress=False)
        runs.append(lab.train(model, train_ids, val_ids, cfg))
    assert runs[0]["train"] == runs[1]["train"] and runs[0]["val"] == runs[1]["val"], \
        "same seed must give the same losses: draw batches only from the seeded generator"


def test_generate_text_is_seeded_and_stops(lab, trained):
    model, hist, out, tok = trained
    a = lab.generate_text(model, tok, "Once", max_new_tokens=40, temperature=0.8, top_p=0.9, seed=1)
    b = lab.generate_text(model, tok, "Once", max_new_tokens=40, temperature=0.8, top_p=0.9, seed=1)
    assert a == b and a.startswith("Once") and lab.EOT not in a


@pytest.mark.given
def test_train_config_validation(lab):
    with pytest.raises(ValueError):
        lab.TrainConfig(batch_size=0)
    with pytest.raises(ValueError):
        lab.TrainConfig(dtype="float16")
    with pytest.raises(ValueError):
        lab.TrainConfig(max_steps=10, warmup_steps=20)


def test_bf16_autocast_runs_on_cpu(lab):
    model = tiny_model(lab, 53)
    x = torch.randint(0, 53, (2, 16))
    loss32 = lab.accumulate_gradients(model, [(x, x)])
    model.zero_grad()
    loss16 = lab.accumulate_gradients(model, [(x, x)], autocast_dtype=torch.bfloat16)
    assert abs(loss16 - loss32) < 0.05, "bf16 autocast should change the loss only in the 2nd-3rd digit"


# --------------------------------------------------------------------------- the curriculum model
@pytest.fixture(scope="module")
def curriculum():
    from labkit import curriculum_model_path

    return curriculum_model_path("main")


@pytest.fixture(scope="module")
def loaded(curriculum):
    nano = load_lab(HERE / "solution.py")
    bpe = load_lab(nano.BPE_LAB)
    model, ckpt = nano.load_checkpoint(curriculum / "minigpt.pt")
    return nano, model, bpe.BPETokenizer.load(curriculum / "tokenizer")


@pytest.mark.given
def test_curriculum_hf_logits_equal_minigpt(curriculum, loaded):
    from transformers import AutoModelForCausalLM

    nano, model, tok = loaded
    hf = AutoModelForCausalLM.from_pretrained(curriculum / "hf").eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    ids = torch.tensor([tok.encode("<|endoftext|>Once upon a time, a cat sat on a mat.", allowed_special="all")])
    with torch.no_grad():
        diff = (hf(ids).logits - model(ids)[0]).abs().max().item()
    assert diff < 1e-4, f"HF export logits differ from MiniGPT's by {diff:.2e}"


@pytest.mark.given
def test_curriculum_hf_tokenizer_ids_equal_ours(curriculum, loaded):
    from transformers import AutoTokenizer

    nano, model, tok = loaded
    hf_tok = AutoTokenizer.from_pretrained(curriculum / "hf")
    texts = nano.load_documents("valid_prefix_794k.txt")[-30:] + ["Über café 🙂  spaces\tand\r\nnew lines 12345"]
    for t in texts:
        assert hf_tok(t, add_special_tokens=False)["input_ids"] == tok.encode(t)
    assert (hf_tok.eos_token, hf_tok.bos_token, hf_tok.pad_token) == ("<|endoftext|>", "<|endoftext|>", "<|pad|>")
    assert [hf_tok.convert_tokens_to_ids(s) for s in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>")] \
        == [0, 1, 2, 3]


@pytest.mark.given
def test_curriculum_chat_template_renders(curriculum):
    from transformers import AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(curriculum / "hf")
    msgs = [{"role": "user", "content": "Tell me a story."}]
    text = hf_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nTell me a story.<|im_end|>\n<|im_start|>assistant\n"
    ids = hf_tok(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == 1 and ids.count(1) == 2 and ids.count(2) == 1, "ChatML markers must be single special tokens"


@pytest.mark.given
def test_curriculum_hf_generate_offline_equals_minigpt_greedy(curriculum, loaded):
    from transformers import AutoModelForCausalLM

    nano, model, tok = loaded
    hf = AutoModelForCausalLM.from_pretrained(curriculum / "hf").eval()
    ids = torch.tensor([[0] + tok.encode("Once upon a time")])
    out = hf.generate(ids, max_new_tokens=12, do_sample=False)[0].tolist()   # stops after <|endoftext|>
    ours = model.generate(ids, 12, temperature=0.0)[0].tolist()
    assert len(out) > ids.shape[1] and out == ours[: len(out)], \
        "HF greedy generate should follow MiniGPT's greedy tokens"


@pytest.mark.given
def test_curriculum_model_beats_unigram_baseline(curriculum, loaded):
    nano, model, tok = loaded
    metrics = json.loads((curriculum / "metrics.json").read_text(encoding="utf-8"))
    val = nano.load_bin(curriculum / "data" / "val.bin")
    unigram = nano.unigram_entropy(val, tok.vocab_size)
    assert metrics["unigram_entropy_val"] == pytest.approx(unigram)
    cm = load_lab(HERE / "curriculum_model.py")
    part = cm.evaluate_tokens(model, val[:256 * 16 + 1], 256)
    assert part < unigram - 2.0 and metrics["val_loss"] < unigram - 2.0, \
        f"val loss {metrics['val_loss']:.3f} (slice {part:.3f}) should beat the unigram entropy {unigram:.3f} by 2 nats"
    assert metrics["val_ppl"] == pytest.approx(math.exp(metrics["val_loss"]))
    assert len((curriculum / "samples.txt").read_text(encoding="utf-8").split("\n\n---\n\n")) == 6


@pytest.mark.given
def test_curriculum_draft_shares_the_tokenizer(curriculum):
    from labkit import curriculum_model_path

    draft = curriculum_model_path("draft")
    for f in ("encoder.json", "vocab.bpe", "bpe_meta.json"):
        assert (draft / "tokenizer" / f).read_bytes() == (curriculum / "tokenizer" / f).read_bytes()
    d, m = (json.loads((p / "metrics.json").read_text(encoding="utf-8")) for p in (draft, curriculum))
    assert d["params"] < m["params"] / 2 and d["val_loss"] < d["unigram_entropy_val"] - 1.0

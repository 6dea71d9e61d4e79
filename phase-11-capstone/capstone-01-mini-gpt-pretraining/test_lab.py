"""Grader for capstone 1 (mini-GPT pretraining, end to end).

References: hand cases for the Chinchilla calculator and the FLOPs report (Chinchilla itself: 5.88e23
FLOPs -> 70B parameters, 1.4T tokens); the concatenated per-epoch permutations for the rank batches;
MiniGPT's own mean loss and the Hugging Face export's logits for the held-out NLL; and, for the whole
chain, what the run wrote to disk (shards, rows, checkpoint, run.json) against the model card.

The end-to-end tests share one small-mode run, cached by content in ``.cache/capstones/`` (the
self-test builds it; a changed file rebuilds it), so they cost seconds once it exists.
"""
from __future__ import annotations

import hashlib
import json
import math
import re

import numpy as np
import pytest
import torch

from labkit import load_lab


@pytest.fixture(scope="module")
def run(lab):
    torch.set_num_threads(1)
    folder, data = lab.cached_run(lab.SMALL, log=lambda *a, **k: None)
    return folder, data


# ---------------------------------------------------------------- 1. the compute plan

def test_chinchilla_hand_cases(lab):
    b = lab.chinchilla_budget(5.88e23)
    assert b["n_params"] == pytest.approx(70e9, rel=1e-9) and b["n_tokens"] == pytest.approx(1.4e12, rel=1e-9), (
        f"C = 5.88e23 gave N={b['n_params']:.4g}, D={b['n_tokens']:.4g}; Chinchilla itself is 70B params on 1.4T "
        "tokens: from C = 6 N D and D = 20 N, N = sqrt(C / 120). Did you forget the 6, or the square root?")
    assert b["compute_flops"] == pytest.approx(5.88e23)
    b = lab.chinchilla_budget(n_params=1e8)
    assert (b["n_tokens"], b["compute_flops"]) == (pytest.approx(2e9), pytest.approx(1.2e18)), (
        f"N = 100M gave D={b['n_tokens']:.4g}, C={b['compute_flops']:.4g}; expected D = 20 N = 2e9 and "
        "C = 6 N D = 1.2e18")
    b = lab.chinchilla_budget(6e20, tokens_per_param=10)
    assert b["n_params"] == pytest.approx(math.sqrt(1e19)) and b["n_tokens"] == pytest.approx(10 * math.sqrt(1e19)), (
        "tokens_per_param must replace the 20 everywhere: N = sqrt(C / (6 r)), D = r N")
    back = lab.chinchilla_budget(n_params=lab.chinchilla_budget(1e21)["n_params"])
    assert back["compute_flops"] == pytest.approx(1e21), "C -> N -> C should round-trip"


@pytest.mark.given
@pytest.mark.parametrize("kw", [{}, {"compute_flops": 1e20, "n_params": 1e6}, {"compute_flops": -1.0},
                                {"n_params": float("nan")}, {"n_params": 1e6, "tokens_per_param": 0}])
def test_chinchilla_rejects_bad_input(lab, kw):
    with pytest.raises(ValueError):
        lab.chinchilla_budget(**kw)


def test_compute_report_hand_case(lab):
    r = lab.compute_report(n_params=1000, n_layer=2, d_model=8, block_size=16, tokens=500, seconds=4.0,
                           peak_flops=1e6)
    assert r["flops_6nd"] == pytest.approx(6 * 1000 * 500), "flops_6nd is 6 * N * D"
    assert r["flops_per_token"] == pytest.approx(6000 + 12 * 2 * 8 * 16), (
        f"flops_per_token {r['flops_per_token']}: PaLM's count is 6N + 12 * n_layer * d_model * block_size")
    assert r["flops_total"] == pytest.approx(9072 * 500)
    assert r["achieved_flops_per_s"] == pytest.approx(9072 * 500 / 4.0), "achieved = flops_total / seconds"
    assert r["mfu"] == pytest.approx(9072 * 500 / 4.0 / 1e6), "MFU = achieved FLOP/s / peak FLOP/s"
    assert r["chinchilla_tokens"] == pytest.approx(20_000) and r["tokens_per_param"] == pytest.approx(0.5)
    assert math.isnan(lab.compute_report(1000, 2, 8, 16, 500, 4.0)["mfu"]), "without a peak the MFU is NaN"


# ---------------------------------------------------------------- 2. split, pack, shard

def test_split_documents_is_a_pure_function_of_the_key(lab):
    keys = [f"crawl-{i // 50:02d}.warc.gz/{i:05d}" for i in range(20_000)]
    held = lab.split_documents(keys, 0.1)
    assert len(held) == len(keys) and all(isinstance(h, bool) for h in held), "return one bool per key"
    frac = sum(held) / len(held)
    assert 0.09 < frac < 0.11, f"{frac:.3f} of the documents held out with val_fraction=0.1"
    rng = np.random.default_rng(0)
    order = rng.permutation(len(keys))
    shuffled = lab.split_documents([keys[i] for i in order], 0.1)
    assert all(shuffled[j] == held[i] for j, i in enumerate(order)), (
        "the split changed when the keys came in another order: decide from each key's hash alone, "
        "not from its position or a shared random generator")
    wider = lab.split_documents(keys, 0.2)
    assert all(w for h, w in zip(held, wider) if h), (
        "a document held out at val_fraction=0.1 must stay held out at 0.2 (compare the hash to the fraction)")
    expect = [int.from_bytes(hashlib.sha256(k.encode()).digest()[:8], "big") / 2**64 < 0.1 for k in keys[:200]]
    assert held[:200] == expect, "use the first 8 bytes of sha256(key) as a big-endian integer / 2**64"


def test_pack_sequences_hand_case(lab):
    rows = lab.pack_sequences(np.arange(11, dtype=np.uint16), 3)
    assert rows.dtype == np.uint16, "keep the stream's dtype (uint16 shards stay uint16)"
    assert rows.tolist() == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]], (
        f"got {rows.tolist()}: row i is tokens[i*T : i*T + T + 1], consecutive rows share one token, the "
        "tail (token 10) is dropped")
    stream = np.random.default_rng(1).integers(0, 500, size=1000)
    rows = lab.pack_sequences(stream, 32)
    assert rows.shape == ((1000 - 1) // 32, 33)
    targets = rows[:, 1:].reshape(-1)
    assert np.array_equal(targets, stream[1:1 + targets.size]), (
        "the targets of all rows, in order, must be the stream from token 1 on: every token is a target "
        "exactly once (no gaps, no overlap beyond the one shared token)")


@pytest.mark.given
def test_pack_sequences_rejects_bad_input(lab):
    with pytest.raises(ValueError):
        lab.pack_sequences(np.arange(4), 4)
    with pytest.raises(ValueError):
        lab.pack_sequences(np.arange(40).reshape(4, 10), 4)
    with pytest.raises(ValueError):
        lab.pack_sequences(np.arange(40), 0)


def test_rank_batch_partitions_every_epoch(lab):
    n_rows, world, mb, seed = 24, 2, 3, 7
    steps_per_epoch = n_rows // (world * mb)
    stream = np.concatenate([np.random.default_rng(seed + e).permutation(n_rows) for e in range(3)])
    for step in range(3 * steps_per_epoch):
        got = [lab.rank_batch(step, r, world, mb, n_rows, seed) for r in range(world)]
        for r in range(world):
            lo = step * world * mb + r * mb
            assert got[r].tolist() == stream[lo:lo + mb].tolist(), (
                f"step {step} rank {r}: got {got[r].tolist()}, expected {stream[lo:lo + mb].tolist()}; "
                "rank r takes positions [step*G + r*mb, step*G + (r+1)*mb) of the epoch-by-epoch permutations")
        assert not set(got[0].tolist()) & set(got[1].tolist()), "two ranks got the same row in one step"
    epoch = np.concatenate([lab.rank_batch(s, r, world, mb, n_rows, seed)
                            for s in range(steps_per_epoch) for r in range(world)])
    assert sorted(epoch.tolist()) == list(range(n_rows)), "over one epoch every row must be used exactly once"
    # an epoch boundary inside a step (25 rows, G = 6)
    b = np.concatenate([lab.rank_batch(4, r, world, mb, 25, seed) for r in range(world)])
    s25 = np.concatenate([np.random.default_rng(seed + e).permutation(25) for e in range(2)])
    assert b.tolist() == s25[24:30].tolist(), "positions past the end of an epoch come from the next epoch's permutation"


@pytest.mark.given
def test_rank_batch_rejects_bad_input(lab):
    for args in ((0, 2, 2, 4, 10), (0, -1, 2, 4, 10), (-1, 0, 2, 4, 10), (0, 0, 2, 0, 10)):
        with pytest.raises(ValueError):
            lab.rank_batch(*args)


def test_heldout_nll_matches_the_models_own_loss(lab):
    nano = load_lab("phase-05-training-small-llms/lab-02-nano-gpt")
    torch.manual_seed(0)
    model = nano.build_model(97, style="llama", n_layer=1, n_head=2, n_kv_head=1, d_model=16, block_size=12,
                             dropout=0.0)
    rows = np.random.default_rng(0).integers(0, 97, size=(7, 13)).astype(np.uint16)
    total, count = lab.heldout_nll(model, rows, batch_size=3)
    x = torch.from_numpy(rows[:, :-1].astype(np.int64))
    y = torch.from_numpy(rows[:, 1:].astype(np.int64))
    with torch.no_grad():
        _, mean = model(x, y)
    assert count == 7 * 12, f"count {count}: every target of every row counts once (7 rows x 12 targets)"
    assert total == pytest.approx(mean.item() * 84, rel=1e-5), (
        f"total {total:.4f} vs the model's own mean loss x 84 = {mean.item() * 84:.4f}: sum the cross-entropy "
        "(reduction='sum') over all batches, do not average per batch")


# ---------------------------------------------------------------- 3. the whole chain (one cached run)

def test_chain_wrote_every_artifact(run):
    folder, r = run
    for rel in ("run.json", "MODEL_CARD.md", "minigpt.pt", "loss_curve.png", "tokenizer", "hf/config.json",
                "hf/model.safetensors", "hf/tokenizer.json", "pipeline/manifest.json", "data/train_rows.npy"):
        assert (folder / rel).exists(), f"the run did not write {rel}"
    d = r["data"]
    assert d["docs_in"] > d["docs_kept"] > 0, "the pipeline should drop some planted junk and keep the rest"
    assert d["train_docs"] + d["val_docs"] == d["docs_kept"]
    manifest = json.loads((folder / "pipeline" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["total_docs"] == d["docs_kept"], "train/val must be built from every document the pipeline kept"


def test_split_and_tokens_on_disk(run):
    folder, r = run
    d = r["data"]
    train = np.fromfile(folder / "data" / "train.bin", dtype=np.uint16)
    val = np.fromfile(folder / "data" / "val.bin", dtype=np.uint16)
    assert (train.size, val.size) == (d["train_tokens"], d["val_tokens"]), "run.json token counts != the .bin files"
    assert int((train == 0).sum()) == d["train_docs"] and int((val == 0).sum()) == d["val_docs"], (
        "one <|endoftext|> (id 0) after every document of each split")
    rows = np.load(folder / "data" / "train_rows.npy")
    assert rows.shape == (d["train_rows"], r["config"]["block_size"] + 1)
    assert np.array_equal(rows[:, 1:].reshape(-1), train[1:1 + rows.shape[0] * (rows.shape[1] - 1)])
    pipe = load_lab("phase-10-distributed-production/lab-02-data-pipeline")
    bpe = load_lab("phase-05-training-small-llms/lab-01-bpe-tokenizer").BPETokenizer.load(folder / "tokenizer")
    docs = []
    for e in json.loads((folder / "pipeline" / "manifest.json").read_text(encoding="utf-8"))["shards"]:
        p = folder / "pipeline" / "work" / "decontam" / (e["shard"].split("/")[-1][:-4] + ".jsonl")
        docs += [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]
    val_keys = set(d["val_keys"])
    val_docs = [x for x in docs if x["key"] in val_keys]
    assert len(val_docs) == d["val_docs"]
    assert np.array_equal(pipe.encode_documents([x["text"] for x in val_docs], bpe), val), (
        "val.bin must be exactly the held-out documents encoded with the run's tokenizer")


def test_ddp_training_on_two_ranks(run):
    folder, r = run
    t, cfg = r["training"], r["config"]
    assert t["world_size"] == 2 and t["backend"] == "gloo" and t["strategy"] == "ddp", (
        f"small mode trains with torchrun --nproc_per_node=2 (DDP over gloo), got {t['world_size']}, {t['backend']}")
    hashes = {x["params_sha256"] for x in t["ranks"]}
    assert len(hashes) == 1, "the two ranks ended with different weights: DDP replicas must stay identical"
    assert t["tokens"] == cfg["max_steps"] * cfg["micro_batch"] * 2 * cfg["block_size"]
    assert t["final_loss"] < t["first_loss"] - 1.0, f"training loss {t['first_loss']:.3f} -> {t['final_loss']:.3f}"


def test_heldout_numbers_recomputed_from_disk(run):
    folder, r = run
    nano = load_lab("phase-05-training-small-llms/lab-02-nano-gpt")
    model, _ = nano.load_checkpoint(folder / "minigpt.pt")
    rows = np.load(folder / "data" / "val_rows.npy")
    x = torch.from_numpy(rows[:, :-1].astype(np.int64))
    y = torch.from_numpy(rows[:, 1:].astype(np.int64))
    with torch.no_grad():
        _, loss = model(x, y)
    e = r["eval"]
    assert math.exp(loss.item()) == pytest.approx(e["val_ppl"], rel=1e-4), (
        "run.json's held-out perplexity is not exp(mean loss) of the saved checkpoint on val_rows.npy")
    assert e["hf_val_ppl"] == pytest.approx(e["val_ppl"], rel=1e-4), "the HF export must score the same perplexity"
    assert e["val_ppl"] < e["unigram_ppl"] < e["init_ppl"], (
        f"held-out ppl {e['val_ppl']:.2f} should beat the unigram model ({e['unigram_ppl']:.2f}), which beats the "
        f"untrained model ({e['init_ppl']:.1f})")
    assert e["val_bpb"] == pytest.approx(e["val_nll"] * e["val_targets"] / math.log(2) / e["val_target_bytes"])
    for task, res in e["downstream"].items():
        assert res["n"] == r["config"]["eval_limit"], f"{task}: evaluated {res['n']} items"
        lo, hi = res["acc_ci"]
        assert 0 <= lo <= res["acc"] <= hi <= 1, f"{task}: CI {res['acc_ci']} does not contain acc {res['acc']}"


def test_hf_export_loads_with_transformers(run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, r = run
    tok = AutoTokenizer.from_pretrained(folder / "hf")
    bpe = load_lab("phase-05-training-small-llms/lab-01-bpe-tokenizer").BPETokenizer.load(folder / "tokenizer")
    text = "Once upon a time, the little robot read 1,024 pages of the web."
    assert tok(text, add_special_tokens=False)["input_ids"] == bpe.encode_ordinary(text), (
        "the exported HF tokenizer must encode exactly like the BPE the model was trained with")
    model = AutoModelForCausalLM.from_pretrained(folder / "hf")
    assert sum(p.numel() for p in model.parameters()) == r["model"]["n_params"]


def test_model_card_numbers_equal_the_run(lab, run):
    folder, r = run
    card = (folder / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert card == lab.render_model_card(r), "MODEL_CARD.md is not what render_model_card(run.json) gives"
    missing = {k: v for k, v in lab.card_numbers(r).items() if v not in card}
    assert not missing, f"numbers of run.json missing from the card: {missing}"
    m = re.search(r"\| held-out perplexity \|[^|]*\| ([0-9.]+) \|", card)
    assert m and float(m[1]) == pytest.approx(r["eval"]["val_ppl"], abs=0.006), "card perplexity != run.json"
    m = re.search(r"\| 6·N·D estimate \| ([0-9.e+]+) FLOPs", card)
    n, dtok = r["model"]["n_params"], r["training"]["tokens"]
    assert m and float(m[1]) == pytest.approx(6 * n * dtok, rel=1e-3), "card 6ND != 6 x params x tokens trained"
    m = re.search(r"\| parameters \| ([0-9,]+) \|", card)
    assert m and int(m[1].replace(",", "")) == n
    for task, res in r["eval"]["downstream"].items():
        m = re.search(rf"\| {task} \(0-shot, acc\) \|[^|]*\| ([0-9.]+) \|", card)
        assert m and float(m[1]) == pytest.approx(res["acc"], abs=5e-4), f"card {task} accuracy != run.json"
    c = r["compute"]
    assert c["flops_6nd"] == pytest.approx(6 * n * dtok) and c["tokens_per_param"] == pytest.approx(dtok / n)
    assert c["achieved_flops_per_s"] == pytest.approx(c["flops_total"] / r["training"]["train_wall_s"])


def test_fsdp2_strategy_trains_like_ddp(lab, tmp_path, monkeypatch):
    """Full mode's FSDP2 path (lab 10.1's apply_fsdp2) against the DDP path, in-process on one gloo rank."""
    import dataclasses
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)).items():
        monkeypatch.setenv(k, v)
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "train_rows.npy", np.random.default_rng(0).integers(0, 200, size=(16, 17)).astype(np.uint16))
    out = {}
    for strategy in ("ddp", "fsdp2"):
        cfg = dataclasses.replace(lab.SMALL, block_size=16, max_steps=3, warmup_steps=1, micro_batch=4, strategy=strategy)
        spec = {"config": cfg.to_json(), "vocab_size": 200, "data": str(tmp_path / "data"), "out": str(tmp_path / strategy)}
        (tmp_path / strategy).mkdir()
        (tmp_path / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
        assert lab.train_worker(str(tmp_path / "spec.json")) == 0
        out[strategy] = json.loads((tmp_path / strategy / "train.json").read_text(encoding="utf-8"))
    assert out["fsdp2"]["losses"] == pytest.approx(out["ddp"]["losses"], abs=1e-5), (
        "FSDP2 and DDP should compute the same losses from the same seed and rows")
    assert out["fsdp2"]["ranks"][0]["params_sha256"] == out["ddp"]["ranks"][0]["params_sha256"]
    assert out["ddp"]["tokens"] == 3 * 4 * 16

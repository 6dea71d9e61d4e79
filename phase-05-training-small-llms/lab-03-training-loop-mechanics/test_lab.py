"""Grader for lab 5.3 (training-loop mechanics).

References: torch.nn.utils.clip_grad_norm_ (clipping), one big batch in float64 (accumulation),
fp32 (autocast), lab 5.2's get_lr (schedule), an uninterrupted run (resume, compared with
torch.equal after a restart in a NEW process), and a SIGKILLed writer (atomicity).
"""
from __future__ import annotations

import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from labkit import load_lab, seed_everything

N_BYTES = 60_000


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is faster, and the same count in parent and child process
    keeps the resumed run's arithmetic identical."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokens(lab):
    return lab.demo_tokens(N_BYTES)


def target_file(lab) -> str:
    return str(Path(lab.__file__).resolve())


# --------------------------------------------------------------------------- config and inputs (given)
@pytest.mark.given
@pytest.mark.parametrize("kw, needle", [
    (dict(grad_accum_steps=0), "grad_accum_steps"),
    (dict(max_steps=0), "max_steps"),
    (dict(precision="fp8"), "precision"),
    (dict(grad_clip=-1.0), "grad_clip"),
    (dict(grad_clip=float("nan")), "grad_clip"),
    (dict(warmup_steps=20, max_steps=10), "warmup_steps"),
    (dict(min_lr=1.0, max_lr=0.1), "min_lr"),
])
def test_bad_train_config_raises_clear_valueerror(lab, kw, needle):
    with pytest.raises(ValueError, match=needle):
        lab.TrainConfig(**kw)


@pytest.mark.given
def test_sampler_rejects_bad_tokens(lab):
    with pytest.raises(ValueError, match="1-D"):
        lab.TokenBatchSampler(np.zeros((4, 100), dtype=np.int64), 2, 8)
    with pytest.raises(TypeError, match="integers"):
        lab.TokenBatchSampler(np.zeros(1000, dtype=np.float32), 2, 8)
    with pytest.raises(ValueError, match="fewer than one batch"):
        lab.TokenBatchSampler(np.zeros(20, dtype=np.uint16), 4, 8)
    with pytest.raises(ValueError, match="fewer than one batch"):
        lab.TokenBatchSampler(np.zeros(0, dtype=np.uint16), 1, 8)


@pytest.mark.given
def test_accumulation_rejects_steps_without_tokens(lab):
    model = torch.nn.Linear(2, 2)
    batch = (torch.zeros(1, 3, dtype=torch.long), torch.full((1, 3), -100))
    with pytest.raises(ValueError, match="no target tokens"):
        lab.accumulate_gradients(model, [batch, batch], lambda m, b: torch.zeros(()))
    with pytest.raises(ValueError, match="at least one"):
        lab.accumulate_gradients(model, [], lambda m, b: torch.zeros(()))


# --------------------------------------------------------------------------- precision
def test_autocast_context_sets_the_compute_dtype(lab):
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    want = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    for precision, dtype in want.items():
        with lab.autocast_context(precision, "cpu"):
            got = (a @ b).dtype
        assert got == dtype, (f"inside autocast_context({precision!r}) a matmul gave {got}, expected {dtype}: "
                              "fp32 is a nullcontext, bf16/fp16 are torch.autocast(device_type, dtype=...)")
    with pytest.raises(ValueError, match="precision"):
        lab.autocast_context("int8", "cpu")


def test_bf16_train_step_is_close_to_fp32(lab, tokens):
    losses = {}
    for precision in ("fp32", "bf16"):
        tr = lab.build_demo_trainer(tokens, seed=0, dropout=0.0, precision=precision, max_steps=10)
        losses[precision] = [tr.train_step()["loss"] for _ in range(2)]
        assert all(p.dtype == torch.float32 for p in tr.model.parameters()), \
            "autocast must leave the parameters (master weights) in float32"
    for a, b in zip(losses["fp32"], losses["bf16"]):
        assert abs(a - b) < 0.02, (f"bf16 loss {b:.4f} vs fp32 {a:.4f}: with autocast only matmuls run in bf16 and "
                                   "the loss is still computed in float32; a gap this large means something else changed")


# --------------------------------------------------------------------------- accumulation and clipping
def _tiny_double_model(lab, seed=0):
    gpt = lab._gpt_lab()
    torch.manual_seed(seed)
    cfg = gpt.GPTConfig.llama_style(vocab_size=61, block_size=16, n_layer=2, n_head=4, d_model=32)
    return gpt.MiniGPT(cfg).double()


@pytest.mark.parametrize("masked", [False, True], ids=["equal-token-counts", "unequal-token-counts"])
def test_accumulated_gradient_equals_big_batch_gradient(lab, masked):
    model = _tiny_double_model(lab)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 61, (8, 16), generator=g)
    y = torch.randint(0, 61, (8, 16), generator=g)
    if masked:      # micro-batch 0 keeps 6 of 32 targets, the others all 32 (SFT prompt masking looks like this)
        y[:2, :13] = -100
    model.zero_grad()
    big_loss = model(x, y)[1]
    big_loss.backward()
    big = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    micro = [(x[i: i + 2], y[i: i + 2]) for i in range(0, 8, 2)]
    loss, n = lab.accumulate_gradients(model, micro)
    diff = max((p.grad - b).abs().max().item() for p, b in zip(model.parameters(), big))
    hint = ("weight micro-batch i by n_i / N (its share of the step's target tokens), not 1 / grad_accum_steps: "
            "the normalisation is sum of per-token losses / total tokens" if masked else
            "each micro-batch's loss must be divided so the SUM of the micro-gradients is the big-batch mean "
            "gradient (did you forget to scale, or zero .grad between micro-batches?)")
    assert diff < 1e-6, f"accumulated gradient differs from the big-batch gradient by {diff:.2e}: {hint}"
    assert n == int((y != -100).sum()), "the returned token count must be the number of labels != -100"
    assert abs(loss - big_loss.item()) < 1e-6, \
        f"returned loss {loss} != big-batch mean loss {big_loss.item()}: return sum(m_i * n_i) / N"


@pytest.mark.parametrize("max_norm", [0.5, 1e3], ids=["clips", "below-threshold"])
def test_clip_grad_norm_matches_torch(lab, max_norm):
    torch.manual_seed(0)
    grads = [torch.randn(13, 7) * 3, torch.randn(7), torch.randn(3, 3, 3)]
    ours = [torch.zeros_like(g, requires_grad=True) for g in grads]
    ref = [torch.zeros_like(g, requires_grad=True) for g in grads]
    for a, b, g in zip(ours, ref, grads):
        a.grad, b.grad = g.clone(), g.clone()
    extra = torch.zeros(5, requires_grad=True)  # a parameter with no gradient must be skipped
    n_ours = lab.clip_grad_norm(ours + [extra], max_norm)
    n_ref = torch.nn.utils.clip_grad_norm_(ref, max_norm)
    assert abs(float(n_ours) - float(n_ref)) < 1e-5 * float(n_ref), (
        f"returned norm {float(n_ours):.6f} vs torch {float(n_ref):.6f}: return the PRE-clip global norm "
        "sqrt(sum over tensors of ||g||^2), not the per-tensor norms or the post-clip norm")
    for a, b in zip(ours, ref):
        assert torch.allclose(a.grad, b.grad, rtol=1e-6, atol=1e-7), (
            "clipped gradients differ from torch.nn.utils.clip_grad_norm_: scale EVERY gradient by "
            "min(1, max_norm / (total + 1e-6)); clipping each tensor separately changes the direction")


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_train_step_reports_pre_clip_norm_and_clips(lab, tokens, precision):
    tr = lab.build_demo_trainer(tokens, seed=0, max_steps=10, precision=precision)
    tr.config.grad_clip = 1e-3
    seen = {}
    real_step = tr.optimizer.step

    def spy_step(*args, **kwargs):
        seen["norm"] = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in tr.model.parameters() if p.grad is not None))
        return real_step(*args, **kwargs)

    tr.optimizer.step = spy_step
    stats = tr.train_step()
    assert "norm" in seen, "train_step never called optimizer.step (through scaler.step)"
    assert 1e-2 < stats["grad_norm"] < 1e3, (
        f"stats['grad_norm'] = {stats['grad_norm']:.3e}: report the norm BEFORE clipping, of the UNSCALED "
        "gradient (with fp16, call scaler.unscale_(optimizer) first, or you log the loss scale times the norm)")
    assert seen["norm"].item() == pytest.approx(1e-3, rel=1e-3), (
        f"the optimizer saw a gradient of norm {seen['norm'].item():.3e}, expected grad_clip = 1e-3: "
        "clip after scaler.unscale_ and before the optimizer step (clipping scaled fp16 gradients clips "
        "65536 times too hard)")


def test_learning_rate_follows_lab02_get_lr(lab, tokens):
    lab02 = load_lab("phase-05-training-small-llms/lab-02-nano-gpt")
    tr = lab.build_demo_trainer(tokens, seed=0, max_steps=12)
    c = tr.config
    lrs = [tr.train_step()["lr"] for _ in range(12)]
    want = [lab02.get_lr(s, max_lr=c.max_lr, min_lr=c.min_lr, warmup_steps=c.warmup_steps, max_steps=c.max_steps)
            for s in range(12)]
    assert lrs == pytest.approx(want, rel=1e-12), (
        f"learning rates {lrs[:4]}... != get_lr(step) {want[:4]}...: call scheduler.step() exactly once per "
        "optimizer step, after optimizer.step()")


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_fp16_grad_scaler_skips_a_step_with_inf_gradients(lab, tokens):
    """GradScaler on CPU: an inf loss must skip the update and halve the scale (the GPU path is the same code)."""
    tr = lab.build_demo_trainer(tokens, seed=0, precision="fp16", max_steps=10)
    assert tr.scaler.is_enabled(), "precision='fp16' needs an enabled GradScaler"
    before = [p.detach().clone() for p in tr.model.parameters()]
    scale = tr.scaler.get_scale()
    tr.loss_fn = lambda m, b: lab.model_loss(m, b) * float("inf")
    stats = tr.train_step()
    assert all(torch.equal(a, p) for a, p in zip(before, tr.model.parameters())), (
        "an inf gradient reached the weights: step through scaler.step(optimizer), which skips the update "
        "when unscale_ found inf/NaN")
    assert stats["skipped"] and tr.scaler.get_scale() == scale / 2, \
        "after an overflow the scale must be halved (scaler.update()) and stats['skipped'] be True"
    tr.loss_fn = lab.model_loss
    stats = tr.train_step()
    assert not stats["skipped"] and math.isfinite(stats["loss"])
    assert any(not torch.equal(a, p) for a, p in zip(before, tr.model.parameters())), \
        "a finite fp16 step must update the weights"


def test_nonfinite_loss_raises_in_fp32(lab, tokens):
    tr = lab.build_demo_trainer(tokens, seed=0, max_steps=10,)
    tr.loss_fn = lambda m, b: lab.model_loss(m, b) * float("nan")
    with pytest.raises(FloatingPointError, match="step 1"):
        tr.train_step()


def test_trainer_is_model_agnostic(lab):
    """Any nn.Module returning an object with .loss and dict batches with 'labels' (the HF convention)."""

    class Out:
        def __init__(self, loss):
            self.loss = loss

    class Bigram(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Embedding(8, 8)

        def forward(self, input_ids, labels):
            logits = self.table(input_ids)
            return Out(torch.nn.functional.cross_entropy(logits.view(-1, 8), labels.view(-1), ignore_index=-100))

    seq = torch.arange(8).repeat(4)          # 0 1 2 ... 7 0 1 ...: next token = (t + 1) % 8

    def batches():
        while True:
            yield {"input_ids": seq[:-1].view(1, -1), "labels": seq[1:].view(1, -1)}

    torch.manual_seed(0)
    tr = lab.Trainer(Bigram(), lab.TrainConfig(max_steps=60, max_lr=0.3, min_lr=0.03, warmup_steps=1,
                                               weight_decay=0.0), batches())
    stats = tr.fit()
    assert stats[-1]["loss"] < 0.1 * stats[0]["loss"], "a bigram table should learn a fixed cycle in 60 steps"


# --------------------------------------------------------------------------- RNG and data cursor
def test_rng_state_roundtrip_through_weights_only_file(lab):
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    state = lab.get_rng_state()
    loaded = lab.deserialize_checkpoint(lab.serialize_checkpoint({"rng": state}))["rng"]
    first = (random.random(), np.random.rand(), torch.rand(3))
    lab.set_rng_state(loaded)
    again = (random.random(), np.random.rand(), torch.rand(3))
    for name, a, b in zip(("python random", "numpy", "torch"), first, again):
        assert (torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b), (
            f"{name} draws differ after set_rng_state: save AND restore every generator "
            "(random.getstate, np.random.get_state, torch.get_rng_state, and CUDA's when present)")


def test_sampler_resumes_exactly_across_an_epoch_boundary(lab):
    toks = np.arange(2000, dtype=np.uint16) % 251
    a = lab.TokenBatchSampler(toks, batch_size=4, block_size=16, seed=3)
    n_per_epoch = ((2000 - 1 - a._offset) // 16) // 4
    for _ in range(n_per_epoch - 2):
        next(a)
    state = lab.deserialize_checkpoint(lab.serialize_checkpoint({"d": a.state_dict()}))["d"]
    want = [next(a) for _ in range(6)]                   # crosses into the next epoch
    b = lab.TokenBatchSampler(toks, batch_size=4, block_size=16, seed=3)
    next(b)
    b.load_state_dict(state)
    got = [next(b) for _ in range(6)]
    for i, ((wx, wy), (gx, gy)) in enumerate(zip(want, got)):
        assert torch.equal(wx, gx) and torch.equal(wy, gy), (
            f"batch {i} after load_state_dict differs: the cursor needs the epoch, the position in it and the "
            "generator state from the START of the epoch (to regenerate the same offset and order)")


@pytest.mark.given
def test_sampler_covers_every_window_once_per_epoch(lab):
    toks = np.arange(1000, dtype=np.int64)
    s = lab.TokenBatchSampler(toks, batch_size=3, block_size=10, seed=0)
    offset, n = s._offset, len(s._order)
    starts = []
    for _ in range(n // 3):
        x, y = next(s)
        assert torch.equal(y[:, :-1], x[:, 1:]), "y must be x shifted by one token"
        starts += x[:, 0].tolist()
    assert sorted(starts) == [offset + 10 * i for i in sorted(s._order[: 3 * (n // 3)].tolist())]
    assert len(set(starts)) == len(starts)


# --------------------------------------------------------------------------- atomic writes
def test_atomic_write_bytes_fsyncs_then_replaces_then_fsyncs_the_folder(lab, tmp_path, monkeypatch):
    final = tmp_path / "ckpt.pt"
    final.write_bytes(b"old")
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", "dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "file"))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", Path(src).parent == Path(dst).parent, Path(dst) == final,
                       Path(src).read_bytes() == b"new" * 1000))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    lab.atomic_write_bytes(b"new" * 1000, final)
    assert final.read_bytes() == b"new" * 1000
    replaces = [e for e in events if e[0] == "replace"]
    assert len(replaces) == 1, "write to a temp file, then os.replace(temp, path) exactly once"
    assert replaces[0][1], "the temp file must be in the SAME directory as the target (os.replace is atomic only there)"
    assert replaces[0][3], "the temp file must hold all the bytes before it is renamed"
    i = events.index(replaces[0])
    assert ("fsync", "file") in events[:i], \
        "flush and os.fsync the temp file BEFORE os.replace, or a power cut can leave an empty file at the path"
    if sys.platform.startswith("linux"):
        assert ("fsync", "dir") in events[i:], \
            "fsync the directory after os.replace (_fsync_dir), or the rename itself may not survive a crash"
    assert not list(tmp_path.glob(".*.tmp")), "no temp file may be left behind after a successful write"


def test_atomic_write_failure_keeps_the_old_file_and_cleans_up(lab, tmp_path, monkeypatch):
    final = tmp_path / "ckpt.pt"
    final.write_bytes(b"old")

    def broken(f, data):
        f.write(data[:10])
        raise OSError("disk full")

    monkeypatch.setattr(lab, "write_chunks", broken)
    with pytest.raises(OSError, match="disk full"):
        lab.atomic_write_bytes(b"new" * 1000, final)
    assert final.read_bytes() == b"old", "a failed write must leave the previous file untouched"
    assert not list(tmp_path.glob(".*.tmp")), "remove the temp file when the write fails"


def test_kill9_mid_write_leaves_previous_checkpoint(lab, tmp_path):
    r = lab.kill9_check(tmp_path, big_mb=8, pause_after_mb=2)
    assert r["paused_mid_write"], ("the child never reached the pause point inside write_chunks: write the "
                                   f"bytes with write_chunks(f, data). Child stderr: {r['child_stderr'][-800:]}")
    assert r["previous_intact"], (f"after kill -9 mid-write the final path loads as {r['final_loads_as']!r}: write "
                                  "to a temp file in the same folder and os.replace it onto the path only "
                                  "when it is complete and fsynced")
    assert r["temp_removed_by_manager"] == r["temp_files_left"]


# --------------------------------------------------------------------------- checkpoint files (given)
@pytest.mark.given
def test_corrupt_or_truncated_checkpoint_gives_clear_error(lab, tmp_path):
    good = lab.serialize_checkpoint({"w": torch.arange(50_000.0), "step": 3})
    cases = {
        "truncated": (good[: len(good) // 2], "truncated"),
        "garbage": (b"not a checkpoint at all" * 10, "truncated or not a torch checkpoint"),
        "empty": (b"", "empty"),
    }
    flipped = bytearray(good)
    mid = flipped.index(b"\x00\x00\x80?") if b"\x00\x00\x80?" in flipped else len(flipped) // 2
    flipped[mid + 2] ^= 0x01                       # one bit inside the float data
    cases["bit flip"] = (bytes(flipped), "corrupt|truncated")
    for name, (data, needle) in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.pt"
        path.write_bytes(data)
        with pytest.raises(lab.CheckpointError, match=needle):
            lab.load_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        lab.load_checkpoint(tmp_path / "missing.pt")
    path = tmp_path / "ok.pt"
    path.write_bytes(good)
    assert lab.load_checkpoint(path)["step"] == 3


@pytest.mark.given
def test_weights_only_refuses_python_objects_unless_trusted(lab):
    data = lab.serialize_checkpoint({"arr": np.arange(3)})
    with pytest.raises(lab.CheckpointError, match="weights_only"):
        lab.deserialize_checkpoint(data)
    assert lab.deserialize_checkpoint(data, trusted=True)["arr"].tolist() == [0, 1, 2]


def test_resume_with_another_model_config_gives_clear_error(lab, tokens, tmp_path):
    tr = lab.build_demo_trainer(tokens, seed=0, max_steps=4)
    tr.train_step()
    tr.save_checkpoint(path=tmp_path / "a.pt")
    other = lab.build_demo_trainer(tokens, seed=0, max_steps=4, n_layer=3)
    with pytest.raises(lab.CheckpointError, match="n_layer"):
        other.resume(tmp_path / "a.pt")
    with pytest.raises(ValueError, match="batch_size"):      # same model, other batch shape: the cursor refuses
        lab.build_demo_trainer(tokens, seed=0, max_steps=4, batch_size=3).resume(tmp_path / "a.pt")


# --------------------------------------------------------------------------- resume: the main event
CHILD = r"""
import sys, torch
from labkit import load_lab
lab = load_lab(sys.argv[1])
torch.set_num_threads(1)
n_bytes, n_steps, ckpt, out = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
tr = lab.build_demo_trainer(lab.demo_tokens(n_bytes), seed=1234, max_steps=n_steps)  # another seed: all must come from the file
tr.resume(ckpt)
fp = lab.resume_fingerprint(tr)
losses = [tr.train_step()["loss"] for _ in range(tr.step, n_steps)]
torch.save({"fp": fp, "losses": losses, "model": tr.model.state_dict()}, out)
"""

RESUME_HINTS = {
    "step": "trainer.step was not restored",
    "lr": "the optimizer's param_groups (lr) were not restored: optimizer.load_state_dict",
    "scheduler last_epoch": "the LR scheduler was not restored: scheduler.load_state_dict (else warmup restarts)",
    "data cursor": "the data cursor was not restored: train_data.load_state_dict (else the run re-reads old batches)",
    "python RNG": "python's random state was not restored (random.setstate)",
    "numpy RNG": "numpy's RNG was not restored (np.random.set_state)",
    "torch RNG": "torch's RNG was not restored (torch.set_rng_state), so dropout masks differ; restore it LAST",
    "model weights": "the model weights were not restored",
    "optimizer state": "AdamW's moments (exp_avg, exp_avg_sq, step) were not restored: optimizer.load_state_dict",
}


def test_resume_in_a_new_process_is_bit_exact(lab, tokens, tmp_path):
    n, k = 10, 4
    straight = lab.build_demo_trainer(tokens, seed=0, max_steps=n)
    ref = [straight.train_step()["loss"] for _ in range(n)]
    first = lab.build_demo_trainer(tokens, seed=0, max_steps=n)
    got_first = [first.train_step()["loss"] for _ in range(k)]
    assert got_first == ref[:k], "two trainers built with the same seed must take identical steps"
    first.save_checkpoint(path=tmp_path / "k.pt")
    want_fp = lab.resume_fingerprint(first)
    proc = subprocess.run([sys.executable, "-c", CHILD, target_file(lab), str(N_BYTES), str(n),
                           str(tmp_path / "k.pt"), str(tmp_path / "out.pt")],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"the resuming process failed:\n{proc.stderr[-3000:]}"
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    wrong = [key for key in want_fp if out["fp"][key] != want_fp[key]]
    assert not wrong, "after resume in a new process: " + "; ".join(RESUME_HINTS[key] for key in wrong)
    resumed = ref[:k] + out["losses"]
    assert resumed == ref, (f"losses after resume differ from the uninterrupted run (max diff "
                            f"{max(abs(a - b) for a, b in zip(ref, resumed)):.2e}): every piece was restored, so "
                            "look for something drawing random numbers after set_rng_state, or state kept outside "
                            "the checkpoint")
    for name, t in straight.model.state_dict().items():
        assert torch.equal(out["model"][name], t), f"parameter {name} differs from the uninterrupted run"


@pytest.mark.parametrize("piece", ["rng", "data", "scheduler"])
def test_resume_check_has_teeth(lab, tokens, tmp_path, piece):
    """Forgetting one piece of state must change the losses (dropout 0.1 makes the RNG matter)."""
    n, k = 8, 3
    straight = lab.build_demo_trainer(tokens, seed=0, max_steps=n)
    ref = [straight.train_step()["loss"] for _ in range(n)]
    first = lab.build_demo_trainer(tokens, seed=0, max_steps=n)
    for _ in range(k):
        first.train_step()
    first.save_checkpoint(path=tmp_path / "k.pt")
    fresh = lab.build_demo_trainer(tokens, seed=7, max_steps=n)
    forgotten = {"rng": lab.get_rng_state(), "data": fresh.train_data.state_dict(),
                 "scheduler": fresh.scheduler.state_dict()}[piece]
    fresh.resume(tmp_path / "k.pt")
    {"rng": lab.set_rng_state, "data": fresh.train_data.load_state_dict,
     "scheduler": fresh.scheduler.load_state_dict}[piece](forgotten)
    losses = [fresh.train_step()["loss"] for _ in range(k, n)]
    assert losses != ref[k:], f"a resume that forgets the {piece} state still matched: the resume test lost its teeth"


# --------------------------------------------------------------------------- retention
def test_retention_keeps_best_last_and_newest_every_n(lab, tmp_path):
    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"half")
    mgr = lab.CheckpointManager(tmp_path, keep_every=2, keep_max=2)
    assert mgr.removed_temp == [".last.pt.abc123.tmp"] and not list(tmp_path.glob(".*.tmp"))
    vals = {1: 3.0, 2: 2.0, 3: 2.5, 4: 2.0, 5: None, 6: 1.5, 7: float("nan"), 8: 1.7, 9: 1.9}
    for step, v in vals.items():
        mgr.save({"step": step}, step, v)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["best.pt", "last.pt", "step_00000006.pt", "step_00000008.pt"], (
        f"files after 9 saves with keep_every=2, keep_max=2: {names}; want best.pt, last.pt and the two newest "
        "step files (older step files deleted, best/last never pruned)")
    step_in = {name: lab.load_checkpoint(tmp_path / name)["step"] for name in names}
    assert step_in["last.pt"] == 9, "last.pt must be overwritten by every save"
    assert step_in["best.pt"] == 6, ("best.pt must hold the lowest finite val loss (1.5 at step 6); NaN and None "
                                     "never count, and a tie keeps the earlier file")
    assert lab.load_checkpoint(tmp_path / "last.pt")["best_val_loss"] == 1.5
    assert mgr.latest() == tmp_path / "last.pt"


def test_best_val_loss_survives_a_resume(lab, tokens, tmp_path):
    mgr = lab.CheckpointManager(tmp_path)
    tr = lab.build_demo_trainer(tokens[:-10_000], seed=0, max_steps=4, checkpoints=mgr, val_tokens=tokens[-10_000:])
    tr.config.eval_every = tr.config.ckpt_every = 2
    stats = tr.fit()
    best = min(s["val_loss"] for s in stats if "val_loss" in s)
    mgr2 = lab.CheckpointManager(tmp_path)
    tr2 = lab.build_demo_trainer(tokens[:-10_000], seed=0, max_steps=4, checkpoints=mgr2)
    assert tr2.resume() == 4, "resume() without a path must load the manager's latest (last.pt)"
    assert mgr2.best_val_loss == best, \
        "a resumed run must know the best val loss so far (else the next eval overwrites best.pt with a worse model)"


# --------------------------------------------------------------------------- activation checkpointing
def test_activation_checkpointing_recomputes_and_keeps_gradients(lab):
    gpt = lab._gpt_lab()
    seed_everything(0)
    model = gpt.MiniGPT(gpt.GPTConfig.llama_style(vocab_size=50, block_size=16, n_layer=2, n_head=2,
                                                  d_model=16, dropout=0.2)).train()
    x = torch.randint(0, 50, (2, 16))
    calls = []
    model.blocks[0].attn.register_forward_hook(lambda *a: calls.append(1))

    def grads():
        model.zero_grad()
        calls.clear()
        torch.manual_seed(5)
        model(x, x)[1].backward()
        return [p.grad.clone() for p in model.parameters()], len(calls)

    keys = list(model.state_dict())
    plain, n_plain = grads()
    assert lab.enable_activation_checkpointing(model) == 2
    ck, n_ck = grads()
    assert n_plain == 1 and n_ck == 2, (f"block 0's attention ran {n_ck} time(s) per step with checkpointing: it must "
                                        "run in forward AND again in backward (torch.utils.checkpoint)")
    for a, b in zip(plain, ck):
        assert torch.allclose(a, b, atol=1e-6), ("gradients changed under checkpointing: keep use_reentrant=False "
                                                 "and the default preserve_rng_state=True so dropout masks replay")
    assert list(model.state_dict()) == keys, "checkpointing must not rename parameters (checkpoints must still load)"
    model.eval()
    calls.clear()
    with torch.no_grad():
        model(x)
    assert len(calls) == 1
    lab.disable_activation_checkpointing(model)
    _, n_off = grads()
    assert n_off == 1


# --------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_training_on_cuda(lab, tokens, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    tr = lab.build_demo_trainer(tokens, seed=0, max_steps=40, precision=precision, device="cuda")
    assert tr.scaler.is_enabled() == (precision == "fp16")
    stats = tr.fit()
    assert all(math.isfinite(s["loss"]) for s in stats if not s["skipped"])
    assert sum(s["skipped"] for s in stats) <= 3, "more than a few skipped fp16 steps: is the scaler updated?"
    assert stats[-1]["loss"] < stats[0]["loss"] - 1.0
    assert next(tr.model.parameters()).dtype == torch.float32

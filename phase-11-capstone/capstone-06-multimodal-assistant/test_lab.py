"""Grader for capstone 6 (LLaVA-style assistant: tiny ViT + projector + the curriculum LM).

References: ``nn.Conv2d`` and ``F.unfold`` for the ViT patch embedding, a hand (numpy) computation
of CLIP's InfoNCE, the way HF's ``LlavaForConditionalGeneration`` splices image features
(placeholders pre-expanded to N tokens, then ``masked_scatter``), HF's own ``labels=`` loss for the
masked loss, a plain text forward for the spliced sequence, scikit-learn's ``load_digits`` for the
data, and the cached small run (``model_dir("small")``, built once per checkout by the self-test or
by the first test that needs it): held-out accuracy per question type against chance, retrieval
recall@1 against chance, and a reload that reproduces its answers.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lm_tok(lab):
    return lab.load_lm("main")


@pytest.fixture(scope="module")
def run_folder(lab):
    return lab.model_dir("small")


@pytest.fixture(scope="module")
def run(run_folder):
    return json.loads((run_folder / "run.json").read_text(encoding="utf-8"))


# ------------------------------------------------------------------------ vision encoder
def test_patchify_matches_conv2d_and_unfold(lab):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 24)
    conv = nn.Conv2d(3, 16, kernel_size=8, stride=8)
    p = lab.patchify(x, 8)
    assert p.shape == (2, 12, 192), (
        f"patchify(32x24 image, patch 8) should be (B, N=4*3, C*p*p=192), got {tuple(p.shape)}")
    ref_unfold = torch.nn.functional.unfold(x, kernel_size=8, stride=8).transpose(1, 2)
    assert torch.equal(p, ref_unfold), (
        "patchify differs from F.unfold(x, 8, stride=8).transpose(1, 2): each patch must be flattened "
        "channel-first (c, dy, dx) and patches listed row by row. A permute to (B, H/p, W/p, p, p, C) "
        "gives channel-last patches, which a Conv2d weight does not match")
    emb = p @ conv.weight.view(16, -1).T + conv.bias
    ref = conv(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(emb, ref, atol=1e-5, rtol=1e-5,
                               msg="a Linear over patchify with the conv weight must equal the ViT's Conv2d")


@pytest.mark.given
def test_patchify_rejects_bad_shapes(lab):
    with pytest.raises(ValueError, match="divisible"):
        lab.patchify(torch.zeros(1, 3, 30, 32), 8)
    with pytest.raises(ValueError, match="B, C, H, W"):
        lab.patchify(torch.zeros(3, 32, 32), 8)


@pytest.mark.given
def test_merge_patches_groups_2x2_neighbours(lab):
    g, d = 4, 3
    tok = torch.arange(g * g * d, dtype=torch.float32).view(1, g * g, d)
    out = lab.merge_patches(tok, g, 2)
    assert out.shape == (1, 4, 4 * d)
    for bi in range(2):
        for bj in range(2):
            want = torch.cat([tok[0, (2 * bi + di) * g + 2 * bj + dj] for di in range(2) for dj in range(2)])
            assert torch.equal(out[0, bi * 2 + bj], want)


@pytest.mark.given
def test_pretrained_vision_tower_plugs_in(lab):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    tower = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=2, image_size=32, patch_size=8))
    enc = lab.HFVisionEncoder(tower, image_size=32, patch=8, has_cls=True)
    h = enc(torch.rand(2, 3, 32, 32))
    assert h.shape == (2, 17, 32)
    proj = lab.Projector(enc.d, 128, enc.grid, merge=2, use_cls=True)
    assert proj(h).shape == (2, proj.n_tokens, 128) and proj.n_tokens == 5


# ------------------------------------------------------------------------ contrastive pretraining
def _info_nce_by_hand(a: np.ndarray, b: np.ndarray, t: float) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    n = len(a)
    i2t = t2i = 0.0
    for i in range(n):
        row = [float(a[i] @ b[j]) / t for j in range(n)]
        col = [float(a[j] @ b[i]) / t for j in range(n)]
        i2t += -(row[i] - np.log(np.sum(np.exp(row))))
        t2i += -(col[i] - np.log(np.sum(np.exp(col))))
    return 0.5 * (i2t / n + t2i / n)


@pytest.mark.parametrize("t", [0.07, 1.0])
def test_info_nce_matches_hand_computation(lab, t):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    got = lab.info_nce(torch.tensor(a), torch.tensor(b), t)
    want = _info_nce_by_hand(a, b, t)
    assert abs(float(got) - want) < 1e-6, (
        f"info_nce = {float(got):.6f}, the hand computation gives {want:.6f}. Check: both sides L2-normalised, "
        "logits divided by the temperature, the loss averaged over BOTH directions (rows: image->text, "
        "columns: text->image)")


def test_info_nce_is_symmetric_and_rewards_alignment(lab):
    torch.manual_seed(0)
    a, b = torch.randn(8, 16), torch.randn(8, 16)
    assert torch.allclose(lab.info_nce(a, b), lab.info_nce(b, a), atol=1e-6), \
        "CLIP's loss is symmetric: swapping the image and text sides must not change it"
    aligned = lab.info_nce(a, a.clone(), 0.01)
    assert float(aligned) < 1e-3, f"identical pairs with a small temperature should give ~0 loss, got {float(aligned)}"
    with pytest.raises(ValueError):
        lab.info_nce(a, b[:4])


def test_recall_at_1(lab):
    sim = torch.tensor([[0.9, 0.1, 0.0],
                        [0.8, 0.2, 0.1],
                        [0.0, 0.1, 0.7]])
    i2t, t2i = lab.recall_at_1(sim)
    assert (i2t, t2i) == pytest.approx((2 / 3, 1.0)), (
        f"rows (image->text): rows 0 and 2 peak on the diagonal, row 1 does not -> 2/3; columns (text->image): "
        f"every column peaks on the diagonal -> 1.0; got {(i2t, t2i)}. Image->text takes the argmax of each "
        "ROW (dim=1), text->image of each COLUMN (dim=0)")


def test_recall_at_1_directions_differ(lab):
    sim = torch.tensor([[1.0, 0.9], [2.0, 0.5]])   # rows: 0 right, 1 wrong; columns: both wrong
    assert lab.recall_at_1(sim) == pytest.approx((0.5, 0.0))
    sim = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert lab.recall_at_1(sim) == pytest.approx((1.0, 1.0))
    sim = torch.tensor([[0.0, 1.0], [0.5, 0.0]])    # rows both wrong; column 0 wrong (row 1), column 1 wrong (row 0)
    assert lab.recall_at_1(sim) == pytest.approx((0.0, 0.0)), \
        "recall@1 counts a row (column) as right only when its argmax is the diagonal entry"


# ------------------------------------------------------------------------ prompt, labels, splicing
def test_build_example_masks_prompt_and_image(lab, lm_tok):
    _, tok = lm_tok
    prompt = lab.chat_prompt("What color?")
    ids, labels = lab.build_example(tok, prompt, " red")
    assert ids.count(lab.IMAGE_TOKEN_ID) == 1, "the <image> placeholder must become exactly one IMAGE_TOKEN_ID"
    n_prompt = len(lab.tokenize_prompt(tok, prompt))
    answer = tok(" red", add_special_tokens=False)["input_ids"]
    assert ids == lab.tokenize_prompt(tok, prompt) + answer + [lab.EOS_ID], (
        "input_ids = prompt ids (with the placeholder) + answer ids + <|endoftext|>")
    assert labels[:n_prompt] == [lab.IGNORE_INDEX] * n_prompt, (
        "every prompt position (the image placeholder and the question) must be IGNORE_INDEX: no loss on the "
        "prompt or the image")
    assert labels[n_prompt:] == answer + [lab.EOS_ID], (
        "the answer tokens AND the final <|endoftext|> carry the loss (without it the model never learns to stop)")


@pytest.mark.given
def test_build_example_rejects_bad_input(lab, lm_tok):
    _, tok = lm_tok
    with pytest.raises(ValueError, match="image"):
        lab.build_example(tok, "no image here", " red")
    with pytest.raises(ValueError, match="empty"):
        lab.build_example(tok, "<image>\nWhat color?", "")


def _batch(lab, tok):
    seqs = [lab.build_example(tok, lab.chat_prompt("How many?"), " three"),
            lab.build_example(tok, lab.chat_prompt("Where is it?"), " top left")]
    return seqs


@pytest.mark.parametrize("side", ["right", "left"])
def test_splice_matches_hf_llava_masked_scatter(lab, lm_tok, side):
    lm, tok = lm_tok
    embed = lm.get_input_embeddings()
    seqs = _batch(lab, tok)
    ids, mask, labels = lab.pad_batch([s[0] for s in seqs], [s[1] for s in seqs], side=side)
    N = 5
    torch.manual_seed(0)
    feats = torch.randn(2, N, embed.embedding_dim)
    with torch.no_grad():
        out = lab.splice_image_tokens(ids, mask, labels, feats, embed)
    # the reference: HF Llava's processor repeats the placeholder N times; the model scatters the features
    rows = [[t for x in row.tolist() for t in ([x] * N if x == lab.IMAGE_TOKEN_ID else [x])] for row in ids]
    exp = torch.tensor(rows)
    is_img = exp == lab.IMAGE_TOKEN_ID
    with torch.no_grad():
        ref = embed(exp.masked_fill(is_img, lab.PAD_ID)).masked_scatter(is_img[..., None], feats)
    assert out["inputs_embeds"].shape == (2, ids.shape[1] + N - 1, embed.embedding_dim), (
        f"one placeholder becomes N={N} rows: the length must grow by N - 1")
    torch.testing.assert_close(out["inputs_embeds"], ref, msg=(
        "spliced embeddings differ from HF Llava's masked_scatter reference: the N image rows go exactly where "
        "the placeholder was, in order, and the text before/after it keeps its order (check the offset p)"))
    ref_mask = torch.tensor([[m for x, m in zip(r.tolist(), mr.tolist())
                              for m in ([1] * N if x == lab.IMAGE_TOKEN_ID else [m])] for r, mr in zip(ids, mask)])
    assert torch.equal(out["attention_mask"].long(), ref_mask), \
        "the attention mask must be 1 on all N image rows and keep the text's 0/1 (padding) elsewhere"
    assert bool((out["labels"][is_img] == lab.IGNORE_INDEX).all()), "image rows must carry no loss (IGNORE_INDEX)"
    ref_labels = torch.tensor([[y for x, y0 in zip(r.tolist(), lr.tolist())
                                for y in ([lab.IGNORE_INDEX] * N if x == lab.IMAGE_TOKEN_ID else [y0])]
                               for r, lr in zip(ids, labels)])
    assert torch.equal(out["labels"], ref_labels), "labels must be expanded like the ids (answer labels unmoved)"
    pos = out["position_ids"]
    for b in range(2):
        real = ref_mask[b].bool()
        assert pos[b][real].tolist() == list(range(int(real.sum()))), (
            f"position_ids of row {b}'s real tokens must be 0, 1, 2, ... (cumsum(mask) - 1): with left "
            "padding the first real token is at position 0, as in HF generate")


def test_spliced_forward_equals_plain_text_forward(lab, lm_tok):
    """If the 'image features' are the embeddings of real tokens, the spliced left-padded batch must give
    the same logits as running each unpadded token sequence through the LM."""
    lm, tok = lm_tok
    embed = lm.get_input_embeddings()
    fake = torch.tensor([[100, 200, 300], [400, 500, 600]])
    seqs = [lab.tokenize_prompt(tok, "<image>\nHow many?"), lab.tokenize_prompt(tok, "Look <image> here, the cat")]
    ids, mask, _ = lab.pad_batch(seqs, side="left")
    with torch.no_grad():
        s = lab.splice_image_tokens(ids, mask, None, embed(fake), embed)
        h = lm(inputs_embeds=s["inputs_embeds"], attention_mask=s["attention_mask"],
               position_ids=s["position_ids"]).logits
        for b, seq in enumerate(seqs):
            plain = [t for x in seq for t in (fake[b].tolist() if x == lab.IMAGE_TOKEN_ID else [x])]
            ref = lm(torch.tensor([plain])).logits[0]
            torch.testing.assert_close(h[b, -len(plain):], ref, atol=1e-4, rtol=1e-4, msg=(
                f"row {b}: the spliced, left-padded forward differs from the plain forward of the same tokens; "
                "check the splice offsets, the attention mask on padding, and the position ids"))


@pytest.mark.given
def test_splice_rejects_bad_input(lab, lm_tok):
    lm, _ = lm_tok
    embed = lm.get_input_embeddings()
    ids = torch.tensor([[5, lab.IMAGE_TOKEN_ID, 6], [5, 6, 7]])
    with pytest.raises(ValueError, match="row 1 has 0"):
        lab.splice_image_tokens(ids, torch.ones_like(ids), None, torch.zeros(2, 4, 128), embed)
    ids = torch.tensor([[5, lab.IMAGE_TOKEN_ID, 6]])
    with pytest.raises(ValueError, match="project"):
        lab.splice_image_tokens(ids, torch.ones_like(ids), None, torch.zeros(1, 4, 64), embed)


@pytest.mark.given
def test_masked_loss_equals_hf_loss(lab, lm_tok):
    lm, _ = lm_tok
    torch.manual_seed(0)
    x = torch.randn(2, 9, 128) * 0.05
    labels = torch.full((2, 9), lab.IGNORE_INDEX)
    labels[0, 6:] = torch.tensor([5, 6, 7])
    labels[1, 4:6] = torch.tensor([8, 9])
    mask = torch.ones(2, 9, dtype=torch.long)
    pos = torch.arange(9).expand(2, 9)
    with torch.no_grad():
        ours = lab.masked_lm_loss(lm, x, mask, pos, labels)
        ref = lm(inputs_embeds=x, attention_mask=mask, position_ids=pos, labels=labels).loss
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------ data
@pytest.mark.given
def test_digits_equal_sklearn_and_heldout_split_is_disjoint(lab):
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs, labels = lab.digit_images()
    np.testing.assert_allclose(imgs, d.images / 16.0, atol=1e-6)
    assert np.array_equal(labels, d.target)
    tr, he = lab.make_scenes(60, "train"), lab.make_scenes(60, "heldout")
    tr_idx = {m["digit_index"] for m in tr.metas if m["kind"] == "digit"}
    he_idx = {m["digit_index"] for m in he.metas if m["kind"] == "digit"}
    assert max(tr_idx) < lab.N_TRAIN_DIGITS <= min(he_idx)
    assert tr.images.shape == (60, 3, 32, 32) and float(tr.images.max()) <= 1.0
    assert {t for (_, t, _, _) in he.qa} == set(lab.ANSWERS)


# ------------------------------------------------------------------------ the trained model (cached)
def test_heldout_accuracy_per_type_well_above_chance(lab, run):
    per = run["vqa"]["per_type"]
    assert set(per) == {"colour", "count", "position", "digit"}
    problems = lab.scorecard_ok(run)
    table = lab.scorecard_table(run)
    assert not problems, "the trained model misses its claims:\n" + "\n".join(problems) + "\n" + table
    for t, v in per.items():
        assert v["chance"] == pytest.approx(1 / len(lab.ANSWERS[t])) and v["n"] >= 40, (t, v)


def test_contrastive_retrieval_well_above_chance(run):
    r = run["retrieval"]
    assert r["chance"] == pytest.approx(1 / r["gallery"])
    assert min(r["recall_i2t"], r["recall_t2i"]) >= 10 * r["chance"], (
        f"recall@1 {r['recall_i2t']:.3f} / {r['recall_t2i']:.3f} against chance {r['chance']:.3f}: the stage-0 "
        "ViT did not learn to match images to their captions")


def test_cached_model_reloads_and_reproduces_its_answers(lab, run_folder, run):
    model, scenes, _ = lab.load_model(run_folder)
    rows = [r for r in run["heldout_rows"]][::17][:24]
    preds = model.answer(scenes.images[[r["image"] for r in rows]],
                         [lab.chat_prompt(r["question"], model.chatml) for r in rows])
    assert preds == [r["pred"] for r in rows], (
        "the reloaded model (vision.pt + projector.pt + lm weights) answers differently from the run that "
        "trained it: saving/loading lost a piece, or generation is not deterministic")
    assert model.projector.n_tokens == run["image_tokens"] == 5

"""Grader for lab 6.1 (SFT). References: transformers' ``apply_chat_template(return_assistant_tokens_mask=True)``
and ``ForCausalLMLoss`` (with ``num_items_in_batch``), TRL's ``SFTTrainer`` dataset preparation
(``assistant_only_loss`` and ``completion_only_loss`` labels, truncation), ``torch.nn.functional.cross_entropy``,
lm-eval's IFEval instruction checkers (strict and loose) on the mirror's IFEval prompts, and hand computations."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from labkit import dataset_path, seed_everything


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def base_dir(lab):
    return lab.base_model_dir(lab.SMALL)


@pytest.fixture(scope="module")
def tok(lab, base_dir):
    return lab.load_tokenizer(base_dir)


@pytest.fixture(scope="module")
def convs(lab, tok):
    return lab.load_instruction_conversations(tok, 80)


def _multi(convs, i):
    return [{"role": "system", "content": "You are a helpful assistant."}] + convs[i] + convs[i + 1] + convs[i + 2]


# --------------------------------------------------------------------------- chat template
def test_template_renders_chatml_with_bos(lab, tok):
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert text == "<|endoftext|><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n", (
        f"rendered {text!r}: the template is BOS, then '<|im_start|>role\\ncontent<|im_end|>\\n' per message")
    gen = tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    assert gen.endswith("<|im_end|>\n<|im_start|>assistant\n"), "add_generation_prompt must open an assistant turn"
    assert "{% generation %}" in lab.chat_template() and "{% endgeneration %}" in lab.chat_template(), (
        "wrap the assistant's content in {% generation %} ... {% endgeneration %}: TRL's assistant_only_loss needs it")


def test_assistant_mask_marks_content_and_end_of_turn(tok):
    msgs = [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Blue."}]
    out = tok.apply_chat_template(msgs, return_dict=True, return_assistant_tokens_mask=True, tokenize=True)
    ids = [i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tok.decode(ids) == "Blue.<|im_end|>", (
        f"the generation markers cover {tok.decode(ids)!r}; they must cover the content and its <|im_end|> "
        "(the model has to learn to end its turn) and nothing of the header")


# --------------------------------------------------------------------------- spans and masks
def test_spans_locate_content_and_im_end(lab, tok, convs):
    msgs = _multi(convs, 10)
    ids, spans = lab.message_spans(tok, msgs)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert len(spans) == len(msgs)
    for (s, e), m in zip(spans, msgs, strict=True):
        assert ids[e - 1] == im_end, "a span must end just after the message's <|im_end|> (end is exclusive)"
        assert tok.decode(ids[s:e - 1]) == m["content"], (
            f"span decodes to {tok.decode(ids[s:e - 1])!r}, expected the content {m['content']!r}: "
            "did you count the header '<|im_start|>role\\n' into start?")


def test_masks_equal_transformers_assistant_masks(lab, tok, convs):
    for i in range(0, 60, 3):
        msgs = _multi(convs, i)
        ids, spans = lab.message_spans(tok, msgs)
        ref = tok.apply_chat_template(msgs, return_dict=True, return_assistant_tokens_mask=True, tokenize=True)
        assert ids == list(ref["input_ids"]), "message_spans must return the ids of the whole rendered conversation"
        _, labels = lab.multi_turn_labels(ids, spans, [m["role"] for m in msgs])
        ours = [int(x != -100) for x in labels]
        assert ours == list(ref["assistant_masks"]), (
            f"conversation {i}: our assistant mask differs from the {{% generation %}} mask at positions "
            f"{[t for t, (a, b) in enumerate(zip(ours, ref['assistant_masks'], strict=True)) if a != b][:8]}")


def _trl_rows(tmp_path, base_dir, tok, rows, **cfg):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, save_strategy="no", max_steps=1, **cfg)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    return list(trainer.train_dataset)


def test_masks_equal_trl_assistant_only_loss(lab, tok, convs, base_dir, tmp_path):
    convos = [_multi(convs, i) for i in range(0, 30, 3)] + convs[40:50]
    trl_rows = _trl_rows(tmp_path, base_dir, tok, [{"messages": c} for c in convos], assistant_only_loss=True,
                         max_length=None)
    assert len(trl_rows) == len(convos)
    for c, row in zip(convos, trl_rows, strict=True):
        ours = lab.encode_conversation(tok, c, "assistant")
        assert ours["input_ids"] == row["input_ids"], "tokenization differs from TRL's (BOS? template?)"
        assert ours["labels"] == row["labels"], "labels differ from TRL's assistant_only_loss labels"


def test_masks_equal_trl_under_truncation(lab, tok, convs, base_dir, tmp_path):
    """TRL masks first, then keeps the first max_length tokens: multi_turn_labels must agree."""
    convos = [_multi(convs, i) for i in range(0, 30, 3)]
    lengths = [len(lab.encode_conversation(tok, c)["input_ids"]) for c in convos]
    cut = sorted(lengths)[len(lengths) // 2] - 7  # cuts half the conversations, some mid-answer
    trl_rows = _trl_rows(tmp_path, base_dir, tok, [{"messages": c} for c in convos], assistant_only_loss=True,
                         max_length=cut)
    trl_by_ids = {tuple(r["input_ids"]): r["labels"] for r in trl_rows}
    checked = 0
    for c in convos:
        ours = lab.encode_conversation(tok, c, "assistant", max_length=cut)
        assert len(ours["input_ids"]) == len(ours["labels"]) <= cut, "truncate ids and labels to max_length"
        if tuple(ours["input_ids"]) in trl_by_ids:  # TRL drops rows left with no label
            assert ours["labels"] == trl_by_ids[tuple(ours["input_ids"])], (
                "after truncation a cut assistant turn keeps its visible tokens: end = min(end, len(ids))")
            checked += 1
    assert checked >= len(convos) - 2


def test_single_turn_equals_trl_completion_only(lab, tok, convs, base_dir, tmp_path):
    rows = [{"prompt": c[:1], "completion": c[1:]} for c in convs[:12]]
    comp = _trl_rows(tmp_path / "a", base_dir, tok, rows, completion_only_loss=True, max_length=None)
    both = _trl_rows(tmp_path / "b", base_dir, tok, rows, completion_only_loss=True, assistant_only_loss=True,
                     max_length=None)
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    for c, r1, r2 in zip(convs[:12], comp, both, strict=True):
        ids, spans = lab.message_spans(tok, c)
        labels = lab.single_turn_labels(ids, spans, [m["role"] for m in c])
        assert labels == r2["labels"], "single-turn labels must equal TRL's completion-and-assistant labels"
        # the completion-only mask alone also trains on the template's newline after <|im_end|>
        assert labels[: -len(newline)] == r1["labels"][: -len(newline)]
        assert r1["labels"][-len(newline):] == newline and labels[-len(newline):] == [-100] * len(newline)


def test_single_turn_rejects_conversations(lab, tok, convs):
    msgs = convs[0] + convs[1]
    ids, spans = lab.message_spans(tok, msgs)
    with pytest.raises(ValueError, match="single-turn"):
        lab.single_turn_labels(ids, spans, [m["role"] for m in msgs])


def test_multi_turn_truncation_on_long_answers(lab, tok):
    convs = lab.load_sft_sample(tok)
    msgs = convs[0] + convs[1]
    ids, spans = lab.message_spans(tok, msgs)
    roles = [m["role"] for m in msgs]
    assert len(ids) > 256, "the sft-sample answers are long stories"
    for cut in (spans[1][0] + 5, 100, 256):
        t_ids, labels = lab.multi_turn_labels(ids, spans, roles, max_length=cut)
        assert len(t_ids) == len(labels) == cut, f"cut at {cut}: ids/labels must both have max_length tokens"
        full_ids, full_labels = lab.multi_turn_labels(ids, spans, roles)
        assert labels == full_labels[:cut], "truncating then masking must equal masking then truncating"
        assert t_ids == ids[:cut]


def test_reverse_labels_train_user_turns(lab, tok, convs):
    msgs = _multi(convs, 20)
    ids, spans = lab.message_spans(tok, msgs)
    roles = [m["role"] for m in msgs]
    _, rev = lab.reverse_labels(ids, spans, roles)
    _, fwd = lab.multi_turn_labels(ids, spans, roles)
    users = [tok.decode(ids[s:e]) for (s, e), r in zip(spans, roles, strict=True) if r == "user"]
    got = tok.decode([t for t in rev if t != -100])
    assert got == "".join(users), f"reverse masking must supervise exactly the user turns (+ <|im_end|>), got {got[:80]!r}"
    assert not any(a != -100 and b != -100 for a, b in zip(rev, fwd, strict=True)), "a token is both user and assistant?"
    swapped = lab.swap_single_turn(convs[0])
    ids2, spans2 = lab.message_spans(tok, swapped)
    _, rev2 = lab.reverse_labels(ids2, spans2, [m["role"] for m in swapped])
    assert tok.decode([t for t in rev2 if t != -100]) == convs[0][0]["content"] + "<|im_end|>"


@pytest.mark.given
@pytest.mark.parametrize("bad, exc", [([], ValueError), ("hi", TypeError), ([{"role": "bot", "content": "x"}], ValueError),
                                      ([{"role": "user", "content": ""}], ValueError),
                                      ([{"role": "user", "content": "a <|im_end|> b"}], ValueError)])
def test_bad_messages(lab, bad, exc):
    with pytest.raises(exc):
        lab.check_messages(bad)


# --------------------------------------------------------------------------- cross-entropy
def _rand(B=3, T=11, V=37, seed=0, n_ignore=(0, 4, 9)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g) * 3
    labels = torch.randint(0, V, (B, T), generator=g)
    for b, k in enumerate(n_ignore[:B]):
        labels[b, :k] = -100
    return logits, labels


def test_loss_equals_transformers_and_torch(lab):
    from transformers.loss.loss_utils import ForCausalLMLoss

    logits, labels = _rand()
    ours = lab.causal_lm_loss(logits, labels)
    ref = ForCausalLMLoss(logits, labels, logits.shape[-1])
    torch_ref = F.cross_entropy(logits[:, :-1].reshape(-1, 37), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(ours, ref, atol=1e-5), (
        f"ours {float(ours):.5f} vs transformers {float(ref):.5f}: did you shift (logits[:, :-1] predicts labels[:, 1:])?")
    assert torch.allclose(ours, torch_ref, atol=1e-5)
    assert torch.allclose(lab.causal_lm_loss(logits, labels, num_items_in_batch=7),
                          ForCausalLMLoss(logits, labels, 37, num_items_in_batch=7), atol=1e-5), (
        "with num_items_in_batch the summed loss is divided by it, not by this batch's own count")


def test_loss_gradient_matches_torch(lab):
    logits, labels = _rand(seed=1)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    lab.causal_lm_loss(a, labels).backward()
    F.cross_entropy(b[:, :-1].reshape(-1, 37), labels[:, 1:].reshape(-1), ignore_index=-100).backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-6), "ignored targets must get zero gradient"


def test_gradient_accumulation_needs_num_items_in_batch(lab):
    """Micro-batches with 9 and 1 targets: the mean of their means is not the mean over the 10 tokens."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    logits, labels = _rand(B=2, T=11, seed=2, n_ignore=(2, 10))
    n1, n2 = lab.count_targets(labels[:1]), lab.count_targets(labels[1:])
    assert (n1, n2) == (9, 1)
    glob = lab.causal_lm_loss(logits, labels)
    per_mb = (lab.causal_lm_loss(logits[:1], labels[:1]) + lab.causal_lm_loss(logits[1:], labels[1:])) / 2
    assert abs(float(per_mb) - float(glob)) > 0.05, "the test data should show the accumulation bug"
    ours = sum(lab.causal_lm_loss(logits[i:i + 1], labels[i:i + 1], num_items_in_batch=10) for i in range(2))
    hf = sum(ForCausalLMLoss(logits[i:i + 1], labels[i:i + 1], 37, num_items_in_batch=10) for i in range(2))
    assert torch.allclose(ours, glob, atol=1e-5), (
        f"summing micro-batch losses divided by num_items_in_batch gave {float(ours):.4f}, the global token mean is "
        f"{float(glob):.4f}")
    assert torch.allclose(ours, hf, atol=1e-5)


@pytest.mark.given
@pytest.mark.parametrize("case", ["nan", "shape", "range", "int_logits", "items"])
def test_loss_rejects_bad_input(lab, case):
    logits, labels = _rand()
    kw = {}
    if case == "nan":
        logits[0, 0, 0] = float("nan")
    elif case == "shape":
        labels = labels[:, :-1]
    elif case == "range":
        labels[0, 5] = 37
    elif case == "int_logits":
        logits = logits.long()
    else:
        kw = {"num_items_in_batch": 0}
    with pytest.raises((ValueError, TypeError)):
        lab.causal_lm_loss(logits, labels, **kw)


def test_loss_all_ignored_is_zero_not_nan(lab):
    logits, labels = _rand()
    labels[:] = -100
    out = lab.causal_lm_loss(logits.requires_grad_(True), labels)
    assert float(out) == 0.0 and out.requires_grad, "no target: return 0 (connected to the graph), not nan"


@pytest.fixture(scope="module")
def tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    seed_everything(0)
    cfg = LlamaConfig(vocab_size=37, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)
    return LlamaForCausalLM(cfg)


def test_sft_step_gradient_equals_full_batch(lab, tiny_model):
    logits, labels = _rand(B=4, T=12, seed=3, n_ignore=(2, 10, 11, 5))
    ids = labels.clamp(min=0)
    mask = torch.ones_like(ids)
    micro = [{"input_ids": ids[i:i + 2], "attention_mask": mask[i:i + 2], "labels": labels[i:i + 2]} for i in (0, 2)]
    tiny_model.zero_grad()
    loss_full = lab.causal_lm_loss(tiny_model(input_ids=ids, attention_mask=mask).logits, labels)
    loss_full.backward()
    g_full = [p.grad.clone() for p in tiny_model.parameters()]
    tiny_model.zero_grad()
    reported = lab.sft_step(tiny_model, micro, normalize="global")
    g_acc = [p.grad.clone() for p in tiny_model.parameters()]
    assert abs(reported - float(loss_full)) < 1e-5, "sft_step must report the token mean over the whole step"
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g_acc, g_full, strict=True)), (
        "accumulated gradients differ from the one-big-batch gradient: divide by the step's total target count")
    tiny_model.zero_grad()
    lab.sft_step(tiny_model, micro, normalize="per_micro_batch")
    g_bug = [p.grad.clone() for p in tiny_model.parameters()]
    rel = max(float((a - b).norm() / b.norm()) for a, b in zip(g_bug, g_full, strict=True))
    assert rel > 0.05, "per-micro-batch means should give a visibly different gradient here"
    tiny_model.zero_grad()


# --------------------------------------------------------------------------- SFT runs
@pytest.fixture(scope="module")
def sft_dir(lab):
    return lab.sft_model_path("small")


@pytest.fixture(scope="module")
def heldout(lab, tok):
    return lab.recipe_data(tok, lab.SMALL)[1]


def test_sft_model_folder_loads_with_our_template(lab, sft_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t = AutoTokenizer.from_pretrained(sft_dir)
    assert "{% generation %}" in t.chat_template, "the saved tokenizer must carry our chat template"
    m = AutoModelForCausalLM.from_pretrained(sft_dir)
    assert t.convert_tokens_to_ids("<|im_end|>") in list(m.generation_config.eos_token_id), (
        "generation must stop at <|im_end|>")
    assert sft_dir.name.startswith("sft-") and (sft_dir / "cache_key.txt").read_text().strip() == lab.sft_cache_key()


def test_our_loop_lowers_heldout_response_loss(lab, tok, sft_dir, heldout, base_dir):
    base = lab.load_model(base_dir, tok)
    sft = lab.load_model(sft_dir)
    before = lab.response_loss(base, tok, heldout[:32])
    after = lab.response_loss(sft, tok, heldout[:32])
    assert before - after > 1.0, f"held-out response loss {before:.3f} -> {after:.3f}: expected a drop of > 1 nat/token"


def test_trl_sft_lowers_heldout_response_loss(lab, tok, heldout, base_dir, tmp_path):
    train, _ = lab.recipe_data(tok, lab.SMALL)
    seed_everything(0)
    model = lab.load_model(base_dir, tok)
    before = lab.response_loss(model, tok, heldout[:32])
    lab.train_with_trl(model, tok, train, lab.SMALL, tmp_path, max_steps=12)
    after = lab.response_loss(model, tok, heldout[:32])
    assert before - after > 0.8, f"trl.SFTTrainer: {before:.3f} -> {after:.3f} after 12 steps (expected > 0.8 drop)"


def test_generations_file(lab, tok, sft_dir, heldout, base_dir, tmp_path):
    prompts = [c[0]["content"] for c in heldout[:20]]
    before = lab.generate_chat(lab.load_model(base_dir, tok), tok, prompts, max_new_tokens=24)
    after = lab.generate_chat(lab.load_model(sft_dir), tok, prompts, max_new_tokens=24)
    path = lab.write_generations(tmp_path / "gen.md", prompts, before, after)
    text = path.read_text(encoding="utf-8")
    assert text.count("## ") == 20 and all(p in text for p in prompts)
    assert sum(a != b for a, b in zip(before, after, strict=True)) >= 15, "SFT should change most answers"


# --------------------------------------------------------------------------- IFEval
@pytest.fixture(scope="module")
def lm_ifeval():
    nltk = pytest.importorskip("nltk")
    real = nltk.download
    nltk.download = lambda *a, **k: False  # lm-eval tries to fetch punkt at import; we are offline
    try:
        from lm_eval.tasks.ifeval import utils
    finally:
        nltk.download = real
    return utils


@pytest.fixture(scope="module")
def ifeval_items():
    path = dataset_path("ifeval", "input_data.jsonl")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


_POOL = [
    "Sure, here it is.\nThe cat sat on the mat. It was happy.",
    "the cat sat on the mat and it was happy",
    '"A short answer in quotes."',
    "<<A Title>>\nThe story starts here. It ends here.",
    "<<>> no title here",
    "Body text.\nP.S. remember the milk",
    "Body text.\n  p.p.s one more thing",
    "* one\n* two\n* three",
    "- first\n- second\n*not a bullet*",
    "Here is *one highlight* and **a bold one** and ** ** blank.",
    '{"name": "Tom", "age": 7}',
    '```json\n{"a": 1}\n```',
    "Dear [name], meet me at [place] on [day].",
    "First paragraph.\n***\nSecond paragraph.\n***\nThird paragraph.",
    "***\nOnly one paragraph\n***",
    "One.\n***\n\n***\nBroken.",
    "Is there anything else I can help with?",
    "Sure!\n*The end.*\nBye",
    "",
    "   ",
]


def _probes(iid, kw, prompt):
    out = list(_POOL)
    kw = {k: v for k, v in kw.items() if v}
    if "end_phrase" in kw:
        out += [f"Some text. {kw['end_phrase']}", f'"Quoted. {kw["end_phrase"]}"', f"{kw['end_phrase']} and more"]
    if "keywords" in kw:
        out += [" ".join(kw["keywords"]), " ".join(kw["keywords"][:-1]) or "nothing"]
    if "forbidden_words" in kw:
        out += [f"I said {kw['forbidden_words'][0]} today.", f"I said {kw['forbidden_words'][0]}s today."]
    if "keyword" in kw:
        f = kw.get("frequency", 1)
        out += [" ".join([kw["keyword"]] * n) for n in (f - 1, f, f + 1) if n > 0]
    if "letter" in kw:
        f = kw.get("let_frequency", 1)
        out += [" ".join([kw["letter"].upper()] * n) for n in (f - 1, f, f + 1) if n > 0]
    if "num_words" in kw:
        n = kw["num_words"]
        out += [" ".join(["word"] * k) for k in (n - 1, n, n + 1) if k > 0]
    if "num_bullets" in kw:
        n = kw["num_bullets"]
        out += ["\n".join(["* item"] * n), "\n".join(["- item"] * (n + 1))]
    if "num_highlights" in kw:
        n = kw["num_highlights"]
        out += [" ".join(["*part*"] * n), " ".join(["*part*"] * (n - 1))]
    if "num_placeholders" in kw:
        out += [" ".join(["[x]"] * kw["num_placeholders"])]
    if "num_paragraphs" in kw:
        out += ["\n***\n".join(["Text."] * kw["num_paragraphs"])]
    if "postscript_marker" in kw:
        out += [f"Hi.\n{kw['postscript_marker']} note", f"Hi. {kw['postscript_marker'].lower()} note"]
    if "prompt_to_repeat" in kw:
        out += [kw["prompt_to_repeat"] + "\nMy answer.", "Sure!\n" + kw["prompt_to_repeat"] + " Answer."]
    return out


def test_ifeval_checkers_agree_with_lm_eval(lab, lm_ifeval, ifeval_items):
    n_checked, n_true, disagree = 0, 0, []
    for it in ifeval_items:
        for iid, kw in zip(it["instruction_id_list"], it["kwargs"], strict=True):
            if iid not in lab.IFEVAL_SUBSET:
                continue
            if iid == "keywords:letter_frequency" and not kw["letter"].isalpha():
                continue  # lm-eval swaps a non-letter ('#', '!') for a random letter: nothing to agree with
            inp = lm_ifeval.InputExample(key=it["key"], instruction_id_list=[iid], prompt=it["prompt"], kwargs=[kw])
            for resp in _probes(iid, kw, it["prompt"]):
                ref_s = lm_ifeval.test_instruction_following_strict(inp, resp).follow_instruction_list[0]
                ref_l = lm_ifeval.test_instruction_following_loose(inp, resp).follow_instruction_list[0]
                ours_s = lab.check_instruction(iid, resp, kw)
                ours_l = lab.check_instruction_loose(iid, resp, kw)
                n_checked += 1
                n_true += ref_s
                if (ours_s, ours_l) != (ref_s, ref_l):
                    disagree.append((iid, kw, resp[:40], (ours_s, ours_l), (ref_s, ref_l)))
    assert n_checked > 10_000 and 0.1 < n_true / n_checked < 0.9, "the probes should hit both outcomes"
    assert not disagree, f"{len(disagree)} of {n_checked} checks disagree with lm-eval, e.g. (type, kwargs, response, " \
                         f"ours strict/loose, lm-eval strict/loose): {disagree[:3]}"


@pytest.mark.given
def test_punkt_list_is_what_lm_eval_needs(lab, lm_ifeval, ifeval_items):
    """The types we list as needing punkt raise LookupError without it; ours run offline."""
    first = {}
    for it in ifeval_items:
        for iid, kw in zip(it["instruction_id_list"], it["kwargs"], strict=True):
            first.setdefault(iid, (it, kw))
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab")
        have_punkt = True
    except LookupError:
        have_punkt = False
    for iid, (it, kw) in first.items():
        inp = lm_ifeval.InputExample(key=0, instruction_id_list=[iid], prompt=it["prompt"], kwargs=[kw])
        needs = "punkt" in lab.IFEVAL_NOT_IMPLEMENTED.get(iid, "")
        if needs and not have_punkt:
            with pytest.raises(LookupError):
                lm_ifeval.test_instruction_following_strict(inp, "Hello world. This is fine.")
        elif not needs:
            lm_ifeval.test_instruction_following_strict(inp, "Hello world. This is fine.")
    assert set(lab.IFEVAL_SUBSET) | set(lab.IFEVAL_NOT_IMPLEMENTED) == set(first)


def test_loose_variants_order(lab):
    r = "Sure!\n*Body* text\nBye"
    assert lab.loose_variants(r) == [r, "Sure!\nBody text\nBye", "*Body* text\nBye", "Sure!\n*Body* text",
                                     "*Body* text", "Body text\nBye", "Sure!\nBody text", "Body text"], (
        "order: response, no stars, drop first line, drop last, drop both, then those three without stars")


def test_sft_improves_ifeval_loose_accuracy(lab, tok, sft_dir, base_dir):
    items = lab.synthetic_ifeval(30, 0, "test")
    train_answers = {it["messages"][1]["content"] for it in lab.synthetic_ifeval(lab.SMALL.n_ifeval, 0, "train")}
    assert not train_answers & {it["messages"][1]["content"] for it in items}, "held-out items must be unseen"
    prompts = [it["prompt"] for it in items]
    before = lab.ifeval_scores(items, lab.generate_chat(lab.load_model(base_dir, tok), tok, prompts, 64))
    after = lab.ifeval_scores(items, lab.generate_chat(lab.load_model(sft_dir), tok, prompts, 64))
    assert after["inst_loose"] >= before["inst_loose"] + 0.2, (
        f"instruction-level loose accuracy {before['inst_loose']:.2f} -> {after['inst_loose']:.2f}")
    assert after["inst_strict"] > before["inst_strict"]


# --------------------------------------------------------------------------- length-weighted Trainer
def test_dataset_masks_prompt_and_counts_response(lab, tok):
    ds = lab.LengthWeightedDataset(tok, [("Tell me about a cat.", "I like a cat.")])
    ex = ds[0]
    sup = [t for t in ex["labels"].tolist() if t != -100]
    assert tok.decode(sup) == "I like a cat.<|im_end|>", f"supervised tokens decode to {tok.decode(sup)!r}"
    assert ex["response_length"] == len(sup), "response_length counts the supervised tokens"
    prompt = tok.apply_chat_template([{"role": "user", "content": "Tell me about a cat."}], add_generation_prompt=True,
                                     tokenize=False)
    assert tok.decode(ex["input_ids"][: len(ex["input_ids"]) - len(sup)]) == prompt


def test_collator_left_pads(lab, tok):
    ds = lab.LengthWeightedDataset(tok, [("Hi.", "Yes."), ("Tell me about the big sea today.", "It is blue and big.")])
    batch = lab.LengthCollator(tok.pad_token_id)([ds[0], ds[1]])
    n0 = len(ds[0]["input_ids"])
    T = batch["input_ids"].shape[1]
    assert T == len(ds[1]["input_ids"]) > n0
    assert batch["input_ids"][0, : T - n0].eq(tok.pad_token_id).all(), "pad on the LEFT (causal-LM convention)"
    assert batch["input_ids"][0, T - n0:].tolist() == ds[0]["input_ids"].tolist()
    assert batch["labels"][0, : T - n0].eq(-100).all(), "padded labels must be -100"
    assert batch["attention_mask"][0].tolist() == [0] * (T - n0) + [1] * n0
    assert batch["response_lengths"].tolist() == [ds[0]["response_length"], ds[1]["response_length"]]


def test_weighted_loss_equals_hand_computation(lab):
    logits, labels = _rand(B=3, T=10, seed=5, n_ignore=(7, 4, 2))
    lengths = torch.tensor([3, 6, 8])
    per = []
    for b in range(3):
        lp = F.log_softmax(logits[b, :-1], -1)
        tg = labels[b, 1:]
        m = tg != -100
        per.append(-lp[m].gather(-1, tg[m].unsqueeze(-1)).mean())
    w = [1 / 3, 1 / 6, 1 / 8]
    s = sum(w)
    hand = sum(3 * wi / s * li for wi, li in zip(w, per, strict=True)) / 3
    got = lab.length_weighted_loss(logits, labels, lengths)
    assert math.isclose(float(got), float(hand), rel_tol=1e-5), (
        f"{float(got):.5f} vs hand {float(hand):.5f}: weights 1/len normalised to sum to the batch size, "
        "times each example's own mean loss, then the mean over the batch")


def test_weighted_equals_plain_with_equal_lengths(lab, tok, base_dir):
    ds = lab.LengthWeightedDataset(tok, [("Tell me about a cat.", "I like a cat."), ("Tell me about a dog.", "I like a dog."),
                                         ("Say hi to the sun.", "Hi there, sun.")])
    feats = [ds[i] for i in range(3)]
    assert len({f["response_length"] for f in feats}) == 1
    batch = lab.LengthCollator(tok.pad_token_id)(feats)
    model = lab.load_model(base_dir, tok)
    trainer = lab.LengthWeightedTrainer.__new__(lab.LengthWeightedTrainer)  # compute_loss needs no Trainer state
    with torch.no_grad():
        weighted = trainer.compute_loss(model, dict(batch))
        plain = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert torch.allclose(weighted, plain, atol=1e-5), (
        f"with equal lengths every weight is 1: weighted {float(weighted):.5f} must equal the plain loss {float(plain):.5f}")


def test_weighted_trainer_gives_shorter_responses(lab, base_dir, tmp_path):
    pairs = lab.length_pairs(160, seed=0)
    res = lab.train_length_trainers(base_dir, pairs, steps=20, seed=0, out_dir=tmp_path)
    prompts = [f"Tell me about {t}." for t in lab._TOPICS] * 2
    means = {k: sum(lab.response_token_lengths(m, t, prompts, seed=1)) / len(prompts) for k, (m, t) in res.items()}
    assert means["weighted"] < means["plain"], (
        f"mean sampled response length: weighted {means['weighted']:.1f} vs plain {means['plain']:.1f} tokens")

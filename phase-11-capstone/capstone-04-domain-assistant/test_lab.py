"""Grader for capstone 4 (story-math assistant: synthetic data -> LoRA SFT -> DPO -> scorecard).

References: the problem generator's own answers (the teacher's solver must reproduce all of them),
Phase 8 lab 1's GSM8K answer filters, ``peft``'s ``merge_and_unload`` (merged weights and logits),
``numpy`` for the paired bootstrap, the real ``openai`` client against the teacher endpoint, and
the whole chain: the cached mini-mode run (``assistant_dir("mini")``, built once per checkout by the
self-test or by the first test that needs it), whose artifacts must reload in peft and whose
scorecard must show SFT+DPO >= SFT >= base with confidence intervals. The README's small mode
(``solution.py --small``) is the same code at a larger size and is not rebuilt by the tests.
"""
from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest
import torch

from labkit import load_lab


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------ the teacher's solver
def test_teacher_answer_reproduces_every_generated_problem(lab):
    rng = random.Random(123)
    wrong = []
    for kind in ("add", "sub"):
        for _ in range(300):
            p = lab.make_problem(rng, kind=kind)
            got = lab.teacher_answer(p["instruction"])
            if got != p["output"]:
                wrong.append((p["instruction"], p["output"], got))
    assert not wrong, (
        f"teacher_answer got {len(wrong)} of 600 generated problems wrong, e.g. {wrong[0]}. Check the operation "
        "rule: 'gives ... more' is an addition (look for ADD_WORDS before SUB_WORDS), and the answer sentence's "
        "shape follows the question ('does X have now/left', 'do they have together', 'are in the box now')")


@pytest.mark.parametrize("task", [
    "Tom has 3 apples. He likes them very much. Why does Tom like apples?",   # one number, a why-question
    "Tom has 3 apples and 4 pears. Why does Tom like apples?",                 # no operation word
    "Tom has 3 apples. He gives 5 apples to Sue. How many apples does Tom have left?",  # negative
    "Tom has 3 apples. He finds 2 more apples. What colour are the apples?",   # not a how-many question
])
def test_teacher_refuses_what_it_cannot_answer(lab, task):
    assert lab.teacher_answer(task) == lab.REFUSAL, (
        f"for {task!r} the teacher should refuse (REFUSAL): an honest teacher does not invent an answer, and the "
        "lab 6.3 quality filter then drops the item as refusal_or_meta")


@pytest.mark.given
def test_teacher_answer_rejects_non_text(lab):
    with pytest.raises(TypeError):
        lab.teacher_answer(None)


# ------------------------------------------------------------------------ the judge
@pytest.mark.parametrize("response,gold,ok", [
    ("Tom has 7 apples now.", 7, True),
    ("There are 10 cups in the box now.", 10, True),
    ("Tom has 15 apples now.", 5, False),            # substring matching would call this right
    ("Tom had 3 apples and now has 5.", 5, True),    # the last number is the answer
    ("Tom had 5 apples and now has 3.", 5, False),
    ("Tom has many apples now.", 3, False),
    ("", 3, False),
    ("The answer is 1,0.", 10, True),                # exact_match drops commas, as lm-eval does
])
def test_check_answer(lab, response, gold, ok):
    assert lab.check_answer(response, gold) is ok, (
        f"check_answer({response!r}, {gold}) should be {ok}: take the LAST number with Phase 8 lab 1's "
        "extract_answer(text, 'flexible') and compare with exact_match, never a substring test")


@pytest.mark.given
def test_check_answer_rejects_non_text(lab):
    with pytest.raises(TypeError):
        lab.check_answer(7, 7)


def test_judge_pairs_prefers_the_correct_sample(lab):
    prompts = ["p0", "p1", "p2", "p3"]
    responses = [["It is 3.", "It is 4."],             # both wrong: no preference
                 ["It is 9.", "It is 5.", "It is 5."],  # first wrong, then right
                 ["It is 2.", "It is 7."],             # first right
                 ["It is 6.", "It is 6."]]             # both right: no preference
    golds = [8, 5, 2, 6]
    pairs = lab.judge_pairs(prompts, responses, golds)
    got = [(p.prompt, p.chosen, p.rejected, p.group) for p in pairs]
    assert got == [("p1", "It is 5.", "It is 9.", "1"), ("p2", "It is 2.", "It is 7.", "2")], (
        f"got {got}. One pair per prompt whose samples disagree: the first correct sample is chosen, the first "
        "wrong one rejected, group = the prompt's index; all-right or all-wrong prompts give no pair (a tie "
        "carries no preference). Did the score lambda capture the loop's last gold? Bind it: lambda r, g=gold")


@pytest.mark.given
def test_judge_pairs_rejects_mismatched_lengths(lab):
    with pytest.raises(ValueError):
        lab.judge_pairs(["a", "b"], [["x", "y"]], [1, 2])


# ------------------------------------------------------------------------ merging adapters
def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(cfg).eval()


def test_merge_and_unwrap_equals_peft_merge_and_unload(lab, tmp_path):
    import copy

    from transformers import LlamaForCausalLM

    l2 = load_lab("phase-06-finetuning-instruction/lab-02-lora-qlora")
    base = _tiny_llama()
    plain_keys = set(base.state_dict())
    ours = copy.deepcopy(base)
    cfg = l2.LoRAConfig(r=4, alpha=8.0, target_modules=l2.LLAMA_TARGETS)
    l2.apply_lora(ours, cfg)
    l2.randomize_lora(ours, seed=1, std=0.2)
    ref = l2.peft_model(copy.deepcopy(base), cfg)
    l2.copy_lora_into_peft(ours, ref)
    ref = ref.merge_and_unload().eval()
    x = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        before = ours(input_ids=x).logits
    lab.merge_and_unwrap(ours)
    assert not l2.lora_layers(ours), "LoRALinear modules are still in the model: put each layer's .base back"
    assert set(ours.state_dict()) == plain_keys, (
        "after merge_and_unwrap the state_dict keys must be the plain model's (no '.base.' or lora_A): "
        "save_pretrained would otherwise write a checkpoint that from_pretrained cannot load")
    with torch.no_grad():
        after = ours(input_ids=x).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5,
                               msg="merged outputs differ from the adapted model's: merge before unwrapping")
    ref_sd = ref.state_dict()
    for k, v in ours.state_dict().items():
        torch.testing.assert_close(v, ref_sd[k], atol=1e-6, rtol=1e-6, msg=f"{k} differs from peft's merge_and_unload")
    assert all(p.requires_grad for p in ours.parameters()), "every parameter should be trainable again"
    ours.save_pretrained(tmp_path / "m")
    back = LlamaForCausalLM.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=x).logits, after, atol=1e-6, rtol=1e-6)


@pytest.mark.given
def test_merge_and_unwrap_without_adapters(lab):
    with pytest.raises(ValueError):
        lab.merge_and_unwrap(_tiny_llama())


# ------------------------------------------------------------------------ statistics
def test_paired_bootstrap_ci_matches_numpy(lab):
    rng = np.random.default_rng(5)
    a = (rng.random(150) < 0.6).astype(float)
    b = np.where(rng.random(150) < 0.8, a, 1 - a)
    d, lo, hi = lab.paired_bootstrap_ci(a, b, n_boot=1000, seed=3)
    r = np.random.default_rng(3)
    diffs = a - b
    means = diffs[r.integers(0, 150, size=(1000, 150))].mean(axis=1)
    want = np.quantile(means, [0.025, 0.975])
    assert d == pytest.approx(diffs.mean())
    assert (lo, hi) == pytest.approx(tuple(want), abs=1e-12), (
        "resample ITEM indices once per replicate and apply them to a - b (not to a and b separately): "
        "rng = default_rng(seed); idx = rng.integers(0, n, size=(n_boot, n))")


def test_paired_interval_is_narrower_than_unpaired(lab):
    """Two systems that agree on which items are hard: pairing removes the shared item variance."""
    ev = load_lab("phase-08-evaluation-safety/lab-01-eval-harness")
    rng = np.random.default_rng(0)
    hard = rng.random(200) < 0.5
    a = (~hard | (rng.random(200) < 0.15)).astype(float)
    b = (~hard & (rng.random(200) < 0.9)).astype(float)
    _, lo, hi = lab.paired_bootstrap_ci(a, b, seed=0)
    (alo, ahi), (blo, bhi) = ev.bootstrap_ci(a, seed=0), ev.bootstrap_ci(b, seed=1)
    unpaired = np.hypot((ahi - alo) / 2, (bhi - blo) / 2) * 2
    assert hi - lo < 0.8 * unpaired, f"paired width {hi - lo:.3f} vs unpaired {unpaired:.3f}"
    assert lo > 0, "a is clearly better here: the paired CI should exclude 0"


def test_paired_bootstrap_edge_cases(lab):
    assert lab.paired_bootstrap_ci([1.0, 0.0, 1.0], [1.0, 0.0, 1.0]) == (0.0, 0.0, 0.0)
    for a, b in (([1.0], [1.0, 0.0]), ([], []), ([float("nan")], [1.0])):
        with pytest.raises(ValueError):
            lab.paired_bootstrap_ci(a, b)


def test_win_rate(lab):
    assert lab.win_rate([True, True, False, False], [True, False, True, False]) == [0.5, 1.0, 0.0, 0.5], (
        "1 when only A is right, 0 when only B is, 0.5 for a tie (both right or both wrong)")
    with pytest.raises(ValueError):
        lab.win_rate([True], [])


# ------------------------------------------------------------------------ the teacher endpoint
def test_teacher_endpoint_through_openai_client(lab, tmp_path):
    import openai

    ds = load_lab("phase-06-finetuning-instruction/lab-03-instruction-dataset")
    seeds = ds.load_seed_tasks(lab.SEEDS_PATH)
    with lab.serve_teacher(copy_rate=0.5, unanswerable_rate=0.0) as ep:
        client = ep.client()
        assert [m.id for m in client.models.list().data] == [ep.model]
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=ep.model, messages=[])
        summary = ds.generate_raw(client, ep.model, seeds, tmp_path, ds.GenConfig(n=12, workers=2))
    assert summary.finished_now == 12 and summary.failed == 0
    records = list(ds.load_finished(tmp_path / "raw.jsonl").values())
    seed_texts = {s["instruction"] for s in seeds}
    copies = [r for r in records if r["instruction"] in seed_texts]
    assert copies, "with copy_rate 0.5 some generated tasks should be copies of the shown seeds"
    kept, reports, _ = ds.filter_pipeline(records, seeds=seeds, index=None, embedder=None, minhash_threshold=0.9)
    assert not {k["instruction"] for k in kept} & seed_texts, "copied seeds must not survive the filters"


# ------------------------------------------------------------------------ the chain (the cached mini run)
@pytest.fixture(scope="module")
def mini_run(lab):
    folder = lab.assistant_dir("mini")
    return folder, lab.load_run(folder)


def test_chain_writes_every_artifact(lab, mini_run):
    out, run = mini_run
    for rel in ("data/raw.jsonl", "data/sft.jsonl", "data/dpo.jsonl", "data/heldout.jsonl", "data/report.md",
                "sft/config.json", "dpo/model.safetensors", "sft_adapter/adapter_config.json",
                "dpo_adapter/adapter_model.safetensors", "run.json", "EVAL_REPORT.md", "MODEL_CARD.md"):
        assert (out / rel).is_file(), f"{rel} was not written"
    assert run["config"] == json.loads(lab.MINI.to_json()), "the cached run was built with another config"
    assert run["data"]["sft_examples"] == len((out / "data" / "sft.jsonl").read_text().splitlines())
    assert run["dpo"]["pairs"] == len((out / "data" / "dpo.jsonl").read_text().splitlines()) > 0
    heldout = [json.loads(x)["instruction"] for x in (out / "data" / "heldout.jsonl").read_text().splitlines()]
    train = {json.loads(x)["instruction"] for x in (out / "data" / "sft.jsonl").read_text().splitlines()}
    assert not set(heldout) & train, "a held-out problem is in the training data"


def test_adapter_reloads_in_peft(lab, mini_run):
    """The saved SFT adapter is a real peft adapter: base + adapter, merged by peft, equals sft/."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, run = mini_run
    base = AutoModelForCausalLM.from_pretrained(lab.base_model_dir(lab.MINI))
    merged = PeftModel.from_pretrained(base, out / "sft_adapter").merge_and_unload()
    sft = AutoModelForCausalLM.from_pretrained(out / "sft")
    ref = sft.state_dict()
    for k, v in merged.state_dict().items():
        torch.testing.assert_close(v, ref[k], atol=1e-5, rtol=1e-5, msg=f"{k}: sft/ is not base + its adapter")
    dpo = AutoModelForCausalLM.from_pretrained(out / "dpo").state_dict()
    assert any(not torch.equal(dpo[k], ref[k]) for k in ref), "DPO did not change the SFT weights"


def test_model_card_numbers_equal_the_run(lab, mini_run):
    out, run = mini_run
    card = (out / "MODEL_CARD.md").read_text()
    for section in ("## Intended use", "## Out of scope", "## Training data", "## Evaluation", "## Limitations"):
        assert section in card, f"the model card lacks {section!r}"
    for name, m in run["scorecard"]["models"].items():
        lo, hi = m["accuracy_ci"]
        row = f"| {name} | {100 * m['accuracy']:.1f}% [{100 * lo:.1f}%, {100 * hi:.1f}%]"
        assert row in card, f"the card's row for {name} should read {row!r}"
    assert f"{run['data']['kept']} kept" in card and f"{run['prefs']['pairs']} pairs" in card


def test_mini_scorecard_dpo_ge_sft_ge_base(lab, mini_run):
    """The capstone's claim on the tests' (mini) config. SFT must beat base with a paired CI above 0;
    SFT+DPO may tie SFT (measured: its few DPO steps change no greedy answer at this size)."""
    folder, run = mini_run
    sc = run["scorecard"]
    print("\n" + lab.scorecard_table(sc) + "\n\n" + lab.deltas_table(sc))
    assert run["data"]["sft_examples"] >= 150, f"only {run['data']['sft_examples']} SFT examples (want ~170)"
    assert sc["n"] >= 80
    assert lab.scorecard_ok(sc) == [], lab.scorecard_ok(sc)
    acc = {n: m["accuracy"] for n, m in sc["models"].items()}
    gain = next(d for d in sc["deltas"] if (d["a"], d["b"]) == ("SFT", "base"))
    assert acc["SFT"] >= acc["base"] + 0.05 and gain["ci"][0] > 0, (
        f"SFT should beat the base model with a paired CI above 0, got {acc}, SFT vs base {gain}")
    assert acc["SFT+DPO"] >= acc["SFT"], f"DPO lost accuracy: {acc}"
    for m in sc["models"].values():
        assert re.fullmatch(r"\d\.\d+", f"{m['accuracy_ci'][0]:.3f}")  # CIs are numbers, printed above


def test_mini_scorecard_is_reproducible(lab, mini_run):
    """Greedy answers of the cached SFT+DPO model, regenerated now, equal the ones the scorecard scored."""
    l1 = load_lab("phase-06-finetuning-instruction/lab-01-sft")
    folder, run = mini_run
    items = run["scorecard"]["items"][:64]  # the first generation batch, padded exactly as when scored
    tok = l1.load_tokenizer(folder / "dpo")
    model = l1.load_model(folder / "dpo", tok).eval()
    outs = l1.generate_chat(model, tok, [it["instruction"] for it in items],
                            max_new_tokens=run["config"]["max_new_tokens"], batch_size=64)
    assert outs == [it["SFT+DPO_output"] for it in items]
    assert [lab.check_answer(o, it["answer"]) for o, it in zip(outs, items)] == [it["SFT+DPO_correct"] for it in items]

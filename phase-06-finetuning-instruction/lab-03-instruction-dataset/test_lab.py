"""Grader for lab 6.3 (instruction dataset). References: a real misbehaving OpenAI-compatible server
(FastAPI + uvicorn on 127.0.0.1: invalid JSON, missing choices, plain text, sleeps, 5xx, 4xx) driven
through the real ``openai`` client; a killed subprocess for resumability; ``datasketch`` MinHash for
the from-scratch signature; exact Jaccard; fastText's lid.176 for the language heuristic;
sentence-transformers (all-MiniLM-L6-v2) for embedding dedup; the real MMLU / GSM8K / IFEval test
items from the data mirror for contamination; and the curriculum model behind ``labkit.llm_server``
for one end-to-end run."""
from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI, Request  # module level: FastAPI resolves the string annotations here
from fastapi.responses import JSONResponse, PlainTextResponse, Response

HERE = Path(__file__).resolve().parent


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- a server that misbehaves
class FlakyServer:
    """An OpenAI-lookalike whose behaviour is chosen by the request's ``model`` (prefix before "-"):

    ok        a valid completion: "Write a story about item <n>." (n counts requests)
    badjson   200, application/json, body that is not JSON
    nochoices 200, valid JSON without "choices"
    plain     200, text/plain
    slow      sleeps 2 s before answering (the client times out first)
    slowok    sleeps 0.1 s, then ok
    http500 / http400   that status with OpenAI's error body
    flaky     badjson for the first 2 requests of that model name, then ok
    failseed  badjson when the request's seed is a multiple of 6 (instruction step of items 0, 3, 6), else ok
    """

    def __init__(self) -> None:
        import uvicorn

        self.counts: Counter = Counter()
        app = FastAPI()

        def ok(n: int) -> dict:
            return {"id": f"c{n}", "object": "chat.completion", "created": 0, "model": "fake",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": f"Write a story about item {n}."}}]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            model = body["model"]
            self.counts[model] += 1
            n, kind = self.counts[model], model.split("-")[0]
            bad = Response(content="{this is not json", media_type="application/json")
            if kind == "ok":
                return ok(n)
            if kind == "badjson":
                return bad
            if kind == "nochoices":
                return {"id": "x", "object": "chat.completion"}
            if kind == "plain":
                return PlainTextResponse("I am not an API")
            if kind == "slow":
                await asyncio.sleep(2.0)
                return ok(n)
            if kind == "slowok":
                await asyncio.sleep(0.1)
                return ok(n)
            if kind in ("http500", "http400"):
                code = int(kind[4:])
                return JSONResponse({"error": {"message": "planted", "type": "x", "param": None, "code": None}},
                                    status_code=code)
            if kind == "flaky":
                return bad if n <= 2 else ok(n)
            if kind == "failseed":
                return bad if body.get("seed", 1) % 6 == 0 else ok(n)
            return JSONResponse({"error": {"message": f"unknown {model}"}}, status_code=404)

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the test server did not start"
            time.sleep(0.02)
        self.base_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"

    def client(self, timeout: float = 5.0):
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key="test", max_retries=0, timeout=timeout)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture(scope="module")
def flaky():
    srv = FlakyServer()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def seeds(lab):
    return lab.load_seed_tasks()


@pytest.fixture(scope="module")
def index(lab):
    return lab.EvalIndex.from_mirror()


@pytest.fixture(scope="module")
def embedder(lab):
    return lab.load_embedder()


MSG = [{"role": "user", "content": "hi"}]


def call(lab, flaky, model, **kw):
    kw.setdefault("retries", 2)
    kw.setdefault("backoff_s", 0.0)
    return lab.chat_with_retries(flaky.client(kw.pop("client_timeout", 5.0)), model=model, messages=MSG,
                                 max_tokens=8, **kw)


# --------------------------------------------------------------------------- given: seeds, validation
@pytest.mark.given
def test_fifty_seed_tasks_and_their_prompts_fit_the_curriculum_context(lab, seeds):
    from transformers import AutoTokenizer

    from labkit import curriculum_model_path

    assert len(seeds) == 50
    assert len({(s["instruction"], s["input"]) for s in seeds}) == 50, "seed tasks must be distinct"
    tok = AutoTokenizer.from_pretrained(curriculum_model_path("main") / "hf")
    cfg = lab.GenConfig()
    worst = 0
    for i in range(30):
        msgs = lab.build_instruction_messages(seeds, random.Random(i), cfg.k_shown)
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
        worst = max(worst, len(ids) + 1)  # + the bos the server prepends
    assert worst + cfg.max_tokens_instruction <= 256, f"prompt {worst} + reply must fit 256 tokens"


@pytest.mark.given
@pytest.mark.parametrize("ex, err", [
    ("text", TypeError), ({"instruction": "a", "output": "b"}, ValueError),
    ({"instruction": "a", "input": 3, "output": "b"}, TypeError),
    ({"instruction": "  ", "input": "", "output": "b"}, ValueError),
])
def test_validate_example_rejects_bad_records(lab, ex, err):
    with pytest.raises(err):
        lab.validate_example(ex)


@pytest.mark.given
def test_bad_arguments_raise_clear_errors(lab):
    with pytest.raises(ValueError, match="k must be"):
        lab.build_instruction_messages([{"instruction": "a", "input": "", "output": "b"}], random.Random(0), k=2)
    with pytest.raises(ValueError, match="threshold"):
        lab.minhash_dedup(["a"], threshold=0)
    with pytest.raises(ValueError, match="NaN"):
        lab.embedding_dedup(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="zero row"):
        lab.embedding_dedup(np.array([[0.0, 0.0]]))
    with pytest.raises(ValueError, match="2-D"):
        lab.embedding_dedup(np.ones(3))
    with pytest.raises(ValueError, match="retries"):
        lab.chat_with_retries(None, model="m", messages=MSG, max_tokens=1, retries=-1)
    with pytest.raises(ValueError, match="unknown benchmark"):
        lab.eval_texts("hellaswag")


# --------------------------------------------------------------------------- TODO 1: parsing
@pytest.mark.parametrize("text, want", [
    ("Write a poem about rain.", ("Write a poem about rain.", "")),
    ("4. Write a poem about rain.\n5. Another one", ("Write a poem about rain.", "")),
    ("\n\n  Task 4:  Name   two birds.  ", ("Name two birds.", "")),
    ("Instruction: Sort the words. Input: cat, ant, bee", ("Sort the words.", "cat, ant, bee")),
    ("- Fix the spelling. input:  The dgo ran.", ("Fix the spelling.", "The dgo ran.")),
    ("4)", None),
    ("   \n  ", None),
])
def test_parse_instruction(lab, text, want):
    got = lab.parse_instruction(text)
    assert got == want, (f"parse_instruction({text!r}) = {got!r}, expected {want!r}: first non-blank line only, "
                         "strip numbering/labels, split on 'Input:', collapse whitespace, None when nothing is left")


# --------------------------------------------------------------------------- TODO 2: retries against a real server
def test_a_good_response_needs_one_attempt(lab, flaky):
    text, finish, attempts = call(lab, flaky, "ok-a")
    assert text.startswith("Write a story") and finish == "stop" and attempts == 1
    assert flaky.counts["ok-a"] == 1, "a successful request must not be sent again"


def test_flaky_responses_are_retried_until_they_succeed(lab, flaky):
    text, _, attempts = call(lab, flaky, "flaky-b", retries=3)
    assert attempts == 3 and flaky.counts["flaky-b"] == 3, (
        "two invalid-JSON answers then a good one: expect 3 attempts. Are you retrying a body that is not JSON "
        "(json.JSONDecodeError, a ValueError) as 'malformed'?")
    assert text.startswith("Write a story")


@pytest.mark.parametrize("model, kind", [
    ("badjson-c", "malformed"), ("nochoices-d", "malformed"), ("plain-e", "malformed"), ("http500-f", "http_500"),
])
def test_malformed_and_server_errors_are_retried_then_reported(lab, flaky, model, kind):
    with pytest.raises(lab.GenerationError) as ei:
        call(lab, flaky, model, retries=2)
    assert ei.value.kind == kind, f"{model}: expected kind {kind!r}, got {ei.value.kind!r}"
    assert ei.value.attempts == 3 and flaky.counts[model] == 3, (
        f"{model}: retries=2 means 3 requests in all, then GenerationError; the server saw {flaky.counts[model]}")


def test_timeouts_are_retried_then_reported(lab, flaky):
    t0 = time.perf_counter()
    with pytest.raises(lab.GenerationError) as ei:
        call(lab, flaky, "slow-g", retries=1, timeout_s=0.3)
    assert ei.value.kind == "timeout" and ei.value.attempts == 2, "pass timeout_s to the request; retry timeouts"
    assert time.perf_counter() - t0 < 1.9, "the request waited for the slow server: is timeout_s passed on?"
    deadline = time.monotonic() + 3
    while flaky.counts["slow-g"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert flaky.counts["slow-g"] == 2


def test_a_bad_request_is_not_retried(lab, flaky):
    with pytest.raises(lab.GenerationError) as ei:
        call(lab, flaky, "http400-h", retries=3)
    assert ei.value.kind == "http_400" and flaky.counts["http400-h"] == 1, (
        "a 400 stays a 400: retrying it only wastes requests (and money on a hosted API)")


def test_backoff_doubles(lab, flaky):
    waits: list[float] = []
    with pytest.raises(lab.GenerationError):
        call(lab, flaky, "badjson-i", retries=3, backoff_s=0.5, sleep=waits.append)
    assert waits == [0.5, 1.0, 2.0], f"expected waits [0.5, 1.0, 2.0] (none after the last try), got {waits}"


# --------------------------------------------------------------------------- TODO 3: resumable output
def test_load_finished_repairs_a_torn_tail(lab, tmp_path):
    p = tmp_path / "raw.jsonl"
    assert lab.load_finished(p) == {}
    p.write_bytes(b'{"id": 0, "x": 1}\n{"id": 1, "x": 2}\n{"id": 0, "x": 9}\n{"id": 2, "x"')
    got = lab.load_finished(p)
    assert set(got) == {0, 1} and got[0]["x"] == 1, "keep complete lines only, first record per id"
    assert p.read_bytes() == b'{"id": 0, "x": 1}\n{"id": 1, "x": 2}\n{"id": 0, "x": 9}\n', (
        "the torn last line must be cut off the file, or the next append glues onto it")
    p.write_bytes(b'{"id": 0}\n{"id": 1, "x\n{"id": 2}\n')
    with pytest.raises(ValueError, match="2"):
        lab.load_finished(p)


def test_failures_are_reported_and_do_not_stop_the_run(lab, flaky, seeds, tmp_path):
    client = flaky.client()
    cfg = lab.GenConfig(n=7, retries=1, backoff_s=0.0, workers=2)
    s = lab.generate_raw(client, "failseed-j", seeds, tmp_path, cfg)
    raw = lab.load_finished(tmp_path / "raw.jsonl")
    errors = [json.loads(x) for x in (tmp_path / "errors.jsonl").read_text(encoding="utf-8").splitlines()]
    assert set(raw) == {1, 2, 4, 5} and {e["id"] for e in errors} == {0, 3, 6}, (
        "items 0, 3, 6 always get invalid JSON: they go to errors.jsonl, the others to raw.jsonl")
    assert all(e["kind"] == "malformed" and e["attempts"] == 2 for e in errors)
    assert s.failed == 3 and s.finished_now == 4
    assert all(r["instruction"].startswith("Write a story") and r["output"] for r in raw.values())
    # the next run (the server has recovered) only does the three failed items, two requests each
    s2 = lab.generate_raw(client, "ok-k", seeds, tmp_path, cfg)
    assert s2.already_done == 4 and flaky.counts["ok-k"] == 6, "resume must skip finished ids and redo failed ones"
    assert set(lab.load_finished(tmp_path / "raw.jsonl")) == set(range(7))


def test_a_killed_run_resumes_without_redoing_finished_items(lab, flaky, seeds, tmp_path):
    script = (
        "import sys, openai\n"
        "from labkit import load_lab\n"
        "L = load_lab(sys.argv[1])\n"
        "c = openai.OpenAI(base_url=sys.argv[2], api_key='x', max_retries=0, timeout=5)\n"
        "L.generate_raw(c, 'slowok-l', L.load_seed_tasks(), sys.argv[3], L.GenConfig(n=40, workers=1, retries=0))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", script, lab.__file__, flaky.base_url, str(tmp_path)],
                            cwd=HERE.parents[1], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    raw = tmp_path / "raw.jsonl"
    deadline = time.monotonic() + 60
    try:
        while not (raw.exists() and raw.read_bytes().count(b"\n") >= 3):
            if proc.poll() is not None:
                pytest.fail("the generating subprocess exited before writing 3 items:\n"
                            + proc.stderr.read().decode()[-1500:])
            assert time.monotonic() < deadline, "no 3 items within 60 s"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    before = raw.read_bytes()
    finished = lab.load_finished(raw)
    done = set(finished)
    assert done == set(range(len(done))) and len(done) >= 3
    with open(raw, "ab") as f:  # and as if the kill had torn a line in half
        f.write(b'{"id": 77, "raw_instruction": "Wri')
    n = len(done) + 3
    lab.generate_raw(flaky.client(), "ok-m", seeds, tmp_path, lab.GenConfig(n=n, workers=1))
    assert flaky.counts["ok-m"] == 2 * 3, (
        f"{len(done)} items were finished before the kill; resuming to n={n} should send 2 requests for each of "
        f"the 3 missing items, not {flaky.counts['ok-m']}")
    after = raw.read_bytes()
    assert after.startswith(before[:before.rfind(b"\n") + 1]), "finished lines must stay untouched"
    got = lab.load_finished(raw)
    assert set(got) == set(range(n)) and after.count(b"\n") == n, "each id exactly once"
    assert all(got[i] == finished[i] for i in done)


# --------------------------------------------------------------------------- TODO 4/5: heuristics
EN = ["Write a short story about a dog who is afraid of the rain.",
      "The children went to the park after school and played until dinner.",
      "Explain why the sky looks blue on a clear day.",
      "Give three tips for staying healthy during the winter months.",
      "She was so happy that she ran all the way home to tell her mother."]
OTHER = ["Le petit chat dort sur le canapé pendant que nous mangeons le dîner.",
         "Der kleine Hund spielt jeden Tag mit seinem roten Ball im Garten.",
         "El niño come una manzana y después juega con sus amigos en el parque.",
         "Il ragazzo legge un libro mentre sua sorella guarda la televisione.",
         "De kinderen spelen buiten in de tuin totdat het donker wordt.",
         "O menino foi para a escola com a sua irmã e os seus amigos.",
         "Маленькая собака играет с мячом в саду каждый день.",
         "小猫在沙发上睡觉，我们在吃晚饭。",
         "Το μικρό σκυλί παίζει με την μπάλα στον κήπο."]


def test_is_english_agrees_with_fasttext_lid(lab):
    import fasttext

    from labkit import dataset_path

    ft = fasttext.load_model(str(dataset_path("fasttext-lid", "lid.176.ftz")))
    texts = EN + OTHER + [ex["output"] for ex in lab.load_seed_tasks() if len(ex["output"].split()) >= 8]
    labels, _ = ft.predict(texts, k=1)
    ref = [lbl[0] == "__label__en" for lbl in labels]
    ours = [lab.is_english(t) for t in texts]
    agree = np.mean([a == b for a, b in zip(ours, ref)])
    assert agree >= 0.9, (f"is_english agrees with fastText lid.176 on {agree:.0%} of {len(texts)} texts "
                          "(need 90%): Latin script AND a share of English function words")
    assert not any(lab.is_english(t) for t in OTHER), "French/German/... sentences passed as English"
    assert all(lab.is_english(t) for t in EN)
    assert lab.is_english("Name two birds.") and not lab.is_english("1234 5678 !!!")


def test_repetition_ratio(lab):
    assert lab.repetition_ratio("He was so happy. He was so happy. He was so happy.") == pytest.approx(1 - 4 / 10)
    assert lab.repetition_ratio("one two three four five") == 0.0
    assert lab.repetition_ratio("too short") == 0.0
    assert lab.repetition_ratio("a a a a", n=1) == pytest.approx(0.75), "1 - unique/total, case and punctuation folded"


@pytest.mark.given
def test_quality_checks_catch_what_they_name(lab):
    good = {"instruction": "Write a sentence about a cat.", "input": "", "output": "The cat sat in the sun.",
            "finish_reason": "stop"}
    assert all(ok(good) for name, ok in lab.QUALITY_CHECKS.items() if name != "repetitive_output")
    bad = {
        "not_an_instruction": dict(good, instruction="The man looked at the park."),
        "truncated_output": dict(good, finish_reason="length"),
        "few_letters": dict(good, output="1234 5678 90 ### $$$ %%% 111"),
        "copies_instruction": dict(good, output="Write a sentence about a cat. OK"),
        "refusal_or_meta": dict(good, output="I'm sorry, I cannot do that."),
    }
    for name, ex in bad.items():
        assert not lab.QUALITY_CHECKS[name](ex), name


def test_repetitive_output_check(lab):
    ex = {"instruction": "Tell a story.", "input": "", "output": "He was so happy. " * 6, "finish_reason": "stop"}
    assert not lab.QUALITY_CHECKS["repetitive_output"](ex), "a looping output must fail repetitive_output"


# --------------------------------------------------------------------------- TODO 6-8: MinHash
def test_shingles_and_jaccard(lab):
    assert lab.shingles("Hello, World!", k=5) == {"hello", "ello ", "llo w", "lo wo", "o wor", " worl", "world"}, (
        "shingle normalize(text): lowercase, punctuation removed, whitespace collapsed")
    assert lab.shingles("Hi!", k=5) == {"hi"} and lab.shingles("  ", k=5) == set()
    assert lab.jaccard(lab.shingles("the cat sat"), lab.shingles("The cat sat.")) == 1.0


def test_minhash_signature_estimates_jaccard_like_datasketch(lab):
    from datasketch import MinHash

    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(400)]
    errs_ours, errs_ds = [], []
    for _ in range(25):
        a = set(rng.sample(vocab, 120))
        b = set(rng.sample(sorted(a), rng.randrange(20, 120))) | set(rng.sample(vocab, rng.randrange(0, 60)))
        j = lab.jaccard(a, b)
        sa, sb = lab.minhash_signature(a, 256), lab.minhash_signature(b, 256)
        assert sa.shape == (256,) and sa.dtype == np.uint64
        est = float(np.mean(sa == sb))
        ma, mb = MinHash(num_perm=256), MinHash(num_perm=256)
        ma.update_batch([s.encode() for s in a])
        mb.update_batch([s.encode() for s in b])
        errs_ours.append(abs(est - j))
        errs_ds.append(abs(ma.jaccard(mb) - j))
        assert abs(est - j) < 4 * np.sqrt(j * (1 - j) / 256) + 0.02, (
            f"estimate {est:.3f} vs true Jaccard {j:.3f}: is it the min over the set, per permutation?")
    assert np.mean(errs_ours) < 2 * np.mean(errs_ds) + 0.01, (
        f"mean |error| ours {np.mean(errs_ours):.3f} vs datasketch {np.mean(errs_ds):.3f}")
    assert (lab.minhash_signature({"x", "y"}, 64) == lab.minhash_signature({"y", "x"}, 64)).all()


def test_minhash_dedup_planted_near_duplicates(lab):
    texts, edits, paras = lab.planted_duplicates(n_base=80, n_edits=40)
    removed = set(range(len(texts))) - set(lab.minhash_dedup(texts))
    distinct = set(range(len(texts))) - edits - paras
    precision, _ = lab.precision_recall(removed, edits | paras)
    recall_edits = len(removed & edits) / len(edits)
    print(f"MinHash: precision {precision:.3f}, recall on edits {recall_edits:.3f}, "
          f"distinct kept {len(distinct - removed) / len(distinct):.3f}")
    assert recall_edits >= 0.9, f"only {recall_edits:.0%} of one-edit copies removed: Jaccard >= threshold counts"
    assert precision >= 0.95 and not (removed & distinct), (
        "distinct tasks were removed: keep the FIRST occurrence, and verify LSH candidates with exact Jaccard")


def test_minhash_dedup_drops_copies_of_the_reference(lab, seeds):
    ref = [s["instruction"] for s in seeds]
    texts = ["write a two sentence story about a cat who finds a red ball", "Describe how a rocket reaches orbit.",
             "Describe how a rocket reaches orbit!"]
    assert lab.minhash_dedup(texts, reference=ref) == [1], "a copy of a seed and a second copy must both go"


# --------------------------------------------------------------------------- TODO 9: embeddings
def test_embedding_dedup_is_greedy_over_normalized_rows(lab):
    def at(deg: float, r: float = 1.0) -> list[float]:
        return [r * np.cos(np.radians(deg)), r * np.sin(np.radians(deg))]

    e = np.array([at(0), at(10, 0.1), at(20), at(40), at(90)])
    assert lab.embedding_dedup(e, threshold=0.9) == [0, 3, 4], (
        "row 1 is a short near-copy of row 0 (normalize rows first!); row 3 is close to row 2, which was "
        "dropped: compare with the KEPT rows only")
    assert lab.embedding_dedup(e, threshold=0.9, reference=np.array([at(90, 5.0)])) == [0, 3], (
        "reference rows count as already kept")
    # brute force on random data
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8))
    kept = lab.embedding_dedup(x, threshold=0.5)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    ref_kept = []
    for i in range(len(x)):
        if all(xn[i] @ xn[j] < 0.5 for j in ref_kept):
            ref_kept.append(i)
    assert kept == ref_kept


def test_embeddings_catch_paraphrases_minhash_misses(lab, embedder):
    from sentence_transformers import util

    texts, edits, paras = lab.planted_duplicates(n_base=60, n_edits=20)
    emb = lab.embed(embedder, texts)
    ref = util.cos_sim(emb[:5], emb[:5]).numpy()
    assert np.allclose(emb[:5] @ emb[:5].T, ref, atol=1e-5)
    distinct = set(range(len(texts))) - edits - paras
    em_removed = set(range(len(texts))) - set(lab.embedding_dedup(emb, threshold=0.8))
    mh_removed = set(range(len(texts))) - set(lab.minhash_dedup(texts))
    em_p = len(em_removed & paras) / len(paras)
    mh_p = len(mh_removed & paras) / len(paras)
    print(f"paraphrase recall: embedding {em_p:.2f}, MinHash {mh_p:.2f}")
    assert em_p >= 0.3 and em_p > mh_p, "embedding dedup should remove paraphrases MinHash cannot see"
    assert len(em_removed & distinct) <= 1 and len(em_removed & edits) / len(edits) >= 0.9


# --------------------------------------------------------------------------- TODO 10: contamination
def test_word_ngrams(lab):
    assert lab.word_ngrams("The cat, the HAT.", n=2) == {"the cat", "cat the", "the hat"}
    assert lab.word_ngrams("too short", n=3) == set()


def test_planted_contamination_is_flagged(lab, index):
    examples, planted = lab.planted_contamination()
    flagged = {i for i, ex in enumerate(examples) if index.contaminated(lab._full_text(ex))}
    p, r = lab.precision_recall(flagged, planted)
    print(f"contamination: {len(planted)} planted, flagged {len(flagged)}, precision {p:.3f}, recall {r:.3f}")
    assert r == 1.0, "a quoted test item (lowercased, prefixed) was missed: compare normalized word n-grams"
    assert p >= 0.95
    q = lab.eval_texts("gsm8k")[5]
    assert index.contaminated("Solve this: " + q.upper()) == ["gsm8k"]


# --------------------------------------------------------------------------- the pipeline
def test_filter_pipeline_counts_each_stage(lab, seeds, index, embedder):
    g = {"instruction": "Write a sentence about a brave turtle.", "input": "",
         "output": "The brave turtle crossed the busy road slowly.", "finish_reason": "stop"}
    gsm = lab.eval_texts("gsm8k")[0]
    records = [
        dict(g, id=0),
        dict(g, id=1, instruction=None, output=None),                      # parse
        dict(g, id=2, output=" ".join(["word"] * 500)),                     # length
        dict(g, id=3, output="Le chat dort sur le canapé et nous mangeons le dîner ensemble."),  # language
        dict(g, id=4, instruction="The man looked at the park and smiled."),  # quality
        dict(g, id=5, instruction="Solve the following problem.", input=gsm),  # contamination
        dict(g, id=6, instruction="write a sentence about a brave turtle"),  # minhash dup of 0
        dict(g, id=7, instruction="Give a word that rhymes with cat."),     # minhash dup of a seed
        dict(g, id=8, instruction="Compose a sentence describing a brave turtle."),  # embedding dup of 0 (cos 0.97, J 0.38)
        dict(g, id=9, instruction="List two things you can find in a kitchen.", output="A spoon and a pot."),
    ]
    kept, reports, dropped = lab.filter_pipeline(records, seeds=seeds, index=index, embedder=embedder,
                                                 embedding_threshold=0.8)
    by = {r.stage: r.dropped for r in reports}
    assert by == {"parse": 1, "length": 1, "language": 1, "quality": 1, "contamination": 1,
                  "minhash dedup": 2, "embedding dedup": 1}, by
    assert [k["instruction"] for k in kept] == [g["instruction"], records[9]["instruction"]]
    assert all(set(k) == {"instruction", "input", "output"} for k in kept)
    assert len(dropped) + len(kept) == len(records)


def test_end_to_end_with_the_curriculum_model(lab, llm_endpoint, seeds, index, tmp_path):
    cfg = lab.GenConfig(n=3, workers=1)
    s = lab.generate_raw(llm_endpoint.client(max_retries=0), llm_endpoint.model, seeds, tmp_path, cfg)
    raw = lab.load_finished(tmp_path / "raw.jsonl")
    assert s.finished_now + s.failed == 3 and set(raw) <= {0, 1, 2}
    kept, reports, _ = lab.filter_pipeline([raw[i] for i in sorted(raw)], seeds=seeds, index=index, embedder=None)
    assert sum(r.dropped for r in reports) + len(kept) == len(raw)
    assert all(isinstance(r["raw_instruction"], str) and r["raw_instruction"] for r in raw.values())

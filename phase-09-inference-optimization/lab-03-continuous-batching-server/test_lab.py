"""Grader for lab 9.3 (continuous batching server). References: Hugging Face ``generate`` (greedy)
on the curriculum model's HF export, a plain unpadded MiniGPT forward (logits), HF
``TopPLogitsWarper`` (nucleus), the tokenizer's own ``decode``, ``numpy.percentile``, and a real
uvicorn on 127.0.0.1 driven by ``httpx`` and the ``openai`` client."""
from __future__ import annotations

import asyncio
import json
import time

import httpx
import numpy as np
import pytest
import torch

from labkit import curriculum_model_path, seed_everything

PROMPTS = [
    "Once upon a time", "One day, a little girl named Lily", "Tom had a red ball.", "The sun was hot and",
    "There was a big dog", "Mom said,", "In the park, the kids", "A small cat saw a bird",
    "Ben and Mia went to the sea.", "The old man had a garden", "Sara liked to draw", "It was a rainy day",
    "The little fish", "Max found a box", "After lunch, Anna", "The king had a shiny crown",
]
LENS = [10 + 3 * (i % 5) for i in range(len(PROMPTS))]   # different lengths: rows finish at different steps
EOS = (0, 2)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def served(lab):
    torch.set_num_threads(1)
    return lab.load_served_model("main")


@pytest.fixture(scope="module")
def hf_reference(served):
    """Greedy continuations of PROMPTS (BOS + prompt) by HF ``generate`` on the exported model, cut at EOS."""
    from transformers import AutoModelForCausalLM

    _, tok = served
    hf = AutoModelForCausalLM.from_pretrained(curriculum_model_path("main") / "hf", dtype=torch.float32).eval()
    refs = {}
    for prompt, n in zip(PROMPTS, LENS):
        ids = [0, *tok.encode(prompt, add_special_tokens=False)]
        with torch.inference_mode():
            out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                              max_new_tokens=n, do_sample=False, eos_token_id=list(EOS), pad_token_id=3)
        new = out[0, len(ids):].tolist()
        cut = next((i for i, t in enumerate(new) if t in EOS), len(new))
        refs[prompt] = (ids, new[:cut])
    return refs


@pytest.fixture(scope="module")
def server(lab, served):
    """A real uvicorn on 127.0.0.1 (free port) over an engine with room for 16 sequences."""
    model, tok = served
    engine = lab.Engine(model, tok, max_batch_size=16, max_waiting=64)
    with lab.serve_in_thread(engine) as ep:
        yield ep, engine


def _fake_cache(lab, B, T, n_layer=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = lab.BatchKVCache()
    for layer in range(n_layer):
        c.update(torch.randn(B, 2, T, 4, generator=g), torch.randn(B, 2, T, 4, generator=g), layer)
    c.mask = torch.ones(B, T, dtype=torch.int64)
    return c


# ----------------------------------------------------------------------------------------------
# the batched cache
# ----------------------------------------------------------------------------------------------


def test_concat_left_pads_every_cache_to_the_longest(lab):
    a, b = _fake_cache(lab, 2, 3, seed=1), _fake_cache(lab, 1, 5, seed=2)
    a.mask[1, 0] = 0                                     # row 1 of a was already padded by one column
    c = lab.BatchKVCache.concat([a, b])
    assert c.batch_size == 3 and c.get_seq_length() == 5, \
        f"concat of B=2,T=3 and B=1,T=5 must be B=3,T=5, got B={c.batch_size}, T={c.get_seq_length()}"
    for layer in range(2):
        assert c.keys[layer].shape == (3, 2, 5, 4)
        assert torch.equal(c.keys[layer][:2, :, 2:], a.keys[layer]), \
            "a's real columns must be the LAST 3 columns of its rows (left padding), not the first"
        assert torch.equal(c.values[layer][2:], b.values[layer]), "rows keep their order: a's rows, then b's"
        assert torch.count_nonzero(c.keys[layer][:2, :, :2]) == 0, "padded key columns must be zeros"
    expected = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 1, 1], [1, 1, 1, 1, 1]])
    assert torch.equal(c.mask, expected), \
        f"the mask must be left-padded with 0 too (keeping a row's own padding):\n{c.mask}\nexpected\n{expected}"
    with pytest.raises(ValueError):
        lab.BatchKVCache.concat([])


def test_select_keeps_rows_and_trims_shared_padding(lab):
    a, b = _fake_cache(lab, 1, 6, seed=3), _fake_cache(lab, 2, 2, seed=4)
    c = lab.BatchKVCache.concat([a, b])                  # row 0 long (6), rows 1-2 short (2 real, 4 pad)
    s = c.select([2, 1])
    assert s.batch_size == 2 and s.get_seq_length() == 2, \
        ("after evicting the long row, the 4 columns that are padding in every remaining row must be cut "
         f"(T 6 -> 2); got T={s.get_seq_length()}")
    assert torch.equal(s.keys[1], b.keys[1][[1, 0]]), "select must keep the rows in the order asked"
    assert torch.equal(s.mask, torch.ones(2, 2, dtype=torch.int64))
    keep = c.select([0, 2])
    assert keep.get_seq_length() == 6 and torch.equal(keep.mask[1], torch.tensor([0, 0, 0, 0, 1, 1])), \
        "with the long row kept nothing can be trimmed"
    assert c.select([]) is None
    with pytest.raises(IndexError):
        c.select([3])


# ----------------------------------------------------------------------------------------------
# prefill and decode on the real model
# ----------------------------------------------------------------------------------------------


def _alone(model, ids):
    with torch.inference_mode():
        return model(torch.tensor([ids]))[0][0, -1]


def test_prefill_gives_each_prompt_its_unpadded_logits(lab, served):
    model, tok = served
    prompts = [[0, *tok.encode(p, add_special_tokens=False)] for p in PROMPTS[:4]]
    assert len({len(p) for p in prompts}) > 1
    logits, cache = lab.prefill(model, prompts)
    assert logits.shape == (4, model.config.vocab_size), f"prefill returns the LAST position's logits (B, V), got {tuple(logits.shape)}"
    assert cache.get_seq_length() == max(map(len, prompts)) and cache.batch_size == 4
    for b, p in enumerate(prompts):
        diff = (logits[b] - _alone(model, p)).abs().max().item()
        assert diff < 1e-4, (f"row {b} (len {len(p)}) differs from the prompt alone by {diff:.2e}: pad on the LEFT, "
                             "and pass attention_mask so padding is masked and positions start at the first real token")
        assert torch.equal(cache.mask[b], torch.tensor([0] * (cache.get_seq_length() - len(p)) + [1] * len(p))), \
            "cache.mask must mark the real (right-hand) columns of each row with 1"
    with pytest.raises(ValueError):
        lab.prefill(model, [[0, 5], []])


def test_decode_with_admissions_and_evictions_matches_each_sequence_alone(lab, served):
    """Run the batch the way the engine does (prefill, decode, admit more, evict some), feeding
    known tokens, and compare every row's logits with a plain forward of that row's tokens."""
    model, tok = served
    seqs = [[0, *tok.encode(p, add_special_tokens=False)] for p in PROMPTS[4:9]]
    rows = [list(seqs[0]), list(seqs[1])]
    feeds = [[7, 9, 11, 13, 15, 17], [21, 23, 25, 27]]
    _, cache = lab.prefill(model, rows)
    for step in range(6):
        if step == 2:                                     # admit two more mid-batch
            _, new = lab.prefill(model, [seqs[2], seqs[3]])
            cache = lab.BatchKVCache.concat([cache, new])
            rows += [list(seqs[2]), list(seqs[3])]
            feeds += [[41, 43, 45, 47], [51, 53, 55, 57]]
        if step == 4:                                     # row 1 is done: evict it
            cache = cache.select([0, 2, 3])
            rows, feeds = [rows[0], rows[2], rows[3]], [feeds[0], feeds[2], feeds[3]]
        tokens = [f.pop(0) for f in feeds]
        logits = lab.decode_step(model, cache, torch.tensor(tokens))
        for i, t in enumerate(tokens):
            rows[i].append(t)
            diff = (logits[i] - _alone(model, rows[i])).abs().max().item()
            assert diff < 1e-4, (f"step {step}, row {i}: logits differ from the sequence alone by {diff:.2e}. Does "
                                 "each row's new token get position = its REAL length (not the padded length)? "
                                 "Is the new mask column 1 and is cache.mask updated after the forward?")
    assert cache.get_seq_length() == max(len(r) for r in rows)


# ----------------------------------------------------------------------------------------------
# sampling and text
# ----------------------------------------------------------------------------------------------


def test_sample_next_greedy_seeded_and_nucleus(lab):
    from transformers.generation.logits_process import TopPLogitsWarper

    seed_everything(0)
    logits = torch.randn(3, 12) * 2
    greedy = lab.SamplingParams(temperature=0.0)
    assert lab.sample_next(logits, [greedy] * 3, [None] * 3) == logits.argmax(-1).tolist(), "temperature 0 is argmax"
    p = lab.SamplingParams(temperature=0.8, top_p=0.7)
    draws = [lab.sample_next(logits, [p] * 3, [torch.Generator().manual_seed(k)] * 3) for k in (5, 5)]
    assert draws[0] == draws[1], "the same seed must give the same tokens (use the request's generator)"
    warped = TopPLogitsWarper(0.7)(None, logits[:1] / 0.8)
    allowed = set(torch.nonzero(torch.isfinite(warped[0])).flatten().tolist())
    expected = torch.softmax(warped[0], -1)
    g = torch.Generator().manual_seed(1)
    counts = torch.zeros(12)
    for _ in range(3000):
        counts[lab.sample_next(logits[:1], [p], [g])[0]] += 1
    seen = set(torch.nonzero(counts).flatten().tolist())
    assert seen <= allowed, (f"sampled tokens {sorted(seen - allowed)} outside HF's top-p nucleus {sorted(allowed)} of "
                             "softmax(logits / T): divide by the temperature BEFORE the nucleus cut, and keep the "
                             "smallest set whose mass reaches top_p (the top token always stays)")
    tv = 0.5 * (counts / 3000 - expected).abs().sum().item()
    assert tv < 0.05, f"sampling distribution is {tv:.3f} (total variation) from softmax(top_p(logits / T)); divide by T?"


def test_text_assembler_cuts_stop_strings_and_holds_back(lab, served):
    _, tok = served
    text = "Tom saw a big red dog. The dog ran to the park."
    ids = tok.encode(text, add_special_tokens=False)
    plain = lab.TextAssembler(tok)
    pieces = [plain.push(t) for t in ids]
    assert "".join(pieces) + plain.flush() == tok.decode(ids, skip_special_tokens=True), \
        "without stop strings the pieces must add up to tokenizer.decode(all ids)"
    asm = lab.TextAssembler(tok, stop=["dog"])
    out = ""
    for t in ids:
        out += asm.push(t)
        if asm.stopped:
            break
    assert asm.stopped, "'dog' occurs in the text: stopped must become True"
    assert out == "Tom saw a big red ", f"the text must end right before the stop string, got {out!r}"
    held = lab.TextAssembler(tok, stop=["the park!"])
    sent = "".join(held.push(t) for t in ids)
    assert "the park." not in sent and text.startswith(sent), \
        "while the tail could still grow into a stop string it must be held back (longest stop - 1 characters)"
    assert sent + held.flush() == tok.decode(ids, skip_special_tokens=True)


# ----------------------------------------------------------------------------------------------
# the engine, without HTTP
# ----------------------------------------------------------------------------------------------


def test_engine_greedy_equals_hf_generate_with_mid_batch_arrivals(lab, served, hf_reference):
    model, tok = served
    engine = lab.Engine(model, tok, max_batch_size=6, max_waiting=32)
    seqs = {}
    for i, prompt in enumerate(PROMPTS):
        seqs[prompt] = engine.submit(hf_reference[prompt][0], lab.SamplingParams(max_tokens=LENS[i], temperature=0))
        if i % 2:
            engine.step()
            assert len(engine.running) <= 6, "never run more than max_batch_size sequences"
    while engine.has_work:
        engine.step()
        assert len(engine.running) <= 6, "never run more than max_batch_size sequences"
    bad = [p for p in PROMPTS if seqs[p].out_ids != hf_reference[p][1]]
    assert not bad, (f"{len(bad)} of {len(PROMPTS)} greedy outputs differ from HF generate, e.g. {bad[0]!r}: "
                     f"{seqs[bad[0]].out_ids} vs {hf_reference[bad[0]][1]}")
    assert engine.stats["admitted_mid_batch"] > 0, "requests that arrive while others run must join the batch"
    assert engine.stats["max_running"] == 6, "with 16 requests queued the batch should fill to max_batch_size"
    assert engine.cache is None and not engine.running, "finished sequences must be evicted (cache rows dropped)"
    reasons = {seqs[p].finish_reason for p in PROMPTS}
    assert reasons <= {"length", "stop"}, reasons


def test_engine_frees_cancelled_sequences(lab, served):
    model, tok = served
    engine = lab.Engine(model, tok, max_batch_size=2, max_waiting=2)
    a = engine.submit([0, 50, 60], lab.SamplingParams(max_tokens=100, temperature=0))
    b = engine.submit([0, 70], lab.SamplingParams(max_tokens=100, temperature=0))
    engine.step()
    c = engine.submit([0, 80], lab.SamplingParams(max_tokens=3, temperature=0))
    d = engine.submit([0, 90], lab.SamplingParams(max_tokens=3, temperature=0))
    with pytest.raises(lab.QueueFull):
        engine.submit([0, 99], lab.SamplingParams(max_tokens=3))
    engine.cancel(a)
    engine.cancel(c)
    a.append_token(5)   # a token that a running step produced just after the client left: ignored, no crash
    engine.step()
    assert a not in engine.running and a.finish_reason == "cancelled", "a cancelled sequence must leave the batch"
    assert c.finish_reason == "cancelled" and d in engine.running, \
        "a cancelled WAITING request is skipped, and its slot goes to the next one"
    assert engine.cache.batch_size == len(engine.running) == 2, "the cache must drop the cancelled row"
    engine.cancel(b)
    while engine.has_work:
        engine.step()
    assert len(d.out_ids) == 3 and d.finish_reason == "length"


# ----------------------------------------------------------------------------------------------
# over HTTP: a real uvicorn
# ----------------------------------------------------------------------------------------------


async def _stream(client: httpx.AsyncClient, url: str, body: dict) -> tuple[str, dict | None, str | None]:
    text, usage, finish = "", None, None
    async with client.stream("POST", url, json={**body, "stream": True, "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200, (await r.aread()).decode()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            msg = json.loads(line[6:])
            usage = msg.get("usage") or usage
            for ch in msg["choices"]:
                text += ch.get("text") or (ch.get("delta") or {}).get("content") or ""
                finish = ch.get("finish_reason") or finish
    return text, usage, finish


@pytest.mark.parametrize("concurrency", [1, 4, 16])
def test_http_greedy_equals_single_request_under_concurrency(server, served, hf_reference, concurrency):
    ep, engine = server
    _, tok = served
    url = ep.base_url + "/completions"
    before = engine.stats["admitted_mid_batch"]

    async def go():
        gate = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(timeout=120) as client:
            async def one(i, prompt):
                await asyncio.sleep(0.04 * i)                      # staggered: arrivals land mid-batch
                async with gate:
                    body = {"model": ep.model, "prompt": prompt, "max_tokens": LENS[i], "temperature": 0}
                    if i % 2:
                        return await _stream(client, url, body)
                    r = await client.post(url, json=body)
                    assert r.status_code == 200, r.text
                    j = r.json()
                    return j["choices"][0]["text"], j["usage"], j["choices"][0]["finish_reason"]
            return await asyncio.gather(*(one(i, p) for i, p in enumerate(PROMPTS)))

    results = asyncio.run(go())
    for prompt, (text, usage, _finish) in zip(PROMPTS, results):
        ref = hf_reference[prompt][1]
        assert text == tok.decode(ref, skip_special_tokens=True), \
            (f"concurrency {concurrency}: {prompt!r} -> {text!r}, but greedy alone (HF generate) gives "
             f"{tok.decode(ref, skip_special_tokens=True)!r}: batching must not change a row's numbers")
        assert usage["completion_tokens"] == len(ref)
    if concurrency > 1:
        assert engine.stats["admitted_mid_batch"] > before, "no request joined a running batch: is admission per step?"


def test_chat_completion_matches_greedy_on_the_chat_template(server, served):
    ep, _ = server
    model, tok = served
    messages = [{"role": "user", "content": "Tell me about a dog."}]
    ids = tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
                     add_special_tokens=False)
    ids = ids if ids[:1] == [0] else [0, *ids]
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), 12, temperature=0.0)[0, len(ids):].tolist()
    cut = next((i for i, t in enumerate(out) if t in EOS), len(out))
    reply = ep.client().chat.completions.create(model=ep.model, messages=messages, max_tokens=12, temperature=0)
    assert reply.choices[0].message.content == tok.decode(out[:cut], skip_special_tokens=True)
    chunks = ep.client().chat.completions.create(model=ep.model, messages=messages, max_tokens=12, temperature=0,
                                                 stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply.choices[0].message.content


def test_concurrent_streams_all_complete_with_full_token_counts(lab, server):
    ep, _ = server
    prompts = [PROMPTS[i % 4] + " and" for i in range(12)]
    results, wall = asyncio.run(lab.run_load(ep.base_url, ep.model, prompts, concurrency=12, max_tokens=40,
                                             temperature=1.0))
    assert all(r.status == 200 and r.error is None for r in results), [r.error for r in results if r.error]
    for r in results:
        assert r.finish_reason == "length" and r.completion_tokens == 40, \
            f"with ignore_eos every stream must carry all 40 tokens, got {r.completion_tokens} ({r.finish_reason})"
        assert r.t_first is not None and r.text and len(r.chunk_times) >= 20
    stats = lab.summarize(results, wall)
    assert stats["ok"] == 12 and stats["tokens"] == sum(r.completion_tokens for r in results)


def test_seed_and_stop_over_http(server):
    """A seeded sampled request gives the same text alone and in a crowd (its own generator);
    a stop string ends the text before it, with finish_reason "stop"."""
    ep, _ = server
    url = ep.base_url + "/completions"
    seeded = {"model": ep.model, "prompt": "Lily saw a", "max_tokens": 16, "temperature": 0.9, "top_p": 0.9,
              "seed": 1234, "ignore_eos": True}

    async def go():
        async with httpx.AsyncClient(timeout=120) as client:
            alone = (await client.post(url, json=seeded)).json()
            crowd = [client.post(url, json={"model": ep.model, "prompt": p, "max_tokens": 12, "temperature": 1.0})
                     for p in PROMPTS[:6]]
            together = await asyncio.gather(client.post(url, json=seeded), *crowd)
            stopped = (await client.post(url, json={"model": ep.model, "prompt": "Once upon a time", "max_tokens": 40,
                                                    "temperature": 0, "stop": [" was"]})).json()
            return alone, together[0].json(), stopped

    alone, crowded, stopped = asyncio.run(go())
    assert alone["choices"][0]["text"] == crowded["choices"][0]["text"], \
        "the same seed must give the same text whatever else is in the batch: sample each row with its own generator"
    assert " was" not in stopped["choices"][0]["text"] and stopped["choices"][0]["finish_reason"] == "stop", stopped


def test_summarize_percentiles_match_numpy(lab):
    rng = np.random.default_rng(0)
    results = []
    for i in range(9):
        times = np.cumsum(rng.uniform(0.01, 0.05, size=5)) + i
        results.append(lab.RequestResult(t_start=float(i), t_first=float(times[0]), chunk_times=times.tolist(),
                                         completion_tokens=5))
    results.append(lab.RequestResult(t_start=0.0, status=429, error="busy"))
    s = lab.summarize(results, wall_s=10.0)
    ttft = [(r.t_first - r.t_start) * 1e3 for r in results[:9]]
    itl = [d * 1e3 for r in results[:9] for d in np.diff(r.chunk_times)]
    for q in (50, 90, 99):
        assert s[f"ttft_p{q}"] == pytest.approx(np.percentile(ttft, q)), f"TTFT p{q}: use numpy's linear interpolation"
        assert s[f"itl_p{q}"] == pytest.approx(np.percentile(itl, q)), f"ITL p{q}"
    assert s["tok_s"] == pytest.approx(4.5) and s["failed"] == 1


def test_disconnected_clients_free_their_slots(lab, served):
    model, tok = served
    engine = lab.Engine(model, tok, max_batch_size=2, max_waiting=4)
    with lab.serve_in_thread(engine) as ep:
        url = ep.base_url + "/completions"

        async def go():
            async with httpx.AsyncClient(timeout=60) as client:
                for _ in range(2):
                    body = {"model": ep.model, "prompt": "Once upon a time", "max_tokens": 200, "stream": True,
                            "ignore_eos": True}
                    async with client.stream("POST", url, json=body) as r:
                        n = 0
                        async for line in r.aiter_lines():
                            n += line.startswith("data: ")
                            if n >= 3:
                                break                               # hang up mid-stream
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    h = (await client.get(ep.base_url.removesuffix("/v1") + "/healthz")).json()
                    if h["running"] == 0 and h["waiting"] == 0:
                        break
                    await asyncio.sleep(0.05)
                r = await client.post(url, json={"model": ep.model, "prompt": "Tom", "max_tokens": 5,
                                                    "temperature": 0, "ignore_eos": True})
                return h, r

        health, r = asyncio.run(go())
    assert health["running"] == 0 and health["cancelled"] == 2, \
        f"after two clients hung up, their sequences must be cancelled and evicted: {health}"
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5, "the engine must keep serving"
    assert health["tokens"] < 150, "the cancelled requests kept decoding long after their clients left"


@pytest.fixture()
def fresh_server(lab, served):
    """A server of its own (the HTTP layer's tests must not depend on the engine's TODOs)."""
    model, tok = served
    engine = lab.Engine(model, tok, max_batch_size=1, max_waiting=1)
    with lab.serve_in_thread(engine) as ep:
        yield ep, engine


@pytest.mark.given
def test_bad_requests_get_openai_style_4xx(fresh_server):
    ep, _ = fresh_server
    base = ep.base_url
    with httpx.Client(timeout=30) as c:
        cases = {
            "malformed JSON": (c.post(base + "/completions", content=b'{"model": "x", "prompt": ',
                                      headers={"content-type": "application/json"}), 400),
            "unknown model": (c.post(base + "/completions", json={"model": "gpt-9", "prompt": "hi"}), 404),
            "negative max_tokens": (c.post(base + "/completions", json={"model": ep.model, "prompt": "hi",
                                                                        "max_tokens": -3}), 400),
            "oversize max_tokens": (c.post(base + "/completions", json={"model": ep.model, "prompt": "hi",
                                                                        "max_tokens": 100_000}), 400),
            "prompt not a string": (c.post(base + "/completions", json={"model": ep.model, "prompt": 42}), 400),
            "temperature a word": (c.post(base + "/completions", json={"model": ep.model, "prompt": "hi",
                                                                       "temperature": "hot"}), 400),
            "messages a string": (c.post(base + "/chat/completions", json={"model": ep.model, "messages": "hi"}), 400),
            "missing prompt": (c.post(base + "/completions", json={"model": ep.model}), 400),
        }
        for name, (r, status) in cases.items():
            assert r.status_code == status, f"{name}: expected {status}, got {r.status_code} {r.text}"
            err = r.json()["error"]
            assert isinstance(err["message"], str) and err["message"] and "type" in err, f"{name}: OpenAI error shape"
        assert cases["oversize max_tokens"][0].json()["error"]["code"] == "context_length_exceeded"
        assert c.get(base + "/models").json()["data"][0]["id"] == ep.model
        assert c.get(base.removesuffix("/v1") + "/healthz").json()["status"] == "ok"


@pytest.mark.given
def test_full_queue_answers_429_and_failed_engine_503_with_retry_after(fresh_server):
    ep, engine = fresh_server
    engine.step = lambda: time.sleep(0.005) or 0          # a stalled engine: nothing leaves the queue
    url = ep.base_url + "/completions"
    body = {"model": ep.model, "prompt": "Hi", "max_tokens": 2}

    async def go():
        async with httpx.AsyncClient(timeout=30) as client:
            queued = asyncio.create_task(client.post(url, json=body))     # takes the one waiting slot
            for _ in range(1000):
                if len(engine.waiting) == 1:
                    break
                await asyncio.sleep(0.01)
            full = await client.post(url, json=body)
            engine.error = RuntimeError("simulated failure")
            failed = await client.post(url, json=body)
            queued.cancel()
            engine.waiting.clear()
            engine.error = None
            return full, failed

    full, failed = asyncio.run(go())
    assert full.status_code == 429 and int(full.headers["retry-after"]) >= 1, (full.status_code, full.headers)
    assert full.json()["error"]["type"] == "rate_limit_error"
    assert failed.status_code == 503 and "retry-after" in failed.headers


# ----------------------------------------------------------------------------------------------
# the benchmark
# ----------------------------------------------------------------------------------------------


def test_continuous_batching_is_3x_sequential_at_concurrency_16(lab, served):
    """The spec's bar, 3x aggregate tokens/s at 16 clients, on tokens per server CPU second: the
    wall-clock rate of a server that owns its core (an idle machine), and unlike wall-clock tok/s
    not at the mercy of other jobs on a shared CI machine. The wall ratio is in the message."""
    model, tok = served
    rows = lab.benchmark(model, tok, concurrencies=(16,), n_requests=16, max_tokens=24, rounds=1)
    by = {r["mode"]: r for r in rows}
    assert by["continuous"]["failed"] == by["sequential"]["failed"] == 0
    assert by["continuous"]["tokens"] == by["sequential"]["tokens"] == 16 * 24, "every request must stream 24 tokens"
    assert by["continuous"]["mean_batch"] > 4, \
        f"mean batch {by['continuous']['mean_batch']:.1f}: with 16 clients the engine should batch most of them"
    ratio = by["continuous"]["tok_per_cpu_s"] / by["sequential"]["tok_per_cpu_s"]
    wall = by["continuous"]["tok_s"] / by["sequential"]["tok_s"]
    assert ratio >= 3.0, (f"continuous batching gives {ratio:.2f}x the sequential tokens per server CPU second at "
                          f"concurrency 16 ({wall:.2f}x wall-clock); the spec's bar is 3x. Is the whole running "
                          "batch decoded in ONE forward per step?")

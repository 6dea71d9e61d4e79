"""labkit.llm_server: a real uvicorn on 127.0.0.1 over the curriculum model, driven by the real ``openai``
client. Correct first: greedy output equals ``transformers``' ``generate``; streaming equals non-streaming;
bad requests get OpenAI-shaped 4xx and the server keeps serving.
"""
from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest
import torch

from labkit import curriculum_model_path

PROMPT = "Once upon a time, there was a little dog"
CHAT = [{"role": "user", "content": "Tell me a story about a cat."}]


@pytest.fixture(scope="module")
def client(llm_endpoint):
    return llm_endpoint.client()


@pytest.fixture(scope="module")
def hf():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = curriculum_model_path("main") / "hf"
    return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()


def test_greedy_completion_equals_transformers_generate(llm_endpoint, client, hf):
    tok, model = hf
    ids = [tok.bos_token_id, *tok.encode(PROMPT, add_special_tokens=False)]
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), max_new_tokens=40, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    expected = tok.decode(out[0, len(ids):], skip_special_tokens=True)
    got = client.completions.create(model=llm_endpoint.model, prompt=PROMPT, max_tokens=40, temperature=0)
    assert got.choices[0].text == expected, "greedy decoding with the KV cache must equal model.generate"
    assert got.usage.prompt_tokens == len(ids)


def test_chat_template_and_streaming_equal_non_streaming(llm_endpoint, client, hf):
    tok, _ = hf
    full = client.chat.completions.create(model=llm_endpoint.model, messages=CHAT, max_tokens=48, temperature=0)
    text = full.choices[0].message.content
    assert text and full.choices[0].finish_reason in ("stop", "length")
    expected_prompt = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert full.usage.prompt_tokens == 1 + len(tok.encode(expected_prompt, add_special_tokens=False))

    chunks = list(client.chat.completions.create(model=llm_endpoint.model, messages=CHAT, max_tokens=48,
                                                 temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 5, "streaming should send many small pieces, not one block"
    assert "".join(pieces) == text
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [full.choices[0].finish_reason]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_seed_makes_sampling_reproducible(llm_endpoint, client):
    def sample(seed):
        r = client.completions.create(model=llm_endpoint.model, prompt=PROMPT, max_tokens=30, temperature=1.0,
                                      top_p=0.95, seed=seed)
        return r.choices[0].text

    assert sample(7) == sample(7)
    assert len({sample(s) for s in range(4)}) > 1, "different seeds should give different samples"


def test_stop_string_is_excluded(llm_endpoint, client):
    base = client.completions.create(model=llm_endpoint.model, prompt=PROMPT, max_tokens=40, temperature=0)
    text = base.choices[0].text
    stop = text.split()[3]  # a word the greedy continuation certainly contains
    cut = client.completions.create(model=llm_endpoint.model, prompt=PROMPT, max_tokens=40, temperature=0,
                                    stop=[stop])
    assert cut.choices[0].text == text[:text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


M = "<served model>"  # replaced by the endpoint's model name


@pytest.mark.parametrize("body, status, needle", [
    ("{not json", 400, "not valid JSON"),
    ({"model": "gpt-9", "messages": CHAT}, 404, "does not exist"),
    ({"messages": CHAT}, 400, "model"),
    ({"model": M, "messages": []}, 400, "messages"),
    ({"model": M, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "role"),
    ({"model": M, "messages": CHAT, "max_tokens": 100_000}, 400, "maximum context length"),
    ({"model": M, "messages": CHAT, "max_tokens": -3}, 400, "max_tokens"),
    ({"model": M, "messages": CHAT, "temperature": "hot"}, 400, "temperature"),
    ({"model": M, "messages": CHAT, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"model": M, "messages": CHAT, "n": 2}, 400, "n > 1"),
    ({"model": M, "messages": CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
    ({"model": M, "messages": [{"role": "user", "content": "word " * 400}]}, 400, "maximum context length"),
])
def test_bad_requests_get_openai_shaped_4xx_and_the_server_keeps_serving(llm_endpoint, client, body, status,
                                                                           needle):
    if isinstance(body, dict):
        body = json.dumps({k: (llm_endpoint.model if v == M else v) for k, v in body.items()})
    r = httpx.post(f"{llm_endpoint.base_url}/chat/completions", content=body,
                   headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"] and err["type"] == "invalid_request_error", err
    ok = client.chat.completions.create(model=llm_endpoint.model, messages=CHAT, max_tokens=3, temperature=0)
    assert ok.choices[0].message.content is not None


def test_openai_client_raises_typed_errors(llm_endpoint, client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=CHAT, max_tokens=3)
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.chat.completions.create(model=llm_endpoint.model, messages=CHAT, max_tokens=10_000)


def test_client_disconnecting_mid_stream_does_not_break_the_server(llm_endpoint, client):
    body = {"model": llm_endpoint.model, "messages": CHAT, "max_tokens": 200, "temperature": 1.0, "stream": True}
    with httpx.stream("POST", f"{llm_endpoint.base_url}/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: ") for line in got)
    # the connection is gone; the next requests are served normally
    ok = client.chat.completions.create(model=llm_endpoint.model, messages=CHAT, max_tokens=5, temperature=0)
    assert ok.usage.completion_tokens >= 1


def test_concurrent_requests_each_get_their_own_greedy_answer(llm_endpoint, client):
    prompts = ["Once upon a time", "Tom had a red ball", "The sun was hot and", "Lily saw a big"]
    alone = [client.completions.create(model=llm_endpoint.model, prompt=p, max_tokens=25, temperature=0)
             .choices[0].text for p in prompts]
    together: dict[int, str] = {}

    def run(i):
        together[i] = client.completions.create(model=llm_endpoint.model, prompt=prompts[i], max_tokens=25,
                                                temperature=0).choices[0].text

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [together[i] for i in range(len(prompts))] == alone


def test_models_and_healthz(llm_endpoint, client):
    assert [m.id for m in client.models.list()] == [llm_endpoint.model]
    r = httpx.get(llm_endpoint.base_url.removesuffix("/v1") + "/healthz", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "ok"

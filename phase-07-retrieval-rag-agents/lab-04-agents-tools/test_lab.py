"""Grader for lab 7.4 (agents, tools, constrained decoding). References: Python's own arithmetic
(on trusted literals), Python's ``ipaddress`` classification, pydantic (the tool-call schema
validator the constrained outputs must pass), openai-python's message and tool TypedDicts, a
brute-force scan of the curriculum model's vocabulary (what the token trie must reproduce),
transformers' ``generate`` (the logits-processor hook), a real uvicorn server on 127.0.0.1 for
``fetch_url``, and labkit's OpenAI-compatible server over the curriculum model for the LLM path."""
from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from labkit import seed_everything

HERE = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def server(lab):
    """The lab's demo pages on a real uvicorn at 127.0.0.1:<free port>."""
    with lab.serve_in_thread(lab.make_demo_app()) as base:
        yield base, int(base.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def registry(lab, server):
    _, port = server
    policy = lab.FetchPolicy(allow=frozenset({f"127.0.0.1:{port}"}), timeout_s=1.0)
    return lab.build_registry(lab.KeywordRetriever(lab.AGENT_FACTS), policy)


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from labkit import curriculum_model_path

    return AutoTokenizer.from_pretrained(curriculum_model_path("main") / "hf")


@pytest.fixture(scope="module")
def model(lab):
    torch.set_num_threads(1)
    m, _ = lab.load_curriculum_model("main")
    return m


@pytest.fixture(scope="module")
def index(lab, tok):
    return lab.TokenIndex.from_tokenizer(tok)


def fake_resolver(table):
    def resolve(host, port):
        if host not in table:
            raise socket.gaierror(f"unknown host {host}")
        return list(table[host])
    return resolve


# =========================================================================== calculator (TODO 1)
@pytest.mark.parametrize("expr", ["(1400 + 1460) / 225", "2**10", "-3**2", "7 // 2", "-7 % 3", "2**-1",
                                  "1_000 + 0.5", "1e3 / 4", "((2))*(3+4)", "+5 - -5", "4096*128", "10**300"])
def test_calculator_matches_python_arithmetic(lab, expr):
    expected = eval(expr, {"__builtins__": {}})  # trusted literal from this list: the reference
    got = lab.safe_eval(expr)
    assert got == expected and type(got) is type(expected), (
        f"safe_eval({expr!r}) = {got!r}, Python says {expected!r}: check operator mapping "
        "(// vs /, unary minus binds looser than **, ints stay ints)")


CALC_ATTACKS = [
    "__import__('os').system('echo pwned')", "().__class__.__bases__[0].__subclasses__()",
    "open('/etc/passwd').read()", "exec('import os')", "eval('1')", "lambda: 1", "[1, 2]", "{1: 2}",
    "(1).__class__", "x + 1", "__builtins__", "'a' * 10", "b'1'", "True + 1", "None", "1 if 1 else 2",
    "1 < 2", "1 and 2", "~1", "1 << 100000", "2 ^ 10", "1j * 1j", "f'{1}'", "print(1)", "abs(-1)",
    "1; 2", "import os", "(" * 40 + "1" + ")" * 40, "-" * 100 + "1", "1e308 * 10",
    "1/0", "5 // 0", "0 ** -1", "(-8) ** 0.5",
]


@pytest.mark.given
@pytest.mark.parametrize("text", ["", "   ", "1" * 300])
def test_calculator_refuses_empty_and_long_input(lab, text):
    with pytest.raises(lab.ToolError):
        lab.safe_eval(text)


@pytest.mark.parametrize("attack", CALC_ATTACKS)
def test_calculator_refuses_attacks(lab, attack, tmp_path):
    marker = tmp_path / "pwned"
    attack = attack.replace("echo pwned", f"touch {marker}")
    with pytest.raises(lab.ToolError):
        lab.safe_eval(attack)
    assert not marker.exists(), "the attack ran code! safe_eval must never call eval/exec"


def test_calculator_error_messages_teach(lab):
    with pytest.raises(lab.ToolError, match=r"\*\*"):
        lab.safe_eval("2^10")
    with pytest.raises(lab.ToolError, match="(?i)zero"):
        lab.safe_eval("1/0")
    with pytest.raises(TypeError):
        lab.safe_eval(42)


def test_huge_exponents_are_refused_before_computing(lab):
    """Run in a child process with a time limit: 9**9**9 computed for real would never finish."""
    code = ("import sys, time; from labkit import load_lab; lab = load_lab(sys.argv[1]); t = time.time()\n"
            "for a in ['9**9**9', '2**100000', '10**4000*10**4000', '(10**1000)**1000', '7**7**7**7']:\n"
            "    try:\n        lab.safe_eval(a); print('COMPUTED', a); sys.exit(1)\n"
            "    except lab.ToolError: pass\n"
            "print('ok', time.time() - t)")
    target = HERE / ("lab.py" if lab.__file__.endswith("lab.py") else "solution.py")
    try:
        r = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("safe_eval tried to compute a huge power: estimate the result's size "
                    "(exponent * log2(base) bits) and refuse BEFORE a ** b")
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout + r.stderr[-2000:]


# =========================================================================== URL guard (TODO 2)
URL_ATTACKS = [
    "file:///etc/passwd", "ftp://example.com/x", "gopher://127.0.0.1:70/_", "javascript:alert(1)",
    "dict://127.0.0.1:11211/", "http://127.0.0.1/", "http://127.1/", "http://localhost/",
    "http://localhost:8080/admin", "https://169.254.169.254/latest/meta-data/", "http://[::1]/",
    "http://[::ffff:127.0.0.1]/", "http://[fe80::1]/", "http://10.0.0.1/", "http://172.16.5.4/",
    "http://192.168.1.1/", "http://0.0.0.0/", "http://2130706433/", "http://0x7f.1/", "http://017700000001/",
    "http://100.64.0.1/", "http://224.0.0.1/", "http://user:pw@example.com/", "http:///nohost", "//example.com",
    "http://example.com:99999/",
]


@pytest.mark.parametrize("url", URL_ATTACKS)
def test_url_guard_refuses_attacks(lab, url):
    with pytest.raises(lab.UnsafeURLError):
        lab.check_url(url)


# DNS names that resolve to private addresses, through a patched resolver (no real DNS):
# FetchPolicy.resolver(host, port) -> [ip, ...] is the documented hook.
DNS = {
    "internal.example": ["10.1.2.3"],
    "metadata.example": ["169.254.169.254"],
    "mixed.example": ["93.184.216.34", "127.0.0.1"],  # one public answer must not hide a private one
    "mixed2.example": ["127.0.0.1", "93.184.216.34"],
    "v6.example": ["fd00::1"],
    "mapped.example": ["::ffff:10.0.0.1"],
    "cgnat.example": ["100.64.3.4"],
    "public.example": ["93.184.216.34"],  # a public address: only ever returned, never connected to
}


@pytest.mark.parametrize("host", [h for h in DNS if h != "public.example"] + ["nxdomain.example"])
def test_url_guard_checks_addresses_after_dns(lab, host):
    policy = lab.FetchPolicy(resolver=fake_resolver(DNS))
    with pytest.raises(lab.UnsafeURLError):
        lab.check_url(f"http://{host}/", policy)


def test_url_guard_returns_the_address_to_pin(lab):
    policy = lab.FetchPolicy(resolver=fake_resolver(DNS))
    assert lab.check_url("https://public.example/x?y=1", policy) == ("https", "93.184.216.34", 443), (
        "check_url must return (scheme, resolved ip, port) so fetch_url connects to the address it checked")
    assert lab.check_url("http://public.example:8080/", policy) == ("http", "93.184.216.34", 8080)


def test_allow_list_is_exact_ip_and_port(lab):
    policy = lab.FetchPolicy(allow=frozenset({"127.0.0.1:8123"}))
    assert lab.check_url("http://127.0.0.1:8123/x", policy)[1:] == ("127.0.0.1", 8123)
    with pytest.raises(lab.UnsafeURLError):
        lab.check_url("http://127.0.0.1:8124/x", policy)  # same IP, another port
    with pytest.raises(lab.UnsafeURLError):
        lab.check_url("http://10.0.0.1:8123/x", policy)


def test_fetch_url_reads_the_local_page(lab, server):
    base, port = server
    text = lab.fetch_url(f"{base}/stats", lab.FetchPolicy(allow=frozenset({f"127.0.0.1:{port}"})))
    assert "1,200 requests" in text and "<p>" not in text and "color:red" not in text, text


def test_fetch_url_connects_to_the_checked_address(lab, server):
    """'lab.example' exists only in the patched resolver: if fetch_url re-resolved the name
    (instead of connecting to check_url's address) the request could not succeed offline."""
    _, port = server
    policy = lab.FetchPolicy(allow=frozenset({f"127.0.0.1:{port}"}),
                             resolver=fake_resolver({"lab.example": ["127.0.0.1"]}))
    assert "8 workers" in lab.fetch_url(f"http://lab.example:{port}/stats", policy)


@pytest.mark.parametrize("path, needle", [
    ("/big", "too large"), ("/stream-big", "too large"), ("/slow", "timed out|longer"),
    ("/to-metadata", "non-public"), ("/loop", "redirects"), ("/binary", "content type"),
])
def test_fetch_url_limits(lab, server, path, needle):
    base, port = server
    policy = lab.FetchPolicy(allow=frozenset({f"127.0.0.1:{port}"}), timeout_s=1.0, max_bytes=200_000)
    t0 = time.perf_counter()
    with pytest.raises(lab.ToolError, match=needle):
        lab.fetch_url(base + path, policy)
    assert time.perf_counter() - t0 < 2.9, "the time limit must bound the whole fetch (/slow takes 3 s)"


def test_fetch_url_follows_safe_redirects_and_refuses_unlisted_local(lab, server):
    base, port = server
    assert "workers" in lab.fetch_url(f"{base}/to-stats", lab.FetchPolicy(allow=frozenset({f"127.0.0.1:{port}"})))
    with pytest.raises(lab.UnsafeURLError):
        lab.fetch_url(f"{base}/stats")  # no allow-list: loopback refused


# =========================================================================== registry (TODO 3)
@pytest.mark.given
def test_openai_tools_format(lab, registry):
    from openai.types.chat import ChatCompletionToolParam
    from pydantic import TypeAdapter

    tools = registry.openai_tools()
    assert [t["function"]["name"] for t in tools] == ["search_docs", "calculator", "fetch_url", "final_answer"]
    for t in tools:
        TypeAdapter(ChatCompletionToolParam).validate_python(t)
        params = t["function"]["parameters"]
        assert params["type"] == "object" and params["additionalProperties"] is False


def test_validate_call_accepts_good_calls(lab, registry):
    c = registry.validate_call("search_docs", '{"query": "CISI", "k": 2}', "id1")
    assert (c.id, c.name, c.arguments) == ("id1", "search_docs", {"query": "CISI", "k": 2})
    c = registry.validate_call("calculator", {"expression": "1+1"}, "id2")
    assert c.arguments == {"expression": "1+1"}


@pytest.mark.parametrize("name, args, needle", [
    ("rm_rf", "{}", "unknown tool"),
    ("calculator", "{expression: 1+1}", "not valid JSON"),
    ("calculator", "[1, 2]", "object"),
    ("calculator", "{}", "expression"),
    ("calculator", '{"expression": 12}', "expression"),
    ("calculator", '{"expression": "1", "extra": 1}', "extra"),
    ("search_docs", '{"query": "x", "k": 99}', "k"),
    ("search_docs", '{"query": "x", "k": "3"}', "k"),
    ("search_docs", '{"query": "", "k": 1}', "query"),
    (None, "{}", "unknown tool"),
])
def test_validate_call_rejects_bad_calls(lab, registry, name, args, needle):
    with pytest.raises(lab.ModelOutputError, match=needle):
        registry.validate_call(name, args, "id")


@pytest.mark.given
@pytest.mark.parametrize("text", ["", "I think the answer is 4", "[1, 2]", '{"name": "x"}', '{"tool": "x", "args": {}}',
                                  '{"name": "calculator", "arguments": {', "{'name': 'calculator'}"])
def test_parse_model_output_rejects(lab, text):
    with pytest.raises(lab.ModelOutputError):
        lab.parse_model_output(text)


@pytest.mark.given
def test_parse_model_output_finds_json_in_text(lab):
    assert lab.parse_model_output('Thought: add.\n```json\n{"name": "calculator", "arguments": '
                                  '{"expression": "1+1"}}\n```') == ("calculator", {"expression": "1+1"})


# =========================================================================== the loop (TODO 4)
def test_ten_multistep_tasks_succeed_with_a_scripted_policy(lab, registry, server, tmp_path):
    base, _ = server
    tasks = lab.make_tasks(base)
    assert len(tasks) == 10
    trace = tmp_path / "trace.jsonl"
    solved = []
    for i, task in enumerate(tasks):
        r = lab.run_agent(task.question, lab.ScriptedPolicy(task.plan), registry,
                          tracer=lab.Tracer(trace, run_id=f"t{i}"))
        solved.append(task.solved_by(r.answer))
        assert r.status == "answered", f"task {i} ended with {r.status}; did the loop stop on final_answer?"
        assert r.tool_calls >= 2, "every task is multi-step"
    assert all(solved), f"solved {sum(solved)}/10: are observations fed back as role 'tool' messages?"
    events = [json.loads(line) for line in trace.read_text(encoding="utf-8").splitlines()]
    assert {e["run_id"] for e in events} == {f"t{i}" for i in range(10)}
    tools = [e for e in events if e["event"] == "tool"]
    assert len(tools) >= 20 and all({"tool", "arguments", "ok", "result", "latency_ms"} <= set(e) for e in tools)
    assert sum(e["event"] == "output_error" for e in events) == 2, "tasks 8 and 9 each start with one bad output"


BAD_OUTPUTS = [
    "Once upon a time there was a tool.",                                # no JSON
    "[1, 2, 3]",                                                           # JSON, not an object
    '{"tool": "calculator", "input": "1+1"}',                             # wrong keys
    '{"name": "calculator", "arguments": {"expression": "1+1"',           # truncated JSON
    '{"name": "send_email", "arguments": {"to": "a@b.c"}}',              # unknown tool
    '{"name": "calculator", "arguments": {"expr": "1+1"}}',               # schema violation
    '{"name": "search_docs", "arguments": {"query": "x", "k": 0}}',       # out of range
    {"role": "assistant", "content": None, "tool_calls": [                # native call, args not JSON
        {"id": "n1", "type": "function", "function": {"name": "calculator", "arguments": "{1+1}"}}]},
    {"role": "assistant", "content": None, "tool_calls": [                # native call, unknown tool
        {"id": "n2", "type": "function", "function": {"name": "shell", "arguments": "{}"}}]},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "n3", "type": "function"}]},  # no function
    {"role": "assistant", "content": None},                               # nothing at all
]


def test_tasks_with_lab02_dense_retriever(lab, server):
    """search_docs backed by lab 7.2's pipeline (MiniLM + Qdrant) over the same facts."""
    if not (HERE.parent / "lab-02-rag-pipeline" / "solution.py").is_file():
        pytest.skip("lab 7.2 is not in this checkout")
    base, port = server
    registry = lab.build_registry(lab.lab02_retriever(collection="agent-facts-test"),
                                  lab.FetchPolicy(allow=frozenset({f"127.0.0.1:{port}"})))
    tasks = lab.make_tasks(base)
    solved = [t.solved_by(lab.run_agent(t.question, lab.ScriptedPolicy(t.plan), registry).answer) for t in tasks]
    assert all(solved), f"with dense retrieval: solved {sum(solved)}/10 ({solved})"


def test_every_bad_output_is_fed_back_and_the_loop_survives(lab, registry, tmp_path):
    final = lab.tool_call_message("final_answer", {"answer": "done"}, "fin")
    policy = lab.ScriptedPolicy(BAD_OUTPUTS + [final])
    tracer = lab.Tracer(tmp_path / "t.jsonl")
    r = lab.run_agent("q?", policy, registry, max_iterations=len(BAD_OUTPUTS) + 1, tracer=tracer)
    assert r.status == "answered" and r.answer == "done", f"the loop ended with {r.status}: a bad output crashed it?"
    assert r.output_errors == len(BAD_OUTPUTS), "every malformed output must be counted and fed back"
    msgs = r.messages
    for i, m in enumerate(msgs):
        if m["role"] == "assistant" and i < len(msgs) - 2:
            nxt = msgs[i + 1]
            assert nxt["role"] in ("tool", "user") and nxt["content"].startswith("ERROR"), (
                f"after bad output {m} the model must be told what was wrong, got {nxt}")
            for c in m.get("tool_calls") or []:
                ids = [x.get("tool_call_id") for x in msgs[i + 1:i + 1 + len(m["tool_calls"])]]
                assert c.get("id") in ids, "every tool_call id must be answered by a role 'tool' message"
    assert sum(e["event"] == "output_error" for e in tracer.events) == len(BAD_OUTPUTS)


def test_messages_are_valid_openai_chat_messages(lab, registry, server):
    from openai.types.chat import ChatCompletionMessageParam
    from pydantic import TypeAdapter

    base, _ = server
    task = lab.make_tasks(base)[8]  # starts with a schema-violating native call
    r = lab.run_agent(task.question, lab.ScriptedPolicy(task.plan), registry)
    adapter = TypeAdapter(ChatCompletionMessageParam)
    pending = set()
    for m in r.messages:
        adapter.validate_python(m)
        if m["role"] == "assistant":
            assert not pending, f"tool calls {pending} were never answered"
            pending = {c["id"] for c in m.get("tool_calls") or []}
            for c in m.get("tool_calls") or []:
                json.loads(c["function"]["arguments"])  # arguments travel as a JSON *string*
        elif m["role"] == "tool":
            assert m["tool_call_id"] in pending, "a tool message must answer a pending tool_call id"
            pending.discard(m["tool_call_id"])


def test_tool_errors_become_observations(lab, registry):
    plan = [lab.tool_call_message("calculator", {"expression": "1/0"}, "a"),
            lab.tool_call_message("fetch_url", {"url": "file:///etc/passwd"}, "b"),
            lab.tool_call_message("final_answer", {"answer": "gave up"}, "c")]
    r = lab.run_agent("q?", lab.ScriptedPolicy(plan), registry)
    obs = lab.observations(r.messages)
    assert r.status == "answered" and r.tool_errors == 2, r
    assert obs[0].startswith("ERROR") and "zero" in obs[0] and obs[1].startswith("ERROR"), obs


def test_iteration_cap(lab, registry):
    calls = []

    def policy(messages, tools):
        calls.append(1)
        return lab.tool_call_message("calculator", {"expression": f"{len(calls)}+1"}, f"c{len(calls)}")

    r = lab.run_agent("q?", policy, registry, max_iterations=4)
    assert r.status == "max_iterations" and len(calls) == 4 and r.steps == 4, (
        f"status {r.status}, {len(calls)} policy calls: the cap must stop an agent that never answers")
    with pytest.raises(ValueError):
        lab.run_agent("q?", policy, registry, max_iterations=0)


def test_repeated_identical_calls_are_refused(lab, registry):
    call = lab.tool_call_message("calculator", {"expression": "2+2"}, "same")
    r = lab.run_agent("q?", lab.ScriptedPolicy([call] * 4), registry, max_iterations=4, max_repeats=2)
    obs = lab.observations(r.messages)
    assert obs[:2] == ["4", "4"] and all("already called" in o for o in obs[2:]), obs


def test_policy_exceptions_end_the_run_cleanly(lab, registry):
    def broken(messages, tools):
        raise ConnectionError("endpoint down")

    tracer = lab.Tracer()
    r = lab.run_agent("q?", broken, registry, tracer=tracer)
    assert r.status == "policy_error" and tracer.events[-1]["event"] == "policy_error"


# =========================================================================== the automaton (TODO 5)
def valid_calls():
    return [
        {"name": "calculator", "arguments": {"expression": "(1400+1460)/225"}},
        {"name": "search_docs", "arguments": {"query": "CISI \"queries\" \\ ok", "k": 5}},
        {"name": "search_docs", "arguments": {"query": "caf\u00e9 \n tab\t", "k": 1}},
        {"name": "fetch_url", "arguments": {"url": "http://x.org/a?b=1"}},
        {"name": "final_answer", "arguments": {"answer": "x" * 48}},
    ]


def test_machine_accepts_what_pydantic_accepts(lab, registry):
    m = lab.JsonSchemaMachine(registry.tool_call_schema())
    adapter = registry.call_adapter()
    texts = []
    for c in valid_calls():
        texts += [json.dumps(c), json.dumps(c, separators=(",", ":")), json.dumps(c, ensure_ascii=False)]
    good = texts[:]
    texts += [
        '{"name": "search_docs", "arguments": {"query": "x", "k": 6}}',
        '{"name": "search_docs", "arguments": {"query": "x", "k": 0}}',
        '{"name": "search_docs", "arguments": {"query": "x", "k": 05}}',
        '{"name": "search_docs", "arguments": {"query": "x", "k": -1}}',
        '{"name": "search_docs", "arguments": {"query": "", "k": 1}}',
        '{"name": "search_docs", "arguments": {"query": "x"}}',
        '{"name": "calculator", "arguments": {"expression": "1", "k": 1}}',
        '{"name": "calculator", "arguments": {"expression": 1}}',
        '{"name": "calculato", "arguments": {"expression": "1"}}',
        '{"name": "calculatorr", "arguments": {"expression": "1"}}',
        '{"name": "final_answer", "arguments": {"answer": "' + "x" * 49 + '"}}',
        '{"name": "calculator", "arguments": {"expression": "a\\qb"}}',
        '{"name": "calculator", "arguments": {"expression": "a\\u12G4"}}',
        '{"name": "calculator", "arguments": {"expression": "tab\there"}}',
        '{"name": "calculator", "arguments": {"expression": "1"}',
        '{"name": "calculator", "arguments": {"expression": "1"}}}',
    ]  # (trailing spaces, other key orders and extra whitespace are valid JSON outside our subset)
    for t in texts:
        try:
            adapter.validate_json(t)
            ref = True
        except Exception:
            ref = False
        assert m.accepts(t) == ref, f"machine says {m.accepts(t)}, pydantic says {ref} for {t!r}"
    assert all(m.accepts(t) for t in good)


def test_every_prefix_of_a_valid_text_is_viable(lab, registry):
    m = lab.JsonSchemaMachine(registry.tool_call_schema())
    for c in valid_calls():
        t = json.dumps(c)
        for i in range(len(t)):
            assert m.is_prefix(t[:i]), f"prefix {t[:i]!r} rejected: a constrained decoder would be stuck"
            assert not m.accepts(t[:i]) or i == len(t)


def test_random_walks_never_dead_end_and_always_validate(lab, registry):
    """Walk the automaton with random allowed characters: it must never get stuck, must finish
    within max_chars, and every finished text must pass pydantic."""
    m = lab.JsonSchemaMachine(registry.tool_call_schema())
    adapter = registry.call_adapter()
    alphabet = [chr(c) for c in range(32, 127)] + ["\n", "\u00e9"]
    rng = random.Random(0)
    for _ in range(60):
        states, text = m.initial(), ""
        while True:
            options = [ch for ch in alphabet if m.advance(states, ch)]
            complete = m.is_complete(states)
            assert options or complete, f"dead end after {text!r}: a state the decoder cannot leave"
            if complete and (not options or rng.random() < 0.5):
                break
            ch = rng.choice(options)
            states, text = m.advance(states, ch), text + ch
            assert len(text) <= m.max_chars(), "longer than the schema's length bound"
        adapter.validate_json(text)


@pytest.mark.parametrize("prefix, lo, hi, viable", [
    ("1", 1, 5, True), ("6", 1, 5, False), ("0", 1, 5, False), ("1", 10, 20, True), ("3", 10, 20, False),
    ("-", -5, 5, True), ("-", 0, 5, False), ("-6", -5, 5, False), ("05", 0, 100, False), ("99", 0, 100, True),
    ("100", 0, 100, True), ("101", 0, 100, False), ("1000", 0, 100, False),
])
@pytest.mark.given
def test_int_viability(lab, prefix, lo, hi, viable):
    assert lab._int_viable(prefix, lo, hi) == viable


@pytest.mark.given
@pytest.mark.parametrize("schema", [{"type": "string", "pattern": "a+"}, {"type": "number"},
                                    {"type": "array"}, {"type": "object", "additionalProperties": True}])
def test_unsupported_schema_is_refused(lab, schema):
    with pytest.raises(ValueError):
        lab.JsonSchemaMachine(schema)


# =========================================================================== the token mask (TODO 6)
def test_mask_equals_brute_force_over_the_vocabulary(lab, registry, tok, index):
    """The trie walk (and its fast path inside strings) must allow exactly the tokens whose text
    keeps the output a viable prefix: checked token by token over all 4096."""
    m = lab.JsonSchemaMachine(registry.tool_call_schema())
    prefixes = ["", "{", '{"name": "', '{"name": "ca', '{"name": "search_docs", "arguments": {"query": "',
                '{"name": "search_docs", "arguments": {"query": "ab', '{"name": "search_docs", "arguments": '
                '{"query": "ab\\', '{"name": "search_docs", "arguments": {"query": "x", "k": ',
                '{"name": "final_answer", "arguments": {"answer": "' + "y" * 45,
                '{"name": "calculator", "arguments": {"expression": "1"}}']
    for p in prefixes:
        states = m.advance(m.initial(), p)
        mask = index.allowed_mask(m, states)
        brute = torch.zeros(index.vocab_size, dtype=torch.bool)
        for i in index.usable:
            brute[i] = bool(m.advance(states, index.texts[i]))
        brute[index.eos_id] = m.is_complete(states)
        diff = (mask != brute).nonzero().flatten().tolist()
        assert not diff, (f"after {p!r} the mask disagrees on {[index.texts[i] for i in diff[:8]]}: "
                          "does the walk prune too early, or the string fast path ignore the length budget?")


def test_constrained_samples_are_always_valid_unconstrained_are_not(lab, registry, model, tok, index):
    n = 12
    adapter = registry.call_adapter()
    cons = lab.sample_tool_calls(model, tok, registry, "What is 1400 divided by 225?", n,
                                 constrained=True, index=index, seed=3)
    free = lab.sample_tool_calls(model, tok, registry, "What is 1400 divided by 225?", n,
                                 constrained=False, seed=3)
    assert lab._validity(adapter, cons) == 1.0, [c for c in cons][:4]
    assert lab._validity(adapter, free) < 1.0, "unconstrained TinyStories output should not be valid JSON"
    assert len({c for c in cons}) > 1, "all samples identical: is the mask applied before sampling?"


def test_processor_works_with_greedy_generate(lab, registry, model, tok, index):
    from transformers import LogitsProcessorList

    m = lab.JsonSchemaMachine(registry.tool_call_schema())
    prompt = torch.tensor([[0] + tok.encode("Once upon a time")])
    proc = lab.JsonSchemaLogitsProcessor(index, m, prompt.shape[1])
    seed_everything(0)
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                         max_new_tokens=m.max_chars() + 1, logits_processor=LogitsProcessorList([proc]),
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    text = tok.decode(out[0, prompt.shape[1]:], skip_special_tokens=True)
    registry.call_adapter().validate_json(text)


# =========================================================================== the LLM path
@pytest.fixture(scope="module")
def endpoint(request):
    try:
        return request.getfixturevalue("llm_endpoint")
    except pytest.FixtureLookupError:
        pytest.skip("labkit's llm_endpoint fixture is not available")


def test_llm_path_against_the_served_curriculum_model(lab, registry, endpoint, tmp_path):
    """Real openai client, real server. The model writes children's stories, so it almost never
    produces a valid action: what is tested is that the loop survives and reports it."""
    policy = lab.ChatCompletionsPolicy(endpoint.client(), endpoint.model, native_tools=True, max_tokens=32)
    policy.registry = registry
    tracer = lab.Tracer(tmp_path / "llm.jsonl")
    tasks = lab.make_tasks(None)[:2]
    solved = 0
    for task in tasks:
        r = lab.run_agent(task.question, policy, registry, max_iterations=2, tracer=tracer)
        assert r.status in ("answered", "max_iterations"), f"run ended with {r.status}: {tracer.events[-1]}"
        solved += task.solved_by(r.answer)
    assert policy.fallbacks == 1 and not policy.native_tools, (
        "the curriculum server answers 400 to tools=: the policy should fall back to prompt mode once")
    model_events = [e for e in tracer.events if e["event"] == "model"]
    assert len(model_events) == 4
    print(f"curriculum model over the endpoint: solved {solved}/{len(tasks)}")

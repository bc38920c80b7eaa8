"""pi-server against real clients on loopback: the openai package (completions, chat, streams,
JSON schema output, embeddings, logprobs), raw SSE (httpx), a client that leaves mid-stream,
bad requests, a full queue, /health and /metrics; greedy output under continuous batching is
the output of the request alone (and of pi_backend.Llama); a soak of 16 concurrent streams
with the server's RSS flat. The server runs as `python -m pi_backend.server` on the SmolLM2
file of the test environment."""
from __future__ import annotations

import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

openai = pytest.importorskip("openai")

from bench.server import Proc, free_port  # noqa: E402  (after the openai check)


class Server(Proc):
    """pi-server on the test environment's SmolLM2 file (bench.server's process launcher)."""

    def __init__(self, model: Path, log: Path, *args: str):
        port = free_port()
        super().__init__("pi-server", [sys.executable, "-m", "pi_backend.server", "--model", str(model),
                                       "--host", "127.0.0.1", "--port", str(port), "--n_threads", "2",
                                       *args], port, log, "/health", timeout=120)

    def client(self, **kw) -> "openai.OpenAI":
        return openai.OpenAI(base_url=self.url + "/v1", api_key=kw.pop("api_key", "none"),
                             max_retries=0, timeout=120, **kw)

    def metrics(self) -> dict:
        text = httpx.get(self.url + "/metrics", timeout=10).text
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def server(smollm2_path, tmp_path_factory):
    s = Server(smollm2_path, tmp_path_factory.mktemp("server") / "server.log",
               "--parallel", "4", "--max_queue", "32", "--n_ctx", "512")
    yield s
    s.stop()
    assert s.proc.returncode is not None


@pytest.fixture(scope="module")
def small_server(smollm2_path, tmp_path_factory):
    """One slot, one waiting place, an API key."""
    s = Server(smollm2_path, tmp_path_factory.mktemp("small") / "server.log",
               "--parallel", "1", "--max_queue", "1", "--n_ctx", "512", "--api_key", "sesame")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def library(smollm2_path):
    """pi_backend.Llama on the same file, the dense head (the server's)."""
    from pi_backend import Llama
    llm = Llama(str(smollm2_path), n_ctx=512, n_threads=2, head_mode="dense", verbose=False)
    yield llm
    llm.close()


def _error(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert isinstance(err["message"], str) and err["message"], err
    assert {"type", "param", "code"} <= set(err)
    return err


def _sse_events(resp: httpx.Response) -> list:
    return [line[len("data: "):] for line in resp.iter_lines() if line.startswith("data: ")]


# ---- basics ---------------------------------------------------------------------------------------
def test_health_models_tokenize(server):
    r = httpx.get(server.url + "/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["SmolLM2-135M-Instruct.Q4_1.gguf"]
    toks = httpx.post(server.url + "/extras/tokenize", json={"input": "Hello world"}).json()["tokens"]
    assert len(toks) >= 2
    n = httpx.post(server.url + "/extras/tokenize/count", json={"input": "Hello world"}).json()
    assert n == {"count": len(toks)}
    text = httpx.post(server.url + "/extras/detokenize", json={"tokens": toks}).json()["text"]
    assert text.endswith("Hello world")


def test_completion_matches_library(server, library):
    """Greedy completions equal pi_backend.Llama's on the same file: text, finish and usage."""
    c = server.client()
    for prompt, n in [("The capital of France is", 24), ("def fibonacci(n):", 40)]:
        r = c.completions.create(model="x", prompt=prompt, max_tokens=n, temperature=0)
        ref = library.create_completion(prompt, max_tokens=n, temperature=0, repeat_penalty=1.1)
        assert r.choices[0].text == ref["choices"][0]["text"]
        assert r.choices[0].finish_reason == ref["choices"][0]["finish_reason"]
        assert r.usage.prompt_tokens == ref["usage"]["prompt_tokens"]
        assert r.usage.completion_tokens == ref["usage"]["completion_tokens"]
        assert r.model == "x"


def test_chat_and_stream(server, library):
    c = server.client()
    msgs = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name three colors."}]
    r = c.chat.completions.create(model="m", messages=msgs, max_tokens=30, temperature=0)
    ref = library.create_chat_completion(msgs, max_tokens=30, temperature=0, repeat_penalty=1.1)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == ref["choices"][0]["message"]["content"]
    assert r.usage.completion_tokens == ref["usage"]["completion_tokens"]
    parts, usage, finish = [], None, None
    for ch in c.chat.completions.create(model="m", messages=msgs, max_tokens=30, temperature=0,
                                        stream=True, stream_options={"include_usage": True}):
        if ch.choices:
            parts.append(ch.choices[0].delta.content or "")
            finish = ch.choices[0].finish_reason or finish
        else:
            assert usage is None, "one usage chunk, the last"
            usage = ch.usage
    assert "".join(parts) == r.choices[0].message.content
    assert finish == r.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == r.usage.completion_tokens
    assert usage.prompt_tokens == r.usage.prompt_tokens


def test_json_schema_response_format(server):
    schema = {"type": "object", "properties": {"name": {"type": "string"},
                                               "age": {"type": "integer"}},
              "required": ["name", "age"]}
    r = server.client().chat.completions.create(
        model="m", max_tokens=80, temperature=0.7, seed=3,
        messages=[{"role": "user", "content": "Jason is 30 years old. Give his name and age."}],
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": schema}})
    obj = json.loads(r.choices[0].message.content)
    assert set(obj) == {"name", "age"} and isinstance(obj["name"], str)
    assert isinstance(obj["age"], int)


def test_embeddings(server, smollm2_path):
    from pi_backend import Llama
    e = server.client().embeddings.create(model="m", input=["hello there", "sparse inference"])
    assert [d.index for d in e.data] == [0, 1]
    v = np.array([d.embedding for d in e.data])
    ref = Llama(str(smollm2_path), embedding=True, pooling_type=1, n_threads=2, verbose=False)
    try:
        want = np.array(ref.embed(["hello there", "sparse inference"]))
    finally:
        ref.close()
    np.testing.assert_array_equal(v, want.astype(np.float64))
    assert e.usage.prompt_tokens == e.usage.total_tokens > 2


def test_logprobs(server, library):
    r = server.client().completions.create(model="m", prompt="The capital of France is",
                                           max_tokens=6, temperature=0, logprobs=3,
                                           extra_body={"repeat_penalty": 1.0})
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6
    assert "".join(lp.tokens) == r.choices[0].text
    for tok, p, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert len(top) == 3 and p <= 0
        assert top[tok] == pytest.approx(max(top.values()))   # greedy, no penalty: the top
    ref = library.create_completion("The capital of France is", max_tokens=6, temperature=0,
                                    logprobs=3, repeat_penalty=1.0)["choices"][0]["logprobs"]
    assert lp.token_logprobs == pytest.approx(ref["token_logprobs"], abs=1e-6)


def test_sse_raw_ends_with_done(server):
    with httpx.stream("POST", server.url + "/v1/completions", timeout=60,
                      json={"prompt": "Once upon a time", "max_tokens": 12, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


# ---- exactness of continuous batching -------------------------------------------------------------
def test_greedy_concurrent_equals_alone(server, library):
    """A greedy request run while others join and leave (different prompts and lengths, in the
    same steps) gives the text it gives alone, and pi_backend.Llama's."""
    c = server.client()
    target = dict(prompt="In 1905 Albert Einstein published", max_tokens=48, temperature=0)
    alone = c.completions.create(model="m", **target).choices[0].text
    others = [("Bonjour, je m'appelle", 40), ("The quick brown fox", 12),
              ("import numpy as np\n", 60), ("List of prime numbers: 2, 3,", 25)]

    def other(i):
        time.sleep(0.05 * i)
        p, n = others[i]
        return c.completions.create(model="m", prompt=p, max_tokens=n, temperature=0.9,
                                    seed=i).choices[0].text

    with ThreadPoolExecutor(6) as ex:
        futs = [ex.submit(other, i) for i in range(len(others))]
        time.sleep(0.1)
        mixed = ex.submit(lambda: c.completions.create(model="m", **target).choices[0].text)
        results = [f.result() for f in futs]
        assert mixed.result() == alone
    assert all(isinstance(t, str) and t for t in results)
    ref = library.create_completion(target["prompt"], max_tokens=48, temperature=0,
                                    repeat_penalty=1.1)
    assert alone == ref["choices"][0]["text"]


# ---- disconnects, errors, the queue -----------------------------------------------------------------
def _wait_idle(server, timeout=15.0) -> dict:
    deadline = time.time() + timeout
    while True:
        m = server.metrics()
        if m["pi_active_sequences"] == 0 and m["pi_queue_depth"] == 0:
            return m
        assert time.time() < deadline, f"still busy: {m}"
        time.sleep(0.1)


def test_client_disconnect_frees_slot(server):
    before = server.metrics()["pi_generated_tokens_total"]
    with httpx.stream("POST", server.url + "/v1/completions", timeout=60,
                      json={"prompt": "Write a long story about a dragon.", "max_tokens": 400,
                            "stream": True, "temperature": 1.0}) as r:
        lines = r.iter_lines()
        got = 0
        for line in lines:
            if line.startswith("data: "):
                got += 1
                if got == 3:
                    break
        assert server.metrics()["pi_active_sequences"] == 1
    m = _wait_idle(server)
    # the request stopped long before its 400 tokens
    assert m["pi_generated_tokens_total"] - before < 200
    assert m['pi_requests_total{outcome="cancelled",route="completions"}'] >= 1
    r = server.client().completions.create(model="m", prompt="Hi", max_tokens=5)
    assert r.usage.completion_tokens == 5


def test_bad_requests(server):
    u = server.url
    _error(httpx.post(u + "/v1/chat/completions", json={"max_tokens": 3}), 400)
    _error(httpx.post(u + "/v1/chat/completions", json={"messages": []}), 400)
    _error(httpx.post(u + "/v1/chat/completions",
                      json={"messages": [{"role": "wizard", "content": "x"}]}), 400)
    err = _error(httpx.post(u + "/v1/completions", json={"prompt": "x", "temperature": "hot"}), 400)
    assert err["param"] == "temperature"
    _error(httpx.post(u + "/v1/completions", json={"prompt": "x", "max_tokens": -1}), 400)
    _error(httpx.post(u + "/v1/completions", json={"prompt": "x", "top_k": -5}), 400)
    _error(httpx.post(u + "/v1/completions", json={"prompt": "x", "n": 0}), 400)
    err = _error(httpx.post(u + "/v1/completions", json={"prompt": "x", "n": 1000}), 400)
    assert "n must be <= 36" in err["message"]
    err = _error(httpx.post(u + "/v1/completions", json={"prompt": "x", "suffix": "y"}), 400)
    assert "fill-in-the-middle" in err["message"] and "\n" not in err["message"]
    _error(httpx.post(u + "/v1/completions", json={"prompt": ["a", "b"]}), 400)
    err = _error(httpx.post(u + "/v1/completions", json={"prompt": "word " * 600}), 400)
    assert "context window" in err["message"]
    _error(httpx.post(u + "/v1/completions", json={"prompt": "x", "grammar": "root ::= ("}), 400)
    _error(httpx.post(u + "/v1/completions", json={"prompt": "x", "logit_bias": {"a": 1}}), 400)
    _error(httpx.post(u + "/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "xml"}}), 400)
    _error(httpx.post(u + "/v1/completions", content=b"{not json",
                      headers={"content-type": "application/json"}), 400)
    _error(httpx.post(u + "/extras/detokenize", json={"tokens": [10 ** 9]}), 400)
    _error(httpx.post(u + "/v1/embeddings", json={"input": []}), 400)
    _error(httpx.get(u + "/v1/nothing"), 404)
    # a bad stream is refused before any event
    _error(httpx.post(u + "/v1/completions", json={"prompt": "x", "stream": True,
                                                   "top_k": -1}), 400)
    with pytest.raises(openai.BadRequestError):
        server.client().completions.create(model="m", prompt="x", top_p=7)
    _wait_idle(server)
    # the server still serves
    assert server.client().completions.create(model="m", prompt="Hi", max_tokens=2).choices


def test_queue_full_and_api_key(small_server):
    u = small_server.url
    auth = {"authorization": "Bearer sesame"}
    _error(httpx.post(u + "/v1/completions", json={"prompt": "x", "max_tokens": 1}), 401)
    _error(httpx.post(u + "/v1/completions", json={"prompt": "x", "max_tokens": 1},
                      headers={"authorization": "Bearer wrong"}), 401)
    assert httpx.get(u + "/health").status_code == 200      # no key needed
    body = {"prompt": "Tell me a long story.", "max_tokens": 300, "stream": True}
    streams, ctxs = [], []
    try:
        for _ in range(2):      # one running, one waiting
            cm = httpx.stream("POST", u + "/v1/completions", json=body, headers=auth, timeout=60)
            ctxs.append(cm)
            streams.append(cm.__enter__())
        deadline = time.time() + 10
        while small_server.metrics()["pi_queue_depth"] < 1:
            assert time.time() < deadline
            time.sleep(0.05)
        err = _error(httpx.post(u + "/v1/completions", json={"prompt": "x", "max_tokens": 1},
                                headers=auth), 503)
        assert err["code"] == "queue_full" and "busy" in err["message"]
        with pytest.raises(openai.InternalServerError):
            small_server.client(api_key="sesame").chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}], max_tokens=1)
        assert small_server.metrics()["pi_requests_rejected_queue_full_total"] >= 2
    finally:
        for cm in ctxs:
            cm.__exit__(None, None, None)
    _wait_idle(small_server)
    r = small_server.client(api_key="sesame").completions.create(model="m", prompt="Hi",
                                                                  max_tokens=3)
    assert r.usage.completion_tokens == 3


def test_health_503_when_load_fails(tmp_path):
    """A model that cannot load: /health and the routes answer 503 with the reason."""
    from starlette.testclient import TestClient

    from pi_backend.server import ServerSettings, create_app
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    app = create_app(ServerSettings(model=str(bad)), load_in_background=False)
    with TestClient(app) as client:
        r = client.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "error"
        assert "bad.gguf" in r.json()["error"] or "GGUF" in r.json()["error"]
        err = _error(client.post("/v1/completions", json={"prompt": "x"}), 503)
        assert err["code"] == "model_loading"


def test_n_choices(server):
    """n choices: each its own sequence, `index` set, usage the prompt once; choice i is the
    single request with seed + i; streams carry every index and end once."""
    c = server.client()
    one = c.completions.create(model="m", prompt="The capital of France is", max_tokens=12,
                               temperature=0)
    r = c.completions.create(model="m", prompt="The capital of France is", max_tokens=12,
                             temperature=0, n=3)
    assert [ch.index for ch in r.choices] == [0, 1, 2]
    assert {ch.text for ch in r.choices} == {one.choices[0].text}      # greedy: all the same
    assert r.usage.prompt_tokens == one.usage.prompt_tokens
    assert r.usage.completion_tokens == 3 * one.usage.completion_tokens
    kw = dict(model="m", prompt="Once upon a time", max_tokens=16, temperature=1.0)
    r = c.completions.create(n=2, seed=7, **kw)
    singles = [c.completions.create(seed=7 + i, **kw).choices[0].text for i in range(2)]
    assert [ch.text for ch in r.choices] == singles and singles[0] != singles[1]
    # chat, streamed: each index's deltas make that choice's message
    msgs = [{"role": "user", "content": "Name a fruit."}]
    ref = c.chat.completions.create(model="m", messages=msgs, max_tokens=10, temperature=1.0,
                                    seed=3, n=2)
    parts, finish, usage = {0: [], 1: []}, {}, None
    for ch in c.chat.completions.create(model="m", messages=msgs, max_tokens=10,
                                        temperature=1.0, seed=3, n=2, stream=True,
                                        stream_options={"include_usage": True}):
        if not ch.choices:
            usage = ch.usage
        for x in ch.choices:
            parts[x.index].append(x.delta.content or "")
            finish[x.index] = x.finish_reason or finish.get(x.index)
    assert ["".join(parts[i]) for i in (0, 1)] == [ch.message.content for ch in ref.choices]
    assert finish == {i: ch.finish_reason for i, ch in enumerate(ref.choices)}
    assert usage.completion_tokens == ref.usage.completion_tokens
    _wait_idle(server)


def test_min_tokens(server):
    """min_tokens holds off every end-of-generation token until that many tokens are out."""
    c = server.client()
    eog = httpx.post(server.url + "/extras/tokenize", json={"input": "<|im_end|>"}).json()["tokens"]
    assert len(eog) == 1
    kw = dict(model="m", prompt="Hello", max_tokens=20, temperature=0,
              logit_bias={str(eog[0]): 100})           # the end, at once
    r = c.completions.create(**kw)
    assert r.usage.completion_tokens == 0 and r.choices[0].finish_reason == "stop"
    r = c.completions.create(extra_body={"min_tokens": 6}, **kw)
    assert r.usage.completion_tokens == 6 and r.choices[0].finish_reason == "stop"
    r = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}],
                                  max_tokens=20, temperature=0, logit_bias={str(eog[0]): 100},
                                  extra_body={"min_tokens": 4})
    assert r.usage.completion_tokens == 4 and r.choices[0].finish_reason == "stop"
    _error(httpx.post(server.url + "/v1/completions", json={"prompt": "x", "min_tokens": -1}),
           400)


def test_health_503_while_loading(smollm2_path):
    """/health says 503 'loading' (and the routes 503 model_loading) until the model is in,
    then 200; a live loopback server whose load waits for the test."""
    import uvicorn

    from pi_backend.server import ServerSettings, create_app
    app = create_app(ServerSettings(model=str(smollm2_path), n_ctx=256, parallel=1))
    state = app.state.pi
    go = threading.Event()
    real_load = state.load

    def slow_load():
        assert go.wait(60)
        real_load()
    state.load = slow_load
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while not srv.started:
            assert time.time() < deadline
            time.sleep(0.05)
        r = httpx.get(url + "/health")
        assert r.status_code == 503 and r.json() == {"status": "loading"}
        err = _error(httpx.post(url + "/v1/completions", json={"prompt": "x"}), 503)
        assert err["code"] == "model_loading" and "loading" in err["message"]
        go.set()
        deadline = time.time() + 60
        while httpx.get(url + "/health").status_code == 503:
            assert time.time() < deadline
            time.sleep(0.1)
        assert httpx.get(url + "/health").json()["status"] == "ok"
        r = httpx.post(url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2},
                       timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
    finally:
        go.set()
        srv.should_exit = True
        t.join(30)


def test_sparse_head(default_model, smollm2_path, tmp_path):
    """--head_mode sparse on a file with an output preview: one-sequence steps take the
    sparse head (its steps counted in /metrics), greedy text is the library's with the sparse
    head; logprobs still come from the full head. A file without a preview is refused at
    load, with the reason in /health."""
    from pi_backend import Llama
    s = Server(default_model, tmp_path / "server.log", "--parallel", "2", "--n_ctx", "256",
               "--head_mode", "sparse")
    try:
        with Llama(str(default_model), n_ctx=256, n_threads=2, head_mode="sparse",
                   verbose=False) as lib:
            prompt = "The history of the Roman Empire"
            r = s.client().completions.create(model="m", prompt=prompt, max_tokens=40,
                                              temperature=0)
            ref = lib.create_completion(prompt, max_tokens=40, temperature=0,
                                        repeat_penalty=1.1)
            assert r.choices[0].text == ref["choices"][0]["text"]
            lp = s.client().completions.create(model="m", prompt=prompt, max_tokens=3,
                                               temperature=0, logprobs=2)
            ref = lib.create_completion(prompt, max_tokens=3, temperature=0,
                                        repeat_penalty=1.1, logprobs=2)
            assert lp.choices[0].logprobs.token_logprobs == \
                ref["choices"][0]["logprobs"]["token_logprobs"]
        m = _wait_idle(s)
        assert m["pi_sparse_head_steps"] > 0
    finally:
        s.stop()
    from starlette.testclient import TestClient

    from pi_backend.server import ServerSettings, create_app
    app = create_app(ServerSettings(model=str(smollm2_path), head_mode="sparse", n_ctx=64),
                     load_in_background=False)
    with TestClient(app) as client:
        r = client.get("/health")
        assert r.status_code == 503 and "head" in r.json()["error"], r.json()


def test_metrics(server):
    server.client().completions.create(model="m", prompt="Count: 1, 2,", max_tokens=8)
    m = _wait_idle(server)
    assert m["pi_ready"] == 1 and m["pi_slots"] == 4
    assert m["pi_generated_tokens_total"] >= 8 and m["pi_prompt_tokens_total"] > 0
    assert m["pi_engine_steps_total"] > 0
    assert 0.0 <= m["pi_ffn_sparsity"] < 1.0   # a dense file: 0
    assert m["pi_time_to_first_token_seconds_count"] >= 1
    assert 'pi_requests_total{outcome="ok",route="completions"}' in m


# ---- soak -------------------------------------------------------------------------------------------
def test_soak_16_streams(server):
    """16 concurrent streaming clients, two rounds of 48 requests after a warm-up of 48: no
    errors, every stream ends in [DONE], the server's RSS flat."""
    prompts = ["Tell me about the sea.", "def add(a, b):", "1, 2, 3, 4,", "Bonjour",
               "The history of Rome", "Why is the sky blue?", "A haiku about snow:", "SELECT"]

    def one(i):
        body = {"prompt": prompts[i % len(prompts)] + " " * (i % 3), "max_tokens": 8 + i % 9,
                "stream": True, "temperature": 0.8, "seed": i}
        with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=120) as r:
            if r.status_code != 200:
                return f"status {r.status_code}: {r.read()!r}"
            ev = _sse_events(r)
        if ev[-1] != "[DONE]":
            return f"no [DONE]: {ev[-3:]}"
        last = json.loads(ev[-2])["choices"][0]["finish_reason"]
        return None if last in ("length", "stop") else f"finish {last}"

    growth = []
    with ThreadPoolExecutor(16) as ex:
        # warm-up: worker threads, their malloc arenas and the tokenizer's piece cache grow to
        # their size over the first few dozen requests
        assert [e for e in ex.map(one, range(48)) if e] == []
        for r in (1, 2):                    # two measured rounds of 48
            _wait_idle(server)
            rss0 = server.rss_kib()
            errors = [e for e in ex.map(one, range(48 * r, 48 * (r + 1))) if e]
            assert errors == []
            _wait_idle(server)
            growth.append(server.rss_kib() - rss0)
    # a leak of the per-request state (queues, samplers, logits rows ~200 KB each, threads)
    # adds MiBs in every round of 48 requests; the allocator's late growth shows in one round
    # at most, so the quieter round must stay under the smallest such leak
    assert min(growth) < 6 * 1024, f"RSS grew by {growth} KiB in the two rounds"

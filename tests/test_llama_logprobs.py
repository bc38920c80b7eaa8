"""Completion and chat logprobs against llama-cpp-python on the same SmolLM2 file: the shapes
llama-cpp-python returns; the values are our engine's teacher-forced log-softmax (exactly), whose
distribution is llama.cpp's within llama.cpp's own spread (its one-token path against its batched
path), on every instruction set; the sparse head gives way to the full head for them; streaming
gives the same numbers."""
from __future__ import annotations

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")

from peer import divergence, ref_logits, ref_logits_one_by_one, response_shape  # noqa: E402
from pi_backend import Llama  # noqa: E402
from pi_backend.logprobs import logits_to_logprobs  # noqa: E402

PROMPTS = ["The three primary colors are", "Once upon a time, in a small village,"]
CHAT = [{"role": "user", "content": "Name a fruit."}]


@pytest.fixture(scope="module")
def llm(smollm2_path):
    m = Llama(str(smollm2_path), n_ctx=256, n_threads=2, verbose=False)
    yield m
    m.close()


@pytest.fixture(scope="module")
def ref(smollm2_path):
    m = llama_cpp.Llama(model_path=str(smollm2_path), n_ctx=256, n_threads=2, verbose=False,
                        logits_all=True)
    yield m
    m.close()


def test_completion_logprobs_shape_matches_llama_cpp(llm, ref):
    ours = llm(PROMPTS[0], max_tokens=4, temperature=0, logprobs=3)
    theirs = ref(PROMPTS[0], max_tokens=4, temperature=0, logprobs=3)
    assert response_shape(ours, first_item=True) == response_shape(theirs, first_item=True)
    lp = ours["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["text_offset"]) == len(lp["token_logprobs"]) == 4
    assert "".join(lp["tokens"]) == ours["choices"][0]["text"]
    # each token's text starts where the ones before it end, after the prompt
    assert lp["text_offset"] == [len(PROMPTS[0]) + len("".join(lp["tokens"][:i]))
                                 for i in range(4)]
    for tok, v, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        assert top[tok] == v and 3 <= len(top) <= 4 and all(x <= 0 for x in top.values())


def own_logits(llm, tokens):
    """Our engine's teacher-forced logits of every position of tokens (a context of its own on
    the same model, the full head): what the API's logprobs must be computed from."""
    ctx = llm._model.new_context(n_ctx=256, n_threads=2, head_mode="dense")
    try:
        return ctx.eval(tokens, 0, logits_all=True)
    finally:
        ctx.close()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_completion_logprobs_teacher_forced_against_llama_cpp(llm, ref, prompt):
    """The values are our engine's log-softmax at each position, token and top-n alike (exactly),
    and that distribution is llama.cpp's within its own spread (its one-token path against its
    batched path): top-1 agreement and KL over the full rows, as the engine tests bound them."""
    n = 5
    r = llm(prompt, max_tokens=24, temperature=0, logprobs=n)
    lp = r["choices"][0]["logprobs"]
    n_prompt = len(llm.tokenize(prompt.encode()))
    ids = [int(t) for t in llm.input_ids]          # the prompt and every token but the last
    assert len(ids) - n_prompt + 1 == len(lp["tokens"]) == 24
    gen = ids[n_prompt:]
    mine = own_logits(llm, ids)[n_prompt - 1:]
    own = logits_to_logprobs(mine)
    rows = np.arange(len(gen))
    np.testing.assert_allclose(lp["token_logprobs"][:len(gen)], own[rows, gen], rtol=0, atol=1e-5)
    tok = llm.tokenizer()
    for i in range(len(lp["tokens"])):
        top = lp["top_logprobs"][i]
        want = {tok.detokenize([int(j)], prev_tokens=ids[:n_prompt + i]).decode(
            "utf-8", "ignore"): float(own[i][j]) for j in np.argsort(-own[i])[:n]}
        assert set(top) == set(want)
        assert max(abs(top[k] - want[k]) for k in top) <= 1e-5
        if i < len(gen):                           # greedy drew our top-1
            assert gen[i] == int(np.argmax(own[i]))
    batched = ref_logits(ref, ids)[n_prompt - 1:]
    one = ref_logits_one_by_one(ref, ids)[n_prompt - 1:]
    d, peer = divergence(mine, batched), divergence(one, batched)
    # KL within twice llama.cpp's own; top-1 misses (near-ties, a Poisson count over these few
    # positions) within twice its own plus three of their standard deviations
    misses, peer_misses = [(1 - x["top1"]) * len(mine) for x in (d, peer)]
    assert d["kl"] <= 2 * peer["kl"], (d, peer)
    assert misses <= 2 * peer_misses + 3 * (peer_misses + 1) ** 0.5, (d, peer)


def test_echo_logprobs_are_the_prompt_rows(llm, ref):
    r = llm(PROMPTS[1], max_tokens=3, temperature=0, logprobs=2, echo=True)
    lp = r["choices"][0]["logprobs"]
    ptoks = llm.tokenize(PROMPTS[1].encode())
    assert r["choices"][0]["text"].startswith(PROMPTS[1])
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["text_offset"][0] == 0 and "".join(lp["tokens"]) == r["choices"][0]["text"]
    assert len(lp["tokens"]) == len(ptoks) + 3
    own = logits_to_logprobs(own_logits(llm, ptoks))
    idx = np.arange(len(ptoks) - 1)
    nxt = np.array(ptoks[1:])
    # token p's logprob is from the logits after token p - 1
    got = np.array(lp["token_logprobs"][1:len(ptoks)])
    np.testing.assert_allclose(got, own[idx, nxt], rtol=0, atol=1e-5)
    # the generated part is the plain completion's
    plain = llm(PROMPTS[1], max_tokens=3, temperature=0, logprobs=2)["choices"][0]["logprobs"]
    assert lp["token_logprobs"][len(ptoks):] == plain["token_logprobs"]


def test_stream_logprobs_equal_non_stream(llm):
    kw = dict(max_tokens=12, temperature=0, logprobs=3)
    whole = llm(PROMPTS[0], **kw)["choices"][0]
    chunks = list(llm(PROMPTS[0], stream=True, **kw))
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["finish_reason"]
    parts = [c["choices"][0] for c in chunks[:-1]]
    assert "".join(p["text"] for p in parts) == whole["text"]
    for key in ("tokens", "text_offset", "token_logprobs", "top_logprobs"):
        assert [v for p in parts for v in p["logprobs"][key]] == whole["logprobs"][key]


def test_stream_logprobs_cut_at_stop(llm):
    whole = llm(PROMPTS[0], max_tokens=12, temperature=0)["choices"][0]["text"]
    stop = whole[6:9]
    kw = dict(max_tokens=12, temperature=0, logprobs=2, stop=[stop])
    plain = llm(PROMPTS[0], **kw)["choices"][0]
    chunks = [c["choices"][0] for c in llm(PROMPTS[0], stream=True, **kw)]
    assert plain["text"] == whole[:6] and chunks[-1]["finish_reason"] == "stop"
    assert "".join(c["text"] for c in chunks) == plain["text"]
    assert all(c["logprobs"] is not None for c in chunks[:-1])


def test_chat_logprobs_shape_and_values(llm, ref):
    kw = dict(messages=CHAT, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2)
    ours = llm.create_chat_completion(**kw)
    theirs = ref.create_chat_completion(**kw)
    assert response_shape(ours, first_item=True) == response_shape(theirs, first_item=True)
    content = ours["choices"][0]["logprobs"]["content"]
    assert "".join(c["token"] for c in content) == ours["choices"][0]["message"]["content"]
    for c in content:
        assert c["top_logprobs"][0]["logprob"] >= c["logprob"] or any(
            t["token"] == c["token"] for t in c["top_logprobs"])
    # the chat stream gives the same per-token entries
    stream = [ch for ch in llm.create_chat_completion(stream=True, **kw)
              if ch["choices"][0].get("logprobs")]
    assert [e for ch in stream for e in ch["choices"][0]["logprobs"]["content"]] == content
    # logprobs=True alone gives llama-cpp-python's answer: none
    assert llm.create_chat_completion(messages=CHAT, max_tokens=2, logprobs=True)[
        "choices"][0]["logprobs"] is None


def test_sparse_head_uses_the_full_head_for_logprobs(default_model):
    llm = Llama(str(default_model), n_ctx=256, n_threads=2, verbose=False, head_mode="sparse")
    try:
        assert llm.head_mode == "sparse"
        llm.reset_stats()
        kw = dict(max_tokens=10, temperature=0, logprobs=4)
        a = llm(PROMPTS[0], **kw)["choices"][0]["logprobs"]
        assert llm.stats()["head_steps"] == 0      # no step took the sparse head
        assert llm.head_mode == "sparse"            # restored after the call
        llm(PROMPTS[0], max_tokens=3, temperature=0)
        assert llm.stats()["head_steps"] > 0        # (which plain generation does take)
        llm.set_head_mode("dense")
        b = llm(PROMPTS[0], **kw)["choices"][0]["logprobs"]
        assert a == b  # exact logits: the dense head's numbers, bit for bit
    finally:
        llm.close()


@pytest.mark.parametrize("bad", [-1, True, 1.5, "3"])
def test_bad_logprobs_raise(llm, bad):
    with pytest.raises(ValueError, match="logprobs"):
        llm(PROMPTS[0], max_tokens=2, logprobs=bad)
    with pytest.raises(ValueError, match="top_logprobs"):
        llm.create_chat_completion(messages=CHAT, max_tokens=2, logprobs=True,
                                   top_logprobs=bad)

"""save_state / load_state: generation after load_state continues exactly as it did after
save_state (tokens and logits bit for bit), in the same Llama and in another on the same file;
a state that does not fit is refused in one line."""
from __future__ import annotations

import numpy as np
import pytest

from pi_backend import Llama, LlamaState, PiError

PROMPT = "Once upon a time, in a small village,"


@pytest.fixture(scope="module")
def llm(smollm2_path):
    m = Llama(str(smollm2_path), n_ctx=256, n_threads=2, verbose=False)
    yield m
    m.close()


def sampled(llm, n, seed):
    """n tokens sampled (temperature 0.8, seeded) after what is in the cache, and the logits
    after each."""
    toks, logits = [], []
    for t in llm.generate([], reset=False, temp=0.8, seed=seed):
        toks.append(t)
        logits.append(llm._last_logits.copy())
        if len(toks) == n:
            break
    return toks, np.array(logits)


def test_generation_after_load_state_is_identical(llm, smollm2_path):
    llm.reset()
    llm.eval(llm.tokenize(PROMPT.encode()))
    first, _ = sampled(llm, 5, seed=1)
    state = llm.save_state()
    assert isinstance(state, LlamaState) and state.n_tokens == llm.n_tokens
    assert list(state.input_ids) == list(llm.input_ids)
    a, la = sampled(llm, 12, seed=7)
    # the cache moved on: something else in between
    llm(PROMPT + " there lived", max_tokens=4, temperature=0)
    llm.load_state(state)
    assert list(llm.input_ids) == list(state.input_ids)
    b, lb = sampled(llm, 12, seed=7)
    assert a == b and np.array_equal(la, lb)
    # another Llama on the same file, loaded with the state, continues the same way
    other = Llama(str(smollm2_path), n_ctx=256, n_threads=1, verbose=False)
    try:
        other.load_state(state)
        c, lc = sampled(other, 12, seed=7)
        assert c == a and np.array_equal(lc, la)
    finally:
        other.close()
    # and the completion API continues from it too (its prompt is the saved tokens)
    llm.load_state(state)
    r1 = llm(list(state.input_ids), max_tokens=6, temperature=0.8, seed=3)
    llm.reset()
    r2 = llm(list(state.input_ids), max_tokens=6, temperature=0.8, seed=3)
    assert r1["choices"][0]["text"] == r2["choices"][0]["text"]


def test_save_state_of_empty_and_bad_states(llm, smollm2_path):
    llm.reset()
    empty = llm.save_state()
    assert empty.n_tokens == 0 and empty.scores.shape == (0, llm.n_vocab())
    llm.load_state(empty)
    assert llm.n_tokens == 0
    llm.eval(llm.tokenize(PROMPT.encode()))
    st = llm.save_state()
    bad = LlamaState(st.input_ids[:-1], st.scores, st.n_tokens, st.llama_state,
                     st.llama_state_size, st.seed)
    with pytest.raises(ValueError, match="input_ids"):
        llm.load_state(bad)
    short = LlamaState(st.input_ids[:-1], st.scores, st.n_tokens - 1, st.llama_state,
                       st.llama_state_size, st.seed)
    with pytest.raises(PiError, match="pi_context_set_state"):
        llm.load_state(short)   # the buffer holds one token more than it says
    assert list(llm.input_ids) == list(st.input_ids)   # nothing changed
    small = Llama(str(smollm2_path), n_ctx=4, n_threads=1, verbose=False)
    try:
        with pytest.raises(ValueError, match="n_ctx"):
            small.load_state(st)
    finally:
        small.close()

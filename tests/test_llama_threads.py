"""One Llama shared by threads: every public entry point holds it for its whole operation, so
two threads running mixed work at once (sampled and greedy completions, streams, chat with
logprobs, embeddings, save / load state, mode switches) get exactly what each op gives alone."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from pi_backend import Llama

CHAT = [{"role": "user", "content": "Name a color."}]


@pytest.fixture(scope="module")
def llm(smollm2_path):
    m = Llama(str(smollm2_path), n_ctx=256, n_threads=1, verbose=False, embedding=True)
    yield m
    m.close()


def _ops(llm):
    """Operations whose results do not depend on what ran before them."""
    def completion():
        return llm("The three primary colors are", max_tokens=10, temperature=0.8,
                   seed=11)["choices"][0]["text"]

    def stream():
        return "".join(c["choices"][0]["text"] for c in llm(
            "Once upon a time", max_tokens=10, temperature=0, stream=True))

    def chat_logprobs():
        r = llm.create_chat_completion(CHAT, max_tokens=6, temperature=0, logprobs=True,
                                       top_logprobs=2)
        return r["choices"][0]["message"]["content"], r["choices"][0]["logprobs"]

    def embed():
        return llm.embed("Threads share one model.")

    llm.reset()
    llm.eval(llm.tokenize(b"A state of"))
    saved = llm.save_state()

    def state_roundtrip():
        # two calls, not one operation: whatever another thread ran in between, the
        # completion of the saved tokens is the same (reusing the loaded cache or not)
        llm.load_state(saved)
        return llm(list(saved.input_ids), max_tokens=6, temperature=0.7,
                   seed=5)["choices"][0]["text"]

    def stats():
        # three calls: another thread's tokens may land between reset and stats, so what is
        # compared is what no interleaving changes (the mode, the counters' names and types)
        llm.set_ffn_mode("dense")
        llm.reset_stats()
        s = llm.stats()
        return llm.ffn_mode, sorted((k, type(v).__name__) for k, v in s.items())

    return [completion, stream, chat_logprobs, embed, state_roundtrip, stats]


def test_two_threads_equal_sequential(llm):
    ops = _ops(llm)
    want = [op() for op in ops]
    assert want == [op() for op in ops]   # each op on its own is repeatable
    got = {0: [], 1: []}
    errors = []

    def work(i):
        try:
            order = ops if i == 0 else ops[::-1]
            for _ in range(2):
                for op in order:
                    got[i].append((op.__name__, op()))
        except Exception as e:  # reported below
            errors.append(e)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    expect = {op.__name__: w for op, w in zip(ops, want)}
    for i in (0, 1):
        assert len(got[i]) == 2 * len(ops)
        for name, result in got[i]:
            assert result == expect[name], name


def test_every_public_method_holds_the_llama(llm):
    """Entry points that touch the engine take the Llama: while a stream holds it, another
    thread's call waits, and the holder's own call raises instead of deadlocking."""
    calls = {"eval": lambda: llm.eval([1]), "reset": llm.reset,
             "embed": lambda: llm.embed("x"), "save_state": llm.save_state,
             "stats": llm.stats, "reset_stats": llm.reset_stats,
             "set_ffn_mode": lambda: llm.set_ffn_mode("dense"),
             "create_completion": lambda: llm("x", max_tokens=1),
             "create_chat_completion": lambda: llm.create_chat_completion(CHAT, max_tokens=1)}
    stream = llm("Hello", max_tokens=4, temperature=0, stream=True)
    next(stream)
    for name, call in calls.items():
        with pytest.raises(RuntimeError, match="unfinished stream"):
            call()
    done = []
    t = threading.Thread(target=lambda: done.append(llm.stats()))
    t.start()
    t.join(timeout=0.5)
    assert t.is_alive() and not done
    list(stream)
    t.join()
    assert done and np.isscalar(done[0]["tokens"])

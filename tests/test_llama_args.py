"""Every argument llama-cpp-python's Llama.__init__, create_completion and
create_chat_completion accept (read from its signatures) either works here or raises a clear
one-line error; none is silently ignored."""
from __future__ import annotations

import inspect

import pytest

llama_cpp = pytest.importorskip("llama_cpp")

from pi_backend import Llama  # noqa: E402
from pi_backend import llama as pl  # noqa: E402


def params(fn):
    return {n: p for n, p in inspect.signature(fn).parameters.items()
            if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def other_value(default):
    """A value unlike llama-cpp-python's default of an argument."""
    if isinstance(default, bool):
        return not default
    if isinstance(default, (int, float)):
        return default + 3
    return "something"


def test_every_constructor_argument_is_handled_or_refused(smollm2_path):
    theirs = params(llama_cpp.Llama.__init__)
    ours = params(Llama.__init__)
    unhandled = [n for n in theirs if n not in ours and n not in pl._ACCEPTED_KWARGS
                 and n not in pl._DEFAULT_ONLY_KWARGS]
    assert not unhandled
    accepted, refused = {}, []
    for name, p in theirs.items():
        if name in ours or name in ("model_path",):
            continue
        if name in pl._ACCEPTED_KWARGS:
            accepted[name] = other_value(p.default)
            continue
        # llama-cpp-python's default is accepted; another value is refused before loading
        assert p.default in pl._DEFAULT_ONLY_KWARGS[name] or p.default is None, name
        with pytest.raises(NotImplementedError) as e:
            Llama(str(smollm2_path), verbose=False, **{name: other_value(p.default)})
        msg = str(e.value)
        assert name in msg and "\n" not in msg
        refused.append(name)
    assert refused and accepted
    # the defaults of them all, and other values of the accepted ones, load and run
    defaults = {n: p.default for n, p in theirs.items()
                if n not in ours and n != "model_path"}
    m = Llama(str(smollm2_path), n_ctx=64, verbose=False, **{**defaults, **accepted})
    try:
        assert m("Hi", max_tokens=2, temperature=0)["choices"][0]["text"]
    finally:
        m.close()
    with pytest.raises(TypeError, match="no_such_argument"):
        Llama(str(smollm2_path), verbose=False, no_such_argument=1)


@pytest.mark.parametrize("method", ["create_completion", "create_chat_completion"])
def test_every_generation_argument_is_a_parameter(method):
    theirs = params(getattr(llama_cpp.Llama, method))
    ours = inspect.signature(getattr(Llama, method)).parameters
    assert not any(p.kind == p.VAR_KEYWORD for p in ours.values())  # nothing swallowed
    assert set(theirs) <= set(ours), set(theirs) - set(ours)
    # the same order, for positional calls
    assert [n for n in ours if n in theirs] == list(theirs)


def test_refused_generation_arguments_say_so(smollm2_path):
    m = Llama(str(smollm2_path), n_ctx=64, verbose=False)
    try:
        with pytest.raises(ValueError, match="suffix needs a fill-in-the-middle model"):
            m("Hi", suffix="there", max_tokens=2)
        m.create_chat_completion([{"role": "user", "content": "Hi"}], max_tokens=2,
                                 functions=None, function_call=None, tools=None,
                                 tool_choice=None, logprobs=False, top_logprobs=None)
    finally:
        m.close()


def test_rope_overrides_match_llama_cpp(smollm2_path):
    """rope_freq_base / rope_freq_scale override the file's, as llama.cpp does (LangChain
    passes them): teacher-forced logits against llama-cpp-python with the same overrides."""
    import numpy as np
    from peer import divergence, ref_logits
    kw = dict(rope_freq_base=20000.0, rope_freq_scale=0.5)
    ours = Llama(str(smollm2_path), n_ctx=128, n_threads=2, verbose=False, **kw)
    plain = Llama(str(smollm2_path), n_ctx=128, n_threads=2, verbose=False)
    ref = llama_cpp.Llama(model_path=str(smollm2_path), n_ctx=128, n_threads=2, verbose=False,
                          logits_all=True, **kw)
    try:
        toks = ours.tokenize(b"The quick brown fox jumps over the lazy dog because it was")
        got = ours._ctx.eval(toks, 0, logits_all=True)
        base = plain._ctx.eval(toks, 0, logits_all=True)
        want = ref_logits(ref, toks)
        d, moved = divergence(got, want), divergence(base, want)
        assert d["top1"] == 1.0 and d["kl"] < 1e-3
        assert moved["kl"] > 10 * d["kl"]    # the override changed the numbers
        assert np.isfinite(got).all()
    finally:
        ours.close()
        plain.close()
        ref.close()

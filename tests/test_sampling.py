"""llama.cpp's sampler chain on crafted logits: each stage's semantics, determinism under a seed,
frequencies against the softmax, and the one-line errors for bad arguments."""
import math

import numpy as np
import pytest

from pi_backend.sampling import LLAMA_DEFAULT_SEED, Sampler, SamplingParams, check_params

OFF = dict(top_k=0, top_p=1.0, min_p=0.0)  # every filter off


def _logits(n=50, seed=0):
    return np.random.default_rng(seed).normal(0, 3, n).astype(np.float32)


def _draw(logits, n, seed=1, **kw):
    """n tokens from one chain (the penalties, if any, see the earlier picks)."""
    logits = np.asarray(logits, dtype=np.float32)
    with Sampler(SamplingParams(**kw), len(logits), seed) as s:
        return [s.sample(logits) for _ in range(n)]


def _freq_close(drawn, tok, p):
    """The frequency of tok in drawn is within 5 standard deviations of p."""
    n = len(drawn)
    sd = math.sqrt(p * (1 - p) / n)
    return abs(drawn.count(tok) / n - p) < 5 * sd


def test_same_seed_same_tokens_and_different_seed_differs():
    x = _logits(200)
    kw = dict(temperature=1.5, **OFF)
    a, b, c = (_draw(x, 64, seed=s, **kw) for s in (1234, 1234, 99))
    assert a == b
    assert a != c
    assert len(set(a)) > 5  # it really samples


def test_same_seed_same_tokens_with_every_sampler():
    x = _logits(300, seed=4)
    for kw in (dict(temperature=0.8), dict(temperature=0.8, typical_p=0.9),
               dict(temperature=-1.0), dict(temperature=0.8, mirostat_mode=1),
               dict(temperature=0.8, mirostat_mode=2), dict(temperature=0.8, repeat_penalty=1.3)):
        assert _draw(x, 30, seed=5, **kw) == _draw(x, 30, seed=5, **kw), kw


def test_temperature_zero_is_greedy():
    for s in range(5):
        x = _logits(300, seed=s)
        assert _draw(x, 5, seed=LLAMA_DEFAULT_SEED, temperature=0.0) == [int(np.argmax(x))] * 5


def test_top_k_one_equals_greedy():
    for s in range(5):
        x = _logits(300, seed=s)
        drawn = _draw(x, 20, seed=s, temperature=1.0, top_k=1, top_p=1.0, min_p=0.0)
        assert set(drawn) == {int(np.argmax(x))}


def test_input_logits_not_modified():
    x = _logits()
    y = x.copy()
    _draw(x, 3, seed=0, temperature=0.7, repeat_penalty=1.3, logit_bias={0: 5.0})
    assert np.array_equal(x, y)


@pytest.mark.parametrize("temp", [1.0, 0.5])
def test_top_k_two_frequencies_match_softmax(temp):
    x = np.array([0.0, 3.0, 2.0, -1.0, 1.0])
    drawn = _draw(x, 4000, seed=11, temperature=temp, top_k=2, top_p=1.0, min_p=0.0)
    assert set(drawn) == {1, 2}  # only the two best ids, both of them
    p1 = 1.0 / (1.0 + math.exp((2.0 - 3.0) / temp))  # softmax of the two, at this temperature
    assert _freq_close(drawn, 1, p1)


def test_top_p_keeps_smallest_nucleus():
    x = np.log([0.5, 0.3, 0.15, 0.05])
    for p, kept in ((0.6, {0, 1}), (0.5, {0}), (0.9, {0, 1, 2}), (1.0, {0, 1, 2, 3})):
        assert set(_draw(x, 800, seed=7, temperature=1.0, top_k=0, top_p=p,
                         min_p=0.0)) == kept, p
    drawn = _draw(x, 4000, seed=7, temperature=1.0, top_k=0, top_p=0.6, min_p=0.0)
    assert _freq_close(drawn, 0, 0.5 / 0.8)  # renormalised over the nucleus


def test_min_p_relative_to_max():
    x = np.log([0.5, 0.2, 0.04, 0.26])
    # threshold 0.1 * 0.5 = 0.05: token 2 (0.04) is dropped; 0.5 * 0.5 = 0.25: 0 and 3 stay
    for p, kept in ((0.1, {0, 1, 3}), (0.5, {0, 3})):
        assert set(_draw(x, 800, seed=8, temperature=1.0, top_k=0, top_p=1.0, min_p=p)) == kept


def test_negative_temperature_is_plain_softmax():
    x = np.array([1.0, 0.0, -1.0])
    drawn = _draw(x, 4000, seed=3, temperature=-1.0, top_k=1, top_p=0.1, min_p=0.9)
    assert set(drawn) == {0, 1, 2}  # the filters are not applied
    assert _freq_close(drawn, 0, math.e / (math.e + 1 + 1 / math.e))


def test_temperature_sharpens_distribution():
    x = np.log([0.6, 0.4])
    cold = _draw(x, 3000, seed=1, temperature=0.2, **OFF)
    hot = _draw(x, 3000, seed=1, temperature=5.0, **OFF)
    assert _freq_close(cold, 0, 0.6 ** 5 / (0.6 ** 5 + 0.4 ** 5))
    assert _freq_close(hot, 0, 0.6 ** 0.2 / (0.6 ** 0.2 + 0.4 ** 0.2))


def test_never_samples_removed_token():
    x = np.array([0.0, 0.0, -np.inf, 0.0])
    assert 2 not in _draw(x, 300, seed=2, temperature=1.0, **OFF)


def test_logit_bias_bans_and_forces():
    x = _logits(100, seed=11)
    top = int(np.argmax(x))
    assert _draw(x, 3, temperature=0.0, logit_bias={top: -math.inf}) == \
        [int(np.argsort(-x)[1])] * 3
    assert _draw(x, 3, temperature=0.8, logit_bias={"17": 100.0}) == [17] * 3  # str keys too


def test_every_token_excluded_raises():
    x = np.zeros(4)
    with pytest.raises(RuntimeError, match="no token is allowed"):
        _draw(x, 1, temperature=0.8, logit_bias={t: -math.inf for t in range(4)})


def _penalized(logits, history, repeat=1.0, freq=0.0, present=0.0):
    """llama.cpp's rule (llama_sampler_penalties_apply): a token seen `count` times in the
    window has its logit divided by `repeat` when positive, multiplied when not, then lowered
    by count * freq + present."""
    out = np.array(logits, dtype=np.float64)
    ids, counts = np.unique(np.asarray(history, dtype=np.int64), return_counts=True)
    for t, c in zip(ids, counts):
        out[t] = out[t] / repeat if out[t] > 0 else out[t] * repeat
        out[t] -= c * freq + present
    return out


def test_repeat_penalty_divides_positive_and_multiplies_negative():
    # greedy picks 0 (2.0); then 0 counts as seen: 2.0 / 2 = 1.0 < 1.5, so 2
    assert _draw([2.0, -2.0, 1.5, 0.5], 2, temperature=0.0, repeat_penalty=2.0) == [0, 2]
    # a negative logit is multiplied: -1 * 3 = -3 < -1.5
    assert _draw([-1.0, -1.5], 2, temperature=0.0, repeat_penalty=3.0) == [0, 1]


@pytest.mark.parametrize("window", [1, 3, 8])
def test_penalties_follow_llama_cpp_over_the_window(window):
    x = _logits(12, seed=window) / 6  # close logits, so the penalties matter
    kw = dict(repeat=1.3, freq=0.4, present=0.3)
    drawn = _draw(x, 40, temperature=0.0, repeat_penalty=kw["repeat"],
                  frequency_penalty=kw["freq"], presence_penalty=kw["present"],
                  penalty_last_n=window)
    want = []
    for _ in range(40):
        want.append(int(np.argmax(_penalized(x, want[-window:], **kw))))
    assert drawn == want
    assert len(set(drawn)) > 1  # the penalties did change the picks


class _OneChain:
    """The reference: every stage of pi_backend.sampling's chain in one llama.cpp chain over
    the whole vocabulary (what Sampler ran before it gave the penalties only the tokens it
    accepted)."""

    def __init__(self, params, n_vocab, seed):
        import ctypes

        import llama_cpp as lc

        from pi_backend import sampling
        self.lc, self.n = lc, n_vocab
        self.chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        for _, smpl in sampling._stages(lc, check_params(params, n_vocab), n_vocab,
                                        sampling.seed_u32(seed), None):
            lc.llama_sampler_chain_add(self.chain, smpl)
        self.cand = np.zeros(n_vocab, dtype=sampling.TOKEN_DATA)
        self.arr = lc.llama_token_data_array()
        self.ref = ctypes.byref(self.arr)

    def sample(self, logits):
        self.cand["id"] = np.arange(self.n)
        self.cand["logit"] = logits
        a = self.arr
        a.data = self.cand.ctypes.data_as(self.lc.llama_token_data_p)
        a.size, a.selected, a.sorted = self.n, -1, False
        self.lc.llama_sampler_apply(self.chain, self.ref)
        tok = int(a.data[a.selected].id)
        self.lc.llama_sampler_accept(self.chain, tok)
        return tok

    def close(self):
        self.lc.llama_sampler_free(self.chain)


@pytest.mark.parametrize("kw", [
    dict(temperature=0.8, repeat_penalty=1.1),
    dict(temperature=0.0, repeat_penalty=1.3, penalty_last_n=4),
    dict(temperature=1.0, repeat_penalty=0.7, frequency_penalty=0.5, presence_penalty=-0.4,
         penalty_last_n=8),
    dict(temperature=0.9, repeat_penalty=1.2, logit_bias={5: 3.0, 100: -2.0, 4000: 10.0}),
    dict(temperature=0.7, mirostat_mode=2, repeat_penalty=1.1, frequency_penalty=0.2),
    dict(temperature=0.7, repeat_penalty=1.5, penalty_last_n=3, **OFF)])
def test_penalties_over_accepted_tokens_equal_one_chain(kw):
    """Sampler runs the penalties over the tokens it accepted only: the same tokens as one
    llama.cpp chain over the whole vocabulary, step after step (repeats made likely)."""
    n = 5000
    rng = np.random.default_rng(7)
    base = rng.normal(0, 2, n).astype(np.float32)
    base[rng.choice(n, 20, replace=False)] += 12
    for seed in (1, 2):
        ref = _OneChain(SamplingParams(**kw), n, seed)
        with Sampler(SamplingParams(**kw), n, seed) as s:
            got, want = [], []
            for _ in range(200):
                x = base + rng.normal(0, 0.5, n).astype(np.float32)
                got.append(s.sample(x))
                want.append(ref.sample(x))
        ref.close()
        assert got == want
        assert len(set(got)) > 1


def test_chains_do_not_share_state():
    x = np.array([2.0, 1.9, 0.0])
    with Sampler(SamplingParams(temperature=0.0, repeat_penalty=4.0), 3) as a, \
            Sampler(SamplingParams(temperature=0.0, repeat_penalty=4.0), 3) as b:
        assert [a.sample(x), a.sample(x)] == [0, 1]
        assert b.sample(x) == 0  # b never saw a's picks


def test_sampler_misuse_raises():
    s = Sampler(SamplingParams(temperature=0.0), 5)
    with pytest.raises(ValueError, match="shape"):
        s.sample(np.zeros(4, dtype=np.float32))
    s.close()
    s.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        s.sample(np.zeros(5, dtype=np.float32))


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=math.nan), "temperature"), (dict(temperature=math.inf), "temperature"),
    (dict(top_p=1.01), "top_p"), (dict(top_p=-0.1), "top_p"), (dict(top_p=math.nan), "top_p"),
    (dict(min_p=math.nan), "min_p"), (dict(min_p=1.5), "min_p"),
    (dict(typical_p=-0.5), "typical_p"), (dict(typical_p=math.nan), "typical_p"),
    (dict(top_k=-1), "top_k"), (dict(repeat_penalty=0.0), "repeat_penalty"),
    (dict(repeat_penalty=-1.0), "repeat_penalty"), (dict(repeat_penalty=math.nan), "repeat"),
    (dict(frequency_penalty=math.nan), "frequency_penalty"),
    (dict(presence_penalty=math.inf), "presence_penalty"),
    (dict(penalty_last_n=-2), "penalty_last_n"), (dict(mirostat_mode=3), "mirostat_mode"),
    (dict(mirostat_tau=math.nan), "mirostat_tau"), (dict(mirostat_eta=-1.0), "mirostat_eta"),
    (dict(tfs_z=0.9), "tfs_z"), (dict(logit_bias={100: 1.0}), "outside the vocabulary"),
    (dict(logit_bias={-1: 1.0}), "outside the vocabulary"),
    (dict(logit_bias={3: math.nan}), r"logit_bias\[3\]"),
    (dict(logit_bias={3: math.inf}), r"logit_bias\[3\]"),
])
def test_invalid_arguments_raise_one_line_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match) as e:
        check_params(SamplingParams(**kwargs), 100)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=match):
        Sampler(SamplingParams(**kwargs), 100)


@pytest.mark.parametrize("kwargs", [dict(top_k=2.5), dict(top_k="4"), dict(temperature="hot"),
                                    dict(mirostat_mode=True), dict(grammar="root ::= \"a\""),
                                    dict(logit_bias={"x": 1.0})])
def test_wrong_types_raise_type_error(kwargs):
    with pytest.raises(TypeError, match=list(kwargs)[0]):
        check_params(SamplingParams(**kwargs), 100)


def test_valid_edges_accepted():
    for kw in (dict(top_p=0.0), dict(top_p=1.0), dict(min_p=1.0), dict(top_k=0),
               dict(temperature=-0.5), dict(penalty_last_n=0), dict(logit_bias={99: -math.inf}),
               dict(top_k=np.int64(3)), dict(temperature=np.float32(0.3))):
        assert check_params(SamplingParams(**kw), 100) is not None


def test_calibration_text_same_seed_same_text(smollm2_path):
    from pi_backend.convert.calibration import generate_sequences
    from pi_backend.model import Model
    from pi_backend.tokenizer import Tokenizer
    model, tok = Model(str(smollm2_path)), Tokenizer(str(smollm2_path))
    try:
        a, b, c = (generate_sequences(model, tok, 96, seed=s, n_threads=2, max_len=48)
                   for s in (0, 0, 1))
    finally:
        tok.close()
        model.close()
    assert sum(map(len, a)) >= 48
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert [x.tolist() for x in a] != [x.tolist() for x in c]

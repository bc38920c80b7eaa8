"""Sampling on crafted logits: llama.cpp semantics of each stage, determinism under a seed."""
import numpy as np
import pytest

from pi_backend.sampling import (SamplingParams, apply_logit_bias, apply_penalties, make_rng,
                                 min_p_filter, sample, top_k_filter, top_p_filter)


def _logits(n=50, seed=0):
    return np.random.default_rng(seed).normal(0, 3, n).astype(np.float32)


def _draw(logits, params, n, seed, last=()):
    rng = make_rng(seed)
    return [sample(logits, params, last, rng) for _ in range(n)]


def test_same_seed_same_tokens_and_different_seed_differs():
    x = _logits(200)
    p = SamplingParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0)
    a = _draw(x, p, 64, seed=1234)
    b = _draw(x, p, 64, seed=1234)
    c = _draw(x, p, 64, seed=99)
    assert a == b
    assert a != c
    assert len(set(a)) > 5  # it really samples


def test_temperature_zero_is_greedy():
    x = _logits(300, seed=3)
    p = SamplingParams(temperature=0.0)
    assert _draw(x, p, 5, seed=None) == [int(np.argmax(x))] * 5


def test_top_k_one_equals_greedy():
    for s in range(5):
        x = _logits(300, seed=s)
        p = SamplingParams(temperature=1.0, top_k=1, top_p=1.0, min_p=0.0)
        assert set(_draw(x, p, 20, seed=s)) == {int(np.argmax(x))}


def test_input_logits_not_modified():
    x = _logits()
    y = x.copy()
    sample(x, SamplingParams(temperature=0.7, repeat_penalty=1.3, logit_bias={0: 5.0}),
           [1, 2, 3], make_rng(0))
    assert np.array_equal(x, y)


def test_top_k_keeps_exactly_k_largest():
    x = np.array([1.0, 5.0, 3.0, 4.0, 2.0])
    y = top_k_filter(x.copy(), 2)
    assert set(np.flatnonzero(np.isfinite(y))) == {1, 3}
    assert np.array_equal(top_k_filter(x.copy(), 0), x)  # k <= 0: no-op
    p = SamplingParams(temperature=1.0, top_k=2, top_p=1.0, min_p=0.0)
    assert set(_draw(x, p, 200, seed=5)) == {1, 3}


def test_top_p_keeps_smallest_nucleus():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    x = np.log(probs)
    # 0.5 < 0.6 <= 0.8: two tokens
    assert set(np.flatnonzero(np.isfinite(top_p_filter(x.copy(), 0.6)))) == {0, 1}
    # exactly reaching p keeps that token and stops
    assert set(np.flatnonzero(np.isfinite(top_p_filter(x.copy(), 0.5)))) == {0}
    assert set(np.flatnonzero(np.isfinite(top_p_filter(x.copy(), 0.9)))) == {0, 1, 2}
    assert np.array_equal(top_p_filter(x.copy(), 1.0), x)
    p = SamplingParams(temperature=1.0, top_k=0, top_p=0.6, min_p=0.0)
    drawn = _draw(x, p, 400, seed=7)
    assert set(drawn) == {0, 1}
    # renormalised over the nucleus: 0.5/0.8 = 0.625
    assert abs(drawn.count(0) / len(drawn) - 0.625) < 0.08


def test_min_p_relative_to_max():
    probs = np.array([0.5, 0.2, 0.04, 0.26])
    x = np.log(probs)
    # threshold 0.1 * 0.5 = 0.05: token 2 (0.04) is dropped
    assert set(np.flatnonzero(np.isfinite(min_p_filter(x.copy(), 0.1)))) == {0, 1, 3}
    # threshold 0.5 * 0.5 = 0.25: tokens 0 and 3 stay
    assert set(np.flatnonzero(np.isfinite(min_p_filter(x.copy(), 0.5)))) == {0, 3}
    p = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.5)
    assert set(_draw(x, p, 200, seed=8)) == {0, 3}


def test_logit_bias_bans_and_forces():
    x = _logits(100, seed=11)
    top = int(np.argmax(x))
    g = SamplingParams(temperature=0.0, logit_bias={top: -float("inf")})
    assert sample(x, g) != top
    assert sample(x, SamplingParams(temperature=0.0, logit_bias={"17": 100.0})) == 17
    y = apply_logit_bias(x.astype(np.float64), {3: 2.5})
    assert y[3] == pytest.approx(x[3] + 2.5)
    with pytest.raises(ValueError):
        apply_logit_bias(x.copy(), {1000: 1.0})


def test_repeat_penalty_llama_cpp_semantics():
    x = np.array([2.0, -2.0, 1.5, 0.5])
    y = apply_penalties(x.copy(), [0, 1, 1], repeat_penalty=2.0)
    # positive logits are divided, non-positive ones multiplied; count does not matter
    assert np.allclose(y, [1.0, -4.0, 1.5, 0.5])
    # greedy would pick 0; with the penalty 2 is best
    assert sample(x, SamplingParams(temperature=0.0, repeat_penalty=2.0), [0]) == 2


def test_frequency_and_presence_penalties():
    x = np.zeros(4)
    y = apply_penalties(x.copy(), [1, 1, 1, 2], frequency_penalty=0.5, presence_penalty=0.25)
    assert np.allclose(y, [0.0, -1.75, -0.75, 0.0])


def test_penalty_window_is_last_n():
    x = np.array([3.0, 2.9, 0.0])
    # token 0 occurred only outside the window of the last 2 tokens: not penalized
    y = apply_penalties(x.copy(), [0, 2, 2], repeat_penalty=2.0, penalty_last_n=2)
    assert y[0] == 3.0
    y = apply_penalties(x.copy(), [0, 2, 2], repeat_penalty=2.0, penalty_last_n=3)
    assert y[0] == 1.5
    y = apply_penalties(x.copy(), [0, 2, 2], repeat_penalty=2.0, penalty_last_n=0)
    assert np.array_equal(y, x)


def test_temperature_sharpens_distribution():
    x = np.log(np.array([0.6, 0.4]))
    cold = _draw(x, SamplingParams(temperature=0.2, top_k=0, top_p=1.0, min_p=0.0), 300, 1)
    hot = _draw(x, SamplingParams(temperature=5.0, top_k=0, top_p=1.0, min_p=0.0), 300, 1)
    assert cold.count(0) / 300 > 0.8  # 0.6^5 / (0.6^5 + 0.4^5) ~ 0.88
    assert 0.4 < hot.count(0) / 300 < 0.65  # near uniform


def test_never_samples_removed_token():
    x = np.array([0.0, 0.0, -np.inf, 0.0])
    p = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    assert 2 not in _draw(x, p, 300, seed=2)

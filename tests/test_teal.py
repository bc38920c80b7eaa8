"""bench.teal's numpy reference forward: it computes the model our engine computes, and its
input thresholds drop what they should."""

import numpy as np
import pytest

from bench.teal import break_even, forward, load_weights, nll
from pi_backend.bench import DEFAULT_TEXT

PROSE = DEFAULT_TEXT.read_text()


@pytest.fixture(scope="module")
def setup(smollm2_path):
    from pi_backend.tokenizer import Tokenizer
    tok = Tokenizer(str(smollm2_path))
    ids = np.array(tok.tokenize(PROSE.encode(), add_bos=False))[:48]
    tok.close()
    hp, w = load_weights(str(smollm2_path))
    return hp, w, ids


def test_numpy_forward_matches_the_engine(setup, smollm2_path):
    from pi_backend.model import Model
    hp, w, ids = setup
    ref = forward(hp, w, ids)
    m = Model(str(smollm2_path))
    ours = m.new_context(n_ctx=64).eval(list(ids), 0, logits_all=True)
    m.close()
    assert np.mean(ref.argmax(-1) == ours.argmax(-1)) >= 0.9
    assert np.abs(ref - ours).max() < 0.1 * np.abs(ours).max()


def test_thresholds_drop_inputs_and_cost_quality(setup):
    hp, w, ids = setup
    rec = {}
    dense = forward(hp, w, ids, record=rec)
    assert len(rec) == 4 * hp["n_layer"]
    zero = {k: -1.0 for k in rec}  # nothing dropped: the dense logits
    np.testing.assert_array_equal(forward(hp, w, ids, thr=zero), dense)
    half = {k: float(np.quantile(np.concatenate(v), 0.5)) for k, v in rec.items()}
    assert nll(forward(hp, w, ids, thr=half), ids) > nll(dense, ids)


def test_break_even_from_kernel_results(tmp_path):
    import json
    rep = {"threads": {"2": {"types": {"q4_1": {"rows8_s": 1.0, "sparse": [
        {"fraction": 1.0, "axpy_s": 2.5}]}, "f16": {"sparse": []}}}}}
    p = tmp_path / "kernels.json"
    p.write_text(json.dumps(rep))
    assert break_even(str(p)) == {"q4_1, 2 thread(s)": pytest.approx(0.6)}
    assert break_even(str(tmp_path / "missing.json")) is None

"""Threshold-mode calibration of SwiGLU files (pi_backend.convert.calibrate) and pi-perplexity, on
SmolLM2-135M (q4_1 split file). Calibration text is tests/data/calib.txt; held-out text is
pi_backend/data/prose.txt (never used for calibrating)."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from pi_backend.bench import DEFAULT_TEXT

DATA = Path(__file__).resolve().parent / "data"
THREADS = 2
# small settings so that the file stays short on a loaded 2-core machine
CFG = dict(text_file=str(DATA / "calib.txt"), n_tokens=256, n_heldout=48, positions=128,
           n_threads=THREADS, seq_len=128)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, smollm2_path):
    """pi-convert SmolLM2 -> q4_1 split file calibrated at a uniform 20% (the CLI, once):
    (path, printed summary)."""
    import contextlib
    import io
    from pi_backend.convert.__main__ import main
    d = tmp_path_factory.mktemp("calib")
    out = d / "smollm2.q4_1.gguf"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main([str(smollm2_path), "--outfile", str(out), "--outtype", "q4_1",
                   "--calibrate", str(DATA / "calib.txt"), "--calib-tokens", "256",
                   "--sparsity", "0.2", "--threads", str(THREADS), "--no-progress"])
    assert rc == 0, buf.getvalue()
    return out, buf.getvalue()


@pytest.fixture(scope="module")
def model(calibrated):
    from pi_backend.model import Model
    m = Model(str(calibrated[0]))
    yield m
    m.close()


@pytest.fixture(scope="module")
def heldout_chunks(calibrated):
    from pi_backend.perplexity import text_chunks
    return text_chunks(str(calibrated[0]), DEFAULT_TEXT.read_text(), 96, max_scored=190)


def test_pi_convert_calibrate_cli(calibrated, model):
    path, text = calibrated
    assert "calibration threshold mode" in text and "uniform 20%" in text
    assert "layer  threshold" in text and text.count("\n") > 30    # the per-layer report
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], \
        "temporary files left behind"
    assert model.fields["pi.sparse_mode"] == "threshold" and model.default_ffn_mode == "threshold"
    assert len(model.fields["pi.thresholds"]) == model.n_layer
    assert "uniform 20%" in model.fields["pi.calibration"]
    assert np.all(model.thresholds > 0)


def test_pi_convert_calibrate_errors(smollm2_path, tmp_path, capsys):
    from pi_backend.convert.__main__ import main
    out = str(tmp_path / "x.gguf")
    assert main([str(smollm2_path), "--outfile", out, "--sparsity", "0.2"]) == 1
    err = capsys.readouterr().err
    assert "need --calibrate" in err and err.count("\n") == 1
    with pytest.raises(SystemExit):
        main([str(smollm2_path), "--outfile", out, "--calibrate", "--sparsity", "0.2",
              "--ppl-budget", "0.01"])
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "x.gguf").exists()


def test_threshold_zero_reproduces_dense(model, heldout_chunks):
    saved = model.thresholds.copy()
    try:
        model.set_thresholds(np.zeros(model.n_layer, np.float32))
        toks = heldout_chunks[0][:32]
        dense = model.new_context(n_ctx=32, n_threads=THREADS, ffn_mode="dense")
        thr = model.new_context(n_ctx=32, n_threads=THREADS, ffn_mode="threshold")
        a = dense.eval(toks, 0, logits_all=True)
        b = thr.eval(toks, 0, logits_all=True)
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * float(np.abs(a).max()))
        assert thr.stats()["ffn_sparsity"] == 0.0
    finally:
        model.set_thresholds(saved)


def test_uniform_calibration_hits_target_on_heldout_text(model, heldout_chunks):
    from pi_backend.convert.calibrate import layer_report
    from pi_backend.perplexity import evaluate
    r = evaluate(model, heldout_chunks, "threshold", THREADS, with_dense=False)
    assert abs(r.sparsity - 0.2) <= 0.03, r.sparsity
    rows = layer_report(model, model.thresholds, heldout_chunks[:1], THREADS)
    per_layer = np.array([row["sparsity"] for row in rows[:-1]])
    assert np.all(np.abs(per_layer - 0.2) <= 0.1), per_layer
    assert abs(per_layer.mean() - rows[-1]["sparsity"]) < 1e-6   # the engine's own count


def test_budget_calibration_stays_within_budget(model, heldout_chunks):
    from pi_backend.convert.calibrate import HELDOUT_MARGIN, CalibConfig, calibrate
    from pi_backend.perplexity import evaluate
    budget = 0.02
    saved = model.thresholds.copy()
    try:
        cal = calibrate(model, CalibConfig(ppl_budget=budget, step=0.1, **CFG))
        assert cal.method == "greedy"
        # on the held-out calibration tokens the budget holds by construction, with the margin
        held = HELDOUT_MARGIN * math.log1p(budget)
        assert math.log1p(cal.heldout_ppl_increase) <= held + 1e-9
        assert cal.heldout_kl <= held
        # it found sparsity (how much depends on the 48 held-out tokens and, through them, on
        # the summation order of the instruction set: 13% with AVX-512 or AVX2, 8% scalar)
        assert cal.heldout_sparsity > 0
        assert len(set(np.round(cal.targets, 3))) > 1  # and allocated it per layer
        r = evaluate(model, heldout_chunks, "threshold", THREADS)   # calibrated thresholds
    finally:
        model.set_thresholds(saved)
    inc = r.perplexity / r.dense_perplexity - 1
    print(f"\nbudget {budget:.1%}: held-out {cal.heldout_ppl_increase:+.2%}, unseen text {inc:+.2%} "
          f"at sparsity {r.sparsity:.3f}")
    # on text never seen in calibration the budget is not guaranteed; the margin is for that,
    # but this test's 48 held-out tokens are few (measured here: +0.35% held out, +1.99% on
    # prose.txt; the default 128 gave +0.55% and +0.40%): a point of slack
    assert inc <= budget + 0.01, (inc, r.sparsity)
    assert abs(r.sparsity - cal.heldout_sparsity) < 0.05


def test_pi_perplexity_dense_vs_dense(calibrated, capsys):
    from pi_backend.perplexity import main
    rc = main([str(calibrated[0]), str(DEFAULT_TEXT), "--ffn-mode", "dense",
               "--tokens", "62", "--ctx", "32", "--threads", str(THREADS), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    m = re.search(r"^perplexity: (\S+)$", out, re.M)
    assert m, out
    ppl = float(m.group(1))
    assert math.isfinite(ppl) and ppl > 1
    kl = float(re.search(r"^mean KL vs dense: (\S+)", out, re.M).group(1))
    assert kl == 0.0
    assert re.search(r"^tokens: 62 scored in 2 chunk", out, re.M), out
    assert "FFN sparsity: 0.0000 (mode dense)" in out


def test_pi_perplexity_errors(calibrated, tmp_path, capsys):
    from pi_backend.perplexity import main
    path = str(calibrated[0])
    assert main([path, str(tmp_path / "missing.txt")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pi-perplexity: error:") and err.count("\n") == 1
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00 not utf-8")
    assert main([path, str(bad)]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    assert main([path, str(DEFAULT_TEXT), "--tokens", "0"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("variant", ["qwen3", "gemma3"])
def test_calibrate_tiny_gated_architectures(variant, hf_model, tmp_path):
    """pi-convert --calibrate on a tiny random Qwen3 (SwiGLU) and Gemma 3 (GELU-tanh, sliding
    window): a uniform 30% over |act(gate)| through the engine's own activation, and the
    thresholded file runs in threshold mode at about that sparsity."""
    from pi_backend.convert import convert
    from pi_backend.model import Model
    out = tmp_path / f"{variant}.gguf"
    summary = convert(hf_model(variant), out, "f32", calibrate=str(DATA / "calib.txt"),
                      calib_tokens=192, sparsity=0.3, n_threads=THREADS)
    cal = summary.calibration
    assert cal.method == "uniform"
    assert cal.activation == ("gelu_tanh" if variant == "gemma3" else "silu")
    assert f"|{cal.activation}(gate)|" in summary.report
    m = Model(str(out))
    assert m.default_ffn_mode == "threshold" and np.all(m.thresholds > 0)
    tokens = [int(t) for t in np.random.default_rng(0).integers(3, 300, 40)]
    ctx = m.new_context(64, THREADS)
    thr = ctx.eval(tokens, 0, logits_all=True)
    dense = m.new_context(64, THREADS, ffn_mode="dense").eval(tokens, 0, logits_all=True)
    assert np.all(np.isfinite(thr)) and not np.array_equal(thr, dense)
    # 40 tokens of other text than the calibration's: the sparsity is near the target
    assert abs(ctx.stats()["ffn_sparsity"] - 0.3) < 0.1, ctx.stats()
    assert abs(cal.heldout_sparsity - 0.3) < 0.1

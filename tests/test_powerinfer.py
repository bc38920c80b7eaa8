"""PowerInfer's own files (magic PWRI; pi_backend/powerinfer.py): the engine runs them in place
and pi-convert converts them, with the same results as our files of the same model.

The files are made from our ReLU test model as PowerInfer's converter makes its files
(tests/powerinfer_files.py): PowerInfer's predictors read the FFN input before ffn_norm, ours
the normed input, so our reference file holds the same predictors for the normed input, and
both make the same picks at PowerInfer's threshold 0.
"""
from __future__ import annotations

import struct
from pathlib import Path
from types import SimpleNamespace

import gguf
import numpy as np
import pytest

import powerinfer_files as pf
from pi_backend.format import Keys, T, field_value, layer_name
from pi_backend.gguf_check import file_layout
from pi_backend.model import Model, ModelError, read_gguf

EVAL = Path(__file__).resolve().parent / "data" / "shakespeare_eval.txt"
N_TOKENS = 96
N_LAYER = 4


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("pwri")
    preds = pf.predictors()
    return SimpleNamespace(preds=preds, ref=pf.with_predictors(d / "ref.gguf", preds),
                           pwri=pf.powerinfer_file(d / "relu.pwri.gguf", preds))


def _tokens() -> list[int]:
    return list(EVAL.read_bytes()[:N_TOKENS])    # byte-level vocabulary: token id = byte


def _run(path, mode: str | None = None, **load) -> tuple[np.ndarray, dict]:
    m = Model(str(path), **load)
    try:
        ctx = m.new_context(n_ctx=N_TOKENS, n_threads=2, ffn_mode=mode)
        return ctx.eval(_tokens(), 0, logits_all=True), ctx.stats()
    finally:
        m.close()


def _stored(path) -> dict:
    """name -> (ggml type, bytes) of every tensor of a GGUF or PWRI file."""
    return {t.name: (int(t.tensor_type), np.asarray(t.data).tobytes())
            for t in read_gguf(str(path)).tensors}


# ---- the files ---------------------------------------------------------------------------------
def test_the_file_is_laid_out_as_powerinfer_writes_it(files, tmp_path):
    data = files.pwri.read_bytes()
    assert data[:4] == b"PWRI"
    with pytest.raises(ValueError, match="magic"):
        gguf.GGUFReader(files.pwri)       # gguf's reader refuses it; ours reads it as GGUF
    layout = file_layout(files.pwri)
    assert layout.magic == b"PWRI"
    twin = tmp_path / "twin.gguf"
    twin.write_bytes(b"GGUF" + data[4:])
    assert gguf.GGUFReader(twin).data_offset == layout.data_start
    r = read_gguf(str(files.pwri))
    assert not [k for k in r.fields if k.startswith("pi.")]
    assert field_value(r.fields[Keys.POWERINFER_THRESHOLD]) == 0.0
    names = {t.name for t in r.tensors}
    for il in range(N_LAYER):
        assert {layer_name(il, p) for p in (T.FFN_DOWN_T, T.FC1, T.FC2)} <= names
        assert layer_name(il, T.FFN_DOWN) not in names


def test_it_loads_in_sparse_mode_with_its_predictors(files):
    m, ref = Model(str(files.pwri)), Model(str(files.ref))
    try:
        assert m.powerinfer and not ref.powerinfer
        assert m.default_ffn_mode == "sparse"
        assert set(m.ffn_modes) == {"dense", "sparse", "threshold"}
        assert m.fields[Keys.FFN_ACTIVATION] == "relu"
        assert list(m.thresholds) == [0.0] * N_LAYER
        assert m.fields[Keys.PREDICTOR_RANKS] == [len(fc1) for fc1, _ in files.preds]
        for il in range(N_LAYER):
            for part in (T.FC1, T.FC2):   # fc1 for the normed input: our file's, to the bit
                name = layer_name(il, part)
                assert m.tensor(name)[0] == ref.tensor(name)[0] == gguf.GGMLQuantizationType.F32
                np.testing.assert_array_equal(m.tensor(name)[1], ref.tensor(name)[1])
    finally:
        m.close()
        ref.close()


@pytest.mark.parametrize("qt", [gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.Q8_0])
def test_f16_and_q8_0_predictors(files, qt, tmp_path):
    """Predictors stored f16 or q8_0 (PowerInfer's --outtype f16 / q8_0): fc1 for the normed
    input in the same type, within its rounding of fc1 / w; pi-convert writes the same bits."""
    p = pf.powerinfer_file(tmp_path / "p.pwri.gguf", files.preds, pred_type=qt)
    m = Model(str(p))
    try:
        assert m.default_ffn_mode == "sparse"
        norms = pf.layer_parts(pf.RELU_GGUF, T.FFN_NORM)
        for il, ((fc1, _), w) in enumerate(zip(files.preds, norms)):
            got_type, got = m.tensor(layer_name(il, T.FC1))
            assert got_type == qt
            got = gguf.quants.dequantize(np.asarray(got).view(np.uint8), qt).reshape(fc1.shape)
            want = fc1.astype(np.float64) / w
            np.testing.assert_allclose(got, want, atol=np.abs(want).max() / 100)
    finally:
        m.close()
    sparse, st = _run(p)
    assert np.all(np.isfinite(sparse)) and st["ffn_sparsity"] > 0.5
    out = tmp_path / "p.gguf"
    from pi_backend.convert import convert
    convert(p, out)
    np.testing.assert_array_equal(_run(out)[0], sparse)


@pytest.mark.parametrize("mode", ["sparse", "dense", "threshold"])
def test_logits_equal_those_of_our_file(files, mode):
    """Same tensors, same predictors, same threshold: the same picks and the same bits."""
    got, st = _run(files.pwri, mode)
    want, st_ref = _run(files.ref, mode)
    np.testing.assert_array_equal(got, want)
    assert st == st_ref
    if mode != "dense":   # the predictors (and threshold mode: the ReLU) skip most neurons
        assert st["ffn_sparsity"] > 0.5, st


def test_dense_mode_is_the_plain_models(files):
    """Against our ReLU model without predictors, which repacks ffn_gate / ffn_up (the rows8
    kernels; bit-identical to the plain rows under AVX2): equal within the kernels' rounding."""
    got, _ = _run(files.pwri, "dense")
    want, _ = _run(pf.RELU_GGUF, "dense")
    np.testing.assert_allclose(got, want, atol=2e-3 * np.abs(want).max())
    assert np.array_equal(got.argmax(-1), want.argmax(-1))


def test_llama_api_runs_it(files, tmp_path, monkeypatch):
    """Llama(path): the engine and llama.cpp's vocabulary (read from a temporary GGUF copy of
    the metadata, removed at once) of a PWRI file, as of our file."""
    import tempfile
    from pi_backend import Llama
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    out = {}
    for name in ("pwri", "ref"):
        llm = Llama(str(getattr(files, name)), n_ctx=64, n_threads=2, verbose=False)
        assert llm.ffn_mode == "sparse"
        assert llm.tokenize(b"To be", add_bos=False) == list(b"To be")
        out[name] = llm("To be, or not", max_tokens=12, temperature=0.0)["choices"][0]["text"]
        llm.close()
    assert out["pwri"] == out["ref"]
    assert list(tmp_path.iterdir()) == []


# ---- pi-convert ----------------------------------------------------------------------------------
def test_convert_keeps_the_tensors_and_runs_the_same(files, tmp_path):
    from pi_backend.convert import convert
    out = tmp_path / "relu-pi.gguf"
    summary = convert(files.pwri, out)
    assert "PowerInfer" in summary.source and summary.outtype == "as stored"
    assert out.read_bytes()[:4] == b"GGUF"
    src, got = _stored(files.pwri), _stored(out)
    assert set(got) == set(src)
    for name, (qt, raw) in got.items():    # types kept, bytes copied; fc1 as the engine folds it
        assert qt == src[name][0], name
        if name.endswith(T.FC1):
            assert raw == _stored(files.ref)[name][1], name
        else:
            assert raw == src[name][1], name
    m = Model(str(out))
    assert not m.powerinfer and m.default_ffn_mode == "sparse"
    assert m.fields[Keys.FORMAT_VERSION] == 1 and m.fields[Keys.POWERINFER_THRESHOLD] == 0.0
    m.close()
    for mode in ("sparse", "dense"):
        np.testing.assert_array_equal(_run(out, mode)[0], _run(files.pwri, mode)[0])


def test_convert_dense_drops_the_predictors(files, tmp_path):
    from pi_backend.convert.__main__ import main
    out = tmp_path / "relu-dense.gguf"
    assert main([str(files.pwri), "--outfile", str(out), "--dense", "-q"]) == 0
    got = _stored(out)
    assert not [n for n in got if n.endswith((T.FC1, T.FC2))]
    m = Model(str(out))
    assert m.default_ffn_mode == "dense" and "sparse" not in m.ffn_modes
    assert Keys.POWERINFER_THRESHOLD not in m.fields and m.fields[Keys.FFN_ACTIVATION] == "relu"
    m.close()
    # the ReLU model's tensors, as the plain model holds them: its dense mode to the bit
    np.testing.assert_array_equal(_run(out, "dense")[0], _run(pf.RELU_GGUF, "dense")[0])


@pytest.mark.parametrize("kwargs, flag", [({"outtype": "q8_0"}, "--outtype"),
                                          ({"calibrate": True}, "--calibrate"),
                                          ({"keep_down": True}, "--keep-down")])
def test_convert_refuses_options_that_do_not_apply(files, tmp_path, kwargs, flag):
    from pi_backend.convert import ConvertError, convert
    with pytest.raises(ConvertError, match=f"^{flag}: not for a PowerInfer file"):
        convert(files.pwri, tmp_path / "x.gguf", **kwargs)
    assert list(tmp_path.iterdir()) == []


# ---- what does not map -------------------------------------------------------------------------
def test_a_nonzero_threshold_runs_dense_or_threshold_only(files, tmp_path):
    """PowerInfer's threshold t applies to logits of the FFN input before its norm, which ours
    match in sign only: sparse mode is refused; dense and threshold modes run without them."""
    p = pf.powerinfer_file(tmp_path / "t.pwri.gguf", files.preds, threshold=0.5)
    with pytest.raises(ModelError, match="powerinfer.sparse_threshold = 0.5: .* 'dense' or "
                       "'threshold' FFN mode$"):
        Model(str(p))
    m = Model(str(p), ffn_mode="dense")
    assert set(m.ffn_modes) == {"dense", "threshold"} and Keys.THRESHOLDS not in m.fields
    m.close()
    np.testing.assert_array_equal(_run(p, "dense", ffn_mode="dense")[0],
                                  _run(pf.RELU_GGUF, "dense")[0])


def _zero_norm_weight(data: bytes, path: Path) -> bytes:
    t = next(t for t in read_gguf(str(path)).tensors if t.name == "blk.1.ffn_norm.weight")
    b = bytearray(data)
    struct.pack_into("<f", b, int(t.data_offset) + 4 * 3, 0.0)
    return bytes(b)


# name: (how the PWRI file is made: builder kwargs, or a patch of its bytes, message[, message
# of pi-convert where it differs])
CASES = {
    "bamboo": ({"arch": "bamboo"}, "PowerInfer architecture 'bamboo' is not supported: its FFN "
               r"is relu\(gate\) \* relu\(up\)"),
    "opt": ({"arch": "opt"}, "PowerInfer architecture 'opt' is not supported: LayerNorm"),
    "qwen2": ({"arch": "qwen2"}, r"PowerInfer architecture 'qwen2' is not supported \(supported: "
              r"llama\)"),
    "no_fc2": ({"drop": ("blk.2.fc2.weight",)}, "tensor blk.2.fc2.weight is missing"),
    "no_fc1": ({"drop": ("blk.0.fc1.weight",)}, "tensor blk.0.fc1.weight is missing"),
    "no_down_t": ({"drop": ("blk.3.ffn_down_t.weight",)},
                  "tensor blk.3.ffn_down_t.weight is missing"),
    "truncated": (lambda d, p: d[:-100], "runs past the end of the file"),
    "truncated_header": (lambda d, p: d[:300], "more than the 300 bytes of the file can hold"),
    "other_magic": (lambda d, p: b"PWRX" + d[4:], r"no GGUF magic \(nor PowerInfer's PWRI\)",
                    "is neither a Hugging Face model directory nor a GGUF file"),
    "zero_norm": (_zero_norm_weight, r"blk.1.ffn_norm.weight\[3\] = 0: PowerInfer's predictor "
                  "reads the FFN input before this norm"),
}


def _case_file(files, case: str, tmp_path: Path) -> Path:
    how = CASES[case][0]
    p = tmp_path / f"{case}.pwri.gguf"
    if callable(how):
        p.write_bytes(how(files.pwri.read_bytes(), files.pwri))
        return p
    return pf.powerinfer_file(p, files.preds, **how)


@pytest.mark.parametrize("case", list(CASES))
def test_what_does_not_map_is_a_one_line_error(files, case, tmp_path):
    from pi_backend.convert import ConvertError, convert
    p = _case_file(files, case, tmp_path)
    with pytest.raises(ModelError, match=CASES[case][1]) as e:
        Model(str(p))
    assert "\n" not in str(e.value) and str(p) in str(e.value)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConvertError, match=CASES[case][-1]) as e:
        convert(p, out / "x.gguf")
    assert "\n" not in str(e.value) and list(out.iterdir()) == []


def test_gpu_split_tensors_in_a_model_file_are_skipped(files, tmp_path):
    p = pf.powerinfer_file(tmp_path / "split.pwri.gguf", files.preds, gpu_split=True)
    assert "blk.0.gpu_idx" in _stored(p)
    np.testing.assert_array_equal(_run(p)[0], _run(files.pwri)[0])


def test_the_gpu_split_file_is_not_a_model(tmp_path):
    p = pf.gpu_split_file(tmp_path / "relu.gpuidx.gguf", N_LAYER, 1024)
    assert p.read_bytes()[:4] == b"PWRI"
    with pytest.raises(ModelError, match="this is PowerInfer's GPU split index"):
        Model(str(p))

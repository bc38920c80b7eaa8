"""The sparse output head (ggml_ext/head.c, convert/head_preview.py) on the embedded SmolLM2 as
pi-chat converts it (with the output preview): candidate recall, greedy agreement and the top-k
distribution against the dense head on text of another domain than the calibration's (the
model's own answers), teacher-forced; a file without a preview runs as before; bad previews
and modes fail in one line; pi_matvec_rows against pi_matvec_masked on every ISA."""
from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest

from kernel_util import ISA_NAMES, ISAS, pools, restore_isa  # noqa: F401 (fixtures)
from pi_backend import _lib
from pi_backend import format as F
from pi_backend._lib import call, fptr, iptr, vptr
from pi_backend.model import Model, ModelError

DATA = Path(__file__).resolve().parent / "data"
N_POS = 400            # teacher-forced positions at most
TOP_K = 40


def teacher_forced(default_model, text: Path):
    """Teacher-forced logits of the sparse head (a sparse-loaded model) and of the full head on
    the same model (its plain rows: the candidates' logits are the same bits) over the first
    N_POS positions of `text`, and the sparse context's statistics."""
    from pi_backend.tokenizer import Tokenizer
    tok = Tokenizer(str(default_model))
    ids = tok.tokenize(text.read_text("utf-8").encode(), add_bos=False)[:N_POS]
    tok.close()
    m = Model(str(default_model))
    assert m.default_head_mode == F.HEAD_SPARSE and m.head_modes == (F.HEAD_DENSE, F.HEAD_SPARSE)
    sparse = m.new_context(n_ctx=N_POS + 8, n_threads=2)
    full = m.new_context(n_ctx=N_POS + 8, n_threads=2, head_mode=F.HEAD_DENSE)
    out_s, out_f = [], []
    for i, t in enumerate(ids):
        out_s.append(sparse.eval([t], i))
        out_f.append(full.eval([t], i))
    stats = dict(sparse.stats(), n_candidates=m.fields[F.Keys.HEAD_CANDIDATES])
    sparse.close()
    full.close()
    m.close()
    return np.array(out_s), np.array(out_f), stats


@pytest.fixture(scope="module")
def forced(default_model):
    """Modern prose none of the preview's fitting saw (the calibration is the model's own
    answers to chat prompts)."""
    return teacher_forced(default_model, DATA / "calib.txt")


def recall(s, f):
    exact = s == f                                   # the candidates' rows: the same bits
    rows = np.arange(len(f))
    top = np.argsort(-f, axis=1)[:, :TOP_K]
    return exact[rows, np.argmax(f, axis=1)].mean(), exact[rows[:, None], top].mean()


def test_candidate_recall(forced):
    s, f, stats = forced
    recall1, recall40 = recall(s, f)
    assert stats["head_steps"] == len(f)
    n_exact = stats["head_exact_rows"] / max(1, stats["head_steps"] - stats["head_fallbacks"])
    n_cand = stats["n_candidates"]
    assert n_cand <= f.shape[1] / 4 and n_exact <= n_cand * 1.01, \
        f"{n_exact:.0f} exact rows a step for N {n_cand} of {f.shape[1]}"
    print(f"recall top-1 {recall1:.4f}, top-{TOP_K} {recall40:.4f}, fallbacks "
          f"{stats['head_fallbacks']}/{stats['head_steps']}")
    assert recall1 >= 0.99
    assert recall40 >= 0.95


def test_far_domain(default_model):
    """Shakespeare, the farthest domain at hand from chat answers: recall and greedy agreement
    stay high (reported; the issue measured 91% top-1 recall across such a domain gap)."""
    s, f, stats = teacher_forced(default_model, DATA / "shakespeare_eval.txt")
    recall1, recall40 = recall(s, f)
    agree = np.mean(np.argmax(s, axis=1) == np.argmax(f, axis=1))
    print(f"Shakespeare: recall top-1 {recall1:.4f}, top-{TOP_K} {recall40:.4f}, greedy = dense "
          f"{agree:.4f}, fallbacks {stats['head_fallbacks']}/{stats['head_steps']}")
    assert agree >= 0.98 and recall40 >= 0.9


def test_greedy_equals_dense(forced):
    s, f, _ = forced
    agree = np.mean(np.argmax(s, axis=1) == np.argmax(f, axis=1))
    print(f"greedy = dense on {agree:.4f} of {len(f)} positions")
    assert agree >= 0.995


def test_topk_distribution(forced):
    """Default sampling draws from the same distribution: KL(dense || sparse) of its top-k
    distribution (top-k 40 and min-p 0.05, renormalised at temperature 0.8: what llama.cpp's
    default chain keeps; top-p only narrows it) <= 1e-3. The plain renormalised top-40, whose
    tail min-p drops, is reported."""
    from pi_backend.convert.head_preview import sampling_kl
    s, f, _ = forced
    kl = float(sampling_kl(f, s).mean())
    plain = float(sampling_kl(f, s, min_p=0.0, temperature=1.0).mean())
    print(f"KL of default sampling's top-{TOP_K}: {kl:.2e} (plain renormalised top-{TOP_K}: "
          f"{plain:.2e})")
    assert kl <= 1e-3


def test_logits_all_and_dense_model(default_model):
    """logits_all runs the full head; head_mode='dense' loads without the preview and gives the
    logits of the file as if it had none (rows8 head)."""
    ids = [1, 504, 3458, 282, 1029, 30, 216]
    m = Model(str(default_model))
    c = m.new_context(n_ctx=16, n_threads=2)
    allv = c.eval(ids, 0, logits_all=True)
    assert c.stats()["head_steps"] == 0
    c.close()
    cf = m.new_context(n_ctx=16, n_threads=2, head_mode="dense")
    np.testing.assert_array_equal(allv, cf.eval(ids, 0, logits_all=True))
    cf.close()
    m.close()
    md = Model(str(default_model), head_mode="dense")
    assert md.head_modes == ("dense",)
    with pytest.raises(ValueError, match="head mode 'sparse' is not available"):
        md.new_context(n_ctx=16, head_mode="sparse")
    md.close()


@pytest.fixture(scope="module")
def no_preview(default_model, tmp_path_factory):
    """The default model without its preview (tensors and keys dropped)."""
    from pi_backend.convert.calibration import rewrite
    out = tmp_path_factory.mktemp("head") / "no_preview.gguf"
    rewrite(default_model, out, {}, drop_keys=(F.Keys.HEAD_CANDIDATES, F.Keys.HEAD_MARGIN,
                                               F.Keys.HEAD_RECALL),
            drop_parts=(F.T.PREVIEW_A, F.T.PREVIEW_B))
    return out


def test_file_without_preview_runs_as_before(default_model, no_preview):
    ids = [1, 504, 3458, 282, 1029]
    a = Model(str(no_preview))
    assert a.head_modes == ("dense",) and a.default_head_mode == "dense"
    b = Model(str(default_model), head_mode="dense")
    assert a.repacked_bytes == b.repacked_bytes
    ca, cb = a.new_context(n_ctx=8, n_threads=2), b.new_context(n_ctx=8, n_threads=2)
    for i, t in enumerate(ids):
        np.testing.assert_array_equal(ca.eval([t], i), cb.eval([t], i))
    with pytest.raises(ValueError, match="no output preview"):
        ca.set_head_mode("sparse")
    for x in (ca, cb, a, b):
        x.close()


def _with(src, dst, keys=None, drop_keys=(), parts=()):
    from pi_backend.convert.calibration import rewrite
    rewrite(src, dst, keys or {}, drop_keys=drop_keys,
            drop_parts=(F.T.PREVIEW_A, F.T.PREVIEW_B), add_global=parts)
    return dst


def _preview(path):
    m = Model(str(path))
    out = {n: m.tensor(n) for n in (F.T.PREVIEW_A, F.T.PREVIEW_B)}
    out = {n: (t, np.array(d)) for n, (t, d) in out.items()}
    m.close()
    return out


@pytest.mark.parametrize("case", ["b_rank", "a_only", "type", "candidates", "margin"])
def test_bad_previews_fail_in_one_line(default_model, tmp_path, case):
    from gguf import GGMLQuantizationType as QT
    pv = _preview(default_model)
    (ta, a), (tb, b) = pv[F.T.PREVIEW_A], pv[F.T.PREVIEW_B]
    parts = [(F.T.PREVIEW_A, a, QT(ta)), (F.T.PREVIEW_B, b, QT(tb))]
    keys = {}
    if case == "b_rank":    # A with fewer rows than B takes inputs
        parts[0] = (F.T.PREVIEW_A, np.ascontiguousarray(a[:32]), QT(ta))
        want = "output_preview_b takes"
    elif case == "a_only":
        parts = parts[:1]
        want = "only one of the preview tensors"
    elif case == "type":
        parts[0] = (F.T.PREVIEW_A, np.zeros((a.shape[0], a.shape[1] // 34 * 32), np.int32),
                    QT.I32)
        want = "pi_backend does not run"
    elif case == "candidates":
        keys = {F.Keys.HEAD_CANDIDATES: 0}
        want = "n_candidates = 0"
    else:
        keys = {F.Keys.HEAD_MARGIN: float("nan")}
        want = "margin = nan"
    path = _with(default_model, tmp_path / f"{case}.gguf", keys, parts=parts)
    with pytest.raises(ModelError, match=want) as e:
        Model(str(path))
    assert "\n" not in str(e.value)


def test_bad_head_mode(default_model):
    with pytest.raises(ValueError, match="unknown head mode 'fast'"):
        Model(str(default_model), head_mode="fast")
    m = Model(str(default_model))
    c = m.new_context(n_ctx=8)
    with pytest.raises(ValueError, match="unknown head mode"):
        c.set_head_mode("fast")
    with pytest.raises(_lib.PiError, match="unknown mode 7"):
        call("pi_context_set_head_mode", c._ptr, 7)
    c.close()
    m.close()


def test_c_head_api_validates():
    """No abort: NULLs, ranges and unfinalized models give status codes."""
    lib = _lib.lib()
    assert lib.pi_model_set_head(None, 10, 1.0, 0.0) == _lib.PI_ERR_NULL
    modes = ctypes.c_int32()
    assert lib.pi_model_head_modes(None, ctypes.byref(modes)) == _lib.PI_ERR_NULL
    assert lib.pi_context_set_head_mode(None, 1) == _lib.PI_ERR_NULL
    assert lib.pi_context_head_stats(None, None, None, None) == _lib.PI_ERR_NULL
    hp = _lib.pi_hparams(arch=0, ffn_act=0, n_vocab=64, n_embd=32, n_ff=64, n_layer=1,
                         n_head=2, n_head_kv=2, head_dim=16, n_rot=16, rope_neox=0,
                         rope_freq_base=10000.0, rope_freq_scale=1.0, norm_eps=1e-5)
    m = _lib.pi_model_p()
    call("pi_model_create", ctypes.byref(hp), ctypes.byref(m))
    try:
        assert lib.pi_model_set_head(m, 0, 1.0, 0.0) == _lib.PI_ERR_RANGE
        assert lib.pi_model_set_head(m, 65, 1.0, 0.0) == _lib.PI_ERR_RANGE
        assert lib.pi_model_set_head(m, 8, -1.0, 0.0) == _lib.PI_ERR_RANGE
        assert lib.pi_model_set_head(m, 8, 1.0, -1.0) == _lib.PI_ERR_RANGE
        assert lib.pi_model_set_head(m, 8, 1.0, float("nan")) == _lib.PI_ERR_RANGE
        assert lib.pi_model_head_modes(m, ctypes.byref(modes)) == _lib.PI_ERR_RANGE  # not finalized
    finally:
        lib.pi_model_free(m)


@pytest.mark.parametrize("isa", ISAS, ids=[ISA_NAMES[i] for i in ISAS])
@pytest.mark.parametrize("t", ["q8_0", "q4_1", "f16"])
def test_matvec_rows(pools, isa, t):
    """pi_matvec_rows: the masked kernel's values on idx, the other entries untouched, on every
    thread count; bad indices fail."""
    from pi_backend import kernels
    call("pi_isa_set", isa)
    rng = np.random.default_rng(3)
    n_rows, n_cols = 203, 128
    w = kernels.quantize(t, rng.standard_normal((n_rows, n_cols)).astype(np.float32))
    x = rng.standard_normal(n_cols).astype(np.float32)
    idx = np.sort(rng.choice(n_rows, 57, replace=False)).astype(np.int32)
    tid = kernels.type_id(t)
    want = np.zeros(n_rows, np.float32)
    call("pi_matvec_masked", None, tid, vptr(w), n_rows, n_cols, fptr(x), iptr(idx), idx.size,
         fptr(want))
    for n, pool in pools.items():
        y = np.full(n_rows, 7.0, np.float32)
        call("pi_matvec_rows", pool, tid, vptr(w), n_rows, n_cols, fptr(x), iptr(idx), idx.size,
             fptr(y))
        np.testing.assert_array_equal(y[idx], want[idx])
        rest = np.setdiff1d(np.arange(n_rows), idx)
        assert np.all(y[rest] == 7.0), f"{n} threads wrote outside idx"
    bad = np.array([0, n_rows], np.int32)
    y = np.zeros(n_rows, np.float32)
    assert _lib.lib().pi_matvec_rows(None, tid, vptr(w), n_rows, n_cols, fptr(x), iptr(bad), 2,
                                     fptr(y)) == _lib.PI_ERR_RANGE


def test_convert_adds_a_preview_to_a_split_file(no_preview, tmp_path):
    """pi-convert SPLIT.gguf --head-preview: the file as it is, with the preview; the summary
    reports recall on held-out positions and on another domain."""
    from pi_backend.convert import ConvertError, convert
    out = tmp_path / "with_preview.gguf"
    summary = convert(str(no_preview), str(out), head_preview=True, head_tokens=384,
                      n_threads=2)
    text = summary.text()
    assert "top-1 recall" in text and "held-out positions" in text and "prose.txt" in text
    m = Model(str(out))
    assert m.head_modes == ("dense", "sparse")
    assert m.fields[F.Keys.HEAD_CANDIDATES] > 0 and m.fields[F.Keys.HEAD_MARGIN] >= 0
    m.close()
    with pytest.raises(ConvertError, match="--outtype"):
        convert(str(no_preview), str(tmp_path / "x.gguf"), "q8_0", head_preview=True)
    with pytest.raises(ConvertError, match="--head-preview is for split files"):
        convert(str(no_preview), str(tmp_path / "y.gguf"), dense=True, head_preview=True)

"""PowerInfer files (magic PWRI) for the tests, made the way PowerInfer's converter makes them
(its convert.py: gguf's writer, then `PWRI` over the first 4 bytes), from our ReLU test model
(tests/data/relu-shakespeare.q8_0.gguf, a split file without predictors).

- `predictors`: PowerInfer-style predictors for that model, made in closed form instead of
  trained: with gate ~ U S V^T (the top `rank` singular vectors), fc1 = [V^T; -V^T] and
  fc2 = [U S, -U S], so that fc2 relu(fc1 xn) = U S V^T xn, the rank-limited gate
  pre-activation: positive about where the ReLU neuron is active. PowerInfer's predictor reads
  the FFN input x before ffn_norm (xn = x / rms(x) * w), so its fc1 is that fc1 with column j
  times the norm weight w_j. f32, as PowerInfer's converter stores them for `--outtype f32`.
- `with_predictors`: our sparse-mode file with the same predictors: fc1 for the normed input,
  column j divided by w_j in f64 and rounded to f32; threshold 0 in every layer.
- `powerinfer_file`: the model and predictors as PowerInfer writes them: the tensors of our
  split file and their types as they are (ffn_down_t, no ffn_down), the predictors after them,
  no pi.* keys, `powerinfer.sparse_threshold`, the PWRI magic.
- `gpu_split_file`: PowerInfer's separate GPU split index (powerinfer-py's export_split).
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT

from pi_backend import format as F
from pi_backend.format import Keys, T, field_types, field_value, layer_name

MAGIC = b"PWRI"
RELU_GGUF = Path(__file__).resolve().parent / "data" / "relu-shakespeare.q8_0.gguf"


def _values(t) -> np.ndarray:
    shape = tuple(int(x) for x in reversed(t.shape.tolist()))
    return gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)


def layer_parts(src: Path, part: str) -> list[np.ndarray]:
    """Tensor `part` of every layer of `src`, as float values."""
    r = gguf.GGUFReader(src)
    return [_values(t) for t in r.tensors if F.split_name(t.name)[1] == part]


def predictors(src: Path = RELU_GGUF, rank: int = 16) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per layer PowerInfer's (fc1 [2 rank][d], fc2 [n_ff][2 rank]), f32, for the model `src`
    (see the module docstring)."""
    out = []
    for gate, w in zip(layer_parts(src, T.FFN_GATE), layer_parts(src, T.FFN_NORM)):
        g = gate.astype(np.float64)
        v = np.linalg.eigh(g.T @ g)[1][:, ::-1][:, :rank]   # top right singular vectors
        us = g @ v
        fc1 = np.concatenate([v.T, -v.T]) * w.astype(np.float64)
        out.append((fc1.astype(np.float32), np.concatenate([us, -us], axis=1).astype(np.float32)))
    return out


def with_predictors(dst: Path, preds, src: Path = RELU_GGUF) -> Path:
    """Our ReLU model `src` with PowerInfer's predictors `preds` as our predictor reads them
    (fc1 / w), threshold 0: sparse mode by default."""
    from pi_backend.convert.calibration import rewrite
    from pi_backend.convert.layout import predictor_keys
    add = {il: [(T.FC1, (fc1.astype(np.float64) / w).astype(np.float32), QT.F32),
                (T.FC2, fc2, QT.F32)]
           for il, ((fc1, fc2), w) in enumerate(zip(preds, layer_parts(src, T.FFN_NORM)))}
    keys = predictor_keys(SimpleNamespace(thresholds=[0.0] * len(preds), threshold=0.0,
                                          ranks=[len(fc1) for fc1, _ in preds]), False)
    rewrite(src, dst, keys, add=add)
    return dst


def _write_pwri(w: gguf.GGUFWriter, dst: Path) -> Path:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with open(dst, "r+b") as f:   # as PowerInfer's converter does, after writing the GGUF file
        f.write(MAGIC)
    return dst


def powerinfer_file(dst: Path, preds, src: Path = RELU_GGUF, *, arch: str | None = None,
                    drop: tuple = (), threshold: float | None = 0.0,
                    gpu_split: bool = False, pred_type: QT = QT.F32) -> Path:
    """The model `src` (a plain split file) and PowerInfer's predictors `preds` as PowerInfer
    writes them (see the module docstring). arch: another architecture name (its keys renamed
    too); drop: tensors left out; threshold: powerinfer.sparse_threshold (None: no key);
    gpu_split: the GPU split index's tensors in the model file too; pred_type: the predictors'
    type (F32, F16 or Q8_0, as PowerInfer's --outtype makes them)."""
    from pi_backend.convert.layout import encode
    r = gguf.GGUFReader(src)
    src_arch = field_value(r.fields[Keys.ARCHITECTURE])
    arch = arch or src_arch
    w = gguf.GGUFWriter(str(dst), arch)
    for key, f in r.fields.items():   # every field but ours (pi.*) and the reader's own
        if key.startswith(("GGUF.", "pi.")) or key == Keys.ARCHITECTURE:
            continue
        if key.startswith(src_arch + "."):
            key = arch + key[len(src_arch):]
        w.add_key_value(key, field_value(f, text=False), *field_types(f))
    if threshold is not None:
        w.add_float32(Keys.POWERINFER_THRESHOLD, threshold)
    tensors = [(t.name, np.asarray(t.data), t.tensor_type) for t in r.tensors]
    assert not any(F.split_name(n)[1] in (T.FFN_DOWN, T.FC1) for n, _, _ in tensors), \
        f"{src} is not a plain split file"
    tensors += [(layer_name(il, part), encode(a, pred_type), pred_type)   # after the model's,
                for il, pair in enumerate(preds)                          # as convert.py has them
                for part, a in zip((T.FC1, T.FC2), pair)]
    if gpu_split:
        tensors += [(name, a, QT.I32) for name, a in _gpu_split(len(preds), len(preds[0][1]))]
    for name, data, qt in tensors:
        if name not in drop:
            w.add_tensor(name, data, raw_dtype=qt)
    return _write_pwri(w, dst)


def _gpu_split(n_layer: int, n_ff: int, gpu_share: float = 0.25):
    """Per layer (blk.N.gpu_idx, i32 [n_ff], 1 = on the GPU) and (blk.N.gpu_bucket, i32: the
    sorted ids of the neurons on the GPU)."""
    rng = np.random.default_rng(0)
    for il in range(n_layer):
        on_gpu = np.sort(rng.choice(n_ff, int(n_ff * gpu_share), replace=False)).astype(np.int32)
        idx = np.zeros(n_ff, np.int32)
        idx[on_gpu] = 1
        yield layer_name(il, "gpu_idx"), idx
        yield layer_name(il, "gpu_bucket"), on_gpu


def gpu_split_file(dst: Path, n_layer: int, n_ff: int) -> Path:
    """PowerInfer's GPU split index (`_gpu_split`'s tensors, split.vram_capacity)."""
    w = gguf.GGUFWriter(str(dst), "generic.gpu_index")
    for name, a in _gpu_split(n_layer, n_ff):
        w.add_tensor(name, a, raw_dtype=QT.I32)
    w.add_block_count(n_layer)
    w.add_uint64("split.vram_capacity", 1 << 30)
    return _write_pwri(w, dst)

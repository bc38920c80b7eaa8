"""Activation predictors for ReLU models (the PowerInfer regime), trained here.

Per layer, a low-rank predictor `fc2(relu(fc1(x)))` (d -> r -> n_ff, no biases; docs/FORMAT.md)
is trained with binary cross-entropy on (FFN input, was-active) pairs: the fit of the calibration
pipeline (calibration.py) for ReLU models. A neuron is active when its ReLU gate is > 0.

- The recorded sample (calibration.py `record`) keeps FFN inputs and activity masks at a seeded
  random sample of positions of windows of WINDOW tokens (memory bounded by the number kept,
  `default_calib_tokens`); the last quarter of the windows is held out.
- For each rank of a small ladder, the predictor is trained (torch when installed, else numpy;
  both deterministic under the seed), and the per-layer logit threshold is the largest one that
  still catches `target_recall` of the truly active neurons on the held-out positions.
- The rank kept per layer is the one that minimises the bytes read per token: the predictor's
  weights plus the FFN rows of the neurons it predicts active (the FFN costs 3 rows of d per
  neuron; the predictor r * (d + n_ff) weights).
- Storage: q8_0 when the rank is a multiple of 32 (the engine repacks them for its fast dense
  kernels), else f16. Thresholds are chosen on what the engine computes: the stored weights, and
  for q8_0 the input and the hidden layer quantized to 8 bits per block of 32 as the engine does.

The engine's sparse mode computes neuron i iff fc2(relu(fc1 x))_i > threshold[layer].
What the pipeline's one rewrite (calibration.py `rewrite`) writes: the predictors, their keys,
and optionally the hot-first neuron order (`write_calibrated`).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from pi_backend import format as F
from pi_backend._cli import progress_bar
from pi_backend.format import Keys, T, field_value, layer_name

from .calibration import (Calibration, bytes_per_position, calibration_windows, first_pass, record,
                          rewrite, split_heldout)
from .model import ConvertError
from .predictors import Predictors

log = logging.getLogger("pi-convert")

DEFAULT_RANKS = (32, 64, 128)
DEFAULT_TARGET_RECALL = 0.99
DEFAULT_CALIB_TOKENS = 4096     # at least this many by default (see default_calib_tokens)
MAX_DEFAULT_CALIB_TOKENS = 16384
CALIB_MEMORY_BUDGET = 1 << 29   # bytes of recorded inputs and masks the default may fill (the
                                # peak while collecting is about twice: the windows, then one array)

RECORD = ("x", "active")        # what the fit needs of each recorded position
WINDOW = 256                    # tokens per calibration window (at most the training context)
HOLDOUT = 4                     # one token in HOLDOUT (the last windows) is held out

# bytes per weight of the FFN rows, by GGML type name (for the rank cost model)
_BYTES_PER_WEIGHT = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32}


# ---------------------------------------------------------------------------------------------
# calibration data
# ---------------------------------------------------------------------------------------------
def default_calib_tokens(n_layer: int, d: int, n_ff: int) -> int:
    """The default number of calibration positions: as many as CALIB_MEMORY_BUDGET holds of
    recorded FFN inputs (f32) and activity masks (bool), between DEFAULT_CALIB_TOKENS and
    MAX_DEFAULT_CALIB_TOKENS. Small models get the most: on the 4-layer ReLU test model 16384
    positions instead of 4096 lift the predictors' precision from 0.10-0.17 to 0.42-0.64 at the
    same recall."""
    per_position = bytes_per_position(n_layer, d, n_ff, RECORD)
    fit = CALIB_MEMORY_BUDGET // max(1, per_position)
    return int(min(MAX_DEFAULT_CALIB_TOKENS, max(DEFAULT_CALIB_TOKENS, fit)))


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
def _have_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _init(rank: int, d: int, ff: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((rank, d)) / math.sqrt(d)).astype(np.float32)
    w2 = (rng.standard_normal((ff, rank)) / math.sqrt(rank)).astype(np.float32)
    return w1, w2


def _train_numpy(x, y, w1, w2, epochs, batch, lr, seed):
    rng = np.random.default_rng(seed)
    params = [w1.copy(), w2.copy()]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    b1, b2, eps = 0.9, 0.999, 1e-8
    t = 0
    n = len(x)
    for _ in range(epochs):
        perm = rng.permutation(n)
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            xb, yb = x[idx], y[idx]
            z1 = xb @ params[0].T
            a = np.maximum(z1, 0)
            z2 = a @ params[1].T
            g2 = (1.0 / (1.0 + np.exp(-z2)) - yb) / (len(idx) * yb.shape[1])
            gw2 = g2.T @ a
            ga = g2 @ params[1]
            ga[z1 <= 0] = 0
            gw1 = ga.T @ xb
            t += 1
            for k, g in enumerate((gw1, gw2)):
                m[k] = b1 * m[k] + (1 - b1) * g
                v[k] = b2 * v[k] + (1 - b2) * g * g
                mh = m[k] / (1 - b1 ** t)
                vh = v[k] / (1 - b2 ** t)
                params[k] -= (lr * mh / (np.sqrt(vh) + eps)).astype(np.float32)
    return params[0], params[1]


def _train_torch(x, y, w1, w2, epochs, batch, lr, seed):
    import torch
    g = torch.Generator().manual_seed(seed)
    prev = torch.are_deterministic_algorithms_enabled()
    prev_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)     # small matrices: one thread is as fast and deterministic
    try:
        W1 = torch.nn.Parameter(torch.from_numpy(w1.copy()))
        W2 = torch.nn.Parameter(torch.from_numpy(w2.copy()))
        X = torch.from_numpy(x)
        Y = torch.from_numpy(y.astype(np.float32))
        opt = torch.optim.Adam([W1, W2], lr=lr)
        n = len(X)
        for _ in range(epochs):
            perm = torch.randperm(n, generator=g)
            for i in range(0, n, batch):
                idx = perm[i:i + batch]
                z = torch.relu(X[idx] @ W1.T) @ W2.T
                loss = torch.nn.functional.binary_cross_entropy_with_logits(z, Y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return W1.detach().numpy().copy(), W2.detach().numpy().copy()
    finally:
        torch.use_deterministic_algorithms(prev)
        torch.set_num_threads(prev_threads)


def q8_storage(rank: int, d: int) -> bool:
    """Whether predictors of this rank on inputs of size d are stored as q8_0: blocks of 32
    along d (fc1's rows) and along the rank (fc2's)."""
    return rank % 32 == 0 and d % 32 == 0


def stored(w1: np.ndarray, w2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """fc1 [r][d] and fc2 [n_ff][r] as the file holds them (f32 values): q8_0 or f16."""
    import gguf
    from gguf import GGMLQuantizationType as QT
    if not q8_storage(*w1.shape):
        return w1.astype(np.float16).astype(np.float32), w2.astype(np.float16).astype(np.float32)
    rt = [np.ascontiguousarray(w, dtype=np.float32) for w in (w1, w2)]
    return tuple(gguf.quants.dequantize(gguf.quants.quantize(w, QT.Q8_0), QT.Q8_0).reshape(w.shape)
                 for w in rt)


def _act_q8(x: np.ndarray) -> np.ndarray:
    """x quantized per block of 32 as the engine quantizes a q8_0 product's input (scale
    amax / 127 kept in f16, q = round-half-even(x * 127 / amax))."""
    xb = x.astype(np.float32).reshape(*x.shape[:-1], -1, 32)
    amax = np.abs(xb).max(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(amax > 0, np.rint(xb * (np.float32(127) / amax)), 0)
    d = (amax / np.float32(127)).astype(np.float16).astype(np.float32)
    return (q * d).reshape(x.shape)


def predict_logits(w1: np.ndarray, w2: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The logits the engine computes with stored weights w1 [r][d], w2 [n_ff][r]."""
    if not q8_storage(*w1.shape):
        return np.maximum(x @ w1.T, 0) @ w2.T
    return _act_q8(np.maximum(_act_q8(x) @ w1.T, 0)) @ w2.T


def threshold_for_recall(logits: np.ndarray, active: np.ndarray, target: float) -> float:
    """The largest threshold t with recall(logit > t) >= target on these positions."""
    pos = np.sort(logits[active].astype(np.float64))
    if len(pos) == 0:
        return float(np.max(logits)) if logits.size else 0.0
    k = int(math.floor((1.0 - target) * len(pos)))   # may miss k of the positives
    k = min(k, len(pos) - 1)
    t = pos[k]
    return float(np.nextafter(np.float32(t), np.float32(-np.inf)))


@dataclass
class LayerReport:
    layer: int
    rank: int
    threshold: float
    true_sparsity: float
    pred_sparsity: float
    recall: float
    precision: float
    cost_bytes: float
    tried: dict = field(default_factory=dict)   # rank -> (pred_sparsity, recall, cost)


def evaluate(w1, w2, thr, x, active) -> tuple[float, float, float, float]:
    """(true sparsity, predicted sparsity, recall, precision) on these positions."""
    pred = predict_logits(w1, w2, x) > thr
    tp = float(np.logical_and(pred, active).sum())
    n_act, n_pred = float(active.sum()), float(pred.sum())
    return (1.0 - n_act / active.size, 1.0 - n_pred / pred.size,
            tp / n_act if n_act else 1.0, tp / n_pred if n_pred else 1.0)


@dataclass
class TrainedPredictors(Predictors):
    """Predictors trained here: the weights are kept in memory (f32)."""
    weights: list = field(default_factory=list)      # [(fc1 [r][d], fc2 [n_ff][r])]
    reports: list = field(default_factory=list)      # [LayerReport]

    def load(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        return self.weights[layer]

    def permuted(self, perms: Sequence[np.ndarray]) -> "TrainedPredictors":
        """The same predictors for neurons reordered by perms[layer] (new -> original)."""
        w = [(w1, np.ascontiguousarray(w2[p])) for (w1, w2), p in zip(self.weights, perms)]
        return TrainedPredictors(self.path, self.threshold, list(self.thresholds),
                                 list(self.ranks), [], w, self.reports)

    def table(self) -> str:
        return report_table(self.reports)


def report_table(reports: Sequence[LayerReport]) -> str:
    """The per-layer report: rank, threshold, true and predicted sparsity, recall, precision."""
    lines = ["layer  rank  threshold  true_sparsity  pred_sparsity  recall  precision"]
    for r in reports:
        lines.append(f"{r.layer:5d}  {r.rank:4d}  {r.threshold:9.3f}  {r.true_sparsity:13.3f}"
                     f"  {r.pred_sparsity:13.3f}  {r.recall:6.3f}  {r.precision:9.3f}")
    return "\n".join(lines)


def train_predictors(calib: Calibration, ranks: Sequence[int] = DEFAULT_RANKS,
                     target_recall: float = DEFAULT_TARGET_RECALL, seed: int = 0,
                     epochs: int = 20, batch: int = 256, lr: float = 3e-3,
                     ffn_type: str = "q8_0", backend: str | None = None,
                     progress: bool = False, log_fn: Callable[[str], None] | None = None,
                     ) -> TrainedPredictors:
    """Trains one predictor per layer; see the module docstring for the rank and threshold
    rules. backend: "torch", "numpy" or None (torch when installed)."""
    if not 0.0 < target_recall <= 1.0:
        raise ValueError(f"target recall {target_recall} is not in (0, 1]")
    backend = backend or ("torch" if _have_torch() else "numpy")
    fit = _train_torch if backend == "torch" else _train_numpy
    N, L, d = calib.x.shape
    ff = calib.active.shape[2]
    tr, ho = ~calib.held, calib.held
    if ho.sum() == 0 or tr.sum() == 0:
        raise ValueError("calibration needs both training and held-out positions "
                         "(give more calibration tokens)")
    bpw = _BYTES_PER_WEIGHT.get(ffn_type, 2.0)
    pred_bpw = {r: _BYTES_PER_WEIGHT["q8_0" if q8_storage(r, d) else "f16"] for r in ranks}
    weights, thresholds, chosen, reports = [], [], [], []
    bar = progress_bar(progress, L * len(ranks), "predictors", "fit")
    try:
        for il in range(L):
            x_tr = np.ascontiguousarray(calib.x[tr, il])
            y_tr = calib.active[tr, il]
            x_ho = np.ascontiguousarray(calib.x[ho, il])
            y_ho = calib.active[ho, il]
            best = None
            tried = {}
            for r in ranks:
                w1, w2 = _init(r, d, ff, seed + 1000 * il + r)
                w1, w2 = fit(x_tr, y_tr, w1, w2, epochs, batch, lr, seed + il)
                # the threshold is chosen on what the engine will see
                w1, w2 = stored(w1, w2)
                thr = threshold_for_recall(predict_logits(w1, w2, x_ho), y_ho, target_recall)
                ts, ps, rec, prec = evaluate(w1, w2, thr, x_ho, y_ho)
                cost = pred_bpw[r] * r * (d + ff) + (1.0 - ps) * ff * 3 * d * bpw
                tried[r] = (ps, rec, cost)
                if best is None or cost < best[0]:
                    best = (cost, r, w1, w2, thr, ts, ps, rec, prec)
                bar.update(1)
            cost, r, w1, w2, thr, ts, ps, rec, prec = best
            weights.append((w1, w2))
            thresholds.append(thr)
            chosen.append(r)
            reports.append(LayerReport(il, r, thr, ts, ps, rec, prec, cost, tried))
            if log_fn:
                log_fn(f"layer {il}: rank {r}, threshold {thr:.3f}, sparsity true {ts:.3f} "
                       f"predicted {ps:.3f}, recall {rec:.3f}, precision {prec:.3f}")
    finally:
        bar.close()
    return TrainedPredictors(Path(f"trained ({backend}, recall {target_recall:g})"),
                             float(np.mean(thresholds)), thresholds, chosen, [], weights, reports)


# ---------------------------------------------------------------------------------------------
# hot-first neuron order
# ---------------------------------------------------------------------------------------------
def hot_first_order(freq: np.ndarray) -> list[np.ndarray]:
    """Per layer, neuron ids sorted by decreasing activation frequency (stable: ties keep the
    original order). Returns new index -> original index (int32)."""
    return [np.argsort(-f, kind="stable").astype(np.int32) for f in freq]


# ---------------------------------------------------------------------------------------------
# the converter's --calibrate path for ReLU models
# ---------------------------------------------------------------------------------------------
def is_pi_file(path: str | Path) -> bool:
    """A pi_backend split file (has pi.format_version)."""
    try:
        import gguf
        r = gguf.GGUFReader(path, "r")
    except Exception:  # noqa: BLE001 - not a GGUF file at all
        return False
    return Keys.FORMAT_VERSION in r.fields


# the keys write_calibrated writes anew, and the tensors it replaces
_PI_KEYS = (Keys.SPARSE_MODE, Keys.THRESHOLDS, Keys.PREDICTOR_RANKS, Keys.NEURON_ORDER,
            Keys.POWERINFER_THRESHOLD)
_PI_PARTS = (T.FC1, T.FC2, T.NEURON_ORDER)


def stored_tensors(preds: "TrainedPredictors | None") -> dict[int, list]:
    """Per layer, [(part, data, ggml type)] of the predictors as the file stores them: q8_0 or
    f16 (see `stored`)."""
    from gguf import GGMLQuantizationType as QT

    from .layout import encode
    out: dict[int, list] = {}
    for il in range(0 if preds is None else len(preds.ranks)):
        w1, w2 = preds.load(il)
        qt = QT.Q8_0 if q8_storage(*w1.shape) else QT.F16
        out[il] = [(part, encode(w, qt), qt) for part, w in ((T.FC1, w1), (T.FC2, w2))]
    return out


def write_calibrated(split: str | Path, out: Path, preds: "TrainedPredictors | None",
                     orders: Sequence[np.ndarray] | None, progress: bool = False) -> None:
    """The pipeline's rewrite of the pi split file `split` into `out` with the predictors (their
    thresholds and ranks) and the hot-first orders (rows permuted, blk.N.neuron_order added);
    existing predictors, thresholds and orders of `split` are replaced."""
    from .layout import predictor_keys
    rewrite(split, Path(out), predictor_keys(preds, orders is not None), drop_keys=_PI_KEYS,
            drop_parts=_PI_PARTS, add=stored_tensors(preds), orders=orders, progress=progress)


def calibrate_file(path: str | Path, text: str | Path | None,
                   calib_tokens: int | None = None, seed: int = 0,
                   progress: bool = False, n_threads: int | None = None) -> Calibration:
    """The recorded sample (FFN inputs and activity masks) of the file at `path` on the text
    file `text` (None: text the model writes itself); calib_tokens None: the default for its
    size (default_calib_tokens)."""
    from pi_backend.kernels import default_threads
    from pi_backend.model import Model
    from pi_backend.tokenizer import Tokenizer
    n_threads = n_threads or default_threads()
    model = Model(str(path), ffn_mode=F.FFN_DENSE)
    tok = None
    try:
        if calib_tokens is None:
            calib_tokens = default_calib_tokens(model.n_layer, model.n_embd, model.n_ff)
        tok = Tokenizer(str(path))
        window = min(WINDOW, getattr(model, "n_ctx_train", WINDOW) or WINDOW)
        seqs, _ = calibration_windows(model, tok, text, calib_tokens, window, seed, n_threads,
                                      progress)
        n_tok = sum(len(s) for s in seqs)
        if n_tok < 64:
            raise ConvertError("the calibration text has fewer than 64 tokens")
        rec, held = split_heldout(seqs, n_tok // HOLDOUT)
        return record(model, rec, calib_tokens, RECORD, held=held, seed=seed,
                      n_threads=n_threads, progress=progress)
    finally:
        if tok is not None:
            tok.close()
        model.close()


def convert_calibrated(src, out: Path, outtype: str, text: str | Path | None,
                       calib_tokens: int | None = None, train: bool | None = None,
                       reorder: bool = False, target_recall: float = DEFAULT_TARGET_RECALL,
                       ranks: Sequence[int] = DEFAULT_RANKS, seed: int = 0,
                       progress: bool = False, t0: float | None = None, split_input=None,
                       n_threads: int | None = None, down_type: str | None = None):
    """pi-convert --calibrate for ReLU models: write a plain split file to a temporary path (or
    take `split_input`, a pi file, as it is), run our dense engine on it over the calibration
    text, train the predictors (and the hot-first order), then write the final file: the split
    file's tensors copied as they are, plus predictors and metadata."""
    import resource
    import time
    from collections import Counter
    from contextlib import nullcontext
    from .layout import Summary
    t0 = time.perf_counter() if t0 is None else t0
    activation = src.hparams.activation if src is not None else _activation(split_input)
    if train is None:
        train = activation == F.ACT_RELU
    if train and activation != F.ACT_RELU:
        raise ConvertError("--train-predictors needs a ReLU model (this one uses "
                           f"{activation}); SwiGLU models calibrate thresholds instead")
    if calib_tokens is not None and calib_tokens < 64:
        raise ConvertError(f"--calib-tokens {calib_tokens} is too few (at least 64)")
    if text is not None and not Path(text).is_file():
        raise ConvertError(f"calibration text {text} does not exist")
    if split_input is None:
        stage = first_pass(src, out, outtype, down_type=down_type)
    else:
        stage = nullcontext((Path(split_input), None))
    with stage as (split, first):
        if first is not None:
            desc, vocab = first.source, first.vocab
        else:
            desc, vocab = f"{split.name} (pi_backend)", "copied"
            import gguf
            outtype = next((t.tensor_type.name.lower() for t in gguf.GGUFReader(split, "r").tensors
                            if t.name == layer_name(0, T.FFN_GATE)), "f16")
        calib = calibrate_file(split, text, calib_tokens, seed, progress, n_threads)
        preds = None
        if train:
            try:
                preds = train_predictors(calib, ranks, target_recall, seed=seed,
                                         ffn_type=outtype, progress=progress)
            except ValueError as e:
                raise ConvertError(str(e)) from None
        orders = hot_first_order(calib.freq) if reorder else None
        if orders is not None and preds is not None:
            preds = preds.permuted(orders)
        write_calibrated(split, out, preds, orders, progress=False)
    import gguf
    r = gguf.GGUFReader(out, "r")
    txt = f"calibrate  {calib.n_seen} tokens run, {len(calib.x)} positions kept " \
          f"({int(calib.held.sum())} held out)" + (", neurons reordered hot-first" if reorder else "")
    if preds is not None:
        txt += "\n" + preds.table()
    pred_desc = "none" if preds is None else \
        f"trained, ranks {min(preds.ranks)}..{max(preds.ranks)}, target recall {target_recall:g}"
    summary = Summary(
        outfile=out, source=desc, vocab=vocab, layout="split (ffn_down_t)",
        activation=activation, outtype=outtype, n_tensors=len(r.tensors),
        nbytes=out.stat().st_size, types=Counter(t.tensor_type.name.lower() for t in r.tensors),
        seconds=time.perf_counter() - t0,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        predictors=pred_desc, report=txt)
    summary.calibration = calib          # for callers (tests, reports)
    summary.trained = preds
    return summary


def _activation(path) -> str:
    from pi_backend.model import read_gguf
    f = read_gguf(str(path)).fields.get(Keys.FFN_ACTIVATION)
    return field_value(f) if f is not None else F.ACT_SILU

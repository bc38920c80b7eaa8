"""Per-layer predictor report of a calibrated ReLU file on any text.

    python -m pi_backend.convert.report MODEL.gguf TEXT_FILE [--tokens N]

Runs our dense engine over the text (as calibration does), records each layer's FFN input and
which neurons were truly active (ReLU gate > 0), applies the file's stored predictors and
thresholds as the engine computes them, and prints per layer: rank, threshold, true sparsity,
predicted sparsity, recall and precision. On text the predictors were not trained on this is the
honest recall figure (the conversion summary reports held-out calibration positions).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from pi_backend.format import Keys, T, field_value, layer_name

from .train_predictors import LayerReport, calibrate_file, evaluate, report_table


def stored_predictors(path: str | Path) -> tuple[list, list[float]]:
    """[(fc1 [r][d], fc2 [n_ff][r]) f32] and the thresholds of a calibrated file."""
    import gguf
    r = gguf.GGUFReader(path)
    field = r.fields.get(Keys.THRESHOLDS)
    if field is None:
        raise ValueError(f"{path} holds no thresholds (not a calibrated file)")
    thresholds = [float(x) for x in field_value(field)]
    tensors = {t.name: t for t in r.tensors}
    weights = []
    for il in range(len(thresholds)):
        pair = []
        for name in (layer_name(il, T.FC1), layer_name(il, T.FC2)):
            if name not in tensors:
                raise ValueError(f"{path} has no {name} (no trained predictors)")
            t = tensors[name]
            shape = tuple(int(v) for v in reversed(t.shape))      # ggml order -> rows, cols
            w = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)
            pair.append(np.ascontiguousarray(w, dtype=np.float32))
        weights.append(tuple(pair))
    return weights, thresholds


def report(path: str | Path, text: str | Path, n_tokens: int | None = None) -> list[LayerReport]:
    weights, thresholds = stored_predictors(path)
    calib = calibrate_file(path, text, n_tokens)
    out = []
    for il, ((w1, w2), thr) in enumerate(zip(weights, thresholds)):
        ts, ps, rec, prec = evaluate(w1, w2, thr, calib.x[:, il], calib.active[:, il])
        out.append(LayerReport(il, w1.shape[0], thr, ts, ps, rec, prec, 0.0))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pi_backend.convert.report", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="GGUF file calibrated with trained predictors")
    p.add_argument("text", help="text file to measure on")
    p.add_argument("--tokens", type=int, metavar="N", help="positions to record (default: as "
                   "calibration, bounded by memory)")
    args = p.parse_args(argv)
    if not Path(args.text).is_file():
        print(f"error: text file {args.text} does not exist", file=sys.stderr)
        return 2
    from pi_backend import PiError
    from .model import ConvertError
    try:
        rows = report(args.model, args.text, args.tokens)
    except (ValueError, OSError, ConvertError, PiError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

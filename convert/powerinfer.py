"""pi-convert of a PowerInfer file (magic PWRI; the mapping is pi_backend/powerinfer.py's): our
split file with every tensor copied as it is stored (no type changes), the predictor's fc1 as
our predictor reads it (for the normed FFN input), the pi.* keys; with --dense, without the
predictors (dense mode by default). One rewrite (calibration.rewrite), temporary name then
rename."""
from __future__ import annotations

import resource
import time
from collections import Counter
from pathlib import Path

import numpy as np

from pi_backend.format import FORMAT_VERSION, Keys, field_value
from pi_backend.powerinfer import map_model

from .layout import Summary
from .model import ConvertError


def convert_powerinfer(path: Path, out: Path, dense: bool = False, progress: bool = False,
                       t0: float | None = None) -> Summary:
    from pi_backend.model import ModelError, read_gguf
    from .calibration import rewrite
    t0 = time.perf_counter() if t0 is None else t0
    try:
        r = read_gguf(str(path))
    except ModelError as e:
        raise ConvertError(str(e)) from None
    fields = {k: field_value(f) for k, f in r.fields.items()
              if not k.startswith(("GGUF.", "tokenizer."))}
    stored = {t.name: t for t in r.tensors}
    shapes = {t.name: (int(t.tensor_type), tuple(int(x) for x in reversed(t.shape.tolist())))
              for t in r.tensors}
    types = sorted({t.tensor_type.name for t in r.tensors})

    def read(name: str) -> np.ndarray:
        return np.asarray(stored[name].data).reshape(-1).view(np.uint8)

    try:
        pw = map_model(fields, shapes, read, use_predictors=not dense)
    except ValueError as e:
        raise ConvertError(f"{path.name}: {e}") from None
    source = f"{path.name} (PowerInfer, {'/'.join(types)})"
    keys = {Keys.FORMAT_VERSION: FORMAT_VERSION, **pw.keys, Keys.SOURCE: source}
    drop_keys = (Keys.POWERINFER_THRESHOLD,) if pw.threshold is None else ()
    rewrite(path, out, keys, drop_keys=drop_keys, drop_parts=pw.drop, add=pw.add,
            progress=progress)
    written = read_gguf(str(out)).tensors
    preds = "none (--dense)" if pw.threshold is None else \
        f"{len(pw.ranks)} layers from {path.name}, ranks {min(pw.ranks)}..{max(pw.ranks)}, " \
        f"threshold {pw.threshold:g}; fc1 divided by ffn_norm's weight (PowerInfer's " \
        "predictor reads the FFN input before the norm)"
    return Summary(
        outfile=out, source=source, vocab="copied from the source", layout="split (ffn_down_t)",
        activation=pw.keys[Keys.FFN_ACTIVATION], outtype="as stored", n_tensors=len(written),
        nbytes=out.stat().st_size, types=Counter(t.tensor_type.name.lower() for t in written),
        seconds=time.perf_counter() - t0,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, predictors=preds)

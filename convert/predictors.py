"""PowerInfer predictor directories: `model_N.pt` per layer (fc1: [rank][d], fc2: [n_ff][rank],
a ReLU in between) and an optional `config.json` with `sparse_threshold`. torch is needed only
here, to unpickle the .pt files."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .model import ConvertError, HParams

DEFAULT_THRESHOLD = 0.0


@dataclass
class Predictors:
    path: Path
    threshold: float
    thresholds: list[float]
    ranks: list[int]
    files: list[Path] = field(default_factory=list)

    def load(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        return _load_pt(self.files[layer])


def _state_dict(obj):
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        obj = obj.state_dict()
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    return obj


def _load_pt(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ConvertError("--predictors needs the torch package to read .pt files") from None
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            # whole pickled modules (as PowerInfer's trainer may save) need the full unpickler
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad input file
        raise ConvertError(f"{path}: cannot load predictor ({type(e).__name__}: {e})") from None
    sd = _state_dict(obj)
    if not isinstance(sd, dict):
        raise ConvertError(f"{path}: not a predictor state dict")
    fc1 = next((v for k, v in sd.items() if k.endswith("fc1.weight")), None)
    fc2 = next((v for k, v in sd.items() if k.endswith("fc2.weight")), None)
    if fc1 is None or fc2 is None:
        raise ConvertError(f"{path}: no fc1.weight / fc2.weight in the predictor")
    return (fc1.detach().to(torch.float32).numpy().copy(),
            fc2.detach().to(torch.float32).numpy().copy())


def open_predictors(path: Path, hp: HParams) -> Predictors:
    if not path.is_dir():
        raise ConvertError(f"predictor directory {path} does not exist")
    files = [path / f"model_{i}.pt" for i in range(hp.n_layer)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ConvertError(f"predictor directory {path} lacks {', '.join(missing[:3])}"
                           f"{' ...' if len(missing) > 3 else ''} ({hp.n_layer} layers expected)")
    threshold = DEFAULT_THRESHOLD
    per_layer: list[float] | None = None
    cfg = path / "config.json"
    if cfg.is_file():
        try:
            c = json.loads(cfg.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConvertError(f"{cfg}: cannot parse ({e})") from None
        t = c.get("sparse_threshold", DEFAULT_THRESHOLD)
        if isinstance(t, list):
            if len(t) != hp.n_layer:
                raise ConvertError(f"{cfg}: sparse_threshold has {len(t)} values, "
                                   f"expected {hp.n_layer}")
            per_layer = [float(x) for x in t]
            threshold = float(np.mean(per_layer))
        else:
            threshold = float(t)
    # check every layer's shapes now, before anything is written
    ranks = []
    for i, f in enumerate(files):
        fc1, fc2 = _load_pt(f)
        if fc1.ndim != 2 or fc2.ndim != 2 or fc1.shape[1] != hp.n_embd or \
                fc2.shape[0] != hp.n_ff or fc2.shape[1] != fc1.shape[0]:
            raise ConvertError(f"inconsistent shapes: {f.name} has fc1 {list(fc1.shape)}, fc2 "
                               f"{list(fc2.shape)}; expected [rank, {hp.n_embd}] and "
                               f"[{hp.n_ff}, rank]")
        ranks.append(int(fc1.shape[0]))
    return Predictors(path, threshold, per_layer or [threshold] * hp.n_layer, ranks, files)

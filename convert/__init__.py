"""pi-convert: Hugging Face checkpoints, llama.cpp GGUF files and PowerInfer's files -> pi_backend
GGUF files (split FFN with ffn_down_t, quantized, tokenizer included); see docs/FORMAT.md."""
from __future__ import annotations

from pathlib import Path

from pi_backend.format import ACT_RELU, FORMAT_VERSION

from .model import ConvertError, HParams, SourceTensor
from .layout import DOWN_TYPES, OUTTYPES, Summary

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


def convert(input: str | Path, outfile: str | Path, outtype: str = "auto", dense: bool = False,
            predictors: str | Path | None = None, progress: bool = False,
            calibrate: bool | str | Path = False, calib_tokens: int | None = None,
            train_predictors: bool | None = None, reorder: bool = False,
            target_recall: float | None = None, predictor_ranks=None, seed: int = 0,
            sparsity: float | None = None, ppl_budget: float | None = None,
            n_threads: int | None = None, keep_down: bool = False,
            down_type: str | None = None, head_preview: bool | None = None,
            head_tokens: int | None = None) -> Summary:
    """Convert `input` into `outfile`; raises ConvertError on bad inputs.

    A PowerInfer file (magic PWRI) is converted as it is stored (convert/powerinfer.py): outtype
    auto only, its predictors, or none with dense.

    calibrate: False, True (calibration text written by the model itself) or a text file: run
    our dense engine on a first-pass file; for ReLU models this trains activation predictors
    (train_predictors, default on) and, with reorder, orders the neurons hot-first; for gated
    FFNs with a smooth activation (SwiGLU: silu, GeGLU: gelu_tanh) it sets threshold-mode
    thresholds (pi_backend.convert.calibrate): a uniform `sparsity`, or the largest sparsity
    within a perplexity budget `ppl_budget` (default 0.02).
    outtype: "auto" keeps a GGUF source's tensor types and bytes (only ffn_down_t is made, of
    down_type or of the type chosen for the source's ffn_down); from a Hugging Face checkpoint
    it means f16.
    head_preview: add the sparse head's output preview (convert/head_preview.py), on the same
    calibration text source (default on with calibrate); of a pi split file without calibrate:
    the file as it is, with the preview added. head_tokens: its calibration tokens.
    keep_down: a split file that also keeps the plain ffn_down, which dense mode then reads
    (the dense FFN at the plain file's speed, for one more copy of the down weights)."""
    import time
    t0 = time.perf_counter()
    explicit = head_preview is not None
    if head_preview is None:
        head_preview = calibrate is not False and not dense
    if head_preview and dense:
        raise ConvertError("--head-preview is for split files; --dense writes a plain file")
    head_only = head_preview and calibrate is False
    if head_only and Path(input).is_file():
        from .train_predictors import is_pi_file
        if is_pi_file(input):   # a pi split file as it is, with the preview added
            from .head_preview import add_head_preview, split_file_summary
            extra = [f for f, given in (("--outtype", outtype != "auto"),
                                        ("--down-type", down_type is not None),
                                        ("--keep-down", keep_down), ("--reorder", reorder),
                                        ("--predictors", predictors is not None)) if given]
            if extra:
                raise ConvertError(f"{', '.join(extra)}: not for a split file that only gets "
                                   "the head preview")
            out = Path(outfile)
            if out.exists() and out.resolve() == Path(input).resolve():
                raise ConvertError("the output file would overwrite the input")
            hp = add_head_preview(input, out, None, head_tokens, seed, n_threads, progress)
            return split_file_summary(out, t0, f"head       {hp.summary()}\n{hp.report()}")
    summary = _convert(input, outfile, outtype, dense, predictors, progress, calibrate,
                       calib_tokens, train_predictors, reorder, target_recall, predictor_ranks,
                       seed, sparsity, ppl_budget, n_threads, keep_down, down_type, t0,
                       head_only)
    if head_preview:
        from .head_preview import attach
        summary = attach(summary, Path(outfile), None if calibrate in (True, False) else calibrate,
                         head_tokens, seed, n_threads, progress, t0, required=explicit)
    return summary


def _convert(input, outfile, outtype, dense, predictors, progress, calibrate, calib_tokens,
             train_predictors, reorder, target_recall, predictor_ranks, seed, sparsity,
             ppl_budget, n_threads, keep_down, down_type, t0, head_only):
    """convert() without the head preview (head_only: the preview is all that was asked)."""
    from .layout import write_model
    if outtype not in OUTTYPES:
        raise ConvertError(f"unknown output type {outtype!r} (choose from {', '.join(OUTTYPES)})")
    if down_type is not None and down_type not in DOWN_TYPES:
        raise ConvertError(f"unknown ffn_down_t type {down_type!r} (choose from {', '.join(DOWN_TYPES)})")
    if down_type is not None and dense:
        raise ConvertError("--down-type is for split files; --dense writes no ffn_down_t")
    out = Path(outfile)
    if out.is_dir():
        raise ConvertError(f"output {out} is a directory; give a file name")
    if not out.parent.is_dir():
        raise ConvertError(f"output directory {out.parent} does not exist")
    if Path(input).exists() and out.exists() and out.resolve() == Path(input).resolve():
        raise ConvertError("the output file would overwrite the input")
    if keep_down and dense:
        raise ConvertError("--keep-down is for split files; --dense already keeps ffn_down only")
    if dense and predictors is not None:
        raise ConvertError("--dense writes a plain llama.cpp file; it cannot hold --predictors")
    if (calibrate is not False or reorder or train_predictors) and (dense or predictors is not None):
        raise ConvertError("--calibrate, --train-predictors and --reorder cannot be combined "
                           "with --dense or --predictors")
    if (reorder or train_predictors) and calibrate is False:
        raise ConvertError("--train-predictors and --reorder need --calibrate")
    from pi_backend.powerinfer import is_powerinfer_file
    if head_only and is_powerinfer_file(input):  # its vocabulary and layout: convert it first
        raise ConvertError("--head-preview: convert the PowerInfer file first, then add the "
                           "preview to the result")
    if is_powerinfer_file(input):
        extra = [flag for flag, given in (
            ("--outtype", outtype != "auto"), ("--down-type", down_type is not None),
            ("--keep-down", keep_down),
            ("--predictors", predictors is not None), ("--calibrate", calibrate is not False),
            ("--sparsity", sparsity is not None), ("--ppl-budget", ppl_budget is not None))
            if given]
        if extra:
            raise ConvertError(f"{', '.join(extra)}: not for a PowerInfer file, which is converted "
                               "as stored (its tensor types and predictors; --dense: without them)")
        from .powerinfer import convert_powerinfer
        return convert_powerinfer(Path(input), out, dense, progress=progress, t0=t0)
    if calibrate is not False and not Path(input).is_dir():
        from . import train_predictors as tp
        if tp.is_pi_file(input) and tp._activation(input) == ACT_RELU:   # a ReLU pi file, as it is
            if keep_down:
                raise ConvertError("--keep-down cannot be added to an already split file")
            return tp.convert_calibrated(
                None, out, "", None if calibrate is True else calibrate,
                calib_tokens, train_predictors, reorder,
                target_recall or tp.DEFAULT_TARGET_RECALL,
                tuple(predictor_ranks or tp.DEFAULT_RANKS), seed, progress=progress, t0=t0,
                split_input=input, n_threads=n_threads)
    if calibrate is False and (sparsity is not None or ppl_budget is not None):
        raise ConvertError("--sparsity and --ppl-budget need --calibrate")
    src = open_source(input)
    try:
        if calibrate is not False and src.hparams.activation == ACT_RELU:
            if keep_down:
                raise ConvertError("--keep-down is for SwiGLU models; a ReLU model with "
                                   "predictors runs sparse")
            from . import train_predictors as tp
            return tp.convert_calibrated(
                src, out, outtype, None if calibrate is True else calibrate,
                calib_tokens, train_predictors, reorder,
                target_recall or tp.DEFAULT_TARGET_RECALL,
                tuple(predictor_ranks or tp.DEFAULT_RANKS), seed, progress=progress, t0=t0,
                n_threads=n_threads, down_type=down_type)
        if calibrate is not False:
            from .calibrate import convert_and_calibrate_source
            return convert_and_calibrate_source(
                src, out, outtype, None if calibrate is True else calibrate, calib_tokens,
                sparsity, ppl_budget, seed, n_threads, progress=progress, t0=t0,
                relu_only=bool(train_predictors or reorder), keep_down=keep_down,
                down_type=down_type)
        preds = None
        if predictors is not None:
            from .predictors import open_predictors
            preds = open_predictors(Path(predictors), src.hparams)
        return write_model(src, out, outtype, dense, preds, progress=progress, t0=t0,
                           keep_down=keep_down, down_type=down_type)
    finally:
        src.close()

"""Command line: pi-convert INPUT --outfile OUT.gguf [--outtype auto|f32|f16|q8_0|q4_0|q4_1]
[--down-type TYPE] [--dense | --keep-down] [--predictors DIR] [--calibrate [TEXT_FILE]] [--calib-tokens N]
[--[no-]train-predictors] [--target-recall R] [--predictor-ranks 32,64,128] [--reorder]
[--sparsity S | --ppl-budget B] [--[no-]head-preview] [--head-tokens N] [--threads N]   (also: python -m pi_backend.convert ...)"""
from __future__ import annotations

import argparse
import logging
import sys

from pi_backend._cli import OneLineErrorParser

PROG = "pi-convert"


def build_parser() -> argparse.ArgumentParser:
    from .layout import DOWN_TYPES, OUTTYPES
    p = OneLineErrorParser(prog=PROG, description="Convert a Hugging Face checkpoint directory, a llama.cpp "
                "GGUF file or a PowerInfer GGUF file (magic PWRI) into a pi_backend GGUF file (split "
                "FFN, down transposed, quantized).")
    p.add_argument("input", help="Hugging Face model directory, or a .gguf file (llama.cpp's or "
                   "PowerInfer's)")
    p.add_argument("--outfile", required=True, help="output .gguf path")
    p.add_argument("--outtype", default="auto", choices=list(OUTTYPES),
                   help="type of the weight matrices (norms and vectors stay f32); default auto: "
                   "a GGUF source's tensors keep their types and bytes (a PowerInfer file's all "
                   "of them), a Hugging Face checkpoint's become f16")
    p.add_argument("--down-type", choices=list(DOWN_TYPES),
                   help="type of ffn_down_t (the transposed down weight, re-quantized); default: "
                   "q8_0 from a quantized source under --outtype auto, else the outtype")
    p.add_argument("--dense", action="store_true",
                   help="write a plain llama.cpp-compatible file instead (no split FFN, no pi.* keys); "
                   "of a PowerInfer file: our split file without its predictors")
    p.add_argument("--keep-down", action="store_true",
                   help="split file that also keeps the plain ffn_down: dense mode then runs at the "
                   "plain file's speed (one more copy of the down weights)")
    p.add_argument("--predictors", metavar="DIR",
                   help="PowerInfer predictor directory (model_N.pt, optional config.json)")
    p.add_argument("--calibrate", nargs="?", const=True, default=False, metavar="TEXT_FILE",
                   help="calibrate on TEXT_FILE (default: text the model writes itself) with our "
                   "dense engine; ReLU models get trained activation predictors")
    p.add_argument("--calib-tokens", type=int, metavar="N",
                   help="calibration tokens to run (default for ReLU models: as many as 512 MiB "
                   "of recorded inputs holds, 4096 to 16384; 512 for SwiGLU/GeGLU threshold "
                   "calibration)")
    p.add_argument("--train-predictors", action=argparse.BooleanOptionalAction, default=None,
                   help="train predictors while calibrating (default: on for ReLU models)")
    p.add_argument("--target-recall", type=float, metavar="R",
                   help="share of truly active neurons the predictors must catch (default 0.99)")
    p.add_argument("--predictor-ranks", metavar="R1,R2,..",
                   type=lambda s: [int(x) for x in s.split(",") if x.strip()],
                   help="predictor ranks to try per layer (default 32,64,128)")
    p.add_argument("--reorder", action="store_true",
                   help="order the neurons hot-first by measured activation frequency")
    thr = p.add_mutually_exclusive_group()
    thr.add_argument("--sparsity", type=float, metavar="S",
                     help="SwiGLU/GeGLU --calibrate: uniform threshold-mode sparsity S per layer")
    thr.add_argument("--ppl-budget", type=float, metavar="B",
                     help="SwiGLU/GeGLU --calibrate: largest sparsity (greedy per-layer "
                     "allocation) within a relative perplexity increase B (default 0.02)")
    p.add_argument("--head-preview", action=argparse.BooleanOptionalAction, default=None,
                   help="add the sparse output head's preview (a low-rank picker of the output "
                   "rows each token needs; default: on with --calibrate). Of a pi_backend split "
                   "file without --calibrate: that file, with the preview added")
    p.add_argument("--head-tokens", type=int, metavar="N",
                   help="calibration tokens of the head preview (default 2048: the model's own "
                   "text, or --calibrate's TEXT_FILE)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="engine threads for calibration (default: the available cores, at most 8)")
    p.add_argument("--seed", type=int, default=0, help="calibration / training seed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: warning: %(message)s")
    from . import ConvertError, convert
    try:
        summary = convert(args.input, args.outfile, args.outtype, dense=args.dense,
                          predictors=args.predictors,
                          progress=not args.no_progress and not args.quiet,
                          calibrate=args.calibrate, calib_tokens=args.calib_tokens,
                          train_predictors=args.train_predictors, reorder=args.reorder,
                          target_recall=args.target_recall,
                          predictor_ranks=args.predictor_ranks, seed=args.seed,
                          sparsity=args.sparsity, ppl_budget=args.ppl_budget,
                          n_threads=args.threads, keep_down=args.keep_down,
                          down_type=args.down_type, head_preview=args.head_preview,
                          head_tokens=args.head_tokens)
    except ConvertError as e:
        sys.stderr.write(f"{PROG}: error: {e}\n")
        return 1
    except MemoryError:
        sys.stderr.write(f"{PROG}: error: out of memory\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted; nothing written\n")
        return 130
    except OSError as e:   # disk full, permissions, ...
        sys.stderr.write(f"{PROG}: error: {e.strerror or e}: {e.filename or ''}\n")
        return 1
    if not args.quiet:
        print(summary.text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

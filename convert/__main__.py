"""Command line: pi-convert INPUT --outfile OUT.gguf --outtype f32|f16|q8_0|q4_0|q4_1
[--dense] [--predictors DIR]   (also: python -m convert ...)"""
from __future__ import annotations

import argparse
import logging
import sys

PROG = "pi-convert"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        sys.stderr.write(f"{PROG}: error: {message} (see {PROG} --help)\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    from .layout import OUTTYPES
    p = _Parser(prog=PROG, description="Convert a Hugging Face checkpoint directory or a llama.cpp "
                "GGUF file into a pi_backend GGUF file (split FFN, down transposed, quantized).")
    p.add_argument("input", help="Hugging Face model directory, or a .gguf file")
    p.add_argument("--outfile", required=True, help="output .gguf path")
    p.add_argument("--outtype", default="f16", choices=list(OUTTYPES),
                   help="type of the weight matrices (norms and vectors stay f32); default f16")
    p.add_argument("--dense", action="store_true",
                   help="write a plain llama.cpp-compatible file instead (no split FFN, no pi.* keys)")
    p.add_argument("--predictors", metavar="DIR",
                   help="PowerInfer predictor directory (model_N.pt, optional config.json)")
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
                          progress=not args.no_progress and not args.quiet)
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

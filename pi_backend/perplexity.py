"""pi-perplexity: teacher-forced perplexity of a text under the pi_backend engine.

    pi-perplexity MODEL TEXT_FILE [--ffn-mode dense|sparse|threshold] [--tokens N]
                  [--threads N] [--ctx N] [--no-kl]

The text is tokenized with the file's own vocabulary (llama.cpp, vocab-only), cut into chunks of
at most --ctx tokens, each starting with BOS when the vocabulary adds one, and every chunk is
evaluated from an empty cache with the logits of all positions; each token after the first of a
chunk is scored. Printed: `perplexity: X` for the chosen FFN mode (default: the mode the file was
calibrated for), the dense perplexity, the mean KL divergence KL(dense || mode) per scored token
and the FFN sparsity the engine measured (share of FFN neurons skipped).

The helpers (`log_softmax`, `score_chunk`, `evaluate`) are used by pi_backend.convert.calibrate too.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from typing import Iterable, List, Sequence

import numpy as np

from ._cli import OneLineErrorParser, progress_bar

PROG = "pi-perplexity"


# ---- numerics ----------------------------------------------------------------------------------
def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float32 (float64 accumulation of the normaliser)."""
    x = np.asarray(logits, dtype=np.float32)
    m = x.max(axis=-1, keepdims=True)
    z = x - m
    lse = np.log(np.exp(z).sum(axis=-1, keepdims=True, dtype=np.float64)).astype(np.float32)
    return z - lse


def nll(logp: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Negative log-likelihood of each target: logp [n, V], targets [n] -> [n] (float64)."""
    return -logp[np.arange(len(targets)), targets].astype(np.float64)


def kl_rows(logp_ref: np.ndarray, logp: np.ndarray) -> np.ndarray:
    """KL(ref || other) per row, in nats (float64); logp_* are log-softmax rows [n, V]."""
    p = np.exp(logp_ref, dtype=np.float64)
    return np.maximum((p * (logp_ref - logp)).sum(axis=-1), 0.0)


# ---- chunking ----------------------------------------------------------------------------------
def make_chunks(tokens: Sequence[int], ctx: int, bos: int | None,
                max_scored: int | None = None) -> List[np.ndarray]:
    """Cut `tokens` (the text's tokens, without BOS) into chunks of at most `ctx` tokens, each
    starting with `bos` when given. Every chunk scores len(chunk) - 1 tokens; with max_scored
    the chunks together score at most that many."""
    if ctx < 2:
        raise ValueError("--ctx must be at least 2")
    toks = [int(t) for t in tokens]
    body = ctx - 1 if bos is not None else ctx
    chunks: List[np.ndarray] = []
    scored = 0
    i = 0
    while i < len(toks):
        want = body
        if max_scored is not None:
            left = max_scored - scored
            if left <= 0:
                break
            # a chunk of k body tokens scores k (with BOS) or k - 1 (without)
            want = min(want, left if bos is not None else left + 1)
        piece = toks[i:i + want]
        i += len(piece)
        chunk = ([bos] if bos is not None else []) + piece
        if len(chunk) < 2:
            break
        chunks.append(np.asarray(chunk, dtype=np.int32))
        scored += len(chunk) - 1
    return chunks


# ---- evaluation --------------------------------------------------------------------------------
@dataclass
class Result:
    mode: str
    n_tokens: int            # scored tokens
    n_chunks: int
    nll: float               # mean NLL in the chosen mode (nats)
    dense_nll: float | None  # mean NLL in dense mode (None when not measured)
    kl: float | None         # mean KL(dense || mode) per scored token
    sparsity: float          # share of FFN neurons skipped in the chosen mode

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll)

    @property
    def dense_perplexity(self) -> float | None:
        return math.exp(self.dense_nll) if self.dense_nll is not None else None

    def text(self) -> str:
        lines = [f"perplexity: {self.perplexity:.4f}"]
        if self.dense_nll is not None:
            inc = self.perplexity / self.dense_perplexity - 1.0
            lines.append(f"dense perplexity: {self.dense_perplexity:.4f} "
                         f"(increase {100 * inc:+.2f}%)")
        if self.kl is not None:
            lines.append(f"mean KL vs dense: {self.kl:.6f} nats/token")
        lines.append(f"FFN sparsity: {self.sparsity:.4f} (mode {self.mode})")
        lines.append(f"tokens: {self.n_tokens} scored in {self.n_chunks} chunk(s)")
        return "\n".join(lines)


def score_chunk(ctx, chunk: np.ndarray) -> np.ndarray:
    """Log-softmax of the logits predicting chunk[1:] ([len-1, V]), from an empty cache."""
    logits = ctx.eval(chunk, 0, logits_all=True)
    return log_softmax(logits[:-1])


def evaluate(model, chunks: Iterable[np.ndarray], mode: str, n_threads: int = 1,
             with_dense: bool = True, progress: bool = False) -> Result:
    """Perplexity of `chunks` in `mode`, and (with_dense) the dense perplexity and the mean KL
    of `mode` against dense, on a pi_backend.model.Model."""
    chunks = list(chunks)
    if not chunks:
        raise ValueError("no tokens to score")
    n_ctx = max(len(c) for c in chunks)
    # one context per mode: a context that switches from a sparse mode back to dense is not
    # relied upon (each mode keeps its own scratch state)
    ctx = model.new_context(n_ctx=n_ctx, n_threads=n_threads, n_batch=min(n_ctx, 512),
                            ffn_mode=mode)
    dctx = None
    if with_dense:
        dctx = ctx if mode == "dense" else model.new_context(
            n_ctx=n_ctx, n_threads=n_threads, n_batch=min(n_ctx, 512), ffn_mode="dense")
    bar = progress_bar(progress, sum(len(c) - 1 for c in chunks), PROG, "tok")
    s_nll = s_dnll = s_kl = 0.0
    n = 0
    active = neurons = 0
    try:
        for chunk in chunks:
            targets = chunk[1:]
            ctx.reset_stats()
            lp = score_chunk(ctx, chunk)
            st = ctx.stats()
            active += st["ffn_active"]
            neurons += st["ffn_neurons"]
            s_nll += nll(lp, targets).sum()
            if dctx is not None:
                lp_d = score_chunk(dctx, chunk)   # a second, independent dense run
                s_dnll += nll(lp_d, targets).sum()
                s_kl += kl_rows(lp_d, lp).sum()
                del lp_d
            del lp
            n += len(targets)
            bar.update(len(targets))
    finally:
        bar.close()
        if dctx is not None and dctx is not ctx:
            dctx.close()
        ctx.close()
    return Result(mode=mode, n_tokens=n, n_chunks=len(chunks), nll=s_nll / n,
                  dense_nll=s_dnll / n if with_dense else None,
                  kl=s_kl / n if with_dense else None,
                  sparsity=1.0 - active / neurons if neurons else 0.0)


def text_chunks(model_path: str, text: str, ctx: int, max_scored: int | None = None):
    """Tokenize `text` with the file's vocabulary and cut it into chunks (see make_chunks)."""
    from .tokenizer import Tokenizer
    tok = Tokenizer(model_path)
    try:
        bos = tok.token_bos() if tok.add_bos_token() and tok.token_bos() >= 0 else None
        ids = tok.tokenize(text.encode("utf-8"), add_bos=False)
    finally:
        tok.close()
    return make_chunks(ids, ctx, bos, max_scored)


def perplexity(model_path: str, text: str, mode: str | None = None, n_tokens: int | None = None,
               ctx: int = 512, n_threads: int = 1, with_dense: bool = True,
               progress: bool = False) -> Result:
    """Library form of the command: load `model_path`, score `text`."""
    from .model import Model
    model = Model(model_path)
    try:
        mode = mode or model.default_ffn_mode
        model._check_mode(mode)
        ctx = min(ctx, model.n_ctx_train)
        chunks = text_chunks(model_path, text, ctx, n_tokens)
        if not chunks:
            raise ValueError("the text is too short: it gives no token to score")
        return evaluate(model, chunks, mode, n_threads, with_dense, progress)
    finally:
        model.close()


# ---- command line ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog=PROG, description="Teacher-forced perplexity of a text file under the "
                "pi_backend engine, with the KL divergence against dense and the FFN sparsity.")
    p.add_argument("model", help="pi_backend GGUF file")
    p.add_argument("text", help="UTF-8 text file to score")
    p.add_argument("--ffn-mode", choices=["dense", "sparse", "threshold"], default=None,
                   help="FFN mode (default: the one the file was calibrated for)")
    p.add_argument("--tokens", type=int, default=None, metavar="N",
                   help="score at most N tokens (default: the whole text)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="threads (default: the available cores, at most 8)")
    p.add_argument("--ctx", type=int, default=512, metavar="N",
                   help="tokens per chunk, BOS included (default 512, at most the model's "
                   "training context)")
    p.add_argument("--no-kl", action="store_true",
                   help="skip the dense pass (no dense perplexity, no KL)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.tokens is not None and args.tokens <= 0:
        sys.stderr.write(f"{PROG}: error: --tokens must be positive\n")
        return 2
    if args.threads is not None and args.threads <= 0:
        sys.stderr.write(f"{PROG}: error: --threads must be positive\n")
        return 2
    if args.ctx < 2:
        sys.stderr.write(f"{PROG}: error: --ctx must be at least 2\n")
        return 2
    for what, path in (("model", args.model), ("text", args.text)):
        if not os.path.exists(path):
            sys.stderr.write(f"{PROG}: error: {what} file not found: {path}\n")
            return 1
        if os.path.isdir(path):
            sys.stderr.write(f"{PROG}: error: {what} path is a directory: {path}\n")
            return 1
    try:
        with open(args.text, "rb") as f:
            text = f.read().decode("utf-8")
    except UnicodeDecodeError as e:
        sys.stderr.write(f"{PROG}: error: {args.text} is not UTF-8 text (byte {e.start})\n")
        return 1
    except OSError as e:
        sys.stderr.write(f"{PROG}: error: cannot read {args.text}: {e.strerror or e}\n")
        return 1
    from .kernels import default_threads
    try:
        res = perplexity(args.model, text, args.ffn_mode, args.tokens, args.ctx,
                         args.threads or default_threads(), with_dense=not args.no_kl,
                         progress=not args.no_progress and sys.stderr.isatty())
    except (ValueError, OSError) as e:   # ModelError is a ValueError
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        sys.stderr.write(f"{PROG}: error: {msg}\n")
        return 1
    except MemoryError:
        sys.stderr.write(f"{PROG}: error: out of memory\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    print(res.text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

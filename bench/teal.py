"""Input-side (TEAL) sparsity on a real model: what it costs in quality, and what it could gain.

    python -m bench.teal [MODEL] [--levels 0.25,0.4,0.5] [--calib TEXT] [--text TEXT]

TEAL drops the small-magnitude entries of the input of each projection (q/k/v, o, gate/up,
down), so the weight columns of dropped inputs are never read. This runs the model in float64
numpy from the GGUF's dequantized weights (llama architecture: RMSNorm, normal RoPE, GQA
attention, SwiGLU, tied or separate output), with per-layer, per-projection magnitude
thresholds at a uniform sparsity, calibrated as quantiles of |input| on one text and scored
(teacher-forced perplexity) on another. The dense run of the same code is the reference.

The speed side comes from the kernel benchmark: skipping input columns needs each column
contiguous, i.e. an AXPY over transposed weights; bench/results/kernels.json gives its cost per
byte against the dense rows8 kernel, hence the break-even sparsity printed at the end.
Writes bench/results/teal.json.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

from pi_backend.bench import DEFAULT_TEXT

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "data")
SITES = ("qkv", "o", "gate_up", "down")  # the inputs TEAL sparsifies


def load_weights(path: str, arch_wanted: str = "llama", who: str = "bench.teal") -> tuple[dict, dict]:
    """(hyperparameters, {name: float32 array in numpy shape}) from a GGUF file of architecture
    arch_wanted (llama-family: llama, qwen2)."""
    import gguf
    r = gguf.GGUFReader(path)
    f = {k: v.contents() for k, v in r.fields.items()
         if not k.startswith("tokenizer.") and not k.startswith("GGUF.")}
    arch = f["general.architecture"]
    if arch != arch_wanted:
        raise SystemExit(f"{who}: {arch_wanted} architecture only, not {arch}")
    hp = {"n_layer": f[f"{arch}.block_count"], "n_head": f[f"{arch}.attention.head_count"],
          "n_head_kv": f[f"{arch}.attention.head_count_kv"],
          "eps": f[f"{arch}.attention.layer_norm_rms_epsilon"],
          "base": f.get(f"{arch}.rope.freq_base", 10000.0), "neox": arch == "qwen2"}
    w = {}
    for t in r.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type)
        w[t.name] = np.ascontiguousarray(
            np.asarray(a, dtype=np.float32).reshape([int(v) for v in reversed(t.shape)]))
    return hp, w


def rope(x: np.ndarray, base: float, neox: bool = False) -> np.ndarray:
    """RoPE on x [T, heads, hd] at positions 0..T-1: adjacent pairs (llama), or the two halves
    (NeoX: qwen2), in x's precision."""
    T, _, hd = x.shape
    half = hd // 2
    inv = base ** (-np.arange(0, half, dtype=np.float64) * 2.0 / hd)
    ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]
    c, s = np.cos(ang)[:, None, :].astype(x.dtype), np.sin(ang)[:, None, :].astype(x.dtype)
    if neox:
        x0, x1 = x[..., :half], x[..., half:]
        return np.concatenate([x0 * c - x1 * s, x1 * c + x0 * s], axis=-1)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * c - x1 * s
    out[..., 1::2] = x0 * s + x1 * c
    return out


def forward(hp: dict, w: dict, ids: np.ndarray, thr: dict | None = None,
            record: dict | None = None, ffn=None, dtype=np.float64) -> np.ndarray:
    """Logits [T, n_vocab] of token ids (a llama-family model from load_weights: q/k/v biases
    where the file has them, NeoX RoPE for qwen2), computed in dtype. thr[(layer, site)]: inputs
    with |x| <= thr are dropped; record[(layer, site)] collects |input| samples for calibration;
    ffn(layer, a, h) -> h: sees the down input h = a * up (a = silu(gate)) and may change it."""
    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + hp["eps"]) * g

    def site(x, il, name):
        if record is not None:
            record.setdefault((il, name), []).append(np.abs(x).ravel())
        if thr is not None:
            x = np.where(np.abs(x) > thr[(il, name)], x, 0.0)
        return x

    def proj(x, name):
        y = x @ w[name + ".weight"].T
        b = w.get(name + ".bias")
        return y if b is None else y + b

    neox = hp.get("neox", False)
    x = w["token_embd.weight"][ids].astype(dtype)
    T = len(ids)
    H, Hkv = hp["n_head"], hp["n_head_kv"]
    mask = np.triu(np.full((T, T), -np.inf, dtype), 1)
    for il in range(hp["n_layer"]):
        p = f"blk.{il}."
        xn = site(rms(x, w[p + "attn_norm.weight"]), il, "qkv")
        q, k, v = proj(xn, p + "attn_q"), proj(xn, p + "attn_k"), proj(xn, p + "attn_v")
        hd = q.shape[1] // H
        q = rope(q.reshape(T, H, hd), hp["base"], neox)
        k = rope(k.reshape(T, Hkv, hd), hp["base"], neox)
        v = v.reshape(T, Hkv, hd)
        rep = H // Hkv
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        s = np.einsum("thd,shd->hts", q, k) / np.asarray(np.sqrt(hd), dtype) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        att = np.einsum("hts,shd->thd", s, v).reshape(T, H * hd)
        x = x + site(att, il, "o") @ w[p + "attn_output.weight"].T
        xn = site(rms(x, w[p + "ffn_norm.weight"]), il, "gate_up")
        g, u = xn @ w[p + "ffn_gate.weight"].T, xn @ w[p + "ffn_up.weight"].T
        a = g / (1.0 + np.exp(-g))
        h = a * u
        if ffn is not None:
            h = ffn(il, a, h)
        x = x + site(h, il, "down") @ w[p + "ffn_down.weight"].T
    out = w.get("output.weight", w["token_embd.weight"])
    return rms(x, w["output_norm.weight"]) @ out.T


def nll_tokens(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Each next token's negative log-likelihood [T - 1] (in float64)."""
    lg = logits[:-1].astype(np.float64)
    m = lg.max(-1)
    lse = np.log(np.exp(lg - m[:, None]).sum(-1)) + m
    return lse - lg[np.arange(len(ids) - 1), ids[1:]]


def nll(logits: np.ndarray, ids: np.ndarray) -> float:
    return float(np.mean(nll_tokens(logits, ids)))


def break_even(kernels_json: str) -> dict | None:
    """Per weight type: the input sparsity above which a transposed AXPY (the only layout that
    skips input columns contiguously) reads its weights faster than the dense rows8 kernel."""
    if not os.path.exists(kernels_json):
        return None
    rep = json.load(open(kernels_json))
    out = {}
    for th, per in rep["threads"].items():
        for t, r in per["types"].items():
            if "rows8_s" not in r:
                continue
            full = next(s for s in r["sparse"] if s["fraction"] == 1.0)
            out[f"{t}, {th} thread(s)"] = 1.0 - r["rows8_s"] / full["axpy_s"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", help="llama GGUF (default: the embedded SmolLM2 Q4_1)")
    ap.add_argument("--levels", default="0.25,0.4,0.5")
    ap.add_argument("--calib", default=os.path.join(DATA, "calib.txt"))
    ap.add_argument("--text", default=str(DEFAULT_TEXT))
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args(argv)
    from pi_backend.default_model import source_path
    from pi_backend.tokenizer import Tokenizer
    path = args.model or str(source_path())
    tok = Tokenizer(path)
    calib = np.array(tok.tokenize(open(args.calib).read().encode(), add_bos=False))
    text = np.array(tok.tokenize(open(args.text).read().encode(), add_bos=False))
    tok.close()
    hp, w = load_weights(path)
    rec: dict = {}
    forward(hp, w, calib, record=rec)
    dense = nll(forward(hp, w, text), text)
    rows = [{"sparsity": 0.0, "ppl": float(np.exp(dense)), "ppl_increase_pct": 0.0}]
    for lvl in [float(s) for s in args.levels.split(",")]:
        thr = {key: float(np.quantile(np.concatenate(v), lvl)) for key, v in rec.items()}
        ppl = float(np.exp(nll(forward(hp, w, text, thr=thr), text)))
        rows.append({"sparsity": lvl, "ppl": ppl, "ppl_increase_pct": 100 * (ppl / rows[0]["ppl"] - 1)})
    be = break_even(os.path.join(args.out, "kernels.json"))
    print(f"TEAL input sparsity on {os.path.basename(path)}: {len(calib)} calibration tokens, "
          f"{len(text)} scored tokens, uniform per-layer thresholds on every projection input")
    print(f"{'sparsity':>8} {'perplexity':>10} {'increase':>9}")
    for r in rows:
        print(f"{r['sparsity']:8.0%} {r['ppl']:10.3f} {r['ppl_increase_pct']:+8.2f}%")
    if be:
        print("break-even input sparsity (transposed AXPY vs dense rows8, from kernels.json):")
        for k, v in be.items():
            print(f"  {k}: {v:.0%}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "teal.json"), "w") as f:
        json.dump({"model": os.path.basename(path), "rows": rows, "break_even": be,
                   "calib_tokens": len(calib), "scored_tokens": len(text)}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

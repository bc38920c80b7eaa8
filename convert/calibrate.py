"""Threshold-mode calibration of gated FFNs with a smooth activation (SwiGLU: silu, GeGLU:
gelu_tanh): per-layer thresholds on |act(gate)| (the CATS criterion), stored as `pi.thresholds`
with `pi.sparse_mode = "threshold"`. act is the engine's own (pi_backend.kernels.activation).

The fit of the calibration pipeline (calibration.py) for these models (`calibrate()`):

1. Windows (calibration.py): a text file, or text the model writes itself; split into a
   *record* set and a *held-out* set.
2. The recorded sample (calibration.py `record`): gate pre-activations (and, for the greedy
   allocation, the down input h = act(gate)*up) at a random sample of positions of the record
   set (memory bounded by --calib-positions, not by the text length).
3. Thresholds:
   * `sparsity=S`: every layer gets the S-quantile of its |act(gate)| (uniform CATS);
   * `ppl_budget=B` (default 0.02): TEAL-style greedy per-layer allocation. Start with 0 sparsity
     everywhere and repeatedly raise, by one step (5%), the sparsity of the layer whose raise
     costs least, until the held-out perplexity increase reaches the budget. The cost of a raise
     is the KL divergence it adds on the held-out tokens. To keep this to a few minutes, the
     cost is modelled per layer as KL_l(s) = a_l * E_l(s): E_l(s) is the mean squared error the
     dropped neurons cause in that layer's FFN output (numpy, from the recorded h and the
     file's ffn_down_t, for every step s at once), and a_l is measured with the engine in
     threshold mode (layer l alone at a probe sparsity, KL against dense on the held-out
     tokens). The greedy path is then checked with the engine itself (all layers at once): a
     bisection over the path finds the last allocation whose measured perplexity increase is
     within the budget (held to HELDOUT_MARGIN of it: a margin for text unlike the held-out).
4. A per-layer report (`layer_report`) measures, in threshold mode, the sparsity each layer
   really has on held-out tokens.
5. The result's `metadata()` is what the pipeline's one rewrite (calibration.py `rewrite`) sets.

`convert_and_calibrate_source()` is the pi-convert --calibrate flow: convert to a temporary
split file, calibrate on it, rewrite it with the calibration keys into the output.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List

import numpy as np

from pi_backend import format as F
from pi_backend._cli import progress_bar
from pi_backend.kernels import activation
from pi_backend.format import Keys, T, layer_name

from .calibration import calibration_windows, first_pass, record, rewrite, split_heldout
from .model import ConvertError

DEFAULT_BUDGET = 0.02
# The greedy allocation holds the held-out cost to this share of the budget: the held-out tokens
# are few (128) and, when self-generated, easier than human text. On SmolLM2-135M an allocation
# measured at +1.66% on them cost +2.19% on tests/data/prose.txt and +2.76% on a Shakespeare play.
HELDOUT_MARGIN = 0.5
DEFAULT_STEP = 0.05
MAX_LEVEL = 0.90


@dataclass
class CalibConfig:
    text_file: str | None = None     # None: self-generated text
    n_tokens: int = 512              # calibration tokens in all (record + held-out)
    n_heldout: int = 128             # of which held out for costs and the report
    seq_len: int = 128               # tokens per sequence (BOS included) for a text file
    positions: int = 256             # sampled positions kept for quantiles / local errors
    sparsity: float | None = None    # uniform target; None: greedy within ppl_budget
    ppl_budget: float = DEFAULT_BUDGET
    step: float = DEFAULT_STEP
    probe: float = 0.25              # sparsity of the per-layer KL probes
    probe_tokens: int = 64           # held-out tokens scored per probe
    n_threads: int = 1
    seed: int = 0
    progress: bool = False


@dataclass
class ThresholdFit:
    thresholds: np.ndarray           # [n_layer] f32
    targets: np.ndarray              # [n_layer] target sparsity per layer
    method: str                      # "uniform" or "greedy"
    source: str                      # where the calibration text came from
    n_tokens: int
    n_heldout: int
    heldout_sparsity: float          # measured by the engine (all layers)
    heldout_kl: float
    heldout_ppl_increase: float      # exp(mean NLL(thr) - mean NLL(dense)) - 1
    ppl_budget: float | None = None
    activation: str = F.ACT_SILU     # the FFN activation the thresholds apply to
    seconds: float = 0.0
    n_evals: int = 0
    path: list = field(default_factory=list)   # greedy: the engine checks along the path
    heldout_seqs: list = field(default_factory=list, repr=False)
    report_rows: list = field(default_factory=list, repr=False)   # layer_report() on held-out

    def report(self) -> str:
        return format_report(self.report_rows)

    def summary(self) -> str:
        how = (f"uniform {self.targets.mean():.0%}" if self.method == "uniform" else
               f"greedy per-layer allocation within a {self.ppl_budget:.1%} perplexity budget "
               f"(held to {HELDOUT_MARGIN:.0%} of it on the held-out tokens)")
        return (f"threshold mode, |{self.activation}(gate)| (CATS), {how}; calibrated on "
                f"{self.n_tokens} tokens of {self.source}; on {self.n_heldout} held-out tokens: "
                f"sparsity {self.heldout_sparsity:.3f}, perplexity "
                f"{100 * self.heldout_ppl_increase:+.2f}%, KL {self.heldout_kl:.4f}")

    def metadata(self) -> dict:
        return {Keys.SPARSE_MODE: F.FFN_THRESHOLD,
                Keys.THRESHOLDS: [float(x) for x in self.thresholds],
                Keys.CALIBRATION: self.summary()}


_SMOOTH_ONLY = ("threshold calibration is for gated FFNs with a smooth activation (silu, "
                "gelu_tanh); ")


# ---- the fit ----------------------------------------------------------------------------
def quantile_thresholds(a: List[np.ndarray], sparsity) -> np.ndarray:
    """Per-layer thresholds at the given sparsity (scalar or per layer): the quantile of the
    layer's |act(gate)| samples; 0 where the sparsity is 0."""
    L = len(a)
    s = np.broadcast_to(np.asarray(sparsity, dtype=np.float64), (L,))
    thr = np.zeros(L, dtype=np.float32)
    for il in range(L):
        if s[il] > 0:
            thr[il] = np.quantile(a[il], min(float(s[il]), 1.0))
    return thr


# ---- held-out evaluation -----------------------------------------------------------------------
class Evaluator:
    """Scores the held-out sequences in threshold mode against cached dense log-probs."""

    def __init__(self, model, seqs: List[np.ndarray], n_threads: int = 1):
        from pi_backend.perplexity import log_softmax, nll
        self.model = model
        self.seqs = seqs
        n_ctx = max(len(s) for s in seqs)
        self.ctx = model.new_context(n_ctx=n_ctx, n_threads=n_threads, n_batch=n_ctx,
                                     ffn_mode=F.FFN_DENSE)
        self.ref = []          # (logp, p) per sequence
        self.dense_nll = 0.0
        self.n = sum(len(s) - 1 for s in seqs)
        for s in seqs:
            lp = log_softmax(self.ctx.eval(s, 0, logits_all=True)[:-1])
            self.dense_nll += nll(lp, s[1:]).sum()
            self.ref.append((lp, np.exp(lp)))
        self.dense_nll /= self.n
        self.ctx.set_ffn_mode(F.FFN_THRESHOLD)
        self.n_evals = 0

    def __call__(self, thresholds, max_tokens: int | None = None) -> dict:
        """KL(dense || threshold) per token, perplexity increase and sparsity at `thresholds`,
        on the first max_tokens scored tokens (default: all; a prefix of a sequence has the
        same dense logits as the whole, so the cached reference serves)."""
        from pi_backend.perplexity import log_softmax, nll
        self.model.set_thresholds(thresholds)
        self.ctx.reset_stats()
        kl = s_nll = d_nll_ref = 0.0
        n = 0
        left = self.n if max_tokens is None else max(1, int(max_tokens))
        for s, (lp_d, p_d) in zip(self.seqs, self.ref):
            if left <= 0:
                break
            k = min(len(s) - 1, left)
            s = s[:k + 1]
            lp = log_softmax(self.ctx.eval(s, 0, logits_all=True)[:-1])
            kl += float(np.maximum((p_d[:k] * (lp_d[:k] - lp)).sum(axis=-1), 0.0).sum())
            s_nll += nll(lp, s[1:]).sum()
            d_nll_ref += nll(lp_d[:k], s[1:]).sum()
            n += k
            left -= k
        st = self.ctx.stats()
        self.n_evals += 1
        d_nll = (s_nll - d_nll_ref) / n
        return {"kl": kl / n, "d_nll": d_nll, "ppl_increase": math.expm1(d_nll),
                "sparsity": st["ffn_sparsity"]}

    def close(self):
        self.ctx.close()


def budget_cost(m: dict) -> float:
    """The quantity held to the budget: the measured log-perplexity increase, but never less
    than the KL (on few tokens the NLL difference is noisy and can even be negative, while the
    KL is its smooth expectation when the text comes from the model)."""
    return max(m["d_nll"], m["kl"])


# ---- greedy allocation -------------------------------------------------------------------------
def down_rows(model, il: int) -> np.ndarray:
    """ffn_down_t of layer il as float32 [n_ff, d] (dequantized from the file)."""
    from gguf import GGMLQuantizationType as QT
    from gguf.quants import dequantize
    name = layer_name(il, T.FFN_DOWN_T)
    try:
        ty, a = model.tensor(name)
    except KeyError:
        ty = None
    if ty is not None:
        qt = QT(ty)
        a = np.asarray(a)
        if qt in (QT.F32, QT.F16):
            return np.asarray(a, dtype=np.float32).reshape(model.n_ff, model.n_embd)
        return dequantize(a, qt).reshape(model.n_ff, model.n_embd).astype(np.float32)
    raise ConvertError(f"{model.path}: no tensor {name} (not a split pi_backend file?)")


def local_errors(model, a: List[np.ndarray], h: List[np.ndarray], levels: np.ndarray,
                 progress: bool = False, max_positions: int = 64):
    """(thr [L, K], err [L, K]): per layer and sparsity level, the threshold (quantile of
    |act(gate)|) and the mean squared error of the FFN output when the neurons under it are
    dropped, err = mean_t ||sum_{i dropped} h_ti * down_t[i]||^2."""
    L, K = len(a), len(levels)
    thr = np.zeros((L, K), np.float32)
    err = np.zeros((L, K), np.float64)
    bar = progress_bar(progress, L, "layer errors", "layer")
    try:
        for il in range(L):
            W = down_rows(model, il)
            thr[il] = np.quantile(a[il], levels).astype(np.float32)
            thr[il, levels <= 0] = 0.0
            # neurons sorted by |act(gate)| per position: dropping level k = the ones under thr
            hl, al = h[il][:max_positions], a[il][:max_positions]   # positions are random
            for k in range(1, K):
                hm = np.where(al <= thr[il, k], hl, 0.0).astype(np.float32)
                d = hm @ W
                err[il, k] = float(np.mean(np.sum(d.astype(np.float64) ** 2, axis=1)))
            bar.update(1)
    finally:
        bar.close()
    return thr, err


def greedy_path(cost: np.ndarray, max_cost: float) -> List[np.ndarray]:
    """TEAL-style greedy over a per-layer cost table cost [L, K] (cost[:, 0] = 0, K levels):
    from level 0 everywhere, repeatedly raise the layer whose next level adds the least cost.
    Returns the allocations (level index per layer) after each raise, until the summed cost
    passes max_cost or every layer is at the top level."""
    L, K = cost.shape
    # costs must not fall with sparsity; a falling estimate would be picked greedily for free
    c = np.maximum.accumulate(cost, axis=1)
    k = np.zeros(L, dtype=np.int64)
    path = [k.copy()]
    total = 0.0
    while True:
        inc = np.full(L, np.inf)
        m = k < K - 1
        inc[m] = c[np.where(m)[0], k[m] + 1] - c[np.where(m)[0], k[m]]
        il = int(np.argmin(inc))
        if not np.isfinite(inc[il]):
            break
        total += inc[il]
        k[il] += 1
        path.append(k.copy())
        if total > max_cost:
            break
    return path


def greedy_allocation(model, a, h, ev: Evaluator, budget: float, step: float, probe: float,
                      progress: bool = False, log: Callable[[str], None] | None = None,
                      max_checks: int = 10, probe_tokens: int | None = 64):
    """Per-layer sparsity within `budget` (relative perplexity increase); returns (thresholds,
    targets, checks)."""
    levels = np.round(np.arange(0.0, MAX_LEVEL + 1e-9, step), 6)
    L = model.n_layer
    thr, err = local_errors(model, a, h, levels, progress)
    kp = int(np.argmin(np.abs(levels - probe)))
    kp = max(kp, 1)
    # per-layer scale: KL of layer l alone at the probe level / its local error there
    scale = np.zeros(L)
    bar = progress_bar(progress, L, "layer sensitivity", "layer")
    try:
        for il in range(L):
            t = np.zeros(L, np.float32)
            t[il] = thr[il, kp]
            kl = ev(t, probe_tokens)["kl"]
            scale[il] = kl / err[il, kp] if err[il, kp] > 0 else 0.0
            bar.update(1)
    finally:
        bar.close()
    if not np.any(scale > 0):
        scale[:] = 1.0
    scale[scale <= 0] = scale[scale > 0].min()
    cost = scale[:, None] * err                         # predicted KL per layer and level
    target = HELDOUT_MARGIN * math.log1p(budget)
    path = greedy_path(cost, max_cost=8.0 * target)

    def thr_of(i):
        kk = path[i]
        return thr[np.arange(L), kk]

    # predicted KL along the path (the additive model)
    rows = np.arange(L)
    pred = np.array([cost[rows, kk].sum() for kk in path])
    # bisection over the path with the engine: the last allocation within the budget
    checks = []
    lo, hi = 0, len(path) - 1
    measured = {}

    def check(i):
        if i not in measured:
            m = ev(thr_of(i))
            measured[i] = m
            checks.append({"step": i, "target": float(levels[path[i]].mean()),
                           "predicted_kl": float(pred[i]), **m})
            if log:
                log(f"  path step {i:4d}: mean target {levels[path[i]].mean():.3f}, sparsity "
                    f"{m['sparsity']:.3f}, KL {m['kl']:.4f} (predicted {pred[i]:.4f}), "
                    f"ppl {100 * m['ppl_increase']:+.2f}%")
        return budget_cost(measured[i]) <= target

    # regula falsi on the measured cost along the path (it rises smoothly with the step index),
    # with a bisection whenever the same end of the bracket moved twice in a row
    cost_at = {0: 0.0}
    if check(hi):
        lo = hi
    else:
        cost_at[hi] = budget_cost(measured[hi])
        g = int(np.searchsorted(pred, target)) - 1   # first guess: the model's own answer
        last = None
        while hi - lo > 1 and len(checks) < max_checks:
            if g is None:
                if last is not None and last[0] == last[1]:
                    g = (lo + hi) // 2
                else:
                    c_lo, c_hi = cost_at[lo], cost_at[hi]
                    f = (target - c_lo) / (c_hi - c_lo) if c_hi > c_lo else 0.5
                    g = lo + int(round(f * (hi - lo)))
            g = min(max(g, lo + 1), hi - 1)
            ok = check(g)
            cost_at[g] = budget_cost(measured[g])
            moved = "lo" if ok else "hi"
            if ok:
                lo = g
            else:
                hi = g
            last = (moved, last[0] if last else None)
            g = None
    return thr_of(lo), levels[path[lo]], checks


# ---- the whole calibration ---------------------------------------------------------------------
def calibrate(model, cfg: CalibConfig, log: Callable[[str], None] | None = None,
              outfile: str | Path | None = None) -> ThresholdFit:
    """Calibrate the thresholds of a split file with a smooth gated FFN (silu, gelu_tanh):
    `model` is its path or an open
    pi_backend.model.Model (left open, with the calibrated thresholds set). The file itself is
    not modified; with `outfile`, a copy with the calibration keys is written there. The
    per-layer report on the held-out tokens is in the result's `report_rows`."""
    from pi_backend.model import Model
    from pi_backend.tokenizer import Tokenizer
    t0 = time.perf_counter()
    if cfg.sparsity is not None and not 0.0 <= cfg.sparsity < 1.0:
        raise ConvertError(f"--sparsity must be in [0, 1), got {cfg.sparsity}")
    if cfg.sparsity is None and not cfg.ppl_budget > 0:
        raise ConvertError(f"--ppl-budget must be positive, got {cfg.ppl_budget}")
    if cfg.n_tokens < 32:
        raise ConvertError(f"--calib-tokens must be at least 32, got {cfg.n_tokens}")
    own = not isinstance(model, Model)
    model = Model(str(model)) if own else model
    model_path = model.path
    tok = None
    try:
        if model.ffn_activation == F.ACT_RELU:
            raise ConvertError(_SMOOTH_ONLY + "this file's FFN is relu (its predictors are "
                               "trained instead)")
        if F.FFN_THRESHOLD not in model.ffn_modes:
            raise ConvertError(f"{model_path}: threshold mode needs a split file (ffn_down_t)")
        tok = Tokenizer(str(model_path))
        seqs, source = calibration_windows(model, tok, cfg.text_file or None, cfg.n_tokens,
                                           cfg.seq_len, cfg.seed, cfg.n_threads, cfg.progress)
        n_tok = sum(len(s) for s in seqs)
        if n_tok < 32 or len(seqs) == 0:
            raise ConvertError(f"too little calibration text: {n_tok} tokens (need 32)")
        rec, held = split_heldout(seqs, cfg.n_heldout)
        greedy = cfg.sparsity is None
        sample = record(model, rec, cfg.positions, ("gate", "h") if greedy else ("gate",),
                        seed=cfg.seed, n_threads=cfg.n_threads, progress=cfg.progress)
        a = [np.abs(activation(model.ffn_activation, sample.gate[:, il]))
             for il in range(model.n_layer)]
        h = [sample.h[:, il] for il in range(model.n_layer)] if greedy else None
        del sample
        ev = Evaluator(model, held, cfg.n_threads)
        try:
            checks = []
            if greedy:
                thr, targets, checks = greedy_allocation(model, a, h, ev, cfg.ppl_budget,
                                                         cfg.step, cfg.probe, cfg.progress, log,
                                                         probe_tokens=cfg.probe_tokens)
            else:
                targets = np.full(model.n_layer, cfg.sparsity)
                thr = quantile_thresholds(a, targets)
            m = ev(thr)
            n_evals = ev.n_evals
        finally:
            ev.close()
        thr = np.asarray(thr, np.float32)
        rows = layer_report(model, thr, held, cfg.n_threads, targets)   # sets thr on the model
        cal = ThresholdFit(
            thresholds=thr, targets=np.asarray(targets, np.float64),
            method="greedy" if greedy else "uniform", source=source, n_tokens=n_tok,
            n_heldout=ev.n, heldout_sparsity=m["sparsity"], heldout_kl=m["kl"],
            heldout_ppl_increase=m["ppl_increase"],
            ppl_budget=cfg.ppl_budget if greedy else None,
            seconds=time.perf_counter() - t0, n_evals=n_evals, path=checks, heldout_seqs=held,
            report_rows=rows, activation=model.ffn_activation)
        if outfile is not None:
            rewrite(model_path, outfile, cal.metadata())
        return cal
    finally:
        if tok is not None:
            tok.close()
        if own:
            model.close()


# ---- per-layer report --------------------------------------------------------------------------
def layer_report(model, thresholds, seqs: List[np.ndarray], n_threads: int = 1,
                 targets=None) -> List[dict]:
    """Per layer: threshold, target sparsity (when given) and the true sparsity in threshold
    mode on `seqs` (share of neurons with |act(gate)| <= threshold, gates recorded while the
    engine runs sparse), plus the engine's own overall count as a row with layer = 'all'."""
    model.set_thresholds(thresholds)
    L, n_ff = model.n_layer, model.n_ff
    n_ctx = max(len(s) for s in seqs)
    ctx = model.new_context(n_ctx=n_ctx, n_threads=n_threads, n_batch=n_ctx,
                            ffn_mode=F.FFN_THRESHOLD)
    dropped = np.zeros(L, np.int64)
    n = 0
    try:
        for s in seqs:
            g = ctx.record(s, 0, ffn_in=False, gate=True, h=False)["gate"]   # [n, L, n_ff]
            a = np.abs(activation(model.ffn_activation, g))
            thr = np.asarray(thresholds, np.float32)
            for il in range(L):
                if thr[il] > 0:
                    dropped[il] += int(np.count_nonzero(a[:, il] <= thr[il]))
            n += len(s)
        st = ctx.stats()
    finally:
        ctx.close()
    rows = []
    for il in range(L):
        rows.append({"layer": il, "threshold": float(thresholds[il]),
                     "target": None if targets is None else float(targets[il]),
                     "sparsity": dropped[il] / (n * n_ff)})
    rows.append({"layer": "all", "threshold": None,
                 "target": None if targets is None else float(np.mean(targets)),
                 "sparsity": st["ffn_sparsity"]})
    return rows


def format_report(rows: List[dict]) -> str:
    lines = ["layer  threshold   target  sparsity"]
    for r in rows:
        thr = "" if r["threshold"] is None else f"{r['threshold']:.5f}"
        tgt = "" if r["target"] is None else f"{r['target']:.2f}"
        lines.append(f"{str(r['layer']):>5}  {thr:>9}  {tgt:>7}  {r['sparsity']:8.3f}")
    return "\n".join(lines)


def convert_and_calibrate_source(src, outfile, outtype: str = "f16", text_file=None,
                                 calib_tokens: int | None = None, sparsity: float | None = None,
                                 ppl_budget: float | None = None, seed: int = 0,
                                 n_threads: int | None = None, progress: bool = False,
                                 t0: float | None = None, relu_only: bool = False,
                                 keep_down: bool = False, down_type: str | None = None):
    """pi-convert --calibrate for a source with a smooth gated FFN (silu, gelu_tanh; an open
    converter source): write a temporary
    split file, calibrate its thresholds with our engine, and write the output with
    pi.thresholds / pi.sparse_mode / pi.calibration (tmp + os.replace). Returns the converter's
    Summary with the calibration summary and per-layer report in `.report` and the
    ThresholdFit in `.calibration`."""
    t0 = time.perf_counter() if t0 is None else t0
    hp = src.hparams
    if hp.activation == F.ACT_RELU:
        raise ConvertError(_SMOOTH_ONLY + "this model's FFN is relu")
    if relu_only:
        raise ConvertError("--train-predictors and --reorder are for ReLU models; a SwiGLU "
                           "model is calibrated for threshold mode")
    if sparsity is not None and ppl_budget is not None:
        raise ConvertError("give --sparsity or --ppl-budget, not both")
    if text_file is not None and not Path(text_file).is_file():
        raise ConvertError(f"calibration text {text_file} does not exist or is not a file")
    from pi_backend.kernels import default_threads
    cfg = CalibConfig(text_file=None if text_file is None else str(text_file),
                      n_tokens=calib_tokens or CalibConfig.n_tokens, sparsity=sparsity,
                      ppl_budget=DEFAULT_BUDGET if ppl_budget is None else ppl_budget,
                      n_threads=n_threads or default_threads(), seed=seed, progress=progress)
    cfg.n_heldout = min(cfg.n_heldout, max(16, cfg.n_tokens // 4))
    out = Path(outfile)
    with first_pass(src, out, outtype, progress, t0, keep_down, down_type) as (split, summary):
        cal = calibrate(split, cfg, outfile=out)
    summary.outfile = out
    summary.nbytes = out.stat().st_size
    summary.seconds = time.perf_counter() - t0
    summary.report = (f"calibration {cal.summary()}; {cal.n_evals} engine evaluations, "
                      f"{cal.seconds:.0f} s\n" + cal.report())
    summary.calibration = cal
    return summary

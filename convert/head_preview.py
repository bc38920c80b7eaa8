"""The output preview of the sparse head (docs/FORMAT.md "Output preview"): a data-aware low-rank
approximation of the output matrix W [n_vocab][d] that picks the rows each token needs.

1. Final hidden states h (the output norm's output) over calibration text: the dense engine's
   logits l = W h of every position, solved for h by least squares against the head as stored
   (W has full column rank: the solution is the h the engine multiplied).
2. C = E[h h^T] over the record set; the SVD of W C^1/2 = U S V^T; rank r keeps
   B = U_r S_r [n_vocab][r] and A = V_r^T C^-1/2 [r][d], so B (A h) ~ W h where h lives.
   A plain SVD of W picks the true top-1 far less often: the whitening by C is the point.
   A carries PROBE more rows, the next right singular directions: the length of h's
   coordinates along them (the probe) measures how much of h the preview misses, which is
   what its errors grow with.
3. Both factors are stored q8_0 (r a multiple of 32); the preview is evaluated as stored.
4. On held-out positions, for each rank and candidate count N: the candidates are the rows of
   the N largest preview values; recall = the share of positions whose true top-1 (and of the
   true top-40) is among them; KL = the mean KL divergence of the sparse head's distribution
   from the dense one as default sampling draws from it (`sampling_kl`). The smallest expected
   bytes per token among the settings that reach the recall target and MAX_KL is kept (the
   fallback's full head counted at its rate), on the held-out positions and on text of another
   domain (the package's prose sample) alike: a preview fitted to the model's own answers
   alone, chosen on them alone, missed MAX_KL on prose by 4x.
5. The margin: the engine falls back to the full head when the best exact logit is less than
   window + margin * probe above the N-th largest preview value. For each window (WINDOWS: a
   window near min-p's catches the positions where a logit sampling still draws from may be
   missing) the margin is the smallest under which default sampling's KL stays within KL_FIT and
   greedy decoding equals dense on at least `agreement` of the held-out positions and of the
   other domain's. (A margin
   in logits alone, without the probe, sends half the positions to the full head for the
   same agreement on SmolLM2.)
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from pi_backend import format as F
from pi_backend.format import Keys, T

from .model import ConvertError

RANKS = (64, 128)                 # q8_0 rows: multiples of 32
CANDIDATES = (512, 1024, 2048, 4096, 8192)
GATHER_COST = 3.0                 # a gathered row's bytes cost this many sequential ones: on
                                  # SmolLM2 (612-byte rows) 8192 candidates took half the time
                                  # of the whole 49152-row head (perf, quiet 2-core EPYC)
TARGET_RECALL = 0.995             # share of held-out positions whose top-1 is a candidate
AGREEMENT = 0.999                 # greedy equals dense on this share of held-out positions
MAX_KL = 1e-3                     # mean KL of default sampling's renormalised distribution
MIN_P = 0.05                      # default sampling (llama.cpp's chain): top-k 40, top-p 0.95,
TEMPERATURE = 0.8                 # min-p 0.05, then temperature 0.8
N_TOKENS = 2048                   # calibration tokens (record set and held-out together)
N_HELDOUT = 512
SEQ_LEN = 128
TOP_K = 40
WINDOWS = (0.0, 1.5, 3.0)         # fallback windows tried (logits; 3.0 ~ -ln(MIN_P))
KL_FIT = MAX_KL / 2               # the margin holds sampling KL to this on the fitting text
PROBE = 32                        # probe rows of output_preview_a


@dataclass
class Setting:
    """One (rank, N) on the held-out positions."""
    rank: int
    n_candidates: int
    window: float         # logits the best exact one must clear the cut by, besides the margin
    recall1: float        # true top-1 among the candidates' groups
    recall40: float       # share of the true top-40 among them
    margin: float
    fallback: float       # share of positions the margin sends to the full head
    agreement: float      # greedy equals dense, with the fallback
    kl: float             # mean KL(dense || sparse) of default sampling's distribution (sampling_kl)
    exact_rows: float     # mean rows computed exactly (the candidates' groups)
    bytes: float          # expected head bytes per token (gathered rows weighted by GATHER_COST)


@dataclass
class HeadPreview:
    a: np.ndarray                 # [r][d] f32, as stored (dequantized q8_0)
    b: np.ndarray                 # [n_vocab][r]
    a_q: np.ndarray               # q8_0 bytes
    b_q: np.ndarray
    chosen: Setting
    settings: list[Setting]
    source: str
    n_record: int
    n_heldout: int
    domain: Setting | None = None  # the chosen setting on text of another domain
    domain_name: str = ""
    seconds: float = 0.0
    table: list[str] = field(default_factory=list)

    def summary(self) -> str:
        c = self.chosen
        s = (f"rank {c.rank}, N {c.n_candidates}: top-1 recall {c.recall1:.4f}, top-40 "
             f"{c.recall40:.4f}, window {c.window:.1f}, margin {c.margin:.3f}, fallback {c.fallback:.3f}, greedy = "
             f"dense {c.agreement:.4f}, sampling KL {c.kl:.1e} on {self.n_heldout} held-out "
             f"positions ({self.source})")
        if self.domain is not None:
            d = self.domain
            s += (f"; on {self.domain_name}: top-1 recall {d.recall1:.4f}, top-40 "
                  f"{d.recall40:.4f}, fallback {d.fallback:.3f}, greedy = dense {d.agreement:.4f}, "
                  f"sampling KL {d.kl:.1e}")
        return s

    def report(self) -> str:
        lines = ["head preview (held-out positions)",
                 "rank      N  recall1  recall40  window  margin  fallback  agree  sampling KL  MB/token"]
        for s in self.settings:
            mark = " *" if s is self.chosen else ""
            lines.append(f"{s.rank:4d} {s.n_candidates:6d}  {s.recall1:7.4f}  {s.recall40:8.4f}  "
                         f"{s.window:6.1f}  {s.margin:6.3f}  {s.fallback:8.3f}  {s.agreement:5.3f}  "
                         f"{s.kl:11.1e}  {s.bytes / 1e6:8.2f}{mark}")
        return "\n".join(lines)

    def keys(self) -> dict:
        return {Keys.HEAD_CANDIDATES: int(self.chosen.n_candidates),
                Keys.HEAD_MARGIN: float(self.chosen.margin),
                Keys.HEAD_WINDOW: float(self.chosen.window), Keys.HEAD_RECALL: self.summary()}

    def tensors(self) -> list:
        from gguf import GGMLQuantizationType as QT
        return [(T.PREVIEW_A, self.a_q, QT.Q8_0), (T.PREVIEW_B, self.b_q, QT.Q8_0)]


# ---- the head and the hidden states ------------------------------------------------------------
def head_matrix(path: str | Path) -> tuple[np.ndarray, int]:
    """(W [n_vocab][d] f32 dequantized, bytes of one stored row) of a file's output matrix."""
    from pi_backend import kernels
    from pi_backend.model import read_gguf
    r = read_gguf(str(path))
    by_name = {t.name: t for t in r.tensors}
    t = by_name.get(T.OUTPUT) or by_name.get(T.TOKEN_EMBD)
    if t is None:
        raise ConvertError(f"{path}: no {T.OUTPUT} or {T.TOKEN_EMBD}")
    n_rows, d = int(t.shape[1]), int(t.shape[0])
    raw = np.asarray(t.data).view(np.uint8).reshape(n_rows, -1)
    return kernels.dequantize(int(t.tensor_type), raw, d), raw.shape[1]


def hidden_states(model, w: np.ndarray, seqs: Sequence[np.ndarray], n_threads: int = 1) -> np.ndarray:
    """h [n_pos][d] of every position of `seqs` (dense engine, full head), recovered from the
    logits l = W h by least squares over a stride of 8 d rows of W (full column rank: the
    solution is the h the engine multiplied, up to rounding; the whole head costs 10x more)."""
    V, d = w.shape
    rows = np.arange(0, V, max(1, V // (8 * d)))
    ws = w[rows].astype(np.float64)
    chol = np.linalg.cholesky(ws.T @ ws)
    n_ctx = max(len(s) for s in seqs)
    ctx = model.new_context(n_ctx=n_ctx, n_threads=n_threads, n_batch=n_ctx,
                            ffn_mode=F.FFN_DENSE, head_mode=F.HEAD_DENSE)
    hs = []
    try:
        for s in seqs:
            rhs = ws.T @ ctx.eval(s, 0, logits_all=True)[:, rows].T.astype(np.float64)  # [d][n]
            hs.append(np.linalg.solve(chol.T, np.linalg.solve(chol, rhs)).T.astype(np.float32))
    finally:
        ctx.close()
    return np.concatenate(hs)


# ---- the fit -----------------------------------------------------------------------------------
def q8_0(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(q8_0 bytes, the values they hold) of a float matrix."""
    from pi_backend import kernels
    q = kernels.quantize("q8_0", x)
    return q, kernels.dequantize("q8_0", q, x.shape[-1])


def whitened_svd(w: np.ndarray, gram: np.ndarray, h: np.ndarray, max_rank: int):
    """(B [n_vocab][max_rank], A [max_rank + PROBE][d]) from the SVD of M = W C^1/2, C = E[h h^T],
    through M^T M = C^1/2 (W^T W) C^1/2 (d x d; gram = W^T W): M = U S V^T, B = U_r S_r =
    M V_r, A = V_r^T C^-1/2."""
    c = (h.astype(np.float64).T @ h.astype(np.float64)) / len(h)
    lam, q = np.linalg.eigh(c)
    lam = np.maximum(lam, lam.max() * 1e-9)
    c_half = (q * np.sqrt(lam)) @ q.T
    c_inv_half = (q / np.sqrt(lam)) @ q.T
    s2, v = np.linalg.eigh(c_half @ gram @ c_half)
    v = v[:, np.argsort(s2)[::-1][:max_rank + PROBE]]        # the leading right singular vectors
    b = w @ (c_half @ v[:, :max_rank]).astype(np.float32)
    a = v.T @ c_inv_half
    return b.astype(np.float32), a.astype(np.float32)


@dataclass
class Positions:
    """One (rank, N) on a set of positions, before the fallback: what every window and margin
    is judged from."""
    best: np.ndarray      # [n] the best exact logit among the candidates
    cut: np.ndarray       # [n] the N-th largest preview value
    probe: np.ndarray     # [n] the probe lengths
    hit1: np.ndarray      # [n] the true top-1 is a candidate
    kl: np.ndarray        # [n] sampling KL without the fallback
    recall40: float
    rows: float           # mean candidates a position


def positions(preview: np.ndarray, exact: np.ndarray, probe: np.ndarray, n_cand: int) -> Positions:
    """The candidates of preview logits [n][V] against the exact ones, and their probe lengths."""
    n, V = preview.shape
    cut = np.partition(preview, V - n_cand, axis=1)[:, V - n_cand]       # the N-th largest
    cand = preview >= cut[:, None]
    top = np.argpartition(-exact, TOP_K, axis=1)[:, :TOP_K]
    return Positions(best=np.where(cand, exact, -np.inf).max(axis=1), cut=cut, probe=probe,
                     hit1=cand[np.arange(n), np.argmax(exact, axis=1)],
                     kl=sampling_kl(exact, np.where(cand, exact, preview), top),
                     recall40=float(cand[np.arange(n)[:, None], top].mean()),
                     rows=float(cand.sum(axis=1).mean()))


def fit_margin(p: Positions, window: float, agreement: float = AGREEMENT,
               max_kl: float = KL_FIT) -> float:
    """The smallest margin under which greedy equals dense on `agreement` of the positions and
    default sampling's mean KL is at most max_kl: the positions of least gap fall back first."""
    gap = (p.best - p.cut - window) / p.probe
    order = np.argsort(gap)
    n = len(gap)
    wrong_left = (~p.hit1[order]).sum() - np.concatenate([[0], np.cumsum(~p.hit1[order])])
    kl_left = p.kl[order].sum() - np.concatenate([[0.0], np.cumsum(p.kl[order])])
    allowed = int(math.floor((1.0 - agreement) * n + 1e-9))
    k = int(np.argmax((wrong_left <= allowed) & (kl_left <= max_kl * n + 1e-12)))  # k fall back
    if k == 0:
        return 0.0
    g = float(gap[order[k - 1]])
    return max(0.0, g + 1e-3 * (1.0 + abs(g)))


def judge(p: Positions, window: float, margin: float):
    """(recall1, recall40, margin, fallback, agreement, KL, mean exact rows) of the sparse head
    with this window and margin on the positions."""
    fall = (p.best - p.cut - window) / p.probe < margin
    return (float(p.hit1.mean()), p.recall40, margin, float(fall.mean()),
            float(np.mean(p.hit1 | fall)), float(np.where(fall, 0.0, p.kl).mean()), p.rows)


def sampling_kl(exact: np.ndarray, approx: np.ndarray, top: np.ndarray | None = None,
                min_p: float = MIN_P, temperature: float = TEMPERATURE) -> np.ndarray:
    """KL(dense || approx) per position [n] of the distribution default sampling draws from:
    the dense logits' top-40 that pass min-p (probability >= min_p x the largest), renormalised
    at the temperature, both logit sets over that support (top-p only narrows it further).
    min_p 0 and temperature 1: the plain renormalised top-40."""
    rows = np.arange(len(exact))[:, None]
    if top is None:
        top = np.argpartition(-exact, TOP_K, axis=1)[:, :TOP_K]
    e = exact[rows, top].astype(np.float64)
    keep = e >= e.max(axis=1, keepdims=True) + (np.log(min_p) if min_p > 0 else -np.inf)

    def log_softmax(x):
        x = np.where(keep, x.astype(np.float64) / temperature, -np.inf)
        x = x - x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    p, q = log_softmax(e), log_softmax(approx[rows, top])
    with np.errstate(invalid="ignore"):   # -inf - -inf outside the support, dropped by where
        return np.sum(np.where(keep, np.exp(p) * (p - q), 0.0), axis=1)


def choose(settings: list[Setting], target: float, others: Sequence[Setting] = ()) -> Setting:
    """The setting of least expected bytes whose recall reaches `target` and whose sampling KL is
    at most MAX_KL, on the held-out positions and on the other domain's (`others`, one per
    setting); none: the least KL."""
    def worst(i, s):
        o = others[i] if i < len(others) else s
        return min(s.recall1, o.recall1), max(s.kl, o.kl)
    scored = [(s, *worst(i, s)) for i, s in enumerate(settings)]
    ok = [s for s, rec, kl in scored if rec >= target and kl <= MAX_KL]
    if ok:
        return min(ok, key=lambda s: s.bytes)
    return min(scored, key=lambda t: (t[2], -t[1], t[0].bytes))[0]


def fit(model_path: str | Path, model, seqs: Sequence[np.ndarray], held: Sequence[np.ndarray],
        source: str, n_threads: int = 1, ranks: Sequence[int] = RANKS,
        candidates: Sequence[int] = CANDIDATES, target: float = TARGET_RECALL,
        domain: Sequence[np.ndarray] | None = None, domain_name: str = "") -> HeadPreview:
    """The preview of `model` (an open Model of model_path) from windows `seqs` (record set),
    `held` (held-out) and `domain` (text of another domain): the margin and the choice hold on
    both of the latter."""
    t0 = time.perf_counter()
    w, row_bytes = head_matrix(model_path)
    V, d = w.shape
    bad = [r for r in ranks if r % 32 or r <= 0]
    if bad:
        raise ConvertError(f"head preview ranks {bad}: each must be a positive multiple of 32")
    ranks = [r for r in ranks if r + PROBE <= d] or ([(d - PROBE) // 32 * 32]
                                                     if d - PROBE >= 32 else [])
    if not ranks:
        raise ConvertError(f"the head preview needs d >= {32 + PROBE} (rank 32 and {PROBE} "
                           f"probe rows); this model's d is {d}")
    candidates = [n for n in candidates if n < V] or [max(1, V // 2)]
    gram = (w.T @ w).astype(np.float64)
    h = hidden_states(model, w, seqs, n_threads)
    sets = [hidden_states(model, w, held, n_threads)]              # held-out, then the domain
    if domain:
        sets.append(hidden_states(model, w, domain, n_threads))
    exact = [x @ w.T for x in sets]
    b_all, a_all = whitened_svd(w, gram, h, max(ranks))
    head = V * row_bytes
    settings, on_domain, stored = [], [], {}
    for r in ranks:
        a_q, a = q8_0(np.concatenate([a_all[:r], a_all[max(ranks):]]))   # rank r, then the probe
        b_q, b = q8_0(b_all[:, :r])
        stored[r] = (a, b, a_q, b_q)
        zs = [x @ a.T for x in sets]
        pvs = [(z[:, :r] @ b.T, np.linalg.norm(z[:, r:], axis=1)) for z in zs]
        for n in candidates:
            ps = [positions(pv, e, probe, n) for (pv, probe), e in zip(pvs, exact)]
            for window in WINDOWS:
                # one margin for every set: the largest any of them needs
                margin = max(fit_margin(p, window) for p in ps)
                stats = [judge(p, window, margin) for p in ps]
                cost = max(a_q.nbytes + b_q.nbytes + st[3] * head
                           + (1 - st[3]) * st[6] * row_bytes * GATHER_COST for st in stats)
                settings.append(Setting(r, n, window, *stats[0], cost))
                if domain:
                    on_domain.append(Setting(r, n, window, *stats[1], cost))
    chosen = choose(settings, target, on_domain)
    a, b, a_q, b_q = stored[chosen.rank]
    hp = HeadPreview(a=a, b=b, a_q=a_q, b_q=b_q, chosen=chosen, settings=settings, source=source,
                     n_record=len(h), n_heldout=len(sets[0]))
    if domain:
        hp.domain = on_domain[settings.index(chosen)]
        hp.domain_name = domain_name
    hp.seconds = time.perf_counter() - t0
    return hp


# ---- pi-convert --head-preview -----------------------------------------------------------------
def domain_windows(tok, n_tokens: int):
    """Text of another domain than the model's own answers: the package's prose sample (the
    text pi-bench reads by default)."""
    from importlib import resources
    from .calibration import text_sequences
    text = resources.files("pi_backend").joinpath("data/prose.txt").read_text("utf-8")
    return text_sequences(tok, text, n_tokens, SEQ_LEN), "prose.txt (another domain)"


def add_head_preview(src: str | Path, dst: str | Path, text_file: str | Path | None = None,
                     n_tokens: int | None = None, seed: int = 0, n_threads: int | None = None,
                     progress: bool = False) -> HeadPreview:
    """Fit the output preview of the pi split file `src` and write `dst` (may be `src`):
    its metadata and tensors with output_preview_a/b and pi.head.* added or replaced."""
    from pi_backend.kernels import default_threads
    from pi_backend.model import Model
    from pi_backend.tokenizer import Tokenizer
    from .calibration import calibration_windows, rewrite, split_heldout
    n_threads = n_threads or default_threads()
    n_tokens = n_tokens or N_TOKENS
    if n_tokens < 64:
        raise ConvertError(f"the head preview needs at least 64 calibration tokens, got {n_tokens}")
    model = Model(str(src), head_mode=F.HEAD_DENSE)
    tok = Tokenizer(str(src))
    try:
        seqs, source = calibration_windows(model, tok, text_file, n_tokens, SEQ_LEN, seed,
                                           n_threads, progress)
        if sum(len(s) for s in seqs) < 64 or len(seqs) == 0:
            raise ConvertError("too little calibration text for the head preview (need 64 tokens)")
        rec, held = split_heldout(seqs, min(N_HELDOUT, n_tokens // 3))
        dom, dom_name = domain_windows(tok, N_HELDOUT)
        hp = fit(src, model, rec, held, source, n_threads, domain=dom, domain_name=dom_name)
    finally:
        tok.close()
        model.close()
    rewrite(src, dst, hp.keys(), drop_parts=(T.PREVIEW_A, T.PREVIEW_B),
            add_global=hp.tensors(), progress=progress)
    return hp


def split_file_summary(path: Path, t0: float, report: str):
    """The converter's Summary of a pi split file that was only given a preview."""
    import resource
    from collections import Counter
    import gguf
    from .layout import Summary
    r = gguf.GGUFReader(path, "r")
    types = Counter(t.tensor_type.name.lower() for t in r.tensors)
    gate = next((t.tensor_type.name.lower() for t in r.tensors
                 if t.name == F.layer_name(0, T.FFN_GATE)), "?")
    act = r.fields.get(Keys.FFN_ACTIVATION)
    return Summary(outfile=path, source=f"{path.name} (pi_backend)", vocab="copied",
                   layout="split (ffn_down_t)",
                   activation=F.field_value(act) if act is not None else F.ACT_SILU,
                   outtype=gate, n_tensors=len(r.tensors), nbytes=path.stat().st_size,
                   types=types, seconds=time.perf_counter() - t0,
                   peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   predictors="unchanged", report=report)


def attach(summary, out: Path, text_file, n_tokens: int | None, seed: int,
           n_threads: int | None, progress: bool, t0: float, required: bool = True):
    """Adds the preview to the converter's output `out` (rewritten in place) and its report
    to `summary`; not `required` (the default of --calibrate), a model too narrow for one
    (d < 64) is left without, which the summary says."""
    d = head_matrix(out)[0].shape[1]
    if not required and d < 32 + PROBE:
        summary.report = "\n".join(x for x in (summary.report, f"head       no preview: d = {d} "
                                                 f"is below rank 32 + {PROBE} probe rows") if x)
        return summary
    hp = add_head_preview(out, out, text_file, n_tokens, seed, n_threads, progress)
    summary.nbytes = out.stat().st_size
    summary.seconds = time.perf_counter() - t0
    summary.report = "\n".join(x for x in (summary.report, f"head       {hp.summary()}",
                                             hp.report()) if x)
    summary.head_preview = hp
    return summary

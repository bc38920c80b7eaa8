"""The calibration pipeline's shared stages: text -> windows -> recorded sample -> (a fit) -> one
rewrite of the GGUF file.

1. Text: a UTF-8 file, or text the model writes itself from varied prompts (our dense engine,
   sampled by llama.cpp's sampler chain through pi_backend.sampling, seeded: the same seed gives
   the same text).
2. Windows: the tokens as sequences of at most `seq_len` tokens (BOS first when the vocabulary
   adds one), split into a record set and a held-out set (`split_heldout`).
3. The recorded sample (`record` -> `Calibration`): the dense engine runs over the windows with
   the library's recorder on (`Context.record`) and keeps, at a seeded random sample of
   positions (the first position of each window skipped), what the fit asks for: FFN inputs,
   gate pre-activations, activity masks (gate > 0), down inputs. Memory is bounded by the number
   of positions kept, not by the text (`bytes_per_position`).
4. The fits, each in its own module, take the sample: thresholds for SwiGLU (calibrate.py),
   predictors and the hot-first order for ReLU (train_predictors.py).
5. One rewrite (`rewrite`): the first-pass file's metadata and tensors copied, the fit's `pi.*`
   keys set, its tensors added or replaced, neuron rows reordered; temporary file, then rename.
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from pi_backend import format as F
from pi_backend._cli import progress_bar
from pi_backend.format import Keys, T, field_value, layer_name

from .model import ConvertError

# Varied prompts for self-generated calibration text: prose, dialogue, code, lists, science...
PROMPTS = [
    "The history of the printing press begins",
    "def merge_sort(items):\n    \"\"\"Sort a list with merge sort.\"\"\"\n",
    "Dear neighbours,\n\nAs many of you know, the community garden",
    "Photosynthesis is the process by which",
    "Q: What is the capital of Australia, and why was it chosen?\nA:",
    "Once upon a time, in a village between two rivers,",
    "Here is a simple recipe for vegetable soup:\n1.",
    "The stock market fell sharply on Monday after",
    "In mathematics, a prime number is",
    "User: Can you explain how a bicycle gear works?\nAssistant:",
    "Chapter 3\n\nThe rain had not stopped for three days when",
    "SELECT name, COUNT(*) FROM orders",
]

MIN_SEQ = 8     # shorter sequences are dropped

# what a recorded position can hold, and its bytes per layer (d: FFN input size, ff: neurons)
RECORDED = {"x": lambda d, ff: 4 * d, "gate": lambda d, ff: 4 * ff,
            "active": lambda d, ff: ff, "h": lambda d, ff: 4 * ff}


# ---- text and windows --------------------------------------------------------------------------
def read_text(path: str | Path) -> str:
    """A calibration text file's contents; one-line errors for a missing, directory or non-UTF-8
    file."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConvertError(f"calibration text {path} does not exist") from None
    except IsADirectoryError:
        raise ConvertError(f"calibration text {path} is a directory") from None
    except UnicodeDecodeError:
        raise ConvertError(f"calibration text {path} is not UTF-8") from None


def generate_sequences(model, tok, n_tokens: int, seed: int = 0, n_threads: int = 1,
                       max_len: int = 128, progress: bool = False) -> list[np.ndarray]:
    """Self-generated calibration text: the model continues varied prompts (our engine, sampled
    by llama.cpp's sampler chain: temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, repeat
    penalty 1.1) until n_tokens tokens (prompts included) are collected, in sequences of at most
    max_len tokens. The same seed gives the same text."""
    from pi_backend.sampling import LLAMA_DEFAULT_SEED, Sampler, SamplingParams
    rng = np.random.default_rng(seed)
    params = SamplingParams(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05,
                            repeat_penalty=1.1)
    n_seq = max(2, min(len(PROMPTS), math.ceil(n_tokens / 48)))
    per_seq = min(max_len, math.ceil(n_tokens / n_seq))
    max_prompts = 4 * max(len(PROMPTS), math.ceil(n_tokens / per_seq))
    ctx = model.new_context(n_ctx=max_len, n_threads=n_threads, n_batch=max_len,
                            ffn_mode=F.FFN_DENSE)
    order = rng.permutation(len(PROMPTS))
    seqs: list[np.ndarray] = []
    total = 0
    bar = progress_bar(progress, n_tokens, "calibration text", "tok")
    try:
        k = 0
        while total < n_tokens and k < max_prompts:
            prompt = PROMPTS[order[k % len(PROMPTS)]]
            k += 1
            ids = tok.tokenize(prompt.encode(), add_bos=tok.add_bos_token())[:per_seq - 1]
            want = min(per_seq, n_tokens - total)
            if want < MIN_SEQ:
                break
            logits = ctx.eval(ids, 0)
            # one chain per sequence (its own penalty window); its seed drawn from rng
            seq_seed = int(rng.integers(0, LLAMA_DEFAULT_SEED))
            with Sampler(params, len(logits), seq_seed) as sampler:
                while len(ids) < want:
                    t = sampler.sample(logits)
                    if tok.is_eog(t):
                        break
                    ids.append(t)
                    if len(ids) < want:
                        logits = ctx.eval([t], len(ids) - 1)
            if len(ids) >= MIN_SEQ:
                seqs.append(np.asarray(ids, dtype=np.int32))
                total += len(ids)
                bar.update(len(ids))
    finally:
        bar.close()
        ctx.close()
    return seqs


def text_sequences(tok, text: str, n_tokens: int, seq_len: int = 128) -> list[np.ndarray]:
    """A text's tokens cut into sequences of at most seq_len tokens (BOS first when the
    vocabulary adds one), n_tokens in all at most."""
    from pi_backend.perplexity import make_chunks
    bos = tok.token_bos() if tok.add_bos_token() and tok.token_bos() >= 0 else None
    ids = tok.tokenize(text.encode("utf-8"), add_bos=False)
    out, total = [], 0
    for c in make_chunks(ids, seq_len, bos):
        if total >= n_tokens:
            break
        c = c[:n_tokens - total]
        if len(c) >= MIN_SEQ:
            out.append(c)
            total += len(c)
    return out


def calibration_windows(model, tok, text_file: str | Path | None, n_tokens: int,
                        seq_len: int, seed: int = 0, n_threads: int = 1,
                        progress: bool = False) -> tuple[list[np.ndarray], str]:
    """(windows, where the text came from): the first n_tokens tokens of `text_file`, or (None)
    text the model writes itself (`generate_sequences`)."""
    if text_file is not None:
        seqs = text_sequences(tok, read_text(text_file), n_tokens, seq_len)
        return seqs, f"text from {os.path.basename(str(text_file))}"
    seqs = generate_sequences(model, tok, n_tokens, seed, n_threads, seq_len, progress)
    return seqs, f"self-generated text ({len(seqs)} prompts, seed {seed})"


def split_heldout(seqs: list[np.ndarray], n_heldout: int):
    """(record set, held-out set): sequences from the end go to the held-out set (the last one
    taken cut short) until it has n_heldout tokens (at most half of the tokens)."""
    total = sum(len(s) for s in seqs)
    n_heldout = min(n_heldout, total // 2)
    held: list[np.ndarray] = []
    rest = list(seqs)
    got = 0
    while rest and got < n_heldout and len(rest) > 1:
        s = rest.pop()
        if got + len(s) > n_heldout:
            s = s[:max(MIN_SEQ, n_heldout - got)]
        held.insert(0, s)
        got += len(s)
    if not held:   # one long sequence: cut it
        s = rest.pop()
        cut = len(s) - n_heldout
        rest = [s[:cut]]
        held = [np.concatenate([s[:1], s[cut:]])]   # keep BOS / first token as a start
    return rest, held


# ---- the recorded sample -----------------------------------------------------------------------
@dataclass
class Calibration:
    """The recorded sample: at N chosen positions, per layer, what the fit asked for (None
    otherwise): FFN inputs x [N, L, d] f32, gate pre-activations gate [N, L, n_ff] f32, activity
    masks active [N, L, n_ff] bool (gate > 0), down inputs h [N, L, n_ff] f32; `held` [N] marks
    the positions from held-out windows; n_seen the tokens run."""
    held: np.ndarray
    n_seen: int
    x: np.ndarray | None = None
    gate: np.ndarray | None = None
    active: np.ndarray | None = None
    h: np.ndarray | None = None

    @property
    def freq(self) -> np.ndarray:
        """[L, n_ff]: each neuron's activation frequency over all recorded positions."""
        return self.active.mean(axis=0)


def bytes_per_position(n_layer: int, d: int, n_ff: int, keep: Sequence[str]) -> int:
    """Bytes a recorded position takes, keeping `keep` (names of RECORDED)."""
    return n_layer * sum(RECORDED[k](d, n_ff) for k in keep)


def record(model, seqs: Sequence[np.ndarray], positions: int, keep: Sequence[str],
           held: Sequence[np.ndarray] = (), seed: int = 0, n_threads: int = 1,
           progress: bool = False) -> Calibration:
    """Dense run over `seqs` then `held` (each from position 0) with the recorder on; keeps
    `keep` (names of RECORDED) at a seeded random sample of at most about `positions`
    positions, the same share of each window (its first position skipped)."""
    unknown = set(keep) - set(RECORDED)
    if unknown:
        raise ValueError(f"cannot record {sorted(unknown)}")
    windows = list(seqs) + list(held)
    total = sum(max(0, len(s) - 1) for s in windows)
    if total == 0:
        raise ConvertError("no calibration tokens to record")
    keep_frac = min(1.0, positions / total)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keep}
    flags = []
    n_ctx = max(len(s) for s in windows)
    ctx = model.new_context(n_ctx=n_ctx, n_threads=n_threads, n_batch=n_ctx, ffn_mode=F.FFN_DENSE)
    bar = progress_bar(progress, len(windows), "recording", "seq")
    try:
        for i, s in enumerate(windows):
            n = len(s) - 1
            if n < 1:
                continue
            rec = ctx.record(s, 0, ffn_in="x" in keep, gate="gate" in keep or "active" in keep,
                             h="h" in keep)
            k = min(n, max(1, int(round(keep_frac * n))))
            pos = 1 + np.sort(rng.choice(n, size=k, replace=False))
            for name in keep:
                if name == "active":
                    parts[name].append(rec["gate"][pos] > 0)
                else:
                    parts[name].append(rec["ffn_in" if name == "x" else name][pos])
            flags.append(np.full(k, i >= len(seqs)))
            del rec
            bar.update(1)
    finally:
        bar.close()
        ctx.close()
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    return Calibration(held=np.concatenate(flags), n_seen=sum(len(s) for s in windows), **arrays)


# ---- the one rewrite ---------------------------------------------------------------------------
@contextmanager
def first_pass(src, out: Path, outtype: str, progress: bool = False, t0: float | None = None,
               keep_down: bool = False, down_type: str | None = None):
    """The converter's plain split file of `src`, written beside `out` under a temporary name
    and removed when the block ends: yields (its path, the converter's Summary)."""
    from .layout import write_model
    tmp = out.with_name(f".{out.name}.{os.getpid()}.uncalibrated.gguf")
    try:
        yield tmp, write_model(src, tmp, outtype, False, None, progress=progress, t0=t0,
                               keep_down=keep_down, down_type=down_type)
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass


def rewrite(src: str | Path, dst: str | Path, keys: Mapping, drop_keys: Sequence[str] = (),
            drop_parts: Sequence[str] = (), add: Mapping[int, list] | None = None,
            orders: Sequence[np.ndarray] | None = None, add_global: Sequence = (),
            progress: bool = False) -> None:
    """Copy the pi split file (or PowerInfer file) `src` into `dst` (temporary name, then
    renamed) with the metadata `keys` set (added or replaced) and `drop_keys` removed; the
    per-layer tensors named in `drop_parts` removed; add[layer]: [(part, data, ggml type)]
    written after that layer's ffn_down_t; orders[layer] (new -> original neuron): the rows of
    ffn_gate / ffn_up / ffn_down_t permuted as stored (quantized rows move whole: the weights are
    bit-identical) and blk.N.neuron_order added; add_global: [(name, data, ggml type)] global
    tensors written last (drop_parts names global tensors by their whole name)."""
    from gguf import GGMLQuantizationType as QT
    from pi_backend.model import read_gguf
    from .layout import add_keys, copy_fields, replacing_writer
    r = read_gguf(str(src))     # a pi file, or a PowerInfer file (convert/powerinfer.py)
    arch = field_value(r.fields[Keys.ARCHITECTURE])
    reordered = r.fields.get(Keys.NEURON_ORDER)
    if orders is not None and reordered is not None and field_value(reordered):
        raise ConvertError(f"{Path(src).name}: neurons are reordered already")
    add = add or {}
    plan = []      # (name, data as stored, ggml type)
    for t in r.tensors:
        il, part = F.split_name(t.name)
        if part in drop_parts or (orders is not None and part == T.NEURON_ORDER):
            continue
        data = t.data
        if orders is not None and part in (T.FFN_GATE, T.FFN_UP, T.FFN_DOWN_T):
            data = np.ascontiguousarray(data[orders[il]])
        plan.append((t.name, data, t.tensor_type))
        if part == T.FFN_DOWN_T:
            plan += [(layer_name(il, p), d, qt) for p, d, qt in add.get(il, ())]
            if orders is not None:
                plan.append((layer_name(il, T.NEURON_ORDER),
                             np.ascontiguousarray(orders[il], dtype=np.int32), QT.I32))
    plan += list(add_global)
    with replacing_writer(Path(dst), arch) as w:
        copy_fields(r, w, set(keys) | set(drop_keys))
        add_keys(w, keys)
        for name, data, qt in plan:
            w.add_tensor_info(name, data.shape, data.dtype, data.nbytes, raw_dtype=qt)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        bar = progress_bar(progress, len(plan), "writing", "tensor")
        try:
            for _, data, _ in plan:
                w.write_tensor_data(data)
                bar.update(1)
        finally:
            bar.close()

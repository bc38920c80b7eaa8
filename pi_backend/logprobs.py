"""Completion logprobs as llama-cpp-python returns them (OpenAI's completion shape: tokens,
text_offset, token_logprobs, top_logprobs), from exact logits (the full output head).

Each generated (or, with echo, prompt) token gets one `Step`: its log-probability under the
distribution it was drawn from, and the top-n of that distribution. The log-softmax is
llama-cpp-python's `Llama.logits_to_logprobs` (f32: subtract the max, exp, sum, log) and the
top-n its order (by value, ties to the higher token id), so that the same logits give the same
numbers and keys.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np


def logits_to_logprobs(logits: np.ndarray) -> np.ndarray:
    """log_softmax over the last axis, in f32, as llama-cpp-python computes it."""
    logits = np.asarray(logits, dtype=np.float32)
    m = np.amax(logits, axis=-1, keepdims=True)
    m[~np.isfinite(m)] = 0
    shifted = np.subtract(logits, m, dtype=np.float32)
    with np.errstate(divide="ignore"):
        return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


@dataclass
class Step:
    """One token's logprob and the top-n (ids, logprobs) of its distribution; None for a token
    with no distribution (the first one shown)."""
    token: int
    logprob: Optional[float]
    top_ids: Sequence[int] = ()
    top_logprobs: Sequence[float] = ()


def step(logits: np.ndarray, token: int, n: int) -> Step:
    """The Step of `token` drawn from `logits` ([n_vocab]), with the top n."""
    lp = logits_to_logprobs(logits)
    n = min(int(n), lp.shape[-1])
    if n > 0:
        part = np.argpartition(-lp, n - 1)[:n] if n < lp.shape[-1] else np.arange(lp.shape[-1])
        # ties at the cut: every id with the n-th value competes, the higher id first
        cut = lp[part].min()
        cand = np.flatnonzero(lp >= cut)
        order = np.lexsort((-cand, -lp[cand]))[:n]
        top = cand[order]
    else:
        top = np.zeros(0, dtype=np.int64)
    return Step(int(token), float(lp[token]), [int(i) for i in top],
                [float(lp[i]) for i in top])


class Recorder:
    """Collects the Steps of a completion: `prompt(...)` for the echoed prompt's rows,
    `__call__(logits, token)` for each generated token."""

    def __init__(self, n: int):
        self.n = int(n)
        self.prompt_steps: List[Step] = []
        self.steps: List[Step] = []

    def __call__(self, logits: np.ndarray, token: int) -> None:
        self.steps.append(step(logits, token, self.n))

    def prompt_row(self, logits: np.ndarray, token: int) -> None:
        self.prompt_steps.append(step(logits, token, self.n))


def token_strings(tok, tokens: Sequence[int]) -> List[str]:
    """Each token's text after the ones before it (llama-cpp-python's all_token_strs)."""
    return [tok.detokenize([t], prev_tokens=tokens[:i]).decode("utf-8", errors="ignore")
            for i, t in enumerate(tokens)]


def completion_logprobs(tok, steps: Sequence[Step], text_offset: int,
                        bos: Optional[int]) -> Dict[str, list]:
    """The non-streaming `logprobs` object of a completion over `steps` (echoed prompt tokens
    first when echo, whose first entry has null logprobs, as OpenAI's and llama-cpp-python's).
    text_offset: where the first token's text starts in the returned text."""
    all_tokens = [s.token for s in steps]
    strs = token_strings(tok, all_tokens)
    out: Dict[str, list] = {"tokens": [], "text_offset": [], "token_logprobs": [],
                            "top_logprobs": []}
    for idx, (s, text) in enumerate(zip(steps, strs)):
        if bos is not None and s.token == bos:
            continue
        out["text_offset"].append(text_offset + len(
            tok.detokenize(all_tokens[:idx]).decode("utf-8", errors="ignore")))
        out["tokens"].append(text)
        out["token_logprobs"].append(s.logprob)
        if s.logprob is None:
            out["top_logprobs"].append(None)
            continue
        top = {tok.detokenize([i], prev_tokens=all_tokens[:idx]).decode(
            "utf-8", errors="ignore"): lp for i, lp in zip(s.top_ids, s.top_logprobs)}
        top.update({text: s.logprob})
        out["top_logprobs"].append(top)
    return out


def chunk_logprobs(tok, s: Step, prev_tokens: Sequence[int], text_offset: int) -> Dict[str, list]:
    """The `logprobs` object of one streamed token (llama-cpp-python's per-token chunk)."""
    text = tok.detokenize([s.token], prev_tokens=prev_tokens).decode("utf-8", errors="ignore")
    top = {tok.detokenize([i]).decode("utf-8", errors="ignore"): lp
           for i, lp in zip(s.top_ids, s.top_logprobs)}
    top.update({text: s.logprob})
    return {"tokens": [text], "text_offset": [text_offset], "token_logprobs": [s.logprob],
            "top_logprobs": [top]}

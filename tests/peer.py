"""Logits against llama.cpp's: the divergence of two runs and the bound its own paths set."""
import numpy as np


def within_peer_noise(d: dict, peer: dict) -> bool:
    """Whether divergence d is within twice llama.cpp's own (peer): both are another summation
    order than the batched path's, and 256 positions leave a token or two of sampling noise."""
    return 1 - d["top1"] <= 2 * (1 - peer["top1"]) and d["kl"] <= 2 * peer["kl"]


def divergence(a, b) -> dict:
    """How far logits a [n, vocab] are from logits b: top-1 agreement, mean KL(b || a), max |a - b|."""
    la = a - a.max(-1, keepdims=True)
    lb = b - b.max(-1, keepdims=True)
    la = la - np.log(np.exp(la).sum(-1, keepdims=True))
    lb = lb - np.log(np.exp(lb).sum(-1, keepdims=True))
    kl = float(np.mean(np.sum(np.exp(lb) * (lb - la), -1)))
    return {"top1": float(np.mean(a.argmax(-1) == b.argmax(-1))), "kl": kl,
            "max": float(np.abs(a - b).max())}

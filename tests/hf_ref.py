"""transformers (torch CPU) as the reference: a checkpoint's logits, and the same model with the
engine's (llama.cpp's) deliberate roundings in attention, to tell them from everything else."""
from __future__ import annotations

import numpy as np

F16_ATTENTION = "pi_f16"   # the attention implementation registered below


def hf_logits(model, tokens) -> np.ndarray:
    """The logits [len(tokens), vocab] of a transformers causal LM."""
    import torch
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].double().numpy()


def _f16_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                   **kwargs):
    """Eager attention with the f16 roundings of llama.cpp's CPU graph, which the engine
    follows: k and v stored as binary16 (the KV cache), q and the probabilities rounded to
    binary16 (mul_mat's f16 operands for an f16 cache); everything else at the model's dtype."""
    import torch

    def r(t):
        return t.to(torch.float16).to(t.dtype)
    n_rep = query.shape[1] // key.shape[1]
    k = r(key).repeat_interleave(n_rep, dim=1)   # transformers' repeat_kv
    v = r(value).repeat_interleave(n_rep, dim=1)
    w = torch.matmul(r(query), k.transpose(2, 3)) * scaling
    if attention_mask is not None:
        w = w + attention_mask[:, :, :, :k.shape[-2]]
    w = torch.softmax(w, dim=-1)
    return torch.matmul(r(w), v).transpose(1, 2).contiguous(), w


def load_f16_attention(path):
    """The checkpoint at `path` in float64 with `_f16_attention` (sliding windows and all masks
    as transformers' eager attention builds them)."""
    import torch
    import transformers
    from transformers.masking_utils import AttentionMaskInterface, eager_mask
    transformers.AttentionInterface.register(F16_ATTENTION, _f16_attention)
    AttentionMaskInterface.register(F16_ATTENTION, eager_mask)
    return transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float64, attn_implementation=F16_ATTENTION).eval()

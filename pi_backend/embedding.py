"""Embeddings as llama.cpp gives them: the final normed hidden states (what the output head
reads), per token (pooling NONE: the default of a model without a pooling key, as llama.cpp
decides for a llama-architecture file) or pooled over a sequence (MEAN, CLS, LAST: llama.cpp's
LLAMA_POOLING_TYPE_* values), each optionally L2-normalized as llama-cpp-python does."""
from __future__ import annotations

from typing import Dict, List, Union

import numpy as np

POOLING_UNSPECIFIED, POOLING_NONE, POOLING_MEAN, POOLING_CLS, POOLING_LAST, POOLING_RANK = (
    -1, 0, 1, 2, 3, 4)
POOLING_NAMES = {POOLING_NONE: "none", POOLING_MEAN: "mean", POOLING_CLS: "cls",
                 POOLING_LAST: "last"}


def resolve_pooling(pooling_type, metadata: Dict[str, str]) -> int:
    """The pooling a context uses: the argument, or (unspecified) the file's
    `<arch>.pooling_type` key, else NONE. RANK (a reranker's head) is refused."""
    if pooling_type is None or int(pooling_type) == POOLING_UNSPECIFIED:
        arch = metadata.get("general.architecture", "")
        pooling_type = int(metadata.get(f"{arch}.pooling_type", POOLING_NONE))
    pooling_type = int(pooling_type)
    if pooling_type not in POOLING_NAMES:
        raise ValueError(f"pooling_type={pooling_type} is not supported (supported: "
                         + ", ".join(f"{k} ({v})" for k, v in POOLING_NAMES.items()) + ")")
    return pooling_type


def _normalize(v: np.ndarray) -> List[float]:
    """llama-cpp-python's normalize_embedding: v / ||v|| (unchanged when the norm is 0)."""
    norm = float(np.linalg.norm(v))
    return v.tolist() if norm == 0.0 else (np.asarray(v, np.float64) / norm).tolist()


def pool(hidden: np.ndarray, pooling: int, normalize: bool
         ) -> Union[List[float], List[List[float]]]:
    """hidden [n_tokens, n_embd] -> one sequence's embedding(s) as lists of floats."""
    if pooling == POOLING_NONE:
        return [(_normalize(h) if normalize else h.tolist()) for h in hidden]
    if pooling == POOLING_MEAN:
        v = hidden.mean(axis=0, dtype=np.float32)
    elif pooling == POOLING_CLS:
        v = hidden[0]
    else:
        v = hidden[-1]
    return _normalize(v) if normalize else v.tolist()

"""`LlamaState`: what `Llama.save_state()` captures and `Llama.load_state()` restores, with the
attributes of llama-cpp-python's (so that its `LlamaCache` classes and apps that read them work):
the evaluated tokens, the last logits, the KV cache of those tokens (the engine's checked buffer,
pi_context_get_state) and the seed."""
from __future__ import annotations

import numpy as np


class LlamaState:
    def __init__(self, input_ids: np.ndarray, scores: np.ndarray, n_tokens: int,
                 llama_state: bytes, llama_state_size: int, seed: int):
        self.input_ids = input_ids      # [n_tokens] intc
        self.scores = scores            # [1, n_vocab]: the logits after the last token
        #                                 ([0, n_vocab] when there are none)
        self.n_tokens = n_tokens
        self.llama_state = llama_state  # the KV cache of the n_tokens positions
        self.llama_state_size = llama_state_size
        self.seed = seed

    def __repr__(self) -> str:
        return (f"LlamaState(n_tokens={self.n_tokens}, llama_state_size={self.llama_state_size}, "
                f"seed={self.seed})")

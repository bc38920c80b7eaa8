"""One request's view of the model: a pi_backend.Llama whose generation runs in the engine.

Everything between the request's arguments and its response (argument checks, prompt
tokenization, the chat template and its handler, response_format and tools, stop sequences,
UTF-8 boundaries, logprobs, the response and chunk shapes) is pi_backend.Llama's own code, so
the server answers exactly as the library does; only `_generate`, the sampling loop, is
replaced: it hands the prompt and a sampler to the engine and yields the tokens the engine
sends back. One view per request; views share the tokenizer and the model, never a state.
"""
from __future__ import annotations

import threading

import numpy as np
from typing import Any, Dict, Iterator, List, Optional

from ..llama import Llama
from ..sampling import Sampler
from .engine import Engine, Handle


class RequestLlama(Llama):
    def __init__(self, base: Llama, engine: Engine, model_name: str, min_tokens: int = 0):
        # a shallow copy of the loaded Llama (its tokenizer, chat handlers, metadata, model),
        # with this request's own state; __init__ of Llama is not run: nothing is loaded
        self.__dict__.update(base.__dict__)
        self._lock = threading.Lock()
        self._owner = None
        self._input_ids = []
        self._last_logits = None
        self.timings = {}
        self.verbose = False
        self.model_path = model_name
        self._engine = engine
        self._min_tokens = int(min_tokens)
        self._max_tokens = 0
        self._handle: Optional[Handle] = None
        self._cancelled = False
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def close(self) -> None:     # the base Llama owns the model, tokenizer and context
        pass

    def __del__(self):
        pass

    def cancel(self) -> None:
        """Stops this request's generation (any thread): the engine frees its slot at its next
        step and the iteration ends."""
        self._cancelled = True
        h = self._handle
        if h is not None:
            h.cancel()

    @property
    def usage(self) -> Dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    def _run(self, prompt_tokens, max_tokens, stop_bytes, gen_args, run) -> Iterator[str]:
        self._max_tokens = max_tokens
        yield from super()._run(prompt_tokens, max_tokens, stop_bytes, gen_args, run)

    def _generate(self, tokens, params, seed, reset, logits_processor, stopping_criteria,
                  recorder=None, echo_rows: bool = False) -> Iterator[int]:
        if logits_processor:
            raise ValueError("the server takes no logits_processor")
        tokens: List[int] = self._tok.check_tokens(tokens, "prompt token id")
        self.prompt_tokens = len(tokens)
        if self._cancelled:
            return
        sampler = Sampler(params, self.n_vocab(), seed, self._tok.llama_vocab)
        h = self._engine.submit(tokens, sampler, self._max_tokens or 1,
                                want_logits=recorder is not None, prompt_rows=echo_rows,
                                min_tokens=self._min_tokens)
        self._handle = h
        if self._cancelled:      # cancelled while it was being submitted
            h.cancel()
        k = 0
        ids = list(tokens)
        try:
            for item in h:
                tok, logits = item
                if tok == "prompt_row":
                    k += 1
                    recorder.prompt_row(logits, tokens[k])
                    continue
                if stopping_criteria:   # the chat handler's (its stop tokens): ids only
                    ids.append(tok)
                    arr = np.asarray(ids, dtype=np.intc)
                    scores = logits if logits is not None else np.empty(0, np.float32)
                    if any(crit(arr, scores) for crit in stopping_criteria):
                        return
                if recorder is not None:
                    recorder(logits, tok)
                if not self._tok.is_eog(tok):
                    self.completion_tokens += 1
                yield tok
        finally:
            h.cancel()           # the consumer stopped (a stop sequence, max_tokens, an error)

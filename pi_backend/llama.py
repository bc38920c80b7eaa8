"""`pi_backend.Llama`: a drop-in replacement for `llama_cpp.Llama` running on the pi_backend engine.

Tokenization and chat templates come from llama.cpp (llama-cpp-python, vocab-only); the forward
pass is ours (pi_backend.model); sampling is llama.cpp's sampler chain (pi_backend.sampling).
Return values have exactly the shapes llama-cpp-python returns (the chat conversion is
llama-cpp-python's own).

Threads: one Llama serves one generation at a time. A generation (`generate`, a completion, a
chat completion; a stream from its first chunk until it is exhausted or closed) holds the Llama;
another thread that calls it meanwhile waits for it. The thread that holds it gets a RuntimeError
if it starts a second one (an unfinished stream), since waiting would never end.
"""
from __future__ import annotations

import contextlib
import os
import random
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import (Any, Callable, Dict, Iterator, List, Optional, Sequence, Union)

import numpy as np

from . import logprobs as _logprobs
from . import embedding as _embedding
from .sampling import LLAMA_DEFAULT_SEED, Sampler, SamplingParams, check_params
from .state import LlamaState
from .tokenizer import Tokenizer

__all__ = ["Llama", "LlamaState", "LLAMA_DEFAULT_SEED"]

# llama_cpp.Llama constructor arguments, beyond those Llama.__init__ names, by what they do here.
# Accepted with any value: placement, memory and speed options with no meaning on this CPU
# engine (it always maps the file, keeps the f16 cache whole, and computes exact logits of every
# position on demand, so logits_all and swa_full change nothing).
_ACCEPTED_KWARGS = frozenset({
    "split_mode", "main_gpu", "tensor_split", "rpc_servers", "use_mmap", "use_mlock",
    "n_ubatch", "n_threads_batch", "offload_kqv", "op_offload", "flash_attn", "no_perf",
    "numa", "swa_full", "logits_all",
})
# Accepted at these values only (llama-cpp-python's defaults, or what the engine does anyway);
# any other value changes the model or its numbers in a way the engine does not do: refused.
_DEFAULT_ONLY_KWARGS = {
    "vocab_only": (False,), "kv_overrides": (None, {}), "rope_scaling_type": (None, -1),
    "attention_type": (None, -1, 1),
    "yarn_ext_factor": (-1.0,), "yarn_attn_factor": (1.0,), "yarn_beta_fast": (32.0,),
    "yarn_beta_slow": (1.0,), "yarn_orig_ctx": (0,), "type_k": (None, 1), "type_v": (None, 1),
    "spm_infill": (False,), "lora_base": (None,), "lora_scale": (1.0,), "lora_path": (None,),
    "draft_model": (None,), "tokenizer": (None,),
    # older llama-cpp-python releases' names
    "f16_kv": (True,), "n_parts": (-1,), "mul_mat_q": (True,), "cache": (None, False),
}


def _check_kwargs(kwargs: Dict[str, Any]) -> None:
    """One-line errors for constructor arguments the engine cannot honour (see above)."""
    for k, v in kwargs.items():
        if k in _ACCEPTED_KWARGS:
            continue
        if k not in _DEFAULT_ONLY_KWARGS:
            raise TypeError(f"pi_backend.Llama got an unexpected keyword argument {k!r}")
        if not any(v is d or (not isinstance(v, bool) and not isinstance(d, bool) and v == d)
                   for d in _DEFAULT_ONLY_KWARGS[k]):
            raise _not_implemented(k, v)


@dataclass
class ContextParams:
    """The subset of llama.cpp's context parameters that apps read back."""
    n_ctx: int
    n_batch: int
    n_ubatch: int
    n_threads: int
    n_threads_batch: int
    seed: int
    embeddings: bool = False


@dataclass
class ModelParams:
    n_gpu_layers: int = 0
    vocab_only: bool = False
    use_mmap: bool = True
    use_mlock: bool = False


def _not_implemented(name: str, value: Any) -> NotImplementedError:
    return NotImplementedError(
        f"pi_backend.Llama does not support {name}={value!r} (the pi_backend engine has no "
        f"{name}); leave it at its default")


def _utf8_incomplete_tail(buf: bytes) -> int:
    """How many bytes at the end of buf are an incomplete UTF-8 sequence (0..3)."""
    n = len(buf)
    for i in range(1, min(4, n) + 1):
        b = buf[n - i]
        if b & 0xC0 == 0x80:          # continuation byte: keep looking for the lead byte
            continue
        if b >= 0xF0:
            need = 4
        elif b >= 0xE0:
            need = 3
        elif b >= 0xC0:
            need = 2
        else:
            return 0
        return i if need > i else 0
    return 0


def _stop_prefix_hold(buf: bytes, stops: Sequence[bytes]) -> int:
    """Length of the longest suffix of buf that is a proper prefix of some stop sequence."""
    hold = 0
    for s in stops:
        for i in range(min(len(s) - 1, len(buf)), hold, -1):
            if buf.endswith(s[:i]):
                hold = i
                break
    return hold


class _Run:
    """State of one completion while it is being generated."""

    def __init__(self):
        self.completion_tokens: List[int] = []
        self.text = b""
        self.finish_reason = "length"
        self.buf = bytearray()            # the text so far (cut at a stop sequence at the end)
        self.token_ends: List[int] = []   # bytes of buf after each completion token
        self.emitted = 0                  # bytes of buf yielded so far


class Llama:
    """Load a GGUF model and generate text; the API of `llama_cpp.Llama`.

    pi_backend-specific: `ffn_mode` ('dense', 'sparse' or 'threshold'; default: what the file was
    calibrated for); `head_mode` ('sparse': the output preview picks the rows of the output
    matrix each token needs, the default where the file has a preview; 'dense': the whole
    matrix, and the model loads without the preview). A generation with a logits_processor
    runs the dense head: the processors see exact logits.
    """

    def __init__(self, model_path: str, *, n_gpu_layers: int = 0, seed: int = LLAMA_DEFAULT_SEED,
                 n_ctx: int = 512, n_batch: int = 512, n_threads: Optional[int] = None,
                 last_n_tokens_size: int = 64, embedding: bool = False,
                 chat_format: Optional[str] = None, chat_handler: Optional[Callable] = None,
                 verbose: bool = True, ffn_mode: Optional[str] = None,
                 head_mode: Optional[str] = None, pooling_type: int = -1,
                 rope_freq_base: float = 0.0, rope_freq_scale: float = 0.0, **kwargs: Any):
        from . import _lib
        from .model import Model  # the engine; imported here so `import pi_backend` stays light

        self._closed = True
        self._lock = threading.Lock()   # held by the generation in progress (see the docstring)
        self._owner: Optional[int] = None  # the thread that holds it
        self.verbose = verbose
        self.model_path = os.fspath(model_path)
        _check_kwargs(kwargs)
        if n_gpu_layers and verbose:
            print("pi_backend: CPU engine; n_gpu_layers is ignored", file=sys.stderr)
        if not os.path.exists(self.model_path):
            raise ValueError(f"Model path does not exist: {self.model_path}")

        self._model = Model(self.model_path, ffn_mode=ffn_mode, head_mode=head_mode,
                            rope_freq_base=float(rope_freq_base or 0.0),
                            rope_freq_scale=float(rope_freq_scale or 0.0))
        try:
            self._tok = Tokenizer(self.model_path, verbose=False)
            _lib.trim_heap()  # what llama.cpp's vocab load left free
            if n_ctx == 0:
                n_ctx = int(self._model.n_ctx_train)
            if n_ctx < 0:
                raise ValueError(f"n_ctx must be >= 0, got {n_ctx}")
            if n_threads is None or n_threads <= 0:
                n_threads = max((os.cpu_count() or 2) // 2, 1)
            n_batch = max(1, min(int(n_batch), int(n_ctx)))
            self.n_batch = n_batch
            self.n_threads = int(n_threads)
            if int(last_n_tokens_size) < 0:
                raise ValueError(f"last_n_tokens_size must be >= 0 (the repeat-penalty window), "
                                 f"got {last_n_tokens_size}")
            self.last_n_tokens_size = int(last_n_tokens_size)
            self._ctx = self._model.new_context(int(n_ctx), self.n_threads, n_batch=n_batch,
                                                ffn_mode=ffn_mode, head_mode=head_mode)
        except BaseException:
            self._model.close()
            raise
        self._closed = False
        self.context_params = ContextParams(n_ctx=int(n_ctx), n_batch=n_batch, n_ubatch=n_batch,
                                            n_threads=self.n_threads,
                                            n_threads_batch=self.n_threads, seed=seed,
                                            embeddings=bool(embedding))
        self.model_params = ModelParams(n_gpu_layers=n_gpu_layers)
        self._seed = seed if seed is not None else LLAMA_DEFAULT_SEED
        self.metadata: Dict[str, str] = self._tok.metadata
        self._pooling = _embedding.resolve_pooling(pooling_type, self.metadata)
        self._input_ids: List[int] = []   # tokens whose keys/values are in the KV cache
        self._last_logits: Optional[np.ndarray] = None
        self.timings: Dict[str, float] = {}

        self.chat_handler = chat_handler
        self._chat_handlers = self._tok.chat_handlers()
        if chat_format is None and chat_handler is None:
            chat_format = self._tok.default_chat_format()
        self.chat_format = chat_format
        if verbose:
            print(f"pi_backend: {os.path.basename(self.model_path)}: n_vocab={self.n_vocab()} "
                  f"n_embd={self.n_embd()} n_layer={self._model.n_layer} n_ctx={self.n_ctx()} "
                  f"threads={self.n_threads} ffn_mode={self.ffn_mode} "
                  f"head_mode={self.head_mode} "
                  f"chat_format={self.chat_format}", file=sys.stderr)

    # ---- properties and small methods -------------------------------------------------------
    @property
    def ffn_mode(self) -> str:
        return self._ctx.ffn_mode

    def set_ffn_mode(self, mode: str) -> None:
        """Switch the FFN mode ('dense', 'sparse', 'threshold'); the KV cache stays valid."""
        with self._exclusive():
            self._ctx.set_ffn_mode(mode)

    @property
    def ffn_modes(self) -> tuple:
        return tuple(self._model.ffn_modes)

    @property
    def head_mode(self) -> str:
        return self._ctx.head_mode

    def set_head_mode(self, mode: str) -> None:
        """Switch the output head ('dense', or 'sparse' where the model has a preview)."""
        with self._exclusive():
            self._ctx.set_head_mode(mode)
            self._last_logits = None   # they came from the other head

    @property
    def head_modes(self) -> tuple:
        return tuple(self._model.head_modes)

    def stats(self) -> dict:
        """Engine statistics since the last `reset_stats()` (FFN sparsity, tokens)."""
        with self._exclusive():
            return self._ctx.stats()

    def reset_stats(self) -> None:
        with self._exclusive():
            self._ctx.reset_stats()

    @property
    def n_tokens(self) -> int:
        return len(self._input_ids)

    @property
    def input_ids(self) -> np.ndarray:
        return np.asarray(self._input_ids, dtype=np.intc)

    def n_ctx(self) -> int:
        return int(self._ctx.n_ctx)

    def n_vocab(self) -> int:
        return int(self._model.n_vocab)

    def n_embd(self) -> int:
        return int(self._model.n_embd)

    def token_bos(self) -> int:
        return self._tok.token_bos()

    def token_eos(self) -> int:
        return self._tok.token_eos()

    def token_nl(self) -> int:
        return self._tok.token_nl()

    def tokenizer(self) -> Tokenizer:
        return self._tok

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> List[int]:
        return self._tok.tokenize(text, add_bos=add_bos, special=special)

    def detokenize(self, tokens: List[int], prev_tokens: Optional[List[int]] = None,
                   special: bool = False) -> bytes:
        return self._tok.detokenize(tokens, prev_tokens=prev_tokens, special=special)

    def set_seed(self, seed: int) -> None:
        self._seed = seed

    def reset(self) -> None:
        """Forget the KV cache contents (the next call evaluates its prompt from scratch)."""
        with self._exclusive():
            self._input_ids = []
            self._last_logits = None

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold this Llama for one operation: another thread waits; the thread that already
        holds it (an unfinished stream) gets a RuntimeError instead of waiting forever."""
        me = threading.get_ident()
        if self._owner == me:
            raise RuntimeError("this Llama is in the middle of a generation in this thread (an "
                               "unfinished stream?): exhaust or close it first")
        with self._lock:
            self._owner = me
            try:
                if self._closed:
                    raise RuntimeError("this Llama is closed")
                yield
            finally:
                self._owner = None

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        with self._exclusive():
            self._closed = True
            self._ctx.close()
            self._model.close()
            self._tok.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- embeddings ----------------------------------------------------------------------------
    def pooling_type(self) -> int:
        """llama.cpp's LLAMA_POOLING_TYPE_* of the embeddings (NONE: one vector per token)."""
        return self._pooling

    def embed(self, input: Union[str, List[str]], normalize: bool = False, truncate: bool = True,
              return_count: bool = False):
        """The embeddings of a text or a list of texts (llama_cpp.Llama.embed): the final
        normed hidden states, per token or pooled (pooling_type), each sequence evaluated on
        its own from position 0. Clears the KV cache, as llama-cpp-python does."""
        if not self.context_params.embeddings:
            raise RuntimeError("Llama model must be created with embedding=True to call this "
                               "method")
        inputs = [input] if isinstance(input, str) else list(input)
        if not all(isinstance(t, str) for t in inputs):
            raise TypeError("embed takes a str or a list of str")
        data: list = []
        total = 0
        with self._exclusive():
            self._input_ids = []
            self._last_logits = None
            for text in inputs:
                tokens = self.tokenize(text.encode("utf-8"))
                if truncate:
                    tokens = tokens[:self.n_batch]
                if len(tokens) > self.n_batch:
                    raise ValueError(f"Requested tokens ({len(tokens)}) exceed batch size of "
                                     f"{self.n_batch}")
                if not tokens:
                    raise ValueError("cannot embed an empty text (no tokens)")
                total += len(tokens)
                data.append(_embedding.pool(self._ctx.hidden(tokens, 0), self._pooling,
                                            normalize))
        output = data[0] if isinstance(input, str) else data
        return (output, total) if return_count else output

    def create_embedding(self, input: Union[str, List[str]], model: Optional[str] = None
                         ) -> Dict[str, Any]:
        """OpenAI's embedding response (llama_cpp.Llama.create_embedding)."""
        embeds, total = self.embed(input if isinstance(input, list) else [input],
                                   return_count=True)
        return {"object": "list",
                "data": [{"object": "embedding", "embedding": e, "index": i}
                         for i, e in enumerate(embeds)],
                "model": model if model is not None else self.model_path,
                "usage": {"prompt_tokens": total, "total_tokens": total}}

    # ---- saved state ---------------------------------------------------------------------------
    def save_state(self) -> LlamaState:
        """The evaluated tokens, their KV cache, the last logits and the seed: load_state()
        brings this Llama (or another on the same model) back to exactly this point."""
        with self._exclusive():
            n = len(self._input_ids)
            kv = self._ctx.get_state(n)
            scores = (np.asarray(self._last_logits, np.float32)[None].copy()
                      if self._last_logits is not None
                      else np.zeros((0, self.n_vocab()), np.float32))
            return LlamaState(input_ids=np.asarray(self._input_ids, dtype=np.intc),
                              scores=scores, n_tokens=n, llama_state=kv,
                              llama_state_size=len(kv), seed=self._seed)

    def load_state(self, state: LlamaState) -> None:
        """Restores a save_state() (the KV cache is checked against this model's shape)."""
        n = int(state.n_tokens)
        ids = [int(t) for t in np.asarray(state.input_ids).reshape(-1)]
        if len(ids) != n:
            raise ValueError(f"the state has {len(ids)} input_ids for n_tokens={n}")
        if n > self.n_ctx():
            raise ValueError(f"the state holds {n} tokens, more than n_ctx={self.n_ctx()}")
        scores = np.asarray(state.scores, np.float32)
        if scores.size and scores.shape[-1] != self.n_vocab():
            raise ValueError(f"the state's logits have {scores.shape[-1]} entries, the model's "
                             f"vocabulary {self.n_vocab()}")
        self._tok.check_tokens(ids, "state token id")
        with self._exclusive():
            self._ctx.set_state(n, bytes(state.llama_state)[:int(state.llama_state_size)])
            self._input_ids = ids
            self._last_logits = scores.reshape(-1, self.n_vocab())[-1].copy() if scores.size else None
            self._seed = state.seed

    # ---- evaluation ---------------------------------------------------------------------------
    def eval(self, tokens: Sequence[int]) -> None:
        """Evaluate tokens after those already in the KV cache (llama_cpp.Llama.eval)."""
        tokens = self._tok.check_tokens(tokens)
        with self._exclusive():
            self._eval(tokens)

    def _eval(self, tokens: List[int]) -> None:
        if not tokens:
            return
        n_ctx = self.n_ctx()
        if len(self._input_ids) + len(tokens) > n_ctx:
            raise ValueError(f"Requested tokens ({len(self._input_ids) + len(tokens)}) exceed "
                             f"context window of {n_ctx}")
        for i in range(0, len(tokens), self.n_batch):
            chunk = tokens[i:i + self.n_batch]
            logits = self._ctx.eval(chunk, len(self._input_ids))
            # only after the engine wrote the chunk's KV entries
            self._input_ids.extend(chunk)
            self._last_logits = logits

    def _prefill(self, prompt_tokens: List[int]) -> np.ndarray:
        """Bring the KV cache to prompt_tokens, reusing the longest common prefix, and return
        the logits after the last prompt token."""
        cached = self._input_ids
        n = 0
        for a, b in zip(cached, prompt_tokens):
            if a != b:
                break
            n += 1
        if n == len(prompt_tokens) == len(cached) and self._last_logits is not None:
            return self._last_logits
        n = min(n, len(prompt_tokens) - 1)   # at least one token runs, for fresh logits
        if self.verbose and n > 0:
            print(f"pi_backend: {n} prefix-match hit, {len(prompt_tokens) - n} prompt tokens to "
                  "eval", file=sys.stderr)
        del self._input_ids[n:]
        self._last_logits = None
        self._eval(prompt_tokens[n:])
        return self._last_logits

    def _prefill_rows(self, prompt_tokens: List[int], row: Callable) -> np.ndarray:
        """Evaluates the whole prompt afresh with every position's logits (the full head):
        row(logits before token p, token p) for p >= 1; returns the last position's logits."""
        del self._input_ids[:]
        self._last_logits = None
        if len(prompt_tokens) > self.n_ctx():
            raise ValueError(f"Requested tokens ({len(prompt_tokens)}) exceed context window "
                             f"of {self.n_ctx()}")
        for i in range(0, len(prompt_tokens), self.n_batch):
            chunk = prompt_tokens[i:i + self.n_batch]
            rows = self._ctx.eval(chunk, len(self._input_ids), logits_all=True)
            self._input_ids.extend(chunk)
            for j in range(len(chunk)):
                if i + j + 1 < len(prompt_tokens):
                    row(rows[j], prompt_tokens[i + j + 1])
            self._last_logits = rows[-1].copy()
        return self._last_logits

    def generate(self, tokens: Sequence[int], top_k: int = 40, top_p: float = 0.95,
                 min_p: float = 0.05, typical_p: float = 1.0, temp: float = 0.80,
                 repeat_penalty: float = 1.0, reset: bool = True,
                 frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
                 tfs_z: float = 1.0, mirostat_mode: int = 0, mirostat_tau: float = 5.0,
                 mirostat_eta: float = 0.1, penalize_nl: bool = True,
                 logits_processor: Optional[Sequence[Callable]] = None,
                 stopping_criteria: Optional[Sequence[Callable]] = None,
                 grammar: Any = None, logit_bias: Optional[Dict[int, float]] = None,
                 seed: Optional[int] = None) -> Iterator[int]:
        """Yield sampled tokens until a stopping criterion fires or the context is full (the
        caller may stop earlier); llama_cpp.Llama.generate. pi_backend adds `logit_bias` and
        `seed` (default: the Llama's seed)."""
        params = self._sampling_params(
            temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p,
            repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty, tfs_z=tfs_z, mirostat_mode=mirostat_mode,
            mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta, grammar=grammar,
            logit_bias=logit_bias)
        return self._generate(tokens, params, self._seed if seed is None else seed, reset,
                              logits_processor, stopping_criteria)

    def _sampling_params(self, **kwargs: Any) -> SamplingParams:
        """Checked sampling parameters (one-line ValueError / TypeError)."""
        return check_params(SamplingParams(penalty_last_n=self.last_n_tokens_size, **kwargs),
                            self.n_vocab())

    def _generate(self, tokens: Sequence[int], params: SamplingParams, seed: int, reset: bool,
                  logits_processor: Optional[Sequence[Callable]],
                  stopping_criteria: Optional[Sequence[Callable]],
                  recorder: Optional[_logprobs.Recorder] = None,
                  echo_rows: bool = False) -> Iterator[int]:
        """The sampling loop. recorder: gets each yielded token with the exact logits it was
        drawn from (and, with echo_rows, each prompt token after the first with the logits
        before it)."""
        tokens = self._tok.check_tokens(tokens, "prompt token id")
        if not tokens and (reset or not self._input_ids):
            raise ValueError("generate needs at least one prompt token (or, with reset=False, "
                             "tokens already evaluated)")
        with self._exclusive(), Sampler(params, self.n_vocab(), seed,
                                        self._tok.llama_vocab) as sampler:
            if not reset:
                tokens = self._input_ids + tokens
            head_mode = self._ctx.head_mode
            if logits_processor or recorder is not None:   # they need exact logits
                self._ctx.set_head_mode("dense")
                if head_mode != "dense":
                    self._last_logits = None   # the cached logits came from the sparse head
            try:
                yield from self._generate_loop(tokens, sampler, logits_processor,
                                               stopping_criteria, recorder, echo_rows)
            finally:
                if self._ctx._ptr and self._ctx.head_mode != head_mode:
                    self._ctx.set_head_mode(head_mode)

    def _generate_loop(self, tokens, sampler, logits_processor, stopping_criteria,
                       recorder=None, echo_rows=False):
        """The sampling loop of _generate (under its lock and sampler)."""
        if echo_rows:
            logits = self._prefill_rows(tokens, recorder.prompt_row)
        else:
            logits = self._prefill(tokens)
        n_ctx = self.n_ctx()
        while True:
            scores = logits
            if logits_processor:
                ids = self.input_ids
                scores = np.array(logits, dtype=np.float32, copy=True)
                for proc in logits_processor:
                    scores = proc(ids, scores)
            tok = sampler.sample(scores)
            if stopping_criteria:
                ids = np.asarray(self._input_ids + [tok], dtype=np.intc)
                if any(crit(ids, scores) for crit in stopping_criteria):
                    return
            if recorder is not None:
                recorder(logits, tok)
            yield tok
            if len(self._input_ids) >= n_ctx:
                return
            self._eval([tok])
            logits = self._last_logits

    @staticmethod
    def _check_logprobs(logprobs: Any) -> None:
        if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int)
                                     or logprobs < 0):
            raise ValueError(f"logprobs must be None or an int >= 0 (the number of top "
                             f"logprobs per token), got {logprobs!r}")

    def _infill_tokens(self, prefix: List[int], suffix: str) -> List[int]:
        """A fill-in-the-middle prompt, llama.cpp's order (prefix, suffix, middle: the model
        writes what goes between prompt and suffix), or a one-line ValueError for a model
        without those tokens."""
        if not isinstance(suffix, str):
            raise TypeError(f"suffix must be a str, got {type(suffix).__name__}")
        pre, suf, mid = self._tok.fim_tokens()
        if min(pre, suf, mid) < 0:
            raise ValueError(f"suffix needs a fill-in-the-middle model (FIM prefix, suffix and "
                             f"middle tokens); {os.path.basename(self.model_path)} has none")
        return ([pre] + prefix + [suf]
                + self.tokenize(suffix.encode("utf-8"), add_bos=False, special=False) + [mid])

    # ---- completions --------------------------------------------------------------------------
    def create_completion(
        self, prompt: Union[str, List[int]], suffix: Optional[str] = None,
        max_tokens: Optional[int] = 16, temperature: float = 0.8, top_p: float = 0.95,
        min_p: float = 0.05, typical_p: float = 1.0, logprobs: Optional[int] = None,
        echo: bool = False, stop: Optional[Union[str, List[str]]] = [],
        frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
        repeat_penalty: float = 1.0, top_k: int = 40, stream: bool = False,
        seed: Optional[int] = None, tfs_z: float = 1.0, mirostat_mode: int = 0,
        mirostat_tau: float = 5.0, mirostat_eta: float = 0.1, model: Optional[str] = None,
        stopping_criteria: Optional[Sequence[Callable]] = None,
        logits_processor: Optional[Sequence[Callable]] = None, grammar: Any = None,
        logit_bias: Optional[Dict[int, float]] = None,
    ) -> Union[Dict[str, Any], Iterator[Dict[str, Any]]]:
        """Generate text from a prompt (text or token ids); a dict, or an iterator of chunks
        when stream=True. Raises ValueError when the prompt does not fit the context window or
        an argument is out of range (checked before anything runs, also for a stream)."""
        self._check_logprobs(logprobs)
        if self._closed:
            raise RuntimeError("this Llama is closed")
        if isinstance(prompt, (bytes, bytearray)):
            prompt = prompt.decode("utf-8")
        bos = [self.token_bos()] if (self.token_bos() >= 0 and self._add_bos()) else []
        if isinstance(prompt, str):
            # an infill prompt's text is plain text (llama-cpp-python: special=False)
            text = (self.tokenize(prompt.encode("utf-8"), add_bos=False,
                                  special=suffix is None) if prompt else [])
            prompt_tokens = bos + text if suffix is None else bos + self._infill_tokens(text,
                                                                                       suffix)
        else:
            prompt_tokens = self._tok.check_tokens(prompt, "prompt token id")
            if suffix is not None:
                prompt_tokens = bos + self._infill_tokens(prompt_tokens, suffix)
        if not prompt_tokens:
            raise ValueError("the prompt is empty (no tokens to evaluate)")
        n_ctx = self.n_ctx()
        if len(prompt_tokens) >= n_ctx:
            raise ValueError(f"Requested tokens ({len(prompt_tokens)}) exceed context window "
                             f"of {n_ctx}")
        if max_tokens is None or max_tokens <= 0:
            max_tokens = n_ctx - len(prompt_tokens)
        max_tokens = min(int(max_tokens), n_ctx - len(prompt_tokens))
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        stop_bytes = [s.encode("utf-8") for s in stops if s]
        params = self._sampling_params(
            temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
            typical_p=typical_p, repeat_penalty=repeat_penalty,
            frequency_penalty=frequency_penalty, presence_penalty=presence_penalty, tfs_z=tfs_z,
            mirostat_mode=mirostat_mode, mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta,
            grammar=grammar, logit_bias=logit_bias)
        if seed is None:  # as llama-cpp-python: the next seed of a chain started by the Llama's
            seed = random.Random(self._seed).randint(0, 2 ** 32)
        self.set_seed(seed)
        recorder = _logprobs.Recorder(logprobs) if logprobs is not None else None
        gen_args = dict(params=params, seed=seed, reset=True, logits_processor=logits_processor,
                        stopping_criteria=stopping_criteria, recorder=recorder,
                        echo_rows=bool(echo and recorder is not None and not stream))
        meta = dict(id=f"cmpl-{uuid.uuid4()}", created=int(time.time()),
                    model=model if model is not None else self.model_path)
        echo_text = ""
        if echo:
            echo_text = prompt if isinstance(prompt, str) else self.detokenize(
                prompt_tokens).decode("utf-8", errors="ignore")
        if stream:
            if recorder is not None:
                return self._stream_logprobs(prompt, prompt_tokens, max_tokens, stop_bytes,
                                             gen_args, meta, echo_text, recorder)
            return self._stream(prompt_tokens, max_tokens, stop_bytes, gen_args, meta, echo_text)
        run = _Run()
        for _ in self._run(prompt_tokens, max_tokens, stop_bytes, gen_args, run):
            pass
        lp = None
        if recorder is not None:
            lp = self._completion_logprobs(prompt, prompt_tokens, run, recorder, echo)
        return {
            "id": meta["id"], "object": "text_completion", "created": meta["created"],
            "model": meta["model"],
            "choices": [{"text": echo_text + run.text.decode("utf-8", errors="ignore"),
                         "index": 0, "logprobs": lp, "finish_reason": run.finish_reason}],
            "usage": {"prompt_tokens": len(prompt_tokens),
                      "completion_tokens": len(run.completion_tokens),
                      "total_tokens": len(prompt_tokens) + len(run.completion_tokens)},
        }

    def __call__(self, prompt: Union[str, List[int]], *args, **kwargs):
        return self.create_completion(prompt, *args, **kwargs)

    # llama_cpp positional order of create_completion's parameters, for __call__(prompt, ...)
    __call__.__doc__ = create_completion.__doc__

    def _add_bos(self) -> bool:
        return self._tok.add_bos_token()

    def _completion_logprobs(self, prompt, prompt_tokens, run, recorder, echo):
        """The logprobs object of a finished completion (llama-cpp-python's shape)."""
        bos = self.token_bos() if self.token_bos() >= 0 else None
        steps = recorder.steps[:len(run.completion_tokens)]
        if echo:
            shown = prompt_tokens[1:] if prompt_tokens[0] == bos else prompt_tokens
            # rows exist for positions 1..; the first token shown has none (OpenAI: null)
            rows = recorder.prompt_steps[len(prompt_tokens) - 1 - len(shown) + 1:]
            if len(shown) > len(rows):
                rows = [_logprobs.Step(shown[0], None)] + rows
            else:
                rows = [_logprobs.Step(rows[0].token, None)] + rows[1:]
            steps = rows + steps
        return _logprobs.completion_logprobs(self._tok, steps, 0 if echo else len(prompt), bos)

    def _stream_logprobs(self, prompt, prompt_tokens, max_tokens, stop_bytes, gen_args, meta,
                         echo_text, recorder):
        """A stream with logprobs: one chunk per generated token (llama-cpp-python's), its text
        what that token adds once it is safe to show (a character split across tokens goes
        with the token that completes it)."""
        def chunk(text, lp, finish):
            return {"id": meta["id"], "object": "text_completion", "created": meta["created"],
                    "model": meta["model"],
                    "choices": [{"text": text, "index": 0, "logprobs": lp,
                                 "finish_reason": finish}]}
        if echo_text:
            yield chunk(echo_text, None, None)
        run = _Run()
        state = {"k": 0, "sent": 0, "text": 0}

        def ready(limit, final=False):
            """Chunks of the tokens that end within the first `limit` bytes (final: the text
            is complete; a token the stop sequence cut shows what is left of it, and the
            tokens after it are not shown)."""
            while state["k"] < len(run.token_ends):
                k = state["k"]
                end, start = run.token_ends[k], run.token_ends[k - 1] if k else 0
                if end > limit:
                    if not final or start >= limit:
                        return
                    end = limit
                upto = max(end - _utf8_incomplete_tail(bytes(run.buf[:end])), state["sent"])
                text = bytes(run.buf[state["sent"]:upto]).decode("utf-8", errors="ignore")
                lp = _logprobs.chunk_logprobs(self._tok, recorder.steps[k],
                                              prompt_tokens + run.completion_tokens[:k],
                                              len(prompt) + state["text"])
                state["sent"] = upto
                state["text"] += len(text)
                state["k"] += 1
                yield chunk(text, lp, None)
        for _ in self._run(prompt_tokens, max_tokens, stop_bytes, gen_args, run):
            yield from ready(run.emitted)
        yield from ready(len(run.buf), final=True)
        yield chunk("", None, run.finish_reason)

    def _stream(self, prompt_tokens, max_tokens, stop_bytes, gen_args, meta, echo_text):
        def chunk(text, finish):
            return {"id": meta["id"], "object": "text_completion", "created": meta["created"],
                    "model": meta["model"],
                    "choices": [{"text": text, "index": 0, "logprobs": None,
                                 "finish_reason": finish}]}
        if echo_text:
            yield chunk(echo_text, None)
        run = _Run()
        for piece in self._run(prompt_tokens, max_tokens, stop_bytes, gen_args, run):
            yield chunk(piece, None)
        yield chunk("", run.finish_reason)

    def _run(self, prompt_tokens, max_tokens, stop_bytes, gen_args, run: _Run) -> Iterator[str]:
        """Generate, cut at stop sequences, and yield text pieces that are safe to show: no
        incomplete UTF-8 character and nothing that could still turn into a stop sequence."""
        buf = run.buf
        emitted = 0
        max_stop = max((len(s) for s in stop_bytes), default=0)
        t0 = time.perf_counter()
        t_first = None
        n_prompt_eval = None
        gen = self._generate(prompt_tokens, **gen_args)
        try:
            for tok in gen:
                if t_first is None:
                    t_first = time.perf_counter()
                    n_prompt_eval = len(self._input_ids)
                if self._tok.is_eog(tok):
                    run.finish_reason = "stop"
                    break
                run.completion_tokens.append(tok)
                old = len(buf)
                buf += self._tok.piece(tok)
                run.token_ends.append(len(buf))
                cut = -1
                if stop_bytes:
                    start = max(0, old - max_stop + 1)
                    for s in stop_bytes:
                        i = buf.find(s, start)
                        if i != -1 and (cut == -1 or i < cut):
                            cut = i
                if cut != -1:
                    del buf[cut:]
                    run.finish_reason = "stop"
                    break
                hold = max(_stop_prefix_hold(bytes(buf[emitted:]), stop_bytes),
                           _utf8_incomplete_tail(buf))
                safe = len(buf) - hold
                if safe > emitted:
                    piece = bytes(buf[emitted:safe]).decode("utf-8", errors="ignore")
                    emitted = run.emitted = safe
                    if piece:
                        yield piece
                if len(run.completion_tokens) >= max_tokens:
                    run.finish_reason = "length"
                    break
            else:
                # the generator ended by itself: a stopping criterion or a full context
                run.finish_reason = ("stop" if len(run.completion_tokens) < max_tokens
                                     and len(self._input_ids) < self.n_ctx() else "length")
        finally:
            gen.close()
            run.text = bytes(buf)
            t1 = time.perf_counter()
            self.timings = {
                "prompt_tokens": len(prompt_tokens),
                "prompt_eval_tokens": n_prompt_eval or 0,
                "prompt_s": (t_first or t1) - t0,
                "gen_tokens": len(run.completion_tokens),
                "gen_s": t1 - (t_first or t1),
            }
        if len(buf) > emitted:
            piece = bytes(buf[emitted:]).decode("utf-8", errors="ignore")
            emitted = run.emitted = len(buf)
            if piece:
                yield piece
        if self.verbose:
            t = self.timings
            print(f"pi_backend: prompt {t['prompt_tokens']} tokens in {t['prompt_s'] * 1e3:.0f} ms,"
                  f" generated {t['gen_tokens']} tokens in {t['gen_s'] * 1e3:.0f} ms",
                  file=sys.stderr)

    # ---- chat ----------------------------------------------------------------------------------
    def create_chat_completion(
        self, messages: List[Dict[str, Any]], functions: Optional[List[Any]] = None,
        function_call: Any = None, tools: Optional[List[Any]] = None, tool_choice: Any = None,
        temperature: float = 0.2, top_p: float = 0.95, top_k: int = 40, min_p: float = 0.05,
        typical_p: float = 1.0, stream: bool = False,
        stop: Optional[Union[str, List[str]]] = [], seed: Optional[int] = None,
        response_format: Any = None, max_tokens: Optional[int] = None,
        presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
        repeat_penalty: float = 1.0, tfs_z: float = 1.0, mirostat_mode: int = 0,
        mirostat_tau: float = 5.0, mirostat_eta: float = 0.1, model: Optional[str] = None,
        logits_processor: Optional[Sequence[Callable]] = None, grammar: Any = None,
        logit_bias: Optional[Dict[int, float]] = None, logprobs: Optional[bool] = None,
        top_logprobs: Optional[int] = None,
    ) -> Union[Dict[str, Any], Iterator[Dict[str, Any]]]:
        """Chat completion through the model's chat template (llama-cpp-python's handler, which
        also turns tools / tool_choice and functions / function_call into its prompt, a
        grammar for a forced tool, and tool calls; and logprobs into the chat shape)."""
        if top_logprobs is not None and (isinstance(top_logprobs, bool)
                                         or not isinstance(top_logprobs, int)
                                         or top_logprobs < 0):
            raise ValueError(f"top_logprobs must be None or an int >= 0, got {top_logprobs!r}")
        handler = self._chat_handler()
        return handler(
            llama=self, messages=messages, functions=functions, function_call=function_call,
            tools=tools, tool_choice=tool_choice, temperature=temperature, top_p=top_p,
            top_k=top_k, min_p=min_p, typical_p=typical_p, logprobs=logprobs,
            top_logprobs=top_logprobs, stream=stream, stop=stop, seed=seed,
            response_format=response_format, max_tokens=max_tokens,
            presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
            repeat_penalty=repeat_penalty, tfs_z=tfs_z, mirostat_mode=mirostat_mode,
            mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta, model=model,
            logits_processor=logits_processor, grammar=grammar, logit_bias=logit_bias)

    def create_chat_completion_openai_v1(self, *args: Any, **kwargs: Any):
        """create_chat_completion's result as the openai package's types (ChatCompletion, or
        an iterator of ChatCompletionChunk with stream=True), as llama-cpp-python's."""
        try:
            from openai.types.chat import ChatCompletion, ChatCompletionChunk
        except ImportError:
            raise ImportError("create_chat_completion_openai_v1 needs the openai package "
                              "(pip install openai)") from None
        stream = kwargs.get("stream", False)
        if not isinstance(stream, bool):
            raise TypeError(f"stream must be a bool, got {stream!r}")
        out = self.create_chat_completion(*args, **kwargs)
        if stream:
            return (ChatCompletionChunk(**chunk) for chunk in out)
        return ChatCompletion(**out)

    def _chat_handler(self) -> Callable:
        if self.chat_handler is not None:
            return self.chat_handler
        return self._tok.get_chat_handler(self.chat_format, self._chat_handlers)

    def chat_prompt_tokens(self, messages: List[Dict[str, Any]]) -> List[int]:
        """The prompt tokens create_chat_completion would evaluate for `messages` (without
        generating anything)."""
        captured: Dict[str, Any] = {}

        class _Probe:  # stands in for the Llama the chat handler drives
            verbose = False
            tokenize = staticmethod(self.tokenize)

            @staticmethod
            def create_completion(prompt, **kwargs):
                captured["prompt"] = prompt
                return {"id": "", "created": 0, "model": "", "usage": {},
                        "choices": [{"text": "", "logprobs": None, "finish_reason": "stop"}]}

        self._chat_handler()(llama=_Probe(), messages=messages)
        p = captured["prompt"]
        if isinstance(p, str):
            p = self.tokenize(p.encode("utf-8"), add_bos=self._add_bos(), special=True)
        return list(p)

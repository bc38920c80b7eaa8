"""Tokenization and chat templates from llama.cpp, through llama-cpp-python.

The vocabulary is loaded vocab-only (no weights) from the same GGUF file the engine runs (of a
PowerInfer file, from a copy of its metadata under GGUF's magic), so token ids, special tokens
and the chat template are exactly llama.cpp's. Nothing here re-implements a tokenizer.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from .powerinfer import vocab_file


def _import_llama_cpp():
    try:
        import llama_cpp  # noqa: F401
        from llama_cpp import llama_chat_format  # noqa: F401
    except ImportError as e:  # pragma: no cover - a broken install
        raise ImportError(
            "pi_backend needs llama-cpp-python for tokenization and chat templates "
            "(pip install llama-cpp-python)") from e
    return llama_cpp, llama_chat_format


@contextlib.contextmanager
def _quiet_stderr():
    """Silence llama.cpp's C-level log lines while loading (it writes to fd 2 directly)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        yield
        return
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as devnull:
            sys.stderr.flush()
            os.dup2(devnull.fileno(), fd)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, fd)
        os.close(saved)


class Tokenizer:
    """The vocabulary of a GGUF file: tokenize / detokenize, special tokens, chat handlers."""

    def __init__(self, model_path: str, verbose: bool = False):
        llama_cpp, chat_format = _import_llama_cpp()
        self._llama_cpp = llama_cpp
        self._chat_format = chat_format
        if not os.path.exists(model_path):
            raise ValueError(f"Model path does not exist: {model_path}")
        with vocab_file(model_path) as path:   # a PowerInfer file's vocabulary as GGUF
            if verbose:
                self._vocab = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
            else:
                with _quiet_stderr():
                    self._vocab = llama_cpp.Llama(model_path=path, vocab_only=True,
                                                  verbose=False)
        self.model_path = model_path
        self.metadata: Dict[str, str] = dict(self._vocab.metadata)
        self.n_vocab: int = int(self._vocab.n_vocab())
        self._bos = int(self._vocab.token_bos())
        self._eos = int(self._vocab.token_eos())
        self._eog = self._find_eog()
        self._piece_cache: Dict[int, bytes] = {}

    # -- special tokens -------------------------------------------------------------------
    def token_bos(self) -> int:
        return self._bos

    def token_eos(self) -> int:
        return self._eos

    def add_bos_token(self) -> bool:
        """Whether llama.cpp prepends BOS to a text prompt for this vocabulary."""
        return bool(self._vocab._model.add_bos_token())

    def token_nl(self) -> int:
        return int(self._vocab.token_nl())

    def _find_eog(self) -> frozenset:
        """The end-of-generation tokens (EOS, EOT, <|im_end|>, ...) as llama.cpp sees them."""
        lc = self._llama_cpp
        model = self._vocab._model
        is_eog = None
        if hasattr(lc, "llama_vocab_is_eog") and hasattr(model, "vocab"):
            vocab = model.vocab
            is_eog = lambda t: lc.llama_vocab_is_eog(vocab, t)  # noqa: E731
        elif hasattr(lc, "llama_token_is_eog"):
            is_eog = lambda t: lc.llama_token_is_eog(model.model, t)  # noqa: E731
        if is_eog is None:
            return frozenset(t for t in (self._eos,) if t >= 0)
        return frozenset(t for t in range(self.n_vocab) if is_eog(t))

    def fim_tokens(self) -> tuple:
        """The fill-in-the-middle tokens (prefix, suffix, middle) as llama.cpp reads them from
        the vocabulary (metadata, or the usual token texts); -1 where there is none."""
        lc, vocab = self._llama_cpp, self.llama_vocab
        return tuple(int(getattr(lc, f"llama_vocab_fim_{k}")(vocab)) for k in ("pre", "suf", "mid"))

    def is_eog(self, token: int) -> bool:
        return token in self._eog

    @property
    def eog_tokens(self) -> frozenset:
        return self._eog

    @property
    def llama_vocab(self):
        """llama.cpp's `llama_vocab *` (for samplers that need it: grammar)."""
        return self._vocab._model.vocab

    def check_tokens(self, tokens: Sequence[int], what: str = "token id") -> List[int]:
        """`tokens` as a list of ints, or a ValueError naming the first one outside the
        vocabulary: llama.cpp aborts the process on an out-of-range id."""
        ids = np.asarray(tokens if isinstance(tokens, np.ndarray) else list(tokens))
        if ids.size == 0:
            return []
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise TypeError(f"{what}s must be a flat sequence of integers, got {ids.dtype} "
                            f"with shape {ids.shape}")
        bad = np.flatnonzero((ids < 0) | (ids >= self.n_vocab))
        if bad.size:
            raise ValueError(f"{what} {int(ids[bad[0]])} (at index {int(bad[0])}) is outside "
                             f"the vocabulary (0..{self.n_vocab - 1})")
        return ids.tolist()

    def token_text(self, token: int) -> str:
        """The token's text as stored in the vocabulary (special tokens included); "" for a
        negative id (none)."""
        if token < 0:
            return ""
        (token,) = self.check_tokens([token])
        return self._vocab._model.token_get_text(token)

    # -- text <-> tokens ----------------------------------------------------------------------
    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> List[int]:
        if isinstance(text, str):
            text = text.encode("utf-8")
        return list(self._vocab.tokenize(text, add_bos=add_bos, special=special))

    def detokenize(self, tokens: Sequence[int], prev_tokens: Optional[Sequence[int]] = None,
                   special: bool = False) -> bytes:
        tokens = self.check_tokens(tokens)
        if prev_tokens is not None:
            prev_tokens = self.check_tokens(prev_tokens, "prev_tokens: token id")
        return self._vocab.detokenize(tokens, prev_tokens=prev_tokens, special=special)

    def piece(self, token: int) -> bytes:
        """The bytes of one token (cached), as llama.cpp renders it inside a text."""
        b = self._piece_cache.get(token)
        if b is None:
            b = self._vocab.detokenize(self.check_tokens([token]), special=False)
            self._piece_cache[token] = b
        return b

    # -- chat templates -----------------------------------------------------------------------
    def chat_handlers(self) -> Dict[str, Callable]:
        """Handlers for the templates stored in the GGUF (`chat_template.default` for
        `tokenizer.chat_template`, `chat_template.<name>` for named ones), built as
        llama-cpp-python builds them."""
        eos_text = self.token_text(self._eos) if self._eos != -1 else ""
        bos_text = self.token_text(self._bos) if self._bos != -1 else ""
        choices = {name[len("tokenizer."):]: tpl for name, tpl in self.metadata.items()
                   if name.startswith("tokenizer.chat_template.")}
        if "tokenizer.chat_template" in self.metadata:
            choices["chat_template.default"] = self.metadata["tokenizer.chat_template"]
        handlers = {}
        for name, tpl in choices.items():
            handlers[name] = self._chat_format.Jinja2ChatFormatter(
                template=tpl, eos_token=eos_text, bos_token=bos_text,
                stop_token_ids=[self._eos]).to_chat_handler()
        return handlers

    def default_chat_format(self) -> str:
        """The chat format llama-cpp-python would choose for this file."""
        if "tokenizer.chat_template" in self.metadata:
            guessed = self._chat_format.guess_chat_format_from_gguf_metadata(self.metadata)
            return guessed if guessed is not None else "chat_template.default"
        return "llama-2"

    def get_chat_handler(self, chat_format: str, handlers: Dict[str, Callable]) -> Callable:
        h = handlers.get(chat_format)
        if h is not None:
            return h
        try:
            return self._chat_format.get_chat_completion_handler(chat_format)
        except Exception as e:
            raise ValueError(f"unknown chat_format {chat_format!r}") from e

    def close(self) -> None:
        v = getattr(self, "_vocab", None)
        if v is not None:
            with contextlib.suppress(Exception):
                v.close()
            self._vocab = None

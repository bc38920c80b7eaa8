"""Tokenizer metadata for Hugging Face sources, built with the gguf package's vocab helpers.

- GPT-2 style byte-level BPE (`tokenizer.json`, no byte fallback): gguf.vocab.BpeVocab for the
  token list; `tokenizer.ggml.pre` is chosen from the pre-tokenizer described in tokenizer.json.
- SentencePiece (`tokenizer.model`, when the sentencepiece package is installed):
  gguf.vocab.SentencePieceVocab.
- Llama-style BPE with byte fallback (`tokenizer.json` only): gguf.vocab.LlamaHfVocab
  (needs transformers).
Merges, special token ids, add_bos/add_eos and the chat template come from
gguf.vocab.SpecialVocab.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import gguf
from gguf.vocab import BpeVocab, LlamaHfVocab, SentencePieceVocab, SpecialVocab

from .model import ConvertError, HParams

log = logging.getLogger("pi-convert")

# Pre-tokenizer split patterns that llama.cpp knows under a `tokenizer.ggml.pre` name.
_LLAMA3_RE = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}|"
              " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
_QWEN2_RE = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}|"
             " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
_GPT2_RE = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"


def _flatten(pre: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not pre:
        return []
    if pre.get("type") == "Sequence":
        out: list[dict[str, Any]] = []
        for p in pre.get("pretokenizers", []):
            out.extend(_flatten(p))
        return out
    return [pre]


def detect_bpe_pre(tokenizer_json: dict[str, Any]) -> str:
    """The llama.cpp pre-tokenizer name equivalent to tokenizer.json's pre_tokenizer."""
    steps = _flatten(tokenizer_json.get("pre_tokenizer"))
    sig = []
    for s in steps:
        t = s.get("type")
        if t == "ByteLevel":
            sig.append("bytelevel+re" if s.get("use_regex", True) else "bytelevel")
        elif t == "Digits":
            sig.append("digits1" if s.get("individual_digits") else "digits")
        elif t == "Split":
            pat = s.get("pattern", {})
            sig.append("split:" + str(pat.get("Regex", pat.get("String", ""))))
        else:
            sig.append(str(t))
    if tokenizer_json.get("normalizer") not in (None, {}):
        norm = tokenizer_json["normalizer"].get("type")
        if norm not in ("NFC",):
            log.warning("tokenizer.json has a %s normalizer; llama.cpp ignores it", norm)
    if sig == ["bytelevel+re"]:
        return "gpt-2"
    if sig == ["digits1", "bytelevel+re"]:
        return "smollm"
    if sig in (["split:" + _LLAMA3_RE, "bytelevel"],):
        return "llama-bpe"
    if sig in (["split:" + _QWEN2_RE, "bytelevel"],):
        return "qwen2"
    if sig in (["split:" + _GPT2_RE, "bytelevel"],):
        return "gpt-2"
    log.warning("unrecognised pre-tokenizer %s; writing tokenizer.ggml.pre=default", sig)
    return "default"


def add_hf_vocab(writer: gguf.GGUFWriter, path: Path, n_vocab: int, hp: HParams) -> str:
    tj_path = path / "tokenizer.json"
    tj: dict[str, Any] | None = None
    if tj_path.is_file():
        try:
            tj = json.loads(tj_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConvertError(f"{tj_path}: cannot parse ({e})") from None

    model = tj.get("model", {}) if tj else {}
    tokens: list[bytes]
    scores: list[float] | None
    types: list[int]
    if tj and model.get("type") == "BPE" and not model.get("byte_fallback", False) \
            and (tj.get("decoder") or {}).get("type") == "ByteLevel":
        kind, pre = "gpt2", detect_bpe_pre(tj)
        try:
            v = BpeVocab(path)
        except (ValueError, FileNotFoundError) as e:
            raise ConvertError(f"{tj_path}: {e}") from None
        tokens, types = [], []
        for text, _score, typ in v.all_tokens():
            tokens.append(text.encode("utf-8") if isinstance(text, str) else text)
            types.append(int(typ))
        scores = None
        # added tokens: CONTROL when special, USER_DEFINED otherwise (also those in the base vocab)
        for item in tj.get("added_tokens") or []:
            i = item.get("id")
            if isinstance(i, int) and 0 <= i < len(types):
                types[i] = int(gguf.TokenType.CONTROL if item.get("special")
                               else gguf.TokenType.USER_DEFINED)
    elif (path / "tokenizer.model").is_file() and _have_sentencepiece():
        kind, pre = "llama", "default"
        v = SentencePieceVocab(path)
        tokens, scores, types = [], [], []
        for text, score, typ in v.all_tokens():
            tokens.append(text)
            scores.append(score)
            types.append(int(typ))
    elif tj and model.get("type") == "BPE" and model.get("byte_fallback", False):
        kind, pre = "llama", "default"
        try:
            v = LlamaHfVocab(path)
        except ImportError:
            raise ConvertError(f"{path}: this tokenizer needs the transformers package "
                               "(or sentencepiece with tokenizer.model)") from None
        tokens, scores, types = [], [], []
        for text, score, typ in v.all_tokens():
            tokens.append(text)
            scores.append(score)
            types.append(int(typ))
    elif (path / "tokenizer.model").is_file():
        raise ConvertError(f"{path}: tokenizer.model needs the sentencepiece package")
    elif tj is not None:
        raise ConvertError(f"{tj_path}: unsupported tokenizer model {model.get('type')!r}")
    else:
        raise ConvertError(f"{path}: no tokenizer (tokenizer.json or tokenizer.model) found")

    if len(tokens) > n_vocab:
        raise ConvertError(f"inconsistent shapes: the tokenizer has {len(tokens)} tokens but the "
                           f"embedding has {n_vocab} rows")
    n_pad = n_vocab - len(tokens)
    for i in range(n_pad):
        tokens.append(f"[PAD{len(tokens)}]".encode())
        types.append(int(gguf.TokenType.UNUSED))
        if scores is not None:
            scores.append(-1000.0)

    writer.add_tokenizer_model(kind)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    if scores is not None:
        writer.add_token_scores(scores)
    writer.add_token_types(types)
    special = SpecialVocab(path, load_merges=(kind == "gpt2"), n_vocab=n_vocab)
    special.add_to_gguf(writer, quiet=True)
    extra = f", {n_pad} padding" if n_pad else ""
    return f"{kind} (pre={pre}), {len(tokens)} tokens{extra}, {len(special.merges)} merges"


def _have_sentencepiece() -> bool:
    try:
        import sentencepiece  # noqa: F401
    except ImportError:
        return False
    return True

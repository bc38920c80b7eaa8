"""pi-server's settings and command line: llama_cpp.server's names where they exist (--model,
--model_alias, --n_ctx, --n_threads, --host, --port, --api_key, --chat_format, --verbose), plus
the engine's (--parallel, --max_queue, --prefill_chunk, --ffn_mode, --head_mode)."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from typing import List, Optional


@dataclass
class ServerSettings:
    model: Optional[str] = None          # None: the embedded SmolLM2 (converted on first use)
    model_alias: Optional[str] = None    # the model's name in responses and /v1/models
    n_ctx: int = 2048                    # positions per sequence
    n_threads: int = max((os.cpu_count() or 2) // 2, 1)
    parallel: int = 8                    # sequences decoded together (slots)
    max_queue: int = 64                  # requests waiting for a slot; beyond: 503
    prefill_chunk: int = 96              # prompt tokens per step (running streams keep flowing)
    ffn_mode: Optional[str] = None       # dense, sparse, threshold (default: the file's)
    head_mode: str = "dense"             # output head: dense, or sparse (a file with a preview)
    chat_format: Optional[str] = None    # default: the file's template
    pooling_type: int = 1                # embeddings: llama.cpp's 1 mean (one vector per
    #                                      input, as OpenAI's), 2 cls, 3 last, 0 none, -1 file's
    host: str = "localhost"
    port: int = 8000
    api_key: Optional[str] = None
    verbose: bool = False

    def check(self) -> "ServerSettings":
        for name in ("n_ctx", "n_threads", "parallel", "prefill_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.max_queue < 0:
            raise ValueError(f"--max_queue must be >= 0, got {self.max_queue}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be 0..65535, got {self.port}")
        if self.model is not None and not os.path.isfile(self.model):
            raise ValueError(f"--model: no such file: {self.model}")
        return self


def _bool(v: str) -> bool:
    s = v.strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


HELP = {
    "model": "GGUF file to serve (default: the embedded SmolLM2, converted on first use)",
    "model_alias": "the model's name in responses and /v1/models (default: the file name)",
    "n_ctx": "context length of each sequence",
    "n_threads": "engine threads",
    "parallel": "sequences decoded together in one pass (continuous batching slots)",
    "max_queue": "requests that may wait for a free slot; more get 503",
    "prefill_chunk": "prompt tokens run per step (smaller: running streams stutter less)",
    "ffn_mode": "FFN mode: dense, sparse or threshold (default: what the file was made for)",
    "head_mode": "output head: dense, or sparse (the file's output preview picks the rows; only "
                 "steps with one wanted row and no logprobs use it: batched steps run dense)",
    "chat_format": "llama-cpp-python chat format (default: the file's chat template)",
    "pooling_type": "embedding pooling: 1 mean, 2 cls, 3 last, 0 none (per token), -1 the file's",
    "host": "address to listen on",
    "port": "port to listen on (0: any free port)",
    "api_key": "require 'Authorization: Bearer <key>'",
    "verbose": "log each request",
}


def parse_args(argv: Optional[List[str]] = None) -> ServerSettings:
    p = argparse.ArgumentParser(
        prog="pi-server",
        description="OpenAI-compatible server (llama_cpp.server's routes) with continuous "
                    "batching on the pi_backend engine.")
    defaults = ServerSettings()
    for f in fields(ServerSettings):
        d = getattr(defaults, f.name)
        kind = {"int": int, "bool": _bool}.get(str(f.type).replace("Optional[", "").rstrip("]"),
                                              str)
        choices = {"ffn_mode": ["dense", "sparse", "threshold"],
                   "head_mode": ["dense", "sparse"]}.get(f.name)
        if choices:
            p.add_argument(f"--{f.name}", choices=choices, default=d,
                           help=f"{HELP[f.name]} (default: {d})")
            continue
        p.add_argument(f"--{f.name}", type=kind, default=d, help=f"{HELP[f.name]} (default: {d})")
    ns = p.parse_args(argv)
    try:
        return ServerSettings(**vars(ns)).check()
    except ValueError as e:
        p.error(str(e))
        raise

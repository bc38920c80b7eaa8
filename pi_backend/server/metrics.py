"""Prometheus metrics of the server (/metrics): requests, tokens, throughput, queue, slots,
first-token latency, step size and time, FFN sparsity. One registry per app."""
from __future__ import annotations

import collections
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    WINDOW_S = 10.0    # tokens/s over this many seconds

    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("pi_requests", "requests handled, by route and outcome",
                                ["route", "outcome"], registry=r)
        self.rejected = Counter("pi_requests_rejected_queue_full",
                                "requests refused because the queue was full", registry=r)
        self.prompt_tokens = Counter("pi_prompt_tokens", "prompt tokens evaluated", registry=r)
        self.cached_tokens = Counter("pi_prompt_tokens_cached",
                                     "prompt tokens reused from a slot's cache", registry=r)
        self.gen_tokens = Counter("pi_generated_tokens", "tokens sampled", registry=r)
        self.steps = Counter("pi_engine_steps", "engine steps (decode_seqs calls)", registry=r)
        self.step_tokens = Histogram("pi_engine_step_tokens", "tokens per engine step",
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.step_seconds = Histogram("pi_engine_step_seconds", "time of one engine step",
                                      buckets=(.005, .01, .02, .05, .1, .2, .5, 1, 2),
                                      registry=r)
        self.ttft = Histogram("pi_time_to_first_token_seconds",
                                     "from the request's arrival in the engine to its first token",
                                     buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10),
                                     registry=r)
        self.queue_depth = Gauge("pi_queue_depth", "requests waiting for a slot", registry=r)
        self.active = Gauge("pi_active_sequences", "sequences holding a slot", registry=r)
        self.slots = Gauge("pi_slots", "sequences the engine decodes together", registry=r)
        self.tps = Gauge("pi_generated_tokens_per_second",
                         f"tokens sampled per second over the last {self.WINDOW_S:.0f} s",
                         registry=r)
        self.sparsity = Gauge("pi_ffn_sparsity", "fraction of FFN neurons skipped (engine stats)",
                              registry=r)
        self.down_sparsity = Gauge("pi_ffn_down_sparsity",
                                   "fraction of FFN down rows skipped (engine stats)", registry=r)
        self.head_steps = Gauge("pi_sparse_head_steps",
                                "steps whose logits came from the sparse output head "
                                "(--head_mode sparse)", registry=r)
        self.head_fallbacks = Gauge("pi_sparse_head_fallbacks",
                                    "sparse head steps that fell back to the full head",
                                    registry=r)
        self.ready = Gauge("pi_ready", "1 once the model is loaded", registry=r)
        self._lock = threading.Lock()
        self._recent: "collections.deque" = collections.deque()   # (time, tokens)

    # ---- called by the engine thread ------------------------------------------------------------
    def step(self, *, n_tokens: int, n_prompt: int, n_gen: int, seconds: float, engine) -> None:
        self.steps.inc()
        self.step_tokens.observe(n_tokens)
        self.step_seconds.observe(seconds)
        self.prompt_tokens.inc(n_prompt)
        self.gen_tokens.inc(n_gen)
        now = time.monotonic()
        with self._lock:
            self._recent.append((now, n_gen))
            while self._recent and self._recent[0][0] < now - self.WINDOW_S:
                self._recent.popleft()
        if engine.steps % 16 == 1:
            self._engine_stats(engine)

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def prompt_cached(self, n: int) -> None:
        self.cached_tokens.inc(n)

    def _engine_stats(self, engine) -> None:
        s = engine.stats()
        self.sparsity.set(s["ffn_sparsity"])
        self.down_sparsity.set(s["ffn_down_sparsity"])
        self.head_steps.set(s["head_steps"])
        self.head_fallbacks.set(s["head_fallbacks"])

    # ---- called when /metrics is read ---------------------------------------------------------
    def refresh(self, engine) -> None:
        if engine is None:
            return
        self.queue_depth.set(engine.queue_depth())
        self.active.set(engine.active())
        self.slots.set(engine.parallel)
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0][0] < now - self.WINDOW_S:
                self._recent.popleft()
            n = sum(k for _, k in self._recent)
        self.tps.set(n / self.WINDOW_S)

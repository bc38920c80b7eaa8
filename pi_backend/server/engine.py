"""The continuous-batching engine: one thread owns one Context of `parallel` sequences (slots).

Each step gathers the next token of every running sequence plus chunks of newly admitted
prompts (at most `prefill_chunk` prompt tokens per step, so running streams keep flowing),
runs them in one `decode_seqs` call, samples each sequence with its own llama.cpp sampler
chain and hands the token (and, when asked, its exact logits) to the request's queue. What the
tokens turn into (text, stop sequences, UTF-8 boundaries, response shapes) is the consumer's
business (pi_backend/server/request.py, pi_backend.Llama's own code).

A request that is cancelled (its client went away, or its consumer stopped at a stop sequence)
leaves at the next step and frees its slot. A slot keeps the tokens in its cache after its
request ends: a request whose prompt starts the same way reuses that prefix (the engine
rewinds the slot's cache to the common prefix).
"""
from __future__ import annotations

import collections
import queue
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Deque, Dict, List, Optional

import numpy as np

from ..sampling import Sampler

END = object()          # queue sentinel: the request is over (or cancelled)


class QueueFullError(RuntimeError):
    """More requests than the slots and the waiting queue hold."""


class EngineError(RuntimeError):
    """The engine failed while running a request (the message says why)."""


class Handle:
    """One request inside the engine. The consumer iterates it (blocking) to get
    (token, logits or None) pairs, after ("prompt_row", logits) for each prompt position but the
last when it asked for the prompt's logits;
    cancel() from any thread stops it at the next step."""

    def __init__(self, engine: "Engine", tokens: List[int], sampler: Sampler, max_tokens: int,
                 want_logits: bool, prompt_rows: bool, min_tokens: int):
        self.engine = engine
        self.tokens = list(tokens)
        self.sampler = sampler
        self.max_tokens = int(max_tokens)
        self.want_logits = want_logits
        self.prompt_rows = prompt_rows
        self.min_tokens = int(min_tokens)
        self.q: "queue.SimpleQueue" = queue.SimpleQueue()
        self.cancelled = False
        self.done = False
        self.error: Optional[BaseException] = None
        # engine-side state
        self.slot = -1
        self.fed = 0                 # prompt tokens in the slot's cache
        self.generated = 0
        self.next_token: Optional[int] = None
        self.t_submit = time.perf_counter()
        self.t_first: Optional[float] = None

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.q.put(END)
            self.engine._wake()

    def __iter__(self):
        while True:
            item = self.q.get()
            if item is END:
                if self.error is not None:
                    raise EngineError(str(self.error)) from self.error
                return
            yield item


class Slot:
    def __init__(self, index: int):
        self.index = index
        self.tokens: List[int] = []      # what this sequence's cache holds, position by position
        self.handle: Optional[Handle] = None


class Engine:
    """The scheduler thread and its Context (see the module docstring)."""

    def __init__(self, model, *, n_ctx: int, n_threads: int, parallel: int, ffn_mode: str,
                 max_queue: int, prefill_chunk: int = 96, eog: Callable[[int], bool],
                 eog_tokens=(), metrics=None, head_mode: str = "dense"):
        if parallel < 1:
            raise ValueError(f"parallel must be >= 1, got {parallel}")
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
        self.parallel = int(parallel)
        self.max_queue = int(max_queue)
        self.prefill_chunk = int(prefill_chunk)
        self.n_ctx = int(n_ctx)
        self.ctx = model.new_context(n_ctx=self.n_ctx, n_threads=int(n_threads),
                                     n_batch=self.prefill_chunk + self.parallel,
                                     ffn_mode=ffn_mode, head_mode=head_mode, n_seq=self.parallel)
        # 'sparse': a step with one wanted row takes the sparse head (several rows: the full
        # head); a step with a row whose exact logits are wanted (logprobs) runs dense
        self.head_mode = head_mode
        self.n_vocab = int(model.n_vocab)
        self._eog = eog
        self._eog_ids = np.asarray(sorted(eog_tokens), dtype=np.int64)
        self.metrics = metrics
        self.slots = [Slot(i) for i in range(self.parallel)]
        self._pending: Deque[Handle] = collections.deque()
        self._calls: Deque = collections.deque()
        self._cv = threading.Condition()
        self._admitted = 0               # requests holding a place (running + waiting)
        self._stop = False
        self.steps = 0
        self._thread = threading.Thread(target=self._loop, name="pi-server-engine", daemon=True)
        self._thread.start()

    # ---- the consumer side (any thread) --------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self.parallel + self.max_queue

    def reserve(self) -> None:
        """Takes a place for one request or raises QueueFullError; release() gives it back."""
        with self._cv:
            if self._admitted >= self.capacity:
                raise QueueFullError(
                    f"the server is busy: {self.parallel} requests running and {self.max_queue} "
                    f"waiting (--parallel, --max_queue); retry later")
            self._admitted += 1

    def release(self) -> None:
        with self._cv:
            self._admitted -= 1

    def submit(self, tokens: List[int], sampler: Sampler, max_tokens: int, *,
               want_logits: bool = False, prompt_rows: bool = False,
               min_tokens: int = 0) -> Handle:
        """Queues a generation of up to max_tokens tokens after `tokens` (the engine owns and
        closes the sampler from here)."""
        if not tokens:
            sampler.close()
            raise ValueError("the prompt is empty (no tokens to evaluate)")
        if len(tokens) >= self.n_ctx:
            sampler.close()
            raise ValueError(f"Requested tokens ({len(tokens)}) exceed context window of "
                             f"{self.n_ctx}")
        h = Handle(self, tokens, sampler, max_tokens, want_logits, prompt_rows, min_tokens)
        with self._cv:
            if self._stop:
                sampler.close()
                raise EngineError("the server is shutting down")
            self._pending.append(h)
            self._cv.notify()
        return h

    def call(self, fn: Callable[[], Any]) -> Future:
        """Runs fn on the engine thread between two steps (embeddings); its result as a Future."""
        f: Future = Future()
        with self._cv:
            if self._stop:
                raise EngineError("the server is shutting down")
            self._calls.append((fn, f))
            self._cv.notify()
        return f

    def queue_depth(self) -> int:
        return len(self._pending)

    def active(self) -> int:
        return sum(1 for s in self.slots if s.handle is not None)

    def stats(self) -> dict:
        return self.ctx.stats()

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join()
        self.ctx.close()

    def _wake(self) -> None:
        with self._cv:
            self._cv.notify()

    # ---- the engine thread ----------------------------------------------------------------------
    def _finish(self, h: Handle, error: Optional[BaseException] = None) -> None:
        if h.done:
            return
        h.done = True
        h.error = error
        h.sampler.close()
        if h.slot >= 0:
            self.slots[h.slot].handle = None
        h.q.put(END)

    def _admit(self) -> None:
        # drop cancelled waiting requests
        for h in [h for h in self._pending if h.cancelled]:
            self._pending.remove(h)
            self._finish(h)
        free = [s for s in self.slots if s.handle is None]
        while free and self._pending:
            h = self._pending.popleft()
            # the free slot whose cache shares the longest prefix with the prompt
            best, best_n = free[0], -1
            for s in free:
                n = 0
                for a, b in zip(s.tokens, h.tokens):
                    if a != b:
                        break
                    n += 1
                if n > best_n:
                    best, best_n = s, n
            free.remove(best)
            # at least one prompt token runs (fresh logits); all of them when prompt rows are
            # wanted
            n = 0 if h.prompt_rows else min(best_n, len(h.tokens) - 1)
            del best.tokens[n:]
            h.fed = n
            h.slot = best.index
            best.handle = h
            if self.metrics is not None:
                self.metrics.prompt_cached(n)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while (not self._stop and not self._pending and not self._calls
                       and all(s.handle is None for s in self.slots)):
                    self._cv.wait()
                if self._stop:
                    break
                calls = list(self._calls)
                self._calls.clear()
            for fn, f in calls:
                if f.set_running_or_notify_cancel():
                    try:
                        f.set_result(fn())
                    except BaseException as e:  # the caller gets it
                        f.set_exception(e)
            for s in self.slots:
                if s.handle is not None and s.handle.cancelled:
                    self._finish(s.handle)
            with self._cv:
                self._admit()
            try:
                self._step()
            except Exception as e:  # a failed step fails the requests in it, not the server
                for s in self.slots:
                    if s.handle is not None:
                        s.tokens = []           # the cache's state is unknown
                        self._finish(s.handle, e)
        # shutting down: every request still here ends with an error
        err = EngineError("the server is shutting down")
        for s in self.slots:
            if s.handle is not None:
                self._finish(s.handle, err)
        for h in list(self._pending):
            self._finish(h, err)
        self._pending.clear()
        for fn, f in self._calls:
            f.set_exception(err)

    def _step(self) -> None:
        toks: List[int] = []
        seq: List[int] = []
        pos: List[int] = []
        want: List[bool] = []
        rows_for: List[tuple] = []    # per wanted row: (handle, kind) kind: "next" or "prompt"
        n_prompt = 0
        budget = self.prefill_chunk
        # running sequences first: their next token
        for s in self.slots:
            h = s.handle
            if h is None or h.next_token is None:
                continue
            toks.append(h.next_token)
            seq.append(s.index)
            pos.append(len(s.tokens))
            want.append(True)
            rows_for.append((h, "next"))
            s.tokens.append(h.next_token)
            h.next_token = None
        # then prompt chunks, oldest admission first
        for s in sorted((s for s in self.slots if s.handle is not None
                         and s.handle.fed < len(s.handle.tokens)),
                        key=lambda s: s.handle.t_submit):
            if budget <= 0:
                break
            h = s.handle
            n = min(budget, len(h.tokens) - h.fed)
            chunk = h.tokens[h.fed:h.fed + n]
            for k, t in enumerate(chunk):
                p = h.fed + k
                last = p == len(h.tokens) - 1
                toks.append(t)
                seq.append(s.index)
                pos.append(len(s.tokens))
                s.tokens.append(t)
                w = last or h.prompt_rows
                want.append(w)
                if w:
                    rows_for.append((h, "next" if last else "prompt"))
            h.fed += n
            budget -= n
            n_prompt += n
        if not toks:
            return
        if self.head_mode == "sparse":
            mode = "dense" if any(h.want_logits or h.prompt_rows for h, _ in rows_for) else "sparse"
            if self.ctx.head_mode != mode:
                self.ctx.set_head_mode(mode)
        t0 = time.perf_counter()
        logits = self.ctx.decode_seqs(toks, seq, pos, want)
        dt = time.perf_counter() - t0
        self.steps += 1
        n_gen = 0
        # every row is sampled before any consumer hears of it: a consumer woken earlier would
        # take the GIL from the sampling of the next rows; they run during the next decode
        out: List[tuple] = []         # (queue, item) in order
        ended: List[tuple] = []       # (handle, error or None)
        for row, (h, kind) in zip(logits, rows_for):
            if h.done:
                continue
            if kind == "prompt":
                out.append((h.q, ("prompt_row", row)))
                continue
            if h.cancelled:
                ended.append((h, None))
                continue
            scores = row
            if h.generated < h.min_tokens and self._eog_ids.size:
                scores = row.copy()
                scores[self._eog_ids] = -np.inf
            try:
                tok = h.sampler.sample(scores)
            except Exception as e:
                ended.append((h, e))
                continue
            now = time.perf_counter()
            if h.t_first is None:
                h.t_first = now
                if self.metrics is not None:
                    self.metrics.first_token(now - h.t_submit)
            h.generated += 1
            n_gen += 1
            out.append((h.q, (tok, row if h.want_logits else None)))
            slot = self.slots[h.slot]
            if (self._eog(tok) or h.generated >= h.max_tokens
                    or len(slot.tokens) >= self.n_ctx):
                ended.append((h, None))
            else:
                h.next_token = tok
        for q, item in out:
            q.put(item)
        for h, error in ended:
            self._finish(h, error)
        if self.metrics is not None:
            self.metrics.step(n_tokens=len(toks), n_prompt=n_prompt, n_gen=n_gen, seconds=dt,
                              engine=self)

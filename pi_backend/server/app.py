"""The FastAPI application: llama_cpp.server's routes and shapes (/v1/completions,
/v1/chat/completions, /v1/embeddings, /v1/models, /extras/tokenize, /extras/tokenize/count,
/extras/detokenize) plus /health and Prometheus /metrics, over the continuous-batching engine.

Each generation request takes a place in the engine (a slot, or a place in the bounded queue;
none left: 503 `queue_full`), gets its own RequestLlama (pi_backend.Llama's argument checks and
response shapes; request.py) and runs in a worker thread that blocks on the engine's tokens
(a stream: one worker for the whole generation, its chunks handed to the event loop in
batches through the Outbox).
A client that goes away cancels its request: streams when the response is cancelled, other
requests by a watcher that polls the connection.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Optional

import anyio
import anyio.to_thread
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException

from . import errors
from .engine import Engine, EngineError, QueueFullError
from .errors import NotReadyError, error_response
from .metrics import Metrics
from .request import RequestLlama
from .settings import ServerSettings
from .types import (ChatCompletionRequest, CompletionRequest, DetokenizeRequest,
                    EmbeddingRequest, TokenizeRequest)

_DATA, _END, _ERROR = object(), object(), object()     # what a stream's worker hands over


class _Stream:
    """One streaming response's items on the event loop's side (filled by Outbox._drain)."""

    def __init__(self):
        self.items: "collections.deque" = collections.deque()
        self.ready = asyncio.Event()
        self.closed = False          # the response ended (the worker stops at its next chunk)

    async def get(self):
        while not self.items:
            self.ready.clear()
            await self.ready.wait()
        return self.items.popleft()


class Outbox:
    """Items from the streams' worker threads to the event loop: a post appends under a lock,
    and only the first post after a drain wakes the loop (call_soon_threadsafe), so the chunks
    of one engine step reach their streams in one wakeup instead of one per chunk."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._lock = threading.Lock()
        self._items: list = []
        self._scheduled = False

    def post(self, stream: _Stream, item) -> None:
        with self._lock:
            self._items.append((stream, item))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:       # the loop is closed: the server is shutting down
            pass

    def _drain(self) -> None:
        with self._lock:
            items, self._items = self._items, []
            self._scheduled = False
        woken = set()
        for stream, item in items:
            stream.items.append(item)
            if stream not in woken:
                woken.add(stream)
                stream.ready.set()


class ServerState:
    """What the routes share: the settings, the loaded Llama (tokenizer, chat handlers,
    embeddings), the engine and the metrics."""

    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self.metrics = Metrics()
        self.llama = None
        self.engine: Optional[Engine] = None
        self.model_name = settings.model_alias or (os.path.basename(settings.model)
                                                   if settings.model else "SmolLM2-135M-Instruct")
        self.ready = threading.Event()
        self.load_error: Optional[str] = None
        self.closed = False
        self.outbox: Optional[Outbox] = None      # set when the event loop runs (lifespan)
        # the streams' worker threads: one per streaming response, as many as hold places
        self.pumps = ThreadPoolExecutor(max_workers=settings.parallel + settings.max_queue,
                                        thread_name_prefix="pi-server-stream")

    def load(self) -> None:
        from ..llama import Llama
        s = self.settings
        try:
            path = s.model
            if path is None:
                from ..default_model import default_model_path
                path = str(default_model_path(progress=s.verbose, quiet=not s.verbose))
            llama = Llama(path, n_ctx=s.n_ctx, n_threads=s.n_threads, embedding=True,
                          chat_format=s.chat_format, ffn_mode=s.ffn_mode, head_mode=s.head_mode,
                          pooling_type=s.pooling_type, verbose=False)
            tok = llama.tokenizer()
            engine = Engine(llama._model, n_ctx=s.n_ctx, n_threads=s.n_threads,
                            parallel=s.parallel, ffn_mode=llama.ffn_mode, max_queue=s.max_queue,
                            prefill_chunk=s.prefill_chunk, eog=tok.is_eog,
                            eog_tokens=tok.eog_tokens, metrics=self.metrics,
                            head_mode=llama.head_mode)
            if self.closed:       # shut down while loading
                engine.close()
                llama.close()
                return
            self.llama, self.engine = llama, engine
            self.metrics.ready.set(1)
            self.ready.set()
            print(f"pi-server: {path}: {s.parallel} sequences of {s.n_ctx} positions, "
                  f"ffn_mode={llama.ffn_mode}, head_mode={llama.head_mode}, "
                  f"chat_format={llama.chat_format}, "
                  f"{s.n_threads} threads", file=sys.stderr)
        except Exception as e:
            self.load_error = f"{type(e).__name__}: {e}"
            print(f"pi-server: loading failed: {self.load_error}", file=sys.stderr)

    def close(self) -> None:
        self.closed = True
        if self.engine is not None:
            self.engine.close()
        if self.llama is not None:
            self.llama.close()

    def require(self) -> None:
        if not self.ready.is_set():
            raise NotReadyError(f"the model failed to load: {self.load_error}" if self.load_error
                                else "the model is loading; retry shortly")


def _logit_bias(llama, body) -> Optional[Dict[int, float]]:
    if body.logit_bias is None:
        return None
    out: Dict[int, float] = {}
    for key, value in body.logit_bias.items():
        if body.logit_bias_type == "tokens":
            for t in llama.tokenize(key.encode("utf-8"), add_bos=False, special=True):
                out[t] = value
            continue
        try:
            out[int(key)] = value
        except ValueError:
            raise ValueError(f"logit_bias: {key!r} is not a token id (logit_bias_type "
                             f"'tokens' takes token texts)") from None
    return out


def _usage(usages) -> Dict[str, int]:
    """The usage of a response's choices: the prompt once, every choice's completion."""
    prompt = usages[0]["prompt_tokens"]
    completion = sum(u["completion_tokens"] for u in usages)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _merge_choices(results: list) -> Dict[str, Any]:
    """One response of n choices from the n single-choice responses (choice i: index i)."""
    if len(results) == 1:
        return results[0]
    out = dict(results[0])
    out["choices"] = [dict(r["choices"][0], index=i) for i, r in enumerate(results)]
    out["usage"] = _usage([r["usage"] for r in results])
    return out


def _common_kwargs(state: ServerState, view: RequestLlama, body, i: int) -> Dict[str, Any]:
    """The sampling arguments of choice i (its seed: the request's + i, so that seeded
    choices differ and each is reproducible)."""
    seed = body.seed + i if body.seed is not None else None
    kw = dict(max_tokens=body.max_tokens, temperature=body.temperature, top_p=body.top_p,
              min_p=body.min_p, stop=body.stop, stream=body.stream,
              presence_penalty=body.presence_penalty or 0.0,
              frequency_penalty=body.frequency_penalty or 0.0,
              repeat_penalty=body.repeat_penalty, top_k=body.top_k, seed=seed,
              mirostat_mode=body.mirostat_mode, mirostat_tau=body.mirostat_tau,
              mirostat_eta=body.mirostat_eta, model=body.model or state.model_name,
              logit_bias=_logit_bias(view, body))
    if body.grammar is not None:
        from llama_cpp import LlamaGrammar
        try:
            kw["grammar"] = LlamaGrammar.from_string(body.grammar, verbose=False)
        except Exception as e:
            raise ValueError(f"grammar: {e}") from None
    return kw


def _response_format(rf: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """OpenAI's response_format as llama-cpp-python's chat handlers take it: json_schema
    ({"json_schema": {"schema": ...}}) becomes json_object with that schema."""
    if rf is None:
        return None
    kind = rf.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return rf
    if kind == "json_schema":
        js = rf.get("json_schema")
        if not isinstance(js, dict) or not isinstance(js.get("schema"), dict):
            raise ValueError("response_format: json_schema needs {'json_schema': {'schema': "
                             "{...}}}")
        return {"type": "json_object", "schema": js["schema"]}
    raise ValueError(f"response_format: unknown type {kind!r} (text, json_object, json_schema)")


def create_app(settings: ServerSettings, *, load_in_background: bool = True) -> FastAPI:
    state = ServerState(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens,
                                   2 * (settings.parallel + settings.max_queue) + 16)
        state.outbox = Outbox(asyncio.get_running_loop())
        loader = threading.Thread(target=state.load, name="pi-server-load", daemon=True)
        loader.start()
        if not load_in_background:
            await anyio.to_thread.run_sync(loader.join)
        try:
            yield
        finally:
            state.closed = True
            await anyio.to_thread.run_sync(loader.join)
            state.close()
            state.pumps.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="pi_backend server", version="0.1.0", lifespan=lifespan)
    app.state.pi = state
    errors.install(app)

    async def authenticate(request: Request) -> None:
        key = settings.api_key
        if key is None:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, cred = auth.partition(" ")
        if scheme.lower() != "bearer" or cred.strip() != key:
            raise HTTPException(status_code=401, detail="Invalid API key")

    deps = [Depends(authenticate)]

    # ---- generation ----------------------------------------------------------------------------
    async def blocking(request: Request, views, fns) -> list:
        """fns (one per choice) each in a worker thread, together; the requests are cancelled
        if the client goes away."""
        async def watch():
            while True:
                await anyio.sleep(0.2)
                if await request.is_disconnected():
                    for v in views:
                        v.cancel()
                    return
        out: list = [None] * len(fns)
        errors: list = []

        async def one(i, fn):
            try:
                out[i] = await anyio.to_thread.run_sync(fn, abandon_on_cancel=True)
            except Exception as e:    # raised as itself, not inside the group's ExceptionGroup
                errors.append(e)
                for v in views:
                    v.cancel()
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            async with anyio.create_task_group() as work:
                for i, fn in enumerate(fns):
                    work.start_soon(one, i, fn)
            tg.cancel_scope.cancel()
        if errors:
            raise errors[0]
        return out

    def stream(views, its, route: str, include_usage: bool) -> EventSourceResponse:
        """The response's events: one worker thread per choice runs its whole generation (the
        request's Llama code) and hands each chunk, JSON-encoded, to the event loop through the
        outbox (one loop wakeup per batch of chunks, not one thread hop per chunk)."""
        box = _Stream()

        def pump(i: int, it) -> None:      # a worker thread
            last: Dict[str, Any] = {}
            try:
                for chunk in it:
                    if box.closed:
                        break
                    for c in chunk.get("choices", ()):
                        c["index"] = i
                    last = chunk
                    state.outbox.post(box, (_DATA, json.dumps(chunk)))
                state.outbox.post(box, (_END, last))
            except Exception as e:
                state.outbox.post(box, (_ERROR, e))
            finally:
                close = getattr(it, "close", None)
                if close is not None:
                    close()      # the generator's own cleanup, in the thread that ran it

        async def events():
            outcome = "cancelled"
            for i, it in enumerate(its):
                state.pumps.submit(pump, i, it)
            running, last = len(its), {}
            try:
                while running:
                    kind, value = await box.get()
                    if kind is _DATA:
                        yield {"data": value}
                    elif kind is _END:
                        running -= 1
                        last = value or last
                    else:     # an error after the headers: it goes in the stream
                        outcome = "error"
                        status = 400 if isinstance(value, (ValueError, TypeError)) else 500
                        body = json.loads(error_response(status, str(value)).body)
                        yield {"data": json.dumps(body)}
                        if status == 500:
                            traceback.print_exception(value)
                        return
                if include_usage:
                    yield {"data": json.dumps({
                        "id": last.get("id"), "object": last.get("object"),
                        "created": last.get("created"), "model": last.get("model"),
                        "choices": [], "usage": _usage([v.usage for v in views])})}
                yield {"data": "[DONE]"}
                outcome = "ok"
            finally:
                box.closed = True
                for v in views:
                    v.cancel()
                    state.engine.release()
                state.metrics.requests.labels(route, outcome).inc()
        return EventSourceResponse(events(), sep="\n")

    async def generate(request: Request, route: str, body, make: Callable) -> Any:
        """make(view, i): choice i's create_(chat_)completion on its own view; `n` choices,
        each its own sequence in the engine (a place each)."""
        state.require()
        engine = state.engine
        n = body.n or 1
        if n > engine.capacity:
            raise ValueError(f"n must be <= {engine.capacity} (--parallel + --max_queue), "
                             f"got {n}")
        held = 0
        try:
            for _ in range(n):
                engine.reserve()
                held += 1
        except QueueFullError:
            for _ in range(held):
                engine.release()
            state.metrics.rejected.inc()
            state.metrics.requests.labels(route, "rejected").inc()
            raise
        min_tokens = getattr(body, "min_tokens", 0)
        views = [RequestLlama(state.llama, engine, state.model_name, min_tokens=min_tokens)
                 for _ in range(n)]
        streaming = False
        outcome = "error"
        try:
            if settings.verbose:
                print(f"pi-server: {route} {request.client}", file=sys.stderr)
            if body.stream:
                its = await anyio.to_thread.run_sync(        # argument errors: 4xx
                    lambda: [iter(make(v, i)) for i, v in enumerate(views)])
                include = bool(body.stream_options and body.stream_options.include_usage)
                streaming = True
                return stream(views, its, route, include)
            results = await blocking(request, views,
                                     [lambda v=v, i=i: make(v, i) for i, v in enumerate(views)])
            outcome = "ok"
            return _merge_choices(results)
        finally:
            if not streaming:
                for v in views:
                    v.cancel()
                    engine.release()
                state.metrics.requests.labels(route, outcome).inc()

    @app.post("/v1/completions", dependencies=deps)
    async def completions(request: Request, body: CompletionRequest):
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise ValueError(f"one prompt per request, got {len(prompt)}")
            prompt = prompt[0]
        if body.best_of not in (None, 1):
            raise ValueError(f"best_of must be 1, got {body.best_of}")

        def make(view: RequestLlama, i: int):
            kw = _common_kwargs(state, view, body, i)
            return view.create_completion(prompt, suffix=body.suffix, echo=body.echo,
                                          logprobs=body.logprobs, **kw)
        return await generate(request, "completions", body, make)

    @app.post("/v1/chat/completions", dependencies=deps)
    async def chat_completions(request: Request, body: ChatCompletionRequest):
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        rf = _response_format(body.response_format)

        def make(view: RequestLlama, i: int):
            kw = _common_kwargs(state, view, body, i)
            return view.create_chat_completion(
                messages, functions=body.functions, function_call=body.function_call,
                tools=body.tools, tool_choice=body.tool_choice, response_format=rf,
                logprobs=body.logprobs, top_logprobs=body.top_logprobs, **kw)
        return await generate(request, "chat", body, make)

    # ---- the rest -------------------------------------------------------------------------------
    @app.post("/v1/embeddings", dependencies=deps)
    async def embeddings(body: EmbeddingRequest):
        state.require()
        inputs = [body.input] if isinstance(body.input, str) else list(body.input)
        if not inputs:
            raise ValueError("input: give a text or a non-empty list of texts")
        fut = state.engine.call(lambda: state.llama.create_embedding(
            inputs, model=body.model or state.model_name))
        result = await anyio.to_thread.run_sync(fut.result)
        state.metrics.requests.labels("embeddings", "ok").inc()
        return result

    @app.get("/v1/models", dependencies=deps)
    async def models():
        return {"object": "list",
                "data": [{"id": state.model_name, "object": "model", "owned_by": "me",
                          "permissions": []}]}

    @app.post("/extras/tokenize", dependencies=deps)
    def tokenize(body: TokenizeRequest):
        state.require()
        return {"tokens": state.llama.tokenize(body.input.encode("utf-8"), special=True)}

    @app.post("/extras/tokenize/count", dependencies=deps)
    def tokenize_count(body: TokenizeRequest):
        state.require()
        return {"count": len(state.llama.tokenize(body.input.encode("utf-8"), special=True))}

    @app.post("/extras/detokenize", dependencies=deps)
    def detokenize(body: DetokenizeRequest):
        state.require()
        return {"text": state.llama.detokenize(body.tokens).decode("utf-8", errors="replace")}

    @app.get("/health")
    async def health():
        if state.ready.is_set():
            return {"status": "ok", "model": state.model_name}
        if state.load_error:
            return JSONResponse(status_code=503,
                                content={"status": "error", "error": state.load_error})
        return JSONResponse(status_code=503, content={"status": "loading"})

    @app.get("/metrics")
    async def metrics():
        state.metrics.refresh(state.engine)
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app

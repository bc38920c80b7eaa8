"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}, with the HTTP
status the kind of failure calls for."""
from __future__ import annotations

from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from .engine import EngineError, QueueFullError

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 413: "invalid_request_error",
          429: "rate_limit_error", 503: "server_overloaded", 500: "server_error"}


class NotReadyError(RuntimeError):
    """The model is still loading (or failed to load)."""


def error_response(status: int, message: str, param: Optional[str] = None,
                   code: Optional[str] = None, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse(status_code=status, headers=headers,
                        content={"error": {"message": message,
                                           "type": _TYPES.get(status, "invalid_request_error"),
                                           "param": param, "code": code}})


def _validation_message(exc: RequestValidationError) -> tuple:
    parts, param = [], None
    for e in exc.errors():
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        if param is None and loc:
            param = ".".join(loc)
        parts.append(f"{'.'.join(loc) or 'body'}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request", param


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        msg, param = _validation_message(exc)
        return error_response(400, msg, param=param)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        return error_response(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(QueueFullError)
    async def _full(request: Request, exc: QueueFullError):
        return error_response(503, str(exc), code="queue_full", headers={"Retry-After": "1"})

    @app.exception_handler(NotReadyError)
    async def _loading(request: Request, exc: NotReadyError):
        return error_response(503, str(exc), code="model_loading", headers={"Retry-After": "1"})

    # what pi_backend.Llama raises for a bad argument (one line, checked before anything runs)
    for kind in (ValueError, TypeError, NotImplementedError):
        @app.exception_handler(kind)
        async def _bad(request: Request, exc: Exception):
            return error_response(400, str(exc))

    @app.exception_handler(EngineError)
    async def _engine(request: Request, exc: EngineError):
        return error_response(500, f"generation failed: {exc}")

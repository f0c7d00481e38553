"""How exceptions raised while serving become WebSocket error frames and HTTP error replies."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from ..errors import (
    CapacityReachedError,
    EnvClosedError,
    EpisodeInUseError,
    KernelEnvError,
    PoolExhaustedError,
    ResetNeeded,
    UnknownEpisodeError,
)
from ..wire import ErrorCode, error_payload

log = logging.getLogger(__name__)

# How exceptions reach a client: (exception, WebSocket error code, HTTP status). First match wins.
ERROR_TABLE: list[tuple[type[BaseException], ErrorCode, int]] = [
    (ValidationError, ErrorCode.VALIDATION_ERROR, 422),
    (UnknownEpisodeError, ErrorCode.SESSION_ERROR, 404),
    (CapacityReachedError, ErrorCode.CAPACITY_REACHED, 503),
    (EpisodeInUseError, ErrorCode.VALIDATION_ERROR, 409),
    (ResetNeeded, ErrorCode.SESSION_ERROR, 409),
    (EnvClosedError, ErrorCode.SESSION_ERROR, 409),
    (PoolExhaustedError, ErrorCode.EXECUTION_ERROR, 503),
    (ValueError, ErrorCode.VALIDATION_ERROR, 422),  # bad actions, ids in use, unknown tasks
    (LookupError, ErrorCode.VALIDATION_ERROR, 422),
    (KernelEnvError, ErrorCode.EXECUTION_ERROR, 500),
]


def classify_error(exc: BaseException) -> tuple[ErrorCode, int]:
    """The WebSocket error code and HTTP status for an exception raised while serving."""
    for kind, code, http_status in ERROR_TABLE:
        if isinstance(exc, kind):
            return code, http_status
    return ErrorCode.EXECUTION_ERROR, 500


def validation_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic's error list in plain JSON (no URLs, no exception objects, and not the input:
    a client's own data is not echoed back, and NaN in it would make the reply unsendable)."""
    return json.loads(exc.json(include_url=False, include_input=False))


async def request_validation_reply(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 for a request that fails its model, in FastAPI's own shape but without
    the input (its default handler echoes it, and answers 500 when it holds NaN)."""
    errors = [
        {key: error[key] for key in ("type", "loc", "msg") if key in error}
        for error in exc.errors()
    ]
    return JSONResponse({"detail": errors}, status_code=422)


def validation_message(exc: ValidationError, what: str) -> str:
    """A one-line summary such as ``invalid step data: code: Field required``."""
    problems = "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or '(root)'}: {error['msg']}"
        for error in exc.errors(include_url=False)
    )
    return f"invalid {what}: {problems}"


def error_frame_data(exc: Exception, what: str) -> dict[str, Any]:
    """The ``data`` of the error frame answering a frame whose handling raised ``exc``.

    Args:
        exc: The exception.
        what: What was being handled, for the message (e.g. ``"step data"``).
    """
    code, _ = classify_error(exc)
    if isinstance(exc, ValidationError):
        return error_payload(validation_message(exc, what), code, errors=validation_errors(exc))
    if code is ErrorCode.EXECUTION_ERROR:
        log.error("serving a %s failed", what, exc_info=exc)
    return error_payload(str(exc) or type(exc).__name__, code)


async def http_error_reply(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI exception handler: ``{"detail": message, "code": ...}`` with a fitting status."""
    code, http_status = classify_error(exc)
    if isinstance(exc, ValidationError):
        body = {
            "detail": validation_message(exc, "request"),
            "code": code.value,
            "errors": validation_errors(exc),
        }
    else:
        if http_status >= 500:
            log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        body = {"detail": str(exc), "code": code.value}
    return JSONResponse(body, status_code=http_status)

"""Every error answers `{"error": {"code", "message", "details"}}`, whatever raised it."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from api_shim import schemas
from bflow_tasks import db
from bflow_tasks.engine import domain_errors
from bflow_tasks.engine.definitions.language import DefinitionError

log = logging.getLogger(__name__)

# Engine refusals by class; the most specific class wins (they do not nest today).
ENGINE_STATUS: dict[type[domain_errors.BflowError], int] = {
    domain_errors.InvalidField: 422,
    domain_errors.InvalidInput: 400,
    domain_errors.Forbidden: 403,
    domain_errors.NotFound: 404,
    domain_errors.Conflict: 409,
}

# Codes for the HTTP errors Starlette/FastAPI raise themselves (unknown route, wrong method).
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    503: "unavailable",
}

# The methods a route may answer, in the order a 405's Allow header lists them.
ROUTED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


# What the OpenAPI schema says an error answers: the statuses every authenticated route can
# answer, then any other status of any route. Without them FastAPI documents its own
# `{"detail": [...]}` validation body, which the handlers below never send.
API_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {
        "model": schemas.ErrorRead,
        "description": "No API token, or one that is not valid",
        "headers": {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    },
    422: {
        "model": schemas.ErrorRead,
        "description": "The request is not valid: `details` lists every problem",
    },
    503: {
        "model": schemas.ErrorRead,
        "description": "The database or the broker is unavailable: nothing was accepted, retry",
        "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
    },
}
OTHER_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "default": {
        "model": schemas.ErrorRead,
        "description": "Any other error: 400, 403, 404, 409, 413, 415 where the route has them, 500",
    },
}


class ApiError(Exception):
    """An error the shim itself raises, with its HTTP status and stable code."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers


def error_response(
    status_code: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """Build the one error body every failure answers with."""
    body = {"error": {"code": code, "message": message, "details": details}}
    return JSONResponse(body, status_code=status_code, headers=headers)


def json_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """Turn a pydantic location into the path a client sees: `$.a.b[0]` for the body.

    Query, path and header parameters are named by where they came from
    (`query.page_size`, `header.idempotency-key`), since they are not in the JSON body.
    """
    where, *rest = loc or ("body",)
    path = "$" if where == "body" else str(where)
    for part in rest:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def install(app: FastAPI) -> None:
    """Register the handlers that turn every exception into the JSON error body."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(domain_errors.BflowError, _engine_error)
    app.add_exception_handler(DefinitionError, _definition_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(IntegrityError, _integrity_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(PoolTimeoutError, _database_error)
    app.add_exception_handler(Exception, _unexpected)


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status_code, exc.code, exc.message, exc.details, exc.headers)


async def _engine_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, domain_errors.BflowError)
    status = next((s for cls, s in ENGINE_STATUS.items() if isinstance(exc, cls)), 400)
    return error_response(status, exc.code, exc.message, exc.details)


async def _definition_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DefinitionError)
    details = [{"path": p.path, "message": p.message} for p in exc.problems]
    return error_response(422, "invalid_definition", "the workflow definition is not valid", details)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, "invalid_input", "the request is not valid", _problems(exc.errors()))


def _problems(errors: Any) -> list[dict[str, str]]:
    problems = []
    for error in errors:
        loc, message = tuple(error.get("loc", ())), error.get("msg", "")
        if error.get("type") == "json_invalid":
            # pydantic puts the character offset where a path would be.
            reason = error.get("ctx", {}).get("error", "")
            loc, message = ("body",), f"{message}: {reason} at character {loc[-1]}"
        problems.append({"path": json_path(loc), "message": message})
    return problems


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    if status == 400 and exc.__cause__ is not None:
        # FastAPI's own "error parsing the body" (bytes that are not UTF-8, JSON nested past
        # the parser's recursion limit): a malformed body, answered as every other one is.
        problem = {"path": "$", "message": _unparsable(exc.__cause__)}
        return error_response(422, "invalid_input", "the request is not valid", [problem])
    code = HTTP_CODES.get(status, "error")
    message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(status).phrase
    headers = getattr(exc, "headers", None)
    if status == 405:
        headers = {**(headers or {}), "Allow": _allowed_methods(request)}
    return error_response(status, code, message, None, headers)


def _unparsable(cause: BaseException) -> str:
    if isinstance(cause, UnicodeDecodeError):
        return f"the body is not valid UTF-8 ({cause.reason} at byte {cause.start})"
    if isinstance(cause, RecursionError):
        return "the body is nested too deeply to parse as JSON"
    return "the body could not be parsed as JSON"


def _allowed_methods(request: Request) -> str:
    """Every method the request's path answers, for a 405's Allow header (RFC 9110 §15.5.6).

    Starlette names the methods of the first route that matched the path only, where one path
    often has several routes (GET and POST /workflows); HEAD is answered wherever GET is (HeadAsGet).
    """
    allowed = [
        method
        for method in ROUTED_METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL
            for route in request.app.router.routes
        )
    ]
    if "GET" in allowed:
        allowed.insert(1, "HEAD")
    return ", ".join(allowed)


async def _integrity_error(_request: Request, exc: Exception) -> JSONResponse:
    # The unique constraints are the last line of defence: a race the engine's own checks
    # did not see (two identical requests at once) lands here. Nothing was written.
    log.info("integrity error answered as 409: %s", exc)
    return error_response(409, "conflict", "the request conflicts with one accepted concurrently")


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SQLAlchemyError)
    if not db.is_unavailable(exc):
        # The statement or its data is at fault (a CHECK constraint, a value out of range):
        # the same request would fail again, so a 503 would have the client retry forever.
        return await _unexpected(request, exc)
    # The database is down, restarting, overloaded or timed out on a lock, or every pooled
    # connection stayed busy past the pool timeout: the request's transaction did not
    # commit, so nothing was accepted; the client should retry.
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
    return error_response(
        503,
        "database_unavailable",
        "the database is unavailable; nothing was accepted, retry later",
        None,
        {"Retry-After": "5"},
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "an unexpected error occurred")

"""Request-scoped dependencies: one database session per request; JSON bodies only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api_shim.error_responses import ApiError
from bflow_tasks import db


async def get_session() -> AsyncIterator[Session]:
    """Yield a session from the one sessionmaker; write handlers commit it with `handover`.

    Whatever was not committed is rolled back: on an error, and at the end of a read. Async,
    because a sync dependency costs two hops to a worker thread per request, and making a
    session does no I/O; closing one that still holds a connection does (the rollback), so
    that part runs in a worker thread.
    """
    session = db.get_sessionmaker()()
    try:
        yield session
    finally:
        if session.in_transaction():
            await run_in_threadpool(session.close)
        else:
            session.close()


SessionDep = Annotated[Session, Depends(get_session)]


async def require_json_body(request: Request) -> None:
    """Refuse with 415 a body that is not sent as JSON, on a route that takes one (app-wide).

    FastAPI parses a body as JSON only under a JSON content type and otherwise hands the raw
    bytes to validation, which answers a puzzling 422 about a JSON object the client did
    send. An empty body passes: the route then says whether it needed one.
    """
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or route.body_field is None or not await request.body():
        return
    content_type = request.headers.get("content-type")
    if content_type is not None and _is_json(content_type):
        return
    given = f"'{content_type}'" if content_type else "none"
    raise ApiError(
        415,
        "unsupported_media_type",
        f"the request body must be JSON sent with Content-Type: application/json (got {given})",
        details={"content_type": content_type},
    )


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    kind, _, subtype = media_type.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))

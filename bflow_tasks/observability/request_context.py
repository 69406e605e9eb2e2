"""The shim's side: a request id in and out, the request's log context, and its metrics."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bflow_tasks.observability import context, prometheus_metrics

HEADER = "X-Request-ID"
_HEADER_KEY = HEADER.lower().encode()
# Requests that matched no route (404s, bodies refused before routing) share one label, so
# that a scan of random paths cannot create unbounded series.
UNROUTED = "<unrouted>"


class RequestContext:
    """Pure ASGI middleware: take or make X-Request-ID, bind it for the request, count the request.

    The id becomes the request's correlation id: log lines carry it, every Celery message
    published while handling the request carries it (bflow_tasks.observability.propagation),
    and the response returns it.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = context.accept_request_id(_header(scope, _HEADER_KEY))
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (_HEADER_KEY, request_id.encode())],
                }
            await send(message)

        started = time.perf_counter()
        token = context.enter(correlation_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            # Starlette's outermost error middleware logs and answers the 500 after this
            # returns: leave the context bound (it dies with the request's task) so that its
            # log line still carries the request id.
            prometheus_metrics.observe_request(
                scope["method"], route_template(scope), 500, time.perf_counter() - started
            )
            raise
        prometheus_metrics.observe_request(
            scope["method"], route_template(scope), status, time.perf_counter() - started
        )
        context.leave(token)


def route_template(scope: Scope) -> str:
    """The matched route's path template (`/api/v1/runtimes/{runtime_id}`), never the raw path."""
    template = getattr(scope.get("route"), "path", None)
    if not isinstance(template, str):
        return UNROUTED
    # Recent FastAPI keeps included routers nested: the matched route knows only its own part
    # (`/runtimes/{runtime_id}`). Put back the prefix it is mounted under: the leading
    # segments of the path that the template does not cover (a fixed set, as the route matched).
    path = str(scope.get("path", ""))
    extra = path.rstrip("/").count("/") - template.rstrip("/").count("/")
    if extra > 0:
        template = "/".join(path.split("/")[: extra + 1]) + template
    return template


async def bind_path_ids(request: Request) -> None:
    """Bind the runtime or approval task a route names (an app-wide dependency)."""
    params = request.path_params
    context.bind(runtime_id=params.get("runtime_id"), bflow_task_id=params.get("task_id"))


def _header(scope: Scope, key: bytes) -> str | None:
    for name, value in scope.get("headers", []):
        if name == key:
            return value.decode("latin-1")
    return None

"""Answer HEAD wherever GET is answered: the same status and headers, no body (RFC 9110 §9.3.2)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    """Pure ASGI middleware: run a HEAD request as a GET and send its response without the body.

    Load balancers and uptime checkers probe with HEAD. Starlette's routes answer it wherever
    they answer GET; FastAPI's answer 405. Doing it here covers every GET route at once and
    keeps HEAD out of the OpenAPI schema (no second operation per path). A path without GET
    answers HEAD as it answers GET: 405 naming its methods, or 404.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        # A copy: the server reads the method from its own scope to know that no body follows.
        as_get = {**scope, "method": "GET"}

        async def send_head_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return  # a streamed body: only its end goes out, empty
                message = {**message, "body": b""}
            await send(message)  # Content-Length stays: it is the length GET would send

        try:
            await self.app(as_get, receive, send_head_only)
        finally:
            # Routing records what it matched (the route...) in the scope it was given; outer
            # middleware reads it from the request's own scope (RequestContext labels metrics by route).
            scope.update((key, value) for key, value in as_get.items() if key != "method")

"""A real HTTP webhook receiver on loopback that verifies every request like a consumer would."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError


@dataclass(frozen=True)
class Received:
    """One request as it arrived: path, headers (lower-cased), body bytes, and whether it verified."""

    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    at: float

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.body)


# What to answer: a status code, or (status, headers, body, delay seconds).
Reply = int | tuple[int, dict[str, str], bytes, float]


class Receiver:
    """A ThreadingHTTPServer in a thread; `reply` decides each answer, `secrets` verify each request."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.secrets: list[str] = []
        self.reply: Callable[[Received], Reply] = lambda _request: 200
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        """Listen (again) on the same port; the first start picks a free one."""
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        # A short poll interval: stopping waits for the serving loop's next look (0.5 s by default).
        threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening: connections are refused until `start` again."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def requests(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def first_of_each(self) -> list[Received]:
        """The requests in arrival order with duplicates (the same webhook-id again) dropped."""
        seen: set[str] = set()
        unique = []
        for request in self.requests():
            if request.webhook_id not in seen:
                seen.add(request.webhook_id)
                unique.append(request)
        return unique

    def _verify(self, body: bytes, headers: dict[str, str]) -> bool:
        """Every configured secret must verify the request on its own (a rotation sends both)."""
        if not self.secrets:
            return True
        for secret in self.secrets:
            try:
                Webhook(secret).verify(body, headers)
            except WebhookVerificationError:
                return False
        return True

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                request = Received(self.path, headers, body, receiver._verify(body, headers), time.time())
                reply = receiver.reply(request) if request.verified else 401
                status, extra, answer, delay = reply if isinstance(reply, tuple) else (reply, {}, b"ok", 0.0)
                with receiver._lock:
                    receiver.received.append(request)
                time.sleep(delay)
                try:
                    self.send_response(status)
                    for name, value in extra.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except OSError:
                    pass  # the sender gave up waiting (a timeout test)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

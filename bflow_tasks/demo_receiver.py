"""The demo's own webhook consumer: a loopback HTTP server that verifies every delivery."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook


class Receiver:
    """Receive webhooks on 127.0.0.1, verify each with the endpoint's secret, keep them in order."""

    def __init__(self) -> None:
        self.secret: str | None = None
        self.events: list[dict[str, Any]] = []
        self.rejected = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.accept(body, {k.lower(): v for k, v in self.headers.items()})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:  # keep the demo's output readable
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/bflow-webhooks"
        # Polled every 0.05 s rather than 0.5 s, so the demo ends without waiting on it.
        self._thread = threading.Thread(
            target=self.server.serve_forever, args=(0.05,), daemon=True, name="demo-receiver"
        )

    def accept(self, body: bytes, headers: dict[str, str]) -> None:
        """Verify one delivery (signature, timestamp) and record its event, once per webhook-id."""
        try:
            event = Webhook(self.secret or "").verify(body, headers)
        except Exception:  # a forged or stale delivery: count it, keep nothing
            with self._lock:
                self.rejected += 1
            return
        with self._lock:
            if all(seen["webhook_id"] != headers["webhook-id"] for seen in self.events):
                self.events.append({**event, "webhook_id": headers["webhook-id"]})

    def in_order(self) -> bool:
        """True when every runtime's events arrived in increasing `sequence`."""
        last: dict[str, int] = {}
        for event in self.events:
            runtime_id, sequence = event["data"].get("runtime_id"), event.get("sequence") or 0
            if runtime_id is not None and sequence <= last.get(runtime_id, 0):
                return False
            last[runtime_id] = sequence
        return True

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

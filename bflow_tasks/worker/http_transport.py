"""One webhook POST over requests: pinned to a checked address, no redirects, bounded in time and size.

The URL keeps its host name, so the Host header, TLS SNI and certificate verification all use
it; only the TCP connection is made to the address `ssrf.resolve` checked (a urllib3
connection whose `_new_conn` connects there), so the host is never looked up a second time.
"""

from __future__ import annotations

import email.utils
import socket
import threading
import time
from datetime import UTC, datetime
from typing import Any, cast

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, LocationParseError, NewConnectionError
from urllib3.util import connection, parse_url

from bflow_tasks.engine import clock
from bflow_tasks.engine.webhooks.address_policy import SCHEMES, Target
from bflow_tasks.engine.webhooks.leases import Outcome

MAX_RESPONSE_BYTES = 2048
USER_AGENT = "Bflow-Webhooks/0.1"


def post(
    url: str,
    *,
    target: Target,
    body: bytes,
    headers: dict[str, str],
    timeout: float,
    connect_timeout: float,
    verify: bool | str = True,
) -> Outcome:
    """POST `body` to `url` via `target.address`; never raise, describe what happened."""
    mismatch = _mismatch(url, target)
    if mismatch is not None:
        # The host requests would put in Host and SNI is not the one whose address was
        # checked: sending would make the checked address speak for another host.
        return Outcome(attempted_at=clock.now(), latency_ms=0, error_class="UnsafeUrl", error=mismatch)
    pin = _Pin(target.address, target.port)
    # Socket timeouts bound each read; the watchdog bounds the whole attempt.
    watchdog = threading.Timer(timeout, pin.expire)
    watchdog.daemon = True
    attempted_at, started = clock.now(), time.monotonic()
    watchdog.start()
    try:
        with requests.Session() as http:
            http.trust_env = False  # no proxies from the environment: they would bypass the pin
            http.mount("http://", _PinnedAdapter(pin))
            http.mount("https://", _PinnedAdapter(pin))
            response = http.post(
                url,
                data=body,
                headers={**headers, "Content-Type": "application/json", "User-Agent": USER_AGENT},
                timeout=(min(connect_timeout, timeout), timeout),
                allow_redirects=False,
                stream=True,
                verify=verify,
            )
            try:
                text = response.raw.read(MAX_RESPONSE_BYTES, decode_content=True)
            finally:
                response.close()
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        error_class = "Timeout" if pin.expired else type(exc).__name__
        return Outcome(
            attempted_at=attempted_at, latency_ms=_ms(started), error_class=error_class, error=str(exc)
        )
    finally:
        watchdog.cancel()
    if pin.expired:
        # Cut off mid-response: whatever status line arrived does not count.
        return Outcome(
            attempted_at=attempted_at,
            latency_ms=_ms(started),
            error_class="Timeout",
            error=f"the response took longer than {timeout} s",
        )
    return Outcome(
        attempted_at=attempted_at,
        latency_ms=_ms(started),
        status_code=response.status_code,
        response_body=text.decode("utf-8", "replace"),
        retry_after=retry_after_seconds(response.headers.get("Retry-After")),
    )


def _mismatch(url: str, target: Target) -> str | None:
    """Say how urllib3's reading of `url` (the one requests sends with) differs from `target`'s."""
    host = f"[{target.host}]" if ":" in target.host else target.host
    try:
        sent = parse_url(url)
        checked = parse_url(f"{target.scheme}://{host}:{target.port}/")
    except LocationParseError as exc:
        return f"the HTTP client cannot parse the URL ({exc})"
    sent_at = (sent.scheme, sent.host, sent.port or SCHEMES.get(sent.scheme or "", 0))
    checked_at = (checked.scheme, checked.host, checked.port)
    if sent_at != checked_at:
        return f"the HTTP client would send to {sent.netloc}, not to the host checked, {checked.netloc}"
    return None


def retry_after_seconds(value: str | None) -> float | None:
    """Parse Retry-After (seconds or an HTTP date) into seconds from now."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


class _Pin:
    """The checked address connections must go to, and their sockets, cut when time is up."""

    def __init__(self, address: str, port: int):
        self.address = address
        self.port = port
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                sock.shutdown(socket.SHUT_RDWR)

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                try:
                    # Wakes up a read blocked on this socket (TLS sockets share its descriptor).
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class _PinnedConnectionMixin:
    """Connect to the pinned address instead of resolving the host (urllib3's `_new_conn`)."""

    host: str
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any

    def __init__(self, *args: Any, pin: _Pin, **kwargs: Any):
        self._pin = pin
        super().__init__(*args, **kwargs)

    def _new_conn(self) -> socket.socket:
        try:
            sock = connection.create_connection(
                (self._pin.address, self._pin.port),
                self.timeout,
                source_address=self.source_address,
                socket_options=self.socket_options,
            )
        except TimeoutError as exc:
            raise ConnectTimeoutError(
                self, f"Connection to {self.host} ({self._pin.address}) timed out"
            ) from exc
        except OSError as exc:
            raise NewConnectionError(
                cast(HTTPConnection, self), f"Failed to establish a new connection: {exc}"
            ) from exc
        self._pin.watch(sock)
        return sock


class _PinnedHTTPConnection(_PinnedConnectionMixin, HTTPConnection):
    pass


class _PinnedHTTPSConnection(_PinnedConnectionMixin, HTTPSConnection):
    pass


class _PinnedAdapter(HTTPAdapter):
    """A requests adapter whose connection pools open pinned connections only."""

    def __init__(self, pin: _Pin):
        self._pin = pin
        super().__init__(max_retries=0)

    def get_connection_with_tls_context(
        self, request: Any, verify: Any, proxies: Any = None, cert: Any = None
    ) -> HTTPConnectionPool:
        pool = super().get_connection_with_tls_context(request, verify, proxies=None, cert=cert)
        secure = isinstance(pool, HTTPSConnectionPool)
        pool.ConnectionCls = _PinnedHTTPSConnection if secure else _PinnedHTTPConnection
        pool.conn_kw["pin"] = self._pin
        return pool

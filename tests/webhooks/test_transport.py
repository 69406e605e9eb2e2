"""The HTTP attempt: pinned to the checked address (Host, SNI and certificate still the host name),
redirects refused, the response read at most 2 KB, the whole attempt bounded in time."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from email.utils import format_datetime
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bflow_tasks.engine.webhooks.address_policy import Target
from bflow_tasks.engine.webhooks.leases import Outcome
from bflow_tasks.worker import http_transport
from tests.webhooks.receiver import Receiver


def _post(url: str, address: str, *, port: int, timeout: float = 2.0, verify: bool | str = True) -> Outcome:
    scheme, host = url.split("://")[0], url.split("://")[1].split(":")[0]
    return http_transport.post(
        url,
        target=Target(scheme=scheme, host=host, port=port, address=address),
        body=b'{"type":"test"}',
        headers={"webhook-id": "msg_1"},
        timeout=timeout,
        connect_timeout=1.0,
        verify=verify,
    )


def test_the_connection_goes_to_the_checked_address_with_the_original_host_header(receiver: Receiver) -> None:
    # `hook.invalid` cannot resolve: the request arriving proves there was no second lookup.
    outcome = _post(f"http://hook.invalid:{receiver.port}/hook", "127.0.0.1", port=receiver.port)
    assert outcome.ok and outcome.status_code == 200 and outcome.error_class is None
    (request,) = receiver.requests()
    assert request.headers["host"] == f"hook.invalid:{receiver.port}"
    assert request.headers["content-type"] == "application/json" and request.body == b'{"type":"test"}'
    assert request.headers["webhook-id"] == "msg_1"


def test_a_url_the_http_client_reads_as_another_host_or_port_is_not_sent(receiver: Receiver) -> None:
    # The check saw hook.invalid (or the receiver's port); urllib3 would send with another
    # Host or port. Nothing is sent, not even to the checked address.
    port = receiver.port
    for url in (f"http://127.0.0.1:{port}\\@hook.invalid/hook", f"http://hook.invalid:{port + 1}/hook"):
        outcome = http_transport.post(
            url,
            target=Target(scheme="http", host="hook.invalid", port=port, address="127.0.0.1"),
            body=b"{}",
            headers={},
            timeout=2.0,
            connect_timeout=1.0,
        )
        assert outcome.error_class == "UnsafeUrl" and outcome.status_code is None, url
        assert "not to the host checked, hook.invalid" in (outcome.error or ""), outcome.error
    assert receiver.requests() == []


def test_redirects_are_not_followed_and_count_as_failures(receiver: Receiver) -> None:
    receiver.reply = lambda _r: (302, {"Location": f"http://127.0.0.1:{receiver.port}/elsewhere"}, b"", 0.0)
    outcome = _post(receiver.url, "127.0.0.1", port=receiver.port)
    assert outcome.status_code == 302 and not outcome.ok
    assert [r.path for r in receiver.requests()] == ["/hook"]


def test_at_most_2_kb_of_the_response_is_read(receiver: Receiver) -> None:
    receiver.reply = lambda _r: (200, {}, b"x" * 100_000, 0.0)
    outcome = _post(receiver.url, "127.0.0.1", port=receiver.port)
    assert outcome.ok and outcome.response_body == "x" * http_transport.MAX_RESPONSE_BYTES


def test_retry_after_is_read_from_the_response(receiver: Receiver) -> None:
    receiver.reply = lambda _r: (429, {"Retry-After": "7"}, b"slow down", 0.0)
    outcome = _post(receiver.url, "127.0.0.1", port=receiver.port)
    assert outcome.status_code == 429 and outcome.retry_after == 7.0 and outcome.response_body == "slow down"
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=90)
    assert http_transport.retry_after_seconds(format_datetime(later, usegmt=True)) == pytest.approx(90, abs=2)
    assert http_transport.retry_after_seconds("soon") is None


def test_a_refused_connection_is_an_error_outcome(receiver: Receiver) -> None:
    port = receiver.port
    receiver.stop()
    outcome = _post(f"http://127.0.0.1:{port}/hook", "127.0.0.1", port=port)
    assert outcome.status_code is None and outcome.error_class == "ConnectionError"


def test_a_slow_answer_times_out(receiver: Receiver) -> None:
    receiver.reply = lambda _r: (200, {}, b"late", 3.0)
    started = time.monotonic()
    outcome = _post(receiver.url, "127.0.0.1", port=receiver.port, timeout=0.5)
    assert outcome.error_class in ("Timeout", "ReadTimeout") and not outcome.ok
    assert time.monotonic() - started < 1.5


@pytest.fixture
def dribbler() -> Iterator[int]:
    """A server that answers one header byte every 50 ms: no single read ever times out."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        connection, _ = listener.accept()
        connection.recv(65536)
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 400:
            if stop.is_set():
                break
            try:
                connection.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.05)
        connection.close()

    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()[1]
    stop.set()
    listener.close()


def test_the_whole_attempt_is_bounded_even_when_every_read_is_quick(dribbler: int) -> None:
    started = time.monotonic()
    outcome = _post(f"http://127.0.0.1:{dribbler}/hook", "127.0.0.1", port=dribbler, timeout=1.0)
    elapsed = time.monotonic() - started
    assert outcome.error_class == "Timeout" and outcome.status_code is None
    assert 0.9 < elapsed < 2.0


# --- TLS: the pinned connection still checks the certificate against the URL's host -------


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path, list[str]]]:
    """An HTTPS receiver on 127.0.0.1 whose certificate (from a test CA) names only hook.test."""
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Bflow test CA")])
    now = dt.datetime.now(dt.UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hook.test")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("hook.test")]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = tmp_path / "ca.pem", tmp_path / "leaf.pem", tmp_path / "leaf.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server_names: list[str] = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    context.sni_callback = lambda _sock, name, _ctx: server_names.append(name) and None  # type: ignore[func-returns-value]
    receiver = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), receiver._handler())
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    yield server.server_address[1], ca_path, server_names
    server.shutdown()
    server.server_close()


def test_tls_uses_the_host_name_for_sni_and_certificate_checks(
    tls_server: tuple[int, Path, list[str]],
) -> None:
    port, ca_path, server_names = tls_server
    outcome = _post(f"https://hook.test:{port}/hook", "127.0.0.1", port=port, verify=str(ca_path))
    assert outcome.ok, outcome
    assert server_names == ["hook.test"]
    # The same address under a name the certificate does not cover is refused.
    wrong = _post(f"https://other.test:{port}/hook", "127.0.0.1", port=port, verify=str(ca_path))
    assert wrong.error_class == "SSLError" and not wrong.ok
    # And a certificate from an unknown CA is refused with the default trust store.
    untrusted = _post(f"https://hook.test:{port}/hook", "127.0.0.1", port=port)
    assert untrusted.error_class == "SSLError"

"""GET /api/v1/health against real processes: all up, the broker unreachable, a queue unserved."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from tests.e2e.stack import Stack, free_port, wait_until
from tests.ops.conftest import Ops

pytestmark = [pytest.mark.services, pytest.mark.timeout(120)]

CHECKS = {"database", "broker", "workers.workflow", "workers.webhooks", "workers.maintenance"}


def health(base_url: str, path: str = "/api/v1/health") -> requests.Response:
    return requests.get(f"{base_url}{path}", timeout=15)


@pytest.fixture
def shim_without_broker(ops: Ops) -> Iterator[str]:
    """A second shim on the same database whose broker URL points at a closed port."""
    env = {**ops.stack.env, "BFLOW_BROKER_URL": f"redis://127.0.0.1:{free_port()}/2"}
    other = Stack("redis", ops.stack.workdir, env)
    port = free_port()
    other.add(
        "shim-no-broker",
        [sys.executable, "-m", "uvicorn", "api_shim.app:app", "--host", "127.0.0.1", "--port", str(port)],
    )
    base_url = f"http://127.0.0.1:{port}"

    def answering() -> bool:
        other.check_alive()
        try:
            return health(base_url).status_code in (200, 503)
        except requests.ConnectionError:
            return False

    try:
        wait_until(answering, "the broker-less shim to answer", timeout=30, interval=0.2)
        yield base_url
    finally:
        other.stop()


def test_everything_up_is_200_with_a_latency_per_check_and_the_workers_per_queue(ops: Ops) -> None:
    response = health(ops.stack.base_url)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == CHECKS
    for name, check in body["checks"].items():
        assert check["status"] == "ok" and check["latency_ms"] >= 0, name
    assert any(w.startswith("ops@") for w in body["workers"]["workflow"])
    assert any(w.startswith("ops@") for w in body["workers"]["webhooks"])
    assert [w.split("@")[0] for w in body["workers"]["maintenance"]] == ["maintenance"]


@pytest.mark.parametrize("path", ["/api/v1/health", "/api/v1/health/ready"])
def test_head_gets_the_status_and_headers_of_get_and_not_one_byte_of_body(ops: Ops, path: str) -> None:
    """On one connection, a HEAD then a GET: the GET's answer must follow the HEAD's headers at once."""
    where = urlsplit(ops.stack.base_url)
    request = f"{{}} {path} HTTP/1.1\r\nHost: {where.netloc}\r\n{{}}\r\n"
    with socket.create_connection((where.hostname, where.port), timeout=15) as connection:
        connection.sendall(request.format("HEAD", "").encode())
        connection.sendall(request.format("GET", "Connection: close\r\n").encode())
        answer = b"".join(iter(lambda: connection.recv(65536), b""))
    head, after_head = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 "), answer
    assert b"\r\ncontent-type: application/json" in head.lower()
    assert int(head.lower().split(b"\r\ncontent-length: ")[1].split(b"\r\n")[0]) > 0
    assert after_head.startswith(b"HTTP/1.1 200 "), answer  # the GET's answer: HEAD sent no body


def test_a_probe_storm_is_answered_from_one_check(ops: Ops) -> None:
    with ThreadPoolExecutor(max_workers=16) as pool:
        bodies: list[dict[str, Any]] = list(pool.map(lambda _: health(ops.stack.base_url).json(), range(32)))
    # BFLOW_HEALTH_CACHE_SECONDS=0.3 here: 32 probes at once share at most a few checks.
    assert len({body["checked_at"] for body in bodies}) <= 3


def test_an_unreachable_broker_is_503_naming_the_broker(shim_without_broker: str) -> None:
    response = health(shim_without_broker)
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"]["status"] == "ok"
    assert body["checks"]["broker"]["status"] == "error"
    assert body["error"]["details"] == {"failing": ["broker"]}
    assert health(shim_without_broker, "/api/v1/health/ready").status_code == 503


def test_a_queue_without_a_live_worker_is_503_naming_that_queue(ops: Ops) -> None:
    maintenance = ops.stack.procs["worker-maintenance"]
    maintenance.stop()
    try:
        # (A Response is falsy when it is an error: wait for its body.)
        body = wait_until(
            lambda: (r := health(ops.stack.base_url)).status_code == 503 and r.json(),
            "/health to notice the maintenance worker is gone",
            timeout=20,
            interval=0.3,
        )
        assert body["error"]["details"] == {"failing": ["workers.maintenance"]}
        assert "maintenance" in body["checks"]["workers.maintenance"]["error"]
        assert body["checks"]["workers.workflow"]["status"] == "ok"
        assert body["workers"]["maintenance"] == []
        # The shim can still admit work: load balancers keep it (its readiness has no workers).
        ready = health(ops.stack.base_url, "/api/v1/health/ready")
        assert ready.status_code == 200
        assert set(ready.json()["checks"]) == {"database", "broker"}
    finally:
        maintenance.start()  # the rest of the suite finds the stack as it was

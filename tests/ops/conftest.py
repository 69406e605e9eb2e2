"""One MariaDB + Redis stack for the whole ops suite, shaped like docker-compose.yml.

Two workers (`workflow,webhooks` on prefork and `maintenance` on its own), the shim, JSON
logs and one Prometheus multiprocess directory shared by all of them. Redis databases 2
(broker) and 3 (results) belong to this suite.
"""

from __future__ import annotations

import sys
from collections.abc import Generator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests import services
from tests.e2e.stack import (
    E2EClient,
    Stack,
    Tenant,
    clean_env,
    flush_redis,
    free_port,
    fresh_mysql_database,
    suffix,
    wait_healthy,
)
from tests.webhooks.receiver import Receiver

BROKER_DB, RESULTS_DB = 2, 3


def redis_db(number: int) -> str:
    """The test Redis server's database `number`."""
    parts = urlsplit(services.redis_url())
    return urlunsplit((parts.scheme, parts.netloc, f"/{number}", parts.query, parts.fragment))


def celery(*args: str) -> list[str]:
    """`celery -A bflow_tasks ...` with this venv's interpreter."""
    return [sys.executable, "-m", "celery", "-A", "bflow_tasks", *args]


def worker_argv(queues: str, name: str, *pool: str) -> list[str]:
    return celery("worker", "-Q", queues, *pool, "--loglevel=INFO", "-n", f"{name}@%h")


@dataclass
class Ops:
    """The running stack, a tenant with its client, and a webhook receiver it delivers to."""

    stack: Stack
    tenant: Tenant
    client: E2EClient
    receiver: Receiver
    metrics_dir: Path

    def log(self, process: str) -> Path:
        return self.stack.procs[process].log_path


@pytest.fixture(scope="package")
def ops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ops]:
    workdir = tmp_path_factory.mktemp("ops")
    metrics_dir = workdir / "prometheus"
    metrics_dir.mkdir()
    with ExitStack() as cleanup:
        database_url = fresh_mysql_database("bflow_ops" + suffix())
        broker_url, results_url = redis_db(BROKER_DB), redis_db(RESULTS_DB)
        for url in (broker_url, results_url):
            flush_redis(url)
            cleanup.callback(flush_redis, url)
        env = clean_env(
            {
                "BFLOW_DATABASE_URL": database_url,
                "BFLOW_BROKER_URL": broker_url,
                "BFLOW_RESULT_BACKEND": results_url,
                "BFLOW_LOG_FORMAT": "json",
                "BFLOW_WEBHOOK_ALLOW_PRIVATE": "true",
                "BFLOW_HEALTH_CACHE_SECONDS": "0.3",
                "BFLOW_METRICS_CACHE_SECONDS": "0",
                "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            }
        )
        stack = Stack("redis", workdir, env, broker_url=broker_url)
        cleanup.callback(stack.stop)
        stack.bflow("db", "upgrade")
        stack.add("worker", worker_argv("workflow,webhooks", "ops", "-c", "2"))
        # Prefork like compose: its main process answers /health's broadcast even mid-task
        # (a solo pool answers only between tasks).
        stack.add("worker-maintenance", worker_argv("maintenance", "maintenance", "-c", "1"))
        port = free_port()
        stack.base_url = f"http://127.0.0.1:{port}"
        uvicorn = [sys.executable, "-m", "uvicorn", "api_shim.app:app", "--host", "127.0.0.1"]
        stack.add("shim", [*uvicorn, "--port", str(port)])
        tenant = stack.create_tenant("Ops")  # while the processes start
        receiver = Receiver().start()
        cleanup.callback(receiver.stop)
        wait_healthy(stack)
        client = stack.client(tenant)
        client.call("POST", "/webhooks", 201, json={"url": receiver.url, "events": ["*"]})
        yield Ops(stack, tenant, client, receiver, metrics_dir)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    ops = getattr(item, "funcargs", {}).get("ops")
    if report.failed and isinstance(ops, Ops):
        report.sections.append(("ops stack: process logs", ops.stack.logs(40)))
    return report

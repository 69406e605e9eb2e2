"""Helpers for the webhook tests: waiting, reading deliveries, registering endpoints."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from celery.contrib.testing.worker import TestWorkController, start_worker
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from bflow_tasks.engine.webhooks import endpoint_secrets, endpoints, signatures
from bflow_tasks.models import RuntimeEvent, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from bflow_tasks.worker import celery_app, embedded
from tests.api.helpers import API, Tenant

QUEUES = ["workflow", "webhooks", "maintenance"]


class PromptWorker(TestWorkController):
    """Celery's test worker, stopping within 0.1 s as the embedded one does (not after 1-4 s)."""

    __test__ = False

    def on_consumer_ready(self, consumer: Any) -> None:
        embedded.stop_promptly(consumer)
        super().on_consumer_ready(consumer)


@contextmanager
def in_process_worker() -> Iterator[None]:
    """A real Celery worker (solo pool, every queue) in a thread, on the in-process broker."""
    with start_worker(
        celery_app.app,
        pool="solo",
        perform_ping_check=False,
        queues=QUEUES,
        loglevel="WARNING",
        shutdown_timeout=30,
        WorkController=PromptWorker,
        **embedded.PROMPT_STOP,
    ):
        yield


def wait_until(predicate: Callable[[], Any], *, timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll until `predicate()` is truthy and return it; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def deliveries(engine: Engine, **where: Any) -> list[WebhookDelivery]:
    """Deliveries matching column values, in stream order."""
    query = select(WebhookDelivery).order_by(
        WebhookDelivery.runtime_id, WebhookDelivery.sequence, WebhookDelivery.created_at
    )
    for column, value in where.items():
        query = query.where(getattr(WebhookDelivery, column) == value)
    with Session(engine) as session:
        return list(session.scalars(query))


def attempts(engine: Engine, delivery_id: str) -> list[WebhookAttempt]:
    """A delivery's attempts, oldest first."""
    with Session(engine) as session:
        return list(
            session.scalars(
                select(WebhookAttempt)
                .where(WebhookAttempt.delivery_id == delivery_id)
                .order_by(WebhookAttempt.attempted_at)
            )
        )


def endpoint(engine: Engine, endpoint_id: str) -> WebhookEndpoint:
    with Session(engine) as session:
        return session.get_one(WebhookEndpoint, endpoint_id)


def register(client: TestClient, tenant: Tenant, url: str, events: list[str] | None = None) -> dict[str, Any]:
    """Register an endpoint over HTTP; return the 201 body (with its secret)."""
    response = client.post(
        f"{API}/webhooks", json={"url": url, "events": events or ["*"]}, headers=tenant.headers
    )
    assert response.status_code == 201, response.text
    return response.json()


def add_endpoint(
    session_factory: sessionmaker[Session], tenant_id: str, url: str, events: list[str] | None = None
) -> tuple[str, str]:
    """Register an endpoint through the engine; return its id and secret."""
    secret = signatures.new_secret()
    with session_factory.begin() as session:
        row = endpoints.create_endpoint(
            session,
            tenant_id=tenant_id,
            url=url,
            events=events or ["*"],
            secret_encrypted=endpoint_secrets.encrypt(secret),
        )
        return row.id, secret


def task_id(client: TestClient, tenant: Tenant, runtime_id: str, user: str) -> str:
    """Wait for the user's pending task on the runtime (the worker opens stages) and return its id."""

    def find() -> str | None:
        response = client.get(
            f"{API}/tasks",
            params={"runtime_id": runtime_id, "assignee": user, "status": "pending"},
            headers=tenant.headers,
        )
        results = response.json()["results"]
        return results[0]["id"] if results else None

    found: str = wait_until(find, what=f"{user}'s task on {runtime_id}")
    return found


def act(
    client: TestClient, tenant: Tenant, runtime_id: str, user: str, action: str = "approve", **extra: Any
) -> None:
    """Act on the user's task over HTTP (asserting 202)."""
    body = {"action": action, "actor": user, **extra}
    url = f"{API}/tasks/{task_id(client, tenant, runtime_id, user)}/action"
    response = client.post(url, json=body, headers=tenant.headers)
    assert response.status_code == 202, response.text


def wait_for_status(client: TestClient, tenant: Tenant, runtime_id: str, status: str) -> None:
    """Wait until the runtime reaches `status`."""
    url = f"{API}/runtimes/{runtime_id}"
    wait_until(
        lambda: client.get(url, headers=tenant.headers).json()["status"] == status,
        what=f"runtime {runtime_id} to be {status}",
    )


def wait_for_deliveries(
    engine: Engine, endpoint_id: str, *, including: str | None = None, timeout: float = 30.0
) -> list[WebhookDelivery]:
    """Wait until the endpoint has nothing left to send (and has an `including` event, if given)."""

    def settled() -> list[WebhookDelivery] | None:
        rows = deliveries(engine, endpoint_id=endpoint_id)
        if including is not None and including not in {r.event_type for r in rows}:
            return None
        return rows if rows and all(r.status in ("delivered", "failed") for r in rows) else None

    rows: list[WebhookDelivery] = wait_until(settled, timeout=timeout, what=f"deliveries of {endpoint_id}")
    return rows


def tenant_events(engine: Engine, tenant_id: str) -> list[RuntimeEvent]:
    """The tenant's runtime events, by runtime and sequence."""
    with Session(engine) as session:
        return list(
            session.scalars(
                select(RuntimeEvent)
                .where(RuntimeEvent.tenant_id == tenant_id)
                .order_by(RuntimeEvent.runtime_id, RuntimeEvent.sequence)
            )
        )

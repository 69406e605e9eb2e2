"""Webhook fixtures: fast retry settings, the shim on each test database, a receiver, a real worker."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api_shim.app import create_app
from bflow_tasks.engine import clock
from bflow_tasks.settings import settings
from tests.api import helpers
from tests.webhooks.receiver import Receiver
from tests.webhooks.support import in_process_worker


@pytest.fixture
def at() -> Iterator[list[datetime]]:
    """The engine's clock, set by assigning `at[0]`."""
    now = [datetime(2030, 1, 7, 9, 0)]
    clock.set_clock(lambda: now[0])
    yield now
    clock.set_clock(None)


@pytest.fixture(autouse=True)
def webhook_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loopback receivers allowed, retries in milliseconds, short timeouts, a fixed secrets key."""
    monkeypatch.setattr(settings, "webhook_allow_private", True)
    monkeypatch.setattr(settings, "webhook_retry_scale", 0.0005)
    monkeypatch.setattr(settings, "webhook_timeout_seconds", 2.0)
    monkeypatch.setattr(settings, "webhook_connect_timeout_seconds", 1.0)
    monkeypatch.setattr(settings, "secret_key", SecretStr("webhook tests"))
    monkeypatch.setattr(settings, "sweep_grace", timedelta(0))


@pytest.fixture(autouse=True)
def empty_queues() -> Iterator[None]:
    """Start and end with empty in-process queues (commits publish `webhooks.deliver`)."""
    helpers.purge_queues()
    yield
    helpers.purge_queues()


@pytest.fixture
def client(api_engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app()) as client:
        yield client


@pytest.fixture
def tenant(session_factory: sessionmaker[Session]) -> helpers.Tenant:
    return helpers.make_tenant(session_factory, "Acme")


@pytest.fixture
def other_tenant(session_factory: sessionmaker[Session]) -> helpers.Tenant:
    return helpers.make_tenant(session_factory, "Globex")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def worker(client: TestClient) -> Iterator[None]:
    """A real Celery worker (solo pool, every queue) in a thread, on the in-process broker."""
    with in_process_worker():
        yield

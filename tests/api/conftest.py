"""Fixtures for the shim: the app on each test database, two tenants, a broker that is down."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api_shim.app import create_app
from bflow_tasks.worker import celery_app
from tests.api import helpers


@pytest.fixture
def client(api_engine: Engine) -> Iterator[TestClient]:
    helpers.purge_queues()
    with TestClient(create_app()) as client:
        yield client
    helpers.purge_queues()


@pytest.fixture
def tenant(session_factory: sessionmaker[Session]) -> helpers.Tenant:
    return helpers.make_tenant(session_factory, "Acme")


@pytest.fixture
def other_tenant(session_factory: sessionmaker[Session]) -> helpers.Tenant:
    return helpers.make_tenant(session_factory, "Globex")


@pytest.fixture
def broker_down(client: TestClient) -> Iterator[None]:
    """A real broker URL nothing listens on: publishing fails as it does in production.

    It depends on `client` so that it is undone before the client's teardown purges queues.
    """
    previous = celery_app.app.conf.broker_url
    helpers.switch_broker(helpers.UNREACHABLE_BROKER)
    yield
    helpers.switch_broker(previous)

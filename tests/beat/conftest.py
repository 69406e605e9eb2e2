"""Fixtures for the Beat jobs: a clock the test moves, a driver, and the shim on the test database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from bflow_tasks.engine import clock
from tests.api.conftest import client, other_tenant, tenant  # noqa: F401  (shared fixtures)
from tests.engine.driver import Driver

T0 = datetime(2030, 1, 7, 9, 0)


class FakeClock:
    """The engine's time, frozen until the test moves it."""

    def __init__(self, start: datetime):
        self.at = start

    def __call__(self) -> datetime:
        return self.at

    def set(self, at: datetime) -> None:
        self.at = at

    def advance(self, **delta: float) -> datetime:
        self.at += timedelta(**delta)
        return self.at


@pytest.fixture
def fake_clock() -> Iterator[FakeClock]:
    """Freeze the engine's clock at T0; restore the real one afterwards."""
    fake = FakeClock(T0)
    clock.set_clock(fake)
    yield fake
    clock.set_clock(None)


@pytest.fixture
def d(session_factory: sessionmaker[Session], fake_clock: FakeClock) -> Driver:
    return Driver(session_factory)

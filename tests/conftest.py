"""Shared fixtures: a migrated database per backend, cleaned between tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from bflow_tasks import db, migrations
from bflow_tasks.models import Base
from bflow_tasks.settings import settings
from tests import services

_migrated: dict[str, Engine] = {}


def engine_test_mysql_url() -> str:
    """The MariaDB database the engine and API tests use (apart from the migration tests')."""
    # BFLOW_TEST_DB_SUFFIX keeps two test runs on one server (two developers, a CI run
    # beside a session) from cleaning each other's tables mid-test.
    name = "bflow_engine_test" + os.environ.get("BFLOW_TEST_DB_SUFFIX", "")
    return services.mysql_url(database=name)


def _migrated_engine(url: str) -> Engine:
    """Migrate a database once per test process and return an engine for it."""
    if url not in _migrated:
        if url.startswith("mysql"):
            _drop_everything(url)
        migrations.upgrade(url)
        _migrated[url] = db.make_engine(url)
    return _migrated[url]


def _drop_everything(url: str) -> None:
    engine = db.make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("SET FOREIGN_KEY_CHECKS=0"))
        for (name,) in conn.execute(text("SHOW TABLES")).all():
            conn.execute(text(f"DROP TABLE `{name}`"))
        conn.execute(text("SET FOREIGN_KEY_CHECKS=1"))
    engine.dispose()


def clean(engine: Engine) -> None:
    """Delete every row, children first, so each test starts from an empty schema."""
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())


@pytest.fixture(params=["sqlite", "mysql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated database URL: SQLite always, MariaDB when reachable (required in CI)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.getbasetemp() / 'engine.db'}"
    return engine_test_mysql_url()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on a migrated, empty database."""
    engine = _migrated_engine(database_url)
    clean(engine)
    yield engine


@pytest.fixture
def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@pytest.fixture
def session(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work the test commits itself (the engine never commits)."""
    with session_factory() as session:
        yield session


@pytest.fixture
def api_engine(database_url: str, engine: Engine) -> Iterator[Engine]:
    """Point the process's sessionmaker (shim, in-process worker) at the clean test database."""
    previous = settings.database_url
    settings.database_url = database_url
    db.reset_engine()
    yield engine
    db.reset_engine()
    settings.database_url = previous

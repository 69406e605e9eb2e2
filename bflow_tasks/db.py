"""The database engine, the one sessionmaker and the one session scope."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from bflow_tasks.settings import settings

_engine: Engine | None = None
_sessionmaker: sessionmaker[Session] | None = None


def make_engine(url: str) -> Engine:
    """Build an engine with the isolation and locking the engine's write paths rely on."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            echo=settings.sql_echo,
            connect_args={"check_same_thread": False, "timeout": 30},
        )
        _serialise_sqlite_writers(engine)
        return engine
    # READ COMMITTED: after `SELECT ... FOR UPDATE` on a runtime, later plain reads in the
    # same transaction see what the previous lock holder committed (REPEATABLE READ would
    # show a snapshot taken before the lock was granted).
    return create_engine(
        url,
        echo=settings.sql_echo,
        isolation_level="READ COMMITTED",
        pool_pre_ping=True,
        pool_recycle=3600,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
    )


def _serialise_sqlite_writers(engine: Engine) -> None:
    """Make every SQLite transaction BEGIN IMMEDIATE, the SQLite stand-in for row locks.

    pysqlite's own transaction handling defers BEGIN until the first write, so two
    transactions could read the same stage before either writes. The documented
    SQLAlchemy recipe takes transaction control away from the driver.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):  # type: ignore[no-untyped-def]
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def get_engine() -> Engine:
    """Return the process-wide engine, creating it on first use."""
    global _engine
    if _engine is None:
        _engine = make_engine(settings.database_url)
    return _engine


def get_sessionmaker() -> sessionmaker[Session]:
    """Return the one sessionmaker bound to the process-wide engine."""
    global _sessionmaker
    if _sessionmaker is None:
        _sessionmaker = sessionmaker(get_engine(), expire_on_commit=False)
    return _sessionmaker


def reset_engine() -> None:
    """Forget the engine (after fork, or when tests switch databases)."""
    global _engine, _sessionmaker
    if _engine is not None:
        _engine.dispose()
    _engine = None
    _sessionmaker = None


@contextmanager
def session_scope() -> Iterator[Session]:
    """Yield a session: commit on success, roll back on error, always close."""
    session = get_sessionmaker()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()

"""The database engine, the one sessionmaker, the one session scope, and what its errors mean."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, InterfaceError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
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


# --- what a database error means -----------------------------------------------------------

# MySQL/MariaDB errors that say the database cannot serve anyone right now, not that the
# statement or its data is wrong, so the same request can succeed later: too many
# connections, server shutting down, lock wait timeout and deadlock (the statement or the
# transaction was rolled back), read-only (1290 names any server option that prevents the
# statement; for the statements Bflow sends, that is --read-only, as in a failover), connection
# killed (MariaDB: an operator or a restart), and the client library's cannot-connect, unknown
# host, server gone, connection lost and out-of-sync errors.
MYSQL_UNAVAILABLE_CODES = frozenset(
    {1040, 1053, 1205, 1213, 1290, 1317, 1836, 1927, 1969, 2002, 2003, 2005, 2006, 2013, 2055}
)
# SQLite's equivalents: another writer past the busy timeout, a file that cannot be opened, a failing disk.
SQLITE_UNAVAILABLE_MESSAGES = (
    "database is locked",
    "database table is locked",
    "unable to open database file",
    "disk I/O error",
)
# MySQL/MariaDB: ER_NO_SUCH_TABLE, ER_BAD_FIELD_ERROR (what an older schema answers).
MYSQL_MISSING_SCHEMA_CODES = frozenset({1146, 1054})
# MySQL/MariaDB: access denied, unknown database, cannot connect, unknown host, server gone.
MYSQL_UNREACHABLE_CODES = frozenset({1045, 1049, 2003, 2005, 2006, 2013})


def is_unavailable(exc: SQLAlchemyError) -> bool:
    """True when the database is unavailable for now (down, overloaded, locked), so a retry may succeed.

    False for an error the statement or its data causes (a CHECK constraint, a value out of
    range, a missing table): the same request would fail again, however often it is retried.
    """
    if isinstance(exc, PoolTimeoutError):
        return True  # every pooled connection stayed busy past the pool timeout: an overload
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated or isinstance(exc, InterfaceError):
        return True  # the connection broke under the statement (SQLAlchemy's disconnect check)
    if isinstance(exc.orig, sqlite3.Error):
        return str(exc.orig).startswith(SQLITE_UNAVAILABLE_MESSAGES)
    return mysql_code(exc) in MYSQL_UNAVAILABLE_CODES


def is_unreachable(exc: DBAPIError) -> bool:
    """True when the database could not be reached or logged into (SQLite, MySQL/MariaDB)."""
    if isinstance(exc.orig, sqlite3.OperationalError):
        return str(exc.orig).startswith("unable to open database file")
    return mysql_code(exc) in MYSQL_UNREACHABLE_CODES


def is_missing_schema(exc: DBAPIError) -> bool:
    """True when the database answered "no such table/column" (SQLite, MySQL/MariaDB)."""
    if isinstance(exc.orig, sqlite3.OperationalError):
        message = str(exc.orig)
        # An INSERT names the missing column differently: "table t has no column named c".
        return message.startswith(("no such table", "no such column")) or (
            message.startswith("table ") and " has no column named " in message
        )
    return mysql_code(exc) in MYSQL_MISSING_SCHEMA_CODES


def mysql_code(exc: DBAPIError) -> int | None:
    """The MySQL/MariaDB error number PyMySQL raised with, or None."""
    code = exc.orig.args[0] if exc.orig is not None and exc.orig.args else None
    return code if isinstance(code, int) else None

"""What a database error means: each case is a real error from a real MariaDB or SQLite."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import DataError, DBAPIError, OperationalError, ProgrammingError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from bflow_tasks import db
from tests import services

# MariaDB's json_valid() accepts at most 31 levels of nesting; a JSON column is LONGTEXT
# CHECK (json_valid(...)), so 32 levels break the CHECK constraint (error 4025).
TOO_DEEP_JSON = "[" * 32 + "]" * 32


@pytest.fixture
def mysql_engine() -> Iterator[Engine]:
    """An engine on a scratch database of its own, with one table of two rows to lock."""
    url = services.mysql_url(database="bflow_db_errors_test" + os.environ.get("BFLOW_TEST_DB_SUFFIX", ""))
    engine = db.make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS scratch"))
        conn.execute(
            text(
                "CREATE TABLE scratch (id INT PRIMARY KEY, label VARCHAR(4),"
                " doc LONGTEXT CHECK (json_valid(doc))) ENGINE=InnoDB"
            )
        )
        conn.execute(text("INSERT INTO scratch (id, label, doc) VALUES (1, 'a', '{}'), (2, 'b', '{}')"))
    yield engine
    engine.dispose()


def _error_of(conn: Connection, statement: str) -> DBAPIError:
    with pytest.raises(DBAPIError) as caught:
        conn.execute(text(statement))
    return caught.value


@pytest.mark.parametrize(
    ("statement", "code", "error_class"),
    [
        pytest.param(
            f"INSERT INTO scratch (id, doc) VALUES (3, '{TOO_DEEP_JSON}')",
            4025,
            OperationalError,  # the class PyMySQL gives a lost connection too
            id="check-constraint",
        ),
        pytest.param("SELECT 18446744073709551615 + 1", 1690, OperationalError, id="bigint-out-of-range"),
        pytest.param(
            "INSERT INTO scratch (id, label) VALUES (3, 'too long')", 1406, DataError, id="too-long"
        ),
        pytest.param(
            "INSERT INTO scratch (id, label) VALUES (99999999999, 'a')", 1264, DataError, id="out-of-range"
        ),
        pytest.param("SELECT * FROM no_such_table", 1146, ProgrammingError, id="no-such-table"),
    ],
)
def test_an_error_the_data_causes_is_not_unavailability(
    mysql_engine: Engine, statement: str, code: int, error_class: type[DBAPIError]
) -> None:
    with mysql_engine.connect() as conn:
        error = _error_of(conn, statement)
    assert (type(error), db.mysql_code(error)) == (error_class, code)
    assert not db.is_unavailable(error)


def test_a_database_that_refuses_the_connection_is_unavailable() -> None:
    engine = db.make_engine("mysql+pymysql://root@127.0.0.1:1/bflow")  # nothing listens on port 1
    with pytest.raises(DBAPIError) as caught:
        engine.connect()
    assert db.mysql_code(caught.value) == 2003
    assert db.is_unavailable(caught.value)


def test_a_full_connection_pool_is_unavailable(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'pool.db'}"
    engine = create_engine(url, pool_size=1, max_overflow=0, pool_timeout=0.01)
    with engine.connect(), pytest.raises(PoolTimeoutError) as caught:
        engine.connect()  # the pool's only connection is taken
    engine.dispose()
    assert db.is_unavailable(caught.value)


def test_a_lock_wait_timeout_is_unavailable(mysql_engine: Engine) -> None:
    with mysql_engine.connect() as holder, mysql_engine.connect() as waiter:
        holder.execute(text("SELECT id FROM scratch WHERE id = 1 FOR UPDATE"))
        waiter.execute(text("SET SESSION innodb_lock_wait_timeout = 1"))
        error = _error_of(waiter, "SELECT id FROM scratch WHERE id = 1 FOR UPDATE")
    assert db.mysql_code(error) == 1205
    assert db.is_unavailable(error)


def test_a_deadlock_is_unavailable(mysql_engine: Engine) -> None:
    """Two transactions each lock one row and then want the other's: InnoDB rolls one back."""
    errors: list[DBAPIError] = []
    with mysql_engine.connect() as first, mysql_engine.connect() as second:
        first.execute(text("SELECT id FROM scratch WHERE id = 1 FOR UPDATE"))
        second.execute(text("SELECT id FROM scratch WHERE id = 2 FOR UPDATE"))

        def lock(conn: Connection, row: int) -> None:
            try:
                conn.execute(text(f"SELECT id FROM scratch WHERE id = {row} FOR UPDATE"))
            except DBAPIError as exc:
                errors.append(exc)
                conn.rollback()  # let the other transaction have its row

        crossing = threading.Thread(target=lock, args=(first, 2))
        crossing.start()
        lock(second, 1)
        crossing.join(timeout=30)
    [error] = errors
    assert db.mysql_code(error) == 1213
    assert db.is_unavailable(error)


def test_a_connection_killed_under_the_session_is_unavailable(mysql_engine: Engine) -> None:
    with mysql_engine.connect() as victim, mysql_engine.connect() as operator:
        victim_id = victim.execute(text("SELECT CONNECTION_ID()")).scalar_one()
        operator.execute(text(f"KILL {int(victim_id)}"))
        error = _error_of(victim, "SELECT 1")
    assert db.mysql_code(error) in {2006, 2013, 1927}
    assert db.is_unavailable(error)


def test_sqlite_locked_or_unopenable_is_unavailable_a_missing_table_is_not(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x INTEGER)")
    holder.execute("BEGIN IMMEDIATE")  # the write lock, held
    try:
        impatient = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
        with impatient.connect() as conn:
            locked = _error_of(conn, "INSERT INTO t VALUES (1)")
            missing = _error_of(conn, "SELECT * FROM no_such_table")
        impatient.dispose()
    finally:
        holder.close()
    with pytest.raises(DBAPIError) as unopenable:
        create_engine(f"sqlite:///{tmp_path / 'no-such-dir' / 'x.db'}").connect()

    assert str(locked.orig).startswith("database is locked")
    assert db.is_unavailable(locked)
    assert db.is_unavailable(unopenable.value)
    assert not db.is_unavailable(missing)

"""Which failures a workflow step retries uncounted, and what the others become (no database needed)."""

from __future__ import annotations

import sqlite3

import kombu.exceptions
import pymysql
import pytest
import redis.exceptions
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from bflow_tasks.worker.attempts import StepFailed, attempt, describe, is_transient

FOR_NOW = [
    OperationalError("UPDATE runtime", {}, pymysql.err.OperationalError(1213, "Deadlock found")),
    OperationalError("UPDATE runtime", {}, pymysql.err.OperationalError(1205, "Lock wait timeout exceeded")),
    OperationalError("SELECT 1", {}, pymysql.err.OperationalError(2013, "Lost connection to server")),
    # KILL QUERY (an operator, pt-kill) or max_statement_time ending a statement under load.
    OperationalError("SELECT 1", {}, pymysql.err.OperationalError(1317, "Query execution was interrupted")),
    OperationalError(
        "SELECT 1",
        {},
        pymysql.err.OperationalError(1969, "Query execution was interrupted (max_statement_time exceeded)"),
    ),
    OperationalError("UPDATE runtime", {}, sqlite3.OperationalError("database is locked")),
    kombu.exceptions.OperationalError("[Errno 111] Connection refused"),
    redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379"),
    ConnectionResetError(104, "Connection reset by peer"),
    PoolTimeoutError("QueuePool limit of size 5 overflow 10 reached, connection timed out"),
]
FOR_GOOD = [
    KeyError("no such node"),
    FileNotFoundError(2, "No such file or directory"),  # an OSError, but no socket's
    IntegrityError("INSERT", {}, pymysql.err.IntegrityError(1062, "Duplicate entry 'a' for key 'uq'")),
    DataError("INSERT", {}, pymysql.err.DataError(1406, "Data too long for column 'comments' at row 1")),
    OperationalError("INSERT", {}, pymysql.err.OperationalError(4025, "CONSTRAINT `data` failed")),
    IntegrityError("INSERT", {}, sqlite3.IntegrityError("UNIQUE constraint failed: runtime_viewer.user")),
]


@pytest.mark.parametrize("exc", FOR_NOW, ids=repr)
def test_the_database_or_broker_failing_for_now_is_raised_as_it_is(exc: BaseException) -> None:
    assert is_transient(exc)
    with pytest.raises(type(exc)) as raised, attempt():
        raise exc
    assert raised.value is exc  # Celery retries a database error; the sweep re-sends the rest


@pytest.mark.parametrize("exc", FOR_GOOD, ids=repr)
def test_any_other_failure_becomes_step_failed_which_celery_does_not_retry(exc: BaseException) -> None:
    assert not is_transient(exc)
    with pytest.raises(StepFailed) as raised, attempt():
        raise exc
    assert raised.value.__cause__ is exc
    assert str(raised.value).startswith(describe(exc))


def test_a_database_error_is_described_by_the_drivers_message_without_sql_or_parameters() -> None:
    exc = DataError(
        "INSERT INTO runtime_log (comments) VALUES (%s)",
        {"comments": "secret"},
        pymysql.err.DataError(1406, "Data too long for column 'comments' at row 1"),
    )
    assert describe(exc) == "DataError: (1406, \"Data too long for column 'comments' at row 1\")"
    assert describe(KeyError("delegate_to")) == "KeyError: 'delegate_to'"

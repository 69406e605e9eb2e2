"""The migrations build exactly the schema the models describe, on SQLite and on MariaDB.

For each database: upgrade to head, compare the live schema with ``Base.metadata`` the way
``alembic revision --autogenerate`` does (any difference means a missing or wrong
migration), then downgrade to base and check that nothing is left behind.
"""

from __future__ import annotations

import pprint
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, inspect, pool, text
from sqlalchemy.orm import Session

from bflow_tasks import migrations
from bflow_tasks.db import make_engine
from bflow_tasks.engine.runtimes import transitions
from bflow_tasks.models import Base, RuntimeCommand

try:  # `tests` importable as a package (rootdir on sys.path) ...
    from tests import services
except ImportError:  # ... or pytest put tests/ itself on sys.path (rootdir-less layout)
    import services  # type: ignore[no-redef]

MODEL_TABLES = set(Base.metadata.tables)


HEAD = ScriptDirectory.from_config(migrations.alembic_config()).get_current_head()


def schema_differences(engine: Engine) -> list[object]:
    """What autogenerate would put in a new migration for this database (empty: none)."""
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "compare_type": True,
                # The models declare no server defaults, so the database must have none.
                "compare_server_default": True,
            },
        )
        return list(compare_metadata(context, Base.metadata))


def assert_matches_models(engine: Engine) -> None:
    diff = schema_differences(engine)
    assert diff == [], "migrated schema differs from bflow_tasks.models:\n" + pprint.pformat(diff)


def table_names(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def test_single_head_named_0001() -> None:
    script = ScriptDirectory.from_config(migrations.alembic_config())
    assert script.get_heads() == [script.get_current_head()]
    assert script.get_base() == "0001"


def test_script_location_does_not_depend_on_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'cwd.db'}"
    migrations.upgrade(url)
    assert migrations.current(url) == HEAD


# --- SQLite ------------------------------------------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'bflow.db'}"


def test_sqlite_upgrade_matches_models_and_downgrade_empties(sqlite_url: str) -> None:
    assert migrations.current(sqlite_url) is None
    migrations.upgrade(sqlite_url)
    assert migrations.current(sqlite_url) == HEAD
    migrations.upgrade(sqlite_url)  # already at head: a no-op, not an error

    engine = create_engine(sqlite_url, poolclass=pool.NullPool)
    try:
        assert table_names(engine) == MODEL_TABLES | {"alembic_version"}
        assert_matches_models(engine)

        migrations.downgrade(sqlite_url, "base")
        assert migrations.current(sqlite_url) is None
        assert table_names(engine) == {"alembic_version"}
    finally:
        engine.dispose()


def test_sqlite_upgrade_on_a_given_connection(sqlite_url: str) -> None:
    """The fixtures' path: migrate through the application's own engine (FKs on, BEGIN IMMEDIATE)."""
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as connection:
            command.upgrade(migrations.alembic_config(connection), "head")
            # env.py switched foreign keys off for the migration only.
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert migrations.current(sqlite_url) == HEAD
        assert_matches_models(engine)
        with engine.connect() as connection:
            command.downgrade(migrations.alembic_config(connection), "base")
        assert table_names(engine) == {"alembic_version"}
    finally:
        engine.dispose()


# --- MariaDB -----------------------------------------------------------------------------


def _drop_everything(engine: Engine) -> None:
    """Empty the test database, whatever an earlier (perhaps interrupted) run left in it."""
    with engine.begin() as connection:
        connection.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 0")
        rows = connection.execute(
            text(
                "SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = DATABASE()"
            )
        ).all()
        for name, table_type in rows:
            kind = "VIEW" if table_type == "VIEW" else "TABLE"
            connection.exec_driver_sql(f"DROP {kind} IF EXISTS `{name}`")
        connection.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 1")


@pytest.fixture
def mysql_engine() -> Iterator[tuple[str, Engine]]:
    url = services.mysql_url()
    engine = create_engine(url, poolclass=pool.NullPool)
    _drop_everything(engine)
    try:
        yield url, engine
    finally:
        engine.dispose()


@pytest.mark.services
def test_mariadb_upgrade_matches_models_and_downgrade_empties(mysql_engine: tuple[str, Engine]) -> None:
    url, engine = mysql_engine
    assert migrations.current(url) is None
    migrations.upgrade(url)
    assert migrations.current(url) == HEAD

    assert table_names(engine) == MODEL_TABLES | {"alembic_version"}
    assert_matches_models(engine)

    with engine.connect() as connection:
        tables = connection.execute(
            text(
                "SELECT table_name, engine, table_collation FROM information_schema.tables "
                "WHERE table_schema = DATABASE()"
            )
        ).all()
        columns = connection.execute(
            text(
                "SELECT table_name, column_name, character_set_name, collation_name "
                "FROM information_schema.columns "
                "WHERE table_schema = DATABASE() AND character_set_name IS NOT NULL"
            )
        ).all()
        datetimes = connection.execute(
            text(
                "SELECT table_name, column_name, datetime_precision FROM information_schema.columns "
                "WHERE table_schema = DATABASE() AND data_type = 'datetime'"
            )
        ).all()
    not_innodb = {name: eng for name, eng, _ in tables if eng != "InnoDB"}
    assert not_innodb == {}, f"tables not on InnoDB: {not_innodb}"

    # Our tables carry the collation the migration asks for; alembic_version gets the
    # database default, which must still be utf8mb4.
    def collation_ok(name: str, collation: str) -> bool:
        if name in MODEL_TABLES:
            return collation == "utf8mb4_unicode_ci"
        return collation.startswith("utf8mb4_")

    wrong_collation = {name: collation for name, _, collation in tables if not collation_ok(name, collation)}
    assert wrong_collation == {}, f"tables not in utf8mb4: {wrong_collation}"
    not_utf8mb4 = [(t, c, cs) for t, c, cs, _ in columns if t in MODEL_TABLES and cs != "utf8mb4"]
    assert not_utf8mb4 == [], f"text columns not in utf8mb4: {not_utf8mb4}"
    # Names the engine compares exactly (models.base.exact_string) are exact in MariaDB too;
    # autogenerate does not compare collations, so this is checked here.
    dialect = engine.dialect
    exact = {
        (table.name, column.name)
        for table in Base.metadata.tables.values()
        for column in table.columns
        if getattr(column.type.dialect_impl(dialect), "collation", None) == "utf8mb4_bin"
    }
    assert ("runtime_assignee", "user") in exact and ("runtime_archive", "document_id") in exact
    with engine.connect() as connection:
        found = set(
            connection.execute(
                text(
                    "SELECT table_name, column_name FROM information_schema.columns "
                    "WHERE table_schema = DATABASE() AND data_type = 'varchar' "
                    "AND collation_name = 'utf8mb4_bin'"
                )
            ).all()
        )
    assert found == exact

    # Plain DATETIME keeps whole seconds; the engine orders and times things finer than that.
    assert datetimes, "no DATETIME columns found"
    coarse = [(t, c, p) for t, c, p in datetimes if p != 6]
    assert coarse == [], f"DATETIME columns without microseconds: {coarse}"

    migrations.downgrade(url, "base")
    assert migrations.current(url) is None
    assert table_names(engine) == {"alembic_version"}


# --- 0009: audit lines written before 0002 are numbered 1..n --------------------------------

T0 = datetime(2026, 1, 1, 9, 0)


def _insert(connection: Connection, table: str, **values: Any) -> None:
    """Insert one row into `table` as it is at the current revision (only the given columns)."""
    types = {datetime: sa.DateTime(), dict: sa.JSON()}
    columns = [sa.column(name, types.get(type(value))) for name, value in values.items()]
    connection.execute(sa.table(table, *columns).insert().values(**values))


def _runtime(connection: Connection, table: str, runtime_id: str, status: str) -> None:
    _insert(
        connection,
        table,
        id=runtime_id,
        tenant_id="t",
        workflow_id="w",
        workflow_version_id="wv",
        document_type="leave_request",
        document_id=runtime_id,
        data={},
        status=status,
        submitted_by="alice",
        round=1,
        event_sequence=0,
        stage_sequence=0,
        created_at=T0,
        updated_at=T0,
    )


def _log(
    connection: Connection, table: str, line_id: str, runtime_id: str, action: str, minute: int, **more: Any
) -> None:
    _insert(
        connection,
        table,
        id=line_id,
        runtime_id=runtime_id,
        action=action,
        created_at=T0 + timedelta(minutes=minute),
        **more,
    )


def _trail(engine: Engine, runtime_id: str, *, archived: bool = False) -> tuple[list[tuple[int, str]], int]:
    """A runtime's (sequence, action) lines in id order, and its log_sequence."""
    suffix = "_archive" if archived else ""
    with engine.connect() as connection:
        lines = connection.execute(
            text(
                f"SELECT sequence, action FROM runtime_log{suffix} "
                "WHERE runtime_id = :r ORDER BY sequence, id"
            ),
            {"r": runtime_id},
        ).all()
        counter = connection.execute(
            text(f"SELECT log_sequence FROM runtime{suffix} WHERE id = :r"), {"r": runtime_id}
        ).scalar_one()
    return [tuple(line) for line in lines], counter


def _cancel(url: str, runtime_id: str, command_id: str) -> None:
    """Apply a cancel command with the engine, as a worker would."""
    engine = make_engine(url)
    try:
        with Session(engine) as session, session.begin():
            session.add(
                RuntimeCommand(
                    id=command_id, runtime_id=runtime_id, kind="cancel", dedupe_key=command_id, payload={}
                )
            )
        with Session(engine) as session, session.begin():
            transitions.cancel(session, command_id=command_id)
    finally:
        engine.dispose()


def check_0009_numbers_old_audit_lines(url: str, engine: Engine) -> None:
    migrations.upgrade(url, "0001")
    with engine.begin() as connection:
        _insert(connection, "tenant", id="t", name="acme", created_at=T0)
        _insert(
            connection,
            "workflow",
            id="w",
            tenant_id="t",
            name="leave",
            document_type="leave_request",
            is_active=True,
            current_version=1,
            created_at=T0,
            updated_at=T0,
        )
        _insert(
            connection, "workflow_version", id="wv", workflow_id="w", version=1, definition={}, created_at=T0
        )
        # Logged by 0001's code: the shim wrote the submission. Lines a2 and a1 share a time.
        for runtime_id in ("a", "b"):
            _runtime(connection, "runtime", runtime_id, "in_progress")
        _log(connection, "runtime_log", "a0", "a", "runtime.submitted", 0, actor="alice")
        _log(connection, "runtime_log", "a2", "a", "stage.completed", 1)
        _log(connection, "runtime_log", "a1", "a", "runtime.started", 1)
        _log(connection, "runtime_log", "b0", "b", "runtime.submitted", 0, actor="alice")
        _log(connection, "runtime_log", "b1", "b", "runtime.started", 1)
        _runtime(connection, "runtime_archive", "c", "completed")
        _log(connection, "runtime_log_archive", "c1", "c", "runtime.started", 1)
        _log(connection, "runtime_log_archive", "c0", "c", "runtime.submitted", 0)
        _log(connection, "runtime_log_archive", "c2", "c", "runtime.completed", 2)

    migrations.upgrade(url, "0008")
    with engine.begin() as connection:
        # b was in flight across 0002: the first command applied after it (a cancel) logged
        # the submission again, as log_sequence was 0. Written as 0008's engine wrote it (today's
        # models have columns a database at 0008 lacks).
        _log(connection, "runtime_log", "b2", "b", "runtime.submitted", 0, actor="alice", sequence=1)
        _log(connection, "runtime_log", "b3", "b", "runtime.cancelled", 2, actor="alice", sequence=2)
        connection.execute(text("UPDATE runtime SET log_sequence = 2, status = 'cancelled' WHERE id = 'b'"))
        # Written after 0002, numbered already, with a gap that renumbering would close.
        _runtime(connection, "runtime", "d", "in_progress")
        _log(connection, "runtime_log", "d1", "d", "runtime.submitted", 0, sequence=1)
        _log(connection, "runtime_log", "d3", "d", "runtime.started", 1, sequence=3)
        connection.execute(text("UPDATE runtime SET log_sequence = 3 WHERE id = 'd'"))
    assert _trail(engine, "a") == (
        [(0, "runtime.submitted"), (0, "runtime.started"), (0, "stage.completed")],
        0,
    )
    assert _trail(engine, "b") == (
        [
            (0, "runtime.submitted"),
            (0, "runtime.started"),
            (1, "runtime.submitted"),
            (2, "runtime.cancelled"),
        ],
        2,
    )
    assert _trail(engine, "c", archived=True)[1] == 0

    migrations.upgrade(url)
    assert _trail(engine, "a") == (
        [(1, "runtime.submitted"), (2, "runtime.started"), (3, "stage.completed")],
        3,
    )
    assert _trail(engine, "b") == (
        [(1, "runtime.submitted"), (2, "runtime.started"), (3, "runtime.cancelled")],
        3,
    )
    assert _trail(engine, "c", archived=True) == (
        [(1, "runtime.submitted"), (2, "runtime.started"), (3, "runtime.completed")],
        3,
    )
    assert _trail(engine, "d") == ([(1, "runtime.submitted"), (3, "runtime.started")], 3)

    # The next command neither logs the submission again nor reuses a number.
    _cancel(url, "a", "cmd-a")
    assert _trail(engine, "a") == (
        [(1, "runtime.submitted"), (2, "runtime.started"), (3, "stage.completed"), (4, "runtime.cancelled")],
        4,
    )


def test_sqlite_0009_numbers_old_audit_lines(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url, poolclass=pool.NullPool)
    try:
        check_0009_numbers_old_audit_lines(sqlite_url, engine)
    finally:
        engine.dispose()


@pytest.mark.services
def test_mariadb_0009_numbers_old_audit_lines(mysql_engine: tuple[str, Engine]) -> None:
    check_0009_numbers_old_audit_lines(*mysql_engine)


# --- 0011: api_token.expires_at, NULL (never) for the tokens there were ---------------------


def check_0011_adds_a_nullable_expiry(url: str, engine: Engine) -> None:
    migrations.upgrade(url, "0010")
    with engine.begin() as connection:
        _insert(connection, "tenant", id="t", name="acme", created_at=T0)
        _insert(
            connection, "api_token", id="k", tenant_id="t", name="default", token_hash="h" * 64, created_at=T0
        )
    assert "expires_at" not in {c["name"] for c in inspect(engine).get_columns("api_token")}
    migrations.upgrade(url, "0011")
    with engine.connect() as connection:
        assert connection.execute(text("SELECT id, expires_at FROM api_token")).all() == [("k", None)]
    migrations.downgrade(url, "0010")
    assert "expires_at" not in {c["name"] for c in inspect(engine).get_columns("api_token")}
    with engine.connect() as connection:
        assert connection.execute(text("SELECT id FROM api_token")).scalars().all() == ["k"]


def test_sqlite_0011_adds_a_nullable_expiry(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url, poolclass=pool.NullPool)
    try:
        check_0011_adds_a_nullable_expiry(sqlite_url, engine)
    finally:
        engine.dispose()


@pytest.mark.services
def test_mariadb_0011_adds_a_nullable_expiry(mysql_engine: tuple[str, Engine]) -> None:
    check_0011_adds_a_nullable_expiry(*mysql_engine)

"""The migrations build exactly the schema the models describe, on SQLite and on MariaDB.

For each database: upgrade to head, compare the live schema with ``Base.metadata`` the way
``alembic revision --autogenerate`` does (any difference means a missing or wrong
migration), then downgrade to base and check that nothing is left behind.
"""

from __future__ import annotations

import pprint
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, inspect, pool, text

from bflow_tasks import migrations
from bflow_tasks.db import make_engine
from bflow_tasks.models import Base

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

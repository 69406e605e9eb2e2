"""Alembic environment for Bflow.

Where the database comes from, in order:

1. ``config.attributes["connection"]``: a SQLAlchemy Connection handed in by the caller
   (``bflow_tasks.migrations``, the test fixtures). The caller owns it; we do not close it.
2. ``bflow_tasks.settings.settings.database_url`` (``BFLOW_DATABASE_URL``). ``sqlalchemy.url``
   in alembic.ini is deliberately not used.

Alembic runs this file by path (``script_location`` is this folder); it is not imported.
"""

from __future__ import annotations

from logging.config import fileConfig
from typing import Any

from alembic import context
from alembic.operations import ops
from sqlalchemy import Connection, create_engine, pool

from bflow_tasks.models import Base, UTCDateTime
from bflow_tasks.settings import settings

config = context.config

# Only when run from the `alembic` command line: a programmatic caller (tests, `bflow db
# upgrade`) keeps its own logging. Never disable loggers that already exist.
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata

# Every table on MySQL/MariaDB is InnoDB (row locks, foreign keys, transactions) in
# utf8mb4 (the whole of Unicode). The options are written into each create_table call.
MYSQL_TABLE_KWARGS: dict[str, str] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_unicode_ci",
}


def _add_mysql_table_kwargs(_context: Any, _revision: Any, directives: list[Any]) -> None:
    """Autogenerate hook: give every new table the MySQL engine/charset options."""

    def visit(op: Any) -> None:
        if isinstance(op, ops.CreateTableOp):
            for key, value in MYSQL_TABLE_KWARGS.items():
                op.kw.setdefault(key, value)
        for child in getattr(op, "ops", ()) or ():
            visit(child)

    for directive in directives:
        if isinstance(directive, ops.MigrationScript):
            visit(directive.upgrade_ops)


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    """Autogenerate hook: write the models' UTCDateTime as the DateTime it stores.

    Microseconds on MySQL/MariaDB, whose plain DATETIME keeps whole seconds (see 0001).
    """
    if type_ == "type" and isinstance(obj, UTCDateTime):
        autogen_context.imports.add("from sqlalchemy.dialects import mysql")
        return 'sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")'
    return False


def _configure_kwargs(dialect_name: str) -> dict[str, Any]:
    return {
        "target_metadata": target_metadata,
        # SQLite cannot ALTER most things: batch mode copies the table instead.
        "render_as_batch": dialect_name == "sqlite",
        "compare_type": True,
        "process_revision_directives": _add_mysql_table_kwargs,
        "render_item": _render_item,
    }


def run_migrations_offline() -> None:
    """Emit SQL to stdout (``alembic upgrade head --sql``) for the configured URL."""
    url = settings.database_url
    context.configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **_configure_kwargs(url.split(":", 1)[0].split("+", 1)[0]),
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_on(connection: Connection) -> None:
    dialect_name = connection.dialect.name
    # A transaction the caller opened is the caller's to commit or roll back.
    external = connection.in_transaction()
    # SQLite batch operations recreate tables; with foreign keys enforced, dropping the old
    # copy would cascade into (or be refused for) the rows that reference it. Switch the
    # checks off for the migration (a PRAGMA that only works outside a transaction).
    restore_fk = False
    raw: Any = None  # the sqlite3 connection, when the checks are to be switched back on
    if dialect_name == "sqlite" and not external:
        raw = connection.connection.driver_connection
        assert raw is not None
        restore_fk = bool(raw.execute("PRAGMA foreign_keys").fetchone()[0])
        if restore_fk:
            raw.execute("PRAGMA foreign_keys=OFF")
    try:
        context.configure(connection=connection, **_configure_kwargs(dialect_name))
        with context.begin_transaction():
            context.run_migrations()
        # SQLAlchemy 2 autobegins; do not leave our own work uncommitted.
        if not external and connection.in_transaction():
            connection.commit()
    finally:
        if restore_fk:
            raw.execute("PRAGMA foreign_keys=ON")


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
        return
    engine = create_engine(settings.database_url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            _run_on(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

"""Run the Alembic migrations from Python (`bflow db upgrade`, test fixtures).

The migration scripts live next to the package, in the repository's ``alembic/`` directory
(the project is installed editable); ``alembic.ini`` is read from the repository root when
it is there, but ``script_location`` is always set from this file's location, so the
current working directory does not matter.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, create_engine, pool

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT_LOCATION = REPO_ROOT / "alembic"
ALEMBIC_INI = REPO_ROOT / "alembic.ini"


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic Config for this project, optionally bound to `connection`."""
    if not SCRIPT_LOCATION.is_dir():
        raise RuntimeError(f"Alembic scripts not found at {SCRIPT_LOCATION}")
    config = Config(str(ALEMBIC_INI)) if ALEMBIC_INI.is_file() else Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    # The caller owns logging; env.py only configures it for the alembic CLI.
    config.attributes["configure_logger"] = False
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _run(url: str | None, action: str, revision: str) -> None:
    if url is None:
        from bflow_tasks.settings import settings

        url = settings.database_url
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            config = alembic_config(connection)
            getattr(command, action)(config, revision)
    finally:
        engine.dispose()


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Upgrade the database at `url` (default: BFLOW_DATABASE_URL) to `revision`."""
    _run(url, "upgrade", revision)


def downgrade(url: str | None = None, revision: str = "base") -> None:
    """Downgrade the database at `url` (default: BFLOW_DATABASE_URL) to `revision`."""
    _run(url, "downgrade", revision)


def current(url: str | None = None) -> str | None:
    """The revision the database at `url` is at (None: never migrated)."""
    from alembic.runtime.migration import MigrationContext

    if url is None:
        from bflow_tasks.settings import settings

        url = settings.database_url
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()

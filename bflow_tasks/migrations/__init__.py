"""Run the Alembic migrations from Python (`bflow db upgrade`, test fixtures).

The migration scripts are part of the package: this folder is Alembic's script location
(``env.py``, ``script.py.mako`` and ``versions/``), so they ship in the wheel and are found
from this file's own location, whatever the current directory and however Bflow is
installed (a wheel in site-packages, or editable). ``alembic.ini`` at the repository root
only serves the ``alembic`` command run there (new revisions, ``alembic upgrade head``);
it is not read here, so a checkout and an installed wheel run the migrations alike.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, create_engine, pool

# This package's folder: env.py, script.py.mako and versions/ are beside this file.
SCRIPT_LOCATION = Path(__file__).resolve().parent


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic Config for this project, optionally bound to `connection`."""
    # An installed copy that lost its package data would otherwise fail later and obscurely.
    if not (SCRIPT_LOCATION / "env.py").is_file() or not any((SCRIPT_LOCATION / "versions").glob("*.py")):
        raise RuntimeError(f"Alembic scripts (env.py, versions/*.py) not found in {SCRIPT_LOCATION}")
    config = Config()
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

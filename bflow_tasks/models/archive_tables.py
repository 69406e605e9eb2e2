"""The `*_archive` twins of the runtime tables, where the archive job moves old runtimes."""

from __future__ import annotations

from sqlalchemy import Column, DefaultClause, Index, Table

from bflow_tasks.models import runtime_tables  # noqa: F401  (defines the tables twinned here)
from bflow_tasks.models.base import Base

ARCHIVED_TABLES = ("runtime", "runtime_stage", "runtime_assignee", "runtime_log", "runtime_event")


def _copy(default: object) -> DefaultClause | None:
    return DefaultClause(default.arg) if isinstance(default, DefaultClause) else None  # type: ignore[arg-type]


def _archive_twin(source: Table) -> Table:
    """Same columns as `source`, no foreign keys or uniques: archived rows never change."""
    columns = [
        Column(
            c.name,
            c.type,
            primary_key=c.primary_key,
            nullable=c.nullable,
            server_default=_copy(c.server_default),
        )
        for c in source.columns
    ]
    twin = Table(f"{source.name}_archive", Base.metadata, *columns)
    if "runtime_id" in source.columns:
        Index(f"idx_{source.name}_archive_runtime", twin.c.runtime_id)
    return twin


ARCHIVE_TWINS = {name: _archive_twin(Base.metadata.tables[name]) for name in ARCHIVED_TABLES}

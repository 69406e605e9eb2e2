"""Compare users, actors, document ids, idempotency keys and node keys exactly on MariaDB.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23

The tables' utf8mb4_unicode_ci collation ignores case, accents and trailing spaces, so
MariaDB took "U2" and "u2" for one user in the unique keys, while the engine (and SQLite)
saw two: a delegation to "U2" on a stage where "u2" has a task was accepted, then failed on
the unique key at every try, and the task stayed locked; "ORDER-ABC" replayed the
Idempotency-Key "order-abc"; `GET /tasks?assignee=bob` listed Bob's tasks. These columns become
utf8mb4_bin (compared byte for byte, as the engine compares them), in the live tables and
their archive twins. SQLite already compares strings exactly: nothing changes there.

A downgrade restores utf8mb4_unicode_ci; it fails on a unique key if rows that differ only
in case have been written since.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table -> (column, length, nullable)
COLUMNS: dict[str, list[tuple[str, int, bool]]] = {
    "node": [("key", 100, False)],
    "runtime": [
        ("document_type", 100, False),
        ("document_id", 255, False),
        ("submitted_by", 255, False),
        ("idempotency_key", 255, True),
    ],
    "runtime_stage": [("node_key", 100, False)],
    "runtime_assignee": [("node_key", 100, False), ("user", 255, False)],
    "runtime_log": [("actor", 255, True)],
    "runtime_viewer": [("user", 255, False)],
    "runtime_command": [("actor", 255, True)],
}
ARCHIVED = ("runtime", "runtime_stage", "runtime_assignee", "runtime_log")


def upgrade() -> None:
    _collate("utf8mb4_bin", "utf8mb4_unicode_ci")


def downgrade() -> None:
    _collate("utf8mb4_unicode_ci", "utf8mb4_bin")


def _collate(to: str, was: str) -> None:
    if op.get_bind().dialect.name not in ("mysql", "mariadb"):
        return
    tables = {**COLUMNS, **{f"{name}_archive": COLUMNS[name] for name in ARCHIVED}}
    for table, columns in tables.items():
        # One ALTER per table: InnoDB rebuilds it (and its indexes) once.
        with op.batch_alter_table(table) as batch:
            for column, length, nullable in columns:
                batch.alter_column(
                    column,
                    type_=mysql.VARCHAR(length, collation=to),
                    existing_type=sa.String(length, collation=was),
                    existing_nullable=nullable,
                )

"""Keep the sweep's and the SLA scan's next try times in SQL, so stuck rows cannot fill a batch.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23

The sweep read the oldest 500 lost commands (and stage openings) and only then, in Python,
left out those whose doubling wait had not run out: 500 stuck ones filled every batch, and a
command lost after them was never re-sent. `next_sweep_at` (NULL until the first re-send)
replaces `swept_at`, and the sweep reads only what is due, through an index. Rows re-sent
before this upgrade are due at once: one more re-send, which the workers apply as a no-op.

The SLA scan read the 500 tasks due longest ago; if their runtimes could not be handled, the
same 500 came first on every run and nobody else's task was marked overdue. Such a task now
gets `sla_retry_at`, and the scan leaves it out until then; the column ends the scan's two
indexes, so that held-back tasks are skipped in the index without reading their rows.

A downgrade restores `swept_at` empty: lost work waits one grace period before its re-send.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
SWEPT = ("runtime_command", "runtime_stage", "runtime_stage_archive")
RETRIED = ("runtime_assignee", "runtime_assignee_archive")
# The SLA scan's indexes on runtime_assignee: name -> the column after status.
SLA_INDEXES = {
    "idx_runtime_assignee_status_due": "due_at",
    "idx_runtime_assignee_status_reminder": "next_reminder_at",
}


def upgrade() -> None:
    for table in SWEPT:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("next_sweep_at", UTC_DATETIME, nullable=True))
        if not table.endswith("_archive"):  # archived rows are never swept
            op.execute(f"UPDATE {table} SET next_sweep_at = swept_at WHERE swept_at IS NOT NULL")
        with op.batch_alter_table(table) as batch:
            batch.drop_column("swept_at")
    for table in RETRIED:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("sla_retry_at", UTC_DATETIME, nullable=True))
    op.create_index(
        "idx_runtime_command_status_sweep", "runtime_command", ["status", "next_sweep_at", "created_at"]
    )
    op.create_index(
        "idx_runtime_stage_status_sweep",
        "runtime_stage",
        ["status", "started_at", "next_sweep_at", "created_at"],
    )
    op.drop_index("idx_runtime_stage_status_started", table_name="runtime_stage")
    for name, column in SLA_INDEXES.items():
        op.drop_index(name, table_name="runtime_assignee")
        op.create_index(name, "runtime_assignee", ["status", column, "sla_retry_at"])


def downgrade() -> None:
    for name, column in SLA_INDEXES.items():
        op.drop_index(name, table_name="runtime_assignee")
        op.create_index(name, "runtime_assignee", ["status", column])
    op.create_index("idx_runtime_stage_status_started", "runtime_stage", ["status", "started_at"])
    op.drop_index("idx_runtime_stage_status_sweep", table_name="runtime_stage")
    op.drop_index("idx_runtime_command_status_sweep", table_name="runtime_command")
    for table in RETRIED:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("sla_retry_at")
    for table in SWEPT:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("swept_at", UTC_DATETIME, nullable=True))
            batch.drop_column("next_sweep_at")

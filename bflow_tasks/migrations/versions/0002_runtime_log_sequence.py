"""Order the audit log by a per-runtime sequence, not by timestamp.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

Several log lines of one transition share a microsecond, so ordering by created_at (with a
random UUID as tie-breaker) could show them out of order.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("runtime", "runtime_archive"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("log_sequence", sa.Integer(), server_default="0", nullable=False))
    for table in ("runtime_log", "runtime_log_archive"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("sequence", sa.Integer(), server_default="0", nullable=False))
    op.create_index("idx_runtime_log_runtime_sequence", "runtime_log", ["runtime_id", "sequence"])


def downgrade() -> None:
    op.drop_index("idx_runtime_log_runtime_sequence", table_name="runtime_log")
    for table in ("runtime_log", "runtime_log_archive"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("sequence")
    for table in ("runtime", "runtime_archive"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("log_sequence")

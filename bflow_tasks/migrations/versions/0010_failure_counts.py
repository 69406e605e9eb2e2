"""Count the failures of a command, and of a stage's opening, that a retry would not fix.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-23

A command that failed for a reason other than the database or the broker being unavailable
(a bug, data the database refuses) was retried by its task twelve times and then re-sent
by the sweep, for ever: the runtime stayed `pending` or `in_progress` and nobody was told.
Such failures are now counted (`runtime_command.failures`, `runtime_stage.opening_failures`);
at the limit the command is `failed` and the runtime ends in `error`. runtime_command has no
archive twin (the archive deletes commands); runtime_stage has one. `opening_failed_at` makes
the failing tasks of one try (one per approver) count once.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUNTS = {
    "runtime_command": "failures",
    "runtime_stage": "opening_failures",
    "runtime_stage_archive": "opening_failures",
}


UTC_DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
# When a stage's opening failure was last counted (one count per try, whatever its approvers).
COUNTED_AT = ("runtime_stage", "runtime_stage_archive")


def upgrade() -> None:
    for table, column in COUNTS.items():
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column(column, sa.Integer(), server_default="0", nullable=False))
            if table in COUNTED_AT:
                batch.add_column(sa.Column("opening_failed_at", UTC_DATETIME, nullable=True))


def downgrade() -> None:
    for table, column in COUNTS.items():
        with op.batch_alter_table(table) as batch:
            batch.drop_column(column)
            if table in COUNTED_AT:
                batch.drop_column("opening_failed_at")

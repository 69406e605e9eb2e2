"""Keep the fingerprint of the request an Idempotency-Key was first sent with.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23

A replay of a key with the same document but other data or another submitter got the first
runtime's 202, so the client took its second request for accepted while it was dropped. The
SHA-256 of the first request (`request_fingerprint`) now lets a replay that differs be refused
with a 409. Runtimes admitted before this upgrade have none; their replays are checked by
document only, as before.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("runtime", "runtime_archive")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("request_fingerprint", sa.String(64), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("request_fingerprint")

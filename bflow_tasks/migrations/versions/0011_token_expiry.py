"""Let an API token expire: `api_token.expires_at` (NULL: it never expires).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06

`bflow token create --expires-in DAYS` sets it; the shim refuses a token from that instant
on, from its cache too. Existing tokens get NULL and keep working as before.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    with op.batch_alter_table("api_token") as batch:
        batch.add_column(sa.Column("expires_at", UTC_DATETIME, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_token") as batch:
        batch.drop_column("expires_at")

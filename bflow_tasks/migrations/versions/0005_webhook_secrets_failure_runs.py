"""Keep every secret a rotation replaced within 24 h; remember each endpoint's last failure.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23

webhook_endpoint.previous_secrets (a JSON list, newest first) replaces the single
previous_secret_encrypted / previous_secret_expires_at slot, which lost the first old secret
when a second rotation came within 24 h. An endpoint's slot becomes a one-entry list.

webhook_endpoint.last_failure_at lets a failure that comes long after the previous one start
a new failing run instead of continuing a stale one. It is filled from the attempts log for
the endpoints failing now (an endpoint's latest attempt is its latest failure while it is
failing: any success ends the run).
"""

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")

# Lightweight tables for the data steps: only the columns they read or write.
endpoint = sa.table(
    "webhook_endpoint",
    sa.column("id", sa.String),
    sa.column("previous_secret_encrypted", sa.Text),
    sa.column("previous_secret_expires_at", UTC_DATETIME),
    sa.column("previous_secrets", sa.JSON),
    sa.column("failing_since", UTC_DATETIME),
    sa.column("last_failure_at", UTC_DATETIME),
)
delivery = sa.table("webhook_delivery", sa.column("id", sa.String), sa.column("endpoint_id", sa.String))
attempt = sa.table(
    "webhook_attempt", sa.column("delivery_id", sa.String), sa.column("attempted_at", UTC_DATETIME)
)


def upgrade() -> None:
    with op.batch_alter_table("webhook_endpoint") as batch:
        batch.add_column(sa.Column("previous_secrets", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("last_failure_at", UTC_DATETIME, nullable=True))

    connection = op.get_bind()
    rows = connection.execute(
        sa.select(endpoint.c.id, endpoint.c.previous_secret_encrypted, endpoint.c.previous_secret_expires_at)
    ).all()
    for endpoint_id, secret_encrypted, expires_at in rows:
        previous = []
        if secret_encrypted is not None and expires_at is not None:
            previous = [{"secret_encrypted": secret_encrypted, "expires_at": expires_at.isoformat()}]
        connection.execute(
            endpoint.update().where(endpoint.c.id == endpoint_id).values(previous_secrets=previous)
        )

    latest_attempt = (
        sa.select(sa.func.max(attempt.c.attempted_at))
        .select_from(attempt.join(delivery, delivery.c.id == attempt.c.delivery_id))
        .where(delivery.c.endpoint_id == endpoint.c.id)
        .scalar_subquery()
    )
    connection.execute(
        endpoint.update().where(endpoint.c.failing_since.is_not(None)).values(last_failure_at=latest_attempt)
    )

    with op.batch_alter_table("webhook_endpoint") as batch:
        batch.alter_column("previous_secrets", existing_type=sa.JSON(), nullable=False)
        batch.drop_column("previous_secret_expires_at")
        batch.drop_column("previous_secret_encrypted")


def downgrade() -> None:
    with op.batch_alter_table("webhook_endpoint") as batch:
        batch.add_column(sa.Column("previous_secret_encrypted", sa.Text(), nullable=True))
        batch.add_column(sa.Column("previous_secret_expires_at", UTC_DATETIME, nullable=True))

    # The one slot keeps the newest previous secret; older ones stop signing.
    connection = op.get_bind()
    rows = connection.execute(sa.select(endpoint.c.id, endpoint.c.previous_secrets)).all()
    for endpoint_id, previous in rows:
        if previous:
            newest = max(previous, key=lambda entry: entry["expires_at"])
            connection.execute(
                endpoint.update()
                .where(endpoint.c.id == endpoint_id)
                .values(
                    previous_secret_encrypted=newest["secret_encrypted"],
                    previous_secret_expires_at=datetime.fromisoformat(newest["expires_at"]),
                )
            )

    with op.batch_alter_table("webhook_endpoint") as batch:
        batch.drop_column("last_failure_at")
        batch.drop_column("previous_secrets")

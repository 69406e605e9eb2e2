"""Number the audit lines written before 0002 1..n, and drop the submission 0002 wrote twice.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23

0002 gave every line already written `sequence` 0 and every runtime `log_sequence` 0, so a
runtime's older lines came back in no fixed order (reads order by `sequence` alone). And the
first command applied writes the `runtime.submitted` line when `log_sequence` is 0: a runtime
in flight across that upgrade, whose submission the shim had logged before it, got a second
one, numbered after its older lines.

For each runtime with a line numbered 0 (live and archived), that second submission is
deleted, the lines are numbered 1..n in the order they were written (the 0s first, by time
then id; then the later ones, which are numbered already), and `log_sequence` is set to n,
so the next line gets n+1 and no command logs the submission again. Other runtimes are not
touched. Nothing is unique on (runtime_id, sequence), so the numbers may collide mid-update.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = {"runtime_log": "runtime", "runtime_log_archive": "runtime_archive"}


def upgrade() -> None:
    mysql = op.get_bind().dialect.name in ("mysql", "mariadb")
    for log, runtime in TABLES.items():
        # The derived tables are materialised first: MariaDB cannot otherwise change a table
        # that its own subquery reads.
        unnumbered = (
            f"SELECT runtime_id FROM (SELECT DISTINCT runtime_id FROM {log} WHERE sequence = 0) AS old"
        )
        op.execute(
            f"DELETE FROM {log} WHERE action = 'runtime.submitted' AND sequence > 0 AND runtime_id IN ("
            f"SELECT runtime_id FROM (SELECT runtime_id FROM {log} "
            f"WHERE action = 'runtime.submitted' AND sequence = 0) AS logged)"
        )
        op.execute(
            f"UPDATE {runtime} SET log_sequence = "
            f"(SELECT COUNT(*) FROM {log} WHERE {log}.runtime_id = {runtime}.id) "
            f"WHERE id IN ({unnumbered})"
        )
        numbered = (
            "SELECT id, ROW_NUMBER() OVER "
            "(PARTITION BY runtime_id ORDER BY sequence, created_at, id) AS position "
            f"FROM {log} WHERE runtime_id IN ({unnumbered})"
        )
        if mysql:
            op.execute(
                f"UPDATE {log} JOIN ({numbered}) AS numbered ON numbered.id = {log}.id "
                f"SET {log}.sequence = numbered.position"
            )
        else:  # SQLite (3.33+)
            op.execute(
                f"UPDATE {log} SET sequence = numbered.position "
                f"FROM ({numbered}) AS numbered WHERE numbered.id = {log}.id"
            )


def downgrade() -> None:
    # Nothing to undo: 1..n is what 0002 should have written, and putting the zeros back
    # would only bring the unordered log (and the second submission) back.
    pass

"""batch refusals one per row; batches count them

Revision ID: 0002
Revises: 0001

Lines refused at submission move from the batches' `invalid_lines` JSON column
to `batch_refusals`, one row each, and `batches.refused` counts them. Columns are
added and dropped with ALTER TABLE (SQLite 3.35 or later), never by recreating
`batches`: on SQLite, dropping a table that chunk jobs reference would cascade.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_ROWS_PER_INSERT = 1000

_batches_before = sa.table(
    "batches", sa.column("id", sa.String), sa.column("invalid_lines", sa.JSON)
)
_refusals = sa.table(
    "batch_refusals",
    sa.column("batch_id", sa.String),
    sa.column("line", sa.Integer),
    sa.column("custom_id", sa.String),
    sa.column("error", sa.JSON),
)


def upgrade() -> None:
    op.create_table(
        "batch_refusals",
        sa.Column("batch_id", sa.String(length=40), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("custom_id", sa.String(length=256), nullable=True),
        sa.Column("error", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("batch_id", "line"),
    )
    op.add_column("batches", sa.Column("refused", sa.Integer(), nullable=False, server_default="0"))
    bind = op.get_bind()
    found = bind.execute(
        sa.select(_batches_before.c.id, _batches_before.c.invalid_lines).where(
            _batches_before.c.invalid_lines.is_not(None)
        )
    ).all()
    for batch_id, lines in found:
        rows = [_refusal_row(batch_id, line) for line in lines or []]
        for start in range(0, len(rows), _ROWS_PER_INSERT):
            bind.execute(sa.insert(_refusals), rows[start : start + _ROWS_PER_INSERT])
        bind.execute(
            sa.text("UPDATE batches SET refused = :n WHERE id = :id"),
            {"n": len(rows), "id": batch_id},
        )
    op.drop_column("batches", "invalid_lines")


def _refusal_row(batch_id: str, line: dict[str, Any]) -> dict[str, Any]:
    return {
        "batch_id": batch_id,
        "line": line["line"],
        "custom_id": line.get("custom_id"),
        "error": line["error"],
    }


def downgrade() -> None:
    op.add_column("batches", sa.Column("invalid_lines", sa.JSON(), nullable=True))
    bind = op.get_bind()
    rows = bind.execute(sa.select(_refusals).order_by(_refusals.c.batch_id, _refusals.c.line))
    by_batch: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_batch.setdefault(row.batch_id, []).append(
            {"custom_id": row.custom_id, "line": row.line, "error": row.error}
        )
    for batch_id, lines in by_batch.items():
        bind.execute(
            sa.update(_batches_before)
            .where(_batches_before.c.id == batch_id)
            .values(invalid_lines=lines)
        )
    op.drop_column("batches", "refused")
    op.drop_table("batch_refusals")

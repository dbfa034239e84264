"""The v1 results table, created, or brought up to v1's last columns where it already exists.

v1 created the table without Alembic and added later columns with hand-written ALTERs; this
baseline does both through Alembic, so any v1 database upgrades in place.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Frozen here: a migration describes the schema of its own time, not today's table.
_COLUMNS = [
    ("s3_key", sa.Text, {"primary_key": True}),
    ("partition_key", sa.Text, {"nullable": False}),
    ("etag", sa.Text, {}),
    ("size_bytes", sa.BigInteger, {}),
    ("last_modified", sa.DateTime(timezone=True), {}),
    ("label", sa.Text, {}),
    ("score", sa.Float, {}),
    ("top_k", sa.JSON, {}),
    ("model_id", sa.Text, {}),
    ("model_revision", sa.Text, {}),
    ("status", sa.Text, {"nullable": False}),
    ("error", sa.Text, {}),
    ("classified_at", sa.DateTime(timezone=True), {"nullable": False}),
    ("run_id", sa.Text, {}),
]


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table("image_classifications"):
        op.create_table(
            "image_classifications",
            *(sa.Column(name, kind, **options) for name, kind, options in _COLUMNS),
            sa.CheckConstraint("status IN ('ok', 'error', 'deleted')", name="status_valid"),
        )
        op.create_index("ix_image_classifications_label", "image_classifications", ["label"])
        return
    existing = {column["name"] for column in inspector.get_columns("image_classifications")}
    for name, kind, options in _COLUMNS:
        if name not in existing and not options:  # v1 only ever added nullable columns
            op.add_column("image_classifications", sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    op.drop_table("image_classifications")

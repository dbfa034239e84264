"""Batches requested but not yet seen as Dagster runs, so a daemon crash cannot strand one.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "image_batches",
        sa.Column("batch_id", sa.Text, primary_key=True),
        sa.Column("partition_key", sa.Text, nullable=False),
        sa.Column("objects", sa.Integer, nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_image_batches_requested_at", "image_batches", ["requested_at"])


def downgrade() -> None:
    op.drop_index("ix_image_batches_requested_at", "image_batches")
    op.drop_table("image_batches")

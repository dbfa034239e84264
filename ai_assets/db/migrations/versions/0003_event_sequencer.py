"""S3 event notifications: remember each key's last event sequencer, so stale events lose.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("image_objects", sa.Column("sequencer", sa.Text))


def downgrade() -> None:
    op.drop_column("image_objects", "sequencer")

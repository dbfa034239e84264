"""When rows last changed, indexed: the exporter recounts only the days that changed.

``image_objects.updated_at`` is set by every inventory write; results already carry
``classified_at``. Rows written before this revision have no ``updated_at``: the exporter's
first pass counts every day anyway.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("image_objects", sa.Column("updated_at", sa.DateTime(timezone=True)))
    op.create_index("ix_image_objects_updated_at", "image_objects", ["updated_at"])
    op.create_index(
        "ix_image_classifications_classified_at", "image_classifications", ["classified_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_image_classifications_classified_at", "image_classifications")
    op.drop_index("ix_image_objects_updated_at", "image_objects")
    op.drop_column("image_objects", "updated_at")

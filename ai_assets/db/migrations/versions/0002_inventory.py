"""Design v2: the sensor's inventory table, keys in byte order, days as partition keys.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

S3_KEY = sa.Text().with_variant(postgresql.TEXT(collation="C"), "postgresql")


def upgrade() -> None:
    bind = op.get_bind()
    op.create_table(
        "image_objects",
        sa.Column("s3_key", S3_KEY, primary_key=True),
        sa.Column("partition_key", sa.Text, nullable=False),
        sa.Column("etag", sa.Text, nullable=False),
        sa.Column("size_bytes", sa.BigInteger),
        sa.Column("last_modified", sa.DateTime(timezone=True)),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True)),
        sa.Column("batch_id", sa.Text),
    )
    # a day's objects in key order: runs page through a day with keyset pagination
    op.create_index("ix_image_objects_partition_key", "image_objects", ["partition_key", "s3_key"])
    op.create_index("ix_image_objects_batch_id", "image_objects", ["batch_id"])
    if bind.dialect.name == "postgresql":
        # range scans in S3's order; rebuilds the primary key index once
        op.execute('ALTER TABLE image_classifications ALTER COLUMN s3_key TYPE text COLLATE "C"')
        day = "to_char(coalesce(last_modified, classified_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
    else:  # SQLite stores UTC timestamps as ISO text
        day = "substr(coalesce(last_modified, classified_at), 1, 10)"
    # v1 keyed rows by an escaped object key; v2 by the UTC day of the object version
    op.execute(f"UPDATE image_classifications SET partition_key = {day}")


def downgrade() -> None:
    op.drop_table("image_objects")

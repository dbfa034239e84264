"""Alembic's entry point: migrations run on the connection that ``upgrade`` hands over."""

from alembic import context

from ai_assets.db.migrations import VERSION_TABLE
from ai_assets.db.results import metadata

context.configure(
    connection=context.config.attributes["connection"],
    target_metadata=metadata,
    version_table=VERSION_TABLE,  # alembic_version may be Dagster's, in the same database
    render_as_batch=True,  # SQLite cannot ALTER most things in place
)
with context.begin_transaction():
    context.run_migrations()

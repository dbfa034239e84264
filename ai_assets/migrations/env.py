"""Alembic's entry point: migrations run on the connection that ``upgrade`` hands over."""

from alembic import context

from ai_assets.table import metadata

context.configure(
    connection=context.config.attributes["connection"],
    target_metadata=metadata,
    render_as_batch=True,  # SQLite cannot ALTER most things in place
)
with context.begin_transaction():
    context.run_migrations()

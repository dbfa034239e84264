"""The project's own database: the results table, the inventory and their Alembic migrations."""

"""Alembic migrations of the project's tables, applied on first connect and by a command.

``python -m ai_assets.db.migrations upgrade`` (or ``ai-assets-db upgrade``) brings the database of
``AI_ASSETS_DATABASE_URL`` to the newest schema; ``current`` prints its revision. Resources do
the same automatically the first time a process connects, so a deployment needs no extra step.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

#: Serialises concurrent upgrades (a sensor and several runs starting at once) on PostgreSQL.
_LOCK_KEY = 0x41495F6173736574  # "AI_asset"
#: Our Alembic history's own version table: Dagster's storage keeps its revision in Alembic's
#: default ``alembic_version``, and both may live in one database.
VERSION_TABLE = "ai_assets_alembic_version"
#: Where releases before our own version table recorded our revision.
LEGACY_VERSION_TABLE = "alembic_version"


def _config():  # -> alembic.config.Config; alembic is imported only when a database is used
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply every pending migration in one transaction (idempotent; safe to race)."""
    from alembic import command

    config = _config()
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        adopt_legacy_revision(connection)
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def adopt_legacy_revision(connection: Connection) -> str | None:
    """Move our revision from ``alembic_version`` into our own table; return it if moved.

    Only a revision of our own history is moved, only where our results table exists, and only
    while our version table does not; any other row (Dagster's storage revision) stays put.
    ``alembic_version`` is dropped when our row was its only one, so Dagster can create and
    stamp its own afterwards.
    """
    inspector = sa.inspect(connection)
    if inspector.has_table(VERSION_TABLE) or not all(
        inspector.has_table(name) for name in (LEGACY_VERSION_TABLE, "image_classifications")
    ):
        return None
    legacy = sa.table(LEGACY_VERSION_TABLE, sa.column("version_num", sa.String))
    found = connection.execute(sa.select(legacy.c.version_num)).scalars().all()
    scripts = _script_directory()
    known = {script.revision for script in scripts.walk_revisions()}
    ours = [revision for revision in found if revision in known]
    if not ours:
        return None
    if len(ours) > 1:
        raise RuntimeError(f"{LEGACY_VERSION_TABLE} holds several of our revisions: {ours}")
    [revision] = ours
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    context.stamp(scripts, revision)
    if len(found) == 1:
        connection.execute(sa.text(f"DROP TABLE {LEGACY_VERSION_TABLE}"))
    else:
        connection.execute(legacy.delete().where(legacy.c.version_num == revision))
    return revision


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        opts = {"version_table": VERSION_TABLE}
        return MigrationContext.configure(connection, opts=opts).get_current_revision()


def _script_directory():  # -> alembic.script.ScriptDirectory
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config())


def head_revision() -> str:
    head = _script_directory().get_current_head()
    assert head is not None
    return head


def main(argv: list[str] | None = None) -> int:
    from ai_assets.settings import default_database_url

    parser = argparse.ArgumentParser(
        prog="ai-assets-db", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("action", choices=["upgrade", "current"])
    parser.add_argument(
        "--url", help="SQLAlchemy URL (default: AI_ASSETS_DATABASE_URL or the embedded SQLite)"
    )
    args = parser.parse_args(argv)
    url = args.url or os.environ.get("AI_ASSETS_DATABASE_URL") or default_database_url()
    engine = sa.create_engine(url)
    try:
        if args.action == "upgrade":
            upgrade(engine)
        print(f"{engine.url.render_as_string(hide_password=True)}: {current_revision(engine)}")
    finally:
        engine.dispose()
    return 0

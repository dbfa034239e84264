"""Alembic migrations of the project's tables, applied on first connect and by a command.

``python -m ai_assets.migrations upgrade`` (or ``ai-assets-db upgrade``) brings the database of
``AI_ASSETS_DATABASE_URL`` to the newest schema; ``current`` prints its revision. Resources do
the same automatically the first time a process connects, so a deployment needs no extra step.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

#: Serialises concurrent upgrades (a sensor and several runs starting at once) on PostgreSQL.
_LOCK_KEY = 0x41495F6173736574  # "AI_asset"


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
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_config()).get_current_head()
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

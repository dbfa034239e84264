from __future__ import annotations

import functools
from pathlib import Path

import dagster as dg
import sqlalchemy as sa
from pydantic import Field
from sqlalchemy.engine import Engine

from ai_assets.db import migrations


@functools.lru_cache(maxsize=8)
def _engine(url: str) -> Engine:
    """One engine (and connection pool) per URL per process; migrations run on first use."""
    connect_args = {"timeout": 30} if url.startswith("sqlite") else {}
    engine = sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        Path(engine.url.database).parent.mkdir(parents=True, exist_ok=True)  # e.g. DAGSTER_HOME
    migrations.upgrade(engine)
    return engine


class ResultsDatabaseResource(dg.ConfigurableResource):
    """The project's database: the inventory and the results table (Postgres or SQLite)."""

    url: str = Field(description="SQLAlchemy URL (AI_ASSETS_DATABASE_URL), postgresql+psycopg2://…")

    def get_engine(self) -> Engine:
        return _engine(self.url)

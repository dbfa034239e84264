from __future__ import annotations

import functools

import dagster as dg
import sqlalchemy as sa
from pydantic import Field
from sqlalchemy.engine import Engine

from ai_assets import table


@functools.lru_cache(maxsize=8)
def _engine(url: str) -> Engine:
    """One engine (and connection pool) per URL per process; the schema is ensured once."""
    connect_args = {"timeout": 30} if url.startswith("sqlite") else {}
    engine = sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    table.create_schema(engine)
    return engine


class ResultsDatabase(dg.ConfigurableResource):
    """The results table's database (Postgres in production, SQLite as the embedded default)."""

    url: str = Field(description="SQLAlchemy URL (AI_ASSETS_DATABASE_URL), postgresql+psycopg2://…")

    def get_engine(self) -> Engine:
        return _engine(self.url)

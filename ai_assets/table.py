"""The ``image_classifications`` results table: schema, idempotent DDL and batched upserts.

SQLAlchemy Core only, so the same code runs on PostgreSQL (production, tests) and SQLite
(the embedded default). Nothing here knows about Dagster.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

Status = Literal["ok", "error", "deleted"]

metadata = sa.MetaData()

image_classifications = sa.Table(
    "image_classifications",
    metadata,
    sa.Column("s3_key", sa.Text, primary_key=True, comment="the original S3 object key"),
    sa.Column("partition_key", sa.Text, nullable=False, comment="Dagster partition key"),
    sa.Column("etag", sa.Text, comment="ETag of the object version classified"),
    sa.Column("size_bytes", sa.BigInteger),
    sa.Column(
        "last_modified",
        sa.DateTime(timezone=True),
        comment="the object version's LastModified (for deleted rows: when the 404 was seen)",
    ),
    sa.Column("label", sa.Text, comment="top-1 label; NULL unless status is ok"),
    sa.Column("score", sa.Float, comment="top-1 probability"),
    sa.Column("top_k", sa.JSON, comment="list of {label, score}, best first"),
    sa.Column("model_id", sa.Text),
    sa.Column("model_revision", sa.Text),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("classified_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("run_id", sa.Text),
    sa.CheckConstraint("status IN ('ok', 'error', 'deleted')", name="status_valid"),
    sa.Index("ix_image_classifications_label", "label"),
)


@dataclasses.dataclass(frozen=True)
class ClassificationRow:
    """One current row of the results table."""

    s3_key: str
    partition_key: str
    status: Status
    etag: str | None = None
    size_bytes: int | None = None
    last_modified: dt.datetime | None = None
    label: str | None = None
    score: float | None = None
    top_k: list[dict[str, Any]] | None = None
    model_id: str | None = None
    model_revision: str | None = None
    error: str | None = None
    classified_at: dt.datetime = dataclasses.field(default_factory=lambda: dt.datetime.now(dt.UTC))
    run_id: str | None = None


def create_schema(engine: Engine) -> None:
    """Create the table and its index if missing; add columns that later versions introduced."""
    metadata.create_all(engine, checkfirst=True)
    t = image_classifications
    existing = {c["name"] for c in sa.inspect(engine).get_columns(t.name)}
    with engine.begin() as connection:
        for column in t.columns:
            if column.name not in existing and column.nullable:
                kind = column.type.compile(dialect=engine.dialect)
                connection.execute(
                    sa.text(f'ALTER TABLE {t.name} ADD COLUMN "{column.name}" {kind}')
                )


def _insert(engine: Engine):
    if engine.dialect.name == "postgresql":
        return postgresql.insert(image_classifications)
    if engine.dialect.name == "sqlite":
        return sqlite.insert(image_classifications)
    raise ValueError(f"unsupported database dialect {engine.dialect.name!r}")


def upsert_rows(engine: Engine, rows: Sequence[ClassificationRow]) -> int:
    """Insert or replace ``rows`` by ``s3_key`` in one transaction; returns the row count.

    A row never replaces one about a newer object version: a run that read an object before
    it was overwritten may finish after the run that classified the new version.
    """
    if not rows:
        return 0
    t = image_classifications
    insert = _insert(engine)
    updated = {c.name: insert.excluded[c.name] for c in t.columns}
    del updated["s3_key"]
    statement = insert.on_conflict_do_update(
        index_elements=["s3_key"],
        set_=updated,
        where=sa.or_(
            t.c.last_modified.is_(None),
            insert.excluded.last_modified.is_(None),
            insert.excluded.last_modified >= t.c.last_modified,
        ),
    ).returning(t.c.s3_key)  # RETURNING lets SQLAlchemy send one multi-row INSERT, not N
    by_key = {row.s3_key: _values(row) for row in rows}  # last write wins in a batch
    with engine.begin() as connection:
        connection.execute(statement, list(by_key.values())).close()
    return len(by_key)


_FIELDS = tuple(field.name for field in dataclasses.fields(ClassificationRow))


def _values(row: ClassificationRow) -> dict[str, Any]:
    """A row's column values (``dataclasses.asdict`` deep-copies; nothing here is mutated)."""
    return {name: getattr(row, name) for name in _FIELDS}


def fetch_rows(engine: Engine, s3_keys: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Current rows, optionally only those for ``s3_keys``, ordered by key."""
    query = sa.select(image_classifications).order_by(image_classifications.c.s3_key)
    if s3_keys is not None:
        query = query.where(image_classifications.c.s3_key.in_(list(s3_keys)))
    with engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(query)]


def label_counts(engine: Engine, limit: int = 20) -> list[tuple[str, int]]:
    """The most frequent top-1 labels among successfully classified objects."""
    t = image_classifications
    count = sa.func.count().label("n")
    query = (
        sa.select(t.c.label, count)
        .where(t.c.status == "ok")
        .group_by(t.c.label)
        .order_by(count.desc(), t.c.label)
        .limit(limit)
    )
    with engine.connect() as connection:
        return [(label, n) for label, n in connection.execute(query)]


def status_counts(engine: Engine) -> dict[str, int]:
    t = image_classifications
    query = sa.select(t.c.status, sa.func.count()).group_by(t.c.status)
    with engine.connect() as connection:
        return {status: n for status, n in connection.execute(query)}


def model_versions(engine: Engine) -> list[tuple[str, str, int]]:
    """``(model_id, model_revision, rows)`` for every model that produced a current row."""
    t = image_classifications
    query = (
        sa.select(t.c.model_id, t.c.model_revision, sa.func.count())
        .where(t.c.model_id.is_not(None))
        .group_by(t.c.model_id, t.c.model_revision)
        .order_by(t.c.model_id, t.c.model_revision)
    )
    with engine.connect() as connection:
        return [(m, r, n) for m, r, n in connection.execute(query)]


def recent_rows(engine: Engine, limit: int = 10) -> list[dict[str, Any]]:
    """The most recently classified rows, newest first."""
    t = image_classifications
    query = sa.select(t).order_by(t.c.classified_at.desc(), t.c.s3_key).limit(limit)
    with engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(query)]


@dataclasses.dataclass(frozen=True)
class PartitionAudit:
    """What the table holds for a set of objects, for the asset checks."""

    expected: int
    present: int
    bad_scores: int
    errors: int


def audit(engine: Engine, s3_keys: Sequence[str]) -> PartitionAudit:
    """Count rows, out-of-range scores and errors among ``s3_keys``, in SQL."""
    t = image_classifications
    present = bad_scores = errors = 0
    chunk = 5_000  # keep IN lists well below every driver's parameter limit
    with engine.connect() as connection:
        for start in range(0, len(s3_keys), chunk):
            keys = list(s3_keys[start : start + chunk])
            bad = sa.or_(t.c.score < 0, t.c.score > 1, t.c.score.is_(None))
            query = sa.select(
                sa.func.count(),
                sa.func.count().filter(sa.and_(t.c.status == "ok", bad)),
                sa.func.count().filter(t.c.status == "error"),
            ).where(t.c.s3_key.in_(keys))
            n, b, e = connection.execute(query).one()
            present, bad_scores, errors = present + n, bad_scores + b, errors + e
    return PartitionAudit(len(set(s3_keys)), present, bad_scores, errors)

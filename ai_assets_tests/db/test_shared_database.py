"""One PostgreSQL database for Dagster's storage and our tables, as the chart's defaults and many
users set it up: both orders of first start, and a database from before our own version table."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster._core.storage.event_log.schema import SqlEventLogStorageMetadata
from dagster._core.storage.runs.schema import RunStorageSqlMetadata
from dagster._core.storage.schedules.schema import ScheduleStorageSqlMetadata

from ai_assets.db import migrations, results
from ai_assets_dev.inprocess import InProcessDaemon
from ai_assets_dev.localdev import dagster_storage
from ai_assets_tests.support.util import configure, rows_by_key

OURS = {results.image_objects.name, results.image_classifications.name, migrations.VERSION_TABLE}


@contextlib.contextmanager
def dagster_on(url: str) -> Iterator[dg.DagsterInstance]:
    """A Dagster instance whose run, event-log and schedule storage live in ``url``'s database."""
    with dg.instance_for_test(overrides={"storage": dagster_storage(url)}) as instance:
        yield instance


def versions(url: str) -> dict[str, list[str]]:
    """The rows of both version tables: Dagster's (Alembic's default) and ours."""
    engine = sa.create_engine(url)
    found: dict[str, list[str]] = {}
    with engine.connect() as connection:
        for name in (migrations.LEGACY_VERSION_TABLE, migrations.VERSION_TABLE):
            if sa.inspect(connection).has_table(name):
                rows = connection.execute(sa.text(f"SELECT version_num FROM {name}"))
                found[name] = sorted(rows.scalars())
    engine.dispose()
    return found


def classify_two_photos(
    instance: dg.DagsterInstance, bucket: str, s3_client: Any, jpegs: dict[str, bytes]
) -> None:
    for name in ("chelsea", "coffee"):
        s3_client.put_object(Bucket=bucket, Key=f"{name}.jpg", Body=jpegs[name])
    result, runs = InProcessDaemon(instance).tick()
    assert len(result.run_requests or []) == 1
    assert [run.success for run in runs] == [True]


@pytest.mark.parametrize("first", ["dagster", "ai_assets"])
def test_the_sensor_and_a_run_share_one_database_with_dagster(
    first: str,
    pg_url: str,
    bucket: str,
    s3_client: Any,
    jpegs: dict[str, bytes],
    tiny_model_dir: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configure(monkeypatch, bucket, pg_url, tiny_model_dir)
    if first == "ai_assets":
        engine = sa.create_engine(pg_url)
        migrations.upgrade(engine)
        engine.dispose()
    with dagster_on(pg_url) as instance:
        classify_two_photos(instance, bucket, s3_client, jpegs)
        assert instance.get_runs_count() == 1

    assert set(rows_by_key(pg_url)) == {"chelsea.jpg", "coffee.jpg"}
    found = versions(pg_url)
    assert found[migrations.VERSION_TABLE] == [migrations.head_revision()]
    [dagster_revision] = found[migrations.LEGACY_VERSION_TABLE]  # Dagster's, left alone
    assert dagster_revision != migrations.head_revision()
    with dagster_on(pg_url) as instance:  # Dagster's own migration command still works
        instance.upgrade()
        assert instance.get_runs_count() == 1
    assert versions(pg_url)[migrations.LEGACY_VERSION_TABLE] == [dagster_revision]


def test_our_table_names_stay_clear_of_dagsters() -> None:
    schemas = (SqlEventLogStorageMetadata, RunStorageSqlMetadata, ScheduleStorageSqlMetadata)
    dagster_tables = {name for metadata in schemas for name in metadata.tables}
    assert {"runs", "event_logs", "jobs"} <= dagster_tables  # the lookup found Dagster's
    assert OURS.isdisjoint(dagster_tables | {migrations.LEGACY_VERSION_TABLE})


#: The newest revision a release before our own version table could have recorded.
_LEGACY_HEAD = "0003"


def _as_a_release_before_our_version_table(url: str) -> None:
    """Our schema at 0003 with its revision in ``alembic_version``, as releases up to it left."""
    engine = sa.create_engine(url)
    migrations.upgrade(engine, _LEGACY_HEAD)
    with engine.begin() as connection:
        connection.execute(sa.text(f"DROP TABLE {migrations.VERSION_TABLE}"))
        connection.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32))"))
        connection.execute(sa.text(f"INSERT INTO alembic_version VALUES ('{_LEGACY_HEAD}')"))
    engine.dispose()


def test_a_revision_left_in_alembic_version_is_moved_then_dagster_starts(db_url: str) -> None:
    _as_a_release_before_our_version_table(db_url)
    engine = sa.create_engine(db_url)
    with engine.begin() as connection:
        connection.execute(
            results.image_classifications.insert(),
            {"s3_key": "kept.jpg", "partition_key": "2026-01-01", "status": "deleted",
             "classified_at": dt.datetime.now(dt.UTC)},
        )  # fmt: skip
    migrations.upgrade(engine)  # moves 0003 into our table, then upgrades from it
    assert versions(db_url) == {migrations.VERSION_TABLE: [migrations.head_revision()]}
    assert [r["s3_key"] for r in results.fetch_rows(engine)] == ["kept.jpg"]  # nothing rebuilt
    migrations.upgrade(engine)  # idempotent
    engine.dispose()
    if db_url.startswith("postgresql"):
        with dagster_on(db_url) as instance:  # Dagster can now create and stamp its own table
            assert instance.get_runs_count() == 0
        assert versions(db_url)[migrations.LEGACY_VERSION_TABLE] != [_LEGACY_HEAD]


def test_a_foreign_revision_in_alembic_version_is_never_taken_for_ours(pg_url: str) -> None:
    """Dagster's revision (or another tool's) stays; our history starts in our own table."""
    engine = sa.create_engine(pg_url)
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32))"))
        connection.execute(sa.text("INSERT INTO alembic_version VALUES ('29b539ebc72a')"))
    migrations.upgrade(engine)
    engine.dispose()
    assert versions(pg_url) == {
        migrations.LEGACY_VERSION_TABLE: ["29b539ebc72a"],
        migrations.VERSION_TABLE: [migrations.head_revision()],
    }

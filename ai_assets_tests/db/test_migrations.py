"""Alembic migrations on real PostgreSQL and SQLite: the models, idempotence, v1 in place."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from ai_assets.db import migrations, results
from ai_assets_tests.support.util import V1_DDL


def test_migrations_build_exactly_the_tables_the_code_uses(db_url: str) -> None:
    engine = sa.create_engine(db_url)
    migrations.upgrade(engine)
    migrations.upgrade(engine)  # idempotent
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"version_table": migrations.VERSION_TABLE}
        )
        diff = compare_metadata(context, results.metadata)
    # comments live in the models for the UI's column schema; the database need not store them
    changes = [c for d in diff for c in (d if isinstance(d, list) else [d])]
    assert [c for c in changes if "comment" not in c[0]] == []
    assert migrations.current_revision(engine) == migrations.head_revision()
    engine.dispose()


def test_a_v1_table_is_upgraded_in_place(db_url: str) -> None:
    """v1's table (before last_modified and model_revision existed), keyed by escaped keys."""
    engine = sa.create_engine(db_url)
    with engine.begin() as connection:
        connection.execute(sa.text(V1_DDL))
        connection.execute(
            sa.text(
                "INSERT INTO image_classifications (s3_key, partition_key, etag, label, score, "
                "status, classified_at) VALUES ('photos/a...b.jpg', 'a..%2Eb.jpg', 'e1', "
                "'espresso', 0.9, 'ok', :when)"
            ),
            {"when": "2026-03-09 23:30:00+00:00"},
        )
    migrations.upgrade(engine)
    [row] = results.fetch_rows(engine)
    assert (row["s3_key"], row["label"], row["etag"]) == ("photos/a...b.jpg", "espresso", "e1")
    assert row["partition_key"] == "2026-03-09"  # the day, no longer an escaped key
    assert row["last_modified"] is None and row["model_revision"] is None
    assert sa.inspect(engine).has_table("image_objects")
    engine.dispose()


def test_concurrent_first_connects_upgrade_once(pg_url: str) -> None:
    engines = [sa.create_engine(pg_url) for _ in range(4)]
    errors: list[BaseException] = []

    def connect(engine: sa.Engine) -> None:
        try:
            migrations.upgrade(engine)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=connect, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert migrations.current_revision(engines[0]) == migrations.head_revision()
    for engine in engines:
        engine.dispose()


@pytest.mark.integration  # a subprocess or a server
def test_the_documented_command_upgrades_and_reports(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    command = [sys.executable, "-m", "ai_assets.db.migrations"]
    upgraded = subprocess.run([*command, "upgrade", "--url", url], capture_output=True, text=True)
    assert upgraded.returncode == 0, upgraded.stderr
    current = subprocess.run([*command, "current", "--url", url], capture_output=True, text=True)
    assert current.stdout.strip().endswith(migrations.head_revision())

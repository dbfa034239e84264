"""Dagster's storage as the chart deploys it (ops.storage): one login per process, not one per
operation, on a real PostgreSQL, through its restart and with a cloud token provider."""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster_postgres.auth import PgTokenProvider

from ai_assets.ops.storage import PooledPostgresStorage
from ai_assets_dev.localdev import PostgresServer, dagster_storage, postgres


@dg.asset
def answer() -> int:
    return 42


@contextlib.contextmanager
def logins() -> Iterator[collections.Counter[str]]:
    """New PostgreSQL connections of this process meanwhile, by database."""
    counted: collections.Counter[str] = collections.Counter()

    def connected(dbapi_connection: Any, _record: Any) -> None:
        counted[dbapi_connection.info.dbname] += 1

    sa.event.listen(sa.engine.Engine, "connect", connected)
    try:
        yield counted
    finally:
        sa.event.remove(sa.engine.Engine, "connect", connected)


def materialize(instance: dg.DagsterInstance) -> None:
    assert dg.materialize([answer], instance=instance).success


@pytest.fixture
def own_pg() -> Iterator[PostgresServer]:
    """A PostgreSQL of the test's own: restarted or made to ask for a password."""
    with postgres() as server:
        yield server


def test_the_chart_storage_logs_in_once_per_process_not_once_per_operation(
    pg_server: PostgresServer,
) -> None:
    per_run = {}
    for pooled in (False, True):  # dagster-postgres's own storage, then the chart's
        url = pg_server.create_database(f"dagster_{pooled}_{time.monotonic_ns()}")
        with dg.instance_for_test(overrides={"storage": dagster_storage(url, pooled)}) as instance:
            materialize(instance)  # the first run: the instance's own set-up
            with logins() as counted:
                materialize(instance)
            per_run[pooled] = counted[url.rsplit("/", 1)[1]]
    assert per_run[False] >= 20, per_run  # a login per operation: what the chart's saves
    assert per_run[True] == 0, per_run  # its connections held since the first run


def test_the_storage_in_the_chart_is_dagster_postgres_with_its_config(pg_url: str) -> None:
    with dg.instance_for_test(overrides={"storage": dagster_storage(pg_url)}) as instance:
        from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.run_storage, PostgresRunStorage)
        storage = instance.get_ref().storage_data
        assert storage is not None
        assert storage.class_name == PooledPostgresStorage.__name__
        materialize(instance)
        assert instance.get_latest_materialization_event(dg.AssetKey("answer")) is not None


def test_a_postgres_restart_costs_a_login_not_a_failed_run(own_pg: PostgresServer) -> None:
    url = own_pg.create_database("dagster")
    with dg.instance_for_test(overrides={"storage": dagster_storage(url)}) as instance:
        materialize(instance)
        own_pg.stop("fast")  # a restart, e.g. a managed server's maintenance: connections dead
        own_pg.start()
        with logins() as counted:
            materialize(instance)  # each dead connection found before use and replaced
        assert counted["dagster"] >= 1
        runs = instance.get_run_records()
        assert [r.dagster_run.status for r in runs] == [dg.DagsterRunStatus.SUCCESS] * 2


def test_a_connection_held_past_cloud_idle_timeouts_is_replaced_not_checked(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NAT that dropped an idle connection silently would hold its check for ~15 minutes."""
    from ai_assets.ops import storage as module

    monkeypatch.setattr(module, "POOL_RECYCLE_S", 1)
    storage = PooledPostgresStorage(pg_url.replace("+psycopg2", ""))
    try:
        with logins() as counted:
            storage.run_storage.get_runs()
            storage.run_storage.get_runs()
            assert sum(counted.values()) == 1  # held
            time.sleep(1.2)
            storage.run_storage.get_runs()
            assert sum(counted.values()) == 2  # too old: a new login
    finally:
        storage.run_storage.dispose()


class Token(PgTokenProvider):
    """A cloud token provider that hands out the server's password, counting the logins."""

    def __init__(self, password: str) -> None:
        super().__init__()
        self.password = password
        self.logins = 0

    def _fetch_token(self) -> tuple[str, float]:
        return self.password, time.time() + 3600

    def get_token(self) -> str:
        self.logins += 1
        return super().get_token()


def test_every_login_is_signed_by_the_cloud_token_provider(own_pg: PostgresServer) -> None:
    own_pg.create_database("dagster")
    own_pg.require_password("from-the-token")
    passwordless = own_pg.database_url("dagster").replace(":from-the-token", "")
    with pytest.raises(sa.exc.OperationalError, match="password"):
        sa.create_engine(passwordless).connect()
    token = Token("from-the-token")
    storage = PooledPostgresStorage(passwordless.replace("+psycopg2", ""), token_provider=token)
    try:
        assert storage.run_storage.get_runs() == []
        signed = token.logins
        own_pg.stop("fast")
        own_pg.start()
        assert storage.run_storage.get_runs() == []  # a new login, signed again
        assert token.logins > signed
    finally:
        storage.run_storage.dispose()  # the stores share one engine


@pytest.fixture
def connections(pg_server: PostgresServer) -> Iterator[tuple[str, Callable[[int], int]]]:
    """A fresh database's URL, and its open connections once they number at most n (or 10 s
    later: a closed connection's backend exits on its own time)."""
    url = pg_server.create_database(f"dagster_held_{time.monotonic_ns()}")
    admin = sa.create_engine(pg_server.url)
    query = sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = :name")

    def open_connections(at_most: int) -> int:
        deadline = time.monotonic() + 10
        while True:
            with admin.connect() as connection:
                count = connection.execute(query, {"name": url.rsplit("/", 1)[1]}).scalar_one()
            if count <= at_most or time.monotonic() > deadline:
                return count
            time.sleep(0.05)

    yield url, open_connections
    admin.dispose()


def test_closing_the_instance_closes_its_connections(connections) -> None:
    url, open_connections = connections
    with dg.instance_for_test(overrides={"storage": dagster_storage(url)}) as instance:
        materialize(instance)
        assert open_connections(99) >= 1  # held between operations
    assert open_connections(0) == 0


def test_the_webserver_engine_replaces_the_shared_one_without_leaving_it_open(connections) -> None:
    url, open_connections = connections
    with dg.instance_for_test(overrides={"storage": dagster_storage(url)}) as instance:
        materialize(instance)
        instance.optimize_for_webserver(15_000, 3600, 20)  # as dagster-webserver starts
        assert instance.get_runs()  # the run store's own engine: one connection
        assert open_connections(1) == 1


@contextlib.contextmanager
def catalog_reads() -> Iterator[list[str]]:
    """Statements of this process meanwhile that read PostgreSQL's catalog (reflection)."""
    statements: list[str] = []

    def executed(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "pg_catalog" in statement:
            statements.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", executed)
    try:
        yield statements
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", executed)


def test_the_chart_storage_reads_the_schema_once_not_per_run(pg_server: PostgresServer) -> None:
    per_run = {}
    for pooled in (False, True):  # dagster-postgres's own storage, then the chart's
        url = pg_server.create_database(f"dagster_schema_{pooled}_{time.monotonic_ns()}")
        with dg.instance_for_test(overrides={"storage": dagster_storage(url, pooled)}) as instance:
            materialize(instance)  # the first run finds the columns
            with catalog_reads() as statements:
                materialize(instance)
                assert len(instance.get_run_records()) == 2  # what the daemon and the UI read
            per_run[pooled] = len(statements)
    assert per_run[False] >= 9, per_run  # a reflection before each run read and event write
    assert per_run[True] == 0, per_run


def test_a_column_a_migration_adds_later_is_found_at_the_next_operation(pg_url: str) -> None:
    """A column that was missing is asked for again (``dagster instance migrate`` under a
    running process); one that was found is not."""
    with dg.instance_for_test(overrides={"storage": dagster_storage(pg_url)}) as instance:
        events = instance.event_log_storage
        assert not events.has_asset_key_col("added_later")
        with catalog_reads() as statements:
            assert not events.has_asset_key_col("added_later")
        assert statements  # asked again
        with events.index_connection() as connection:  # pyright: ignore[reportAttributeAccessIssue]
            connection.execute(sa.text("ALTER TABLE asset_keys ADD COLUMN added_later TEXT"))
        assert events.has_asset_key_col("added_later")
        with catalog_reads() as statements:
            assert events.has_asset_key_col("added_later")
        assert not statements  # found once, known since

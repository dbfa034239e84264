"""Dagster's PostgreSQL storage holding connections in every process, not in the webserver only.

dagster-postgres opens a new connection for every storage operation (``NullPool``) except in
the webserver, which holds them (``optimize_for_webserver``). A batch run of classify_images_job
makes ~85 storage operations, whatever its size, so its pod logged in ~85 times: measured on
this project's machine, 0.4 ms of the run's CPU per login to a loopback server that trusts it,
3.6 ms with SCRAM and 5.3 ms with SCRAM over TLS (a managed PostgreSQL's defaults), and 3-11 ms
of wall time each. The sensor's ticks in the daemon pay the same per operation. Its stores
also remember the columns and tables that Dagster's migrations added (``_KnownColumns``).
Same config as ``storage: postgres``; the chart's dagster.yaml names this class (README,
Deploy to Kubernetes).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from dagster._core.storage.base_storage import DagsterStorage
from dagster._serdes import ConfigurableClassData
from dagster_postgres import (
    DagsterPostgresStorage,
    PostgresEventLogStorage,
    PostgresRunStorage,
    PostgresScheduleStorage,
)
from dagster_postgres.utils import (
    create_pg_engine,
    get_token_provider_from_config,
    pg_url_from_config,
)

if TYPE_CHECKING:
    from dagster_postgres.auth import PgTokenProvider
    from sqlalchemy.engine import Connection, Engine

#: Seconds a held connection serves before the next operation replaces it: fewer than the idle
#: timeouts of cloud load balancers and NATs (Azure's 4 minutes, AWS's 350 s), some of which
#: drop a connection without a word, so that the check before use would wait for TCP to give up
#: (~15 minutes), not fail. A process busy for hours logs in twice every 3 minutes.
POOL_RECYCLE_S = 180
#: Connections held between operations, shared by the run, event-log and schedule stores: a
#: run's operations nest two deep at times, so with two it logs in twice in all (one held: once
#: more per run).
POOL_SIZE = 2


class PooledPostgresStorage(DagsterPostgresStorage):
    """dagster-postgres's storage whose run, event-log and schedule stores share connections
    held between operations."""

    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: ConfigurableClassData | None = None,
        token_provider: PgTokenProvider | None = None,
    ) -> None:
        # DagsterPostgresStorage.__init__, with the stores below on one pooled engine
        self.postgres_url = postgres_url
        self.should_autocreate_tables = should_autocreate_tables
        self._inst_data = inst_data
        engine = pooled_engine(postgres_url, token_provider)
        stores = [
            store(postgres_url, should_autocreate_tables, token_provider=token_provider)
            for store in (_RunStorage, _EventLogStorage, _ScheduleStorage)
        ]
        for store in stores:
            store._engine = engine  # their own engine (NullPool) set up their tables
        self._run_storage, self._event_log_storage, self._schedule_storage = stores
        DagsterStorage.__init__(self)

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> PooledPostgresStorage:
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )


def pooled_engine(url: str, token_provider: PgTokenProvider | None = None) -> Engine:
    """``POOL_SIZE`` connections held, more opened while threads need them at once (never a
    wait).

    Each is checked before use (``pool_pre_ping``): after PostgreSQL restarts or drops an idle
    connection, an operation costs a new login, never a failed event write or a failed tick.
    A cloud token provider (``auth_provider``) still signs every login.
    """
    return create_pg_engine(
        url,
        token_provider,
        isolation_level="AUTOCOMMIT",
        pool_size=POOL_SIZE,
        max_overflow=-1,
        pool_pre_ping=True,
        pool_recycle=POOL_RECYCLE_S,
    )


class _Closing:
    """A store whose connections close when Dagster disposes of it (dagster-postgres's leave
    theirs to the process's exit: it holds none)."""

    _engine: Engine

    def dispose(self) -> None:
        super().dispose()  # pyright: ignore[reportAttributeAccessIssue]
        self._engine.dispose()

    def optimize_for_webserver(
        self, statement_timeout: int, pool_recycle: int, max_overflow: int
    ) -> None:
        """The webserver's engine of its own (a statement timeout) replaces the shared one."""
        self._engine.dispose()
        super().optimize_for_webserver(statement_timeout, pool_recycle, max_overflow)  # pyright: ignore[reportAttributeAccessIssue]


class _KnownColumns:
    """Dagster's checks for a column or table that a migration adds, answered from memory once
    they found it.

    Dagster's SQL storage reads the catalog for each such check, before every run-record read
    and run event write: 36 catalog queries per batch run here, and ~12 of its ~125 ms of CPU
    in process. Migrations add and never drop, so a check that found its column or table stays
    true; one that did not asks again, so a ``dagster instance migrate`` under a running process
    counts from its next operation. (``_has_asset_key_col_on_connection`` is Dagster's private
    name: a test fails if a Dagster upgrade bypasses it.)
    """

    _known: frozenset[str] = frozenset()

    def _known_or(self, name: str, check: Callable[[], bool]) -> bool:
        if name in self._known:
            return True
        found = check()
        if found:  # threads racing here at worst ask the catalog once more later
            self._known = self._known | {name}
        return found


class _RunStorage(_KnownColumns, _Closing, PostgresRunStorage):
    def has_run_stats_index_cols(self) -> bool:
        return self._known_or("runs.start_time,end_time", super().has_run_stats_index_cols)

    def has_backfill_id_column(self) -> bool:
        return self._known_or("runs.backfill_id", super().has_backfill_id_column)

    def has_bulk_actions_selector_cols(self) -> bool:
        return self._known_or("bulk_actions.selector_id", super().has_bulk_actions_selector_cols)

    def has_bulk_action_job_name_column(self) -> bool:
        return self._known_or("bulk_actions.job_name", super().has_bulk_action_job_name_column)

    def has_backfill_tags_table(self) -> bool:
        return self._known_or("backfill_tags", super().has_backfill_tags_table)


class _EventLogStorage(_KnownColumns, _Closing, PostgresEventLogStorage):
    def _has_asset_key_col_on_connection(self, conn: Connection, column_name: str) -> bool:
        check = functools.partial(super()._has_asset_key_col_on_connection, conn, column_name)
        return self._known_or(f"asset_keys.{column_name}", check)

    def has_table(self, table_name: str) -> bool:
        return self._known_or(table_name, functools.partial(super().has_table, table_name))


class _ScheduleStorage(_Closing, PostgresScheduleStorage):
    pass

"""``ai-assets-exporter``: the pipeline's state for Prometheus, from our tables and Dagster's.

How far behind the bucket are we, and is anything stuck? Objects by state and the oldest
waiting object's age (db.status.BucketStatus: per-day counts, recounted as days change),
classifications and errors as counters, the sensor's last good tick, runs by status. A
background loop refreshes every ``--interval`` seconds; a scrape only reads the last refresh,
so it costs microseconds whatever the bucket's size.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import dagster as dg
import prometheus_client as prom
from dagster._core.definitions.run_request import InstigatorType
from dagster._core.scheduler.instigation import TickStatus
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ai_assets import settings
from ai_assets.db.status import BucketStatus, Totals
from ai_assets.defs.images.jobs import CLASSIFICATIONS, SENSOR_NAME, classify_images_job
from ai_assets.resources.results_db import ResultsDatabaseResource
from ai_assets.runs import Meta

log = logging.getLogger("ai_assets.exporter")

DEFAULT_PORT = 9108
#: Runs that finished recently: the window of ``ai_assets_runs_finished``.
FINISHED_WINDOW = dt.timedelta(hours=1)
ACTIVE = {"queued": dg.DagsterRunStatus.QUEUED, "started": dg.DagsterRunStatus.STARTED}
FINISHED = {
    "success": dg.DagsterRunStatus.SUCCESS,
    "failure": dg.DagsterRunStatus.FAILURE,
    "canceled": dg.DagsterRunStatus.CANCELED,
}
#: Materializations read back to find the latest run that classified something (a run of a
#: multi-day backfill writes one per day; a day materialized with nothing left to do, none).
LAST_RUN_LOOKBACK = 50


@dataclasses.dataclass(frozen=True)
class LastRun:
    """What the latest run that classified images reported of its loop (its metadata)."""

    images_per_second: float
    cpu_ms_per_image: float
    feed_cpu_ms_per_image: float | None  # None: a run of a version before it reported it


@dataclasses.dataclass(frozen=True)
class DagsterState:
    """What the Dagster instance says about the sensor and the classification runs."""

    sensor_running: bool  # False when stopped or never started
    last_good_tick: float | None  # when its last tick that did not fail began (epoch s)
    runs: dict[str, int]  # queued / started now
    finished: dict[str, int]  # success / failure / canceled within FINISHED_WINDOW
    last_run: LastRun | None = None  # None: no run has classified an image yet


def read_dagster(instance: dg.DagsterInstance, now: dt.datetime) -> DagsterState:
    """A few indexed reads of Dagster's storage: one sensor's state and ticks, run counts."""
    running, last = False, None
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.instigator_name != SENSOR_NAME:
            continue
        running = running or state.is_running
        good = [TickStatus.SUCCESS, TickStatus.SKIPPED]
        ticks = instance.get_ticks(
            state.instigator_origin_id, state.selector_id, limit=1, statuses=good
        )
        if ticks and (last is None or ticks[0].timestamp > last):
            last = ticks[0].timestamp
    job = classify_images_job.name

    def count(status: dg.DagsterRunStatus, **window: Any) -> int:
        return instance.get_runs_count(dg.RunsFilter(job_name=job, statuses=[status], **window))

    since = now - FINISHED_WINDOW
    return DagsterState(
        running,
        last,
        {name: count(status) for name, status in ACTIVE.items()},
        {name: count(status, updated_after=since) for name, status in FINISHED.items()},
        read_last_run(instance),
    )


def read_last_run(instance: dg.DagsterInstance, page: int = 5) -> LastRun | None:
    """The figures of the latest image_classifications materialization with images in it,
    read back ``page`` materializations at a time (each carries a run's sample and labels)."""
    cursor = None
    for _ in range(-(-LAST_RUN_LOOKBACK // page)):
        found = instance.fetch_materializations(CLASSIFICATIONS, limit=page, cursor=cursor)
        for record in found.records:
            materialization = record.asset_materialization
            if materialization and (last := _last_run(materialization.metadata)):
                return last
        if not found.has_more:
            break
        cursor = found.cursor
    return None


def _last_run(metadata: Mapping[str, Any]) -> LastRun | None:
    """A run's figures from its materialization's metadata; None if it classified nothing."""
    values = {key: getattr(entry, "value", None) for key, entry in metadata.items()}
    if not values.get(Meta.IMAGES):
        return None
    feed = values.get(Meta.FEED_CPU_MS_PER_IMAGE)
    return LastRun(
        float(values.get(Meta.IMAGES_PER_SECOND) or 0.0),
        float(values.get(Meta.CPU_MS_PER_IMAGE) or 0.0),
        None if feed is None else float(feed),
    )


class Source:
    """One thing the exporter reads: its last value, whether that read worked, what it cost."""

    def __init__(self, name: str, read: Callable[[dt.datetime], Any]) -> None:
        self.name, self.read = name, read
        self.value: Any = None
        self.up = False
        self.seconds = 0.0
        self.refreshed: float | None = None

    def refresh(self, now: dt.datetime) -> None:
        started = time.perf_counter()
        try:
            self.value = self.read(now)
            self.up, self.refreshed = True, time.time()
        except Exception:  # a database or instance outage: keep the last value, say so
            log.exception("reading %s failed; its metrics keep their last values", self.name)
            self.up = False
        self.seconds = time.perf_counter() - started


class PipelineCollector(Collector):
    """Serves the sources' last values as Prometheus metrics."""

    def __init__(self, bucket: BucketStatus, instance: dg.DagsterInstance) -> None:
        self.bucket = bucket
        self.database = Source("database", self._read_database)
        self.dagster = Source("dagster", lambda now: read_dagster(instance, now))
        self.sources = (self.database, self.dagster)
        self.scrape_seconds = 0.0

    def _read_database(self, now: dt.datetime) -> Totals:
        self.bucket.refresh(now)
        return self.bucket.totals()

    def refresh(self) -> None:
        now = dt.datetime.now(dt.UTC)
        for source in self.sources:
            source.refresh(now)

    def collect(self) -> Iterator[Any]:
        started = time.perf_counter()
        yield from self._database_metrics()
        yield from self._dagster_metrics()
        yield from self._own_metrics()
        self.scrape_seconds = time.perf_counter() - started

    def _database_metrics(self) -> Iterator[Any]:
        totals: Totals | None = self.database.value
        if totals is None:  # not counted yet: no numbers rather than wrong ones
            return
        yield _by_label(
            GaugeMetricFamily,
            "ai_assets_objects",
            "Objects under the prefix by state: waiting (no current result), current (classified), "
            "error (current error row), deleted (gone from the bucket)",
            "state",
            [
                ("waiting", totals.waiting),
                ("current", totals.current - totals.errors),
                ("error", totals.errors),
                ("deleted", totals.deleted),
            ],
        )
        oldest = totals.oldest_waiting
        age = (dt.datetime.now(dt.UTC) - oldest).total_seconds() if oldest else 0.0
        yield GaugeMetricFamily(
            "ai_assets_oldest_waiting_age_seconds",
            "Age of the oldest object version still waiting for a result, since it appeared "
            "(the later of its LastModified and the sensor's first sight); 0 when none waits",
            value=max(age, 0.0),
        )
        yield _by_label(
            CounterMetricFamily,
            "ai_assets_classifications",
            "Results written since the exporter started, by status (ok, error, deleted)",
            "status",
            sorted(self.bucket.classified.items()),
        )
        yield _by_label(
            CounterMetricFamily,
            "ai_assets_classification_errors",
            "Error results written since the exporter started, by kind",
            "kind",
            sorted(self.bucket.errors.items()),
        )

    def _dagster_metrics(self) -> Iterator[Any]:
        state: DagsterState | None = self.dagster.value
        if state is None:
            return
        yield GaugeMetricFamily(
            "ai_assets_sensor_running",
            f"1 when {SENSOR_NAME} is running in the Dagster instance",
            value=float(state.sensor_running),
        )
        if state.last_good_tick is not None:
            yield GaugeMetricFamily(
                "ai_assets_sensor_last_good_tick_age_seconds",
                f"Seconds since {SENSOR_NAME}'s last tick that did not fail began",
                value=max(time.time() - state.last_good_tick, 0.0),
            )
        yield _by_label(
            GaugeMetricFamily,
            "ai_assets_runs",
            "Classification runs queued or started now",
            "status",
            state.runs.items(),
        )
        yield _by_label(
            GaugeMetricFamily,
            "ai_assets_runs_finished_last_hour",
            "Classification runs that ended within the last hour, by status",
            "status",
            state.finished.items(),
        )
        if (last := state.last_run) is not None:
            yield from _last_run_metrics(last)

    def _own_metrics(self) -> Iterator[Any]:
        sources = self.sources
        yield _by_label(
            GaugeMetricFamily,
            "ai_assets_exporter_source_up",
            "1 when the last read of the source (database, dagster) worked",
            "source",
            [(source.name, float(source.up)) for source in sources],
        )
        yield _by_label(
            GaugeMetricFamily,
            "ai_assets_exporter_refresh_duration_seconds",
            "How long the last read of the source took",
            "source",
            [(source.name, source.seconds) for source in sources],
        )
        yield _by_label(
            GaugeMetricFamily,
            "ai_assets_exporter_last_refresh_timestamp_seconds",
            "When the source was last read successfully (Unix time)",
            "source",
            [(s.name, s.refreshed) for s in sources if s.refreshed is not None],
        )
        yield GaugeMetricFamily(
            "ai_assets_exporter_scrape_duration_seconds",
            "How long the previous scrape of this exporter took to answer",
            value=self.scrape_seconds,
        )


def _last_run_metrics(last: LastRun) -> Iterator[Any]:
    yield GaugeMetricFamily(
        "ai_assets_last_run_images_per_second",
        "Images per second of the classification loop of the latest run that classified images",
        value=last.images_per_second,
    )
    parts = [("all", last.cpu_ms_per_image)]
    if last.feed_cpu_ms_per_image is not None:
        parts.append(("feed", last.feed_cpu_ms_per_image))
    yield _by_label(
        GaugeMetricFamily,
        "ai_assets_last_run_cpu_ms_per_image",
        "CPU milliseconds per image in that run's loop (its process and decode processes): "
        "all, the model's included; feed, less the model's forward passes",
        "part",
        parts,
    )


def _by_label(
    family: type[Any], name: str, doc: str, label: str, values: Iterable[tuple[str, float]]
) -> Any:
    """A metric family with one sample per value of its one label."""
    metric = family(name, doc, labels=[label])
    for label_value, value in values:
        metric.add_metric([label_value], value)
    return metric


def serve(
    collector: PipelineCollector, host: str, port: int, interval: float, stop: threading.Event
) -> None:
    """Serve /metrics and refresh every ``interval`` seconds until ``stop`` is set."""
    registry = prom.CollectorRegistry()
    registry.register(collector)
    server, thread = prom.start_http_server(port, host, registry=registry)
    log.info("serving metrics on http://%s:%d/metrics every %.0f s", host, port, interval)
    try:
        while not stop.is_set():
            started = time.monotonic()
            collector.refresh()
            stop.wait(max(interval - (time.monotonic() - started), 0.0))
    finally:
        server.shutdown()
        thread.join()


TEXT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for Loki or Elasticsearch (``--log-format json``)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between reads")
    parser.add_argument("--log-format", choices=["colored", "json"], default="colored")
    parser.add_argument(
        "--lag",
        type=float,
        default=120.0,
        help="seconds a result may take from its classified_at to its commit and still be counted",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=1.0,
        help="seconds per refresh for recounting days that did not change (see --recount-minutes)",
    )
    parser.add_argument(
        "--recount-minutes",
        type=float,
        default=15.0,
        help="recount a day that did not change after this long (a moved object leaves one)",
    )
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if args.log_format == "json" else logging.Formatter(TEXT))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    problems = settings.problems()
    if problems:
        parser.exit(2, "ai-assets-exporter: " + "\n".join(problems) + "\n")
    engine = ResultsDatabaseResource(url=settings.database_url()).get_engine()
    bucket = BucketStatus(
        engine,
        settings.start_date(),
        budget_s=args.budget,
        lag=dt.timedelta(seconds=args.lag),
        cycle=dt.timedelta(minutes=args.recount_minutes),
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with dg.DagsterInstance.get() as instance:
        serve(PipelineCollector(bucket, instance), args.host, args.port, args.interval, stop)


if __name__ == "__main__":
    main()

"""The asset graph: S3 objects (by day) → classifications in the results table → a label summary.

Per-object state lives in the project's database; Dagster sees days and batches, so a run
writes O(1) events however many images it classifies.
"""

import contextlib
import datetime as dt
import itertools
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import dagster as dg
from pydantic import Field

from ai_assets import cpu
from ai_assets.db import inventory, results, status
from ai_assets.defs.images.jobs import BATCH_TAG
from ai_assets.defs.images.partitions import images_daily
from ai_assets.resources import ClassifierResource, ImageBucketResource, ResultsDatabaseResource
from ai_assets.runs import Meta, Tally, md
from ai_assets.settings import database_kind, max_wait_minutes
from ai_assets.vision.stream import Job, classify_objects

GROUP = "images"
OWNERS = ["team:ml-platform"]
TAGS = {"domain": "vision"}
#: Above this share of error rows the error-rate check warns.
MAX_ERROR_RATE = 0.05
#: Error rows logged one by one per run (each log line is a Dagster event); the rest are counted.
MAX_ERROR_LOGS = 20
#: label_summary is recomputed at most this often while runs keep finishing.
SUMMARY_CRON = "*/5 * * * *"
#: Days one backfill run covers: a month's empty days cost one index probe each, not a run
#: each, and a backfill of years still spreads over runs that the queue runs side by side.
DAYS_PER_BACKFILL_RUN = 31

s3_images = dg.AssetSpec(
    "s3_images",
    description=(
        "Images under the watched S3 prefix, partitioned by the UTC day of their LastModified. "
        "s3_image_sensor keeps the per-object inventory (table image_objects) and reports one "
        "materialization per day it found new, changed or deleted objects in."
    ),
    partitions_def=images_daily,
    group_name=GROUP,
    kinds={"s3"},
    owners=OWNERS,
    tags=TAGS,
)


def column_schema() -> dg.TableSchema:
    """The results table's columns, from its SQLAlchemy definition (one source of truth)."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=column.name,
                type=str(column.type).lower(),
                description=column.comment,
                constraints=dg.TableColumnConstraints(
                    nullable=column.nullable is not False, unique=column.primary_key
                ),
            )
            for column in results.image_classifications.columns
        ]
    )


SCORES_ARE_PROBABILITIES = "scores_are_probabilities"
BATCH_FULLY_CLASSIFIED = "batch_fully_classified"
ERROR_RATE_BELOW_THRESHOLD = "error_rate_below_threshold"
NO_OBJECT_WAITS_TOO_LONG = "no_object_waits_too_long"


class ClassifyConfig(dg.Config):
    reclassify: bool = Field(
        default=False,
        description=(
            "Redo every object of the run (its batch, or without one its days), not only those "
            "not current."
        ),
    )


with warnings.catch_warnings():
    # backfill_policy is marked beta in Dagster 1.13 and would warn at every load
    warnings.simplefilter("ignore", dg.BetaWarning)
    _classifications_asset = dg.asset(
        deps=[s3_images],
        partitions_def=images_daily,
        owners=OWNERS,
        tags=TAGS,
        metadata={
            "dagster/column_schema": column_schema(),
            "dagster/table_name": results.image_classifications.name,
        },
        # a database restart or an S3 outage longer than botocore's retries: the whole step
        # re-runs (upserts are idempotent), then the run fails with the error
        retry_policy=dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL),
        backfill_policy=dg.BackfillPolicy.multi_run(DAYS_PER_BACKFILL_RUN),
        group_name=GROUP,
        kinds={"pytorch", database_kind()},
        check_specs=[
            dg.AssetCheckSpec(
                SCORES_ARE_PROBABILITIES,
                asset="image_classifications",
                description="Every top-1 score the run wrote lies in [0, 1].",
            ),
            dg.AssetCheckSpec(
                BATCH_FULLY_CLASSIFIED,
                asset="image_classifications",
                description="Every object the run was asked for has a current row afterwards.",
            ),
            dg.AssetCheckSpec(
                ERROR_RATE_BELOW_THRESHOLD,
                asset="image_classifications",
                description=(
                    f"At most {MAX_ERROR_RATE:.0%} of the run's objects failed to classify."
                ),
            ),
            dg.AssetCheckSpec(
                NO_OBJECT_WAITS_TOO_LONG,
                asset="image_classifications",
                description=(
                    "After the run, no object of its days has waited for its result longer than "
                    "AI_ASSETS_MAX_WAIT_MINUTES (WARN): the backlog, where Dagster users look."
                ),
            ),
        ],
    )


@_classifications_asset
def image_classifications(
    context: dg.AssetExecutionContext,
    config: ClassifyConfig,
    s3: ImageBucketResource,
    classifier: ClassifierResource,
    results_db: ResultsDatabaseResource,
) -> dg.MaterializeResult:
    """One row per object in the `image_classifications` table: top-k ImageNet labels.

    A sensor run (tag `ai_assets/batch`) classifies exactly its batch; any other run
    (Materialize a day, a backfill of up to DAYS_PER_BACKFILL_RUN days) makes its days current.
    Objects stream in key order: fetched concurrently, decoded, classified in batches, upserted
    one transaction per batch while the next batch is classified. Each day's materialization
    carries the run's figures and that day's own totals.
    """
    with _stops_when_interrupted():
        batch = context.run.tags.get(BATCH_TAG)
        engine = results_db.get_engine()
        loading = time.perf_counter()
        model = classifier.load()  # once per process; not part of the images/s figure
        model_load_s = time.perf_counter() - loading
        targets = _targets(context, engine, model, batch, config.reclassify)
        tally, written, logged = Tally(), results.Written(), 0
        started, meter = time.perf_counter(), cpu.Meter(model)
        batches = classify_objects(
            (Job(target.partition_key, target.s3_key) for target in targets),
            s3.get_fetcher(classifier.max_image_bytes),
            model,
            batch_size=classifier.batch_size,
            top_k=classifier.top_k,
            max_pixels=classifier.max_image_pixels,
            concurrency=classifier.fetch_threads(model),
            run_id=context.run.run_id,
        )
        for rows, upserted in results.upsert_behind(engine, batches):
            written += upserted
            tally.add(rows)
            logged += _log_errors(context, rows, MAX_ERROR_LOGS - logged)
        elapsed, spent = time.perf_counter() - started, meter.spent()
        if tally.statuses["error"] > logged:
            context.log.warning(
                f"{tally.statuses['error'] - logged:,} more objects failed to classify; "
                "the table's error column says why"
            )
        counts = tally.counts()
        context.log.info(
            f"{counts[Meta.IMAGES]:,} objects in {elapsed:.1f} s: {counts[Meta.CLASSIFIED]:,} "
            f"classified, {counts[Meta.ERRORS]:,} errors, {counts[Meta.DELETED]:,} deleted"
        )
        days_totals = []
        for day in context.partition_keys:
            if totals := status.day_totals(engine, day):
                context.add_asset_metadata(day_metadata(totals), partition_key=day)
            else:
                context.log.info(f"{day} holds too many objects to total within the run's budget")
            days_totals.append(totals)
        checks = [*_checks(tally, written), _freshness(days_totals)]
        metadata = _run_metadata(tally, model, elapsed, spent, model_load_s, batch)
        return dg.MaterializeResult(metadata=metadata, check_results=checks)


@contextlib.contextmanager
def _stops_when_interrupted() -> Iterator[None]:
    """A run interrupted in its own process (terminated, its pod stopping) fails at once.

    Dagster answers an interrupt inside a step with its RetryPolicy, and with the in-process
    executor nothing else stops the retry (dagster-io/dagster#15026): a terminated run would
    start its batch over instead of ending.
    """
    try:
        yield
    except dg.DagsterExecutionInterruptedError as interrupted:
        raise dg.Failure(
            "Interrupted: the run was terminated or its process is stopping, so the step is "
            "not retried. Rows already written stay; re-execute the run for the rest.",
            allow_retries=False,
        ) from interrupted


def _targets(
    context: dg.AssetExecutionContext, engine: Any, model: Any, batch: str | None, redo: bool
) -> Iterator[inventory.Target]:
    """The objects of the sensor's batch when the run has one, else of its days, that are not
    current (all: reclassify)."""
    days = context.partition_keys
    span = days[0] if len(days) == 1 else f"{days[0]}…{days[-1]} ({len(days)} days)"
    if batch:
        context.log.info(f"classifying batch {batch} of {span} with {model.model_id}")
        return inventory.batch_targets(engine, batch, model.model_id, model.model_revision, redo)
    what = "every object" if redo else "the objects not current"
    context.log.info(f"classifying {what} of {span} with {model.model_id} on {model.device}")
    return itertools.chain.from_iterable(
        inventory.stale_targets(engine, day, model.model_id, model.model_revision, redo)
        for day in days
    )


def _log_errors(
    context: dg.AssetExecutionContext, rows: Sequence[results.ClassificationRow], room: int
) -> int:
    """Log up to ``room`` error rows one by one (each line is an event); how many were."""
    errors = [row for row in rows if row.status == "error"][: max(room, 0)]
    for row in errors:
        context.log.warning(f"{row.s3_key!r}: {row.error}")
    return len(errors)


def _run_metadata(
    tally: Tally,
    model: Any,
    elapsed: float,
    spent: cpu.Spent,
    model_load_s: float,
    batch: str | None,
) -> dict[str, Any]:
    """What the UI shows for the run's materialization (and the Slack digest reads back)."""
    asked = tally.asked
    metadata: dict[str, Any] = {
        **{key: dg.MetadataValue.int(value) for key, value in tally.counts().items()},
        # the classification loop alone: fetch ∥ decode ∥ model → upsert, model already loaded
        Meta.IMAGES_PER_SECOND: dg.MetadataValue.float(round(asked / elapsed, 2) if asked else 0.0),
        Meta.LOOP_SECONDS: dg.MetadataValue.float(round(elapsed, 2)),
        # what a run's pod needs in CPU: the process's CPU in the loop, every thread, the model's
        # included, and its decode processes' (Python, Dagster, the imports and the model load
        # before it are not)
        Meta.LOOP_CPU_SECONDS: dg.MetadataValue.float(round(spent.total, 2)),
        Meta.CPU_MS_PER_IMAGE: dg.MetadataValue.float(_per_image_ms(spent.total, asked)),
        # the same less the model's forward passes (its callers' threads in them, torch's own
        # threads): the pipeline's own CPU per image, whatever the model costs
        Meta.FEED_CPU_MS_PER_IMAGE: dg.MetadataValue.float(_per_image_ms(spent.feed, asked)),
        # and the process's CPU from its start to the end of the asset's work: a run pod's fixed
        # cost (Python, Dagster, the code location, torch's and transformers' imports, the
        # model's load; this less loop_cpu_seconds), paid once per run whatever its size
        Meta.PROCESS_CPU_SECONDS: dg.MetadataValue.float(round(time.process_time(), 2)),
        Meta.MODEL_LOAD_SECONDS: dg.MetadataValue.float(round(model_load_s, 2)),
        Meta.TOP_LABELS: dg.MetadataValue.json(tally.top_labels()),
        Meta.MODEL_ID: dg.MetadataValue.text(model.model_id),
        Meta.MODEL_REVISION: dg.MetadataValue.text(model.model_revision),
        Meta.DEVICE: dg.MetadataValue.text(model.device),
        Meta.PRECISION: dg.MetadataValue.text(model.precision),
        Meta.DECODING: dg.MetadataValue.text(model.decoding),
        # torch's CPU threads for the model in this process: one for a model that keeps up with
        # the feed on one (vision.model.choose_model_threads); 0 on a GPU or in the model service
        Meta.MODEL_THREADS: dg.MetadataValue.int(model.model_threads),
        Meta.BATCHNORMS_FOLDED: dg.MetadataValue.int(model.folded),
        Meta.SAMPLE: dg.MetadataValue.md(tally.sample_table()),
    }
    if batch:
        metadata[Meta.BATCH] = dg.MetadataValue.text(batch)
    return {str(key): value for key, value in metadata.items()}


def _per_image_ms(seconds: float, images: int) -> float:
    return round(seconds * 1000 / images, 3) if images else 0.0


def day_metadata(totals: status.Totals) -> dict[str, Any]:
    """The day's own state: the partition page describes the day, not only the last batch."""
    keys = {
        Meta.DAY_OBJECTS: totals.objects,
        Meta.DAY_CURRENT: totals.current,
        Meta.DAY_WAITING: totals.waiting,
        Meta.DAY_ERRORS: totals.errors,
        Meta.DAY_DELETED: totals.deleted,
    }
    metadata: dict[str, Any] = {str(k): dg.MetadataValue.int(v) for k, v in keys.items()}
    waited = round(_waited_seconds(totals), 1)
    metadata[str(Meta.DAY_OLDEST_WAITING_SECONDS)] = dg.MetadataValue.float(waited)
    return metadata


def _waited_seconds(totals: status.Totals) -> float:
    """How long the day's oldest waiting object has waited (0 when none waits)."""
    if totals.oldest_waiting is None:
        return 0.0
    return max((dt.datetime.now(dt.UTC) - totals.oldest_waiting).total_seconds(), 0.0)


def _freshness(days_totals: Sequence[status.Totals | None]) -> dg.AssetCheckResult:
    """WARN when an object of the run's days has waited longer than AI_ASSETS_MAX_WAIT_MINUTES."""
    limit_s = max_wait_minutes() * 60
    counted = [totals for totals in days_totals if totals is not None]
    if not counted:
        return dg.AssetCheckResult(
            check_name=NO_OBJECT_WAITS_TOO_LONG,
            passed=True,
            description="The run's days hold too many objects to count within its budget.",
        )
    waited = max(_waited_seconds(totals) for totals in counted)
    return dg.AssetCheckResult(
        check_name=NO_OBJECT_WAITS_TOO_LONG,
        passed=waited <= limit_s,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "oldest_waiting_seconds": round(waited, 1),
            "waiting": sum(totals.waiting for totals in counted),
            "limit_seconds": limit_s,
        },
    )


def _checks(tally: Tally, written: results.Written) -> list[dg.AssetCheckResult]:
    return [
        dg.AssetCheckResult(
            check_name=SCORES_ARE_PROBABILITIES,
            passed=written.bad_scores == 0,
            metadata={"rows_with_bad_scores": written.bad_scores},
        ),
        dg.AssetCheckResult(
            check_name=BATCH_FULLY_CLASSIFIED,
            passed=written.rows + written.stale == tally.asked,
            metadata={
                "asked": tally.asked,
                "written": written.rows,
                "kept_newer_version": written.stale,
            },
        ),
        dg.AssetCheckResult(
            check_name=ERROR_RATE_BELOW_THRESHOLD,
            passed=tally.error_rate <= MAX_ERROR_RATE,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"error_rate": round(tally.error_rate, 4), "errors": written.errors},
        ),
    ]


@dg.asset(
    deps=[image_classifications],
    owners=OWNERS,
    tags=TAGS,
    group_name=GROUP,
    kinds={database_kind()},
    automation_condition=(
        dg.AutomationCondition.cron_tick_passed(SUMMARY_CRON).since_last_handled()
        & dg.AutomationCondition.any_deps_updated().since_last_handled()
        & ~dg.AutomationCondition.in_progress()
    ).with_label(f"results changed, at most once per {SUMMARY_CRON!r}"),
)
def label_summary(results_db: ResultsDatabaseResource) -> dg.MaterializeResult:
    """Label counts, error counts and model versions over the whole table, computed in SQL.

    Refreshed by label_summary_automation at most once per five minutes, and only when runs
    wrote results since the last refresh: never once per batch, never left stale.
    """
    engine = results_db.get_engine()
    labels = results.label_counts(engine)
    statuses = results.status_counts(engine)
    models = results.model_versions(engine)
    rows = "\n".join(f"| {md(label)} | {count} |" for label, count in labels)
    recent = "\n".join(_recent_line(row) for row in results.recent_rows(engine))
    return dg.MaterializeResult(
        metadata={
            "objects": dg.MetadataValue.int(sum(statuses.values())),
            "classified": dg.MetadataValue.int(statuses.get("ok", 0)),
            "errors": dg.MetadataValue.int(statuses.get("error", 0)),
            "deleted": dg.MetadataValue.int(statuses.get("deleted", 0)),
            "labels": dg.MetadataValue.md(f"| label | images |\n|---|---|\n{rows}"),
            "recent_results": dg.MetadataValue.md(
                f"| object | label | score | classified |\n|---|---|---|---|\n{recent}"
            ),
            "models": dg.MetadataValue.json(
                [{"model_id": m, "revision": r, "rows": n} for m, r, n in models]
            ),
        }
    )


def _recent_line(row: dict) -> str:
    score = "" if row["score"] is None else f"{row['score']:.3f}"
    when = f"{row['classified_at']:%Y-%m-%d %H:%M}"
    return f"| `{md(row['s3_key'])}` | {md(row['label'] or row['status'])} | {score} | {when} |"


label_summary_automation = dg.AutomationConditionSensorDefinition(
    "label_summary_automation",
    target=[label_summary],
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
    description="Refreshes label_summary within minutes of new results, not once per batch.",
)

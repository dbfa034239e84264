"""Slack: every failed classify_images_job run at once; successes as a coalesced digest.

``slack_on_run_failure`` posts one message per failed run; Dagster's run-status cursor
announces each run exactly once, across daemon restarts. ``slack_success_digest`` posts, at
most every AI_ASSETS_SLACK_DIGEST_MINUTES (0 = each run on its own), one message covering
every run that succeeded since the previous one; its cursor is the storage id of the last run
it covered. Slack trouble (429, 5xx, a bad token, no network) is retried by slack_sdk's own
handlers, then logged as a warning: it never fails a tick, so cursors always advance and
nothing is posted twice.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.error import URLError

import dagster as dg
from slack_sdk.errors import SlackApiError, SlackClientError

from ai_assets.defs.images.jobs import BATCH_TAG, CLASSIFICATIONS, classify_images_job
from ai_assets.resources.slack import SlackNotifierResource
from ai_assets.runs import Meta, read_int, read_labels
from ai_assets.settings import slack_digest_minutes
from ai_assets.slack.messages import FailureDigest, RunSummary, SuccessDigest, run_url

_PARTITION_TAG = "dagster/partition"
#: A backfill's run of several days carries its range instead (BackfillPolicy.multi_run).
_RANGE_TAGS = ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")
#: Successful runs one digest tick reads at most; any more go into the next digest.
MAX_RUNS_PER_DIGEST = 1_000
_warned_unconfigured: set[str] = set()


def partition_label(run: dg.DagsterRun) -> str:
    """The run's day (or days), and its batch when the sensor requested it."""
    day, batch = run.tags.get(_PARTITION_TAG, ""), run.tags.get(BATCH_TAG)
    first, last = (run.tags.get(tag) for tag in _RANGE_TAGS)
    if not day and first and last:
        day = first if first == last else f"{first}…{last}"
    return f"{day} · {batch}" if batch else day


def run_metadata(instance: dg.DagsterInstance, run_id: str) -> dict[str, object]:
    """The metadata image_classifications reported in this run (counts are not recomputed)."""
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
    ).records
    for record in reversed(records):
        event = record.asset_materialization
        if event and event.asset_key == CLASSIFICATIONS:
            return {name: value.value for name, value in event.metadata.items()}
    return {}


def first_step_failure(instance: dg.DagsterInstance, run_id: str) -> tuple[str | None, str | None]:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records
    for record in records:
        event = record.event_log_entry.dagster_event
        data = event.step_failure_data if event else None
        if event and data and data.error:
            error = data.error
            while error.cause is not None:  # the user's exception, not Dagster's wrapper
                error = error.cause
            return event.step_key, error.message.strip()
    return None, None


def failure_digest(
    instance: dg.DagsterInstance, run: dg.DagsterRun, webserver_url: str
) -> FailureDigest:
    metadata = run_metadata(instance, run.run_id)
    stats = instance.get_run_stats(run.run_id)
    duration = stats.end_time - stats.start_time if stats.start_time and stats.end_time else None
    failed_step, error = first_step_failure(instance, run.run_id)
    if error is None:
        failure = instance.get_records_for_run(
            run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE
        ).records
        error = failure[-1].event_log_entry.message if failure else "run failed"
    model = metadata.get(Meta.MODEL_ID)
    return FailureDigest(
        run_id=run.run_id,
        url=run_url(webserver_url, run.run_id),
        partitions=partition_label(run),
        duration_s=duration,
        images=read_int(metadata, Meta.IMAGES),
        errors=read_int(metadata, Meta.ERRORS),
        top_labels=read_labels(metadata),
        model_id=model if isinstance(model, str) else None,
        failed_step=failed_step,
        error=error,
    )


def run_summary(instance: dg.DagsterInstance, run: dg.DagsterRun, webserver_url: str) -> RunSummary:
    metadata = run_metadata(instance, run.run_id)
    return RunSummary(
        run_id=run.run_id,
        url=run_url(webserver_url, run.run_id),
        partition=partition_label(run),
        images=read_int(metadata, Meta.IMAGES) or 0,
        errors=read_int(metadata, Meta.ERRORS) or 0,
        top_labels=read_labels(metadata),
    )


def post(
    log: Any, slack: SlackNotifierResource, what: str, text: str, blocks: list[dict[str, Any]]
) -> bool:
    """Post one message; any Slack failure becomes a warning, never an exception."""
    try:
        slack.post(text, blocks)
    except SlackApiError as exc:
        reason = exc.response.get("error") if exc.response is not None else None
        status = exc.response.status_code if exc.response is not None else "?"
        log.warning(f"Slack rejected the digest of {what} (HTTP {status}: {reason}); not retried")
    except (SlackClientError, URLError, OSError) as exc:
        log.warning(f"Slack unreachable for the digest of {what}: {type(exc).__name__}: {exc}")
    else:
        log.info(f"posted the digest of {what} to Slack")
        return True
    return False


def _configured(log: Any, slack: SlackNotifierResource, sensor_name: str) -> bool:
    if slack.configured:
        return True
    if sensor_name not in _warned_unconfigured:
        _warned_unconfigured.add(sensor_name)
        log.info("Slack is not configured (SLACK_BOT_TOKEN, AI_ASSETS_SLACK_CHANNEL)")
    return False


@dg.run_failure_sensor(
    name="slack_on_run_failure",
    monitored_jobs=[classify_images_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Posts a Slack message, with the error, for every failed classify_images_job run.",
)
def slack_on_run_failure(context: dg.RunFailureSensorContext, slack: SlackNotifierResource) -> None:
    if not _configured(context.log, slack, "slack_on_run_failure"):
        return
    run = context.dagster_run
    digest = failure_digest(context.instance, run, slack.webserver_url)
    post(context.log, slack, f"run {run.run_id}", digest.text(), digest.blocks())


def _now() -> float:
    return time.time()


def _succeeded_since(
    instance: dg.DagsterInstance, cursor: str | None
) -> tuple[list[dg.DagsterRun], str | None]:
    """Runs of classify_images_job that succeeded after ``cursor``, oldest first."""
    result = instance.fetch_run_status_changes(
        dg.RunStatusChangeRecordsFilter(
            dg.DagsterEventType.RUN_SUCCESS, job_names=[classify_images_job.name]
        ),
        limit=MAX_RUNS_PER_DIGEST,
        cursor=cursor,
        ascending=True,
    )
    if not result.records:
        return [], cursor
    runs = instance.get_runs(dg.RunsFilter(run_ids=[r.run_id for r in result.records]))
    order = {record.run_id: i for i, record in enumerate(result.records)}
    runs = sorted((run for run in runs if run.run_id in order), key=lambda r: order[r.run_id])
    return runs, result.cursor


@dg.sensor(
    name="slack_success_digest",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Posts one Slack digest of the classify_images_job runs that succeeded since the last, "
        "at most every AI_ASSETS_SLACK_DIGEST_MINUTES (0: one message per run)."
    ),
)
def slack_success_digest(
    context: dg.SensorEvaluationContext, slack: SlackNotifierResource
) -> dg.SkipReason:
    state = json.loads(context.cursor) if context.cursor else None
    if state is None:  # first tick: watch from now on
        latest = context.instance.fetch_run_status_changes(
            dg.DagsterEventType.RUN_SUCCESS, limit=1, ascending=False
        )
        context.update_cursor(
            json.dumps({"after": latest.cursor if latest.records else None, "sent": 0})
        )
        return dg.SkipReason("watching for successful runs from now on")
    minutes = slack_digest_minutes()
    if _now() - state["sent"] < minutes * 60:
        return dg.SkipReason(f"the next digest is due {minutes:g} minutes after the last")
    runs, after = _succeeded_since(context.instance, state["after"])
    if not runs:
        return dg.SkipReason("no run succeeded since the last digest")
    if _configured(context.log, slack, "slack_success_digest"):
        summaries = [run_summary(context.instance, run, slack.webserver_url) for run in runs]
        digests = (
            [SuccessDigest([s]) for s in summaries] if minutes == 0 else [SuccessDigest(summaries)]
        )
        for digest in digests:
            what = f"run {digest.runs[0].run_id}" if minutes == 0 else f"{len(runs)} runs"
            post(context.log, slack, what, digest.text(), digest.blocks())
    context.update_cursor(json.dumps({"after": after, "sent": _now()}))
    return dg.SkipReason(f"covered {len(runs)} successful runs")

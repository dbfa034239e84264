"""slack_on_run_success / slack_on_run_failure: one Slack digest per classify_images_job run.

Dagster's run-status cursor announces each run exactly once, across daemon restarts. Slack
trouble (429, 5xx, a bad token, no network) is retried by slack_sdk's own handlers, then logged
as a warning: it never fails the tick, so the cursor always advances and nothing is re-posted.
"""

from urllib.error import URLError

import dagster as dg
from slack_sdk.errors import SlackApiError, SlackClientError

from ai_assets.assets import classify_images_job, image_classifications
from ai_assets.digest import RunDigest, run_url
from ai_assets.resources.slack import SlackNotifier
from ai_assets.sensors.s3 import RANGE_END_TAG, RANGE_START_TAG

_PARTITION_TAG = "dagster/partition"
_warned_unconfigured: set[str] = set()


def partition_label(run: dg.DagsterRun) -> str:
    tags = run.tags
    if RANGE_START_TAG in tags:
        start, end = tags[RANGE_START_TAG], tags.get(RANGE_END_TAG, "")
        return start if start == end else f"{start} … {end}"
    return tags.get(_PARTITION_TAG, "")


def run_metadata(instance: dg.DagsterInstance, run_id: str) -> dict[str, object]:
    """The metadata image_classifications reported in this run (counts are not recomputed)."""
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
    ).records
    for record in reversed(records):
        event = record.asset_materialization
        if event and event.asset_key == image_classifications.key:
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


def build_digest(
    instance: dg.DagsterInstance, run: dg.DagsterRun, succeeded: bool, webserver_url: str
) -> RunDigest:
    metadata = run_metadata(instance, run.run_id)
    stats = instance.get_run_stats(run.run_id)
    duration = stats.end_time - stats.start_time if stats.start_time and stats.end_time else None
    failed_step, error = (None, None) if succeeded else first_step_failure(instance, run.run_id)
    if not succeeded and error is None:
        failure = instance.get_records_for_run(
            run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE
        ).records
        error = failure[-1].event_log_entry.message if failure else "run failed"
    labels = metadata.get("top_labels")
    images, errors, model = metadata.get("images"), metadata.get("errors"), metadata.get("model_id")
    return RunDigest(
        run_id=run.run_id,
        succeeded=succeeded,
        url=run_url(webserver_url, run.run_id),
        partitions=partition_label(run),
        duration_s=duration,
        images=images if isinstance(images, int) else None,
        errors=errors if isinstance(errors, int) else None,
        top_labels=labels if isinstance(labels, dict) else {},
        model_id=model if isinstance(model, str) else None,
        failed_step=failed_step,
        error=error,
    )


def announce(context: dg.RunStatusSensorContext, slack: SlackNotifier, succeeded: bool) -> None:
    """Post the run's digest; any Slack failure becomes a warning, never a failed tick."""
    run = context.dagster_run
    if not slack.configured:
        if context.sensor_name not in _warned_unconfigured:
            _warned_unconfigured.add(context.sensor_name)
            context.log.info("Slack is not configured (SLACK_BOT_TOKEN, AI_ASSETS_SLACK_CHANNEL)")
        return
    digest = build_digest(context.instance, run, succeeded, slack.webserver_url)
    try:
        slack.post(digest.text(), digest.blocks())
    except SlackApiError as exc:
        reason = exc.response.get("error") if exc.response is not None else None
        status = exc.response.status_code if exc.response is not None else "?"
        context.log.warning(
            f"Slack rejected the digest of run {run.run_id} (HTTP {status}: {reason}); not retried"
        )
    except (SlackClientError, URLError, OSError) as exc:
        context.log.warning(
            f"Slack unreachable for the digest of run {run.run_id}: {type(exc).__name__}: {exc}"
        )
    else:
        context.log.info(f"posted the digest of run {run.run_id} to Slack")


@dg.run_status_sensor(
    name="slack_on_run_success",
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[classify_images_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Posts a Slack digest of every successful classify_images_job run.",
)
def slack_on_run_success(context: dg.RunStatusSensorContext, slack: SlackNotifier) -> None:
    announce(context, slack, succeeded=True)


@dg.run_failure_sensor(
    name="slack_on_run_failure",
    monitored_jobs=[classify_images_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Posts a Slack digest, with the error, of every failed classify_images_job run.",
)
def slack_on_run_failure(context: dg.RunFailureSensorContext, slack: SlackNotifier) -> None:
    announce(context, slack, succeeded=False)

"""Slack through slack_sdk against a local Slack Web API, for real classify runs: every failure
at once, successes coalesced into digests."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from ai_assets.db import results
from ai_assets.defs.alerts.slack import partition_label, slack_on_run_failure, slack_success_digest
from ai_assets_dev.inprocess import InProcessDaemon
from ai_assets_tests.fakes import slack_server

TOKEN = "xoxb-test-0000-very-secret-token"


@pytest.fixture
def daemon(
    bucket: str,
    tiny_model_dir: str,
    slack_api: slack_server.FakeSlack,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path,
    make_daemon: Callable[[], InProcessDaemon],
) -> InProcessDaemon:
    monkeypatch.setenv("AI_ASSETS_S3_BUCKET", bucket)
    monkeypatch.delenv("AI_ASSETS_S3_PREFIX", raising=False)
    monkeypatch.setenv("AI_ASSETS_MODEL", tiny_model_dir)
    monkeypatch.setenv("AI_ASSETS_DATABASE_URL", f"sqlite:///{tmp_path / 'results.sqlite'}")
    monkeypatch.setenv("SLACK_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("AI_ASSETS_SLACK_CHANNEL", "#images")
    monkeypatch.setenv("AI_ASSETS_SLACK_API_URL", slack_api.url)
    monkeypatch.setenv("AI_ASSETS_WEBSERVER_URL", "https://dagster.example.com/")
    return make_daemon()


def classify(daemon: InProcessDaemon, s3_client: Any, bucket: str, jpegs: dict[str, bytes]):
    for name in ("chelsea", "coffee"):
        s3_client.put_object(Bucket=bucket, Key=f"{name}.jpg", Body=jpegs[name])
    s3_client.put_object(Bucket=bucket, Key="broken.jpg", Body=b"nope")
    _, [run] = daemon.tick()
    assert run.success
    return run


def digest_tick(
    daemon: InProcessDaemon, cursor: str | None, log_handler: logging.Handler | None = None
) -> str | None:
    """One tick of slack_success_digest with its cursor, as the daemon evaluates it."""
    context = dg.build_sensor_context(
        instance=daemon.instance,
        cursor=cursor,
        repository_def=daemon.defs.get_repository_def(),
        resources={"slack": daemon.defs.resources["slack"]},
    )
    if log_handler:
        context.log.addHandler(log_handler)  # the sensor's own log, as shown in the UI
    return slack_success_digest.evaluate_tick(context).cursor


def announce(
    daemon: InProcessDaemon,
    run: dg.ExecuteInProcessResult,
    log_handler: logging.Handler | None = None,
) -> None:
    """What the daemon does about a finished run: the failure sensor, or a digest tick."""
    if run.success:  # a digest cursor from before the run: every success so far, none sent yet
        digest_tick(daemon, json.dumps({"after": None, "sent": 0}), log_handler)
        return
    context = dg.build_run_status_sensor_context(
        sensor_name=slack_on_run_failure.name,
        dagster_event=run.get_run_failure_event(),
        dagster_instance=daemon.instance,
        dagster_run=run.dagster_run,
        resources={"slack": daemon.defs.resources["slack"]},
    )
    if log_handler:
        context.log.addHandler(log_handler)
    slack_on_run_failure(context)


def test_a_successful_run_posts_one_digest(
    daemon: InProcessDaemon, s3_client: Any, bucket: str, jpegs: dict[str, bytes], slack_api
) -> None:
    cursor = digest_tick(daemon, None)  # the first tick starts watching from now
    run = classify(daemon, s3_client, bucket, jpegs)
    digest_tick(daemon, cursor)
    [message] = slack_api.messages
    assert message["channel"] == "#images"
    url = f"https://dagster.example.com/runs/{run.run_id}"
    assert url in message["text"]
    blocks = str(message["blocks"])
    assert url in blocks
    assert "*Images*\\n3" in blocks and "*Errors*\\n1" in blocks
    day = run.dagster_run.tags["dagster/partition"]
    assert f"*Days*\\n{day}" in blocks
    assert "1 classify_images_job run succeeded" in message["text"]
    labels = run.asset_materializations_for_node("image_classifications")[0].metadata["top_labels"]
    assert all(label in blocks for label in labels.value)
    assert slack_api.requests[0]["authorization"] == f"Bearer {TOKEN}"


def test_a_failed_run_posts_its_error(
    daemon: InProcessDaemon, s3_client: Any, bucket: str, slack_api, monkeypatch
) -> None:
    s3_client.put_object(Bucket=bucket, Key="a.jpg", Body=b"x")
    result = daemon.evaluate()
    daemon.report_events(result)
    monkeypatch.setenv("AI_ASSETS_S3_BUCKET", "no-such-bucket-anywhere")
    failing = InProcessDaemon(daemon.instance)  # definitions now point at a missing bucket
    [request] = result.run_requests or []
    run = failing.launch(request)
    assert not run.success
    announce(failing, run)
    [message] = slack_api.messages
    assert "failed" in message["text"]
    assert "NoSuchBucket" in message["text"]
    assert "image_classifications" in str(message["blocks"])
    assert request.run_key in str(message["blocks"])  # the batch, beside the day


@pytest.mark.parametrize(
    ("script", "posted", "requests"),
    [
        ([slack_server.RATE_LIMITED], 1, 2),
        ([slack_server.SERVER_ERROR], 1, 2),
        ([slack_server.SERVER_ERROR] * 5, 0, 3),
        ([slack_server.INVALID_AUTH], 0, 1),
        ([slack_server.CHANNEL_NOT_FOUND], 0, 1),
    ],
    ids=["429-then-ok", "500-then-ok", "persistent-500", "invalid_auth", "channel_not_found"],
)
def test_slack_failures_are_retried_or_logged_never_raised(
    daemon: InProcessDaemon,
    s3_client: Any,
    bucket: str,
    jpegs: dict[str, bytes],
    slack_api,
    script,
    posted: int,
    requests: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    run = classify(daemon, s3_client, bucket, jpegs)
    slack_api.script.extend(script)
    with caplog.at_level(logging.DEBUG):
        announce(daemon, run, caplog.handler)  # must not raise
    assert len(slack_api.messages) == posted
    assert len(slack_api.requests) == requests
    assert TOKEN not in caplog.text
    engine = sa.create_engine(os.environ["AI_ASSETS_DATABASE_URL"])
    assert len(results.fetch_rows(engine)) == 3  # the data path never depends on Slack
    if not posted:
        assert "Slack rejected the digest" in caplog.text


def test_unreachable_slack_is_a_warning(
    daemon: InProcessDaemon, s3_client, bucket, jpegs, monkeypatch, caplog
) -> None:
    from ai_assets_dev.localdev import free_port

    run = classify(daemon, s3_client, bucket, jpegs)
    monkeypatch.setenv("AI_ASSETS_SLACK_API_URL", f"http://127.0.0.1:{free_port()}/api/")
    offline = InProcessDaemon(daemon.instance)
    with caplog.at_level(logging.DEBUG):
        announce(offline, run, caplog.handler)
    assert "Slack unreachable" in caplog.text
    assert TOKEN not in caplog.text


def test_no_token_means_no_slack(
    daemon: InProcessDaemon, s3_client, bucket, jpegs, monkeypatch, slack_api
) -> None:
    run = classify(daemon, s3_client, bucket, jpegs)
    monkeypatch.delenv("SLACK_BOT_TOKEN")
    announce(InProcessDaemon(daemon.instance), run)
    assert slack_api.requests == []


def test_each_run_is_announced_once_across_ticks(
    daemon: InProcessDaemon, s3_client, bucket, jpegs, slack_api
) -> None:
    cursor = digest_tick(daemon, None)
    run = classify(daemon, s3_client, bucket, jpegs)
    cursor = digest_tick(daemon, cursor)
    assert [m["text"].count(run.run_id) for m in slack_api.messages] == [1]
    cursor = digest_tick(daemon, cursor)  # e.g. after a daemon restart with the saved cursor
    assert len(slack_api.messages) == 1


def more_runs(daemon: InProcessDaemon, s3_client: Any, bucket: str, n: int) -> list[str]:
    ids = []
    for i in range(n):
        s3_client.put_object(Bucket=bucket, Key=f"more-{len(ids)}-{i}-{os.getpid()}.jpg", Body=b"x")
        _, [run] = daemon.tick()
        assert run.success
        ids.append(run.run_id)
    return ids


def test_successes_are_coalesced_into_one_digest_per_interval(
    daemon: InProcessDaemon, s3_client, bucket, jpegs, slack_api, monkeypatch
) -> None:
    import time

    monkeypatch.setenv("AI_ASSETS_SLACK_DIGEST_MINUTES", "15")
    clock = [time.time()]
    monkeypatch.setattr("ai_assets.defs.alerts.slack._now", lambda: clock[0])
    cursor = digest_tick(daemon, None)
    first = classify(daemon, s3_client, bucket, jpegs)
    cursor = digest_tick(daemon, cursor)  # the first digest goes out at once
    assert len(slack_api.messages) == 1 and first.run_id in slack_api.messages[0]["text"]

    later = more_runs(daemon, s3_client, bucket, 3)
    clock[0] += 5 * 60
    cursor = digest_tick(daemon, cursor)
    assert len(slack_api.messages) == 1  # within 15 minutes of the last digest: wait
    clock[0] += 11 * 60
    cursor = digest_tick(daemon, cursor)
    [_, digest] = slack_api.messages
    assert "3 classify_images_job runs succeeded" in digest["text"]
    assert all(run_id in digest["text"] for run_id in later)
    assert "*Runs*\\n3" in str(digest["blocks"])
    clock[0] += 16 * 60
    digest_tick(daemon, cursor)
    assert len(slack_api.messages) == 2  # nothing new: no message


def test_zero_minutes_posts_one_message_per_successful_run(
    daemon: InProcessDaemon, s3_client, bucket, slack_api, monkeypatch
) -> None:
    monkeypatch.setenv("AI_ASSETS_SLACK_DIGEST_MINUTES", "0")
    cursor = digest_tick(daemon, None)
    ids = more_runs(daemon, s3_client, bucket, 2)
    digest_tick(daemon, cursor)
    assert [[i in m["text"] for i in ids] for m in slack_api.messages] == [
        [True, False],
        [False, True],
    ]


@pytest.mark.parametrize(
    ("tags", "label"),
    [
        ({"dagster/partition": "2026-12-01", "ai_assets/batch": "b-1"}, "2026-12-01 · b-1"),
        ({"dagster/partition": "2026-12-01"}, "2026-12-01"),
        (  # a backfill's run of several days
            {
                "dagster/asset_partition_range_start": "2026-11-01",
                "dagster/asset_partition_range_end": "2026-12-01",
            },
            "2026-11-01…2026-12-01",
        ),
        ({}, ""),
    ],
)
def test_messages_name_the_runs_day_batch_or_range(tags: dict[str, str], label: str) -> None:
    assert partition_label(dg.DagsterRun(job_name="classify_images_job", tags=tags)) == label

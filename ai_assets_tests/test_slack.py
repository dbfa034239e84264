"""Slack digests through slack_sdk against a local Slack Web API, for real classify runs."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from ai_assets import table
from ai_assets.inprocess import InProcessDaemon
from ai_assets.sensors import slack_on_run_failure, slack_on_run_success
from ai_assets_tests import slack_server

TOKEN = "xoxb-test-0000-very-secret-token"


@pytest.fixture
def daemon(
    bucket: str,
    tiny_model_dir: str,
    slack_api: slack_server.FakeSlack,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path,
) -> Iterator[InProcessDaemon]:
    monkeypatch.setenv("AI_ASSETS_S3_BUCKET", bucket)
    monkeypatch.delenv("AI_ASSETS_S3_PREFIX", raising=False)
    monkeypatch.setenv("AI_ASSETS_MODEL", tiny_model_dir)
    monkeypatch.setenv("AI_ASSETS_DATABASE_URL", f"sqlite:///{tmp_path / 'results.sqlite'}")
    monkeypatch.setenv("SLACK_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("AI_ASSETS_SLACK_CHANNEL", "#images")
    monkeypatch.setenv("AI_ASSETS_SLACK_API_URL", slack_api.url)
    monkeypatch.setenv("AI_ASSETS_WEBSERVER_URL", "https://dagster.example.com/")
    with dg.instance_for_test() as instance:
        yield InProcessDaemon(instance)


def classify(daemon: InProcessDaemon, s3_client: Any, bucket: str, jpegs: dict[str, bytes]):
    for name in ("chelsea", "coffee"):
        s3_client.put_object(Bucket=bucket, Key=f"{name}.jpg", Body=jpegs[name])
    s3_client.put_object(Bucket=bucket, Key="broken.jpg", Body=b"nope")
    _, [run] = daemon.tick()
    assert run.success
    return run


def announce(
    daemon: InProcessDaemon,
    run: dg.ExecuteInProcessResult,
    log_handler: logging.Handler | None = None,
) -> None:
    """Invoke the sensor for this run exactly as the daemon does for a run-status event."""
    succeeded = run.success
    sensor = slack_on_run_success if succeeded else slack_on_run_failure
    event = run.get_run_success_event() if succeeded else run.get_run_failure_event()
    context = dg.build_run_status_sensor_context(
        sensor_name=sensor.name,
        dagster_event=event,
        dagster_instance=daemon.instance,
        dagster_run=run.dagster_run,
        resources={"slack": daemon.defs.resources["slack"]},
    )
    if log_handler:
        context.log.addHandler(log_handler)  # the sensor's own log, as shown in the UI
    sensor(context)


def test_a_successful_run_posts_one_digest(
    daemon: InProcessDaemon, s3_client: Any, bucket: str, jpegs: dict[str, bytes], slack_api
) -> None:
    run = classify(daemon, s3_client, bucket, jpegs)
    announce(daemon, run)
    [message] = slack_api.messages
    assert message["channel"] == "#images"
    url = f"https://dagster.example.com/runs/{run.run_id}"
    assert url in message["text"]
    blocks = str(message["blocks"])
    assert url in blocks
    assert "*Images*\\n3" in blocks and "*Errors*\\n1" in blocks
    assert "broken.jpg … coffee.jpg" in blocks
    labels = run.asset_materializations_for_node("image_classifications")[0].metadata["top_labels"]
    assert all(label in blocks for label in labels.value)
    assert slack_api.requests[0]["authorization"] == f"Bearer {TOKEN}"


def test_a_failed_run_posts_its_error(
    daemon: InProcessDaemon, s3_client: Any, bucket: str, slack_api, monkeypatch
) -> None:
    s3_client.put_object(Bucket=bucket, Key="a.jpg", Body=b"x")
    result = daemon.evaluate()
    daemon.apply_events_and_partitions(result)
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
    assert len(table.fetch_rows(engine)) == 3  # the data path never depends on Slack
    if not posted:
        assert "Slack rejected the digest" in caplog.text


def test_unreachable_slack_is_a_warning(
    daemon: InProcessDaemon, s3_client, bucket, jpegs, monkeypatch, caplog
) -> None:
    from ai_assets.localdev import free_port

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
    """The real sensor evaluation with its cursor, as the daemon runs it tick after tick."""
    repository = daemon.defs.get_repository_def()

    def tick(cursor: str | None) -> str | None:
        context = dg.build_sensor_context(
            instance=daemon.instance,
            cursor=cursor,
            repository_def=repository,
            resources={"slack": daemon.defs.resources["slack"]},
        )
        return slack_on_run_success.evaluate_tick(context).cursor

    cursor = tick(None)  # the first tick starts watching from now
    run = classify(daemon, s3_client, bucket, jpegs)
    cursor = tick(cursor)
    assert [m["text"].count(run.run_id) for m in slack_api.messages] == [1]
    cursor = tick(cursor)  # e.g. after a daemon restart with the saved cursor
    assert len(slack_api.messages) == 1

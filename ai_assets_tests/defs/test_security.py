"""Secrets reach the services that need them and nothing else: no log, event, tag or message."""

from __future__ import annotations

import json
import logging
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster._serdes import serialize_value

from ai_assets.defs.alerts.slack import slack_success_digest
from ai_assets_dev.inprocess import InProcessDaemon
from ai_assets_dev.localdev import PostgresServer
from ai_assets_tests.support.util import SECRET_KEY

pytestmark = pytest.mark.reliability
SLACK_TOKEN = "xoxb-1234-super-secret-slack-token"
DB_PASSWORD = "db-pa55word-that-must-not-leak"


@pytest.fixture
def db_url_with_password(pg_server: PostgresServer, pg_url: str) -> str:
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f"CREATE ROLE ai_assets LOGIN PASSWORD '{DB_PASSWORD}'"))
        connection.execute(sa.text("GRANT ALL ON SCHEMA public TO ai_assets"))
    admin.dispose()
    host, database = pg_url.split("@", 1)[1].split("/", 1)
    return f"postgresql+psycopg2://ai_assets:{DB_PASSWORD}@{host}/{database}"


def test_no_secret_appears_in_logs_events_tags_or_messages(
    bucket: str,
    s3_client: Any,
    jpegs: dict[str, bytes],
    tiny_model_dir: str,
    db_url_with_password: str,
    slack_api,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    reliability_report,
) -> None:
    monkeypatch.setenv("AI_ASSETS_S3_BUCKET", bucket)
    monkeypatch.setenv("AI_ASSETS_MODEL", tiny_model_dir)
    monkeypatch.setenv("AI_ASSETS_DATABASE_URL", db_url_with_password)
    monkeypatch.setenv("SLACK_BOT_TOKEN", SLACK_TOKEN)
    monkeypatch.setenv("AI_ASSETS_SLACK_CHANNEL", "#images")
    monkeypatch.setenv("AI_ASSETS_SLACK_API_URL", slack_api.url)
    s3_client.put_object(Bucket=bucket, Key="a.jpg", Body=jpegs["coffee"])
    s3_client.put_object(Bucket=bucket, Key="broken.jpg", Body=b"junk")

    with caplog.at_level(logging.DEBUG), dg.instance_for_test() as instance:
        daemon = InProcessDaemon(instance, log_level="DEBUG")
        result, [run] = daemon.tick()
        assert run.success
        context = dg.build_sensor_context(
            instance=instance,
            cursor=json.dumps({"after": None, "sent": 0}),  # every success so far, none sent
            repository_def=daemon.defs.get_repository_def(),
            resources={"slack": daemon.defs.resources["slack"]},
        )
        context.log.addHandler(caplog.handler)
        slack_success_digest.evaluate_tick(context)
        stored = [
            serialize_value(r.event_log_entry)
            for r in instance.get_records_for_run(run.run_id).records
        ]
        runs = [serialize_value(r) for r in instance.get_runs()]
    assert len(slack_api.messages) == 1
    assert slack_api.requests[0]["authorization"] == f"Bearer {SLACK_TOKEN}"  # it did reach Slack

    out, err = capfd.readouterr()
    haystacks = {
        "python logs": caplog.text,
        "stdout/stderr": out + err,
        "event log": "\n".join(stored),
        "runs and tags": "\n".join(runs),
        "sensor result": serialize_value(result.run_requests) + repr(result.asset_events),
        "cursor": result.cursor or "",
        "slack messages": repr(slack_api.messages),
    }
    secrets = {"S3": SECRET_KEY, "Slack": SLACK_TOKEN, "DB": DB_PASSWORD}
    leaks = [(at, n) for at, text in haystacks.items() for n, s in secrets.items() if s in text]
    reliability_report(
        "secrets in logs/events/tags/messages", "ok" if not leaks else "LEAK", 0, len(leaks)
    )
    assert leaks == []

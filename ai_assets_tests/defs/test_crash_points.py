"""A daemon crash at every point between the inventory commit, the SQS delete and the launch:
each batch still gets exactly one run, on the next tick, through the queue and the listing."""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import pytest

from ai_assets.db import inventory
from ai_assets.defs.images.jobs import BATCH_TAG
from ai_assets.resources import ImageBucketResource
from ai_assets_dev.inprocess import InProcessDaemon
from ai_assets_tests.support.s3_events import s3_event, send
from ai_assets_tests.support.util import configure, rows_by_key

pytestmark = pytest.mark.reliability
KEYS = [f"in/{i}.jpg" for i in range(3)]


class Crash(BaseException):
    """The daemon process dies (not an error the sensor could catch)."""


def _then_crash(original: Callable[..., Any]) -> Callable[..., Any]:
    def step(*args: Any, **kwargs: Any) -> Any:
        original(*args, **kwargs)
        raise Crash(f"the daemon dies right after {original.__name__}")

    return step


def crash_after_commit(daemon: InProcessDaemon, patch: pytest.MonkeyPatch) -> None:
    patch.setattr(inventory, "write_rows", _then_crash(inventory.write_rows))
    with pytest.raises(Crash):
        daemon.evaluate()


def crash_after_delete(daemon: InProcessDaemon, patch: pytest.MonkeyPatch) -> None:
    delete = ImageBucketResource.delete_events
    patch.setattr(ImageBucketResource, "delete_events", _then_crash(delete))
    with pytest.raises(Crash):
        daemon.evaluate()


def crash_before_launch(daemon: InProcessDaemon, patch: pytest.MonkeyPatch) -> None:
    daemon.report_events(daemon.evaluate())  # the tick's result dies with the daemon


def crash_before_cursor(daemon: InProcessDaemon, patch: pytest.MonkeyPatch) -> None:
    result = daemon.evaluate()
    daemon.report_events(result)
    for request in result.run_requests or []:
        daemon.launch(request)  # launched, but the cursor is never saved


CRASHES = {
    "after the inventory commit": crash_after_commit,
    "after the SQS delete": crash_after_delete,
    "after the evaluation, before the launch": crash_before_launch,
    "after the launch, before the cursor": crash_before_cursor,
}


Announce = Callable[[Any, dict[str, str]], None]


@pytest.fixture(params=["sqs", "listing"])
def path(
    request: pytest.FixtureRequest,
    bucket: str,
    s3_env: dict[str, str],
    tmp_path,
    tiny_model_dir: str,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[str, Announce]:
    """How new objects reach the sensor: S3 events on a queue, or only the listing."""
    if request.param == "listing":
        database = f"sqlite:///{tmp_path / 'results.sqlite'}"
        configure(monkeypatch, bucket, database, tiny_model_dir, prefix="in/")
        return "listing", lambda s3_client, etags: None
    sqs, _ = request.getfixturevalue("fake_queue")  # the same bucket, database and prefix
    return "sqs", lambda s3_client, etags: send(
        sqs, bucket, *(s3_event(k, etag=e, sequencer=f"0{k[3]}") for k, e in etags.items())
    )


@pytest.mark.parametrize("crash", CRASHES)
def test_every_batch_gets_exactly_one_run_whatever_the_crash(
    crash: str,
    path: tuple[str, Announce],
    make_daemon: Callable[[], InProcessDaemon],
    bucket: str,
    s3_client: Any,
    jpegs: dict[str, bytes],
    tmp_path,
    monkeypatch: pytest.MonkeyPatch,
    reliability_report,
) -> None:
    name, announce = path
    if crash == "after the SQS delete" and name == "listing":
        pytest.skip("the listing path deletes no message")
    monkeypatch.setenv("AI_ASSETS_MAX_OBJECTS_PER_RUN", "2")  # two batches of one day
    daemon = make_daemon()
    daemon.tick()  # a first complete pass: with a queue, the next listing is an hour away
    etags = {
        key: s3_client.put_object(Bucket=bucket, Key=key, Body=jpegs["coffee"])["ETag"].strip('"')
        for key in KEYS
    }
    announce(s3_client, etags)
    with monkeypatch.context() as patch:
        CRASHES[crash](daemon, patch)

    daemon.tick()  # the next tick recovers
    rows = rows_by_key(f"sqlite:///{tmp_path / 'results.sqlite'}")
    reliability_report(f"crash {crash} ({name})", "ok", len(KEYS), len(rows))
    for _ in range(2):  # later ticks find nothing to do
        again, runs = daemon.tick()
        assert not again.run_requests and not runs
    runs = daemon.instance.get_runs()
    per_batch = collections.Counter(run.tags[BATCH_TAG] for run in runs if BATCH_TAG in run.tags)
    assert len(per_batch) == 2 and set(per_batch.values()) == {1}, per_batch
    assert sorted(rows) == KEYS and {r["status"] for r in rows.values()} == {"ok"}

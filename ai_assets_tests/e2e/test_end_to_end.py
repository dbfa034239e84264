"""The whole path on real services: SeaweedFS → sensor → ranged runs → Postgres, real model."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import dagster as dg
import pytest

from ai_assets.vision.convert import build_config
from ai_assets_dev.inprocess import InProcessDaemon
from ai_assets_tests.support.util import CAT_CLASSES, rows_by_key


@pytest.fixture
def daemon(
    bucket: str,
    pg_url: str,
    lite0_dir: str,
    monkeypatch: pytest.MonkeyPatch,
    make_daemon: Callable[[], InProcessDaemon],
) -> InProcessDaemon:
    monkeypatch.setenv("AI_ASSETS_S3_BUCKET", bucket)
    monkeypatch.setenv("AI_ASSETS_S3_PREFIX", "photos/")
    monkeypatch.setenv("AI_ASSETS_DATABASE_URL", pg_url)
    monkeypatch.delenv("AI_ASSETS_MODEL", raising=False)  # the bundled default model
    monkeypatch.setenv("AI_ASSETS_BATCH_SIZE", "4")
    return make_daemon()


def test_bucket_to_table_end_to_end(
    daemon: InProcessDaemon, s3_client: Any, bucket: str, pg_url: str, jpegs: dict[str, bytes]
) -> None:
    objects = {f"photos/{name}.jpg": data for name, data in jpegs.items()}
    objects["photos/broken.jpg"] = b"\xff\xd8\xff not really a jpeg"
    objects['photos/odd/it\'s a, "weird"...key.jpg'] = jpegs["coffee"]
    for key, data in objects.items():
        s3_client.put_object(Bucket=bucket, Key=key, Body=data)

    result, runs = daemon.tick()
    assert len(result.run_requests or []) == 1
    assert all(run.success for run in runs)
    current = rows_by_key(pg_url)
    assert set(current) == set(objects)
    label2id = build_config().label2id
    assert label2id[current["photos/chelsea.jpg"]["label"]] in CAT_CLASSES
    assert current["photos/coffee.jpg"]["label"] == "espresso"
    assert current['photos/odd/it\'s a, "weird"...key.jpg']["label"] == "espresso"
    broken = current["photos/broken.jpg"]
    assert (broken["status"], broken["label"]) == ("error", None)
    assert "cannot decode" in broken["error"] or "not a recognised" in broken["error"]
    assert all(r["model_id"] and r["model_revision"] for r in current.values())

    [run] = runs
    [materialization] = run.asset_materializations_for_node("image_classifications")
    assert materialization.partition == result.run_requests[0].partition_key  # the day
    _check_run_metadata(materialization.metadata, len(objects), errors=1)
    assert materialization.metadata["batch"].value == result.run_requests[0].run_key
    _check_run_checks(run, len(objects))
    # O(1) Dagster events per run, however many images: one materialization and its checks
    records = daemon.instance.get_records_for_run(run.run_id, limit=1000).records
    kinds = [r.event_log_entry.dagster_event_type for r in records]
    assert kinds.count(dg.DagsterEventType.ASSET_MATERIALIZATION) == 1
    assert kinds.count(dg.DagsterEventType.ASSET_CHECK_EVALUATION) == 4

    # nothing changed: nothing to do, and re-running the same partitions is idempotent
    again, _ = daemon.tick()
    assert not again.run_requests
    assert daemon.launch((result.run_requests or [])[0]).success
    rerun = rows_by_key(pg_url)
    assert rerun.keys() == current.keys()
    assert [r["label"] for r in rerun.values()] == [r["label"] for r in current.values()]

    # a changed object is re-classified, a deleted one is marked, a new one is added
    s3_client.put_object(Bucket=bucket, Key="photos/china.jpg", Body=jpegs["coffee"])
    s3_client.delete_object(Bucket=bucket, Key="photos/flower.jpg")
    s3_client.put_object(Bucket=bucket, Key="photos/new.jpg", Body=jpegs["chelsea"])
    _, runs = daemon.tick()
    assert runs and all(run.success for run in runs)
    updated = rows_by_key(pg_url)
    assert len(updated) == len(objects) + 1
    assert updated["photos/china.jpg"]["label"] == "espresso"
    assert updated["photos/china.jpg"]["etag"] != current["photos/china.jpg"]["etag"]
    assert updated["photos/flower.jpg"]["status"] == "deleted"
    assert updated["photos/new.jpg"]["status"] == "ok"
    assert updated["photos/coffee.jpg"]["run_id"] == rerun["photos/coffee.jpg"]["run_id"]


def _check_run_metadata(metadata: Any, images: int, errors: int) -> None:
    """What a run of the bundled model on the CPU tells in the UI about its batch."""
    import torch  # the run loaded it in this process

    from ai_assets.settings import available_cores

    assert metadata["images"].value == images
    assert metadata["errors"].value == errors
    assert metadata["images_per_second"].value > 0
    cpu_s = metadata["loop_cpu_seconds"].value  # the model's included: more than nothing
    assert 0 < cpu_s < 2 * metadata["loop_seconds"].value * (os.cpu_count() or 1)
    assert metadata["cpu_ms_per_image"].value == pytest.approx(cpu_s * 1000 / images, 0.1)
    # less the model's forward passes: its caller's thread in them and torch's team, which
    # here do most of the work (the bundled model keeps its threads; see below)
    assert 0 < metadata["feed_cpu_ms_per_image"].value < metadata["cpu_ms_per_image"].value / 2
    assert metadata["process_cpu_seconds"].value > cpu_s  # the imports and the load besides
    assert metadata["batchnorms_folded"].value == 49  # the bundled model runs folded
    assert metadata["decoding"].value.startswith("fetch threads, at most ")
    # the bundled model keeps torch's threads, at most the cores a CPU limit leaves
    assert metadata["model_threads"].value == min(torch.get_num_threads(), available_cores())
    assert "espresso" in metadata["top_labels"].value
    assert "| `photos/coffee.jpg` | espresso |" in metadata["sample"].value
    assert metadata["day_oldest_waiting_seconds"].value == 0


def _check_run_checks(run: Any, images: int) -> None:
    """The run's asset checks on a batch of ``images`` with one error, the day's only batch."""
    checks = {c.check_name: c for c in run.get_asset_check_evaluations()}
    assert checks["scores_are_probabilities"].passed
    assert checks["batch_fully_classified"].passed
    assert checks["batch_fully_classified"].metadata["asked"].value == images
    assert not checks["error_rate_below_threshold"].passed  # 1 of 9 is above 5 %: a WARN
    assert checks["error_rate_below_threshold"].severity == dg.AssetCheckSeverity.WARN
    assert checks["no_object_waits_too_long"].passed  # the day's only batch: nothing waits
    assert checks["no_object_waits_too_long"].metadata["waiting"].value == 0


def test_a_day_run_without_a_batch_makes_the_day_current(
    daemon: InProcessDaemon, s3_client: Any, bucket: str, pg_url: str, jpegs: dict[str, bytes]
) -> None:
    """The UI's Materialize (or a backfill) of a day: what is not current, or everything."""
    for name in ("coffee", "chelsea"):
        s3_client.put_object(Bucket=bucket, Key=f"photos/{name}.jpg", Body=jpegs[name])
    result = daemon.evaluate()  # inventoried; its batch run is never launched
    day = result.run_requests[0].partition_key
    [materialized] = [daemon.launch(dg.RunRequest(partition_key=day))]
    assert materialized.success
    first = rows_by_key(pg_url)
    assert set(first) == {"photos/coffee.jpg", "photos/chelsea.jpg"}

    nothing = daemon.launch(dg.RunRequest(partition_key=day))  # already current
    assert (
        nothing.asset_materializations_for_node("image_classifications")[0].metadata["images"].value
        == 0
    )
    config = {"ops": {"image_classifications": {"config": {"reclassify": True}}}}
    redo = daemon.launch(dg.RunRequest(partition_key=day), run_config=config)
    assert (
        redo.asset_materializations_for_node("image_classifications")[0].metadata["images"].value
        == 2
    )
    assert {r["run_id"] for r in rows_by_key(pg_url).values()} == {redo.run_id}


def test_the_freshness_check_warns_while_an_object_of_the_day_waits_too_long(
    daemon: InProcessDaemon,
    s3_client: Any,
    bucket: str,
    jpegs: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AI_ASSETS_MAX_OBJECTS_PER_RUN", "1")
    monkeypatch.setenv("AI_ASSETS_MAX_WAIT_MINUTES", "0")
    for name in ("coffee", "chelsea"):
        s3_client.put_object(Bucket=bucket, Key=f"photos/{name}.jpg", Body=jpegs[name])
    first, second = daemon.evaluate().run_requests or []  # two batches of one object

    def freshness(request: dg.RunRequest) -> dg.AssetCheckEvaluation:
        run = daemon.launch(request)
        checks = {c.check_name: c for c in run.get_asset_check_evaluations()}
        return checks["no_object_waits_too_long"]

    waiting = freshness(first)  # the other batch's object still waits
    assert (waiting.passed, waiting.severity) == (False, dg.AssetCheckSeverity.WARN)
    assert waiting.metadata["waiting"].value == 1
    assert waiting.metadata["oldest_waiting_seconds"].value > 0
    assert freshness(second).passed  # the day is current


def test_label_summary_is_computed_from_the_table(
    daemon: InProcessDaemon, s3_client: Any, bucket: str, jpegs: dict[str, bytes]
) -> None:
    for name in ("coffee", "chelsea"):
        s3_client.put_object(Bucket=bucket, Key=f"photos/{name}.jpg", Body=jpegs[name])
    _, [run] = daemon.tick()
    assert not run.asset_materializations_for_node("label_summary")  # not once per batch
    summary = dg.materialize(
        [daemon.defs.resolve_assets_def("label_summary")], instance=daemon.instance
    )
    metadata = summary.asset_materializations_for_node("label_summary")[0].metadata
    assert metadata["objects"].value == 2
    assert metadata["errors"].value == 0
    assert "| espresso | 1 |" in metadata["labels"].value
    assert "`photos/coffee.jpg` | espresso |" in metadata["recent_results"].value

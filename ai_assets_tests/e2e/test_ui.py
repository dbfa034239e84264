"""The Dagster UI path with the real processes: `dagster dev` (webserver + daemon) on Dagster's
Postgres storage, its runs classifying through the model service as the demo's do, the S3
sensor, a backfill of a date range and a UI-style materialization through GraphQL, the pages a
user opens (the daily partitions view) in headless Chromium, and the exporter and the model
service beside it all, scraped by a real Prometheus that evaluates the shipped alerts."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from dagster_graphql import DagsterGraphQLClient

from ai_assets.db import inventory, results
from ai_assets_dev.localdev import (
    PostgresServer,
    dagster_dev_command,
    dagster_storage,
    free_port,
    local_instance,
    prometheus,
    prometheus_binary,
    s3_client_at,
    stop_process,
    wait_for_port,
)
from ai_assets_tests.support.helm import CHART
from ai_assets_tests.support.service import uvicorn_service
from ai_assets_tests.support.util import answers, wait_for

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
#: ``make screenshots`` refreshes the README's pictures; a plain test run leaves docs/ alone.
SCREENSHOTS = os.environ.get("AI_ASSETS_TEST_SCREENSHOTS_DIR", "")
RULES = CHART / "files" / "prometheus-rules.yaml"
LOCATION = {"repositoryLocationName": "ai_assets", "repositoryName": "__repository__"}
FINISHED = frozenset({"SUCCESS", "FAILURE", "CANCELED"})
#: How long a stopped sensor must stay quiet before a test trusts the stop: far longer than the
#: daemon takes from reading a sensor as running to creating its tick.
STOP_SETTLED_S = 5.0
TODAY = dt.datetime.now(dt.UTC).date().isoformat()
YESTERDAY = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()
#: The first partition: a month back, as the demo's (the photos are all of today).
MONTH_AGO = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=30)).isoformat()


@dataclass
class DagsterDev:
    url: str
    port: int
    results_url: str
    log: Path
    env: dict[str, str]

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.url}/graphql",
            data=json.dumps({"query": query, "variables": variables or {}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            body = json.loads(response.read())
        assert "errors" not in body, body["errors"]
        return body["data"]

    def rows(self) -> dict[str, dict[str, Any]]:
        engine = sa.create_engine(self.results_url)
        try:
            return {row["s3_key"]: row for row in results.fetch_rows(engine)}
        except sa.exc.ProgrammingError:  # the table does not exist yet
            return {}
        finally:
            engine.dispose()

    def runs(self, job: str = "classify_images_job") -> list[dict[str, Any]]:
        data = self.graphql(
            """query($job: String!) { runsOrError(filter: {pipelineName: $job}) {
                 ... on Runs { results { runId status tags { key value } } } } }""",
            {"job": job},
        )
        return data["runsOrError"]["results"]


@pytest.fixture(scope="module")
def model_service_url(lite0_dir: str) -> Iterator[str]:
    """The model service the runs use, as the demo's: a run process then never imports torch
    (~10 s of CPU each on 2 cores), and Prometheus scrapes the service the runs use."""
    with uvicorn_service(lite0_dir) as url:  # the real model: the screenshots show real labels
        yield url


@pytest.fixture(scope="module")
def dagster_dev(
    pg_server: PostgresServer,
    s3_endpoint: str,
    model_service_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[DagsterDev]:
    from ai_assets_tests.support.util import ACCESS_KEY, SECRET_KEY

    home = Path(tempfile.mkdtemp(prefix="ai-assets-e2e-"))
    # one database for Dagster's storage and our tables, as the chart's defaults set it up
    results_url = pg_server.create_database(f"e2e_shared_{os.getpid()}")
    local_instance(home, storage=dagster_storage(results_url))
    bucket = f"e2e-{os.getpid()}"
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": "us-east-1",
        "AI_ASSETS_S3_BUCKET": bucket,
        "AI_ASSETS_S3_PREFIX": "",
        "AI_ASSETS_START_DATE": MONTH_AGO,
        "AI_ASSETS_SENSOR_INTERVAL_SECONDS": "1",  # a tick every daemon loop, as the demo's
        "AI_ASSETS_INFERENCE_URL": model_service_url,
        "AI_ASSETS_DATABASE_URL": results_url,
        "HF_HUB_OFFLINE": "1",
    }
    s3_client_at(s3_endpoint, ACCESS_KEY, SECRET_KEY).create_bucket(Bucket=bucket)
    port = free_port()
    log = home / "dagster-dev.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            dagster_dev_command(home, "127.0.0.1", port),
            cwd=home,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # a non-interactive shell leaves SIGINT ignored, and dagster dev then ignores it
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip
    dev = DagsterDev(f"http://127.0.0.1:{port}", port, results_url, log, env)
    try:
        wait_for("the webserver", lambda: answers(f"{dev.url}/server_info"))
        wait_for("the code location", lambda: _location_loaded(dev))
        yield dev
    finally:
        stop_process(process, timeout=30)
        # kept for a failure's post-mortem where pytest keeps its last runs' files
        shutil.copy(log, tmp_path_factory.mktemp("dagster-dev") / "dagster-dev.log")
        shutil.rmtree(home, ignore_errors=True)


def _location_loaded(dev: DagsterDev) -> bool:
    data = dev.graphql(
        """{ workspaceOrError { ... on Workspace { locationEntries {
             name loadStatus locationOrLoadError { __typename } } } } }"""
    )
    entries = data["workspaceOrError"]["locationEntries"]
    return any(
        e["name"] == "ai_assets"
        and e["loadStatus"] == "LOADED"
        and e["locationOrLoadError"]["__typename"] == "RepositoryLocation"
        for e in entries
    )


def _sensor(dev: DagsterDev) -> dict[str, Any]:
    """s3_image_sensor's id, status and last tick."""
    data = dev.graphql(
        """query($selector: SensorSelector!) { sensorOrError(sensorSelector: $selector) {
             ... on Sensor { id sensorState { status ticks(limit: 1) { id status } } } } }""",
        {"selector": {**LOCATION, "sensorName": "s3_image_sensor"}},
    )
    return data["sensorOrError"]


def _stop_sensor(dev: DagsterDev, sensor_id: str) -> None:
    dev.graphql(
        """mutation($id: String!) { stopSensor(id: $id) {
             ... on StopSensorMutationResult { instigationState { status } } } }""",
        {"id": sensor_id},
    )


def _stop_until_settled(dev: DagsterDev) -> None:
    """Stop s3_image_sensor, again whenever it shows RUNNING, until it has stayed stopped, its
    last tick unchanged and ended, for STOP_SETTLED_S. A stop can land after the daemon read the
    sensor as running: its tick is then created after the stop and still runs, and when the
    stop falls between the daemon's read and its mark of the tick, the daemon writes RUNNING
    back (dagster 1.13's ``_process_tick_generator``)."""
    seen: tuple[Any, ...] = ()
    since = time.monotonic()

    def settled() -> bool:
        nonlocal seen, since
        sensor = _sensor(dev)
        state = sensor["sensorState"]
        tick = state["ticks"][0] if state["ticks"] else {}
        observed = (state["status"], tick.get("id"), tick.get("status"))
        if state["status"] != "STOPPED":
            _stop_sensor(dev, sensor["id"])
        if observed != seen:
            seen, since = observed, time.monotonic()
        quiet = state["status"] == "STOPPED" and tick.get("status") != "STARTED"
        return quiet and time.monotonic() - since >= STOP_SETTLED_S

    wait_for("the sensor stopped with no tick in flight", settled, timeout=120)


def _start_sensor(dev: DagsterDev) -> str:
    """Start s3_image_sensor as the UI does; its status after."""
    started = dev.graphql(
        """mutation($selector: SensorSelector!) { startSensor(sensorSelector: $selector) {
             ... on Sensor { sensorState { status } } } }""",
        {"selector": {**LOCATION, "sensorName": "s3_image_sensor"}},
    )
    return started["startSensor"]["sensorState"]["status"]


def test_sensor_backfill_and_materialize_through_the_ui_api(
    dagster_dev: DagsterDev, s3_client: Any, jpegs: dict[str, bytes]
) -> None:
    dev = dagster_dev
    bucket = os.environ.get("AI_ASSETS_S3_BUCKET_E2E") or f"e2e-{os.getpid()}"
    _stop_until_settled(dev)  # no tick sees half of the uploads

    keys = [f"{name}-{i}.jpg" for i in range(2) for name in ("chelsea", "coffee", "rocket")]
    for key in keys:
        s3_client.put_object(Bucket=bucket, Key=key, Body=jpegs[key.split("-")[0]])
    assert _start_sensor(dev) == "RUNNING"
    rows = _rows_of_one_run(dev, keys)  # one batched run for six new images, not one per image

    assert {r["partition_key"] for r in rows.values()} == {TODAY}
    # the UI tells the truth: no day of the month is missing work (the empty ones are recorded
    # complete), so backfilling the missing days of the last 30 launches nothing
    for asset in ("s3_images", "image_classifications"):
        assert wait_for(f"{asset} caught up", lambda a=asset: _missing_days(dev, a) == [])
        assert _partition_stats(dev, asset) == {"numPartitions": 31, "numMaterialized": 31,
                                                "numFailed": 0, "numMaterializing": 0}  # fmt: skip

    # three rows go missing; a backfill of the last 30 days (a plain date range, every day
    # selected) is one run (BackfillPolicy): the empty days cost no run of their own
    missing = sorted(keys)[:3]
    _delete_rows(dev, missing)
    backfill_id = _launch_backfill(dev, MONTH_AGO, TODAY)
    backfill_run = _the_backfills_one_run(dev, backfill_id)
    tags = {tag["key"]: tag["value"] for tag in backfill_run["tags"]}
    assert tags["dagster/asset_partition_range_start"] == MONTH_AGO
    assert tags["dagster/asset_partition_range_end"] == TODAY
    assert _missing_days(dev, "image_classifications") == []
    # each day's materialization by that run carries the day's own totals
    day_objects = _day_objects(dev, backfill_run["runId"])
    assert len(day_objects) == 31
    assert (day_objects[MONTH_AGO], day_objects[YESTERDAY], day_objects[TODAY]) == (0, 0, 6)
    rewritten = dev.rows()
    assert sorted(rewritten) == sorted(keys)
    for key in missing:
        assert rewritten[key]["run_id"] == backfill_run["runId"]
    untouched = sorted(keys)[3]
    assert rewritten[untouched]["run_id"] == rows[untouched]["run_id"]

    # the asset page's Materialize with the launchpad's config: redo every object of the day
    run_id = _materialize_again(dev, TODAY)
    materialization = _latest_materialization(dev, TODAY)
    assert materialization["runId"] == run_id
    entries = {e["label"]: e for e in materialization["metadataEntries"]}
    assert entries["images"]["intValue"] == len(keys)
    assert entries["images_per_second"]["floatValue"] > 0
    assert dev.rows()["coffee-0.jpg"]["label"] in entries["sample"]["mdStr"]
    assert {row["run_id"] for row in dev.rows().values()} == {run_id}

    ended = wait_for("the backfill", lambda: _backfill_ended(dev, backfill_id), timeout=120)
    assert ended == "COMPLETED_SUCCESS"
    assert [run["runId"] for run in _backfill_runs(dev, backfill_id)] == [backfill_run["runId"]]


def _rows_of_one_run(dev: DagsterDev, keys: list[str]) -> dict[str, Any]:
    """The rows of ``keys`` once they are all in, written by one successful run."""
    rows = wait_for("a row per image", lambda: (r := dev.rows()) and len(r) == len(keys) and r)
    runs = wait_for(
        "successful runs",
        lambda: (r := dev.runs()) and all(x["status"] == "SUCCESS" for x in r) and r,
    )
    assert len(runs) == 1
    assert sorted(rows) == sorted(keys)
    return rows


def _delete_rows(dev: DagsterDev, keys: list[str]) -> None:
    """Rows that go missing from the results table (someone deleted them)."""
    engine = sa.create_engine(dev.results_url)
    with engine.begin() as connection:
        t = results.image_classifications
        connection.execute(t.delete().where(t.c.s3_key.in_(keys)))
    engine.dispose()


def _launch_backfill(dev: DagsterDev, start: str, end: str) -> str:
    """A backfill of image_classifications over the days ``start`` to ``end``, as the UI's
    partition dialog launches it (a plain date range); its id."""
    launched = dev.graphql(
        """mutation($params: LaunchBackfillParams!) {
             launchPartitionBackfill(backfillParams: $params) {
             __typename ... on LaunchBackfillSuccess { backfillId }
             ... on PythonError { message } } }""",
        {"params": {"partitionsByAssets": [{
                        "assetKey": {"path": ["image_classifications"]},
                        "partitions": {"range": {"start": start, "end": end}}}],
                    "fromFailure": False}},
    )  # fmt: skip
    return launched["launchPartitionBackfill"]["backfillId"]


def _the_backfills_one_run(dev: DagsterDev, backfill_id: str) -> dict[str, Any]:
    """The backfill's one run, once it succeeded: its run's end, not the backfill's, which the
    backfill daemon marks on its next pass, up to 30 s later (Dagster's fixed interval)."""
    [run] = wait_for(
        "the backfill's run",
        lambda: (r := _backfill_runs(dev, backfill_id)) and r[0]["status"] in FINISHED and r,
        timeout=240,
    )
    assert run["status"] == "SUCCESS"
    return run


def _backfill_runs(dev: DagsterDev, backfill_id: str) -> list[dict[str, Any]]:
    tag = {"key": "dagster/backfill", "value": backfill_id}
    return [run for run in dev.runs("__ASSET_JOB") if tag in run["tags"]]


def _backfill_ended(dev: DagsterDev, backfill_id: str) -> str | None:
    """The backfill's final status, None while it is still going or ending."""
    status = dev.graphql(
        """query($id: String!) { partitionBackfillOrError(backfillId: $id) {
             ... on PartitionBackfill { status } } }""",
        {"id": backfill_id},
    )["partitionBackfillOrError"]["status"]
    return None if status in ("REQUESTED", "CANCELING", "FAILING") else status


def _materialize_again(dev: DagsterDev, day: str) -> str:
    """The asset page's Materialize of ``day`` with the launchpad's config that redoes every
    object of the day; the run's id, once it succeeded."""
    launched = dev.graphql(
        """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
             __typename ... on LaunchRunSuccess { run { runId } }
             ... on PythonError { message } } }""",
        {"params": {"selector": {**LOCATION, "pipelineName": "__ASSET_JOB",
                                 "assetSelection": [{"path": ["image_classifications"]}]},
                    "executionMetadata": {"tags": [{"key": "dagster/partition",
                                                    "value": day}]},
                    "runConfigData": {"ops": {"image_classifications": {
                        "config": {"reclassify": True}}}},
                    "mode": "default"}},
    )  # fmt: skip
    run_id = launched["launchRun"]["run"]["runId"]
    client = DagsterGraphQLClient("127.0.0.1", port_number=dev.port)
    status = wait_for(
        "the materialization",
        lambda: (s := client.get_run_status(run_id).value) in FINISHED and s,
    )
    assert status == "SUCCESS"
    return run_id


def _latest_materialization(dev: DagsterDev, day: str) -> dict[str, Any]:
    """image_classifications' latest materialization of ``day``, with its metadata entries."""
    data = dev.graphql(
        """query($partition: String!) { assetOrError(assetKey: {path: ["image_classifications"]}) {
             ... on Asset { assetMaterializations(partitions: [$partition], limit: 1) {
               runId partition metadataEntries { label
                 ... on MarkdownMetadataEntry { mdStr } ... on FloatMetadataEntry { floatValue }
                 ... on IntMetadataEntry { intValue } } } } } }""",
        {"partition": day},
    )
    [materialization] = data["assetOrError"]["assetMaterializations"]
    return materialization


def _partition_stats(dev: DagsterDev, asset: str) -> dict[str, int]:
    """What the asset graph's "N% filled" and the partitions page's counts are made of."""
    data = dev.graphql(
        """query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { ... on AssetNode {
             partitionStats { numPartitions numMaterialized numFailed numMaterializing } } } }""",
        {"key": {"path": [asset]}},
    )
    return data["assetNodeOrError"]["partitionStats"]


def _day_objects(dev: DagsterDev, run_id: str) -> dict[str, int]:
    """day_objects of each image_classifications materialization the run wrote, by day."""
    data = dev.graphql(
        """{ assetOrError(assetKey: {path: ["image_classifications"]}) { ... on Asset {
             assetMaterializations(limit: 100) { runId partition
               metadataEntries { label ... on IntMetadataEntry { intValue } } } } } }"""
    )
    return {
        event["partition"]: entry["intValue"]
        for event in data["assetOrError"]["assetMaterializations"]
        if event["runId"] == run_id
        for entry in event["metadataEntries"]
        if entry["label"] == "day_objects"
    }


def _missing_days(dev: DagsterDev, asset: str) -> list[str]:
    """The days of the last 30 (and today) that a backfill of failed and missing partitions
    would launch, from the statuses the UI's launch dialog filters on."""
    data = dev.graphql(
        """query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { ... on AssetNode {
             assetPartitionStatuses { ... on TimePartitionStatuses {
               ranges { status startKey endKey } } } } } }""",
        {"key": {"path": [asset]}},
    )
    ranges = data["assetNodeOrError"]["assetPartitionStatuses"]["ranges"]
    done = {
        day
        for r in ranges
        if r["status"] == "MATERIALIZED"
        for day in _days(r["startKey"], r["endKey"])
    }
    return [day for day in _days(MONTH_AGO, TODAY) if day not in done]


def _days(first: str, last: str) -> list[str]:
    start, end = dt.date.fromisoformat(first), dt.date.fromisoformat(last)
    return [(start + dt.timedelta(days=n)).isoformat() for n in range((end - start).days + 1)]


def dismiss_community_dialog(driver: Any) -> None:
    """The first visit shows a 'Join the Dagster community' dialog over the page."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    time.sleep(2)
    try:
        for button in driver.find_elements(By.XPATH, "//button[normalize-space()='Skip']"):
            button.click()
    except WebDriverException:
        pass


def chromium() -> tuple[Any, str]:
    """Headless Debian Chromium through chromedriver, with a folder of its own for its profile
    and its temporary files (removed by the caller after ``driver.quit()``): Chromium leaves
    an empty ``.org.chromium.Chromium.*`` file in TMPDIR at every start."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    browser_dir = tempfile.mkdtemp(prefix="chromium-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={browser_dir}/profile", "--window-size=1440,900"):  # fmt: skip
        options.add_argument(flag)
    temporary = f"{browser_dir}/tmp"
    os.mkdir(temporary)
    service = Service(shutil.which("chromedriver"), env={**os.environ, "TMPDIR": temporary})
    return webdriver.Chrome(service=service, options=options), browser_dir


ERROR_TEXTS = ("Something went wrong", "An unexpected error", "Unexpected GraphQL error")


@pytest.mark.skipif(not shutil.which("chromedriver"), reason="chromium-driver not installed")
def test_the_pages_a_user_opens_render_without_errors(
    dagster_dev: DagsterDev, tmp_path: Path
) -> None:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    dev = dagster_dev
    runs = wait_for("a run to show", lambda: dev.runs() or dev.runs("__ASSET_JOB"), timeout=240)
    driver, browser_dir = chromium()
    shots = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    pages = {
        "asset-graph": ("/asset-groups/images", "image_classifications"),
        "partitions": ("/assets/image_classifications?view=partitions", TODAY),
        "partition-today": (
            f"/assets/image_classifications?view=partitions&partition={TODAY}",
            "day_objects",
        ),
        "run": (f"/runs/{runs[0]['runId']}", "image_classifications"),
    }
    texts: dict[str, str] = {}
    try:
        driver.get(dev.url)
        dismiss_community_dialog(driver)
        for name, (path, expected) in pages.items():
            driver.get(dev.url + path)
            dismiss_community_dialog(driver)
            WebDriverWait(driver, 60).until(
                lambda d, text=expected: (
                    text.lower() in d.find_element(By.TAG_NAME, "body").text.lower()
                )
            )
            with contextlib.suppress(TimeoutException):  # live data still loading is no error
                WebDriverWait(driver, 30).until(
                    lambda d: "Loading" not in d.find_element(By.TAG_NAME, "body").text
                )
            time.sleep(1)
            body = driver.find_element(By.TAG_NAME, "body").text
            assert not [e for e in ERROR_TEXTS if e in body], body[:2000]
            driver.save_screenshot(str(shots / f"ui-{name}.png"))
            texts[name] = body
    finally:
        driver.quit()
        shutil.rmtree(browser_dir, ignore_errors=True)
    # a caught-up bucket looks caught up: both partitioned assets full, no day missing
    assert texts["asset-graph"].count("100% filled") == 2, texts["asset-graph"]
    assert "Missing (0)" in texts["partitions"] and "Materialized (31)" in texts["partitions"]
    for total in ("day_objects", "day_current", "day_waiting", "day_errors", "day_deleted"):
        assert total in texts["partition-today"]


# -- monitoring: the exporter beside the real dagster dev, scraped by a real Prometheus --


@contextlib.contextmanager
def exporter(env: dict[str, str], log: Path) -> Iterator[str]:
    """``ai-assets-exporter`` reading every second (JSON logs), a commit 5 s after its stamp
    still counted (a loaded CI machine); yields its host:port."""
    port = free_port()
    command = [sys.executable, "-m", "ai_assets.ops.exporter", "--host", "127.0.0.1",
               "--port", str(port), "--interval", "1", "--lag", "5",
               "--log-format", "json"]  # fmt: skip
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_for_port(port, timeout=60, process=process)
        yield f"127.0.0.1:{port}"
    finally:
        stop_process(process)
    assert process.returncode == 0, "the exporter stops cleanly on SIGTERM"


def _rules_without_waiting(path: Path) -> Path:
    """The shipped rules with every ``for:`` at 0 s: the test cannot wait ten minutes."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["for"] = "0s"
    path.write_text(yaml.safe_dump(rules))
    return path


@pytest.mark.skipif(
    not prometheus_binary(), reason="prometheus missing: apt-get install prometheus"
)
def test_prometheus_reads_the_pipeline_and_the_backlog_alert_fires_and_clears(
    dagster_dev: DagsterDev,
    s3_client: Any,
    jpegs: dict[str, bytes],
    model_service_url: str,
    tmp_path: Path,
) -> None:
    dev = dagster_dev
    bucket = dev.env["AI_ASSETS_S3_BUCKET"]
    rules = _rules_without_waiting(tmp_path / "rules.yaml")
    with exporter(dev.env, tmp_path / "exporter.log") as exporter_at:
        targets = {"exporter": exporter_at, "model": model_service_url.removeprefix("http://")}
        with prometheus(tmp_path / "prometheus", targets, [rules]) as prom:
            assert _start_sensor(dev) == "RUNNING"
            s3_client.put_object(Bucket=bucket, Key="monitoring/new.jpg", Body=jpegs["coffee"])

            wait_for("the new image classified by a successful run", lambda: _caught_up(prom), 240)
            assert prom.value('up{job="exporter"}') == prom.value('up{job="model"}') == 1
            assert prom.value("ai_assets_service_ready") == 1
            wait_for(  # the runs' images went through the service it scrapes
                "the service's images scraped",
                lambda: (prom.value("ai_assets_service_images_total") or 0) >= 1,
                timeout=60,
            )
            assert prom.value("ai_assets_sensor_running") == 1
            assert (prom.value("ai_assets_sensor_last_good_tick_age_seconds") or 1e9) < 120
            assert prom.value('ai_assets_objects{state="current"}') == len(dev.rows())
            assert prom.value('ai_assets_exporter_source_up{source="database"}') == 1
            assert not prom.alerts().get("AiAssetsBacklogLate")

            # the backlog made old on purpose: the sensor stopped, an object waiting for 2 hours
            # (no tick in flight after: its listing could find the object gone at once)
            _stop_until_settled(dev)
            _record_waiting_since(dev, "monitoring/late.jpg", dt.timedelta(hours=2))
            firing = wait_for(
                "the backlog alert",
                lambda: prom.alerts().get("AiAssetsBacklogLate") == "firing",
                timeout=60,
            )
            assert firing
            assert (prom.value("ai_assets_oldest_waiting_age_seconds") or 0) >= 7200
            _shoot_prometheus(prom.url, "/classic/alerts", "prometheus-alerts.png", tmp_path)

            # the sensor again: the object is not in the bucket, so it is deleted, not waited for
            assert _start_sensor(dev) == "RUNNING"
            wait_for(
                "the backlog back to zero",
                lambda: (
                    prom.value('ai_assets_objects{state="waiting"}') == 0
                    and "AiAssetsBacklogLate" not in prom.alerts()
                ),
                timeout=120,
            )
            assert prom.value("ai_assets_oldest_waiting_age_seconds") == 0
            graph = "/graph?g0.expr=ai_assets_objects&g0.tab=0&g0.range_input=1m"
            _shoot_prometheus(prom.url, graph, "prometheus-objects.png", tmp_path)
    lines = (tmp_path / "exporter.log").read_text().splitlines()
    assert lines and all(json.loads(line)["level"] for line in lines)


def _caught_up(prom: Any) -> bool:
    """Whether Prometheus has seen an image classified by a successful run, and none waiting."""
    classified = prom.value('ai_assets_classifications_total{status="ok"}') or 0
    succeeded = prom.value('ai_assets_runs_finished_last_hour{status="success"}')
    waiting = prom.value('ai_assets_objects{state="waiting"}')
    return classified >= 1 and (succeeded or 0) >= 1 and waiting == 0


def _record_waiting_since(dev: DagsterDev, key: str, age: dt.timedelta) -> None:
    """An object in the inventory, first seen ``age`` ago and never classified."""
    engine = sa.create_engine(dev.results_url)
    since = dt.datetime.now(dt.UTC) - age
    inventory.write_rows(engine, [{
        "s3_key": key, "partition_key": TODAY, "etag": "e-late", "size_bytes": 1,
        "last_modified": since, "first_seen": since, "deleted_at": None, "batch_id": None,
    }])  # fmt: skip
    engine.dispose()


def _shoot_prometheus(url: str, path: str, name: str, tmp_path: Path) -> None:
    """A page of the real Prometheus, for the README (``make screenshots``)."""
    if not shutil.which("chromedriver"):
        return
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    shots = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    driver, browser_dir = chromium()
    try:
        driver.set_window_size(1440, 1000)
        driver.get(url + path)
        # Debian's Prometheus serves its classic UI: a graph is an SVG once its data is in
        if path.startswith("/graph"):
            WebDriverWait(driver, 60).until(
                lambda d: d.find_elements(By.CSS_SELECTOR, ".graph svg")
            )
        else:  # the alerts page: the firing alert, opened
            alert = "AiAssetsBacklogLate"
            WebDriverWait(driver, 60).until(
                lambda d: alert in d.find_element(By.TAG_NAME, "body").text
            )
            for label in driver.find_elements(
                By.XPATH, "//*[normalize-space()='Show annotations']"
            ):
                label.click()
            for link in driver.find_elements(By.PARTIAL_LINK_TEXT, alert):
                link.click()
        time.sleep(1)
        driver.save_screenshot(str(shots / name))
    finally:
        driver.quit()
        shutil.rmtree(browser_dir, ignore_errors=True)

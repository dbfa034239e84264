"""The exporter on real tables and a real Dagster instance, through a PostgreSQL restart; and
the shipped alert rules and dashboard, which may only use metrics that exist."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
from pathlib import Path

import dagster as dg
import prometheus_client as prom
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ai_assets.db import inventory, results
from ai_assets.db.status import BucketStatus, Totals
from ai_assets.ops.exporter import DagsterState, LastRun, PipelineCollector, read_last_run
from ai_assets.resources.results_db import ResultsDatabaseResource
from ai_assets.s3.objects import _too_large
from ai_assets.service.metrics import Metrics
from ai_assets_dev.localdev import postgres
from ai_assets_tests.support.helm import CHART, ROOT, by_kind, render
from ai_assets_tests.support.util import MARCH_9, inventory_row, result_row

RULES = CHART / "files" / "prometheus-rules.yaml"
DASHBOARD = CHART / "files" / "grafana-dashboard.json"


def scrape(collector: PipelineCollector) -> dict[str, float]:
    """The collector's samples as Prometheus reads them, keyed ``name{label=value,...}``."""
    registry = prom.CollectorRegistry()
    registry.register(collector)
    samples = {}
    for family in text_string_to_metric_families(prom.generate_latest(registry).decode()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def fill(engine) -> None:
    """Two current, one error, two waiting (one new an hour ago, one overwritten since), one
    deleted."""
    hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    inventory.write_rows(engine, [
        inventory_row("a.jpg"), inventory_row("b.jpg"), inventory_row("bad.jpg"),
        inventory_row("new.jpg", first_seen=hour_ago),
        inventory_row("changed.jpg", etag="e2", last_modified=hour_ago + dt.timedelta(minutes=30)),
        inventory_row("gone.jpg", deleted_at=MARCH_9),
    ])  # fmt: skip
    results.upsert_rows(engine, [
        result_row("a.jpg"), result_row("b.jpg"),
        result_row("bad.jpg", "error", error="empty object"),
        result_row("changed.jpg"), result_row("gone.jpg", "deleted"),
    ])  # fmt: skip


def run(instance: dg.DagsterInstance, status: dg.DagsterRunStatus) -> None:
    instance.add_run(dg.DagsterRun(job_name="classify_images_job", status=status))


def materialized(instance: dg.DagsterInstance, images: int, **figures: float) -> None:
    """An image_classifications materialization with a run's figures (runs.Meta's keys)."""
    metadata = {"images": images, **figures}
    instance.report_runless_asset_event(
        dg.AssetMaterialization("image_classifications", partition="2024-03-09", metadata=metadata)
    )


def test_the_exporter_says_where_objects_results_and_runs_stand(db_url: str) -> None:
    engine = ResultsDatabaseResource(url=db_url).get_engine()
    fill(engine)
    with dg.instance_for_test() as instance:
        for status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE):
            run(instance, status)
        run(instance, dg.DagsterRunStatus.STARTED)
        bucket = BucketStatus(engine, start=MARCH_9.date(), lag=dt.timedelta(0))
        collector = PipelineCollector(bucket, instance)
        collector.refresh()
        assert not any(name.startswith("ai_assets_last_run") for name in scrape(collector))
        # a run of a version that did not report its feed, then one that did
        materialized(instance, 900, images_per_second=80.0, cpu_ms_per_image=20.0)
        collector.refresh()
        assert "ai_assets_last_run_cpu_ms_per_image{part=feed}" not in scrape(collector)
        materialized(
            instance, 1000, images_per_second=104.8, cpu_ms_per_image=18.1,
            feed_cpu_ms_per_image=1.6,
        )  # fmt: skip
        materialized(instance, 0, images_per_second=0.0, cpu_ms_per_image=0.0)  # nothing to do
        collector.refresh()
        samples = scrape(collector)
        assert samples["ai_assets_last_run_images_per_second{}"] == 104.8
        assert samples["ai_assets_last_run_cpu_ms_per_image{part=all}"] == 18.1
        assert samples["ai_assets_last_run_cpu_ms_per_image{part=feed}"] == 1.6
        assert read_last_run(instance, page=1) == LastRun(104.8, 18.1, 1.6)  # a page further
        states = ("waiting", "current", "error", "deleted")
        found = [samples[f"ai_assets_objects{{state={state}}}"] for state in states]
        assert found == [2, 2, 1, 1]
        age = samples["ai_assets_oldest_waiting_age_seconds{}"]
        assert 3600 <= age < 3600 + 120  # new.jpg, first seen an hour ago
        assert samples["ai_assets_runs{status=started}"] == 1
        assert samples["ai_assets_runs_finished_last_hour{status=failure}"] == 1
        assert samples["ai_assets_runs_finished_last_hour{status=success}"] == 1
        assert samples["ai_assets_sensor_running{}"] == 0  # no daemon ever ran it here
        assert samples["ai_assets_exporter_source_up{source=database}"] == 1
        assert samples["ai_assets_exporter_source_up{source=dagster}"] == 1
        # rows written before the exporter started are not its to count; later ones are
        assert samples["ai_assets_classifications_total{status=ok}"] == 0
        now = dt.datetime.now(dt.UTC)
        results.upsert_rows(engine, [
            result_row("new.jpg", classified_at=now),
            result_row(
                "changed.jpg", "error", etag="e2", error=_too_large(9, 1), classified_at=now
            ),
        ])  # fmt: skip
        collector.refresh()
        samples = scrape(collector)
    assert samples["ai_assets_objects{state=waiting}"] == 0
    assert samples["ai_assets_oldest_waiting_age_seconds{}"] == 0
    assert samples["ai_assets_classifications_total{status=ok}"] == 1
    assert samples["ai_assets_classification_errors_total{kind=too_large}"] == 1


def test_a_postgresql_restart_keeps_the_last_values_and_says_so() -> None:
    # the system's temp folder: under pytest's, the server's socket path can pass 107 bytes
    with postgres() as server, dg.instance_for_test() as instance:
        engine = ResultsDatabaseResource(url=server.create_database("results")).get_engine()
        fill(engine)
        collector = PipelineCollector(BucketStatus(engine, start=MARCH_9.date()), instance)
        collector.refresh()
        assert scrape(collector)["ai_assets_objects{state=waiting}"] == 2
        server.stop()
        collector.refresh()  # logs the failure, serves the last values, says the source is down
        down = scrape(collector)
        assert down["ai_assets_exporter_source_up{source=database}"] == 0
        assert down["ai_assets_exporter_source_up{source=dagster}"] == 1
        assert down["ai_assets_objects{state=waiting}"] == 2
        server.start()
        inventory.write_rows(engine, [inventory_row("later.jpg")])
        collector.refresh()
        back = scrape(collector)
        engine.dispose()
    assert back["ai_assets_exporter_source_up{source=database}"] == 1
    assert back["ai_assets_objects{state=waiting}"] == 3


# -- the shipped rules and dashboard --


def _sample_names(families: list) -> set[str]:
    """Every sample name a family can expose (counters' _total, histograms' _bucket, ...)."""
    suffixes = {
        "counter": ["_total"],
        "histogram": ["_bucket", "_sum", "_count"],
        "info": ["_info"],
    }
    return {f.name + s for f in families for s in suffixes.get(f.type, [""])}


def exporter_families() -> list:
    """What the exporter exposes once every source has been read."""
    collector = PipelineCollector(BucketStatus(None, MARCH_9.date()), None)  # type: ignore[arg-type]
    collector.bucket.classified.update(ok=1)
    collector.bucket.errors.update(empty=1)
    collector.database.value = Totals(oldest_waiting=MARCH_9)
    collector.dagster.value = DagsterState(
        True, 0.0, {"queued": 0}, {"failure": 0}, LastRun(100.0, 18.0, 1.6)
    )
    for source in collector.sources:
        source.refreshed = 0.0
    return list(collector.collect())


def service_families() -> list:
    return list(text_string_to_metric_families(prom.generate_latest(Metrics().registry).decode()))


def _rules() -> list[dict]:
    return [
        rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    ]


def _panel_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def test_every_metric_the_rules_and_the_dashboard_use_exists() -> None:
    pipeline = _sample_names(exporter_families())
    names = pipeline | _sample_names(service_families())
    for expr in [rule["expr"] for rule in _rules()] + _panel_exprs():
        used = set(re.findall(r"\bai_assets_[a-z0-9_]+", expr))
        assert used, expr
        assert used <= names, (expr, used - names)
    # and every pipeline metric is in the README's table, and on the dashboard
    readme = (ROOT / "README.md").read_text()
    dashboard = " ".join(_panel_exprs())
    for name in pipeline:
        assert f"`{name}`" in readme, f"{name} is not in the README's Monitoring table"
        if not name.startswith("ai_assets_exporter_"):  # the exporter's own: on the last row
            assert name in dashboard, f"{name} is on no dashboard panel"


def test_each_alert_says_what_to_do_and_how_urgent() -> None:
    readme = (ROOT / "README.md").read_text().lower()
    for rule in _rules():
        assert {"summary", "description", "runbook_url"} <= rule["annotations"].keys()
        assert rule["labels"]["severity"] in ("warning", "critical")
        anchor = rule["annotations"]["runbook_url"].split("#")[1]
        assert f"#### {anchor}" in readme, f"README has no section for {rule['alert']}"


@pytest.mark.skipif(
    not shutil.which("promtool"), reason="promtool missing: apt-get install prometheus"
)
def test_promtool_accepts_the_rules_the_chart_ships_and_the_dashboards_queries(
    tmp_path: Path,
) -> None:
    values = {"monitoring": {"prometheusRule": {"enabled": True}}}
    [rule] = by_kind(render(values), "PrometheusRule").values()
    rendered = tmp_path / "rendered-rules.yaml"
    rendered.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    queries = [{"record": f"dashboard:panel_{i}", "expr": e} for i, e in enumerate(_panel_exprs())]
    dashboard = tmp_path / "dashboard-queries.yaml"
    dashboard.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": queries}]}))
    for path in (RULES, rendered, dashboard):
        check = subprocess.run(
            ["promtool", "check", "rules", str(path)], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr

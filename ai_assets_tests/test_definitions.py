"""The code location's contract: the documented names, cheap to load, configured by env vars."""

import os
import subprocess
import sys

import dagster as dg
import pytest

from ai_assets.definitions import build_defs


def test_definitions_load_with_the_contract_names() -> None:
    defs = build_defs()
    repo = defs.get_repository_def()
    assert {key.to_user_string() for key in repo.asset_graph.get_all_asset_keys()} == {
        "s3_images",
        "image_classifications",
        "label_summary",
    }
    assert {s.name for s in repo.sensor_defs} == {
        "s3_image_sensor",
        "slack_on_run_failure",
        "slack_success_digest",
        "label_summary_automation",
    }
    job = defs.resolve_job_def("classify_images_job")
    assert job.partitions_def == dg.DailyPartitionsDefinition(
        start_date="2020-01-01", timezone="UTC", end_offset=1
    )
    assert set(defs.resources or {}) >= {"s3", "classifier", "results_db", "slack"}
    classifications = defs.resolve_assets_def("image_classifications")
    assert classifications.partitions_def == job.partitions_def
    assert classifications.backfill_policy is None  # a backfill is one run per day
    assert defs.resolve_assets_def("s3_images").partitions_def == job.partitions_def
    assert defs.resolve_assets_def("label_summary").partitions_def is None
    spec = classifications.specs_by_key[classifications.key]
    columns = spec.metadata["dagster/column_schema"].columns
    assert [c.name for c in columns][:3] == ["s3_key", "partition_key", "etag"]
    assert spec.owners == ["team:ml-platform"]
    assert spec.kinds == {"pytorch", "sqlite"}  # the embedded default database
    assert {c.name for c in classifications.check_specs} == {
        "scores_are_probabilities",
        "batch_fully_classified",
        "error_rate_below_threshold",
    }


def test_loading_definitions_imports_neither_torch_nor_transformers() -> None:
    code = (
        "import sys; import ai_assets.definitions as d; d.defs.get_repository_def(); "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_settings_become_env_vars_only_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AI_ASSETS_S3_BUCKET", "my-bucket")
    monkeypatch.setenv("AI_ASSETS_BATCH_SIZE", "7")
    monkeypatch.delenv("AI_ASSETS_S3_PREFIX", raising=False)
    resources = build_defs().resources or {}
    s3 = resources["s3"]
    assert isinstance(s3.bucket, dg.EnvVar)  # type: ignore[attr-defined]
    assert s3.bucket.env_var_name == "AI_ASSETS_S3_BUCKET"  # type: ignore[attr-defined]
    assert s3.prefix == ""  # type: ignore[attr-defined]
    resolved = s3.process_config_and_initialize()  # type: ignore[attr-defined]
    assert (resolved.bucket, resolved.prefix) == ("my-bucket", "")
    classifier = resources["classifier"].process_config_and_initialize()  # type: ignore[attr-defined]
    assert classifier.batch_size == 7


def test_the_start_date_is_configurable_and_validated() -> None:
    code = "import ai_assets.partitions as p; print(p.images_daily.start.date())"
    env = {**os.environ, "AI_ASSETS_START_DATE": "2023-06-01"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "2023-06-01"
    env["AI_ASSETS_START_DATE"] = "June 2023"
    bad = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert "AI_ASSETS_START_DATE must be an ISO date (YYYY-MM-DD), got 'June 2023'" in bad.stderr


def test_kinds_name_the_configured_database() -> None:
    code = (
        "import ai_assets.definitions as d; "
        "print(sorted(d.defs.resolve_assets_def('image_classifications').specs_by_key["
        "d.defs.resolve_assets_def('image_classifications').key].kinds))"
    )
    env = {**os.environ, "AI_ASSETS_DATABASE_URL": "postgresql+psycopg2://u@db/x"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "['postgres', 'pytorch']"

"""The code location's contract: the documented names, cheap to load, configured by env vars."""

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest

from ai_assets.definitions import SettingsError, build_defs
from ai_assets.settings import CONTRACT, DEFAULT_DOWNLOAD_CONCURRENCY

ROOT = Path(__file__).resolve().parents[2]


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
        start_date=os.environ["AI_ASSETS_START_DATE"], timezone="UTC", end_offset=1
    )
    assert set(defs.resources or {}) >= {"s3", "classifier", "results_db", "slack"}
    classifications = defs.resolve_assets_def("image_classifications")
    assert classifications.partitions_def == job.partitions_def
    # a backfill runs a month of days per run: its empty days cost no run of their own
    assert classifications.backfill_policy == dg.BackfillPolicy.multi_run(31)
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
        "no_object_waits_too_long",
    }


def test_classification_runs_execute_their_step_in_the_run_process() -> None:
    """No second Python per run (or per run pod) to import the code location and torch again."""
    job = build_defs().resolve_job_def("classify_images_job")
    assert job.executor_def is dg.in_process_executor


def test_the_code_location_is_built_once_per_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import ai_assets.definitions as location

    first = location.defs()
    assert location.defs() is first  # Dagster loads it twice in a run worker
    monkeypatch.setenv("AI_ASSETS_BATCH_SIZE", "7")
    changed = location.defs()
    assert changed is not first
    resources = changed.resources or {}
    assert resources["classifier"].process_config_and_initialize().batch_size == 7  # type: ignore[attr-defined]


@pytest.mark.integration  # a subprocess or a server
def test_loading_definitions_imports_neither_torch_nor_transformers() -> None:
    code = (
        "import sys; import ai_assets.definitions as d; d.defs().get_repository_def(); "
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
    assert classifier.gpu_jpeg_decode is False
    monkeypatch.setenv("AI_ASSETS_GPU_JPEG_DECODE", "true")
    assert (build_defs().resources or {})["classifier"].gpu_jpeg_decode is True  # type: ignore[attr-defined]
    assert classifier.decode_processes is None  # chosen for the model's device when it loads
    assert classifier.download_concurrency == 0  # chosen when the run starts, from the model's
    # decode processes (vision.model.ImageClassifier.decode_processes):
    assert classifier.fetch_threads(SimpleNamespace(decode_processes=0)) == (
        DEFAULT_DOWNLOAD_CONCURRENCY
    )
    assert classifier.fetch_threads(SimpleNamespace(decode_processes=14)) == 28  # two per worker
    monkeypatch.setenv("AI_ASSETS_DECODE_PROCESSES", "14")
    resolved = (build_defs().resources or {})["classifier"].process_config_and_initialize()  # type: ignore[attr-defined]
    assert resolved.decode_processes == 14
    monkeypatch.setenv("AI_ASSETS_DOWNLOAD_CONCURRENCY", "20")
    resolved = (build_defs().resources or {})["classifier"].process_config_and_initialize()  # type: ignore[attr-defined]
    assert resolved.fetch_threads(SimpleNamespace(decode_processes=14)) == 20
    monkeypatch.setenv("AI_ASSETS_DECODE_PROCESSES", "0")  # the threads, whatever the device
    resolved = (build_defs().resources or {})["classifier"].process_config_and_initialize()  # type: ignore[attr-defined]
    assert resolved.decode_processes == 0


@pytest.mark.integration  # a subprocess or a server
def test_the_start_date_and_sensor_interval_are_configurable_and_validated() -> None:
    code = (
        "import ai_assets.defs.images.partitions as p, ai_assets.defs.images.sensor as s; "
        "print(p.images_daily.start.date(), s.s3_image_sensor.minimum_interval_seconds)"
    )
    env = {k: v for k, v in os.environ.items() if k != "AI_ASSETS_START_DATE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "2020-01-01 15"  # the documented defaults
    env |= {"AI_ASSETS_START_DATE": "2023-06-01", "AI_ASSETS_SENSOR_INTERVAL_SECONDS": "5"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "2023-06-01 5"
    env["AI_ASSETS_START_DATE"] = "June 2023"
    bad = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert "AI_ASSETS_START_DATE must be an ISO date (YYYY-MM-DD), got 'June 2023'" in bad.stderr


def test_bad_settings_fail_the_load_with_one_message_naming_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AI_ASSETS_START_DATE", "yesterday")
    monkeypatch.setenv("AI_ASSETS_SENSOR_INTERVAL_SECONDS", "often")
    monkeypatch.setenv("AI_ASSETS_GPU_JPEG_DECODE", "sometimes")
    monkeypatch.setenv("AI_ASSETS_DECODE_PROCESSES", "-1")
    with pytest.raises(SettingsError) as raised:
        build_defs()
    assert str(raised.value) == (
        "ai_assets configuration: AI_ASSETS_START_DATE must be an ISO date (YYYY-MM-DD), got "
        "'yesterday'; AI_ASSETS_SENSOR_INTERVAL_SECONDS must be a whole number, got 'often'; "
        "AI_ASSETS_DECODE_PROCESSES must be at least 0, got '-1'; "  # the model service reads it
        "AI_ASSETS_GPU_JPEG_DECODE must be true or false, got 'sometimes'"
    )
    assert raised.value.__cause__ is None and raised.value.__context__ is None


@pytest.mark.integration  # a subprocess or a server
def test_a_code_server_with_a_bad_setting_reports_it_not_an_empty_graph(tmp_path: Path) -> None:
    """What `dagster dev` shows for the code location: the one message, as its load error."""
    env = {**os.environ, "AI_ASSETS_MAX_OBJECTS_PER_RUN": "0", "DAGSTER_HOME": str(tmp_path)}
    done = subprocess.run(
        [str(Path(sys.executable).with_name("dagster")), "definitions", "validate", "-m",
         "ai_assets.definitions"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert "Validation failed for code location" in output
    message = "ai_assets configuration: AI_ASSETS_MAX_OBJECTS_PER_RUN must be at least 1, got '0'"
    assert output.count(message) == 1, output[-3000:]


@pytest.mark.integration  # a subprocess or a server
def test_kinds_name_the_configured_database() -> None:
    code = (
        "import ai_assets.definitions as d; a = d.build_defs().resolve_assets_def("
        "'image_classifications'); print(sorted(a.specs_by_key[a.key].kinds))"
    )
    env = {**os.environ, "AI_ASSETS_DATABASE_URL": "postgresql+psycopg2://u@db/x"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "['postgres', 'pytorch']"


@pytest.mark.integration  # a subprocess or a server
def test_the_wheel_ships_the_code_location_and_no_dev_tooling(tmp_path: Path) -> None:
    shutil.rmtree(ROOT / "build", ignore_errors=True)  # stale build outputs would leak in
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    [wheel] = tmp_path.glob("ai_assets-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {name.split("/")[0] for name in names if not name.startswith("ai_assets-")}
    assert packages == {"ai_assets"}, packages
    assert "ai_assets/definitions.py" in names
    assert "ai_assets/model_service.py" in names
    assert "ai_assets/db/migrations/script.py.mako" in names
    dev = ("demo.py", "localdev.py", "inprocess.py", "samples.py")
    assert not [n for n in names if n.rsplit("/", 1)[-1] in dev], "dev tooling in the wheel"


# the configuration contract: the package's source, the README and the chart against it
_NAME = re.compile(r"\b((?:AI_ASSETS|AWS|SLACK|DAGSTER)_[A-Z0-9_]*[A-Z0-9])(?![A-Z0-9_*])")


def names_in_source() -> set[str]:
    """Every variable-like name the package's source mentions (code, messages, docstrings)."""
    found: set[str] = set()
    for path in (ROOT / "ai_assets").rglob("*.py"):
        found |= set(_NAME.findall(path.read_text()))
    return found - {"DAGSTER_PG_PASSWORD"}  # the chart's instance (files/dagster.yaml)


def names_in_readme() -> set[str]:
    """The first column of the README's Configuration table, ``X_*`` families expanded."""
    text = (ROOT / "README.md").read_text().split("## Configuration", 1)[1]
    table = text.split("\n\n", 2)[1]
    names: set[str] = set()
    for row in table.splitlines()[2:]:
        for name in re.findall(r"`([A-Z0-9_*]+)`", row.split("|")[1]):
            family = [
                v.name for v in CONTRACT if name.endswith("*") and v.name.startswith(name[:-1])
            ]
            names |= set(family) if name.endswith("*") else {name}
    return names


def test_every_variable_used_is_declared_and_documented_and_none_more() -> None:
    declared = {v.name for v in CONTRACT}
    assert len(declared) == len(CONTRACT), "a variable declared twice"
    used = names_in_source()
    assert used - declared == set(), "used in ai_assets/ but not in settings.CONTRACT"
    ours = {v.name for v in CONTRACT if v.reader == "ai_assets"}
    assert ours - used == set(), "declared but never read by the package"
    assert names_in_readme() == declared, "README's Configuration table and the contract differ"


@pytest.mark.parametrize("values", ["defaults", "production"])
def test_the_charts_configmap_sets_only_declared_variables(values: str) -> None:
    from ai_assets_tests.support.helm import PRODUCTION, by_kind, render

    env = by_kind(render(PRODUCTION if values == "production" else {}), "ConfigMap")
    keys = set(env["ai-ai-assets-env"]["data"])
    ours = {key for key in keys if key.startswith(("AI_ASSETS_", "AWS_", "SLACK_"))}
    assert ours - {v.name for v in CONTRACT} == set()


def test_reading_an_undeclared_variable_fails_loudly() -> None:
    from ai_assets.defs.resources import int_setting

    with pytest.raises(KeyError, match="not in the configuration contract"):
        int_setting("AI_ASSETS_NOT_DECLARED", 1)


@pytest.mark.integration  # a subprocess or a server
def test_dg_finds_every_object_in_the_defs_folder() -> None:
    """``dg list defs`` (dagster-dg-cli) sees the project the way Dagster's tooling does."""
    dg_cli = str(Path(sys.executable).with_name("dg"))
    env = {**os.environ, "VIRTUAL_ENV": str(Path(sys.executable).parents[1])}
    out = subprocess.run(
        [dg_cli, "list", "defs", "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    listed = json.loads(out.stdout)
    assert {a["asset_key"] for a in listed["assets"]} == {
        "s3_images", "image_classifications", "label_summary"
    }  # fmt: skip
    assert {j["name"] for j in listed["jobs"]} == {"classify_images_job"}
    assert {s["name"] for s in listed["sensors"]} == {
        "s3_image_sensor", "slack_on_run_failure", "slack_success_digest",
        "label_summary_automation",
    }  # fmt: skip
    assert {r["name"] for r in listed["resources"]} == {"s3", "classifier", "results_db", "slack"}

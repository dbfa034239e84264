"""``make demo``: a local S3 server with sample photos, one end-to-end pass, then the Dagster UI.

``--once`` stops after printing the results table (non-interactive, exits 0 on success).
SIGTERM or SIGINT stops everything it started, foreground or background, within seconds; its
environment is written to ``.demo/env.sh`` for the AWS CLI, ``sqlite3`` and the dagster CLI.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import boto3

from ai_assets.settings import problems
from ai_assets_dev.localdev import (
    dagster_dev_command,
    free_port,
    local_instance,
    model_service,
    s3_client_at,
    seaweedfs,
    stop_process,
)

ROOT = Path(os.environ.get("AI_ASSETS_DEMO_DIR") or Path.cwd() / ".demo")
DEMO_KEYS = {
    "AWS_ACCESS_KEY_ID": "ai-assets-demo",
    "AWS_SECRET_ACCESS_KEY": "ai-assets-demo-secret",
}
DEMO_S3_PORT = 8333
UI_HOST, UI_PORT = "127.0.0.1", 3000
#: ai-assets-exporter's usual port (README, Monitoring)
EXPORTER_PORT = 9108
#: The model service's usual port (make serve): the demo's runs classify through it
SERVICE_PORT = 8000
#: Least seconds between the demo's sensor ticks: below the daemon's 5 s loop, so it ticks on
#: every pass of that loop (at 5, a tick a hair late waits for the pass after) and a new photo
#: waits ~2.5 s for its tick
DEMO_SENSOR_INTERVAL_SECONDS = "1"
#: The demo's partitions start this many days before its first run: a month of days to browse
#: and backfill, without years of empty days to record first.
DEMO_DAYS = 30


def demo_start_date() -> str:
    """The demo's first partition: chosen on its first run, then kept with its bucket."""
    saved = ROOT / "start_date"
    if not saved.exists():
        ROOT.mkdir(parents=True, exist_ok=True)
        first = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=DEMO_DAYS)
        saved.write_text(first.isoformat())
    return saved.read_text().strip()


def configure(endpoint: str) -> None:
    """The environment of the configuration contract, pointing at the local services."""
    dagster_home = ROOT / "dagster_home"
    local_instance(dagster_home)
    os.environ.update(DEMO_KEYS)
    os.environ.update(
        {
            "DAGSTER_HOME": str(dagster_home),
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_REGION": "us-east-1",
            "AI_ASSETS_S3_BUCKET": os.environ.get("AI_ASSETS_S3_BUCKET", "images"),
            "AI_ASSETS_S3_PREFIX": os.environ.get("AI_ASSETS_S3_PREFIX", ""),
            "AI_ASSETS_START_DATE": os.environ.get("AI_ASSETS_START_DATE") or demo_start_date(),
            "AI_ASSETS_DATABASE_URL": os.environ.get("AI_ASSETS_DATABASE_URL")
            or f"sqlite:///{dagster_home / 'ai_assets.sqlite'}",
            "HF_HUB_OFFLINE": "1",
        }
    )
    os.environ.setdefault("AI_ASSETS_SENSOR_INTERVAL_SECONDS", DEMO_SENSOR_INTERVAL_SECONDS)
    write_env_file(ROOT / "env.sh")


#: What a standard client needs to reach the demo's services (written to .demo/env.sh).
ENV_FILE_VARIABLES = (
    "DAGSTER_HOME",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_REGION",
    "AI_ASSETS_S3_BUCKET",
    "AI_ASSETS_S3_PREFIX",
    "AI_ASSETS_START_DATE",
    "AI_ASSETS_DATABASE_URL",
    "HF_HUB_OFFLINE",
)


def write_env_file(path: Path) -> None:
    lines = [f"export {name}={shlex.quote(os.environ[name])}" for name in ENV_FILE_VARIABLES]
    path.write_text(
        "# the running demo's environment: source it, then use your own tools\n"
        + "\n".join(lines)
        + "\n"
    )


def s3_client(env: Mapping[str, str]) -> Any:
    """A boto3 client of the demo's S3 server, from its environment (``.demo/env.sh``)."""
    return s3_client_at(
        env["AWS_ENDPOINT_URL"],
        env["AWS_ACCESS_KEY_ID"],
        env["AWS_SECRET_ACCESS_KEY"],
        env["AWS_REGION"],
    )


def upload_samples() -> int | None:
    """The sample photos, into a new bucket only: an existing one stays as the user left it
    (photos deleted, overwritten or added); None then. ``make demo-clean`` starts over."""
    from ai_assets_dev.samples import sample_jpegs

    client = boto3.client("s3")
    bucket = os.environ["AI_ASSETS_S3_BUCKET"]
    try:
        client.create_bucket(Bucket=bucket)
    except (client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
        return None
    prefix = os.environ.get("AI_ASSETS_S3_PREFIX", "")
    samples = sample_jpegs()
    for name, data in samples.items():
        client.put_object(Bucket=bucket, Key=f"{prefix}samples/{name}.jpg", Body=data)
    return len(samples)


LABEL_SUMMARY = "label_summary"


def summary_job(defs: Any) -> Any:
    """The job the UI's Materialize runs label_summary in (``__ASSET_JOB``), not an ephemeral."""
    import dagster as dg

    job = defs.resolve_implicit_job_def_def_for_assets([dg.AssetKey(LABEL_SUMMARY)])
    if job is None:
        raise LookupError(f"{LABEL_SUMMARY} is in no asset job of the code location")
    return job


def run_once() -> bool:
    """One sensor tick, the runs it requests, then label_summary (the daemon refreshes it later)."""
    import dagster as dg

    from ai_assets.db import results
    from ai_assets_dev.inprocess import InProcessDaemon

    with dg.DagsterInstance.get() as instance:
        daemon = InProcessDaemon(instance)
        started = time.perf_counter()
        result, runs = daemon.tick()
        summary = summary_job(daemon.defs).execute_in_process(
            instance=instance,
            asset_selection=[dg.AssetKey(LABEL_SUMMARY)],
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )
        ok = all(run.success for run in runs) and summary.success
        elapsed = time.perf_counter() - started
        database = daemon.defs.resources["results_db"].process_config_and_initialize()  # type: ignore[attr-defined]
        engine = database.get_engine()
        rows = results.fetch_rows(engine)
    found = sum(
        e.metadata["new"].value  # type: ignore[misc]
        for e in result.asset_events or []
        if e.asset_key == dg.AssetKey("s3_images")
    )
    print(
        f"\n{found} new objects, {len(runs)} run(s), {elapsed:.1f} s; "
        f"results table {engine.url.render_as_string(hide_password=True)}\n"
    )
    print(f"{'s3_key':<40} {'label':<36} {'score':>6}  status")
    for row in rows:
        score = f"{row['score']:.3f}" if row["score"] is not None else ""
        print(f"{row['s3_key']:<40} {(row['label'] or '')[:36]:<36} {score:>6}  {row['status']}")
    return ok and bool(rows)


@contextlib.contextmanager
def start_model_service() -> Iterator[str]:
    """The model service for the demo's runs (AI_ASSETS_INFERENCE_URL), stopped with it."""
    port = SERVICE_PORT if _port_free(SERVICE_PORT) else free_port()
    log = ROOT / "model-service.log"
    with model_service(port=port, log=log) as url:
        os.environ["AI_ASSETS_INFERENCE_URL"] = url
        print(f"Model service: {url}/docs  (the runs classify through it; log: {log})")
        try:
            yield url
        finally:
            del os.environ["AI_ASSETS_INFERENCE_URL"]


def serve_ui(port: int) -> int:
    """``dagster dev`` with the sensors running, until SIGINT or SIGTERM."""
    print(f"\nDagster UI: http://{UI_HOST}:{port}  (Ctrl+C or SIGTERM stops it and the S3 server)")
    print(
        f"Use the demo with your own tools:  source {ROOT / 'env.sh'}\n"
        f"  aws s3 cp photo.jpg s3://$AI_ASSETS_S3_BUCKET/   # the sensor picks it up\n"
        '  sqlite3 "${AI_ASSETS_DATABASE_URL#sqlite:///}" '
        "'SELECT s3_key, label, score FROM image_classifications'"
    )
    dagster_home = Path(os.environ["DAGSTER_HOME"])
    env = {**os.environ, "PYTHONWARNINGS": _quiet_warnings(os.environ.get("PYTHONWARNINGS"))}
    metrics_port = EXPORTER_PORT if _port_free(EXPORTER_PORT) else free_port()
    exporter_log = ROOT / "exporter.log"
    print(
        f"Pipeline metrics for Prometheus: http://{UI_HOST}:{metrics_port}/metrics"
        f"  (log: {exporter_log})\n"
    )
    exporter = subprocess.Popen(
        [sys.executable, "-m", "ai_assets.ops.exporter", "--host", UI_HOST,
         "--port", str(metrics_port), "--interval", "5"],
        cwd=dagster_home,
        start_new_session=True,
        preexec_fn=_default_signals,
        env=env,
        stderr=exporter_log.open("ab"),  # the console stays the demo's
    )  # fmt: skip
    process = subprocess.Popen(
        # warnings and errors only: the UI shows every tick and run; the console stays quiet
        [*dagster_dev_command(dagster_home, UI_HOST, port), "--log-level", "warning"],
        cwd=dagster_home,
        start_new_session=True,
        preexec_fn=_default_signals,  # a background job's ignored SIGINT must not be inherited
        env=env,
    )
    try:
        return process.wait()
    finally:
        stop_process(process, timeout=30, leader_first=True)
        stop_process(exporter)


#: `dagster dev` suggests `dg dev`, which needs the dg project layout this project does not use
#: yet; the warning is about our deliberate choice, so the demo's console leaves it out.
_DEV_SUPERSEDED = "ignore:Function `dev_command` is superseded:FutureWarning"


def _quiet_warnings(current: str | None) -> str:
    return f"{current},{_DEV_SUPERSEDED}" if current else _DEV_SUPERSEDED


def _default_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _stop(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--once", action="store_true", help="exit after the first pass")
    parser.add_argument("--ui-port", type=int, default=UI_PORT, help="Dagster UI port")
    parser.add_argument("--s3-port", type=int, help="SeaweedFS S3 port (default 8333 if free)")
    args = parser.parse_args()
    # Both signals stop the demo, whatever its parent ignored (a background job ignores
    # SIGINT). Dagster maps SIGTERM onto the SIGINT handler it finds, so this also holds after
    # the in-process first pass, whose runs defer interrupts until they finish.
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    if mistakes := problems():  # before any server starts or any photo is uploaded
        for mistake in mistakes:
            print(f"configuration error: {mistake}", file=sys.stderr)
        return 2
    port = args.s3_port or (DEMO_S3_PORT if _port_free(DEMO_S3_PORT) else free_port())
    try:
        with seaweedfs(ROOT / "s3", port=port, **_keys()) as endpoint:
            configure(endpoint)
            uploaded = upload_samples()
            bucket = os.environ["AI_ASSETS_S3_BUCKET"]
            what = (
                f"uploaded {uploaded} sample photos into a new bucket {bucket!r}"
                if uploaded is not None
                else f"bucket {bucket!r} kept as you left it (make demo-clean starts over)"
            )
            print(f"S3 (SeaweedFS) at {endpoint}; {what}")
            with contextlib.ExitStack() as services:
                if not args.once:  # the model stays loaded: a new photo is a row in seconds
                    services.enter_context(start_model_service())
                if not run_once():
                    print("the first pass failed; see the logs above", file=sys.stderr)
                    return 1
                return 0 if args.once else serve_ui(args.ui_port)
    except SystemExit as stop:
        print("demo stopped; its servers are down", file=sys.stderr)
        return 0 if stop.code in (128 + signal.SIGINT, 128 + signal.SIGTERM) else 1


def _keys() -> dict[str, str]:
    return {
        "access_key": DEMO_KEYS["AWS_ACCESS_KEY_ID"],
        "secret_key": DEMO_KEYS["AWS_SECRET_ACCESS_KEY"],
    }


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


if __name__ == "__main__":
    sys.exit(main())

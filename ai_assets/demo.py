"""``make demo``: a local S3 server with sample photos, one end-to-end pass, then the Dagster UI.

``--once`` stops after printing the results table (non-interactive, exits 0 on success).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3

from ai_assets.localdev import free_port, seaweedfs, stop_process

ROOT = Path.cwd() / ".demo"
DEMO_KEYS = {
    "AWS_ACCESS_KEY_ID": "ai-assets-demo",
    "AWS_SECRET_ACCESS_KEY": "ai-assets-demo-secret",
}
DEMO_S3_PORT = 8333
UI_HOST, UI_PORT = "127.0.0.1", 3000


def configure(endpoint: str) -> None:
    """The environment of the configuration contract, pointing at the local services."""
    dagster_home = ROOT / "dagster_home"
    dagster_home.mkdir(parents=True, exist_ok=True)
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    os.environ.update(DEMO_KEYS)
    os.environ.update(
        {
            "DAGSTER_HOME": str(dagster_home),
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_REGION": "us-east-1",
            "AI_ASSETS_S3_BUCKET": os.environ.get("AI_ASSETS_S3_BUCKET", "images"),
            "HF_HUB_OFFLINE": "1",
        }
    )


def upload_samples() -> int:
    from ai_assets.samples import sample_jpegs

    client = boto3.client("s3")
    bucket = os.environ["AI_ASSETS_S3_BUCKET"]
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=bucket)
    prefix = os.environ.get("AI_ASSETS_S3_PREFIX", "")
    samples = sample_jpegs()
    for name, data in samples.items():
        client.put_object(Bucket=bucket, Key=f"{prefix}samples/{name}.jpg", Body=data)
    return len(samples)


def run_once() -> bool:
    """One sensor tick, the runs it requests, then label_summary (the daemon refreshes it later)."""
    import dagster as dg

    from ai_assets import table
    from ai_assets.inprocess import InProcessDaemon

    with dg.DagsterInstance.get() as instance:
        daemon = InProcessDaemon(instance)
        started = time.perf_counter()
        result, runs = daemon.tick()
        summary = dg.materialize(
            [daemon.defs.resolve_assets_def("label_summary")],
            instance=instance,
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )
        ok = all(run.success for run in runs) and summary.success
        elapsed = time.perf_counter() - started
        engine = daemon.defs.resources["results_db"].get_engine()  # type: ignore[attr-defined]
        rows = table.fetch_rows(engine)
    found = sum(e.metadata["new"].value for e in result.asset_events or [])  # type: ignore[misc]
    print(
        f"\n{found} new objects, {len(runs)} run(s), {elapsed:.1f} s; "
        f"results table {engine.url.render_as_string(hide_password=True)}\n"
    )
    print(f"{'s3_key':<40} {'label':<36} {'score':>6}  status")
    for row in rows:
        score = f"{row['score']:.3f}" if row["score"] is not None else ""
        print(f"{row['s3_key']:<40} {(row['label'] or '')[:36]:<36} {score:>6}  {row['status']}")
    return ok and bool(rows)


def serve_ui() -> int:
    """``dagster dev`` with the S3 sensor running, until Ctrl+C."""
    print(f"\nDagster UI: http://{UI_HOST}:{UI_PORT}  (Ctrl+C stops the UI and the S3 server)")
    print(
        f"Drop images into the bucket, e.g.:\n  AWS_ACCESS_KEY_ID={DEMO_KEYS['AWS_ACCESS_KEY_ID']} "
        f"AWS_SECRET_ACCESS_KEY={DEMO_KEYS['AWS_SECRET_ACCESS_KEY']} aws --endpoint-url "
        f"{os.environ['AWS_ENDPOINT_URL']} s3 cp photo.jpg s3://{os.environ['AI_ASSETS_S3_BUCKET']}/\n"
    )
    dagster = Path(sys.executable).with_name("dagster")
    process = subprocess.Popen(  # [tool.dagster] in pyproject.toml: the code location "ai_assets"
        [str(dagster), "dev", "-h", UI_HOST, "-p", str(UI_PORT)],
        cwd=Path.cwd(),
        start_new_session=True,
    )
    try:
        return process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop_process(process, timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--once", action="store_true", help="exit after the first pass")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    port = DEMO_S3_PORT if _port_free(DEMO_S3_PORT) else free_port()
    with seaweedfs(ROOT / "s3", port=port, **_keys()) as endpoint:
        configure(endpoint)
        print(f"S3 (SeaweedFS) at {endpoint}; uploaded {upload_samples()} sample photos")
        if not run_once():
            print("the first pass failed; see the logs above", file=sys.stderr)
            return 1
        return 0 if args.once else serve_ui()


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

"""The demo's upload → row latency: `make demo` as a user runs it, then 10 uploads with boto3.

Starts the real demo (``python -m ai_assets_dev.demo``: SeaweedFS, the first pass, then the
model service, ``dagster dev`` and the exporter) in a fresh directory, waits for the code
location and the sensor's first tick, then uploads one photo at a time, each after a random
pause (so uploads fall anywhere between two sensor ticks), and polls the results table until
its row is there. Each upload is split, from Dagster's run record of the run that wrote it:

* sensor: upload → the run created (waiting for the next tick, the tick itself);
* launch: created → started (the run queue, a new run process, loading the code location);
* run: started → the row committed (the classification itself, through the model service).

Ends with one line: RESULT p50_s=… p90_s=… sensor_p50_s=… launch_p50_s=… run_p50_s=…
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shlex
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import print_figures

ROOT = Path(__file__).resolve().parents[1]


def wait(what: str, probe, timeout: float = 300, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := probe():
            return found
        time.sleep(every)
    raise SystemExit(f"timed out waiting for {what}")


def env_file(path: Path) -> dict[str, str]:
    """The demo's .demo/env.sh as variables."""
    found = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            found[name] = shlex.split(value)[0] if value else ""
    return found


def sensor_ticked(url: str) -> bool:
    """Whether ``dagster dev``'s s3_image_sensor has finished a tick."""
    query = (
        '{ sensorsOrError(repositorySelector: {repositoryLocationName: "ai_assets", '
        'repositoryName: "__repository__"}) { ... on Sensors { results { name '
        "sensorState { ticks(limit: 1) { status } } } } } }"
    )
    body = json.dumps({"query": query}).encode()
    request = urllib.request.Request(f"{url}/graphql", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            sensors = json.load(response)["data"]["sensorsOrError"]["results"]
    except (OSError, KeyError, TypeError, ValueError):
        return False
    ticks = [s["sensorState"]["ticks"] for s in sensors if s["name"] == "s3_image_sensor"]
    return bool(ticks and ticks[0] and ticks[0][0]["status"] in ("SUCCESS", "SKIPPED"))


def row_of(database: str, key: str) -> str | None:
    """The run that wrote ``key``'s row, once the row is there."""
    with sqlite3.connect(database, timeout=30) as connection:
        found = connection.execute(
            "SELECT run_id FROM image_classifications WHERE s3_key = ?", (key,)
        ).fetchone()
    return found[0] if found else None


@contextlib.contextmanager
def running_demo(demo_dir: Path) -> Iterator[dict[str, str]]:
    """``python -m ai_assets_dev.demo`` on free ports, once its sensor ticks; yields the demo's
    environment (env.sh) and stops it, even on failure."""
    from ai_assets_dev.localdev import free_port, stop_process

    ui_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AI_ASSETS_", "DAGSTER_"))}
    env["AI_ASSETS_DEMO_DIR"] = str(demo_dir)
    demo = subprocess.Popen(
        [sys.executable, "-m", "ai_assets_dev.demo", "--ui-port", str(ui_port),
         "--s3-port", str(free_port())],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        started = time.monotonic()
        wait("the demo's UI", lambda: sensor_ticked(f"http://127.0.0.1:{ui_port}"), timeout=600)
        print(f"demo up, sensor ticking after {time.monotonic() - started:.0f} s", flush=True)
        yield env_file(demo_dir / "env.sh")
    finally:
        demo.send_signal(signal.SIGTERM)
        try:
            demo.wait(60)
        except subprocess.TimeoutExpired:
            stop_process(demo)


def upload_to_row(demo_env: dict[str, str], instance: Any, key: str, body: bytes) -> dict:
    """Upload one object; seconds until its row, split into the sensor's part (until its run
    was created), the launch's and the run's."""
    from ai_assets_dev.demo import s3_client

    database = demo_env["AI_ASSETS_DATABASE_URL"].removeprefix("sqlite:///")
    s3_client(demo_env).put_object(Bucket=demo_env["AI_ASSETS_S3_BUCKET"], Key=key, Body=body)
    uploaded = time.time()
    run_id = wait(key, lambda: row_of(database, key), every=0.05)
    total = time.time() - uploaded
    record = instance.get_run_record_by_id(run_id)
    assert record is not None and record.start_time
    created = record.create_timestamp.timestamp()
    return {
        "total": total,
        "sensor": created - uploaded,
        "launch": record.start_time - created,
        "run": uploaded + total - record.start_time,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--uploads", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    import dagster as dg

    from ai_assets_dev.samples import sample_jpegs

    photos = list(sample_jpegs().values())
    pick = random.Random(args.seed)
    times: dict[str, list[float]] = {"total": [], "sensor": [], "launch": [], "run": []}
    with (
        tempfile.TemporaryDirectory(prefix="ai-assets-latency-") as tmp,
        running_demo(Path(tmp) / "demo") as demo_env,
    ):
        os.environ["DAGSTER_HOME"] = demo_env["DAGSTER_HOME"]
        with dg.DagsterInstance.get() as instance:
            for i in range(args.uploads):
                time.sleep(pick.uniform(0, 15))
                split = upload_to_row(
                    demo_env, instance, f"latency/upload-{i}.jpg", photos[i % len(photos)]
                )
                for name, value in split.items():
                    times[name].append(value)
                print(f"upload {i}: " + "  ".join(f"{n} {v:4.1f} s" for n, v in split.items()),
                      flush=True)  # fmt: skip
    totals = times.pop("total")
    figures: dict[str, object] = {
        "uploads": len(totals),
        "p50_s": statistics.median(totals),
        "p90_s": statistics.quantiles(totals, n=10, method="inclusive")[-1],
        "max_s": max(totals),
    }
    for name, values in times.items():
        figures[f"{name}_p50_s"] = statistics.median(values)
    print_figures(figures, first=["p50_s", "p90_s"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

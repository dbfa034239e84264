"""JSON logs as the chart's ``logFormat: json`` sets them up: a run's stdout and the daemon's
output are one JSON object per line, with the run id, the step and the level."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ai_assets_dev.localdev import free_port, stop_process, wait_for_port
from ai_assets_tests.support.helm import ROOT, instance_config, render


def json_home(home: Path) -> Path:
    """A DAGSTER_HOME: the local instance plus the python_logs the chart renders for json."""
    python_logs = instance_config(render({"logFormat": "json"}))["python_logs"]
    instance = yaml.safe_load((ROOT / "dagster.yaml").read_text()) | {"python_logs": python_logs}
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance))
    return home


def environment(home: Path, model: str) -> dict[str, str]:
    return os.environ | {
        "DAGSTER_HOME": str(home),
        "AI_ASSETS_DATABASE_URL": f"sqlite:///{home / 'results.sqlite'}",
        "AI_ASSETS_MODEL": model,
        "AI_ASSETS_S3_BUCKET": "logs",  # the day is empty: no GET is made
        "AI_ASSETS_START_DATE": "2026-03-01",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "unused",
        "AWS_SECRET_ACCESS_KEY": "unused",
        "AWS_REGION": "us-east-1",
    }


def json_lines(text: str) -> list[dict]:
    """Every non-empty line as JSON (a line that is not fails the test)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_a_runs_stdout_is_json_lines_with_run_step_and_level(
    tmp_path: Path, tiny_model_dir: str
) -> None:
    home = json_home(tmp_path / "home")
    command = [sys.executable, "-m", "dagster", "asset", "materialize", "-m",
               "ai_assets.definitions", "--select", "image_classifications",
               "--partition", "2026-03-09"]  # fmt: skip
    done = subprocess.run(
        command,
        env=environment(home, tiny_model_dir),
        cwd=home,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = json_lines(done.stdout)
    meta = [line["dagster_meta"] for line in lines]
    [run_id] = {m["run_id"] for m in meta}
    assert run_id
    steps = [(line["levelname"], m["step_key"]) for line, m in zip(lines, meta, strict=True)]
    assert ("INFO", "image_classifications") in steps
    messages = [m["orig_message"] for m in meta if m["step_key"] == "image_classifications"]
    assert any("classifying the objects not current" in message for message in messages)
    # the run says what it did in a line, for the CLI as for the UI
    assert "0 objects in" in " ".join(messages)
    assert any(m.endswith("0 classified, 0 errors, 0 deleted") for m in messages), messages


def test_the_code_server_and_the_daemon_log_json_lines(tmp_path: Path, tiny_model_dir: str) -> None:
    """As the chart runs them: the code location's gRPC server, and the daemon loading it."""
    home = json_home(tmp_path / "home")
    env = environment(home, tiny_model_dir) | {"PYTHONWARNINGS": "ignore"}
    port = free_port()
    workspace = {"load_from": [{"grpc_server": {
        "host": "127.0.0.1", "port": port, "location_name": "ai_assets"}}]}  # fmt: skip
    (home / "workspace.yaml").write_text(yaml.safe_dump(workspace))
    code = [sys.executable, "-m", "dagster", "api", "grpc", "-m", "ai_assets.definitions",
            "-h", "127.0.0.1", "-p", str(port), "--log-format", "json"]  # fmt: skip
    daemon = [sys.executable, "-m", "dagster._daemon", "run", "-w", "workspace.yaml",
              "--log-format", "json"]  # fmt: skip
    outputs = {}
    with contextlib.ExitStack() as stack:
        for name, command in (("code", code), ("daemon", daemon)):
            log = stack.enter_context(open(tmp_path / f"{name}.log", "w"))
            process = subprocess.Popen(
                command, env=env, cwd=home, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            stack.callback(stop_process, process, 30)
            if name == "code":
                wait_for_port(port, timeout=120, process=process)
        deadline = time.monotonic() + 120
        while not _sensor_ticked_yet(tmp_path / "daemon.log") and time.monotonic() < deadline:
            time.sleep(0.5)  # the daemons start and load the code location
    for name in ("code", "daemon"):
        outputs[name] = json_lines((tmp_path / f"{name}.log").read_text())
        assert all(
            {"level", "event", "logger", "timestamp"} <= line.keys() for line in outputs[name]
        )
    assert any("Started Dagster code server" in line["event"] for line in outputs["code"])
    daemons = [line["event"] for line in outputs["daemon"] if line["logger"] == "dagster.daemon"]
    assert any("SensorDaemon" in event for event in daemons), daemons
    assert any(_sensor_ticked(line) for line in outputs["daemon"]), outputs["daemon"]


def _sensor_ticked(line: dict) -> bool:
    """A sensor tick: the daemon has loaded the code location from its gRPC server."""
    return line.get("logger") == "dagster.daemon.SensorDaemon" and "for sensor:" in line["event"]


def _sensor_ticked_yet(log: Path) -> bool:
    """Whether a whole line of the daemon's log is a sensor tick yet (all lines checked after)."""
    for line in log.read_text().splitlines(keepends=True):
        if line.endswith("\n") and "SensorDaemon" in line:
            with contextlib.suppress(ValueError):
                if _sensor_ticked(json.loads(line)):
                    return True
    return False

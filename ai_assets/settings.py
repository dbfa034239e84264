"""The configuration contract: every environment variable the package reads, declared once.

``CONTRACT`` names each variable with its default and meaning; the README's Configuration
table and the Helm chart's ConfigMap are checked against it, and so is every name the package's
source mentions (ai_assets_tests/defs/test_definitions.py). The defaults live here too.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
from pathlib import Path

DEFAULT_BUCKET = "images"
DEFAULT_WEBSERVER_URL = "http://localhost:3000"
#: First daily partition; older objects belong to it (AI_ASSETS_START_DATE).
DEFAULT_START_DATE = "2020-01-01"
#: Objects per sensor run (AI_ASSETS_MAX_OBJECTS_PER_RUN). Every run process spends ~8 s of CPU
#: whatever its size (Python, Dagster, the code location, torch's and transformers' imports,
#: the model): 19 % of a 2,000-object run of the bundled model on 2 cores, 9 % at 5,000
#: (bench/run_size.py). 5,000 still spreads a backlog of 50,000 over the chart's 10 concurrent
#: runs, and a retried run goes on where it stopped.
DEFAULT_MAX_OBJECTS_PER_RUN = 5_000
#: Listing budget of one sensor tick; the diff and upsert of the slice come on top
#: (bench/sensor_scale.py measures both; AI_ASSETS_LIST_SECONDS_PER_TICK).
DEFAULT_LIST_SECONDS_PER_TICK = 10.0
#: Least seconds between sensor ticks: a new object waits half of it on average (the demo
#: sets 1, so it ticks on every pass of the daemon's 5 s loop; AI_ASSETS_SENSOR_INTERVAL_SECONDS).
DEFAULT_SENSOR_INTERVAL_SECONDS = 15
#: With an SQS queue: minutes between the starts of complete listing passes (reconciliation).
#: A pass costs one LIST request per 1,000 objects (10M objects: 10,000 requests, ~18 min of
#: listing at the measured ~9,000 objects/s); an hour bounds the delay of a lost notification.
DEFAULT_RECONCILE_MINUTES = 60.0
#: Larger objects / images become error rows (AI_ASSETS_MAX_IMAGE_BYTES / _PIXELS).
DEFAULT_MAX_IMAGE_BYTES = 50 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 90_000_000


def available_cores() -> int:
    """The cores this process may keep busy: those it may run on (its affinity: a Kubernetes
    pod's node's, unless the CPU manager pins it), at most its cgroup's CPU quota rounded up (a
    pod's CPU limit), which ``os.cpu_count()`` and torch's default threads ignore."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 2
    limit = cgroup_cpu_limit()
    return max(1, min(cores, math.ceil(limit))) if limit else cores


@dataclasses.dataclass(frozen=True)
class CpuCgroup:
    """Where this process's CPU quota is read: its cgroup's folder, under the mount (``top``)
    that shows its hierarchy; v2 (``cpu.max``) or v1 (``cpu.cfs_quota_us``)."""

    top: Path
    folder: Path
    v2: bool

    def quotas(self) -> list[float]:
        """The quotas, in CPUs, set on the folder and on its ancestors up to the mount."""
        found = []
        for folder in (
            self.folder,
            *[p for p in self.folder.parents if p.is_relative_to(self.top)],
        ):
            try:
                if self.v2:
                    quota, period = (folder / "cpu.max").read_text().split()[:2]
                else:
                    quota = (folder / "cpu.cfs_quota_us").read_text().strip()
                    period = (folder / "cpu.cfs_period_us").read_text().strip()
            except (OSError, ValueError):
                continue
            if quota not in ("max", "-1") and int(period) > 0:
                found.append(int(quota) / int(period))
        return found


def cpu_cgroups(proc: Path = Path("/proc/self"), root: Path = Path("/")) -> list[CpuCgroup]:
    """This process's cgroups that can hold a CPU quota, as runc and containerd mount them, with
    or without a cgroup namespace: ``proc``/cgroup's path under the mount ``proc``/mountinfo
    lists for its hierarchy (a container sees its own cgroup as that mount's root)."""
    try:
        mounts = (proc / "mountinfo").read_text().splitlines()
        groups = [line.split(":", 2) for line in (proc / "cgroup").read_text().splitlines()]
    except OSError:
        return []
    found = []
    for fields in (line.split() for line in mounts):
        if "-" not in fields:
            continue
        mount_root, mount_point = fields[3], fields[4]
        kind, options = fields[fields.index("-") + 1], fields[-1].split(",")
        v2 = kind == "cgroup2"
        if not v2 and (kind != "cgroup" or "cpu" not in options):
            continue
        for group in groups:
            if len(group) == 3 and (group[1] == "" if v2 else "cpu" in group[1].split(",")):
                path = group[2]
                inside = path[len(mount_root) :] if path.startswith(mount_root) else ""
                top = root / mount_point.lstrip("/")
                found.append(CpuCgroup(top, top / inside.strip("/"), v2))
    return found


def cgroup_cpu_limit(proc: Path = Path("/proc/self"), root: Path = Path("/")) -> float | None:
    """The CPUs per period this process's cgroups allow at most; None without a quota."""
    return min((q for group in cpu_cgroups(proc, root) for q in group.quotas()), default=None)


#: Fetch/decode threads per run: one per core plus one, at most 16. Decoding and preprocessing
#: keep them busy, so more threads than cores only contend (bench/throughput.py); raise it
#: where S3 is far away (no more of them decode at once: DEFAULT_DECODE_CONCURRENCY).
DEFAULT_DOWNLOAD_CONCURRENCY = 1 + min(15, available_cores())
#: Of those, the threads that decode and preprocess at once (the others fetch or wait): they
#: share one GIL, and on an H200 machine's 16 cores the run's loop did 2,308 images/s with 4
#: threads in all, 2,229 with 8 and 1,547 with 16 (docs/scaling.md). No limit on 2-3 threads.
DEFAULT_DECODE_CONCURRENCY = min(DEFAULT_DOWNLOAD_CONCURRENCY, 4)
#: Worker processes that decode instead of the fetch threads (AI_ASSETS_DECODE_PROCESSES); 0 =
#: the threads; None (unset) = chosen when the model loads, from its device and the cores
#: (``vision.model.choose_decode_processes``): none on the CPU, where they cost more CPU than
#: the threads (1.41-1.87 against 1.19-1.49 ms per image on 2 cores, bench/feed.py).
DEFAULT_DECODE_PROCESSES: int | None = None
#: Images per model batch, in runs and in the model service (AI_ASSETS_BATCH_SIZE).
DEFAULT_BATCH_SIZE = 32
#: Labels kept per image (AI_ASSETS_TOP_K).
DEFAULT_TOP_K = 5
#: Model precision (AI_ASSETS_PRECISION): fp32, or bf16 / fp16 where the device has them.
DEFAULT_PRECISION = "fp32"
#: The model service waits at most this long for a batch to fill (AI_ASSETS_BATCH_WAIT_MS).
DEFAULT_BATCH_WAIT_MS = 5.0
#: Images the model service lets wait; beyond, 503 + Retry-After (AI_ASSETS_QUEUE_LIMIT).
DEFAULT_QUEUE_LIMIT = 512
#: Requests a run keeps in flight to the model service (AI_ASSETS_INFERENCE_CONCURRENCY).
DEFAULT_INFERENCE_CONCURRENCY = 4
#: Minutes between Slack digests of successful runs; 0 = one message per run.
DEFAULT_SLACK_DIGEST_MINUTES = 15
DEFAULT_SLACK_API_URL = "https://slack.com/api/"
#: An object waiting longer than this for its result makes the freshness check warn.
DEFAULT_MAX_WAIT_MINUTES = 60.0


@dataclasses.dataclass(frozen=True)
class Variable:
    """One environment variable of the contract; ``reader`` is who reads it, if not us."""

    name: str
    default: str
    meaning: str
    reader: str = "ai_assets"


CONTRACT: tuple[Variable, ...] = (
    Variable("AI_ASSETS_S3_BUCKET", DEFAULT_BUCKET, "bucket holding the images"),
    Variable("AI_ASSETS_S3_PREFIX", "", "key prefix to watch"),
    Variable("AWS_ENDPOINT_URL", "AWS", "S3-compatible endpoint"),
    Variable("AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL", "SQS endpoint, when it differs"),
    Variable("AWS_ACCESS_KEY_ID", "boto3's chain", "AWS credentials", reader="boto3"),
    Variable("AWS_SECRET_ACCESS_KEY", "boto3's chain", "AWS credentials", reader="boto3"),
    Variable("AWS_REGION", "boto3's", "AWS region"),
    Variable("AWS_MAX_ATTEMPTS", "5", "botocore attempts per call"),
    Variable("AWS_RETRY_MODE", "standard", "botocore retry mode"),
    Variable("AWS_CA_BUNDLE", "system roots", "CA bundle for a private S3 endpoint"),
    Variable("AI_ASSETS_DATABASE_URL", "SQLite under DAGSTER_HOME", "the project's database"),
    Variable("DAGSTER_HOME", "./.dagster_home", "Dagster's instance; the embedded database"),
    Variable("AI_ASSETS_START_DATE", DEFAULT_START_DATE, "first daily partition"),
    Variable("AI_ASSETS_MAX_OBJECTS_PER_RUN", str(DEFAULT_MAX_OBJECTS_PER_RUN), "batch size"),
    Variable("AI_ASSETS_LIST_SECONDS_PER_TICK", str(DEFAULT_LIST_SECONDS_PER_TICK), "tick budget"),
    Variable(
        "AI_ASSETS_SENSOR_INTERVAL_SECONDS", str(DEFAULT_SENSOR_INTERVAL_SECONDS), "between ticks"
    ),
    Variable("AI_ASSETS_SQS_QUEUE_URL", "", "S3 event-notification queue"),
    Variable(
        "AI_ASSETS_RECONCILE_MINUTES", str(DEFAULT_RECONCILE_MINUTES), "minutes between passes"
    ),
    Variable("AI_ASSETS_MODEL", "bundled EfficientNet-Lite0", "hub id or local model dir"),
    Variable("AI_ASSETS_CACHE_DIR", ".cache in the checkout", "where the bundled model converts"),
    Variable("AI_ASSETS_BATCH_SIZE", str(DEFAULT_BATCH_SIZE), "images per model batch"),
    Variable("AI_ASSETS_TOP_K", str(DEFAULT_TOP_K), "labels kept per image"),
    Variable("AI_ASSETS_DOWNLOAD_CONCURRENCY", "cores + 1", "fetch/decode threads per run"),
    Variable("AI_ASSETS_PRECISION", DEFAULT_PRECISION, "fp32, bf16 or fp16"),
    Variable("AI_ASSETS_GPU_JPEG_DECODE", "false", "JPEGs decoded by nvJPEG on CUDA"),
    Variable(
        "AI_ASSETS_DECODE_PROCESSES", "cores - 2 on a GPU with 8+, else 0", "decoding processes"
    ),
    Variable("AI_ASSETS_INFERENCE_URL", "", "model service for runs"),
    Variable(
        "AI_ASSETS_INFERENCE_CONCURRENCY", str(DEFAULT_INFERENCE_CONCURRENCY), "requests in flight"
    ),
    Variable("AI_ASSETS_BATCH_WAIT_MS", str(DEFAULT_BATCH_WAIT_MS), "service batch wait"),
    Variable("AI_ASSETS_QUEUE_LIMIT", str(DEFAULT_QUEUE_LIMIT), "service queue bound"),
    Variable("AI_ASSETS_MAX_IMAGE_BYTES", str(DEFAULT_MAX_IMAGE_BYTES), "object size limit"),
    Variable("AI_ASSETS_MAX_IMAGE_PIXELS", str(DEFAULT_MAX_IMAGE_PIXELS), "image size limit"),
    Variable("AI_ASSETS_RUN_CPU_REQUEST", "", "classification run pod: CPU request"),
    Variable("AI_ASSETS_RUN_MEMORY_REQUEST", "", "classification run pod: memory request"),
    Variable("AI_ASSETS_RUN_CPU_LIMIT", "", "classification run pod: CPU limit"),
    Variable("AI_ASSETS_RUN_MEMORY_LIMIT", "", "classification run pod: memory limit"),
    Variable("AI_ASSETS_RUN_GPUS", "", "classification run pod: GPUs"),
    Variable("AI_ASSETS_RUN_NODE_SELECTOR", "", "classification run pod: node selector (JSON)"),
    Variable("AI_ASSETS_RUN_TOLERATIONS", "", "classification run pod: tolerations (JSON)"),
    Variable("SLACK_BOT_TOKEN", "", "Slack bot token; unset = no Slack"),
    Variable("AI_ASSETS_SLACK_CHANNEL", "", "Slack channel"),
    Variable(
        "AI_ASSETS_SLACK_DIGEST_MINUTES", str(DEFAULT_SLACK_DIGEST_MINUTES), "digest interval"
    ),
    Variable("AI_ASSETS_SLACK_API_URL", DEFAULT_SLACK_API_URL, "Slack Web API base URL"),
    Variable("AI_ASSETS_WEBSERVER_URL", DEFAULT_WEBSERVER_URL, "Dagster UI base URL for links"),
    Variable(
        "AI_ASSETS_MAX_WAIT_MINUTES", str(DEFAULT_MAX_WAIT_MINUTES), "longest wait before a WARN"
    ),
)
DECLARED = frozenset(variable.name for variable in CONTRACT)


def declared(name: str) -> str:
    """``name``, after checking that the contract declares it."""
    if name not in DECLARED:
        raise KeyError(f"{name} is not in the configuration contract (ai_assets.settings)")
    return name


def _number(name: str, default: float, kind: type[int] | type[float], minimum: float) -> float:
    """A numeric variable read now (sensors read theirs each tick); a bad value says which."""
    raw = os.environ.get(declared(name), "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ValueError(f"{name} must be {what}, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {raw!r}")
    return value


def start_date() -> dt.date:
    raw = os.environ.get("AI_ASSETS_START_DATE", "").strip() or DEFAULT_START_DATE
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise ValueError(
            f"AI_ASSETS_START_DATE must be an ISO date (YYYY-MM-DD), got {raw!r}"
        ) from None


def max_objects_per_run() -> int:
    return int(_number("AI_ASSETS_MAX_OBJECTS_PER_RUN", DEFAULT_MAX_OBJECTS_PER_RUN, int, 1))


#: How to reach the bucket, named once for every message about a missing setting.
S3_SETUP_HINT = (
    "set AI_ASSETS_S3_BUCKET, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile or an "
    "IAM role) and, for an S3-compatible server, AWS_ENDPOINT_URL; for the demo's local "
    "server: `make demo-once`, then `source .demo/env.sh` before `dagster dev`"
)


def s3_setup_problem(has_credentials: bool, endpoint_url: str | None) -> str | None:
    """Why the bucket cannot be read as configured, with the fix; None when it can be tried.

    The default bucket name is for S3-compatible servers: on AWS itself it would be someone
    else's bucket, so there the name must be set.
    """
    if not has_credentials:
        return f"no S3 credentials found: {S3_SETUP_HINT}"
    if not os.environ.get("AI_ASSETS_S3_BUCKET", "").strip() and not endpoint_url:
        return (
            f"AI_ASSETS_S3_BUCKET is not set, and the default {DEFAULT_BUCKET!r} would be looked "
            f"up on AWS itself: {S3_SETUP_HINT}"
        )
    return None


def list_seconds_per_tick() -> float:
    return _number("AI_ASSETS_LIST_SECONDS_PER_TICK", DEFAULT_LIST_SECONDS_PER_TICK, float, 0.1)


def sensor_interval_seconds() -> int:
    """The least time between two ticks of s3_image_sensor (the daemon looks every 5 s)."""
    return int(
        _number("AI_ASSETS_SENSOR_INTERVAL_SECONDS", DEFAULT_SENSOR_INTERVAL_SECONDS, int, 1)
    )


def reconcile_minutes() -> float:
    return _number("AI_ASSETS_RECONCILE_MINUTES", DEFAULT_RECONCILE_MINUTES, float, 0)


def gpu_jpeg_decode() -> bool:
    """Whether runs decode plain JPEGs on the GPU with nvJPEG (``AI_ASSETS_GPU_JPEG_DECODE``)."""
    raw = os.environ.get(declared("AI_ASSETS_GPU_JPEG_DECODE"), "").strip()
    if raw.lower() not in ("", "0", "1", "false", "true", "no", "yes"):
        raise ValueError(f"AI_ASSETS_GPU_JPEG_DECODE must be true or false, got {raw!r}")
    return raw.lower() in ("1", "true", "yes")


def decode_processes() -> int | None:
    """Worker processes that decode for a run (``AI_ASSETS_DECODE_PROCESSES``); 0 = threads,
    None (unset) = chosen for the model's device when it loads."""
    if not os.environ.get(declared("AI_ASSETS_DECODE_PROCESSES"), "").strip():
        return DEFAULT_DECODE_PROCESSES
    return int(_number("AI_ASSETS_DECODE_PROCESSES", 0, int, 0))


def default_fetch_threads(processes: int) -> int:
    """A run's fetch threads unless AI_ASSETS_DOWNLOAD_CONCURRENCY says: with decode processes,
    two per worker. A thread waits only for its GET there (a hand-over is a pipe write), so the
    threads bound the GETs in flight: at most threads / GET latency objects per second."""
    return max(DEFAULT_DOWNLOAD_CONCURRENCY, 2 * processes)


def max_wait_minutes() -> float:
    return _number("AI_ASSETS_MAX_WAIT_MINUTES", DEFAULT_MAX_WAIT_MINUTES, float, 0)


def slack_digest_minutes() -> float:
    return _number("AI_ASSETS_SLACK_DIGEST_MINUTES", DEFAULT_SLACK_DIGEST_MINUTES, float, 0)


#: Whole numbers the runs read at run time (``dg.EnvVar.int``): checked up front by ``problems``.
_RUN_INTEGERS = (
    "AI_ASSETS_BATCH_SIZE", "AI_ASSETS_TOP_K", "AI_ASSETS_MAX_IMAGE_BYTES",
    "AI_ASSETS_MAX_IMAGE_PIXELS", "AI_ASSETS_DOWNLOAD_CONCURRENCY",
    "AI_ASSETS_INFERENCE_CONCURRENCY", "AWS_MAX_ATTEMPTS",
)  # fmt: skip


def problems() -> list[str]:
    """Every set variable whose value cannot work, one message each: what to check before
    anything starts (the demo does; a sensor or run would otherwise fail later, buried)."""
    checks = [start_date, max_objects_per_run, list_seconds_per_tick, sensor_interval_seconds,
              reconcile_minutes, slack_digest_minutes, max_wait_minutes,
              service_settings, gpu_jpeg_decode, decode_processes]  # fmt: skip
    checks += [lambda name=name: _number(name, 1, int, 1) for name in _RUN_INTEGERS]
    found = []
    for check in checks:
        try:
            check()
        except ValueError as exc:
            if str(exc) not in found:
                found.append(str(exc))
    return found


def database_kind() -> str:
    """The Dagster kind of the configured database, for the assets that live in it."""
    url = os.environ.get("AI_ASSETS_DATABASE_URL", "")
    return "postgres" if url.startswith("postgresql") else "sqlite"


def dagster_home() -> Path:
    return Path(os.environ.get("DAGSTER_HOME") or Path.cwd() / ".dagster_home")


def database_url() -> str:
    """``AI_ASSETS_DATABASE_URL``, else the embedded default."""
    return os.environ.get("AI_ASSETS_DATABASE_URL", "").strip() or default_database_url()


def default_database_url() -> str:
    """The embedded default: a SQLite file under ``DAGSTER_HOME``."""
    return f"sqlite:///{dagster_home() / 'ai_assets.sqlite'}"


@dataclasses.dataclass(frozen=True)
class ServiceSettings:
    """What ``uvicorn ai_assets.model_service:app`` reads from the configuration contract."""

    model: str = ""  # empty: the bundled EfficientNet-Lite0
    precision: str = DEFAULT_PRECISION
    batch_size: int = DEFAULT_BATCH_SIZE
    top_k: int = DEFAULT_TOP_K
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS
    queue_limit: int = DEFAULT_QUEUE_LIMIT
    decode_processes: int | None = DEFAULT_DECODE_PROCESSES


def service_settings() -> ServiceSettings:
    """The model service's settings, read from the environment now."""
    base = ServiceSettings()
    return ServiceSettings(
        model=os.environ.get("AI_ASSETS_MODEL", "").strip(),
        precision=os.environ.get("AI_ASSETS_PRECISION", "").strip() or base.precision,
        batch_size=int(_number("AI_ASSETS_BATCH_SIZE", base.batch_size, int, 1)),
        top_k=int(_number("AI_ASSETS_TOP_K", base.top_k, int, 1)),
        max_image_bytes=int(_number("AI_ASSETS_MAX_IMAGE_BYTES", base.max_image_bytes, int, 1)),
        max_image_pixels=int(_number("AI_ASSETS_MAX_IMAGE_PIXELS", base.max_image_pixels, int, 1)),
        batch_wait_ms=_number("AI_ASSETS_BATCH_WAIT_MS", base.batch_wait_ms, float, 0),
        queue_limit=int(_number("AI_ASSETS_QUEUE_LIMIT", base.queue_limit, int, 1)),
        decode_processes=decode_processes(),
    )

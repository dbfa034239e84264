"""The configuration contract of the README: environment variables and their embedded defaults."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the model service reads its settings here without importing Dagster
    import dagster as dg

DEFAULT_BUCKET = "images"
DEFAULT_WEBSERVER_URL = "http://localhost:3000"
#: First daily partition; older objects belong to it (AI_ASSETS_START_DATE).
DEFAULT_START_DATE = "2020-01-01"
#: Objects per sensor run: ~20 s of inference on 2 CPU cores, so Dagster's fixed cost per run
#: stays a few percent (bench/throughput.py measures it; AI_ASSETS_MAX_OBJECTS_PER_RUN).
DEFAULT_MAX_OBJECTS_PER_RUN = 2_000
#: Listing budget of one sensor tick; the diff and upsert of the slice come on top
#: (bench/sensor_scale.py measures both; AI_ASSETS_LIST_SECONDS_PER_TICK).
DEFAULT_LIST_SECONDS_PER_TICK = 10.0
#: With an SQS queue: minutes between the starts of complete listing passes (reconciliation).
#: A pass costs one LIST request per 1,000 objects (10M objects: 10,000 requests, ~18 min of
#: listing at the measured ~9,000 objects/s); an hour bounds the delay of a lost notification.
DEFAULT_RECONCILE_MINUTES = 60.0
#: Larger objects / images become error rows (AI_ASSETS_MAX_IMAGE_BYTES / _PIXELS).
DEFAULT_MAX_IMAGE_BYTES = 50 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 90_000_000
#: Fetch/decode threads per run: one per core plus one, at most 16. Each S3 GET costs ~1.2 ms
#: of Python under the GIL, so more threads than cores only contend (bench/throughput.py);
#: raise it where S3 is far away.
DEFAULT_DOWNLOAD_CONCURRENCY = 1 + min(
    15, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
)
#: Images per model batch, in runs and in the model service (AI_ASSETS_BATCH_SIZE).
DEFAULT_BATCH_SIZE = 32
#: Labels kept per image (AI_ASSETS_TOP_K).
DEFAULT_TOP_K = 5
#: The model service waits at most this long for a batch to fill (AI_ASSETS_BATCH_WAIT_MS).
DEFAULT_BATCH_WAIT_MS = 5.0
#: Images the model service lets wait; beyond, 503 + Retry-After (AI_ASSETS_QUEUE_LIMIT).
DEFAULT_QUEUE_LIMIT = 512
#: Requests a run keeps in flight to the model service (AI_ASSETS_INFERENCE_CONCURRENCY).
DEFAULT_INFERENCE_CONCURRENCY = 4
#: Minutes between Slack digests of successful runs; 0 = one message per run.
DEFAULT_SLACK_DIGEST_MINUTES = 15


def setting(name: str, default: str) -> str | dg.EnvVar:
    """``dg.EnvVar(name)`` when the variable is set (resolved at run time), else the default."""
    import dagster as dg

    return dg.EnvVar(name) if os.environ.get(name) else default


def int_setting(name: str, default: int) -> int | dg.EnvVar:
    import dagster as dg

    return dg.EnvVar.int(name) if os.environ.get(name) else default


def _number(name: str, default: float, kind: type[int] | type[float], minimum: float) -> float:
    """A numeric variable read now (sensors read theirs each tick); a bad value says which."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{name} must be a {kind.__name__}, got {raw!r}") from None
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


def list_seconds_per_tick() -> float:
    return _number("AI_ASSETS_LIST_SECONDS_PER_TICK", DEFAULT_LIST_SECONDS_PER_TICK, float, 0.1)


def reconcile_minutes() -> float:
    return _number("AI_ASSETS_RECONCILE_MINUTES", DEFAULT_RECONCILE_MINUTES, float, 0)


def slack_digest_minutes() -> float:
    return _number("AI_ASSETS_SLACK_DIGEST_MINUTES", DEFAULT_SLACK_DIGEST_MINUTES, float, 0)


def database_kind() -> str:
    """The Dagster kind of the configured database, for the assets that live in it."""
    url = os.environ.get("AI_ASSETS_DATABASE_URL", "")
    return "postgres" if url.startswith("postgresql") else "sqlite"


def dagster_home() -> Path:
    return Path(os.environ.get("DAGSTER_HOME") or Path.cwd() / ".dagster_home")


def default_database_url() -> str:
    """The embedded default: a SQLite file under ``DAGSTER_HOME``."""
    return f"sqlite:///{dagster_home() / 'ai_assets.sqlite'}"


@dataclasses.dataclass(frozen=True)
class ServiceSettings:
    """What ``uvicorn ai_assets.model_service:app`` reads from the configuration contract."""

    model: str = ""  # empty: the bundled EfficientNet-Lite0
    precision: str = "fp32"
    batch_size: int = DEFAULT_BATCH_SIZE
    top_k: int = DEFAULT_TOP_K
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS
    queue_limit: int = DEFAULT_QUEUE_LIMIT


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
    )

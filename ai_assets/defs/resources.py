"""The resources of the code location, each setting from the configuration contract."""

import os
from typing import Any, TypeVar

import dagster as dg

from ai_assets.resources import (
    ClassifierResource,
    ImageBucketResource,
    ResultsDatabaseResource,
    SlackNotifierResource,
)
from ai_assets.settings import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_BUCKET,
    DEFAULT_DECODE_PROCESSES,
    DEFAULT_INFERENCE_CONCURRENCY,
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_PRECISION,
    DEFAULT_SLACK_API_URL,
    DEFAULT_TOP_K,
    DEFAULT_WEBSERVER_URL,
    declared,
    default_database_url,
    gpu_jpeg_decode,
)

_Default = TypeVar("_Default", bound=int | None)


def setting(name: str, default: str) -> str | dg.EnvVar:
    """``dg.EnvVar(name)`` when the variable is set (resolved at run time), else the default."""
    return dg.EnvVar(name) if os.environ.get(declared(name)) else default


def int_setting(name: str, default: _Default) -> int | _Default:
    """``dg.EnvVar.int(name)`` (an int, resolved at run time) when set, else the default."""
    return dg.EnvVar.int(name) if os.environ.get(declared(name)) else default


def build_resources() -> dict[str, dg.ConfigurableResource]:
    """Set variables become ``dg.EnvVar``s (resolved at run time); unset ones take defaults."""
    optional: dict[str, Any] = {  # ImageBucketResource's fields of dagster-aws, None when unset
        name: dg.EnvVar(var)
        for name, var in {
            "endpoint_url": "AWS_ENDPOINT_URL",
            "region_name": "AWS_REGION",
        }.items()
        if os.environ.get(var)
    }
    return {
        "s3": ImageBucketResource(
            bucket=setting("AI_ASSETS_S3_BUCKET", DEFAULT_BUCKET),
            prefix=setting("AI_ASSETS_S3_PREFIX", ""),
            max_attempts=int_setting("AWS_MAX_ATTEMPTS", 5),
            retry_mode=setting("AWS_RETRY_MODE", "standard"),
            queue_url=setting("AI_ASSETS_SQS_QUEUE_URL", ""),
            **optional,
        ),
        "classifier": ClassifierResource(
            model=setting("AI_ASSETS_MODEL", ""),
            batch_size=int_setting("AI_ASSETS_BATCH_SIZE", DEFAULT_BATCH_SIZE),
            top_k=int_setting("AI_ASSETS_TOP_K", DEFAULT_TOP_K),
            max_image_bytes=int_setting("AI_ASSETS_MAX_IMAGE_BYTES", DEFAULT_MAX_IMAGE_BYTES),
            max_image_pixels=int_setting("AI_ASSETS_MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS),
            download_concurrency=int_setting("AI_ASSETS_DOWNLOAD_CONCURRENCY", 0),
            precision=setting("AI_ASSETS_PRECISION", DEFAULT_PRECISION),
            gpu_jpeg_decode=gpu_jpeg_decode(),  # read now: Dagster has no boolean EnvVar
            decode_processes=int_setting("AI_ASSETS_DECODE_PROCESSES", DEFAULT_DECODE_PROCESSES),
            inference_url=setting("AI_ASSETS_INFERENCE_URL", ""),
            inference_concurrency=int_setting(
                "AI_ASSETS_INFERENCE_CONCURRENCY", DEFAULT_INFERENCE_CONCURRENCY
            ),
        ),
        "results_db": ResultsDatabaseResource(
            url=setting("AI_ASSETS_DATABASE_URL", default_database_url())
        ),
        "slack": SlackNotifierResource(
            token=setting("SLACK_BOT_TOKEN", ""),
            channel=setting("AI_ASSETS_SLACK_CHANNEL", ""),
            base_url=setting("AI_ASSETS_SLACK_API_URL", DEFAULT_SLACK_API_URL),
            webserver_url=setting("AI_ASSETS_WEBSERVER_URL", DEFAULT_WEBSERVER_URL),
        ),
    }


@dg.definitions
def resources() -> dg.Definitions:
    """Built when the code location loads, so the environment of that moment configures it."""
    return dg.Definitions(resources=build_resources())

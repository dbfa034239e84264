"""The benches' S3: a SeaweedFS on loopback, which this process and the processes it starts use."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ACCESS, SECRET = "bench", "bench-secret"


@contextlib.contextmanager
def local_s3(
    directory: Path, bucket: str, objects: Mapping[str, bytes] | None = None
) -> Iterator[str]:
    """A SeaweedFS holding ``bucket`` and ``objects``; yields its endpoint.

    This process's settings point at it, the whole bucket watched (``os.environ``: the AWS
    endpoint, keys and region, ``AI_ASSETS_S3_BUCKET``, an empty ``AI_ASSETS_S3_PREFIX``), so
    the runs and run processes a bench starts read from it as they would from S3.
    """
    import boto3

    from ai_assets_dev.localdev import seaweedfs

    with seaweedfs(directory, ACCESS, SECRET) as endpoint:
        os.environ.update(
            {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": ACCESS,
             "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": "us-east-1",
             "AI_ASSETS_S3_BUCKET": bucket, "AI_ASSETS_S3_PREFIX": ""}
        )  # fmt: skip
        client = boto3.client("s3")
        client.create_bucket(Bucket=bucket)
        contents = dict(objects or {})
        with ThreadPoolExecutor(16) as pool:
            list(
                pool.map(
                    lambda k: client.put_object(Bucket=bucket, Key=k, Body=contents[k]), contents
                )
            )
        yield endpoint

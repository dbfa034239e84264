from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from dagster_aws.s3 import S3Resource
from pydantic import Field

from ai_assets.store import S3Object, Slice, list_objects, list_slice, parse_timestamp


@functools.lru_cache(maxsize=8)
def _client(
    profile_name: str | None,
    region_name: str | None,
    endpoint_url: str | None,
    use_ssl: bool,
    verify: bool | None,
    access_key_id: str | None,
    secret_access_key: str | None,
    session_token: str | None,
    max_attempts: int,
    retry_mode: str,
    max_pool_connections: int,
) -> Any:
    core = botocore.session.get_session()
    core.get_component("response_parser_factory").set_parser_defaults(
        timestamp_parser=parse_timestamp
    )
    session = boto3.session.Session(profile_name=profile_name, botocore_session=core)
    return session.client(
        "s3",
        region_name=region_name,
        endpoint_url=endpoint_url,
        use_ssl=use_ssl,
        verify=verify,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        aws_session_token=session_token,
        config=Config(
            retries={"total_max_attempts": max_attempts, "mode": retry_mode},
            max_pool_connections=max_pool_connections,
            # S3-compatible stores need not send checksums; ETags identify versions here
            response_checksum_validation="when_required",
            request_checksum_calculation="when_required",
        ),
    )


class ImageBucket(S3Resource):
    """dagster-aws's S3 resource plus the bucket and prefix that hold the images."""

    bucket: str = Field(description="Bucket holding the images (AI_ASSETS_S3_BUCKET).")
    prefix: str = Field(default="", description="Key prefix to watch (AI_ASSETS_S3_PREFIX).")
    retry_mode: str = Field(
        default="standard", description="botocore retry mode: standard or adaptive."
    )
    max_pool_connections: int = Field(
        default=32, description="HTTP connections per client; bounds concurrent GETs."
    )

    def get_client(self) -> Any:
        """A thread-safe S3 client with botocore's own retries and a pool sized for fan-out.

        Clients are cached per process and configuration: creating one costs ~0.6 s.
        """
        return _client(
            self.profile_name,
            self.region_name,
            self.endpoint_url,
            self.use_ssl,
            self.verify,
            self.aws_access_key_id,
            self.aws_secret_access_key,
            self.aws_session_token,
            self.max_attempts,
            self.retry_mode,
            self.max_pool_connections,
        )

    def s3_uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def list_objects(self) -> Iterator[S3Object]:
        return list_objects(self.get_client(), self.bucket, self.prefix)

    def list_slice(self, after: str, *, max_objects: int, seconds: float, page_size: int) -> Slice:
        """The next bounded stretch of the prefix's listing, after key ``after``."""
        return list_slice(
            self.get_client(),
            self.bucket,
            self.prefix,
            after,
            max_objects=max_objects,
            seconds=seconds,
            page_size=page_size,
        )

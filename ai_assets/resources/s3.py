from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
from botocore.config import Config
from dagster_aws.s3 import S3Resource
from pydantic import Field

from ai_assets.store import S3Object, list_objects


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
        """A thread-safe S3 client with botocore's own retries and a pool sized for fan-out."""
        session = boto3.session.Session(profile_name=self.profile_name)
        return session.client(
            "s3",
            region_name=self.region_name,
            endpoint_url=self.endpoint_url,
            use_ssl=self.use_ssl,
            verify=self.verify,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
            aws_session_token=self.aws_session_token,
            config=Config(
                retries={"max_attempts": self.max_attempts, "mode": self.retry_mode},
                max_pool_connections=self.max_pool_connections,
            ),
        )

    def s3_uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def list_objects(self) -> Iterator[S3Object]:
        return list_objects(self.get_client(), self.bucket, self.prefix)

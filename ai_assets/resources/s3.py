from __future__ import annotations

import datetime as dt
import functools
import os
import re
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3.session
import botocore.session
from botocore.config import Config
from dagster_aws.s3 import S3Resource
from pydantic import Field

from ai_assets.s3.objects import (
    ObjectFetcher,
    S3Object,
    Slice,
    head_object,
    list_slice,
    parse_timestamp,
)
from ai_assets.s3.sqs import Drained, delete, drain, settle_version_removals
from ai_assets.settings import s3_setup_problem

if TYPE_CHECKING:
    from obstore.store import ClientConfig


@functools.lru_cache(maxsize=8)
def _client(
    service: str,
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
        service,
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
            # a wrong or unreachable endpoint fails a tick's SQS drain in seconds, not minutes
            connect_timeout=5,
            read_timeout=60,
        ),
    )


#: boto3 credential providers found, per profile and endpoint (as the boto3 clients are cached).
_providers: dict[tuple[str | None, str], Any] = {}


def _boto3_credentials(profile_name: str | None, endpoint_url: str) -> Any:
    """boto3's credential chain for obstore (refreshed as boto3 does), or None without any.

    A miss is not remembered: credentials that appear later (a mounted token) are found then.
    """
    from obstore.auth.boto3 import Boto3CredentialProvider

    key = (profile_name, endpoint_url)
    if key not in _providers:
        session = boto3.session.Session(profile_name=profile_name)
        if session.get_credentials() is None:
            return None
        _providers[key] = Boto3CredentialProvider(session)
    return _providers[key]


@functools.lru_cache(maxsize=8)
def _object_store(
    bucket: str,
    endpoint_url: str,
    region: str,
    verify: bool,
    ca_bundle: str,
    max_attempts: int,
    credentials: tuple[tuple[str, Any], ...],
) -> Any:
    """One obstore S3 store per configuration (it pools its connections); see ``_client``."""
    from obstore.store import S3Store

    options: ClientConfig = {
        "connect_timeout": "5s",
        "timeout": "60s",
        "allow_http": endpoint_url.startswith("http://"),
        "allow_invalid_certificates": not verify,
    }
    if ca_bundle:  # trusted besides the system's roots (botocore trusts only the bundle)
        options["root_certificate"] = Path(ca_bundle).read_bytes()
    proxy = os.environ.get("HTTPS_PROXY" if endpoint_url.startswith("https") else "HTTP_PROXY")
    if proxy:
        options["proxy_url"] = proxy
        if os.environ.get("NO_PROXY"):
            options["proxy_excludes"] = os.environ["NO_PROXY"]
    on_aws = _on_aws(endpoint_url)
    location: dict[str, Any] = (
        # AWS itself: obstore builds the regional URL; virtual-hosted unless the name has dots
        {"virtual_hosted_style_request": "." not in bucket}
        if on_aws
        else {"endpoint": endpoint_url}  # S3-compatible servers: path-style, as botocore's
    )
    return S3Store(
        bucket,
        region=region or "us-east-1",
        client_options=options,
        retry_config={
            "max_retries": max(0, max_attempts - 1),
            "retry_timeout": dt.timedelta(minutes=3),
        },
        **location,
        **dict(credentials),
    )


def _on_aws(endpoint_url: str) -> bool:
    host = urllib.parse.urlsplit(endpoint_url).hostname or ""
    return host == "amazonaws.com" or host.endswith(".amazonaws.com")


def queue_region(queue_url: str) -> str:
    """The region of an AWS queue URL (``https://sqs.eu-west-1.amazonaws.com/…``), else
    us-east-1 (local SQS servers such as moto's answer any)."""
    match = re.match(r"https://sqs\.([a-z0-9-]+)\.amazonaws\.com", queue_url)
    return match.group(1) if match else "us-east-1"


class ImageBucketResource(S3Resource):
    """dagster-aws's S3 resource plus the bucket and prefix that hold the images."""

    bucket: str = Field(description="Bucket holding the images (AI_ASSETS_S3_BUCKET).")
    prefix: str = Field(default="", description="Key prefix to watch (AI_ASSETS_S3_PREFIX).")
    retry_mode: str = Field(
        default="standard", description="botocore retry mode: standard or adaptive."
    )
    max_pool_connections: int = Field(
        default=32, description="HTTP connections per client; bounds concurrent GETs."
    )
    queue_url: str = Field(
        default="",
        description="SQS queue receiving the bucket's S3 event notifications "
        "(AI_ASSETS_SQS_QUEUE_URL); empty = discover changes by listing only.",
    )

    def get_client(self) -> Any:
        """A thread-safe S3 client with botocore's own retries and a pool sized for fan-out.

        Clients are cached per process and configuration: creating one costs ~0.6 s.
        """
        return self._client("s3", self.endpoint_url)

    def get_sqs_client(self) -> Any:
        """An SQS client with the same credentials; ``AWS_ENDPOINT_URL_SQS`` may point elsewhere.

        Without a configured region, the queue URL's own (``sqs.<region>.amazonaws.com``) is used.
        """
        endpoint = os.environ.get("AWS_ENDPOINT_URL_SQS") or self.endpoint_url
        return self._client("sqs", endpoint, self.region_name or queue_region(self.queue_url))

    def _client(self, service: str, endpoint_url: str | None, region: str | None = None) -> Any:
        return _client(
            service,
            self.profile_name,
            region or self.region_name,
            endpoint_url,
            self.use_ssl,
            self.verify,
            self.aws_access_key_id,
            self.aws_secret_access_key,
            self.aws_session_token,
            self.max_attempts,
            self.retry_mode,
            self.max_pool_connections,
        )

    def setup_problem(self) -> str | None:
        """Why the bucket cannot be read as configured (no credentials, no bucket on AWS)."""
        endpoint = self.get_client().meta.endpoint_url
        has_credentials = self._credentials(endpoint) is not None
        return s3_setup_problem(has_credentials, None if _on_aws(endpoint) else endpoint)

    def get_fetcher(self, max_bytes: int) -> ObjectFetcher:
        """GETs objects of the bucket: through obstore where it honours this configuration."""
        client = self.get_client()
        return ObjectFetcher(client, self.bucket, max_bytes, self._store(client))

    def _credentials(self, endpoint_url: str) -> dict[str, Any] | None:
        """The resource's own keys, else boto3's chain (a refreshing provider); None: none."""
        if self.aws_access_key_id and self.aws_secret_access_key:
            return {
                "access_key_id": self.aws_access_key_id,
                "secret_access_key": self.aws_secret_access_key,
                "token": self.aws_session_token,
            }
        provider = _boto3_credentials(self.profile_name, endpoint_url)
        return None if provider is None else {"credential_provider": provider}

    def _store(self, client: Any) -> Any:
        """obstore's S3 store for the bucket, configured from ``client``; None = boto3 only.

        Endpoint and region come from the resolved boto3 client (``AWS_ENDPOINT_URL``,
        ``AWS_REGION``, profiles), credentials from boto3's chain (keys, profiles, web identity
        on Kubernetes, refreshed), retries from ``AWS_MAX_ATTEMPTS``, a CA bundle from
        ``AWS_CA_BUNDLE``. Without credentials GETs stay on boto3, whose error names the cause.
        """
        credentials = self._credentials(client.meta.endpoint_url)
        if credentials is None:
            return None
        return _object_store(
            self.bucket,
            client.meta.endpoint_url,
            client.meta.region_name,
            self.verify is not False,
            os.environ.get("AWS_CA_BUNDLE", ""),
            self.max_attempts,
            tuple(sorted(credentials.items())),  # hashable, for the cache
        )

    def s3_uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def drain_events(
        self, *, max_messages: int, seconds: float, receivers: int, reserve: float = 0.0
    ) -> Drained:
        """Receive the queue's pending S3 events for this bucket and prefix.

        A versioned bucket's removal of one version becomes what HEAD finds for its key.
        """
        drained = drain(
            self.get_sqs_client(),
            self.queue_url,
            bucket=self.bucket,
            prefix=self.prefix,
            max_messages=max_messages,
            seconds=seconds,
            receivers=receivers,
            reserve=reserve,
        )
        settle_version_removals(drained, self.head, receivers)
        return drained

    def head(self, key: str) -> S3Object | None:
        """The key's current version, or None."""
        return head_object(self.get_client(), self.bucket, key)

    def delete_events(self, drained: Drained, workers: int) -> list[str]:
        """Delete drained messages (call only once their events are committed)."""
        return delete(self.get_sqs_client(), self.queue_url, drained.handles, workers)

    def list_slice(
        self, after: str, *, max_objects: int, seconds: float, page_size: int, reserve: float = 0.0
    ) -> Slice:
        """The next bounded stretch of the prefix's listing, after key ``after``."""
        return list_slice(
            self.get_client(),
            self.bucket,
            self.prefix,
            after,
            max_objects=max_objects,
            seconds=seconds,
            page_size=page_size,
            reserve=reserve,
        )

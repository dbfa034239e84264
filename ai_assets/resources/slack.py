from __future__ import annotations

from typing import Any

from dagster_slack import SlackResource
from pydantic import Field
from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)

from ai_assets.settings import DEFAULT_SLACK_API_URL, DEFAULT_WEBSERVER_URL


class BoundedRateLimitRetryHandler(RateLimitErrorRetryHandler):
    """Retry a 429 after its Retry-After, unless that is longer than a sensor tick can wait."""

    def __init__(self, max_retry_count: int, max_wait_s: int) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.max_wait_s = max_wait_s

    def _can_retry(self, *, state, request, response=None, error=None) -> bool:  # type: ignore[override]
        if not super()._can_retry(state=state, request=request, response=response, error=error):
            return False
        headers = {k.lower(): v for k, v in (response.headers if response else {}).items()}
        retry_after = (headers.get("retry-after") or ["1"])[0]
        return retry_after.isdigit() and int(retry_after) <= self.max_wait_s


class SlackNotifierResource(SlackResource):
    """dagster-slack's resource plus the channel, a Slack-compatible base URL and retries."""

    token: str = Field(default="", description="Bot token (SLACK_BOT_TOKEN); empty = no Slack.")
    channel: str = Field(default="", description="Channel id or name (AI_ASSETS_SLACK_CHANNEL).")
    base_url: str = Field(
        default=DEFAULT_SLACK_API_URL, description="Web API URL (AI_ASSETS_SLACK_API_URL)."
    )
    webserver_url: str = Field(
        default=DEFAULT_WEBSERVER_URL,
        description="Dagster UI for links (AI_ASSETS_WEBSERVER_URL).",
    )
    timeout_s: int = Field(default=10, description="Per-request timeout.")
    max_retries: int = Field(default=2, description="Retries for 429, 5xx and connection errors.")
    max_retry_after_s: int = Field(default=30, description="Longest Retry-After honoured.")

    @property
    def configured(self) -> bool:
        return bool(self.token and self.channel)

    def get_client(self) -> WebClient:
        url = self.base_url if self.base_url.endswith("/") else self.base_url + "/"
        return WebClient(
            token=self.token,
            base_url=url,
            timeout=self.timeout_s,
            retry_handlers=[
                BoundedRateLimitRetryHandler(self.max_retries, self.max_retry_after_s),
                ServerErrorRetryHandler(max_retry_count=self.max_retries),
                ConnectionErrorRetryHandler(max_retry_count=self.max_retries),
            ],
        )

    def post(self, text: str, blocks: list[dict[str, Any]]) -> Any:
        return self.get_client().chat_postMessage(channel=self.channel, text=text, blocks=blocks)

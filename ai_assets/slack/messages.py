"""Slack messages about classification runs: Block Kit blocks plus a plain-text fallback.

A failed run gets a message of its own (:class:`FailureDigest`); successful runs are coalesced
into one :class:`SuccessDigest`. Pure formatting; the sensors gather the facts from Dagster.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping
from typing import Any

MAX_ERROR_LINES = 5
MAX_LABELS = 5
#: Runs linked one by one in a digest; the rest are counted.
MAX_RUN_LINKS = 10


@dataclasses.dataclass(frozen=True)
class FailureDigest:
    """A failed classify_images_job run, as the failure message tells it."""

    run_id: str
    url: str
    partitions: str  # the day, "day · batch", or "" when unknown
    duration_s: float | None = None
    images: int | None = None
    errors: int | None = None
    top_labels: Mapping[str, int] = dataclasses.field(default_factory=dict)
    model_id: str | None = None
    failed_step: str | None = None
    error: str | None = None

    @property
    def title(self) -> str:
        return ":x: classify_images_job failed"

    def facts(self) -> list[tuple[str, str]]:
        facts = [("Partition", self.partitions or "—")]
        if self.images is not None:
            facts.append(("Images", f"{self.images:,}"))
        if self.errors is not None:
            facts.append(("Errors", f"{self.errors:,}"))
        if self.duration_s is not None:
            facts.append(("Duration", format_duration(self.duration_s)))
        if self.model_id:
            facts.append(("Model", self.model_id))
        if self.failed_step:
            facts.append(("Failed step", self.failed_step))
        return facts

    def labels_line(self) -> str:
        return _labels_line(self.top_labels)

    def error_excerpt(self) -> str:
        return "\n".join((self.error or "").strip().splitlines()[:MAX_ERROR_LINES])

    def text(self) -> str:
        """Plain-text fallback (notifications, clients without Block Kit)."""
        parts = [self.title, *_fact_lines(self.facts())]
        if self.top_labels:
            parts.append(f"Top labels: {self.labels_line()}")
        if self.error:
            parts.append(f"Error: {self.error_excerpt()}")
        parts.append(f"Run: {self.url}")
        return "\n".join(parts)

    def blocks(self) -> list[dict[str, Any]]:
        blocks = _heading(self.title, self.facts())
        if self.top_labels:
            text = f"*Top labels*\n{_escape(self.labels_line())}"
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
        if self.error:
            excerpt = _escape(self.error_excerpt())[:2900]
            blocks.append(
                {"type": "section", "text": {"type": "mrkdwn", "text": f"```{excerpt}```"}}
            )
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open run in Dagster"},
                        "url": self.url,
                    }
                ],
            }
        )
        return blocks


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """What one successful run reported about itself."""

    run_id: str
    url: str
    partition: str
    images: int = 0
    errors: int = 0
    top_labels: Mapping[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class SuccessDigest:
    """Every classify_images_job run that succeeded since the previous digest, in one message."""

    runs: list[RunSummary]

    @property
    def title(self) -> str:
        n = len(self.runs)
        return f":white_check_mark: {n} classify_images_job run{'s' if n != 1 else ''} succeeded"

    def top_labels(self) -> str:
        return _labels_line(sum((Counter(run.top_labels) for run in self.runs), Counter()))

    def facts(self) -> list[tuple[str, str]]:
        days = sorted({run.partition.split(" ")[0] for run in self.runs if run.partition})
        span = (days[0] if len(days) == 1 else f"{days[0]} … {days[-1]}") if days else "—"
        return [
            ("Runs", f"{len(self.runs):,}"),
            ("Images", f"{sum(run.images for run in self.runs):,}"),
            ("Errors", f"{sum(run.errors for run in self.runs):,}"),
            ("Days", span),
        ]

    def run_lines(self) -> list[str]:
        shown = [
            f"<{run.url}|{run.partition or run.run_id[:8]}>: {run.images:,} images"
            for run in self.runs[:MAX_RUN_LINKS]
        ]
        if len(self.runs) > MAX_RUN_LINKS:
            shown.append(f"… and {len(self.runs) - MAX_RUN_LINKS:,} more")
        return shown

    def text(self) -> str:
        parts = [self.title, *_fact_lines(self.facts())]
        if labels := self.top_labels():
            parts.append(f"Top labels: {labels}")
        parts.extend(f"Run: {run.url}" for run in self.runs[:MAX_RUN_LINKS])
        return "\n".join(parts)

    def blocks(self) -> list[dict[str, Any]]:
        blocks = _heading(self.title, self.facts())
        if labels := self.top_labels():
            text = f"*Top labels*\n{_escape(labels)}"
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
        runs = "\n".join(self.run_lines())[:2900]
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": runs}})
        return blocks


def _labels_line(counts: Mapping[str, int]) -> str:
    """The most frequent labels, most first (ties by name), as ``label (count), …``."""
    top = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:MAX_LABELS]
    return ", ".join(f"{label} ({count})" for label, count in top)


def _heading(title: str, facts: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """The header and the fields every message starts with."""
    return [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": f"*{name}*\n{_escape(value)}"} for name, value in facts
            ],
        },
    ]


def _fact_lines(facts: list[tuple[str, str]]) -> list[str]:
    return [f"{name}: {value}" for name, value in facts]


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    return f"{minutes}m {secs}s" if minutes else f"{seconds:.1f}s"


def _escape(text: str) -> str:
    """Slack mrkdwn control characters (https://api.slack.com/reference/surfaces/formatting)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def run_url(webserver_url: str, run_id: str) -> str:
    return f"{webserver_url.rstrip('/')}/runs/{run_id}"

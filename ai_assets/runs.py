"""What a classification run reports: the tally of its rows and the metadata keys it writes.

The asset writes these keys and the Slack digest reads them back, so both name them here.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
from collections.abc import Mapping, Sequence

from ai_assets.db.results import ClassificationRow

#: Rows in the Markdown sample of a run's results.
SAMPLE_ROWS = 10
#: Labels in a run's top_labels.
TOP_LABELS = 10


class Meta(enum.StrEnum):
    """Keys of the metadata an image_classifications materialization carries."""

    IMAGES = "images"
    CLASSIFIED = "classified"
    ERRORS = "errors"
    DELETED = "deleted"
    IMAGES_PER_SECOND = "images_per_second"
    LOOP_SECONDS = "loop_seconds"
    LOOP_CPU_SECONDS = "loop_cpu_seconds"
    CPU_MS_PER_IMAGE = "cpu_ms_per_image"
    FEED_CPU_MS_PER_IMAGE = "feed_cpu_ms_per_image"
    PROCESS_CPU_SECONDS = "process_cpu_seconds"
    MODEL_LOAD_SECONDS = "model_load_seconds"
    TOP_LABELS = "top_labels"
    MODEL_ID = "model_id"
    MODEL_REVISION = "model_revision"
    DEVICE = "device"
    PRECISION = "precision"
    DECODING = "decoding"
    MODEL_THREADS = "model_threads"
    BATCHNORMS_FOLDED = "batchnorms_folded"
    SAMPLE = "sample"
    BATCH = "batch"
    # the whole day after the run, not only its batch (db.status.day_totals)
    DAY_OBJECTS = "day_objects"
    DAY_CURRENT = "day_current"
    DAY_WAITING = "day_waiting"
    DAY_ERRORS = "day_errors"
    DAY_DELETED = "day_deleted"
    DAY_OLDEST_WAITING_SECONDS = "day_oldest_waiting_seconds"


@dataclasses.dataclass
class Tally:
    """The rows a run wrote, counted as they stream by: statuses, labels, a small sample."""

    statuses: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    labels: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    sample: list[ClassificationRow] = dataclasses.field(default_factory=list)

    def add(self, rows: Sequence[ClassificationRow]) -> None:
        self.statuses.update(row.status for row in rows)
        self.labels.update(row.label for row in rows if row.label)
        self.sample.extend(rows[: SAMPLE_ROWS - len(self.sample)])

    @property
    def asked(self) -> int:
        return sum(self.statuses.values())

    @property
    def error_rate(self) -> float:
        """Errors among the objects the run tried to classify (deleted ones excluded)."""
        tried = self.statuses["ok"] + self.statuses["error"]
        return self.statuses["error"] / tried if tried else 0.0

    def counts(self) -> dict[Meta, int]:
        return {
            Meta.IMAGES: self.asked,
            Meta.CLASSIFIED: self.statuses["ok"],
            Meta.ERRORS: self.statuses["error"],
            Meta.DELETED: self.statuses["deleted"],
        }

    def top_labels(self) -> dict[str, int]:
        return dict(self.labels.most_common(TOP_LABELS))

    def sample_table(self) -> str:
        """The sample as a Markdown table."""
        lines = "\n".join(
            f"| `{md(row.s3_key)}` | {md(row.label or row.status)} | "
            f"{'' if row.score is None else f'{row.score:.3f}'} |"
            for row in self.sample
        )
        return f"| object | label | score |\n|---|---|---|\n{lines}"


def md(text: str) -> str:
    """Keep object keys and labels from breaking a Markdown table."""
    return text.replace("|", "\\|").replace("\n", " ").replace("`", "'")


def read_int(metadata: Mapping[str, object], key: Meta) -> int | None:
    value = metadata.get(key)
    return value if isinstance(value, int) else None


def read_labels(metadata: Mapping[str, object]) -> dict[str, int]:
    labels = metadata.get(Meta.TOP_LABELS)
    return labels if isinstance(labels, dict) else {}

"""One object's way through the stream (its job and outcome) and the result row it becomes."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

from ai_assets.db.results import ClassificationRow
from ai_assets.s3.objects import Fetched
from ai_assets.vision.labels import Label


@dataclasses.dataclass(frozen=True)
class Job:
    """One object to classify: its partition key and its S3 key."""

    partition_key: str
    object_key: str


@dataclasses.dataclass(frozen=True)
class Outcome:
    """A fetched object, decoded and preprocessed, or the reason it cannot be classified."""

    job: Job
    fetched: Fetched
    ready: bool = False  # in its batch slot, or on its way there (decode processes)
    error: str | None = None


def result_rows(
    outcomes: Sequence[Outcome],
    answers: Sequence[list[Label] | str | None],
    model_id: str,
    model_revision: str,
    run_id: str | None,
) -> list[ClassificationRow]:
    """One row per outcome: ``deleted``, ``error`` (why) or ``ok`` with its top-k labels.

    ``answers`` holds, per outcome, the classifier's labels, its reason for refusing the
    image, or None when the outcome never reached it.
    """
    now = dt.datetime.now(dt.UTC)
    rows = []
    for outcome, labels in zip(outcomes, answers, strict=True):
        fetched = outcome.fetched
        version = {
            "s3_key": outcome.job.object_key,
            "partition_key": outcome.job.partition_key,
            "etag": fetched.etag,
            "size_bytes": fetched.size,
            "last_modified": fetched.last_modified,
            "model_id": model_id,
            "model_revision": model_revision,
            "classified_at": now,
            "run_id": run_id,
        }
        if fetched.deleted:
            rows.append(ClassificationRow(status="deleted", **version))
        elif labels is None or isinstance(labels, str):
            error = labels if isinstance(labels, str) else outcome.error
            rows.append(ClassificationRow(status="error", error=error, **version))
        else:
            best = labels[0]
            top_k = [label.as_json() for label in labels]
            rows.append(
                ClassificationRow(
                    status="ok", label=best.label, score=best.score, top_k=top_k, **version
                )
            )
    return rows

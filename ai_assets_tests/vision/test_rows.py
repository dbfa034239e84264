"""Result rows, directly: one per outcome, and what each status carries."""

from __future__ import annotations

import datetime as dt

from ai_assets.s3.objects import Fetched
from ai_assets.vision.labels import Label
from ai_assets.vision.rows import Job, Outcome, result_rows

WHEN = dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC)


def outcome(key: str, **fetched: object) -> Outcome:
    version = {"etag": "e1", "size": 10, "last_modified": WHEN} | fetched
    return Outcome(Job("2026-12-01", key), Fetched(key=key, **version))  # type: ignore[arg-type]


def test_each_outcome_becomes_one_row_with_its_version_model_and_run() -> None:
    labels = [Label("tabby", 0.7), Label("tiger cat", 0.2)]
    ok, gone = outcome("a.jpg"), outcome("b.jpg", deleted=True, etag=None, size=None)
    refused = Outcome(Job("2026-12-01", "c.jpg"), Fetched(key="c.jpg"), error="truncated JPEG")
    rows = result_rows(
        [ok, gone, refused, outcome("d.jpg")],
        [labels, None, None, "too many pixels"],
        "lite0",
        "rev1",
        "run-1",
    )
    assert [(r.s3_key, r.status) for r in rows] == [
        ("a.jpg", "ok"), ("b.jpg", "deleted"), ("c.jpg", "error"), ("d.jpg", "error"),
    ]  # fmt: skip
    first = rows[0]
    assert (first.label, first.score) == ("tabby", 0.7)
    assert first.top_k == [{"label": "tabby", "score": 0.7}, {"label": "tiger cat", "score": 0.2}]
    assert (first.etag, first.size_bytes, first.last_modified) == ("e1", 10, WHEN)
    assert {(r.model_id, r.model_revision, r.run_id, r.partition_key) for r in rows} == {
        ("lite0", "rev1", "run-1", "2026-12-01")
    }
    assert rows[1].label is None and rows[1].error is None
    assert rows[2].error == "truncated JPEG"  # why the outcome never reached the classifier
    assert rows[3].error == "too many pixels"  # why the classifier refused it
    assert len({r.classified_at for r in rows}) == 1

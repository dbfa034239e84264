"""What a run reports, directly: its tally, its Markdown sample, the keys Slack reads back."""

from __future__ import annotations

from ai_assets.db.results import ClassificationRow
from ai_assets.runs import SAMPLE_ROWS, Meta, Tally, md, read_int, read_labels


def row(key: str, status: str = "ok", label: str | None = "tabby") -> ClassificationRow:
    score = 0.5 if status == "ok" else None
    return ClassificationRow(key, "2026-12-01", status, label=label, score=score)  # type: ignore[arg-type]


def test_a_tally_counts_statuses_labels_and_keeps_a_small_sample() -> None:
    tally = Tally()
    tally.add([row(f"{i}.jpg") for i in range(SAMPLE_ROWS - 2)])
    tally.add([row("e.jpg", "error", None), row("d.jpg", "deleted", None), row("x.jpg")])
    tally.add([row("late.jpg", label="espresso")])
    assert tally.counts() == {Meta.IMAGES: 12, Meta.CLASSIFIED: 10, Meta.ERRORS: 1, Meta.DELETED: 1}
    assert tally.error_rate == 1 / 11  # deleted objects were not tried
    assert tally.top_labels() == {"tabby": 9, "espresso": 1}
    assert len(tally.sample) == SAMPLE_ROWS and tally.sample[-1].s3_key == "d.jpg"
    table = tally.sample_table().splitlines()
    assert table[:2] == ["| object | label | score |", "|---|---|---|"]
    assert table[2] == "| `0.jpg` | tabby | 0.500 |" and "| `e.jpg` | error |  |" in table


def test_odd_keys_cannot_break_the_markdown_and_metadata_reads_back_safely() -> None:
    assert md("a|b\nc`d") == "a\\|b c'd"
    metadata = {"images": 3, "errors": "3", "top_labels": {"tabby": 2}}
    assert read_int(metadata, Meta.IMAGES) == 3
    assert read_int(metadata, Meta.ERRORS) is None  # not an int: unknown, not a crash
    assert read_labels(metadata) == {"tabby": 2} and read_labels({}) == {}
    assert Tally().error_rate == 0.0

"""Slack message text, directly: what a failure and a digest say, and what they escape."""

from __future__ import annotations

from ai_assets.slack.messages import (
    MAX_ERROR_LINES,
    MAX_LABELS,
    MAX_RUN_LINKS,
    FailureDigest,
    RunSummary,
    SuccessDigest,
    format_duration,
    run_url,
)


def failure(**changes: object) -> FailureDigest:
    facts: dict = {
        "run_id": "abc123",
        "url": run_url("http://dagster.example/", "abc123"),
        "partitions": "2026-12-01 · b-1",
        "duration_s": 75.0,
        "images": 1200,
        "errors": 3,
        "top_labels": {"tabby": 5, "espresso": 9},
        "model_id": "lite0",
        "failed_step": "image_classifications",
        "error": "\n".join(f"line {i} <b> & co" for i in range(10)),
    }
    return FailureDigest(**(facts | changes))


def test_a_failure_names_the_run_its_day_counts_step_and_error() -> None:
    digest = failure()
    text = digest.text()
    assert text.splitlines()[0] == ":x: classify_images_job failed"
    facts = [
        "Partition: 2026-12-01 · b-1",
        "Images: 1,200",
        "Errors: 3",
        "Duration: 1m 15s",
        "Model: lite0",
        "Failed step: image_classifications",
        "Top labels: espresso (9), tabby (5)",
        "Run: http://dagster.example/runs/abc123",
    ]
    assert [fact for fact in facts if fact not in text] == []
    assert text.count("line ") == MAX_ERROR_LINES  # an excerpt, not the whole traceback


def test_failure_blocks_escape_mrkdwn_and_link_the_run() -> None:
    blocks = failure().blocks()
    assert blocks[0] == {
        "type": "header",
        "text": {"type": "plain_text", "text": ":x: classify_images_job failed"},
    }
    error = next(b for b in blocks if b.get("text", {}).get("text", "").startswith("```"))
    assert "&lt;b&gt; &amp; co" in error["text"]["text"] and "<b>" not in error["text"]["text"]
    [button] = blocks[-1]["elements"]
    assert button["url"] == "http://dagster.example/runs/abc123"


def test_a_failure_before_any_count_leaves_unknown_facts_out() -> None:
    text = failure(images=None, errors=None, duration_s=None, top_labels={}, model_id=None).text()
    assert "Images" not in text and "Errors" not in text and "Top labels" not in text
    assert "Partition: 2026-12-01 · b-1" in text


def test_a_digest_adds_runs_up_and_links_at_most_a_few() -> None:
    runs = [
        RunSummary(
            f"run{i}",
            f"http://d/runs/run{i}",
            f"2026-11-{10 + i % 3} · b{i}",
            100,
            i % 2,
            {"tabby": 1, f"label{i}": 2},
        )
        for i in range(MAX_RUN_LINKS + 5)
    ]
    digest = SuccessDigest(runs)
    text = digest.text()
    assert text.startswith(f":white_check_mark: {len(runs)} classify_images_job runs succeeded")
    assert f"Images: {100 * len(runs):,}" in text
    assert f"Errors: {sum(i % 2 for i in range(len(runs)))}" in text
    assert "Days: 2026-11-10 … 2026-11-12" in text
    assert text.count("Run: ") == MAX_RUN_LINKS
    assert f"tabby ({len(runs)})" in text
    assert digest.top_labels().count("(") == MAX_LABELS
    lines = digest.run_lines()
    assert lines[-1] == "… and 5 more" and len(lines) == MAX_RUN_LINKS + 1
    assert lines[0] == "<http://d/runs/run0|2026-11-10 · b0>: 100 images"


def test_one_run_is_singular_and_durations_read_naturally() -> None:
    digest = SuccessDigest([RunSummary("r", "u", "2026-12-01", 1, 0)])
    assert digest.title == ":white_check_mark: 1 classify_images_job run succeeded"
    assert [format_duration(s) for s in (4.25, 75, 3725)] == ["4.2s", "1m 15s", "1h 2m 5s"]

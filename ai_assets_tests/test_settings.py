"""The configuration contract's readers, directly: the model service's settings and the helpers."""

from __future__ import annotations

import datetime as dt

import pytest

from ai_assets.common import Counters, as_utc, chunked
from ai_assets.settings import (
    CONTRACT,
    DEFAULT_BATCH_SIZE,
    DEFAULT_PRECISION,
    DEFAULT_QUEUE_LIMIT,
    ServiceSettings,
    declared,
    problems,
    service_settings,
)

#: Every variable of ours the readers below look at (AWS_MAX_ATTEMPTS is read as a run integer).
OUR_VARIABLES = [
    v.name for v in CONTRACT if v.name.startswith("AI_ASSETS_") or v.name == "AWS_MAX_ATTEMPTS"
]


@pytest.fixture
def clean(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in OUR_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_service_takes_the_contracts_defaults_when_nothing_is_set(clean) -> None:
    settings = service_settings()
    assert settings == ServiceSettings()
    assert (settings.batch_size, settings.precision) == (DEFAULT_BATCH_SIZE, DEFAULT_PRECISION)
    assert settings.queue_limit == DEFAULT_QUEUE_LIMIT and settings.model == ""


def test_the_service_reads_every_variable_it_documents(clean) -> None:
    for name, value in {
        "AI_ASSETS_MODEL": " /models/vit ", "AI_ASSETS_PRECISION": "bf16",
        "AI_ASSETS_BATCH_SIZE": "64", "AI_ASSETS_TOP_K": "3",
        "AI_ASSETS_MAX_IMAGE_BYTES": "1000", "AI_ASSETS_MAX_IMAGE_PIXELS": "2000",
        "AI_ASSETS_BATCH_WAIT_MS": "2.5", "AI_ASSETS_QUEUE_LIMIT": "8",
        "AI_ASSETS_DECODE_PROCESSES": "6",
    }.items():  # fmt: skip
        clean.setenv(name, value)
    assert service_settings() == ServiceSettings(
        model="/models/vit", precision="bf16", batch_size=64, top_k=3, max_image_bytes=1000,
        max_image_pixels=2000, batch_wait_ms=2.5, queue_limit=8, decode_processes=6,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("AI_ASSETS_BATCH_SIZE", "many", "AI_ASSETS_BATCH_SIZE must be a whole number, got 'many'"),
        ("AI_ASSETS_TOP_K", "0", "AI_ASSETS_TOP_K must be at least 1, got '0'"),
        ("AI_ASSETS_BATCH_WAIT_MS", "-1", "AI_ASSETS_BATCH_WAIT_MS must be at least 0"),
    ],
)
def test_a_bad_value_names_its_variable(clean, name: str, value: str, message: str) -> None:
    clean.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        service_settings()


def test_only_declared_variables_can_be_read() -> None:
    assert declared("AI_ASSETS_BATCH_SIZE") == "AI_ASSETS_BATCH_SIZE"
    with pytest.raises(KeyError, match="not in the configuration contract"):
        declared("AI_ASSETS_TYPO")


def test_the_shared_helpers() -> None:
    assert [list(c) for c in chunked(range(7), 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(chunked([], 3)) == []
    naive = dt.datetime(2026, 12, 1, 12)
    assert as_utc(naive) == dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC)
    paris = dt.datetime(2026, 12, 1, 13, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert as_utc(paris) == as_utc(naive) and as_utc(paris).tzinfo == dt.UTC

    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Pair(Counters):
        a: int = 0
        b: int = 0

    assert Pair(1, 2) + Pair(3, 4) == Pair(4, 6)


def test_every_bad_setting_is_found_up_front_one_message_each(clean) -> None:
    assert problems() == []
    clean.setenv("AI_ASSETS_START_DATE", "yesterday")
    clean.setenv("AI_ASSETS_BATCH_SIZE", "lots")  # read by the service and by runs: said once
    clean.setenv("AWS_MAX_ATTEMPTS", "0")
    clean.setenv("AI_ASSETS_RECONCILE_MINUTES", "soon")
    assert problems() == [
        "AI_ASSETS_START_DATE must be an ISO date (YYYY-MM-DD), got 'yesterday'",
        "AI_ASSETS_RECONCILE_MINUTES must be a number, got 'soon'",
        "AI_ASSETS_BATCH_SIZE must be a whole number, got 'lots'",
        "AWS_MAX_ATTEMPTS must be at least 1, got '0'",
    ]

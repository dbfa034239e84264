"""Small pure helpers every domain shares: fixed-size chunks, UTC times, counters that add up."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator, Sequence
from typing import Self, TypeVar

T = TypeVar("T")


def chunked(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size`` (itertools.batched is Python 3.12)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def as_utc(moment: dt.datetime) -> dt.datetime:
    """An aware UTC time; naive ones are UTC already (SQLite hands datetimes back naive)."""
    return moment.astimezone(dt.UTC) if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


class Counters:
    """A dataclass of numbers that adds field by field (``a + b``)."""

    def __add__(self, other: Self) -> Self:
        pairs = zip(dataclasses.astuple(self), dataclasses.astuple(other), strict=True)  # type: ignore[call-overload]
        return type(self)(*(a + b for a, b in pairs))

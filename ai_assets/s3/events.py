"""Object-level S3 events and their order: what both the SQS drain and the inventory speak."""

from __future__ import annotations

import dataclasses
import datetime as dt

from ai_assets.common import as_utc


@dataclasses.dataclass(frozen=True)
class ObjectEvent:
    """One object-level S3 event: a new version of ``key`` or its removal."""

    key: str
    removed: bool
    time: dt.datetime
    etag: str = ""
    size: int | None = None
    sequencer: str = ""
    #: A versioned bucket's permanent deletion of one version: the key may still have others.
    one_version: bool = False
    #: The version's own LastModified when known (a version found by HEAD); else ``time``.
    last_modified: dt.datetime | None = None


def is_later(
    sequencer: str | None,
    time_: dt.datetime,
    than_sequencer: str | None,
    than_time: dt.datetime | None,
) -> bool:
    """Whether an event of a key happened after another state of the same key.

    S3's ``sequencer`` decides when both sides have one: hexadecimal strings compared after
    right-padding the shorter with zeros. A state recorded by a listing has none; then the
    event time decides, and a tie counts as later (the next listing pass corrects a wrong call).
    """
    if sequencer and than_sequencer:
        width = max(len(sequencer), len(than_sequencer))
        return sequencer.upper().ljust(width, "0") > than_sequencer.upper().ljust(width, "0")
    return than_time is None or as_utc(time_) >= as_utc(than_time)


def latest(a: ObjectEvent, b: ObjectEvent) -> ObjectEvent:
    """Whichever of two events of one key happened last."""
    return b if is_later(b.sequencer, b.time, a.sequencer, a.time) else a

"""What a classifier answers per image, in process or over HTTP: shared below both."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Label:
    """One class name and its probability."""

    label: str
    score: float

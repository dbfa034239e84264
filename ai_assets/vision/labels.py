"""What a classifier answers per image, in process or over HTTP: shared below both."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Label:
    """One class name and its probability."""

    label: str
    score: float

    def as_json(self) -> dict[str, str | float]:
        """``{"label", "score"}``, as the table's top_k and the model service answer it (what
        ``dataclasses.asdict`` gives, at a tenth of its cost: a run builds five per image)."""
        return {"label": self.label, "score": self.score}

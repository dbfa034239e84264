"""How every benchmark prints its figures: a table, then the one ``RESULT`` line checks read."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def print_figures(figures: Mapping[str, object], first: Sequence[str] = ()) -> None:
    """The figures as a table, then ``RESULT k=v …`` with ``first`` leading."""
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name:<{width}}  {fmt(value):>12}")
    names = [*first, *(name for name in figures if name not in first)]
    print("RESULT " + " ".join(f"{name}={fmt(figures[name])}" for name in names))


def fmt(value: object) -> str:
    if not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"

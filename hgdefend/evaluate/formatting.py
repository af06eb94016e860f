"""Small helpers that turn numbers into Markdown for people: fixed decimals, percentages, tables."""

from __future__ import annotations

import math
from typing import Any


def fmt(value: Any, digits: int = 3) -> str:
    """Numbers for people: fixed decimals, thousands separators, '—' for missing, 'n/a' for NaN."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.{digits}f}"
    return str(value)


def pct(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{100 * value:.{digits}f} %"


def pct_ci(value: float | None, ci: list[float] | None, digits: int = 1) -> str:
    """'72.7 % [65.8, 78.9]' — a rate with its interval (in per cent)."""
    if value is None:
        return "—"
    if not ci:
        return pct(value, digits)
    return f"{pct(value, digits)} [{100 * ci[0]:.{digits}f}, {100 * ci[1]:.{digits}f}]"


def num_ci(value: float | None, ci: list[float] | None) -> str:
    if value is None:
        return "—"
    return fmt(value) + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "")


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows]
    return lines

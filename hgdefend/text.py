"""The one place strings from files are made safe to show: in a terminal, a report or a spreadsheet.

Standard library only (the CLI's error path and ``detect`` use it without torch).
"""

from __future__ import annotations

import unicodedata

_UNSAFE = frozenset(("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"))
"""Control, format (bidirectional overrides, zero-width), surrogate, private-use, unassigned
characters and line/paragraph separators: none of them is shown raw."""

CSV_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
"""A cell starting with one of these is a formula (or can start one) in spreadsheet programs."""


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(value: object, *, keep: str = "") -> str:
    """``str(value)`` with every control or invisible character escaped (``\\x1b``, ``\\u202e``), so
    text from a file cannot move the cursor, recolour or rewrite a terminal line, or reorder what
    is shown. Characters in ``keep`` (e.g. ``"\\n"`` for a multi-line report) stay as they are."""
    text = str(value)
    if text.isprintable() and not keep:  # the common case: nothing to do
        return text
    return "".join(
        ch if ch in keep or unicodedata.category(ch) not in _UNSAFE else _escape(ch) for ch in text
    )


def csv_cell(value: object) -> object:
    """A CSV cell that a spreadsheet shows as text: strings starting with = + - @ (or a tab or
    carriage return) get a leading ``'``, and control characters are escaped. Numbers, booleans
    and ``None`` are returned unchanged (a negative number is a number, not a formula)."""
    if not isinstance(value, str):
        return value
    text = printable(value)
    return "'" + text if value.startswith(CSV_TRIGGERS) else text

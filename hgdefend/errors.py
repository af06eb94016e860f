"""The library's error type, importable without torch (the CLI's error handling needs it at start-up)."""

from __future__ import annotations


class HgdefendError(ValueError):
    """Bad input to hgdefend. A ``ValueError`` so callers can catch it the usual way."""

"""Progress for long stages: a bar on a terminal's stderr, nothing in logs or with ``--quiet``."""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm


def progress_enabled(quiet: bool, explicit: bool | None = None) -> bool:
    """On only when not quiet and stderr is a terminal (CI logs stay free of bar spam)."""
    if explicit is not None:
        return bool(explicit)
    return not quiet and sys.stderr.isatty()


def bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar on stderr (a disabled one is a cheap no-op with the same interface)."""
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True, file=sys.stderr)

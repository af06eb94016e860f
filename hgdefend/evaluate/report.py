"""The one report writer: ``report.json`` (for machines), ``report.md`` and ``report.html`` (for
people), each written atomically. Rendering happens elsewhere (:mod:`.render`); this only writes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..fileio import atomic_write
from ..text import printable

SCHEMA_VERSION = 2
REPORT_FILES = {"json": "report.json", "markdown": "report.md", "html": "report.html"}


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def report_json(report: dict[str, Any]) -> str:
    return (
        json.dumps(
            {"schema_version": SCHEMA_VERSION, **report}, indent=2, default=_json_default, allow_nan=True
        )
        + "\n"
    )


def write_report(
    out_dir: str | os.PathLike, report: dict[str, Any], markdown: str, html: str
) -> dict[str, Path]:
    """Write the three files into ``out_dir``; return their paths by kind."""
    out = Path(out_dir)
    paths = {kind: out / name for kind, name in REPORT_FILES.items()}
    atomic_write(paths["json"], report_json(report))
    # Strings from files (paths, labels, dataset names) reach the report: no control characters.
    atomic_write(paths["markdown"], printable(markdown, keep="\n\t"))
    atomic_write(paths["html"], printable(html, keep="\n\t"))
    return paths

"""The ``--fail-under`` gate: CI fails a build when a detector falls below a limit.

Any section may carry ``gate_rows`` (``[{"name", "auroc", "aupr", "tpr"}, ...]``); the gate
checks all of them, so the attacks section joins it by adding rows.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import HgdefendError
from .formatting import fmt, table

GATE_METRICS = {"auroc": "auroc", "aupr": "aupr", "tpr": "tpr_at_threshold"}
"""``--fail-under`` key → metric name in a detection row."""


def parse_fail_under(text: str | None) -> dict[str, float]:
    """'auroc=0.9,tpr=0.8' → {'auroc': 0.9, 'tpr': 0.8}; empty/None → {} (no gate)."""
    if text is None or not text.strip():
        return {}
    out: dict[str, float] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or not key:
            raise HgdefendError(
                f"fail_under: expected KEY=VALUE pairs like 'auroc=0.9,tpr=0.8', got {part!r}"
            )
        if key not in GATE_METRICS:
            raise HgdefendError(f"fail_under: unknown metric {key!r}; expected one of {sorted(GATE_METRICS)}")
        try:
            v = float(value)
        except ValueError:
            raise HgdefendError(
                f"fail_under: {key} needs a number in [0, 1], got {value.strip()!r}"
            ) from None
        if not (math.isfinite(v) and 0.0 <= v <= 1.0):
            raise HgdefendError(f"fail_under: {key} needs a number in [0, 1], got {value.strip()!r}")
        if key in out:
            raise HgdefendError(f"fail_under: {key} is given twice")
        out[key] = v
    return out


def apply_gate(report: dict[str, Any], limits: dict[str, float]) -> dict[str, Any]:
    """Check every section's ``gate_rows`` against the limits; a gate that nothing measured fails."""
    rows = [r for sec in report.values() if isinstance(sec, dict) for r in sec.get("gate_rows", [])]
    checks, failures = [], []
    for key, limit in limits.items():
        measured = [r for r in rows if r.get(key) is not None]
        if not measured:
            failures.append(f"{key}: not measured (no OOD or adversarial set was scored)")
            continue
        for r in measured:
            ok = r[key] >= limit
            checks.append({"metric": key, "limit": limit, "value": r[key], "on": r["name"], "passed": ok})
            if not ok:
                failures.append(f"{key} {r[key]:.3f} < {limit:g} on {r['name']}")
    return {"passed": not failures, "fail_under": limits, "checks": checks, "failures": failures}


def render_gate(sec: dict[str, Any]) -> list[str]:
    limits = ", ".join(f"{k} >= {v:g}" for k, v in sec["fail_under"].items())
    head = f"**{'PASSED' if sec['passed'] else 'FAILED'}** (fail under: {limits})."
    rows = [
        [c["metric"], c["on"], fmt(c["value"]), f"{c['limit']:g}", "yes" if c["passed"] else "**no**"]
        for c in sec["checks"]
    ]
    lines = [head, ""] + (table(["metric", "on", "value", "limit", "passed"], rows) if rows else [])
    return lines + [f"- {f}" for f in sec["failures"]]

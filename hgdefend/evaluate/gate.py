"""The ``--fail-under`` gate: CI fails a build when a detector falls below a limit, or when too
many attacked inputs get through.

Any section may carry ``gate_rows``; the gate checks all of them. Detection rows (OOD sets) carry
``auroc``, ``aupr`` and ``tpr``, lower bounds. Attack rows carry only ``missed`` — the share of
attacked inputs misclassified by the scoring ensemble and not flagged — an upper bound: against an
attacker that is the number that matters (an adaptive attack can push AUROC anywhere while fooling
few inputs), and an OOD gate such as ``auroc=0.9`` keeps meaning the same now that ``evaluate``
runs a small attack section by default.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import HgdefendError
from .formatting import fmt, table

GATE_METRICS = {"auroc": "auroc", "aupr": "aupr", "tpr": "tpr_at_threshold", "missed": "missed_and_wrong"}
"""``--fail-under`` key → metric name in a detection or attack row."""
UPPER_BOUNDS = frozenset({"missed"})
"""Keys whose limit is a maximum (the gate fails above it); the others are minimums."""
NOT_MEASURED = {"missed": "no attack was run"}
"""Why a key has no row to check, where it differs from the default reason."""


def _op(key: str) -> tuple[str, str]:
    """(operator that passes, operator that fails) for a key: ('>=', '<') or ('<=', '>')."""
    return ("<=", ">") if key in UPPER_BOUNDS else (">=", "<")


def parse_fail_under(text: str | None) -> dict[str, float]:
    """'auroc=0.9,tpr=0.8,missed=0.05' → {'auroc': 0.9, 'tpr': 0.8, 'missed': 0.05}; empty/None → {}."""
    if text is None or not text.strip():
        return {}
    out: dict[str, float] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or not key:
            raise HgdefendError(
                f"fail_under: expected KEY=VALUE pairs like 'auroc=0.9,tpr=0.8,missed=0.05', got {part!r}"
            )
        if key not in GATE_METRICS:
            raise HgdefendError(f"fail_under: unknown metric {key!r}; expected one of {sorted(GATE_METRICS)}")
        what = "the largest share allowed" if key in UPPER_BOUNDS else "a number"
        try:
            v = float(value)
        except ValueError:
            raise HgdefendError(f"fail_under: {key} needs {what} in [0, 1], got {value.strip()!r}") from None
        if not (math.isfinite(v) and 0.0 <= v <= 1.0):
            raise HgdefendError(f"fail_under: {key} needs {what} in [0, 1], got {value.strip()!r}")
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
            why = NOT_MEASURED.get(key, "no OOD or adversarial set was scored")
            if any(key in r for r in rows):  # rows that carry the key, all None: no threshold
                why = "no threshold to flag at"
            failures.append(f"{key}: not measured ({why})")
            continue
        upper = key in UPPER_BOUNDS
        for r in measured:
            ok = r[key] <= limit if upper else r[key] >= limit
            if key == "missed" and r.get("inconclusive"):  # too weak an attack proves nothing: not a pass
                on = f"{r['name']} (inconclusive: Tramèr check)"
                checks.append({"metric": key, "limit": limit, "bound": "upper", "value": r[key],
                               "on": on, "passed": False})  # fmt: skip
                failures.append(f"{key} on {r['name']}: inconclusive (the Tramèr check says the attack is "
                                "too weak for this model), which is not a pass")  # fmt: skip
                continue
            checks.append({"metric": key, "limit": limit, "bound": "upper" if upper else "lower",
                           "value": r[key], "on": r["name"], "passed": ok})  # fmt: skip
            if not ok:
                failures.append(f"{key} {r[key]:.3f} {_op(key)[1]} {limit:g} on {r['name']}")
    return {"passed": not failures, "fail_under": limits, "checks": checks, "failures": failures}


def render_gate(sec: dict[str, Any]) -> list[str]:
    limits = ", ".join(f"{k} {_op(k)[0]} {v:g}" for k, v in sec["fail_under"].items())
    head = f"**{'PASSED' if sec['passed'] else 'FAILED'}** (passes when {limits})."
    rows = [
        [c["metric"], c["on"], fmt(c["value"]), f"{_op(c['metric'])[0]} {c['limit']:g}",
         "yes" if c["passed"] else "**no**"]
        for c in sec["checks"]
    ]  # fmt: skip
    lines = [head, ""] + (table(["metric", "on", "value", "passes when", "passed"], rows) if rows else [])
    failures = [f"- {f}" for f in sec["failures"]]
    return lines + ([""] if rows and failures else []) + failures

"""The per-input worst case over every attack, and the Tramèr check that it is a real result.

**Worst case.** An attacker tries everything: an input gets through at eps if *any* row at eps (any
attack, protocol or λ) made it misclassified by the scoring ensemble and not flagged, and keeps its
label only if every row left it correct. That is the figure a red team quotes.

**Tramèr check** (Tramèr, "Detecting adversarial examples is (nearly) as hard as classifying them",
ICML 2022). A detector that at eps lets a share ``missed`` of inputs through, and flags or misclassifies
a share ``rejected`` of the clean ones, yields a classifier robust at eps/2 on at least
``1 − missed − rejected`` of the inputs (classify x' by any unflagged point within eps/2 of it). If
the same ensemble, attacked at eps/2 without any detector term, keeps *less* accuracy than that, the
detection figure at eps claims more robustness than the classifier has: no defence is that good, so
the attack was too weak for this model and the row is **inconclusive**, not a pass. The comparison
uses the ensemble's own accuracy under the section's strongest attacks at eps/2 as the stand-in for
"robust at eps/2" (measured with the run's rows when eps/2 is among them, else with one extra run of
the section's attacks at λ = 0), with a slack of :data:`TOLERANCE` plus one input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .formatting import pct

TOLERANCE = 0.05
INCONCLUSIVE = "inconclusive: the attack is too weak for this model"


def worst_case(
    rows: list[dict[str, Any]], arrays: list[dict[str, np.ndarray]], eps: tuple[float, ...]
) -> list[dict]:
    """Per eps: the share of inputs that any row got through, the accuracy left after every row,
    and how many inputs each attack got through first (row order)."""
    out = []
    for e in eps:
        idx = [i for i, r in enumerate(rows) if r["eps"] == e]
        if not idx:
            continue
        through = np.zeros_like(arrays[idx[0]]["through"])
        wrong = np.zeros_like(through)
        first: dict[str, int] = {}
        for i in idx:
            new = arrays[i]["through"] & ~through
            if new.any():
                label = f"{rows[i]['attack']} {rows[i]['protocol']}"
                first[label] = first.get(label, 0) + int(new.sum())
            through |= arrays[i]["through"]
            wrong |= arrays[i]["wrong"]
        out.append({
            "eps": e,
            "rows": len(idx),
            "missed_and_wrong": float(through.mean()),
            "accuracy": float(1 - wrong.mean()),
            "through_first_by": first,
        })  # fmt: skip
    return out


def tramer_checks(
    worst: list[dict[str, Any]],
    clean: dict[str, np.ndarray],
    robust_accuracy: Callable[[float], float],
    *,
    rows_strong_at: set[float] | frozenset[float] = frozenset(),
) -> list[dict[str, Any]]:
    """One check per eps of the worst case: implied accuracy at eps/2 against the measured one
    (read from the rows at eps/2 when they hold a strong attack, ``rows_strong_at``, else
    ``robust_accuracy(eps / 2)``)."""
    strong = {round(e, 9) for e in rows_strong_at}
    n = len(clean["label"])
    rejected = float(np.mean(clean["flagged"] | (clean["pred"] != clean["label"])))
    tol = TOLERANCE + 1.0 / max(n, 1)
    by_eps = {round(w["eps"], 9): w for w in worst}
    out = []
    for w in worst:
        half = w["eps"] / 2
        if half <= 0:
            continue
        implied = max(0.0, 1.0 - w["missed_and_wrong"] - rejected)
        if round(half, 9) in by_eps and round(half, 9) in strong:
            measured, source = by_eps[round(half, 9)]["accuracy"], "the rows at that eps"
        else:
            measured, source = robust_accuracy(half), "the section's attacks at λ = 0, run for this check"
        ok = implied <= measured + tol
        out.append({
            "eps": w["eps"],
            "half_eps": half,
            "missed_and_wrong": w["missed_and_wrong"],
            "clean_rejected": rejected,
            "implied_accuracy_at_half": implied,
            "measured_accuracy_at_half": measured,
            "measured_with": source,
            "tolerance": tol,
            "conclusive": bool(ok),
            "verdict": (
                f"consistent: letting {pct(w['missed_and_wrong'])} through at eps {w['eps']:g} implies at "
                f"least {pct(implied)} robust accuracy at eps {half:g}; the ensemble keeps "
                f"{pct(measured)} there"
                if ok
                else f"{INCONCLUSIVE}: letting only {pct(w['missed_and_wrong'])} through at eps {w['eps']:g} "
                f"would give a classifier robust on {pct(implied)} of inputs at eps {half:g}, but the "
                f"ensemble keeps only {pct(measured)} there under attack"
            ),
        })  # fmt: skip
    return out


def mark_inconclusive(rows: list[dict[str, Any]], worst: list[dict[str, Any]], checks: list[dict]) -> None:
    """Every row and worst case at an eps whose check failed says so (``tramer``: the verdict)."""
    bad = {c["eps"] for c in checks if not c["conclusive"]}
    for r in [*rows, *worst]:
        r["inconclusive"] = r["eps"] in bad

"""Per-input attack results: what a red team reads to look at the inputs that got through.

ART's metrics return one scalar per attack; a grader needs, for every attacked input, its label,
the clean and adversarial predictions, the score and flag, the distance, and which attack got it
through. ``report.json`` holds these records (``attacks.per_input``) and ``attacks_per_input.csv``
the same rows.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_write

COLUMNS = (
    "method", "input", "label", "clean_pred", "clean_flagged", "attack", "protocol", "eps", "lam",
    "adv_pred", "score", "flagged", "got_through", "linf",
)  # fmt: skip
CSV_NAME = "attacks_per_input.csv"


def per_input_records(
    method: str, clean: dict[str, np.ndarray], rows: list[dict[str, Any]], arrays: list[dict[str, np.ndarray]]
) -> list[dict[str, Any]]:
    """One record per (attacked input, row); ``input`` is the index in the test split."""
    out = []
    for r, a in zip(rows, arrays, strict=True):
        lam = r["params"].get("lam")
        for i in range(len(clean["label"])):
            out.append({
                "method": method,
                "input": i,
                "label": int(clean["label"][i]),
                "clean_pred": int(clean["pred"][i]),
                "clean_flagged": bool(clean["flagged"][i]),
                "attack": r["attack"],
                "protocol": r["protocol"],
                "eps": r["eps"],
                "lam": lam if isinstance(lam, (int, float)) else None if lam is None else str(lam),
                "adv_pred": int(a["adv_pred"][i]),
                "score": float(a["score"][i]),
                "flagged": bool(a["flagged"][i]),
                "got_through": bool(a["through"][i]),
                "linf": float(a["linf"][i]),
            })  # fmt: skip
    return out


def write_csv(records: list[dict[str, Any]], path: Path) -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for rec in records:
        w.writerow({k: ("" if rec[k] is None else rec[k]) for k in COLUMNS})
    atomic_write(path, buf.getvalue())
    return path

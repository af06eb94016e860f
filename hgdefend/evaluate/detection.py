"""The "detection" section: thresholds at a target FPR on clean data, and OOD detection.

Thresholds are fit (through the detector) on the clean *calibration* split and judged on the
held-out clean *test* split, so the realised FPR is an honest check, with an exact binomial
interval. Each OOD set (held-out classes and/or ``--ood DATASET``) is scored against the clean
test split with every score from the scored-splits cache; the paper's entropy score is repeated
with the *fresh* ensemble (seed + 1).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..detectors.detector import ScoreDetector
from ..detectors.metrics import binomial_ci, detection_metrics
from ..vocab import SCORES
from .context import EvalContext
from .formatting import fmt, num_ci, pct, pct_ci, table
from .plots import plot_score_groups

PRIMARY_SCORE = "entropy"
POOR_AUROC = 0.9


def fit_detector(ctx: EvalContext, ensemble: str, score: str) -> ScoreDetector:
    """A detector for one score, fit on the cached clean calibration scores of ``ensemble``."""
    ens = ctx.scored.ensembles[ensemble]
    det = ScoreDetector(
        ctx.ensemble, score, ctx.options.target_fpr, scoring_ensemble=None if ens is ctx.ensemble else ens
    )
    return det.fit_scores(ctx.scored.scores(ensemble, "calib")[score])


def detection_section(ctx: EvalContext) -> dict[str, Any] | None:
    """Thresholds per score at the target FPR, and OOD metrics with intervals and plots."""
    if ctx.data.task != "classification":
        return None
    fpr, seed = ctx.options.target_fpr, ctx.options.seed
    oods = ctx.ood_sets
    splits = ["calib", "test", *(f"ood{i}" for i in range(len(oods)))]
    plan = [("fixed", SCORES), ("fresh", (PRIMARY_SCORE,))]
    ctx.scored.precompute([(e, s) for e, _ in plan for s in splits])
    clean_y = ctx.data.test.y
    thresholds, rows, gate_rows, plots = [], [], [], {}
    for label, names in plan:
        ens = ctx.scored.ensembles[label]
        test_scores = ctx.scored.scores(label, "test")
        clean_wrong = (ctx.scored.prediction(label, "test").predicted.cpu() != clean_y).numpy()
        for name in names:
            det = fit_detector(ctx, label, name)
            flagged = test_scores[name] > det.threshold_
            thresholds.append(
                {
                    "score": name,
                    "ensemble": label,
                    "members": ens.k,
                    "seed": ens.seed,
                    "threshold": det.threshold_,
                    "calibration_fpr": det.calibration_fpr_,
                    "n_calibration": det.n_calibration_,
                    "realised_fpr": float(np.mean(flagged)),
                    "realised_fpr_ci": binomial_ci(int(flagged.sum()), flagged.size),
                    "n_test": int(flagged.size),
                }
            )
            for i, (ood_name, _) in enumerate(oods):
                m = detection_metrics(
                    test_scores[name],
                    ctx.scored.scores(label, f"ood{i}")[name],
                    det.threshold_,
                    target_fpr=fpr,
                    clean_wrong=clean_wrong,
                    seed=seed,
                )
                rows.append({"score": name, "ensemble": label, "ood": ood_name, **m})
                if name == PRIMARY_SCORE and label == "fixed":
                    gate_rows.append(
                        {
                            "name": f"{ood_name} ({name})",
                            "auroc": m["auroc"],
                            "aupr": m["aupr"],
                            "tpr": m["tpr_at_threshold"],
                        }
                    )
            if name == PRIMARY_SCORE and label == "fixed":
                groups = {
                    "clean test": test_scores[name],
                    **{n: ctx.scored.scores(label, f"ood{i}")[name] for i, (n, _) in enumerate(oods)},
                }
                plots = plot_score_groups(
                    groups, ctx.out_dir, score_name=name, threshold=det.threshold_, clean="clean test"
                )
    sec: dict[str, Any] = {
        "target_fpr": fpr,
        "primary_score": PRIMARY_SCORE,
        "calibration_size": len(ctx.data.calib),
        "test_size": len(ctx.data.test),
        "ood_sets": [{"name": n, "size": len(s)} for n, s in oods],
        "thresholds": thresholds,
        "rows": rows,
        "gate_rows": gate_rows,
        "plots": plots,
    }
    if not oods:
        sec["note"] = (
            "No OOD set: only thresholds and the realised FPR on held-out clean data are reported. "
            "Pass --ood DATASET or --in-classes to hold classes out."
        )
    sec["findings"] = [
        f"OOD detection is weak on {r['name']}: AUROC {r['auroc']:.3f} (below {POOR_AUROC:g})."
        for r in gate_rows
        if r["auroc"] < POOR_AUROC
    ]
    return sec


# --------------------------------------------------------------------------- Markdown
def _fpr_too_high(t: dict, target: float) -> bool:
    """Realised FPR above the target by more than 2 binomial SDs plus the conformal slack 1/(n+1)."""
    sd = math.sqrt(target * (1 - target) / t["n_test"])
    return t["realised_fpr"] > target + 2 * sd + 1 / (t["n_calibration"] + 1)


def render_detection(sec: dict[str, Any]) -> list[str]:
    target = sec["target_fpr"]
    lines = [
        f"Thresholds are fit on the clean calibration split ({sec['calibration_size']:,} inputs) at a "
        f"target false-positive rate of {pct(target)}, then checked on the held-out clean test split "
        f'({sec["test_size"]:,} inputs). Higher scores are more suspicious. "fresh" scores with a new '
        f"sample of networks (seed + 1), the paper's protocol. Rates at the threshold carry exact "
        f"(Clopper–Pearson) 95 % intervals; AUROC carries a bootstrap 95 % interval.",
        "",
    ]
    lines += table(
        ["score", "ensemble", "threshold", "calibration FPR", "realised FPR (test) [95 % CI]"],
        [
            [
                t["score"],
                f"{t['ensemble']} ({t['members']}, seed {t['seed']})",
                f"{t['threshold']:.4g}",
                pct(t["calibration_fpr"]),
                pct_ci(t["realised_fpr"], t.get("realised_fpr_ci")),
            ]
            for t in sec["thresholds"]
        ],
    )
    for t in (t for t in sec["thresholds"] if _fpr_too_high(t, target)):
        lines += [
            "",
            f"**The {t['score']} threshold ({t['ensemble']} ensemble) flags {pct(t['realised_fpr'])} "
            f"of held-out clean inputs, more than the {pct(target)} target allows for sampling "
            f"error: the calibration and test splits may differ.**",
        ]
    if sec.get("note"):
        return lines + ["", sec["note"]]
    for ood in sec["ood_sets"]:
        rows = [r for r in sec["rows"] if r["ood"] == ood["name"]]
        lines += ["", f"### Clean test vs {ood['name']} ({ood['size']:,} inputs)", ""]
        lines += table(
            [
                "score",
                "ensemble",
                "AUROC [95 % CI]",
                "AUPR",
                f"TPR at threshold ({pct(target, 0)} FPR) [95 % CI]",
                "FPR at 95 % TPR",
                "clean accuracy after rejection",
            ],
            [
                [
                    r["score"],
                    r["ensemble"],
                    num_ci(r["auroc"], r.get("auroc_ci")),
                    fmt(r["aupr"]),
                    pct_ci(r["tpr_at_threshold"], r.get("tpr_exact_ci")),
                    pct(r["fpr_at_95_tpr"]),
                    f"{pct(r.get('clean_accuracy_after_rejection'), 2)} "
                    f"(from {pct(r.get('clean_accuracy'), 2)})",
                ]
                for r in rows
            ],
        )
        prim = next(
            (r for r in rows if r["score"] == sec["primary_score"] and r["ensemble"] == "fixed"), None
        )
        if prim and prim["auroc"] < POOR_AUROC:
            lines += [
                "",
                f"**{sec['primary_score']} separates {ood['name']} from clean inputs poorly "
                f"(AUROC {fmt(prim['auroc'])}; 0.5 is chance): do not rely on it for this kind "
                f"of input.**",
            ]
        if prim and prim["tpr_at_threshold"] < 0.5:
            lines += [
                "",
                f"At the calibrated threshold only {pct(prim['tpr_at_threshold'])} of "
                f"{ood['name']} inputs are flagged.",
            ]
    plots = sec.get("plots") or {}
    if plots:
        lines += [""] + [f"![{sec['primary_score']} {kind}]({name})" for kind, name in plots.items()]
    return lines

"""The "detection" section of ``hgdefend evaluate`` and its ``--fail-under`` gate.

Thresholds are fit on the clean *calibration* split at the target FPR and judged on the held-out
clean *test* split, so the realised FPR is an honest check. Each OOD set (held-out classes, and/or
``--ood DATASET``) is scored against the clean test split with every score from one batched
forward pass; the paper's entropy score is repeated with a *fresh* ensemble (seed + 1).

Any report section may carry ``gate_rows`` (``[{"name", "auroc", "aupr", "tpr"}, ...]``);
:func:`apply_gate` checks all of them, so other sections (attacks) join the gate by adding rows.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..data import Split, load_ood
from ..ensemble import SampledEnsemble
from ..report import fmt, pct, register_section, table
from ..validation import HgdefendError
from .detector import ScoreDetector
from .metrics import detection_metrics
from .plots import plot_score_groups
from .scores import SCORES, compute_scores

if TYPE_CHECKING:
    from ..evaluation import EvalContext

PRIMARY_SCORE = "entropy"
GATE_METRICS = {"auroc": "auroc", "aupr": "aupr", "tpr": "tpr_at_threshold"}
"""``--fail-under`` key → metric name in a detection row."""
POOR_AUROC = 0.9


# --------------------------------------------------------------------------- gate
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


# --------------------------------------------------------------------------- section
def _score_splits(ens: SampledEnsemble, splits: dict[str, Split], names: tuple[str, ...]) -> dict:
    """{split: {score: np.ndarray}} plus test predictions; one batched forward per split."""
    out = {}
    for split_name, s in splits.items():
        logits = ens.member_logits(s.x, batch_size=512)
        out[split_name] = {
            k: v.cpu().numpy().astype(np.float64) for k, v in compute_scores(logits, names).items()
        }
        if split_name == "test":
            out["test_pred"] = torch.softmax(logits, -1).mean(0).argmax(-1).cpu()
    return out


def _ood_sets(ctx: EvalContext) -> list[tuple[str, Split]]:
    sets = []
    if ctx.data.ood is not None and len(ctx.data.ood):
        sets.append((ctx.data.ood_name or "held-out classes", ctx.data.ood))
    if ctx.options.ood:
        other = load_ood(ctx.options.ood, ctx.data, root=ctx.options.data_root, download=ctx.options.download)
        sets.append((ctx.options.ood, other))
    return sets


def detection_section(ctx: EvalContext) -> dict[str, Any] | None:
    """Thresholds per score at the target FPR, and OOD metrics with bootstrap CIs and plots."""
    if ctx.data.task != "classification":
        return None
    fpr, seed = ctx.options.target_fpr, ctx.options.seed
    oods = _ood_sets(ctx)
    fresh = ctx.hypergan.ensemble(ctx.ensemble.k, seed=seed + 1).to(ctx.device)
    ensembles = [("fixed", ctx.ensemble, SCORES), ("fresh", fresh, (PRIMARY_SCORE,))]
    splits = {
        "calib": ctx.data.calib,
        "test": ctx.data.test,
        **{f"ood{i}": s for i, (_, s) in enumerate(oods)},
    }
    clean_y = ctx.data.test.y
    thresholds, rows, gate_rows, plots = [], [], [], {}
    for label, ens, names in ensembles:
        sc = _score_splits(ens, splits, names)
        clean_wrong = (sc["test_pred"] != clean_y).numpy()
        for name in names:
            det = ScoreDetector(ctx.ensemble, name, fpr, scoring_ensemble=None if label == "fixed" else ens)
            det.fit_scores(sc["calib"][name])
            thresholds.append(
                {
                    "score": name,
                    "ensemble": label,
                    "members": ens.k,
                    "seed": ens.seed,
                    "threshold": det.threshold_,
                    "calibration_fpr": det.calibration_fpr_,
                    "n_calibration": det.n_calibration_,
                    "realised_fpr": float(np.mean(sc["test"][name] > det.threshold_)),
                    "n_test": int(sc["test"][name].size),
                }
            )
            for i, (ood_name, _) in enumerate(oods):
                m = detection_metrics(
                    sc["test"][name],
                    sc[f"ood{i}"][name],
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
                    "clean test": sc["test"][name],
                    **{n: sc[f"ood{i}"][name] for i, (n, _) in enumerate(oods)},
                }
                plots = plot_score_groups(
                    groups, ctx.options.out, score_name=name, threshold=det.threshold_, clean="clean test"
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
    # one-line findings for the report's top (evaluation collects each section's "findings")
    sec["findings"] = [
        f"OOD detection is weak on {r['name']}: AUROC {r['auroc']:.3f} (below {POOR_AUROC:g})."
        for r in gate_rows
        if r["auroc"] < POOR_AUROC
    ]
    return sec


# --------------------------------------------------------------------------- Markdown
def _ci(v: float | None, ci: list[float] | None) -> str:
    if v is None:
        return "—"
    return fmt(v) + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "")


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
        f"sample of networks (seed + 1), the paper's protocol.",
        "",
    ]
    lines += table(
        ["score", "ensemble", "threshold", "calibration FPR", "realised FPR (test)"],
        [
            [
                t["score"],
                f"{t['ensemble']} ({t['members']}, seed {t['seed']})",
                f"{t['threshold']:.4g}",
                pct(t["calibration_fpr"]),
                pct(t["realised_fpr"]),
            ]
            for t in sec["thresholds"]
        ],
    )
    warn = [t for t in sec["thresholds"] if _fpr_too_high(t, target)]
    for t in warn:
        lines += [
            "",
            f"**The {t['score']} threshold ({t['ensemble']} ensemble) flags {pct(t['realised_fpr'])} of "
            f"held-out clean inputs, more than the {pct(target)} target allows for sampling error: the "
            f"calibration and test splits may differ.**",
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
                f"TPR at {pct(target, 0)} FPR [95 % CI]",
                "FPR at 95 % TPR",
                "clean accuracy after rejection",
            ],
            [
                [
                    r["score"],
                    r["ensemble"],
                    _ci(r["auroc"], r.get("auroc_ci")),
                    fmt(r["aupr"]),
                    _ci(r["tpr_at_threshold"], r.get("tpr_ci")),
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
                f"(AUROC {fmt(prim['auroc'])}; 0.5 is chance): do not rely on it for this kind of "
                f"input.**",
            ]
        if prim and prim["tpr_at_threshold"] < 0.5:
            lines += [
                "",
                f"At the calibrated threshold only {pct(prim['tpr_at_threshold'])} of {ood['name']} "
                f"inputs are flagged.",
            ]
    plots = sec.get("plots") or {}
    if plots:
        lines += [""] + [f"![{sec['primary_score']} {kind}]({name})" for kind, name in plots.items()]
    return lines


def render_gate(sec: dict[str, Any]) -> list[str]:
    limits = ", ".join(f"{k} >= {v:g}" for k, v in sec["fail_under"].items())
    head = f"**{'PASSED' if sec['passed'] else 'FAILED'}** (fail under: {limits})."
    rows = [
        [c["metric"], c["on"], fmt(c["value"]), f"{c['limit']:g}", "yes" if c["passed"] else "**no**"]
        for c in sec["checks"]
    ]
    lines = [head, ""] + (table(["metric", "on", "value", "limit", "passed"], rows) if rows else [])
    return lines + [f"- {f}" for f in sec["failures"]]


register_section("detection", "Detection (threshold at a target FPR; OOD)", render_detection)
register_section("gate", "Gate", render_gate)

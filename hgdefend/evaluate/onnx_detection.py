"""``evaluate --onnx``: detection by the exported file, judged by its own outputs.

:func:`onnx_detection_section` replaces the torch detection section for an exported file: the
file's baked-in threshold, judged by the graph's own ``is_adversarial`` output — realised FPR on the
held-out clean test split with an exact binomial interval, and per OOD set AUROC (bootstrap
interval) and TPR at the threshold.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..detectors.metrics import binomial_ci, detection_metrics
from .context import EvalContext
from .detection import POOR_AUROC
from .formatting import fmt, num_ci, pct, pct_ci, table
from .onnx_source import NAME
from .plots import plot_score_groups


def onnx_detection_section(ctx: EvalContext) -> dict[str, Any] | None:
    """The baked-in threshold judged by the graph's own flags, and OOD detection."""
    if ctx.data.task != "classification":
        return None
    det = ctx.onnx.detector
    score, thr = det.score, det.threshold
    target = det.target_fpr if det.target_fpr is not None else ctx.options.target_fpr
    oods = ctx.ood_sets
    splits = ["calib", "test", *(f"ood{i}" for i in range(len(oods)))]
    ctx.scored.precompute([(NAME, s) for s in splits])
    test_out = ctx.scored.outputs(NAME, "test")
    test_scores = ctx.scored.scores(NAME, "test")[score]
    clean_wrong = test_out["predicted_class"] != ctx.data.test.y.cpu().numpy()
    thresholds, rows, gate_rows, plots, findings = [], [], [], {}, []
    if thr is not None:
        calib_flags = ctx.scored.outputs(NAME, "calib")["is_adversarial"]
        flags = test_out["is_adversarial"]
        thresholds.append(
            {
                "score": score,
                "ensemble": NAME,
                "members": det.k,
                "seed": det.seed,
                "threshold": thr,
                "threshold_source": det.metadata.get("threshold_source"),
                "calibration_fpr": float(np.mean(calib_flags)),
                "n_calibration": int(det.metadata.get("n_calibration") or 0),
                "realised_fpr": float(np.mean(flags)),
                "realised_fpr_ci": binomial_ci(int(flags.sum()), flags.size),
                "n_test": int(flags.size),
            }
        )
    for i, (ood_name, _) in enumerate(oods):
        ood_out = ctx.scored.outputs(NAME, f"ood{i}")
        ood_scores = ctx.scored.scores(NAME, f"ood{i}")[score]
        # Without a threshold, AUROC / AUPR / FPR at 95 % TPR only (the rates at a threshold are dropped).
        m = detection_metrics(
            test_scores,
            ood_scores,
            thr if thr is not None else float(max(test_scores.max(), ood_scores.max())),
            target_fpr=target,
            clean_wrong=clean_wrong,
            seed=ctx.options.seed,
        )
        if thr is None:
            for key in ("tpr_at_threshold", "tpr_exact_ci", "tpr_ci", "realised_fpr", "realised_fpr_exact_ci",
                        "threshold", "clean_accuracy_after_rejection", "clean_rejected"):  # fmt: skip
                m[key] = None
        else:
            graph = ood_out["is_adversarial"]
            m["flagged_by_graph"] = float(np.mean(graph))
            m["flag_disagreements"] = int((graph != (ood_scores > thr)).sum())
            if m["flag_disagreements"]:
                findings.append(
                    f"The exported graph's is_adversarial disagrees with score > threshold on "
                    f"{m['flag_disagreements']} {ood_name} inputs."
                )
        rows.append({"score": score, "ensemble": NAME, "ood": ood_name, **m})
        gate_rows.append({"name": f"{ood_name} ({score}, exported file)", "auroc": m["auroc"],
                          "aupr": m["aupr"], "tpr": m["tpr_at_threshold"]})  # fmt: skip
        if m["auroc"] < POOR_AUROC:
            findings.append(
                f"OOD detection is weak on {ood_name}: AUROC {m['auroc']:.3f} (below {POOR_AUROC:g})."
            )
    groups = {
        "clean test": test_scores,
        **{n: ctx.scored.scores(NAME, f"ood{i}")[score] for i, (n, _) in enumerate(oods)},
    }
    plots = plot_score_groups(groups, ctx.out_dir, score_name=score, threshold=thr, clean="clean test")
    sec: dict[str, Any] = {
        "source": "onnx",
        "target_fpr": target,
        "target_fpr_from": "export" if det.target_fpr is not None else "--target-fpr (none in the file)",
        "primary_score": score,
        "primary_ensemble": NAME,
        "calibration_size": len(ctx.data.calib),
        "test_size": len(ctx.data.test),
        "ood_sets": [{"name": n, "size": len(s)} for n, s in oods],
        "thresholds": thresholds,
        "rows": rows,
        "gate_rows": gate_rows,
        "plots": plots,
        "invalid_inputs": {s: int((~ctx.scored.outputs(NAME, s)["input_valid"]).sum()) for s in splits},
        "findings": findings,
    }
    if thr is None:
        sec["note_threshold"] = (
            "The file was exported without a threshold (no is_adversarial output): only AUROC-type "
            "figures are reported."
        )
    if not oods:
        sec["note"] = (
            "No OOD set: only the threshold's realised FPR on held-out clean data is reported. Pass --ood "
            "DATASET or --in-classes to hold classes out."
        )
    return sec


def render_onnx_detection(sec: dict[str, Any]) -> list[str]:
    target = sec["target_fpr"]
    lines = [
        f"The exported file is judged with its own outputs: the threshold baked in at export and the "
        f"graph's is_adversarial flag (no refit). Rates are measured on the held-out clean test split "
        f"({sec['test_size']:,} inputs) and carry exact (Clopper–Pearson) 95 % intervals; AUROC carries a "
        f"bootstrap 95 % interval. Target FPR {pct(target)} ({sec['target_fpr_from']}).",
        "",
    ]
    if sec["thresholds"]:
        lines += table(
            [
                "score",
                "threshold",
                "how it was set",
                "flagged (calibration split)",
                "realised FPR (test) [95 % CI]",
            ],
            [
                [
                    t["score"],
                    f"{t['threshold']:.6g}",
                    t.get("threshold_source") or "—",
                    pct(t["calibration_fpr"]),
                    pct_ci(t["realised_fpr"], t.get("realised_fpr_ci")),
                ]
                for t in sec["thresholds"]
            ],
        )
    if sec.get("note_threshold"):
        lines += ["", sec["note_threshold"]]
    bad = {k: v for k, v in sec.get("invalid_inputs", {}).items() if v}
    if bad:
        lines += ["", f"Inputs the graph marked invalid (and flagged): {bad}."]
    if sec.get("note"):
        return lines + ["", sec["note"]]
    lines += [""]
    lines += table(
        [
            "OOD set",
            "score",
            "AUROC [95 % CI]",
            "AUPR",
            "TPR at the threshold [95 % CI]",
            "FPR at 95 % TPR",
            "clean accuracy after rejection",
        ],
        [
            [
                f"{r['ood']} ({next(o['size'] for o in sec['ood_sets'] if o['name'] == r['ood']):,})",
                r["score"],
                num_ci(r["auroc"], r.get("auroc_ci")),
                fmt(r["aupr"]),
                pct_ci(r["tpr_at_threshold"], r.get("tpr_exact_ci")),
                pct(r["fpr_at_95_tpr"]),
                f"{pct(r.get('clean_accuracy_after_rejection'), 2)} (from {pct(r.get('clean_accuracy'), 2)})",
            ]
            for r in sec["rows"]
        ],
    )
    plots = sec.get("plots") or {}
    if plots:
        lines += [""] + [f"![{sec['primary_score']} {kind}]({name})" for kind, name in plots.items()]
    return lines


__all__ = ["onnx_detection_section", "render_onnx_detection"]

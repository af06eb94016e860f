"""Detection metrics through scikit-learn, with bootstrap confidence intervals.

"Positive" = the input should be flagged (adversarial or OOD). Scores are oriented so higher is
more suspicious (see ``scores.py``).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from ..validation import HgdefendError, check_fraction


def _as_scores(a: object, name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != 1:
        raise HgdefendError(f"{name}: expected a 1-D array of scores, got shape {arr.shape}")
    if arr.size == 0:
        raise HgdefendError(f"{name}: is empty")
    if not np.all(np.isfinite(arr)):
        raise HgdefendError(f"{name}: contains NaN or infinite scores")
    return arr


def _as_mask(a: object, n: int, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.shape != (n,):
        raise HgdefendError(f"{name}: expected shape ({n},) to match the scores, got {arr.shape}")
    return arr.astype(bool)


def fpr_at_tpr(y_true: np.ndarray, scores: np.ndarray, tpr_level: float = 0.95) -> float:
    """Smallest false-positive rate at which at least ``tpr_level`` of positives are flagged."""
    fpr, tpr, _ = roc_curve(y_true, scores)
    return float(fpr[np.searchsorted(tpr, tpr_level, side="left")])


def detection_metrics(
    clean_scores: object,
    suspect_scores: object,
    threshold: float,
    *,
    target_fpr: float,
    suspect_wrong: object | None = None,
    clean_wrong: object | None = None,
    n_bootstrap: int = 200,
    seed: int = 0,
) -> dict:
    """AUROC, AUPR, TPR at the threshold, FPR at 95 % TPR, realised FPR, with 95 % bootstrap CIs.

    ``clean_scores`` must come from held-out clean data (not the calibration split the threshold
    was fit on), so ``realised_fpr`` is an honest check of the target. ``suspect_wrong`` (bool per
    suspect input: the ensemble misclassifies it) gives the joint rate "misclassified and not
    flagged" — the attacker's real success; ``clean_wrong`` gives accuracy after rejection.
    """
    clean = _as_scores(clean_scores, "clean_scores")
    suspect = _as_scores(suspect_scores, "suspect_scores")
    check_fraction(target_fpr, "target_fpr")
    thr = float(threshold)
    if not np.isfinite(thr):
        raise HgdefendError(f"threshold: expected a finite number, got {threshold!r}")
    y = np.r_[np.zeros(clean.size), np.ones(suspect.size)]
    s = np.r_[clean, suspect]
    out: dict = {
        "n_clean": int(clean.size),
        "n_suspect": int(suspect.size),
        "threshold": thr,
        "target_fpr": float(target_fpr),
        "auroc": float(roc_auc_score(y, s)),
        "aupr": float(average_precision_score(y, s)),
        "tpr_at_threshold": float(np.mean(suspect > thr)),
        "realised_fpr": float(np.mean(clean > thr)),
        "fpr_at_95_tpr": fpr_at_tpr(y, s, 0.95),
    }
    flagged = suspect > thr
    if suspect_wrong is not None:
        wrong = _as_mask(suspect_wrong, suspect.size, "suspect_wrong")
        out["suspect_error_rate"] = float(wrong.mean())
        out["missed_and_wrong"] = float(np.mean(wrong & ~flagged))
    if clean_wrong is not None:
        cw = _as_mask(clean_wrong, clean.size, "clean_wrong")
        kept = clean <= thr
        out["clean_accuracy"] = float(1 - cw.mean())
        out["clean_accuracy_after_rejection"] = float(1 - cw[kept].mean()) if kept.any() else None
        out["clean_rejected"] = float(1 - kept.mean())
    if n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        aurocs, tprs = [], []
        for _ in range(int(n_bootstrap)):
            c = clean[rng.integers(0, clean.size, clean.size)]
            a = suspect[rng.integers(0, suspect.size, suspect.size)]
            aurocs.append(roc_auc_score(np.r_[np.zeros(c.size), np.ones(a.size)], np.r_[c, a]))
            tprs.append(np.mean(a > thr))
        out["auroc_ci"] = [float(np.percentile(aurocs, 2.5)), float(np.percentile(aurocs, 97.5))]
        out["tpr_ci"] = [float(np.percentile(tprs, 2.5)), float(np.percentile(tprs, 97.5))]
        out["n_bootstrap"] = int(n_bootstrap)
    return out

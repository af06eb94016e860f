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


def binomial_ci(k: int, n: int, level: float = 0.95) -> list[float]:
    """Exact (Clopper–Pearson) interval for a rate ``k / n``: how far a realised FPR or TPR at a
    fixed threshold can be from the true rate, given only ``n`` inputs."""
    from scipy.stats import binomtest

    if n <= 0:
        raise HgdefendError(f"n: a rate needs at least one input, got n={n}")
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="exact")
    return [float(ci.low), float(ci.high)]


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
    """AUROC, AUPR, TPR at the threshold, FPR at 95 % TPR, realised FPR, with 95 % intervals: exact
    binomial ones for the two rates at the threshold, bootstrap ones for AUROC (and TPR).

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
    out["tpr_exact_ci"] = binomial_ci(int(flagged.sum()), suspect.size)
    out["realised_fpr_exact_ci"] = binomial_ci(int((clean > thr).sum()), clean.size)
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
        aurocs, tprs = bootstrap_auroc_tpr(clean, suspect, thr, int(n_bootstrap), seed)
        out["auroc_ci"] = [float(np.percentile(aurocs, 2.5)), float(np.percentile(aurocs, 97.5))]
        out["tpr_ci"] = [float(np.percentile(tprs, 2.5)), float(np.percentile(tprs, 97.5))]
        out["n_bootstrap"] = int(n_bootstrap)
    return out


def bootstrap_auroc_tpr(clean: np.ndarray, suspect: np.ndarray, threshold: float, n_bootstrap: int,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """AUROC and TPR on ``n_bootstrap`` resamples (with replacement, each group on its own).

    A resample is a vector of multiplicities, so the Mann–Whitney form of AUROC (P[suspect > clean]
    + ½ P[tie]) is a weighted sum over pairs computed for all resamples at once from cumulative
    counts over the sorted clean scores — the same number ``roc_auc_score`` gives for the resample
    (checked in the tests), without calling it hundreds of times.
    """
    rng = np.random.default_rng(seed)
    n0, n1 = clean.size, suspect.size
    cs = np.sort(clean)
    below = np.searchsorted(cs, suspect, side="left")  # clean scores < suspect_i (sorted positions)
    upto = np.searchsorted(cs, suspect, side="right")  # clean scores <= suspect_i
    aurocs = np.empty(n_bootstrap)
    tprs = np.empty(n_bootstrap)
    flagged = (suspect > threshold).astype(np.float64)
    chunk = max(1, 2_000_000 // max(n0, n1))  # bound memory at a few tens of MB
    for b0 in range(0, n_bootstrap, chunk):
        b = min(chunk, n_bootstrap - b0)
        w_clean = rng.multinomial(n0, np.full(n0, 1.0 / n0), size=b)  # multiplicity of each sorted clean
        w_susp = rng.multinomial(n1, np.full(n1, 1.0 / n1), size=b)
        cum = np.zeros((b, n0 + 1))
        np.cumsum(w_clean, axis=1, out=cum[:, 1:])
        wins = 0.5 * (cum[:, below] + cum[:, upto])  # per suspect_i: #clean below + ½ #clean tied
        aurocs[b0 : b0 + b] = (w_susp * wins).sum(1) / (n0 * n1)
        tprs[b0 : b0 + b] = (w_susp * flagged).sum(1) / n1
    return aurocs, tprs

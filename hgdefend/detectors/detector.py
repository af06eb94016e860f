"""Detectors, scikit-learn style: ``fit`` on clean calibration data sets a threshold at a target
false-positive rate; ``score`` and ``predict`` then flag suspicious inputs."""

from __future__ import annotations

import math

import numpy as np

from ..ensemble import SampledEnsemble
from ..validation import HgdefendError, check_fraction
from .scores import SCORE_FUNCTIONS, check_score_name

_EPS = 1e-9  # absorbs float error: 0.9 / 0.1 is 9.000000000000002, and 9 samples do suffice


def _conformal_rank(n: int, target_fpr: float) -> int:
    return math.ceil((n + 1) * (1 - target_fpr) - _EPS)


def min_calibration_size(target_fpr: float) -> int:
    """Smallest n for which the conformal threshold below exists: (n + 1)(1 − α) <= n."""
    target_fpr = check_fraction(target_fpr, "target_fpr")
    return max(1, math.ceil((1 - target_fpr) / target_fpr - _EPS))


def conformal_threshold(clean_scores: np.ndarray, target_fpr: float) -> float:
    """The ⌈(n+1)(1−α)⌉-th smallest clean score: a fresh clean input exceeds it with prob. <= α.

    (Split-conformal quantile; exchangeability of calibration and test clean data is assumed.)
    """
    target_fpr = check_fraction(target_fpr, "target_fpr")
    scores = np.asarray(clean_scores, dtype=np.float64)
    if scores.ndim != 1:
        raise HgdefendError(f"scores: expected a 1-D array of calibration scores, got shape {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise HgdefendError("scores: calibration scores contain NaN or infinite values")
    n = scores.size
    need = min_calibration_size(target_fpr)
    if n < need:
        raise HgdefendError(
            f"x_calib: {n} calibration samples are too few for target_fpr={target_fpr:g}; "
            f"need at least {need}"
        )
    rank = min(n, _conformal_rank(n, target_fpr))
    return float(np.sort(scores)[rank - 1])


class ScoreDetector:
    """Flags inputs whose ensemble score exceeds a threshold calibrated on clean data.

    The ensemble is fixed at construction (its seed is recorded in ``ensemble_seed_``). Pass
    ``scoring_ensemble`` to score with a *fresh* sample of networks (the paper's protocol: the
    attacker never saw the weights that judge the input).
    """

    def __init__(
        self,
        ensemble: SampledEnsemble,
        score: str = "entropy",
        target_fpr: float = 0.05,
        *,
        scoring_ensemble: SampledEnsemble | None = None,
        batch_size: int = 1024,
    ) -> None:
        self.ensemble = ensemble
        self.score_name = check_score_name(score)
        self.target_fpr = check_fraction(target_fpr, "target_fpr")
        self.scoring_ensemble = scoring_ensemble
        self.batch_size = int(batch_size)

    @property
    def active_ensemble(self) -> SampledEnsemble:
        return self.ensemble if self.scoring_ensemble is None else self.scoring_ensemble

    def score(self, x: object) -> np.ndarray:
        ens = self.active_ensemble
        logits = ens.member_logits(x, batch_size=self.batch_size)
        s = SCORE_FUNCTIONS[self.score_name](logits).cpu().numpy().astype(np.float64)
        if not np.all(np.isfinite(s)):  # NaN > threshold is False: it would pass unflagged
            raise HgdefendError(
                f"scores: the ensemble gave NaN or infinite {self.score_name} scores for "
                f"{int(np.sum(~np.isfinite(s)))} inputs; check the model weights"
            )
        return s

    def fit(self, x_calib: object, y: object = None) -> ScoreDetector:
        """Set ``threshold_`` so that about ``target_fpr`` of clean inputs are flagged."""
        return self.fit_scores(self.score(x_calib))

    def fit_scores(self, calib_scores: object) -> ScoreDetector:
        """``fit`` from scores already computed with ``active_ensemble`` on clean calibration data
        (lets a report fit one detector per score from a single batched forward pass)."""
        s = np.asarray(calib_scores, dtype=np.float64)
        self.threshold_ = conformal_threshold(s, self.target_fpr)
        self.calibration_fpr_ = float(np.mean(s > self.threshold_))
        self.n_calibration_ = int(s.size)
        self.ensemble_seed_ = self.ensemble.seed
        self.scoring_seed_ = self.active_ensemble.seed
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "threshold_"):
            raise HgdefendError("detector: call fit(x_calib) before predict()")

    def predict(self, x: object) -> np.ndarray:
        """True where the input is flagged (adversarial or out-of-distribution)."""
        self._check_fitted()
        return self.score(x) > self.threshold_

    def with_fresh_ensemble(self, k: int | None, seed: int, hypergan) -> ScoreDetector:
        """A copy that scores with a new sample of ``k`` networks from ``hypergan`` (threshold kept
        only if you refit; call ``fit`` again on clean data for a calibrated threshold)."""
        fresh = hypergan.ensemble(k or self.ensemble.k, seed=seed).to(self.ensemble.device)
        det = ScoreDetector(self.ensemble, self.score_name, self.target_fpr,
                            scoring_ensemble=fresh, batch_size=self.batch_size)  # fmt: skip
        return det

    def describe(self) -> dict:
        out = {"score": self.score_name, "target_fpr": self.target_fpr,
               "ensemble": self.ensemble.describe()}  # fmt: skip
        if self.scoring_ensemble is not None:
            out["scoring_ensemble"] = self.scoring_ensemble.describe()
        if hasattr(self, "threshold_"):
            out.update(threshold=self.threshold_, calibration_fpr=self.calibration_fpr_,
                       n_calibration=self.n_calibration_)  # fmt: skip
        return out


class EntropyDetector(ScoreDetector):
    """The paper's detector: predictive entropy of the mean member prediction."""

    def __init__(self, ensemble: SampledEnsemble, target_fpr: float = 0.05, **kw) -> None:
        super().__init__(ensemble, "entropy", target_fpr, **kw)

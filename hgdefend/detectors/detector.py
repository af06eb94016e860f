"""Detectors that follow scikit-learn's outlier-detector rules: ``fit`` on clean calibration data sets
a threshold at a target false-positive rate; ``predict`` then gives -1 (flagged) / +1, as
``IsolationForest`` does. ``flag`` and ``scores`` are the same answers in hgdefend's own terms."""

from __future__ import annotations

import math

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.exceptions import NotFittedError

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


class ScoreDetector(OutlierMixin, BaseEstimator):
    """Flags inputs whose ensemble score (higher = more suspicious) exceeds a threshold calibrated on
    clean data.

    A scikit-learn estimator: the constructor only stores its arguments (so ``get_params``,
    ``set_params`` and ``sklearn.base.clone`` work) and ``fit`` checks them, raising
    :class:`~hgdefend.HgdefendError` named after the bad argument. Pass ``scoring_ensemble`` to score
    with a *fresh* sample of networks (the paper's protocol: the attacker never saw the weights that
    judge the input); the threshold is then calibrated on that ensemble's scores.

    Sign conventions: :meth:`scores` is hgdefend's suspicion score (higher = more suspicious);
    :meth:`score_samples` is its negative and :meth:`decision_function` is ``threshold_ − scores``,
    so that, as everywhere in scikit-learn, lower means more abnormal and ``decision_function < 0``
    means flagged. :meth:`predict` returns -1 for flagged inputs, +1 for the rest; :meth:`flag` the
    same as booleans (True = flagged). Using a detector before ``fit`` raises scikit-learn's
    ``NotFittedError`` (a ``ValueError``).
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
        self.score = score
        self.target_fpr = target_fpr
        self.scoring_ensemble = scoring_ensemble
        self.batch_size = batch_size

    # ------------------------------------------------------------------ checks
    def _check_scoring_params(self) -> None:
        """What :meth:`scores` needs; checked at use, not in ``__init__`` (scikit-learn's rule)."""
        check_score_name(self.score)
        if not isinstance(self.ensemble, SampledEnsemble):
            raise HgdefendError(
                f"ensemble: expected a hgdefend SampledEnsemble (e.g. hypergan.ensemble(k)), "
                f"got {type(self.ensemble).__name__}"
            )
        if self.scoring_ensemble is not None and not isinstance(self.scoring_ensemble, SampledEnsemble):
            raise HgdefendError(
                f"scoring_ensemble: expected a hgdefend SampledEnsemble or None, "
                f"got {type(self.scoring_ensemble).__name__}"
            )
        b = self.batch_size
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1:
            raise HgdefendError(f"batch_size: expected an integer >= 1, got {b!r}")

    def _check_params(self) -> None:
        self._check_scoring_params()
        try:
            check_fraction(self.target_fpr, "target_fpr")
        except (TypeError, ValueError) as e:  # float("high") fails before check_fraction can name it
            if isinstance(e, HgdefendError):
                raise
            raise HgdefendError(f"target_fpr: expected a value in (0, 1), got {self.target_fpr!r}") from None

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "threshold_")

    def _check_fitted(self) -> None:
        if not hasattr(self, "threshold_"):
            raise NotFittedError(
                f"detector: this {type(self).__name__} is not fitted; call fit(x_calib) on clean "
                "calibration data (or fit_scores) first"
            )

    @property
    def active_ensemble(self) -> SampledEnsemble:
        """The ensemble that scores inputs: ``scoring_ensemble`` if given, else ``ensemble``."""
        return self.ensemble if self.scoring_ensemble is None else self.scoring_ensemble

    # ------------------------------------------------------------------ fitting
    def fit(self, x_calib: object, y: object = None) -> ScoreDetector:
        """Set ``threshold_`` to the split-conformal quantile of clean calibration scores, so a fresh
        clean input is flagged with probability <= ``target_fpr`` (``y`` is ignored)."""
        self._check_params()
        return self.fit_scores(self.scores(x_calib))

    def fit_scores(self, calib_scores: object) -> ScoreDetector:
        """``fit`` from scores already computed with ``active_ensemble`` on clean calibration data
        (lets a report fit one detector per score from a single batched forward pass)."""
        self._check_params()
        s = np.asarray(calib_scores, dtype=np.float64)
        self.threshold_ = conformal_threshold(s, float(self.target_fpr))
        self.offset_ = -self.threshold_
        self.calibration_fpr_ = float(np.mean(s > self.threshold_))
        self.n_calibration_ = int(s.size)
        self.ensemble_seed_ = self.ensemble.seed
        self.scoring_seed_ = self.active_ensemble.seed
        return self

    # ------------------------------------------------------------------ hgdefend's terms
    def scores(self, x: object) -> np.ndarray:
        """Suspicion scores ``[B]`` float64, higher = more suspicious (needs no ``fit``)."""
        self._check_scoring_params()
        logits = self.active_ensemble.member_logits(x, batch_size=int(self.batch_size))
        s = SCORE_FUNCTIONS[self.score](logits).cpu().numpy().astype(np.float64)
        if not np.all(np.isfinite(s)):  # NaN > threshold is False: it would pass unflagged
            raise HgdefendError(
                f"scores: the ensemble gave NaN or infinite {self.score} scores for "
                f"{int(np.sum(~np.isfinite(s)))} inputs; check the model weights"
            )
        return s

    def flag(self, x: object) -> np.ndarray:
        """Boolean ``[B]``: True where the input is flagged (adversarial or out-of-distribution)."""
        self._check_fitted()
        return self.scores(x) > self.threshold_

    # ------------------------------------------------------------------ scikit-learn's terms
    def score_samples(self, x: object) -> np.ndarray:
        """``-scores(x)``: scikit-learn's orientation, lower = more abnormal."""
        self._check_fitted()
        return -self.scores(x)

    def decision_function(self, x: object) -> np.ndarray:
        """``score_samples(x) - offset_`` = ``threshold_ - scores(x)``: negative exactly where flagged."""
        return self.score_samples(x) - self.offset_

    def predict(self, x: object) -> np.ndarray:
        """-1 for flagged inputs, +1 for the rest (int), as scikit-learn's outlier detectors."""
        return np.where(self.flag(x), -1, 1)

    def describe(self) -> dict:
        out = {"score": self.score, "target_fpr": self.target_fpr,
               "ensemble": self.ensemble.describe()}  # fmt: skip
        if self.scoring_ensemble is not None:
            out["scoring_ensemble"] = self.scoring_ensemble.describe()
        if hasattr(self, "threshold_"):
            out.update(threshold=self.threshold_, calibration_fpr=self.calibration_fpr_,
                       n_calibration=self.n_calibration_)  # fmt: skip
        return out


class EntropyDetector(ScoreDetector):
    """The paper's detector: predictive entropy of the mean member prediction (``score`` is fixed)."""

    score = "entropy"

    def __init__(
        self,
        ensemble: SampledEnsemble,
        target_fpr: float = 0.05,
        *,
        scoring_ensemble: SampledEnsemble | None = None,
        batch_size: int = 1024,
    ) -> None:
        self.ensemble = ensemble
        self.target_fpr = target_fpr
        self.scoring_ensemble = scoring_ensemble
        self.batch_size = batch_size

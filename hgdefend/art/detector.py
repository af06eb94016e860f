"""``EntropyEvasionDetector`` (an ART ``EvasionDetector`` over hgdefend's score detector) and
``detector_classifier``, which joins classifier and detector into one differentiable ART classifier
for adaptive attacks."""

from __future__ import annotations

from typing import Any

import numpy as np
from art.defences.detector.evasion import EvasionDetector
from torch import Tensor

from ..detectors.detector import ScoreDetector
from ..detectors.scores import check_score_name
from ..validation import HgdefendError, check_fraction
from .classifier import HyperGANClassifier
from .modules import DetectorLogits, EnsembleLogits, MemberLogits

INVALID_MODES = ("flag", "error")


# --------------------------------------------------------------------------- the ART detector
class EntropyEvasionDetector(EvasionDetector):
    """ART ``EvasionDetector`` over hgdefend's :class:`~hgdefend.detectors.detector.ScoreDetector`.

    ``fit(x)`` calibrates the threshold on *clean* inputs at ``target_fpr`` (labels are not used);
    ``detect(x)`` returns ``(report, is_adversarial)`` with the per-input scores and the threshold in
    the report. Inputs go through the classifier's preprocessing first, as they do for prediction.
    ``scoring_seed`` scores with a fresh sample of networks instead of the classifier's bank (the
    paper's protocol: the attacker never saw the weights that judge the input).

    Inputs with NaN, ±inf or values outside the classifier's ``clip_values`` are *flagged* one by
    one (score NaN), never passed unflagged; ``invalid="error"`` refuses the batch instead, naming
    the first such input. Calibration data must be valid.
    """

    defence_params = ["target_fpr", "score", "invalid"]

    def __init__(
        self,
        classifier: HyperGANClassifier,
        target_fpr: float = 0.05,
        *,
        score: str = "entropy",
        scoring_seed: int | None = None,
        invalid: str = "flag",
    ) -> None:
        super().__init__()
        if invalid not in INVALID_MODES:
            raise HgdefendError(f"invalid: expected one of {INVALID_MODES}, got {invalid!r}")
        self.invalid = invalid
        if not isinstance(classifier, HyperGANClassifier):
            raise HgdefendError(f"classifier: expected a HyperGANClassifier, got {type(classifier).__name__}")
        if isinstance(classifier.model.logits, DetectorLogits):
            raise HgdefendError(
                "classifier: pass the plain HyperGANClassifier, not the combined detector model"
            )
        if scoring_seed is not None and classifier.hypergan is None:
            raise HgdefendError("scoring_seed: the classifier has no HyperGAN to draw fresh networks from")
        self.classifier = classifier
        self.target_fpr = check_fraction(target_fpr, "target_fpr")
        self.score = check_score_name(score)
        self.scoring_seed = scoring_seed

    def _prepare(self, x: Any, name: str = "x", *, flag: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(preprocessed inputs, per-input validity). Invalid inputs raise unless ``flag``; flagged
        ones are replaced by the range's low end before scoring (their scores are discarded)."""
        clf = self.classifier
        x = clf._check_x(x, name, finite=False)
        if isinstance(x, Tensor):
            x = x.detach().cpu().numpy()
        ok = np.isfinite(x).reshape(len(x), -1).all(axis=1)
        lo = hi = None
        if clf.clip_values is not None:
            lo, hi = (np.asarray(v, dtype=np.float32) for v in clf.clip_values)
            with np.errstate(invalid="ignore"):
                inside = (x >= lo - 1e-5) & (x <= hi + 1e-5)
            ok &= inside.reshape(len(x), -1).all(axis=1)
        if not ok.all():
            bad = np.flatnonzero(~ok)
            if not flag:
                where = (
                    ""
                    if lo is None
                    else f" or outside the classifier's clip_values [{np.min(lo):g}, {np.max(hi):g}]"
                )
                raise HgdefendError(
                    f"{name}: input {int(bad[0])} ({len(bad)} in all) has NaN or infinite values{where}"
                    + ("; detect() flags such inputs unless invalid='error'" if name == "x" else "")
                )
            x = x.copy()
            x[bad] = 0.0 if lo is None else np.broadcast_to(lo, x.shape[1:])
        x_pre, _ = clf._apply_preprocessing(x, y=None, fit=False)
        return np.ascontiguousarray(x_pre, dtype=np.float32), ok

    def fit(self, x: np.ndarray, y: np.ndarray | None = None, batch_size: int = 128, nb_epochs: int = 20,
            **kwargs: Any) -> EntropyEvasionDetector:  # fmt: skip
        """Calibrate the threshold on clean ``x`` (``y`` and ``nb_epochs`` are unused: nothing is trained)."""
        clf = self.classifier
        ens = clf.ensemble()
        scoring = None
        if self.scoring_seed is not None:
            scoring = clf.hypergan.ensemble(clf.members, seed=self.scoring_seed).to(ens.device)
            scoring.value_range = None
        self.detector_ = ScoreDetector(ens, self.score, self.target_fpr, scoring_ensemble=scoring,
                                       batch_size=int(batch_size))  # fmt: skip
        self.detector_.fit(self._prepare(x, "x_calib")[0])
        self._bank_version = clf._members_module.bank_version
        return self

    @property
    def threshold(self) -> float:
        self._check_fitted()
        return self.detector_.threshold_

    def _check_fitted(self) -> None:
        if not hasattr(self, "detector_"):
            raise HgdefendError("detector: call fit(x_clean) before detect()")
        if self.scoring_seed is None and self.classifier._members_module.bank_version != self._bank_version:
            raise HgdefendError("detector: the classifier's bank was resampled after fit; call fit again")

    def _scores(self, x: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        self._check_fitted()
        self.detector_.batch_size = int(batch_size)
        x_pre, ok = self._prepare(x, "x", flag=self.invalid == "flag")
        s = self.detector_.scores(x_pre)
        return np.where(ok, s, np.nan), ok

    def scores(self, x: np.ndarray, batch_size: int = 128) -> np.ndarray:
        """Per-input scores (higher = more suspicious); NaN for an invalid input."""
        return self._scores(x, batch_size)[0]

    def detect(self, x: np.ndarray, batch_size: int = 128, **kwargs: Any) -> tuple[dict, np.ndarray]:
        s, ok = self._scores(x, batch_size)
        with np.errstate(invalid="ignore"):
            flagged = ~ok | (s > self.detector_.threshold_)  # ScoreDetector.flag's rule; invalid: flagged
        report = {"scores": s, "threshold": self.detector_.threshold_, "score": self.score,
                  "target_fpr": self.target_fpr, "flagged_fraction": float(flagged.mean()),
                  "input_valid": ok, "detector": self.detector_.describe()}  # fmt: skip
        return report, flagged

    def _check_params(self) -> None:
        if self.invalid not in INVALID_MODES:
            raise HgdefendError(f"invalid: expected one of {INVALID_MODES}, got {self.invalid!r}")
        check_fraction(self.target_fpr, "target_fpr")
        check_score_name(self.score)


# --------------------------------------------------------------------------- adaptive attacks
def detector_classifier(
    classifier: HyperGANClassifier, detector: EntropyEvasionDetector, *, sharpness: float = 1.0
) -> HyperGANClassifier:
    """Classifier and detector as ONE differentiable ART classifier with ``C + 1`` outputs.

    Output ``C`` is the "adversarial" logit (:class:`DetectorLogits`): argmax ``C`` exactly when the
    detector flags the input. ART's attacks then target both at once — e.g. a *targeted* attack to a
    wrong class must also keep the adversarial logit below it, i.e. stay unflagged. ART's own
    ``DetectorClassifier`` cannot serve here: it has no ``loss_gradient``. The combined model uses the
    detector's ensemble (the classifier's bank unless ``scoring_seed`` was set), its score and its
    calibrated threshold; it has no ``fit`` of its own (refit the parts and combine again).
    """
    if not isinstance(detector, EntropyEvasionDetector):
        raise HgdefendError(f"detector: expected an EntropyEvasionDetector, got {type(detector).__name__}")
    if detector.classifier is not classifier:
        raise HgdefendError("detector: was built on another classifier")
    threshold = detector.threshold  # checks it is fitted and current
    ens = detector.detector_.active_ensemble
    members = MemberLogits(ens.target, ens.params, None, seed=ens.seed, mode="fixed")
    module = EnsembleLogits(members, DetectorLogits(detector.score, threshold, sharpness))
    return HyperGANClassifier(
        module, classifier.loss, classifier.input_shape, classifier.nb_classes + 1,
        clip_values=classifier.clip_values, preprocessing_defences=classifier.preprocessing_defences,
        postprocessing_defences=classifier.postprocessing_defences, preprocessing=classifier.preprocessing,
        device_type="gpu" if classifier.device.type == "cuda" else "cpu",
    )  # fmt: skip

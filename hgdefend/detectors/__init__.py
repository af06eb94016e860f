"""Scores → detectors (thresholds at a target FPR) → metrics and report sections."""

from .detector import EntropyDetector, ScoreDetector, conformal_threshold, min_calibration_size
from .metrics import detection_metrics
from .scores import SCORES, compute_scores

__all__ = [
    "SCORES",
    "EntropyDetector",
    "ScoreDetector",
    "compute_scores",
    "conformal_threshold",
    "detection_metrics",
    "min_calibration_size",
]

"""The evaluation pipeline behind ``hgdefend evaluate``: options → context (data, model, ensembles,
scored-splits cache) → sections (accuracy, calibration, diversity, detection, attacks, gate) →
summary → report files. It sits above the libraries (attacks, detectors, ensembles); nothing below
imports it."""

from .options import AttackOptions, EvaluateOptions
from .pipeline import SECTIONS, Section, run_evaluate

__all__ = ["SECTIONS", "AttackOptions", "EvaluateOptions", "Section", "run_evaluate"]

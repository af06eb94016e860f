"""Adversarial Robustness Toolbox (ART 1.20) adapters: an estimator ART's attacks run on unchanged, an
``EvasionDetector`` built on hgdefend's detector, and a classifier-plus-detector for adaptive attacks.

Why the ensemble lives in the ``nn.Module`` and not in overridden estimator methods: APGD and
AutoAttack build a fresh ``PyTorchClassifier`` around ``estimator.model``, bypassing any overridden
``loss_gradient``. So :class:`EnsembleLogits` returns ``log mean_k softmax(member logits)`` itself —
a valid logit vector whose softmax is the ensemble's mean probability (ART rejects probabilities).

Why a frozen bank of weights by default: C&W and DeepFool check success with extra forwards; a
forward that draws new weights every call makes those checks noise. ``sample_mode="fresh"`` is for
expectation-over-transformation (EOT) style attacks that *want* new weights per call.

This package is ``hgdefend.art``; its modules import the third-party ``art`` package absolutely
(``from art.estimators... import ...``), which Python 3 resolves through ``sys.path`` to the installed
ART, never to ``hgdefend.art`` (no shadowing). Relative imports (``from .modules``) reach our own.

- :mod:`.modules`: the torch modules (member forward, ensemble and detector heads).
- :mod:`.classifier`: :class:`HyperGANClassifier`, the ART ``PyTorchClassifier``.
- :mod:`.detector`: :class:`EntropyEvasionDetector` and :func:`detector_classifier`.
- :mod:`.binary_detector`: ART's ``BinaryInputDetector`` (Metzen et al. 2017) trained on clean vs
  FGSM inputs, the supervised baseline ``evaluate --baselines binary-detector`` compares against.
"""

from .binary_detector import detector_margin, detector_network, train_binary_detector
from .classifier import HyperGANClassifier
from .detector import EntropyEvasionDetector, detector_classifier
from .modules import (
    DEFAULT_MEMBERS,
    SAMPLE_MODES,
    DetectorLogits,
    EnsembleLogits,
    LogMeanProb,
    MemberLogits,
    check_sample_mode,
)

__all__ = [
    "DEFAULT_MEMBERS",
    "SAMPLE_MODES",
    "DetectorLogits",
    "EnsembleLogits",
    "EntropyEvasionDetector",
    "HyperGANClassifier",
    "LogMeanProb",
    "MemberLogits",
    "check_sample_mode",
    "detector_classifier",
    "detector_margin",
    "detector_network",
    "train_binary_detector",
]

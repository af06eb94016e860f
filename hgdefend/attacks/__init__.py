"""Attacks against sampled ensembles (torchattacks style: ``PGD(target, eps=0.3)(x, y) -> x_adv``)."""

from .adaptive import AdaptivePGD, FreshSamples
from .base import Attack, check_eps, ensemble_loss
from .fgsm import FGSM
from .pgd import PGD

ATTACKS = {"fgsm": FGSM, "pgd": PGD}
PROTOCOLS = ("paper", "fixed", "adaptive")

__all__ = [
    "ATTACKS",
    "PROTOCOLS",
    "AdaptivePGD",
    "Attack",
    "FGSM",
    "FreshSamples",
    "PGD",
    "check_eps",
    "ensemble_loss",
]

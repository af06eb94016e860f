"""Attacks against sampled ensembles (torchattacks style: ``PGD(target, eps=0.3)(x, y) -> x_adv``)."""

from .adaptive import AdaptivePGD, FreshSamples
from .apgd import APGD, APGDCE, APGDDLR, dlr_loss
from .base import Attack, check_eps, ensemble_loss
from .fgsm import FGSM
from .pgd import PGD

ATTACKS = {"fgsm": FGSM, "pgd": PGD, "apgd-ce": APGDCE, "apgd-dlr": APGDDLR}
PROTOCOLS = ("paper", "fixed", "adaptive")

__all__ = [
    "APGD",
    "APGDCE",
    "APGDDLR",
    "ATTACKS",
    "PROTOCOLS",
    "AdaptivePGD",
    "Attack",
    "FGSM",
    "FreshSamples",
    "PGD",
    "check_eps",
    "dlr_loss",
    "ensemble_loss",
]

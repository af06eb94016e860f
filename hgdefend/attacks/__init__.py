"""Attacks against sampled ensembles (torchattacks style: ``PGD(target, eps=0.3)(x, y) -> x_adv``)."""

from .adaptive import AdaptivePGD, FreshSamples
from .apgd import APGD, APGDCE, APGDCET, APGDDLR, APGDT, dlr_loss, margin, targeted_dlr_loss
from .base import Attack, check_eps, ensemble_loss
from .fgsm import FGSM
from .pgd import PGD
from .score_search import ScoreSearch

ATTACKS = {
    "fgsm": FGSM,
    "pgd": PGD,
    "apgd-ce": APGDCE,
    "apgd-dlr": APGDDLR,
    "apgd-t": APGDT,
    "apgd-ce-t": APGDCET,
    "score-search": ScoreSearch,
}
PROTOCOLS = ("paper", "fixed", "adaptive")

__all__ = [
    "APGD",
    "APGDCE",
    "APGDCET",
    "APGDT",
    "APGDDLR",
    "ATTACKS",
    "PROTOCOLS",
    "AdaptivePGD",
    "Attack",
    "FGSM",
    "FreshSamples",
    "PGD",
    "ScoreSearch",
    "check_eps",
    "dlr_loss",
    "ensemble_loss",
    "margin",
    "targeted_dlr_loss",
]

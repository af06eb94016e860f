"""Names the library and the CLI share, importable without torch (so ``hgdefend --help`` is fast).

Modules that implement these names import them from here; the CLI builds its choices from them.
"""

from __future__ import annotations

SCORES = ("entropy", "mutual_information", "max_prob", "variance")
"""Detector scores; every one is oriented so that higher means more suspicious."""
REGULARISERS = ("gan", "mmd", "none")
"""How the HyperGAN keeps its latent codes near the Gaussian prior."""
DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "cubic")
"""Built-in dataset names (a ``.npz`` path is accepted too)."""
ATTACK_NAMES = ("fgsm", "pgd", "apgd-ce", "apgd-dlr", "apgd-t", "apgd-ce-t", "score-search")
"""Every attack the library implements (``hgdefend.attacks.ATTACKS``): ``-t`` ones are targeted at
the runner-up classes (APGD-T); ``score-search`` lowers the detector's score while staying wrong."""
TARGETED_ATTACKS = ("apgd-t", "apgd-ce-t")
DEFAULT_SUITE_ATTACKS = ("fgsm", "pgd")
"""The attacks the evaluate suite runs unless asked for others (APGD is opt-in: it costs more)."""
PROTOCOL_NAMES = ("paper", "fixed", "adaptive")
BASELINE_NAMES = (
    "deep-ensemble",
    "mc-dropout",
    "single",
    "deep-ensemble-adv",
    "single-adv",
    "binary-detector",
)
"""Defences the attack suite trains beside the HyperGAN (hgdefend.evaluate.baselines): ``-adv`` ones
are adversarially trained (PGD at the largest attack eps); ``binary-detector`` is the single network
with ART's BinaryInputDetector trained on FGSM inputs."""
DIVERSITY_OBJECTIVES = ("none", "repulsion", "offdata", "gradient")
"""Training objectives that push sampled networks apart, beyond the paper's latent regulariser."""
ADVERSARIAL_METHODS = ("none", "pgd", "fgsm", "trades")
"""Adversarial training: examples crafted against each step's sampled networks (hgdefend.adversarial)."""

"""The defences the attack suite compares the HyperGAN with, trained here on the same training split.

* ``deep-ensemble`` and ``mc-dropout`` (K networks, entropy score) and ``single`` (one network,
  max-softmax score): the plain baselines.
* ``deep-ensemble-adv`` and ``single-adv``: the same networks adversarially trained (PGD at the
  largest attack eps, :data:`ADV_STEPS` steps; Madry et al. 2018) with the same detector score, so
  the report separates what robust members buy from what detection buys — in the same run.
* ``binary-detector``: the plain single network (shared with ``single`` when both are asked for)
  plus ART's ``BinaryInputDetector`` trained on clean vs FGSM inputs at the largest eps
  (:mod:`hgdefend.art.binary_detector`; Metzen et al. 2017): the supervised detector a new user
  tries first. Its score, the detector's logit margin, reads the *input*, not the member logits,
  so :class:`Method` carries a ``detector`` callable beside the named scores.

Under the adaptive protocol every attack differentiates through the detector: APGD takes it as
``detector=``; for FGSM and PGD, :class:`DetectorFGSM` and :class:`DetectorPGD` put the same term in
their loss (CE − λ·margin, λ swept as for the named scores). The paper and fixed protocols attack
the classifier alone (λ = 0), as they do for every method.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..attacks import FGSM, PGD
from ..attacks.base import ensemble_loss
from ..detectors.scores import SCORE_FUNCTIONS
from ..ensemble import SampledEnsemble
from ..errors import HgdefendError
from ..recipes import default_recipe
from ..training import TrainConfig, deep_ensemble, mc_dropout, single_network
from .context import EvalContext
from .options import AttackOptions

ADV_METHOD = "pgd"
ADV_STEPS = 7
"""Adversarial training of the ``-adv`` baselines: PGD with 7 steps (Madry et al.'s MNIST setting
uses 40; 7 is the common CIFAR setting and keeps training time a small multiple of plain training)."""
DETECTOR_INPUTS = 10_000
DETECTOR_EPOCHS = 3
"""The binary detector trains on up to this many clean training inputs plus as many FGSM ones, for
this many epochs (as benchmarks/robust_mnist.py): seconds on a CPU for digits, a minute for MNIST."""
DETECTOR_SCORE = "detector_margin"
SCORE_BATCH = 512


@dataclass
class Method:
    """A defence under attack: ``attacked`` is what the attacker differentiates; ``scoring`` judges
    (``scoring_name`` is its name in the scored-splits cache). ``score`` names the detector score
    (one of ``SCORE_FUNCTIONS``, read from member logits), unless ``detector`` — a differentiable
    ``(x, member_logits) -> [B]`` score for detectors that read the input — is given; ``score`` is
    then only its label in the report."""

    name: str
    attacked: SampledEnsemble
    scoring_name: str
    score: str
    eot: Any = None  # adaptive target (FreshSamples for HyperGAN), else ``attacked``
    info: dict[str, Any] = field(default_factory=dict)
    detector: Callable[[Tensor, Tensor], Tensor] | None = None

    def score_fn(self, x: Tensor, logits: Tensor) -> Tensor:
        """Suspicion scores ``[B]`` (higher = more suspicious) of inputs ``x`` whose scoring member
        logits are ``logits`` ``[K, B, C]``: the detector's if there is one, else the named score."""
        if self.detector is not None:
            return self.detector(x, logits)
        return SCORE_FUNCTIONS[self.score](logits)

    @torch.no_grad()
    def scores(self, x: Tensor, logits: Tensor, batch: int = SCORE_BATCH) -> np.ndarray:
        """:meth:`score_fn` in batches, without gradients, as float64 numpy (what thresholds and
        metrics read)."""
        if self.detector is None:
            return self.score_fn(x, logits).cpu().numpy().astype(np.float64)
        dev = self.attacked.device
        parts = [
            self.score_fn(x[i : i + batch].to(dev), logits[:, i : i + batch].to(dev))
            for i in range(0, len(x), batch)
        ]
        return torch.cat(parts).cpu().numpy().astype(np.float64)


def split_scores(ctx: EvalContext, method: Method, split: str) -> np.ndarray:
    """Clean scores of one split through ``method.score_fn``: the scored-splits cache's for a named
    score (computed once per ensemble), else from the split's inputs and the cached member logits."""
    if method.detector is None:
        return ctx.scored.scores(method.scoring_name, split)[method.score]
    return method.scores(ctx.scored.splits[split].x, ctx.scored.logits(method.scoring_name, split))


# --------------------------------------------------------------------------- detector-aware FGSM / PGD
class _DetectorLoss:
    """CE of the ensemble's mean probability − λ·detector(x, member_logits): APGD's ``detector=``
    for FGSM and PGD, so their adaptive rows attack classifier and input detector together."""

    detector: Callable[[Tensor, Tensor], Tensor]
    lam: float
    logits_fn: Callable[[Tensor], Tensor]

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        logits = self.logits_fn(x)
        out = ensemble_loss(logits, y)
        return out - self.lam * self.detector(x, logits) if self.lam != 0.0 else out

    def describe(self) -> dict[str, Any]:
        out = super().describe()  # type: ignore[misc]  # FGSM's or PGD's (the mixin comes first)
        name = getattr(self.detector, "__name__", type(self.detector).__name__)
        return {**out, "loss": "ce_mean_prob - lam*detector", "lam": self.lam, "detector": name}


class DetectorFGSM(_DetectorLoss, FGSM):
    """FGSM on CE − λ·detector (the adaptive protocol against an input detector)."""

    def __init__(self, target: Any, eps: float, *, detector: Callable, lam: float = 1.0, **kw: Any) -> None:
        super().__init__(target, eps, lam=lam, **kw)
        self.detector = detector


class DetectorPGD(_DetectorLoss, PGD):
    """Fixed-budget PGD on CE − λ·detector (the adaptive protocol against an input detector)."""

    name = "adaptive-pgd"

    def __init__(self, target: Any, *args: Any, detector: Callable, lam: float = 1.0, **kw: Any) -> None:
        kw.setdefault("early_stop", False)
        super().__init__(target, *args, lam=lam, **kw)
        self.detector = detector


# --------------------------------------------------------------------------- construction
def _check(ctx: EvalContext, cfg: AttackOptions) -> None:
    """Refuse what cannot be built before anything is trained."""
    if "mc-dropout" in cfg.baselines and not hasattr(ctx.hypergan.target, "layers"):
        raise HgdefendError("baselines: mc-dropout needs a built-in TargetSpec target, not a user module")
    shape = tuple(ctx.data.input_shape)
    if "binary-detector" in cfg.baselines and len(shape) != 3:
        raise HgdefendError(
            f"baselines: binary-detector needs image inputs (channels, height, width), got shape {shape}"
        )


def build_baselines(ctx: EvalContext, cfg: AttackOptions) -> list[Method]:
    """Train the baselines on the same training split through the same batched member forward
    (each network once: ``binary-detector`` reuses ``single``'s network when both are asked for)."""
    _check(ctx, cfg)
    target, k = ctx.hypergan.target, ctx.ensemble.k
    _, recipe = default_recipe(ctx.data)
    steps = cfg.baseline_steps or recipe.steps
    trained: dict[str, tuple[SampledEnsemble, dict[str, Any]]] = {}

    def train(name: str) -> tuple[SampledEnsemble, dict[str, Any]]:
        if name in trained:
            return trained[name]
        base, adv = name.removesuffix("-adv"), name.endswith("-adv")
        adv_kw = {"adversarial": ADV_METHOD, "adv_eps": max(cfg.eps), "adv_steps": ADV_STEPS} if adv else {}
        tc = TrainConfig(steps=steps, batch_size=recipe.batch_size, seed=cfg.seed, **adv_kw)
        kw = {"device": ctx.device, "progress": ctx.progress}
        t0 = time.perf_counter()
        if base == "deep-ensemble":
            ens = deep_ensemble(target, ctx.data.train, k, tc, **kw)
        elif base == "single":
            ens = single_network(target, ctx.data.train, tc, **kw)
        else:
            ens = mc_dropout(target, ctx.data.train, k, tc, **kw)
        info: dict[str, Any] = {
            "members": ens.k,
            "train_steps": steps,
            "batch_size": recipe.batch_size,
            "seed": cfg.seed,
            "train_seconds": round(time.perf_counter() - t0, 2),
            "adversarial_training": None,
        }
        if adv:
            info["adversarial_training"] = {"method": ADV_METHOD, "eps": max(cfg.eps), "steps": ADV_STEPS}
        ctx.scored.add_ensemble(name, ens)
        trained[name] = ens, info
        return trained[name]

    out = []
    for name in cfg.baselines:
        if name == "binary-detector":
            out.append(_binary_detector(ctx, cfg, *train("single"), shared="single" in cfg.baselines))
            continue
        ens, info = train(name)
        score = "max_prob" if name.startswith("single") else "entropy"
        out.append(Method(name, ens, name, score, ens, info))
    return out


def _binary_detector(
    ctx: EvalContext, cfg: AttackOptions, ens: SampledEnsemble, info: dict[str, Any], *, shared: bool
) -> Method:
    """The single network plus ART's binary detector trained on FGSM at the largest eps against it."""
    from ..art.binary_detector import detector_margin, train_binary_detector  # ART: only when asked for

    sub = ctx.data.train.take(DETECTOR_INPUTS)
    net, det = train_binary_detector(
        ens, sub.x, sub.y, eps=max(cfg.eps), epochs=DETECTOR_EPOCHS, seed=cfg.seed, device=ctx.device
    )

    def binary_detector_margin(x: Tensor, _logits: Tensor) -> Tensor:
        return detector_margin(net, x)

    kind = "ART BinaryInputDetector (Metzen et al. 2017), clean vs FGSM"
    clf = (
        "the single baseline's network"
        if shared
        else "a plain single network, trained as the single baseline"
    )
    info = {**info, "classifier": clf, "detector": {"kind": kind, "seed": cfg.seed, **det}}
    return Method("binary-detector", ens, "single", DETECTOR_SCORE, ens, info, binary_detector_margin)

"""What every attack shares: a target that returns member logits ``[K, B, C]``, a declared input
range, checked arguments, and the loss on the ensemble's mean probability.

A *target* is anything with ``forward_logits(x) -> [K, B, C]`` (a :class:`SampledEnsemble`, an
:class:`~hgdefend.attacks.adaptive.FreshSamples` sampler) or a plain callable returning member
logits. All members are evaluated in one batched call; attacks never loop over members.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor

from ..detectors.scores import SCORE_FUNCTIONS, check_score_name
from ..probabilities import log_mean_probs
from ..validation import HgdefendError, as_inputs, as_labels

NORMS = ("linf", "l2")


class MemberLogitsModel(Protocol):
    def forward_logits(self, x: Tensor) -> Tensor: ...


Target = MemberLogitsModel | Callable[[Tensor], Tensor]


def member_logits_fn(target: Any) -> Callable[[Tensor], Tensor]:
    """The differentiable ``x -> [K, B, C]`` function of a target (ensemble or callable)."""
    if hasattr(target, "forward_logits"):
        return target.forward_logits
    if callable(target):
        return target
    raise HgdefendError(
        "target: expected an object with forward_logits(x) -> [K, B, C] or a callable, "
        f"got {type(target).__name__}"
    )


def check_eps(eps: object, name: str = "eps") -> float:
    try:
        v = float(eps)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise HgdefendError(f"{name}: expected a number >= 0, got {eps!r}") from None
    if not math.isfinite(v) or v < 0:
        raise HgdefendError(f"{name}: expected a finite number >= 0, got {eps!r}")
    return v


def check_positive_int(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise HgdefendError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise HgdefendError(f"norm: expected one of {NORMS}, got {norm!r}")
    return norm


def ensemble_loss(member_logits: Tensor, y: Tensor, *, score: str | None = None, lam: float = 0.0) -> Tensor:
    """Per-example attacker loss: cross-entropy of the ensemble's *mean probability*, minus
    ``lam`` × the detector's score (the adaptive attack lowers the score while fooling)."""
    loss = torch.nn.functional.nll_loss(log_mean_probs(member_logits), y, reduction="none")
    if score is not None and lam != 0.0:
        loss = loss - lam * SCORE_FUNCTIONS[check_score_name(score)](member_logits)
    return loss


class Attack:
    """Base class, torchattacks style: ``attack(x, y) -> x_adv``.

    ``value_range`` is the declared input range: inputs outside it are rejected and adversarial
    inputs are clipped into it. ``score``/``lam`` turn the loss into CE − λ·score (adaptive).
    """

    name = "attack"

    def __init__(
        self,
        target: Any,
        *,
        value_range: tuple[float, float] = (0.0, 1.0),
        score: str | None = None,
        lam: float = 0.0,
    ) -> None:
        self.target = target
        self.logits_fn = member_logits_fn(target)
        lo, hi = (float(v) for v in value_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise HgdefendError(f"value_range: expected (low, high) with low < high, got {value_range!r}")
        self.value_range = (lo, hi)
        self.score = None if score is None else check_score_name(score)
        lam = float(lam)
        if not math.isfinite(lam):
            raise HgdefendError(f"lam: expected a finite number, got {lam!r}")
        self.lam = lam
        self.last_info: dict[str, Any] = {}

    # -------------------------------------------------------------- helpers
    def _device(self) -> torch.device | None:
        dev = getattr(self.target, "device", None)
        return dev if isinstance(dev, torch.device) else None

    def check(self, x: object, y: object) -> tuple[Tensor, Tensor]:
        """Checked inputs (float32, in the declared range) and integer labels, on the target's device."""
        shape = tuple(x.shape[1:]) if hasattr(x, "shape") and len(x.shape) > 1 else (0,)
        t = as_inputs(x, shape, name="x", value_range=self.value_range, device=self._device())
        with torch.no_grad():
            c = self.logits_fn(t[:1]).shape[-1]
        labels = as_labels(y, t.shape[0], c, name="y").to(t.device)
        return t.detach(), labels

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        return ensemble_loss(self.logits_fn(x), y, score=self.score, lam=self.lam)

    def gradient(self, x: Tensor, y: Tensor) -> Tensor:
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.loss(x, y).sum(), x)
        return grad

    @torch.no_grad()
    def fooled(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-example: does the attacked target's ensemble prediction differ from ``y``?"""
        return log_mean_probs(self.logits_fn(x)).argmax(-1) != y

    def clip(self, x: Tensor) -> Tensor:
        return x.clamp(*self.value_range)

    def describe(self) -> dict[str, Any]:
        out = {"attack": self.name, "value_range": list(self.value_range), "loss": "ce_mean_prob"}
        if self.score is not None:  # a score-aware (adaptive) attack says its λ, even λ = 0
            out.update(loss=f"ce_mean_prob - lam*{self.score}", score=self.score, lam=self.lam)
        return out

    def __call__(self, x: object, y: object) -> Tensor:
        x_t, y_t = self.check(x, y)
        return self.perturb(x_t, y_t)

    def perturb(self, x: Tensor, y: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

"""Adversarial training: the generator learns to emit networks that resist an L∞ attacker.

Inside each training step, examples are crafted against the networks sampled in that step (their
weights detached: the attack differentiates through the networks, not through the generator) and
the networks are then trained on them, all through the one batched member forward:

* ``pgd`` — Madry et al. (ICLR 2018): uniform random start in the eps-ball, ``steps`` signed-gradient
  steps of size ``alpha`` (default 2.5·eps/steps), train on the adversarial inputs only.
* ``fgsm`` — the cheap option, FGSM with a random start (Wong et al., "Fast is better than free",
  ICLR 2020): one step of 1.25·eps from a uniform start; about the cost of one extra forward/backward.
* ``trades`` — Zhang et al. (ICML 2019): cross-entropy on clean inputs plus ``trades_beta`` × the KL
  divergence between each network's clean and adversarial predictions; the inputs maximise that KL
  (start: clean + 0.001·N(0, 1)). It trades less clean accuracy for robustness than ``pgd``.

Examples for ``pgd``/``fgsm`` maximise the cross-entropy of the sampled networks' *mean* probability
— the prediction the defence makes and the loss the library's attacks use — so the networks learn
to resist the attacker they will meet: one who attacks the ensemble, not one member. The
randomness (start points) comes from the step's generator, so resumed runs stay exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from . import rng
from .errors import HgdefendError
from .probabilities import log_mean_probs
from .targets import Params
from .vocab import ADVERSARIAL_METHODS

Forward = Callable[[Params, Tensor], Tensor]
"""``(params, x) -> member logits [K, B, C]`` (the target's batched forward)."""


def check_adversarial(method: str, eps: float, steps: int, alpha: float | None, trades_beta: float) -> None:
    """Validate the adversarial-training fields of a :class:`~hgdefend.training.TrainConfig`."""
    if method not in ADVERSARIAL_METHODS:
        raise HgdefendError(f"adversarial: expected one of {', '.join(ADVERSARIAL_METHODS)}, got {method!r}")
    e = float(eps)
    if not (math.isfinite(e) and e >= 0):
        raise HgdefendError(f"adv_eps: expected a finite number >= 0, got {eps!r}")
    if method != "none" and e == 0:
        raise HgdefendError(f"adv_eps: adversarial training {method!r} needs eps > 0")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise HgdefendError(f"adv_steps: expected an integer >= 1, got {steps!r}")
    if alpha is not None and not (math.isfinite(float(alpha)) and float(alpha) > 0):
        raise HgdefendError(f"adv_alpha: expected a positive step size, got {alpha!r}")
    b = float(trades_beta)
    if not (math.isfinite(b) and b >= 0):
        raise HgdefendError(f"trades_beta: expected a finite number >= 0, got {trades_beta!r}")


def _project(x_adv: Tensor, x: Tensor, eps: float, value_range: tuple[float, float]) -> Tensor:
    return (x + (x_adv - x).clamp(-eps, eps)).clamp(*value_range)


def _uniform(x: Tensor, eps: float, g: torch.Generator) -> Tensor:
    return (rng.rand(x.shape, g, x.device) * 2 - 1) * eps


def craft(
    forward: Forward,
    params: Params,
    x: Tensor,
    y: Tensor,
    *,
    method: str,
    eps: float,
    steps: int,
    alpha: float | None,
    generator: torch.Generator,
    value_range: tuple[float, float] = (0.0, 1.0),
    clean_logits: Tensor | None = None,
) -> Tensor:
    """Adversarial inputs against the networks ``params`` (detached here), one per input in ``x``.
    ``clean_logits``: TRADES' member logits on ``x`` when the caller has them (computed otherwise)."""
    frozen = {n: t.detach() for n, t in params.items()}
    x = x.detach()
    if method == "trades":
        if clean_logits is None:
            with torch.no_grad():
                clean_logits = forward(frozen, x)
        clean = torch.log_softmax(clean_logits.detach(), -1)
        start = x + 0.001 * rng.randn(x.shape, generator, x.device)
    else:
        start = x + _uniform(x, eps, generator)
    if method == "fgsm":
        steps, step_size = 1, 1.25 * eps if alpha is None else alpha
    else:
        step_size = 2.5 * eps / steps if alpha is None else alpha
    x_adv = _project(start, x, eps, value_range)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        logits = forward(frozen, x_adv)
        if method == "trades":  # sum over networks of KL(clean ‖ adversarial)
            loss = F.kl_div(torch.log_softmax(logits, -1), clean, reduction="sum", log_target=True)
        else:
            loss = F.nll_loss(log_mean_probs(logits), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = _project(x_adv.detach() + step_size * grad.sign(), x, eps, value_range)
    return x_adv.detach()


def adversarial_loss(
    forward: Forward,
    params: Params,
    x: Tensor,
    y: Tensor,
    *,
    method: str,
    eps: float,
    steps: int,
    alpha: float | None,
    trades_beta: float,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """(training loss, member logits the loss was computed on, logs) for one adversarial step.
    The logs are detached tensors (read them every few steps: reading one waits for the GPU)."""
    # TRADES' clean logits serve twice: the attack's target distribution and the loss's clean term
    clean_logits = forward(params, x) if method == "trades" else None
    x_adv = craft(forward, params, x, y, method=method, eps=eps, steps=steps, alpha=alpha,
                  generator=generator, clean_logits=clean_logits)  # fmt: skip
    adv_logits = forward(params, x_adv)
    k, b, c = adv_logits.shape
    if clean_logits is None:
        loss = F.cross_entropy(adv_logits.reshape(k * b, c), y.repeat(k))
        return loss, adv_logits, {"adv_loss": loss.detach()}
    ce = F.cross_entropy(clean_logits.reshape(k * b, c), y.repeat(k))
    kl = F.kl_div(torch.log_softmax(adv_logits, -1).reshape(k * b, c),
                  torch.log_softmax(clean_logits, -1).reshape(k * b, c),
                  reduction="batchmean", log_target=True)  # fmt: skip
    logs = {"adv_kl": kl.detach(), "clean_loss": ce.detach()}
    return ce + trades_beta * kl, clean_logits, logs

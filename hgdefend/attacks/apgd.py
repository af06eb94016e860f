"""APGD (Croce & Hein, ICML 2020): PGD without a step size to tune, with EOT over weight samples.

Each run starts at a random point on the L∞ sphere of radius eps, takes signed-gradient steps of
size η (starting at 2·eps) with momentum 0.75, and at checkpoints p_0 = 0, p_1 = 0.22,
p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06) (× steps) halves η *and restarts from the best point
so far* for examples where the loss rose in fewer than ρ of the steps since the last checkpoint, or
where η and the best loss are both unchanged since it. Large early steps explore the ball, small late
ones refine, and a stalled example goes back to its best point instead of wandering — which is why
APGD is at least as strong as a tuned PGD with the same number of gradients.

**EOT**: each step averages the loss and gradient over ``eot_iter`` calls of the target. With a
:class:`~hgdefend.attacks.adaptive.FreshSamples` target every call draws fresh networks from the
HyperGAN, so the attack follows the gradient expected over the weight distribution; the loss used
to track the best point is the same average (a single draw would make the bookkeeping chase noise).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..detectors.scores import SCORE_FUNCTIONS
from ..probabilities import log_mean_probs
from ..validation import HgdefendError
from .adaptive import FreshSamples
from .base import Attack, check_eps, check_positive_int

APGD_LOSSES = ("ce", "dlr")
MOMENTUM = 0.75


def dlr_loss(member_logits: Tensor, y: Tensor) -> Tensor:
    """Per-example DLR loss −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e-12) on z = log mean probability.

    DLR is applied to the ensemble's log mean probability, not to the members' mean logits, because
    the defence predicts argmax of the mean probability and the two argmaxes can differ: the attack
    must move the prediction the defence actually makes. (DLR is shift-invariant, so the log of the
    normalised mean is as good a logit vector as any.)
    """
    z = log_mean_probs(member_logits)
    if z.shape[-1] < 3:
        raise HgdefendError(f"loss: 'dlr' needs at least 3 classes, got {z.shape[-1]}")
    top = z.topk(3, dim=-1).values
    z_y = z.gather(1, y[:, None]).squeeze(1)
    z_other = z.scatter(1, y[:, None], float("-inf")).max(-1).values
    return -(z_y - z_other) / (top[:, 0] - top[:, 2] + 1e-12)


def apgd_checkpoints(steps: int) -> tuple[int, ...]:
    """Iterations ⌈p_j · steps⌉ (strictly between 0 and ``steps``) where η may be halved."""
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    its = {math.ceil(q * steps - 1e-9) for q in p[1:]}
    return tuple(sorted(w for w in its if 0 < w < steps))


def _better(f_new: Tensor, l_new: Tensor, f_old: Tensor, l_old: Tensor) -> Tensor:
    """A fooling result beats a non-fooling one; otherwise the higher loss wins (as PGD's restarts)."""
    return (f_new & ~f_old) | ((f_new == f_old) & (l_new > l_old))


class APGD(Attack):
    """APGD-CE / APGD-DLR under an L∞ budget, with EOT (``eot_iter``) and the score-aware loss.

    ``steps`` updates per restart cost ``(steps + 1) × eot_iter`` target calls (one gradient at the
    start point). Per example the result is a point that fools the attacked ensemble if any step of
    any restart found one (the highest-loss such point, so a score-aware loss keeps the score low),
    else the highest-loss point. ``score``/``lam`` make the loss ``loss − lam × score``;
    ``detector`` — a differentiable ``(x, member_logits) -> [B]`` score, for detectors that read the
    input itself (a trained binary detector) — takes the place of ``score`` so the attacker can
    fool the classifier and such a detector at once.
    """

    name = "apgd-ce"

    def __init__(
        self,
        target: Any,
        eps: float = 0.3,
        steps: int = 100,
        *,
        loss: str = "ce",
        norm: str = "linf",
        restarts: int = 1,
        eot_iter: int = 1,
        rho: float = 0.75,
        seed: int = 0,
        score: str | None = None,
        lam: float = 0.0,
        detector: Callable[[Tensor, Tensor], Tensor] | None = None,
        value_range: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        super().__init__(target, value_range=value_range, score=score, lam=lam)
        if detector is not None and (score is not None or not callable(detector)):
            raise HgdefendError("detector: expected a callable (x, member_logits) -> [B], not with score")
        self.detector = detector
        self.eps = check_eps(eps)
        self.steps = check_positive_int(steps, "steps")
        if loss not in APGD_LOSSES:
            raise HgdefendError(f"loss: expected one of {APGD_LOSSES}, got {loss!r}")
        self.loss_name = loss
        self.name = f"apgd-{loss}"
        if norm != "linf":
            raise HgdefendError(f"norm: APGD supports only 'linf' here, got {norm!r}")
        self.norm = norm
        self.restarts = check_positive_int(restarts, "restarts")
        self.eot_iter = check_positive_int(eot_iter, "eot_iter")
        try:
            rho_f = float(rho)
        except (TypeError, ValueError):
            rho_f = float("nan")
        if not (0.0 < rho_f <= 1.0):
            raise HgdefendError(f"rho: expected a number in (0, 1], got {rho!r}")
        self.rho = rho_f
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise HgdefendError(f"seed: expected an integer, got {seed!r}")
        self.seed = seed
        self.checkpoints = apgd_checkpoints(self.steps)

    # -------------------------------------------------------------- loss
    def objective(self, member_logits: Tensor, y: Tensor, x: Tensor | None = None) -> Tensor:
        """Per-example attacker loss (CE or DLR of the ensemble's mean probability) − lam × score."""
        if self.loss_name == "ce":
            out = torch.nn.functional.nll_loss(log_mean_probs(member_logits), y, reduction="none")
        else:
            out = dlr_loss(member_logits, y)
        if self.score is not None and self.lam != 0.0:
            out = out - self.lam * SCORE_FUNCTIONS[self.score](member_logits)
        if self.detector is not None and self.lam != 0.0:
            out = out - self.lam * self.detector(x, member_logits)
        return out

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        return self.objective(self.logits_fn(x), y, x)

    def _eot(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Loss and gradient averaged over ``eot_iter`` target calls, and whether the pooled
        prediction of all drawn members (their mean probability) is wrong. One backward per draw
        keeps memory at one draw's graph."""
        loss_sum = torch.zeros(len(x), device=x.device)
        grad_sum = torch.zeros_like(x)
        drawn = []
        for _ in range(self.eot_iter):
            xr = x.detach().requires_grad_(True)
            logits = self.logits_fn(xr)
            loss = self.objective(logits, y, xr)
            (grad,) = torch.autograd.grad(loss.sum(), xr)
            loss_sum += loss.detach()
            grad_sum += grad
            drawn.append(logits.detach())
        fooled = log_mean_probs(torch.cat(drawn, 0)).argmax(-1) != y
        return loss_sum / self.eot_iter, grad_sum / self.eot_iter, fooled

    def _project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        return self.clip(x + (x_adv - x).clamp(-self.eps, self.eps))

    # -------------------------------------------------------------- one run
    def _run(self, x: Tensor, y: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One APGD run: (result point, its loss, fooled, final η) per example."""
        view = (-1,) + (1,) * (x.dim() - 1)
        t = torch.rand(x.shape, generator=g).to(x.device) * 2 - 1
        t = t / t.flatten(1).abs().max(1).values.clamp_min(1e-12).view(view)
        x_adv = self._project(x + self.eps * t, x)
        loss, grad, fooled = self._eot(x_adv, y)

        x_best, loss_best, grad_best = x_adv.clone(), loss.clone(), grad.clone()
        x_res, loss_res, fooled_res = x_adv.clone(), loss.clone(), fooled.clone()
        eta = torch.full((len(x),), 2.0 * self.eps, device=x.device)
        x_prev = x_adv
        losses = [loss]  # f(x^0), f(x^1), …: condition 1 counts the increases between checkpoints
        last_ck, best_at_ck = 0, loss_best.clone()
        halved_at_ck = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        checkpoints = set(self.checkpoints)
        for k in range(self.steps):
            z = self._project(x_adv + eta.view(view) * grad.sign(), x)
            if k > 0:  # the first step has no previous iterate to take momentum from
                z = self._project(x_adv + MOMENTUM * (z - x_adv) + (1 - MOMENTUM) * (x_adv - x_prev), x)
            x_prev, x_adv = x_adv, z
            loss, grad, fooled = self._eot(x_adv, y)
            losses.append(loss)

            up = loss > loss_best
            x_best[up], grad_best[up], loss_best = x_adv[up], grad[up], torch.where(up, loss, loss_best)
            keep = _better(fooled, loss, fooled_res, loss_res)
            x_res[keep], loss_res = x_adv[keep], torch.where(keep, loss, loss_res)
            fooled_res = fooled_res | fooled

            if k + 1 in checkpoints:
                window = k + 1 - last_ck
                rises = (torch.stack(losses[last_ck + 1 :]) > torch.stack(losses[last_ck:-1])).sum(0)
                stalled = rises < self.rho * window  # condition 1
                stuck = ~halved_at_ck & (loss_best <= best_at_ck)  # condition 2
                halve = stalled | stuck
                eta = torch.where(halve, eta / 2, eta)
                x_adv = torch.where(halve.view(view), x_best, x_adv)
                grad = torch.where(halve.view(view), grad_best, grad)
                halved_at_ck, best_at_ck, last_ck = halve, loss_best.clone(), k + 1
        return x_res.detach(), loss_res, fooled_res, eta

    def perturb(self, x: Tensor, y: Tensor) -> Tensor:
        g = torch.Generator().manual_seed(self.seed)
        best, best_loss, best_fooled, eta = self._run(x, y, g)
        for _ in range(self.restarts - 1):
            cand, c_loss, c_fooled, c_eta = self._run(x, y, g)
            keep = _better(c_fooled, c_loss, best_fooled, best_loss)
            best[keep], eta = cand[keep], torch.where(keep, c_eta, eta)
            best_loss, best_fooled = torch.where(keep, c_loss, best_loss), best_fooled | c_fooled
        self.last_info = {
            "steps": self.steps,
            "checkpoints": list(self.checkpoints),
            "target_calls": self.restarts * (self.steps + 1) * self.eot_iter,
            "final_step_size": eta.cpu(),
            "loss": best_loss.cpu(),
            "fooled": best_fooled.cpu(),
        }
        return best

    def describe(self) -> dict[str, Any]:
        base = "ce_mean_prob" if self.loss_name == "ce" else "dlr_log_mean_prob"
        out = {**super().describe(), "loss": base}
        if self.score is not None:
            out["loss"] = f"{base} - lam*{self.score}"
        if self.detector is not None:
            out.update(loss=f"{base} - lam*detector", lam=self.lam,
                       detector=getattr(self.detector, "__name__", type(self.detector).__name__))  # fmt: skip
        out.update(
            norm=self.norm,
            eps=self.eps,
            steps=self.steps,
            restarts=self.restarts,
            eot_iter=self.eot_iter,
            rho=self.rho,
            momentum=MOMENTUM,
            initial_step_size=2.0 * self.eps,
            checkpoints=list(self.checkpoints),
            seed=self.seed,
        )
        if isinstance(self.target, FreshSamples):
            out["eot"] = self.target.describe()
        return out


class APGDCE(APGD):
    """APGD with the cross-entropy of the ensemble's mean probability (``ATTACKS["apgd-ce"]``)."""

    name = "apgd-ce"

    def __init__(self, target: Any, eps: float = 0.3, steps: int = 100, **kw: Any) -> None:
        super().__init__(target, eps, steps, loss="ce", **kw)


class APGDDLR(APGD):
    """APGD with the DLR loss, which ignores the scale of the logits (``ATTACKS["apgd-dlr"]``)."""

    name = "apgd-dlr"

    def __init__(self, target: Any, eps: float = 0.3, steps: int = 100, **kw: Any) -> None:
        super().__init__(target, eps, steps, loss="dlr", **kw)

"""PGD under an L∞ or L2 budget: random start, step size, steps, restarts, optional early stop.

``early_stop=True`` is the paper protocol: an example stops moving as soon as the attacked
ensemble misclassifies it (so its perturbation stays as small as the attack needed). Without it
(fixed budget) every example takes all ``steps``. Restarts keep, per example, a fooling result if
any restart found one, else the one with the highest loss.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import Attack, check_eps, check_norm, check_positive_int


def _flat_norm(t: Tensor) -> Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


class PGD(Attack):
    name = "pgd"

    def __init__(
        self,
        target: Any,
        eps: float = 0.3,
        alpha: float | None = None,
        steps: int = 40,
        *,
        norm: str = "linf",
        random_start: bool = True,
        restarts: int = 1,
        early_stop: bool = False,
        seed: int = 0,
        **kw: Any,
    ) -> None:
        super().__init__(target, **kw)
        self.eps = check_eps(eps)
        self.steps = check_positive_int(steps, "steps")
        # default step: 2.5 · eps / steps (enough to cross the ball and come back)
        self.alpha = check_eps(alpha, "alpha") if alpha is not None else 2.5 * self.eps / self.steps
        self.norm = check_norm(norm)
        self.random_start = bool(random_start)
        self.restarts = check_positive_int(restarts, "restarts")
        self.early_stop = bool(early_stop)
        self.seed = int(seed)

    def _project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        delta = x_adv - x
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
        else:
            delta = delta * (self.eps / _flat_norm(delta)).clamp(max=1.0)
        return self.clip(x + delta)

    def _start(self, x: Tensor, g: torch.Generator) -> Tensor:
        if not self.random_start or self.eps == 0:
            return x.clone()
        noise = torch.rand(x.shape, generator=g).to(x.device) * 2 - 1
        if self.norm == "l2":  # uniform direction, radius up to eps
            noise = (
                noise
                / _flat_norm(noise)
                * torch.rand(len(x), generator=g).to(x.device).view(-1, *([1] * (x.dim() - 1)))
                * self.eps
            )
        else:
            noise = noise * self.eps
        return self._project(x + noise, x)

    def _step(self, grad: Tensor) -> Tensor:
        if self.norm == "linf":
            return self.alpha * grad.sign()
        return self.alpha * grad / _flat_norm(grad)

    def _run(self, x: Tensor, y: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
        x_adv = self._start(x, g)
        active = torch.ones(len(x), dtype=torch.bool, device=x.device)
        steps_taken = torch.zeros(len(x), dtype=torch.long, device=x.device)
        for _ in range(self.steps):
            if self.early_stop:
                active &= ~self.fooled(x_adv, y)
                if not bool(active.any()):
                    break
                idx = active.nonzero().squeeze(1)
                x_adv[idx] = self._project(x_adv[idx] + self._step(self.gradient(x_adv[idx], y[idx])), x[idx])
                steps_taken[idx] += 1
            else:
                x_adv = self._project(x_adv + self._step(self.gradient(x_adv, y)), x)
                steps_taken += 1
        return x_adv.detach(), steps_taken

    def perturb(self, x: Tensor, y: Tensor) -> Tensor:
        g = torch.Generator().manual_seed(self.seed)
        best, steps = self._run(x, y, g)
        if self.restarts > 1:
            with torch.no_grad():
                best_fooled = self.fooled(best, y)
                best_loss = self.loss(best, y)
            for _ in range(self.restarts - 1):
                cand, cand_steps = self._run(x, y, g)
                with torch.no_grad():
                    c_fooled = self.fooled(cand, y)
                    c_loss = self.loss(cand, y)
                better = (c_fooled & ~best_fooled) | ((c_fooled == best_fooled) & (c_loss > best_loss))
                best[better], steps[better] = cand[better], cand_steps[better]
                best_fooled = best_fooled | c_fooled
                best_loss = torch.where(better, c_loss, best_loss)
        self.last_info = {"steps_taken": steps.cpu()}
        return best

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "norm": self.norm,
            "eps": self.eps,
            "alpha": self.alpha,
            "steps": self.steps,
            "random_start": self.random_start,
            "restarts": self.restarts,
            "early_stop": self.early_stop,
            "seed": self.seed,
        }

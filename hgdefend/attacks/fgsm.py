"""FGSM: one signed-gradient step of size eps (L∞).

``early_stop=True`` is the paper protocol: per example, the *smallest* eps on a grid up to ``eps``
that fools the attacked ensemble (one gradient, one batched forward per grid point). Examples that
no grid point fools get the full ``eps``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import Attack, check_eps, check_positive_int


class FGSM(Attack):
    name = "fgsm"

    def __init__(
        self, target: Any, eps: float = 0.3, *, early_stop: bool = False, grid: int = 10, **kw: Any
    ) -> None:
        super().__init__(target, **kw)
        self.eps = check_eps(eps)
        self.early_stop = bool(early_stop)
        self.grid = check_positive_int(grid, "grid")

    def perturb(self, x: Tensor, y: Tensor) -> Tensor:
        direction = self.gradient(x, y).sign()
        if not self.early_stop:
            x_adv = self.clip(x + self.eps * direction).detach()
            self.last_info = {"eps_used": torch.full((len(x),), self.eps)}
            return x_adv
        x_adv = self.clip(x + self.eps * direction).detach()
        used = torch.full((len(x),), self.eps, device=x.device)
        todo = torch.ones(len(x), dtype=torch.bool, device=x.device)
        for e in torch.linspace(self.eps / self.grid, self.eps, self.grid).tolist():
            idx = todo.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            cand = self.clip(x[idx] + e * direction[idx])
            hit = self.fooled(cand, y[idx])
            x_adv[idx[hit]] = cand[hit]
            used[idx[hit]] = e
            todo[idx[hit]] = False
        self.last_info = {"eps_used": used.cpu()}
        return x_adv

    def describe(self) -> dict[str, Any]:
        out = {**super().describe(), "norm": "linf", "eps": self.eps, "early_stop": self.early_stop}
        if self.early_stop:
            out["eps_grid"] = self.grid
        return out

"""The adaptive attack: the attacker knows the defence.

* **EOT** — :class:`FreshSamples` draws a fresh set of K networks from the HyperGAN on every call,
  so each PGD step follows the gradient expected over the weight distribution, not over one draw.
  ``bank_size`` instead draws once a fixed bank of networks and picks K of them at random per
  call (the attacker targets a sample bank it owns).
* **Detector-aware loss** — cross-entropy of the mean prediction minus λ × the detector's score,
  so the attack fools the classifier *and* keeps the score (entropy) low. The suite sweeps λ.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..hypergan import HyperGAN, make_generator
from ..validation import check_k
from .base import check_positive_int
from .pgd import PGD


class FreshSamples:
    """A target whose weights are re-drawn from ``hypergan`` at every call (member logits ``[K, B, C]``).

    The weights are sampled under ``no_grad`` (the attacker differentiates through the networks,
    not through the generator) and evaluated through the one batched forward.
    """

    def __init__(self, hypergan: HyperGAN, k: int, *, seed: int = 0, bank_size: int | None = None) -> None:
        self.hypergan = hypergan
        self.k = check_k(k)
        self.seed = int(seed)
        self.bank_size = None if bank_size is None else check_positive_int(bank_size, "bank_size", self.k)
        self._g = make_generator(self.seed)
        self.calls = 0
        self._bank = None
        if self.bank_size is not None:
            self._bank = self._draw(self.bank_size)

    @property
    def device(self) -> torch.device:
        return self.hypergan.device

    def _draw(self, k: int) -> dict[str, Tensor]:
        return self.hypergan.sample_frozen(k, self._g)

    def params(self) -> dict[str, Tensor]:
        self.calls += 1
        if self._bank is None:
            return self._draw(self.k)
        idx = torch.randperm(self.bank_size, generator=self._g)[: self.k].to(self.device)
        return {n: t[idx] for n, t in self._bank.items()}

    def forward_logits(self, x: Tensor) -> Tensor:
        return self.hypergan.target.forward(self.params(), x)

    def describe(self) -> dict[str, Any]:
        return {
            "eot": "fresh HyperGAN sample every call"
            if self._bank is None
            else "random subset of a fixed bank",
            "members_per_call": self.k,
            "bank_size": self.bank_size,
            "seed": self.seed,
        }


class AdaptivePGD(PGD):
    """Fixed-budget PGD with the detector-aware loss CE − λ·score; pass a :class:`FreshSamples`
    target for EOT. Defaults: entropy score, λ = 1, no early stop (a fixed budget)."""

    name = "adaptive-pgd"

    def __init__(self, target: Any, *args: Any, score: str = "entropy", lam: float = 1.0, **kw: Any) -> None:
        """``eps``, ``alpha``, ``steps`` and the other options are :class:`PGD`'s."""
        kw.setdefault("early_stop", False)
        super().__init__(target, *args, score=score, lam=lam, **kw)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        if isinstance(self.target, FreshSamples):
            out["eot"] = self.target.describe()
        return out

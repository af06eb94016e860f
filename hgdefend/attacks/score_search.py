"""The score-constrained attack: be misclassified *and* stay under the detector's threshold.

A detector that flags on a score (entropy, mutual information, ...) is beaten by an input that is
wrong and scores low. Following Carlini & Wagner (2017) and Tramèr et al. (2020, "On adaptive
attacks to adversarial example defenses"), the loss is the C&W margin, capped at ``kappa`` so that
once an input is wrong enough only the score term pulls, minus λ × the score:

    maximise  min(margin(x), κ) − λ · score(x)

and λ is searched *per input* (binary search, as C&W search their constant): an input that ends
wrong but flagged gets a larger λ, one that is no longer wrong a smaller one; an input that got
through keeps its point. This replaces a fixed λ grid, whose best value differs from input to input.
Each search step is an APGD run (targeted at the runner-up classes with ``targets``), with EOT.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..validation import HgdefendError
from .apgd import APGD, _better, rank_info
from .base import check_positive_int

LAM_START = 1.0
LAM_GROWTH = 10.0
"""Before an input has an upper bound on λ, a flagged result multiplies its λ by this."""


class ScoreSearch(APGD):
    """Capped C&W margin − λ·score with a per-input binary search of λ (``search_steps`` runs of
    APGD; ``targets`` > 0 makes each run targeted at that many runner-up classes). Needs the
    detector's ``score`` (or ``detector``) and ``threshold``."""

    name = "score-search"

    def __init__(
        self,
        target: Any,
        eps: float = 0.3,
        steps: int = 100,
        *,
        threshold: float,
        search_steps: int = 4,
        targets: int | None = None,
        lam_start: float = LAM_START,
        **kw: Any,
    ) -> None:
        loss = "cw" if not targets else "cw-t"
        kw.pop("lam", None)  # λ is searched, not given
        super().__init__(target, eps, steps, loss=loss, threshold=threshold, targets=targets or 1, **kw)
        if self.threshold is None:
            raise HgdefendError("threshold: the score search needs the detector's threshold")
        self.search_steps = check_positive_int(search_steps, "search_steps")
        lam_start = float(lam_start)
        if not (math.isfinite(lam_start) and lam_start > 0):
            raise HgdefendError(f"lam_start: expected a positive number, got {lam_start!r}")
        self.lam_start = lam_start
        self.name = "score-search"

    def perturb(self, x: Tensor, y: Tensor) -> Tensor:
        n, dev = len(x), x.device
        lam = torch.full((n,), self.lam_start, device=dev)
        lo = torch.zeros(n, device=dev)
        hi = torch.full((n,), math.inf, device=dev)
        best = x.clone()
        no = torch.zeros(n, dtype=torch.bool, device=dev)
        rank = (no, no.clone(), torch.full((n,), -math.inf, device=dev))
        calls, seed = 0, self.seed
        for _ in range(self.search_steps):
            todo = ~rank[0]  # inputs not yet through
            if not bool(todo.any()):
                break
            idx = todo.nonzero().squeeze(1)
            self._lam = lam[idx]
            self.seed = seed + calls  # fresh random starts at every search step
            cand = APGD.perturb(self, x[idx], y[idx])
            info = self.last_info
            calls += 1
            c_rank = (info["evaded"].to(dev), info["fooled"].to(dev), info["loss"].to(dev))
            old = tuple(r[idx] for r in rank)
            keep = _better(c_rank, old)
            upd = idx[keep]
            best[upd] = cand[keep]
            for r, c in zip(rank, c_rank, strict=True):
                r[upd] = c[keep]
            # λ's search: wrong but flagged → more weight on the score; not wrong → less
            flagged = c_rank[1] & ~c_rank[0]
            missed = ~c_rank[1]
            li, hi_i, lo_i = lam[idx], hi[idx], lo[idx]
            lo_i = torch.where(flagged, li, lo_i)
            hi_i = torch.where(missed, li, hi_i)
            li = torch.where(torch.isinf(hi_i), li * LAM_GROWTH, (lo_i + hi_i) / 2)
            lam[idx], hi[idx], lo[idx] = li, hi_i, lo_i
        self.seed = seed
        self._lam = self.lam
        self.last_info = {"search_runs": calls, "final_lam": lam.cpu(), **rank_info(rank)}
        return best

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(
            attack="score-search",
            loss=f"min({out['loss'].split('_capped')[0]}, kappa) - lam*{self.score or 'detector'}",
            kappa=self.kappa,
            lam="searched per input (binary search)",
            lam_start=self.lam_start,
            search_steps=self.search_steps,
        )
        if self.loss_name == "cw":
            out["targets"] = "untargeted"
        return out

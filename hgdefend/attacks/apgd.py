"""APGD (Croce & Hein, ICML 2020): PGD without a step size to tune, with EOT over weight samples.

Each run starts at a random point on the L∞ sphere of radius eps, takes signed-gradient steps of
size η (starting at 2·eps) with momentum 0.75, and at checkpoints p_0 = 0, p_1 = 0.22,
p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06) (× steps) halves η *and restarts from the best point
so far* for examples where the loss rose in fewer than ρ of the steps since the last checkpoint, or
where η and the best loss are both unchanged since it. Large early steps explore the ball, small late
ones refine, and a stalled example goes back to its best point instead of wandering — which is why
APGD is at least as strong as a tuned PGD with the same number of gradients.

**Targeted** (Croce & Hein's APGD-T): ``loss="dlr-t"`` (targeted DLR) or ``"ce-t"`` (the log mean
probability of the target class) runs once per target class — the ``targets`` runner-up classes of
the clean prediction, ``restarts`` runs each. Against a disagreement detector the targeted losses
matter most: pushing every member to *one* wrong class keeps their disagreement (entropy, mutual
information) low, while untargeted cross-entropy drives inputs to where members disagree — exactly
where such a detector fires.

**Detector-aware selection**: given the detector's ``score`` and ``threshold`` (the white-box
attacker knows both), the point kept per example is one that fools the attacked networks *and* stays
under the threshold if any step found one, then one that fools them with the lowest score, then the
highest loss.

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

APGD_LOSSES = ("ce", "dlr", "ce-t", "dlr-t", "cw", "cw-t")
"""``ce``/``dlr``: untargeted; ``-t``: toward a target class; ``cw``: the Carlini–Wagner margin capped
at ``kappa`` (what :class:`~hgdefend.attacks.score_search.ScoreSearch` trades against the score)."""
TARGETED = frozenset({"ce-t", "dlr-t", "cw-t"})
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


def targeted_dlr_loss(member_logits: Tensor, y: Tensor, t: Tensor) -> Tensor:
    """Per-example targeted DLR −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e-12) on z = log mean
    probability (Croce & Hein 2020, eq. 7): maximised, it lifts the target class over the true one."""
    z = log_mean_probs(member_logits)
    if z.shape[-1] < 4:
        raise HgdefendError(f"loss: 'dlr-t' needs at least 4 classes, got {z.shape[-1]}")
    top = z.topk(4, dim=-1).values
    z_y = z.gather(1, y[:, None]).squeeze(1)
    z_t = z.gather(1, t[:, None]).squeeze(1)
    return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def margin(member_logits: Tensor, y: Tensor, t: Tensor | None = None) -> Tensor:
    """C&W margin on the log mean probability: max_{i≠y} z_i − z_y (untargeted), or
    z_t − max_{i≠t} z_i (toward ``t``); positive once the prediction is wrong (is ``t``)."""
    z = log_mean_probs(member_logits)
    if t is None:
        return z.scatter(1, y[:, None], float("-inf")).max(-1).values - z.gather(1, y[:, None]).squeeze(1)
    return z.gather(1, t[:, None]).squeeze(1) - z.scatter(1, t[:, None], float("-inf")).max(-1).values


def runner_up_classes(member_logits: Tensor, y: Tensor, k: int) -> Tensor:
    """``[k, B]``: the k classes other than ``y`` with the highest mean probability, best first
    (AutoAttack's APGD-T targets)."""
    z = log_mean_probs(member_logits).scatter(1, y[:, None], float("-inf"))
    return z.topk(min(k, z.shape[-1] - 1), dim=-1).indices.T


def rank_info(rank: tuple[Tensor, Tensor, Tensor]) -> dict[str, Tensor]:
    """``last_info``'s per-example result: under the threshold and fooled, fooled, the key."""
    return {"evaded": rank[0].cpu(), "fooled": rank[1].cpu(), "loss": rank[2].cpu()}


def apgd_checkpoints(steps: int) -> tuple[int, ...]:
    """Iterations ⌈p_j · steps⌉ (strictly between 0 and ``steps``) where η may be halved."""
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    its = {math.ceil(q * steps - 1e-9) for q in p[1:]}
    return tuple(sorted(w for w in its if 0 < w < steps))


def _better(new: tuple[Tensor, ...], old: tuple[Tensor, ...]) -> Tensor:
    """Per example, is ``new`` better than ``old``? Both are (evaded, fooled, key) with booleans
    first and a float key (higher = better) last, compared lexicographically: a result under the
    threshold beats a flagged one, a fooling one a non-fooling one, then the key decides."""
    e_new, f_new, k_new = new
    e_old, f_old, k_old = old
    return (e_new & ~e_old) | ((e_new == e_old) & ((f_new & ~f_old) | ((f_new == f_old) & (k_new > k_old))))


class APGD(Attack):
    """APGD under an L∞ budget: untargeted (``ce``, ``dlr``) or targeted (``ce-t``, ``dlr-t``, over
    the ``targets`` runner-up classes), with EOT (``eot_iter``) and the score-aware loss.

    ``steps`` updates per run cost ``(steps + 1) × eot_iter`` target calls (one gradient at the
    start point); there are ``restarts`` runs, times ``targets`` for a targeted loss. Per example
    the result is the best point any step of any run found (see :func:`_better`: under the
    ``threshold`` and fooling, then fooling with the lowest score, then the highest loss).
    ``score``/``lam`` make the loss ``loss − lam × score``; ``detector`` — a differentiable
    ``(x, member_logits) -> [B]`` score, for detectors that read the input itself (a trained binary
    detector) — takes the place of ``score`` so the attacker can fool the classifier and such a
    detector at once.
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
        targets: int = 9,
        eot_iter: int = 1,
        rho: float = 0.75,
        seed: int = 0,
        score: str | None = None,
        lam: float = 0.0,
        threshold: float | None = None,
        kappa: float = 1.0,
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
        self.targets = check_positive_int(targets, "targets") if loss in TARGETED else None
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
        if threshold is not None:
            threshold = float(threshold)
            if not math.isfinite(threshold) or (score is None and detector is None):
                raise HgdefendError("threshold: expected a finite number, with score= or detector=")
        self.threshold = threshold
        self.kappa = check_eps(kappa, "kappa")
        self.checkpoints = apgd_checkpoints(self.steps)
        self._t: Tensor | None = None  # the current run's target classes (targeted losses)
        self._lam: float | Tensor = self.lam  # a float, or one λ per example (ScoreSearch)

    # -------------------------------------------------------------- loss
    def suspicion(self, member_logits: Tensor, x: Tensor | None) -> Tensor | None:
        """The detector's score ``[B]`` the attacker fights (None: no detector term)."""
        if self.detector is not None:
            return self.detector(x, member_logits)
        if self.score is not None:
            return SCORE_FUNCTIONS[self.score](member_logits)
        return None

    def objective(self, member_logits: Tensor, y: Tensor, x: Tensor | None = None) -> Tensor:
        """Per-example attacker loss (maximised) − λ × the detector's score."""
        name, t = self.loss_name, self._t
        if name == "ce":
            out = torch.nn.functional.nll_loss(log_mean_probs(member_logits), y, reduction="none")
        elif name == "dlr":
            out = dlr_loss(member_logits, y)
        elif name == "ce-t":
            out = -torch.nn.functional.nll_loss(log_mean_probs(member_logits), t, reduction="none")
        elif name == "dlr-t":
            out = targeted_dlr_loss(member_logits, y, t)
        else:  # cw, cw-t: the margin, capped so that once wrong enough only the score term pulls
            out = margin(member_logits, y, t).clamp_max(self.kappa)
        lam = self._lam
        if isinstance(lam, Tensor) or lam != 0.0:
            s = self.suspicion(member_logits, x)
            if s is not None:
                out = out - lam * s
        return out

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        return self.objective(self.logits_fn(x), y, x)

    def _eot(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor]]:
        """Loss and gradient averaged over ``eot_iter`` target calls, and the (evaded, fooled,
        key) triple of the pooled prediction of all drawn members (their mean probability). One
        backward per draw keeps memory at one draw's graph."""
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
        pooled = torch.cat(drawn, 0)
        fooled = log_mean_probs(pooled).argmax(-1) != y
        loss = loss_sum / self.eot_iter
        with torch.no_grad():
            s = self.suspicion(pooled, x) if (self.threshold is not None or self.score) else None
        if s is None:
            return loss, grad_sum / self.eot_iter, (torch.zeros_like(fooled), fooled, loss)
        evaded = fooled & (s <= self.threshold) if self.threshold is not None else torch.zeros_like(fooled)
        return loss, grad_sum / self.eot_iter, (evaded, fooled, torch.where(fooled, -s, loss))

    def _project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        return self.clip(x + (x_adv - x).clamp(-self.eps, self.eps))

    # -------------------------------------------------------------- one run
    def _run(self, x: Tensor, y: Tensor, g: torch.Generator) -> tuple[Tensor, tuple[Tensor, ...], Tensor]:
        """One APGD run: (result point, its (evaded, fooled, key), final η) per example."""
        view = (-1,) + (1,) * (x.dim() - 1)
        t = torch.rand(x.shape, generator=g).to(x.device) * 2 - 1
        t = t / t.flatten(1).abs().max(1).values.clamp_min(1e-12).view(view)
        x_adv = self._project(x + self.eps * t, x)
        loss, grad, rank = self._eot(x_adv, y)

        x_best, loss_best, grad_best = x_adv.clone(), loss.clone(), grad.clone()
        x_res, rank_res = x_adv.clone(), rank
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
            loss, grad, rank = self._eot(x_adv, y)
            losses.append(loss)

            up = loss > loss_best
            x_best[up], grad_best[up], loss_best = x_adv[up], grad[up], torch.where(up, loss, loss_best)
            keep = _better(rank, rank_res)
            x_res[keep] = x_adv[keep]
            rank_res = tuple(torch.where(keep, n, o) for n, o in zip(rank, rank_res, strict=True))

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
        return x_res.detach(), rank_res, eta

    def target_classes(self, x: Tensor, y: Tensor) -> list[Tensor | None]:
        """The runs' target classes: ``[None]`` untargeted, else one ``[B]`` tensor per runner-up."""
        if self.targets is None:
            return [None]
        with torch.no_grad():
            return list(runner_up_classes(self.logits_fn(x), y, self.targets))

    def perturb(self, x: Tensor, y: Tensor) -> Tensor:
        g = torch.Generator().manual_seed(self.seed)
        best, rank, eta = None, None, None
        runs = 0
        for t in self.target_classes(x, y):
            self._t = t
            for _ in range(self.restarts):
                cand, c_rank, c_eta = self._run(x, y, g)
                runs += 1
                if best is None:
                    best, rank, eta = cand, c_rank, c_eta
                    continue
                keep = _better(c_rank, rank)
                best[keep], eta = cand[keep], torch.where(keep, c_eta, eta)
                rank = tuple(torch.where(keep, n, o) for n, o in zip(c_rank, rank, strict=True))
        self._t = None
        self.last_info = {
            "steps": self.steps,
            "checkpoints": list(self.checkpoints),
            "target_calls": runs * (self.steps + 1) * self.eot_iter,
            "final_step_size": eta.cpu(),
            **rank_info(rank),
        }
        return best

    def describe(self) -> dict[str, Any]:
        base = {
            "ce": "ce_mean_prob",
            "dlr": "dlr_log_mean_prob",
            "ce-t": "targeted_ce_mean_prob",
            "dlr-t": "targeted_dlr_log_mean_prob",
            "cw": f"cw_margin_capped_{self.kappa:g}",
            "cw-t": f"targeted_cw_margin_capped_{self.kappa:g}",
        }[self.loss_name]
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
            targets=self.targets if self.targets is not None else "untargeted",
            eot_iter=self.eot_iter,
            rho=self.rho,
            momentum=MOMENTUM,
            initial_step_size=2.0 * self.eps,
            checkpoints=list(self.checkpoints),
            seed=self.seed,
            selection="under threshold, then fooled, then lowest score"
            if self.threshold is not None
            else "fooled, then highest loss",
        )
        if self.threshold is not None:
            out["threshold"] = self.threshold
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


class APGDT(APGD):
    """APGD-T: the targeted DLR loss over the ``targets`` runner-up classes (``ATTACKS["apgd-t"]``;
    AutoAttack's targeted component, 9 targets)."""

    name = "apgd-dlr-t"

    def __init__(self, target: Any, eps: float = 0.3, steps: int = 100, **kw: Any) -> None:
        super().__init__(target, eps, steps, loss="dlr-t", **kw)


class APGDCET(APGD):
    """Targeted APGD on the log mean probability of each runner-up class (``ATTACKS["apgd-ce-t"]``):
    every member is pushed to the *same* wrong class, so their disagreement stays low."""

    name = "apgd-ce-t"

    def __init__(self, target: Any, eps: float = 0.3, steps: int = 100, **kw: Any) -> None:
        super().__init__(target, eps, steps, loss="ce-t", **kw)

"""ART's AutoAttack as plain robust accuracy: the figure a team holds against RobustBench.

RobustBench (MNIST, L∞ 0.3) reports the accuracy a deterministic model keeps under AutoAttack
(Croce & Hein 2020); e.g. Gowal et al. 2020: 96.34 %, TRADES: 92.81 %. A sampled defence is not
deterministic, so it is measured both ways:

* **fixed sample** — the report's fixed ensemble of K networks as one deterministic model (what
  RobustBench requires), attacked and judged by itself;
* **fresh draws** — the ART estimator in ``sample_mode="fresh"`` (new weights at every call, so
  each gradient is over another draw), judged by the report's fresh ensemble, which the attacker
  never saw.

The attack is ART's ``AutoAttack`` run unchanged on :class:`~hgdefend.art.HyperGANClassifier` with
the components ART can run here: APGD-CE and APGD-DLR (``steps`` iterations, ``restarts`` random
starts) and SquareAttack (gradient-free); an input counts as robust only if every component left it
correct. The targeted APGD-T with 9 targets is hgdefend's own ``apgd-t`` row (ART's targeted mode
would run every component against every class). This is robust accuracy with no detector: the
detector's figures are the rows above.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from .context import EvalContext
from .gradient_checks import SQUARE_QUERIES
from .options import AttackOptions


def _autoattack(clf: Any, x: np.ndarray, y: np.ndarray, eps: float, cfg: AttackOptions) -> np.ndarray:
    from art.attacks.evasion import AutoAttack, AutoProjectedGradientDescent, SquareAttack

    common = {"norm": np.inf, "eps": eps, "eps_step": 2 * eps, "max_iter": cfg.steps,
              "nb_random_init": cfg.restarts, "batch_size": len(x), "verbose": False}  # fmt: skip
    parts = [
        AutoProjectedGradientDescent(clf, loss_type="cross_entropy", **common),
        AutoProjectedGradientDescent(clf, loss_type="difference_logits_ratio", **common),
        SquareAttack(clf, norm=np.inf, eps=eps, max_iter=SQUARE_QUERIES, nb_restarts=1,
                     batch_size=len(x), verbose=False),
    ]  # fmt: skip
    onehot = np.eye(clf.nb_classes, dtype=np.float32)[y]
    state = np.random.get_state()  # noqa: NPY002 - ART's random starts and Square use the global state
    np.random.seed(cfg.seed)  # noqa: NPY002
    try:
        aa = AutoAttack(clf, norm=np.inf, eps=eps, eps_step=2 * eps, attacks=parts, batch_size=len(x))
        return aa.generate(x, y=onehot)
    finally:
        np.random.set_state(state)  # noqa: NPY002


def autoattack_section(ctx: EvalContext, cfg: AttackOptions) -> dict[str, Any]:
    """Robust accuracy under ART's AutoAttack at the largest eps, fixed sample and fresh draws."""
    from ..art import HyperGANClassifier

    t0 = time.perf_counter()
    eps = max(cfg.eps)
    sub = ctx.data.test.take(cfg.n_inputs)
    x, y = sub.x.numpy(), sub.y.numpy()
    dev = "gpu" if ctx.device.type == "cuda" else "cpu"
    vr = tuple(float(v) for v in ctx.data.value_range)
    k, seed = ctx.ensemble.k, ctx.options.seed
    out: dict[str, Any] = {
        "eps": eps,
        "inputs": len(x),
        "components": ["apgd-ce", "apgd-dlr", "square"],
        "steps": cfg.steps,
        "restarts": cfg.restarts,
        "square_queries": SQUARE_QUERIES,
    }
    fixed = HyperGANClassifier(ctx.hypergan, members=k, seed=seed, clip_values=vr, device_type=dev)
    x_adv = _autoattack(fixed, x, y, eps, cfg)
    out["fixed_sample"] = {
        "members": k,
        "seed": seed,
        "clean_accuracy": float((fixed.predict(x).argmax(1) == y).mean()),
        "robust_accuracy": float((fixed.predict(x_adv).argmax(1) == y).mean()),
        "judged_by": "the same fixed sample (deterministic, as RobustBench)",
    }
    m = cfg.eot_members or k
    fresh = HyperGANClassifier(ctx.hypergan, members=m, seed=seed + 2, sample_mode="fresh", clip_values=vr,
                               device_type=dev)  # fmt: skip
    x_adv = _autoattack(fresh, x, y, eps, cfg)
    judge = ctx.fresh
    with torch.no_grad():
        pred = judge.member_logits(torch.as_tensor(x_adv).to(ctx.device), batch_size=512)
    from ..probabilities import predict

    out["fresh_draws"] = {
        "members_per_call": m,
        "robust_accuracy": float((predict(pred).cpu().numpy() == y).mean()),
        "judged_by": f"the report's fresh ensemble (K={judge.k}, seed {judge.seed}), unseen by the attacker",
    }
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def render_autoattack(sec: dict[str, Any] | None) -> list[str]:
    if not sec:
        return []
    from .formatting import pct

    f, d = sec["fixed_sample"], sec["fresh_draws"]
    return [
        f"**AutoAttack (ART), robust accuracy at eps {sec['eps']:g}** — no detector; components "
        f"{', '.join(sec['components'])} ({sec['steps']} steps, {sec['restarts']} restart(s), Square "
        f"{sec['square_queries']} queries), first {sec['inputs']} test inputs, {sec['seconds']:g} s. "
        f"Fixed sample of {f['members']} networks (deterministic, as RobustBench): "
        f"**{pct(f['robust_accuracy'])}** (clean {pct(f['clean_accuracy'])}); fresh draws "
        f"({d['members_per_call']} networks per call, judged by an unseen ensemble): "
        f"**{pct(d['robust_accuracy'])}**. RobustBench's MNIST L∞ 0.3 table for comparison: Gowal et al. "
        "2020 96.34 %, TRADES 92.81 %.",
        "",
    ]

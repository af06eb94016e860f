"""Checks for obfuscated gradients (Athalye, Carlini & Wagner, ICML 2018; Carlini et al. 2019, "On
evaluating adversarial robustness"), run against the defence as the attack section attacks it.

A defence whose gradients are shattered, stochastic or vanishing makes a gradient attack look weak
without being robust. Three standard signs, measured on the same few inputs and judged by the same
networks as the attack rows (the scoring ensemble's prediction):

* **eps sweep** — accuracy must not rise with eps, and at a large eps (half the value range or
  more) an attack must reach (nearly) every input: accuracy <= 5 %.
* **more steps** — the same attack with twice the steps must not be much stronger (no more than
  5 points plus one input); if it is, the section's budget was too small.
* **black box vs white box** — the gradient attack must be at least as strong as a gradient-free
  one (ART's SquareAttack on the scoring ensemble's prediction) at the same eps, within the same
  tolerance; if the black box wins, the gradients mislead the attack.

:func:`obfuscation_checks` takes the attack as a factory and the judge as a callable, so the
evaluate section (:func:`section_checks`) and ``benchmarks/robust_mnist.py`` run the same code.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..attacks.base import member_logits_fn
from ..probabilities import log_mean_probs, predict
from .formatting import pct, table

CHECK_INPUTS = 50
"""The checks attack the first min(n_inputs, this) of the section's inputs."""
MAX_ACCURACY_AT_LARGE_EPS = 0.05
TOLERANCE = 0.05
"""Slack of the more-steps and black-box checks, plus one input (attacks and EOT draws are noisy)."""
SQUARE_QUERIES = 300
"""SquareAttack iterations (queries per input), as benchmarks/robust_mnist.py. Square runs in the
full suite only: in the small default section it took 3–6 s on digits (one thread of a loaded
2-core CPU; each query is a forward of all K = 100 scoring networks), several times the rest of the
section, against a 30 s limit on the whole default ``evaluate``."""
SQUARE_BATCH = 250
"""Inputs per forward of the queried networks (bounds memory; no effect on the attack)."""
SKIPPED_DEFAULT = (
    "not run in the small default section, where it would cost several times the rest of the "
    "section; `--attacks` runs it"
)
FINDING = "Signs of obfuscated gradients: {}; the attack numbers may overstate robustness."

__all__ = [
    "CHECK_INPUTS",
    "attack_name",
    "findings",
    "large_eps",
    "obfuscation_checks",
    "render_checks",
    "section_checks",
    "square_attack",
]


# --------------------------------------------------------------------------- pieces
def attack_name(attacks: Sequence[str]) -> str:
    """The iterative attack the checks repeat: the section's first PGD/APGD, else PGD."""
    return next((a for a in attacks if a == "pgd" or a.startswith("apgd")), "pgd")


def large_eps(eps: Sequence[float], value_range: Sequence[float]) -> float:
    """max(0.5, 2 × the largest eps), no more than the width of the value range."""
    return float(min(max(0.5, 2.0 * max(eps, default=0.0)), value_range[1] - value_range[0]))


class _LogMeanProb(nn.Module):
    """A target's log mean probability as a module: the logits ART's black-box attack queries."""

    def __init__(self, target: Any) -> None:
        super().__init__()
        self.logits_fn = member_logits_fn(target)

    def forward(self, x: Tensor) -> Tensor:
        return log_mean_probs(self.logits_fn(x))


def square_attack(
    target: Any,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    queries: int,
    seed: int,
    value_range: Sequence[float] = (0.0, 1.0),
) -> Tensor:
    """ART's SquareAttack (L∞, gradient-free; Andriushchenko et al. 2020) on ``target``'s prediction
    (argmax of the mean member probability). ART draws from the global numpy generator: it is
    seeded with ``seed`` here and restored afterwards."""
    from art.attacks.evasion import SquareAttack
    from art.estimators.classification import PyTorchClassifier

    module = _LogMeanProb(target)
    with torch.no_grad():
        classes = int(module(x[:1]).shape[-1])
    est = PyTorchClassifier(
        model=module,
        loss=nn.NLLLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=classes,
        clip_values=(float(value_range[0]), float(value_range[1])),
        device_type="gpu" if x.device.type == "cuda" else "cpu",
    )
    atk = SquareAttack(est, norm=np.inf, eps=eps, max_iter=queries, nb_restarts=1,
                       batch_size=min(len(x), SQUARE_BATCH), verbose=False)  # fmt: skip
    state = np.random.get_state()  # noqa: NPY002 - ART's SquareAttack draws from the global state
    np.random.seed(seed)  # noqa: NPY002
    try:
        x_adv = atk.generate(x.detach().cpu().numpy(), y=y.cpu().numpy())
    finally:
        np.random.set_state(state)  # noqa: NPY002
    return torch.as_tensor(x_adv, dtype=x.dtype, device=x.device)


# --------------------------------------------------------------------------- the checks
def obfuscation_checks(
    make_attack: Callable[[float, int], Any],
    predict_fn: Callable[[Tensor], Any],
    x: Tensor,
    y: Tensor,
    *,
    eps: Sequence[float],
    steps: int,
    large: float,
    black_box: Callable[[Tensor, Tensor, float], Tensor] | None = None,
    black_box_info: dict[str, Any] | None = None,
    skipped_black_box: str | None = None,
) -> dict[str, Any]:
    """The three checks on inputs ``x`` (labels ``y``).

    ``make_attack(eps, steps)`` builds the white-box attack (called as ``attack(x, y)``);
    ``predict_fn(x)`` gives the defence's predicted labels (what decides "still correct");
    ``black_box(x, y, eps)`` returns black-box adversarial inputs (``None``: the check is skipped,
    for the reason ``skipped_black_box``). Accuracy is over all inputs (clean errors count as
    errors at every eps).
    """
    t0 = time.perf_counter()
    n = len(x)
    y_np = y.cpu().numpy()
    tol = TOLERANCE + 1.0 / n

    def accuracy(x_in: Tensor) -> float:
        pred = predict_fn(x_in)
        pred = pred.cpu().numpy() if isinstance(pred, Tensor) else np.asarray(pred)
        return float((pred == y_np).mean())

    def white(e: float, s: int) -> float:
        return accuracy(make_attack(e, s)(x, y))

    eps_list = sorted({float(e) for e in eps if e > 0})
    top = max(eps_list, default=float(large))  # more steps and black box: the largest eps asked for
    points = eps_list + ([float(large)] if large > max(eps_list, default=0.0) else [])
    accs = [white(e, steps) for e in points]
    clean = accuracy(x)
    at = dict(zip(points, accs, strict=True))
    # (a) eps sweep: never rising (one input of slack, for EOT noise), ~0 at the large eps
    seq = [(0.0, clean), *zip(points, accs, strict=True)]
    rises = [(a, b) for a, b in zip(seq, seq[1:], strict=False) if b[1] > a[1] + 1.0 / n + 1e-12]
    end_ok = accs[-1] <= MAX_ACCURACY_AT_LARGE_EPS
    if end_ok and not rises:
        verdict = (f"accuracy falls to {pct(accs[-1])} at eps {points[-1]:g} and never rises with eps: the "
                   "attack reaches (nearly) every input given the budget")  # fmt: skip
    elif not end_ok:
        verdict = (f"{pct(accs[-1])} of inputs are still classified correctly at eps {points[-1]:g}, where "
                   "an attack should reach (nearly) all of them: the gradients may be obfuscated, or "
                   "the attack is too weak")  # fmt: skip
    else:
        (e0, a0), (e1, a1) = rises[0]
        verdict = (f"accuracy rises from {pct(a0)} at eps {e0:g} to {pct(a1)} at eps {e1:g}: a larger "
                   "budget should never help the defence")  # fmt: skip
    out: dict[str, Any] = {
        "inputs": n,
        "clean_accuracy": clean,
        "tolerance": tol,
        "eps_sweep": {
            "eps": points,
            "accuracy": accs,
            "large_eps": points[-1],
            "max_accuracy_at_large_eps": MAX_ACCURACY_AT_LARGE_EPS,
            "passed": bool(end_ok and not rises),
            "verdict": verdict,
        },
    }
    # (b) more steps at the largest section eps
    base, more = at[top], white(top, 2 * steps)
    ok = more >= base - tol
    out["more_steps"] = {
        "eps": top,
        "steps": steps,
        "accuracy": base,
        "more_steps": 2 * steps,
        "accuracy_more_steps": more,
        "passed": bool(ok),
        "verdict": (
            f"twice the steps moves accuracy from {pct(base)} to {pct(more)}: the budget was enough"
            if ok
            else f"twice the steps lowers accuracy from {pct(base)} to {pct(more)}: the section's budget "
            f"({steps} steps) was too small, so its numbers overstate robustness"
        ),
    }
    # (c) black box vs white box at the largest section eps
    if black_box is None:
        out["black_box"] = {"eps": top, "skipped": skipped_black_box or "not run", "passed": None}
    else:
        bb = accuracy(black_box(x, y, top))
        ok = base <= bb + tol
        out["black_box"] = {
            "eps": top,
            **(black_box_info or {}),
            "accuracy": bb,
            "white_box_accuracy": base,
            "passed": bool(ok),
            "verdict": (
                f"the gradient attack leaves {pct(base)} accuracy, the gradient-free one {pct(bb)}: "
                "white-box is at least as strong"
                if ok
                else f"the gradient-free attack leaves {pct(bb)} accuracy, the gradient attack "
                f"{pct(base)}: the gradients mislead the attack"
            ),
        }
    out["passed"] = all(out[k]["passed"] is not False for k in ("eps_sweep", "more_steps", "black_box"))
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def section_checks(
    ctx: Any, method: Any, cfg: Any, make_attack: Callable[[str, float, int], Any]
) -> dict[str, Any]:
    """The checks of the attack section, against the HyperGAN ``method`` as attacked there:
    ``make_attack(name, eps, steps)`` builds the section's attack (fixed budget, λ = 0) on
    ``method.eot``; the scoring ensemble judges. SquareAttack (:data:`SQUARE_QUERIES` queries) runs
    in the full suite only."""
    scoring = ctx.scored.ensembles[method.scoring_name]
    sub = ctx.data.test.take(min(cfg.n_inputs, CHECK_INPUTS))
    dev = method.attacked.device
    x, y = sub.x.to(dev), sub.y.to(dev)
    name = attack_name(cfg.attacks)
    vr = tuple(ctx.data.value_range)

    def black_box(xb: Tensor, yb: Tensor, e: float) -> Tensor:
        return square_attack(scoring, xb, yb, e, queries=SQUARE_QUERIES, seed=cfg.seed, value_range=vr)

    default = cfg.preset == "default"

    res = obfuscation_checks(
        lambda e, s: make_attack(name, e, s),
        lambda xa: predict(scoring.member_logits(xa, batch_size=512)),
        x,
        y,
        eps=cfg.eps,
        steps=cfg.steps,
        large=large_eps(cfg.eps, vr),
        black_box=None if default else black_box,
        black_box_info={"attack": "square (ART, L∞, gradient-free)", "queries": SQUARE_QUERIES},
        skipped_black_box=SKIPPED_DEFAULT if default else None,
    )
    return {"attack": name, "target": "EOT target of the hypergan rows, λ = 0", **res}


# --------------------------------------------------------------------------- report
CHECK_LABELS = {
    "eps_sweep": "accuracy falls to ~0 as eps grows",
    "more_steps": "twice the steps do not help much",
    "black_box": "white-box at least as strong as black-box",
}


def findings(checks: dict[str, Any] | None) -> list[str]:
    """One sentence for the top of the report when any check failed."""
    if not checks or checks["passed"]:
        return []
    failed = [checks[k]["verdict"] for k in CHECK_LABELS if checks[k]["passed"] is False]
    return [FINDING.format("; ".join(failed))]


def _numbers(key: str, c: dict[str, Any]) -> str:
    if c.get("skipped"):
        return "—"
    if key == "eps_sweep":
        return ", ".join(f"eps {e:g}: {pct(a)}" for e, a in zip(c["eps"], c["accuracy"], strict=True))
    if key == "more_steps":
        return (f"eps {c['eps']:g}: {c['steps']} steps {pct(c['accuracy'])}, {c['more_steps']} steps "
                f"{pct(c['accuracy_more_steps'])}")  # fmt: skip
    return (f"eps {c['eps']:g}: white-box {pct(c['white_box_accuracy'])}, Square ({c['queries']} queries) "
            f"{pct(c['accuracy'])}")  # fmt: skip


def render_checks(checks: dict[str, Any] | None) -> list[str]:
    """The table under the sanity line: one row per check (numbers: the scoring ensemble's accuracy)."""
    if not checks:
        return []
    lines = [
        "Checks for obfuscated gradients (Athalye et al. 2018; Carlini et al. 2019): "
        f"{checks['attack'].upper()} at λ = 0 on the EOT target, on the first {checks['inputs']} attacked "
        f"inputs (clean accuracy {pct(checks['clean_accuracy'])}); accuracy of the scoring ensemble; "
        f"tolerance {pct(checks['tolerance'])}; {checks['seconds']:g} s.",
        "",
    ]
    rows = []
    for key, label in CHECK_LABELS.items():
        c = checks[key]
        state = "skipped" if c["passed"] is None else "passed" if c["passed"] else "**FAILED**"
        rows.append([label, _numbers(key, c), state, c.get("verdict") or c.get("skipped", "")])
    return lines + table(["check", "accuracy", "result", "in plain words"], rows) + [""]

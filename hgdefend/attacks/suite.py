"""The "attacks" section of ``hgdefend evaluate``: every (method × attack × protocol × eps) on the
same inputs, in the same run, with baselines the library trains itself.

Protocols (DESIGN.md §6):

* **paper** — attack the sampled ensemble of K with per-example early stop (FGSM: the smallest eps
  on a grid; PGD: stop once fooled, no random start), then score with a *fresh* ensemble of K.
* **fixed** — FGSM/PGD with the full budget (random start, all steps), scored with a fresh ensemble.
* **adaptive** — EOT over fresh HyperGAN samples at every step and the loss CE − λ·score, λ swept;
  the row kept is the λ with the highest "misclassified and not flagged" rate (the attacker's best).

Baselines (deep ensemble, MC dropout, single network) have no weight distribution to draw a fresh
ensemble from: they are attacked and scored white-box with the same networks (MC dropout draws new
masks on every forward). The threshold is always fit on the clean calibration split at the target
FPR with the scoring ensemble, and judged against the clean test split.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ..data import DataSplits
from ..detectors.detector import conformal_threshold
from ..detectors.metrics import detection_metrics
from ..detectors.scores import SCORE_FUNCTIONS
from ..ensemble import SampledEnsemble
from ..hypergan import HyperGAN
from ..report import fmt, pct, register_section, table
from ..training import TrainConfig, deep_ensemble, mc_dropout, single_network
from ..validation import HgdefendError, check_fraction, check_k
from ..vocab import ATTACK_NAMES, BASELINE_NAMES, PROTOCOL_NAMES
from .adaptive import AdaptivePGD, FreshSamples
from .base import check_eps, check_positive_int
from .fgsm import FGSM
from .pgd import PGD

if TYPE_CHECKING:
    from ..evaluation import EvalContext

SANITY_MIN_SUCCESS = 0.95
# A row is reported as the attack beating the detector when at least this share of the attacked
# inputs is misclassified by the scoring ensemble *and* not flagged. (AUROC alone misleads: an
# adaptive attack that pushes the score below clean inputs gets AUROC < 0.5 while fooling almost no
# one, and a high AUROC can still let a fifth of the inputs through at the operating threshold.)
EVADES_MISSED = 0.10
PLOT_NAME = "attacks_success_vs_eps.png"


def _names(text: str | list | tuple | None, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    if text is None:
        return ()
    items = [s.strip().lower() for s in (text.split(",") if isinstance(text, str) else text)]
    items = [s for s in items if s]
    for s in items:
        if s not in allowed:
            raise HgdefendError(f"{what}: unknown name {s!r}; expected some of {', '.join(allowed)}")
    return tuple(dict.fromkeys(items))


def parse_eps(text: str | list | tuple | None) -> tuple[float, ...]:
    if text is None:
        return ()
    parts = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for p in parts:
        if isinstance(p, str) and not p.strip():
            continue
        try:
            v = float(p)
        except (TypeError, ValueError):
            raise HgdefendError(
                f"eps: expected comma-separated numbers >= 0 like 0.1,0.3, got {p!r}"
            ) from None
        out.append(check_eps(v, "eps"))
    return tuple(dict.fromkeys(out))


@dataclass
class AttackConfig:
    """Every knob of the suite; all of it is written into the report."""

    attacks: tuple[str, ...] = ("fgsm", "pgd")
    eps: tuple[float, ...] = (0.1, 0.3)
    protocols: tuple[str, ...] = ("paper", "fixed", "adaptive")
    baselines: tuple[str, ...] = ()
    n_inputs: int = 200  # first n test inputs are attacked (all methods get the same ones)
    steps: int = 40
    alpha: float | None = None  # None: 2.5 · eps / steps
    restarts: int = 1
    fgsm_grid: int = 10
    lambdas: tuple[float, ...] = (0.0, 1.0)
    eot_members: int | None = None  # None: K
    bank_size: int | None = None  # adaptive targets a fixed bank of this many sampled networks
    sanity_eps: float | None = None  # None: max(0.5, largest eps)
    baseline_steps: int | None = None  # None: the dataset recipe's steps
    target_fpr: float = 0.05
    seed: int = 0
    n_bootstrap: int = 100

    def __post_init__(self) -> None:
        self.attacks = _names(self.attacks, ATTACK_NAMES, "attacks") or ATTACK_NAMES
        self.protocols = _names(self.protocols, PROTOCOL_NAMES, "protocols") or ("paper", "fixed")
        self.baselines = _names(self.baselines, BASELINE_NAMES, "baselines")
        self.eps = parse_eps(self.eps) or (0.1, 0.3)
        for name in ("n_inputs", "steps", "restarts", "fgsm_grid"):
            check_positive_int(getattr(self, name), name)
        if self.alpha is not None:
            check_eps(self.alpha, "alpha")
        if self.eot_members is not None:
            check_k(self.eot_members, "eot_members")
        self.lambdas = tuple(float(v) for v in self.lambdas) or (0.0,)
        check_fraction(self.target_fpr, "target_fpr")

    def describe(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class Method:
    """A defence under attack: ``attacked`` is what the attacker differentiates; ``scoring`` judges."""

    name: str
    attacked: SampledEnsemble
    scoring: SampledEnsemble
    score: str
    eot: Any = None  # adaptive target (FreshSamples for HyperGAN), else ``attacked``
    info: dict[str, Any] = field(default_factory=dict)


def build_baselines(
    names: tuple[str, ...],
    hypergan: HyperGAN,
    data: DataSplits,
    k: int,
    *,
    steps: int,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> list[Method]:
    """Train the baselines on the same training split through the same batched member forward."""
    target, out = hypergan.target, []
    for name in names:
        cfg = TrainConfig(steps=steps, batch_size=batch_size, seed=seed)
        t0 = time.perf_counter()
        if name == "deep-ensemble":
            ens = deep_ensemble(target, data.train, k, cfg, device=device, progress=False)
            score = "entropy"
        elif name == "single":
            ens = single_network(target, data.train, cfg, device=device, progress=False)
            score = "max_prob"
        else:
            if not hasattr(target, "layers"):
                raise HgdefendError(
                    "baselines: mc-dropout needs a built-in TargetSpec target, not a user module"
                )
            ens = mc_dropout(target, data.train, k, cfg, device=device, progress=False)
            score = "entropy"
        info = {
            "members": ens.k,
            "train_steps": steps,
            "batch_size": batch_size,
            "seed": seed,
            "train_seconds": round(time.perf_counter() - t0, 2),
        }
        out.append(Method(name, ens, ens, score, ens, info))
    return out


def _predict(ens: SampledEnsemble, x: Tensor, batch: int = 512) -> tuple[Tensor, Tensor]:
    """(ensemble prediction, member logits) without gradients, in batches."""
    logits = ens.member_logits(x, batch_size=batch)
    return torch.softmax(logits, -1).mean(0).argmax(-1), logits


def _make_attack(
    attack: str, protocol: str, target: Any, eps: float, cfg: AttackConfig, *, score: str, lam: float = 0.0
) -> FGSM | PGD:
    early = protocol == "paper"
    kw: dict[str, Any] = {"score": score, "lam": lam} if protocol == "adaptive" else {}
    if attack == "fgsm":
        return FGSM(target, eps, early_stop=early, grid=cfg.fgsm_grid, **kw)
    cls = AdaptivePGD if protocol == "adaptive" else PGD
    if protocol == "adaptive":
        kw = {"score": score, "lam": lam}
    return cls(
        target,
        eps,
        cfg.alpha,
        cfg.steps,
        random_start=not early,
        restarts=cfg.restarts,
        early_stop=early,
        seed=cfg.seed,
        **kw,
    )


def _evaluate(
    method: Method,
    x: Tensor,
    y: Tensor,
    x_adv: Tensor,
    clean_pred_ok: Tensor,
    clean_scores: np.ndarray,
    threshold: float,
    cfg: AttackConfig,
) -> dict[str, Any]:
    attacked_pred, _ = _predict(method.attacked, x_adv)
    fresh_pred, logits = _predict(method.scoring, x_adv)
    adv_scores = SCORE_FUNCTIONS[method.score](logits).cpu().numpy().astype(np.float64)
    wrong = (fresh_pred != y).cpu().numpy()
    m = detection_metrics(
        clean_scores,
        adv_scores,
        threshold,
        target_fpr=cfg.target_fpr,
        suspect_wrong=wrong,
        n_bootstrap=cfg.n_bootstrap,
        seed=cfg.seed,
    )
    delta = (x_adv - x).flatten(1)
    n_ok = int(clean_pred_ok.sum())
    success = float(((attacked_pred != y) & clean_pred_ok).sum()) / n_ok if n_ok else float("nan")
    return {
        "attack_success": success,
        "fresh_accuracy": float(1 - wrong.mean()),
        "mean_linf": float(delta.abs().max(1).values.mean()),
        "mean_l2": float(delta.norm(dim=1).mean()),
        "auroc": m["auroc"],
        "auroc_ci": m.get("auroc_ci"),
        "aupr": m["aupr"],
        "tpr_at_threshold": m["tpr_at_threshold"],
        "tpr_ci": m.get("tpr_ci"),
        "fpr_at_95_tpr": m["fpr_at_95_tpr"],
        "missed_and_wrong": m["missed_and_wrong"],
    }


def attackers_best(sweep: list[dict[str, Any]]) -> dict[str, Any]:
    """The λ an attacker would keep: most inputs wrong and unflagged; on a tie, more inputs fooled,
    then the lower AUROC. (Without the middle key a tie at a few per cent picks the λ that pushes
    the score under clean inputs but fools almost no one.)"""
    return max(sweep, key=lambda r: (r["missed_and_wrong"], r["attack_success"], -r["auroc"]))


def run_method(method: Method, data: DataSplits, cfg: AttackConfig) -> dict[str, Any]:
    """Threshold on clean calibration data, clean test scores, then every attack/protocol/eps."""
    dev = method.attacked.device
    _, calib_logits = _predict(method.scoring, data.calib.x.to(dev))
    threshold = conformal_threshold(SCORE_FUNCTIONS[method.score](calib_logits).cpu().numpy(), cfg.target_fpr)
    _, test_logits = _predict(method.scoring, data.test.x.to(dev))
    clean_scores = SCORE_FUNCTIONS[method.score](test_logits).cpu().numpy().astype(np.float64)
    sub = data.test.take(cfg.n_inputs)
    x, y = sub.x.to(dev), sub.y.to(dev)
    clean_ok = _predict(method.attacked, x)[0] == y
    rows = []
    for attack in cfg.attacks:
        for protocol in cfg.protocols:
            for eps in cfg.eps:
                t0 = time.perf_counter()
                target = method.eot if protocol == "adaptive" else method.attacked
                sweep = []
                for lam in cfg.lambdas if protocol == "adaptive" else (0.0,):
                    atk = _make_attack(attack, protocol, target, eps, cfg, score=method.score, lam=lam)
                    x_adv = atk(x, y)
                    res = _evaluate(method, x, y, x_adv, clean_ok, clean_scores, threshold, cfg)
                    sweep.append({"params": atk.describe(), **res})
                best = attackers_best(sweep)
                row = {
                    "method": method.name,
                    "attack": attack,
                    "protocol": protocol,
                    "eps": eps,
                    "score": method.score,
                    **best,
                    "seconds": round(time.perf_counter() - t0, 2),
                }
                if protocol == "adaptive":
                    row["lambda_sweep"] = [
                        {
                            "lam": r["params"].get("lam", 0.0),
                            "auroc": r["auroc"],
                            "missed_and_wrong": r["missed_and_wrong"],
                            "attack_success": r["attack_success"],
                        }
                        for r in sweep
                    ]
                rows.append(row)
    return {
        "name": method.name,
        "score": method.score,
        "threshold": threshold,
        "attacked_ensemble": method.attacked.describe(),
        "scoring_ensemble": method.scoring.describe(),
        "clean_accuracy_attacked_inputs": float(clean_ok.float().mean()),
        "realised_fpr": float(np.mean(clean_scores > threshold)),
        **method.info,
        "rows": rows,
    }


def sanity_check(ensemble: SampledEnsemble, data: DataSplits, cfg: AttackConfig) -> dict[str, Any]:
    """Fixed-budget PGD against ONE fixed network at a large eps must succeed (~100 %): if it does
    not, the attack (gradients, step size, clipping) is broken and no other number can be trusted."""
    eps = cfg.sanity_eps if cfg.sanity_eps is not None else max(0.5, *cfg.eps)
    one = ensemble.member(0)
    sub = data.test.take(cfg.n_inputs)
    x, y = sub.x.to(one.device), sub.y.to(one.device)
    atk = PGD(one, eps, None, cfg.steps, seed=cfg.seed)
    x_adv = atk(x, y)
    ok = _predict(one, x)[0] == y
    success = float(((_predict(one, x_adv)[0] != y) & ok).sum()) / max(1, int(ok.sum()))
    return {
        "params": atk.describe(),
        "network": "member 0 of the attacked HyperGAN ensemble",
        "success": success,
        "min_success": SANITY_MIN_SUCCESS,
        "passed": success >= SANITY_MIN_SUCCESS,
    }


def success_plot(methods: list[dict[str, Any]], out_dir: str | Path) -> str | None:
    """Attack success and 'misclassified and not flagged' vs eps, one line per method/attack/protocol."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    try:
        for m in methods:
            keys = dict.fromkeys((r["attack"], r["protocol"]) for r in m["rows"])
            for attack, protocol in keys:
                rs = sorted(
                    (r for r in m["rows"] if (r["attack"], r["protocol"]) == (attack, protocol)),
                    key=lambda r: r["eps"],
                )
                label = f"{m['name']} {attack} {protocol}"
                eps = [r["eps"] for r in rs]
                axes[0].plot(eps, [r["attack_success"] for r in rs], marker="o", label=label)
                axes[1].plot(eps, [r["missed_and_wrong"] for r in rs], marker="o", label=label)
        axes[0].set(xlabel="eps (L∞)", ylabel="attack success on attacked ensemble", ylim=(-0.02, 1.02))
        axes[1].set(xlabel="eps (L∞)", ylabel="misclassified and not flagged", ylim=(-0.02, 1.02))
        axes[1].legend(fontsize=6, loc="best")
        fig.tight_layout()
        fig.savefig(out / PLOT_NAME, dpi=110)
    finally:
        plt.close(fig)
    return PLOT_NAME


def findings(sec: dict[str, Any]) -> list[str]:
    """Plain sentences for the top of the report: where an attack beats the detector, broken attacks."""
    out = []
    if not sec["sanity"]["passed"]:
        out.append(
            f"Attack sanity check FAILED: PGD at eps {sec['sanity']['params']['eps']:g} fooled only "
            f"{pct(sec['sanity']['success'])} of inputs on one fixed network (expected >= "
            f"{pct(SANITY_MIN_SUCCESS, 0)}); the attack numbers below are not trustworthy."
        )
    label = {"paper": "Paper-protocol", "fixed": "Fixed-budget", "adaptive": "Adaptive (EOT, CE − λ·score)"}
    for m in sec["methods"]:
        if m["name"] != "hypergan":
            continue
        for r in m["rows"]:
            if r["missed_and_wrong"] >= EVADES_MISSED:
                lam = f", λ = {r['params']['lam']:g}" if "lam" in r["params"] else ""
                out.append(
                    f"{label[r['protocol']]} {r['attack'].upper()} at eps {r['eps']:g}{lam} evades the "
                    f"{r['score']} detector: {pct(r['missed_and_wrong'])} of attacked inputs misclassified "
                    f"by a fresh ensemble and not flagged (AUROC {fmt(r['auroc'], 2)}, TPR "
                    f"{pct(r['tpr_at_threshold'])} at the threshold)."
                )
    return out


def attack_config(opts: Any) -> AttackConfig | None:
    """The suite's config from ``EvaluateOptions`` (``--attacks`` etc., plus ``extra["attacks"]``
    for the finer knobs); ``None`` without ``--attacks``. Called before training so bad names fail fast."""
    if not opts.attacks and not (opts.eps or opts.protocols or opts.baselines):
        return None
    if not opts.attacks:
        raise HgdefendError(
            "attacks: --eps, --protocols and --baselines need --attacks (e.g. --attacks fgsm,pgd)"
        )
    extra = dict(opts.extra.get("attacks", {}))
    return AttackConfig(
        attacks=opts.attacks,
        eps=opts.eps,
        protocols=opts.protocols,
        baselines=opts.baselines,
        target_fpr=opts.target_fpr,
        seed=opts.seed,
        **extra,
    )


def attacks_section(ctx: EvalContext, cfg: AttackConfig | None = None) -> dict[str, Any] | None:
    """Run the suite when ``--attacks`` is given (classification only)."""
    cfg = cfg or attack_config(ctx.options)
    if cfg is None:
        return None
    if ctx.data.task != "classification":
        raise HgdefendError("attacks: only classification datasets can be attacked")
    t0 = time.perf_counter()
    from ..evaluation import default_recipe

    _, recipe = default_recipe(ctx.data)
    k, seed, hg = ctx.ensemble.k, cfg.seed, ctx.hypergan
    fresh = hg.ensemble(k, seed=seed + 1).to(ctx.device)
    eot = FreshSamples(hg, cfg.eot_members or k, seed=seed + 2, bank_size=cfg.bank_size)
    methods = [
        Method(
            "hypergan", ctx.ensemble, fresh, "entropy", eot, {"fresh_seed": seed + 1, "eot": eot.describe()}
        )
    ]
    methods += build_baselines(
        cfg.baselines,
        hg,
        ctx.data,
        k,
        steps=cfg.baseline_steps or recipe.steps,
        batch_size=recipe.batch_size,
        seed=seed,
        device=ctx.device,
    )
    sec: dict[str, Any] = {
        "config": cfg.describe(),
        "inputs": min(cfg.n_inputs, len(ctx.data.test)),
        "sanity": sanity_check(ctx.ensemble, ctx.data, cfg),
        "methods": [run_method(m, ctx.data, cfg) for m in methods],
    }
    sec["plot"] = success_plot(sec["methods"], ctx.options.out)
    sec["findings"] = findings(sec)
    sec["gate_rows"] = [
        {
            "name": f"{r['attack']} {r['protocol']} eps={r['eps']:g} ({r['score']})",
            "auroc": r["auroc"],
            "aupr": r["aupr"],
            "tpr": r["tpr_at_threshold"],
        }
        for r in sec["methods"][0]["rows"]
    ]
    sec["seconds"] = round(time.perf_counter() - t0, 2)
    return sec


# --------------------------------------------------------------------------- Markdown
def render_attacks(sec: dict[str, Any]) -> list[str]:
    cfg = sec["config"]
    fpr = cfg["target_fpr"]
    s = sec["sanity"]
    lines = [
        f"The first {sec['inputs']:,} test inputs are attacked; every method sees the same inputs. "
        "**paper**: early stop once the attacked ensemble is fooled (FGSM: smallest eps on a grid), scored "
        "by a fresh ensemble. **fixed**: full budget, random start, no early stop. **adaptive**: EOT over "
        "fresh HyperGAN samples each step and loss CE − λ·score (λ swept; the row shows the attacker's best "
        "λ). Baselines are attacked and scored with the same networks (white-box). Thresholds are fit on the "
        f"clean calibration split at {pct(fpr)} FPR.",
        "",
    ]
    lines += [
        f"Sanity check (PGD, eps {s['params']['eps']:g}, {s['params']['steps']} steps, one fixed network): "
        f"success {pct(s['success'])} — **{'passed' if s['passed'] else 'FAILED: the attack is broken'}**.",
        "",
    ]
    for f in sec.get("findings", []):
        lines.append(f"- **{f}**")
    if sec.get("findings"):
        lines.append("")
    rows = []
    for m in sec["methods"]:
        for r in m["rows"]:
            rows.append(
                [
                    m["name"],
                    r["attack"],
                    r["protocol"],
                    f"{r['eps']:g}",
                    r["score"],
                    pct(r["attack_success"]),
                    pct(r["fresh_accuracy"]),
                    fmt(r["auroc"]),
                    pct(r["tpr_at_threshold"]),
                    pct(r["missed_and_wrong"]),
                    fmt(r["mean_linf"]),
                ]
            )
    lines += table(
        [
            "method",
            "attack",
            "protocol",
            "eps",
            "score",
            "attack success (attacked)",
            "accuracy (scoring ens.)",
            "AUROC",
            f"TPR at {pct(fpr, 0)} FPR",
            "missed and wrong",
            "mean L∞",
        ],
        rows,
    )
    lines += ["", "Methods (scoring ensemble = the networks that judge the attacked inputs):", ""]
    lines += table(
        ["method", "score", "attacked", "scoring", "clean accuracy (attacked inputs)", "realised FPR"],
        [
            [
                m["name"],
                m["score"],
                f"{m['attacked_ensemble']['kind']} K={m['attacked_ensemble']['members']} "
                f"seed {m['attacked_ensemble']['seed']}",
                f"K={m['scoring_ensemble']['members']} seed {m['scoring_ensemble']['seed']}",
                pct(m["clean_accuracy_attacked_inputs"]),
                pct(m["realised_fpr"]),
            ]
            for m in sec["methods"]
        ],
    )
    lines += [
        "",
        "Attack hyper-parameters: " + ", ".join(f"{k}={v}" for k, v in cfg.items()) + ". PGD step "
        "size (alpha) defaults to 2.5·eps/steps; the paper protocol uses no random start.",
    ]
    if sec.get("plot"):
        lines += ["", f"![attack success vs eps]({sec['plot']})"]
    return lines


register_section("attacks", "Attacks (paper protocol, fixed budget, adaptive)", render_attacks)

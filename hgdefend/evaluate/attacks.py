"""The "attacks" section: every (method × attack × protocol × eps) on the same inputs, in one run,
with baselines the library trains itself.

Protocols:

* **paper** — attack the sampled ensemble of K with per-example early stop (FGSM: the smallest eps
  on a grid; PGD: stop once fooled, no random start), then score with a *fresh* ensemble of K.
* **fixed** — FGSM/PGD with the full budget (random start, all steps), scored with a fresh ensemble.
* **adaptive** — EOT over fresh HyperGAN samples at every step and the loss CE − λ·score, λ swept;
  the row kept is the λ with the highest "misclassified and not flagged" rate (the attacker's best).

Baselines (:mod:`.baselines`: deep ensemble, MC dropout, single network, their adversarially
trained versions, and the single network with ART's binary input detector) have no weight
distribution to draw a fresh ensemble from: they are attacked and scored white-box with the same
networks (MC dropout draws new masks on every forward). Thresholds are fit on the clean calibration
split at the target FPR with each method's own score (``Method.score_fn``), and judged against the
clean test split.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..attacks import ATTACKS, FGSM, PGD, AdaptivePGD, FreshSamples
from ..detectors.detector import conformal_threshold
from ..detectors.metrics import detection_metrics
from ..detectors.scores import ScoreOr
from ..ensemble import SampledEnsemble
from ..errors import HgdefendError
from ..probabilities import predict
from ..vocab import TARGETED_ATTACKS
from .autoattack import autoattack_section, render_autoattack
from .baselines import DetectorFGSM, DetectorPGD, Method, build_baselines, split_scores
from .context import EvalContext
from .detection import fit_detector
from .formatting import fmt, pct, table
from .gradient_checks import findings as check_findings
from .gradient_checks import render_checks, section_checks
from .options import AttackOptions
from .per_input import CSV_NAME, per_input_records, write_csv
from .plots import plot_attack_success
from .progress import bar
from .tramer import mark_inconclusive, tramer_checks, worst_case

SANITY_MIN_SUCCESS = 0.95
ROBUST_ATTACKS = ("apgd-ce", "apgd-ce-t", "apgd-t", "apgd-dlr")
"""The attacks trusted to measure the accuracy a classifier keeps at eps/2 for the Tramèr check:
a section of weaker attacks (FGSM, PGD) is checked with APGD-CE and APGD-CE-T instead."""
# A row is reported as the attack beating the detector when at least this share of the attacked
# inputs is misclassified by the scoring ensemble *and* not flagged. (AUROC alone misleads: an
# adaptive attack that pushes the score below clean inputs gets AUROC < 0.5 while fooling almost no
# one, and a high AUROC can still let a fifth of the inputs through at the operating threshold.)
EVADES_MISSED = 0.10
PLOT_NAME = "attacks_success_vs_eps.png"
TRAMER_BOUND = (
    "A detector robust at eps would yield a classifier robust at eps/2 (Tramèr, ICML 2022), so at a "
    "budget where the classifier is not robust, detection alone cannot stop a white-box attacker."
)
"""Said next to every claim about detecting adversarial inputs (this section, the summary)."""
PROTOCOL_LABELS = {
    "paper": "Paper-protocol",
    "fixed": "Fixed-budget",
    "adaptive": "Adaptive (EOT, CE − λ·score)",
}


__all__ = ["Method", "attacks_section", "build_baselines", "render_attacks", "run_method"]


def _predict(ens: SampledEnsemble, x: Tensor, batch: int = 512) -> tuple[Tensor, Tensor]:
    """(ensemble prediction, member logits) without gradients, in batches."""
    logits = ens.member_logits(x, batch_size=batch)
    return predict(logits), logits


def _make_attack(
    attack: str,
    protocol: str,
    target: Any,
    eps: float,
    cfg: AttackOptions,
    *,
    score: str,
    lam: float = 0.0,
    detector: Any = None,
    threshold: float | None = None,
) -> Any:
    """The attack of one row. Under the adaptive protocol the loss is CE − λ·score, or CE −
    λ·detector(x, logits) when the method's detector reads the input (APGD takes it as
    ``detector=``; FGSM and PGD through :class:`DetectorFGSM` / :class:`DetectorPGD`), and the
    APGD family knows the detector's ``threshold`` (white box), so it keeps per input a point that
    is wrong *and* unflagged when it finds one; ``score-search`` searches λ per input instead."""
    early, adaptive = protocol == "paper", protocol == "adaptive"
    kw: dict[str, Any] = {}
    if adaptive:
        kw = {"lam": lam, **({"detector": detector} if detector is not None else {"score": score})}
    on_input = adaptive and detector is not None
    if attack == "fgsm":
        return (DetectorFGSM if on_input else FGSM)(target, eps, early_stop=early, grid=cfg.fgsm_grid, **kw)
    if attack == "pgd":
        cls = DetectorPGD if on_input else AdaptivePGD if adaptive else PGD
        return cls(target, eps, cfg.alpha, cfg.steps, random_start=not early, restarts=cfg.restarts,
                   early_stop=early, seed=cfg.seed, **kw)  # fmt: skip
    # the APGD family: its own step-size schedule (no alpha) and no early stop
    kw.update(restarts=cfg.restarts, seed=cfg.seed)
    if adaptive and threshold is not None:
        kw["threshold"] = threshold
    if attack in TARGETED_ATTACKS:
        kw["targets"] = cfg.targets
    if attack == "score-search":
        kw.pop("lam", None)
        kw.update(targets=cfg.search_targets, search_steps=cfg.search_steps)
    return ATTACKS[attack](target, eps, cfg.steps, **kw)


def applies(attack: str, protocol: str) -> bool:
    """The score search is an adaptive attack by definition (it needs the detector's score and
    threshold): it has no fixed or paper row."""
    return attack != "score-search" or protocol == "adaptive"


def _evaluate(
    method: Method,
    scoring: SampledEnsemble,
    x: Tensor,
    y: Tensor,
    x_adv: Tensor,
    clean_pred_ok: Tensor,
    clean_scores: np.ndarray,
    threshold: float,
    cfg: AttackOptions,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A row's figures, and its per-input arrays (what :mod:`.per_input` and the worst case read)."""
    attacked_pred, _ = _predict(method.attacked, x_adv)
    fresh_pred, logits = _predict(scoring, x_adv)
    adv_scores = method.scores(x_adv, logits)
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
    linf = delta.abs().max(1).values
    n_ok = int(clean_pred_ok.sum())
    success = float(((attacked_pred != y) & clean_pred_ok).sum()) / n_ok if n_ok else float("nan")
    flagged = adv_scores > threshold
    arrays = {
        "adv_pred": fresh_pred.cpu().numpy(),
        "score": adv_scores,
        "flagged": flagged,
        "wrong": wrong,
        "through": wrong & ~flagged,
        "linf": linf.cpu().numpy(),
    }
    return {
        "attack_success": success,
        "attack_success_of": n_ok,
        "fresh_accuracy": float(1 - wrong.mean()),
        "mean_linf": float(linf.mean()),
        "mean_l2": float(delta.norm(dim=1).mean()),
        "auroc": m["auroc"],
        "auroc_ci": m.get("auroc_ci"),
        "aupr": m["aupr"],
        "tpr_at_threshold": m["tpr_at_threshold"],
        "tpr_ci": m.get("tpr_exact_ci"),
        "fpr_at_95_tpr": m["fpr_at_95_tpr"],
        "missed_and_wrong": m["missed_and_wrong"],
    }, arrays


def attackers_best(sweep: list[dict[str, Any]]) -> dict[str, Any]:
    """The λ an attacker would keep: most inputs wrong and unflagged; on a tie, more inputs fooled,
    then the lower AUROC. (Without the middle key a tie at a few per cent picks the λ that pushes
    the score under clean inputs but fools almost no one.)"""
    return max(sweep, key=lambda r: (r["missed_and_wrong"], r["attack_success"], -r["auroc"]))


def fit_threshold(ctx: EvalContext, method: Method) -> float:
    """The threshold at the target FPR on the clean calibration split, through ``method.score_fn``:
    a named score through the detector and the scored-splits cache (as the detection section), an
    input detector's scores computed from the calibration inputs (the same conformal quantile)."""
    if method.detector is None:
        return fit_detector(ctx, method.scoring_name, method.score).threshold_
    return conformal_threshold(split_scores(ctx, method, "calib"), ctx.options.target_fpr)


def run_method(ctx: EvalContext, method: Method, cfg: AttackOptions, progress: Any) -> dict[str, Any]:
    """Threshold on clean calibration data (through the detector), then every attack/protocol/eps,
    the per-input worst case over all of them at each eps, and the Tramèr check of that worst case."""
    dev = method.attacked.device
    scoring = ctx.scored.ensembles[method.scoring_name]
    threshold = fit_threshold(ctx, method)
    clean_scores = split_scores(ctx, method, "test")
    sub = ctx.data.test.take(cfg.n_inputs)
    x, y = sub.x.to(dev), sub.y.to(dev)
    clean_ok = _predict(method.attacked, x)[0] == y
    test_ok = ctx.scored.prediction(method.scoring_name, "test").predicted.cpu() == ctx.data.test.y
    score_kw = {"score": method.score, "detector": method.detector, "threshold": threshold}
    rows, arrays = [], []
    for attack in cfg.attacks:
        for protocol in cfg.protocols:
            if not applies(attack, protocol):
                continue
            for eps in cfg.eps:
                t0 = time.perf_counter()
                target = method.eot if protocol == "adaptive" else method.attacked
                sweep = []
                lams = cfg.lambdas if protocol == "adaptive" and attack != "score-search" else (0.0,)
                for lam in lams:
                    atk = _make_attack(attack, protocol, target, eps, cfg, lam=lam, **score_kw)
                    res, arr = _evaluate(
                        method, scoring, x, y, atk(x, y), clean_ok, clean_scores, threshold, cfg
                    )
                    sweep.append({"params": atk.describe(), **res, "_arrays": arr})
                best = attackers_best(sweep)
                arrays.append(best.pop("_arrays"))
                row = {
                    "method": method.name,
                    "attack": attack,
                    "protocol": protocol,
                    "eps": eps,
                    "score": method.score,
                    **best,
                    "seconds": round(time.perf_counter() - t0, 2),
                }
                if len(sweep) > 1:
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
                progress.update(1)
    with torch.no_grad():
        clean_pred, clean_logits = _predict(scoring, x)
        clean_flag = method.scores(x, clean_logits) > threshold
    clean = {"label": y.cpu().numpy(), "pred": clean_pred.cpu().numpy(), "flagged": clean_flag}
    worst = worst_case(rows, arrays, cfg.eps)

    strong = [a for a in cfg.attacks if a in ROBUST_ATTACKS] or list(ROBUST_ATTACKS[:2])
    if cfg.preset == "default":  # see AttackOptions.default_section: APGD-CE alone, for time
        strong = strong[:1]

    def robust_accuracy(eps: float) -> float:
        """Per-input worst case at ``eps`` of the section's APGD attacks (else APGD-CE and the
        targeted APGD-CE-T) at λ = 0, with EOT: the accuracy the classifier keeps, no detector."""
        ok = np.ones(len(x), dtype=bool)
        for attack in strong:
            atk = _make_attack(attack, "adaptive", method.eot, eps, cfg, lam=0.0, **score_kw)
            ok &= (_predict(scoring, atk(x, y))[0] == y).cpu().numpy()
        return float(ok.mean())

    use_rows = {r["eps"] for r in rows if r["attack"] in ROBUST_ATTACKS}
    tramer = tramer_checks(worst, clean, robust_accuracy, rows_strong_at=use_rows)
    mark_inconclusive(rows, worst, tramer)
    return {
        "name": method.name,
        "score": method.score,
        "threshold": threshold,
        "attacked_ensemble": method.attacked.describe(),
        "scoring_ensemble": scoring.describe(),
        "clean_accuracy": float(test_ok.float().mean()),
        "clean_accuracy_attacked_inputs": float(clean_ok.float().mean()),
        "realised_fpr": float(np.mean(clean_scores > threshold)),
        **method.info,
        "rows": rows,
        "worst_case": worst,
        "tramer": tramer,
        "per_input": per_input_records(method.name, clean, rows, arrays),
    }


def sanity_check(ctx: EvalContext, cfg: AttackOptions) -> dict[str, Any]:
    """Fixed-budget PGD against ONE fixed network at a large eps must succeed (~100 %): if it does
    not, the attack (gradients, step size, clipping) is broken and no other number can be trusted."""
    eps = cfg.sanity_eps if cfg.sanity_eps is not None else max(0.5, *cfg.eps)
    one = ctx.ensemble.member(0)
    sub = ctx.data.test.take(cfg.n_inputs)
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


def findings(sec: dict[str, Any]) -> list[str]:
    """Plain sentences for the top of the report: where an attack beats the detector, broken attacks."""
    out = []
    if not sec["sanity"]["passed"]:
        out.append(
            f"Attack sanity check FAILED: PGD at eps {sec['sanity']['params']['eps']:g} fooled only "
            f"{pct(sec['sanity']['success'])} of inputs on one fixed network (expected >= "
            f"{pct(SANITY_MIN_SUCCESS, 0)}); the attack numbers below are not trustworthy."
        )
    out += check_findings(sec.get("gradient_checks"))
    for m in sec["methods"]:
        if not m["name"].startswith("hypergan"):
            continue
        for c in m["tramer"]:
            if not c["conclusive"]:
                out.append(f"Inconclusive at eps {c['eps']:g} (Tramèr check): {c['verdict']}.")
        for w in m["worst_case"]:
            if w["missed_and_wrong"] >= EVADES_MISSED:
                by = ", ".join(f"{k}: {v}" for k, v in w["through_first_by"].items())
                out.append(
                    f"At eps {w['eps']:g} the attacks together (per-input worst case over {w['rows']} rows) "
                    f"get {pct(w['missed_and_wrong'])} of attacked inputs misclassified by a fresh "
                    f"ensemble and not flagged by the {m['score']} detector (first through: {by})."
                )
    return out


def attacks_section(ctx: EvalContext) -> dict[str, Any] | None:
    """Run the suite: the one asked for with ``--attacks``, else the small default section
    (classification only; the default section is skipped on other tasks, ``--attacks`` refused)."""
    cfg = ctx.attack
    if cfg is None:
        return None
    if ctx.data.task != "classification":
        if cfg.preset == "default":
            return None
        raise HgdefendError("attacks: only classification datasets can be attacked")
    t0 = time.perf_counter()
    k, seed, hg = ctx.ensemble.k, cfg.seed, ctx.hypergan
    eot = FreshSamples(hg, cfg.eot_members or k, seed=seed + 2, bank_size=cfg.bank_size)
    methods = [
        Method(
            "hypergan",
            ctx.ensemble,
            "fresh",
            "entropy",
            eot,
            {"fresh_seed": ctx.fresh.seed, "eot": eot.describe()},
        )
    ]
    if cfg.or_scores:  # the OR of several scores, each at its own threshold (a user's combination)
        thresholds = [fit_detector(ctx, "fresh", s).threshold_ for s in cfg.or_scores]
        combo = ScoreOr(cfg.or_scores, thresholds)
        methods.append(Method("hypergan-or", ctx.ensemble, "fresh", combo.__name__, eot,
                              {"fresh_seed": ctx.fresh.seed, "eot": eot.describe(),
                               "or_thresholds": dict(zip(cfg.or_scores, thresholds, strict=True))},
                              detector=combo))  # fmt: skip
    methods += build_baselines(ctx, cfg)
    ctx.scored.precompute([(m.scoring_name, s) for m in methods for s in ("calib", "test")])
    sec: dict[str, Any] = {
        "config": cfg.describe(),
        "inputs": min(cfg.n_inputs, len(ctx.data.test)),
        "sanity": sanity_check(ctx, cfg),
    }
    n_rows = len(methods) * len(cfg.attacks) * len(cfg.protocols) * len(cfg.eps)
    with bar(n_rows, "attacks", ctx.progress) as b:
        sec["methods"] = [run_method(ctx, m, cfg, b) for m in methods]
    hg_method = methods[0]

    def check_attack(name: str, eps: float, steps: int) -> Any:
        c = replace(cfg, steps=steps)
        return _make_attack(name, "fixed", hg_method.eot, eps, c, score=hg_method.score)

    sec["gradient_checks"] = section_checks(ctx, hg_method, cfg, check_attack)
    if cfg.autoattack:
        sec["autoattack"] = autoattack_section(ctx, cfg)
    sec["plot"] = None  # one eps is one point per line: no plot (and no matplotlib time)
    if len(cfg.eps) > 1:
        sec["plot"] = plot_attack_success(sec["methods"], ctx.out_dir / PLOT_NAME).name
    records = [rec for m in sec["methods"] for rec in m.pop("per_input")]
    sec["per_input"] = records
    sec["per_input_csv"] = write_csv(records, ctx.out_dir / CSV_NAME).name
    sec["findings"] = findings(sec)
    sec["gate_rows"] = []
    for m in sec["methods"]:
        if not m["name"].startswith("hypergan"):
            continue
        sec["gate_rows"] += [
            {
                "name": f"{r['attack']} {r['protocol']} eps={r['eps']:g} ({r['score']})",
                "missed": r["missed_and_wrong"],
                "inconclusive": r["inconclusive"],
            }
            for r in m["rows"]
        ] + [
            {
                "name": f"worst case over all attacks eps={w['eps']:g} ({m['score']})",
                "missed": w["missed_and_wrong"],
                "inconclusive": w["inconclusive"],
            }
            for w in m["worst_case"]
        ]
    sec["seconds"] = round(time.perf_counter() - t0, 2)
    return sec


# --------------------------------------------------------------------------- Markdown
def _trained(m: dict[str, Any]) -> str:
    """How a method's networks (and detector) were trained, in a few words."""
    if m["name"] == "hypergan":
        return "the evaluated model"
    if m["name"] == "hypergan-or":
        return "the evaluated model; flagged when any of " + ", ".join(m["or_thresholds"]) + " fires"
    adv, det = m.get("adversarial_training"), m.get("detector")
    out = f"{m['train_steps']} steps"
    if adv:
        out += f", {adv['method'].upper()} adversarial training at eps {adv['eps']:g} ({adv['steps']} steps)"
    if det:
        out += (
            f"; detector: {det['epochs']} epochs on {det['train_inputs']:,} clean + FGSM inputs at eps "
            f"{det['fgsm_eps']:g}"
        )
    return out


def render_worst_case(sec: dict[str, Any]) -> list[str]:
    """Per method and eps: the per-input worst case over every row, with its Tramèr check."""
    rows = []
    for m in sec["methods"]:
        checks = {c["eps"]: c for c in m.get("tramer", [])}
        for w in m.get("worst_case", []):
            c = checks.get(w["eps"])
            rows.append([
                m["name"], f"{w['eps']:g}", str(w["rows"]), pct(w["missed_and_wrong"]), pct(w["accuracy"]),
                ", ".join(f"{k} {v}" for k, v in w["through_first_by"].items()) or "—",
                "—" if c is None else
                f"implies ≥ {pct(c['implied_accuracy_at_half'])} robust at eps {c['half_eps']:g}; measured "
                f"{pct(c['measured_accuracy_at_half'])}: "
                + ("consistent" if c["conclusive"] else "**INCONCLUSIVE**"),
            ])  # fmt: skip
    if not rows:
        return []
    return [
        "**Worst case over all attacks** (an input counts as through if any row at that eps got it "
        "misclassified by the scoring ensemble and unflagged), checked against the Tramèr bound: a "
        "detector letting a share m through at eps, and rejecting a share r of clean inputs, gives a "
        "classifier robust on at least 1 − m − r of inputs at eps/2; if the ensemble keeps less than that "
        "under attack at "
        "eps/2, the attack was too weak for this model and the figure is **inconclusive**, not a result.",
        "",
        *table(
            [
                "method",
                "eps",
                "rows",
                "missed and wrong (any attack)",
                "accuracy left (all attacks)",
                "first through, by attack",
                "Tramèr check",
            ],
            rows,
        ),  # fmt: skip
        "",
    ]


def render_attacks(sec: dict[str, Any]) -> list[str]:
    cfg, s = sec["config"], sec["sanity"]
    fpr = cfg["target_fpr"]
    lines = []
    if cfg.get("preset") == "default":
        lines += [
            "This is the small default section, sized to keep `hgdefend evaluate` fast (its settings are "
            "listed below); `--attacks fgsm,pgd --protocols paper,fixed,adaptive` runs the full suite, "
            "`--no-attacks` none.",
            "",
        ]
    lines += [
        f"The first {sec['inputs']:,} test inputs are attacked; every method sees the same inputs. "
        "**paper**: early stop once the attacked ensemble is fooled (FGSM: smallest eps on a grid), scored "
        "by a fresh ensemble. **fixed**: full budget, random start, no early stop. **adaptive**: EOT over "
        "fresh HyperGAN samples each step and loss CE − λ·score (λ swept; the row shows the attacker's best "
        "λ). Baselines are attacked and scored with the same networks (white-box); a binary detector's score "
        "is its network's adversarial-minus-clean logit margin, which adaptive attacks lower through the "
        "detector network (CE − λ·margin). Thresholds are fit on the "
        f"clean calibration split at {pct(fpr)} FPR. Rows where an attack gets through are listed once, in "
        "the findings at the top of the report. *Attack success* counts only the attacked inputs the "
        "attacked networks classified correctly before the attack; *missed and wrong* counts all "
        "attacked inputs.",
        "",
        TRAMER_BOUND,
        "",
        *render_worst_case(sec),
        *render_autoattack(sec.get("autoattack")),
        f"Sanity check (PGD, eps {s['params']['eps']:g}, {s['params']['steps']} steps, one fixed network): "
        f"success {pct(s['success'])} — **{'passed' if s['passed'] else 'FAILED: the attack is broken'}**.",
        "",
        *render_checks(sec.get("gradient_checks")),
    ]
    rows = [
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
            pct(r["missed_and_wrong"]) + (" (inconclusive)" if r.get("inconclusive") else ""),
            fmt(r["mean_linf"]),
        ]
        for m in sec["methods"]
        for r in m["rows"]
    ]
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
        [
            "method",
            "score",
            "trained",
            "attacked",
            "scoring",
            "clean accuracy (test; attacked inputs)",
            "realised FPR",
        ],
        [
            [
                m["name"],
                m["score"],
                _trained(m),
                "{kind} K={members} seed {seed}".format(**m["attacked_ensemble"]),
                f"K={m['scoring_ensemble']['members']} seed {m['scoring_ensemble']['seed']}",
                f"{pct(m.get('clean_accuracy'))}; {pct(m['clean_accuracy_attacked_inputs'])}",
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

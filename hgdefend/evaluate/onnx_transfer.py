"""``evaluate --onnx --attacks``: transfer attacks from the source model, scored by the exported file.

:func:`transfer_section`: adversarial examples crafted in torch on the source model (the exported
networks resampled from it, and a fresh sample), scored by the graph. Without the source model
(see :func:`.onnx_source.onnx_context`) the section says so and is skipped.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor

from ..attacks import FreshSamples
from ..detectors.metrics import binomial_ci, detection_metrics
from ..errors import HgdefendError
from ..export.runtime import OnnxDetector
from .attacks import (
    EVADES_MISSED,
    PROTOCOL_LABELS,
    _make_attack,
    _predict,
    applies,
    attackers_best,
    sanity_check,
)
from .context import EvalContext
from .formatting import fmt, num_ci, pct, pct_ci, table
from .onnx_source import NAME

SAME_WEIGHTS_TOL = 1e-3
"""Max |Δ logit| between the graph and the networks resampled from the source model for the two to
count as the same networks (parity at export is ~1e-6)."""


def _score_transfer(
    det: OnnxDetector, x_adv: Tensor, y: np.ndarray, clean_scores: np.ndarray, target_fpr: float,
    n_bootstrap: int, seed: int,
) -> dict[str, Any]:  # fmt: skip
    out = det.run(x_adv.detach().cpu().numpy(), invalid="flag")
    wrong = out["predicted_class"] != y
    suspect = out[f"score_{det.score}"].astype(np.float64)
    thr = det.threshold
    m = detection_metrics(
        clean_scores,
        suspect,
        thr if thr is not None else float(max(clean_scores.max(), suspect.max())),
        target_fpr=target_fpr,
        suspect_wrong=wrong,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    flagged = out.get("is_adversarial")
    return {
        "onnx_accuracy": float(1 - wrong.mean()),
        "invalid": int((~out["input_valid"]).sum()),
        "auroc": m["auroc"],
        "auroc_ci": m.get("auroc_ci"),
        "aupr": m["aupr"],
        "tpr_at_threshold": None if flagged is None else float(flagged.mean()),
        "tpr_ci": None if flagged is None else binomial_ci(int(flagged.sum()), flagged.size),
        "missed_and_wrong": None if flagged is None else float((wrong & ~flagged).mean()),
    }


def transfer_section(ctx: EvalContext) -> dict[str, Any] | None:
    """Attacks crafted on the source model in torch, scored by the exported graph (with --attacks)."""
    if ctx.onnx is None or ctx.attack is None:
        return None
    if ctx.hypergan is None or ctx.ensemble is None or ctx.fresh is None:
        return {"skipped": f"No transfer attacks: the source model is {ctx.onnx.source_note}."}
    if ctx.data.task != "classification":
        raise HgdefendError("attacks: only classification datasets can be attacked")
    cfg, det, src = ctx.attack, ctx.onnx.detector, ctx.onnx
    same = src.same_weights_max_diff is not None and src.same_weights_max_diff <= SAME_WEIGHTS_TOL
    seed = ctx.ensemble.seed
    surrogates = [
        ("exported networks" if same else f"sample (seed {seed})", ctx.ensemble),
        (f"fresh sample (seed {ctx.fresh.seed})", ctx.fresh),
    ]
    ctx.scored.precompute([(NAME, "test")])
    clean_scores = ctx.scored.scores(NAME, "test")[det.score]
    target_fpr = det.target_fpr if det.target_fpr is not None else ctx.options.target_fpr
    sub = ctx.data.test.take(cfg.n_inputs)
    x, y = sub.x.to(ctx.device), sub.y.to(ctx.device)
    y_np = sub.y.cpu().numpy()
    clean = det.run(sub.x.numpy())
    rows = []
    for attack in cfg.attacks:
        for protocol in cfg.protocols:
            if not applies(attack, protocol) or (attack == "score-search" and det.threshold is None):
                continue
            for eps in cfg.eps:
                if protocol == "adaptive":
                    eot = FreshSamples(ctx.hypergan, cfg.eot_members or det.k, seed=cfg.seed + 2,
                                       bank_size=cfg.bank_size)  # fmt: skip
                    targets = [("EOT over fresh samples", eot, ctx.fresh)]
                else:
                    targets = [(label, ens, ens) for label, ens in surrogates]
                for label, target, judge in targets:
                    clean_ok = _predict(judge, x)[0] == y
                    sweep = []
                    lams = cfg.lambdas if protocol == "adaptive" and attack != "score-search" else (0.0,)
                    for lam in lams:  # the file's own score and threshold are what the attacker fights
                        atk = _make_attack(attack, protocol, target, eps, cfg, score=det.score, lam=lam,
                                           threshold=det.threshold)  # fmt: skip
                        x_adv = atk(x, y)
                        fooled = (_predict(judge, x_adv)[0] != y) & clean_ok
                        n_ok = int(clean_ok.sum())
                        res = _score_transfer(det, x_adv, y_np, clean_scores, target_fpr, cfg.n_bootstrap,
                                              cfg.seed)  # fmt: skip
                        res["attack_success"] = float(fooled.sum()) / n_ok if n_ok else float("nan")
                        res["mean_linf"] = float((x_adv - x).flatten(1).abs().max(1).values.mean())
                        sweep.append({"params": atk.describe(), **res})
                    best = attackers_best([{**r, "missed_and_wrong": r["missed_and_wrong"] or 0.0}
                                           for r in sweep])  # fmt: skip
                    best = next(r for r in sweep if r["params"] == best["params"])
                    rows.append({"attack": attack, "protocol": protocol, "eps": eps, "crafted_on": label,
                                 "score": det.score, **best})  # fmt: skip
    sec: dict[str, Any] = {
        "config": cfg.describe(),
        "inputs": len(sub),
        "clean_onnx_accuracy": float((clean["predicted_class"] == y_np).mean()),
        "clean_flagged": None if "is_adversarial" not in clean else float(clean["is_adversarial"].mean()),
        "threshold": det.threshold,
        "surrogates": {label: ens.describe() for label, ens in surrogates},
        "same_weights_max_abs_logit_diff": src.same_weights_max_diff,
        "sanity": sanity_check(ctx, cfg),
        "rows": rows,
    }
    sec["gate_rows"] = [
        {"name": f"transfer {r['attack']} {r['protocol']} eps={r['eps']:g} from {r['crafted_on']}",
         "missed": r["missed_and_wrong"]}
        for r in rows
    ]  # fmt: skip
    sec["findings"] = [
        f"Transfer {PROTOCOL_LABELS[r['protocol']].lower()} {r['attack'].upper()} at eps {r['eps']:g} "
        f"crafted on the {r['crafted_on']} gets through the exported file: "
        f"{pct(r['missed_and_wrong'])} of attacked inputs misclassified and not flagged."
        for r in rows
        if r["missed_and_wrong"] is not None and r["missed_and_wrong"] >= EVADES_MISSED
    ]
    if not sec["sanity"]["passed"]:
        sec["findings"].append("Attack sanity check FAILED: the transfer numbers are not trustworthy.")
    return sec


def render_transfer(sec: dict[str, Any]) -> list[str]:
    if sec.get("skipped"):
        return [sec["skipped"]]
    cfg = sec["config"]
    same = sec.get("same_weights_max_abs_logit_diff")
    lines = [
        f"Adversarial examples are crafted in torch on networks drawn from the source model and scored by "
        f"the exported graph (its own prediction, score and is_adversarial flag). The first "
        f"{sec['inputs']:,} test inputs are attacked; on them the graph is "
        f"{pct(sec['clean_onnx_accuracy'], 2)} accurate"
        + ("" if sec["clean_flagged"] is None else f" and flags {pct(sec['clean_flagged'])}")
        + '. "exported networks": the file\'s own K networks resampled from the source model with its '
        f"seed (largest logit difference from the graph {fmt(same, 8) if same is not None else '—'}), "
        'i.e. an attacker with the model file and the seed; "fresh sample": other networks from the '
        "same model, an attacker without the seed.",
        "",
        f"Sanity check (PGD, eps {sec['sanity']['params']['eps']:g}, one network): success "
        f"{pct(sec['sanity']['success'])} — **{'passed' if sec['sanity']['passed'] else 'FAILED'}**.",
        "",
    ]
    lines += table(
        [
            "attack",
            "protocol",
            "eps",
            "crafted on",
            "attack success (on the surrogate)",
            "accuracy (file)",
            "AUROC",
            "flagged by the file",
            "missed and wrong",
            "mean L∞",
        ],
        [
            [
                r["attack"],
                r["protocol"],
                f"{r['eps']:g}",
                r["crafted_on"],
                pct(r["attack_success"]),
                pct(r["onnx_accuracy"]),
                num_ci(r["auroc"], r.get("auroc_ci")),
                pct_ci(r["tpr_at_threshold"], r.get("tpr_ci")),
                pct(r["missed_and_wrong"]),
                fmt(r["mean_linf"]),
            ]
            for r in sec["rows"]
        ],
    )
    return lines + ["", "Attack hyper-parameters: " + ", ".join(f"{k}={v}" for k, v in cfg.items()) + "."]


def worst_transfer(sec: dict[str, Any] | None) -> dict[str, Any] | None:
    rows = [r for r in (sec or {}).get("rows", []) if r.get("missed_and_wrong") is not None]
    return max(rows, key=lambda r: (r["missed_and_wrong"], r["eps"])) if rows else None


__all__ = ["render_transfer", "transfer_section", "worst_transfer"]

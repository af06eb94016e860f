"""The report's first words: the operating point, the worst finding and what follows, in plain words.

Built from the computed sections only (no new numbers), so the summary can never disagree with the
tables below it.
"""

from __future__ import annotations

import math
from typing import Any

from .attacks import EVADES_MISSED, PROTOCOL_LABELS, TRAMER_BOUND
from .detection import POOR_AUROC
from .formatting import pct, pct_ci
from .onnx_transfer import worst_transfer


def _in_sentence(label: str) -> str:
    """A label inside a sentence: only its first letter lowered (EOT, CE and λ keep their case)."""
    return label[:1].lower() + label[1:]


def _one_in(rate: float) -> str:
    return f"1 in {round(1 / rate):,}" if 0 < rate < 1 else pct(rate)


def _worst_attack(attacks: dict[str, Any]) -> dict[str, Any] | None:
    rows = [r for m in attacks.get("methods", []) if m["name"] == "hypergan" for r in m["rows"]]
    return max(rows, key=lambda r: (r["missed_and_wrong"], r["eps"])) if rows else None


def _worst_case(attacks: dict[str, Any]) -> dict[str, Any] | None:
    """The HyperGAN's per-input worst case over every attack at the eps where most got through."""
    rows = [w for m in attacks.get("methods", []) if m["name"] == "hypergan" for w in m.get("worst_case", [])]
    return max(rows, key=lambda w: (w["missed_and_wrong"], w["eps"])) if rows else None


def _rows_at(attacks: dict[str, Any], eps: float) -> list[dict[str, Any]]:
    return [
        r for m in attacks.get("methods", []) if m["name"] == "hypergan" for r in m["rows"] if r["eps"] == eps
    ]


def _inconclusive(attacks: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not attacks:
        return []
    methods = [m for m in attacks.get("methods", []) if m["name"].startswith("hypergan")]
    return [c for m in methods for c in m.get("tramer", []) if not c["conclusive"]]


def _why_no_attack(report: dict[str, Any]) -> str:
    """Why a report has no attack section: the task, an exported file without --attacks, or
    --no-attacks (a model on a classification task is attacked by default)."""
    if (report.get("data") or {}).get("task", "classification") != "classification":
        return "attacks cover classification only"
    if "onnx_path" in (report.get("model") or {}):
        return "pass --attacks pgd for transfer attacks from the source model"
    return "--no-attacks"


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    """``{"lines": [...], "conclusion": str, ...numbers the lines quote}`` for the top of the report."""
    lines: list[str] = []
    out: dict[str, Any] = {}
    bad = _inconclusive(report.get("attacks"))
    out["inconclusive"] = [{"eps": c["eps"], "verdict": c["verdict"]} for c in bad]
    if bad:
        eps = ", ".join(f"{c['eps']:g}" for c in bad)
        lines.append(
            f"INCONCLUSIVE at eps {eps}: the attacks are too weak for this model, so the detection figures "
            f"at that budget are not results (Tramèr check: {bad[0]['verdict']}). Run a stronger attack "
            "(--attacks all, more --attack-steps and --attack-targets) before trusting them."
        )
    acc = report.get("accuracy") or {}
    if "ensembles" in acc:
        k = str(acc.get("members", acc["single_networks"]["count"]))
        out["accuracy"] = {
            "ensemble": acc["ensembles"].get(k),
            "members": int(k),
            "single_network_mean": acc["single_networks"]["mean"],
        }
        lines.append(
            f"Accuracy: the {k}-network ensemble classifies {pct(out['accuracy']['ensemble'], 2)} of "
            f"{acc['test_size']:,} clean test inputs correctly (single sampled networks: "
            f"{pct(acc['single_networks']['mean'], 2)} on average)."
        )
    det = report.get("detection")
    weak: list[str] = []
    if det:
        primary = det.get("primary_ensemble", "fixed")
        prim = next(
            (t for t in det["thresholds"] if t["score"] == det["primary_score"] and t["ensemble"] == primary),
            None,
        )
        op = {
            "score": det["primary_score"],
            "threshold": None if prim is None else prim["threshold"],
            "target_fpr": det["target_fpr"],
            "realised_fpr": None if prim is None else prim["realised_fpr"],
            "realised_fpr_ci": None if prim is None else prim.get("realised_fpr_ci"),
            "ood": [],
        }
        exported = "the exported file's " if primary == "onnx" else "the "
        if prim is None:
            text = f"Operating point: none ({exported}{det['primary_score']} score has no threshold)."
        else:
            aim = (
                f"set to flag {_one_in(det['target_fpr'])} clean inputs"
                if det.get("target_fpr_from", "export") == "export"
                else f"given at export ({prim['threshold']:.4g}, no target FPR recorded)"
            )
            flagged = pct_ci(prim["realised_fpr"], prim.get("realised_fpr_ci"))
            text = (
                f"Operating point: {exported}{prim['score']} threshold is {aim}; on {prim['n_test']:,} "
                f"held-out clean inputs it flagged {flagged}."
            )
        for r in det["rows"]:
            if r["score"] == det["primary_score"] and r["ensemble"] == primary:
                op["ood"].append({"name": r["ood"], "tpr": r["tpr_at_threshold"], "auroc": r["auroc"]})
                text += (
                    f" It flags {pct_ci(r['tpr_at_threshold'], r.get('tpr_exact_ci'))} of {r['ood']} "
                    f"(AUROC {r['auroc']:.3f})."
                    if r["tpr_at_threshold"] is not None
                    else f" AUROC on {r['ood']}: {r['auroc']:.3f}."
                )
                if r["auroc"] < POOR_AUROC:
                    weak.append(r["ood"])
        out["operating_point"] = op
        lines.append(text)
    att = report.get("attacks")
    worst = _worst_attack(att) if att else None
    transfer = report.get("transfer")
    worst_tr = worst_transfer(transfer)
    if transfer is not None:
        out["worst_transfer"] = None
        if transfer.get("skipped"):
            lines.append(f"Attacks: {transfer['skipped']}")
        elif worst_tr is not None:
            out["worst_transfer"] = {k: worst_tr[k] for k in ("attack", "protocol", "eps", "crafted_on",
                                                               "missed_and_wrong", "auroc")}  # fmt: skip
            lines.append(
                f"Worst transfer attack: {_in_sentence(PROTOCOL_LABELS[worst_tr['protocol']])} "
                f"{worst_tr['attack'].upper()} at eps {worst_tr['eps']:g} crafted on the "
                f"{worst_tr['crafted_on']}: "
                f"{pct(worst_tr['missed_and_wrong'])} of attacked inputs misclassified by the exported file "
                f"and not flagged (AUROC {worst_tr['auroc']:.3f}). {TRAMER_BOUND}"
            )
    if att is None and transfer is None:
        out["worst_finding"] = None
        lines.append(
            f"Attacks: none were run ({_why_no_attack(report)}): this report says nothing about "
            "adversarial inputs."
        )
    elif worst is not None:
        lam = worst["params"].get("lam")
        lam = f", λ = {lam:g}" if isinstance(lam, (int, float)) else ""
        label = _in_sentence(PROTOCOL_LABELS[worst["protocol"]])
        what = f"{label} {worst['attack'].upper()} at eps {worst['eps']:g}{lam}"
        wc = _worst_case(att)
        if wc is not None and wc["missed_and_wrong"] >= worst["missed_and_wrong"]:
            what = f"all attacks together (per-input worst case of {wc['rows']} rows) at eps {wc['eps']:g}"
            low = min((r["auroc"] for r in _rows_at(att, wc["eps"])), default=math.nan)
            worst = {**worst, "attack": "worst case", "protocol": "any", "eps": wc["eps"],
                     "missed_and_wrong": wc["missed_and_wrong"], "auroc": low}  # fmt: skip
        out["worst_finding"] = {
            "attack": worst["attack"],
            "protocol": worst["protocol"],
            "eps": worst["eps"],
            "missed_and_wrong": worst["missed_and_wrong"],
            "auroc": worst["auroc"],
        }
        scope = (
            " (small default section; --attacks runs the full suite)" if att["config"].get("preset") else ""
        )
        auroc = "" if worst["attack"] == "worst case" else f" (AUROC {worst['auroc']:.3f})"
        lines.append(
            f"Worst finding{scope}: {what}: {pct(worst['missed_and_wrong'])} of attacked inputs "
            f"misclassified and not flagged{auroc}. {TRAMER_BOUND}"
        )
    follows = []
    if worst is not None and worst["missed_and_wrong"] >= EVADES_MISSED:
        follows.append(
            "an attacker who knows the networks gets through at this budget: treat the flag as a "
            "filter for accidents and unfamiliar inputs, not as a defence against white-box attacks"
        )
    if worst_tr is not None and worst_tr["missed_and_wrong"] >= EVADES_MISSED:
        follows.append(
            "an attacker with the source model file gets through the exported file at this budget: "
            "keep the model file and the seed as private as the ONNX file"
        )
    if weak:
        follows.append(f"do not rely on the detector for {', '.join(weak)} (AUROC below {POOR_AUROC:g})")
    if att is not None and att.get("sanity") and not att["sanity"]["passed"]:
        follows.append("the attack sanity check failed, so the attack numbers cannot be trusted")
    if att is not None and att.get("gradient_checks") and not att["gradient_checks"]["passed"]:
        follows.append(
            "a check for obfuscated gradients failed (see the Attacks section), so the attack numbers "
            "may overstate robustness"
        )
    if transfer is not None and not transfer.get("skipped") and not transfer["sanity"]["passed"]:
        follows.append("the attack sanity check failed, so the transfer numbers cannot be trusted")
    if bad:
        follows.append(
            "the attack figures at eps " + ", ".join(f"{c['eps']:g}" for c in bad) + " are inconclusive "
            "(too weak an attack for this model): do not read them as robustness"
        )
    if not follows:
        measured = att is not None or (transfer is not None and not transfer.get("skipped"))
        ood = [o for o in (out.get("operating_point") or {}).get("ood") or [] if o.get("tpr") is not None]
        missed = max(ood, key=lambda o: 1 - o["tpr"]) if ood else None
        follows.append(
            "no measured figure fell below the report's warning levels"
            + (f", yet {pct(1 - missed['tpr'])} of {missed['name']} still pass unflagged at this threshold"
               if missed and missed["tpr"] < 1 else "")
            + ("" if measured else "; robustness to adversarial inputs was not measured")
        )  # fmt: skip
    out["conclusion"] = "What follows: " + "; ".join(follows) + "."
    lines.append(out["conclusion"])
    gate = report.get("gate")
    if gate is not None:
        lines.append(
            "Gate: "
            + (
                "passed."
                if gate["passed"]
                else f"FAILED ({len(gate['failures'])} limit(s)); see the Gate section."
            )
        )
    out["lines"] = lines
    return out

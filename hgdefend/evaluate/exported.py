"""``evaluate --onnx``: the report of an exported file, the thing that ships.

The context (:func:`onnx_context`) registers the file as a graph-backed ensemble in the
scored-splits cache, so the accuracy and calibration sections read the graph's own member logits,
and two sections here replace their torch counterparts:

* **detection** (:func:`onnx_detection_section`) — the file's baked-in threshold, judged by the
  graph's own ``is_adversarial`` output: realised FPR on the held-out clean test split with an
  exact binomial interval, and per OOD set AUROC (bootstrap interval) and TPR at the threshold;
* **transfer** (:func:`transfer_section`, with ``--attacks``) — adversarial examples crafted in
  torch on the source model (the exported networks resampled from it, and a fresh sample), scored
  by the graph. The source model is ``--model``, else the file named in the ONNX metadata beside
  the ONNX file; its SHA-256 must match the one recorded at export. Without it the section says
  so and is skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..attacks import FreshSamples
from ..data import load_data, load_ood
from ..detectors.metrics import binomial_ci, detection_metrics
from ..errors import HgdefendError
from ..export.runtime import DIGEST_KEY, OnnxDetector
from ..io import LoadedModel, load_model
from .attacks import EVADES_MISSED, PROTOCOL_LABELS, _make_attack, _predict, attackers_best, sanity_check
from .context import SCORING_BATCH, EvalContext, ScoredSplits
from .formatting import fmt, num_ci, pct, pct_ci, table
from .options import EvaluateOptions, resolve_in_classes
from .plots import plot_score_groups

NAME = "onnx"
"""The exported file's name in the scored-splits cache."""
SAME_WEIGHTS_TOL = 1e-3
"""Max |Δ logit| between the graph and the networks resampled from the source model for the two to
count as the same networks (parity at export is ~1e-6)."""


class GraphEnsemble:
    """An exported file as an entry of the scored-splits cache: every graph output per split."""

    def __init__(self, detector: OnnxDetector) -> None:
        self.detector = detector
        self.k = detector.k
        self.seed = detector.seed

    def graph_outputs(self, x: Tensor) -> dict[str, np.ndarray]:
        return self.detector.run(x.detach().cpu().numpy(), batch_size=SCORING_BATCH)

    def describe(self) -> dict[str, Any]:
        return {"kind": "onnx", "members": self.k, "seed": self.seed, "sha256": self.detector.sha256}


@dataclass
class OnnxSource:
    """The exported file under evaluation and what was found of its source model."""

    detector: OnnxDetector
    source_path: str | None = None
    source_note: str = ""
    same_weights_max_diff: float | None = None
    info: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- context
def _find_source(opts: EvaluateOptions, det: OnnxDetector, device: torch.device) -> tuple[
        LoadedModel | None, str]:  # fmt: skip
    """The source model file and a sentence on how it was found (or why not)."""
    meta = det.metadata
    recorded, of = meta.get("source_model_sha256"), meta.get("source_model_sha256_of")
    if opts.model:
        loaded = load_model(opts.model, device=device)
        if of == "model_file" and loaded.sha256 != recorded:
            raise HgdefendError(
                f"model: {opts.model!r} has SHA-256 {loaded.sha256}, but {det.path!r} was exported from a "
                f"model file with SHA-256 {recorded}"
            )
        return loaded, f"given with --model ({loaded.path})" + ("" if of == "model_file" else (
            f"; the file records the SHA-256 of its {of}, so the match could not be checked"))  # fmt: skip
    name = meta.get("source_model_path") or ""
    if of != "model_file" or not name:
        return None, (
            "not available: the file was exported from an in-memory model, not a model file; pass "
            "--model to run transfer attacks"
        )
    candidates = [Path(det.path).parent / name, Path(name)]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        return None, (
            f"not found: {name!r} (named in the file's metadata) is not beside {det.path!r} nor in the "
            "working folder; pass --model to run transfer attacks"
        )
    loaded = load_model(found, device=device)
    if loaded.sha256 != recorded:
        return None, (
            f"not used: {str(found)!r} has SHA-256 {loaded.sha256}, not the {recorded} recorded at export"
        )
    return loaded, f"found beside the ONNX file ({found}), SHA-256 matches the metadata"


def onnx_context(
    opts: EvaluateOptions, device: torch.device, progress: bool
) -> tuple[EvalContext, dict[str, Any]]:
    """The evaluation context of an exported file, and the report's title, seed, model hash and
    the file's SHA-256 for the run's record."""
    onnx_device = "cuda" if device.type == "cuda" else "cpu"
    det = OnnxDetector(opts.onnx, device=onnx_device, threads=torch.get_num_threads())
    meta = det.metadata
    dataset_cfg = json.loads(meta.get("dataset") or "{}")
    loaded, source_note = _find_source(opts, det, device)
    name = opts.dataset or dataset_cfg.get("name")
    if not name and loaded is not None:
        name = (loaded.config.get("dataset") or {}).get("name")
    if not name:
        raise HgdefendError(f"dataset: {opts.onnx!r} does not name its dataset; pass --dataset")
    data = load_data(
        name,
        root=opts.data_root,
        download=opts.download,
        in_classes=resolve_in_classes(opts, name, {"dataset": dataset_cfg}),
    )
    if tuple(data.input_shape) != tuple(det.input_shape):
        raise HgdefendError(
            f"onnx: the file expects input shape {list(det.input_shape)}, dataset {data.name!r} gives "
            f"{list(data.input_shape)}"
        )
    if data.classes != det.class_labels:
        raise HgdefendError(
            f"onnx: the file's classes are {det.class_labels}, dataset {data.name!r} (with in_classes) "
            f"has {data.classes}"
        )
    oods = []
    if data.ood is not None and len(data.ood):
        oods.append((data.ood_name or "held-out classes", data.ood))
    if opts.ood:
        oods.append((opts.ood, load_ood(opts.ood, data, root=opts.data_root, download=opts.download)))

    scored = ScoredSplits(progress=progress)
    scored.add_ensemble(NAME, GraphEnsemble(det))
    scored.add_split("calib", data.calib)
    scored.add_split("test", data.test)
    for i, (_, split) in enumerate(oods):
        scored.add_split(f"ood{i}", split)

    hg = fixed = fresh = None
    same_diff = None
    seed = det.seed if det.seed is not None else opts.seed
    if loaded is not None:
        hg = loaded.hypergan
        fixed = hg.ensemble(det.k, seed=seed).to(device)
        fresh = hg.ensemble(det.k, seed=seed + 1).to(device)
        probe = data.test.x[:16]
        with torch.no_grad():
            ref = fixed.member_logits(probe.to(device)).cpu().numpy()
        got = det.run(probe.numpy())["member_logits"]
        same_diff = float(np.abs(got.astype(np.float64) - ref).max()) if got.shape == ref.shape else None
    source = OnnxSource(det, None if loaded is None else loaded.path, source_note, same_diff)
    model = {
        "onnx_path": det.path,
        "onnx_sha256": det.sha256,
        "content_sha256": meta[DIGEST_KEY],
        "members": det.k,
        "seed": det.seed,
        "score": det.score,
        "threshold": det.threshold,
        "target_fpr": det.target_fpr,
        "threshold_source": meta.get("threshold_source"),
        "kernel": meta.get("kernel"),
        "exporter": meta.get("exporter"),
        "exported_with": f"hgdefend {meta.get('library_version')}, torch {meta.get('torch_version')}",
        "source_model_recorded": f"{meta.get('source_model_path') or '—'} "
        f"({meta.get('source_model_sha256_of')} SHA-256 {meta.get('source_model_sha256')})",
        "source_model": source_note,
        "onnx_providers": ", ".join(det.providers),
    }
    if same_diff is not None:
        model["resampled_networks_max_abs_logit_diff"] = same_diff
    ctx = EvalContext(
        options=opts,
        data=data,
        hypergan=hg,
        ensemble=fixed,
        fresh=fresh,
        device=device,
        out_dir=Path(opts.out),
        model=model,
        training={},
        ood_sets=oods,
        attack=opts.attack_options(),
        progress=progress,
        scored=scored,
        onnx=source,
        primary=NAME,
    )
    held = f" (classes {data.classes} in-distribution, the rest held out as OOD)" if data.ood else ""
    return ctx, {
        "title": f"{data.name}{held}, exported {det.k}-network ensemble {Path(det.path).name}",
        "seed": det.seed,
        "model_sha256": meta.get("source_model_sha256"),
        "meta": {"onnx_sha256": det.sha256},
    }


# --------------------------------------------------------------------------- detection
def onnx_detection_section(ctx: EvalContext) -> dict[str, Any] | None:
    """The baked-in threshold judged by the graph's own flags, and OOD detection."""
    if ctx.data.task != "classification":
        return None
    det = ctx.onnx.detector
    score, thr = det.score, det.threshold
    target = det.target_fpr if det.target_fpr is not None else ctx.options.target_fpr
    oods = ctx.ood_sets
    splits = ["calib", "test", *(f"ood{i}" for i in range(len(oods)))]
    ctx.scored.precompute([(NAME, s) for s in splits])
    test_out = ctx.scored.outputs(NAME, "test")
    test_scores = ctx.scored.scores(NAME, "test")[score]
    clean_wrong = test_out["predicted_class"] != ctx.data.test.y.cpu().numpy()
    thresholds, rows, gate_rows, plots, findings = [], [], [], {}, []
    if thr is not None:
        calib_flags = ctx.scored.outputs(NAME, "calib")["is_adversarial"]
        flags = test_out["is_adversarial"]
        thresholds.append(
            {
                "score": score,
                "ensemble": NAME,
                "members": det.k,
                "seed": det.seed,
                "threshold": thr,
                "threshold_source": det.metadata.get("threshold_source"),
                "calibration_fpr": float(np.mean(calib_flags)),
                "n_calibration": int(det.metadata.get("n_calibration") or 0),
                "realised_fpr": float(np.mean(flags)),
                "realised_fpr_ci": binomial_ci(int(flags.sum()), flags.size),
                "n_test": int(flags.size),
            }
        )
    for i, (ood_name, _) in enumerate(oods):
        ood_out = ctx.scored.outputs(NAME, f"ood{i}")
        ood_scores = ctx.scored.scores(NAME, f"ood{i}")[score]
        # Without a threshold, AUROC / AUPR / FPR at 95 % TPR only (the rates at a threshold are dropped).
        m = detection_metrics(
            test_scores,
            ood_scores,
            thr if thr is not None else float(max(test_scores.max(), ood_scores.max())),
            target_fpr=target,
            clean_wrong=clean_wrong,
            seed=ctx.options.seed,
        )
        if thr is None:
            for key in ("tpr_at_threshold", "tpr_exact_ci", "tpr_ci", "realised_fpr", "realised_fpr_exact_ci",
                        "threshold", "clean_accuracy_after_rejection", "clean_rejected"):  # fmt: skip
                m[key] = None
        else:
            graph = ood_out["is_adversarial"]
            m["flagged_by_graph"] = float(np.mean(graph))
            m["flag_disagreements"] = int((graph != (ood_scores > thr)).sum())
            if m["flag_disagreements"]:
                findings.append(
                    f"The exported graph's is_adversarial disagrees with score > threshold on "
                    f"{m['flag_disagreements']} {ood_name} inputs."
                )
        rows.append({"score": score, "ensemble": NAME, "ood": ood_name, **m})
        gate_rows.append({"name": f"{ood_name} ({score}, exported file)", "auroc": m["auroc"],
                          "aupr": m["aupr"], "tpr": m["tpr_at_threshold"]})  # fmt: skip
        if m["auroc"] < 0.9:
            findings.append(f"OOD detection is weak on {ood_name}: AUROC {m['auroc']:.3f} (below 0.9).")
    groups = {
        "clean test": test_scores,
        **{n: ctx.scored.scores(NAME, f"ood{i}")[score] for i, (n, _) in enumerate(oods)},
    }
    plots = plot_score_groups(groups, ctx.out_dir, score_name=score, threshold=thr, clean="clean test")
    sec: dict[str, Any] = {
        "source": "onnx",
        "target_fpr": target,
        "target_fpr_from": "export" if det.target_fpr is not None else "--target-fpr (none in the file)",
        "primary_score": score,
        "primary_ensemble": NAME,
        "calibration_size": len(ctx.data.calib),
        "test_size": len(ctx.data.test),
        "ood_sets": [{"name": n, "size": len(s)} for n, s in oods],
        "thresholds": thresholds,
        "rows": rows,
        "gate_rows": gate_rows,
        "plots": plots,
        "invalid_inputs": {s: int((~ctx.scored.outputs(NAME, s)["input_valid"]).sum()) for s in splits},
        "findings": findings,
    }
    if thr is None:
        sec["note_threshold"] = (
            "The file was exported without a threshold (no is_adversarial output): only AUROC-type "
            "figures are reported."
        )
    if not oods:
        sec["note"] = (
            "No OOD set: only the threshold's realised FPR on held-out clean data is reported. Pass --ood "
            "DATASET or --in-classes to hold classes out."
        )
    return sec


def render_onnx_detection(sec: dict[str, Any]) -> list[str]:
    target = sec["target_fpr"]
    lines = [
        f"The exported file is judged with its own outputs: the threshold baked in at export and the "
        f"graph's is_adversarial flag (no refit). Rates are measured on the held-out clean test split "
        f"({sec['test_size']:,} inputs) and carry exact (Clopper–Pearson) 95 % intervals; AUROC carries a "
        f"bootstrap 95 % interval. Target FPR {pct(target)} ({sec['target_fpr_from']}).",
        "",
    ]
    if sec["thresholds"]:
        lines += table(
            [
                "score",
                "threshold",
                "how it was set",
                "flagged (calibration split)",
                "realised FPR (test) [95 % CI]",
            ],
            [
                [
                    t["score"],
                    f"{t['threshold']:.6g}",
                    t.get("threshold_source") or "—",
                    pct(t["calibration_fpr"]),
                    pct_ci(t["realised_fpr"], t.get("realised_fpr_ci")),
                ]
                for t in sec["thresholds"]
            ],
        )
    if sec.get("note_threshold"):
        lines += ["", sec["note_threshold"]]
    bad = {k: v for k, v in sec.get("invalid_inputs", {}).items() if v}
    if bad:
        lines += ["", f"Inputs the graph marked invalid (and flagged): {bad}."]
    if sec.get("note"):
        return lines + ["", sec["note"]]
    lines += [""]
    lines += table(
        [
            "OOD set",
            "score",
            "AUROC [95 % CI]",
            "AUPR",
            "TPR at the threshold [95 % CI]",
            "FPR at 95 % TPR",
            "clean accuracy after rejection",
        ],
        [
            [
                f"{r['ood']} ({next(o['size'] for o in sec['ood_sets'] if o['name'] == r['ood']):,})",
                r["score"],
                num_ci(r["auroc"], r.get("auroc_ci")),
                fmt(r["aupr"]),
                pct_ci(r["tpr_at_threshold"], r.get("tpr_exact_ci")),
                pct(r["fpr_at_95_tpr"]),
                f"{pct(r.get('clean_accuracy_after_rejection'), 2)} (from {pct(r.get('clean_accuracy'), 2)})",
            ]
            for r in sec["rows"]
        ],
    )
    plots = sec.get("plots") or {}
    if plots:
        lines += [""] + [f"![{sec['primary_score']} {kind}]({name})" for kind, name in plots.items()]
    return lines


# --------------------------------------------------------------------------- transfer attacks
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
                    for lam in cfg.lambdas if protocol == "adaptive" else (0.0,):
                        atk = _make_attack(attack, protocol, target, eps, cfg, score=det.score, lam=lam)
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
         "auroc": r["auroc"], "aupr": r["aupr"], "tpr": r["tpr_at_threshold"]}
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


__all__ = [
    "GraphEnsemble",
    "OnnxSource",
    "onnx_context",
    "onnx_detection_section",
    "render_onnx_detection",
    "render_transfer",
    "transfer_section",
    "worst_transfer",
]

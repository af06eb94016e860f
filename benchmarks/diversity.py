"""Diversity objectives compared in the same run at an equal wall-clock training budget: the paper's
recipe and its knobs, function-space repulsion, off-data disagreement and input-gradient diversity,
against a deep ensemble of 10 and MC dropout. Prints one JSON object (and writes it with --out).

Per method and OOD protocol (``fmnist``: MNIST in, Fashion-MNIST out; ``heldout``: classes 0–4 in,
5–9 out): clean accuracy (single-network mean, ensemble), entropy and mutual-information AUROC
(with bootstrap CIs and TPR at a 5 % FPR threshold fit on the calibration split), the paper's
weight-norm diversity statistic, pairwise disagreement on clean and OOD inputs, and transfer: the
share of fresh sampled networks fooled by a PGD example crafted against one sampled network.

    python benchmarks/diversity.py --budget 240 --threads 1 --out benchmarks/results/diversity.json
    python benchmarks/diversity.py --quick          # digits, a few steps: what the test suite runs
    python benchmarks/diversity.py --table RESULT.json   # the RESULTS.md table of a run

Methods: ``paper`` (GAN regulariser, β = 1), ``mmd``, ``nomixer``, ``beta:W``, ``repulsion[:W]``,
``offdata[:W]``, ``gradient[:W]`` (objective weight W, default 1), ``deep-ensemble``, ``mc-dropout``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, print_table, run_record  # noqa: E402

from hgdefend import load_data  # noqa: E402
from hgdefend.attacks.transfer import transfer_rate  # noqa: E402
from hgdefend.data import load_ood  # noqa: E402
from hgdefend.detectors import compute_scores, conformal_threshold, detection_metrics  # noqa: E402
from hgdefend.ensemble import SampledEnsemble, diversity, pairwise_disagreement  # noqa: E402
from hgdefend.probabilities import predict  # noqa: E402
from hgdefend.recipes import default_spec, train_model  # noqa: E402
from hgdefend.training import TrainConfig, deep_ensemble, mc_dropout, resolve_device  # noqa: E402

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"
HYPERGAN_METHODS = ("paper", "mmd", "nomixer", "beta", "repulsion", "offdata", "gradient")
BASELINES = ("deep-ensemble", "mc-dropout")


def parse_method(text: str) -> tuple[str, float | None]:
    name, _, w = text.partition(":")
    if name not in HYPERGAN_METHODS + BASELINES:
        raise SystemExit(f"--methods: unknown method {name!r}; expected {HYPERGAN_METHODS + BASELINES}")
    return name, (float(w) if w else None)


def protocol_data(protocol: str, args: argparse.Namespace):
    """(training/calibration/test splits, OOD split, OOD name) for a protocol."""
    if args.quick:
        data = load_data("digits", in_classes="0-4")
        return data, data.ood, "digits 5-9"
    if protocol == "heldout":
        data = load_data("mnist", root=args.data_root, in_classes="0-4")
        return data, data.ood, "mnist 5-9"
    data = load_data("mnist", root=args.data_root)
    return data, load_ood("fashion-mnist", data, root=args.data_root), "fashion-mnist"


def train(
    method: str, weight: float | None, data, args
) -> tuple[SampledEnsemble, SampledEnsemble | None, dict]:
    """(scoring ensemble, independent sample for transfer judges or None, training info)."""
    dev = resolve_device(args.device)
    budget = None if args.quick else args.budget
    steps = args.quick_steps if args.quick else args.max_steps
    t0 = time.perf_counter()
    if method in BASELINES:
        cfg = TrainConfig(steps=steps, batch_size=args.batch_size, time_budget_s=budget, seed=args.seed)
        spec = default_spec(data)
        if method == "deep-ensemble":
            ens = deep_ensemble(spec, data.train, args.deep_members, cfg, device=dev, progress=False)
        else:
            ens = mc_dropout(spec, data.train, args.members, cfg, device=dev, progress=False)
        return ens, None, {"seconds": round(time.perf_counter() - t0, 1), "members": ens.k}
    kw: dict = {"regulariser": "gan", "beta": 1.0}
    if method == "mmd":
        kw["regulariser"] = "mmd"
    elif method == "nomixer":
        kw["mixer"] = False
    elif method == "beta":
        kw["beta"] = 1.0 if weight is None else weight
    elif method in ("repulsion", "offdata", "gradient"):
        kw.update(diversity=method, diversity_weight=1.0 if weight is None else weight)
    tm = train_model(
        data,
        seed=args.seed,
        device=dev,
        steps=steps,
        nets_per_step=args.nets_per_step,
        batch_size=args.batch_size,
        time_budget=budget,
        progress=False,
        **kw,
    )
    info = {"seconds": tm.training["seconds"], "steps": tm.training["steps"], "recipe": tm.training["recipe"]}
    hg = tm.hypergan
    return hg.ensemble(args.members, seed=args.seed), hg.ensemble(args.members, seed=args.seed + 1), info


def evaluate(ens: SampledEnsemble, judges: SampledEnsemble | None, data, ood, args) -> dict:
    calib, test = data.calib.take(args.eval_size), data.test.take(args.eval_size)
    ood = ood.take(args.eval_size)
    logits = {
        n: ens.member_logits(s.x, batch_size=250) for n, s in (("calib", calib), ("test", test), ("ood", ood))
    }
    scores = {
        n: {k: v.cpu().numpy().astype(np.float64) for k, v in compute_scores(lg).items()}
        for n, lg in logits.items()
    }
    y = test.y.to(logits["test"].device)
    member_acc = (logits["test"].argmax(-1) == y).float().mean(1)
    clean_wrong = (predict(logits["test"]) != y).cpu().numpy()
    out: dict = {
        "members": ens.k,
        "ensemble_accuracy": float(1 - clean_wrong.mean()),
        "single_network_accuracy_mean": float(member_acc.mean()),
        "single_network_accuracy_min": float(member_acc.min()),
        "pairwise_disagreement_clean": pairwise_disagreement(logits["test"]),
        "pairwise_disagreement_ood": pairwise_disagreement(logits["ood"]),
        "sizes": {"calib": len(calib), "test": len(test), "ood": len(ood)},
    }
    if ens.kind != "mc-dropout":
        layers = diversity(ens)
        out["weight_norm_rel_std"] = {n: d["rel_std"] for n, d in layers.items()}
        out["weight_norm_rel_std_mean"] = float(np.mean([d["rel_std"] for d in layers.values()]))
    for name in ("entropy", "mutual_information"):
        thr = conformal_threshold(scores["calib"][name], args.target_fpr)
        m = detection_metrics(
            scores["test"][name],
            scores["ood"][name],
            thr,
            target_fpr=args.target_fpr,
            n_bootstrap=200,
            seed=args.seed,
        )
        out[name] = {k: m[k] for k in ("auroc", "auroc_ci", "tpr_at_threshold", "realised_fpr")}
    if ens.kind == "mc-dropout":
        out["transfer"] = None
        out["transfer_note"] = "MC dropout has no fixed network to craft against (masks change every forward)"
        return out
    sub = test.take(args.transfer_inputs)
    if judges is None:  # deep ensemble: craft against member 0, judged by the other members
        source, judges = ens.member(0), ens._replace({n: t[1:] for n, t in ens.params.items()})
    else:  # HyperGAN: craft against one sampled network, judged by a fresh sample
        source = judges.member(0)
        judges = judges._replace({n: t[1:] for n, t in judges.params.items()})
    out["transfer"] = transfer_rate(
        source, judges, sub.x, sub.y, eps=args.eps, steps=args.pgd_steps, seed=args.seed
    )
    return out


def markdown_table(result: dict) -> str:
    """The RESULTS.md table for one run's JSON (``--table FILE``)."""

    def auroc(m: dict) -> str:
        return f"{m['auroc']:.4f} [{m['auroc_ci'][0]:.4f}, {m['auroc_ci'][1]:.4f}]"

    head = (
        "| protocol | method | steps | ensemble acc | single acc (mean) | entropy AUROC | MI AUROC | "
        "weight-norm rel. std | disagreement clean / OOD | transfer |"
    )
    lines = [head, "|" + " --- |" * 10]
    for r in result["rows"]:
        t = r.get("transfer") or {}
        rate, rel = t.get("transfer_rate"), r.get("weight_norm_rel_std_mean")
        cells = [
            r["protocol"],
            r["method"],
            str(r["training"].get("steps", "—")),
            f"{100 * r['ensemble_accuracy']:.2f} %",
            f"{100 * r['single_network_accuracy_mean']:.2f} %",
            auroc(r["entropy"]),
            auroc(r["mutual_information"]),
            "—" if rel is None else f"{100 * rel:.1f} %",
            f"{100 * r['pairwise_disagreement_clean']:.2f} % / {100 * r['pairwise_disagreement_ood']:.2f} %",
            "n/a"
            if rate is None
            else f"{100 * rate:.1f} % ({t['source_fooled']} inputs, {t['judges']} nets)",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    if print_table(markdown_table):
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=str(DEFAULT_ROOT))
    p.add_argument("--methods", default="paper,repulsion,offdata,gradient,deep-ensemble,mc-dropout")
    p.add_argument("--protocols", default="fmnist,heldout", help="fmnist and/or heldout")
    p.add_argument("--budget", type=float, default=240.0, help="training seconds per model (all methods)")
    p.add_argument("--max-steps", type=int, default=100_000, help="step cap (the budget binds first)")
    p.add_argument("--nets-per-step", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--members", type=int, default=100, help="HyperGAN / MC-dropout ensemble size")
    p.add_argument("--deep-members", type=int, default=10)
    p.add_argument("--eval-size", type=int, default=5000, help="inputs per split (calib/test/ood)")
    p.add_argument("--transfer-inputs", type=int, default=200)
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--pgd-steps", type=int, default=40)
    p.add_argument("--target-fpr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="digits, a few steps, small ensembles")
    p.add_argument("--quick-steps", type=int, default=100)
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args()
    if args.quick:
        args.protocols, args.members, args.deep_members = "heldout", 10, 4
        args.transfer_inputs, args.pgd_steps = 20, 5
    torch.set_num_threads(args.threads)
    methods = [parse_method(m.strip()) for m in args.methods.split(",") if m.strip()]
    protocols = [s.strip() for s in args.protocols.split(",") if s.strip()]
    rows = []
    t_all = time.perf_counter()
    for protocol in protocols:
        data, ood, ood_name = protocol_data(protocol, args)
        for method, weight in methods:
            t0 = time.perf_counter()
            ens, judges, info = train(method, weight, data, args)
            res = evaluate(ens, judges, data, ood, args)
            label = method if weight is None else f"{method}:{weight:g}"
            rows.append(
                {
                    "protocol": protocol,
                    "ood": ood_name,
                    "method": label,
                    "training": info,
                    **res,
                    "seconds_total": round(time.perf_counter() - t0, 1),
                }
            )
            print(
                f"[{protocol}] {label}: acc {res['ensemble_accuracy']:.4f} (single "
                f"{res['single_network_accuracy_mean']:.4f}), entropy AUROC {res['entropy']['auroc']:.4f}, "
                f"MI AUROC {res['mutual_information']['auroc']:.4f}, transfer "
                f"{(res['transfer'] or {}).get('transfer_rate')}",
                file=sys.stderr,
                flush=True,
            )
    dev = resolve_device(args.device)
    out = {
        **run_record("diversity", args, dev, t_all),
        "rows": rows,
    }
    emit(out, args.out)


if __name__ == "__main__":
    main()

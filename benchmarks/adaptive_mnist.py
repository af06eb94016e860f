"""How much gets through the detector on MNIST models under the default attack section and under
the full suite (`hgdefend evaluate --attacks all`), with the per-input worst case, the Tramèr check
and ART's AutoAttack robust accuracy (issue: an adaptive evaluation that a diverse model cannot
fool).

For each ``--model NAME=PATH`` it runs (or, with ``--reuse``, reads where they exist)
``REPORTS/NAME_default/report.json`` and ``REPORTS/NAME_full/report.json``: the same two
``hgdefend evaluate`` calls as on the command line,

    hgdefend evaluate -m PATH --data-root ROOT --members 20 --threads 1 --seed 0 --out REPORTS/NAME_default
    hgdefend evaluate -m PATH --data-root ROOT --members 20 --threads 1 --seed 0 --attacks all \\
        --protocols adaptive --eps 0.1,0.2,0.3 --attack-inputs 100 --attack-steps 20 --attack-targets 3 \\
        --out REPORTS/NAME_full

and writes one compact JSON (no per-input records; those stay in the reports).
``python benchmarks/adaptive_mnist.py --table RUN.json`` prints the RESULTS.md table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from _common import emit, print_table, run_record

QUICK = {"attack_inputs": 8, "attack_steps": 2, "attack_targets": 2, "eot_members": 2, "attack_bootstrap": 0}
"""``--quick`` (the test suite): the same two runs, tiny."""
FULL = {"attacks": "all", "protocols": "adaptive", "eps": "0.1,0.2,0.3", "attack_inputs": 100,
        "attack_steps": 20, "attack_targets": 3}  # fmt: skip


def _report(path: Path, opts: dict[str, Any], reuse: bool) -> dict[str, Any]:
    if not (reuse and (path / "report.json").is_file()):
        from hgdefend.evaluate import EvaluateOptions, run_evaluate

        t0 = time.perf_counter()
        run_evaluate(EvaluateOptions(out=str(path), quiet=True, **opts))
        print(f"{path}: {time.perf_counter() - t0:.0f} s")
    return json.loads((path / "report.json").read_text())


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    """What the table reads from one report: accuracy, every HyperGAN row, the worst case, the
    Tramèr checks, AutoAttack, seconds."""
    att = report["attacks"]
    hg = next(m for m in att["methods"] if m["name"] == "hypergan")
    acc = report["accuracy"]
    return {
        "ensemble_accuracy": acc["ensembles"][str(acc["members"])],
        "members": acc["members"],
        "config": att["config"],
        "rows": [
            {
                k: r[k]
                for k in (
                    "attack",
                    "protocol",
                    "eps",
                    "missed_and_wrong",
                    "fresh_accuracy",
                    "auroc",
                    "inconclusive",
                )
            }
            | {"lam": r["params"].get("lam")}
            for r in hg["rows"]
        ],  # fmt: skip
        "worst_case": hg["worst_case"],
        "tramer": hg["tramer"],
        "autoattack": att.get("autoattack"),
        "gradient_checks_passed": (att.get("gradient_checks") or {}).get("passed"),
        "sanity_passed": att["sanity"]["passed"],
        "attack_seconds": att["seconds"],
        "summary": report["summary"]["lines"],
        "environment": report.get("environment"),
    }


def render(res: dict[str, Any]) -> str:
    lines = [
        "| model | clean (K=20) | eps | default section: missed and wrong | full suite: strongest row | "
        "full suite: worst case (any row) | accuracy left | Tramèr check (full) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in res["models"].items():
        d = {w["eps"]: w for w in m["default"]["worst_case"]}
        f = m["full"]
        checks = {c["eps"]: c for c in f["tramer"]}
        for w in f["worst_case"]:
            e = w["eps"]
            best = max((r for r in f["rows"] if r["eps"] == e), key=lambda r: r["missed_and_wrong"])
            dd = d.get(e)
            c = checks.get(e)
            lines.append(
                f"| {name} | {100 * f['ensemble_accuracy']:.2f} % | {e:g} | "
                + ("—" if dd is None else f"{100 * dd['missed_and_wrong']:.0f} %"
                   + (" (inconclusive)" if dd["inconclusive"] else ""))
                + f" | {100 * best['missed_and_wrong']:.0f} % ({best['attack']}) | "
                f"{100 * w['missed_and_wrong']:.0f} % | {100 * w['accuracy']:.0f} % | "
                + ("—" if c is None else ("consistent" if c["conclusive"] else "**inconclusive**")
                   + f" (implied ≥ {100 * c['implied_accuracy_at_half']:.0f} %, measured "
                   f"{100 * c['measured_accuracy_at_half']:.0f} % at eps {c['half_eps']:g})")
                + " |"
            )  # fmt: skip
    lines += [
        "",
        "| model | AutoAttack eps | fixed sample (K=20) | fresh draws |",
        "| --- | --- | --- | --- |",
    ]
    for name, m in res["models"].items():
        aa = m["full"]["autoattack"]
        if aa:
            lines.append(f"| {name} | {aa['eps']:g} | {100 * aa['fixed_sample']['robust_accuracy']:.0f} % | "
                         f"{100 * aa['fresh_draws']['robust_accuracy']:.0f} % |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, help="NAME=PATH of a model file")
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--reports", default="runs/adaptive_mnist", help="folder of the evaluate reports")
    p.add_argument("--reuse", action="store_true", help="read reports that exist instead of rerunning")
    p.add_argument("--members", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    p.add_argument("--quick", action="store_true", help="tiny budgets, for the test suite")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    models = {}
    for spec in args.model:
        name, _, path = spec.partition("=")
        common = {"model": path, "data_root": args.data_root, "members": args.members, "seed": args.seed}
        quick = QUICK if args.quick else {}
        root = Path(args.reports)
        models[name] = {
            "model": path,
            "default": summarise(_report(root / f"{name}_default", {**common, **quick}, args.reuse)),
            "full": summarise(_report(root / f"{name}_full", {**common, **FULL, **quick}, args.reuse)),
        }
    emit({**run_record("adaptive_mnist", args, torch.device("cpu"), started), "models": models}, args.out)


if __name__ == "__main__":
    if not print_table(render):
        main()

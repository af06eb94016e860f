"""The paper's Figure 3: empirical CDFs of predictive entropy on in-distribution and OOD inputs.

Two protocols on data we have (the paper's notMNIST and CIFAR-5 cannot be obtained here):

- ``fmnist``: trained on MNIST, MNIST test (in) vs Fashion-MNIST test (out) — in place of notMNIST;
- ``heldout``: trained on MNIST classes 0–4, their test images (in) vs the test images of 5–9 (out)
  — the paper's CIFAR-5 protocol on MNIST.

Methods, each trained by step count (``--steps``, the same for all) with the paper's MNIST net, as
``benchmarks/paper_table2.py`` trains them: ``hypergan`` (the default recipe, ``--members`` sampled
networks), ``deep-ensemble`` (10 independently trained networks: the paper's "L2" ensembles) and
``mc-dropout`` (``--members`` masks). Scores come from ``benchmarks/ood_mnist.py`` (member logits per
split, every score's AUROC / AUPR / TPR at a threshold fit on the calibration split at the target
FPR). The PNG draws, per protocol, the ECDF of the entropy of the mean prediction: solid on OOD
inputs, dashed on in-distribution ones (as the paper's figure). A curve further right/lower on OOD
inputs means more uncertainty there. Prints one JSON object (and writes it with --out).

    python benchmarks/paper_ood.py --device cuda --out benchmarks/results/paper_ood.json  # PNG in results/
        # on an H200, 1,000 steps took 56 s for both protocols and all methods (HyperGAN ~10 s a
        # model); the default 10,000 steps ~5 min a seed. --seeds 0,1,2 for mean ± std over seeds.
    python benchmarks/paper_ood.py --quick --out-dir /tmp/x     # digits 0-4 vs 5-9: what the tests run
    python benchmarks/paper_ood.py --table a.json [b.json ...]  # the RESULTS.md table (runs merged)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, run_record, sync  # noqa: E402
from diversity import protocol_data  # noqa: E402
from ood_mnist import metrics_from_logits, split_logits  # noqa: E402
from paper_table2 import METHODS  # noqa: E402
from paper_table2 import train as train_method  # noqa: E402

from hgdefend.detectors.scores import predictive_entropy  # noqa: E402
from hgdefend.evaluate.plots import save_figure  # noqa: E402
from hgdefend.training import resolve_device  # noqa: E402

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"
PROTOCOLS = {
    "fmnist": "MNIST (in) vs Fashion-MNIST (out): the paper's notMNIST protocol on data we have",
    "heldout": "MNIST 0-4 (in) vs 5-9 (out): the paper's CIFAR-5 protocol on MNIST",
}
CDF_POINTS = 51
PAPER = {
    "figure": "Figure 3: Empirical CDF of the predictive entropy on out of distribution datasets notMNIST, "
    "and 5 classes of CIFAR-10 unseen during training. Solid lines denote tests on the respective out of "
    "distribution data, while the dashed lines denote entropy on inlier examples (MNIST and CIFAR-10). L2 "
    "referres to conventional ensembles trained separately without a HyperGAN",
    "claims": [
        "HyperGAN can separate CIFAR-10 inlier and outlier samples much better than MNF or standard "
        "ensembles (section 4.4)",
        "On notMNIST we also show separation, though HyperGAN is also overall less confidant about inliers "
        "then MNF (section 4.4)",
        "Conventionally trained ensembles without the HyperGAN, referred to as L2 networks in the figure, "
        "are highly overconfident on outliers (section 4.4)",
    ],
    "numbers": "none: the paper gives the curves only as a figure, no AUROC or other number",
}
STYLE = {"hypergan": "tab:blue", "deep-ensemble": "tab:orange", "mc-dropout": "tab:green"}


def ecdf_on_grid(values: np.ndarray, top: float) -> list[float]:
    """The share of ``values`` at or below each of :data:`CDF_POINTS` evenly spaced entropies in
    [0, top] (``top``: the largest entropy, log C)."""
    grid = np.linspace(0.0, top, CDF_POINTS)
    v = np.sort(np.clip(values, 0.0, top))  # rounding can put an entropy a hair above log C
    return (np.searchsorted(v, grid, side="right") / len(v)).tolist()


def run_one(method: str, data, ood, seed: int, args, dev: torch.device) -> tuple[dict, dict]:
    """Train one method and score it: (JSON row, the raw test / OOD entropies for the plot)."""
    ens, info = train_method(method, data, seed, args, dev)
    calib, test, ood = (
        data.calib.take(args.eval_size),
        data.test.take(args.eval_size),
        ood.take(args.eval_size),
    )
    sync(dev)
    t0 = time.perf_counter()
    torch.manual_seed(seed)  # MC dropout's masks
    logits = split_logits(ens, calib, test, ood)
    res = metrics_from_logits(logits, test.y, args.target_fpr, seed)
    sync(dev)
    ent = {n: predictive_entropy(logits[n]).double().cpu().numpy() for n in ("test", "ood")}
    top = math.log(data.num_classes)
    row = {
        "method": method,
        "seed": seed,
        "training": info,
        **res,
        "scoring_seconds": round(time.perf_counter() - t0, 1),
        "sizes": {"calib": len(calib), "test": len(test), "ood": len(ood)},
        "entropy_mean": {n: float(v.mean()) for n, v in ent.items()},
        "entropy_median": {n: float(np.median(v)) for n, v in ent.items()},
        "ecdf": {"grid_max": top, "points": CDF_POINTS, **{n: ecdf_on_grid(v, top) for n, v in ent.items()}},
    }
    return row, ent


def plot(path: Path, curves: dict[str, dict[str, dict]], title: str) -> None:
    """One panel per protocol: each method's entropy ECDF, solid on OOD inputs, dashed on in-distribution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.8), squeeze=False)
    for ax, by_method in zip(axes[0], curves.values(), strict=True):
        for method, c in by_method.items():
            for split, ls, label in (("ood", "-", "out"), ("test", "--", "in")):
                v = np.sort(c[split])
                ax.step(v, np.arange(1, len(v) + 1) / len(v), where="post", ls=ls, color=STYLE.get(method),
                        lw=1.3, label=f"{method} ({label})")  # fmt: skip
        ax.set_xlim(0, c["top"])
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("entropy of the mean prediction (nats)")
        ax.set_ylabel("empirical CDF")
        ax.set_title(c["label"], fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path, dpi=80)


# --------------------------------------------------------------------------- over seeds, and the table
def _mean_std(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values)}  # fmt: skip


def summarise(rows: list[dict]) -> list[dict]:
    """Mean ± std over seeds per (protocol, method, steps)."""
    keys = list(dict.fromkeys((r["protocol"], r["method"], r["training"]["steps"]) for r in rows))
    out = []
    for key in keys:
        rs = [r for r in rows if (r["protocol"], r["method"], r["training"]["steps"]) == key]
        out.append({
            "protocol": key[0], "method": key[1], "steps": key[2], "seeds": [r["seed"] for r in rs],
            "members": rs[0]["members"],
            "ensemble_accuracy": _mean_std([r["ensemble_accuracy"] for r in rs]),
            "auroc": {s: _mean_std([r["scores"][s]["auroc"] for r in rs]) for s in rs[0]["scores"]},
            "tpr_at_threshold": _mean_std([r["scores"]["entropy"]["tpr_at_threshold"] for r in rs]),
            "entropy_median": {n: _mean_std([r["entropy_median"][n] for r in rs]) for n in ("test", "ood")},
        })  # fmt: skip
    return out


def _f(s: dict | None, scale: float = 1.0, digits: int = 4, unit: str = "") -> str:
    if s is None:
        return "n/a"
    if s["std"] is None:
        return f"{scale * s['mean']:.{digits}f}{unit}"
    return f"{scale * s['mean']:.{digits}f} ± {scale * s['std']:.{digits}f}{unit}"


def markdown_table(rows: list[dict], target_fpr: float) -> str:
    head = ["protocol", "method", "steps", "networks", "seeds", "accuracy (in)", "entropy AUROC", "MI AUROC",
            f"TPR at {100 * target_fpr:g} % FPR (entropy)", "median entropy in / out"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for s in summarise(rows):
        cells = [s["protocol"], s["method"], f"{s['steps']:,}", str(s["members"]),
                 ", ".join(map(str, s["seeds"])), _f(s["ensemble_accuracy"], 100, 2, " %"),
                 _f(s["auroc"]["entropy"]), _f(s["auroc"]["mutual_information"]),
                 _f(s["tpr_at_threshold"], 100, 1, " %"),
                 " / ".join(_f(s["entropy_median"][n], digits=3) for n in ("test", "ood"))]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    notes = ["", "Mean ± std (ddof 1) over seeds. Entropy in nats (at most log C). Paper: " + PAPER["numbers"]
             + "; its claims: " + "; ".join(PAPER["claims"]) + "."]  # fmt: skip
    return "\n".join(lines + notes)


def table_main(files: list[str]) -> None:
    if not files:
        raise SystemExit("--table: give one or more result JSON files")
    results = [json.loads(Path(f).read_text()) for f in files]
    rows, seen = [], set()
    for res in results:
        for r in res["rows"]:
            key = (r["protocol"], r["method"], r["seed"], r["training"]["steps"])
            if key in seen:
                raise SystemExit(f"--table: the run {key} is in more than one file")
            seen.add(key)
            rows.append(r)
    print(markdown_table(rows, results[0]["args"]["target_fpr"]))


def main() -> None:
    if sys.argv[1:2] == ["--table"]:
        table_main(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--protocols", default=",".join(PROTOCOLS), help=f"some of {', '.join(PROTOCOLS)}")
    p.add_argument("--methods", default=",".join(METHODS), help=f"some of {', '.join(METHODS)}")
    p.add_argument("--seeds", default="0")
    p.add_argument("--steps", type=int, default=10_000, help="training steps of every model")
    p.add_argument(
        "--members", type=int, default=100, help="networks sampled (HyperGAN) / masks (MC dropout)"
    )
    p.add_argument("--eval-size", type=int, default=5000, help="inputs per split (calibration / test / OOD)")
    p.add_argument("--target-fpr", type=float, default=0.05)
    p.add_argument("--data-root", default=str(DEFAULT_ROOT))
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="digits 0-4 vs 5-9, a few steps (what the tests run)")
    p.add_argument("--out-dir", default=str(RESULTS), help="folder of the default --plot")
    p.add_argument("--plot", default=None, help="PNG path (default: OUT_DIR/paper_ood.png)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args()
    if args.quick:
        args.protocols, args.steps, args.seeds, args.members = "heldout", 60, "0,1", 20
    protocols = [s.strip() for s in args.protocols.split(",") if s.strip()]
    methods = [s.strip() for s in args.methods.split(",") if s.strip()]
    bad = [s for s in protocols if s not in PROTOCOLS] + [m for m in methods if m not in METHODS]
    if bad or not protocols or not methods:
        raise SystemExit(
            f"--protocols / --methods: unknown {bad}; expected {list(PROTOCOLS)} / {list(METHODS)}"
        )
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    t_all = time.perf_counter()
    rows: list[dict] = []
    curves: dict[str, dict[str, dict]] = {}
    for protocol in protocols:
        data, ood, ood_name = protocol_data(protocol, args)
        label = f"digits 0-4 vs {ood_name} (quick)" if args.quick else PROTOCOLS[protocol]
        for seed in seeds:
            for method in methods:
                row, ent = run_one(method, data, ood, seed, args, dev)
                rows.append({"protocol": protocol, "in_distribution": data.name, "ood": ood_name, **row})
                if seed == seeds[0]:
                    curves.setdefault(protocol, {})[method] = {**ent, "top": math.log(data.num_classes),
                                                               "label": label}  # fmt: skip
                med = row["entropy_median"]
                print(f"[{protocol} seed {seed}] {method}: acc {row['ensemble_accuracy']:.4f}, entropy AUROC "
                      f"{row['scores']['entropy']['auroc']:.4f}, median entropy in {med['test']:.3f} / out "
                      f"{med['ood']:.3f}; {row['training']['seconds']} s",
                      file=sys.stderr, flush=True)  # fmt: skip
    plot_path = Path(args.plot) if args.plot else Path(args.out_dir) / "paper_ood.png"
    steps = rows[0]["training"]["steps"]
    plot(plot_path, curves, f"Entropy ECDFs (solid: OOD, dashed: in-distribution), {steps:,} training steps, "
         f"seed {seeds[0]}")  # fmt: skip
    out = {
        **run_record("paper_ood", args, dev, t_all),
        "paper": PAPER,
        "protocols": {p_: PROTOCOLS[p_] for p_ in protocols},
        "plot": str(plot_path),
        "rows": rows,
        "summary": summarise(rows),
    }
    emit(out, args.out)


if __name__ == "__main__":
    main()

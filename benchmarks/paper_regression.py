"""The paper's Figure 2: the 1-D toy regression (y = x³ + N(0, 3²), 20 points on [-4, 4]).

Trains the HyperGAN on the cubic toy with the default recipe, samples 1,000 networks once and, for the
first 10, 100 and 1,000 of them, plots the predictive mean and the ±3 std band over x ∈ [-6, 6]
beside the training points and the true curve x³ (one panel per ensemble size, a PNG). Prints one
JSON object (and writes it with --out) with, per ensemble size, the mean band width (6·std) inside
the data range [-4, 4] and outside it ([-6, -4) ∪ (4, 6]), their ratio, and the training MSE of the
predictive mean. The paper's claim (section 4.3): the band widens as x leaves the training data.

    python benchmarks/paper_regression.py --out benchmarks/results/paper_regression_cpu.json
    python benchmarks/paper_regression.py --quick --out-dir /tmp/x   # a few steps: what the tests run
    python benchmarks/paper_regression.py --table RESULT.json        # the RESULTS.md table of a run

``--regulariser none --no-mixer`` trains the ablation (no discriminator, no mixer) for comparison.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, print_table, run_record  # noqa: E402

from hgdefend import load_data  # noqa: E402
from hgdefend.ensemble import SampledEnsemble  # noqa: E402
from hgdefend.evaluate.plots import save_figure  # noqa: E402
from hgdefend.recipes import default_recipe, train_model  # noqa: E402
from hgdefend.training import resolve_device  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DATA_RANGE = 4.0  # the training inputs are drawn from [-4, 4]
PLOT_RANGE = 6.0  # the paper plots [-6, 6]
SIZES = (10, 100, 1000)


def grid(points: int = 241) -> torch.Tensor:
    """x ∈ [-6, 6] as a column (241 points: a step of 0.05, with ±4 on the grid)."""
    return torch.linspace(-PLOT_RANGE, PLOT_RANGE, points).unsqueeze(1)


def regression_ensemble(hypergan, k: int, seed: int, data) -> SampledEnsemble:
    """K sampled networks that accept the toy's inputs: ``HyperGAN.ensemble`` checks inputs against
    [0, 1] whatever the data, so the ensemble is rebuilt with the dataset's value range."""
    ens = hypergan.ensemble(k, seed=seed)
    return SampledEnsemble(ens.target, ens.params, seed=seed, kind=ens.kind, value_range=data.value_range)


def band_stats(ens: SampledEnsemble, data, x: torch.Tensor) -> dict:
    """Mean, std and band widths of the members' predictions on ``x``, and the training MSE."""
    pred = ens.member_logits(x).squeeze(-1).double().cpu()  # [K, G]
    mean, std = pred.mean(0), pred.std(0)
    width = 6 * std  # the ±3 std band
    xs = x[:, 0].double().cpu()
    inside = xs.abs() <= DATA_RANGE
    w_in, w_out = float(width[inside].mean()), float(width[~inside].mean())
    covered = (mean - xs**3).abs() <= 3 * std  # where the true curve x³ lies inside the band
    train_pred = ens.member_logits(data.train.x).squeeze(-1).double().cpu()
    y = data.train.y.double().cpu()
    return {
        "members": ens.k,
        "band_width_inside": w_in,
        "band_width_outside": w_out,
        "outside_over_inside": w_out / w_in if w_in > 0 else float("inf"),
        "train_mse": float(((train_pred.mean(0) - y) ** 2).mean()),
        "train_mse_member_mean": float(((train_pred - y) ** 2).mean()),
        "true_curve_mse_inside": float(((mean - xs**3)[inside] ** 2).mean()),
        "true_curve_in_band_inside": float(covered[inside].double().mean()),
        "true_curve_in_band_outside": float(covered[~inside].double().mean()),
        "_curves": {"mean": mean.numpy(), "std": std.numpy()},
    }


def plot(path: Path, x: torch.Tensor, data, rows: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = x[:, 0].numpy()
    fig, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 3.4), sharey=True, squeeze=False)
    for ax, r in zip(axes[0], rows, strict=True):
        mean, std = r["_curves"]["mean"], r["_curves"]["std"]
        ax.fill_between(xs, mean - 3 * std, mean + 3 * std, color="lightblue", label="±3 std")
        ax.plot(xs, xs**3, color="blue", lw=1, label="x³")
        ax.plot(xs, mean, color="grey", lw=1.5, label="predictive mean")
        ax.scatter(data.train.x[:, 0], data.train.y, s=12, facecolors="none", edgecolors="red",
                   label="training points")  # fmt: skip
        for v in (-DATA_RANGE, DATA_RANGE):
            ax.axvline(v, color="k", lw=0.5, ls=":")
        ax.set_xlim(-PLOT_RANGE, PLOT_RANGE)
        ax.set_ylim(-300, 300)
        ax.set_title(f"{r['members']} networks", fontsize=10)
        ax.set_xlabel("x")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path, dpi=80)


def markdown_table(result: dict) -> str:
    """The RESULTS.md table for one run's JSON (``--table FILE``)."""
    lines = [
        "| networks | band width 6·std, inside [-4, 4] | outside (4 < \\|x\\| ≤ 6) | outside / inside | "
        "training MSE (predictive mean) | x³ inside the band: in / out of the data |",
        "|" + " --- |" * 6,
    ]
    for r in result["sizes"]:
        lines.append(
            f"| {r['members']:,} | {r['band_width_inside']:.2f} | {r['band_width_outside']:.2f} | "
            f"{r['outside_over_inside']:.2f}× | {r['train_mse']:.2f} | "
            f"{100 * r['true_curve_in_band_inside']:.0f} % / {100 * r['true_curve_in_band_outside']:.0f} % |"
        )
    return "\n".join(lines)


def main() -> None:
    if print_table(markdown_table):
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    p.add_argument("--seed", type=int, default=0, help="training and sampling seed")
    p.add_argument("--data-seed", type=int, default=0, help="draw of the 20 training points")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="ensemble sizes, one panel each")
    p.add_argument("--points", type=int, default=241, help="grid points on [-6, 6]")
    p.add_argument("--regulariser", default="gan", choices=("gan", "mmd", "none"))
    p.add_argument("--no-mixer", action="store_true", help="the ablation without the mixer")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="a few training steps (what the tests run)")
    p.add_argument("--out-dir", default=str(RESULTS), help="folder of the default --plot")
    p.add_argument("--plot", default=None, help="PNG path (default: OUT_DIR/paper_regression.png)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args()
    if args.quick and args.steps is None:
        args.steps = 20
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    if not sizes or sizes[0] < 2:
        raise SystemExit("--sizes: ensemble sizes of at least 2 networks (a std needs two)")
    torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    data = load_data("cubic", split_seed=args.data_seed)
    t0 = time.perf_counter()
    tm = train_model(data, seed=args.seed, device=dev, steps=args.steps, regulariser=args.regulariser,
                     mixer=not args.no_mixer, progress=False)  # fmt: skip
    train_s = time.perf_counter() - t0
    x = grid(args.points).to(dev)
    full = regression_ensemble(tm.hypergan, max(sizes), args.seed, data)  # one draw; the first k of it
    rows = [band_stats(full.subset(k), data, x) for k in sizes]
    plot_path = Path(args.plot) if args.plot else Path(args.out_dir) / "paper_regression.png"
    title = (f"HyperGAN on y = x³ + N(0, 3²): {tm.training['steps']} steps, regulariser "
             f"{args.regulariser}, mixer {'off' if args.no_mixer else 'on'}, seed {args.seed}")  # fmt: skip
    plot(plot_path, x.cpu(), data, rows, title)
    for r in rows:
        print(f"{r['members']} networks: band {r['band_width_inside']:.2f} inside, "
              f"{r['band_width_outside']:.2f} outside ({r['outside_over_inside']:.2f}×), "
              f"train MSE {r['train_mse']:.2f}", file=sys.stderr, flush=True)  # fmt: skip
    cfg = default_recipe(data)[1]
    out = {
        **run_record("paper_regression", args, dev, t0),
        "paper": "Figure 2 (section 4.3): predictive mean ± 3 std of 10, 100 and 1,000 sampled networks",
        "data": {
            "train_points": len(data.train),
            "noise_std": 3.0,
            "train_range": [-DATA_RANGE, DATA_RANGE],
            "grid": [-PLOT_RANGE, PLOT_RANGE, args.points],
        },
        "default_recipe_steps": cfg.steps,
        "training": {
            "steps": tm.training["steps"],
            "seconds": round(train_s, 2),
            "recipe": tm.training["recipe"],
        },
        "plot": str(plot_path),
        "band_widens_outside": {
            str(r["members"]): r["band_width_outside"] > r["band_width_inside"] for r in rows
        },
        "sizes": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
    }
    emit(out, args.out)


if __name__ == "__main__":
    main()

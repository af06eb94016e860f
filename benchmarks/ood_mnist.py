"""OOD detection, MNIST in-distribution vs Fashion-MNIST: HyperGAN ensemble vs a deep ensemble.

Both models use the paper's MNIST target net and are trained in the same run under the same time
budget; both are scored on the same MNIST test / Fashion-MNIST test inputs, with thresholds fit on
the MNIST calibration split at the target FPR. Prints one JSON object.

    python benchmarks/ood_mnist.py --budget 240 --members 100 --eval-size 2000
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from hgdefend import HyperGAN, Trainer, load_data
from hgdefend.data import load_ood
from hgdefend.detectors import SCORES, compute_scores, conformal_threshold, detection_metrics
from hgdefend.ensemble import SampledEnsemble
from hgdefend.recipes import default_recipe, default_spec
from hgdefend.training import TrainConfig, train_ensemble

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"


def split_logits(ens: SampledEnsemble, calib, test, ood) -> dict[str, torch.Tensor]:
    """Member logits ``[K, B, C]`` of each split (``calib``, ``test``, ``ood``): one batched forward each."""
    return {
        n: ens.member_logits(s.x, batch_size=250) for n, s in (("calib", calib), ("test", test), ("ood", ood))
    }


def metrics_from_logits(logits: dict[str, torch.Tensor], test_y, target_fpr: float, seed: int) -> dict:
    """Accuracy and, for every score, AUROC / AUPR / TPR at the threshold fit on calib (at the target
    FPR) and FPR at 95 % TPR, from :func:`split_logits` (on any device)."""
    scores = {
        n: {k: v.cpu().numpy().astype(np.float64) for k, v in compute_scores(lg).items()}
        for n, lg in logits.items()
    }
    probs = torch.softmax(logits["test"], -1).cpu()
    test_y = test_y.cpu()
    clean_wrong = (probs.mean(0).argmax(-1) != test_y).numpy()
    out: dict = {
        "members": int(logits["test"].shape[0]),
        "ensemble_accuracy": float(1 - clean_wrong.mean()),
        "single_network_accuracy_mean": float((probs.argmax(-1) == test_y).float().mean()),
        "scores": {},
    }
    for name in SCORES:
        thr = conformal_threshold(scores["calib"][name], target_fpr)
        m = detection_metrics(
            scores["test"][name],
            scores["ood"][name],
            thr,
            target_fpr=target_fpr,
            clean_wrong=clean_wrong,
            n_bootstrap=200,
            seed=seed,
        )
        out["scores"][name] = {
            k: m[k]
            for k in (
                "auroc",
                "auroc_ci",
                "aupr",
                "tpr_at_threshold",
                "tpr_ci",
                "realised_fpr",
                "fpr_at_95_tpr",
                "threshold",
            )
        }
    return out


def evaluate(ens: SampledEnsemble, calib, test, ood, target_fpr: float, seed: int) -> dict:
    """All scores for one ensemble: one batched forward per split, thresholds fit on calib."""
    t0 = time.perf_counter()
    logits = split_logits(ens, calib, test, ood)
    seconds = time.perf_counter() - t0
    out = metrics_from_logits(logits, test.y, target_fpr, seed)
    return {**out, "scoring_seconds": round(seconds, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=str(DEFAULT_ROOT))
    p.add_argument("--budget", type=float, default=240.0, help="training seconds per model")
    p.add_argument("--deep-budget", type=float, default=None, help="deep ensemble (default: --budget)")
    p.add_argument("--max-steps", type=int, default=20000)
    p.add_argument("--nets-per-step", type=int, default=8, help="HyperGAN networks per step (paper: 32)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--members", type=int, default=100, help="HyperGAN ensemble size for scoring")
    p.add_argument("--deep-members", type=int, default=10, help="deep-ensemble size")
    p.add_argument("--eval-size", type=int, default=2000, help="inputs per split (calib/test/ood)")
    p.add_argument("--target-fpr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    data = load_data("mnist", root=args.data_root)
    ood = load_ood("fashion-mnist", data, root=args.data_root).take(args.eval_size)
    calib, test = data.calib.take(args.eval_size), data.test.take(args.eval_size)
    spec = default_spec(data)
    hp, _ = default_recipe(data)

    def config(budget: float) -> TrainConfig:
        # Constant learning rate: with a wall-clock budget the step count is not known up front.
        return TrainConfig(
            steps=args.max_steps,
            nets_per_step=args.nets_per_step,
            batch_size=args.batch_size,
            lr_schedule="constant",
            time_budget_s=budget,
            seed=args.seed,
        )

    torch.manual_seed(args.seed)
    hg = HyperGAN(spec, **hp)
    res = Trainer(hg, data.train, config(args.budget), progress=False, device="cpu").fit()
    hg_result = evaluate(
        hg.ensemble(args.members, seed=args.seed), calib, test, ood, args.target_fpr, args.seed
    )
    fresh = evaluate(
        hg.ensemble(args.members, seed=args.seed + 1), calib, test, ood, args.target_fpr, args.seed
    )
    hg_result.update(
        training_steps=res.steps,
        training_seconds=round(res.seconds, 1),
        fresh_ensemble_entropy=fresh["scores"]["entropy"],
    )

    t0 = time.perf_counter()
    deep_cfg = config(args.budget if args.deep_budget is None else args.deep_budget)
    deep, deep_res = train_ensemble(
        spec, data.train, args.deep_members, deep_cfg, progress=False, device="cpu"
    )
    deep_seconds = time.perf_counter() - t0
    deep_result = evaluate(deep, calib, test, ood, args.target_fpr, args.seed)
    deep_result.update(training_steps=deep_res.steps, training_seconds=round(deep_seconds, 1))

    print(
        json.dumps(
            {
                "benchmark": "ood_mnist",
                "in_distribution": "mnist test (second half)",
                "ood": "fashion-mnist test (second half)",
                "eval_size": {"calib": len(calib), "test": len(test), "ood": len(ood)},
                "args": vars(args),
                "device": "cpu",
                "cpu": platform.processor() or platform.machine(),
                "torch": torch.__version__,
                "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "hypergan": hg_result,
                "deep_ensemble": deep_result,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

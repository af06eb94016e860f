"""HyperGAN vs deep ensemble vs MC dropout vs single network under FGSM/PGD on MNIST, for the
paper / fixed-budget / adaptive protocols, through the same suite ``hgdefend evaluate --attacks``
runs. Trains every model itself (budgets are arguments and are printed). Prints JSON.

    python benchmarks/attacks_mnist.py --data-root ../shared/data --train-steps 2000 --images 1000
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from hgdefend import load_data
from hgdefend.evaluate import EvaluateOptions
from hgdefend.evaluate.attacks import attacks_section
from hgdefend.evaluate.context import EvalContext
from hgdefend.recipes import train_model
from hgdefend.training import resolve_device


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--train-steps", type=int, default=2000)
    ap.add_argument("--baseline-steps", type=int, default=None, help="default: --train-steps")
    ap.add_argument("--members", type=int, default=10)
    ap.add_argument("--images", type=int, default=1000, help="attacked test inputs")
    ap.add_argument("--attacks", default="fgsm,pgd")
    ap.add_argument("--eps", default="0.1,0.3")
    ap.add_argument("--protocols", default="paper,fixed,adaptive")
    ap.add_argument("--baselines", default="deep-ensemble,mc-dropout,single")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--alpha", type=float, default=0.01)
    ap.add_argument("--lambdas", default="0,1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="runs/attacks_mnist")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    dev = resolve_device(args.device)
    opts = EvaluateOptions(
        dataset="mnist",
        out=args.out,
        seed=args.seed,
        members=args.members,
        attacks=args.attacks,
        eps=args.eps,
        protocols=args.protocols,
        baselines=args.baselines,
        attack_inputs=args.images,
        attack_steps=args.steps,
        attack_alpha=args.alpha,
        attack_lambdas=args.lambdas,
        baseline_steps=args.baseline_steps or args.train_steps,
    ).checked()  # bad names fail here, before training
    data = load_data("mnist", root=args.data_root)
    trained = train_model(data, seed=args.seed, device=dev, steps=args.train_steps, progress=False)
    res, hg, hp = trained.result, trained.hypergan, trained.training["recipe"]
    sec = attacks_section(EvalContext.build(opts, data, hg, device=dev))
    for m in sec["methods"]:
        for r in m["rows"]:
            r.pop("auroc_ci", None), r.pop("tpr_ci", None)
    out = {
        "benchmark": "attacks_mnist",
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "hypergan": {"train_steps": res.steps, "train_seconds": round(res.seconds, 1), **hp},
        "clean_test_size": len(data.test),
        "attacks": sec,
        "seconds_total": round(time.perf_counter() - t0, 1),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(json.dumps(out, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


if __name__ == "__main__":
    main()

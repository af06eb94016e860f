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

from hgdefend import HyperGAN, Trainer, load_data
from hgdefend.attacks.suite import attack_config, attacks_section
from hgdefend.evaluation import EvalContext, EvaluateOptions, default_recipe, default_spec
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
        extra={
            "attacks": {
                "n_inputs": args.images,
                "steps": args.steps,
                "alpha": args.alpha,
                "lambdas": tuple(float(v) for v in args.lambdas.split(",")),
                "baseline_steps": args.baseline_steps or args.train_steps,
            }
        },
    )
    attack_config(opts)  # bad names fail here, before training
    data = load_data("mnist", root=args.data_root)
    hp, cfg = default_recipe(data)
    cfg.steps, cfg.seed = args.train_steps, args.seed
    torch.manual_seed(args.seed)
    hg = HyperGAN(default_spec(data), **hp)
    res = Trainer(hg, data.train, cfg, val=data.calib, device=dev, progress=False).fit()
    ens = hg.ensemble(args.members, seed=args.seed).to(dev)
    sec = attacks_section(EvalContext(opts, data, hg, ens, dev, "", ""))
    for m in sec["methods"]:
        for r in m["rows"]:
            r.pop("auroc_ci", None), r.pop("tpr_ci", None)
    out = {
        "benchmark": "attacks_mnist",
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "hypergan": {
            "train_steps": res.steps,
            "train_seconds": round(res.seconds, 1),
            **hp,
            "nets_per_step": cfg.nets_per_step,
            "batch_size": cfg.batch_size,
        },
        "clean_test_size": len(data.test),
        "attacks": sec,
        "seconds_total": round(time.perf_counter() - t0, 1),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(json.dumps(out, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


if __name__ == "__main__":
    main()

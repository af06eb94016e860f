"""PGD-40 against a 10-member MNIST ensemble: batched member forward vs a per-network loop.

Every variant runs the same attack code (``hgdefend.attacks.PGD``) on the same inputs and weights;
only the member-evaluation strategy differs (``"auto"`` = the library's choice for the device and
call size, recorded as ``auto_resolved``; ``"grouped"`` = all members in one batched call;
``"loop"`` = the per-network reference). Weights are the paper's MNIST target at its random
initialisation (speed does not depend on training). Prints JSON.

    python benchmarks/attack_speed.py --images 1000 --data-root ../shared/data
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _common import device_name, sync

from hgdefend import load_data
from hgdefend.attacks import PGD
from hgdefend.ensemble import SampledEnsemble
from hgdefend.hypergan import make_generator
from hgdefend.targets import choose_strategy, mnist_paper
from hgdefend.training import resolve_device


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--members", type=int, default=10)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--strategies", default="auto,grouped,loop", help="comma list; must include loop")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    data = load_data("mnist", root=args.data_root)
    x, y = data.test.x[: args.images].to(dev), data.test.y[: args.images].to(dev)
    spec = mnist_paper()
    params = {n: t.to(dev) for n, t in spec.init_params(args.members, make_generator(0)).items()}
    strategies = args.strategies.split(",")
    if "loop" not in strategies:
        ap.error("--strategies: must include 'loop' (the same-run baseline)")
    results = {}
    adv = {}
    for strategy in strategies:
        ens = SampledEnsemble(spec, params, strategy=strategy)
        attack = PGD(ens, args.eps, 0.01, args.steps, seed=0)
        attack(x[:8], y[:8])  # warm-up (kernels, autotuning)
        times = []
        for _ in range(args.repeats):
            sync(dev)
            t0 = time.perf_counter()
            adv[strategy] = attack(x, y)
            sync(dev)
            times.append(time.perf_counter() - t0)
        results[strategy] = {"seconds_median": sorted(times)[len(times) // 2], "seconds_all": times}
    loop_s = results["loop"]["seconds_median"]
    for strategy, r in results.items():
        r["max_abs_diff_adv_vs_loop"] = float((adv[strategy] - adv["loop"]).abs().max())
        r["speedup_vs_loop"] = loop_s / r["seconds_median"]
    chunk = SampledEnsemble(spec, params).chunk_size()
    work = min(len(x), max(1, chunk // args.members)) * spec.activations_per_input
    out = {
        "benchmark": "attack_speed",
        "attack": {
            "name": "pgd",
            "norm": "linf",
            "eps": args.eps,
            "alpha": 0.01,
            "steps": args.steps,
            "random_start": True,
        },
        "members": args.members,
        "images": len(x),
        "repeats": args.repeats,
        "device": str(dev),
        "device_name": device_name(dev),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "auto_resolved": choose_strategy(dev, "attack", work),
        "strategies": results,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

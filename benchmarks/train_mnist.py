"""Train the paper's MNIST HyperGAN for a time budget and print JSON.

Reports steps per second, single-network mean/min accuracy and the 100-network ensemble accuracy over
time, diversity (relative std of layer norms, pairwise disagreement), and — in the same run, on the
same HyperGAN — the time of one training step done the batched way vs a per-network loop (the
official code's way, ``strategy="loop"``).

    python benchmarks/train_mnist.py --budget-s 300 [--data-root ../shared/data] [--device cuda]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from _common import device_name, sync

from hgdefend import HyperGAN, TrainConfig, Trainer, load_data
from hgdefend.ensemble import diversity, pairwise_disagreement
from hgdefend.graphed_step import GraphedStep
from hgdefend.targets import choose_strategy, mnist_paper
from hgdefend.training import quick_eval, resolve_device, task_loss


def time_steps(hg: HyperGAN, data, cfg: TrainConfig, strategy: str, dev: torch.device, n: int,
               *, graphed: bool = False, pipelined: bool = False) -> float:  # fmt: skip
    """Seconds of one full training step (generator forward, member forward+backward, Adam): the
    median of ``n`` steps each waited for, or with ``pipelined`` the mean of ``n`` steps queued back to
    back (as training runs them: no host synchronisation between steps). ``graphed``: the step
    captured as a CUDA graph (:mod:`hgdefend.graphed_step`)."""
    tr = Trainer(copy.deepcopy(hg), data.train,
                 TrainConfig(**{**cfg.__dict__, "strategy": strategy, "cuda_graph": graphed}),
                 device=dev, progress=False)  # fmt: skip
    step = GraphedStep(tr, task_loss) if graphed else tr._step
    g = torch.Generator().manual_seed(0)
    for s in range(3):  # warm-up (allocator, cuDNN autotune, lazy init, graph capture)
        step(s, g)
    if pipelined:
        sync(dev)
        t0 = time.perf_counter()
        for s in range(n):
            step(s, g)
        sync(dev)
        return (time.perf_counter() - t0) / n
    times = []
    for s in range(n):
        sync(dev)
        t0 = time.perf_counter()
        step(s, g)
        sync(dev)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-s", type=float, default=300.0, help="training time budget (seconds)")
    ap.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--nets-per-step", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--eval-members", type=int, default=100, help="ensemble size for the accuracy curve")
    ap.add_argument("--eval-size", type=int, default=1000, help="test images per evaluation")
    ap.add_argument("--evals", type=int, default=6, help="evaluations spread over the budget")
    ap.add_argument("--timing-steps", type=int, default=5, help="timed steps per strategy (median)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    data = load_data("mnist", root=args.data_root)
    val = data.test.take(args.eval_size)
    spec = mnist_paper(data.num_classes)
    torch.manual_seed(args.seed)
    hg = HyperGAN(spec, noise_dim=256, code_dim=128, hidden=512, regulariser="gan", beta=1.0)
    base = TrainConfig(steps=10**9, nets_per_step=args.nets_per_step, batch_size=args.batch_size,
                       lr_schedule="constant", seed=args.seed)  # fmt: skip

    # Same run, same HyperGAN (copies), same step: batched (auto) vs the per-network loop.
    auto = choose_strategy(dev, "train")
    t_batched = time_steps(hg, data, base, "auto", dev, args.timing_steps)
    t_loop = time_steps(hg, data, base, "loop", dev, args.timing_steps)

    # Spread the evaluations over the budget using the measured step time.
    est_steps = max(1, int(args.budget_s / t_batched))
    eval_every = max(1, est_steps // max(1, args.evals))
    cfg = TrainConfig(**{**base.__dict__, "time_budget_s": args.budget_s, "eval_every": eval_every,
                         "eval_members": args.eval_members})  # fmt: skip
    trainer = Trainer(hg, data.train, cfg, val=val, device=dev, progress=False)
    res = trainer.fit()
    train_s = res.seconds
    eval_s = 0.0  # evaluation time inside the budget is not training: measure one to report it
    ens = trainer.hg.ensemble(args.eval_members, seed=10_000 + args.seed)
    sync(dev)
    t0 = time.perf_counter()
    final = quick_eval(ens, val, "classification")
    sync(dev)
    eval_s = time.perf_counter() - t0
    with torch.no_grad():
        logits = ens.forward_logits(val.x.to(dev))
    out = {
        "benchmark": "train_mnist",
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "device": device_name(dev),
        "torch": torch.__version__,
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "config": {
            "nets_per_step": cfg.nets_per_step,
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "regulariser": "gan",
            "beta": 1.0,
            "budget_s": args.budget_s,
            "eval_members": args.eval_members,
            "eval_images": len(val),
        },  # fmt: skip
        "step_time": {
            "batched_strategy": auto,
            "batched_ms": round(t_batched * 1e3, 2),
            "loop_ms": round(t_loop * 1e3, 2),
            "loop_over_batched": round(t_loop / t_batched, 2),
            "steps_timed": args.timing_steps,
        },  # fmt: skip
        "steps": res.steps,
        "seconds": round(train_s, 1),
        "steps_per_s_including_evals": round(res.steps / train_s, 2),
        "one_eval_s": round(eval_s, 2),
        "history": [
            {k: round(v, 4) if isinstance(v, float) else v for k, v in h.items()} for h in res.history
        ],
        "final": {**final, "members": args.eval_members},
        "diversity": {
            "rel_std_weight_norm": {n: round(d["rel_std"], 4) for n, d in diversity(ens).items()},
            "pairwise_disagreement": round(pairwise_disagreement(logits), 4),
        },  # fmt: skip
    }
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()

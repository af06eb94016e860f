"""Training steps in one process vs ``torchrun`` with N CPU processes (gloo, 1 torch thread each).

    python benchmarks/distributed_speed.py [--dataset mnist] [--steps 30] [--nproc 2] [--out RUN.json]
    python benchmarks/distributed_speed.py --quick     # digits, a few steps: what the test suite runs

Each run trains the dataset's default HyperGAN (``hgdefend.recipes.default_recipe``) from the same
seed: one process (no torch.distributed at all), then ``torchrun --standalone --nproc-per-node N``
once per split (``members``: each rank generates and evaluates ``nets_per_step / N`` networks on
the whole minibatch; ``batch``: each rank evaluates all networks on ``batch_size / N`` inputs). The
time per step is rank 0's wall clock over the steps after ``--warmup``, all ranks in lock-step (every
step ends in a gradient all-reduce). ``same_model_max_abs_diff_by_run`` is the largest weight
difference from the one-process model, ``same_model_max_rel_diff_by_run`` the largest per-tensor
``|w - w_one| / |w_one - w_init|``. For scale, the full run adds a control, ``one+roundoff``: one
process whose generator gradients are multiplied by ``1 + 1e-7 * N(0, 1)`` every step, i.e. what
float32 round-off alone does after Adam (which divides each gradient by its running RMS, so round-off
in near-zero gradients becomes updates of up to the learning rate). ``test_1000`` is a 10-network
ensemble's accuracy on the first 1,000 test inputs, for every model. The full run also times the
other way to use N cores, one process with N torch threads (``one-Nthreads``; its speed-up is listed
beside the splits'). The machine's load average
before and after is recorded: on a shared machine it moves the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, run_record  # noqa: E402

DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"


def _worker(args: argparse.Namespace) -> None:
    """One training run (under torchrun: one rank of it); rank 0 writes the timing and the weights."""
    from hgdefend import load_data
    from hgdefend.data import Split
    from hgdefend.distributed import init_distributed
    from hgdefend.hypergan import HyperGAN
    from hgdefend.recipes import default_recipe, default_target
    from hgdefend.training import Trainer, quick_eval

    torch.set_num_threads(args.threads)
    dist = init_distributed(device="cpu", split=args.split)
    root = args.data_root if args.dataset != "digits" else None
    data = load_data(args.dataset, root=root)
    n = args.subset if args.subset > 0 else len(data.train)
    train = Split(data.train.x[:n], data.train.y[:n])
    hp, cfg = default_recipe(data)
    cfg = replace(cfg, steps=args.steps, seed=0, eval_every=0)
    torch.manual_seed(0)
    hg = HyperGAN(default_target(data), **hp)
    trainer = Trainer(hg, train, cfg, device="cpu", progress=False, dist=dist)
    init = {k: v.detach().clone() for k, v in hg.state_dict().items()}
    if args.perturb:  # the round-off control: every generator gradient times (1 + perturb * N(0, 1))
        noise, adam_step = torch.Generator().manual_seed(1), trainer.opt_g.step

        def perturbed_step(*a: object, **kw: object) -> object:
            for group in trainer.opt_g.param_groups:
                for q in group["params"]:
                    if q.grad is not None:
                        q.grad.mul_(1 + args.perturb * torch.randn(q.grad.shape, generator=noise))
            return adam_step(*a, **kw)

        trainer.opt_g.step = perturbed_step
    stamps: list[float] = []
    step_fn = trainer._step

    def timed(step: int, g: torch.Generator) -> dict:
        stamps.append(time.perf_counter())
        return step_fn(step, g)

    trainer._step = timed
    trainer.fit()
    stamps.append(time.perf_counter())
    if dist is None or dist.is_main:
        timed_steps = len(stamps) - 1 - args.warmup
        seconds = stamps[-1] - stamps[args.warmup]
        final = {k: v.detach() for k, v in hg.state_dict().items()}
        torch.save({"init": init, "final": final}, Path(args.result).with_suffix(".pt"))
        test = Split(data.test.x[:1000], data.test.y[:1000])
        acc = quick_eval(hg.ensemble(10, seed=1), test, data.task)
        Path(args.result).write_text(json.dumps({
            "processes": 1 if dist is None else dist.world_size,
            "split": None if dist is None else dist.split, "gradient_perturbation": args.perturb,
            "torch_threads": torch.get_num_threads(),
            "nets_per_step": cfg.nets_per_step, "batch_size": cfg.batch_size,
            "train_inputs": len(train), "timed_steps": timed_steps,
            "seconds": round(seconds, 3), "seconds_per_step": seconds / timed_steps,
            "test_1000": {k: round(v, 4) for k, v in acc.items()},
        }))  # fmt: skip
    if dist is not None:
        dist.exit_together()  # after rank 0's files, and without gloo's teardown (see its docstring)


def _run(cmd: list[str], env: dict[str, str]) -> None:
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if res.returncode != 0:
        tail = res.stdout[-2000:] + res.stderr[-4000:]
        raise SystemExit(f"failed ({res.returncode}): {' '.join(cmd)}\n{tail}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist", help="digits or mnist (the default: its recipe's net)")
    p.add_argument("--data-root", default=str(DATA_ROOT))
    p.add_argument("--subset", type=int, default=10_000, help="training inputs (0: all)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3, help="first steps left out of the timing")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--splits", default="members,batch")
    p.add_argument("--quick", action="store_true", help="digits, 6 steps, members (the test suite's run)")
    p.add_argument("--out", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--split", default="members", help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    p.add_argument("--perturb", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return _worker(args)
    if args.quick:
        args.dataset, args.steps, args.warmup, args.splits = "digits", 6, 2, "members"
    if args.steps <= args.warmup:
        raise SystemExit("--steps: must be more than --warmup")
    started = time.perf_counter()
    load_before = os.getloadavg()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    common = ["--worker", "--dataset", args.dataset, "--data-root", args.data_root, "--subset",
              str(args.subset), "--steps", str(args.steps), "--warmup", str(args.warmup)]  # fmt: skip
    script = str(Path(__file__).resolve())
    runs, weights = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        plan = [("one", [sys.executable, script, *common])]
        for split in args.splits.split(","):  # right after the one-process run: the same machine load
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                        f"--nproc-per-node={args.nproc}"]  # fmt: skip
            plan.append((split, [*launcher, script, *common, "--split", split]))
        if not args.quick:  # what float round-off alone does to the weights (see the docstring)
            plan.append(("one+roundoff", [sys.executable, script, *common, "--perturb", "1e-7"]))
            # the other way to use N cores: one process with N threads
            plan.append((f"one-{args.nproc}threads", [sys.executable, script, *common, "--threads",
                                                      str(args.nproc)]))  # fmt: skip
        for name, cmd in plan:
            result = Path(tmp) / f"{name}.json"
            load = [round(v, 2) for v in os.getloadavg()]
            _run([*cmd, "--result", str(result)], env)
            runs.append({"run": name, **json.loads(result.read_text()), "loadavg_at_start": load})
            weights[name] = torch.load(result.with_suffix(".pt"))
    one = runs[0]["seconds_per_step"]
    ref, start = weights["one"]["final"], weights["one"]["init"]
    diffs = {name: max(float((ref[k] - w["final"][k]).abs().max()) for k in ref)
             for name, w in weights.items() if name != "one"}  # fmt: skip
    rel = {name: max(float((ref[k] - w["final"][k]).norm() / (ref[k] - start[k]).norm()) for k in ref)
           for name, w in weights.items() if name != "one"}  # fmt: skip
    controls = ("one+roundoff", f"one-{args.nproc}threads")
    speedups = {r["split"]: round(one / r["seconds_per_step"], 3) for r in runs if r["processes"] > 1}
    threaded = [r for r in runs if r["torch_threads"] > 1]
    if threaded:
        speedups[f"one process, {args.nproc} threads"] = round(one / threaded[0]["seconds_per_step"], 3)
    record = run_record("distributed_speed", args, torch.device("cpu"), started)
    record["device_name"] = f"{os.cpu_count()}-core CPU, 1 torch thread per process (gloo)"
    emit({**record, "loadavg_before": [round(v, 2) for v in load_before],
          "loadavg_after": [round(v, 2) for v in os.getloadavg()],
          "runs": runs, "speedup_by_split": speedups,
          "speedup": max(v for k, v in speedups.items() if k in args.splits.split(",")),
          "same_model_max_abs_diff_by_run": diffs,
          "same_model_max_rel_diff_by_run": rel,
          "same_model_max_abs_diff": max(v for k, v in diffs.items() if k not in controls)},
         args.out)  # fmt: skip


if __name__ == "__main__":
    main()

"""The GPU numbers issue #7 asks for, in one go, each against its baseline in the same run (JSON).

1. members forward at K=100, B=1,000 (and forward+backward) for every strategy vs the per-network loop;
2. one HyperGAN training step (32 nets × 100 images, paper MNIST net) batched vs the loop;
3. PGD-40 (eps 0.3, step 0.01) against 10 sampled members on 1,000 MNIST-shaped images — with
   ``hgdefend.attacks.PGD`` when present, and always as a plain 40-step gradient-sign loop on
   ``ensemble.forward_logits``.
Random inputs stand in for MNIST in parts 1–3 (speed does not depend on pixel values).
4. With ``--data-root`` (MNIST in torchvision's layout): ``hgdefend train --dataset mnist`` end to end
   for ``--train-budget`` seconds of training, then the single-network accuracy of its model on the
   10,000 MNIST test images (100 sampled networks), wall clock of the whole command beside;
5. ``hgdefend evaluate`` on that model with the full attack suite, timed end to end.

    python benchmarks/gpu_check.py [--out gpu_check.json] [--skip-compile] [--data-root DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import members as members_bench  # noqa: E402
from _common import time_calls  # noqa: E402
from train_mnist import time_steps  # noqa: E402

from hgdefend import HyperGAN, TrainConfig  # noqa: E402
from hgdefend.data import Split  # noqa: E402
from hgdefend.ensemble import SampledEnsemble  # noqa: E402
from hgdefend.probabilities import log_mean_probs  # noqa: E402
from hgdefend.targets import DEFAULT_STRATEGIES, mnist_paper  # noqa: E402


def plain_pgd(ens: SampledEnsemble, x: torch.Tensor, y: torch.Tensor, steps=40, eps=0.3, alpha=0.01):
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = torch.nn.functional.nll_loss(log_mean_probs(ens.forward_logits(x_adv)), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = (x + (x_adv.detach() + alpha * grad.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    return x_adv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="also write the JSON here (updated after each part)")
    ap.add_argument("--skip-compile", action="store_true", help="leave out torch.compile / CUDA graphs")
    ap.add_argument("--strategies", default=None, help="comma list for part 1 (default: all for the device)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: check the script runs (CPU)")
    ap.add_argument("--data-root", default=None, help="MNIST here: also time train and evaluate (4-5)")
    ap.add_argument("--train-budget", type=float, default=60.0, help="seconds of training in part 4")
    ap.add_argument(
        "--train-variants",
        default="eager,graphed",
        help="part 4: eager and/or graphed, or best (the faster in part 2)",
    )
    ap.add_argument("--evaluate-suites", default="default_section,full_suite", help="part 5's runs")
    ap.add_argument("--work-dir", default="gpu_check_work", help="model and report folders of 4-5")
    ap.add_argument("--parts", default="1,2,3,4,5", help="comma list of the parts to run")
    args = ap.parse_args()
    sizes = (4, 8, 2, 16, 2, 1) if args.smoke else (100, 1000, 32, 1000, 40, 3)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report: dict = {"benchmark": "gpu_check", "device": members_bench.device_name(dev),
                    "torch": torch.__version__, "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
                    "auto_table": {f"{d}/{m}": s for (d, m), s in DEFAULT_STRATEGIES.items()}}  # fmt: skip

    def save() -> None:
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=1))

    parts = {int(v) for v in args.parts.split(",")}
    if parts & {1, 2, 3}:
        speed_rows(args, dev, sizes, report, save, parts)
    if args.data_root and parts & {4, 5}:
        report["train_evaluate"] = train_and_evaluate(args, dev, parts, save, report)
    print(json.dumps(report, indent=1))


def run_cli(args: list[str]) -> tuple[float, str]:
    """Run ``python -m hgdefend ARGS`` as a user would; (wall-clock seconds, stdout)."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "hgdefend", *args], capture_output=True, text=True, check=False
    )
    secs = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"hgdefend {args[0]} exited {out.returncode}: {out.stderr[-600:]}")
    return secs, out.stdout


def train_and_evaluate(args, dev: torch.device, parts: set[int], save, report: dict) -> dict:
    """Parts 4-5: the CLI end to end on MNIST, as a user runs it on this device."""
    work = Path(args.work_dir)
    model_dir = work / "model"
    row: dict = {"train_budget_s": args.train_budget}
    report["train_evaluate"] = row
    dev_arg = ["--device", str(dev), "--seed", "0", "--quiet"]
    if 4 in parts:
        variants = args.train_variants.split(",")
        if variants == ["best"]:  # the faster pipelined step of part 2 (eager when it was not timed)
            t = report.get("train_step_ms", {})
            graphed, eager = t.get("auto graphed pipelined"), t.get("auto pipelined")
            faster = isinstance(graphed, float) and isinstance(eager, float) and graphed < eager
            variants = ["graphed" if faster else "eager"]
        for variant in variants:
            out_dir = model_dir if variant == "eager" else work / f"model_{variant}"
            # the user's command: checkpoints (~200 MB) keep their default, at most one a minute
            cmd = ["train", "--dataset", "mnist", "--data-root", args.data_root, "--out", str(out_dir),
                   "--steps", "1000000", "--time-budget", str(args.train_budget), "--eval-every", "1000",
                   *dev_arg]  # fmt: skip
            cmd += ["--cuda-graph"] if variant == "graphed" else []
            res: dict = {"command": "hgdefend " + " ".join(cmd)}
            row[f"train_{variant}"] = res
            try:
                secs, _ = run_cli(cmd)
                res["wall_s"] = round(secs, 2)
                log = json.loads((out_dir / "train_log.json").read_text())
                res["train_log"] = {
                    k: log.get(k) for k in ("seconds", "history", "mixer_pretrain") if k in log
                }
                res["test_accuracy"] = test_accuracy(out_dir / "model.safetensors", args.data_root, dev)
            except Exception as exc:
                res["error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
            save()
    trained = [d for d in (model_dir, work / "model_graphed") if (d / "model.safetensors").is_file()]
    if 5 in parts and trained:
        suites = {"default_section": [],
                  "full_suite": ["--attacks", "fgsm,pgd", "--protocols", "paper,fixed,adaptive",
                                 "--baselines", "deep-ensemble,single"]}  # fmt: skip
        for name in args.evaluate_suites.split(","):
            extra = suites[name]
            cmd = ["evaluate", "--model", str(trained[0] / "model.safetensors"), "--dataset", "mnist",
                   "--data-root", args.data_root, "--ood", "fashion-mnist",
                   "--out", str(work / f"report_{name}"), "--json", *extra, *dev_arg]  # fmt: skip
            try:
                secs, out = run_cli(cmd)
                summary = json.loads(out) if out.strip().startswith("{") else out[-2000:]
                row[f"evaluate_{name}"] = {"command": "hgdefend " + " ".join(cmd), "wall_s": round(secs, 2),
                                           "summary": summary}  # fmt: skip
            except Exception as exc:
                row[f"evaluate_{name}"] = f"{type(exc).__name__}: {str(exc)[:400]}"
            save()
    return row


def test_accuracy(model: Path, data_root: str, dev: torch.device) -> dict:
    """Single-network (mean, min over 100 sampled networks) and ensemble accuracy on MNIST's test set."""
    from hgdefend import load_data
    from hgdefend.io import load_model
    from hgdefend.training import quick_eval

    data = load_data("mnist", root=data_root)
    hg = load_model(model, device=dev).hypergan
    ens = hg.ensemble(100, seed=1)
    test = data.test
    return {"images": len(test), "members": 100, **quick_eval(ens, test, "classification")}


def speed_rows(args, dev: torch.device, sizes: tuple, report: dict, save, parts: set[int]) -> None:
    """Parts 1-3 (those in ``parts``) on random MNIST-shaped inputs."""
    k_mem, b_mem, nets, imgs, pgd_steps, reps = sizes
    if 1 in parts:
        # 1. members at K=100, B=1000
        pool = members_bench.CUDA_STRATEGIES if dev.type == "cuda" else members_bench.CPU_STRATEGIES
        pool = args.strategies.split(",") if args.strategies else pool
        strategies = [s for s in pool if not (args.skip_compile and ("compile" in s or "graph" in s))]
        m = members_bench.main(["--device", str(dev), "--k", str(k_mem), "--batch", str(b_mem),
                                "--modes", "score,train,attack", "--strategies", ",".join(strategies),
                                "--min-time", "0.3"])  # fmt: skip
        report["members_k100_b1000"] = m["results"]
        best = {}
        for mode in ("score", "train", "attack"):
            rows = [r for r in m["results"] if r["mode"] == mode and "member_images_per_s" in r]
            fp32 = [r for r in rows if "bf16" not in r["strategy"] and r["strategy"] != "loop"]
            loop = next((r for r in rows if r["strategy"] == "loop"), None)
            top = max(fp32, key=lambda r: r["member_images_per_s"], default=None)
            if top and loop:
                best[mode] = {"fastest_non_bf16": top["strategy"],
                              "member_images_per_s": top["member_images_per_s"],
                              "loop_member_images_per_s": loop["member_images_per_s"],
                              "speedup_vs_loop": top["speedup_vs_loop"]}  # fmt: skip
        report["best_by_mode"] = best
        save()

    spec = mnist_paper()
    g = torch.Generator().manual_seed(0)
    if 2 in parts:
        # 2. training step: 32 nets x 100 images, batched vs loop, same HyperGAN
        data = type("D", (), {})()
        data.train = Split(torch.rand(2000, 1, 28, 28, generator=g), torch.randint(10, (2000,), generator=g))
        torch.manual_seed(0)
        hg = HyperGAN(spec)
        cfg = TrainConfig(nets_per_step=nets, batch_size=100, lr_schedule="constant")
        steps = {}
        for s in ("auto", "grouped", "grouped+tf32", "grouped+bf16", "unfold+tf32", "vmap", "loop"):
            try:
                steps[s] = round(time_steps(hg, data, cfg, s, dev, 10 if reps > 1 else 1) * 1e3, 3)
            except Exception as exc:
                steps[s] = f"{type(exc).__name__}: {str(exc)[:150]}"
        # as training runs: steps queued back to back; eager and captured as a CUDA graph
        both = {"graphed": True, "pipelined": True}
        variants = {"auto pipelined": {"pipelined": True}, "loop pipelined": {"pipelined": True},
                    "auto graphed": {"graphed": True}, "auto graphed pipelined": both,
                    "grouped graphed pipelined": both}  # fmt: skip
        for name, kw in variants.items():
            if kw.get("graphed") and dev.type != "cuda":
                continue
            try:
                n = 30 if reps > 1 else 1
                steps[name] = round(time_steps(hg, data, cfg, name.split()[0], dev, n, **kw) * 1e3, 3)
            except Exception as exc:
                steps[name] = f"{type(exc).__name__}: {str(exc)[:300]}"
        loop_ms = steps["loop"]
        report["train_step_ms"] = steps
        if isinstance(steps.get("loop pipelined"), float):
            report["train_step_pipelined_loop_over"] = {
                s: round(steps["loop pipelined"] / v, 2)
                for s, v in steps.items()
                if "pipelined" in s and isinstance(v, float)
            }
        report["train_step_loop_over"] = {s: round(loop_ms / v, 2) for s, v in steps.items()
                                          if isinstance(v, float) and isinstance(loop_ms, float)}  # fmt: skip
        save()

    if 3 not in parts:
        return
    # 3. PGD-40 against 10 members, 1000 images
    x = torch.rand(imgs, 1, 28, 28, generator=g).to(dev)
    y = torch.randint(10, (imgs,), generator=g).to(dev)
    ens = SampledEnsemble(spec, {n: t.to(dev) for n, t in spec.init_params(10, g).items()})
    pgd = {}

    def median(fn) -> float:
        return round(time_calls(fn, dev, min_reps=reps, max_reps=reps)["median_s"], 4)

    fused = ("fused+tf32",) if dev.type == "cuda" else ()  # the Triton kernel runs on CUDA only
    for s in ("auto", "grouped", "grouped+tf32", *fused, "grouped+bf16", "unfold+tf32", "loop"):
        ens.strategy = s
        pgd[f"plain_loop_{s}_s"] = median(lambda e=ens: plain_pgd(e, x, y, steps=pgd_steps))
    try:
        from hgdefend.attacks import PGD

        for s in ("auto", *fused, "grouped+bf16"):
            ens.strategy = s
            attack = PGD(ens, eps=0.3, alpha=0.01, steps=pgd_steps, early_stop=False)
            pgd[f"hgdefend_PGD_{s}_s"] = median(lambda a=attack: a(x, y))
    except Exception as exc:  # the attacks package may not exist yet, or differ
        pgd["hgdefend_PGD"] = f"not timed: {type(exc).__name__}: {str(exc)[:150]}"
    report["pgd40_10members_1000images"] = pgd
    save()


if __name__ == "__main__":
    main()

"""Robust members plus detection, under the strongest adaptive attack the library runs, in one run.

Methods, each trained for the same wall-clock budget on the same data: the plain HyperGAN and an
adversarially trained one, a deep ensemble and a single network (plain and adversarially trained),
and ART's ``BinaryInputDetector`` (a supervised detector network trained on FGSM examples) beside
the plain single network. Thresholds are fit on clean calibration inputs at the target FPR.

The attack, per eps: APGD-CE and APGD-DLR (Croce & Hein 2020), each with the plain loss (λ = 0) and
the detector-aware loss (λ > 0: fool the classifier *and* keep the detector's score low; for the
binary detector its logit margin enters the loss); against a HyperGAN every gradient is the
expectation over fresh weight samples (EOT). An input counts against a method when *any* of these
attacks leaves it misclassified by the scoring networks, and "missed" when any leaves it
misclassified and not flagged — the per-input worst case, as AutoAttack counts robust accuracy.
Checks for obfuscated gradients: APGD-CE's success at a large eps (must approach 100 %), and a
run with more steps that must not be stronger by much.

    python benchmarks/robust_mnist.py --budget 600 --train-size 20000 --threads 1 --out R.json
    python benchmarks/robust_mnist.py --quick            # digits, a few steps (the test suite)
    python benchmarks/robust_mnist.py --table R.json     # the RESULTS.md table of a run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, print_table, run_record  # noqa: E402

from hgdefend import load_data  # noqa: E402
from hgdefend.art.binary_detector import detector_margin, train_binary_detector  # noqa: E402
from hgdefend.attacks import APGD, FreshSamples  # noqa: E402
from hgdefend.detectors import compute_scores, conformal_threshold, detection_metrics  # noqa: E402
from hgdefend.evaluate.gradient_checks import obfuscation_checks as gradient_checks  # noqa: E402
from hgdefend.evaluate.gradient_checks import square_attack  # noqa: E402
from hgdefend.probabilities import predict  # noqa: E402
from hgdefend.recipes import default_spec, train_model  # noqa: E402
from hgdefend.training import TrainConfig, resolve_device, train_ensemble  # noqa: E402

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"
METHODS = (
    "hypergan",
    "hypergan-adv",
    "deep-ensemble",
    "deep-ensemble-adv",
    "single",
    "single-adv",
    "binary-detector",
)
# The score each method's detector reads (higher = more suspicious): the library's default detector
# for ensembles, the max-softmax baseline for one network, the detector network's logit margin.
SCORES = {"hypergan": "entropy", "deep-ensemble": "entropy", "single": "max_prob"}


# --------------------------------------------------------------------------- training
def _adv_kw(args: argparse.Namespace) -> dict:
    return {"adversarial": args.adv_method, "adv_eps": args.train_eps, "adv_steps": args.adv_steps,
            "adv_eps_warmup": args.adv_eps_warmup}  # fmt: skip


def train_method(method: str, data, args: argparse.Namespace, dev: torch.device) -> tuple[dict, dict]:
    """(what the attack needs, training info) for one method."""
    base, adv = method.removesuffix("-adv"), method.endswith("-adv")
    budget = None if args.quick else args.budget
    steps = args.quick_steps if args.quick else args.max_steps
    t0 = time.perf_counter()
    if base == "hypergan":
        # a long CPU run can be continued by a later one: --resume with a larger --budget (in total)
        ckpt = Path(args.checkpoint_dir) / f"{method}.safetensors" if args.checkpoint_dir else None
        tm = train_model(data, seed=args.seed, device=dev, steps=steps, nets_per_step=args.nets_per_step,
                         batch_size=args.batch_size, time_budget=budget, progress=False,
                         checkpoint=ckpt, resume=args.resume, checkpoint_every=100 if ckpt else 0,
                         checkpoint_min_interval=600.0 if ckpt else 0.0,
                         **(_adv_kw(args) if adv else {}))  # fmt: skip
        hg = tm.hypergan
        model = {
            "attacked": FreshSamples(hg, args.eot_members, seed=args.seed + 2),
            "scoring": hg.ensemble(args.members, seed=args.seed + 1),
            "eot_iter": args.eot_iter,
        }
        info = {k: tm.training[k] for k in ("steps", "seconds", "recipe")}
        if ckpt:
            info["checkpoint"] = {"path": str(ckpt), "resumed": args.resume}
        return model, info
    cfg = TrainConfig(steps=steps, batch_size=args.batch_size, lr=args.member_lr, time_budget_s=budget,
                      seed=args.seed, **(_adv_kw(args) if adv else {}))  # fmt: skip
    spec = default_spec(data)
    n_members, kind = (args.deep_members, "deep-ensemble") if base == "deep-ensemble" else (1, "single")
    ens, result = train_ensemble(spec, data.train, n_members, cfg, kind=kind, device=dev, progress=False)
    info = {"steps": result.steps, "seconds": round(time.perf_counter() - t0, 1), "members": ens.k,
            "config": {k: v for k, v in vars(cfg).items() if k != "betas"}}  # fmt: skip
    return {"attacked": ens, "scoring": ens, "eot_iter": 1}, info


def train_detector(classifier, data, args: argparse.Namespace, dev: torch.device) -> tuple[nn.Module, dict]:
    """ART's BinaryInputDetector (Metzen et al. 2017) on clean vs FGSM inputs against ``classifier``."""
    sub = data.train.take(args.detector_train)
    return train_binary_detector(classifier, sub.x, sub.y, eps=args.train_eps, epochs=args.detector_epochs,
                                 seed=args.seed, device=dev)  # fmt: skip


# --------------------------------------------------------------------------- scoring
class Judge:
    """Predictions and detector scores of one method (what decides 'wrong' and 'flagged')."""

    def __init__(self, scoring, score: str | None = None, detector: nn.Module | None = None) -> None:
        self.scoring, self.score, self.detector = scoring, score, detector

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        logits = self.scoring.member_logits(x, batch_size=250)
        pred = predict(logits).cpu().numpy()
        if self.detector is not None:
            s = torch.cat([detector_margin(self.detector, x[i : i + 500]) for i in range(0, len(x), 500)])
        else:
            s = compute_scores(logits)[self.score]
        return pred, s.cpu().numpy().astype(np.float64)


def attack_method(name: str, model: dict, judge: Judge, data, args, dev: torch.device) -> dict:
    calib, test = data.calib.take(args.eval_size), data.test.take(args.eval_size)
    _, calib_scores = judge(calib.x.to(dev))
    test_pred, test_scores = judge(test.x.to(dev))
    thr = conformal_threshold(calib_scores, args.target_fpr)
    sub = test.take(args.n_inputs)
    x, y = sub.x.to(dev), sub.y.to(dev)
    y_np = sub.y.numpy()
    out = {
        "method": name,
        "clean_accuracy": float((test_pred == test.y.numpy()).mean()),
        "realised_fpr": float((test_scores > thr).mean()),
        "threshold": thr,
        "inputs": len(x),
        "eps": {},
    }
    score_kw = (
        {"detector": lambda inp, _logits: detector_margin(judge.detector, inp)}
        if judge.detector is not None
        else {"score": judge.score}
    )
    for eps in args.eps:
        wrong_any = np.zeros(len(x), bool)
        missed_any = np.zeros(len(x), bool)
        runs = []
        for loss in ("ce", "dlr"):
            for lam in args.lambdas:
                kw = score_kw if lam > 0 else {}
                atk = APGD(model["attacked"], eps, args.steps, loss=loss, eot_iter=model["eot_iter"],
                           restarts=args.restarts, seed=args.seed, lam=lam, **kw)  # fmt: skip
                t0 = time.perf_counter()
                x_adv = atk(x, y)
                pred, s = judge(x_adv)
                wrong, flagged = pred != y_np, s > thr
                wrong_any |= wrong
                missed_any |= wrong & ~flagged
                m = detection_metrics(test_scores, s, thr, target_fpr=args.target_fpr, suspect_wrong=wrong,
                                      n_bootstrap=args.bootstrap, seed=args.seed)  # fmt: skip
                runs.append({"attack": atk.name, "lam": lam, "robust_accuracy": float(1 - wrong.mean()),
                             "missed_and_wrong": float((wrong & ~flagged).mean()), "auroc": m["auroc"],
                             "tpr_at_threshold": m["tpr_at_threshold"],
                             "seconds": round(time.perf_counter() - t0, 1)})  # fmt: skip
        best = max(runs, key=lambda r: (r["missed_and_wrong"], -r["robust_accuracy"]))
        out["eps"][f"{eps:g}"] = {
            "robust_accuracy": float(1 - wrong_any.mean()),
            "missed_and_wrong": float(missed_any.mean()),
            "attackers_best": best,
            "runs": runs,
        }
        print(f"  {name} eps {eps:g}: robust acc {1 - wrong_any.mean():.3f}, missed {missed_any.mean():.3f}, "
              f"AUROC {best['auroc']:.3f}", file=sys.stderr, flush=True)  # fmt: skip
    checks = obfuscation_checks(model, judge, x, y_np, args)
    checks["white_box_at_least_as_strong"] = (
        checks["accuracy_at_eps"]["accuracy"] <= checks["square"]["accuracy"]
    )
    out["checks"] = checks
    return out


def obfuscation_checks(model: dict, judge: Judge, x: torch.Tensor, y: np.ndarray, args) -> dict:
    """Athalye et al.'s signs of a broken evaluation, by the library's checks (the ones ``hgdefend
    evaluate`` writes into its report: :mod:`hgdefend.evaluate.gradient_checks`): at a large eps
    APGD-CE must fool (nearly) all inputs; twice the steps must not be much stronger; the white-box
    attack must be at least as strong as a black-box one (ART's SquareAttack) at the same eps."""
    y_t = torch.as_tensor(y, device=x.device)
    n = min(len(x), args.check_inputs)
    top = max(args.eps)
    res = gradient_checks(
        lambda e, s: APGD(model["attacked"], e, s, eot_iter=model["eot_iter"], seed=args.seed + 7),
        lambda inp: judge(inp)[0],
        x[:n],
        y_t[:n],
        eps=[top],
        steps=args.steps,
        large=args.check_eps,
        black_box=lambda xb, yb, e: square_attack(
            judge.scoring, xb, yb, e, queries=args.square_queries, seed=args.seed
        ),
    )
    more = res["more_steps"]
    return {
        "inputs": n,
        "large_eps": args.check_eps,
        "accuracy_at_large_eps": res["eps_sweep"]["accuracy"][-1],  # at max(--eps) if --check-eps <= it
        "accuracy_at_eps": {"eps": top, "steps": args.steps, "accuracy": more["accuracy"]},
        "accuracy_more_steps": {"eps": top, "steps": 2 * args.steps, "accuracy": more["accuracy_more_steps"]},
        "square": {"eps": top, "queries": args.square_queries, "accuracy": res["black_box"]["accuracy"]},
    }


# --------------------------------------------------------------------------- table
def markdown_table(result: dict) -> str:
    big = result["args"]["check_eps"]
    head = (
        "| method | training | clean acc | eps | robust acc | missed and wrong | AUROC (attacker's best) "
        f"| TPR at threshold | APGD-CE acc at eps {big:g} | Square acc (largest eps) |"
    )
    lines = [head, "|" + " --- |" * 10]
    for r in result["rows"]:
        t = r["training"]
        trained = (f"{t['steps']} steps, " if "steps" in t else "") + f"{t['seconds']:.0f} s"
        for eps, e in r["eps"].items():
            b = e["attackers_best"]
            cells = [r["method"], trained, f"{100 * r['clean_accuracy']:.2f} %", eps,
                     f"{100 * e['robust_accuracy']:.1f} %", f"{100 * e['missed_and_wrong']:.1f} %",
                     f"{b['auroc']:.3f} ({b['attack']}, λ={b['lam']:g})",
                     f"{100 * b['tpr_at_threshold']:.1f} %",
                     f"{100 * r['checks']['accuracy_at_large_eps']:.1f} %",
                     f"{100 * r['checks']['square']['accuracy']:.1f} %"]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    if print_table(markdown_table):
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=str(DEFAULT_ROOT))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--budget", type=float, default=600.0, help="training seconds per model")
    p.add_argument("--max-steps", type=int, default=100_000, help="step cap (the budget binds first)")
    p.add_argument("--train-size", type=int, default=None, help="use the first N training inputs")
    p.add_argument("--nets-per-step", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--member-lr", type=float, default=1e-3)
    p.add_argument("--members", type=int, default=100, help="scoring HyperGAN ensemble")
    p.add_argument("--eot-members", type=int, default=10, help="fresh HyperGAN networks per gradient")
    p.add_argument("--eot-iter", type=int, default=1, help="fresh draws averaged per gradient")
    p.add_argument("--deep-members", type=int, default=10)
    p.add_argument("--adv-method", default="pgd", choices=("pgd", "fgsm", "trades"))
    p.add_argument("--train-eps", type=float, default=0.3)
    p.add_argument("--adv-steps", type=int, default=7)
    p.add_argument("--adv-eps-warmup", type=int, default=0, help="steps over which the training eps ramps up")
    p.add_argument("--detector-train", type=int, default=10_000, help="clean inputs (+ as many FGSM ones)")
    p.add_argument("--detector-epochs", type=int, default=3)
    p.add_argument("--eps", type=lambda s: [float(v) for v in s.split(",")], default=[0.1, 0.3])
    p.add_argument("--lambdas", type=lambda s: [float(v) for v in s.split(",")], default=[0.0, 1.0])
    p.add_argument("--steps", type=int, default=100, help="APGD steps")
    p.add_argument("--restarts", type=int, default=1)
    p.add_argument("--n-inputs", type=int, default=500, help="test inputs attacked")
    p.add_argument("--eval-size", type=int, default=5000, help="clean calibration / test inputs")
    p.add_argument("--check-eps", type=float, default=0.6)
    p.add_argument("--check-inputs", type=int, default=200)
    p.add_argument(
        "--square-queries", type=int, default=300, help="SquareAttack iterations (black-box check)"
    )
    p.add_argument("--target-fpr", type=float, default=0.05)
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="digits, a few steps, small ensembles")
    p.add_argument("--quick-steps", type=int, default=60)
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument(
        "--checkpoint-dir",
        default=None,
        help="write each HyperGAN's training checkpoint here (METHOD.safetensors, every 10 min)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the HyperGANs from --checkpoint-dir; --budget is the total training time",
    )
    args = p.parse_args()
    if args.resume and not args.checkpoint_dir:
        p.error("--resume needs --checkpoint-dir")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"--methods: unknown method {m!r}; expected some of {', '.join(METHODS)}")
    if args.quick:
        args.members, args.eot_members, args.deep_members, args.steps = 10, 4, 3, 5
        args.n_inputs, args.eval_size, args.check_inputs, args.bootstrap = 40, 400, 20, 0
        args.square_queries = 20
        args.adv_steps, args.train_eps, args.eps, args.detector_train, args.detector_epochs = (
            2,
            0.1,
            [0.1],
            300,
            1,
        )
    torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    data = load_data("digits") if args.quick else load_data("mnist", root=args.data_root)
    if args.train_size:
        data = replace(data, train=data.train.take(args.train_size))
    t_all, rows, trained = time.perf_counter(), [], {}
    for m in methods:
        base = m.removesuffix("-adv")
        if m == "binary-detector":
            if "single" not in trained:
                trained["single"] = train_method("single", data, args, dev)
            model, info = trained["single"]
            det, det_info = train_detector(model["attacked"], data, args, dev)
            judge, info = Judge(model["scoring"], detector=det), {**info, "detector": det_info}
        else:
            model, info = trained[m] = train_method(m, data, args, dev)
            judge = Judge(model["scoring"], SCORES[base])
        print(f"[{m}] trained: {json.dumps({k: v for k, v in info.items() if k != 'recipe'})[:200]}",
              file=sys.stderr, flush=True)  # fmt: skip
        t0 = time.perf_counter()
        row = attack_method(m, model, judge, data, args, dev)
        row["score"] = "detector margin (ART BinaryInputDetector)" if m == "binary-detector" else SCORES[base]
        rows.append({**row, "training": info, "attack_seconds": round(time.perf_counter() - t0, 1)})
    out = {
        **run_record("robust_mnist", args, dev, t_all),
        "dataset": data.name,
        "train_inputs": len(data.train),
        "rows": rows,
    }
    emit(out, args.out)


if __name__ == "__main__":
    main()

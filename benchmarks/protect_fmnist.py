"""Protect a user's Fashion-MNIST CNN with a head HyperGAN (issue #16, benchmark (a)), in one run.

The user's model: a small CNN (``benchmarks/fmnist_cnn.py``, plain torch) trained on Fashion-MNIST,
saved as safetensors and loaded back as a user would (``hgdefend.backbone.load_backbone``). Then,
each protection step with the same wall-clock budget (``--budget`` seconds of training):

* ``head-hypergan``: a HyperGAN over the CNN's two linear layers (``HeadTarget``, offsets around the
  user's weights; the dataset's recipe via ``recipes.train_model(backbone=, generate=)``, with the
  off-data diversity term by default, ``--head-diversity``); scored by the entropy of 100 samples;
* ``head-ensemble``: a deep ensemble of 5 heads on the same frozen CNN (``training.train_members``
  through ``HeadTarget``: each head the user's head plus its own small random offset, trained
  independently); ``head-ensemble-reinit`` (not run by default): 5 heads re-initialised from
  scratch (torch's default initialisation), a more diverse start;
* ``single``: the user's model as is, scored by max-softmax (the baseline every detector must beat;
  no training);
* ``full-hypergan``: hgdefend's default Fashion-MNIST HyperGAN generating *every* weight of the
  paper's MNIST network (``recipes.train_model``), scored by entropy.

Protocols (``--protocols``): ``mnist`` — the CNN on all 10 classes; Fashion-MNIST test in, MNIST test
out; ``heldout`` — a second user CNN trained on classes 0–4 (and every method on those); classes 5–9
of the Fashion-MNIST test set out, MNIST reported too. Per method and OOD set: accuracy, AUROC (with a
bootstrap interval) and TPR at a threshold fit on the calibration split for a 5 % FPR, for entropy,
mutual information and max-softmax. The held-out protocol trains at ``--heldout-budget`` (default:
half of ``--budget``, so that ``--budget 60`` on a GPU ends within ~6 minutes); within a protocol
every method has the same budget.

The attack table (``mnist`` protocol, ``--attack-protocols``): the library's APGD (CE loss by default)
with the plain loss (λ = 0) and the detector-aware loss (λ = 1: fool the classifier and keep the
score low), against a HyperGAN with EOT (fresh sampled networks at every gradient,
``attacks.FreshSamples``). As in ``benchmarks/robust_mnist.py``, an input is "missed" when any of
these attacks leaves it misclassified by the scoring networks and not flagged at the 5 % clean-FPR
threshold. Obfuscation check: APGD-CE's accuracy at a large eps (``--check-eps``) must fall to ~0.

    python benchmarks/protect_fmnist.py --budget 60 --device cuda --out R.json
    python benchmarks/protect_fmnist.py --budget 120 --threads 1 --out R.json   # CPU
    python benchmarks/protect_fmnist.py --quick        # a few hundred images, a few steps (tests)
    python benchmarks/protect_fmnist.py --methods single,head-hypergan --protocols mnist \
        --attack-protocols '' --generate 3,8,10 --compact 3=scales   # the last conv block too
    python benchmarks/protect_fmnist.py --table R.json # the RESULTS.md tables of a run
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fmnist_cnn  # noqa: E402
from _common import emit, print_table, run_record, sync  # noqa: E402

from hgdefend import load_data  # noqa: E402
from hgdefend.attacks import APGD, FreshSamples  # noqa: E402
from hgdefend.backbone import load_backbone  # noqa: E402
from hgdefend.data import load_ood  # noqa: E402
from hgdefend.detectors import compute_scores, conformal_threshold, detection_metrics  # noqa: E402
from hgdefend.ensemble import SampledEnsemble, pairwise_disagreement  # noqa: E402
from hgdefend.evaluate.gradient_checks import obfuscation_checks  # noqa: E402
from hgdefend.probabilities import predict  # noqa: E402
from hgdefend.recipes import train_model  # noqa: E402
from hgdefend.targets import HeadTarget  # noqa: E402
from hgdefend.targets.head import INIT_NOISE  # noqa: E402
from hgdefend.training import TrainConfig, resolve_device, train_members  # noqa: E402

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"
METHODS = ("single", "head-hypergan", "head-ensemble", "head-ensemble-reinit", "full-hypergan")
DEFAULT_METHODS = ("single", "head-hypergan", "head-ensemble", "full-hypergan")
PROTOCOLS = {"mnist": None, "heldout": "0-4"}  # protocol -> the classes the user's CNN is trained on
SCORES = ("entropy", "mutual_information", "max_prob")
PRIMARY = {"single": "max_prob"}  # every other method: entropy
GOAL = (
    "On the Fashion-MNIST CNN, entropy AUROC against MNIST above the user's single model's "
    "max-softmax baseline and at least a deep ensemble of 5 heads trained for the same time"
)


def primary_score(method: str) -> str:
    return PRIMARY.get(method, "entropy")


# --------------------------------------------------------------------------- the user's side
def user_model(data, args, dev: torch.device, folder: Path) -> tuple[torch.nn.Module, dict]:
    """Train the user's CNN with the user's script, save it, load it back as a user would."""
    build = "cnn_10" if data.num_classes == 10 else "cnn_5" if data.num_classes == 5 else None
    if build is None:
        raise SystemExit(f"--protocols: the user's CNN has 5 or 10 classes, not {data.num_classes}")
    torch.manual_seed(args.seed)
    model = getattr(fmnist_cnn, build)()
    info = fmnist_cnn.train(
        model, data.train.x, data.train.y, epochs=args.cnn_epochs, seed=args.seed, device=dev
    )
    weights = folder / f"{build}.safetensors"
    fmnist_cnn.save(model, weights)
    loaded = load_backbone(f"{fmnist_cnn.__file__}:{build}", weights)
    return loaded, {
        **info,
        "seconds": round(info["seconds"], 1),
        "backbone": f"fmnist_cnn.py:{build}",
        "generate": args.generate,
        "compact": args.compact,
    }


# --------------------------------------------------------------------------- protection
class _Reinit:
    """A :class:`HeadTarget` whose members start from freshly initialised heads (Δ = W_init − W_user)."""

    def __init__(self, target: HeadTarget) -> None:
        self._t = target

    def __getattr__(self, name: str):
        return getattr(self._t, name)

    def init_params(self, k: int, generator: torch.Generator | None = None):
        pre = dict(self._t.head.named_parameters())
        return {
            n: d / INIT_NOISE - pre[self._t._keys[n]].detach().cpu()
            for n, d in self._t.init_params(k, generator).items()
        }


def protect(method: str, backbone, data, args, dev: torch.device, budget: float | None) -> tuple[dict, dict]:
    """(what evaluation and attacks need, training info) for one method."""
    steps = args.quick_steps if args.quick else args.max_steps
    t0 = time.perf_counter()
    if method == "single":
        target = HeadTarget(backbone, fmnist_cnn.HEAD, data.input_shape).to(dev)
        ens = SampledEnsemble(target, target.zero_offsets(), kind="single")
        return {"attacked": ens, "scoring": ens, "eot_iter": 1, "hypergan": None}, {"seconds": 0.0}
    if method in ("head-hypergan", "full-hypergan"):
        head = method == "head-hypergan"
        div, _, w = (args.head_diversity if head else args.full_diversity).partition(":")
        tm = train_model(
            data,
            seed=args.seed,
            device=dev,
            steps=steps,
            nets_per_step=args.nets_per_step,
            batch_size=args.batch_size,
            time_budget=budget,
            progress=False,
            diversity=div,
            diversity_weight=(float(w) if w else 1.0) if div != "none" else 0.0,
            backbone=backbone if head else None,
            generate=args.generate if head else None,
            compact=args.compact if head else None,
        )
        hg = tm.hypergan
        sync(dev)
        info = {
            "seconds": round(time.perf_counter() - t0, 1),
            "train_seconds": tm.training["seconds"],
            "steps": tm.training["steps"],
            "generated_parameters": _count(hg.target),
            "generator_parameters": sum(p.numel() for p in hg.generator_parameters()),
            "diversity": div,
            "recipe": tm.training["recipe"],
        }
        model = {
            "attacked": FreshSamples(hg, args.eot_members, seed=args.seed + 2),
            "scoring": hg.ensemble(args.members, seed=args.seed + 1),
            "eot_iter": args.eot_iter,
            "hypergan": hg,
        }
        return model, info
    target = HeadTarget(backbone, args.generate, data.input_shape, compact=args.compact).to(dev)
    trained = _Reinit(target) if method == "head-ensemble-reinit" else target
    cfg = TrainConfig(
        steps=steps, batch_size=args.batch_size, lr=args.member_lr, time_budget_s=budget, seed=args.seed
    )
    params, res = train_members(trained, data.train, args.deep_members, cfg, device=dev, progress=False)
    sync(dev)
    ens = SampledEnsemble(target, params, kind="deep-ensemble", seed=args.seed)
    info = {
        "seconds": round(time.perf_counter() - t0, 1),
        "train_seconds": round(res.seconds, 1),
        "steps": res.steps,
        "members": ens.k,
        "lr": args.member_lr,
        "init": "re-initialised heads"
        if method == "head-ensemble-reinit"
        else f"the user's head + torch's initialisation × {INIT_NOISE}",
    }
    return {"attacked": ens, "scoring": ens, "eot_iter": 1, "hypergan": None}, info


def _count(target) -> int:
    return int(sum(int(np.prod(s)) for g in target.param_groups for s in g.shapes.values()))


# --------------------------------------------------------------------------- OOD
def evaluate(ens: SampledEnsemble, data, oods: dict, args) -> dict:
    """Accuracy and, per OOD set and score, AUROC and TPR at the calibrated threshold."""
    calib, test = data.calib.take(args.eval_size), data.test.take(args.eval_size)
    sets = {"calib": calib.x, "test": test.x, **{n: s.x for n, s in oods.items()}}
    logits = {n: ens.member_logits(x, batch_size=250) for n, x in sets.items()}
    scores = {
        n: {k: v.cpu().numpy().astype(np.float64) for k, v in compute_scores(lg, SCORES).items()}
        for n, lg in logits.items()
    }
    y = test.y.to(logits["test"].device)
    member_acc = (logits["test"].argmax(-1) == y).float().mean(1)
    out: dict = {
        "members": ens.k,
        "ensemble_accuracy": float((predict(logits["test"]) == y).float().mean()),
        "member_accuracy_mean": float(member_acc.mean()),
        "disagreement_clean": pairwise_disagreement(logits["test"]) if ens.k > 1 else 0.0,
        "sizes": {"calib": len(calib), "test": len(test), **{n: len(s) for n, s in oods.items()}},
        "ood": {},
    }
    for ood in oods:
        per: dict = {"disagreement": pairwise_disagreement(logits[ood]) if ens.k > 1 else 0.0}
        for name in SCORES:
            if ens.k == 1 and name == "mutual_information":
                continue  # identically 0 for one network
            thr = conformal_threshold(scores["calib"][name], args.target_fpr)
            m = detection_metrics(
                scores["test"][name],
                scores[ood][name],
                thr,
                target_fpr=args.target_fpr,
                n_bootstrap=args.bootstrap,
                seed=args.seed,
            )
            per[name] = {k: m.get(k) for k in ("auroc", "auroc_ci", "tpr_at_threshold", "realised_fpr")}
        out["ood"][ood] = per
    return out


# --------------------------------------------------------------------------- attacks
class Judge:
    """Predictions and detector scores of one method (``robust_mnist.Judge`` without the binary
    detector: importing that script needs ART, which a bare GPU machine lacks)."""

    def __init__(self, scoring: SampledEnsemble, score: str) -> None:
        self.scoring, self.score = scoring, score

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        logits = self.scoring.member_logits(x, batch_size=250)
        s = compute_scores(logits, (self.score,))[self.score]
        return predict(logits).cpu().numpy(), s.cpu().numpy().astype(np.float64)


def attack(method: str, model: dict, data, args, dev: torch.device) -> dict:
    """APGD (with EOT against a HyperGAN), λ = 0 and λ = 1; per-input worst case at each eps."""
    score = primary_score(method)
    judge = Judge(model["scoring"], score)
    calib, test = data.calib.take(args.eval_size), data.test.take(args.eval_size)
    _, calib_scores = judge(calib.x.to(dev))
    test_pred, test_scores = judge(test.x.to(dev))
    thr = conformal_threshold(calib_scores, args.target_fpr)
    sub = test.take(args.n_inputs)
    x, y, y_np = sub.x.to(dev), sub.y.to(dev), sub.y.numpy()
    out = {
        "score": score,
        "clean_accuracy": float((test_pred == test.y.numpy()).mean()),
        "realised_fpr": float((test_scores > thr).mean()),
        "threshold": thr,
        "inputs": len(x),
        "eot": model["attacked"].describe() if isinstance(model["attacked"], FreshSamples) else None,
        "eps": {},
    }
    t_all = time.perf_counter()
    for eps in args.eps:
        wrong_any, missed_any, runs = np.zeros(len(x), bool), np.zeros(len(x), bool), []
        for loss in args.attack_losses:
            for lam in args.lambdas:
                kw = {"score": score} if lam > 0 else {}
                atk = APGD(
                    model["attacked"],
                    eps,
                    args.steps,
                    loss=loss,
                    eot_iter=model["eot_iter"],
                    seed=args.seed,
                    lam=lam,
                    **kw,
                )
                t0 = time.perf_counter()
                pred, s = judge(atk(x, y))
                wrong, flagged = pred != y_np, s > thr
                wrong_any |= wrong
                missed_any |= wrong & ~flagged
                m = detection_metrics(
                    test_scores, s, thr, target_fpr=args.target_fpr, n_bootstrap=0, seed=args.seed
                )
                runs.append(
                    {
                        "attack": atk.name,
                        "lam": lam,
                        "robust_accuracy": float(1 - wrong.mean()),
                        "missed_and_wrong": float((wrong & ~flagged).mean()),
                        "auroc": m["auroc"],
                        "tpr_at_threshold": m["tpr_at_threshold"],
                        "seconds": round(time.perf_counter() - t0, 1),
                    }
                )
        best = max(runs, key=lambda r: (r["missed_and_wrong"], -r["robust_accuracy"]))
        out["eps"][f"{eps:g}"] = {
            "robust_accuracy": float(1 - wrong_any.mean()),
            "missed_and_wrong": float(missed_any.mean()),
            "attackers_best": best,
            "runs": runs,
        }
        print(
            f"  {method} eps {eps:g}: robust acc {1 - wrong_any.mean():.3f}, missed {missed_any.mean():.3f}",
            file=sys.stderr,
            flush=True,
        )
    n = min(len(x), args.check_inputs)
    checks = obfuscation_checks(
        lambda e, s: APGD(model["attacked"], e, s, eot_iter=model["eot_iter"], seed=args.seed + 7),
        lambda inp: judge(inp)[0],
        x[:n],
        y[:n],
        eps=[max(args.eps)],
        steps=args.steps,
        large=args.check_eps,
        black_box=None,
        skipped_black_box="not run by this benchmark (see robust_mnist.py)",
    )
    out["checks"] = {
        "inputs": n,
        "large_eps": args.check_eps,
        "accuracy_at_large_eps": checks["eps_sweep"]["accuracy"][-1],
        "eps_sweep_passed": checks["eps_sweep"]["passed"],
        "more_steps": {
            k: checks["more_steps"][k]
            for k in ("eps", "steps", "accuracy", "more_steps", "accuracy_more_steps", "passed")
        },
    }
    out["seconds"] = round(time.perf_counter() - t_all, 1)
    return out


# --------------------------------------------------------------------------- tables
def markdown_table(result: dict) -> str:
    """The RESULTS.md tables of one run's JSON (``--table FILE``)."""

    def auroc(m: dict | None) -> str:
        if not m:
            return "—"
        ci = m.get("auroc_ci")
        return f"{m['auroc']:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")

    lines = [
        "| protocol | OOD | method | budget | steps | acc | entropy AUROC | MI AUROC | max-softmax AUROC "
        "| TPR at 5 % FPR (primary score) |",
        "|" + " --- |" * 10,
    ]
    for r in result["rows"]:
        t = r["training"]
        for ood, m in r["ood"].items():
            prim = m.get(r["score"], {})
            cells = [
                r["protocol"],
                ood,
                r["method"],
                "—" if r["method"] == "single" or r["budget_s"] is None else f"{r['budget_s']:g} s",
                str(t.get("steps", "—")),
                f"{100 * r['ensemble_accuracy']:.2f} %",
                auroc(m.get("entropy")),
                auroc(m.get("mutual_information")),
                auroc(m.get("max_prob")),
                f"{100 * prim.get('tpr_at_threshold', float('nan')):.1f} % ({r['score']})",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    attacked = [r for r in result["rows"] if r.get("attack")]
    if attacked:
        a = result["args"]
        lines += [
            "",
            f"APGD ({', '.join(a['attack_losses'])}; λ ∈ {{{', '.join(f'{v:g}' for v in a['lambdas'])}}}, "
            f"{a['steps']} steps; EOT for HyperGANs), {attacked[0]['attack']['inputs']} test inputs, "
            "threshold at 5 % clean FPR:",
            "",
            "| protocol | method | clean acc | eps | robust acc | missed and wrong | AUROC (attacker's best) "
            f"| APGD-CE acc at eps {a['check_eps']:g} |",
            "|" + " --- |" * 8,
        ]
        for r in attacked:
            at = r["attack"]
            for eps, e in at["eps"].items():
                b = e["attackers_best"]
                lines.append(
                    "| "
                    + " | ".join(
                        [
                            r["protocol"],
                            r["method"],
                            f"{100 * at['clean_accuracy']:.2f} %",
                            eps,
                            f"{100 * e['robust_accuracy']:.1f} %",
                            f"{100 * e['missed_and_wrong']:.1f} %",
                            f"{b['auroc']:.3f} ({b['attack']}, λ={b['lam']:g})",
                            f"{100 * at['checks']['accuracy_at_large_eps']:.1f} %",
                        ]
                    )
                    + " |"
                )
    g = result.get("goal")
    if g:
        lines += [
            "",
            f"Goal ({g['statement']}): head HyperGAN entropy AUROC {g['head_hypergan']:.4f}, "
            f"single max-softmax {g['single']:.4f}, {g['ensemble_method']} entropy "
            f"{g['head_ensemble']:.4f}: {'met' if g['met'] else 'not met'}.",
        ]
    return "\n".join(lines)


def goal(rows: list[dict]) -> dict | None:
    """The issue's goal on the ``mnist`` protocol, when the three methods it names ran."""
    by = {r["method"]: r for r in rows if r["protocol"] == "mnist"}
    ens_method = "head-ensemble" if "head-ensemble" in by else "head-ensemble-reinit"
    if not all(m in by for m in ("single", "head-hypergan", ens_method)):
        return None
    head = by["head-hypergan"]["ood"]["mnist"]["entropy"]["auroc"]
    single = by["single"]["ood"]["mnist"]["max_prob"]["auroc"]
    ens = by[ens_method]["ood"]["mnist"]["entropy"]["auroc"]
    out = {
        "statement": GOAL,
        "head_hypergan": head,
        "single": single,
        "head_ensemble": ens,
        "ensemble_method": ens_method,
        "above_single": head > single,
        "at_least_ensemble": head >= ens,
    }
    out["met"] = out["above_single"] and out["at_least_ensemble"]
    return out


# --------------------------------------------------------------------------- main
def main() -> None:
    if print_table(markdown_table):
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=str(DEFAULT_ROOT))
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"some of {', '.join(METHODS)}")
    p.add_argument("--protocols", default="mnist,heldout", help="mnist and/or heldout")
    p.add_argument("--attack-protocols", default="mnist", help="protocols with an attack table ('' for none)")
    p.add_argument("--budget", type=float, default=60.0, help="training seconds per protection method")
    p.add_argument("--heldout-budget", type=float, default=None, help="held-out protocol [default: budget/2]")
    p.add_argument("--max-steps", type=int, default=100_000, help="step cap (the budget binds first)")
    p.add_argument("--train-size", type=int, default=None, help="use the first N training images")
    p.add_argument("--cnn-epochs", type=int, default=3, help="the user's CNN training (not protection)")
    p.add_argument("--nets-per-step", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--member-lr", type=float, default=1e-3, help="deep ensemble of heads")
    p.add_argument(
        "--generate",
        default=",".join(fmnist_cnn.HEAD),
        help="the CNN's generated submodules (head methods); e.g. 3,8,10: the last conv too",
    )
    p.add_argument(
        "--compact",
        default="full",
        help="HeadTarget's compact=: MODE, or NAME=MODE,... (e.g. 3=scales, 3=lowrank:4)",
    )
    p.add_argument("--head-diversity", default="offdata:1", help="OBJECTIVE[:WEIGHT] or none")
    p.add_argument("--full-diversity", default="none", help="the default recipe has none")
    p.add_argument("--members", type=int, default=100, help="sampled networks that score (HyperGANs)")
    p.add_argument("--deep-members", type=int, default=5)
    p.add_argument("--eval-size", type=int, default=5000, help="inputs per split (calib/test/OOD)")
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--eps", type=lambda s: [float(v) for v in s.split(",")], default=[0.03, 0.1])
    p.add_argument("--lambdas", type=lambda s: [float(v) for v in s.split(",")], default=[0.0, 1.0])
    p.add_argument("--attack-losses", type=lambda s: s.split(","), default=["ce"], help="ce and/or dlr")
    p.add_argument("--steps", type=int, default=50, help="APGD steps")
    p.add_argument("--eot-members", type=int, default=10, help="fresh HyperGAN networks per gradient")
    p.add_argument("--eot-iter", type=int, default=1)
    p.add_argument("--n-inputs", type=int, default=500, help="test inputs attacked")
    p.add_argument("--check-eps", type=float, default=0.3)
    p.add_argument("--check-inputs", type=int, default=100)
    p.add_argument("--target-fpr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="a few hundred images, a few steps")
    p.add_argument("--quick-steps", type=int, default=4)
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    protocols = [s.strip() for s in args.protocols.split(",") if s.strip()]
    attack_protocols = {s.strip() for s in args.attack_protocols.split(",") if s.strip()}
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"--methods: unknown method {m!r}; expected some of {', '.join(METHODS)}")
    for s in protocols + sorted(attack_protocols):
        if s not in PROTOCOLS:
            raise SystemExit(f"--protocols: unknown protocol {s!r}; expected mnist and/or heldout")
    for loss in args.attack_losses:
        if loss not in ("ce", "dlr"):
            raise SystemExit(f"--attack-losses: expected ce and/or dlr, got {loss!r}")
    args.generate = [n.strip() for n in args.generate.split(",") if n.strip()]
    if "=" in args.compact:
        args.compact = {
            n.strip(): m.strip() for n, _, m in (i.partition("=") for i in args.compact.split(","))
        }
    if args.heldout_budget is None:
        args.heldout_budget = args.budget / 2
    if args.quick:
        args.train_size, args.cnn_epochs, args.eval_size, args.bootstrap = 300, 1, 150, 0
        args.members, args.eot_members, args.steps, args.n_inputs, args.check_inputs = 5, 2, 3, 12, 8
        args.eps = [0.1]
    torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    rows, t_all = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for protocol in protocols:
            data = load_data("fashion-mnist", root=args.data_root, in_classes=PROTOCOLS[protocol])
            if args.train_size:
                data = replace(data, train=data.train.take(args.train_size))
            oods = {"mnist": load_ood("mnist", data, root=args.data_root).take(args.eval_size)}
            if data.ood is not None:
                oods["fmnist-heldout"] = data.ood.take(args.eval_size)
            budget = args.budget if protocol == "mnist" else args.heldout_budget
            backbone, cnn_info = user_model(data, args, dev, Path(tmp))
            print(f"[{protocol}] user's CNN: {cnn_info}", file=sys.stderr, flush=True)
            for method in methods:
                model, info = protect(method, backbone, data, args, dev, budget)
                row = {
                    "protocol": protocol,
                    "classes": data.classes,
                    "method": method,
                    "score": primary_score(method),
                    "budget_s": budget,
                    "training": info,
                    "user_cnn": cnn_info,
                    **evaluate(model["scoring"], data, oods, args),
                }
                if protocol in attack_protocols:
                    row["attack"] = attack(method, model, data, args, dev)
                rows.append(row)
                m = row["ood"]["mnist"][row["score"]]
                print(
                    f"[{protocol}] {method}: acc {row['ensemble_accuracy']:.4f}, MNIST {row['score']} AUROC "
                    f"{m['auroc']:.4f} (trained {info.get('steps', 0)} steps, {info['seconds']} s)",
                    file=sys.stderr,
                    flush=True,
                )
    budgets = {p: args.budget if p == "mnist" else args.heldout_budget for p in protocols}
    out = {
        **run_record("protect_fmnist", args, dev, t_all),
        "budgets_s": budgets,
        "goal": goal(rows),
        "rows": rows,
    }
    emit(out, args.out)


if __name__ == "__main__":
    main()

"""The paper's Table 2 (MNIST columns): test accuracy of 1 / 5 / 10 / 100 sampled networks.

For each training set (``full``: the 60,000 MNIST training images; an integer N: the first N of
them, the paper's "MNIST 5000"), each method and each seed, trains by step count (``--steps``, the
same for every method, so runs sharing a GPU with other jobs are not distorted; seconds are recorded
beside) and scores on the official 10,000-image MNIST test set (hgdefend's calibration and test
halves together: nothing here is tuned on either):

- ``hypergan``: the library's default MNIST recipe (:func:`hgdefend.recipes.train_model`, the paper's
  MNIST net ``mnist_paper``, GAN regulariser with mixer), 100 networks sampled once;
- ``deep-ensemble``: 10 independently initialised ``mnist_paper`` networks
  (:func:`hgdefend.training.deep_ensemble`, the recipe's batch size, the same steps); its "N networks"
  are its first N members (N ≤ 10: no 100-network ensemble);
- ``mc-dropout``: one ``mnist_paper`` network with dropout (the library's default p = 0.25) before its
  linear layer (:func:`hgdefend.training.mc_dropout`); its "N networks" are N dropout masks.

Per run: single-network accuracy (mean, std, min, max over the sampled networks / members / masks),
and the accuracy of the ensemble of the first 1, 5, 10 and 100 (mean of the members' probabilities),
with the mean and std over disjoint groups of N as a check. Over seeds: mean ± std (sample std, ddof
1). Prints one JSON object (and writes it with --out, rewritten after every finished run).

    python benchmarks/paper_table2.py --device cuda --out benchmarks/results/paper_table2.json
        # ~15 min on an H200: HyperGAN ~100 s a model (10,000 steps), deep ensemble / MC dropout ~30 s
    python benchmarks/paper_table2.py --datasets 5000 --seeds 1 --out b.json   # a part, e.g. in parallel
    python benchmarks/paper_table2.py --quick          # digits, a few steps: what the tests run
    python benchmarks/paper_table2.py --table a.json [b.json ...]   # the RESULTS.md table (runs merged)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, run_record, sync  # noqa: E402

from hgdefend import load_data  # noqa: E402
from hgdefend.data import Split  # noqa: E402
from hgdefend.ensemble import SampledEnsemble  # noqa: E402
from hgdefend.fileio import atomic_write  # noqa: E402
from hgdefend.probabilities import predict  # noqa: E402
from hgdefend.recipes import default_recipe, default_spec, train_model  # noqa: E402
from hgdefend.training import TrainConfig, deep_ensemble, mc_dropout, resolve_device  # noqa: E402

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"
METHODS = ("hypergan", "deep-ensemble", "mc-dropout")
SIZES = (1, 5, 10, 100)
DEEP_MEMBERS = 10
MC_DROPOUT_P = 0.25  # hgdefend.training.mc_dropout's default

# Table 2 of the paper (reference: HyperGAN, Ratzlaff & Fuxin), MNIST columns, in percent. The
# baselines' numbers are those of the cited methods with their own networks; the paper does not say
# how many members or masks they use ("For all other methods, we report the mean of 100 trials").
PAPER = {
    "full": {
        "hypergan": {1: 98.64, 5: 98.75, 10: 99.22, 100: 99.31},
        "deep-ensemble": 99.30,
        "mc-dropout": 98.73,
    },
    "5000": {
        "hypergan": {1: 96.69, 5: 97.24, 10: 97.33, 100: 97.71},
        "deep-ensemble": None,
        "mc-dropout": 95.58,
    },
}
PAPER_SOURCE = (
    "Table 2 of the paper, columns 'MNIST' and 'MNIST 5000' (rows '1 / 5 / 10 / 100 networks' for "
    "HyperGAN; 'Deep Ensembles' and 'MC Dropout' are the cited methods' numbers, with no ensemble size "
    "or network given; the paper has no Deep Ensembles number for MNIST 5000)"
)


def parse_list(text: str, what: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise SystemExit(f"--{what}: empty")
    return items


def subset_name(text: str) -> str:
    """``full`` or a positive integer (the first N training examples)."""
    if text == "full":
        return text
    try:
        n = int(text)
    except ValueError:
        raise SystemExit(f"--datasets: expected 'full' or a number of examples, got {text!r}") from None
    if n < 1:
        raise SystemExit(f"--datasets: expected a positive number of examples, got {n}")
    return str(n)


def training_set(data, name: str):
    """The data with its training split cut to the first N examples (``full``: unchanged)."""
    if name == "full":
        return data
    n = int(name)
    if n > len(data.train):
        raise SystemExit(f"--datasets: {n} examples asked, the training set has {len(data.train)}")
    return replace(data, train=data.train.take(n))


def eval_split(data, size: int | None) -> Split:
    """The whole held-out set (the official MNIST test set: calibration + test halves), or its first
    ``size`` inputs."""
    both = Split(torch.cat([data.calib.x, data.test.x]), torch.cat([data.calib.y, data.test.y]))
    return both.take(size)


def train(method: str, data, seed: int, args, dev: torch.device) -> tuple[SampledEnsemble, dict]:
    """One method trained for ``args.steps`` steps: (its ensemble of ``args.members`` / 10, training info)."""
    sync(dev)
    t0 = time.perf_counter()
    if method == "hypergan":
        tm = train_model(data, seed=seed, device=dev, steps=args.steps, progress=False,
                         cuda_graph=getattr(args, "cuda_graph", False))  # fmt: skip
        sync(dev)
        info = {"steps": tm.training["steps"], "recipe": tm.training["recipe"]}
        ens = tm.hypergan.ensemble(args.members, seed=seed)
    else:
        recipe = default_recipe(data)[1]
        cfg = TrainConfig(steps=args.steps, batch_size=recipe.batch_size, seed=seed)
        spec = default_spec(data)
        if method == "deep-ensemble":
            ens = deep_ensemble(spec, data.train, DEEP_MEMBERS, cfg, device=dev, progress=False)
        else:
            ens = mc_dropout(spec, data.train, args.members, cfg, p=MC_DROPOUT_P, device=dev, progress=False)
        sync(dev)
        info = {
            "steps": cfg.steps,
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "lr_schedule": cfg.lr_schedule,
        }
        if method == "mc-dropout":
            info["dropout_p"] = MC_DROPOUT_P
    info["seconds"] = round(time.perf_counter() - t0, 1)
    return ens, info


def _acc(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((predict(logits) == y).double().mean())


def evaluate(ens: SampledEnsemble, test: Split, seed: int, dev: torch.device) -> dict:
    """Single-network accuracies and those of the ensembles of the first N (and of disjoint groups of N)."""
    sync(dev)
    t0 = time.perf_counter()
    torch.manual_seed(seed)  # MC dropout's masks
    logits = ens.member_logits(test.x, batch_size=1000)  # [K, B, C]
    y = test.y.to(logits.device)
    member = (logits.argmax(-1) == y).double().mean(1)
    out: dict = {
        "members": ens.k,
        "single": {
            "mean": float(member.mean()),
            "std": float(member.std()) if ens.k > 1 else 0.0,
            "min": float(member.min()),
            "max": float(member.max()),
        },
        "ensembles": {},
        "disjoint_groups": {},
    }
    for n in SIZES:
        if n > ens.k:
            out["ensembles"][str(n)] = None
            continue
        out["ensembles"][str(n)] = _acc(logits[:n], y)
        groups = [_acc(logits[i : i + n], y) for i in range(0, ens.k - n + 1, n)]
        out["disjoint_groups"][str(n)] = {
            "groups": len(groups),
            "mean": statistics.fmean(groups),
            "std": statistics.stdev(groups) if len(groups) > 1 else None,
        }
    if ens.mc_dropout:  # the same network with dropout off, for reference
        plain = SampledEnsemble(ens.target, ens.member(0).params, kind="mc-dropout-off")
        out["dropout_off_accuracy"] = _acc(plain.member_logits(test.x, batch_size=1000), y)
    sync(dev)
    out["eval_seconds"] = round(time.perf_counter() - t0, 1)
    return out


# --------------------------------------------------------------------------- over seeds, and the table
def _mean_std(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "n": len(values),
    }


def summarise(runs: list[dict]) -> list[dict]:
    """Mean ± std over seeds for each (training set, method, steps): single-network mean, its std over
    networks, and each ensemble size."""
    keys: list[tuple] = []
    for r in runs:
        k = (r["dataset"], r["method"], r["training"]["steps"])
        if k not in keys:
            keys.append(k)
    out = []
    for dataset, method, steps in keys:
        rs = [
            r for r in runs if (r["dataset"], r["method"], r["training"]["steps"]) == (dataset, method, steps)
        ]
        row = {
            "dataset": dataset,
            "method": method,
            "steps": steps,
            "train_size": rs[0]["train_size"],
            "seeds": [r["seed"] for r in rs],
            "single_mean": _mean_std([r["single"]["mean"] for r in rs]),
            "single_std_over_networks": _mean_std([r["single"]["std"] for r in rs]),
            "ensembles": {},
            "seconds_per_seed": statistics.fmean(r["training"]["seconds"] for r in rs),
        }
        for n in SIZES:
            vals = [r["ensembles"][str(n)] for r in rs]
            row["ensembles"][str(n)] = None if any(v is None for v in vals) else _mean_std(vals)
        out.append(row)
    return out


def merge(results: list[dict]) -> dict:
    """Several JSON results (e.g. seeds or training sets run in parallel) as one; a run (training set,
    method, seed, steps) twice is refused."""
    runs, seen = [], set()
    for res in results:
        for r in res["runs"]:
            key = (r["dataset"], r["method"], r["seed"], r["training"]["steps"])
            if key in seen:
                raise SystemExit(f"--table: the run {key} is in more than one file")
            seen.add(key)
            runs.append(r)
    names = sorted({res["dataset_name"] for res in results})
    if len(names) > 1:
        raise SystemExit(f"--table: the files are of different datasets {names}")
    devices = sorted({res["device_name"] for res in results})
    sizes = sorted({res["eval_size"] for res in results})
    return {"runs": runs, "summary": summarise(runs), "dataset_name": names[0],
            "device_name": ", ".join(devices), "eval_size": sizes}  # fmt: skip


def _pct(s: dict | None, std: bool = True) -> str:
    if s is None:
        return "n/a"
    if not std or s["std"] is None:
        return f"{100 * s['mean']:.2f} %"
    return f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f} %"


def _paper_cell(dataset_name: str, dataset: str, method: str) -> str:
    if dataset_name != "mnist":
        return f"none (the paper has no {dataset_name} experiment)"
    paper = PAPER.get(dataset)
    if paper is None:
        return "no paper number (the paper has full MNIST and MNIST 5000)"
    v = paper[method]
    if v is None:
        return "not in the paper"
    if isinstance(v, dict):
        return " / ".join(f"{v[n]:.2f}" for n in SIZES) + " % (1 / 5 / 10 / 100)"
    return f"{v:.2f} % (cited method)"


def markdown_table(result: dict) -> str:
    """The RESULTS.md table (``--table FILE ...``): ours over seeds, the paper's numbers beside."""
    head = ["training set", "method", "steps", "seeds", "1 network (mean over networks)",
            "σ over networks", "5 networks", "10 networks", "100 networks", "train s / seed",
            "paper (Table 2)"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in result["summary"]:
        data = "MNIST" if result["dataset_name"] == "mnist" else result["dataset_name"]
        name = data if r["dataset"] == "full" else f"{data} {r['dataset']}"
        cells = [
            f"{name} ({r['train_size']:,})",
            r["method"],
            f"{r['steps']:,}",
            ", ".join(str(s) for s in r["seeds"]),
            _pct(r["single_mean"]),
            _pct(r["single_std_over_networks"], std=False),
            *(_pct(r["ensembles"][str(n)]) for n in (5, 10, 100)),
            f"{r['seconds_per_seed']:.0f}",
            _paper_cell(result["dataset_name"], r["dataset"], r["method"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        "",
        f"Ours: mean ± std (ddof 1) over seeds, on {', '.join(map(str, result['eval_size']))} test images; "
        f"device: {result['device_name']}. '1 network' is the mean single-network accuracy over the "
        "sampled networks (deep ensemble: its 10 members; MC dropout: its masks), 'σ over networks' its "
        "spread within a seed (averaged over seeds); 'N networks' is the ensemble of the first N (mean "
        "of probabilities). Deep ensemble: 10 members, so no 100-network ensemble.",
        f"Paper: {PAPER_SOURCE}.",
    ]
    return "\n".join(lines + notes)


def table_main(files: list[str]) -> None:
    if not files:
        raise SystemExit("--table: give one or more result JSON files")
    print(markdown_table(merge([json.loads(Path(f).read_text()) for f in files])))


def main() -> None:
    if sys.argv[1:2] == ["--table"]:
        table_main(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="full,5000", help="'full' and/or numbers of training examples")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--methods", default=",".join(METHODS), help=f"some of {', '.join(METHODS)}")
    p.add_argument(
        "--steps",
        type=int,
        default=10_000,
        help="training steps of every model (HyperGAN: ~10 ms a step on an H200, ~0.5 s on a CPU)",
    )
    p.add_argument(
        "--members", type=int, default=100, help="networks sampled (HyperGAN) / masks (MC dropout)"
    )
    p.add_argument("--eval-size", type=int, default=None, help="test images (default: all 10,000)")
    p.add_argument("--data-root", default=str(DEFAULT_ROOT))
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when present)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cuda-graph", action="store_true", help="HyperGAN steps as a CUDA graph (GPU only)")
    p.add_argument("--quick", action="store_true", help="digits, a few steps (what the tests run)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args()
    if args.quick:
        args.datasets, args.seeds, args.steps = "full,300", "0,1", 60
    datasets = [subset_name(s) for s in parse_list(args.datasets, "datasets")]
    methods = parse_list(args.methods, "methods")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; expected some of {list(METHODS)}")
    try:
        seeds = [int(s) for s in parse_list(args.seeds, "seeds")]
    except ValueError:
        raise SystemExit(f"--seeds: expected integers, got {args.seeds!r}") from None
    if args.steps < 1 or args.members < max(SIZES):
        raise SystemExit(f"--steps must be >= 1 and --members >= {max(SIZES)}")
    torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    full = load_data("digits") if args.quick else load_data("mnist", root=args.data_root)
    test = eval_split(full, args.eval_size)
    t_all = time.perf_counter()
    runs: list[dict] = []
    base = {"dataset_name": full.name, "eval_size": len(test), "paper": PAPER, "paper_source": PAPER_SOURCE}

    def result(complete: bool) -> dict:
        rec = run_record("paper_table2", args, dev, t_all)
        return {**rec, **base, "complete": complete, "runs": runs, "summary": summarise(runs)}

    for name in datasets:
        data = training_set(full, name)
        for seed in seeds:
            for method in methods:
                ens, info = train(method, data, seed, args, dev)
                res = evaluate(ens, test, seed, dev)
                runs.append({"dataset": name, "train_size": len(data.train), "method": method, "seed": seed,
                             "training": info, **res})  # fmt: skip
                ens_txt = ", ".join(f"{n}: {v:.4f}" for n, v in res["ensembles"].items() if v is not None)
                print(f"[{name} seed {seed}] {method}: single {res['single']['mean']:.4f} ± "
                      f"{res['single']['std']:.4f}; ensembles {ens_txt}; {info['seconds']} s",
                      file=sys.stderr, flush=True)  # fmt: skip
                if args.out:  # a partial result after every run: long jobs keep what they finished
                    atomic_write(args.out, json.dumps(result(False), indent=1) + "\n")
    emit(result(True), args.out)


if __name__ == "__main__":
    main()

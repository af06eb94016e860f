"""``hgdefend evaluate`` as a library call: get a model, run the report's sections, write it.

The CLI only parses options into :class:`EvaluateOptions`; everything else happens here so that
notebooks and CI gates get the same report.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .attacks.suite import attack_config, attacks_section
from .data import DataSplits, load_data
from .detectors.section import apply_gate, detection_section, parse_fail_under
from .ensemble import SampledEnsemble, diversity, pairwise_disagreement
from .hypergan import HyperGAN
from .io import LoadedModel, load_model, save_model
from .report import environment, write_report
from .targets import TargetSpec, cifar10_paper, digits_small, mnist_paper, regression_1d
from .training import TrainConfig, Trainer, resolve_device
from .validation import HgdefendError, check_fraction, check_k


def default_spec(data: DataSplits) -> TargetSpec:
    """The built-in target for a dataset's input shape."""
    shape, c = tuple(data.input_shape), data.num_classes
    if data.task == "regression":
        return regression_1d()
    if shape == (1, 8, 8):
        return digits_small(c)
    if shape == (1, 28, 28):
        return mnist_paper(c)
    if shape == (3, 32, 32):
        return cifar10_paper(c)
    raise HgdefendError(
        f"dataset: no built-in target for input shape {list(shape)}; train a model on your own "
        "nn.Module with the Python API (ModuleTarget) and pass it with --model"
    )


def default_recipe(data: DataSplits) -> tuple[dict[str, Any], TrainConfig]:
    """HyperGAN size and training length that fit the dataset (small for digits: CPU seconds)."""
    if tuple(data.input_shape) == (1, 8, 8):
        return ({"noise_dim": 64, "code_dim": 32, "hidden": 128},
                TrainConfig(steps=400, nets_per_step=16, batch_size=64))  # fmt: skip
    if data.task == "regression":
        return ({"noise_dim": 64, "code_dim": 64, "hidden": 256},
                TrainConfig(steps=2000, nets_per_step=32, batch_size=20))  # fmt: skip
    return ({"noise_dim": 256, "code_dim": 128, "hidden": 512},
            TrainConfig(steps=2000, nets_per_step=32, batch_size=100))  # fmt: skip


@dataclass
class EvaluateOptions:
    dataset: str = "digits"
    data_root: str | None = None
    download: bool = False
    in_classes: str | None = "auto"
    ood: str | None = None
    model: str | None = None
    out: str = "hgdefend-report"
    seed: int = 0
    device: str | None = None
    members: int = 100
    train_steps: int | None = None
    regulariser: str = "gan"
    beta: float = 1.0
    target_fpr: float = 0.05
    fail_under: str | None = None
    attacks: str | None = None
    eps: str | None = None
    protocols: str | None = None
    baselines: str | None = None
    quiet: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalContext:
    """What every report section can read."""

    options: EvaluateOptions
    data: DataSplits
    hypergan: HyperGAN
    ensemble: SampledEnsemble
    device: torch.device
    model_sha256: str
    model_path: str


def accuracy_section(ensemble: SampledEnsemble, data: DataSplits,
                     sizes: tuple[int, ...] = (5, 10, 100)) -> dict[str, Any]:  # fmt: skip
    """Single sampled networks (mean/min/max) and ensembles of several sizes, one batched pass."""
    x, y = data.test.x.to(ensemble.device), data.test.y.to(ensemble.device)
    with torch.no_grad():
        logits = ensemble.forward_logits(x)
    if data.task == "regression":
        pred = logits.squeeze(-1)
        return {"test_size": len(y),
                "single_network_mse": float(((pred - y) ** 2).mean()),
                "ensemble_mse": float(((pred.mean(0) - y) ** 2).mean())}  # fmt: skip
    member_acc = (logits.argmax(-1) == y).float().mean(1)
    probs = torch.softmax(logits, -1)
    ens = {}
    for k in sizes:
        if k <= ensemble.k:
            ens[str(k)] = float((probs[:k].mean(0).argmax(-1) == y).float().mean())
    return {
        "test_size": len(y),
        "single_networks": {"count": ensemble.k, "mean": float(member_acc.mean()),
                            "min": float(member_acc.min()), "max": float(member_acc.max())},
        "ensembles": ens,
        "pairwise_disagreement": pairwise_disagreement(logits),
    }  # fmt: skip


def diversity_section(ensemble: SampledEnsemble) -> dict[str, Any]:
    return {"members": ensemble.k, "layers": diversity(ensemble)}


def obtain_model(opts: EvaluateOptions, data: DataSplits, device: torch.device, out_dir: Path,
                 loaded: LoadedModel | None = None) -> tuple[LoadedModel, dict[str, Any]]:  # fmt: skip
    """Load ``--model``, or train the default HyperGAN for the dataset and save it beside the report."""
    if opts.model:
        loaded = loaded or load_model(opts.model, device=device)
        want = list(data.input_shape)
        got = loaded.config["target"]["input_shape"]
        if got != want:
            raise HgdefendError(f"model: trained on input shape {got}, dataset gives {want}")
        if loaded.hypergan.target.num_outputs != data.num_classes and data.task != "regression":
            raise HgdefendError(
                f"model: has {loaded.hypergan.target.num_outputs} classes, dataset (with "
                f"in_classes) has {data.num_classes}"
            )
        return loaded, {"source": "file", "path": opts.model}
    hp, cfg = default_recipe(data)
    if opts.train_steps is not None:
        cfg.steps = opts.train_steps
    cfg.seed = opts.seed
    torch.manual_seed(opts.seed)
    hg = HyperGAN(default_spec(data), regulariser=opts.regulariser, beta=opts.beta, **hp)
    res = Trainer(hg, data.train, cfg, val=data.calib, device=device,
                  progress=not opts.quiet).fit()  # fmt: skip
    path = out_dir / "model.safetensors"
    training = {"steps": res.steps, "seconds": round(res.seconds, 2), "seed": opts.seed,
                "config": {k: list(v) if isinstance(v, tuple) else v
                           for k, v in asdict(cfg).items()}}  # fmt: skip
    save_model(path, hg, dataset=data.describe(), training=training)
    return load_model(path, device=device), {"source": "trained", "path": str(path),
                                              **{k: v for k, v in training.items()
                                                 if k != "config"}}  # fmt: skip


def resolve_in_classes(opts: EvaluateOptions, model_config: dict | None = None) -> str | list | None:
    """'auto': a given model's own classes; else, on digits with no --ood dataset, classes 0-4
    in-distribution so that 5-9 are the OOD set."""
    if opts.in_classes == "auto":
        if model_config is not None:
            classes = model_config.get("dataset", {}).get("classes")
            n_all = model_config.get("dataset", {}).get("num_classes_all")
            return classes if classes and n_all and len(classes) < n_all else None
        return "0-4" if opts.dataset == "digits" and not opts.ood else None
    if opts.in_classes in (None, "", "all"):
        return None
    return opts.in_classes


def run_evaluate(opts: EvaluateOptions, command: str | None = None) -> tuple[dict, dict[str, Path]]:
    """Run the evaluation and write the report; return (report, written paths)."""
    t0 = time.perf_counter()
    members = check_k(opts.members, "members")
    gate_limits = parse_fail_under(opts.fail_under)  # bad syntax fails before any training
    check_fraction(opts.target_fpr, "target_fpr")
    attack_config(opts)  # bad attack names / eps fail before any training
    device = resolve_device(opts.device)
    out_dir = Path(opts.out)
    pre = load_model(opts.model, device=device) if opts.model else None
    data = load_data(opts.dataset, root=opts.data_root, download=opts.download,
                     in_classes=resolve_in_classes(opts, pre.config if pre else None))  # fmt: skip
    loaded, training = obtain_model(opts, data, device, out_dir, pre)
    ens = loaded.hypergan.ensemble(members, seed=opts.seed)
    ctx = EvalContext(opts, data, loaded.hypergan, ens, device, loaded.sha256, loaded.path)
    report: dict[str, Any] = {
        "title": f"{data.name}"
        + (f" (classes {data.classes} in-distribution, the rest held out as OOD)" if data.ood else "")
        + f", {members}-network HyperGAN ensemble",
        "findings": [],
        "meta": environment(
            seed=opts.seed, device=device, model_sha256=loaded.sha256, command=command
        ),  # fmt: skip
        "model": {
            "path": loaded.path,
            "sha256": loaded.sha256,
            "target": loaded.config["target"]["name"],
            "regulariser": loaded.config["hypergan"]["regulariser"],
            "beta": loaded.config["hypergan"]["beta"],
            "ensemble_members": members,
            "ensemble_seed": opts.seed,
        },  # fmt: skip
        "data": data.describe(),
        "training": training,
    }
    for name, section in SECTIONS:
        result = section(ctx)
        if result is not None:
            report[name] = result
            report["findings"] += result.get("findings", []) if isinstance(result, dict) else []
    if gate_limits:
        report["gate"] = apply_gate(report, gate_limits)
    report["meta"]["seconds"] = round(time.perf_counter() - t0, 2)
    return report, write_report(out_dir, report)


SECTIONS: list[tuple[str, Any]] = [
    ("accuracy", lambda ctx: accuracy_section(ctx.ensemble, ctx.data)),
    ("diversity", lambda ctx: diversity_section(ctx.ensemble)),
    ("detection", detection_section),
    ("attacks", attacks_section),
]
"""Report sections in order: (key, fn(EvalContext) -> dict | None). Detection and attacks append."""

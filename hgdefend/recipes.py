"""The default HyperGAN for a dataset, and training it: one recipe for ``hgdefend train`` and ``evaluate``.

``train_model`` seeds torch, builds the HyperGAN and trains it in the same order every time, so the
same seed gives the same weights whichever command trains.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import DataSplits
from .distributed import Distributed
from .errors import HgdefendError
from .hypergan import HyperGAN
from .targets import HeadTarget, Target, TargetSpec, cifar10_paper, digits_small, mnist_paper, regression_1d
from .training import TrainConfig, Trainer, TrainResult


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


def default_target(
    data: DataSplits,
    backbone: nn.Module | None = None,
    generate: Sequence[str] | None = None,
    compact: str | Mapping[str, str] | None = None,
) -> Target:
    """:func:`default_spec`, or with ``backbone`` a :class:`HeadTarget` generating ``generate`` of it
    (its outputs must be the dataset's classes), parametrised as ``compact`` (None: ``"full"``)."""
    if backbone is None:
        if generate is not None:
            raise HgdefendError("generate: names the head of a backbone; give the backbone too")
        if compact is not None:
            raise HgdefendError("compact: parametrises the generated part of a backbone; give one too")
        return default_spec(data)
    if generate is None:
        raise HgdefendError("generate: name the backbone's submodules to generate, e.g. ['fc']")
    target = HeadTarget(backbone, generate, data.input_shape, task=data.task, compact=compact or "full")
    if data.task == "classification" and target.num_outputs != data.num_classes:
        raise HgdefendError(
            f"backbone: gives {target.num_outputs} outputs, the dataset (with its classes) has "
            f"{data.num_classes} classes"
        )
    return target


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
class TrainedModel:
    """A HyperGAN trained by :func:`train_model`, its training result and what to record about it."""

    hypergan: HyperGAN
    result: TrainResult
    training: dict[str, Any]
    """JSON-able, for the model file and the report: ``steps`` (done), ``seconds`` (this call),
    ``seed``, ``recipe`` (the HyperGAN's hyper-parameters and every :class:`TrainConfig` field) and
    ``final`` (the last evaluation on the calibration split: ``ensemble_acc``, ``member_acc_mean``, ...)."""

    @property
    def file_record(self) -> dict[str, Any]:
        """:attr:`training` without wall-clock times, for the model file: identical seeds give
        byte-identical files (the seconds go to the training log and the report)."""
        out = {k: v for k, v in self.training.items() if k != "seconds"}
        out["final"] = {k: v for k, v in self.training.get("final", {}).items() if k != "seconds"}
        return out


def train_model(
    data: DataSplits,
    *,
    seed: int = 0,
    device: str | torch.device | None = None,
    steps: int | None = None,
    nets_per_step: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    regulariser: str = "gan",
    beta: float = 1.0,
    diversity: str = "none",
    diversity_weight: float = 0.0,
    adversarial: str = "none",
    adv_eps: float | None = None,
    adv_steps: int | None = None,
    adv_alpha: float | None = None,
    trades_beta: float | None = None,
    adv_eps_warmup: int | None = None,
    noise_dim: int | None = None,
    code_dim: int | None = None,
    hidden: int | None = None,
    mixer: bool = True,
    eval_every: int = 0,
    checkpoint_every: int = 0,
    checkpoint_min_interval: float = 0.0,
    time_budget: float | None = None,
    cuda_graph: bool = False,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    backbone: nn.Module | None = None,
    generate: Sequence[str] | None = None,
    dist: Distributed | None = None,
    compact: str | Mapping[str, str] | None = None,
) -> TrainedModel:
    """Build the default HyperGAN for ``data`` (:func:`default_spec`, :func:`default_recipe`) and train it.

    With ``backbone`` (a pretrained ``nn.Module``), the target is
    ``HeadTarget(backbone, generate, data.input_shape)`` instead: only the submodules named in
    ``generate`` are generated (:class:`~hgdefend.targets.HeadTarget`, parametrised as ``compact``:
    ``"scales"`` or ``"lowrank:R"`` for a whole block); the HyperGAN's sizes and the training recipe
    are the dataset's as before.

    ``None`` keeps the recipe's value. The calibration split is the validation set (evaluated every
    ``eval_every`` steps and at the end); ``checkpoint`` is written every ``checkpoint_every`` steps
    (at most once per ``checkpoint_min_interval`` seconds of training) and at the end (its folder is
    created), and ``resume=True`` continues from it. ``time_budget`` (seconds) stops training early
    and anneals the learning rate over it; ``cuda_graph`` replays the step as one CUDA graph
    (:mod:`hgdefend.graphed_step`; plain recipe on a GPU). ``adversarial`` (with ``adv_eps``,
    ``adv_steps``, ``adv_alpha``, ``trades_beta``, ``adv_eps_warmup``) trains on inputs crafted
    against each step's networks (:mod:`hgdefend.adversarial`). ``dist`` (from
    :func:`hgdefend.distributed.init_distributed`) trains across the ranks of a torchrun launch: the
    same model as one process; only rank 0 shows progress and writes the checkpoint.
    """
    target = default_target(data, backbone, generate, compact)
    hp, cfg = default_recipe(data)
    hp.update({k: v for k, v in (("noise_dim", noise_dim), ("code_dim", code_dim), ("hidden", hidden)) if v})
    if not mixer:  # each generator reads its own slice of the noise
        hp["noise_dim"] = len(target.param_groups) * hp["code_dim"]
    given = {"steps": steps, "nets_per_step": nets_per_step, "batch_size": batch_size, "lr": lr,
             "adv_eps": adv_eps, "adv_steps": adv_steps, "adv_alpha": adv_alpha,
             "trades_beta": trades_beta, "adv_eps_warmup": adv_eps_warmup}  # fmt: skip
    cfg = replace(  # validates the result (TrainConfig.__post_init__)
        cfg,
        **{k: v for k, v in given.items() if v is not None},
        eval_every=eval_every,
        checkpoint_every=checkpoint_every,
        checkpoint_min_interval_s=checkpoint_min_interval,
        time_budget_s=time_budget,
        cuda_graph=cuda_graph,
        seed=seed,
        diversity=diversity,
        diversity_weight=diversity_weight,
        adversarial=adversarial,
    )
    if checkpoint is not None:
        Path(checkpoint).parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)  # the HyperGAN's initial weights
    hg = HyperGAN(target, regulariser=regulariser, beta=beta, mixer=mixer, **hp)
    result = Trainer(hg, data.train, cfg, val=data.calib, device=device,
                     progress=progress and (dist is None or dist.is_main),
                     checkpoint=checkpoint, dist=dist).fit(resume=resume)  # fmt: skip
    recipe = {**hp, "regulariser": regulariser, "beta": beta, "mixer": mixer,
              **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}}  # fmt: skip
    training = {
        "steps": result.steps,
        "seconds": round(result.seconds, 2),
        "seed": seed,
        "recipe": recipe,
        "final": dict(result.history[-1]) if result.history else {},
    }
    return TrainedModel(hg, result, training)

"""``hgdefend train``: fit a HyperGAN and write a safe model file."""

from __future__ import annotations

import json
from pathlib import Path

import click
import torch

from ..data import load_data
from ..evaluation import default_recipe, default_spec
from ..hypergan import REGULARISERS, HyperGAN
from ..io import save_model
from ..training import Trainer, resolve_device
from .common import CLIError, common_options, friendly_errors, set_threads


@click.command()
@click.option(
    "--dataset",
    default="digits",
    show_default=True,
    help="digits, mnist, fashion-mnist, cifar10, cubic, or a .npz file with x and y.",
)
@click.option("--data-root", default=None, help="Folder in torchvision's layout (mnist, ...).")
@click.option("--download", is_flag=True, help="Let torchvision download missing data.")
@click.option("--in-classes", default=None, help="Train on these classes only, e.g. 0-4.")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for model.safetensors, checkpoint and training log.",
)
@click.option("--steps", type=int, default=None, help="Training steps (default: per dataset).")
@click.option("--nets-per-step", type=int, default=None, help="Networks sampled per step.")
@click.option("--batch-size", type=int, default=None)
@click.option("--lr", type=float, default=None, help="Generator learning rate.")
@click.option("--regulariser", type=click.Choice(REGULARISERS), default="gan", show_default=True)
@click.option(
    "--beta",
    type=float,
    default=1.0,
    show_default=True,
    help="Weight of the latent-code regulariser.",
)
@click.option("--eval-every", type=int, default=100, show_default=True)
@click.option("--checkpoint-every", type=int, default=100, show_default=True)
@click.option("--time-budget", type=float, default=None, help="Stop after this many seconds.")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.safetensors.")
@common_options
@friendly_errors
def train(dataset, data_root, download, in_classes, out_dir, steps, nets_per_step, batch_size, lr,
          regulariser, beta, eval_every, checkpoint_every, time_budget, resume, seed, device,
          threads, quiet) -> None:  # fmt: skip
    """Train a HyperGAN on DATASET and save OUT/model.safetensors."""
    set_threads(threads)
    dev = resolve_device(device)
    data = load_data(dataset, root=data_root, download=download, in_classes=in_classes)
    hp, cfg = default_recipe(data)
    for name, value in (("steps", steps), ("nets_per_step", nets_per_step),
                        ("batch_size", batch_size), ("lr", lr)):  # fmt: skip
        if value is not None:
            setattr(cfg, name, value)
    cfg.eval_every, cfg.checkpoint_every, cfg.seed = eval_every, checkpoint_every, seed
    cfg.time_budget_s = time_budget
    cfg.__post_init__()
    out = Path(out_dir)
    ckpt = out / "checkpoint.safetensors"
    if resume and not ckpt.is_file():
        raise CLIError(f"--resume: no checkpoint at {ckpt}")
    torch.manual_seed(seed)
    hg = HyperGAN(default_spec(data), regulariser=regulariser, beta=beta, **hp)
    out.mkdir(parents=True, exist_ok=True)
    result = Trainer(hg, data.train, cfg, val=data.calib, device=dev, progress=not quiet,
                     checkpoint=ckpt).fit(resume=resume)  # fmt: skip
    training = {"steps": result.steps, "seconds": round(result.seconds, 2), "seed": seed,
                "last_eval": result.history[-1] if result.history else {}}  # fmt: skip
    sha = save_model(out / "model.safetensors", hg, dataset=data.describe(), training=training)
    (out / "train_log.json").write_text(json.dumps(
        {"history": result.history, "mixer_pretrain": result.mixer_pretrain, "sha256": sha},
        indent=2))  # fmt: skip
    if not quiet:
        last = result.history[-1] if result.history else {}
        acc = last.get("ensemble_acc")
        click.echo(f"wrote {out / 'model.safetensors'} (sha256 {sha[:16]}…) after {result.steps} "
                   f"steps, {result.seconds:.1f} s"
                   + (f"; calibration accuracy of a 10-network ensemble {100 * acc:.2f} %"
                      if acc is not None else ""))  # fmt: skip

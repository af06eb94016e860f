"""``hgdefend evaluate``: the main job — accuracy, diversity, detection, attacks — as a report."""

from __future__ import annotations

import click

from ..evaluation import EvaluateOptions, run_evaluate
from ..hypergan import REGULARISERS
from .common import command_line, common_options, friendly_errors, set_threads


@click.command()
@click.option(
    "--dataset",
    default="digits",
    show_default=True,
    help="digits (embedded), mnist, fashion-mnist, cifar10, or a .npz file.",
)
@click.option("--data-root", default=None, help="Folder in torchvision's layout.")
@click.option("--download", is_flag=True, help="Let torchvision download missing data.")
@click.option("--in-classes", default=None, help="In-distribution classes, e.g. 0-4.")
@click.option(
    "--model",
    default=None,
    type=click.Path(dir_okay=False),
    help="A model file from 'hgdefend train'; without it a small HyperGAN is trained.",
)
@click.option("--members", type=int, default=100, show_default=True, help="Ensemble size K.")
@click.option("--train-steps", type=int, default=None, help="Steps when training (no --model).")
@click.option("--regulariser", type=click.Choice(REGULARISERS), default="gan", show_default=True)
@click.option("--beta", type=float, default=1.0, show_default=True)
@click.option(
    "--out",
    default="hgdefend-report",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for report.json, report.md and plots.",
)
@common_options
@friendly_errors
def evaluate(dataset, data_root, download, in_classes, model, members, train_steps, regulariser,
             beta, out, seed, device, threads, quiet) -> None:  # fmt: skip
    """Evaluate a HyperGAN ensemble and write report.json and report.md."""
    set_threads(threads)
    opts = EvaluateOptions(dataset=dataset, data_root=data_root, download=download,
                           in_classes=in_classes, model=model, out=out, seed=seed,
                           device=None if device == "auto" else device, members=members,
                           train_steps=train_steps, regulariser=regulariser, beta=beta,
                           quiet=quiet)  # fmt: skip
    report, paths = run_evaluate(opts, command=command_line())
    if not quiet:
        click.echo(paths["markdown"].read_text())
        click.echo(f"wrote {paths['json']} and {paths['markdown']}")

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
@click.option(
    "--in-classes",
    default="auto",
    show_default=True,
    help="In-distribution classes, e.g. 0-4 ('all' for every class; 'auto': 0-4 on "
    "digits without --ood, so classes 5-9 are the OOD set).",
)
@click.option("--ood", default=None, help="OOD dataset scored against the test split, e.g. fashion-mnist.")
@click.option(
    "--target-fpr",
    type=float,
    default=0.05,
    show_default=True,
    help="False-positive rate the detector threshold is calibrated to.",
)
@click.option(
    "--fail-under", default=None, help="Gate, e.g. auroc=0.9,tpr=0.8: exit 1 when a metric falls below it."
)
@click.option("--attacks", default=None, help="Comma list of attacks, e.g. fgsm,pgd.")
@click.option("--eps", default=None, help="Comma list of L-inf budgets, e.g. 0.1,0.2,0.3.")
@click.option("--protocols", default=None, help="Comma list: paper,fixed,adaptive.")
@click.option("--baselines", default=None, help="Comma list: deep-ensemble,mc-dropout,single.")
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
def evaluate(dataset, data_root, download, in_classes, ood, target_fpr, fail_under, attacks, eps,
             protocols, baselines, model, members, train_steps, regulariser, beta, out, seed, device,
             threads, quiet) -> None:  # fmt: skip
    """Evaluate a HyperGAN ensemble and write report.json and report.md."""
    set_threads(threads)
    opts = EvaluateOptions(dataset=dataset, data_root=data_root, download=download,
                           in_classes=in_classes, ood=ood, target_fpr=target_fpr,
                           fail_under=fail_under, attacks=attacks, eps=eps, protocols=protocols,
                           baselines=baselines, model=model, out=out, seed=seed,
                           device=None if device == "auto" else device, members=members,
                           train_steps=train_steps, regulariser=regulariser, beta=beta,
                           quiet=quiet)  # fmt: skip
    report, paths = run_evaluate(opts, command=command_line())
    if not quiet:
        click.echo(paths["markdown"].read_text())
        click.echo(f"wrote {paths['json']} and {paths['markdown']}")
    gate = report.get("gate")
    if gate is not None and not gate.get("passed", True):
        click.echo(f"gate failed: {'; '.join(gate.get('failures', []))}", err=True)
        raise SystemExit(1)

"""``hgdefend evaluate``: the main job (accuracy, calibration, diversity, detection, attacks) as a report."""

from __future__ import annotations

import json

import click

from ..vocab import ATTACK_NAMES, BASELINE_NAMES, REGULARISERS
from .common import (
    CLIError,
    backbone_options,
    command_line,
    common_options,
    echo,
    friendly_errors,
    get_backbone,
    set_threads,
    trust_data_root_option,
)


@click.command()
@click.option(
    "--model",
    "-m",
    default=None,
    type=click.Path(dir_okay=False),
    help="A model file from 'hgdefend train'; without it a small HyperGAN is trained. With --onnx: "
    "the file's source model, for transfer attacks [default: the file named in its metadata, "
    "beside it].",
)
@click.option(
    "--onnx",
    "onnx_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Evaluate this exported .onnx file as it ships: its members, its baked-in threshold and "
    "flag (accuracy, realised FPR, OOD detection; with --attacks, transfer attacks from the source "
    "model). --members and --train-steps are not used.",
)
@click.option(
    "--dataset",
    default=None,
    help="digits (embedded), mnist, fashion-mnist, cifar10, or a .npz file [default: the "
    "model file's dataset, else digits].",
)
@click.option("--data-root", default=None, help="Folder in torchvision's layout.")
@click.option("--download", is_flag=True, help="Let torchvision download missing data.")
@trust_data_root_option()
@click.option(
    "--in-classes",
    default="auto",
    show_default=True,
    help="In-distribution classes, e.g. 0-4 ('all' for every class; 'auto': the model's classes, "
    "or 0-4 on digits without --ood so that classes 5-9 are the OOD set).",
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
    "--fail-under",
    default=None,
    help="Gate, e.g. auroc=0.9,tpr=0.8,missed=0.05: exit 1 when auroc, aupr or tpr falls below its "
    "limit, or when more than 'missed' of the attacked inputs are misclassified and not flagged.",
)
@click.option(
    "--attacks",
    default=None,
    help="'all' for the full suite (" + ", ".join(ATTACK_NAMES) + "; fixed and adaptive protocols, "
    "ART's AutoAttack), or a comma list of those names [default: a small adaptive section (README, "
    "'Attacks'); the other attack options refine either].",
)
@click.option(
    "--no-attacks",
    is_flag=True,
    help="Run no attack (the report then says nothing about adversarial inputs).",
)
@click.option(
    "--eps",
    default=None,
    help="Comma list of L-inf budgets, e.g. 0.1,0.2,0.3 [default: 0.1,0.3].",
)
@click.option(
    "--protocols",
    default=None,
    help="Comma list: paper,fixed,adaptive [default: adaptive; paper,fixed with --attacks].",
)
@click.option("--baselines", default=None, help="Comma list of: " + ",".join(BASELINE_NAMES) + ".")
@click.option(
    "--attack-inputs", type=int, default=None, help="Test inputs attacked [default: 100; 200 with --attacks]."
)
@click.option("--attack-steps", type=int, default=None, help="Attack steps [default: 20; 40 with --attacks].")
@click.option(
    "--attack-or-scores",
    default=None,
    help="Also attack a detector that flags when any of these scores fires, each at its own threshold, "
    "e.g. entropy,mutual_information (the OR a user who combines scores deploys).",
)
@click.option(
    "--attack-targets",
    type=int,
    default=None,
    help="Runner-up classes each targeted attack (apgd-t, apgd-ce-t) aims at [default: 2; 9 with --attacks].",
)
@click.option(
    "--plots",
    default=None,
    help="Comma list of extra pictures (the paper's appendix): filters (one first-layer filter of 25 "
    "sampled networks), entropy-images (the highest-entropy test images, the lowest-entropy OOD images).",
)
@click.option("--members", type=int, default=100, show_default=True, help="Ensemble size K.")
@click.option("--train-steps", type=int, default=None, help="Steps when training (no --model).")
@click.option(
    "--time-budget",
    type=float,
    default=None,
    help="Seconds of training when training (no --model); the schedule anneals within it.",
)
@click.option("--regulariser", type=click.Choice(REGULARISERS), default="gan", show_default=True)
@click.option("--beta", type=float, default=1.0, show_default=True)
@click.option(
    "--out",
    default="hgdefend-report",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for report.html, report.md, report.json and plots.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead of text.")
@backbone_options()
@common_options
@friendly_errors
def evaluate(
    model,
    onnx_path,
    dataset,
    data_root,
    download,
    trust_data_root,
    in_classes,
    ood,
    target_fpr,
    fail_under,
    attacks,
    no_attacks,
    eps,
    protocols,
    baselines,
    attack_inputs,
    attack_steps,
    attack_targets,
    attack_or_scores,
    plots,
    members,
    train_steps,
    time_budget,
    regulariser,
    beta,
    out,
    as_json,
    backbone,
    backbone_weights,
    seed,
    device,
    threads,
    quiet,
) -> None:
    """Evaluate a HyperGAN ensemble and write report.html, report.md and report.json.

    Progress goes to stderr (only on a terminal); a short summary ends on stdout.
    """
    from ..backbone import check_backbone_for
    from ..evaluate import EvaluateOptions, run_evaluate

    set_threads(threads)
    if backbone is not None and model is None and onnx_path is None:
        raise CLIError(
            "--backbone: goes with --model (train one first with `hgdefend train --backbone "
            "... --generate ...`), or with --onnx (the source model of an exported file)"
        )
    module = get_backbone(backbone, backbone_weights)
    if model is not None:  # with --onnx: the source model, loaded for transfer attacks
        check_backbone_for(model, module)
    opts = EvaluateOptions(
        dataset=dataset,
        data_root=data_root,
        download=download,
        trust_data_root=trust_data_root,
        in_classes=in_classes,
        ood=ood,
        target_fpr=target_fpr,
        fail_under=fail_under,
        no_attacks=no_attacks,
        attacks=attacks,
        eps=eps,
        protocols=protocols,
        baselines=baselines,
        attack_inputs=attack_inputs,
        attack_steps=attack_steps,
        attack_targets=attack_targets,
        attack_or_scores=attack_or_scores,
        plots=plots,
        model=model,
        onnx=onnx_path,
        out=out,
        seed=seed,
        device=None if device == "auto" else device,
        members=members,
        train_steps=train_steps,
        time_budget=time_budget,
        regulariser=regulariser,
        beta=beta,
        quiet=quiet,
    )
    report, paths = run_evaluate(opts, command=command_line(), module=module)
    summary = report["summary"]
    gate = report.get("gate")
    if as_json:
        click.echo(
            json.dumps(
                {
                    **{k: v for k, v in summary.items()},
                    "gate": None
                    if gate is None
                    else {"passed": gate["passed"], "failures": gate["failures"]},
                    "report": {k: str(p) for k, p in paths.items()},
                },
                indent=2,
            )
        )
    elif not quiet:
        for line in summary["lines"]:
            echo(line)
        echo(f"Report: {paths['html']} (also report.md, report.json)")
    if gate is not None and not gate["passed"]:
        for failure in gate["failures"]:
            echo(f"gate failed: {failure}", err=True)
        raise SystemExit(1)

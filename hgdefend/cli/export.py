"""``hgdefend export``: a fixed sampled ensemble as one ONNX file, parity-checked before it is kept."""

from __future__ import annotations

import json

import click

from ..vocab import SCORES
from .common import (
    backbone_options,
    command_line,
    echo,
    friendly_errors,
    get_backbone,
    max_memory_option,
    quiet_option,
    seed_option,
    set_threads,
    threads_option,
    trust_data_root_option,
)

EXIT_PARITY = 1


@click.command()
@click.option(
    "--model",
    "-m",
    required=True,
    type=click.Path(dir_okay=False),
    help="A model file from `hgdefend train` (or `evaluate`).",
)
@click.option("--members", "-k", type=int, required=True, help="Networks K to draw and freeze.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The .onnx file to write.")
@click.option(
    "--threshold-from",
    "calibration",
    default=None,
    help="Fit the flag threshold on clean calibration inputs: a dataset name (its "
    "calibration split, restricted to the model's classes) or a .npy/.npz file.",
)
@click.option("--threshold", type=float, default=None, help="Bake in this threshold instead.")
@click.option(
    "--target-fpr",
    type=float,
    default=0.05,
    show_default=True,
    help="False-positive rate on clean data for --threshold-from.",
)
@click.option(
    "--score",
    type=click.Choice(SCORES),
    default="entropy",
    show_default=True,
    help="The score the flag thresholds.",
)
@click.option("--data-root", default=None, help="Folder in torchvision's layout (mnist, ...).")
@trust_data_root_option()
@click.option(
    "--parity-data",
    default=None,
    help="Real inputs for the parity check (dataset name or .npy/.npz); default: the "
    "calibration inputs, else the model's dataset when it loads.",
)
@click.option("--parity-batch", type=int, default=7, show_default=True, help="Batch N of the parity check.")
@click.option(
    "--tolerance",
    type=float,
    default=1e-4,
    show_default=True,
    help="Max |difference| of probabilities allowed between onnxruntime and torch.",
)
@click.option(
    "--exporter",
    type=click.Choice(["dynamo", "legacy"]),
    default="dynamo",
    show_default=True,
    help="torch.onnx exporter (legacy: the deprecated TorchScript one, faster to run).",
)
@click.option(
    "--kernel",
    type=click.Choice(["grouped", "unfold", "loop"]),
    default="grouped",
    show_default=True,
    help="Members in the graph: grouped convolutions, or without any for runtimes that handle them "
    "poorly (loop: K plain convolutions per layer, about as fast on onnxruntime's CPU; unfold: "
    "im2col + batched matmul, ~9x slower there and memory-hungry).",
)
@click.option("--opset", type=int, default=18, show_default=True)
@click.option(
    "--report",
    "report_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Also evaluate the written file (`evaluate --onnx`: accuracy, its baked-in threshold's "
    "realised FPR, OOD detection) on the model's dataset and write the report into this folder.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@backbone_options()
@seed_option("Seed of the weight draw.")
@threads_option()
@quiet_option("No summary.")
@max_memory_option()
@friendly_errors
def export(
    model,
    members,
    seed,
    out,
    calibration,
    threshold,
    target_fpr,
    score,
    data_root,
    trust_data_root,
    parity_data,
    parity_batch,
    tolerance,
    exporter,
    kernel,
    opset,
    report_dir,
    backbone,
    backbone_weights,
    threads,
    as_json,
    quiet,
) -> None:
    """Freeze K networks sampled from a model into one ONNX graph at OUT.

    The graph outputs per-member logits, mean probabilities, the predicted class, every detector
    score, input_valid and, with a threshold, is_adversarial (true for every invalid input). The
    file is kept only if onnxruntime (CPU) reproduces the torch ensemble at batch 1 and N and flags
    invalid inputs; otherwise nothing is left at OUT (exit 1). Prints the file's SHA-256.
    """
    from ..backbone import check_backbone_for
    from ..export import ParityError, export_onnx

    set_threads(threads)
    module = get_backbone(backbone, backbone_weights)
    check_backbone_for(model, module)
    try:
        result = export_onnx(
            model,
            members,
            out,
            seed=seed,
            threshold=threshold,
            calibration=calibration,
            score=score,
            target_fpr=target_fpr,
            parity_inputs=parity_data,
            parity_batch=parity_batch,
            tolerance=tolerance,
            exporter=exporter,
            opset=opset,
            data_root=data_root,
            kernel=kernel,
            trust_data_root=trust_data_root,
            module=module,
        )
    except ParityError as exc:
        echo(f"error: {exc}", err=True)
        raise SystemExit(EXIT_PARITY) from exc
    paths = None
    if report_dir is not None:
        from ..evaluate import EvaluateOptions, run_evaluate

        opts = EvaluateOptions(onnx=out, model=model, data_root=data_root, out=report_dir, quiet=True,
                               trust_data_root=trust_data_root)  # fmt: skip
        paths = run_evaluate(opts, command=command_line(), module=module)[1]
    if as_json:
        click.echo(json.dumps({**result.to_dict(), "report": None if paths is None else {
            k: str(p) for k, p in paths.items()}}, indent=2))  # fmt: skip
    elif not quiet:
        thr = (
            "no threshold (no is_adversarial output)"
            if result.threshold is None
            else (f"threshold {result.threshold:.6g} on {result.score}, {result.threshold_source}")
        )
        echo(
            f"wrote {result.path} ({result.size_bytes / 1e6:.2f} MB): {result.members} networks, "
            f"seed {result.seed}, kernel {result.kernel}, {thr}"
        )
        echo(f"sha256 {result.sha256} (pin it: hgdefend detect --expected-sha256 ...)")
        for row in result.parity:
            if row["inputs"] == "invalid":
                echo(
                    f"parity invalid batch {row['batch']:>3}: NaN, ±inf, below and above the input "
                    f"range -> input_valid mismatches {row['input_valid_mismatches']}, unflagged "
                    f"{row['flag_mismatches']}"
                )
                continue
            echo(
                f"parity {row['inputs']:>6} batch {row['batch']:>3}: "
                f"max |Δp| {row['max_abs_prob_diff']:.2e}, "
                f"argmax mismatches {row['argmax_mismatches']}, flag mismatches {row['flag_mismatches']}, "
                f"boundary ties {row['boundary_ties']}"
            )
        if not any(r["inputs"] == "real" for r in result.parity):
            echo(
                "note: no real inputs were available for the parity check (random inputs only); "
                "pass --parity-data",
                err=True,
            )
        if paths is not None:
            echo(f"report of the exported file: {paths['html']} (also report.md, report.json)")

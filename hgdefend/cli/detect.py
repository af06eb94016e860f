"""``hgdefend detect``: run an exported ONNX ensemble on inputs and write one record per input."""

from __future__ import annotations

import csv
import io
import json
import sys

import click

from ..vocab import SCORES
from .common import check_threads, device_option, friendly_errors, quiet_option, threads_option

FIELDS = ("index", "predicted_class", "label", "probability", *SCORES, "is_adversarial")


@click.command()
@click.option(
    "--model",
    "-m",
    "onnx_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="An .onnx file written by `hgdefend export`.",
)
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Inputs [B, *input_shape] as float values: .npy, or .npz with array 'x'.",
)
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Write here (default: stdout).")
@click.option("--batch-size", type=int, default=256, show_default=True)
@device_option("'auto' (onnxruntime's CUDA provider when usable, else CPU), 'cpu', 'cuda'.")
@threads_option("onnxruntime intra-op threads (default: onnxruntime's choice).")
@quiet_option("No summary on stderr after writing --out.")
@friendly_errors
def detect(onnx_path, input_path, fmt, out, batch_size, device, threads, quiet) -> None:
    """Classify and score every input with an exported ensemble; flag suspicious ones.

    Each record: input index, predicted class index and its label, mean probability of that
    class, the scores (higher = more suspicious) and is_adversarial (empty when the file was
    exported without a threshold).
    """
    from ..export import OnnxDetector, load_inputs

    check_threads(threads)
    det = OnnxDetector(onnx_path, device=device, threads=threads)
    rows = det.records(load_inputs(input_path, "--input"), batch_size=batch_size)
    buf = io.StringIO()
    if fmt == "jsonl":
        for row in rows:
            buf.write(json.dumps(row) + "\n")
    else:
        writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    if out is None:
        sys.stdout.write(buf.getvalue())
        return
    from ..fileio import atomic_write

    atomic_write(out, buf.getvalue())
    if not quiet:
        flagged = sum(bool(r["is_adversarial"]) for r in rows)
        flag_text = "" if det.threshold is None else f", {flagged} flagged"
        click.echo(f"wrote {len(rows)} records to {out}{flag_text} ({det.providers[0]})", err=True)

"""``hgdefend detect``: run an exported ONNX ensemble on inputs and write one record per input.

Needs only numpy and onnxruntime (through :mod:`hgdefend.export.runtime` and
:mod:`hgdefend.export.inputs`): no torch, no scikit-learn, no onnx.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys

import click

from ..vocab import SCORES
from .common import (
    check_threads,
    device_option,
    echo,
    friendly_errors,
    max_memory_option,
    quiet_option,
    threads_option,
)

FIELDS = ("index", "predicted_class", "label", "probability", *SCORES, "is_adversarial", "input_valid")
LABEL_FIELDS = ("true_label", "correct")


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
@click.option(
    "--expected-sha256",
    default=None,
    help="Refuse the file unless its SHA-256 is this (64 hex digits; `export` and `info` print it).",
)
@click.option(
    "--labels",
    "labels_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="True labels [B] (.npy/.npz, values as the records' 'label'): adds true_label and correct "
    "to each record and accuracy and flag rates to the summary on stderr.",
)
@click.option(
    "--invalid",
    type=click.Choice(["error", "flag"]),
    default="error",
    show_default=True,
    help="Inputs with NaN, inf or values outside the input range: refuse the run, or pass them to "
    "the graph, which flags them (input_valid false, is_adversarial true).",
)
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Write here (default: stdout).")
@click.option("--batch-size", type=int, default=256, show_default=True)
@device_option("'auto' (onnxruntime's CUDA provider when usable, else CPU), 'cpu', 'cuda', 'cuda:N'.")
@threads_option("onnxruntime intra-op threads (default: onnxruntime's choice).")
@quiet_option("No summary on stderr.")
@max_memory_option()
@friendly_errors
def detect(onnx_path, input_path, expected_sha256, labels_path, invalid, fmt, out, batch_size, device,
           threads, quiet) -> None:  # fmt: skip
    """Classify and score every input with an exported ensemble; flag suspicious ones.

    Each record: input index, predicted class index and its label, mean probability of that
    class, the scores (higher = more suspicious), is_adversarial (empty when the file was exported
    without a threshold; true for every invalid input) and input_valid. The file is refused if it
    was altered since export, or if --expected-sha256 is given and does not match.
    """
    from ..export.inputs import check_labels, load_inputs
    from ..export.runtime import OnnxDetector
    from ..text import csv_cell

    check_threads(threads)
    if out is not None:  # before any work: never the input, never through a planted link
        from ..fileio import check_output

        check_output(out, refuse=[onnx_path, input_path, labels_path], name="--out")
    det = OnnxDetector(onnx_path, device=device, threads=threads, expected_sha256=expected_sha256)
    x = load_inputs(input_path, "--input")
    labels = None
    if labels_path is not None:
        labels = check_labels(load_inputs(labels_path, "--labels"), len(x), "--labels")
    outputs = det.run(x, batch_size=batch_size, invalid=invalid)
    rows = det.records_from(outputs, labels)
    buf = io.StringIO()
    if fmt == "jsonl":
        for row in rows:  # strict JSON: a NaN score (a flagged invalid input) is null, not bare NaN
            buf.write(json.dumps(_finite_or_null(row), allow_nan=False) + "\n")
    else:
        fields = FIELDS + (LABEL_FIELDS if labels is not None else ())
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else csv_cell(v)) for k, v in row.items()})
    if out is None:
        sys.stdout.write(buf.getvalue())
    else:
        from ..fileio import atomic_write

        atomic_write(out, buf.getvalue(), refuse=[onnx_path, input_path, labels_path], name="--out")
    if quiet or (out is None and labels is None):
        return
    summary = det.summary(outputs, labels)
    where = "" if out is None else f"wrote {len(rows)} records to {out}; "
    echo(f"{where}{summary_line(summary)} ({det.providers[0]})", err=True)


def _finite_or_null(row: dict) -> dict:
    """NaN and ±inf → None, so every line parses with JSON.parse, Go's encoding/json and jq."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def summary_line(s: dict) -> str:
    """One line for people: inputs, invalid, flags and, with labels, accuracy and flag rates."""
    parts = [f"{s['inputs']} inputs", f"{s['invalid']} invalid"]
    if s["flagged"] is not None:
        parts.append(f"{s['flagged']} flagged ({_pct(s['flag_rate'])})")
    if "accuracy" in s:
        parts.append(f"accuracy {_pct(s['accuracy'])} ({s['correct']} correct"
                     + (f", {s['unknown_class']} with a label outside the file's classes)"
                        if s["unknown_class"] else ")"))  # fmt: skip
        if s["flagged"] is not None:
            parts.append(f"flagged: {_pct(s['flag_rate_correct'])} of correct, "
                         f"{_pct(s['flag_rate_wrong'])} of wrong"
                         + (f", {_pct(s['flag_rate_unknown_class'])} of unknown-class"
                            if s["unknown_class"] else ""))  # fmt: skip
            parts.append(f"accuracy on unflagged {_pct(s['accuracy_unflagged'])}")
            parts.append(f"wrong and not flagged {_pct(s['missed_and_wrong'])}")
    return "; ".join(parts)

"""Inputs and labels for an exported file, read and checked with numpy only (no torch).

:func:`check_array` is what :meth:`~hgdefend.export.runtime.OnnxDetector.run` checks before
onnxruntime sees an input; :func:`valid_mask` is the graph's ``input_valid`` computed in numpy;
:func:`label_summary` turns a run's outputs and optional labels into counts and rates.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..arrays import npz_keys, read_npy, read_npz
from ..errors import HgdefendError

RANGE_SLACK = 1e-6
"""An input value counts as inside ``input_range`` [lo, hi] when lo - slack <= v <= hi + slack
(the same slack as the library's torch-side input checks); NaN and ±inf never do."""
INVALID_MODES = ("error", "flag")
"""What :meth:`.runtime.OnnxDetector.run` does with NaN, ±inf or out-of-range inputs: raise before
onnxruntime sees them, or let the graph flag them (``input_valid`` false, ``is_adversarial`` true)."""


def load_inputs(path: str | os.PathLike, name: str = "input") -> np.ndarray:
    """An array from ``.npy`` or ``.npz`` (key ``x``, or its only array). Never unpickles."""
    p = Path(path)
    if not p.is_file():
        raise HgdefendError(f"{name}: file {str(p)!r} does not exist")
    # By declared size (hgdefend.arrays): a header declaring a huge array or a zip bomb is refused
    # before anything is read or inflated.
    if p.suffix == ".npy":
        return read_npy(p, name)
    if p.suffix == ".npz":
        keys = npz_keys(p, name)
        if "x" in keys or len(keys) == 1:
            key = "x" if "x" in keys else keys[0]
            return read_npz(p, (key,), name)[key]
        raise HgdefendError(f"{name}: {str(p)!r} must hold an array 'x' (or one array), has {keys[:10]}")
    raise HgdefendError(f"{name}: expected a .npy or .npz file, got {str(p)!r}")


def _fmt_range(r: Sequence[float]) -> str:
    return f"[{r[0]:g}, {r[1]:g}]"


def _to_numpy(x: object, name: str) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if type(x).__module__.split(".")[0] == "torch" and hasattr(x, "detach"):
        return x.detach().cpu().numpy()  # a torch tensor, converted without importing torch
    raise HgdefendError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")


def valid_mask(x: np.ndarray, value_range: Sequence[float]) -> np.ndarray:
    """``[B]`` bool: every value finite and inside the range (the graph's ``input_valid``)."""
    lo, hi = _bounds(value_range)
    inside = (x >= lo) & (x <= hi)  # NaN compares false; ±inf falls outside the finite bounds
    return inside.reshape(len(x), -1).all(axis=1)


def _bounds(value_range: Sequence[float]) -> tuple[np.float32, np.float32]:
    big = np.finfo(np.float32).max
    lo, hi = float(value_range[0]), float(value_range[1])
    lo_b = np.float32(lo - RANGE_SLACK) if np.isfinite(lo) else -big
    hi_b = np.float32(hi + RANGE_SLACK) if np.isfinite(hi) else big
    return lo_b, hi_b


def check_array(
    x: object,
    input_shape: Sequence[int],
    value_range: Sequence[float],
    *,
    name: str = "x",
    invalid: str = "error",
) -> np.ndarray:
    """float32 ``[B, *input_shape]``; with ``invalid="error"`` also finite and inside the range."""
    if invalid not in INVALID_MODES:
        raise HgdefendError(f"invalid: expected one of {INVALID_MODES}, got {invalid!r}")
    arr = _to_numpy(x, name)
    if not np.issubdtype(arr.dtype, np.floating):
        raise HgdefendError(
            f"{name}: expected floating-point values in {_fmt_range(value_range)}, got dtype {arr.dtype} "
            "(scale integer images yourself, e.g. x / 255)"
        )
    shape = tuple(int(s) for s in input_shape)
    if arr.ndim != len(shape) + 1 or tuple(arr.shape[1:]) != shape:
        raise HgdefendError(
            f"{name}: expected shape [B, {', '.join(map(str, shape))}], got {list(arr.shape)}"
        )
    if arr.shape[0] == 0:
        raise HgdefendError(f"{name}: is empty (batch size 0)")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if invalid == "error":
        hint = "; to have the graph flag such inputs instead, pass --invalid flag (invalid='flag')"
        finite = np.isfinite(arr).reshape(len(arr), -1).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise HgdefendError(
                f"{name}: input {int(bad[0])} contains NaN or infinite values ({len(bad)} such inputs){hint}"
            )
        ok = valid_mask(arr, value_range)
        if not ok.all():
            bad = np.flatnonzero(~ok)
            raise HgdefendError(
                f"{name}: values must lie in {_fmt_range(value_range)}, got min {float(arr.min()):.4g}, "
                f"max {float(arr.max()):.4g} (input {int(bad[0])} first, {len(bad)} such inputs){hint}"
            )
    return arr


def check_labels(labels: object, n: int, name: str = "labels") -> np.ndarray:
    """Integer class labels ``[n]`` (values as in the file's ``class_labels``) as int64."""
    arr = _to_numpy(labels, name) if not isinstance(labels, (list, tuple)) else np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise HgdefendError(f"{name}: expected one label per input, shape [{n}], got {list(arr.shape)}")
    if np.issubdtype(arr.dtype, np.floating):
        if not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
            raise HgdefendError(f"{name}: expected integer class labels, got non-integer values")
    elif not np.issubdtype(arr.dtype, np.integer):
        raise HgdefendError(f"{name}: expected integer class labels, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def label_summary(
    outputs: Mapping[str, np.ndarray], class_labels: Sequence[int], labels: np.ndarray | None = None
) -> dict[str, Any]:
    """Counts and rates for a run: invalid inputs, flags, and with ``labels`` accuracy and flag rates.

    ``labels`` are values of ``class_labels`` (what the records call ``label``). A label outside
    the file's classes (an out-of-distribution input) can never be classified correctly; it is
    counted apart (``unknown_class``) and its flag rate is reported on its own.
    """
    valid = np.asarray(outputs["input_valid"], bool)
    n = int(valid.size)
    flags = outputs.get("is_adversarial")
    flagged = None if flags is None else np.asarray(flags, bool)
    out: dict[str, Any] = {
        "inputs": n,
        "invalid": int((~valid).sum()),
        "flagged": None if flagged is None else int(flagged.sum()),
        "flag_rate": None if flagged is None else float(flagged.mean()),
    }
    if labels is None:
        return out

    def rate(mask: np.ndarray) -> float | None:
        return None if flagged is None or not mask.any() else float(flagged[mask].mean())

    y = check_labels(labels, n)
    classes = np.asarray(class_labels, np.int64)
    predicted = classes[np.asarray(outputs["predicted_class"], np.int64)]
    known = np.isin(y, classes)
    correct = known & (predicted == y)
    wrong = known & ~correct
    out.update(
        {
            "labelled": n,
            "unknown_class": int((~known).sum()),
            "accuracy": float(correct[known].mean()) if known.any() else None,
            "correct": int(correct.sum()),
            "flag_rate_correct": rate(correct),
            "flag_rate_wrong": rate(wrong),
            "flag_rate_unknown_class": rate(~known),
            "accuracy_unflagged": None
            if flagged is None or not (known & ~flagged).any()
            else float(correct[known & ~flagged].mean()),
            "missed_and_wrong": None if flagged is None else float((~correct & ~flagged).mean()),
        }
    )
    return out

"""Parity: does onnxruntime reproduce the torch ensemble an ONNX file was exported from?"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..detectors.scores import compute_scores
from ..ensemble import SampledEnsemble
from ..errors import HgdefendError
from ..probabilities import mean_probs
from ..vocab import SCORES
from .runtime import OnnxDetector


class ParityError(HgdefendError):
    """onnxruntime did not reproduce the torch ensemble; no file was left behind."""


def check_parity(
    path: str | os.PathLike,
    ensemble: SampledEnsemble,
    score: str,
    threshold: float | None,
    *,
    real_inputs: Tensor | None = None,
    batch: int = 7,
    tolerance: float = 1e-4,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Compare onnxruntime (CPU provider) with the torch ensemble; raise :class:`ParityError` on failure.

    Cases: random inputs in the input range and real inputs, each at batch 1 and ``batch``.
    Passing needs max |Δ probability| <= ``tolerance`` and identical argmax and flags, except where
    the torch value sits on the decision boundary within the measured numeric difference (a tie:
    reported in ``boundary_ties``, e.g. the calibration input whose score *is* the threshold), and
    ``input_valid`` true for every one of them. A last case ("invalid") checks that the graph fails
    closed: inputs with a NaN, +inf, -inf, a value below or above the input range must come out
    ``input_valid`` false and (with a threshold) ``is_adversarial`` true, a valid one valid.
    """
    det = OnnxDetector(path, device="cpu")
    lo, hi = ensemble.value_range
    gen = torch.Generator().manual_seed(seed)
    shape = ensemble.target.input_shape
    cases: list[tuple[str, Tensor]] = []
    rand = torch.rand(batch, *shape, generator=gen) * (hi - lo) + lo
    cases += [("random", rand[:1]), ("random", rand)]
    if real_inputs is not None and len(real_inputs):
        cases += [("real", real_inputs[:1]), ("real", real_inputs[:batch])]
    rows, failures = [], []
    for kind, x in cases:
        got = det.run(x.numpy())
        with torch.no_grad():
            logits = ensemble.member_logits(x)
        probs = mean_probs(logits).numpy()
        scores = {k: v.numpy() for k, v in compute_scores(logits).items()}
        dprob = float(np.abs(got["probabilities"].astype(np.float64) - probs).max())
        dlogit = float(np.abs(got["member_logits"].astype(np.float64) - logits.numpy()).max())
        dscore = max(float(np.abs(got[f"score_{s}"].astype(np.float64) - scores[s]).max()) for s in SCORES)
        pred = probs.argmax(-1)
        top2 = np.sort(probs, -1)[:, -2:] if probs.shape[1] > 1 else np.zeros((len(probs), 2))
        arg_bad = got["predicted_class"] != pred
        arg_tie = arg_bad & (top2[:, 1] - top2[:, 0] <= 2 * dprob + 1e-7)
        flag_bad = np.zeros(len(x), bool)
        flag_tie = np.zeros(len(x), bool)
        if threshold is not None:
            s = scores[score]
            flags = s > np.float32(threshold)
            flag_bad = got["is_adversarial"] != flags
            ds = np.abs(got[f"score_{score}"].astype(np.float64) - s)
            flag_tie = flag_bad & (np.abs(s.astype(np.float64) - threshold) <= ds + 1e-7)
        row = {
            "inputs": kind,
            "batch": int(len(x)),
            "max_abs_prob_diff": dprob,
            "max_abs_logit_diff": dlogit,
            "max_abs_score_diff": dscore,
            "argmax_mismatches": int(arg_bad.sum()),
            "flag_mismatches": int(flag_bad.sum()),
            "boundary_ties": int(arg_tie.sum() + flag_tie.sum()),
            "input_valid_mismatches": int((~got["input_valid"]).sum()),
        }
        row["non_finite"] = _non_finite(logits.numpy(), probs, *scores.values(), *got.values())
        rows.append(row)
        bad_flags = (flag_bad & ~flag_tie).any()
        # ``not <=``: a NaN difference fails (NaN > tolerance is False), and so does any NaN or inf
        # in either side's logits, probabilities or scores on these valid inputs.
        if (not dprob <= tolerance or (arg_bad & ~arg_tie).any() or bad_flags
                or row["input_valid_mismatches"] or row["non_finite"]):  # fmt: skip
            failures.append(row)
    # The invalid inputs are edits of the least suspicious input seen, so that a flag on them comes
    # from the validity check, not from a score that was above the threshold anyway.
    pool = torch.cat([x for _, x in cases])
    with torch.no_grad():
        base = pool[int(compute_scores(ensemble.member_logits(pool))[score].argmin())]
    row = _invalid_case(det, base, lo, hi, threshold is not None)
    rows.append(row)
    if row["input_valid_mismatches"] or row["flag_mismatches"]:
        failures.append(row)
    if failures:
        raise ParityError(
            f"parity: onnxruntime disagrees with the torch ensemble or either gives NaN/inf on valid "
            f"inputs (tolerance {tolerance:g} on probabilities, identical argmax and flags, finite "
            f"outputs, invalid inputs flagged); no file was written: "
            f"{failures}"
        )
    return rows


def _non_finite(*arrays: np.ndarray) -> int:
    """How many floating-point values in ``arrays`` are NaN or infinite."""
    return int(
        sum((~np.isfinite(a)).sum() for a in arrays if np.issubdtype(np.asarray(a).dtype, np.floating))
    )


def _invalid_case(det: OnnxDetector, base: Tensor, lo: float, hi: float, has_flag: bool) -> dict[str, Any]:
    """One valid input and five invalid ones (NaN, +inf, -inf, below and above the range)."""
    x = base.numpy()[None].repeat(6, axis=0).astype(np.float32)
    span = (hi - lo) if np.isfinite(hi - lo) else 1.0
    for i, value in enumerate((np.nan, np.inf, -np.inf, lo - span, hi + span), start=1):
        x[i].flat[i % x[i].size] = value
    want_valid = np.array([True, False, False, False, False, False])
    got = det.run(x, invalid="flag")
    valid_bad = got["input_valid"] != want_valid
    flag_bad = ~got["is_adversarial"][~want_valid] if has_flag else np.zeros(0, bool)
    return {
        "inputs": "invalid",
        "batch": len(x),
        "max_abs_prob_diff": None,
        "max_abs_logit_diff": None,
        "max_abs_score_diff": None,
        "argmax_mismatches": 0,
        "flag_mismatches": int(flag_bad.sum()),
        "boundary_ties": 0,
        "input_valid_mismatches": int(valid_bad.sum()),
    }

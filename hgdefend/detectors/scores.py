"""Uncertainty scores from member logits. Higher = more suspicious, for every score.

All scores come from one ``[K, B, C]`` tensor, so one batched forward serves all of them, and the
functions are plain torch ops (differentiable, exportable to ONNX, usable inside adaptive attacks).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import HgdefendError
from ..probabilities import log_mean_probs, mean_probs
from ..vocab import SCORES


def _check(member_logits: Tensor) -> None:
    if member_logits.dim() != 3:
        raise ValueError(f"member_logits: expected shape [K, B, C], got {list(member_logits.shape)}")


def predictive_entropy(member_logits: Tensor) -> Tensor:
    """H[mean_k p_k] — the paper's score: high when members disagree or are all unsure."""
    _check(member_logits)
    log_mean = log_mean_probs(member_logits)
    return -(log_mean.exp() * log_mean).sum(-1)


def expected_entropy(member_logits: Tensor) -> Tensor:
    """mean_k H[p_k]: the members' own (aleatoric) uncertainty."""
    _check(member_logits)
    logp = torch.log_softmax(member_logits, -1)
    return -(logp.exp() * logp).sum(-1).mean(0)


def mutual_information(member_logits: Tensor) -> Tensor:
    """H[mean p] − mean H[p]: disagreement between members (epistemic), >= 0 up to rounding."""
    return (predictive_entropy(member_logits) - expected_entropy(member_logits)).clamp_min(0.0)


def max_prob_score(member_logits: Tensor) -> Tensor:
    """1 − max_c mean_k p_k(c): the classic confidence baseline, oriented so higher = suspicious."""
    _check(member_logits)
    return 1.0 - mean_probs(member_logits).max(-1).values


def member_variance(member_logits: Tensor) -> Tensor:
    """Sum over classes of the variance of member probabilities (0 for a single member)."""
    _check(member_logits)
    return torch.softmax(member_logits, -1).var(0, unbiased=False).sum(-1)


SCORE_FUNCTIONS = {
    "entropy": predictive_entropy,
    "mutual_information": mutual_information,
    "max_prob": max_prob_score,
    "variance": member_variance,
}


class ScoreOr:
    """A detector that flags when *any* of several scores exceeds its own threshold, as a user who
    combines scores would: ``max_i score_i / threshold_i`` (> 1 flags), differentiable, so an
    adaptive attack can lower all of them at once."""

    def __init__(self, names: tuple[str, ...] | list[str], thresholds: list[float]) -> None:
        self.names = tuple(check_score_name(n) for n in names)
        if len(self.names) != len(thresholds) or not self.names:
            raise HgdefendError("thresholds: expected one threshold per score")
        self.thresholds = [max(float(t), 1e-12) for t in thresholds]
        self.__name__ = "or(" + ",".join(self.names) + ")"

    def __call__(self, x: Tensor | None, member_logits: Tensor) -> Tensor:
        parts = [
            SCORE_FUNCTIONS[n](member_logits) / t for n, t in zip(self.names, self.thresholds, strict=True)
        ]
        return torch.stack(parts).max(0).values


def check_score_name(name: str) -> str:
    if not isinstance(name, str) or name not in SCORE_FUNCTIONS:
        raise HgdefendError(f"score: expected one of {SCORES}, got {name!r}")
    return name


def compute_scores(member_logits: Tensor, names: tuple[str, ...] | list[str] = SCORES) -> dict[str, Tensor]:
    """Several scores from the same member logits (one forward pass for all)."""
    return {n: SCORE_FUNCTIONS[check_score_name(n)](member_logits) for n in names}

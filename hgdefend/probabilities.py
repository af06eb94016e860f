"""Member logits ``[K, B, C]`` → the ensemble's prediction: the ONE place this is computed.

Training, evaluation, detectors, attacks, ART and the ONNX graph all read the ensemble's mean
probability, its log (a valid logit vector for ART and losses) and the predicted class from here,
so they cannot drift apart.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor


class EnsemblePrediction(NamedTuple):
    probs: Tensor
    """``[B, C]`` mean of member softmax probabilities (the paper's ensemble prediction)."""
    log_probs: Tensor
    """``[B, C]`` ``log mean_k softmax(logits_k)``, computed stably with ``logsumexp``."""
    predicted: Tensor
    """``[B]`` int64 argmax of ``probs``."""


def mean_probs(member_logits: Tensor) -> Tensor:
    """``[K, B, C] -> [B, C]``: mean of member softmax probabilities."""
    return torch.softmax(member_logits, -1).mean(0)


def log_mean_probs(member_logits: Tensor) -> Tensor:
    """``[K, B, C] -> [B, C]``: ``log mean_k softmax`` — a logit vector whose softmax is the mean."""
    k = member_logits.shape[0]
    return torch.logsumexp(torch.log_softmax(member_logits, -1), dim=0) - math.log(k)


def predict(member_logits: Tensor) -> Tensor:
    """``[K, B, C] -> [B]``: the ensemble's predicted class."""
    return mean_probs(member_logits).argmax(-1)


def ensemble_prediction(member_logits: Tensor) -> EnsemblePrediction:
    """All three at once (one softmax)."""
    probs = mean_probs(member_logits)
    return EnsemblePrediction(probs, log_mean_probs(member_logits), probs.argmax(-1))

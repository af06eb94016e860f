"""A supervised adversarial-input detector: ART's ``BinaryInputDetector`` trained on clean vs FGSM inputs.

Why it is here: a detector network trained to tell clean inputs from adversarial ones (Metzen et al.,
"On Detecting Adversarial Perturbations", ICLR 2017) is the baseline a new user tries first — ART
ships it as ``BinaryInputDetector`` — so the HyperGAN's disagreement score should be compared with
it in the same run, under the same attacks. Its known weakness is the reason to measure it under an
*adaptive* attack: it learns the look of the attack it was trained on, and an attacker who can
differentiate through it (:func:`detector_margin` is differentiable) can fool the classifier and
keep the detector quiet at once (Carlini & Wagner, "Adversarial Examples Are Not Easily Detected",
2017).

- :func:`detector_network` — a small CNN with two outputs (clean, adversarial), for any image size.
- :func:`train_binary_detector` — FGSM inputs against a classifier, then ART's supervised fit.
- :func:`detector_margin` — the adversarial-minus-clean logit: the detector's score (higher = more
  suspicious), what a threshold is fit on and what an adaptive attack lowers.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..training import resolve_device
from ..validation import HgdefendError

FGSM_CHUNK = 500
"""Inputs per FGSM call while crafting the training set (bounds memory on large splits)."""


def _check_input_shape(input_shape: object) -> tuple[int, int, int]:
    try:
        shape = tuple(input_shape)  # type: ignore[arg-type]
    except TypeError:
        shape = ()
    ok = len(shape) == 3 and all(not isinstance(v, bool) and isinstance(v, (int, np.integer)) for v in shape)
    if not ok or min(shape) < 1:
        raise HgdefendError(
            f"input_shape: expected an image shape (channels, height, width) of positive integers, "
            f"got {input_shape!r}"
        )
    return tuple(int(v) for v in shape)  # type: ignore[return-value]


def _check_int(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise HgdefendError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def detector_network(input_shape: tuple[int, ...]) -> nn.Module:
    """A small CNN with two outputs (clean, adversarial), for any image size ``(C, H, W)``.

    Two convolutions and an adaptive pool (so 8×8 digits and 32×32 CIFAR images both work), then
    two dense layers: small enough to train in seconds on a CPU, which is what a baseline needs.
    """
    c = _check_input_shape(input_shape)[0]
    return nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64 * 16, 128), nn.ReLU(), nn.Linear(128, 2),
    )  # fmt: skip


def detector_margin(detector: nn.Module, x: Tensor) -> Tensor:
    """The detector network's adversarial-minus-clean logit ``[B]``: its score, higher = more suspicious.

    Differentiable in ``x`` (no ``no_grad`` here), so an adaptive attack can put it in its loss
    (``APGD(..., detector=lambda x, _logits: detector_margin(net, x))``).
    """
    if not callable(detector):
        raise HgdefendError(
            f"detector: expected a torch module with two outputs, got {type(detector).__name__}"
        )
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise HgdefendError(f"x: expected a batch of inputs as a tensor [B, ...], got {type(x).__name__}")
    z = detector(x)
    if not isinstance(z, Tensor) or z.shape != (len(x), 2):
        got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise HgdefendError(f"detector: expected outputs [B, 2] (clean, adversarial), got {got}")
    return z[:, 1] - z[:, 0]


def train_binary_detector(
    classifier: Any,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    epochs: int,
    seed: int,
    device: str | torch.device | None,
    batch_size: int = 128,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train ART's ``BinaryInputDetector`` on ``x`` (clean, label 0) and FGSM(``x``) (label 1).

    The FGSM inputs are crafted at ``eps`` against ``classifier`` — anything an hgdefend attack
    targets (``forward_logits(x) -> [K, B, C]``: a sampled or deep ensemble, a single network) —
    so the detector learns what attacks on *that* classifier look like (Metzen et al. 2017). The
    network is :func:`detector_network`, trained by ART's ``PyTorchClassifier`` (Adam, lr 1e-3,
    cross-entropy) for ``epochs`` passes in batches of ``batch_size``. Initialisation and ART's
    shuffling are seeded by ``seed`` inside a forked RNG (the caller's torch random state is left
    as it was). Returns the network in eval mode on ``device`` and a description of its training
    (``seconds``, ``train_inputs`` — clean plus FGSM, ``fgsm_eps``, ``epochs``).
    """
    from art.defences.detector.evasion import BinaryInputDetector
    from art.estimators.classification import PyTorchClassifier

    from ..attacks import FGSM

    if not hasattr(classifier, "forward_logits"):
        raise HgdefendError(
            "classifier: expected a model with forward_logits(x) -> [K, B, C] (e.g. a SampledEnsemble), "
            f"got {type(classifier).__name__}"
        )
    if not isinstance(x, Tensor) or x.dim() != 4 or len(x) < 1:
        raise HgdefendError(
            f"x: expected clean images as a tensor [N, C, H, W] with N >= 1, got "
            f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}"
        )
    input_shape = _check_input_shape(x.shape[1:])
    if not isinstance(y, Tensor) or y.shape != (len(x),):
        got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise HgdefendError(f"y: expected {len(x)} integer labels as a tensor [N], got {got}")
    try:
        eps_f = float(eps)
    except (TypeError, ValueError):
        eps_f = float("nan")
    if not (math.isfinite(eps_f) and eps_f > 0):
        raise HgdefendError(f"eps: expected a finite FGSM budget > 0, got {eps!r}")
    epochs = _check_int(epochs, "epochs")
    batch_size = _check_int(batch_size, "batch_size")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise HgdefendError(f"seed: expected an integer, got {seed!r}")
    dev = resolve_device(device)

    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(int(seed))
        net = detector_network(input_shape).to(dev)
        x = x.to(dev)
        x_adv = torch.cat([FGSM(classifier, eps_f)(x[i : i + FGSM_CHUNK], y[i : i + FGSM_CHUNK].to(dev))
                           for i in range(0, len(x), FGSM_CHUNK)])  # fmt: skip
        est = PyTorchClassifier(
            model=net, loss=nn.CrossEntropyLoss(), optimizer=torch.optim.Adam(net.parameters(), lr=1e-3),
            input_shape=input_shape, nb_classes=2, clip_values=(0.0, 1.0),
            device_type="gpu" if dev.type == "cuda" else "cpu",
        )  # fmt: skip
        xs = torch.cat([x, x_adv]).cpu().numpy()
        ys = np.eye(2, dtype=np.float32)[np.r_[np.zeros(len(x), int), np.ones(len(x), int)]]
        BinaryInputDetector(est).fit(xs, ys, nb_epochs=epochs, batch_size=batch_size)
    net.eval()
    return net, {"seconds": round(time.perf_counter() - t0, 1), "train_inputs": 2 * len(x),
                 "fgsm_eps": eps_f, "epochs": epochs}  # fmt: skip
